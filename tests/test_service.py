"""`edge-ad run` under systemd: READY, the watchdog from the scoring loop, STATUS, STOPPING,
spoken to a real unix datagram socket as systemd listens on one."""

import configparser
import os
import shlex
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from edge_ad.cli import build_parser
from edge_ad.detector import Detector
from edge_ad.runner import RunConfig, run
from edge_ad.service import ServiceNotifier
from edge_ad.service_unit import UNIT_TEMPLATE

from conftest import check_with_systemd
from edge_ad.streams import Stream


class Manager:
    """A stand-in for systemd's end of $NOTIFY_SOCKET: collects (arrival time, fields)."""

    def __init__(self, address: str):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        self.socket.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def close(self) -> list[tuple[float, dict[str, str]]]:
        time.sleep(0.1)  # the last datagrams in flight
        self._stop.set()
        self._thread.join()
        self.socket.close()
        return self.messages

    def pings(self) -> list[float]:
        return [t for t, fields in self.messages if fields.get("WATCHDOG") == "1"]


@pytest.fixture
def manager(tmp_path):
    manager = Manager(str(tmp_path / "notify"))
    yield manager
    if not manager._stop.is_set():
        manager.close()


def test_messages_and_their_pace(manager, tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("edge_ad.service.time.monotonic", lambda: clock[0])
    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = ServiceNotifier(environ)
    assert notifier.watchdog_s == 2.0 and notifier.interval_s == 1.0  # pinged at half the timeout
    notifier.ready("scoring line1")
    for step in range(1, 31):  # 3 s of loop turns every 0.1 s
        clock[0] = 100.0 + 0.1 * step
        notifier.alive(lambda: f"line1 {step} frames")
    notifier.stopping("stopping")
    notifier.close()
    messages = [fields for _, fields in manager.close()]
    assert messages[0] == {"READY": "1", "STATUS": "scoring line1"}
    assert messages[1:4] == [{"WATCHDOG": "1", "STATUS": f"line1 {n} frames"} for n in (10, 20, 30)]
    assert messages[4:] == [{"STOPPING": "1", "STATUS": "stopping"}]


def test_no_watchdog_for_another_process_and_silence_outside_systemd(manager, tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("edge_ad.service.time.monotonic", lambda: clock[0])
    notifier = ServiceNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000",
                                "WATCHDOG_PID": str(os.getpid() + 1)})  # systemd meant the parent shell
    assert notifier.watchdog_s is None
    notifier.ready("up")
    clock[0] = 6.0
    notifier.alive(lambda: "status only")
    assert [fields for _, fields in manager.close()] == [{"READY": "1", "STATUS": "up"}, {"STATUS": "status only"}]
    outside = ServiceNotifier({})
    outside.ready("up")  # nothing to send to, nothing raised
    assert outside.watchdog_s is None


def test_an_abstract_socket_address(monkeypatch):
    name = f"edge-ad-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    notifier = ServiceNotifier({"NOTIFY_SOCKET": "@" + name})
    notifier.ready("up")
    assert server.recv(4096) == b"READY=1\nSTATUS=up"
    server.close()
    notifier.close()


class _Slow:
    """A detector whose every graph call hangs `seconds` first, as a wedged one would."""

    def __init__(self, detector: Detector, seconds: float):
        self.detector, self.seconds = detector, seconds

    def frame_grid_maps(self, images, color="BGR"):
        time.sleep(self.seconds)
        return self.detector.frame_grid_maps(images, color)

    def __getattr__(self, name):
        return getattr(self.detector, name)


