"""The nearest-prototype model: the no-bridge baseline.

Prototypes are a greedy coreset (PatchCore's k-center selection) of the
standardised normal patch features; the raw map is the L2 distance of each
patch to its nearest prototype.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

# Coreset selection runs on at most this many patch features (seeded subsample): the
# greedy pass is O(candidates x prototypes), and 200k patches cover the normal variety.
MAX_CANDIDATES = 200_000
PROJECTION_DIM = 128


def greedy_coreset(features: torch.Tensor, count: int, seed: int, label: str = "coreset") -> torch.Tensor:
    """Pick `count` rows of `features` (N, C) that cover them best (k-center greedy); `label`
    names its progress bar.

    Distances are computed in a random projection to PROJECTION_DIM dimensions (as PatchCore
    does) for speed; the selected rows are returned in full dimension.
    """
    generator = torch.Generator().manual_seed(seed)
    if features.shape[0] > MAX_CANDIDATES:
        pick = torch.randperm(features.shape[0], generator=generator)[:MAX_CANDIDATES]
        features = features[pick]
    count = min(count, features.shape[0])
    dim = min(PROJECTION_DIM, features.shape[1])
    projection = torch.randn(features.shape[1], dim, generator=generator) / dim**0.5
    projected = features @ projection
    sq_norm = (projected**2).sum(1)

    def sq_dist_to(index: int) -> torch.Tensor:
        # |a - b|^2 = |a|^2 - 2 a.b + |b|^2: a matrix-vector product, no (N, dim) temporary.
        return sq_norm - 2 * (projected @ projected[index]) + sq_norm[index]

    first = int(torch.randint(features.shape[0], (1,), generator=generator))
    selected = [first]
    min_dist = sq_dist_to(first)
    for _ in tqdm(range(count - 1), desc=label, unit="proto"):
        index = int(torch.argmax(min_dist))
        selected.append(index)
        torch.minimum(min_dist, sq_dist_to(index), out=min_dist)
    return features[selected].clone()


class PrototypeHead(nn.Module):
    """Features (B, C, h, w) -> distance to the nearest prototype (B, 1, h, w)."""

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes.float())
        self.register_buffer("prototype_sq_norm", (prototypes.float() ** 2).sum(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        patches = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        sq_dist = (patches**2).sum(-1, keepdim=True) - 2 * patches @ self.prototypes.T + self.prototype_sq_norm
        nearest = sq_dist.min(dim=-1).values.clamp_min(0).sqrt()
        return nearest.reshape(batch, 1, height, width)
