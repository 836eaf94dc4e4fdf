"""`edge-ad report`: what a run saw, from its events file, for the person who looks after the line.

`edge-ad run --events FILE` writes a JSON line per frame (and per drift event, per live camera's
picture that froze or moves again, and per source of a self-check that failed and stopped the
run), appending across runs and rotating to FILE.1 ... FILE.5. This reads them back in time order
and draws, per source, the scores over time against the threshold, with anomalies, alarms, drift
events, frozen pictures and failed self-checks marked, and
the histogram of the scores; the counts come as text too. A line that is not an event (one cut
short by a power loss, a file edited by hand) is skipped and counted, never fatal. The overlays
that `--snapshots` kept of the alarms come as a second picture, the highest scores first: what
the line was stopped for, to tell true defects from false alarms at a glance.
"""

from __future__ import annotations

import json
import math
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from .errors import EdgeAdError, ImageError
from .files import histogram_range, save_figure
from .images import read_image
from .render import lay_out_above_notes, notes_text, title_of

ROTATED_FILES = 5  # EventLog's backups: FILE.1 (newest) ... FILE.5 (oldest)
SHOWN_SKIPS = 5  # skipped lines named in the summary; the rest are counted
LAST_TIME = 4102444800  # 2100-01-01 in Unix seconds: a later timestamp is a damaged line
LARGEST_SCORE = 1e9  # a score or threshold larger than this is a damaged line (drawn, it overflows the axes)
MEDIAN_BINS, MIN_PER_BIN = 200, 10  # the median line over time: only where frames are dense enough
SHEET_COLUMNS, TILE_PX = 4, 480  # the alarms' picture: tiles per row, and each tile's width in pixels
MOST_PICTURES = 100  # 25 rows: 700 made a picture 63,000 pixels tall (1.3 GB and 34 s to draw) that nobody reads
TALLEST_TILE = 2.0  # height over width: a line-scan camera's strip is shown smaller, not row by row


class AlarmPicture(NamedTuple):
    """An alarm frame whose overlay `--snapshots` saved (the path as the run wrote it)."""

    source: str
    frame: str  # the picture's file name for pictures read from a folder, else "frame N"
    timestamp: float
    score: float
    threshold: float
    overlay: str


def _none() -> np.ndarray:
    return np.zeros(0)


