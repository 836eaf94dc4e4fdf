"""`edge-ad bench`: per-stage latency, end-to-end frames per second and peak memory of a bundle."""

from __future__ import annotations

import resource
import time

import numpy as np
from tqdm import tqdm

from .detector import Detector

SYNTHETIC_FRAMES = 8


def synthetic_frames(height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """A few distinct BGR frames (smooth gradients plus noise), made once so that making them is not timed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for _ in range(SYNTHETIC_FRAMES):
        base = (ys * rng.uniform(0.2, 1) + xs * rng.uniform(0.2, 1)) % 256
        noise = rng.normal(0, 12, (height, width, 3))
        frames.append(np.clip(base[..., None] + noise, 0, 255).astype(np.uint8))
    return frames


# Stages that are graph calls; the bridge stage is its K step-graph calls (with the numpy loop).
GRAPH_STAGES = ("encoder_ms", "prior_ms", "bridge_ms", "head_ms")


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {"p50": float(np.percentile(array, 50)), "p99": float(np.percentile(array, 99))}


def bench(detector: Detector, frames: int, warmup: int, height: int, width: int) -> dict:
    """Score `warmup` + `frames` synthetic frames one at a time; report the timed ones."""
    pool = synthetic_frames(height, width)
    for i in range(warmup):
        detector(pool[i % len(pool)])
    stages: dict[str, list[float]] = {}
    totals = []
    start = time.perf_counter()
    for i in tqdm(range(frames), desc="bench", unit="frame"):
        t0 = time.perf_counter()
        result = detector(pool[i % len(pool)])
        totals.append((time.perf_counter() - t0) * 1e3)
        for name, value in result.times_ms.items():
            stages.setdefault(name, []).append(value)
    elapsed = time.perf_counter() - start
    graph_ms = sum(np.sum(stages[k]) for k in stages if k in GRAPH_STAGES)
    return {
        "bundle": str(detector.bundle.root),
        "backend": detector.backend,
        "precision": detector.precision,
        "bridge_steps": detector.steps,
        "frame_size": [height, width],
        "input_size": list(detector.bundle.input_size),
        "frames": frames,
        "warmup": warmup,
        "fps": frames / elapsed,
        "latency_ms": _percentiles(totals),
        "stages_ms": {name: _percentiles(values) for name, values in stages.items()},
        "share_outside_graphs": float(1.0 - graph_ms / np.sum(totals)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
