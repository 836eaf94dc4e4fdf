"""The sources of a run: one `Stream` per camera or file, from the command line or a YAML file."""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .bundle import read_yaml
from .errors import EdgeAdError, without_passwords
from .pipelines import FLIPS, MAX_CAMERA_SIDE, SourceOptions, camera_number_hint, local_path, login_escaped
from .variants import parse_variants, split_spec


@dataclass
class Stream:
    """One source of a run and its own video output."""

    input: str
    name: str = ""
    output: str | None = None
    options: SourceOptions = field(default_factory=SourceOptions)
    pipeline: str | None = None  # the user's own GStreamer pipeline ending in appsink name=sink
    mask: str | None = None  # inspection mask image (edge_ad.masks): the part of the frame scored
    bundle: tuple[str, ...] | None = None  # its own bundle (BUNDLE, or NAME=BUNDLE per variant); None: the run's
    alarm_frames: int | None = None  # anomalous frames in a row before an alarm (RunConfig); None: the run's
    calibration: str | None = None  # folder of its own site calibration of a shared bundle; None: the bundle's

    def __post_init__(self) -> None:
        self.input = login_escaped(self.input) if self.input else self.input  # its name shows no part of a password
        if self.output and self.output.startswith("file://"):  # as jetson-utils takes it, and as inputs are
            self.output = str(local_path(self.output))
        self.name = self.name or without_passwords(self.input or "") or "pipeline"
        if isinstance(self.bundle, str):
            self.bundle = (self.bundle,)


STREAM_KEYS = {"input", "name", "output", "pipeline", "mask", "bundle", "alarm_frames", "calibration"}
OPTION_KEYS = {"width", "height", "framerate", "codec", "latency_ms", "timeout_s", "pattern", "transport", "flip",
               "crop", "realtime", "loop", "follow", "certificate"}


def bundle_of(stream: Stream, default: Sequence[str] = ()) -> tuple[str, ...]:
    """The bundle that scores `stream`: its own (`bundle:` in --sources), else `default` (--bundle)."""
    specs = stream.bundle or tuple(default)
    if not specs:
        raise EdgeAdError(f"{stream.name}: no bundle to score it with: give --bundle, or 'bundle:' for this source "
                          "in --sources")
    return specs


def calibration_folder(stream: Stream, variant: str | None = None) -> Path | None:
    """Where `stream`'s own site calibration of its bundle is (`calibration:` in --sources; one
    folder per product variant in it, `variant` None for a lone bundle); None when it has none."""
    if stream.calibration is None:
        return None
    return Path(stream.calibration) if variant is None else Path(stream.calibration) / variant


def streams_from_yaml(path: Path, defaults: SourceOptions, default_mask: str | None = None) -> list[Stream]:
    """Streams from a YAML file: `sources:` a list of mappings with `input` (or `pipeline`) and
    optional `name`, `output`, `mask`, `bundle` (a path, or a list of NAME=PATH for one bundle per
    product variant), `calibration` (a folder for this camera's own site calibration of its
    bundle), `alarm_frames` and source options (width, height, framerate, codec, latency_ms,
    timeout_s, pattern, transport, flip, crop, realtime, loop, follow, certificate); what is left out, or left
    empty (`latency_ms:`), takes the command line's values. Relative paths in the file are from its folder
    (_from_folder)."""
    data = read_yaml(path)
    entries = data.get("sources")
    if not isinstance(entries, list) or not entries:
        raise EdgeAdError(f"{path}: expected 'sources:' with a list of sources")
    streams = []
    for number, entry in enumerate(entries, 1):
        where = f"{path}: source {number}"
        if not isinstance(entry, dict):
            raise EdgeAdError(f"{where}: expected a mapping with 'input'")
        unknown = set(entry) - STREAM_KEYS - OPTION_KEYS
        if unknown:
            raise EdgeAdError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(STREAM_KEYS | OPTION_KEYS)})")
        if entry.get("input") is not None and not isinstance(entry["input"], str):
            raise EdgeAdError(f"{where}: 'input' must be a URI, file or folder, not {entry['input']!r}"
                              f"{camera_number_hint(entry['input'])}")
        if not entry.get("input") and not entry.get("pipeline"):
            raise EdgeAdError(f"{where}: needs 'input' (a URI, file or folder) or 'pipeline'")
        _refuse_control_characters(entry, where)
        for key in ("realtime", "follow"):
            if entry.get(key) is not None and not isinstance(entry[key], bool):
                raise EdgeAdError(f"{where}: '{key}' must be true or false, not {entry[key]!r}")
        for key, what in (("codec", "a codec's name, as h264"), ("pattern", "a test pattern's name, as ball"),
                          ("transport", "tcp or udp"), ("flip", f"one of {', '.join(FLIPS)}")):
            if entry.get(key) is not None and not isinstance(entry[key], str):  # codec: 264
                raise EdgeAdError(f"{where}: '{key}' must be {what}, not {entry[key]!r}")
        for key, what in (("mask", "an image file name"), ("certificate", "the file of the camera's certificate"),
                          ("output", "a video file, a folder or a URI"),
                          ("pipeline", "a GStreamer pipeline ending in 'appsink name=sink'")):
            value = entry.get(key, "")
            if value is None and key in ("output", "pipeline", "certificate"):  # left empty (`output:`): as left out
                continue
            if not isinstance(value, str):
                raise EdgeAdError(f"{where}: '{key}' must be {what}, not {value!r}")
        if isinstance(entry.get("name"), (list, dict)):  # a number names its camera too (name: 5)
            raise EdgeAdError(f"{where}: 'name' must be a name for the source, not {entry['name']!r}")
        if "calibration" in entry and not (isinstance(entry["calibration"], str) and entry["calibration"]):
            raise EdgeAdError(f"{where}: 'calibration' must be a folder, not {entry['calibration']!r}")
        alarm_frames = entry.get("alarm_frames")
        if alarm_frames is not None and (type(alarm_frames) is not int or alarm_frames < 1):
            raise EdgeAdError(f"{where}: 'alarm_frames' must be a whole number, 1 or more, not {alarm_frames!r}")
        _check_numbers(entry, where)
        folder, written = path.parent, str(entry.get("input") or "")
        options = replace(defaults, **{k: entry[k] for k in OPTION_KEYS & set(entry) if entry[k] is not None})
        if entry.get("certificate"):
            options.certificate = _from_folder(entry["certificate"], folder)
        mask = _from_folder(entry["mask"], folder) if "mask" in entry else default_mask
        streams.append(
            Stream(_from_folder(written, folder), str(entry.get("name") or written),
                   _from_folder(entry.get("output"), folder), options, entry.get("pipeline"), mask,
                   _bundle(entry.get("bundle"), where, folder), alarm_frames,
                   _from_folder(entry.get("calibration"), folder))
        )
    return streams


