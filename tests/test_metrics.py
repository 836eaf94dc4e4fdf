"""Metrics against scikit-learn and a slow, obviously-correct AUPRO reference."""

import cv2
import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from edge_ad.metrics import aupro, auroc, f1_max, roc_curve
from export.eval_report import worst_cases


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_curve_matches_sklearn_and_worst_cases_are_picked():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels, 1.0), 1)
    fpr, tpr = roc_curve(labels, scores)
    expected_fpr, expected_tpr, _ = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected_fpr)
    np.testing.assert_allclose(tpr, expected_tpr)
    labels, scores = np.array([0, 1, 0, 1, 0, 1]), np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.3])
    assert worst_cases(labels, scores, 2) == ([0, 4], [1, 5])  # normal 0.9, 0.5; anomalous 0.1, 0.3


def test_the_metrics_run_on_a_numpy_1_without_trapezoid(monkeypatch):
    """pyproject admits numpy 1.24 to 1.26, which names np.trapezoid trapz: edge-ad eval stopped
    there with an AttributeError (seen with numpy 1.26 beside the runtime on Python 3.10)."""
    trapezoid = np.trapezoid if hasattr(np, "trapezoid") else np.trapz
    monkeypatch.delattr(np, "trapezoid", raising=False)
    monkeypatch.setattr(np, "trapz", trapezoid, raising=False)  # numpy 2's trapz only warns that it is going
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.3, 0.2])
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    masks = np.zeros((1, 20, 20), bool)
    masks[0, :10, :10] = True
    assert aupro(masks, masks.astype(float), 0.3) == pytest.approx(1.0)


def test_auroc_needs_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="both"):
        auroc(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_f1_max_matches_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(labels, 1.0)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best, threshold = f1_max(labels, scores)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    predicted = scores >= threshold
    tp = (predicted & (labels == 1)).sum()
    assert 2 * tp / (predicted.sum() + labels.sum()) == pytest.approx(best)


def _aupro_slow(masks, maps, limit):
    """Per threshold: mean overlap over all regions, FPR over normal pixels; trapezoid to the limit."""
    regions = []
    for i, mask in enumerate(masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [(i, labels == r) for r in range(1, count)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fpr = (predicted & normal).sum() / normal.sum()
        pro = np.mean([predicted[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    keep = fpr <= limit
    f, p = list(fpr[keep]), list(pro[keep])
    nxt = np.argmax(fpr > limit)
    if fpr[-1] > limit:
        f.append(limit)
        p.append(np.interp(limit, [fpr[nxt - 1], fpr[nxt]], [pro[nxt - 1], pro[nxt]]))
    return sum((f[i + 1] - f[i]) * (p[i + 1] + p[i]) / 2 for i in range(len(f) - 1)) / limit


def test_aupro_matches_slow_reference():
    rng = np.random.default_rng(4)
    masks = np.zeros((3, 24, 24), bool)
    masks[0, 2:6, 3:9] = True
    masks[0, 15:22, 15:18] = True  # two regions of different size in one image
    masks[1, 10:20, 4:8] = True  # image 2 stays normal
    maps = np.round(rng.normal(masks * 1.5, 1.0), 2)
    assert aupro(masks, maps, 0.3) == pytest.approx(_aupro_slow(masks, maps, 0.3), abs=1e-9)


def test_aupro_perfect_and_region_weighting():
    masks = np.zeros((1, 20, 20), bool)
    masks[0, :10, :10] = True  # large region
    masks[0, 15:17, 15:17] = True  # small region
    assert aupro(masks, masks.astype(float), 0.3) == pytest.approx(1.0)
    # Only the large region found: PRO is 0.5 at FPR 0 (pixel-weighted it would be 100/104), then
    # rises linearly to 1 at FPR 1, so 0.65 at FPR 0.3; area (0.5 + 0.65) / 2 * 0.3, normalised: 0.575.
    only_large = np.zeros_like(masks, float)
    only_large[0, :10, :10] = 1.0
    assert aupro(masks, only_large, 0.3) == pytest.approx(0.575)


def test_aupro_over_valid_pixels_is_aupro_of_those_pixels():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:6, 3:9] = masks[1, 10:15, 20:28] = masks[2, 5:12, 12:18] = True
    maps = rng.random(masks.shape) + masks * rng.random(masks.shape)
    valid = np.zeros((20, 30), bool)
    valid[:, :16] = True  # cuts the third region in two and leaves the second out
    expected = aupro(masks[:, :, :16], maps[:, :, :16], 0.3)
    assert aupro(masks, maps, 0.3, valid=valid) == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(aupro(masks, maps, 0.3))
