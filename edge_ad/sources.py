"""Frame sources: GStreamer pipelines (through PyGObject) into an appsink, and image folders.

Live sources (cameras, RTSP/RTP/UDP streams, test://) keep only the newest frame in the appsink
(drop, max-buffers 1, no sync), so inference never falls behind the camera; the frames the
appsink dropped are counted. When a live source fails (error, EOS, or no frame for
`timeout_s`) it reconnects with exponential back-off and a log line per attempt. Files end at
their EOS and every frame of them is delivered: as fast as it is pulled, or with
`SourceOptions.realtime` no faster than the file's own frame rate. Frames come out as uint8 BGR,
as OpenCV uses them.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Union
from urllib.parse import urlparse

import numpy as np

from .camera_certificates import camera_tls
from .errors import ImageError, SourceError, without_passwords
from .images import (IMAGE_SUFFIXES, masks_beside, masks_left_text, masks_of, no_images_in, pattern_folder, pictures_of,
                     read_image, subfolders_left)
from .pipelines import (AUTOMATIC_FEATURE, SETTLING_CAMERAS, UDP_BUFFER_BYTES, SourceOptions, SourcePipeline,
                        check_crop, flip_of, local_path, opencv_input, source_pipeline)
from .rtp_packets import HEADS, RtpPackets

if TYPE_CHECKING:
    from .followed_pictures import FollowedPictures
    from .http_pictures import HttpPictures

log = logging.getLogger("edge_ad.sources")

POLL_S = 0.2  # appsink pulls wait this long at most, so a stop request is seen within it
BACKOFF_S = (1.0, 30.0)  # first and largest wait between reconnection attempts
# A source that fails on with the wait at its largest is said this often (and when its reason
# changes): at every attempt, a camera away for a weekend wrote 11,520 lines into the journal.
OUTAGE_SAID_EVERY_S = 600.0
# A file whose last frame ends this much, and 5 % of it, before the duration its header gives was
# cut short; less is a container's rounding, or a sound track a little longer than the video.
CUT_SHORT_S = 1.0
# A USB or CSI camera's automatic exposure and white balance settle within this after it starts:
# its first frames come dark, blown out or tinted (2 frames skipped with fswebcam were too few for
# USB cameras, 25 enough; a camera maker's manual asks for 2 s).
SETTLE_S = 2.0


class Backoff:
    """The wait before a source's next attempt (a reconnection, a listing, a request):
    BACKOFF_S[0] seconds, doubled after each up to BACKOFF_S[1], the first again once the source
    delivers."""

    def __init__(self) -> None:
        self.wait = BACKOFF_S[0]

    def sleep(self, stop: threading.Event) -> bool:
        """Wait before the next attempt; True when `stop` was set meanwhile."""
        stopped = stop.wait(self.wait)
        self.wait = min(2 * self.wait, BACKOFF_S[1])
        return stopped

    def reset(self) -> None:
        self.wait = BACKOFF_S[0]


class Outage:
    """Whether a source's failure is said: each one while the wait between attempts grows (its
    first minute), then one every OUTAGE_SAID_EVERY_S, or as soon as the reason differs."""

    def __init__(self) -> None:
        self._said: tuple[float, str] | None = None  # at the largest wait: when, and the reason said

    def due(self, backoff: Backoff, reason: str) -> bool:
        if backoff.wait < BACKOFF_S[1]:
            return True
        now, kind = time.monotonic(), re.sub(r"\(([a-z_]+)\d+\)", r"(\1)", reason)  # rtspsrc3: rtspsrc
        if self._said is not None and now - self._said[0] < OUTAGE_SAID_EVERY_S and kind == self._said[1]:
            return False
        self._said = (now, kind)
        return True

    @property
    def long(self) -> bool:
        """Whether it has gone on past the wait's growing (and so was said in part only)."""
        return self._said is not None

    def note(self, backoff: Backoff) -> str:
        """What a line said at the largest wait adds."""
        return (f" (tried every {BACKOFF_S[1]:.0f} s; said every {OUTAGE_SAID_EVERY_S / 60:.0f} min while it fails)"
                if backoff.wait >= BACKOFF_S[1] else "")


@dataclass
class Frame:
    index: int
    timestamp: float  # seconds: stream time (PTS) for GStreamer sources, wall time for folders
    image: np.ndarray  # uint8 BGR (H, W, 3)
    name: str = ""
    captured: float = field(default_factory=time.time)  # wall-clock seconds when the frame arrived
    # The same moment on the monotonic clock, for latencies and intervals: a Jetson's wall clock is
    # often set while a run goes on (NTP once the network is up, an RTC without a battery).
    arrived: float = field(default_factory=time.monotonic)


