"""The streaming loop behind `edge-ad run`: sources -> their detector -> events, snapshots, video.

Each source is read by its own capture thread into a one-frame slot: a live source's newest
frame replaces one not yet scored (counted as dropped), a file's frames all wait their turn.
The main thread scores the frames that are ready, in one batch per detector when several
sources have one (sources may share a detector or each have their own, for cameras that look at
different parts or views), and hands each result to that source's sinks. SIGINT and SIGTERM
stop the run within a second; every sink is then flushed and closed and the summary returned.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .bundle import Bundle, read_yaml
from .bundle_swap import BundlePaths, BundleSwap, Specs
from .detector import Detector, Result
from .device import clock_state, unsynchronised_clock
from .drift import DriftWatch
from .errors import BundleError, EdgeAdError, SourceError, client_text, without_passwords
from .followed_pictures import followed_folder
from .freeze import FROZEN_WINDOW_S, FreezeWatch
from .line_calibration import CALIBRATING, LineCalibration
from .masks import InspectionMask, calibration_mismatch
from .mqtt import MqttTls
from .mjpeg import MjpegOutput
from .output_access import HTTP_OUTPUTS, RTSP_OUTPUTS, OutputAccess
from .outputs import (DiskRoom, check_servable, make_file_folders, open_output, output_description, output_size,
                      resolve_rtp_hosts)
from .picture_output import PictureOutput, is_picture_output
from .regions import regions
from .render import away_card, fit, fitted_size, overlay
from .service import ServiceNotifier
from .sinks import AnomalyHook, EventLog, Guarded, InOrder, Samples, Snapshot, Snapshots, shared_slugs, slug
from .sources import Frame, Source, open_source, settling
from .streams import Stream
from .telemetry import SourceStats, Telemetry
from .variants import AnyDetector, VariantDetector, bundles_of, detectors_by_variant, score_views

log = logging.getLogger("edge_ad.runner")

DEFAULT_FPS = 30  # output frame rate for sources that do not say theirs (image folders)
# Frames whose events, snapshots, hook call and MQTT message wait for the sinks' thread: a
# 12-megapixel snapshot (300 ms to write) is two frames of a 6 fps camera.
SINK_QUEUE = 4
LAST_ALARM_S = 1.0  # a browser output's last-alarm picture: at most one drawn a second per source
AWAY_CARD_S = 1.0  # a source away: its live output shows a card saying so, one this often
CARD_SIZE = (1280, 720)  # a live output opened for that card before the source's first frame, without its size


@dataclass
class RunConfig:
    """The sinks and limits of a run, shared by its streams."""

    events: Path | None = None
    events_max_mb: float = 100.0
    snapshots: Path | None = None
    snapshot_interval_s: float = 1.0
    snapshot_quota_mb: float = 500.0
    samples: Path | None = None  # good pictures from the line: frames judged normal (edge_ad.sinks.Samples)
    sample_interval_s: float = 60.0
    sample_quota_mb: float = 2000.0
    on_anomaly: str | None = None
    metrics: Path | None = None
    metrics_port: int | None = None
    metrics_allow: tuple[str, ...] | None = None  # the addresses or networks whose scrapers it answers (None: any)
    modbus_port: int | None = None  # each source's last result as Modbus TCP registers, for a PLC (edge_ad.modbus)
    modbus_allow: tuple[str, ...] | None = None  # the addresses or networks whose clients it answers (None: any)
    opcua_port: int | None = None  # ... and as OPC UA variables (edge_ad.opcua)
    opcua_user: str | None = None  # ... to that user's login alone, signed and encrypted
    opcua_reader: str | None = None  # ... and that one's, which only reads
    opcua_certificate: tuple[Path, Path] | None = None  # ... with the plant's certificate and key
    opcua_trust: Path | None = None  # ... from the clients whose certificates are in that folder
    max_frames: int | None = None  # per source
    jetson: bool | None = None  # None: detect
    output_bitrate_kbps: int | None = None  # H.264 of the video outputs (None: the encoder's default)
    output_access: OutputAccess = OutputAccess()  # who may watch the RTSP and HTTP outputs
    drift: bool = False  # watch the rolling median of normal scores against the calibrated band
    alarm_frames: int = 1  # anomalous frames in a row from a source before snapshots, hook and MQTT act (or Stream's)
    mqtt: str | None = None  # mqtt[s]://host[:port]/topic: alarm, drift, frozen, self-check events (edge_ad.mqtt)
    mqtt_tls: MqttTls = MqttTls()  # mqtts://: the plant's CA, a client certificate and key
    calibration_frames: int | None = None  # a calibration on the line (SIGUSR1, Modbus, MQTT): frames it keeps
    self_check_interval_s: float = 600.0  # the bundles' check images scored again this often (0: at load only)
    frozen_window_s: float = FROZEN_WINDOW_S  # a live camera's picture still half of this long is said (0: never)


@dataclass
class RunSummary:
    seconds: float
    sources: list[SourceStats]
    sink_errors: dict[str, int]

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sources)

    @property
    def anomalies(self) -> int:
        return sum(s.anomalies for s in self.sources)

    @property
    def alarms(self) -> int:
        return sum(s.alarms for s in self.sources)

    @property
    def snapshots(self) -> int:
        return sum(s.snapshots for s in self.sources)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _Capture(threading.Thread):
    """Reads one source into a one-frame slot until the source ends or the run stops; its frames
    are scored by `detector` within `mask`."""

    def __init__(self, stream: Stream, source: Source, ready: threading.Event, detector: AnyDetector,
                 mask: InspectionMask | None = None):
        super().__init__(name=f"capture {stream.name}", daemon=True)
        self.stream, self.source, self.ready, self.detector, self.mask = stream, source, ready, detector, mask
        self.stop = threading.Event()
        self.slot: queue.Queue[Frame] = queue.Queue(maxsize=1)
        self.replaced = 0  # live frames replaced in the slot by a newer one before being scored
        self.error: str | None = None
        self.delivered = 0
        self.finished = False
        self.shape: tuple[int, ...] | None = None  # of its last frame
        self.away_since: float | None = None  # time.monotonic() when its source was found away (reconnecting)

    def run(self) -> None:
        noted = False  # what the first frame says of the source (a camera's once it has settled: not a black one)
        try:
            for frame in self.source.frames(self.stop):
                self.shape = frame.image.shape
                if not noted and not settling(self.source, frame):
                    noted = True
                    for bundle in bundles_of(self.detector).values():
                        for note in (bundle.frame_shape_note(frame.image.shape), bundle.frame_colour_note(frame.image),
                                     bundle.dark_frames_note(int(frame.image.max()), self.source.live)):
                            if note:
                                log.warning("%s: %s", self.stream.name, note)
                if self.mask is not None:  # a mask of another size stops this source at its first frame
                    self.mask.check(frame.image.shape, self.stream.name)
                if self.source.live:
                    try:
                        self.slot.put_nowait(frame)
                    except queue.Full:
                        try:
                            self.slot.get_nowait()
                            self.replaced += 1
                        except queue.Empty:
                            pass
                        self.slot.put_nowait(frame)
                else:
                    while not self.stop.is_set():
                        try:
                            self.slot.put(frame, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                self.delivered += 1
                self.ready.set()
        except (EdgeAdError, OSError) as exc:
            self.error = without_passwords(str(exc))
            if self.delivered:  # a source that never delivered fails the run, or shows in its summary
                log.error("%s", self.error)
        except Exception as exc:  # a bug: said with its traceback, and the source fails as above, not ends well
            log.exception("%s: reading frames failed", self.stream.name)
            self.error = without_passwords(f"{self.stream.name}: {type(exc).__name__}: {exc}")
        finally:
            self.finished = True
            self.ready.set()

    def take(self) -> Frame | None:
        try:
            return self.slot.get_nowait()
        except queue.Empty:
            return None

    @property
    def dropped(self) -> int:
        return self.source.dropped + self.replaced


class _VideoSink:
    """Opens the video output at the first frame (its size, at most OUTPUT_LIMIT: `output_size`)
    and writes overlays to it, each drawn to fit that size whole (an image folder of pictures of
    several sizes, a camera set to another resolution); an output that cannot open, or whose
    pipeline stops (a full disk), is opened again after RETRY_S (a file: under a new name, the
    one before kept as far as it was written). A picture output (edge_ad.picture_output) takes
    each overlay at its frame's own size instead."""

    RETRY_S = 5.0

    def __init__(self, stream: Stream, source: Source, config: RunConfig):
        self.stream, self.source, self.config = stream, source, config
        self.output = None
        self._next_try = self._next_alarm = self._next_card = 0.0
        self._said: str | None = None  # the output last named in the log
        self._last_frame: tuple[float, float, float] | None = None  # its timestamp, monotonic and Unix time
        self._created, self._created_unix = time.monotonic(), time.time()  # "nothing inspected since" the start
        self._size_said: str | None = None  # the output whose size was compared with the frames'
        self.pictures = None
        if is_picture_output(stream.output):
            self.pictures = PictureOutput(stream.output, getattr(source, "files", []), source.live,
                                          followed_folder(source))
            log.info("%s: %s", stream.name, self.pictures.description)
        self.room = DiskRoom(Path(stream.output)) if "://" not in stream.output and self.pictures is None else None

    def __call__(self, frame: Frame, draw: Callable[[tuple[int, int]], np.ndarray]) -> np.ndarray | None:
        """The frame's overlay, drawn by `draw` at the (width, height) it is shown at, only when
        the output takes it: an RTSP or browser output nobody watches costs nothing (a
        12-megapixel overlay takes 100 ms or more); None when none was drawn."""
        self._last_frame = (frame.timestamp, time.monotonic(), time.time())
        if self.pictures is not None:  # each at its frame's own size
            picture = draw(frame.image.shape[1::-1])
            self.pictures.write(picture, frame.index, frame.name)
            return picture
        if self.output is None:
            if time.monotonic() < self._next_try:
                return None
            self._open(*output_size(frame.image.shape[1], frame.image.shape[0]))
        if self._size_said != self.output.uri:  # once, not at each try on a full disk
            self._size_said = self.output.uri
            if self.output.size != frame.image.shape[1::-1]:
                log.info("%s: the video shows its %dx%d frames at %dx%d", self.stream.name,
                         frame.image.shape[1], frame.image.shape[0], *self.output.size)
        if not self.output.wants_frame():
            return None
        picture = draw(fitted_size(frame.image.shape, self.output.size[1], self.output.size[0]))
        try:
            self.output.write(fit(picture, self.output.size[1], self.output.size[0]), frame.timestamp)
        except SourceError:
            self.close()
            self.output, self._next_try = None, time.monotonic() + self.RETRY_S
            raise
        if self.room is not None and self.room.check(Path(self.output.uri)):
            self.close()  # the next frame opens the next file (see DiskRoom)
            self._next_try = 0.0
        return picture

    def _open(self, width: int, height: int) -> None:
        """The output opened at width x height, at most once every RETRY_S (a full disk, a port taken)."""
        self._next_try = time.monotonic() + self.RETRY_S
        fps = round(self.source.fps or self.stream.options.framerate or DEFAULT_FPS)
        config = self.config
        self.output = open_output(self.stream.output, width, height, max(fps, 1), config.jetson,
                                  config.output_bitrate_kbps, self.source.live, config.output_access)
        if self.output.uri != self._said:  # once, not at each try on a full disk
            log.info("%s: video output %s", self.stream.name, self.output.description)
            if self.output.uri != self.stream.output:
                log.info("%s: %s holds an earlier video; this one goes to %s", self.stream.name,
                         self.stream.output, self.output.uri)
            self._said = self.output.uri

    def _card_size(self) -> tuple[int, int]:
        """The size of a live output opened for the card of a source away before its first frame:
        its frames' as the options give them (a crop's, or --input-width and -height), else 1280 x
        720; the frames are then shown fitted to it."""
        options = self.stream.options
        if options.crop is not None:
            return output_size(options.crop[2], options.crop[3])
        if options.width and options.height:
            return output_size(options.width, options.height)
        return CARD_SIZE

    def away(self) -> None:
        """While the source is away (edge_ad.sources: reconnecting), a card saying so to a live
        output (RTSP, a browser, RTP, a screen) once every AWAY_CARD_S: the last frame's overlay,
        its OK included, stood still there as if parts were passing inspection, and a camera away
        from the run's start (a power cut, IP cameras booting slower than the device) had no output
        at all: an RTSP or browser output is opened for it. Not into a file or pictures, which keep
        the gap as it was."""
        if self.pictures is not None or "://" not in self.stream.output or time.monotonic() < self._next_card:
            return
        if self.output is None:
            # Closed after a failure: opened again at the next frame. RTP and screens are not opened for it: they
            # time the frames by the source's clock, which the card cannot know before the first.
            if (self._last_frame is not None or time.monotonic() < self._next_try
                    or not self.stream.output.startswith(RTSP_OUTPUTS + HTTP_OUTPUTS)):
                return
            self._open(*self._card_size())
        self._next_card = time.monotonic() + AWAY_CARD_S
        if not self.output.wants_frame():
            return
        timestamp, monotonic, unix = self._last_frame or (0.0, self._created, self._created_unix)  # RTSP, HTTP: unused
        card = away_card(self.output.size, self.stream.name, unix)
        try:  # in the source's time, as if its frames went on (an RTP stream's or a screen's clock)
            self.output.write(card, timestamp + time.monotonic() - monotonic)
        except SourceError:
            self.close()
            self.output, self._next_try = None, time.monotonic() + self.RETRY_S
            raise

    def keep_alarm(self, frame: Frame, result: Result, picture: np.ndarray | None) -> None:
        """An alarm frame's overlay to a browser output, which serves its source's last at
        PATH/last-alarm.jpg: `picture`, the one drawn for viewers, or drawn now at its size, at
        most one a LAST_ALARM_S (a line whose every frame alarms would otherwise have an overlay
        drawn per frame, for a picture an HMI shows)."""
        output = self.output
        if not isinstance(output, MjpegOutput) or time.monotonic() < self._next_alarm:  # not open, or too soon
            return
        self._next_alarm = time.monotonic() + LAST_ALARM_S
        width, height = output.size
        if picture is None:
            picture = overlay(frame.image, result, size=fitted_size(frame.image.shape, height, width))
        output.keep_alarm(fit(picture, height, width), frame.captured)

    def close(self) -> None:
        if self.output is not None:
            self.output.close()
            self.output = None
        if self.pictures is not None:
            self.pictures.close()


