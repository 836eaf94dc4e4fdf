"""GStreamer pipeline descriptions for source and output URIs, as jetson-utils names them.

On a Jetson the pipelines use the NVMM elements (nvarguscamerasrc, nvv4l2decoder, nvvidconv,
nvv4l2h264enc); elsewhere the generic ones (v4l2src, avdec_h264, videoconvert, x264enc). The
Orin Nano has no hardware video encoder: its outputs encode with x264enc (its target's
gstreamer.encoder).
Sources end in `appsink name=sink` delivering BGR; outputs start with `appsrc name=src` taking BGR.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, quote, unquote

import numpy as np

from .device import detect, is_jetson, own_target
from .errors import HOST, SourceError, parsed_uri, uri_port
from .images import IMAGE_SUFFIXES, MIN_FRAME_SIDE

# A plain MP4 has its index written at the end, so a run that is killed (a power cut, the
# service's watchdog, the OOM killer) would leave a file that nothing plays. A fragmented one is
# playable up to its last fragment; Matroska is playable as far as it was written. The filesink
# writes unbuffered, else up to 64 KiB (seconds of a still scene) would die with the process.
MP4_FRAGMENT_MS = 1000
VIDEO_CONTAINERS = {".mp4": f"mp4mux fragment-duration={MP4_FRAGMENT_MS}", ".mkv": "matroskamux"}
BGR_SINK = "videoconvert ! video/x-raw,format=BGR ! appsink name=sink"
# Each codec's element that takes its frames out of RTP packets, and its name in their caps.
RTP_DEPAY = {"h264": "rtph264depay", "h265": "rtph265depay", "mjpeg": "rtpjpegdepay"}
RTP_ENCODING = {"h264": "H264", "h265": "H265", "mjpeg": "JPEG"}
V4L2_CAPS = {"mjpeg": "image/jpeg", "h264": "video/x-h264"}  # what a USB camera sends in each
# rtspsrc's and rtpjitterbuffer's latency is a guint of milliseconds: a larger number reached
# them wrapped round (99999999999 as 1215752191, about 14 days).
LATENCY_MAX_MS = 2**32 - 1
# --input-width and --input-height (and width:, height: in --sources; train's --input-size too):
# four times a line-scan camera's line of up to 16,384 pixels; 99999999999 reached GStreamer as a
# caps field it cannot parse (`could not link videotestsrc0 to videoconvert0`).
MAX_CAMERA_SIDE = 65536
MAX_TEST_FPS = 1000  # test://'s fps: above any camera's; 0 made one frame, then a reconnection
# videotestsrc's ball pattern (number 18) in frames 10 pixels wide or fewer corrupts the process's
# memory, which aborts (GStreamer 1.22: "free(): invalid pointer"); from 11 on it ran 5,000 frames.
BALL_MIN_WIDTH = 16
MAX_BITRATE_KBPS = 300_000  # --output-bitrate: H.264 level 5.2's most (High profile), past any overlay's need
# The elements of cameras that expose and balance white by themselves from their start (USB and
# CSI cameras, a Raspberry Pi's): their first frames come dark or tinted (sources.SETTLE_S).
SETTLING_CAMERAS = ("v4l2src", "nvarguscamerasrc", "nvv4l2camerasrc", "libcamerasrc")
# A GenICam camera does so where a feature sets it to (ExposureAuto, GainAuto, BalanceWhiteAuto:
# Once or Continuous); aravissrc's own exposure-auto and gain-auto are off unless set.
AUTOMATIC_FEATURE = re.compile(r"\w+Auto=(?!off$)\S+", re.IGNORECASE)
# The caps aravissrc gives a GenICam pixel format (Aravis's arv_pixel_format_to_gst_caps_string),
# by the names cameras list it under, older names too: (codec, caps). aravissrc picks the frames'
# format from its caps, then sets its `features`: a PixelFormat there that differed came in
# buffers of another size (RGB8 after GRAY8 was picked: three times the bytes, read as grey
# frames of noise). The format's caps make both agree.
GENICAM_FORMATS = {
    "Mono8": ("raw", "video/x-raw,format=GRAY8"), "Mono16": ("raw", "video/x-raw,format=GRAY16_LE"),
    "RGB8": ("raw", "video/x-raw,format=RGB"), "RGB8Packed": ("raw", "video/x-raw,format=RGB"),
    "RGBa8": ("raw", "video/x-raw,format=RGBA"), "RGBA8Packed": ("raw", "video/x-raw,format=RGBA"),
    "YUV422_8_UYVY": ("raw", "video/x-raw,format=UYVY"), "YUV422Packed": ("raw", "video/x-raw,format=UYVY"),
    "YUV422_8": ("raw", "video/x-raw,format=YUY2"), "YUV422_YUYV_Packed": ("raw", "video/x-raw,format=YUY2"),
    "BayerRG8": ("bayer", "video/x-bayer,format=rggb"), "BayerGR8": ("bayer", "video/x-bayer,format=grbg"),
    "BayerGB8": ("bayer", "video/x-bayer,format=gbrg"), "BayerBG8": ("bayer", "video/x-bayer,format=bggr"),
}
# Mono10, Mono12 and Mono14 have no 8-bit caps: Aravis hands them on as GRAY16_LE, which aravissrc
# asks the camera for as Mono16, and videoconvert keeps the top 8 of the 16 bits; their packed
# forms it does not hand on at all.
DEEP_MONO = re.compile(r"Mono(1[024])(?:p|Packed)?")
# The kernel's receive buffer asked for UDP video. A picture's packets come in a burst, and those
# the buffer has no room for are lost, and the picture with them: through the 208 KiB most Linux
# systems give (rtspsrc asks 512 KiB), no 1080p JPEG of 1.5 MB ever came whole over 127.0.0.1;
# through 8 MiB every one did. Linux caps the size at net.core.rmem_max unless the process holds
# CAP_NET_ADMIN (root, or the service's user), and allocates it only as packets wait.
UDP_BUFFER_BYTES = 8 << 20


@dataclass(frozen=True)
class Flip:
    """A camera rotation or mirroring (`--input-flip`): nvvidconv's flip-method on a Jetson (the
    VIC does it), videoflip's video-direction elsewhere, and the same turn of an (H, W, C) array
    for image folders."""

    nvvidconv: str | None
    videoflip: str | None
    turn: Callable[[np.ndarray], np.ndarray]


# By jetson-utils' --input-flip names.
FLIPS = {
    "none": Flip(None, None, lambda a: a),
    "counterclockwise": Flip("counterclockwise", "90l", lambda a: np.rot90(a, 1)),
    "rotate-180": Flip("rotate-180", "180", lambda a: a[::-1, ::-1]),
    "clockwise": Flip("clockwise", "90r", lambda a: np.rot90(a, -1)),
    "horizontal": Flip("horizontal-flip", "horiz", lambda a: a[:, ::-1]),
    "vertical": Flip("vertical-flip", "vert", lambda a: a[::-1]),
    "upper-right-diagonal": Flip("upper-right-diagonal", "ur-ll", lambda a: a[::-1, ::-1].transpose(1, 0, 2)),
    "upper-left-diagonal": Flip("upper-left-diagonal", "ul-lr", lambda a: a.transpose(1, 0, 2)),
}


@dataclass
class SourceOptions:
    """How to open a source: the `--input-*` options of `edge-ad run` (None: the source's default)."""

    width: int | None = None
    height: int | None = None
    framerate: int | None = None
    codec: str | None = None  # h264, h265, mjpeg, raw, bayer (GenICam colour cameras), or mpegts (over RTP)
    latency_ms: int = 200  # rtspsrc / rtpjitterbuffer latency
    timeout_s: float = 5.0  # a live source with no frame for this long reconnects (0: never)
    pattern: str | None = None  # test:// pattern when the URI does not name one
    transport: str | None = None  # RTSP over tcp or udp (None: rtspsrc tries UDP, then TCP)
    flip: str = "none"  # rotate or mirror the frames: a name in FLIPS
    crop: tuple[int, int, int, int] | None = None  # x, y, width, height kept of the (turned) frame
    realtime: bool = False  # video files play no faster than their own frame rate (appsink sync)
    loop: int = 0  # files and folders play again this many times after the first (-1: for ever)
    follow: bool = False  # an image folder or wildcard: its new pictures as they arrive (edge_ad.followed_pictures)
    certificate: str | None = None  # an https:// or rtsps:// camera's own certificate, pinned (camera_certificates)


@dataclass
class SourcePipeline:
    description: str
    live: bool  # live sources keep only the newest frame and reconnect; files end at EOS
    note: str | None = None  # what the frames will be like, said when the source opens (and by doctor)
    settles: bool = False  # a camera whose automatic exposure settles once it starts (sources.settling)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LOGIN_END = re.compile("@(?=" + HOST + "(?:/|$))")  # the @ before a host, and a path or nothing


def login_escaped(uri: str) -> str:
    """A camera's URI with its login percent-encoded when it was written as it is typed into the
    camera's web page: a password with @, #, ? or a space (rtsp://admin:p@ss#1@10.0.0.5/...),
    as password rules ask for, made rtspsrc say "Unhandled error" or "Could not open resource".
    The login ends at the last @ before the first /; a password with a / in it
    (rtsp://admin:pa/ss@10.0.0.5/...) runs on to the first @ that a host follows (errors.HOST),
    unless what comes before its / reads as host:port (a / after digits: write it %2F). One
    without those characters is left as written, encoded or not."""
    scheme, separator, rest = uri.partition("://")
    authority = rest.partition("/")[0]
    end = authority.rfind("@")
    if end < 0 and separator and ":" in authority and not authority.partition(":")[2].isdigit():
        found = _LOGIN_END.search(rest, len(authority))
        end = found.start() if found else -1
    login = rest[:end]
    if not separator or end < 0 or not any(c in login for c in "@#? /"):
        return uri
    user, colon, password = login.partition(":")
    return f"{scheme}://{quote(user, safe='')}{colon}{quote(password, safe='')}@{rest[end + 1:]}"


def _codec(uri: str, options: SourceOptions, default: str, allowed: tuple[str, ...]) -> str:
    codec = (options.codec or default).lower()
    if codec not in allowed:
        raise SourceError(f"{uri}: codec '{codec}' is not supported for this source (use one of {', '.join(allowed)})")
    return codec


def check_crop(uri: str, crop: object) -> tuple[int, int, int, int] | None:
    """`crop` as (x, y, width, height): whole numbers, the corner not negative, the size positive.
    A --sources file may write it as the command line does (`crop: 0,0,640,480`, read as text)."""
    if crop is None:
        return None
    written = crop.split(",") if isinstance(crop, str) else crop
    values = list(written) if isinstance(written, (list, tuple)) else []
    # int() refuses text of more than 4300 digits with a ValueError; no frame is 10**19 pixels wide
    values = [int(v) if isinstance(v, str) and v.strip().isdecimal() and len(v) < 20 else v for v in values]
    if len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values) \
            or min(values[:2]) < 0 or min(values[2:]) <= 0:
        raise SourceError(f"{uri}: crop {crop!r} is not x, y, width, height in pixels (whole numbers, size above 0)")
    x, y, width, height = values
    return x, y, width, height


