"""Real images -> train -> export -> eval and GStreamer streaming, through the edge-ad command."""

import csv
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

from edge_ad import Detector
from edge_ad.device import read_sensors
from export.evaluate import evaluate

from conftest import TINY_INPUT, TINY_PROTOTYPES, edge_ad, full_disk

pytest.importorskip("gi", reason="GStreamer Python bindings (PyGObject) are not installed")


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory, normal_folder):
    work = tmp_path_factory.mktemp("cli")
    edge_ad("train", "--data", normal_folder, "--out", work / "run", "--input-size", 128, "--prototypes", 64,
            check=True)
    edge_ad("export", "--run", work / "run", "--out", work / "bundle", check=True)
    return work / "bundle"


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_threshold_set_on_too_few_images_is_called_so_by_export_run_and_doctor(cli_bundle, normal_folder, tmp_path):
    """Twelve training images hold out one: its score is the threshold, which about every second
    good part exceeds. Each command that a user meets the bundle through says so."""
    said = "is the score of its one validation image, which about 1 good part in 2 exceeds"
    export = edge_ad("export", "--run", cli_bundle.parent / "run", "--out", tmp_path / "bundle", check=True)
    assert "note: the threshold from export (" in export.stdout and said in export.stdout
    run = edge_ad("run", "--bundle", cli_bundle, "--input", normal_folder, check=True)
    assert f"WARNING {normal_folder}: bundle {cli_bundle}: the threshold from export" in run.stderr
    assert said in run.stderr
    doctor = edge_ad("doctor", "--bundle", cli_bundle)
    assert any(line.startswith("threshold    bundle: the threshold from export") and said in line
               for line in doctor.stdout.splitlines()), doctor.stdout


def test_test_pattern_stream(cli_bundle, tmp_path):
    out = edge_ad("run", "--bundle", cli_bundle, "--input", "test://", "--max-frames", 40,
                  "--events", tmp_path / "ev.jsonl", "--snapshots", tmp_path / "snaps", "--snapshot-interval", 0.5,
                  check=True)
    assert "frames 40" in out.stdout and "fps" in out.stdout
    events = _events(tmp_path / "ev.jsonl")
    frames = [e["frame"] for e in events]
    assert len(frames) == 40 and frames == sorted(set(frames))  # live: the newest frame, gaps are drops
    # Frame numbers are the source's (videotestsrc at 30 fps), dropped frames included.
    assert all(b["pts"] - a["pts"] == pytest.approx((b["frame"] - a["frame"]) / 30, abs=1e-3)
               for a, b in zip(events, events[1:]))
    # Colour bars are nothing like solar cells: every frame alarms; snapshots at most every 0.5 s.
    assert all(e["anomaly"] for e in events)
    seconds = events[-1]["timestamp"] - events[0]["timestamp"]
    snapshots = len(list((tmp_path / "snaps").glob("*_overlay.jpg")))
    assert 1 <= snapshots <= seconds / 0.5 + 1


def test_video_file_through_decodebin(cli_bundle, normal_folder, tmp_path):
    video = tmp_path / "cells.avi"
    images = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, images[0].shape[1::-1])
    for image in images:
        writer.write(image)
    writer.release()
    out = edge_ad("run", "--bundle", cli_bundle, "--input", video, "--events", tmp_path / "ev.jsonl", check=True)
    assert f"frames {len(images)}" in out.stdout
    assert len(_events(tmp_path / "ev.jsonl")) == len(images)


def test_eval_on_mvtec_layout_reports_all_metrics(tiny_bundle, mvtec_category, tmp_path):
    edge_ad("eval", "--bundle", tiny_bundle, "--data", mvtec_category, "--json", tmp_path / "m.json",
            "--report", tmp_path / "eval.png", "--scores", tmp_path / "scores.csv", check=True)
    report = json.loads((tmp_path / "m.json").read_text())
    # The picture: histograms and ROC above, two rows of four overlays below (13 x 10.5 in at 80 dpi).
    assert report["picture"] == str(tmp_path / "eval.png")
    assert cv2.imread(report["picture"]).shape == (840, 1040, 3)
    assert report["backend"] == "onnxruntime" and report["precision"] == "fp32"
    assert report["test_images"] == 8
    assert report["image_auroc"] > 0.9  # dark spots on cells are easy
    assert set(report["image_auroc_per_group"]) == {"spot"}
    assert 0.5 < report["pixel_auroc"] <= 1.0 and 0.0 < report["aupro_0.3"] <= 1.0
    detector = Detector.load(tiny_bundle)  # the good parts the bundle's own threshold would reject
    normals = [cv2.imread(str(path)) for path in sorted((mvtec_category / "test" / "good").glob("*.png"))]
    assert report["bundle_threshold"] == detector.threshold
    assert report["normal_images_flagged_by_bundle_threshold"] == sum(detector(i).score >= detector.threshold
                                                                      for i in normals)
    spots = [cv2.imread(str(path)) for path in sorted((mvtec_category / "test" / "spot").glob("*.png"))]
    assert report["anomalous_images_missed_by_bundle_threshold"] == sum(not detector(i).is_anomaly for i in spots)
    passed = evaluate(str(tiny_bundle), str(mvtec_category), min_defect_area=300 * 300)  # all of a picture
    assert passed["anomalous_images_missed_by_bundle_threshold"] == len(spots) == 4
    assert passed["normal_images_flagged_by_bundle_threshold"] == 0
    # The table: every test image by name, with the score and verdict the bundle gives it on its own.
    assert report["scores_file"] == str(tmp_path / "scores.csv")
    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "group", "truth", "score", "threshold", "verdict"]
    pictures = sorted((mvtec_category / "test").glob("*/*.png"))
    assert sorted(row["image"] for row in rows) == [str(path) for path in pictures]
    for row in rows:
        result = detector(cv2.imread(row["image"]))
        assert row["group"] == Path(row["image"]).parent.name
        assert row["truth"] == ("normal" if row["group"] == "good" else "anomalous")
        assert float(row["score"]) == pytest.approx(result.score, abs=1e-5)
        assert float(row["threshold"]) == pytest.approx(detector.threshold, abs=1e-6)
        assert row["verdict"] == ("anomalous" if result.is_anomaly else "normal")
    missed = [row for row in rows if row["truth"] == "anomalous" and row["verdict"] == "normal"]
    assert len(missed) == report["anomalous_images_missed_by_bundle_threshold"]

    # Within an inspection mask, as `run --mask` scores: the maps and pixel metrics of its part only.
    keep = np.zeros((300, 300), np.uint8)
    keep[:, :150] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), keep)
    edge_ad("eval", "--bundle", tiny_bundle, "--data", mvtec_category, "--json", tmp_path / "masked.json",
            "--mask", tmp_path / "mask.png", check=True)
    masked = json.loads((tmp_path / "masked.json").read_text())
    assert masked["mask"]["inspected"] == 0.5 and masked["test_images"] == 8
    assert masked["pixel_auroc"] != report["pixel_auroc"] and 0.0 < masked["aupro_0.3"] <= 1.0
    cv2.imwrite(str(tmp_path / "half.png"), keep[:150])  # a mask of another size names the first test image
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", mvtec_category, "--mask", tmp_path / "half.png")
    assert out.returncode == 2 and "half.png is 300x150 pixels, but the image is 300x300; the mask applies" in out.stderr
    assert f"{mvtec_category / 'test' / 'good' / '000.png'}: --mask" in out.stderr, out.stderr


