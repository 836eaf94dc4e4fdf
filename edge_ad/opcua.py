"""`edge-ad run --opcua-port N`: each source's last result as OPC UA variables, for SCADA, MES and
the PLCs that read OPC UA (Siemens S7-1500, Beckhoff, Ignition, Kepware) rather than Modbus.

The server (asyncua, an event loop in a thread of its own) listens on opc.tcp://0.0.0.0:N/edge-ad/,
without security or login, as the Modbus server: a line's network is closed to the outside. With
`--opcua-user NAME` (its password in EDGE_AD_OPCUA_PASSWORD, not on the command line, where `ps`
shows it) it takes that user's login alone, over signed and encrypted messages only
(Basic256Sha256, Aes128Sha256RsaOaep or Aes256Sha256RsaPss, as the client picks), as plants whose
IT asks for OPC UA security set their clients: no anonymous session, no plain endpoint. Its
certificate is made on the first such start (self-signed for ten years, application URI
urn:edge-ad:HOSTNAME, its key readable by its owner only) and kept (`certificate_dir`), so that
a client told to trust it once goes on trusting it; the log names the file and its SHA-1
thumbprint, which clients show when they ask. A plant whose IT issues certificates gives
its own with --opcua-certificate and --opcua-key (PEM or DER; the application URI is read from it).
Client certificates are taken from any client unless --opcua-trust DIR names the trusted ones
(edge_ad.opcua_trust); the password is the login either way. A second login, --opcua-reader NAME
(EDGE_AD_OPCUA_READER_PASSWORD), reads, browses and subscribes, and is refused writes and method
calls: for a historian or MES that should not acknowledge alarms or start calibrations.

In the namespace `urn:edge-ad` the object `edge-ad` (under Objects) holds one object per source,
named and with node id as MQTT spells the source (sinks.slug: `ns=2;s=line1`), and in it, with
node ids `ns=2;s=line1.Score` and so on:

    Frames             UInt32   frames scored (wraps at 2**32: 4.5 years at 30 frames a second)
    Anomalous          Boolean  the last frame was anomalous
    Alarm              Boolean  ... and an alarm (--alarm-frames anomalous frames in a row)
    Score, Threshold   Double   its score, and the threshold it was judged by
    AnomalousFrames    UInt32   anomalous frames so far
    AlarmFrames        UInt32   alarm frames so far
    FrameNumber        UInt32   its frame number
    LastScored         DateTime when it was scored: a client compares it with the server's
                                Server/ServerStatus/CurrentTime to tell a camera gone away
    Variant            String   the variant whose bundle scored it ("" with one bundle)
    Bundle             String   the first 8 hex digits of the SHA-256 of its bundle.yaml
    Calibration        String   ... and of its calibration.yaml ("": the bundle's own numbers)
    AlarmLatch         Boolean  true from the source's alarm frame on, until a client writes false
                                (the only variable a client writes), so that an alarm between two
                                reads is not missed
    Frozen             Boolean  the source's picture stands still (edge_ad.freeze)
    CalibrationState   Int32    its calibration on the line: 0 idle, 1 calibrating, 2 calibrated,
                                3 refused (the log says why)
    CalibrationFrames  UInt32   normal frames that calibration kept so far
    LineVariant        String   with one bundle per variant: the variant the line makes now, as
                                SetVariant set it ("": any, every bundle scores)

and the methods Calibrate(Boolean start) (calibrate on the next frames, which must show good
parts; false cancels) and, with one bundle per variant, SetVariant(String name) (a variant's
name, "" for any; another name is answered BadInvalidArgument).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from . import connection_limit
from .errors import EdgeAdError, client_text, listen_reason, os_reason, password_from_environment
from .files import state_folder
from .login_attempts import LoginAttempts
from .opcua_trust import ClientTrust, read_certificates, thumbprint
from .sinks import ReportDue, slug

log = logging.getLogger("edge_ad.opcua")

NAMESPACE = "urn:edge-ad"
START_S = 60.0  # asyncua builds its standard address space at the start: 2 s on a 2-core x86
WRAP = 1 << 32
PASSWORD_VARIABLE = "EDGE_AD_OPCUA_PASSWORD"  # the password of --opcua-user
READER_PASSWORD_VARIABLE = "EDGE_AD_OPCUA_READER_PASSWORD"  # ... of --opcua-reader
CERTIFICATE, KEY = "server-certificate.der", "server-key.pem"
# The server's own certificate: every client trusts it by hand, and must again when it is made anew,
# so it is made for a line's life, and the log says so weeks before it runs out.
OWN_CERTIFICATE_DAYS = 3650
RENEW_NOTICE = timedelta(days=60)
TRUST_RECHECK_S = 30.0  # the open sessions' certificates against the trust folder: a SCADA stays connected for months
# The most a client's message may hold, its chunks together: the default of the OPC Foundation's
# .NET stack. Ours are a few kB (a session's certificate, reads of a few hundred variables); asyncua
# took 100 MB, which 64 connections at once would hold in more memory than a Jetson has.
MAX_MESSAGE_BYTES = 4 << 20


class OpcUaServer:
    """Serves the variables and methods above for `sources` (names) on `port`; `variants` gives,
    per source, its bundles' variant names; `on_variant(source, variant or None)` is told what a
    client's SetVariant says and `on_calibrate(source, start)` what its Calibrate says (none: no
    such method). With `user`, that user's login alone, over signed and encrypted messages (see
    above), and `reader`'s that only reads, with `certificate` (the plant's certificate file and
    its key's) or a certificate of its own, from the clients whose certificates are in `trust` (a
    folder; none: any client's)."""

    def __init__(self, port: int, sources: Sequence[str], variants: dict[str, Sequence[str]] | None = None,
                 host: str = "0.0.0.0", on_variant: Callable[[str, str | None], None] | None = None,
                 on_calibrate: Callable[[str, bool], None] | None = None, user: str | None = None,
                 reader: str | None = None, certificate: tuple[Path, Path] | None = None,
                 trust: Path | None = None):
        try:
            from asyncua import Server, ua  # only when asked for
        except ImportError as exc:
            raise EdgeAdError(f"--opcua-port needs asyncua: pip install 'edge-ad[opcua]' ({exc})") from exc
        passwords = {}
        for option, name, variable in (("--opcua-user", user, PASSWORD_VARIABLE),
                                       ("--opcua-reader", reader, READER_PASSWORD_VARIABLE)):
            if name is not None:
                passwords[name] = password_from_environment(option, name, variable)
        # asyncua warns of every client's session timeout, and logs a port in use with a traceback
        # before __init__ says it in a line.
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        self._ua = ua
        self.port, self.url = port, f"opc.tcp://{host}:{port}/edge-ad/"
        self.sources = list(sources)
        self.variants = {name: list(names) for name, names in (variants or {}).items()}
        self.on_variant, self.on_calibrate = on_variant, on_calibrate
        self.user, self.reader = user, reader
        self._plant = _plant_certificate(*certificate) if certificate else None  # (certificate, key, its file)
        self._trust = ClientTrust(trust, certificate_dir() / "rejected") if trust else None
        self._server = Server(user_manager=_Login(passwords) if passwords else None)
        # asyncua refuses connections past its limit; its own 1,000 is about all a service's 1,024
        # file descriptors, which the run needs for its snapshots, events and cameras
        self._server.iserver.max_connections = connection_limit.MAX_CONNECTIONS
        limits = self._server.limits
        limits.max_message_size = MAX_MESSAGE_BYTES
        limits.max_chunk_count = -(-MAX_MESSAGE_BYTES // limits.max_recv_buffer)
        _watch_connections()
        self._nodes: dict[str, tuple] = {}  # "line1.Score" -> its NodeId and VariantType
        self._frames = dict.fromkeys(self.sources, 0)
        self._ready = threading.Event()
        self._failure: Exception | None = None
        self._namespace = 0  # the index of urn:edge-ad, which the server gives
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_S):
            raise EdgeAdError(f"--opcua-port {port}: the OPC UA server did not start in {START_S:.0f} s")
        failure = self._failure
        if isinstance(failure, EdgeAdError):
            raise failure
        if isinstance(failure, OSError):
            raise EdgeAdError(f"--opcua-port {port}: cannot listen ({listen_reason(failure)})") from failure
        if failure is not None:
            raise EdgeAdError(f"--opcua-port {port}: the OPC UA server did not start ({failure!r})") from failure
        log.info("opcua: serving %s: %s", self.url,
                 ", ".join(f"ns={self._namespace};s={slug(name)}" for name in self.sources))

    async def _serve(self) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self._server.init()
            self._server.set_endpoint(self.url)
            self._server.set_server_name("edge-ad")
            if self.user is None:
                self._server.set_security_policy([self._ua.SecurityPolicyType.NoSecurity])
            else:
                await self._secure()
            namespace = self._namespace = await self._server.register_namespace(NAMESPACE)
            top = await self._server.nodes.objects.add_object(self._ua.NodeId("edge-ad", namespace),
                                                              self._ua.QualifiedName("edge-ad", namespace))
            for name in self.sources:
                await self._add_source(top, namespace, name)
            await self._server.start()
        except Exception as exc:  # said by __init__, in the caller's thread
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        recheck = asyncio.create_task(self._close_distrusted()) if self._trust is not None else None
        try:
            await self._stopped.wait()
        finally:
            if recheck is not None:
                recheck.cancel()
            await self._server.stop()

    async def _close_distrusted(self) -> None:
        """Every TRUST_RECHECK_S, close the connection of a client whose certificate is refused now:
        taken out of the trust folder, revoked by a list copied in, or run out. The folder is read at
        each new session otherwise, and a revoked SCADA kept its session until it reconnected.
        A recheck that fails is logged (once for each fault) and made again: had the task ended,
        revoked clients would have kept their sessions for months, and nothing would have said so."""
        failures: set[str] = set()
        while True:
            await asyncio.sleep(TRUST_RECHECK_S)
            try:
                self._close_distrusted_once()
            except Exception as exc:
                if repr(exc) not in failures:
                    failures.add(repr(exc))
                    log.exception("opcua: the open sessions' certificates could not be checked against "
                                  "--opcua-trust %s (%s); tried again every %g s", self._trust.folder, exc,
                                  TRUST_RECHECK_S)

    def _close_distrusted_once(self) -> None:
        from cryptography import x509

        self._trust.load()
        for client in list(getattr(self._server.bserver, "clients", ())):
            der, transport = _peer_certificate(client), getattr(client, "transport", None)
            if der is None or transport is None:
                continue
            refusal = self._trust.refusal_now(x509.load_der_x509_certificate(der), der)
            if refusal is not None:
                peer = getattr(client, "peer_name", None)
                log.warning("opcua: closed the connection of %s: its certificate (SHA-1 %s) %s",
                            peer[0] if peer else "a client", thumbprint(der), refusal)
                transport.close()

    async def _secure(self) -> None:
        """Signed and encrypted messages, a user's login only, with the plant's certificate
        (--opcua-certificate) or this machine's own."""
        certificate, key, shown = self._plant or await self._own_certificate()
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uri = alternative.get_values_for_type(x509.UniformResourceIdentifier)[0]
        except (x509.ExtensionNotFound, IndexError) as exc:
            raise EdgeAdError(f"--opcua-certificate {shown}: names no application URI (a URI in its subjectAltName), "
                              "which OPC UA clients check against the server's") from exc
        der = certificate.public_bytes(serialization.Encoding.DER)
        await self._server.set_application_uri(uri)
        await self._server.load_certificate(der, "der")
        await self._server.load_private_key(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()), None, "pem")
        policy = self._ua.SecurityPolicyType  # the three OPC UA 1.04 asks for; the client picks
        self._server.set_security_policy([policy.Basic256Sha256_SignAndEncrypt,
                                          policy.Aes128Sha256RsaOaep_SignAndEncrypt,
                                          policy.Aes256Sha256RsaPss_SignAndEncrypt],
                                         _read_only_for(self.reader) if self.reader else None)
        self._server.set_identity_tokens([self._ua.UserNameIdentityToken])
        if self._trust is not None:
            self._server.set_certificate_validator(self._trust)
        logins = f"{self.user}'s login" + (f" and {self.reader}'s (reads only)" if self.reader else "")
        log.info("opcua: %s alone, signed and encrypted (Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss); "
                 "certificate %s (%s), SHA-1 %s", logins, shown, uri, thumbprint(der))

    async def _own_certificate(self) -> tuple:
        """This machine's self-signed certificate and key, made at the first start and kept: made
        anew only when it has run out (said), as every client must then be told to trust it again."""
        from asyncua.crypto import uacrypto

        folder = certificate_dir()
        key_file, certificate_file = folder / KEY, folder / CERTIFICATE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if key_file.is_file() and certificate_file.is_file():
                if key_file.stat().st_mode & 0o077:  # as asyncua wrote it before: readable by every user
                    key_file.chmod(0o600)
                    log.warning("opcua: %s was readable by other users; now by its owner only", key_file)
                key = await uacrypto.load_private_key(key_file)
                certificate = await uacrypto.load_certificate(certificate_file)
                left = certificate.not_valid_after_utc - datetime.now(timezone.utc)
                if left > RENEW_NOTICE:
                    return certificate, key, certificate_file
                if left > timedelta(0):
                    log.warning("opcua: the server's certificate %s runs out on %s; to go on, delete it and %s, "
                                "restart and have the clients trust the new one", certificate_file,
                                f"{certificate.not_valid_after_utc:%Y-%m-%d}", key_file.name)
                    return certificate, key, certificate_file
                log.warning("opcua: the server's certificate %s ran out on %s: a new one is made, which the clients "
                            "must be told to trust", certificate_file, f"{certificate.not_valid_after_utc:%Y-%m-%d}")
            return _made_certificate(key_file, certificate_file)
        except OSError as exc:
            raise EdgeAdError(f"--opcua-user: cannot keep the server's certificate in {folder} "
                              f"({os_reason(exc)})") from exc
        except ValueError as exc:  # cryptography's word for a file that is not a key or certificate
            raise EdgeAdError(f"--opcua-user: {folder / KEY} or {folder / CERTIFICATE} does not read (cut short, or "
                              f"not one edge-ad made: {str(exc).split('. ')[0]}); delete both to have new ones made, "
                              "which clients must then be told to trust") from exc

    async def _add_source(self, top, namespace: int, name: str) -> None:
        ua, key = self._ua, slug(name)
        source = await top.add_object(ua.NodeId(key, namespace), ua.QualifiedName(key, namespace))
        variants = self.variants.get(name, [])
        values = {"Frames": (0, ua.VariantType.UInt32), "Anomalous": (False, ua.VariantType.Boolean),
                  "Alarm": (False, ua.VariantType.Boolean), "Score": (0.0, ua.VariantType.Double),
                  "Threshold": (0.0, ua.VariantType.Double), "AnomalousFrames": (0, ua.VariantType.UInt32),
                  "AlarmFrames": (0, ua.VariantType.UInt32), "FrameNumber": (0, ua.VariantType.UInt32),
                  "LastScored": (datetime(1970, 1, 1, tzinfo=timezone.utc), ua.VariantType.DateTime),
                  "Variant": ("", ua.VariantType.String), "Bundle": ("", ua.VariantType.String),
                  "Calibration": ("", ua.VariantType.String), "AlarmLatch": (False, ua.VariantType.Boolean),
                  "Frozen": (False, ua.VariantType.Boolean), "CalibrationState": (0, ua.VariantType.Int32),
                  "CalibrationFrames": (0, ua.VariantType.UInt32)}
        if variants:
            values["LineVariant"] = ("", ua.VariantType.String)
        for variable, (value, kind) in values.items():
            node_id = ua.NodeId(f"{key}.{variable}", namespace)
            node = await source.add_variable(node_id, ua.QualifiedName(variable, namespace), ua.Variant(value, kind))
            if variable == "AlarmLatch":
                await node.set_writable()
            self._nodes[f"{name}.{variable}"] = node_id, kind
        if self.on_calibrate is not None:
            await source.add_method(ua.NodeId(f"{key}.Calibrate", namespace), ua.QualifiedName("Calibrate", namespace),
                                    self._method(f"{name}: Calibrate", ua.VariantType.Boolean,
                                                 lambda start: self._calibrate(name, start)),
                                    [ua.VariantType.Boolean], [])
        if variants and self.on_variant is not None:
            await source.add_method(ua.NodeId(f"{key}.SetVariant", namespace),
                                    ua.QualifiedName("SetVariant", namespace),
                                    self._method(f"{name}: SetVariant", ua.VariantType.String,
                                                 lambda variant: self._set_variant(name, variant)),
                                    [ua.VariantType.String], [])

    def _method(self, what: str, kind, call: Callable[[Any], Any]) -> Callable[..., Any]:
        """Method `what` of one argument of `kind` (a ua.VariantType), handed to `call`, which
        returns None or a StatusCode. asyncua checks neither the count nor the type of what a
        client sends: a Calibrate("false") was taken as true, and started a calibration. Others
        are refused with the Call service's codes (OPC UA Part 4, 5.11.2), and said once per kind
        (a client set up so calls again and again)."""
        ua, said = self._ua, set()

        def refused(problem: str) -> None:
            if problem not in said:
                said.add(problem)
                log.warning("opcua: %s called with %s; refused (said once)", what, problem)

        def method(_parent, *arguments):
            if len(arguments) != 1:
                refused(f"{len(arguments)} arguments, not 1 ({kind.name})")
                return ua.StatusCode(ua.StatusCodes.BadTooManyArguments if arguments else
                                     ua.StatusCodes.BadArgumentsMissing)
            (argument,) = arguments
            if argument.VariantType != kind or argument.is_array:
                refused(f"{'an array of' if argument.is_array else 'a value of type'} {argument.VariantType.name}, "
                        f"not a {kind.name}")
                return ua.CallMethodResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadInvalidArgument),
                                           InputArgumentResults=[ua.StatusCode(ua.StatusCodes.BadTypeMismatch)])
            outcome = call(argument.Value)
            return [] if outcome is None else outcome

        return method

    def _calibrate(self, source: str, start: bool) -> None:
        log.info("opcua: a client asks to %s %s on its next frames", "calibrate" if start else "stop calibrating",
                 source)
        self.on_calibrate(source, bool(start))

    def _set_variant(self, source: str, variant: str):
        """None, or a StatusCode for a name that is none of the source's variants."""
        names = self.variants[source]
        if variant and variant not in names:
            log.warning("opcua: SetVariant(%s) for %s, which has the variants %s", client_text(variant), source,
                        ", ".join(names))
            return self._ua.StatusCode(self._ua.StatusCodes.BadInvalidArgument)
        log.info("opcua: a client says %s makes %s", source, variant or "any variant (all bundles score)")
        self._write(source, {"LineVariant": variant})
        self.on_variant(source, variant or None)
        return None

    def update(self, source: str, frame: int, score: float, threshold: float, anomaly: bool, alarm: bool,
               variant: str | None, anomalies: int, alarms: int, judged_by: tuple[str, str | None] | None = None
               ) -> None:
        """A scored frame of `source`, as ModbusServer.update takes it; an alarm sets its latch."""
        bundle_id, calibration_id = judged_by or ("", None)
        now = datetime.now(timezone.utc)
        values = {"Anomalous": anomaly, "Alarm": alarm, "Score": float(score), "Threshold": float(threshold),
                  "AnomalousFrames": anomalies % WRAP, "AlarmFrames": alarms % WRAP, "FrameNumber": frame % WRAP,
                  "LastScored": now, "Variant": variant or "", "Bundle": bundle_id, "Calibration": calibration_id or ""}
        if alarm:
            values["AlarmLatch"] = True
        self._frames[source] = (self._frames[source] + 1) % WRAP
        self._write(source, {"Frames": self._frames[source], **values}, now)

    def set_calibration(self, source: str, state: int, frames: int) -> None:
        self._write(source, {"CalibrationState": state, "CalibrationFrames": frames % WRAP})

    def set_frozen(self, source: str, frozen: bool) -> None:
        self._write(source, {"Frozen": frozen})

    def _write(self, source: str, values: dict, now: datetime | None = None) -> None:
        """Hands `values` (variable name -> value) of `source`, stamped `now` (default: now), to the
        server's loop, without waiting: the sinks thread goes on to the next frame."""
        written = self._written(source, values, now or datetime.now(timezone.utc))
        try:
            asyncio.run_coroutine_threadsafe(written, self._loop)
        except RuntimeError:  # the server has stopped (the run ends)
            written.close()

    async def _written(self, source: str, values: dict, now: datetime) -> None:
        for variable, value in values.items():
            node_id, kind = self._nodes[f"{source}.{variable}"]
            await self._server.write_attribute_value(
                node_id, self._ua.DataValue(self._ua.Variant(value, kind), SourceTimestamp=now, ServerTimestamp=now))

    def close(self) -> None:
        """Stop serving: clients' sessions end."""
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:  # the loop ended between the check and the call
                pass
        self._thread.join(timeout=5.0)


