"""FP16 graphs for ONNX Runtime (onnxconverter-common): the convolution graphs (encoder, bridge
step) with FP16 weights and arithmetic and FP32 inputs and outputs, so the runtime feeds them
as before. The distance graphs stay FP32, as for INT8 (GMM logits overflow FP16).

Which provider gains: the CUDA provider runs FP16 on tensor cores; ONNX Runtime's CPU provider
has few FP16 kernels on x86 and inserts casts around the rest, so on a CPU FP16 is a size
saving, not a speed one (see the README's table). TensorRT needs no FP16 graph: `edge-ad
build --precision fp16` sets the builder flag on the FP32 graphs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16



def to_fp16(fp32: Path, fp16: Path) -> None:
    with warnings.catch_warnings():  # it warns once per weight below FP16's range, which it clamps
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    # The converter retypes a Cast's output to float16 but leaves its 'to' attribute at float
    # (the encoder's uint8 -> float Cast); make the attribute say what the graph now declares.
    half_outputs = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in half_outputs:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT:
                    attribute.i = onnx.TensorProto.FLOAT16
    onnx.save(model, str(fp16))
