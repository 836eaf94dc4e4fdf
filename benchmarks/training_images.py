"""How many good images to collect: image AUROC against the number of normal training images.

    python benchmarks/training_images.py --data elpv --sizes 50 100 200 400 1131 --seeds 0 1 --out training-images

For each seed the training split is shuffled once, and each size N takes the first N images, so
a larger collection holds every image of a smaller one, as when a user adds pictures. They are
written as PNG files to a folder, as a user's folder of good images, and trained on with `edge-ad
train`'s defaults: `--model gmm-bridge` (its nearest-prototype and GMM maps are both scored) and
the nearest prototype with `--no-position-whitening`. Every run is scored on the whole test split
with the torch models, as `export.ablate` scores them. Writes training_images.json, a markdown
table (training_images.md) and a plot of AUROC against N (training_images.png) into --out.
Finished runs and image folders in --out are reused.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edge_ad.cli import parse_input_size  # noqa: E402
from edge_ad.datasets import load_samples  # noqa: E402
from edge_ad.errors import DataError, report_errors  # noqa: E402
from edge_ad.metrics import auroc  # noqa: E402
from export.ablate import BATCH, folder_name, image_scores, smooth, trained, write_results  # noqa: E402
from export.backbone import FeatureEncoder, encoder_from_checkpoint, input_shape  # noqa: E402
from export.batching import in_batches  # noqa: E402
from export.evaluate import _group_aurocs  # noqa: E402
from export.gmm_bridge import GmmBridgeHead  # noqa: E402
from export.prototype import PrototypeHead  # noqa: E402
from export.train import TrainConfig, load_run, read_inputs  # noqa: E402

MODELS = ("nearest prototype", "GMM bridge", "nearest prototype, no position whitening")


def write_subset(samples: list, order: np.ndarray, size: int, folder: Path) -> Path:
    """The first `size` samples in `order` as PNG files in `folder` (written once)."""
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for index in order[:size]:
            image = cv2.cvtColor(samples[index].image(), cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(partial / f"{index:05d}.png"), image):
                raise OSError(f"{partial}: could not write image {index:05d}.png (disk full?)")
        partial.rename(folder)
    return folder


def branch_scores(run: Path, raw_test: torch.Tensor) -> dict[str, np.ndarray]:
    """Test image scores of the run's nearest-prototype map and, when it has one, its GMM map."""
    record, checkpoint, val_inputs = load_run(run)
    size = input_shape(record["config"]["input_size"])
    encoder = encoder_from_checkpoint(size, checkpoint)
    heads = {"prototype": PrototypeHead(checkpoint["prototypes"]).eval()}
    if "tau" in checkpoint:
        heads["gmm"] = GmmBridgeHead(checkpoint["prototypes"], float(checkpoint["tau"])).eval()
    val, test = in_batches(encoder, val_inputs, BATCH), in_batches(encoder.standardise, raw_test, BATCH)
    return {name: image_scores([smooth(in_batches(head, test, BATCH), size)], [smooth(in_batches(head, val, BATCH), size)])
            for name, head in heads.items()}


def markdown(results: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in results})
    sizes = sorted({r["images"] for r in results})
    lines = ["| normal training images | " + " | ".join(f"{m} (seed {' / '.join(map(str, seeds))})" for m in MODELS) + " |",
             "|---|" + "---|" * len(MODELS)]
    for size in sizes:
        cells = []
        for model in MODELS:
            values = [r["image_auroc"] for s in seeds for r in results
                      if r["images"] == size and r["seed"] == s and r["model"] == model]
            cells.append(" / ".join(f"{v:.4f}" for v in values))
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], data: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model in MODELS:
        rows = [r for r in results if r["model"] == model]
        model_sizes = sorted({r["images"] for r in rows})
        means = [np.mean([r["image_auroc"] for r in rows if r["images"] == s]) for s in model_sizes]
        line, = axes.plot(model_sizes, means, marker="o", label=model)
        axes.scatter([r["images"] for r in rows], [r["image_auroc"] for r in rows], color=line.get_color(), s=12, alpha=0.5)
    axes.set_xscale("log")
    sizes = sorted({r["images"] for r in results})
    axes.set_xticks(sizes, [str(s) for s in sizes])
    axes.minorticks_off()
    axes.set_xlabel("normal training images")
    axes.set_ylabel("image AUROC")
    axes.set_title(f"{data}: image AUROC against training images (line: mean over seeds)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="'elpv', 'elpv:mono' or an MVTec category folder")
    parser.add_argument("--sizes", type=int, nargs="+", required=True, help="numbers of normal training images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("training-images"))
    parser.add_argument("--input-size", type=parse_input_size, default=256, help="as edge-ad train takes it: 256, 448x256")
    parser.add_argument("--prototypes", type=int, help="default: train's, for each run's features")
    args = parser.parse_args(argv)

    train_samples = load_samples(args.data, "train")
    too_many = [s for s in args.sizes if not 2 <= s <= len(train_samples)]
    if too_many:
        raise DataError(f"--sizes {too_many}: {args.data} has {len(train_samples)} normal training images; "
                        "each size must be from 2 to that")
    test_samples = load_samples(args.data, "test")
    labels = np.array([s.label for s in test_samples])
    raw_test = in_batches(FeatureEncoder(input_shape(args.input_size)).raw_features,
                          read_inputs(test_samples, args.input_size, "test images"), 16, "test features")
    args.out.mkdir(parents=True, exist_ok=True)
    # Image folders are named after the data set too: a finished one is reused as it is.
    image_root = args.out / "images" / folder_name(args.data)
    results = []
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(train_samples))
        for size in sorted(args.sizes):
            folder = write_subset(train_samples, order, size, image_root / f"seed{seed}" / f"{size}")
            base = TrainConfig(data=str(folder), input_size=args.input_size, prototypes=args.prototypes, seed=seed)
            whitened = trained(TrainConfig(**{**asdict(base), "model": "gmm-bridge"}), args.out / f"run-seed{seed}-{size}")
            plain = trained(TrainConfig(**{**asdict(base), "position_whitening": False}),
                            args.out / f"run-seed{seed}-{size}-no-position-whitening")
            scores = branch_scores(whitened, raw_test)
            scores["unwhitened"] = branch_scores(plain, raw_test)["prototype"]
            for model, key in zip(MODELS, ("prototype", "gmm", "unwhitened")):
                results.append({"data": args.data, "seed": seed, "images": size, "model": model,
                                "image_auroc": auroc(labels, scores[key]),
                                "per_group": _group_aurocs(test_samples, scores[key])})
                print(f"seed {seed}, {size} images, {model}: image AUROC {results[-1]['image_auroc']:.4f}")
            write_results(args.out, "training_images", results)
    plot(results, args.data, args.out / "training_images.png")
    write_results(args.out, "training_images", results, markdown(results))


if __name__ == "__main__":
    sys.exit(report_errors("benchmarks/training_images.py", main))
