"""Who may watch the RTSP and HTTP outputs: `--output-user NAME` (its password in
EDGE_AD_OUTPUT_PASSWORD) and `--output-certificate FILE --output-key FILE` (TLS).

The overlays show the parts on the line: a camera that asks for a password should not be
watchable through edge-ad without one. With a user, RTSP viewers log in by digest
authentication (VLC, ffmpeg, NVRs and rtspsrc make it) and browsers by basic authentication,
whose password crosses plain HTTP readable: said at the start, and https:// is the remedy.
With a certificate (the plant's, or one made with openssl) the outputs are written
`rtsps://@:8554/line` and `https://@:8443/line` and served over TLS only, an RTSP output's
video inside the TLS connection (RTP over TCP). Wrong passwords from one address are limited
(edge_ad.login_attempts), over RTSP and HTTP together.
"""

from __future__ import annotations

import base64
import functools
import hmac
import logging
import ssl
from dataclasses import dataclass, field

from .errors import EdgeAdError, encrypted_key, os_reason
from .login_attempts import LoginAttempts

log = logging.getLogger("edge_ad.output_access")

OUTPUT_PASSWORD_VARIABLE = "EDGE_AD_OUTPUT_PASSWORD"  # the password of --output-user
RTSP_OUTPUTS = ("rtsp://", "rtsps://")
HTTP_OUTPUTS = ("http://", "https://")
TLS_OUTPUTS = ("rtsps://", "https://")
VIEWER_ROLE = "viewer"  # gst-rtsp-server's role of whoever may watch


@dataclass(frozen=True)
class OutputAccess:
    """The login and the TLS certificate of a run's RTSP and HTTP outputs (none: open to all)."""

    user: str | None = None
    password: str = field(default="", repr=False)  # never in a log line or a traceback's locals
    certificate: str | None = None
    key: str | None = None
    attempts: LoginAttempts = field(default_factory=lambda: LoginAttempts("output login"), repr=False, compare=False)

    def check(self, outputs: list[str]) -> None:
        """Refuse, before the start, outputs whose scheme does not say what serves them (a TLS one
        without a certificate, a plain one with), options with no output to serve, and a
        certificate or key that does not read; warn of a password sent readable."""
        served = [uri for uri in outputs if uri.startswith(RTSP_OUTPUTS + HTTP_OUTPUTS)]
        for uri in served:
            if uri.startswith(TLS_OUTPUTS) and self.certificate is None:
                raise EdgeAdError(f"--output {uri}: served over TLS, it needs --output-certificate FILE and "
                                  "--output-key FILE (this device's certificate and its key)")
            if self.certificate is not None and not uri.startswith(TLS_OUTPUTS):
                scheme = uri.split("://")[0]
                raise EdgeAdError(f"--output {uri}: with --output-certificate, outputs are served over TLS only: "
                                  f"write it {scheme}s://{uri.split('://', 1)[1]}")
        if (self.user is not None or self.certificate is not None) and not served:
            raise EdgeAdError("--output-user and --output-certificate are for RTSP and HTTP outputs (--output "
                              "rtsp://@:8554/line, http://@:8080/line); this run serves none")
        if self.certificate is not None:
            self.ssl_context()
            if any(uri.startswith(RTSP_OUTPUTS) for uri in served):
                self.gio_certificate()
        if self.user is not None and any(uri.startswith("http://") for uri in served):
            log.warning("--output-user: browsers send the password of an http:// output readable to anyone on the "
                        "network (basic authentication); serve it as https:// with --output-certificate")

    def _unreadable(self, reason: object) -> EdgeAdError:
        return EdgeAdError(f"--output-certificate {self.certificate} / --output-key {self.key}: they do not read as "
                           f"a certificate (PEM) and its unencrypted key ({reason})")

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS of https:// outputs."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certificate, self.key, password=encrypted_key("--output-key", self.key))
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise EdgeAdError(f"--output-key {self.key}: not the key of --output-certificate "
                                  f"{self.certificate}") from exc
            raise self._unreadable(exc.reason or exc) from exc
        except OSError as exc:
            raise self._unreadable(os_reason(exc)) from exc
        return context

    def gio_certificate(self):
        """The Gio.TlsCertificate of rtsps:// outputs (gst-rtsp-server's)."""
        from gi.repository import Gio, GLib

        try:
            return Gio.TlsCertificate.new_from_files(self.certificate, self.key)
        except GLib.Error as exc:
            raise self._unreadable(exc.message) from exc

    def allows(self, authorization: str | None) -> bool:
        """Whether an HTTP request's Authorization header gives the user and password (basic)."""
        if self.user is None:
            return True
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return hmac.compare_digest((authorization or "").encode(), expected.encode())

    def rtsp_auth(self, GstRtspServer):
        """gst-rtsp-server's RTSPAuth of this access (None: open to all, without TLS)."""
        if self.user is None and self.certificate is None:
            return None
        from gi.repository import GstRtsp

        auth, token = _limited_auth_class(GstRtspServer)(), GstRtspServer.RTSPToken()
        auth.attempts = self.attempts
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, VIEWER_ROLE)
        if self.certificate is not None:
            auth.set_tls_certificate(self.gio_certificate())
        if self.user is None:
            auth.set_default_token(token)  # anyone may watch, over TLS
            return auth
        auth.add_digest(self.user, self.password, token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)  # never the password itself, as basic sends it
        return auth


def viewer_permissions(GstRtspServer):
    """What a viewer may do with an output's media factory: see it, and start it."""
    permissions = GstRtspServer.RTSPPermissions()
    for permission in ("media.factory.access", "media.factory.construct"):
        permissions.add_permission_for_role(VIEWER_ROLE, permission, True)
    return permissions


@functools.cache
def _limited_auth_class(GstRtspServer):
    """gst-rtsp-server's RTSPAuth with wrong logins limited per address (made once: GObject types
    are registered once per process)."""
    from gi.repository import GstRtsp

    class LimitedAuth(GstRtspServer.RTSPAuth):
        attempts: LoginAttempts

        def do_authenticate(self, ctx) -> bool:
            address = ctx.conn.get_ip()
            if self.attempts.refused_for(address):
                return False  # answered 401, the password unchecked
            authenticated = GstRtspServer.RTSPAuth.do_authenticate(self, ctx)  # true also without a login:
            if ctx.token is not None:  # the user's token is set for a right one alone (no default token)
                self.attempts.succeeded(address)
            elif ctx.request.get_header(GstRtsp.RTSPHeaderField.AUTHORIZATION, 0)[0] == GstRtsp.RTSPResult.OK:
                self.attempts.failed(address)  # a wrong login; a client's first request has none
            return authenticated

    return LimitedAuth
