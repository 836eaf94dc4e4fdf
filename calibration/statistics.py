"""The statistics of on-site calibration: a threshold with a false-alarm guarantee, stability
checks of the normal frames, and the recall / F1 picture when a few known defects are given."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from edge_ad.errors import EdgeAdError

BIMODALITY_LIMIT = 0.555  # the bimodality coefficient of a uniform distribution; above: two modes likely
ALIKE = 1e-5  # scores whose spread is at most this share of the largest are alike: no bimodality
DUPLICATE_LEVELS = 1.0  # mean absolute difference (grey levels, 32x32 thumbnails) below which frames match
DUPLICATE_SHARE = 0.5  # warn when more than this share of consecutive frames match
# Pictures to train on of which this share or more are near-copies show fewer parts than pictures:
# 12 ELPV cells pictured 10 times each gave a bundle whose threshold from export flagged all 377
# normal test cells (README: near-copies). `train` and `record` say so.
COPIES_SHARE = 0.2
# Frames per independent draw (frames_per_draw): Sokal's window, and the estimate below which (or
# with fewer frames than which) consecutive frames count as independent: estimated on independent
# scores, 3 % of 100-frame series reach 2 (none of 3,000-frame ones pass 1.4).
SOKAL_WINDOW = 5.0
CORRELATED_FROM = 2.0
CORRELATION_MIN_FRAMES = 100


class CalibrationError(EdgeAdError):
    """Calibration cannot give what was asked with the frames it has."""


def draws_needed(far: float, confidence: float) -> float:
    """The independent normal frames N that show a false-alarm rate of at most `far` with
    `confidence` when none of them exceeds the threshold: 1 - (1 - far)^N = confidence (log1p:
    1 - 1e-17 is 1.0 in floating point, and log(1.0) a division by zero)."""
    needed = math.log1p(-confidence) / math.log1p(-far)
    if not math.isfinite(needed):  # a rate below about 1e-308
        raise CalibrationError(f"--target-far {far!r}: no number of frames can show a false-alarm rate that small")
    return needed


def frames_needed(far: float, confidence: float) -> int:
    """The fewest normal frames that can show a false-alarm rate of at most `far` with
    `confidence` even when none of them exceeds the threshold: 1 - (1 - far)^N >= confidence."""
    return math.ceil(draws_needed(far, confidence))


def rounded_up(rate: float) -> float:
    """`rate` (above 0) to two significant digits, rounded up: a bound said as "<= X" or a rate
    to ask for must not come out below what the frames show (rounded to the nearest, 300 frames'
    smallest rate 0.009937 was said as 0.0099, for which 302 are needed)."""
    scale = 10.0 ** (1 - math.floor(math.log10(rate)))
    return math.ceil(rate * scale * (1 - 1e-12)) / scale  # (1 - 1e-12): 0.15 * 100 is 15.000000000000002


def smallest_far(draws: float, confidence: float) -> float:
    """The smallest false-alarm rate that `draws` independent normal frames can show with
    `confidence` (none of them at or above the threshold), rounded up: the --target-far that a
    refusal suggests, which must not be refused in turn."""
    return rounded_up(1.0 - (1.0 - confidence) ** (1.0 / draws))


def far_upper_bound(exceedances: float, frames: float, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on the false-alarm rate after `exceedances` of
    `frames` normal frames scored at or above the threshold (counts of independent draws: not
    whole numbers when consecutive frames are alike, frames_per_draw)."""
    if exceedances >= frames:
        return 1.0
    return float(stats.beta.ppf(confidence, exceedances + 1, frames - exceedances))


@dataclass
class Threshold:
    value: float
    exceedances: int  # calibration frames at or above it
    far_bound: float  # upper confidence bound on the false-alarm rate
    per_draw: float = 1.0  # consecutive frames that counted as one independent draw (frames_per_draw)


