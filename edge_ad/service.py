"""`edge-ad run` as a systemd service: readiness, a watchdog and a status line.

Under a unit with `Type=notify` and `WatchdogSec=` (edge_ad/edge-ad.service, which `edge-ad
service` writes), the run says READY=1 once every source is open, sends WATCHDOG=1 from its
scoring loop, so systemd restarts a run whose loop hangs (a stuck graph call, a wedged driver)
but not one whose camera is away (the loop goes on while the camera reconnects), keeps a STATUS=
line for `systemctl status`, and says STOPPING=1 on its way out.

The protocol is one datagram per message to the socket named by $NOTIFY_SOCKET (sd_notify(3)),
which systemd documents as stable for programs to speak themselves. It is written out here
because the Python bindings (systemd-python) build against libsystemd's headers, which a Jetson
image need not have. Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("edge_ad.service")

STATUS_INTERVAL_S = 5.0  # how often the status line is renewed without a watchdog


class ServiceNotifier:
    """Messages to the service manager named by `environ` (the process environment)."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        self._socket: socket.socket | None = None
        self._address = "\0" + address[1:] if address.startswith("@") else address  # "@": abstract namespace
        if address.startswith(("/", "@")):
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        elif address:
            log.warning("NOTIFY_SOCKET=%s: not a unix socket; systemd will not hear from this run", address)
        # The watchdog is ours when systemd set it for this process (WATCHDOG_PID, where given).
        watchdog_usec, watchdog_pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        mine = watchdog_pid is None or watchdog_pid == str(os.getpid())
        self.watchdog_s = int(watchdog_usec) / 1e6 if watchdog_usec and mine and self._socket else None
        # Pinged at half the timeout, as sd_watchdog_enabled(3) advises.
        self.interval_s = self.watchdog_s / 2 if self.watchdog_s else STATUS_INTERVAL_S
        self._sent = -float("inf")
        self._failed = False

    def _send(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:  # the manager went away: the run goes on, said once
            if not self._failed:
                log.warning("NOTIFY_SOCKET: cannot tell systemd (%s)", exc.strerror or exc)
            self._failed = True

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}")
        self._sent = time.monotonic()

    def alive(self, status: Callable[[], str]) -> None:
        """Called from the scoring loop on every turn: the watchdog ping and the status line,
        at most once per interval."""
        now = time.monotonic()
        if self._socket is None or now - self._sent < self.interval_s:
            return
        self._sent = now
        self._send(*(["WATCHDOG=1"] if self.watchdog_s else []), f"STATUS={status()}")

    def stopping(self, status: str) -> None:
        self._send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
