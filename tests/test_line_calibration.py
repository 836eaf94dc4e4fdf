"""A calibration on the line: `edge-ad run` calibrates a source on the frames it scores, asked by
SIGUSR1 or by the PLC (Modbus register +11), writes it as `calibrate` would and judges by it."""

import hashlib
import importlib
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import cv2
import numpy as np
import yaml
from pymodbus.client import ModbusTcpClient

from calibration.site import calibrate_into, collect
from edge_ad.detector import Detector
from edge_ad.line_calibration import CALIBRATED, CALIBRATING, REFUSED, LineCalibration
from edge_ad.modbus import CALIBRATE_REGISTER, REGISTERS_PER_SOURCE
from edge_ad.pipelines import SourceOptions
from edge_ad.runner import RunConfig, load_detectors, run
from edge_ad.streams import Stream

from conftest import UNWRITABLE, calibrated_copy, failing_once, free_port, input_registers, modbus_client


def _darker(normal_folder, folder):
    """The cells under less light: the line after a lamp aged, which the old calibration does not fit."""
    folder.mkdir()
    for path in sorted(normal_folder.glob("*.png")):
        cv2.imwrite(str(folder / path.name), (cv2.imread(str(path)) * 0.6).astype(np.uint8))
    return folder


def _stop_at(calibration: LineCalibration, state: int) -> threading.Event:
    """An event for a run's `stop`, set a second after `calibration` reaches `state` (calibrated:
    frames judged by it), or after a minute. Runs on looped files: a file that ended first would
    end the run before the calibration."""
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 60
        while calibration.state != state and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop


def test_a_run_calibrates_a_source_on_its_own_frames(tiny_bundle, normal_folder, tmp_path):
    bundle = calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle")
    before = yaml.safe_load((bundle / "calibration.yaml").read_text())
    stream = Stream(str(_darker(normal_folder, tmp_path / "darker")), name="cam", options=SourceOptions(loop=-1))
    line = {"cam": LineCalibration(stream, frames=60)}
    line["cam"].ask(True)  # from the first frame on, as SIGUSR1 or the PLC would ask
    stop = _stop_at(line["cam"], CALIBRATED)
    events = tmp_path / "events.jsonl"
    run(Detector.load(bundle), [stream], RunConfig(events=events), stop=stop, line=line)

    assert line["cam"].state == CALIBRATED
    after = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert after["source"] == f"{stream.input} (edge-ad run)" and after["frames"] == 60
    assert (after["target_false_alarm_rate"], after["confidence"]) == (0.3, 0.9)  # as the calibration it replaces
    assert after["threshold"] != before["threshold"]
    assert yaml.safe_load((bundle / "calibration.yaml.bak").read_text())["threshold"] == before["threshold"]
    assert (bundle / "calibration_report.png").is_file()
    frames = [json.loads(line) for line in events.read_text().splitlines()]
    thresholds = [e["threshold"] for e in frames]
    assert thresholds[0] == before["threshold"]  # judged by the calibration in use meanwhile
    assert thresholds[-1] == after["threshold"]  # then by the new one, read in without a restart
    assert thresholds.index(after["threshold"]) >= 60
    named = [hashlib.sha256((bundle / name).read_bytes()).hexdigest()[:12]
             for name in ("calibration.yaml.bak", "calibration.yaml")]
    assert (frames[0]["calibration"], frames[-1]["calibration"]) == tuple(named)  # the events say which


def test_a_calibration_with_the_f1_best_threshold_is_said_to_be_replaced_by_a_false_alarm_one(
        tiny_bundle, normal_folder, tmp_path, caplog):
    """`calibrate --threshold f1` takes the threshold from known defects, which the line does not
    show: the calibration made on the line kept to the recorded rate instead, and said nothing of
    the threshold moving."""
    bundle = calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle")
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    (bundle / "calibration.yaml").write_text(yaml.safe_dump({**data, "threshold_from": "f1"}))
    stream = Stream(str(normal_folder), name="cam", options=SourceOptions(loop=-1))
    line = {"cam": LineCalibration(stream, frames=60)}
    line["cam"].ask(True)
    with caplog.at_level(logging.WARNING, logger="edge_ad.calibration"):
        run(Detector.load(bundle), [stream], RunConfig(), stop=_stop_at(line["cam"], CALIBRATED), line=line)
    assert line["cam"].state == CALIBRATED
    said = [record.getMessage() for record in caplog.records if record.name == "edge_ad.calibration"]
    assert said == ["cam: the calibration in use has the known defects' F1-best threshold (calibrate "
                    "--threshold f1); the line shows no known defects, so the new one's threshold keeps to its "
                    "false-alarm rate 0.3 instead (edge-ad calibrate --defects DIR --threshold f1 makes an F1-best "
                    "one again)"]
    after = yaml.safe_load((bundle / "calibration.yaml").read_text())
    assert (after["threshold_from"], after["target_false_alarm_rate"]) == ("false-alarm rate", 0.3)


