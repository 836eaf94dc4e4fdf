"""Cameras that look at different parts or views, each with its own bundle, in one run; and
`calibrate` / `record` reading one source of run's --sources file as run opens it."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import MODULE_TYPES, doctor_problems, edge_ad
from edge_ad.detector import Detector
from edge_ad.errors import EdgeAdError
from edge_ad.pipelines import SourceOptions
from edge_ad.runner import RunConfig, load_detectors, run
from edge_ad.streams import Stream, streams_from_yaml
from edge_ad.variants import VariantDetector


@pytest.fixture
def cell_folders(test_cells, tmp_path) -> dict[str, Path]:
    """A folder of four normal test cells per module type: a camera on each type's line."""
    folders = {}
    for module_type in MODULE_TYPES:
        folders[module_type] = tmp_path / f"frames-{module_type}"
        folders[module_type].mkdir()
        for i, cell in enumerate(test_cells[module_type][:4]):
            cv2.imwrite(str(folders[module_type] / f"{i}.png"), cell)
    return folders


def test_each_source_is_scored_by_its_own_bundle(variant_bundles, cell_folders, tmp_path):
    mono, poly = variant_bundles["mono"], variant_bundles["poly"]
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(cell_folders["mono"]), "name": "cam-mono", "bundle": mono},
        {"input": str(cell_folders["poly"]), "name": "cam-poly", "bundle": poly},
        {"input": str(cell_folders["poly"]), "name": "cam-either", "bundle": [f"mono={mono}", f"poly={poly}"]},
        {"input": str(cell_folders["mono"]), "name": "cam-default"},  # the command line's bundle
    ]}))
    streams = streams_from_yaml(sources, SourceOptions())
    detectors = load_detectors(streams, poly)
    assert detectors["cam-default"] is detectors["cam-poly"]  # one bundle named twice is loaded once
    assert isinstance(detectors["cam-either"], VariantDetector)

    events = tmp_path / "events.jsonl"
    summary = run(detectors, streams, RunConfig(events=events))
    assert [(s.name, s.frames) for s in summary.sources] == [(s.name, 4) for s in streams]
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    scores = {s.name: [e["score"] for e in lines if e["source"] == s.name] for s in streams}

    alone = {t: Detector.load(variant_bundles[t]) for t in MODULE_TYPES}
    expected = {t: {u: [alone[t](cv2.imread(str(p))).score for p in sorted(cell_folders[u].glob("*.png"))]
                    for u in MODULE_TYPES} for t in MODULE_TYPES}  # bundle t on cells of type u
    assert not np.allclose(expected["mono"]["mono"], expected["poly"]["mono"], atol=1e-3)  # the bundles disagree
    np.testing.assert_allclose(scores["cam-mono"], expected["mono"]["mono"], atol=1e-5)
    np.testing.assert_allclose(scores["cam-poly"], expected["poly"]["poly"], atol=1e-5)
    np.testing.assert_allclose(scores["cam-default"], expected["poly"]["mono"], atol=1e-5)
    # The variants' source: each normal poly cell judged by the poly bundle, as that bundle alone scores it.
    assert [e["variant"] for e in lines if e["source"] == "cam-either"] == ["poly"] * 4
    np.testing.assert_allclose(scores["cam-either"], expected["poly"]["poly"], atol=1e-5)
    assert all("variant" not in e for e in lines if e["source"] != "cam-either")


