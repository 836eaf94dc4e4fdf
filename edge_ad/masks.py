"""Where on the frame to look: an inspection mask, a picture of the camera's view painted white
where the part is inspected and black where it is not (a label with a changing date, a fixture,
the conveyor beside the part).

The mask works on the normalised anomaly map: the image score is the map's maximum over the
inspected pixels, and the map shown, written to events and outlined in overlays is zero outside
them. The frame itself is not masked: the features of a pixel see a neighbourhood of it (the
backbone's receptive field, the 3x3 average, the smoothing), so something striking just outside
the inspected part still lifts the map inside it; paint the ignored parts with a margin (README
"Inspection mask" measures it). Replacing the ignored pixels by those of a normal frame instead
would hide them from the features, but it puts a seam between two parts at the mask's edge:
ELPV's AUROC fell from 0.88 to 0.76 that way.
"""

from __future__ import annotations

import hashlib
import math
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError
from .images import read_image

INSPECT_LEVEL = 128  # grey levels at or above it are inspected; below it, ignored
# A picture, not a mask: more pixels than PICTURE_SHARE neither near black nor near white (GREYS),
# spread over at least PICTURE_LEVELS grey levels that hold 0.5 % of the pixels each. ELPV cells and
# the preview `edge-ad mask` writes beside its mask measured 81 to 100 % in 47 to 75 levels; masks
# 0 to 1 % (written by `edge-ad mask`, saved as JPEG, drawn with anti-aliased edges), one blurred by
# 5 or 20 pixels 11 or 36 %, one painted light grey (inspected: 128 or more) 60 % in 2 levels.
GREYS = (32, 223)
PICTURE_SHARE = 0.5
PICTURE_LEVELS = 16


