"""`edge-ad run --modbus-port N`: each source's last result as Modbus TCP registers, for the line's PLC.

Smart cameras on a line serve their results over Modbus TCP and the PLC polls them (no broker or
gateway in between); edge-ad does the same. Source i (0, 1, ... in the order of `--input` or of
the `--sources` file) has the 16 input registers from address 16 * i (function 4; the same values
through function 3, holding registers, for clients that read only those):

    +0      frames scored (mod 65536): changes with every frame, for the PLC's watchdog
    +1      the last frame: 0 normal, 1 anomalous, 2 alarm (anomalous, and --alarm-frames in a row)
    +2      its score x 1000 (0 to 65535)
    +3      the threshold it was judged by x 1000
    +4      anomalous frames (mod 65536)
    +5      alarm frames (mod 65536)
    +6, +7  its frame number (32 bits, high word first)
    +8      the variant whose bundle scored it (1 for the first --bundle NAME=..., 2 ...; 0 for one bundle)
    +9      tenths of a second since a frame was last scored (65535 before the first): a camera away
    +10     the variant the line makes now, as the PLC writes it (function 6 or 16; with one bundle
            per variant only): i for the i-th NAME=BUNDLE, whose bundle alone then scores the
            source's frames (as MQTT's TOPIC/SOURCE/variant), 0 for any (every bundle scores)
    +11     calibration on the line (edge_ad.line_calibration): the PLC writes 1 to have the run
            calibrate the source on its next frames, which must show good parts, or 0 to cancel;
            it reads 0 idle, 1 calibrating, 2 calibrated (the new threshold is in use), 3 refused
            (the log says why)
    +12     normal frames kept so far by that calibration (mod 65536)
    +13, +14  the bundle that judged it: the first 8 hex digits of its bundle.yaml's SHA-256, as
            the events and `doctor` name it (32 bits, high word first), for a part's record of
            which model passed it
    +15     its calibration: the first 4 hex digits of its calibration.yaml's SHA-256 (0: the
            bundle's own numbers; a calibration whose digits are 0000 reads 1)

and coil i, its alarm latch: 1 from the source's alarm frame on, until the PLC writes 0 (function
5 or 15), so that an alarm between two polls is not missed (+5 says how many there were); and
discrete input i (function 2), 1 while the source's picture is frozen (edge_ad.freeze: a camera
whose frames come on time but show one picture, which every register above would pass).

The server is the standard library's socketserver with the few functions above: MBAP framing, read
coils and discrete inputs (1, 2), read holding and input registers (3, 4), write one or several coils (5, 15) and the
variant and calibration registers (6, 16); other functions get exception 1, addresses outside the
map or writes to the run's own registers exception 2, bad counts or values exception 3. Any unit
id is answered.

Modbus has no login: anyone who reaches the port can write the variant, start a calibration on
the line or clear an alarm latch. `--modbus-allow` names the PLCs' and HMIs' addresses or
networks; a connection from elsewhere is closed as it is accepted, and said once per address.
pymodbus's server and datastore API was renamed in 3.10 and deprecated for a simulator API in
3.16, and the runtime needs nothing more than this; the tests read the server with pymodbus's
client.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .allowed_clients import AllowedClients
from .connection_limit import LISTEN_BACKLOG
from .errors import EdgeAdError, listen_reason
from .sinks import ReportDue

log = logging.getLogger("edge_ad.modbus")

REGISTERS_PER_SOURCE = 16
VARIANT_REGISTER, CALIBRATE_REGISTER = 10, 11  # of each source's block: the ones the PLC writes
NEVER = 0xFFFF  # register +9 before a source's first frame, and its largest value
NORMAL, ANOMALOUS, ALARM = 0, 1, 2
MAX_READ_REGISTERS, MAX_READ_BITS, MAX_WRITE_COILS, MAX_WRITE_REGISTERS = 125, 2000, 1968, 123  # per request
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3
# TCP keepalive: the connection of a PLC that went without closing it (rebooted, unplugged) is
# dropped after about IDLE + COUNT * INTERVAL seconds, not Linux's two hours.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 30, 10, 3
# Connections open at once. A new one beyond them closes the one that has gone longest without a
# request, as the Modbus TCP implementation guide has a server do: a line has a PLC, an HMI and a
# SCADA or two, and a client that opens connections and never closes them (or anyone on the
# network) cannot take a thread and a file descriptor each until the run has none left.
MAX_CONNECTIONS = 16


@dataclass
class _Last:
    """What a source's registers show: its last scored frame and its counts."""

    frames: int = 0
    verdict: int = NORMAL
    score: float = 0.0
    threshold: float = 0.0
    anomalies: int = 0
    alarms: int = 0
    frame: int = 0
    variant: int = 0
    scored_at: float | None = None  # time.monotonic()
    calibration: int = 0  # register +11: the state of a calibration on the line
    calibration_frames: int = 0
    bundle_id: int = 0  # registers +13, +14: the first 32 bits of the bundle.yaml's SHA-256
    calibration_id: int = 0  # register +15: the first 16 bits of the calibration.yaml's


