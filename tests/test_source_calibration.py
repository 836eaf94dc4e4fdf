"""Cameras that share one bundle, each with its own site calibration (`calibration:` in
--sources): calibrated one camera at a time, scored on one copy of the graphs."""

import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from conftest import MODULE_TYPES, UNWRITABLE, doctor_problems, edge_ad
from edge_ad import runner
from edge_ad.detector import Detector
from edge_ad.errors import EdgeAdError
from edge_ad.pipelines import SourceOptions
from edge_ad.runner import RunConfig, load_detectors, run
from edge_ad.streams import Stream, streams_from_yaml
from edge_ad.telemetry import SourceStats
from edge_ad.variants import VariantDetector


def _calibrate(sources: Path, name: str, frames: int = 6) -> None:
    out = edge_ad("calibrate", "--sources", sources, "--source", name, "--frames", frames, "--target-far", 0.5,
                  "--confidence", 0.5)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def lit_cells(test_cells, tmp_path) -> dict[str, Path]:
    """Six normal poly cells as two cameras see them: one in full light, one in dim light."""
    folders = {}
    for name, gain in (("bright", 1.0), ("dim", 0.55)):
        folders[name] = tmp_path / f"frames-{name}"
        folders[name].mkdir()
        for i, cell in enumerate(test_cells["poly"]):
            cv2.imwrite(str(folders[name] / f"{i}.png"), np.round(cell * gain).astype(np.uint8))
    return folders


def test_cameras_sharing_a_bundle_each_get_their_own_calibration(variant_bundles, lit_cells, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(variant_bundles["poly"], bundle)
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(lit_cells["bright"]), "name": "bright", "bundle": str(bundle),
         "calibration": str(tmp_path / "calib" / "bright")},
        {"input": str(lit_cells["dim"]), "name": "dim", "bundle": str(bundle),
         "calibration": str(tmp_path / "calib" / "dim")},
        {"input": str(lit_cells["dim"]), "name": "plain", "bundle": str(bundle)},  # the bundle's own numbers
    ]}))
    for name in ("bright", "dim"):
        _calibrate(sources, name)
    written = {name: tmp_path / "calib" / name / "calibration.yaml" for name in ("bright", "dim")}
    data = {name: yaml.safe_load(path.read_text()) for name, path in written.items()}
    assert data["dim"]["source"] == str(lit_cells["dim"]) and data["dim"]["frames"] == 6
    assert (tmp_path / "calib" / "dim" / "calibration_report.png").is_file()
    assert not (bundle / "calibration.yaml").exists()  # the shared bundle is left as exported
    assert data["bright"]["threshold"] != data["dim"]["threshold"]  # the light changed what normal scores

    streams = streams_from_yaml(sources, SourceOptions())
    detectors = load_detectors(streams)
    bright, dim, plain = (detectors[name] for name in ("bright", "dim", "plain"))
    assert bright.graphs is dim.graphs is plain.graphs  # one copy of the graphs
    assert (bright.bundle.calibration, dim.bundle.calibration, plain.bundle.calibration) == (
        written["bright"], written["dim"], None)
    events = tmp_path / "events.jsonl"
    summary = run(detectors, streams, RunConfig(events=events))
    assert [s.frames for s in summary.sources] == [6, 6, 6]
    lines = [json.loads(line) for line in events.read_text().splitlines()]

    # Each camera is scored as a bundle holding that camera's calibration would score it.
    for name, frames in (("bright", lit_cells["bright"]), ("dim", lit_cells["dim"])):
        copy = tmp_path / f"bundle-{name}"
        shutil.copytree(bundle, copy)
        shutil.copy(written[name], copy / "calibration.yaml")
        alone = Detector.load(copy)
        expected = [alone(cv2.imread(str(p))) for p in sorted(frames.glob("*.png"))]
        ours = [e for e in lines if e["source"] == name]
        np.testing.assert_allclose([e["score"] for e in ours], [r.score for r in expected], atol=1e-5)
        assert {e["threshold"] for e in ours} == {data[name]["threshold"]}
    exported = yaml.safe_load((bundle / "bundle.yaml").read_text())["threshold"]
    assert {e["threshold"] for e in lines if e["source"] == "plain"} == {exported}
    dim_scores = [e["score"] for e in lines if e["source"] == "dim"]
    plain_scores = [e["score"] for e in lines if e["source"] == "plain"]
    assert not np.allclose(dim_scores, plain_scores, atol=1e-3)  # same frames, other quantiles