@functools.cache
def load_gst():
    """The initialised Gst module (loaded once: outputs ask for it on every frame)."""
    # libgstreamer links libunwind, whose _Unwind_* symbols would then win over libgcc_s's for
    # every C++ library loaded later (ONNX Runtime, torch), and their exceptions would abort the
    # process. Loading libgcc_s first, globally, keeps C++ exceptions working.
    try:
        ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        pass  # not a glibc system: nothing to keep apart
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        from gi.repository import Gst, GstApp  # noqa: F401  (GstApp adds AppSink.try_pull_sample)
    except (ImportError, ValueError) as exc:
        raise SourceError(
            "GStreamer Python bindings are missing: install the system GStreamer packages and "
            "pip install 'edge-ad[gst]' (PyGObject)"
        ) from exc
    if not Gst.is_initialized():
        Gst.init(None)
        # DirectFB's sink (Debian's plugins-bad) crashes the process where there is no screen, and
        # autovideosink tries it when the others cannot open one: a display output under a service.
        directfb = Gst.Registry.get().lookup_feature("dfbvideosink")
        if directfb is not None:
            directfb.set_rank(Gst.Rank.NONE)
    return Gst


def bus_error(pipeline) -> str | None:
    """GStreamer's message for the first error posted on a pipeline's bus, naming the element."""
    message = pipeline.get_bus().pop_filtered(load_gst().MessageType.ERROR)
    if message is None:
        return None
    error, _ = message.parse_error()
    return f"{error.message} ({message.src.get_name()})"


def _elements(pipeline, factory: str) -> Iterator:
    """The elements of `pipeline` made by `factory`, inside its bins too (one's own pipeline may
    hold its camera in one: `bin.( v4l2src ! ... ) ! ...`)."""
    Gst = load_gst()
    elements = pipeline.iterate_recurse()
    while True:
        result, element = elements.next()
        if result != Gst.IteratorResult.OK:
            return
        if element.get_factory().get_name() == factory:
            yield element


def has_settling_camera(pipeline) -> bool:
    """Whether `pipeline` (the user's own) reads a camera whose exposure settles once it starts:
    a USB or CSI camera's element, or an aravissrc set to expose, gain or balance white by itself."""
    if any(next(_elements(pipeline, factory), None) is not None for factory in SETTLING_CAMERAS):
        return True
    return any(_exposes_itself(camera) for camera in _elements(pipeline, "aravissrc"))


def _exposes_itself(aravissrc) -> bool:
    """Whether an aravissrc leaves its camera to expose, gain or balance white by itself."""
    features = (aravissrc.get_property("features") or "").split()
    return bool(int(aravissrc.get_property("exposure-auto")) or int(aravissrc.get_property("gain-auto"))
                or any(AUTOMATIC_FEATURE.fullmatch(feature) for feature in features))


def _pad_caps(pipeline, factory: str) -> Iterator:
    """The caps (first structure) of each source pad that the `factory` elements of `pipeline`
    have negotiated so far."""
    for element in _elements(pipeline, factory):
        for pad in element.srcpads:
            caps = pad.get_current_caps()
            if caps is not None and caps.get_size():
                yield caps.get_structure(0)


def rtsp_codec(pipeline) -> str | None:
    """The codec of the video an RTSP camera sends into `pipeline`'s rtspsrc, as its stream
    describes it (RTP caps: encoding-name, lower case: h264, h265, mp4v-es; JPEG is mjpeg, as
    --input-codec names it), or None (no rtspsrc, nothing described yet)."""
    for described in _pad_caps(pipeline, "rtspsrc"):
        if described.get_string("media") == "video":
            name = (described.get_string("encoding-name") or "").lower()
            return "mjpeg" if name == "jpeg" else name or None
    return None


def decoded_media(pipeline) -> list[str]:
    """The kinds of stream (video, audio, text...) that the decodebin of a pipeline found so far."""
    return [caps.get_name().split("/")[0] for caps in _pad_caps(pipeline, "decodebin")]


STREAM_CODECS = {"h264": "H.264", "h265": "H.265", "mjpeg": "MJPEG"}  # what edge-ad reads over RTSP and RTP
RTP_CODECS = {**STREAM_CODECS, "mpegts": "MPEG-TS"}  # and over RTP alone


def _either(names: Iterable[str]) -> str:
    """"A, B or C"."""
    *others, last = names
    return f"{', '.join(others)} or {last}" if others else last


class _Failure(Exception):
    """A live pipeline stopped delivering; the source reconnects."""


class _NotStarted(SourceError):
    """A pipeline built but not started: its camera is not there, or busy (`reason`)."""

    def __init__(self, shown: str, reason: str):
        super().__init__(f"{shown}: {reason}")
        self.reason = reason


