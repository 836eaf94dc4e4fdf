"""The clients a server without a login answers: `--modbus-allow` (Modbus has none) and
`--metrics-allow` (Prometheus scrapes without one). A connection from another address is closed as
it is accepted, and said once per address (a client that is refused tries again every few seconds).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Sequence

from .errors import EdgeAdError
from .login_attempts import KEPT_ADDRESSES

log = logging.getLogger("edge_ad.allowed_clients")


class AllowedClients:
    """The addresses and networks `option` names (10.0.7.21, 10.0.7.0/24; commas or repeats), of
    `who`, the clients of the server `server` (the name its log lines start with)."""

    def __init__(self, specs: Sequence[str], option: str, who: str, server: str):
        self.option, self.server = option, server
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for spec in filter(None, (part.strip() for given in specs for part in given.split(","))):
            try:
                self.networks.append(ipaddress.ip_network(spec, strict=False))
            except ValueError as exc:
                raise EdgeAdError(f"{option} {spec}: not an IP address or network ({exc}); give the address of "
                                  f"{who}, as 10.0.7.21, or their network, as 10.0.7.0/24") from exc
        if not self.networks:
            raise EdgeAdError(f"{option}: give the addresses of {who} that may connect")
        self._refused: set[str] = set()
        self._lock = threading.Lock()  # servers ask from their threads

    def __str__(self) -> str:
        return ", ".join(map(str, self.networks))

    def allows(self, address: str) -> bool:
        """Whether a client at `address` may connect (an IPv4 client of an IPv6 socket as IPv4); a
        refused one is logged the first time."""
        client = ipaddress.ip_address(address)
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped:
            client = client.ipv4_mapped
        if any(client in network for network in self.networks):
            return True
        with self._lock:
            first = address not in self._refused
            if len(self._refused) >= KEPT_ADDRESSES:  # addresses by the thousand (an IPv6 network's): start again
                self._refused.clear()
            self._refused.add(address)
        if first:
            log.warning("%s: refused a connection from %s, which %s does not name (%s); said once per address",
                        self.server, address, self.option, self)
        return False