def threshold_for_far(scores: np.ndarray, far: float, confidence: float, per_draw: float = 1.0) -> Threshold:
    """The lowest threshold whose false-alarm rate is at most `far` with `confidence`, counting
    the normal frames at or above it as independent draws, `per_draw` consecutive frames (scores
    in capture order, frames_per_draw) as one: a part in view for 15 frames is one normal part
    seen, not 15. (A camera repeating one still view is not caught this way: `near_duplicates`.)

    Refuses, naming the frames needed, when even a threshold above every normal score cannot
    show that rate."""
    if not 0.0 < far < 1.0 or not 0.0 < confidence < 1.0:
        raise CalibrationError(f"--target-far {far} and --confidence {confidence} must lie in (0, 1)")
    ordered = np.sort(np.asarray(scores, np.float64))[::-1]
    n = ordered.size
    draws, needed = n / per_draw, frames_needed(far, confidence)
    if draws < draws_needed(far, confidence):  # not `needed`, rounded up: draws need not be whole
        if per_draw > 1:
            frames = (f"{n} normal frames, about {per_draw:.0f} in a row scoring alike (a part in view that long, or "
                      "neighbouring pictures of a folder that look alike), are "
                      f"worth about {math.floor(draws)} independent ones: they")
            more = (f"at least {needed} independent ones are needed (about {needed * per_draw:.0f} frames at this "
                    "pace: collect more with --frames, over more parts")
        else:
            frames, more = f"{n} normal frames", (f"at least {needed} are needed (collect more with --frames from a "
                                                  "source that has them (a folder or video ends at its last picture)")
        raise CalibrationError(
            f"{frames} cannot show a false-alarm rate of {far:g} with {confidence:.0%} confidence: {more}, or ask "
            f"for --target-far {smallest_far(draws, confidence):g} or more)"
        )
    k = 0  # the largest count of normal frames above the threshold that the bound allows
    while k + 1 < n and far_upper_bound((k + 1) / per_draw, draws, confidence) <= far:
        k += 1
    value = float(np.nextafter(ordered[k], np.inf))  # just above the (k+1)-th highest normal score
    return threshold_at_value(ordered, value, confidence, per_draw)  # k above it, or fewer where scores tie


def threshold_at_value(scores: np.ndarray, value: float, confidence: float, per_draw: float = 1.0) -> Threshold:
    """The threshold `value` over these normal scores: the frames at or above it, and the upper
    bound on its false-alarm rate at `confidence` (`per_draw` as threshold_for_far counts)."""
    above = int((np.asarray(scores) >= value).sum())
    return Threshold(value, above, far_upper_bound(above / per_draw, len(scores) / per_draw, confidence), per_draw)


def frames_per_draw(scores: np.ndarray, min_frames: int = CORRELATION_MIN_FRAMES) -> float:
    """How many consecutive frames count as one independent draw of a normal frame: the
    integrated autocorrelation time tau of the scores in capture order, 1 for frames of different
    parts, about 20 when each part stays in view for 20 frames. Sokal's automatic window (as
    emcee's `integrated_time`): tau = 1 + 2 (rho_1 + ... + rho_M) at the first lag M >= 5 tau.
    1 below CORRELATED_FROM or with fewer than `min_frames` frames, where independent frames' own
    estimates reach it (a smaller `min_frames` gives a rougher estimate sooner)."""
    x = np.asarray(scores, np.float64)
    n = x.size
    x = x - x.mean()
    variance = float(x @ x) / max(n, 1)
    if n < min_frames or variance <= 0:
        return 1.0
    size = 1 << (2 * n - 1).bit_length()  # zero-padded: the circular correlation is the linear one
    spectrum = np.fft.rfft(x, size)
    rho = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n] / (n * variance)
    taus = 2.0 * np.cumsum(rho) - 1.0  # tau with the window at each lag
    inside = np.arange(n) >= SOKAL_WINDOW * taus
    tau = float(taus[int(np.argmax(inside))] if inside.any() else taus[-1])
    return tau if tau >= CORRELATED_FROM else 1.0


def score_percentiles(scores: np.ndarray) -> dict[str, float]:
    """The 10th, 50th and 90th percentile of normal image scores, as bundles and calibrations
    record them (drift band; the scale on which VariantDetector compares variants)."""
    return {q: float(np.quantile(scores, p)) for q, p in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))}


def bimodality(scores: np.ndarray) -> float:
    """Sarle's bimodality coefficient (skewness^2 + 1) / kurtosis, bias-corrected; above 0.555
    the scores likely come from two populations (two products, a light change). Scores alike to
    five digits (a frozen camera, a lens cap on) have no shape to measure: 0, where scipy's
    moments would warn of precision loss and give NaN."""
    n = scores.size
    scores = scores.astype(np.float64)
    if n < 4 or np.ptp(scores) <= ALIKE * np.abs(scores).max():
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


def near_copies(thumbnails: np.ndarray, block: int = 1024) -> np.ndarray:
    """Which of the (N, 32, 32) grey thumbnails have a near-copy among the others, in any order:
    a root-mean-square difference under DUPLICATE_LEVELS grey levels. Pairwise in blocks of rows,
    so thousands of pictures take a few megabytes at a time."""
    flat = thumbnails.reshape(len(thumbnails), -1).astype(np.float64)
    squared = (flat**2).sum(1)
    found = np.zeros(len(flat), bool)
    for start in range(0, len(flat), block):
        rows = slice(start, start + block)
        distance = squared[rows, None] + squared[None] - 2 * flat[rows] @ flat.T  # summed squared differences
        distance[np.arange(distance.shape[0]), np.arange(start, start + distance.shape[0])] = np.inf
        found[rows] = distance.min(1) < DUPLICATE_LEVELS**2 * flat.shape[1]
    return found


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
