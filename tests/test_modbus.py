"""--modbus-port: each source's last result as Modbus TCP registers and its alarm as a latched
coil, read and acknowledged by pymodbus's client as a PLC would."""

import json
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException

from edge_ad.errors import EdgeAdError
from edge_ad.modbus import REGISTERS_PER_SOURCE, ModbusServer

from conftest import SPOT_PATTERN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(port: int) -> ModbusTcpClient:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    assert client.connect()
    return client


def _registers(client: ModbusTcpClient, start: int, count: int, function: int = 4) -> list[int]:
    read = client.read_input_registers if function == 4 else client.read_holding_registers
    response = read(start, count=count)
    assert not response.isError(), response
    return response.registers


def _coils(client: ModbusTcpClient, count: int) -> list[bool]:
    response = client.read_coils(0, count=count)
    assert not response.isError(), response
    return response.bits[:count]


def test_registers_show_each_sources_last_frame_and_latch_its_alarms():
    server = ModbusServer(0, ["top", "side"], {"top": [], "side": ["mono", "poly"]}, host="127.0.0.1")
    client = _client(server.port)
    try:
        before = _registers(client, 0, 2 * REGISTERS_PER_SOURCE)
        assert before[:9] == [0] * 9 and before[9] == 0xFFFF  # no frame yet: silent "for ever"
        assert _coils(client, 2) == [False, False]

        server.update("side", 70_000, 0.1234, 0.18, anomaly=False, alarm=False, variant="poly", anomalies=3, alarms=1)
        side = _registers(client, REGISTERS_PER_SOURCE, REGISTERS_PER_SOURCE)
        assert side[:9] == [1, 0, 123, 180, 3, 1, 1, 70_000 - 65_536, 2]  # frame number: high word, low word
        assert side[9] <= 10 and side[10:] == [0] * 6  # scored within the last second
        assert _registers(client, REGISTERS_PER_SOURCE, 4, function=3) == side[:4]  # holding registers: the same
        assert _registers(client, 0, 1) == [0]  # the other source has not scored yet

        server.update("top", 5, 80.0, 0.18, anomaly=True, alarm=True, variant=None, anomalies=1, alarms=1)
        assert _registers(client, 1, 3) == [2, 0xFFFF, 180]  # an alarm, its score clipped at 65.535
        assert _coils(client, 2) == [True, False]
        server.update("top", 6, -0.5, 0.18, anomaly=False, alarm=False, variant=None, anomalies=1, alarms=1)
        assert _registers(client, 1, 2) == [0, 0]  # normal again, a negative score shown as 0
        assert _coils(client, 2) == [True, False]  # the latch holds until the PLC acknowledges

        assert not client.write_coil(0, False).isError()
        assert _coils(client, 2) == [False, False]
        server.update("side", 70_001, 0.5, 0.18, anomaly=True, alarm=False, variant="mono", anomalies=4, alarms=1)
        assert _coils(client, 2) == [False, False]  # anomalous, not (yet) an alarm
        assert _registers(client, REGISTERS_PER_SOURCE + 1, 1) == [1]
        assert _registers(client, REGISTERS_PER_SOURCE + 8, 1) == [1]  # the first variant
        assert not client.write_coils(0, [True, True]).isError()  # a PLC testing its reject path
        assert _coils(client, 2) == [True, True]

        time.sleep(0.35)
        assert _registers(client, 9, 1)[0] >= 3  # tenths of a second since "top" last scored

        for response, code in ((client.read_input_registers(30, count=3), 2),  # past the 32 registers
                               (client.write_register(0, 7), 1),  # registers are the run's: read-only
                               (client.write_coil(2, True), 2)):  # a third source's latch
            assert response.isError() and response.exception_code == code
    finally:
        client.close()
        server.close()


def test_malformed_requests_are_refused_by_the_protocols_exceptions():
    server = ModbusServer(0, ["cam"], host="127.0.0.1")
    try:
        assert server.answer(bytes([4, 0, 0, 0, 0])) == bytes([0x84, 3])  # zero registers
        assert server.answer(bytes([3, 0, 0, 0, 126])) == bytes([0x83, 3])  # more than a response holds
        assert server.answer(bytes([5, 0, 0, 0x12, 0x34])) == bytes([0x85, 3])  # a coil is 0x0000 or 0xFF00
        assert server.answer(bytes([15, 0, 0, 0, 1, 2, 1, 0])) == bytes([0x8F, 3])  # byte count does not fit
        assert server.answer(bytes([43, 14, 1, 0])) == bytes([0xAB, 1])  # device identification: not served
        # A frame that is not Modbus TCP (protocol id 1) closes the connection, which the server outlives.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(struct.pack(">HHHB", 1, 1, 6, 1) + bytes([4, 0, 0, 0, 1]))
            assert raw.recv(16) == b""
        client = _client(server.port)
        assert _registers(client, 0, REGISTERS_PER_SOURCE)[9] == 0xFFFF
        server.close()  # closes the PLC's connection too, so a PLC sees the inspection go
        with pytest.raises(ConnectionException):
            client.read_input_registers(0, count=1)
        client.close()
    finally:
        server.close()


def test_a_port_that_is_taken_is_refused_by_name():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EdgeAdError, match=f"--modbus-port {port}: cannot listen"):
            ModbusServer(port, ["cam"], host="127.0.0.1")


def test_a_plc_reads_what_the_run_scored(spotted_frames, tiny_bundle, tmp_path):
    """`edge-ad run --modbus-port`, a folder of real cells with a spot in some, played in a loop:
    the registers a client reads are those of the frame they name, as the events file has it
    (score, threshold, verdict, counts so far), the alarm latch is set, and SIGTERM ends the run
    and the PLC's connection."""
    port, events = _free_port(), tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle), "--input", str(spotted_frames),
         "--input-loop", "-1", "--alarm-frames", "2", "--events", str(events),
         "--modbus-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        client = None
        while client is None and time.monotonic() < deadline:
            attempt = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
            client = attempt if attempt.connect() else None
            time.sleep(0.2)
        assert client is not None, "the run never served Modbus"
        while time.monotonic() < deadline and _registers(client, 0, 1)[0] < 2 * len(SPOT_PATTERN):
            time.sleep(0.1)
        block, latch = _registers(client, 0, REGISTERS_PER_SOURCE), _coils(client, 1)
        assert block[0] >= 2 * len(SPOT_PATTERN), "the run scored too few frames in a minute"
        frame = block[6] << 16 | block[7]
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        upto = [e for e in lines if e["event"] == "frame" and e["frame"] <= frame]
        event = upto[-1]
        assert event["frame"] == frame
        assert block[1] == (2 if event["alarm"] else 1 if event["anomaly"] else 0)
        assert block[2] == min(round(event["score"] * 1000), 0xFFFF) and block[3] == round(event["threshold"] * 1000)
        assert block[0] == len(upto)
        assert block[4] == sum(e["anomaly"] for e in upto) and block[5] == sum(e["alarm"] for e in upto)
        assert block[5] >= 3 and latch == [True]  # three alarm frames per pass over the folder
        assert block[8] == 0 and block[9] < 50
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0, log
    assert f"modbus: serving on port {port}: {spotted_frames} input registers 0-15, coil 0" in log
    with pytest.raises(ConnectionException):
        client.read_input_registers(0, count=1)
    client.close()
