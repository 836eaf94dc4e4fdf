"""`edge-ad cameras`: the IP cameras on the network and the RTSP URLs of their streams, by ONVIF.

A camera's RTSP path differs from make to make (and from firmware to firmware), and people find
it in manuals, forums or a vendor's Windows tool. ONVIF, which nearly every IP camera speaks,
says it: a WS-Discovery probe (SOAP over UDP, multicast to 239.255.255.250:3702, or sent to one
address) is answered by each camera with its device service's URL; the device service names the
media service, whose profiles (main stream, sub stream...) each have an encoder (H.264, H.265,
JPEG), a size and a rate, and a stream URL (GetStreamUri). A login (WS-UsernameToken, the
password digested with a nonce and the time) is needed for the profiles by most cameras; the
time is the camera's own (GetSystemDateAndTime, which needs none), as cameras refuse a login
whose time is off theirs by more than a few seconds. A camera set to HTTP digest logins instead
(ONVIF's other one) answers 401 with a challenge, which urllib's digest handler (SHA-256 too:
edge_ad.http_digest) answers with the same user and password.

The standard library's sockets, urllib and ElementTree, no SOAP library: four requests.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import http.client
import math
import os
import socket
import struct
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree
from xml.sax.saxutils import escape
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote, urlparse

from .camera_certificates import CameraTls
from .errors import EdgeAdError, http_failure, shell_word
from .http_digest import DigestAuthHandler

DISCOVERY = ("239.255.255.250", 3702)
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tr2": "http://www.onvif.org/ver20/media/wsdl",  # Media2 (Profile T): H.265, which Media1 has no word for
    "tt": "http://www.onvif.org/ver10/schema",
}
PROBE = f"""<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="{NS['s']}" xmlns:a="{NS['a']}" xmlns:d="{NS['d']}"
 xmlns:dn="http://www.onvif.org/ver10/network/wsdl">
<s:Header><a:MessageID>uuid:{{id}}</a:MessageID>
<a:To s:mustUnderstand="true">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>
<a:Action s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action></s:Header>
<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body></s:Envelope>"""
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DIGEST = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest"
BASE64 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-soap-message-security-1.0#Base64Binary"
SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
CODECS = {"H264": "h264", "H265": "h265", "JPEG": "mjpeg"}  # ONVIF's encoding names, as --input-codec names them


@dataclass
class Stream:
    """One of a camera's media profiles: its name, encoder, size and rate, and stream URL."""

    name: str
    encoding: str
    width: int
    height: int
    fps: float | None
    uri: str | None
    problem: str | None = None  # why the URL is missing


@dataclass
class Camera:
    """A camera that answered the probe: its device service, what its ONVIF scopes say of it
    (name, hardware), and its streams or why they could not be read."""

    address: str
    service: str
    name: str = ""
    hardware: str = ""
    streams: list[Stream] = field(default_factory=list)
    problem: str | None = None


def interface_addresses() -> list[str]:
    """The IPv4 addresses of this machine's interfaces that are up, but the loopback: a probe goes
    out through each, so a camera network on a second port (eth1) is probed as well as the
    default route's."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                found.append(address)
    return found


def _target(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
    try:
        return socket.gethostbyname(host), int(port) if port else DISCOVERY[1]
    except (OSError, ValueError) as exc:
        raise EdgeAdError(f"--address {address}: not an address, or address:port ({exc})") from exc


def discover(timeout_s: float, addresses: list[str] | None = None) -> list[Camera]:
    """The cameras that answer a probe within `timeout_s`: multicast through every interface, or
    sent to each of `addresses` (ADDRESS or ADDRESS:PORT: cameras on another subnet, which
    multicast does not reach), in the order they answered, each once."""
    message = PROBE.format(id=uuid.uuid4()).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("", 0))
        if addresses:
            for address in addresses:
                sock.sendto(message, _target(address))
        else:
            for interface in interface_addresses():  # none on a device with no network: no camera answers
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
                try:
                    sock.sendto(message, DISCOVERY)
                except OSError:  # an interface that cannot multicast
                    continue
        cameras: dict[str, Camera] = {}
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (sender, _) = sock.recvfrom(65535)
            except TimeoutError:
                break
            camera = _probe_match(data, sender)
            if camera is not None and camera.service not in cameras:
                cameras[camera.service] = camera
    return list(cameras.values())


def _host(url: str) -> str | None:
    """The host of an http(s) URL a device sent; None for anything else ("http://[::1/x")."""
    try:
        parsed = urlparse(url)
        return parsed.hostname if parsed.scheme in ("http", "https") else None
    except ValueError:
        return None


def _probe_match(data: bytes, sender: str) -> Camera | None:
    """The camera a ProbeMatch describes (None: not one), its first service URL on the address it
    answered from when it gives several (a camera lists each of its addresses); one whose URLs
    are none that can be read is listed with that problem (any device on the network answers)."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError:
        return None
    match = root.find(".//d:ProbeMatch", NS)
    addresses = (match.findtext("d:XAddrs", "", NS) if match is not None else "").split()
    if not addresses:
        return None
    readable = [a for a in addresses if _host(a)]
    service = next((a for a in readable if _host(a) == sender), readable[0] if readable else addresses[0])
    scopes = (match.findtext("d:Scopes", "", NS) or "").split()

    def scope(kind: str) -> str:
        prefix = f"onvif://www.onvif.org/{kind}/"
        said = [s[len(prefix):] for s in scopes if s.startswith(prefix)]
        return unquote(said[0]).replace("_", " ") if said else ""

    problem = None if readable else f"its answer names no http:// or https:// URL that reads ({' '.join(addresses)})"
    return Camera(_host(service) or sender, service, scope("name"), scope("hardware"), problem=problem)


