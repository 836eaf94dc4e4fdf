"""`edge-ad run --opcua-trust DIR`: the OPC UA clients whose certificates the plant trusts, the others
refused, as OPC UA servers keep a trust list.

A client's certificate is trusted when it is in DIR itself (a client's self-signed certificate,
as SCADA systems and UaExpert make) or was issued by a certificate authority in DIR (a plant's
own CA); PEM or DER, any file name, a PEM file with several certificates too. It must also be
within its validity period and name the client's application URI (asyncua's basic validation),
and not be revoked by a certificate revocation list (CRL) in DIR, which one of its authorities
signed. A refused certificate is kept in `rejected/` beside the server's own certificate, named
by its SHA-1 thumbprint, and the log says which file to move into DIR to trust it. DIR is read
again at each new session (sessions are few: a client keeps its own for hours), so a
certificate moved in or a renewed list counts from the client's next attempt, without a
restart; the server reads it again every TRUST_RECHECK_S for the sessions open, and closes
those it no longer takes or whose certificates have run out (edge_ad.opcua).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from pathlib import Path

from .errors import EdgeAdError, client_text, os_reason

log = logging.getLogger("edge_ad.opcua")

REJECTED_KEPT = 100  # refused certificates kept at most: a client with a new one at each try would fill the disk


def read_certificates(path: Path) -> list:
    """The certificates in one file (PEM, one or more, or DER); ValueError when it holds none."""
    return _certificates_in(path.read_bytes())


def _certificates_in(data: bytes) -> list:
    from cryptography import x509

    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _read_trust_file(path: Path) -> tuple[list, object | None]:
    """The certificates in a file of the trust folder, or its certificate revocation list (PEM or
    DER); ValueError when it holds neither."""
    from cryptography import x509

    data = path.read_bytes()
    if b"-----BEGIN X509 CRL-----" in data:
        return [], x509.load_pem_x509_crl(data)
    try:
        return _certificates_in(data), None
    except ValueError:
        if data.lstrip().startswith(b"-----BEGIN"):
            raise
        return [], x509.load_der_x509_crl(data)  # ValueError again when it is no CRL either


def thumbprint(der: bytes) -> str:
    """A certificate's SHA-1 thumbprint as OPC UA clients show it: 40 hex digits in pairs."""
    digest = hashlib.sha1(der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 40, 2))


