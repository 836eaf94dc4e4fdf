"""--opcua-port: each source's last result as OPC UA variables, read, acknowledged and told the
line's variant by asyncua's client, as a SCADA system or a PLC's OPC UA client would."""

import asyncio
import hashlib
import json
import logging
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

asyncua = pytest.importorskip("asyncua")  # the [opcua] extra, which the Makefile installs
from asyncua import ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from asyncua.crypto.security_policies import (  # noqa: E402
    SecurityPolicyAes128Sha256RsaOaep, SecurityPolicyAes256Sha256RsaPss, SecurityPolicyBasic256Sha256)
from asyncua.sync import Client  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

from edge_ad.errors import EdgeAdError  # noqa: E402
from edge_ad import opcua_trust  # noqa: E402
from edge_ad.opcua import MAX_MESSAGE_BYTES, NAMESPACE, OpcUaServer  # noqa: E402
from edge_ad.sinks import slug  # noqa: E402

from conftest import SPOT_PATTERN, edge_ad, free_port, wait_for  # noqa: E402


def _values(client: Client, source: str, *names: str) -> dict:
    """The variables `names` of `source` (its node id), read in one request: one frame's values."""
    ns = client.get_namespace_index(NAMESPACE)
    nodes = [client.get_node(f"ns={ns};s={source}.{name}") for name in names]
    return dict(zip(names, client.read_values(nodes)))


def _self_signed(folder, uri: str) -> tuple:
    """The key and certificate files in `folder` of a client of application `uri`, made (self-signed,
    as SCADA systems make theirs) unless there."""
    key, certificate = folder / "client-key.pem", folder / "client-certificate.der"
    name = uri.rpartition(":")[2]
    asyncio.run(setup_self_signed_certificate(key, certificate, uri, name, [ExtendedKeyUsageOID.CLIENT_AUTH],
                                              {"commonName": name}))
    return key, certificate


def _secure_client(port: int, folder, user: str | None, password: str | None, uri: str = "urn:scada",
                   policy=SecurityPolicyBasic256Sha256) -> Client:
    """A client as plants set them: signed and encrypted (Basic256Sha256 unless `policy`), with its
    own certificate (self-signed for application `uri`, made unless `folder` holds one)."""
    key, certificate = _self_signed(folder, uri)
    client = Client(f"opc.tcp://127.0.0.1:{port}/edge-ad/", timeout=10)
    client.application_uri = uri  # as its certificate names it, which OPC UA asks of a client
    client.set_security(policy, str(certificate), str(key),
                        mode=ua.MessageSecurityMode.SignAndEncrypt)
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    return client

@pytest.fixture
def server():
    """Two sources, the second with two variants; what clients ask for, in `server.asked`."""
    asked = []
    served = OpcUaServer(free_port(), ["rtsp://10.0.0.5/cam", "line2"], {"line2": ["mono", "poly"]},
                         on_variant=lambda *told: asked.append(("variant", *told)),
                         on_calibrate=lambda *told: asked.append(("calibrate", *told)))
    served.asked = asked
    yield served
    served.close()


def test_clients_read_each_sources_last_frame_and_acknowledge_its_alarm(server):
    server.update("rtsp://10.0.0.5/cam", 41, 0.25, 0.5, False, False, None, 0, 0, ("0123456789ab", None))
    server.update("rtsp://10.0.0.5/cam", 42, 0.75, 0.5, True, True, None, 1, 1, ("0123456789ab", "fedcba987654"))
    server.update("line2", 7, 0.1, 0.4, False, False, "poly", 0, 0, ("aaaaaaaaaaaa", None))
    server.set_frozen("line2", True)
    server.set_calibration("line2", 1, 250)
    with Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/") as client:
        cam = "rtsp-10-0-0-5-cam"  # as MQTT topics spell the source
        assert wait_for(lambda: _values(client, cam, "Frames")["Frames"] == 2)
        values = _values(client, cam, "Frames", "Anomalous", "Alarm", "Score", "Threshold", "AnomalousFrames",
                         "AlarmFrames", "FrameNumber", "Variant", "Bundle", "Calibration", "AlarmLatch", "Frozen",
                         "LastScored")
        scored = values.pop("LastScored")
        assert values == {"Frames": 2, "Anomalous": True, "Alarm": True, "Score": 0.75, "Threshold": 0.5,
                          "AnomalousFrames": 1, "AlarmFrames": 1, "FrameNumber": 42, "Variant": "",
                          "Bundle": "0123456789ab", "Calibration": "fedcba987654", "AlarmLatch": True, "Frozen": False}
        assert abs(scored.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)) < timedelta(seconds=10)
        assert wait_for(lambda: _values(client, "line2", "Frozen")["Frozen"])
        assert _values(client, "line2", "Variant", "CalibrationState", "CalibrationFrames", "AlarmLatch") == \
            {"Variant": "poly", "CalibrationState": 1, "CalibrationFrames": 250, "AlarmLatch": False}
        ns = client.get_namespace_index(NAMESPACE)
        latch = client.get_node(f"ns={ns};s={cam}.AlarmLatch")
        latch.write_value(False)  # acknowledged: stays so over normal frames, until the next alarm
        server.update("rtsp://10.0.0.5/cam", 43, 0.2, 0.5, False, False, None, 1, 1, ("0123456789ab", None))
        assert wait_for(lambda: _values(client, cam, "Frames")["Frames"] == 3)
        assert latch.read_value() is False
        server.update("rtsp://10.0.0.5/cam", 44, 0.9, 0.5, True, True, None, 2, 2, ("0123456789ab", None))
        assert wait_for(lambda: latch.read_value() is True)
        with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):  # the run's own values
            client.get_node(f"ns={ns};s={cam}.Score").write_value(ua.Variant(0.0, ua.VariantType.Double))
        with pytest.raises(ua.UaStatusCodeError, match="BadTypeMismatch"):
            latch.write_value(ua.Variant(0, ua.VariantType.Int32))


