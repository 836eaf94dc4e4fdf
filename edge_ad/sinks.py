"""Where `edge-ad run` puts its results besides video: event lines, snapshots, an anomaly hook.

Every sink is wrapped in a `Guarded` sink by the runner: a sink that fails (disk full, a
missing command) is reported and counted, and inference goes on; it is tried again on the next
frame, so it recovers by itself when the disk has room again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np

from .errors import EdgeAdError

log = logging.getLogger("edge_ad.sinks")

REPORT_EVERY_S = 30.0  # a failing sink is reported at once, then at most this often


class Guarded:
    """Calls a sink and reports its failures instead of raising them."""

    def __init__(self, name: str, call: Callable[..., object]):
        self.name, self.call = name, call
        self.errors = 0
        self._reported = -REPORT_EVERY_S

    def __call__(self, *args) -> object:
        """The sink's own return value, or None when it failed."""
        try:
            return self.call(*args)
        except (OSError, EdgeAdError) as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._reported >= REPORT_EVERY_S:
                self._reported = now
                log.error("%s failed (%d so far), inference goes on: %s", self.name, self.errors, exc)


class EventLog:
    """JSON lines, one per frame, each appended by one unbuffered write (a line that fails on a
    full disk is lost whole, never left half-written or retried twice); the file is rotated when
    it passes `max_bytes` (events.jsonl -> events.jsonl.1 -> ... -> events.jsonl.<backups>)."""

    def __init__(self, path: Path, max_bytes: int = 100 << 20, backups: int = 5):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "ab", buffering=0)
        except OSError as exc:
            raise EdgeAdError(f"{path}: cannot write events ({exc.strerror or exc})") from exc

    def write(self, event: dict) -> None:
        self.file.write((json.dumps(event) + "\n").encode())
        if self.max_bytes and self.path.is_file() and self.file.tell() >= self.max_bytes:
            self._rotate()

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


def slug(text: str) -> str:
    """A file-name-safe form of a source name (its last 40 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[-40:] or "source"


class Snapshot(NamedTuple):
    """The files of one saved snapshot (absolute paths, for events, hooks and MQTT)."""

    frame: Path
    overlay: Path


class Snapshots:
    """The frame and its overlay as JPEG for alarm frames (anomalous ones, by default): at most one
    per `interval_s` per source, and the oldest snapshots are deleted when the folder passes
    `quota_bytes`."""

    def __init__(self, folder: Path, interval_s: float = 1.0, quota_bytes: int = 500 << 20):
        self.folder, self.interval_s, self.quota_bytes = folder.absolute(), interval_s, quota_bytes
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeAdError(f"{folder}: cannot create the snapshot folder ({exc.strerror or exc})") from exc
        existing = sorted(folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        self.files = deque((p, p.stat().st_size) for p in existing)
        self.used = sum(size for _, size in self.files)
        self.saved = 0
        self._last: dict[str, float] = {}

    def save(self, source: str, index: int, frame: np.ndarray, overlay: Callable[[], np.ndarray]) -> Snapshot | None:
        """Save the frame and its overlay (drawn only now, when one is due); their files, or None
        when the source had one less than `interval_s` ago."""
        now = time.monotonic()
        if now - self._last.get(source, -float("inf")) < self.interval_s:
            return None
        self._last[source] = now
        stem = f"{slug(source)}_{index:08d}"
        saved = Snapshot(self.folder / f"{stem}_frame.jpg", self.folder / f"{stem}_overlay.jpg")
        for path, image in zip(saved, (frame, overlay())):
            ok, data = cv2.imencode(".jpg", image)
            if not ok:
                raise EdgeAdError(f"{self.folder}: cannot encode snapshot {path.name}")
            path.write_bytes(data.tobytes())
            self.files.append((path, len(data)))
            self.used += len(data)
        self.saved += 1
        while self.used > self.quota_bytes and len(self.files) > 2:
            path, size = self.files.popleft()
            path.unlink(missing_ok=True)
            self.used -= size
        return saved


class AnomalyHook:
    """Runs a command for an alarm frame (an anomalous one, by default), without waiting for it;
    the frame's facts are in its environment (EDGE_AD_SOURCE, EDGE_AD_FRAME, EDGE_AD_SCORE,
    EDGE_AD_THRESHOLD, EDGE_AD_TIMESTAMP; EDGE_AD_VARIANT with one bundle per variant;
    EDGE_AD_SNAPSHOT and EDGE_AD_OVERLAY, the JPEG files, when --snapshots saved the frame).
    While the previous call still runs, further alarms are skipped."""

    def __init__(self, command: str):
        self.argv = shlex.split(command)
        if not self.argv:
            raise EdgeAdError("--on-anomaly: empty command")
        self.process: subprocess.Popen | None = None
        self.calls = self.skipped = 0

    def __call__(self, event: dict) -> None:
        if self.process is not None and self.process.poll() is None:
            self.skipped += 1
            return
        env = dict(
            os.environ,
            EDGE_AD_SOURCE=str(event["source"]),
            EDGE_AD_FRAME=str(event["frame"]),
            EDGE_AD_SCORE=str(event["score"]),
            EDGE_AD_THRESHOLD=str(event["threshold"]),
            EDGE_AD_TIMESTAMP=str(event["timestamp"]),
            **({"EDGE_AD_VARIANT": str(event["variant"])} if "variant" in event else {}),
            **({"EDGE_AD_SNAPSHOT": event["snapshot"], "EDGE_AD_OVERLAY": event["overlay"]}
               if "snapshot" in event else {}),
        )
        try:
            self.process = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise EdgeAdError(f"--on-anomaly '{self.argv[0]}': {exc.strerror or exc}") from exc
        self.calls += 1

    def close(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                log.warning("--on-anomaly command still running at exit; left to finish on its own")