@dataclass
class SourceEvents:
    """One source's frames (in time order), drift events and failed self-checks."""

    name: str
    times: np.ndarray = field(default_factory=_none)
    scores: np.ndarray = field(default_factory=_none)
    thresholds: np.ndarray = field(default_factory=_none)
    anomalies: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    alarms: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    latencies_ms: np.ndarray = field(default_factory=_none)  # of the frames whose events give it, any order
    drift: list[tuple[float, str]] = field(default_factory=list)  # (timestamp, "outside" | "flagged" | "back")
    frozen: list[tuple[float, str]] = field(default_factory=list)  # (timestamp, "frozen" | "back") of the picture
    away: list[tuple[float, str]] = field(default_factory=list)  # (timestamp, "away" | "back") of the source
    self_checks: list[tuple[float, str, str]] = field(default_factory=list)  # failed: (timestamp, bundle, problem)
    judges: list[tuple[str, str | None] | None] = field(default_factory=list)  # per frame: (bundle, calibration)
    pictures: list[AlarmPicture] = field(default_factory=list)  # alarm frames with a saved overlay

    @property
    def frames(self) -> int:
        return len(self.times)

    def counts(self) -> str:
        """Frames, anomalies (and their rate) and alarms, as the picture's titles show them."""
        anomalies = int(self.anomalies.sum())
        return (f"{self.name}: frames {self.frames}  anomalies {anomalies} ({anomalies / self.frames:.2%})  "
                f"alarms {int(self.alarms.sum())}")

    def away_spans(self) -> list[tuple[float, float]]:
        """(from, to) of each time the source was away; one the events end in, (from, from)."""
        spans, start = [], None
        for timestamp, state in self.away:
            if state == "away" and start is None:
                start = timestamp
            elif state == "back" and start is not None:
                spans.append((start, timestamp))
                start = None
        return spans + ([(start, start)] if start is not None else [])

    def summary(self) -> str:
        """One line of counts: frames, anomalies, alarms, time span, longest silence, latency, drift
        and (where any) frozen pictures, times away and failed self-checks."""
        froze = sum(state == "frozen" for _, state in self.frozen)
        went = sum(state == "away" for _, state in self.away)
        rare = (f"  frozen pictures {froze}" if froze else "") + (f"  times away {went}" if went else "") + \
            (f"  failed self-checks {len(self.self_checks)}" if self.self_checks else "")
        if not self.frames:
            return f"{self.name}: no frames; {len(self.drift)} drift events{rare}"
        start, end = self.times.min(), self.times.max()
        gaps = np.diff(np.sort(self.times))
        latency = f"  latency p50 {np.percentile(self.latencies_ms, 50):.1f} ms p99 " \
                  f"{np.percentile(self.latencies_ms, 99):.1f} ms" if self.latencies_ms.size else ""
        return (f"{self.counts()}  from {_clock(start)} to {_clock(end)}  "
                f"longest gap {gaps.max() if gaps.size else 0.0:.1f} s{latency}  "
                f"drift events {len(self.drift)} ({sum(state != 'back' for _, state in self.drift)} outside)"
                f"{rare}")

    def stretches(self) -> list[tuple[tuple[str, str | None], int, int]]:
        """((bundle, calibration), first frame, frame after the last) of each stretch of frames one
        bundle and calibration judged (the events' short SHA-256 of bundle.yaml and calibration.yaml),
        in time order. Frames of runs from before events named them are left out."""
        found = []
        start = 0
        for end in range(1, self.frames + 1):
            if end < self.frames and self.judges[end] == self.judges[start]:
                continue
            if self.judges[start] is not None:
                found.append((self.judges[start], start, end))
            start = end
        return found

    def failed_checks(self) -> list[str]:
        """One line per self-check that failed during a run (and stopped it)."""
        return [f"  self-check failed {_clock(moment)}, bundle {bundle}: {problem}"
                for moment, bundle, problem in self.self_checks]

    def judged_by(self) -> list[str]:
        """One line per stretch (`stretches`): which model passed which parts."""
        return [f"  bundle {bundle}, calibration {calibration or 'of the bundle'}: {_clock(self.times[start])} to "
                f"{_clock(self.times[end - 1])}, {end - start} frames"
                for (bundle, calibration), start, end in self.stretches()]


@dataclass
class EventsRead:
    sources: dict[str, SourceEvents]
    lines: int
    skipped: list[str]  # "FILE:LINE: why", the first SHOWN_SKIPS
    skipped_count: int
    frame_span: tuple[float, float] | None = None  # first and last time of the frame events, in the time range or not

    def why_no_frames(self) -> str:
        """Why there is no frame event to draw."""
        if not self.lines:
            return "the events file is empty (the run judged no frame yet?)"
        if self.frame_span is None:
            lines = "its one line is not" if self.lines == 1 else f"none of its {self.lines} lines is"
            return f"{lines} a frame event" + (" (lines skipped: above)" if self.skipped_count else "")
        first, last = self.frame_span
        return f"none in this time range; its frame events run from {_clock(first)} to {_clock(last)}"


def event_files(path: Path) -> list[Path]:
    """The events file and those it was rotated to, oldest first."""
    if path.is_dir():  # `--events ''` too: the current folder
        raise EdgeAdError(f"--events {path}: a folder; give the events file of a run (its --events FILE)")
    rotated = [path.with_name(f"{path.name}.{n}") for n in range(ROTATED_FILES, 0, -1)]
    files = [f for f in [*rotated, path] if f.is_file()]
    if not files:
        raise EdgeAdError(f"--events {path}: no such file (nor {path.name}.1 ... .{ROTATED_FILES})")
    return files