def test_bundles_in_sources_are_checked_before_anything_opens(variant_bundles, tiny_bundle, tmp_path):
    sources = tmp_path / "cams.yaml"
    for bundle, error in [
        (3, r"cams.yaml: source 1: 'bundle' must be a bundle path or a list of NAME=PATH, not 3"),
        ([], r"cams.yaml: source 1: 'bundle' must be a bundle path or a list of NAME=PATH, not \[\]"),
        (["a=x", "a=y"], r"cams.yaml: source 1: --bundle 'a=y': a variant named 'a' is already given"),
    ]:
        sources.write_text(yaml.safe_dump({"sources": [{"input": "test://", "bundle": bundle}]}))
        with pytest.raises(EdgeAdError, match=error):
            streams_from_yaml(sources, SourceOptions())

    streams = [Stream("test://", "own", bundle=variant_bundles["mono"]), Stream("test://?width=64", "other")]
    with pytest.raises(EdgeAdError, match=r"other: no bundle to score it with: give --bundle, or 'bundle:'"):
        load_detectors(streams)
    with pytest.raises(EdgeAdError, match=r"source\(s\) \['own'\] name their own bundle or calibration, but one detector was given"):
        run(Detector.load(tiny_bundle), streams, RunConfig())
    with pytest.raises(EdgeAdError, match=r"no detector for source\(s\) \['other'\]"):
        run({"own": Detector.load(tiny_bundle)}, streams, RunConfig())

    out = edge_ad("run", "--input", "test://", "--max-frames", 1)
    assert out.returncode != 0 and "test://: no bundle to score it with" in out.stderr


def test_calibrate_and_record_take_a_source_from_the_sources_file(variant_bundles, cell_folders, tmp_path):
    bundles = {t: tmp_path / f"bundle-{t}" for t in MODULE_TYPES}
    for module_type, bundle in bundles.items():
        shutil.copytree(variant_bundles[module_type], bundle)
    mask = tmp_path / "mask.png"  # the size of the cropped frames: calibration fails unless the crop is applied
    cv2.imwrite(str(mask), np.full((200, 250), 255, np.uint8))
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(cell_folders["mono"]), "name": "line1", "bundle": str(bundles["mono"])},
        {"input": str(cell_folders["poly"]), "name": "line2", "bundle": str(bundles["poly"]),
         "crop": [20, 30, 250, 200], "mask": str(mask)},
    ]}))
    out = edge_ad("calibrate", "--sources", sources, "--source", "line2", "--frames", 4, "--target-far", 0.5,
                  "--confidence", 0.5)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load((bundles["poly"] / "calibration.yaml").read_text())
    assert data["source"] == str(cell_folders["poly"]) and data["frames"] == 4
    assert data["mask"]["file"] == str(mask) and data["mask"]["inspected"] == 1.0
    assert not (bundles["mono"] / "calibration.yaml").exists()  # only the named source's bundle

    out = edge_ad("record", "--sources", sources, "--source", "line2", "--out", tmp_path / "pictures")
    assert out.returncode == 0, out.stderr
    pictures = sorted((tmp_path / "pictures").glob("*.png"))
    first = cv2.imread(str(sorted(cell_folders["poly"].glob("*.png"))[0]))
    assert len(pictures) == 4
    np.testing.assert_array_equal(cv2.imread(str(pictures[0])), first[30:230, 20:270])  # cropped as run crops

    for args, error in [
        (["--source", "line3"], "--source line3: {} names the sources ['line1', 'line2']; give one of them"),
        (["--source", "line1", "--input", "x.mp4"], "--sources: the source is in the YAML file"),
    ]:
        out = edge_ad("calibrate", "--sources", sources, *args)
        assert out.returncode != 0 and error.format(sources) in out.stderr, out.stderr
    out = edge_ad("calibrate", "--bundle", bundles["mono"], "--input", cell_folders["mono"], "--source", "line1")
    assert out.returncode != 0 and "--source line1: needs --sources FILE" in out.stderr


