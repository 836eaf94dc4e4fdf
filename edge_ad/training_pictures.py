"""The pictures a model was trained on, known by their pixels (images.pixel_digest): `train`
writes them beside its checkpoint, `export` copies them into the bundle, and `eval` and
`calibrate` find them among test images and calibration frames whatever their names, folders or
machines (a training folder copied to the Jetson, or into a test set)."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from .errors import BundleError
from .files import write_atomic

FILE = "training_pictures.csv"
COLUMNS = ("kind", "digest", "picture")
NORMAL, DEFECT = "normal", "defect"  # kinds: a picture of --data, a known defect of --defects


def write(path: Path, rows: Iterable[tuple[str, str, str]]) -> str:
    """(kind, pixel digest, picture path) of each training picture into `path`; returns the file's
    SHA-256, which config.yaml keeps (`pictures_sha256`): a file that is not that one is not read."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    data = text.getvalue().encode(errors="backslashreplace")  # a name that is not UTF-8 (the paths are for a person)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read(folder: Path, sha256: object) -> dict[str, str]:
    """{pixel digest: kind} of the pictures file in `folder` whose SHA-256 is `sha256`; {} where it
    is not there, or is another (a run trained before this file was written, whose export into a
    bundle folder left an older run's file there). One with that hash but not these columns is
    named in a BundleError."""
    if not isinstance(sha256, str):
        return {}
    try:
        data = (folder / FILE).read_bytes()
    except OSError:
        return {}
    if hashlib.sha256(data).hexdigest() != sha256:
        return {}
    rows = csv.DictReader(io.StringIO(data.decode(errors="replace")))
    if not set(COLUMNS) <= set(rows.fieldnames or ()):  # written by hand, or by another tool, with its hash
        raise BundleError(f"{folder / FILE}: not a list of training pictures (columns {', '.join(COLUMNS)}); delete it "
                          "or train again")
    return {row["digest"]: row["kind"] for row in rows}
