"""`--input-certificate FILE`: an HTTPS camera's own certificate, pinned. Before, a camera with its
self-signed certificate (as cameras make them) could only be read over http://: added to the
system's trust store, its certificate was still refused for its name."""

from __future__ import annotations

import logging
import re
import shutil
import ssl
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from edge_ad import camera_certificates
from edge_ad.camera_certificates import fingerprint, read_pinned
from edge_ad.errors import EdgeAdError, SourceError
from edge_ad.pipelines import SourceOptions
from edge_ad.sources import open_source
from edge_ad.streams import streams_from_yaml

from conftest import certificate, edge_ad, frames_within, free_port

PICTURE = np.full((48, 64, 3), (40, 160, 250), np.uint8)
NEEDS_GST = pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="gst-launch-1.0 is not installed")


@contextmanager
def https_camera(folder: Path, name: str):
    """A camera serving PICTURE over HTTPS with certificate NAME (folder/NAME.pem): its still
    picture at /still.jpg, an MJPEG stream of it at /video; its https://127.0.0.1:PORT."""
    jpeg = cv2.imencode(".jpg", PICTURE, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            if self.path == "/still.jpg":
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(jpeg)))
                self.end_headers()
                self.wfile.write(jpeg)
                return
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=picture")
            self.end_headers()
            while not stopped.is_set():
                try:
                    self.wfile.write(b"--picture\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(jpeg), jpeg))
                except OSError:  # the client went
                    return
                time.sleep(0.05)

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / f"{name}.pem", folder / f"{name}.key")
    context.num_tickets = 0  # no session to resume: GLib's TLS resumes a session checked before without a check
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Camera)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    stopped = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_port}"
    finally:
        stopped.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    return tmp_path / "state"


WAYS = [pytest.param(("/still.jpg", "jpeg"), id="still-pictures"),
        pytest.param(("/video", "mjpeg"), id="mjpeg-stream", marks=NEEDS_GST)]


@pytest.mark.parametrize("way", WAYS)
def test_a_camera_s_own_certificate_pinned_is_trusted_whatever_its_name(tmp_path, state, caplog, way):
    path, codec = way
    own, _ = certificate(tmp_path, "axis-accc8e012345")  # self-signed, named as the camera names itself
    certificate(tmp_path, "another-camera")
    own_der = own.public_bytes(serialization.Encoding.DER)
    kept = state / "cameras"
    with https_camera(tmp_path, "axis-accc8e012345") as camera:
        port = camera.rpartition(":")[2]
        own_file = str(tmp_path / "axis-accc8e012345.pem")
        source = open_source(camera + path, SourceOptions(codec=codec, certificate=own_file))
        read = frames_within(source, 3, 20)
        assert len(read) == 3 and source.reconnects == 0
        assert np.abs(read[-1].image.astype(int) - PICTURE).mean() < 3
        assert not kept.exists()  # nothing refused, nothing kept

        for pinned, said in ((None, "the camera's certificate is not trusted here ("),
                             ("another-camera.pem", "the camera's certificate is not the one in --input-certificate "
                                                    f"{tmp_path / 'another-camera.pem'}")):
            caplog.clear()
            options = SourceOptions(codec=codec, timeout_s=2, certificate=pinned and str(tmp_path / pinned))
            with caplog.at_level(logging.WARNING):
                source = open_source(camera + path, options)
                assert frames_within(source, 1, 2.5) == []
            assert source.reconnects >= 1
            assert said in caplog.text and f"it presented SHA-256 {fingerprint(own_der)}" in caplog.text
            assert f"kept in {kept / f'127.0.0.1-{port}.pem'}" in caplog.text
            assert read_pinned(str(kept / f"127.0.0.1-{port}.pem")) == {own_der}  # the file to give, once compared

        # ... and the kept file, given, is what lets it in.
        source = open_source(camera + path, SourceOptions(codec=codec, certificate=str(kept / f"127.0.0.1-{port}.pem")))
        assert len(frames_within(source, 1, 20)) == 1


