"""Device detection from recorded module strings, the target configs, and `edge-ad doctor`."""

import grp
import hashlib
import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from edge_ad import doctor as doctor_module, runner
from edge_ad.detector import Detector
from edge_ad.device import (CONFIGS, TIME_ERROR, Sensors, clock_state, detect, int8_saturates, jetpack, l4t_release,
                            load_configs, pick_config, read_sensors, target_config, unsynchronised_clock)
from edge_ad.doctor import doctor
from edge_ad.runner import RunConfig, run
from edge_ad.service_unit import INSTALLED_UNIT
from edge_ad.streams import Stream
from edge_ad.engines import check_dla_core
from edge_ad.pipelines import hardware_encoder
from edge_ad.errors import EdgeAdError

RELEASE = "# R36 (release), REVISION: {}, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"

# (model, compatible, L4T revision of R36, MemTotal kB) as the modules report them.
MODULES = {
    "orin-nano-4gb": ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit",
                      "nvidia,p3768-0000+p3767-0004\0nvidia,p3767-0004\0nvidia,tegra234\0", "3.0", 3_722_000),
    "orin-nano-8gb": ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                      "nvidia,p3768-0000+p3767-0005-super\0nvidia,p3767-0005\0nvidia,tegra234\0", "4.3", 7_802_716),
    "orin-nx-8gb": ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                    "nvidia,p3768-0000+p3767-0001\0nvidia,p3767-0001\0nvidia,tegra234\0", "4.0", 7_620_000),
    "orin-nx-16gb": ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                     "nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0", "3.0", 15_655_000),
    "agx-orin-32gb": ("Jetson AGX Orin Developer Kit",
                      "nvidia,p3737-0000+p3701-0000\0nvidia,p3701-0000\0nvidia,tegra234\0", "4.0", 30_536_000),
    "agx-orin-64gb": ("Jetson AGX Orin Developer Kit",
                      "nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0", "4.3", 64_335_000),
}


def _jetson_root(tmp_path, model, compatible, revision, mem_kb):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    (tmp_path / "proc/device-tree/compatible").write_bytes(compatible.encode())
    (tmp_path / "etc/nv_tegra_release").write_text(RELEASE.format(revision))
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:         1000 kB\n")
    return tmp_path


def test_every_target_config_follows_the_schema():
    configs = load_configs()
    assert set(configs) == {*MODULES, "x86-nvidia-gpu", "cpu"}
    for name in MODULES:
        assert configs[name]["gstreamer"]["decoder"] == "nvv4l2decoder"
    assert [configs[n]["dla_cores"] for n in MODULES] == [0, 0, 1, 2, 2, 2]


