"""The detector: a bundle run with ONNX Runtime, frame in, score and map out."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .backends import load_graphs
from .bundle import PRECISIONS, Bundle, load_bundle, site_calibrated
from .engines import engine_builds
from .errors import BundleError, EdgeAdError, shell_word
from .images import as_grey, to_rgb
from .masks import InspectionMask
from .normalize import Quantiles
from .regions import input_area, region_score
from .self_check import check_maps
from .upsample import upsample_maps


@dataclass
class Result:
    """What the detector says about one frame.

    score: maximum of the normalised map (not clipped; with a least defect area, the highest level
    at which a region of the map that large lies above it); is_anomaly: score >= threshold;
    normalised: the normalised map at the input size (H, W), of a frame of frame_shape;
    map: that map in frame coordinates, clipped to [0, 1] for display, made on first use (a
    12-megapixel frame's takes 10 ms, and most frames are normal and never drawn);
    grid_map: raw maps on the feature grid, one per branch (branches, h, w);
    raw_map: those maps upsampled to input_size and smoothed (branches, H, W), made on first use;
    times_ms: milliseconds per stage (preprocess, encoder, [prior, bridge,] head, upsample, normalise);
    variant: the product variant whose bundle gave the result (VariantDetector), else None;
    mask: the inspection mask the frame was scored with (score and map cover its white part only).
    """

    score: float
    is_anomaly: bool
    threshold: float
    normalised: np.ndarray
    frame_shape: tuple[int, ...]
    grid_map: np.ndarray
    input_size: tuple[int, int]
    smoothing_sigma: float
    times_ms: dict[str, float] = field(default_factory=dict)
    variant: str | None = None
    mask: InspectionMask | None = None

    @cached_property
    def map(self) -> np.ndarray:
        return frame_map(self.normalised, self.frame_shape, self.mask)

    @cached_property
    def raw_map(self) -> np.ndarray:
        return upsample_maps(self.grid_map, self.input_size, self.smoothing_sigma)


def frame_map(normalised: np.ndarray, frame_shape: tuple[int, ...], mask: InspectionMask | None = None) -> np.ndarray:
    """A normalised map at the input size -> at the frame's size, clipped to [0, 1] for display,
    zero outside the inspection mask."""
    display = cv2.resize(normalised, (frame_shape[1], frame_shape[0]), interpolation=cv2.INTER_LINEAR)
    np.clip(display, 0.0, 1.0, out=display)
    if mask is not None:
        display *= mask.inspect  # in place: no per-frame copy of a frame-sized array
    return display


class MapScorer:
    """A bundle's post-processing, from raw maps on the feature grid to a Result: upsampling and
    smoothing, quantile normalisation (the site calibration's, when the bundle has one), score and
    threshold. The Detector runs the graphs first; a DeepStream pipeline, where nvinfer runs them
    (`edge_ad.deepstream`), uses this alone."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.threshold = bundle.threshold

    def upsample(self, grids: np.ndarray) -> np.ndarray:
        """Maps on the feature grid (..., h, w) -> upsampled to the input size and smoothed."""
        return upsample_maps(grids, self.bundle.input_size, self.bundle.smoothing_sigma)

    def normalise(self, raw: np.ndarray, quantiles: Sequence[Quantiles] | None = None) -> np.ndarray:
        """Raw maps of one frame (branches, ...) -> the normalised map (...): each branch
        mapped by its quantiles (the bundle's unless given; q_alpha -> 0, q_beta -> 0.1), then
        the branches averaged."""
        quantiles = self.bundle.quantiles if quantiles is None else quantiles
        return sum(q.apply(branch) for q, branch in zip(quantiles, raw)) / len(raw)

    def normalised_maps(self, grids: np.ndarray, quantiles: Sequence[Quantiles] | None = None) -> np.ndarray:
        """Grid maps (B, branches, h, w) -> normalised maps at the input size (B, H, W); their
        maxima are the image scores.

        Normalising and upsampling are both linear and upsampling keeps constants, so the
        branches are normalised and averaged on the grid and one map per frame is upsampled:
        the same values to float rounding as normalising the upsampled raw maps (ULSAD 3.5 as
        written), at half the upsampling and none of the per-pixel arithmetic."""
        return self.upsample(self.normalise(grids.swapaxes(0, 1), quantiles))

    @staticmethod
    def image_score(normalised: np.ndarray, mask: InspectionMask | None = None, min_area: int = 1) -> float:
        """The image score of a normalised map at the input size: its maximum (over the mask's
        inspected pixels, with a mask); with a least area (pixels of the map), the highest level
        at which a connected region that large lies above it (`edge_ad.regions.region_score`)."""
        return region_score(normalised, min_area, None if mask is None else mask.at(*normalised.shape))

    def min_area(self, frame_shape: tuple[int, ...]) -> int:
        """The site calibration's least defect area (frame pixels) in pixels of the map at the
        input size, for a frame of `frame_shape`; 1 without one."""
        area = self.bundle.min_defect_area
        return 1 if area is None else input_area(area, frame_shape, self.bundle.input_size)

    def _result(
        self, normalised: np.ndarray, grids: np.ndarray, frame_shape: tuple[int, ...], times: dict[str, float],
        mask: InspectionMask | None = None,
    ) -> Result:
        start = time.perf_counter()
        if mask is not None:
            mask.check(frame_shape, "frame")
        score = self.image_score(normalised, mask, self.min_area(frame_shape))
        times = dict(times, normalise_ms=(time.perf_counter() - start) * 1e3)
        bundle = self.bundle
        return Result(score, score >= self.threshold, self.threshold, normalised, frame_shape, grids,
                      bundle.input_size, bundle.smoothing_sigma, times, mask=mask)

    def score_grids(
        self, grids: np.ndarray, frame_shapes: Sequence[tuple[int, ...]], times: dict[str, float] | None = None,
        masks: Sequence[InspectionMask | None] | None = None,
    ) -> list[Result]:
        """Grid maps (B, branches, h, w) of B frames of `frame_shapes` (and inspection `masks`,
        one or None per frame) -> their Results."""
        start = time.perf_counter()
        normalised = self.normalised_maps(grids)
        times = dict(times or {}, upsample_ms=(time.perf_counter() - start) * 1e3)
        masks = masks or [None] * len(frame_shapes)
        return [self._result(n, g, shape, times, mask)
                for n, g, shape, mask in zip(normalised, grids, frame_shapes, masks)]


class Detector(MapScorer):
    """Runs a bundle on frames of any size (uint8; BGR, RGB or grey).

    >>> detector = Detector.load("bundle")
    >>> result = detector(frame)              # frame as OpenCV delivers it (BGR)
    >>> result.score, result.is_anomaly
    """

    def __init__(
        self, bundle: Bundle, backend: str = "auto", threads: int | None = None, spin: bool = True,
        dla_core: int | None = None,
    ):
        super().__init__(bundle)
        self.precision = bundle.precision
        # The engine builds there were as it loaded: a SIGHUP after `build` takes new ones (bundle_swap).
        self.engine_builds = engine_builds(bundle) if backend in ("auto", "tensorrt") else None
        self.backend, self._graphs = load_graphs(bundle, backend, threads, spin, dla_core)
        self.dla_core = dla_core
        self.spin = spin and self.backend == "onnxruntime"
        # ONNX Runtime runs the INT8 products in its exact but slower U8U8 kernels (x86 without VNNI)
        self.u8u8 = any(getattr(graph, "u8u8", False) for graph in self._graphs.values())
        self._check: dict[str, np.ndarray] | None = None
        if bundle.check is not None:  # kept: the file read (and its hash checked) now is the one a run checks against
            with np.load(bundle.check) as check:
                self._check = dict(check)
        self.self_check()

    def self_check(self) -> None:
        """Score the bundle's check images and refuse (BundleError) maps that are not those it was
        exported with (edge_ad.self_check): at load, and every --self-check-interval in a run."""
        if self._check is not None:
            check_maps(self, self._check, self.bundle.steps, f"{self.bundle.root} on {self.backend}", self._remedy())

    def _remedy(self) -> str:
        """What to do when the check images fail on this backend."""
        if self.backend == "tensorrt":
            core = f" --dla-core {self.dla_core}" if self.dla_core is not None else ""
            return (f"build its engines again (edge-ad build --bundle {shell_word(self.bundle.root)}{core} --force); "
                    "--backend onnxruntime runs its graphs without them meanwhile")
        graphs = "graphs" if self.backend == "onnxruntime" else "reference.pt"
        # Their files are intact (load checks each SHA-256): what differs from export is the runtime
        return (f"its {graphs} gave the stored maps at export and their files are intact: suspect the {self.backend} "
                "installed here (edge-ad doctor names its version)")

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        backend: str = "auto",
        precision: str | None = None,
        steps: int | None = None,
        threads: int | None = None,
        spin: bool = True,
        dla_core: int | None = None,
    ) -> "Detector":
        """Load a bundle. backend: auto, onnxruntime or pytorch (the FP32 reference); precision:
        the precision the caller expects (None: whatever the bundle holds; a bundle holds one,
        chosen at export); steps: a bridge bundle's K (default: the bundle's); threads and spin:
        ONNX Runtime's intra-op threads per graph (None: one per core) and whether they spin
        while a graph runs (more frames per second; False: a lower latency tail for one camera
        at its frame rate on a CPU, README "Streaming soak"); dla_core: run the TensorRT engines
        built for that DLA core (`edge-ad build --dla-core`)."""
        if precision is not None and precision not in PRECISIONS:
            raise BundleError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        loaded = load_bundle(bundle, steps)
        if precision is not None and precision != loaded.precision:
            raise BundleError(
                f"{bundle}: holds {loaded.precision} graphs, not {precision} (export with --precision {precision})"
            )
        return cls(loaded, backend, threads, spin, dla_core)

    @property
    def steps(self) -> int | None:
        return self.bundle.steps

    @property
    def graphs(self) -> dict:
        """The bundle's loaded graphs by name, shared with its calibrated views."""
        return self._graphs

    def calibrated(self, folder: str | Path) -> tuple["Detector", str | None]:
        """This detector with the site calibration in `folder` (one camera's, where several
        share the bundle; `edge_ad.bundle.site_calibrated`): the same graphs, not loaded again,
        with that camera's quantiles and threshold. While `folder` holds no calibration that
        fits, this detector itself and why."""
        bundle, problem = site_calibrated(self.bundle, folder)
        if problem is not None:
            return self, problem
        view = copy.copy(self)
        view.bundle, view.threshold = bundle, bundle.threshold
        return view, None

    def engines_changed(self) -> bool:
        """Whether engines were built for its bundle (or removed) since it loaded, where its
        backend would take them."""
        return self.engine_builds is not None and engine_builds(self.bundle) != self.engine_builds

    def preprocess(self, frame: np.ndarray, color: str = "BGR", name: str = "frame") -> np.ndarray:
        """Frame -> uint8 RGB at the model input size (the encoder normalises inside the graph).
        A bundle trained on grey pictures sees a colour camera's frames in grey: in colour, a cast
        of 5-10 % that the model never saw flagged a third to nearly all normal parts (README)."""
        rgb = to_rgb(frame, color, name, self.bundle.input_size)
        return as_grey(rgb) if self.bundle.trained_on_grey else rgb

    def restore(self, features: np.ndarray, condition: np.ndarray) -> np.ndarray:
        """The bridge sampler: K deterministic steps from the input features toward normal ones
        (one graph call when the bundle has a fused graph for this K; on the device, without host
        copies between steps, when the backend can: TensorRT)."""
        if self.bundle.fused_steps == self.bundle.steps and "fused" in self._graphs:
            return self._graphs["fused"](features, condition)[0]
        on_device = getattr(self._graphs["step"], "restore", None)
        if on_device is not None:
            return on_device(features, condition, self.bundle.coefficients)
        x = features
        for coefficients in self.bundle.coefficients:
            x = self._graphs["step"](x, condition, coefficients)[0]
        return x

    def grid_maps(self, inputs: np.ndarray, times: dict[str, float] | None = None) -> np.ndarray:
        """Batch of preprocessed inputs (B, H, W, 3) -> raw maps on the feature grid (B, branches, h, w).

        With `times`, the milliseconds of each stage are added (encoder_ms, prior_ms, bridge_ms, head_ms).
        """
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            clock.append(time.perf_counter())
            if times is not None:
                times[name] = (clock[-1] - clock[-2]) * 1e3

        features = self._graphs["encoder"](inputs)[0]
        lap("encoder_ms")
        if self.bundle.model_type != "bridge":
            grids = self._graphs["head"](features)[0]
            lap("head_ms")
            return grids
        prior_map, condition = self._graphs["prior"](features)
        lap("prior_ms")
        restored = self.restore(features, condition)
        lap("bridge_ms")
        bridge_map = self._graphs["head"](features, restored)[0]
        lap("head_ms")
        return np.concatenate([prior_map, bridge_map], axis=1)

    def finite_grid_maps(self, inputs: np.ndarray, times: dict[str, float] | None = None) -> np.ndarray:
        """grid_maps, refused when a graph returned NaN or infinite values."""
        grids = self.grid_maps(inputs, times)
        if not np.all(np.isfinite(grids)):
            raise EdgeAdError(f"{self.bundle.root}: the graphs returned NaN or infinite values")
        return grids

    def raw_maps(self, inputs: np.ndarray) -> np.ndarray:
        """Batch of preprocessed inputs (B, H, W, 3) -> smoothed raw maps at input size (B, branches, H, W)."""
        return self.upsample(self.finite_grid_maps(inputs))

    def __call__(self, frame: np.ndarray, color: str = "BGR", mask: InspectionMask | None = None) -> Result:
        return self.batch([frame], color, [mask])[0]

    def batch(
        self, frames: Sequence[np.ndarray], color: str = "BGR", masks: Sequence[InspectionMask | None] | None = None
    ) -> list[Result]:
        """Score several frames in one graph call, each within its inspection mask where `masks`
        gives one; stage times are per batch, normalise_ms per frame."""
        if not len(frames):
            return []
        grids, times = self.frame_grid_maps(frames, color)
        return self.score_grids(grids, [frame.shape for frame in frames], times, masks)

    def frame_grid_maps(self, frames: Sequence[np.ndarray], color: str = "BGR") -> tuple[np.ndarray, dict[str, float]]:
        """Frames -> their raw maps on the feature grid (B, branches, h, w), in one graph call, and
        the stage times: what `batch` does before the bundle's calibration applies (so that the
        grids of cameras with their own calibrations, `calibrated`, are made in one batch)."""
        start = time.perf_counter()
        names = [f"frames[{i}]" for i in range(len(frames))] if len(frames) > 1 else ["frame"]
        inputs = np.stack([self.preprocess(f, color, name) for f, name in zip(frames, names)])
        times = {"preprocess_ms": (time.perf_counter() - start) * 1e3}
        return self.finite_grid_maps(inputs, times), times
