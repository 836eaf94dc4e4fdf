"""Event lines, snapshots, the anomaly hook, regions and metrics, without a stream."""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ad.device import Sensors
from edge_ad.errors import EdgeAdError
from edge_ad.regions import regions
from edge_ad.streams import streams_from_yaml
from edge_ad.pipelines import SourceOptions
from edge_ad.detector import Detector
from edge_ad.runner import RunConfig, run
from edge_ad.sinks import AnomalyHook, EventLog, Guarded, Samples, Snapshots, slug
from edge_ad.streams import Stream
from edge_ad import connection_limit, runner, telemetry
from edge_ad.telemetry import SourceStats, Telemetry

from conftest import SPOT_PATTERN, UNWRITABLE, failing_once, free_port, full_disk


def test_regions_are_connected_areas_above_threshold_largest_first():
    m = np.zeros((20, 30), np.float32)
    m[2:4, 3:6] = 0.5  # 2 x 3 = 6 pixels
    m[10:15, 20:30] = 0.2  # 5 x 10 = 50 pixels, peak 0.9 inside
    m[12, 25] = 0.9
    m[18, 0] = 0.09  # below threshold
    found = regions(m, 0.1)
    assert found == [
        {"x": 20, "y": 10, "width": 10, "height": 5, "area": 50, "peak": pytest.approx(0.9)},
        {"x": 3, "y": 2, "width": 3, "height": 2, "area": 6, "peak": 0.5},
    ]
    assert regions(m, 1.0) == []


def test_event_log_appends_and_rotates_by_size(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=200, backups=2)
    for i in range(20):
        log.write({"frame": i, "pad": "x" * 20})
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size <= 200 + 40 for p in files)
    kept = [json.loads(line)["frame"] for p in reversed(files) for line in p.read_text().splitlines()]
    assert kept == list(range(kept[0], 20)) and kept[0] > 0  # newest lines kept in order, oldest gone
    EventLog(path).write({"frame": 20})  # a restarted run appends
    assert json.loads(path.read_text().splitlines()[-1])["frame"] == 20


def test_an_events_file_deleted_or_moved_during_the_run_is_written_anew(tmp_path, caplog):
    """Deleted to free the disk (or its folder), or moved by logrotate: the lines went on into the
    deleted file, out of sight, holding the disk it was to free, and it was never rotated again."""
    path = tmp_path / "events" / "events.jsonl"
    log = EventLog(path, max_bytes=200, backups=1)
    with caplog.at_level(logging.WARNING, logger="edge_ad.sinks"):
        log.write({"frame": 0})
        path.rename(tmp_path / "events.jsonl.old")  # logrotate without copytruncate
        log.write({"frame": 1})
        assert (tmp_path / "events.jsonl.old").read_text() == '{"frame": 0}\n'
        assert path.read_text() == '{"frame": 1}\n'
        shutil.rmtree(path.parent)
        for frame in range(2, 20):
            log.write({"frame": frame, "pad": "x" * 20})
    log.close()
    assert caplog.text.count("deleted or moved away during the run") == 2  # once each time, not at each line
    kept = [json.loads(line)["frame"] for name in ("events.jsonl.1", "events.jsonl")
            for line in (path.parent / name).read_text().splitlines()]
    assert kept == list(range(kept[0], 20)) and kept[0] > 2  # written, and rotated again


