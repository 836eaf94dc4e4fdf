"""Anomaly-detection metrics in numpy: image/pixel AUROC (and its ROC curve), AUPRO and F1-max.

Kept here (not in scikit-learn) so that evaluation and on-site calibration run
on the device without extra dependencies; tests compare them to scikit-learn.
"""

from __future__ import annotations

import cv2
import numpy as np


def _ranked_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, highest score first."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, scores[last_of_tie]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under y(x) by the trapezoid rule: np.trapezoid, numpy 2.0's name for np.trapz. The
    numpy 1.24 to 1.26 that pyproject admits (a Jetson may keep one for modules built against it)
    has only trapz, and `edge-ad eval` runs there."""
    return float((np.trapezoid if hasattr(np, "trapezoid") else np.trapz)(y, x))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    tps, fps, _ = _ranked_counts(labels, scores)
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("AUROC needs both normal and anomalous samples")
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; ties count half, as in scikit-learn's roc_auc_score."""
    fpr, tpr = roc_curve(labels, scores)
    return _trapezoid(tpr, fpr)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold (predict anomalous when score >= it)."""
    tps, fps, thresholds = _ranked_counts(labels, scores)
    positives = tps[-1]
    if positives == 0:
        raise ValueError("F1 needs at least one anomalous sample")
    precision = tps / (tps + fps)
    recall = tps / positives
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, valid: np.ndarray | None = None) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, normalised to [0, 1].

    masks: bool (N, H, W); maps: float (N, H, W). Regions are 8-connected
    components of each mask; every region weighs the same whatever its size.
    valid: bool (H, W), the pixels that count (an inspection mask's); the others are neither
    region nor normal pixels.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    if valid is not None:
        masks = masks & valid
    region_weight = np.zeros(masks.shape, np.float64)
    n_regions = 0
    for i, mask in enumerate(masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for region in range(1, count):
            member = labels == region
            region_weight[i][member] = 1.0 / member.sum()
        n_regions += count - 1
    negatives = ~masks if valid is None else ~masks & valid
    n_negative = int(negatives.sum())
    if n_regions == 0 or n_negative == 0:
        raise ValueError("AUPRO needs anomalous regions and normal pixels")
    order = np.argsort(-maps.ravel(), kind="mergesort")
    scores = maps.ravel()[order]
    pro_steps = region_weight.ravel()[order] / n_regions
    fpr_steps = negatives.ravel()[order] / n_negative
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    pro = np.r_[0.0, np.cumsum(pro_steps)[last_of_tie]]
    fpr = np.r_[0.0, np.cumsum(fpr_steps)[last_of_tie]]
    # Interpolate the curve at exactly fpr_limit and integrate up to it.
    end = int(np.searchsorted(fpr, fpr_limit, side="right"))
    if end < fpr.size:
        pro_at_limit = np.interp(fpr_limit, fpr[end - 1 : end + 1], pro[end - 1 : end + 1])
        fpr = np.r_[fpr[:end], fpr_limit]
        pro = np.r_[pro[:end], pro_at_limit]
    return _trapezoid(pro, fpr) / fpr_limit