class _Sinks:
    """Everything a scored frame goes to: events, snapshots, the anomaly hook (shared by the
    streams) and each stream's video output, each guarded so that its failures are counted. The
    PLC's registers and the video are given the frame in the scoring loop, the others in the
    order of the frames by a thread of their own (`later`)."""

    def __init__(self, config: RunConfig, stack: ExitStack,
                 drift: dict[str, dict[str | None, DriftWatch]] | None = None, hints: VariantHints | None = None,
                 line: dict[str, LineCalibration] | None = None):
        self.guards: list[Guarded] = []
        self.hints = hints
        self.line = line or {}  # each source's calibration on the line, which MQTT and Modbus can ask for
        self.publisher = None
        self.drift = drift  # per stream, its bundles' calibrated bands by variant (None: one bundle); a watch each
        self.watches: dict[tuple[str, str | None], DriftWatch] = {}
        self.freezes: dict[str, FreezeWatch] = {}  # live cameras' pictures, by source
        self.events = self.snapshots = self.samples = self.hook = self.mqtt = None
        self.plcs: list = []  # the Modbus and OPC UA servers (ModbusServer, OpcUaServer), read by PLCs
        self.videos: dict[str, Guarded] = {}
        self.last_alarms: dict[str, Guarded] = {}  # of the sources with a browser output
        self.away_cards: dict[str, Guarded] = {}
        self.config = config
        self.stack = stack
        if config.events is not None:
            events = EventLog(config.events, int(config.events_max_mb * (1 << 20)))
            stack.callback(events.close)
            self.events = self._guard(f"events {config.events}", events.write)
        if config.snapshots is not None:
            folder = Snapshots(config.snapshots, config.snapshot_interval_s, int(config.snapshot_quota_mb * (1 << 20)))
            self.snapshots = self._guard(f"snapshots {config.snapshots}", folder.save)
        if config.samples is not None:
            samples = Samples(config.samples, config.sample_interval_s, int(config.sample_quota_mb * (1 << 20)))
            stack.callback(samples.close)
            self.samples = self._guard(f"samples {config.samples}", samples.save)
        if config.on_anomaly:
            hook = AnomalyHook(config.on_anomaly)
            stack.callback(hook.close)
            self.hook = self._guard("--on-anomaly", hook)
        if config.mqtt:
            from .mqtt import MqttPublisher  # paho-mqtt, only when asked for

            publisher = MqttPublisher(config.mqtt, config.mqtt_tls,
                                      on_variant=self._variant_said if hints is not None else None,
                                      on_calibrate=self._calibrate_asked)
            stack.callback(publisher.close)
            self.mqtt = self._guard(f"mqtt {publisher.url}", publisher.publish)  # without its password
            self.publisher = publisher
        self.later = InOrder("sinks", SINK_QUEUE)
        stack.callback(self.later.close)  # before the sinks close: what waits is written first

    def _source_in_topic(self, source: str, asked: str) -> str | None:
        """The name of the source that an MQTT topic spells `source` (sinks.slug), None (warned
        about, with what the topic `asked`) where it is none of them."""
        names = {slug(name): name for name in self.line}
        if source not in names:
            log.warning("mqtt: %s %s, which is none of the sources (%s); ignored", asked, client_text(source),
                        ", ".join(names))
        return names.get(source)

    def _calibrate_asked(self, source: str, start: bool) -> None:
        """MQTT's TOPIC/SOURCE/calibrate."""
        name = self._source_in_topic(source, "asked to calibrate")
        if name is not None:
            self.line[name].ask(start)

    def _variant_said(self, source: str, variant: str | None) -> None:
        """MQTT's TOPIC/SOURCE/variant."""
        name = self._source_in_topic(source, "told the variant of")
        if name is not None:
            log.info("mqtt: the line says %s makes %s", name,
                     client_text(variant) if variant else "any variant (all bundles score)")
            self.hints.set(name, variant)

    def calibration_told(self, source: str) -> Callable[[int, int], None]:
        """What a source's calibration on the line says as it goes: Modbus registers +11 and +12
        at every frame, MQTT's TOPIC/SOURCE/calibration at every change of state."""
        said = [None]

        def told(state: int, kept: int) -> None:
            for plc in self.plcs:
                plc.set_calibration(source, state, kept)
            if self.publisher is not None and state != said[0]:
                said[0] = state
                self.publisher.publish_calibration(source, state, kept)

        return told

    def serve_plcs(self, config: RunConfig, variants: dict[str, list[str]]) -> None:
        """Modbus registers and alarm latches (edge_ad.modbus), OPC UA variables (edge_ad.opcua, with
        the login, certificate and trusted clients `config` gives), or both, as `config` asks, for
        each source of `variants` (source name -> its variants' names, none for one bundle), in that
        order; the variant a PLC says a source's line makes goes to the run's VariantHints, and a calibration it
        asks for to that source's calibration on the line."""
        told = self.hints.set if self.hints is not None else None

        def calibrate(source: str, start: bool) -> None:
            self.line[source].ask(start)

        if config.modbus_port is not None:
            from .modbus import ModbusServer

            self.plcs.append(ModbusServer(config.modbus_port, list(variants), variants, on_variant=told,
                                          on_calibrate=calibrate, allowed=config.modbus_allow))
            self.stack.callback(self.plcs[-1].close)
        if config.opcua_port is not None:
            from .opcua import OpcUaServer  # asyncua, only when asked for

            self.plcs.append(OpcUaServer(config.opcua_port, list(variants), variants, on_variant=told,
                                         on_calibrate=calibrate, user=config.opcua_user,
                                         reader=config.opcua_reader, certificate=config.opcua_certificate,
                                         trust=config.opcua_trust))
            self.stack.callback(self.plcs[-1].close)

    def _guard(self, name: str, call) -> Guarded:
        self.guards.append(Guarded(name, call))
        return self.guards[-1]

    def add_video(self, stream: Stream, source: Source) -> None:
        video = _VideoSink(stream, source, self.config)
        self.stack.callback(video.close)
        self.videos[stream.name] = self._guard(f"output {stream.output}", video)
        self.away_cards[stream.name] = self._guard(f"output {stream.output} (the card of a source away)", video.away)
        if stream.output.startswith(HTTP_OUTPUTS):
            self.last_alarms[stream.name] = self._guard(f"last alarm of {stream.output}", video.keep_alarm)

    def watch_anew(self, name: str, bands: dict[str | None, DriftWatch]) -> None:
        """Source `name` judged by a new calibration or bundle: its `bands`, watched from the start
        (from its next frame: the frames before are watched in the sinks' thread first)."""
        self.later.call(self._watch_anew, name, bands)

    def _watch_anew(self, name: str, bands: dict[str | None, DriftWatch]) -> None:
        self.drift[name] = bands
        for watched in [w for w in self.watches if w[0] == name]:
            del self.watches[watched]

    def _watch_drift(self, stream: Stream, frame: Frame, result: Result) -> None:
        key = (stream.name, result.variant)
        if key not in self.watches:
            band = self.drift[stream.name][result.variant]
            self.watches[key] = DriftWatch(band.low, band.high, band.window)
        drift = self.watches[key].add(result.score, result.is_anomaly)
        if drift is None:
            return
        drift = {"source": stream.name, "frame": frame.index, "timestamp": round(frame.captured, 6), **drift}
        where = stream.name if result.variant is None else f"{stream.name} ({result.variant})"
        if result.variant is not None:
            drift["variant"] = result.variant
        if drift["state"] == "outside":
            log.warning("%s: drift: median normal score %.4f left the calibrated band [%.4f, %.4f]; recalibrate "
                        "(edge-ad calibrate)", where, drift["median"], drift["low"], drift["high"])
        elif drift["state"] == "flagged":
            log.warning("%s: drift: %.0f%% of the last %d frames flagged: has the view changed (a covered lens, a "
                        "light out, the camera moved)? Look at the camera before the parts", where,
                        100 * drift["flagged"], drift["window"])
        else:
            log.info("%s: drift: median normal score %.4f is back in the calibrated band", where, drift["median"])
        self._tell(drift)

    def self_check_failed(self, sources: list[str], bundle: Bundle, problem: str) -> None:
        """A self-check that failed during the run (`problem`: what Detector.self_check said), as an
        event of each of `sources` in the events file and on MQTT's TOPIC/SOURCE/self_check: the run
        stops next, and the record of the frames it judged says why."""
        for source in sources:
            self.later.call(self._tell, {"event": "self_check", "source": source, "timestamp": round(time.time(), 6),
                                         "bundle": bundle.short_ids[0], "problem": problem})

    def _watch_freeze(self, stream: Stream, frame: Frame, freeze: FreezeWatch) -> None:
        """Whether a live camera's picture froze, or moves again: said in the log, the events, on MQTT
        and to the PLC (its Modbus discrete input)."""
        event = freeze.add(frame.image, frame.arrived)
        if event is None:
            return
        if event["state"] == "frozen":
            log.warning("%s: the camera's picture stood still, to the last bit, for %.0f s of the last %.0f s: a "
                        "frozen camera or stream, or a covered or blinded lens; parts go by unseen until it changes. "
                        "Look at the camera", stream.name, event["still_s"], event["window_s"])
        else:
            log.info("%s: the picture moves again (said frozen for %.0f s)", stream.name, event["frozen_s"])
        for plc in self.plcs:
            plc.set_frozen(stream.name, event["state"] == "frozen")
        self._tell({"source": stream.name, "frame": frame.index, "timestamp": round(frame.captured, 6), **event})

    def watch_away(self, capture: _Capture) -> None:
        """Whether the source of `capture` is away (being reconnected), or back: an event in the
        events file and on MQTT's TOPIC/SOURCE/away when that changes, as for a picture that froze
        (the PLCs read how long since the last frame); while it is away, its live output's card."""
        away = capture.source.away
        if away != (capture.away_since is not None):
            event = {"event": "away", "source": capture.stream.name, "timestamp": round(time.time(), 6),
                     "state": "away" if away else "back"}
            if not away:
                event["away_s"] = round(time.monotonic() - capture.away_since, 1)
            capture.away_since = time.monotonic() if away else None
            self.later.call(self._tell, event)
        if away and capture.stream.name in self.away_cards:
            self.away_cards[capture.stream.name]()

    def _tell(self, event: dict) -> None:
        """An event that is not a frame's (drift, self-check, frozen, away) to the events file and MQTT."""
        if self.events is not None:
            self.events(event)
        if self.mqtt is not None:
            self.mqtt(event)

    def errors(self) -> dict[str, int]:
        return {g.name: g.errors for g in self.guards}

    def tell_plc(self, stream: Stream, frame: Frame, result: Result, record: SourceStats, alarm: bool,
                 bundle: Bundle) -> None:
        """A scored frame's verdict to the Modbus registers and OPC UA variables, before `deliver` draws or hands on
        anything for any frame of the batch: a reject gate acts on them, and need not wait for
        the videos' overlays of several sources."""
        for plc in self.plcs:
            plc.update(stream.name, frame.index, result.score, result.threshold, result.is_anomaly, alarm,
                       result.variant, record.anomalies, record.alarms, bundle.short_ids)

    def deliver(
        self, stream: Stream, frame: Frame, result: Result, latency_ms: float, record: SourceStats, alarm: bool,
        bundle: Bundle,
    ) -> None:
        """Hand a scored frame, judged by `bundle` (and its calibration), to the sinks: video now,
        the others in the sinks' thread (`later`). The PLC has the verdict already (`tell_plc`)."""
        picture = None
        if stream.name in self.videos:
            picture = self.videos[stream.name](frame, lambda size: overlay(frame.image, result, size=size))
        self.later.call(self._deliver_later, stream, frame, result, latency_ms, record, alarm, bundle, picture)

    def _deliver_later(
        self, stream: Stream, frame: Frame, result: Result, latency_ms: float, record: SourceStats, alarm: bool,
        bundle: Bundle, picture: np.ndarray | None,
    ) -> None:
        """Events every frame; a browser output's last-alarm picture, snapshots, the hook and MQTT
        only for an `alarm` (RunConfig.alarm_frames anomalous frames in a row). A snapshot is saved
        first, so that the event names files that are there."""
        if alarm and stream.name in self.last_alarms:
            self.last_alarms[stream.name](frame, result, picture)
        snapshot = None
        if alarm and self.snapshots is not None:
            whole = picture is not None and picture.shape[:2] == frame.image.shape[:2]  # the video's, not smaller
            drawn = (lambda: picture) if whole else (lambda: overlay(frame.image, result))
            snapshot = self.snapshots(stream.name, frame.index, frame.captured, frame.image, drawn)
            record.snapshots += snapshot is not None
        # The event (with its regions) and the overlay are made only when a sink takes them.
        wants_event = self.events is not None or (alarm and (self.hook is not None or self.mqtt is not None))
        event = _event(stream, frame, result, latency_ms, alarm, snapshot, bundle) if wants_event else None
        if self.events is not None:
            self.events(event)
        if self.drift is not None:
            self._watch_drift(stream, frame, result)
        freeze = self.freezes.get(stream.name)
        if freeze is not None:
            self._watch_freeze(stream, frame, freeze)
        frozen = freeze is not None and freeze.frozen  # a frozen picture shows no new part to train on
        if self.samples is not None and not result.is_anomaly and not frozen:
            self.samples(stream.name, frame.index, frame.captured, frame.image, result.variant)
        if not alarm:
            return
        if self.hook is not None:
            self.hook(event)
        if self.mqtt is not None:
            self.mqtt(event)


