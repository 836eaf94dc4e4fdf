"""What the line's PLC sees of `edge-ad run --modbus-port`: each source's alarms, acknowledged as a
PLC acknowledges them (0 written to the source's latch coil), a camera whose picture froze and
moves again (its discrete input), and at the end its frames and state. With CALIBRATE (a source's number), it first asks the run to calibrate that source on its
next frames (1 written to its register +11: good parts must pass the camera meanwhile) and prints
how that goes. To check the wiring and the register map (README) before the PLC program is
written. Needs pymodbus (pip install pymodbus).

    python examples/plc_modbus.py HOST[:PORT] [SOURCES] [SECONDS] [CALIBRATE]
"""

import sys
import time

from pymodbus.client import ModbusTcpClient

STATES = ["idle", "calibrating", "calibrated", "refused (the run's log says why)"]  # register +11

if not 2 <= len(sys.argv) <= 5:
    sys.exit(__doc__)
host, _, port = sys.argv[1].partition(":")
sources = int(sys.argv[2]) if len(sys.argv) > 2 else 1  # in the order of --input or of the --sources file
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
calibrate = int(sys.argv[4]) if len(sys.argv) > 4 else None

client = ModbusTcpClient(host, port=int(port or 502))
if not client.connect():
    sys.exit(f"{sys.argv[1]}: no Modbus server answers there (edge-ad run --modbus-port PORT)")
if calibrate is not None:
    if client.write_register(16 * calibrate + 11, 1).isError():
        sys.exit(f"source {calibrate}: the run refused to calibrate it (is there such a source?)")
    print(f"source {calibrate}: calibration asked")
shown = None  # the calibration's state last printed
frozen = [False] * sources  # as last printed
end = time.monotonic() + seconds
while time.monotonic() < end:
    latches = client.read_coils(0, count=sources).bits
    for i in range(sources):
        if latches[i]:
            r = client.read_input_registers(16 * i, count=10).registers
            print(f"source {i}: ALARM  frame {r[6] << 16 | r[7]}  score {r[2] / 1000:.3f} (threshold {r[3] / 1000:.3f})"
                  f"  alarms so far {r[5]}")
            client.write_coil(i, False)  # acknowledged: the latch waits for the next alarm
    now_frozen = client.read_discrete_inputs(0, count=sources).bits[:sources]
    for i in range(sources):
        if now_frozen[i] != frozen[i]:
            print(f"source {i}: " + ("its picture is FROZEN: look at the camera" if now_frozen[i] else
                                     "its picture moves again"))
    frozen = now_frozen
    if calibrate is not None:
        now, kept = client.read_input_registers(16 * calibrate + 11, count=2).registers
        if now != shown:
            shown = now
            print(f"source {calibrate}: calibration {STATES[now]}, {kept} frames kept")
    time.sleep(0.1)  # a PLC's poll cycle
for i in range(sources):
    r = client.read_input_registers(16 * i, count=16).registers
    state = ["normal", "anomalous", "alarm"][r[1]]
    silent = "no frame yet" if r[9] == 0xFFFF else f"last frame {r[9] / 10:.1f} s ago"
    judged = f"bundle {r[13]:04x}{r[14]:04x}, calibration " + (f"{r[15]:04x}" if r[15] else "of the bundle")
    print(f"source {i}: {r[0]} frames scored, the last ({r[6] << 16 | r[7]}) {state} by {judged}; {silent}")
client.close()
