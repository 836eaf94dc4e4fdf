"""Quantile normalisation of anomaly maps (ULSAD, Section 3.5).

On normal validation frames, q_alpha and q_beta are quantiles of the pooled
pixel values of the raw maps; the map is then mapped linearly so that
q_alpha -> 0 and q_beta -> 0.1. Scores become comparable across models,
branches and sites, and a threshold keeps its meaning after recalibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_AT_BETA = 0.1


@dataclass(frozen=True)
class Quantiles:
    alpha: float  # quantile level, e.g. 0.9
    beta: float  # quantile level, e.g. 0.995
    value_alpha: float  # raw-map value at level alpha
    value_beta: float  # raw-map value at level beta

    def apply(self, raw: np.ndarray) -> np.ndarray:
        scale = TARGET_AT_BETA / (self.value_beta - self.value_alpha)
        return ((raw - self.value_alpha) * scale).astype(np.float32)


def fit_quantiles(raw_maps: np.ndarray, alpha: float = 0.9, beta: float = 0.995) -> Quantiles:
    """Quantiles of all pixel values pooled over the given normal raw maps."""
    if not 0.0 < alpha < beta < 1.0:
        raise ValueError(f"quantile levels must satisfy 0 < alpha < beta < 1, got {alpha}, {beta}")
    values = np.asarray(raw_maps, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("normal maps for quantile fitting are empty or contain NaN")
    value_alpha, value_beta = np.quantile(values, [alpha, beta])
    if not value_beta > value_alpha:
        raise ValueError(f"raw maps are flat: quantile {alpha} and {beta} are both {value_alpha:.6g}")
    return Quantiles(alpha, beta, float(value_alpha), float(value_beta))
