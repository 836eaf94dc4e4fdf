"""Training from normal images: prototypes (all models), the GMM temperature (gmm-bridge, bridge),
and the learned bridge's teacher and student (bridge)."""

from __future__ import annotations

import os
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from calibration.statistics import COPIES_SHARE, near_copies
from edge_ad import __version__, picture_lists
from edge_ad.bundle import ASPECT_SLACK, MODEL_TYPES, read_yaml, write_yaml_atomic
from edge_ad.datasets import (Sample, data_text, known_defects_left, load_defects, load_samples, read_all,
                              training_pictures_left, training_sources, without_overlays)
from edge_ad.errors import DataError
from edge_ad.files import writable_later
from edge_ad.images import DARK, DARK_CAUSE, ENLARGED, is_grey, pixel_digest, resize_to_input, thumbnail
from edge_ad.pipelines import MAX_CAMERA_SIDE

from .backbone import (BACKBONE_SPECS, DEFAULT_BACKBONE, WHITENING_EPS, FeatureEncoder, fit_encoder, input_shape,
                       size_text)
from .batching import in_batches
from .bridge_train import BridgeTrainer, build_pairs, load_resume_state
from .checkpoint import load_checkpoint, save_arrays, save_checkpoint
from .defects import KINDS
from .gmm_bridge import GmmBridgeHead, gate_temperature
from .known_defects import anomalous_patches, push_away
from .least_typical import MIN_PICTURES, PICTURE, least_typical, other_half_maps, shown_names, write_picture
from .prototype import greedy_coreset
from .torch_device import device_text, training_device, unused_gpu_note
from .training_memory import memory_note

# Whitened features need far fewer prototypes: on ELPV the nearest of 256 scores within 0.001 of
# the nearest of 2048 whitened, but 0.03-0.04 below it unwhitened; the prototype head's and the
# GMM prior's time grows with the count (GMM prior 8.3 ms at 2048, 1.9 ms at 256: README).
WHITENED_PROTOTYPES = 256
UNWHITENED_PROTOTYPES = 2048
CHECKPOINT = "model.pt"
CONFIG = "config.yaml"
VALIDATION = "validation.npz"
RUN_FILES = (CONFIG, CHECKPOINT, VALIDATION)  # what a finished training run folder holds
# The feature grid is an eighth of the input: below 64 px it has fewer than 8 x 8 cells, and the
# 3x3 local average and the smoothing then spread one defect over much of the part.
MIN_INPUT_SIZE = 64
# No input side is larger than the frames a camera can be asked for (pipelines.MAX_CAMERA_SIDE);
# a side past it is a typo: 99999999999 reached OpenCV's resize as a side it cannot take, a
# traceback after the pictures were read (one that fits no memory is said as such: report_errors).
MAX_INPUT_SIZE = MAX_CAMERA_SIDE
# Images this much wider than high (or higher than wide) lose detail in a square input: on ELPV
# cells three in a row (3:1), 448x160 scored 0.019 above 256 at 7 % fewer frames per second (README).
WIDE = 1.5


@dataclass
class TrainConfig:
    data: str | list[str]  # what load_samples reads: one spec, or several whose pictures are trained on together
    model: str = "prototype"
    backbone: str = DEFAULT_BACKBONE  # feature encoder: efficientnet-lite0 or efficientnet-lite1
    input_size: int | list[int] = 256  # the side of a square input, or [height, width]
    prototypes: int | None = None  # None: WHITENED_PROTOTYPES with position whitening, else UNWHITENED_PROTOTYPES
    val_fraction: float = 0.1
    seed: int = 0
    skip_bad: bool = False
    batch_size: int = 16
    position_whitening: bool = True  # whiten features per grid position (aligned parts)
    whitening_eps: float = WHITENING_EPS  # regulariser of each position's covariance
    steps: int = 2000  # bridge: teacher training iterations
    distill_steps: int = 1000  # bridge: student (distillation) iterations
    variants: int = 2  # bridge: synthetic image defects per training image
    feature_variants: int = 0  # bridge: defects made in feature space per training image
    defect_kinds: list[str] | None = None  # bridge: synthetic defect kinds to train on (None: all of KINDS)
    distill_targets: int = 512  # bridge: pairs the teacher restores for distillation
    resume: bool = False  # bridge: continue from the run folder's last checkpoint
    defects: str | None = None  # known defect images (a folder, or elpv:M): prototypes they use are taken out
    device: str = "auto"  # where the networks run: auto (a CUDA GPU when torch sees one), cpu, cuda, cuda:N


