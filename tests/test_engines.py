"""TensorRT engine cache: keys, refusal of engines from another device or bundle, and the build
command. Building itself needs TensorRT and an NVIDIA GPU and is skipped without them."""

import errno
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_ad.backends import onnxruntime_graphs
from edge_ad.bundle import load_bundle
from edge_ad.engines import (ENGINES_DIR, MANIFEST, EngineKey, build_engines, cached_engines, engine_builds,
                             engine_dirs, mismatch, other_engines, writable_engine_dir)
from edge_ad.cuda_memory import cuda_memory_installed
from edge_ad.device import CONFIGS
from edge_ad.doctor import doctor
from edge_ad.errors import EdgeAdError, os_reason

ORIN = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16")


def _manifest(bundle, key):
    graphs = {name: {"file": f"{name}.engine", "source_sha256": bundle.spec["graphs"][name]["sha256"]} for name in bundle.graphs}
    return {"key": vars(key).copy(), "graphs": graphs}


def test_key_names_gpu_capability_tensorrt_and_precision():
    assert ORIN.slug == "orin-nvgpu-sm87-trt10.3.0-fp16"
    assert EngineKey("NVIDIA H100 80GB HBM3", "9.0", "8.6.1", "int8", 0).slug == "nvidia-h100-80gb-hbm3-sm90-trt8.6.1-int8-dla0"
    nano = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", None, "p3767-0005", "36.4.3")
    assert nano.slug == "orin-nvgpu-sm87-p3767-0005-l4t36.4.3-trt10.3.0-fp16"


def test_engines_of_another_jetson_module_or_l4t_release_are_refused(tiny_bundle):
    # Every Orin module's GPU is "Orin" 8.7: an Orin NX engine must not run on an Orin Nano.
    bundle = load_bundle(tiny_bundle)
    nx = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", None, "p3767-0000", "36.4.3")
    nano = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", None, "p3767-0005", "36.4.3")
    assert mismatch(_manifest(bundle, nx), nano, bundle) == "built for module 'p3767-0000', this device has 'p3767-0005'"
    older_l4t = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", None, "p3767-0000", "36.4.0")
    assert mismatch(_manifest(bundle, older_l4t), nx, bundle) == "built for l4t '36.4.0', this device has '36.4.3'"


