"""`edge-ad report`: the events of runs read back in time order, across rotated files and damaged
lines, drawn per source and counted."""

import hashlib
import json
import struct
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import matplotlib.dates as mdates
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from edge_ad.errors import EdgeAdError
from edge_ad.events_report import (_local_days, binned_medians, read_events, time_labels, write_alarm_pictures,
                                   write_events_report)

from conftest import edge_ad

ALARM_RED = (40, 39, 214)  # matplotlib's tab:red, BGR
BUNDLE_BROWN = (75, 86, 140)  # tab:brown: the line where another bundle or calibration judged from


def _frame(source: str, t: float, score: float, anomaly: bool, **extra) -> dict:
    return {"event": "frame", "source": source, "frame": 0, "timestamp": t, "score": score, "anomaly": anomaly,
            "threshold": 0.5, **extra}


def _write(path, events) -> None:
    path.write_text("".join(e if isinstance(e, str) else json.dumps(e) + "\n" for e in events))


def _pixels(path, colour) -> int:
    picture = cv2.imread(str(path))
    return int(np.all(np.abs(picture.astype(int) - colour) <= 12, axis=2).sum())


def _red_pixels(path) -> int:
    return _pixels(path, ALARM_RED)


def test_report_of_a_run(tiny_bundle, spotted_frames, tmp_path):
    events = tmp_path / "events.jsonl"
    out = edge_ad("run", "--bundle", tiny_bundle, "--input", spotted_frames, "--events",
                  events, "--alarm-frames", 2)
    assert out.returncode == 0, out.stderr
    out = edge_ad("report", "--events", events)
    assert out.returncode == 0, out.stderr
    assert "alarm pictures: none of the 3 alarms has one (edge-ad run --snapshots DIR keeps them)" in out.stdout
    assert f"{spotted_frames}: frames 9  anomalies 6 (66.67%)  alarms 3  from " in out.stdout
    judged_by = hashlib.sha256((tiny_bundle / "bundle.yaml").read_bytes()).hexdigest()[:12]  # as sha256sum prints it
    assert f"\n  bundle {judged_by}, calibration " in out.stdout and ", 9 frames\n" in out.stdout
    report = tmp_path / "events_report.png"
    assert f"report {report}" in out.stdout
    picture = cv2.imread(str(report))
    assert picture.shape == (360, 1500, 3)  # one row: one source
    assert _red_pixels(report) > 20  # the three alarms are marked

    events.unlink()
    out = edge_ad("run", "--bundle", tiny_bundle, "--input", spotted_frames, "--events", events, "--alarm-frames", 2,
                  "--snapshots", tmp_path / "snapshots", "--snapshot-interval", 0)
    assert out.returncode == 0, out.stderr
    out = edge_ad("report", "--events", events)
    assert out.returncode == 0, out.stderr
    alarms = tmp_path / "events_report_alarms.png"
    assert f"alarm pictures: 3 of 3 in {alarms}\n" in out.stdout
    assert cv2.imread(str(alarms)).shape[1] == 1200  # three overlays in a row
    assert "alarm pictures" not in edge_ad("report", "--events", events, "--alarms", 0).stdout


def _overlay(folder, name, bgr) -> str:
    path = folder / name
    cv2.imwrite(str(path), np.full((300, 400, 3), bgr, np.uint8))
    return str(path)


