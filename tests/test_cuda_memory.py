"""CUDA memory through cuda-python on a real GPU: what the TensorRT backend moves frames with; and
which package carries it when one is there but fails to load."""

import ctypes
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_ad.cuda_memory import JETSON_CUDA_PYTHON, CudaPythonMemory, cuda_memory, host_array
from edge_ad.errors import EdgeAdError

BROKEN_PYCUDA = "raise ImportError('libcuda.so.1: cannot open shared object file: No such file or directory')\n"
# cuda-python's runtime module as far as CudaPythonMemory() calls it: a GPU selected.
WORKING_CUDA_PYTHON = "class cudaError_t:\n    cudaSuccess = 0\n\n\ndef cudaSetDevice(device):\n    return (0,)\n"


def _gpu_here() -> bool:
    try:
        from cuda.bindings import runtime
    except ImportError:
        return False

    error, count = runtime.cudaGetDeviceCount()
    return error == runtime.cudaError_t.cudaSuccess and count > 0


needs_gpu = pytest.mark.skipif(not _gpu_here(), reason="no NVIDIA GPU with cuda-python here")


def test_host_memory_is_seen_as_an_array_of_any_engine_dtype():
    memory = (ctypes.c_uint8 * 64)()
    for dtype in (np.float16, np.float32, np.int32, np.uint8, np.int8):
        array = host_array(ctypes.addressof(memory), 64 // np.dtype(dtype).itemsize, dtype)
        assert array.dtype == dtype and array.nbytes == 64 and array.flags.writeable
        array[:] = np.arange(array.size).astype(dtype)  # written through to the memory itself
        assert bytes(memory) == np.arange(array.size).astype(dtype).tobytes()


PACKAGE_MODULES = ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime")


@pytest.fixture
def packages(monkeypatch):
    """`_packages` for a test, and afterwards the modules as they were: a made one left imported
    would be found by the tests after it, whatever the path says."""
    before = {name: sys.modules[name] for name in PACKAGE_MODULES if name in sys.modules}
    yield lambda site, pycuda, cuda_python: _packages(site, monkeypatch, pycuda, cuda_python)
    for name in PACKAGE_MODULES:
        sys.modules.pop(name, None)
    sys.modules.update(before)


def _packages(site, monkeypatch, pycuda: str, cuda_python: str | None) -> None:
    """pycuda and cuda-python made of the given module texts, found first on the path; without
    `cuda_python`, a `cuda` package without its bindings hides any real one."""
    (site / "pycuda").mkdir(parents=True)
    (site / "pycuda" / "__init__.py").write_text("")
    (site / "pycuda" / "driver.py").write_text(pycuda)
    (site / "cuda").mkdir()
    (site / "cuda" / "__init__.py").write_text("")
    if cuda_python is not None:
        (site / "cuda" / "bindings").mkdir()
        (site / "cuda" / "bindings" / "__init__.py").write_text("")
        (site / "cuda" / "bindings" / "runtime.py").write_text(cuda_python)
    monkeypatch.syspath_prepend(str(site))
    for name in PACKAGE_MODULES:
        sys.modules.pop(name, None)


def test_the_cuda_python_said_to_a_jetson_is_the_one_make_runtime_installs():
    """The pin lives in two places, the Makefile's install and the errors' advice: one changed
    alone would tell a Jetson to install what make runtime replaces."""
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    pin = re.search(r"^JETSON_CUDA_PYTHON := (.+)$", makefile, re.M).group(1)
    assert pin == JETSON_CUDA_PYTHON


def test_a_cuda_python_newer_than_the_driver_is_said_with_the_one_to_install(tmp_path, packages):
    """cuda-python 12.9 carries CUDA 12.9's runtime, which JetPack 6's CUDA 12.6 driver refuses:
    said as the error's name alone, it left the user to find which cuda-python fits."""
    packages(tmp_path, BROKEN_PYCUDA, "class cudaError_t:\n    cudaSuccess = 0\n\n\nclass _Refused:\n"
                                      "    name = 'cudaErrorInsufficientDriver'\n\n\n"
                                      "def cudaSetDevice(device):\n    return (_Refused(),)\n")
    with pytest.raises(EdgeAdError, match=r"CUDA could not select the GPU: cudaErrorInsufficientDriver \(this "
                                          r"cuda-python's CUDA runtime is newer than the GPU's driver: on a Jetson "
                                          r"with JetPack 6: make runtime again, which puts cuda-python 12.6 in its "
                                          r"place \(by hand: pip uninstall -y cuda-python cuda-bindings, then pip "
                                          r"install 'cuda-python>=12.6.1,<12.7'\); elsewhere"):
        cuda_memory()


def test_a_pycuda_that_fails_to_load_gives_way_to_cuda_python(tmp_path, packages):
    """pycuda is compiled on the device against its CUDA: after a CUDA upgrade it fails at import.
    cuda-python, when there, carries the frames instead."""
    packages(tmp_path, BROKEN_PYCUDA, WORKING_CUDA_PYTHON)
    assert isinstance(cuda_memory(), CudaPythonMemory)


def test_cuda_memory_packages_that_fail_to_load_are_named_with_what_they_raised(tmp_path, packages):
    packages(tmp_path / "one", BROKEN_PYCUDA, None)
    with pytest.raises(EdgeAdError) as raised:
        cuda_memory()
    assert ("pycuda is installed but fails to load (ImportError: libcuda.so.1: cannot open shared object file: No "
            "such file or directory)") in str(raised.value) and "cuda-python>=12.6.1,<12.7" in str(raised.value)
    packages(tmp_path / "both", BROKEN_PYCUDA, "raise AttributeError('_ARRAY_API not found')\n")
    with pytest.raises(EdgeAdError, match=r"pycuda is installed but fails to load .*; cuda-python is installed but "
                                          r"fails to load \(AttributeError: _ARRAY_API not found\)"):
        cuda_memory()


@needs_gpu
def test_frames_go_to_the_gpu_and_back_unchanged():
    memory = CudaPythonMemory()
    name, capability = memory.gpu()
    major, minor = capability.split(".")
    assert name and "\x00" not in name and int(major) >= 5 and minor.isdigit()
    stream = memory.stream()
    rng = np.random.default_rng()
    for dtype, size in ((np.float32, 3 * 256 * 256), (np.float16, 152 * 32 * 32), (np.uint8, 1)):
        sent = memory.pinned(size, dtype)
        sent[:] = rng.uniform(0, 200, size).astype(dtype)
        received = memory.pinned(size, dtype)
        received[:] = 255  # never what was sent, so a copy that did not happen shows
        buffer = memory.alloc(sent.nbytes)
        memory.to_device(buffer, sent, stream)
        memory.to_host(received, buffer, stream)
        stream.synchronize()
        assert received.dtype == dtype and np.array_equal(received, sent)


@needs_gpu
def test_a_failed_cuda_call_is_named():
    memory = CudaPythonMemory()
    with pytest.raises(EdgeAdError, match="CUDA could not allocate"):
        memory.alloc(1 << 60)  # an exabyte: more than any GPU has
