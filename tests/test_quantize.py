"""INT8 export: Q/DQ graphs from ONNX Runtime's static quantiser, run by the same detector."""

import platform
import shutil
from collections import Counter

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import numpy_helper

from edge_ad import Detector, load_bundle
from edge_ad.backends import exact_int8_kernels
from edge_ad.device import CONFIGS
from edge_ad.doctor import doctor
from edge_ad.engines import build_engines
from edge_ad.errors import BundleError, DataError, EdgeAdError
from edge_ad.metrics import auroc
from export.deepstream import write_deepstream
from export.onnx_export import SYMMETRIC_ENCODER_FP32, CalibrationConfig, calibration_count, export_bundle
from export.quantize import _whitening_nodes, integer_whitening, quantize_distance_graph, quantize_graph

from conftest import TINY_INPUT, TINY_PROTOTYPES


@pytest.fixture(scope="module")
def int8_bundle(tiny_bridge_bundle, mvtec_category, tmp_path_factory):
    run = tiny_bridge_bundle.parent / "run"
    calibration = CalibrationConfig(str(mvtec_category), images=12, method="minmax")
    return export_bundle(run, tmp_path_factory.mktemp("int8") / "bundle", precision="int8", calibration=calibration,
                         fuse_steps=2)


def _ops(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_bundle_has_qdq_convolution_graphs_and_fp32_distance_graphs(int8_bundle):
    spec = yaml.safe_load((int8_bundle / "bundle.yaml").read_text())
    assert spec["precision"] == "int8"
    assert spec["quantization"]["quantised_graphs"] == ["encoder", "step", "fused"]
    assert spec["quantization"]["calibration_images"] == 12
    assert spec["quantization"]["tensorrt_compatible"] and "dynamic" not in spec["quantization"]["format"]
    for name in ("encoder", "step", "fused"):
        assert spec["graphs"][name]["precision"] == "int8"
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(int8_bundle / spec["graphs"][name]["file"])
    for name in ("prior", "head"):
        assert "QuantizeLinear" not in _ops(int8_bundle / spec["graphs"][name]["file"])
    # symmetric activations: the encoder's first layers stay FP32, their weights not dequantised
    assert set(SYMMETRIC_ENCODER_FP32) <= set(spec["quantization"]["kept_fp32"]["encoder"])
    assert not set(SYMMETRIC_ENCODER_FP32) & _quantised_convs(int8_bundle / spec["graphs"]["encoder"]["file"])
    assert _quantised_convs(int8_bundle / spec["graphs"]["encoder"]["file"])
    # the fused graph's K steps hold their own copies of the step's weights: ONNX Runtime's exact
    # kernels for x86 CPUs without VNNI cannot load weights two nodes share
    fused = onnx.load(str(int8_bundle / spec["graphs"]["fused"]["file"])).graph
    dequantise = {n.output[0]: n.input[0] for n in fused.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in fused.node if n.op_type == "Conv" and n.input[1] in dequantise]
    assert len(convs) == 2 * len(_quantised_convs(int8_bundle / spec["graphs"]["step"]["file"]))  # K = 2
    weights = {n.input[1] for n in convs} | {dequantise[n.input[1]] for n in convs}
    uses = Counter(name for node in fused.node for name in node.input if name in weights)
    assert len(weights) == 2 * len(convs) and set(uses.values()) == {1}


@pytest.mark.parametrize("saturates", [True, False])
def test_int8_products_run_in_exact_kernels_on_a_cpu_that_saturates(int8_bundle, tiny_bridge_bundle, monkeypatch, saturates):
    # On an x86 CPU without VNNI the default U8S8 kernels saturate (README); the tests that compare
    # INT8 with FP32 below fail there without the exact U8U8 kernels.
    monkeypatch.setattr("edge_ad.backends.int8_saturates", lambda: saturates)
    # Forced onto the default kernels on a CPU that does saturate (an AVX2-only one), the maps are
    # wrong and the bundle's load-time check refuses it, as it should: this test reads the sessions.
    monkeypatch.setattr(Detector, "self_check", lambda self: None)
    detector = Detector.load(int8_bundle)
    assert detector.u8u8 is saturates
    for graph in detector._graphs.values():
        options = graph.session.get_session_options()
        if saturates:
            assert options.get_session_config_entry("session.x64quantprecision") == "1"
        else:  # not set: ONNX Runtime's default kernels
            with pytest.raises(RuntimeError, match="does not have configuration"):
                options.get_session_config_entry("session.x64quantprecision")
    assert Detector.load(tiny_bridge_bundle).u8u8 is False  # FP32: no INT8 products


@pytest.mark.parametrize("flags, slower", [("fpu avx2 avx512f avx512bw", True), ("fpu avx2 avx512f avx512_vnni", False)])
def test_doctor_says_when_int8_runs_in_the_slower_exact_kernels(int8_bundle, tmp_path, flags, slower):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the check reads x86 CPU flags")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    lines = doctor(str(int8_bundle), target=str(CONFIGS / "cpu.yaml"), root=tmp_path).lines
    assert any(line.startswith("int8") and "no VNNI" in line and "U8U8" in line for line in lines) is slower


def test_int8_detector_agrees_with_fp32_and_still_finds_spots(int8_bundle, tiny_bridge_bundle, mvtec_category):
    int8 = Detector.load(int8_bundle, precision="int8", steps=4)
    fp32 = Detector.load(tiny_bridge_bundle, steps=4)
    assert int8.precision == "int8" and fp32.precision == "fp32"
    paths = sorted(mvtec_category.rglob("test/*/*.png"))
    a = np.array([int8(cv2.imread(str(p))).raw_map for p in paths])
    b = np.array([fp32(cv2.imread(str(p))).raw_map for p in paths])
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    labels = np.array([int(p.parent.name != "good") for p in paths])
    assert auroc(labels, np.array([int8(cv2.imread(str(p))).score for p in paths])) >= 0.9
    with pytest.raises(BundleError, match="holds int8 graphs, not fp32"):
        Detector.load(int8_bundle, precision="fp32")


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_with_a_short_last_batch(tiny_bridge_bundle, mvtec_category, tmp_path, method):
    run = tiny_bridge_bundle.parent / "run"
    calibration = CalibrationConfig(str(mvtec_category), images=11, method=method)  # batches of 8: 8 + 3
    bundle = export_bundle(run, tmp_path / "bundle", precision="int8", calibration=calibration)
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())["quantization"]
    assert spec["calibration_method"] == method and spec["calibration_images"] == 11
    int8, fp32 = Detector.load(bundle, precision="int8"), Detector.load(tiny_bridge_bundle)
    paths = sorted(mvtec_category.rglob("test/*/*.png"))
    a = np.array([int8(cv2.imread(str(p))).raw_map for p in paths])
    b = np.array([fp32(cv2.imread(str(p))).raw_map for p in paths])
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_histogram_calibration_is_capped_to_what_fits_in_memory():
    assert calibration_count(CalibrationConfig("elpv", images=300, method="minmax"), (256, 256)) == 300
    assert calibration_count(CalibrationConfig("elpv", images=300, method="percentile"), (256, 256)) == 64
    assert calibration_count(CalibrationConfig("elpv", images=300, method="entropy"), (128, 128)) == 256
    assert calibration_count(CalibrationConfig("elpv", images=300, method="entropy"), (128, 512)) == 64
    assert calibration_count(CalibrationConfig("elpv", images=300, method="entropy"), (1024, 1024)) == 8  # one batch