def test_alarm_pictures_highest_scores_first_where_the_run_left_them_or_moved(tmp_path):
    t0 = datetime(2026, 12, 3, 6, 0).timestamp()
    kept = tmp_path / "snapshots"
    kept.mkdir()
    (kept / "damaged_overlay.jpg").write_bytes(b"\xff\xd8 cut short")
    green, blue, red = (0, 200, 0), (200, 0, 0), (0, 0, 200)
    events = tmp_path / "events.jsonl"
    _write(events, [
        _frame("cam", t0, 0.95, True, overlay=str(kept / "damaged_overlay.jpg")),
        _frame("cam", t0 + 1, 0.9, True, overlay=_overlay(kept, "green_overlay.jpg", green)),
        _frame("cam", t0 + 2, 0.6, True),  # an alarm without a snapshot (one per --snapshot-interval)
        _frame("line2", t0 + 3, 0.8, True, overlay=_overlay(kept, "blue_overlay.jpg", blue), name="part-17.png"),
        _frame("cam", t0 + 4, 0.7, True, overlay=_overlay(kept, "red_overlay.jpg", red)),
        _frame("cam", t0 + 5, 0.85, True, overlay=str(kept / "deleted_overlay.jpg")),  # past the quota
        _frame("cam", t0 + 6, 0.1, False),
    ])
    read = read_events(events)
    assert [p.frame for p in read.sources["line2"].pictures] == ["part-17.png"]  # a folder's picture by its name
    sheet = tmp_path / "alarms.png"
    line = write_alarm_pictures(read, sheet, 2)
    assert line == (f"alarm pictures: the 2 highest-scoring of 5 in {sheet}; 1 no longer on disk (deleted past "
                    f"--snapshot-quota-mb, or moved: --snapshots DIR finds them by name); not pictures: "
                    f"{kept / 'damaged_overlay.jpg'}; 1 of the 6 alarms kept none (a run keeps one per "
                    "--snapshot-interval and source)")
    assert _pixels(sheet, green) > 10_000 and _pixels(sheet, blue) > 10_000 and _pixels(sheet, red) == 0
    assert "3 of 5" in write_alarm_pictures(read, sheet, 24) and _pixels(sheet, red) > 10_000
    asserted = bytearray(cv2.imencode(".bmp", np.zeros((30, 40, 3), np.uint8))[1].tobytes())
    asserted[22:26] = struct.pack("<i", 2**30)  # a height OpenCV asserts on (cv2.error) rather than reads as none
    (kept / "asserted_overlay.jpg").write_bytes(asserted)
    _write(tmp_path / "one.jsonl", [_frame("cam", t0, 0.95, True, overlay=str(kept / "asserted_overlay.jpg"))])
    assert write_alarm_pictures(read_events(tmp_path / "one.jsonl"), sheet, 2).endswith(
        f"not pictures: {kept / 'asserted_overlay.jpg'}")

    moved = kept.rename(tmp_path / "copied-to-the-workstation")
    assert write_alarm_pictures(read, sheet, 2).startswith("alarm pictures: none of 5 could be shown; 5 no longer")
    out = edge_ad("report", "--events", events, "--alarms", 2, "--snapshots", moved, "--out", tmp_path / "r.png")
    assert out.returncode == 0, out.stderr
    assert f"alarm pictures: the 2 highest-scoring of 5 in {tmp_path / 'r_alarms.png'}; 1 no longer" in out.stdout
    assert _pixels(tmp_path / "r_alarms.png", green) > 10_000
    out = edge_ad("report", "--events", events, "--snapshots", moved, "--out", tmp_path / "r.pdf")
    assert out.returncode == 0 and (tmp_path / "r_alarms.pdf").read_bytes().startswith(b"%PDF")  # as --out is

    out = edge_ad("report", "--events", events, "--snapshots", moved, "--source", "line2", "--out", tmp_path / "2.png")
    assert out.returncode == 0, out.stderr
    assert "line2: frames 1" in out.stdout and "cam:" not in out.stdout  # one camera of the line's
    assert "alarm pictures: 1 of 1 in" in out.stdout and _pixels(tmp_path / "2_alarms.png", green) == 0
    out = edge_ad("report", "--events", events, "--source", "line3")
    assert out.returncode == 2 and f"--source line3: no events of it in {events}; its sources: cam, line2" in out.stderr
    out = edge_ad("report", "--events", events, "--source", "cam", "--since", "2026-12-03T06:00:03", "--until",
                  "2026-12-03T06:00:03")
    assert out.returncode == 2 and f"--source cam: no events of it in {events} in this time range; its sources: " \
                                   "line2" in out.stderr


