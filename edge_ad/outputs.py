"""Video outputs of `edge-ad run`: the overlay video to a file, an RTP or RTSP stream, a display,
or a web browser (edge_ad.mjpeg).

Frames are pushed into an appsrc with their source's timestamps, so the video plays at the input
frame rate; H.264 comes from nvv4l2h264enc on a Jetson and x264enc elsewhere. RTSP outputs are
served by gst-rtsp-server (gir1.2-gst-rtsp-server-1.0) to every client that connects; those on one
port share its server, each at its own path (rtsp://DEVICE:8554/cam1, /cam2), as the MJPEG
outputs on one port share theirs.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np

from . import connection_limit
from .errors import EdgeAdError, SourceError, listen_reason, parsed_uri, uri_port
from .files import made_folder
from .mjpeg import MjpegOutput, mjpeg_description
from .output_access import HTTP_OUTPUTS, RTSP_OUTPUTS, OutputAccess, viewer_permissions
from .picture_output import is_picture_output, picture_description, picture_name_problem
from .pipelines import output_pipeline, rtsp_launch
from .sinks import ReportDue
from .sources import bus_error, load_gst

log = logging.getLogger("edge_ad.outputs")

EOS_WAIT_S = 1.0  # how long close() waits for the muxer to finish a file
QUEUED_FRAMES = 10  # frames that may wait for an output's encoder; more are left out or waited for
STALL_S = 10.0  # how long a write waits for an encoder that takes no frame before it gives up
DISK_RESERVE_BYTES = 1 << 30  # what a video file leaves free on its disk, for events and pictures
ROTATE_BYTES = 64 << 20  # a video file this large goes on in a new one while its disk is short
ROOM_CHECK_S = 1.0  # how often the free room on a video file's disk is looked at
# The most a request to an RTSP output may carry after its headers: a viewer's GET_PARAMETER or
# SET_PARAMETER holds a few names. gst-rtsp-server took whatever Content-Length said, and a
# client announcing 2 GB had them all kept (300 MB sent, 300 MB more resident).
RTSP_BODY_BYTES = 1 << 16
# The largest video picture (width, height): what a screen or a browser shows whole, and a
# Jetson's encoder takes at the camera's rate. Snapshots keep a larger camera's full frame.
OUTPUT_LIMIT = (1920, 1080)


def encoder_behind(appsrc, frame_bytes: int) -> bool:
    """Whether QUEUED_FRAMES frames of `frame_bytes` wait in `appsrc` for the encoder already."""
    return appsrc.get_property("current-level-bytes") >= QUEUED_FRAMES * frame_bytes


def push_frame(Gst, appsrc, image: np.ndarray, pts_s: float | None = None, duration_s: float | None = None):
    """Queue BGR `image` in `appsrc`: the flow it returned, or None when the frame was left out
    because QUEUED_FRAMES frames wait already. appsrc keeps every frame it is given, so an
    encoder that falls behind (x264enc on a board without a hardware encoder) would otherwise
    hold the frames that come faster than it in memory until none is left."""
    if encoder_behind(appsrc, image.nbytes):
        return None
    buffer = Gst.Buffer.new_wrapped(np.ascontiguousarray(image).tobytes())
    if pts_s is not None and duration_s is not None:
        buffer.pts, buffer.duration = int(pts_s * Gst.SECOND), int(duration_s * Gst.SECOND)
    return appsrc.emit("push-buffer", buffer)


class _LeftOut:
    """Counts the frames an output left out, and says so (see ReportDue)."""

    def __init__(self, uri: str):
        self.uri, self.frames, self._report_due = uri, 0, ReportDue()

    def add(self) -> None:
        self.frames += 1
        if self._report_due():
            log.warning("output %s: its encoder falls behind the frames; %d left out of the video so far",
                        self.uri, self.frames)


def _numbered(path: Path) -> dict[Path, int]:
    """The files `path` (x.mp4, number 1) and x-2.mp4, x-3.mp4, ... by their number."""
    named = re.compile(re.escape(path.stem) + r"(?:-([0-9]+))?" + re.escape(path.suffix))
    found = ((p, named.fullmatch(p.name)) for p in path.parent.iterdir())
    return {p: int(match.group(1) or 1) for p, match in found if match and p.is_file()}


def unused_path(path: Path) -> Path:
    """`path` (x.mp4), or when it or a file numbered after it is there, x-N.mp4 numbered one past
    the highest: a run that starts again (a service restarted after a failure, a second run by
    hand) keeps the video of the one before, which shows what led up to the failure, and the
    numbers follow the order the videos were made in. A named pipe is written into."""
    numbers = _numbered(path).values()
    return path.with_name(f"{path.stem}-{max(numbers) + 1}{path.suffix}") if numbers else path


class DiskRoom:
    """Keeps the video files of `--output x.mp4` from filling the disk that events, snapshots and
    samples share, as a video recorder does: while less than DISK_RESERVE_BYTES is free, the oldest
    of them go (an earlier run's too), and `check` asks for a new file when the one being written
    is the only one left to delete and has grown to ROTATE_BYTES. Room taken by anything else is
    not theirs to make: the video then stops at a full disk as any file would."""

    def __init__(self, path: Path):
        self.path, self._next = path, 0.0

    def _short(self) -> bool:
        return shutil.disk_usage(self.path.parent).free < DISK_RESERVE_BYTES

    def check(self, current: Path) -> bool:
        """Whether to close `current` and go on in a new file; looks every ROOM_CHECK_S."""
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + ROOM_CHECK_S
        if not self._short():
            return False
        numbered = _numbered(self.path)
        for old in sorted(numbered, key=numbered.get):  # the oldest first
            if old != current:
                size = old.stat().st_size
                old.unlink(missing_ok=True)
                log.warning("output %s: under %d MB free on its disk: deleted its oldest video %s (%d MB)",
                            self.path, DISK_RESERVE_BYTES >> 20, old, size >> 20)
                if not self._short():
                    return False
        # A file deleted by hand to make room frees it only once closed.
        return not current.exists() or current.stat().st_size >= ROTATE_BYTES


class VideoOutput:
    """A GStreamer pipeline from `appsrc name=src` to a file (a new one: see `unused_path`), an
    RTP stream or a display. The frames of a `live` source (a camera) that find QUEUED_FRAMES
    waiting for the encoder are left out, as a camera drops the frames nobody takes; else (a
    video file scored faster than it encodes) `write` waits for the encoder, so that every frame
    is in the video."""

    def __init__(self, uri: str, width: int, height: int, fps: int, jetson: bool | None = None,
                 bitrate_kbps: int | None = None, live: bool = False):
        Gst = self._Gst = load_gst()
        if "://" not in uri:  # a file: its folder is made, as for --events and --snapshots
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            uri = str(unused_path(Path(uri)))
        self.uri, self.size = uri, (width, height)
        self.description = output_pipeline(uri, width, height, fps, jetson, bitrate_kbps)
        try:
            self.pipeline = Gst.parse_launch(self.description)
        except Exception as exc:
            raise SourceError(f"{uri}: cannot build output pipeline '{self.description}': {exc}") from exc
        self.appsrc = self.pipeline.get_by_name("src")
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            error = bus_error(self.pipeline) or "output pipeline failed to start"
            self.pipeline.set_state(Gst.State.NULL)
            raise SourceError(f"{uri}: {error}")
        display = self.pipeline.get_by_name("display")  # autovideosink; a Jetson's nv3dsink says itself
        if display is not None and display.get_child_by_index(0).get_factory().get_name() == "fakesink":
            self.pipeline.set_state(Gst.State.NULL)
            raise SourceError(f"{uri}: no screen to show the video on (no X11, Wayland or KMS display that "
                              "GStreamer's video sinks could open, as under a service or in an ssh session); "
                              "set DISPLAY to the desktop's (DISPLAY=:0), or watch in a browser: "
                              "--output http://@:8080/NAME")
        self.frame_s, self.live = 1.0 / fps, live
        self._first: float | None = None  # the source's time at the video's start
        self._last = -1.0  # the video time of the last frame pushed
        self.error: str | None = None  # the pipeline's, once it stopped: every later write raises it
        self.left_out = _LeftOut(uri)

    def _raise_if_stopped(self) -> None:
        error = self.error or bus_error(self.pipeline)
        if error:
            self.error = error  # a stopped pipeline's appsrc would take and keep every later frame
            raise SourceError(f"{self.uri}: {error}")

    def _wait_for_room(self, frame_bytes: int) -> None:
        given_up = time.monotonic() + STALL_S
        while encoder_behind(self.appsrc, frame_bytes):
            self._raise_if_stopped()
            if time.monotonic() > given_up:
                self.error = f"the encoder took no frame in {STALL_S:.0f} s"
                raise SourceError(f"{self.uri}: {self.error}")
            time.sleep(0.005)

    def wants_frame(self) -> bool:
        """Whether `write` would use a frame now: a live source's is left out (and counted) while
        the encoder falls behind, before its overlay is drawn for nothing (a 12-megapixel overlay
        takes 100 ms or more); a file's always is (it waits for the encoder)."""
        if self.live and encoder_behind(self.appsrc, self.size[0] * self.size[1] * 3):
            self.left_out.add()
            return False
        return True

    def write(self, image: np.ndarray, timestamp: float) -> None:
        """Push one BGR frame; `timestamp` in seconds (the source's), re-based to start at 0."""
        Gst = self._Gst
        self._raise_if_stopped()
        if image.shape[1::-1] != self.size or image.ndim != 3:
            raise SourceError(f"{self.uri}: frame of shape {image.shape} does not match the output's {self.size}")
        if self._first is None:
            self._first = timestamp
        if timestamp - self._first <= self._last:
            # The source's time went back (a camera reconnected starts again at 0), which the MP4
            # muxer refuses: the video goes on one frame after the last one.
            self._first = timestamp - self._last - self.frame_s
        if not self.live:
            self._wait_for_room(image.nbytes)
        flow = push_frame(Gst, self.appsrc, image, timestamp - self._first, self.frame_s)
        if flow is None:
            self.left_out.add()
        elif flow != Gst.FlowReturn.OK:
            raise SourceError(f"{self.uri}: the output pipeline refused a frame ({flow.value_nick})")
        else:
            self._last = timestamp - self._first

    def close(self) -> None:
        """Send end-of-stream so files are finished (MP4 needs its index), then stop. A file that
        nothing was written into (a full disk) is removed."""
        Gst = self._Gst
        if self.error is None:
            self.appsrc.emit("end-of-stream")
            self.pipeline.get_bus().timed_pop_filtered(
                int(EOS_WAIT_S * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR
            )
        self.pipeline.set_state(Gst.State.NULL)
        path = Path(self.uri)
        if "://" not in self.uri and path.is_file() and path.stat().st_size == 0:
            path.unlink()


def rtsp_server(uri: str):
    """GLib and GstRtspServer, for an RTSP output `uri`; what to install when they are missing."""
    load_gst()  # first: it keeps C++ exceptions working once GStreamer's libraries are in (see there)
    try:
        import gi

        gi.require_version("GstRtsp", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, GstRtspServer
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{uri}: RTSP output needs gst-rtsp-server (apt-get install gir1.2-gst-rtsp-server-1.0)") from exc
    return GLib, GstRtspServer


def listen_problem(host: str, port: int) -> str | None:
    """Why a server cannot listen on TCP `port` of `host` ("": every interface), in the system's
    words, or None when it can."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            return listen_reason(exc)
    return None


def check_servable(outputs: list[str]) -> None:
    """Refuses, before any frame, RTSP and HTTP outputs that could not be served: a port that
    another program listens on, or that this user may not take (RTSP's own 554), and one port
    given to outputs of both kinds. (Opened at the first frame, they failed there, and again every
    few seconds for the whole run, while it scored on.)"""
    kinds: dict[int, str] = {}  # port -> the first output on it
    for uri in outputs:
        if not uri.startswith(RTSP_OUTPUTS + HTTP_OUTPUTS):
            continue
        parsed, port = parsed_uri(uri), uri_port(uri)
        if port == 0:  # served, but on a port the system picks and nobody is told
            raise EdgeAdError(f"--output {uri}: port 0 would be a free port the system picks, which no viewer would "
                              "know; name the port, as in rtsp://@:8554/inspection or http://@:8080/line1")
        if port in kinds:
            if kinds[port].startswith(RTSP_OUTPUTS) != uri.startswith(RTSP_OUTPUTS):
                raise EdgeAdError(f"--output {uri}: port {port} is taken by --output {kinds[port]}; an RTSP and an "
                                  "HTTP output need ports of their own (outputs of one kind share theirs)")
            continue
        kinds[port] = uri
        host = "" if uri.startswith(RTSP_OUTPUTS) or parsed.hostname in (None, "@") else parsed.hostname
        if port is not None and (problem := listen_problem(host, port)):
            raise EdgeAdError(f"--output {uri}: cannot listen on port {port} ({problem})")


def make_file_folders(outputs: list[str]) -> None:
    """Makes the folder of each video file output before any frame, refusing one that cannot be
    made, as --events and --snapshots are refused: opened at the first frame, such an output
    failed there, and at every frame after, while the run scored on."""
    for uri in outputs:
        if "://" in uri or is_picture_output(uri):  # picture outputs make their folder as they open
            continue
        made_folder(Path(uri).parent, "video", f"--output {uri}")


def resolve_rtp_hosts(outputs: list[str]) -> None:
    """Refuses, before any frame, an RTP output whose host does not resolve: udpsink sends such a
    video nowhere and says so only in GStreamer's debug log, and resolves it once, as it starts
    (a service waits for the network: edge-ad.service's network-online.target)."""
    for uri in outputs:
        if not uri.startswith("rtp://"):
            continue
        host = parsed_uri(uri).hostname
        if host is None:
            continue  # output_description says what an RTP output needs
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError as exc:  # socket.gaierror
            raise EdgeAdError(f"--output {uri}: {host} does not resolve ({exc.strerror or exc}): the video would go "
                              "nowhere; give the receiver's address, or a name this machine's DNS or /etc/hosts "
                              "knows") from exc


class _RtspServer:
    """The gst-rtsp-server of one port, serving in a thread of its own, and its outputs' paths."""

    def __init__(self, uri: str, port: int, access: OutputAccess):
        GLib, GstRtspServer = rtsp_server(uri)
        self.port, self.paths = port, set()
        self.server = GstRtspServer.RTSPServer()
        self.server.set_service(str(port))
        self.server.set_backlog(connection_limit.LISTEN_BACKLOG)
        # Clients in the server's own thread (the pool's default is one of their own): a client
        # refused past the limit is closed from that thread, which closing it from another one
        # raced with its reading, about once in 2,000 under load, leaving a watch that spun on
        # the closed connection (GLib-GIO-CRITICAL by the hundred thousand, the client never closed).
        self.server.get_thread_pool().set_max_threads(0)
        if auth := access.rtsp_auth(GstRtspServer):
            self.server.set_auth(auth)
        self.mounts = self.server.get_mount_points()
        self.context = GLib.MainContext.new()
        self._GLib, self._refusals = GLib, connection_limit.RefusedConnections(f"the RTSP outputs on port {port}")
        self.server.connect("client-connected", self._limit_clients)
        self.source_id = self.server.attach(self.context)
        if self.source_id == 0:
            raise SourceError(f"{uri}: cannot listen on port {port} ({listen_problem('', port) or 'refused'})")
        self.loop = GLib.MainLoop.new(self.context, False)
        self.thread = threading.Thread(target=self.loop.run, name=f"rtsp :{port}", daemon=True)
        self.thread.start()

    def _limit_clients(self, server, client) -> None:
        """Bounds the body of a client's requests (RTSP_BODY_BYTES); closes a client past
        MAX_CONNECTIONS (the server lists those before it, not it yet), once the server has set it
        up: closed within this signal, the server goes on to set up a closed connection
        (GStreamer-RTSP-CRITICAL assertions)."""
        if len(server.client_filter(None)) < connection_limit.MAX_CONNECTIONS:
            client.get_connection().set_content_length_limit(RTSP_BODY_BYTES)
            return
        self._refusals.refused(client.get_connection().get_ip(), connection_limit.MAX_CONNECTIONS)
        later = self._GLib.idle_source_new()
        later.set_priority(self._GLib.PRIORITY_HIGH)  # before the server reads what the client sent
        later.set_callback(lambda *_: client.close())
        later.attach(self.context)

    def stop(self) -> None:
        """Stop serving: the listening socket is released with the server's GLib source."""
        source = self.context.find_source_by_id(self.source_id)
        if source is not None:
            source.destroy()
        self.loop.quit()
        self.thread.join(timeout=1.0)


_rtsp_servers: dict[int, _RtspServer] = {}
_rtsp_servers_lock = threading.Lock()


class RtspOutput:
    """rtsp://@:port/path (rtsps:// over TLS): a gst-rtsp-server mount that every client shares,
    to the viewers `access` lets in; frames are dropped while no client is connected."""

    def __init__(self, uri: str, width: int, height: int, fps: int, jetson: bool | None = None,
                 bitrate_kbps: int | None = None, access: OutputAccess = OutputAccess()):
        self._Gst = load_gst()
        _, GstRtspServer = rtsp_server(uri)
        parsed = parsed_uri(uri)
        if uri_port(uri) is None or not parsed.path.strip("/"):
            raise SourceError(f"{uri}: an RTSP output needs a port and a path, as in rtsp://@:8554/inspection")
        self.uri, self.size = uri, (width, height)
        self.path = "/" + parsed.path.strip("/")
        self.description = rtsp_launch(width, height, fps, jetson, bitrate_kbps)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(self.description)
        factory.set_shared(True)
        factory.set_permissions(viewer_permissions(GstRtspServer))
        if uri.startswith("rtsps://"):  # the video inside the TLS connection, never as plain RTP over UDP
            from gi.repository import GstRtsp

            factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        factory.connect("media-configure", self._configure)
        with _rtsp_servers_lock:
            server = _rtsp_servers.get(parsed.port) or _RtspServer(uri, parsed.port, access)
            if self.path in server.paths:
                raise SourceError(f"{uri}: another output already serves {self.path} on port {parsed.port}")
            server.mounts.add_factory(self.path, factory)
            server.paths.add(self.path)
            _rtsp_servers[parsed.port] = server
        self.server = server
        self.appsrc = None
        self.left_out = _LeftOut(uri)

    def _configure(self, factory, media) -> None:
        self.appsrc = media.get_element().get_by_name("src")
        media.connect("unprepared", self._unprepared)

    def _unprepared(self, media) -> None:
        self.appsrc = None

    def wants_frame(self) -> bool:
        """Whether a client is connected (frames are left out while none is) and the encoder
        keeps up (frames are left out, and counted, while it falls behind)."""
        appsrc = self.appsrc
        if appsrc is None:
            return False
        if encoder_behind(appsrc, self.size[0] * self.size[1] * 3):
            self.left_out.add()
            return False
        return True

    def write(self, image: np.ndarray, timestamp: float) -> None:
        appsrc = self.appsrc
        if appsrc is None:
            return
        # No time given: the appsrc timestamps it (do-timestamp), so clients can join at any time.
        if push_frame(self._Gst, appsrc, image) is None:
            self.left_out.add()

    def close(self) -> None:
        """Stop serving this path; the last output on a port releases it."""
        with _rtsp_servers_lock:
            self.server.mounts.remove_factory(self.path)
            self.server.paths.discard(self.path)
            if not self.server.paths:
                self.server.stop()
                _rtsp_servers.pop(self.server.port, None)


def output_description(
    uri: str, width: int, height: int, fps: int, jetson: bool | None = None, bitrate_kbps: int | None = None
) -> str:
    """What `open_output` would run for `uri`: its GStreamer pipeline, or the MJPEG server. An
    unknown or malformed output is refused here, before any frame."""
    if is_picture_output(uri):
        return picture_description(uri)
    if problem := picture_name_problem(uri):
        raise SourceError(problem)
    if uri.startswith(RTSP_OUTPUTS):
        return rtsp_launch(width, height, fps, jetson, bitrate_kbps)
    if uri.startswith(HTTP_OUTPUTS):
        return mjpeg_description(uri)
    return output_pipeline(uri, width, height, fps, jetson, bitrate_kbps)


def output_size(width: int, height: int) -> tuple[int, int]:
    """The (width, height) of the video of frames width x height: the frame whole, at most
    OUTPUT_LIMIT (turned for frames higher than wide), sides even (H.264's 4:2:0 needs them:
    x264enc refused a 321 x 241 crop)."""
    limit_width, limit_height = OUTPUT_LIMIT if width >= height else OUTPUT_LIMIT[::-1]
    scale = min(1.0, limit_width / width, limit_height / height)
    return max(2, 2 * int(width * scale / 2)), max(2, 2 * int(height * scale / 2))


def open_output(
    uri: str, width: int, height: int, fps: int, jetson: bool | None = None, bitrate_kbps: int | None = None,
    live: bool = False, access: OutputAccess = OutputAccess(),
) -> VideoOutput | RtspOutput | MjpegOutput:
    """The video output for `--output URI` at the first frame's size and the source's frame rate,
    H.264 at `bitrate_kbps` (None: the encoder's default; MJPEG outputs have their own quality);
    `live`: the frames come from a camera (see VideoOutput). Viewers of RTSP and MJPEG outputs,
    those `access` lets in, are shown the frames their encoder keeps up with."""
    if uri.startswith(RTSP_OUTPUTS):
        return RtspOutput(uri, width, height, fps, jetson, bitrate_kbps, access)
    if uri.startswith(HTTP_OUTPUTS):
        return MjpegOutput(uri, width, height, fps, jetson, bitrate_kbps, access)
    return VideoOutput(uri, width, height, fps, jetson, bitrate_kbps, live)