def _watch_connections() -> None:
    """Makes asyncua's server say the connections it refuses past its limit, as the run's other
    servers do (asyncua's own warning is muted with its other messages), and close a connection
    as soon as the header of a message chunk says it is larger than the server's receive buffer,
    answering Bad_TcpMessageTooLarge (OPC UA Part 6, 7.1.2.4): asyncua 2.1 gathered a chunk whole
    whatever size its header said, copying what it had at every read, so that a client sending a
    header of 2 GB and then bytes held a core and 200 MB until the session watchdog closed it 30 s
    later; four such slowed the run from 30 frames a second to 5. asyncua makes its protocol by
    this module-level name, so the class is replaced there, once (its server is the run's only
    one). What it reads of asyncua's protocol is read with getattr: should a later asyncua name
    them otherwise, this goes undone, and its tests fail, rather than every connection."""
    from asyncua import ua
    from asyncua.server import binary_server_asyncio
    from asyncua.ua.ua_binary import uatcp_to_binary

    if getattr(binary_server_asyncio.OPCUAProtocol, "watched", False):
        return
    refusals = connection_limit.RefusedConnections("the OPC UA server")
    closed, report_due = 0, ReportDue()

    class Watched(binary_server_asyncio.OPCUAProtocol):
        watched = True

        def connection_made(self, transport) -> None:
            most = getattr(getattr(self, "iserver", None), "max_connections", None)
            if most is not None and len(getattr(self, "clients", ())) >= most:  # asyncua closes it
                peer = transport.get_extra_info("peername")
                refusals.refused(peer[0] if peer else "a client", most)
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            nonlocal closed
            super().data_received(data)
            waiting = getattr(self, "_buffer", b"")  # a chunk not yet whole
            transport, limits = getattr(self, "transport", None), getattr(self, "limits", None)
            if len(waiting) < 8 or limits is None or transport is None or transport.is_closing():
                return
            size, most = int.from_bytes(waiting[4:8], "little"), limits.max_recv_buffer
            if size <= most:
                return
            self._buffer = b""
            error = ua.ErrorMessage(ua.StatusCode(ua.StatusCodes.BadTcpMessageTooLarge),
                                    f"a message chunk of {size} bytes; the server receives at most {most}")
            transport.write(uatcp_to_binary(ua.MessageType.Error, error))
            transport.close()
            closed += 1
            if report_due():
                peer = getattr(self, "peer_name", None)
                log.warning("opcua: closed the connection of %s: it sent a message chunk of %d bytes, and the "
                            "server receives at most %d (connections closed for a chunk too large since the run "
                            "started: %d)", peer[0] if peer else "a client", size, most, closed)

    binary_server_asyncio.OPCUAProtocol = Watched


