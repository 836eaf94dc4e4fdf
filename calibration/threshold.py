"""Image-score thresholds from the scores of frames known to be normal."""

from __future__ import annotations

import numpy as np


def threshold_at_false_alarm_rate(normal_scores: np.ndarray, rate: float) -> float:
    """The score above which a fraction `rate` of normal frames lies.

    With fewer than 1/rate frames the empirical quantile cannot resolve the rate;
    the maximum normal score is then the threshold: none of these frames is flagged,
    and a new normal one with probability 1 / (n + 1) (expected_rate_above).
    """
    scores = np.asarray(normal_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no normal scores to set a threshold from")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"false-alarm rate must be in (0, 1), got {rate}")
    if not resolves(scores.size, rate):
        return float(scores.max())
    return float(np.quantile(scores, 1.0 - rate))


def resolves(normal_frames: int, rate: float) -> bool:
    """Whether `normal_frames` scores are enough to place a threshold at `rate` (1/rate of them);
    with fewer, threshold_at_false_alarm_rate is their maximum."""
    return normal_frames >= 1.0 / rate


def expected_rate_above(normal_frames: int, rate: float) -> float:
    """The share of new normal frames expected at or above threshold_at_false_alarm_rate of
    `normal_frames` scores, whatever their distribution: the k-th lowest of n is exceeded with
    probability (n + 1 - k) / (n + 1), so their maximum 1 / (n + 1), and the interpolated
    quantile somewhat more than `rate` (1.9 % for rate 0.01 and 113 frames)."""
    n = normal_frames
    position = (n - 1) * (1.0 - rate) if resolves(n, rate) else n - 1  # 0-based, between order statistics
    return (n - position) / (n + 1)
