"""Regions of an anomaly map above the threshold: bounding boxes, areas and peaks for events, and
the image score when a defect must cover a least area (`calibrate --min-defect-area`)."""

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


def input_area(frame_pixels: int, frame_shape: tuple[int, ...], input_size: tuple[int, int]) -> int:
    """An area in pixels of a frame of `frame_shape` -> the same share of a map at `input_size`
    (at least one pixel)."""
    frame_area = frame_shape[0] * frame_shape[1]
    return max(1, round(frame_pixels * input_size[0] * input_size[1] / frame_area))


def _largest_region(above: np.ndarray) -> int:
    """Pixels of the largest 8-connected region of a boolean image."""
    count, labels = cv2.connectedComponents(above.view(np.uint8), connectivity=8)
    return int(np.bincount(labels[above]).max()) if count > 1 else 0  # over the pixels above only: 10x faster


def region_score(anomaly_map: np.ndarray, min_area: int, inspect: np.ndarray | None = None) -> float:
    """The highest level at which `anomaly_map` (within `inspect`) has a connected region
    (8-connectivity) of at least `min_area` pixels: a frame is anomalous at a threshold exactly
    when a region of the map that large is at or above it. With `min_area` 1, the map's maximum.

    Exact: the level is one of the map's values, found by a search over them sorted, one
    connected-components pass per step (about 0.05 ms at 256 x 256 on an x86 core). Where no
    region is that large at any level (an inspected part in pieces smaller than that), the map's
    minimum."""
    values = anomaly_map[inspect] if inspect is not None else anomaly_map.ravel()
    if min_area <= 1:
        return float(values.max())
    ordered = np.sort(values)[::-1]

    def large_enough(k: int) -> bool:  # at the level of the k-th highest value
        above = anomaly_map >= ordered[k]
        if inspect is not None:
            above &= inspect
        return _largest_region(above) >= min_area

    low = min(min_area, ordered.size) - 1  # fewer pixels above it cannot make a region that large
    if large_enough(low):
        return float(ordered[low])
    step = min_area  # the first k that is large enough lies in (low, high]: widen by doubling, then halve
    while True:
        high = min(low + step, ordered.size - 1)
        if large_enough(high):
            break
        if high == ordered.size - 1:
            return float(ordered[-1])
        low, step = high, 2 * step
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if large_enough(middle) else (middle, high)
    return float(ordered[high])
