"""Frames far from square: a square model input against rectangular ones, on ELPV cells in rows.

    python benchmarks/wide_frames.py --sizes 256 448x160 768x256 --out wide-frames

An electroluminescence picture of a module shows cells side by side. Here the ELPV cells (300 x
300 px) are put three in a row (900 x 300 px), with the split of shared/benchmarks: the normal
training cells in rows of three (seeded order), the normal test cells likewise, and each defective
test cell in a row with two normal test cells, at a random place in it. The rows are written once
as an MVTec-layout folder (train/good, test/good, test/defect). For each --sizes input size,
`edge-ad train` (nearest prototype, its defaults) and `export` (FP32) make a bundle, `eval` scores
the test rows and `bench` times it on 900 x 300 frames. Writes wide_frames.json and wide_frames.md
into --out; finished runs and the folder of rows are reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_ad import Detector
from edge_ad.bench import bench
from edge_ad.cli import parse_input_size
from edge_ad.datasets import Sample, load_samples
from edge_ad.errors import report_errors
from export.ablate import trained, write_results
from export.backbone import input_shape, size_text
from export.evaluate import evaluate
from export.onnx_export import export_bundle
from export.train import TrainConfig

CELLS = 3  # cells in a row


def _row(cells: list[Sample]) -> np.ndarray:
    return cv2.cvtColor(np.hstack([cell.image() for cell in cells]), cv2.COLOR_RGB2BGR)


def _write(folder: Path, rows: list[list[Sample]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, cells in enumerate(tqdm(rows, desc=str(folder), unit="row")):
        if not cv2.imwrite(str(folder / f"{index:04d}.png"), _row(cells)):
            raise OSError(f"{folder}: could not write row {index:04d}.png (disk full?)")


def write_rows(root: Path, seed: int) -> Path:
    """The ELPV split's cells in rows of CELLS as an MVTec-layout folder `root` (written once)."""
    if root.is_dir():
        return root
    rng = np.random.default_rng(seed)
    train = [s for s in load_samples("elpv", "train") if s.label == 0]
    test = load_samples("elpv", "test")
    normal = [s for s in test if s.label == 0]

    def in_rows(cells: list[Sample]) -> list[list[Sample]]:
        order = rng.permutation(len(cells))
        return [[cells[i] for i in order[start : start + CELLS]] for start in range(0, len(order) - CELLS + 1, CELLS)]

    def with_defect(cell: Sample) -> list[Sample]:
        row = [normal[i] for i in rng.choice(len(normal), CELLS - 1, replace=False)]
        row.insert(int(rng.integers(CELLS)), cell)
        return row

    partial = root.with_name(root.name + ".partial")
    _write(partial / "train" / "good", in_rows(train))
    _write(partial / "test" / "good", in_rows(normal))
    _write(partial / "test" / "defect", [with_defect(s) for s in test if s.label == 1])
    partial.rename(root)
    return root


def markdown(results: list[dict]) -> str:
    lines = ["| input size | input pixels | image AUROC | fps (900 x 300 frames) | p50 ms |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['input_size']} | {r['input_pixels']:,} | {r['image_auroc']:.4f} | {r['fps']:.1f} "
                     f"| {r['p50_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=parse_input_size, default=[256, [160, 448], [256, 768]],
                        help="model input sizes as `edge-ad train --input-size` takes them (256, 448x160)")
    parser.add_argument("--seed", type=int, default=0, help="the rows' order and the training seed")
    parser.add_argument("--frames", type=int, default=300, help="frames bench times per size")
    parser.add_argument("--out", type=Path, default=Path("wide-frames"))
    args = parser.parse_args(argv)
    rows = write_rows(args.out / "rows", args.seed)
    height, width = cv2.imread(str(next((rows / "test" / "good").iterdir()))).shape[:2]
    results = []
    for size in args.sizes:
        run = trained(TrainConfig(data=str(rows), input_size=size, seed=args.seed), args.out / f"run-{size_text(size)}")
        bundle = export_bundle(run, args.out / f"bundle-{size_text(size)}")
        report = evaluate(bundle, str(rows))
        timing = bench(Detector.load(bundle), args.frames, args.frames // 10, height, width)
        model_height, model_width = input_shape(size)
        results.append({"input_size": size_text(size), "input_pixels": model_height * model_width,
                        "image_auroc": report["image_auroc"], "fps": timing["fps"],
                        "p50_ms": timing["latency_ms"]["p50"], "test_images": report["test_images"]})
        print(f"{size_text(size)}: image AUROC {report['image_auroc']:.4f}, {timing['fps']:.1f} fps")
        write_results(args.out, "wide_frames", results)
    write_results(args.out, "wide_frames", results, markdown(results))


if __name__ == "__main__":
    sys.exit(report_errors("benchmarks/wide_frames.py", main))
