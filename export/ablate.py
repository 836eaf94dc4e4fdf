"""The bridge ablation on a benchmark, in one command:

    python -m export.ablate --data elpv --seeds 0 1 --out ablation

For each seed it trains one bridge run (which also holds the prototypes and the GMM temperature)
and scores the test split with: the nearest-prototype baseline (also without position whitening,
from a second, prototype-only run), the closed-form GMM bridge, the
teacher (TEACHER_STEPS steps) and the student at K = 1, 2, 4 (both combined with the GMM branch
the way the runtime does: quantile-normalised branches averaged), and the K=2 student's bridge
branch alone. It writes ablation.json and ablation.md (the README table) into --out.
Scoring runs the torch models (the same maps as the exported graphs; parity is checked at export).
A training run already finished in --out with the same config is reused: run the command again
after a stop and it trains only what is missing.

With several --data (one per product variant, e.g. elpv:mono elpv:poly), every variant gets its
own runs and the table gives each row over all test images, each image scored by its own
variant's models: one bundle per variant, as a line that makes several runs them. Each variant's
image scores are first put on the scale on which the runtime's VariantDetector compares variants:
the median of its validation images' scores -> 0, their 90th percentile -> 1.

Every row is also compared with the nearest prototype of the same seed on the same test images:
the AUROC difference and its 95 % confidence interval (DeLong), which says how large a gap
between two rows the test set can tell from chance. The seed spread says the same of training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from calibration.statistics import score_percentiles
from edge_ad.bundle import BACKBONES, read_yaml
from edge_ad.cli import parse_input_size
from edge_ad.datasets import load_samples
from edge_ad.errors import report_errors
from edge_ad.metrics import auroc
from edge_ad.normalize import fit_quantiles
from edge_ad.upsample import upsample_maps

from .backbone import encoder_from_checkpoint, input_shape
from .batching import CPU, in_batches
from .bridge import Denoiser, RestorationHead, sample
from .bridge_train import STUDENT_STEPS, TEACHER_STEPS
from .evaluate import _group_aurocs
from .gmm_bridge import GmmBridgeHead
from .onnx_export import SMOOTHING_SIGMA
from .prototype import PrototypeHead
from .torch_device import training_device
from .train import CONFIG, RUN_FILES, TrainConfig, load_run, read_inputs, train

BATCH = 32
TIMING_IMAGES = 20
BASELINE = "nearest prototype"  # the row every other row is compared with


def smooth(grids: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Grid maps (N, 1, h, w) -> upsampled and smoothed maps (N, height, width), as the runtime does."""
    return upsample_maps(grids[:, 0].numpy(), size, SMOOTHING_SIGMA)


class Scorer:
    def __init__(self, record: dict, checkpoint: dict, device: torch.device = CPU) -> None:
        self.size = input_shape(record["config"]["input_size"])  # (height, width)
        self.encoder = encoder_from_checkpoint(self.size, checkpoint)
        self.prototype = PrototypeHead(checkpoint["prototypes"]).eval()
        self.gmm = GmmBridgeHead(checkpoint["prototypes"], float(checkpoint["tau"])).eval()
        self.head = RestorationHead()
        self.nets = {}
        for name in ("teacher", "student"):
            net = Denoiser(self.encoder.channels)
            net.load_state_dict(checkpoint[name])
            self.nets[name] = net.eval()
        self.to(device)

    def to(self, device: torch.device) -> Scorer:
        """The models moved to `device`, where `features` and `maps` then run."""
        for module in (self.encoder, self.prototype, self.gmm, self.head, *self.nets.values()):
            module.to(device)
        self.device = device
        return self

    def features(self, inputs: np.ndarray) -> torch.Tensor:
        return in_batches(self.encoder, inputs, BATCH, device=self.device)

    @torch.no_grad()
    def maps(
        self, features: torch.Tensor, desc: str, runs: list[tuple[str, int]] | None = None
    ) -> dict[str, np.ndarray]:
        """Smoothed raw maps of every branch: prototype, gmm, and the bridge branch per (net, K)
        in `runs` (default: the teacher and the student at every K), keyed f"{net}{K}"."""
        grids: dict[str, list[torch.Tensor]] = {}
        if runs is None:
            runs = [("teacher", TEACHER_STEPS)] + [("student", k) for k in STUDENT_STEPS]
        for start in tqdm(range(0, len(features), BATCH), desc=desc, unit="batch"):
            x = features[start : start + BATCH].to(self.device)
            grids.setdefault("prototype", []).append(self.prototype(x).cpu())
            gmm_map, condition = self.gmm(x), self.gmm.project(x)
            grids.setdefault("gmm", []).append(gmm_map.cpu())
            for name, steps in runs:
                restored = sample(self.nets[name], x, condition, steps)
                grids.setdefault(f"{name}{steps}", []).append(self.head(x, restored).cpu())
        return {key: smooth(torch.cat(value), self.size) for key, value in grids.items()}

    @torch.no_grad()
    def bridge_ms(self, features: torch.Tensor, name: str, steps: int) -> float:
        """CPU milliseconds per image (batch 1) of the bridge part: GMM projection, K steps, map."""
        times = []
        for x in features[:TIMING_IMAGES].split(1):
            start = time.perf_counter()
            condition = self.gmm.project(x)
            self.head(x, sample(self.nets[name], x, condition, steps))
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1e3)


