"""--modbus-port: each source's last result as Modbus TCP registers and its alarm as a latched
coil, read and acknowledged by pymodbus's client as a PLC would."""

import json
import logging
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException

from edge_ad.detector import Detector
from edge_ad.errors import EdgeAdError
from edge_ad.line_calibration import CALIBRATED, CALIBRATING
from edge_ad.modbus import KEEPALIVE_IDLE_S, MAX_CONNECTIONS, REGISTERS_PER_SOURCE, VARIANT_REGISTER, ModbusServer
from edge_ad.runner import RunConfig, run
from edge_ad.sinks import Snapshots
from edge_ad.sources import open_source
from edge_ad.streams import Stream
from edge_ad.variants import VariantDetector

from conftest import MODULE_TYPES, SPOT_PATTERN, free_port, input_registers, modbus_client, wait_for


def _coils(client: ModbusTcpClient, count: int) -> list[bool]:
    response = client.read_coils(0, count=count)
    assert not response.isError(), response
    return response.bits[:count]


def test_the_plc_and_the_next_frames_do_not_wait_for_a_snapshot(spotted_frames, tiny_bundle, tmp_path, monkeypatch):
    """A reject gate acts on the registers, so an alarm frame's verdict reaches them before its
    snapshot is drawn and written (about 300 ms for a 12-megapixel frame), and the next frames
    are scored while it is written."""
    writing, written, waited_out = [], threading.Event(), []
    save = Snapshots.save

    def slow_save(self, source, index, captured, frame, overlay):
        writing.append(index)
        if len(writing) == 1:
            waited_out.append(not written.wait(30))
        return save(self, source, index, captured, frame, overlay)

    monkeypatch.setattr(Snapshots, "save", slow_save)
    port = free_port()
    config = RunConfig(modbus_port=port, snapshots=tmp_path / "snapshots", snapshot_interval_s=0.0,
                       max_frames=len(SPOT_PATTERN))
    runner = threading.Thread(target=run, args=(Detector.load(tiny_bundle), [Stream(str(spotted_frames))], config))
    runner.start()
    try:
        client = modbus_client(port)
        deadline = time.monotonic() + 60
        while not writing and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writing, "no alarm frame in a minute"
        assert SPOT_PATTERN[writing[0]] and _coils(client, 1) == [True]  # latched for the PLC
        deadline = time.monotonic() + 15  # the first snapshot waits 30 s at most
        while (frame := _frame_register(client)) < writing[0] + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not waited_out and frame >= writing[0] + 2, f"the PLC saw frame {frame} while frame {writing[0]}'s " \
            "snapshot was written: the scoring waited for it"
    finally:
        written.set()
        runner.join(60)
    client.close()
    assert len(list((tmp_path / "snapshots").glob("*_overlay.jpg"))) == len(writing) == sum(SPOT_PATTERN)


def _frame_register(client: ModbusTcpClient) -> int:
    block = input_registers(client, 0, REGISTERS_PER_SOURCE)
    return block[6] << 16 | block[7]