@pytest.mark.parametrize("left", [b'{"frame": 21, "pad', b"\0" * 4096])
def test_a_run_after_a_power_loss_starts_a_line_of_its_own(tmp_path, left):
    """The machine lost power while a line was written: part of it, or NUL bytes where ext4 had
    not written the line's block yet. Before, the next run's first line was glued to it."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"frame": 20}\n' + left)
    EventLog(path).write({"frame": 22})
    assert path.read_bytes().splitlines() == [b'{"frame": 20}', left, b'{"frame": 22}']
    EventLog(path).write({"frame": 23})  # a file that ends its lines gets no empty one
    assert path.read_bytes().endswith(b'{"frame": 22}\n{"frame": 23}\n')


def test_events_go_through_a_pipe(tmp_path):
    """--events /dev/stdout, or a named pipe another program reads: nothing to seek or take back."""
    os.mkfifo(tmp_path / "pipe")
    reader = subprocess.Popen(["cat", str(tmp_path / "pipe")], stdout=subprocess.PIPE)
    log = EventLog(tmp_path / "pipe")
    for frame in range(3):
        log.write({"frame": frame})
    log.close()
    assert [json.loads(line)["frame"] for line in reader.communicate(timeout=10)[0].splitlines()] == [0, 1, 2]


def test_a_full_disk_is_reported_and_retried_not_raised(caplog):
    log = EventLog(__import__("pathlib").Path("/dev/full"))
    guarded = Guarded("events /dev/full", log.write)
    for i in range(3):
        guarded({"frame": i})
    assert guarded.errors == 3
    assert "events /dev/full failed" in caplog.text and "No space left" in caplog.text
    assert caplog.text.count("failed") == 1  # reported once, not per frame


FILLED_WITHIN_A_LINE = """
import resource, signal, sys
from pathlib import Path
from edge_ad.sinks import EventLog

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is cut short, the next fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))  # the disk full at 1000 bytes
log, written = EventLog(Path(sys.argv[1]), max_bytes=0), []
for frame in range(20):
    try:
        log.write({"frame": frame, "padding": "x" * 80})
        written.append(frame)
    except OSError:
        pass
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room made
log.write({"frame": 20})
print(written + [20])
"""


def test_a_disk_filling_within_a_line_leaves_no_half_line(tmp_path):
    """The kernel writes what fits of a line and says nothing; before, the part stayed, and the
    next line written once there was room was glued to it: both lost to edge-ad report."""
    path = tmp_path / "events.jsonl"
    out = subprocess.run([sys.executable, "-c", FILLED_WITHIN_A_LINE, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    written = json.loads(out.stdout)
    assert written[-2] < 19 and written[-1] == 20  # the limit was reached, then lines were written again
    assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == written


def test_snapshots_keep_a_rate_limit_and_a_disk_quota(tmp_path):
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)  # noise: JPEG of a few KB
    snaps = Snapshots(tmp_path, interval_s=0.0, quota_bytes=40_000)
    captured = time.mktime((2026, 12, 4, 6, 15, 12, 0, 0, -1))  # local time, as the names write it
    saved = [snaps.save("cam 1", i, captured, frame, lambda: frame) for i in range(12)]
    stem = "cam-1_20261204-061512"
    assert saved[-1] == (tmp_path / f"{stem}_00000011_frame.jpg", tmp_path / f"{stem}_00000011_overlay.jpg")
    files = sorted(p.name for p in tmp_path.glob("*.jpg"))
    assert sum((tmp_path / f).stat().st_size for f in files) <= 40_000
    assert f"{stem}_00000011_frame.jpg" in files and f"{stem}_00000011_overlay.jpg" in files
    assert f"{stem}_00000000_frame.jpg" not in files  # the oldest went first
    limited = Snapshots(tmp_path / "limited", interval_s=60.0)
    for i in range(5):
        limited.save("a", i, captured, frame, lambda: frame)
        limited.save("b", i, captured, frame, lambda: frame)
    assert limited.saved == 2  # one per source per minute
    assert limited.save("a", 5, captured, frame, lambda: frame) is None


def test_a_clock_that_repeats_a_time_overwrites_no_picture(tmp_path):
    """After a power cut, a device without a time server or clock battery may start its clock
    from the same saved time again: a name already taken gets -2, -3, ..."""
    captured = time.mktime((2026, 12, 4, 6, 15, 12, 0, 0, -1))
    frames = [np.full((32, 32, 3), level, np.uint8) for level in (0, 100, 200)]
    saved = [Snapshots(tmp_path, interval_s=0.0).save("cam", 0, captured, f, lambda f=f: f) for f in frames]
    assert [s.overlay.name for s in saved] == ["cam_20261204-061512_00000000_overlay.jpg",
                                               "cam_20261204-061512_00000000-2_overlay.jpg",
                                               "cam_20261204-061512_00000000-3_overlay.jpg"]
    assert [int(cv2.imread(str(s.frame))[0, 0, 0]) for s in saved] == [0, 100, 200]


def test_cameras_of_one_make_get_names_of_their_own(tiny_bundle):
    """Source names are the inputs by default, and the URIs of one make of camera differ only in
    the address at their start: each still gets its own files, folders and MQTT topics. Names that
    spell the same (`line 1`, `line-1`) are refused before the run starts."""
    uris = [f"rtsp://admin:pw@192.168.1.{n}:554/cam/realmonitor?channel=1&subtype=0" for n in (21, 22)]
    names = [slug(uri) for uri in uris]
    assert names[0] != names[1]
    assert all(len(n) == 40 and n.startswith("realmonitor-channel-1-subtype-0-") for n in names)
    assert (slug("line 1"), slug("/data/line1/cam.mp4"), slug("")) == ("line-1", "data-line1-cam-mp4", "source")
    assert (slug("左相机"), slug("右相机"), slug("Linie Ä_2")) == ("左相机", "右相机", "Linie-Ä-2")  # left, right camera
    with pytest.raises(EdgeAdError, match=r"sources \['line 1', 'line-1'\] would share the name line-1"):
        run(Detector.load(tiny_bundle), [Stream("test://", "line 1"), Stream("test://", "line-1")], RunConfig())


def test_two_sources_may_not_write_one_output(tiny_bundle, tmp_path, monkeypatch):
    """A line copied in a sources file: both videos went into one file, or into x.mp4 and x-2.mp4."""
    monkeypatch.chdir(tmp_path)
    detector = Detector.load(tiny_bundle)
    for first, second in (("line.mp4", str(tmp_path / "line.mp4")), ("rtp://10.0.0.9:5000", "rtp://10.0.0.9:5000"),
                          (f"file://{tmp_path}/line%201.mp4", str(tmp_path / "line 1.mp4"))):  # file://, as jetson-utils
        with pytest.raises(EdgeAdError, match=f"sources a and b would both write {re.escape(second)}"):
            run(detector, [Stream("test://", "a", output=first), Stream("test://", "b", output=second)],
                RunConfig(max_frames=1))
    summary = run(detector, [Stream("test://", "a", output="display://0"), Stream("test://", "b", output="a.mkv"),
                             Stream("test://", "c", output="display://0")], RunConfig(max_frames=1))
    assert summary.frames == 3 and (tmp_path / "a.mkv").is_file()  # windows on one screen may share it


def test_a_video_file_output_whose_folder_cannot_be_made_is_refused_before_any_frame(tiny_bundle, tmp_path):
    """As --events and --snapshots are: it failed at the first frame, and at every one after (said
    every 30 s with Python's raw error), while the run scored on without the video asked for."""
    (tmp_path / "videos").write_text("a file where the folder would go")
    with pytest.raises(EdgeAdError, match=re.escape(f"--output {tmp_path}/videos/line.mkv: {tmp_path}/videos: is a "
                                                    "file, not a video folder")):
        run(Detector.load(tiny_bundle), [Stream("test://", "a", output=str(tmp_path / "videos" / "line.mkv"))],
            RunConfig(max_frames=1))
    with pytest.raises(EdgeAdError, match=re.escape(f"--output {tmp_path}/videos/new/line.mkv: {tmp_path}/videos/new: "
                                                    "cannot create the video folder (")):
        run(Detector.load(tiny_bundle), [Stream("test://", "a", output=str(tmp_path / "videos" / "new" / "line.mkv"))],
            RunConfig(max_frames=1))
    summary = run(Detector.load(tiny_bundle), [Stream("test://", "a", output=str(tmp_path / "new" / "line.mkv"))],
                  RunConfig(max_frames=1))
    assert summary.frames == 1 and (tmp_path / "new" / "line.mkv").is_file()


def test_output_folders_that_take_no_file_are_refused_before_any_frame(tiny_bundle, normal_folder):
    """A folder the run's user may not write in (another user's, a read-only file system) passed
    the start: snapshots and samples failed at the first picture, hours into a run, with Python's
    raw error; the metrics and a video at every write, while the run scored on without them."""
    detector = Detector.load(tiny_bundle)
    cases = [(RunConfig(snapshots=UNWRITABLE), None, f"{UNWRITABLE}: cannot write in the snapshot folder ("),
             (RunConfig(samples=UNWRITABLE), None, f"{UNWRITABLE}: cannot write in the samples folder ("),
             (RunConfig(metrics=UNWRITABLE / "edge-ad.prom"), None,
              f"--metrics {UNWRITABLE}/edge-ad.prom: {UNWRITABLE}: cannot write in the metrics folder ("),
             (RunConfig(), f"{UNWRITABLE}/line.mkv",
              f"--output {UNWRITABLE}/line.mkv: {UNWRITABLE}: cannot write in the video folder ("),
             (RunConfig(), f"{UNWRITABLE}/",
              f"--output {UNWRITABLE}/: {UNWRITABLE}: cannot write in the picture folder (")]
    for config, output, said in cases:
        with pytest.raises(EdgeAdError, match=re.escape(said)):
            run(detector, [Stream(str(normal_folder), "a", output=output)], config)


def test_an_rtp_output_to_a_host_that_does_not_resolve_is_refused_before_any_frame(tiny_bundle):
    """udpsink sends such a video nowhere, and says so only in GStreamer's debug log: the run
    went on, the receiver saw nothing, and nothing said why."""
    with pytest.raises(EdgeAdError, match=r"--output rtp://no-such-host.invalid:5000: no-such-host.invalid does not "
                                          r"resolve \(.*\): the video would go nowhere"):
        run(Detector.load(tiny_bundle), [Stream("test://", "a", output="rtp://no-such-host.invalid:5000")],
            RunConfig(max_frames=1))


def test_a_restarted_run_keeps_the_snapshots_its_events_name(tiny_bundle, spotted_frames, tmp_path):
    """Frame numbers start at 0 in every run: a service restarted (or run again on the camera)
    adds its snapshots beside those of the run before, and each event's files show its frame."""
    detector = Detector.load(tiny_bundle)
    config = RunConfig(events=tmp_path / "ev.jsonl", snapshots=tmp_path / "snaps", snapshot_interval_s=0.0)
    run(detector, [Stream(str(spotted_frames), "line")], config)
    first = {p: p.read_bytes() for p in (tmp_path / "snaps").iterdir()}
    time.sleep(1.0)  # the names hold the capture time to the second
    spotted = spotted_frames / f"{SPOT_PATTERN.index(True)}.png"
    cv2.imwrite(str(spotted), cv2.flip(cv2.imread(str(spotted)), 1))  # another part at that frame number
    run(detector, [Stream(str(spotted_frames), "line")], config)
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    snapped = [e for e in events if "snapshot" in e]
    assert [e["frame"] for e in snapped] == [i for i, spot in enumerate(SPOT_PATTERN) if spot] * 2
    assert all(first[p] == p.read_bytes() for p in first)  # the first run's, untouched
    assert len({e["snapshot"] for e in snapped}) == len(snapped) == len(list((tmp_path / "snaps").glob("*_frame.jpg")))


def test_a_snapshot_cut_short_by_a_full_disk_is_not_left(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "fsync", full_disk)  # the picture's bytes are written, then the disk is full
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(OSError, match="No space left"):
        Snapshots(tmp_path, interval_s=0.0).save("cam", 0, time.time(), frame, lambda: frame)
    assert list(tmp_path.iterdir()) == []


def test_samples_keep_good_frames_losslessly_per_source_within_a_quota(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(6)]  # noise: PNG of about 9 KB
    samples = Samples(tmp_path, interval_s=0.0, quota_bytes=40_000)
    saved = [_saved(samples, "line 1", i, 1796280000.0 + i, frame) for i, frame in enumerate(frames)]
    assert saved[0].parent == tmp_path / "line-1" and saved[0].name.endswith("_00000000.png")
    assert len({p.name for p in saved}) == 6  # the capture time in the name: another run's frame 0 is another file
    kept = sorted(tmp_path.rglob("*.png"))
    assert kept == saved[-len(kept):] and 2 <= len(kept) < 6  # the oldest went first
    assert sum(p.stat().st_size for p in kept) <= 40_000
    assert np.array_equal(cv2.imread(str(saved[-1])), frames[-1])  # lossless
    by_variant = _saved(samples, "line 1", 6, 1796280006.0, frames[0], variant="mono")
    assert by_variant.parent == tmp_path / "line-1" / "mono" and by_variant.is_file()
    samples.close()
    again = Samples(tmp_path, interval_s=60.0, quota_bytes=40_000)  # a new run takes over the quota
    assert again.quota.used == sum(p.stat().st_size for p in tmp_path.rglob("*.png"))
    assert _saved(again, "line 1", 0, 0.0, frames[0]) is not None and again.save("line 1", 1, 0.0, frames[1]) is None
    again.close()


def test_a_sample_that_cannot_be_written_is_said_at_the_next_one(tmp_path):
    samples = Samples(tmp_path, interval_s=0.0)
    (tmp_path / "cam").write_text("a file where the source's folder would go")
    frame = np.zeros((8, 8, 3), np.uint8)
    samples.save("cam", 0, 0.0, frame)
    guarded = Guarded("samples", samples.save)
    deadline = time.monotonic() + 10
    while not guarded.errors and time.monotonic() < deadline:  # the writer fails meanwhile; a later sample says so
        guarded("cam", 1, 0.0, frame)
        time.sleep(0.01)
    assert guarded.errors == 1 and samples.saved == 0
    samples.close()


def test_a_fault_of_edge_ads_own_in_the_samples_writer_is_raised_not_left_to_stop_the_samples(tmp_path, monkeypatch):
    """The writer thread caught a full disk only: anything else (memory run out, a bug) ended it
    with a traceback, and every later sample was handed to no one, without a word."""
    samples = Samples(tmp_path, interval_s=0.0)
    monkeypatch.setattr(samples.quota, "write", failing_once(samples.quota.write, MemoryError("a 12-megapixel PNG")))
    frame = np.zeros((8, 8, 3), np.uint8)
    samples.save("cam", 0, 0.0, frame)
    deadline = time.monotonic() + 10
    with pytest.raises(MemoryError, match="12-megapixel"):  # at a later sample, in the caller's thread
        while time.monotonic() < deadline:
            samples.save("cam", 1, 0.0, frame)
            time.sleep(0.01)
    assert _saved(samples, "cam", 2, 0.0, frame).is_file()  # the writer goes on
    samples.close()


def _saved(samples: Samples, *args, **kwargs):
    """Samples.save, once the writer took the sample before (not skipped as busy), and written."""
    deadline = time.monotonic() + 10
    while samples._pending.full():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    before = samples.saved
    path = samples.save(*args, **kwargs)
    while samples.saved == before:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return path


def test_a_run_samples_the_frames_it_judges_normal(tiny_bundle, spotted_frames, tmp_path):
    events, folder = tmp_path / "events.jsonl", tmp_path / "samples"
    stream = Stream(str(spotted_frames), name="cam")
    run(Detector.load(tiny_bundle), [stream], RunConfig(events=events, samples=folder, sample_interval_s=0.0))
    normal = [e["frame"] for e in map(json.loads, events.read_text().splitlines()) if not e["anomaly"]]
    assert normal == [i for i, spot in enumerate(SPOT_PATTERN) if not spot]
    saved = sorted((folder / "cam").glob("*.png"))
    # normal frames only, the first among them; one that comes while the writer is still busy with
    # the last is not waited for (a loaded machine's writer falls behind a folder read at full speed)
    sampled = [int(p.stem.rsplit("_", 1)[1]) for p in saved]
    assert sampled[0] == normal[0] and set(sampled) <= set(normal)
    first = cv2.imread(str(sorted(spotted_frames.glob("*.png"))[0]))
    assert all(np.array_equal(cv2.imread(str(p)), first) for p in saved)  # the frames as scored


def test_anomaly_hook_gets_the_event_in_its_environment(tmp_path):
    out = tmp_path / "hook.txt"
    script = (f"import os; open({str(out)!r}, 'w').write(os.environ['EDGE_AD_SOURCE'] + ' ' "
              "+ os.environ['EDGE_AD_SCORE'] + ' ' + os.environ.get('EDGE_AD_NAME', '-'))")
    hook = AnomalyHook(f"{sys.executable} -c \"{script}\"")
    hook({"source": "cam1", "frame": 7, "name": "", "score": 0.42, "threshold": 0.3, "timestamp": 1.0})
    hook.close()
    assert out.read_text() == "cam1 0.42 -"
    hook({"source": "incoming", "frame": 8, "name": "part_0012.jpg", "score": 0.5, "threshold": 0.3, "timestamp": 2.0})
    hook.close()  # a picture of a folder: its name, for the hook to move it aside
    assert out.read_text() == "incoming 0.5 part_0012.jpg"
    script = f"import os; open({str(out)!r}, 'w').write(os.environ['EDGE_AD_SNAPSHOT'] + ' ' + os.environ['EDGE_AD_OVERLAY'])"
    hook = AnomalyHook(f"{sys.executable} -c \"{script}\"")  # with --snapshots: the alarm's pictures
    hook({"source": "cam1", "frame": 7, "score": 0.42, "threshold": 0.3, "timestamp": 1.0,
          "snapshot": "/s/cam1_00000007_frame.jpg", "overlay": "/s/cam1_00000007_overlay.jpg"})
    hook.close()
    assert out.read_text() == "/s/cam1_00000007_frame.jpg /s/cam1_00000007_overlay.jpg"


def test_an_anomaly_hook_that_cannot_run_is_refused_as_the_run_starts(tmp_path, monkeypatch):
    """A typo in the program, or a PATH the service does not have, was said at the first alarm:
    days later on a good line, and the rejects it was to move went down the line meanwhile."""
    monkeypatch.setenv("PATH", "/usr/bin")
    with pytest.raises(EdgeAdError, match=r"--on-anomaly: no-such-command is on no folder of PATH \(/usr/bin\); give "
                                          r"the program's full path, executable \(chmod \+x\)"):
        AnomalyHook("no-such-command --x")
    (tmp_path / "reject.sh").write_text("#!/bin/sh\n")  # not made executable
    with pytest.raises(EdgeAdError, match=f"--on-anomaly: {tmp_path / 'reject.sh'} is no executable file"):
        AnomalyHook(f"{tmp_path / 'reject.sh'} --part")
    (tmp_path / "reject.sh").chmod(0o755)
    AnomalyHook(f"{tmp_path / 'reject.sh'} --part").close()


def test_alarms_the_hook_skipped_while_it_ran_are_said(tmp_path, caplog):
    """A hook still running makes the next alarms skip it: a followed folder's rejected part whose
    picture it would have moved went on without a word (the skips were counted, never said)."""
    gate = tmp_path / "gate"
    hook = AnomalyHook(f"{sys.executable} -c \"import os, time\nstart = time.time()\nwhile not "
                       f"os.path.exists({str(gate)!r}) and time.time() < start + 30: time.sleep(0.02)\"")

    def alarm(frame: int, name: str = "") -> dict:
        return {"source": "incoming", "frame": frame, "name": name, "score": 0.5, "threshold": 0.3, "timestamp": 1.0}

    with caplog.at_level(logging.WARNING, logger="edge_ad.sinks"):
        hook(alarm(1, "a.png"))
        for frame in range(2, 7):
            hook(alarm(frame, f"{'bcdef'[frame - 2]}.png"))
        assert caplog.messages == ["--on-anomaly: the command still runs; alarm frames are not given to it until it "
                                   "has ended, from incoming frame 2 (b.png) on"]  # the first at once, once
        gate.write_text("")
        hook.process.wait(10)
        gate.unlink()
        hook(alarm(7, "g.png"))  # the call ended: the count is said, and this one runs, waiting for the gate
        assert caplog.messages[1:] == ["--on-anomaly: 5 alarm frame(s) were not given to the command while it ran"]
        hook(alarm(8))  # skipped: said at once, as the first of a new spell
        hook.process.kill()
        hook.process.wait(10)
        hook(alarm(9))  # within a minute of the count: counted later, so that an alarm storm writes little
        assert len(caplog.messages) == 3
        hook.process.kill()
        hook.close()
    assert caplog.messages[2:] == ["--on-anomaly: the command still runs; alarm frames are not given to it until it has "
                                   "ended, from incoming frame 8 on",
                                   "--on-anomaly: 1 alarm frame(s) were not given to the command while it ran"]


def test_the_hook_hears_of_an_alarm_once_its_snapshot_is_written(tiny_bundle, spotted_frames, tmp_path, monkeypatch):
    """Snapshots are written in the sinks' thread while the scoring goes on: the hook (and MQTT)
    still hear of an alarm only once the files it names are whole, and events keep frame order."""
    write = Snapshots.save

    def slow_save(self, *args):  # a 12-megapixel snapshot's 300 ms
        time.sleep(0.2)
        return write(self, *args)

    monkeypatch.setattr(Snapshots, "save", slow_save)
    found = tmp_path / "found.txt"
    script = (f"import os; open({str(found)!r}, 'a').write(str(all(os.path.isfile(p) and os.path.getsize(p) > 0 "
              "for p in (os.environ['EDGE_AD_SNAPSHOT'], os.environ['EDGE_AD_OVERLAY']))) + chr(10))")
    config = RunConfig(events=tmp_path / "ev.jsonl", snapshots=tmp_path / "snaps", snapshot_interval_s=0.0,
                       on_anomaly=f"{sys.executable} -c \"{script}\"")
    summary = run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "line")], config)
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in events] == list(range(len(SPOT_PATTERN)))
    assert [("snapshot" in e) for e in events] == list(SPOT_PATTERN) and summary.snapshots == sum(SPOT_PATTERN)
    deadline = time.monotonic() + 30  # the last call may still run: close waits 1 s for it
    while not (found.is_file() and found.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.05)
    told = found.read_text().split()
    assert told and set(told) == {"True"}  # one call at a time: alarms while one runs are skipped


