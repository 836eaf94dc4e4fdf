"""`edge-ad calibrate`: quantiles and an image threshold from frames the operator declares
normal, measured through the bundle's own graphs on this camera, written into the bundle's
calibration.yaml (which the runtime then uses instead of the bundle's numbers)."""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from edge_ad import picture_lists
from edge_ad.bundle import BRANCHES, CALIBRATION_FILE, Bundle, read_yaml, write_yaml_atomic
from edge_ad.detector import Detector, Result
from edge_ad.errors import os_reason, without_passwords
from edge_ad.files import write_atomic
from edge_ad.images import pixel_digest, thumbnail
from edge_ad.masks import InspectionMask
from edge_ad.normalize import Quantiles, fit_quantiles
from edge_ad.pipelines import local_path, opencv_input
from edge_ad.regions import input_area
from edge_ad.render import fitted_size
from edge_ad.variants import VariantDetector

from .statistics import (
    BIMODALITY_LIMIT,
    DUPLICATE_SHARE,
    CalibrationError,
    DefectCheck,
    Threshold,
    bimodality,
    check_defects,
    frames_per_draw,
    near_duplicates,
    score_percentiles,
    split_half,
    threshold_at_value,
    threshold_for_far,
)
from .threshold import expected_rate_above

PIXELS_PER_FRAME = 2048  # raw-map values per frame and branch pooled for the quantiles
TOP_FRAMES = 4  # highest-scoring normal frames shown in the report, each of another part
CANDIDATES = 2 * TOP_FRAMES  # frames kept while collecting, for those
# The largest (width, height) those frames are kept at: the report's tiles are smaller, and a
# 12-megapixel camera's frames take 36 MB each (calibrating one peaked at 1.5 GB).
REPORT_FRAME = (960, 720)
DRIFT_WINDOW = 300  # frames behind the rolling median that `edge-ad run --drift` watches
SPLIT_HALF_LIMIT = 0.10  # relative disagreement of the halves above which a warning is given
# Frames declared normal of which this share or more score above the threshold set on the training
# pictures' held-out images look unlike those pictures (README "calibrate"). Only checked where that
# threshold rests on at least UNLIKE_MIN_VALIDATION images: it is then below the median normal score
# by chance at most 1 time in 2 ** 10.
UNLIKE_SHARE = 0.5
UNLIKE_MIN_VALIDATION = 10
# Calibrating on pictures the model was trained on (_learnt_notes): it scores them unlike new parts.
LEARNT_FRAMES = ("{learnt} of the {count} frames of {source} are pictures the model was trained on (train --data): "
                 "it scores them lower than new good parts, so a threshold set on them flags more of those than its "
                 "bound says. Calibrate on pictures kept out of training, or on the camera's frames")
LEARNT_DEFECTS = ("{learnt} of the {count} known defects of {source} are pictures the model was trained on (train "
                  "--defects): it learnt to score them high, so their recall says more of them than of new defects")
PACE_EVERY, PACE_FROM = 250, 500  # while collecting: frames between estimates of independent frames, and the first
APART_EVERY, APART_FROM = 10, 20  # frames between rough estimates of the frames of one part, for the report
Q_ALPHA, Q_BETA = 0.9, 0.995  # ULSAD 3.5