def read_inputs(samples: list[Sample], size: int | Sequence[int], what: str) -> np.ndarray:
    """(N, height, width, 3) uint8 model inputs of `samples` for an input of `size` (see
    `input_shape`), each picture resized as it is read (the resize the runtime uses); any
    unreadable one stops with all of them named. `what` names them on the progress bar."""
    height, width = input_shape(size)
    _, inputs, _ = read_all(samples, False, lambda s: tqdm(s, desc=f"reading {what}", unit="img"),
                            lambda image: resize_to_input(image, height, width))
    return np.stack(inputs)


class Picture(NamedTuple):
    """What training keeps of each picture it reads: the model input, and what its notes read of
    the picture. The picture itself goes: a 12-megapixel camera's take 36 MB each."""

    input: np.ndarray  # (height, width, 3) uint8 RGB, resized to the model input
    shape: tuple[int, int]  # the picture's (height, width)
    brightest: int  # its brightest pixel value
    thumbnail: np.ndarray  # 32 x 32 grey, for near-copies
    digest: str  # its pixels' (images.pixel_digest), for the training pictures file
    plain: bool  # every pixel one colour: a covered lens, no light, a blank file


def picture(image: np.ndarray, size: int | Sequence[int]) -> Picture:
    """What training keeps of the RGB `image` for a model input of `size` (see `input_shape`)."""
    height, width = input_shape(size)
    small = thumbnail(image, "RGB")
    # Every pixel compared only where the thumbnail is one colour: 70 ms for a 12-megapixel picture.
    plain = bool(small.min() == small.max()) and bool((image == image[0, 0]).all())
    return Picture(resize_to_input(image, height, width), image.shape[:2], int(image.max()), small, pixel_digest(image),
                   plain)


def shape_note(pictures: list[Picture], size: int | Sequence[int]) -> str | None:
    """What to say when a square input would squeeze pictures far from square: the rectangle of
    their median shape with about as many pixels (sides multiples of 32); None otherwise."""
    height, width = input_shape(size)
    aspect = float(np.median([p.shape[1] / p.shape[0] for p in pictures]))
    if height != width or 1 / WIDE < aspect < WIDE:
        return None
    sides = [max(MIN_INPUT_SIZE, 32 * round(height * ratio / 32)) for ratio in (np.sqrt(aspect), 1 / np.sqrt(aspect))]
    suggested = f"{sides[0]}x{sides[1]}"
    shape = f"{aspect:.2g} times as wide as high" if aspect > 1 else f"{1 / aspect:.2g} times as high as wide"
    return (f"the training images are {shape} (median); the square {height} px input squeezes them, losing "
            f"detail along their long side. --input-size {suggested} keeps their shape with about as many pixels "
            "(README: Frames far from square)")