class Soap:
    """Requests to one camera's services, signed with `user` and `password` (none: unsigned) at
    the camera's time; over HTTPS, its certificate checked by `tls`."""

    def __init__(self, user: str | None, password: str, timeout_s: float, tls: CameraTls):
        self.user, self.password, self.timeout_s = user, password, timeout_s
        self.clock_offset = timedelta(0)  # the camera's clock minus this machine's
        digest = [DigestAuthHandler(_CameraLogin(user, password))] if user else []
        self._opener = urllib.request.build_opener(*digest, tls.https_handler())

    def call(self, url: str, body: str, signed: bool = True) -> ElementTree.Element:
        """The SOAP body's answer to `body`; an EdgeAdError that says why there is none."""
        header = self._security() if signed and self.user else ""
        envelope = (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{NS["s"]}" '
                    f'xmlns:tds="{NS["tds"]}" xmlns:trt="{NS["trt"]}" xmlns:tr2="{NS["tr2"]}" xmlns:tt="{NS["tt"]}">'
                    f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>")
        try:  # (a URL the camera named for a service: Request refuses one that is not a URL)
            request = urllib.request.Request(url, envelope.encode(),
                                             {"Content-Type": "application/soap+xml; charset=utf-8"})
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                data = answer.read()
        except urllib.error.HTTPError as exc:  # a SOAP fault comes with 400 or 500, a refused login often 401
            data = exc.read()
            fault = _fault(data)
            if fault is None:
                refused = "NotAuthorized: " if exc.code == 401 else ""  # an HTTP digest login refused, or missing
                raise EdgeAdError(f"{refused}HTTP {exc.code} {exc.reason}") from exc
            raise EdgeAdError(fault) from exc
        except ValueError as exc:  # not an http:// URL, or a digest login urllib cannot make (MD5-sess)
            raise EdgeAdError(str(exc)) from exc
        except (OSError, http.client.HTTPException, OverflowError) as exc:
            raise EdgeAdError(http_failure(exc)) from exc
        try:
            root = ElementTree.fromstring(data)
        except ElementTree.ParseError as exc:
            raise EdgeAdError(f"the answer is not SOAP ({exc})") from exc
        body_element = root.find("s:Body", NS)
        if body_element is None or not len(body_element):
            raise EdgeAdError("the answer has no SOAP body")
        if body_element[0].tag == f"{{{NS['s']}}}Fault":  # some cameras send a fault with 200 OK
            raise EdgeAdError(_fault(data))
        return body_element[0]

    def _security(self) -> str:
        nonce = os.urandom(16)
        created = (datetime.now(timezone.utc) + self.clock_offset).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + self.password.encode()).digest()).decode()
        user = self.user.replace("&", "&amp;").replace("<", "&lt;")
        return (f'<Security s:mustUnderstand="1" xmlns="{WSSE}"><UsernameToken><Username>{user}</Username>'
                f'<Password Type="{DIGEST}">{digest}</Password>'
                f'<Nonce EncodingType="{BASE64}">{base64.b64encode(nonce).decode()}</Nonce>'
                f'<Created xmlns="{WSU}">{created}</Created></UsernameToken></Security>')


