"""The TensorRT backend: refusals without TensorRT here; its own work (engine cache, profiles,
buffers, the bridge's steps on the device) on a stand-in of TensorRT's API over ONNX Runtime
(tests/cpu_tensorrt.py); agreement with ONNX Runtime on a GPU."""

import importlib.util
import json
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
    with pytest.raises(EdgeAdError, match="needs pycuda or cuda-python") as refused:
        cuda_memory()
    # cuda-python from PyPI alone is 13, which needs CUDA 13, and 12.9 carries CUDA 12.9's runtime,
    # which a Jetson's driver refuses: JetPack 6 has 12.6
    assert "on a Jetson with JetPack 6: pip install 'cuda-python>=12.6.1,<12.7'" in str(refused.value)


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


def test_a_bundle_without_engines_beside_a_gpu_is_said_to_run_on_the_cpu(tiny_bundle, monkeypatch):
    """A Jetson whose engines were never built, or were built into another user's cache than the
    service's, ran the bundle on ONNX Runtime's CPU, unsaid. `auto` says
    so, naming where it looked, there and beside a GPU where TensorRT is installed; asked for ONNX
    Runtime, without an NVIDIA GPU, with onnxruntime-gpu, or on a workstation without TensorRT
    (which evaluates on its CPU as it did), nothing."""
    import edge_ad.backends as backends
    from edge_ad.device import Device

    jetson = Device("jetson", "NVIDIA Jetson Orin Nano Developer Kit", ["p3767-0005"])
    monkeypatch.setattr(backends, "detect", lambda: jetson)
    monkeypatch.setattr(backends, "is_jetson", lambda: True)
    monkeypatch.setenv("EDGE_AD_CACHE", "/var/cache/edge-ad")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Detector.load(tiny_bundle).backend == "onnxruntime"
        Detector.load(tiny_bundle, backend="onnxruntime")
    (said,) = [str(w.message) for w in caught if "TensorRT" in str(w.message)]
    looked = f"{tiny_bundle / 'engines'} and /var/cache/edge-ad/engines/{load_bundle(tiny_bundle).sha256[:16]}"
    assert said == (f"{tiny_bundle}: no TensorRT engines for it on NVIDIA Jetson Orin Nano Developer Kit, parts "
                    f"p3767-0005 (looked for in {looked}): ONNX Runtime runs it on the CPU, and the GPU stays idle. "
                    f"Build them here: edge-ad build --bundle {tiny_bundle} (as the user that runs it, or with its "
                    "EDGE_AD_CACHE)")
    monkeypatch.setattr(backends, "onnxruntime_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backends.gpu_left_idle(load_bundle(tiny_bundle)) is None  # onnxruntime-gpu: ONNX Runtime has the GPU
    monkeypatch.setattr(backends, "onnxruntime_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(backends, "is_jetson", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(backends, "detect", lambda: pytest.fail("nvidia-smi asked where no TensorRT could use a GPU"))
    assert backends.gpu_left_idle(load_bundle(tiny_bundle)) is None  # a workstation without TensorRT
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # TensorRT installed
    monkeypatch.setattr(backends, "detect", lambda: Device("cpu"))
    assert backends.gpu_left_idle(load_bundle(tiny_bundle)) is None  # no NVIDIA GPU: the CPU is all there is
    monkeypatch.setattr(backends, "detect", lambda: Device("x86-gpu", "NVIDIA RTX A4000", gpu="NVIDIA RTX A4000"))
    assert backends.gpu_left_idle(load_bundle(tiny_bundle)).startswith(
        f"{tiny_bundle}: no TensorRT engines for it on a machine with an NVIDIA RTX A4000 (looked for in ")


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


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_backend_on_tensorrts_api_gives_onnxruntimes_maps(cpu_tensorrt, tiny_bridge_bundle, tmp_path, steps):
    """Engines built for batches up to 2 score batches of 1 to 5 frames (in turns of 2 past that,
    as when more cameras share the bundle), and a bridge's K steps ping-pong between two device
    buffers (K odd or even; K=2 is the bundle's fused graph): the maps are ONNX Runtime's."""
    from edge_ad.engines import build_engines

    bundle = shutil.copytree(tiny_bridge_bundle, tmp_path / "b")
    folder = build_engines(load_bundle(bundle), "fp16", max_batch=2)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert folder.name == "cpu-stand-in-sm00-trt10.3.0-fp16" and (folder.parent / "timing.cache").is_file()
    flags = {name: cpu_tensorrt.engine_parts((folder / entry["file"]).read_bytes())[0]["flags"]
             for name, entry in manifest["graphs"].items()}
    assert flags == {"encoder": ["FP16"], "step": ["FP16"], "fused": ["FP16"], "prior": [], "head": []}
    reference = Detector.load(bundle, backend="onnxruntime", steps=steps)
    engine = Detector.load(bundle, backend="auto", steps=steps)  # the engines there are taken
    assert engine.backend == "tensorrt"
    if steps != 2:
        assert hasattr(engine.graphs["step"], "restore")
    step_runs = engine.graphs["step"].context.runs
    for count in (1, 2, 5):
        frames = _frames(count)
        inputs = np.stack([engine.preprocess(f) for f in frames])
        np.testing.assert_allclose(engine.grid_maps(inputs), reference.grid_maps(inputs), rtol=1e-5, atol=1e-6)
    if steps != 2:  # 1 + 1 + 3 calls of K steps on the device
        assert engine.graphs["step"].context.runs - step_runs == 5 * steps


def test_an_engine_tensorrt_cannot_load_is_named(cpu_tensorrt, tiny_bundle, tmp_path):
    """An engine file TensorRT cannot deserialise (another TensorRT wrote it, or it is damaged):
    --backend tensorrt names it and says what to do; auto says so and runs ONNX Runtime."""
    from edge_ad.engines import build_engines

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    folder = build_engines(load_bundle(bundle), "fp16")
    assert Detector.load(bundle, backend="tensorrt").backend == "tensorrt"
    (folder / "encoder.engine").write_bytes(b"written by another TensorRT")
    with pytest.raises(EdgeAdError) as raised:
        Detector.load(bundle, backend="tensorrt")
    assert str(raised.value) == f"{folder / 'encoder.engine'}: TensorRT cannot load this engine (built by another " \
        "TensorRT or GPU?)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Detector.load(bundle).backend == "onnxruntime"
    assert any("TensorRT not used" in str(w.message) and "cannot load this engine" in str(w.message) for w in caught)


def test_build_then_run_three_cameras_on_engines_for_two(cpu_tensorrt, tiny_bundle, normal_folder, tmp_path, capsys):
    """`edge-ad build` once, again (up to date), for another batch (built again); then `run` with
    three cameras sharing the bundle on engines built for batches of two: every frame gets ONNX
    Runtime's score."""
    from edge_ad.cli import main

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    for max_batch, said in (("4", "building 2 TensorRT engines"), ("4", "are up to date"),
                            ("2", "engines built for batches up to 4; building them again for batches up to 2")):
        assert main(["build", "--bundle", str(bundle), "--max-batch", max_batch]) == 0
        assert said in capsys.readouterr().out
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [{"input": str(normal_folder), "name": n} for n in "abc"]}))
    scores = {}
    for backend in ("tensorrt", "onnxruntime"):
        events = tmp_path / f"{backend}.jsonl"
        assert main(["run", "--bundle", str(bundle), "--sources", str(sources), "--backend", backend,
                     "--events", str(events)]) == 0
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        scores[backend] = {(e["source"], e["frame"]): e["score"] for e in lines if e["event"] == "frame"}
    assert len(scores["tensorrt"]) == 36 and scores["tensorrt"].keys() == scores["onnxruntime"].keys()
    for key, score in scores["onnxruntime"].items():
        assert scores["tensorrt"][key] == pytest.approx(score, rel=1e-5, abs=1e-6)


