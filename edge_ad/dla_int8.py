"""INT8 on a DLA core: TensorRT's own calibration, the second INT8 route.

On the GPU, INT8 engines come from the Q/DQ graphs of `export --precision int8`. The DLA of
JetPack 6 (TensorRT 8.6 and 10.3) takes INT8 only from per-tensor scales that TensorRT's
calibrator measures, with IInt8EntropyCalibrator2, the calibrator the DLA requires. So
`edge-ad build --bundle FP32_BUNDLE --precision int8 --dla-core N --calib-data D` runs D's frames
through the bundle's FP32 graphs in ONNX Runtime to get the inputs of every graph built in
reduced precision: the frames for the encoder; the features, condition and the state before
every step of every K the bundle holds for the step graph; features and condition for the
fused graph. TensorRT calibrates each graph on them, and keeps its calibration cache beside the
engines. Imported only for that build: TensorRT and pycuda are loaded when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backends import onnxruntime_graphs
from .bundle import Bundle
from .datasets import calibration_frames
from .errors import EdgeAdError
from .files import write_atomic

CALIBRATION_BATCH = 8  # frames per calibration batch: the calibration profile has this one batch size
STEP_CALIBRATION_FRAMES = 64  # frames whose sampler trajectories calibrate the step and fused graphs


def calibration_inputs(bundle: Bundle, data: str, count: int) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames at the bundle's input size from `data` (a data set's training
    split or a video, as `export --calib-data` takes them), N a multiple of CALIBRATION_BATCH:
    the last batch is filled up with the first frames again."""
    frames = calibration_frames(data, count, bundle.input_size, bundle.trained_on_grey)
    if len(frames) < CALIBRATION_BATCH:
        raise EdgeAdError(f"{data}: INT8 calibration needs at least {CALIBRATION_BATCH} readable frames, "
                          f"found {len(frames)}")
    inputs = np.stack(frames)
    batches = -(-len(inputs) // CALIBRATION_BATCH)
    return inputs[np.arange(batches * CALIBRATION_BATCH) % len(inputs)]


def graph_batches(bundle: Bundle, inputs: np.ndarray) -> dict[str, list[dict[str, np.ndarray]]]:
    """For each graph of `bundle` built in reduced precision, the batches of its inputs (by input
    name) on calibration `inputs`, run through the bundle's FP32 graphs in ONNX Runtime."""
    graphs = onnxruntime_graphs(bundle, threads=None, spin=False)
    schedules = bundle.spec["bridge"]["schedules"] if bundle.model_type == "bridge" else {}
    tables = [np.asarray(entry["coefficients"], np.float32) for _, entry in sorted(schedules.items())]
    batches: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in ("encoder", "step", "fused") if name in graphs}
    for start in range(0, len(inputs), CALIBRATION_BATCH):
        frames = inputs[start : start + CALIBRATION_BATCH]
        batches["encoder"].append({"image": frames})
        if bundle.model_type != "bridge" or start >= STEP_CALIBRATION_FRAMES:
            continue
        features = graphs["encoder"](frames)[0]
        condition = graphs["prior"](features)[1]
        if "fused" in batches:
            batches["fused"].append({"state": features, "condition": condition})
        for table in tables:
            state = features
            for row in table:
                batches["step"].append({"state": state, "condition": condition, "coefficients": row})
                state = graphs["step"](state, condition, row)[0]
    return batches


def entropy_calibrator(trt: Any, memory: Any, batches: list[dict[str, np.ndarray]], cache: Path) -> Any:
    """TensorRT's IInt8EntropyCalibrator2 over `batches` (one dict of input arrays per batch),
    reading and writing its calibration cache at `cache`. `shapes` holds each input's shape for
    the build's calibration profile. `memory` (edge_ad/cuda_memory.py) holds its device buffers;
    its CUDA context must be current while TensorRT builds."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.shapes = {name: array.shape for name, array in batches[0].items()}
            self.device = {name: memory.alloc(array.nbytes) for name, array in batches[0].items()}
            self.stream = memory.stream()
            self.pending = iter(batches)

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch is the first dimension of every input's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.pending, None)
            if batch is None:
                return None
            for name in names:
                memory.to_device(self.device[name], np.ascontiguousarray(batch[name]), self.stream)
            self.stream.synchronize()
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            write_atomic(cache, bytes(data))  # half a cache would give the next build wrong INT8 scales

    return Calibrator()
