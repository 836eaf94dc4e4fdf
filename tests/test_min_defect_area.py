"""A least defect area: with `calibrate --min-defect-area`, a frame is flagged only where a region
of its map that large reaches the threshold, in the detector, `run` and `eval`."""

import hashlib
import json
import shutil

import cv2
import numpy as np
import pytest
import yaml
from skimage.morphology import area_opening

from edge_ad.bundle import site_calibrated
from edge_ad.detector import Detector
from edge_ad.errors import BundleError, DataError
from edge_ad.regions import input_area, region_score
from export.evaluate import evaluate

from conftest import edge_ad

AREA = 5000  # frame pixels of a 300 x 300 ELPV cell: 910 of the tiny model's 128 x 128 map


def _largest_region(above: np.ndarray) -> int:
    count, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    return int(np.bincount(labels.ravel())[1:].max()) if count > 1 else 0


def test_region_score_is_the_highest_level_with_a_region_that_large():
    rng = np.random.default_rng(0)
    for _ in range(40):
        anomaly_map = cv2.GaussianBlur(rng.normal(size=(40, 56)).astype(np.float32), (0, 0), rng.uniform(0.7, 3))
        area = int(rng.integers(1, 400))
        # scikit-image's area opening takes away every bright region smaller than `area`, at every level
        assert region_score(anomaly_map, area) == area_opening(anomaly_map, area, connectivity=2).max()
    inspect = np.zeros(anomaly_map.shape, bool)
    inspect[5:30, 10:50] = True
    inspect[:, 28] = False  # two parts, of 450 and 525 pixels
    levels = np.unique(anomaly_map[inspect])[::-1]
    for area in (1, 30, 300, 500, 999):
        expected = next((level for level in levels if _largest_region((anomaly_map >= level) & inspect) >= area),
                        levels[-1])  # none that large: the lowest level
        assert region_score(anomaly_map, area, inspect) == expected
    assert input_area(900, (300, 300), (256, 256)) == 655  # the same share of the map


def test_a_calibrated_area_flags_frames_by_their_regions(tiny_bundle, normal_folder, mvtec_category, tmp_path):
    bundle, frames = tmp_path / "bundle", tmp_path / "frames"
    shutil.copytree(tiny_bundle, bundle)
    calibrate = ["calibrate", "--bundle", bundle, "--input", normal_folder, "--frames", 12, "--target-far", 0.3,
                 "--confidence", 0.9]
    out = edge_ad(*calibrate, "--min-defect-area", AREA)
    assert out.returncode == 0, out.stderr
    assert f"a frame is flagged where a region of at least {AREA} pixels reaches it" in out.stdout
    assert yaml.safe_load((bundle / "calibration.yaml").read_text())["min_defect_area"] == AREA

    detector = Detector.load(bundle)
    least = input_area(AREA, (300, 300), detector.bundle.input_size)
    cells = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))[:6]]
    spotted = [cv2.circle(cell.copy(), (150, 150), 6, (20, 20, 20), -1) for cell in cells]
    frames.mkdir()
    verdicts, reaching = [], []
    for i, frame in enumerate(cells + spotted):
        cv2.imwrite(str(frames / f"{i:02d}.png"), frame)
        result = detector(frame)
        above = detector.normalised_maps(result.grid_map[None])[0] >= detector.threshold
        assert result.is_anomaly == (_largest_region(above) >= least)
        verdicts.append(result.is_anomaly)
        reaching.append(bool(above.any()))
    assert all(verdicts[6:])  # the spots
    assert any(r and not v for r, v in zip(reaching[:6], verdicts[:6]))  # normal maps reach it in small patches only

    events = tmp_path / "events.jsonl"
    ran = edge_ad("run", "--bundle", bundle, "--input", frames, "--events", events)
    assert ran.returncode == 0, ran.stderr
    assert f"a frame is flagged where a region of at least {AREA} pixels reaches the threshold" in ran.stderr
    assert [json.loads(line)["anomaly"] for line in events.read_text().splitlines()] == verdicts

    assert evaluate(str(bundle), str(mvtec_category))["min_defect_area"] == AREA
    with pytest.raises(DataError, match=r"--min-defect-area 10000000: more pixels than test image .* inspects "
                                        r"\(\d+ of \d+x\d+\)"):  # every image passed, said as an AUROC of 0.5
        evaluate(str(bundle), str(mvtec_category), min_defect_area=10**7)
    doctor = edge_ad("doctor", "--bundle", bundle)
    named = hashlib.sha256((bundle / "calibration.yaml").read_bytes()).hexdigest()[:12]
    assert f"calibration: {bundle / 'calibration.yaml'} ({named}), flags regions of at least {AREA} pixels" in doctor.stdout

    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    (bundle / "broken").mkdir()
    (bundle / "broken" / "calibration.yaml").write_text(yaml.safe_dump(dict(data, min_defect_area=-5)))
    with pytest.raises(BundleError, match=r"field 'min_defect_area' must be positive, got -5"):
        site_calibrated(detector.bundle, bundle / "broken")

    again = edge_ad(*calibrate)  # without it: said, since the line's rule changes
    assert again.returncode == 0, again.stderr
    assert f"the calibration this replaces flagged regions of at least {AREA} pixels only" in again.stdout
    assert "min_defect_area" not in yaml.safe_load((bundle / "calibration.yaml").read_text())


@pytest.mark.parametrize("area, said", [(0, "--min-defect-area: must be a positive integer, got 0"),
                                        (90001, "more pixels than the frames inspect (90000 of 300x300)")])
def test_an_area_that_cannot_apply_is_refused(tiny_bundle, normal_folder, tmp_path, area, said):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    out = edge_ad("calibrate", "--bundle", bundle, "--input", normal_folder, "--frames", 12, "--target-far", 0.3,
                  "--min-defect-area", area)
    assert out.returncode == 2
    assert said in out.stderr
    assert not (bundle / "calibration.yaml").exists()
