"""`--output DIR/overlay_%i.jpg` or `--output DIR/`: the overlay of each frame of a video file or
image folder as a picture of its own, as jetson-utils writes an image sequence: run a bundle over
a folder of pictures and look at each one's heat map, at the picture's own size.

A numbered name takes the frame's number for `%i` (`%d`, `%04i`...); a folder takes the input
picture's own name (a video's frames: `00000012.jpg`). Cameras are refused: one picture a frame
fills a disk (`--snapshots` keeps alarm frames within a quota). The pictures are encoded and
written (synced, as every picture edge-ad writes) by a thread of their own, not in the scoring
loop; a file or folder waits for it when QUEUED pictures wait.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EdgeAdError
from .files import made_folder, remove_leftovers, write_picture
from .images import IMAGE_SUFFIXES
from .sinks import InOrder

log = logging.getLogger("edge_ad.picture_output")

QUEUED = 4  # pictures that wait to be written
FORGET_AT = 10_000  # names given, past which those whose pictures are gone are forgotten (_forget_gone)
NUMBER = re.compile(r"%(0?\d*)[di]")  # printf's integer directives, as jetson-utils takes them


def is_picture_output(uri: str) -> bool:
    """Whether `--output uri` asks for one picture per frame: a name with %i and an image suffix,
    or a folder (one that exists, or a path ending in /)."""
    if "://" in uri:
        return False
    path = Path(uri)
    return uri.endswith("/") or path.is_dir() or (
        path.suffix.lower() in IMAGE_SUFFIXES and len(NUMBER.findall(path.name)) == 1)


def picture_description(uri: str) -> str:
    return f"overlay pictures, one per frame: {uri}"


def picture_name_problem(uri: str) -> str | None:
    """What is wrong with a picture file given as --output without one %i (`overlay.jpg`), or None."""
    path = Path(uri)
    if "://" not in uri and path.suffix.lower() in IMAGE_SUFFIXES and not is_picture_output(uri):
        stem = NUMBER.sub("", path.stem).strip("_-") or "overlay"
        return (f"{uri}: a picture for each frame needs one %i in its name, which the frame's number takes "
                f"({stem}_%i{path.suffix}), or give a folder ({path.parent}/)")
    return None


class PictureOutput:
    """Writes each frame's overlay into its own picture file (never over the input pictures)."""

    def __init__(self, uri: str, inputs: list[Path], live: bool, followed: Callable[[Path], bool] | None = None):
        """`inputs`: the pictures the source reads (none for a video); `live`: a camera's;
        `followed`: whether a folder is one the source reads new pictures from (--follow)."""
        if live:
            raise EdgeAdError(f"--output {uri}: a picture for every frame of a live source fills the disk; give a "
                              "video output, or --snapshots for its alarm frames (with a quota)")
        self.uri = uri
        self.numbered = not (uri.endswith("/") or Path(uri).is_dir())
        self.folder = Path(uri).parent if self.numbered else Path(uri)
        self.description = picture_description(uri)
        if not self.numbered and any(p.parent.resolve() == self.folder.resolve() for p in inputs):
            raise EdgeAdError(f"--output {uri}: the input pictures are in this folder, and would be written over by "
                              "their overlays; give another folder")
        if followed is not None and followed(self.folder):
            raise EdgeAdError(f"--output {uri}: this is the folder --follow reads new pictures from, and each overlay "
                              "would be read as one; give another folder")
        made_folder(self.folder, "picture", f"--output {uri}")
        remove_leftovers(self.folder)
        self._inputs = {p.resolve() for p in inputs}
        self._named: dict[Path, None] = {}  # the folder's names given so far, in order
        self._forget_at = FORGET_AT
        self._writes = InOrder(f"pictures {uri}", QUEUED)

    def path_for(self, index: int, name: str) -> Path:
        """Where frame number `index`, named `name` by its source, goes."""
        if self.numbered:
            return self.folder / NUMBER.sub(lambda m: f"%{m.group(1)}d" % index, Path(self.uri).name)
        named = Path(name).name
        if named.lower().endswith(".pgm"):  # a grey picture's kind, and the overlay is in colour
            named = str(Path(named).with_suffix(".png"))
        path = self.folder / (named if Path(named).suffix.lower() in IMAGE_SUFFIXES else f"{index:08d}.jpg")
        if path in self._named:  # two folders' a.png, through a wildcard
            path = path.with_name(f"{path.stem}_{index}{path.suffix}")
        self._named[path] = None
        if len(self._named) >= self._forget_at:
            self._forget_gone()
        return path

    def _forget_gone(self) -> None:
        """Forgets the names whose pictures are gone (deleted by the plant), but for the last ones,
        not yet written. A --follow run names a picture per part for months: its names would
        fill the memory; a name forgotten can be given again, as it holds nothing to write over."""
        unwritten = set(list(self._named)[-(QUEUED + 2):])  # waiting, being written, and this one
        self._named = {path: None for path in self._named if path in unwritten or path.exists()}
        self._forget_at = max(FORGET_AT, 2 * len(self._named))

    def write(self, picture: np.ndarray, index: int, name: str) -> None:
        """Hands the picture to the writing thread; a write that failed (a full disk) is raised
        here, at the next picture."""
        path = self.path_for(index, name)
        if path.resolve() in self._inputs:
            raise EdgeAdError(f"--output {self.uri}: {path} is an input picture; give another folder")
        self._writes.call(write_picture, path, picture)

    def close(self) -> None:
        """The pictures handed on so far written; a last failure is logged."""
        try:
            self._writes.close()
        except (OSError, EdgeAdError) as exc:
            log.error("output %s: %s", self.uri, exc)