@dataclass
class Collected:
    """What calibration keeps of each normal frame: a sample of raw-map values, the raw maps on
    the feature grid (small; the frame is rescored from them with the new quantiles exactly as
    the runtime scores it), a thumbnail, and the frames themselves for the few highest scores,
    one per part where a part stays in view for several frames (at most REPORT_FRAME)."""

    samples: list[np.ndarray] = field(default_factory=list)  # (branches, PIXELS_PER_FRAME) per frame
    grids: list[np.ndarray] = field(default_factory=list)  # (branches, h, w) per frame
    thumbnails: list[np.ndarray] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) per frame
    scores: list[float] = field(default_factory=list)  # the bundle's own, in capture order: their pace
    # (score, i, frame, grid, name: the picture file's, None for a camera's frame)
    top: list[tuple[float, int, np.ndarray, np.ndarray, str | None]] = field(default_factory=list)
    mask: InspectionMask | None = None  # the frames' inspection mask: quantiles and scores are of its white part
    # images.pixel_digest and name of each frame, where they are picture files (`collect`): training pictures among
    # them are said, and eval knows them again (calibration_pictures.csv)
    digests: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    apart: int = 1  # frames fewer than this apart show one part (`frames_of_one_part`), for `top`
    brightest: int = 0  # pixel value of all frames (Bundle.dark_frames_note)
    camera: bool = False  # the frames are a live camera's: dark ones want light, not other files

    def add(self, i: int, frame: np.ndarray, result: Result, rng: np.random.Generator, name: str | None = None) -> None:
        raw = result.raw_map
        inside = raw[:, self.mask.at(*raw.shape[1:])] if self.mask is not None else raw.reshape(raw.shape[0], -1)
        self.samples.append(inside[:, rng.integers(0, inside.shape[1], PIXELS_PER_FRAME)].astype(np.float32))
        self.grids.append(result.grid_map)
        self.thumbnails.append(thumbnail(frame))
        self.shapes.append(frame.shape[:2])
        self.brightest = max(self.brightest, int(frame.max()))
        self.scores.append(result.score)
        if len(self.scores) % APART_EVERY == 0:  # how many frames show one part, roughly, so far
            self.set_apart(frames_of_one_part(frames_per_draw(np.array(self.scores), APART_FROM)))
        same_part = [item for item in self.top if i - item[1] < self.apart]
        if any(item[0] >= result.score for item in same_part):
            return
        self.top = [item for item in self.top if i - item[1] >= self.apart]
        self.top.append((result.score, i, _for_report(frame), result.grid_map, name))
        self.top.sort(key=lambda item: -item[0])
        del self.top[CANDIDATES:]

    def set_apart(self, apart: int) -> None:
        """A new estimate of how many frames show one part: the frames kept for the report that
        now count as one part are one frame, the highest-scoring."""
        self.apart = apart
        self.top = one_per_part(self.top, apart)


def _for_report(frame: np.ndarray) -> np.ndarray:
    """The frame made to fit REPORT_FRAME, when it is larger."""
    width, height = REPORT_FRAME
    if frame.shape[1] <= width and frame.shape[0] <= height:
        return frame
    return cv2.resize(frame, fitted_size(frame.shape, height, width), interpolation=cv2.INTER_AREA)


def frames_of_one_part(per_draw: float) -> int:
    """Frames fewer than this apart are taken to show one part: twice the frames that score
    alike in a row (`frames_per_draw`), or 1 where frames are independent."""
    return 1 if per_draw <= 1 else math.ceil(2 * per_draw)


def one_per_part(items: list, apart: int) -> list:
    """Items (score, frame index, ...) highest score first, without any that is fewer than
    `apart` frames from a higher-scoring one."""
    chosen: list = []
    for item in sorted(items, key=lambda item: -item[0]):
        if all(abs(item[1] - other[1]) >= apart for other in chosen):
            chosen.append(item)
    return chosen


