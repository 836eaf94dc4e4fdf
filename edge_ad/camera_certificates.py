"""An HTTPS or RTSPS camera's own certificate, trusted as it is: `--input-certificate FILE`.

A camera switched to HTTPS makes its own certificate, self-signed (Axis, Hikvision, Dahua do):
no system trusts it, and the name in it is seldom the address the line reaches the camera by
(axis-accc8e012345 for 10.0.7.21), so added to the system's trust store it is still refused.
Given FILE, the camera must present exactly one of its certificates (PEM, one or more, or DER):
the certificate is pinned. Its name and dates are not checked (the camera chose them); its key
is, by the handshake itself: only the camera holding it gets through. Without FILE the camera's
certificate is checked against the system's trust store, its name included.

A refused certificate is kept in the state folder (`cameras/HOST-PORT.pem`) and the refusal names
that file and the certificate's SHA-256 fingerprint, which the camera's web page (and a
browser's padlock) shows: once they match, that file is the one to give.

One CameraTls per source checks still pictures fetched by urllib (edge_ad.http_pictures) and
GStreamer's souphttpsrc and rtspsrc, as their `tls-database`; one per camera the ONVIF requests
of `edge-ad cameras` (edge_ad.onvif) to a camera set to HTTPS.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import re
import ssl
import urllib.request
from pathlib import Path

from .errors import CertificateRefused, EdgeAdError, SourceError, os_reason, parsed_uri, without_passwords
from .files import state_folder, write_atomic

TLS_SCHEMES = ("https://", "rtsps://")
_PORT_AND_PLAIN = {"https": (443, "http://"), "rtsps": (322, "rtsp://")}  # default port; the scheme without TLS
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def read_pinned(path: str, option: str = "--input-certificate") -> frozenset[bytes]:
    """The certificates (DER) in `path`, which `option` gave: PEM blocks (a private key beside them
    is left alone), or one DER certificate."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SourceError(f"{option} {path}: cannot read it ({os_reason(exc)})") from exc
    try:
        pinned = frozenset(ssl.PEM_cert_to_DER_cert(block.decode("ascii")) for block in _PEM_BLOCK.findall(data))
    except ValueError as exc:  # base64 that does not decode
        raise SourceError(f"{option} {path}: a certificate in it does not read ({exc})") from exc
    if not pinned and data.startswith(b"\x30") and b"-----" not in data:  # DER: an ASN.1 sequence
        pinned = frozenset([data])
    if not pinned:
        raise SourceError(f"{option} {path}: holds no certificate (PEM '-----BEGIN CERTIFICATE-----' "
                          "or DER): save the camera's, from its web page or from the file a refusal names")
    return pinned


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate, as browsers and cameras' web pages show it (AB:CD:...)."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


def camera_tls(uri: str, certificate: str | None) -> CameraTls | None:
    """What checks the certificate of the camera at `uri` (None for one without TLS)."""
    if uri.startswith(TLS_SCHEMES):
        return CameraTls(uri, certificate)
    if certificate:
        raise SourceError(f"{without_passwords(uri)}: --input-certificate is for https:// and rtsps:// cameras "
                          "(give it per camera in --sources, 'certificate:', when some have none)")
    return None


