"""The ablation: rows of each variant merged over all test images, every row compared with the
nearest prototype, finished runs reused."""

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
from sklearn.metrics import roc_auc_score

from conftest import TINY_INPUT, TINY_PROTOTYPES
from export.ablate import (auroc_difference, compared_with_baseline, markdown, over_variants, pooled, standardised,
                           trained)
from export.train import CHECKPOINT, TrainConfig, load_run


def _row(data: str, group: str, value: float, ms: float | None) -> dict:
    return {"seed": 0, "data": data, "model": "nearest prototype", "steps": "-", "image_auroc": value,
            "per_group": {group: value}, "train_minutes": 1.0, "bridge_ms_per_image": ms}


def test_variants_are_merged_over_all_test_images():
    # Each variant ranks its own images perfectly; pooled, b's normal images (0.35, 0.4) outrank
    # a's defect at 0.3: 2 of the 16 defect-normal pairs are misranked.
    labels = lambda *ys: [SimpleNamespace(label=y) for y in ys]
    per_variant = [
        ([_row("a", "mono", 1.0, None)], [np.array([0.1, 0.2, 0.3, 0.9])], labels(0, 0, 1, 1)),
        ([_row("b", "poly", 1.0, 4.0)], [np.array([0.35, 0.4, 0.8, 0.9])], labels(0, 0, 1, 1)),
    ]
    [merged] = over_variants(per_variant)
    assert merged["image_auroc"] == 14 / 16
    assert merged["data"] == ["a", "b"] and merged["per_variant"] == {"a": 1.0, "b": 1.0}
    assert merged["per_group"] == {"mono": 1.0, "poly": 1.0}
    assert merged["train_minutes"] == 2.0 and merged["bridge_ms_per_image"] == 4.0
    assert "| nearest prototype | - | 0.8750 | 1.0000 | 1.0000 | 2.0 | 4.0 | - |" in markdown([merged])


def _correlated_scores(rng: np.random.Generator, normal: int, anomalous: int) -> tuple[np.ndarray, ...]:
    """Two models' scores that share most of their noise, the second noisier: its AUROC is lower."""
    labels = np.r_[np.zeros(normal, bool), np.ones(anomalous, bool)]
    shared = rng.normal(size=labels.size)
    return (labels, shared + 0.5 * rng.normal(size=labels.size) + 1.6 * labels,
            shared + 0.8 * rng.normal(size=labels.size) + 1.6 * labels)


def test_the_auroc_difference_is_scikit_learns_with_ties_counted_half():
    labels, better, worse = _correlated_scores(np.random.default_rng(0), 40, 60)
    better, worse = np.round(better, 1), np.round(worse, 1)  # many ties
    difference, low, high = auroc_difference(labels, better, worse)
    assert np.isclose(difference, roc_auc_score(labels, better) - roc_auc_score(labels, worse))
    assert low < difference < high


def test_the_95_percent_interval_holds_the_true_difference_95_times_in_100():
    # The true difference from 400,000 images; then 1,000 test sets of ELPV's size. An interval
    # that left out the correlation of an image's two scores would hold it nearly every time.
    rng = np.random.default_rng(0)
    labels, better, worse = _correlated_scores(rng, 200_000, 200_000)
    true = roc_auc_score(labels, better) - roc_auc_score(labels, worse)
    held = [low <= true <= high for low, high in
            (auroc_difference(*_correlated_scores(rng, 377, 715))[1:] for _ in range(1000))]
    assert 0.93 <= np.mean(held) <= 0.97


def test_every_row_but_the_baseline_is_compared_with_it_and_the_table_shows_it():
    labels, better, worse = _correlated_scores(np.random.default_rng(1), 100, 100)
    labelled = [SimpleNamespace(label=y) for y in labels]
    rows = [{**_row("a", "mono", roc_auc_score(labels, worse), None), "model": "nearest prototype"},
            {**_row("a", "mono", roc_auc_score(labels, better), 2.0), "model": "student", "steps": "2"}]
    compared = compared_with_baseline(rows, *pooled([(rows, [worse, better], labelled)]))
    assert "vs_baseline" not in compared[0]
    difference, low, high = compared[1]["vs_baseline"]
    assert np.isclose(difference, compared[1]["image_auroc"] - compared[0]["image_auroc"]) and low > 0
    table = markdown(compared)
    assert "minus nearest prototype, seed 0 (95 % CI)" in table.splitlines()[0]
    assert table.splitlines()[3].endswith(f"| {difference:+.4f} ({low:+.4f} to {high:+.4f}) |")


def test_standardised_puts_the_normal_median_at_0_and_90th_percentile_at_1():
    normal = np.arange(11, dtype=float)  # median 5, 90th percentile 9
    assert np.allclose(standardised(np.array([5.0, 9.0, 13.0]), normal), [0, 1, 2])


def test_a_finished_run_of_the_same_config_is_reused_and_another_config_retrained(normal_folder, tmp_path, capsys):
    config = TrainConfig(data=str(normal_folder), input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES)
    run = trained(config, tmp_path / "run")
    stamp = (run / CHECKPOINT).stat().st_mtime_ns
    assert trained(config, tmp_path / "run") == run and (run / CHECKPOINT).stat().st_mtime_ns == stamp
    assert "reusing the finished run of the same config" in capsys.readouterr().out
    other = TrainConfig(**{**asdict(config), "prototypes": TINY_PROTOTYPES // 2})
    trained(other, tmp_path / "run")
    assert "holds a run of another config, training again" in capsys.readouterr().out
    record, checkpoint, _ = load_run(run)
    assert record["config"] == asdict(other) and checkpoint["prototypes"].shape[0] == TINY_PROTOTYPES // 2
