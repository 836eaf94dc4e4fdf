"""Parts that move: position whitening against `--no-position-whitening`, on ELPV cells moved about.

    python benchmarks/moving_parts.py --moves 0 10 25 50 --out moving-parts

Position whitening (on by default) learns what is normal at each place of the frame, for parts
that sit in one place. Here each ELPV cell (300 x 300 px) is put at a random place of a grey frame
MOVE px wider and higher on each side, as a part on a conveyor without a fixture: --train-cells
normal training cells of the split of shared/benchmarks, and the whole test split placed the same
way, written once per MOVE as an MVTec-layout folder (train/good, test/good, test/defect). For
each MOVE, the GMM bridge is trained (`edge-ad train` defaults otherwise) with and without position
whitening, exported (FP32) and scored by `eval`. Writes moving_parts.json and moving_parts.md into
--out; finished runs and folders are reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_ad.datasets import load_samples
from edge_ad.errors import report_errors
from export.ablate import trained, write_results
from export.evaluate import evaluate
from export.onnx_export import export_bundle
from export.train import TrainConfig

GREY = 128  # the frame around the cell: a plain conveyor


def write_moved(root: Path, move: int, train_cells: int, seed: int) -> Path:
    """The split's cells, each at a random place of a frame `move` px larger on every side, as an
    MVTec-layout folder `root` (written once)."""
    if root.is_dir():
        return root
    rng = np.random.default_rng(seed)
    side = 300 + 2 * move
    partial = root.with_name(root.name + ".partial")
    splits = (("train", [s for s in load_samples("elpv", "train") if s.label == 0][:train_cells]),
              ("test", load_samples("elpv", "test")))
    for split, samples in splits:
        for index, sample in enumerate(tqdm(samples, desc=f"{root.name} {split}", unit="cell")):
            cell = sample.image()
            frame = np.full((side, side, 3), GREY, np.uint8)
            y, x = rng.integers(0, side - cell.shape[0] + 1), rng.integers(0, side - cell.shape[1] + 1)
            frame[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
            folder = partial / split / ("good" if sample.label == 0 else "defect")
            folder.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(folder / f"{index:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
                raise OSError(f"{folder}: could not write {index:04d}.png (disk full?)")
    partial.rename(root)
    return root


def markdown(results: list[dict]) -> str:
    lines = ["| cells moved up to, either way | of the frame's side | position whitening | `--no-position-whitening` |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['move']} px | {r['move_share']:.1%} | {r['position_whitening']:.4f} "
                     f"| {r['no_position_whitening']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", nargs="+", type=int, default=[0, 10, 25, 50],
                        help="how far (px, either way) the cells are moved about, one table row each")
    parser.add_argument("--train-cells", type=int, default=300, help="normal training cells")
    parser.add_argument("--seed", type=int, default=0, help="the cells' places and the training seed")
    parser.add_argument("--out", type=Path, default=Path("moving-parts"))
    args = parser.parse_args(argv)
    results = []
    for move in args.moves:
        data = write_moved(args.out / f"cells-{move}", move, args.train_cells, args.seed)
        row = {"move": move, "move_share": move / (300 + 2 * move)}
        for key, whitening in (("position_whitening", True), ("no_position_whitening", False)):
            config = TrainConfig(data=str(data), model="gmm-bridge", position_whitening=whitening, seed=args.seed)
            run = trained(config, args.out / f"run-{move}-{key}")
            row[key] = evaluate(export_bundle(run, args.out / f"bundle-{move}-{key}"), str(data))["image_auroc"]
        results.append(row)
        print(f"moved up to {move} px: image AUROC {row['position_whitening']:.4f} with position whitening, "
              f"{row['no_position_whitening']:.4f} without")
        write_results(args.out, "moving_parts", results)
    write_results(args.out, "moving_parts", results, markdown(results))


if __name__ == "__main__":
    sys.exit(report_errors("benchmarks/moving_parts.py", main))
