"""Image-score thresholds from the scores of frames known to be normal."""

from __future__ import annotations

import numpy as np


def threshold_at_false_alarm_rate(normal_scores: np.ndarray, rate: float) -> float:
    """The score that a new normal frame reaches with probability `rate`.

    The k-th lowest of n normal scores is exceeded by a new normal one with probability
    (n + 1 - k) / (n + 1), whatever their distribution; the threshold is interpolated between
    the two scores around rate (the Weibull plotting position). The plain empirical quantile
    stands for about twice the rate with 100 frames. With fewer than 1/rate - 1 frames the rate
    cannot be resolved and the threshold is their maximum (expected_rate_above).
    """
    scores = np.asarray(normal_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no normal scores to set a threshold from")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"false-alarm rate must be in (0, 1), got {rate}")
    return float(np.quantile(scores, 1.0 - rate, method="weibull"))


def expected_rate_above(normal_frames: int, rate: float) -> float:
    """The share of new normal frames expected at or above threshold_at_false_alarm_rate of
    `normal_frames` scores: `rate`, or 1 / (n + 1) where the frames are too few to resolve it
    and the threshold is their maximum."""
    return max(rate, 1.0 / (normal_frames + 1))
