"""The statistics of on-site calibration: a threshold with a false-alarm guarantee, stability
checks of the normal frames, and the recall / F1 picture when a few known defects are given."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from edge_ad.errors import EdgeAdError

BIMODALITY_LIMIT = 0.555  # the bimodality coefficient of a uniform distribution; above: two modes likely
DUPLICATE_LEVELS = 1.0  # mean absolute difference (grey levels, 32x32 thumbnails) below which frames match
DUPLICATE_SHARE = 0.5  # warn when more than this share of consecutive frames match


class CalibrationError(EdgeAdError):
    """Calibration cannot give what was asked with the frames it has."""


def frames_needed(far: float, confidence: float) -> int:
    """The fewest normal frames that can show a false-alarm rate of at most `far` with
    `confidence` even when none of them exceeds the threshold: 1 - (1 - far)^N >= confidence."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - far))


def far_upper_bound(exceedances: int, frames: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on the false-alarm rate after `exceedances` of
    `frames` normal frames scored at or above the threshold."""
    if exceedances >= frames:
        return 1.0
    return float(stats.beta.ppf(confidence, exceedances + 1, frames - exceedances))


@dataclass
class Threshold:
    value: float
    exceedances: int  # calibration frames at or above it
    far_bound: float  # upper confidence bound on the false-alarm rate


def threshold_for_far(scores: np.ndarray, far: float, confidence: float) -> Threshold:
    """The lowest threshold whose false-alarm rate is at most `far` with `confidence`, counting
    the normal frames at or above it (frames are treated as independent draws: a camera
    repeating one view gives fewer independent frames than it seems; see `near_duplicates`).

    Refuses, naming the frames needed, when even a threshold above every normal score cannot
    show that rate."""
    if not 0.0 < far < 1.0 or not 0.0 < confidence < 1.0:
        raise CalibrationError(f"--target-far {far} and --confidence {confidence} must lie in (0, 1)")
    ordered = np.sort(np.asarray(scores, np.float64))[::-1]
    n = ordered.size
    if n < frames_needed(far, confidence):
        raise CalibrationError(
            f"{n} normal frames cannot show a false-alarm rate of {far:g} with {confidence:.0%} confidence: "
            f"at least {frames_needed(far, confidence)} are needed (collect more with --frames, or ask for "
            f"--target-far {1 - (1 - confidence) ** (1 / n):.2g} or more)"
        )
    k = 0  # the largest count of normal frames above the threshold that the bound allows
    while k + 1 < n and far_upper_bound(k + 1, n, confidence) <= far:
        k += 1
    value = float(np.nextafter(ordered[k], np.inf))  # just above the (k+1)-th highest normal score
    return Threshold(value, k, far_upper_bound(k, n, confidence))


def score_percentiles(scores: np.ndarray) -> dict[str, float]:
    """The 10th, 50th and 90th percentile of normal image scores, as bundles and calibrations
    record them (drift band; the scale on which VariantDetector compares variants)."""
    return {q: float(np.quantile(scores, p)) for q, p in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))}


def bimodality(scores: np.ndarray) -> float:
    """Sarle's bimodality coefficient (skewness^2 + 1) / kurtosis, bias-corrected; above 0.555
    the scores likely come from two populations (two products, a light change)."""
    n = scores.size
    if n < 4:
        return 0.0
    skew = stats.skew(scores, bias=False)
    excess = stats.kurtosis(scores, bias=False)
    return float((skew**2 + 1) / (excess + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def near_duplicates(thumbnails: np.ndarray) -> float:
    """Share of consecutive frames whose 32x32 grey thumbnails differ by less than one grey
    level on average: near 1 for a frozen camera."""
    if len(thumbnails) < 2:
        return 0.0
    diffs = np.abs(np.diff(thumbnails.astype(np.float32), axis=0)).mean(axis=(1, 2))
    return float((diffs < DUPLICATE_LEVELS).mean())


def split_half(values_first: float, values_second: float) -> float:
    """Relative disagreement of a number fitted on the first and on the second half of the frames."""
    scale = max(abs(values_first), abs(values_second), 1e-12)
    return abs(values_first - values_second) / scale


@dataclass
class DefectCheck:
    recall: float  # share of the known defects at or above the threshold
    f1_threshold: float  # the threshold with the best F1 over normal and defect frames
    f1: float
    f1_recall: float
    f1_false_alarm_rate: float


def check_defects(normal: np.ndarray, defects: np.ndarray, threshold: float) -> DefectCheck:
    """Recall of the known defects at `threshold`, and the F1-best threshold (a frame is
    flagged at score >= threshold)."""
    candidates = np.unique(np.concatenate([normal, defects]))
    tp = (defects[None, :] >= candidates[:, None]).sum(axis=1)
    fp = (normal[None, :] >= candidates[:, None]).sum(axis=1)
    f1 = 2 * tp / (2 * tp + fp + (defects.size - tp))
    best = int(np.argmax(f1))
    return DefectCheck(
        recall=float((defects >= threshold).mean()),
        f1_threshold=float(candidates[best]),
        f1=float(f1[best]),
        f1_recall=float(tp[best] / defects.size),
        f1_false_alarm_rate=float(fp[best] / normal.size),
    )
