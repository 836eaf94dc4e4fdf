"""A bundle's check images, scored at load: a backend that gives broken maps is refused before it
judges a part, one that gives the exported maps passes."""

import json
import re
import shutil

import numpy as np
import pytest
import yaml

import edge_ad.detector
from edge_ad.detector import Detector
from edge_ad.doctor import doctor
from edge_ad.errors import BundleError
from edge_ad.events_report import read_events, write_events_report
from edge_ad.pipelines import SourceOptions
from edge_ad.runner import RunConfig, run
from edge_ad.self_check import CHECK_FILE
from edge_ad.streams import Stream
from export.onnx_export import CHECK_DEFECTS


def _broken(monkeypatch, change) -> None:
    """Every head graph loaded from now on hands back `change(maps)`: an engine or buffer copy gone wrong."""
    load_graphs = edge_ad.detector.load_graphs

    def load(*args, **kwargs):
        backend, graphs = load_graphs(*args, **kwargs)
        head = graphs["head"]
        graphs["head"] = lambda *inputs: [change(head(*inputs)[0]), *head(*inputs)[1:]]
        return backend, graphs

    monkeypatch.setattr(edge_ad.detector, "load_graphs", load)


def test_export_stores_validation_images_with_defects_and_their_reference_maps(tiny_bundle, tiny_bridge_bundle):
    bridge_keys = {"grid_maps_k1", "grid_maps_k2", "grid_maps_k4"}  # each K gives its own maps
    for bundle, keys, in_use in ((tiny_bundle, {"grid_maps"}, "grid_maps"),
                                 (tiny_bridge_bundle, bridge_keys, "grid_maps_k2")):  # K=2: the default
        spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
        validation = spec["provenance"]["validation_images"]  # the tiny runs have one; four at most are kept
        count = spec["check"]["images"]
        assert spec["check"]["file"] == CHECK_FILE and count == min(4, validation) >= 1
        assert spec["check"]["defects"] == list(CHECK_DEFECTS[:count])
        with np.load(bundle / CHECK_FILE) as check, np.load(spec["provenance"]["run"] + "/validation.npz") as run:
            assert set(check.files) == {"inputs"} | keys
            assert check["inputs"].shape == (count, 128, 128, 3) and check["inputs"].dtype == np.uint8
            # each is its validation image with a defect in one region: maps with a place to agree on
            changed = (check["inputs"] != run["inputs"][:count]).any(axis=-1).mean(axis=(1, 2))
            assert ((0.002 < changed) & (changed < 0.5)).all(), changed
            maps = Detector.load(bundle).grid_maps(check["inputs"])
            assert np.allclose(maps, check[in_use], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("change, why", [
    (np.zeros_like, "correlation 0.00"),  # an engine that hands back zeros would pass every part
    (lambda maps: maps * 0.1, "scale 0.10"),  # a lost scale factor: every score ten times too low
    (lambda maps: np.flip(maps, axis=(2, 3)), "correlation"),  # a scrambled layout
])
def test_a_backend_with_broken_maps_is_refused_at_load(tiny_bundle, monkeypatch, change, why):
    assert any(line.startswith("check        bundle: its check images give the maps it was exported with, on "
                               "onnxruntime") for line in doctor(str(tiny_bundle)).lines)
    _broken(monkeypatch, change)
    refusal = (r"maps of the bundle's \d check images are not those it was exported with "
               rf"\(branch 0: .*{why}.*\): the graphs or engines give wrong results here; its graphs gave the "
               r"stored maps at export and their files are intact: suspect the onnxruntime installed here \(edge-ad "
               r"doctor names its version\)$")
    with pytest.raises(BundleError, match=refusal):
        Detector.load(tiny_bundle)
    (problem,) = [p for p in doctor(str(tiny_bundle)).problems if "check images" in p]  # the device's pre-flight check
    assert re.search(refusal, problem) and problem.startswith("bundle cannot be used: ")


def test_a_changed_check_file_fails_its_hash_and_older_bundles_load_without_one(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with np.load(bundle / CHECK_FILE) as check:
        changed = dict(check)
    changed["grid_maps"] = changed["grid_maps"] * 2
    np.savez_compressed(bundle / CHECK_FILE, **changed)
    with pytest.raises(BundleError, match=r"check.npz: SHA-256 does not match field 'check.sha256'"):
        Detector.load(bundle)
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    del spec["check"]  # as bundles exported before the check
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(spec))
    assert Detector.load(bundle).bundle.check is None


def test_maps_that_go_wrong_during_a_run_stop_it(tiny_bundle, normal_folder, tmp_path, monkeypatch):
    """An engine, a driver or a GPU that goes wrong hours into a run: the next self-check stops
    it (systemd starts it again), and what it scored before is in the events."""
    stream = Stream(str(normal_folder), name="cam", options=SourceOptions(loop=-1))
    events = tmp_path / "events.jsonl"
    healthy = run(Detector.load(tiny_bundle), [stream], RunConfig(max_frames=40, self_check_interval_s=0.01))
    assert healthy.frames == 40 and not healthy.sink_errors  # checks between frames disturb nothing

    calls = 0

    def from_the_20th_call(maps):
        nonlocal calls
        calls += 1
        return maps if calls < 20 else np.zeros_like(maps)

    _broken(monkeypatch, from_the_20th_call)
    detector = Detector.load(tiny_bundle)  # its load check passes: the 1st call
    problem = (rf"{tiny_bundle} on onnxruntime: the maps of the bundle's 1 check images are not those it was exported "
               r"with \(branch 0: correlation 0.00 .*\): the graphs or engines give wrong results here; .* \(edge-ad "
               r"doctor names its version\)")
    # A check after every frame (an interval shorter than any frame takes), so that how many frames
    # are scored between the maps going wrong and the next check does not hang on this machine's
    # speed: with 0.01 s, a fast spell scored 20 before the check came, and the bound below failed.
    with pytest.raises(BundleError, match=rf"^self-check during the run: {problem}\. The run stops rather than judge "
                                          r"parts with wrong maps$"):
        run(detector, [stream], RunConfig(events=events, self_check_interval_s=1e-6))
    *scored, failed = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [event["frame"] for event in scored]
    # Every frame scored before it stopped is in the events, and it stopped soon after the maps went
    # wrong: the 20th graph call of frames and checks together.
    assert frames == list(range(len(frames))) and 5 < len(frames) < 20 <= calls
    # The last line says why: the record of what passed the parts shows where it stopped
    assert failed.keys() == {"event", "source", "timestamp", "bundle", "problem"}
    assert (failed["event"], failed["source"], failed["bundle"]) == ("self_check", "cam", scored[-1]["bundle"])
    assert failed["timestamp"] >= scored[-1]["timestamp"] and re.fullmatch(problem, failed["problem"])
    read = read_events(events)
    assert not read.skipped_count and read.sources["cam"].frames == len(frames)
    assert read.sources["cam"].summary().endswith("failed self-checks 1")
    (line,) = read.sources["cam"].failed_checks()
    assert line.startswith("  self-check failed ") and f"bundle {failed['bundle']}: {failed['problem']}" in line
    assert write_events_report(read, tmp_path / "report.png").stat().st_size > 0
