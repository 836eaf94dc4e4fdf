"""TensorRT engines for a bundle, built on the device that will run them (TensorRT 8.6 and 10.x).

An engine only runs on the GPU model, compute capability and TensorRT version it was built
with, so engines live in `<bundle>/engines/<key>/` (or in edge-ad's cache when the bundle folder
cannot be written: engine_dirs) under a key made of those and the precision
(and the DLA core; on a Jetson also the module part number and L4T release), with a manifest
that also records the SHA-256 of each source graph. A cached engine whose manifest does not
match this device and this bundle is never loaded.

FP16 is a builder flag on the FP32 graphs. INT8 is explicit quantisation: the Q/DQ graphs of a
bundle exported with `--precision int8` (symmetric activations), built with the INT8 flag and
FP16 for the layers left in float. On a DLA core INT8 comes from TensorRT's own calibration of
an FP32 bundle instead (edge_ad/dla_int8.py), which the DLA of JetPack 6 requires. The distance
graphs (prior, and the head of prototype and GMM bundles) are built in FP32 whatever the
precision: GMM logits overflow FP16 (BRIDGE_NOTES section 3). The timing cache is kept in the
bundle so rebuilds are fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from .bundle import Bundle, cache_dir, write_yaml_atomic
from .cuda_memory import cuda_memory
from .device import describes, detect, is_jetson, own_target, target_config
from .errors import EdgeAdError, os_reason, raised
from .files import write_atomic

ENGINES_DIR = "engines"
MANIFEST = "manifest.yaml"
TIMING_CACHE = "timing.cache"
BUILD_PRECISIONS = ("fp16", "int8")
DEFAULT_WORKSPACE_MIB = 1024  # TensorRT's memory-pool limit where no target gives one
REDUCED_PRECISION_GRAPHS = ("encoder", "step", "fused")  # the others stay FP32 (distances, softmax gates)


@dataclass(frozen=True)
class EngineKey:
    gpu: str
    compute_capability: str  # "8.7" for Orin
    tensorrt: str
    precision: str
    dla_core: int | None = None
    # On a Jetson every module's GPU is "Orin" 8.7, with different SM counts and clocks per module;
    # the module part number and the L4T release (CUDA and driver) tell them apart. None on x86.
    module: str | None = None
    l4t: str | None = None

    @property
    def slug(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        jetson = (f"-{self.module}" if self.module else "") + (f"-l4t{self.l4t}" if self.l4t else "")
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        return f"{gpu}-sm{self.compute_capability.replace('.', '')}{jetson}-trt{self.tensorrt}-{self.precision}{dla}"


def mismatch(manifest: dict, key: EngineKey, bundle: Bundle) -> str | None:
    """Why cached engines described by `manifest` must not run here, or None when they may."""
    for field, wanted in asdict(key).items():
        built = manifest.get("key", {}).get(field)
        if built == wanted:
            continue
        if field == "dla_core":
            where = "the GPU" if built is None else f"DLA core {built}"
            return f"built for {where}" + (f": run with --dla-core {built}" if built is not None else
                                           f", not DLA core {wanted}")
        return f"built for {field} {built!r}, this device has {wanted!r}"
    for name, path in bundle.graphs.items():
        expected = bundle.spec["graphs"][name]["sha256"]
        if manifest.get("graphs", {}).get(name, {}).get("source_sha256") != expected:
            return f"engine for graph '{name}' was built from another version of {path.name}"
    return None


def _tensorrt(alternative: str = ""):
    """The tensorrt module; without it, an error that says how to install it, then `alternative`.
    One that is there but fails to import (its libraries missing, or built for another NumPy or
    CUDA than the environment has) raises whatever it raises: that is said as such, with where
    it is, rather than as a traceback or as missing."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if exc.name != "tensorrt":
            raise EdgeAdError(_broken_tensorrt(exc) + alternative) from exc
        raise EdgeAdError(
            f"TensorRT engines need the tensorrt package and an NVIDIA GPU ({exc}): on a Jetson, JetPack's (sudo "
            "apt-get install python3-libnvinfer; a venv made with --system-site-packages, as make runtime makes it, "
            f"sees it), elsewhere pip install 'edge-ad[tensorrt]'{alternative}"
        ) from exc
    except Exception as exc:  # any failure of a package that is there
        raise EdgeAdError(_broken_tensorrt(exc) + alternative) from exc
    return trt