def _problem(event: object) -> str | None:
    """Why a parsed line is not a frame, drift, frozen, away or self-check event of `edge-ad run`, or None."""
    if not isinstance(event, dict):
        return "not a JSON object"
    kind = event.get("event", "frame")
    needs = {"frame": ("source", "timestamp", "score", "anomaly", "threshold"),
             "drift": ("source", "timestamp", "state"),
             "frozen": ("source", "timestamp", "state"),
             "away": ("source", "timestamp", "state"),
             "self_check": ("source", "timestamp", "bundle", "problem")}
    if kind not in needs:
        return f"unknown event {kind!r}"
    missing = [key for key in needs[kind] if key not in event]
    if missing:
        return f"a {kind} event without {', '.join(missing)}"
    numbers = ("timestamp", "score", "threshold") if kind == "frame" else ("timestamp",)
    if not all(isinstance(event[key], (int, float)) and not isinstance(event[key], bool) for key in numbers):
        return f"{', '.join(numbers)} must be numbers"
    if not all(math.isfinite(event[key]) for key in numbers):  # Python's json reads NaN and Infinity
        return f"{', '.join(numbers)} must be finite"
    if kind == "frame" and not all(abs(event[key]) <= LARGEST_SCORE for key in ("score", "threshold")):
        return f"score, threshold must be within ±{LARGEST_SCORE:g} (a damaged digit?)"
    if not 0 <= event["timestamp"] < LAST_TIME:
        return "timestamp is not a Unix time"
    if kind == "frame" and not all(isinstance(event.get(key, False), bool) for key in ("anomaly", "alarm")):
        return "anomaly, alarm must be true or false"
    return None


def read_events(path: Path, since: float | None = None, until: float | None = None) -> EventsRead:
    """Every event of `path` and its rotated files between `since` and `until` (Unix seconds)."""
    files = event_files(path)
    sources: dict[str, SourceEvents] = {}
    frames: dict[str, _Frames] = {}
    skipped: list[str] = []
    skipped_count = lines = 0
    first = last = None
    judges: dict = {}
    with tqdm(total=sum(f.stat().st_size for f in files), desc="reading events", unit="B", unit_scale=True,
              disable=None) as bar:
        for file in files:
            with open(file, "rb") as handle:
                for number, raw in enumerate(handle, 1):
                    bar.update(len(raw))
                    lines += 1
                    try:
                        event = json.loads(raw)
                        problem = _problem(event)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        problem = "NUL bytes (the machine lost power while it was written?)" if b"\0" in raw else \
                            "not JSON (cut short?)"
                    if problem is not None:
                        skipped_count += 1
                        if len(skipped) < SHOWN_SKIPS:
                            skipped.append(f"{file}:{number}: {problem}")
                        continue
                    moment = event["timestamp"]
                    if event.get("event", "frame") == "frame":
                        first = moment if first is None else min(first, moment)
                        last = moment if last is None else max(last, moment)
                    if (since is not None and moment < since) or (until is not None and moment > until):
                        continue
                    name = str(event["source"])
                    if name not in sources:
                        sources[name], frames[name] = SourceEvents(name), _Frames()
                    _add(sources[name], frames[name], event, judges)
    for name, record in sources.items():  # files are appended by run after run: put each source in time order
        frames.pop(name).into(record)
        record.drift.sort()
        record.frozen.sort()
        record.away.sort()
        record.self_checks.sort()
    return EventsRead(sources, lines, skipped, skipped_count, None if first is None else (first, last))


class _Frames:
    """One source's frames as read, in the files' order: array.array holds a number in 8 bytes, a
    list a float object of 32 (the rotated files of a busy line hold millions of frames)."""

    def __init__(self) -> None:
        self.times, self.scores, self.thresholds, self.latencies_ms = (array("d") for _ in range(4))
        self.anomalies, self.alarms = array("b"), array("b")
        self.judges: list[tuple[str, str | None] | None] = []

    def add(self, event: dict, judges: dict) -> None:
        """A frame event; `judges` keeps one tuple per bundle and calibration, which every frame
        they judged shares (a report of a million frames holds a few)."""
        self.times.append(float(event["timestamp"]))
        self.scores.append(float(event["score"]))
        self.thresholds.append(float(event["threshold"]))
        self.anomalies.append(bool(event["anomaly"]))
        self.alarms.append(bool(event.get("alarm", event["anomaly"])))  # events from before --alarm-frames
        if isinstance(event.get("latency_ms"), (int, float)):
            self.latencies_ms.append(float(event["latency_ms"]))
        judge = None  # events of runs from before they named it
        if "bundle" in event:
            judge = (str(event["bundle"]), event.get("calibration") and str(event["calibration"]))
        self.judges.append(judges.setdefault(judge, judge))

    def into(self, record: SourceEvents) -> None:
        """The frames put into `record` in time order: runs append to the files one after another."""
        order = np.argsort(self.times, kind="stable")
        record.times, record.scores, record.thresholds = (np.asarray(column)[order] for column in
                                                          (self.times, self.scores, self.thresholds))
        record.anomalies, record.alarms = (np.asarray(column, bool)[order] for column in (self.anomalies, self.alarms))
        record.latencies_ms = np.asarray(self.latencies_ms)
        record.judges = [self.judges[i] for i in order]