def test_a_defect_image_without_its_mask_is_left_out_of_the_pixel_metrics(tiny_bundle, mvtec_category, tmp_path):
    import shutil

    from export.evaluate import evaluate

    category = shutil.copytree(mvtec_category, tmp_path / "cell")
    spot_masks = category / "ground_truth" / "spot"
    (spot_masks / "001_mask.png").rename(spot_masks / "001_defect.png")  # named as no test image: said
    (spot_masks / "002_mask.png").rename(spot_masks / "002_GT.png")  # KolektorSDD2's ending: read as 002's
    (category / "test" / "spot" / "masks").mkdir()  # and a folder of masks eval does not read, which it says
    shutil.copy(category / "test" / "spot" / "001.png", category / "test" / "spot" / "masks")
    (category / "test" / "spot" / "IMG_0002.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")  # an iPhone's: said too
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", category, "--json", tmp_path / "m.json", check=True)
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["test_images"] == 8 and report["anomalous_images_without_mask"] == [str(category / "test/spot/001.png")]
    assert "note: 1 anomalous image(s) have no ground-truth mask" in out.stderr and "001.png" in out.stderr
    assert report["masks_of_no_test_image"] == {str(spot_masks): {"images": str(category / "test" / "spot"),
                                                                  "masks": 1, "first": "001_defect.png"}}
    assert f"note: {spot_masks}: 1 mask(s) named as none of the test images of {category / 'test' / 'spot'} (as " \
           "001_defect.png), so not read: a mask is named as its image (000.png), as it with _mask, _GT or _label " \
           "(000_mask.png), or is a folder of its name" in out.stderr
    assert report["pictures_not_read"] == {str(category / "test" / "spot" / "masks"): 1}
    assert f"note: pictures not read, as they lie outside a class folder (a test picture's kind is the class folder " \
           "it is in or below: good/, ok/ or normal/, or a folder per defect), or in a folder of masks (masks/, gt/, " \
           f"label/): {category / 'test' / 'spot' / 'masks'} (1)" in out.stderr
    assert f"note: left out: {category / 'test' / 'spot'}: 1 picture in formats not read (.HEIC, as IMG_0002.HEIC); " \
           "save such pictures as PNG or JPEG to evaluate on them" in out.stderr
    # Its pixels are not counted as normal ones: the pixel metrics are those of the other images.
    without = evaluate(tiny_bundle, str(category), exclude=frozenset(report["anomalous_images_without_mask"]))
    assert (report["pixel_auroc"], report["aupro_0.3"]) == (without["pixel_auroc"], without["aupro_0.3"])
    assert "anomalous_images_without_mask" not in without


def test_masks_saved_beside_their_images_are_their_masks_not_test_images(tiny_bundle, mvtec_category, tmp_path):
    """Labelling tools export a mask beside its image (000_mask.png, KolektorSDD2's 000_GT.png):
    each was scored as one more test image, an anomalous one in a defect's folder."""
    import shutil

    from edge_ad.datasets import load_samples
    from export.eval_report import eval_notes
    from export.evaluate import evaluate

    category = shutil.copytree(mvtec_category, tmp_path / "cell")
    masks = sorted((category / "ground_truth" / "spot").iterdir())
    for i, mask in enumerate(masks):  # 000_mask.png, 001_GT.png, ...
        stem = mask.stem.removesuffix("_mask")
        shutil.move(mask, category / "test" / "spot" / f"{stem}{('_mask', '_GT')[i % 2]}.png")
    shutil.rmtree(category / "ground_truth")
    good = sorted((category / "test" / "good").glob("*.png"))[0]
    shutil.copy(good, good.with_name(f"{good.stem}_label.png"))  # a good part's, marking nothing: not scored either
    moved = sorted(load_samples(str(category), "test"), key=lambda s: s.name)
    expected = sorted(load_samples(str(mvtec_category), "test"), key=lambda s: s.name)
    assert [Path(s.name).relative_to(category) for s in moved] == \
        [Path(s.name).relative_to(mvtec_category) for s in expected]
    for got, want in zip(moved, expected):
        shape = want.image().shape
        assert np.array_equal(got.mask(64, 64, shape), want.mask(64, 64, shape))
    report, original = evaluate(tiny_bundle, str(category)), evaluate(tiny_bundle, str(mvtec_category))
    assert report["test_images"] == original["test_images"] == 8
    assert (report["image_auroc"], report["pixel_auroc"]) == (original["image_auroc"], original["pixel_auroc"])
    assert report["masks_beside_their_images"] == [str(good.with_name(f"{good.stem}_label.png"))] + \
        [str(category / "test" / "spot" / f"{i:03d}{('_mask', '_GT')[i % 2]}.png") for i in range(len(masks))]
    assert f"{len(masks) + 1} picture(s) named as the mask of a test image beside them ({good.parent}" \
           in "\n".join(eval_notes(report))


