"""Image-score thresholds from the scores of frames known to be normal."""

from __future__ import annotations

import numpy as np


def threshold_at_false_alarm_rate(normal_scores: np.ndarray, rate: float) -> float:
    """The score above which a fraction `rate` of normal frames lies.

    With fewer than 1/rate frames the empirical quantile cannot resolve the rate;
    the maximum normal score is then the threshold (no normal frame is flagged).
    """
    scores = np.asarray(normal_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no normal scores to set a threshold from")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"false-alarm rate must be in (0, 1), got {rate}")
    if scores.size < 1.0 / rate:
        return float(scores.max())
    return float(np.quantile(scores, 1.0 - rate))