def combined_maps(maps: list[np.ndarray], normal: list[np.ndarray]) -> np.ndarray:
    """The average of the branches' maps, each quantile-normalised with the maps of normal
    validation images (ULSAD 3.5), as the runtime combines them."""
    total = 0
    for branch, reference in zip(maps, normal):
        total = total + fit_quantiles(reference).apply(branch)
    return total / len(maps)


def image_scores(maps: list[np.ndarray], normal: list[np.ndarray]) -> np.ndarray:
    """Image scores: the max of the combined map."""
    combined = combined_maps(maps, normal)
    return combined.reshape(len(combined), -1).max(axis=1)


def folder_name(data: str) -> str:
    """A folder name for a data set spec: 'elpv:mono' -> 'elpv-mono', '/data/cell' -> 'data-cell'."""
    return data.replace(":", "-").replace("/", "-").strip("-.")


def write_results(out: Path, stem: str, results: list[dict], table: str | None = None) -> None:
    """The rows so far as out/STEM.json (after each row, so that a run stopped part-way keeps its
    rows), and with `table`, the finished markdown table as out/STEM.md, printed too."""
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    if table is not None:
        (out / f"{stem}.md").write_text(table)
        print(table)


def trained(config: TrainConfig, out: Path) -> Path:
    """The run folder `out`, trained with `config` unless it already holds a finished run of exactly
    that config (wherever it was trained): an ablation stopped part-way picks up where it stopped
    when run again."""
    if all((out / name).is_file() for name in RUN_FILES):
        if _but_device(read_yaml(out / CONFIG).get("config") or {}) == _but_device(asdict(config)):
            print(f"{out}: reusing the finished run of the same config")
            return out
        print(f"{out}: holds a run of another config, training again")
    return train(config, out)


def _but_device(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "device"}


def _unwhitened_prototype_maps(config: TrainConfig, seed: int, out: Path, test_inputs: np.ndarray) -> tuple[dict, float]:
    """Test and validation maps of the nearest-prototype model without position whitening, and
    its training minutes: the baseline before whitening (same seed, same validation split)."""
    run = trained(TrainConfig(**{**asdict(config), "seed": seed, "model": "prototype", "position_whitening": False}),
                  out / f"prototype-unwhitened-seed{seed}")
    record, checkpoint, val_inputs = load_run(run)
    size = input_shape(record["config"]["input_size"])
    device = training_device(config.device)
    encoder = encoder_from_checkpoint(size, checkpoint).to(device)
    head = PrototypeHead(checkpoint["prototypes"]).eval().to(device)
    maps = {split: smooth(in_batches(lambda x: head(encoder(x)), inputs, BATCH, device=device), size)
            for split, inputs in (("test", test_inputs), ("validation", val_inputs))}
    return maps, record["prototypes_seconds"] / 60