def _after_pings(manager: Manager, count: int, timeout_s: float) -> threading.Event:
    """An event set once `manager` has `count` watchdog pings, or after `timeout_s`."""
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while len(manager.pings()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="GStreamer is not installed")
def test_the_watchdog_follows_the_scoring_loop_not_the_camera(tiny_bundle, manager, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s (the loop turns every 0.1 s or faster)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    detector = Detector.load(tiny_bundle)
    # A camera that sends nothing (an RTP port nobody streams to): the loop waits, and pings.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Stopped by pings, not by the clock: a loaded machine may take a second to start the run.
    run(detector, [Stream(f"rtp://@:{port}", name="away")], RunConfig(), _after_pings(manager, 6, 20.0))
    away = manager.pings()
    assert len(away) >= 6 and max(b - a for a, b in zip(away, away[1:])) < 0.35
    # A loop stuck 0.6 s in every detector call: no ping while it is stuck, so systemd's
    # watchdog (0.4 s here) would restart it.
    before = len(manager.messages)
    run(_Slow(detector, 0.6), [Stream("test://ball?width=64&height=48&fps=30", name="line1")],
        RunConfig(max_frames=3))
    messages = manager.close()[before:]
    assert messages[0][1] == {"READY": "1", "STATUS": "scoring line1"}
    assert messages[-1][1]["STOPPING"] == "1"
    stuck = [t for t, fields in messages if fields.get("WATCHDOG") == "1"]
    assert stuck and max(b - a for a, b in zip(stuck, stuck[1:])) >= 0.55
    assert any("line1" in fields["STATUS"] and "frames" in fields["STATUS"] for _, fields in messages[1:-1])


def _example_service() -> configparser.SectionProxy:
    """The [Service] section of edge_ad/edge-ad.service (as in the package, with its example
    command line), keys as written."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str
    unit.read(UNIT_TEMPLATE)
    return unit["Service"]


def test_the_example_unit_runs_a_valid_edge_ad_command_under_the_watchdog():
    """edge_ad/edge-ad.service: what systemd needs for the above, and a command line that
    `edge-ad run` accepts (so the example does not rot as the options change)."""
    service = _example_service()
    assert (service["Type"], service["Restart"]) == ("notify", "on-failure") and int(service["WatchdogSec"]) >= 10
    assert shlex.split(service["ExecReload"]) == ["/bin/kill", "-HUP", "$MAINPID"]  # the run's reload signal
    argv = shlex.split(service["ExecStart"].replace("\\\n", " "))
    assert argv[0].endswith("/.venv/bin/edge-ad") and argv[1] == "run"
    args = build_parser().parse_args(argv[1:])
    state = Path("/var/lib") / service["StateDirectory"]  # systemd creates it, writable for the run
    assert all(Path(p).parent == state for p in (args.events, args.snapshots, args.metrics))
    assert dict(line.split("=", 1) for line in service["Environment"].split())["EDGE_AD_CACHE"] == (
        "/var/cache/" + service["CacheDirectory"])


def test_the_example_unit_runs_as_a_user_of_its_own_with_what_the_run_needs(tmp_path):
    """Not root (a flaw in one of the run's servers would give away the device), but with the two
    powers the run uses: ports below 1024 (Modbus's 502) and UDP video's forced receive buffer
    (udpsrc's SO_RCVBUFFORCE); /tmp and /dev left as they are (nvargus-daemon's socket, the GPU and
    cameras); the user made as the unit's head says, at home in the state folder."""
    text, service = UNIT_TEMPLATE.read_text(), _example_service()
    assert service["User"] not in ("root", "0")
    useradd = next(shlex.split(line.lstrip("# ")) for line in text.splitlines() if "useradd" in line)
    assert useradd[-1] == service["User"] and "video" in useradd[useradd.index("--groups") + 1].split(",")
    assert useradd[useradd.index("--home-dir") + 1] == "/var/lib/" + service["StateDirectory"]
    powers = {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"}
    assert set(service["AmbientCapabilities"].split()) == set(service["CapabilityBoundingSet"].split()) == powers
    assert service["NoNewPrivileges"] == "yes"
    assert not {"PrivateTmp", "PrivateDevices", "DynamicUser"} & set(service)
    runnable = tmp_path / "edge-ad.service"  # with a command that is there
    runnable.write_text(text.replace("/opt/edge-ad/.venv/bin/edge-ad", shutil.which("true")))
    check_with_systemd(runnable)
