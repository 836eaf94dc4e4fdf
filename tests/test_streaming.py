"""Real GStreamer streams through the full run: test patterns, an MP4, an RTP loopback that dies
and comes back, an RTSP output read back, two sources at once, signals and a full disk."""

import base64
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from edge_ad.datasets import calibration_frames
from edge_ad.detector import Detector
from edge_ad.events_report import read_events, write_events_report
from edge_ad.errors import DataError, EdgeAdError, SourceError
from edge_ad import outputs, runner, sources
from edge_ad.camera_certificates import fingerprint
from edge_ad.outputs import QUEUED_FRAMES, VideoOutput, check_servable, output_description, unused_path
from edge_ad.runner import RunConfig, run
from edge_ad.streams import Stream
from edge_ad.pipelines import FLIPS, SourceOptions
from edge_ad.sources import load_gst, open_source

from conftest import certificate, edge_ad, frames_within, free_port, wait_for

GST_LAUNCH = shutil.which("gst-launch-1.0")
pytestmark = pytest.mark.skipif(GST_LAUNCH is None, reason="gst-launch-1.0 is not installed")


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return Detector.load(tiny_bundle)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    subprocess.run([GST_LAUNCH, "-q", "videotestsrc", "num-buffers=30", "pattern=ball", "!",
                    "video/x-raw,width=320,height=240,framerate=15/1", "!", "x264enc", "!", "mp4mux", "!",
                    "filesink", f"location={path}"], check=True, timeout=60)
    return path


def _need_rtsp_server() -> None:
    import gi

    load_gst()  # before gst-rtsp-server's libraries: it keeps C++ exceptions working (see there)

    try:
        gi.require_version("GstRtspServer", "1.0")
    except ValueError:
        pytest.skip("gir1.2-gst-rtsp-server-1.0 is not installed")


def _run_in_thread(detector, streams, config):
    stop, box = threading.Event(), {}
    thread = threading.Thread(target=lambda: box.update(summary=run(detector, streams, config, stop)))
    thread.start()
    return stop, thread, box


def _first_frames(source, count: int) -> list:
    """The first `count` frames of a source, which is then closed."""
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == count:
            break
    source.close()
    return frames


def test_live_source_keeps_only_the_newest_frame_and_counts_drops():
    source = open_source("test://ball?width=64&height=48&fps=60")
    indices, pts = [], []
    for frame in source.frames():
        indices.append(frame.index)
        pts.append(frame.timestamp)
        time.sleep(0.1)  # a slow consumer: six frames arrive per pull
        if len(indices) == 5:
            break
    source.close()
    assert source.dropped >= 10
    assert indices[-1] - indices[0] >= 4 + 10  # frame numbers count the dropped frames
    # What is pulled is fresh: consecutive frames are ~0.1 s apart in stream time, not 1/60 s.
    assert min(b - a for a, b in zip(pts, pts[1:])) > 0.05


def test_calibrate_and_record_take_a_cameras_frames_once_its_exposure_has_settled(monkeypatch, tmp_path):
    """A USB or CSI camera's first frames come dark or blown out while its automatic exposure
    settles: calibrate took them as normal (the threshold then passes them) and `record --frames 1`
    saved the first (the frame a mask is drawn on). Here test:// plays such a camera (its pipeline
    marked so), with 0.5 s to settle; other sources' frames come from the first, as run's do."""
    from edge_ad.cli import _checked_frames
    from edge_ad.pipelines import source_pipeline
    from edge_ad.record import record
    from edge_ad.sources import has_settling_camera, settled_frames

    assert source_pipeline("/dev/video0", jetson=False).settles and source_pipeline("csi://0", jetson=True).settles
    assert not source_pipeline("rtsp://10.0.0.5/s", jetson=False).settles  # a camera running before we came
    Gst = load_gst()  # one's own --pipeline: by its camera element (no camera here to start it)
    assert has_settling_camera(Gst.parse_launch("v4l2src device=/dev/video0 ! videoconvert ! appsink name=sink"))
    assert has_settling_camera(Gst.parse_launch("bin.( v4l2src ! videoconvert ) ! videoconvert ! appsink name=sink"))
    assert not has_settling_camera(Gst.parse_launch("videotestsrc is-live=true ! videoconvert ! appsink name=sink"))
    monkeypatch.setattr("edge_ad.sources.SETTLE_S", 0.5)

    def camera():
        source = open_source("test://ball?width=64&height=48&fps=30")
        source.spec.settles = True
        return source

    source = camera()
    frame = next(settled_frames(source))
    assert frame.arrived - source.started >= 0.5
    source.close()
    source = camera()
    next(_checked_frames(source, None, "cam", []))  # calibrate's frames
    assert time.monotonic() - source.started >= 0.5
    source.close()
    source = camera()
    assert len(record(source, tmp_path / "good", 1, interval_s=0)) == 1
    assert time.monotonic() - source.started >= 0.5
    monkeypatch.setattr("edge_ad.sources.SETTLE_S", 30.0)
    source = open_source("test://ball?width=64&height=48&fps=30")
    frame = next(settled_frames(source))
    assert frame.arrived - source.started < 30.0  # no camera to settle: its first frame, not one 30 s on
    source.close()
    monkeypatch.setattr("edge_ad.sources.SETTLING_CAMERAS", ("videotestsrc",))  # one's own pipeline, as a USB camera
    monkeypatch.setattr("edge_ad.sources.SETTLE_S", 0.5)
    source = open_source("", pipeline="videotestsrc is-live=true ! video/x-raw,width=64,height=48 ! videoconvert ! "
                                      "video/x-raw,format=BGR ! appsink name=sink")
    frame = next(settled_frames(source))
    assert frame.arrived - source.started >= 0.5
    source.close()


def test_run_reads_what_a_cameras_frames_are_like_once_its_exposure_has_settled(detector, monkeypatch):
    """`run` says at a source's first frame when its frames are shaped or coloured unlike the
    training pictures: a USB camera's first frame, black while its exposure settles, reads as grey
    (a colour camera then told its frames are grey). test:// plays such a camera (marked so)."""
    from edge_ad import sources
    from edge_ad.bundle import Bundle

    pipeline = sources.source_pipeline
    monkeypatch.setattr(sources, "source_pipeline", lambda *args, **kwargs: replace(pipeline(*args, **kwargs),
                                                                                    settles=True))
    monkeypatch.setattr(sources, "SETTLE_S", 1.0)
    read = []  # when run read a frame for what it is like
    note = Bundle.frame_colour_note
    monkeypatch.setattr(Bundle, "frame_colour_note", lambda self, image: (read.append(time.monotonic()),
                                                                          note(self, image))[1])
    stop = threading.Event()

    def stop_once_read() -> None:
        deadline = time.monotonic() + 30
        while not read and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few frames more, which are not read again
        stop.set()

    threading.Thread(target=stop_once_read, daemon=True).start()
    started = time.monotonic()
    run(detector, [Stream("test://ball?width=64&height=48&fps=30")], RunConfig(), stop=stop)
    assert len(read) == 1 and read[0] - started >= 1.0


def test_mp4_in_every_frame_scored_overlay_video_out(detector, mp4, tmp_path):
    out = tmp_path / "overlay.mkv"
    summary = run(detector, [Stream(str(mp4), output=str(out))],
                  RunConfig(events=tmp_path / "ev.jsonl", snapshots=tmp_path / "snaps", snapshot_interval_s=0.0))
    (stats,) = summary.sources
    assert (stats.frames, stats.dropped, stats.reconnects, stats.error) == (30, 0, 0, None)
    events = _events(tmp_path / "ev.jsonl")
    assert [e["frame"] for e in events] == list(range(30))
    assert events[2]["pts"] - events[1]["pts"] == pytest.approx(1 / 15, abs=1e-3)
    for e in events:
        assert {"source", "frame", "timestamp", "score", "anomaly", "threshold", "regions", "latency_ms"} <= set(e)
        if e["anomaly"]:  # the regions lie inside the frame and hold the frame's peak
            assert e["regions"] and max(r["peak"] for r in e["regions"]) == pytest.approx(e["score"], rel=1e-3)
            assert min(r["peak"] for r in e["regions"]) >= e["threshold"]
            assert all(r["x"] + r["width"] <= 320 and r["y"] + r["height"] <= 240 for r in e["regions"])
    assert len(list((tmp_path / "snaps").glob("*_overlay.jpg"))) == sum(e["anomaly"] for e in events) > 0
    played = list(open_source(str(out)))
    assert len(played) == 30 and played[0].image.shape == (240, 320, 3)
    assert played[-1].timestamp == pytest.approx(29 / 15, abs=1e-2)  # the input's frame rate


def test_pictures_of_several_sizes_all_reach_the_video_fitted_to_the_first(detector, normal_folder, tmp_path):
    """An image folder of pictures of several sizes: each frame goes into the video (at the first
    frame's size, scaled whole onto black), none is refused by the output."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    cells = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))[:3]]
    cells[1] = cv2.resize(cells[1], (400, 300))  # 4:3 between two square ones
    for i, cell in enumerate(cells):
        cv2.imwrite(str(folder / f"{i}.png"), cell)
    out = tmp_path / "overlay.mkv"
    summary = run(detector, [Stream(str(folder), output=str(out))], RunConfig())
    assert not summary.sink_errors
    played = [frame.image for frame in open_source(str(out))]
    assert len(played) == 3 and all(p.shape == (300, 300, 3) for p in played)
    assert played[1][:30].max() < 40 and played[1][-30:].max() < 40 and played[1][100:200].mean() > 60  # bars


def test_int8_calibration_frames_from_a_video_given_as_a_file_uri(mp4, tmp_path):
    """`export --calib-data` takes a video as `run --input` does, file:// URIs included."""
    video = tmp_path / "line 3" / "clip.mp4"
    video.parent.mkdir()
    shutil.copy(mp4, video)
    frames = calibration_frames(video.as_uri(), 5, (64, 96))  # file:///.../line%203/clip.mp4
    assert len(frames) == 5 and all(frame.shape == (64, 96, 3) for frame in frames)
    # a camera, as train --data and eval --data take one: a folder before ("rtsp:/cam/s: no such dataset folder")
    for camera, shown in (("rtsp://admin:secret@cam/s", r"rtsp://admin:\*\*\*@cam/s"), ("/dev/video0", "/dev/video0")):
        with pytest.raises(DataError, match=f"^{shown}: a camera or stream, not pictures: record its frames first"):
            calibration_frames(camera, 5, (64, 96))


def test_a_file_cut_short_plays_the_frames_it_has_and_says_so(tmp_path, caplog):
    """GStreamer ends a file cut short with an end of stream, not an error: the source compares
    where it ended with the duration in the file's header."""
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    subprocess.run([GST_LAUNCH, "-q", "videotestsrc", "num-buffers=60", "!",
                    "video/x-raw,width=160,height=120,framerate=15/1", "!", "jpegenc", "!", "matroskamux", "!",
                    "filesink", f"location={whole}"], check=True, timeout=60)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a copy that stopped half-way
    with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
        assert len(list(open_source(str(whole)))) == 60
        assert not caplog.records
        played = len(list(open_source(str(cut))))
    assert 20 < played < 40
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"{cut}: ended at ")
    assert warning.getMessage().endswith(" s of the 4.0 s its header gives; the file may be cut short")


def test_rtp_loopback_killed_and_restarted_reconnects(detector, tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    sender_args = [GST_LAUNCH, "-q", "videotestsrc", "is-live=true", "pattern=ball", "!",
                   "video/x-raw,width=160,height=120,framerate=20/1", "!", "x264enc", "tune=zerolatency",
                   "key-int-max=10", "!", "rtph264pay", "config-interval=1", "pt=96", "!",
                   "udpsink", "host=127.0.0.1", f"port={port}"]
    sender = subprocess.Popen(sender_args)
    stream = Stream(f"rtp://@:{port}", options=SourceOptions(timeout_s=1.0, latency_ms=50))
    stop, thread, box = _run_in_thread(detector, [stream], RunConfig(events=tmp_path / "ev.jsonl"))

    def events():  # the frames' (a camera away and back has one each too)
        path = tmp_path / "ev.jsonl"
        return [e for e in _events(path) if e["event"] == "frame"] if path.exists() else []

    try:
        assert wait_for(lambda: len(events()) >= 10, 30), "no frames from the RTP stream"
        sender.kill()
        sender.wait()
        time.sleep(2.5)  # silent for longer than the timeout: the source reconnects
        before = len(events())
        sender = subprocess.Popen(sender_args)
        assert wait_for(lambda: len(events()) >= before + 10, 30), "no frames after the sender came back"
    finally:
        stop.set()
        thread.join(timeout=10)
        sender.kill()
    (stats,) = box["summary"].sources
    assert stats.reconnects >= 1 and stats.error is None
    assert stats.frames == len(events())
    assert [e["state"] for e in _events(tmp_path / "ev.jsonl") if e["event"] == "away"] == ["away", "back"]


def test_timeout_0_keeps_a_silent_camera_waiting():
    """A camera triggered by the parts is silent between them: with --timeout 0 that is not a
    failure, while a timeout reconnects the same silent source."""

    def reconnects_in(seconds: float, timeout_s: float) -> int:
        source = open_source(f"rtp://@:{free_port(socket.SOCK_DGRAM)}", SourceOptions(timeout_s=timeout_s))
        stop = threading.Event()
        reader = threading.Thread(target=lambda: list(source.frames(stop)))
        reader.start()
        time.sleep(seconds)
        stop.set()
        reader.join(timeout=10)
        source.close()
        return source.reconnects

    assert reconnects_in(2.5, 0.3) >= 1
    assert reconnects_in(2.5, 0) == 0


@pytest.mark.parametrize("transport", [None, "tcp"])  # rtspsrc's choice (UDP first), and TCP as through a firewall
def test_rtsp_output_served_and_read_back(detector, tmp_path, transport):
    _need_rtsp_server()
    port = free_port()
    stream = Stream("test://ball?width=160&height=120&fps=20", output=f"rtsp://@:{port}/inspection")
    stop, thread, box = _run_in_thread(detector, [stream], RunConfig())
    try:
        time.sleep(1.0)
        viewer = open_source(f"rtsp://127.0.0.1:{port}/inspection",
                             SourceOptions(latency_ms=50, timeout_s=10, transport=transport))
        frames = _first_frames(viewer, 5)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert frames[0].image.shape == (120, 160, 3)
    assert box["summary"].sink_errors == {}


@contextmanager
def _rtsp_camera(launch: str, login: tuple[str, str] | None = None, tls: tuple[Path, Path] | None = None):
    """An RTSP camera at rtsp://127.0.0.1:PORT/cam serving gst-rtsp-server's `launch`, to a
    client that gives `login` (user, password: basic authentication) if one is given; with `tls`
    (its certificate and key files), RTSP over TLS only, at rtsps://; its URI."""
    _need_rtsp_server()
    from gi.repository import Gio, GLib, GstRtspServer

    port = free_port()
    server = GstRtspServer.RTSPServer()
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    if login is not None:
        auth, token = GstRtspServer.RTSPAuth(), GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(*login), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        for permission in ("media.factory.access", "media.factory.construct"):
            permissions.add_permission_for_role("user", permission, True)
        factory.set_permissions(permissions)
    if tls is not None:
        auth = server.get_auth() or GstRtspServer.RTSPAuth()
        auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(str(tls[0]), str(tls[1])))
        if login is None:  # anyone may watch
            token = GstRtspServer.RTSPToken()
            token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "anyone")
            auth.set_default_token(token)
            permissions = GstRtspServer.RTSPPermissions()
            for permission in ("media.factory.access", "media.factory.construct"):
                permissions.add_permission_for_role("anyone", permission, True)
            factory.set_permissions(permissions)
        server.set_auth(auth)
    server.get_mount_points().add_factory("/cam", factory)
    context = GLib.MainContext.new()
    source_id = server.attach(context)
    loop = GLib.MainLoop.new(context, False)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield f"{'rtsps' if tls else 'rtsp'}://127.0.0.1:{port}/cam"
    finally:
        context.find_source_by_id(source_id).destroy()
        loop.quit()
        thread.join(timeout=5)


