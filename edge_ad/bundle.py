"""Model bundles: a folder (or a .tar of one) with bundle.yaml and the ONNX graphs.

Loading checks every field the runtime uses and the SHA-256 of every graph, and
fails with the file and the field named.

Graphs per model type: prototype and gmm-bridge bundles hold `encoder` (image -> features) and
`head` (features -> raw map); bridge bundles hold `encoder`, `prior` (features -> GMM map and
the condition), `step` (features, condition, coefficients (t, dt) -> next features) and `head`
(features, restored -> raw map). A bridge bundle stores one schedule per supported number of
steps K, each with its own normalisation and threshold; the runtime picks K at load time.
"""

from __future__ import annotations

import hashlib
import lzma
import math
import os
import shutil
import tarfile
import tempfile
import time
import warnings
import zlib
from collections.abc import Hashable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from calibration.threshold import expected_rate_above, resolves

from . import picture_lists
from .errors import BundleError, EdgeAdError, os_reason, shell_word
from .files import home_folder, write_atomic
from .images import DARK, DARK_CAUSE, ENLARGED, is_grey
from .normalize import Quantiles

SCHEMA_VERSION = 2
BUNDLE_FILE = "bundle.yaml"
CALIBRATION_FILE = "calibration.yaml"  # written on site; overrides the bundle's quantiles and threshold
# A device clock this far behind a bundle's export time is wrong, not merely unlike the
# workstation's (clocks kept by NTP differ by seconds).
CLOCK_SLACK = timedelta(hours=1)
# Frames whose width-to-height ratio is a fifth or more off the training pictures' show another
# view than the model learned (the camera sees more than the part, or is turned): a bundle trained
# on square ELPV cells flagged every normal cell shown in a 4:3 frame with background beside it.
# Cameras of one view differ by less (4:3 against 5:4 is 7 %).
ASPECT_SLACK = 1.2
GRAPH_NAMES = {
    "prototype": ("encoder", "head"),
    "gmm-bridge": ("encoder", "head"),
    "bridge": ("encoder", "prior", "step", "head"),
}
MODEL_TYPES = tuple(GRAPH_NAMES)
PRECISIONS = ("fp32", "fp16", "int8")
SHORT_SHA256 = 12  # hex digits of a file's SHA-256 that name it (as short git hashes do)
# Feature encoders 'edge-ad train' offers, the default first (export/backbone.py builds them).
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1")
# Raw-map branches each model's graphs produce, in order; each has its own quantiles.
BRANCHES = {"prototype": ("head",), "gmm-bridge": ("head",), "bridge": ("prior", "bridge")}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write YAML so that a crash leaves the old file or the new one, never half of either."""
    write_atomic(path, yaml.safe_dump(data, sort_keys=False).encode())


@dataclass(frozen=True)
class Bundle:
    root: Path
    spec: dict[str, Any]
    model_type: str
    precision: str  # fp32, fp16 or int8 (the reduced-precision graphs; see quantization or half_precision)
    input_height: int
    input_width: int
    graphs: dict[str, Path]
    smoothing_sigma: float
    branches: tuple[str, ...]  # names of the raw-map branches, in graph output order
    quantiles: tuple[Quantiles, ...]  # one per branch
    threshold: float
    sha256: str  # of bundle.yaml as it was read: the model this is, whatever is on disk by now
    steps: int | None = None  # bridge steps K in use (bridge bundles only)
    coefficients: np.ndarray | None = None  # (K, 2) rows (t, dt) of the step graph
    calibration: Path | None = None  # the calibration.yaml in use, if any
    calibration_sha256: str | None = None  # of that file as it was read
    fused_steps: int | None = None  # K of the optional fused graph (graphs["fused"]: all K steps in one)
    normal_scores: tuple[float, float] | None = None  # (p50, p90) of normal image scores, where recorded
    min_defect_area: int | None = None  # frame pixels a region above the threshold must cover (site calibration)
    threshold_is_f1: bool = False  # the site calibration's threshold is the known defects' F1-best (--threshold f1)
    check: Path | None = None  # images scored at load and their reference maps (edge_ad.self_check); older bundles: none

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    @property
    def provenance(self) -> dict:
        """What export recorded of where the bundle came from; empty where the bundle does not say
        (or says it as no mapping: a bundle.yaml edited by hand)."""
        provenance = self.spec.get("provenance")
        return provenance if isinstance(provenance, dict) else {}

    @property
    def training(self) -> dict:
        """What training recorded of the run (`provenance.training`); empty where the bundle does not say."""
        training = self.provenance.get("training")
        return training if isinstance(training, dict) else {}

    def training_pictures(self) -> dict[str, str]:
        """{pixel digest: kind} of the pictures the model was trained on (edge_ad.picture_lists);
        {} for bundles trained before training kept them."""
        return picture_lists.read(self.root / picture_lists.TRAINING, self.training.get("pictures_sha256"),
                                  "train again")

    def calibration_pictures(self) -> dict[str, str]:
        """{pixel digest: kind} of the frames and known defects the site calibration in use was made
        on, where those were pictures (edge_ad.picture_lists); {} without one, or for one made of a
        camera's frames, or before calibrations kept them. A calibration.yaml.bak put back in use
        finds its list in the calibration_pictures.csv.bak kept beside the newer one's."""
        if self.calibration is None:
            return {}
        sha256 = read_yaml(self.calibration).get("pictures_sha256")
        listed = self.calibration.with_name(picture_lists.CALIBRATION)
        for path in (listed, listed.with_name(listed.name + ".bak")):
            if pictures := picture_lists.read(path, sha256, "calibrate again"):
                return pictures
        return {}

    @property
    def trained_on_grey(self) -> bool:
        """Whether every training picture was grey (`grey_pictures`; older bundles do not say, and
        are taken as colour ones)."""
        return self.training.get("grey_pictures") is True

    def export_threshold_basis(self) -> tuple[int, float] | None:
        """The held-out training images the threshold from export was set on and its false-alarm
        rate, while that threshold judges: None once a site calibration does, and for bundles that
        do not record them."""
        images, rate = self.provenance.get("validation_images"), self.provenance.get("threshold_false_alarm_rate")
        if self.calibration is not None or not isinstance(images, int) or not isinstance(rate, float):
            return None
        return images, rate

    def export_threshold_note(self) -> str | None:
        """What the threshold from export stands for where it was set on fewer validation images
        than its false-alarm rate needs (a small training set): their highest score, which good
        parts exceed far more often than that rate. None with enough of them, and where
        `export_threshold_basis` is None."""
        recorded = self.export_threshold_basis()
        if recorded is None or resolves(*recorded):
            return None
        images, rate = recorded
        basis = "the score of its one validation image" if images == 1 else \
            f"the highest score of only {images} validation images"
        return (f"the threshold from export ({self.threshold:.3f}) is {basis}, which about 1 good part in "
                f"{round(1 / expected_rate_above(images, rate))} exceeds (its {rate:.0%} false-alarm rate needs "
                f"{math.ceil(1 / rate)} validation images); 'edge-ad calibrate' sets one on the camera's frames")

    def clock_note(self, now: datetime | None = None) -> str | None:
        """What to say when this machine's clock is behind the time the bundle was exported, so
        that events, snapshots and reports would carry wrong times (a Jetson without a time server
        or a clock battery starts from the last time it saved). None otherwise, and for bundles
        that do not record that time."""
        try:
            made = datetime.fromisoformat(self.provenance.get("created"))
        except (TypeError, ValueError):
            return None
        now = now or datetime.now(timezone.utc)
        if made.tzinfo is None or now >= made - CLOCK_SLACK:
            return None
        return (f"this machine's clock says {now:%Y-%m-%d %H:%M} UTC, before bundle {self.root} was exported "
                f"({made:%Y-%m-%d %H:%M} UTC): events, snapshots and reports would carry wrong times. Set the clock: "
                "a time server on the plant network (timedatectl set-ntp true), else timedatectl set-time")

    def frame_colour_note(self, frame: np.ndarray) -> str | None:
        """What to say when a grey camera's `frame` meets a bundle trained on colour pictures: on
        ELPV cells tinted blue, 74 % of normal ones shown in grey were flagged (README). None
        otherwise, and for bundles that do not say (`provenance.training.grey_pictures`)."""
        if self.training.get("grey_pictures") is not False or not is_grey(frame[::4, ::4]):
            return None
        return (f"the frames are grey, but bundle {self.root} was trained on colour pictures, and normal parts may "
                "all look anomalous. Set the camera to send colour (a GenICam colour camera: feature=PixelFormat=RGB8 "
                "in its URI, or its mosaic with --input-codec bayer), or train on pictures of this camera (edge-ad "
                "record)")

    def dark_frames_note(self, brightest: int, camera: bool = False) -> str | None:
        """What to say when frames whose brightest pixel is `brightest` are far darker than the
        pictures the bundle was trained on (`provenance.training.brightest_pixel`): a bundle trained
        on 8-bit ELPV cells flagged 19 of 20 normal ones saved as a 12-bit camera's 16-bit files
        (README: 16-bit pictures). A live `camera`'s frames are dark for want of light, not for
        their files. None otherwise, and for bundles that do not record it."""
        trained = self.training.get("brightest_pixel")
        if not isinstance(trained, int) or trained <= DARK or brightest > DARK:
            return None
        said = (f"the brightest pixel of the frames is {brightest} of 255, that of the pictures bundle {self.root} was "
                f"trained on {trained}")
        if camera:
            return (f"{said}: the camera sees too little light (a lens cap, the lights off, too short an exposure or "
                    "too small an aperture), and normal parts may all look anomalous. Light the part and set the "
                    "camera as when the training pictures were taken")
        return (f"{said}: {DARK_CAUSE}, and normal parts may all look anomalous. Shift such files up to 16 bits first, "
                "or have the camera's tool save 8-bit pictures (README: 16-bit pictures)")

    def frame_shape_note(self, shape: tuple[int, ...]) -> str | None:
        """What to say when frames of `shape` (as scored: turned and cropped) are shaped unlike the
        pictures the bundle was trained on (median height and width, `provenance.training.image_shape`),
        twice their size or more where the input enlarged those more than ENLARGED times, or half their
        size or less where the input enlarges the frames more than ENLARGED times. None otherwise, and
        for bundles that do not record that shape."""
        trained = self.training.get("image_shape")
        if not (isinstance(trained, list) and len(trained) == 2 and all(isinstance(v, int) and v > 0 for v in trained)):
            return None
        (trained_height, trained_width), (height, width) = trained, shape[:2]
        aspect, trained_aspect = width / height, trained_width / trained_height
        if 1 / ASPECT_SLACK < aspect / trained_aspect < ASPECT_SLACK:
            return self._frame_size_note(height, width, trained_height, trained_width)
        turned_fits = 1 / ASPECT_SLACK < aspect * trained_aspect < ASPECT_SLACK  # turned a quarter, they would fit
        turned = ", or is turned a quarter (--input-flip)" if turned_fits else ""
        return (f"frames of {width}x{height} are shaped unlike the pictures bundle {self.root} was trained on "
                f"({trained_width}x{trained_height}, median): the camera shows more or less around the part than the "
                f"model learned{turned}, and normal parts may all look anomalous. Crop the frames to "
                "what the training pictures showed (--input-crop X,Y,W,H), or train on pictures of this camera as "
                "run scores them (edge-ad record with the same options)")

    def _frame_size_note(self, height: int, width: int, trained_height: int, trained_width: int) -> str | None:
        trained = f"the pictures bundle {self.root} was trained on ({trained_width}x{trained_height}, median)"
        trained_enlarged = min(self.input_height / trained_height, self.input_width / trained_width)
        frames_enlarged = min(self.input_height / height, self.input_width / width)
        larger = min(height / trained_height, width / trained_width)
        if trained_enlarged > ENLARGED and larger >= 2:
            return (f"frames of {width}x{height} are {larger:.0f} times the size of {trained}, which its "
                    f"{self.input_width}x{self.input_height} input enlarged {trained_enlarged:.0f} times: the model "
                    "learned them blurred, and sharper frames of normal parts may all look anomalous. Train on "
                    "pictures as this camera takes them (edge-ad record with the same options)")
        if frames_enlarged > ENLARGED and larger <= 1 / 2:
            return (f"frames of {width}x{height} are 1/{1 / larger:.0f} the size of {trained}, and its "
                    f"{self.input_width}x{self.input_height} input enlarges them {frames_enlarged:.0f} times: the "
                    "model learned sharp pictures, and blurred frames of normal parts may look anomalous. Give the "
                    "part more of the camera's pixels (a closer camera, a longer lens, a camera of more pixels), or "
                    "train on pictures as this camera takes them (edge-ad record with the same options)")
        return None

    @property
    def short_ids(self) -> tuple[str, str | None]:
        """How events and `doctor` name this bundle and its calibration: the first hex digits of the
        SHA-256 of its bundle.yaml and of the calibration.yaml in use (None: the bundle's own
        numbers), as `sha256sum` prints them."""
        calibration = self.calibration_sha256
        return self.sha256[:SHORT_SHA256], calibration and calibration[:SHORT_SHA256]