def test_a_subscribed_client_is_told_each_change_without_polling(server):
    """SCADA systems subscribe rather than poll: the server sends each change it is handed."""
    told = []

    class Handler:
        def datachange_notification(self, node, value, data) -> None:
            told.append(value)

    with Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/") as client:
        ns = client.get_namespace_index(NAMESPACE)
        subscription = client.create_subscription(50, Handler())
        subscription.subscribe_data_change(client.get_node(f"ns={ns};s=line2.FrameNumber"))
        assert wait_for(lambda: told == [0])  # the value at the start
        for frame in (1, 2, 3):  # each told before the next, so none is merged into one publication
            server.update("line2", frame, 0.1, 0.4, False, False, "mono", 0, 0, None)
            assert wait_for(lambda: told[-1] == frame)
        assert told == [0, 1, 2, 3]
        subscription.delete()


def test_a_client_tells_the_variant_and_asks_a_calibration(server):
    with Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/") as client:
        ns = client.get_namespace_index(NAMESPACE)
        line2 = client.get_node(f"ns={ns};s=line2")
        line2.call_method(f"{ns}:SetVariant", "mono")
        line2.call_method(f"{ns}:Calibrate", True)
        line2.call_method(f"{ns}:SetVariant", "")  # any: every bundle scores
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
            line2.call_method(f"{ns}:SetVariant", "glass")
        assert wait_for(lambda: _values(client, "line2", "LineVariant")["LineVariant"] == "")
        cam = client.get_node(f"ns={ns};s=rtsp-10-0-0-5-cam")
        cam.call_method(f"{ns}:Calibrate", False)
        with pytest.raises(ua.UaStatusCodeError):  # one bundle: nothing to choose
            cam.call_method(f"{ns}:SetVariant", "mono")
    assert server.asked == [("variant", "line2", "mono"), ("calibrate", "line2", True), ("variant", "line2", None),
                            ("calibrate", "rtsp://10.0.0.5/cam", False)]


def test_a_method_called_with_arguments_of_another_kind_is_refused_not_taken_for_true(server, caplog):
    """asyncua passes on whatever a client sends: Calibrate("false") started a calibration (a
    non-empty string is true), SetVariant(0) said "any variant". Each is refused with the Call
    service's codes, and the log says it once per kind, for the one who set up the client."""
    before = list(server.asked)
    with caplog.at_level(logging.WARNING, logger="edge_ad.opcua"), \
            Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/") as client:
        ns = client.get_namespace_index(NAMESPACE)
        line2 = client.get_node(f"ns={ns};s=line2")
        for _ in range(2):
            with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
                line2.call_method(f"{ns}:Calibrate", ua.Variant("false", ua.VariantType.String))
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
            line2.call_method(f"{ns}:SetVariant", ua.Variant(0, ua.VariantType.Int32))
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
            line2.call_method(f"{ns}:SetVariant", ua.Variant(["mono"], ua.VariantType.String))
        with pytest.raises(ua.UaStatusCodeError, match="BadArgumentsMissing"):
            line2.call_method(f"{ns}:Calibrate")
        with pytest.raises(ua.UaStatusCodeError, match="BadTooManyArguments"):
            line2.call_method(f"{ns}:Calibrate", True, True)
        line2.call_method(f"{ns}:Calibrate", False)  # a Boolean is taken
    assert server.asked == [*before, ("calibrate", "line2", False)]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "opcua: line2: Calibrate called with a value of type String, not a Boolean; refused (said once)",
        "opcua: line2: SetVariant called with a value of type Int32, not a String; refused (said once)",
        "opcua: line2: SetVariant called with an array of String, not a String; refused (said once)",
        "opcua: line2: Calibrate called with 0 arguments, not 1 (Boolean); refused (said once)",
        "opcua: line2: Calibrate called with 2 arguments, not 1 (Boolean); refused (said once)"]


def test_a_port_that_is_taken_is_refused_by_name_and_a_closed_server_ends_sessions(server):
    with pytest.raises(EdgeAdError, match=rf"--opcua-port {server.port}: cannot listen \(address already in use\)"):
        OpcUaServer(server.port, ["other"])
    client = Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/", timeout=5)
    client.connect()
    try:
        assert _values(client, "line2", "Frames") == {"Frames": 0}
        server.close()
        server.update("line2", 1, 0.1, 0.4, False, False, "mono", 0, 0, None)  # a frame after: nothing to serve it
        with pytest.raises((OSError, ua.UaError)):
            _values(client, "line2", "Frames")
    finally:
        client.disconnect()


def test_a_flood_of_connections_leaves_the_run_its_file_descriptors(monkeypatch, caplog):
    """asyncua's own limit, 1,000 connections, is about all of a service's 1,024 file
    descriptors: past the run's, a new connection is closed as it is accepted, and said (before,
    not: asyncua's own warning is muted with its other messages)."""
    from edge_ad import connection_limit

    monkeypatch.setattr(connection_limit, "MAX_CONNECTIONS", 2)
    served = OpcUaServer(free_port(), ["line1"])
    try:
        held = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(2)]
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as refused:
            assert refused.recv(16) == b""
        assert "the OPC UA server: 2 connections open, the most there may be: closed a new one from 127.0.0.1 " \
               "(1 refused since the run started" in caplog.text
        held.pop().close()
        client = Client(f"opc.tcp://127.0.0.1:{served.port}/edge-ad/", timeout=5)
        assert wait_for(lambda: _connects(client), 5)  # one that ends makes room
        client.disconnect()
        for connection in held:
            connection.close()
    finally:
        served.close()


def _hello(port: int) -> bytes:
    """The Hello an OPC UA client opens its connection with (Part 6, 7.1.2.3), setting no limit on
    the size of a message."""
    url = f"opc.tcp://127.0.0.1:{port}/edge-ad/".encode()
    body = struct.pack("<5I", 0, 65535, 65535, 0, 0) + struct.pack("<i", len(url)) + url
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


