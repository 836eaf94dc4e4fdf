"""The `edge-ad` command. Subcommands that need torch import the export package lazily."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import __version__
from .backends import BACKENDS
from .bundle import BACKBONES, MODEL_TYPES, load_bundle
from .errors import (EdgeAdError, SourceError, password_from_environment, printable, report_errors, shell_word,
                     without_passwords)
from .freeze import FROZEN_WINDOW_S
from .modbus import modbus_clients
from .output_access import OUTPUT_PASSWORD_VARIABLE, OutputAccess
from .pipelines import FLIPS, MAX_BITRATE_KBPS, MAX_CAMERA_SIDE, SourceOptions, check_crop, local_path
from .reports import write_report

if TYPE_CHECKING:  # the commands import what they need when they run
    from calibration.site import Collected

    from .detector import Detector


MAX_ANSWER_WAIT_S = 600.0  # cameras --timeout: the most seconds to wait for cameras' answers
MAX_BATCH_SIZE = 1024  # deepstream --batch-size: nvstreammux's batch-size property, 0 to 1024
# train --whitening-eps: the features are standardised per channel, so each grid position's
# covariance has a trace of about the channel count (152) or less; far above that, the
# whitening is a scaled identity, the distance a Euclidean one.
MAX_WHITENING_EPS = 1e6


def _number(text: str) -> float:
    """`text` as a number; NaN where it is none (nan, inf and words fail every check below)."""
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _finite(text: str) -> float:
    value = _number(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _crop(text: str) -> tuple[int, int, int, int]:
    try:
        return check_crop(text, text)
    except SourceError:
        raise argparse.ArgumentTypeError(
            f"must be X,Y,WIDTH,HEIGHT in pixels, X, Y 0 or more and WIDTH, HEIGHT above 0, got {text}") from None


def _pictures(text: str) -> str:
    """Pictures to read (--data, --defects, --calib-data): a file:// URI, as a file manager copies
    a folder's location, as its path; the path was read as a folder named 'file:'."""
    if not text.startswith("file://"):
        return text
    try:
        return str(local_path(text))
    except SourceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _megabytes(text: str) -> float:
    """A size in megabytes, 0 or more, whose bytes are a number: 1e308 MB stopped run with an
    OverflowError traceback."""
    value = _non_negative(text)
    if not math.isfinite(value * (1 << 20)):
        raise argparse.ArgumentTypeError(f"must be a size in megabytes that a disk could hold, got {text}")
    return value


def _kilobits(text: str) -> int:
    """An H.264 bit rate in kbit/s, up to MAX_BITRATE_KBPS: past x264enc's most (2,048,000) it kept
    its default with only GLib's warning, and a rate given in bit/s (4000000 for 4 Mbit/s) asked
    nvv4l2h264enc for 4 Gbit/s."""
    value = _positive_int(text)
    if value > MAX_BITRATE_KBPS:
        raise argparse.ArgumentTypeError(f"must be a bit rate in kbit/s from 1 to {MAX_BITRATE_KBPS} (H.264 level "
                                         f"5.2's most), got {text} (bit/s? 4000 is 4 Mbit/s)")
    return value


def _whole(text: str, rule: str) -> int:
    """`text` as a whole number, 0 or more; else the error that says `rule`."""
    digits = text.strip()
    if not digits.isdecimal():
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    if len(digits) > 4300:  # int() refuses more with a ValueError, said by argparse as "invalid _positive_int value"
        raise argparse.ArgumentTypeError(f"{rule}, got a number of {len(digits)} digits")
    return int(digits)


def _positive_int(text: str) -> int:
    value = _whole(text, "must be a positive integer")
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    return _whole(text, "must be a whole number, 0 or more")


