"""Backends: what runs a bundle's graphs. Each graph is a callable `(*arrays) -> list of arrays`
with the inputs and outputs of the ONNX graph of that name, so the detector is the same code on
every backend.

- onnxruntime: ONNX Runtime, with the CUDA provider where it is installed, else CPU.
- pytorch: the reference, rebuilt from the training checkpoint the bundle carries
  (`reference.file`); needs torch and the `export` package (pip install 'edge-ad[train]').
- tensorrt: the engines `edge-ad build` made for this GPU, or for a DLA core when one is given
  (edge_ad/tensorrt_backend.py). Its step graph also has `restore(features, condition,
  coefficients)`: all K steps on the device.

`auto` tries TensorRT when the bundle holds engines or a DLA core is asked for, and runs it when
it is installed, a GPU is there and the engines are for it; else ONNX Runtime (with a warning
saying why, when TensorRT was tried, or when it runs on the CPU beside a GPU TensorRT could use).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import Bundle, file_sha256
from .device import detect, int8_saturates, is_jetson
from .engines import engine_builds, engine_dirs
from .errors import BundleError, EdgeAdError, shell_word

Graph = Callable[..., list[np.ndarray]]
BACKENDS = ("auto", "onnxruntime", "tensorrt", "pytorch")


def exact_int8_kernels(options: Any) -> bool:
    """On an x86 CPU without VNNI, have ONNX Runtime run the INT8 products of sessions made with
    `options` (onnxruntime.SessionOptions) in its exact U8U8 kernels; returns whether it did.

    Its default uint8 x int8 kernels there add products in pairs into int16 (vpmaddubsw), which
    saturates: on such a Xeon the uint8 ELPV bundles scored 0.66 (prototype) and 0.75 (bridge)
    instead of 0.92. With `session.x64quantprecision` it turns the int8 weights into uint8 ones
    at load and computes exactly what a CPU with VNNI does, more slowly (README, "x86 CPUs
    without VNNI"). Elsewhere (VNNI, ARM, GPUs) nothing changes."""
    if not int8_saturates():
        return False
    options.add_session_config_entry("session.x64quantprecision", "1")
    return True


class OnnxGraph:
    def __init__(self, path: Path, threads: int | None, providers: list[str], spin: bool, int8: bool):
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.u8u8 = int8 and exact_int8_kernels(options)  # INT8 products in the exact U8U8 kernels
        if threads:
            options.intra_op_num_threads = threads
        # A detector runs several sessions one after another per frame. Threads that spin
        # between operators save waking them for each one, but threads still spinning after
        # their session's run took the cores from the next session (the prior graph 2.5x
        # slower). So they spin during a run and stop when it returns: bridge K=2 INT8 uint8
        # on the 2-core EPYC, about 120 fps median against 100 with spinning off (README, Speed).
        # Without spinning (spin=False) a single 30 fps camera's p99 latency was lower there,
        # 20-22 ms against 30-32, at about 1 ms more p50: spinning threads compete with GStreamer's.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            hint = ""
            if self.u8u8:  # INT8 graphs exported before export.quantize.unshare_weights
                hint = ("; its exact INT8 kernels for this x86 CPU without VNNI need each node to hold its own "
                        "weights: export the bundle again with this edge-ad")
            raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({exc}){hint}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, arrays)))


def onnxruntime_providers() -> list[str]:
    """CUDA first when this ONNX Runtime build has it (onnxruntime-gpu), CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def onnxruntime_graphs(bundle: Bundle, threads: int | None, spin: bool) -> dict[str, Graph]:
    providers = onnxruntime_providers()
    int8 = bundle.precision == "int8"
    return {name: OnnxGraph(path, threads, providers, spin, int8) for name, path in bundle.graphs.items()}


def pytorch_graphs(bundle: Bundle) -> dict[str, Graph]:
    """The torch modules of the training run, wrapped to take and return numpy arrays."""
    try:
        import torch

        from export.onnx_export import reference_modules
    except ModuleNotFoundError as exc:
        raise EdgeAdError(f"the pytorch backend needs '{exc.name}': pip install 'edge-ad[train]'") from exc
    entry = bundle.spec.get("reference")
    record = bundle.training
    if not isinstance(entry, dict) or not {"file", "sha256"} <= set(entry) or not record:
        raise BundleError(f"{bundle.root}: bundle.yaml has no 'reference' checkpoint, so no pytorch backend")
    path = bundle.root / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise BundleError(f"{path}: reference checkpoint missing or does not match field 'reference.sha256'")
    modules = reference_modules(record, torch.load(path, map_location="cpu", weights_only=True))

    def wrap(module: torch.nn.Module) -> Graph:
        @torch.no_grad()
        def run(*arrays: np.ndarray) -> list[np.ndarray]:
            out = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

        return run

    return {name: wrap(module) for name, module in modules.items()}


def load_graphs(
    bundle: Bundle, backend: str, threads: int | None, spin: bool, dla_core: int | None = None
) -> tuple[str, dict[str, Graph]]:
    """(backend actually used, graphs). threads and spin set ONNX Runtime's intra-op threads;
    dla_core: run the TensorRT engines `build --dla-core` made for that DLA core."""
    if backend not in BACKENDS:
        raise EdgeAdError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if dla_core is not None and backend not in ("auto", "tensorrt"):
        raise EdgeAdError(f"--dla-core runs TensorRT engines; the {backend} backend has no DLA")
    if backend == "pytorch":
        return backend, pytorch_graphs(bundle)
    if backend == "tensorrt" or (backend == "auto" and (engine_builds(bundle) or dla_core is not None)):
        from .tensorrt_backend import tensorrt_graphs

        try:
            return "tensorrt", tensorrt_graphs(bundle, dla_core)
        except EdgeAdError as exc:
            if backend == "tensorrt":
                raise
            warnings.warn(f"TensorRT not used, ONNX Runtime runs the bundle: {exc}")
    elif backend == "auto" and (idle := gpu_left_idle(bundle)):
        warnings.warn(idle)
    return "onnxruntime", onnxruntime_graphs(bundle, threads, spin)


def gpu_left_idle(bundle: Bundle) -> str | None:
    """What to say when `bundle`, without engines for this device, would run on ONNX Runtime's
    CPU beside an NVIDIA GPU that TensorRT could run it on (a Jetson's; an x86 box's with
    TensorRT installed and without onnxruntime-gpu); None elsewhere (a workstation without
    TensorRT evaluates on its CPU as it did). Unsaid, a line whose engines were never built, or
    were built into another user's cache than the service's, ran on the CPU with nothing but its
    rate to show (how much slower on a Jetson was not measured: none was at hand)."""
    if "CUDAExecutionProvider" in onnxruntime_providers():
        return None
    if not is_jetson() and importlib.util.find_spec("tensorrt") is None:  # (before nvidia-smi, up to 10 s)
        return None
    device = detect()
    if device.kind == "cpu":
        return None
    folders = " and ".join(str(folder) for folder in engine_dirs(bundle))
    return (f"{bundle.root}: no TensorRT engines for it on {device.named()} (looked for in {folders}): ONNX Runtime "
            f"runs it on the CPU, and the GPU stays idle. Build them here: edge-ad build --bundle "
            f"{shell_word(bundle.root)} (as the user that runs it, or with its EDGE_AD_CACHE)")