def test_a_broken_config_names_its_field(tmp_path):
    folder = tmp_path / "configs"
    shutil.copytree(CONFIGS, folder)
    config = yaml.safe_load((folder / "cpu.yaml").read_text())
    config["bridge_steps"] = 3
    (folder / "cpu.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(EdgeAdError, match=r"cpu.yaml: field 'bridge_steps': 3 is not one of \[1, 2, 4\]"):
        load_configs(folder)


@pytest.mark.parametrize("name", MODULES)
def test_each_jetson_module_is_recognised(name, tmp_path):
    model, compatible, revision, mem_kb = MODULES[name]
    device = detect(_jetson_root(tmp_path, model, compatible, revision, mem_kb), smi=lambda: pytest.fail("no nvidia-smi on a Jetson"))
    config = pick_config(device, load_configs())
    assert device.kind == "jetson" and config["name"] == name
    assert jetpack(device, config)["jetpack"] == {"3.0": "6.0", "4.0": "6.1", "4.3": "6.2"}[revision]
    # The module's part number, not the carrier board's (p3768, p3737): it keys TensorRT engines.
    assert device.module in config["module"]["part_numbers"] and device.module.startswith(("p3767", "p3701"))


@pytest.mark.parametrize("name", MODULES)
def test_only_the_orin_nano_lacks_a_hardware_encoder(name, tmp_path):
    model, compatible, revision, mem_kb = MODULES[name]
    root = _jetson_root(tmp_path, model, compatible, revision, mem_kb)
    assert hardware_encoder(root) is not name.startswith("orin-nano")


def test_a_dla_core_the_module_lacks_is_refused(tmp_path):
    roots = {}
    for name in ("orin-nano-8gb", "orin-nx-8gb", "agx-orin-64gb"):
        model, compatible, revision, mem_kb = MODULES[name]
        roots[name] = _jetson_root(tmp_path / name, model, compatible, revision, mem_kb)
    with pytest.raises(EdgeAdError, match="--dla-core 0: this orin-nano-8gb has no DLA; leave --dla-core out"):
        check_dla_core(0, roots["orin-nano-8gb"])
    check_dla_core(0, roots["orin-nx-8gb"])
    with pytest.raises(EdgeAdError, match="--dla-core 1: this orin-nx-8gb has DLA cores 0 to 0"):
        check_dla_core(1, roots["orin-nx-8gb"])
    check_dla_core(1, roots["agx-orin-64gb"])
    check_dla_core(None, roots["orin-nano-8gb"])


def test_unknown_part_falls_back_to_model_and_memory(tmp_path):
    root = _jetson_root(tmp_path, "NVIDIA Jetson AGX Orin", "nvidia,tegra234\0", "4.0", 62_000_000)
    assert pick_config(detect(root), load_configs())["name"] == "agx-orin-64gb"
    assert detect(root).module is None
    only_pair = _jetson_root(tmp_path / "pair", "NVIDIA Jetson", "nvidia,p3768-0000+p3767-0005-super\0nvidia,tegra234\0",
                             "4.3", 7_802_716)
    assert detect(only_pair).module == "p3767-0005"


def test_x86_gpu_and_cpu_only(tmp_path):
    gpu = detect(tmp_path, smi=lambda: "NVIDIA H100 80GB HBM3, 9.0, 81559\n")
    assert (gpu.kind, gpu.gpu, gpu.compute_capability) == ("x86-gpu", "NVIDIA H100 80GB HBM3", "9.0")
    assert pick_config(gpu, load_configs())["name"] == "x86-nvidia-gpu"
    assert pick_config(detect(tmp_path, smi=lambda: None), load_configs())["name"] == "cpu"
    virtual = detect(tmp_path, smi=lambda: "GRID A100D-4C, 8.0, [N/A]\n")  # a field the GPU does not give
    assert (virtual.kind, virtual.gpu, virtual.memory_gb) == ("x86-gpu", "GRID A100D-4C", None)
    assert gpu.memory_gb == pytest.approx(79.65, abs=0.01)  # 81559 MiB
    assert l4t_release(RELEASE.format("4.3")) == "36.4.3"


def _sysfs_sensors(root):
    """Thermal zones and INA3221 rails as an Orin's sysfs shows them (values as the kernel writes them)."""
    for i, (kind, temp) in enumerate([("cpu-thermal", "47500"), ("gpu-thermal", "45312"), ("tj-thermal", "48000"),
                                      ("cpu-thermal", "46000"), ("soc0-thermal", "")]):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        if temp:
            (zone / "temp").write_text(temp + "\n")
    ina = root / "sys/class/hwmon/hwmon1"
    ina.mkdir(parents=True)
    (ina / "name").write_text("ina3221\n")
    for channel, (label, mv, ma) in enumerate([("VDD_IN", 5032, 1240), ("VDD_CPU_GPU_CV", 5024, 400)], start=1):
        (ina / f"in{channel}_label").write_text(label + "\n")
        (ina / f"in{channel}_input").write_text(f"{mv}\n")
        (ina / f"curr{channel}_input").write_text(f"{ma}\n")
    (ina / "in3_label").write_text("VDD_SOC\n")  # a channel whose readings are missing
    other = root / "sys/class/hwmon/hwmon0"
    other.mkdir(parents=True)
    (other / "name").write_text("tmp451\n")
    (other / "in1_label").write_text("not a rail\n")


def test_temperatures_and_rail_power_are_read_from_sysfs(tmp_path):
    model, compatible, revision, mem_kb = MODULES["agx-orin-64gb"]
    root = _jetson_root(tmp_path, model, compatible, revision, mem_kb)
    _sysfs_sensors(root)
    sensors = read_sensors(root)
    assert sensors.temperatures_c == {"cpu-thermal": 47.5, "gpu-thermal": 45.312, "tj-thermal": 48.0,
                                      "cpu-thermal-3": 46.0}
    assert sensors.power_w == pytest.approx({"VDD_IN": 5.032 * 1.24, "VDD_CPU_GPU_CV": 5.024 * 0.4})
    lines = doctor(root=root).lines
    assert any(line.startswith("temperature") and "cpu-thermal 47.5 C" in line for line in lines)
    assert any(line.startswith("power") and "VDD_IN 6.24 W" in line for line in lines)
    assert read_sensors(tmp_path / "a-vm") == Sensors()  # nothing to read: nothing reported


def test_doctor_on_a_jetpack_5_jetson_says_what_to_do(tmp_path):
    model, compatible, _, mem_kb = MODULES["orin-nx-16gb"]
    root = _jetson_root(tmp_path, model, compatible, "3.0", mem_kb)
    (root / "etc/nv_tegra_release").write_text(RELEASE.replace("R36", "R35").format("4.1"))
    report = doctor(root=root)
    (target,) = [line for line in report.lines if line.startswith("target       orin-nx-16gb")]
    assert target.endswith("; models sized for it: input 256, K=4")  # advice: it said "input 256" beside any bundle
    assert any("L4T 35.4.1 is not a JetPack release" in p and "flash JetPack 6" in p for p in report.problems)
    assert any("TensorRT's Python bindings are missing" in p and "python3-libnvinfer" in p for p in report.problems)


def test_doctor_takes_jetpack_6_point_releases_listed_or_not(tmp_path):
    """JetPack 6.2.1 (L4T 36.4.4) was called 6.1, and 6.2.2 (L4T 36.5.0, of 2026) "not a JetPack
    release edge-ad supports": doctor exited 1 and make runtime failed on a supported device. A
    later JetPack 6 release is taken as one."""
    model, compatible, _, mem_kb = MODULES["orin-nano-8gb"]
    for revision, said in (("4.4", "6.2.1 (L4T 36.4.4)"), ("5.0", "6.2.2 (L4T 36.5.0)"),
                           ("5.2", "6.x (L4T 36.5.2, a release this target does not list: 6.0 (L4T 36.3), ")):
        root = _jetson_root(tmp_path / revision, model, compatible, revision, mem_kb)
        report = doctor(root=root)
        assert any(line.startswith(f"JetPack      {said}") for line in report.lines), report.lines
        assert not any("is not a JetPack release" in problem for problem in report.problems)


def test_a_target_given_for_another_device_is_said_with_the_one_edge_ad_takes(tmp_path):
    """An Orin Nano given --target cpu was told "L4T 36.4.3 is not a JetPack release edge-ad supports
    on this module (None (L4T None))": flash JetPack 6; given the AGX Orin's, nothing said that
    every check was the AGX's. A target of one's own for the same module is this device's."""
    model, compatible, revision, mem_kb = MODULES["orin-nano-8gb"]
    root = _jetson_root(tmp_path / "nano", model, compatible, revision, mem_kb)
    for target in ("cpu", "x86-nvidia-gpu", "agx-orin-64gb"):
        report = doctor(target=target, root=root)
        assert [p for p in report.problems if p.startswith("--target")] == [
            f"--target {target} ({target_config(target)['description']}) does not describe this device ({model}, "
            "parts p3767-0005, p3768-0000), which edge-ad takes for orin-nano-8gb: doctor's checks of JetPack, power "
            f"mode, GStreamer elements and precisions are {target}'s here, not this device's; leave --target out"]
        assert not any("JetPack release" in p for p in report.problems), report.problems
        assert ("L4T          36.4.3" if target != "agx-orin-64gb" else "JetPack      6.2 (L4T 36.4.3)") in report.lines
    own = tmp_path / "line3.yaml"
    own.write_text((CONFIGS / "orin-nano-8gb.yaml").read_text().replace("name: orin-nano-8gb", "name: line3"))
    for target in ("orin-nano-8gb", str(own)):
        assert not any(p.startswith("--target") for p in doctor(target=target, root=root).problems)
    model, compatible, revision, mem_kb = MODULES["orin-nx-16gb"]
    unknown = _jetson_root(tmp_path / "other", "Jetson Orin Carrier X", compatible.replace("3767-0000", "3767-0099")
                           .replace("3768", "9999"), revision, mem_kb)  # a module no shipped target lists
    assert [p for p in doctor(target=str(own), root=unknown).problems if p.startswith("--target")] == [
        f"--target {own} (Jetson Orin Nano 8GB, module or developer kit (JetPack 6.x)) does not describe this device "
        "(Jetson Orin Carrier X, parts p3767-0099, p9999-0000), which no target in firmware_configs/ describes: "
        "doctor's checks of JetPack, power mode, GStreamer elements and precisions are line3's here, not this "
        "device's; give a target YAML whose module lists its part numbers"]
    report = doctor(target="orin-nano-8gb", root=tmp_path / "a-pc")  # a PC: a Jetson target is checked on the Jetson
    assert any(p.startswith("--target orin-nano-8gb (Jetson Orin Nano 8GB") and p.endswith("run edge-ad doctor on the "
               "Jetson") for p in report.problems), report.problems


def test_build_takes_the_memory_pool_limit_of_this_device_s_target(tmp_path):
    """`build` without --target took TensorRT's memory-pool limit as 1024 MiB on every device, where
    the AGX Orin's target gives 4096 and the Orin NX's 2048; the README's device steps give none."""
    import warnings

    from edge_ad.device import nvidia_smi
    from edge_ad.engines import memory_pool_mib

    for name, limit in (("agx-orin-64gb", 4096), ("orin-nx-16gb", 2048), ("orin-nano-8gb", 1536)):
        root = _jetson_root(tmp_path / name, *MODULES[name])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # its own target, given or not: nothing to warn of
            assert memory_pool_mib(root=root) == memory_pool_mib(name, root) == limit
    model, _, _, _ = MODULES["orin-nano-8gb"]
    with pytest.warns(UserWarning, match=re.escape(
            f"--target agx-orin-64gb (Jetson AGX Orin 64GB (JetPack 6.x)) does not describe this device ({model}, "
            "parts p3767-0005, p3768-0000): the engines are built with a 4096 MiB memory-pool limit all the same")):
        assert memory_pool_mib("agx-orin-64gb", root) == 4096
    model, compatible, revision, mem_kb = MODULES["orin-nx-16gb"]
    unknown = _jetson_root(tmp_path / "other", "Jetson Orin Carrier X", compatible.replace("3767-0000", "3767-0099"),
                           revision, mem_kb)
    assert memory_pool_mib(root=unknown) == 1024  # a module no target describes
    assert memory_pool_mib(root=tmp_path / "a-pc") == (4096 if nvidia_smi() else 1024)


def test_a_power_mode_with_more_power_than_the_target_s_is_not_a_problem(tmp_path, monkeypatch):
    """An Orin Nano at MAXN_SUPER (JetPack 6.2's fastest) was told to go down to its target's
    15W, as a problem that failed make runtime; one at 7W is still told to go up."""
    import edge_ad.doctor

    def nvpmodel_says(mode: str) -> None:
        monkeypatch.setattr(edge_ad.doctor, "run_command",
                            lambda argv: f"NV Power Mode: {mode}\n2\n" if argv[0] == "nvpmodel" else None)

    model, compatible, revision, mem_kb = MODULES["orin-nano-8gb"]
    root = _jetson_root(tmp_path, model, compatible, revision, mem_kb)
    for mode, found, problem in (
            ("MAXN_SUPER", "MAXN_SUPER (more power than the 15W this target's frame rates were estimated at)", None),
            ("25W", "25W (more power than the 15W this target's frame rates were estimated at)", None),
            ("15W", "15W", None),
            ("7W", "7W", "power mode 7W, this target wants 15W: sudo nvpmodel -m 0 (check the id with nvpmodel -p "
                         "--verbose)"),
            ("LINE_MODE", "LINE_MODE", "power mode LINE_MODE, this target wants 15W: sudo nvpmodel -m 0 (check the id "
                                       "with nvpmodel -p --verbose)")):  # a mode of one's own: its power unknown
        nvpmodel_says(mode)
        report = doctor(root=root)
        assert f"power mode   {found}" in report.lines
        assert [p for p in report.problems if p.startswith("power mode")] == ([problem] if problem else [])
    model, compatible, revision, mem_kb = MODULES["orin-nx-16gb"]  # its target has MAXN
    root = _jetson_root(tmp_path / "nx", model, compatible, revision, mem_kb)
    nvpmodel_says("MAXN_SUPER")
    assert "power mode   MAXN_SUPER (more power than the MAXN this target's frame rates were estimated at)" in \
        doctor(root=root).lines
    nvpmodel_says("40W")
    assert "power mode 40W, this target wants MAXN: sudo nvpmodel -m 0 (check the id with nvpmodel -p --verbose)" in \
        doctor(root=root).problems


def test_a_tensorrt_there_that_fails_to_import_is_said_as_such(tmp_path, monkeypatch):
    """JetPack's TensorRT bindings beside a NumPy or CUDA they were not built for fail at import,
    with what they raise (an AttributeError for NumPy's C API): doctor says so and where the
    package is, rather than a traceback, or "missing" with a line to install what is there."""
    model, compatible, _, mem_kb = MODULES["orin-nx-16gb"]
    root = _jetson_root(tmp_path, model, compatible, "3.0", mem_kb)
    (root / "etc/nv_tegra_release").write_text(RELEASE.format("4.3"))
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise AttributeError('_ARRAY_API not found')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    report = doctor(root=root)
    assert "TensorRT     fails to import (below)" in report.lines
    assert any(f"the tensorrt package at {package} is there but fails to import (AttributeError: _ARRAY_API not "
               "found)" in p and "python3-libnvinfer" in p for p in report.problems), report.problems
    assert not any("bindings are missing" in p for p in report.problems)


def test_a_clock_no_time_server_keeps_is_said_by_doctor_and_run(tiny_bundle, spotted_frames, monkeypatch, caplog):
    """Events, snapshots and reports carry this clock's times, and TLS certificates are checked
    against its date: a Jetson on an isolated line, whose time server is not set, drifts."""
    assert clock_state() in range(6)  # adjtimex answers here: TIME_OK ... TIME_ERROR
    assert unsynchronised_clock(0) is None and unsynchronised_clock(None) is None
    said = "this machine's clock is not kept by a time server (the kernel says it is not synchronised)"
    for state, line in ((TIME_ERROR, "clock        not kept by a time server (below)"),
                        (0, "clock        kept by a time server")):
        monkeypatch.setattr(doctor_module, "clock_state", lambda: state)
        report = doctor([])
        assert line in report.lines
        assert any(said in problem and "timedatectl set-ntp true" in problem for problem in report.problems) == \
            (state == TIME_ERROR)
    monkeypatch.setattr(runner, "clock_state", lambda: TIME_ERROR)
    with caplog.at_level(logging.WARNING, logger="edge_ad.runner"):
        run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "line")], RunConfig(max_frames=1))
    assert caplog.text.count(said) == 1


