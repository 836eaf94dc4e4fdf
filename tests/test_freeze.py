"""A live camera whose picture stops changing: said once when it froze, once when it moves again."""

import json

import numpy as np

from edge_ad.events_report import read_events, write_events_report
from edge_ad.freeze import FreezeWatch


def _said(watch: FreezeWatch, frames) -> list[tuple[float, dict]]:
    """The events `watch` says for (moment, image) frames, with the moment of each."""
    return [(moment, event) for moment, image in frames if (event := watch.add(image, moment)) is not None]


def test_a_picture_that_stands_still_half_the_window_is_said_once_and_its_return_too():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (120, 160, 3), np.uint8)

    def noisy():  # a live sensor's frame of the still scene
        return np.clip(scene + rng.integers(-2, 3, scene.shape), 0, 255).astype(np.uint8)

    watch = FreezeWatch(window_s=30.0)
    assert _said(watch, [(t / 10, noisy()) for t in range(400)]) == []  # 40 s of a stopped line: not frozen
    frozen = noisy()
    said = _said(watch, [(t / 10, frozen) for t in range(400, 1000)])  # frozen from 40 s to 100 s
    assert said == [(55.0, {"event": "frozen", "state": "frozen", "still_s": 15.0, "window_s": 30.0})]
    said = _said(watch, [(t / 10, noisy()) for t in range(1000, 1300)])  # moving again from 100 s
    assert said == [(115.0, {"event": "frozen", "state": "back", "frozen_s": 60.0})]


def test_a_frozen_picture_refreshed_at_key_frames_is_frozen_and_doubled_frames_are_not():
    """An encoder refreshes a frozen picture at each key frame, and its next frames differ a
    little; a camera that sends each frame twice repeats every other frame."""
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (60, 80), np.uint8) for _ in range(4)]  # grey frames too
    # 10 frames a second, a key frame every 2 s: the 3 frames from it differ, the 17 after repeat
    refreshed = [(t / 10, pictures[min(t % 20, 3)]) for t in range(600)]
    (moment, event), = _said(FreezeWatch(30.0), refreshed)
    assert event["state"] == "frozen" and 30.0 <= moment <= 31.0 and 22.0 <= event["still_s"] <= 26.0
    doubled = [(t / 20, rng.integers(0, 256, (60, 80), np.uint8)) for t in range(0, 1200, 2)]
    doubled = [frame for pair in zip(doubled, [(t + 0.05, image) for t, image in doubled]) for frame in pair]
    assert _said(FreezeWatch(30.0), doubled) == []


def test_the_report_marks_a_frozen_picture(tmp_path):
    lines = [{"source": "cam", "timestamp": 100.0 + i, "score": 0.1, "anomaly": False, "threshold": 0.5}
             for i in range(60)]
    lines.insert(40, {"event": "frozen", "source": "cam", "frame": 40, "timestamp": 140.0, "state": "frozen",
                      "still_s": 15.0, "window_s": 30.0})
    (tmp_path / "ev.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    read = read_events(tmp_path / "ev.jsonl")
    assert read.skipped_count == 0 and read.sources["cam"].frozen == [(140.0, "frozen")]
    assert read.sources["cam"].summary().endswith("frozen pictures 1")
    assert write_events_report(read, tmp_path / "report.png").stat().st_size > 0


def test_a_frozen_picture_is_not_kept_as_a_sample(tiny_bundle, mvtec_category, tmp_path):
    """--samples keeps good parts' pictures to train the next bundle on; a frozen camera's picture,
    judged good at every frame, is no new part: kept until the picture is found frozen, then not."""
    from edge_ad.detector import Detector
    from edge_ad.runner import RunConfig, run
    from edge_ad.streams import Stream

    good = sorted((mvtec_category / "train" / "good").glob("*.png"))[0]
    frozen = (f'filesrc location="{good}" ! pngdec ! imagefreeze is-live=true ! videoconvert ! '
              "video/x-raw,format=BGR,framerate=20/1 ! appsink name=sink")
    config = RunConfig(samples=tmp_path / "samples", sample_interval_s=0.0, events=tmp_path / "ev.jsonl",
                       frozen_window_s=2.0, max_frames=80)
    run(Detector.load(tiny_bundle), [Stream("", "cam", pipeline=frozen)], config)
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    (froze,) = [e for e in events if e["event"] == "frozen"]
    normal = [e for e in events if e["event"] == "frame" and not e["anomaly"]]
    before = [e for e in normal if e["timestamp"] < froze["timestamp"]]
    assert len(normal) > len(before) >= 5  # good frames both before and after it froze
    kept = [int(p.stem.rsplit("_", 1)[1]) for p in (tmp_path / "samples" / "cam").glob("*.png")]  # their frames
    assert kept and max(kept) < froze["frame"]  # (a sample is left out while the writer is busy: not all before)


def test_a_wall_clock_set_during_the_run_changes_no_latency_and_no_freeze(tiny_bundle, mvtec_category, tmp_path,
                                                                          monkeypatch):
    """A Jetson's clock is often set while the run goes on (NTP once the network is up, an RTC
    without a battery): an hour back, one second into a frozen camera's run. Latencies and the
    frozen picture's timing count on the monotonic clock, so neither moves."""
    import time

    from edge_ad.detector import Detector
    from edge_ad.runner import RunConfig, run
    from edge_ad.streams import Stream

    good = sorted((mvtec_category / "train" / "good").glob("*.png"))[0]
    frozen = (f'filesrc location="{good}" ! pngdec ! imagefreeze is-live=true ! videoconvert ! '
              "video/x-raw,format=BGR,framerate=20/1 ! appsink name=sink")
    wall, start = time.time, time.time()
    monkeypatch.setattr(time, "time", lambda: wall() - (3600.0 if wall() - start > 1.0 else 0.0))
    config = RunConfig(events=tmp_path / "ev.jsonl", frozen_window_s=2.0, max_frames=80)  # 4 s
    run(Detector.load(tiny_bundle), [Stream("", "cam", pipeline=frozen)], config)
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    latencies = [e["latency_ms"] for e in events if e["event"] == "frame"]
    assert len(latencies) == 80 and 0.0 < min(latencies) and max(latencies) < 10_000.0
    (froze,) = [e for e in events if e["event"] == "frozen"]
    assert froze["state"] == "frozen" and 1.0 <= froze["still_s"] <= 2.0
