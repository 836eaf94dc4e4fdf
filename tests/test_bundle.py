import os
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timedelta

import numpy as np
import pytest
import yaml

from edge_ad.bundle import load_bundle
from edge_ad.detector import Detector
from edge_ad.doctor import doctor
from edge_ad.errors import BundleError, EdgeAdError
from edge_ad.files import state_folder

from conftest import full_disk


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def _edit(bundle, change):
    path = bundle / "bundle.yaml"
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec))


def test_exported_bundle_loads_with_its_numbers(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.input_size == (128, 128)
    assert set(bundle.graphs) == {"encoder", "head"}
    assert bundle.branches == ("head",) and bundle.steps is None
    assert bundle.quantiles[0].value_beta > bundle.quantiles[0].value_alpha
    assert bundle.spec["provenance"]["parity_onnxruntime_vs_torch"]["maps"]["max_abs_diff"] < 1e-3


def test_tar_bundle_loads(tiny_bundle, tmp_path):
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_bundle, arcname="bundle")
    assert load_bundle(archive).input_size == (128, 128)


def test_an_archive_unpacks_once_and_keeps_what_is_written_for_it(tiny_bundle, normal_folder, tmp_path, edge_ad_cache):
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_bundle, arcname="bundle")
    first = load_bundle(archive)
    assert first.root.is_relative_to(edge_ad_cache) and first.calibration is None
    # A site calibration of the archive (as engines built for it) is there when it is loaded again.
    out = subprocess.run([sys.executable, "-m", "edge_ad", "calibrate", "--bundle", archive, "--input", normal_folder,
                          "--frames", "12", "--target-far", "0.3", "--confidence", "0.9"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    again = load_bundle(archive)
    assert again.root == first.root and again.calibration == first.root / "calibration.yaml"
    assert str(again.calibration) in out.stdout
    assert again.threshold == yaml.safe_load(again.calibration.read_text())["threshold"] != first.threshold
    unpacked = sorted((edge_ad_cache / "bundles").iterdir())

    cut_short = tmp_path / "cut.tar"
    cut_short.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BundleError, match="cut.tar: not a readable bundle archive"):
        load_bundle(cut_short)
    assert sorted((edge_ad_cache / "bundles").iterdir()) == unpacked  # nothing half unpacked


@pytest.mark.parametrize("compression, damage", [("gz", "cut"), ("xz", "cut"), ("bz2", "cut"), ("bz2", "flip")])
def test_a_damaged_compressed_archive_is_named(tiny_bundle, tmp_path, monkeypatch, compression, damage):
    monkeypatch.setenv("EDGE_AD_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / f"bundle.tar.{compression}"
    graph = tmp_path / "encoder.onnx"  # 1 MB that does not compress, in place of the 27 MB graph (quicker)
    graph.write_bytes(np.random.default_rng(0).bytes(1 << 20))
    with tarfile.open(archive, f"w:{compression}") as tar:
        tar.add(tiny_bundle / "bundle.yaml", arcname="bundle/bundle.yaml")
        tar.add(graph, arcname="bundle/encoder.onnx")
    data = bytearray(archive.read_bytes())
    if damage == "cut":
        data = data[: len(data) // 3]
    else:  # bytes changed in the compressed stream, as a bad copy does
        data[len(data) // 3 : len(data) // 3 + 2000] = bytes(b ^ 0x5A for b in data[len(data) // 3 : len(data) // 3 + 2000])
    archive.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"bundle\.tar\.{compression}: not a readable bundle archive"):
        load_bundle(archive)
    assert not list((tmp_path / "cache").rglob("bundle.yaml"))  # nothing half unpacked


def test_an_unpack_cleans_up_after_unpacks_killed_half_way(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_AD_CACHE", str(tmp_path / "cache"))
    bundles = tmp_path / "cache" / "bundles"
    old, running = bundles / ".unpacking-killed", bundles / ".unpacking-running"
    for staging in (old, running):
        (staging / "bundle").mkdir(parents=True)
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)  # left two days ago
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_bundle, arcname="bundle")
    assert load_bundle(archive).input_size == (128, 128)
    assert not old.exists() and running.is_dir()  # another process may be unpacking into that one


def test_an_archive_without_a_writable_cache_is_refused_in_one_line(tiny_bundle, tmp_path, monkeypatch):
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_bundle, arcname="bundle")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("EDGE_AD_CACHE", str(tmp_path / "a-file"))
    with pytest.raises(BundleError, match="bundle.tar: cannot unpack the archive into .*set EDGE_AD_CACHE"):
        load_bundle(archive)


def test_a_user_without_a_home_folder_runs_a_bundle_folder_and_is_told_what_to_set(tiny_bundle, tmp_path, no_home):
    # Python's "Could not determine home directory" came from the engines' lookup, for a bundle folder that
    # needs no cache.
    detector = Detector.load(tiny_bundle)
    assert detector(np.zeros((90, 120, 3), np.uint8)).score >= 0
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_bundle, arcname="bundle")
    with pytest.raises(BundleError, match=f"bundle.tar: an archive is unpacked into edge-ad's cache, and {no_home}: "
                                          "set EDGE_AD_CACHE to the folder edge-ad should use"):
        load_bundle(archive)
    with pytest.raises(EdgeAdError, match=f"{no_home}: set XDG_STATE_HOME"):
        state_folder()
    assert [line for line in doctor([str(tiny_bundle)]).lines if line.startswith("state")] == [
        f"state        none: {no_home.replace(chr(92), '')}: set XDG_STATE_HOME to the folder edge-ad should use"]


