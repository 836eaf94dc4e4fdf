"""The `edge-ad` command. Subcommands that need torch import the export package lazily."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .backends import BACKENDS
from .bundle import MODEL_TYPES
from .errors import EdgeAdError
from .reports import write_report


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _train(args: argparse.Namespace) -> None:
    from export.train import TrainConfig, train

    config = TrainConfig(
        data=args.data,
        model=args.model,
        input_size=args.input_size,
        prototypes=args.prototypes,
        seed=args.seed,
        skip_bad=args.skip_bad,
        steps=args.steps,
        distill_steps=args.distill_steps,
        resume=args.resume,
    )
    run = train(config, Path(args.out))
    print(f"run written to {run}")


def _export(args: argparse.Namespace) -> None:
    from export.onnx_export import export_bundle

    from export.onnx_export import CalibrationConfig

    calibration = CalibrationConfig(args.calib_data, args.calib_images, args.calib_method, args.int8_activations)
    bundle = export_bundle(Path(args.run), Path(args.out), args.steps, args.precision, calibration)
    print(f"bundle written to {bundle}")


def _print_report(report: dict, json_path: str | None) -> None:
    if json_path:
        write_report(report, Path(json_path))
    print(json.dumps(report, indent=2))


def _eval(args: argparse.Namespace) -> None:
    from export.evaluate import evaluate

    _print_report(evaluate(args.bundle, args.data, steps=args.steps, backend=args.backend), args.json)


def _run(args: argparse.Namespace) -> None:
    from .detector import Detector
    from .runner import run_stream

    detector = Detector.load(args.bundle, backend=args.backend, steps=args.steps)
    summary = run_stream(
        detector,
        args.input,
        events=Path(args.events) if args.events else None,
        snapshots=Path(args.snapshots) if args.snapshots else None,
        max_frames=args.max_frames,
    )
    print(
        f"frames {summary.frames}  seconds {summary.seconds:.2f}  fps {summary.fps:.1f}  "
        f"anomalies {summary.anomalies}  snapshots {summary.snapshots}"
    )


def _defects(args: argparse.Namespace) -> None:
    import cv2

    from export.defects import gallery
    from .datasets import load_samples, read_all

    samples = load_samples(args.data, "train")[: args.images]
    _, images, _ = read_all(samples, skip_bad=True)
    if not images:
        raise EdgeAdError(f"{args.data}: no readable training images for the gallery")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), gallery(images, args.seed)):
        raise EdgeAdError(f"{out}: cannot write the gallery picture (use a .png or .jpg name)")
    print(f"gallery of synthetic defects written to {out}")


def _bench(args: argparse.Namespace) -> None:
    from .bench import bench
    from .detector import Detector

    detector = Detector.load(args.bundle, backend=args.backend, steps=args.steps)
    height, width = detector.bundle.input_size
    _print_report(bench(detector, args.frames, args.warmup, args.height or height, args.width or width), args.json)


def _build(args: argparse.Namespace) -> None:
    from .bundle import load_bundle, read_yaml
    from .engines import build_engines

    workspace = args.workspace_mib
    if args.target:
        target = read_yaml(Path(args.target))
        workspace = workspace or target.get("tensorrt", {}).get("memory_pool_mib")
    folder = build_engines(load_bundle(args.bundle), args.precision, args.dla_core, workspace or 1024, args.max_batch, args.force)
    print(f"engines in {folder}")


def _demo(args: argparse.Namespace) -> None:
    from export.demo import demo

    demo(Path(args.workdir))


def _add_detector_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that loads a detector: bridge steps and backend."""
    p.add_argument("--steps", type=_positive_int, help="bridge steps K (default: the bundle's)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="what runs the graphs (pytorch: the reference)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-ad", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-ad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on normal images (workstation, needs torch)")
    p.add_argument("--data", required=True, help="'elpv', a folder of normal images, or an MVTec category")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--model", choices=MODEL_TYPES, default="prototype",
                   help="nearest prototype (baseline), the closed-form Gaussian-mixture bridge over prototypes "
                        "(training-free), or the learned few-step bridge (teacher and distilled student)")
    p.add_argument("--input-size", type=_positive_int, default=256, help="square model input side in pixels")
    p.add_argument("--prototypes", type=_positive_int, default=2048, help="number of normal prototypes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and list them")
    p.add_argument("--steps", type=_positive_int, default=2000, help="bridge: teacher training iterations")
    p.add_argument("--distill-steps", type=_positive_int, default=1000, help="bridge: student distillation iterations")
    p.add_argument("--resume", action="store_true", help="bridge: continue from the run folder's last checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="export a training run to a bundle of ONNX graphs")
    p.add_argument("--run", required=True, help="run folder written by 'edge-ad train'")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--steps", type=_positive_int, default=2, help="bridge: default sampling steps K (1, 2 or 4)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="int8: Q/DQ graphs from ONNX Runtime's static quantiser (TensorRT explicit quantisation)")
    p.add_argument("--calib-data", help="INT8 calibration frames: 'elpv', an image folder, an MVTec category or a "
                                        "video file (default: the run's training data)")
    p.add_argument("--calib-images", type=_positive_int, default=300, help="INT8 calibration frames")
    p.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--int8-activations", choices=("int8", "uint8"), default="int8",
                   help="int8: symmetric, for TensorRT (default); uint8: asymmetric, faster on ONNX Runtime CPUs")
    p.set_defaults(func=_export)

    p = sub.add_parser("eval", help="evaluate a bundle on a test split")
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True, help="'elpv' or an MVTec category folder")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    _add_detector_options(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("run", help="score a stream: test://[pattern], a video file or an image folder")
    p.add_argument("--bundle", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--events", help="JSON-lines file, one line per frame")
    p.add_argument("--snapshots", help="folder for overlays of anomalous frames")
    p.add_argument("--max-frames", type=_positive_int)
    _add_detector_options(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("bench", help="per-stage latency, fps and peak memory on synthetic frames")
    p.add_argument("--bundle", required=True)
    p.add_argument("--frames", type=_positive_int, default=1000, help="timed frames (after warm-up)")
    p.add_argument("--warmup", type=_positive_int, default=50)
    p.add_argument("--height", type=_positive_int, help="frame height (default: the bundle's input size)")
    p.add_argument("--width", type=_positive_int, help="frame width (default: the bundle's input size)")
    p.add_argument("--json", help="also write the report to this JSON file")
    _add_detector_options(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("build", help="build TensorRT engines for this device (needs TensorRT and an NVIDIA GPU)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16",
                   help="fp16: builder flag on FP32 graphs; int8: a bundle exported with --precision int8")
    p.add_argument("--target", help="firmware_configs/<device>.yaml (memory-pool limit)")
    p.add_argument("--dla-core", type=int, help="build for this DLA core, GPU fallback for unsupported layers")
    p.add_argument("--workspace-mib", type=_positive_int, help="TensorRT memory-pool limit (default 1024 or the target's)")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="largest batch of the optimisation profile")
    p.add_argument("--force", action="store_true", help="rebuild even when matching engines are cached")
    p.set_defaults(func=_build)

    p = sub.add_parser("defects", help="write a gallery picture of the synthetic training defects")
    p.add_argument("--data", required=True, help="'elpv', a folder of normal images, or an MVTec category")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=_positive_int, default=50, help="how many training images to draw from")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_defects)

    p = sub.add_parser("demo", help="train, export, evaluate and stream on ELPV end to end")
    p.add_argument("--workdir", default="edge-ad-demo", help="folder for the run, bundle and outputs")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EdgeAdError as exc:
        print(f"edge-ad: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"edge-ad: error: '{args.command}' needs the Python package '{exc.name}', which is not "
              "installed (pip install 'edge-ad[train]' for train/export/eval/demo)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edge-ad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-ad: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
