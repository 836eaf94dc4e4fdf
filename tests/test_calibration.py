"""On-site calibration: the false-alarm bound, stability checks, defects, and calibration.yaml."""

import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from datetime import datetime, timedelta

import cv2
import numpy as np
import pytest
import yaml

from calibration import site
from calibration.statistics import (
    CalibrationError,
    bimodality,
    check_defects,
    far_upper_bound,
    frames_needed,
    frames_per_draw,
    near_copies,
    near_duplicates,
    rounded_up,
    threshold_for_far,
)
from edge_ad.detector import Detector
from edge_ad.doctor import doctor

from conftest import TINY_INPUT, TINY_PROTOTYPES, calibrated_copy, edge_ad, full_disk


def test_near_copies_are_found_in_any_order():
    rng = np.random.default_rng(0)
    parts = rng.integers(0, 256, (5, 32, 32)).astype(np.float64)
    pictures = np.clip(parts[[0, 3, 1, 0, 2, 4, 3]] + rng.normal(0, 0.5, (7, 32, 32)), 0, 255)  # camera noise
    copies = [True, True, False, True, False, False, True]  # parts 0 and 3 twice, far apart
    assert near_copies(pictures).tolist() == copies
    assert near_copies(pictures, block=2).tolist() == copies  # blocks of rows find the same
    assert not near_copies(parts).any() and not near_copies(parts[:1]).any()
    assert not near_copies(np.stack([parts[0], parts[0] + 1.5])).any()  # 1.5 grey levels apart everywhere


def test_the_false_alarm_bound_by_hand():
    # No exceedance in N frames: P(all N below | rate p) = (1 - p)^N = 1 - confidence.
    assert far_upper_bound(0, 3000, 0.95) == pytest.approx(1 - 0.05 ** (1 / 3000), rel=1e-9)
    assert frames_needed(0.001, 0.95) == 2995  # the "rule of three": about 3 / rate
    assert far_upper_bound(2995, 2995, 0.95) == 1.0


def test_threshold_keeps_the_bound_and_is_the_lowest_that_does():
    scores = np.random.default_rng(0).normal(size=20_000)
    t = threshold_for_far(scores, 0.001, 0.95)
    assert t.exceedances == int((scores >= t.value).sum())
    assert t.far_bound <= 0.001 < far_upper_bound(t.exceedances + 1, scores.size, 0.95)
    assert 5 <= t.exceedances <= 15  # about 0.0007 * 20000: below the asked rate, by the bound's margin


def test_too_few_frames_are_refused_with_what_to_do():
    """A folder of 12 pictures calibrated with --frames 30 was told to collect more with --frames."""
    with pytest.raises(CalibrationError, match=r"500 normal frames .* at least 2995 are needed \(collect more with "
                                               r"--frames from a source that has them \(a folder or video ends at its "
                                               r"last picture\), or ask for --target-far 0.006 or more\)"):
        threshold_for_far(np.zeros(500), 0.001, 0.95)


@pytest.mark.parametrize("frames, per_draw", [(12, 1.0), (300, 1.0), (500, 1.0), (4000, 1.0), (300, 16.04)])
def test_the_target_far_a_refusal_suggests_is_not_refused_in_turn(frames, per_draw):
    """Rounded to the nearest, 300 frames' smallest rate (0.009937) was said as 0.0099, for which
    302 are needed; 300 frames 16 to a part (18.7 independent ones) were refused 0.15, which 18.43 show."""
    with pytest.raises(CalibrationError) as refused:
        threshold_for_far(np.zeros(frames), 0.0001, 0.95, per_draw)
    suggested = float(re.search(r"--target-far (\S+) or more\)$", str(refused.value))[1])
    exact = 1 - 0.05 ** (per_draw / frames)
    assert exact <= suggested <= 1.1 * exact  # two digits, rounded up
    assert threshold_for_far(np.zeros(frames), suggested, 0.95, per_draw).far_bound <= suggested


def test_a_rate_too_small_for_floating_point_is_refused_by_name():
    """--target-far 1e-17 is 1.0 subtracted from 1, and 1e-320 below what a division can take:
    both stopped calibrate with a ZeroDivisionError traceback."""
    assert frames_needed(1e-17, 0.95) == 299573227355398976  # about 3 / rate, as for 0.001
    with pytest.raises(CalibrationError, match=r"--target-far 1e-320: no number of frames can show a false-alarm "
                                               r"rate that small"):
        threshold_for_far(np.zeros(3000), 1e-320, 0.95)


def test_a_bound_is_said_rounded_up():
    """"false-alarm rate <= X": X is never below the bound (0.009937 was said as 0.0099)."""
    assert [rounded_up(rate) for rate in (0.009937, 0.0099, 0.15, 0.1449, 0.00074, 0.99)] == \
        [0.01, 0.0099, 0.15, 0.15, 0.00074, 0.99]


def test_defects_recall_and_f1_best_threshold_by_hand():
    normal = np.array([0.1, 0.2, 0.3, 0.4])
    defects = np.array([0.35, 0.5, 0.6])
    check = check_defects(normal, defects, threshold=0.45)
    assert check.recall == pytest.approx(2 / 3)
    # At 0.35: TP 3, FP 1 (0.4) -> F1 6/7; at 0.5: TP 2, FP 0, FN 1 -> 4/5.
    assert (check.f1_threshold, check.f1, check.f1_recall, check.f1_false_alarm_rate) == (0.35, pytest.approx(6 / 7), 1.0, 0.25)


