"""A bundle as one network for DeepStream's Gst-nvinfer, with its nvinfer config.

nvinfer runs one network per element, on RGB planes it has scaled to the network's size itself
(`y = net-scale-factor * (x - offsets)`, here 1 and 0: float pixels 0-255). So the bundle's
graphs become one ONNX graph: the encoder without its uint8 NHWC entry, then the head (and for a
bridge bundle the GMM prior and the K bridge steps at the bundle's K, the schedule built in),
ending in the raw maps on the feature grid, `grid_maps` (batch, branches, h, w). nvinfer attaches
them to each frame (`network-type=100`, `output-tensor-meta=1`) and `edge_ad.deepstream` turns
them into the same score, map and alarm as the Detector, with the bundle's quantiles, its site
calibration and its threshold.

nvinfer builds an FP32 bundle's engine from the ONNX itself. FP16 and INT8 engines are built here
(`build=True`, on the device) and the config names only them (`model-engine-file`): nvinfer would
put the distance layers in FP16 too, where GMM logits overflow, and it sets TensorRT's INT8 flag
only with a calibration file, which Q/DQ graphs do not need. nvinfer hands edge-ad the maps only,
so the joined network, and the engine built here, score the bundle's check images before they
are written (edge_ad.self_check).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edge_ad import __version__
from edge_ad.bundle import Bundle, load_bundle
from edge_ad.deepstream import CONFIG_FILE, DEEPSTREAM_DIR, MODEL_FILE, OUTPUT, engine_name
from edge_ad.engines import build_serialized_engine, memory_pool_mib, refuse_unsigned_int8
from edge_ad.errors import EdgeAdError, shell_word
from edge_ad.files import write_atomic
from edge_ad.self_check import check_maps

INPUT = "input"
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode
# The engine precisions a bundle's graphs can be built in: Q/DQ graphs need the INT8 flag, and
# half graphs are FP16 already
ENGINE_PRECISIONS = {"fp32": ("fp32", "fp16"), "fp16": ("fp16",), "int8": ("int8",)}
# Layers kept in FP32 in an FP16 or INT8 engine: the distances and GMM gates (edge_ad.engines)
DISTANCE_LAYERS = ("head/", "prior/")
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # luma of R, G, B (ITU-R BT.601), as OpenCV's RGB-to-grey weighs them


def _rewired(model: onnx.ModelProto, prefix: str, inputs: dict[str, str], outputs: dict[str, str]) -> onnx.GraphProto:
    """`model`'s graph with every name prefixed, except its inputs and outputs, which are renamed
    to the tensors they are joined to (`inputs` / `outputs`: graph name -> tensor name). Every
    node gets a name, so that TensorRT's layers carry the prefix (`DISTANCE_LAYERS`)."""
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    graph = onnx.compose.add_prefix(model, prefix).graph
    rename = {prefix + old: new for old, new in (inputs | outputs).items()}
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    return graph


def _read_planes(encoder: onnx.ModelProto) -> None:
    """Make the encoder read float RGB planes (batch, 3, H, W) named INPUT instead of uint8 NHWC:
    its leading Transpose goes, and the Cast behind it now casts float pixels."""
    graph = encoder.graph
    entry = graph.input[0].name
    readers = [node for node in graph.node if entry in node.input]
    perms = [list(helper.get_attribute_value(a)) for a in readers[0].attribute if a.name == "perm"] if readers else []
    if len(readers) != 1 or readers[0].op_type != "Transpose" or perms != [[0, 3, 1, 2]]:
        raise EdgeAdError("the bundle's encoder graph does not start with its NHWC-to-NCHW Transpose; "
                          "export the bundle again with this edge-ad version")
    transpose = readers[0]
    for node in graph.node:
        node.input[:] = [INPUT if name == transpose.output[0] else name for name in node.input]
    graph.node.remove(transpose)


