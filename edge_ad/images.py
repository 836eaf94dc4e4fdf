"""Reading image files and turning frames into the uint8 RGB input the graphs expect."""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import re
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError, os_reason

# WebP: pictures saved from a browser or a labelling tool; PGM and PPM: from machine-vision tools.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
# Pictures in formats that are not read: a phone's (HEIC: an iPhone's by default), a camera's raw
# files, others a browser saves. A folder of them is said to hold them, not passed over in silence.
UNREAD_SUFFIXES = (".heic", ".heif", ".avif", ".jxl", ".gif", ".jp2", ".dng", ".raw", ".cr2", ".cr3", ".nef", ".arw")
MIN_FRAME_SIDE = 8  # pixels: a frame smaller is no picture of a part
# Pictures whose brightest pixel is this or less (a quarter of the range), all of a training or a
# test set, are far darker than the line camera's 8-bit frames: 16-bit files of a 12-bit camera
# read at the full 16-bit range come out at 16 of 255 at most; a bundle trained on such files
# flagged every normal 8-bit ELPV frame, and one trained on 8-bit cells 19 of 20 normal ones saved
# so (README: 16-bit pictures).
DARK = 64
# An input that enlarges pictures more than this many times a side leaves the finest features
# (stride 8) fewer than 2 picture pixels across a cell: blur, no texture. A bundle trained on ELPV
# cells shrunk to 32x32 (enlarged 8 times into 256) flagged all 20 normal 300x300 cells; shrunk to
# 64x64 (4 times), 3 of them, and to 128x128, none (README: Pictures smaller than the input).
# The other way round, a bundle trained on 300x300 cells flagged 150 of 377 normal cells shrunk to
# 32x32, 20 at 48x48 (5.3 times), 3 at 64x64 and 1 at 128x128, as at 300x300.
ENLARGED = 4
DARK_CAUSE = ("16-bit files of a 10-, 12- or 14-bit camera read this dark (16-bit pictures are read at their full "
              "range, value / 257), as do pictures taken without light")
# The normal pictures' folder: MVTec AD and VisA name it good; BTAD, ok; VisA's own download, Normal.
NORMAL_FOLDERS = ("good", "ok", "normal")
# A mask saved beside its picture, named as the picture with one of these endings (any case):
# MVTec's _mask, KolektorSDD2's _GT, KolektorSDD's _label, as some labelling tools export them.
MASK_ENDINGS = ("_mask", "_gt", "_label")
# A folder's subfolder of the masks of its pictures of defective parts (DAGM 2007's Train/Label/:
# 0002_label.PNG for 0002.PNG), any case; its pictures without a mask there are of good parts.
LABEL_FOLDER = "label"
# MVTec 3D-AD keeps a class folder's pictures in rgb/, their masks (named as they are) in gt/, and
# their depth maps in xyz/ (not read: edge-ad scores pictures).
RGB_FOLDER, GT_FOLDER, XYZ_FOLDER = "rgb", "gt", "xyz"
GROUND_TRUTH = "ground_truth"  # an MVTec-layout category's folder of masks, one subfolder per defect
MASKS = "masks"  # as ground_truth/, one subfolder per defect; VisA's own download's Masks/ is beside Images/
# Folders of masks, by their name in any case: passed over where the pictures below a folder are
# read (pictures_below), as a mask is no picture of a part.
MASK_FOLDERS = (GROUND_TRUTH, GT_FOLDER, LABEL_FOLDER, "labels", "mask", MASKS)
MASK_EDGE = 0.01  # of a mask's pixels, at most, between its two levels (painted with a soft brush)
COUNTED_UP_TO = 1000  # pictures counted in a subfolder left unread: a share's archive there may hold millions
LISTED = 10  # folders named in a message, the first: a folder a day, or Real-IAD's folder a part, makes hundreds
COLOR_ORDERS = ("BGR", "RGB", "GRAY")
GREY_TOLERANCE = 2  # grey levels between the channels of a grey picture (a colour JPEG of one rounds them)

_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
# A PGM or PPM header: its kind (2 and 3 plain text, 5 and 6 binary; 3 and 6 colour), width,
# height and maximum value, each after blanks or comment lines, and the one blank before the pixels.
_BLANKS = rb"(?:\s|#[^\n]*\n)+"
_NETPBM_HEADER = re.compile(rb"\AP([2356])" + rb"".join([_BLANKS + rb"(\d+)"] * 3) + rb"\s")