def standardised(scores: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Image scores with the median of the normal images' scores -> 0 and their 90th percentile ->
    1, the percentiles a bundle records (VariantDetector.relative)."""
    percentiles = score_percentiles(normal)
    return (scores - percentiles["p50"]) / (percentiles["p90"] - percentiles["p50"])


def ablate_seed(
    seed: int, config: TrainConfig, out: Path, test_inputs: np.ndarray, samples
) -> tuple[list[dict], list[np.ndarray]]:
    """Every row's result for one seed, and its standardised test image scores (same order)."""
    unwhitened, unwhitened_minutes = _unwhitened_prototype_maps(config, seed, out, test_inputs)
    run = trained(TrainConfig(**{**asdict(config), "seed": seed}), out / f"run-seed{seed}")
    record, checkpoint, val_inputs = load_run(run)
    scorer = Scorer(record, checkpoint, training_device(config.device))
    test_maps = scorer.maps(scorer.features(test_inputs), f"scoring test (seed {seed})")
    val_maps = scorer.maps(scorer.features(val_inputs), f"scoring validation (seed {seed})")
    test_maps["unwhitened"], val_maps["unwhitened"] = unwhitened["test"], unwhitened["validation"]
    scorer.to(CPU)  # the bridge's milliseconds are the CPU's, wherever the maps were computed
    timing_features = scorer.features(test_inputs[:TIMING_IMAGES])
    labels = np.array([s.label for s in samples])
    t = record
    base_minutes = t["prototypes_seconds"] / 60
    teacher_minutes = (t["prototypes_seconds"] + t["pairs_seconds"] + t["teacher_seconds"]) / 60
    rows = [
        ("nearest prototype, no position whitening", "-", ["unwhitened"], unwhitened_minutes, None),
        (BASELINE, "-", ["prototype"], base_minutes, None),
        ("GMM bridge (closed form)", "1", ["gmm"], base_minutes, None),
        ("teacher + GMM branch", str(TEACHER_STEPS), ["gmm", f"teacher{TEACHER_STEPS}"], teacher_minutes, ("teacher", TEACHER_STEPS)),
        *[
            ("student + GMM branch", str(k), ["gmm", f"student{k}"], t["train_seconds"] / 60, ("student", k))
            for k in STUDENT_STEPS
        ],
        ("student, bridge branch only", "2", ["student2"], t["train_seconds"] / 60, ("student", 2)),
    ]
    results, all_scores = [], []
    for name, steps, branches, minutes, timed in rows:
        scores = image_scores([test_maps[b] for b in branches], [val_maps[b] for b in branches])
        normal = image_scores([val_maps[b] for b in branches], [val_maps[b] for b in branches])
        all_scores.append(standardised(scores, normal))
        results.append({
            "seed": seed,
            "data": config.data,
            "model": name,
            "steps": steps,
            "image_auroc": auroc(labels, scores),
            "per_group": _group_aurocs(samples, scores),
            "train_minutes": round(minutes, 1),
            "bridge_ms_per_image": round(scorer.bridge_ms(timing_features, *timed), 1) if timed else None,
        })
        print(f"seed {seed} {config.data} {name} K={steps}: image AUROC {results[-1]['image_auroc']:.4f}")
    return results, all_scores


def auroc_difference(labels: np.ndarray, scores: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float]:
    """AUROC(scores) - AUROC(baseline) over the same images, with its 95 % confidence interval
    (DeLong, DeLong and Clarke-Pearson 1988, in Sun and Xu's form): the two scores of an image
    are correlated, which the variance of the difference counts. Deterministic."""
    labels = np.asarray(labels, bool)
    both = np.stack([scores, baseline]).astype(np.float64)
    anomalous, normal = both[:, labels], both[:, ~labels]
    m, n = anomalous.shape[1], normal.shape[1]
    ranks = stats.rankdata(np.concatenate([anomalous, normal], axis=1), axis=1)  # midranks: ties count half
    # Each image's share of the pairs it wins: anomalous ones over normal ones, normal ones under.
    wins_anomalous = (ranks[:, :m] - stats.rankdata(anomalous, axis=1)) / n
    wins_normal = 1.0 - (ranks[:, m:] - stats.rankdata(normal, axis=1)) / m
    covariance = np.cov(wins_anomalous) / m + np.cov(wins_normal) / n
    difference = float(wins_anomalous[0].mean() - wins_anomalous[1].mean())
    spread = float(np.sqrt(max(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], 0.0)))
    half = float(stats.norm.ppf(0.975)) * spread
    return difference, difference - half, difference + half