@contextmanager
def _http_camera(picture: np.ndarray, user: str, password: str):
    """An IP camera serving `picture` as an MJPEG stream (multipart/x-mixed-replace, 20 a second)
    at http://127.0.0.1:PORT/video to a client that gives `user` and `password` (HTTP basic
    authentication), and the picture itself at /still.jpg; its http://127.0.0.1:PORT."""
    import base64
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    login = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization") != login:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                self.end_headers()
                return
            self.send_response(200)
            if self.path == "/still.jpg":
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                self.wfile.write(jpeg)
                return
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=picture")
            self.end_headers()
            try:
                while not server.stopped:
                    self.wfile.write(b"--picture\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(jpeg), jpeg))
                    time.sleep(0.05)
            except OSError:  # the client went away
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Camera)
    server.stopped = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.stopped = True
        server.shutdown()
        server.server_close()


def test_an_http_camera_s_mjpeg_stream_is_read(caplog):
    """Many IP cameras serve MJPEG over HTTP besides RTSP (and some only that): `--input
    http://user:password@camera/...` was "unknown source type". A wrong password, and a URL
    that gives a still picture, are said as such at each reconnection."""
    picture = np.zeros((48, 64, 3), np.uint8)
    picture[:, 32:] = (40, 160, 250)
    with _http_camera(picture, "admin", "p@ss word") as camera:
        address = camera.replace("http://", "http://admin:p%40ss%20word@")
        read = frames_within(open_source(f"{address}/video", SourceOptions(timeout_s=5)), 3, 30)
        assert [frame.image.shape for frame in read] == [(48, 64, 3)] * 3
        assert np.abs(read[-1].image.astype(int) - picture).mean() < 3  # the JPEG's picture, in BGR
        for url, said in ((camera.replace("http://", "http://admin:wrong@") + "/video", "Unauthorized"),
                          (f"{address}/still.jpg", "the URL answers, but not with an MJPEG stream")):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
                assert frames_within(open_source(url, SourceOptions(timeout_s=5)), 1, 3) == []
            assert said in caplog.text and "p@ss" not in caplog.text and "wrong" not in caplog.text


def test_a_camera_password_is_read_as_typed_into_the_camera(caplog):
    """Camera password rules ask for characters that URLs reserve, and people paste the password
    as they typed it into the camera: rtsp://admin:p@ss#1@camera/... said "Could not open
    resource for reading and writing" (rtspsrc), at every reconnection, and the source's name in
    the logs showed the password's end."""
    frames = "videotestsrc is-live=true ! video/x-raw,width=96,height=64,framerate=15/1"
    with _rtsp_camera(f"( {frames} ! x264enc tune=zerolatency key-int-max=15 ! rtph264pay name=pay0 )",
                      ("admin", "p@ss#1 ?")) as uri:
        for typed in ("admin:p@ss#1 ?", "admin:p%40ss%231%20%3F"):  # as typed, and as a URL writes it
            stream = Stream(uri.replace("rtsp://", f"rtsp://{typed}@"))
            assert stream.name == uri.replace("rtsp://", "rtsp://admin:***@")
            read = frames_within(open_source(stream.input, SourceOptions(timeout_s=5)), 3, 30)
            assert [frame.image.shape for frame in read] == [(64, 96, 3)] * 3
    with _rtsp_camera(f"( {frames} ! x264enc tune=zerolatency key-int-max=15 ! rtph264pay name=pay0 )",
                      ("admin", "pa/ss")) as uri:  # a / in it: taken for the path, and shown in the name
        stream = Stream(uri.replace("rtsp://", "rtsp://admin:pa/ss@"))
        assert stream.name == uri.replace("rtsp://", "rtsp://admin:***@")
        assert len(frames_within(open_source(stream.input, SourceOptions(timeout_s=5)), 3, 30)) == 3
    assert "p@ss" not in caplog.text and "ss#1" not in caplog.text and "pa/ss" not in caplog.text


def test_an_rtsps_camera_s_own_certificate_pinned_is_trusted_and_any_other_refused(tmp_path, monkeypatch, caplog):
    """RTSP over TLS (rtsps://): the camera's own certificate, self-signed, is in no trust store;
    given as --input-certificate, its stream comes; without it, or another, it is refused, kept,
    and named with its fingerprint, which rtspsrc's own error does not say."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    own, _ = certificate(tmp_path, "camera")
    certificate(tmp_path, "another")
    frames = "videotestsrc is-live=true ! video/x-raw,width=96,height=64,framerate=15/1"
    with _rtsp_camera(f"( {frames} ! x264enc tune=zerolatency key-int-max=15 ! rtph264pay name=pay0 )",
                      tls=(tmp_path / "camera.pem", tmp_path / "camera.key")) as uri:
        assert uri.startswith("rtsps://")
        read = frames_within(open_source(uri, SourceOptions(certificate=str(tmp_path / "camera.pem"))), 3, 30)
        assert [frame.image.shape for frame in read] == [(64, 96, 3)] * 3
        kept = tmp_path / "state" / "cameras" / f"127.0.0.1-{uri.split(':')[2].split('/')[0]}.pem"
        for pinned, said in ((None, "the camera's certificate is not trusted here (issued by no authority"),
                             (tmp_path / "another.pem", "the camera's certificate is not the one in "
                                                        f"--input-certificate {tmp_path / 'another.pem'}")):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
                options = SourceOptions(timeout_s=2, certificate=pinned and str(pinned))
                assert frames_within(open_source(uri, options), 1, 2) == []
            assert said in caplog.text and f"kept in {kept}" in caplog.text
            assert f"SHA-256 {fingerprint(own.public_bytes(Encoding.DER))}" in caplog.text


def test_a_wrong_login_stream_path_or_address_is_said_as_such(caplog):
    """rtspsrc says "Unauthorized", "Not found" and "Could not open resource for reading and
    writing", no more, of a wrong password, a missing login, a wrong stream path (each make has
    its own) and an address nothing answers at."""
    frames = "videotestsrc is-live=true ! video/x-raw,width=96,height=64,framerate=15/1"
    with _rtsp_camera(f"( {frames} ! x264enc tune=zerolatency key-int-max=15 ! rtph264pay name=pay0 )",
                      ("admin", "right")) as uri:
        unreached = f"rtsp://127.0.0.1:{free_port()}/cam"
        for url, error, said in (
                (uri.replace("rtsp://", "rtsp://admin:wrong@"), "Unauthorized", "the camera refused the user and "
                                                                                "password in the URL"),
                (uri, "Unauthorized", "the camera asks for a login: give it in the URL, rtsp://USER:PASSWORD@camera/"),
                (uri.replace("rtsp://", "rtsp://admin:right@") + "2", "Not found", "the camera answers, but has no "
                                                                                   "stream at this path"),
                (unreached, "Could not open resource for reading and writing.", "the camera cannot be reached")):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
                assert frames_within(open_source(url, SourceOptions(timeout_s=2)), 1, 2) == []
            assert re.search(rf"{re.escape(error)} \(rtspsrc\d+\): {re.escape(said)}", caplog.text)


def test_an_rtsp_camera_is_read_in_the_codec_it_sends(caplog):
    """Many IP cameras send H.265. Read as H.264 (the default), all their pipeline said was
    "Internal data stream error", at every reconnection, for ever. Older and many industrial
    cameras send MJPEG, which was not read at all."""
    if load_gst().ElementFactory.find("x265enc") is None:
        pytest.skip("x265enc (gstreamer1.0-plugins-bad) is not installed")
    frames = "videotestsrc is-live=true ! video/x-raw,format=I420,width=96,height=64,framerate=15/1"
    with _rtsp_camera(f"( {frames} ! x265enc tune=zerolatency speed-preset=ultrafast ! rtph265pay name=pay0 )") as uri:
        read = frames_within(open_source(uri, SourceOptions(timeout_s=5)), 3, 30)
    assert [frame.image.shape for frame in read] == [(64, 96, 3)] * 3
    assert "the camera sends H.265 video, not H.264: read as H.265 from now on (--input-codec h265" in caplog.text
    with _rtsp_camera(f"( {frames} ! jpegenc ! rtpjpegpay name=pay0 )") as uri:
        read = frames_within(open_source(uri, SourceOptions(timeout_s=5)), 3, 30)
        assert [frame.image.shape for frame in read] == [(64, 96, 3)] * 3
        assert "the camera sends MJPEG video, not H.264: read as MJPEG from now on (--input-codec mjpeg" in caplog.text
        caplog.clear()
        assert len(frames_within(open_source(uri, SourceOptions(timeout_s=5, codec="mjpeg")), 3, 30)) == 3
        assert "reconnect" not in caplog.text
    with _rtsp_camera(f"( {frames} ! vp8enc deadline=1 ! rtpvp8pay name=pay0 )") as uri:
        assert frames_within(open_source(uri, SourceOptions(timeout_s=5)), 1, 6) == []
    assert "the camera sends VP8 video, which edge-ad does not read from RTSP; set the camera's stream to " \
           "H.264, H.265 or MJPEG" in caplog.text


@contextmanager
def _rtp_sender(encode: str):
    """gst-launch-1.0 sending 96x64 test frames, encoded and put in packets by `encode`, to a UDP
    port of 127.0.0.1; that port."""
    port = free_port(socket.SOCK_DGRAM)
    sender = subprocess.Popen([GST_LAUNCH, "-q", *(
        f"videotestsrc is-live=true ! video/x-raw,format=I420,width=96,height=64,framerate=15/1 ! {encode} ! "
        f"udpsink host=127.0.0.1 port={port}").split()])
    try:
        yield port
    finally:
        sender.kill()
        sender.wait()


def test_an_rtp_stream_is_read_in_the_codec_and_payload_type_it_is_sent_in(caplog):
    """A bare RTP stream describes nothing: an H.265 sender read as H.264 (the default), or one
    whose payload type was not 96, gave "no frame for N s" at every reconnection, for ever, as
    did packets sent to another port, or of MPEG-TS or MJPEG. The first packets tell them apart."""
    if load_gst().ElementFactory.find("x265enc") is None:
        pytest.skip("x265enc (gstreamer1.0-plugins-bad) is not installed")
    options = SourceOptions(timeout_s=2, latency_ms=50)
    with _rtp_sender("x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! "
                     "rtph265pay config-interval=1") as port:
        read = frames_within(open_source(f"rtp://@:{port}", options), 3, 30)
    assert [frame.image.shape for frame in read] == [(64, 96, 3)] * 3
    assert "the sender sends H.265 video, not H.264: read as H.265 from now on (--input-codec h265" in caplog.text
    with _rtp_sender("x264enc tune=zerolatency key-int-max=15 ! rtph264pay pt=97 config-interval=1") as port:
        assert len(frames_within(open_source(f"rtp://@:{port}", options), 3, 30)) == 3
    caplog.clear()  # MPEG-TS over RTP, as VLC's RTP output sends it: told by its payload type, 33
    with _rtp_sender("x264enc tune=zerolatency key-int-max=15 ! h264parse ! mpegtsmux ! rtpmp2tpay") as port:
        assert len(frames_within(open_source(f"rtp://@:{port}", options), 3, 30)) == 3
    assert "the sender sends MPEG-TS video, not H.264: read as MPEG-TS from now on (--input-codec mpegts" in caplog.text
    caplog.clear()  # MJPEG, payload type 26
    with _rtp_sender("jpegenc ! rtpjpegpay") as port:
        read = frames_within(open_source(f"rtp://@:{port}", options), 3, 30)
    assert [frame.image.shape for frame in read] == [(64, 96, 3)] * 3
    assert "the sender sends MJPEG video, not H.264: read as MJPEG from now on (--input-codec mjpeg" in caplog.text
    for encode, said in (
            (None, "no frame for 2 s: no packet came to UDP port {port} (does the sender send to this device's "
                   "address and this port, and does a firewall let UDP {port} in?)"),
            ("vp8enc deadline=1 ! rtpvp8pay",
             "no frame for 2 s: RTP packets come (payload type 96), but they hold none of H.264, H.265, MJPEG or "
             "MPEG-TS video"),
            ("x264enc tune=zerolatency key-int-max=15 ! mpegtsmux",
             "no frame for 2 s: packets come to UDP port {port}, but not RTP ones (MPEG-TS sent straight over UDP? "
             "read it as udp://@:{port})"),
            ("x264enc tune=zerolatency key-int-max=1000 ! rtph264pay",
             "no frame for 2 s: RTP packets of H.264 video come, but no key frame with its parameter sets came")):
        caplog.clear()
        with (_rtp_sender(encode) if encode else nullcontext(free_port(socket.SOCK_DGRAM))) as port:
            time.sleep(1.0)  # the sender's first key frame goes by
            with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
                assert frames_within(open_source(f"rtp://@:{port}", options), 1, 3) == []
        assert said.format(port=port) in caplog.text


def test_an_rtsp_camera_s_mjpeg_asked_over_udp_whose_pictures_never_come_whole_is_said(caplog):
    """MJPEG from an RTSP camera goes over TCP unless --rtsp-transport udp asks otherwise: then a
    lost packet loses a picture (here a packet in three is dropped by the camera)."""
    launch = ("( videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=10/1 ! jpegenc ! "
              "rtpjpegpay mtu=400 ! identity drop-probability={} name=pay0 )")  # a picture is 20 packets and more
    over_udp = SourceOptions(codec="mjpeg", transport="udp", timeout_s=2, latency_ms=50)
    with _rtsp_camera(launch.format(0.0)) as uri:  # none lost: they come whole
        assert len(frames_within(open_source(uri, over_udp), 2, 10)) == 2
    with _rtsp_camera(launch.format(0.3)) as uri, caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
        assert frames_within(open_source(uri, over_udp), 1, 2.5) == []
    assert "no frame for 2 s: MJPEG over UDP (--rtsp-transport udp): a picture is hundreds of packets, and one lost " \
           "loses it; leave the option out (MJPEG goes over TCP then)" in caplog.text


def test_mjpeg_over_rtp_whose_pictures_never_come_whole_is_said(caplog):
    """A JPEG picture is hundreds of packets, and one lost loses it: packets a UDP buffer too
    small for a whole picture dropped. Here each picture's last packet (with the marker bit)
    is never sent."""
    port, stop = free_port(socket.SOCK_DGRAM), threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sequence = 0
            for picture in range(200):
                for offset in range(0, 8000, 1000):  # RFC 2435: type 1, Q 50, 96 x 64 pixels, then the data
                    header = bytes([0x80, 26]) + sequence.to_bytes(2, "big") + (picture * 6000).to_bytes(4, "big")
                    jpeg = bytes([0]) + offset.to_bytes(3, "big") + bytes([1, 50, 96 // 8, 64 // 8])
                    sender.sendto(header + b"\x00\x00\x00\x01" + jpeg + bytes(1000), ("127.0.0.1", port))
                    sequence += 1
                if stop.wait(1 / 15):
                    return

    sending = threading.Thread(target=send, daemon=True)
    sending.start()
    try:
        with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
            options = SourceOptions(timeout_s=2, latency_ms=50, codec="mjpeg")
            assert frames_within(open_source(f"rtp://@:{port}", options), 1, 3) == []
    finally:
        stop.set()
        sending.join()
    assert "no frame for 2 s: RTP packets of MJPEG video come, but no picture came whole: a picture is hundreds of " \
           "packets, and one lost loses it (the kernel's UDP buffer, which edge-ad asks to be 8 MiB, is capped at " \
           "net.core.rmem_max unless it runs with CAP_NET_ADMIN" in caplog.text


def test_mpeg_ts_sent_straight_over_udp_is_read_as_udp(caplog):
    """`ffmpeg ... -f mpegts udp://JETSON:5000`, VLC and hardware encoders send MPEG-TS straight
    over UDP; before, udp:// was "unknown source type", and rtp:// read nothing of it."""
    if load_gst().ElementFactory.find("x265enc") is None:
        pytest.skip("x265enc (gstreamer1.0-plugins-bad) is not installed")
    options = SourceOptions(timeout_s=2)
    for encode in ("x264enc tune=zerolatency key-int-max=15 ! h264parse ! mpegtsmux",
                   "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h265parse config-interval=-1 ! "
                   "mpegtsmux"):
        with _rtp_sender(encode) as port:
            read = frames_within(open_source(f"udp://@:{port}", options), 3, 30)
        assert [frame.image.shape for frame in read] == [(64, 96, 3)] * 3
    for encode, said in (
            ("x264enc tune=zerolatency key-int-max=15 ! rtph264pay",
             "no frame for 2 s: RTP packets come to UDP port {port}: read them as rtp://@:{port}"),
            ("x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h265parse ! mpegtsmux",
             "no frame for 2 s: packets come to UDP port {port}, but no picture was decoded: if they are MPEG-TS, no "
             "key frame with its parameter sets came among them")):
        caplog.clear()
        with _rtp_sender(encode) as port:
            time.sleep(1.0)  # the sender's first key frame, with the only parameter sets it sends, goes by
            with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
                assert frames_within(open_source(f"udp://@:{port}", options), 1, 3) == []
        assert said.format(port=port) in caplog.text
    with pytest.raises(SourceError, match=r"udp://10.0.0.5: a UDP source needs a port, as in udp://@:5000"):
        open_source("udp://10.0.0.5")


