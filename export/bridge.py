"""The learned few-step bridge in feature space (BRIDGE_NOTES section 5).

Deterministic I2SB bridge in the vanishing-diffusion (OT-ODE) limit with a constant rate, so
the marginal between clean features x0 (t=0) and corrupted features x1 (t=1) is the straight
line x_t = (1 - t) x0 + t x1. The denoiser predicts the displacement d = x1 - x0 (about 0 on
normal cells) from x_t, the step time t and a condition: the GMM bridge's projection of the
input onto the normal prototypes (VPDM's "vague prior"; it shows the net what normal looks
like here without handing it the raw input as a shortcut). A step from t_i to t_{i+1} is the
posterior-mean update x <- x - (t_i - t_{i+1}) d(x, t_i); after the last step (t = 0) x is the
restored features. A schedule for K steps is the grid t_i = 1 - i/K, stored as one row
(t_i, t_i - t_{i+1}) per step, so the runtime can pick K without re-exporting.

The map is ULSAD Eq. 2 between input and restored features: |x1 - x0_hat| + lambda (1 - cos).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .channels import channel_cosine, channel_distance

TIME_FREQUENCIES = 8  # sinusoidal time features 2 pi k t, k = 1..8
COSINE_WEIGHT = 1.0  # lambda of ULSAD Eq. 2


def schedule(steps: int) -> np.ndarray:
    """(steps, 2) float32 rows (t_i, t_i - t_{i+1}) of the uniform grid from t=1 to t=0."""
    if steps < 1:
        raise ValueError(f"bridge steps must be at least 1, got {steps}")
    grid = np.linspace(1.0, 0.0, steps + 1)
    return np.stack([grid[:-1], grid[:-1] - grid[1:]], axis=1).astype(np.float32)


class _FilmBlock(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) with time FiLM."""

    def __init__(self, width: int, embed: int, expand: int = 2) -> None:
        super().__init__()
        hidden = width * expand
        self.expand = nn.Conv2d(width, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, width, 1)
        self.film = nn.Linear(embed, 2 * hidden)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.depthwise(F.relu6(self.expand(x)))
        return x + self.project(F.relu6(h * (1 + scale) + shift))


class Denoiser(nn.Module):
    """(x_t, condition, t) -> predicted displacement x1 - x0, all (B, C, h, w); t is (B,) or (1,).

    Two blocks on the feature grid, two at half resolution (wider receptive field to inpaint
    larger defects), two after the skip connection. The output layer starts at zero, so an
    untrained net is the identity bridge.
    """

    def __init__(self, channels: int, width: int = 64, embed: int = 64) -> None:
        super().__init__()
        self.time = nn.Sequential(nn.Linear(2 * TIME_FREQUENCIES, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.register_buffer("frequencies", 2 * math.pi * torch.arange(1, TIME_FREQUENCIES + 1).float())
        self.stem = nn.Conv2d(2 * channels, width, 1)
        self.fine = nn.ModuleList([_FilmBlock(width, embed) for _ in range(2)])
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.coarse = nn.ModuleList([_FilmBlock(width, embed) for _ in range(2)])
        self.merge = nn.ModuleList([_FilmBlock(width, embed) for _ in range(2)])
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t.reshape(-1, 1) * self.frequencies
        embedding = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        h = self.stem(torch.cat([x, condition], dim=1))
        for block in self.fine:
            h = block(h, embedding)
        skip = h
        h = self.down(h)
        for block in self.coarse:
            h = block(h, embedding)
        h = skip + F.interpolate(h, size=skip.shape[-2:], mode="nearest")
        for block in self.merge:
            h = block(h, embedding)
        return self.out(h)


class BridgeStep(nn.Module):
    """One sampler step as an exportable graph: (x, condition, coefficients (t, dt)) -> x - dt * d."""

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: torch.Tensor, condition: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        return x - coefficients[1] * self.denoiser(x, condition, coefficients[0:1])


class FusedBridge(nn.Module):
    """All K sampler steps in one exportable graph, the schedule baked in: (x, condition) -> restored."""

    def __init__(self, denoiser: Denoiser, steps: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.steps = steps

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return sample(self.denoiser, x, condition, self.steps)


def sample(denoiser: Denoiser, x1: torch.Tensor, condition: torch.Tensor, steps: int) -> torch.Tensor:
    """Restored features after `steps` deterministic steps from the input features x1."""
    x = x1
    for t, dt in torch.from_numpy(schedule(steps)).to(x1.device):
        x = x - dt * denoiser(x, condition, t.reshape(1))
    return x


class RestorationHead(nn.Module):
    """(features, restored) (B, C, h, w) -> |x - y| + lambda (1 - cos(x, y)) (B, 1, h, w)."""

    def __init__(self, cosine_weight: float = COSINE_WEIGHT) -> None:
        super().__init__()
        self.cosine_weight = cosine_weight

    def forward(self, features: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        cosine = channel_cosine(features, restored)
        return channel_distance(features, restored) + self.cosine_weight * (1 - cosine)