def is_image_file(path: Path) -> bool:
    """A file with an image suffix that is not hidden: a folder copied from a Mac onto a USB stick
    or a network share holds a `._NAME.png` of metadata beside each picture (AppleDouble)."""
    return not path.name.startswith(".") and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def pictures_matching(pattern: str) -> list[Path]:
    """The pictures a wildcard matches ('parts/*.jpg', '~/archive/**/OK_*.png'), sorted."""
    return sorted(path for path in map(Path, glob.glob(os.path.expanduser(pattern), recursive=True))
                  if is_image_file(path))


def pictures_of(path: Path) -> list[Path]:
    """The pictures a picture source names, sorted: a picture itself, a folder's own (not its
    subfolders'), or those a wildcard matches."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if is_image_file(p))
    return pictures_matching(str(path))


def masked_stem(stem: str) -> str | None:
    """The name of the picture that a mask named `stem` is of (000 for 000_mask or 000_GT: one of
    MASK_ENDINGS), or None where `stem` is named as no mask."""
    return next((stem[: -len(end)] for end in MASK_ENDINGS if stem.lower().endswith(end)), None)


def masks_beside(pictures: list[Path]) -> dict[Path, Path]:
    """The masks among `pictures`, by their picture: each named as another picture of its folder
    with one of MASK_ENDINGS (000_mask.png beside 000.png), or of the folder above its label
    folder (a wildcard's Train/Label/0002_label.PNG, of Train/0002.PNG), or named as its picture,
    in another format (_masks_named_alike)."""
    named = {(p.parent, p.stem): p for p in pictures}
    masks = {}
    for mask in pictures:
        if (stem := masked_stem(mask.stem)) is None:
            continue
        picture = named.get((mask.parent, stem))
        if picture is None and mask.parent.name.lower() == LABEL_FOLDER:
            picture = named.get((mask.parent.parent, stem))
        if picture is not None:
            masks[picture] = mask
    return _masks_named_alike(pictures) | masks


def _masks_named_alike(pictures: list[Path]) -> dict[Path, Path]:
    """The masks among `pictures` named as their picture in another format, by their picture (the
    Magnetic Tile Defect data set's exp1_num_4727.png beside exp1_num_4727.jpg, black for a good
    part): of two pictures of one folder so named, the one of two grey levels (_two_levels), where
    the other is not (a photograph is never so flat)."""
    alike: dict[tuple[Path, str], list[Path]] = {}
    for picture in pictures:
        alike.setdefault((picture.parent, picture.stem), []).append(picture)
    masks = {}
    for pair in alike.values():
        if len(pair) == 2 and _two_levels(pair[0]) != _two_levels(pair[1]):
            picture, mask = sorted(pair, key=_two_levels)
            masks[picture] = mask
    return masks


def _two_levels(path: Path) -> bool:
    """Whether the picture at `path` is grey, of two grey levels, as a mask is: all but a few of
    its pixels (MASK_EDGE: a brush's soft edge) at its two commonest levels, or at one (a good
    part's). One that cannot be read is not (read as a picture, what is wrong with it is named)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return _two_levels_as_saved(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16384)
def _two_levels_as_saved(path: Path, modified_ns: int, size: int) -> bool:
    """_two_levels of `path` as it was saved at `modified_ns`, `size` bytes long: a command asks it
    of a folder's pairs a few times (the pictures to read, the masks to leave out, a note)."""
    try:
        rgb = read_image(path)
    except ImageError:
        return False
    if not is_grey(rgb):
        return False
    grey = rgb[..., 0]
    counts = np.sort(np.bincount(grey.ravel(), minlength=256))
    return counts[:-2].sum() <= MASK_EDGE * grey.size


def label_folder(folder: Path) -> Path | None:
    """The subfolder of `folder` that holds the masks of its pictures of defective parts (DAGM
    2007's Train/Label/, in any case), if it has one: a folder so named without a mask in it
    (pictures of the parts' printed labels) is none."""
    try:
        return next((p for p in folder.iterdir() if p.name.lower() == LABEL_FOLDER and _is_label_folder(p)), None)
    except OSError:  # not a folder that can be listed
        return None


def _is_label_folder(path: Path) -> bool:
    """Whether `path` is a label folder (label_folder): named so, and holding masks."""
    try:
        return path.name.lower() == LABEL_FOLDER and path.is_dir() and bool(_label_masks(path))
    except OSError:  # a label folder that cannot be listed is none, as a folder that cannot be is
        return False


def _label_masks(labels: Path) -> dict[str, Path]:
    """The masks of a label folder by the name of their picture: those named with one of
    MASK_ENDINGS (0002_label.PNG for 0002.PNG)."""
    return {stem: mask for mask in sorted(labels.iterdir())
            if (stem := masked_stem(mask.stem)) is not None and is_image_file(mask)}


def masks_of(pictures: list[Path]) -> dict[Path, Path | None]:
    """What says which parts `pictures` show, by picture: its mask beside it (masks_beside), or in
    its folder's label folder (label_folder), where a picture without one is of a good part (None).
    The masks among `pictures` are none of its keys."""
    beside = masks_beside(pictures)
    masks: dict[Path, Path | None] = dict(beside)
    left = set(beside.values())
    by_folder: dict[Path, list[Path]] = {}
    for picture in pictures:
        if picture not in masks and picture not in left:
            by_folder.setdefault(picture.parent, []).append(picture)
    for folder, unmasked in by_folder.items():
        if (labels := label_folder(folder)) is not None:
            named = _label_masks(labels)
            masks |= {picture: named.get(picture.stem) for picture in unmasked}
    return masks


def masks_left_text(where: str | Path, masks: list[Path]) -> str:
    """What to say of the masks among the pictures of a folder or wildcard (masks_beside: beside
    their pictures, or in their label folder), left out where pictures of parts are read: scored,
    each was one more frame of nothing."""
    return f"{where}: {len(masks)} mask(s) of its pictures ({masks[0].name}) left out; a mask is no picture of a part"


def pattern_folder(pattern: str) -> Path:
    """The folder under which a wildcard's pictures lie: its path up to the first part with a
    wildcard in it ('cams/*/part_*.jpg': cams), a quoted ~ expanded."""
    fixed = Path(os.path.expanduser(pattern)).parent
    while glob.has_magic(str(fixed)):
        fixed = fixed.parent
    return fixed


def pictures_in_subfolders(folder: Path) -> dict[Path, int]:
    """How many pictures each subfolder of `folder` holds, its own subfolders' included, where it
    holds some, counted up to COUNTED_UP_TO (counts_text says so); hidden folders (a viewer's
    thumbnails) and those that cannot be listed hold none, and links to folders are not followed.
    A label folder (label_folder) is none: its masks are read with the pictures."""
    counts = {sub: pictures_under(sub) for sub in sorted(p for p in folder.iterdir() if p.is_dir()
                                                          and not p.name.startswith(".") and not _is_label_folder(p))}
    return {sub: count for sub, count in counts.items() if count}


def pictures_below(folder: Path) -> tuple[list[Path], list[Path]]:
    """The pictures in `folder` and in its subfolders at any depth, sorted (each folder's entries
    are taken in order), and the folders of masks below it (MASK_FOLDERS), whose files are not
    among them. Hidden folders (a viewer's thumbnails) are passed over, and links to folders not
    followed (one to a folder above would never end); a folder that cannot be listed is an error,
    as its pictures would be lost."""
    pictures, mask_folders = [], []
    with os.scandir(folder) as listing:  # what each entry is, from the listing: no file asked (a share's 100,000)
        entries = sorted((entry for entry in listing if not entry.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.name.lower() in MASK_FOLDERS:
                mask_folders.append(Path(entry.path))
                continue
            below, masks_below = pictures_below(Path(entry.path))
            pictures += below
            mask_folders += masks_below
        elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
            pictures.append(Path(entry.path))
    return pictures, mask_folders


def pictures_under(folder: Path) -> int:
    """The pictures in `folder` and below it, up to COUNTED_UP_TO."""
    count, pending = 0, [str(folder)]
    while pending and count < COUNTED_UP_TO:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                        count += 1
                        if count == COUNTED_UP_TO:
                            break
        except OSError:  # a folder that cannot be listed holds nothing to offer
            continue
    return count


def _count_text(count: int) -> str:
    """A count of pictures_in_subfolders, as a person reads it."""
    return str(count) if count < COUNTED_UP_TO else f"{COUNTED_UP_TO} or more"


def counts_text(counts: dict[str, int]) -> str:
    """Folders by name and how many pictures each holds (_count_text), as a person reads them: the
    first LISTED, and how many more there are (800 of them made a 9,000-character message)."""
    listed = ", ".join(f"{name} ({_count_text(count)})" for name, count in list(counts.items())[:LISTED])
    return listed + (f" and {len(counts) - LISTED} more" if len(counts) > LISTED else "")


def subfolders_left(folder: Path) -> str | None:
    """What to say where the subfolders of `folder` hold pictures, which a reader of its own
    pictures leaves (a vision system's folder a day, a box of rejects sorted by kind): which
    subfolders, how many pictures, and the wildcard that takes them all."""
    held = pictures_in_subfolders(folder)
    if not held:
        return None
    listed = counts_text({sub.name: count for sub, count in held.items()})
    return (f"{folder}: the pictures of its subfolders {listed} are not read, only its own; for all of them, give a "
            f"quoted wildcard, '{folder / '**' / '*'}'")


def unread_formats(folder: Path) -> list[Path]:
    """The pictures of `folder` (its own) in formats that are not read (UNREAD_SUFFIXES), sorted."""
    try:
        return sorted(p for p in folder.iterdir()
                      if not p.name.startswith(".") and p.suffix.lower() in UNREAD_SUFFIXES and p.is_file())
    except OSError:  # a folder that cannot be listed is said where its pictures are read
        return []


def unread_formats_text(files: list[Path]) -> str:
    """How many pictures of unread formats there are, of which kinds, the first by name."""
    kinds = " ".join(sorted({p.suffix for p in files}))
    return f"{len(files)} picture{'s' * (len(files) != 1)} in formats not read ({kinds}, as {files[0].name})"


def normal_subfolder(parent: Path) -> Path | None:
    """`parent`'s folder of normal pictures (NORMAL_FOLDERS), in any case (Good or OK, as folders
    made by hand are often named: read as a defect's, their good parts were counted as defects);
    None where it has none."""
    try:  # the names first: a folder of 10,000 pictures on a share is not asked 10,000 times what each is
        named = sorted(p for p in parent.iterdir() if p.name.lower() in NORMAL_FOLDERS)
        found = {p.name.lower(): p for p in named if p.is_dir()}  # good over Good where both are
    except OSError:  # not there, or not a folder that can be listed
        return None
    return next((found[name] for name in NORMAL_FOLDERS if name in found), None)


def normal_below(folder: Path, depth: int = 4) -> Path | None:
    """The first folder of normal pictures (normal_subfolder) in `folder` or in its subfolders
    down to `depth` folders below it, breadth first: test/good of an MVTec-layout category, VisA's
    own download's Data/Images/Normal beside Data/Images/Anomaly (from the data set's root,
    candle/Data/Images/Normal)."""
    level = [folder]
    for _ in range(depth):
        for parent in level:
            if (found := normal_subfolder(parent)) is not None:
                return found
        level = [sub for parent in level for sub in subfolders(parent)]
    return None


def subfolders(folder: Path) -> list[Path]:
    """The folders in `folder`, sorted, hidden ones and links not; none where it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(entry.path) for entry in entries
                          if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False))
    except OSError:
        return []


def no_images_in(folder: Path) -> str:
    """The error for a folder without image files: the suffixes read, and which of its subfolders
    hold some (`run --samples` keeps each source's pictures in a subfolder of its own). All of them
    together are offered unless they are sorted by kind (good/ beside a folder per defect, in it
    or further below: normal_below) or split into train/ and test/: those together would take
    rejected parts for good ones, good ones for defects, or test pictures for training ones; nor
    are an MVTec 3D-AD class folder's, pictures beside depth maps (and masks)."""
    subfolders = pictures_in_subfolders(folder)
    holding = counts_text({sub.name: count for sub, count in subfolders.items()})
    normal = normal_below(folder)
    if not holding:
        found = ""
    elif normal is not None:
        found = (f"; its subfolders {holding} hold some, sorted by kind: give the folder of the kind meant ({normal} "
                 "holds good parts), not all of them together, which would mix good and rejected parts")
    elif "train" in (splits := {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}) and "test" in splits:
        # KolektorSDD2's: pictures and masks in each; DAGM 2007's Train/ and Test/
        found = (f"; its subfolders {holding} hold some, split into train/ and test/: give {splits['train']} to train "
                 "on, not all of them together, which would train on the test pictures too")
    elif {RGB_FOLDER, XYZ_FOLDER} <= {sub.name for sub in subfolders}:
        found = (f"; its pictures are in {folder / RGB_FOLDER} (MVTec 3D-AD's layout; its {XYZ_FOLDER}/ holds depth "
                 "maps, which edge-ad does not read): give that folder")
    else:
        found = f"; its subfolders {holding} hold some: give one of them, or all of them as a quoted wildcard, " \
                f"'{folder / '**' / '*'}'"
    unread = unread_formats(folder)
    held = f"; it holds {unread_formats_text(unread)}: save such pictures as PNG or JPEG" if unread else ""
    return f"{folder}: no image files ({' '.join(IMAGE_SUFFIXES)}) in the folder{held}{found}"


def _check_complete(path: Path | str, data: bytes) -> None:
    """OpenCV decodes truncated JPEG and some truncated PNG files without failing; check the end
    marker of the format the first bytes say, not the name (JPEG files named .png are common)."""
    tail = data[-1024:]
    if data.startswith(_JPEG_START) and _JPEG_END not in tail:
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker)")
    if data.startswith(_PNG_START) and _PNG_END not in tail:
        raise ImageError(f"{path}: truncated PNG (no IEND chunk)")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); grey images become three equal channels, and a
    picture whose EXIF data says it was taken turned (a phone or a camera held upright) is turned
    as every image viewer shows it, so that it looks as the camera frames of the same view."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({os_reason(exc)})") from exc
    if not data:
        raise ImageError(f"{path}: empty file")
    return decode_image(data, path)


def decode_image(data: bytes, name: Path | str) -> np.ndarray:
    """An image file's bytes (named `name` in errors) as read_image reads the file."""
    if not data:  # (OpenCV's imdecode asserts on none)
        raise ImageError(f"{name}: empty (no bytes)")
    _check_complete(name, data)
    header = _NETPBM_HEADER.match(data)
    if header is not None:
        return to_rgb(_netpbm(data, header, name), "RGB", str(name))
    # Any depth and any colour keeps 16-bit and grey pictures as they are, drops alpha, and (unlike
    # IMREAD_UNCHANGED) applies the EXIF orientation.
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as exc:  # OpenCV asserts, rather than gives none, for some damaged headers
        why = "its header states a size past OpenCV's limits" if exc.func == "validateInputImageSize" else exc.err
        raise ImageError(f"{name}: not a decodable image ({why})") from exc
    if decoded is None:
        raise ImageError(f"{name}: not a decodable image")
    if decoded.dtype == np.uint16:
        decoded = (decoded / 257.0).round().astype(np.uint8)
    if decoded.dtype != np.uint8:
        raise ImageError(f"{name}: {decoded.dtype} pixels are not read; save pictures with 8 or 16 bits per channel")
    return to_rgb(decoded, "GRAY" if decoded.ndim == 2 else "BGR", str(name))


def _netpbm(data: bytes, header: re.Match, name: Path | str) -> np.ndarray:
    """A PGM or PPM picture as uint8 grey or RGB, its values scaled from the maximum its header
    states (4095 for a 12-bit camera's) to 255. Read here, as OpenCV scales plain-text files of 8
    bits and no others: a 12-bit camera's binary PGM read at most 16 of 255."""
    kind, (width, height, maximum) = header.group(1), map(int, header.group(2, 3, 4))
    channels, what = (3, "PPM") if kind in b"36" else (1, "PGM")
    if not 0 < maximum < 65536:
        raise ImageError(f"{name}: a {what} whose maximum value is {maximum} (it is 1 to 65535)")
    count, raster = width * height * channels, data[header.end():]
    if kind in b"56":
        dtype = np.dtype(">u2" if maximum > 255 else "u1")
        values = np.frombuffer(raster, dtype, min(count, len(raster) // dtype.itemsize))
    else:
        try:
            values = np.array(raster.split(maxsplit=count)[:count]).astype(np.int64)
        except ValueError as exc:
            raise ImageError(f"{name}: a plain-text {what} with values that are not numbers") from exc
    if len(values) < count:
        raise ImageError(f"{name}: truncated {what} ({len(values)} of its {count} values)")
    values = np.clip(values, 0, maximum)
    if maximum != 255:  # to 0-255, rounded, in 4 bytes a value (a 12-megapixel picture: 48 MB)
        values = (values.astype(np.uint32) * 255 + maximum // 2) // maximum
    return values.astype(np.uint8).reshape((height, width, channels) if channels == 3 else (height, width))


def pixel_digest(picture: np.ndarray) -> str:
    """What tells two pictures of the same pixels (whatever their names, folders or machines) from
    others: a hash of the shape and the pixels, in hex. Training keeps those of its pictures, so
    that eval and calibrate know them again (bundle.Bundle.training_pictures)."""
    digest = hashlib.blake2b(str(picture.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(picture).data)
    return digest.hexdigest()


def check_frame(frame: object, name: str = "frame") -> np.ndarray:
    """Validate a frame array: uint8, (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), non-empty."""
    if not isinstance(frame, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ImageError(f"{name}: dtype {frame.dtype}, expected uint8 (0-255, as a camera's 8-bit frames)"
                         f"{_to_8_bits(frame)}")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise ImageError(f"{name}: shape {frame.shape}, expected (H, W) or (H, W, 1|3|4)")
    if frame.shape[0] < MIN_FRAME_SIDE or frame.shape[1] < MIN_FRAME_SIDE:
        raise ImageError(f"{name}: shape {frame.shape} is too small (at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} pixels)")
    return frame


def _to_8_bits(frame: np.ndarray) -> str:
    """How to make a frame of another dtype the 8-bit frame the model expects, from the values it
    holds (a float frame of 0-255 multiplied by 255 would wrap round); "" when unclear."""
    if frame.dtype.kind not in "biuf" or frame.size == 0:
        return ""
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        return "; it holds NaN or infinite values"
    low, high = frame.min().item(), frame.max().item()
    held = f"; its values lie from {low:g} to {high:g}"
    if frame.dtype == np.uint16 and high > 255:
        return ("; a 10-, 12- or 14-bit camera's values scale down as its 8-bit output would: "
                "(frame >> (bits - 8)).astype(np.uint8), or (frame // 257).astype(np.uint8) for the full 16-bit range")
    if frame.dtype.kind in "bf" and low >= 0 and high <= 1:
        return f"{held}, as in a picture of 0 to 1: (frame * 255).round().astype(np.uint8)"
    if low >= 0 and high <= 255:
        return f"{held}: {'frame.round()' if frame.dtype.kind == 'f' else 'frame'}.astype(np.uint8)"
    return f"{held}, beyond 0 to 255: scale them to 0-255 as the camera's 8-bit output would"


def to_rgb(frame: np.ndarray, color: str = "BGR", name: str = "frame", size: tuple[int, int] | None = None
           ) -> np.ndarray:
    """Convert a validated uint8 frame in the given channel order to contiguous RGB; errors call it
    `name`. With `size` (height, width), resized to it first (`resize_to_input`): the same pixels
    as converting first, since both act on each channel alone, at the cost of the small picture
    (9-14 ms less for a 12-megapixel frame on a 2-core CPU)."""
    if color not in COLOR_ORDERS:
        raise ImageError(f"color order {color!r} is not one of {', '.join(COLOR_ORDERS)}")
    frame = check_frame(frame, name)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[..., :3]
    if frame.ndim == 3 and color == "GRAY":
        raise ImageError(f"{name}: shape {frame.shape} has colour channels but color='GRAY' was given")
    if size is not None:
        frame = resize_to_input(frame, *size)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if color == "RGB":
        return np.ascontiguousarray(frame)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def is_grey(rgb: np.ndarray) -> bool:
    """Whether an RGB (or BGR) picture is grey: one channel, or three equal within GREY_TOLERANCE
    (a grey picture saved as a colour JPEG)."""
    if rgb.ndim == 2 or rgb.shape[2] == 1:
        return True
    first, *others = cv2.split(rgb[..., :3])  # OpenCV's absdiff on uint8: a third of numpy's time at 1 megapixel
    return max(int(cv2.absdiff(other, first).max()) for other in others) <= GREY_TOLERANCE


def as_grey(rgb: np.ndarray) -> np.ndarray:
    """An RGB frame's grey picture (luma, as OpenCV weighs the channels) in three equal channels:
    a grey picture is itself."""
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def thumbnail(frame: np.ndarray, color: str = "BGR") -> np.ndarray:
    """A 32 x 32 grey thumbnail of a uint8 frame (BGR or RGB as `color` says, or grey), as the
    near-copy checks of `calibrate`, `record` and `train` compare pictures."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if color == "BGR" else cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)


def resize_to_input(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB frame to the model input; area interpolation when shrinking avoids aliasing."""
    if rgb.shape[:2] == (height, width):
        return rgb
    shrinking = rgb.shape[0] > height or rgb.shape[1] > width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)
