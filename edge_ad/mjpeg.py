"""`--output http://@:port/path`: the overlay as MJPEG (multipart/x-mixed-replace), which a web
browser shows without a player or a plug-in.

The outputs on one port share one HTTP server, each at its own path, and the server's `/` is a
page showing every one of them: a line with several cameras gives each `http://@:8080/NAME` and
opens `http://DEVICE:8080/` once. Pictures are taken only while someone watches, at most
MJPEG_FPS a second, and encoded once each in the serving threads, not in the scoring loop; every
client gets the newest one: a slow client skips pictures, it never holds up the run.
"""

from __future__ import annotations

import html
import logging
import math
import ssl
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from .connection_limit import REQUEST_S, SERVER_NAME, ConnectionLimit, RefusedConnections
from .errors import SourceError, listen_reason, parsed_uri, uri_port
from .output_access import OutputAccess

log = logging.getLogger("edge_ad.mjpeg")

MJPEG_FPS = 10.0  # at most this many pictures a second: enough to watch, a third of a camera's bandwidth
MJPEG_QUALITY = 80
HANDSHAKE_S = 10.0  # a browser's TLS handshake takes milliseconds; one that has not finished by then never will
STALLED_S = 30.0  # a viewer that takes no picture data this long is gone (a cable pulled mid-stream): let go
LAST_ALARM = "last-alarm.jpg"  # beside each output's path: the overlay of its source's last alarm, for an HMI
# Beside each output's path too: its next picture, one per request. The page at / shows these:
# a browser keeps at most 6 connections to a server, and each stream holds one for as long as it
# is watched, so a page of 7 streams would show 6, and a second tab none.
STILL = "frame.jpg"
STILL_WAIT_S = 2.0  # a request for it waits this long for the next picture, drawn for this long after it
TEXT = {"Content-Type": "text/plain; charset=utf-8"}  # headers of an answer a browser shows as text
PICTURE = {"Content-Type": "image/jpeg", "Cache-Control": "no-cache, no-store"}  # of a picture of the present


def mjpeg_description(uri: str) -> str:
    """What an http:// output is, after checking that it names a port."""
    parsed, port = parsed_uri(uri), uri_port(uri)
    if port is None:
        raise SourceError(f"{uri}: an HTTP output needs a port, as in http://@:8080/line1")
    return (f"MJPEG over {parsed.scheme.upper()} on port {port}, path /{parsed.path.strip('/')}, at most {MJPEG_FPS:g} "
            f"pictures a second (JPEG quality {MJPEG_QUALITY})")


class _HttpServer(ConnectionLimit, ThreadingHTTPServer):
    daemon_threads = True