def mixed_shapes_note(pictures: list[Picture], names: list[str], size: int | Sequence[int]) -> str | None:
    """What to say when some training pictures are shaped unlike most (width to height beyond
    ASPECT_SLACK of the commonest shape's): pictures of two cameras or framings, which the input
    squeezes each its own way; None otherwise."""
    aspects = np.array([width / height for height, width in (p.shape for p in pictures)])
    ordered = np.sort(aspects)
    alike = np.searchsorted(ordered, aspects * ASPECT_SLACK) - np.searchsorted(ordered, aspects / ASPECT_SLACK)
    common = aspects[np.argmax(alike)]  # the aspect most pictures share
    unlike = ~((common / ASPECT_SLACK < aspects) & (aspects < common * ASPECT_SLACK))
    if not unlike.any():
        return None

    def commonest(flags: np.ndarray) -> str:
        shapes = Counter(f"{width}x{height}" for (height, width), flag in zip((p.shape for p in pictures), flags)
                         if flag)
        return shapes.most_common(1)[0][0]

    odd = [name for name, flag in zip(names, unlike) if flag]
    listed = ", ".join(odd[:3]) + (", ..." if len(odd) > 3 else "")
    height, width = input_shape(size)
    return (f"{len(odd)} of the {len(pictures)} training pictures are shaped unlike the others ({commonest(unlike)} "
            f"where most are {commonest(~unlike)}: {listed}): the {width}x{height} input squeezes each shape its own "
            "way, so a part is wider or narrower in some, and the model learns both as normal. Pictures of two "
            "cameras or framings: train on pictures of the line's camera alone, framed as on the line (edge-ad "
            "record), or leave the others out")


def small_note(pictures: list[Picture], size: int | Sequence[int]) -> str | None:
    """What to say when the input enlarges the pictures more than ENLARGED times (thumbnails)."""
    height, width = input_shape(size)
    median_height, median_width = (int(v) for v in np.median([p.shape for p in pictures], axis=0))
    enlarged = min(height / median_height, width / median_width)
    if enlarged <= ENLARGED:
        return None
    return (f"the training images are {median_width}x{median_height} (median); the {width}x{height} input enlarges "
            f"them {enlarged:.0f} times, so the model learns them blurred, and frames of the same parts larger than "
            "these would all look anomalous. Train on pictures at the size the camera takes them (edge-ad record), "
            "not thumbnails (README: Pictures smaller than the input)")


def brightness_note(pictures: list[Picture]) -> str | None:
    """What to say when the training pictures are far darker than a camera's 8-bit frames; None otherwise."""
    brightest = max(p.brightest for p in pictures)
    if brightest > DARK:
        return None
    return (f"the brightest pixel of all {len(pictures)} training images is {brightest} of 255. {DARK_CAUSE}; the "
            "camera's 8-bit frames on the line would all look anomalous to this model. Train on 8-bit pictures "
            "(edge-ad record saves them) or shift such files up to 16 bits first (README: 16-bit pictures)")


def copies_note(pictures: list[Picture]) -> str | None:
    """What to say when many training pictures are near-copies of others; None otherwise."""
    copies = int(near_copies(np.stack([p.thumbnail for p in pictures])).sum())
    if copies < COPIES_SHARE * len(pictures):
        return None
    return (f"{copies} of the {len(pictures)} training pictures are near-copies of another (parts at rest in view, "
            "a stopped line, a picture saved twice). The model sees fewer parts than pictures, and held-out pictures "
            "with a copy in training set the threshold from export too low. Record while parts pass "
            "(edge-ad record --interval), or leave the copies out (README: near-copies)")


def plain_note(pictures: list[Picture], names: list[str]) -> str | None:
    """What to say when some training pictures are of one colour; None otherwise."""
    plain = [name for name, p in zip(names, pictures) if p.plain]
    if not plain:
        return None
    listed = ", ".join(plain[:3]) + (", ..." if len(plain) > 3 else "")
    return (f"{len(plain)} of the {len(pictures)} training pictures are of one colour ({listed}): a covered lens, no "
            "light or a blank file, not a part. The model learns them as normal, so a covered or dark camera on the "
            "line would pass every part: leave them out")