class _CameraLogin(urllib.request.HTTPPasswordMgr):
    """The user and password for whatever realm a camera's HTTP digest challenge names (one
    `Soap` speaks to one camera)."""

    def __init__(self, user: str, password: str):
        super().__init__()
        self.login = (user, password)

    def find_user_password(self, realm: str, authuri: str) -> tuple[str, str]:
        return self.login


def _fault(data: bytes) -> str | None:
    """What a SOAP fault says ("NotAuthorized: Sender not Authorized"), or None."""
    try:
        fault = ElementTree.fromstring(data).find(".//s:Fault", NS)
    except ElementTree.ParseError:
        return None
    if fault is None:
        return None
    codes = [value.rpartition(":")[2] for value in (e.text for e in fault.iter(f"{{{NS['s']}}}Value")) if value]
    reason = fault.findtext(".//s:Reason/s:Text", "", NS).strip()
    return ": ".join(filter(None, [codes[-1] if codes else "", reason])) or "a SOAP fault"


def _login_hint(problem: str, user: str | None) -> str:
    """`problem`, with what to do when it is a refused login."""
    if "NotAuthorized" not in problem:
        return problem
    if user is None:
        return f"{problem} (the camera lists its streams only to a login: give --user and --password)"
    return f"{problem} (a wrong user or password; or not the camera's ONVIF user, which many cameras keep apart " \
           "from the web one)"


def read_streams(camera: Camera, user: str | None, password: str, timeout_s: float,
                 certificate: str | None = None) -> Camera:
    """`camera` with its streams, or with the problem that kept them from being read. A camera set
    to HTTPS must present a certificate of the file `certificate` (its own, pinned) or, without
    one, a certificate the system trusts for its address."""
    if camera.problem:
        return camera
    https = camera.service if camera.service.startswith("https://") else f"https://{camera.address}"
    soap = Soap(user, password, timeout_s, CameraTls(https, certificate, "--certificate"))
    try:
        soap.clock_offset = _camera_time(soap, camera.service) - datetime.now(timezone.utc)
    except EdgeAdError:  # a camera that keeps its time to a login too: this machine's, then
        pass
    try:
        media, profiles = _profiles(soap, camera.service)
    except EdgeAdError as exc:
        camera.problem = _login_hint(str(exc), user)
        return camera
    for token, name, encoder in profiles:
        width, height, rate = (_number(encoder.findtext(path, "", NS)) for path in (
            "tt:Resolution/tt:Width", "tt:Resolution/tt:Height", "tt:RateControl/tt:FrameRateLimit"))
        stream = Stream(name or token, encoder.findtext("tt:Encoding", "", NS), int(width or 0), int(height or 0),
                        rate, None)
        try:
            stream.uri = _stream_uri(soap, media, token)
        except EdgeAdError as exc:
            stream.problem = _login_hint(str(exc), user)
        camera.streams.append(stream)
    return camera


def _profiles(soap: Soap, device: str) -> tuple[tuple[str, str], list[tuple[str, str, ElementTree.Element]]]:
    """The camera's media service ((its address, "tr2" for Media2 or "trt" for Media1)) and its video
    profiles (token, name, encoder configuration). Media2 where the camera lists it (GetServices,
    ONVIF 2.0 on): a camera set to H.265 says so there alone; else Media1 (GetCapabilities)."""
    try:
        services = soap.call(device, "<tds:GetServices><tds:IncludeCapability>false</tds:IncludeCapability>"
                                     "</tds:GetServices>")
        media2 = next((service.findtext("tds:XAddr", "", NS).strip() for service in services.findall("tds:Service", NS)
                       if service.findtext("tds:Namespace", "", NS).strip() == NS["tr2"]), "")
    except EdgeAdError:  # a camera older than GetServices; a refused login is said by the next call
        media2 = ""
    if media2:
        try:
            answer = soap.call(media2, "<tr2:GetProfiles><tr2:Type>VideoEncoder</tr2:Type></tr2:GetProfiles>")
            profiles = _video_profiles(answer, "tr2:Profiles", "tr2:Name", "tr2:Configurations/tr2:VideoEncoder")
        except EdgeAdError:  # a firmware's Media2 that fails: Media1 says what it can
            profiles = []
        if profiles:
            return (media2, "tr2"), profiles
    capabilities = soap.call(device, "<tds:GetCapabilities><tds:Category>Media</tds:Category></tds:GetCapabilities>")
    media = capabilities.findtext(".//tt:Media/tt:XAddr", "", NS).strip()
    if not media:
        raise EdgeAdError("the camera names no media service")
    answer = soap.call(media, "<trt:GetProfiles/>")
    return (media, "trt"), _video_profiles(answer, "trt:Profiles", "tt:Name", "tt:VideoEncoderConfiguration")


