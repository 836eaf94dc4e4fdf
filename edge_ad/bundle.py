"""Model bundles: a folder (or a .tar of one) with bundle.yaml and the ONNX graphs.

Loading checks every field the runtime uses and the SHA-256 of every graph, and
fails with the file and the field named.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import BundleError
from .normalize import Quantiles

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.yaml"
GRAPH_NAMES = ("encoder", "head")
# Models whose bundles are an encoder graph and a head graph (features -> raw map grid).
MODEL_TYPES = ("prototype", "gmm-bridge")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write YAML so that a crash leaves the old file or the new one, never half of either."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Bundle:
    root: Path
    spec: dict[str, Any]
    input_height: int
    input_width: int
    graphs: dict[str, Path]
    smoothing_sigma: float
    quantiles: Quantiles
    threshold: float

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_height, self.input_width


class _Fields:
    """Typed access to bundle.yaml that names the field in every error."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    def get(self, dotted: str, kind: type | tuple[type, ...]) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise BundleError(f"{self.path}: missing field '{dotted}'")
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise BundleError(f"{self.path}: field '{dotted}' must be {names}, got {node!r}")
        return node

    def positive(self, dotted: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
        value = self.get(dotted, kind)
        if value <= 0:
            raise BundleError(f"{self.path}: field '{dotted}' must be positive, got {value!r}")
        return value


def _open_tar(path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="edge-ad-bundle-"))
    try:
        with tarfile.open(path) as archive:
            archive.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path}: not a readable bundle archive ({exc})") from exc
    found = sorted(target.rglob(BUNDLE_FILE))
    if not found:
        raise BundleError(f"{path}: archive has no {BUNDLE_FILE}")
    return found[0].parent


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a bundle folder or .tar archive."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        root = _open_tar(path)
    elif path.is_dir():
        root = path
    else:
        raise BundleError(f"{path}: not a bundle folder or .tar archive")
    yaml_path = root / BUNDLE_FILE
    if not yaml_path.is_file():
        raise BundleError(f"{path}: no {BUNDLE_FILE} inside")
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BundleError(f"{yaml_path}: malformed YAML{where}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{yaml_path}: expected a mapping at the top level")
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
    graphs = {}
    for name in GRAPH_NAMES:
        file = root / fields.get(f"graphs.{name}.file", str)
        expected_hash = fields.get(f"graphs.{name}.sha256", str)
        if not file.is_file():
            raise BundleError(f"{yaml_path}: field 'graphs.{name}.file' names {file.name}, which is missing")
        if file_sha256(file) != expected_hash:
            raise BundleError(f"{file}: SHA-256 does not match field 'graphs.{name}.sha256' (file changed or corrupt)")
        graphs[name] = file
    quantiles = Quantiles(
        alpha=fields.positive("normalization.q_alpha"),
        beta=fields.positive("normalization.q_beta"),
        value_alpha=fields.get("normalization.value_alpha", (int, float)),
        value_beta=fields.get("normalization.value_beta", (int, float)),
    )
    if not quantiles.value_beta > quantiles.value_alpha:
        raise BundleError(f"{yaml_path}: field 'normalization.value_beta' must exceed 'normalization.value_alpha'")
    return Bundle(
        root=root,
        spec=data,
        input_height=fields.positive("input.height", int),
        input_width=fields.positive("input.width", int),
        graphs=graphs,
        smoothing_sigma=float(fields.get("postprocess.smoothing_sigma", (int, float))),
        quantiles=quantiles,
        threshold=float(fields.get("threshold", (int, float))),
    )
