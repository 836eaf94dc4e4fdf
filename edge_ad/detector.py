"""The detector: a bundle run with ONNX Runtime, frame in, score and map out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .bundle import Bundle, load_bundle
from .errors import BundleError, EdgeAdError
from .images import resize_to_input, to_rgb


@dataclass
class Result:
    """What the detector says about one frame.

    score: maximum of the normalised map (not clipped); is_anomaly: score >= threshold;
    map: normalised map in frame coordinates, clipped to [0, 1] for display;
    raw_map: smoothed raw map at the model input size; times_ms: milliseconds per stage
    (preprocess, encoder, head, upsample, normalise).
    """

    score: float
    is_anomaly: bool
    threshold: float
    map: np.ndarray
    raw_map: np.ndarray
    times_ms: dict[str, float] = field(default_factory=dict)


class _OnnxGraph:
    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({exc})") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.input_names, arrays)))[0]


class Detector:
    """Runs a bundle on frames of any size (uint8; BGR, RGB or grey).

    >>> detector = Detector.load("bundle")
    >>> result = detector(frame)              # frame as OpenCV delivers it (BGR)
    >>> result.score, result.is_anomaly
    """

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        self.bundle = bundle
        self.threshold = bundle.threshold
        self._encoder = _OnnxGraph(bundle.graphs["encoder"], threads)
        self._head = _OnnxGraph(bundle.graphs["head"], threads)

    @classmethod
    def load(cls, bundle: str | Path, threads: int | None = None) -> "Detector":
        return cls(load_bundle(bundle), threads)

    def preprocess(self, frame: np.ndarray, color: str = "BGR") -> np.ndarray:
        """Frame -> uint8 RGB at the model input size (the encoder normalises inside the graph)."""
        return resize_to_input(to_rgb(frame, color), *self.bundle.input_size)

    def grid_maps(self, inputs: np.ndarray, times: dict[str, float] | None = None) -> np.ndarray:
        """Batch of preprocessed inputs (B, H, W, 3) -> raw maps on the feature grid (B, 1, h, w).

        With `times`, the milliseconds of each graph are added under encoder_ms and head_ms.
        """
        start = time.perf_counter()
        features = self._encoder(inputs)
        mid = time.perf_counter()
        grids = self._head(features)
        if times is not None:
            times["encoder_ms"] = (mid - start) * 1e3
            times["head_ms"] = (time.perf_counter() - mid) * 1e3
        return grids

    def raw_maps(self, inputs: np.ndarray, times: dict[str, float] | None = None) -> np.ndarray:
        """Batch of preprocessed inputs (B, H, W, 3) -> smoothed raw maps at input size (B, H, W)."""
        grids = self.grid_maps(inputs, times)
        start = time.perf_counter()
        height, width = self.bundle.input_size
        sigma = self.bundle.smoothing_sigma
        maps = np.empty((len(grids), height, width), np.float32)
        for i, grid in enumerate(grids[:, 0]):
            up = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
            maps[i] = cv2.GaussianBlur(up, (0, 0), sigma) if sigma > 0 else up
        if not np.all(np.isfinite(maps)):
            raise EdgeAdError(f"{self.bundle.root}: the graphs returned NaN or infinite values")
        if times is not None:
            times["upsample_ms"] = (time.perf_counter() - start) * 1e3
        return maps

    def _result(self, raw: np.ndarray, frame_shape: tuple[int, ...], times: dict[str, float]) -> Result:
        start = time.perf_counter()
        normalised = self.bundle.quantiles.apply(raw)
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
