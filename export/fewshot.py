"""The ELPV few-shot protocol (shared/benchmarks/README.md): what a handful of known defects at
training time (`edge-ad train --defects`) buys over the same model trained on normal images only.

    python -m export.fewshot [--shots 10 1] [--model prototype] [--out fewshot-out]

For each M, the protocol's M anomalous images join training and leave the test set; the
baseline is evaluated on that same test set. Writes fewshot.json and fewshot.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from edge_ad.bundle import MODEL_TYPES
from edge_ad.datasets import elpv_few_shot
from edge_ad.errors import report_errors

from .evaluate import evaluate
from .onnx_export import export_bundle
from .train import TrainConfig, train


def _train_and_export(config: TrainConfig, folder: Path) -> tuple[Path, dict]:
    started = time.time()
    run = train(config, folder / "run")
    bundle = export_bundle(run, folder / "bundle")
    record = yaml.safe_load((run / "config.yaml").read_text())
    record["seconds"] = round(time.time() - started, 1)
    return bundle, record


def few_shot(shots: list[int], model: str, out: Path, seed: int = 0) -> list[dict]:
    known_by_shots = {m: frozenset(s.name for s in elpv_few_shot(m)) for m in shots}  # bad counts fail here
    baseline, _ = _train_and_export(TrainConfig(data="elpv", model=model, seed=seed), out / "baseline")
    rows = []
    for m, known in known_by_shots.items():
        bundle, record = _train_and_export(TrainConfig(data="elpv", model=model, seed=seed, defects=f"elpv:{m}"), out / f"shots{m}")
        before, after = evaluate(baseline, "elpv", exclude=known), evaluate(bundle, "elpv", exclude=known)
        rows.append({
            "known_defects": m,
            "test_images": after["test_images"],
            "baseline_auroc": round(before["image_auroc"], 4),
            "with_defects_auroc": round(after["image_auroc"], 4),
            "gain": round(after["image_auroc"] - before["image_auroc"], 4),
            "baseline_per_group": {k: round(v, 4) for k, v in before["image_auroc_per_group"].items()},
            "with_defects_per_group": {k: round(v, 4) for k, v in after["image_auroc_per_group"].items()},
            "prototypes_removed": record.get("prototypes_removed_by_defects", 0),
            "train_seconds": record["seconds"],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 1])
    parser.add_argument("--model", choices=MODEL_TYPES, default="prototype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="fewshot-out")
    args = parser.parse_args()
    out = Path(args.out)
    rows = few_shot(args.shots, args.model, out, args.seed)
    (out / "fewshot.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| known defects | test images | baseline AUROC | with defects | gain | mono / poly (with) | prototypes out |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        groups = " / ".join(f"{v:.4f}" for v in r["with_defects_per_group"].values())
        lines.append(f"| {r['known_defects']} | {r['test_images']} | {r['baseline_auroc']:.4f} | "
                     f"{r['with_defects_auroc']:.4f} | {r['gain']:+.4f} | {groups} | {r['prototypes_removed']} |")
    (out / "fewshot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(report_errors("python -m export.fewshot", main))