def test_frozen_camera_and_two_populations_are_noticed():
    rng = np.random.default_rng(0)
    frozen = np.repeat(rng.integers(0, 255, (1, 32, 32), np.uint8), 50, axis=0)
    assert near_duplicates(frozen) == 1.0
    assert near_duplicates(rng.integers(0, 255, (50, 32, 32), np.uint8)) == 0.0
    assert bimodality(np.concatenate([rng.normal(0, 1, 500), rng.normal(8, 1, 500)])) > 0.555
    assert bimodality(rng.gumbel(size=1000)) < 0.555  # max-type scores of one population
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's precision-loss warning fails this
        for alike in (np.full(40, 0.2, np.float32), 0.2 + 1e-9 * rng.random(40)):  # a frozen camera's scores
            assert bimodality(alike) == 0.0


def test_frames_that_score_alike_count_as_fewer_independent_ones():
    rng = np.random.default_rng(0)
    assert frames_per_draw(rng.gumbel(size=3000)) == 1.0  # frames of different parts
    assert frames_per_draw(np.repeat(rng.gumbel(size=1000), 10)) == pytest.approx(10, rel=0.25)  # 10 frames a part
    ar = np.zeros(20_000)  # scores that follow a slow change: AR(1), rho 0.8, tau = (1 + rho) / (1 - rho) = 9
    for i, noise in enumerate(rng.normal(size=ar.size - 1), start=1):
        ar[i] = 0.8 * ar[i - 1] + noise
    assert frames_per_draw(ar) == pytest.approx(9, rel=0.2)
    assert frames_per_draw(np.repeat(rng.gumbel(size=9), 10)) == 1.0  # 90 frames: too few to tell


def test_a_threshold_counts_frames_that_repeat_as_one():
    """Each score ten times in a row (a part in view for ten frames) gives the threshold of the
    scores once each: the bound counts parts, not frames."""
    scores = np.random.default_rng(1).gumbel(size=4000)
    once, repeated = threshold_for_far(scores, 0.005, 0.95), threshold_for_far(np.repeat(scores, 10), 0.005, 0.95, 10)
    assert repeated.value == once.value and repeated.exceedances == 10 * once.exceedances
    assert repeated.far_bound <= 0.005 and repeated.per_draw == 10
    assert threshold_for_far(np.repeat(scores, 10), 0.005, 0.95).value < once.value  # as if 40,000 parts
    with pytest.raises(CalibrationError, match=r"40000 normal frames, about 10 in a row scoring alike \(a part in view "
                                               r"that long, or neighbouring pictures of a folder that look alike\), "
                                               r"are worth about "
                                               r"4000 independent ones: .* at least 5990 independent ones are needed "
                                               r"\(about 59900 frames at this pace"):
        threshold_for_far(np.repeat(scores, 10), 0.0005, 0.95, 10)


def test_calibrating_on_a_slow_line_counts_its_parts(tiny_bundle, normal_folder, tmp_path):
    """Twelve cells, each in view for ten frames in a row: the threshold's bound counts about
    twelve independent frames, not 120, and a rate that twelve cannot show is refused."""
    bundle, frames = tmp_path / "bundle", tmp_path / "slow-line"
    shutil.copytree(tiny_bundle, bundle)
    frames.mkdir()
    for i, path in enumerate(sorted(normal_folder.glob("*.png"))):
        for j in range(10):
            shutil.copy(path, frames / f"{10 * i + j:03d}.png")
    calibrate = ["calibrate", "--bundle", bundle, "--input", frames, "--frames", 120, "--confidence", 0.9]
    out = edge_ad(*calibrate, "--target-far", 0.3)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    per_draw, above = data["frames_per_independent_frame"], data["normal_frames_above_threshold"]
    assert 3 <= per_draw <= 15  # ten in truth; estimated from twelve cells
    assert data["false_alarm_rate_bound"] == pytest.approx(far_upper_bound(above / per_draw, 120 / per_draw, 0.9),
                                                           rel=1e-3)
    assert data["false_alarm_rate_bound"] <= 0.3
    assert far_upper_bound(above + 10, 120, 0.9) <= 0.3  # as independent frames, a cell more would pass
    assert f"about {120 / per_draw:.0f} independent frames" in out.stdout

    refused = edge_ad(*calibrate, "--target-far", 0.1)  # 22 independent frames needed
    assert refused.returncode == 2
    assert f"are worth about {math.floor(120 / per_draw)} independent ones" in refused.stderr  # below 22, as said
    assert "at least 22 independent ones are needed" in refused.stderr


def test_collecting_says_early_when_the_frames_will_not_be_enough(tiny_bundle, normal_folder, monkeypatch, capsys):
    monkeypatch.setattr(site, "PACE_EVERY", 20)
    monkeypatch.setattr(site, "PACE_FROM", 100)
    detector = Detector.load(tiny_bundle)
    cells = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))]
    slow_line = [cell for cell in cells for _ in range(10)]  # each cell in view for ten frames
    kept = site.collect(detector, iter(slow_line), 120, needed=60)
    assert len(kept[None].samples) == 120
    (said,) = [line for line in capsys.readouterr().out.splitlines() if "score alike" in line]  # once
    assert re.fullmatch(r"about \d+ frames in a row score alike, so the 120 frames will be worth about \d+ independent "
                        r"ones, of the 60 needed: --frames \d+ would do \(Ctrl-C and start again\), or a larger "
                        r"--target-far", said)
    site.collect(detector, iter(slow_line), 120, needed=5)  # enough at this pace: nothing to say
    assert "score alike" not in capsys.readouterr().out


