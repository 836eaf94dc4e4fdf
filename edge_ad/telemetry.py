"""Run metrics for a Prometheus scraper or a person: frames, drops, reconnects, anomalies,
sink errors, frames per second, latency percentiles and the bundle and threshold in use per source, and
beside them the board's temperatures and, on a Jetson, the power of its rails
(edge_ad.device.read_sensors).

`--metrics FILE` rewrites FILE atomically in the Prometheus text format (node_exporter's
textfile collector reads it; `cat` works too); `--metrics-port N` serves the same on
http://host:N/metrics, to the scrapers `--metrics-allow` names only when it is given.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Callable, Iterable, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, make_wsgi_app, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from .allowed_clients import AllowedClients
from .connection_limit import REQUEST_S, SERVER_NAME, ConnectionLimit, RefusedConnections
from .device import Sensors, read_sensors
from .errors import EdgeAdError, listen_reason
from .files import made_folder

WINDOW = 1000  # frames behind the latency percentiles and the frame rate


@dataclass
class SourceStats:
    """What happened to one source during a run."""

    name: str
    frames: int = 0
    anomalies: int = 0
    alarms: int = 0  # alarm frames: anomalous, and so were the --alarm-frames - 1 before them (edge_ad.runner)
    streak: int = 0  # anomalous frames in a row up to the last one
    dropped: int = 0
    reconnects: int = 0
    snapshots: int = 0
    failed: int = 0  # frames the detector could not score (logged and skipped)
    away: bool = False  # the source is being reconnected (edge_ad.sources), as last read
    error: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)  # in use, by variant ("" for a lone bundle)
    bundles: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # Bundle.short_ids in use, by variant
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    _done: deque = field(default_factory=lambda: deque(maxlen=WINDOW))

    def add(self, latency_ms: float, anomaly: bool, alarm_frames: int = 1) -> bool:
        """Count a scored frame; returns whether it raises an alarm: it is anomalous, and so were
        the `alarm_frames` - 1 frames of this source before it."""
        self.frames += 1
        self.anomalies += anomaly
        self.streak = self.streak + 1 if anomaly else 0
        alarm = self.streak >= alarm_frames
        self.alarms += alarm
        self.latencies_ms.append(latency_ms)
        self._done.append(time.monotonic())
        return alarm

    @property
    def fps(self) -> float:
        """Frames per second over the last WINDOW frames; 0 while the source is away, whose last
        frames' rate stood there (a dashboard's "fps below 1" never fired for a camera gone)."""
        if len(self._done) < 2 or self.away:
            return 0.0
        return (len(self._done) - 1) / max(self._done[-1] - self._done[0], 1e-9)

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0


class _Collector:
    def __init__(self, stats: Callable[[], Iterable[SourceStats]], sink_errors: Callable[[], dict[str, int]],
                 sensors: Callable[[], Sensors]):
        self.stats, self.sink_errors, self.sensors = stats, sink_errors, sensors

    def collect(self):
        counters = {
            name: CounterMetricFamily(f"edge_ad_{name}", text, labels=["source"])
            for name, text in (
                ("frames", "Frames scored"),
                ("anomalies", "Frames flagged anomalous"),
                ("alarms", "Anomalous frames that raised an alarm (--alarm-frames anomalous frames in a row)"),
                ("dropped", "Frames dropped because a newer one arrived first"),
                ("reconnects", "Reconnections of a live source"),
                ("failed", "Frames the detector could not score"),
            )
        }
        fps = GaugeMetricFamily("edge_ad_fps", "Frames per second over the last 1000 frames (0 while the source is "
                                "away)", labels=["source"])
        away = GaugeMetricFamily("edge_ad_away", "1 while the source is away: being reconnected, no frame since it "
                                 "failed", labels=["source"])
        latency = GaugeMetricFamily(
            "edge_ad_latency_ms", "Capture-to-result latency percentile over the last 1000 frames",
            labels=["source", "quantile"],
        )
        threshold = GaugeMetricFamily("edge_ad_threshold", "Image-score threshold in use (the site calibration's; "
                                      "it changes when the run reloads)", labels=["source", "variant"])
        bundle = InfoMetricFamily("edge_ad_bundle", "The bundle and calibration in use (the short SHA-256 of their "
                                  "files, as the events name them)", labels=["source", "variant"])
        for s in self.stats():
            for name, family in counters.items():
                family.add_metric([s.name], getattr(s, name))
            fps.add_metric([s.name], s.fps)
            away.add_metric([s.name], int(s.away))
            for q in (0.5, 0.99):
                latency.add_metric([s.name, str(q)], s.latency(100 * q))
            for variant, value in s.thresholds.items():
                threshold.add_metric([s.name, variant], value)
            for variant, (model, calibration) in s.bundles.items():
                bundle.add_metric([s.name, variant], {"bundle": model, "calibration": calibration or ""})
        errors = CounterMetricFamily("edge_ad_sink_errors", "Failed writes per sink", labels=["sink"])
        for sink, count in self.sink_errors().items():
            errors.add_metric([sink], count)
        sensors = self.sensors()
        temperature = GaugeMetricFamily("edge_ad_temperature_celsius", "Thermal zone temperature", labels=["zone"])
        for zone, celsius in sensors.temperatures_c.items():
            temperature.add_metric([zone], celsius)
        power = GaugeMetricFamily("edge_ad_power_watts", "Power of a rail of the board's INA3221 monitors",
                                  labels=["rail"])
        for rail, watts in sensors.power_w.items():
            power.add_metric([rail], watts)
        yield from (*counters.values(), fps, away, latency, threshold, bundle, errors, temperature, power)


class Telemetry:
    """Publishes the run's statistics to a file every `interval_s` and/or on an HTTP port."""

    def __init__(
        self,
        stats: Callable[[], Iterable[SourceStats]],
        sink_errors: Callable[[], dict[str, int]],
        path: Path | None = None,
        port: int | None = None,
        interval_s: float = 5.0,
        sensors: Callable[[], Sensors] = read_sensors,
        allowed: Sequence[str] | None = None,
        host: str = "0.0.0.0",
    ):
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(stats, sink_errors, sensors))
        self.path, self.interval_s = path, interval_s
        if path is not None:
            if path.is_dir():
                raise EdgeAdError(f"--metrics {path}: is a folder; give a file name (metrics.prom in it)")
            made_folder(path.parent, "metrics", f"--metrics {path}")
        self._written = -float("inf")
        self.server = None
        if port is not None:
            clients = metrics_clients(allowed) if allowed is not None else None
            try:
                self.server = make_server(host, port, _named(make_wsgi_app(self.registry)), _MetricsServer,
                                          handler_class=_QuietHandler)
            except OSError as exc:
                raise EdgeAdError(f"--metrics-port {port}: cannot listen ({listen_reason(exc)})") from exc
            self.server.clients = clients
            self.server.refusals = RefusedConnections(f"the metrics port {port}")
            threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True).start()

    def tick(self, force: bool = False) -> None:
        """Rewrite the metrics file when `interval_s` has passed (or now, with `force`)."""
        now = time.monotonic()
        if self.path is not None and (force or now - self._written >= self.interval_s):
            self._written = now
            write_to_textfile(str(self.path), self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def metrics_clients(specs: Sequence[str]) -> AllowedClients:
    """The Prometheus servers --metrics-allow names."""
    return AllowedClients(specs, "--metrics-allow", "the Prometheus servers", "metrics")


class _MetricsServer(ConnectionLimit, ThreadingMixIn, WSGIServer):
    """A request per thread (a slow scraper holds no other back), from `clients` only (None: any)."""

    daemon_threads = True
    clients: AllowedClients | None = None

    def verify_request(self, request, client_address) -> bool:
        return self.clients is None or self.clients.allows(client_address[0])


def _named(app: Callable) -> Callable:
    """The WSGI `app` with edge-ad's Server header in its answers (wsgiref's own names Python's version)."""
    def named(environ: dict, start_response: Callable) -> Iterable[bytes]:
        return app(environ, lambda status, headers, *error: start_response(status, [*headers, ("Server", SERVER_NAME)],
                                                                          *error))
    return named


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_S  # a connection left silent would hold its thread for ever

    def version_string(self) -> str:  # in the errors the handler answers itself (a request that does not parse)
        return SERVER_NAME

    def log_message(self, format: str, *args) -> None:  # a line on stderr per scrape, every 15 s
        pass
