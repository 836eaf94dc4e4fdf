"""`--input http://camera/snapshot.jpg --input-codec jpeg`: a camera's still picture, fetched again
and again. Before, such a URL was refused as "not an MJPEG stream", and cameras that serve no
stream over HTTP could not be read that way."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from edge_ad import http_pictures
from edge_ad.errors import SourceError
from edge_ad.pipelines import SourceOptions
from edge_ad.sources import open_source

from conftest import edge_ad, frames_within, free_port

JPEG = SourceOptions(codec="jpeg")
PAGES = ("/snapshot.jpg", "/", "/video")
USER, PASSWORD = "admin", "p@ss word"


DIGESTS = {"digest": ("MD5", hashlib.md5), "digest-sha256": ("SHA-256", hashlib.sha256)}


def _digest_ok(header: str, method: str, login: str) -> bool:
    """Whether a Digest Authorization header (RFC 7616, qop=auth, the hash of `login`) proves
    USER's PASSWORD."""
    algorithm, function = DIGESTS[login]

    def digest(text: str) -> str:
        return function(text.encode()).hexdigest()

    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header.removeprefix("Digest ")))
    if fields.get("username") != USER or not {"uri", "nonce", "nc", "cnonce", "qop"} <= set(fields):
        return False
    known = digest(f"{USER}:camera:{PASSWORD}")
    asked = digest(f"{method}:{fields['uri']}")
    proof = digest(f"{known}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{asked}")
    return fields.get("algorithm") == algorithm and fields.get("response") == proof


