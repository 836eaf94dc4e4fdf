"""Inspection masks: what lies outside the white part of the mask does not count, in the
detector, in `edge-ad run` and in `edge-ad calibrate`; a mask that cannot apply is refused."""

import json
import logging
import re
import shutil

import cv2
import numpy as np
import pytest
import yaml

from edge_ad.detector import Detector, Result
from edge_ad.errors import EdgeAdError, ImageError, SourceError
from edge_ad.masks import InspectionMask
from edge_ad.pipelines import SourceOptions
from edge_ad.render import MASK_COLOUR, NG_COLOUR, overlay
from edge_ad.runner import RunConfig, detectors_of, load_masks, run
from edge_ad.streams import Stream, streams_from_yaml

from conftest import edge_ad

SIZE = 300  # ELPV cells
INSPECTED_FROM = 200  # the mask keeps columns 200-299: the right third


def _spot(image: np.ndarray, x: int) -> np.ndarray:
    """A dark ellipse centred at column x: a defect the tiny model sees at once."""
    out = image.copy()
    cv2.ellipse(out, (x, SIZE // 2), (30, 40), 0, 0, 360, (20, 20, 20), -1)
    return out


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return Detector.load(tiny_bundle)


@pytest.fixture(scope="module")
def cells(normal_folder):
    return [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))[:4]]


@pytest.fixture
def mask_file(tmp_path):
    picture = np.zeros((SIZE, SIZE, 3), np.uint8)
    picture[:, INSPECTED_FROM:] = 255
    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), picture)
    return path


def test_a_defect_outside_the_mask_does_not_count_one_inside_does(detector, cells, mask_file):
    mask = InspectionMask.load(mask_file)
    assert mask.shape == (SIZE, SIZE) and mask.share == pytest.approx(1 / 3, abs=0.01)
    for cell in cells:
        clean, clean_masked = detector(cell), detector(cell, mask=mask)
        outside, inside = _spot(cell, 60), _spot(cell, 250)
        jump = detector(outside).score - clean.score
        assert jump > 0.5  # the spot stands out without a mask
        # With the mask alone it is below the threshold; the features see 40-100 px around them, so
        # a spot 110 px left of the edge (the tiny model's 128 px input: 47 px) still lifts the
        # inspected part a little.
        outside_masked = detector(outside, mask=mask)
        assert outside_masked.score - clean_masked.score < 0.15 * jump
        assert not outside_masked.is_anomaly
        assert not outside_masked.map[:, :INSPECTED_FROM].any()  # nothing shown where nothing is inspected
        assert outside_masked.mask is mask
        assert detector(inside, mask=mask).score - clean_masked.score > 0.5
        assert clean_masked.score <= clean.score


def test_masks_that_cannot_apply_are_refused(detector, cells, mask_file, tmp_path):
    mask = InspectionMask.load(mask_file)
    with pytest.raises(ImageError, match=r"mask.png is 300x300 pixels, but the frames are 150x300"):
        detector(cells[0][:, :150], mask=mask)
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(ImageError, match="black.png: the mask is black everywhere"):
        InspectionMask.load(black)
    speck = np.zeros((SIZE, SIZE), bool)
    speck[10, 10] = True  # one frame pixel: less than half of any pixel of the model's input
    with pytest.raises(ImageError, match="too small to keep a pixel of the model's 128x128 input"):
        detector(cells[0], mask=InspectionMask(speck, "speck"))
    with pytest.raises(ImageError, match="missing.png: cannot read"):
        InspectionMask.load(tmp_path / "missing.png")