def _at_most(parse: Callable[[str], float], most: float, allowed: str) -> Callable[[str], float]:
    """`parse`, refusing a value above `most`: 'must be ALLOWED, got TEXT'."""
    def parsed(text: str) -> float:
        value = parse(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value
    return parsed


# 1e308 stopped `cameras` with an OverflowError traceback (a socket's timeout past the system's time).
_answer_wait = _at_most(_positive_float, MAX_ANSWER_WAIT_S,
                        f"seconds above 0, up to {MAX_ANSWER_WAIT_S:g} (cameras answer within seconds)")
# 1e60 trained, then stopped export with a ValueError traceback: the whitened features underflowed
# float32 to maps of zeros.
_whitening_eps = _at_most(_positive_float, MAX_WHITENING_EPS,
                          f"a positive number up to {MAX_WHITENING_EPS:.0f} (relative to a channel's variance; far "
                          "above 152, the channel count, the distance is a Euclidean one already)")
_camera_side = _at_most(_positive_int, MAX_CAMERA_SIDE,
                        f"1 to {MAX_CAMERA_SIDE} pixels (a line-scan camera's line is up to 16384)")
# 100000 was written into the nvinfer config, and `--build` would have sized the engine's input
# for it (79 GB of FP32 frames at 256 px).
_batch_size = _at_most(_positive_int, MAX_BATCH_SIZE,
                       f"1 to {MAX_BATCH_SIZE} frames (nvstreammux batches at most {MAX_BATCH_SIZE})")


def _port(text: str) -> int:
    """A TCP port to serve on (bind() raised OverflowError, with a traceback, past 65535)."""
    value = _whole(text, "must be a port from 1 to 65535")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {text}")
    return value


def parse_input_size(text: str) -> int | list[int]:
    """`train --input-size`: a square's side (256), or WIDTH x HEIGHT (448x256) as cameras name
    frame sizes; a rectangle is returned as [height, width], the order of the run and bundle."""
    width, _, height = text.lower().partition("x")
    try:
        sides = [int(width), int(height or width)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a side in pixels (256) or WIDTHxHEIGHT (448x256), got {text}") from None
    if min(sides) <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return sides[0] if sides[0] == sides[1] else sides[::-1]


def _rate(text: str) -> float:
    """A probability strictly between 0 and 1 (--target-far, --confidence)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


# The learned bridge's training options: with another model they would be silently ignored.
BRIDGE_TRAIN_OPTIONS = {"steps": "--steps", "distill_steps": "--distill-steps", "resume": "--resume",
                        "defect_kinds": "--defect-kinds"}


def _train(args: argparse.Namespace) -> None:
    import torch

    from export.train import TrainConfig, train

    given = [flag for name, flag in BRIDGE_TRAIN_OPTIONS.items() if getattr(args, name) not in (None, False)]
    if given and args.model != "bridge":
        raise EdgeAdError(f"{', '.join(given)}: only for --model bridge; --model {args.model} has no training "
                          "iterations, checkpoint to resume or synthetic defects")
    defaults = ("whitening_eps", "steps", "distill_steps")  # None: TrainConfig's default
    optional = {name: getattr(args, name) for name in defaults if getattr(args, name) is not None}
    config = TrainConfig(
        data=args.data[0] if len(args.data) == 1 else args.data,  # one, as runs before several were recorded
        model=args.model,
        backbone=args.backbone,
        input_size=args.input_size,
        prototypes=args.prototypes,
        position_whitening=not args.no_position_whitening,
        **optional,
        seed=args.seed,
        skip_bad=args.skip_bad,
        resume=args.resume,
        defects=args.defects,
        defect_kinds=args.defect_kinds,
        device=args.device,
    )
    # A GPU's out-of-memory error (batches of 16 pictures of --input-size go to it), by the name every torch
    # from 2.2 has: torch.OutOfMemoryError came with 2.5.
    try:
        run = train(config, Path(args.out))
    except torch.cuda.OutOfMemoryError as exc:
        said = str(exc).split(". ")[:3]  # "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ..."
        raise EdgeAdError(f"--device {args.device}: the GPU ran out of memory ({'. '.join(said)}); train with "
                          "--device cpu, or a smaller --input-size") from exc
    print(f"run written to {run}; its bundle, for eval, calibrate and run: edge-ad export --run {shell_word(run)} "
          "--out BUNDLE")


def _export(args: argparse.Namespace) -> None:
    if args.via == "torch-tensorrt":
        from export.torch_trt import export_torch_tensorrt

        out = export_torch_tensorrt(Path(args.run), Path(args.out), args.precision, args.steps)
        print(f"Torch-TensorRT programs written to {out}")
        return
    from export.onnx_export import CalibrationConfig, export_bundle

    calibration = CalibrationConfig(args.calib_data, args.calib_images, args.calib_method, args.int8_activations,
                                    tuple(args.keep_fp32 or ()), args.keep_fp32_below)
    bundle = export_bundle(Path(args.run), Path(args.out), args.steps, args.precision, calibration, args.fuse_steps)
    print(f"bundle written to {bundle}")
    note = load_bundle(bundle).export_threshold_note()
    if note:
        print(f"note: {note}")


def _print_report(report: dict, json_path: str | None) -> None:
    print(json.dumps(report, indent=2))  # first: a JSON file the disk has no room for loses nothing measured
    if json_path:
        write_report(report, Path(json_path))


def _eval(args: argparse.Namespace) -> None:
    from export.eval_report import eval_notes
    from export.evaluate import evaluate

    from .masks import InspectionMask

    bundle, mask_path, calibration = args.bundle, args.mask, None
    if args.sources or args.source:  # the camera's bundle, mask and calibration folder, as run judges it
        from .streams import bundle_of

        stream = _named_stream(args, SourceOptions(), required=True)
        bundle, mask_path, calibration = list(bundle_of(stream, args.bundle or ())), stream.mask, stream.calibration
    elif not bundle:
        raise EdgeAdError("eval: give --bundle, or --sources FILE --source NAME (that camera's bundle, mask and "
                          "calibration)")
    mask = InspectionMask.load(mask_path) if mask_path else None
    report = evaluate(bundle, args.data, steps=args.steps, backend=args.backend, dla_core=args.dla_core,
                      picture=Path(args.report) if args.report else None, mask=mask,
                      min_defect_area=args.min_defect_area, scores_file=Path(args.scores) if args.scores else None,
                      skip_bad=args.skip_bad, calibration=Path(calibration) if calibration else None)
    _print_report(report, args.json)
    for problem in ("scores_file_problem", "picture_problem"):
        if problem in report:
            print(f"warning: {report[problem]}", file=sys.stderr)
    for note in eval_notes(report):
        print(f"note: {note}", file=sys.stderr)


def _source_options(args: argparse.Namespace) -> SourceOptions:
    """The SourceOptions of `run`, `calibrate` and `record` (see _add_source_options; --realtime and
    --input-loop are run's alone)."""
    return SourceOptions(args.input_width, args.input_height, args.input_framerate, args.input_codec,
                         args.latency, args.timeout, transport=args.rtsp_transport, flip=args.input_flip,
                         crop=args.input_crop, realtime=getattr(args, "realtime", False),
                         loop=getattr(args, "input_loop", 0), follow=args.follow, certificate=args.input_certificate)


def _streams(args: argparse.Namespace) -> list:
    """The run's streams from --sources, or from --input / --output / --pipeline."""
    from .streams import Stream, streams_from_yaml

    options = _source_options(args)
    if args.sources:
        if args.input or args.pipeline or args.output:
            raise EdgeAdError("--sources: give the inputs and outputs in the YAML file, not also on the command line")
        return streams_from_yaml(Path(args.sources), options, args.mask)
    inputs = args.input or ([""] if args.pipeline else [])
    if not inputs:
        raise EdgeAdError("run: give --input (repeat it for several cameras), --pipeline or --sources")
    outputs = args.output or [None] * len(inputs)
    if len(outputs) != len(inputs):
        raise EdgeAdError(f"--output: give one per --input ({len(inputs)}), got {len(outputs)}")
    return [Stream(uri, output=out, options=options, pipeline=args.pipeline, mask=args.mask)
            for uri, out in zip(inputs, outputs)]


def _the_stream(args: argparse.Namespace):
    """The one source `calibrate` and `record` read: the --sources entry named --source (its input,
    options, mask and bundle, as `run` takes them), or --input / --pipeline with the command line's."""
    from .streams import Stream

    if args.sources and (args.input or args.pipeline):
        raise EdgeAdError("--sources: the source is in the YAML file (choose it with --source NAME), not also --input "
                          "or --pipeline")
    if args.sources or args.source:
        return _named_stream(args, _source_options(args))
    return Stream(args.input or "", options=_source_options(args), pipeline=args.pipeline,
                  mask=getattr(args, "mask", None))


def _named_stream(args: argparse.Namespace, options: SourceOptions, required: bool = False):
    """The --sources entry named --source, or the file's only one. Without --source, calibrate
    and record take every source of several; with `required` (eval) that is refused."""
    from .streams import streams_from_yaml

    if not args.sources:
        raise EdgeAdError(f"--source {args.source}: needs --sources FILE, the file that names it")
    streams = {s.name: s for s in streams_from_yaml(Path(args.sources), options, getattr(args, "mask", None))}
    if args.source is None and len(streams) == 1:
        return next(iter(streams.values()))
    if args.source is None and required:
        raise EdgeAdError(f"--sources {args.sources} names the sources {sorted(streams)}: give --source NAME, the "
                          "camera whose pictures these are")
    if args.source not in streams:
        raise EdgeAdError(f"--source {args.source}: {args.sources} names the sources {sorted(streams)}; give one of them")
    return streams[args.source]


def _print_pipelines(streams: list, jetson: bool | None, bitrate_kbps: int | None) -> None:
    """The GStreamer pipelines of each stream (outputs at the input's size, else 1280x720, as
    `run` fits it: `output_size`), with passwords as ***, as the run logs them: printed pipelines
    get pasted into tickets and forums. What `run` would warn of a source's settings (a latency
    not below the timeout, a GigE camera's pixel format) is said too, on stderr."""
    from .followed_pictures import check_followable
    from .http_pictures import HttpPictures, is_http_pictures
    from .outputs import output_description, output_size
    from .pipelines import opencv_input, source_pipeline

    for stream in streams:
        check_followable("" if stream.pipeline else stream.input, stream.options)
        if not stream.pipeline and (found := opencv_input(stream.input)):
            followed = ", its new pictures as they arrive (--follow)" if stream.options.follow else ""
            print(f"{stream.name}: {found}{followed}, read with OpenCV")
        elif not stream.pipeline and is_http_pictures(stream.input, stream.options):
            print(f"{stream.name}: {HttpPictures(stream.input, stream.options).description}, fetched with urllib")
        else:
            spec = None if stream.pipeline else source_pipeline(stream.input, stream.options, jetson)
            pipeline = stream.pipeline or spec.description
            print(f"{stream.name}: {without_passwords(pipeline)}")
            if spec is not None and spec.note:
                print(without_passwords(spec.note), file=sys.stderr)
            if without_passwords(pipeline) != pipeline:
                print(f"{stream.name}: its password is shown as ***; put it back to run the pipeline with "
                      "gst-launch-1.0", file=sys.stderr)
        if stream.output:
            size = output_size(stream.options.width or 1280, stream.options.height or 720)
            pipeline = output_description(stream.output, *size, stream.options.framerate or 30, jetson, bitrate_kbps)
            print(f"{stream.name} -> {stream.output}: {pipeline}")


def _output_access(args: argparse.Namespace) -> OutputAccess:
    """Who may watch the run's RTSP and HTTP outputs (edge_ad.output_access)."""
    if (args.output_certificate is None) != (args.output_key is None):
        raise EdgeAdError("--output-certificate and --output-key: both, this device's certificate for the outputs "
                          "and its key")
    password = ""
    if args.output_user is not None:
        if not args.output_user.strip() or ":" in args.output_user:
            raise EdgeAdError(f"--output-user '{args.output_user}': give the viewers' user name (not empty, no ':')")
        password = password_from_environment("--output-user", args.output_user, OUTPUT_PASSWORD_VARIABLE)
    return OutputAccess(args.output_user, password, args.output_certificate, args.output_key)


def _run(args: argparse.Namespace) -> None:
    import logging

    from .runner import RunConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.opcua_user is not None and args.opcua_port is None:
        raise EdgeAdError(f"--opcua-user {args.opcua_user}: needs --opcua-port PORT, the server it logs in to")
    if args.opcua_user is not None and not args.opcua_user.strip():
        raise EdgeAdError("--opcua-user: give the user's name (it is empty)")
    if (args.opcua_certificate is None) != (args.opcua_key is None) or (args.opcua_certificate and not args.opcua_user):
        raise EdgeAdError("--opcua-certificate and --opcua-key: both, the plant's certificate for the server and its "
                          "key, and with --opcua-user (without a login the server is not encrypted)")
    if args.opcua_reader is not None and (not args.opcua_user or args.opcua_reader.strip() in ("", args.opcua_user)):
        raise EdgeAdError(f"--opcua-reader {args.opcua_reader}: a second user's name, beside --opcua-user's (the "
                          "server takes logins only with --opcua-user)")
    if args.opcua_trust is not None and not args.opcua_user:
        raise EdgeAdError(f"--opcua-trust {args.opcua_trust}: with --opcua-user (without a login the server takes no "
                          "client certificates)")
    output_access = _output_access(args)
    if args.modbus_allow and args.modbus_port is None:
        raise EdgeAdError(f"--modbus-allow {','.join(args.modbus_allow)}: needs --modbus-port PORT, the server it "
                          "guards")
    if args.modbus_allow:
        modbus_clients(args.modbus_allow)  # a mistyped address stops the run now, not once the bundles are loaded
    if args.metrics_allow and args.metrics_port is None:
        raise EdgeAdError(f"--metrics-allow {','.join(args.metrics_allow)}: needs --metrics-port PORT, the server it "
                          "guards")
    if args.metrics_allow:
        from .telemetry import metrics_clients

        metrics_clients(args.metrics_allow)
    jetson = {"auto": None, "jetson": True, "generic": False}[args.platform]
    streams = _streams(args)
    if args.print_pipeline:
        _print_pipelines(streams, jetson, args.output_bitrate)
        return
    from .bundle_swap import BundlePaths
    from .mqtt import MqttTls
    from .runner import load_detectors, run

    config = RunConfig(
        events=Path(args.events) if args.events else None,
        events_max_mb=args.events_max_mb,
        snapshots=Path(args.snapshots) if args.snapshots else None,
        snapshot_interval_s=args.snapshot_interval,
        snapshot_quota_mb=args.snapshot_quota_mb,
        samples=Path(args.samples) if args.samples else None,
        sample_interval_s=args.sample_interval,
        sample_quota_mb=args.sample_quota_mb,
        on_anomaly=args.on_anomaly,
        metrics=Path(args.metrics) if args.metrics else None,
        metrics_port=args.metrics_port,
        modbus_port=args.modbus_port,
        modbus_allow=tuple(args.modbus_allow) if args.modbus_allow else None,
        metrics_allow=tuple(args.metrics_allow) if args.metrics_allow else None,
        opcua_port=args.opcua_port,
        opcua_user=args.opcua_user,
        opcua_reader=args.opcua_reader,
        opcua_certificate=(Path(args.opcua_certificate), Path(args.opcua_key)) if args.opcua_certificate else None,
        opcua_trust=Path(args.opcua_trust) if args.opcua_trust else None,
        max_frames=args.max_frames,
        jetson=jetson,
        drift=args.drift,
        output_bitrate_kbps=args.output_bitrate,
        output_access=output_access,
        alarm_frames=args.alarm_frames,
        mqtt=args.mqtt,
        mqtt_tls=MqttTls(*(Path(f) if f else None for f in (args.mqtt_ca, args.mqtt_cert, args.mqtt_key))),
        calibration_frames=args.calibration_frames,
        self_check_interval_s=args.self_check_interval,
        frozen_window_s=args.frozen_window,
    )
    options = {"backend": args.backend, "steps": args.steps, "spin": not args.no_spin, "dla_core": args.dla_core}
    detectors = load_detectors(streams, args.bundle, **options)
    summary = run(detectors, streams, config, paths=BundlePaths(tuple(args.bundle or ()), options))
    for s in summary.sources:
        print(f"{s.name}: frames {s.frames}  dropped {s.dropped}  failed {s.failed}  reconnects {s.reconnects}  "
              f"anomalies {s.anomalies}  alarms {s.alarms}  "
              f"snapshots {s.snapshots}  latency p50 {s.latency(50):.1f} ms p99 {s.latency(99):.1f} ms"
              + (f"  error: {s.error}" if s.error else ""))
    for sink, errors in summary.sink_errors.items():
        print(f"{sink}: {errors} failed writes")
    print(
        f"frames {summary.frames}  seconds {summary.seconds:.2f}  fps {summary.fps:.1f}  "
        f"anomalies {summary.anomalies}  alarms {summary.alarms}  snapshots {summary.snapshots}"
    )


def _calibrate(args: argparse.Namespace) -> None:
    from calibration.statistics import CalibrationError, frames_needed, smallest_far

    streams = None
    if args.sources and not args.source and not args.input and not args.pipeline:
        from .streams import streams_from_yaml

        streams = streams_from_yaml(Path(args.sources), _source_options(args), args.mask)
    every = streams is not None and len(streams) > 1  # every camera, one after the other
    if args.threshold == "f1" and not args.defects:  # refused before any frame is read, not after them all
        each = (f"; known defects are one camera's: calibrate each camera of {args.sources} with --source NAME "
                "--defects DIR --threshold f1") if every else ""
        raise CalibrationError("--threshold f1 needs --defects: the F1-best threshold is set between the normal "
                               f"frames' scores and the known defects'{each}")
    needed = frames_needed(args.target_far, args.confidence)
    if args.frames < needed:  # fewer frames than independent ones needed: refused before any is read
        raise CalibrationError(f"--frames {args.frames} cannot show a false-alarm rate of {args.target_far:g} with "
                               f"{args.confidence:.0%} confidence: at least {needed} normal frames are needed, more "
                               f"where consecutive ones score alike (or ask for --target-far "
                               f"{smallest_far(args.frames, args.confidence):g} or more)")
    if every:
        _calibrate_sources(streams, args)
        return
    _calibrate_stream(_the_stream(args), args)


def _calibrate_sources(streams: list, args: argparse.Namespace) -> None:
    """`calibrate --sources FILE` without --source: each source in turn on its own frames, into
    its own calibration folder; one that fails is named at the end and the others go on."""
    from .streams import bundle_of, calibration_folder
    from .variants import parse_variants

    if args.defects:
        raise EdgeAdError("--defects: known defects are one camera's; calibrate that camera with --source NAME")
    writers: dict[Path, list[str]] = {}  # where each source's calibration.yaml would go
    for stream in streams:
        variants = parse_variants(bundle_of(stream, args.bundle or ()))
        for name, path in variants.items():
            folder = calibration_folder(stream, name if len(variants) > 1 else None) or path  # else the bundle's
            writers.setdefault(folder.resolve(), []).append(stream.name)
    shared = next(((folder, names) for folder, names in writers.items() if len(names) > 1), None)
    if shared:
        raise EdgeAdError(f"calibrate: sources {shared[1]} would write one calibration ({shared[0]}); give each a "
                          f"'calibration:' folder of its own in {args.sources}, or calibrate one with --source NAME")
    failed = []
    for stream in streams:
        print(f"{stream.name}:")
        try:
            _calibrate_stream(stream, args)
        except EdgeAdError as exc:
            print(f"{stream.name} not calibrated: {exc}")
            failed.append(stream.name)
    if failed:
        raise EdgeAdError(f"not calibrated: {', '.join(failed)} (above); the other sources were")


def _calibrate_stream(stream, args: argparse.Namespace) -> None:
    """Calibrate the bundle(s) of one source on its frames (into its calibration folder, if any)."""
    from calibration.site import Collected, collect, refuse_unless_enough
    from calibration.statistics import CalibrationError, frames_needed

    from .files import writable_later
    from .masks import InspectionMask
    from .pipelines import opencv_input
    from .sources import PictureSource, open_source
    from .streams import bundle_of, calibration_folder
    from .variants import VariantDetector, detectors_by_variant, load_detector

    bundle = bundle_of(stream, args.bundle or ())
    mask = InspectionMask.load(stream.mask) if stream.mask else None
    if args.defects and stream.input:
        _refuse_defects_among_frames(stream.input, args.defects)
    source = open_source(stream.input, stream.options, pipeline=stream.pipeline)  # a bad input fails first
    try:
        if isinstance(source, PictureSource):
            source.keep_only(defective=False, why="normal frames are pictures of good parts")
        detector = load_detector(bundle, backend=args.backend, steps=args.steps, dla_core=args.dla_core)
        if stream.calibration:  # variants are told apart by this camera's numbers, as `run` will
            try:
                detector, _ = detector.calibrated(stream.calibration)
            except EdgeAdError as exc:  # one that cannot be read is what this calibration replaces
                print(f"{stream.name}: {exc}; it is replaced by the calibration made now")
        for name, one in detectors_by_variant(detector).items():  # said now, not after the good parts went by
            writable_later(calibration_folder(stream, name) or one.bundle.root, "calibration")
        pictures = stream.input is not None and opencv_input(stream.input) is not None
        names: list[str] = []  # of the frames, as _checked_frames yields them: pictures are kept by name and pixels
        try:
            kept = collect(detector, _checked_frames(source, mask, stream.name, names), args.frames, mask=mask,
                           needed=frames_needed(args.target_far, args.confidence), names=names if pictures else None,
                           camera=source.live)
        except KeyboardInterrupt:  # "Ctrl-C and start again", as collect advises: say that nothing changed
            raise KeyboardInterrupt(f"while the frames of {stream.name} were read: its calibration is as it was "
                                    "(nothing written)") from None
    finally:
        source.close()
    read = sum(len(k.samples) for k in kept.values())
    if read < args.frames:
        print(f"{stream.name}: ended after {read} of {args.frames} frames")
    source_name = stream.input or stream.pipeline
    bundles = detectors_by_variant(detector)
    calibratable = 0  # bundles whose normal frames give a threshold: known defects are read for those alone
    for name, one in bundles.items():
        try:
            refuse_unless_enough(one, kept.get(name) or Collected(), args.target_far, args.confidence,
                                 args.min_defect_area)
            calibratable += 1
        except CalibrationError:
            if name is None:  # one bundle: refused now, not after its known defects are scored
                raise
    defects: dict[str | None, list] = {}  # known defects' grid maps, sizes, digests, names, by the variant judging each
    if args.defects and calibratable:
        from tqdm import tqdm

        from .images import pixel_digest

        defect_source = open_source(args.defects)
        try:
            if defect_source.live:  # its frames would be read for ever
                raise EdgeAdError(f"--defects {args.defects}: a live source's frames do not end; give a folder, a "
                                  "wildcard or a clip of known bad parts")
            if isinstance(defect_source, PictureSource):
                defect_source.keep_only(defective=True, why="known defects are pictures of defective parts")
            frames = {digest for collected in kept.values() for digest in collected.digests}
            among = []  # copies of the frames' pictures (a rejected part copied into good/), by pixels
            for frame in tqdm(defect_source.frames(), desc="known defects", unit="frame"):
                result, digest = detector(frame.image, mask=mask), pixel_digest(frame.image[..., ::-1])
                defects.setdefault(result.variant, []).append((result.grid_map, frame.image.shape[:2], digest,
                                                               frame.name))
                if digest in frames:
                    among.append(frame.name)
        finally:
            defect_source.close()
        _refuse_defects_named(source_name, args.defects, among)
    if not isinstance(detector, VariantDetector):
        folder = calibration_folder(stream) or detector.bundle.root
        _calibrate_bundle(detector, kept.get(None), defects.get(None), source_name, folder, args)
        return
    print("normal frames per variant: " + ", ".join(f"{n} {len(kept[n].samples) if n in kept else 0}"
                                                    for n in detector.detectors))
    failed = []
    for name, variant in detector.detectors.items():
        print(f"variant {name} ({variant.bundle.root}):")
        try:
            folder = calibration_folder(stream, name) or variant.bundle.root
            _calibrate_bundle(variant, kept.get(name), defects.get(name), source_name, folder, args)
        except EdgeAdError as exc:
            print(f"variant {name} not calibrated: {exc}")
            failed.append(name)
    if failed:
        raise EdgeAdError(f"not calibrated: {', '.join(failed)} (above); the other variants were. Give more frames "
                          "of those variants, or calibrate each alone (--bundle BUNDLE) on frames of that variant")


def _refuse_defects_among_frames(normal: str, defects: str) -> None:
    """Refuse known defects that are pictures of the normal frames' source too (`--input 'site/**/*'`
    over the rejected parts' folder): counted as normal, they would raise the threshold to pass them."""
    from .images import pictures_of
    from .pipelines import opencv_input

    if opencv_input(normal) is None or opencv_input(defects) is None:
        return
    frames = {os.path.realpath(path) for path in pictures_of(local_path(normal))}
    _refuse_defects_named(normal, defects, [str(path) for path in pictures_of(local_path(defects))
                                            if os.path.realpath(path) in frames])


def _refuse_defects_named(normal: str, defects: str, both: list[str]) -> None:
    """Refuse the known defects `both` of `defects`, which are frames of `normal` too."""
    if both:
        raise EdgeAdError(f"--defects {defects}: {len(both)} of its pictures are frames of --input {normal} too "
                          f"({', '.join(both[:3])}{', ...' if len(both) > 3 else ''}): a part is good or rejected, not "
                          "both; give --input the good parts' pictures alone")


def _checked_frames(source, mask, name: str, names: list[str]):
    """The source's settled frames (BGR arrays), each one's name added to `names` as it is yielded;
    with a mask, one of another size stops it, naming the source."""
    from .sources import settled_frames

    for frame in settled_frames(source):
        if mask is not None:
            mask.check(frame.image.shape, name)
        names.append(frame.name)
        yield frame.image


def _calibrate_bundle(
    detector: Detector, kept: Collected | None, defects: list | None, source: str, folder: Path,
    args: argparse.Namespace,
) -> None:
    """Calibrate one bundle on what `collect` kept of its frames from `source` and its known
    defects' grid maps; write calibration.yaml and the report into `folder` (the bundle's, or
    the camera's own: `calibration:` in --sources)."""
    from calibration.site import calibrate_into, flagged_in_use
    from calibration.statistics import CalibrationError, rounded_up

    if args.threshold == "f1" and args.defects and not defects:
        raise CalibrationError("--threshold f1: none of the --defects frames were judged by this bundle")
    replaced = detector.bundle.min_defect_area  # that of the calibration this one replaces
    in_use, flagged = detector.bundle.calibration, flagged_in_use(detector, kept)  # the one this replaces
    written = calibrate_into(folder, detector, kept, args.target_far, args.confidence, source, defects,
                             args.min_defect_area, use_f1=args.threshold == "f1", defects_source=args.defects)
    result, data, path, backup = written.calibration, written.data, written.path, written.backup
    print(f"normal frames {result.frames}  threshold {data['threshold']:.4f} ({data['threshold_from']})  "
          f"false-alarm rate <= {rounded_up(result.threshold.far_bound):g} at {args.confidence:.0%} confidence "
          f"({result.threshold.exceedances} normal frame{'' if result.threshold.exceedances == 1 else 's'} above it"
          + (f"; about {result.frames / result.threshold.per_draw:.0f} independent frames, consecutive ones scoring "
             "alike" if result.threshold.per_draw > 1 else "") + ")"
          + (f"; a frame is flagged where a region of at least {args.min_defect_area} pixels reaches it"
             if args.min_defect_area else ""))
    if flagged is not None:
        print(f"the calibration this replaces ({in_use}) flags {flagged} of these "
              f"{result.frames} frames (its threshold {detector.threshold:.4f})")
    if result.threshold_from == "f1" and result.threshold.far_bound > args.target_far:
        print(f"note: that is more than --target-far {args.target_far:g}: the F1-best threshold misses fewer known "
              "defects for more false alarms (without --threshold f1 the threshold keeps to --target-far)")
    if detector.bundle.threshold_is_f1 and args.threshold != "f1":
        print("note: the calibration this replaces had the known defects' F1-best threshold; this one keeps to "
              f"--target-far {args.target_far:g} (--threshold f1{'' if args.defects else ' --defects DIR'} to keep "
              "that)")
    if replaced is not None and args.min_defect_area is None:
        print(f"note: the calibration this replaces flagged regions of at least {replaced} pixels only; this one "
              f"flags any (--min-defect-area {replaced} to keep that)")
    if result.defects is not None:
        d = result.defects
        print(f"known defects {len(defects)}: recall {d.recall:.2f} at this threshold; F1-best threshold "
              f"{d.f1_threshold:.4f} (F1 {d.f1:.2f}, recall {d.f1_recall:.2f}, false alarms {d.f1_false_alarm_rate:.2%})"
              + ("" if args.threshold == "f1" else "; use it with --threshold f1"))
    print("split-half disagreement: " + ", ".join(f"{k} {v:.1%}" for k, v in result.agreement.items()))
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"calibration written to {path}" + (f" (previous one kept as {backup.name})" if backup else "")
          + (f"; report {written.report}" if written.report else ""))
    if written.report_problem:
        print(f"warning: {written.report_problem}")


def _doctor(args: argparse.Namespace) -> None:
    from .doctor import doctor

    sources = None
    if args.sources:
        from .pipelines import SourceOptions
        from .streams import streams_from_yaml

        sources = streams_from_yaml(Path(args.sources), SourceOptions())
    report = doctor(args.bundle or (), args.target, sources=sources, sources_file=Path(args.sources) if args.sources else None)
    for line in report.lines:
        print(line)
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"{len(report.problems)} problem(s)" if report.problems else "no problems found")
    if report.problems:
        sys.exit(1)


def _service(args: argparse.Namespace) -> None:
    from .service_unit import check_run, install_steps, unit_for

    if args.run_command[:1] != ["run"]:
        raise EdgeAdError("give the run's command line after service, as `edge-ad run` takes it: edge-ad service "
                          "run --bundle BUNDLE --input csi://0 ...")
    run_argv = args.run_command[1:]
    run = _parsed(build_parser(), ["run", *run_argv])
    cwd = Path.cwd()
    # a --sources file may be its owner's only, the service's user's (doctor checks what that user reads)
    unreadable = run.sources and Path(run.sources).exists() and not os.access(run.sources, os.R_OK)
    streams = [] if unreadable else _streams(run)
    check_run(run_argv, run, cwd, streams)
    print(unit_for(run_argv, cwd), end="")
    print("to install it:\n" + "".join(f"  {step}\n" for step in install_steps(run)), end="", file=sys.stderr)


def _record(args: argparse.Namespace) -> None:
    from .record import one_picture, record, record_sources
    from .sinks import shared_slugs, slug
    from .sources import open_source

    if args.sources and not args.source and not args.input and not args.pipeline:
        from .streams import streams_from_yaml

        streams = streams_from_yaml(Path(args.sources), _source_options(args))
        if len(streams) > 1:  # every camera at once, a folder each
            if one_picture(Path(args.out)):
                raise EdgeAdError(f"--out {args.out}: the name of one picture, but the {len(streams)} sources of "
                                  f"{args.sources} record a folder each in it; give a folder, or --source NAME")
            shared = shared_slugs(stream.name for stream in streams)
            if shared:
                raise EdgeAdError(f"record: sources {shared} would share the folder {slug(shared[0])}; give them names "
                                  "that differ in letters or digits")
            sources = {}
            try:
                for stream in streams:  # a bad input fails before any recording
                    sources[stream.name] = open_source(stream.input, stream.options, pipeline=stream.pipeline)
            except EdgeAdError:
                for source in sources.values():
                    source.close()
                raise
            outcome = record_sources(sources, Path(args.out), args.frames, args.interval, args.format)
            for name, saved in outcome.items():
                _recorded(Path(args.out) / slug(name), saved, name)
            failed = [name for name, saved in outcome.items() if isinstance(saved, EdgeAdError)]
            if failed:
                raise EdgeAdError(f"recording stopped early for {', '.join(failed)} (above); the pictures saved are kept")
            return
    stream = _the_stream(args)
    source = open_source(stream.input, stream.options, pipeline=stream.pipeline)
    _recorded(Path(args.out), record(source, Path(args.out), args.frames, args.interval, args.format))


def _recorded(out: Path, saved: list | EdgeAdError, name: str | None = None) -> None:
    """What `record` saved into the folder `out` (of source `name`, with several), or as the one
    picture `out` names, and what to do next."""
    where = f"{name}: " if name else ""
    if isinstance(saved, EdgeAdError):
        print(f"{where}{saved}")
        return
    if saved == [out]:
        from .masks import mask_beside

        print(f"a frame saved as {out}; draw an inspection mask on it: edge-ad mask --frame {shell_word(out)} --keep "
              f"X,Y,W,H --out {shell_word(mask_beside(out))}")
        return
    names = f" ({saved[0].name})" if len(saved) == 1 else f" ({saved[0].name} ... {saved[-1].name})" if saved else ""
    print(f"{where}{len(saved)} picture{'' if len(saved) == 1 else 's'} in {out}{names}")
    if saved:
        print(f"{where}train on them once they show only good parts: edge-ad train --data {shell_word(out)} --out RUN")


def _time(text: str) -> float:
    """A local date and time (ISO 8601, as 2026-12-03T06:00 or 2026-12-03 06:00), or one with its offset
    (06:00+01:00, 06:00Z for UTC), as Unix seconds; a time of day alone (06:00) is today's, as
    journalctl --since takes it. The Z is read here: Python 3.10's fromisoformat, a Jetson's on
    JetPack 6, refuses it (3.11 takes it)."""
    from datetime import datetime, time

    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        pass
    try:
        clock = time.fromisoformat(iso)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date and time such as 2026-12-03T06:00, or a time of "
                                         "day such as 06:00 (today's)") from None
    return datetime.combine(datetime.now(clock.tzinfo).date(), clock).timestamp()


