"""The detector: a bundle run with ONNX Runtime, frame in, score and map out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .backends import load_graphs
from .bundle import Bundle, load_bundle
from .errors import BundleError, EdgeAdError
from .images import resize_to_input, to_rgb
from .upsample import upsample_maps


@dataclass
class Result:
    """What the detector says about one frame.

    score: maximum of the normalised map (not clipped); is_anomaly: score >= threshold;
    map: normalised map in frame coordinates, clipped to [0, 1] for display;
    raw_map: smoothed raw maps at the model input size, one per branch (branches, H, W);
    times_ms: milliseconds per stage (preprocess, encoder, [prior, bridge,] head, upsample, normalise).
    """

    score: float
    is_anomaly: bool
    threshold: float
    map: np.ndarray
    raw_map: np.ndarray
    times_ms: dict[str, float] = field(default_factory=dict)


class Detector:
    """Runs a bundle on frames of any size (uint8; BGR, RGB or grey).

    >>> detector = Detector.load("bundle")
    >>> result = detector(frame)              # frame as OpenCV delivers it (BGR)
    >>> result.score, result.is_anomaly
    """

    def __init__(self, bundle: Bundle, backend: str = "auto", threads: int | None = None):
        self.bundle = bundle
        self.precision = bundle.precision
        self.threshold = bundle.threshold
        self.backend, self._graphs = load_graphs(bundle, backend, threads)

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        backend: str = "auto",
        precision: str | None = None,
        steps: int | None = None,
        threads: int | None = None,
    ) -> "Detector":
        """Load a bundle. backend: auto, onnxruntime or pytorch (the FP32 reference); precision:
        the precision the caller expects (None: whatever the bundle holds; a bundle holds one,
        chosen at export); steps: a bridge bundle's K (default: the bundle's)."""
        loaded = load_bundle(bundle, steps)
        if precision is not None and precision != loaded.precision:
            raise BundleError(
                f"{bundle}: holds {loaded.precision} graphs, not {precision} (export with --precision {precision})"
            )
        return cls(loaded, backend, threads)

    @property
    def steps(self) -> int | None:
        return self.bundle.steps

    def preprocess(self, frame: np.ndarray, color: str = "BGR") -> np.ndarray:
        """Frame -> uint8 RGB at the model input size (the encoder normalises inside the graph)."""
        return resize_to_input(to_rgb(frame, color), *self.bundle.input_size)

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

    def raw_maps(self, inputs: np.ndarray, times: dict[str, float] | None = None) -> np.ndarray:
        """Batch of preprocessed inputs (B, H, W, 3) -> smoothed raw maps at input size (B, branches, H, W)."""
        grids = self.grid_maps(inputs, times)
        start = time.perf_counter()
        if not np.all(np.isfinite(grids)):
            raise EdgeAdError(f"{self.bundle.root}: the graphs returned NaN or infinite values")
        maps = upsample_maps(grids, self.bundle.input_size, self.bundle.smoothing_sigma)
        if times is not None:
            times["upsample_ms"] = (time.perf_counter() - start) * 1e3
        return maps

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Raw maps of one frame (branches, H, W) -> the normalised map (H, W): each branch
        mapped by its quantiles (q_alpha -> 0, q_beta -> 0.1), then the branches averaged."""
        return sum(q.apply(branch) for q, branch in zip(self.bundle.quantiles, raw)) / len(raw)

    def _result(self, raw: np.ndarray, frame_shape: tuple[int, ...], times: dict[str, float]) -> Result:
        start = time.perf_counter()
        normalised = self.normalise(raw)
        score = float(normalised.max())
        display = cv2.resize(normalised, (frame_shape[1], frame_shape[0]), interpolation=cv2.INTER_LINEAR)
        np.clip(display, 0.0, 1.0, out=display)
        times = dict(times, normalise_ms=(time.perf_counter() - start) * 1e3)
        return Result(score, score >= self.threshold, self.threshold, display, raw, times)

    def __call__(self, frame: np.ndarray, color: str = "BGR") -> Result:
        return self.batch([frame], color)[0]

    def batch(self, frames: Sequence[np.ndarray], color: str = "BGR") -> list[Result]:
        """Score several frames in one graph call; stage times are per batch, normalise_ms per frame."""
        start = time.perf_counter()
        inputs = np.stack([self.preprocess(f, color) for f in frames])
        times = {"preprocess_ms": (time.perf_counter() - start) * 1e3}
        raws = self.raw_maps(inputs, times)
        return [self._result(raw, frame.shape, times) for raw, frame in zip(raws, frames)]