def test_a_camera_password_in_its_uri_stays_out_of_what_the_run_writes(detector, tmp_path, caplog):
    """Cameras take their login in the RTSP URI, and a source is named by its URI: the password
    goes into none of the logs, events, snapshot names and metrics."""
    _need_rtsp_server()
    port = free_port()
    camera = Stream("test://ball?width=160&height=120&fps=20", output=f"rtsp://@:{port}/line")
    stop, thread, _ = _run_in_thread(detector, [camera], RunConfig())
    config = RunConfig(events=tmp_path / "ev.jsonl", snapshots=tmp_path / "snaps", snapshot_interval_s=0.0,
                       metrics=tmp_path / "m.prom", max_frames=5)
    try:
        time.sleep(1.0)
        with caplog.at_level(logging.INFO):
            summary = run(detector, [Stream(f"rtsp://admin:Secret123@127.0.0.1:{port}/line",
                                            options=SourceOptions(latency_ms=50, timeout_s=10))], config)
    finally:
        stop.set()
        thread.join(timeout=10)
    (stats,) = summary.sources
    assert (stats.name, stats.frames) == (f"rtsp://admin:***@127.0.0.1:{port}/line", 5)
    written = [caplog.text, (tmp_path / "ev.jsonl").read_text(), (tmp_path / "m.prom").read_text(),
               *(p.name for p in (tmp_path / "snaps").iterdir())]
    assert len(written) > 3 and "admin:***@" in caplog.text and not any("Secret123" in text for text in written)


def test_a_camera_that_is_off_is_asked_less_and_less_often(caplog):
    """An RTSP camera that is off lets rtspsrc start and fails it a moment later: the wait between
    attempts still doubles (1, 2, 4 ... 30 s) until a frame comes, so that a camera which locks an
    account out after a few failed logins is not asked every second."""
    source = open_source(f"rtsp://127.0.0.1:{free_port()}/line", SourceOptions(timeout_s=1.0))
    stop = threading.Event()
    reader = threading.Thread(target=lambda: list(source.frames(stop)))
    with caplog.at_level(logging.WARNING):
        reader.start()
        time.sleep(9.5)
        stop.set()
        reader.join(timeout=10)
    attempts = [r.created for r in caplog.records if "reconnection attempt" in r.getMessage()]
    gaps = np.diff(attempts)  # attempts at about 1, 3 and 7 s: 7 of them, every 1.2 s, before
    assert 2 <= len(attempts) <= 3 and gaps[0] > 1.5 and all(b > 1.5 * a for a, b in zip(gaps, gaps[1:]))


def test_a_camera_away_for_long_is_said_every_few_minutes_and_its_return_once(caplog, monkeypatch):
    """A camera away for a weekend wrote two lines at every attempt, every 30 s: 11,520 lines into
    the journal, hiding the rest. Once the wait between attempts is at its largest, the failure is
    said every OUTAGE_SAID_EVERY_S (here 1.5 s, with waits of 0.05 to 0.15 s); the frames coming
    again are said once."""
    monkeypatch.setattr(sources, "BACKOFF_S", (0.05, 0.15))
    monkeypatch.setattr(sources, "OUTAGE_SAID_EVERY_S", 1.5)
    port = free_port(socket.SOCK_DGRAM)
    source = open_source(f"rtp://@:{port}", SourceOptions(timeout_s=0.2, latency_ms=50))
    stop = threading.Event()
    reader = threading.Thread(target=lambda: list(source.frames(stop)))
    sender = None
    with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
        reader.start()
        try:
            time.sleep(6.0)  # no sender: no frame within the timeout, and again after each attempt
            said = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
            attempts = source.reconnects
            sender = subprocess.Popen([GST_LAUNCH, "-q", "videotestsrc", "is-live=true", "!",
                                       "video/x-raw,width=160,height=120,framerate=20/1", "!", "x264enc",
                                       "tune=zerolatency", "key-int-max=10", "!", "rtph264pay", "config-interval=1",
                                       "pt=96", "!", "udpsink", "host=127.0.0.1", f"port={port}"])
            assert wait_for(lambda: any("frames again" in r.getMessage() for r in caplog.records), 30)
        finally:
            stop.set()
            reader.join(timeout=10)
            if sender is not None:
                sender.kill()
    quiet = [r for r in said if "said every" in r.getMessage()]  # those at the largest wait
    assert len(said) <= attempts - 2 and 2 <= len(quiet) <= 5
    assert all(b.created - a.created > 1.4 for a, b in zip(quiet, quiet[1:]))
    (back,) = [r.getMessage() for r in caplog.records if "frames again" in r.getMessage()]
    assert re.fullmatch(rf"rtp://@:{port}: frames again, after \d+ reconnection attempts", back)


def _away_card_shown(port: int) -> bool | None:
    """Whether the browser output at http://127.0.0.1:PORT/line shows the card of a source away (a
    dark picture with orange words) rather than an overlay; None when it gives no picture (not
    open before the first frame, or none within 2 s)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/line/frame.jpg", timeout=5) as answer:
            picture = cv2.imdecode(np.frombuffer(answer.read(), np.uint8), cv2.IMREAD_COLOR)
    except urllib.error.URLError:
        return None
    dark = (np.abs(picture.astype(int) - 32).max(axis=2) < 24).mean()
    orange = ((picture[..., 2].astype(int) - picture[..., 0] > 80) & (picture[..., 1] > 60)).sum()
    return bool(dark > 0.7 and orange > 100)


def test_a_live_output_says_that_its_camera_is_away_until_it_is_back(detector, monkeypatch, tmp_path):
    """The last overlay stood still on an operator's screen while the camera was away, its OK read
    as parts passing inspection; a browser asking for the picture got 503. While the source is
    reconnected, its live outputs show a card saying so, and since when; its frames, once back.
    The events (and MQTT) say when it went away and came back; `report` shades the time away."""
    monkeypatch.setattr(sources, "BACKOFF_S", (0.05, 0.15))
    port, rtp_port = free_port(), free_port(socket.SOCK_DGRAM)
    sender = [GST_LAUNCH, "-q", *(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=15/1 ! x264enc "
        f"tune=zerolatency key-int-max=5 ! rtph264pay config-interval=1 ! udpsink host=127.0.0.1 port={rtp_port}"
    ).split()]
    camera = Stream(f"rtp://@:{rtp_port}", options=SourceOptions(timeout_s=0.5, latency_ms=50),
                    output=f"http://@:{port}/line")
    sending = subprocess.Popen(sender)
    events = tmp_path / "ev.jsonl"
    stop, thread, _ = _run_in_thread(detector, [camera], RunConfig(events=events))
    try:
        assert wait_for(lambda: _away_card_shown(port) is False, 30)  # its overlays
        sending.kill()
        sending.wait()
        gone = time.time()
        assert wait_for(lambda: _away_card_shown(port), 15)
        picture = urllib.request.urlopen(f"http://127.0.0.1:{port}/line/frame.jpg", timeout=5).read()
        assert cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)
        sending = subprocess.Popen(sender)
        assert wait_for(lambda: _away_card_shown(port) is False, 30)
        back = time.time()
    finally:
        sending.kill()
        sending.wait()
        stop.set()
        thread.join(timeout=10)
    said = [json.loads(line) for line in events.read_text().splitlines()]
    away = [e for e in said if e.get("event") == "away"]
    assert [(e["source"], e["state"]) for e in away] == [(camera.name, "away"), (camera.name, "back")]
    assert gone < away[0]["timestamp"] < away[1]["timestamp"] < back
    assert away[1]["away_s"] == pytest.approx(away[1]["timestamp"] - away[0]["timestamp"], abs=0.2)
    frames = [e["timestamp"] for e in said if e.get("event", "frame") == "frame"]
    assert not any(away[0]["timestamp"] < t < away[1]["timestamp"] - 0.2 for t in frames)  # none while away
    (record,) = read_events(events).sources.values()
    assert record.away_spans() == [(away[0]["timestamp"], away[1]["timestamp"])]
    assert "  times away 1" in record.summary()
    assert write_events_report(read_events(events), tmp_path / "report.png").is_file()


def test_a_camera_away_from_the_start_has_its_browser_output_show_the_card(detector):
    """A power cut: the device boots faster than the IP cameras, whose outputs were opened only
    at their first frame (a browser or VLC at the line got no answer). An RTSP or browser output
    opens for the card, at the frames' size as the options give it, else 1280 x 720."""
    for options, shape in ((SourceOptions(timeout_s=1.0), (720, 1280, 3)),
                           (SourceOptions(timeout_s=1.0, width=640, height=480), (480, 640, 3))):
        port = free_port()
        camera = Stream(f"rtsp://127.0.0.1:{free_port()}/line", options=options, output=f"http://@:{port}/line")
        stop, thread, _ = _run_in_thread(detector, [camera], RunConfig())
        try:
            assert wait_for(lambda: _away_card_shown(port), 20)
            picture = urllib.request.urlopen(f"http://127.0.0.1:{port}/line/frame.jpg", timeout=5).read()
            assert cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR).shape == shape
        finally:
            stop.set()
            thread.join(timeout=10)


def test_one_camera_of_several_not_there_at_the_start_is_waited_for_and_the_others_go_on(detector, caplog):
    """A camera of several not there as the run starts (a loose cable, one that boots slower)
    stopped the run: under systemd, restarted every 5 s, no camera of the line was inspected until
    it came. Alone, it is still refused at once (a wrong path is said, not tried for ever)."""
    missing = "/dev/video97"  # no camera behind it
    with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
        stop, thread, box = _run_in_thread(detector, [Stream("test://ball?width=64&height=48", "a"),
                                                      Stream(missing, "b")], RunConfig())
        try:
            time.sleep(3.0)
        finally:
            stop.set()
            thread.join(timeout=30)
    a, b = box["summary"].sources
    assert a.frames > 10 and a.error is None
    assert b.frames == 0 and b.error is None  # tried again and again, as a camera that went away
    assert any(r.getMessage().startswith(f"{missing}: Cannot identify device") and "not there as the run starts: the "
               "other sources go on" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage() == f"{missing}: reconnection attempt 1" for r in caplog.records)
    with pytest.raises(SourceError, match=f"{missing}: Cannot identify device .*no such camera now"):
        run(detector, [Stream(missing, "b")], RunConfig())


