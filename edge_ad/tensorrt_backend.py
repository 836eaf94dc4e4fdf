"""The TensorRT backend: the engines `edge-ad build` made for this device, run with the tensor
API that TensorRT 8.6 and 10.x share (set_input_shape, set_tensor_address, execute_async_v3).

Each graph owns device buffers sized for its largest batch and pinned host buffers, and all
graphs share one CUDA stream (pycuda or cuda-python: edge_ad/cuda_memory.py), so a call is: copy
in, run, copy out, synchronise once.
The bridge's K steps run on the device without a host copy in between: the step engine reads
x from one buffer and writes the next x to the other, K times, with every step's coefficients
uploaded once. Imported only when TensorRT is asked for or found, so the CPU runtime never
loads it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .cuda_memory import CudaPythonMemory, PyCudaMemory, cuda_memory
from .engines import cached_engines, check_dla_core, device_key, engine_precisions, other_engines
from .errors import EdgeAdError, shell_word


class TrtGraph:
    """One engine: `(*arrays) -> list of arrays`, like every backend's graphs."""

    def __init__(self, path: Path, trt, runtime, memory: PyCudaMemory | CudaPythonMemory, stream):
        self.path, self.trt, self.memory, self.stream = path, trt, memory, stream
        with memory.current():
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EdgeAdError(f"{path}: TensorRT cannot load this engine (built by another TensorRT or GPU?)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.max_shapes = {}
        self.batched = []  # the inputs with a batch axis: a dynamic first one
        for name in self.inputs:
            shape = tuple(self.engine.get_tensor_shape(name))
            if shape[:1] == (-1,):
                self.batched.append(name)
            if -1 in shape:
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # (min, opt, max)
            self.max_shapes[name] = shape
            self.context.set_input_shape(name, shape)
        for name in self.outputs:
            self.max_shapes[name] = tuple(self.context.get_tensor_shape(name))
        with memory.current():
            self.device = {n: memory.alloc(int(np.prod(s)) * self.dtypes[n].itemsize) for n, s in self.max_shapes.items()}
            self.host = {n: memory.pinned(int(np.prod(s)), self.dtypes[n]) for n, s in self.max_shapes.items()}

    @property
    def batch_limit(self) -> int | None:
        """The most frames a call takes at once: the profile's largest batch (`build --max-batch`)."""
        return self.max_shapes[self.batched[0]][0] if self.batched else None

    def _in_turns(self, call, *arrays: np.ndarray) -> list[np.ndarray] | None:
        """`call` on at most batch_limit frames at a time, its outputs joined; None when the
        arrays fit the profile at once. More frames than the engines were built for come together
        when more cameras share a bundle than `--max-batch`."""
        limit = self.batch_limit
        if limit is None:
            return None
        total = len(arrays[self.inputs.index(self.batched[0])])
        if total <= limit:
            return None
        turns = [call(*(array[start : start + limit] if name in self.batched else array
                        for name, array in zip(self.inputs, arrays)))
                 for start in range(0, total, limit)]
        return [np.concatenate(outputs) for outputs in zip(*turns)]

    def _check(self, name: str, array: np.ndarray) -> np.ndarray:
        limit = self.max_shapes[name]
        if array.ndim != len(limit) or any(a > m for a, m in zip(array.shape, limit)):
            raise EdgeAdError(f"{self.path}: input '{name}' of shape {array.shape} exceeds the engine's profile {limit}")
        return np.ascontiguousarray(array, dtype=self.dtypes[name])

    def run_on_device(self, addresses: dict[str, int], shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Enqueue the engine on device buffers (tensor name -> address); returns the output shapes."""
        for name in self.inputs:
            self.context.set_input_shape(name, shapes[name])
        for name in self.inputs + self.outputs:
            self.context.set_tensor_address(name, int(addresses.get(name, self.device[name])))
        if not self.context.execute_async_v3(self.stream.handle):
            raise EdgeAdError(f"{self.path}: TensorRT failed to run the engine")
        return {name: tuple(self.context.get_tensor_shape(name)) for name in self.outputs}

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        if (joined := self._in_turns(self, *arrays)) is not None:
            return joined
        memory = self.memory
        with memory.current():
            shapes = {}
            for name, array in zip(self.inputs, arrays):
                array = self._check(name, array)
                host = self.host[name][: array.size]
                host[:] = array.ravel()
                memory.to_device(self.device[name], host, self.stream)
                shapes[name] = array.shape
            out_shapes = self.run_on_device({}, shapes)
            results = []
            for name in self.outputs:
                size = int(np.prod(out_shapes[name]))
                memory.to_host(self.host[name][:size], self.device[name], self.stream)
                results.append((name, size))
            self.stream.synchronize()
            return [self.host[name][:size].reshape(out_shapes[name]).copy() for name, size in results]


class TrtStepGraph(TrtGraph):
    """The bridge step engine (inputs x, condition, coefficients; output the next x), which can
    also run all K steps on the device (`restore`)."""

    MAX_STEPS = 16

    def __init__(self, *args):
        super().__init__(*args)
        x_name, _, k_name = self.inputs
        with self.memory.current():  # the second x buffer of the ping-pong, and room for every step's coefficients
            self.other = self.memory.alloc(int(np.prod(self.max_shapes[x_name])) * self.dtypes[x_name].itemsize)
            self.steps = self.memory.alloc(self.MAX_STEPS * int(np.prod(self.max_shapes[k_name])) * self.dtypes[k_name].itemsize)

    def restore(self, features: np.ndarray, condition: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        joined = self._in_turns(lambda x, c, _: [self.restore(x, c, coefficients)], features, condition, coefficients)
        if joined is not None:
            return joined[0]
        memory = self.memory
        x_name, c_name, k_name = self.inputs
        (out_name,) = self.outputs
        with memory.current():
            features, condition = self._check(x_name, features), self._check(c_name, condition)
            table = np.ascontiguousarray(coefficients, dtype=self.dtypes[k_name])
            if len(table) > self.MAX_STEPS:
                raise EdgeAdError(f"{self.path}: {len(table)} bridge steps, at most {self.MAX_STEPS} run on the device")
            x_host = self.host[x_name][: features.size]
            x_host[:] = features.ravel()
            c_host = self.host[c_name][: condition.size]
            c_host[:] = condition.ravel()
            memory.to_device(self.device[x_name], x_host, self.stream)
            memory.to_device(self.device[c_name], c_host, self.stream)
            memory.to_device(self.steps, table, self.stream)
            buffers = [int(self.device[x_name]), int(self.other)]
            shapes = {x_name: features.shape, c_name: condition.shape, k_name: table.shape[1:]}
            row = table.itemsize * table.shape[1]
            for i in range(len(table)):
                self.run_on_device(
                    {x_name: buffers[i % 2], c_name: int(self.device[c_name]), k_name: int(self.steps) + i * row,
                     out_name: buffers[(i + 1) % 2]},
                    shapes,
                )
            result = self.host[out_name][: features.size]
            memory.to_host(result, buffers[len(table) % 2], self.stream)
            self.stream.synchronize()
            return result.reshape(features.shape).copy()


def _runtime(dla_core: int | None = None) -> tuple[Any, Any, PyCudaMemory | CudaPythonMemory, Any]:
    """What TrtGraph runs on: TensorRT, a runtime (set to `dla_core`: the core a DLA engine runs on
    is the runtime's, not the build's), CUDA memory and one stream."""
    from .engines import _tensorrt

    trt = _tensorrt(", or run with --backend onnxruntime")
    memory = cuda_memory()
    with memory.current():
        stream = memory.stream()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if dla_core is not None:
        runtime.DLA_core = dla_core
    return trt, runtime, memory, stream


def engine_graph(path: Path) -> TrtGraph:
    """One engine file built for this GPU, ready to run (`edge-ad deepstream --build` checks the
    maps of the engine it built this way)."""
    return TrtGraph(path, *_runtime())


def tensorrt_graphs(bundle: Bundle, dla_core: int | None = None) -> dict[str, TrtGraph]:
    """The bundle's engines for this device (for its GPU, or for DLA core `dla_core`); refuses,
    saying why, when there are none that match."""
    runtime = _runtime(dla_core)
    check_dla_core(dla_core)
    precisions = engine_precisions(bundle, dla_core)
    key = device_key(precisions[-1], dla_core)
    found = (cached_engines(bundle, replace(key, precision=p)) for p in precisions)
    engines = next((e for e in found if e is not None), None)
    if engines is None:
        reasons = "; ".join(other_engines(bundle, key)) or "no engines in the bundle"
        dla = f" --dla-core {dla_core}" if dla_core is not None else ""
        raise EdgeAdError(f"{bundle.root}: no TensorRT engines for this device ({key.slug}): {reasons}. "
                          f"Build them here: edge-ad build --bundle {shell_word(bundle.root)} --precision "
                          f"{key.precision}{dla}")
    return {name: (TrtStepGraph if name == "step" else TrtGraph)(path, *runtime) for name, path in engines.items()}