def collect(
    detector: Detector | VariantDetector, frames: Iterable[np.ndarray], count: int, seed: int = 0,
    mask: InspectionMask | None = None, needed: int | None = None, names: list[str] | None = None,
    camera: bool = False,
) -> dict[str | None, Collected]:
    """Run the detector on up to `count` normal BGR frames (progress bar), within `mask` if given;
    with `names` (of frames that are picture files: the list the frames' generator fills as it
    yields each), each frame's pixel digest is kept too, with its name; `camera`: the frames are
    a live camera's (Collected.camera).
    What is kept of each frame goes to the variant that took it (a VariantDetector: each variant
    is then calibrated on its own frames), or under None for a single bundle. The bar shows about
    how many independent frames there are so far; when `count` frames will not give a variant the
    `needed` independent ones at this pace, that is said once, early, with the frames that would."""
    rng = np.random.default_rng(seed)
    kept: dict[str | None, Collected] = {}
    said = False
    bar = tqdm(frames, total=count, desc="normal frames", unit="frame")
    for i, frame in enumerate(bar):
        if i >= count:
            break
        result = detector(frame, mask=mask)
        collected = kept.setdefault(result.variant, Collected(mask=mask, camera=camera))
        collected.add(i, frame, result, rng, names[i] if names is not None else None)
        if names is not None:  # of the RGB picture, as training keeps them
            collected.digests.append(pixel_digest(frame[..., ::-1]))
            collected.names.append(names[i])
        if (i + 1) % PACE_EVERY or i + 1 < PACE_FROM:
            continue
        scores = {variant: collected.scores for variant, collected in kept.items()}
        per_draw = {variant: frames_per_draw(np.array(values)) for variant, values in scores.items()}
        bar.set_postfix(independent=round(sum(len(scores[v]) / per_draw[v] for v in scores)))
        for variant, values in scores.items():
            projected = len(values) / per_draw[variant] * count / (i + 1)
            if needed is not None and not said and per_draw[variant] > 1 and projected < needed:
                said = True
                who = "" if variant is None else f"variant {variant}: "
                bar.write(f"{who}about {per_draw[variant]:.0f} frames in a row score alike, so the {count} frames "
                          f"will be worth about {projected:.0f} independent ones, of the {needed} needed: "
                          f"--frames {math.ceil(needed * per_draw[variant] * (i + 1) / len(values))} would do "
                          "(Ctrl-C and start again), or a larger --target-far")
    return kept


def _fit(samples: np.ndarray) -> list[Quantiles]:
    return [fit_quantiles(samples[:, b], Q_ALPHA, Q_BETA) for b in range(samples.shape[1])]


def _scores(
    detector: Detector, grids: list[np.ndarray], shapes: list[tuple[int, int]], quantiles: list[Quantiles],
    mask: InspectionMask | None, min_defect_area: int | None,
) -> np.ndarray:
    """Image scores under `quantiles` (and the least defect area, frame pixels), frame by frame
    as the runtime computes them (the same operations, so the same floats: the threshold sits one
    step above a normal score)."""
    return np.array([
        detector.image_score(detector.normalised_maps(grid[None], quantiles)[0], mask,
                             _min_area(detector, min_defect_area, shape))
        for grid, shape in zip(grids, shapes)
    ])


def _min_area(detector: Detector, min_defect_area: int | None, frame_shape: tuple[int, ...]) -> int:
    return 1 if min_defect_area is None else input_area(min_defect_area, frame_shape, detector.bundle.input_size)


@dataclass
class Calibration:
    frames: int
    quantiles: list[Quantiles]
    scores: np.ndarray
    threshold: Threshold
    far: float
    confidence: float
    agreement: dict[str, float]  # split-half relative disagreements
    warnings: list[str]
    # (score, frame index, frame, normalised map, picture file's name or None), one per part
    top: list[tuple[float, int, np.ndarray, np.ndarray, str | None]]
    defects: DefectCheck | None = None
    defect_scores: np.ndarray | None = None
    mask: InspectionMask | None = None
    min_defect_area: int | None = None  # frame pixels a region above the threshold must cover
    threshold_from: str = "false-alarm rate"  # or "f1": the known defects' F1-best threshold (`threshold`)


