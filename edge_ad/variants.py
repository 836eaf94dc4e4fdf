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
from typing import Mapping, Sequence

import numpy as np

from .bundle import Bundle
from .detector import Detector, Result
from .errors import EdgeAdError
from .masks import InspectionMask


def split_spec(spec: str) -> tuple[str | None, str]:
    """'NAME=BUNDLE' -> (NAME, BUNDLE); 'BUNDLE' (also a path with '=' in it) -> (None, BUNDLE)."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep and "/" not in name else (None, spec)


def parse_variants(specs: str | Sequence[str]) -> dict[str, Path]:
    """'NAME=BUNDLE' or 'BUNDLE' (named after its folder or archive) -> {name: bundle path}."""
    if isinstance(specs, str):  # one bundle, not a sequence of its characters
        specs = [specs]
    variants: dict[str, Path] = {}
    for spec in specs:
        name, path = split_spec(spec)
        if name is None:
            name = Path(spec.rstrip("/")).name.removesuffix(".tar")
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


def check_comparable(bundles: Mapping[str, Bundle]) -> None:
    """Refuse variants that cannot be compared: fewer than two, or one without normal scores."""
    if len(bundles) < 2:
        raise EdgeAdError(f"variants: need bundles of at least two variants, got {len(bundles)}")
    for name, bundle in bundles.items():
        problem = comparability_problem(name, bundle)
        if problem is not None:
            raise EdgeAdError(problem)


def relative_score(values: float | np.ndarray, bundle: Bundle) -> float | np.ndarray:
    """A score (or map) relative to `bundle`'s normal images' scores: (x - p50) / (p90 - p50)."""
    p50, p90 = bundle.normal_scores
    return (values - p50) / (p90 - p50)


def pick_variant(results: Mapping[str, Result], bundles: Mapping[str, Bundle]) -> Result:
    """One frame's result from every variant -> that of the variant with the lowest relative score,
    with `variant` set and every variant's stage times ('variant/stage')."""
    best = min(results, key=lambda name: relative_score(results[name].score, bundles[name]))
    times = {f"{name}/{stage}": ms for name, result in results.items() for stage, ms in result.times_ms.items()}
    return replace(results[best], variant=best, times_ms=times)


class VariantDetector:
    """Bundles of several product variants run as one detector (see the module docstring).

    >>> detector = load_detector(["mono=bundle-mono", "poly=bundle-poly"])
    >>> result = detector(frame)
    >>> result.variant, result.score, result.is_anomaly    # the variant that explains the frame best
    """

    def __init__(self, detectors: dict[str, Detector]) -> None:
        check_comparable({name: detector.bundle for name, detector in detectors.items()})
        self.detectors = detectors

    def relative(self, values: float | np.ndarray, variant: str) -> float | np.ndarray:
        """A score (or map) of `variant` relative to its normal images' scores: (x - p50) / (p90 - p50)."""
        return relative_score(values, self.detectors[variant].bundle)

    def calibrated(self, folders: str | Path | Mapping[str, Path]) -> tuple["VariantDetector", str | None]:
        """Every variant's detector with its site calibration in `folders`/NAME (one camera's,
        Detector.calibrated: the same graphs), or in a folder given per variant; why, for the
        variants that have none there."""
        views, problems = {}, []
        for name, detector in self.detectors.items():
            folder = folders[name] if isinstance(folders, Mapping) else Path(folders) / name
            views[name], problem = detector.calibrated(folder)
            if problem is not None:
                problems.append(f"variant {name}: {problem}")
        if len(problems) == len(views):  # none there: this detector itself, which batches with its other sources
            return self, "; ".join(problems)
        return VariantDetector(views), "; ".join(problems) or None

    def detector_of(self, result: Result) -> Detector:
        """The detector of the variant that gave `result`."""
        return self.detectors[result.variant]

    def __call__(
        self, frame: np.ndarray, color: str = "BGR", mask: InspectionMask | None = None, variant: str | None = None
    ) -> Result:
        return self.batch([frame], color, [mask], [variant])[0]

    def batch(
        self, frames: Sequence[np.ndarray], color: str = "BGR", masks: Sequence[InspectionMask | None] | None = None,
        variants: Sequence[str | None] | None = None,
    ) -> list[Result]:
        """Score the frames (within their inspection `masks`, if given) with every variant; each
        frame's result is that of the variant with the lowest relative score, with `variant` set and
        every variant's stage times ('variant/stage'). A frame whose variant is known (`variants`,
        as a line's PLC says which product it makes) is scored by that variant's bundle alone."""
        if not len(frames):
            return []
        return score_views([self] * len(frames), frames, color, masks, variants)


def score_views(
    views: Sequence[VariantDetector], frames: Sequence[np.ndarray], color: str = "BGR",
    masks: Sequence[InspectionMask | None] | None = None, variants: Sequence[str | None] | None = None,
) -> list[Result]:
    """Each frame scored by its own detector of `views`: one VariantDetector and its calibrated
    views (cameras with their own site calibration of the same bundles, which share each
    variant's graphs). Each variant's graphs run once for all the frames it scores, then each
    frame's own calibration of that variant applies; the result is VariantDetector.batch's."""
    masks = list(masks) if masks is not None else [None] * len(frames)
    known = list(variants) if variants is not None else [None] * len(frames)
    names = list(views[0].detectors)
    unknown = sorted({v for v in known if v is not None and v not in names})
    if unknown:
        raise EdgeAdError(f"variants {unknown} are none of this detector's ({', '.join(names)})")
    scored: list[dict[str, Result]] = [{} for _ in frames]
    for name in names:
        indices = [i for i, v in enumerate(known) if v in (None, name)]
        if not indices:
            continue
        grids, times = views[indices[0]].detectors[name].frame_grid_maps([frames[i] for i in indices], color)
        for view in {id(views[i]): views[i] for i in indices}.values():
            mine = [k for k, i in enumerate(indices) if views[i] is view]
            results = view.detectors[name].score_grids(grids[mine], [frames[indices[k]].shape for k in mine], times,
                                                       [masks[indices[k]] for k in mine])
            for k, result in zip(mine, results):
                scored[indices[k]][name] = result
    return [pick_variant(results, {name: views[i].detectors[name].bundle for name in results})
            for i, results in enumerate(scored)]


AnyDetector = Detector | VariantDetector


def detectors_by_variant(detector: AnyDetector) -> dict[str | None, Detector]:
    """The detector's one-bundle detectors, keyed by variant (None for a single bundle)."""
    return dict(detector.detectors) if isinstance(detector, VariantDetector) else {None: detector}


def bundles_of(detector: AnyDetector) -> dict[str | None, Bundle]:
    """The detector's bundles, keyed by variant (None for a single bundle)."""
    return {name: d.bundle for name, d in detectors_by_variant(detector).items()}


def load_detector(bundles: str | Sequence[str], **options) -> Detector | VariantDetector:
    """One bundle ('BUNDLE' or 'NAME=BUNDLE'): its Detector; several, one per product variant: a
    VariantDetector. `options` go to Detector.load (backend, steps, threads, spin, dla_core)."""
    variants = parse_variants(bundles)
    if len(variants) == 1:
        return Detector.load(next(iter(variants.values())), **options)
    return VariantDetector({name: Detector.load(path, **options) for name, path in variants.items()})
