"""Evaluation of a bundle on a test split: image AUROC (overall and per group), F1-max, and
pixel AUROC and AUPRO where ground-truth masks exist. Runs the bundle as the device does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_ad.datasets import Sample, load_samples
from edge_ad.detector import Detector
from edge_ad.metrics import aupro, auroc, f1_max


def _group_aurocs(samples: list[Sample], scores: np.ndarray) -> dict[str, float]:
    """AUROC per group: its anomalies against its own normal images when the group has some
    (ELPV module types), else against all normal images (MVTec defect types)."""
    labels = np.array([s.label for s in samples])
    groups = np.array([s.group for s in samples])
    out = {}
    for group in sorted(set(groups[labels == 1])):
        negatives = (labels == 0) & (groups == group)
        if not negatives.any():
            negatives = labels == 0
        keep = negatives | ((labels == 1) & (groups == group))
        out[group] = auroc(labels[keep], scores[keep])
    return out


def evaluate(
    bundle: str | Path,
    data: str,
    batch_size: int = 8,
    steps: int | None = None,
    backend: str = "auto",
    exclude: frozenset[str] = frozenset(),
) -> dict:
    """Score every test image of `data` with the bundle (at `steps` bridge steps) and return the
    metrics; samples named in `exclude` (known defects used in training) are left out."""
    detector = Detector.load(bundle, backend=backend, steps=steps)
    samples = [s for s in load_samples(data, "test") if s.name not in exclude]
    height, width = detector.bundle.input_size
    with_masks = any(s.mask_path is not None for s in samples)
    scores, maps, masks = [], [], []
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluating", unit="batch"):
        chunk = samples[start : start + batch_size]
        for sample, result in zip(chunk, detector.batch([s.image() for s in chunk], color="RGB")):
            scores.append(result.score)
            if with_masks:
                maps.append(detector.normalised_maps(result.grid_map[None])[0])
                masks.append(sample.mask(height, width))
    scores = np.array(scores)
    labels = np.array([s.label for s in samples])
    f1, f1_threshold = f1_max(labels, scores)
    report = {
        "data": data,
        "bundle": str(bundle),
        "backend": detector.backend,
        "precision": detector.precision,
        "bridge_steps": detector.steps,
        "test_images": len(samples),
        "normal_images": int((labels == 0).sum()),
        "anomalous_images": int((labels == 1).sum()),
        "image_auroc": auroc(labels, scores),
        "image_auroc_per_group": _group_aurocs(samples, scores),
        "image_f1_max": f1,
        "image_f1_threshold": f1_threshold,
        "bundle_threshold": detector.threshold,
    }
    if with_masks:
        maps_array, masks_array = np.stack(maps), np.stack(masks)
        report["pixel_auroc"] = auroc(masks_array, maps_array)
        report["aupro_0.3"] = aupro(masks_array, maps_array, 0.3)
    return report