def flip_of(uri: str, name: str) -> Flip:
    """The flip called `name`, for the source `uri` (named in the error)."""
    if name not in FLIPS:
        raise SourceError(f"{uri}: flip '{name}' is not one of {', '.join(FLIPS)}")
    return FLIPS[name]


def _bgr_sink(uri: str, options: SourceOptions, jetson: bool, tagged: bool = False) -> str:
    """Raw video -> BGR appsink, rotated or mirrored as options.flip asks. On a Jetson nvvidconv
    copies NVMM (or system) memory to BGRx, flipping on the way; videoconvert drops the x.
    `tagged`: a video file, first turned as its orientation tag says, as players show it (a phone
    held upright records frames lying on their side and a tag saying so), then flipped."""
    flip = flip_of(uri, options.flip)
    if jetson and not tagged:
        method = f" flip-method={flip.nvvidconv}" if flip.nvvidconv else ""
        return f"nvvidconv{method} ! video/x-raw,format=BGRx ! {BGR_SINK}"
    # Turned after the conversion to BGR, so no chroma is resampled: the frame is exactly the
    # unturned one, rotated or mirrored. videoflip passes frames through untouched while it has
    # nothing to do (a file without an orientation tag).
    turns = ["videoflip video-direction=auto"] if tagged else []
    if flip.videoflip is not None:
        turns.append(f"videoflip video-direction={flip.videoflip}")
    copy = "nvvidconv ! video/x-raw,format=BGRx ! " if jetson else ""
    return copy + " ! ".join(["videoconvert ! video/x-raw,format=BGR", *turns, "appsink name=sink"])


