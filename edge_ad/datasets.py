"""Dataset adapters: a folder of normal images, an MVTec-layout category, and ELPV.

ELPV follows ../shared/benchmarks/README.md exactly: normal = probability 0,
anomalous = probability 1, train = the first 1,131 of a seeded permutation of
the normal indices, test = the other 377 normal images and all anomalous ones.
"""

from __future__ import annotations

import functools
import glob
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import cv2
import numpy as np

from .errors import DataError, ImageError, shell_word, without_passwords
from .images import (GROUND_TRUTH, GT_FOLDER, IMAGE_SUFFIXES, MASKS, NORMAL_FOLDERS, RGB_FOLDER, XYZ_FOLDER, as_grey,
                     counts_text, is_image_file, label_folder, masked_stem, masks_beside, masks_left_text, masks_of,
                     no_images_in, normal_below, normal_subfolder, pictures_below, pictures_in_subfolders,
                     pictures_matching, pictures_under, read_image, resize_to_input, subfolders, subfolders_left,
                     to_rgb, unread_formats, unread_formats_text)
from .pipelines import is_v4l2_device, local_path
from .sinks import FRAME_SUFFIX, OVERLAY_SUFFIX

ELPV_TRAIN_SIZE = 1131
ELPV_TYPES = ("mono", "poly")  # module types; 'elpv:<type>' is the protocol restricted to one
DEFECT_LEVEL = 128  # ground-truth masks: grey levels at or above it mark a defect (MVTec's masks hold 0 and 255)
# A category's test split: MVTec AD's test/, MVTec AD 2's test_public/ (its masks in
# test_public/ground_truth/; its test_private/ has none, and is scored by MVTec's server).
TEST_SPLITS = ("test", "test_public")
TRAINING_SPLITS = ("train", "validation")  # MVTec AD 2's validation/good is trained or calibrated on
NOT_READ = ("outside a class folder (a test picture's kind is the class folder it is in or below: good/, ok/ or "
            "normal/, or a folder per defect), or in a folder of masks (masks/, gt/, label/)")  # unread_test_pictures