def _report(args: argparse.Namespace) -> None:
    from .events_report import MOST_PICTURES, read_events, write_alarm_pictures, write_events_report

    events = Path(args.events)
    if args.since is not None and args.until is not None and args.since > args.until:
        raise EdgeAdError("--since is after --until: no event lies between them")
    if not 0 <= args.alarms <= MOST_PICTURES:
        raise EdgeAdError(f"--alarms {args.alarms}: must be 0 (no picture of the alarms) to {MOST_PICTURES}; for "
                          "others, --since, --until and --source choose")
    snapshots = Path(args.snapshots) if args.snapshots else None
    if snapshots is not None and not snapshots.is_dir():
        raise EdgeAdError(f"--snapshots {snapshots}: {'not a folder' if snapshots.exists() else 'no such folder'}")
    read = read_events(events, args.since, args.until)
    ranged = args.since is not None or args.until is not None
    if args.source:
        unknown = sorted(set(args.source) - set(read.sources))
        if unknown:
            raise EdgeAdError(f"--source {', '.join(unknown)}: no events of it in {events}"
                              f"{' in this time range' if ranged else ''}; its "
                              f"sources: {', '.join(read.sources) or 'none'}")
        read.sources = {name: read.sources[name] for name in args.source}
    for record in read.sources.values():
        print(record.summary())
        for line in [*record.judged_by(), *record.failed_checks()]:
            print(line)
    if read.skipped_count:
        print(f"{read.skipped_count} of {read.lines} lines skipped: " + "; ".join(read.skipped)
              + (" ..." if read.skipped_count > len(read.skipped) else ""))
    out = Path(args.out) if args.out else events.with_name(f"{events.name.split('.')[0]}_report.png")
    print(f"report {write_events_report(read, out)}")
    if args.alarms:
        sheet = out.with_name(f"{out.stem}_alarms{out.suffix or '.png'}")  # a PDF report, a PDF of the alarms
        print(write_alarm_pictures(read, sheet, args.alarms, snapshots))


