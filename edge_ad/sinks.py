"""Where `edge-ad run` puts its results besides video: event lines, snapshots, an anomaly hook.

Every sink is wrapped in a `Guarded` sink by the runner: a sink that fails (disk full, a
missing command) is reported and counted, and inference goes on; it is tried again on the next
frame, so it recovers by itself when the disk has room again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import cv2
import numpy as np

from .errors import EdgeAdError, os_reason
from .files import made_folder, remove_leftovers, write_atomic

log = logging.getLogger("edge_ad.sinks")

REPORT_EVERY_S = 30.0  # what fails at every frame is reported at once, then at most this often


class ReportDue:
    """Whether a message that would come at every frame is due: at once, then every REPORT_EVERY_S."""

    def __init__(self):
        self._reported = -REPORT_EVERY_S

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._reported < REPORT_EVERY_S:
            return False
        self._reported = now
        return True


class Guarded:
    """Calls a sink and reports its failures instead of raising them."""

    def __init__(self, name: str, call: Callable[..., object]):
        self.name, self.call = name, call
        self.errors = 0
        self._report_due = ReportDue()

    def __call__(self, *args) -> object:
        """The sink's own return value, or None when it failed."""
        try:
            return self.call(*args)
        except (OSError, EdgeAdError) as exc:
            self.errors += 1
            if self._report_due():
                log.error("%s failed (%d so far), inference goes on: %s", self.name, self.errors, exc)


class InOrder:
    """Calls made by a thread of their own, one after another in the order they were given: what
    the scoring loop hands on after the PLC and the video (events, snapshots, the hook, MQTT), so
    that writing a 12-megapixel snapshot (300 ms) does not hold the next frames back. At most
    `waiting` calls wait; the next one waits for room, as the loop waited for the sinks before. A
    call that raises (sinks are Guarded, so a bug) is raised again at the next `call` or `wait`;
    the calls after it are still made, so that nothing waits on a thread that stopped."""

    def __init__(self, name: str, waiting: int):
        self._calls: queue.Queue[tuple[Callable[..., object], tuple] | None] = queue.Queue(maxsize=waiting)
        self._failed: Exception | None = None
        self._thread = threading.Thread(target=self._make_calls, daemon=True, name=name)
        self._thread.start()

    def call(self, function: Callable[..., object], *args) -> None:
        self._raise_failure()
        self._calls.put((function, args))

    def wait(self) -> None:
        """Until every call given so far has been made."""
        self._calls.join()
        self._raise_failure()

    def close(self) -> None:
        """The calls given so far made, then the thread ended."""
        self._calls.put(None)
        self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    def _make_calls(self) -> None:
        while (item := self._calls.get()) is not None:
            function, args = item
            try:
                function(*args)
            except Exception as exc:  # raised in the caller's thread, which stops the run
                self._failed = self._failed or exc
            finally:
                self._calls.task_done()
        self._calls.task_done()


class EventLog:
    """JSON lines, one per frame, each appended unbuffered (a line that fails on a full disk is lost
    whole, never left half-written or retried twice); the file is rotated when it passes
    `max_bytes` (events.jsonl -> events.jsonl.1 -> ... -> events.jsonl.<backups>). A file deleted
    or moved away during the run (to free the disk, by hand or by logrotate) is written anew:
    the lines went into the deleted file, out of sight, and took the disk it was to free, never
    rotated again."""

    def __init__(self, path: Path, max_bytes: int = 100 << 20, backups: int = 5):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "ab", buffering=0)
            self.regular = path.is_file()  # not a pipe (--events /dev/stdout), which cannot seek
            if self.regular:
                self._end_last_line()
        except OSError as exc:
            raise EdgeAdError(f"{path}: cannot write events ({os_reason(exc)})") from exc

    def _end_last_line(self) -> None:
        """A file whose last line has no end (the machine lost power while it was written, or left
        NUL bytes where it was) gets one, so that the first line of this run is not glued to it."""
        with open(self.path, "rb") as old:
            size = old.seek(0, os.SEEK_END)
            ended = not size or os.pread(old.fileno(), 1, size - 1) == b"\n"
        if not ended:
            self.file.write(b"\n")

    def write(self, event: dict) -> None:
        """Append one line. A disk that fills within the line takes part of it and says nothing (a
        short write); the rest, written again, gets the error, and the part is taken back: left, it
        would be glued to the next line written once there is room, and both would be lost."""
        line = (json.dumps(event) + "\n").encode()
        if self.regular and not self._still_there():
            self._write_anew()
        start = self.file.seek(0, os.SEEK_END) if self.regular else None  # not tell(): truncate() leaves it past
        written = 0
        try:
            while written < len(line):
                written += self.file.write(line[written:])
        except OSError:
            if written and start is not None:
                self.file.truncate(start)
            raise
        if self.max_bytes and self.regular and self.file.tell() >= self.max_bytes:
            self._rotate()

    def _still_there(self) -> bool:
        """Whether the path still names the file being written."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        open_file = os.fstat(self.file.fileno())
        return (named.st_dev, named.st_ino) == (open_file.st_dev, open_file.st_ino)

    def _write_anew(self) -> None:
        """The new file, opened before the old is closed: where it cannot be (a folder that cannot
        be made), the write fails as on a full disk, and the next tries again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = open(self.path, "ab", buffering=0)
        self.file.close()
        self.file = new
        log.warning("%s: deleted or moved away during the run; the events go into a new file of that name", self.path)

    def _rotate(self) -> None:
        self.file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.file = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        self.file.close()