def test_a_sink_that_raises_stops_the_run_with_its_error(tiny_bundle, spotted_frames, tmp_path, monkeypatch):
    """A bug in what the sinks' thread calls is not lost with that thread, even at the last frame."""
    from edge_ad import runner

    made = runner._event

    def fails_at_the_last_frame(stream, frame, *args):
        if frame.index == len(SPOT_PATTERN) - 1:
            raise RuntimeError(f"no event for frame {frame.index}")
        return made(stream, frame, *args)

    monkeypatch.setattr(runner, "_event", fails_at_the_last_frame)
    with pytest.raises(RuntimeError, match=f"no event for frame {len(SPOT_PATTERN) - 1}"):
        run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "line")], RunConfig(events=tmp_path / "ev.jsonl"))
    assert len((tmp_path / "ev.jsonl").read_text().splitlines()) == len(SPOT_PATTERN) - 1


def test_metrics_file_in_prometheus_format(tmp_path):
    stats = SourceStats("cam1")
    for latency in range(1, 101):
        stats.add(float(latency), anomaly=latency > 90)
    stats.dropped, stats.reconnects = 4, 1
    stats.thresholds = {"mono": 0.25, "poly": 0.3}
    stats.bundles = {"mono": ("3f2a9c1b7d0e", "a1b2c3d4e5f6"), "poly": ("90e7d5c3b1a2", None)}
    sensors = Sensors({"cpu-thermal": 47.5}, {"VDD_IN": 6.25})
    written = Telemetry(lambda: [stats], lambda: {"events e.jsonl": 2}, tmp_path / "m.prom", sensors=lambda: sensors)
    written.tick()
    text = (tmp_path / "m.prom").read_text()
    for line in ('edge_ad_frames_total{source="cam1"} 100.0', 'edge_ad_anomalies_total{source="cam1"} 10.0',
                 'edge_ad_dropped_total{source="cam1"} 4.0', 'edge_ad_reconnects_total{source="cam1"} 1.0',
                 'edge_ad_sink_errors_total{sink="events e.jsonl"} 2.0',
                 'edge_ad_temperature_celsius{zone="cpu-thermal"} 47.5', 'edge_ad_power_watts{rail="VDD_IN"} 6.25',
                 'edge_ad_threshold{source="cam1",variant="mono"} 0.25',
                 'edge_ad_threshold{source="cam1",variant="poly"} 0.3',
                 'edge_ad_bundle_info{bundle="3f2a9c1b7d0e",calibration="a1b2c3d4e5f6",source="cam1",variant="mono"} 1.0',
                 'edge_ad_bundle_info{bundle="90e7d5c3b1a2",calibration="",source="cam1",variant="poly"} 1.0'):
        assert line in text
    assert f'edge_ad_latency_ms{{quantile="0.99",source="cam1"}} {np.percentile(range(1, 101), 99)}' in text
    assert 'edge_ad_away{source="cam1"} 0.0' in text and 'edge_ad_fps{source="cam1"} 0.0' not in text
    # A camera away: its last frames' rate stood in edge_ad_fps, and a dashboard's "fps below 1" never fired.
    stats.away = True
    written.tick(True)
    text = (tmp_path / "m.prom").read_text()
    assert 'edge_ad_away{source="cam1"} 1.0' in text and 'edge_ad_fps{source="cam1"} 0.0' in text
    assert runner._status([stats]) == "cam1 100 frames away; 10 anomalies"  # systemctl status