def unlike_training(bundle: Bundle, scores: list[float]) -> str | None:
    """What to say when most of the frames declared normal score above the threshold export set
    on the training pictures' held-out images: the camera's frames then look unlike the pictures
    the model learned, and a site threshold above them would hide it. None otherwise, and where
    that threshold is not the one judging (a calibration in use) or rests on too few images."""
    basis = bundle.export_threshold_basis()
    if basis is None:
        return None
    images, rate = basis
    share = float(np.mean(np.asarray(scores) > bundle.threshold))
    if images < UNLIKE_MIN_VALIDATION or share < UNLIKE_SHARE:
        return None
    return (f"{share:.0%} of these normal frames score above the threshold set on the training pictures "
            f"({bundle.threshold:.3f}), which about {expected_rate_above(images, rate):.0%} of pictures like those "
            "exceed: the frames look unlike them. The camera may have moved or changed (position, focus, exposure, "
            "gain, noise) or the light changed since, or the pictures were not this camera's as mounted (16-bit "
            "files, colour against grey). This calibration sets the threshold above such frames, and a defect must "
            "then stand out further to be found: look at the report's frames, and train on pictures from this "
            "camera as it is mounted (edge-ad record)")


def _normal_threshold(
    detector: Detector, kept: Collected, far: float, confidence: float, min_defect_area: int | None
) -> tuple[np.ndarray, list[Quantiles], np.ndarray, Threshold]:
    """The kept normal frames' pooled map values, quantiles, scores and threshold; CalibrationError
    where they cannot give one."""
    n = len(kept.samples)
    if n < 4:
        raise CalibrationError(f"only {n} normal frames were read; calibration needs many more")
    height, width = kept.shapes[0]
    inspected = int(kept.mask.inspect.sum()) if kept.mask is not None else height * width
    if min_defect_area is not None and min_defect_area > inspected:
        raise CalibrationError(f"--min-defect-area {min_defect_area}: more pixels than the frames inspect "
                               f"({inspected} of {width}x{height})")
    samples = np.stack(kept.samples)
    quantiles = _fit(samples)
    scores = _scores(detector, kept.grids, kept.shapes, quantiles, kept.mask, min_defect_area)
    return samples, quantiles, scores, threshold_for_far(scores, far, confidence, frames_per_draw(scores))


def flagged_in_use(detector: Detector, kept: Collected | None) -> int | None:
    """How many of the kept frames the calibration in use, which a new one replaces, flagged as
    they were read (its quantiles, least area and threshold): whether the line changed since it
    was made, told on the same frames. None without one."""
    if detector.bundle.calibration is None or kept is None:
        return None
    return sum(score >= detector.threshold for score in kept.scores)


def refuse_unless_enough(
    detector: Detector, kept: Collected, far: float, confidence: float, min_defect_area: int | None = None
) -> None:
    """Raise the CalibrationError `calibrate` would raise for these normal frames: known defects,
    each scored through the detector, are then not read for a calibration that cannot be made.
    Costs the normal frames' quantiles and scores a second time (milliseconds)."""
    _normal_threshold(detector, kept, far, confidence, min_defect_area)


