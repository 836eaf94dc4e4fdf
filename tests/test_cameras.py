"""`edge-ad cameras`: IP cameras found by ONVIF (WS-Discovery) and their streams' RTSP URLs, from a
camera written here as ONVIF's specifications describe one, login and clock check included; the
GigE Vision cameras Aravis finds; USB and CSI cameras by the --input that opens them."""

import base64
import hashlib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import xml.etree.ElementTree as ElementTree
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from edge_ad import camera_list, onvif
from edge_ad.camera_certificates import CameraTls, read_pinned
from edge_ad.camera_list import sources_file, v4l2_cameras
from edge_ad.errors import EdgeAdError
from edge_ad.onvif import NS, WSSE, WSU, Camera, Stream, _camera_time, _probe_match, describe, read_streams
from edge_ad.pipelines import SourceOptions
from edge_ad.sources import load_gst
from edge_ad.streams import streams_from_yaml

from conftest import certificate, free_port

FAKE_CAMERA = shutil.which("arv-fake-gv-camera-0.8")

DIGEST_REALM, DIGEST_NONCE = "Login to DS-2CD2043G2-I", "4e4a6b7a4d5451344d5459"
CAMERA_CLOCK = timedelta(hours=-3)  # the camera's clock is 3 hours behind: a login must be made at its time
PROFILES = (("mainStream", "101", "H264", 1920, 1080, 25), ("subStream", "102", "JPEG", 640, 360, 10))
# Media1 has no word for H.265: a camera set to it lists that stream right in Media2 alone.
PROFILES_T = (("mainStream", "101", "H265", 2560, 1440, 20), ("subStream", "102", "H264", 640, 360, 10))
MATCH = """<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="{s}" xmlns:a="{a}" xmlns:d="{d}"><s:Body><d:ProbeMatches><d:ProbeMatch>
<a:EndpointReference><a:Address>urn:uuid:1</a:Address></a:EndpointReference>
<d:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/name/HIKVISION%20Line%201
onvif://www.onvif.org/hardware/DS-2CD2043G2-I</d:Scopes>
<d:XAddrs>{scheme}://10.9.9.9/onvif/device_service {scheme}://127.0.0.1:{http}/onvif/device_service</d:XAddrs>
</d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>"""


def _answer(body: str) -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="{NS["s"]}" xmlns:tds="{NS["tds"]}" xmlns:trt="{NS["trt"]}" '
            f'xmlns:tr2="{NS["tr2"]}" xmlns:tt="{NS["tt"]}"><s:Body>{body}</s:Body></s:Envelope>').encode()


NOT_AUTHORIZED = _answer('<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value xmlns:ter="http://www.'
                         'onvif.org/ver10/error">ter:NotAuthorized</s:Value></s:Subcode></s:Code><s:Reason><s:Text '
                         'xml:lang="en">Sender not Authorized</s:Text></s:Reason></s:Fault>')