def _video_profiles(answer: ElementTree.Element, profile: str, name: str,
                    encoder: str) -> list[tuple[str, str, ElementTree.Element]]:
    """(token, name, video encoder configuration) of each profile in a GetProfiles answer that has
    one (audio and metadata profiles have none), at Media1's or Media2's paths."""
    return [(found.get("token", ""), found.findtext(name, "", NS), configuration)
            for found in answer.findall(profile, NS) if (configuration := found.find(encoder, NS)) is not None]


def _stream_uri(soap: Soap, media: tuple[str, str], token: str) -> str | None:
    """The RTSP URL of a profile, from Media2 or Media1 (whose answers differ in shape). One that
    is not rtsp:// or rtsps:// (a file:// or device path, which `run` would read) is refused: it
    goes into the --sources file the cameras found are written to."""
    address, version = media
    token = escape(token)
    if version == "tr2":
        answer = soap.call(address, f"<tr2:GetStreamUri><tr2:Protocol>RTSP</tr2:Protocol><tr2:ProfileToken>{token}"
                                    "</tr2:ProfileToken></tr2:GetStreamUri>")
        uri = answer.findtext("tr2:Uri", "", NS).strip()
    else:
        answer = soap.call(address, "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream>"
                                    "<tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup>"
                                    f"<trt:ProfileToken>{token}</trt:ProfileToken></trt:GetStreamUri>")
        uri = answer.findtext(".//tt:Uri", "", NS).strip()
    if uri and not uri.lower().startswith(("rtsp://", "rtsps://")):
        raise EdgeAdError(f"the camera gives a stream URL that is not rtsp:// or rtsps:// ({uri})")
    return uri or None


def _number(text: str) -> float | None:
    """A number a camera wrote, None for none (or one that is not a number)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _camera_time(soap: Soap, service: str) -> datetime:
    """The camera's clock (UTC), which its logins are checked against; this machine's when it
    does not say."""
    answer = soap.call(service, "<tds:GetSystemDateAndTime/>", signed=False)
    utc = answer.find(".//tt:UTCDateTime", NS)
    try:
        date, clock = utc.find("tt:Date", NS), utc.find("tt:Time", NS)
        return datetime(*(int(date.findtext(f"tt:{k}", "", NS)) for k in ("Year", "Month", "Day")),
                        *(int(clock.findtext(f"tt:{k}", "", NS)) for k in ("Hour", "Minute", "Second")),
                        tzinfo=timezone.utc)
    except (AttributeError, TypeError, ValueError, OverflowError):  # OverflowError: a year of 20 digits
        return datetime.now(timezone.utc)



def describe(camera: Camera, certificate: str | None = None) -> list[str]:
    """Lines that show a camera and its streams, each stream's URL as --input takes it (an
    rtsps:// one with --input-certificate `certificate`, the camera's own, when given)."""
    lines = [f"{camera.address}  {' '.join(filter(None, [camera.name, camera.hardware])) or 'an ONVIF camera'}"
             f"  ({camera.service})"]
    if camera.problem:
        lines.append(f"  streams not read: {camera.problem}")
    for stream in camera.streams:
        rate = f" {stream.fps:g} fps" if stream.fps else ""
        codec = CODECS.get(stream.encoding.upper())
        option = f" --input-codec {codec}" if codec and codec != "h264" else ""
        if certificate and stream.uri and stream.uri.startswith("rtsps://"):
            option += f" --input-certificate {shell_word(certificate)}"
        where = stream.uri + option if stream.uri else f"(no URL: {stream.problem})"
        lines.append(f"  {stream.name}: {stream.encoding} {stream.width}x{stream.height}{rate}  {where}")
    return lines