def test_a_line_calibration_asked_as_a_camera_starts_keeps_its_frames_once_it_has_settled(
        tiny_bundle, normal_folder, tmp_path, monkeypatch):
    """Asked as the run starts (commissioning: the service started, then the PLC's button), a line
    calibration kept a USB or CSI camera's first frames as normal ones, dark while its exposure
    settles. test:// plays such a camera here (its pipeline marked so), with 1.5 s to settle."""
    from edge_ad import sources

    importlib.import_module("calibration.report")  # the calibration code an ask loads first, here at once

    pipeline = sources.source_pipeline
    monkeypatch.setattr(sources, "source_pipeline", lambda *args, **kwargs: replace(pipeline(*args, **kwargs),
                                                                                    settles=True))
    monkeypatch.setattr(sources, "SETTLE_S", 1.5)
    offered = []  # when the run offered the calibration each frame
    take = LineCalibration.take
    monkeypatch.setattr(LineCalibration, "take", lambda self, *args: (offered.append(time.monotonic()),
                                                                       take(self, *args)))
    stream = Stream("test://ball?width=64&height=48&fps=30", name="cam")
    line = {"cam": LineCalibration(stream, frames=10)}
    line["cam"].ask(True)
    detector = Detector.load(calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle"))
    stop = _stop_at(line["cam"], CALIBRATED)
    started = time.monotonic()
    run(detector, [stream], RunConfig(), stop=stop, line=line)
    assert offered[0] - started >= 1.5 and line["cam"].state == CALIBRATED


def test_a_hand_edited_setting_of_the_calibration_in_use_is_named_and_left_for_the_defaults(
        tiny_bundle, normal_folder, tmp_path, caplog):
    """calibration.yaml's rate, confidence and frames are read only when the line asks for a new
    calibration: a confidence written as 95 (for 95 %) stopped the whole run then ("math domain
    error"), frames as text with a TypeError; each is named, and calibrate's defaults are taken."""
    bundle = calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle")
    data = yaml.safe_load((bundle / "calibration.yaml").read_text())
    line = LineCalibration(Stream(str(normal_folder), name="cam"), frames=60)
    assert line._recorded(Detector.load(bundle).bundle) == {"far": 0.3, "confidence": 0.9, "frames": 12}
    for key, value, said in [("confidence", 95, "a number between 0 and 1, got 95"),
                             ("frames", "3000", "a whole number, 1 or more, got '3000'"),
                             ("target_false_alarm_rate", 0.0, "a number between 0 and 1, got 0.0"),
                             ("frames", 12.5, "a whole number, 1 or more, got 12.5")]:
        (bundle / "calibration.yaml").write_text(yaml.safe_dump({**data, key: value}))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert line._recorded(Detector.load(bundle).bundle) == {}
        assert f"calibration.yaml: field '{key}' must be {said}; calibrating with calibrate's defaults" in caplog.text
    (bundle / "calibration.yaml").write_text(yaml.safe_dump({**data, "target_false_alarm_rate": 1e-320}))
    line.ask(True)
    line._loader.join()
    with caplog.at_level(logging.ERROR):  # a rate no number of frames can show: refused, and the run goes on
        line.take(Detector.load(bundle), None, cv2.imread(str(next(normal_folder.glob("*.png")))), None, True)
    assert line.state == REFUSED and "cam: not calibrating: --target-far 1e-320: no number of frames" in caplog.text


def test_a_calibration_the_frames_cannot_support_is_refused(tiny_bundle, normal_folder, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)  # no calibration yet: calibrate's defaults, 1 in 1,000 at 95 %
    stream = Stream(str(normal_folder), name="cam", options=SourceOptions(loop=-1))
    line = {"cam": LineCalibration(stream, frames=10)}
    line["cam"].ask(True)
    run(Detector.load(bundle), [stream], RunConfig(), stop=_stop_at(line["cam"], REFUSED), line=line)
    assert line["cam"].state == REFUSED and not (bundle / "calibration.yaml").exists()


def test_a_calibration_folder_that_takes_no_file_is_refused_as_it_is_asked(tiny_bundle, normal_folder, caplog):
    """A folder the run's user may not write in (a bundle installed by root for a service that
    runs as edge-ad) was said after the frames, with the good parts they showed gone by."""
    stream = Stream(str(normal_folder), name="cam", options=SourceOptions(loop=-1), calibration=str(UNWRITABLE))
    line = {"cam": LineCalibration(stream, frames=3000)}  # enough for calibrate's defaults
    line["cam"].ask(True)
    with caplog.at_level(logging.INFO):
        run(load_detectors([stream], str(tiny_bundle)), [stream], RunConfig(), stop=_stop_at(line["cam"], REFUSED),
            line=line)
    assert line["cam"].state == REFUSED and line["cam"].kept == 0
    (said,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert said.startswith(f"cam: not calibrating: {UNWRITABLE}: cannot write in the calibration folder (")


def test_frames_that_score_alike_can_refuse_a_calibration_at_its_end(tiny_bundle, normal_folder, tmp_path,
                                                                  caplog):
    """A line where each cell stays in view for ten frames: 120 frames are worth about 20
    independent ones, too few for the rate of the calibration in use (1 in 20 needs 45); it is
    refused, naming the run's own option, and the calibration in use stays."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    detector = Detector.load(bundle)
    cells = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))]
    calibrate_into(bundle, detector, collect(detector, iter(cells * 4), 48)[None], 0.05, 0.9, "cells")
    before = (bundle / "calibration.yaml").read_text()
    slow = tmp_path / "slow-line"
    slow.mkdir()
    for i, cell in enumerate(cells):
        for j in range(10):
            cv2.imwrite(str(slow / f"{10 * i + j:03d}.png"), cell)
    stream = Stream(str(slow), name="cam", options=SourceOptions(loop=-1))
    line = {"cam": LineCalibration(stream, frames=120)}
    line["cam"].ask(True)
    with caplog.at_level(logging.INFO):
        run(Detector.load(bundle), [stream], RunConfig(), stop=_stop_at(line["cam"], REFUSED), line=line)
    assert line["cam"].state == REFUSED
    assert (bundle / "calibration.yaml").read_text() == before
    (refusal,) = [r.getMessage() for r in caplog.records if "not calibrated" in r.getMessage()]
    assert "independent ones" in refusal and "--calibration-frames" in refusal and " --frames" not in refusal


def test_a_calibration_that_fails_unexpectedly_leaves_the_line_free_to_ask_again(tiny_bundle, normal_folder, tmp_path,
                                                                                monkeypatch, caplog):
    """A fault of edge-ad's own while the calibration is made (here in reading which frames the
    calibration in use flagged) is logged and refuses it; the calibration in use stays, and the
    next ask makes one: it is not left "being made" for the rest of the run."""
    import calibration.site

    bundle = calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle")
    before = (bundle / "calibration.yaml").read_text()
    monkeypatch.setattr(calibration.site, "flagged_in_use",
                        failing_once(calibration.site.flagged_in_use, RuntimeError("a fault of edge-ad's own")))
    stream = Stream(str(normal_folder), name="cam", options=SourceOptions(loop=-1))
    line = {"cam": LineCalibration(stream, frames=24)}
    line["cam"].ask(True)
    states = []

    def ask_again_once_refused() -> None:
        deadline = time.monotonic() + 60
        while line["cam"].state != REFUSED and time.monotonic() < deadline:
            time.sleep(0.02)
        states.append((line["cam"].state, (bundle / "calibration.yaml").read_text() == before))
        line["cam"].ask(True)

    threading.Thread(target=ask_again_once_refused, daemon=True).start()
    with caplog.at_level(logging.INFO):
        run(Detector.load(bundle), [stream], RunConfig(), stop=_stop_at(line["cam"], CALIBRATED), line=line)
    assert states == [(REFUSED, True)]
    assert any(r.levelno == logging.ERROR and r.getMessage() == "cam: not calibrated" and r.exc_info
               for r in caplog.records)
    assert line["cam"].state == CALIBRATED and (bundle / "calibration.yaml").read_text() != before


def _wait_for(client: ModbusTcpClient, state: int, within_s: float = 90.0) -> list[int]:
    """Registers +11 and +12 of the first source once +11 shows `state`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        values = input_registers(client, CALIBRATE_REGISTER, 2)
        if values[0] == state:
            return values
        time.sleep(0.1)
    raise AssertionError(f"register +11 did not show {state} within {within_s:.0f} s: {values}")


def test_the_plc_or_a_signal_asks_a_running_run_to_calibrate(tiny_bundle, normal_folder, tmp_path):
    bundle = calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle")
    before = yaml.safe_load((bundle / "calibration.yaml").read_text())["threshold"]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_ad", "run", "--bundle", str(bundle), "--input",
         str(_darker(normal_folder, tmp_path / "darker")), "--input-loop", "-1",
         "--modbus-port", str(port), "--calibration-frames", "40"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = modbus_client(port)
        assert input_registers(client, CALIBRATE_REGISTER, 2) == [0, 0]
        refused = client.write_register(CALIBRATE_REGISTER, 2)
        assert refused.isError() and refused.exception_code == 3
        assert not client.write_register(CALIBRATE_REGISTER, 1).isError()
        assert _wait_for(client, CALIBRATED) == [CALIBRATED, 40]
        deadline = time.monotonic() + 30
        while input_registers(client, 3, 1)[0] == round(before * 1000) and time.monotonic() < deadline:
            time.sleep(0.1)  # the next frames are judged by the new threshold
        after = yaml.safe_load((bundle / "calibration.yaml").read_text())["threshold"]
        assert input_registers(client, 3, 1) == [round(after * 1000)] != [round(before * 1000)]

        process.send_signal(signal.SIGUSR1)  # every source, from the service manager
        assert _wait_for(client, CALIBRATING)[0] == CALIBRATING
        assert _wait_for(client, CALIBRATED) == [CALIBRATED, 40]
        outside = client.write_register(REGISTERS_PER_SOURCE + CALIBRATE_REGISTER, 1)  # no second source
        assert outside.isError() and outside.exception_code == 2
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=60)
    client.close()
    assert process.returncode == 0, log
    assert "modbus: the PLC asks to calibrate" in log and "SIGUSR1: calibrating every source" in log
    assert log.count("calibrated on 40 frames") == 2
    assert len(re.findall(r"calibrated on 40 frames: .* \(the calibration it replaces flagged \d+ of these frames\)",
                          log)) == 2