class _Camera(BaseHTTPRequestHandler):
    """The device and media services, behind a login of admin / right checked at the camera's time."""

    fault_status = 400  # what a refused login is sent with (some cameras send 200)
    password = "right"  # the ONVIF user admin's
    media2 = False  # a Profile T camera: its streams in Media2 too, the main one in H.265
    http_digest = ""  # "MD5", "SHA-256": logins by HTTP digest (RFC 7616) instead of WS-UsernameToken
    scheme, rtsp = "http", "rtsp://127.0.0.1:554"  # set to HTTPS: "https", "rtsps://127.0.0.1:322"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        request = ElementTree.fromstring(self.rfile.read(int(self.headers["Content-Length"])))
        asked = request.find("s:Body", NS)[0]
        name = asked.tag.rpartition("}")[2]
        now = datetime.now(timezone.utc) + CAMERA_CLOCK
        if name == "GetSystemDateAndTime":  # no login needed
            body = ("<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:UTCDateTime><tt:Time>"
                    f"<tt:Hour>{now.hour}</tt:Hour><tt:Minute>{now.minute}</tt:Minute><tt:Second>{now.second}"
                    f"</tt:Second></tt:Time><tt:Date><tt:Year>{now.year}</tt:Year><tt:Month>{now.month}</tt:Month>"
                    f"<tt:Day>{now.day}</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime>"
                    "</tds:GetSystemDateAndTimeResponse>")
            return self._send(200, _answer(body))
        if self.http_digest and not self._digest_logged_in():
            challenge = (f'Digest realm="{DIGEST_REALM}", qop="auth", nonce="{DIGEST_NONCE}", '
                         f"algorithm={self.http_digest}")
            return self._send(401, NOT_AUTHORIZED, {"WWW-Authenticate": challenge})
        if not self.http_digest and not self._logged_in(request, now):
            return self._send(self.fault_status, NOT_AUTHORIZED)
        port = self.server.server_address[1]
        version2 = asked.tag.startswith(f"{{{NS['tr2']}}}")
        if name == "GetServices":
            listed = [("tds", "device_service"), ("trt", "media")] + ([("tr2", "media2")] if self.media2 else [])
            body = "<tds:GetServicesResponse>" + "".join(
                f"<tds:Service><tds:Namespace>{NS[prefix]}</tds:Namespace><tds:XAddr>{self.scheme}://127.0.0.1:{port}/onvif/"
                f"{path}</tds:XAddr></tds:Service>" for prefix, path in listed) + "</tds:GetServicesResponse>"
        elif name == "GetProfiles" and version2:
            body = "<tr2:GetProfilesResponse>" + "".join(
                f'<tr2:Profiles token="{token}"><tr2:Name>{label}</tr2:Name><tr2:Configurations>'
                f'<tr2:VideoEncoder token="enc{token}"><tt:Encoding>{encoding}</tt:Encoding><tt:Resolution><tt:Width>'
                f"{width}</tt:Width><tt:Height>{height}</tt:Height></tt:Resolution><tt:RateControl><tt:FrameRateLimit>"
                f"{fps}</tt:FrameRateLimit></tt:RateControl></tr2:VideoEncoder></tr2:Configurations></tr2:Profiles>"
                for label, token, encoding, width, height, fps in PROFILES_T) + "</tr2:GetProfilesResponse>"
        elif name == "GetStreamUri" and version2:
            token = asked.findtext("tr2:ProfileToken", "", NS)
            body = (f"<tr2:GetStreamUriResponse><tr2:Uri>{self.rtsp}/Streaming/Channels/{token}</tr2:Uri>"
                    "</tr2:GetStreamUriResponse>")
        elif name == "GetCapabilities":
            body = (f"<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Media><tt:XAddr>{self.scheme}://127.0.0.1:{port}"
                    "/onvif/media</tt:XAddr></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>")
        elif name == "GetProfiles":
            body = "<trt:GetProfilesResponse>" + "".join(
                f'<trt:Profiles token="{token}"><tt:Name>{label}</tt:Name><tt:VideoEncoderConfiguration>'
                f"<tt:Encoding>{encoding}</tt:Encoding><tt:Resolution><tt:Width>{width}</tt:Width><tt:Height>{height}"
                f"</tt:Height></tt:Resolution><tt:RateControl><tt:FrameRateLimit>{fps}</tt:FrameRateLimit>"
                "</tt:RateControl></tt:VideoEncoderConfiguration></trt:Profiles>"
                for label, token, encoding, width, height, fps in PROFILES) + "</trt:GetProfilesResponse>"
        elif name == "GetStreamUri":
            token = asked.findtext("trt:ProfileToken", "", NS)
            body = (f"<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>{self.rtsp}/Streaming/Channels/"
                    f"{token}</tt:Uri></trt:MediaUri></trt:GetStreamUriResponse>")
        else:
            return self._send(400, NOT_AUTHORIZED)
        self._send(200, _answer(body))

    def _logged_in(self, request: ElementTree.Element, now: datetime) -> bool:
        token = request.find(f".//{{{WSSE}}}UsernameToken")
        if token is None or token.findtext(f"{{{WSSE}}}Username") != "admin":
            return False
        created = token.findtext(f"{{{WSU}}}Created")
        nonce = base64.b64decode(token.findtext(f"{{{WSSE}}}Nonce"))
        digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + self.password.encode()).digest()).decode()
        when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        return token.findtext(f"{{{WSSE}}}Password") == digest and abs(when - now) < timedelta(seconds=5)

    def _digest_logged_in(self) -> bool:
        scheme, _, login = self.headers.get("Authorization", "").partition(" ")
        if scheme != "Digest":
            return False
        said = urllib.request.parse_keqv_list(urllib.request.parse_http_list(login))

        def digest(text: str) -> str:
            return hashlib.new(self.http_digest.replace("-", ""), text.encode()).hexdigest()

        known = digest(f"admin:{DIGEST_REALM}:{self.password}")
        asked = digest(f"POST:{said['uri']}")
        expected = digest(f"{known}:{DIGEST_NONCE}:{said['nc']}:{said['cnonce']}:auth:{asked}")
        return said["username"] == "admin" and said["algorithm"] == self.http_digest and \
            said["nonce"] == DIGEST_NONCE and said["response"] == expected

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/soap+xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def _onvif_camera(tls: Path | None = None):
    """A camera answering WS-Discovery probes on a UDP port of 127.0.0.1, and its ONVIF services
    over HTTP, or over HTTPS with the certificate `tls`.pem; the UDP port."""
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Camera)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.with_suffix(".pem"), tls.with_suffix(".key"))
        http.socket = context.wrap_socket(http.socket, server_side=True)
    probes = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probes.bind(("127.0.0.1", free_port(socket.SOCK_DGRAM)))
    stop = threading.Event()

    def answer() -> None:
        probes.settimeout(0.1)
        while not stop.is_set():
            try:
                data, sender = probes.recvfrom(65535)
            except TimeoutError:
                continue
            if b"NetworkVideoTransmitter" in data:
                reply = MATCH.format(**NS, http=http.server_address[1], scheme=_Camera.scheme)
                probes.sendto(reply.encode(), sender)

    threads = [threading.Thread(target=http.serve_forever, daemon=True), threading.Thread(target=answer, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield probes.getsockname()[1]
    finally:
        stop.set()
        http.shutdown()
        http.server_close()
        for thread in threads:
            thread.join(timeout=5)
        probes.close()


def _cameras(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_ad", "cameras", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("http_digest", ["", "MD5", "SHA-256"], ids=["ws-usernametoken", "http-digest-md5",
                                                                     "http-digest-sha256"])
def test_a_camera_is_found_and_its_streams_listed_with_their_urls(http_digest, monkeypatch):
    monkeypatch.setattr(_Camera, "http_digest", http_digest)
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "right", "--timeout", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"127.0.0.1  HIKVISION Line 1 DS-2CD2043G2-I  (http://127.0.0.1:{_port(out)}/onvif/device_service)",
        "  mainStream: H264 1920x1080 25 fps  rtsp://127.0.0.1:554/Streaming/Channels/101",
        "  subStream: JPEG 640x360 10 fps  rtsp://127.0.0.1:554/Streaming/Channels/102 --input-codec mjpeg",
        "--input takes a URL with the login in it: rtsp://USER:PASSWORD@camera/... (the password as typed)"]


