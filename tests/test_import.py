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
