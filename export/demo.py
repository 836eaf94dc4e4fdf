"""`edge-ad demo`: the whole path on ELPV from pip, in one command on a CPU.

Trains the baseline, exports the bundle, evaluates the ELPV test split, writes a
short video of test images, streams it through the same loop as `edge-ad run`
(GStreamer decode), saves overlays of anomalous frames, draws its scores over time (as `edge-ad
report` does from a run's events), and prints one table.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edge_ad.datasets import elpv_split
from edge_ad.detector import Detector
from edge_ad.events_report import read_events, write_events_report
from edge_ad.reports import write_report
from edge_ad.runner import RunConfig
from edge_ad.runner import run as run_stream
from edge_ad.streams import Stream

from .evaluate import evaluate
from .onnx_export import export_bundle
from .train import TrainConfig, train

VIDEO_FRAMES_PER_CLASS = 30
VIDEO_FPS = 10


def write_test_video(path: Path, seed: int = 0) -> int:
    """An MJPEG AVI of ELPV test images, normal and anomalous interleaved; returns the frame count."""
    _, test = elpv_split()
    rng = np.random.default_rng(seed)
    normal = [s for s in test if s.label == 0]
    anomalous = [s for s in test if s.label == 1]
    chosen = [normal[i] for i in rng.choice(len(normal), VIDEO_FRAMES_PER_CLASS, replace=False)]
    chosen += [anomalous[i] for i in rng.choice(len(anomalous), VIDEO_FRAMES_PER_CLASS, replace=False)]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    first = chosen[0].image()
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot open an MJPEG writer")
    for sample in chosen:
        image = sample.image()
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height))
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return len(chosen)


def demo(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    run = train(TrainConfig(data="elpv"), workdir / "run")
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bundle = export_bundle(run, workdir / "bundle")
    timings["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = evaluate(bundle, "elpv", picture=workdir / "eval_report.png")
    write_report(report, workdir / "eval.json")
    timings["eval"] = time.perf_counter() - t0

    video = workdir / "elpv_test.avi"
    frames = write_test_video(video)
    # Every anomalous frame leaves an overlay here (no snapshot rate limit): the demo is for looking.
    config = RunConfig(events=workdir / "events.jsonl", snapshots=workdir / "snapshots", snapshot_interval_s=0.0)
    summary = run_stream(Detector.load(bundle), [Stream(str(video))], config)
    timeline = write_events_report(read_events(config.events), workdir / "events_report.png")

    groups = report["image_auroc_per_group"]
    rows = [
        ("image AUROC (ELPV test, %d images)" % report["test_images"], f"{report['image_auroc']:.4f}"),
        *[(f"image AUROC, {g} modules", f"{v:.4f}") for g, v in groups.items()],
        ("image F1-max", f"{report['image_f1_max']:.4f}"),
        ("backend / precision", f"{report['backend']} / {report['precision']}"),
        (f"stream fps ({summary.frames} of {frames} video frames, GStreamer)", f"{summary.fps:.1f}"),
        ("anomalous frames flagged / snapshots", f"{summary.anomalies} / {summary.snapshots}"),
        ("train / export / eval seconds", " / ".join(f"{timings[k]:.0f}" for k in ("train", "export", "eval"))),
        ("bundle", str(bundle)),
        ("metrics", str(workdir / "eval.json")),
        ("histograms, ROC, worst images", report["picture"]),
        ("events", str(workdir / "events.jsonl")),
        ("the stream's scores over time", str(timeline)),
        ("overlays", str(workdir / "snapshots")),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nedge-ad demo")
    print("-" * (width + 30))
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
