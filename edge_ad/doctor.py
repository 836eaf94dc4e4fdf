"""`edge-ad doctor`: what this machine is and has, whether a bundle can run here, and one line
per problem saying what to do."""

from __future__ import annotations

import grp
import importlib.util
import json
import math
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from .bundle import Bundle, load_bundle, read_yaml, site_calibrated
from .deepstream import CONFIG_FILE, DEEPSTREAM_DIR, missing_engine
from .detector import Detector
from .engines import _tensorrt
from .device import (Device, clock_state, describes, detect, int8_saturates, jetpack, load_configs, own_target,
                     pick_config, read_sensors, run_command, target_config, unsynchronised_clock)
from .errors import EdgeAdError, os_reason, shell_word, without_passwords
from .files import state_folder
from .pipelines import UDP_BUFFER_BYTES
from .service_unit import INSTALLED_UNIT, add_user, sets_exec_start, setting, started_words, unit_files
from .streams import Stream, bundle_of, calibration_folder
from .variants import comparability_problem, parse_variants

# The Debian/Ubuntu package that provides each GStreamer element edge-ad may use.
ELEMENT_PACKAGES = {
    "appsink": "gstreamer1.0-plugins-base", "appsrc": "gstreamer1.0-plugins-base",
    "videoconvert": "gstreamer1.0-plugins-base", "videotestsrc": "gstreamer1.0-plugins-base",
    "decodebin": "gstreamer1.0-plugins-base", "udpsrc": "gstreamer1.0-plugins-good",
    "rtspsrc": "gstreamer1.0-plugins-good", "rtph264depay": "gstreamer1.0-plugins-good",
    "rtph265depay": "gstreamer1.0-plugins-good", "h265parse": "gstreamer1.0-plugins-bad",
    "rtpjpegdepay": "gstreamer1.0-plugins-good", "rtpmp2tdepay": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good", "mp4mux": "gstreamer1.0-plugins-good",
    "v4l2src": "gstreamer1.0-plugins-good", "jpegdec": "gstreamer1.0-plugins-good",
    "h264parse": "gstreamer1.0-plugins-bad", "x264enc": "gstreamer1.0-plugins-ugly",
    "avdec_h264": "gstreamer1.0-libav", "aravissrc": "libaravis-0.8-0",
    "souphttpsrc": "gstreamer1.0-plugins-good", "multipartdemux": "gstreamer1.0-plugins-good",
    "jpegparse": "gstreamer1.0-plugins-bad",
    "nvarguscamerasrc": "nvidia-l4t-gstreamer (JetPack)", "nvv4l2decoder": "nvidia-l4t-gstreamer (JetPack)",
    "nvvidconv": "nvidia-l4t-gstreamer (JetPack)", "nvv4l2h264enc": "nvidia-l4t-gstreamer (JetPack)",
}
STREAMING_ELEMENTS = ("appsink", "appsrc", "videoconvert", "videotestsrc", "decodebin", "udpsrc", "rtspsrc",
                      "rtph264depay", "rtph264pay", "h264parse", "mp4mux",
                      "rtph265depay", "h265parse")  # H.265 cameras (many IP cameras' default)
MIN_FREE_GIB = 1.0
CAP_NET_ADMIN = 12  # its bit in /proc/PID/status's CapEff (linux/capability.h)
DEVICES = ("dev/nvmap", "dev/nvhost-ctrl-gpu", "dev/nvidiactl", "dev/video0")  # a Jetson's GPU, a PC's, a camera


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)  # what was found
    problems: list[str] = field(default_factory=list)  # one line each, with what to do

    def found(self, name: str, value: str) -> None:
        self.lines.append(f"{name:<12} {value}")


