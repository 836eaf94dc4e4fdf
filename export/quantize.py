"""INT8 by explicit quantisation: Q/DQ nodes from ONNX Runtime's static quantiser.

Default settings are the ones TensorRT's explicit-quantisation path accepts: QDQ format, signed
INT8, symmetric activations and weights (zero point 0), per-channel weights. ONNX Runtime on x86
CPUs runs that form slower than FP32 (its fast integer kernels want unsigned activations; on
this project's 2-core EPYC the encoder takes 8.0 ms against 4.7 ms FP32), so activations
"uint8" (asymmetric, 3.3 ms) is offered for bundles that will run on ONNX Runtime on a CPU;
TensorRT does not read those. In uint8 graphs the encoder's per-position whitening is dynamic
INT8 (a quarter of the memory it reads per call) and average pooling stays FP32. The
convolution graphs (encoder, bridge step) are quantised; the graphs built on distances to
prototypes and softmax gates (prior, prototype/GMM head) and the restoration map stay FP32 in
TensorRT's form: their work is a few matrix products, and BRIDGE_NOTES warns that GMM logits
need full precision. In uint8 bundles their products by the prototypes are dynamic INT8
(`quantize_distance_graph`), measured without loss on ELPV.

Calibration activations come from real frames: the encoder sees the images, the step graph
sees the states along the sampler's trajectory for every supported K.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edge_ad.backends import exact_int8_kernels
from edge_ad.engines import REDUCED_PRECISION_GRAPHS
from edge_ad.errors import EdgeAdError

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
QUANTISED_GRAPHS = REDUCED_PRECISION_GRAPHS  # the graphs TensorRT builds in reduced precision too
# Ops left FP32 in uint8 (ONNX Runtime CPU) graphs because ONNX Runtime's integer kernel is the
# slower one: QLinearAveragePool took 1.0 ms against 0.13 ms FP32 for the encoder's 3x3 pool at
# 256 px on this project's 2-core EPYC. Symmetric (TensorRT) graphs keep them quantised.
ORT_FLOAT_OPS = ("AveragePool",)
# Blocks of output columns the dynamic INT8 whitening is computed in (`integer_whitening`).
WHITENING_COLUMN_BLOCKS = 2
ACTIVATION_TYPES = {"int8": (QuantType.QInt8, True), "uint8": (QuantType.QUInt8, False)}  # (type, symmetric)


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


SENSITIVITY_BATCHES = 2  # calibration batches that measure each layer's quantisation noise


def layer_sqnr(fp32: Path, int8: Path, batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Signal-to-quantisation-noise ratio (dB) of each quantised node's own output, from ONNX
    Runtime's QDQ debugging tools: the node's output in the Q/DQ graph against its Q/DQ-free
    value (the "qdq_err" of onnxruntime.quantization.qdq_loss_debug)."""
    model = onnx.load(str(fp32))
    producer = {out: node.name for node in model.graph.node for out in node.output}
    with tempfile.TemporaryDirectory() as tmp:
        float_aug, int8_aug = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        modify_model_output_intermediate_tensors(fp32, float_aug)
        modify_model_output_intermediate_tensors(int8, int8_aug)
        sample = batches[:SENSITIVITY_BATCHES]
        matched = create_activation_matching(
            collect_activations(str(int8_aug), _Batches(sample)), collect_activations(str(float_aug), _Batches(sample))
        )
    errors = compute_activation_error(matched)
    return {producer[t]: float(e["qdq_err"]) for t, e in errors.items() if t in producer and "qdq_err" in e}


def output_sqnr(fp32: Path, int8: Path, batches: list[dict[str, np.ndarray]]) -> float:
    """Signal-to-noise ratio (dB) of the graph's first output, Q/DQ graph against FP32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    exact_int8_kernels(options)  # on x86 CPUs without VNNI, measure what the bundle will run
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    signal = noise = 0.0
    for batch in batches[:SENSITIVITY_BATCHES]:
        reference, quantised = (s.run(None, batch)[0].astype(np.float64) for s in sessions)
        signal += float((reference**2).sum())
        noise += float(((quantised - reference) ** 2).sum())
    return float(10 * np.log10(signal / max(noise, 1e-30)))


def _whitening_nodes(graph: onnx.GraphProto) -> list[str]:
    """The encoder's per-position whitening: MatMuls by a constant of shape (positions, C, C).

    The static Q/DQ pass leaves them out: its per-channel INT8 weights would share one scale
    across all positions. They stay FP32 in TensorRT's form and become dynamic INT8 with one
    scale per (position, column) in ONNX Runtime's (`integer_whitening`)."""
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and ranks.get(node.input[1]) == 3]