SLUG_CHARS = 40
SLUG_HASH_DIGITS = 8


def slug(text: str) -> str:
    """A file-name-safe form of a source name, for file and folder names and MQTT topics: its
    letters and digits, of any script (左相机 stays as it is), other runs of characters as "-". A
    longer one than SLUG_CHARS keeps its end and adds hex digits of the name's SHA-256: cameras
    of one make differ only in their address, at the start of their URIs
    (rtsp://10.0.0.21:554/cam/realmonitor?channel=1&subtype=0)."""
    cleaned = re.sub(r"[\W_]+", "-", text).strip("-")
    if len(cleaned) <= SLUG_CHARS:
        return cleaned or "source"
    end = cleaned[-(SLUG_CHARS - SLUG_HASH_DIGITS - 1):].strip("-")
    return f"{end}-{hashlib.sha256(text.encode()).hexdigest()[:SLUG_HASH_DIGITS]}"


def shared_slugs(names: Iterable[str]) -> list[str] | None:
    """The first names that `slug` spells alike ('line 1', 'line-1'), which would share files,
    folders and topics; None when all differ."""
    spelt: dict[str, list[str]] = {}
    for name in names:
        spelt.setdefault(slug(name), []).append(name)
    return next((alike for alike in spelt.values() if len(alike) > 1), None)


def picture_paths(folder: Path, source: str, captured: float, index: int, endings: Sequence[str]) -> list[Path]:
    """The files of one saved picture (a name per ending) in `folder`, named after the source, the
    capture time (Unix time, written local to the second) and the frame number, which starts
    again at 0 in every run. Without the time a service that restarts, or a second recording into
    the same folder, would overwrite the pictures of the one before, and the events of that run
    would name another part's picture. A clock that starts again from the same time after a power
    cut (no time server, no clock battery) can still repeat a name: -2, -3, ... is added then."""
    stem = f"{slug(source)}_{time.strftime('%Y%m%d-%H%M%S', time.localtime(captured))}_{index:08d}"
    paths, n = [folder / f"{stem}{ending}" for ending in endings], 1
    while any(path.exists() for path in paths):
        n += 1
        paths = [folder / f"{stem}-{n}{ending}" for ending in endings]
    return paths


# A snapshot's two pictures: the camera's frame, and the overlay (the heat map drawn over it,
# the score and threshold), which is never a picture of a part to train on.
FRAME_SUFFIX, OVERLAY_SUFFIX = "_frame.jpg", "_overlay.jpg"


class Snapshot(NamedTuple):
    """The files of one saved snapshot (absolute paths, for events, hooks and MQTT)."""

    frame: Path
    overlay: Path