def test_a_message_larger_than_the_server_receives_closes_its_connection_at_once(server, caplog):
    """asyncua gathered a chunk of whatever size its header said, copying what it had at every
    read: a client sending a header of 2 GB and then bytes held a core and 200 MB for 30 s, and
    four such slowed the run from 30 frames a second to 5."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(_hello(server.port))
        acknowledged = connection.recv(64)
        assert acknowledged[:4] == b"ACKF"
        assert struct.unpack("<5I", acknowledged[8:28])[3] == MAX_MESSAGE_BYTES  # the most a message may hold
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(b"HELF" + struct.pack("<I", 2**31 - 1))  # the header alone: nothing left unread, no reset
        answer = b"".join(iter(lambda: connection.recv(4096), b""))  # to its end (the old server never answered)
    assert answer[:4] == b"ERRF" and struct.unpack("<I", answer[8:12])[0] == ua.StatusCodes.BadTcpMessageTooLarge
    assert "it sent a message chunk of 2147483647 bytes, and the server receives at most 65535" in caplog.text
    client = Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/", timeout=5)
    client.connect()
    try:
        assert _values(client, "line2", "Frames") == {"Frames": 0}  # others are served as before
    finally:
        client.disconnect()


def _connects(client: Client) -> bool:
    try:
        client.connect()
    except (OSError, ConnectionError, asyncio.TimeoutError, ua.UaError):
        return False
    return True


def test_a_client_reads_what_the_run_scored(spotted_frames, tiny_bundle, tmp_path):
    """`edge-ad run --opcua-port`, a folder of real cells with a spot in some, played in a loop:
    the variables a client reads in one request are those of the frame they name, as the events
    file has it, and SIGTERM ends the run and the client's session."""
    port, events = free_port(), tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle), "--input", str(spotted_frames),
         "--input-loop", "-1", "--alarm-frames", "2", "--events", str(events), "--opcua-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    source = slug(str(spotted_frames))  # the node id of the folder's source
    try:
        client = Client(f"opc.tcp://127.0.0.1:{port}/edge-ad/", timeout=10)
        deadline = time.monotonic() + 90
        while True:  # the server starts as the run does: asyncua builds its address space first
            try:
                client.connect()
                break
            except OSError:  # refused, or no answer in time (TimeoutError)
                assert time.monotonic() < deadline, "the OPC UA server did not start in 90 s"
                time.sleep(0.2)
        names = ("Frames", "FrameNumber", "Score", "Threshold", "Anomalous", "Alarm", "AnomalousFrames",
                 "AlarmFrames", "Bundle", "AlarmLatch")
        assert wait_for(lambda: _values(client, source, "Frames")["Frames"] >= 2 * len(SPOT_PATTERN), 60)
        values = _values(client, source, *names)
        client.disconnect()
        frame = values["FrameNumber"]
        deadline = time.monotonic() + 30
        while not any(json.loads(line).get("frame", -1) >= frame for line in events.read_text().splitlines()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        upto = [e for e in map(json.loads, events.read_text().split("\n")[:-1])
                if e["event"] == "frame" and e["frame"] <= frame]
        event = upto[-1]
        assert event["frame"] == frame and values["Frames"] == len(upto)
        assert (values["Score"], values["Threshold"]) == (pytest.approx(event["score"]),
                                                          pytest.approx(event["threshold"]))
        assert (values["Anomalous"], values["Alarm"]) == (event["anomaly"], event["alarm"])
        assert values["AnomalousFrames"] == sum(e["anomaly"] for e in upto)
        assert values["AlarmFrames"] == sum(e["alarm"] for e in upto) >= 3  # three alarm frames per pass
        assert values["AlarmLatch"] is True and values["Bundle"] == event["bundle"][:12]
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0, log
    assert f"opcua: serving opc.tcp://0.0.0.0:{port}/edge-ad/: ns=2;s={source}" in log


def test_without_asyncua_the_option_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncua", None)  # as on a device installed without the [opcua] extra
    with pytest.raises(EdgeAdError, match=r"--opcua-port needs asyncua: pip install 'edge-ad\[opcua\]'"):
        OpcUaServer(free_port(), ["line1"])


def test_with_a_user_only_its_login_over_encrypted_messages_is_served(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))  # as systemd's StateDirectory= sets it
    monkeypatch.delenv("EDGE_AD_OPCUA_PASSWORD", raising=False)
    with pytest.raises(EdgeAdError, match="--opcua-user scada: set the user's password in the environment variable "
                                          "EDGE_AD_OPCUA_PASSWORD"):
        OpcUaServer(free_port(), ["line1"], user="scada")
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "line 7, not 8")
    server = OpcUaServer(free_port(), ["line1"], user="scada")
    try:
        server.update("line1", 9, 0.8, 0.5, True, True, None, 1, 1, None)
        with _secure_client(server.port, tmp_path, "scada", "line 7, not 8") as client:
            assert wait_for(lambda: _values(client, "line1", "Score")["Score"] == 0.8)
            client.get_node("ns=2;s=line1.AlarmLatch").write_value(False)  # the user may acknowledge
            assert wait_for(lambda: _values(client, "line1", "AlarmLatch")["AlarmLatch"] is False)
        for policy in (SecurityPolicyAes128Sha256RsaOaep, SecurityPolicyAes256Sha256RsaPss):  # newer clients' choice
            with _secure_client(server.port, tmp_path, "scada", "line 7, not 8", policy=policy) as client:
                assert _values(client, "line1", "Score") == {"Score": 0.8}
        for user, password, refused in (("scada", "line 8", "BadUserAccessDenied"), ("mes", "line 7, not 8",
                                        "BadUserAccessDenied"), (None, None, "BadIdentityTokenRejected")):
            with pytest.raises(ua.UaStatusCodeError, match=refused):
                with _secure_client(server.port, tmp_path, user, password):
                    pass
        with pytest.raises(ua.UaError, match="No matching endpoints"):  # nothing unencrypted is offered
            with Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/", timeout=10):
                pass
    finally:
        server.close()
    # The certificate clients were told to trust is kept: the next start serves the same one.
    certificate = tmp_path / "state" / "opcua" / "server-certificate.der"
    first = certificate.read_bytes()
    OpcUaServer(free_port(), ["line1"], user="scada").close()
    assert certificate.read_bytes() == first
    key = certificate.with_name("server-key.pem")
    key.write_bytes(key.read_bytes()[:100])  # a disk error, a copy cut short: said, not made anew behind clients
    with pytest.raises(EdgeAdError, match=f"--opcua-user: {key} or {certificate} does not read .*; delete both to "
                                          "have new ones made, which clients must then be told to trust"):
        OpcUaServer(free_port(), ["line1"], user="scada")
    assert certificate.read_bytes() == first