def test_events_across_rotated_files_runs_and_damaged_lines(tmp_path):
    t0 = datetime(2026, 12, 3, 6, 0).timestamp()
    events = tmp_path / "events.jsonl"
    # Oldest in events.jsonl.2, then .1, then the file itself; two runs appended to .1 (frames restart).
    judged = {"bundle": "3f2a9c1b7d0e", "calibration": "a1b2c3d4e5f6"}
    _write(tmp_path / "events.jsonl.2", [_frame("cam", t0 + s, 0.1, False, bundle="90e7d5c3b1a2", calibration=None)
                                         for s in range(3)])
    _write(tmp_path / "events.jsonl.1", [
        _frame("cam", t0 + 10, 0.9, True, alarm=False, **judged),
        _frame("cam", t0 + 11, 0.8, True),  # an event from before --alarm-frames (and the bundle fields)
        "{\"event\": \"frame\", \"source\": \"cam\", \"timesta\n",  # cut short by a power loss
        "\0" * 64 + "\n",  # where ext4 had not written the line's block before the power loss
        {"event": "drift", "source": "cam", "timestamp": t0 + 12, "state": "outside", "median": 0.3},
        _frame("other", t0 + 12, 0.2, False, latency_ms=20.0),
    ])
    _write(events, [
        _frame("cam", t0 + 3600, 0.1, False, alarm=False, **judged),
        "[1, 2]\n",
        {"event": "frame", "source": "cam", "timestamp": "noon", "score": 0.1, "anomaly": False, "threshold": 0.5},
        {"event": "heartbeat", "source": "cam", "timestamp": t0},
    ])
    read = read_events(events)
    cam, other = read.sources["cam"], read.sources["other"]
    assert cam.times.tolist() == [t0, t0 + 1, t0 + 2, t0 + 10, t0 + 11, t0 + 3600]
    assert cam.anomalies.tolist() == [False] * 3 + [True, True, False]
    assert cam.alarms.tolist() == [False] * 3 + [False, True, False]
    assert cam.drift == [(t0 + 12, "outside")] and other.frames == 1 and other.latencies_ms.tolist() == [20.0]
    assert read.lines == 13 and read.skipped_count == 5
    assert read.skipped == [f"{tmp_path / 'events.jsonl.1'}:3: not JSON (cut short?)",
                            f"{tmp_path / 'events.jsonl.1'}:4: NUL bytes (the machine lost power while it was "
                            "written?)",
                            f"{events}:2: not a JSON object",
                            f"{events}:3: timestamp, score, threshold must be numbers",
                            f"{events}:4: unknown event 'heartbeat'"]
    line = cam.summary()
    assert line.startswith("cam: frames 6  anomalies 2 (33.33%)  alarms 1  from 2026-12-03 06:00:00 to 2026-12-03 "
                           "07:00:00  longest gap 3589.0 s")
    assert line.endswith("drift events 1 (1 outside)")
    assert cam.judged_by() == [  # in time order; the frames of runs from before events named them left out
        "  bundle 90e7d5c3b1a2, calibration of the bundle: 2026-12-03 06:00:00 to 2026-12-03 06:00:02, 3 frames",
        "  bundle 3f2a9c1b7d0e, calibration a1b2c3d4e5f6: 2026-12-03 06:00:10 to 2026-12-03 06:00:10, 1 frames",
        "  bundle 3f2a9c1b7d0e, calibration a1b2c3d4e5f6: 2026-12-03 07:00:00 to 2026-12-03 07:00:00, 1 frames",
    ]

    shift = read_events(events, since=t0 + 5, until=t0 + 60)  # a time range: only the frames in it
    assert shift.sources["cam"].times.tolist() == [t0 + 10, t0 + 11] and shift.sources["other"].frames == 1
    picture = write_events_report(shift, tmp_path / "shift.png")
    height, width, _ = cv2.imread(str(picture)).shape
    assert width == 1500 and 720 < height < 800  # two sources, a row each, and what the drift's line means
    assert _red_pixels(picture) > 0
    assert _pixels(picture, BUNDLE_BROWN) == 0  # one bundle and calibration judged these: no line
    assert _pixels(write_events_report(read, tmp_path / "all.png"), BUNDLE_BROWN) > 50  # where others took over
    quiet = read_events(events, since=t0 + 3000)
    assert _red_pixels(write_events_report(quiet, tmp_path / "quiet.png")) == 0  # no alarm, none drawn

    out = edge_ad("report", "--events", events, "--since", "2026-12-03T06:00:05", "--until", "2026-12-03 06:01",
                  "--out", tmp_path / "r.png")
    assert out.returncode == 0, out.stderr
    assert "cam: frames 2  anomalies 2 (100.00%)  alarms 1" in out.stdout
    assert f"5 of 13 lines skipped: {tmp_path / 'events.jsonl.1'}:3: not JSON (cut short?);" in out.stdout
    utc = [f"{datetime.fromtimestamp(t, timezone.utc):%Y-%m-%dT%H:%M:%S}Z" for t in (t0 + 5, t0 + 60)]
    out = edge_ad("report", "--events", events, "--since", utc[0], "--until", utc[1], "--out", tmp_path / "r.png")
    assert out.returncode == 0, out.stderr  # the same times in UTC, Z as ISO 8601 writes it: Python 3.10 refused it
    assert "cam: frames 2  anomalies 2 (100.00%)  alarms 1" in out.stdout