def test_the_report_shows_different_parts(tiny_bundle, normal_folder):
    """The report's highest-scoring normal frames: on a slow line (each cell in view for ten
    frames) the highest-scoring frame of four different cells, not four frames of one cell; with
    a cell per frame, the four highest-scoring frames."""
    detector = Detector.load(tiny_bundle)
    cells = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))]
    ranked = np.argsort([-detector(cell).score for cell in cells])

    slow_line = [cell for cell in cells for _ in range(10)]
    calibration = site.calibrate(detector, site.collect(detector, iter(slow_line), 120)[None], 0.3, 0.9)
    shown = [i // 10 for _, i, _, _, _ in calibration.top]
    assert len(set(shown)) == len(shown) == site.TOP_FRAMES
    assert shown[0] == ranked[0]

    calibration = site.calibrate(detector, site.collect(detector, iter(cells), 12)[None], 0.3, 0.9)
    assert [(i, name) for _, i, _, _, name in calibration.top] == [(i, None) for i in ranked[: site.TOP_FRAMES]]


def test_the_report_names_the_pictures_it_shows(tiny_bundle, normal_folder, tmp_path, monkeypatch):
    """Calibrated on a folder of pictures, the report titled its highest-scoring normal frames
    "frame 27": the person who is to look at the picture (a defective part among the good ones
    raises the threshold) had to count to it. A picture's frame is titled with its name."""
    import calibration.report

    drawn = []
    monkeypatch.setattr(calibration.report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    detector = Detector.load(tiny_bundle)
    pictures = sorted(normal_folder.glob("*.png"))
    ranked = np.argsort([-detector(cv2.imread(str(p))).score for p in pictures])
    names = [f"qa_line4_station2/december_batch_0042/{p.name}" for p in pictures]
    kept = site.collect(detector, (cv2.imread(str(p)) for p in pictures), 12, names=names)[None]
    written = site.calibrate_into(tmp_path, detector, kept, 0.3, 0.9, "line4")
    titles = [axis.title.get_text() for axis in drawn[-1].axes[1:]]  # after the histogram
    assert len(titles) == site.TOP_FRAMES
    for rank, (i, title) in enumerate(zip(ranked, titles)):
        assert title.startswith(f"normal #{rank + 1},") and names[i] in title.replace("\n", ""), title
        lines = title.split("\n")  # wrapped to the panel after a slash, not within a folder's or file's name
        assert len(lines) > 1 and all(any(part in line for line in lines) for part in names[i].split("/")), title
    assert written.report is not None


def test_a_large_cameras_frames_are_kept_small_for_the_report(tiny_bundle, normal_folder, tmp_path):
    """The report's candidate frames were kept whole: calibrating a 12-megapixel camera peaked
    at 1.5 GB (536 MB now). They are kept at most REPORT_FRAME, and the report draws them with
    the mask the frames were scored in."""
    from edge_ad.masks import InspectionMask
    from edge_ad.render import MASK_COLOUR, overlay

    detector = Detector.load(tiny_bundle)
    large = [cv2.resize(cv2.imread(str(p)), (1800, 1500)) for p in sorted(normal_folder.glob("*.png"))]
    inspect = np.zeros((1500, 1800), bool)
    inspect[:, 600:] = True  # the right two thirds
    mask = InspectionMask(inspect, "right")
    kept = site.collect(detector, iter(large), 12, mask=mask)[None]
    written = site.calibrate_into(tmp_path, detector, kept, 0.3, 0.9, "large")
    assert written.report is not None and written.report.stat().st_size > 10_000
    (score, _, frame, normalised, _), *_ = written.calibration.top
    assert frame.shape == (720, 864, 3)  # 1800 x 1500 made to fit 960 x 720
    drawn = overlay(frame, site.overlay_result(score, 0.3, frame, normalised, mask))
    edge = np.all(drawn == MASK_COLOUR, axis=2)
    assert drawn.shape == frame.shape and edge[:, 286:291].sum() > 600  # the mask's edge, at 600 * 864 / 1800
    assert not edge[:, 10:270].any()


def test_the_report_s_histogram_shows_scores_close_together_in_plain_counts(tiny_bundle, normal_folder,
                                                                          monkeypatch, tmp_path):
    """Normal scores 0.005 apart under a threshold far above came in bars too thin to see (the
    bins spanned the scores alone), and a count axis under a decade was labelled 2x10^0 in
    mathtext, which made matplotlib warn of TeX fonts it lacks on every such report."""
    from dataclasses import replace

    import calibration.report

    drawn = []
    monkeypatch.setattr(calibration.report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    detector = Detector.load(tiny_bundle)
    frames = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))]
    written = site.calibrate_into(tmp_path, detector, site.collect(detector, iter(frames), 12)[None], 0.3, 0.9, "x")
    close = replace(written.calibration, scores=np.linspace(0.100, 0.105, 12),
                    threshold=replace(written.calibration.threshold, value=0.5))
    calibration.report.write_calibration_report(close, tmp_path / "report.png")
    hist = drawn[-1].axes[0]
    drawn[-1].canvas.draw()
    assert min(bar.get_width() for bar in hist.patches) > 0.9 * (0.5 - 0.1) / 60  # bins over the threshold too
    labels = [label.get_text() for label in hist.yaxis.get_ticklabels(which="both") if label.get_text()]
    assert "1" in labels and "10" in labels and not any("$" in label for label in labels)
    # Scores equal but for rounding (numpy: "Too many bins for data range") are drawn in one bar.
    rounded = replace(close, scores=np.array([0.1, 0.1000000000000001] * 6),
                      threshold=replace(close.threshold, value=0.1))
    calibration.report.write_calibration_report(rounded, tmp_path / "report.png")
    assert max(bar.get_height() for bar in drawn[-1].axes[0].patches) == 12


