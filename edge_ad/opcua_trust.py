"""`edge-ad run --opcua-trust DIR`: the OPC UA clients whose certificates the plant trusts, the others
refused, as OPC UA servers keep a trust list.

A client's certificate is trusted when it is in DIR itself (a client's self-signed certificate,
as SCADA systems and UaExpert make) or was issued by a certificate authority in DIR (a plant's
own CA); PEM or DER, any file name, a PEM file with several certificates too. It must also be
within its validity period and name the client's application URI (asyncua's basic validation).
A refused certificate is kept in `rejected/` beside the server's own certificate, named by its
SHA-1 thumbprint, and the log says which file to move into DIR to trust it; DIR is read again
at each refusal, so a certificate moved in counts from the client's next attempt, without a
restart.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from .errors import EdgeAdError

log = logging.getLogger("edge_ad.opcua")


def read_certificates(path: Path) -> list:
    """The certificates in one file (PEM, one or more, or DER); ValueError when it holds none."""
    from cryptography import x509

    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


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
        self._said: set[bytes] = set()  # the certificates refused and logged: a client retries every few seconds
        self.load(strict=True)

    def load(self, strict: bool = False) -> None:
        """Read the folder's certificates. `strict` (at the start): a file that is not one is an
        error that names it; later it is skipped with a warning, as a file being copied in may be."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            files = sorted(path for path in self.folder.iterdir() if path.is_file() and not path.name.startswith("."))
        except OSError as exc:
            raise EdgeAdError(f"--opcua-trust {self.folder}: cannot read the folder ({exc.strerror})") from exc
        trusted, authorities = set(), []
        for path in files:
            try:
                certificates = read_certificates(path)
            except (OSError, ValueError) as exc:
                problem = f"--opcua-trust: {path} is not a certificate in PEM or DER ({_first_sentence(exc)})"
                if strict:
                    raise EdgeAdError(f"{problem}; take it out of the folder") from exc
                log.warning("opcua: %s; left out", problem)
                continue
            for certificate in certificates:
                trusted.add(certificate.public_bytes(serialization.Encoding.DER))
                try:
                    if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                        authorities.append(certificate)
                except x509.ExtensionNotFound:
                    pass
        self._trusted, self._authorities = trusted, authorities
        if strict:
            log.info("opcua: clients trusted: the %d certificates in %s (%d of them certificate authorities)",
                     len(trusted), self.folder, len(authorities))

    async def __call__(self, certificate, application) -> None:
        """Raise asyncua's ServiceError (the client is told why) unless `certificate` is taken."""
        from asyncua import ua
        from asyncua.common.utils import ServiceError
        from cryptography.hazmat.primitives import serialization

        der = certificate.public_bytes(serialization.Encoding.DER)
        client = application.ApplicationUri or "a client"
        try:
            await self._basic.validate(certificate, application)
        except ServiceError as exc:
            log.warning("opcua: refused %s: its certificate (SHA-1 %s) %s", client, thumbprint(der),
                        _basic_refusal(exc.code, certificate))
            raise
        if self._trusts(certificate, der):
            return
        self.load()  # a certificate moved in since
        if self._trusts(certificate, der):
            return
        kept = self.rejected / f"{hashlib.sha1(der).hexdigest()}.der"
        try:
            self.rejected.mkdir(parents=True, exist_ok=True)
            kept.write_bytes(der)
            what_to_do = f"kept as {kept}: move it into {self.folder} to trust it"
        except OSError as exc:
            what_to_do = f"not kept ({kept}: {exc.strerror}): get it from the client's side to trust it"
        if der not in self._said:
            self._said.add(der)
            log.warning("opcua: refused %s: its certificate (SHA-1 %s) is not in --opcua-trust %s, nor issued by "
                        "one there; %s", client, thumbprint(der), self.folder, what_to_do)
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

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
