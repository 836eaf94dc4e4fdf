"""Soak benchmark: `edge-ad run` on a live test:// source for a long time, events and snapshots on.

    python benchmarks/soak.py --bundle B [--seconds 1800] [--fps 30] [--out soak-out] [--no-spin]

Reports frames processed, drops, reconnects, sink errors, resident-memory growth after warm-up
(target under 5 %) and capture-to-result latency p50/p99, in `soak.json`, and draws memory and
latency over time in `soak.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge_ad.detector import Detector  # noqa: E402
from edge_ad.errors import report_errors  # noqa: E402
from edge_ad.runner import RunConfig, run  # noqa: E402
from edge_ad.streams import Stream  # noqa: E402

SAMPLE_S = 5.0


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak(bundle: str, seconds: float, fps: int, out: Path, width: int, height: int, spin: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    events = out / "events.jsonl"
    events.unlink(missing_ok=True)
    detector = Detector.load(bundle, spin=spin)
    stream = Stream(f"test://ball?width={width}&height={height}&fps={fps}", name="soak")
    config = RunConfig(events=events, snapshots=out / "snapshots", metrics=out / "metrics.prom")
    stop, samples, box = threading.Event(), [], {}
    thread = threading.Thread(target=lambda: box.update(summary=run(detector, [stream], config, stop)))
    start = time.monotonic()
    thread.start()
    while time.monotonic() - start < seconds and thread.is_alive():
        time.sleep(SAMPLE_S)
        samples.append((time.monotonic() - start, resident_mib()))
    stop.set()
    thread.join()
    summary = box["summary"]
    (stats,) = summary.sources
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    latency = np.array([e["latency_ms"] for e in lines])
    t = np.array([e["timestamp"] for e in lines]) - lines[0]["timestamp"]
    warmup_s = min(60.0, seconds / 10)
    rss = np.array(samples)
    after_warmup = rss[rss[:, 0] >= warmup_s]
    report = {
        "seconds": round(summary.seconds, 1),
        "source_fps": fps,
        "onnxruntime_spin": detector.spin,
        "frames": stats.frames,
        "frames_expected": int(summary.seconds * fps),
        "dropped": stats.dropped,
        "reconnects": stats.reconnects,
        "sink_errors": summary.sink_errors,
        "snapshots": stats.snapshots,
        "fps": round(summary.fps, 2),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 2),
        "latency_ms_p99": round(float(np.percentile(latency, 99)), 2),
        "rss_mib_after_warmup": round(float(after_warmup[0, 1]), 1),
        "rss_mib_end": round(float(rss[-1, 1]), 1),
        "rss_growth_percent": round(float(100 * (rss[-1, 1] / after_warmup[0, 1] - 1)), 2),
        "warmup_s": warmup_s,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(rss[:, 0] / 60, rss[:, 1])
    top.axvline(warmup_s / 60, color="grey", linestyle=":")
    top.set_ylabel("resident memory (MiB)")
    top.set_title(f"soak: {stats.frames} frames, {stats.dropped} dropped, RSS growth {report['rss_growth_percent']} %")
    bottom.plot(t / 60, latency, ",", alpha=0.5)
    bottom.axhline(report["latency_ms_p99"], color="red", linestyle="--", label="p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("minutes")
    bottom.legend()
    figure.tight_layout()
    figure.savefig(out / "soak.png", dpi=100)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--seconds", type=float, default=1800.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--out", default="soak-out")
    parser.add_argument("--no-spin", action="store_true", help="as edge-ad run --no-spin")
    args = parser.parse_args()
    report = soak(args.bundle, args.seconds, args.fps, Path(args.out), args.width, args.height, not args.no_spin)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(report_errors("benchmarks/soak.py", main))
