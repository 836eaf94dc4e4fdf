"""INT8 by explicit quantisation: Q/DQ nodes from ONNX Runtime's static quantiser.

Default settings are the ones TensorRT's explicit-quantisation path accepts: QDQ format, signed
INT8, symmetric activations and weights (zero point 0), per-channel weights. ONNX Runtime on x86
CPUs runs that form slower than FP32 (its fast integer kernels want unsigned activations; on
this project's 2-core EPYC the encoder takes 8.0 ms against 4.7 ms FP32), so activations
"uint8" (asymmetric, 3.3 ms) is offered for bundles that will run on ONNX Runtime on a CPU;
TensorRT does not read those. The convolution graphs
(encoder, bridge step) are quantised; the graphs built on distances to prototypes and
softmax gates (prior, prototype/GMM head) and the restoration map stay FP32: their work is a
few matrix products, and BRIDGE_NOTES warns that GMM logits need full precision.

Calibration activations come from real frames: the encoder sees the images, the step graph
sees the states along the sampler's trajectory for every supported K.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
QUANTISED_GRAPHS = ("encoder", "step")
ACTIVATION_TYPES = {"int8": (QuantType.QInt8, True), "uint8": (QuantType.QUInt8, False)}  # (type, symmetric)


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_graph(
    fp32: Path, int8: Path, batches: list[dict[str, np.ndarray]], method: str, activations: str = "int8"
) -> None:
    """Write the Q/DQ INT8 version of graph `fp32` to `int8`, calibrated on `batches` (graph inputs)."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activation type {activations!r} is not one of {', '.join(ACTIVATION_TYPES)}")
    activation_type, symmetric = ACTIVATION_TYPES[activations]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8),
            _Batches(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=activation_type,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
