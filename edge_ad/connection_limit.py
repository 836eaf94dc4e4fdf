"""At most so many connections at once to the run's servers (its RTSP and browser outputs, its
metrics port, its OPC UA server through asyncua's own limit); one past them is closed as it is
accepted.

Each connection holds a file descriptor (and an HTTP one a thread) until it ends, and a service
has 1,024 descriptors in all, for its snapshots, events files and cameras too: 1,020
connections to the Modbus port, before it had a limit, left the run none. A viewer's stream is
in use for as long as it is watched, so the newcomer is the one refused (the Modbus server,
whose clients poll, closes its least used connection instead).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading

from .sinks import ReportDue

log = logging.getLogger("edge_ad.connection_limit")

# A line's players, browsers, HMIs and scrapers: the page at / of N sources holds about N (each
# asks for its next picture as the last comes), so 8 screens of 8 cameras fit; four such ports
# leave the run most of a service's 1,024 file descriptors.
MAX_CONNECTIONS = 64
# Connections the system holds until the server takes them. The 5 of socketserver and
# gst-rtsp-server filled with a burst (a browser's requests for a page, each a connection):
# past them the system drops the request to connect and the client asks again a second later.
LISTEN_BACKLOG = 64
# A request takes milliseconds: a connection silent this long (thousands would hold a thread each)
# is closed, by the browser outputs and the metrics port alike.
REQUEST_S = 10.0
# What the browser outputs and the metrics port answer as their Server header: Python's own,
# "BaseHTTP/0.6 Python/3.11.7", is the version disclosure that plants' network scanners flag.
SERVER_NAME = "edge-ad"


class RefusedConnections:
    """Says the connections `what` (a server, in the log) closed for being past the limit."""

    def __init__(self, what: str):
        self.what = what
        self._count, self._report_due = 0, ReportDue()

    def refused(self, address: str, limit: int) -> None:
        self._count += 1
        if self._report_due():
            log.warning("%s: %d connections open, the most there may be: closed a new one from %s (%d refused "
                        "since the run started: more clients at once than that, or one that leaves its "
                        "connections open)", self.what, limit, address, self._count)


class ConnectionLimit:
    """A mixin for a socketserver server, before ThreadingMixIn (or a class that has it); set
    `refusals` to name the server in the log."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args, **kwargs):
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self.refusals = RefusedConnections("a server")
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        with self._open_lock:
            full = len(self._open) >= MAX_CONNECTIONS
            if not full:
                self._open.add(request)
        if full:
            self.refusals.refused(client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        """A client gone mid-answer (a tab closed or reloaded while its pictures came, a cable
        pulled: the connection reset) or silent till REQUEST_S (one that connects and waits) is
        nobody's error: socketserver printed 25 lines of traceback to stderr, the service's
        journal, for each. Anything else is logged, with its traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        log.exception("%s: answering %s failed", self.refusals.what, client_address[0])

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)
