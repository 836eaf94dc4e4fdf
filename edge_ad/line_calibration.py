"""A source calibrated on its own frames while `edge-ad run` goes on scoring them.

`edge-ad calibrate` opens the camera itself, and a CSI, USB or GigE Vision camera takes one
client: the run would have to stop. Asked instead (SIGUSR1 for every source, or the line for
one: Modbus register +11, MQTT's TOPIC/SOURCE/calibrate), the run keeps the next frames it scores of that source as normal
ones, as `calibrate` keeps them, then makes the calibration in a thread, writes it where
`calibrate` would (the source's `calibration:` folder, else its bundle; each variant's with one
bundle per variant) and reads it in as SIGHUP does. Meanwhile the frames are judged by the
calibration in use. The rate, confidence, frames and least defect area are those of the
calibration it replaces (calibrate's defaults without one), the frames `--calibration-frames`
where given.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
from typing import Callable

import numpy as np

from .detector import Result
from .errors import EdgeAdError
from .files import writable_later
from .masks import InspectionMask
from .streams import Stream, calibration_folder
from .variants import bundles_of, detectors_by_variant

log = logging.getLogger("edge_ad.calibration")

IDLE, CALIBRATING, CALIBRATED, REFUSED = 0, 1, 2, 3  # its state, as Modbus register +11 shows it
DEFAULTS = {"far": 0.001, "confidence": 0.95, "frames": 3000}  # edge-ad calibrate's


class LineCalibration:
    """One source's calibration on its own frames during a run. `ask` (any thread: a signal
    handler, the Modbus server, MQTT's) starts or cancels it; the scoring loop calls `take` for each of
    the source's scored frames; `on_change(state, frames kept)` hears of every change (Modbus
    registers) and `on_written()` when new calibration files are there to read in."""

    def __init__(self, stream: Stream, frames: int | None = None, on_written: Callable[[], None] = lambda: None,
                 on_change: Callable[[int, int], None] = lambda state, kept: None):
        self.stream, self.frames, self.on_written, self.on_change = stream, frames, on_written, on_change
        self.state = IDLE
        self.kept = 0
        self._asked: queue.SimpleQueue[bool] = queue.SimpleQueue()  # starts (True) and cancels not yet acted on
        self._collected: dict = {}  # by variant, calibration.site.Collected
        self._settings: dict[str | None, dict] = {}
        self._target = 0
        self._rng = np.random.default_rng(0)  # which raw-map values of each frame are pooled for the quantiles
        self._worker: threading.Thread | None = None
        self._loader: threading.Thread | None = None

    def ask(self, start: bool) -> None:
        """Start (True) or cancel a calibration, from the next frame the scoring loop takes. The
        first time, the calibration code (scipy, matplotlib: half a second) is imported in a
        thread first, so that the loop does not stop for it."""
        self._asked.put(start)
        if self._loader is None:
            self._loader = threading.Thread(target=importlib.import_module, args=("calibration.report",), daemon=True,
                                            name="calibration import")
            self._loader.start()

    def take(self, detector, mask: InspectionMask | None, frame: np.ndarray, result: Result, camera: bool) -> None:
        """A frame of this source as scored (with `detector` within `mask`): kept while calibrating.
        `camera`: the source is a live camera (Collected.camera)."""
        if self._loader is None or self._loader.is_alive():
            return  # nothing asked yet, or the calibration code still loading: the asks wait
        while not self._asked.empty():
            self._act(self._asked.get(), detector)
        if self.state != CALIBRATING or self._worker is not None:
            return
        from calibration.site import Collected

        collected = self._collected.setdefault(result.variant, Collected(mask=mask, camera=camera))
        collected.add(self.kept, frame, result, self._rng)
        self.kept += 1
        self.on_change(self.state, self.kept)
        if self.kept >= self._target:
            log.info("%s: %d normal frames kept; calibrating", self.stream.name, self.kept)
            self._worker = threading.Thread(target=self._calibrate, args=(detector,), daemon=True,
                                            name=f"calibrate {self.stream.name}")
            self._worker.start()

    def _act(self, start: bool, detector) -> None:
        if self._worker is not None:
            log.warning("%s: a calibration is being made; asked to %s, it goes on", self.stream.name,
                        "start another" if start else "stop")
            return
        if not start:
            if self.state == CALIBRATING:
                log.info("%s: calibration cancelled after %d frames; the calibration in use stays", self.stream.name,
                         self.kept)
                self._set(IDLE)
            return
        if self.state == CALIBRATING:
            return
        from calibration.statistics import CalibrationError, frames_needed

        bundles = bundles_of(detector)
        self._settings = {variant: {**DEFAULTS, **self._recorded(bundle)} for variant, bundle in bundles.items()}
        self._target = self.frames or max(s["frames"] for s in self._settings.values())
        try:
            needed = max(frames_needed(s["far"], s["confidence"]) for s in self._settings.values())
        except CalibrationError as exc:  # a rate of 1e-320 in a calibration.yaml edited by hand
            log.error("%s: not calibrating: %s", self.stream.name, exc)
            self._set(REFUSED)
            return
        if self._target < needed:
            log.error("%s: not calibrating: %d frames cannot show the false-alarm rate asked (%d needed; "
                      "--calibration-frames)", self.stream.name, self._target, needed)
            self._set(REFUSED)
            return
        for variant, bundle in bundles.items():  # a folder the run's user may not write: said now, not after the frames
            try:
                writable_later(calibration_folder(self.stream, variant) or bundle.root, "calibration")
            except EdgeAdError as exc:
                log.error("%s: not calibrating: %s", self._who(variant), exc)
                self._set(REFUSED)
                return
        self._collected, self.kept, self._rng = {}, 0, np.random.default_rng(0)
        log.info("%s: calibrating on the next %d frames, which must show good parts only", self.stream.name,
                 self._target)
        for variant, settings in self._settings.items():
            if bundles[variant].threshold_is_f1:
                log.warning("%s: the calibration in use has the known defects' F1-best threshold (calibrate "
                            "--threshold f1); the line shows no known defects, so the new one's threshold keeps to "
                            "its false-alarm rate %g instead (edge-ad calibrate --defects DIR --threshold f1 makes "
                            "an F1-best one again)", self._who(variant), settings["far"])
        self._set(CALIBRATING)

    def _recorded(self, bundle) -> dict:
        """The settings of the calibration `bundle` uses; none where its file cannot be read now."""
        from calibration.site import recorded_settings

        try:
            return recorded_settings(bundle)
        except (EdgeAdError, OSError) as exc:  # removed or broken since it was read in
            log.warning("%s: %s; calibrating with calibrate's defaults", self.stream.name, exc)
            return {}

    def _who(self, variant: str | None) -> str:
        return self.stream.name if variant is None else f"{self.stream.name}, variant {variant}"

    def _set(self, state: int) -> None:
        self.state = state
        self.on_change(state, self.kept)

    def _calibrate(self, detector) -> None:
        """In its own thread: the calibration of each variant that took frames (one bundle: of it),
        from those frames, written; then read in. A variant that took none is left as it was (the
        line did not make it meanwhile)."""
        refused = []
        try:
            refused = self._calibrate_each(detector)
        except Exception:  # a fault of edge-ad's own outside one variant's: said; the run goes on, as below
            log.exception("%s: not calibrated", self.stream.name)
            refused = list(self._collected)
        finally:  # never left "being made": later asks would all be turned away
            self._worker = None
            self._set(REFUSED if refused else CALIBRATED)
        if len(refused) < len(self._collected):
            self.on_written()

    def _calibrate_each(self, detector) -> list:
        """The variants not calibrated (the reason logged); the others' calibrations written."""
        from calibration.site import calibrate_into, flagged_in_use
        from calibration.statistics import rounded_up

        bundles = bundles_of(detector)
        refused = []
        for variant, collected in self._collected.items():
            settings = self._settings[variant]
            who = self._who(variant)
            source = f"{self.stream.input or self.stream.pipeline} (edge-ad run)"
            try:
                folder = calibration_folder(self.stream, variant) or bundles[variant].root
                one = detectors_by_variant(detector)[variant]
                flagged = flagged_in_use(one, collected)
                written = calibrate_into(folder, one, collected, settings["far"], settings["confidence"], source,
                                         min_defect_area=settings.get("min_defect_area"))
            except (EdgeAdError, OSError) as exc:  # --frames, if it says so, is --calibration-frames here
                log.error("%s: not calibrated: %s", who, str(exc).replace("--frames", "--calibration-frames"))
                refused.append(variant)
                continue
            except Exception:  # a fault of edge-ad's own: said, and the run goes on with the calibration in use
                log.exception("%s: not calibrated", who)
                refused.append(variant)
                continue
            log.info("%s: calibrated on %d frames: threshold %.4f, false-alarm rate <= %g at %.0f%% confidence; "
                     "written to %s%s", who, written.calibration.frames, written.data["threshold"],
                     rounded_up(written.calibration.threshold.far_bound), 100 * settings["confidence"], written.path,
                     "" if flagged is None else f" (the calibration it replaces flagged {flagged} of these frames)")
            if written.report_problem:
                log.warning("%s: %s", who, written.report_problem)
        untouched = [v for v in bundles if v not in self._collected]
        if untouched:
            log.info("%s: variant(s) %s took none of the frames and keep their calibration", self.stream.name,
                     ", ".join(untouched))
        return refused

    def join(self, timeout: float) -> None:
        """Wait for a calibration being made (at the end of the run, so that it is not lost)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
