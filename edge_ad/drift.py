"""Drift on site (`edge-ad run --drift`): the rolling median of normal-looking scores should stay
inside the band that `edge-ad calibrate` measured (its 10th to 90th percentile of normal scores);
when it leaves, the light, the camera or the parts have changed and it is time to recalibrate."""

from __future__ import annotations

from collections import deque

import numpy as np

from .bundle import Bundle, read_yaml
from .errors import EdgeAdError

CHECK_EVERY = 30  # frames between median checks


class DriftWatch:
    """Rolling median of the scores of frames not flagged anomalous, against a band."""

    def __init__(self, low: float, high: float, window: int):
        if not low < high or window < 2:
            raise EdgeAdError(f"drift band [{low}, {high}] over {window} frames is not a band")
        self.low, self.high, self.window = low, high, window
        self.scores: deque[float] = deque(maxlen=window)
        self.outside = False
        self._seen = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "DriftWatch":
        if bundle.calibration is None:
            raise EdgeAdError(f"{bundle.root}: --drift needs a site calibration; run 'edge-ad calibrate' first")
        band = read_yaml(bundle.calibration).get("drift")
        if not isinstance(band, dict) or not {"low", "high", "window"} <= set(band):
            raise EdgeAdError(f"{bundle.calibration}: no 'drift' band (low, high, window); recalibrate with this edge-ad")
        return cls(float(band["low"]), float(band["high"]), int(band["window"]))

    def add(self, score: float, anomaly: bool) -> dict | None:
        """Record a frame's score; returns a drift event when the median leaves the band or
        comes back into it (once per crossing), else None."""
        if anomaly:
            return None
        self.scores.append(score)
        self._seen += 1
        if len(self.scores) < self.window or self._seen % CHECK_EVERY:
            return None
        median = float(np.median(self.scores))
        outside = not self.low <= median <= self.high
        if outside == self.outside:
            return None
        self.outside = outside
        return {"event": "drift", "state": "outside" if outside else "back", "median": round(median, 6),
                "low": self.low, "high": self.high, "window": self.window}