def test_what_a_camera_names_itself_cannot_drive_the_terminal(monkeypatch):
    """Anyone on the network can answer a WS-Discovery probe: a name with escape sequences in it
    (clear the screen, retitle the window) is shown as text, not sent to the terminal."""
    monkeypatch.setattr(sys.modules[__name__], "MATCH",
                        MATCH.replace("HIKVISION%20Line%201", "Line%201%1B%5B2J%1B%5D0;owned%07"))
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "right", "--timeout", "1")
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1  Line 1\\x1b[2J\\x1b]0;owned\\x07 DS-2CD2043G2-I  (" in out.stdout and "\x1b" not in out.stdout


def test_the_cameras_found_are_written_into_a_sources_file_run_takes(tmp_path, monkeypatch):
    monkeypatch.setattr(_Camera, "password", "p@ss:w/rd")  # percent-encoded in the URL, as --input takes it
    sources = tmp_path / "cams.yaml"
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "p@ss:w/rd", "--timeout",
                       "1", "--sources", str(sources))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (f"1 source(s) written to {sources} (with the cameras' password in it: "
                                           f"readable by you only): edge-ad run --sources {sources} --bundle BUNDLE")
    assert sources.stat().st_mode & 0o777 == 0o600
    streams = streams_from_yaml(sources, SourceOptions())
    assert [(s.name, s.input) for s in streams] == [
        ("camera-127-0-0-1", "rtsp://admin:p%40ss%3Aw%2Frd@127.0.0.1:554/Streaming/Channels/101")]  # the main stream
    assert "# 127.0.0.1 HIKVISION Line 1 DS-2CD2043G2-I: mainStream, H264 1920x1080" in sources.read_text()
    with _onvif_camera() as port:  # a file that is there is not written over: it may have been edited by hand
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "p@ss:w/rd", "--timeout",
                       "1", "--sources", str(sources))
    assert out.returncode != 0 and f"--sources {sources}: is there already; give a new file" in out.stderr
    assert len(streams_from_yaml(sources, SourceOptions())) == 1


