"""Export a training run to a bundle: ONNX graphs (onnxsim applied; INT8 Q/DQ on request),
parity check, per-branch quantiles and thresholds (per bridge K)."""

from __future__ import annotations

import datetime
import errno
import fcntl
import inspect
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxsim import simplify
from tqdm import tqdm

from calibration.statistics import score_percentiles
from calibration.threshold import threshold_at_false_alarm_rate
from edge_ad import __version__, picture_lists
from edge_ad.bundle import BRANCHES, BUNDLE_FILE, SCHEMA_VERSION, file_sha256, write_yaml_atomic
from edge_ad.datasets import calibration_frames, data_text
from edge_ad.detector import Detector
from edge_ad.errors import DataError, EdgeAdError, os_reason
from edge_ad.normalize import fit_quantiles
from edge_ad.self_check import CHECK_FILE, maps_key

from .backbone import encoder_from_checkpoint, input_shape, size_text
from .bridge import COSINE_WEIGHT, BridgeStep, Denoiser, FusedBridge, RestorationHead, sample, schedule
from .bridge_train import STUDENT_STEPS, TEACHER_STEPS
from .checkpoint import save_arrays, save_checkpoint
from .defects import synthesize
from .gmm_bridge import SHRINK, BridgePrior, GmmBridgeHead
from .prototype import PrototypeHead
from .half import to_fp16
from .quantize import QUANTISED_GRAPHS, quantize_distance_graph, quantize_graph
from .train import load_run

OPSET = 17  # the newest opset TensorRT 8.6 (JetPack 6.0) parses; TensorRT 10.x reads it too
SMOOTHING_SIGMA = 4.0  # Gaussian sigma in input pixels, as PatchCore at 256 px
BUNDLE_FALSE_ALARM_RATE = 0.01  # initial image threshold; replaced on site by calibration
REFERENCE_FILE = "reference.pt"  # training checkpoint for the pytorch backend (student only)
DEFAULT_STEPS = 2  # bridge steps a bridge bundle runs unless the runtime asks for another K
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_BATCH = 8
HISTOGRAM_PIXELS = 64 * 256 * 256  # entropy / percentile calibration: 64 frames at 256 px (calibration_count)
CHECK_IMAGES = 4  # validation images scored at every load against their reference maps (check.npz)
CHECK_DEFECTS = ("perlin_texture", "cutpaste", "scratch", "spot")  # one synthetic defect per check image
STEP_CALIBRATION_IMAGES = 64  # images whose sampler trajectories calibrate the step graph
# Symmetric INT8 activations (TensorRT's form) spend a bit on the sign of ReLU6 outputs; the
# encoder's first, high-resolution layers lose most from it. Left in FP32 (FP16 on TensorRT),
# these four raised the whitened ELPV encoder's output SQNR from 1.6 to 4.3 dB and brought the
# prototype and GMM models from 0.014-0.016 below FP32 to within 0.002 (README). uint8 does not
# need it. The names are those of EfficientNet-Lite0's first blocks, which Lite1 has too (there
# they keep its prototype model within 0.004 of FP32: README); the same for every input size.
SYMMETRIC_ENCODER_FP32 = (
    "/stem/stem.0/Conv",
    "/blocks.0/_depthwise_conv/Conv",
    "/blocks.1/_expand_conv/Conv",
    "/blocks.2/_depthwise_conv/Conv",
)


def _export_graph(
    module: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    inputs: dict[str, bool],
    outputs: list[str],
) -> None:
    """Export with TorchScript tracing and onnxsim; `inputs` maps each input name to whether it
    has a dynamic batch axis (every output has one)."""
    dynamic = {name: {0: "batch"} for name, batched in inputs.items() if batched}
    dynamic.update({name: {0: "batch"} for name in outputs})
    # TorchScript, not the dynamo exporter that torch 2.9 made the default; torch before 2.5 has
    # only TorchScript and no `dynamo` keyword (pyproject admits torch from 2.2)
    tracing = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            examples,
            str(path),
            **tracing,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes=dynamic,
        )
    model, ok = simplify(onnx.load(str(path)))
    if not ok:
        raise EdgeAdError(f"{path}: onnxsim could not validate the simplified graph")
    onnx.save(model, str(path))


def _graph_entry(root: Path, name: str) -> dict:
    return {"file": name, "sha256": file_sha256(root / name), "precision": "fp32"}


