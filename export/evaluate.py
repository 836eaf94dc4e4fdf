"""Evaluation of a bundle, or of one bundle per product variant, on a test split: image AUROC
(overall and per group), F1-max, and pixel AUROC and AUPRO where ground-truth masks exist. Runs
the bundles as the device does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_ad.datasets import Sample, eval_folder_notes, is_wildcard, load_samples, read_all
from edge_ad.errors import DataError, ImageError, os_reason
from edge_ad.images import DARK, pattern_folder, pixel_digest
from edge_ad.masks import InspectionMask
from edge_ad.metrics import aupro, auroc, f1_max
from edge_ad.render import overlay
from edge_ad.variants import VariantDetector, load_detector, parse_variants

from .eval_report import worst_cases, write_eval_report, write_eval_scores

_KINDS = ("normal", "anomalous")  # by label (0, 1) and by verdict (False, True)


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
    bundle: str | Path | list[str],
    data: str,
    batch_size: int = 8,
    steps: int | None = None,
    backend: str = "auto",
    exclude: frozenset[str] = frozenset(),
    dla_core: int | None = None,
    picture: Path | None = None,
    mask: InspectionMask | None = None,
    min_defect_area: int | None = None,
    scores_file: Path | None = None,
    skip_bad: bool = False,
    calibration: Path | None = None,
) -> dict:
    """Score every test image of `data` with the bundle (at `steps` bridge steps) and return the
    metrics; samples named in `exclude` (known defects used in training) are left out. With
    `picture`, also draw them there (export/eval_report.py). With an inspection `mask` (test
    images of its size), images are scored as `edge-ad run --mask` scores frames, and the pixel
    metrics count its inspected pixels only. With `min_defect_area` (pixels of the image), each
    image is scored by its regions of at least that area, as a calibration with that least area
    scores frames (in place of the bundle's calibration's). With `scores_file`, each test image's
    score, threshold and verdict (as the line would judge it) are written there as CSV. A test
    split of one kind (a box of rejected parts, a batch of new good ones) gets the counts of what
    the bundles' thresholds pass and flag, without AUROC and F1, which compare the scores of both
    kinds. Pictures of a test folder that no class folder holds are named in the report. An
    unreadable test image stops it, named with every other one, or with `skip_bad` is left out
    and named in the report. With `calibration` (a camera's calibration folder: `calibration:` in
    --sources), the bundles judge by the site calibration there, as `run` judges that camera; a
    folder that holds none for them is refused.

    Several bundles ('NAME=BUNDLE', one per product variant) run as a VariantDetector: scores and
    maps are taken relative to each variant's normal images (the scale on which it compares
    variants), and the report says which variant took each group's normal and anomalous images."""
    specs = [str(bundle)] if isinstance(bundle, (str, Path)) else list(bundle)
    loaded = load_detector(specs, backend=backend, steps=steps, dla_core=dla_core)
    if calibration is not None:
        loaded, problem = loaded.calibrated(calibration)
        if problem is not None:  # run would judge by the bundle's own numbers, with a warning: not what was asked
            raise DataError(f"{problem}; calibrate that camera first (edge-ad calibrate --sources FILE "
                            "--source NAME), or evaluate the bundle's own numbers with --bundle")
    detector, variants = (None, loaded) if isinstance(loaded, VariantDetector) else (loaded, None)
    models = [detector] if variants is None else list(variants.detectors.values())
    if min_defect_area is not None:
        for model in models:
            model.bundle = replace(model.bundle, min_defect_area=min_defect_area)
    listed = [s for s in load_samples(data, "test") if s.name not in exclude]
    with_masks = any(s.mask_path is not None for s in listed)
    if with_masks and len({m.bundle.input_size for m in models}) > 1:
        raise DataError(f"{data}: pixel metrics over variants need bundles of one input size, got "
                        f"{sorted({m.bundle.input_size for m in models})}")
    samples, unreadable, scores, verdicts, rows, maps, masks, taken, empty = [], [], [], [], [], [], [], {}, []
    first_of: dict[str, Sample] = {}  # by its pixel_digest: the first test image that is that picture
    learnt, calibrated = {}, {}  # {pixel digest: kind} of the pictures the bundles were trained and calibrated on
    for model in models:
        learnt |= model.bundle.training_pictures()
        calibrated |= model.bundle.calibration_pictures()
    trained, seen = [], []  # the labels of the test images among each
    brightest = 0  # pixel value of all test images: a test set of 16-bit files of a 12-bit camera is at most 16
    both_kinds = []  # [normal, anomalous]: one picture sorted as a good part and as a defect
    unlike: dict = {}  # test images framed or coloured unlike the training pictures, and what run says of the first
    for start in tqdm(range(0, len(listed), batch_size), desc="evaluating", unit="batch"):
        chunk, images = _read(listed[start : start + batch_size], listed[start:], skip_bad, unreadable)
        samples += chunk
        if not chunk:
            continue
        for sample, image in zip(chunk, images):
            digest, brightest = pixel_digest(image), max(brightest, int(image.max()))
            if digest in learnt:
                trained.append(sample.label)
            if digest in calibrated:
                seen.append(sample.label)
            first = first_of.setdefault(digest, sample)
            if first.label != sample.label:
                both_kinds.append([first.name, sample.name] if first.label == 0 else [sample.name, first.name])
        if mask is not None:  # a test image of another size is named
            for sample, image in zip(chunk, images):
                mask.check(image.shape, sample.name, of_camera=False)
        if min_defect_area is not None:  # no region larger than an image: every image passed, said as an AUROC
            for sample, image in zip(chunk, images):
                inspected = int(mask.inspect.sum()) if mask is not None else image.shape[0] * image.shape[1]
                if min_defect_area > inspected:
                    raise DataError(f"--min-defect-area {min_defect_area}: more pixels than test image {sample.name} "
                                    f"inspects ({inspected} of {image.shape[1]}x{image.shape[0]})")
        results = loaded.batch(images, color="RGB", masks=[mask] * len(chunk))
        for sample, image, result in zip(chunk, images, results):
            model, scale = detector, (lambda values: values)
            if variants is not None:
                model, scale = variants.detector_of(result), (lambda values: variants.relative(values, result.variant))
                kind = taken.setdefault(sample.group, {}).setdefault("anomalous" if sample.label else "normal", {})
                kind[result.variant] = kind.get(result.variant, 0) + 1
            scores.append(scale(result.score))
            verdicts.append(result.is_anomaly)  # by its bundle's threshold, as the line would judge the part
            row = {"image": sample.name, "group": sample.group, "truth": _KINDS[sample.label],
                   "score": round(result.score, 6), "threshold": round(result.threshold, 6),
                   "verdict": _KINDS[int(result.is_anomaly)]}
            rows.append(row if variants is None else row | {"variant": result.variant})
            if note := model.bundle.frame_shape_note(image.shape) or model.bundle.frame_colour_note(image):
                unlike.setdefault("first", note)
                unlike.setdefault("images", []).append(sample.name)
            if with_masks and (sample.label == 0 or sample.mask_path is not None):
                truth = sample.mask(*model.bundle.input_size, image.shape)
                if sample.label == 1 and not truth.any():
                    empty.append(sample.name)  # it marks no defect: left out, as an image without its mask
                else:
                    maps.append(scale(model.normalised_maps(result.grid_map[None])[0]))
                    masks.append(truth)
    if not samples:
        raise DataError(f"{data}: none of its {len(listed)} test images could be read: {'; '.join(unreadable[:3])}")
    scores, verdicts = np.array(scores), np.array(verdicts, bool)
    labels = np.array([s.label for s in samples])
    # Pixel metrics count a defect image only with its mask: without one, all its pixels would count as normal.
    unmasked = [s.name for s in samples if with_masks and s.label == 1 and s.mask_path is None]
    if detector is not None:
        described = {"bundle": specs[0], "backend": detector.backend, "precision": detector.precision,
                     "bridge_steps": detector.steps}
    else:
        described = {
            "bundles": {name: str(path) for name, path in parse_variants(specs).items()},
            "variant_taking_each_group": taken,
            "backend": sorted({d.backend for d in models}),
            "precision": sorted({d.precision for d in models}),
            "bridge_steps": sorted({d.steps for d in models if d.steps is not None}),
        }
    report = {
        "data": data,
        **described,
        "test_images": len(samples),
        "normal_images": int((labels == 0).sum()),
        "anomalous_images": int((labels == 1).sum()),
        "normal_images_flagged_by_bundle_threshold": int(verdicts[labels == 0].sum()),
        # the defective parts the bundles as they stand would pass: what the line would ship
        "anomalous_images_missed_by_bundle_threshold": int((~verdicts[labels == 1]).sum()),
    }
    if len(set(labels)) == 2:  # else the counts above are what there is to say of one kind
        f1, f1_threshold = f1_max(labels, scores)
        report.update(image_auroc=auroc(labels, scores), image_auroc_per_group=_group_aurocs(samples, scores),
                      image_f1_max=f1, image_f1_threshold=f1_threshold)
    if detector is not None:
        report["bundle_threshold"] = detector.threshold
    # the site calibration.yaml whose quantiles and threshold judged (none: the bundle's own numbers)
    if detector is not None and detector.bundle.calibration is not None:
        report["calibration"] = str(detector.bundle.calibration)
    elif variants is not None and any(m.bundle.calibration is not None for m in models):
        report["calibration"] = {name: None if m.bundle.calibration is None else str(m.bundle.calibration)
                                 for name, m in variants.detectors.items()}
    report.update(eval_folder_notes(data, samples))
    for key, labels_seen in (("test_images_the_model_was_trained_on", trained),
                             ("test_images_the_calibration_was_made_on", seen)):
        if labels_seen:  # the model learnt them, or its threshold was set on them: what it does with them is no test
            report[key] = {"normal": labels_seen.count(0), "anomalous": labels_seen.count(1)}
    if both_kinds:
        report["test_images_of_both_kinds"] = both_kinds
    if brightest <= DARK:
        report["test_images_dark"] = {"images": len(samples), "brightest": brightest}
    if unlike:
        report["test_images_unlike_training"] = unlike
    if unreadable:
        report["unreadable_images_left_out"] = unreadable
    if mask is not None:
        report["mask"] = mask.describe()
    if detector is not None and detector.bundle.min_defect_area is not None:
        report["min_defect_area"] = detector.bundle.min_defect_area
    elif variants is not None and any(m.bundle.min_defect_area is not None for m in models):
        report["min_defect_area"] = {name: m.bundle.min_defect_area for name, m in variants.detectors.items()}
    if maps:  # none where the images with masks were all unreadable, and the others anomalous
        maps_array, masks_array = np.stack(maps), np.stack(masks)
        valid = None if mask is None else mask.at(*maps_array.shape[1:])
        pixels = (masks_array, maps_array) if valid is None else (masks_array[:, valid], maps_array[:, valid])
        if pixels[0].any():  # else no mask marks a defect where it is inspected: no pixel metric to give
            report["pixel_auroc"] = auroc(*pixels)
            report["aupro_0.3"] = aupro(masks_array, maps_array, 0.3, valid)
    if unmasked:
        report["anomalous_images_without_mask"] = unmasked
    if empty:
        report["anomalous_images_with_empty_mask"] = empty
    if scores_file is not None:
        _write_or_say(report, "scores_file", Path(scores_file), lambda path: write_eval_scores(rows, path))
    if picture is not None:
        overlays = tuple([_overlay(loaded, samples[i], scores[i], mask, data) for i in indices]
                         for indices in worst_cases(labels, scores))
        threshold = detector.threshold if detector is not None else None
        _write_or_say(report, "picture", Path(picture),
                      lambda path: write_eval_report(report, labels, scores, threshold, overlays, path))
    return report