def test_dla_engines_say_how_to_run_them(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    agx = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", None, "p3701-0005", "36.4.3")
    on_dla0 = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", 0, "p3701-0005", "36.4.3")
    on_dla1 = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", 1, "p3701-0005", "36.4.3")
    assert mismatch(_manifest(bundle, on_dla0), agx, bundle) == "built for DLA core 0: run with --dla-core 0"
    assert mismatch(_manifest(bundle, agx), on_dla1, bundle) == "built for the GPU, not DLA core 1"
    assert mismatch(_manifest(bundle, on_dla0), on_dla1, bundle) == "built for DLA core 0: run with --dla-core 0"


def test_doctor_takes_dla_engines_for_engines(tiny_bundle, tmp_path, monkeypatch):
    bundle = load_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"))
    agx = EngineKey("Orin (nvgpu)", "8.7", "10.3.0", "fp16", None, "p3701-0005", "36.4.3")
    folder = bundle.root / ENGINES_DIR / replace(agx, dla_core=0).slug
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(yaml.safe_dump(_manifest(bundle, replace(agx, dla_core=0))))
    # This machine has no GPU: the device key is the AGX Orin's, as TensorRT and CUDA would give it there.
    # The backend imports the name too: it is imported (and its name replaced) first, so that it never
    # keeps the replacement once the test is over.
    for module in ("edge_ad.tensorrt_backend", "edge_ad.engines"):
        monkeypatch.setattr(f"{module}.device_key", lambda precision, dla_core: replace(agx, precision=precision))
    target = str(CONFIGS / "agx-orin-64gb.yaml")
    # Nor a DLA: its engines stand in as ONNX Runtime's graphs, right and then handing back zeros.
    head_of = {"maps": lambda head: head, "zeros": lambda head: lambda *x: [np.zeros_like(head(*x)[0])]}
    engines = "maps"

    def dla_engines(bundle, dla_core):
        if dla_core is None:  # the GPU, which has no engines here: ONNX Runtime runs the bundle
            raise EdgeAdError("no engines for this GPU")
        graphs = onnxruntime_graphs(bundle, None, True)
        return {**graphs, "head": head_of[engines](graphs["head"])}

    monkeypatch.setattr("edge_ad.tensorrt_backend.tensorrt_graphs", dla_engines)
    report = doctor([str(bundle.root)], target=target)
    assert not any("no engines for bundle" in p for p in report.problems)
    assert any("built for DLA core 0: run with --dla-core 0" in line for line in report.lines)
    assert any(line.endswith("bundle on DLA core 0: its check images give the maps it was exported with, on tensorrt")
               for line in report.lines)
    engines = "zeros"
    assert [p for p in doctor([str(bundle.root)], target=target).problems if "DLA" in p] == [
        f"bundle on DLA core 0 cannot be used: {bundle.root} on tensorrt: the maps of the bundle's 1 check images are "
        "not those it was exported with (branch 0: correlation 0.00 (at least 0.5), scale 0.00 (0.5 to 2.0)): the "
        f"graphs or engines give wrong results here; build its engines again (edge-ad build --bundle {bundle.root} "
        "--dla-core 0 --force); --backend onnxruntime runs its graphs without them meanwhile"]
    shutil.rmtree(folder)
    assert any("no engines for bundle on this device" in p for p in doctor([str(bundle.root)], target=target).problems)


def test_engines_from_another_device_or_bundle_are_refused_with_the_reason(tiny_bundle, tmp_path):
    bundle = load_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"))
    manifest = _manifest(bundle, ORIN)
    assert mismatch(manifest, ORIN, bundle) is None
    other_trt = EngineKey("Orin (nvgpu)", "8.7", "8.6.2", "fp16")
    assert mismatch(manifest, other_trt, bundle) == "built for tensorrt '10.3.0', this device has '8.6.2'"
    manifest["graphs"]["head"]["source_sha256"] = "0" * 64
    assert "engine for graph 'head' was built from another version of head.onnx" == mismatch(manifest, ORIN, bundle)

    folder = bundle.root / ENGINES_DIR / ORIN.slug
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(yaml.safe_dump(_manifest(bundle, ORIN)))
    assert set(cached_engines(bundle, ORIN)) == {"encoder", "head"}
    assert cached_engines(bundle, other_trt) is None
    [line] = other_engines(bundle, other_trt)
    assert ORIN.slug in line and "not used here, built for tensorrt '10.3.0'" in line


def test_engines_of_a_bundle_folder_that_cannot_be_written_go_to_the_cache(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_AD_CACHE", str(tmp_path / "cache"))  # this test's own: other tests see no engines
    bundle = load_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"))
    assert writable_engine_dir(bundle) == bundle.root / ENGINES_DIR
    # As a read-only mount or another user's folder: the engines go to edge-ad's cache, and are found there.
    monkeypatch.setattr("edge_ad.engines.os.access", lambda path, mode: not Path(path).is_relative_to(bundle.root))
    folder = writable_engine_dir(bundle)
    assert folder == engine_dirs(bundle)[1] and folder.is_relative_to(tmp_path / "cache")
    (folder / ORIN.slug).mkdir()
    (folder / ORIN.slug / MANIFEST).write_text(yaml.safe_dump(_manifest(bundle, ORIN)))
    assert set(cached_engines(bundle, ORIN)) == {"encoder", "head"}
    other_trt = EngineKey("Orin (nvgpu)", "8.7", "8.6.2", "fp16")
    assert [line.split(":")[0] for line in other_engines(bundle, other_trt)] == [str(folder / ORIN.slug)]
    # Engines for this device in both places (an older build in the bundle folder): the newest run.
    own = bundle.root / ENGINES_DIR / ORIN.slug
    own.mkdir(parents=True)
    (own / MANIFEST).write_text(yaml.safe_dump(_manifest(bundle, ORIN)))
    os.utime(own / MANIFEST, (1, 1))
    assert cached_engines(bundle, ORIN)["encoder"].parent == folder / ORIN.slug


def test_engines_this_user_cannot_read_are_said_once_and_passed_over(tiny_bundle, tmp_path, monkeypatch):
    # A service user whose HOME is another user's (its cache unreadable), engines built by root under umask 077,
    # a manifest broken by hand or by the disk: those engines cannot be loaded, and the run goes on without them.
    monkeypatch.setenv("EDGE_AD_CACHE", str(tmp_path / "cache"))
    bundle = load_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"))
    own, cached = engine_dirs(bundle)
    for root, key in ((own, ORIN), (own, replace(ORIN, precision="int8")), (own, replace(ORIN, tensorrt="8.6.2")),
                      (cached, ORIN)):
        (root / key.slug).mkdir(parents=True, exist_ok=True)
        (root / key.slug / MANIFEST).write_text(yaml.safe_dump(_manifest(bundle, key)))
    locked, broken = own / replace(ORIN, precision="int8").slug, own / replace(ORIN, tensorrt="8.6.2").slug
    (broken / MANIFEST).write_text("key: [unclosed")
    refused = PermissionError(errno.EACCES, "Permission denied")
    iterdir, stat = Path.iterdir, Path.stat

    def unreadable(method, folder):
        def call(path, *args, **kwargs):
            if path == folder or path.parent == folder:
                raise refused
            return method(path, *args, **kwargs)
        return call

    monkeypatch.setattr(Path, "iterdir", unreadable(iterdir, cached))
    monkeypatch.setattr(Path, "stat", unreadable(stat, locked))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert cached_engines(bundle, ORIN)["encoder"].parent == own / ORIN.slug
        assert other_engines(bundle, ORIN) == []
        assert cached_engines(bundle, replace(ORIN, precision="int8")) is None
        assert {path.parent for path, _ in engine_builds(bundle)} == {own / ORIN.slug, broken}
    assert sorted(str(w.message) for w in said) == sorted([
        f"{cached}: its engines are not used: {os_reason(refused)}; set EDGE_AD_CACHE to a folder of this user's",
        f"{locked}: its engines are not used: {os_reason(refused)}; let this user read it, or build the engines again "
        "as this user",
        f"{broken}: its engines are not used: {MANIFEST} is not an engine manifest; build them again "
        "(edge-ad build --force)"])
    # Every other kind of broken manifest the same: not loaded, no traceback.
    for text in ("- a list", "key: a text\ngraphs: {}", "", "\xff\xfe"):
        (broken / MANIFEST).write_bytes(text.encode("latin-1"))
        assert cached_engines(bundle, replace(ORIN, tensorrt="8.6.2")) is None


def test_int8_engines_need_tensorrt_form_qdq_graphs(tiny_bundle):
    with pytest.raises(EdgeAdError, match="INT8 engines are built from Q/DQ graphs; export with --precision int8"):
        build_engines(load_bundle(tiny_bundle), "int8")
    with pytest.raises(EdgeAdError, match="engine precision 'fp64'"):
        build_engines(load_bundle(tiny_bundle), "fp64")


def test_build_without_tensorrt_fails_with_one_line(tiny_bundle):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    out = subprocess.run([sys.executable, "-m", "edge_ad", "build", "--bundle", str(tiny_bundle)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "TensorRT engines need the tensorrt package" in out.stderr
    assert "--backend" not in out.stderr  # build has no backend to switch
    # A Jetson's TensorRT is JetPack's (apt), not a wheel from PyPI, which has none for Jetsons.
    assert "sudo apt-get install python3-libnvinfer" in out.stderr and "pip install 'edge-ad[tensorrt]'" in out.stderr


@pytest.mark.parametrize("failure, said", [
    ("raise AttributeError('_ARRAY_API not found')", "AttributeError: _ARRAY_API not found"),
    ("import tensorrt_libs", "ModuleNotFoundError: No module named 'tensorrt_libs'")])
def test_build_with_a_tensorrt_that_fails_to_import_says_so_in_one_line(tiny_bundle, tmp_path, failure, said):
    """A tensorrt package that is there but breaks at import (its libraries missing, built for
    another NumPy): one line naming it and why, not a traceback nor "pip install" what is there."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(failure + "\n")
    out = subprocess.run([sys.executable, "-m", "edge_ad", "build", "--bundle", str(tiny_bundle)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert f"the tensorrt package at {tmp_path / 'tensorrt'} is there but fails to import ({said})" in out.stderr


def test_build_engines_on_a_gpu(tiny_bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (no NVIDIA GPU here)")
    if not cuda_memory_installed():
        pytest.skip("neither pycuda nor cuda-python is installed")
    bundle = load_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"))
    folder = build_engines(bundle, "fp16", max_batch=2)
    manifest = yaml.safe_load((folder / MANIFEST).read_text())
    assert set(manifest["graphs"]) == {"encoder", "head"}
    assert all((folder / e["file"]).stat().st_size > 0 for e in manifest["graphs"].values())
    assert (bundle.root / ENGINES_DIR / "timing.cache").is_file()
    built = (folder / "encoder.engine").stat().st_mtime_ns
    build_engines(bundle, "fp16", max_batch=2)  # up to date
    assert (folder / "encoder.engine").stat().st_mtime_ns == built
    build_engines(bundle, "fp16", max_batch=4)  # a larger batch than the engines take: built again
    assert yaml.safe_load((folder / MANIFEST).read_text())["max_batch"] == 4


def test_torch_tensorrt_path_without_it_is_one_line(tiny_bundle, tmp_path):
    try:
        import torch_tensorrt  # noqa: F401
        pytest.skip("Torch-TensorRT is installed here")
    except ImportError:
        pass
    out = subprocess.run([sys.executable, "-m", "edge_ad", "export", "--run", str(tiny_bundle.parent / "run"),
                          "--out", str(tmp_path / "trt"), "--via", "torch-tensorrt"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--via torch-tensorrt needs the torch-tensorrt package" in out.stderr


def test_torch_tensorrt_path_on_a_gpu(tiny_bridge_bundle, tmp_path):
    pytest.importorskip("torch_tensorrt", reason="Torch-TensorRT is not installed (no NVIDIA GPU here)")
    from export.torch_trt import export_torch_tensorrt

    out = export_torch_tensorrt(tiny_bridge_bundle.parent / "run", tmp_path / "trt", "fp16", steps=2)
    report = yaml.safe_load((out / "torch_tensorrt.yaml").read_text())
    assert set(report["files"]) == {"encoder", "prior", "fused", "head"}
    assert report["parity_torch_tensorrt_vs_eager"]["max_rel_diff"] < 1e-2