def _decode(uri: str, codec: str, options: SourceOptions, jetson: bool) -> str:
    """H.264, H.265 or MJPEG (JPEG pictures one after another) -> BGR appsink. On a Jetson
    nvv4l2decoder decodes JPEG too, after jpegparse (as NVIDIA's plugin manual asks)."""
    if codec == "mjpeg":
        parse, decoder = "jpegparse", "nvv4l2decoder mjpeg=1" if jetson else "jpegdec"
    else:
        parse, decoder = f"{codec}parse", "nvv4l2decoder" if jetson else f"avdec_{codec}"
    return f"{parse} ! {decoder} ! {_bgr_sink(uri, options, jetson)}"


def _caps(kind: str, options: SourceOptions, defaults: tuple[int, int, int] | None = None) -> str:
    width, height, rate = defaults or (None, None, None)
    width, height, rate = options.width or width, options.height or height, options.framerate or rate
    fields = [kind] + [f"{k}={v}" for k, v in (("width", width), ("height", height)) if v]
    if rate:
        fields.append(f"framerate={rate}/1")
    return ",".join(fields)


def _test(uri: str, options: SourceOptions) -> SourcePipeline:
    """videotestsrc's `pattern` at `width` x `height` and `fps`: what it cannot make is refused
    here, not left to GStreamer's "could not link" or to a crash, and a key it does not take
    (`w=`) is not passed over."""
    parsed = parsed_uri(uri)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if unknown := sorted(set(query) - {"width", "height", "fps"}):
        raise SourceError(f"{uri}: test:// takes width, height and fps, not {', '.join(unknown)}")
    pattern = parsed.netloc or parsed.path.strip("/") or options.pattern or "smpte"
    try:
        width = int(query.get("width", options.width or 640))
        height = int(query.get("height", options.height or 480))
        rate = int(query.get("fps", options.framerate or 30))
    except ValueError as exc:
        raise SourceError(f"{uri}: width, height and fps must be integers") from exc
    if not (MIN_FRAME_SIDE <= width <= MAX_CAMERA_SIDE and MIN_FRAME_SIDE <= height <= MAX_CAMERA_SIDE):
        raise SourceError(f"{uri}: width and height must be {MIN_FRAME_SIDE} to {MAX_CAMERA_SIDE} pixels (frames "
                          f"smaller than {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} cannot be scored), not {width}x{height}")
    if pattern in ("ball", "18") and width < BALL_MIN_WIDTH:
        raise SourceError(f"{uri}: the ball pattern needs frames {BALL_MIN_WIDTH} pixels wide or more, not {width} "
                          "(GStreamer's videotestsrc writes past narrower ones: the process aborts)")
    if not 1 <= rate <= MAX_TEST_FPS:
        raise SourceError(f"{uri}: fps must be 1 to {MAX_TEST_FPS}, not {rate}")
    caps = f"video/x-raw,width={width},height={height},framerate={rate}/1"
    # is-live: frames come at the frame rate, like a camera's, and the newest one wins.
    return SourcePipeline(f"videotestsrc is-live=true pattern={pattern} ! {caps} ! {_bgr_sink(uri, options, False)}",
                          True)