ASPECT_TOLERANCE = 0.01  # a mask scaled from its image keeps its aspect within rounding


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: a name to report, a label (0 normal, 1 anomalous) and a group."""

    name: str
    label: int
    group: str
    _load: Callable[[], np.ndarray]
    mask_path: Path | None = None

    def image(self) -> np.ndarray:
        """The image as uint8 RGB."""
        return self._load()

    def mask(self, height: int, width: int, image_shape: tuple[int, ...]) -> np.ndarray:
        """Ground-truth mask as bool (height, width); all False for normal images or missing masks.

        A defect is where the mask is at DEFECT_LEVEL or above; a mask with no pixel that bright
        marks it with any value above 0 (masks saved as 0 and 1, or as class numbers), which would
        otherwise read as no defect at all. A mask of another aspect than its image (`image_shape`)
        is refused: stretched over the image, it would mark the wrong pixels."""
        if self.mask_path is None:
            return np.zeros((height, width), bool)
        defect = _defect_pixels(self.mask_path)
        (mask_h, mask_w), (image_h, image_w) = defect.shape, image_shape[:2]
        if abs(mask_w * image_h / (mask_h * image_w) - 1) > ASPECT_TOLERANCE:
            raise ImageError(f"{self.mask_path}: a {mask_w}x{mask_h} mask for the {image_w}x{image_h} image "
                             f"{self.name}; a mask has its image's size (or its aspect): is it that image's mask?")
        return cv2.resize(defect.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def _defect_pixels(path: Path) -> np.ndarray:
    """Where the mask at `path` marks a defect (bool): its pixels at DEFECT_LEVEL or above, or, in a
    mask with no pixel that bright (saved as 0 and 1, or as class numbers), above 0. A folder of
    masks (MVTec LOCO AD's, one per defect of the image): where any of them marks one."""
    if path.is_dir():
        masks = _images_in(path)
        if not masks:
            raise ImageError(f"{path}: a folder of masks without any mask image ({' '.join(IMAGE_SUFFIXES)})")
        defects = [_defect_pixels(mask) for mask in masks]
        if len({d.shape for d in defects}) > 1:
            sizes = ", ".join(f"{m.name} {d.shape[1]}x{d.shape[0]}" for m, d in zip(masks, defects))
            raise ImageError(f"{path}: masks of one image, of different sizes ({sizes})")
        return np.logical_or.reduce(defects)
    try:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    except cv2.error:  # a damaged header OpenCV asserts on (images.decode_image)
        mask = None
    if mask is None:
        raise ImageError(f"{path}: not a readable mask image")
    return mask >= (DEFECT_LEVEL if mask.max() >= DEFECT_LEVEL else 1)


def _file_sample(path: Path, label: int, group: str, mask_path: Path | None = None) -> Sample:
    return Sample(str(path), label, group, lambda: read_image(path), mask_path)


def _pictures_folder(folder: Path) -> Path:
    """Where the pictures of a folder of them are: itself, or, where it holds none of its own, its
    rgb/ (MVTec 3D-AD's: train/good/rgb/, test/<defect>/rgb/)."""
    rgb = folder / RGB_FOLDER
    return rgb if rgb.is_dir() and not _images_in(folder) else folder


def _class_pictures(class_dir: Path) -> list[Path]:
    """The pictures of a test split's class folder: MVTec 3D-AD's in its rgb/, else those in it and
    below it at any depth (images.pictures_below: a box of rejects sorted by day, crack/monday/;
    Real-IAD's folder per part, OK/S0001/), less those in folders of masks."""
    folder = _pictures_folder(class_dir)
    return _images_in(folder) if folder != class_dir else pictures_below(class_dir)[0]


def _three_d_masks(class_dir: Path) -> dict[str, Path]:
    """The masks of an MVTec 3D-AD class folder's pictures by their name (gt/000.png for
    rgb/000.png), read as a ground-truth folder's are; none for another layout."""
    return {} if _pictures_folder(class_dir) == class_dir else _mvtec_masks(class_dir, GT_FOLDER)


def _images_in(folder: Path, required: bool = False) -> list[Path]:
    """The folder's image files, sorted; `required`: none is an error that says where they are."""
    images = sorted(p for p in folder.iterdir() if is_image_file(p))
    if required and not images:
        raise DataError(no_images_in(folder))
    return images


def normal_folder(root: Path) -> str | None:
    """The name of an MVTec-layout category's normal pictures' folder (train/NAME, test/NAME)."""
    normal = normal_subfolder(root / "train")
    return normal.name if normal else None


def is_mvtec_category(root: Path) -> bool:
    return normal_folder(root) is not None


def _holds_a_category(path: Path) -> bool:
    """Whether `path` is an MVTec-layout category; a folder that cannot be looked into (lost+found
    at a disk's root, for anyone but root) is not."""
    try:
        return path.is_dir() and is_mvtec_category(path)
    except OSError:
        return False


class _EvaluationFolders(NamedTuple):
    """Where a test split's pictures are: one folder per class, in `classes`."""

    classes: Path  # test/ (test_public/) of a category, or a folder that holds the class folders itself
    normal: str  # the class folder of normal pictures (images.NORMAL_FOLDERS, in any case)
    ground_truth: Path  # ground_truth/<defect>/ holds the masks of <defect>'s pictures


def _evaluation_folders(root: Path) -> _EvaluationFolders | None:
    """The test split's folders under `root`: `root/test` of an MVTec-layout category (MVTec AD 2:
    `root/test_public`), with or without its `train/` (eval needs none: pictures of a line's good
    and rejected parts sorted into `test/good` and `test/<defect>`), or `root` itself when it is
    named test or holds `good/` (or `ok/`, `normal/`, in any case) beside a folder per defect (a
    category's `test/` given as it is, or such folders made on site), or pictures with their masks
    beside them (KolektorSDD's board folders). A folder named test may hold one kind alone
    (`test/<defect>`: a box of rejected parts); another needs its folder of normal pictures, or its
    subfolders would all count as defects. Masks are in `root/ground_truth`, else in the test
    split's own (MVTec AD 2's), else, for a folder named test, in the `ground_truth/` beside it,
    else in a `masks/` beside the class folders, else beside `root` (VisA's own download)."""
    trained = normal_folder(root)  # train/<normal> of a category
    splits = {p.name.lower(): p for p in root.iterdir() if p.name.lower() in TEST_SPLITS and p.is_dir()}  # DAGM's Test
    classes = next((splits[name] for name in TEST_SPLITS if name in splits), root)
    if classes == root and (trained is not None or not _holds_test_pictures(root)):
        return None
    tested = normal_subfolder(classes)
    normal = tested.name if tested else trained or NORMAL_FOLDERS[0]
    ground_truth = root / GROUND_TRUTH
    if not ground_truth.is_dir() and classes != root:  # MVTec AD 2's, in test_public/
        ground_truth = classes / GROUND_TRUTH
    elif not ground_truth.is_dir() and root.name == "test":  # a category's test/ itself
        ground_truth = root.parent / GROUND_TRUTH
    elif not ground_truth.is_dir() and (masks := _masks_folder(classes) or _masks_folder(_parent(root))):
        ground_truth = masks
    return _EvaluationFolders(classes, normal, ground_truth)


def _masks_folder(folder: Path) -> Path | None:
    """The subfolder of `folder` named masks, in any case, one subfolder per defect as in
    ground_truth/: beside the class folders, or beside the folder of them (VisA's own download:
    Data/Masks/Anomaly/000.png, of Data/Images/Anomaly/000.JPG)."""
    try:
        return next((p for p in sorted(folder.iterdir()) if p.name.lower() == MASKS and p.is_dir()), None)
    except OSError:  # a folder that cannot be listed
        return None


def _parent(folder: Path) -> Path:
    """The folder above `folder`, also where it is given as '.' (whose Path.parent is itself)."""
    return Path(os.path.normpath(folder / os.pardir))


def _labelled_folders_text(root: Path, depth: int = 2) -> str:
    """What to say of the folders down to `depth` below `root` whose pictures have masks (masks_of),
    where `root` has no test split of its own: give one, or all of them as a wildcard that takes
    them (KolektorSDD's boards, 'KolektorSDD/*/*'; the Magnetic Tile Defect data set's
    'MTD/*/Imgs/*'); nothing where there are none. Training splits are none: evaluated, their
    pictures would be the model's own (DAGM 2007's Class1/Train beside Class1/Test)."""
    found, level = [], [root]
    for _ in range(depth):
        level = [sub for parent in level for sub in subfolders(parent)
                 if sub.name.lower() not in TRAINING_SPLITS]
        found += [folder for folder in level if _labelled(folder)]
    if len(found) == 1:
        return f"; {found[0]} holds pictures labelled by their masks: give that folder"
    if not found:
        return ""
    named = ", ".join(str(folder.relative_to(root)) for folder in found[:3]) + (", ..." if len(found) > 3 else "")
    said = f"; {len(found)} of its subfolders hold pictures labelled by their masks ({named}): give one of them"
    parts = [folder.relative_to(root).parts for folder in found]
    if len({len(p) for p in parts}) > 1:  # at two depths: '**' would take training splits too
        return said
    within = "/".join(names[0] if len(set(names)) == 1 else "*" for names in zip(*parts))
    return f"{said}, or all of them as a quoted wildcard, '{root / within / '*'}'"


def _labelled(folder: Path) -> bool:
    """Whether some of the pictures of `folder` have a mask (images.masks_of); not where it cannot
    be listed."""
    try:
        return bool(masks_of(_images_in(folder)))
    except OSError:
        return False


def _holds_test_pictures(root: Path) -> bool:
    """Whether the folder `root` is a test split itself: it is named test, holds a folder of
    normal pictures (beside a folder per defect), or pictures labelled by their masks (beside
    them, or in its label folder: images.masks_of)."""
    return root.name.lower() == "test" or normal_subfolder(root) is not None or bool(masks_of(_images_in(root)))


def unread_test_pictures(data: str) -> dict[str, int]:
    """The folders of the dataset folder `data`'s test split holding pictures that it does not
    read, and how many each holds: those beside its class folders, of no kind, and the folders of
    masks below a class folder (images.pictures_below), counted as images.pictures_under counts."""
    folders = _test_folders(data)
    if folders is None:
        return {}
    unread = {folders.classes: len(_unlabelled(_images_in(folders.classes)))}
    for class_dir in _class_folders(folders):
        if _pictures_folder(class_dir) == class_dir:  # its label folders' masks are read with its pictures
            unread |= {masks: pictures_under(masks) for masks in pictures_below(class_dir)[1]
                       if label_folder(masks.parent) != masks}
        else:  # MVTec 3D-AD's: rgb/ read, gt/ its masks, xyz/ depth maps
            unread |= {sub: count for sub, count in pictures_in_subfolders(class_dir).items()
                       if sub.name not in (RGB_FOLDER, GT_FOLDER, XYZ_FOLDER)}
    return {str(folder): count for folder, count in unread.items() if count}


def eval_folder_notes(data: str, samples: Sequence[Sample]) -> dict:
    """What eval's report says of how the dataset folder `data`'s test split was read into
    `samples`, each where there is something to say: the pictures it does not read
    (`pictures_not_read`: unread_test_pictures), the pictures in formats not read, per class
    folder (`pictures_in_formats_not_read`), the masks beside their images in a class folder, read
    as those images' masks and not as test images (`masks_beside_their_images`), the masks of a
    defect's ground-truth folder named as none of its test images (`masks_of_no_test_image`), and
    the samples outside the class folders, labelled by the masks beside them, or in their label
    folder (`test_images_labelled_by_their_masks`, with `label_folder`); of a wildcard's, those
    labelled by their masks and the pictures it matches that have none (_wildcard_notes)."""
    if is_wildcard(data):
        return _wildcard_notes(data, samples)
    folders = _test_folders(data)
    if folders is None:
        return {}
    class_folders = _class_folders(folders)
    labels = [s.label for s in samples if Path(s.name).parent == folders.classes]
    masks_folder = {"label_folder": str(found)} if (found := label_folder(folders.classes)) else {}
    notes = {
        "pictures_not_read": unread_test_pictures(data),
        "pictures_in_formats_not_read": {str(d): unread_formats_text(files) for d in class_folders
                                         if (files := unread_formats(d))},
        "masks_beside_their_images": [str(mask) for d in class_folders
                                      for mask in sorted(masks_beside(_class_pictures(d)).values())],
        "masks_of_no_test_image": {str(folders.ground_truth / d.name): {"images": str(d), "masks": len(masks),
                                                                        "first": masks[0].name}
                                   for d in class_folders if (masks := _masks_of_no_image(folders.ground_truth, d))},
        "test_images_labelled_by_their_masks": {"folder": str(folders.classes), "normal": labels.count(0),
                                                "anomalous": labels.count(1)} | masks_folder if labels else None,
    }
    return {key: value for key, value in notes.items() if value}


def _wildcard_notes(pattern: str, samples: Sequence[Sample]) -> dict:
    """What eval's report says of the test images a wildcard matches (eval_folder_notes): how many
    of each kind their masks labelled (`test_images_labelled_by_their_masks`), and the pictures that
    have no mask, not read (`pictures_without_mask`, how many and the first)."""
    unlabelled = _unlabelled(pictures_matching(pattern))
    labels = [s.label for s in samples]
    notes = {"test_images_labelled_by_their_masks": {"wildcard": pattern, "normal": labels.count(0),
                                                     "anomalous": labels.count(1)},
             "pictures_without_mask": {"count": len(unlabelled), "first": str(unlabelled[0])} if unlabelled else None}
    return {key: value for key, value in notes.items() if value}


def _unlabelled(pictures: list[Path]) -> list[Path]:
    """The `pictures` that no mask labels (images.masks_of) and that are no mask themselves: not
    read where pictures outside a class folder, or a wildcard's, are read by their masks."""
    read = set(masks_of(pictures)) | set(masks_beside(pictures).values())
    return [p for p in pictures if p not in read]


def _masks_of_no_image(ground_truth: Path, class_dir: Path) -> list[Path]:
    """The masks in the ground-truth folder of the class folder `class_dir` named as none of its
    pictures (ground_truth/crack/000_defect.png for test/crack/000.png): read as no image's mask,
    they leave their images out of the pixel metrics, or all of those metrics out."""
    stems = {p.stem for p in _images_in(class_dir)}
    return sorted(mask for stem, mask in _mvtec_masks(ground_truth, class_dir.name).items() if stem not in stems)


def _class_samples(class_dir: Path, folders: _EvaluationFolders) -> list[Sample]:
    """The test samples of a class folder's pictures (_class_pictures): good parts' in the normal
    pictures' folder, else of its defect, each with its mask: by its name in the defect's
    ground-truth folder (its own pictures': ground_truth/<defect>/000_mask.png; MVTec 3D-AD's
    gt/), else beside it or in its folder's label folder (images.masks_of). The masks among the
    pictures are none."""
    images = _class_pictures(class_dir)
    masks = masks_of(images)
    among = set(masks.values())
    pictures = [p for p in images if p not in among]
    if class_dir.name == folders.normal:
        return [_file_sample(p, 0, "good") for p in pictures]
    own = _pictures_folder(class_dir)
    ground_truth = _mvtec_masks(folders.ground_truth, class_dir.name) | _three_d_masks(class_dir)
    return [_file_sample(p, 1, class_dir.name, (ground_truth.get(p.stem) if p.parent == own else None) or masks.get(p))
            for p in pictures]


def _labelled_by_masks(images: list[Path]) -> list[Sample]:
    """The test pictures of a folder of them, outside any class folder, that have their mask beside
    them (KolektorSDD2's test/: 10000.png beside 10000_GT.png, black for a good part) or are in a
    folder with a label folder (DAGM 2007's Test/Label/, a mask for each defective part's picture
    only): each is anomalous where its mask marks a defect, and normal where it marks none or it
    has none."""
    masks = masks_of(images)
    defective = set(marked(masks, defective=True))
    return [_file_sample(image, 1, "defect", masks[image]) if image in defective else _file_sample(image, 0, "good")
            for image in sorted(masks)]


def _pictures_showing(images: list[Path], defective: bool) -> list[Path]:
    """The pictures of a folder (or wildcard) read as `defective` parts (known defects) or good ones
    (training pictures): less the masks beside them (000_mask.png: a mask is no picture of a part),
    and less the pictures whose masks say they show the other kind (marked). KolektorSDD2 keeps a
    10000_GT.png beside each picture, black for a good part (246 of its 2,331 training pictures
    are of defective parts); DAGM's Train/ and Test/ a mask in Label/ for each defective one."""
    left = set(masks_beside(images).values()) | set(marked(masks_of(images), not defective))
    return [p for p in images if p not in left]


def marked(masks: dict[Path, Path | None], defective: bool) -> list[Path]:
    """The pictures of `masks` (each picture's mask: images.masks_of) whose mask marks a defect
    (`defective`), or marks none or is none (a good part's)."""
    return [image for image, mask in sorted(masks.items())
            if (mask is not None and bool(_defect_pixels(mask).any())) == defective]


def marked_left_text(where: str | Path, pictures: list[Path], defective: bool, why: str) -> str:
    """What to say of the `pictures` of a folder or wildcard left out because their masks say they
    are of defective parts (`defective`) or of good ones (marked), `why` saying what is read."""
    return (f"{where}: {len(pictures)} picture(s) that their masks say are of {'defective' if defective else 'good'} "
            f"parts ({pictures[0].name}) left out; {why}")


def _test_folders(data: str) -> _EvaluationFolders | None:
    """The test split's folders of `data` where it is a dataset folder."""
    return _evaluation_folders(Path(data)) if not _is_elpv(data) and Path(data).is_dir() else None


def training_pictures_left(data: str) -> list[str]:
    """What to say of the pictures that `data`'s training split is read from (a wildcard's, a
    folder's own, or an MVTec category's train/good) holds and are not read (pictures_left), and
    of those of defective parts by their masks (marked)."""
    if is_wildcard(data):
        where, pictures = data, pictures_matching(data)
    elif Path(data).is_dir():
        normal = normal_folder(Path(data))
        where = str(_pictures_folder(Path(data) / "train" / normal if normal else Path(data)))
        pictures = _images_in(Path(where))
    else:
        return []
    return _left_by_masks(where, pictures, True, "training takes good parts only")


def known_defects_left(spec: str) -> list[str]:
    """What to say of the pictures that the known defects `spec` (a folder or a wildcard) holds and
    are not read (pictures_left), and of those of good parts by their masks (marked)."""
    if is_wildcard(spec):
        pictures = pictures_matching(spec)
    elif Path(spec).is_dir():
        pictures = _images_in(Path(spec))
    else:
        return []
    return _left_by_masks(spec, pictures, False, "known defects are pictures of defective parts")


def _left_by_masks(where: str, pictures: list[Path], defective: bool, why: str) -> list[str]:
    """What to say of the pictures of the folder or wildcard `where` that are not read
    (pictures_left), and of those left out as `defective` parts, or good ones, by their masks."""
    said = pictures_left(where)
    if left := marked(masks_of(pictures), defective):
        said.append(marked_left_text(where, left, defective, why))
    return said


def pictures_left(spec: str) -> list[str]:
    """What to say of the pictures a folder of training or known defect pictures (or a wildcard
    of them) holds and are not read: those in its subfolders (images.subfolders_left), the masks
    beside its pictures, and those in formats not read."""
    if is_wildcard(spec):
        masks = sorted(masks_beside(pictures_matching(spec)).values())
        return [masks_left_text(spec, masks)] if masks else []
    folder = Path(spec)
    if not folder.is_dir():
        return []
    said = [subfolders_left(folder)]
    if masks := sorted(masks_beside(_images_in(folder)).values()):
        said.append(masks_left_text(folder, masks))
    if unread := unread_formats(folder):
        said.append(f"{folder}: {unread_formats_text(unread)} left out; save such pictures as PNG or JPEG to train on "
                    "them")
    return [line for line in said if line]


def is_wildcard(spec: str) -> bool:
    """Whether `spec` is a wildcard of pictures ('archive/OK_*.jpg'), not a path that holds one."""
    return glob.has_magic(spec) and not Path(spec).exists()


def _is_elpv(data: str) -> bool:
    """Whether `data` names the ELPV protocol ('elpv', 'elpv:mono'), not a folder of that name."""
    return data == "elpv" or data.startswith("elpv:")


def _class_folders(folders: _EvaluationFolders) -> list[Path]:
    """A test split's class folders: its normal pictures' and one per defect, sorted; not the label
    folder of its own pictures (DAGM 2007's Test/Label/: masks; where it holds none, a folder
    named so is a defect's), nor a folder of masks, ground_truth/ or masks/ (_masks_folder)."""
    labels = label_folder(folders.classes)
    if labels is not None and not _images_in(folders.classes):
        labels = None
    return sorted(d for d in folders.classes.iterdir()
                  if d.is_dir() and d.name != GROUND_TRUTH and d.name.lower() != MASKS and d != labels)


def _mvtec_masks(ground_truth: Path, defect: str) -> dict[str, Path]:
    """The masks of the pictures of `defect` by the name of their image: `ground_truth/<defect>/<image>_mask.png`
    (MVTec AD; or another of MASK_ENDINGS, as _GT), else a mask of the image's own name (VisA as
    anomalib lays it out, BTAD), else a folder of the image's name of a mask per defect (MVTec
    LOCO AD: ground_truth/<defect>/000/000.png)."""
    folder = ground_truth / defect
    if not folder.is_dir():
        return {}
    files = _images_in(folder)
    # asked what it is only for a name without a picture's suffix: a share's folder of masks is not stat'ed twice
    folders = [p for p in folder.iterdir() if p.suffix.lower() not in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return {p.name: p for p in folders if p.is_dir()} | \
        {p.stem: p for p in files if masked_stem(p.stem) is None} | \
        {stem: p for p in files if (stem := masked_stem(p.stem)) is not None}


def _matching_samples(pattern: str, split: str) -> list[Sample]:
    """The pictures a wildcard matches: as normal training images ('archive/OK_*.jpg': the good
    parts of a folder where the line's vision system saves good and rejected ones side by side), or
    as test images labelled by their masks (KolektorSDD's 'kos*/*': a folder per board, a mask
    beside each picture; the Magnetic Tile Defect data set's 'MT_*/Imgs/*')."""
    pictures = _matching_pictures(pattern)
    if split == "test":
        if not (labelled := _labelled_by_masks(pictures)):
            raise DataError(f"{pattern}: none of the {len(pictures)} pictures the wildcard matches has a mask, beside "
                            "it or in a label folder, to say which part it shows; evaluation reads pictures so "
                            "labelled, an MVTec-layout category (train/good, test/<defect>, ground_truth/<defect>) "
                            "or 'elpv'")
        return labelled
    return [_file_sample(path, 0, "good") for path in _pictures_showing(pictures, defective=False)]


def _matching_pictures(pattern: str) -> list[Path]:
    """The pictures a wildcard matches; none is an error that says what it matched instead."""
    images = pictures_matching(pattern)
    if not images:
        others = len(glob.glob(os.path.expanduser(pattern), recursive=True))  # what it matched, if anything
        found = f"{others} file{'s' * (others != 1)} but no picture" if others else "nothing"
        raise DataError(f"{pattern}: the wildcard matches {found} (quote it, so that the shell leaves it to "
                        "edge-ad)")
    return images


def _folder_samples(root: Path, split: str) -> list[Sample]:
    if not root.exists():
        raise DataError(f"{root}: no such dataset folder")
    if not root.is_dir():
        hint = ("a picture: training needs a folder of many" if is_image_file(root) else
                f"if it is a video of the line, edge-ad record --input {shell_word(root)} --out DIR saves its frames "
                "into a folder to train on")
        raise DataError(f"{root}: not a folder (expected 'elpv', a folder of normal images or an MVTec category); "
                        f"{hint}")
    normal = normal_folder(root)
    if split == "train" and normal is not None:
        good = _images_in(_pictures_folder(root / "train" / normal), required=True)
        return [_file_sample(p, 0, "good") for p in _pictures_showing(good, defective=False)]
    folders = _evaluation_folders(root) if split == "test" else None
    if folders is not None:
        samples = [sample for class_dir in _class_folders(folders) for sample in _class_samples(class_dir, folders)]
        return samples + _labelled_by_masks(_images_in(folders.classes))
    if normal is not None:
        raise DataError(f"{root}: MVTec layout without a test/ (or test_public/) folder")
    categories = sorted(d.name for d in root.iterdir() if _holds_a_category(d))
    if categories:  # a data set's root (MVTec AD, VisA, BTAD), not one of its categories
        listed = ", ".join(categories[:5]) + (" ..." if len(categories) > 5 else "")
        raise DataError(f"{root}: a folder of {len(categories)} MVTec-layout categories ({listed}); "
                        f"give one of them, as {root / categories[0]}")
    if split == "test":
        what = "a folder of normal images has no test split" if any(map(is_image_file, root.iterdir())) else \
            "no test split"
        below = f"; {found.parent} holds the class folder {found.name}/ (good parts): give that folder" \
            if (found := normal_below(root)) is not None else _labelled_folders_text(root)
        raise DataError(f"{root}: {what}; evaluation reads pictures sorted into test/good (or ok, normal) and a folder "
                        "per defect, test/<defect> (an MVTec-layout category; its train/ and ground_truth/ are "
                        f"optional, and one kind alone is a test set too), or 'elpv'{below}")
    good = _images_in(_pictures_folder(root), required=True)
    return [_file_sample(p, 0, "good") for p in _pictures_showing(good, defective=False)]


@functools.cache
def _elpv_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ELPV's images, defect probabilities and module types, decoded once a process: 2,624
    pictures take 4 s, which `train --defects elpv:M` (the split again) would pay twice."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as exc:
        raise DataError("elpv: the 'elpv-dataset' package is not installed (pip install 'edge-ad[data]')") from exc
    return load_dataset()


def elpv_split() -> tuple[list[Sample], list[Sample]]:
    """(train, test) samples of the ELPV protocol; groups are the module types 'mono' and 'poly'."""
    images, probs, types = _elpv_arrays()
    normal = np.flatnonzero(probs == 0)
    anomalous = np.flatnonzero(probs == 1.0)
    perm = np.random.default_rng(0).permutation(normal)
    train_idx, test_normal = perm[:ELPV_TRAIN_SIZE], perm[ELPV_TRAIN_SIZE:]

    def sample(i: int, label: int) -> Sample:
        return Sample(f"elpv:{i:04d}", label, str(types[i]), lambda i=i: to_rgb(images[i], "GRAY"))

    train = [sample(int(i), 0) for i in train_idx]
    test = [sample(int(i), 0) for i in test_normal] + [sample(int(i), 1) for i in anomalous]
    return train, test


def elpv_few_shot(count: int) -> list[Sample]:
    """The ELPV few-shot protocol's known defects (shared/benchmarks/README.md): `count`
    anomalous images drawn with numpy.random.default_rng(1) from the sorted anomalous indices;
    they join training and leave the test set."""
    _, test = elpv_split()
    anomalous = sorted((s for s in test if s.label == 1), key=lambda s: s.name)
    if not 0 < count <= len(anomalous):
        raise DataError(f"elpv:{count}: the few-shot protocol draws 1 to {len(anomalous)} known defects")
    picked = np.random.default_rng(1).choice(len(anomalous), count, replace=False)
    return [anomalous[i] for i in picked]


def load_defects(spec: str) -> list[Sample]:
    """Known defect images: 'elpv:M' (the few-shot protocol's M), a folder of images or a wildcard
    of them ('rejects/**/*': a folder of rejected parts sorted by defect)."""
    if spec.startswith("elpv:"):
        try:
            return elpv_few_shot(int(spec[len("elpv:") :]))
        except ValueError as exc:
            raise DataError(f"{spec}: expected elpv:<count>, e.g. elpv:10") from exc
    if is_wildcard(spec):
        return [_file_sample(p, 1, "defect") for p in _pictures_showing(_matching_pictures(spec), defective=True)]
    folder = Path(spec)
    if not folder.is_dir():
        raise DataError(f"{spec}: not a folder of defect images (or elpv:<count>)")
    return [_file_sample(p, 1, "defect") for p in _pictures_showing(_images_in(folder, required=True), defective=True)]


def load_samples(data: str | Sequence[str], split: str) -> list[Sample]:
    """Samples of `split` ('train' or 'test') for 'elpv', 'elpv:mono' or 'elpv:poly' (the ELPV
    protocol's images of one module type: one product variant), a dataset folder (layout detected)
    or a wildcard of normal pictures (train only); for several of them, theirs one after another
    (pictures kept in several folders: the first ones recorded, and those `run --samples` kept),
    each file once where two of them take it (a folder and a wildcard in it)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(data, str):
        samples = {os.path.realpath(s.name): s for one in data for s in load_samples(one, split)}
        return list(samples.values())
    if ("://" in data and not data.startswith("file://")) or is_v4l2_device(data):  # read as a folder before
        shown = without_passwords(data)
        raise DataError(f"{shown}: a camera or stream, not pictures: record its frames first (edge-ad record "
                        f"--input {shell_word(shown)} --out frames --frames 200), then give that folder")
    if _is_elpv(data):
        module_type = data.partition(":")[2]
        if module_type and module_type not in ELPV_TYPES:
            raise DataError(f"{data}: ELPV's module types are {', '.join(ELPV_TYPES)} (elpv:mono, elpv:poly), "
                            "or 'elpv' for all")
        train, test = elpv_split()
        samples = [s for s in (train if split == "train" else test) if module_type in ("", s.group)]
    elif is_wildcard(data):
        samples = _matching_samples(data, split)
    else:
        samples = _folder_samples(Path(data), split)
    if not samples:
        unread = unread_test_pictures(data) if split == "test" else {}
        where = f"; the pictures of {counts_text(unread)} are not read, as they lie {NOT_READ}" if unread else ""
        raise DataError(f"{data}: no images found for the {split} split{where}")
    return samples


def without_overlays(samples: list[Sample]) -> tuple[list[Sample], str | None]:
    """`samples` less the alarm overlays of `run --snapshots` (a folder of snapshots copied whole to
    train on its false alarms, or a wildcard that takes both of each pair), and what to say of
    those left out: the heat map drawn over them would be learnt as normal."""
    overlays = [s for s in samples if s.name.endswith(OVERLAY_SUFFIX)]
    if not overlays:
        return samples, None
    return [s for s in samples if not s.name.endswith(OVERLAY_SUFFIX)], (
        f"{len(overlays)} of edge-ad's own alarm overlays (*{OVERLAY_SUFFIX}, as {Path(overlays[0].name).name}): "
        f"the heat map drawn over a frame, not a picture of a part; the *{FRAME_SUFFIX} beside each is the camera's")


def read_all(
    samples: Iterable[Sample], skip_bad: bool, progress: Callable[[Iterable[Sample]], Iterable[Sample]] = iter,
    keep: Callable[[np.ndarray], Any] | None = None,
) -> tuple[list[Sample], list, list[str]]:
    """Load every sample; returns (good samples, their images, messages about bad files). With
    `keep`, what it returns for each image is kept instead of the image (the model input it
    needs), so that large pictures are not all held at once: a 12-megapixel camera's take 36 MB
    each, and 1,000 of them more memory than most workstations have.

    Without skip_bad any bad file raises one DataError that lists every bad file,
    so a user fixes the folder in one pass instead of one file at a time.
    """
    kept, images, bad = [], [], []
    for sample in progress(samples):
        try:
            image = sample.image()
            images.append(keep(image) if keep else image)
            kept.append(sample)
        except ImageError as exc:
            bad.append(str(exc))
    if bad and not skip_bad:
        listing = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} unreadable image(s), rerun with --skip-bad to leave them out: {listing}")
    return kept, images, bad


def data_text(data: str | Sequence[str]) -> str:
    """`data` as `load_samples` takes it, for messages: one spec as given, several joined by commas."""
    return data if isinstance(data, str) else ", ".join(data)


def training_sources(data: str | Sequence[str], defects: str | None) -> dict[str, Any]:
    """Where a training run's pictures were: `data_paths`, the folders and wildcards of `data` by
    absolute path (not ELPV's protocol; export's INT8 calibration frames by default, read from
    whatever folder export runs in), `defects_path`, the known defects (by absolute path; elpv:M
    as it is), and `host`, the machine whose paths they are, for a person reading the bundle's
    provenance. eval and calibrate know the pictures by their pixels (edge_ad.picture_lists)."""
    specs = [data] if isinstance(data, str) else list(data)
    record: dict[str, Any] = {"data_paths": [_absolute(spec) for spec in specs if not _is_elpv(spec)],
                              "host": socket.gethostname()}
    if defects is not None:
        record["defects_path"] = defects if _is_elpv(defects) else _absolute(defects)
    return record


def _absolute(spec: str) -> str:
    return os.path.abspath(os.path.expanduser(spec))


def calibration_frames(
    data: str | Sequence[str], count: int, size: tuple[int, int], grey: bool = False
) -> list[np.ndarray]:
    """Up to `count` RGB frames to calibrate INT8 on, resized to the model input `size` (height,
    width) as they are read, with a progress bar: the first frames of a video file, or images
    evenly spaced over the training split of a data set ('elpv', a folder, an MVTec category;
    unreadable images are left out). `grey`: in grey, as the runtime scores frames for a bundle
    trained on grey pictures (Bundle.trained_on_grey)."""
    from tqdm import tqdm

    def resized(image: np.ndarray) -> np.ndarray:
        image = resize_to_input(image, *size)
        return as_grey(image) if grey else image

    if not isinstance(data, str) or not local_path(data).is_file():
        samples = without_overlays(load_samples(data, "train"))[0]  # as `train` leaves them out
        pick = np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int)
        return read_all([samples[i] for i in pick], True, lambda s: tqdm(s, desc="calibration images", unit="img"),
                        resized)[1]
    from .sources import open_source

    images = []
    with tqdm(total=count, desc="calibration frames", unit="frame") as bar:
        source = open_source(data)
        try:
            for frame in source:
                images.append(resized(cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)))
                bar.update()
                if len(images) >= count:
                    break
        finally:
            source.close()
    return images
