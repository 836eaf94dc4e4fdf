"""DeepStream: the bundle as one nvinfer network, its config, and scoring nvinfer's tensor meta."""

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import export.deepstream
from edge_ad import Detector, InspectionMask
from edge_ad.bundle import load_bundle
from edge_ad.deepstream import CONFIG_FILE, MODEL_FILE, OUTPUT, DeepStreamScorer, engine_name, layer_array
from edge_ad.doctor import doctor
from edge_ad.errors import BundleError, EdgeAdError
from edge_ad.images import to_rgb
from export.deepstream import single_graph, write_deepstream

from conftest import full_disk


def _nvinfer_config(folder):
    parser = configparser.ConfigParser()
    parser.read(folder / CONFIG_FILE)
    return parser["property"]


def _frames(mvtec_category):
    paths = sorted((mvtec_category / "test").glob("*/*.png"))
    return [cv2.imread(str(p)) for p in (paths[0], paths[-1])]  # a normal image and a spot


@pytest.mark.parametrize("bundle_name, steps", [("tiny_bundle", None), ("tiny_bridge_bundle", None),
                                                ("tiny_bridge_bundle", 4)])
def test_the_single_network_scores_frames_as_the_detector_does(bundle_name, steps, request, mvtec_category, tmp_path):
    bundle = request.getfixturevalue(bundle_name)
    out = write_deepstream(bundle, tmp_path / "ds", steps)
    settings = _nvinfer_config(out)
    detector = Detector.load(bundle, steps=steps)
    height, width = detector.bundle.input_size
    assert settings["infer-dims"] == f"3;{height};{width}" and settings["output-blob-names"] == OUTPUT
    assert (settings["network-type"], settings["output-tensor-meta"], settings["network-mode"]) == ("100", "1", "0")
    assert (settings["maintain-aspect-ratio"], settings["scaling-filter"]) == ("0", "1")  # stretched, bilinear
    assert (out / settings["onnx-file"]).is_file() and "model-engine-file" not in settings
    assert settings["batch-size"] == "1"

    # What nvinfer feeds the network with net-scale-factor 1 and offsets 0: float RGB planes 0-255.
    frames = _frames(mvtec_category)
    inputs = np.stack([detector.preprocess(frame) for frame in frames])
    session = ort.InferenceSession(str(out / MODEL_FILE), providers=["CPUExecutionProvider"])
    grids = session.run([OUTPUT], {"input": inputs.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    np.testing.assert_allclose(grids, detector.grid_maps(inputs), rtol=1e-4, atol=1e-5)
    assert grids.shape[1] == len(detector.bundle.branches)

    # A colour camera's frame: the bundle was trained on grey cells, so the network sees its planes
    # in grey, as the Detector does (which rounds the grey to whole levels first).
    cast = np.clip(frames[0] * np.array([0.9, 1.0, 1.1]), 0, 255).astype(np.uint8)
    planes = to_rgb(cast, "BGR", size=(height, width))[None]
    got = session.run([OUTPUT], {"input": planes.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    want = detector.grid_maps(detector.preprocess(cast)[None])
    assert np.abs(got - want).max() < 0.1 * np.abs(detector.grid_maps(planes) - want).max()

    # The probe's scorer, without any graph, gives the Detector's results from those maps.
    scorer = DeepStreamScorer(str(bundle), steps)
    results = [scorer.score([grid], frame.shape) for grid, frame in zip(grids, frames)]
    expected = detector.batch(frames)
    for got, want in zip(results, expected):
        assert got.score == pytest.approx(want.score, rel=1e-4)
        assert got.is_anomaly == want.is_anomaly and got.map.shape == want.map.shape
    assert results[1].score > results[0].score  # the spot

    # Within an inspection mask, as the Detector scores it.
    keep = np.zeros(frames[1].shape[:2], bool)
    keep[:, : keep.shape[1] // 2] = True
    mask = InspectionMask(keep, "left half")
    got, want = scorer.score([grids[1]], frames[1].shape, mask), detector(frames[1], mask=mask)
    assert got.score == pytest.approx(want.score, rel=1e-4) and got.score <= results[1].score
    assert not got.map[:, keep.shape[1] // 2 :].any()


def test_reduced_precision_engines_are_named_and_built_on_the_device(tiny_bundle, tmp_path):
    out = write_deepstream(tiny_bundle, tmp_path / "ds", precision="fp16")
    settings = _nvinfer_config(out)
    # nvinfer must not build its own FP16 engine from the ONNX (distance layers in FP16): no onnx-file.
    assert "onnx-file" not in settings and settings["model-engine-file"] == engine_name("fp16")
    assert settings["network-mode"] == "2"
    # Four cameras per nvinfer call: the engine must be built for that batch, and is named for it.
    settings = _nvinfer_config(write_deepstream(tiny_bundle, tmp_path / "ds4", precision="fp16", batch_size=4))
    assert settings["batch-size"] == "4" and settings["model-engine-file"] == engine_name("fp16", 4)
    with pytest.raises(EdgeAdError, match="fp32 graphs run as a fp32 or fp16 engine, not int8"):
        write_deepstream(tiny_bundle, tmp_path / "ds8", precision="int8")
    assert not (tmp_path / "ds8").exists()


def test_doctor_names_an_engine_the_config_needs_and_nobody_built(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    write_deepstream(bundle, precision="fp16")
    report = doctor([str(bundle)])
    assert any(engine_name("fp16") in p and "edge-ad deepstream --bundle" in p and "--build" in p and "--batch-size" in p
               for p in report.problems)
    (bundle / "deepstream" / engine_name("fp16")).write_bytes(b"an engine")
    report = doctor([str(bundle)])
    assert not any("deepstream" in p for p in report.problems)
    assert any(line.startswith("deepstream") for line in report.lines)
    (bundle / "deepstream" / CONFIG_FILE).write_text("model-engine-file=x.engine\n")  # no [property] header
    assert any("not a readable nvinfer config" in p for p in doctor([str(bundle)]).problems)


def test_a_bundle_archive_needs_an_out_folder(tiny_bundle, tmp_path):
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_bundle, arcname="bundle")
    result = subprocess.run([sys.executable, "-m", "edge_ad", "deepstream", "--bundle", archive],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "bundle.tar: a bundle archive; give --out" in result.stderr
    assert write_deepstream(archive, tmp_path / "ds").joinpath(MODEL_FILE).is_file()


@pytest.mark.parametrize("dtype, code", [(np.float32, 0), (np.float16, 1)])
def test_tensor_meta_layers_are_copied_out_of_nvinfers_buffer(dtype, code):
    # The fields pyds gives an NvDsInferLayerInfo; the data lie at the address pyds.get_ptr returns.
    maps = np.arange(2 * 4 * 5, dtype=dtype).reshape(2, 4, 5)
    layer = SimpleNamespace(layerName=OUTPUT, dataType=code, inferDims=SimpleNamespace(numDims=3, d=[2, 4, 5, 0]))
    got = layer_array(layer, maps.ctypes.data)
    assert got.dtype == np.float32 and got.shape == (2, 4, 5)
    np.testing.assert_array_equal(got, maps.astype(np.float32))
    maps[:] = 0  # nvinfer reuses its buffers: the array is a copy
    assert got.max() == 39
    with pytest.raises(EdgeAdError, match="data type 3, expected FLOAT or HALF"):
        layer_array(SimpleNamespace(layerName=OUTPUT, dataType=3, inferDims=layer.inferDims), maps.ctypes.data)


def test_a_build_without_tensorrt_keeps_the_network_and_config(tiny_bundle, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    out = tmp_path / "ds"
    result = subprocess.run([sys.executable, "-m", "edge_ad", "deepstream", "--bundle", tiny_bundle, "--out", out,
                             "--precision", "fp16", "--build"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "TensorRT engines need the tensorrt package" in result.stderr and "--backend" not in result.stderr
    assert (out / MODEL_FILE).is_file() and _nvinfer_config(out)["model-engine-file"] == engine_name("fp16")
    assert not (out / engine_name("fp16")).exists()


def _scaled(bundle):
    """A join gone wrong: every map a tenth of what it should be."""
    model = single_graph(bundle)  # the join itself, also where a test puts this function in its place
    (last,) = [n for n in model.graph.node if OUTPUT in n.output]
    last.output[:] = ["unscaled"]
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.1, np.float32), "tenth"))
    model.graph.node.append(helper.make_node("Mul", ["unscaled", "tenth"], [OUTPUT]))
    return model


def test_a_joined_network_with_wrong_maps_is_not_written(tiny_bundle, tmp_path, monkeypatch):
    """nvinfer hands edge-ad maps only: the joined network is checked against the bundle's check
    images before it is written (and a built engine before it goes where the config names it)."""
    monkeypatch.setattr(export.deepstream, "single_graph", _scaled)
    out = tmp_path / "ds"
    with pytest.raises(BundleError, match=rf"{out / MODEL_FILE} on onnxruntime: the maps of the bundle's 1 check "
                                          r"images are not those it was exported with \(branch 0: correlation 1.00 "
                                          r"\(at least 0.5\), scale 0.10"):
        write_deepstream(tiny_bundle, out)
    assert not (out / MODEL_FILE).exists() and not (out / CONFIG_FILE).exists()


def test_an_engine_the_disk_has_no_room_for_leaves_nothing_behind(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", full_disk)  # the engine's bytes are written, then the disk is full
    engine = tmp_path / engine_name("fp16")
    with pytest.raises(OSError, match="No space left on device"):
        export.deepstream._place_checked_engine(load_bundle(tiny_bundle), b"engine" * 1000, engine)
    assert list(tmp_path.iterdir()) == []


def test_the_engine_is_built_for_the_batch_and_placed_once_its_maps_pass(cpu_tensorrt, tiny_bridge_bundle, tmp_path):
    """--build on TensorRT's API (tests/cpu_tensorrt.py): the engine of the joined network, for
    nvinfer's batch, goes where the config names it once the bundle's check images give their
    maps through it; an engine whose maps are wrong (an FP16 one whose logits overflowed) is not
    placed, and nothing of it is left."""
    from edge_ad.engines import build_serialized_engine

    out = write_deepstream(tiny_bridge_bundle, tmp_path / "ds", precision="fp16", build=True, batch_size=2)
    header = cpu_tensorrt.engine_parts((out / engine_name("fp16", 2)).read_bytes())[0]
    assert [shape[0] for shape in header["profile"]["input"]] == [1, 2, 2] and "FP16" in header["flags"]
    assert _nvinfer_config(out)["model-engine-file"] == engine_name("fp16", 2)
    bundle = load_bundle(tiny_bridge_bundle)
    (tmp_path / "wrong.onnx").write_bytes(_scaled(bundle).SerializeToString())
    wrong = build_serialized_engine(tmp_path / "wrong.onnx", "fp16")
    placed = tmp_path / "placed" / engine_name("fp16")
    placed.parent.mkdir()
    with pytest.raises(BundleError, match=rf"{placed} on tensorrt: the maps of the bundle's 1 check images are not "
                                          r"those it was exported with .*scale 0.10.*; the engine is not placed"):
        export.deepstream._place_checked_engine(bundle, wrong, placed)
    assert list(placed.parent.iterdir()) == []


def test_engine_build_on_a_gpu(tiny_bridge_bundle, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (no NVIDIA GPU here)")
    out = write_deepstream(tiny_bridge_bundle, tmp_path / "ds", precision="fp16", build=True, batch_size=2)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((out / engine_name("fp16", 2)).read_bytes())
    assert engine is not None
    smallest, tuned, largest = engine.get_tensor_profile_shape("input", 0)
    assert (smallest[0], tuned[0], largest[0]) == (1, 2, 2)


def test_each_camera_of_the_batch_is_judged_by_its_own_calibration(tiny_bundle, mvtec_category, tmp_path):
    from calibration.site import calibrate, collect, record, save

    detector = Detector.load(tiny_bundle)
    normal = [cv2.imread(str(p)) for p in sorted((mvtec_category / "train" / "good").glob("*.png"))[:6]]
    dim = [np.round(frame * 0.6).astype(np.uint8) for frame in normal]  # a camera in dimmer light
    kept = collect(detector, dim, len(dim))[None]
    folder = tmp_path / "calib" / "cam1"
    save(folder, record(calibrate(detector, kept, 0.5, 0.5), detector, "cam1"))
    with pytest.warns(UserWarning, match=r"camera 2: .*nowhere: no calibration.yaml yet; it is scored with the bundle"):
        scorer = DeepStreamScorer(str(tiny_bundle), calibrations=[None, folder, tmp_path / "nowhere"])

    frames = _frames(mvtec_category)
    grids = detector.grid_maps(np.stack([detector.preprocess(frame) for frame in frames]))
    camera1 = detector.calibrated(folder)[0]
    for grid, frame in zip(grids, frames):
        own, bundle = camera1(frame), detector(frame)
        assert own.threshold != bundle.threshold
        for source_id, expected in ((0, bundle), (1, own), (2, bundle), (None, bundle)):
            got = scorer.score([grid], frame.shape, source_id=source_id)
            assert got.threshold == expected.threshold and got.score == pytest.approx(expected.score, rel=1e-5)

    meta = SimpleNamespace(source_id=1, source_frame_height=frames[1].shape[0], source_frame_width=frames[1].shape[1])
    with pytest.MonkeyPatch.context() as patch:  # nvinfer's tensor meta, as frame_grid_maps reads it
        patch.setattr("edge_ad.deepstream.frame_grid_maps", lambda frame_meta, unique_id: grids[1])
        assert scorer(meta).threshold == camera1.threshold