def test_a_kolektorsdd2_layout_is_labelled_by_the_masks_beside_its_pictures(tiny_bundle, mvtec_category, tmp_path,
                                                                            monkeypatch):
    """KolektorSDD2: train/ and test/ hold pictures, each with its mask beside it (10000_GT.png,
    black for a good part), not sorted into class folders: eval read none of them ("not read, as
    they lie outside a class folder"), and `train --data ksdd2` offered a wildcard over both."""
    import shutil

    import export.eval_report
    from edge_ad.datasets import load_samples
    from edge_ad.errors import DataError
    from export.eval_report import eval_notes
    from export.evaluate import evaluate

    root = tmp_path / "ksdd2"
    shutil.copytree(mvtec_category / "train" / "good", root / "train")
    for picture in sorted((root / "train").iterdir()):
        cv2.imwrite(str(picture.with_name(f"{picture.stem}_GT.png")), np.zeros((300, 300), np.uint8))
    (root / "test").mkdir()
    for picture in sorted((mvtec_category / "test" / "good").iterdir()):
        shutil.copy(picture, root / "test" / f"good{picture.name}")
        cv2.imwrite(str(root / "test" / f"good{picture.stem}_GT.png"), np.zeros((300, 300), np.uint8))
    for picture in sorted((mvtec_category / "test" / "spot").iterdir()):
        shutil.copy(picture, root / "test" / f"spot{picture.name}")
        shutil.copy(mvtec_category / "ground_truth" / "spot" / f"{picture.stem}_mask.png",
                    root / "test" / f"spot{picture.stem}_GT.png")
    report, original = evaluate(tiny_bundle, str(root)), evaluate(tiny_bundle, str(mvtec_category))
    assert (report["normal_images"], report["anomalous_images"]) == (4, 4)
    assert (report["image_auroc"], report["pixel_auroc"]) == (original["image_auroc"], original["pixel_auroc"])
    assert "pictures_not_read" not in report
    assert f"the 8 test images in {root / 'test'} lie outside a class folder, with their masks beside them: labelled " \
           "by those masks, 4 anomalous (a mask that marks a defect) and 4 normal" in eval_notes(report)
    with pytest.raises(DataError, match=re.escape(f"split into train/ and test/: give {root / 'train'} to train on")):
        load_samples(str(root), "train")
    assert len(load_samples(str(root / "train"), "train")) == 12  # the pictures, not their masks
    board = shutil.copytree(root / "test", tmp_path / "kos01")  # KolektorSDD's folder per board, not named test

    def read(data: Path) -> list[tuple]:
        return sorted((s.label, Path(s.name).name, s.mask_path and s.mask_path.name)
                      for s in load_samples(str(data), "test"))

    assert read(board) == read(root) and len(read(board)) == 8
    second = tmp_path / "kos02"  # the boards at once, by a wildcard: before, it "has no test split"
    second.mkdir()
    for picture in sorted(board.glob("spot*")):
        picture.rename(second / picture.name)
    drawn = []
    monkeypatch.setattr(export.eval_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    boards = evaluate(tiny_bundle, pattern := str(tmp_path / "kos*" / "*"), picture=tmp_path / "boards.png")
    assert (boards["image_auroc"], boards["pixel_auroc"]) == (original["image_auroc"], original["pixel_auroc"])
    assert f"the test images {pattern} matches are labelled by their masks (beside them, or in a label folder): 4 " \
           "anomalous (a mask that marks a defect) and 4 normal" in eval_notes(boards)
    named = ["".join(axis.title.get_text().split("\n")[1:]) for axis in drawn[-1].axes[2:]]  # the overlays' titles
    assert [name.split("/")[0] for name in named] == ["kos01"] * 4 + ["kos02"] * 4  # within the wildcard's folder
    kolektor = tmp_path / "KolektorSDD"  # the data set's folder given: eval named no folder to give
    for folder in (board, second):
        shutil.copytree(folder, kolektor / folder.name)
    with pytest.raises(DataError) as error:
        load_samples(str(kolektor), "test")
    assert str(error.value).endswith("; 2 of its subfolders hold pictures labelled by their masks (kos01, kos02): give "
                                     f"one of them, or all of them as a quoted wildcard, '{kolektor / '*' / '*'}'")
    shutil.copytree(root, kolektor / "ksdd2")  # at another depth, and its train/ not among them: no wildcard
    with pytest.raises(DataError) as error:
        load_samples(str(kolektor), "test")
    assert str(error.value).endswith("(kos01, kos02, ksdd2/test): give one of them")

    # calibrate on the training pictures and the test ones as known defects: the 4 good parts of
    # test/ were counted as defects, and a training picture whose mask marks one as a normal frame
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    first = sorted((mvtec_category / "train" / "good").iterdir())[0]
    shutil.copy(mvtec_category / "ground_truth" / "spot" / "000_mask.png", root / "train" / f"{first.stem}_GT.png")
    out = edge_ad("calibrate", "--bundle", bundle, "--input", root / "train", "--defects", root / "test",
                  "--frames", 100, "--target-far", 0.5, "--confidence", 0.5)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert (data["frames"], data["defects"]["frames"]) == (11, 4)
    assert (f"{root / 'test'}: 4 picture(s) that their masks say are of good parts (good000.png) left out; known "
            "defects are pictures of defective parts") in out.stderr


def test_a_dagm_layout_is_labelled_by_the_masks_of_its_label_folders(tiny_bundle, mvtec_category, tmp_path):
    """DAGM 2007: Train/ and Test/ hold pictures, and their Label/ subfolders a mask for each of a
    defective part only (0002_label.PNG). Trained on, its defective pictures were taken for good
    parts; eval found no test split."""
    import shutil

    from edge_ad.datasets import known_defects_left, load_defects, load_samples, training_pictures_left
    from edge_ad.errors import DataError
    from export.eval_report import eval_notes

    root = tmp_path / "Class1"

    def put(split: str, number: int, picture: Path) -> None:
        (root / split / "Label").mkdir(parents=True, exist_ok=True)
        shutil.copy(picture, root / split / f"{number:04d}.PNG")
        mask = mvtec_category / "ground_truth" / "spot" / f"{picture.stem}_mask.png"
        if picture.parent.name == "spot":
            shutil.copy(mask, root / split / "Label" / f"{number:04d}_label.PNG")

    spots = sorted((mvtec_category / "test" / "spot").iterdir())
    for number, picture in enumerate(sorted((mvtec_category / "train" / "good").iterdir()) + spots[:1]):
        put("Train", number, picture)
    for number, picture in enumerate(sorted((mvtec_category / "test" / "good").iterdir()) + spots):
        put("Test", number, picture)
    (root / "Test" / "Label" / "Labels.txt").write_text("1\n")
    train = root / "Train"
    assert [Path(s.name).name for s in load_samples(str(train), "train")] == [f"{i:04d}.PNG" for i in range(12)]
    assert training_pictures_left(str(train)) == [f"{train}: 1 picture(s) that their masks say are of defective "
                                                  "parts (0012.PNG) left out; training takes good parts only"]
    with pytest.raises(DataError, match=re.escape(f"split into train/ and test/: give {train} to train on")):
        load_samples(str(root), "train")
    report, original = evaluate(tiny_bundle, str(root)), evaluate(tiny_bundle, str(mvtec_category))
    assert (report["normal_images"], report["anomalous_images"]) == (4, 4)
    assert (report["image_auroc"], report["pixel_auroc"]) == (original["image_auroc"], original["pixel_auroc"])
    assert f"the 8 test images in {root / 'Test'} lie outside a class folder, with the masks of its defective parts " \
           f"in {root / 'Test' / 'Label'}: labelled by those masks, 4 anomalous" in "\n".join(eval_notes(report))
    assert len(load_defects(str(root / "Test"))) == 4
    assert known_defects_left(str(root / "Test")) == [f"{root / 'Test'}: 4 picture(s) that their masks say are of "
                                                      "good parts (0000.PNG) left out; known defects are pictures of "
                                                      "defective parts"]
    # a folder named label of pictures, not masks (the parts' printed labels): no label folder
    shutil.rmtree(train / "Label")
    (train / "label").mkdir()
    shutil.copy(train / "0000.PNG", train / "label" / "0012.PNG")
    assert len(load_samples(str(train), "train")) == 13


def test_an_mvtec_3d_ad_layout_is_read_from_its_rgb_and_gt_folders(tiny_bundle, mvtec_category, tmp_path):
    """MVTec 3D-AD keeps each class folder's pictures in rgb/, their masks in gt/ (named as they
    are) and depth maps in xyz/: `train` found no picture in train/good and offered a wildcard
    over rgb/ and xyz/ together; eval found no test picture. A class folder given where a folder of
    pictures is read (`run --input`, `calibrate --defects`) offered that wildcard too: it names rgb/."""
    import shutil

    from edge_ad.datasets import load_defects, load_samples, training_pictures_left
    from edge_ad.errors import DataError, SourceError
    from edge_ad.sources import open_source

    root = tmp_path / "bagel"
    for kind in ("train/good", "test/good", "test/spot"):
        for number, picture in enumerate(sorted((mvtec_category / kind).iterdir())):
            for folder in ("rgb", "xyz") + (("gt",) if kind.startswith("test") else ()):
                (root / kind / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(picture, root / kind / "rgb" / f"{number:03d}.png")
            cv2.imwrite(str(root / kind / "xyz" / f"{number:03d}.tiff"), np.zeros((8, 8, 3), np.float32))
            if kind == "test/spot":
                shutil.copy(mvtec_category / "ground_truth" / "spot" / f"{picture.stem}_mask.png",
                            root / kind / "gt" / f"{number:03d}.png")
            elif kind == "test/good":
                cv2.imwrite(str(root / kind / "gt" / f"{number:03d}.png"), np.zeros((300, 300), np.uint8))
    assert len(load_samples(str(root), "train")) == len(load_samples(str(root / "train" / "good"), "train")) == 12
    assert training_pictures_left(str(root)) == []  # xyz/ beside rgb/ is not offered as more pictures
    report, original = evaluate(tiny_bundle, str(root)), evaluate(tiny_bundle, str(mvtec_category))
    assert (report["normal_images"], report["anomalous_images"]) == (4, 4)
    assert (report["image_auroc"], report["pixel_auroc"]) == (original["image_auroc"], original["pixel_auroc"])
    assert "pictures_not_read" not in report
    in_rgb = re.escape(f"{root / 'test' / 'spot'}: no image files (.png .jpg .jpeg .bmp .tif .tiff .webp .pgm .ppm) "
                       f"in the folder; its pictures are in {root / 'test' / 'spot' / 'rgb'} (MVTec 3D-AD's layout; "
                       "its xyz/ holds depth maps, which edge-ad does not read): give that folder")
    with pytest.raises(DataError, match=in_rgb):
        load_defects(str(root / "test" / "spot"))
    with pytest.raises(SourceError, match=in_rgb):
        open_source(str(root / "test" / "spot"))


def test_unreadable_test_images_are_named_together_or_left_out_with_skip_bad(tiny_bundle, mvtec_category, tmp_path):
    """A test set copied from the line may hold a picture cut short: eval stopped at the first one,
    so a set with several took a run for each; now the error names them all, and --skip-bad
    leaves them out, naming them, as train does."""
    import shutil

    from edge_ad.errors import DataError

    category = shutil.copytree(mvtec_category, tmp_path / "cell")
    for kind in ("good", "spot"):
        data = (category / "test" / kind / "000.png").read_bytes()
        (category / "test" / kind / "cut.png").write_bytes(data[: len(data) // 2])
    cut = [f"{category / 'test' / kind / 'cut.png'}: truncated PNG (no IEND chunk)" for kind in ("good", "spot")]
    stopped = edge_ad("eval", "--bundle", tiny_bundle, "--data", category)
    assert stopped.returncode == 2
    assert f"2 unreadable image(s), rerun with --skip-bad to leave them out: {cut[0]}; {cut[1]}" in stopped.stderr
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", category, "--skip-bad", "--json", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["unreadable_images_left_out"] == cut and report["test_images"] == 8
    assert f"note: 2 unreadable test image(s) left out (--skip-bad): {cut[0]}; {cut[1]}" in out.stderr
    assert report["image_auroc"] == evaluate(tiny_bundle, str(mvtec_category))["image_auroc"]
    assert "anomalous_images_without_mask" not in report  # the one left out is not counted as unmasked either
    shutil.rmtree(category / "test" / "spot")
    for path in (category / "test" / "good").glob("0*.png"):
        path.unlink()
    with pytest.raises(DataError, match=r"cell: none of its 1 test images could be read: .*cut.png: truncated PNG"):
        evaluate(tiny_bundle, str(category), skip_bad=True)
    box = shutil.copytree(mvtec_category, tmp_path / "box")  # the one image with a mask left out: no pixel metric
    shutil.rmtree(box / "test" / "good")
    for name in ("002", "003"):
        (box / "test" / "spot" / f"{name}.png").unlink()
    (box / "test" / "spot" / "000.png").write_bytes((box / "test" / "spot" / "000.png").read_bytes()[:500])
    for name in ("001", "002", "003"):
        (box / "ground_truth" / "spot" / f"{name}_mask.png").unlink()
    alone = evaluate(tiny_bundle, str(box), skip_bad=True)
    assert alone["anomalous_images_without_mask"] == [str(box / "test" / "spot" / "001.png")]
    assert alone["test_images"] == 1 and "pixel_auroc" not in alone


def test_eval_says_which_test_images_the_model_was_trained_on(tiny_bundle, mvtec_category, tmp_path, monkeypatch):
    """Pictures sorted on site into good/ and a folder per defect serve to train (--data good,
    --defects spot) and then to evaluate (--data on their folder): the model learnt them, which
    eval now says. Training keeps its pictures' pixel digests in the bundle, so copies of them
    are known too: in another folder, moved, or on another machine (a training folder copied to
    the Jetson). A bundle trained on other pictures, or before training kept them, names none."""
    import shutil

    from export.onnx_export import export_bundle
    from export.train import TrainConfig, train

    site = tmp_path / "site"
    shutil.copytree(mvtec_category / "test", site)
    monkeypatch.chdir(site)  # relative paths, as typed where the pictures are
    config = TrainConfig(data="good", defects="spot", input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES)
    bundle = export_bundle(train(config, tmp_path / "run"), tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    out = edge_ad("eval", "--bundle", bundle, "--data", site, check=True)
    assert json.loads(out.stdout)["test_images_the_model_was_trained_on"] == {"normal": 4, "anomalous": 4}
    assert ("note: 4 normal and 4 anomalous test image(s) are pictures the model was trained on (train's --data, or "
            "its --defects): they score as no new part would") in out.stderr
    site.rename(tmp_path / "moved")
    with monkeypatch.context() as patched:
        patched.setattr(socket, "gethostname", lambda: "jetson-line-3")
        moved = evaluate(str(bundle), str(tmp_path / "moved"))
    assert moved["test_images_the_model_was_trained_on"] == {"normal": 4, "anomalous": 4}
    copies = evaluate(str(bundle), str(mvtec_category))  # the same pictures, in the folder they were copied from
    assert copies["test_images_the_model_was_trained_on"] == {"normal": 4, "anomalous": 4}
    assert "test_images_the_model_was_trained_on" not in evaluate(str(tiny_bundle), str(mvtec_category))
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    del spec["provenance"]["training"]["pictures_sha256"]  # as bundles trained before it
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(spec))
    before = evaluate(str(bundle), str(mvtec_category))
    assert "test_images_the_model_was_trained_on" not in before and before["test_images"] == 8


def test_eval_names_a_picture_sorted_both_as_a_good_part_and_as_a_defect(tiny_bundle, mvtec_category, tmp_path):
    """A picture copied into good/ and into a defect's folder (a slip while sorting by hand) is
    scored alike as both, and costs the AUROC whatever its score: eval names each such pair. A
    picture twice in one kind's folder is no such slip."""
    import shutil

    category = shutil.copytree(mvtec_category, tmp_path / "cell")
    good, spot = category / "test" / "good", category / "test" / "spot"
    shutil.copy(good / "001.png", spot / "copy_of_001.png")
    shutil.copy(spot / "002.png", good / "ok_002.png")
    shutil.copy(good / "003.png", good / "again_003.png")
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", category, check=True)
    assert json.loads(out.stdout)["test_images_of_both_kinds"] == [[str(good / "ok_002.png"), str(spot / "002.png")],
                                                                   [str(good / "001.png"), str(spot / "copy_of_001.png")]]
    assert (f"note: 2 picture(s) are both a normal and an anomalous test image ({good / 'ok_002.png'} = "
            f"{spot / '002.png'}, {good / '001.png'} = {spot / 'copy_of_001.png'}): one of each pair is sorted "
            "into the wrong folder") in out.stderr
    assert "test_images_of_both_kinds" not in evaluate(str(tiny_bundle), str(mvtec_category))


def test_eval_says_when_test_images_are_framed_unlike_the_training_pictures(tiny_bundle, mvtec_category, tmp_path):
    """Test pictures of the whole camera frame, for a model trained on the part cropped: normal
    parts look anomalous, and eval said nothing of why (run and calibrate say it of frames)."""
    category = tmp_path / "cell"
    for picture in (mvtec_category / "test").glob("*/*.png"):
        wide = category / "test" / picture.parent.name / picture.name
        wide.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(wide), cv2.copyMakeBorder(cv2.imread(str(picture)), 0, 0, 150, 150, cv2.BORDER_REPLICATE))
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", category, check=True)
    unlike = json.loads(out.stdout)["test_images_unlike_training"]
    assert len(unlike["images"]) == 8 and unlike["first"].startswith("frames of 600x300 are shaped unlike the pictures")
    assert (f"note: 8 test image(s) look unlike the training pictures, as {unlike['images'][0]}, where run would say: "
            "frames of 600x300") in out.stderr
    assert "test_images_unlike_training" not in evaluate(str(tiny_bundle), str(mvtec_category))


def test_masks_saved_as_zero_and_one_count_and_an_empty_one_is_left_out(tiny_bundle, mvtec_category, tmp_path):
    """Masks saved as 0 and 1 give the pixel metrics of the same masks saved as 0 and 255 (they
    read as no defect at all before); a defect image whose mask marks nothing is left out of the
    pixel metrics and named, as one without its mask."""
    import shutil

    from export.evaluate import evaluate

    drawn = evaluate(tiny_bundle, str(mvtec_category))
    category = shutil.copytree(mvtec_category, tmp_path / "cell")
    for path in sorted((category / "ground_truth" / "spot").glob("*_mask.png")):
        cv2.imwrite(str(path), (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8))
    ones = evaluate(tiny_bundle, str(category))
    assert (ones["pixel_auroc"], ones["aupro_0.3"]) == (drawn["pixel_auroc"], drawn["aupro_0.3"])
    cv2.imwrite(str(category / "ground_truth" / "spot" / "001_mask.png"), np.zeros((300, 300), np.uint8))
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", category, "--json", tmp_path / "m.json", check=True)
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["anomalous_images_with_empty_mask"] == [str(category / "test/spot/001.png")]
    assert "note: 1 anomalous image(s) have a ground-truth mask that marks no pixel" in out.stderr
    without = evaluate(tiny_bundle, str(category), exclude=frozenset(report["anomalous_images_with_empty_mask"]))
    assert (report["pixel_auroc"], report["aupro_0.3"]) == (without["pixel_auroc"], without["aupro_0.3"])


def test_the_scores_table_writes_no_name_a_spreadsheet_would_run(tmp_path):
    """Folder names come from whoever sorted the pictures (a stick, a share): one a spreadsheet
    reads as a formula is written as text, the rest as they are."""
    from export.eval_report import write_eval_scores

    rows = [{"image": f"{start}cmd|' /C calc'!A0/001.png", "group": f"{start}crack", "truth": "anomalous",
             "score": -0.25} for start in ("=", "+", "-", "@", "\t")]
    rows.append({"image": "site/test/crack/002.png", "group": "crack", "truth": "anomalous", "score": 0.5})
    with open(write_eval_scores(rows, tmp_path / "s.csv"), newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [row["image"] for row in read[:5]] == [f"'{row['image']}" for row in rows[:5]]
    assert [row["group"] for row in read] == [f"'{row['group']}" for row in rows[:5]] + ["crack"]
    assert read[5]["image"] == "site/test/crack/002.png" and [row["score"] for row in read] == ["-0.25"] * 5 + ["0.5"]


def test_the_eval_picture_shows_scores_far_under_the_bundle_threshold(tmp_path, monkeypatch):
    """A bundle calibrated on other frames has its threshold far from the test images' scores
    (README: what the picture is for); the bins spanned the scores alone, so those came in bars
    a fraction of a pixel thin beside the threshold's line."""
    import export.eval_report

    drawn = []
    monkeypatch.setattr(export.eval_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    labels, scores = np.array([0] * 6 + [1] * 6), np.r_[np.linspace(0.10, 0.102, 6), np.linspace(0.103, 0.105, 6)]
    report = {"data": "site", "test_images": 12, "normal_images": 6, "normal_images_flagged_by_bundle_threshold": 0,
              "anomalous_images_missed_by_bundle_threshold": 6}
    export.eval_report.write_eval_report(report, labels, scores, 0.9, ([], []), tmp_path / "eval.png")
    hist = drawn[-1].axes[0]
    assert min(bar.get_width() for bar in hist.patches) > 0.9 * (0.9 - 0.1) / 60
    # A model that scores every image alike but for rounding (numpy: "Too many bins for data range")
    alike = np.r_[[0.1] * 6, [0.1000000000000001] * 6]
    export.eval_report.write_eval_report(report, labels, alike, None, ([], []), tmp_path / "eval.png")
    assert sorted(bar.get_height() for bar in drawn[-1].axes[0].patches if bar.get_height())[-2:] == [6, 6]


def test_the_eval_picture_lists_the_notes_eval_prints(tiny_bundle, mvtec_category, tmp_path, monkeypatch):
    """An AUROC of test images the model was trained on says little of new parts, which eval
    printed on the terminal alone: the picture, what is shown to others, showed the AUROC without
    it. It lists the notes eval prints, numbered and wrapped within the picture."""
    import shutil

    import export.eval_report

    drawn = []
    monkeypatch.setattr(export.eval_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    labels, scores = np.array([0] * 6 + [1] * 6), np.r_[np.linspace(0.1, 0.2, 6), np.linspace(0.3, 0.4, 6)]
    long_name = "/srv/site/test/good/" + "line-4-station-2-" * 10 + "001.png"
    report = {"data": "site", "test_images": 12, "normal_images": 6, "normal_images_flagged_by_bundle_threshold": 0,
              "anomalous_images_missed_by_bundle_threshold": 0, "image_auroc": 1.0, "image_auroc_per_group": {},
              "image_f1_threshold": 0.25, "image_f1_max": 1.0,
              "test_images_the_model_was_trained_on": {"normal": 6, "anomalous": 0},
              "test_images_unlike_training": {"images": [long_name], "first": "a frame of 640x480 " * 20}}
    export.eval_report.write_eval_report(report, labels, scores, 0.25, ([], []), tmp_path / "eval.png")
    figure = drawn[-1]
    FigureCanvasAgg(figure).draw()  # the report closed its figure, which took its canvas
    (text,) = figure.texts
    shown = text.get_text()
    assert shown.startswith("notes:\n1. 1 test image(s) look unlike the training pictures, as /srv/site/test/good/")
    assert "\n2. 6 normal and 0 anomalous test image(s) are pictures the model was trained on" in shown
    whole = "".join(shown.split())  # nothing of the notes lost to the wrapping
    assert "aframeof640x480" * 20 + "2.6normal" in whole and long_name in whole
    assert figure.axes[0].get_title() == "site: 12 test images  -  2 notes, below"
    box = text.get_window_extent()
    assert figure.bbox.x0 < box.x0 and box.x1 < figure.bbox.x1 and box.y0 > figure.bbox.y0
    assert all(box.y1 < axis.get_tightbbox().y0 for axis in figure.axes)  # under the histogram, the ROC, the overlays

    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", mvtec_category, "--report", tmp_path / "e.png")
    assert out.returncode == 0 and "note:" not in out.stderr, out.stderr
    site = tmp_path / "site"  # its good parts the pictures the bundle was trained on
    shutil.copytree(mvtec_category / "train" / "good", site / "good")
    shutil.copytree(mvtec_category / "test" / "spot", site / "spot")
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", site, "--report", tmp_path / "n.png")
    assert out.returncode == 0 and "note: 12 normal and 0 anomalous test image(s) are pictures" in out.stderr
    assert cv2.imread(str(tmp_path / "n.png")).shape[0] > cv2.imread(str(tmp_path / "e.png")).shape[0]


def test_long_names_in_the_eval_picture_are_wrapped_within_their_panels(tiny_bundle, mvtec_category, tmp_path,
                                                                        monkeypatch):
    """Eight overlays titled with their test image's absolute path ran into one another, one
    unreadable band, and the histogram's title, naming the data folder, ran past the picture's
    left edge. The overlays name their image within the data folder, and titles are wrapped to
    their panel."""
    import shutil

    import export.eval_report

    drawn = []
    monkeypatch.setattr(export.eval_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    site = shutil.copytree(mvtec_category, tmp_path / ("qa-datasets-line4-station2-december-" * 3) / "cell_images")
    for picture in site.glob("test/*/*.png"):
        picture.rename(picture.with_name(f"IMG_20261207_101512_{picture.name}"))
    evaluate(str(tiny_bundle), str(site), picture=tmp_path / "eval.png")
    figure = drawn[-1]
    FigureCanvasAgg(figure).draw()  # the report closed its figure, which took its canvas
    titles = [axis.title for axis in figure.axes[2:]]  # after the histogram and the ROC: the overlays
    named = ["".join(title.get_text().split("\n")[1:]) for title in titles]  # the wrapped lines under "#1" joined
    assert [name.split("/IMG_20261207_101512_")[0] for name in named] == ["test/good"] * 4 + ["test/spot"] * 4
    for row in (titles[:4], titles[4:]):
        boxes = [title.get_window_extent() for title in row]
        assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))  # apart, not one band
    histogram = figure.axes[0].title.get_window_extent()
    assert figure.bbox.x0 < histogram.x0 and histogram.x1 < figure.axes[1].get_window_extent().x0


def test_names_with_dollar_signs_are_drawn_as_typed_in_every_picture(tiny_bundle, mvtec_category, tmp_path):
    """matplotlib reads what stands between two $ as TeX: a folder of a Windows share mounted with
    its $ came out in the pictures as math, and one with "$\\frac$" in its name stopped them with
    a traceback from the TeX parser. The eval, calibration and events pictures draw names as typed."""
    import shutil

    site = shutil.copytree(mvtec_category, tmp_path / "qs$\\frac$line$_{$" / "cell")
    (site / "test" / "spot").rename(site / "test" / "spot$\\frac$")  # a defect's name, in the ROC's legend
    out = edge_ad("eval", "--bundle", tiny_bundle, "--data", site, "--report", tmp_path / "eval.png")
    assert out.returncode == 0 and cv2.imread(str(tmp_path / "eval.png")) is not None, out.stderr
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    out = edge_ad("calibrate", "--bundle", bundle, "--input", site / "train" / "good", "--frames", 12, "--target-far",
                  0.3, "--confidence", 0.9)
    assert out.returncode == 0 and cv2.imread(str(bundle / "calibration_report.png")) is not None, out.stderr
    events = tmp_path / "events.jsonl"
    out = edge_ad("run", "--bundle", bundle, "--input", site / "test" / "spot$\\frac$", "--events", events,
                  "--snapshots", tmp_path / "snapshots", "--snapshot-interval", 0)
    assert out.returncode == 0 and "alarms 0 " not in out.stdout, out.stderr
    out = edge_ad("report", "--events", events, "--out", tmp_path / "report.png")
    assert out.returncode == 0 and re.search(r"alarm pictures: (\d+) of \1 in", out.stdout), out.stderr
    assert cv2.imread(str(tmp_path / "report.png")) is not None and cv2.imread(str(tmp_path / "report_alarms.png")) \
        is not None


def test_the_eval_histogram_s_legend_hides_no_bar(tmp_path, monkeypatch):
    """The legend, as wide as the histogram with the threshold's and the F1-best's lines in it, stood
    on the bars: the peak of the normal scores and the anomalous ones beside it were under it."""
    import export.eval_report

    drawn = []
    monkeypatch.setattr(export.eval_report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(377, int), np.ones(715, int)]
    scores = np.r_[rng.normal(0.03, 0.04, 377), rng.normal(0.2, 0.1, 715)]  # as ELPV's: the normal peak at the left
    report = {"data": "elpv", "test_images": 1092, "normal_images": 377, "normal_images_flagged_by_bundle_threshold": 1,
              "anomalous_images_missed_by_bundle_threshold": 356, "image_f1_threshold": 0.065, "image_f1_max": 0.88}
    export.eval_report.write_eval_report(report, labels, scores, 0.183, ([], []), tmp_path / "eval.png")
    FigureCanvasAgg(drawn[-1]).draw()  # the report closed its figure, which took its canvas
    hist = drawn[-1].axes[0]
    legend = hist.get_legend()
    assert len(legend.get_texts()) == 4
    box = legend.get_window_extent()
    assert not [bar for bar in hist.patches if bar.get_height() > 0 and bar.get_window_extent().overlaps(box)]


def test_an_eval_picture_the_disk_has_no_room_for_loses_no_metric(tiny_bundle, mvtec_category, tmp_path, monkeypatch):
    import export.eval_report
    from export.evaluate import evaluate

    monkeypatch.setattr(export.eval_report, "save_figure", full_disk)
    monkeypatch.setattr(export.eval_report, "write_atomic", full_disk)
    report = evaluate(tiny_bundle, str(mvtec_category), picture=tmp_path / "eval.png", scores_file=tmp_path / "s.csv")
    assert report["picture_problem"] == f"{tmp_path / 'eval.png'}: not written (No space left on device)"
    assert report["scores_file_problem"] == f"{tmp_path / 's.csv'}: not written (No space left on device)"
    assert "picture" not in report and "scores_file" not in report
    assert report["test_images"] == 8 and report["image_auroc"] > 0.9


def test_examples_run_against_a_bundle(cli_bundle, normal_folder, tmp_path):
    root = Path(__file__).resolve().parents[1] / "examples"
    out = subprocess.run([sys.executable, root / "camera_alarm.py", cli_bundle, "test://", "5"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ANOMALY") == 5
    out = subprocess.run([sys.executable, root / "score_folder.py", cli_bundle, normal_folder, tmp_path / "o"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = (tmp_path / "o" / "scores.csv").read_text().splitlines()
    assert rows[0] == "image,score,anomaly" and len(rows) == 13
    scores = np.array([float(r.split(",")[1]) for r in rows[1:]])
    assert np.isfinite(scores).all()


def test_bench_reports_stages_fps_and_memory(tiny_bundle, tmp_path):
    edge_ad("bench", "--bundle", tiny_bundle, "--frames", 20, "--warmup", 2, "--json", tmp_path / "b.json",
            check=True)
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["frames"] == 20 and report["fps"] > 0
    assert report["backend"] == "onnxruntime" and report["onnxruntime_spin"] is True
    assert report["onnxruntime_u8u8"] is False  # FP32 bundle
    assert set(report["stages_ms"]) == {"preprocess_ms", "encoder_ms", "head_ms", "upsample_ms", "normalise_ms"}
    for stage in report["stages_ms"].values():
        assert 0 <= stage["p50"] <= stage["p99"]
    assert report["latency_ms"]["p50"] >= report["stages_ms"]["encoder_ms"]["p50"]
    assert 0 < report["share_outside_graphs"] < 1
    assert report["peak_rss_mib"] > 50
    here = read_sensors()  # this machine's thermal zones and rails (none in a VM); their values move
    assert set(report["sensors"]["temperatures_c"]) == set(here.temperatures_c)
    assert set(report["sensors"]["power_w"]) == set(here.power_w)


def test_bench_batches_frames_per_call(tiny_bundle, tmp_path):
    edge_ad("bench", "--bundle", tiny_bundle, "--frames", 10, "--warmup", 2, "--batch", 4, "--no-spin",
            "--json", tmp_path / "b.json", check=True)
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["batch"] == 4 and report["frames"] == 12  # rounded up to whole calls of 4 frames
    assert report["onnxruntime_spin"] is False
    assert report["latency_ms"]["p50"] >= report["stages_ms"]["encoder_ms"]["p50"]
    assert 0 < report["share_outside_graphs"] < 1