def _v4l2(uri: str, options: SourceOptions, jetson: bool) -> SourcePipeline:
    device = uri[len("v4l2://") :] if uri.startswith("v4l2://") else uri
    codec = _codec(uri, options, "raw", ("raw", "mjpeg", "h264"))
    if codec in ("mjpeg", "h264"):
        decode, caps = _decode(uri, codec, options, jetson), _caps(V4L2_CAPS[codec], options)
    else:  # raw frames stay in system memory: videoconvert (and videoflip) are enough
        decode, caps = _bgr_sink(uri, options, False), _caps("video/x-raw", options)
    return SourcePipeline(f"v4l2src device={_quote(device)} ! {caps} ! {decode}", True, settles=True)


def _genicam(uri: str, options: SourceOptions) -> SourcePipeline:
    """genicam://[CAMERA][?exposure=US&gain=DB&feature=NAME=VALUE...]: a GigE Vision or USB3 Vision
    camera through Aravis (aravissrc), the cameras of factory lines. CAMERA is its id as
    `arv-tool-0.8` lists it (vendor-model-serial) or its IP address; without one, the first camera
    found. `exposure` (microseconds) and `gain` (dB) fix what an automatic exposure would change
    from part to part; each `feature` sets one more GenICam feature (BalanceWhiteAuto=Off, ...).
    Mono and RGB frames come raw; a colour camera that sends its sensor's Bayer mosaic needs
    `--input-codec bayer` (bayer2rgb). `--input-width/height/framerate` set the camera's region
    and rate through the caps."""
    camera, _, query = uri[len("genicam://") :].partition("?")
    settings = parse_qs(query, keep_blank_values=True)
    unknown = set(settings) - {"exposure", "gain", "feature"}
    if unknown:
        raise SourceError(f"{uri}: unknown settings {sorted(unknown)} (known: exposure, gain, feature)")
    properties = [f"camera-name={_quote(camera.strip('/'))}"] if camera.strip("/") else []
    for name, least in (("exposure", "above 0"), ("gain", "0 or more")):
        if name in settings:
            try:
                value = float(settings[name][-1])
            except ValueError:
                value = math.nan
            if not value >= 0 or value == math.inf or (value == 0 and name == "exposure"):
                raise SourceError(f"{uri}: {name} must be a number {least}, got {settings[name][-1]!r}")
            properties.append(f"{name}={value}")
    features = settings.get("feature", [])
    for feature in features:
        if not re.fullmatch(r"[A-Za-z]\w*=\S+", feature):
            raise SourceError(f"{uri}: feature {feature!r} is not NAME=VALUE (a GenICam feature, as in "
                              "BalanceWhiteAuto=Off)")
    if features:
        properties.append(f"features={_quote(' '.join(features))}")
    codec = _codec(uri, options, "raw", ("raw", "bayer"))
    pinned, note = _pixel_format(uri, features, codec)
    caps = _caps(pinned or ("video/x-bayer" if codec == "bayer" else "video/x-raw"), options)
    demosaic = "bayer2rgb ! " if codec == "bayer" else ""
    source = " ".join(["aravissrc", *properties])
    automatic = any(AUTOMATIC_FEATURE.fullmatch(feature) for feature in features)
    return SourcePipeline(f"{source} ! {caps} ! {demosaic}{_bgr_sink(uri, options, False)}", True, note,
                          settles=automatic)