def test_wrong_logins_as_a_user_shut_new_logins_as_it_out_for_a_while(tmp_path, monkeypatch, caplog):
    """A password could be guessed at the network's speed: after wrong logins in a row as one user,
    that user's logins are refused for a while, the right one too; a session open goes on, and
    wrong names count as one user, so that guessing names is limited too."""
    from edge_ad import login_attempts

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "line 7, not 8")
    monkeypatch.setattr(login_attempts, "MAX_FAILURES", 2)
    monkeypatch.setattr(login_attempts, "LOCKOUT_S", 6.0)  # longer than a login takes on a loaded machine
    server = OpcUaServer(free_port(), ["line1"], user="scada")
    server.update("line1", 9, 0.8, 0.5, True, True, None, 1, 1, None)

    def login(user: str, password: str) -> None:
        with _secure_client(server.port, tmp_path, user, password) as client:
            assert _values(client, "line1", "Score") == {"Score": 0.8}

    try:
        with caplog.at_level("WARNING", logger="edge_ad.login_attempts"), \
                _secure_client(server.port, tmp_path, "scada", "line 7, not 8") as open_session:
            for user, password in (("scada", "guess"), ("scada", "guess"), ("scada", "line 7, not 8"),
                                   ("mes", "guess"), ("historian", "guess"), ("root", "line 7, not 8")):
                with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                    login(user, password)
            assert _values(open_session, "line1", "Score") == {"Score": 0.8}
            time.sleep(6.0)
            login("scada", "line 7, not 8")
    finally:
        server.close()
    for said in ("opcua: a wrong user or password as 'scada'", "opcua: 2 wrong logins in a row as 'scada': refused "
                 "for 6 s", "opcua: a wrong user or password as an unknown user", "opcua: 2 wrong logins in a row "
                 "as an unknown user: refused for 6 s"):
        assert caplog.text.count(said) == 1


def _certificate_until(key_file, certificate_file, until: datetime) -> None:
    """`certificate_file` written over with one for the same key and URI that runs out at `until`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    old = x509.load_der_x509_certificate(certificate_file.read_bytes())
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(until - timedelta(days=365)).not_valid_after(until))
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    certificate_file.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def test_doctor_tells_when_the_servers_certificate_runs_out_and_which_cameras_were_refused(tmp_path, monkeypatch):
    """A run says the server's certificate runs out at its start only: a service started a year
    ago says it no more, and every client would lose the connection on the day."""
    from edge_ad.doctor import doctor
    from edge_ad.opcua_trust import thumbprint

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "pw")
    OpcUaServer(free_port(), ["line1"], user="scada").close()
    folder = tmp_path / "state" / "opcua"
    key, certificate = folder / "server-key.pem", folder / "server-certificate.der"
    report = doctor()
    (state,) = [line for line in report.lines if line.startswith("state")]
    assert f"{tmp_path / 'state'}: OPC UA certificate SHA-1 {thumbprint(certificate.read_bytes())}, until " \
           f"{datetime.now(timezone.utc) + timedelta(days=3650):%Y}" in state
    assert not any("the OPC UA server's certificate" in problem for problem in report.problems)
    soon = datetime.now(timezone.utc) + timedelta(days=20)
    _certificate_until(key, certificate, soon)
    (tmp_path / "state" / "cameras").mkdir()
    (tmp_path / "state" / "cameras" / "10.0.7.21-443.pem").write_text("kept by a run")
    report = doctor()
    assert f"the OPC UA server's certificate {certificate} runs out on {soon:%Y-%m-%d}" in "\n".join(report.problems)
    assert any(line.endswith("1 camera certificate(s) refused, in cameras/: 10.0.7.21-443") for line in report.lines)


def test_the_servers_own_certificate_lasts_ten_years_and_is_made_anew_only_when_run_out(tmp_path, monkeypatch,
                                                                                         caplog):
    from cryptography import x509

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "pw")
    OpcUaServer(free_port(), ["line1"], user="scada").close()
    folder = tmp_path / "state" / "opcua"
    key, certificate = folder / "server-key.pem", folder / "server-certificate.der"
    assert key.stat().st_mode & 0o777 == 0o600  # the server's secret: no other user reads it
    made = x509.load_der_x509_certificate(certificate.read_bytes())
    assert made.not_valid_after_utc - made.not_valid_before_utc >= timedelta(days=3649)
    key.chmod(0o644)  # as edge-ad before this kept it
    soon = datetime.now(timezone.utc) + timedelta(days=20)
    _certificate_until(key, certificate, soon)
    kept = certificate.read_bytes()
    with caplog.at_level("WARNING", logger="edge_ad.opcua"):
        OpcUaServer(free_port(), ["line1"], user="scada").close()
        assert certificate.read_bytes() == kept  # still valid: the clients trust it
        assert key.stat().st_mode & 0o777 == 0o600
        _certificate_until(key, certificate, datetime.now(timezone.utc) - timedelta(days=1))
        OpcUaServer(free_port(), ["line1"], user="scada").close()
    said = [record.getMessage() for record in caplog.records]
    assert f"opcua: {key} was readable by other users; now by its owner only" in said
    assert f"opcua: the server's certificate {certificate} runs out on {soon:%Y-%m-%d}; to go on, delete it and " \
           "server-key.pem, restart and have the clients trust the new one" in said
    assert any(line.startswith(f"opcua: the server's certificate {certificate} ran out on ") and
               line.endswith(": a new one is made, which the clients must be told to trust") for line in said)
    renewed = x509.load_der_x509_certificate(certificate.read_bytes())
    assert renewed.not_valid_after_utc > datetime.now(timezone.utc) + timedelta(days=3600)


def test_the_plants_certificate_is_served_when_given(tmp_path, monkeypatch):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "pw")
    key, der = tmp_path / "line7-key.pem", tmp_path / "line7.der"  # as the plant's certificate authority issues
    asyncio.run(setup_self_signed_certificate(key, der, "urn:plant:line7", "edge7", [ExtendedKeyUsageOID.SERVER_AUTH],
                                              {"commonName": "edge7"}))
    pem = tmp_path / "line7.crt"  # PEM under a name that does not say so
    pem.write_bytes(x509.load_der_x509_certificate(der.read_bytes()).public_bytes(serialization.Encoding.PEM))
    server = OpcUaServer(free_port(), ["line1"], user="scada", certificate=(pem, key))
    try:
        with _secure_client(server.port, tmp_path, "scada", "pw") as client:
            assert _values(client, "line1", "Frames") == {"Frames": 0}
            endpoint = client.get_endpoints()[0]
        assert endpoint.ServerCertificate == der.read_bytes() and endpoint.Server.ApplicationUri == "urn:plant:line7"
    finally:
        server.close()
    assert not (tmp_path / "state" / "opcua").exists()  # none of its own made
    other_key, other = tmp_path / "other-key.pem", tmp_path / "other.der"
    asyncio.run(setup_self_signed_certificate(other_key, other, "urn:other", "other", [ExtendedKeyUsageOID.SERVER_AUTH],
                                              {"commonName": "other"}))
    locked = tmp_path / "locked-key.pem"
    locked.write_bytes(serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"x")))
    plain = tmp_path / "no-uri.pem"  # a web server's kind of certificate: no application URI
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "edge7")])
    plain.write_bytes(x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                      .serial_number(1).not_valid_before(datetime(2026, 1, 1)).not_valid_after(datetime(2036, 1, 1))
                      .sign(private, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    for certificate, its_key, said in (
            (plain, key, f"--opcua-certificate {plain}: names no application URI"),
            (pem, other_key, f"--opcua-key {other_key}: not the key of --opcua-certificate {pem}"),
            (key, key, f"--opcua-certificate {key}: not a certificate in PEM or DER"),
            (pem, locked, f"--opcua-key {locked}: the key is encrypted; give it unencrypted"),
            (tmp_path / "none.crt", key, f"--opcua-certificate {tmp_path / 'none.crt'}: cannot read it")):
        with pytest.raises(EdgeAdError, match=said):
            OpcUaServer(free_port(), ["line1"], user="scada", certificate=(certificate, its_key))

def test_a_reader_reads_but_may_not_acknowledge_or_call_methods(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "hmi pw")
    monkeypatch.delenv("EDGE_AD_OPCUA_READER_PASSWORD", raising=False)
    with pytest.raises(EdgeAdError, match="--opcua-reader historian: set the user's password in the environment "
                                          "variable EDGE_AD_OPCUA_READER_PASSWORD"):
        OpcUaServer(free_port(), ["line1"], user="hmi", reader="historian")
    monkeypatch.setenv("EDGE_AD_OPCUA_READER_PASSWORD", "historian pw")
    asked = []
    server = OpcUaServer(free_port(), ["line1"], {"line1": ["mono", "poly"]}, user="hmi", reader="historian",
                         on_calibrate=lambda *told: asked.append(told))
    try:
        server.update("line1", 9, 0.8, 0.5, True, True, None, 1, 1, None)
        with _secure_client(server.port, tmp_path, "historian", "historian pw") as client:
            assert wait_for(lambda: _values(client, "line1", "Score", "AlarmLatch") == {"Score": 0.8,
                                                                                       "AlarmLatch": True})
            ns = client.get_namespace_index(NAMESPACE)
            with caplog.at_level("WARNING", logger="edge_ad.opcua"):
                for _ in range(2):  # a client set to write each cycle: said once
                    with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                        client.get_node(f"ns={ns};s=line1.AlarmLatch").write_value(False)
                with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                    client.get_node(f"ns={ns};s=line1").call_method(f"{ns}:Calibrate", True)
            assert _values(client, "line1", "AlarmLatch") == {"AlarmLatch": True} and asked == []
        assert [r.getMessage() for r in caplog.records if "reads only" in r.getMessage()] == [
            "opcua: historian reads only: its write was refused", "opcua: historian reads only: its method call was "
                                                                   "refused"]
        with _secure_client(server.port, tmp_path, "hmi", "hmi pw") as client:  # the other user still may
            ns = client.get_namespace_index(NAMESPACE)
            client.get_node(f"ns={ns};s=line1.AlarmLatch").write_value(False)
            client.get_node(f"ns={ns};s=line1").call_method(f"{ns}:Calibrate", True)
            assert wait_for(lambda: _values(client, "line1", "AlarmLatch")["AlarmLatch"] is False)
        assert asked == [("line1", True)]
        with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):  # each its own password
            with _secure_client(server.port, tmp_path, "historian", "hmi pw"):
                pass
    finally:
        server.close()


def _issued_client(folder, authority_key, authority, valid_days: tuple[int, int] = (-1, 365)) -> None:
    """A client certificate for urn:mes issued by `authority` (as a plant's CA issues them), valid
    from and to those days from now, with its key, in `folder` where `_secure_client` looks (and
    keeps it: the URI and host name it asks for)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    folder.mkdir()
    (folder / "client-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    now = datetime.now(timezone.utc)
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "mes")]))
                   .issuer_name(authority.subject).public_key(key.public_key()).serial_number(2)
                   .not_valid_before(now + timedelta(days=valid_days[0]))
                   .not_valid_after(now + timedelta(days=valid_days[1]))
                   .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:mes"),
                                                               x509.DNSName("mes")]), False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                   .sign(authority_key, hashes.SHA256()))
    (folder / "client-certificate.der").write_bytes(certificate.public_bytes(serialization.Encoding.DER))


