"""Regions of an anomaly map above the threshold: bounding boxes, areas and peaks for events."""

from __future__ import annotations

import cv2
import numpy as np

MAX_REGIONS = 16  # the largest ones; an event line stays short on a frame full of noise


def regions(anomaly_map: np.ndarray, threshold: float) -> list[dict]:
    """Connected regions (8-connectivity) of `anomaly_map >= threshold`, largest first:
    x, y, width, height (pixels of the frame), area (pixels above threshold) and peak score."""
    above = (anomaly_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    found = []
    for label in range(1, count):
        x, y, width, height, area = (int(v) for v in stats[label])
        peak = float(anomaly_map[y : y + height, x : x + width][labels[y : y + height, x : x + width] == label].max())
        found.append({"x": x, "y": y, "width": width, "height": height, "area": area, "peak": round(peak, 6)})
    found.sort(key=lambda r: r["area"], reverse=True)
    return found[:MAX_REGIONS]