def test_the_servers_do_not_name_python_s_version():
    """Python's Server header ("BaseHTTP/0.6 Python/3.11.7", "WSGIServer/0.2 CPython/3.11.7") is the
    version disclosure plants' network scanners flag: the browser outputs and the metrics port, in
    their answers and in the errors their handlers answer themselves, name edge-ad alone."""
    from edge_ad.mjpeg import MjpegOutput

    port = free_port()
    output = MjpegOutput(f"http://@:{port}/line", 64, 48, 10)
    served = Telemetry(lambda: [SourceStats("cam")], dict, port=0, host="127.0.0.1", sensors=lambda: Sensors({}, {}))
    try:
        for url in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{served.server.server_port}/metrics"):
            with urllib.request.urlopen(url, timeout=5) as answer:
                assert answer.headers.get_all("Server") == ["edge-ad"]
        for address in (("127.0.0.1", port), ("127.0.0.1", served.server.server_port)):
            with socket.create_connection(address, timeout=5) as connection:
                connection.sendall(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n")  # 431, by Python's handler
                answer = connection.recv(4096).decode("latin-1")
            assert answer.startswith("HTTP/1.") and "\r\nServer: edge-ad\r\n" in answer, answer
    finally:
        output.close()
        served.close()


def test_the_metrics_port_answers_the_scrapers_metrics_allow_names_only(caplog, monkeypatch, capfd):
    """The metrics name the cameras (their addresses), the bundles and the counts: with
    --metrics-allow, a scraper at another address is closed unanswered, and said once."""
    stats = SourceStats("rtsp://10.0.7.21/stream1")
    stats.add(12.0, anomaly=True)
    served = Telemetry(lambda: [stats], dict, port=0, host="127.0.0.1", sensors=lambda: Sensors({}, {}),
                       allowed=["10.0.7.0/24", "127.0.0.1"])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.server.server_port}/metrics", timeout=5) as answer:
            assert 'edge_ad_anomalies_total{source="rtsp://10.0.7.21/stream1"} 1.0' in answer.read().decode()
    finally:
        served.close()
    guarded = Telemetry(lambda: [stats], dict, port=0, host="127.0.0.1", sensors=lambda: Sensors({}, {}),
                        allowed=["10.0.7.0/24"])
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):  # Prometheus scrapes every 15 s: refused each time, said once
                with pytest.raises((urllib.error.URLError, ConnectionError)):
                    urllib.request.urlopen(f"http://127.0.0.1:{guarded.server.server_port}/metrics", timeout=5)
    finally:
        guarded.close()
    assert caplog.text.count("metrics: refused a connection from 127.0.0.1, which --metrics-allow does not name "
                             "(10.0.7.0/24)") == 1
    monkeypatch.setattr(telemetry._QuietHandler, "timeout", 0.5)  # a connection that asks nothing is closed
    served = Telemetry(lambda: [stats], dict, port=0, host="127.0.0.1", sensors=lambda: Sensors({}, {}))
    try:
        with socket.create_connection(("127.0.0.1", served.server.server_port), timeout=5) as silent:
            assert silent.recv(16) == b""
    finally:
        served.close()
    # without a traceback: socketserver printed one to the journal for each
    assert "Traceback" not in capfd.readouterr().err
    monkeypatch.setattr(telemetry._QuietHandler, "timeout", 10.0)  # the first stays open for the test
    monkeypatch.setattr(connection_limit, "MAX_CONNECTIONS", 1)  # past it, a new connection is closed
    served = Telemetry(lambda: [stats], dict, port=0, host="127.0.0.1", sensors=lambda: Sensors({}, {}))
    try:
        with socket.create_connection(("127.0.0.1", served.server.server_port), timeout=5), \
                socket.create_connection(("127.0.0.1", served.server.server_port), timeout=5) as refused:
            assert refused.recv(16) == b""
    finally:
        served.close()
    with pytest.raises(EdgeAdError, match="--metrics-allow prometheus.plant: not an IP address or network"):
        Telemetry(lambda: [stats], dict, port=0, host="127.0.0.1", allowed=["prometheus.plant"])
    out = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", "nowhere", "--input", "test://ball",
                          "--metrics-allow", "10.0.7.5"], capture_output=True, text=True)
    assert out.returncode == 2 and "--metrics-allow 10.0.7.5: needs --metrics-port PORT" in out.stderr