class _Model:
    """The torch side of a run: encoder plus the graphs of its model type, and its reference maps."""

    def __init__(self, record: dict, checkpoint: dict) -> None:
        self.type = record["model"]
        self.size = input_shape(record["config"]["input_size"])  # (height, width)
        self.grey = record.get("grey_pictures") is True  # frames are scored in grey (Bundle.trained_on_grey)
        self.encoder = encoder_from_checkpoint(self.size, checkpoint)
        self.extra: dict = {}
        if self.type == "prototype":
            self.head = PrototypeHead(checkpoint["prototypes"]).eval()
            return
        gmm = GmmBridgeHead(checkpoint["prototypes"], float(checkpoint["tau"])).eval()
        self.extra = {"tau": float(checkpoint["tau"]), "shrink": SHRINK}
        if self.type == "gmm-bridge":
            self.head = gmm
            return
        self.prior = BridgePrior(gmm).eval()
        self.denoiser = Denoiser(self.encoder.channels)
        self.denoiser.load_state_dict(checkpoint["student"])
        self.denoiser.eval()
        self.head = RestorationHead().eval()
        self.extra["cosine_weight"] = COSINE_WEIGHT

    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules behind each graph, with the graphs' inputs and outputs."""
        if self.type != "bridge":
            return {"encoder": self.encoder, "head": self.head}
        return {"encoder": self.encoder, "prior": self.prior, "step": BridgeStep(self.denoiser), "head": self.head}

    def export(self, example: np.ndarray, out: Path, fuse_steps: int | None = None) -> dict:
        """Write the graphs into `out` (and, with `fuse_steps`, the fused K-step graph); returns
        their bundle entries."""
        image = torch.from_numpy(example)
        with torch.no_grad():
            features = self.encoder(image)
        _export_graph(self.encoder, (image,), out / "encoder.onnx", {"image": True}, ["features"])
        names = ["encoder", "head"]
        if self.type != "bridge":
            _export_graph(self.head, (features,), out / "head.onnx", {"features": True}, ["raw_map"])
        else:
            with torch.no_grad():
                _, condition = self.prior(features)
            coefficients = torch.from_numpy(schedule(2)[0])
            _export_graph(self.prior, (features,), out / "prior.onnx", {"features": True}, ["prior_map", "condition"])
            _export_graph(
                BridgeStep(self.denoiser),
                (features, condition, coefficients),
                out / "step.onnx",
                {"state": True, "condition": True, "coefficients": False},
                ["next_state"],
            )
            _export_graph(self.head, (features, features), out / "head.onnx", {"features": True, "restored": True}, ["raw_map"])
            names = ["encoder", "prior", "step", "head"]
            if fuse_steps is not None:
                _export_graph(FusedBridge(self.denoiser, fuse_steps), (features, condition), out / "fused.onnx",
                              {"state": True, "condition": True}, ["restored"])
                names.append("fused")
        return {name: _graph_entry(out, f"{name}.onnx") for name in names}

    @torch.no_grad()
    def calibration_batches(self, inputs: np.ndarray) -> dict[str, list[dict[str, np.ndarray]]]:
        """Inputs of the quantised graphs on calibration images: the images for the encoder, and
        for the step graph the states of every supported K's trajectory (first STEP_CALIBRATION_IMAGES).
        The last batch is filled up with the first images again: ONNX Runtime's histogram
        calibrators (entropy, percentile) stack the activations of all batches into one array and
        fail on a shorter last batch (calibration_inputs gives at least CALIBRATION_BATCH images)."""
        inputs = np.concatenate([inputs, inputs[: -len(inputs) % CALIBRATION_BATCH]])
        batches: dict[str, list[dict[str, np.ndarray]]] = {"encoder": [], "step": [], "fused": []}
        for start in range(0, len(inputs), CALIBRATION_BATCH):
            batch = inputs[start : start + CALIBRATION_BATCH]
            batches["encoder"].append({"image": batch})
            if self.type != "bridge" or start >= STEP_CALIBRATION_IMAGES:
                continue
            features = self.encoder(torch.from_numpy(batch))
            _, condition = self.prior(features)
            batches["fused"].append({"state": features.numpy(), "condition": condition.numpy()})
            step = BridgeStep(self.denoiser)
            for steps in STUDENT_STEPS:
                x = features
                for row in schedule(steps):
                    batches["step"].append({"state": x.numpy(), "condition": condition.numpy(), "coefficients": row})
                    x = step(x, condition, torch.from_numpy(row))
        return batches

    def half(self, out: Path, graphs: dict) -> dict:
        """Replace the convolution graphs in `graphs` (and `out`) by FP16 ones (export/half.py);
        returns the bundle's `half_precision` record."""
        converted = [name for name in QUANTISED_GRAPHS if name in graphs]  # the same convolution graphs
        for name in converted:
            fp32 = out / graphs[name]["file"]
            fp16 = out / f"{name}.fp16.onnx"
            to_fp16(fp32, fp16)
            fp32.unlink()
            graphs[name] = {**_graph_entry(out, fp16.name), "precision": "fp16"}
        return {
            "format": "FP16 weights and arithmetic, FP32 inputs and outputs (onnxconverter-common)",
            "fp16_graphs": converted,
            "fp32_graphs": [name for name in graphs if name not in converted],
        }

    def quantize(self, out: Path, graphs: dict, calibration: "CalibrationConfig") -> dict:
        """Replace the convolution graphs in `graphs` (and `out`) by Q/DQ INT8 ones, and for
        uint8 activations the distance graphs' prototype products by dynamic INT8 ones; returns
        the bundle's `quantization` record."""
        inputs = calibration_inputs(calibration, self.size, self.grey)
        batches = self.calibration_batches(inputs)
        quantised = [name for name in QUANTISED_GRAPHS if name in graphs]
        unknown = [n for n in calibration.keep_fp32 if n.split(":", 1)[0] not in quantised or ":" not in n]
        if unknown:
            raise EdgeAdError(f"--keep-fp32 {' '.join(unknown)}: name nodes as GRAPH:NODE, GRAPH one of {', '.join(quantised)}")
        sensitivity = {}
        for name in tqdm(quantised, desc=f"INT8 calibration ({calibration.method})", unit="graph"):
            fp32 = out / graphs[name]["file"]
            int8 = out / f"{name}.int8.onnx"
            keep = [n.split(":", 1)[1] for n in calibration.keep_fp32 if n.split(":", 1)[0] == name]
            if name == "encoder" and calibration.activations == "int8":
                keep += SYMMETRIC_ENCODER_FP32
            sensitivity[name] = quantize_graph(
                fp32, int8, batches[name], calibration.method, calibration.activations, keep, calibration.keep_below_db
            )
            fp32.unlink()
            graphs[name] = {**_graph_entry(out, int8.name), "precision": "int8"}
        dynamic = []
        if calibration.activations == "uint8":
            for name in [n for n in graphs if n not in quantised]:
                if quantize_distance_graph(out / graphs[name]["file"]):
                    graphs[name] = {**_graph_entry(out, graphs[name]["file"]), "precision": "int8"}
                    dynamic.append(name)
        form = "QDQ, per-channel symmetric INT8 weights (ONNX Runtime quantize_static)"
        if calibration.activations == "uint8":
            form += "; the products in dynamic_int8 and dynamic_int8_graphs as dynamic INT8 (MatMulInteger)"
        return {
            "format": form,
            "activations": calibration.activations,
            "tensorrt_compatible": calibration.activations == "int8",
            "calibration_method": calibration.method,
            "calibration_source": calibration.data,
            "calibration_images": int(len(inputs)),
            "quantised_graphs": quantised,
            "keep_fp32_below_sqnr_db": calibration.keep_below_db,
            **{key: {name: r[key] for name, r in sensitivity.items()}
               for key in ("kept_fp32", "dynamic_int8", "search_rejected", "output_sqnr_db", "worst_sqnr_db")},
            "dynamic_int8_graphs": dynamic,
            "fp32_graphs": [name for name in graphs if name not in quantised and name not in dynamic],
        }

    @torch.no_grad()
    def grid_maps(self, inputs: np.ndarray, steps: int | None) -> np.ndarray:
        """The torch reference of Detector.grid_maps."""
        features = self.encoder(torch.from_numpy(inputs))
        if self.type != "bridge":
            return self.head(features).numpy()
        prior_map, condition = self.prior(features)
        restored = sample(self.denoiser, features, condition, steps)
        return torch.cat([prior_map, self.head(features, restored)], dim=1).numpy()