def _add(record: SourceEvents, frames: _Frames, event: dict, judges: dict) -> None:
    """`event` added to `record`, or to `frames` when it is a frame's."""
    if event.get("event", "frame") == "drift":
        record.drift.append((float(event["timestamp"]), str(event["state"])))
        return
    if event.get("event") == "frozen":
        record.frozen.append((float(event["timestamp"]), str(event["state"])))
        return
    if event.get("event") == "away":
        record.away.append((float(event["timestamp"]), str(event["state"])))
        return
    if event.get("event") == "self_check":
        record.self_checks.append((float(event["timestamp"]), str(event["bundle"]), str(event["problem"])))
        return
    frames.add(event, judges)
    if isinstance(event.get("overlay"), str):
        name = event.get("name")  # a folder's picture's own name; a stream's frames carry the stream's
        frame = name if isinstance(name, str) and name and name != record.name else f"frame {event.get('frame')}"
        record.pictures.append(AlarmPicture(record.name, frame, float(event["timestamp"]), float(event["score"]),
                                            float(event["threshold"]), event["overlay"]))


def binned_medians(times: np.ndarray, scores: np.ndarray, bins: int = MEDIAN_BINS):
    """(bin centres, median score per bin, bin width in seconds) over the time range of `times` (in
    order); NaN (a break in the line) for bins of fewer than MIN_PER_BIN frames, as where a camera
    was away. None for too few frames or an instant."""
    span = times[-1] - times[0]
    if times.size < bins * MIN_PER_BIN or span <= 0:
        return None
    index = np.minimum(((times - times[0]) / span * bins).astype(int), bins - 1)
    edges = np.searchsorted(index, np.arange(bins + 1))  # each bin's frames are one slice: times are in order
    medians = np.array([np.median(scores[a:b]) if b - a >= MIN_PER_BIN else np.nan for a, b in zip(edges, edges[1:])])
    return times[0] + (np.arange(bins) + 0.5) * span / bins, medians, span / bins