def test_sources_yaml_refuses_the_control_characters_a_stray_escape_gives(tmp_path):
    """A NUL in a path ended the run with a traceback (ValueError: embedded null byte), as did an
    unpaired surrogate in a name handed to --on-anomaly; a line break in a name forged a log line."""
    cams = tmp_path / "cams.yaml"
    for entry, key in (('{input: "clip.mp4\\0", name: a}', "input"), ('{input: "test://", name: "a\\nb"}', "name"),
                       ('{input: "test://", output: "o\\0.mkv"}', "output"),
                       ('{input: "test://", name: "a\\ud800"}', "name"),
                       ('{input: "rtsp://admin:secret@cam/s\\x01"}', "input")):
        cams.write_text(f"sources:\n  - {entry}\n")
        with pytest.raises(EdgeAdError, match=f"source 1: '{key}' holds a control character") as error:
            streams_from_yaml(cams, SourceOptions())
        assert "secret" not in str(error.value)
    cams.write_text('sources:\n  - {pipeline: "videotestsrc\\n ! appsink name=sink"}\n')  # a pipeline over lines
    (stream,) = streams_from_yaml(cams, SourceOptions())
    assert stream.pipeline == "videotestsrc\n ! appsink name=sink"


def test_sources_yaml(tmp_path):
    good = tmp_path / "cams.yaml"
    good.write_text("sources:\n  - {input: 'test://ball', name: line1, output: l1.mp4, latency_ms: 50}\n"
                    "  - {input: 'rtsp://cam2/s', codec: h265, transport: tcp}\n"
                    "  - {input: clip.mp4, realtime: true, flip: rotate-180, loop: -1, crop: [8, 0, 64, 48]}\n"
                    "  - {input: 'parts/*.png', output: overlays/}\n")
    first, second, third, fourth = streams_from_yaml(good, SourceOptions(timeout_s=3.0))
    assert (fourth.input, fourth.output) == (str(tmp_path / "parts/*.png"), f"{tmp_path / 'overlays'}/")  # pictures
    assert (first.name, first.output, first.options.latency_ms, first.options.timeout_s) == (
        "line1", str(tmp_path / "l1.mp4"), 50, 3.0)  # from the file's folder
    assert (second.name, second.options.codec, second.options.transport) == ("rtsp://cam2/s", "h265", "tcp")
    assert (first.options.realtime, first.options.loop) == (False, 0)
    assert (third.options.realtime, third.options.flip, third.options.loop) == (True, "rotate-180", -1)
    assert (third.name, third.input) == ("clip.mp4", str(tmp_path / "clip.mp4"))  # named as written
    assert third.options.crop == [8, 0, 64, 48] and first.options.crop is None
    home = tmp_path / "cams-at-home.yaml"  # ~ as a shell reads it, not a folder named ~ beside the file
    home.write_text("sources:\n  - {input: ~/clips/line.mp4, output: ~/out.mkv, mask: ~nosuchuser/m.png}\n")
    (at_home,) = streams_from_yaml(home, SourceOptions())
    assert (at_home.input, at_home.output) == (str(Path.home() / "clips/line.mp4"), str(Path.home() / "out.mkv"))
    assert at_home.mask == str(tmp_path / "~nosuchuser/m.png")  # no such user: a name like any other
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {input: 0}\n")  # OpenCV's camera 0
    with pytest.raises(EdgeAdError, match=r"bad.yaml: source 1: 'input' must be a URI, file or folder, not 0; a camera "
                                          r"by its number is /dev/video0 \(USB, V4L2\) or csi://0"):
        streams_from_yaml(bad, SourceOptions())
    bad.write_text("sources:\n  - {input: 'test://', fps: 30}\n")
    with pytest.raises(EdgeAdError, match=r"bad.yaml: source 1: unknown keys \['fps'\]"):
        streams_from_yaml(bad, SourceOptions())
    bad.write_text("sources:\n  - {input: clip.mp4, realtime: 'no'}\n")  # a string would count as true
    with pytest.raises(EdgeAdError, match="bad.yaml: source 1: 'realtime' must be true or false, not 'no'"):
        streams_from_yaml(bad, SourceOptions())
    # Numbers GStreamer would take wrong are refused (a latency of -5 ms as about 50 days, a height of 2.5 as 2), and
    # texts that are not (tracebacks before)
    for entry, said in [("latency_ms: -5", "'latency_ms' must be a whole number, 0 or more, not -5"),
                        ("height: 2.5", "'height' must be a whole number, 1 or more, not 2.5"),
                        ("width: 99999999999", "'width' must be 65536 pixels or fewer (a line-scan camera's line is "
                                               "up to 16384), not 99999999999"),  # caps GStreamer cannot parse
                        ("framerate: '30'", "'framerate' must be a whole number, 1 or more, not '30'"),
                        ("timeout_s: soon",
                         "'timeout_s' must be a number of seconds, 0 or more (0: never), not 'soon'"),
                        ("output: 5", "'output' must be a video file, a folder or a URI, not 5"),
                        ("output: [a.mp4]", "'output' must be a video file, a folder or a URI, not ['a.mp4']"),
                        ("pipeline: 5",
                         "'pipeline' must be a GStreamer pipeline ending in 'appsink name=sink', not 5"),
                        ("name: [left]", "'name' must be a name for the source, not ['left']"),  # named "['left']"
                        ("codec: 264", "'codec' must be a codec's name, as h264, not 264"),  # the rest: tracebacks
                        ("flip: {mirror: true}", "'flip' must be one of none, counterclockwise, rotate-180"),
                        ("transport: [tcp]", "'transport' must be tcp or udp, not ['tcp']"),
                        ("pattern: 18", "'pattern' must be a test pattern's name, as ball, not 18")]:
        bad.write_text(f"sources:\n  - {{input: 'rtsp://cam/1', {entry}}}\n")
        with pytest.raises(EdgeAdError, match=re.escape(f"bad.yaml: source 1: {said}")):
            streams_from_yaml(bad, SourceOptions())
    bad.write_text("sources:\n  - {input: 'rtsp://cam/1', output: }\n  - {input: 'rtsp://cam/2', pipeline: }\n")
    assert [(s.output, s.pipeline) for s in streams_from_yaml(bad, SourceOptions())] == [(None, None)] * 2  # none
    # An option left empty takes the command line's value, as one left out (a traceback for latency_ms and timeout_s,
    # the URI's own codec for codec; realtime and certificate were refused)
    bad.write_text("sources:\n  - {input: 'rtsp://cam/1', latency_ms: , timeout_s: , codec: , realtime: , "
                   "certificate: }\n")
    (emptied,) = streams_from_yaml(bad, SourceOptions(latency_ms=80, timeout_s=3, codec="h265", realtime=True,
                                                      certificate="/etc/cam.pem"))
    assert (emptied.options.latency_ms, emptied.options.timeout_s, emptied.options.codec, emptied.options.realtime,
            emptied.options.certificate) == (80, 3, "h265", True, "/etc/cam.pem")
    bad.write_text("sources:\n  - {input: 'rtsp://cam/1', latency_ms: 0, timeout_s: 2.5, width: 1920}\n")
    assert streams_from_yaml(bad, SourceOptions())[0].options.latency_ms == 0
    bad.write_text("sources:\n  - {input: 'rtsp://cam/1', name: 5}\n")  # camera 5
    assert streams_from_yaml(bad, SourceOptions())[0].name == "5"
    for text in ("sources: [\n", f"sources:\n  - {{input: 'rtsp://cam/1', latency_ms: {'1' * 5000}}}\n"):
        bad.write_text(text)  # the second: int()'s ValueError, with a traceback
        with pytest.raises(EdgeAdError, match="malformed YAML"):
            streams_from_yaml(bad, SourceOptions())
    # A block copied for a second camera with its old input left in: PyYAML kept the last without a word.
    bad.write_text("sources:\n  - name: left\n    input: rtsp://cam/1\n    mask: left.png\n    input: rtsp://cam/2\n")
    with pytest.raises(EdgeAdError, match=re.escape("bad.yaml: malformed YAML at line 5: 'input' is given twice in one "
                                                    "mapping (YAML would keep the last)")):
        streams_from_yaml(bad, SourceOptions())
    bad.write_text("base: &camera {width: 1920, timeout_s: 5}\nsources:\n  - {<<: *camera, input: 'rtsp://cam/1', "
                   "width: 1280}\n")  # a merged mapping's keys may be overridden: that is what YAML means by it
    assert streams_from_yaml(bad, SourceOptions())[0].options.width == 1280