def calibrate(
    detector: Detector,
    kept: Collected,
    far: float,
    confidence: float,
    defects: list[tuple[np.ndarray, tuple[int, int], str]] | None = None,
    min_defect_area: int | None = None,
    use_f1: bool = False,
) -> Calibration:
    """Quantiles, scores and the threshold from what `collect` kept; stability warnings; and,
    with `defects` (Result.grid_map, frame shape, pixel digest and name of each known defect frame),
    recall at the threshold and the F1-best threshold; with `use_f1`, that one is the threshold,
    with its own false-alarm bound and recall. With `min_defect_area` (frame pixels), a frame's
    score is the highest level at which a region of its map that large lies above it, so the
    threshold flags a frame when such a region reaches it."""
    if use_f1 and not defects:
        raise CalibrationError("--threshold f1 needs --defects")
    samples, quantiles, scores, threshold = _normal_threshold(detector, kept, far, confidence, min_defect_area)
    n, per_draw = len(samples), threshold.per_draw
    half = n // 2
    first, second = _fit(samples[:half]), _fit(samples[half:])
    agreement = {}
    for name, a, b in zip(detector.bundle.branches, first, second):
        agreement[f"{name}.value_alpha"] = split_half(a.value_alpha, b.value_alpha)
        agreement[f"{name}.value_beta"] = split_half(a.value_beta, b.value_beta)
    level = 1.0 - max(far, 1.0 / half)  # the highest quantile each half can resolve
    agreement["score_quantile"] = split_half(*(float(np.quantile(s, level)) for s in (scores[:half], scores[half:])))

    warnings = [
        f"split-half disagreement of {key} is {value:.0%} (over {SPLIT_HALF_LIMIT:.0%}): the scene changed during "
        "calibration, or too few frames"
        for key, value in agreement.items() if value > SPLIT_HALF_LIMIT
    ]
    duplicates = near_duplicates(np.stack(kept.thumbnails))
    if duplicates > DUPLICATE_SHARE:
        warnings.append(f"{duplicates:.0%} of consecutive frames are near-identical: a frozen camera, an empty "
                        f"line, or parts at rest in view? The bound counts them as about {n / per_draw:.0f} "
                        "independent frames: check in the report that they show parts")
    warnings += filter(None, [detector.bundle.frame_shape_note(kept.shapes[0]),
                              detector.bundle.frame_colour_note(kept.top[0][2]) if kept.top else None,
                              detector.bundle.dark_frames_note(kept.brightest, kept.camera),
                              unlike_training(detector.bundle, kept.scores)])
    coefficient = bimodality(scores)
    if coefficient > BIMODALITY_LIMIT:
        warnings.append(f"the normal scores look bimodal (bimodality coefficient {coefficient:.2f} > "
                        f"{BIMODALITY_LIMIT}): two products or a light change? Calibrate each condition apart "
                        "(two products: one bundle per variant, README 'Several variants on one line')")

    top = []
    for _, i, frame, grid, name in one_per_part(kept.top, frames_of_one_part(per_draw))[:TOP_FRAMES]:  # by own scores
        normalised = detector.normalised_maps(grid[None], quantiles)[0]
        area = _min_area(detector, min_defect_area, frame.shape)
        top.append((detector.image_score(normalised, kept.mask, area), i, frame, normalised, name))
    calibration = Calibration(n, quantiles, scores, threshold, far, confidence, agreement, warnings, top,
                              mask=kept.mask, min_defect_area=min_defect_area)
    if defects:
        grids, shapes, _, _ = zip(*defects)
        defect_scores = _scores(detector, list(grids), list(shapes), quantiles, kept.mask, min_defect_area)
        calibration.defects = check_defects(scores, defect_scores, threshold.value)
        calibration.defect_scores = defect_scores
    if use_f1:  # the count above it and the bound recorded are this threshold's, not the false-alarm one's
        calibration.threshold = threshold_at_value(scores, calibration.defects.f1_threshold, confidence, per_draw)
        calibration.defects = replace(calibration.defects, recall=calibration.defects.f1_recall)
        calibration.threshold_from = "f1"
    return calibration