def test_doctor_says_when_more_cameras_share_a_bundle_than_its_engines_take(cpu_tensorrt, tiny_bundle, normal_folder,
                                                                            tmp_path):
    """On a GPU target, with engines on TensorRT's API stand-in: three sources of a --sources file
    share a bundle whose engines take two frames at once. Their frames are scored in turns, which
    doctor says with the build that scores them together; engines for three say nothing."""
    from edge_ad.doctor import doctor
    from edge_ad.engines import build_engines
    from edge_ad.pipelines import SourceOptions
    from edge_ad.streams import streams_from_yaml

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [{"input": str(normal_folder), "name": n} for n in "abc"]}))
    streams = streams_from_yaml(sources, SourceOptions())
    for max_batch, said in ((2, True), (3, False)):
        build_engines(load_bundle(bundle), "fp16", max_batch=max_batch)
        lines = doctor(str(bundle), "x86-nvidia-gpu", sources=streams, sources_file=sources).lines
        assert f"engines      cpu-stand-in-sm00-trt10.3.0-fp16: ready, batches up to {max_batch}" in lines
        hint = (f"batches      bundle: 3 sources share it, its engines take 2 frames at once: their frames are scored "
                f"in turns of 2 (edge-ad build --bundle {bundle} --max-batch 3 scores them together)")
        assert (hint in lines) == said