class _TlsServer(_HttpServer):
    """An HTTP server speaking TLS only, each client's handshake in its own thread (in the
    listening one, a client that stalls it would hold up every other)."""

    def __init__(self, address: tuple[str, int], handler, context: ssl.SSLContext):
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request, client_address) -> None:
        request.settimeout(HANDSHAKE_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except OSError:  # a client that does not trust the certificate, or speaks plain HTTP (ssl.SSLError)
            return
        with tls:
            tls.settimeout(None)
            super().finish_request(tls, client_address)


class _Server:
    """The HTTP server of one port: each output at its path, and a page of them all at `/`, to
    the viewers `access` lets in."""

    def __init__(self, uri: str, host: str, port: int, access: OutputAccess):
        self.outputs: dict[str, MjpegOutput] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_S

            def version_string(self) -> str:
                return SERVER_NAME
            # Kept alive between requests: the page asks each source's picture ten times a second,
            # and over HTTPS a connection each was a TLS handshake each. A stream, which has no
            # length, closes its connection when it ends.
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                address, login = self.client_address[0], self.headers.get("Authorization")
                waits = access.attempts.refused_for(address)
                if waits:  # too many wrong logins: this address waits
                    self._send(429, f"too many wrong logins from this address: try again in {math.ceil(waits)} s"
                               .encode(), {"Retry-After": str(math.ceil(waits)), **TEXT})
                    return
                if not access.allows(login):
                    if login is not None:  # a wrong one; a browser's first request has none
                        access.attempts.failed(address)
                    self._send(401, b"", {"WWW-Authenticate": 'Basic realm="edge-ad", charset="UTF-8"', **TEXT})
                    return
                if login is not None:
                    access.attempts.succeeded(address)
                path = "/" + self.path.split("?")[0].strip("/")
                output = server.outputs.get(path)
                if alarmed := server.output_beside(path, LAST_ALARM):
                    self._last_alarm(alarmed)
                elif watched := server.output_beside(path, STILL):
                    jpeg = watched.still()
                    if jpeg is None:
                        self.send_error(503, f"no picture from the source of {watched.path} in {STILL_WAIT_S:g} s")
                    else:
                        self._send(200, jpeg, PICTURE)
                elif output is not None:
                    self.connection.settimeout(STALLED_S)
                    self.send_response(200)
                    self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                    self.send_header("Cache-Control", "no-cache, no-store")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        output.serve(self.wfile)
                elif path == "/":
                    self._send(200, server.index().encode(), {"Content-Type": "text/html; charset=utf-8"})
                else:
                    self.send_error(404, f"the overlays are at {', '.join(sorted(server.outputs))}")

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                """`status`, `headers` and `body` with its length (a browser shows a text one)."""
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                """GET's answer without its body, as every HTTP server owes (RFC 9110, 9.1): uptime
                monitors and `curl -I` ask so (it was 501, "Unsupported method")."""
                self.do_GET()

            def _last_alarm(self, output: MjpegOutput) -> None:
                jpeg, captured = output.last_alarm()
                if jpeg is None:
                    self.send_error(404, f"no alarm on {output.path} since the run started")
                    return
                self._send(200, jpeg, {**PICTURE, "Last-Modified": formatdate(captured, usegmt=True)})  # its capture

            def log_message(self, *args) -> None:  # no line per request on stderr
                pass

        try:
            if uri.startswith("https://"):
                self.http = _TlsServer((host, port), Handler, access.ssl_context())
            else:
                self.http = _HttpServer((host, port), Handler)
        except OSError as exc:
            raise SourceError(f"{uri}: cannot listen on port {port} ({listen_reason(exc)})") from exc
        self.http.refusals = RefusedConnections(f"the browser outputs on port {port}")
        self.thread = threading.Thread(target=self.http.serve_forever, name=f"http :{port}", daemon=True)
        self.thread.start()

    def output_beside(self, path: str, name: str) -> MjpegOutput | None:
        """The output whose PATH/`name` `path` is, if any."""
        if not path.endswith("/" + name):
            return None
        return self.outputs.get(path[:-len(name) - 1] or "/")

    def index(self) -> str:
        """A page of every output: its pictures asked for one after another (a stream each would
        take the browser's connections), linked to its stream and its last alarm."""
        figures = "".join(
            f'<figure><img data-still="{html.escape(path.rstrip("/"))}/{STILL}" alt="{html.escape(path)}">'
            f'<figcaption><a href="{html.escape(path)}">{html.escape(path)}</a> '
            f'<a href="{html.escape(path.rstrip("/"))}/{LAST_ALARM}">last alarm</a></figcaption></figure>'
            for path in sorted(self.outputs)
        )
        return ("<!doctype html><meta charset=utf-8><title>edge-ad</title>"
                "<style>body{background:#111;color:#ddd;font-family:sans-serif}img{max-width:45vw}"
                "a{color:#8bf}figure{display:inline-block;margin:8px}</style><body>" + figures +
                "<script>for (const img of document.querySelectorAll('img[data-still]')) {"
                # the server answers with the next picture; a tab out of sight asks once a second
                "const next = () => { if (document.hidden) { setTimeout(next, 1000); return; }"
                "img.src = img.dataset.still + '?' + Date.now(); };"
                "img.onload = next; img.onerror = () => setTimeout(next, 1000); next(); }</script>")

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


_servers: dict[tuple[str, int], _Server] = {}
_servers_lock = threading.Lock()


class MjpegOutput:
    """http://[host]:port/path (host @ or none: every interface; https:// over TLS): the overlay
    of one source."""

    def __init__(self, uri: str, width: int, height: int, fps: int, jetson: bool | None = None,
                 bitrate_kbps: int | None = None, access: OutputAccess = OutputAccess()):
        self.uri, self.size = uri, (width, height)
        self.description = mjpeg_description(uri)
        parsed = parsed_uri(uri)
        self.path = "/" + parsed.path.strip("/")
        self.key = ("" if parsed.hostname in (None, "@") else parsed.hostname, parsed.port)
        self.changed = threading.Condition()
        self.picture: np.ndarray | None = None  # the newest overlay, BGR
        self.sequence = 0  # of self.picture; 0: none yet
        self.encoding = threading.Lock()
        self._jpeg, self._jpeg_sequence = b"", 0
        self.clients = 0
        self.closed = False
        self._next_s = 0.0
        self._alarm: tuple[bytes | None, float] = (None, 0.0)  # the last alarm's overlay (JPEG) and capture time
        self._still_until = 0.0  # time.monotonic() until which pictures are drawn for PATH/frame.jpg
        with _servers_lock:
            server = _servers.get(self.key) or _Server(uri, *self.key, access)
            if self.path in server.outputs:
                raise SourceError(f"{uri}: another output already serves {self.path} on port {self.key[1]}")
            server.outputs[self.path] = self
            _servers[self.key] = server
        self.server = server

    def serve(self, stream) -> None:
        """Send the newest picture each time there is a new one, until the client leaves or the output closes."""
        with self.changed:
            self.clients += 1
        seen = 0  # sequence 0: no picture yet
        try:
            while True:
                with self.changed:
                    self.changed.wait_for(lambda: self.closed or self.sequence != seen, timeout=1.0)
                    if self.closed:
                        return
                    if self.sequence == seen:
                        continue
                    picture, seen = self.picture, self.sequence
                jpeg = self._encoded(picture, seen)
                stream.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                stream.write(jpeg + b"\r\n")
                stream.flush()
        except OSError:  # the client left (broken pipe, reset)
            return
        finally:
            with self.changed:
                self.clients -= 1

    def _encoded(self, picture: np.ndarray, sequence: int) -> bytes:
        """The JPEG of picture number `sequence`, encoded by the first client thread that needs it."""
        with self.encoding:
            if self._jpeg_sequence != sequence:
                self._jpeg, self._jpeg_sequence = self._jpeg_of(picture), sequence
            return self._jpeg

    def _jpeg_of(self, picture: np.ndarray) -> bytes:
        ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, MJPEG_QUALITY])
        if not ok:
            raise OSError(f"{self.uri}: cannot encode a picture of shape {picture.shape} as JPEG")
        return data.tobytes()

    def still(self) -> bytes | None:
        """The next picture as JPEG, for a request of PATH/frame.jpg; None when none comes within
        STILL_WAIT_S (the source is away)."""
        with self.changed:
            seen = self.sequence
            self._still_until = time.monotonic() + STILL_WAIT_S
            self.changed.wait_for(lambda: self.closed or self.sequence != seen, timeout=STILL_WAIT_S)
            picture, sequence = self.picture, self.sequence
        return None if sequence == seen else self._encoded(picture, sequence)

    def wants_frame(self) -> bool:
        """Whether a browser watches (a stream, or a picture asked for within STILL_WAIT_S) and its
        next picture is due (at most MJPEG_FPS a second)."""
        now = time.monotonic()
        return (self.clients > 0 or now < self._still_until) and now >= self._next_s

    def write(self, image: np.ndarray, timestamp: float) -> None:
        """Offer the newest overlay (not copied: the caller makes a new one for every frame)."""
        if not self.wants_frame():
            return
        self._next_s = time.monotonic() + 1.0 / MJPEG_FPS
        with self.changed:
            self.picture, self.sequence = image, self.sequence + 1
            self.changed.notify_all()

    def keep_alarm(self, image: np.ndarray, captured: float) -> None:
        """The overlay of an alarm frame captured at `captured` (Unix time): served at
        PATH/last-alarm.jpg until the next, whether anyone watches or not."""
        self._alarm = (self._jpeg_of(image), captured)  # one assignment: a request reads both or the ones before

    def last_alarm(self) -> tuple[bytes | None, float]:
        """The last alarm's overlay (JPEG; None before the first) and when its frame was captured."""
        return self._alarm

    def close(self) -> None:
        """Stop serving this path: its clients are let go; the last output on a port releases it."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        with _servers_lock:
            self.server.outputs.pop(self.path, None)
            if not self.server.outputs:
                self.server.stop()
                _servers.pop(self.key, None)