def colour_note(pictures: list[Picture], names: list[str]) -> str | None:
    """What to say when some training pictures are grey and the others colour; None otherwise."""
    flags = [is_grey(p.input) for p in pictures]
    grey = [name for name, flag in zip(names, flags) if flag]
    colour = [name for name, flag in zip(names, flags) if not flag]
    if not grey or not colour:
        return None
    kind, fewer, other = ("grey", grey, "colour") if len(grey) <= len(colour) else ("colour", colour, "grey")
    listed = ", ".join(fewer[:3]) + (", ..." if len(fewer) > 3 else "")
    return (f"{len(fewer)} of the {len(pictures)} training pictures are {kind} and the others {other} ({listed}): "
            "pictures of two cameras, or some saved in grey. The model learns both kinds as normal, so a part whose "
            "only fault is its colour may pass for a grey picture, and a camera sends one kind. Train on pictures "
            "of the line's camera alone (edge-ad record), or leave the others out")


def prototype_count(config: TrainConfig) -> int:
    """The run's number of prototypes: the configured one, else the default for its features."""
    if config.prototypes is not None:
        return config.prototypes
    return WHITENED_PROTOTYPES if config.position_whitening else UNWHITENED_PROTOTYPES


def train(config: TrainConfig, out: Path) -> Path:
    """Train `config.model` on the normal training images of `config.data`; returns the run folder."""
    if config.model not in MODEL_TYPES:
        raise DataError(f"model {config.model!r} is not one of {', '.join(MODEL_TYPES)}")
    if config.backbone not in BACKBONE_SPECS:
        raise DataError(f"backbone {config.backbone!r} is not one of {', '.join(BACKBONE_SPECS)}")
    height, width = input_shape(config.input_size)
    if min(height, width) < MIN_INPUT_SIZE:
        raise DataError(f"input size {size_text(config.input_size)} px: each side at least {MIN_INPUT_SIZE}; the "
                        f"feature grid is an eighth of it ({-(-width // 8)} x {-(-height // 8)} cells), too coarse "
                        "to place a defect")
    if max(height, width) > MAX_INPUT_SIZE:
        raise DataError(f"input size {size_text(config.input_size)} px: each side at most {MAX_INPUT_SIZE}, four "
                        "times a line-scan camera's longest line")
    kinds = config.defect_kinds
    if kinds is not None and (not kinds or set(kinds) - set(KINDS)):
        raise DataError(f"defect kinds {kinds}: pick one or more of {', '.join(KINDS)}")
    writable_later(out, "run")  # said now, not after the features and prototypes (a failed run leaves no folder)
    device = training_device(config.device)
    resume = _resume_state(config, out) if config.model == "bridge" and config.resume else None
    started = time.time()
    torch.manual_seed(config.seed)
    samples, overlays = without_overlays(load_samples(config.data, "train"))
    if overlays:
        print(f"left out: {overlays}")
    for data in [config.data] if isinstance(config.data, str) else config.data:
        for left in training_pictures_left(data):
            print(f"note: {left}")
    defects = _known_defects(config.defects) if config.defects else []  # a wrong folder said before the long work
    if warning := memory_note(len(samples), height, width, sum(BACKBONE_SPECS[config.backbone].tap_channels)):
        print(f"warning: {warning}")
    kept, pictures, bad = read_all(samples, config.skip_bad, lambda s: tqdm(s, desc="reading images", unit="img"),
                                   lambda image: picture(image, config.input_size))
    for message in bad:
        print(f"skipped: {message}")
    if len(kept) < 2:
        raise DataError(f"{data_text(config.data)}: training needs at least 2 readable normal images, found "
                        f"{len(kept)}")
    # Nothing to learn; and the export of such a run failed its check of its own graphs, blaming ONNX Runtime.
    if all(p.plain for p in pictures):
        raise DataError(f"{data_text(config.data)}: every training picture is of one colour (each pixel alike: a "
                        "covered lens, no light or blank files), with no part to learn; train on pictures of good "
                        "parts (edge-ad record)")
    names = [s.name for s in kept]
    said = (plain_note(pictures, names), brightness_note(pictures), copies_note(pictures),
            shape_note(pictures, config.input_size), mixed_shapes_note(pictures, names, config.input_size),
            small_note(pictures, config.input_size), colour_note(pictures, names))
    notes = [note for note in said if note]
    for note in notes:
        print(f"note: {note}")
    defect_inputs, defect_digests = _defect_inputs(defects, kept, pictures, config.input_size)
    inputs = np.stack([p.input for p in pictures])
    order = np.random.default_rng(config.seed).permutation(len(inputs))
    n_val = min(max(1, round(config.val_fraction * len(inputs))), len(inputs) - 1)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

    print(f"training on {device_text(device)}")
    if note := unused_gpu_note(device):
        print(f"note: {note}")
    encoder = FeatureEncoder((height, width), config.backbone).to(device)
    raw = in_batches(encoder.raw_features, inputs, config.batch_size, "features", device)
    whitening_eps = config.whitening_eps if config.position_whitening else None
    maps = other_half_maps(raw, lambda: FeatureEncoder((height, width), config.backbone).to(device), whitening_eps,
                           prototype_count(config), config.seed, config.batch_size, device) \
        if len(inputs) >= MIN_PICTURES else None
    raw_train = raw[train_idx]
    del raw  # the fit holds two more copies of the features: its peak stays what it was before least_typical
    standardised = fit_encoder(encoder, raw_train, whitening_eps, config.batch_size, device)
    patches = standardised.permute(0, 2, 3, 1).reshape(-1, standardised.shape[1])
    del raw_train, standardised
    prototypes = greedy_coreset(patches, prototype_count(config), config.seed)
    timings = {}
    if defects:
        prototypes, timings["prototypes_removed_by_defects"] = _push_away_defects(config, defect_inputs, encoder,
                                                                                  prototypes, patches, device)
    checkpoint = {
        "backbone": config.backbone,
        "feature_mean": encoder.feature_mean,
        "feature_std": encoder.feature_std,
        "prototypes": prototypes,
    }
    if config.position_whitening:
        checkpoint["position_mean"] = encoder.position_mean
        checkpoint["position_whitening"] = encoder.position_whitening
    timings["prototypes_seconds"] = round(time.time() - started, 1)
    if config.model in ("gmm-bridge", "bridge"):
        checkpoint["tau"] = torch.tensor(gate_temperature(patches, prototypes, config.seed))
    del patches
    out.mkdir(parents=True, exist_ok=True)
    typical = _least_typical(maps, inputs, names, out) if maps is not None else []
    losses = {}
    if config.model == "bridge":
        losses = _train_bridge(config, encoder, checkpoint, inputs[train_idx], out, resume, device)
    # config.yaml marks a finished run (load_run and ablate look for it), so it goes first and comes
    # back last: a run stopped while writing (a full disk, Ctrl-C) is never taken for a finished one
    # with an earlier run's files beside its own.
    (out / CONFIG).unlink(missing_ok=True)
    save_checkpoint(out / CHECKPOINT, checkpoint)
    save_arrays(out / VALIDATION, inputs=inputs[val_idx])
    listed = [(picture_lists.NORMAL, p.digest, s.name) for s, p in zip(kept, pictures)] + [
        (picture_lists.DEFECT, digest, s.name) for s, digest in zip(defects, defect_digests)]
    pictures_sha256 = picture_lists.write(out / picture_lists.TRAINING,
                                          [(kind, digest, os.path.abspath(name)) for kind, digest, name in listed])
    record = {
        "model": config.model,
        "edge_ad_version": __version__,
        "config": asdict(config),
        "device": device_text(device),
        "train_images": int(len(train_idx)),
        "validation_images": int(len(val_idx)),
        "skipped": bad,
        **training_sources(config.data, config.defects),  # where the pictures were, for a person
        "pictures_sha256": pictures_sha256,  # of the file that lists them: eval and calibrate know them again
        # the pictures as read, before resizing: `run` and `calibrate` compare the camera's frames with it
        "image_shape": [int(np.median([p.shape[axis] for p in pictures])) for axis in (0, 1)],
        # all grey: `run` scores a colour camera's frames in grey (Bundle.trained_on_grey)
        "grey_pictures": all(is_grey(p.input) for p in pictures),
        # of all of them: `run` and `calibrate` say when the frames are far darker (Bundle.dark_frames_note)
        "brightest_pixel": max(p.brightest for p in pictures),
        "notes": notes,  # what training said of its pictures; the bundle keeps them and `doctor` shows them
        "least_typical": typical,  # each picture's score (largest distance) by the model of the other half
        "prototypes": int(prototypes.shape[0]),
        "train_seconds": round(time.time() - started, 1),
        **timings,
        **losses,
    }
    write_yaml_atomic(out / CONFIG, record)
    return out


