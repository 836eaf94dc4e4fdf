"""benchmarks/training_images.py: AUROC against the number of normal training images."""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TINY_INPUT, TINY_PROTOTYPES
from edge_ad.datasets import load_samples
from edge_ad.errors import DataError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training_images.py"


def _script():
    spec = importlib.util.spec_from_file_location("training_images", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_larger_collections_hold_the_smaller_and_every_model_is_scored(mvtec_category, tmp_path):
    out = tmp_path / "out"
    _script().main(["--data", str(mvtec_category), "--sizes", "12", "4", "--seeds", "0", "--out", str(out),
                    "--input-size", str(TINY_INPUT), "--prototypes", str(TINY_PROTOTYPES)])

    [dataset] = (out / "images").iterdir()  # one folder per data set
    images = dataset / "seed0"
    small, full = (sorted(p.name for p in (images / n).iterdir()) for n in ("4", "12"))
    assert len(small) == 4 and len(full) == 12 and set(small) < set(full)
    train = load_samples(str(mvtec_category), "train")
    for name in small:  # the very pixels of the training image the name points at
        written = cv2.cvtColor(cv2.imread(str(images / "4" / name)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(written, train[int(name.split(".")[0])].image())

    results = json.loads((out / "training_images.json").read_text())
    assert [(r["images"], r["model"]) for r in results] == [
        (size, model) for size in (4, 12)
        for model in ("nearest prototype", "GMM bridge", "nearest prototype, no position whitening")
    ]
    by = {(r["images"], r["model"]): r["image_auroc"] for r in results}
    assert by[(12, "nearest prototype")] > 0.9  # dark spots on cells are easy
    table = (out / "training_images.md").read_text()
    assert "| 4 | " in table and "| 12 | " in table and f"{by[(12, 'GMM bridge')]:.4f}" in table
    assert (out / "training_images.png").stat().st_size > 10_000


def test_a_size_beyond_the_training_images_is_refused_with_the_count(mvtec_category, tmp_path):
    with pytest.raises(DataError, match=r"--sizes \[13\]: .* has 12 normal training images"):
        _script().main(["--data", str(mvtec_category), "--sizes", "4", "13", "--out", str(tmp_path)])