def test_the_report_lists_the_warnings_and_names_the_source(tiny_bundle, normal_folder, monkeypatch, tmp_path):
    """The report said "3 warning(s)" and not which: the picture is what is opened later, or sent
    to a colleague, without the terminal calibrate printed them on. It lists them, wrapped within
    the picture, and names the source and the time of the calibration."""
    from dataclasses import replace

    import calibration.report

    drawn = []
    monkeypatch.setattr(calibration.report, "save_figure", lambda figure, path, dpi: drawn.append(figure))
    detector = Detector.load(tiny_bundle)
    frames = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))]
    kept = site.collect(detector, iter(frames), 12)[None]
    try:
        with monkeypatch.context() as zone:
            zone.setenv("TZ", "CET-1")  # the machine's zone: an hour east of UTC (POSIX's form, without tzdata)
            time.tzset()
            written = site.calibrate_into(tmp_path, detector, kept, 0.3, 0.9, "rtsp://cam2.line/stream")
    finally:
        time.tzset()
    made = datetime.fromisoformat(written.data["created"]) + timedelta(hours=1)  # written in UTC
    assert drawn[-1].axes[0].get_title().startswith(
        f"rtsp://cam2.line/stream, {made:%Y-%m-%d %H:%M} CET\ncalibration on 12 ")

    long_path = "/srv/pictures/" + "line-4-station-2-" * 8 + "good"
    warnings = ["the normal scores look bimodal: two products or a light change?",
                f"40 of the 40 frames of {long_path} are pictures the model was trained on " + "and so on " * 40]
    calibration.report.write_calibration_report(replace(written.calibration, warnings=warnings),
                                                tmp_path / "report.png", written.data | {"source": long_path})
    figure = drawn[-1]
    title_text = figure.axes[0].get_title()
    assert title_text.endswith("2 warnings, below")
    (text,) = figure.texts
    shown = text.get_text()
    assert shown.startswith("warnings:\n1. the normal scores look bimodal") and "\n2. 40 of the 40 frames" in shown
    assert "".join(shown.split()).endswith("andsoon" * 40) and "line-4-station-2-" in shown
    figure.canvas.draw()
    title = figure.axes[0].title.get_window_extent()
    assert figure.bbox.x0 < title.x0 and title.x1 < figure.bbox.x1 and long_path in "".join(title_text.split())
    assert figure.bbox.x0 < text.get_window_extent().x0 and text.get_window_extent().x1 < figure.bbox.x1
    assert text.get_window_extent().y0 > figure.bbox.y0  # none of it below the picture's edge
    assert all(text.get_window_extent().y1 < axis.get_tightbbox().y0 for axis in figure.axes)  # nor over the frames
    label = figure.axes[0].xaxis.label.get_window_extent().y0
    assert all(label > axis.title.get_window_extent().y1 for axis in figure.axes[1:])  # titles under the histogram

    calibration.report.write_calibration_report(replace(written.calibration, warnings=[]), tmp_path / "report.png")
    assert not drawn[-1].texts and "warning" not in drawn[-1].axes[0].get_title()