def _least_typical(maps: np.ndarray, inputs: np.ndarray, names: list[str], out: Path) -> list[dict]:
    """Say which training pictures are least like the others (least_typical.py), with a picture of
    them in `out`; what config.yaml records of them."""
    picked = least_typical(maps.max(axis=(1, 2)))
    if not picked:
        return []
    named = shown_names(names)
    drawn = write_picture(out / PICTURE, inputs, maps, picked, named)
    listed = ", ".join(named[i] for i in picked[:3]) + (", ..." if len(picked) > 3 else "")
    print(f"note: the {len(picked)} training pictures least like the others, each scored as a new part by a model "
          f"of the other half of them: {listed}; {drawn} shows where each differs. Look at them: a defective part "
          "among the good ones is learnt as a good one")
    # a file by its absolute path, for a person reading config.yaml from elsewhere; elpv:0409 as it is
    return [{"picture": os.path.abspath(names[i]) if os.path.exists(names[i]) else names[i],
             "distance": round(float(maps[i].max()), 4)} for i in picked]


def _known_defects(spec: str) -> list[Sample]:
    """The known defects of `--defects spec`, and a note of the pictures its folder holds and are
    not read."""
    defects = load_defects(spec)
    for left in known_defects_left(spec):
        print(f"note: {left}")
    return defects