def _read(chunk: list[Sample], rest: list[Sample], skip_bad: bool, unreadable: list[str]) -> tuple[list, list]:
    """The samples of `chunk` that read, and their images. With `skip_bad` one that does not is
    left out and said in `unreadable`; without, the error names it and every other unreadable one
    of `rest` (the chunk and the samples after it), as `train` names them: one pass to mend them."""
    kept, images = [], []
    for sample in chunk:
        try:
            images.append(sample.image())
            kept.append(sample)
        except ImageError as exc:
            if not skip_bad:
                read_all(rest, False, keep=lambda image: None)  # raises DataError, naming each
                raise
            unreadable.append(str(exc))
    return kept, images


def _write_or_say(report: dict, key: str, path: Path, write: Callable[[Path], Path]) -> None:
    """report[key] is the file `write` made, or report[key + "_problem"] says why there is none: a
    full disk loses none of the metrics measured."""
    try:
        report[key] = str(write(path))
    except OSError as exc:
        report[f"{key}_problem"] = f"{path}: not written ({os_reason(exc)})"


def _overlay(loaded, sample: Sample, score: float, mask: InspectionMask | None, data: str) -> tuple[str, np.ndarray]:
    """A title and the heat-map overlay of one test image, scored again for its map."""
    image = sample.image()
    (result,) = loaded.batch([image], color="RGB", masks=[mask])
    return f"{_shown_name(sample.name, data)} ({sample.group}): {score:.3f}", \
        overlay(np.ascontiguousarray(image[..., ::-1]), result)


def _shown_name(name: str, data: str) -> str:
    """`name` as a picture's title shows it: within the folder `data` (or the folder of the wildcard
    `data`) where it lies there (the histogram's title names `data`; eight titles of a long
    absolute path each filled three lines with it), else whole."""
    folder = pattern_folder(data) if is_wildcard(data) else Path(data)
    try:
        return str(Path(name).resolve().relative_to(folder.resolve()))
    except (ValueError, OSError):  # not in it (elpv:0715, another folder), or no such path
        return name