def record(calibration: Calibration, detector: Detector, source: str, defects_source: str | None = None) -> dict:
    """The calibration.yaml content: what the runtime reads (steps, normalization, threshold)
    and what a person auditing it wants (source, time, frames, bundle hash, bounds, warnings).
    A source of pictures is also recorded by its absolute path on this host, for a person to find
    it again (`eval` knows the pictures by their pixels: `save`)."""
    bundle = detector.bundle
    scores = calibration.scores
    percentiles = score_percentiles(scores)
    data = {
        "steps": bundle.steps,
        "normalization": {
            "q_alpha": Q_ALPHA,
            "q_beta": Q_BETA,
            "branches": [
                {"name": name, "value_alpha": q.value_alpha, "value_beta": q.value_beta}
                for name, q in zip(BRANCHES[bundle.model_type], calibration.quantiles)
            ],
        },
        "threshold": float(calibration.threshold.value),
        "threshold_from": calibration.threshold_from,
        "target_false_alarm_rate": calibration.far,
        "confidence": calibration.confidence,
        "false_alarm_rate_bound": calibration.threshold.far_bound,
        "normal_frames_above_threshold": calibration.threshold.exceedances,
        "frames": calibration.frames,
        "frames_per_independent_frame": round(calibration.threshold.per_draw, 2),  # what the bound counted as one
        "source": without_passwords(source),  # a camera's URI, without the password it may hold
        **_picture_path(source),
        "host": socket.gethostname(),  # the machine whose paths `source_path` (and the defects') are, for a person
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle_sha256": bundle.sha256,  # the model whose maps these are, even if another is on disk by now
        "split_half": {k: round(v, 4) for k, v in calibration.agreement.items()},
        "warnings": calibration.warnings,
        "normal_scores": percentiles,
        # `edge-ad run --drift`: the rolling median of normal-looking scores should stay in this band.
        "drift": {"window": DRIFT_WINDOW, "low": percentiles["p10"], "high": percentiles["p90"]},
    }
    if calibration.mask is not None:  # `edge-ad run` warns when it scores with another mask
        data["mask"] = calibration.mask.describe()
    if calibration.min_defect_area is not None:  # the scores, and so the threshold, are of regions that large
        data["min_defect_area"] = calibration.min_defect_area
    if calibration.defects is not None:
        d = calibration.defects
        data["defects"] = {"frames": int(calibration.defect_scores.size), "recall": d.recall,
                           "f1_threshold": d.f1_threshold, "f1": d.f1, "f1_recall": d.f1_recall,
                           "f1_false_alarm_rate": d.f1_false_alarm_rate}
        if defects_source is not None:
            data["defects"] |= {"source": without_passwords(defects_source), **_picture_path(defects_source)}
    return data


def _learnt_notes(bundle: Bundle, checks: list[tuple[str | None, list[str], str, str]]) -> list[str]:
    """For each (source, pixel digests of the frames read from it, kind, note) where some of those
    frames are pictures the bundle's model was trained on as that kind (Bundle.training_pictures), its
    note: the same pixels, wherever the pictures were copied to since."""
    learnt = bundle.training_pictures() if any(digests for _, digests, _, _ in checks) else {}
    notes = []
    for source, digests, kind, note in checks:
        if count := sum(learnt.get(digest) == kind for digest in digests):
            notes.append(note.format(learnt=count, count=len(digests), source=source))
    return notes


def _picture_path(source: str) -> dict[str, str]:
    """{"source_path": its absolute path} for a source of pictures (a folder, a picture, a
    wildcard), else {}."""
    if opencv_input(source) is None:
        return {}
    return {"source_path": os.path.abspath(os.path.expanduser(local_path(source)))}


def _keep_copy(path: Path) -> Path:
    """`path` copied to `path`.bak, atomically: a backup is never half-written either."""
    backup = path.with_name(path.name + ".bak")
    write_atomic(backup, path.read_bytes())
    return backup


def save(folder: Path, data: dict, pictures: Sequence[tuple[str, str, str]] = ()) -> tuple[Path, Path | None]:
    """calibration.yaml into `folder` (the bundle, or one camera's folder, made if missing), the
    previous one kept as calibration.yaml.bak; returns both paths (no backup when there was no
    previous calibration). `pictures` (picture_lists rows of the frames and known defects that
    were pictures) go beside it first, in calibration_pictures.csv, whose hash `data` records;
    the list they replace is kept as calibration_pictures.csv.bak, which a calibration.yaml.bak
    put back in use is read with (Bundle.calibration_pictures)."""
    path = folder / CALIBRATION_FILE
    listed = folder / picture_lists.CALIBRATION
    backup = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            backup = _keep_copy(path)
        if pictures:  # else a file left there by an earlier calibration is not this one's: its hash is not recorded
            if backup is not None and listed.is_file():
                _keep_copy(listed)
            data["pictures_sha256"] = picture_lists.write(listed, pictures)
        write_yaml_atomic(path, data)
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot write the calibration ({os_reason(exc)}); the previous one "
                               "stays in use") from exc
    return path, backup