def _defect_inputs(defects: list[Sample], normal: list[Sample], pictures: list[Picture], size: int | Sequence[int]
                   ) -> tuple[np.ndarray | None, list[str]]:
    """The model inputs and pixel digests of the known `defects` (None and [] for none); one that is a
    training picture of `normal` too (its pixels, whatever its name: a wildcard over the rejected
    parts' folder, a rejected part copied into good/) is refused, naming both."""
    if not defects:
        return None, []
    height, width = input_shape(size)
    _, read, _ = read_all(defects, False, lambda s: tqdm(s, desc="reading known defects", unit="img"),
                          lambda image: (resize_to_input(image, height, width), pixel_digest(image)))
    inputs, digests = np.stack([array for array, _ in read]), [digest for _, digest in read]
    normal_of = {picture.digest: sample.name for sample, picture in zip(normal, pictures)}
    both = [(defect.name, normal_of[digest]) for defect, digest in zip(defects, digests) if digest in normal_of]
    if both:
        listed = ", ".join(name if name == other else f"{name} = {other}" for name, other in both[:3])
        raise DataError(f"{len(both)} known defect(s) of --defects are pictures of --data too ({listed}"
                        f"{', ...' if len(both) > 3 else ''}): a part is good or rejected, not both. Give --data the "
                        "good parts' pictures alone")
    return inputs, digests


