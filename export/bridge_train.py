"""Training of the learned bridge: synthetic pairs, the many-step teacher, the few-step student.

Pairs: x0 = features of a normal training image, x1 = features of the same image with a
synthetic defect (export/defects.py); a quarter of the batches' pairs are identity pairs
(x1 = x0), because leaving normal cells alone is half the task. The loss is the MSE of the
predicted displacement, five times heavier on cells the defect touched. t is drawn from the
students' grid half of the time, else uniformly in (0, 1].

Distillation is endpoint (trajectory) distillation, the cheapest of the options in BRIDGE_NOTES
section 5: one student net, initialised from the teacher, is unrolled for K in {1, 2, 4} steps and
trained onto the teacher's TEACHER_STEPS-step output and onto the true clean features (free with
synthetic pairs). Why not progressive distillation: it needs log2(50) rounds and gives one net
per K; with one net for every K the bundle holds one step graph and the runtime picks K at load
time from the stored schedules. The teacher's outputs are computed once, not per iteration.

Training checkpoints every CHECKPOINT_EVERY iterations (`bridge_state.pt` in the run folder) and
resumes from it; the pairs are rebuilt from the seed, so a resumed run sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from edge_ad.errors import DataError

from .backbone import FeatureEncoder
from .batching import CPU, in_batches
from .bridge import Denoiser, sample
from .checkpoint import load_checkpoint, save_checkpoint
from .defects import KINDS, perlin_mask, synthesize
from .gmm_bridge import GmmBridgeHead

STUDENT_STEPS = (1, 2, 4)
TEACHER_STEPS = 50
STATE_FILE = "bridge_state.pt"
CHECKPOINT_EVERY = 250
IDENTITY_SHARE = 0.25
DEFECT_WEIGHT = 5.0
LEARNING_RATE = 1e-3


@dataclass
class Pairs:
    """Training pairs on the feature grid, stored in float16 to halve memory."""

    clean: torch.Tensor  # (N, C, h, w) features of the normal images
    clean_condition: torch.Tensor  # GMM projection of the clean features
    corrupted: torch.Tensor  # (N * V, C, h, w), variant v of image i at row i * V + v
    corrupted_condition: torch.Tensor
    weight: torch.Tensor  # (N * V, 1, h, w): 1 outside the defect, DEFECT_WEIGHT on it
    variants: int

    def batch(self, rows: np.ndarray, identity: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(x0, x1, condition, weight) in float32 on `device` for corrupted-pair rows; identity pairs
        where flagged."""
        image = rows // self.variants
        x1, condition, weight = self.corrupted[rows], self.corrupted_condition[rows], self.weight[rows]
        keep = torch.from_numpy(identity)
        x1[keep] = self.clean[image[identity]]
        condition[keep] = self.clean_condition[image[identity]]
        weight[keep] = 1.0
        return tuple(t.to(device).float() for t in (self.clean[image], x1, condition, weight))


def _project(prior: GmmBridgeHead, features: torch.Tensor, desc: str, batch: int = 64) -> torch.Tensor:
    """GMM projections of features, in float16, computed where `prior` is."""
    return in_batches(lambda x: prior.project(x.float()).half(), features, batch, desc, prior.prototypes.device)