def test_a_camera_set_to_https_is_read_with_its_own_certificate_pinned(tmp_path, monkeypatch):
    """A camera switched to HTTPS only speaks ONVIF over it too, with the certificate it made
    itself: refused, kept and said by its fingerprint; given with --certificate, its streams are
    read, and its RTSPS streams are listed, and written, with --input-certificate."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setattr(_Camera, "scheme", "https")
    monkeypatch.setattr(_Camera, "rtsp", "rtsps://127.0.0.1:322")
    certificate(tmp_path, "axis-accc8e012345")  # self-signed, named as the camera names itself
    own, sources = tmp_path / "axis-accc8e012345.pem", tmp_path / "cams.yaml"
    login = ("--user", "admin", "--password", "right", "--timeout", "1")
    with _onvif_camera(tmp_path / "axis-accc8e012345") as port:
        refused = _cameras("--address", f"127.0.0.1:{port}", *login)
        pinned = _cameras("--address", f"127.0.0.1:{port}", *login, "--certificate", str(own), "--sources",
                          str(sources))
    assert refused.returncode == 0, refused.stderr
    kept = tmp_path / "state" / "cameras" / f"127.0.0.1-{_port(refused)}.pem"
    assert "  streams not read: the camera's certificate is not trusted here (" in refused.stdout
    assert (f"kept in {kept}; if the camera's web page shows this fingerprint, give that file as --certificate "
            "(its own certificate, pinned), or use http://") in refused.stdout
    assert read_pinned(str(kept)) == read_pinned(str(own))
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.splitlines()[1:3] == [
        f"  mainStream: H264 1920x1080 25 fps  rtsps://127.0.0.1:322/Streaming/Channels/101 --input-certificate {own}",
        "  subStream: JPEG 640x360 10 fps  rtsps://127.0.0.1:322/Streaming/Channels/102 --input-codec mjpeg "
        f"--input-certificate {own}"]
    (stream,) = streams_from_yaml(sources, SourceOptions())
    assert (stream.input, stream.options.certificate) == ("rtsps://admin:right@127.0.0.1:322/Streaming/Channels/101",
                                                          str(own))
    out = _cameras("--address", "127.0.0.1:9", "--certificate", str(tmp_path / "none.pem"))
    assert out.returncode == 2 and f"--certificate {tmp_path / 'none.pem'}: cannot read it" in out.stderr


def test_what_a_camera_says_of_itself_cannot_write_sources_of_its_own(tmp_path, monkeypatch):
    """Anyone on the network can answer the probe. A name with line breaks in it (%0A in its
    scope) ended its comment in the sources file and wrote the YAML that followed, a source of
    the device's choosing; a stream URL that is a file or a device would be read by `run`."""
    injected = quote("\n  - name: injected\n    input: /dev/video9\n  #")  # scopes are split at spaces
    monkeypatch.setattr(sys.modules[__name__], "MATCH", MATCH.replace("HIKVISION%20Line%201", f"Line{injected}"))
    sources = tmp_path / "cams.yaml"
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "right", "--timeout", "1",
                       "--sources", str(sources))
    assert out.returncode == 0, out.stderr
    assert [s.name for s in streams_from_yaml(sources, SourceOptions())] == ["camera-127-0-0-1"]
    assert "# 127.0.0.1 Line\\n  - name: injected\\n    input: /dev/video9\\n  # DS-2CD2043G2-I: mainStream" in \
        sources.read_text()

    monkeypatch.setattr(_Camera, "rtsp", "file:///var/lib/edge-ad")
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "right", "--timeout", "1",
                       "--sources", str(tmp_path / "file.yaml"))
    assert out.returncode != 0 and not (tmp_path / "file.yaml").exists()
    assert ("  mainStream: H264 1920x1080 25 fps  (no URL: the camera gives a stream URL that is not rtsp:// or "
            "rtsps:// (file:///var/lib/edge-ad/Streaming/Channels/101))") in out.stdout