def test_missing_field_is_named(bundle_copy):
    _edit(bundle_copy, lambda s: s["input"].pop("height"))
    with pytest.raises(BundleError, match=r"bundle.yaml: missing field 'input.height'"):
        load_bundle(bundle_copy)


def test_wrong_type_is_named(bundle_copy):
    _edit(bundle_copy, lambda s: s["normalization"]["branches"][0].update(value_alpha="low"))
    with pytest.raises(BundleError, match=r"field 'normalization.branches\[0\].value_alpha' must be int or float"):
        load_bundle(bundle_copy)


def test_a_provenance_that_is_no_mapping_is_taken_as_none(bundle_copy):
    """A bundle.yaml edited by hand to `provenance: none`: what export recorded is informative only
    (the training pictures' colour, brightness and shape, the clock), and the first frame scored
    stopped on an AttributeError of it."""
    from edge_ad.detector import Detector

    _edit(bundle_copy, lambda s: s.update(provenance="none"))
    detector = Detector.load(bundle_copy)
    assert detector.bundle.training == {} and detector.bundle.clock_note() is None
    assert np.isfinite(detector(np.full((64, 64, 3), 128, np.uint8)).score)


def test_a_negative_smoothing_is_refused_and_none_is_taken(bundle_copy):
    _edit(bundle_copy, lambda s: s["postprocess"].update(smoothing_sigma=-1))  # was taken as no smoothing
    with pytest.raises(BundleError, match=r"field 'postprocess.smoothing_sigma' must be 0 \(no smoothing\) or more, "
                                          "got -1"):
        load_bundle(bundle_copy)
    _edit(bundle_copy, lambda s: s["postprocess"].update(smoothing_sigma=0))
    assert load_bundle(bundle_copy).smoothing_sigma == 0


