"""Output files written whole or not at all, by name.

A write that fails part-way (a full disk, a quota) raises an OSError that names no file and
leaves part of one behind, which a later run may take for a good file. These functions write
into a temporary file beside the target and rename it into place once complete, so the old file
or the new one is there, never part of either, and their OSError names the target."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import EdgeAdError


def write_atomic(path: Path, data: bytes) -> None:
    """`data` into `path` (its folder made if missing), replacing what was there only when done."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are read by other users and services
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_picture(path: Path, image: np.ndarray) -> None:
    """A BGR or grey picture (OpenCV's order) as a file of the kind its name says."""
    try:
        ok, data = cv2.imencode(path.suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        raise EdgeAdError(f"{path}: cannot write a picture of that kind (use a .png or .jpg name)")
    write_atomic(path, data.tobytes())


def save_figure(figure: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure as a picture of the kind its name says (PNG without a suffix)."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format=path.suffix[1:].lower() or "png", dpi=dpi)
    except ValueError as exc:  # matplotlib's "Format 'xyz' is not supported"
        raise EdgeAdError(f"{path}: cannot write a picture of that kind (use a .png, .pdf or .svg name)") from exc
    write_atomic(path, buffer.getvalue())