def _refuse_control_characters(entry: dict, where: str) -> None:
    """Refuse text a YAML escape can hold and nothing downstream takes: a NUL (a path with one
    ended the run with a traceback, as did an unpaired surrogate in a name given to --on-anomaly),
    a line break or another control character (a name with one forged lines of the log). A
    pipeline may span lines (a YAML block)."""
    for key, value in entry.items():
        spaces = "\t\n\r" if key == "pipeline" else ""
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and any(unicodedata.category(c) in ("Cc", "Cs") and c not in spaces for c in text):
                raise EdgeAdError(f"{where}: '{key}' holds a control character or a broken one "
                                  f"({without_passwords(repr(text))}); a stray escape (\\0, \\n, \\ud800) in the "
                                  "file?")


def _check_numbers(entry: dict, where: str) -> None:
    """Refuse a source's numbers that GStreamer would take wrong, as the command line refuses
    them: a latency of -5 is read as 50 days, a height of 2.5 as frames 2 pixels high."""
    for key, least in (("width", 1), ("height", 1), ("framerate", 1), ("latency_ms", 0)):
        value = entry.get(key)
        if value is not None and (type(value) is not int or value < least):
            raise EdgeAdError(f"{where}: '{key}' must be a whole number, {least} or more, not {value!r}")
    for key in ("width", "height"):
        if (entry.get(key) or 0) > MAX_CAMERA_SIDE:
            raise EdgeAdError(f"{where}: '{key}' must be {MAX_CAMERA_SIDE} pixels or fewer (a line-scan camera's line "
                              f"is up to 16384), not {entry[key]}")
    timeout = entry.get("timeout_s")
    if timeout is not None and (type(timeout) not in (int, float) or not 0 <= timeout < math.inf):
        raise EdgeAdError(f"{where}: 'timeout_s' must be a number of seconds, 0 or more (0: never), not {timeout!r}")


def _from_folder(value: str | None, folder: Path) -> str | None:
    """A path written in a --sources file, taken from the file's folder: the service, `calibrate`,
    `record` and `doctor` read one file from wherever they run, and must find (and write) the same
    bundles, masks, calibrations and clips. URIs and absolute paths are kept as written (the
    source's name too, when it has none of its own); `~` is the home folder of the user the run
    runs as, as a shell reads it (it was taken as a folder named ~ beside the file). A trailing /
    stays: `output: overlays/` is a folder of pictures (edge_ad.picture_output)."""
    if not value or "://" in value or Path(value).is_absolute():
        return value
    home = os.path.expanduser(value)  # unchanged for a user who has no home here
    return home if home != value else str(folder / value) + ("/" if value.endswith("/") else "")


def _bundle(value: object, where: str, folder: Path) -> tuple[str, ...] | None:
    """A source's `bundle:`: a path, or a list of NAME=PATH (one bundle per product variant)."""
    if value is None:
        return None
    specs = [value] if isinstance(value, str) else value
    if not isinstance(specs, list) or not specs or not all(isinstance(s, str) and s for s in specs):
        raise EdgeAdError(f"{where}: 'bundle' must be a bundle path or a list of NAME=PATH, not {value!r}")
    try:
        parse_variants(specs)
    except EdgeAdError as exc:
        raise EdgeAdError(f"{where}: {exc}") from None
    named = [split_spec(spec) for spec in specs]
    return tuple(_from_folder(path, folder) if name is None else f"{name}={_from_folder(path, folder)}"
                 for name, path in named)