def _cameras(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from .camera_certificates import read_pinned
    from .camera_list import ARV_TOOL, genicam_cameras, sources_file, v4l2_cameras
    from .onvif import describe, discover, read_streams

    certificate = args.certificate and str(Path(args.certificate).absolute())
    if certificate:
        read_pinned(certificate, "--certificate")  # a file that does not read is said before the cameras are asked
    password = args.password
    if args.user and password is None:
        if not sys.stdin.isatty():
            raise EdgeAdError("--user without --password: give --password (it is asked for only at a terminal)")
        password = getpass.getpass(f"ONVIF password of {args.user}: ")
    with ThreadPoolExecutor(2) as pool:  # both listen for answers for --timeout
        genicam = pool.submit(genicam_cameras, args.timeout) if not args.address else None
        found = discover(args.timeout, args.address)
        machine_vision = genicam.result() if genicam is not None else []
    attached = v4l2_cameras() if not args.address else []
    for uri, what, _ in attached:
        print(printable(f"{uri}  {what}"))
    if not found and not machine_vision and not attached:
        where = ", ".join(args.address) if args.address else "multicast on this machine's networks"
        said = [f"no ONVIF camera answered in {args.timeout:g} s ({where}): a camera on another subnet answers "
                "--address IP; else ONVIF may be off in the camera's settings"]
        if not args.address:
            said.append("no USB or CSI camera is attached (/sys/class/video4linux)")
            said.append(f"Aravis found no GigE Vision or USB3 Vision camera ({ARV_TOOL})" if machine_vision is not None
                        else f"GigE Vision and USB3 Vision cameras are listed once {ARV_TOOL} is installed "
                             "(aravis-tools-cli)")
        raise EdgeAdError("; ".join(said))
    with ThreadPoolExecutor(8) as pool:  # four requests a camera, each up to --timeout
        read = list(pool.map(lambda camera: read_streams(camera, args.user, password or "", args.timeout,
                                                         certificate), found))
    for camera in read:
        print("\n".join(printable(line) for line in describe(camera, certificate)))
    for uri, what, _ in machine_vision or []:
        print(printable(f"{uri}  {what}"))
    if found:
        print("--input takes a URL with the login in it: rtsp://USER:PASSWORD@camera/... (the password as typed)")
    if args.sources:
        count = sources_file(Path(args.sources), read, attached + (machine_vision or []), args.user, password,
                             certificate)
        secret = " (with the cameras' password in it: readable by you only)" if args.user and password else ""
        print(f"{count} source(s) written to {args.sources}{secret}: edge-ad run --sources "
              f"{shell_word(args.sources)} --bundle BUNDLE")


def _mask(args: argparse.Namespace) -> None:
    import cv2

    from .files import write_picture
    from .images import read_image
    from .masks import InspectionMask, draw_mask, mask_beside
    from .render import mask_preview

    frame = cv2.cvtColor(read_image(args.frame), cv2.COLOR_RGB2BGR)
    out = Path(args.out)
    look = out.with_name(f"{out.stem}_preview.png")
    for path, what in ((out, "the mask"), (look, "the mask's preview")):
        if path.resolve() == Path(args.frame).resolve():  # the frame, to draw another mask on, would be lost
            raise EdgeAdError(f"--out {out}: {what} would be written over the --frame picture {args.frame}; give "
                              f"the mask another name (--out {shell_word(mask_beside(Path(args.frame)))})")
    picture = draw_mask(frame.shape, args.keep or [], args.ignore or [])
    mask = InspectionMask(picture > 0, str(out))  # refuses a mask with nothing left to inspect
    for path, image in ((out, picture), (look, mask_preview(frame, mask))):
        write_picture(path, image)
    print(f"mask {out} ({mask.share_text} of the frame inspected); check it in {look}, then paint it further in "
          f"any editor (white: inspect, black: ignore) or use it: --mask {shell_word(out)}")


def _defects(args: argparse.Namespace) -> None:
    from export.defects import gallery
    from .datasets import load_samples, read_all, without_overlays
    from .files import write_picture

    samples = without_overlays(load_samples(args.data, "train"))[0][: args.images]
    _, images, _ = read_all(samples, skip_bad=True)
    if not images:
        raise EdgeAdError(f"{args.data}: no readable training images for the gallery")
    out = Path(args.out)
    write_picture(out, gallery(images, args.seed))
    print(f"gallery of synthetic defects written to {out}")


def _bench(args: argparse.Namespace) -> None:
    from .bench import bench
    from .variants import VariantDetector, load_detector

    detector = load_detector(args.bundle, backend=args.backend, steps=args.steps, spin=not args.no_spin,
                             dla_core=args.dla_core)
    first = next(iter(detector.detectors.values())) if isinstance(detector, VariantDetector) else detector
    height, width = first.bundle.input_size
    report = bench(detector, args.frames, args.warmup, args.height or height, args.width or width, args.batch)
    _print_report(report, args.json)


def _deepstream(args: argparse.Namespace) -> None:
    from export.deepstream import write_deepstream

    from .deepstream import CONFIG_FILE

    out = write_deepstream(Path(args.bundle), args.out and Path(args.out), args.steps, args.precision, args.build,
                           args.batch_size)
    print(f"DeepStream network and nvinfer config written to {out}: "
          f"nvinfer config-file-path={out / CONFIG_FILE}")


def _build(args: argparse.Namespace) -> None:
    from .engines import build_engines, memory_pool_mib

    workspace = args.workspace_mib or memory_pool_mib(args.target)
    folder = build_engines(load_bundle(args.bundle), args.precision, args.dla_core, workspace, args.max_batch,
                           args.force, args.calib_data, args.calib_images)
    print(f"engines in {folder}")


def _demo(args: argparse.Namespace) -> None:
    from export.demo import demo

    demo(Path(args.workdir))


def _add_variant_bundles(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--bundle", required=required, action="append",
                   help="the bundle; repeat as NAME=BUNDLE for one bundle per product variant: each frame is "
                        "judged by the variant that explains it best (README 'Several variants on one line')"
                        + ("" if required else "; needed for sources that do not name their own in --sources"))


def _add_source_options(p: argparse.ArgumentParser) -> None:
    """How `run`, `calibrate` and `record` open a camera or stream (jetson-utils' --input-* names)."""
    p.add_argument("--input-width", type=_camera_side,
                   help="frame width the camera is asked for (V4L2, GenICam region, CSI default 1280, test:// "
                        "default 640); streams and files keep their own")
    p.add_argument("--input-height", type=_camera_side,
                   help="frame height the camera is asked for (CSI default 720, test:// default 480)")
    p.add_argument("--input-framerate", type=_positive_int,
                   help="frames per second the camera is asked for (CSI and test:// default 30)")
    p.add_argument("--input-codec", choices=("h264", "h265", "mjpeg", "raw", "bayer", "mpegts", "jpeg"),
                   help="camera or stream codec (default: raw for V4L2 and GenICam, h264 for RTSP/RTP, mjpeg for "
                        "http://; an RTSP camera or RTP sender of another is read in it from the first reconnection; "
                        "mjpeg over RTSP goes over TCP unless --rtsp-transport udp; "
                        "bayer: a GenICam colour camera sending its sensor's mosaic; mpegts: MPEG-TS over "
                        "RTP, as VLC sends it; jpeg: an http:// URL of the camera's still picture, fetched again "
                        "and again, --input-framerate a second, 2 without it)")
    p.add_argument("--input-flip", choices=tuple(FLIPS), default="none",
                   help="rotate or mirror the frames, for a camera mounted turned (nvvidconv on a Jetson)")
    p.add_argument("--input-crop", type=_crop, metavar="X,Y,W,H",
                   help="keep only this part of each (turned) frame, in pixels: the part on the line")
    p.add_argument("--input-certificate", metavar="FILE",
                   help="an https:// or rtsps:// camera's own certificate (PEM or DER; self-signed, as cameras make "
                        "them): trusted as it is, whatever name and dates it bears; without it the system's trust "
                        "store decides, and a refused camera's certificate is kept and named in the log")
    p.add_argument("--latency", type=_non_negative_int, default=200, help="RTSP/RTP jitter-buffer latency in ms")
    p.add_argument("--rtsp-transport", choices=("tcp", "udp"),
                   help="RTSP over TCP (through firewalls and NAT) or UDP (default: UDP, then TCP if UDP fails; "
                        "TCP for MJPEG)")
    p.add_argument("--timeout", type=_non_negative, default=5.0,
                   help="a live source silent this many seconds reconnects (0: never, for a camera triggered by "
                        "the parts, silent between them)")
    p.add_argument("--follow", action="store_true",
                   help="an image folder or wildcard: read the pictures put into it from now on, each as it arrives "
                        "(a triggered camera's FTP upload, the line's vision PC); those there already are left alone")


def _add_sources_choice(p: argparse.ArgumentParser) -> None:
    """`calibrate` and `record` read one source of run's --sources file, opened as run opens it."""
    p.add_argument("--sources", metavar="FILE", help="run's --sources YAML file: read the source --source names, "
                                                     "with its options (and for calibrate its mask, bundle and "
                                                     "calibration folder)")
    p.add_argument("--source", metavar="NAME", help="which source of --sources; without it, every source (calibrate: "
                                                    "one after the other, each into its 'calibration:' folder; "
                                                    "record: all at once, a folder each)")


def _add_min_defect_area(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--min-defect-area", type=_positive_int, metavar="PIXELS", help=help_text)


def _add_mask_option(p: argparse.ArgumentParser) -> None:
    """Where `run`, `calibrate` and `eval` look on the frame."""
    p.add_argument("--mask", metavar="IMAGE",
                   help="inspection mask, a frame of this camera (as scored: turned and cropped) painted white "
                        "where to inspect and black where not (README 'Inspection mask')")


def _add_detector_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that loads a detector: bridge steps, backend and DLA core."""
    p.add_argument("--steps", type=_positive_int, help="bridge steps K (default: the bundle's)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="what runs the graphs (pytorch: the reference)")
    p.add_argument("--dla-core", type=int, choices=(0, 1),
                   help="run the TensorRT engines built for this DLA core (edge-ad build --dla-core N)")


def _add_spin_option(p: argparse.ArgumentParser) -> None:
    """The option of the commands where speed matters (run, bench): ONNX Runtime thread spinning."""
    p.add_argument("--no-spin", action="store_true",
                   help="ONNX Runtime threads sleep between operators instead of spinning: fewer frames per second, "
                        "a lower latency tail for one camera at its frame rate on a CPU (README, Streaming soak)")


_GIVEN = "_given"  # the namespace attribute in which _OneValue notes the options given, popped by `_parsed`


class _OneValue(argparse.Action):
    """argparse's plain `store`, except that an option given twice is an error: argparse keeps the
    last value without a word, so `calibrate --input cam1 --input cam2` calibrated cam2 alone, as
    `train --data good --data samples` trained on the samples alone before --data took several."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        given = vars(namespace).setdefault(_GIVEN, {})
        if self.dest in given:
            both = "" if self.dest == "password" else f" ({_shown(given[self.dest])}, then {_shown(values)})"
            once = "give it once, with all its values after it" if self.nargs in ("+", "*") else "give it once"
            parser.error(without_passwords(f"{option_string} given twice{both}; {once}"))
        given[self.dest] = values
        setattr(namespace, self.dest, values)


def _shown(values: object) -> str:
    return " ".join(map(str, values)) if isinstance(values, list) else str(values)


class _Parser(argparse.ArgumentParser):
    """The parser of edge-ad and of each of its commands: options that take one value take it once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in (None, "store"):  # None: add_argument without action=
            self.register("action", name, _OneValue)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-ad", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"edge-ad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on normal images (workstation, needs torch)")
    p.add_argument("--data", required=True, action="append", type=_pictures,
                   help="'elpv' (or elpv:mono, elpv:poly), a folder of normal images, a quoted wildcard of them "
                        "('archive/OK_*.jpg'), or an MVTec category; repeat it to train on the pictures of each "
                        "(the first ones recorded and those run --samples kept)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--model", choices=MODEL_TYPES, default="prototype",
                   help="nearest prototype (baseline), the closed-form Gaussian-mixture bridge over prototypes "
                        "(training-free), or the learned few-step bridge (teacher and distilled student)")
    p.add_argument("--backbone", choices=BACKBONES, default=BACKBONES[0],
                   help="frozen ImageNet feature encoder: Lite1 scored 0.005-0.009 higher on ELPV in FP32 (less in INT8) "
                        "for about a fifth more time per frame (README, 'A larger backbone')")
    p.add_argument("--input-size", type=parse_input_size, default=256,
                   help="model input in pixels: a square's side, or WIDTHxHEIGHT (448x256); each side 64 to 65536")
    p.add_argument("--prototypes", type=_positive_int,
                   help="number of normal prototypes (default: 256 with position whitening, 2048 without)")
    p.add_argument("--no-position-whitening", action="store_true",
                   help="standardise features per channel only; by default they are also whitened per grid "
                        "position, which helps parts that sit in the same place in every frame")
    p.add_argument("--whitening-eps", type=_whitening_eps,
                   help="regulariser added to each position's covariance, relative to a channel's variance "
                        "(default 0.1; PaDiM's 0.01 is 0.002 AUROC better in FP32 on ELPV, 0.02-0.03 worse in "
                        "symmetric INT8)")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of the prototype choice, the split of validation images and bridge training: "
                        "the same seed and data give the same run")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and list them")
    p.add_argument("--steps", type=_positive_int, help="bridge: teacher training iterations (default 2000)")
    p.add_argument("--distill-steps", type=_positive_int,
                   help="bridge: student distillation iterations (default 1000)")
    p.add_argument("--resume", action="store_true", help="bridge: continue from the run folder's last checkpoint")
    p.add_argument("--defect-kinds", nargs="+", metavar="KIND",
                   help="bridge: the synthetic defect kinds to train on (default: all of perlin_texture, "
                        "perlin_shift, cutpaste, scratch, spot; 'edge-ad defects' draws them)")
    p.add_argument("--defects", type=_pictures,
                   help="a few known defect images (a folder, a quoted wildcard of them, or elpv:M for the few-shot "
                        "protocol): the prototypes they land on are taken out (DPDL's push-away)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where the networks run: auto (default) takes the workstation's NVIDIA GPU when torch sees "
                        "one (a CUDA build of torch), else the CPU")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="export a training run to a bundle of ONNX graphs")
    p.add_argument("--run", required=True, help="run folder written by 'edge-ad train'")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--steps", type=_positive_int, help="bridge: default sampling steps K (1, 2 or 4; default 2)")
    p.add_argument("--via", choices=("onnx", "torch-tensorrt"), default="onnx",
                   help="onnx: the edge_ad bundle (default); torch-tensorrt: compiled PyTorch programs for x86 GPUs")
    p.add_argument("--fuse-steps", type=int, choices=(0, 1, 2, 4), metavar="K",
                   help="bridge: also write one graph running all K steps, used when the runtime runs that K "
                        "(default: the --steps K; 0: none)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="int8: Q/DQ graphs from ONNX Runtime's static quantiser (TensorRT explicit quantisation); "
                        "fp16: FP16 convolution graphs for ONNX Runtime's CUDA provider")
    p.add_argument("--calib-data", type=_pictures,
                   help="INT8 calibration frames: 'elpv', an image folder, an MVTec category or a video file "
                        "(default: the run's training data)")
    p.add_argument("--calib-images", type=_positive_int, default=300,
                   help="INT8 calibration frames (entropy and percentile use at most 64 at 256 px, fewer for "
                        "larger inputs: they hold every activation in memory)")
    p.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="int8: how ONNX Runtime's calibrator sets activation ranges from the calibration frames "
                        "(entropy and percentile hold every activation in memory: see --calib-images)")
    p.add_argument("--int8-activations", choices=("int8", "uint8"), default="int8",
                   help="int8: symmetric, for TensorRT (default); uint8: asymmetric, faster on ONNX Runtime CPUs")
    p.add_argument("--keep-fp32", nargs="+", metavar="GRAPH:NODE",
                   help="int8: leave these nodes in FP32, e.g. encoder:/blocks.0/_depthwise_conv/Conv")
    p.add_argument("--keep-fp32-below", type=_finite, metavar="DB",
                   help="int8: also leave in FP32 every node whose output SQNR is below DB (sensitivity search)")
    p.set_defaults(func=_export)

    p = sub.add_parser("eval", help="evaluate a bundle on a test split")
    _add_variant_bundles(p, required=False)
    p.add_argument("--sources", metavar="FILE", help="run's --sources YAML file: judge the test images as run judges "
                                                     "the source --source names, with its bundle, mask and "
                                                     "calibration folder")
    p.add_argument("--source", metavar="NAME", help="which source of --sources (the camera whose pictures these are)")
    p.add_argument("--data", required=True, type=_pictures,
                   help="'elpv' (or elpv:mono, elpv:poly), an MVTec category folder (its train/ optional), a "
                        "folder holding good/ (or ok/, normal/) beside a folder per defect, or pictures labelled by "
                        "their masks (KolektorSDD2's test/: beside them; DAGM 2007's Test/: in its Label/), a "
                        "folder of them or a quoted wildcard ('KolektorSDD/kos*/*')")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--report", help="PNG: score histograms with the thresholds, the ROC curve, and overlays of the "
                                    "highest-scoring normal and lowest-scoring anomalous images")
    p.add_argument("--scores", metavar="CSV", help="also write a line per test image: its path, group, truth, score, "
                                                  "threshold and verdict (the parts missed and flagged, by name)")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable test images and list them")
    _add_mask_option(p)
    _add_min_defect_area(p, "score each image by its regions at least this large (pixels of the image), as a "
                            "calibration with --min-defect-area would (default: the bundle's calibration's)")
    _add_detector_options(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("run", help="score live or recorded video: cameras, RTSP/RTP, files, folders, test://")
    _add_variant_bundles(p, required=False)  # --sources may name each source's own
    p.add_argument("--input", action="append",
                   help="test://[pattern], csi://N, /dev/videoN, genicam://[CAMERA], rtsp://..., rtp://@:port, "
                        "udp://@:port (MPEG-TS), "
                        "http://... (MJPEG), a video file, an image folder, a picture or pictures by a wildcard "
                        "('parts/*.jpg'); repeat for several cameras")
    p.add_argument("--output", action="append",
                   help="overlay video per --input: a .mp4/.mkv file, rtp://host:port, rtsp://@:port/path, "
                        "http://@:port/path (MJPEG for a web browser), display://0; or for a file or folder, a "
                        "picture per frame: out/overlay_%%i.jpg or a folder out/")
    p.add_argument("--output-bitrate", type=_kilobits, metavar="KBPS",
                   help=f"H.264 bit rate of the video outputs in kbit/s, up to {MAX_BITRATE_KBPS} (default: the "
                        "encoder's, 4000 for nvv4l2h264enc, 2048 for x264enc)")
    p.add_argument("--output-user", metavar="NAME",
                   help="RTSP and HTTP outputs ask viewers for this user and the password in "
                        f"{OUTPUT_PASSWORD_VARIABLE} (RTSP: digest login; browsers: basic, readable over http://)")
    p.add_argument("--output-certificate", metavar="FILE",
                   help="with --output-key: serve the RTSP and HTTP outputs over TLS only, written rtsps://@:PORT/PATH "
                        "and https://@:PORT/PATH, with this certificate (PEM: the plant's, or one made with openssl)")
    p.add_argument("--output-key", metavar="FILE", help="the unencrypted key (PEM) of --output-certificate")
    p.add_argument("--sources", help="YAML file listing several sources (input, name, output, bundle, mask, options)")
    p.add_argument("--pipeline", help="your own GStreamer source pipeline ending in 'appsink name=sink' (BGR)")
    p.add_argument("--print-pipeline", action="store_true", help="print the GStreamer pipelines and exit")
    p.add_argument("--platform", choices=("auto", "jetson", "generic"), default="auto",
                   help="NVMM elements (jetson) or generic ones; auto detects a Jetson")
    _add_source_options(p)
    p.add_argument("--realtime", action="store_true",
                   help="video files play no faster than their own frame rate (default: every frame as soon "
                        "as the detector takes it)")
    p.add_argument("--input-loop", type=int, default=0, metavar="N",
                   help="files and folders play N more times after the first (-1: for ever), as in jetson-utils")
    p.add_argument("--events", help="JSON-lines file, one line per frame (rotated by size)")
    p.add_argument("--events-max-mb", type=_megabytes, default=100.0,
                   help="rotate the events file at this size (0: never; it then grows until the disk is full)")
    p.add_argument("--snapshots", help="folder for the frame and overlay of alarm frames (see --alarm-frames)")
    p.add_argument("--snapshot-interval", type=_non_negative, default=1.0,
                   help="at most one snapshot per source per N seconds")
    p.add_argument("--snapshot-quota-mb", type=_megabytes, default=500.0,
                   help="oldest snapshots go beyond this size (0: only the newest one's frame and overlay are kept)")
    p.add_argument("--samples", metavar="DIR",
                   help="good pictures from the line, to train and calibrate a new bundle on: frames judged normal, "
                        "lossless PNG, into DIR/<source>")
    p.add_argument("--sample-interval", type=_non_negative, default=60.0,
                   help="at most one sample per source per N seconds")
    p.add_argument("--sample-quota-mb", type=_megabytes, default=2000.0,
                   help="oldest samples go beyond this size (0: only the newest is kept)")
    p.add_argument("--self-check-interval", type=_non_negative, default=600.0, metavar="SECONDS",
                   help="score the bundles' check images again this often; maps that are not those it was exported "
                        "with stop the run (default 600; 0: only at load)")
    p.add_argument("--frozen-window", type=_non_negative, default=FROZEN_WINDOW_S, metavar="SECONDS",
                   help="a live camera whose picture stood still, to the last bit, for half of the last SECONDS is "
                        "said in the log, the events and on MQTT: a frozen camera or stream, a covered lens "
                        "(default 30; 0: never)")
    p.add_argument("--on-anomaly", help="command run (not waited for) for an alarm frame; EDGE_AD_* variables")
    p.add_argument("--alarm-frames", type=_positive_int, default=1, metavar="K",
                   help="a frame raises an alarm (snapshot, --on-anomaly) when it and the K-1 frames of its source "
                        "before it are anomalous (default 1: every anomalous frame)")
    p.add_argument("--mqtt", metavar="URL",
                   help="mqtt[s]://[user[:password]@]host[:port]/TOPIC: alarm, drift, frozen-picture and failed "
                        "self-check events as JSON to TOPIC/SOURCE/alarm, /drift, /frozen and /self_check (needs "
                        "edge-ad[mqtt]; mqtts: TLS; a user's password may come from EDGE_AD_MQTT_PASSWORD instead)")
    p.add_argument("--mqtt-ca", metavar="PEM", help="mqtts://: the CA that signed the broker's certificate "
                                                    "(default: the system's CAs)")
    p.add_argument("--mqtt-cert", metavar="PEM", help="mqtts://: this device's client certificate")
    p.add_argument("--mqtt-key", metavar="PEM", help="mqtts://: the client certificate's private key (if not in it)")
    p.add_argument("--metrics", help="file rewritten every 5 s with Prometheus-format metrics")
    p.add_argument("--metrics-port", type=_port, help="serve the metrics on http://0.0.0.0:PORT/metrics")
    p.add_argument("--metrics-allow", action="append", metavar="ADDRESS",
                   help="--metrics-port: answer only the Prometheus servers at these addresses or networks (as "
                        "--modbus-allow); the metrics name the cameras, the bundles and the counts")
    p.add_argument("--modbus-port", type=_port, metavar="PORT",
                   help="serve each source's last result as Modbus TCP registers and its alarm as a latched coil, "
                        "for the line's PLC (502 is Modbus's port; map in README)")
    p.add_argument("--modbus-allow", action="append", metavar="ADDRESS",
                   help="--modbus-port: answer only clients at these addresses or networks (10.0.7.21, "
                        "10.0.7.0/24; repeat or separate with commas): Modbus has no login, and a client can switch "
                        "the variant, start a calibration or clear an alarm")
    p.add_argument("--opcua-port", type=_port, metavar="PORT",
                   help="serve the same as OPC UA variables at opc.tcp://0.0.0.0:PORT/edge-ad/, for SCADA, MES and "
                        "PLCs that read OPC UA (4840 is OPC UA's port; needs asyncua: pip install 'edge-ad[opcua]')")
    p.add_argument("--opcua-user", metavar="NAME",
                   help="--opcua-port: that user's login alone, its password in EDGE_AD_OPCUA_PASSWORD, over "
                        "signed and encrypted messages only (Basic256Sha256, Aes128Sha256RsaOaep, "
                        "Aes256Sha256RsaPss; a self-signed certificate, made once and kept; the log gives its "
                        "thumbprint)")
    p.add_argument("--opcua-reader", metavar="NAME",
                   help="--opcua-user: a second login, its password in EDGE_AD_OPCUA_READER_PASSWORD, that reads "
                        "and subscribes but may not write (acknowledge) or call methods (a historian's, an MES's)")
    p.add_argument("--opcua-certificate", metavar="FILE",
                   help="--opcua-user: the plant's certificate for the server instead (PEM or DER, with an "
                        "application URI), from its IT's certificate authority")
    p.add_argument("--opcua-key", metavar="FILE", help="--opcua-certificate's private key (RSA, unencrypted)")
    p.add_argument("--opcua-trust", metavar="DIR",
                   help="--opcua-user: take sessions only from clients whose certificates, or the certificate "
                        "authorities that issued them, are in DIR (PEM or DER; their revocation lists too); a "
                        "refused one is kept for moving in")
    p.add_argument("--max-frames", type=_positive_int, help="stop each source after this many frames")
    p.add_argument("--calibration-frames", type=_positive_int, metavar="N",
                   help="frames a calibration on the line keeps (asked by SIGUSR1, Modbus register +11 or OPC UA "
                        "Calibrate; default: as many as the calibration it replaces, else 3000)")
    p.add_argument("--drift", action="store_true",
                   help="event when the rolling median of normal scores leaves the band 'edge-ad calibrate' measured")
    _add_mask_option(p)
    _add_spin_option(p)
    _add_detector_options(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("calibrate", help="thresholds and quantiles on site from frames declared normal")
    _add_variant_bundles(p, required=False)  # several: each variant is calibrated on the frames it takes
    p.add_argument("--input", help="normal frames: a camera or stream URI, a video file or a folder")
    p.add_argument("--pipeline", help="or your own GStreamer source pipeline ending in 'appsink name=sink' (BGR)")
    _add_sources_choice(p)
    p.add_argument("--frames", type=_positive_int, default=3000, help="normal frames to collect")
    p.add_argument("--target-far", type=_rate, default=0.001, help="false-alarm rate to guarantee (default 1 in 1000)")
    p.add_argument("--confidence", type=_rate, default=0.95, help="confidence of the false-alarm bound")
    p.add_argument("--defects", help="a few known defects (image folder, a quoted wildcard of them, or clip): recall "
                                     "and the F1-best threshold")
    p.add_argument("--threshold", choices=("far", "f1"), default="far",
                   help="write the false-alarm threshold (default) or the F1-best one (needs --defects)")
    _add_min_defect_area(p, "flag a frame only where a region of the map at least this large (frame pixels) "
                            "reaches the threshold; recorded in calibration.yaml, which `run` then follows")
    _add_source_options(p)  # the camera as `run` opens it
    _add_mask_option(p)
    _add_detector_options(p)
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("bench", help="per-stage latency, fps and peak memory on synthetic frames")
    _add_variant_bundles(p)
    p.add_argument("--frames", type=_positive_int, default=1000, help="timed frames (after warm-up)")
    p.add_argument("--warmup", type=_positive_int, default=50,
                   help="untimed frames first (engine start-up, caches, CPU clocks)")
    p.add_argument("--batch", type=_positive_int, default=1,
                   help="frames per detector call, as several cameras give (latency and stages are per call)")
    p.add_argument("--height", type=_positive_int, help="frame height (default: the (first) bundle's input size)")
    p.add_argument("--width", type=_positive_int, help="frame width (default: the (first) bundle's input size)")
    p.add_argument("--json", help="also write the report to this JSON file")
    _add_spin_option(p)
    _add_detector_options(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("build", help="build TensorRT engines for this device (needs TensorRT and an NVIDIA GPU)")
    p.add_argument("--bundle", required=True, help="the bundle folder; its engines are written into it")
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16",
                   help="fp16: builder flag on FP32 graphs; int8: a bundle exported with --precision int8")
    p.add_argument("--target", help="a target YAML, or the name of one in firmware_configs/ such as orin-nano-8gb, "
                   "whose memory-pool limit to build with instead of this device's target's")
    p.add_argument("--dla-core", type=int, choices=(0, 1),
                   help="build for this DLA core, GPU fallback for unsupported layers (run with --dla-core N too)")
    p.add_argument("--calib-data", type=_pictures,
                   help="INT8 on a DLA core: frames TensorRT calibrates an FP32 bundle on ('elpv', an image folder, "
                        "an MVTec category or a video file)")
    p.add_argument("--calib-images", type=_positive_int, default=300, help="INT8 on a DLA core: calibration frames")
    p.add_argument("--workspace-mib", type=_positive_int,
                   help="TensorRT memory-pool limit (default: the target's; 1024 where none gives one)")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="largest batch of the optimisation profile")
    p.add_argument("--force", action="store_true", help="rebuild even when matching engines are cached")
    p.set_defaults(func=_build)

    p = sub.add_parser("deepstream", help="write the bundle as one network with a Gst-nvinfer config for DeepStream")
    p.add_argument("--bundle", required=True, help="the bundle folder to join into one network")
    p.add_argument("--out", help="folder for the network, config and engine (default: the bundle's deepstream/)")
    p.add_argument("--steps", type=_positive_int, help="bridge steps K built into the network (default: the bundle's)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="engine precision (default: the bundle's; an FP32 bundle may run as fp16)")
    p.add_argument("--build", action="store_true",
                   help="also build the TensorRT engine (on the device: needs TensorRT and an NVIDIA GPU); "
                        "required for fp16 and int8")
    p.add_argument("--batch-size", type=_batch_size, default=1,
                   help="frames per nvinfer call, e.g. the number of cameras nvstreammux batches (default 1)")
    p.set_defaults(func=_deepstream)

    p = sub.add_parser("doctor", help="what this device is and has, and whether a bundle can run on it")
    p.add_argument("--bundle", action="append",
                   help="also check this bundle and its engines against this device; repeat as NAME=BUNDLE "
                        "for one bundle per product variant, as `run` takes them")
    p.add_argument("--target", help="a target YAML, or the name of one in firmware_configs/ such as orin-nano-8gb, "
                   "instead of the detected one")
    p.add_argument("--sources", metavar="FILE",
                   help="check run's --sources file as `run` would start it, without opening a camera: each "
                        "source's pipeline and output elements, mask, and bundle (--bundle for those without one)")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("service", help="the systemd unit that starts a run at boot, from its command line: "
                                       "edge-ad service run --bundle B --input csi://0 ...")
    p.add_argument("run_command", nargs=argparse.REMAINDER, metavar="run ...",
                   help="`run` and its arguments, as tried in a shell (relative paths: from this folder)")
    p.set_defaults(func=_service)

    p = sub.add_parser("record", help="save pictures of good parts from the line camera, to train on")
    p.add_argument("--input", help="a camera or stream URI, a video file, or a folder or quoted wildcard of pictures "
                   "(each saved, turned and cropped as run takes it)")
    p.add_argument("--pipeline", help="or your own GStreamer source pipeline ending in 'appsink name=sink' (BGR)")
    _add_sources_choice(p)
    p.add_argument("--out", required=True,
                   help="folder for the pictures (those of a folder or wildcard keep their names; not the folder "
                        "read), or with --frames 1 a picture's name (frame.png)")
    p.add_argument("--frames", type=_positive_int, default=300, help="pictures to save")
    p.add_argument("--interval", type=_non_negative, default=1.0,
                   help="seconds between pictures at least (of the video for a file; not for pictures), so they show "
                   "different parts")
    p.add_argument("--format", choices=("png", "jpg"), default="png",
                   help="of the pictures in a folder (one picture's is its name's); png: lossless (default)")
    _add_source_options(p)  # the camera as `run` opens it
    p.set_defaults(func=_record)

    p = sub.add_parser("report", help="a picture of what a run saw, from its --events file: scores over time per "
                                      "source against the threshold, alarms, drift, failed self-checks; the "
                                      "counts; and the overlays of the alarms")
    p.add_argument("--events", required=True, help="the events file of edge-ad run (its rotated .1 ... .5 are read too)")
    p.add_argument("--out", help="PNG to write (default: beside the events file, <name>_report.png)")
    p.add_argument("--since", type=_time, metavar="TIME",
                   help="only events from this local time on (2026-12-03T06:00, or 06:00 for today's; "
                        "2026-12-03T06:00Z in UTC)")
    p.add_argument("--until", type=_time, metavar="TIME", help="only events up to this local time")
    p.add_argument("--source", action="append", metavar="NAME",
                   help="only this source's events (as the events name it; repeat for several)")
    p.add_argument("--alarms", type=int, default=24, metavar="N",
                   help="the saved overlays of the N highest-scoring alarms, as <out>_alarms.png (default 24, at most "
                        "100; 0: none)")
    p.add_argument("--snapshots", metavar="DIR",
                   help="where the run's --snapshots folder is now, if moved (its pictures are found by name)")
    p.set_defaults(func=_report)

    p = sub.add_parser("cameras", help="the cameras there are and the --input of each: IP cameras' RTSP URLs "
                                       "(ONVIF), USB, CSI and GigE Vision cameras")
    p.add_argument("--user", help="the cameras' ONVIF user: most list their streams only to a login")
    p.add_argument("--password", help="its password (asked for at a terminal when --user comes without it)")
    p.add_argument("--address", action="append", metavar="ADDRESS[:PORT]",
                   help="ask only this camera (one on another subnet), instead of multicasting to all and listing "
                        "this device's own; repeat for several")
    p.add_argument("--timeout", type=_answer_wait, default=3.0, help="seconds to wait for the cameras' answers")
    p.add_argument("--certificate", metavar="FILE",
                   help="the own certificates (PEM) of cameras set to HTTPS, which no system trusts: one of them must "
                        "be presented (as run's --input-certificate)")
    p.add_argument("--sources", metavar="FILE",
                   help="also write the cameras found into a new --sources file for run: each IP camera's main "
                        "stream with the login in its URL, and this device's own cameras")
    p.set_defaults(func=_cameras)

    p = sub.add_parser("mask", help="draw an inspection mask from rectangles on a frame of the camera, with a preview")
    p.add_argument("--frame", required=True,
                   help="a frame of the camera as it is scored (edge-ad record --frames 1 --out frame.png)")
    p.add_argument("--keep", type=_crop, action="append", metavar="X,Y,W,H",
                   help="inspect only inside this rectangle (repeat for several; default: the whole frame)")
    p.add_argument("--ignore", type=_crop, action="append", metavar="X,Y,W,H",
                   help="do not inspect inside this rectangle (repeat for several)")
    p.add_argument("--out", required=True, help="the mask PNG to write; NAME_preview.png beside it shows it on the frame")
    p.set_defaults(func=_mask)

    p = sub.add_parser("defects", help="write a gallery picture of the synthetic training defects")
    p.add_argument("--data", required=True, type=_pictures,
                   help="'elpv' (or elpv:mono, elpv:poly), a folder of normal images, or an MVTec category")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=_positive_int, default=50, help="how many training images to draw from")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="the same seed draws the same gallery")
    p.set_defaults(func=_defects)

    p = sub.add_parser("demo", help="train, export, evaluate and stream on ELPV end to end")
    p.add_argument("--workdir", default="edge-ad-demo", help="folder for the run, bundle and outputs")
    p.set_defaults(func=_demo)
    # No abbreviated options: `run --source cam1` would be taken as `--sources cam1` (a YAML file),
    # while `calibrate --source NAME` picks one source of that file.
    for subparser in sub.choices.values():
        subparser.allow_abbrev = False
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parsed(build_parser(), argv)
    return report_errors("edge-ad", lambda: args.func(args))


def run_line_problem(argv: list[str]) -> str | None:
    """What `edge-ad run ARGV` would refuse before it starts, as it would print it (argparse's
    error line), or None: doctor reads the installed unit's line with it."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):  # --help prints to stdout
            _parsed(build_parser(), ["run", *argv])
    except SystemExit:
        return said.getvalue().strip().splitlines()[-1] if said.getvalue().strip() else None
    return None


def _parsed(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`argv` parsed; arguments left over are an error (`_unrecognized`)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(_unrecognized(extra))
    vars(args).pop(_GIVEN, None)
    return args


def _unrecognized(extra: list[str]) -> str:
    """argparse's error for arguments left over; when they are all files, what is likely: a
    wildcard the shell expanded (`--data archive/OK_*.jpg`), whose first file the option took."""
    if not all(Path(argument).is_file() for argument in extra):
        return f"unrecognized arguments: {' '.join(extra)}"
    shown = " ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
    return (f"unrecognized arguments: {len(extra)} files ({shown}): the shell expanded a wildcard into them, and "
            "the option before took only the first; quote the wildcard (--data 'archive/OK_*.jpg') for edge-ad "
            "to read it")


if __name__ == "__main__":
    sys.exit(main())
