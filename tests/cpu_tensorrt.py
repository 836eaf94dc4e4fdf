"""The part of TensorRT's Python API that edge-ad calls, over ONNX Runtime on the CPU, and
cuda-python's runtime over host memory: so that `edge-ad build` and the TensorRT backend (the engine cache and
its manifest, profiles and dynamic batches, device buffers and copies, the bridge's K steps
ping-ponging between two buffers) run where there is no GPU, as CI is. An "engine" is the ONNX
graph with the build's profile and flags. What this cannot tell is whether TensorRT itself
builds and runs the graphs right: only the GPU tests can (test_tensorrt_backend.py, test_engines.py).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import types
from enum import Enum

import numpy as np
import onnxruntime as ort

from edge_ad.cuda_memory import host_array

MAGIC = b"cpu-tensorrt-engine\n"
VERSION = "10.3.0"
SUCCESS = 0  # cudaError_t.cudaSuccess


class DataType(Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT32 = np.int32
    INT8 = np.int8
    UINT8 = np.uint8
    BOOL = np.bool_


ONNX_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int32)": DataType.INT32,
              "tensor(int8)": DataType.INT8, "tensor(uint8)": DataType.UINT8, "tensor(bool)": DataType.BOOL}


class TensorIOMode(Enum):
    INPUT = 1
    OUTPUT = 2


class Logger:
    WARNING = 2

    def __init__(self, level: int = WARNING) -> None:
        self.level = level


def _dims(shape) -> tuple[int, ...]:
    """ONNX Runtime's shape with its named (dynamic) axes as TensorRT's -1."""
    return tuple(d if isinstance(d, int) else -1 for d in shape)


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class _Network:
    def __init__(self) -> None:
        self.graph: bytes | None = None
        self.inputs: list[_Tensor] = []
        self.num_layers = 0  # no layers to constrain: FP32 layers are TensorRT's to keep

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network, self.num_errors = network, 0

    def parse(self, graph: bytes) -> bool:
        try:
            session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        except Exception:  # not an ONNX graph
            self.num_errors = 1
            return False
        self.network.graph = graph
        self.network.inputs = [_Tensor(i.name, _dims(i.shape), ONNX_TYPES[i.type]) for i in session.get_inputs()]
        return True

    def get_error(self, i: int) -> str:
        return "not an ONNX graph"


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, smallest, usual, largest) -> None:
        self.shapes[name] = [list(smallest), list(usual), list(largest)]


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"cpu timing cache"

    def serialize(self) -> bytes:
        return self.data


class _Config:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.profiles: list[_Profile] = []
        self.timing_cache: _TimingCache | None = None
        self.int8_calibrator = None
        self.calibration_profile: _Profile | None = None

    def set_memory_pool_limit(self, pool, size: int) -> None:
        pass

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.timing_cache

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: _Profile) -> bool:
        self.calibration_profile = profile
        return True


class IInt8EntropyCalibrator2:
    """The base of a calibrator: TensorRT asks it for batches and for its cache."""


def _calibrate(network: _Network, config: _Config) -> dict[str, float]:
    """What TensorRT does with an INT8 calibrator, with the largest magnitude of each input for its
    scale: the calibrator's cache when it has one, else every batch it gives (the device addresses
    of each input, at the calibration profile's shapes) and the cache written from them."""
    calibrator = config.int8_calibrator
    cache = calibrator.read_calibration_cache()
    if cache is None:
        largest: dict[str, float] = {}
        names = [tensor.name for tensor in network.inputs]
        while (addresses := calibrator.get_batch(names)) is not None:
            for tensor, address in zip(network.inputs, addresses):
                shape = config.calibration_profile.shapes[tensor.name][0] if -1 in tensor.shape else tensor.shape
                values = host_array(int(address), int(np.prod(shape)), np.dtype(tensor.dtype.value))
                largest[tensor.name] = max(largest.get(tensor.name, 0.0), float(np.abs(values).max()))
        cache = json.dumps(largest).encode()
        calibrator.write_calibration_cache(cache)
    return json.loads(cache)


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        if network.graph is None:
            return None
        calibration = _calibrate(network, config) if config.int8_calibrator is not None else None
        header = json.dumps({"flags": config.flags, "profile": config.profiles[0].shapes,
                             "calibration": calibration}).encode()
        return MAGIC + len(header).to_bytes(4, "little") + header + network.graph


def engine_parts(serialized: bytes) -> tuple[dict, bytes]:
    """The flags and profile an engine was built with, and its graph."""
    start = len(MAGIC) + 4
    end = start + int.from_bytes(serialized[len(MAGIC) : start], "little")
    return json.loads(serialized[start:end]), serialized[end:]