def _pixel_format(uri: str, features: list[str], codec: str) -> tuple[str | None, str | None]:
    """The caps of a `feature=PixelFormat=...` (the last one: Aravis sets them in order), and what
    to say where they cannot be known. A format edge-ad does not know, or one for the other codec,
    is said, not refused, and read as before (a Bayer mosaic read as grey frames kept scoring as it
    did); Mono10/12/14 are refused: they came as noise, or dark (white at 15 of 255 for Mono12)."""
    formats = [feature.partition("=")[2] for feature in features if feature.startswith("PixelFormat=")]
    if not formats:
        return None, None
    name = formats[-1]
    if deep := DEEP_MONO.fullmatch(name):
        bits = int(deep[1])
        raise SourceError(
            f"{uri}: PixelFormat={name} cannot be read: Aravis has no 8-bit form of {bits}-bit pixels, so frames would "
            "come as noise (read in the format aravissrc picked before the feature was set) or as 16-bit ones with "
            f"the camera's white at {(2**bits - 1) >> 8} of 255. edge-ad scores 8-bit frames, so more bits gain "
            "nothing: set feature=PixelFormat=Mono8 (or Mono16)")
    if name not in GENICAM_FORMATS:
        return None, (f"{uri}: PixelFormat={name} is none of those edge-ad reads ({', '.join(GENICAM_FORMATS)}): "
                      "aravissrc picks the frames' format before it sets the feature, and frames come as noise "
                      "where the two differ: set one of those")
    wanted, caps = GENICAM_FORMATS[name]
    if wanted == "bayer" != codec:
        return None, (f"{uri}: PixelFormat={name} is the sensor's Bayer mosaic: without --input-codec bayer (codec: "
                      "bayer in --sources) frames are that mosaic in grey, not in colour")
    if wanted != codec:
        return None, (f"{uri}: PixelFormat={name} is not a Bayer mosaic, which --input-codec bayer (codec: bayer in "
                      "--sources) reads: leave that out; read as a mosaic, frames come as noise or in false colours")
    return caps, None


def _csi(uri: str, options: SourceOptions, jetson: bool) -> SourcePipeline:
    if not jetson:
        raise SourceError(f"{uri}: CSI cameras need a Jetson (nvarguscamerasrc); this machine is not one")
    sensor = uri[len("csi://") :] or "0"
    if not sensor.isdigit():
        raise SourceError(f"{uri}: the CSI sensor must be a number, as in csi://0")
    caps = _caps("video/x-raw(memory:NVMM)", options, (1280, 720, 30))
    return SourcePipeline(
        f"nvarguscamerasrc sensor-id={sensor} ! {caps},format=NV12 ! {_bgr_sink(uri, options, True)}", True,
        settles=True)


def _rtsp(uri: str, options: SourceOptions, jetson: bool) -> SourcePipeline:
    """rtspsrc dropping packets that come later than the latency (a live source keeps the newest
    frame), over the transport asked for: TCP through firewalls and NAT, UDP for the least delay.
    H.264, H.265, or MJPEG as older and many industrial cameras send it (RTP/JPEG, RFC 2435), over
    TCP unless the transport is given: each JPEG picture is hundreds of packets, and one lost over
    UDP loses the picture (where H.264 loses a slice of it until the next key frame). rtsps://
    goes over TCP too unless UDP is asked for: rtspsrc took UDP for the video, outside the TLS
    connection, readable by anyone on the network."""
    uri_port(uri)  # one past 65535, or an IPv6 address without its ']': refused, not tried for the whole run
    codec = _codec(uri, options, "h264", ("h264", "h265", "mjpeg"))
    if options.transport not in (None, "tcp", "udp"):
        raise SourceError(f"{uri}: RTSP transport '{options.transport}' is not tcp or udp")
    transport = options.transport or ("tcp" if codec == "mjpeg" or uri.startswith("rtsps://") else None)
    protocols = f" protocols={transport}" if transport else ""
    buffer = "" if transport == "tcp" else f" udp-buffer-size={UDP_BUFFER_BYTES}"
    latency = _latency(uri, options)
    return SourcePipeline(
        f"rtspsrc location={_quote(login_escaped(uri))} latency={latency} drop-on-latency=true{protocols}"
        f"{buffer} ! {RTP_DEPAY[codec]} ! {_decode(uri, codec, options, jetson)}",
        True,
        None if transport == "tcp" else _latency_past_timeout(  # said, not refused: without loss the frames come
            uri, latency, options.timeout_s, "at a packet lost over UDP the jitter buffer holds the frames after it "
            "for up to the latency, so the source goes without a frame for the timeout and reconnects (2 % of the "
            "packets lost: 63 frames in 30 s of 300, a reconnection every 7 s)",
            ", or read it over TCP (--rtsp-transport tcp)"),
    )


