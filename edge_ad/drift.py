"""Drift on site (`edge-ad run --drift`): the rolling median of normal-looking scores should stay
inside the band that `edge-ad calibrate` measured (its 10th to 90th percentile of normal scores);
when it leaves, the light, the camera or the parts have changed and it is time to recalibrate.
When most frames are flagged the median sees too few of them: the view itself has changed (a
covered lens, a light that failed, a camera knocked aside), which is said as a drift too."""

from __future__ import annotations

from collections import deque

import numpy as np

from .bundle import Bundle, drift_band
from .errors import EdgeAdError

CHECK_EVERY = 30  # frames between checks
FLAGGED_SHARE = 0.5  # of the last `window` frames flagged: the view changed, not the parts


class DriftWatch:
    """Rolling median of the scores of frames not flagged anomalous, against a band, and the share
    of the last frames flagged."""

    def __init__(self, low: float, high: float, window: int):
        if not low < high or window < 2:
            raise EdgeAdError(f"drift band [{low}, {high}] over {window} frames is not a band")
        self.low, self.high, self.window = low, high, window
        self.scores: deque[float] = deque(maxlen=window)
        self.flagged: deque[bool] = deque(maxlen=window)
        self.state = "inside"  # of the band, or "outside" it, or "flagged": most frames flagged
        self._seen = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "DriftWatch":
        if bundle.calibration is None:
            raise EdgeAdError(f"{bundle.root}: --drift needs a site calibration; run 'edge-ad calibrate' first")
        return cls(*drift_band(bundle.calibration))

    def add(self, score: float, anomaly: bool) -> dict | None:
        """Record a frame's score and verdict; returns a drift event when the state changes (once
        per change), else None: "outside" when the median of the normal-looking scores leaves the
        band, "flagged" when FLAGGED_SHARE or more of the last `window` frames were flagged, and
        "back" when neither holds again."""
        self.flagged.append(anomaly)
        if not anomaly:
            self.scores.append(score)
        self._seen += 1
        if len(self.flagged) < self.window or self._seen % CHECK_EVERY:
            return None
        share = sum(self.flagged) / self.window
        median = float(np.median(self.scores)) if self.scores else None
        if share >= FLAGGED_SHARE:
            state = "flagged"
        elif len(self.scores) == self.window:
            state = "inside" if self.low <= median <= self.high else "outside"
        else:
            return None  # too few normal-looking frames yet to place the median
        if state == self.state:
            return None
        self.state = state
        return {"event": "drift", "state": "back" if state == "inside" else state,
                "median": None if median is None else round(median, 6), "flagged": round(share, 4),
                "low": self.low, "high": self.high, "window": self.window}