@contextmanager
def stop_on_signals(stop: threading.Event, reload: threading.Event | None = None,
                    calibrate: Callable[[], None] | None = None):
    """SIGINT and SIGTERM set `stop`, SIGHUP sets `reload` and SIGUSR1 calls `calibrate`, when
    they are given (in the main thread; elsewhere the caller does it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = dict.fromkeys((signal.SIGINT, signal.SIGTERM),
                             lambda signum, _: (log.warning("%s: stopping", signal.Signals(signum).name), stop.set()))
    if reload is not None:
        handlers[signal.SIGHUP] = lambda signum, _: (log.warning("SIGHUP: reading the calibrations, masks and changed "
                                                                 "bundles again"), reload.set())
    if calibrate is not None:
        handlers[signal.SIGUSR1] = lambda signum, _: (log.warning("SIGUSR1: calibrating every source on its next "
                                                                  "frames"), calibrate())
    previous = {sig: signal.getsignal(sig) for sig in handlers}
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _event(
    stream: Stream, frame: Frame, result: Result, latency_ms: float, alarm: bool, snapshot: Snapshot | None,
    bundle: Bundle,
) -> dict:
    """A frame's event. `bundle` and `calibration` say what judged it (Bundle.short_ids), for a
    record of which model and threshold passed each part."""
    model, calibration = bundle.short_ids
    return {
        "event": "frame",
        "source": stream.name,
        "frame": frame.index,
        "name": frame.name,
        "timestamp": round(frame.captured, 6),
        "pts": round(frame.timestamp, 6),
        "score": round(result.score, 6),
        "anomaly": result.is_anomaly,
        "alarm": alarm,
        "threshold": result.threshold,
        "regions": regions(result.map, result.threshold) if result.is_anomaly else [],
        "latency_ms": round(latency_ms, 3),
        "inference_ms": round(sum(result.times_ms.values()), 3),
        "bundle": model,
        "calibration": calibration,
        **({"variant": result.variant} if result.variant is not None else {}),
        **({"snapshot": str(snapshot.frame), "overlay": str(snapshot.overlay)} if snapshot is not None else {}),
    }


def _judged_by(detector: AnyDetector, result: Result) -> Bundle:
    """The bundle (with its calibration) that gave `result`."""
    return detector.detector_of(result).bundle if isinstance(detector, VariantDetector) else detector.bundle


def _current(stats: dict[str, SourceStats], captures: list[_Capture]) -> list[SourceStats]:
    """The statistics with the sources' own counters (drops, reconnects) and thresholds read now."""
    for capture in captures:
        record = stats[capture.stream.name]
        record.dropped, record.reconnects, record.away = capture.dropped, capture.source.reconnects, capture.source.away
        in_use = bundles_of(capture.detector).items()
        record.thresholds = {variant or "": b.threshold for variant, b in in_use}
        record.bundles = {variant or "": b.short_ids for variant, b in in_use}
    return list(stats.values())


