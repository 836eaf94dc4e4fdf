"""Does the learned bridge learn what it is shown, and does that carry to a defect it was not shown?

    python -m export.synthetic_eval --run RUN [--steps 2] [--seed 777] [--json FILE]

RUN is a bridge run of `edge-ad train` on a data set with a test split (ELPV or an MVTec-style
category). Every normal test image gets one synthetic defect of each kind (`export/defects.py`,
drawn with --seed, which training does not use), and the nearest prototype, the GMM bridge and
the student at K=--steps (with the GMM branch, as the runtime combines them, and alone) score
them: image AUROC per kind (the normal test images against that kind's copies of them) and
pixel AUROC (maps against the defect masks, at a quarter of the input side). A kind the run was
not trained on (`edge-ad train --defect-kinds`) is marked "held out".

Synthetic defects come from the generator the bridge trains on, so they show what the bridge
can learn and how far it generalises across kinds; they are no stand-in for real defects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_ad.datasets import data_text, load_samples
from edge_ad.errors import DataError, report_errors
from edge_ad.metrics import auroc

from .ablate import Scorer, combined_maps
from .defects import KINDS, synthesize
from .train import load_run, read_inputs

MODELS = {
    "nearest prototype": ["prototype"],
    "GMM bridge (closed form)": ["gmm"],
    "student + GMM branch": ["gmm", "student"],
    "student, bridge branch only": ["student"],
}


def synthetic_defects(normal: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One copy of every normal input (N, H, W, 3) per defect kind: (images, masks, kind names),
    kind by kind; the foreign texture comes from another normal input."""
    images, masks, kinds = [], [], []
    for k, kind in enumerate(KINDS):
        for i in tqdm(range(len(normal)), desc=f"synthetic {kind}", unit="img"):
            rng = np.random.default_rng([seed, i, k])
            image, mask, _ = synthesize(normal[i], normal[int(rng.integers(len(normal)))], rng, kind)
            images.append(image)
            masks.append(mask)
            kinds.append(kind)
    return np.stack(images), np.stack(masks), np.array(kinds)


def _shrink(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps or masks (N, H, W) -> (N, height, width) for `size` (height, width)."""
    return np.stack([cv2.resize(m.astype(np.float32), size[::-1], interpolation=cv2.INTER_AREA) for m in maps])


def synthetic_eval(run: Path, steps: int = 2, seed: int = 777) -> dict:
    """Per model and kind: {"image_auroc", "pixel_auroc"}, plus every kind together, and the
    kinds the run was trained on."""
    record, checkpoint, val_inputs = load_run(run)
    if record["model"] != "bridge":
        raise DataError(f"{run}: a {record['model']} run; synthetic_eval compares the learned bridge, train one "
                        "with 'edge-ad train --model bridge'")
    config = record["config"]
    samples = load_samples(config["data"], "test")
    normal_samples = [s for s in samples if s.label == 0]
    if len(normal_samples) < 2:
        raise DataError(f"{data_text(config['data'])}: the test split needs at least 2 normal images, found "
                        f"{len(normal_samples)}")
    scorer = Scorer(record, checkpoint)
    normal = read_inputs(normal_samples, scorer.size, "normal test images")
    made, masks, kinds = synthetic_defects(normal, seed)
    maps = {
        split: scorer.maps(scorer.features(x), f"scoring {split} images", [("student", steps)])
        for split, x in (("validation", val_inputs), ("normal", normal), ("defective", made))
    }
    small = (max(1, scorer.size[0] // 4), max(1, scorer.size[1] // 4))
    truth = _shrink(masks, small) > 0.5
    trained = config.get("defect_kinds") or list(KINDS)
    result = {"steps": steps, "seed": seed, "normal_images": len(normal), "trained_kinds": trained, "models": {}}
    for model, branches in MODELS.items():
        branches = [f"student{steps}" if b == "student" else b for b in branches]  # the keys of Scorer.maps
        reference = [maps["validation"][b] for b in branches]
        normal_maps = combined_maps([maps["normal"][b] for b in branches], reference)
        defect_maps = combined_maps([maps["defective"][b] for b in branches], reference)
        normal_scores = normal_maps.reshape(len(normal), -1).max(axis=1)
        defect_scores = defect_maps.reshape(len(made), -1).max(axis=1)
        normal_pixels, defect_small = _shrink(normal_maps, small).ravel(), _shrink(defect_maps, small)
        rows = {}
        for kind in (*KINDS, "all"):
            chosen = np.ones(len(made), bool) if kind == "all" else kinds == kind
            labels = np.r_[np.zeros(len(normal)), np.ones(chosen.sum())]
            pixel_labels = np.r_[np.zeros(normal_pixels.size), truth[chosen].ravel()]
            pixels = np.r_[normal_pixels, defect_small[chosen].ravel()]
            rows[kind] = {
                "image_auroc": auroc(labels, np.r_[normal_scores, defect_scores[chosen]]),
                "pixel_auroc": auroc(pixel_labels, pixels),
            }
        result["models"][model] = rows
    return result


def markdown(result: dict) -> str:
    """One row per model: image / pixel AUROC per kind, held-out kinds marked."""
    kinds = [*KINDS, "all"]
    names = [k if k == "all" or k in result["trained_kinds"] else f"{k} (held out)" for k in kinds]
    lines = ["| model | " + " | ".join(names) + " |", "|" + "---|" * (len(kinds) + 1)]
    for model, rows in result["models"].items():
        cells = [f"{rows[k]['image_auroc']:.4f} / {rows[k]['pixel_auroc']:.4f}" for k in kinds]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.synthetic_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bridge run folder of 'edge-ad train'")
    parser.add_argument("--steps", type=int, choices=(1, 2, 4), default=2, help="the student's K")
    parser.add_argument("--seed", type=int, default=777, help="seed of the synthetic defects")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    try:
        result = synthetic_eval(args.run, args.steps, args.seed)
    except DataError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"image / pixel AUROC, {result['normal_images']} normal test images and one copy of each per kind, "
          f"student K={result['steps']}")
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(report_errors("python -m export.synthetic_eval", main))
