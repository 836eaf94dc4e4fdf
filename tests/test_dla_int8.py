"""INT8 on a DLA core: TensorRT calibrates an FP32 bundle on the line's frames. Checked here: the
calibration inputs of every graph, the refusals, and the build on a stand-in of TensorRT's API
(tests/cpu_tensorrt.py); the build by TensorRT itself needs an NVIDIA GPU and is skipped without."""

import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import yaml

from edge_ad.backends import onnxruntime_graphs
from edge_ad.bundle import load_bundle
from edge_ad.cuda_memory import cuda_memory, cuda_memory_installed
from edge_ad.detector import Detector
from edge_ad.dla_int8 import CALIBRATION_BATCH, calibration_inputs, graph_batches
from edge_ad.engines import build_engines, check_int8_route
from edge_ad.errors import EdgeAdError


def test_calibration_frames_fill_whole_batches_at_the_input_size(tiny_bundle, normal_folder, tmp_path):
    bundle = load_bundle(tiny_bundle)
    inputs = calibration_inputs(bundle, str(normal_folder), 12)  # twelve images: a batch and a half
    assert inputs.shape == (2 * CALIBRATION_BATCH, *bundle.input_size, 3) and inputs.dtype == np.uint8
    np.testing.assert_array_equal(inputs[12:], inputs[:4])  # the last batch filled up with the first frames
    few = tmp_path / "few"
    few.mkdir()
    for image in sorted(normal_folder.glob("*.png"))[:3]:
        (few / image.name).write_bytes(image.read_bytes())
    with pytest.raises(EdgeAdError, match="needs at least 8 readable frames, found 3"):
        calibration_inputs(bundle, str(few), 12)


def test_every_reduced_precision_graph_gets_the_inputs_it_sees_at_run_time(tiny_bridge_bundle, normal_folder):
    bundle = load_bundle(tiny_bridge_bundle)
    inputs = calibration_inputs(bundle, str(normal_folder), 16)
    batches = graph_batches(bundle, inputs)
    assert set(batches) == {"encoder", "step", "fused"}
    assert [b["image"].shape[0] for b in batches["encoder"]] == [CALIBRATION_BATCH, CALIBRATION_BATCH]
    schedules = bundle.spec["bridge"]["schedules"]
    assert len(batches["step"]) == 2 * sum(len(s["coefficients"]) for s in schedules.values())
    # The step graph is calibrated on the states the sampler passes through: at K=2, the second
    # step starts where the first ended, and the two steps end where the Detector's restore does.
    detector = Detector.load(tiny_bridge_bundle, backend="onnxruntime", steps=2)
    step = onnxruntime_graphs(bundle, None, False)["step"]
    features, condition = batches["fused"][0]["state"], batches["fused"][0]["condition"]
    first = sum(len(schedules[k]["coefficients"]) for k in schedules if k < 2)  # the first batch's K=2 steps
    start, second = batches["step"][first], batches["step"][first + 1]
    np.testing.assert_array_equal(start["state"], features)
    np.testing.assert_array_equal(start["coefficients"], detector.bundle.coefficients[0])
    np.testing.assert_allclose(second["state"], step(features, condition, start["coefficients"])[0], rtol=1e-5, atol=1e-6)
    restored = step(second["state"], condition, second["coefficients"])[0]
    np.testing.assert_allclose(restored, detector.restore(features, condition), rtol=1e-4, atol=1e-5)