def test_calibrate_command_writes_calibration_the_runtime_uses(tiny_bundle, normal_folder, mvtec_category, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    defects = mvtec_category / "test" / "spot"
    args = ["calibrate", "--bundle", bundle, "--input", normal_folder, "--frames", 12, "--target-far", 0.3,
            "--confidence", 0.9, "--defects", defects]
    out = edge_ad(*args)
    assert out.returncode == 0, out.stderr
    assert "known defects 4: recall" in out.stdout
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert data["frames"] == 12 and data["source"] == str(normal_folder)
    assert data["false_alarm_rate_bound"] <= 0.3 and data["defects"]["frames"] == 4
    assert data["drift"]["low"] <= data["normal_scores"]["p50"] <= data["drift"]["high"]
    assert (bundle / "calibration_report.png").stat().st_size > 10_000
    detector = Detector.load(bundle)
    assert detector.bundle.calibration == bundle / "calibration.yaml"
    assert detector.threshold == pytest.approx(data["threshold"])
    assert detector.bundle.quantiles[0].value_beta == pytest.approx(data["normalization"]["branches"][0]["value_beta"])
    # The calibrated false-alarm count is exact on the frames it was made from: calibration
    # scores them as the runtime does, and the threshold sits one step above a normal score.
    scores = [detector(cv2.imread(str(p))).score for p in sorted(normal_folder.glob("*.png"))]
    assert sum(s >= data["threshold"] for s in scores) == data["normal_frames_above_threshold"]

    first = (bundle / "calibration.yaml").read_text()
    out = edge_ad(*args, "--threshold", "f1")
    assert out.returncode == 0, out.stderr
    assert (bundle / "calibration.yaml.bak").read_text() == first
    f1 = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert f1["threshold_from"] == "f1" and f1["threshold"] == f1["defects"]["f1_threshold"]
    # The count above it, the bound and the recall recorded are the F1-best threshold's: they were
    # the false-alarm threshold's, recorded beside another threshold.
    scores = [Detector.load(bundle)(cv2.imread(str(p))).score for p in sorted(normal_folder.glob("*.png"))]
    above = sum(s >= f1["threshold"] for s in scores)
    assert above == f1["normal_frames_above_threshold"] == round(f1["defects"]["f1_false_alarm_rate"] * 12)
    assert above != data["normal_frames_above_threshold"] and f1["frames_per_independent_frame"] == 1
    assert f1["false_alarm_rate_bound"] == pytest.approx(far_upper_bound(above, 12, 0.9))
    assert f1["defects"]["recall"] == f1["defects"]["f1_recall"]
    assert f"threshold {f1['threshold']:.4f} (f1)  false-alarm rate <= " in out.stdout
    assert (f"the calibration this replaces ({bundle / 'calibration.yaml'}) flags "  # on the same frames: exact
            f"{data['normal_frames_above_threshold']} of these 12 frames (its threshold {data['threshold']:.4f})\n"
            ) in out.stdout
    assert Detector.load(bundle).bundle.threshold_is_f1 and not detector.bundle.threshold_is_f1
    again = edge_ad(*args)  # without --threshold f1 again: said, as a --min-defect-area left out is
    assert again.returncode == 0, again.stderr
    assert ("note: the calibration this replaces had the known defects' F1-best threshold; this one keeps to "
            "--target-far 0.3 (--threshold f1 to keep that)\n") in again.stdout
    refused = edge_ad("calibrate", "--bundle", bundle, "--input", normal_folder, "--threshold", "f1")
    assert refused.returncode == 2 and "normal frames:" not in refused.stderr  # before any frame is read
    assert refused.stderr.strip().endswith("--threshold f1 needs --defects: the F1-best threshold is set between the "
                                           "normal frames' scores and the known defects'")


def test_eval_says_which_test_images_the_calibration_in_use_was_made_on(tiny_bundle, mvtec_category, tmp_path,
                                                                       monkeypatch):
    """Pictures sorted on site serve to calibrate there and then to evaluate, often on the
    workstation they were copied to: the counts of what the threshold flags and passes of pictures
    it was set on are no test of it, which eval says. calibrate lists its frames and known defects
    by their pixels beside calibration.yaml, so copies under other names, in another folder or on
    another machine, are known."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    monkeypatch.chdir(mvtec_category)  # relative paths, as typed where the pictures are
    edge_ad("calibrate", "--bundle", bundle, "--input", "test/good/*.png", "--frames", 4, "--target-far", 0.5,
            "--confidence", 0.9, "--defects", "test/spot", check=True)
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert (data["source"], data["source_path"]) == ("test/good/*.png", str(mvtec_category / "test/good/*.png"))
    assert data["defects"]["source"] == "test/spot" and data["defects"]["source_path"] == str(mvtec_category / "test/spot")
    listed = (bundle / "calibration_pictures.csv").read_text().splitlines()
    assert listed[0] == "kind,digest,picture" and len(listed) == 9
    assert {tuple(row.split(",")[::2]) for row in listed[1:]} == {
        (kind, f"{i:03d}.png") for kind in ("normal", "defect") for i in range(4)}
    copied = tmp_path / "workstation" / "cell"  # the sorted pictures copied, renamed
    for folder in ("test/good", "test/spot"):
        (copied / folder).mkdir(parents=True)
        for path in sorted((mvtec_category / folder).glob("*.png")):
            shutil.copyfile(path, copied / folder / f"part_{path.name}")
    monkeypatch.chdir(tmp_path)
    out = edge_ad("eval", "--bundle", bundle, "--data", copied, check=True)
    assert json.loads(out.stdout)["test_images_the_calibration_was_made_on"] == {"normal": 4, "anomalous": 4}
    assert ("note: 4 normal and 4 anomalous test image(s) are pictures the calibration in use was made on (its "
            "frames, or its --defects): the threshold was set on them") in out.stderr
    import export.evaluate

    monkeypatch.setattr(socket, "gethostname", lambda: "workstation")  # calibrated on the line's machine
    assert export.evaluate.evaluate(bundle, str(copied))["test_images_the_calibration_was_made_on"] == {
        "normal": 4, "anomalous": 4}
    monkeypatch.undo()
    edge_ad("calibrate", "--bundle", bundle, "--input", "test://", "--frames", 4, "--target-far", 0.5,
            "--confidence", 0.9, check=True)  # a camera's frames: no pictures to tell, and the old list is not its own
    assert "source_path" not in yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert (bundle / "calibration_pictures.csv").is_file()
    assert "test_images_the_calibration_was_made_on" not in json.loads(
        edge_ad("eval", "--bundle", bundle, "--data", copied, check=True).stdout)


def test_a_calibration_put_back_in_use_is_read_with_its_own_list_of_pictures(tiny_bundle, mvtec_category, tmp_path):
    """A recalibration keeps the calibration it replaces as calibration.yaml.bak, for the plant to
    put back; the list of pictures that calibration was made on was overwritten by the new one's,
    so eval no longer said which test images the calibration put back was made on. The list it
    replaces is kept beside it, and read with it."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    edge_ad("calibrate", "--bundle", bundle, "--input", mvtec_category / "test" / "good", "--frames", 4,
            "--target-far", 0.5, "--confidence", 0.9, "--defects", mvtec_category / "test" / "spot", check=True)
    first = Detector.load(bundle).bundle.calibration_pictures()
    assert sorted(first.values()) == ["defect"] * 4 + ["normal"] * 4
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    site.save(bundle, data, [("normal", "0" * 32, "other.png")])  # a calibration on other pictures
    assert Detector.load(bundle).bundle.calibration_pictures() == {"0" * 32: "normal"}
    (bundle / "calibration.yaml.bak").replace(bundle / "calibration.yaml")
    assert Detector.load(bundle).bundle.calibration_pictures() == first