class GstSource:
    """Frames from a GStreamer pipeline ending in `appsink name=sink`.

    `uri` is a source URI (see `edge_ad.pipelines.source_pipeline`) or, with `pipeline`, a name
    for the user's own pipeline description. Counters: `dropped` frames, `reconnects`. A camera
    that does not start refuses the source, unless `wait`: then it is tried again as one that went
    away is (one of several cameras, which must not stop the others).
    """

    def __init__(
        self,
        uri: str,
        options: SourceOptions | None = None,
        pipeline: str | None = None,
        jetson: bool | None = None,
        wait: bool = False,
    ):
        self._Gst = load_gst()
        self.uri = uri
        self.shown = without_passwords(uri)  # for logs, errors and frame names
        self.options = options or SourceOptions()
        if pipeline is not None:
            if "appsink" not in pipeline or "name=sink" not in pipeline:
                raise SourceError(f"--pipeline '{pipeline}': it must end in 'appsink name=sink' (BGR frames)")
            if self.options.flip != "none":
                raise SourceError(f"--pipeline '{pipeline}': --input-flip turns the sources edge-ad builds; "
                                  "put videoflip (nvvidconv flip-method on a Jetson) in your own pipeline")
            if self.options.certificate:
                raise SourceError(f"--pipeline '{pipeline}': --input-certificate checks the https:// and rtsps:// "
                                  "cameras edge-ad opens, not those of your own pipeline")
            self.spec = SourcePipeline(pipeline, live=False)
            self._custom = True
        else:
            self.spec = source_pipeline(uri, self.options, jetson)
            self._custom = False
            if self.spec.note:
                log.warning("%s", without_passwords(self.spec.note))
        self._tls = None if self._custom else camera_tls(uri, self.options.certificate)
        self._jetson = jetson
        self.description = self.spec.description
        self.reconnects = 0
        self._backoff, self._attempt = Backoff(), 0  # before the next reconnection attempt; its number
        self._outage = Outage()
        self.passes = 0  # how many times a file has started playing in frames() (options.loop)
        self.fps: float | None = None  # from the caps of the first frame (None: variable or unknown)
        self._dropped_before = 0  # frames the appsinks of earlier connections dropped
        self._arrived_before = 0  # frames that reached the appsinks of earlier connections
        self._arrived_here = self._pulled_here = 0
        self._numbers: deque[tuple[int, int]] = deque(maxlen=16)  # (pts, arrival number) of recent buffers
        self.pipeline = None
        self._rtp: RtpPackets | None = None  # an rtp:// or udp:// source's first packets, of its pipeline now
        self.started = 0.0  # time.monotonic() of the last start
        self._waited = False  # a camera not there at the start, tried again from the first frames() call
        try:
            self._start()  # the first start fails loudly: a wrong URI should not retry for ever
        except _NotStarted as exc:
            if not (wait and self.live):
                raise
            log.warning("%s: %s; not there as the run starts: the other sources go on, and this one is tried "
                        "again as a camera that went away is", self.shown, without_passwords(exc.reason))
            self._waited = True

    @property
    def live(self) -> bool:
        return self.spec.live

    @property
    def away(self) -> bool:
        """Whether it is being reconnected: it failed (or was not there at the start), and no frame
        has come since."""
        return self._attempt > 0 or self._waited

    @property
    def dropped(self) -> int:
        """Frames the appsink dropped because a newer one arrived before they were pulled."""
        if not self.live:
            return 0  # files and other non-live sources never drop
        # One arrived frame may still wait in the appsink: count it as not dropped.
        return self._dropped_before + max(0, self._arrived_here - self._pulled_here - 1)

    def _start(self) -> None:
        Gst = self._Gst
        try:
            self.pipeline = Gst.parse_launch(self.description)
        except Exception as exc:  # GLib.Error carries GStreamer's own message
            hint = " (GenICam cameras need Aravis's GStreamer plugin: apt-get install libaravis-0.8-0)" \
                if "aravissrc" in str(exc) else ""
            raise SourceError(f"{self.shown}: cannot build pipeline '{without_passwords(self.description)}': "
                              f"{exc}{hint}") from exc
        self.appsink = self.pipeline.get_by_name("sink")
        if self.appsink is None:
            raise SourceError(f"{self.shown}: pipeline has no appsink named 'sink'")
        if not self._custom and self.uri.startswith(("rtp://", "udp://")):
            self._rtp = RtpPackets(Gst, next(_elements(self.pipeline, "udpsrc")))
        if self._tls:
            self._tls.refusal = None
            for element in (*_elements(self.pipeline, "souphttpsrc"), *_elements(self.pipeline, "rtspsrc")):
                element.set_property("tls-database", self._tls.gst_database())
        state = self.pipeline.set_state(Gst.State.PAUSED)
        if state == Gst.StateChangeReturn.FAILURE:
            error = bus_error(self.pipeline) or "pipeline failed to start"
            self.close()
            raise _NotStarted(self.shown, self._said(error))
        if self._custom:  # a live source does not preroll: that is how GStreamer tells them apart
            self.spec.live = state == Gst.StateChangeReturn.NO_PREROLL
            self.spec.settles = has_settling_camera(self.pipeline)
        live = self.spec.live
        # A file with `realtime` plays at its own pace: the appsink waits for each frame's time
        # (and hands on late ones: appsink keeps max-lateness -1). Live sources never wait.
        self.appsink.set_property("sync", self.options.realtime and not live)
        self.appsink.set_property("drop", live)
        self.appsink.set_property("max-buffers", 1 if live else 2)
        self._dropped_before = self.dropped
        self._arrived_before += self._arrived_here
        self._arrived_here = self._pulled_here = 0
        self.appsink.get_static_pad("sink").add_probe(self._Gst.PadProbeType.BUFFER, self._count_arrival)
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            error = bus_error(self.pipeline) or "pipeline failed to start"
            self.close()
            raise _NotStarted(self.shown, self._said(error))
        self.started = time.monotonic()

    def _said(self, error: str) -> str:
        """GStreamer's `error` with what helps, or the camera's certificate refused, which
        souphttpsrc and rtspsrc say as a stream error only."""
        if self._tls and self._tls.refusal:
            return str(self._tls.refusal)
        return with_hint(self.description, error)

    def _count_arrival(self, pad, info):
        self._numbers.append((info.get_buffer().pts, self._arrived_before + self._arrived_here))
        self._arrived_here += 1
        return self._Gst.PadProbeReturn.OK

    def _number(self, pts: int, fallback: int) -> int:
        """The arrival number of the buffer with this PTS: the source's frame number, with the
        frames dropped before it counted, so gaps in the numbers show the drops."""
        for buffer_pts, number in reversed(self._numbers):
            if buffer_pts == pts:
                return number
        return fallback

    def _to_array(self, sample) -> np.ndarray:
        """The sample's frame (only the part `options.crop` keeps), copied out of the buffer."""
        structure = sample.get_caps().get_structure(0)
        if structure.get_name() != "video/x-raw" or structure.get_string("format") != "BGR":  # an own --pipeline's
            kind = structure.get_string("format") if structure.get_name() == "video/x-raw" else structure.get_name()
            raise SourceError(f"{self.shown}: the appsink gets {kind} frames, not BGR: end the pipeline in "
                              "'... ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink'")
        width, height = structure.get_value("width"), structure.get_value("height")
        ok, num, den = structure.get_fraction("framerate")
        if ok and num > 0 and den > 0:
            self.fps = num / den
        buffer = sample.get_buffer()
        ok, info = buffer.map(self._Gst.MapFlags.READ)
        if not ok:
            raise SourceError(f"{self.shown}: cannot map a video buffer")
        try:
            stride = info.size // height  # rows are padded to 4 bytes for odd widths
            rows = np.frombuffer(info.data, np.uint8, count=stride * height).reshape(height, stride)
            return np.array(crop_frame(rows[:, : width * 3].reshape(height, width, 3), self.options.crop, self.shown))
        finally:
            buffer.unmap(info)

    def _pull(self, stop: threading.Event):
        """The next sample; None at the end of a file or on stop; _Failure when a live source fails."""
        Gst = self._Gst
        waited = 0.0
        while not stop.is_set():
            sample = self.appsink.try_pull_sample(int(POLL_S * Gst.SECOND))
            if sample is not None:
                self._pulled_here += 1
                if self._attempt:  # the first frame after reconnecting: the next failure starts over
                    if self._outage.long:
                        log.warning("%s: frames again, after %d reconnection attempts", self.shown, self._attempt)
                    self._backoff, self._attempt, self._outage = Backoff(), 0, Outage()
                return sample
            error = bus_error(self.pipeline)
            if error:
                error = self._said(error)
                if self.live:
                    raise _Failure(self._codec_mismatch() or error)
                raise SourceError(f"{self.shown}: {self._file_error(error)}")
            if self.live and not self._pulled_here and (mismatch := self._codec_mismatch()):
                raise _Failure(mismatch)  # before any error: some post none (a JPEG camera's stream)
            if self.appsink.is_eos():
                if self.live:
                    raise _Failure("end of stream")
                return None
            waited += POLL_S
            if 0 < self.options.timeout_s <= waited:  # 0: silence is normal (a camera triggered by the parts)
                silence = f"no frame for {self.options.timeout_s:g} s"
                if self.live:
                    raise _Failure(self._what_packets_say(silence))
                raise SourceError(f"{self.shown}: {self._file_error(silence)}")
        return None

    def _what_packets_say(self, silence: str) -> str:
        """`silence` ("no frame for N s"), with what an RTP or UDP source's packets tell of it: none
        came (a sender sending elsewhere, a firewall), they are RTP sent to udp:// or not RTP sent
        to rtp://, hold video of none of RTP_CODECS, no key frame came, or no MJPEG picture came whole;
        for an RTSP camera's MJPEG asked over UDP, that a lost packet loses a picture."""
        if self._rtp is None:
            if (self.uri.startswith("rtsp://") and self.options.codec == "mjpeg" and self.options.transport == "udp"
                    and not self._pulled_here):
                return (f"{silence}: MJPEG over UDP (--rtsp-transport udp): a picture is hundreds of packets, and "
                        "one lost loses it; leave the option out (MJPEG goes over TCP then), or raise "
                        f"net.core.rmem_max, which caps the {UDP_BUFFER_BYTES >> 20} MiB UDP buffer edge-ad asks for "
                        "unless it runs with CAP_NET_ADMIN (as root, or under the unit edge-ad service writes)")
            return silence
        port = urlparse(self.uri).port
        no_key_frame = ("no key frame with its parameter sets came among them (key frames further apart than "
                        "--timeout, or parameter sets sent only at the sender's start: {how} sends them with each "
                        "key frame)")
        if not self._rtp.packets:
            return (f"{silence}: no packet came to UDP port {port} (does the sender send to this device's "
                    f"address and this port, and does a firewall let UDP {port} in?)")
        if self.uri.startswith("udp://"):
            if self._rtp.heads:
                return f"{silence}: RTP packets come to UDP port {port}: read them as rtp://@:{port}"
            return f"{silence}: packets come to UDP port {port}, but no picture was decoded: if they are MPEG-TS, " \
                + no_key_frame.format(how="h264parse/h265parse config-interval=-1, or ffmpeg's -bsf:v dump_extra,")
        if not self._rtp.heads:
            return (f"{silence}: packets come to UDP port {port}, but not RTP ones (MPEG-TS sent straight over UDP? "
                    f"read it as udp://@:{port})")
        if len(self._rtp.heads) >= HEADS and self._rtp.codec() is None:
            return (f"{silence}: RTP packets come ({self._rtp.payload_name()}), but they hold none of "
                    f"{_either(RTP_CODECS.values())} video")
        if self._rtp.codec() == "mjpeg" and not self._pulled_here:
            return (f"{silence}: RTP packets of MJPEG video come, but no picture came whole: a picture is hundreds "
                    "of packets, and one lost loses it (the kernel's UDP buffer, which edge-ad asks to be "
                    f"{UDP_BUFFER_BYTES >> 20} MiB, is capped at net.core.rmem_max unless it runs with CAP_NET_ADMIN, "
                    "as root or under the unit edge-ad service writes: raise that, or lower the sender's resolution "
                    "or JPEG quality)")
        if self._rtp.codec() is not None and not self._pulled_here:
            how = "h264parse/h265parse config-interval=-1 before the muxer" if self._rtp.codec() == "mpegts" \
                else "rtph264pay/rtph265pay config-interval=-1"
            return f"{silence}: RTP packets of {RTP_CODECS[self._rtp.codec()]} video come, but " \
                + no_key_frame.format(how=how)
        return silence

    def _codec_mismatch(self) -> str | None:
        """What to say when an RTSP camera's or an RTP sender's video is not in the codec its
        pipeline reads (H.264 unless --input-codec says otherwise; many cameras send H.265), of
        which GStreamer says no more than "Internal data stream error", or nothing at all: the
        pipeline is then made for the codec sent, when edge-ad reads it, and the reconnection
        reads it. None when the codecs agree, or the camera has not said yet (RTSP: its stream's
        description; RTP: its first packets, see `rtp_packets`)."""
        if self._custom:
            return None
        if self.uri.startswith(("rtsp://", "rtsps://")):
            sent, sender = rtsp_codec(self.pipeline), "camera"
        elif self.uri.startswith("rtp://") and self._rtp is not None:
            sent, sender = self._rtp.codec(), "sender"
        else:
            return None
        reading = (self.options.codec or "h264").lower()
        if sent is None or sent == reading:
            return None
        if sent not in RTP_CODECS:  # an RTSP camera's, by its stream's description (MP2T is not MPEG-TS's name there)
            return (f"the camera sends {sent.upper()} video, which edge-ad does not read from RTSP; set the camera's "
                    f"stream to {_either(STREAM_CODECS.values())}")
        self.options = replace(self.options, codec=sent)
        self.spec = source_pipeline(self.uri, self.options, self._jetson)
        self.description = self.spec.description
        return (f"the {sender} sends {RTP_CODECS[sent]} video, not {RTP_CODECS.get(reading, reading)}: read "
                f"as {RTP_CODECS[sent]} from now on (--input-codec {sent}, or codec: {sent} in --sources, reads it "
                "so from the start)")

    def _file_error(self, error: str) -> str:
        """GStreamer's error for a file (or its silence: "no frame for N s"), and what it means when
        the file gave no frame: GStreamer says "Internal data stream error" of a file without video
        (a sound recording), at times nothing at all, and "Could not determine type of stream" of
        one that is no media file at all."""
        if self._custom or self._pulled_here:
            return error
        kinds = decoded_media(self.pipeline)
        if kinds and "video" not in kinds:
            return f"the file holds no video, only {' and '.join(sorted(set(kinds)))} ({error})"
        if error.endswith("(typefind)"):
            return f"not a video file that GStreamer recognises ({error})"
        return error

    def _reconnect(self, reason: str | None, stop: threading.Event) -> None:
        """Restart the pipeline until it starts, waiting 1, 2, 4 ... 30 s between attempts. The
        wait goes on growing until a frame comes, not only until the pipeline starts: an RTSP
        camera that is off, or refuses the login, lets rtspsrc start and fails it a moment later,
        and must not be asked again every second (cameras lock an account out after a few failed
        logins, and each attempt logs two lines). `reason` None: said already (a camera waited for)."""
        self.close()
        said = reason is None or self._outage.due(self._backoff, reason)
        if said and reason is not None:
            log.warning("%s: %s; reconnecting in %.0f s%s", self.shown, reason, self._backoff.wait,
                        self._outage.note(self._backoff))
        while not stop.is_set():
            self._attempt += 1
            if self._backoff.sleep(stop):
                return
            if said:
                log.warning("%s: reconnection attempt %d", self.shown, self._attempt)
            try:
                self._start()
            except SourceError as exc:  # a _NotStarted's reason without the source's name, which the line has
                failure = without_passwords(exc.reason if isinstance(exc, _NotStarted) else str(exc))
                if said := self._outage.due(self._backoff, failure):
                    log.warning("%s: attempt %d failed: %s; next in %.0f s%s", self.shown, self._attempt, failure,
                                self._backoff.wait, self._outage.note(self._backoff))
                continue
            self.reconnects += 1
            return

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Frames until the file ends or `stop` is set; live sources reconnect when they fail."""
        Gst = self._Gst
        stop = stop or threading.Event()
        index = -1
        self.passes = 1
        # Stream time goes on over the passes of a looped file: a new pass starts one frame after
        # the last one's last frame.
        offset = last = gap = 0.0
        next_pass_at: float | None = None
        pts = Gst.CLOCK_TIME_NONE
        try:
            while not stop.is_set():
                if self._waited:
                    self._waited = False
                    self._reconnect(None, stop)
                    continue
                if self.pipeline is None:
                    self._start()
                try:
                    sample = self._pull(stop)
                except _Failure as failure:
                    self._reconnect(str(failure), stop)
                    continue
                if sample is None:
                    if self.passes == 1 and not stop.is_set():
                        self._warn_if_cut_short(pts)
                    if stop.is_set() or not self._play_again():
                        return
                    self.close()  # the next pass starts the pipeline again; frame numbers go on
                    next_pass_at = last + (1 / self.fps if self.fps else gap)
                    continue
                pts = sample.get_buffer().pts
                if next_pass_at is not None and pts != Gst.CLOCK_TIME_NONE:
                    offset, next_pass_at = next_pass_at - pts / Gst.SECOND, None
                timestamp = offset + pts / Gst.SECOND if pts != Gst.CLOCK_TIME_NONE else time.time()
                gap, last = timestamp - last, timestamp
                index = max(index + 1, self._number(pts, index + 1))
                yield Frame(index, timestamp, self._to_array(sample), self.shown)
        finally:
            self.close()

    def _warn_if_cut_short(self, last_pts: int) -> None:
        """At the end of a file: a warning when its last frame (`last_pts`) ends well before the
        duration its header gives. GStreamer ends a file cut short (a copy not finished, a
        recording stopped by a full disk) with an end of stream, not an error, so without this the
        frames it lacks would go unmentioned."""
        Gst = self._Gst
        ok, duration = self.pipeline.query_duration(Gst.Format.TIME)
        if last_pts == Gst.CLOCK_TIME_NONE or not ok or duration <= 0:
            return  # no frame, or a stream without a duration (an elementary .h264)
        end = last_pts / Gst.SECOND + (1 / self.fps if self.fps else 0.0)
        total = duration / Gst.SECOND
        if total - end > max(CUT_SHORT_S, 0.05 * total):
            log.warning("%s: ended at %.1f s of the %.1f s its header gives; the file may be cut short",
                        self.shown, end, total)

    def _play_again(self) -> bool:
        """At the end of a file: whether `options.loop` asks for another pass (counted). A pass
        that gave no frame ends it: looping over nothing would only spin."""
        if self._pulled_here == 0 or (self.options.loop != -1 and self.passes > self.options.loop):
            return False
        self.passes += 1
        return True

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.set_state(self._Gst.State.NULL)
            self.pipeline = None


RTSP_HINTS = {  # rtspsrc's errors, by their message
    "Not found": "the camera answers, but has no stream at this path; each make has its own (Hikvision "
                 "/Streaming/Channels/101, Dahua /cam/realmonitor?channel=1&subtype=0, Axis /axis-media/media.amp): "
                 "edge-ad cameras --user USER lists the camera's stream URLs (ONVIF)",
    "Unauthorized": "the camera refused the user and password in the URL (cameras lock an account for a while after "
                    "a few wrong ones; the retries wait longer each time)",
    "Could not open resource for reading and writing": "the camera cannot be reached: is its name or address "
                                                       "right, is it on, and is RTSP on at the URL's port (554 if "
                                                       "none)?",
}


V4L2_HINTS = {  # v4l2src's errors, by how they start
    "Cannot identify device": "no such camera now: unplugged, or numbered otherwise since a reboot or a replug "
                              "(/dev/v4l/by-id/ names each USB camera for good: ls -l /dev/v4l/by-id)",
    "Could not open device": "is this user in the video group? sudo usermod -aG video $USER, then log in again",
}


def with_hint(description: str, error: str) -> str:
    """`error`, with what helps where GStreamer's message does not. A CSI camera's
    nvarguscamerasrc: Argus can keep the capture session of a process that ended ("Failed to
    create CaptureSession"), and only a restart of its daemon frees it. An HTTP camera that does
    not answer: souphttpsrc says only "Internal data stream error"; one that answers with a still
    picture or a page, "Could not demultiplex stream". An RTSP camera: rtspsrc's "Not found",
    "Unauthorized" and "Could not open resource for reading and writing" say no more of a wrong
    stream path, login, or address. A USB camera: v4l2src's of one gone, busy or not this user's.
    Live sources retry by themselves; this says what else to do."""
    rtsp = re.fullmatch(r"(.+?)\.? \(rtspsrc\d+\)", error) if description.startswith("rtspsrc ") else None
    if rtsp and rtsp[1] in RTSP_HINTS:
        hint = RTSP_HINTS[rtsp[1]]
        if rtsp[1] == "Unauthorized" and "@" not in urlparse(re.search(r'location="([^"]*)"', description)[1]).netloc:
            hint = "the camera asks for a login: give it in the URL, rtsp://USER:PASSWORD@camera/..."
        return f"{error}: {hint}"
    if "nvarguscamerasrc" in description:
        return f"{error} (if the camera keeps failing: sudo systemctl restart nvargus-daemon)"
    if description.startswith("v4l2src "):
        device = re.search(r"'([^']*)'", error)
        if device and error.startswith("Device ") and "is busy" in error:
            return (f"{error}: another program has the camera open (another edge-ad run or its service, a viewer): "
                    f"fuser -v {device[1]} names it")
        for start, hint in V4L2_HINTS.items():
            if error.startswith(start):
                return f"{error}: {hint}"
    if "souphttpsrc" in description and error.startswith("Internal data stream error. (souphttpsrc"):
        return f"{error}: no answer (is the camera on, and its address and port right?)"
    if "souphttpsrc" in description and "(multipartdemux" in error:
        return (f"{error}: the URL answers, but not with an MJPEG stream (multipart/x-mixed-replace): give the "
                "camera's MJPEG stream or its rtsp:// URL, or for a still picture's URL --input-codec jpeg, which "
                "fetches it again and again")
    return error


def crop_frame(image: np.ndarray, crop: tuple[int, int, int, int] | None, uri: str) -> np.ndarray:
    """The part of the frame `crop` (x, y, width, height) keeps, as a view; all of it without a crop."""
    if crop is None:
        return image
    x, y, width, height = crop
    if x + width > image.shape[1] or y + height > image.shape[0]:
        raise SourceError(f"{uri}: --input-crop {x},{y},{width},{height} reaches outside the "
                          f"{image.shape[1]}x{image.shape[0]} frame")
    return image[y : y + height, x : x + width]


def picture_frame(rgb: np.ndarray, turn: Callable[[np.ndarray], np.ndarray], crop: tuple[int, int, int, int] | None,
                  name: str) -> np.ndarray:
    """A picture read as RGB (images.read_image) as a frame of its source: BGR, turned as
    --input-flip asks, cropped as --input-crop asks, in memory of its own."""
    return np.ascontiguousarray(crop_frame(turn(rgb[..., ::-1]), crop, name))


class PictureSource:
    """Image files of a folder in name order (or one image file, or those a pattern matches, in
    path order), `loop` more times after the first (-1: for ever); unreadable files are reported
    and skipped."""

    live = away = False
    dropped = reconnects = 0
    fps = None

    def __init__(self, path: Path, flip: str = "none", loop: int = 0, crop: tuple[int, int, int, int] | None = None):
        """`path`: a folder, a picture or a wildcard (pipelines.opencv_input)."""
        self.uri = self.shown = str(path)
        self.loop, self.crop = loop, crop
        self.description = f"{opencv_input(str(path))} {path}" + (f", flipped {flip}" if flip != "none" else "")
        self.turn = flip_of(str(path), flip).turn
        # frames are named by their path under it: a wildcard's 'cams/*/part_*.jpg' as cam1/part_1.jpg
        self.folder = path.parent if path.is_file() else path if path.is_dir() else pattern_folder(str(path))
        self.files = self._listed = pictures_of(path)
        if beside := masks_beside(self.files):  # as a labelling tool exports them (000_mask.png)
            log.warning("%s", masks_left_text(path, sorted(beside.values())))
            masks = set(beside.values())
            self.files = [p for p in self.files if p not in masks]
        if path.is_dir():
            if not self.files:
                raise SourceError(no_images_in(path))
            if left := subfolders_left(path):
                log.warning("%s", left)
        elif not self.files:
            raise SourceError(f"{path}: no picture matches this pattern (the suffixes read: "
                              f"{', '.join(IMAGE_SUFFIXES)})")
        self.skipped: list[str] = []

    @functools.cached_property
    def masks(self) -> dict[Path, Path | None]:
        """What says which parts the pictures show, by picture (images.masks_of): looked for only
        where asked (a label folder is one more listing of each folder of a wildcard's)."""
        return masks_of(self._listed)

    def keep_only(self, defective: bool, why: str) -> None:
        """Leave out the pictures whose mask says they are of other parts than those read: of
        defective parts where good ones are (`defective` False: calibrate's normal frames, record's
        pictures to train on), of good parts (a mask marking nothing, or none in a folder with a
        label folder: images.masks_of) where known defects are; pictures without a mask stay. Said
        with how many, the first, and `why`."""
        from .datasets import marked, marked_left_text

        other = marked(self.masks, not defective)
        if other:
            log.warning("%s", marked_left_text(self.uri, other, not defective, why))
            left = set(other)
            self.files = [p for p in self.files if p not in left]
            if not self.files:
                raise SourceError(f"{self.uri}: no picture left to read (above)")

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        index = passes = 0
        while index > 0 or passes == 0:  # a pass without one readable image ends it
            passes += 1
            for path in self.files:
                if stop is not None and stop.is_set():
                    return
                try:
                    rgb = read_image(path)
                except ImageError as exc:
                    if passes == 1:
                        self.skipped.append(str(exc))
                        log.warning("%s", exc)
                    continue
                image = picture_frame(rgb, self.turn, self.crop, str(path))
                yield Frame(index, time.time(), image, os.path.relpath(path, self.folder))
                index += 1
            if index == 0:  # a run, a calibration or a recording that saw nothing would seem to have passed
                raise SourceError(f"{self.uri}: no picture could be read ({len(self.skipped)} unreadable, above)")
            if self.loop != -1 and passes > self.loop:
                return

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def close(self) -> None:
        """Nothing to release; present so every source can be closed the same way."""


Source = Union[GstSource, PictureSource, "FollowedPictures", "HttpPictures"]


def settling(source: Source, frame: Frame) -> bool:
    """Whether `frame` of `source` came while its camera's exposure settles: in the first SETTLE_S
    after a start of a camera that exposes by itself (SourcePipeline.settles: USB, CSI, a GenICam
    camera set so, one's own pipeline's), dark or blown out. Calibrations and recordings leave
    such frames out: taken as normal, they would set the threshold above them, or be trained on
    as good parts. `run` judges every frame."""
    return isinstance(source, GstSource) and source.spec.settles and frame.arrived - source.started < SETTLE_S


def settled_frames(source: Source, stop: threading.Event | None = None) -> Iterator[Frame]:
    """The frames of `source` but those `settling`, for `calibrate` and `record`."""
    return (frame for frame in source.frames(stop) if not settling(source, frame))


def open_source(
    uri: str, options: SourceOptions | None = None, pipeline: str | None = None, jetson: bool | None = None,
    wait: bool = False,
) -> Source:
    """A frame source for a URI (test://, csi://N, /dev/videoN, rtsp://, rtp://, udp:// MPEG-TS,
    http:// MJPEG, a video file), an image folder, picture or wildcard (followed with
    `options.follow`), or the user's own GStreamer `pipeline` ending in `appsink name=sink`.
    `wait`: a camera that does not start is tried again, not refused (GstSource)."""
    options = options or SourceOptions()
    options = replace(options, crop=check_crop(uri or "pipeline", options.crop))  # a YAML list becomes a tuple
    if isinstance(options.loop, bool) or not isinstance(options.loop, int) or options.loop < -1:
        raise SourceError(f"{uri or 'pipeline'}: loop {options.loop!r} is not a number of repeats (-1: for ever)")
    if not uri and pipeline is None:
        raise SourceError("no input: give --input (a camera, stream, video file or folder) or --pipeline")
    if options.follow:
        from .followed_pictures import follow  # (here: that module imports this one, as http_pictures does)

        return follow("" if pipeline is not None else uri, options)
    from .http_pictures import HttpPictures, is_http_pictures

    if pipeline is None and is_http_pictures(uri, options):
        return HttpPictures(uri, options)
    if pipeline is not None:
        return GstSource(uri or "pipeline", options, pipeline=pipeline)
    if opencv_input(uri):
        return PictureSource(local_path(uri), options.flip, options.loop, options.crop)
    return GstSource(uri, options, jetson=jetson, wait=wait)