def test_doctor_here_reports_the_cpu_target_and_the_bundle(tiny_bundle):
    out = subprocess.run([sys.executable, "-m", "edge_ad", "doctor", "--bundle", str(tiny_bundle)],
                         capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert any(line.startswith("target       cpu") for line in lines), out.stdout
    named = hashlib.sha256((tiny_bundle / "bundle.yaml").read_bytes()).hexdigest()[:12]  # as the events name it
    assert any(line.startswith(f"bundle       prototype, fp32, 128x128, trained on grey pictures (frames scored in "
                               f"grey), bundle.yaml {named}, calibration: ")
               for line in lines), out.stdout
    assert any("engines      not needed" in line for line in lines)
    assert out.returncode == (1 if any(line.startswith("problem:") for line in lines) else 0)


def test_doctor_checks_the_installed_service_s_user_can_run_it(tiny_bundle):
    """The unit edge-ad service writes runs edge-ad as a user of its own (before: as root). A site that
    installs it needs that user, who must reach the GPU's device, the program the unit starts (a
    venv in a home closed to others: systemd's status=203/EXEC) and the bundle the line's own
    calibration goes into, before systemd fails the start or the line's calibration is lost."""
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    with tempfile.TemporaryDirectory() as folder:  # in /tmp: pytest's tmp_path is closed to others
        base = Path(folder)
        base.chmod(0o755)
        _check_the_service_s_user(base, tiny_bundle)


def _check_the_service_s_user(base: Path, tiny_bundle: Path) -> None:
    root = base / "root"
    unit = root / INSTALLED_UNIT.relative_to("/")
    unit.parent.mkdir(parents=True)
    (root / "dev").mkdir()
    gpu = root / "dev" / "nvmap"
    gpu.write_text("")
    program = root / "opt" / "edge-ad" / ".venv" / "bin" / "edge-ad"
    program.parent.mkdir(parents=True)
    python = root / "root" / ".pyenv" / "python3.11"  # the Python a venv was made from
    python.parent.mkdir(parents=True)
    python.write_text("")
    python.chmod(0o755)
    (program.parent / "python").symlink_to(python)
    program.write_text("#!/opt/edge-ad/.venv/bin/python\n")
    program.chmod(0o755)
    bundle = base / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    cameras = base / "cams.yaml"  # as `cameras --sources` writes it, with passwords: its owner's only
    cameras.write_text("sources: []\n")

    def said() -> list[str]:
        report = doctor(str(bundle), root=root, sources_file=cameras)
        return [line for line in report.lines if line.startswith("service")] + \
            [p for p in report.problems if "service" in p or "useradd" in p]

    assert said() == []  # no service installed
    unit.write_text("[Service]\nWorkingDirectory=/opt/edge-ad\n")  # edited by hand: nothing to run
    assert said()[1:] == [f"{unit} would not start: it has no ExecStart= line (systemd refuses such a unit); write "
                          "it again with edge-ad service run and the line meant"]
    unit.write_text("[Service]\nExecStart=/opt/edge-ad/.venv/bin/edge-ad run\n")
    assert said() == [f"service      {unit}: runs edge-ad as root (edge-ad service writes a unit that runs it "
                      "as a user of its own, and says how to make the user)"]
    unit.write_text("[Service]\nUser=edge-ad-nobody-has\nExecStart=/opt/edge-ad/.venv/bin/edge-ad run\n")
    assert said() == [f"{unit} runs edge-ad as the user edge-ad-nobody-has, who is not there: sudo useradd --system "
                      "--home-dir /var/lib/edge-ad --groups video edge-ad-nobody-has"]
    unit.write_text('[Service]\nUser=nobody\nExecStart="/opt/edge-ad/.venv/bin/edge-ad" run --bundle /b \\\n'
                    "    --input csi://0\nWorkingDirectory=/opt/edge-ad\n")  # quoted as where it has blanks
    gpu.chmod(0o660)
    bundle.chmod(0o755)
    cameras.chmod(0o600)
    program.parents[2].chmod(0o750)  # a home: its owner's and group's
    group = grp.getgrgid(gpu.stat().st_gid).gr_name
    again = "write the unit again with edge-ad service from where edge-ad is (/opt/edge-ad in the README)"
    assert said() == [f"service      {unit}: runs edge-ad as nobody",
                      f"nobody, the service's user, may not use {gpu}: sudo usermod -aG {group} nobody",
                      f"{unit} would not start: nobody, the service's user, may not start {program} "
                      f"({program.parents[2]} is closed to it): put edge-ad where every user may reach it and {again}",
                      f"nobody, the service's user, may not write {bundle}, where the line's own calibration goes: "
                      f"sudo chown -R nobody {bundle}",
                      f"nobody, the service's user, may not read {cameras}: sudo chown nobody {cameras}"]
    gpu.chmod(0o666)
    program.parents[2].chmod(0o755)
    bundle.chmod(0o777)
    cameras.chmod(0o644)
    assert said() == [f"service      {unit}: runs edge-ad as nobody"]
    written = unit.read_text()  # by an earlier edge-ad, which took an option given twice (the last)
    unit.write_text(written.replace("--input csi://0", "--input csi://0 --events a.jsonl \\\n    --events b.jsonl"))
    assert said() == [f"service      {unit}: runs edge-ad as nobody",
                      f"{unit} would stop at the start: edge-ad run: error: --events given twice (a.jsonl, then "
                      "b.jsonl); give it once; write it again with edge-ad service run and the line meant"]
    unit.write_text(written)
    base.chmod(0o700)  # the folder of the bundle and the sources file closed, not they
    assert said() == [f"service      {unit}: runs edge-ad as nobody",
                      f"nobody, the service's user, may not write {bundle}, where the line's own calibration goes: "
                      f"{base} is closed to it: move bundle out of it, or sudo chmod o+x {base}",
                      f"nobody, the service's user, may not read {cameras}: {base} is closed to it: move cams.yaml "
                      f"out of it, or sudo chmod o+x {base}"]
    base.chmod(0o755)
    (root / "root").chmod(0o700)  # root's home, where pyenv puts its Pythons
    assert said()[1:] == [f"{unit} would not start: nobody, the service's user, may not start {python} "
                          f"({root / 'root'} is closed to it): make edge-ad's venv from a Python every user may "
                          f"reach, as make runtime does from /usr/bin/python3, and {again}"]
    program.unlink()
    assert said()[1:] == [f"{unit} would not start: {program} is not there: {again}"]
    (root / "root").chmod(0o755)
    program.write_text("#!/opt/edge-ad/.venv/bin/python\n")
    program.chmod(0o755)
    # `systemctl edit edge-ad` writes a drop-in whose settings systemd takes over the unit's: doctor
    # read the unit alone, so an upgrade that refuses the drop-in's run line went unsaid, and a
    # unit written again with edge-ad service still ran the drop-in's line.
    override = unit.with_name("edge-ad.service.d") / "override.conf"
    override.parent.mkdir()
    override.write_text("[Service]\nExecStart=\nExecStart=/opt/edge-ad/.venv/bin/edge-ad run --events a.jsonl "
                        "--events b.jsonl\n")
    assert said() == [f"service      {unit} (with {override}): runs edge-ad as nobody",
                      f"{override} would stop at the start: edge-ad run: error: --events given twice (a.jsonl, then "
                      f"b.jsonl); give it once; mend its ExecStart= (sudo systemctl edit edge-ad), or delete the file "
                      f"and write {unit} again with edge-ad service run and the line meant"]
    override.write_text("[Service]\nExecStart=\n")  # the unit's line dropped, none given: systemd refuses it
    assert said() == [f"service      {unit} (with {override}): runs edge-ad as nobody",
                      f"{override} would not start: it leaves the service no ExecStart= line (systemd refuses such a "
                      f"unit); mend its ExecStart= (sudo systemctl edit edge-ad), or delete the file and write {unit} "
                      "again with edge-ad service run and the line meant"]
    override.write_text("[Service]\nUser=edge-ad-nobody-has\n")
    assert said() == [f"{unit} (with {override}) runs edge-ad as the user edge-ad-nobody-has, who is not there: "
                      "sudo useradd --system --home-dir /var/lib/edge-ad --groups video edge-ad-nobody-has"]


def test_a_given_target_is_checked_against_the_schema(tmp_path):
    bad = tmp_path / "line3.yaml"
    bad.write_text("name: line3\n")
    out = subprocess.run([sys.executable, "-m", "edge_ad", "doctor", "--target", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and "line3.yaml: field 'top level': 'description' is a required property" in out.stderr


def test_a_target_is_a_yaml_file_or_the_name_of_a_shipped_one(tmp_path):
    from edge_ad.device import load_config

    assert target_config("orin-nano-8gb") == load_config(CONFIGS / "orin-nano-8gb.yaml")
    own = tmp_path / "orin-nano-8gb"  # a file of that name, where the command runs, is the one meant
    shutil.copy(CONFIGS / "cpu.yaml", own)
    assert target_config(str(own))["name"] == "cpu"
    with pytest.raises(EdgeAdError, match=r"--target orin-nano-9gb: no such target YAML file, nor a target of .*"
                                          r"\(agx-orin-32gb, .*orin-nano-8gb, .*x86-nvidia-gpu\)"):
        target_config("orin-nano-9gb")


def test_an_installed_copy_has_the_targets_and_the_service_unit(tmp_path):
    """`pip install .` (not -e), as a Jetson image or a wheel from the workstation has it, keeps
    firmware_configs/ beside edge_ad/, so `--target NAME` and `doctor` find every target, and the
    unit `edge-ad service` fills in."""
    root = CONFIGS.parent
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside its sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source)
    for package in ("edge_ad", "export", "calibration", "firmware_configs"):
        shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    check = ("import edge_ad.device as d, edge_ad.service_unit as s; print(d.__file__); "
             "print(' '.join(sorted(d.load_configs()))); print(d.target_config('orin-nx-16gb')['name']); "
             "print(s.UNIT_TEMPLATE.is_file())")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    where, names, picked, unit = out.stdout.splitlines()
    assert where.startswith(str(site))
    assert names.split() == sorted(p.stem for p in CONFIGS.glob("*.yaml")) and picked == "orin-nx-16gb"
    assert unit == "True"  # the template of `edge-ad service`


@pytest.mark.parametrize("flags, machine, saturates", [
    ("fpu sse2 avx2 avx512f avx512bw", "x86_64", True),  # Skylake-SP: AVX-512 without VNNI
    ("fpu sse2 avx2 avx512f avx512bw avx512_vnni", "x86_64", False),
    ("fpu sse2 avx2 avx_vnni", "x86_64", False),
    ("fp asimd asimddp", "aarch64", False),  # a Jetson's ARM cores
])
def test_int8_saturation_is_told_from_the_cpu_flags(tmp_path, flags, machine, saturates):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert int8_saturates(tmp_path, machine) is saturates


def test_doctor_says_when_video_over_udp_gets_too_small_a_buffer(tmp_path):
    """A process without CAP_NET_ADMIN (a user other than root, root in a Docker container) gets
    net.core.rmem_max of UDP receive buffer at most (208 KiB by default), and a 1080p MJPEG picture
    of 1.5 MB never came whole through that (README)."""
    from edge_ad.pipelines import SourceOptions
    from edge_ad.streams import streams_from_yaml

    root = tmp_path / "root"
    (root / "proc/sys/net/core").mkdir(parents=True)
    sources = tmp_path / "cams.yaml"
    sources.write_text(yaml.safe_dump({"sources": [
        {"input": "rtp://@:5004", "name": "cam-rtp"},
        {"input": "rtsp://10.0.0.5/h264", "name": "cam-rtsp"},  # UDP first, as rtspsrc tries it
        {"input": "rtsp://10.0.0.6/jpeg", "name": "cam-mjpeg", "codec": "mjpeg"},  # over TCP
        {"input": "test://ball", "name": "cam-test"},
    ]}))
    streams = streams_from_yaml(sources, SourceOptions())
    (root / "proc/self").mkdir()
    user, docker_root, service = "0000000000000000", "00000000a80425fb", "0000000000001400"  # CAP_NET_ADMIN: 0x1000
    for capabilities, limit, named in ((user, 212992, ["cam-rtp", "cam-rtsp"]), (user, 16 << 20, []),
                                       (docker_root, 212992, ["cam-rtp", "cam-rtsp"]), (service, 212992, []),
                                       ("000001ffffffffff", 212992, [])):  # root
        (root / "proc/self/status").write_text(f"Name:\tedge-ad\nCapInh:\t0\nCapEff:\t{capabilities}\nCapBnd:\t0\n")
        (root / "proc/sys/net/core/rmem_max").write_text(f"{limit}\n")
        problems = [p for p in doctor(root=root, sources=streams).problems if "net.core.rmem_max" in p]
        assert [p.split(":")[0] for p in problems] == [f"source {name}" for name in named]
    (root / "proc/self/status").write_text(f"CapEff:\t{user}\n")
    problem = next(p for p in doctor(root=root, sources=streams).problems if "net.core.rmem_max" in p)
    assert "at most 208 KiB" in problem and "sysctl -w net.core.rmem_max=8388608" in problem