@contextmanager
def _camera(picture: np.ndarray, login: str):
    """A camera's web server: its picture at /snapshot.jpg (a new JPEG of it at each request, the
    requests counted), a page at /, and an MJPEG stream at /video (which ends when its client
    leaves), to a client that gives USER and PASSWORD by `login` ("basic", "digest" or
    "digest-sha256") authentication; its address."""
    jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self):
            given = self.headers.get("Authorization") or ""
            if not (given == basic if login == "basic" else _digest_ok(given, "GET", login)):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="camera"' if login == "basic" else
                                 f'Digest realm="camera", qop="auth", nonce="5f1e2d", algorithm={DIGESTS[login][0]}')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path not in PAGES:
                self.send_error(404)
                return
            if self.path == "/video":
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=picture")
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"--picture\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n")
                except OSError:  # the client left
                    return
            body, kind = {"/snapshot.jpg": (jpeg, "image/jpeg"), "/": (b"<html>camera</html>", "text/html")}[self.path]
            server.requests += self.path == "/snapshot.jpg"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Camera)
    server.requests = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _answering(reply: bytes):
    """A server on 127.0.0.1 that answers every request with `reply` and closes; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # closed
                return
            with connection:
                connection.recv(4096)
                connection.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopped.set()
        listener.close()


@pytest.mark.parametrize("login", ["basic", "digest", "digest-sha256"])
def test_a_camera_s_still_picture_is_fetched_again_and_again_no_faster_than_asked(login):
    picture = np.zeros((48, 64, 3), np.uint8)
    picture[:, 32:] = (40, 160, 250)
    with _camera(picture, login) as camera:
        uri = f"http://admin:p%40ss%20word@127.0.0.1:{camera.server_port}/snapshot.jpg"
        source = open_source(uri, SourceOptions(codec="jpeg", framerate=10))
        assert source.live and source.description == (f"still pictures of http://127.0.0.1:{camera.server_port}"
                                                      "/snapshot.jpg, 10 a second at most")
        started = time.monotonic()
        read = frames_within(source, 4, 30)
        took = time.monotonic() - started
    assert [frame.image.shape for frame in read] == [(48, 64, 3)] * 4 and [f.index for f in read] == [0, 1, 2, 3]
    assert np.abs(read[-1].image.astype(int) - picture).mean() < 3  # the JPEG's picture, in BGR
    assert took >= 0.3 and camera.requests == 4  # three waits of a tenth of a second between four requests


def test_what_keeps_a_still_picture_from_coming_is_said_and_tried_again(caplog, monkeypatch):
    with _camera(np.zeros((48, 64, 3), np.uint8), "digest") as camera:
        address = f"127.0.0.1:{camera.server_port}"
        for uri, said in (
            (f"http://admin:n0tit@{address}/snapshot.jpg",
             "the camera refuses the login (HTTP 401: user or password wrong, or none given)"),
            (f"http://admin:p%40ss%20word@{address}/nothing.jpg", "the camera answers 404 Not Found"),
            (f"http://admin:p%40ss%20word@{address}/", "the URL answers with text/html, not a picture"),
            # the stream's pictures were read for ever (memory growing, nothing said)
            (f"http://admin:p%40ss%20word@{address}/video", "the URL answers with an MJPEG stream, not a still "
                                                             "picture: give the stream without --input-codec jpeg"),
            (f"http://127.0.0.1:{free_port()}/snapshot.jpg", "no answer (Connection refused)"),
        ):
            caplog.clear()
            source = open_source(uri, JPEG)
            with caplog.at_level(logging.WARNING, logger="edge_ad.http_pictures"):
                assert frames_within(source, 1, 1.5) == []
            assert said in caplog.text and "; trying again in 1 s" in caplog.text and source.reconnects >= 1
            assert "n0tit" not in caplog.text and "p%40ss" not in caplog.text
    monkeypatch.setattr(http_pictures, "PICTURE_BYTES", 1 << 16)
    for reply, said in (  # before, the source stopped for good with a traceback ("reading frames failed")
        (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n\xff\xd8" + b"x" * 100,
         "the answer was cut short (102 bytes, 4898 more expected)"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"4\r\n\xff\xd8ab\r\n10\r\nabc",
         "the answer was cut short (4 bytes)"),  # a chunk cut short: http.client expects None more
        (b"garbage\r\n\r\n", "the answer is not HTTP (BadStatusLine: garbage)"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 0\r\n\r\n",  # OpenCV's cv2.error
         "the picture: empty (no bytes)"),
        (b"HTTP/1.1 302 Found\r\nLocation: /other.jpg\r\nContent-Length: 99999999999999999999\r\n\r\n",  # OverflowError
         "the answer states a length no answer has (a Content-Length or chunk size of 20 digits)"),
        (b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n",
         "the camera asks for a login edge-ad does not make (AbstractDigestAuthHandler does not support the "
         "following scheme: 'Negotiate'; it makes basic ones and digest ones with MD5 or SHA-256)"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8" + bytes(100_000),  # read whole before
         "the URL answers with more than 0.0625 MB, more than a still picture takes: give the camera's still "
         "picture URL"),
    ):
        caplog.clear()
        with _answering(reply) as port:
            source = open_source(f"http://127.0.0.1:{port}/snapshot.jpg", JPEG)
            with caplog.at_level(logging.WARNING, logger="edge_ad.http_pictures"):
                assert frames_within(source, 1, 1.5) == []
        assert f"{said}; trying again in 1 s" in caplog.text
    with pytest.raises(SourceError, match=r"names no camera"):
        open_source("http:///snapshot.jpg", JPEG)


def test_print_pipeline_names_still_pictures_and_an_http_source_s_codecs():
    result = edge_ad("run", "--input", "http://camera/snapshot.jpg", "--input-codec", "jpeg", "--print-pipeline")
    assert result.returncode == 0 and result.stdout.strip() == (
        "http://camera/snapshot.jpg: still pictures of http://camera/snapshot.jpg, 2 a second at most, fetched "
        "with urllib")
    result = edge_ad("run", "--input", "http://camera/video", "--input-codec", "h264", "--print-pipeline")
    assert result.returncode == 2 and "codec 'h264' is not supported for this source (use one of mjpeg, jpeg)" in \
        result.stderr
