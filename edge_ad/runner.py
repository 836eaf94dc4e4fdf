"""The streaming loop behind `edge-ad run`: source -> detector -> events and snapshots."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
from tqdm import tqdm

from .detector import Detector
from .errors import EdgeAdError
from .render import overlay
from .sources import open_source


@dataclass
class RunSummary:
    frames: int
    seconds: float
    anomalies: int
    snapshots: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _open_events(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w")
    except OSError as exc:
        raise EdgeAdError(f"{path}: cannot write events ({exc.strerror or exc})") from exc


def run_stream(
    detector: Detector,
    uri: str,
    events: Path | None = None,
    snapshots: Path | None = None,
    max_frames: int | None = None,
) -> RunSummary:
    """Score frames from `uri` until it ends or `max_frames` frames; write one JSON line per frame
    to `events` and the overlay of each anomalous frame to `snapshots`."""
    if snapshots is not None:
        try:
            snapshots.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeAdError(f"{snapshots}: cannot create the snapshot folder ({exc.strerror or exc})") from exc
    frames = anomalies = saved = 0
    with ExitStack() as stack:  # closes whatever was opened, in reverse order, however the run ends
        event_file = stack.enter_context(_open_events(events)) if events is not None else None
        source = open_source(uri)
        stack.callback(source.close)
        bar = stack.enter_context(tqdm(total=max_frames, desc="frames", unit="frame", leave=False))
        start = time.perf_counter()
        for frame in source:
            t0 = time.perf_counter()
            result = detector(frame.image)
            latency_ms = (time.perf_counter() - t0) * 1e3
            frames += 1
            anomalies += result.is_anomaly
            bar.update()
            if event_file is not None:
                event = {
                    "source": uri,
                    "frame": frame.index,
                    "name": frame.name,
                    "timestamp": round(frame.timestamp, 6),
                    "score": round(result.score, 6),
                    "anomaly": result.is_anomaly,
                    "threshold": result.threshold,
                    "latency_ms": round(latency_ms, 3),
                }
                event_file.write(json.dumps(event) + "\n")
            if snapshots is not None and result.is_anomaly:
                cv2.imwrite(str(snapshots / f"frame{frame.index:06d}.jpg"), overlay(frame.image, result))
                saved += 1
            if max_frames is not None and frames >= max_frames:
                break
    return RunSummary(frames, time.perf_counter() - start, anomalies, saved)