def _revocation_list(key, authority, serials: list[int]) -> bytes:
    """A certificate revocation list (PEM) in `authority`'s name, signed by `key`, revoking `serials`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    now = datetime.now(timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(authority.subject).last_update(now)
               .next_update(now + timedelta(days=7)))
    for serial in serials:
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                                  .revocation_date(now).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _authority():
    """A plant's certificate authority: its key and certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Plant 7 CA")])
    now = datetime.now(timezone.utc)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                   .add_extension(usage, True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
                   .sign(key, hashes.SHA256()))
    return key, certificate


def test_with_a_trust_list_only_clients_trusted_or_issued_by_a_trusted_authority_get_a_session(tmp_path, monkeypatch,
                                                                                              caplog):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "pw")
    scada, stranger, mes, trusted = (tmp_path / name for name in ("scada", "stranger", "mes", "trusted"))
    for client in (scada, stranger, trusted, tmp_path / "intruder"):
        client.mkdir()
    # The SCADA system's own certificate, as PEM under a name that does not say so; the plant's CA.
    own = x509.load_der_x509_certificate(_self_signed(scada, "urn:scada")[1].read_bytes())
    (trusted / "scada.crt").write_bytes(own.public_bytes(serialization.Encoding.PEM))
    authority_key, authority = _authority()
    (trusted / "plant-ca.der").write_bytes(authority.public_bytes(serialization.Encoding.DER))
    _issued_client(mes, authority_key, authority)
    server = OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)
    try:
        for client, uri in ((scada, "urn:scada"), (mes, "urn:mes")):
            with _secure_client(server.port, client, "scada", "pw", uri) as session:
                assert _values(session, "line1", "Frames") == {"Frames": 0}
        assert x509.load_der_x509_certificate((mes / "client-certificate.der").read_bytes()).issuer == authority.subject
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            for _ in range(2):  # a client tries again and again: said once
                with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUntrusted"):
                    with _secure_client(server.port, stranger, "scada", "pw", "urn:stranger"):
                        pass
            impostor = _secure_client(server.port, scada, "scada", "pw")
            # The trusted certificate of another application, and a line of its own forged into the log:
            impostor.application_uri = "urn:mes\nopcua: all clear"  # line breaks come escaped
            with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUriInvalid"):
                with impostor:
                    pass
        assert any(r.getMessage().startswith("opcua: refused 'urn:mes\\nopcua: all clear': its certificate (SHA-1 ") and
                   r.getMessage().endswith("does not name the application URI the client gives")
                   for r in caplog.records)
        refused = (stranger / "client-certificate.der").read_bytes()
        kept = tmp_path / "state" / "opcua" / "rejected" / f"{hashlib.sha1(refused).hexdigest()}.der"
        assert kept.read_bytes() == refused
        said = [r.getMessage() for r in caplog.records if "refused 'urn:stranger'" in r.getMessage()]
        assert len(said) == 1 and f"is not in --opcua-trust {trusted}, nor issued by one there; kept as {kept}: " \
                                  f"move it into {trusted} to trust it" in said[0]
        kept.rename(trusted / kept.name)  # trusted from its next attempt, without a restart
        (trusted / "readme.txt").write_text("certificates of line 7's clients")  # put there while running
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            with _secure_client(server.port, stranger, "scada", "pw", "urn:stranger") as session:
                assert _values(session, "line1", "Frames") == {"Frames": 0}
        assert any(r.getMessage().startswith(f"opcua: --opcua-trust: {trusted / 'readme.txt'} is not a certificate "
                                             "or a revocation list (CRL) in PEM or DER") and
                   r.getMessage().endswith("; left out") for r in caplog.records)
        (trusted / "readme.txt").unlink()
        # The MES's laptop is stolen: the plant's CA revokes its certificate, and its list is copied in.
        (trusted / "plant-ca.crl").write_bytes(_revocation_list(authority_key, authority, [2]))
        caplog.clear()
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            with pytest.raises(ua.UaStatusCodeError, match="BadCertificateRevoked"):
                with _secure_client(server.port, mes, "scada", "pw", "urn:mes"):
                    pass
        assert any(r.getMessage().startswith("opcua: refused 'urn:mes': its certificate (SHA-1 ") and
                   r.getMessage().endswith(f", serial 2) is revoked by a revocation list in {trusted}")
                   for r in caplog.records)
        with _secure_client(server.port, scada, "scada", "pw") as session:  # the others still get in
            assert _values(session, "line1", "Frames") == {"Frames": 0}
        # A client with a new certificate at each try would fill the disk: refused ones are kept up to a count.
        monkeypatch.setattr(opcua_trust, "REJECTED_KEPT", 1)
        (kept.parent / "earlier.der").write_bytes(refused)
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUntrusted"):
                with _secure_client(server.port, tmp_path / "intruder", "scada", "pw", "urn:intruder"):
                    pass
        assert [p.name for p in kept.parent.iterdir()] == ["earlier.der"]
        assert any(f"not kept: {kept.parent} holds 1 refused certificates already (empty it)" in r.getMessage()
                   for r in caplog.records)
    finally:
        server.close()
    forged_key, forged = _authority()  # a list signed by a key that is not the plant CA's
    (trusted / "plant-ca.crl").write_bytes(_revocation_list(forged_key, authority, [3]))
    with pytest.raises(EdgeAdError, match=f"--opcua-trust: {trusted / 'plant-ca.crl'} is a revocation list that no "
                                          "certificate authority there signed \\(its issuer: CN=Plant 7 CA\\); take it "
                                          "out of the folder"):
        OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)
    (trusted / "plant-ca.crl").unlink()
    (trusted / "notes.txt").write_text("ask Jo for the MES certificate")
    with pytest.raises(EdgeAdError, match=f"--opcua-trust: {trusted / 'notes.txt'} is not a certificate or a "
                                          "revocation list \\(CRL\\) in PEM or DER .*; take it out of the folder"):
        OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)


