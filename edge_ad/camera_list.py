"""The cameras this device itself sees, for `edge-ad cameras`, each with the --input that opens it:
USB and CSI cameras (V4L2: /sys/class/video4linux and udev's /dev/v4l/by-id), and the GigE Vision
and USB3 Vision cameras Aravis's `arv-tool-0.8` lists (the IP cameras are edge_ad.onvif's)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

from .errors import EdgeAdError, os_reason, printable
from .onvif import CODECS
from .pipelines import GENICAM_FORMATS, V4L2_CAPS
from .sinks import slug

ARV_TOOL = "arv-tool-0.8"  # apt-get install aravis-tools-cli
LISTED = re.compile(r"(\S+) \((.*)\)")  # "Basler-acA1920-40gc-23456789 (192.168.10.20)"
# `arv-tool-0.8 -n CAMERA features`: the PixelFormat enumeration, then its entries, one a line.
PIXEL_FORMAT = re.compile(r"\s*Enumeration\s*:.*'PixelFormat'")
ENUM_ENTRY = re.compile(r"\s*EnumEntry\s*:\s*'(\w+)'(.*)")
# A colour camera's formats, the first it offers named: its own demosaicing first, then edge-ad's.
COLOUR_FORMATS = ("RGB8", "RGB8Packed", "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8")
# What a USB camera sends, as v4l2src's caps name it, by the --input-codec that reads it.
V4L2_CODECS = {"video/x-raw": "raw", **{caps: codec for codec, caps in V4L2_CAPS.items()}}


def genicam_cameras(timeout_s: float) -> list[tuple[str, str, dict]] | None:
    """(the --input that opens it, what it is, no source options) of each camera Aravis finds, or
    None when arv-tool-0.8 is not installed."""
    tool = shutil.which(ARV_TOOL)
    if tool is None:
        return None
    try:
        listed = subprocess.run([tool], capture_output=True, text=True, timeout=timeout_s + 10).stdout
    except subprocess.TimeoutExpired:
        return []
    return [(f"genicam://{match[1]}", f"GigE Vision or USB3 Vision camera at {match[2]}"
             f"{_colour(match[1], _pixel_formats(tool, match[1], timeout_s))}", {})
            for match in map(LISTED.fullmatch, listed.splitlines()) if match]


def _pixel_formats(tool: str, camera: str, timeout_s: float) -> list[str]:
    """The PixelFormat values `camera` offers now; none where it does not say (held by another
    program, or gone)."""
    try:
        listed = subprocess.run([tool, "-n", camera, "features"], capture_output=True, text=True,
                                timeout=timeout_s + 10).stdout
    except subprocess.TimeoutExpired:
        return []
    formats, inside = [], False
    for line in listed.splitlines():
        entry = ENUM_ENTRY.fullmatch(line)
        if inside and entry is None:
            break
        if inside and "Not available" not in entry[2]:
            formats.append(entry[1])
        inside = inside or PIXEL_FORMAT.match(line) is not None
    return formats


def _colour(camera: str, formats: list[str]) -> str:
    """What to add to a GigE or USB3 camera's line where it is a colour camera that also sends grey
    frames: aravissrc then picks grey (Mono8), and the colour is lost unless the URI asks for it."""
    colour = next((name for name in COLOUR_FORMATS if name in formats), None)
    if colour is None or "Mono8" not in formats:
        return ""
    codec = " with --input-codec bayer" if GENICAM_FORMATS[colour][0] == "bayer" else ""
    return f", read in grey as listed; in colour as genicam://{camera}?feature=PixelFormat={colour}{codec}"


def v4l2_cameras(
    root: Path = Path("/"), formats: Callable[[str], tuple[str, dict]] | None = None,
) -> list[tuple[str, str, dict]]:
    """(the --input that opens it, what it is, the source options to read it with) of each V4L2
    camera: a Jetson's CSI cameras (nodes named "vi-output, SENSOR") as csi://0, 1... in their
    order, and each USB camera by its udev name for good (/dev/v4l/by-id/...; /dev/videoN without
    one), with what `formats` (by default usb_formats) says of it and advises. A USB camera has a
    second node, for metadata, which captures nothing (index 1): left out."""
    formats = formats or usb_formats
    stable = {}  # "video0" -> its /dev/v4l/by-id/ link
    for link in sorted((root / "dev/v4l/by-id").glob("*")):
        stable.setdefault(Path(os.path.realpath(link)).name, f"/{link.relative_to(root)}")
    nodes = sorted((root / "sys/class/video4linux").glob("video*"),
                   key=lambda node: int(node.name[5:]) if node.name[5:].isdigit() else 1 << 30)
    listed, csi = [], 0
    for node in nodes:
        name = _read(node / "name")
        if name.startswith("vi-output"):
            listed.append((f"csi://{csi}", f"CSI camera {name.partition(',')[2].strip() or name}", {}))
            csi += 1
        elif _read(node / "index") in ("", "0"):
            device = stable.get(node.name, f"/dev/{node.name}")
            said, options = formats(device)
            listed.append((device, f"USB camera {name or node.name}{said}", options))
    return listed


def usb_formats(device: str) -> tuple[str, dict]:
    """What to add to a USB camera's line, each --input-codec it sends, and the options that read
    it best (caps_formats); or why they could not be read, or nothing where GStreamer is not
    installed, and no options. By default `run` reads a USB camera raw, whose largest frames
    many cameras send at a few frames a second (v4l2src then takes a smaller frame, or that
    rate, by GStreamer's version), and their MJPEG at 30."""
    from .sources import SourceError, bus_error, load_gst, with_hint

    try:
        Gst = load_gst()
    except SourceError:
        return "", {}
    # Names given, not left out: its errors name the source so, and PyGObject 3.42 (JetPack 6's) may
    # not take a nullable argument left out.
    pipeline, source = Gst.Pipeline.new("usb-formats"), Gst.ElementFactory.make("v4l2src", "v4l2src")
    if source is None:  # gstreamer1.0-plugins-good, which has it, not installed: doctor says so
        return "", {}
    source.set_property("device", device)
    pipeline.add(source)
    try:
        if pipeline.set_state(Gst.State.READY) == Gst.StateChangeReturn.FAILURE:  # READY opens the device
            error = bus_error(pipeline) or "the device did not open"
            return f"; its formats not read: {with_hint(f'v4l2src device={device}', error)}", {}
        return caps_formats(source.get_static_pad("src").query_caps(None))
    finally:
        pipeline.set_state(Gst.State.NULL)


def caps_formats(caps) -> tuple[str, dict]:
    """`caps` of a USB camera (v4l2src's) said as its largest frame and the highest rate at that
    size for each --input-codec it sends, and the source options (codec, width, height) that read
    another codec's largest frames where they are larger or faster than raw's: said too, and none
    otherwise. (Without the size, v4l2src may pick a smaller frame of a higher rate.)"""
    largest: dict[str, tuple[int, int, float]] = {}  # codec: (width, height, fps)
    for i in range(caps.get_size()):
        structure = caps.get_structure(i).copy()
        codec = V4L2_CODECS.get(structure.get_name())
        if codec is None:
            continue
        for side in ("width", "height"):  # a range becomes its largest
            structure.fixate_field_nearest_int(side, 1 << 30)
        structure.fixate_field_nearest_fraction("framerate", 1 << 30, 1)
        (has_width, width), (has_height, height) = structure.get_int("width"), structure.get_int("height")
        has_rate, numerator, denominator = structure.get_fraction("framerate")
        fps = numerator / denominator if has_rate and denominator else 0.0
        if has_width and has_height and (width * height, fps) > _size_and_rate(largest.get(codec)):
            largest[codec] = (width, height, fps)
    if not largest:
        return "", {}
    said = ", ".join(f"{codec} {width}x{height}{_at(fps)}" for codec, (width, height, fps) in largest.items())
    raw = _size_and_rate(largest.get("raw"))
    faster = [codec for codec in largest if codec != "raw" and _size_and_rate(largest[codec]) > raw]
    if not faster:
        return f": {said} (each its largest frame)", {}
    width, height, fps = largest[faster[0]]
    return (f": {said} (each its largest frame); --input-codec {faster[0]} --input-width {width} --input-height "
            f"{height}{_at(fps, 'for')}", {"codec": faster[0], "width": width, "height": height})


def _at(fps: float, word: str = "at") -> str:
    """A frame's rate as said after its size: nothing where the caps give none (0)."""
    return f" {word} {fps:g} fps" if fps else ""


def _size_and_rate(frame: tuple[int, int, float] | None) -> tuple[int, float]:
    return (0, 0.0) if frame is None else (frame[0] * frame[1], frame[2])


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def sources_file(path: Path, onvif: list, attached: list[tuple[str, str, dict]], user: str | None,
                 password: str | None, certificate: str | None = None) -> int:
    """Write `path`, a --sources file of the cameras found (never over a file that is there):
    each ONVIF camera (edge_ad.onvif.Camera) by its first stream with a URL, its main stream on
    the makes known, with the login in the URL (and `certificate`, the cameras' own, for an
    rtsps:// one), and each camera of `attached` ((--input, what it is, its source options)); a
    camera whose streams could not be read as a comment that says why. Readable by its owner only
    when it holds a password. Returns the number of sources written. What a camera says of itself
    goes into comments as `printable` shows it: a name with a line break in it would end its
    comment and write YAML of the camera's choosing (a source of its own) into the file."""
    lines = ["# Written by `edge-ad cameras --sources`: the cameras found, for `edge-ad run --sources FILE`.",
             "# Give each its bundle here (bundle: PATH), or one --bundle to run for all; name them as the",
             "# line knows them (a name is an MQTT topic and an OPC UA node id).", "sources:"]
    count = 0

    def source(what: str, entry: dict) -> None:
        nonlocal count
        lines.append(f"  # {printable(what)}")
        lines.extend("  " + line for line in yaml.safe_dump([entry], sort_keys=False, allow_unicode=True).splitlines())
        count += 1

    for camera in onvif:
        named = " ".join(filter(None, [camera.address, camera.name, camera.hardware]))
        stream = next((s for s in camera.streams if s.uri), None)
        if stream is None:
            lines.append(printable(f"  # {named}: no stream URL ({camera.problem or 'none of its streams has one'})"))
            continue
        entry = {"name": f"camera-{camera.address.replace('.', '-')}", "input": _with_login(stream.uri, user, password)}
        codec = CODECS.get(stream.encoding.upper())
        if codec and codec != "h264":
            entry["codec"] = codec
        if certificate and stream.uri.startswith("rtsps://"):
            entry["certificate"] = certificate
        source(f"{named}: {stream.name}, {stream.encoding} {stream.width}x{stream.height}", entry)
    for uri, what, options in attached:
        source(what, {"name": slug(uri.removeprefix("/dev/v4l/by-id/")), "input": uri, **options})
    if not count:
        raise EdgeAdError(f"--sources {path}: not written: no camera's stream URL was read (see above)")
    secret = password is not None and user is not None
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    except FileExistsError as exc:
        raise EdgeAdError(f"--sources {path}: is there already; give a new file (a sources file may have been "
                          "edited by hand, so it is not written over)") from exc
    except OSError as exc:
        raise EdgeAdError(f"--sources {path}: cannot write it ({os_reason(exc)})") from exc
    with os.fdopen(handle, "w") as out:
        out.write("\n".join(lines) + "\n")
    return count


def _with_login(uri: str, user: str | None, password: str | None) -> str:
    """A camera's stream URL with the login in it (percent-encoded, which --input takes), unless it
    has one."""
    parts = urlsplit(uri)
    if user is None or parts.username is not None:
        return uri
    login = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.netloc}"))