def test_calibrate_says_which_of_its_pictures_the_model_was_trained_on(mvtec_category, tmp_path):
    """A model scores its own training pictures lower than new good parts: a threshold set on them
    flagged 60 of 80 new good cells where its bound said at most 14 % (README). calibrate now says
    how many of its frames, and of its known defects, are pictures the model was trained on,
    copies too (a training folder copied from the workstation to the Jetson); and it refuses known
    defects among the normal frames (a wildcard over good/ and the defects' folder, before reading;
    a rejected part copied into good/, by its pixels) and a live source as --defects (read for
    ever before)."""
    from export.onnx_export import export_bundle
    from export.train import TrainConfig, train

    site = shutil.copytree(mvtec_category / "test", tmp_path / "site")
    config = TrainConfig(data=str(site / "good"), defects=str(site / "spot"), input_size=TINY_INPUT,
                         prototypes=TINY_PROTOTYPES)
    bundle = export_bundle(train(config, tmp_path / "run"), tmp_path / "bundle")
    settings = ("--frames", 4, "--target-far", 0.5, "--confidence", 0.9)
    out = edge_ad("calibrate", "--bundle", bundle, "--input", site / "good", *settings, "--defects", site / "spot",
                  check=True)
    said = [f"4 of the 4 frames of {site / 'good'} are pictures the model was trained on (train --data): it "
            "scores them lower than new good parts, so a threshold set on them flags more of those than its bound says",
            f"4 of the 4 known defects of {site / 'spot'} are pictures the model was trained on (train --defects)"]
    for warning in said:
        assert f"warning: {warning}" in out.stdout
    warnings = yaml.safe_load((bundle / "calibration.yaml").read_text())["warnings"]
    assert sum(warning.startswith(tuple(said)) for warning in warnings) == 2  # recorded as well as said
    other = edge_ad("calibrate", "--bundle", bundle, "--input", mvtec_category / "train" / "good", *settings,
                    check=True)  # pictures of the same part kept out of training
    assert "the model was trained on" not in other.stdout
    both = edge_ad("calibrate", "--bundle", bundle, "--input", site / "**" / "*", *settings, "--defects", site / "spot")
    assert both.returncode == 2 and (f"--defects {site / 'spot'}: 4 of its pictures are frames of --input "
                                     f"{site / '**' / '*'} too ({site / 'spot' / '000.png'}, ") in both.stderr
    mixed = shutil.copytree(site / "good", tmp_path / "mixed")
    shutil.copy(site / "spot" / "001.png", mixed / "000a.png")  # a rejected part copied among the good ones
    copied_in = edge_ad("calibrate", "--bundle", bundle, "--input", mixed, *settings, "--defects", site / "spot")
    assert copied_in.returncode == 2 and (f"--defects {site / 'spot'}: 1 of its pictures are frames of --input {mixed} "
                                          "too (001.png): a part is good or rejected") in (
        copied_in.stderr)
    live = edge_ad("calibrate", "--bundle", bundle, "--input", site / "good", *settings, "--defects", "test://")
    assert live.returncode == 2 and "--defects test://: a live source's frames do not end" in live.stderr
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    spec["provenance"]["training"]["host"] = "workstation"  # trained there, and its pictures copied here
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(spec))
    copied = shutil.copytree(site / "good", tmp_path / "copied")
    elsewhere = edge_ad("calibrate", "--bundle", bundle, "--input", copied, *settings, check=True)
    assert f"warning: 4 of the 4 frames of {copied} are pictures the model was trained on (train --data)" in (
        elsewhere.stdout)


def test_calibrate_opens_the_camera_as_run_does(tiny_bundle, tmp_path):
    """Calibrate takes run's source options and own pipelines: the frames it calibrates on are
    the frames run will score."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    pipeline = ("videotestsrc num-buffers=12 pattern=ball ! video/x-raw,width=128,height=96 ! videoconvert ! "
                "video/x-raw,format=BGR ! appsink name=sink")
    out = edge_ad("calibrate", "--bundle", bundle, "--pipeline", pipeline, "--frames", 12, "--target-far", 0.3,
                  "--confidence", 0.9)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert (data["source"], data["frames"]) == (pipeline, 12)
    out = edge_ad("calibrate", "--bundle", bundle, "--pipeline", pipeline, "--input-flip", "clockwise")
    assert out.returncode == 2
    assert "put videoflip (nvvidconv flip-method on a Jetson) in your own pipeline" in out.stderr
    out = edge_ad("calibrate", "--bundle", bundle, "--input", "rtsp://cam/s", "--input-codec", "raw")
    assert out.returncode == 2 and "rtsp://cam/s: codec 'raw' is not supported" in out.stderr
    out = edge_ad("calibrate", "--bundle", bundle)
    assert out.returncode == 2
    assert "no input: give --input (a camera, stream, video file or folder) or --pipeline" in out.stderr


def test_too_few_frames_on_the_command_line(tiny_bundle, normal_folder, mvtec_category, tmp_path):
    """Too few frames asked for are refused before any is read; too few read, before the known
    defects are (ELPV's 715 took 9 s on a 2-core machine, then the refusal)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    asked = edge_ad("calibrate", "--bundle", bundle, "--input", normal_folder, "--frames", 12)  # 2995 needed
    assert asked.returncode == 2 and "normal frames:" not in asked.stderr  # no progress bar: refused before reading
    assert asked.stderr.strip().splitlines()[-1].startswith("edge-ad: error: --frames 12 cannot show a false-alarm "
                                                            "rate of 0.001 with 95% confidence: at least 2995")
    assert asked.stderr.strip().endswith("(or ask for --target-far 0.23 or more)")  # 0.2209: 0.22 needs 13 frames
    read = edge_ad("calibrate", "--bundle", bundle, "--input", normal_folder, "--frames", 30, "--target-far", 0.1,
                   "--defects", mvtec_category / "test" / "spot")
    assert read.returncode == 2  # the folder ends after 12 of the 30 frames asked for, 29 needed
    assert read.stderr.strip().splitlines()[-1].startswith("edge-ad: error: 12 normal frames cannot show")
    assert "known defects" not in read.stderr  # their progress bar: not read
    assert not (bundle / "calibration.yaml").exists()


def test_a_failed_write_leaves_the_old_calibration(tmp_path, monkeypatch):
    path = tmp_path / "calibration.yaml"
    path.write_text("threshold: 0.5\n")
    monkeypatch.setattr(site.os, "replace", full_disk)
    with pytest.raises(CalibrationError, match="No space left on device"):
        site.save(tmp_path, {"threshold": 0.7})
    assert path.read_text() == "threshold: 0.5\n"


def test_calibrate_stopped_with_ctrl_c_says_that_the_calibration_is_as_it_was(tiny_bundle, tmp_path):
    # collect advises "Ctrl-C and start again" when the frames will not do; the run said "interrupted" alone.
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    before = sorted((p.name, p.read_bytes()) for p in bundle.iterdir() if p.is_file())
    camera = "test://smpte?width=160&height=120&fps=30"
    # SIGINT as a terminal's Ctrl-C gives it: a shell's background job (as CI may be) ignores it, and so would its
    # children, Python taking no KeyboardInterrupt handler where SIGINT is ignored as it starts.
    process = subprocess.Popen([sys.executable, "-m", "edge_ad", "calibrate", "--bundle", str(bundle), "--input",
                                camera, "--target-far", "0.1"], stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = ""
    while "normal frames:" not in said and process.poll() is None:  # the frames being read (tqdm's bar)
        said += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    said += process.stderr.read()
    assert process.wait(timeout=30) == 130
    assert said.rstrip().endswith(f"edge-ad: interrupted while the frames of {camera} were read: its calibration is "
                                  "as it was (nothing written)")
    assert sorted((p.name, p.read_bytes()) for p in bundle.iterdir() if p.is_file()) == before


def test_a_report_that_cannot_be_written_leaves_the_calibration_written(tiny_bundle, normal_folder, tmp_path,
                                                                         monkeypatch):
    import calibration.report

    monkeypatch.setattr(calibration.report, "save_figure", full_disk)
    folder = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    detector = Detector.load(folder)
    kept = site.collect(detector, (cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))), 12)
    written = site.calibrate_into(folder, detector, kept[None], 0.3, 0.9, "rtsp://qa:Secret123@10.0.0.5/line")
    assert written.data["source"] == "rtsp://qa:***@10.0.0.5/line"  # calibration.yaml keeps no camera password
    assert written.report is None and written.report_problem == \
        f"{folder / 'calibration_report.png'}: not written (No space left on device)"
    assert Detector.load(folder).threshold == written.data["threshold"]  # in force