def test_changed_graph_fails_its_hash(bundle_copy):
    with open(bundle_copy / "head.onnx", "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(BundleError, match=r"head.onnx: SHA-256 does not match field 'graphs.head.sha256'"):
        load_bundle(bundle_copy)


def test_missing_graph_and_malformed_yaml(bundle_copy):
    (bundle_copy / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="'graphs.encoder.file' names encoder.onnx, which is missing"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.yaml").write_text("input: [unclosed\n  height: 3\n")
    with pytest.raises(BundleError, match=r"bundle.yaml: malformed YAML at line"):
        load_bundle(bundle_copy)


def test_unknown_model_type_is_named(bundle_copy):
    _edit(bundle_copy, lambda s: s["model"].update(type="bridge-v9"))
    with pytest.raises(BundleError, match=r"field 'model.type' is 'bridge-v9'"):
        load_bundle(bundle_copy)


def test_other_schema_version_and_not_a_bundle(bundle_copy, tmp_path):
    _edit(bundle_copy, lambda s: s.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version' is 99"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="no bundle.yaml"):
        load_bundle(tmp_path)


def test_site_calibration_overrides_quantiles_and_threshold(bundle_copy):
    spec = yaml.safe_load((bundle_copy / "bundle.yaml").read_text())
    calibration = {"steps": None, "normalization": spec["normalization"], "threshold": 0.75}
    calibration["normalization"]["branches"][0]["value_beta"] += 1.0
    (bundle_copy / "calibration.yaml").write_text(yaml.safe_dump(calibration))
    bundle = load_bundle(bundle_copy)
    assert bundle.threshold == 0.75 and bundle.calibration == bundle_copy / "calibration.yaml"
    assert bundle.quantiles[0].value_beta == calibration["normalization"]["branches"][0]["value_beta"]
    (bundle_copy / "calibration.yaml").write_text(yaml.safe_dump({**calibration, "steps": 4}))
    with pytest.warns(UserWarning, match="made for 4 bridge steps, not None"):
        assert load_bundle(bundle_copy).threshold == spec["threshold"]
    (bundle_copy / "calibration.yaml").write_text("threshold: [0.5\n")
    with pytest.raises(BundleError, match=r"calibration.yaml: malformed YAML"):
        load_bundle(bundle_copy)
    for value in (".nan", ".inf"):  # a threshold of .nan flagged no part, and said nothing
        (bundle_copy / "calibration.yaml").write_text(yaml.safe_dump(calibration).replace("threshold: 0.75",
                                                                                          f"threshold: {value}"))
        with pytest.raises(BundleError, match=r"calibration.yaml: field 'threshold' must be a finite number, got"):
            load_bundle(bundle_copy)


def test_a_threshold_from_too_few_validation_images_says_so_until_a_site_calibration(bundle_copy):
    # The tiny bundle was trained on 12 images: one of them held out, whose score is the threshold.
    note = load_bundle(bundle_copy).export_threshold_note()
    assert note is not None and "the score of its one validation image" in note
    assert "about 1 good part in 2 exceeds (its 1% false-alarm rate needs 100 validation images)" in note
    _edit(bundle_copy, lambda spec: spec["provenance"].update(validation_images=100))  # enough for 1 %
    assert load_bundle(bundle_copy).export_threshold_note() is None
    _edit(bundle_copy, lambda spec: spec["provenance"].update(validation_images=20))
    assert "the highest score of only 20 validation images, which about 1 good part in 21" in \
        load_bundle(bundle_copy).export_threshold_note()
    spec = yaml.safe_load((bundle_copy / "bundle.yaml").read_text())
    (bundle_copy / "calibration.yaml").write_text(yaml.safe_dump(
        {"steps": None, "normalization": spec["normalization"], "threshold": 0.75}))
    assert load_bundle(bundle_copy).export_threshold_note() is None  # the site's threshold judges now


def test_a_clock_behind_the_export_is_named_by_doctor_and_run(bundle_copy, normal_folder):
    bundle = load_bundle(bundle_copy)
    made = datetime.fromisoformat(bundle.spec["provenance"]["created"])
    assert bundle.clock_note() is None  # exported a moment ago, on this machine
    assert bundle.clock_note(made - timedelta(minutes=30)) is None  # another machine's clock, a little behind
    assert f"clock says {made - timedelta(days=400):%Y-%m-%d %H:%M} UTC, before bundle {bundle_copy} was exported " \
           f"({made:%Y-%m-%d %H:%M} UTC)" in bundle.clock_note(made - timedelta(days=400))
    # a device that starts from the last time it saved, months behind: as if the bundle came from the future
    _edit(bundle_copy, lambda spec: spec["provenance"].update(created="2099-01-01T00:00:00+00:00"))
    said = "before bundle %s was exported (2099-01-01 00:00 UTC): events, snapshots and reports would carry wrong times"
    assert any(said % bundle_copy in problem for problem in doctor(str(bundle_copy)).problems)
    out = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", str(bundle_copy), "--input",
                          str(normal_folder), "--max-frames", "2"], capture_output=True, text=True)
    assert out.returncode == 0 and (said % bundle_copy) in out.stderr, out.stderr


def test_frames_shaped_unlike_the_training_pictures_are_named_by_run_and_calibrate(bundle_copy, normal_folder,
                                                                                  tmp_path):
    """A camera that sees more than the part (its training pictures were cropped to the part), is
    turned a quarter, or gives the part far fewer pixels: `run` says so at a source's first frame,
    and `calibrate` among its warnings."""
    import cv2

    from calibration import site
    from edge_ad.detector import Detector

    bundle = load_bundle(bundle_copy)
    assert bundle.spec["provenance"]["training"]["image_shape"] == [300, 300]  # ELPV cells
    assert bundle.frame_shape_note((300, 300, 3)) is None
    assert bundle.frame_shape_note((480, 560, 3)) is None  # less than a fifth wider
    said = f"frames of 400x300 are shaped unlike the pictures bundle {bundle_copy} was trained on (300x300, median)"
    assert bundle.frame_shape_note((300, 400, 3)).startswith(said)
    assert "turned" not in bundle.frame_shape_note((300, 400, 3))
    tiny = (f"frames of 24x24 are 1/12 the size of the pictures bundle {bundle_copy} was trained on (300x300, median), "
            "and its 128x128 input enlarges them 5 times")  # 32x32 cells: 150 of 377 normal ones flagged at 256 px
    assert bundle.frame_shape_note((24, 24, 3)).startswith(tiny)
    assert bundle.frame_shape_note((40, 40, 3)) is None  # enlarged 3.2 times

    wide = tmp_path / "wide"  # the cells in the middle of 4:3 frames, a grey background beside them
    wide.mkdir()
    for picture in sorted(normal_folder.iterdir()):
        frame = cv2.copyMakeBorder(cv2.imread(str(picture)), 0, 0, 50, 50, cv2.BORDER_CONSTANT, value=(128,) * 3)
        cv2.imwrite(str(wide / picture.name), frame)
    out = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", str(bundle_copy), "--input", str(wide),
                          "--max-frames", "3"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.count(said) == 1, out.stderr  # once, at the first frame
    detector = Detector.load(bundle_copy)
    frames = [cv2.imread(str(p)) for p in sorted(wide.iterdir())]
    calibration = site.calibrate(detector, site.collect(detector, iter(frames), len(frames))[None], 0.3, 0.9)
    assert any(w.startswith(said) for w in calibration.warnings)

    _edit(bundle_copy, lambda spec: spec["provenance"]["training"].update(image_shape=[100, 300]))  # rows of cells
    assert ", or is turned a quarter (--input-flip)" in load_bundle(bundle_copy).frame_shape_note((300, 100, 3))
    _edit(bundle_copy, lambda spec: spec["provenance"]["training"].update(image_shape=[16, 16]))  # thumbnails
    small = (f"frames of 160x160 are 10 times the size of the pictures bundle {bundle_copy} was trained on (16x16, "
             "median), which its 128x128 input enlarged 8 times")  # one of 256 px on 32x32 flagged every normal cell
    assert load_bundle(bundle_copy).frame_shape_note((160, 160, 3)).startswith(small)
    assert load_bundle(bundle_copy).frame_shape_note((24, 24, 3)) is None  # frames as small: as it learned them
    _edit(bundle_copy, lambda spec: spec["provenance"]["training"].update(image_shape=[64, 64]))
    assert load_bundle(bundle_copy).frame_shape_note((1024, 1024, 3)) is None  # enlarged 2 times: none flagged
    _edit(bundle_copy, lambda spec: spec["provenance"]["training"].pop("image_shape"))  # a bundle from before
    assert load_bundle(bundle_copy).frame_shape_note((300, 900, 3)) is None


def test_a_grey_camera_in_front_of_a_bundle_trained_on_colour_is_named_by_run_and_calibrate(bundle_copy,
                                                                                            normal_folder):
    """A bundle trained on colour pictures (ELPV cells tinted blue: 74 % of normal cells flagged
    when shown in grey) and a camera that sends grey frames: `run` says so at a source's first
    frame, and `calibrate` among its warnings. Colour frames, and bundles that were trained on grey
    pictures or do not say, are not named."""
    import cv2

    from calibration import site
    from edge_ad.detector import Detector

    assert load_bundle(bundle_copy).frame_colour_note(np.full((8, 8, 3), 100, np.uint8)) is None  # grey cells
    _edit(bundle_copy, lambda spec: spec["provenance"]["training"].update(grey_pictures=False))
    bundle = load_bundle(bundle_copy)
    said = f"the frames are grey, but bundle {bundle_copy} was trained on colour pictures"
    frames = [cv2.imread(str(p)) for p in sorted(normal_folder.iterdir())]
    assert bundle.frame_colour_note(frames[0]).startswith(said) and bundle.frame_colour_note(frames[0][..., 0])
    tinted = np.clip(frames[0] * np.array([1.25, 1.0, 0.8]), 0, 255).astype(np.uint8)
    assert bundle.frame_colour_note(tinted) is None
    out = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", str(bundle_copy), "--input",
                          str(normal_folder), "--max-frames", "3"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.count(said) == 1, out.stderr  # once, at the first frame
    detector = Detector.load(bundle_copy)
    calibration = site.calibrate(detector, site.collect(detector, iter(frames), len(frames))[None], 0.3, 0.9)
    assert any(w.startswith(said) for w in calibration.warnings)
    _edit(bundle_copy, lambda spec: spec["provenance"]["training"].pop("grey_pictures"))  # a bundle from before
    assert load_bundle(bundle_copy).frame_colour_note(frames[0]) is None


def test_pictures_far_darker_than_the_training_ones_are_named_by_run_and_calibrate(bundle_copy, normal_folder,
                                                                                  tmp_path):
    """The cells saved as a 12-bit camera's 16-bit files read at most 16 of 255 (a bundle trained
    on 8-bit cells flagged 19 of 20 normal ones saved so): `run` says so at the first picture of a
    folder, and `calibrate` among its warnings; a live camera's dark frames are said as wanting
    light, not other files; the 8-bit cells and bundles that do not record their pictures'
    brightness are not named."""
    import cv2

    from calibration import site
    from edge_ad.detector import Detector

    bundle = load_bundle(bundle_copy)
    trained = bundle.training["brightest_pixel"]
    assert trained == max(int(cv2.imread(str(p)).max()) for p in normal_folder.iterdir()) > 64  # of all 12 cells
    dark = tmp_path / "dark"
    dark.mkdir()
    for picture in sorted(normal_folder.iterdir()):
        cv2.imwrite(str(dark / picture.name), cv2.imread(str(picture)).astype(np.uint16) << 4)  # 12-bit values
    frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(dark.iterdir())]
    said = (f"of 255, that of the pictures bundle {bundle_copy} was trained on {trained}: 16-bit files of a 10-, "
            "12- or 14-bit camera read this dark")
    assert bundle.dark_frames_note(64).startswith("the brightest pixel") and bundle.dark_frames_note(65) is None

    def run(source: str) -> str:
        out = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", str(bundle_copy), "--input", source,
                              "--max-frames", "3"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stderr

    first = round(frames[0].max() / 257)
    assert run(str(dark)).count(f"the brightest pixel of the frames is {first} {said}") == 1  # at the first picture
    assert "the brightest pixel" not in run(str(normal_folder))
    lit = (f"the brightest pixel of the frames is 0 of 255, that of the pictures bundle {bundle_copy} was trained on "
           f"{trained}: the camera sees too little light (a lens cap")
    assert run("test://black").count(lit) == 1  # a camera's: not its files
    detector = Detector.load(bundle_copy)
    read = [(f // 257).astype(np.uint8) for f in frames]  # as edge_ad reads them
    calibration = site.calibrate(detector, site.collect(detector, iter(read), len(read))[None], 0.3, 0.9)
    brightest = max(int(f.max()) for f in read)  # of all frames
    assert any(w.startswith(f"the brightest pixel of the frames is {brightest} {said}") for w in calibration.warnings)
    calibration = site.calibrate(detector, site.collect(detector, iter(read), len(read), camera=True)[None], 0.3, 0.9)
    assert any(w.startswith(f"the brightest pixel of the frames is {brightest} of 255") and "too little light" in w
               for w in calibration.warnings)
    bright = [cv2.imread(str(p)) for p in sorted(normal_folder.iterdir())]
    calibration = site.calibrate(detector, site.collect(detector, iter(bright), len(bright))[None], 0.3, 0.9)
    assert not any("the brightest pixel" in w for w in calibration.warnings)
    _edit(bundle_copy, lambda spec: spec["provenance"]["training"].pop("brightest_pixel"))  # a bundle from before
    assert load_bundle(bundle_copy).dark_frames_note(10) is None


def test_a_failed_export_leaves_the_bundle_in_its_folder_as_it_was(bundle_copy, tiny_bridge_bundle):
    from edge_ad.errors import DataError
    from export.onnx_export import CalibrationConfig, export_bundle

    bridge_run = tiny_bridge_bundle.parent / "run"
    before = {f.name: f.read_bytes() for f in bundle_copy.iterdir()}
    bad_data = bundle_copy.parent / "no-such-images"
    with pytest.raises(DataError, match="no-such-images"):  # fails after the graphs are written
        export_bundle(bridge_run, bundle_copy, precision="int8", calibration=CalibrationConfig(data=str(bad_data)))
    assert {f.name: f.read_bytes() for f in bundle_copy.iterdir()} == before
    assert load_bundle(bundle_copy).model_type == "prototype"
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]  # nothing half-written beside it

    export_bundle(bridge_run, bundle_copy)  # a finished export replaces it
    assert load_bundle(bundle_copy).model_type == "bridge"
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


def test_a_full_disk_during_export_is_named_and_changes_nothing(bundle_copy, tiny_bundle, monkeypatch):
    import torch

    from edge_ad.errors import EdgeAdError
    from export.onnx_export import export_bundle

    before = {f.name: f.read_bytes() for f in bundle_copy.iterdir()}
    monkeypatch.setattr(torch.onnx, "export", full_disk)
    with pytest.raises(EdgeAdError, match=r"bundle: cannot write the bundle \(No space left on device\)"):
        export_bundle(tiny_bundle.parent / "run", bundle_copy)
    assert {f.name: f.read_bytes() for f in bundle_copy.iterdir()} == before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


def test_a_second_export_into_a_bundle_being_written_is_refused(bundle_copy, tiny_bridge_bundle):
    from edge_ad.errors import EdgeAdError
    from export.onnx_export import _only_export_into, export_bundle

    bridge_run = tiny_bridge_bundle.parent / "run"
    before = {f.name: f.read_bytes() for f in bundle_copy.iterdir()}
    with _only_export_into(bundle_copy.resolve()):  # as an export that is still writing holds it
        staging = bundle_copy.parent / ".bundle.export-partial"
        staging.mkdir()
        (staging / "encoder.onnx").write_bytes(b"half written")
        with pytest.raises(EdgeAdError, match="another export is writing this bundle now"):
            export_bundle(bridge_run, bundle_copy)
        assert {f.name: f.read_bytes() for f in bundle_copy.iterdir()} == before
        assert (staging / "encoder.onnx").read_bytes() == b"half written"  # the running export's files
        shutil.rmtree(staging)
    export_bundle(bridge_run, bundle_copy)  # once it is done
    assert load_bundle(bundle_copy).model_type == "bridge"
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]  # no lock file left


def test_a_training_run_stopped_while_writing_is_not_taken_for_a_finished_one(tiny_bundle, tmp_path, monkeypatch):
    import numpy as np

    from edge_ad.errors import DataError
    from export.train import TrainConfig, load_run, train

    run = tmp_path / "run"
    shutil.copytree(tiny_bundle.parent / "run", run)  # a finished run of 64 prototypes
    record, _, _ = load_run(run)
    monkeypatch.setattr(np, "savez_compressed", full_disk)  # after model.pt, before validation.npz
    config = TrainConfig(**{**record["config"], "prototypes": 32})
    with pytest.raises(OSError, match="No space left"):
        train(config, run)
    # The new model.pt is beside the old validation images: no config.yaml, so not a run.
    with pytest.raises(DataError, match="not a training run .missing config.yaml."):
        load_run(run)
    monkeypatch.undo()
    train(config, run)
    assert load_run(run)[1]["prototypes"].shape[0] == 32