def test_a_sources_file_names_each_camera_and_why_one_has_no_stream(tmp_path):
    listed = Camera("10.0.0.5", "http://10.0.0.5/onvif/device_service", "Gate", "", [
        Stream("profile_1", "JPEG", 1280, 720, 10.0, "rtsp://10.0.0.5/jpeg")])
    refused = Camera("10.0.0.6", "http://10.0.0.6/onvif/device_service", problem="NotAuthorized: Sender not Authorized")
    attached = [("csi://0", "CSI camera imx219 9-0010", {}),
                ("genicam://Basler-acA1920-40gc-23456789", "GigE camera", {}),
                ("/dev/v4l/by-id/usb-046d_C920-video-index0", "USB camera C920: ...", {"codec": "mjpeg", "width": 1920,
                                                                                       "height": 1080})]
    assert sources_file(tmp_path / "cams.yaml", [listed, refused], attached, None, None) == 4
    assert (tmp_path / "cams.yaml").stat().st_mode & 0o777 == 0o644  # no password in it
    streams = streams_from_yaml(tmp_path / "cams.yaml", SourceOptions())
    assert [(s.name, s.input, s.options.codec, s.options.width) for s in streams] == [
        ("camera-10-0-0-5", "rtsp://10.0.0.5/jpeg", "mjpeg", None), ("csi-0", "csi://0", None, None),
        ("genicam-Basler-acA1920-40gc-23456789", "genicam://Basler-acA1920-40gc-23456789", None, None),
        ("usb-046d-C920-video-index0", "/dev/v4l/by-id/usb-046d_C920-video-index0", "mjpeg", 1920)]
    assert "# 10.0.0.6: no stream URL (NotAuthorized: Sender not Authorized)" in (tmp_path / "cams.yaml").read_text()
    with pytest.raises(EdgeAdError, match="no camera's stream URL was read"):  # a file run would refuse: none
        sources_file(tmp_path / "none.yaml", [refused], [], None, None)
    assert not (tmp_path / "none.yaml").exists()


def test_a_profile_t_camera_is_read_through_media2_where_h265_is_named(monkeypatch):
    monkeypatch.setattr(_Camera, "media2", True)
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "right", "--timeout", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:3] == [
        "  mainStream: H265 2560x1440 20 fps  rtsp://127.0.0.1:554/Streaming/Channels/101 --input-codec h265",
        "  subStream: H264 640x360 10 fps  rtsp://127.0.0.1:554/Streaming/Channels/102"]


def _port(out: subprocess.CompletedProcess) -> str:
    return out.stdout.split("127.0.0.1:", 1)[1].split("/", 1)[0]