def test_eval_judges_a_cameras_pictures_by_its_own_calibration_and_mask(variant_bundles, lit_cells, tmp_path):
    """Pictures sorted from one camera of several that share a bundle are judged as run judges that
    camera (`eval --sources FILE --source NAME`): its calibration folder's threshold, its mask;
    the bundle's own numbers would say what another camera's threshold does with them."""
    bundle = shutil.copytree(variant_bundles["poly"], tmp_path / "bundle")
    shape = cv2.imread(str(next(lit_cells["dim"].glob("*.png")))).shape
    inspect = np.full(shape[:2], 255, np.uint8)
    inspect[: shape[0] // 4] = 0  # the fixture's edge, out of inspection
    cv2.imwrite(str(tmp_path / "dim-mask.png"), inspect)
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(lit_cells["bright"]), "name": "bright", "bundle": str(bundle), "calibration": "calib/bright"},
        {"input": str(lit_cells["dim"]), "name": "dim", "bundle": str(bundle), "calibration": "calib/dim",
         "mask": "dim-mask.png"},
        {"input": str(lit_cells["dim"]), "name": "new", "bundle": str(bundle), "calibration": "calib/new"},
    ]}))
    for name in ("bright", "dim"):
        _calibrate(sources, name)
    thresholds = {name: yaml.safe_load((tmp_path / "calib" / name / "calibration.yaml").read_text())["threshold"]
                  for name in ("bright", "dim")}
    sorted_dim = tmp_path / "sorted" / "good"  # the dim camera's pictures, sorted on site
    shutil.copytree(lit_cells["dim"], sorted_dim)
    reports = {}
    for name in ("bright", "dim"):
        out = edge_ad("eval", "--sources", sources, "--source", name, "--data", sorted_dim.parent)
        assert out.returncode == 0, out.stderr
        reports[name] = json.loads(out.stdout)
    assert reports["dim"]["bundle_threshold"] == thresholds["dim"] != thresholds["bright"]
    assert reports["dim"]["calibration"] == str(tmp_path / "calib" / "dim" / "calibration.yaml")
    assert reports["dim"]["mask"]["inspected"] == pytest.approx(0.75, abs=0.01)
    assert reports["dim"]["test_images_the_calibration_was_made_on"] == {"normal": 6, "anomalous": 0}
    assert reports["bright"]["bundle_threshold"] == thresholds["bright"]
    assert "mask" not in reports["bright"] and "test_images_the_calibration_was_made_on" not in reports["bright"]
    plain = json.loads(edge_ad("eval", "--bundle", bundle, "--data", sorted_dim.parent, check=True).stdout)
    assert "calibration" not in plain and plain["bundle_threshold"] not in thresholds.values()
    uncalibrated = edge_ad("eval", "--sources", sources, "--source", "new", "--data", sorted_dim.parent)
    assert uncalibrated.returncode != 0 and not uncalibrated.stdout
    assert f"{tmp_path / 'calib' / 'new'}: no calibration.yaml yet; calibrate that camera first" in uncalibrated.stderr
    unnamed = edge_ad("eval", "--sources", sources, "--data", sorted_dim.parent)
    assert unnamed.returncode != 0
    assert "names the sources ['bright', 'dim', 'new']: give --source NAME, the camera whose pictures" in unnamed.stderr