@dataclass
class CalibrationConfig:
    """Where INT8 calibration frames come from: a data set ('elpv', a folder, an MVTec category;
    its training split) or a video file (None: the run's training data), and how many frames
    (evenly spaced over a data set, the first ones of a video)."""

    data: str | list[str] | None = None  # a list: the training data of a run trained on several
    images: int = 300
    method: str = "minmax"
    activations: str = "int8"  # int8: symmetric, for TensorRT; uint8: faster on ONNX Runtime CPUs
    keep_fp32: tuple[str, ...] = ()  # GRAPH:NODE names left in FP32
    keep_below_db: float | None = None  # also leave in FP32 every node whose output SQNR is below this


def calibration_count(config: CalibrationConfig, size: tuple[int, int]) -> int:
    """Frames to calibrate on: as asked, but for the histogram methods (entropy, percentile) at
    most HISTOGRAM_PIXELS worth. ONNX Runtime's histogram calibrators hold every activation of
    every frame in memory at once (6.2 GB peak for 64 frames at 256 px; 300 were killed on a
    24 GiB machine); min-max keeps only running extremes."""
    if config.method == "minmax":
        return config.images
    return min(config.images, max(CALIBRATION_BATCH, HISTOGRAM_PIXELS // (size[0] * size[1])))


def calibration_inputs(config: CalibrationConfig, size: tuple[int, int], grey: bool = False) -> np.ndarray:
    """(N, height, width, 3) uint8 RGB calibration inputs for an input of `size` (height, width),
    with a progress bar; `grey`: in grey (`calibration_frames`)."""
    count = calibration_count(config, size)
    if count < config.images:
        print(f"{config.method} calibration holds every activation in memory: {count} of the {config.images} "
              f"frames at {size_text(size)} px (minmax uses them all)")
    inputs = calibration_frames(config.data, count, size, grey)
    if len(inputs) < CALIBRATION_BATCH:
        raise EdgeAdError(f"{data_text(config.data)}: INT8 calibration needs at least {CALIBRATION_BATCH} readable "
                          f"frames, found {len(inputs)}")
    return np.stack(inputs)


def reference_modules(record: dict, checkpoint: dict) -> dict[str, torch.nn.Module]:
    """The PyTorch reference of a bundle's graphs (edge_ad's pytorch backend)."""
    return _Model(record, checkpoint).modules()


def _calibrate(detector: Detector, val_inputs: np.ndarray) -> dict:
    """Per-branch quantiles, the image threshold and the percentiles of image scores from the
    validation images, run through the exported graphs themselves."""
    raw = np.concatenate([detector.raw_maps(val_inputs[i : i + 8]) for i in range(0, len(val_inputs), 8)])
    quantiles = [fit_quantiles(raw[:, b], 0.9, 0.995) for b in range(raw.shape[1])]
    scores = np.array([(sum(q.apply(m) for q, m in zip(quantiles, maps)) / len(maps)).max() for maps in raw])
    branches = [
        {"name": name, "value_alpha": q.value_alpha, "value_beta": q.value_beta}
        for name, q in zip(BRANCHES[detector.bundle.model_type], quantiles)
    ]
    return {
        "normalization": {"q_alpha": quantiles[0].alpha, "q_beta": quantiles[0].beta, "branches": branches},
        "threshold": threshold_at_false_alarm_rate(scores, BUNDLE_FALSE_ALARM_RATE),
        "normal_scores": score_percentiles(scores),
    }


def _provisional(model_type: str) -> dict:
    """Identity normalisation and a zero threshold, replaced once the exported graphs have
    scored the validation images (the quantiles must come from the graphs themselves)."""
    branches = [{"name": name, "value_alpha": 0.0, "value_beta": 1.0} for name in BRANCHES[model_type]]
    return {"normalization": {"q_alpha": 0.9, "q_beta": 0.995, "branches": branches}, "threshold": 0.0}


@contextmanager
def _only_export_into(target: Path) -> Iterator[None]:
    """Held while an export writes the bundle folder `target`: a second export into it is refused
    instead of both writing one staging folder. The kernel drops the lock of a killed export; the
    lock file is removed at the end, and a lock taken on a file already removed does not count."""
    path = target.parent / f".{target.name}.export-lock"
    busy = EdgeAdError(f"{target}: another export is writing this bundle now; wait for it or give another --out")
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(lock.fileno()).st_ino:
                raise busy
        except (BlockingIOError, FileNotFoundError):
            raise busy from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def bridge_steps(model_type: str, steps: int | None) -> int:
    """The K a bundle of a `model_type` run is exported for: `steps`, DEFAULT_STEPS when not given.

    Only the learned bridge takes steps: `--steps` given for another model would otherwise be
    ignored without a word.
    """
    if steps is None:
        return DEFAULT_STEPS
    if model_type != "bridge":
        raise EdgeAdError(f"--steps {steps}: only for bridge runs; this run's model is {model_type}, "
                          "which takes no steps")
    if steps not in STUDENT_STEPS:
        raise EdgeAdError(f"--steps {steps}: the student is distilled for K in {STUDENT_STEPS}")
    return steps


def export_bundle(
    run: Path,
    out: Path,
    default_steps: int | None = None,
    precision: str = "fp32",
    calibration: CalibrationConfig | None = None,
    fuse_steps: int | None = None,
) -> Path:
    """Write the bundle for training run `run` into folder `out`; returns `out`.

    `default_steps` is the K a bridge bundle runs unless the runtime asks for another (default
    DEFAULT_STEPS); other models take no steps and refuse one. A bridge bundle also holds the
    graph of all `fuse_steps` steps in one call (default: the default K; 0: none): INT8 on ONNX
    Runtime at 256 px, on this project's 2-core EPYC, it runs K=2 in 2.4 ms against 3.5 ms as
    two step calls.

    precision int8 quantises the encoder and step graphs (export/quantize.py) on calibration
    frames, fp16 converts them (export/half.py); the bundle's quantiles and thresholds then
    come from those graphs themselves.

    The bundle is written to a hidden folder beside `out` and its files are moved into `out`
    only when all of them are done, bundle.yaml last, so a failed export (wrong calibration
    data, a full disk) leaves a bundle already in `out` as it was; a second export into `out`
    while one runs is refused. Files of that bundle which the export does not write stay: the
    runtime sets aside a site calibration made for other graphs, and uses built engines only
    with the graphs they were built from.
    """
    if precision not in PRECISIONS:
        raise EdgeAdError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if out.exists() and not out.is_dir():
        raise EdgeAdError(f"{out}: exists and is not a folder; give a folder for the bundle")
    target = out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.export-partial"
    with _only_export_into(target):
        shutil.rmtree(staging, ignore_errors=True)  # left by an export that was killed
        staging.mkdir()
        try:
            try:
                _write_bundle(run, staging, default_steps, precision, calibration, fuse_steps)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise EdgeAdError(f"{out}: cannot write the bundle ({os_reason(exc)}); the folder was "
                                  "left as it was and the partial files removed") from exc
            out.mkdir(exist_ok=True)
            for file in sorted(staging.iterdir(), key=lambda f: f.name == BUNDLE_FILE):
                os.replace(file, out / file.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_bundle(
    run: Path, out: Path, default_steps: int | None, precision: str, calibration: CalibrationConfig | None,
    fuse_steps: int | None
) -> None:
    """export_bundle's work, into the empty folder `out`."""
    record, checkpoint, val_inputs = load_run(run)
    model = _Model(record, checkpoint)
    default_steps = bridge_steps(model.type, default_steps)
    if fuse_steps is None:
        fuse_steps = default_steps if model.type == "bridge" else 0
    if fuse_steps and (model.type != "bridge" or fuse_steps not in STUDENT_STEPS):
        raise EdgeAdError(f"--fuse-steps {fuse_steps}: fused graphs are for bridge runs, K in {STUDENT_STEPS}")
    graphs = model.export(val_inputs[:1], out, fuse_steps or None)
    quantization = half = None
    if precision == "fp16":
        half = model.half(out, graphs)
    if precision == "int8":
        calibration = calibration or CalibrationConfig()
        given = calibration.data is not None
        if not given:
            calibration = replace(calibration, data=_training_data(record))
        try:
            quantization = model.quantize(out, graphs, calibration)
        except DataError as exc:
            if given:
                raise
            raise DataError(f"{exc} (the run's training data, which INT8 calibrates on unless --calib-data names "
                            "other frames of the camera)") from exc
    save_checkpoint(out / REFERENCE_FILE, {k: v for k, v in checkpoint.items() if k != "teacher"})
    if (run / picture_lists.TRAINING).is_file():  # eval and calibrate know the training pictures by it
        shutil.copyfile(run / picture_lists.TRAINING, out / picture_lists.TRAINING)
    spec = {
        "schema_version": SCHEMA_VERSION,
        "edge_ad_version": __version__,
        "model": {
            "type": model.type,
            "backbone": model.encoder.backbone,
            "feature_stride": 8,
            "channels": model.encoder.channels,
            "prototypes": int(checkpoint["prototypes"].shape[0]),
            **model.extra,
        },
        "input": {"height": model.size[0], "width": model.size[1], "layout": "NHWC", "color": "RGB", "dtype": "uint8"},
        "precision": precision,
        "graphs": {"opset": OPSET, **graphs},
        "reference": {"file": REFERENCE_FILE, "sha256": file_sha256(out / REFERENCE_FILE)},
        "postprocess": {"smoothing_sigma": SMOOTHING_SIGMA},
        **_provisional(model.type),
    }
    if quantization is not None:
        spec["quantization"] = quantization
    if half is not None:
        spec["half_precision"] = half
    steps_list: list[int | None] = [None]
    if model.type == "bridge":
        steps_list = list(STUDENT_STEPS)
        spec["bridge"] = {
            "default_steps": default_steps,
            "fused_steps": fuse_steps or None,
            "teacher_steps": TEACHER_STEPS,
            "schedules": {k: {"coefficients": schedule(k).tolist(), **_provisional(model.type)} for k in STUDENT_STEPS},
        }
    write_yaml_atomic(out / BUNDLE_FILE, spec)

    parity = {}
    for steps in steps_list:
        detector = Detector.load(out, backend="onnxruntime", steps=steps)  # the graphs just written
        calibrated = _calibrate(detector, val_inputs)
        if steps is None or steps == default_steps:
            spec.update(calibrated)
        if steps is not None:
            spec["bridge"]["schedules"][steps].update(calibrated)
        parity[f"K={steps}" if steps else "maps"] = _parity(model, detector, val_inputs[:8], steps)
    spec["check"] = _write_check(model, _check_images(val_inputs), out, steps_list)
    spec["provenance"] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.resolve()),
        "training": record,
        "validation_images": int(len(val_inputs)),
        "threshold_false_alarm_rate": BUNDLE_FALSE_ALARM_RATE,
        "parity_onnxruntime_vs_torch": parity,
    }
    write_yaml_atomic(out / BUNDLE_FILE, spec)
    Detector.load(out, backend="onnxruntime")  # its graphs pass their own check here, or the export fails


def _training_data(record: dict) -> str | list[str]:
    """The run's training data, INT8 calibration frames by default: its folders by the absolute
    paths train recorded (`data_paths`), so that an export run from another folder reads them, not
    a folder of the same name there (or none: "good: no such dataset folder"); as typed for ELPV's
    protocol, which has no path, and for runs trained before the paths were recorded."""
    data = record["config"]["data"]
    paths = record.get("data_paths")
    if not isinstance(paths, list) or len(paths) != (1 if isinstance(data, str) else len(data)):
        return data
    return paths[0] if isinstance(data, str) else paths


def _check_images(val_inputs: np.ndarray) -> np.ndarray:
    """The first validation images, each with a synthetic defect (seed 0, the next image as foreign
    texture). The maps of a normal image are mostly noise, which INT8 moves about; a defect gives
    them a place that it does not, so correct INT8 graphs stay far from the refusal line (README,
    "Bundles")."""
    rng = np.random.default_rng(0)
    count = min(CHECK_IMAGES, len(val_inputs))
    return np.stack([synthesize(val_inputs[i], val_inputs[(i + 1) % len(val_inputs)], rng, CHECK_DEFECTS[i])[0]
                     for i in range(count)])


def _write_check(model: _Model, inputs: np.ndarray, out: Path, steps_list: list[int | None]) -> dict:
    """`inputs` (the check images) and the grid maps the FP32 reference gives them, per bridge K,
    which loading compares with the graphs' maps on the device (edge_ad.self_check)."""
    maps = {maps_key(steps): model.grid_maps(inputs, steps).astype(np.float32) for steps in steps_list}
    save_arrays(out / CHECK_FILE, inputs=inputs, **maps)
    return {"file": CHECK_FILE, "sha256": file_sha256(out / CHECK_FILE), "images": int(len(inputs)),
            "defects": list(CHECK_DEFECTS[:len(inputs)])}


def _parity(model: _Model, detector: Detector, inputs: np.ndarray, steps: int | None) -> dict:
    """Largest and mean absolute difference of the raw grid maps, ONNX Runtime against torch,
    and the largest relative one (to the largest map value)."""
    reference = model.grid_maps(inputs, steps)
    diff = np.abs(reference - detector.grid_maps(inputs))
    return {
        "images": int(len(inputs)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(diff.max() / np.abs(reference).max()),
    }