def test_drift_watch_raises_once_per_crossing():
    from edge_ad.drift import CHECK_EVERY, DriftWatch

    watch = DriftWatch(0.1, 0.2, window=60)
    events = [watch.add(0.15, anomaly=False) for _ in range(120)]
    assert not any(events)  # inside the band
    assert watch.add(5.0, anomaly=True) is None  # anomalous frames do not move the median
    events = [e for e in (watch.add(0.3, anomaly=False) for _ in range(120)) if e]
    assert len(events) == 1 and events[0]["state"] == "outside" and events[0]["median"] > 0.2
    events = [e for e in (watch.add(0.15, anomaly=False) for _ in range(120)) if e]
    assert [e["state"] for e in events] == ["back"]
    assert CHECK_EVERY < 60


def test_drift_watch_says_when_most_frames_are_flagged():
    """A covered lens or a light that failed flags every frame: the median of the normal-looking
    scores then sees none, and the share of flagged frames says it instead."""
    from edge_ad.drift import FLAGGED_SHARE, DriftWatch

    watch = DriftWatch(0.1, 0.2, window=60)
    assert not any(watch.add(0.15, anomaly=False) for _ in range(120))
    assert not any(watch.add(0.15, anomaly=i % 4 == 0) for i in range(120))  # a defect in one part of four
    events = [e for e in (watch.add(0.9, anomaly=True) for _ in range(300)) if e]
    assert [e["state"] for e in events] == ["flagged"] and events[0]["flagged"] >= FLAGGED_SHARE
    events = [e for e in (watch.add(0.15, anomaly=False) for _ in range(120)) if e]
    assert [(e["state"], e["median"]) for e in events] == [("back", 0.15)]


def test_run_drift_needs_a_calibration_and_then_reports(tiny_bundle, normal_folder, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    no_band = edge_ad("run", "--bundle", bundle, "--input", normal_folder, "--drift")
    assert no_band.returncode == 2 and "needs a site calibration" in no_band.stderr
    (bundle / "calibration.yaml").write_text(yaml.safe_dump(
        {"steps": None, "threshold": 100.0, "drift": {"low": -2.0, "high": -1.0, "window": 2},  # a band no frame fits
         "normalization": yaml.safe_load((tiny_bundle / "bundle.yaml").read_text())["normalization"]}))
    events = tmp_path / "ev.jsonl"
    frames = sorted(normal_folder.glob("*.png")) * 3  # 36 frames: CHECK_EVERY (30) is reached once
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, p in enumerate(frames):
        shutil.copy(p, folder / f"{i:03d}.png")
    out = edge_ad("run", "--bundle", bundle, "--input", folder, "--drift", "--events", events)
    assert out.returncode == 0, out.stderr
    lines = [yaml.safe_load(line) for line in events.read_text().splitlines()]
    drift = [e for e in lines if e["event"] == "drift"]
    assert len(drift) == 1 and drift[0]["state"] == "outside" and "left the calibrated band" in out.stderr
    assert sum(e["event"] == "frame" for e in lines) == len(frames)
    # Every frame flagged (a threshold no frame stays below): the view, not the band, is what changed.
    calibration = yaml.safe_load((bundle / "calibration.yaml").read_text())
    (bundle / "calibration.yaml").write_text(yaml.safe_dump({**calibration, "threshold": -100.0}))
    out = edge_ad("run", "--bundle", bundle, "--input", folder, "--drift", "--events", tmp_path / "flagged.jsonl")
    assert out.returncode == 0, out.stderr
    lines = [yaml.safe_load(line) for line in (tmp_path / "flagged.jsonl").read_text().splitlines()]
    drift = [e for e in lines if e["event"] == "drift"]
    assert [(e["state"], e["flagged"]) for e in drift] == [("flagged", 1.0)]
    assert "100% of the last 2 frames flagged: has the view changed" in out.stderr


@pytest.mark.parametrize("band, said", [
    ({"low": "abc", "high": 1.0, "window": 2}, "field 'drift.low' must be int or float, got 'abc'"),
    ({"low": 0.0, "high": 1.0, "window": 1.5}, "field 'drift.window' must be a whole number of frames, got 1.5"),
    ({"low": 0.0, "window": 2}, "missing field 'drift.high'"),
])
def test_a_hand_edited_drift_band_is_refused_naming_its_field(tiny_bundle, tmp_path, band, said):
    """Before, float() and int() of such values stopped `run --drift` with a ValueError traceback
    or a KeyError, or read a window of 1.5 frames as 1."""
    from edge_ad.bundle import load_bundle
    from edge_ad.drift import DriftWatch
    from edge_ad.errors import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "calibration.yaml").write_text(yaml.safe_dump(
        {"steps": None, "threshold": 100.0, "drift": band,
         "normalization": yaml.safe_load((tiny_bundle / "bundle.yaml").read_text())["normalization"]}))
    with pytest.raises(BundleError, match=f"calibration.yaml: {re.escape(said)}"):
        DriftWatch.from_bundle(load_bundle(bundle))