def test_doctor_checks_a_sources_file_as_run_would_start_it(variant_bundles, cell_folders, tmp_path):
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.full((300, 300), 255, np.uint8))
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(cell_folders["mono"]), "name": "cam-mono", "bundle": variant_bundles["mono"], "mask": str(mask)},
        {"input": "test://ball", "name": "cam-test", "output": str(tmp_path / "out.mp4")},
        {"pipeline": "videotestsrc ! nosuchelement ! videoconvert ! appsink name=sink", "name": "cam-own",
         "bundle": variant_bundles["mono"]},
        {"input": "foo://x", "name": "cam-bad", "bundle": variant_bundles["poly"]},
        {"input": "test://", "name": "cam-masked", "bundle": variant_bundles["poly"], "mask": str(tmp_path / "no.png")},
        {"input": "rtsp://admin:Secret123@10.0.0.5/line", "name": "cam-rtsp", "bundle": variant_bundles["mono"]},
    ]}))
    out = edge_ad("doctor", "--sources", sources, "--bundle", variant_bundles["poly"])
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert f"source       cam-mono: image folder, mask {mask} (100% inspected)" in lines
    assert f"source       cam-test: test://ball -> {tmp_path / 'out.mp4'}" in lines
    # Each bundle once, for the sources it scores (--bundle for those without their own).
    assert "source       cam-rtsp: rtsp://admin:***@10.0.0.5/line" in lines and "Secret123" not in out.stdout
    assert lines.count("scores       cam-mono, cam-own, cam-rtsp") == 1
    assert lines.count("scores       cam-test, cam-bad, cam-masked") == 1
    assert sum(line.startswith("bundle ") for line in lines) == 2
    # (Run by a user other than root, cam-rtsp's UDP buffer may be one more: test_device has that.)
    assert doctor_problems(out.stdout) == [
        "problem: source cam-own: GStreamer element nosuchelement is missing: install its plugin",
        "problem: source cam-bad: foo://x: unknown source type (use test://, csi://N, /dev/videoN, genicam://, "
        "rtsp://, rtp://, udp:// (MPEG-TS), http:// (MJPEG), a video file or a folder)",
        f"problem: source cam-masked: {tmp_path / 'no.png'}: cannot read (No such file or directory)",
    ]

    out = edge_ad("doctor", "--sources", sources)  # cam-test has no bundle of its own
    assert "problem: source cam-test: no bundle to score it with" in out.stdout
    out = edge_ad("run", "--sources", sources, "--print-pipeline")
    assert out.stdout.splitlines()[0] == "cam-mono: image folder, read with OpenCV"


def test_record_takes_every_source_at_once_into_a_folder_each(cell_folders, tmp_path):
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": str(cell_folders["mono"]), "name": "line 1"},
        {"input": str(cell_folders["poly"]), "name": "line 2", "crop": [20, 30, 250, 200]},
        {"input": str(cell_folders["poly"]), "name": "line 3"},
    ]}))
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "line-3").write_text("a file where line 3's folder would go")  # that one cannot record
    out = edge_ad("record", "--sources", sources, "--out", tmp_path / "good")
    assert out.returncode == 2, out.stderr
    folders = {name: sorted((tmp_path / "good" / name).glob("*.png")) for name in ("line-1", "line-2")}
    assert [len(pictures) for pictures in folders.values()] == [4, 4]  # the others went on
    first = cv2.imread(str(sorted(cell_folders["poly"].glob("*.png"))[0]))
    np.testing.assert_array_equal(cv2.imread(str(folders["line-2"][0])), first[30:230, 20:270])  # each its own options
    assert f"line 1: 4 pictures in {tmp_path / 'good' / 'line-1'}" in out.stdout
    assert f"line 3: {tmp_path / 'good' / 'line-3'}: cannot create the folder" in out.stdout
    assert "recording stopped early for line 3 (above); the pictures saved are kept" in out.stderr
    sources.write_text(yaml.safe_dump({"sources": [{"input": str(cell_folders["mono"]), "name": "line 1"},
                                                   {"input": str(cell_folders["poly"]), "name": "line-1"}]}))
    out = edge_ad("record", "--sources", sources, "--out", tmp_path / "more")
    assert out.returncode == 2 and "sources ['line 1', 'line-1'] would share the folder line-1" in out.stderr