@dataclass
class Written:
    """A calibration made and written: what it measured, its calibration.yaml content, and where
    that file, the previous one (if any) and the report went; a report that could not be written
    (a full disk) is None, and `report_problem` says why."""

    calibration: Calibration
    data: dict
    path: Path
    backup: Path | None
    report: Path | None
    report_problem: str | None = None


def calibrate_into(
    folder: Path, detector: Detector, kept: Collected | None, far: float, confidence: float, source: str,
    defects: list[tuple[np.ndarray, tuple[int, int], str, str]] | None = None, min_defect_area: int | None = None,
    use_f1: bool = False, defects_source: str | None = None,
) -> Written:
    """Calibrate `detector` on what was kept of its normal frames from `source` (`calibrate`),
    then write calibration.yaml and calibration_report.png into `folder`: what `edge-ad
    calibrate` and a calibration asked of a running `edge-ad run` both do."""
    from .report import write_calibration_report  # matplotlib; the report draws a Calibration

    calibration = calibrate(detector, kept or Collected(), far, confidence, defects, min_defect_area, use_f1)
    pictures = [(picture_lists.NORMAL, digest, name) for digest, name in zip(kept.digests, kept.names)] if kept else []
    pictures += [(picture_lists.DEFECT, digest, name) for _, _, digest, name in defects or []]
    calibration.warnings += _learnt_notes(detector.bundle, [
        (source, kept.digests if kept else [], picture_lists.NORMAL, LEARNT_FRAMES),
        (defects_source, [digest for _, _, digest, _ in defects or []], picture_lists.DEFECT, LEARNT_DEFECTS)])
    data = record(calibration, detector, source, defects_source=defects_source)
    path, backup = save(folder, data, pictures)
    report, problem = folder / "calibration_report.png", None
    try:
        write_calibration_report(calibration, report, data)
    except OSError as exc:  # calibration.yaml is written and judges from now on: the picture is for a person
        report, problem = None, f"{report}: not written ({os_reason(exc)})"
    return Written(calibration, data, path, backup, report, problem)


def recorded_settings(bundle: Bundle) -> dict:
    """The rate, confidence, frames and least defect area of the site calibration `bundle` uses
    (calibration.yaml), for a calibration made again the same way; {} without one. A value that
    calibrate would not have written (a hand edit) is refused, naming its field: the runtime
    reads only the threshold and quantiles of the file, and would otherwise stop at it only when
    the line asks for a calibration."""
    if bundle.calibration is None:
        return {}
    data = read_yaml(bundle.calibration)
    keys = {"target_false_alarm_rate": "far", "confidence": "confidence", "frames": "frames",
            "min_defect_area": "min_defect_area"}
    for key in [key for key in keys if key in data]:
        value, rate = data[key], key in ("target_false_alarm_rate", "confidence")
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (number and (0 < value < 1 if rate else isinstance(value, int) and value >= 1)):
            raise CalibrationError(f"{bundle.calibration}: field '{key}' must be "
                                   f"{'a number between 0 and 1' if rate else 'a whole number, 1 or more'}, "
                                   f"got {value!r}")
    return {name: data[key] for key, name in keys.items() if key in data}


def overlay_result(
    score: float, threshold: float, frame: np.ndarray, normalised: np.ndarray, mask: InspectionMask | None = None
) -> Result:
    """A Result for `edge_ad.render.overlay` from a map normalised with the new quantiles (its
    raw map is that map, already at the input size and smoothed), zero outside `mask`. `frame`
    may be smaller than the frame scored (REPORT_FRAME), whose shape the mask has."""
    scored = mask.shape if mask is not None else frame.shape[:2]
    return Result(score, score >= threshold, threshold, normalised, scored, normalised[None], normalised.shape,
                  0.0, mask=mask)