def _feature_corruption(clean: torch.Tensor, i: int, v: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A defect made in feature space (BRIDGE_NOTES section 5): inside a Perlin mask on the grid,
    Gaussian noise of 0.5-2 channel standard deviations, or the features of another image."""
    rng = np.random.default_rng([seed, i, v])
    height, width = clean.shape[-2:]
    mask = perlin_mask(height, width, rng)
    inside = torch.from_numpy(mask)
    out = clean[i].clone()
    if rng.random() < 0.5:
        noise = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32)) * float(rng.uniform(0.5, 2.0))
        out[:, inside] += noise[:, inside]
    else:
        out[:, inside] = clean[int(rng.integers(len(clean)))][:, inside]
    return out, mask.astype(np.float32)


@torch.no_grad()
def build_pairs(
    encoder: FeatureEncoder,
    prior: GmmBridgeHead,
    inputs: np.ndarray,
    variants: int,
    seed: int,
    batch_size: int,
    feature_variants: int = 0,
    kinds: tuple[str, ...] = KINDS,
    device: torch.device = CPU,
) -> Pairs:
    """Features of `inputs` (N, H, W, 3 uint8 RGB), of `variants` copies of each with a synthetic
    image defect (one of `kinds`), and of `feature_variants` copies with a defect made in feature
    space; the encoder runs on `device`, the pairs are kept in the computer's memory."""
    n = len(inputs)
    clean = in_batches(encoder, inputs, batch_size, device=device)
    grid = clean.shape[-2:]
    corrupted, weight = [], []
    for start in tqdm(range(0, n, batch_size), desc="synthetic defects", unit="batch"):
        images, masks = [], []
        for i in range(start, min(start + batch_size, n)):
            for v in range(variants):
                rng = np.random.default_rng([seed, i, v])  # per image and variant: order-free
                other = inputs[int(rng.integers(n))]
                image, mask, _ = synthesize(inputs[i], other, rng, kinds=kinds)
                images.append(image)
                masks.append(cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA))
        features = encoder(torch.from_numpy(np.stack(images)).to(device)).cpu().reshape(-1, variants, *clean.shape[1:])
        masks_t = torch.from_numpy(np.stack(masks)).reshape(-1, variants, *grid)
        if feature_variants:
            made = [_feature_corruption(clean, i, variants + v, seed) for i in range(start, start + len(features)) for v in range(feature_variants)]
            extra = torch.stack([f for f, _ in made]).reshape(len(features), feature_variants, *clean.shape[1:])
            extra_masks = torch.from_numpy(np.stack([m for _, m in made])).reshape(len(features), feature_variants, *grid)
            features, masks_t = torch.cat([features, extra], 1), torch.cat([masks_t, extra_masks], 1)
        corrupted.append(features.flatten(0, 1).half())
        weight.append((1 + (DEFECT_WEIGHT - 1) * (masks_t.flatten(0, 1) > 0).float()).unsqueeze(1).half())
    corrupted_t = torch.cat(corrupted)
    return Pairs(
        clean=clean.half(),
        clean_condition=_project(prior, clean, "conditions (normal)"),
        corrupted=corrupted_t,
        corrupted_condition=_project(prior, corrupted_t, "conditions (defects)"),
        weight=torch.cat(weight),
        variants=variants + feature_variants,
    )


def _draw_times(count: int, rng: np.random.Generator) -> np.ndarray:
    grid = np.unique(np.concatenate([1.0 - np.arange(k) / k for k in STUDENT_STEPS]))
    on_grid = rng.random(count) < 0.5
    return np.where(on_grid, rng.choice(grid, count), 1.0 - rng.random(count)).astype(np.float32)