def test_unknown_calibration_method_is_refused(tiny_bridge_bundle, tmp_path):
    with pytest.raises(ValueError, match="calibration method 'median' is not one of minmax, entropy, percentile"):
        quantize_graph(tiny_bridge_bundle / "head.onnx", tmp_path / "x.onnx", [], "median")


def test_uint8_bundle_runs_the_prior_as_dynamic_int8_and_agrees_with_fp32(tiny_bridge_bundle, mvtec_category, tmp_path):
    calibration = CalibrationConfig(str(mvtec_category), images=8, method="minmax", activations="uint8")
    bundle = export_bundle(tiny_bridge_bundle.parent / "run", tmp_path / "u8", precision="int8", calibration=calibration)
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    quantization = spec["quantization"]
    # the GMM prior's prototype products are dynamic INT8; the restoration head has none, stays FP32
    assert quantization["dynamic_int8_graphs"] == ["prior"] and quantization["fp32_graphs"] == ["head"]
    assert "dynamic INT8" in quantization["format"] and not quantization["tensorrt_compatible"]
    assert "MatMulInteger" in _ops(bundle / spec["graphs"]["prior"]["file"])
    assert "MatMulInteger" not in _ops(bundle / spec["graphs"]["head"]["file"])
    u8, fp32 = Detector.load(bundle, precision="int8"), Detector.load(tiny_bridge_bundle)
    paths = sorted((mvtec_category / "test").rglob("*.png"))
    frames = [cv2.imread(str(p)) for p in paths]
    # on the same features, the dynamic INT8 prior gives the FP32 prior's map and endpoint
    features = fp32._graphs["encoder"](np.stack([fp32.preprocess(f) for f in frames]))[0]
    (u8_map, u8_end), (map_, end) = u8._graphs["prior"](features), fp32._graphs["prior"](features)
    assert np.corrcoef(u8_map.ravel(), map_.ravel())[0, 1] > 0.99
    assert np.linalg.norm(u8_end - end) / np.linalg.norm(end) < 0.05
    labels = np.array([int(p.parent.name != "good") for p in paths])
    assert auroc(labels, np.array([r.score for r in u8.batch(frames)])) >= 0.9  # the whole uint8 bundle still finds spots
    # TensorRT does not read unsigned activations: engines and DeepStream networks are refused up front
    for refused in (lambda: build_engines(load_bundle(bundle), "int8"), lambda: write_deepstream(bundle, tmp_path / "ds")):
        with pytest.raises(EdgeAdError, match="unsigned activations, which TensorRT does not read"):
            refused()
    assert not (tmp_path / "ds").exists()