class _Fields:
    """Typed access to bundle.yaml that names the field in every error."""

    def __init__(self, path: Path, data: dict[str, Any], prefix: str = "", sha256: str | None = None):
        self.path = path
        self.data = data
        self.prefix = prefix  # where `data` sits in the file, for the messages
        self.sha256 = sha256  # of the file as it was read, where that matters (a site calibration)

    def get(self, dotted: str, kind: type | tuple[type, ...]) -> Any:
        node: Any = self.data
        parts = dotted.split(".")
        dotted = self.prefix + dotted
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise BundleError(f"{self.path}: missing field '{dotted}'")
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise BundleError(f"{self.path}: field '{dotted}' must be {names}, got {node!r}")
        if isinstance(node, float) and not math.isfinite(node):  # a threshold of .nan flagged no part at all
            raise BundleError(f"{self.path}: field '{dotted}' must be a finite number, got {node!r}")
        return node

    def positive(self, dotted: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
        value = self.get(dotted, kind)
        if value <= 0:
            raise BundleError(f"{self.path}: field '{self.prefix}{dotted}' must be positive, got {value!r}")
        return value


def cache_dir() -> Path:
    """edge-ad's folder for what it keeps on this machine: $EDGE_AD_CACHE, else
    $XDG_CACHE_HOME/edge-ad, else ~/.cache/edge-ad."""
    if os.environ.get("EDGE_AD_CACHE"):
        return Path(os.environ["EDGE_AD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or home_folder("EDGE_AD_CACHE") / ".cache") / "edge-ad"


STALE_STAGING_S = 24 * 3600  # an unpack folder this old was left by a process killed mid-unpack


def _remove_stale_staging(bundles: Path) -> None:
    """Delete what unpacks killed half-way left behind (a running unpack's folder is minutes old)."""
    for staging in bundles.glob(".unpacking-*"):
        try:
            if time.time() - staging.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError:  # removed meanwhile by another process
            continue


def _unpacked(path: Path) -> Path:
    """The bundle folder inside archive `path`, unpacked once per archive content into the cache.
    The folder persists, so the engines `edge-ad build` makes for the archive and the site
    calibration `edge-ad calibrate` writes for it are there the next time it is loaded. It is
    unpacked into a hidden folder and renamed into place whole: never half an archive."""
    try:
        bundles = cache_dir() / "bundles"
    except EdgeAdError as exc:
        raise BundleError(f"{path}: an archive is unpacked into edge-ad's cache, and {exc}") from exc
    try:
        folder = bundles / file_sha256(path)[:16]
        if not folder.is_dir():
            bundles.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(bundles)
            staging = Path(tempfile.mkdtemp(dir=bundles, prefix=".unpacking-"))
            try:
                with tarfile.open(path) as archive:
                    archive.extractall(staging, filter="data")
                os.rename(staging, folder)
            except OSError:
                if not folder.is_dir():  # else another process unpacked it first, and its folder stays
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:  # EOFError: a compressed archive cut short
        raise BundleError(f"{path}: not a readable bundle archive ({exc})") from exc
    except OSError as exc:
        if exc.errno is None:  # the archive's compression is corrupt (bz2's "Invalid data stream", gzip's BadGzipFile)
            raise BundleError(f"{path}: not a readable bundle archive ({exc})") from exc
        raise BundleError(f"{path}: cannot unpack the archive into {bundles} ({os_reason(exc)}); "
                          "set EDGE_AD_CACHE to a writable folder with room for it") from exc
    found = sorted(folder.rglob(BUNDLE_FILE))
    if not found:
        raise BundleError(f"{path}: archive has no {BUNDLE_FILE}")
    return found[0].parent


def bundle_yaml(path: str | Path) -> Path:
    """The bundle.yaml of bundle `path`: a folder, or a .tar archive (unpacked into the cache)."""
    path = Path(path)
    if path.is_dir():
        root = path
    elif path.is_file():
        if path.name == BUNDLE_FILE:
            raise BundleError(f"{path}: a bundle's own file; give its folder, {path.parent}, which holds its graphs")
        if not tarfile.is_tarfile(path):
            raise BundleError(f"{path}: not a readable bundle archive (.tar, compressed or not): damaged, or "
                              "another kind of file; a bundle is a folder or such an archive of one")
        root = _unpacked(path)
    else:
        raise BundleError(f"{path}: no such bundle folder or archive")
    yaml_path = root / BUNDLE_FILE
    if not yaml_path.is_file():
        if (root / "model.pt").is_file() and (root / "config.yaml").is_file():  # export.train's CHECKPOINT and CONFIG
            raise BundleError(f"{path}: a training run, not a bundle: edge-ad export --run {shell_word(path)} --out "
                              "BUNDLE makes the bundle that edge-ad run, eval and calibrate take")
        raise BundleError(f"{path}: no {BUNDLE_FILE} inside")
    return yaml_path


def load_bundle(path: str | Path, steps: int | None = None) -> Bundle:
    """Load and validate a bundle folder or .tar archive; `steps` picks a bridge bundle's K."""
    yaml_path = bundle_yaml(path)
    root = yaml_path.parent
    data, sha256 = _read_hashed(yaml_path)
    fields = _Fields(yaml_path, data)
    version = fields.get("schema_version", int)
    if version != SCHEMA_VERSION:
        raise BundleError(f"{yaml_path}: field 'schema_version' is {version}, this edge-ad reads {SCHEMA_VERSION}")
    model_type = fields.get("model.type", str)
    if model_type not in MODEL_TYPES:
        raise BundleError(f"{yaml_path}: field 'model.type' is {model_type!r}, this edge-ad runs {', '.join(MODEL_TYPES)}")
    for key, expected in (("input.layout", "NHWC"), ("input.color", "RGB"), ("input.dtype", "uint8")):
        if fields.get(key, str) != expected:
            raise BundleError(f"{yaml_path}: field '{key}' must be {expected!r}")
    precision = fields.get("precision", str)
    if precision not in PRECISIONS:
        raise BundleError(f"{yaml_path}: field 'precision' is {precision!r}, this edge-ad runs {', '.join(PRECISIONS)}")
    graphs = {}
    if steps is not None and model_type != "bridge":
        raise BundleError(f"{yaml_path}: a {model_type} bundle has no bridge steps to choose")
    for name in GRAPH_NAMES[model_type]:
        graphs[name] = _listed_file(root, fields, f"graphs.{name}")
    selected, coefficients, fused_steps = fields, None, None
    if model_type == "bridge":
        steps, coefficients, selected = _bridge_schedule(fields, steps)
        fused_steps = fields.data["bridge"].get("fused_steps")
        if fused_steps is not None:
            if fused_steps not in fields.get("bridge.schedules", dict):
                raise BundleError(f"{yaml_path}: field 'bridge.fused_steps' is {fused_steps!r}, not a K of bridge.schedules")
            graphs["fused"] = _listed_file(root, fields, "graphs.fused")
    calibration, problem = _calibration(root / CALIBRATION_FILE, steps, yaml_path, sha256)
    if problem is not None:
        warnings.warn(f"{problem}; using the bundle's own numbers until 'edge-ad calibrate' is run again")
    return Bundle(
        root=root,
        spec=data,
        model_type=model_type,
        precision=precision,
        input_height=fields.positive("input.height", int),
        input_width=fields.positive("input.width", int),
        graphs=graphs,
        smoothing_sigma=_smoothing_sigma(fields),
        steps=steps,
        coefficients=coefficients,
        calibration=None if calibration is None else calibration.path,
        calibration_sha256=None if calibration is None else calibration.sha256,
        fused_steps=fused_steps,
        check=_listed_file(root, fields, "check") if "check" in data else None,
        sha256=sha256,
        **_numbers(selected if calibration is None else calibration, model_type),
    )


def _smoothing_sigma(fields: _Fields) -> float:
    """postprocess.smoothing_sigma, in input pixels; 0 smooths nothing. A hand-edited -1 was taken
    as no smoothing without a word."""
    sigma = float(fields.get("postprocess.smoothing_sigma", (int, float)))
    if sigma < 0:
        raise BundleError(f"{fields.path}: field 'postprocess.smoothing_sigma' must be 0 (no smoothing) or more, "
                          f"got {sigma:g}")
    return sigma


def site_calibrated(bundle: Bundle, folder: str | Path) -> tuple[Bundle, str | None]:
    """`bundle` with the site calibration in `folder` (calibration.yaml) in place of its own
    numbers: one camera's, where several cameras share one bundle (`calibration:` in --sources).
    While `folder` holds none that describes this bundle's maps, `bundle` as loaded, and why."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return bundle, f"{folder}: no {CALIBRATION_FILE} yet"
    calibration, problem = _calibration(path, bundle.steps, bundle.root / BUNDLE_FILE, bundle.sha256)
    if calibration is None:
        return bundle, problem
    return replace(bundle, calibration=path, calibration_sha256=calibration.sha256,
                   **_numbers(calibration, bundle.model_type)), None


def _numbers(selected: _Fields, model_type: str) -> dict[str, Any]:
    """The Bundle fields a site calibration replaces (branches, quantiles, threshold, normal
    scores, least defect area, whether the threshold is an F1-best one), from the bundle's own
    numbers (bundle.yaml, or a bridge schedule's entry) or a calibration.yaml."""
    names, quantiles = _branches(selected)
    if names != BRANCHES[model_type]:
        raise BundleError(f"{selected.path}: normalisation branches {list(names)} do not match a "
                          f"{model_type} model's {list(BRANCHES[model_type])}")
    area = selected.positive("min_defect_area", int) if "min_defect_area" in selected.data else None
    return {"branches": names, "quantiles": quantiles, "threshold": float(selected.get("threshold", (int, float))),
            "normal_scores": _normal_scores(selected), "min_defect_area": area,
            "threshold_is_f1": selected.data.get("threshold_from") == "f1"}


def _listed_file(root: Path, fields: _Fields, entry: str) -> Path:
    """The file bundle.yaml lists at `entry` (`graphs.encoder`, `check`), checked against its SHA-256 there."""
    file = root / fields.get(f"{entry}.file", str)
    expected_hash = fields.get(f"{entry}.sha256", str)
    if not file.is_file():
        raise BundleError(f"{fields.path}: field '{entry}.file' names {file.name}, which is missing")
    if file_sha256(file) != expected_hash:
        raise BundleError(f"{file}: SHA-256 does not match field '{entry}.sha256' (file changed or corrupt)")
    return file


def drift_band(calibration: Path) -> tuple[float, float, int]:
    """The drift band a site calibration holds (low, high, window: edge_ad.drift), each value
    checked as the bundle's own fields are."""
    data = read_yaml(calibration)
    if not isinstance(data.get("drift"), dict):
        raise BundleError(f"{calibration}: no 'drift' band (low, high, window); recalibrate with this edge-ad")
    fields = _Fields(calibration, data)
    window = fields.get("drift.window", (int, float))  # 300.0 was read as 300 before
    if window != int(window):
        raise BundleError(f"{calibration}: field 'drift.window' must be a whole number of frames, got {window!r}")
    return float(fields.get("drift.low", (int, float))), float(fields.get("drift.high", (int, float))), int(window)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; a malformed one is named with its line."""
    return _mapping(path, path.read_bytes())


def _read_hashed(path: Path) -> tuple[dict[str, Any], str]:
    """read_yaml, and the SHA-256 of the very bytes read (the file may be replaced meanwhile)."""
    raw = path.read_bytes()
    return _mapping(path, raw), hashlib.sha256(raw).hexdigest()


class _UniqueKeys(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping, of which PyYAML keeps
    the last without a word: a source's `input:` copied and not taken out, a second `threshold:`."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden, as YAML means
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):  # an unhashable one SafeLoader refuses itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        problem=f"{key!r} is given twice in one mapping (YAML would keep the last)",
                        problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _mapping(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        data = yaml.load(raw, Loader=_UniqueKeys)
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BundleError(f"{path}: malformed YAML{where}{f': {problem}' if problem else ''}") from exc
    except ValueError as exc:  # int() refuses a number of more than 4300 digits (a traceback before)
        raise BundleError(f"{path}: malformed YAML: a number of more than 4300 digits") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a mapping at the top level")
    return data


def _calibration(path: Path, steps: int | None, bundle_file: Path, sha256: str) -> tuple[_Fields | None, str | None]:
    """The site calibration at `path`, when there is one for these bridge steps and this bundle
    (its bundle.yaml at `bundle_file`, with `sha256` when it was read); else None and, when there is
    a file, why it is set aside (a calibration made at another K, or for another bundle, does not
    describe these maps)."""
    if not path.is_file():
        return None, None
    data, calibration_sha256 = _read_hashed(path)
    if data.get("steps") != steps:
        return None, f"{path}: made for {data.get('steps')} bridge steps, not {steps}"
    made_for = data.get("bundle_sha256")
    if made_for is not None and made_for != sha256:
        return None, f"{path}: made for another bundle (field 'bundle_sha256' does not match {bundle_file})"
    return _Fields(path, data, sha256=calibration_sha256), None


def _bridge_schedule(fields: _Fields, steps: int | None) -> tuple[int, np.ndarray, _Fields]:
    """(K, coefficients, fields of the schedule entry) for the asked K, or the bundle's default K."""
    schedules = fields.get("bridge.schedules", dict)
    steps = steps if steps is not None else fields.positive("bridge.default_steps", int)
    if steps not in schedules:
        supported = ", ".join(str(k) for k in sorted(schedules))
        raise BundleError(f"{fields.path}: no schedule for {steps} bridge steps; this bundle supports K = {supported}")
    if not isinstance(schedules[steps], dict):
        raise BundleError(f"{fields.path}: field 'bridge.schedules.{steps}' must be a mapping")
    entry = _Fields(fields.path, schedules[steps], f"bridge.schedules.{steps}.")
    rows = entry.get("coefficients", list)
    try:
        coefficients = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{fields.path}: field 'bridge.schedules.{steps}.coefficients' is not a table of numbers") from exc
    if coefficients.shape != (steps, 2) or not np.all(np.isfinite(coefficients)):
        raise BundleError(
            f"{fields.path}: field 'bridge.schedules.{steps}.coefficients' must be {steps} rows of (t, dt), "
            f"got shape {coefficients.shape}"
        )
    return steps, coefficients, entry


def _normal_scores(fields: _Fields) -> tuple[float, float] | None:
    """(p50, p90) of the normal image scores behind the threshold, where the block records them
    (bundles and calibrations written since one bundle per variant runs as a VariantDetector)."""
    if "normal_scores" not in fields.data:
        return None
    p50, p90 = fields.get("normal_scores.p50", (int, float)), fields.get("normal_scores.p90", (int, float))
    if p90 < p50:
        raise BundleError(f"{fields.path}: field '{fields.prefix}normal_scores.p90' must not be below p50")
    return float(p50), float(p90)


def _branches(fields: _Fields) -> tuple[tuple[str, ...], tuple[Quantiles, ...]]:
    """Branch names and quantiles from a normalisation block (see Quantiles)."""
    where = f"{fields.prefix}normalization"
    alpha = fields.positive("normalization.q_alpha")
    beta = fields.positive("normalization.q_beta")
    entries = fields.get("normalization.branches", list)
    if not entries:
        raise BundleError(f"{fields.path}: field '{where}.branches' is empty")
    names, quantiles = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BundleError(f"{fields.path}: field '{where}.branches[{i}]' must be a mapping")
        branch = _Fields(fields.path, entry, f"{where}.branches[{i}].")
        q = Quantiles(alpha, beta, branch.get("value_alpha", (int, float)), branch.get("value_beta", (int, float)))
        if not q.value_beta > q.value_alpha:
            raise BundleError(f"{fields.path}: field '{where}.branches[{i}].value_beta' must exceed value_alpha")
        names.append(branch.get("name", str))
        quantiles.append(q)
    return tuple(names), tuple(quantiles)