def test_frames_of_calibrated_views_share_one_graph_call(variant_bundles, lit_cells, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    shutil.copytree(variant_bundles["poly"], bundle)
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(lit_cells["dim"]), "name": name, "bundle": str(bundle), "calibration": str(tmp_path / name)}
        for name in ("low", "high")] + [{"input": str(lit_cells["dim"]), "name": "plain", "bundle": str(bundle)}]}))
    _calibrate(sources, "low")
    calibration = yaml.safe_load((tmp_path / "low" / "calibration.yaml").read_text())
    calibration["threshold"] *= 3  # another camera's threshold, on the same maps
    (tmp_path / "high").mkdir()
    (tmp_path / "high" / "calibration.yaml").write_text(yaml.safe_dump(calibration))
    streams = streams_from_yaml(sources, SourceOptions())
    detectors = load_detectors(streams)

    calls = []
    graphs = Detector.frame_grid_maps
    monkeypatch.setattr(Detector, "frame_grid_maps", lambda self, frames, color="BGR": (
        calls.append(len(frames)) or graphs(self, frames, color)))
    frames = [cv2.imread(str(p)) for p in sorted(lit_cells["dim"].glob("*.png"))[:3]]
    ready = [(SimpleNamespace(detector=detectors[s.name], mask=None, stream=s), SimpleNamespace(image=f, index=0))
             for s, f in zip(streams, frames)]
    results = runner._score(ready, {s.name: SourceStats(s.name) for s in streams}, None)
    assert calls == [3]  # one batch for the three cameras
    for (capture, frame), result in zip(ready, results):
        alone = capture.detector(frame.image)  # its own calibration, alone
        assert result.threshold == alone.threshold and result.score == pytest.approx(alone.score, abs=1e-6)
    assert results[1].threshold == pytest.approx(3 * results[0].threshold)
    assert results[2].threshold == detectors["plain"].bundle.threshold != results[0].threshold