def test_registers_show_each_sources_last_frame_and_latch_its_alarms():
    server = ModbusServer(0, ["top", "side"], {"top": [], "side": ["mono", "poly"]}, host="127.0.0.1")
    client = modbus_client(server.port)
    try:
        before = input_registers(client, 0, 2 * REGISTERS_PER_SOURCE)
        assert before[:9] == [0] * 9 and before[9] == 0xFFFF  # no frame yet: silent "for ever"
        assert _coils(client, 2) == [False, False]

        server.update("side", 70_000, 0.1234, 0.18, anomaly=False, alarm=False, variant="poly", anomalies=3, alarms=1,
                      judged_by=("9bb4b4eb279b", "bfb4c6d3e4c6"))
        side = input_registers(client, REGISTERS_PER_SOURCE, REGISTERS_PER_SOURCE)
        assert side[:9] == [1, 0, 123, 180, 3, 1, 1, 70_000 - 65_536, 2]  # frame number: high word, low word
        assert side[9] <= 10 and side[10:13] == [0] * 3  # scored within the last second
        assert side[13:] == [0x9BB4, 0xB4EB, 0xBFB4]  # what judged it: the events' 9bb4b4eb..., bfb4...
        assert input_registers(client, REGISTERS_PER_SOURCE, 4, function=3) == side[:4]  # holding registers: the same
        assert input_registers(client, 0, 1) == [0]  # the other source has not scored yet

        server.update("top", 5, 80.0, 0.18, anomaly=True, alarm=True, variant=None, anomalies=1, alarms=1)
        assert input_registers(client, 1, 3) == [2, 0xFFFF, 180]  # an alarm, its score clipped at 65.535
        assert _coils(client, 2) == [True, False]
        server.update("top", 6, -0.5, 0.18, anomaly=False, alarm=False, variant=None, anomalies=1, alarms=1,
                      judged_by=("03f2a9c1b7d0", None))
        assert input_registers(client, 1, 2) == [0, 0]  # normal again, a negative score shown as 0
        assert input_registers(client, 13, 3) == [0x03F2, 0xA9C1, 0]  # the bundle's own numbers: calibration 0
        server.update("top", 7, -0.5, 0.18, anomaly=False, alarm=False, variant=None, anomalies=1, alarms=1,
                      judged_by=("03f2a9c1b7d0", "0000c6d3e4c6"))
        assert input_registers(client, 15, 1) == [1]  # 0 says "the bundle's own numbers" and nothing else
        assert _coils(client, 2) == [True, False]  # the latch holds until the PLC acknowledges

        assert not client.write_coil(0, False).isError()
        assert _coils(client, 2) == [False, False]
        server.update("side", 70_001, 0.5, 0.18, anomaly=True, alarm=False, variant="mono", anomalies=4, alarms=1)
        assert _coils(client, 2) == [False, False]  # anomalous, not (yet) an alarm
        assert input_registers(client, REGISTERS_PER_SOURCE + 1, 1) == [1]
        assert input_registers(client, REGISTERS_PER_SOURCE + 8, 1) == [1]  # the first variant
        assert not client.write_coils(0, [True, True]).isError()  # a PLC testing its reject path
        assert _coils(client, 2) == [True, True]

        time.sleep(0.35)
        assert input_registers(client, 9, 1)[0] >= 3  # tenths of a second since "top" last scored

        for response, code in ((client.read_input_registers(30, count=3), 2),  # past the 32 registers
                               (client.write_register(0, 7), 2),  # the run's registers: read-only
                               (client.write_coil(2, True), 2)):  # a third source's latch
            assert response.isError() and response.exception_code == code
    finally:
        client.close()
        server.close()


def test_a_frozen_picture_is_a_discrete_input_the_plc_reads(tiny_bundle):
    """A camera whose picture froze passes every part, and the registers (a verdict, a score, a
    frame counter that goes on) could not show it: discrete input i (function 2) is 1 while source
    i's picture is frozen, from the run's freeze watch."""
    server = ModbusServer(0, ["top", "side"], host="127.0.0.1")
    client = modbus_client(server.port)
    try:
        assert client.read_discrete_inputs(0, count=2).bits[:2] == [False, False]
        server.set_frozen("side", True)
        assert client.read_discrete_inputs(0, count=2).bits[:2] == [False, True]
        assert client.read_discrete_inputs(1, count=2).exception_code == 2  # past the two sources
    finally:
        client.close()
        server.close()

    still = ("videotestsrc is-live=true pattern=white ! video/x-raw,width=64,height=48,framerate=30/1 ! "
             "videoconvert ! video/x-raw,format=BGR ! appsink name=sink")
    port, stop = free_port(), threading.Event()
    config = RunConfig(modbus_port=port, frozen_window_s=2.0, max_frames=600)  # 20 s at most
    runner = threading.Thread(target=run, args=(Detector.load(tiny_bundle), [Stream("", "still", pipeline=still)],
                                                config, stop))
    runner.start()
    client = modbus_client(port)
    try:
        seen = [client.read_discrete_inputs(0, count=1).bits[0]]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not seen[-1]:
            time.sleep(0.2)
            seen.append(client.read_discrete_inputs(0, count=1).bits[0])
    finally:
        client.close()
        stop.set()
        runner.join(timeout=30)
    assert seen[0] is False and seen[-1] is True  # said once a full window of still frames went by


