"""`--input incoming/ --follow` (or `'incoming/*.jpg'`): score each picture put into a folder as
it arrives. A camera triggered by the part uploads one picture per part by FTP, or the line's
vision PC saves them to a share; the results go to the PLC, MQTT and the events as a camera's.

The folder is listed every POLL_S (less often where listing it takes long: LISTING_SHARE), not
watched with inotify: it is often a network share (SMB, NFS), where inotify hears nothing another
machine writes. A picture written over in place (a camera that uploads every part as
`image.jpg`) is a new one: while the folder holds at most OVERWRITES_UP_TO pictures, the size
and time of those read before (or there at the start) are looked at again at each listing; a
larger folder, an archive of a picture per part, costs a listing and looks at its new names
only (a stat of 10,000 pictures took 22 ms, as much again as three listings, on a 2-core EPYC).
A new picture is tried as soon as it is seen, and read if it reads whole (every format read has
an end the reader checks, images.read_image); one still being written is tried again once its
size and time stood still between two listings, and one unchanged for SETTLE_S that still does
not read is reported and passed over, as a folder's unreadable pictures are (read if it changes
later).

Pictures already there when the run starts are left alone: their parts are gone, and their
results would reach the PLC as those of the part now at the camera. A folder that cannot be
listed (a share gone) is tried again with the back-off of a camera; a mount point with nothing
mounted on it now (a share unmounted, its empty folder left) is waited for as well: were its
emptiness read, every picture of the share would seem new when it comes back. For the same
reason, the pictures of a share mounted on the folder after the start (a service started before
the network, at boot) are taken as there at the start."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import ImageError, SourceError, os_reason
from .images import IMAGE_SUFFIXES, pattern_folder, read_image
from .pipelines import SourceOptions, flip_of, local_path, opencv_input
from .sources import BACKOFF_S, Backoff, Frame, picture_frame

log = logging.getLogger("edge_ad.followed_pictures")

POLL_S = 0.2  # between listings of the folder, at least
# Of the time, at most, spent listing the folder and comparing the listing with the last: a wildcard
# over a folder a day lists every day's pictures (a year of 300 a day: 160 ms a listing and 45 ms
# to compare on a 2-core EPYC, half a core listed every 0.2 s), so a tree that takes longer is listed
# less often (`listing_interval`), and the log says so once.
LISTING_SHARE = 0.25
OVERWRITES_UP_TO = 1000  # pictures in the folder up to which those read before are looked at again
SETTLE_S = 2.0  # a new picture unchanged this long that does not read is unreadable, not half written


def _folder_matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether a folder's path (its parts) is one a wildcard's folders (theirs) match, `**` as
    glob's recursive one: any number of folders, or none."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_folder_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _folder_matches(parts[1:], pattern[1:])


def listing_interval(cost_s: float) -> float:
    """Seconds to wait before the next listing, after one that took `cost_s` to list and compare:
    POLL_S, or long enough that listing takes LISTING_SHARE of the time at most."""
    return max(POLL_S, cost_s * (1 - LISTING_SHARE) / LISTING_SHARE)


def check_followable(uri: str, options: SourceOptions) -> None:
    """Raise SourceError when `--follow` is given for what cannot be followed."""
    if not options.follow:
        return
    kind = opencv_input(uri) if uri else None
    if kind is None and uri and ("://" not in uri or uri.startswith("file://")) and not local_path(uri).exists():
        raise SourceError(f"{uri}: no such folder to follow")
    if kind not in ("image folder", "picture pattern"):
        raise SourceError(f"{uri or '--pipeline'}: --follow reads the new pictures of an image folder or of a wildcard "
                          "('incoming/*.jpg'); cameras and streams are read as they come without it")
    if options.loop:
        raise SourceError(f"{uri}: --follow reads each new picture once; it cannot be played again (--input-loop)")


@dataclass
class _Arrival:
    """A new picture not read yet."""

    stamp: tuple[int, int]  # its size and modification time (ns) when last looked at
    since: float  # monotonic time it has had this stamp
    seen: float  # wall-clock time it was first listed: the frame's `captured`
    listed: float  # the same moment on the monotonic clock: the frame's `arrived`
    tried: bool = False  # read (and found wanting) at this stamp
    error: str = ""  # why it did not read, last time it was tried
    said: bool = False  # reported as unreadable


class FollowedPictures:
    """The pictures put into a folder (or matching a wildcard) after the start, in the order they
    arrive, each once; a source that never ends (see the module's docstring)."""

    live = False  # every picture is a part: none is dropped for a newer one
    dropped = 0
    away = False  # its folder cannot be listed (a share gone), and has not been since
    fps = None

    def __init__(self, path: Path, flip: str = "none", crop: tuple[int, int, int, int] | None = None):
        """`path`: a folder, or a wildcard (pipelines.opencv_input) whose folder exists."""
        self.uri = self.shown = str(path)
        self.crop, self.turn = crop, flip_of(str(path), flip).turn
        if path.is_dir():
            self.folder, self.pattern = path, None
        else:
            self.pattern = os.path.expanduser(str(path))  # quoted ~
            self.folder = pattern_folder(self.pattern)  # 'cams/*/part_*.jpg' follows cams
        self._mount_point = os.path.ismount(self.folder)  # a share's: its own folder when unmounted is empty
        try:
            present = self._pictures()
            with os.scandir(self.folder) as entries:  # not counted: a share may hold years of them
                subfolders = [] if self.pattern else sorted(
                    entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))
        except OSError as exc:
            raise SourceError(f"{path}: cannot follow {self.folder} ({os_reason(exc)})") from exc
        self.reconnects = 0
        self.skipped: list[str] = []
        self._done = self._stamps(present)  # there at the start, or read, at the size and time they had
        self._waiting: dict[str, _Arrival] = {}
        self._many = len(present) > OVERWRITES_UP_TO  # too many pictures to look at those read again
        flipped = f", flipped {flip}" if flip != "none" else ""
        there = "none there now" if not present else f"the {len(present)} there now left alone"
        if self._many:
            there += f"; over {OVERWRITES_UP_TO}: new names only, not a picture written over in place"
        if subfolders:
            listed = ", ".join(subfolders[:3]) + (" ..." if len(subfolders) > 3 else "")
            there += (f"; not those put into its subfolders ({listed}): '{self.folder / '**' / '*'}' follows them "
                      "too")
        self.description = f"new pictures in {path} as they arrive{flipped} ({there})"

    def watches(self, folder: Path) -> bool:
        """Whether pictures written into `folder` would be read as new ones (an output there would
        read its own overlays)."""
        if self.pattern is None:
            return folder.resolve() == self.folder.resolve()
        return _folder_matches(Path(os.path.abspath(folder)).parts,
                               Path(os.path.abspath(Path(self.pattern).parent)).parts)

    def _listing(self) -> set[str]:
        """The folder's pictures now; OSError when it cannot be listed, or is a mount point with
        nothing mounted on it now. One a file system was mounted on since the start (a share the
        service started before, at boot) has its pictures taken as those there at the start."""
        mounted = os.path.ismount(self.folder)
        if mounted == self._mount_point:
            return self._pictures()
        if not mounted:
            raise OSError("nothing is mounted there now (something was at the start): a network share gone?")
        present = self._pictures()
        self._mount_point, self._done = True, self._stamps(present)
        log.warning("%s: a file system was mounted on %s since the start: its %d pictures are left alone, as those "
                    "there at the start", self.uri, self.folder, len(present))
        return present

    def _pictures(self) -> set[str]:
        """The paths of the pictures in the folder (or matching the wildcard). Strings, not Paths:
        a folder of 10,000 pictures took 90 ms a listing and its sums as Paths, 10 ms as strings (a
        2-core EPYC)."""
        if self.pattern is None:
            with os.scandir(self.folder) as entries:
                return {entry.path for entry in entries
                        if not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_SUFFIXES)
                        and entry.is_file()}
        self.folder.stat()  # glob says nothing of a folder gone: it finds no picture, as in an empty one
        # * and ** skip .names; ** is any number of folders, as for a played wildcard
        return {path for path in glob.glob(self.pattern, recursive=True) if path.lower().endswith(IMAGE_SUFFIXES)}

    @staticmethod
    def _stamps(paths: set[str]) -> dict[str, tuple[int, int] | None]:
        """Each picture's size and modification time (ns); None for one gone or unreadable since."""
        stamps = {}
        for path in paths:
            try:
                stat = os.stat(path)
                stamps[path] = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                stamps[path] = None
        return stamps

    def _written_over(self, present: set[str]) -> set[str]:
        """The pictures read before (or there at the start) whose size or time changed since: written
        over in place. Looked at while the folder holds OVERWRITES_UP_TO pictures at most."""
        many = len(present) > OVERWRITES_UP_TO
        if many and not self._many:
            log.warning("%s: over %d pictures in %s: only new names are read now, not a picture written over in "
                        "place; have old pictures moved away", self.uri, OVERWRITES_UP_TO, self.folder)
        elif self._many and not many:  # what was written over meanwhile is no part at the camera now
            log.warning("%s: %d pictures in %s: pictures written over in place are read again", self.uri,
                        len(present), self.folder)
            self._done = self._stamps(set(self._done))
        self._many = many
        if many:
            return set()
        now = self._stamps(set(self._done))
        return {path for path, stamp in now.items() if stamp is not None and stamp != self._done[path]}

    def _arrivals(self, present: set[str], now: float) -> list[tuple[str, _Arrival]]:
        """The new pictures to try now, oldest first: those first seen (a picture renamed into
        place is whole at once), and those that stopped changing since their last try (one still
        being written is not read again at each listing: over a share, each read fetches all of
        it). A picture written over in place is a new one."""
        self._done = {path: stamp for path, stamp in self._done.items() if path in present}  # gone: forgotten
        for path in self._written_over(present):
            del self._done[path]
        for path in list(self._waiting):
            if path not in present:
                del self._waiting[path]
        ready = []
        for path in present - self._done.keys():
            try:
                stat = os.stat(path)
            except OSError:  # gone between the listing and now (moved on by the uploader)
                continue
            stamp = (stat.st_size, stat.st_mtime_ns)
            arrival = self._waiting.get(path)
            if arrival is None:
                arrival = self._waiting[path] = _Arrival(stamp, now, time.time(), now)
            elif arrival.stamp != stamp:
                arrival.stamp, arrival.since, arrival.tried = stamp, now, False
                continue
            if not arrival.tried:
                ready.append((stat.st_mtime_ns, path, arrival))
        return [(path, arrival) for _, path, arrival in sorted(ready, key=lambda item: item[:2])]

    def _read(self, path: str, arrival: _Arrival) -> np.ndarray | None:
        arrival.tried = True
        try:
            rgb = read_image(path)
        except ImageError as exc:
            arrival.error = str(exc)  # half written, most likely: tried again once it stops changing
            return None
        del self._waiting[path]
        # As it was once read, not as listed: a writer that finished between the two (under load,
        # one listed while it had only opened the file) wrote no second picture; a change after is one.
        self._done[path] = self._stamps({path})[path] or arrival.stamp
        if arrival.said:
            log.info("%s: %s reads now", self.uri, os.path.basename(path))
        return picture_frame(rgb, self.turn, self.crop, path)

    def _report_unreadable(self, now: float) -> None:
        """Those unchanged for SETTLE_S since they did not read, once each."""
        for path, arrival in self._waiting.items():
            if not arrival.said and now - arrival.since >= SETTLE_S:
                arrival.said = True
                log.warning("%s (unchanged for %.0f s: passed over)", arrival.error, SETTLE_S)
                self.skipped.append(arrival.error)  # after the line: whoever sees it listed may read the log

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        stop = stop or threading.Event()
        index, backoff = 0, Backoff()
        failing: str | None = None
        said_slow = False
        while not stop.is_set():
            began = time.monotonic()
            try:
                present = self._listing()
            except OSError as exc:
                problem = f"cannot list {self.folder} ({os_reason(exc)})"
                if problem != failing:
                    log.warning("%s: %s; trying again, every %.0f s at most", self.uri, problem, BACKOFF_S[1])
                    failing = problem
                self.reconnects += 1
                self.away = True
                backoff.sleep(stop)
                continue
            if failing is not None:
                log.warning("%s: %s can be listed again", self.uri, self.folder)
                failing, self.away = None, False
                backoff.reset()
            now = time.monotonic()
            arrivals = self._arrivals(present, now)
            cost = time.monotonic() - began  # reading and scoring the pictures not counted
            wait = listing_interval(cost)
            if wait > POLL_S and not said_slow:
                said_slow = True
                log.warning("%s: listing its %d pictures and comparing takes %.0f ms: listed every %.1f s, not every "
                            "%.1f s, to spend at most a quarter of a core on it, and a new picture waits that much "
                            "longer; have old pictures moved out of %s now and then", self.uri, len(present),
                            cost * 1000, wait, POLL_S, self.folder)
            for path, arrival in arrivals:
                if stop.is_set():
                    return
                image = self._read(path, arrival)
                if image is not None:
                    yield Frame(index, time.time(), image, os.path.relpath(path, self.folder), captured=arrival.seen,
                                arrived=arrival.listed)
                    index += 1
            self._report_unreadable(now)
            stop.wait(wait)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def close(self) -> None:
        """Nothing to release; present so every source can be closed the same way."""


def followed_folder(source: object) -> Callable[[Path], bool] | None:
    """For an output: whether a source reads the pictures written into a folder (None: it follows none)."""
    return source.watches if isinstance(source, FollowedPictures) else None


def follow(uri: str, options: SourceOptions) -> FollowedPictures:
    check_followable(uri, options)
    return FollowedPictures(local_path(uri), options.flip, options.crop)
