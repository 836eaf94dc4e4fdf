"""Pictures of results on their frames: heat-map overlays, and previews of inspection masks."""

from __future__ import annotations

import textwrap
import time

import cv2
import numpy as np

from .detector import Result, frame_map
from .masks import InspectionMask

OK_COLOUR = (80, 200, 80)  # BGR
NG_COLOUR = (40, 40, 230)
MASK_COLOUR = (230, 170, 50)  # the edge of the inspected part of an inspection mask: blue
AWAY_COLOUR = (0, 160, 255)  # orange
# The notes under a report's picture: 8-point text, this many characters to an inch of its width
# (with room to spare), and this tall a line (8 points, the font's 1.2, the spacing's 1.4).
NOTE_CHARACTERS_PER_INCH = 14
NOTE_LINE_INCHES = 8 * 1.2 * 1.4 / 72


def overlay(frame_bgr: np.ndarray, result: Result, alpha: float = 0.45, size: tuple[int, int] | None = None
            ) -> np.ndarray:
    """The frame with the anomaly map blended in (inferno colour map, perceptually uniform),
    contours around regions above the threshold, the edge of the inspection mask (if any), and the
    score with OK/NG (and the variant, if any). With `size` (width, height), drawn on the frame
    scaled to that size, at that size's cost: a video of a 12-megapixel camera is shown smaller,
    and its overlay at full size takes 100 ms or more. The frame may be one already made smaller
    than the one scored (`result.frame_shape`), as calibration keeps them for its report."""
    if frame_bgr.ndim == 2:
        frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    shown = result.map
    outline = result.mask.outline if result.mask is not None else ()  # where the inspection ends
    size = size or (frame_bgr.shape[1], frame_bgr.shape[0])
    if size != (frame_bgr.shape[1], frame_bgr.shape[0]):
        frame_bgr = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
    scored_height, scored_width = result.frame_shape[:2]
    if size != (scored_width, scored_height):
        shown = frame_map(result.normalised, frame_bgr.shape)
        if result.mask is not None:
            shown *= cv2.resize(result.mask.inspect.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            scale = (size[0] / scored_width, size[1] / scored_height)
            outline = tuple(np.round(c * scale).astype(np.int32) for c in outline)
    # Colour scale: 0 = normal quantile q_alpha, threshold at mid-scale, twice the threshold saturates.
    top = max(2.0 * result.threshold, 1e-6)
    scaled = np.clip(shown / top * 255.0, 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO)
    out = cv2.addWeighted(frame_bgr, 1.0 - alpha, heat, alpha, 0.0)
    above = (shown >= result.threshold).astype(np.uint8)
    contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    colour = NG_COLOUR if result.is_anomaly else OK_COLOUR
    thickness = _thickness(out)
    cv2.drawContours(out, contours, -1, colour, thickness)
    cv2.drawContours(out, outline, -1, MASK_COLOUR, thickness)
    text = f"{'NG' if result.is_anomaly else 'OK'} {result.score:.3f}"
    if result.variant is not None:
        text += f" {result.variant}"
    # a narrow frame: smaller, not cut at its edge
    scale = _fitting_scale(text, max(0.4, min(out.shape[:2]) / 400), thickness + 2, max(out.shape[1] - 12, 1))
    cv2.putText(out, text, (8, int(30 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2)
    cv2.putText(out, text, (8, int(30 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness)
    return out


def away_card(size: tuple[int, int], source: str, since: float) -> np.ndarray:
    """What a live output shows while its source is away: a dark (width, height) picture saying
    that nothing has been inspected since `since` (Unix time, shown in local time), instead of
    the last frame's overlay and its OK standing still on a screen at the line."""
    width, height = size
    card = np.full((height, width, 3), 32, np.uint8)
    last = time.localtime(since)
    day = "" if last[:3] == time.localtime()[:3] else time.strftime(" on %Y-%m-%d", last)
    lines = [("NO FRAMES", AWAY_COLOUR, 3.5), (source, (230, 230, 230), 1.4),
             (f"nothing inspected since {time.strftime('%H:%M:%S', last)}{day}", (230, 230, 230), 1.4),
             ("away: tried again until it is back", (160, 160, 160), 1.4)]
    drawn = []  # (text, colour, scale, thickness, its height)
    for text, colour, size_factor in lines:
        scale = size_factor * height / 720
        scale = max(0.1, _fitting_scale(text, scale, max(1, round(2 * scale)), width - 16))  # a narrow output: smaller
        thickness = max(1, round(2 * scale))
        drawn.append((text, colour, scale, thickness, cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale,
                                                                      thickness)[0][1]))
    y = (height - sum(round(1.8 * h) for *_, h in drawn)) // 2  # the lines in the middle
    for text, colour, scale, thickness, text_height in drawn:
        y += round(1.8 * text_height)
        cv2.putText(card, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return card


def _fitting_scale(text: str, scale: float, thickness: int, room: int) -> float:
    """`scale`, made smaller where `text` drawn at it (and `thickness`) would be wider than `room` pixels."""
    text_width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
    return scale * min(1.0, room / max(text_width, 1))


def fitted_size(shape: tuple[int, ...], height: int, width: int) -> tuple[int, int]:
    """The (width, height) a picture of `shape` is scaled to, to fit height x width whole (`fit`)."""
    scale = min(height / shape[0], width / shape[1])
    return max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))


def fit(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """`picture` scaled to fit height x width whole, centred on black (as video players show
    another aspect), when its size is not that one; else itself."""
    if picture.shape[:2] == (height, width):
        return picture
    w, h = fitted_size(picture.shape, height, width)
    canvas = np.zeros((height, width) + picture.shape[2:], picture.dtype)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top:top + h, left:left + w] = cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)
    return canvas


def mask_preview(frame_bgr: np.ndarray, mask: InspectionMask) -> np.ndarray:
    """The frame with the ignored part darkened and the inspected part outlined, to check a mask."""
    mask.check(frame_bgr.shape, "preview")
    out = frame_bgr.copy()
    out[~mask.inspect] //= 3
    cv2.drawContours(out, mask.outline, -1, MASK_COLOUR, _thickness(out))
    return out


def _thickness(picture: np.ndarray) -> int:
    """Line width of contours on a picture: about 1/200 of its smaller side."""
    return max(1, round(min(picture.shape[:2]) / 200))


def show(ax, picture_bgr: np.ndarray, title: str, fontsize: int = 8) -> None:
    """A BGR picture on a matplotlib axis of a report figure, titled, without axes."""
    ax.imshow(cv2.cvtColor(picture_bgr, cv2.COLOR_BGR2RGB))
    title_of(ax, title, fontsize)
    ax.axis("off")


def title_of(ax, text: str, fontsize: float = 12, **options) -> None:
    """`text` as the title of the axis `ax` in a report's picture: wrapped to its width at
    `fontsize` points (a long path ran over its neighbours' titles, eight overlays' in one
    unreadable band, or past the picture's edge) and drawn as typed (see lay_out_above_notes).
    `options` are matplotlib's (loc)."""
    inches = ax.get_position().width * ax.figure.get_size_inches()[0]
    characters = max(10, int(inches * NOTE_CHARACTERS_PER_INCH * 8 / fontsize))
    # a path is broken after one of its slashes, not within a name: a space is put after each, and
    # taken out again where the line did not break there
    wrapped = "\n".join(textwrap.fill(line.replace("/", "/\0 "), characters).replace("\0 ", "").replace("\0", "")
                         for line in text.split("\n"))
    ax.set_title(wrapped, fontsize=fontsize, parse_math=False, **options)


def notes_text(heading: str, notes: list[str], width: float) -> tuple[str, float]:
    """`notes` numbered under `heading`, wrapped for a report figure `width` inches wide, and the
    inches of its height they take ("" and 0 without notes). A report's picture is what is
    opened later, or sent to a colleague, without the terminal its command printed them on."""
    if not notes:
        return "", 0.0
    lines = [heading]
    for number, note in enumerate(notes, 1):
        lines += textwrap.wrap(note, int(width * NOTE_CHARACTERS_PER_INCH), initial_indent=f"{number}. ",
                               subsequent_indent="    ")
    return "\n".join(lines), (len(lines) + 1) * NOTE_LINE_INCHES  # with a line's room around them


def lay_out_above_notes(figure, text: str, inches: float) -> None:
    """Lay `figure`'s axes out (tight_layout) above a band `inches` high at its bottom, and put
    `text` (notes_text's) in that band."""
    width, height = figure.get_size_inches()
    if text:  # as typed: matplotlib read "$...$" in a path as TeX, and "$\frac$" stopped the picture
        figure.text(0.1 / width, (inches - NOTE_LINE_INCHES) / height, text, fontsize=8, va="top", linespacing=1.4,
                    parse_math=False)
    for _ in range(2):  # one pass in a rect left a histogram's label under the titles of the row below it
        figure.tight_layout(rect=(0, inches / height, 1, 1))