def test_the_plc_says_which_variant_each_source_makes():
    told = []
    server = ModbusServer(0, ["top", "side"], {"top": [], "side": ["mono", "poly"]}, host="127.0.0.1",
                          on_variant=lambda source, variant: told.append((source, variant)))
    client = modbus_client(server.port)
    side = REGISTERS_PER_SOURCE + VARIANT_REGISTER
    try:
        assert not client.write_register(side, 2).isError()
        assert told == [("side", "poly")] and input_registers(client, side, 1) == [2]
        assert not client.write_registers(side, [0]).isError()  # function 16; 0: every bundle again
        assert told[-1] == ("side", None) and input_registers(client, side, 1) == [0]
        for response, code in ((client.write_register(VARIANT_REGISTER, 1), 2),  # "top" has one bundle
                               (client.write_register(side, 3), 3),  # "side" has two variants
                               (client.write_registers(side - 1, [0, 1]), 2),  # +9 is the run's
                               (client.write_register(side + REGISTERS_PER_SOURCE, 1), 2)):  # no third source
            assert response.isError() and response.exception_code == code
        assert len(told) == 2 and input_registers(client, side, 1) == [0]  # a refused write changes nothing
    finally:
        client.close()
        server.close()


def test_the_plc_chooses_the_variant_a_run_scores_with(variant_bundles, tmp_path):
    """Two live cameras on the mono and poly bundles; the PLC writes camera a's register +10:
    its frames are scored by the variant it names from then on, camera b's by the bundle they
    look most normal to."""
    detector = VariantDetector({t: Detector.load(variant_bundles[t]) for t in MODULE_TYPES})
    pattern = "test://?width=160&height=120"
    (first,) = [f.image for f, _ in zip(open_source(pattern).frames(), range(1))]
    chosen = detector(first).variant  # which bundle the test pattern looks most normal to
    told = next(t for t in MODULE_TYPES if t != chosen)
    port, events = free_port(), tmp_path / "events.jsonl"
    config = RunConfig(modbus_port=port, events=events, max_frames=90)  # 3 s of live cameras
    streams = [Stream(pattern, "cam-a"), Stream(pattern, "cam-b")]
    thread = threading.Thread(target=run, args=(detector, streams, config))
    thread.start()
    client = modbus_client(port)
    try:
        assert not client.write_register(VARIANT_REGISTER, MODULE_TYPES.index(told) + 1).isError()
        thread.join(timeout=60)
    finally:
        client.close()
    assert not thread.is_alive()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["variant"] for e in lines if e["source"] == "cam-a"][-30:] == [told] * 30
    assert [e["variant"] for e in lines if e["source"] == "cam-b"][-30:] == [chosen] * 30