def _ids(judged_by: tuple[str, str | None] | None) -> tuple[int, int]:
    """Registers +13/+14 and +15 from Bundle.short_ids (hex digits); 0 where not given."""
    if judged_by is None:
        return 0, 0
    bundle, calibration = judged_by
    return int(bundle[:8], 16), max(int(calibration[:4], 16), 1) if calibration else 0


def _milli(value: float) -> int:
    return min(max(round(value * 1000), 0), 0xFFFF)


class ModbusServer:
    """Serves the registers and alarm latches of `sources` (names, in register order) on `port`
    (0: any free port, see `.port`); `variants` gives, per source, its bundles' variant names in
    order (registers +8 and +10); `on_variant(source, variant or None)` is told what the PLC writes
    into a source's register +10, and `on_calibrate(source, start)` a 1 (True) or 0 written into
    its register +11 (none: the register cannot be written)."""

    def __init__(self, port: int, sources: Sequence[str], variants: dict[str, Sequence[str]] | None = None,
                 host: str = "0.0.0.0", on_variant: Callable[[str, str | None], None] | None = None,
                 on_calibrate: Callable[[str, bool], None] | None = None, allowed: Sequence[str] | None = None):
        self.sources = list(sources)
        self.allowed = modbus_clients(allowed) if allowed is not None else None
        self.variants = {name: list(names) for name, names in (variants or {}).items()}
        self.on_variant, self.on_calibrate = on_variant, on_calibrate
        self._last = {name: _Last() for name in self.sources}
        self._latches = [False] * len(self.sources)
        self._frozen = [False] * len(self.sources)
        self._made = [0] * len(self.sources)  # register +10: the variant the PLC says the line makes
        self._lock = threading.Lock()
        try:
            self._server = _TcpServer((host, port), _Connection, self)
        except OSError as exc:
            raise EdgeAdError(f"--modbus-port {port}: cannot listen ({listen_reason(exc)})") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="modbus", daemon=True)
        self._thread.start()
        log.info("modbus: serving on port %d%s: %s", self.port,
                 f" to {self.allowed} only" if self.allowed is not None else "", "; ".join(
            f"{name} input registers {REGISTERS_PER_SOURCE * i}-{REGISTERS_PER_SOURCE * (i + 1) - 1}, coil and "
            f"discrete input {i}"
            for i, name in enumerate(self.sources)))

    def update(self, source: str, frame: int, score: float, threshold: float, anomaly: bool, alarm: bool,
               variant: str | None, anomalies: int, alarms: int, judged_by: tuple[str, str | None] | None = None
               ) -> None:
        """A scored frame of `source`, with its counts so far and the short SHA-256 of the bundle and
        calibration that judged it (Bundle.short_ids); an alarm sets the source's latch."""
        variants = self.variants.get(source, [])
        with self._lock:
            last = self._last[source]
            last.frames += 1
            last.verdict = ALARM if alarm else ANOMALOUS if anomaly else NORMAL
            last.score, last.threshold, last.frame = score, threshold, frame
            last.anomalies, last.alarms = anomalies, alarms
            last.variant = variants.index(variant) + 1 if variant in variants else 0
            last.scored_at = time.monotonic()
            last.bundle_id, last.calibration_id = _ids(judged_by)
            if alarm:
                self._latches[self.sources.index(source)] = True

    def set_calibration(self, source: str, state: int, frames: int) -> None:
        """Registers +11 and +12 of `source`: its calibration on the line and the frames it kept."""
        with self._lock:
            last = self._last[source]
            last.calibration, last.calibration_frames = state, frames

    def set_frozen(self, source: str, frozen: bool) -> None:
        """Discrete input of `source`: whether its picture is frozen now."""
        with self._lock:
            self._frozen[self.sources.index(source)] = frozen

    def registers(self) -> list[int]:
        """Every source's registers as the PLC reads them now."""
        now = time.monotonic()
        values: list[int] = []
        with self._lock:
            for name, made in zip(self.sources, self._made):
                last = self._last[name]
                silent = NEVER if last.scored_at is None else min(round((now - last.scored_at) * 10), NEVER)
                values += [last.frames & 0xFFFF, last.verdict, _milli(last.score), _milli(last.threshold),
                           last.anomalies & 0xFFFF, last.alarms & 0xFFFF, (last.frame >> 16) & 0xFFFF,
                           last.frame & 0xFFFF, last.variant, silent, made, last.calibration,
                           last.calibration_frames & 0xFFFF, last.bundle_id >> 16, last.bundle_id & 0xFFFF,
                           last.calibration_id]
        return values

    def latches(self) -> list[bool]:
        with self._lock:
            return list(self._latches)

    def frozen(self) -> list[bool]:
        with self._lock:
            return list(self._frozen)

    def write_latches(self, start: int, values: Sequence[bool]) -> None:
        with self._lock:
            self._latches[start : start + len(values)] = values

    def answer(self, pdu: bytes) -> bytes:
        """The response PDU to a request PDU (function code and data)."""
        function, data = pdu[0], pdu[1:]
        if function in (1, 2, 3, 4):
            if len(data) != 4:
                return _error(function, ILLEGAL_VALUE)
            start, count = struct.unpack(">HH", data)
            if function in (1, 2):
                return self._read_bits(function, start, count, self.latches() if function == 1 else self.frozen())
            return self._read_registers(function, start, count)
        if function == 5:
            if len(data) != 4:
                return _error(function, ILLEGAL_VALUE)
            address, value = struct.unpack(">HH", data)
            if value not in (0x0000, 0xFF00):
                return _error(function, ILLEGAL_VALUE)
            if address >= len(self.sources):
                return _error(function, ILLEGAL_ADDRESS)
            self.write_latches(address, [value == 0xFF00])
            return pdu
        if function == 15:
            return self._write_coils(data)
        if function == 6:
            if len(data) != 4:
                return _error(function, ILLEGAL_VALUE)
            address, value = struct.unpack(">HH", data)
            problem = self._write(address, [value])
            return pdu if problem is None else _error(function, problem)
        if function == 16:
            return self._write_registers(data)
        return _error(function, ILLEGAL_FUNCTION)

    def _read_registers(self, function: int, start: int, count: int) -> bytes:
        if not 1 <= count <= MAX_READ_REGISTERS:
            return _error(function, ILLEGAL_VALUE)
        values = self.registers()
        if start + count > len(values):
            return _error(function, ILLEGAL_ADDRESS)
        return struct.pack(f">BB{count}H", function, 2 * count, *values[start : start + count])

    def _read_bits(self, function: int, start: int, count: int, bits: list[bool]) -> bytes:
        """Coils (1) or discrete inputs (2) `start` to `start + count - 1` of `bits`."""
        if not 1 <= count <= MAX_READ_BITS:
            return _error(function, ILLEGAL_VALUE)
        if start + count > len(bits):
            return _error(function, ILLEGAL_ADDRESS)
        packed = _pack_bits(bits[start : start + count])
        return bytes([function, len(packed)]) + packed

    def _write_coils(self, data: bytes) -> bytes:
        if len(data) < 5:
            return _error(15, ILLEGAL_VALUE)
        start, count, size = struct.unpack(">HHB", data[:5])
        if not 1 <= count <= MAX_WRITE_COILS or size != (count + 7) // 8 or len(data) != 5 + size:
            return _error(15, ILLEGAL_VALUE)
        if start + count > len(self.sources):
            return _error(15, ILLEGAL_ADDRESS)
        bits = [bool(data[5 + i // 8] >> (i % 8) & 1) for i in range(count)]
        self.write_latches(start, bits)
        return struct.pack(">BHH", 15, start, count)

    def _write_registers(self, data: bytes) -> bytes:
        if len(data) < 5:
            return _error(16, ILLEGAL_VALUE)
        start, count, size = struct.unpack(">HHB", data[:5])
        if not 1 <= count <= MAX_WRITE_REGISTERS or size != 2 * count or len(data) != 5 + size:
            return _error(16, ILLEGAL_VALUE)
        problem = self._write(start, struct.unpack(f">{count}H", data[5:]))
        return struct.pack(">BHH", 16, start, count) if problem is None else _error(16, problem)

    def _write(self, start: int, values: Sequence[int]) -> int | None:
        """Registers written by the PLC: every address must be a +10 (of a source with variants;
        a value one of its variants or 0) or a +11 (a value 0 or 1); else nothing is written and
        the exception code is returned."""
        writes = []
        for address, value in enumerate(values, start):
            index, offset = divmod(address, REGISTERS_PER_SOURCE)
            names = self.variants.get(self.sources[index], []) if index < len(self.sources) else []
            if offset == VARIANT_REGISTER and names and self.on_variant is not None:
                if value > len(names):
                    return ILLEGAL_VALUE
            elif offset == CALIBRATE_REGISTER and index < len(self.sources) and self.on_calibrate is not None:
                if value > 1:
                    return ILLEGAL_VALUE
            else:
                return ILLEGAL_ADDRESS
            writes.append((index, offset, value, names))
        for index, offset, value, names in writes:
            name = self.sources[index]
            if offset == CALIBRATE_REGISTER:
                log.info("modbus: the PLC asks to %s %s on its next frames",
                         "calibrate" if value else "stop calibrating", name)
                self.on_calibrate(name, bool(value))
                continue
            variant = names[value - 1] if value else None
            with self._lock:
                self._made[index] = value
            log.info("modbus: the PLC says %s makes %s", name, variant or "any variant (all bundles score)")
            self.on_variant(name, variant)
        return None

    def close(self) -> None:
        """Stop serving and close the PLC's connections."""
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=2.0)


def _error(function: int, code: int) -> bytes:
    return bytes([function | 0x80, code])


def _pack_bits(bits: Sequence[bool]) -> bytes:
    """Coils as Modbus packs them: eight to a byte, the first in the lowest bit."""
    packed = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        packed[i // 8] |= bit << (i % 8)
    return bytes(packed)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def verify_request(self, request, client_address) -> bool:
        return self.modbus.allowed is None or self.modbus.allowed.allows(client_address[0])

    def __init__(self, address: tuple[str, int], handler: type, modbus: ModbusServer):
        self.modbus = modbus
        self.connections: dict[socket.socket, float] = {}  # each open one: time.monotonic() of its last request
        self.connections_lock = threading.Lock()
        self._closed_for_room, self._report_due = 0, ReportDue()
        self._not_modbus, self._not_modbus_due = 0, ReportDue()
        super().__init__(address, handler)

    def not_modbus(self, client: str) -> None:
        """Said of a connection closed for a frame that is not Modbus TCP: once, then at most every
        REPORT_EVERY_S (a client set up wrongly tries again and again), with the count."""
        with self.connections_lock:
            self._not_modbus += 1
            if not self._not_modbus_due():
                return
            log.warning("modbus: %s sent a frame that is not Modbus TCP (a client set to Modbus RTU over TCP, "
                        "or not a Modbus client?); closing its connection (%d closed for this since the run started)",
                        client, self._not_modbus)

    def process_request(self, request, client_address) -> None:
        with self.connections_lock:
            if len(self.connections) >= MAX_CONNECTIONS:
                self._close_least_used(client_address[0])
            self.connections[request] = time.monotonic()
        super().process_request(request, client_address)

    def _close_least_used(self, newcomer: str) -> None:
        least_used = min(self.connections, key=self.connections.__getitem__)
        idle_s = time.monotonic() - self.connections.pop(least_used)
        try:
            held_by = least_used.getpeername()[0]
            least_used.shutdown(socket.SHUT_RDWR)  # its thread's read ends, and it closes
        except OSError:  # already gone
            return
        self._closed_for_room += 1
        if self._report_due():
            log.warning("modbus: %d connections open, the most there may be: closed the one from %s, "
                        "without a request for %.0f s, for a new one from %s (%d closed for room since "
                        "the run started: a client that opens connections and does not close them?)",
                        MAX_CONNECTIONS, held_by, idle_s, newcomer, self._closed_for_room)

    def used(self, connection: socket.socket) -> None:
        with self.connections_lock:
            if connection in self.connections:  # not closed for room meanwhile
                self.connections[connection] = time.monotonic()

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.connections.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:  # already gone
                    pass


class _Connection(socketserver.BaseRequestHandler):
    """One client (a PLC, an HMI): requests answered in turn until it hangs up."""

    server: _TcpServer

    def setup(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                              ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
            if hasattr(socket, option):  # Linux has all three
                self.request.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)

    def handle(self) -> None:
        try:
            while True:
                header = _receive(self.request, 7)
                if header is None:
                    return
                transaction, protocol, length, unit = struct.unpack(">HHHB", header)
                if protocol != 0 or not 2 <= length <= 254:  # not Modbus TCP: nothing sensible to answer
                    self.server.not_modbus(self.client_address[0])
                    return
                pdu = _receive(self.request, length - 1)
                if pdu is None:
                    return
                self.server.used(self.request)
                response = self.server.modbus.answer(pdu)
                self.request.sendall(struct.pack(">HHHB", transaction, 0, len(response) + 1, unit) + response)
        except OSError:  # the client went away mid-request
            return


def _receive(connection: socket.socket, size: int) -> bytes | None:
    """Exactly `size` bytes, or None when the connection closes first."""
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def modbus_clients(specs: Sequence[str]) -> AllowedClients:
    """The PLCs and HMIs --modbus-allow names."""
    return AllowedClients(specs, "--modbus-allow", "the PLCs and HMIs", "modbus")
