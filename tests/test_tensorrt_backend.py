"""The TensorRT backend: refusals without TensorRT here; agreement with ONNX Runtime on a GPU."""

import importlib.util
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import yaml

from edge_ad.bundle import load_bundle
from edge_ad.detector import Detector
from edge_ad.cuda_memory import cuda_memory, cuda_memory_installed
from edge_ad.errors import EdgeAdError


def _tensorrt_here() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and cuda_memory_installed()


@pytest.mark.skipif(cuda_memory_installed(), reason="pycuda or cuda-python is installed here")
def test_cuda_memory_without_pycuda_or_cuda_python_names_both():
    with pytest.raises(EdgeAdError, match="needs pycuda or cuda-python"):
        cuda_memory()


@pytest.mark.skipif(_tensorrt_here(), reason="TensorRT is installed here")
def test_asking_for_tensorrt_without_it_is_one_line(tiny_bundle):
    out = subprocess.run([sys.executable, "-m", "edge_ad", "bench", "--bundle", str(tiny_bundle), "--backend",
                          "tensorrt", "--frames", "1", "--warmup", "1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "TensorRT engines need the tensorrt package" in out.stderr
    assert "or run with --backend onnxruntime" in out.stderr


@pytest.mark.skipif(_tensorrt_here(), reason="TensorRT is installed here")
def test_auto_falls_back_to_onnxruntime_when_engines_cannot_run(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    foreign = bundle / "engines" / "NVIDIA-H100-sm90-trt10.3.0-fp16"
    foreign.mkdir(parents=True)
    (foreign / "manifest.yaml").write_text(yaml.safe_dump({"key": {"gpu": "NVIDIA H100"}, "graphs": {}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector = Detector.load(bundle)
    assert detector.backend == "onnxruntime"
    assert any("TensorRT not used" in str(w.message) for w in caught)


def test_a_dla_core_is_refused_by_the_backends_without_one(tiny_bundle):
    with pytest.raises(EdgeAdError, match="--dla-core runs TensorRT engines; the onnxruntime backend has no DLA"):
        Detector.load(tiny_bundle, backend="onnxruntime", dla_core=0)


@pytest.mark.skipif(_tensorrt_here(), reason="TensorRT is installed here")
def test_auto_with_a_dla_core_tries_tensorrt_and_says_why_not(tiny_bundle):
    # The bundle holds no engines, but a DLA core was asked for: auto says why TensorRT does not run.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Detector.load(tiny_bundle, dla_core=0).backend == "onnxruntime"
    assert any("TensorRT not used" in str(w.message) and "tensorrt package" in str(w.message) for w in caught)


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (200, 240, 3), np.uint8) for _ in range(n)]


@pytest.mark.skipif(not _tensorrt_here(), reason="TensorRT, pycuda or cuda-python not installed (no NVIDIA GPU here)")
@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_bridge_bundle"])
def test_tensorrt_agrees_with_onnxruntime(fixture, request, tmp_path):
    from edge_ad.engines import build_engines

    bundle = shutil.copytree(request.getfixturevalue(fixture), tmp_path / "b")
    build_engines(load_bundle(bundle), "fp16")
    reference, engine = Detector.load(bundle, backend="onnxruntime"), Detector.load(bundle, backend="tensorrt")
    assert engine.backend == "tensorrt"
    frames = _frames(3)
    for a, b in zip(reference.batch(frames), engine.batch(frames)):
        assert np.corrcoef(a.raw_map.ravel(), b.raw_map.ravel())[0, 1] >= 0.999
        assert b.score == pytest.approx(a.score, rel=1e-2)  # FP16 engines against the FP32 graphs
    if engine.bundle.model_type == "bridge":  # K steps on the device = K host round trips
        features = engine._graphs["encoder"](np.stack([engine.preprocess(f) for f in frames]))[0]
        _, condition = engine._graphs["prior"](features)
        on_device = engine.restore(features, condition)
        x = features
        for coefficients in engine.bundle.coefficients:
            x = engine._graphs["step"](x, condition, coefficients)[0]
        np.testing.assert_allclose(on_device, x, rtol=1e-5, atol=1e-5)