def test_int8_engines_take_the_route_their_target_can_run(tiny_bundle):
    fp32 = load_bundle(tiny_bundle)
    assert check_int8_route(fp32, "int8", 0, "frames") is True
    assert check_int8_route(fp32, "fp16", 0, None) is False
    with pytest.raises(EdgeAdError, match="the DLA takes INT8 from TensorRT's calibration, not from int8 graphs"):
        check_int8_route(replace(fp32, precision="int8"), "int8", 0, "frames")
    with pytest.raises(EdgeAdError, match="INT8 on a DLA core is calibrated on this device: give --calib-data"):
        build_engines(fp32, "int8", dla_core=0)
    with pytest.raises(EdgeAdError, match="--calib-data is for INT8 on a DLA core"):
        build_engines(fp32, "int8", calib_data="frames")
    with pytest.raises(EdgeAdError, match="INT8 engines are built from Q/DQ graphs"):
        build_engines(fp32, "int8")
    out = subprocess.run([sys.executable, "-m", "edge_ad", "build", "--bundle", tiny_bundle, "--precision", "int8",
                          "--dla-core", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "give --calib-data" in out.stderr


def test_calibrated_int8_engine_on_a_gpu(tiny_bundle, normal_folder, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (no NVIDIA GPU here)")
    if not cuda_memory_installed():
        pytest.skip("neither pycuda nor cuda-python is installed")
    from edge_ad.dla_int8 import entropy_calibrator
    from edge_ad.engines import build_serialized_engine

    # The DLA route's calibrator and calibration profile, on the GPU (no DLA on a data-centre GPU).
    bundle = load_bundle(tiny_bundle)
    batches = graph_batches(bundle, calibration_inputs(bundle, str(normal_folder), 12))["encoder"]
    cache = tmp_path / "encoder.calibration.cache"
    memory = cuda_memory()
    with memory.current():
        serialized = build_serialized_engine(bundle.graphs["encoder"], "int8",
                                             calibrator=entropy_calibrator(trt, memory, batches, cache))
    assert cache.stat().st_size > 0
    assert trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(serialized) is not None


def test_int8_on_a_dla_core_is_calibrated_once_on_the_frames_and_run_before_fp16(
        cpu_tensorrt, tiny_bridge_bundle, normal_folder, tmp_path, monkeypatch):
    """On TensorRT's API (tests/cpu_tensorrt.py), as on an AGX Orin's DLA core 0: each
    reduced-precision graph's calibrator hands TensorRT exactly the batches of its inputs that
    graph_batches made (read back at the addresses it returns, at the calibration profile's
    shapes), its cache is written once and read by the next build instead of calibrating again, and
    `run --dla-core 0` takes these INT8 engines, ahead of FP16 ones built for that core too."""
    from edge_ad import engines, tensorrt_backend

    for module in (engines, tensorrt_backend):
        monkeypatch.setattr(module, "check_dla_core", lambda core: None)  # the AGX Orin has DLA cores 0 and 1
    bundle = shutil.copytree(tiny_bridge_bundle, tmp_path / "b")
    fp16 = build_engines(load_bundle(bundle), "fp16", dla_core=0)
    folder = build_engines(load_bundle(bundle), "int8", dla_core=0, calib_data=str(normal_folder), calib_images=12)
    assert fp16.name == "cpu-stand-in-sm00-trt10.3.0-fp16-dla0"
    assert folder.name == "cpu-stand-in-sm00-trt10.3.0-int8-dla0"
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert manifest["calibration"]["source"] == str(normal_folder) and manifest["calibration"]["frames"] == 16

    loaded = load_bundle(bundle)
    batches = graph_batches(loaded, calibration_inputs(loaded, str(normal_folder), 12))
    caches = sorted(folder.glob("*.calibration.cache"))
    assert [c.name.split(".")[0] for c in caches] == ["encoder", "fused", "step"]
    written = {cache: cache.stat().st_mtime_ns for cache in caches}
    for name in ("encoder", "step", "fused"):
        header = cpu_tensorrt.engine_parts((folder / f"{name}.engine").read_bytes())[0]
        assert {"INT8", "FP16", "GPU_FALLBACK"} <= set(header["flags"])
        largest = {key: max(float(np.abs(batch[key]).max()) for batch in batches[name]) for key in batches[name][0]}
        assert header["calibration"] == pytest.approx(largest, rel=1e-6)
    for name in ("prior", "head"):  # FP32 graphs: not calibrated
        assert cpu_tensorrt.engine_parts((folder / f"{name}.engine").read_bytes())[0]["calibration"] is None

    build_engines(load_bundle(bundle), "int8", dla_core=0, calib_data=str(normal_folder), calib_images=12, force=True)
    assert {cache: cache.stat().st_mtime_ns for cache in caches} == written  # read, not calibrated again

    detector = Detector.load(bundle, dla_core=0)
    assert detector.backend == "tensorrt" and detector.graphs["encoder"].path.parent == folder