def _latency_past_timeout(uri: str, latency: int, timeout_s: float, then: str, other: str = "") -> str | None:
    """What to say where a jitter buffer's `latency` is not below the source's timeout (0: none),
    and `then` happens; None where it is below."""
    if not 0 < timeout_s * 1000 <= latency:
        return None
    return (f"{uri}: latency {latency} ms is not below the timeout of {timeout_s:g} s: {then}. Give a shorter "
            "latency (--latency, or latency_ms in --sources; 200 ms is usual) or a longer timeout (--timeout, "
            f"timeout_s){other}")


def _rtp(uri: str, options: SourceOptions, jetson: bool) -> SourcePipeline:
    parsed, port = parsed_uri(uri), uri_port(uri)
    if port is None:
        raise SourceError(f"{uri}: an RTP source needs a port, as in rtp://@:5000")
    codec = _codec(uri, options, "h264", ("h264", "h265", "mjpeg", "mpegts"))
    address = "" if parsed.hostname in (None, "@", "") else f" address={parsed.hostname}"
    # No payload type: senders pick their own among the dynamic ones (96 mostly, 97, 102...), and
    # a pipeline told payload=96 drops every packet of another.
    if codec == "mpegts":  # decodebin reads its H.264 or H.265 as the stream's tables say, as udp:// does
        name, depay, decode = "MP2T", "rtpmp2tdepay", f"decodebin ! {_bgr_sink(uri, options, jetson)}"
    else:
        name, depay, decode = RTP_ENCODING[codec], RTP_DEPAY[codec], _decode(uri, codec, options, jetson)
    caps = f"application/x-rtp,media=video,clock-rate=90000,encoding-name={name}"
    latency = _latency(uri, options)
    held = _latency_past_timeout(uri, latency, options.timeout_s, "the jitter buffer holds an RTP stream's first "
                                 "packets for the latency, so no frame would come before the source reconnects, again "
                                 "and again")
    if held:
        raise SourceError(held)
    return SourcePipeline(
        f'udpsrc port={port}{address} buffer-size={UDP_BUFFER_BYTES} caps="{caps}" ! '
        f"rtpjitterbuffer latency={latency} ! {depay} ! {decode}",
        True,
    )


def _latency(uri: str, options: SourceOptions) -> int:
    if options.latency_ms > LATENCY_MAX_MS:
        raise SourceError(f"{uri}: latency {options.latency_ms} ms is more than GStreamer takes "
                          f"({LATENCY_MAX_MS} ms, about 50 days); 200 ms is usual")
    return options.latency_ms


def _udp(uri: str, options: SourceOptions, jetson: bool) -> SourcePipeline:
    """MPEG-TS sent straight over UDP (`udp://@:5000`, or a multicast group `udp://239.0.0.1:5000`),
    as ffmpeg (`-f mpegts udp://JETSON:5000`), VLC and hardware encoders send it. decodebin reads
    its H.264 or H.265 as the stream's tables say, as it reads a video file, and leaves its sound."""
    parsed, port = parsed_uri(uri), uri_port(uri)
    if port is None:
        raise SourceError(f"{uri}: a UDP source needs a port, as in udp://@:5000")
    address = "" if parsed.hostname in (None, "@", "") else f" address={parsed.hostname}"
    return SourcePipeline(
        f'udpsrc port={port}{address} buffer-size={UDP_BUFFER_BYTES} caps="video/mpegts,systemstream=true" ! '
        f"decodebin ! {_bgr_sink(uri, options, jetson)}",
        True,
    )