@pytest.mark.parametrize("way", WAYS)
def test_without_a_pinned_certificate_the_system_s_trust_store_decides_names_included(tmp_path, state, caplog,
                                                                                      monkeypatch, way):
    path, codec = way
    authority = certificate(tmp_path, "plant-ca")
    certificate(tmp_path, "camera-7", address="127.0.0.1", authority=authority)
    certificate(tmp_path, "camera-8", address="10.0.7.8", authority=authority)  # made out for another address
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "plant-ca.pem"))  # the system's store, to urllib
    if codec == "mjpeg":  # ... and to GStreamer
        from gi.repository import Gio

        monkeypatch.setattr(camera_certificates, "_system_database",
                            lambda: Gio.TlsFileDatabase.new(str(tmp_path / "plant-ca.pem")))
    with https_camera(tmp_path, "camera-7") as camera:
        assert len(frames_within(open_source(camera + path, SourceOptions(codec=codec)), 2, 20)) == 2
    with https_camera(tmp_path, "camera-8") as camera, caplog.at_level(logging.WARNING):
        assert frames_within(open_source(camera + path, SourceOptions(codec=codec, timeout_s=2)), 1, 2.5) == []
    assert "the camera's certificate is not trusted here (" in caplog.text
    assert ("IP address mismatch" if codec == "jpeg" else "made out for another name than the address") in caplog.text


def test_a_certificate_refused_where_there_is_no_state_folder_is_said_not_kept(tmp_path, no_home):
    own, _ = certificate(tmp_path, "camera")
    der = own.public_bytes(serialization.Encoding.DER)
    said = str(camera_certificates.CameraTls("https://10.0.0.7/still.jpg", None).refuse(der, "self-signed"))
    assert re.search(rf"it presented SHA-256 {fingerprint(der)}, not kept \({no_home}: set XDG_STATE_HOME", said)


def test_the_certificate_file_is_read_before_anything_starts_and_refused_by_name(tmp_path):
    own, key = certificate(tmp_path, "camera")
    der = own.public_bytes(serialization.Encoding.DER)
    (tmp_path / "camera.der").write_bytes(der)
    (tmp_path / "both.pem").write_bytes((tmp_path / "camera.key").read_bytes() + (tmp_path / "camera.pem").read_bytes())
    assert read_pinned(str(tmp_path / "camera.der")) == read_pinned(str(tmp_path / "both.pem")) == {der}
    for name, said in (("missing.pem", "cannot read it (No such file or directory)"),
                       ("camera.key", "holds no certificate"), ("garbled.pem", "a certificate in it does not read")):
        if name == "garbled.pem":
            (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n")
        with pytest.raises(SourceError, match=re.escape(f"--input-certificate {tmp_path / name}: {said}")):
            open_source("https://10.0.7.21/still.jpg", SourceOptions(codec="jpeg", certificate=str(tmp_path / name)))
    with pytest.raises(SourceError, match="--input-certificate checks the https:// and rtsps:// cameras edge-ad "):
        open_source("", SourceOptions(certificate=str(tmp_path / "camera.der")),
                    pipeline="souphttpsrc location=https://10.0.7.21/video ! jpegdec ! videoconvert ! appsink name=sink")
    with pytest.raises(SourceError, match="--input-certificate is for https:// and rtsps:// cameras"):
        open_source("http://10.0.7.21/still.jpg", SourceOptions(codec="jpeg", certificate=str(tmp_path / "camera.der")))


def test_a_sources_file_names_each_camera_s_certificate_from_its_own_folder(tmp_path):
    certificate(tmp_path, "camera")
    (tmp_path / "cams.yaml").write_text("sources:\n"
                                        "  - input: https://10.0.7.21/axis-cgi/mjpg/video.cgi\n"
                                        "    certificate: camera.pem\n"
                                        "  - input: rtsp://10.0.7.22/stream\n")
    first, second = streams_from_yaml(tmp_path / "cams.yaml", SourceOptions())
    assert first.options.certificate == str(tmp_path / "camera.pem") and second.options.certificate is None
    (tmp_path / "bad.yaml").write_text("sources:\n  - input: https://10.0.7.21/video\n    certificate: [camera.pem]\n")
    with pytest.raises(EdgeAdError, match="'certificate' must be the file of the camera's certificate"):
        streams_from_yaml(tmp_path / "bad.yaml", SourceOptions())
    result = edge_ad("doctor", "--sources", str(tmp_path / "cams.yaml"))
    assert f"its certificate pinned ({tmp_path / 'camera.pem'})" in result.stdout
    (tmp_path / "camera.pem").unlink()
    result = edge_ad("doctor", "--sources", str(tmp_path / "cams.yaml"))
    assert f"--input-certificate {tmp_path / 'camera.pem'}: cannot read it" in result.stdout