def test_with_a_bundle_per_variant_the_variant_the_line_made_is_calibrated(variant_bundles, test_cells, tmp_path):
    """A camera with its own calibration folder, on the mono and poly bundles, sees mono cells
    while it calibrates on the line: mono's calibration is made again, poly's stays as it was."""
    folder, frames = tmp_path / "calibration", tmp_path / "mono-cells"
    for module_type, cells in test_cells.items():
        detector = Detector.load(variant_bundles[module_type])
        kept = collect(detector, iter(cells * 2), 12)[None]
        calibrate_into(folder / module_type, detector, kept, 0.3, 0.9, "cells")
    frames.mkdir()
    for i, cell in enumerate(test_cells["mono"]):
        cv2.imwrite(str(frames / f"{i}.png"), cell)
    stream = Stream(str(frames), name="cam", options=SourceOptions(loop=-1), calibration=str(folder),
                    bundle=tuple(f"{t}={path}" for t, path in variant_bundles.items()))
    line = {"cam": LineCalibration(stream, frames=30)}
    line["cam"].ask(True)
    stop = _stop_at(line["cam"], CALIBRATED)
    run(load_detectors([stream]), [stream], RunConfig(), stop=stop, line=line)

    assert line["cam"].state == CALIBRATED
    mono, poly = (yaml.safe_load((folder / t / "calibration.yaml").read_text()) for t in ("mono", "poly"))
    assert mono["source"] == f"{frames} (edge-ad run)" and mono["frames"] == 30
    assert poly["source"] == "cells" and not (folder / "poly" / "calibration.yaml.bak").exists()
