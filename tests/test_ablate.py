"""The ablation over product variants: rows of each variant merged over all test images."""

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np

from conftest import TINY_INPUT, TINY_PROTOTYPES
from export.ablate import markdown, over_variants, standardised, trained
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
    assert "| nearest prototype | - | 0.8750 | 1.0000 | 1.0000 | 2.0 | 4.0 |" in markdown([merged])


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