def test_cameras_with_their_own_calibration_of_variant_bundles_share_each_variants_graph_call(
    variant_bundles, test_cells, tmp_path, monkeypatch
):
    """Three cameras on the mono and poly bundles, two with calibrations of their own: a frame of
    each goes through each variant's graphs in one call, and each result is its camera's alone."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for module_type in MODULE_TYPES:
        for i, cell in enumerate(test_cells[module_type]):
            cv2.imwrite(str(frames / f"{module_type}-{i}.png"), cell)
    bundles = [f"{t}={variant_bundles[t]}" for t in MODULE_TYPES]
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(frames), "name": name, "bundle": bundles, "calibration": str(tmp_path / name)}
        for name in ("low", "high")] + [{"input": str(frames), "name": "plain", "bundle": bundles}]}))
    _calibrate(sources, "low", frames=12)
    for module_type in MODULE_TYPES:  # another camera's thresholds, on the same maps
        calibration = yaml.safe_load((tmp_path / "low" / module_type / "calibration.yaml").read_text())
        calibration["threshold"] *= 3
        (tmp_path / "high" / module_type).mkdir(parents=True)
        (tmp_path / "high" / module_type / "calibration.yaml").write_text(yaml.safe_dump(calibration))
    streams = streams_from_yaml(sources, SourceOptions())
    detectors = load_detectors(streams)
    low, high, plain = (detectors[name] for name in ("low", "high", "plain"))
    for module_type in MODULE_TYPES:
        assert low.detectors[module_type].graphs is high.detectors[module_type].graphs is \
            plain.detectors[module_type].graphs

    calls = []
    graphs = Detector.frame_grid_maps
    monkeypatch.setattr(Detector, "frame_grid_maps", lambda self, frames, color="BGR": (
        calls.append(len(frames)) or graphs(self, frames, color)))
    cells = [test_cells["mono"][0], test_cells["poly"][0], test_cells["mono"][1]]
    ready = [(SimpleNamespace(detector=detectors[s.name], mask=None, stream=s), SimpleNamespace(image=c, index=0))
             for s, c in zip(streams, cells)]
    results = runner._score(ready, {s.name: SourceStats(s.name) for s in streams}, None)
    assert calls == [3, 3]  # each variant's graphs once, for the three cameras
    for (capture, frame), result in zip(ready, results):
        alone = capture.detector(frame.image)  # its own calibrations, alone
        assert (result.variant, result.threshold) == (alone.variant, alone.threshold)
        assert result.score == pytest.approx(alone.score, abs=1e-6)
    assert [r.variant for r in results] == ["mono", "poly", "mono"]
    assert results[1].threshold == pytest.approx(3 * low.detectors["poly"].threshold)
    assert results[2].threshold == plain.detectors["mono"].bundle.threshold != low.detectors["mono"].threshold

    # The line says camera low sees poly: its frame goes through poly's graphs only.
    calls.clear()
    told = runner._batch([low, high, plain], cells, [None] * 3, ["poly", None, None])
    assert calls == [2, 3] and [r.variant for r in told] == ["poly", "poly", "mono"]
    assert told[0].threshold == low.detectors["poly"].threshold


def test_variants_of_a_camera_are_calibrated_into_its_folder(variant_bundles, test_cells, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for module_type in MODULE_TYPES:
        for i, cell in enumerate(test_cells[module_type]):
            cv2.imwrite(str(frames / f"{module_type}-{i}.png"), cell)
    folder = tmp_path / "calib" / "line"
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(frames), "name": "line", "calibration": str(folder),
         "bundle": [f"{t}={variant_bundles[t]}" for t in MODULE_TYPES]},
    ]}))
    _calibrate(sources, "line", frames=12)
    for module_type in MODULE_TYPES:
        assert yaml.safe_load((folder / module_type / "calibration.yaml").read_text())["frames"] == 6
        assert not (Path(variant_bundles[module_type]) / "calibration.yaml").exists()
    detector = load_detectors(streams_from_yaml(sources, SourceOptions()))["line"]
    assert isinstance(detector, VariantDetector)
    assert {n: d.bundle.calibration for n, d in detector.detectors.items()} == {
        t: folder / t / "calibration.yaml" for t in MODULE_TYPES}
    shutil.copytree(frames, tmp_path / "sorted" / "good")  # the camera's pictures, judged as run judges them
    report = json.loads(edge_ad("eval", "--sources", sources, "--data", tmp_path / "sorted", check=True).stdout)
    assert report["calibration"] == {t: str(folder / t / "calibration.yaml") for t in MODULE_TYPES}
    assert report["test_images_the_calibration_was_made_on"] == {"normal": 12, "anomalous": 0}


def test_a_calibration_folder_that_could_not_be_written_is_refused_before_any_frame(tiny_bundle, tmp_path):
    """It was found after the frames: with a camera, after minutes of good parts shown to it for
    nothing (here 3,000 frames of a test pattern at 30 fps, 100 s)."""
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": "test://", "name": "line", "calibration": str(UNWRITABLE / "line")}]}))
    result = edge_ad("calibrate", "--sources", sources, "--source", "line", "--bundle", tiny_bundle)
    assert result.returncode == 2
    assert f"{UNWRITABLE}/line: cannot create the calibration folder (" in result.stderr
    assert "normal frames" not in result.stderr  # the progress of the frames kept: none was


def test_a_missing_or_foreign_calibration_is_said_and_the_bundle_numbers_used(
    variant_bundles, lit_cells, tmp_path, caplog
):
    poly = tmp_path / "bundle-poly"
    shutil.copytree(variant_bundles["poly"], poly)
    foreign = tmp_path / "calib" / "foreign"  # a calibration of the mono bundle, put where a poly camera's goes
    foreign.mkdir(parents=True)
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(lit_cells["bright"]), "name": "mono-cam", "bundle": variant_bundles["mono"],
         "calibration": str(foreign)},
    ]}))
    _calibrate(sources, "mono-cam")
    variants = [f"{t}={variant_bundles[t]}" for t in MODULE_TYPES]
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(lit_cells["bright"]), "name": "new", "bundle": str(poly), "calibration": str(tmp_path / "none")},
        {"input": str(lit_cells["dim"]), "name": "moved", "bundle": str(poly), "calibration": str(foreign)},
        {"input": str(lit_cells["dim"]), "name": "plain", "bundle": str(poly)},
        {"input": str(lit_cells["dim"]), "name": "either", "bundle": variants},
        {"input": str(lit_cells["dim"]), "name": "either-new", "bundle": variants, "calibration": str(tmp_path / "none")},
    ]}))
    streams = streams_from_yaml(sources, SourceOptions())
    with caplog.at_level(logging.WARNING, logger="edge_ad.runner"):
        detectors = load_detectors(streams)
    assert detectors["new"] is detectors["moved"] is detectors["plain"]  # nothing fits: one detector, one batch
    assert detectors["plain"].bundle.calibration is None
    assert detectors["either-new"] is detectors["either"]
    warned = [r.getMessage() for r in caplog.records]
    assert (f"new: {tmp_path / 'none'}: no calibration.yaml yet; scored with the bundle's own numbers until "
            "'edge-ad calibrate --sources ... --source new'") in warned
    assert any(m.startswith(f"moved: {foreign / 'calibration.yaml'}: made for another bundle") for m in warned)
    assert (f"either-new: variant mono: {tmp_path / 'none' / 'mono'}: no calibration.yaml yet; variant poly: "
            f"{tmp_path / 'none' / 'poly'}: no calibration.yaml yet; scored with") in " ".join(warned)

    out = edge_ad("doctor", "--sources", sources)
    problems = doctor_problems(out.stdout)
    assert problems[0] == (f"problem: source new: {tmp_path / 'none'}: no calibration.yaml yet: edge-ad calibrate "
                           "--sources ... --source new (until then it is scored with the bundle's own numbers)")
    assert problems[1].startswith(f"problem: source moved: {foreign / 'calibration.yaml'}: made for another bundle")
    assert [p.partition(f": {tmp_path}")[0] for p in problems[2:]] == ["problem: source either-new, variant mono",
                                                      "problem: source either-new, variant poly"]
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(lit_cells["bright"]), "name": "mono-cam", "bundle": variant_bundles["mono"],
         "calibration": str(foreign)}]}))
    out = edge_ad("doctor", "--sources", sources)
    threshold = yaml.safe_load((foreign / "calibration.yaml").read_text())["threshold"]
    named = hashlib.sha256((foreign / "calibration.yaml").read_bytes()).hexdigest()[:12]  # as the events name it
    assert f"calibration  mono-cam: {foreign / 'calibration.yaml'} ({named}), threshold {threshold:.4f}" in out.stdout

    sources.write_text(yaml.safe_dump({"sources": [{"input": "test://", "calibration": 3}]}))
    with pytest.raises(EdgeAdError, match=r"cams.yaml: source 1: 'calibration' must be a folder, not 3"):
        streams_from_yaml(sources, SourceOptions())
    with pytest.raises(EdgeAdError, match=r"source\(s\) \['cam'\] name their own bundle or calibration"):
        run(Detector.load(poly), [Stream("test://", "cam", calibration=str(foreign))], RunConfig())

    broken = tmp_path / "broken"  # a calibration cut short: run refuses it by name, calibrate replaces it
    broken.mkdir()
    (broken / "calibration.yaml").write_text("threshold: [0.5\n")
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(lit_cells["dim"]), "name": "cam", "bundle": str(poly), "calibration": str(broken)}]}))
    with pytest.raises(EdgeAdError, match=r"broken/calibration.yaml: malformed YAML at line 2"):
        load_detectors(streams_from_yaml(sources, SourceOptions()))
    out = edge_ad("doctor", "--sources", sources)
    assert f"problem: source cam: {broken / 'calibration.yaml'}: malformed YAML at line 2" in out.stdout
    _calibrate(sources, "cam")
    assert yaml.safe_load((broken / "calibration.yaml").read_text())["frames"] == 6


def test_calibrate_takes_every_source_in_turn(variant_bundles, lit_cells, tmp_path):
    bundle, own = tmp_path / "bundle", tmp_path / "bundle-own"
    shutil.copytree(variant_bundles["poly"], bundle)
    shutil.copytree(variant_bundles["poly"], own)
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(sorted(lit_cells["dim"].glob("*.png"))[0], few / "0.png")
    entries = [
        {"input": str(lit_cells["bright"]), "name": "bright", "calibration": str(tmp_path / "calib" / "bright")},
        {"input": str(few), "name": "short", "calibration": str(tmp_path / "calib" / "short")},
        {"input": str(lit_cells["dim"]), "name": "dim", "calibration": str(tmp_path / "calib" / "dim")},
        {"input": str(lit_cells["dim"]), "name": "own", "bundle": str(own)},  # into its bundle
    ]
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": entries}))
    out = edge_ad("calibrate", "--sources", sources, "--bundle", bundle, "--frames", 6, "--target-far", 0.5,
                  "--confidence", 0.5)
    assert out.returncode == 2
    assert "edge-ad: error: not calibrated: short (above); the other sources were" in out.stderr
    assert "short not calibrated: only 1 normal frames were read" in out.stdout
    written = [tmp_path / "calib" / "bright", tmp_path / "calib" / "dim", own]
    thresholds = [yaml.safe_load((folder / "calibration.yaml").read_text())["threshold"] for folder in written]
    assert thresholds[0] != thresholds[1] and thresholds[1] == pytest.approx(thresholds[2], abs=1e-6)  # same frames
    assert not (tmp_path / "calib" / "short").exists() and not (bundle / "calibration.yaml").exists()

    entries[3].pop("bundle")  # now two sources would write the shared bundle's calibration.yaml
    entries.append({"input": str(lit_cells["dim"]), "name": "other"})
    sources.write_text(yaml.safe_dump({"sources": entries}))
    out = edge_ad("calibrate", "--sources", sources, "--bundle", bundle)
    assert out.returncode == 2 and (f"calibrate: sources ['own', 'other'] would write one calibration ({bundle}); "
                                    f"give each a 'calibration:' folder of its own in {sources}") in out.stderr
    out = edge_ad("calibrate", "--sources", sources, "--bundle", bundle, "--defects", few)
    assert out.returncode == 2 and "--defects: known defects are one camera's" in out.stderr
    out = edge_ad("calibrate", "--sources", sources, "--bundle", bundle, "--threshold", "f1")  # not refused twice
    assert out.returncode == 2 and out.stderr.endswith(
        f"--threshold f1 needs --defects: the F1-best threshold is set between the normal frames' scores and the known "
        f"defects'; known defects are one camera's: calibrate each camera of {sources} with --source NAME --defects "
        "DIR --threshold f1\n")


def _frame_events(path: Path, source: str) -> list[dict]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [e for e in lines if e["event"] == "frame" and e["source"] == source]


def test_sighup_reads_the_calibrations_again_while_the_cameras_go_on(variant_bundles, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(variant_bundles["poly"], bundle)
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": "test://ball?width=160&height=120&fps=30", "name": "cam", "calibration": str(tmp_path / "cam")},
        {"input": "test://smpte?width=160&height=120&fps=30", "name": "other"},  # the bundle's numbers
    ]}))
    out = edge_ad("calibrate", "--sources", sources, "--source", "cam", "--bundle", bundle, "--frames", 30,
                  "--target-far", 0.5, "--confidence", 0.5)
    assert out.returncode == 0, out.stderr
    written = tmp_path / "cam" / "calibration.yaml"
    before = yaml.safe_load(written.read_text())["threshold"]
    events = tmp_path / "events.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "edge_ad", "run", "--sources", str(sources), "--bundle",
                                str(bundle), "--events", str(events)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_frame_events(events, "cam")) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        calibration = yaml.safe_load(written.read_text())
        calibration["threshold"] = 2 * before  # `calibrate` run again, while the line runs
        written.write_text(yaml.safe_dump(calibration))
        (bundle / "calibration.yaml").write_text("threshold: [0.5\n")  # cut short: unusable
        process.send_signal(signal.SIGHUP)
        while {e["threshold"] for e in _frame_events(events, "cam")} != {before, 2 * before}:
            assert time.monotonic() < deadline, "the new threshold never came"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0, log
    cam = _frame_events(events, "cam")
    thresholds = [e["threshold"] for e in cam]
    changed = thresholds.index(2 * before)
    assert set(thresholds[:changed]) == {before} and set(thresholds[changed:]) == {2 * before}
    assert [e["frame"] for e in cam] == sorted({e["frame"] for e in cam})  # one run: the camera went on
    exported = yaml.safe_load((bundle / "bundle.yaml").read_text())["threshold"]
    assert {e["threshold"] for e in _frame_events(events, "other")} == {exported}
    assert "SIGHUP: reading the calibrations, masks and changed bundles again" in log
    assert f"cam: threshold {2 * before:.4f}, was {before:.4f}" in log
    assert f"other: not reloaded, keeps its calibration and mask: {bundle / 'calibration.yaml'}: malformed YAML" in log


def test_a_reload_that_cannot_be_used_leaves_the_source_as_it_was(tiny_bundle, tmp_path, caplog):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.full((120, 160), 255, np.uint8))
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [{"input": "test://ball?width=160&height=120&fps=30", "name": "cam",
                                                    "mask": str(mask), "calibration": str(tmp_path / "cam")}]}))
    out = edge_ad("calibrate", "--sources", sources, "--bundle", bundle, "--frames", 30, "--target-far", 0.5,
                  "--confidence", 0.5)
    assert out.returncode == 0, out.stderr
    written = tmp_path / "cam" / "calibration.yaml"
    calibration = yaml.safe_load(written.read_text())
    (stream,) = streams_from_yaml(sources, SourceOptions())
    detectors = load_detectors([stream], str(bundle))
    events = tmp_path / "events.jsonl"
    stop, reload = threading.Event(), threading.Event()
    config = RunConfig(events=events, drift=True, metrics=tmp_path / "m.prom")
    worker = threading.Thread(target=run, args=(detectors, [stream], config, stop, reload))
    deadline = time.monotonic() + 60

    def reload_and_wait(said: str) -> int:
        """Reload, wait until the log says `said`, then for ten more frames; the frames scored
        before the reload was asked for."""
        before = len(_frame_events(events, "cam"))
        reload.set()
        while not any(said in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, f"never logged: {said}"
            time.sleep(0.1)
        reloaded_at = len(_frame_events(events, "cam"))
        while len(_frame_events(events, "cam")) < reloaded_at + 10:
            assert time.monotonic() < deadline, "the camera stopped"
            time.sleep(0.1)
        return before

    with caplog.at_level(logging.INFO, logger="edge_ad.runner"):
        worker.start()
        try:
            while len(_frame_events(events, "cam")) < 5:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            cv2.imwrite(str(mask), np.full((240, 320), 255, np.uint8))  # painted on a frame of another camera
            reload_and_wait(f"cam: not reloaded, keeps its calibration and mask: cam: --mask {mask} is 320x240 "
                            "pixels, but the frames are 160x120")
            cv2.imwrite(str(mask), np.full((120, 160), 255, np.uint8))
            written.write_text(yaml.safe_dump({k: v for k, v in calibration.items() if k != "drift"}
                                              | {"threshold": 2 * calibration["threshold"]}))  # from an older edge-ad
            reload_and_wait(f"cam: not reloaded, keeps its calibration and mask: {written}: no 'drift' band")
            written.write_text(yaml.safe_dump(calibration | {"threshold": 2 * calibration["threshold"]}))
            asked_at = reload_and_wait(f"cam: threshold {2 * calibration['threshold']:.4f}, was")
        finally:
            stop.set()
            worker.join(timeout=10)
    thresholds = [e["threshold"] for e in _frame_events(events, "cam")]
    changed = thresholds.index(2 * calibration["threshold"])
    assert changed >= asked_at >= 25  # the unusable files changed nothing for 20 frames and more
    assert set(thresholds[:changed]) == {calibration["threshold"]}
    assert set(thresholds[changed:]) == {2 * calibration["threshold"]}
    assert f'edge_ad_threshold{{source="cam",variant=""}} {2 * calibration["threshold"]}' in config.metrics.read_text()


def test_paths_in_the_sources_file_are_taken_from_its_folder(variant_bundles, lit_cells, tmp_path):
    line = tmp_path / "line"
    line.mkdir()
    shutil.copytree(variant_bundles["poly"], line / "bundle")
    shutil.copytree(lit_cells["dim"], line / "frames")
    cv2.imwrite(str(line / "mask.png"), np.full(cv2.imread(str(line / "frames" / "0.png")).shape[:2], 255, np.uint8))
    sources = line / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": "frames", "bundle": "bundle", "mask": "mask.png", "calibration": "calib/cam", "output": "cam.mp4"},
        {"input": "test://ball?width=64&height=48", "name": "test", "bundle": ["a=bundle", "b=/abs/b"]},
    ]}))
    cam, test = streams_from_yaml(sources, SourceOptions())
    assert (cam.name, cam.input, cam.mask, cam.output) == ("frames", str(line / "frames"), str(line / "mask.png"),
                                                          str(line / "cam.mp4"))
    assert (cam.bundle, cam.calibration) == ((str(line / "bundle"),), str(line / "calib" / "cam"))
    assert (test.input, test.bundle) == ("test://ball?width=64&height=48", (f"a={line / 'bundle'}", "b=/abs/b"))

    elsewhere = tmp_path / "elsewhere"  # where the operator's shell is, not the service's folder
    elsewhere.mkdir()
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": "frames", "name": "cam", "bundle": "bundle", "mask": "mask.png", "calibration": "calib/cam",
         "output": "cam.mp4"}]}))
    for command in (["calibrate", "--frames", 6, "--target-far", 0.5, "--confidence", 0.5],
                    ["run", "--events", "events.jsonl"]):
        out = subprocess.run([sys.executable, "-m", "edge_ad", command[0], "--sources", str(sources),
                              *map(str, command[1:])], cwd=elsewhere, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    threshold = yaml.safe_load((line / "calib" / "cam" / "calibration.yaml").read_text())["threshold"]
    assert {e["threshold"] for e in _frame_events(elsewhere / "events.jsonl", "cam")} == {threshold}
    assert (line / "cam.mp4").stat().st_size > 0 and sorted(p.name for p in elsewhere.iterdir()) == ["events.jsonl"]
