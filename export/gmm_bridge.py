"""Closed-form Gaussian-mixture Schrödinger bridge over normal prototypes (LightSB / DPDL), training-free.

LightSB's conditional plan (BRIDGE_NOTES section 3) has the deterministic endpoint
    y(x) = sum_k w_k(x) (r_k + S_k * x),  w = softmax_k(a_k + (S_k |x|^2 + 2 r_k.x) / (2 eps)).
With the prototypes mu_k as the components, a shared shrink S_k = s, r_k = (1 - s) mu_k,
eps = (1 - s) tau and a_k = -|mu_k|^2 / (2 tau) (equal mixture weights), the gate becomes
softmax_k(-|x - mu_k|^2 / (2 tau)) (the |x|^2 term is common to all k) and
    y(x) = (1 - s) sum_k w_k(x) mu_k + s x,
a soft projection of each patch onto the normal prototypes. The map is |x - y(x)|; with tau -> 0
and s = 0 it is the nearest-prototype distance.

tau is set from the data as the median gap between the squared distances of a training patch to
its nearest and second-nearest prototype. It must not be the squared distance itself: in 152
dimensions distances concentrate, and a temperature of that size blends all prototypes into
their mean (ELPV image AUROC 0.60 instead of 0.88).
"""

from __future__ import annotations

import torch
from torch import nn

from .channels import channel_distance

SHRINK = 0.1  # s: how much of the input the endpoint keeps (LightSB's S_k > 0)
TAU_SAMPLE = 20_000  # training patches used to set tau


def gate_temperature(patches: torch.Tensor, prototypes: torch.Tensor, seed: int) -> float:
    """tau: median over a seeded sample of patches (N, C) of d2(second-nearest) - d2(nearest)."""
    if prototypes.shape[0] < 2:
        raise ValueError("the GMM bridge needs at least 2 prototypes")
    generator = torch.Generator().manual_seed(seed)
    sample = patches[torch.randperm(patches.shape[0], generator=generator)[:TAU_SAMPLE]]
    sq = (sample**2).sum(1, keepdim=True) - 2 * sample @ prototypes.T + (prototypes**2).sum(1)
    nearest_two = sq.topk(2, dim=1, largest=False).values
    return max(float((nearest_two[:, 1] - nearest_two[:, 0]).median()), 1e-6)


class GmmBridgeHead(nn.Module):
    """Features (B, C, h, w) -> |x - y(x)| (B, 1, h, w), y the bridge endpoint defined above."""

    def __init__(self, prototypes: torch.Tensor, tau: float, shrink: float = SHRINK) -> None:
        super().__init__()
        if tau <= 0 or not 0 <= shrink < 1:
            raise ValueError(f"need tau > 0 and 0 <= shrink < 1, got tau={tau}, shrink={shrink}")
        self.register_buffer("prototypes", prototypes.float())
        self.register_buffer("logit_bias", -(prototypes.float() ** 2).sum(1) / (2 * tau))
        self.inv_tau = 1.0 / tau
        self.shrink = shrink

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The bridge endpoint y(x) of every patch, (B, C, h, w)."""
        batch, channels, height, width = features.shape
        patches = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        weights = torch.softmax(patches @ self.prototypes.T * self.inv_tau + self.logit_bias, dim=-1)
        endpoint = (1 - self.shrink) * (weights @ self.prototypes) + self.shrink * patches
        return endpoint.transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return channel_distance(features, self.project(features))


class BridgePrior(nn.Module):
    """Features -> (GMM bridge map, GMM endpoint): the prior branch and the learned bridge's condition."""

    def __init__(self, gmm: GmmBridgeHead) -> None:
        super().__init__()
        self.gmm = gmm

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        endpoint = self.gmm.project(features)
        return channel_distance(features, endpoint), endpoint