class CameraTls:
    """A camera's certificate check (see the module's docstring), and the last refusal. `option`
    is what gives the certificate: `edge-ad cameras` calls it --certificate."""

    def __init__(self, uri: str, certificate: str | None, option: str = "--input-certificate"):
        parsed = parsed_uri(uri)
        port, self.plain = _PORT_AND_PLAIN[parsed.scheme]
        self.host, self.port = parsed.hostname or "", parsed.port or port
        self.file, self.option = certificate, option
        self.pinned = read_pinned(certificate, option) if certificate else None
        self.refusal: CertificateRefused | None = None
        self._database = None

    def refuse(self, der: bytes | None, reason: str) -> CertificateRefused:
        """The refusal of what the camera presented (`der`; None when it could not be had), which
        is kept in the state folder, to be compared with the camera's web page and given."""
        if self.pinned is not None:
            said = f"the camera's certificate is not the one in {self.option} {self.file}"
            then = ("give that file instead (the camera has made a new one); if not, something else answers at its "
                    "address")
        else:
            said = f"the camera's certificate is not trusted here ({reason})"
            then = f"give that file as {self.option} (its own certificate, pinned), or use {self.plain}"
        if der:
            kept = self._keep(der)
            said += (f": it presented SHA-256 {fingerprint(der)}, "
                     + (f"kept in {kept}" if isinstance(kept, Path) else f"not kept ({kept})")
                     + f"; if the camera's web page shows this fingerprint, {then}")
        self.refusal = CertificateRefused(said)
        return self.refusal

    def _keep(self, der: bytes) -> Path | str:
        pem = ssl.DER_cert_to_PEM_cert(der).encode()
        try:
            path = state_folder() / "cameras" / f"{self.host}-{self.port}.pem"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_bytes() != pem:  # not again at every retry of the camera
                write_atomic(path, pem)
        except (OSError, EdgeAdError) as exc:
            return str(exc)
        return path

    def https_handler(self) -> urllib.request.HTTPSHandler:
        """urllib's handler for this camera: pinned, or the system's trust store."""
        return _HttpsHandler(self)

    def gst_database(self):
        """A Gio.TlsDatabase for souphttpsrc's and rtspsrc's `tls-database` (made once)."""
        if self._database is None:
            self._database = _database_class()()
            self._database.tls = self
        return self._database


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, tls: CameraTls):
        context = ssl.create_default_context()
        if tls.pinned is not None:  # the handshake proves the key; which certificate it is, connect checks
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        super().__init__(context=context)
        self._tls = tls

    def https_open(self, req):
        return self.do_open(functools.partial(_Connection, self._tls), req, context=self._context)


class _Connection(http.client.HTTPSConnection):
    def __init__(self, tls: CameraTls, host: str, **kwargs):
        super().__init__(host, **kwargs)
        self._tls = tls

    def connect(self) -> None:
        try:
            super().connect()
        except ssl.SSLCertVerificationError as exc:
            raise self._tls.refuse(self._presented(), exc.verify_message) from exc
        presented = self.sock.getpeercert(binary_form=True)
        if self._tls.pinned is not None and presented not in self._tls.pinned:
            self.close()
            raise self._tls.refuse(presented, "")

    def _presented(self) -> bytes | None:
        """The certificate the camera presents, asked again without checking it."""
        try:
            return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((self.host, self.port), timeout=self.timeout))
        except (OSError, ValueError):
            return None


_FLAG_WORDS = (("UNKNOWN_CA", "issued by no authority this device trusts: self-signed, as a camera's own is"),
               ("BAD_IDENTITY", "made out for another name than the address"), ("NOT_ACTIVATED", "not valid yet"),
               ("EXPIRED", "expired"), ("REVOKED", "revoked"), ("INSECURE", "signed by an insecure algorithm"),
               ("GENERIC_ERROR", "unreadable"))


def _system_database():
    """GLib's database of the system's trust store (glib-networking), which checks names too."""
    from gi.repository import Gio

    return Gio.TlsBackend.get_default().get_default_database()


@functools.cache
def _database_class():
    """The Gio.TlsDatabase subclass (made once: GObject types are registered once per process)."""
    from gi.repository import Gio

    class CameraDatabase(Gio.TlsDatabase):
        tls: CameraTls

        def do_verify_chain(self, chain, purpose, identity, interaction, flags, cancellable):
            presented = bytes(chain.props.certificate)
            if self.tls.pinned is not None:
                if presented in self.tls.pinned:
                    return Gio.TlsCertificateFlags(0)
                self.tls.refuse(presented, "")
                return Gio.TlsCertificateFlags.UNKNOWN_CA
            errors = _system_database().verify_chain(chain, purpose, identity, interaction, flags, cancellable)
            if errors:
                words = [word for name, word in _FLAG_WORDS if errors & getattr(Gio.TlsCertificateFlags, name)]
                self.tls.refuse(presented, "; ".join(words) or str(errors))
            return errors

    return CameraDatabase
