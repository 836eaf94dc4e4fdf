"""Output files written whole or not at all, by name.

A write that fails part-way (a full disk, a quota) raises an OSError that names no file and
leaves part of one behind, which a later run may take for a good file. These functions write
into a temporary file beside the target and rename it into place once complete, so the old file
or the new one is there, never part of either, and their OSError names the target. A process
killed while writing leaves its hidden temporary file: remove_leftovers deletes those of pictures
where runs write them."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import EdgeAdError, os_reason

log = logging.getLogger("edge_ad.files")

LEFTOVER_S = 60.0  # a temporary picture older than this is no write in progress (one takes well under a second)
_LEFTOVER = re.compile(r"\..+\.(?:jpe?g|png)\.[a-z0-9_]{8}")  # mkstemp's name for write_atomic: .NAME.XXXXXXXX


def state_folder() -> Path:
    """Where edge-ad keeps what must outlast a restart, not a cache that may be emptied (the OPC UA
    server's certificate, cameras' refused ones): systemd's $STATE_DIRECTORY
    (StateDirectory=edge-ad: /var/lib/edge-ad), else $XDG_STATE_HOME/edge-ad, else
    ~/.local/state/edge-ad."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME") or home_folder("XDG_STATE_HOME") / ".local" / "state") / "edge-ad"


def home_folder(variable: str) -> Path:
    """This user's home folder, under which a folder that `variable` would set is by default. A
    user without one (a container's uid, with neither HOME nor an entry in /etc/passwd) is told
    to set `variable`, not Python's "Could not determine home directory"."""
    try:
        return Path.home()
    except RuntimeError as exc:
        raise EdgeAdError(f"this user (uid {os.geteuid()}) has no home folder (HOME is not set, nor is the user in "
                          f"/etc/passwd): set {variable} to the folder edge-ad should use") from exc


def made_folder(folder: Path, what: str, given: str | None = None) -> Path:
    """`folder` made where it is not there (its absolute path); one that is a file, cannot be
    made, or takes no new file (a folder of another user's, a read-only file system), refused
    with a message that names it as `what` folder, after `given` (the option that gave it, as
    `--output out/line.mkv`) if any. Checked by writing a nameless file: said at the first
    snapshot or sample instead, the fault came hours into a run, with the pictures it was to
    keep lost."""
    try:
        if folder.exists() and not folder.is_dir():
            raise EdgeAdError(f"{folder}: is a file, not a {what} folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeAdError(f"{folder}: cannot create the {what} folder ({os_reason(exc)})") from exc
        _takes_files(folder, folder, what)
    except EdgeAdError as exc:
        if given is None:
            raise
        raise EdgeAdError(f"{given}: {exc}") from exc
    return folder.absolute()


def writable_later(folder: Path, what: str) -> None:
    """Refuse now a `what` folder that could not be made or written when the work that fills it
    is done (another user's, a read-only file system, a file in its place); nothing is made, so
    that work which fails leaves no folder."""
    if folder.exists() and not folder.is_dir():
        raise EdgeAdError(f"{folder}: is a file, not a {what} folder")
    _takes_files(next(path for path in (folder, *folder.parents) if path.exists()), folder, what)


def _takes_files(there: Path, folder: Path, what: str) -> None:
    """Refuse `folder` (`there`, or where it would be made) where a nameless file cannot be
    written. A full disk is not refused: the writes say so as they fail, and quotas make room."""
    try:
        tempfile.TemporaryFile(dir=there).close()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return
        done = "write in" if there == folder else "create"
        raise EdgeAdError(f"{folder}: cannot {done} the {what} folder ({os_reason(exc)})") from exc


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
    if path.is_dir():  # else said as "cannot write a picture of that kind": a folder's name has no .png
        raise EdgeAdError(f"{path}: a folder; give the picture's file name (ending in .png or .jpg)")
    try:
        ok, data = cv2.imencode(path.suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        raise EdgeAdError(f"{path}: cannot write a picture of that kind (use a .png or .jpg name)")
    write_atomic(path, data.tobytes())


def save_figure(figure: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure as a picture of the kind its name says (PNG without a suffix). The kind
    is checked first, not read from savefig's ValueError, which a fault in drawing raises too."""
    kind = path.suffix[1:].lower() or "png"
    if kind not in figure.canvas.get_supported_filetypes():
        raise EdgeAdError(f"{path}: cannot write a picture of that kind (use a .png, .pdf or .svg name)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=kind, dpi=dpi)
    write_atomic(path, buffer.getvalue())


def histogram_range(low: float, high: float) -> tuple[float, float]:
    """The range a figure's histogram bins values from `low` to `high` over: one value where they
    differ by less than a billionth, past what a bin shows. numpy refuses to cut a range of a few
    float steps into bins ("Too many bins for data range"): scores equal but for rounding stopped
    the picture, and with it the command that drew it."""
    return (low, low) if high - low < 1e-9 * max(1.0, abs(high)) else (low, high)


def remove_leftovers(folder: Path, recursive: bool = False) -> None:
    """Delete the temporary pictures write_atomic left in `folder` (and its subfolders) when the
    process was killed while writing them (a power cut, the service's watchdog, the OOM killer):
    hidden, they were counted by no quota and seen by nobody, and each can be a 12-megapixel
    PNG. Those younger than LEFTOVER_S may be another run's writes, and are left."""
    removed, size, now = 0, 0, time.time()
    for path in folder.rglob(".*") if recursive else folder.glob(".*"):
        if not _LEFTOVER.fullmatch(path.name):
            continue
        try:
            stat = path.stat()
            if now - stat.st_mtime > LEFTOVER_S:
                path.unlink()
                removed, size = removed + 1, size + stat.st_size
        except OSError:  # gone meanwhile, or not ours to remove: left as it is
            continue
    if removed:
        log.info("%s: removed %d unfinished picture(s), %.1f MB, left by a run stopped while writing them", folder,
                 removed, size / 1e6)