def _status(stats: list[SourceStats]) -> str:
    """One line for `systemctl status`: each source's frames and rate (or that it is away), and the anomalies."""
    sources = ", ".join(f"{s.name} {s.frames} frames " + ("away" if s.away else f"{s.fps:.1f} fps") for s in stats)
    return f"{sources}; {sum(s.anomalies for s in stats)} anomalies"


class VariantHints:
    """The product variant each source's line makes now, as the line says it (MQTT
    TOPIC/SOURCE/variant, edge_ad.mqtt; Modbus register +10, edge_ad.modbus; OPC UA SetVariant,
    edge_ad.opcua): its frames are then scored by that variant's bundle alone, not by all of
    them. An empty one (None) goes back to every bundle, and so does a name that is none of the
    source's variants (warned about): the line makes something that no bundle of the source was
    trained for, and the variant said before is no longer made."""

    def __init__(self, variants: Mapping[str, Sequence[str]]) -> None:
        self.variants = variants  # source name -> its bundles' variant names (none for one bundle)
        self.said: dict[str, str] = {}  # source name -> the variant its line makes, where one was said

    def set(self, source: str, variant: str | None) -> None:
        names = self.variants[source]
        if variant is not None and variant not in names:
            log.warning("%s: the line says variant %s, which is none of its variants (%s); scoring with all",
                        source, client_text(variant), ", ".join(names) or "it has one bundle")
            variant = None
        if variant is None:
            self.said.pop(source, None)
        else:
            self.said[source] = variant

    def of(self, capture: _Capture) -> str | None:
        return self.said.get(capture.stream.name)