@pytest.mark.parametrize("status", [400, 200])
def test_a_refused_or_missing_login_is_said_and_the_camera_still_listed(status, monkeypatch):
    monkeypatch.setattr(_Camera, "fault_status", status)
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "wrong", "--timeout", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == (
        "  streams not read: NotAuthorized: Sender not Authorized (a wrong user or password; or not the camera's ONVIF "
        "user, which many cameras keep apart from the web one)")
    with _onvif_camera() as port:
        out = _cameras("--address", f"127.0.0.1:{port}", "--timeout", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == ("  streams not read: NotAuthorized: Sender not Authorized (the camera lists "
                                          "its streams only to a login: give --user and --password)")


def test_a_refused_http_digest_login_is_said_as_a_refused_login(monkeypatch):
    monkeypatch.setattr(_Camera, "http_digest", "MD5")
    with _onvif_camera() as port:
        wrong = _cameras("--address", f"127.0.0.1:{port}", "--user", "admin", "--password", "wrong", "--timeout", "1")
        missing = _cameras("--address", f"127.0.0.1:{port}", "--timeout", "1")
    assert wrong.returncode == 0 and missing.returncode == 0, wrong.stderr + missing.stderr
    assert wrong.stdout.splitlines()[1] == (
        "  streams not read: NotAuthorized: HTTP 401 digest auth failed (a wrong user or password; or not the "
        "camera's ONVIF user, which many cameras keep apart from the web one)")
    assert missing.stdout.splitlines()[1] == ("  streams not read: NotAuthorized: Sender not Authorized (the camera "
                                              "lists its streams only to a login: give --user and --password)")


def test_no_answer_is_an_error_that_says_what_to_try():
    out = _cameras("--address", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--timeout", "0.5")
    assert out.returncode != 0 and "no ONVIF camera answered in 0.5 s (127.0.0.1:" in out.stderr
    assert "a camera on another subnet answers --address IP" in out.stderr
    out = subprocess.run([sys.executable, "-m", "edge_ad", "cameras", "--user", "admin"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--user without --password: give --password (it is asked for only at a " \
                                   "terminal)" in out.stderr
    out = _cameras("--address", "no-such-camera.invalid", "--timeout", "0.5")
    assert out.returncode != 0 and "--address no-such-camera.invalid: not an address, or address:port" in out.stderr


def test_a_probe_match_names_the_camera_by_the_address_it_answered_from():
    match = MATCH.format(**NS, http=8080, scheme="http").encode()
    camera = _probe_match(match, "127.0.0.1")
    assert (camera.address, camera.service) == ("127.0.0.1", "http://127.0.0.1:8080/onvif/device_service")
    assert (camera.name, camera.hardware) == ("HIKVISION Line 1", "DS-2CD2043G2-I")
    assert _probe_match(match, "10.9.9.9").service == "http://10.9.9.9/onvif/device_service"
    assert _probe_match(b"<not xml", "127.0.0.1") is None
    assert _probe_match(b"<a/>", "127.0.0.1") is None


def test_a_device_whose_answer_names_a_url_that_does_not_read_is_listed_with_that_problem(monkeypatch):
    """Any device on the network answers the probe: one whose service URL does not parse
    (`http://[::1/onvif`) stopped `edge-ad cameras` with a ValueError, listing no camera at all.
    A readable URL beside it is taken; without one, the device is listed with the problem, and
    its streams are not asked for."""
    match = MATCH.format(**NS, http=8080, scheme="http").encode()
    beside = match.replace(b"<d:XAddrs>", b"<d:XAddrs>http://[::1/onvif ")
    assert _probe_match(beside, "127.0.0.1").service == "http://127.0.0.1:8080/onvif/device_service"
    broken = re.sub(rb"<d:XAddrs>.*</d:XAddrs>", b"<d:XAddrs>http://[::1/onvif</d:XAddrs>", match, flags=re.S)
    camera = _probe_match(broken, "10.0.0.5")
    assert camera.address == "10.0.0.5"
    monkeypatch.setattr(onvif.Soap, "call", lambda *args, **kwargs: pytest.fail("a URL that does not read was asked"))
    assert describe(read_streams(camera, None, "", 1.0)) == [
        "10.0.0.5  HIKVISION Line 1 DS-2CD2043G2-I  (http://[::1/onvif)",
        "  streams not read: its answer names no http:// or https:// URL that reads (http://[::1/onvif)"]


def test_a_service_url_a_camera_names_that_is_no_url_is_said_as_its_problem():
    """The media service's address comes from the camera's answer: one that is no URL (a firmware
    that writes "JPEG" there) stopped the listing with urllib's ValueError."""
    soap = onvif.Soap(None, "", 1.0, CameraTls("https://10.0.0.5", None, "--certificate"))
    for url, said in (("JPEG", "unknown url type: 'JPEG'"), ("http://[::1/media", "Invalid IPv6 URL")):
        with pytest.raises(EdgeAdError, match=re.escape(said)):
            soap.call(url, "<trt:GetProfiles/>")


def test_a_camera_clock_that_is_no_date_is_taken_as_this_machines():
    """The time a camera says is what its logins are signed against; a year of twenty digits
    (OverflowError, not ValueError) stopped the listing."""
    parts = {"Date": {"Year": "9" * 20, "Month": "1", "Day": "1"}, "Time": {"Hour": "0", "Minute": "0", "Second": "0"}}
    said = "".join(f"<tt:{part}>" + "".join(f"<tt:{k}>{v}</tt:{k}>" for k, v in values.items()) + f"</tt:{part}>"
                   for part, values in parts.items())
    answer = ElementTree.fromstring(f'<r xmlns:tt="{NS["tt"]}"><tt:UTCDateTime>{said}</tt:UTCDateTime></r>')

    class Answers:
        def call(self, *args, **kwargs):
            return answer

    assert abs(_camera_time(Answers(), "http://10.0.0.5/onvif") - datetime.now(timezone.utc)) < timedelta(seconds=5)


@pytest.mark.skipif(FAKE_CAMERA is None or shutil.which("arv-tool-0.8") is None,
                    reason="Aravis's tools (aravis-tools, aravis-tools-cli) are not installed")
def test_gige_vision_cameras_are_listed_beside_onvif_ones():
    camera = subprocess.Popen([FAKE_CAMERA, "-i", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # it answers discovery once its sockets are bound
        out = _cameras("--timeout", "1")
    finally:
        camera.kill()
        camera.wait()
    assert out.returncode == 0, out.stderr
    # Its PixelFormat offers Mono16, RGB8, Mono8 and Bayer mosaics: aravissrc picks Mono8 (grey).
    assert ("genicam://Aravis-Fake-GV01  GigE Vision or USB3 Vision camera at 127.0.0.1, read in grey as listed; in "
            "colour as genicam://Aravis-Fake-GV01?feature=PixelFormat=RGB8") in out.stdout.splitlines()
    out = _cameras("--timeout", "0.5")  # nothing on this machine's network now
    assert out.returncode != 0 and "; no USB or CSI camera is attached (/sys/class/video4linux); Aravis found no " \
                                   "GigE Vision or USB3 Vision camera (arv-tool-0.8)" in out.stderr


def test_a_colour_gige_camera_is_listed_with_the_uri_that_reads_it_in_colour(monkeypatch):
    """arv-tool-0.8's list of a camera's features, of which its PixelFormat entries count, not
    those it marks unavailable; a camera that sends no grey is read as it is."""
    listed = """Category    : 'Root'
    Category    : 'ImageFormatControl'
        Integer      : [RW] 'Width'
        Enumeration  : [RW] 'PixelFormat'
            EnumEntry   : 'Mono8'
            EnumEntry   : 'RGB8' (Not available)
            EnumEntry   : 'BayerGR8'
    Category    : 'AcquisitionControl'
        Enumeration  : [RW] 'AcquisitionMode'
            EnumEntry   : 'Continuous'
"""
    monkeypatch.setattr(camera_list.subprocess, "run",
                        lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, stdout=listed))
    formats = camera_list._pixel_formats("arv-tool-0.8", "Basler-1", 1.0)
    assert formats == ["Mono8", "BayerGR8"]
    assert camera_list._colour("Basler-1", formats) == (", read in grey as listed; in colour as genicam://Basler-1?"
                                                        "feature=PixelFormat=BayerGR8 with --input-codec bayer")
    assert camera_list._colour("Basler-1", ["Mono8", "Mono16"]) == ""  # a grey camera
    assert camera_list._colour("Basler-1", ["RGB8", "BayerRG8"]) == ""  # no grey to pick instead


def test_usb_and_csi_cameras_are_listed_by_the_input_that_opens_them(tmp_path):
    """A USB camera by its udev name for good, not its number, which a reboot can change; its
    metadata node left out; a Jetson's CSI cameras as csi://0, 1 in their order."""
    nodes = {"video0": ("HD Pro Webcam C920", 0), "video1": ("HD Pro Webcam C920", 1),
             "video2": ("vi-output, imx219 9-0010", 0), "video10": ("vi-output, imx219 10-0010", 0),
             "video3": ("USB Camera", 0)}
    for node, (name, index) in nodes.items():
        folder = tmp_path / "sys/class/video4linux" / node
        folder.mkdir(parents=True)
        (folder / "name").write_text(f"{name}\n")
        (folder / "index").write_text(f"{index}\n")
        (tmp_path / "dev").mkdir(exist_ok=True)
        (tmp_path / "dev" / node).touch()
    (tmp_path / "dev/v4l/by-id").mkdir(parents=True)
    for index in (0, 1):
        (tmp_path / f"dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_A1B2C3-video-index{index}").symlink_to(
            f"../../video{index}")
    probed = []

    def formats(device: str) -> tuple[str, dict]:
        probed.append(device)
        return (": mjpeg 1920x1080 at 30 fps", {"codec": "mjpeg"}) if "C920" in device else ("", {})

    assert v4l2_cameras(tmp_path, formats) == [
        ("/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_A1B2C3-video-index0",
         "USB camera HD Pro Webcam C920: mjpeg 1920x1080 at 30 fps", {"codec": "mjpeg"}),
        ("csi://0", "CSI camera imx219 9-0010", {}), ("/dev/video3", "USB camera USB Camera", {}),
        ("csi://1", "CSI camera imx219 10-0010", {})]
    assert probed == ["/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_A1B2C3-video-index0", "/dev/video3"]  # USB only
    assert v4l2_cameras(tmp_path / "nothing") == []


# A Logitech C920's modes written as v4l2src's caps give them (its published modes, not read from a
# camera: none here): its largest raw frames come at 5 fps, its MJPEG and H.264 ones at 30.
C920_CAPS = ("video/x-raw, format=(string)YUY2, width=(int)1920, height=(int)1080, framerate=(fraction)5/1; "
             "video/x-raw, format=(string)YUY2, width=(int)640, height=(int)480, "
             "framerate=(fraction){ 30/1, 24/1, 20/1, 15/1, 10/1, 15/2, 5/1 }; "
             "image/jpeg, width=(int)1920, height=(int)1080, framerate=(fraction){ 30/1, 24/1, 20/1, 15/1 }; "
             "image/jpeg, width=(int)640, height=(int)480, framerate=(fraction){ 60/1, 30/1 }; "
             "video/x-h264, stream-format=(string)byte-stream, alignment=(string)au, width=(int)1920, "
             "height=(int)1080, framerate=(fraction){ 30/1, 15/1 }")


def test_a_usb_cameras_line_says_the_codec_of_its_largest_frames():
    """Read raw by default, a camera whose largest raw frames come at 5 fps gave those, or
    640x480 (v4l2src's choice, by GStreamer's version): its line says each codec's largest frame
    and what reads the MJPEG ones at 30 fps, and --sources writes those options."""
    Gst = load_gst()
    said, options = camera_list.caps_formats(Gst.Caps.from_string(C920_CAPS))
    assert said == (": raw 1920x1080 at 5 fps, mjpeg 1920x1080 at 30 fps, h264 1920x1080 at 30 fps (each its "
                    "largest frame); --input-codec mjpeg --input-width 1920 --input-height 1080 for 30 fps")
    assert options == {"codec": "mjpeg", "width": 1920, "height": 1080}
    ranges = ("video/x-raw, format=YUY2, width=(int)[ 16, 4096 ], height=(int)[ 16, 2160 ], "
              "framerate=(fraction)[ 1/1, 60/1 ]")
    assert camera_list.caps_formats(Gst.Caps.from_string(ranges)) == (": raw 4096x2160 at 60 fps (each its largest "
                                                                      "frame)", {})  # raw is best: nothing to add
    only_mjpeg = "image/jpeg, width=(int)1280, height=(int)720, framerate=(fraction)30/1"  # raw would not negotiate
    assert camera_list.caps_formats(Gst.Caps.from_string(only_mjpeg))[1] == {"codec": "mjpeg", "width": 1280,
                                                                               "height": 720}
    no_rate = "video/x-raw, format=YUY2, width=(int)640, height=(int)480; image/jpeg, width=(int)1280, height=(int)720"
    assert camera_list.caps_formats(Gst.Caps.from_string(no_rate))[0] == (  # no rate said, not "at 0 fps"
        ": raw 640x480, mjpeg 1280x720 (each its largest frame); --input-codec mjpeg --input-width 1280 "
        "--input-height 720")
    gone = "/dev/v4l/by-id/usb-046d_C920-video-index0"  # v4l2src's own error, read through GStreamer
    assert camera_list.usb_formats(gone) == (f"; its formats not read: Cannot identify device '{gone}'. (v4l2src): "
                                             "no such camera now: unplugged, or numbered otherwise since a reboot or a "
                                             "replug (/dev/v4l/by-id/ names each USB camera for good: ls -l "
                                             "/dev/v4l/by-id)", {})
    said, options = camera_list.usb_formats("/dev/null")  # a device, not a camera's
    assert said.startswith("; its formats not read: Error getting capabilities for device '/dev/null'") and not options
