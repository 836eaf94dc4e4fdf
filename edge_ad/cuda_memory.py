"""CUDA memory for the TensorRT paths, through pycuda or cuda-python, whichever is installed.

The product card names pycuda; NVIDIA's current TensorRT samples use cuda-python, which has
wheels for the Jetson where pycuda is compiled on the device. Both give the few calls TensorRT
needs here: the GPU's name and compute capability, device buffers, page-locked host arrays, a
stream, and copies between them. Nothing else in the runtime imports either package.
"""

from __future__ import annotations

import ctypes
import importlib.util
import weakref
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from .errors import EdgeAdError, raised


# JetPack 6 has CUDA 12.6: cuda-python 12.9 on carries CUDA 12.9's runtime, which a Jetson's CUDA
# 12.6 driver refuses (the Makefile's JETSON_CUDA_PYTHON says more); 13 needs CUDA 13.
JETSON_CUDA_PYTHON = "cuda-python>=12.6.1,<12.7"
# One installed already is taken out first: from 12.8 on it comes as cuda-bindings, whose files
# the one package of 12.6 would be written over, the two mixed.
JETSON_REPLACE = ("on a Jetson with JetPack 6: make runtime again, which puts cuda-python 12.6 in its place (by hand: "
                  f"pip uninstall -y cuda-python cuda-bindings, then pip install '{JETSON_CUDA_PYTHON}')")


def cuda_memory() -> PyCudaMemory | CudaPythonMemory:
    """pycuda's memory when pycuda is installed and loads, else cuda-python's; an error naming
    both when neither is installed. A package that is there but fails to load (built for another
    CUDA than the device has, its libraries missing) gives way to the other, and is named with
    what it raised when neither loads, rather than as a traceback."""
    failures = []
    for package, module, memory in (("pycuda", "pycuda.driver", PyCudaMemory),
                                    ("cuda-python", "cuda.bindings.runtime", CudaPythonMemory)):
        if not _installed(module):
            continue
        try:
            return memory()
        except EdgeAdError:  # it loaded: the GPU or CUDA itself failed, which the other would meet too
            raise
        except Exception as exc:  # any failure of a package that is there
            failures.append(f"{package} is installed but fails to load ({raised(exc)})")
    if failures:
        raise EdgeAdError(f"TensorRT on the GPU needs pycuda or cuda-python for its memory: {'; '.join(failures)}: "
                          f"reinstall it for this device's CUDA ({JETSON_REPLACE})")
    raise EdgeAdError(f"TensorRT on the GPU needs pycuda or cuda-python for its memory (on a Jetson with JetPack 6: "
                      f"pip install '{JETSON_CUDA_PYTHON}'; elsewhere pip install 'edge-ad[tensorrt]', or cuda-python "
                      "for the CUDA installed)")


def cuda_memory_installed() -> bool:
    """Whether pycuda or cuda-python is installed (without loading CUDA)."""
    return _installed("pycuda.driver") or _installed("cuda.bindings.runtime")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


class PyCudaMemory:
    """pycuda's driver API, with the GPU's primary context made current around each use (the
    detector may be driven from any thread)."""

    def __init__(self) -> None:
        import pycuda.driver as driver

        try:
            driver.init()
            self.device = driver.Device(0)
        except Exception as exc:  # pycuda raises its own error types when there is no GPU or driver
            raise EdgeAdError(f"no usable NVIDIA GPU for TensorRT ({exc})") from exc
        self.driver = driver
        self.context = self.device.retain_primary_context()

    def gpu(self) -> tuple[str, str]:
        """The GPU's name and compute capability ("8.7" on Orin)."""
        major, minor = self.device.compute_capability()
        return self.device.name(), f"{major}.{minor}"

    def current(self) -> AbstractContextManager:
        return _Pushed(self.context)

    def alloc(self, nbytes: int) -> Any:
        """A device buffer; int() of it is its address; freed when it is no longer referenced."""
        return self.driver.mem_alloc(max(1, nbytes))

    def pinned(self, size: int, dtype: np.dtype) -> np.ndarray:
        return self.driver.pagelocked_empty(size, dtype)

    def stream(self) -> Any:
        """A CUDA stream: `.handle` for TensorRT, `.synchronize()`."""
        return self.driver.Stream()

    def to_device(self, address: Any, host: np.ndarray, stream: Any) -> None:
        self.driver.memcpy_htod_async(int(address), host, stream)

    def to_host(self, host: np.ndarray, address: Any, stream: Any) -> None:
        self.driver.memcpy_dtoh_async(host, int(address), stream)


