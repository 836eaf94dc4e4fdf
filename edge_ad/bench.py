"""`edge-ad bench`: per-stage latency, end-to-end frames per second and peak memory of a bundle,
or of one bundle per product variant run together (stages then keyed 'variant/stage'), with the
board's temperatures and rail power at the end (a Jetson throttles when hot)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from .detector import Detector
from .device import read_sensors
from .variants import VariantDetector

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


def _describe(detector: Detector) -> dict:
    return {
        "bundle": str(detector.bundle.root),
        "backend": detector.backend,
        "onnxruntime_spin": detector.spin,
        "onnxruntime_u8u8": detector.u8u8,  # INT8 in the exact, slower kernels of x86 CPUs without VNNI
        "precision": detector.precision,
        "bridge_steps": detector.steps,
        "input_size": list(detector.bundle.input_size),
    }


def _stage(key: str) -> str:
    """'encoder_ms' or, for a variant, 'mono/encoder_ms' -> 'encoder_ms'."""
    return key.rpartition("/")[2]


def bench(detector: Detector | VariantDetector, frames: int, warmup: int, height: int, width: int, batch: int = 1) -> dict:
    """Score `warmup` + `frames` synthetic frames, `batch` frames per detector call (as the run
    command does when several cameras have a frame ready); report the timed ones. Latency and
    stage times are per call; frames is rounded up to whole calls."""
    if batch < 1:
        raise ValueError(f"bench batch must be at least 1, got {batch}")
    pixels = batch * height * width * 3
    if pixels > os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"):  # --batch 99999999999 hung without a word
        frames_said = f"{batch} frame{'s' if batch > 1 else ''}"
        raise MemoryError(f"a call of {frames_said} of {width}x{height} holds {pixels / 2**30:.1f} GiB of pixels, more "
                          "than this machine's memory")
    pool = synthetic_frames(height, width)
    calls = -(-frames // batch)
    for i in range(-(-warmup // batch)):
        detector.batch([pool[(i * batch + j) % len(pool)] for j in range(batch)])
    stages: dict[str, list[float]] = {}
    totals = []
    start = time.perf_counter()
    for i in tqdm(range(calls), desc="bench", unit="call" if batch > 1 else "frame"):
        chunk = [pool[(i * batch + j) % len(pool)] for j in range(batch)]
        t0 = time.perf_counter()
        results = detector.batch(chunk)
        totals.append((time.perf_counter() - t0) * 1e3)
        for name, value in results[0].times_ms.items():  # per call, but normalising is per frame
            if _stage(name) == "normalise_ms":
                value = sum(r.times_ms[name] for r in results)
            stages.setdefault(name, []).append(value)
    elapsed = time.perf_counter() - start
    graph_ms = sum(np.sum(stages[k]) for k in stages if _stage(k) in GRAPH_STAGES)
    if isinstance(detector, VariantDetector):
        described = {"variants": {name: _describe(d) for name, d in detector.detectors.items()}}
    else:
        described = _describe(detector)
    return {
        **described,
        "frame_size": [height, width],
        "batch": batch,
        "frames": calls * batch,
        "warmup": warmup,
        "fps": calls * batch / elapsed,
        "latency_ms": _percentiles(totals),
        "stages_ms": {name: _percentiles(values) for name, values in stages.items()},
        "share_outside_graphs": float(1.0 - graph_ms / np.sum(totals)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "sensors": asdict(read_sensors()),  # at the end of the timed frames: heat and power beside the fps
    }