def _broken_tensorrt(exc: Exception) -> str:
    spec = importlib.util.find_spec("tensorrt")
    where = f" at {Path(spec.origin).parent}" if spec is not None and spec.origin else ""
    return (f"the tensorrt package{where} is there but fails to import ({raised(exc)}): it does not "
            "match this environment; reinstall it for this device (on a Jetson, JetPack's python3-libnvinfer), or, "
            "where the error names NumPy, install the NumPy it was built for in the environment")


def device_key(precision: str, dla_core: int | None) -> EngineKey:
    """The key of this device: GPU name and compute capability from CUDA, TensorRT's version, and
    on a Jetson the module part number and L4T release from the device tree."""
    trt = _tensorrt()
    name, capability = cuda_memory().gpu()
    jetson = detect() if is_jetson() else None
    module, l4t = (jetson.module, jetson.l4t) if jetson else (None, None)
    return EngineKey(name, capability, trt.__version__, precision, dla_core, module, l4t)


def memory_pool_mib(target: str | None = None, root: Path = Path("/")) -> int:
    """TensorRT's memory-pool limit for `build`: that of the target given (--target), else of the
    target edge-ad takes this device for (own_target), else DEFAULT_WORKSPACE_MIB. A target given
    that does not describe this device is warned of, and its limit used all the same."""
    device = detect(root)
    config = target_config(target) if target is not None else own_target(device) or {}
    limit = (config.get("tensorrt") or {}).get("memory_pool_mib") or DEFAULT_WORKSPACE_MIB
    if target is not None and not describes(config, device):
        warnings.warn(f"--target {target} ({config['description']}) does not describe this device "
                      f"({device.named()}): the engines are built with a {limit} MiB memory-pool limit all the same")
    return limit


def check_dla_core(dla_core: int | None, root: Path = Path("/")) -> None:
    """Refuse a DLA core this device does not have, by its firmware target: the Orin Nano and x86
    GPUs have none, the Orin NX 8GB one, the Orin NX 16GB and AGX Orin two."""
    if dla_core is None:
        return
    target = own_target(detect(root))
    if target is None:  # a module no target describes: TensorRT will say
        return
    cores = target["dla_cores"]
    if dla_core >= cores:
        raise EdgeAdError(f"--dla-core {dla_core}: this {target['name']} has "
                          + (f"DLA cores 0 to {cores - 1}" if cores else "no DLA") + "; leave --dla-core out to use the GPU")


def engine_precisions(bundle: Bundle, dla_core: int | None) -> tuple[str, ...]:
    """The precisions of engines that may run `bundle`, the preferred first: an INT8 bundle's INT8
    engines; an FP32 or FP16 bundle's FP16 ones, and on a DLA core first the INT8 engines that
    TensorRT calibrated from an FP32 bundle."""
    if bundle.precision == "int8":
        return ("int8",)
    return ("int8", "fp16") if dla_core is not None and bundle.precision == "fp32" else ("fp16",)


def engine_dirs(bundle: Bundle) -> list[Path]:
    """Where engines of `bundle` may be: its own engines/ folder, then edge-ad's cache, where they
    go when the bundle folder cannot be written (a read-only mount, another user's files), and
    which a user without a home folder has not (its bundle's folder is still searched)."""
    try:
        return [bundle.root / ENGINES_DIR, cache_dir() / ENGINES_DIR / bundle.sha256[:16]]
    except EdgeAdError:
        return [bundle.root / ENGINES_DIR]


_PASSED_OVER: set[Path] = set()
READABLE_ADVICE = "let this user read it, or build the engines again as this user"