class _Quota:
    """The files a sink keeps in its folder, those found there at the start first: past
    `quota_bytes` the oldest are deleted, never the `keep` written last."""

    def __init__(self, existing: Iterable[Path], quota_bytes: int, keep: int):
        self.files = deque((p, p.stat().st_size) for p in sorted(existing, key=lambda p: p.stat().st_mtime))
        self.used = sum(size for _, size in self.files)
        self.quota_bytes, self.keep = quota_bytes, keep

    def write(self, path: Path, image: np.ndarray, ext: str) -> None:
        """`image` encoded (`ext`: .jpg, .png) into `path`, then the oldest deleted past the quota."""
        ok, data = cv2.imencode(ext, image)
        if not ok:
            raise EdgeAdError(f"{path}: cannot encode the picture ({image.shape})")
        write_atomic(path, data.tobytes())  # a power cut or a full disk leaves no half picture
        self.files.append((path, len(data)))
        self.used += len(data)
        while self.used > self.quota_bytes and len(self.files) > self.keep:
            old, size = self.files.popleft()
            old.unlink(missing_ok=True)
            self.used -= size


class _PerSource:
    """At most one picture per `interval_s` per source."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def due(self, source: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(source, -float("inf")) < self.interval_s:
            return False
        self._last[source] = now
        return True


class Snapshots:
    """The frame and its overlay as JPEG for alarm frames (anomalous ones, by default): at most one
    per `interval_s` per source, and the oldest snapshots are deleted when the folder passes
    `quota_bytes`."""

    def __init__(self, folder: Path, interval_s: float = 1.0, quota_bytes: int = 500 << 20):
        self.folder = made_folder(folder, "snapshot")
        remove_leftovers(self.folder)
        self.rate = _PerSource(interval_s)
        self.quota = _Quota(self.folder.glob("*.jpg"), quota_bytes, keep=2)
        self.saved = 0

    def save(self, source: str, index: int, captured: float, frame: np.ndarray, overlay: Callable[[], np.ndarray]
             ) -> Snapshot | None:
        """Save the frame (captured at Unix time `captured`) and its overlay (drawn only now, when
        one is due); their files, or None when the source had one less than `interval_s` ago."""
        if not self.rate.due(source):
            return None
        saved = Snapshot(*picture_paths(self.folder, source, captured, index, (FRAME_SUFFIX, OVERLAY_SUFFIX)))
        for path, image in zip(saved, (frame, overlay())):
            self.quota.write(path, image, ".jpg")
        self.saved += 1
        return saved


class Samples:
    """Good pictures from a running line: a frame judged normal, as lossless PNG, at most one per
    `interval_s` per source, into a folder per source (`edge-ad record --sources` names them the
    same way) and, with one bundle per variant, per variant in it, to train a new bundle on and to
    calibrate or evaluate it before it goes on the line. Past `quota_bytes` the oldest go, so the
    folder holds the latest pictures of the line. Files are named as snapshots are
    (`picture_paths`), so the runs of a service that restarts do not overwrite each other's. A
    thread writes them: a 1080p PNG takes 60 ms, two frames of a 30 fps camera that the scoring
    loop would drop. `close` writes the last one."""

    def __init__(self, folder: Path, interval_s: float = 60.0, quota_bytes: int = 2000 << 20):
        self.folder = made_folder(folder, "samples")
        remove_leftovers(self.folder, recursive=True)  # a folder per source (and variant)
        self.rate = _PerSource(interval_s)
        self.quota = _Quota(self.folder.rglob("*.png"), quota_bytes, keep=1)
        self.saved = 0
        self._pending: queue.Queue[tuple[Path, np.ndarray] | None] = queue.Queue(maxsize=1)
        self._failed: Exception | None = None  # the writer's, raised at the next save (Guarded reports it)
        self._writer = threading.Thread(target=self._write, daemon=True, name="samples")
        self._writer.start()

    def save(self, source: str, index: int, captured: float, frame: np.ndarray, variant: str | None = None
             ) -> Path | None:
        """The frame (captured at Unix time `captured`, judged normal by `variant`'s bundle) handed
        to the writer; its path, or None when the source had one less than `interval_s` ago or the
        writer is still busy with the last one."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        if self._pending.full() or not self.rate.due(source):
            return None
        folder = self.folder / slug(source) if variant is None else self.folder / slug(source) / slug(variant)
        (path,) = picture_paths(folder, source, captured, index, (".png",))
        self._pending.put((path, frame))
        return path

    def _write(self) -> None:
        while (item := self._pending.get()) is not None:
            path, frame = item
            try:
                if not path.parent.is_dir():  # a source's (or variant's) first, or one deleted during the run
                    made_folder(path.parent, "samples")
                self.quota.write(path, frame, ".png")
                self.saved += 1
            except Exception as exc:  # a full disk: said at the next sample, retried then; a fault of edge-ad's
                self._failed = exc  # own raised there too (it stops the run), not left to end this thread unsaid

    def close(self) -> None:
        self._pending.put(None)
        self._writer.join()


SKIPS_COUNTED_EVERY_S = 60.0  # the count of alarms an --on-anomaly call still running made skip, said at most so often


class AnomalyHook:
    """Runs a command for an alarm frame (an anomalous one, by default), without waiting for it;
    the frame's facts are in its environment (EDGE_AD_SOURCE, EDGE_AD_FRAME, EDGE_AD_SCORE,
    EDGE_AD_THRESHOLD, EDGE_AD_TIMESTAMP; EDGE_AD_NAME, a picture's file name, for pictures read
    from a folder (a followed one's: a hook can move the part's picture to rejects); EDGE_AD_VARIANT
    with one bundle per variant;
    EDGE_AD_SNAPSHOT and EDGE_AD_OVERLAY, the JPEG files, when --snapshots saved the frame).
    While the previous call still runs, further alarms are skipped: the first is said at once, and
    how many were once it has ended (a part whose picture a hook moves to rejects must not pass
    without a word), that count at most once a minute and at the end, so that a camera in alarm
    at every frame writes two lines a minute, not two a call."""

    def __init__(self, command: str):
        """`command` checked before the run starts: a program not found (a typo, or a PATH the
        service does not have) was said at the first alarm, days later on a good line."""
        self.argv = shlex.split(command)
        if not self.argv:
            raise EdgeAdError("--on-anomaly: empty command")
        program = self.argv[0]
        if shutil.which(program) is None:
            where = "is no executable file" if os.sep in program else \
                f"is on no folder of PATH ({os.environ.get('PATH', os.defpath)})"
            raise EdgeAdError(f"--on-anomaly: {program} {where}; give the program's full path, executable (chmod +x)")
        self.process: subprocess.Popen | None = None
        self.skipped = 0  # alarms skipped since the count was last said
        self.counted_at = -float("inf")  # when it was (monotonic time)

    def __call__(self, event: dict) -> None:
        if self.process is not None and self.process.poll() is None:
            self.skipped += 1
            if self.skipped == 1:
                log.warning("--on-anomaly: the command still runs; alarm frames are not given to it until it has "
                            "ended, from %s frame %s%s on", event["source"], event["frame"],
                            f" ({event['name']})" if event.get("name") else "")
            return
        self._say_skipped()
        env = dict(
            os.environ,
            EDGE_AD_SOURCE=str(event["source"]),
            EDGE_AD_FRAME=str(event["frame"]),
            EDGE_AD_SCORE=str(event["score"]),
            EDGE_AD_THRESHOLD=str(event["threshold"]),
            EDGE_AD_TIMESTAMP=str(event["timestamp"]),
            **({"EDGE_AD_NAME": event["name"]} if event.get("name") else {}),
            **({"EDGE_AD_VARIANT": str(event["variant"])} if "variant" in event else {}),
            **({"EDGE_AD_SNAPSHOT": event["snapshot"], "EDGE_AD_OVERLAY": event["overlay"]}
               if "snapshot" in event else {}),
        )
        try:
            self.process = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise EdgeAdError(f"--on-anomaly '{self.argv[0]}': {os_reason(exc)}") from exc

    def _say_skipped(self, at_end: bool = False) -> None:
        """How many alarms were skipped while the command ran, if a minute has gone by since the
        count was last said (or at the end)."""
        if self.skipped and (at_end or time.monotonic() >= self.counted_at + SKIPS_COUNTED_EVERY_S):
            log.warning("--on-anomaly: %d alarm frame(s) were not given to the command while it ran", self.skipped)
            self.skipped, self.counted_at = 0, time.monotonic()

    def close(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                log.warning("--on-anomaly command still running at exit; left to finish on its own")
        self._say_skipped(at_end=True)