def _reads(session: Client) -> bool:
    """Whether `session` still reads the server (False once the server closed its connection)."""
    try:
        return _values(session, "line1", "Frames") == {"Frames": 0}
    except Exception:  # asyncua's sync client: a closed connection, a timeout
        return False


def _end(server: OpcUaServer, *sessions: Client) -> None:
    """Disconnect `sessions`, those the server closed too, then stop `server`."""
    for session in sessions:
        try:
            session.disconnect()
        except Exception:  # closed by the server
            pass
    server.close()


def _scada_trusted(tmp_path, monkeypatch, recheck_s: float) -> tuple:
    """The folders of a SCADA's self-signed certificate and of a trust folder holding it (PEM),
    for a server that reads it again every `recheck_s`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from edge_ad import opcua

    monkeypatch.setattr(opcua, "TRUST_RECHECK_S", recheck_s)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "pw")
    scada, trusted = tmp_path / "scada", tmp_path / "trusted"
    scada.mkdir()
    trusted.mkdir()
    own = x509.load_der_x509_certificate(_self_signed(scada, "urn:scada")[1].read_bytes())
    (trusted / "scada.crt").write_bytes(own.public_bytes(serialization.Encoding.PEM))
    return scada, trusted


def test_an_open_session_ends_when_its_certificate_is_revoked_or_taken_out(tmp_path, monkeypatch, caplog):
    """The trust folder was read at new sessions only: a revoked client, or one taken out of the
    folder, kept the session it had (a SCADA stays connected for months). Then a channel without
    a certificate, as a client asking for the endpoints opens, ended the recheck at its first
    round (a loaded CI had the clients' own discovery channels still open)."""
    from cryptography.hazmat.primitives import serialization

    scada, trusted = _scada_trusted(tmp_path, monkeypatch, recheck_s=0.3)
    authority_key, authority = _authority()
    (trusted / "plant-ca.der").write_bytes(authority.public_bytes(serialization.Encoding.DER))
    _issued_client(tmp_path / "mes", authority_key, authority)
    server = OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)
    scada_session = _secure_client(server.port, scada, "scada", "pw")
    mes_session = _secure_client(server.port, tmp_path / "mes", "scada", "pw", "urn:mes")
    looking = Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/", timeout=10)  # for the endpoints: no security
    try:
        looking.connect_socket()
        looking.send_hello()
        looking.open_secure_channel()
        scada_session.connect()
        mes_session.connect()
        assert _reads(scada_session) and _reads(mes_session)
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            (trusted / "notes.txt").write_text("ask Jo for the MES certificate")  # read every recheck: said once
            (trusted / "plant-ca.crl").write_bytes(_revocation_list(authority_key, authority, [2]))  # the MES's
            assert wait_for(lambda: not _reads(mes_session), 10)
            assert _reads(scada_session)  # the others keep theirs
            (trusted / "scada.crt").unlink()
            assert wait_for(lambda: not _reads(scada_session), 10)
    finally:
        looking.disconnect_socket()
        _end(server, scada_session, mes_session)
    said = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("opcua: closed the connection of 127.0.0.1: its certificate (SHA-1 ") and
               line.endswith(") is revoked now") for line in said)
    assert any(line.endswith(f") is not in --opcua-trust {trusted} now") for line in said)
    notes = f"opcua: --opcua-trust: {trusted / 'notes.txt'} is not a certificate"
    assert sum(line.startswith(notes) for line in said) == 1


