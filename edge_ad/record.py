"""`edge-ad record`: pictures of good parts from the line camera, to train and calibrate on.

Frames come through the same sources as `edge-ad run` (the same camera options and flip, so the
pictures are the frames `run` will score), at most one per `interval_s` (of the video's time for
a file, of the clock for a camera; every picture of a folder or wildcard, followed or not), as
lossless PNG (or JPEG) files named as `run`'s snapshots are, after the source, the capture time
and the frame number, so that a second recording into the same folder adds to the first (a
folder's pictures keep their own names: own_name_path); or one frame as the picture named
(frame.png, the frame a mask is drawn on). Recording stops after `count` pictures, at the end of
a file, or on SIGINT / SIGTERM, and keeps every picture saved. `record_sources` records several
cameras at once (a run's --sources), each into its own folder, for a bundle per camera.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from calibration.statistics import COPIES_SHARE, near_duplicates

from .errors import EdgeAdError, os_reason
from .files import remove_leftovers, write_atomic
from .followed_pictures import FollowedPictures
from .images import IMAGE_SUFFIXES, thumbnail
from .runner import stop_on_signals
from .sinks import picture_paths, slug
from .sources import PictureSource, Source, settled_frames

FORMATS = ("png", "jpg")


def one_picture(out: Path) -> bool:
    """Whether `--out` names one picture (frame.png: a name edge-ad reads as a picture) rather
    than a folder of pictures; a folder that exists keeps its meaning, whatever its name."""
    return out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir()


def own_name_path(folder: Path, name: str, suffix: str) -> Path:
    """Where a picture of a folder or wildcard, `name` under it, is saved: under its own name
    (a wildcard's cam1/part_7.jpg as cam1_part_7.png), so that each can be traced to the picture
    it was cut from (a serial number, a label given later); -2, -3, ... where that name is taken
    (a second recording), as nothing is written over."""
    stem = "_".join(Path(name).with_suffix("").parts)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _own_input(source: Source, out: Path, folder: Path, single: bool) -> str | None:
    """What is wrong with saving into `folder` (`out` itself where `single`) the pictures `source`
    reads, if anything: a followed folder would read each picture saved as a new part (seen:
    x.png saved as x-2.png, x-2-2.png, ... until --frames), a folder's copies would lie among the
    pictures they were cut from (to be trained on twice), and one picture would be written over."""
    if isinstance(source, FollowedPictures) and source.watches(folder):
        return "the folder --follow reads new pictures from: each picture saved would be read as a new part"
    if isinstance(source, PictureSource):
        read = {path.resolve() for path in [*source.files, *source.masks.values()] if path is not None}
        if single and out.resolve() in read:
            return "a picture of the folder the frames are read from, which the frame would be written over"
        if not single and any(path.parent == folder.resolve() for path in read):
            return ("the folder the pictures are read from: their copies, turned and cropped, would lie among them, "
                    "to be trained on twice")
    return None


def record(
    source: Source, out: Path, count: int, interval_s: float = 1.0, fmt: str = "png",
    stop: threading.Event | None = None, label: str = "recording", position: int | None = None,
) -> list[Path]:
    """Save up to `count` settled frames of `source` (sources.settled_frames) into the folder
    `out`, one per `interval_s` at most, or one frame as the picture `out` names (one_picture:
    its format then its name's); the paths written, in order. `label` and `position` place its
    progress bar. At the end it says when many pictures are near-copies of the one before. The
    source is closed at the end, also when it could not start."""
    single = one_picture(out)
    if single and count != 1:
        source.close()
        raise EdgeAdError(f"--out {out} names one picture, but --frames asks for {count}; give a folder for them, or "
                          f"--frames 1 to save one frame as {out.name}")
    if fmt not in FORMATS:
        source.close()
        raise EdgeAdError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    folder = out.parent if single else out
    if problem := _own_input(source, out, folder, single):
        source.close()
        raise EdgeAdError(f"--out {out}: {problem}; give another {'name' if single else 'folder'}")
    if isinstance(source, PictureSource):
        source.keep_only(defective=False, why="record saves pictures of good parts, to train on")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        source.close()
        raise EdgeAdError(f"{folder}: cannot create the folder ({os_reason(exc)})") from exc
    if not single:  # the parent of one picture is the user's folder, not ours to tidy
        remove_leftovers(folder)
    stop = stop or threading.Event()
    saved: list[Path] = []
    thumbnails = []
    last = -float("inf")
    # A folder's pictures come as fast as they are read, a followed folder's as the line puts them
    # there, each a part of its own (kept with the crop and flip `run` applies): the clock between
    # them says nothing of the parts.
    spaced = not isinstance(source, (PictureSource, FollowedPictures))
    with stop_on_signals(stop), tqdm(total=count, desc=label, unit="picture", position=position) as bar:
        try:
            for frame in settled_frames(source, stop):
                # Stream time for files; the arrival time for live sources, whose stream time starts
                # again when they reconnect.
                moment = frame.arrived if source.live else frame.timestamp
                if spaced and moment - last < interval_s - 1e-3:  # frame times are rounded to the nanosecond
                    continue
                last = moment
                if single:
                    path = out
                elif spaced:
                    (path,) = picture_paths(folder, source.shown, frame.captured, frame.index, (f".{fmt}",))
                else:
                    path = own_name_path(folder, frame.name, f".{fmt}")
                try:
                    ok, data = cv2.imencode(path.suffix, frame.image)
                except cv2.error:
                    ok = False
                if not ok:  # a colour frame as grey-only .pgm
                    raise EdgeAdError(f"{path}: OpenCV cannot write a frame of shape {frame.image.shape} as "
                                      f"{path.suffix}; give a .png or .jpg name")
                try:
                    write_atomic(path, data.tobytes())  # a power cut or a full disk leaves no half picture
                except OSError as exc:
                    raise EdgeAdError(f"{path}: cannot write ({os_reason(exc)}); the {len(saved)} pictures "
                                      "saved before it are kept") from exc
                saved.append(path)
                thumbnails.append(thumbnail(frame.image))
                bar.update()
                if len(saved) == count:
                    break
        finally:
            source.close()
        share = near_duplicates(np.stack(thumbnails)) if thumbnails else 0.0
        if share >= COPIES_SHARE:
            advice = " Record while parts pass, or with a longer --interval" if spaced else ""
            bar.write(f"{label}: {share:.0%} of the pictures after the first are near-copies of the one before (parts "
                      "at rest in view, a stopped line): they show fewer parts than pictures, and a model trained on "
                      f"them learns fewer.{advice}")
    return saved


def record_sources(
    sources: dict[str, Source], folder: Path, count: int, interval_s: float = 1.0, fmt: str = "png"
) -> dict[str, list[Path] | EdgeAdError]:
    """Record every source at once, each into `folder`/<source name> (as `record` does, `count`
    pictures each); per source, the paths written or the error that stopped it (the others go
    on). SIGINT / SIGTERM stop them all, keeping what they saved. Any other exception in a
    source's thread (memory run out, a fault of edge-ad's own) is raised here once every source
    has stopped, not left in the thread."""
    stop = threading.Event()
    outcome: dict[str, list[Path] | EdgeAdError] = {}
    faults: list[Exception] = []

    def one(name: str, source: Source, position: int) -> None:
        try:
            outcome[name] = record(source, folder / slug(name), count, interval_s, fmt, stop, name, position)
        except EdgeAdError as exc:
            outcome[name] = exc
        except OSError as exc:  # the source's own failure, which `run` would reconnect
            outcome[name] = EdgeAdError(f"{name}: {os_reason(exc)}")
        except Exception as exc:
            faults.append(exc)

    threads = [threading.Thread(target=one, args=(name, source, i), name=f"record {name}", daemon=True)
               for i, (name, source) in enumerate(sources.items())]
    with stop_on_signals(stop):
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # in short waits, so that a signal is handled at once
                thread.join(0.2)
    if faults:
        raise faults[0]
    return {name: outcome[name] for name in sources}