def test_the_plc_example_prints_and_acknowledges_alarms():
    server = ModbusServer(0, ["top", "side"], host="127.0.0.1")
    try:
        server.update("top", 3, 0.05, 0.18, anomaly=False, alarm=False, variant=None, anomalies=0, alarms=0,
                      judged_by=("9bb4b4eb279b", None))
        server.update("side", 7, 0.42, 0.18, anomaly=True, alarm=True, variant=None, anomalies=1, alarms=1,
                      judged_by=("946779c47e79", "bfb4c6d3e4c6"))
        example = Path(__file__).parents[1] / "examples" / "plc_modbus.py"
        out = subprocess.run([sys.executable, example, f"127.0.0.1:{server.port}", "2", "0.5"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        alarm, top, side = out.stdout.splitlines()  # the alarm once: then acknowledged
        assert alarm == "source 1: ALARM  frame 7  score 0.420 (threshold 0.180)  alarms so far 1"
        assert re.fullmatch(r"source 0: 1 frames scored, the last \(3\) normal by bundle 9bb4b4eb, calibration of "
                            r"the bundle; last frame \d+\.\d s ago", top)
        assert re.fullmatch(r"source 1: 1 frames scored, the last \(7\) alarm by bundle 946779c4, calibration bfb4; "
                            r"last frame \d+\.\d s ago", side)
        assert server.latches() == [False, False]
    finally:
        server.close()


def test_the_plc_example_asks_a_calibration_and_follows_it():
    asked = []

    def calibrate(source: str, start: bool) -> None:  # as a run goes: calibrating at once, calibrated later
        asked.append((source, start))
        server.set_calibration(source, CALIBRATING, 0)
        threading.Timer(0.3, server.set_calibration, (source, CALIBRATED, 40)).start()

    server = ModbusServer(0, ["top", "side"], host="127.0.0.1", on_calibrate=calibrate)
    try:
        example = Path(__file__).parents[1] / "examples" / "plc_modbus.py"
        out = subprocess.run([sys.executable, example, f"127.0.0.1:{server.port}", "2", "1.0", "1"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[:3] == ["source 1: calibration asked",
                                               "source 1: calibration calibrating, 0 frames kept",
                                               "source 1: calibration calibrated, 40 frames kept"]
        assert asked == [("side", True)]
        refused = subprocess.run([sys.executable, example, f"127.0.0.1:{server.port}", "2", "0.1", "2"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "source 2: the run refused to calibrate it" in refused.stderr
    finally:
        server.close()


def test_malformed_requests_are_refused_by_the_protocols_exceptions(caplog):
    server = ModbusServer(0, ["cam"], host="127.0.0.1")
    try:
        assert server.answer(bytes([4, 0, 0, 0, 0])) == bytes([0x84, 3])  # zero registers
        assert server.answer(bytes([3, 0, 0, 0, 126])) == bytes([0x83, 3])  # more than a response holds
        assert server.answer(bytes([5, 0, 0, 0x12, 0x34])) == bytes([0x85, 3])  # a coil is 0x0000 or 0xFF00
        assert server.answer(bytes([15, 0, 0, 0, 1, 2, 1, 0])) == bytes([0x8F, 3])  # byte count does not fit
        assert server.answer(bytes([43, 14, 1, 0])) == bytes([0xAB, 1])  # device identification: not served
        # A frame that is not Modbus TCP (protocol id 1) closes the connection, which the server outlives;
        # a client set up so, trying again and again, is said once (with the count), not at every try.
        with caplog.at_level(logging.WARNING, logger="edge_ad.modbus"):
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                    raw.sendall(struct.pack(">HHHB", 1, 1, 6, 1) + bytes([4, 0, 0, 0, 1]))
                    assert raw.recv(16) == b""
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            "modbus: 127.0.0.1 sent a frame that is not Modbus TCP (a client set to Modbus RTU over TCP, or not a "
            "Modbus client?); closing its connection (1 closed for this since the run started)"]
        client = modbus_client(server.port)
        assert input_registers(client, 0, REGISTERS_PER_SOURCE)[9] == 0xFFFF
        (connection,) = server._server.connections  # a PLC that vanishes without closing: dropped in a minute
        assert connection.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_S
        server.close()  # closes the PLC's connection too, so a PLC sees the inspection go
        with pytest.raises(ConnectionException):
            client.read_input_registers(0, count=1)
        client.close()
    finally:
        server.close()


def test_only_the_plcs_modbus_allow_names_may_connect(caplog):
    """Modbus has no login: anyone who reached the port could switch the variant, start a
    calibration on the line or clear an alarm latch."""
    with caplog.at_level(logging.WARNING, logger="edge_ad.modbus"):
        guarded = ModbusServer(0, ["cam"], host="127.0.0.1", allowed=["10.0.7.21, 10.0.8.0/24"])
        try:
            for _ in range(3):  # a PLC that tries again and again: refused each time, said once
                with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as raw:
                    raw.sendall(struct.pack(">HHHB", 1, 0, 6, 1) + bytes([5, 0, 0, 0, 0]))  # clear the latch
                    assert raw.recv(16) == b""  # closed unanswered
        finally:
            guarded.close()
    assert caplog.text.count("modbus: refused a connection from 127.0.0.1, which --modbus-allow does not name "
                             "(10.0.7.21/32, 10.0.8.0/24)") == 1
    allowed = ModbusServer(0, ["cam"], host="127.0.0.1", allowed=["10.0.7.21", "127.0.0.0/8"])
    try:
        client = modbus_client(allowed.port)
        assert input_registers(client, 0, REGISTERS_PER_SOURCE)[9] == 0xFFFF
        client.close()
    finally:
        allowed.close()
    for given, said in ((["10.0.7.300"], "--modbus-allow 10.0.7.300: not an IP address or network"),
                        ([" , "], "--modbus-allow: give the addresses of the PLCs and HMIs that may connect")):
        with pytest.raises(EdgeAdError, match=re.escape(said)):
            ModbusServer(0, ["cam"], host="127.0.0.1", allowed=given)
    result = subprocess.run([sys.executable, "-m", "edge_ad", "run", "--bundle", "nowhere", "--input", "test://ball",
                             "--modbus-allow", "10.0.7.21"], capture_output=True, text=True)
    assert result.returncode != 0 and "--modbus-allow 10.0.7.21: needs --modbus-port PORT" in result.stderr


def _read_frames_scored(connection: socket.socket) -> int:
    """Register +0 of source 0 (0 before its first frame), read as a PLC does (function 4)."""
    connection.sendall(struct.pack(">HHHBBHH", 7, 0, 6, 1, 4, 0, 1))
    reply = b""
    while len(reply) < 11:
        chunk = connection.recv(11 - len(reply))
        assert chunk, "the connection was closed"
        reply += chunk
    return struct.unpack(">H", reply[9:])[0]


def test_a_client_that_leaves_connections_open_cannot_take_them_all(caplog):
    """An HMI that opens a connection per poll and never closes one (or anyone on the network)
    took a thread and a file descriptor each until the run had none; the connection that has gone
    longest without a request makes room for a new one, and the PLC that polls keeps its own."""
    server = ModbusServer(0, ["cam"], host="127.0.0.1")
    connections = []
    try:
        with caplog.at_level(logging.WARNING, logger="edge_ad.modbus"):
            connections = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                           for _ in range(MAX_CONNECTIONS)]
            plc, forgotten = connections[0], connections[1]
            assert wait_for(lambda: len(server._server.connections) == MAX_CONNECTIONS, 5)  # all taken by the server
            assert _read_frames_scored(plc) == 0  # the PLC polls: connections[1] is now the least used
            for _ in range(3):  # three more left open by a leaking client
                newcomer = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                connections.append(newcomer)
                assert _read_frames_scored(newcomer) == 0
                assert _read_frames_scored(plc) == 0
            assert forgotten.recv(16) == b""  # closed by the server
            for closed in connections[2:4]:
                assert closed.recv(16) == b""
            for still_open in connections[4:]:
                assert _read_frames_scored(still_open) == 0
        assert len(server._server.connections) == MAX_CONNECTIONS
        said = [record.getMessage() for record in caplog.records]
        assert len(said) == 1 and said[0].startswith(  # at once, then every 30 s: not per connection
            f"modbus: {MAX_CONNECTIONS} connections open, the most there may be: closed the one from 127.0.0.1")
    finally:
        for connection in connections:
            connection.close()
        server.close()


def test_a_port_that_is_taken_is_refused_by_name():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EdgeAdError, match=f"--modbus-port {port}: cannot listen"):
            ModbusServer(port, ["cam"], host="127.0.0.1")


def _frame_events_through(events: Path, frame: int) -> list[dict]:
    """The frame events of the events file once it holds `frame`: the registers are set as a frame
    is scored, before its event line is written, so the file may lag them by a batch."""
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in events.read_text().split("\n")[:-1]]  # whole lines only
        frames = [e for e in lines if e["event"] == "frame"]
        if any(e["frame"] >= frame for e in frames) or time.monotonic() > deadline:
            return frames
        time.sleep(0.05)


def test_a_plc_reads_what_the_run_scored(spotted_frames, tiny_bundle, tmp_path):
    """`edge-ad run --modbus-port`, a folder of real cells with a spot in some, played in a loop:
    the registers a client reads are those of the frame they name, as the events file has it
    (score, threshold, verdict, counts so far), the alarm latch is set, and SIGTERM ends the run
    and the PLC's connection."""
    port, events = free_port(), tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle), "--input", str(spotted_frames),
         "--input-loop", "-1", "--alarm-frames", "2", "--events", str(events),
         "--modbus-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = modbus_client(port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and input_registers(client, 0, 1)[0] < 2 * len(SPOT_PATTERN):
            time.sleep(0.1)
        block, latch = input_registers(client, 0, REGISTERS_PER_SOURCE), _coils(client, 1)
        assert block[0] >= 2 * len(SPOT_PATTERN), "the run scored too few frames in a minute"
        frame = block[6] << 16 | block[7]
        lines = _frame_events_through(events, frame)
        upto = [e for e in lines if e["frame"] <= frame]
        event = upto[-1]
        assert event["frame"] == frame
        assert block[1] == (2 if event["alarm"] else 1 if event["anomaly"] else 0)
        assert block[2] == min(max(round(event["score"] * 1000), 0), 0xFFFF)  # a normal cell may score below 0
        assert block[3] == round(event["threshold"] * 1000)
        assert block[0] == len(upto)
        assert block[4] == sum(e["anomaly"] for e in upto) and block[5] == sum(e["alarm"] for e in upto)
        assert block[5] >= 3 and latch == [True]  # three alarm frames per pass over the folder
        assert block[8] == 0 and block[9] < 50
        assert f"{block[13]:04x}{block[14]:04x}" == event["bundle"][:8]  # the bundle the events name
        assert block[15] == (max(int(event["calibration"][:4], 16), 1) if event["calibration"] else 0)
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0, log
    assert f"modbus: serving on port {port}: {spotted_frames} input registers 0-15, coil and discrete input 0" in log
    with pytest.raises(ConnectionException):
        client.read_input_registers(0, count=1)
    client.close()