def _see_in_grey(encoder: onnx.ModelProto) -> None:
    """Make the encoder see its RGB planes in grey, as the Detector shows a colour camera's frames
    to a bundle trained on grey pictures: a 1x1 convolution whose three outputs are each the luma."""
    graph = encoder.graph
    weight = np.tile(np.array(GREY_WEIGHTS, np.float32), (3, 1)).reshape(3, 3, 1, 1)
    graph.initializer.append(numpy_helper.from_array(weight, "grey/weight"))
    for node in graph.node:
        node.input[:] = ["grey/planes" if name == INPUT else name for name in node.input]
    graph.node.insert(0, helper.make_node("Conv", [INPUT, "grey/weight"], ["grey/planes"], name="grey/luma"))


def single_graph(bundle: Bundle) -> onnx.ModelProto:
    """The bundle's graphs joined into one: float RGB planes 0-255 in, the raw grid maps out."""
    height, width = bundle.input_size
    encoder = onnx.load(bundle.graphs["encoder"])
    _read_planes(encoder)
    if bundle.trained_on_grey:
        _see_in_grey(encoder)
    models = [encoder]
    nodes, initializers = list(encoder.graph.node), list(encoder.graph.initializer)

    def add(name: str, prefix: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
        model = onnx.load(bundle.graphs[name])
        models.append(model)
        graph = _rewired(model, prefix, inputs, outputs)
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)

    if bundle.model_type != "bridge":
        add("head", "head/", {"features": "features"}, {"raw_map": OUTPUT})
    else:
        add("prior", "prior/", {"features": "features"}, {"prior_map": "prior_map", "condition": "condition"})
        if bundle.fused_steps == bundle.steps and "fused" in bundle.graphs:  # as the Detector runs it
            add("fused", "fused/", {"state": "features", "condition": "condition"}, {"restored": "restored"})
        else:
            state = "features"
            for k, coefficients in enumerate(bundle.coefficients):
                prefix = f"step{k}/"
                initializers.append(numpy_helper.from_array(coefficients.astype(np.float32), prefix + "schedule"))
                out = "restored" if k == len(bundle.coefficients) - 1 else prefix + "out"
                add("step", prefix, {"state": state, "condition": "condition", "coefficients": prefix + "schedule"},
                    {"next_state": out})
                state = out
        add("head", "head/", {"features": "features", "restored": "restored"}, {"raw_map": "bridge_map"})
        nodes.append(helper.make_node("Concat", ["prior_map", "bridge_map"], [OUTPUT], axis=1, name="head/branches"))
    opsets: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    grid = [d.dim_value or d.dim_param for d in encoder.graph.output[0].type.tensor_type.shape.dim[2:]]
    graph = helper.make_graph(
        nodes,
        "edge_ad",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", len(bundle.branches), *grid])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name="edge-ad", producer_version=__version__)
    model.ir_version = encoder.ir_version
    onnx.checker.check_model(model)
    return model


def nvinfer_config(bundle: Bundle, precision: str, engine: str | None, batch_size: int = 1) -> str:
    """Gst-nvinfer's config for the single graph: primary mode on whole frames, stretched to the
    model input as the Detector resizes them (with the bilinear filter, not nearest-neighbour),
    RGB planes 0-255, the raw output attached as tensor meta. An FP16 or INT8 engine is named
    alone (built by `--build` with the distance layers in FP32), so that nvinfer never builds one
    of its own with them in FP16."""
    height, width = bundle.input_size
    lines = [
        f"# edge-ad {__version__}: {bundle.model_type} bundle, {bundle.precision} graphs"
        + (f", K={bundle.steps}" if bundle.steps else "") + f", {precision} engine",
        f"# nvinfer runs the network; edge_ad.deepstream scores its '{OUTPUT}' tensor meta (README: edge-ad deepstream)",
        "[property]",
        "gpu-id=0",
        *([f"onnx-file={MODEL_FILE}"] if precision == "fp32" else []),
        *([f"model-engine-file={engine}"] if engine else []),
        f"network-mode={NETWORK_MODES[precision]}",
        f"batch-size={batch_size}",
        "process-mode=1",
        "network-type=100",
        "output-tensor-meta=1",
        f"output-blob-names={OUTPUT}",
        "gie-unique-id=1",
        "model-color-format=0",
        "net-scale-factor=1.0",
        "offsets=0;0;0",
        f"infer-dims=3;{height};{width}",
        "network-input-order=0",
        "maintain-aspect-ratio=0",
        "scaling-filter=1",
    ]
    return "\n".join(lines) + "\n"


class _Network:
    """The joined network as the check scores it: uint8 RGB images in, fed as nvinfer feeds them."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray]):
        self.run = run

    def grid_maps(self, inputs: np.ndarray) -> np.ndarray:
        return self.run(inputs.transpose(0, 3, 1, 2).astype(np.float32))


def _check_network(bundle: Bundle, run: Callable[[np.ndarray], np.ndarray], where: str, remedy: str) -> None:
    """The bundle's check images through the joined network, against the maps it was exported
    with (edge_ad.self_check): nvinfer hands edge-ad maps only, so they are checked here."""
    if bundle.check is not None:
        with np.load(bundle.check) as check:
            check_maps(_Network(run), dict(check), bundle.steps, where, remedy)


def _place_checked_engine(bundle: Bundle, serialized: bytes, path: Path) -> None:
    """Write the engine where the nvinfer config names it once its maps pass the bundle's check
    (an FP16 engine whose GMM logits overflowed would pass every part)."""
    from edge_ad.tensorrt_backend import engine_graph

    staged = path.with_name(path.name + ".new")
    write_atomic(staged, serialized)  # whole and synced, or not at all (a full disk, a power cut)
    try:
        graph = engine_graph(staged)
        _check_network(bundle, lambda planes: graph(planes)[0], f"{path} on tensorrt",
                       "the engine is not placed; build it again, or at another --precision")
    except BaseException:
        staged.unlink()
        raise
    os.replace(staged, path)


def write_deepstream(
    bundle_path: Path, out: Path | None = None, steps: int | None = None, precision: str | None = None,
    build: bool = False, batch_size: int = 1,
) -> Path:
    """Write the single graph and its nvinfer config into `out` (default: the bundle folder's
    `deepstream/`). precision: the engine's (default: the bundle's; an FP32 bundle may run as
    FP16); with `build` (on the device), the TensorRT engine is built too. batch_size: frames per
    nvinfer call; nvinfer splits a larger nvstreammux batch (more cameras) into calls of this size."""
    bundle = load_bundle(bundle_path, steps)
    precision = precision or bundle.precision
    if precision not in ENGINE_PRECISIONS[bundle.precision]:
        raise EdgeAdError(f"{bundle.root}: {bundle.precision} graphs run as a "
                          f"{' or '.join(ENGINE_PRECISIONS[bundle.precision])} engine, not {precision}")
    refuse_unsigned_int8(bundle)
    if out is None:
        if not Path(bundle_path).is_dir():
            raise EdgeAdError(f"{bundle_path}: a bundle archive; give --out for the DeepStream files")
        out = Path(bundle_path) / DEEPSTREAM_DIR
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    model = single_graph(bundle)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _check_network(bundle, lambda planes: session.run([OUTPUT], {INPUT: planes})[0], f"{model_path} on onnxruntime",
                   "nothing is written; where edge-ad doctor passes the bundle itself, the join is at fault")
    write_atomic(model_path, model.SerializeToString())
    engine = engine_name(precision, batch_size) if build or precision != "fp32" else None
    write_atomic(out / CONFIG_FILE, nvinfer_config(bundle, precision, engine, batch_size).encode())
    if build:  # after the network and config are written: a failed build loses neither
        workspace = memory_pool_mib()
        print(f"building the TensorRT engine (memory-pool limit {workspace} MiB), this can take minutes")
        serialized = build_serialized_engine(model_path, precision, fp32_layers=DISTANCE_LAYERS,
                                             workspace_mib=workspace, max_batch=batch_size, opt_batch=batch_size)
        _place_checked_engine(bundle, serialized, out / engine)
    elif engine:
        print(f"{out / CONFIG_FILE} names {engine}: build it on the device with edge-ad deepstream --bundle "
              f"{shell_word(bundle_path)} --precision {precision} --batch-size {batch_size} --build")
    return out
