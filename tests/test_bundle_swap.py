"""A new bundle put on the line without stopping the run: replaced on disk, read in at SIGHUP."""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from calibration.site import calibrate_into, collect
from edge_ad.bundle_swap import BundlePaths, BundleSwap, changed_on_disk
from edge_ad.detector import Detector
from edge_ad.engines import ENGINES_DIR, MANIFEST
from edge_ad.events_report import read_events
from edge_ad.line_calibration import CALIBRATING, IDLE, LineCalibration
from edge_ad.pipelines import SourceOptions
from edge_ad.runner import RunConfig, run
from edge_ad.streams import Stream


def _point(link: Path, target: Path) -> None:
    """`link` pointed at `target` in one step, as a deployment swaps a bundle in."""
    staged = link.with_name(link.name + ".new")
    staged.symlink_to(target)
    os.replace(staged, link)


def _bundles(variant_bundles, tmp_path) -> tuple[Path, Path, Path]:
    """The bundle in use (mono's), a new one (poly's) and the new one half copied."""
    old, new, half = tmp_path / "v1", tmp_path / "v2", tmp_path / "v2-copying"
    shutil.copytree(variant_bundles["mono"], old)
    shutil.copytree(variant_bundles["poly"], new)
    shutil.copytree(variant_bundles["poly"], half)
    encoder = half / "encoder.onnx"
    encoder.write_bytes(encoder.read_bytes()[:4096])
    return old, new, half


def _threshold(bundle: Path) -> float:
    return yaml.safe_load((bundle / "bundle.yaml").read_text())["threshold"]


def _sha(bundle: Path) -> str:
    """How the events name a bundle: the first digits of its bundle.yaml's SHA-256."""
    return hashlib.sha256((bundle / "bundle.yaml").read_bytes()).hexdigest()[:12]


def _frames(events: Path) -> list[dict]:
    """The frame events written so far (a line the run is still writing left out)."""
    if not events.exists():
        return []
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.endswith("}")]
    return [e for e in lines if e["event"] == "frame"]


def _wait(condition, what: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_sighup_puts_a_new_bundle_on_the_line_while_the_camera_goes_on(variant_bundles, tmp_path):
    old, new, _ = _bundles(variant_bundles, tmp_path)
    assert _threshold(old) != _threshold(new)
    current, events = tmp_path / "bundle", tmp_path / "events.jsonl"
    _point(current, old)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_ad", "run", "--bundle", str(current), "--input",
         "test://ball?width=160&height=120&fps=30", "--events", str(events)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: len(_frames(events)) >= 10, "no frames scored")
        _point(current, new)
        process.send_signal(signal.SIGHUP)
        _wait(lambda: _frames(events)[-1]["threshold"] == _threshold(new), "the new bundle never scored")
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=60)
    assert process.returncode == 0, log
    frames = _frames(events)
    thresholds = [e["threshold"] for e in frames]
    swapped = thresholds.index(_threshold(new))
    assert swapped >= 10 and set(thresholds[:swapped]) == {_threshold(old)} == set(thresholds) - {_threshold(new)}
    assert [e["frame"] for e in frames] == list(range(frames[0]["frame"], frames[-1]["frame"] + 1))  # one run
    assert f"bundles: {current} changed on disk; loading while the run goes on" in log
    assert f"bundles: {current} loaded, run by onnxruntime" in log  # no engines built for it here
    assert f"scored by the new {current} from now on: threshold {_threshold(new):.4f}" in log
    assert "keeps the numbers it had" not in log  # no calibration in use or on disk: nothing to warn of


def test_a_bundle_that_cannot_be_loaded_leaves_the_line_as_it_was(variant_bundles, normal_folder, tmp_path, caplog):
    """A half-copied bundle is named and the source keeps its bundle and its calibration on the
    line; the whole new bundle then scores, and the calibration on the line, whose frames the
    old bundle scored, stops."""
    old, new, half = _bundles(variant_bundles, tmp_path)
    current, events = tmp_path / "bundle", tmp_path / "events.jsonl"
    _point(current, old)
    stream = Stream(str(normal_folder), name="cam", options=SourceOptions(loop=-1))
    line = {"cam": LineCalibration(stream, frames=5000)}
    line["cam"].ask(True)
    stop, reload = threading.Event(), threading.Event()
    paths = BundlePaths((str(current),))
    config = RunConfig(events=events, metrics=tmp_path / "metrics.prom")
    runner = threading.Thread(target=run, args=(paths.load(paths.of(stream)), [stream], config),
                              kwargs={"stop": stop, "reload": reload, "line": line, "paths": paths})
    with caplog.at_level(logging.INFO):
        runner.start()
        try:
            _wait(lambda: line["cam"].kept >= 5, "the calibration on the line kept no frames")
            _point(current, half)
            reload.set()
            _wait(lambda: any("not loaded" in r.getMessage() for r in caplog.records), "no word of the broken bundle")
            kept = line["cam"].kept
            _wait(lambda: line["cam"].kept > kept + 5, "the run stopped after the broken bundle")
            assert line["cam"].state == CALIBRATING
            _point(current, new)
            reload.set()
            _wait(lambda: _frames(events)[-1]["threshold"] == _threshold(new), "the new bundle never scored")
        finally:
            stop.set()
            runner.join(60)
    assert line["cam"].state == IDLE
    (refused,) = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert f"bundles: {current} not loaded, its sources keep the bundle they have: " in refused
    assert "encoder.onnx" in refused
    assert any("calibration cancelled after" in r.getMessage() for r in caplog.records)
    assert {e["threshold"] for e in _frames(events)} == {_threshold(old), _threshold(new)}
    judged = read_events(events).sources["cam"].judged_by()  # what `edge-ad report` says judged the frames
    assert [line.split(":")[0] for line in judged] == [f"  bundle {_sha(old)}, calibration of the bundle",
                                                       f"  bundle {_sha(new)}, calibration of the bundle"]
    assert sum(int(line.split(", ")[-1].split()[0]) for line in judged) == len(_frames(events))
    metric = f'edge_ad_bundle_info{{bundle="{_sha(new)}",calibration="",source="cam",variant=""}} 1.0'
    assert metric in config.metrics.read_text()