def test_a_line_scan_camera_s_tall_strips_are_drawn_smaller_not_row_upon_row(tmp_path):
    events = tmp_path / "events.jsonl"
    strip = tmp_path / "strip_overlay.jpg"
    cv2.imwrite(str(strip), np.full((8000, 400, 3), 128, np.uint8))  # 20 times as tall as wide
    _write(events, [_frame("scan", 1.8e9, 0.9, True, overlay=str(strip))])
    line = write_alarm_pictures(read_events(events), tmp_path / "alarms.png", 24)
    assert line == f"alarm pictures: 1 of 1 in {tmp_path / 'alarms.png'}"
    assert cv2.imread(str(tmp_path / "alarms.png")).shape[:2] == (860, 400)  # (4 x 2 + 0.6) x 100 dpi tall


def test_the_histogram_shows_scores_close_together_under_a_threshold_far_above(tmp_path):
    """The histogram's 60 bins spanned the scores alone and were drawn on the timeline's height,
    which reaches up to the threshold: a steady line's scores, 0.005 apart under a threshold of
    0.5, came in bars a fraction of a pixel thin, so the histogram looked empty."""
    events = tmp_path / "events.jsonl"
    _write(events, [_frame("cam", 1.8e9 + n, score, False) for n, score in enumerate((0.090, 0.092, 0.095, 0.093))])
    write_events_report(read_events(events), tmp_path / "report.png")
    histogram = cv2.imread(str(tmp_path / "report.png"))[:, 1200:]  # the right-hand fifth
    bar_blue = (195, 146, 76)  # tab:blue at alpha 0.8 on white, BGR
    assert np.all(np.abs(histogram.astype(int) - bar_blue) <= 12, axis=2).sum() > 100


