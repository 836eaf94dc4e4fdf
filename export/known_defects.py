"""A few known defects at training time, the DPDL way (seeds/003, Sec. 4.2 and Eq. 20): normal
features stay on the normal prototypes while the observed anomalies are pushed away from them.

With image labels only, DPDL's top-K multiple-instance assumption says which patches of a
defect image are anomalous: the 10 % farthest from the normal prototypes. In a nearest-prototype
model, pushing those patches away means taking out the prototypes they land on, when the known
anomalies use a prototype significantly more than the normal patches do: a one-sided binomial
test of its count of anomalous patches against its share of normal patches, at a 5 %
family-wise level over all prototypes (Bonferroni). A prototype touched by a patch or two of a
defect stays; one that a defect keeps landing on goes. Only anomalous patches that still look
normal count: those within the normal patches' own largest distance to their nearest prototype
(the coreset's covering radius). Rounds repeat, since a freed patch may land on another
prototype nearby, and end when no known anomalous patch looks normal or no prototype is
over-used. No new graph and no new parameter: the exported model only has fewer prototypes,
and every model type (prototype, GMM bridge, learned bridge) builds on them.
"""

from __future__ import annotations

import torch
from scipy import stats

TOP_FRACTION = 0.1  # DPDL's top-K MIL: K = 10 % of the patches of a score map
MAX_ROUNDS = 10
NORMAL_SAMPLE = 200_000  # normal patches used to measure how much each prototype is used
CHUNK = 16_384
FAMILY_ALPHA = 0.05


def _nearest(patches: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each patch's nearest prototype, in chunks."""
    sq_norm = (prototypes**2).sum(1)
    dists, indices = [], []
    for chunk in patches.split(CHUNK):
        sq = (chunk**2).sum(1, keepdim=True) - 2 * chunk @ prototypes.T + sq_norm
        d, i = sq.min(dim=1)
        dists.append(d.clamp_min(0).sqrt())
        indices.append(i)
    return torch.cat(dists), torch.cat(indices)


def anomalous_patches(defect_features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The top 10 % of each defect image's patches by distance to the normal prototypes (M*K, C),
    from standardised features (M, C, h, w)."""
    m, c, h, w = defect_features.shape
    per_image = defect_features.permute(0, 2, 3, 1).reshape(m, h * w, c)
    k = max(1, round(TOP_FRACTION * h * w))
    picked = []
    for patches in per_image:
        dist, _ = _nearest(patches, prototypes)
        picked.append(patches[dist.topk(k).indices])
    return torch.cat(picked)


def push_away(
    prototypes: torch.Tensor, normal_patches: torch.Tensor, anomalous: torch.Tensor, seed: int
) -> tuple[torch.Tensor, int]:
    """Prototypes without those the known anomalies use more than the normal patches do;
    returns (kept prototypes, number taken out)."""
    generator = torch.Generator().manual_seed(seed)
    if normal_patches.shape[0] > NORMAL_SAMPLE:
        normal_patches = normal_patches[torch.randperm(normal_patches.shape[0], generator=generator)[:NORMAL_SAMPLE]]
    keep = torch.ones(prototypes.shape[0], dtype=torch.bool)
    radius = _nearest(normal_patches, prototypes)[0].max()
    for _ in range(MAX_ROUNDS):
        kept = prototypes[keep]
        normal_share = torch.bincount(_nearest(normal_patches, kept)[1], minlength=kept.shape[0]).numpy() / normal_patches.shape[0]
        distance, nearest = _nearest(anomalous, kept)
        looks_normal = nearest[distance <= radius]
        if looks_normal.numel() == 0:
            break
        anomalous_count = torch.bincount(looks_normal, minlength=kept.shape[0]).numpy()
        p_value = stats.binom.sf(anomalous_count - 1, anomalous.shape[0], normal_share)
        out = torch.from_numpy((anomalous_count > 0) & (p_value < FAMILY_ALPHA / kept.shape[0]))
        if not out.any() or int(out.sum()) >= kept.shape[0] - 1:
            break
        keep[keep.nonzero().squeeze(1)[out]] = False
    return prototypes[keep], int((~keep).sum())