def integer_whitening(path: Path, nodes: Sequence[str]) -> None:
    """Rewrite the whitening MatMuls of the graph at `path` as ONNX Runtime's dynamic INT8 form.

    Used for uint8 (ONNX Runtime CPU) graphs only: a (positions, C, C) FP32 transform is read
    from memory on every call (95 MB at 256 px, most of the CPU encoder's time at batch 1); as
    INT8 it is a quarter of that. Each (position, column) gets its own symmetric weight scale,
    which keeps the weight error of every output channel to 1/254 of that column's largest
    entry; the input is quantised per call (DynamicQuantizeLinear, uint8, per tensor). TensorRT
    does not read MatMulInteger, so symmetric (TensorRT) graphs keep FP32 whitening.
    Written by hand because ONNX Runtime's `quantize_dynamic` cannot give these scales: with
    per_channel it writes a graph its own DynamicQuantizeMatMul refuses ("b zero point is not
    valid"), and one scale per tensor has 5.3 % error against 4.2 % on ELPV frames at eps 0.1,
    growing as a smaller eps lets single entries reach 1/sqrt(eps).

    The product is computed in WHITENING_COLUMN_BLOCKS blocks of output columns, each over the
    input rows up to its last nonzero weight row, and concatenated: the transform is upper
    triangular (L^-T), so the first block needs only the first rows. Measured on the ELPV transform
    (1024 x 152 x 152) in ONNX Runtime, batch 1: 1.8-2.2 ms in one MatMulInteger, 0.9-1.2 ms in two
    blocks (18 MB instead of 24), 1.1-1.7 ms in four; two blocks over all rows take 1.4 ms, so both
    the smaller weights and the narrower products count."""
    model = onnx.load(str(path))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    rewritten = []
    for node in graph.node:
        if node.name not in nodes:
            rewritten.append(node)
            continue
        source, weight_name = node.input
        weight = onnx.numpy_helper.to_array(weights[weight_name]).astype(np.float32)
        scale = np.maximum(np.abs(weight).max(axis=1, keepdims=True), 1e-12) / 127.0  # (positions, 1, C)
        quantised = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(weights[weight_name])
        prefix = f"{node.name}_int8"
        graph.initializer.append(onnx.numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_weight_scale"))
        make = onnx.helper.make_node
        rewritten.append(
            make("DynamicQuantizeLinear", [source], [f"{prefix}_x", f"{prefix}_x_scale", f"{prefix}_x_zero"], name=f"{prefix}_quantize")
        )
        products = []
        edges = np.linspace(0, quantised.shape[2], WHITENING_COLUMN_BLOCKS + 1).round().astype(int)
        for block, (first, last) in enumerate(zip(edges[:-1], edges[1:])):
            columns = quantised[:, :, first:last]
            rows = int(np.flatnonzero(columns.any(axis=(0, 2))).max(initial=0)) + 1
            name = f"{prefix}_block{block}"
            graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(columns[:, :rows]), f"{name}_weight"))
            rows_of_x = f"{prefix}_x"
            if rows < quantised.shape[1]:
                rows_of_x = f"{name}_x"
                graph.initializer.extend(
                    onnx.numpy_helper.from_array(np.array([value], np.int64), f"{name}_{what}")
                    for what, value in (("start", 0), ("end", rows), ("axis", -1))
                )
                rewritten.append(
                    make("Slice", [f"{prefix}_x", f"{name}_start", f"{name}_end", f"{name}_axis"], [rows_of_x], name=f"{name}_rows")
                )
            products.append(f"{name}_product")
            rewritten.append(
                make("MatMulInteger", [rows_of_x, f"{name}_weight", f"{prefix}_x_zero"], [products[-1]], name=f"{name}_matmul")
            )
        rewritten += [
            make("Concat", products, [f"{prefix}_product"], name=f"{prefix}_concat", axis=-1),
            make("Cast", [f"{prefix}_product"], [f"{prefix}_float"], name=f"{prefix}_cast", to=onnx.TensorProto.FLOAT),
            make("Mul", [f"{prefix}_x_scale", f"{prefix}_weight_scale"], [f"{prefix}_scale"], name=f"{prefix}_scale"),
            make("Mul", [f"{prefix}_float", f"{prefix}_scale"], list(node.output), name=f"{prefix}_rescale"),
        ]
    del graph.node[:]
    graph.node.extend(rewritten)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize_distance_graph(path: Path) -> bool:
    """Rewrite the MatMuls by constant prototypes of the FP32 distance graph at `path` (GMM prior
    and head, prototype head) as dynamic INT8 with ONNX Runtime's `quantize_dynamic`: per-channel
    int8 weights, the input quantised per call. For uint8 (ONNX Runtime CPU) bundles only. False,
    and `path` untouched, when the graph has no such MatMul (the restoration head).

    BRIDGE_NOTES warns that GMM logits want full precision (tau divides them); on ELPV seed 0
    the bridge's prior took 1.1 ms against 1.5 ms FP32 and its AUROC did not change (0.9196
    against 0.9193). The bundle's own quantiles are computed from these graphs, and `edge-ad
    eval` is the check on other data."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "dynamic.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(quantised), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
        if "MatMulInteger" not in {node.op_type for node in onnx.load(str(quantised)).graph.node}:
            return False
        path.write_bytes(quantised.read_bytes())
    return True


def unshare_weights(model: onnx.ModelProto) -> None:
    """Give each node of `model` its own copy of the constant inputs it shares with
    another (the fused graph's K steps share the step's weights).

    ONNX Runtime's exact INT8 kernels for x86 CPUs without VNNI (`edge_ad.backends.
    exact_int8_kernels`) convert each quantised weight for its node, and refuse to load a graph
    in which two nodes hold one ("Attempt to replace the existing tensor"). The copies cost the
    fused graph (K - 1) times the step's weights, 0.3 M parameters each."""
    constants = {init.name: init for init in model.graph.initializer}
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        for slot, name in enumerate(node.input):
            if name not in constants:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(constants[name])
                copy.name = f"{name}_node{index}_input{slot}"
                model.graph.initializer.append(copy)
                node.input[slot] = copy.name
            seen.add(name)


def quantize_graph(
    fp32: Path,
    int8: Path,
    batches: list[dict[str, np.ndarray]],
    method: str,
    activations: str = "int8",
    keep_fp32: Sequence[str] = (),
    keep_below_db: float | None = None,
) -> dict:
    """Write the Q/DQ INT8 version of graph `fp32` to `int8`, calibrated on `batches` (graph
    inputs). Nodes named in `keep_fp32` stay FP32. With `keep_below_db`, every node whose own
    output has a signal-to-quantisation-noise ratio below it is a candidate (measured on a first
    quantisation); the graph is quantised again without them and that is kept only if the
    graph's output comes closer to FP32 (a node's own noise need not be the output's: a
    convolution's noise before a ReLU6 is mostly cut away). Returns kept_fp32, search_rejected
    (candidates left quantised because keeping them made the output worse), dynamic_int8 (the
    whitening MatMuls of uint8 graphs, see `integer_whitening`), output_sqnr_db, and
    worst_sqnr_db (the five noisiest quantised nodes of the written graph)."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activation type {activations!r} is not one of {', '.join(ACTIVATION_TYPES)}")
    activation_type, symmetric = ACTIVATION_TYPES[activations]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        unshare_weights(model)
        onnx.save(model, str(prepared))
        graph = model.graph
        names = {node.name for node in graph.node}
        unknown = sorted(set(keep_fp32) - names)
        if unknown:
            raise EdgeAdError(f"{fp32.name}: no nodes named {', '.join(unknown)} (--keep-fp32)")
        whitening = _whitening_nodes(graph)
        dynamic = [] if symmetric else whitening
        slow_integer = [] if symmetric else [node.name for node in graph.node if node.op_type in ORT_FLOAT_OPS]
        keep_fp32 = sorted(set(keep_fp32) | set(whitening) | set(slow_integer))

        def quantise(excluded: list[str]) -> None:
            quantize_static(
                str(prepared),
                str(int8),
                _Batches(batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=activation_type,
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
                nodes_to_exclude=excluded,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
            if dynamic:
                integer_whitening(int8, dynamic)

        kept = sorted(keep_fp32)
        quantise(kept)
        sqnr = layer_sqnr(prepared, int8, batches)
        output_db = output_sqnr(prepared, int8, batches)
        rejected: list[str] = []
        if keep_below_db is not None:
            noisy = sorted(name for name, db in sqnr.items() if db < keep_below_db and name not in kept)
            if noisy:
                quantise(kept + noisy)
                searched_db = output_sqnr(prepared, int8, batches)
                if searched_db > output_db:
                    kept, output_db = sorted(kept + noisy), searched_db
                    sqnr = layer_sqnr(prepared, int8, batches)
                else:  # a node's own noise is not the graph's: keeping these made the output worse
                    rejected = noisy
                    quantise(kept)
    worst = dict(sorted(sqnr.items(), key=lambda item: item[1])[:5])
    return {
        "kept_fp32": sorted(set(kept) - set(dynamic)),
        "dynamic_int8": dynamic,
        "search_rejected": rejected,
        "output_sqnr_db": round(output_db, 2),
        "worst_sqnr_db": {name: round(db, 2) for name, db in worst.items()},
    }