class _Pushed:
    def __init__(self, context: Any) -> None:
        self.context = context

    def __enter__(self) -> None:
        self.context.push()

    def __exit__(self, *exc: object) -> None:
        self.context.pop()


class CudaPythonMemory:
    """cuda-python's runtime API, as NVIDIA's TensorRT samples use it (the runtime API works in
    the GPU's primary context, current in every thread)."""

    def __init__(self) -> None:
        from cuda.bindings import runtime

        self.rt = runtime
        self._call(runtime.cudaSetDevice(0), "select the GPU")

    def _call(self, result: tuple, what: str) -> Any:
        error, *values = result
        if error != self.rt.cudaError_t.cudaSuccess:
            name = getattr(error, "name", error)
            way = (f" (this cuda-python's CUDA runtime is newer than the GPU's driver: {JETSON_REPLACE}; "
                   "elsewhere a cuda-python no newer than the CUDA version nvidia-smi names)"
                   if name == "cudaErrorInsufficientDriver" else "")
            raise EdgeAdError(f"CUDA could not {what}: {name}{way}")
        return values[0] if len(values) == 1 else values

    def gpu(self) -> tuple[str, str]:
        """The GPU's name and compute capability ("8.7" on Orin)."""
        properties = self._call(self.rt.cudaGetDeviceProperties(0), "read the GPU's properties")
        name = properties.name.decode(errors="replace") if isinstance(properties.name, bytes) else str(properties.name)
        return name.rstrip("\x00"), f"{properties.major}.{properties.minor}"

    def current(self) -> AbstractContextManager:
        return nullcontext()

    def alloc(self, nbytes: int) -> _DeviceBuffer:
        """A device buffer; int() of it is its address; freed when it is no longer referenced."""
        return _DeviceBuffer(self, self._call(self.rt.cudaMalloc(max(1, nbytes)), f"allocate {nbytes} bytes"))

    def pinned(self, size: int, dtype: np.dtype) -> np.ndarray:
        """A page-locked host array, freed when it and its views are no longer referenced."""
        dtype = np.dtype(dtype)
        address = self._call(self.rt.cudaMallocHost(max(1, size * dtype.itemsize)), "allocate page-locked memory")
        array = host_array(address, size, dtype)
        weakref.finalize(array, self.rt.cudaFreeHost, address)
        return array

    def stream(self) -> _Stream:
        return _Stream(self, self._call(self.rt.cudaStreamCreate(), "create a stream"))

    def to_device(self, address: Any, host: np.ndarray, stream: _Stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(int(address), host.ctypes.data, host.nbytes, kind, stream.stream),
                   "copy to the GPU")

    def to_host(self, host: np.ndarray, address: Any, stream: _Stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(host.ctypes.data, int(address), host.nbytes, kind, stream.stream),
                   "copy from the GPU")


def host_array(address: int, size: int, dtype: np.dtype) -> np.ndarray:
    """The `size` values of `dtype` at `address` as a numpy array over that memory. Through bytes,
    because numpy has no ctypes type for float16, which FP16 engines take and give."""
    raw = (ctypes.c_uint8 * (size * np.dtype(dtype).itemsize)).from_address(address)
    return np.ctypeslib.as_array(raw).view(dtype)


class _DeviceBuffer:
    def __init__(self, memory: CudaPythonMemory, address: int) -> None:
        self.address = int(address)
        weakref.finalize(self, memory.rt.cudaFree, self.address)

    def __int__(self) -> int:
        return self.address


class _Stream:
    def __init__(self, memory: CudaPythonMemory, stream: Any) -> None:
        self.memory, self.stream, self.handle = memory, stream, int(stream)

    def synchronize(self) -> None:
        self.memory._call(self.memory.rt.cudaStreamSynchronize(self.stream), "finish the stream")