def _pass_over(path: Path, reason: str) -> None:
    """Say, once per process, that the engines at `path` are not used and why."""
    if path not in _PASSED_OVER:
        _PASSED_OVER.add(path)
        warnings.warn(f"{path}: its engines are not used: {reason}")


def _manifests(bundle: Bundle) -> dict[Path, int]:
    """The engine manifests of `bundle` on disk (`build` writes each last), engine_dirs' order,
    with their modification times. A folder this process cannot read (another user's cache,
    engines built under root's umask 077) is said once and passed over, as its engines could
    not be loaded: unsaid, the run went on ONNX Runtime, or ended in Python's PermissionError."""
    manifests = {}
    for root in engine_dirs(bundle):
        try:
            folders = sorted(root.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            cached = root.parent != bundle.root
            _pass_over(root, os_reason(exc) + ("; set EDGE_AD_CACHE to a folder of this user's" if cached
                                               else f"; {READABLE_ADVICE}"))
            continue
        for folder in folders:
            try:
                manifests[folder / MANIFEST] = (folder / MANIFEST).stat().st_mtime_ns
            except (FileNotFoundError, NotADirectoryError):  # not an engine folder, or removed while listed
                continue
            except OSError as exc:
                _pass_over(folder, f"{os_reason(exc)}; {READABLE_ADVICE}")
    return manifests


def _read_manifest(path: Path) -> dict | None:
    """The manifest at `path`, or None (said once) when it cannot be read or is not one."""
    try:
        manifest = yaml.safe_load(path.read_text())
    except FileNotFoundError:  # removed meanwhile
        return None
    except OSError as exc:
        _pass_over(path.parent, f"{path.name}: {os_reason(exc)}; {READABLE_ADVICE}")
        return None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        manifest = exc
    if not (isinstance(manifest, dict) and isinstance(manifest.get("key"), dict)
            and isinstance(manifest.get("graphs"), dict)):
        _pass_over(path.parent, f"{path.name} is not an engine manifest; build them again (edge-ad build --force)")
        return None
    return manifest


def engine_builds(bundle: Bundle) -> frozenset[tuple[Path, int]]:
    """The engine builds of `bundle` on disk: each manifest with its modification time, so that
    another build, or one removed, changes the set."""
    return frozenset(_manifests(bundle).items())


def writable_engine_dir(bundle: Bundle) -> Path:
    """The first of engine_dirs that this process can write, created if needed."""
    for folder in engine_dirs(bundle):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    try:
        cache = cache_dir()
    except EdgeAdError as exc:
        raise EdgeAdError(f"{bundle.root}: its engines folder cannot be written, and {exc}") from exc
    raise EdgeAdError(f"{bundle.root}: neither its engines folder nor {cache} can be written; "
                      "set EDGE_AD_CACHE to a writable folder")


def matching_build(bundle: Bundle, key: EngineKey) -> tuple[Path, dict] | None:
    """The engine folder of `bundle` for `key` that matches, with its manifest (the newest build,
    when both engine_dirs hold one), else None."""
    matching = {}
    for path, modified in _manifests(bundle).items():
        if path.parent.name != key.slug or not (manifest := _read_manifest(path)):
            continue
        if mismatch(manifest, key, bundle) is None:
            matching[path.parent] = modified, manifest
    if not matching:
        return None
    folder = max(matching, key=lambda f: matching[f][0])
    return folder, matching[folder][1]


def cached_engines(bundle: Bundle, key: EngineKey) -> dict[str, Path] | None:
    """The engines of `bundle` for `key` when they exist and match, else None."""
    found = matching_build(bundle, key)
    if found is None:
        return None
    folder, manifest = found
    return {name: folder / entry["file"] for name, entry in manifest["graphs"].items()}


def other_engines(bundle: Bundle, key: EngineKey) -> list[str]:
    """One line per cached engine folder that must not run here, saying why."""
    lines = []
    for path in _manifests(bundle):
        if path.parent.name != key.slug and (manifest := _read_manifest(path)):
            reason = mismatch(manifest, key, bundle)
            lines.append(f"{path.parent}: not used here, {reason or 'built with other settings'}")
    return lines


def refuse_unsigned_int8(bundle: Bundle) -> None:
    """Refuse a bundle whose INT8 graphs TensorRT cannot read (`export --int8-activations uint8`)."""
    if bundle.spec.get("quantization", {}).get("tensorrt_compatible") is False:
        raise EdgeAdError(f"{bundle.root}: its INT8 graphs use unsigned activations, which TensorRT does not read; "
                          "export with --precision int8 and the default --int8-activations")


def check_int8_route(bundle: Bundle, precision: str, dla_core: int | None, calib_data: str | None) -> bool:
    """Refuse a build whose INT8 cannot come out right; True when TensorRT calibrates it. On the
    GPU, INT8 comes from a bundle's Q/DQ graphs; on a DLA core, from TensorRT's own calibration
    of an FP32 bundle on `calib_data` (edge_ad/dla_int8.py)."""
    calibrated = precision == "int8" and dla_core is not None
    if calibrated and bundle.precision != "fp32":
        raise EdgeAdError(f"{bundle.root}: the DLA takes INT8 from TensorRT's calibration, not from "
                          f"{bundle.precision} graphs; build an FP32 bundle of the run with --precision int8 "
                          f"--dla-core {dla_core} --calib-data FRAMES")
    if calibrated and calib_data is None:
        raise EdgeAdError("INT8 on a DLA core is calibrated on this device: give --calib-data (frames of the line: "
                          "an image folder, a data set or a video)")
    if calib_data is not None and not calibrated:
        raise EdgeAdError("--calib-data is for INT8 on a DLA core (--precision int8 --dla-core N); INT8 on the GPU "
                          "comes from a bundle exported with --precision int8")
    if precision == "int8" and not calibrated and bundle.precision != "int8":
        raise EdgeAdError(f"{bundle.root}: INT8 engines are built from Q/DQ graphs; export with --precision int8")
    refuse_unsigned_int8(bundle)
    return calibrated


def build_engines(
    bundle: Bundle,
    precision: str,
    dla_core: int | None = None,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    max_batch: int = 8,
    force: bool = False,
    calib_data: str | None = None,
    calib_images: int = 300,
) -> Path:
    """Build one engine per graph of `bundle` for this device (unless matching engines are
    cached and not `force`); returns the engine folder. INT8 on a DLA core is calibrated by
    TensorRT on up to `calib_images` frames of `calib_data` (check_int8_route)."""
    if precision not in BUILD_PRECISIONS:
        raise EdgeAdError(f"engine precision {precision!r} is not one of {', '.join(BUILD_PRECISIONS)}")
    calibrated = check_int8_route(bundle, precision, dla_core, calib_data)
    check_dla_core(dla_core)
    key = device_key(precision, dla_core)
    for line in other_engines(bundle, key):
        print(line)
    inputs, calibration = None, None
    if calibrated:
        from .dla_int8 import calibration_inputs

        inputs = calibration_inputs(bundle, calib_data, calib_images)
        calibration = {"source": calib_data, "frames": len(inputs),
                       "sha256": hashlib.sha256(inputs.tobytes()).hexdigest()[:16]}
    cached = matching_build(bundle, key)
    if not force and cached is not None:
        folder, manifest = cached
        if (manifest.get("max_batch"), manifest.get("calibration")) == (max_batch, calibration):
            print(f"{folder}: engines for this device and bundle are up to date")
            return folder
        calibrated_on = (manifest.get("calibration") or {}).get("source")
        print(f"{folder}: engines built for batches up to {manifest.get('max_batch')}"
              + (f", calibrated on {calibrated_on}" if calibrated_on else "") + "; building them again for "
              + f"batches up to {max_batch}" + (f", calibrated on {calib_data}" if calibrated else ""))
    root = writable_engine_dir(bundle)
    folder = root / key.slug
    folder.mkdir(parents=True, exist_ok=True)
    cache_path = root / TIMING_CACHE
    entries = {}
    print(f"building {len(bundle.graphs)} TensorRT engines into {folder} (memory-pool limit {workspace_mib} MiB), "
          "this can take minutes")
    with _calibrators(bundle, inputs, folder, calibration) as calibrators:
        for name, path in tqdm(bundle.graphs.items(), desc="TensorRT engines", unit="graph"):
            graph_precision = precision if name in REDUCED_PRECISION_GRAPHS else "fp32"
            serialized = build_serialized_engine(path, graph_precision, dla_core=dla_core, workspace_mib=workspace_mib,
                                                 max_batch=max_batch, timing_cache=cache_path,
                                                 calibrator=calibrators.get(name))
            engine = folder / f"{name}.engine"
            write_atomic(engine, serialized)
            entries[name] = {"file": engine.name, "source_sha256": bundle.spec["graphs"][name]["sha256"]}
    write_yaml_atomic(folder / MANIFEST, {"key": asdict(key), "graphs": entries, "max_batch": max_batch,
                                          "calibration": calibration})
    return folder


@contextmanager
def _calibrators(bundle: Bundle, inputs: np.ndarray | None, folder: Path, calibration: dict | None) -> Iterator[dict]:
    """TensorRT calibrators of the graphs built in INT8 on a DLA core, by graph name (none when
    `inputs` is None), with the GPU's CUDA context current while they are in use. Each keeps its
    calibration cache in `folder`, named for the calibration frames."""
    if inputs is None:
        yield {}
        return
    from .dla_int8 import entropy_calibrator, graph_batches

    trt, memory = _tensorrt(), cuda_memory()
    with memory.current():
        yield {
            name: entropy_calibrator(trt, memory, batches, folder / f"{name}.{calibration['sha256']}.calibration.cache")
            for name, batches in graph_batches(bundle, inputs).items()
        }


def build_serialized_engine(
    path: Path,
    precision: str,
    fp32_layers: tuple[str, ...] = (),
    dla_core: int | None = None,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    max_batch: int = 8,
    timing_cache: Path | None = None,
    opt_batch: int = 1,
    calibrator: Any = None,
) -> bytes:
    """One ONNX graph -> a serialized engine for this device. precision: fp32 (no flag), fp16 (the
    FP16 flag) or int8 (Q/DQ: the INT8 and FP16 flags); layers whose names start with one of
    `fp32_layers` are asked to stay FP32 (the distance layers of a joined graph); a dynamic batch
    gets a profile from 1 to `max_batch`, tuned for `opt_batch`; `timing_cache` is read and
    updated when given; an int8 `calibrator` (edge_ad/dla_int8.py) gives TensorRT the scales,
    measured at its batches' shapes (the calibration profile)."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # EXPLICIT_BATCH is required by 8.6 and the only mode (flag ignored) in 10.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeAdError(f"{path}: TensorRT cannot parse this graph ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if fp32_layers and precision != "fp32":
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        floats = (trt.float32, trt.float16)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            outputs = range(layer.num_outputs)
            if layer.name.startswith(fp32_layers) and all(layer.get_output_type(j) in floats for j in outputs):
                layer.precision = trt.float32
                for j in outputs:
                    layer.set_output_type(j, trt.float32)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if shape and shape[0] == -1:  # dynamic batch
            rest = shape[1:]
            profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    if calibrator is not None:
        config.int8_calibrator = calibrator
        shapes = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if tuple(tensor.shape)[:1] == (-1,):
                shape = calibrator.shapes[tensor.name]
                shapes.set_shape(tensor.name, shape, shape, shape)
        config.set_calibration_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeAdError(f"{path}: TensorRT could not build an engine (see the TensorRT log above)")
    if timing_cache is not None:
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))  # never half a cache to read next time
    return bytes(serialized)
