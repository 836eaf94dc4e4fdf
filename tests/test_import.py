import os
import subprocess
import sys


def test_runtime_import_does_not_pull_in_torch():
    code = (
        "import sys, edge_ad, edge_ad.cli, edge_ad.runner, edge_ad.sources, edge_ad.render, "
        "edge_ad.datasets, edge_ad.metrics, edge_ad.bench, edge_ad.reports, edge_ad.backends, edge_ad.outputs, "
        "edge_ad.telemetry, edge_ad.drift, edge_ad.device, edge_ad.doctor, edge_ad.streams, edge_ad.variants, "
        "edge_ad.deepstream, edge_ad.engines, edge_ad.dla_int8, edge_ad.tensorrt_backend, edge_ad.cuda_memory, "
        "calibration.threshold, calibration.site, calibration.report; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_running_a_bridge_bundle_does_not_pull_in_torch(tiny_bridge_bundle):
    code = (
        "import sys, numpy, edge_ad; d = edge_ad.Detector.load(sys.argv[1]); "
        "d(numpy.zeros((90, 120, 3), numpy.uint8)); sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code, str(tiny_bridge_bundle)]).returncode == 0


def test_onnx_runtime_keeps_no_device_id_and_calls_nobody(tiny_bundle, tmp_path):
    # ONNX Runtime's Linux wheels keep a device ID under ~/.cache/Microsoft and look up Microsoft's
    # collector while frames are scored, unless told not to before onnxruntime is imported: the
    # runtime, and export (whose quantiser imports onnxruntime first), tell it.
    env = {name: value for name, value in os.environ.items() if name not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    for first in ("edge_ad", "export.quantize"):
        code = (f"import sys, numpy, {first}, edge_ad; d = edge_ad.Detector.load(sys.argv[1]); "
                "d(numpy.zeros((90, 120, 3), numpy.uint8))")
        subprocess.run([sys.executable, "-c", code, str(tiny_bundle)], env=env, check=True)
    assert list(tmp_path.iterdir()) == []
    code = "import os, edge_ad; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    for given, kept in ((None, "1"), ("0", "0")):
        run_env = env if given is None else {**env, "ORT_DISABLE_TELEMETRY": given}
        said = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
        assert said.stdout.strip() == kept


def test_version_command():
    out = subprocess.run([sys.executable, "-m", "edge_ad", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip().startswith("edge-ad 0.")


def test_every_command_line_option_says_what_it_does():
    import argparse

    from edge_ad.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [f"{name} {action.option_strings[-1]}" for name, parser in commands.items()
              for action in parser._actions if action.option_strings and not action.help]
    assert len(commands) >= 14 and not silent, silent