class _Engine:
    def __init__(self, serialized: bytes) -> None:
        self.header, graph = engine_parts(serialized)
        self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        io = [(i, TensorIOMode.INPUT) for i in self.session.get_inputs()]
        io += [(o, TensorIOMode.OUTPUT) for o in self.session.get_outputs()]
        self.names = [t.name for t, _ in io]
        self.modes = {t.name: mode for t, mode in io}
        self.types = {t.name: ONNX_TYPES[t.type] for t, _ in io}
        self.shapes = {t.name: _dims(t.shape) for t, _ in io}

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.types[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
        return self.header["profile"][name]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    """Runs the engine's graph on the tensors at the addresses set, as TensorRT does on the GPU's."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}  # by the input shapes

    def set_input_shape(self, name: str, shape) -> bool:
        smallest, _, largest = self.engine.get_tensor_profile_shape(name, 0) if -1 in self.engine.shapes[name] else (
            self.engine.shapes[name],) * 3
        if len(shape) != len(largest) or not all(a <= s <= b for a, s, b in zip(smallest, shape, largest)):
            return False  # as TensorRT: outside the profile, and the next run fails
        self.input_shapes[name] = tuple(shape)
        return True

    def _outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [n for n in self.engine.names if self.engine.modes[n] == TensorIOMode.OUTPUT]
        return dict(zip(names, self.engine.session.run(names, inputs)))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self.engine.modes[name] == TensorIOMode.INPUT:
            return self.input_shapes[name]
        given = tuple(sorted(self.input_shapes.items()))
        if given not in self._output_shapes:  # TensorRT infers them; here the graph runs once on zeros
            zeros = {n: np.zeros(s, self.engine.types[n].value) for n, s in self.input_shapes.items()}
            self._output_shapes[given] = {n: a.shape for n, a in self._outputs(zeros).items()}
        return self._output_shapes[given][name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        inputs = {}
        for name, shape in self.input_shapes.items():
            dtype = np.dtype(self.engine.types[name].value)
            inputs[name] = host_array(self.addresses[name], int(np.prod(shape)), dtype).reshape(shape).copy()
        for name, output in self._outputs(inputs).items():
            output = np.ascontiguousarray(output)
            ctypes.memmove(self.addresses[name], output.ctypes.data, output.nbytes)
        self.runs += 1
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized: bytes) -> _Engine | None:
        return _Engine(serialized) if serialized.startswith(MAGIC) else None  # another TensorRT's: None, as TensorRT


def module() -> types.ModuleType:
    """A `tensorrt` module of the classes above."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None, origin=__file__)  # found where it is looked for
    trt.__version__ = VERSION
    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    trt.TensorIOMode, trt.DataType = TensorIOMode, DataType
    trt.float32, trt.float16 = DataType.FLOAT, DataType.HALF
    trt.nptype = lambda dtype: dtype.value
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", PREFER_PRECISION_CONSTRAINTS="PREFER",
                                            GPU_FALLBACK="GPU_FALLBACK")
    trt.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")
    return trt


def cuda_runtime() -> types.ModuleType:
    """cuda-python's runtime module (`cuda.bindings.runtime`) as far as edge_ad.cuda_memory calls
    it, over host memory: an allocation, on the "device" or page-locked, is host memory at a real
    address, and a copy is done when it is asked for, as the stream would have done it by its
    synchronize(). edge_ad.cuda_memory.CudaPythonMemory runs on it unchanged."""
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.__spec__ = importlib.machinery.ModuleSpec(runtime.__name__, None, origin=__file__)
    held: dict[int, ctypes.Array] = {}  # what is allocated, by address

    def malloc(size: int) -> tuple[int, int]:
        buffer = ctypes.create_string_buffer(size)
        held[ctypes.addressof(buffer)] = buffer
        return SUCCESS, ctypes.addressof(buffer)

    def memcpy(destination: int, source: int, size: int, kind: int, stream: int) -> tuple[int]:
        ctypes.memmove(destination, source, size)
        return (SUCCESS,)

    runtime.cudaError_t = types.SimpleNamespace(cudaSuccess=SUCCESS)
    runtime.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    runtime.cudaSetDevice = lambda device: (SUCCESS,)
    runtime.cudaGetDeviceProperties = lambda device: (SUCCESS, types.SimpleNamespace(name=b"CPU stand-in\x00",
                                                                                       major=0, minor=0))
    runtime.cudaMalloc = runtime.cudaMallocHost = malloc
    runtime.cudaFree = runtime.cudaFreeHost = lambda address: (SUCCESS, held.pop(address))[:1]
    runtime.cudaMemcpyAsync = memcpy
    runtime.cudaStreamCreate = lambda: (SUCCESS, 0)
    runtime.cudaStreamSynchronize = lambda stream: (SUCCESS,)
    return runtime