def test_a_short_run_s_histogram_counts_are_labelled_between_1_and_10(tmp_path, monkeypatch):
    """The count axis labelled its powers of ten alone: a short run's (counts under 10) read
    "1" and nothing else."""
    import edge_ad.events_report

    drawn = []
    monkeypatch.setattr(edge_ad.events_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    events = tmp_path / "events.jsonl"
    _write(events, [_frame("cam", 1.8e9 + n, 0.1, False) for n in range(4)] + [_frame("cam", 1.8e9 + 9, 0.3, False)])
    write_events_report(read_events(events), tmp_path / "report.png")
    counts = drawn[-1].axes[1].xaxis
    drawn[-1].canvas.draw()
    labels = {label.get_text() for label in counts.get_ticklabels(which="both") if label.get_visible()}
    assert {"1", "2", "3", "4"} <= labels


def test_what_the_lines_and_bands_mean_is_said_within_the_picture_under_the_timelines(tmp_path, monkeypatch):
    """A run with drift, a frozen picture, a camera away, a failed self-check and a new bundle
    had the five meanings joined on one line under the picture: past its right edge (cut off)
    and over the lowest timeline's times. They are listed, wrapped, under the timelines."""
    import edge_ad.events_report

    drawn = []
    monkeypatch.setattr(edge_ad.events_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    t0, events = 1.8e9, tmp_path / "events.jsonl"
    _write(events, [_frame("cam", t0 + n, 0.1, False, bundle="90e7d5c3b1a2" if n < 50 else "3f2a9c1b7d0e")
                    for n in range(100)] + [
        {"event": "drift", "source": "cam", "timestamp": t0 + 20, "state": "outside", "median": 0.3},
        {"event": "frozen", "source": "cam", "timestamp": t0 + 30, "state": "frozen", "still_s": 30.0},
        {"event": "away", "source": "cam", "timestamp": t0 + 60, "state": "away"},
        {"event": "away", "source": "cam", "timestamp": t0 + 70, "state": "back", "away_s": 10.0},
        {"event": "self_check", "source": "cam", "timestamp": t0 + 99, "bundle": "3f2a9c1b7d0e", "problem": "NaN"}])
    write_events_report(read_events(events), tmp_path / "report.png")
    figure = drawn[-1]
    FigureCanvasAgg(figure).draw()  # the report closed its figure, which took its canvas
    (text,) = figure.texts
    lines = text.get_text().splitlines()
    assert lines[0] == "the lines and bands:" and [line[:3] for line in lines if line[0].isdigit()] == \
        ["1. ", "2. ", "3. ", "4. ", "5. "]
    assert lines[1].startswith("1. dashed lines: drift") and lines[-1].endswith("'own': the bundle's)")
    box = text.get_window_extent()
    assert figure.bbox.x0 < box.x0 and box.x1 < figure.bbox.x1 and box.y0 > figure.bbox.y0
    assert all(box.y1 < axis.get_tightbbox().y0 for axis in figure.axes)  # under the times, not on them


def test_the_bundle_and_calibration_named_on_the_timeline_are_not_hidden_by_its_points(tmp_path, monkeypatch):
    """The label naming the bundle and calibration stands at the bottom of the timeline, among a
    steady line's scores: drawn on them, its letters were lost in the cloud of blue points."""
    import edge_ad.events_report

    drawn = []
    monkeypatch.setattr(edge_ad.events_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    events = tmp_path / "events.jsonl"
    scores = np.random.default_rng(0).uniform(0.0, 0.2, 3000)
    _write(events, [_frame("cam", 1.8e9 + n / 5, float(score), False, bundle="3f2a9c1b7d0e")
                    for n, score in enumerate(scores)])
    write_events_report(read_events(events), tmp_path / "report.png")
    canvas = FigureCanvasAgg(drawn[-1])  # the report closed its figure, which took its canvas
    canvas.draw()
    label = next(text for text in drawn[-1].axes[0].texts if "3f2a9c1b / own" in text.get_text())
    box = label.get_window_extent()
    picture = np.asarray(canvas.buffer_rgba())[..., :3]
    top, bottom = picture.shape[0] - int(box.y1), picture.shape[0] - int(box.y0)
    under = picture[top:bottom, int(box.x0):int(box.x1)].astype(int)
    point_blue = (31, 119, 180)  # tab:blue, RGB
    assert under.size and np.all(np.abs(under - point_blue) <= 12, axis=2).sum() == 0


def test_the_legend_covers_no_score_nor_the_threshold(tmp_path, monkeypatch):
    """The legend stood in the timeline's top left corner, on the points there: a run's first
    alarms, the highest scores at its start, were hidden under it."""
    import edge_ad.events_report

    drawn = []
    monkeypatch.setattr(edge_ad.events_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    events = tmp_path / "events.jsonl"
    rng = np.random.default_rng(0)
    first = [_frame("cam", 1.8e9 + n, float(score), True) for n, score in enumerate(rng.uniform(0.6, 1.0, 30))]
    _write(events, first + [_frame("cam", 1.8e9 + 30 + n / 5, float(score), bool(score > 0.5), alarm=False)
                            for n, score in enumerate(rng.uniform(0.0, 0.55, 3000))])
    write_events_report(read_events(events), tmp_path / "report.png")
    FigureCanvasAgg(drawn[-1]).draw()  # the report closed its figure, which took its canvas
    timeline = drawn[-1].axes[0]
    legend = timeline.get_legend().get_window_extent()
    assert len(timeline.get_legend().get_texts()) == 5  # normal, anomalous, alarm, threshold, median
    for line in timeline.lines:
        points = timeline.transData.transform(line.get_xydata())
        assert not legend.count_contains(points), line.get_label()


def test_numbers_a_report_cannot_draw_are_skipped_as_damaged_lines(tmp_path):
    """Python's json reads NaN and Infinity, and a timestamp past year 9999 or a score of 1e300
    stopped the report with a traceback; such lines, from a file edited by hand or damaged, are
    skipped and said. Scores that differ past what a bin can show are drawn as one."""
    t0 = datetime(2026, 12, 3, 6, 0).timestamp()
    events = tmp_path / "events.jsonl"
    _write(events, ['{"event": "frame", "source": "cam", "timestamp": %f, "score": NaN, "anomaly": false, '
                    '"threshold": 0.5}\n' % t0,
                    _frame("cam", 1e300, 0.2, False),
                    _frame("cam", t0 + 1, 0.2, "no"),
                    '{"event": "drift", "source": "cam", "timestamp": -Infinity, "state": "back"}\n',
                    _frame("cam", t0 + 2, 0.2, False),
                    _frame("cam", t0 + 3, 1e300, True),
                    _frame("still", t0 + 4, 0.0, False, threshold=0.0),
                    _frame("still", t0 + 5, 5e-324, False, threshold=0.0)])  # numpy: "too many bins"
    out = edge_ad("report", "--events", events)
    assert out.returncode == 0, out.stderr
    assert "cam: frames 1  anomalies 0" in out.stdout and "still: frames 2  anomalies 0" in out.stdout
    assert (f"5 of 8 lines skipped: {events}:1: timestamp, score, threshold must be finite; {events}:2: timestamp "
            f"is not a Unix time; {events}:3: anomaly, alarm must be true or false; {events}:4: timestamp must be "
            f"finite; {events}:6: score, threshold must be within ±1e+09 (a damaged digit?)\n") in out.stdout


def test_report_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(EdgeAdError, match=r"--events .*none.jsonl: no such file \(nor none.jsonl.1 ... .5\)"):
        read_events(tmp_path / "none.jsonl")
    with pytest.raises(EdgeAdError, match=r"--events .: a folder; give the events file of a run \(its --events FILE\)"):
        read_events(Path(""))  # `--events ''`: a traceback of Path.with_name
    # Why there is nothing to draw: "(in this time range)" was said of every case, a range given or not.
    empty = tmp_path / "events.jsonl"
    empty.touch()
    with pytest.raises(EdgeAdError, match=r"^report: no frame events to draw: the events file is empty \(the run "
                                          r"judged no frame yet\?\)$"):
        write_events_report(read_events(empty), tmp_path / "r.png")
    _write(empty, [{"event": "drift", "source": "cam", "timestamp": 1.0, "state": "back"}])
    with pytest.raises(EdgeAdError, match="report: no frame events to draw: its one line is not a frame event$"):
        write_events_report(read_events(empty), tmp_path / "r.png")
    t0 = datetime(2026, 12, 3, 6, 0).timestamp()
    _write(empty, ["{cut\n", '{"event": "frame"}\n'])
    with pytest.raises(EdgeAdError, match="none of its 2 lines is a frame event \\(lines skipped: above\\)$"):
        write_events_report(read_events(empty), tmp_path / "r.png")
    _write(empty, [_frame("cam", t0 + 60, 0.2, False), _frame("cam", t0, 0.2, False)])
    with pytest.raises(EdgeAdError, match="none in this time range; its frame events run from 2026-12-03 06:00:00 to "
                                          "2026-12-03 06:01:00$"):
        write_events_report(read_events(empty, since=t0 + 120), tmp_path / "r.png")
    out = edge_ad("report", "--events", empty, "--since", "yesterday")
    assert out.returncode == 2 and "'yesterday' is not a date and time such as 2026-12-03T06:00" in out.stderr
    out = edge_ad("report", "--events", empty, "--since", "25:00Z")
    assert out.returncode == 2 and "'25:00Z' is not a date and time such as 2026-12-03T06:00, or a time of day such " \
                                   "as 06:00 (today's)" in out.stderr
    out = edge_ad("report", "--events", empty, "--since", "2026-12-03T18:00", "--until", "2026-12-03T17:00")
    assert out.returncode == 2 and "--since is after --until" in out.stderr
    out = edge_ad("report", "--events", empty, "--alarms", -1)
    assert out.returncode == 2 and "--alarms -1: must be 0 (no picture of the alarms) to 100" in out.stderr
    out = edge_ad("report", "--events", empty, "--alarms", 700)
    assert out.returncode == 2 and "--alarms 700: must be 0 (no picture of the alarms) to 100; for others" in out.stderr
    out = edge_ad("report", "--events", empty, "--snapshots", tmp_path / "gone")
    assert out.returncode == 2 and f"--snapshots {tmp_path / 'gone'}: no such folder" in out.stderr


def test_the_median_line_follows_a_shift_and_breaks_where_the_camera_was_away():
    times = np.arange(0.0, 4000.0)  # one frame a second
    scores = np.where(times < 2000, 0.1, 0.3) + np.random.default_rng(0).normal(0, 0.01, times.size)
    away = (times >= 1000) & (times < 1400)
    centres, medians, width = binned_medians(times[~away], scores[~away], bins=40)
    assert width == pytest.approx(3999 / 40)
    gap = (centres > 1000 + width) & (centres < 1400 - width)
    assert gap.any() and np.isnan(medians[gap]).all()  # no line across the dropout
    assert np.allclose(medians[centres < 900], 0.1, atol=0.01) and np.allclose(medians[centres > 2100], 0.3, atol=0.01)
    assert binned_medians(times[:100], scores[:100], bins=40) is None  # too few frames for a line


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_frames_are_drawn_at_the_local_time_across_a_daylight_saving_change(zone, monkeypatch):
    """The picture's time axis is the local clock, as the printed times are, also through the night
    the clocks go back (2026-10-25 in Berlin, 11-01 in New York), without a datetime per frame."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        night = np.arange(datetime(2026, 10, 24, 22).timestamp(), datetime(2026, 11, 1, 8).timestamp(), 997.3)
        clock = np.array([mdates.date2num(datetime.fromtimestamp(t)) for t in night])
        assert np.abs(_local_days(night) - clock).max() * 86400 < 1e-3
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_short_runs_time_axis_is_labelled_to_the_millisecond():
    """`edge-ad demo`'s run (60 frames in 0.7 s) had every tick of its time axis read the same
    second; a run of a minute or more keeps its labels to the second."""
    start = datetime(2026, 12, 6, 12, 10, 30, 100_000).timestamp()
    days = _local_days(np.array([start, start + 0.2]))
    short = [time_labels(0.7)(day, 0) for day in days]
    assert short == ["12-06 12:10:30.100", "12-06 12:10:30.300"]  # local time, as the frames were
    assert [time_labels(3600.0)(day, 0) for day in days] == ["12-06 12:10:30"] * 2


def test_a_time_of_day_alone_is_today_s():
    """`report --since 06:00` after a shift, as journalctl takes it, was refused as not a date."""
    from edge_ad.cli import _time

    assert _time("06:00") == datetime.now().replace(hour=6, minute=0, second=0, microsecond=0).timestamp()
    assert _time("06:00:30.500") - _time("06:00") == 30.5  # three or six digits: Python 3.10 takes no other
    assert _time("06:00Z") == datetime.now(timezone.utc).replace(hour=6, minute=0, second=0, microsecond=0).timestamp()
    assert _time("2026-12-03T06:00") == datetime(2026, 12, 3, 6).timestamp()  # a date and time as before