def test_a_long_outage_is_said_again_at_once_when_its_reason_changes():
    backoff = sources.Backoff()
    backoff.wait = sources.BACKOFF_S[1]
    outage = sources.Outage()
    assert outage.due(backoff, "Could not open resource for reading. (rtspsrc0)")
    assert not outage.due(backoff, "Could not open resource for reading. (rtspsrc1)")  # the same, by the next element
    assert outage.due(backoff, "Unauthorized (rtspsrc2)")  # the camera is back, and refuses the login


def test_a_file_plays_at_its_own_pace_with_realtime(mp4):
    """--realtime: each frame comes no earlier than its time in the file, as from a camera;
    without it the 2 s clip is read as fast as it decodes. Every frame either way."""
    clip_s = 29 / 15
    for realtime in (True, False):
        frames = list(open_source(str(mp4), SourceOptions(realtime=realtime)))
        assert [f.index for f in frames] == list(range(30))
        waited = [f.captured - frames[0].captured for f in frames]
        if realtime:
            assert all(w >= f.timestamp - frames[0].timestamp - 0.02 for w, f in zip(waited, frames))
            assert waited[-1] >= clip_s - 0.02
        else:
            assert waited[-1] < clip_s / 2


def test_files_and_folders_play_again_with_loop(mp4, normal_folder, tmp_path):
    """--input-loop N: N more passes; frame numbers and stream time go on (a video output of a
    looped file stays playable); -1 plays for ever. A folder loops the same way and reports a
    bad file once."""
    frames = list(open_source(str(mp4), SourceOptions(loop=1)))
    assert [f.index for f in frames] == list(range(60))
    # 30 frames at 15 fps: the second pass is the first, 2 s after it started.
    passes = [f.timestamp for f in frames[:30]], [f.timestamp for f in frames[30:]]
    assert passes[1] == pytest.approx([t - passes[0][0] + passes[0][-1] + 1 / 15 for t in passes[0]], abs=1e-6)
    np.testing.assert_array_equal(frames[31].image, frames[1].image)
    assert [f.index for f in _first_frames(open_source(str(mp4), SourceOptions(loop=-1)), 75)] == list(range(75))
    folder = tmp_path / "stills"
    shutil.copytree(normal_folder, folder)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG not an image")
    source = open_source(str(folder), SourceOptions(loop=2))
    names = [f.name for f in source]
    assert len(names) == 3 * len(list(normal_folder.glob("*.png"))) and names[: len(names) // 3] * 3 == names
    assert len(source.skipped) == 1 and "zz_broken.png" in source.skipped[0]
    with pytest.raises(SourceError, match=f"{mp4}: loop -2 is not a number of repeats"):
        open_source(str(mp4), SourceOptions(loop=-2))


def test_a_person_at_a_terminal_sees_the_anomalies_and_the_last_verdict_as_frames_are_scored(tiny_bundle):
    """At a terminal the run's bar said frames and a rate, and nothing of what they scored until
    Ctrl-C: a person setting a camera up could not see a part flagged. It says the anomalies so
    far and the last frame's verdict and score; into a pipe or a log (journald), no bar."""
    import fcntl
    import select
    import struct
    import termios

    args = ["run", "--bundle", str(tiny_bundle), "--input", "test://smpte?width=320&height=240", "--max-frames", "45"]
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal 160 wide
    child = subprocess.Popen([sys.executable, "-m", "edge_ad", *args], stdin=follower, stdout=follower,
                             stderr=follower)
    os.close(follower)
    shown, deadline = b"", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and select.select([leader], [], [], deadline - time.monotonic())[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the run has ended, and with it the terminal's other side
                break
            shown += chunk
    finally:
        os.close(leader)
    try:
        assert child.wait(timeout=30) == 0, shown.decode(errors="replace")
    finally:
        child.kill()  # one that hung (nothing to kill once it has ended)
    text = shown.decode(errors="replace")
    bars = re.findall(r"scored: (\d+) frames \[[^\]]* frames/s, anomalies (\d+), last: (OK|NG) (\d+\.\d{3})\]", text)
    assert bars and all(int(anomalies) <= int(frames) <= 45 for frames, anomalies, _, _ in bars), text
    anomalies = int(re.search(r"frames 45 .*anomalies (\d+)", text).group(1))
    assert int(bars[-1][1]) <= anomalies
    piped = edge_ad(*args)
    assert piped.returncode == 0 and "scored:" not in piped.stderr + piped.stdout, piped.stderr


def test_one_picture_is_read_as_the_training_pictures_are(tmp_path):
    """`--input part.jpg`, to see what a bundle makes of one picture, is read with OpenCV as a
    folder's pictures are: GStreamer stopped at a CMYK JPEG ("Internal data stream error") and did
    not turn a picture taken upright. A picture or folder none of which can be read is an error,
    where it was a run of no frames that ended well."""
    from PIL import Image

    from edge_ad.images import read_image
    from edge_ad.pipelines import opencv_input

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:10] = 255  # a white band at the top
    picture = tmp_path / "part.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # taken upright: shown turned a quarter clockwise
    Image.fromarray(rgb).convert("CMYK").save(picture, exif=exif, quality=95)
    assert opencv_input(str(picture)) == "picture" and opencv_input(str(tmp_path)) == "image folder"
    (frame,) = list(open_source(str(picture)))
    assert frame.image.shape == (60, 40, 3) and frame.image[:, -10:].mean() > 200 > 50 > frame.image[:, :30].mean()
    np.testing.assert_array_equal(frame.image, read_image(picture)[..., ::-1])
    (picture.parent / "cut.png").write_bytes(cv2.imencode(".png", rgb)[1].tobytes()[:40])
    with pytest.raises(SourceError, match=r"cut.png: no picture could be read \(1 unreadable, above\)"):
        list(open_source(str(picture.parent / "cut.png")))


def test_pictures_by_a_wildcard_are_read_in_path_order(tmp_path, monkeypatch):
    """`--input 'line1/*.jpg'`, as jetson-utils takes an image sequence, was "no such file"."""
    from edge_ad.pipelines import opencv_input

    for folder, name, shade in (("day1", "b.png", 10), ("day1", "a.png", 20), ("day2", "a.png", 30)):
        (tmp_path / folder).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / folder / name), np.full((8, 8, 3), shade, np.uint8))
    (tmp_path / "day1" / "notes.txt").write_text("not a picture")
    pattern = str(tmp_path / "day*" / "*")
    assert opencv_input(pattern) == "picture pattern" and opencv_input("rtsp://cam/live?channel=1") is None
    assert [int(frame.image[0, 0, 0]) for frame in open_source(pattern)] == [20, 10, 30]
    monkeypatch.setenv("HOME", str(tmp_path))  # a quoted ~, which no shell expanded
    assert [int(frame.image[0, 0, 0]) for frame in open_source("~/day2/*.png")] == [30]
    (tmp_path / "day2" / "late").mkdir()
    cv2.imwrite(str(tmp_path / "day2" / "late" / "a.png"), np.full((8, 8, 3), 40, np.uint8))
    assert [int(frame.image[0, 0, 0]) for frame in open_source(str(tmp_path / "**" / "a.png"))] == [20, 30, 40]
    # named by their paths under the wildcard's folder, which tell the three a.png apart
    assert [frame.name for frame in open_source(str(tmp_path / "**" / "a.png"))] == [
        "day1/a.png", "day2/a.png", "day2/late/a.png"]
    assert [frame.name for frame in open_source(str(tmp_path / "day1"))] == ["a.png", "b.png"]
    with pytest.raises(SourceError, match=r"day\*/\*.mp4: no picture matches this pattern \(the suffixes read: .png"):
        open_source(str(tmp_path / "day*" / "*.mp4"))


def test_each_frame_s_overlay_as_a_picture_of_its_own(detector, tmp_path, mp4):
    """`--output out/%i.jpg` or `--output out/`, as jetson-utils writes an image sequence: the
    overlay of each picture of a folder at its own size, or of each frame of a video. Before,
    "video outputs are .mp4 or .mkv files"."""
    pictures = tmp_path / "parts"
    pictures.mkdir()
    for name, (height, width) in (("b.png", (40, 60)), ("a.jpg", (64, 48))):
        cv2.imwrite(str(pictures / name), np.full((height, width, 3), 90, np.uint8))
    for output, written in ((tmp_path / "numbered" / "overlay_%03i.jpg", {"overlay_000.jpg": (64, 48),
                                                                        "overlay_001.jpg": (40, 60)}),
                           (f"{tmp_path / 'named'}/", {"a.jpg": (64, 48), "b.png": (40, 60)})):
        summary = run(detector, [Stream(str(pictures), output=str(output))], RunConfig())
        assert summary.sink_errors == {}
        folder = Path(output).parent if "%" in str(output) else Path(output)
        assert {p.name: cv2.imread(str(p)).shape[:2] for p in folder.iterdir()} == written
    run(detector, [Stream(str(mp4), output=f"{tmp_path / 'video'}/")], RunConfig(max_frames=3))
    assert sorted(p.name for p in (tmp_path / "video").iterdir()) == ["00000000.jpg", "00000001.jpg", "00000002.jpg"]
    for stream, said in ((Stream(str(pictures), output=f"{pictures}/"), "the input pictures are in this folder"),
                         (Stream("test://", output=f"{tmp_path}/live/"), "a picture for every frame of a live source"),
                         (Stream(str(pictures), output=str(tmp_path / "one.jpg")),
                          r"needs one %i in its name, .*\(one_%i.jpg\)"),
                         (Stream(str(pictures), output=str(tmp_path / "a_%i_%i.png")), r"\(a_%i.png\)")):
        with pytest.raises(EdgeAdError, match=said):
            run(detector, [stream], RunConfig(max_frames=1))
    assert sorted(p.name for p in pictures.iterdir()) == ["a.jpg", "b.png"]


def test_a_file_that_is_no_video_says_what_it_is(mp4, tmp_path, monkeypatch):
    """A sound recording, a text file or an empty file given as --input: GStreamer said "Internal
    data stream error. (oggdemux0)", "Could not determine type of stream" and "Stream contains
    no data". Of the sound recording it at times says nothing (a clean-clone CI got "no frame for
    60 s"): the file is then said by its silence."""
    from edge_ad import sources

    sound = tmp_path / "line.ogg"
    subprocess.run([GST_LAUNCH, "-q", "audiotestsrc", "num-buffers=20", "!", "audioconvert", "!", "vorbisenc", "!",
                    "oggmux", "!", "filesink", f"location={sound}"], check=True, timeout=60)
    patient = SourceOptions(timeout_s=10)  # GStreamer's word comes in well under a second, or not at all
    with pytest.raises(SourceError, match=rf"{sound}: the file holds no video, only audio \((Internal data stream"
                                          r"|no frame for 10 s\))"):
        list(open_source(str(sound), patient))
    with monkeypatch.context() as silent:  # as GStreamer is at times
        silent.setattr(sources, "bus_error", lambda pipeline: None)
        with pytest.raises(SourceError, match=rf"{sound}: the file holds no video, only audio \(no frame for 1 s\)$"):
            list(open_source(str(sound), SourceOptions(timeout_s=1)))
    notes = tmp_path / "notes.txt"
    notes.write_text("camera 3 is the one by the door\n")
    with pytest.raises(SourceError, match=rf"{notes}: not a video file that GStreamer recognises \(Could not"):
        list(open_source(str(notes), patient))
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(SourceError, match=r"empty.mp4: empty file$"):
        open_source(str(tmp_path / "empty.mp4"))
    assert len(list(open_source(str(mp4)))) == 30  # a video is read as before


def test_an_own_pipeline_that_hands_other_than_bgr_frames_is_told_how_to_end(tiny_bundle):
    """`--pipeline` without `format=BGR` before its appsink: GStreamer picks a format (64-bit ABGR
    with GStreamer 1.22), whose bytes were scored as BGR frames without a word; grey frames
    stopped the capture with a traceback, and the run ended well, with no frame."""
    for caps, kind in (("", r"\w+"), (",format=GRAY8", "GRAY8"), (",format=RGBA", "RGBA")):
        pipeline = f"videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48{caps} ! appsink name=sink"
        told = (rf"pipeline: the appsink gets {kind} frames, not BGR: end the pipeline in "
                r"'\.\.\. ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink'")
        with pytest.raises(SourceError, match=told):
            list(open_source("", pipeline=pipeline))
    grey = "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48,format=GRAY8 ! appsink name=sink"
    done = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle), "--pipeline", grey],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "not BGR" in done.stderr
    bgr = "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48,format=BGR ! appsink name=sink"
    assert [f.image.shape for f in open_source("", pipeline=bgr)] == [(48, 64, 3)] * 3


def test_a_bug_in_reading_frames_fails_the_run_with_its_traceback(detector, normal_folder, monkeypatch, caplog):
    """An exception no source expects (a bug) ended the capture thread with a traceback on stderr
    and the run as if the source had ended: exit 0, no frame."""
    from edge_ad import sources

    def broken(path):
        raise ValueError("cannot reshape array of size 76800 into shape (240,320,3)")

    monkeypatch.setattr(sources, "read_image", broken)
    with pytest.raises(SourceError, match=r"^cells: ValueError: cannot reshape array of size 76800"):
        run(detector, [Stream(str(normal_folder), "cells")], RunConfig())
    assert "cells: reading frames failed" in caplog.text and "Traceback" in caplog.text


def test_output_bitrate_sets_the_size_of_the_video(tmp_path):
    """Two seconds of noise (which no encoder can squeeze) at 200 and at 2,000 kbit/s."""
    from edge_ad.outputs import open_output

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(50)]
    sizes = {}
    for kbps in (200, 2000):
        output = open_output(str(tmp_path / "new" / f"{kbps}.mp4"), 320, 240, 25, jetson=False, bitrate_kbps=kbps)
        for number, frame in enumerate(frames):
            output.write(frame, number / 25)
        output.close()
        sizes[kbps] = (tmp_path / "new" / f"{kbps}.mp4").stat().st_size * 8 / 2 / 1000  # kbit/s over the 2 s (its folder made)
    assert 100 < sizes[200] < 400 and 1000 < sizes[2000] < 3000, sizes