class ClientTrust:
    """asyncua's certificate validator for `folder`'s trust list; refused certificates are kept in
    `rejected`."""

    def __init__(self, folder: Path, rejected: Path):
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        self.folder, self.rejected = folder, rejected
        self._basic = CertificateValidator(CertificateValidatorOptions.BASIC_VALIDATION)
        self._trusted: set[bytes] = set()  # the DER of each certificate in the folder
        self._authorities: list = []  # those of them that are certificate authorities
        self._revoked: dict = {}  # an authority's name -> the serial numbers its revocation lists name
        self._said: dict[bytes, set[str]] = {}  # a refused certificate's SHA-1 -> the refusals logged since
        self._warned: set[str] = set()  # the folder's problems at its last read, each logged as it came
        self.load(strict=True)

    def load(self, strict: bool = False) -> None:
        """Read the folder's certificates and revocation lists. `strict` (at the start): a file
        that is neither, or a list no authority there signed, is an error that names it; later it
        is left out with a warning (a file being copied in), and a folder that cannot be read
        leaves what was read before."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        problems: list[str] = []

        def refuse(problem: str, exc: Exception | None = None, remedy: str = "take it out of the folder") -> None:
            if strict:
                raise EdgeAdError(f"{problem}; {remedy}") from exc
            problems.append(f"opcua: {problem}; left out")

        try:
            files = sorted(path for path in self.folder.iterdir() if path.is_file() and not path.name.startswith("."))
        except OSError as exc:
            if strict:
                raise EdgeAdError(f"--opcua-trust {self.folder}: cannot read the folder ({os_reason(exc)})") from exc
            self._warn([f"opcua: --opcua-trust {self.folder}: cannot read the folder ({os_reason(exc)}); what was read "
                        "before is used"])
            return
        trusted, authorities, lists = set(), [], []
        for path in files:
            try:
                certificates, revocations = _read_trust_file(path)
            except OSError as exc:  # a file the run's user may not read (copied in by root)
                refuse(f"--opcua-trust: cannot read {path} ({os_reason(exc)})", exc,
                       "make it readable, or take it out of the folder")
                continue
            except ValueError as exc:
                refuse(f"--opcua-trust: {path} is not a certificate or a revocation list (CRL) in PEM or DER "
                       f"({_first_sentence(exc)})", exc)
                continue
            if revocations is not None:
                lists.append((path, revocations))
            for certificate in certificates:
                trusted.add(certificate.public_bytes(serialization.Encoding.DER))
                try:
                    if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                        authorities.append(certificate)
                except x509.ExtensionNotFound:
                    pass
        revoked: dict = {}  # issuer's name -> the serial numbers its lists revoke
        for path, revocations in lists:
            if not any(authority.subject == revocations.issuer and revocations.is_signature_valid(
                    authority.public_key()) for authority in authorities):
                refuse(f"--opcua-trust: {path} is a revocation list that no certificate authority there signed "
                       f"(its issuer: {revocations.issuer.rfc4514_string()})")
                continue
            revoked.setdefault(revocations.issuer, set()).update(entry.serial_number for entry in revocations)
        self._trusted, self._authorities, self._revoked = trusted, authorities, revoked
        self._warn(problems)
        if strict and not trusted:  # the way to begin: each client's first attempt leaves its certificate
            log.warning("opcua: no certificate in --opcua-trust %s: every client is refused, and its certificate "
                        "kept in %s to be moved in", self.folder, self.rejected)
        elif strict:
            log.info("opcua: clients trusted: the %d certificates in %s (%d of them certificate authorities, "
                     "%d revocation lists)", len(trusted), self.folder, len(authorities), len(lists))

    async def __call__(self, certificate, application) -> None:
        """Raise asyncua's ServiceError (the client is told why) unless `certificate` is taken."""
        from asyncua import ua
        from asyncua.common.utils import ServiceError
        from cryptography.hazmat.primitives import serialization

        der = certificate.public_bytes(serialization.Encoding.DER)
        client = client_text(application.ApplicationUri) if application.ApplicationUri else "a client"  # its own word
        try:
            await self._basic.validate(certificate, application)
        except ServiceError as exc:
            self._say(der, "opcua: refused %s: its certificate (SHA-1 %s) %s", client, thumbprint(der),
                      _basic_refusal(exc.code, certificate))
            raise
        self.load()  # the folder as it is now: a certificate moved in, a revocation list renewed
        refusal = self.refusal(certificate, der)
        if refusal == ua.StatusCodes.BadCertificateUntrusted:
            kept = self.rejected / f"{hashlib.sha1(der).hexdigest()}.der"
            try:
                self.rejected.mkdir(parents=True, exist_ok=True)
                if not kept.exists() and sum(1 for _ in self.rejected.iterdir()) >= REJECTED_KEPT:
                    what_to_do = (f"not kept: {self.rejected} holds {REJECTED_KEPT} refused certificates already "
                                  "(empty it); get it from the client's side to trust it")
                else:
                    kept.write_bytes(der)
                    what_to_do = f"kept as {kept}: move it into {self.folder} to trust it"
            except OSError as exc:
                what_to_do = f"not kept ({kept}: {os_reason(exc)}): get it from the client's side to trust it"
            self._say(der, "opcua: refused %s: its certificate (SHA-1 %s) is not in --opcua-trust %s, nor issued by "
                      "one there; %s", client, thumbprint(der), self.folder, what_to_do)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        if refusal == ua.StatusCodes.BadCertificateRevoked:
            self._say(der, "opcua: refused %s: its certificate (SHA-1 %s, serial %x) is revoked by a revocation list "
                      "in %s", client, thumbprint(der), certificate.serial_number, self.folder)
            raise ServiceError(ua.StatusCodes.BadCertificateRevoked)
        self._said.pop(hashlib.sha1(der).digest(), None)  # taken: a later refusal is said again

    def refusal(self, certificate, der: bytes) -> int | None:
        """asyncua's status code of why the folder, as last read, does not take `certificate`
        (BadCertificateUntrusted, BadCertificateRevoked), or None when it does."""
        from asyncua import ua

        if not self._trusts(certificate, der):
            return ua.StatusCodes.BadCertificateUntrusted
        if certificate.serial_number in self._revoked.get(certificate.issuer, ()):
            return ua.StatusCodes.BadCertificateRevoked
        return None

    def refusal_now(self, certificate, der: bytes) -> str | None:
        """Why the certificate of a session open for a while is refused now, in words (its dates
        passed, or the folder as last read does not take it), or None. A certificate the plant's CA
        issued and that ran out was said to be not in the folder, and a self-signed one in it kept
        its session."""
        from asyncua import ua

        now = datetime.now(timezone.utc)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            return _basic_refusal(ua.StatusCodes.BadCertificateTimeInvalid, certificate)
        refusal = self.refusal(certificate, der)
        if refusal == ua.StatusCodes.BadCertificateRevoked:
            return "is revoked now"
        return None if refusal is None else f"is not in --opcua-trust {self.folder} now"

    def _warn(self, problems: list[str]) -> None:
        """Log the problems of the folder that its last read did not have: it is read at each
        session and every TRUST_RECHECK_S. One gone and come back (a list copied in half again,
        weeks later) is said again; once for good, it was not."""
        for problem in problems:
            if problem not in self._warned:
                log.warning("%s", problem)
        self._warned = set(problems)

    def _say(self, der: bytes, *message) -> None:
        """Log a refusal once per certificate and reason until the certificate is taken again: a
        client tries again every few seconds. Once for good, as before, silenced every refusal of
        a client set up the way the README says (refused once, then moved in) for the rest of the
        run: revoked, run out or taken out months later."""
        text = message[0] % message[1:]
        said = self._said.setdefault(hashlib.sha1(der).digest(), set())
        if text not in said:
            said.add(text)
            log.warning("%s", text)

    def _trusts(self, certificate, der: bytes) -> bool:
        from cryptography.x509 import verification

        if der in self._trusted:
            return True
        if not self._authorities:
            return False
        verifier = (verification.PolicyBuilder().store(verification.Store(self._authorities))
                    .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                        ee_policy=verification.ExtensionPolicy.permit_all())
                    .build_client_verifier())
        try:
            verifier.verify(certificate, [])
        except verification.VerificationError:
            return False
        return True


def _basic_refusal(code: int, certificate) -> str:
    """Why asyncua's basic validation refused a certificate, in words."""
    from asyncua import ua

    if code == ua.StatusCodes.BadCertificateTimeInvalid:
        return (f"is valid only from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC (or this machine's clock is wrong)")
    if code == ua.StatusCodes.BadCertificateUriInvalid:
        return "does not name the application URI the client gives"
    return "has no subjectAltName, where OPC UA certificates name their application"


def _first_sentence(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).split(". ")[0]