def test_overlay_outlines_the_inspected_part(detector, cells, mask_file):
    result = detector(cells[0], mask=InspectionMask.load(mask_file))
    picture = overlay(cells[0], result)
    edge = np.all(picture == MASK_COLOUR, axis=2)
    assert edge[:, INSPECTED_FROM - 2 : INSPECTED_FROM + 3].sum() > SIZE // 2  # the mask's left edge
    assert not edge[:, 20:INSPECTED_FROM - 20].any()
    half = SIZE // 2
    small = overlay(cells[0], result, size=(half, half))  # as a video of a larger camera shows it
    edge = np.all(small == MASK_COLOUR, axis=2)
    assert small.shape == (half, half, 3)
    assert edge[:, INSPECTED_FROM // 2 - 2 : INSPECTED_FROM // 2 + 3].sum() > half // 2
    assert not edge[:, 10:INSPECTED_FROM // 2 - 10].any()
    shrunk = cv2.resize(picture, (half, half), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - shrunk).mean() < 8  # the same picture, smaller


@pytest.mark.parametrize("height, width, variant", [(48, 48, None), (8000, 400, "monocrystalline-m6")])
def test_the_overlay_s_label_lies_within_a_narrow_frame(height, width, variant):
    """'NG 0.186' ran past a 48-pixel frame's right edge, and a variant's name past a line scan
    camera's 400-pixel strip: the label is made smaller to fit."""
    flat = np.zeros((height, width), np.float32)  # no region above the threshold: only the label is drawn
    result = Result(0.186, True, 0.18, flat, (height, width), flat[None], (height, width), 0.0, variant=variant)
    drawn = overlay(np.full((height, width, 3), 100, np.uint8), result)
    label = np.all(drawn == NG_COLOUR, axis=2) | np.all(drawn == 0, axis=2)  # red, outlined in black
    columns = np.nonzero(label.any(axis=0))[0]
    assert len(columns) and columns.max() < width - 2


def test_run_scores_each_source_within_its_mask(detector, cells, mask_file, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, cell in enumerate(cells):  # a spot outside the inspected part, then one inside it
        cv2.imwrite(str(folder / f"{2 * i}.png"), _spot(cell, 60))
        cv2.imwrite(str(folder / f"{2 * i + 1}.png"), _spot(cell, 250))
    events = tmp_path / "events.jsonl"
    streams = [Stream(str(folder), "masked", mask=str(mask_file)), Stream(str(folder), "whole")]
    summary = run(detector, streams, RunConfig(events=events))
    assert summary.frames == 4 * len(cells)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    whole = [e["anomaly"] for e in lines if e["source"] == "whole"]
    masked = [e for e in lines if e["source"] == "masked"]
    assert all(whole) and len(whole) == 2 * len(cells)  # every spot, seen without a mask
    assert [e["anomaly"] for e in masked] == [False, True] * len(cells)
    regions = [r for e in masked for r in e["regions"]]
    assert regions and all(r["x"] >= INSPECTED_FROM for r in regions)

    wrong = tmp_path / "wrong.png"
    cv2.imwrite(str(wrong), np.full((240, 320), 255, np.uint8))
    with pytest.raises(SourceError, match=r"masked: --mask .*wrong.png is 320x240 pixels, but the frames are 300x300"):
        run(detector, [Stream(str(folder), "masked", mask=str(wrong))], RunConfig())


def test_calibrate_within_a_mask_and_run_warns_on_another(tiny_bundle, normal_folder, mask_file, tmp_path, caplog):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    out = edge_ad("calibrate", "--bundle", bundle, "--input", normal_folder, "--frames", 12, "--target-far", 0.3,
                  "--confidence", 0.9, "--mask", mask_file)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert data["mask"]["file"] == str(mask_file) and data["mask"]["inspected"] == pytest.approx(1 / 3, abs=0.01)
    assert len(data["mask"]["sha256"]) == 64
    # The false-alarm count is exact for the frames scored within the mask, as `run` scores them.
    detector, mask = Detector.load(bundle), InspectionMask.load(mask_file)
    scores = [detector(cv2.imread(str(p)), mask=mask).score for p in sorted(normal_folder.glob("*.png"))]
    assert sum(s >= data["threshold"] for s in scores) == data["normal_frames_above_threshold"]
    unmasked = [detector(cv2.imread(str(p))).score for p in sorted(normal_folder.glob("*.png"))]
    assert scores != unmasked
    wrong = tmp_path / "wrong.png"  # a mask of another size: the input is named, the calibration kept
    cv2.imwrite(str(wrong), np.full((100, 100), 255, np.uint8))
    out = edge_ad("calibrate", "--bundle", bundle, "--input", normal_folder, "--frames", 12, "--target-far", 0.3,
                  "--mask", wrong)
    assert out.returncode == 2 and f"{normal_folder}: --mask {wrong} is 100x100 pixels, but the frames are" in out.stderr
    assert yaml.safe_load((bundle / "calibration.yaml").read_text()) == data

    other, copy = tmp_path / "other.png", tmp_path / "copy.bmp"
    cv2.imwrite(str(other), np.full((SIZE, SIZE), 255, np.uint8))
    cv2.imwrite(str(copy), cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE))  # the same pixels in another file
    streams = [Stream("a", "same", mask=str(mask_file)), Stream("b", "none"), Stream("c", "other", mask=str(other)),
               Stream("d", "copy", mask=str(copy))]
    with caplog.at_level(logging.WARNING, logger="edge_ad.runner"):
        masks = load_masks(detectors_of(detector, streams), streams)
    assert masks["none"] is None and masks["same"].shape == (SIZE, SIZE)
    assert f"none: {bundle / 'calibration.yaml'}: calibrated with --mask {mask_file}, scored without one" in caplog.text
    assert f"other: {bundle / 'calibration.yaml'}: scored with --mask {other}, calibrated with another mask" in caplog.text
    assert "same: " not in caplog.text and "copy: " not in caplog.text


def test_a_hand_edited_mask_field_of_a_calibration_is_said_not_raised(mask_file):
    """`mask: abc` in calibration.yaml stopped `run` with an AttributeError traceback."""
    from edge_ad.masks import calibration_mismatch

    mask = InspectionMask.load(mask_file)
    for scored_with in (None, mask):
        assert calibration_mismatch("abc", scored_with) == ("its 'mask' field is 'abc', not what calibrate writes (the "
                                                            "mask's file, size and sha256)")
    assert calibration_mismatch(mask.describe(), mask) is None


def test_masks_from_the_command_line_and_sources_yaml(tiny_bundle, tmp_path, mask_file):
    sources = tmp_path / "cams.yaml"
    sources.write_text(f"sources:\n  - {{input: a.mp4, mask: {mask_file}}}\n  - {{input: b.mp4}}\n")
    first, second = streams_from_yaml(sources, SourceOptions(), default_mask="all.png")
    assert (first.mask, second.mask) == (str(mask_file), "all.png")
    sources.write_text("sources:\n  - {input: a.mp4, mask: [0, 0, 10, 10]}\n")
    with pytest.raises(EdgeAdError, match=r"cams.yaml: source 1: 'mask' must be an image file name"):
        streams_from_yaml(sources, SourceOptions())
    out = edge_ad("run", "--bundle", tiny_bundle, "--input", "test://", "--mask", tmp_path / "none.png")
    assert out.returncode == 2 and "none.png: cannot read (No such file or directory)" in out.stderr


def test_mask_command_draws_rectangles_and_a_preview(normal_folder, tmp_path):
    frame = sorted(normal_folder.glob("*.png"))[0]
    out = tmp_path / "masks" / "line1.png"
    done = edge_ad("mask", "--frame", frame, "--keep", "100,0,200,300", "--ignore", "150,100,50,50", "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"--mask {out}" in done.stdout and "(64% of the frame inspected)" in done.stdout
    small = edge_ad("mask", "--frame", frame, "--keep", "0,0,10,10", "--out", tmp_path / "small.png")
    assert f"({100 / SIZE ** 2:.2%} of the frame inspected)" in small.stdout  # not "0%"
    mask = InspectionMask.load(out)
    expected = np.zeros((SIZE, SIZE), bool)
    expected[:, 100:] = True
    expected[100:150, 150:200] = False
    assert np.array_equal(mask.inspect, expected)
    look = cv2.imread(str(tmp_path / "masks" / "line1_preview.png"))
    original = cv2.imread(str(frame))
    assert np.array_equal(look[5:95, 5:95], original[5:95, 5:95] // 3)  # ignored: darkened
    assert np.array_equal(look[5:95, 110:290], original[5:95, 110:290])  # inspected: as it is
    assert np.all(look[50, 100] == MASK_COLOUR)  # the edge of the inspected part
    # The preview or the frame given for the mask inspected wherever the cell was bright; a JPEG of the mask is one.
    for picture in (tmp_path / "masks" / "line1_preview.png", frame):
        with pytest.raises(ImageError, match=rf"{re.escape(str(picture))}: not a mask: \d+% of its pixels are grey"):
            InspectionMask.load(picture)
    cv2.imwrite(str(tmp_path / "line1.jpg"), cv2.imread(str(out)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert np.array_equal(InspectionMask.load(tmp_path / "line1.jpg").inspect, expected)
    cv2.imwrite(str(tmp_path / "light.png"), expected * np.uint8(200))  # painted light grey: inspected, as documented
    assert np.array_equal(InspectionMask.load(tmp_path / "light.png").inspect, expected)

    outside = edge_ad("mask", "--frame", frame, "--ignore", "250,0,100,10", "--out", out)
    assert outside.returncode == 2 and "rectangle 250,0,100,10 reaches outside the 300x300 frame" in outside.stderr
    nothing = edge_ad("mask", "--frame", frame, "--ignore", "0,0,300,300", "--out", out)
    assert nothing.returncode == 2 and "the mask is black everywhere" in nothing.stderr
    # The frame, to draw another mask on, was written over by the mask (or by its preview).
    shutil.copy(frame, tmp_path / "cam_preview.png")
    for given in (tmp_path / "cam_preview.png", tmp_path / "cam.png"):
        over = edge_ad("mask", "--frame", tmp_path / "cam_preview.png", "--keep", "0,0,10,10", "--out", given)
        assert over.returncode == 2 and "would be written over the --frame picture" in over.stderr
        assert f"give the mask another name (--out {tmp_path / 'cam_preview_mask.png'})" in over.stderr  # not its own
    assert (tmp_path / "cam_preview.png").read_bytes() == frame.read_bytes() and not (tmp_path / "cam.png").exists()


def test_the_inspected_share_is_never_said_as_none_or_all_when_it_is_not():
    """doctor said a mask that inspects a 100x100 part of a 4000x3000 frame "0% inspected", and one
    that leaves out a 20x20 corner of it "100% inspected"; the mask command already said "0.083%"."""
    part = np.zeros((3000, 4000), bool)
    part[:100, :100] = True
    assert InspectionMask(part, "part").share_text == "0.083%"
    assert InspectionMask(~np.pad(np.ones((20, 20), bool), ((0, 2980), (0, 3980))), "corner").share_text == "99.9%"
    assert InspectionMask(np.ones((10, 10), bool), "all").share_text == "100%"
    half = np.zeros((10, 10), bool)
    half[:, :5] = True
    assert InspectionMask(half, "half").share_text == "50%"