def test_dynamic_int8_prototype_distances_match_fp32(tiny_bundle, tmp_path):
    head = tmp_path / "head.onnx"
    shutil.copy(tiny_bundle / "head.onnx", head)
    assert quantize_distance_graph(head) and "MatMulInteger" in _ops(head)
    shape = ort.InferenceSession(str(head), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    features = {"features": np.random.default_rng(0).standard_normal((2, *shape[1:])).astype(np.float32)}
    reference, dynamic = _run(tiny_bundle / "head.onnx", features), _run(head, features)
    assert np.linalg.norm(dynamic - reference) / np.linalg.norm(reference) < 0.02


def test_uint8_activations_for_onnx_runtime_cpus(tiny_bundle, mvtec_category, tmp_path):
    images = np.stack([cv2.resize(cv2.imread(str(p))[..., ::-1], (128, 128)) for p in sorted(mvtec_category.rglob("*.png"))[:8]])
    out = tmp_path / "encoder.u8.onnx"
    result = quantize_graph(tiny_bundle / "encoder.onnx", out, [{"image": images}], "minmax", "uint8")
    model = onnx.load(str(out))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [consts[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    feeds = {"image": images}
    assert np.corrcoef(_run(out, feeds).ravel(), _run(tiny_bundle / "encoder.onnx", feeds).ravel())[0, 1] > 0.95
    # the whitening became dynamic INT8 (int8 transform, no FP32 copy); the pooling has no Q/DQ around it
    assert result["dynamic_int8"] == [_whitening_matmul(tiny_bundle / "encoder.onnx")]
    blocks = [consts[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert blocks and all(b.dtype == np.int8 and b.ndim == 3 for b in blocks)
    positions, channels = blocks[-1].shape[:2]
    assert not [t for t in consts.values() if t.shape == (positions, channels, channels) and t.dtype == np.float32]
    quantised = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    pools = [n for n in model.graph.node if n.op_type == "AveragePool"]
    assert pools and result["kept_fp32"] == [n.name for n in pools] and pools[0].output[0] not in quantised
    with pytest.raises(ValueError, match="activation type 'int4' is not one of int8, uint8"):
        quantize_graph(tiny_bundle / "encoder.onnx", out, [], "minmax", "int4")


def test_fp16_bundle_converts_the_convolution_graphs_and_agrees_with_fp32(tiny_bridge_bundle, mvtec_category, tmp_path):
    fp16_bundle = export_bundle(tiny_bridge_bundle.parent / "run", tmp_path / "fp16", precision="fp16")
    spec = yaml.safe_load((fp16_bundle / "bundle.yaml").read_text())
    assert spec["precision"] == "fp16" and spec["half_precision"]["fp16_graphs"] == ["encoder", "step", "fused"]
    for name in ("encoder", "step", "fused"):
        graph = onnx.load(str(fp16_bundle / spec["graphs"][name]["file"])).graph
        assert {t.data_type for t in graph.initializer} & {onnx.TensorProto.FLOAT16}
        assert graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT16  # FP32 or uint8 in
    fp16, fp32 = Detector.load(fp16_bundle, precision="fp16"), Detector.load(tiny_bridge_bundle)
    frames = [cv2.imread(str(p)) for p in sorted((mvtec_category / "test").rglob("*.png"))]
    for a, b in zip(fp16.batch(frames), fp32.batch(frames)):
        assert np.corrcoef(a.raw_map.ravel(), b.raw_map.ravel())[0, 1] >= 0.999


def _whitening_matmul(path) -> str:
    """The one MatMul by a (positions, C, C) constant: the encoder's per-position whitening."""
    (name,) = _whitening_nodes(onnx.load(str(path)).graph)
    return name


def _run(path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of the graph at `path` on ONNX Runtime's CPU provider, with the INT8
    kernels the runtime picks for this CPU."""
    options = ort.SessionOptions()
    exact_int8_kernels(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_integer_whitening_matches_the_fp32_transform(tiny_bundle, mvtec_category, tmp_path):
    images = np.stack([cv2.resize(cv2.imread(str(p))[..., ::-1], (128, 128)) for p in sorted(mvtec_category.rglob("*.png"))[:4]])
    rewritten = tmp_path / "encoder.onnx"
    shutil.copy(tiny_bundle / "encoder.onnx", rewritten)
    integer_whitening(rewritten, [_whitening_matmul(rewritten)])
    assert rewritten.stat().st_size < (tiny_bundle / "encoder.onnx").stat().st_size / 2
    # two blocks of output columns; the transform is upper triangular, so the first block reads
    # only the first half of the input channels
    blocks = [numpy_helper.to_array(t) for t in onnx.load(str(rewritten)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    positions, channels, half = blocks[1].shape
    assert [b.shape for b in blocks] == [(positions, half, half), (positions, channels, channels - half)]
    reference, integer = _run(tiny_bundle / "encoder.onnx", {"image": images}), _run(rewritten, {"image": images})
    # uint8 input and int8 weights: a few percent error (4.2 % on ELPV at 256 px); a transposed or
    # mis-scaled transform would be off by about 100 %
    assert np.linalg.norm(integer - reference) / np.linalg.norm(reference) < 0.05


def _quantised_convs(path) -> set[str]:
    """Conv nodes whose weights come through a DequantizeLinear (quantised), by name."""
    graph = onnx.load(str(path)).graph
    dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantised}


def test_sensitive_layers_stay_fp32_by_name_or_by_measured_noise(tiny_bundle, mvtec_category, tmp_path):
    images = np.stack([cv2.resize(cv2.imread(str(p))[..., ::-1], (128, 128)) for p in sorted(mvtec_category.rglob("*.png"))[:8]])
    batches = [{"image": images[:4]}, {"image": images[4:]}]
    plain = quantize_graph(tiny_bundle / "encoder.onnx", tmp_path / "a.onnx", batches, "minmax")
    convs = _quantised_convs(tmp_path / "a.onnx")
    whitening = _whitening_matmul(tiny_bundle / "encoder.onnx")
    assert whitening == _whitening_matmul(tmp_path / "a.onnx")  # its weight is not behind a DequantizeLinear
    assert plain["kept_fp32"] == [whitening] and len(plain["worst_sqnr_db"]) == 5
    noisiest = next(iter(plain["worst_sqnr_db"]))  # lowest SQNR first
    assert noisiest in convs or noisiest.endswith(("Relu", "Clip", "Add"))
    target = sorted(convs)[0]
    by_name = quantize_graph(tiny_bundle / "encoder.onnx", tmp_path / "b.onnx", batches, "minmax", keep_fp32=[target])
    assert by_name["kept_fp32"] == sorted([target, whitening]) and _quantised_convs(tmp_path / "b.onnx") == convs - {target}
    limit = sorted(plain["worst_sqnr_db"].values())[2]  # the two noisiest nodes are below it
    searched = quantize_graph(tiny_bundle / "encoder.onnx", tmp_path / "c.onnx", batches, "minmax", keep_below_db=limit)
    assert searched["kept_fp32"] == sorted([*list(plain["worst_sqnr_db"])[:2], whitening])
    assert not set(searched["kept_fp32"]) & set(searched["worst_sqnr_db"])  # measured again, without them
    assert searched["output_sqnr_db"] > plain["output_sqnr_db"] and searched["search_rejected"] == []
    with pytest.raises(EdgeAdError, match="no nodes named /nope"):
        quantize_graph(tiny_bundle / "encoder.onnx", tmp_path / "d.onnx", batches, "minmax", keep_fp32=["/nope"])


def test_a_search_that_makes_the_output_worse_is_undone(tiny_bundle, mvtec_category, tmp_path, monkeypatch):
    import export.quantize as quantize

    images = np.stack([cv2.resize(cv2.imread(str(p))[..., ::-1], (128, 128)) for p in sorted(mvtec_category.rglob("*.png"))[:8]])
    measured = iter([30.0, 12.0])  # the output SNR before and after keeping the noisy nodes
    monkeypatch.setattr(quantize, "output_sqnr", lambda *args: next(measured))
    result = quantize_graph(tiny_bundle / "encoder.onnx", tmp_path / "e.onnx", [{"image": images}], "minmax",
                            keep_below_db=1000.0)
    assert result["kept_fp32"] == [_whitening_matmul(tiny_bundle / "encoder.onnx")] and result["search_rejected"] and result["output_sqnr_db"] == 30.0
    assert _quantised_convs(tmp_path / "e.onnx")  # written again fully quantised


def test_int8_calibrates_on_the_training_folder_from_wherever_export_runs(mvtec_category, tmp_path, monkeypatch):
    """`train --data good` typed in the pictures' folder, then `export --precision int8` from
    another: the calibration frames (the run's training data by default) came from `good` as
    typed, so export failed there ("good: no such dataset folder"), or calibrated on another
    product's `good` folder where there was one. It reads the folder train recorded; a folder
    gone since is named as the run's training data."""
    from export.train import TrainConfig, train

    site = shutil.copytree(mvtec_category / "train", tmp_path / "site")
    monkeypatch.chdir(site)
    run = train(TrainConfig(data="good", input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES), tmp_path / "run")
    elsewhere = tmp_path / "other_product"
    (elsewhere / "good").mkdir(parents=True)
    cv2.imwrite(str(elsewhere / "good" / "000.png"), np.zeros((64, 64), np.uint8))
    monkeypatch.chdir(elsewhere)
    bundle = export_bundle(run, tmp_path / "bundle", precision="int8", calibration=CalibrationConfig(images=12))
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    assert spec["quantization"]["calibration_source"] == str(site / "good")
    (site / "good").rename(site / "moved")
    with pytest.raises(DataError, match=f"{site / 'good'}: no such dataset folder \\(the run's training data, which "
                                        "INT8 calibrates on unless --calib-data names other frames of the camera\\)"):
        export_bundle(run, tmp_path / "again", precision="int8", calibration=CalibrationConfig(images=12))
