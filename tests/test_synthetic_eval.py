"""Synthetic-defect check of a bridge run: every model scores every kind; held-out kinds are named."""

import subprocess
import sys

from export.defects import KINDS
from export.synthetic_eval import MODELS, markdown, synthetic_eval


def test_every_model_scores_every_kind_and_spots_stand_out(tiny_bridge_bundle):
    result = synthetic_eval(tiny_bridge_bundle.parent / "run", steps=2)
    assert result["normal_images"] == 4 and result["trained_kinds"] == list(KINDS)
    assert list(result["models"]) == list(MODELS)
    for rows in result["models"].values():
        assert list(rows) == [*KINDS, "all"]
        for row in rows.values():
            assert 0 <= row["image_auroc"] <= 1 and 0 <= row["pixel_auroc"] <= 1
    spots = result["models"]["nearest prototype"]["spot"]
    assert spots["image_auroc"] >= 0.875 and spots["pixel_auroc"] > 0.9  # dark or bright ellipses: plain to see
    assert "held out" not in markdown(result)
    result["trained_kinds"] = [k for k in KINDS if k != "scratch"]
    assert "| scratch (held out) |" in markdown(result)


def test_the_command_refuses_a_run_without_a_bridge(tiny_bundle):
    out = subprocess.run([sys.executable, "-m", "export.synthetic_eval", "--run", str(tiny_bundle.parent / "run")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "a prototype run" in out.stderr and "--model bridge" in out.stderr