def _http(uri: str, options: SourceOptions, jetson: bool) -> SourcePipeline:
    """An IP camera's MJPEG stream over HTTP (multipart/x-mixed-replace), which many cameras serve
    besides RTSP (Axis's /axis-cgi/mjpg/video.cgi, ESP32-CAM, another edge-ad's --output http://).
    A user and password in the URL are sent as HTTP authentication (basic or digest)."""
    uri_port(uri)  # as for RTSP
    _codec(uri, options, "mjpeg", ("mjpeg", "jpeg"))  # jpeg: a still picture's URL, read by http_pictures instead
    return SourcePipeline(
        f"souphttpsrc location={_quote(login_escaped(uri))} is-live=true do-timestamp=true ! multipartdemux ! "
        f"image/jpeg ! {_decode(uri, 'mjpeg', options, jetson)}",
        True,
    )


def local_path(uri: str) -> Path:
    """The path of a video file or folder given as a path or a file:// URI, which file managers
    and GStreamer write percent-encoded (file:///data/line%203/a.mp4) and may name the host
    (file://localhost/...); another machine's file is not this machine's to read. A raw '#' or
    '?' ends a URI's path (GLib refuses the '#'): said, not read as a file of the name before it."""
    if not uri.startswith("file://"):
        return Path(uri)
    cut = next((c for c in "#?" if c in uri), None)
    if cut is not None:
        escaped = uri.replace("#", "%23").replace("?", "%3F")
        raise SourceError(f"{uri}: a '{cut}' ends the path of a file:// URI; write it {quote(cut)} ({escaped}), or "
                          "give the path itself")
    parsed = parsed_uri(uri)
    if parsed.netloc not in ("", "localhost"):
        raise SourceError(f"{uri}: a file on host '{parsed.netloc}': give a path on this machine (mount the share)")
    if not parsed.path:  # Path("") would be the current folder
        raise SourceError(f"{uri}: names no file or folder")
    return Path(unquote(parsed.path))


def opencv_input(uri: str) -> str | None:
    """What an input read with OpenCV, as training reads pictures, is: "image folder", "picture"
    (one image file, `--input part.jpg` to see what a bundle makes of it: GStreamer stopped at a
    CMYK JPEG and turned no picture by its EXIF data) or "picture pattern" (a path with * ? [ ],
    `--input 'line1/*.jpg'`, as jetson-utils takes an image sequence); None for what GStreamer
    reads."""
    path = local_path(uri)
    if path.is_dir():
        return "image folder"
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return "picture"
    if "://" not in uri and not path.exists() and any(c in uri for c in "*?["):
        return "picture pattern"
    return None


def is_v4l2_device(uri: str) -> bool:
    """Whether `uri` is a V4L2 camera: v4l2://..., /dev/videoN, or a path to a character device:
    udev's names of each USB camera (/dev/v4l/by-id/usb-...-video-index0, /dev/v4l/by-path/...)
    and one's own udev rules' (/dev/camera-top), which go on naming the same camera when a reboot
    or a replug numbers the cameras otherwise (they were "no such file" before)."""
    return uri.startswith(("v4l2://", "/dev/video", "/dev/v4l/")) or ("://" not in uri and Path(uri).is_char_device())


def camera_number_hint(value: object) -> str:
    """For a camera given by its number, as OpenCV takes it (`0`): what edge-ad calls it."""
    if str(value).isdigit():
        return f"; a camera by its number is /dev/video{value} (USB, V4L2) or csi://{value} (a Jetson's CSI camera)"
    return ""


def _file(uri: str, options: SourceOptions, jetson: bool) -> SourcePipeline:
    path = local_path(uri)
    if not path.is_file() and uri.startswith("file://"):  # the path its %-escapes stand for
        raise SourceError(f"{uri}: no such file or folder: {path}")
    if not path.is_file():
        raise SourceError(f"{uri}: no such file, folder or supported source URI{camera_number_hint(uri)}")
    if path.stat().st_size == 0:
        raise SourceError(f"{uri}: empty file")
    sink = _bgr_sink(uri, options, jetson, tagged=True)
    return SourcePipeline(f"filesrc location={_quote(str(path))} ! decodebin ! {sink}", False)


