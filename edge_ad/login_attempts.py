"""Wrong passwords limited (IEC 62443-3-3 SR 1.11, which plants' IT checks): after MAX_FAILURES wrong
logins in a row from one address (the outputs) or as one user (OPC UA, whose logins name no
address), further logins are refused for LOCKOUT_S without their password being checked, so that
a password cannot be guessed at the speed of the network. The first wrong login and each lockout
are logged, not every one; a right login starts the count again.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("edge_ad.login_attempts")

MAX_FAILURES = 5  # wrong logins in a row from one address before it is refused for a while
LOCKOUT_S = 60.0
KEPT_ADDRESSES = 10_000  # past this many failing addresses, those not locked out are forgotten


class LoginAttempts:
    """The wrong logins of each address (or user) at `what` (the servers' name in the log lines);
    `who` words a key in them ("from 10.0.7.99")."""

    def __init__(self, what: str, who: str = "from {}"):
        self.what, self.who = what, who
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()  # servers ask from their threads

    def refused_for(self, address: str) -> float:
        """How many seconds more `address` is refused, its password unchecked (0: not refused)."""
        with self._lock:
            return max(0.0, self._locked_until.get(address, 0.0) - time.monotonic())

    def failed(self, address: str) -> None:
        """A wrong user or password from `address`."""
        with self._lock:
            now = time.monotonic()
            if len(self._failures) >= KEPT_ADDRESSES:  # addresses by the thousand: forget the harmless ones
                self._failures = {a: n for a, n in self._failures.items() if self._locked_until.get(a, 0.0) > now}
                self._locked_until = {a: t for a, t in self._locked_until.items() if t > now}
            count = self._failures.get(address, 0) + 1
            self._failures[address] = 0 if count >= MAX_FAILURES else count
            if count >= MAX_FAILURES:
                self._locked_until[address] = now + LOCKOUT_S
        if count == 1:
            log.warning("%s: a wrong user or password %s", self.what, self.who.format(address))
        elif count >= MAX_FAILURES:
            log.warning("%s: %d wrong logins in a row %s: refused for %.0f s", self.what, count,
                        self.who.format(address), LOCKOUT_S)

    def succeeded(self, address: str) -> None:
        """A right login from `address`: its count starts again."""
        with self._lock:
            self._failures.pop(address, None)