def test_a_metrics_file_that_cannot_be_written_is_counted_and_the_run_goes_on(tiny_bundle, spotted_frames, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr("edge_ad.telemetry.write_to_textfile", full_disk)  # every write fails
    config = RunConfig(metrics=tmp_path / "m.prom", events=tmp_path / "new" / "ev.jsonl")
    summary = run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "line")], config)
    assert summary.sources[0].frames == len(SPOT_PATTERN)
    assert summary.sink_errors[f"metrics {tmp_path / 'm.prom'}"] >= 2  # the first write and the last
    assert len((tmp_path / "new" / "ev.jsonl").read_text().splitlines()) == len(SPOT_PATTERN)


def test_an_alarm_needs_alarm_frames_anomalous_frames_in_a_row(tiny_bundle, spotted_frames, tmp_path):
    """--alarm-frames 2: snapshots and the hook act on the second anomalous frame in a row and
    after it, not on a lone one; every frame's own verdict stays in the events."""
    from edge_ad.detector import Detector
    from edge_ad.runner import RunConfig, run
    from edge_ad.streams import Stream

    config = RunConfig(events=tmp_path / "ev.jsonl", snapshots=tmp_path / "snaps", snapshot_interval_s=0.0,
                       metrics=tmp_path / "m.prom", alarm_frames=2)
    summary = run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "line")], config)
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["anomaly"] for e in events] == list(SPOT_PATTERN)
    assert [e["alarm"] for e in events] == [False, False, False, False, True, False, False, True, True]
    # An alarm's event names its snapshot's files (absolute paths, for a hook, MQTT or a person).
    snapped = [(e["frame"], e["snapshot"], e["overlay"]) for e in events if "snapshot" in e]
    assert [frame for frame, _, _ in snapped] == [4, 7, 8]
    for frame, picture, drawn in snapped:
        named = rf"{re.escape(str(tmp_path / 'snaps'))}/line_\d{{8}}-\d{{6}}_{frame:08d}_frame\.jpg"
        assert re.fullmatch(named, picture)
        assert cv2.imread(picture).shape == cv2.imread(drawn).shape == (300, 300, 3)
    (stats,) = summary.sources
    assert (stats.anomalies, stats.alarms, stats.snapshots) == (6, 3, 3)
    assert len(list((tmp_path / "snaps").glob("*_overlay.jpg"))) == 3
    assert 'edge_ad_alarms_total{source="line"} 3.0' in (tmp_path / "m.prom").read_text()

    # A source's own alarm_frames (in --sources) before the run's: 3 in a row alarms at frame 8 only.
    sources = tmp_path / "cams.yaml"
    sources.write_text(f"sources:\n  - {{input: {spotted_frames}, name: slow, alarm_frames: 3}}\n"
                       f"  - {{input: {spotted_frames}, name: default}}\n")
    summary = run(Detector.load(tiny_bundle), streams_from_yaml(sources, SourceOptions()), RunConfig(alarm_frames=2))
    assert {s.name: s.alarms for s in summary.sources} == {"slow": 1, "default": 3}
    for value in (0, 1.5, "2"):
        sources.write_text(f"sources:\n  - {{input: x.mp4, alarm_frames: {value!r}}}\n")
        with pytest.raises(EdgeAdError, match=r"source 1: 'alarm_frames' must be a whole number, 1 or more"):
            streams_from_yaml(sources, SourceOptions())