def _local_days(timestamps: np.ndarray | float) -> np.ndarray:
    """Unix times as matplotlib's date numbers (days since 1970) of the local clock, without a
    datetime object per frame: the offset from UTC is looked up once per quarter of an hour, the
    step of every daylight-saving change."""
    timestamps = np.asarray(timestamps, float)
    quarters, where = np.unique(timestamps // 900 * 900, return_inverse=True)
    offsets = np.array([time.localtime(q).tm_gmtoff for q in quarters])
    return (timestamps + offsets[where.reshape(timestamps.shape)]) / 86400


def time_labels(span_s: float):
    """The time axis's tick labels for frames that span `span_s` seconds: to the second, or to the
    millisecond under a minute, where AutoDateLocator puts ticks less than a second apart (a short
    run's, `edge-ad demo`'s 60 frames in 0.7 s, all read the same second)."""
    import matplotlib.dates as mdates
    import matplotlib.ticker as ticker

    if span_s >= 60:
        return mdates.DateFormatter("%m-%d %H:%M:%S")
    return ticker.FuncFormatter(lambda day, _: mdates.num2date(day).strftime("%m-%d %H:%M:%S.%f")[:-3])


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def write_events_report(read: EventsRead, path: Path) -> Path:
    """The picture: a row per source, its scores over (local) time and their histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker

    sources = [s for s in read.sources.values() if s.frames]
    if not sources:
        raise EdgeAdError(f"report: no frame events to draw: {read.why_no_frames()}")
    stretches = [record.stretches() for record in sources]  # (a loop over every frame: once)
    notes, notes_inches = notes_text("the lines and bands:", _line_notes(sources, stretches), 15)
    figure, axes = plt.subplots(len(sources), 2, figsize=(15, 3.6 * len(sources) + notes_inches), squeeze=False,
                                gridspec_kw={"width_ratios": [4, 1]})
    for (timeline, histogram), record, judged in zip(axes, sources, stretches):
        times = _local_days(record.times)
        scores, anomalies, alarms = record.scores, record.anomalies, record.alarms
        for kind, marker, size, colour, label in (
            (~anomalies, ".", 2, "tab:blue", "normal"),
            (anomalies & ~alarms, ".", 4, "tab:orange", "anomalous, no alarm"),
            (alarms, "x", 6, "tab:red", "alarm"),
        ):
            if kind.any():  # a kind without frames stays out of the legend too
                timeline.plot(times[kind], scores[kind], marker, markersize=size, color=colour, rasterized=True,
                              label=f"{label} ({kind.sum()})")
        steps = np.r_[0, np.flatnonzero(np.diff(record.thresholds)) + 1, record.frames - 1]  # a point per change
        timeline.step(times[steps], record.thresholds[steps], where="post", color="black", linewidth=1,
                      label="threshold")
        middle = binned_medians(record.times, scores)
        if middle is not None:  # many frames hide their middle in a solid cloud: drift shows here
            timeline.plot(_local_days(middle[0]), middle[1], color="navy", linewidth=1.2,
                          label=f"median per {middle[2]:.0f} s")
        for timestamp, state in record.drift:
            colour = "tab:green" if state == "back" else "tab:purple"
            timeline.axvline(_local_days(timestamp), color=colour, linestyle="--", linewidth=1)
        for timestamp, state in record.frozen:
            colour = "tab:green" if state == "back" else "black"
            timeline.axvline(_local_days(timestamp), color=colour, linestyle="-.", linewidth=1)
        for start, end in record.away_spans():
            timeline.axvspan(_local_days(start), _local_days(end), color="0.8", alpha=0.6, zorder=0)
            if start == end:  # away as the events end: where it went
                timeline.axvline(_local_days(start), color="0.6", linewidth=2, zorder=0)
        for timestamp, _, _ in record.self_checks:
            timeline.axvline(_local_days(timestamp), color="red", linewidth=2)
        for n, ((bundle, calibration), start, _) in enumerate(judged):
            if n:  # where another bundle or calibration took over; the first is named too
                timeline.axvline(times[start], color="tab:brown", linestyle=":", linewidth=1.5)
            timeline.annotate(f"{bundle[:8]} / {(calibration or 'own')[:8]}", (times[start], 0.0),
                              xycoords=("data", "axes fraction"), rotation=90, fontsize=6, va="bottom", ha="left",
                              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1},
                              zorder=5)  # over the points it stands among, readable
        title_of(timeline, record.counts(), 9, loc="left")
        timeline.set_ylabel("score")
        timeline.xaxis.set_major_locator(mdates.AutoDateLocator())
        timeline.xaxis.set_major_formatter(time_labels(float(record.times[-1] - record.times[0])))
        timeline.tick_params(axis="x", labelrotation=20, labelsize=8)
        # Bins over the height drawn (the scores and the threshold), not over the scores alone: scores
        # close together under a threshold far above came in bins too thin to see.
        drawn = histogram_range(min(scores.min(), record.thresholds.min()), max(scores.max(), record.thresholds.max()))
        # The legend in one row, in a band left empty above the highest score: in the corner of the
        # points it covered a run's first alarms.
        span = drawn[1] - drawn[0] or abs(drawn[1]) or 1.0
        timeline.set_ylim(drawn[0] - 0.05 * span, drawn[1] + 0.3 * span)
        timeline.legend(loc="upper left", fontsize=7, markerscale=2, ncol=len(timeline.get_legend_handles_labels()[0]))
        histogram.hist(scores, bins=60, range=drawn, color="tab:blue", alpha=0.8, orientation="horizontal", log=True)
        histogram.axhline(record.thresholds[-1], color="black", linewidth=1)
        histogram.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        # 2, 3, 5 between 1 and 10 where the counts span less than a decade (a short run), as
        # matplotlib picks them; none where they span several
        histogram.xaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))
        histogram.set_xlabel("frames (log scale)")
        histogram.sharey(timeline)
    lay_out_above_notes(figure, notes, notes_inches)
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path


def _line_notes(sources: list[SourceEvents], stretches: list[list]) -> list[str]:
    """What the lines and bands drawn on the timelines of `sources` (with their `stretches`)
    mean, for those drawn. They were one line under the picture, past its edge where several
    were drawn, over the lowest timeline's times."""
    notes = []
    if any(record.drift for record in sources):
        notes.append("dashed lines: drift out of the calibrated band or most frames flagged (purple), back (green)")
    if any(record.frozen for record in sources):
        notes.append("dash-dot lines: the camera's picture froze (black), changes again (green)")
    if any(record.away for record in sources):
        notes.append("grey bands: the source was away (no frames, reconnected; a grey line: away at the end)")
    if any(record.self_checks for record in sources):
        notes.append("solid red lines: a self-check failed and the run stopped (edge-ad report prints why)")
    if any(len(judged) > 1 for judged in stretches):
        notes.append("dotted lines: another bundle / calibration judged from there (short SHA-256, 'own': the "
                     "bundle's)")
    return notes


def _found(picture: AlarmPicture, snapshots: Path | None) -> Path | None:
    """Where `picture`'s overlay is now: where the run wrote it, or by its name in `snapshots` (the
    folder copied to a workstation with the events); None when the quota has deleted it since."""
    written = Path(picture.overlay)
    places = [written, *([snapshots / written.name] if snapshots is not None else [])]
    return next((path for path in places if path.is_file()), None)


def _tile(path: Path) -> np.ndarray | None:
    """The picture at `path` as RGB, TILE_PX wide at most; None when it does not read as a picture."""
    try:
        image = read_image(path)
    except ImageError:  # cut short, damaged, not a picture
        return None
    if image.shape[1] > TILE_PX:
        image = cv2.resize(image, (TILE_PX, max(1, round(image.shape[0] * TILE_PX / image.shape[1]))),
                           interpolation=cv2.INTER_AREA)
    return image


def write_alarm_pictures(read: EventsRead, path: Path, count: int, snapshots: Path | None = None) -> str:
    """The overlays of the `count` highest-scoring alarm frames still on disk (looked for where the
    run wrote them, then in `snapshots`), as one picture at `path`, each titled with its source,
    time, score and threshold; returns the line that says what it shows and what it could not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alarms = sum(int(record.alarms.sum()) for record in read.sources.values())
    pictures = sorted((p for record in read.sources.values() for p in record.pictures), key=lambda p: -p.score)
    if not pictures:
        return (f"alarm pictures: none of the {alarms} alarms has one (edge-ad run --snapshots DIR keeps them)"
                if alarms else "alarm pictures: no alarms")
    found = [(picture, _found(picture, snapshots)) for picture in pictures]
    gone = sum(where is None for _, where in found)
    shown: list[tuple[AlarmPicture, np.ndarray]] = []
    unreadable: list[str] = []
    left = 0  # on disk, but past the `count` highest
    for picture, where in found:
        if where is None:
            continue
        if len(shown) == count:
            left += 1
            continue
        tile = _tile(where)
        if tile is None:
            unreadable.append(str(where))
        else:
            shown.append((picture, tile))
    problems = (f"; {gone} no longer on disk (deleted past --snapshot-quota-mb, or moved: --snapshots DIR finds "
                f"them by name)" if gone else "") + (f"; not pictures: {', '.join(unreadable)}" if unreadable else "")
    if len(pictures) < alarms:  # "1 of 1" beside 22 alarms read as every alarm's picture
        problems += (f"; {alarms - len(pictures)} of the {alarms} alarms kept none (a run keeps one per "
                     "--snapshot-interval and source)")
    if not shown:
        return f"alarm pictures: none of {len(pictures)} could be shown{problems}"
    columns = min(SHEET_COLUMNS, len(shown))
    rows = -(-len(shown) // columns)
    tallest = min(max(tile.shape[0] / tile.shape[1] for _, tile in shown), TALLEST_TILE)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, (4 * tallest + 0.6) * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (picture, tile) in zip(axes.flat, shown):
        axis.imshow(tile)
        source = picture.source if len(picture.source) <= 44 else "..." + picture.source[-41:]
        title = f"{source}\n{_clock(picture.timestamp)}  {picture.frame}\nscore {picture.score:.4g} " \
                f"(threshold {picture.threshold:.4g})"
        title_of(axis, title, 8)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    which = f"the {len(shown)} highest-scoring of {len(pictures)}" if left else f"{len(shown)} of {len(pictures)}"
    return f"alarm pictures: {which} in {path}{problems}"