def _tensorrt_version() -> tuple[str | None, str | None]:
    """TensorRT's version, or None: with why, for a tensorrt package that is there but fails to import."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, None
    try:
        return _tensorrt().__version__, None
    except EdgeAdError as exc:
        return None, str(exc)


def _cuda_version(root: Path) -> str | None:
    try:
        return json.loads((root / "usr/local/cuda/version.json").read_text())["cuda"]["version"]
    except (OSError, ValueError, KeyError):
        return None


def _check_software(report: Report, device: Device, config: dict, root: Path) -> None:
    release = jetpack(device, config)
    if device.kind == "jetson" and config["kind"] != "jetson":  # --target cpu on a Jetson: said by doctor()
        report.found("L4T", device.l4t or "unknown")
    elif device.kind == "jetson":
        releases = config["software"]["releases"]
        known = ", ".join(f"{r['jetpack']} (L4T {r['l4t']})" for r in releases)
        # A point release of the same JetPack that came after this target was written (L4T 36.5.0,
        # JetPack 6.2.2, was refused so and failed make runtime): engines are built on the device
        # for the L4T it runs whatever its name, so only the TensorRT version is left unchecked.
        same_major = next((r for r in releases if device.l4t and r["l4t"] and
                           device.l4t.split(".")[0] == r["l4t"].split(".")[0]), None)
        if release:
            report.found("JetPack", f"{release['jetpack']} (L4T {device.l4t})")
        elif same_major:
            report.found("JetPack", f"{same_major['jetpack'].split('.')[0]}.x (L4T {device.l4t}, a release this target "
                                    f"does not list: {known}; TensorRT's version is not compared with JetPack's)")
        else:
            report.problems.append(f"L4T {device.l4t or 'unknown'} is not a JetPack release edge-ad supports on this "
                                   f"module ({known}): flash JetPack 6 with SDK Manager")
            report.found("JetPack", f"unknown (L4T {device.l4t})")
    tensorrt, broken = _tensorrt_version()
    report.found("TensorRT", tensorrt or ("fails to import (below)" if broken else "not installed"))
    if broken:
        report.problems.append(broken)
    elif config["backend"] == "tensorrt" and tensorrt is None:
        fix = ("sudo apt-get install python3-libnvinfer (part of JetPack)" if device.kind == "jetson"
               else "pip install 'edge-ad[tensorrt]'")
        report.problems.append(f"TensorRT's Python bindings are missing, so engines cannot be built or run: {fix}")
    elif release and tensorrt and not tensorrt.startswith(release["tensorrt"].rsplit(".", 1)[0]):
        report.problems.append(f"TensorRT {tensorrt} is not JetPack {release['jetpack']}'s {release['tensorrt']}: "
                               "reinstall JetPack's TensorRT (mixed versions cannot load each other's engines)")
    report.found("CUDA", _cuda_version(root) or "not found")
    import onnxruntime

    report.found("ONNXRuntime", f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")


def _check_gstreamer(report: Report, config: dict) -> None:
    try:
        from .sources import load_gst

        Gst = load_gst()
    except EdgeAdError as exc:
        report.problems.append(str(exc))
        return
    report.found("GStreamer", Gst.version_string())
    wanted = dict.fromkeys([*STREAMING_ELEMENTS, *config["gstreamer"].values()])
    missing = [e.split()[0] for e in wanted if Gst.ElementFactory.find(e.split()[0]) is None]
    report.found("elements", f"{len(wanted) - len(missing)} of {len(wanted)} present"
                             + (f", missing {', '.join(missing)}" if missing else ""))
    for element in missing:
        report.problems.append(f"GStreamer element {element} is missing: install {ELEMENT_PACKAGES.get(element, 'its plugin')}")
    # Optional: only genicam:// inputs need it.
    report.found("GenICam", "aravissrc present, for genicam:// inputs" if Gst.ElementFactory.find("aravissrc")
                 else f"aravissrc missing: genicam:// inputs need apt-get install {ELEMENT_PACKAGES['aravissrc']}")


def _power_rank(mode: str) -> tuple[float, bool] | None:
    """How much power an nvpmodel mode's name allows, to compare modes: its watts (15 for 15W and
    MODE_15W_6CORE, unbounded for MAXN), then whether it is a Super one (JetPack 6.2's MAXN_SUPER
    of the Orin Nano and NX, above MAXN); None for a name without watts (a mode of one's own)."""
    watts = re.search(r"(\d+)W", mode)
    if not mode.startswith("MAXN") and watts is None:
        return None
    return (math.inf if mode.startswith("MAXN") else float(watts.group(1))), "SUPER" in mode


def _check_power(report: Report, device: Device, config: dict, root: Path) -> None:
    if device.kind == "jetson":
        out = run_command(["nvpmodel", "-q"])
        mode = re.search(r"NV Power Mode:\s*(\S+)", out or "")
        name, wanted = mode and mode.group(1), config["power_mode"]
        other = name is not None and wanted is not None and name != wanted["name"]
        have, want = (_power_rank(name), _power_rank(wanted["name"])) if other else (None, None)
        more = have is not None and want is not None and have > want  # MAXN_SUPER where 15W was asked: not slower
        shown = name or "unknown (nvpmodel not readable)"
        if more:
            shown += f" (more power than the {wanted['name']} this target's frame rates were estimated at)"
        report.found("power mode", shown)
        if other and not more:
            report.problems.append(f"power mode {name}, this target wants {wanted['name']}: sudo nvpmodel -m "
                                   f"{wanted['nvpmodel_id']} (check the id with nvpmodel -p --verbose)")
    freqs = []
    for cpu in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        try:
            freqs.append((int((cpu / "scaling_cur_freq").read_text()), int((cpu / "cpuinfo_max_freq").read_text())))
        except (OSError, ValueError):
            continue
    if freqs:
        report.found("CPU clocks", f"{len(freqs)} cores at {min(f for f, _ in freqs) / 1e6:.2f}-"
                                   f"{max(f for f, _ in freqs) / 1e6:.2f} GHz of {max(m for _, m in freqs) / 1e6:.2f}")
    sensors = read_sensors(root)
    if sensors.temperatures_c:
        report.found("temperature", ", ".join(f"{zone} {c:.1f} C" for zone, c in sensors.temperatures_c.items()))
    if sensors.power_w:
        report.found("power", ", ".join(f"{rail} {w:.2f} W" for rail, w in sensors.power_w.items()))
    for gpu in sorted((root / "sys/class/devfreq").glob("*gpu*")):
        try:
            cur, top = int((gpu / "cur_freq").read_text()), int((gpu / "max_freq").read_text())
        except (OSError, ValueError):
            continue
        report.found("GPU clock", f"{cur / 1e6:.0f} of {top / 1e6:.0f} MHz" + (" (sudo jetson_clocks pins it)" if cur < top else ""))


def _check_state(report: Report) -> None:
    """What runs keep in the state folder: the OPC UA server's own certificate, whose end every
    client must be told of before it comes (a run says so only at its start), and the cameras'
    certificates refused (edge_ad.camera_certificates), for a support ticket."""
    from .opcua import CERTIFICATE, RENEW_NOTICE, certificate_dir
    from .opcua_trust import thumbprint

    try:
        state_folder()
    except EdgeAdError as exc:  # a user without a home folder: runs that keep nothing there still run
        report.found("state", f"none: {exc}")
        return
    said = []
    server = certificate_dir() / CERTIFICATE
    if server.is_file():
        der = server.read_bytes()
        try:
            from cryptography import x509

            end = x509.load_der_x509_certificate(der).not_valid_after_utc
        except (ImportError, ValueError):  # no OPC UA extra here, or a file cut short (a run says which)
            end = None
        said.append(f"OPC UA certificate SHA-1 {thumbprint(der)}" + (f", until {end:%Y-%m-%d}" if end else ""))
        if end is not None and end - datetime.now(timezone.utc) < RENEW_NOTICE:
            report.problems.append(f"the OPC UA server's certificate {server} runs out on {end:%Y-%m-%d}: delete it "
                                   "and its key, restart the run, and have every client trust the new one")
    refused = sorted((state_folder() / "cameras").glob("*.pem"))
    if refused:
        said.append(f"{len(refused)} camera certificate(s) refused, in cameras/: "
                    + ", ".join(path.stem for path in refused[:5]) + (" ..." if len(refused) > 5 else ""))
    if said:
        report.found("state", f"{state_folder()}: " + "; ".join(said))


def _check_disk(report: Report, folder: Path) -> None:
    free = shutil.disk_usage(folder if folder.exists() else Path(".")).free / (1 << 30)
    report.found("free disk", f"{free:.1f} GiB at {folder.resolve()}")
    if free < MIN_FREE_GIB:
        report.problems.append(f"only {free:.1f} GiB free at {folder.resolve()}: events, snapshots and engines need "
                               "room; free space or point --events/--snapshots to another disk")


def _check_bundle(report: Report, name: str | None, bundle_path: Path, config: dict, root: Path,
                  sources: int = 1) -> Bundle | None:
    """Report one bundle (variant `name`, None for a lone bundle) and its engines, for the number
    of `sources` that share it; the bundle, if it loads."""
    label = "bundle" if name is None else f"bundle {name}"
    try:
        bundle = load_bundle(bundle_path)
    except EdgeAdError as exc:
        report.problems.append(f"{label} cannot be used: {exc}")
        return None
    model, calibration = bundle.short_ids  # as the events name them
    grey = ", trained on grey pictures (frames scored in grey)" if bundle.trained_on_grey else ""
    report.found(label, f"{bundle.model_type}, {bundle.precision}, {bundle.input_width}x{bundle.input_height}{grey}, "
                        f"bundle.yaml {model}, calibration: "
                        + (f"{bundle.calibration} ({calibration})" if calibration else "from export")
                        + _least_area(bundle))
    notes = _recorded_lines(bundle.training.get("notes") or [])  # bundles from before notes: none
    if notes is None:
        report.found("training", f"{label}: its field 'provenance.training.notes' is not the list training writes "
                                 f"(edited by hand?), got {bundle.training['notes']!r}")
    for note in notes or []:
        report.found("training", f"{label}: {note}")
    _calibration_warnings(report, label, bundle)
    clock = bundle.clock_note()
    if clock:
        report.problems.append(clock)
    note = bundle.export_threshold_note()
    if note:
        report.found("threshold", f"{label}: {note}")
    _check_deepstream(report, bundle_path)
    if config["backend"] != "tensorrt":
        report.found("engines", "not needed: ONNX Runtime runs the bundle's graphs on this CPU-only target")
        if bundle.precision == "int8" and int8_saturates(root):
            report.found("int8", "this x86 CPU has no VNNI: ONNX Runtime runs INT8 in its exact U8U8 kernels, "
                                 "slower than FP32 on such CPUs (README): export FP32 for this one")
        _self_check(report, label, bundle)
        return bundle
    from .engines import device_key, engine_precisions, matching_build, other_engines

    try:
        key = device_key("int8" if bundle.precision == "int8" else "fp16", None)
    except EdgeAdError as exc:
        report.problems.append(f"engines of {label} cannot be checked: {exc}")
        return bundle
    build = matching_build(bundle, key)  # (folder, manifest) of the engines run would take
    largest = build[1].get("max_batch", 1) if build else None
    report.found("engines", f"{key.slug}: " + (f"ready, batches up to {largest}" if build else "none"))
    if largest is not None and sources > largest:
        report.found("batches", f"{label}: {sources} sources share it, its engines take {largest} frames at once: "
                                f"their frames are scored in turns of {largest} (edge-ad build --bundle "
                                f"{shell_word(bundle_path)} --max-batch {sources} scores them together)")
    on_dla = [core for core in (0, 1) for precision in engine_precisions(bundle, core)
              if matching_build(bundle, replace(key, precision=precision, dla_core=core)) is not None]
    if build is None and not on_dla:
        report.problems.append(f"no engines for {label} on this device ({key.slug}): edge-ad build --bundle "
                               f"{shell_word(bundle_path)} --precision {key.precision}")
    for line in other_engines(bundle, key):
        report.found("", line)
    _self_check(report, label, bundle)
    for core in sorted(set(on_dla)):  # DLA engines quantise on their own (dla_int8): check them as run would use them
        _self_check(report, f"{label} on DLA core {core}", bundle, core)
    return bundle


def _self_check(report: Report, label: str, bundle: Bundle, dla_core: int | None = None) -> None:
    """The bundle's check images scored on the backend `run` would use (edge_ad.self_check), or
    by its engines for `dla_core`."""
    if bundle.check is None:
        report.found("check", f"{label}: none (exported before bundles had check images)")
        return
    try:
        backend = Detector(bundle, "auto" if dla_core is None else "tensorrt", dla_core=dla_core).backend
    except EdgeAdError as exc:
        report.problems.append(f"{label} cannot be used: {exc}")
        return
    report.found("check", f"{label}: its check images give the maps it was exported with, on {backend}")


def _check_deepstream(report: Report, bundle_path: Path) -> None:
    """Report the nvinfer network `edge-ad deepstream` wrote into the bundle, if it wrote one."""
    config = bundle_path / DEEPSTREAM_DIR / CONFIG_FILE
    if not config.is_file():
        return
    try:
        engine = missing_engine(config)
    except EdgeAdError as exc:
        report.problems.append(str(exc))
        return
    if engine:
        report.problems.append(f"{config} names {engine}, which is not built: edge-ad deepstream --bundle "
                               f"{shell_word(bundle_path)} --build (with the same --precision, --steps and "
                               "--batch-size)")
    else:
        report.found("deepstream", f"nvinfer config {config}")


def _may(user: pwd.struct_passwd, path: Path, access: int) -> bool:
    """Whether `user` has every one of the `access` bits (4 read, 2 write, 1 enter) on `path`, by
    its owner, group and mode (access control lists left aside)."""
    if user.pw_uid == 0:
        return True
    status = path.stat()
    if status.st_uid == user.pw_uid:
        mode = status.st_mode >> 6
    elif status.st_gid in os.getgrouplist(user.pw_name, user.pw_gid):
        mode = status.st_mode >> 3
    else:
        mode = status.st_mode
    return mode & access == access


def _closed(user: pwd.struct_passwd, path: Path, access: int, top: Path = Path("/")) -> Path | None:
    """What stops `user` from `access` to `path`: the first folder on the way from `top` it may
    not enter, else `path` itself if it lacks the bits, else None."""
    for folder in reversed(path.parents):
        if folder.is_relative_to(top) and not _may(user, folder, 1):
            return folder
    return None if _may(user, path, access) else path


def _started_program(unit_text: str) -> tuple[str | None, str | None]:
    """The program of the unit's ExecStart= and its WorkingDirectory= (None for either missing), as
    `edge-ad service` writes them."""
    words = started_words(unit_text)
    folder = setting(unit_text, "WorkingDirectory")
    return (words[0] if words else None), folder and folder.lstrip("-").replace("%%", "%")


def _check_service(report: Report, root: Path, written: Iterable[Path], read: Iterable[Path]) -> None:
    """The installed service (as `edge-ad service` writes it) runs edge-ad as its User=, who must
    be there, may use the GPU's and camera's devices, may write the folders the
    line's own calibration goes into (`written`) and read the files given (`read`: a --sources
    file, which `cameras --sources` makes readable by its owner only): a site upgrading from the
    unit that ran edge-ad as root has none of that yet (systemd fails the start with
    status=217/USER)."""
    unit, *drop_ins = unit_files(root / INSTALLED_UNIT.relative_to("/"))
    try:
        text = unit.read_text()
    except OSError:  # no service installed
        return
    started_in = unit  # the file whose ExecStart= systemd runs
    for drop_in in drop_ins:  # as systemctl edit writes them: what they set is what systemd runs
        try:
            own = drop_in.read_text()
        except OSError as exc:
            report.problems.append(f"{drop_in}: cannot read ({os_reason(exc)}); what it changes in the service is "
                                   "not checked")
            continue
        text += "\n" + own
        if sets_exec_start(own):
            started_in = drop_in
    shown = f"{unit} (with {', '.join(map(str, drop_ins))})" if drop_ins else str(unit)
    _check_run_line(report, started_in, unit, started_words(text))
    name = setting(text, "User")
    if name is None:
        report.found("service", f"{shown}: runs edge-ad as root (edge-ad service writes a unit that runs it as "
                                "a user of its own, and says how to make the user)")
        return
    try:
        user = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        report.problems.append(f"{shown} runs edge-ad as the user {name}, who is not there: {add_user(name)}")
        return
    report.found("service", f"{shown}: runs edge-ad as {user.pw_name}")
    for device in (root / path for path in DEVICES):
        if device.exists() and not _may(user, device, 6):
            group = device.stat().st_gid
            try:
                group = grp.getgrgid(group).gr_name
            except KeyError:  # a group with no name
                pass
            report.problems.append(f"{user.pw_name}, the service's user, may not use {device}: sudo usermod -aG "
                                   f"{group} {user.pw_name}")
    _check_started(report, shown, text, user, root)
    who = f"{user.pw_name}, the service's user,"
    for folder in dict.fromkeys(written):
        closed = _closed(user, folder, 3) if folder.is_dir() else None
        if closed is not None:
            report.problems.append(f"{who} may not write {folder}, where the line's own calibration goes: "
                                   + _mend(closed, folder, f"sudo chown -R {user.pw_name} {folder}"))
    for file in read:
        closed = _closed(user, file, 4) if file.is_file() else None
        if closed is not None:
            report.problems.append(f"{who} may not read {file}: "
                                   + _mend(closed, file, f"sudo chown {user.pw_name} {file}"))


def _check_run_line(report: Report, started_in: Path, unit: Path, words: list[str]) -> None:
    """The unit's `edge-ad run` line (in `started_in`: the unit, or a drop-in of it) is there (a
    drop-in's empty `ExecStart=` alone leaves none, and systemd refuses the unit) and is one this
    edge-ad takes: a unit written by an earlier version (an option it took twice, keeping the last;
    an option since renamed) would stop at the start after an upgrade, which `make runtime`'s
    doctor says before the service is restarted."""
    from .cli import run_line_problem

    mend = ("write it again with edge-ad service run and the line meant" if started_in == unit else
            f"mend its ExecStart= (sudo systemctl edit edge-ad), or delete the file and write {unit} again with "
            "edge-ad service run and the line meant")
    if not words:  # a drop-in's `ExecStart=` alone drops the unit's line and gives none
        none = "has no ExecStart= line" if started_in == unit else "leaves the service no ExecStart= line"
        report.problems.append(f"{started_in} would not start: it {none} (systemd refuses such a unit); {mend}")
        return
    problem = run_line_problem(words[2:]) if words[1:2] == ["run"] else None
    if problem:
        report.problems.append(f"{started_in} would stop at the start: {problem}; {mend}")


def _check_started(report: Report, unit: str, text: str, user: pwd.struct_passwd, root: Path) -> None:
    """The unit's user may start its program, and the Python a venv's script names (linked to the
    one the venv was made from), and enter its WorkingDirectory: edge-ad in a home closed to
    others, or a venv made from a Python in /root, fails the start with status=203/EXEC."""
    again = "write the unit again with edge-ad service from where edge-ad is (/opt/edge-ad in the README)"
    elsewhere = f"put edge-ad where every user may reach it and {again}"
    program, folder = _started_program(text)
    started = [(root / program.lstrip("/"), 5, "start", elsewhere)] if program else []
    try:
        with open(started[0][0], "rb") as script:
            first = script.readline(4096)
        shebang = first[2:].split() if first.startswith(b"#!") else []  # else a program of its own
    except (IndexError, OSError):  # no program, or none this user may read: it is said below
        shebang = []
    if shebang:
        started.append(((root / os.fsdecode(shebang[0]).lstrip("/")).resolve(), 5, "start",
                        "make edge-ad's venv from a Python every user may reach, as make runtime does from "
                        f"/usr/bin/python3, and {again}"))
    if folder:
        started.append((root / folder.lstrip("/"), 1, "enter", elsewhere))
    said: set[Path] = set()  # a closed folder once, not for the program and the folder it starts in
    for path, access, verb, mend in started:
        if not path.exists():
            report.problems.append(f"{unit} would not start: {path} is not there: {again}")
            continue
        closed = _closed(user, path, access, root)
        if closed is not None and closed not in said:
            said.add(closed)
            report.problems.append(f"{unit} would not start: {user.pw_name}, the service's user, may not {verb} "
                                   f"{path}" + ("" if closed == path else f" ({closed} is closed to it)")
                                   + f": {mend}")


def _mend(closed: Path, path: Path, own: str) -> str:
    """What gives the service's user the `path` that `closed` keeps from it: `own` (a chown) for
    the path itself, else a folder on the way to open."""
    if closed == path:
        return own
    return f"{closed} is closed to it: move {path.name} out of it, or sudo chmod o+x {closed}"


def _check_bundles(report: Report, specs: str | Sequence[str], config: dict, root: Path,
                   sources: int = 1) -> dict[str | None, Bundle]:
    """One bundle, or one per product variant ('NAME=BUNDLE', as `edge-ad run` takes them), for
    the number of `sources` that share them: each is checked, and several must also be comparable
    with each other. The bundles that load, by variant name (None for a lone bundle)."""
    try:
        variants = parse_variants(specs)
    except EdgeAdError as exc:
        report.problems.append(str(exc))
        return {}
    for folder in list(variants.values()) or [Path(".")]:
        _check_disk(report, folder)
    several = len(variants) > 1
    loaded: dict[str | None, Bundle] = {}
    for name, path in variants.items():
        bundle = _check_bundle(report, name if several else None, path, config, root, sources)
        if bundle is None:
            continue
        loaded[name if several else None] = bundle
        problem = comparability_problem(name, bundle) if several else None
        if problem is not None:
            report.problems.append(problem)
    return loaded


def _check_calibration(report: Report, stream: Stream, bundles: dict[str | None, Bundle]) -> None:
    """A source's own site calibration of its bundles (`calibration:`): there, and made for them."""
    for name, bundle in bundles.items():
        label = stream.name if name is None else f"{stream.name}, variant {name}"
        try:
            calibrated, problem = site_calibrated(bundle, calibration_folder(stream, name))
        except EdgeAdError as exc:  # a file that cannot be read: `run` refuses to start
            report.problems.append(f"source {label}: {exc}")
            continue
        if problem is not None:
            report.problems.append(f"source {label}: {problem}: edge-ad calibrate --sources ... --source "
                                   f"{shell_word(stream.name)} (until then it is scored with the bundle's own numbers)")
        else:
            report.found("calibration", f"{label}: {calibrated.calibration} ({calibrated.short_ids[1]}), threshold "
                                        f"{calibrated.threshold:.4f}{_least_area(calibrated)}")
            _calibration_warnings(report, label, calibrated)


def _calibration_warnings(report: Report, label: str, bundle: Bundle) -> None:
    """What `calibrate` warned of when it made the calibration in use (it records them), for
    whoever checks the device later: frames unlike the training pictures, a frozen camera, ..."""
    if bundle.calibration is None:
        return
    try:
        warnings = read_yaml(bundle.calibration).get("warnings") or []
    except (OSError, EdgeAdError):  # replaced or removed since it was loaded: the next run reads it again
        return
    lines = _recorded_lines(warnings)
    if lines is None:
        report.found("calibration", f"{label}: its field 'warnings' is not the list calibrate writes (edited by "
                                    f"hand?), got {warnings!r}")
    for warning in lines or []:
        report.found("calibration", f"{label}: made with the warning: {warning}")


def _recorded_lines(value: object) -> list | None:
    """The lines that training or calibrate recorded (notes, warnings: a list), where a hand edit
    may have left one line of text (not shown a letter a line) or something else (None)."""
    if isinstance(value, str):
        return [value]
    return value if isinstance(value, list) else None


def _least_area(bundle: Bundle) -> str:
    """How a calibration with `--min-defect-area` flags frames, for the lines above."""
    area = bundle.min_defect_area
    return "" if area is None else f", flags regions of at least {area} pixels"


def _elements(description: str) -> list[str]:
    """The element names of a gst-launch description (none for what is not a pipeline)."""
    if "!" not in description:
        return []
    names = (part.strip().strip("()").split() for part in description.split("!"))
    return [words[0] for words in names if words and "/" not in words[0] and "=" not in words[0]]


def _forces_udp_buffer(root: Path) -> bool:
    """Whether this process may force a socket's receive buffer past net.core.rmem_max
    (SO_RCVBUFFORCE, which GStreamer's udpsrc tries first): it holds CAP_NET_ADMIN, as root does
    (but not root in a container, which Docker starts without it) and as edge_ad/edge-ad.service
    gives its user."""
    try:
        status = (root / "proc/self/status").read_text()
    except OSError:
        return False
    found = re.search(r"^CapEff:\s*([0-9a-fA-F]+)$", status, re.M)
    return bool(found) and bool(int(found.group(1), 16) >> CAP_NET_ADMIN & 1)


def _check_udp_buffer(report: Report, name: str, pipelines: list[str], root: Path) -> None:
    """Video over UDP (RTSP over UDP, rtp://, udp://) asks the kernel for UDP_BUFFER_BYTES of
    receive buffer (its pipeline says `buffer-size=`); a process without CAP_NET_ADMIN gets at
    most net.core.rmem_max (208 KiB by default), and a picture larger than that never comes whole."""
    if _forces_udp_buffer(root) or not any("buffer-size=" in pipeline for pipeline in pipelines):
        return
    try:
        limit = int((root / "proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return
    if limit < UDP_BUFFER_BYTES:
        report.problems.append(
            f"source {name}: video over UDP, of which a process without CAP_NET_ADMIN gets at most {limit >> 10} KiB "
            f"of receive buffer here (net.core.rmem_max), not the {UDP_BUFFER_BYTES >> 20} MiB edge-ad asks for: "
            f"large pictures (a camera's 1080p MJPEG) then never come whole. Raise it (sysctl -w net.core.rmem_max="
            f"{UDP_BUFFER_BYTES}, and in /etc/sysctl.d/ for good), or run it with CAP_NET_ADMIN, as "
            "the unit edge-ad service writes does")


def _source_problem(name: str, text: str) -> str:
    """`text` said of the source `name`, which a source without a name of its own (its URI) would
    otherwise begin twice: its errors begin with the URI too."""
    text = without_passwords(text)
    return f"source {text}" if text.startswith(f"{name}: ") else f"source {name}: {text}"


def _check_source(report: Report, stream: Stream, jetson: bool, root: Path) -> None:
    """One source of a --sources file as `edge-ad run` would start it, without opening it: its
    pipeline and output (and their GStreamer elements, and the UDP buffer its video gets), and its
    inspection mask."""
    from .camera_certificates import camera_tls
    from .followed_pictures import check_followable
    from .http_pictures import HttpPictures, is_http_pictures
    from .masks import InspectionMask
    from .output_access import RTSP_OUTPUTS
    from .outputs import output_description, rtsp_server
    from .pipelines import opencv_input, source_pipeline

    try:
        check_followable("" if stream.pipeline else stream.input, stream.options)
        if stream.pipeline:
            pipelines, kind = [stream.pipeline], "own pipeline"
        elif found := opencv_input(stream.input):
            pipelines, kind = [], found + (", followed" if stream.options.follow else "")
        elif is_http_pictures(stream.input, stream.options):
            pipelines, kind = [], HttpPictures(stream.input, stream.options).description
        else:
            spec = source_pipeline(stream.input, stream.options, jetson)
            pipelines, kind = [spec.description], without_passwords(stream.input)  # output goes into support tickets
            if spec.note:
                report.problems.append(_source_problem(stream.name, spec.note))
        if not stream.pipeline and stream.options.certificate:
            camera_tls(stream.input, stream.options.certificate)  # the file reads, and the camera speaks TLS
            kind += f", its certificate pinned ({stream.options.certificate})"
        if stream.output:
            pipelines.append(output_description(stream.output, 64, 64, 30, jetson))
            if stream.output.startswith(RTSP_OUTPUTS):
                rtsp_server(stream.output)
        mask = InspectionMask.load(stream.mask) if stream.mask else None
    except EdgeAdError as exc:
        report.problems.append(_source_problem(stream.name, str(exc)))
        return
    report.found("source", f"{stream.name}: {kind}" + (f" -> {stream.output}" if stream.output else "")
                           + (f", mask {stream.mask} ({mask.share_text} inspected)" if mask else ""))
    _check_udp_buffer(report, stream.name, pipelines, root)
    try:
        from .sources import load_gst

        Gst = load_gst()
    except EdgeAdError:  # reported once by _check_gstreamer
        return
    for element in dict.fromkeys(e for p in pipelines for e in _elements(p)):
        if Gst.ElementFactory.find(element) is None:
            report.problems.append(f"source {stream.name}: GStreamer element {element} is missing: install "
                                   f"{ELEMENT_PACKAGES.get(element, 'its plugin')}")


def _check_sources(report: Report, streams: Sequence[Stream], bundles: Sequence[str], config: dict, root: Path,
                   jetson: bool) -> list[Path]:
    """Every source of a --sources file, and each bundle once, for the sources it scores (their
    own `bundle:`, else `bundles`, as `edge-ad run` takes them). Returns the folders the line's
    own calibration of each source goes into."""
    written = []
    scored_by: dict[tuple[str, ...], list[str]] = {}
    for stream in streams:
        _check_source(report, stream, jetson, root)
        try:
            scored_by.setdefault(bundle_of(stream, bundles), []).append(stream.name)
        except EdgeAdError as exc:
            report.problems.append(f"source {exc}")
    for spec, names in scored_by.items():
        report.found("scores", ", ".join(names))
        bundles = _check_bundles(report, spec, config, root, len(names))
        for stream in streams:
            if stream.name in names:
                written += [calibration_folder(stream, variant) or bundle.root for variant, bundle in bundles.items()]
            if stream.name in names and stream.calibration:
                _check_calibration(report, stream, bundles)
    return written


def _another_device(device: Device, given: str, config: dict) -> str:
    """Why --target `given` (`config`) does not describe this device, and what edge-ad takes it for."""
    own = (own_target(device) or {}).get("name")
    taken = f"which edge-ad takes for {own}" if own else "which no target in firmware_configs/ describes"
    way = ("run edge-ad doctor on the Jetson" if config["kind"] == "jetson" and device.kind != "jetson"
           else "leave --target out" if own else "give a target YAML whose module lists its part numbers")
    return (f"--target {given} ({config['description']}) does not describe this device "
            f"({device.named()}), {taken}: "
            f"doctor's checks of JetPack, power mode, GStreamer elements and precisions are {config['name']}'s here, "
            f"not this device's; {way}")


def doctor(bundles: str | Sequence[str] = (), target: str | None = None, root: Path = Path("/"),
           sources: Sequence[Stream] | None = None, sources_file: Path | None = None) -> Report:
    """Everything `edge-ad doctor` prints, for this machine (or the files under `root`), with the
    bundles given as `edge-ad run` takes them: 'BUNDLE', or 'NAME=BUNDLE' for each product variant.
    With `sources` (a --sources file's streams, read from `sources_file`), each source and the
    bundle of each is checked as `edge-ad run --sources` would start them."""
    report = Report()
    device = detect(root)
    config = target_config(target) if target is not None else pick_config(device, load_configs())
    memory = f", {device.memory_gb:.1f} GB" if device.memory_gb else ""
    report.found("device", f"{device.kind}: {device.model or 'no NVIDIA module or GPU'}{memory}"
                           + (f", parts {', '.join(device.part_numbers)}" if device.part_numbers else ""))
    # (the input size and K to train a model for this target at, for 30 fps: not the bundle's)
    report.found("target", f"{config['name']} ({config['description']}); backend {config['backend']}, "
                           f"precision {'/'.join(config['precision'])}; models sized for it: input "
                           f"{config['input_size']}, K={config['bridge_steps']}")
    if target is not None and not describes(config, device):
        report.problems.append(_another_device(device, target, config))
    _check_software(report, device, config, root)
    _check_gstreamer(report, config)
    _check_power(report, device, config, root)
    state = clock_state()
    clock = unsynchronised_clock(state)
    report.found("clock", "unknown (no adjtimex here)" if state is None else "kept by a time server" if clock is None
                 else "not kept by a time server (below)")
    if clock:
        report.problems.append(clock)
    _check_state(report)
    if sources is None:
        written = [bundle.root for bundle in _check_bundles(report, bundles, config, root).values()]
    else:
        written = _check_sources(report, sources, [bundles] if isinstance(bundles, str) else list(bundles), config,
                                 root, device.kind == "jetson")
    _check_service(report, root, written, [sources_file] if sources_file else [])
    return report
