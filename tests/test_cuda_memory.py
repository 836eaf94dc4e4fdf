"""CUDA memory through cuda-python on a real GPU: what the TensorRT backend moves frames with."""

import ctypes

import numpy as np
import pytest

from edge_ad.cuda_memory import CudaPythonMemory, host_array
from edge_ad.errors import EdgeAdError


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