def test_the_recheck_of_open_sessions_outlives_a_fault_and_says_it_once(tmp_path, monkeypatch, caplog):
    """A fault in one recheck ended the task for good, unsaid: a client later taken out of the
    trust folder kept its session."""
    scada, trusted = _scada_trusted(tmp_path, monkeypatch, recheck_s=0.2)
    server = OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)
    session = _secure_client(server.port, scada, "scada", "pw")
    refusal, faults = opcua_trust.ClientTrust.refusal, []

    def failing_at_first(trust, certificate, der):
        if len(faults) < 3:
            faults.append(certificate)
            raise RuntimeError("a fault")
        return refusal(trust, certificate, der)

    try:
        session.connect()
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            monkeypatch.setattr(opcua_trust.ClientTrust, "refusal", failing_at_first)
            assert wait_for(lambda: len(faults) == 3, 10)
            (trusted / "scada.crt").unlink()
            assert wait_for(lambda: not _reads(session), 10)
    finally:
        _end(server, session)
    said = [record.getMessage() for record in caplog.records]
    assert said.count(f"opcua: the open sessions' certificates could not be checked against --opcua-trust {trusted} "
                      "(a fault); tried again every 0.2 s") == 1
    assert any(line.endswith(f") is not in --opcua-trust {trusted} now") for line in said)


def test_a_client_whose_certificate_ran_out_is_told_its_dates(tmp_path, monkeypatch, caplog):
    """Client certificates are issued for a year or two: one that ran out is refused, and the log
    gives its dates and the other way it happens, this machine's clock being wrong."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _, trusted = _scada_trusted(tmp_path, monkeypatch, recheck_s=30.0)
    authority_key, authority = _authority()
    (trusted / "plant-ca.der").write_bytes(authority.public_bytes(serialization.Encoding.DER))
    _issued_client(tmp_path / "mes", authority_key, authority, valid_days=(-400, -1))
    certificate = x509.load_der_x509_certificate((tmp_path / "mes" / "client-certificate.der").read_bytes())
    server = OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)
    client = Client(f"opc.tcp://127.0.0.1:{server.port}/edge-ad/", timeout=10)  # _secure_client would renew it
    client.application_uri = "urn:mes"
    client.set_security(SecurityPolicyBasic256Sha256, str(tmp_path / "mes" / "client-certificate.der"),
                        str(tmp_path / "mes" / "client-key.pem"), mode=ua.MessageSecurityMode.SignAndEncrypt)
    client.set_user("scada")
    client.set_password("pw")
    try:
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            with pytest.raises(ua.UaStatusCodeError, match="BadCertificateTimeInvalid"):
                with client:
                    pass
    finally:
        server.close()
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert (f"opcua: refused 'urn:mes': its certificate (SHA-1 {opcua_trust.thumbprint(der)}) is valid only from "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} "
            "UTC (or this machine's clock is wrong)") in caplog.messages


def test_an_open_session_ends_when_its_certificate_runs_out(tmp_path, monkeypatch, caplog):
    """A certificate that ran out during a session: the plant CA's kind was closed as "not in
    --opcua-trust" (the folder's check takes dates into account), and one in the folder itself kept
    its session until the client reconnected, to be refused then."""
    from cryptography import x509

    scada, trusted = _scada_trusted(tmp_path, monkeypatch, recheck_s=0.2)
    der = (scada / "client-certificate.der").read_bytes()
    certificate = x509.load_der_x509_certificate(der)
    server = OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)
    session = _secure_client(server.port, scada, "scada", "pw")

    class AfterItRanOut(datetime):
        @classmethod
        def now(cls, tz=None):
            return certificate.not_valid_after_utc + timedelta(minutes=1)

    try:
        session.connect()
        assert _reads(session)
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            monkeypatch.setattr(opcua_trust, "datetime", AfterItRanOut)
            assert wait_for(lambda: not _reads(session), 10)
    finally:
        _end(server, session)
    dates = f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M}"
    assert [message for message in caplog.messages if message.startswith("opcua: closed")] == [
        f"opcua: closed the connection of 127.0.0.1: its certificate (SHA-1 {opcua_trust.thumbprint(der)}) is valid "
        f"only from {dates} UTC (or this machine's clock is wrong)"]


def test_a_refusal_is_said_again_once_the_certificate_was_taken_in_between(tmp_path, monkeypatch, caplog):
    """A refusal is said once per certificate, as a client tries again every few seconds; once for
    good silenced a client set up as the README says (refused once, its certificate moved in) when
    it was refused again, months later in the same run."""
    _, trusted = _scada_trusted(tmp_path, monkeypatch, recheck_s=30.0)
    (tmp_path / "mes").mkdir()
    server = OpcUaServer(free_port(), ["line1"], user="scada", trust=trusted)

    def refused_twice() -> None:
        with caplog.at_level("WARNING", logger="edge_ad.opcua"):
            for _ in range(2):
                with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUntrusted"):
                    with _secure_client(server.port, tmp_path / "mes", "scada", "pw", "urn:mes"):
                        pass

    try:
        refused_twice()
        (kept,) = (tmp_path / "state" / "opcua" / "rejected").iterdir()
        kept.rename(trusted / kept.name)
        with _secure_client(server.port, tmp_path / "mes", "scada", "pw", "urn:mes") as session:
            assert _reads(session)
        (trusted / kept.name).unlink()  # its laptop retired
        refused_twice()
    finally:
        server.close()
    assert sum(message.startswith("opcua: refused 'urn:mes': ") for message in caplog.messages) == 2


def test_a_problem_of_the_trust_folder_gone_and_back_is_said_again(tmp_path, caplog):
    """The folder is read at each session and every half minute: a problem is said as it comes,
    once, and again should it come back after it was mended (said once for good, a list copied in
    half a second time, weeks later, went unsaid)."""
    (tmp_path / "trusted").mkdir()
    trust = opcua_trust.ClientTrust(tmp_path / "trusted", tmp_path / "rejected")
    half_copied = tmp_path / "trusted" / "plant-ca.crl"
    with caplog.at_level("WARNING", logger="edge_ad.opcua"):
        for there in (True, True, False, True, True):
            if there:
                half_copied.write_bytes(b"-----BEGIN X509 CRL-----\nMIIBvDCBpQIBATANBgkqhkiG9w0BAQsFADAV")
            else:
                half_copied.unlink()
            trust.load()
    said = f"opcua: --opcua-trust: {half_copied} is not a certificate or a revocation list (CRL) in PEM or DER"
    assert sum(message.startswith(said) for message in caplog.messages) == 2


def test_a_trust_file_the_run_cannot_read_is_said_as_such(tmp_path, monkeypatch):
    """A certificate copied in by root, readable by root only, was "not a certificate or a
    revocation list (CRL) in PEM or DER (Permission denied)": a wrong word, the file is fine."""
    (tmp_path / "trusted").mkdir()
    locked = tmp_path / "trusted" / "mes.der"
    locked.write_bytes(b"0")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(opcua_trust, "_read_trust_file", denied)
    with pytest.raises(EdgeAdError, match=re.escape(f"--opcua-trust: cannot read {locked} (Permission denied to ")
                       + ".*the user this runs as\\); make it readable, or take it out of the folder$"):
        opcua_trust.ClientTrust(tmp_path / "trusted", tmp_path / "rejected")