def _push_away_defects(
    config: TrainConfig, inputs: np.ndarray, encoder: FeatureEncoder, prototypes: torch.Tensor,
    patches: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, int]:
    """The prototypes without those the known defects (their model `inputs`) keep landing on."""
    standardised = in_batches(encoder, inputs, config.batch_size, "defect features", device)
    kept, removed = push_away(prototypes, patches, anomalous_patches(standardised, prototypes), config.seed)
    print(f"known defects: {len(inputs)} images; {removed} of {prototypes.shape[0]} prototypes taken out")
    return kept, removed


def _resume_settings(config: TrainConfig) -> dict:
    """The settings a bridge checkpoint is only valid for: everything that shapes the features and
    the training pairs. The iteration counts may change on resume (to train longer), and the device
    (a run started on the CPU may go on on a GPU)."""
    return {k: v for k, v in asdict(config).items() if k not in ("resume", "steps", "distill_steps", "device")}


def _resume_state(config: TrainConfig, out: Path) -> dict | None:
    """The run folder's bridge checkpoint, refused if it was trained with other settings."""
    resume = load_resume_state(out, _resume_settings(config))
    if resume is None:
        print(f"{out}: no bridge checkpoint to resume from, starting from the beginning")
    return resume


def _train_bridge(
    config: TrainConfig, encoder: FeatureEncoder, checkpoint: dict, inputs: np.ndarray, out: Path, resume: dict | None,
    device: torch.device
) -> dict:
    """Teacher and student into `checkpoint` (continuing from `resume`); returns their final losses
    for the config record."""
    prior = GmmBridgeHead(checkpoint["prototypes"], float(checkpoint["tau"])).to(device)
    clock = time.time()
    pairs = build_pairs(
        encoder, prior, inputs, config.variants, config.seed, config.batch_size, config.feature_variants,
        tuple(config.defect_kinds or KINDS), device,
    )
    trainer = BridgeTrainer(pairs, encoder.channels, out, config.seed, _resume_settings(config), config.batch_size,
                            device)
    pairs_seconds, clock = time.time() - clock, time.time()
    try:
        teacher, teacher_losses = trainer.train_teacher(config.steps, resume)
        teacher_seconds, clock = time.time() - clock, time.time()
        student, student_losses = trainer.train_student(teacher, config.distill_steps, config.distill_targets,
                                                        resume)
    except KeyboardInterrupt:  # a long run stopped by hand: say what it kept
        raise KeyboardInterrupt(trainer.interrupted_text()) from None
    checkpoint["teacher"] = teacher.state_dict()
    checkpoint["student"] = student.state_dict()
    return {
        "pairs_seconds": round(pairs_seconds, 1),
        "teacher_seconds": round(teacher_seconds, 1),
        "student_seconds": round(time.time() - clock, 1),
        "teacher_final_loss": round(float(np.mean(teacher_losses[-50:])), 5) if teacher_losses else None,
        "student_final_loss": round(float(np.mean(student_losses[-50:])), 5) if student_losses else None,
    }


def load_run(run: Path) -> tuple[dict, dict, np.ndarray]:
    """(config record, checkpoint tensors, validation inputs) of a training run folder. A file that
    is corrupt (a copy cut short, a disk error) is named in a DataError, not a library's traceback."""
    for name in RUN_FILES:
        if not (run / name).is_file():
            raise DataError(f"{run}: not a training run (missing {name}); create one with 'edge-ad train'")
    record = read_yaml(run / CONFIG)
    checkpoint = load_checkpoint(run / CHECKPOINT, "train the run again")
    try:
        with np.load(run / VALIDATION) as validation:
            inputs = validation["inputs"]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{run / VALIDATION}: not a readable NumPy archive of validation images (corrupt or cut "
                        "short); train the run again") from exc
    backbone = checkpoint.get("backbone", DEFAULT_BACKBONE)
    if backbone not in BACKBONE_SPECS:
        raise DataError(f"{run / CHECKPOINT}: backbone {backbone!r} is not one of {', '.join(BACKBONE_SPECS)} "
                        f"(trained by another edge-ad version?)")
    return record, checkpoint, inputs
