"""One bundle per product variant: ELPV mono and poly cells as two variants on one line."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from conftest import MODULE_TYPES as TYPES, add_spot, edge_ad
from edge_ad.deepstream import MODEL_FILE, OUTPUT, DeepStreamScorer
from edge_ad.detector import Detector
from edge_ad.doctor import doctor
from edge_ad.errors import BundleError, EdgeAdError
from edge_ad.runner import RunConfig, drift_bands, run
from edge_ad.streams import Stream
from edge_ad.variants import VariantDetector, check_comparable, load_detector, parse_variants


def test_each_cell_is_judged_by_its_own_module_type(variant_bundles, test_cells):
    variants = VariantDetector({t: Detector.load(variant_bundles[t]) for t in TYPES})
    alone = {t: Detector.load(variant_bundles[t]) for t in TYPES}
    normal = {t: alone[t].bundle.normal_scores for t in TYPES}  # (p50, p90) of validation image scores
    assert all(p50 < p90 for p50, p90 in normal.values())
    rng = np.random.default_rng(0)
    for module_type, cells in test_cells.items():
        spotted = [add_spot(cell, rng)[0] for cell in cells[:3]]
        frames = cells + spotted
        results = variants.batch(frames)
        assert [r.variant for r in results[: len(cells)]] == [module_type] * len(cells)
        for frame, result in zip(frames, results):
            own = {t: alone[t](frame) for t in TYPES}
            chosen = own[result.variant]
            assert result.score == pytest.approx(chosen.score) and result.threshold == chosen.threshold
            assert np.allclose(result.map, chosen.map, atol=1e-5)  # batch of nine against one frame
            # the variant to which the frame looks most normal gives the result, its threshold the verdict
            relative = {t: (own[t].score - p50) / (p90 - p50) for t, (p50, p90) in normal.items()}
            assert result.variant == min(TYPES, key=relative.get)
            # the scores of a batch of nine and of one frame agree to float rounding, which a relative
            # score near 0 (a frame near its variant's median) turns into a large relative difference
            assert variants.relative(result.score, result.variant) == pytest.approx(relative[result.variant], abs=1e-5)
            assert result.is_anomaly == (chosen.score >= chosen.threshold) == chosen.is_anomaly
            assert {k.split("/")[0] for k in result.times_ms} == set(TYPES)
            assert "mono/encoder_ms" in result.times_ms and "poly/encoder_ms" in result.times_ms
    one = variants(test_cells["poly"][0])
    assert one.variant == "poly"


def test_bundles_without_a_spread_of_normal_scores_are_refused(variant_bundles, tmp_path):
    spec = yaml.safe_load((Path(variant_bundles["poly"]) / "bundle.yaml").read_text())
    for name, scores in (("older", None), ("flat", {"p10": 0.1, "p50": 0.2, "p90": 0.2})):
        bundle = tmp_path / name
        shutil.copytree(variant_bundles["poly"], bundle)
        changed = {k: v for k, v in spec.items() if k != "normal_scores"}
        if scores is not None:
            changed["normal_scores"] = scores
        (bundle / "bundle.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        with pytest.raises(EdgeAdError, match=f"variant '{name}': .*{name} records no spread of normal image scores"):
            load_detector([variant_bundles["mono"], f"{name}={bundle}"])
    (tmp_path / "flat" / "bundle.yaml").write_text(yaml.safe_dump({**spec, "normal_scores": {"p50": 0.3, "p90": 0.2}}))
    with pytest.raises(BundleError, match="field 'normal_scores.p90' must not be below p50"):
        Detector.load(tmp_path / "flat")


def test_doctor_checks_each_variant_and_that_they_can_be_compared(variant_bundles, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(variant_bundles["poly"], older)
    spec = yaml.safe_load((older / "bundle.yaml").read_text())
    (older / "bundle.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "normal_scores"}))
    cpu = str(Path(__file__).parents[1] / "firmware_configs" / "cpu.yaml")

    report = doctor([f"mono={variant_bundles['mono']}", f"poly={variant_bundles['poly']}"], target=cpu)
    assert [line.split()[1] for line in report.lines if line.startswith("bundle ")] == ["mono", "poly"]
    assert sum(line.startswith("free disk") for line in report.lines) == 2
    assert not [p for p in report.problems if "variant" in p or "bundle" in p]

    report = doctor([f"mono={variant_bundles['mono']}", f"poly={older}", f"cells={tmp_path / 'missing'}"], target=cpu)
    assert [line.split()[1] for line in report.lines if line.startswith("bundle ")] == ["mono", "poly"]
    found = [p for p in report.problems if "variant" in p or "bundle" in p]
    assert len(found) == 2, found
    assert found[0].startswith(f"variant 'poly': {older} records no spread of normal image scores")
    assert found[1].startswith("bundle cells cannot be used: ") and "missing" in found[1]


def test_bundle_names_and_a_single_bundle(variant_bundles):
    mono, poly = variant_bundles["mono"], variant_bundles["poly"]
    assert parse_variants([f"a={mono}", poly]) == {"a": Path(mono), "bundle-poly": Path(poly)}
    assert parse_variants(["/lines/run=3/cells.tar"]) == {"cells": Path("/lines/run=3/cells.tar")}
    assert parse_variants(mono) == {"bundle-mono": Path(mono)}  # a lone string is one bundle
    with pytest.raises(EdgeAdError, match="a variant named 'a' is already given"):
        parse_variants([f"a={mono}", f"a={poly}"])
    with pytest.raises(EdgeAdError, match="expected NAME=BUNDLE"):
        parse_variants([f"={mono}"])
    with pytest.raises(EdgeAdError, match="at least two variants"):
        VariantDetector({"mono": Detector.load(mono)})
    assert isinstance(load_detector([f"mono={mono}"]), Detector)
    assert isinstance(load_detector([mono, poly]), VariantDetector)
    assert load_detector([mono, poly]).batch([]) == []


def test_stream_events_name_the_variant_and_drift_needs_each_calibration(variant_bundles, test_cells, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for module_type in TYPES:
        for i, cell in enumerate(test_cells[module_type][:3]):
            cv2.imwrite(str(folder / f"{module_type}-{i}.png"), cell)
    detector = load_detector([f"{t}={variant_bundles[t]}" for t in TYPES])
    summary = run(detector, [Stream(str(folder), name="line")], RunConfig(events=tmp_path / "ev.jsonl"))
    assert summary.frames == 6
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    frames = [e for e in events if e["event"] == "frame"]
    assert [e["variant"] for e in frames] == [Path(e["name"]).name.split("-")[0] for e in frames]
    with pytest.raises(EdgeAdError, match="bundle-mono.*needs a site calibration"):
        drift_bands(detector)


def test_drift_is_watched_per_variant_against_its_own_band(variant_bundles, test_cells, tmp_path):
    bands = {"mono": {"low": -2.0, "high": -1.0, "window": 2},  # a band no frame fits
             "poly": {"low": -100.0, "high": 100.0, "window": 2}}  # one every frame fits
    specs = []
    for module_type, band in bands.items():
        bundle = tmp_path / f"bundle-{module_type}"
        shutil.copytree(variant_bundles[module_type], bundle)
        spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
        (bundle / "calibration.yaml").write_text(yaml.safe_dump(
            {"steps": None, "threshold": 100.0, "drift": band, "normalization": spec["normalization"],
             "normal_scores": spec["normal_scores"]}))
        specs.append(f"{module_type}={bundle}")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(33):  # CHECK_EVERY (30) frames of each variant: each watch checks its median once
        for module_type in TYPES:
            cv2.imwrite(str(folder / f"{i:02d}-{module_type}.png"), test_cells[module_type][i % 6])
    run(load_detector(specs), [Stream(str(folder), name="line")], RunConfig(events=tmp_path / "ev.jsonl", drift=True))
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    drift = [e for e in events if e["event"] == "drift"]
    assert len(drift) == 1 and drift[0]["variant"] == "mono" and drift[0]["state"] == "outside"
    assert sum(e["event"] == "frame" for e in events) == 66


def test_eval_of_two_variant_bundles_from_the_command_line(variant_bundles, mvtec_category, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "edge_ad", "eval", "--data", str(mvtec_category), "--json", str(tmp_path / "r.json"),
         "--bundle", f"mono={variant_bundles['mono']}", "--bundle", f"poly={variant_bundles['poly']}",
         "--report", str(tmp_path / "r.png"), "--scores", str(tmp_path / "r.csv")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    with open(tmp_path / "r.csv", newline="") as handle:  # each image judged by the variant that took it
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    variants = load_detector([f"{name}={path}" for name, path in variant_bundles.items()])
    for name, row in rows.items():
        result = variants(cv2.imread(name))
        assert (row["variant"], float(row["threshold"])) == (result.variant, pytest.approx(result.threshold, abs=1e-6))
        assert row["verdict"] == ("anomalous" if result.is_anomaly else "normal")
    assert len(rows) == 8 and sum(row["verdict"] == "normal" for row in rows.values() if row["truth"] == "anomalous") \
        == report["anomalous_images_missed_by_bundle_threshold"]
    assert (tmp_path / "r.png").stat().st_size > 20_000  # relative scores, no one threshold to draw
    assert set(report["bundles"]) == set(TYPES) and report["test_images"] == 8
    taken = report["variant_taking_each_group"]  # MVTec layout: group "good" is normal, "spot" anomalous
    assert set(taken) == {"good", "spot"} and set(taken["good"]) == {"normal"} and set(taken["spot"]) == {"anomalous"}
    assert sum(n for group in taken.values() for kind in group.values() for n in kind.values()) == 8
    assert report["image_auroc"] > 0.8 and report["pixel_auroc"] > 0.9  # the spots are plain to see


def _copies(variant_bundles, tmp_path) -> list[str]:
    """NAME=BUNDLE of copies of both bundles (calibration writes into them)."""
    specs = []
    for module_type in TYPES:
        shutil.copytree(variant_bundles[module_type], tmp_path / f"bundle-{module_type}")
        specs.append(f"{module_type}={tmp_path / f'bundle-{module_type}'}")
    return specs


def test_calibrate_gives_each_variant_the_frames_it_takes(variant_bundles, test_cells, elpv_samples, tmp_path):
    folder, defects = tmp_path / "normal", tmp_path / "defects"
    folder.mkdir()
    defects.mkdir()
    for i in range(6):  # a line making both products in turn
        for module_type in TYPES:
            cv2.imwrite(str(folder / f"{i}-{module_type}.png"), test_cells[module_type][i])
    cracked = [s for s in elpv_samples[1] if s.label == 1][:3]
    for s in cracked:
        cv2.imwrite(str(defects / f"{s.name[5:]}.png"), cv2.cvtColor(s.image(), cv2.COLOR_RGB2BGR))
    specs = _copies(variant_bundles, tmp_path)
    out = edge_ad("calibrate", *[a for s in specs for a in ("--bundle", s)], "--input", folder, "--frames", 12,
                  "--target-far", 0.35, "--confidence", 0.9, "--defects", defects)
    assert out.returncode == 0, out.stderr
    assert "normal frames per variant: mono 6, poly 6" in out.stdout
    known, above = 0, {}
    for module_type in TYPES:
        bundle = tmp_path / f"bundle-{module_type}"
        data = yaml.safe_load((bundle / "calibration.yaml").read_text())
        assert data["frames"] == 6 and data["source"] == str(folder)
        assert (bundle / "calibration_report.png").is_file()
        known += data.get("defects", {}).get("frames", 0)
        above[module_type] = data["normal_frames_above_threshold"]
        # the variant is then compared on its site frames' scores, and judged by its site threshold
        loaded = Detector.load(bundle).bundle
        assert loaded.normal_scores == (data["normal_scores"]["p50"], data["normal_scores"]["p90"])
    assert known == len(cracked)  # each known defect counted once, for the variant that judges it
    detector = load_detector(specs)
    for module_type in TYPES:
        results = detector.batch(test_cells[module_type])
        assert {r.variant for r in results} == {module_type}
        assert sum(r.is_anomaly for r in results) == above[module_type]  # exact on the frames it was made from


def test_calibrate_keeps_the_variants_it_can_and_names_the_ones_it_cannot(variant_bundles, test_cells, tmp_path):
    folder = tmp_path / "normal"
    folder.mkdir()
    for i, cell in enumerate(test_cells["mono"]):  # the poly line was idle while calibrating
        cv2.imwrite(str(folder / f"{i}.png"), cell)
    specs = _copies(variant_bundles, tmp_path)
    out = edge_ad("calibrate", "--bundle", specs[0], "--bundle", specs[1], "--input", folder, "--frames", 6,
                  "--target-far", 0.35, "--confidence", 0.9)
    assert out.returncode == 2
    assert "variant poly not calibrated: only 0 normal frames were read" in out.stdout
    assert "not calibrated: poly (above); the other variants were" in out.stderr.strip().splitlines()[-1]
    assert yaml.safe_load((tmp_path / "bundle-mono" / "calibration.yaml").read_text())["frames"] == 6
    assert not (tmp_path / "bundle-poly" / "calibration.yaml").exists()


def test_bench_of_two_variants_times_both(variant_bundles, tmp_path):
    out = edge_ad("bench", "--bundle", f"mono={variant_bundles['mono']}", "--bundle", f"poly={variant_bundles['poly']}",
                  "--frames", 6, "--warmup", 1, "--batch", 2, "--json", tmp_path / "b.json")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert set(report["variants"]) == set(TYPES) and report["frames"] == 6
    assert report["variants"]["poly"]["bundle"] == variant_bundles["poly"]
    stages = ("preprocess_ms", "encoder_ms", "head_ms", "upsample_ms", "normalise_ms")
    assert set(report["stages_ms"]) == {f"{t}/{s}" for t in TYPES for s in stages}
    assert report["latency_ms"]["p50"] >= max(report["stages_ms"][f"{t}/encoder_ms"]["p50"] for t in TYPES)
    assert 0 < report["share_outside_graphs"] < 1


def test_deepstream_networks_of_the_variants_are_judged_as_the_variant_detector_judges(variant_bundles, test_cells,
                                                                                      tmp_path):
    from export.deepstream import write_deepstream

    specs = [f"{t}={variant_bundles[t]}" for t in TYPES]
    sessions = [ort.InferenceSession(str(write_deepstream(Path(variant_bundles[t]), tmp_path / t) / MODEL_FILE),
                                     providers=["CPUExecutionProvider"]) for t in TYPES]
    scorer, variants = DeepStreamScorer(specs), load_detector(specs)
    frames = test_cells["mono"][:2] + test_cells["poly"][:2]
    chosen = []
    for frame, expected in zip(frames, variants.batch(frames)):
        # what nvinfer feeds each network: the frame stretched to the input, float RGB planes
        planes = variants.detectors["mono"].preprocess(frame).transpose(2, 0, 1)[None].astype(np.float32)
        grids = [session.run([OUTPUT], {"input": planes})[0][0] for session in sessions]
        result = scorer.score(grids, frame.shape)
        assert result.variant == expected.variant and result.score == pytest.approx(expected.score, rel=1e-5)
        assert result.is_anomaly == expected.is_anomaly and result.map.shape == frame.shape[:2]
        chosen.append(result.variant)
    assert chosen == ["mono", "mono", "poly", "poly"]
    with pytest.raises(EdgeAdError, match="at least two variants"):
        check_comparable({"mono": scorer.scorers["mono"].bundle})


def test_a_frame_of_a_known_variant_is_scored_by_that_bundle_alone(variant_bundles, test_cells):
    detector = load_detector([f"{t}={variant_bundles[t]}" for t in TYPES])
    alone = {t: Detector.load(variant_bundles[t]) for t in TYPES}
    cells = test_cells["poly"][:2] + test_cells["mono"][:2]
    results = detector.batch(cells, variants=["mono", None, "poly", None])
    assert [r.variant for r in results] == ["mono", "poly", "poly", "mono"]  # told, then each to its own type
    assert results[0].score == pytest.approx(alone["mono"](cells[0]).score, abs=1e-6)  # a poly cell, as mono sees it
    assert results[2].score == pytest.approx(alone["poly"](cells[2]).score, abs=1e-6)
    assert {k.split("/")[0] for k in results[0].times_ms} == {"mono"}  # only that bundle ran
    assert {k.split("/")[0] for k in results[1].times_ms} == set(TYPES)
    assert detector(cells[0], variant="mono").variant == "mono"
    with pytest.raises(EdgeAdError, match=r"variants \['tray'\] are none of this detector's \(mono, poly\)"):
        detector.batch(cells[:1], variants=["tray"])