def pooled(per_variant: list[tuple[list[dict], list[np.ndarray], list]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and each row's standardised image scores over the test images of every variant."""
    labels = np.concatenate([[s.label for s in samples] for _, _, samples in per_variant]).astype(bool)
    rows = len(per_variant[0][1])
    return labels, [np.concatenate([scores[i] for _, scores, _ in per_variant]) for i in range(rows)]


def compared_with_baseline(results: list[dict], labels: np.ndarray, scores: list[np.ndarray]) -> list[dict]:
    """One seed's rows, each but the baseline's with `vs_baseline`: its AUROC minus the nearest
    prototype's on the same images, and that difference's 95 % confidence interval."""
    base = next(i for i, row in enumerate(results) if row["model"] == BASELINE)
    return [
        row if i == base else {**row, "vs_baseline": auroc_difference(labels, scores[i], scores[base])}
        for i, row in enumerate(results)
    ]


def over_variants(per_variant: list[tuple[list[dict], list[np.ndarray], list]]) -> list[dict]:
    """One seed's rows over the test images of every variant, from (results, standardised image
    scores, samples) per variant: AUROC of the pooled scores, each variant's own AUROCs as its
    groups, training minutes summed and bridge milliseconds averaged over the variants."""
    labels, scores = pooled(per_variant)
    merged = []
    for i, first in enumerate(per_variant[0][0]):
        rows = [results[i] for results, _, _ in per_variant]
        timed = [r["bridge_ms_per_image"] for r in rows if r["bridge_ms_per_image"] is not None]
        merged.append({
            **first,
            "data": [r["data"] for r in rows],
            "image_auroc": auroc(labels, scores[i]),
            "per_group": {g: v for r in rows for g, v in r["per_group"].items()},
            "per_variant": {r["data"]: r["image_auroc"] for r in rows},
            "train_minutes": round(sum(r["train_minutes"] for r in rows), 1),
            "bridge_ms_per_image": round(float(np.mean(timed)), 1) if timed else None,
        })
    return merged


def markdown(results: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in results})
    first = [r for r in results if r["seed"] == seeds[0]]
    header = ["model", "K", *[f"AUROC seed {s}" for s in seeds]]
    if len(seeds) > 1:
        header.append("seed spread")
    groups = sorted(first[0]["per_group"])
    header += [f"{g} (seed {seeds[0]})" for g in groups] + ["train min", "bridge ms/img"]
    header += [f"minus nearest prototype, seed {s} (95 % CI)" for s in seeds]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in first:
        same = [r for r in results if r["model"] == row["model"] and r["steps"] == row["steps"]]
        values = [r["image_auroc"] for r in same]
        cells = [row["model"], row["steps"], *[f"{v:.4f}" for v in values]]
        if len(seeds) > 1:
            cells.append(f"{max(values) - min(values):.4f}")
        cells += [f"{row['per_group'][g]:.4f}" for g in groups]
        cells += [f"{row['train_minutes']:.1f}", "-" if row["bridge_ms_per_image"] is None else f"{row['bridge_ms_per_image']:.1f}"]
        cells += [_gap(r.get("vs_baseline")) for r in same]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _gap(difference: tuple[float, float, float] | None) -> str:
    return "-" if difference is None else "{:+.4f} ({:+.4f} to {:+.4f})".format(*difference)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, nargs="+",
                        help="'elpv', 'elpv:mono', an MVTec category folder or a folder of normal images; "
                             "several: one per product variant, each with its own models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("ablation"))
    parser.add_argument("--backbone", choices=BACKBONES, default=TrainConfig.backbone)
    parser.add_argument("--input-size", type=parse_input_size, default=256, help="as edge-ad train takes it: 256, 448x256")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="teacher training iterations")
    parser.add_argument("--distill-steps", type=int, default=TrainConfig.distill_steps)
    parser.add_argument("--feature-variants", type=int, default=TrainConfig.feature_variants)
    parser.add_argument("--prototypes", type=int, help="default: train's, for each run's features")
    parser.add_argument("--whitening-eps", type=float, default=TrainConfig.whitening_eps)
    parser.add_argument("--device", default=TrainConfig.device,
                        help="where training and scoring run: auto (a CUDA GPU when torch sees one), cpu, cuda, "
                             "cuda:N; the bridge's milliseconds per image are the CPU's in any case")
    args = parser.parse_args(argv)
    config = TrainConfig(
        data=args.data[0],
        model="bridge",
        backbone=args.backbone,
        input_size=args.input_size,
        prototypes=args.prototypes,
        whitening_eps=args.whitening_eps,
        steps=args.steps,
        distill_steps=args.distill_steps,
        feature_variants=args.feature_variants,
        device=args.device,
    )
    variants = []
    for data in args.data:
        samples = load_samples(data, "test")
        inputs = read_inputs(samples, args.input_size, f"test images of {data}")
        out = args.out if len(args.data) == 1 else args.out / folder_name(data)
        variants.append((TrainConfig(**{**asdict(config), "data": data}), out, inputs, samples))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        per_variant = [
            (*ablate_seed(seed, cfg, out, inputs, samples), samples) for cfg, out, inputs, samples in variants
        ]
        rows = per_variant[0][0] if len(per_variant) == 1 else over_variants(per_variant)
        results += compared_with_baseline(rows, *pooled(per_variant))
        write_results(args.out, "ablation", results)
    write_results(args.out, "ablation", results, markdown(results))


if __name__ == "__main__":
    sys.exit(report_errors("python -m export.ablate", main))
