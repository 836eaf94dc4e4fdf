"""Lists of pictures known by their pixels (images.pixel_digest): the pictures a model was
trained on (`train` writes them beside its checkpoint, `export` copies them into the bundle) and
the frames and known defects a site calibration was made on (`calibrate` writes them beside
calibration.yaml). `eval` and `calibrate` find them among test images and calibration frames
whatever their names, folders or machines: a training folder copied to the Jetson, or into a
test set; the pictures sorted on site, calibrated on there and evaluated on the workstation."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from .errors import BundleError
from .files import write_atomic

TRAINING = "training_pictures.csv"  # in the training run and the bundle
CALIBRATION = "calibration_pictures.csv"  # beside calibration.yaml
COLUMNS = ("kind", "digest", "picture")
# kinds: a normal picture (train's --data, calibrate's frames), a known defect (their --defects)
NORMAL, DEFECT = "normal", "defect"


def write(path: Path, rows: Iterable[tuple[str, str, str]]) -> str:
    """(kind, pixel digest, picture name) of each picture into `path`; returns the file's SHA-256,
    which the file that uses it keeps (`pictures_sha256` of config.yaml, calibration.yaml): a file
    that is not that one is not read."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    data = text.getvalue().encode(errors="backslashreplace")  # a name that is not UTF-8 (the names are for a person)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read(path: Path, sha256: object, again: str) -> dict[str, str]:
    """{pixel digest: kind} of the pictures file `path` whose SHA-256 is `sha256`; {} where it is
    not there, or is another (a run trained, or a calibration made, before these files were
    written, beside an older one's file). One with that hash but not these columns is named in a
    BundleError, with `again` (what makes a new one: "train again")."""
    if not isinstance(sha256, str):
        return {}
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if hashlib.sha256(data).hexdigest() != sha256:
        return {}
    rows = csv.DictReader(io.StringIO(data.decode(errors="replace")))
    if not set(COLUMNS) <= set(rows.fieldnames or ()):  # written by hand, or by another tool, with its hash
        raise BundleError(f"{path}: not a list of pictures (columns {', '.join(COLUMNS)}); delete it or {again}")
    return {row["digest"]: row["kind"] for row in rows}