def _made_certificate(key_file: Path, certificate_file: Path) -> tuple:
    """A new RSA key (readable by its owner only) and a certificate for it, self-signed for
    OWN_CERTIFICATE_DAYS, application URI urn:edge-ad:HOSTNAME; both written, the key first."""
    from asyncua.crypto.cert_gen import (dump_private_key_as_pem, generate_private_key,
                                         generate_self_signed_app_certificate)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    host = socket.gethostname()
    uri = f"urn:edge-ad:{host}"
    key = generate_private_key()
    certificate = generate_self_signed_app_certificate(
        key, uri, {"commonName": f"edge-ad {host}"}, [x509.UniformResourceIdentifier(uri), x509.DNSName(host)],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH], days=OWN_CERTIFICATE_DAYS)
    written = key_file.with_name(key_file.name + ".new")
    with open(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(dump_private_key_as_pem(key))
    os.replace(written, key_file)
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    return certificate, key, certificate_file


def _peer_certificate(client) -> bytes | None:
    """The certificate (DER) a connected client signs its messages with (asyncua's connection:
    none before its secure channel opens, or on a channel without security, as a client asking
    for the endpoints opens, where asyncua keeps b""; none either from an asyncua that keeps it
    elsewhere, which leaves the sessions to their next connection)."""
    connection = getattr(getattr(client, "processor", None), "_connection", None)
    return getattr(getattr(connection, "security_policy", None), "peer_certificate", None) or None


def certificate_dir() -> Path:
    """Where the server's certificate and key are kept, in the state folder (files.state_folder):
    clients would have to trust a new certificate."""
    return state_folder() / "opcua"


def _plant_certificate(certificate_path: Path, key_path: Path) -> tuple:
    """The plant's certificate and its key (PEM or DER, told apart by their content); refused by
    file when one does not read, the key is encrypted, or it is not the certificate's key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    read = {}
    for option, path in (("--opcua-certificate", certificate_path), ("--opcua-key", key_path)):
        try:
            if option == "--opcua-certificate":
                read[option] = read_certificates(path)[0]  # the server's; a chain after it is not served
            else:
                data = path.read_bytes()
                pem = data.lstrip().startswith(b"-----BEGIN")
                load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
                read[option] = load(data, password=None)
        except OSError as exc:
            raise EdgeAdError(f"{option} {path}: cannot read it ({os_reason(exc)})") from exc
        except TypeError as exc:  # a key that needs a password
            raise EdgeAdError(f"{option} {path}: the key is encrypted; give it unencrypted, readable by the run's "
                              "user only") from exc
        except ValueError as exc:
            what = "certificate" if option == "--opcua-certificate" else "private key"
            raise EdgeAdError(f"{option} {path}: not a {what} in PEM or DER ({str(exc).split('. ')[0]})") from exc
    certificate, key = read["--opcua-certificate"], read["--opcua-key"]
    if not isinstance(key, rsa.RSAPrivateKey):
        raise EdgeAdError(f"--opcua-key {key_path}: OPC UA's security policies take an RSA key, not "
                          f"{type(key).__name__}")
    public = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise EdgeAdError(f"--opcua-key {key_path}: not the key of --opcua-certificate {certificate_path}")
    return certificate, key, certificate_path


class _Login:
    """asyncua's user manager for the users and passwords given: a session of anyone else is refused,
    and after wrong logins in a row as one user (every unknown one counting as one), that user's
    for a while (edge_ad.login_attempts); sessions already open go on."""

    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.attempts = LoginAttempts("opcua", who="as {}")

    def get_user(self, iserver, username: str | None = None, password: str | None = None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        known = self.passwords.get(username or "")
        who = repr(username) if known is not None else "an unknown user"
        if self.attempts.refused_for(who):
            return None
        if known is not None and password is not None and hmac.compare_digest(password.encode(), known.encode()):
            self.attempts.succeeded(who)
            return User(role=UserRole.User, name=username)
        self.attempts.failed(who)
        return None


def _read_only_for(reader: str):
    """asyncua's ruleset of what each user may ask, with `reader`'s writes and method calls refused
    (BadUserAccessDenied): it reads, browses and subscribes."""
    from asyncua import ua
    from asyncua.crypto.permission_rules import SimpleRoleRuleset

    class ReadOnly(SimpleRoleRuleset):
        changes = {ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary): "write",
                   ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary): "method call"}
        def __init__(self) -> None:
            super().__init__()
            self.said: set[str] = set()  # a client set to write each cycle would log a line a cycle: each kind once

        def check_validity(self, user, action_type_id, body) -> bool:
            if user is not None and user.name == reader and action_type_id in self.changes:
                kind = self.changes[action_type_id]
                if kind not in self.said:
                    self.said.add(kind)
                    log.warning("opcua: %s reads only: its %s was refused", reader, kind)
                return False
            return super().check_validity(user, action_type_id, body)

    return ReadOnly()
