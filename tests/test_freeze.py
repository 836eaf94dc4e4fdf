"""A live camera whose picture stops changing: said once when it froze, once when it moves again."""

import json

import numpy as np

from edge_ad.events_report import read_events, write_events_report
from edge_ad.freeze import FreezeWatch


def test_a_picture_the_same_too_long_is_said_once_and_its_return_too():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (120, 160, 3), np.uint8)
    watch = FreezeWatch(after_s=30.0)
    noisy = [np.clip(scene + rng.integers(-2, 3, scene.shape), 0, 255).astype(np.uint8) for _ in range(40)]
    # A still scene through a live sensor: its noise changes the picture at every frame.
    assert [watch.add(frame, t) for t, frame in enumerate(noisy)] == [None] * 40
    said = [watch.add(scene, 40.0 + t / 2) for t in range(120)]  # the same picture, twice a second, for 60 s
    events = [(i, e) for i, e in enumerate(said) if e is not None]
    assert events == [(60, {"event": "frozen", "state": "frozen", "seconds": 30.0})]  # once, at 30 s
    assert watch.add(noisy[0], 100.0) == {"event": "frozen", "state": "back", "seconds": 60.0}
    assert watch.add(noisy[1], 100.5) is None and watch.add(noisy[1], 200.0) is not None  # and it can freeze again
    black = np.zeros((8, 8), np.uint8)  # a covered lens: grey frames too
    covered = FreezeWatch(after_s=1.0)
    assert [covered.add(black, t) for t in (0.0, 0.5, 1.0)][-1]["state"] == "frozen"


def test_the_report_marks_a_frozen_picture(tmp_path):
    lines = [{"source": "cam", "timestamp": 100.0 + i, "score": 0.1, "anomaly": False, "threshold": 0.5}
             for i in range(60)]
    lines.insert(40, {"event": "frozen", "source": "cam", "frame": 40, "timestamp": 140.0, "state": "frozen",
                      "seconds": 30.0})
    (tmp_path / "ev.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    read = read_events(tmp_path / "ev.jsonl")
    assert read.skipped_count == 0 and read.sources["cam"].frozen == [(140.0, "frozen")]
    assert read.sources["cam"].summary().endswith("picture frozen 1 times")
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
                       frozen_after_s=1.0, max_frames=50)
    run(Detector.load(tiny_bundle), [Stream("", "cam", pipeline=frozen)], config)
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    (froze,) = [e for e in events if e["event"] == "frozen"]
    normal = [e for e in events if e["event"] == "frame" and not e["anomaly"]]
    before = [e for e in normal if e["timestamp"] < froze["timestamp"]]
    assert len(normal) > len(before) >= 5  # good frames both before and after it froze
    assert len(list((tmp_path / "samples" / "cam").glob("*.png"))) == len(before)