class BridgeTrainer:
    """Teacher then student, with checkpoints in `run` and resume from them."""

    def __init__(
        self, pairs: Pairs, channels: int, run: Path, seed: int, settings: dict, batch_size: int = 16,
        device: torch.device = CPU,
    ) -> None:
        self.pairs = pairs
        self.device = device  # where the nets train; the pairs stay in the computer's memory
        self.channels = channels
        self.state_path = run / STATE_FILE
        self.seed = seed
        self.settings = settings  # stored with every checkpoint: what a resumed run must match
        self.batch_size = batch_size
        self.saved: tuple[str, int] | None = None  # (phase, iteration) of the checkpoint on disk

    def interrupted_text(self) -> str:
        """What an interruption (Ctrl-C) of training leaves: the checkpoint --resume continues from."""
        if self.saved is None:
            return f"before the first checkpoint (every {CHECKPOINT_EVERY} iterations): none to resume from"
        phase, iteration = self.saved
        return (f"after the checkpoint of the {phase}'s iteration {iteration} ({self.state_path}): the same command "
                "with --resume continues from there")

    def _rows(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rows = rng.integers(len(self.pairs.corrupted), size=self.batch_size)
        return rows, rng.random(self.batch_size) < IDENTITY_SHARE

    def _loop(self, phase: str, net: Denoiser, iterations: int, loss_fn, resume: dict | None) -> list[float]:
        optimiser = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(iterations, 1))
        start, losses = 0, []
        if resume is not None and resume["phase"] == phase:
            net.load_state_dict(resume["net"])
            optimiser.load_state_dict(resume["optimiser"])
            scheduler.load_state_dict(resume["scheduler"])
            start, losses = resume["iteration"], resume["losses"]
            self.saved = phase, start
        rng = np.random.default_rng([self.seed, start, 0 if phase == "teacher" else 1])
        bar = tqdm(range(start, iterations), desc=phase, unit="it", initial=start, total=iterations)
        for iteration in bar:
            loss = loss_fn(net, rng)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if (iteration + 1) % CHECKPOINT_EVERY == 0 or iteration + 1 == iterations:
                self._checkpoint(phase, net, optimiser, scheduler, iteration + 1, losses)
        return losses

    def _checkpoint(self, phase, net, optimiser, scheduler, iteration, losses) -> None:
        state = {
            "phase": phase,
            "iteration": iteration,
            "net": net.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "losses": losses,
            "settings": self.settings,
        }
        if phase == "student":
            state["teacher"] = self.teacher_state
        save_checkpoint(self.state_path, state)
        self.saved = phase, iteration

    def _teacher_loss(self, net: Denoiser, rng: np.random.Generator) -> torch.Tensor:
        x0, x1, condition, weight = self.pairs.batch(*self._rows(rng), self.device)
        t = torch.from_numpy(_draw_times(len(x0), rng)).to(self.device)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1
        return (weight * (net(x_t, condition, t) - (x1 - x0)) ** 2).mean()

    def train_teacher(self, iterations: int, resume: dict | None) -> tuple[Denoiser, list[float]]:
        torch.manual_seed(self.seed)
        net = Denoiser(self.channels).to(self.device)
        if resume is not None and resume["phase"] == "student":
            net.load_state_dict(resume["teacher"])
            self.saved = "student", resume["iteration"]
            return net.eval(), []
        losses = self._loop("teacher", net, iterations, self._teacher_loss, resume)
        return net.eval(), losses

    @torch.no_grad()
    def _distillation_targets(self, teacher: Denoiser, count: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 2])
        rows = rng.choice(len(self.pairs.corrupted), size=min(count, len(self.pairs.corrupted)), replace=False)
        identity = rng.random(len(rows)) < IDENTITY_SHARE
        targets = []
        for start in tqdm(range(0, len(rows), 32), desc=f"teacher K={TEACHER_STEPS}", unit="batch"):
            _, x1, condition, _ = self.pairs.batch(rows[start : start + 32], identity[start : start + 32], self.device)
            targets.append(sample(teacher, x1, condition, TEACHER_STEPS).half().cpu())
        return rows, identity, torch.cat(targets)

    def train_student(
        self, teacher: Denoiser, iterations: int, targets: int, resume: dict | None
    ) -> tuple[Denoiser, list[float]]:
        self.teacher_state = teacher.state_dict()
        rows, identity, teacher_out = self._distillation_targets(teacher, targets)

        def loss_fn(net: Denoiser, rng: np.random.Generator) -> torch.Tensor:
            pick = rng.integers(len(rows), size=self.batch_size)
            x0, x1, condition, weight = self.pairs.batch(rows[pick], identity[pick], self.device)
            restored = sample(net, x1, condition, int(rng.choice(STUDENT_STEPS)))
            to_teacher = (restored - teacher_out[torch.from_numpy(pick)].to(self.device).float()) ** 2
            return (weight * (to_teacher + (restored - x0) ** 2)).mean()

        student = Denoiser(self.channels).to(self.device)
        student.load_state_dict(self.teacher_state)
        losses = self._loop("student", student, iterations, loss_fn, resume)
        return student.eval(), losses


def load_resume_state(run: Path, settings: dict) -> dict | None:
    """The run folder's checkpoint, or None when it has none; refused if it was trained with other
    `settings` (checkpoints from before settings were stored are not checked)."""
    path = run / STATE_FILE
    if not path.is_file():
        return None
    state = load_checkpoint(path, "delete it to train from the beginning")
    recorded = state.get("settings", settings)
    changed = [k for k in settings if recorded.get(k) != settings[k]]
    if changed:
        raise DataError(
            f"{run}: its bridge checkpoint was trained with "
            + ", ".join(f"{k}={recorded.get(k)!r}" for k in changed)
            + "; this run asks for " + ", ".join(f"{k}={settings[k]!r}" for k in changed)
            + ". Resume with the same settings, or train into a new folder"
        )
    return state