def test_the_scada_example_is_trusted_once_its_certificate_is_moved_in_and_acknowledges_an_alarm(tmp_path,
                                                                                                 monkeypatch):
    """examples/scada_opcua.py, as a plant checks the wiring before its SCADA is set up: refused at
    first by a trust folder, which keeps its certificate, then trusted once that is moved in; it
    prints each source's variables and an alarm, which it acknowledges (AlarmLatch False)."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AD_OPCUA_PASSWORD", "pw")
    (tmp_path / "trusted").mkdir()
    server = OpcUaServer(free_port(), ["top", "side"], user="scada", trust=tmp_path / "trusted")
    example = [sys.executable, Path(__file__).parents[1] / "examples" / "scada_opcua.py", f"127.0.0.1:{server.port}",
               "0.5", "scada"]
    try:
        refused = subprocess.run(example, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and refused.stderr.strip().endswith(
            "refused (The certificate is not trusted.(BadCertificateUntrusted)); the run's log names the file to "
            "move into its --opcua-trust folder")
        (kept,) = (tmp_path / "state" / "opcua" / "rejected").iterdir()
        assert kept.read_bytes() == (tmp_path / "opcua-client" / "certificate.der").read_bytes()
        kept.rename(tmp_path / "trusted" / kept.name)
        server.update("side", 7, 0.42, 0.18, anomaly=True, alarm=True, variant=None, anomalies=1, alarms=1)
        out = subprocess.run(example, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "top: Frames 0  Score 0.0  Threshold 0.0  Alarm False  Variant   CalibrationState 0",
            "side: Frames 1  Score 0.42  Threshold 0.18  Alarm True  Variant   CalibrationState 0",
            "side: ALARM  frame 7  score 0.420 (threshold 0.180)"]
        again = subprocess.run(example, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "ALARM" not in again.stdout  # acknowledged: the latch is down
    finally:
        server.close()


def test_an_empty_trust_folder_is_said_to_refuse_every_client_until_one_is_moved_in(tmp_path, caplog):
    (tmp_path / "trusted").mkdir()
    with caplog.at_level("INFO", logger="edge_ad.opcua"):
        opcua_trust.ClientTrust(tmp_path / "trusted", tmp_path / "rejected")
    assert caplog.messages == [f"opcua: no certificate in --opcua-trust {tmp_path / 'trusted'}: every client is "
                               f"refused, and its certificate kept in {tmp_path / 'rejected'} to be moved in"]


def test_a_user_without_a_server_or_a_name_is_refused(tiny_bundle, spotted_frames):
    out = edge_ad("run", "--bundle", tiny_bundle, "--input", spotted_frames, "--opcua-user", "scada")
    assert out.returncode != 0 and "--opcua-user scada: needs --opcua-port PORT" in out.stderr
    out = edge_ad("run", "--bundle", tiny_bundle, "--input", spotted_frames, "--opcua-port", free_port(),
                  "--opcua-user", " ")
    assert out.returncode != 0 and "--opcua-user: give the user's name (it is empty)" in out.stderr
    out = edge_ad("run", "--bundle", tiny_bundle, "--input", spotted_frames, "--opcua-port", free_port(),
                  "--opcua-user", "scada", "--opcua-certificate", "line7.crt")
    assert out.returncode != 0 and "--opcua-certificate and --opcua-key: both" in out.stderr
    for reader in ("scada", " "):
        out = edge_ad("run", "--bundle", tiny_bundle, "--input", spotted_frames, "--opcua-port", free_port(),
                      "--opcua-user", "scada", "--opcua-reader", reader)
        assert out.returncode != 0 and f"--opcua-reader {reader}: a second user's name, beside --opcua-user's" \
            in out.stderr
    out = edge_ad("run", "--bundle", tiny_bundle, "--input", spotted_frames, "--opcua-port", free_port(),
                  "--opcua-trust", "trusted")
    assert out.returncode != 0 and "--opcua-trust trusted: with --opcua-user" in out.stderr