def _graphs_of(detector: AnyDetector) -> tuple[int, ...]:
    """What frames can share a batch by: a Detector's graphs, or those of each variant of a
    VariantDetector (the same for its calibrated views)."""
    return tuple(id(d.graphs) for d in detectors_by_variant(detector).values())


def _bar_text(stats: dict[str, SourceStats], source: str | None, result: Result) -> str:
    """What the terminal's bar says after its count and rate: the anomalies so far, and the last
    frame's score and verdict (with its source's name, where there are several): for a person
    setting a camera up, who had frames and a rate and nothing of what they scored until Ctrl-C."""
    anomalies = sum(record.anomalies for record in stats.values())
    return f"anomalies {anomalies}, last{f' {source}' if source else ''}: {'NG' if result.is_anomaly else 'OK'} " \
           f"{result.score:.3f}"


def _score(ready: list[tuple[_Capture, Frame]], stats: dict[str, SourceStats], hints: VariantHints | None) -> list:
    """Results of the ready frames, each by its source's detector, in one batch per detector (per
    set of graphs: cameras with their own calibration of one bundle share a batch)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (capture, _) in enumerate(ready):
        groups.setdefault(_graphs_of(capture.detector), []).append(i)
    results: list = [None] * len(ready)
    for indices in groups.values():
        for i, result in zip(indices, _score_batch([ready[i] for i in indices], stats, hints)):
            results[i] = result
    return results


def _score_batch(ready: list[tuple[_Capture, Frame]], stats: dict[str, SourceStats], hints: VariantHints | None) -> list:
    """Results of ready frames whose detectors share graphs, in one batch across their sources
    (each frame by the variant its line makes, where `hints` knows it); when the batch fails (a
    frame the detector refuses, NaN maps from a broken graph) each frame is scored alone, and the
    ones that fail are counted, logged and skipped (None): the run goes on."""
    detectors = [capture.detector for capture, _ in ready]
    variants = None
    if hints is not None and isinstance(detectors[0], VariantDetector):
        variants = [hints.of(capture) for capture, _ in ready]
    try:
        return _batch(detectors, [frame.image for _, frame in ready], [capture.mask for capture, _ in ready], variants)
    except EdgeAdError:
        pass
    results = []
    for n, (capture, frame) in enumerate(ready):
        try:
            results.append(_batch([capture.detector], [frame.image], [capture.mask], variants and variants[n : n + 1])[0])
        except EdgeAdError as exc:
            record = stats[capture.stream.name]
            record.failed += 1
            if record.failed == 1 or record.failed % 100 == 0:
                log.error("%s: frame %d not scored (%d so far): %s", capture.stream.name, frame.index, record.failed, exc)
            results.append(None)
    return results


def _batch(
    detectors: list[AnyDetector], frames: list[np.ndarray], masks: list[InspectionMask | None], variants: list | None
) -> list[Result]:
    """Each frame scored by its detector; the detectors share graphs (one, or its calibrated
    views: the grids are made in one batch, then each view's calibration applies)."""
    first = detectors[0]
    if isinstance(first, VariantDetector):
        return score_views(detectors, frames, masks=masks, variants=variants)
    grids, times = first.frame_grid_maps(frames)
    results: list = [None] * len(frames)
    for view in {id(d): d for d in detectors}.values():
        indices = [i for i, d in enumerate(detectors) if d is view]
        scored = view.score_grids(grids[indices], [frames[i].shape for i in indices], times, [masks[i] for i in indices])
        for i, result in zip(indices, scored):
            results[i] = result
    return results


def drift_bands(detector: AnyDetector) -> dict[str | None, DriftWatch]:
    """Each bundle's calibrated drift band, keyed by variant (None for a single bundle)."""
    return {variant: DriftWatch.from_bundle(bundle) for variant, bundle in bundles_of(detector).items()}


def load_masks(detectors: Mapping[str, AnyDetector], streams: list[Stream]) -> dict[str, InspectionMask | None]:
    """Each stream's inspection mask, read before any source opens; a warning where the site
    calibration of the stream's bundle was made with another mask or none (its threshold was set
    on other maps)."""
    masks = {s.name: InspectionMask.load(s.mask) if s.mask else None for s in streams}
    for name, mask in masks.items():
        _check_mask(name, detectors[name], mask)
    return masks


def _check_mask(name: str, detector: AnyDetector, mask: InspectionMask | None) -> None:
    """A warning where a calibration of `detector` was made with another mask than `mask`, or none."""
    for bundle in bundles_of(detector).values():
        if bundle.calibration is None:
            continue
        mismatch = calibration_mismatch(read_yaml(bundle.calibration).get("mask"), mask)
        if mismatch:
            log.warning("%s: %s: %s; the threshold may not fit (calibrate with the same --mask)",
                        name, bundle.calibration, mismatch)


def _recalibrated(detector: AnyDetector, stream: Stream) -> tuple[AnyDetector, str | None]:
    """`detector` with the site calibration now written for `stream`: in its own folder
    (`calibration:`), else in its bundle (each variant's); where there is none that fits, the
    numbers it had, and why."""
    if stream.calibration:
        return detector.calibrated(stream.calibration)
    if isinstance(detector, VariantDetector):
        return detector.calibrated({name: d.bundle.root for name, d in detector.detectors.items()})
    return detector.calibrated(detector.bundle.root)


def _thresholds(detector: AnyDetector) -> str:
    return ", ".join(f"{variant} {b.threshold:.4f}" if variant else f"{b.threshold:.4f}"
                     for variant, b in bundles_of(detector).items())


def _reload(captures: list[_Capture], sinks: _Sinks) -> None:
    """Each source's calibration and mask read again (SIGHUP: `systemctl reload`), as written
    by `edge-ad calibrate` since the run started, without stopping the cameras or loading the
    graphs again. A file that cannot be used is named, and that source keeps what it had."""
    renewed: dict[tuple[int, str | None], AnyDetector] = {}  # sources that shared a detector still do
    for capture in captures:
        stream, before = capture.stream, capture.detector
        key = (id(before), stream.calibration)
        try:
            if key not in renewed:
                renewed[key], problem = _recalibrated(before, stream)
                calibrated = stream.calibration or any(b.calibration for b in bundles_of(before).values())
                if problem is not None and calibrated:  # not for a bundle that never had one
                    log.warning("%s: %s; keeps the numbers it had", stream.name, problem)
            mask = InspectionMask.load(stream.mask) if stream.mask else None
            if mask is not None and capture.shape is not None:  # one that would stop the source is refused
                mask.check(capture.shape, stream.name)
            _check_mask(stream.name, renewed[key], mask)
            bands = drift_bands(renewed[key]) if sinks.drift is not None else None
        except (EdgeAdError, OSError) as exc:  # OSError: a file removed while it was read
            log.error("%s: not reloaded, keeps its calibration and mask: %s", stream.name, exc)
            continue
        capture.detector, capture.mask = renewed[key], mask
        log.info("%s: threshold %s, was %s", stream.name, _thresholds(capture.detector), _thresholds(before))
        if bands is not None:
            sinks.watch_anew(stream.name, bands)


class _SelfChecks:
    """The check images through every detector in use again, every `interval` seconds
    (Detector.self_check): an engine, a driver or a GPU that goes wrong hours into a run stops it
    (and systemd starts it again, where loading checks the same) rather than pass parts in silence."""

    def __init__(self, interval: float):
        self.interval, self.last = interval, time.monotonic()

    def run_if_due(self, captures: list[_Capture], sinks: _Sinks) -> None:
        """A failure is told to the sinks, as an event of each source those graphs score, then raised."""
        if not self.interval or time.monotonic() - self.last < self.interval:
            return
        # Graphs shared by several sources, or by the calibrated views of one bundle, once each (as _batch keys them)
        detectors: dict[int, Detector] = {}
        sources: dict[int, dict[str, None]] = {}  # the sources each scores, in order, once each
        for capture in captures:
            for detector in detectors_by_variant(capture.detector).values():
                detectors[id(detector.graphs)] = detector
                sources.setdefault(id(detector.graphs), {})[capture.stream.name] = None
        for key, detector in detectors.items():
            try:
                detector.self_check()
            except BundleError as exc:
                sinks.self_check_failed(list(sources[key]), detector.bundle, str(exc))
                raise BundleError(f"self-check during the run: {exc}. The run stops rather than judge parts "
                                  "with wrong maps") from exc
        self.last = time.monotonic()


def _swap_bundles(captures: list[_Capture], loaded: dict[Specs, AnyDetector], paths: BundlePaths, sinks: _Sinks,
                  line: dict[str, LineCalibration]) -> None:
    """The sources of bundles loaded again (BundleSwap) scored by them from the next frame, each
    with its own site calibration where it has one that fits them. A calibration on the line
    that is keeping frames is cancelled: they were scored by the bundle that goes."""
    renewed: dict[tuple[Specs, str | None], AnyDetector] = {}
    for capture in captures:
        stream, specs = capture.stream, paths.of(capture.stream)
        if specs not in loaded:
            continue
        key = (specs, stream.calibration)
        if key not in renewed:
            renewed[key] = _own_calibration(loaded[specs], stream)
        _check_mask(stream.name, renewed[key], capture.mask)
        if line[stream.name].state == CALIBRATING:
            line[stream.name].ask(False)
        before, capture.detector = capture.detector, renewed[key]
        log.info("%s: scored by the new %s from now on: threshold %s, was %s", stream.name, " ".join(specs),
                 _thresholds(capture.detector), _thresholds(before))
        if sinks.drift is not None:
            sinks.watch_anew(stream.name, drift_bands(capture.detector))


def load_detectors(
    streams: list[Stream], bundle: str | Sequence[str] | None = None, **options
) -> dict[str, AnyDetector]:
    """Each stream's detector: of the bundle it names (`Stream.bundle`, `bundle:` in --sources),
    else of `bundle` ('BUNDLE', or 'NAME=BUNDLE' per product variant), with the stream's own site
    calibration where it has one (`Stream.calibration`). A bundle named by several streams is
    loaded once and their frames are scored in one batch, also with calibrations of their own.
    `options` go to Detector.load."""
    paths = BundlePaths((bundle,) if isinstance(bundle, str) else tuple(bundle or ()), options)
    loaded: dict[Specs, AnyDetector] = {}
    calibrated: dict[tuple[Specs, str | None], AnyDetector] = {}
    detectors = {}
    for stream in streams:
        specs = paths.of(stream)
        if specs not in loaded:
            loaded[specs] = paths.load(specs)
        key = (specs, stream.calibration)
        if key not in calibrated:
            calibrated[key] = _own_calibration(loaded[specs], stream)
        detectors[stream.name] = calibrated[key]
    return detectors


def _own_calibration(detector: AnyDetector, stream: Stream) -> AnyDetector:
    """`detector` with `stream`'s own site calibration (`calibration:` in --sources) where it has
    one that fits, else as it is (the reason logged)."""
    if stream.calibration is None:
        return detector
    calibrated, problem = detector.calibrated(stream.calibration)
    if problem is not None:
        log.warning("%s: %s; scored with the bundle's own numbers until 'edge-ad calibrate --sources ... "
                    "--source %s'", stream.name, problem, stream.name)
    return calibrated


def detectors_of(detector: AnyDetector | Mapping[str, AnyDetector], streams: list[Stream]) -> dict[str, AnyDetector]:
    """Each stream's detector: `detector` for all of them, or a mapping from stream names (as
    `load_detectors` gives). One detector for streams that name their own bundle is refused."""
    if isinstance(detector, Mapping):
        missing = [s.name for s in streams if s.name not in detector]
        if missing:
            raise EdgeAdError(f"run: no detector for source(s) {missing} (detectors are given for {sorted(detector)})")
        return {s.name: detector[s.name] for s in streams}
    own = [s.name for s in streams if s.bundle or s.calibration]
    if own:
        raise EdgeAdError(f"run: source(s) {own} name their own bundle or calibration, but one detector was given for "
                          "every source; load each source's with edge_ad.runner.load_detectors(streams, ...)")
    return {s.name: detector for s in streams}


def _drift_bands(detectors: Mapping[str, AnyDetector]) -> dict[str, dict[str | None, DriftWatch]]:
    """Each stream's calibrated drift bands, read once per detector."""
    bands: dict[int, dict[str | None, DriftWatch]] = {}
    for detector in detectors.values():
        if id(detector) not in bands:
            bands[id(detector)] = drift_bands(detector)
    return {name: bands[id(detector)] for name, detector in detectors.items()}


def _refuse_saving_into(watches: Callable[[Path], bool], name: str, config: RunConfig) -> None:
    """Refuse --snapshots and --samples into a folder that source `name` follows (`watches`):
    each picture saved there was read as a new part and scored (seen: one cracked cell put into
    the folder, 3 frames scored and 3 alarms, its snapshot's frame and overlay the 2 more)."""
    samples = config.samples / slug(name) if config.samples is not None else None
    for option, given, folder in (("--snapshots", config.snapshots, config.snapshots),
                                  ("--samples", config.samples, samples)):
        if folder is not None and watches(folder):
            raise EdgeAdError(f"{option} {given}: source {name} follows the folder its pictures go to (--follow), and "
                              "would read each as a new part, to be scored; give another folder")


def run(
    detector: AnyDetector | Mapping[str, AnyDetector], streams: list[Stream], config: RunConfig,
    stop: threading.Event | None = None, reload: threading.Event | None = None,
    line: dict[str, LineCalibration] | None = None, paths: BundlePaths | None = None,
) -> RunSummary:
    """Score every stream until all end, `max_frames` per stream, or `stop` (also set by SIGINT
    and SIGTERM). `detector` scores every stream, or a mapping gives each stream name its own
    (streams sharing one are scored in one batch). `reload` (also set by SIGHUP) has every
    stream's calibration and mask read again (_reload). Each stream can be calibrated on its own
    frames as they are scored (edge_ad.line_calibration): SIGUSR1 asks it of all, the line of one
    (Modbus register +11, MQTT's TOPIC/SOURCE/calibrate), and a caller through the `line` it
    passes (stream name -> LineCalibration; made here when None). Given where the bundles are
    (`paths`, as `load_detectors` was given them), `reload` also has the bundles changed on disk
    loaded again, in a thread, and the sources scored by them once they are (edge_ad.bundle_swap).
    A source that fails to open stops the run before it starts; a sink that fails later is reported
    and inference goes on; maps that fail the bundles' check images, scored again every
    `self_check_interval_s`, stop it (BundleError)."""
    if not streams:
        raise EdgeAdError("run: no --input given")
    names = [s.name for s in streams]
    if len(set(names)) != len(names):
        raise EdgeAdError(f"run: source names must differ, got {names}")
    if shared := shared_slugs(names):
        raise EdgeAdError(f"run: sources {shared} would share the name {slug(shared[0])} in snapshot and sample files, "
                          "MQTT topics and OPC UA node ids; give them names that differ in letters or digits")
    writers: dict[str, str] = {}  # output -> the source that writes it
    for stream in streams:  # an unknown output type fails now, not after the first frame
        if stream.output:
            output_description(stream.output, 64, 64, DEFAULT_FPS, config.jetson)
            written = stream.output if "://" in stream.output else str(Path(stream.output).resolve())
            if written in writers and not stream.output.startswith("display://"):  # windows can share a screen
                raise EdgeAdError(f"run: sources {writers[written]} and {stream.name} would both write {stream.output} "
                                  "(a copied line in the sources file?); give each its own output")
            writers[written] = stream.name
    outputs = [stream.output for stream in streams if stream.output]
    check_servable(outputs)
    resolve_rtp_hosts(outputs)
    config.output_access.check(outputs)
    make_file_folders(outputs)  # last: a run refused by the checks above leaves no folder made
    detectors = detectors_of(detector, streams)
    masks = load_masks(detectors, streams)
    several = len({id(d) for d in detectors.values()}) > 1
    stop, reload = stop or threading.Event(), reload or threading.Event()
    ready = threading.Event()
    stats = {s.name: SourceStats(s.name) for s in streams}
    line = line if line is not None else {s.name: LineCalibration(s, config.calibration_frames) for s in streams}
    for calibration in line.values():
        calibration.on_written = reload.set  # read in as SIGHUP reads a calibration
    swap = BundleSwap(paths) if paths is not None else None
    checks = _SelfChecks(config.self_check_interval_s)

    def calibrate_all() -> None:
        for calibration in line.values():
            calibration.ask(True)

    with ExitStack() as stack, stop_on_signals(stop, reload, calibrate_all):
        stack.callback(lambda: [calibration.join(timeout=60.0) for calibration in line.values()])
        # With variants, the line can say which variant each source sees (MQTT TOPIC/SOURCE/variant, Modbus +10,
        # OPC UA SetVariant).
        variants = any(isinstance(d, VariantDetector) for d in detectors.values())
        plcs = config.modbus_port is not None or config.opcua_port is not None
        names = {s.name: [v for v in bundles_of(detectors[s.name]) if v is not None] for s in streams}
        hints = VariantHints(names) if (config.mqtt or plcs) and variants else None
        sinks = _Sinks(config, stack, _drift_bands(detectors) if config.drift else None, hints, line)
        if plcs:
            sinks.serve_plcs(config, names)
        for name, calibration in line.items():
            calibration.on_change = sinks.calibration_told(name)
        captures: list[_Capture] = []
        tick = None
        if config.metrics is not None or config.metrics_port is not None:
            telemetry = Telemetry(lambda: _current(stats, captures), sinks.errors, config.metrics, config.metrics_port,
                                  allowed=config.metrics_allow)
            stack.callback(telemetry.close)
            # The file's writes fail as other sinks' do (a full disk): reported, counted, and the run goes on.
            tick = sinks._guard(f"metrics {config.metrics}", telemetry.tick) if config.metrics else telemetry.tick
            stack.callback(tick, True)
            stack.callback(sinks.later.wait)  # runs before that last tick: it counts every frame's snapshot
        clock = next(filter(None, (b.clock_note() for d in detectors.values() for b in bundles_of(d).values())), None)
        for said in (clock, unsynchronised_clock(clock_state())):
            if said:
                log.warning("%s", said)
        for stream in streams:
            # One camera of several not there (a cable, a camera booting slower) must not stop the others.
            source = open_source(stream.input, stream.options, stream.pipeline, config.jetson, wait=len(streams) > 1)
            stack.callback(source.close)
            log.info("%s: %s", stream.name, without_passwords(source.description))
            if watches := followed_folder(source):
                _refuse_saving_into(watches, stream.name, config)
            bundles = bundles_of(detectors[stream.name]).values()
            if several:
                roots = [f"{b.root} (calibration {b.calibration or 'from export'})" for b in bundles]
                log.info("%s: scored by %s", stream.name, ", ".join(roots))
            for bundle in bundles:
                note = bundle.export_threshold_note()
                if note:
                    log.warning("%s: bundle %s: %s", stream.name, bundle.root, note)
            areas = sorted({b.min_defect_area for b in bundles} - {None})
            if areas:
                log.info("%s: a frame is flagged where a region of at least %s pixels reaches the threshold "
                         "(calibration)", stream.name, " / ".join(map(str, areas)))
            captures.append(_Capture(stream, source, ready, detectors[stream.name], masks[stream.name]))
            # A test pattern is not a camera: its picture stands still by design.
            if source.live and config.frozen_window_s > 0 and not (stream.input or "").startswith("test://"):
                sinks.freezes[stream.name] = FreezeWatch(config.frozen_window_s)
            if stream.output:
                sinks.add_video(stream, source)
        stack.callback(lambda: [c.join(timeout=2.0) for c in captures])
        stack.callback(lambda: [c.stop.set() for c in captures])  # runs first: stop, then join

        # A bar for a person at a terminal; none into a log (journald under systemd, a file). Its
        # rate always in frames a second: tqdm's "5.00s/ frames" for a slow line read as a typo.
        bar = stack.enter_context(tqdm(desc="scored", unit=" frames", leave=False, disable=None,
                                       bar_format="{desc}: {n_fmt} frames [{elapsed}, {rate_noinv_fmt}{postfix}]"))
        start = time.perf_counter()
        for capture in captures:
            capture.start()
        notifier = ServiceNotifier()  # under systemd: READY=1 now, the watchdog from the loop
        stack.callback(notifier.close)
        notifier.ready(f"scoring {', '.join(names)}")
        stack.callback(notifier.stopping, "stopping: finishing the outputs")  # runs first on the way out
        while not stop.is_set():
            notifier.alive(lambda: _status(_current(stats, captures)))
            if reload.is_set():
                reload.clear()
                _reload(captures, sinks)
                if swap is not None:
                    swap.ask({paths.of(c.stream): c.detector for c in captures})
            if swap is not None and (loaded := swap.take()):
                _swap_bundles(captures, loaded, paths, sinks, line)
            for capture in captures:
                sinks.watch_away(capture)
            # A capture stopped at max_frames may still hold a frame: it is not scored.
            ready_frames = [(c, f) for c in captures if not c.stop.is_set() and (f := c.take()) is not None]
            if not ready_frames:
                if all(c.finished and (c.stop.is_set() or c.slot.empty()) for c in captures):
                    break
                ready.wait(0.1)
                ready.clear()
                continue
            results = _score(ready_frames, stats, hints)
            done = time.monotonic()
            judged = []
            for (capture, frame), result in zip(ready_frames, results):
                if result is None:
                    continue
                record = stats[capture.stream.name]
                latency_ms = (done - frame.arrived) * 1e3
                alarm = record.add(latency_ms, result.is_anomaly, capture.stream.alarm_frames or config.alarm_frames)
                bundle = _judged_by(capture.detector, result)
                sinks.tell_plc(capture.stream, frame, result, record, alarm, bundle)
                judged.append((capture, frame, result, latency_ms, record, alarm, bundle))
            for capture, frame, result, latency_ms, record, alarm, bundle in judged:
                sinks.deliver(capture.stream, frame, result, latency_ms, record, alarm, bundle)
                if not settling(capture.source, frame):  # a line calibration asked as the camera starts
                    line[capture.stream.name].take(capture.detector, capture.mask, frame.image, result,
                                                   capture.source.live)
                if config.max_frames is not None and record.frames >= config.max_frames:
                    capture.stop.set()
            if judged and not bar.disable:
                last, _, verdict, *_ = judged[-1]
                bar.set_postfix_str(_bar_text(stats, last.stream.name if len(captures) > 1 else None, verdict),
                                    refresh=False)
            bar.update(len(ready_frames))
            if tick is not None:
                tick()
            checks.run_if_due(captures, sinks)
        seconds = time.perf_counter() - start
    _current(stats, captures)
    for capture in captures:
        stats[capture.stream.name].error = capture.error
    failed = [c for c in captures if c.error]
    if failed and len(failed) == len(captures) and not any(stats[c.stream.name].frames for c in captures):
        raise SourceError(failed[0].error)
    return RunSummary(seconds, list(stats.values()), {name: n for name, n in sinks.errors().items() if n})