def test_record_saves_one_picture_per_interval_as_run_would_see_it(mp4, tmp_path):
    """edge-ad record: pictures one per --interval of the video, lossless and turned as --input-flip
    turns run's frames, named by source, capture time and frame; --frames stops it; it says how to
    train on them. A second recording into the folder adds to the first."""
    out = tmp_path / "good"
    done = subprocess.run([sys.executable, "-m", "edge_ad", "record", "--input", str(mp4), "--out", str(out),
                           "--interval", "0.5", "--frames", "3", "--input-flip", "rotate-180"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pictures = sorted(out.glob("*.png"))
    # 15 fps: frames at 0, 0.53 and 1.07 s, each 0.5 s or more after the last.
    assert [int(p.stem.rsplit("_", 1)[1]) for p in pictures] == [0, 8, 16]
    frames = list(open_source(str(mp4), SourceOptions(flip="rotate-180")))
    for picture in pictures:
        np.testing.assert_array_equal(cv2.imread(str(picture)), frames[int(picture.stem.rsplit("_", 1)[1])].image)
    assert f"3 pictures in {out}" in done.stdout and "edge-ad train --data" in done.stdout
    first = {p: p.read_bytes() for p in pictures}
    time.sleep(1.0)  # the names hold the capture time to the second
    again = subprocess.run([sys.executable, "-m", "edge_ad", "record", "--input", str(mp4), "--out", str(out),
                            "--interval", "0.5", "--frames", "3"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(list(out.glob("*.png"))) == 6 and all(p.read_bytes() == data for p, data in first.items())
    one = subprocess.run([sys.executable, "-m", "edge_ad", "record", "--input", str(mp4), "--out",
                          str(tmp_path / "mask"), "--frames", "1"],
                         capture_output=True, text=True, timeout=120)  # the frame to draw a mask on
    (picture,) = (tmp_path / "mask").glob("*.png")
    assert f"1 picture in {tmp_path / 'mask'} ({picture.name})\n" in one.stdout
    # The frame to draw a mask on, under the name `mask --frame` is then given (it made a folder
    # of that name, which `mask` could not read); with more frames such a name is refused.
    frame = tmp_path / "frame.JPG"
    one = subprocess.run([sys.executable, "-m", "edge_ad", "record", "--input", str(mp4), "--out", str(frame),
                          "--frames", "1"], capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    assert (f"a frame saved as {frame}; draw an inspection mask on it: edge-ad mask --frame {frame} --keep X,Y,W,H "
            f"--out {tmp_path / 'frame_mask.png'}\n") in one.stdout  # beside the frame, and never the frame
    assert cv2.imread(str(frame)).shape == frames[0].image.shape and frame.read_bytes()[:2] == b"\xff\xd8"  # JPEG
    many = subprocess.run([sys.executable, "-m", "edge_ad", "record", "--input", str(mp4), "--out",
                           str(tmp_path / "f.png"), "--frames", "2"], capture_output=True, text=True, timeout=120)
    assert many.returncode == 2 and "names one picture, but --frames asks for 2" in many.stderr
    assert not (tmp_path / "f.png").exists()
    grey = subprocess.run([sys.executable, "-m", "edge_ad", "record", "--input", str(mp4), "--out",
                           str(tmp_path / "f.pgm"), "--frames", "1"], capture_output=True, text=True, timeout=120)
    assert grey.returncode == 2 and "as .pgm; give a .png or .jpg name" in grey.stderr  # PGM is grey only


def test_record_says_when_its_pictures_are_near_copies(normal_folder, tmp_path, capsys):
    """A folder's pictures are each recorded, whatever --interval (they are read as fast as they
    load: 1 of 30 was saved), so a folder is cropped and turned as `run` takes it."""
    from edge_ad.record import record

    still = tmp_path / "still"  # a part at rest in view: the same picture, frame after frame
    still.mkdir()
    for i in range(6):
        shutil.copy(sorted(normal_folder.glob("*.png"))[0], still / f"{i}.png")
    assert len(record(open_source(str(still)), tmp_path / "a", count=6)) == 6
    assert ("recording: 100% of the pictures after the first are near-copies of the one before (parts at rest in "
            "view, a stopped line)") in capsys.readouterr().out
    assert len(record(open_source(str(normal_folder)), tmp_path / "b", count=6, interval_s=5.0)) == 6
    assert "near-copies" not in capsys.readouterr().out  # six different cells


def test_record_keeps_a_folder_s_picture_names_and_writes_over_none(normal_folder, tmp_path):
    """A folder's pictures, turned and cropped as `run` takes them, keep their names, so each can be
    traced to the picture it was cut from (a serial number, a label given later); before, they were
    named by the time and order of reading. A name taken is not written over."""
    from edge_ad.record import record

    first, second = (cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))[:2])
    cams = tmp_path / "cams"
    for cam, picture, suffix in (("cam1", first, ".png"), ("cam2", second, ".jpg")):
        (cams / cam).mkdir(parents=True)
        cv2.imwrite(str(cams / cam / f"part_7{suffix}"), picture)
    out = tmp_path / "good"
    saved = record(open_source(f"{cams}/*/*"), out, count=10)  # a wildcard's two folders: the same name
    assert [p.name for p in saved] == ["cam1_part_7.png", "cam2_part_7.png"]
    assert [p.name for p in record(open_source(str(cams / "cam1")), out, count=10)] == ["part_7.png"]
    assert [p.name for p in record(open_source(str(cams / "cam1")), out, count=10, fmt="jpg")] == ["part_7.jpg"]
    assert [p.name for p in record(open_source(str(cams / "cam1")), out, count=10)] == ["part_7-2.png"]
    np.testing.assert_array_equal(cv2.imread(str(out / "cam1_part_7.png")), first)
    # into the folder read (a cropped copy among the pictures it was cut from), or over one of its pictures
    for into, single in ((cams / "cam1", False), (cams / "cam1" / "part_7.png", True)):
        with pytest.raises(EdgeAdError, match=re.escape(f"--out {into}: ")):
            record(open_source(str(cams / "cam1")), into, count=1 if single else 10)
    assert sorted(p.name for p in (cams / "cam1").iterdir()) == ["part_7.png"]
    np.testing.assert_array_equal(cv2.imread(str(cams / "cam1" / "part_7.png")), first)


def test_recording_every_camera_raises_what_stopped_one_once_the_others_are_done(tmp_path, monkeypatch):
    """A camera's recording stopped by memory run out (or a fault of edge-ad's own) was left in
    its thread: the thread's traceback, then a KeyError of the source's name instead of report_errors'
    line. It is raised once the other cameras' recordings have ended, which keep their pictures."""
    from edge_ad import record

    finished = []

    def recording(source, out, *args):
        if source == "wide":
            raise MemoryError("Unable to allocate 36.0 MiB for an array")
        time.sleep(0.5)
        finished.append(source)
        return [out / "0.png"]

    monkeypatch.setattr(record, "record", recording)
    with pytest.raises(MemoryError, match="36.0 MiB"):
        record.record_sources({"wide": "wide", "left": "left"}, tmp_path, 1)
    assert finished == ["left"]


def test_record_keeps_what_it_saved_when_the_disk_fills(mp4, tmp_path, monkeypatch):
    from edge_ad.record import record

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        if len(synced) == 2:
            raise OSError(28, "No space left on device")
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(EdgeAdError, match=r"_00000002\.png: cannot write \(No space left on device\); the 2 pictures"):
        record(open_source(str(mp4)), tmp_path / "good", count=10, interval_s=0.0)
    kept = sorted((tmp_path / "good").iterdir())  # the two whole pictures, and nothing of the third
    assert [p.name[-13:] for p in kept] == ["_00000000.png", "_00000001.png"]
    assert all(cv2.imread(str(p)) is not None for p in kept)


def test_a_recording_killed_while_it_writes_leaves_no_picture_cut_short(tmp_path):
    """A power cut or a kill while `record` writes a picture: the folder is trained on next, and a
    picture cut short there stopped training (or was left out with --skip-bad). The process is
    killed by the kernel part-way through writing its first picture (a file size limit, SIGXFSZ)."""
    folder = tmp_path / "camera"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)  # a PNG of about 230 KB
    cv2.imwrite(str(folder / "0.png"), noise)
    script = ("import resource, signal, sys\n"
              "from edge_ad.cli import main\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
              "main(sys.argv[1:])\n")
    killed = subprocess.run([sys.executable, "-c", script, "record", "--input", str(folder), "--out",
                             str(tmp_path / "good"), "--frames", "1", "--interval", "0"],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    assert [p.name for p in (tmp_path / "good").iterdir() if not p.name.startswith(".")] == []


def test_flipped_frames_are_the_frames_turned(mp4, tmp_path):
    """Every --input-flip of GStreamer (videoflip here) gives the unflipped frame turned as the
    flip's numpy turn, which image folders use: a camera and its recorded stills agree."""
    (upright,) = _first_frames(open_source(str(mp4)), 1)
    cv2.imwrite(str(tmp_path / "still.png"), upright.image)
    for name, flip in FLIPS.items():
        (frame,) = _first_frames(open_source(str(mp4), SourceOptions(flip=name)), 1)
        np.testing.assert_array_equal(frame.image, flip.turn(upright.image), err_msg=name)
        (still,) = list(open_source(str(tmp_path), SourceOptions(flip=name)))
        np.testing.assert_array_equal(still.image, flip.turn(upright.image), err_msg=name)
    assert FLIPS["clockwise"].turn(upright.image).shape == (320, 240, 3)
    assert len({flip.turn(upright.image).tobytes() for flip in FLIPS.values()}) == len(FLIPS)  # all differ


def test_a_video_with_an_orientation_tag_is_read_as_players_show_it(mp4, tmp_path):
    """A phone held upright records frames lying on their side and a matrix in the file saying
    to show them turned a quarter clockwise; every player does, and its photos are read turned
    (EXIF). Read as stored, such a video was scored on its side. --input-flip applies after."""
    import struct

    data = mp4.read_bytes()
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.index(identity, data.index(b"tkhd"))
    quarter_clockwise = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 240 << 16, 0, 0x40000000)
    upright_video = tmp_path / "phone.mp4"
    upright_video.write_bytes(data[:at] + quarter_clockwise + data[at + len(identity):])
    (stored,) = _first_frames(open_source(str(mp4)), 1)
    (shown,) = _first_frames(open_source(str(upright_video)), 1)
    np.testing.assert_array_equal(shown.image, np.rot90(stored.image, -1))
    (mirrored,) = _first_frames(open_source(str(upright_video), SourceOptions(flip="horizontal")), 1)
    np.testing.assert_array_equal(mirrored.image, FLIPS["horizontal"].turn(np.rot90(stored.image, -1)))


def test_a_crop_keeps_that_part_of_the_turned_frame(mp4, tmp_path):
    (upright,) = _first_frames(open_source(str(mp4)), 1)
    cv2.imwrite(str(tmp_path / "still.png"), upright.image)
    part = FLIPS["clockwise"].turn(upright.image)[20:70, 10:110]  # x 10, y 20, 100 x 50 of the turned frame
    turned_and_cropped = SourceOptions(flip="clockwise", crop=(10, 20, 100, 50))
    (frame,) = _first_frames(open_source(str(mp4), turned_and_cropped), 1)
    np.testing.assert_array_equal(frame.image, part)
    (still,) = list(open_source(str(tmp_path), turned_and_cropped))
    np.testing.assert_array_equal(still.image, part)
    with pytest.raises(SourceError, match=r"--input-crop 300,0,100,10 reaches outside the 320x240 frame"):
        list(open_source(str(mp4), SourceOptions(crop=(300, 0, 100, 10))))
    with pytest.raises(SourceError, match=r"crop \[0, 0, 0, 5\] is not x, y, width, height in pixels"):
        open_source(str(mp4), SourceOptions(crop=[0, 0, 0, 5]))  # as a YAML list would give it
    # written as on the command line (crop: 10,20,100,50 is text in YAML): it was refused as "not x, y, width, height"
    (written,) = _first_frames(open_source(str(mp4), SourceOptions(flip="clockwise", crop="10,20,100,50")), 1)
    assert np.array_equal(written.image, frame.image)
    for text in ("10,-20,100,50", "1" * 5000 + ",0,10,10"):  # more digits than int() reads: a traceback
        with pytest.raises(SourceError, match=r"crop '.*' is not x, y, width, height in pixels"):
            open_source(str(mp4), SourceOptions(crop=text))


def test_two_sources_at_once(detector, mp4, tmp_path):
    streams = [Stream("test://ball?width=160&height=120&fps=30", name="cam-a"), Stream(str(mp4), name="line-b")]
    summary = run(detector, streams, RunConfig(events=tmp_path / "ev.jsonl", max_frames=20))
    assert [(s.name, s.frames) for s in summary.sources] == [("cam-a", 20), ("line-b", 20)]
    events = _events(tmp_path / "ev.jsonl")
    assert sorted({e["source"] for e in events}) == ["cam-a", "line-b"]
    assert [e["frame"] for e in events if e["source"] == "line-b"] == list(range(20))


def test_a_full_disk_does_not_stop_inference(detector, tmp_path):
    summary = run(detector, [Stream("test://?width=64&height=48")], RunConfig(events=Path("/dev/full"), max_frames=10))
    assert summary.frames == 10
    assert summary.sink_errors == {"events /dev/full": 10}


def test_sigterm_stops_within_a_second_and_finishes_the_video(tiny_bundle, tmp_path):
    out, events = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle), "--input", "test://ball?width=160&height=120",
         "--output", str(out), "--events", str(events), "--metrics", str(tmp_path / "m.prom")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert wait_for(lambda: events.exists() and len(events.read_text().splitlines()) >= 10, 60)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    stopped_s = time.monotonic() - sent
    assert process.returncode == 0, stderr
    assert "SIGTERM: stopping" in stderr and "frames " in stdout
    frames = int(stdout.split("test://ball?width=160&height=120: frames ")[1].split()[0])
    assert len(list(open_source(str(out)))) == frames  # the MP4 was finished: every scored frame plays
    assert 'edge_ad_frames_total{source="test://ball?width=160&height=120"}' in (tmp_path / "m.prom").read_text()
    print(f"stopped {stopped_s:.2f} s after SIGTERM")  # the stop itself; interpreter exit adds to it


def test_a_killed_run_leaves_a_playable_mp4_and_the_next_run_keeps_it(tiny_bundle, tmp_path):
    """A power cut, the service's watchdog or the OOM killer ends a run without SIGTERM; the service
    then starts it again with the same --output."""
    out, events = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    command = [sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle),
               "--input", "test://ball?width=160&height=120", "--output", str(out), "--events", str(events)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: events.exists() and len(events.read_text().splitlines()) >= 90, 60)  # 3 s at 30 fps
    process.kill()
    process.wait(timeout=30)
    killed = out.read_bytes()
    played = list(open_source(str(out)))
    assert len(played) >= 30 and played[0].image.shape == (120, 160, 3)  # all but the last second or so
    again = subprocess.run(command + ["--max-frames", "20"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"{out} holds an earlier video; this one goes to {tmp_path / 'out-2.mp4'}" in again.stderr
    assert out.read_bytes() == killed
    assert len(list(open_source(str(tmp_path / "out-2.mp4")))) == 20


def test_an_output_that_stopped_takes_no_more_frames(tmp_path):
    """A full disk stops an output's pipeline; its appsrc would then keep every later frame in memory."""
    (tmp_path / "full.mkv").symlink_to("/dev/full")  # every write: no space left on the device
    output = VideoOutput(str(tmp_path / "full.mkv"), 64, 48, 30, jetson=False)
    frame = np.zeros((48, 64, 3), np.uint8)
    failed = []
    for i in range(100):
        try:
            output.write(frame, i / 30)
        except SourceError as exc:
            failed.append(str(exc))
            if len(failed) == 10:
                break
        time.sleep(0.02)
    assert len(failed) == 10 and "No space left" in failed[0]  # the first failure, then the same at each write
    assert set(failed[1:]) == {failed[0]} and output.appsrc.get_property("current-level-bytes") == 0
    output.close()


@pytest.mark.parametrize("live", [True, False])
def test_an_encoder_that_falls_behind_holds_few_frames(tmp_path, live):
    """appsrc keeps every frame it is given: an encoder slower than the frames would hold them all.
    A camera's frames are left out then; a video file's wait, so that each is in the video."""
    Gst = load_gst()
    output = VideoOutput(str(tmp_path / "slow.mkv"), 64, 48, 30, jetson=False, live=live)
    pad = output.appsrc.get_static_pad("src")
    stalled = pad.add_probe(Gst.PadProbeType.BLOCK_DOWNSTREAM, lambda pad, info: Gst.PadProbeReturn.OK)
    levels = []
    if not live:  # the encoder takes frames again a second after they stopped going in
        threading.Timer(1.0, pad.remove_probe, (stalled,)).start()
    frames = [np.full((48, 64, 3), i, np.uint8) for i in range(40)]
    for i, frame in enumerate(frames):
        output.write(frame, i / 30)
        levels.append(output.appsrc.get_property("current-level-bytes"))
    assert max(levels) <= QUEUED_FRAMES * frames[0].nbytes
    left_out = output.left_out.frames
    if live:
        assert 40 - QUEUED_FRAMES - 1 <= left_out <= 40 - QUEUED_FRAMES
        # The run asks before it draws a frame's overlay, which would be drawn for nothing.
        assert [output.wants_frame() for _ in range(3)] == [False] * 3 and output.left_out.frames == left_out + 3
        pad.remove_probe(stalled)
    else:
        assert left_out == 0 and output.wants_frame()
    output.close()
    assert len(list(open_source(str(tmp_path / "slow.mkv")))) == 40 - left_out  # each queued one


def test_an_output_that_stopped_is_opened_again(detector, tmp_path, monkeypatch):
    """Room on the disk again (the snapshot quota deleted some): the video goes on, into a new file."""
    monkeypatch.setattr(runner._VideoSink, "RETRY_S", 0.2)
    video = tmp_path / "out.mkv"
    video.symlink_to("/dev/full")
    failed = threading.Event()

    class _Failures(logging.Handler):
        def emit(self, record):
            if "failed" in record.getMessage():
                failed.set()

    def room_again():
        if failed.wait(30):
            video.unlink()

    handler = _Failures()
    logging.getLogger("edge_ad.sinks").addHandler(handler)
    freed = threading.Thread(target=room_again)
    freed.start()
    try:
        summary = run(detector, [Stream("test://ball?width=64&height=48", output=str(video))], RunConfig(max_frames=150))
    finally:
        logging.getLogger("edge_ad.sinks").removeHandler(handler)
        freed.join()
    assert summary.frames == 150 and summary.sink_errors[f"output {video}"] >= 1
    assert video.is_file() and not video.is_symlink()
    assert 10 <= len(list(open_source(str(video)))) < 150


def test_a_source_whose_time_starts_again_goes_on_in_the_same_video(tmp_path):
    """A camera that reconnects starts its stream time again at 0; the MP4 muxer refused the frames
    ("Could not multiplex stream") and the video stopped."""
    output = VideoOutput(str(tmp_path / "out.mp4"), 64, 48, 10, jetson=False)
    for timestamp in [5.0 + i / 10 for i in range(10)] + [i / 10 for i in range(10)]:  # 5.0-5.9 s, then 0-0.9 s
        output.write(np.zeros((48, 64, 3), np.uint8), timestamp)
        time.sleep(0.01)
    output.close()
    played = [frame.timestamp for frame in open_source(str(tmp_path / "out.mp4"))]
    assert played == pytest.approx([i / 10 for i in range(20)], abs=1e-3)  # one after the other


def test_a_display_output_without_a_screen_says_so():
    """Under a service or over ssh: autovideosink tried DirectFB's sink last, which crashed the
    run (a segmentation fault), or played into a fakesink without a word."""
    try:
        output = VideoOutput("display://0", 64, 48, 30, jetson=False)
    except SourceError as exc:
        assert "display://0: no screen to show the video on" in str(exc) and "http://@:8080/NAME" in str(exc)
    else:  # a machine with a screen shows it
        assert output.pipeline.get_by_name("display").get_child_by_index(0).get_factory().get_name() != "fakesink"
        output.close()


def test_a_new_video_file_is_numbered_past_the_others(tmp_path):
    assert unused_path(tmp_path / "x.mp4") == tmp_path / "x.mp4"
    for name in ("x.mp4", "x-3.mp4", "xy.mp4", "x-9.mkv", "x-10.mp4.part"):
        (tmp_path / name).write_bytes(b"video")
    assert unused_path(tmp_path / "x.mp4") == tmp_path / "x-4.mp4"
    (tmp_path / "x.mp4").unlink()  # deleted for room: the next is still numbered after the newest
    assert unused_path(tmp_path / "x.mp4") == tmp_path / "x-4.mp4"
    os.mkfifo(tmp_path / "pipe.mkv")  # another program reads the video from a named pipe
    assert unused_path(tmp_path / "pipe.mkv") == tmp_path / "pipe.mkv"


def _free_bytes(monkeypatch, free) -> None:
    """The video outputs see `free()` bytes free on their disk."""
    monkeypatch.setattr(outputs, "shutil", SimpleNamespace(disk_usage=lambda path: SimpleNamespace(free=free())))


def test_video_files_make_room_on_a_short_disk(tmp_path, monkeypatch):
    """Less than DISK_RESERVE_BYTES free: the oldest videos go, then the one being written is closed."""
    for number, name in enumerate(("x.mp4", "x-2.mp4", "x-3.mp4")):
        (tmp_path / name).write_bytes(bytes(1000 * (number + 1)))
    monkeypatch.setattr(outputs, "ROOM_CHECK_S", 0.0)
    monkeypatch.setattr(outputs, "ROTATE_BYTES", 3000)
    room, current = outputs.DiskRoom(tmp_path / "x.mp4"), tmp_path / "x-3.mp4"
    _free_bytes(monkeypatch, lambda: outputs.DISK_RESERVE_BYTES)
    assert not room.check(current)  # room enough: nothing goes
    _free_bytes(monkeypatch, lambda: outputs.DISK_RESERVE_BYTES - (tmp_path / "x.mp4").exists())
    assert not room.check(current)  # short until the oldest went
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-2.mp4", "x-3.mp4"]
    _free_bytes(monkeypatch, lambda: 0)
    assert room.check(current)  # still short: the older one goes, and the one being written is closed
    assert [p.name for p in tmp_path.iterdir()] == ["x-3.mp4"]
    current.write_bytes(bytes(2999))  # too small to be worth a new file: written on
    assert not room.check(current) and current.exists()
    current.unlink()  # deleted by hand to make room: the disk gets it back once the file is closed
    assert room.check(current)


def test_a_run_keeps_its_video_files_off_a_short_disk(detector, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(outputs, "ROOM_CHECK_S", 0.2)
    monkeypatch.setattr(outputs, "ROTATE_BYTES", 1)
    _free_bytes(monkeypatch, lambda: 0)
    (tmp_path / "out.mkv").write_bytes(b"an earlier run's video")
    with caplog.at_level(logging.WARNING, logger="edge_ad.outputs"):
        summary = run(detector, [Stream("test://ball?width=64&height=48", output=str(tmp_path / "out.mkv"))],
                      RunConfig(max_frames=90))
    assert summary.frames == 90 and not summary.sink_errors
    left = sorted(tmp_path.glob("out*.mkv"), key=lambda p: int(p.stem.partition("-")[2] or 1))
    assert not (tmp_path / "out.mkv").exists() and len(left) <= 2  # the newest one or two of several
    assert int(left[-1].stem.partition("-")[2]) >= 4
    assert "deleted its oldest video" in caplog.text and all(len(list(open_source(str(p)))) >= 1 for p in left)


def test_anomaly_hook_runs_from_the_stream(detector, tmp_path):
    calls = tmp_path / "calls.txt"
    hook = f"{sys.executable} -c \"import os; open({str(calls)!r}, 'a').write(os.environ['EDGE_AD_FRAME'] + '\\n')\""
    summary = run(detector, [Stream("test://?width=64&height=48", name="cam")], RunConfig(on_anomaly=hook, max_frames=15))
    assert summary.anomalies == 15  # colour bars: every frame alarms
    assert 1 <= len(calls.read_text().split()) <= 15  # one call at a time, none waited for


def test_print_pipeline_and_source_options_from_the_command_line(tiny_bundle):
    """The pipelines a run would build; a camera's password as *** (printed pipelines get
    pasted into tickets), with a word on stderr that it is."""
    printed = subprocess.run(
        [sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle),
         "--input", "rtsp://admin:s3cret@cam/live",
         "--input-codec", "h265", "--latency", "80", "--rtsp-transport", "tcp", "--platform", "jetson",
         "--output", "rtp://10.0.0.9:5000", "--print-pipeline"], capture_output=True, text=True, check=True,
    )
    out = printed.stdout.splitlines()
    assert out[0] == ('rtsp://admin:***@cam/live: rtspsrc location="rtsp://admin:***@cam/live" latency=80 '
                      'drop-on-latency=true protocols=tcp ! rtph265depay ! h265parse ! '
                      "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
                      "appsink name=sink")
    assert "nvv4l2h264enc" in out[1] and "udpsink host=10.0.0.9 port=5000" in out[1]
    assert "s3cret" not in printed.stdout + printed.stderr
    assert "its password is shown as ***; put it back to run the pipeline with gst-launch-1.0" in printed.stderr


def test_soak_script_reports_memory_drops_and_latency(tiny_bundle, tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/soak.py", "--bundle", str(tiny_bundle), "--seconds", "12",
                             "--fps", "15", "--width", "160", "--height", "120", "--out", str(tmp_path), "--no-spin"],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["frames"] + report["dropped"] >= 0.8 * report["frames_expected"]
    assert report["latency_ms_p99"] >= report["latency_ms_p50"] > 0
    assert report["rss_mib_end"] > 0 and "rss_growth_percent" in report
    assert report["onnxruntime_spin"] is False
    assert (tmp_path / "soak.png").stat().st_size > 10_000


def test_rtsp_output_releases_its_port_when_closed():
    _need_rtsp_server()
    from edge_ad.outputs import RtspOutput

    port = free_port()
    RtspOutput(f"rtsp://@:{port}/a", 64, 48, 10).close()
    again = RtspOutput(f"rtsp://@:{port}/a", 64, 48, 10)  # the same port serves again
    again.close()
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # and is free afterwards


def test_rtsp_outputs_on_one_port_are_each_served_at_their_path(detector):
    """A line serves its cameras as rtsp://DEVICE:8554/cam1, /cam2...: each output had its own
    server, and every one after the first failed with "cannot listen on port 8554 (in use?)", at
    its first frame and again every few seconds, while the run went on."""
    _need_rtsp_server()
    port = free_port()
    streams = [Stream(f"test://{pattern}?width=160&height=120&fps=20", output=f"rtsp://@:{port}/{name}")
               for name, pattern in (("cam1", "ball"), ("cam2", "smpte"))]
    stop, thread, box = _run_in_thread(detector, streams, RunConfig())
    try:
        time.sleep(1.0)
        read = {name: frames_within(open_source(f"rtsp://127.0.0.1:{port}/{name}",
                                                 SourceOptions(latency_ms=50, timeout_s=10)), 3, 30)
                for name in ("cam1", "cam2")}
    finally:
        stop.set()
        thread.join(timeout=10)
    assert {name: len(frames) for name, frames in read.items()} == {"cam1": 3, "cam2": 3}
    assert box["summary"].sink_errors == {}
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # the last output's close released the port


def test_an_output_port_that_cannot_be_served_stops_the_run_before_it_starts(detector):
    """An RTSP or HTTP output on a port another program listens on (or, for a user, one below
    1024, as RTSP's 554) failed at its first frame, and every few seconds after, while the run
    scored on."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for output in (f"rtsp://@:{port}/line", f"http://@:{port}/line"):
            with pytest.raises(EdgeAdError, match=rf"--output {output}: cannot listen on port {port} \(Address already "
                                                  r"in use\)"):
                run(detector, [Stream("test://", output=output)], RunConfig(max_frames=1))
    free = free_port()
    with pytest.raises(EdgeAdError, match=f"port {free} is taken by --output rtsp://@:{free}/a; an RTSP and an HTTP "
                                          "output need ports of their own"):
        run(detector, [Stream("test://", output=f"rtsp://@:{free}/a"),
                       Stream("test://ball", output=f"http://@:{free}/b")], RunConfig(max_frames=1))


def test_a_frame_the_detector_refuses_is_skipped_and_the_run_goes_on(detector, tmp_path, monkeypatch):
    from edge_ad.errors import EdgeAdError

    graphs = detector.frame_grid_maps
    refused: dict[bytes, bool] = {}  # every third distinct frame, decided once so a retry fails too

    def flaky(frames, color="BGR"):
        if any(refused.setdefault(f.tobytes(), len(refused) % 3 == 2) for f in frames):  # NaN maps
            raise EdgeAdError("bundle: the graphs returned NaN or infinite values")
        return graphs(frames, color)

    monkeypatch.setattr(detector, "frame_grid_maps", flaky)
    summary = run(detector, [Stream("test://ball?width=64&height=48", name="cam")],
                  RunConfig(events=tmp_path / "ev.jsonl", metrics=tmp_path / "m.prom", max_frames=12))
    (stats,) = summary.sources
    assert stats.frames == 12 and stats.failed >= 1
    assert len(_events(tmp_path / "ev.jsonl")) == 12
    assert 'edge_ad_failed_total{source="cam"}' in (tmp_path / "m.prom").read_text()


def test_rtp_output_read_back_by_an_rtp_source(detector):
    port = free_port(socket.SOCK_DGRAM)
    viewer = open_source(f"rtp://@:{port}", SourceOptions(latency_ms=50, timeout_s=10))  # listening first
    stream = Stream("test://ball?width=160&height=120&fps=20", output=f"rtp://127.0.0.1:{port}")
    stop, thread, box = _run_in_thread(detector, [stream], RunConfig())
    try:
        frames = _first_frames(viewer, 5)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert frames[0].image.shape == (120, 160, 3)  # the overlay video, decoded again
    assert box["summary"].sink_errors == {}


def _mjpeg_parts(response, count: int) -> list[tuple[float, np.ndarray]]:
    """The first `count` JPEG pictures of a multipart/x-mixed-replace response, with their arrival times."""
    parts = []
    while len(parts) < count:
        assert response.readline() == b"--frame\r\n"
        headers = {}
        while (line := response.readline()) != b"\r\n":
            key, _, value = line.decode().partition(":")
            headers[key.lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        data = response.read(int(headers["content-length"]))
        assert response.readline() == b"\r\n"
        parts.append((time.monotonic(), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)))
    return parts


def test_http_outputs_show_the_overlays_in_a_browser(detector):
    """http://@:port/path serves a source's overlay as MJPEG, at most MJPEG_FPS pictures a second;
    two sources share the port, and its / is a page showing both."""
    import urllib.error
    import urllib.request

    from edge_ad.mjpeg import MJPEG_FPS

    port = free_port()
    streams = [Stream("test://ball?width=160&height=120&fps=30", "line1", output=f"http://@:{port}/line1"),
               Stream("test://smpte?width=96&height=64&fps=30", "line2", output=f"http://@:{port}/line2")]
    stop, thread, box = _run_in_thread(detector, streams, RunConfig())
    try:
        assert wait_for(lambda: box or _port_open(port), 10)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        # each output opens at its source's first frame: both there (under load the ball's came seconds after)
        assert wait_for(lambda: all(path in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                                    for path in (b"/line1", b"/line2")), 10)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        # pictures one after another, not streams: a browser's 6 connections to a server would be
        # held by 6 streams, and a seventh, or a second tab, would show nothing
        assert '<img data-still="/line1/frame.jpg"' in page and '<img data-still="/line2/frame.jpg"' in page
        assert '<a href="/line1">/line1</a>' in page  # the stream, for one source alone
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/line2/frame.jpg", timeout=5) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            still = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/line1", timeout=5) as response:
            assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
            parts = _mjpeg_parts(response, 8)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/line2", timeout=5) as response:
            (_, other), = _mjpeg_parts(response, 1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert all(picture.shape == (120, 160, 3) for _, picture in parts) and other.shape == still.shape == (64, 96, 3)
    # The overlay, not the bare frame: the score's text is drawn in OK green or NG red.
    assert any(np.any(np.all(np.abs(picture.astype(int) - colour) < 40, axis=2))
               for _, picture in parts for colour in ((80, 200, 80), (40, 40, 230)))
    seconds = parts[-1][0] - parts[0][0]
    assert seconds >= (len(parts) - 1) / MJPEG_FPS * 0.8  # 30 fps in, no more than MJPEG_FPS out
    assert box["summary"].sink_errors == {}
    assert not _port_open(port)  # the last output on the port released it


def test_outputs_nobody_watches_draw_no_overlays(detector, tmp_path, monkeypatch):
    """A 12-megapixel frame's overlay takes 100 ms or more: an http output with no browser on it
    held a run that scores 6.5 frames a second at 2.1. RTSP likewise, with no client."""
    drawn = []
    monkeypatch.setattr(runner, "overlay", lambda frame, result, size=None: drawn.append(size) or frame.copy())
    monkeypatch.setattr(runner, "LAST_ALARM_S", 3600.0)  # however slow the machine, one last-alarm picture
    streams = [Stream("test://?width=96&height=64", "file", output=str(tmp_path / "seen.mkv")),
               Stream("test://?width=64&height=48", "web", output=f"http://@:{free_port()}/web")]
    try:
        outputs.rtsp_server("rtsp://@:1/x")
        streams.append(Stream("test://?width=64&height=48", "rtsp", output=f"rtsp://@:{free_port()}/rtsp"))
    except SourceError:  # gir1.2-gst-rtsp-server-1.0 is not installed
        pass
    summary = run(detector, streams, RunConfig(max_frames=20))
    assert summary.frames == 20 * len(streams) and summary.sink_errors == {}
    assert drawn.count((96, 64)) == 20  # the file's
    assert drawn.count((64, 48)) <= 1  # an alarm's at most, for the web output's last-alarm picture
    assert len(drawn) <= 21


def test_videos_of_frames_of_an_odd_size_or_larger_than_1080p(detector, tmp_path):
    """x264enc refused frames of an odd size (a crop of 321 x 241 wrote no video at all), and a
    large camera's video was as large as its frames: 12 megapixels for a browser, a screen or a
    Jetson's encoder, with an overlay drawn at that size for every frame."""
    streams = [Stream("test://ball?width=640&height=480", "odd", output=str(tmp_path / "odd.mkv"),
                      options=SourceOptions(crop=(11, 11, 321, 241))),
               Stream("test://smpte?width=2592&height=1944", "large", output=str(tmp_path / "large.mkv"))]
    summary = run(detector, streams, RunConfig(max_frames=5, snapshots=tmp_path / "snaps", snapshot_interval_s=0.0))
    assert summary.frames == 10 and summary.sink_errors == {}
    shapes = {name: {f.image.shape for f in _first_frames(open_source(str(tmp_path / f"{name}.mkv")), 5)}
              for name in ("odd", "large")}
    assert shapes == {"odd": {(240, 320, 3)}, "large": {(1080, 1440, 3)}}
    snapshot = next((tmp_path / "snaps").glob("large_*_overlay.jpg"))  # an alarm's: the whole frame
    assert cv2.imread(str(snapshot)).shape == (1944, 2592, 3)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_browser_output_serves_its_source_s_last_alarm_for_an_hmi(detector, spotted_frames):
    """An HMI beside the line shows the last rejected part's picture from a fixed URL, as smart
    cameras serve it: PATH/last-alarm.jpg, whether anyone watches the stream or not."""
    import urllib.error
    import urllib.request
    from email.utils import formatdate

    from edge_ad.mjpeg import MjpegOutput
    from edge_ad.output_access import OutputAccess

    port = free_port()
    output = MjpegOutput(f"http://@:{port}/line", 64, 48, 10)
    try:
        with pytest.raises(urllib.error.HTTPError, match="404"):  # no alarm yet
            urllib.request.urlopen(f"http://127.0.0.1:{port}/line/last-alarm.jpg", timeout=5)
        output.keep_alarm(np.full((48, 64, 3), (0, 0, 255), np.uint8), 1.8e9)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/line/last-alarm.jpg", timeout=5) as answer:
            picture = cv2.imdecode(np.frombuffer(answer.read(), np.uint8), cv2.IMREAD_COLOR)
            assert answer.headers["Last-Modified"] == formatdate(1.8e9, usegmt=True)  # when its frame was taken
        assert picture.shape == (48, 64, 3) and picture[..., 2].mean() > 240
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert b'<a href="/line/last-alarm.jpg">last alarm</a>' in page.read()
    finally:
        output.close()

    # A run: the overlays of the folder's spotted cells, behind the outputs' login.
    looped = Stream(str(spotted_frames), "line", output=f"http://@:{port}/line", options=SourceOptions(loop=-1))
    stop, thread, box = _run_in_thread(detector, [looped], RunConfig(output_access=OutputAccess("hmi", "s3cret")))
    asked = urllib.request.Request(f"http://127.0.0.1:{port}/line/last-alarm.jpg",
                                   headers={"Authorization": "Basic " + base64.b64encode(b"hmi:s3cret").decode()})

    def last_alarm() -> np.ndarray | None:
        try:
            with urllib.request.urlopen(asked, timeout=5) as answer:
                return cv2.imdecode(np.frombuffer(answer.read(), np.uint8), cv2.IMREAD_COLOR)
        except (urllib.error.URLError, ConnectionError):  # not serving yet, or no alarm yet
            return None

    try:
        assert wait_for(lambda: last_alarm() is not None, 30)
        picture = last_alarm()
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/line/last-alarm.jpg", timeout=5)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert picture.shape == (300, 300, 3)  # the output's size: the cells' own
    red = (picture[..., 2] > 180) & (picture[..., 1] < 90) & (picture[..., 0] < 90)
    assert red.sum() > 100  # the overlay's outline and NG label: an alarm's, not the camera's picture
    assert box["summary"].sink_errors == {}


def test_a_connection_that_asks_nothing_is_closed_and_holds_no_thread(monkeypatch):
    """Each connection to an HTTP output has a thread: ones opened and left silent (by the
    thousand, from anyone on the network) held theirs for ever."""
    import urllib.request

    from edge_ad import mjpeg

    monkeypatch.setattr(mjpeg, "REQUEST_S", 0.5)
    port = free_port()
    output = mjpeg.MjpegOutput(f"http://@:{port}/line", 64, 48, 10)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    try:  # (each client gives up after 5 s: a connection left open fails the test)
        assert [client.recv(16) for client in silent] == [b""] * 20  # closed by the output (its threads end)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:  # a viewer is served still
            assert b'<img data-still="/line/frame.jpg"' in page.read()
    finally:
        output.close()
        for client in silent:
            client.close()


def _answered(port: int, request: bytes) -> tuple[bytes, bool]:
    """What a server on `port` answers `request` with, and whether it then closes the connection
    (within 2 s)."""
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            client.sendall(request)
            while chunk := client.recv(4096):
                answer += chunk
    except ConnectionError:
        pass
    except TimeoutError:
        return answer, False
    return answer, True


@pytest.mark.parametrize("scheme, request_, answer, kind", [
    ("http", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200 OK", "browser"),
    # gst-rtsp-server may have read and answered a request before the refused client is closed
    ("rtsp", b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", b"RTSP/1.0 200 OK", "RTSP"),
])
def test_a_flood_of_connections_to_an_output_leaves_the_run_its_threads(scheme, request_, answer, kind, monkeypatch,
                                                                         caplog):
    """Each connection holds a file descriptor (and an HTTP one a thread), of a service's 1,024
    for its snapshots, events files and cameras too. Past the limit a new connection is closed
    as accepted (said once), and one that ends makes room for the next viewer."""
    from edge_ad import connection_limit

    if scheme == "rtsp":
        _need_rtsp_server()
    monkeypatch.setattr(connection_limit, "MAX_CONNECTIONS", 3)
    port = free_port()
    output = (outputs.RtspOutput if scheme == "rtsp" else outputs.MjpegOutput)(f"{scheme}://@:{port}/line", 64, 48,
                                                                                10)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        with caplog.at_level(logging.WARNING, logger="edge_ad.connection_limit"):
            for _ in range(2):
                said, closed = _answered(port, request_)
                assert closed and (said == b"" or scheme == "rtsp")  # closed, unanswered
        assert [record.getMessage() for record in caplog.records] == [
            f"the {kind} outputs on port {port}: 3 connections open, the most there may be: closed a new one "
            "from 127.0.0.1 (1 refused since the run started: more clients at once than that, or one that "
            "leaves its connections open)"]
        held.pop().close()  # a viewer leaves
        assert wait_for(lambda: _answered(port, request_)[0].startswith(answer), 5)
    finally:
        output.close()
        for client in held:
            client.close()


def test_a_request_to_an_rtsp_output_announcing_a_larger_body_than_it_takes_is_refused():
    """gst-rtsp-server took whatever body Content-Length announced: a client announcing 2 GB had
    them all kept, 300 MB sent made the run 300 MB larger. Past RTSP_BODY_BYTES the request is
    answered 413 and the connection closed; a viewer's GET_PARAMETER is answered as before."""
    _need_rtsp_server()
    port = free_port()
    output = outputs.RtspOutput(f"rtsp://@:{port}/line", 64, 48, 10)

    def asking(length: int) -> bytes:
        return (b"GET_PARAMETER rtsp://127.0.0.1:%d/line RTSP/1.0\r\nCSeq: 1\r\nContent-Type: text/parameters\r\n"
                b"Content-Length: %d\r\n\r\n" % (port, length))
    try:
        said, closed = _answered(port, asking(2_000_000_000))  # the body is not sent: the old server waited for it
        assert said.startswith(b"RTSP/1.0 413 Request Entity Too Large") and closed
        said, _ = _answered(port, asking(outputs.RTSP_BODY_BYTES + 1))
        assert said.startswith(b"RTSP/1.0 413")
        said, _ = _answered(port, asking(0))  # a keep-alive
        assert said.startswith(b"RTSP/1.0 200 OK")
    finally:
        output.close()


def test_a_picture_asked_for_is_drawn_for_it_and_no_longer(monkeypatch):
    """PATH/frame.jpg, what the page at / shows: the next picture, drawn for the request (nobody
    watches a stream), and nothing drawn once nobody asks; a source that is away is said."""
    import urllib.error
    import urllib.request

    from edge_ad import mjpeg

    monkeypatch.setattr(mjpeg, "STILL_WAIT_S", 0.5)
    port = free_port()
    output = mjpeg.MjpegOutput(f"http://@:{port}/line", 64, 48, 10)
    try:
        assert not output.wants_frame()
        with pytest.raises(urllib.error.HTTPError, match="503") as away:  # no frame comes
            urllib.request.urlopen(f"http://127.0.0.1:{port}/line/frame.jpg", timeout=5)
        assert b"no picture from the source of /line in 0.5 s" in away.value.read()
        drawn = []

        def camera(stop: threading.Event) -> None:  # the runner draws a frame only when wanted
            while not stop.is_set():
                now = time.monotonic()  # before the output's own look at the clock, however slow the machine
                if output.wants_frame():
                    drawn.append(now)
                    output.write(np.full((48, 64, 3), 200, np.uint8), time.time())
                time.sleep(0.01)

        stop = threading.Event()
        thread = threading.Thread(target=camera, args=(stop,))
        thread.start()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/line/frame.jpg", timeout=5) as answer:
                picture = cv2.imdecode(np.frombuffer(answer.read(), np.uint8), cv2.IMREAD_GRAYSCALE)
            asked_at = time.monotonic()
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join()
        assert picture.shape == (48, 64) and abs(int(picture.mean()) - 200) <= 2
        assert drawn and drawn[-1] < asked_at + 0.5  # none drawn past STILL_WAIT_S after the request
    finally:
        output.close()


def test_the_page_s_pictures_come_over_one_connection_and_a_stream_ends_its_own():
    """The page asks each source's picture ten times a second: over one kept connection (HTTP/1.1),
    not one each (over HTTPS, a TLS handshake each: 4.2-5.0 ms of CPU a picture here, 1.3-2.0 kept).
    A stream has no length, so its connection closes with it. HEAD is answered as every HTTP
    server must (it was 501)."""
    import http.client

    from edge_ad.mjpeg import MjpegOutput

    port = free_port()
    output = MjpegOutput(f"http://@:{port}/line", 64, 48, 10)
    stop = threading.Event()

    def camera() -> None:
        while not stop.is_set():
            if output.wants_frame():
                output.write(np.full((48, 64, 3), 200, np.uint8), time.time())
            time.sleep(0.01)

    thread = threading.Thread(target=camera)
    thread.start()
    try:
        page = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        kept = []
        for path in ("/", "/line/frame.jpg", "/line/frame.jpg", "/nothing-here/frame.jpg"):
            page.request("GET", path)
            answer = page.getresponse()
            answer.read()
            kept.append((answer.status, answer.version, page.sock))
        assert [status for status, _, _ in kept] == [200, 200, 200, 404]
        assert all(version == 11 and sock is kept[0][2] for _, version, sock in kept[:3])  # one connection
        # HEAD (uptime monitors, curl -I): GET's head, no body, the connection kept for the next request
        for method, path in (("HEAD", "/line/frame.jpg"), ("GET", "/line/frame.jpg"), ("HEAD", "/line")):
            page.request(method, path)
            answer = page.getresponse()
            kept.append((answer.status, answer.getheader("Content-Type"), answer.read()))
        head, got, stream = kept[-3:]
        assert head == (200, "image/jpeg", b"") and got[:2] == (200, "image/jpeg") and got[2].startswith(b"\xff\xd8")
        assert stream == (200, "multipart/x-mixed-replace; boundary=frame", b"")
        page.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as viewer:
            viewer.sendall(b"GET /line HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head and (chunk := viewer.recv(4096)):  # b"": closed before its head
                head += chunk
            assert b"Connection: close" in head and b"multipart/x-mixed-replace" in head
            output.close()  # the run stops: the stream ends, and its connection with it
            while viewer.recv(65536):
                pass
    finally:
        stop.set()
        thread.join()
        output.close()


def test_a_viewer_gone_mid_answer_prints_no_traceback(capfd, caplog, monkeypatch):
    """A tab closed or reloaded while its pictures came resets the connection: socketserver printed
    25 lines of traceback to stderr (under the service, the journal) for each such request, 395
    for 400 here. Quiet now; an error of the output's own is still logged, with its traceback."""
    import struct

    from edge_ad import mjpeg

    port = free_port()
    output = mjpeg.MjpegOutput(f"http://@:{port}/line", 64, 48, 10)
    try:
        for _ in range(3):  # no camera: each waits STILL_WAIT_S for a picture, then answers 503 to no one
            viewer = socket.create_connection(("127.0.0.1", port), timeout=5)
            viewer.sendall(b"GET /line/frame.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
            viewer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # closed with a reset
            viewer.close()
        time.sleep(mjpeg.STILL_WAIT_S + 1.0)
        assert "Traceback" not in capfd.readouterr().err
        monkeypatch.setattr(mjpeg._Server, "index", lambda self: 1 / 0)
        with caplog.at_level(logging.ERROR, logger="edge_ad.connection_limit"):
            assert _answered(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == (b"", True)
        assert f"the browser outputs on port {port}: answering 127.0.0.1 failed" in caplog.text
        assert "ZeroDivisionError" in caplog.text
    finally:
        output.close()


def test_http_output_lets_clients_go_and_its_port_free():
    from edge_ad.mjpeg import MjpegOutput

    port = free_port()
    output = MjpegOutput(f"http://@:{port}/", 64, 48, 10)
    picture = np.zeros((48, 64, 3), np.uint8)
    output.write(picture, 0.0)
    assert output.sequence == 0  # nobody watches: nothing is encoded
    with pytest.raises(SourceError, match=f"another output already serves / on port {port}"):
        MjpegOutput(f"http://@:{port}", 64, 48, 10)
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(lambda: output.clients == 1, 5)
    client.close()  # a client that leaves does not stop the writer
    for i in range(30):
        output.write(picture, i / 10)
        time.sleep(0.01)
    assert wait_for(lambda: output.clients == 0, 5)
    output.close()
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))
        s.listen()
        with pytest.raises(SourceError, match=f"cannot listen on port {port}"):
            MjpegOutput(f"http://@:{port}/a", 64, 48, 10)
    with pytest.raises(SourceError, match="an HTTP output needs a port"):
        MjpegOutput("http://camera/line1", 64, 48, 10)
    for uri in ("http://@:99999/line1", "rtsp://@:99999/line1"):  # a traceback before, from urllib's ValueError
        with pytest.raises(SourceError, match=f"{uri}: the port is not a number from 0 to 65535"):
            check_servable([uri])
    with pytest.raises(SourceError, match="rtp://10.0.0.9:99999: the port is not a number from 0 to 65535"):
        output_description("rtp://10.0.0.9:99999", 64, 48, 10, False)
    for uri in ("http://[::1:8080/line1", "rtsp://[::1:8554/line1"):  # a traceback before
        with pytest.raises(SourceError, match=re.escape(f"{uri}: not a URI that reads (an IPv6 address without")):
            check_servable([uri])
    with pytest.raises(SourceError, match=re.escape("rtp://[fd00::9:5000: not a URI that reads (an IPv6 address")):
        output_description("rtp://[fd00::9:5000", 64, 48, 10, False)
    for uri in ("http://@:0/line1", "rtsp://@:0/line1"):  # served on a port the system picked, told to nobody
        with pytest.raises(EdgeAdError, match=f"--output {uri}: port 0 would be a free port the system picks"):
            check_servable([uri])
    with pytest.raises(SourceError, match="rtp://10.0.0.9:0: an RTP output needs a host and a port"):
        output_description("rtp://10.0.0.9:0", 64, 48, 10, False)


def test_a_usb_camera_that_is_not_there_says_what_names_it_for_good():
    with pytest.raises(SourceError, match=r"/dev/video93: Cannot identify device '/dev/video93'\. \(v4l2src\d+\): no "
                                          r"such camera now: unplugged, or numbered otherwise since a reboot"):
        next(iter(open_source("/dev/video93", SourceOptions(timeout_s=1))))


@pytest.mark.parametrize("tls", [False, True], ids=["login", "login-over-tls"])
def test_rtsp_and_http_outputs_let_in_only_viewers_with_the_login(detector, tmp_path, monkeypatch, caplog, tls):
    """--output-user (and --output-certificate): the overlays of a line whose cameras ask for a
    password were served to anyone on the network who asked, and over TLS to no one."""
    import ssl
    import urllib.error
    import urllib.request

    from edge_ad.output_access import OutputAccess

    _need_rtsp_server()
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    certificate(tmp_path, "device")
    pem = str(tmp_path / "device.pem")
    access = OutputAccess("viewer", "s3cret", *((pem, str(tmp_path / "device.key")) if tls else (None, None)))
    rtsp, http = ("rtsps", "https") if tls else ("rtsp", "http")
    rtsp_port, http_port = free_port(), free_port()
    streams = [Stream("test://ball?width=160&height=120&fps=20", "line1", output=f"{rtsp}://@:{rtsp_port}/line1"),
               Stream("test://smpte?width=96&height=64&fps=20", "line2", output=f"{http}://@:{http_port}/line2")]
    stop, thread, box = _run_in_thread(detector, streams, RunConfig(output_access=access))
    options = SourceOptions(latency_ms=50, timeout_s=10, certificate=pem if tls else None)
    context = ssl.create_default_context(cafile=pem)
    context.check_hostname = False  # the device's certificate names no address
    try:
        assert wait_for(lambda: _port_open(http_port), 10)
        seen = {uri: len(frames_within(open_source(uri, options), 3, 30)) for uri in (
            f"{rtsp}://viewer:s3cret@127.0.0.1:{rtsp_port}/line1", f"{http}://viewer:s3cret@127.0.0.1:{http_port}/line2")}
        with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
            for login in ("viewer:wrong@", ""):
                assert frames_within(open_source(f"{rtsp}://{login}127.0.0.1:{rtsp_port}/line1",
                                                 replace(options, timeout_s=2)), 1, 2) == []
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{http}://127.0.0.1:{http_port}/", timeout=5, context=context)
        asked = urllib.request.Request(f"{http}://127.0.0.1:{http_port}/",
                                       headers={"Authorization": "Basic " + base64.b64encode(b"viewer:s3cret").decode()})
        page = urllib.request.urlopen(asked, timeout=5, context=context).read().decode()
        if tls:  # over TLS only: plain RTSP and HTTP get nothing, nor RTP over UDP, outside the TLS connection
            assert frames_within(open_source(f"rtsp://viewer:s3cret@127.0.0.1:{rtsp_port}/line1",
                                             SourceOptions(timeout_s=2)), 1, 2) == []
            assert frames_within(open_source(f"rtsps://viewer:s3cret@127.0.0.1:{rtsp_port}/line1",
                                             replace(options, timeout_s=2, transport="udp")), 1, 2) == []
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=5)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert list(seen.values()) == [3, 3] and '<img data-still="/line2/frame.jpg"' in page
    assert re.search(r"Unauthorized \(rtspsrc\d+\): the camera refused the user and password", caplog.text)
    assert re.search(r"Unauthorized \(rtspsrc\d+\): the camera asks for a login", caplog.text)
    assert box["summary"].sink_errors == {}


def test_wrong_output_logins_from_one_address_shut_it_out_of_every_output_for_a_while(detector, monkeypatch, caplog):
    """A viewer's password could be guessed at the network's speed: after five wrong logins in a row
    (HTTP or RTSP), the address gets nothing for a while, even with the right one."""
    import urllib.error
    import urllib.request

    from edge_ad import login_attempts
    from edge_ad.output_access import OutputAccess

    _need_rtsp_server()
    monkeypatch.setattr(login_attempts, "LOCKOUT_S", 4.0)
    rtsp_port, http_port = free_port(), free_port()
    streams = [Stream("test://ball?width=160&height=120&fps=20", "line1", output=f"rtsp://@:{rtsp_port}/line1"),
               Stream("test://smpte?width=96&height=64&fps=20", "line2", output=f"http://@:{http_port}/line2")]
    stop, thread, box = _run_in_thread(detector, streams, RunConfig(output_access=OutputAccess("viewer", "s3cret")))

    def page(password: str) -> int:
        login = "Basic " + base64.b64encode(f"viewer:{password}".encode()).decode()
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{http_port}/",
                                                               headers={"Authorization": login}), timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            if exc.code == 429:  # says when to try again: within the lockout's 4 s
                waits = int(exc.headers["Retry-After"])
                assert 1 <= waits <= 4
                assert exc.read() == f"too many wrong logins from this address: try again in {waits} s".encode()
            return exc.code

    rtsp = f"rtsp://viewer:s3cret@127.0.0.1:{rtsp_port}/line1"
    options = SourceOptions(latency_ms=50, timeout_s=2)
    try:
        with caplog.at_level(logging.WARNING, logger="edge_ad.login_attempts"):
            assert wait_for(lambda: _port_open(http_port), 10)
            assert [page("guess") for _ in range(5)] == [401] * 5
            assert page("s3cret") == 429  # the right password too: the address waits
            assert frames_within(open_source(rtsp, options), 1, 2) == []  # and over RTSP
            time.sleep(4.0)
            assert page("s3cret") == 200 and len(frames_within(open_source(rtsp, options), 2, 20)) == 2
            assert frames_within(open_source(rtsp.replace("s3cret", "guess"), options), 1, 2) == []  # RTSP counts
    finally:
        stop.set()
        thread.join(timeout=10)
    assert caplog.text.count("output login: a wrong user or password from 127.0.0.1") == 2  # HTTP's, then RTSP's
    assert caplog.text.count("output login: 5 wrong logins in a row from 127.0.0.1: refused for 4 s") == 1
    assert box["summary"].sink_errors == {}


def test_output_logins_and_certificates_are_refused_before_the_start_when_they_cannot_serve(tmp_path, caplog):
    from edge_ad.output_access import OutputAccess

    from cryptography.hazmat.primitives import serialization

    _, device_key = certificate(tmp_path, "device")
    certificate(tmp_path, "other")
    pem, key = str(tmp_path / "device.pem"), str(tmp_path / "device.key")
    (tmp_path / "locked.key").write_bytes(device_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    for access, served, said in (
            (OutputAccess(), ["rtsps://@:8554/line"], "--output rtsps://@:8554/line: served over TLS, it needs "
                                                      "--output-certificate FILE and --output-key FILE"),
            (OutputAccess(certificate=pem, key=key), ["http://@:8080/line"],
             "--output http://@:8080/line: with --output-certificate, outputs are served over TLS only: write it "
             "https://@:8080/line"),
            (OutputAccess("viewer", "pw"), ["out.mp4"], "--output-user and --output-certificate are for RTSP and "
                                                        "HTTP outputs"),
            (OutputAccess(certificate=pem, key=pem), ["https://@:8443/line"],
             f"--output-certificate {pem} / --output-key {pem}: they do not read as a certificate (PEM) and its "
             "unencrypted key"),
            (OutputAccess(certificate=pem, key=str(tmp_path / "other.key")), ["https://@:8443/line"],
             f"--output-key {tmp_path / 'other.key'}: not the key of --output-certificate {pem}"),
            # before OpenSSL asked for its password on the terminal, where a service has no one to type it
            (OutputAccess(certificate=pem, key=str(tmp_path / "locked.key")), ["https://@:8443/line"],
             f"--output-key {tmp_path / 'locked.key'}: the key is encrypted")):
        with pytest.raises(EdgeAdError, match=re.escape(said)):
            access.check(served)
    with caplog.at_level(logging.WARNING, logger="edge_ad.output_access"):
        OutputAccess("viewer", "pw").check(["http://@:8080/line", "rtsp://@:8554/line"])
    assert "browsers send the password of an http:// output readable" in caplog.text
    assert "s3cret" not in repr(OutputAccess("viewer", "s3cret"))  # as a RunConfig's part, in a log or a traceback
    result = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", "nowhere", "--input", "test://ball",
                             "--output", "rtsp://@:8554/line", "--output-user", "viewer"], capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items() if k != "EDGE_AD_OUTPUT_PASSWORD"})
    assert result.returncode != 0 and ("--output-user viewer: set the user's password in the environment variable "
                                       "EDGE_AD_OUTPUT_PASSWORD") in result.stderr