def test_with_a_bundle_per_variant_the_replaced_one_is_named(variant_bundles, tmp_path):
    old, new, _ = _bundles(variant_bundles, tmp_path)
    mono, poly = tmp_path / "mono", tmp_path / "poly"
    _point(mono, old)
    _point(poly, new)
    specs = (f"mono={mono}", f"poly={poly}")
    paths = BundlePaths(specs)
    in_use = paths.load(specs)
    assert changed_on_disk(specs, in_use) == []
    _point(poly, old)  # poly's path now holds another bundle; mono's is as it was
    assert changed_on_disk(specs, in_use) == [str(poly)]


def test_a_calibration_made_with_the_bundle_that_goes_does_not_pass_to_the_new_one(variant_bundles, test_cells,
                                                                                   tmp_path):
    """A calibration made from maps of the bundle in use, written after a new bundle was put in
    its place, is of the bundle in use: the new one sets it aside."""
    old, new, _ = _bundles(variant_bundles, tmp_path)
    current, folder = tmp_path / "bundle", tmp_path / "calibration"
    _point(current, old)
    in_use = Detector.load(current)
    _point(current, new)
    calibrate_into(folder, in_use, collect(in_use, iter(test_cells["mono"] * 2), 12)[None], 0.3, 0.9, "cells")
    assert in_use.calibrated(folder)[1] is None
    _, problem = Detector.load(current).calibrated(folder)
    assert "made for another bundle" in problem


def test_engines_built_for_a_bundle_in_use_are_taken_at_sighup(variant_bundles, tmp_path, caplog):
    """`edge-ad build` beside a running line (ONNX Runtime runs the bundle until it has engines),
    then SIGHUP: the bundle is loaded again, with its engines where TensorRT can run them."""
    bundle = shutil.copytree(variant_bundles["mono"], tmp_path / "bundle")
    specs = (str(bundle),)
    swap = BundleSwap(BundlePaths(specs))
    in_use = swap.paths.load(specs)
    by_onnxruntime = Detector.load(bundle, backend="onnxruntime")  # asked for ONNX Runtime: engines do not matter
    assert changed_on_disk(specs, in_use) == []
    built = bundle / ENGINES_DIR / "orin-sm87-trt10.3.0-fp16" / MANIFEST  # `build` writes its manifest last
    built.parent.mkdir(parents=True)
    built.write_text("key: {}\n")
    assert changed_on_disk(specs, in_use) == [str(bundle)]
    assert changed_on_disk(specs, by_onnxruntime) == []
    caplog.set_level(logging.INFO, logger="edge_ad.bundles")
    swap.ask({specs: in_use})
    swap._worker.join(60)
    (reloaded,) = swap.take().values()
    assert f"bundles: {bundle} changed on disk; loading while the run goes on" in caplog.text
    # No TensorRT here: the engines are not for this machine, and ONNX Runtime goes on. The
    # reloaded bundle knows the build, so the next SIGHUP does not load it again.
    assert reloaded.backend == "onnxruntime" and changed_on_disk(specs, reloaded) == []
    built.unlink()
    assert changed_on_disk(specs, reloaded) == [str(bundle)]


def test_engines_built_beside_the_line_run_after_sighup(cpu_tensorrt, tiny_bundle, tmp_path):
    """On TensorRT's API (tests/cpu_tensorrt.py): the line runs on ONNX Runtime until `build`
    makes this device's engines beside it; after SIGHUP the reloaded bundle runs on them."""
    from edge_ad.bundle import load_bundle
    from edge_ad.engines import build_engines

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    specs = (str(bundle),)
    swap = BundleSwap(BundlePaths(specs))
    in_use = swap.paths.load(specs)
    assert in_use.backend == "onnxruntime" and changed_on_disk(specs, in_use) == []
    build_engines(load_bundle(bundle), "fp16")
    assert changed_on_disk(specs, in_use) == [str(bundle)]
    swap.ask({specs: in_use})
    swap._worker.join(60)
    (reloaded,) = swap.take().values()
    assert reloaded.backend == "tensorrt" and changed_on_disk(specs, reloaded) == []