def source_pipeline(uri: str, options: SourceOptions | None = None, jetson: bool | None = None) -> SourcePipeline:
    """The pipeline for a source URI: test://[pattern][?width=&height=&fps=], csi://N, /dev/videoN,
    v4l2:///dev/videoN, genicam://[CAMERA], rtsp://..., rtp://[host]:port, udp://[host]:port (MPEG-TS),
    http(s)://... (MJPEG), or a video file."""
    options = options or SourceOptions()
    jetson = is_jetson() if jetson is None else jetson
    if uri.startswith("test://"):
        return _test(uri, options)
    if uri.startswith("csi://"):
        return _csi(uri, options, jetson)
    if is_v4l2_device(uri):
        return _v4l2(uri, options, jetson)
    if uri.startswith("genicam://"):
        return _genicam(uri, options)
    if uri.startswith(("rtsp://", "rtsps://")):
        return _rtsp(uri, options, jetson)
    if uri.startswith("rtp://"):
        return _rtp(uri, options, jetson)
    if uri.startswith("udp://"):
        return _udp(uri, options, jetson)
    if uri.startswith(("http://", "https://")):
        return _http(uri, options, jetson)
    if "://" in uri and not uri.startswith("file://"):
        raise SourceError(
            f"{uri}: unknown source type (use test://, csi://N, /dev/videoN, genicam://, rtsp://, rtp://, udp:// "
            "(MPEG-TS), http:// (MJPEG), a video file or a folder)"
        )
    return _file(uri, options, jetson)


@functools.cache
def hardware_encoder(root: Path = Path("/")) -> bool:
    """Whether this Jetson encodes H.264 in hardware: its firmware target's gstreamer.encoder is
    not x264enc (every Orin but the Nano). True elsewhere, where `--platform jetson` asks for the
    pipelines of a Jetson that has one."""
    device = detect(root)
    target = own_target(device) if device.kind == "jetson" else None
    return target is None or target["gstreamer"]["encoder"] != "x264enc"  # no target: what every other Orin has


def _encoder(fps: int, jetson: bool, bitrate_kbps: int | None = None) -> str:
    """BGR from appsrc -> H.264 elementary stream, a key frame every second, at `bitrate_kbps`
    (None: the encoder's default, 4 Mbit/s for nvv4l2h264enc, 2 for x264enc)."""
    if jetson and hardware_encoder():
        bitrate = f" bitrate={bitrate_kbps * 1000}" if bitrate_kbps else ""  # bits per second
        return (
            "videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
            f"nvv4l2h264enc insert-sps-pps=true iframeinterval={fps}{bitrate} ! h264parse"
        )
    bitrate = f" bitrate={bitrate_kbps}" if bitrate_kbps else ""  # kbit per second
    return (
        "videoconvert ! video/x-raw,format=I420 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps}{bitrate} ! h264parse"
    )


def appsrc_caps(width: int, height: int, fps: int) -> str:
    return f"video/x-raw,format=BGR,width={width},height={height},framerate={fps}/1"


def output_pipeline(
    uri: str, width: int, height: int, fps: int, jetson: bool | None = None, bitrate_kbps: int | None = None
) -> str:
    """The pipeline of a video output: a .mp4/.mkv file, rtp://host:port or display://N.
    (rtsp://@:port/path is served by gst-rtsp-server: see `rtsp_launch`.)"""
    jetson = is_jetson() if jetson is None else jetson
    src = f"appsrc name=src is-live=true format=time caps={appsrc_caps(width, height, fps)}"
    if uri.startswith("display://"):
        sink = "nvvidconv ! nv3dsink sync=false" if jetson else "videoconvert ! autovideosink name=display sync=false"
        return f"{src} ! {sink}"
    if uri.startswith("rtp://"):
        parsed = parsed_uri(uri)
        if not parsed.hostname or not uri_port(uri):  # port 0: sent nowhere
            raise SourceError(f"{uri}: an RTP output needs a host and a port, as in rtp://192.168.1.10:5000")
        return (
            f"{src} ! {_encoder(fps, jetson, bitrate_kbps)} ! rtph264pay config-interval=1 pt=96 ! "
            f"udpsink host={parsed.hostname} port={parsed.port} sync=false async=false"
        )
    if "://" in uri:
        raise SourceError(f"{uri}: unknown output type (use a .mp4/.mkv file, rtp://host:port, rtsp://@:port/path, "
                          "http://@:port/path or display://0)")
    path = Path(uri)
    muxer = VIDEO_CONTAINERS.get(path.suffix.lower())
    if muxer is None:
        raise SourceError(f"{uri}: video outputs are .mp4 or .mkv files")
    sink = f"filesink buffer-mode=unbuffered location={_quote(str(path))}"
    return f"{src} ! {_encoder(fps, jetson, bitrate_kbps)} ! {muxer} ! {sink}"


def rtsp_launch(width: int, height: int, fps: int, jetson: bool | None = None, bitrate_kbps: int | None = None) -> str:
    """The gst-rtsp-server media description for rtsp://@:port/path outputs (payloader pay0)."""
    jetson = is_jetson() if jetson is None else jetson
    caps = appsrc_caps(width, height, fps)
    return (
        f"( appsrc name=src is-live=true format=time do-timestamp=true caps={caps} ! "
        f"{_encoder(fps, jetson, bitrate_kbps)} ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