class InspectionMask:
    """A mask image in the pixels of the frames it applies to (after --input-flip and --input-crop).

    >>> mask = InspectionMask.load("mask.png")
    >>> result = detector(frame, mask=mask)    # the score of the white part only
    """

    def __init__(self, inspect: np.ndarray, name: str = "mask"):
        if inspect.dtype != bool or inspect.ndim != 2:
            raise ImageError(f"{name}: an inspection mask is a 2-D boolean array, got {inspect.dtype} {inspect.shape}")
        if not inspect.any():
            raise ImageError(f"{name}: the mask is black everywhere, so nothing would be inspected "
                             f"(white, grey level {INSPECT_LEVEL} or more: inspect; black: ignore)")
        self.inspect = inspect
        self.name = name
        self._at: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def load(cls, path: str | Path) -> "InspectionMask":
        """A mask from an image file (colour or grey): grey level 128 or more is inspected. A
        picture is refused (PICTURE_SHARE): the frame or the mask's preview given for the mask would
        otherwise inspect wherever the part happens to be bright."""
        grey = cv2.cvtColor(read_image(path), cv2.COLOR_RGB2GRAY)
        share = float(((grey >= GREYS[0]) & (grey <= GREYS[1])).mean())
        levels = int((np.bincount(grey.ravel(), minlength=256) >= 0.005 * grey.size).sum())
        if share > PICTURE_SHARE and levels >= PICTURE_LEVELS:
            raise ImageError(f"{path}: not a mask: {share:.0%} of its pixels are grey ({GREYS[0]} to {GREYS[1]} of "
                             f"255), in {levels} grey levels, as in a picture of the part, such as a frame or the "
                             "NAME_preview.png that edge-ad mask writes beside a mask; a mask is painted white (or "
                             f"grey of {INSPECT_LEVEL} or more) where to inspect and black where not")
        return cls(grey >= INSPECT_LEVEL, str(path))

    @property
    def shape(self) -> tuple[int, int]:
        return self.inspect.shape

    @property
    def share(self) -> float:
        """The inspected share of the frame."""
        return float(self.inspect.mean())

    @property
    def share_text(self) -> str:
        """The inspected share as a person reads it: never "0%" for a mask that inspects a little
        (a part of a 12-megapixel frame), nor "100%" for one that leaves a little out."""
        share = self.share
        if share < 0.01:
            return f"{share * 100:.2g}%"
        if 0.99 < share < 1:
            return f"{math.floor(share * 1000) / 10:g}%"
        return f"{share:.0%}"

    def check(self, frame_shape: tuple[int, ...], where: str, of_camera: bool = True) -> None:
        """Refuse frames of another size than the mask, naming both: frames a source delivers
        (after its flip and crop), or with `of_camera` False images read from files (`eval`)."""
        if tuple(frame_shape[:2]) == self.shape:
            return
        size = f"{frame_shape[1]}x{frame_shape[0]}"
        seen = (f"the frames are {size} (after --input-flip and --input-crop); paint the mask on a frame of this "
                "camera as it is scored ('edge-ad record --frames 1 --out frame.png' with the same options saves one)"
                if of_camera
                else f"the image is {size}; the mask applies to images of its own size, the camera's frames")
        height, width = self.shape
        raise ImageError(f"{where}: --mask {self.name} is {width}x{height} pixels, but {seen}")

    def at(self, height: int, width: int) -> np.ndarray:
        """The mask at another size (the model input's): a pixel there is inspected when at least
        half of the frame pixels it stands for are."""
        if (height, width) not in self._at:
            area = cv2.resize(self.inspect.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
            inside = area >= 0.5
            if not inside.any():
                raise ImageError(f"{self.name}: the inspected part is too small to keep a pixel of the "
                                 f"model's {width}x{height} input; paint a larger white area")
            self._at[(height, width)] = inside
        return self._at[(height, width)]

    @cached_property
    def outline(self) -> tuple[np.ndarray, ...]:
        """Contours of the inspected area, drawn on overlays."""
        contours, _ = cv2.findContours(self.inspect.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        return contours

    @cached_property
    def sha256(self) -> str:
        """A hash of the mask's pixels (inspected or not) and size, whatever file they came from."""
        digest = hashlib.sha256(np.array(self.shape, np.int64).tobytes())
        digest.update(np.packbits(self.inspect).tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        """What calibration.yaml records of the mask it was calibrated with."""
        height, width = self.shape
        return {"file": self.name, "width": width, "height": height, "inspected": round(self.share, 4),
                "sha256": self.sha256}


def calibration_mismatch(calibrated: dict | None, mask: InspectionMask | None) -> str | None:
    """Why a run's mask does not match the one its site calibration was made with (`calibrated`:
    calibration.yaml's 'mask' field, None when calibrated without one), or None when they match."""
    if calibrated is not None and not isinstance(calibrated, dict):  # edited by hand: an AttributeError before
        return f"its 'mask' field is {calibrated!r}, not what calibrate writes (the mask's file, size and sha256)"
    if mask is None:
        return None if calibrated is None else f"calibrated with --mask {calibrated.get('file')}, scored without one"
    if calibrated is None:
        return f"scored with --mask {mask.name}, calibrated without one"
    if calibrated.get("sha256") != mask.sha256:
        return f"scored with --mask {mask.name}, calibrated with another mask ({calibrated.get('file')})"
    return None


def mask_beside(frame: Path) -> Path:
    """The name offered for a mask drawn on `frame`: beside it, and never it (a frame named mask.png)."""
    return frame.with_name(f"{frame.stem}_mask.png")


def draw_mask(
    shape: tuple[int, ...], keep: list[tuple[int, int, int, int]], ignore: list[tuple[int, int, int, int]]
) -> np.ndarray:
    """A mask picture (uint8, 255 inspect, 0 ignore) of a frame of `shape` from rectangles (x, y,
    width, height): inspect everything, or only the `keep` rectangles when there are any; then
    ignore the `ignore` rectangles. A rectangle reaching outside the frame is refused."""
    height, width = shape[:2]
    for x, y, w, h in [*keep, *ignore]:
        if x + w > width or y + h > height:
            raise ImageError(f"rectangle {x},{y},{w},{h} reaches outside the {width}x{height} frame")
    picture = np.full((height, width), 0 if keep else 255, np.uint8)
    for x, y, w, h in keep:
        picture[y : y + h, x : x + w] = 255
    for x, y, w, h in ignore:
        picture[y : y + h, x : x + w] = 0
    return picture