def test_a_calibration_of_another_bundle_is_set_aside(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    spec = yaml.safe_load((tiny_bundle / "bundle.yaml").read_text())
    calibration = {"steps": None, "threshold": 123.0, "normalization": spec["normalization"], "bundle_sha256": "0" * 64}
    (bundle / "calibration.yaml").write_text(yaml.safe_dump(calibration))
    with pytest.warns(UserWarning, match="made for another bundle"):
        detector = Detector.load(bundle)
    assert detector.bundle.calibration is None and detector.threshold == spec["threshold"]
    out = edge_ad("bench", "--bundle", bundle, "--frames", 2, "--warmup", 1)
    assert out.returncode == 0 and f"edge-ad: warning: {bundle / 'calibration.yaml'}: made for another" in out.stderr
    assert "UserWarning" not in out.stderr


def test_calibrating_on_frames_unlike_the_training_pictures_warns(elpv_samples, tmp_path):
    """A bundle whose export threshold rests on 12 held-out images, calibrated on frames of other
    cells: as 8-bit frames like its training pictures, without a word; as a 12-bit camera's
    16-bit files read (at most 16 of 255), with the warning, which names the share of them above
    that threshold. A bundle already calibrated on site is not judged by that threshold."""
    from export.onnx_export import export_bundle
    from export.train import TrainConfig, train

    train_split, test_split = elpv_samples
    folder = tmp_path / "good"
    folder.mkdir()
    for sample in train_split[:24]:
        cv2.imwrite(str(folder / f"{sample.name[5:]}.png"), cv2.cvtColor(sample.image(), cv2.COLOR_RGB2BGR))
    config = TrainConfig(data=str(folder), input_size=128, prototypes=16, val_fraction=0.5)
    bundle = export_bundle(train(config, tmp_path / "run"), tmp_path / "bundle")
    detector = Detector.load(bundle)
    assert detector.bundle.spec["provenance"]["validation_images"] == 12 >= site.UNLIKE_MIN_VALIDATION

    cells = [cv2.cvtColor(s.image(), cv2.COLOR_RGB2BGR) for s in test_split if s.label == 0][:16]
    dark = [((cell.astype(np.uint32) * 4095 // 255) / 257).round().astype(np.uint8) for cell in cells]
    like = site.calibrate(detector, site.collect(detector, iter(cells), 16)[None], 0.3, 0.9)
    assert not any("look unlike" in w for w in like.warnings)
    unlike = site.calibrate(detector, site.collect(detector, iter(dark), 16)[None], 0.3, 0.9)
    said = [w for w in unlike.warnings if "look unlike" in w]
    assert len(said) == 1 and said[0].startswith(
        f"100% of these normal frames score above the threshold set on the training pictures ({detector.threshold:.3f})")

    site.calibrate_into(bundle, detector, site.collect(detector, iter(dark), 16)[None], 0.3, 0.9, "dark cells")
    calibrated = Detector.load(bundle)
    assert calibrated.bundle.calibration is not None
    assert site.unlike_training(calibrated.bundle, [10.0] * 16) is None
    # the calibration records the warning, and `doctor` shows it to whoever checks the device later
    assert any(line.startswith("calibration  bundle: made with the warning: 100% of these normal frames score above")
               for line in doctor(str(bundle)).lines)


def test_doctor_reads_hand_edited_warnings_and_notes(tiny_bundle, normal_folder, tmp_path):
    """`warnings: 5` stopped doctor with "'int' object is not iterable", and one warning written
    as a line of text was shown a letter a line; so were training's notes in bundle.yaml."""
    bundle = calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle")
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    (bundle / "calibration.yaml").write_text(yaml.safe_dump({**data, "warnings": "checked by hand"}))
    said = [line for line in doctor(str(bundle)).lines if line.startswith("calibration  bundle: ")]
    assert said == ["calibration  bundle: made with the warning: checked by hand"]
    (bundle / "calibration.yaml").write_text(yaml.safe_dump({**data, "warnings": 5}))
    said = [line for line in doctor(str(bundle)).lines if line.startswith("calibration  bundle: ")]
    assert said == ["calibration  bundle: its field 'warnings' is not the list calibrate writes (edited by hand?), "
                        "got 5"]
    (bundle / "calibration.yaml").unlink()  # made for the bundle.yaml edited below: said so, and left
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    for notes, lines in [("cells from line 2", ["training     bundle: cells from line 2"]),
                         (7, ["training     bundle: its field 'provenance.training.notes' is not the list training "
                              "writes (edited by hand?), got 7"])]:
        spec["provenance"]["training"]["notes"] = notes
        (bundle / "bundle.yaml").write_text(yaml.safe_dump(spec))
        assert [line for line in doctor(str(bundle)).lines if line.startswith("training     bundle: ")] == lines
