"""`--input http://camera/snapshot.jpg --input-codec jpeg`: a camera's still picture, fetched again
and again. Cameras that serve no MJPEG stream, and most that do, answer a URL with their latest
picture (Axis's /axis-cgi/jpg/image.cgi, Hikvision's /ISAPI/Streaming/channels/101/picture,
Dahua's /cgi-bin/snapshot.cgi, ESP32-CAM's /capture), which the MJPEG pipeline refuses.

It is a live source: the newest picture is scored, at most `--input-framerate` a second
(DEFAULT_FPS without it), so a camera's small web server is not asked faster than that; one
that has not answered in `--timeout` seconds is said not to answer. A user
and password in the URL are sent as basic or digest authentication, as the camera asks. A
failed request (no answer, a wrong password, a page or an error instead of a picture, a
certificate refused: edge_ad.camera_certificates) is said and tried again with the back-off of a
camera, counted as reconnects."""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator
from urllib.parse import unquote

import numpy as np

from .camera_certificates import camera_tls
from .errors import EdgeAdError, ImageError, SourceError, http_failure, parsed_uri, without_passwords
from .http_digest import DigestAuthHandler
from .images import decode_image
from .pipelines import SourceOptions, flip_of, login_escaped
from .sources import Backoff, Frame, Outage, picture_frame

log = logging.getLogger("edge_ad.http_pictures")

DEFAULT_FPS = 2
ANSWER_S = 10.0  # how long a camera may take to answer with --timeout 0 (a request that waits for ever is stuck)
# The most a still picture may take: a 12-megapixel camera's, as a PNG that compressed nothing, is
# 36 MB. A URL that answers more is no still picture (a video, a file share's listing of them).
PICTURE_BYTES = 64 << 20


def is_http_pictures(uri: str | None, options: SourceOptions) -> bool:
    """Whether `uri` names a camera's still picture, to fetch again and again (--input-codec jpeg)."""
    return bool(uri) and uri.startswith(("http://", "https://")) and (options.codec or "").lower() == "jpeg"


class HttpPictures:
    """A camera's still picture URL, read as a camera (see the module's docstring)."""

    live = True
    dropped = 0
    away = False  # the camera fails to answer, and has not answered since

    def __init__(self, uri: str, options: SourceOptions):
        self.uri, self.shown = uri, without_passwords(uri)
        parsed = parsed_uri(login_escaped(uri))
        if not parsed.hostname:
            raise SourceError(f"{self.shown}: names no camera (http://[user:password@]camera/path)")
        host = parsed.netloc.rpartition("@")[2]
        self.url = parsed._replace(netloc=host).geturl()  # the login goes in headers, not in the request line
        self.fps = options.framerate or DEFAULT_FPS
        self.answer_s = options.timeout_s or ANSWER_S
        self.turn, self.crop = flip_of(uri, options.flip).turn, options.crop
        self.reconnects = 0
        self.description = f"still pictures of {without_passwords(self.url)}, {self.fps:g} a second at most"
        logins = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        logins.add_password(None, self.url, unquote(parsed.username or ""), unquote(parsed.password or ""))
        tls = camera_tls(uri, options.certificate)
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPBasicAuthHandler(logins), DigestAuthHandler(logins),
            tls.https_handler() if tls else urllib.request.HTTPSHandler(context=ssl.create_default_context()))

    def _fetch(self) -> np.ndarray:
        """The camera's picture now, as RGB (EdgeAdError saying why there is none)."""
        try:
            with self._opener.open(self.url, timeout=self.answer_s) as answer:
                kind, data = answer.headers.get_content_type(), b""
                if kind.startswith("image/"):  # (read after its type: an MJPEG stream's body never ends)
                    data = answer.read(PICTURE_BYTES + 1)
                    if len(data) <= PICTURE_BYTES and answer.length:  # bytes its Content-Length said are missing
                        raise http.client.IncompleteRead(data, answer.length)
        except urllib.error.HTTPError as exc:  # (urllib's reason after a digest login failed: "digest auth failed")
            if exc.code == 401:
                raise EdgeAdError("the camera refuses the login (HTTP 401: user or password wrong, or none given)") \
                    from exc
            raise EdgeAdError(f"the camera answers {exc.code} {exc.reason}") from exc
        except (OSError, http.client.HTTPException, OverflowError) as exc:
            raise EdgeAdError(http_failure(exc)) from exc
        except ValueError as exc:  # urllib's word for a login scheme or digest it does not make
            raise EdgeAdError(f"the camera asks for a login edge-ad does not make ({exc}; it makes basic ones and "
                              "digest ones with MD5 or SHA-256)") from exc
        if kind == "multipart/x-mixed-replace":
            raise EdgeAdError("the URL answers with an MJPEG stream, not a still picture: give the stream without "
                              "--input-codec jpeg, or the camera's still picture URL")
        if not kind.startswith("image/"):
            raise EdgeAdError(f"the URL answers with {kind}, not a picture: give the camera's still picture URL")
        if len(data) > PICTURE_BYTES:
            raise EdgeAdError(f"the URL answers with more than {PICTURE_BYTES / 2**20:g} MB, more than a still picture "
                              "takes: give the camera's still picture URL")
        try:
            return decode_image(data, "the picture")
        except ImageError as exc:
            raise EdgeAdError(str(exc)) from exc

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        stop = stop or threading.Event()
        index, backoff, outage = 0, Backoff(), Outage()
        while not stop.is_set():
            asked = time.monotonic()
            try:
                rgb = self._fetch()
            except EdgeAdError as exc:
                if outage.due(backoff, str(exc)):
                    log.warning("%s: %s; trying again in %.0f s%s", self.shown, exc, backoff.wait, outage.note(backoff))
                self.reconnects += 1
                self.away = True
                backoff.sleep(stop)
                continue
            if self.away:
                log.warning("%s: the camera answers again", self.shown)
                self.away = False
                backoff, outage = Backoff(), Outage()
            yield Frame(index, time.time(), picture_frame(rgb, self.turn, self.crop, self.shown))
            index += 1
            stop.wait(max(0.0, 1.0 / self.fps - (time.monotonic() - asked)))

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def close(self) -> None:
        """Nothing held between requests; present so every source can be closed the same way."""
