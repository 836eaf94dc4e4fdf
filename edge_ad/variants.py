"""Several product variants on one line: one bundle per variant, every frame scored by all of
them and judged by the variant that explains it best.

A model of one variant's good parts fits them more tightly than one model of every variant
(ELPV: one bundle per module type against one for both, README "Several variants on one line").
A line that switches variants without telling the inspection still needs to know which bundle
applies. No router decides: each frame goes through every bundle, and the bundle to which the
frame looks most normal gives the result, judged by that bundle's own threshold. "Most normal"
is measured against each bundle's own normal images: (score - p50) / (p90 - p50), the median and
90th percentile of their image scores, recorded at export (validation images) and replaced by
`edge-ad calibrate` (site frames). The raw scores compare worse (ELPV seed 1: 0.936 against
0.941), and so do scores relative to each threshold (0.917): a threshold is one high quantile of
a few normal images and moves more between variants than the bulk does (README). A frame costs
the sum of the bundles' times.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .bundle import Bundle
from .detector import Detector, Result
from .errors import EdgeAdError


def parse_variants(specs: str | Sequence[str]) -> dict[str, Path]:
    """'NAME=BUNDLE' or 'BUNDLE' (named after its folder or archive) -> {name: bundle path}."""
    if isinstance(specs, str):  # one bundle, not a sequence of its characters
        specs = [specs]
    variants: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name:  # a path with '=' in it
            name, path = Path(spec.rstrip("/")).name.removesuffix(".tar"), spec
        if not name or not path:
            raise EdgeAdError(f"--bundle {spec!r}: expected NAME=BUNDLE or BUNDLE")
        if name in variants:
            raise EdgeAdError(f"--bundle {spec!r}: a variant named {name!r} is already given; name them NAME=BUNDLE")
        variants[name] = Path(path)
    return variants


def comparability_problem(name: str, bundle: Bundle) -> str | None:
    """Why variant `name`'s bundle cannot be compared with other variants' bundles, or None."""
    normal = bundle.normal_scores
    if normal is not None and normal[1] > normal[0]:
        return None
    return (f"variant {name!r}: {bundle.calibration or bundle.root} records no spread of normal image scores "
            "(comparing variants needs normal_scores with p50 below p90); export the bundle again with this "
            "edge-ad, or calibrate it on site")


class VariantDetector:
    """Bundles of several product variants run as one detector (see the module docstring).

    >>> detector = load_detector(["mono=bundle-mono", "poly=bundle-poly"])
    >>> result = detector(frame)
    >>> result.variant, result.score, result.is_anomaly    # the variant that explains the frame best
    """

    def __init__(self, detectors: dict[str, Detector]) -> None:
        if len(detectors) < 2:
            raise EdgeAdError(f"variants: need bundles of at least two variants, got {len(detectors)}")
        for name, detector in detectors.items():
            problem = comparability_problem(name, detector.bundle)
            if problem is not None:
                raise EdgeAdError(problem)
        self.detectors = detectors

    def relative(self, values: float | np.ndarray, variant: str) -> float | np.ndarray:
        """A score (or map) of `variant` relative to its normal images' scores: (x - p50) / (p90 - p50)."""
        p50, p90 = self.detectors[variant].bundle.normal_scores
        return (values - p50) / (p90 - p50)

    def detector_of(self, result: Result) -> Detector:
        """The detector of the variant that gave `result`."""
        return self.detectors[result.variant]

    def __call__(self, frame: np.ndarray, color: str = "BGR") -> Result:
        return self.batch([frame], color)[0]

    def batch(self, frames: Sequence[np.ndarray], color: str = "BGR") -> list[Result]:
        """Score the frames with every variant; each frame's result is that of the variant with the
        lowest relative score, with `variant` set and every variant's stage times ('variant/stage')."""
        per_variant = {name: detector.batch(frames, color) for name, detector in self.detectors.items()}
        chosen = []
        for i in range(len(frames)):
            best = min(per_variant, key=lambda name: self.relative(per_variant[name][i].score, name))
            times = {
                f"{name}/{stage}": ms for name, results in per_variant.items() for stage, ms in results[i].times_ms.items()
            }
            chosen.append(replace(per_variant[best][i], variant=best, times_ms=times))
        return chosen


def load_detector(bundles: str | Sequence[str], **options) -> Detector | VariantDetector:
    """One bundle ('BUNDLE' or 'NAME=BUNDLE'): its Detector; several, one per product variant: a
    VariantDetector. `options` go to Detector.load (backend, steps, threads, spin)."""
    variants = parse_variants(bundles)
    if len(variants) == 1:
        return Detector.load(next(iter(variants.values())), **options)
    return VariantDetector({name: Detector.load(path, **options) for name, path in variants.items()})
