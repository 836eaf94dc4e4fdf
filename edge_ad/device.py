"""What machine this is, and which `firmware_configs/` target describes it.

A Jetson is told by its device tree: the module part number in /proc/device-tree/compatible
(p3767-0000 is an Orin NX 16GB), else the model string and the memory size; its L4T release
from /etc/nv_tegra_release. An x86 GPU is told by nvidia-smi. Everything else is the CPU target.
Every reader takes a root folder, so tests feed recorded files from each module.
"""

from __future__ import annotations

import ctypes
import json
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

from .bundle import read_yaml
from .errors import EdgeAdError

CONFIGS = Path(__file__).resolve().parents[1] / "firmware_configs"


@dataclass
class Device:
    kind: str  # jetson, x86-gpu or cpu
    model: str = ""  # /proc/device-tree/model, or the GPU name
    part_numbers: list[str] = field(default_factory=list)  # module part numbers from the device tree
    memory_gb: float | None = None
    l4t: str | None = None  # e.g. 36.4.3
    module: str | None = None  # the module's part number (p3767-0005), without the carrier board's
    gpu: str | None = None
    compute_capability: str | None = None

    def named(self) -> str:
        """This device as a message names it: a Jetson's model and part numbers, a GPU's name."""
        if self.kind == "jetson":
            return f"{self.model or 'a Jetson'}, parts {', '.join(self.part_numbers) or 'none'}"
        return f"a machine with an {self.model}" if self.kind == "x86-gpu" else "a machine with no NVIDIA GPU"


def _read(root: Path, path: str) -> str | None:
    file = root / path.lstrip("/")
    try:
        return file.read_bytes().decode(errors="replace")
    except OSError:
        return None


def _memory_gb(root: Path) -> float | None:
    meminfo = _read(root, "/proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    return int(match.group(1)) / (1 << 20) if match else None


@cache  # read once per process: every graph of an INT8 bundle asks at load
def int8_saturates(root: Path = Path("/"), machine: str = platform.machine()) -> bool:
    """True on an x86 CPU without VNNI: ONNX Runtime's default integer kernels there add uint8 x
    int8 products in pairs into int16, which saturates (its quantization docs), so the runtime
    asks for its exact ones (`backends.exact_int8_kernels`; README "x86 CPUs without VNNI")."""
    if machine.lower() not in ("x86_64", "amd64"):
        return False
    flags = re.search(r"^flags\s*:(.*)$", _read(root, "/proc/cpuinfo") or "", re.M)
    return flags is not None and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags.group(1).split())


@dataclass
class Sensors:
    """What the board says about its heat and power (tegrastats shows the same)."""

    temperatures_c: dict[str, float] = field(default_factory=dict)  # thermal zone type -> degrees C
    power_w: dict[str, float] = field(default_factory=dict)  # INA3221 rail (VDD_IN, ...) -> watts


def read_sensors(root: Path = Path("/")) -> Sensors:
    """Thermal zones from /sys/class/thermal and, on a Jetson, the rails of its INA3221 power
    monitors (channel label, millivolts times milliamps) from /sys/class/hwmon; empty where the
    machine has none (a VM). Unreadable entries are left out."""
    sensors = Sensors()
    zones = sorted((root / "sys/class/thermal").glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0))
    for zone in zones:
        kind, millidegrees = (_read(zone, "type") or "").strip(), _int(zone, "temp")
        if kind and millidegrees is not None:
            name = kind if kind not in sensors.temperatures_c else f"{kind}-{zone.name[12:]}"
            sensors.temperatures_c[name] = millidegrees / 1000
    for hwmon in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        if "ina3221" not in (_read(hwmon, "name") or ""):
            continue
        for label_path in sorted(hwmon.glob("in*_label")):
            channel = label_path.name[2 : -len("_label")]
            label = (_read(hwmon, label_path.name) or "").strip()
            millivolts, milliamps = _int(hwmon, f"in{channel}_input"), _int(hwmon, f"curr{channel}_input")
            if label and millivolts is not None and milliamps is not None:
                sensors.power_w[label] = millivolts * milliamps / 1e6
    return sensors


def _int(folder: Path, name: str) -> int | None:
    """The integer in file `name` of `folder` (a sysfs value), or None."""
    text = _read(folder, name)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'."""
    match = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


TIME_ERROR = 5  # adjtimex(2)'s answer for a clock no time server keeps (STA_UNSYNC)
TIMEX_BYTES = 512  # room for Linux's struct timex (208 bytes on 64-bit); zeroed: modes 0, only read


def clock_state() -> int | None:
    """The kernel's clock state (adjtimex(2), which timedatectl's NTPSynchronized reads too);
    None where there is no adjtimex (not Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.create_string_buffer(TIMEX_BYTES))
    except (OSError, AttributeError):
        return None


def unsynchronised_clock(state: int | None) -> str | None:
    """What to say when no time server keeps this machine's clock, by its `state` (clock_state;
    None when one does, or it cannot be told): a quality record's times and every TLS
    certificate's dates rest on it."""
    if state != TIME_ERROR:
        return None
    return ("this machine's clock is not kept by a time server (the kernel says it is not synchronised): the times "
            "of events, snapshots and reports, --since/--until, and the dates every TLS certificate is checked "
            "against (cameras, MQTT, OPC UA) rest on it, and a Jetson without a clock battery starts from the last "
            "time it saved. Point systemd-timesyncd at the plant's time server (NTP= in "
            "/etc/systemd/timesyncd.conf), then timedatectl set-ntp true")


def run_command(argv: list[str]) -> str | None:
    """A tool's standard output, or None when it is not installed, fails or hangs (10 s)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def nvidia_smi() -> str | None:
    """`nvidia-smi` CSV of the first GPU: name, compute capability, memory (None without one)."""
    return run_command(["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"])


def is_jetson(root: Path = Path("/")) -> bool:
    """True on an NVIDIA Jetson: a Tegra device tree, L4T's release file, or a Jetson model string."""
    model = (_read(root, "/proc/device-tree/model") or "").lower()
    compatible = _read(root, "/proc/device-tree/compatible") or ""
    return "tegra" in compatible or _read(root, "/etc/nv_tegra_release") is not None or "jetson" in model


def detect(root: Path = Path("/"), smi: Callable[[], str | None] = nvidia_smi) -> Device:
    """The device at `root` (the real one by default)."""
    if is_jetson(root):
        model = (_read(root, "/proc/device-tree/model") or "").strip("\x00\n ")
        compatible = _read(root, "/proc/device-tree/compatible") or ""
        parts = sorted(set(re.findall(r"p\d{4}-\d{4}", compatible)))
        # "nvidia,<carrier>+<module>\0nvidia,<module>\0nvidia,tegra234": the module is listed alone, or after '+'.
        module = (re.search(r"(?:^|\0)nvidia,(p\d{4}-\d{4})(?:-\w+)?(?:\0|$)", compatible)
                  or re.search(r"\+(p\d{4}-\d{4})", compatible))
        return Device("jetson", model, parts, _memory_gb(root), l4t_release(_read(root, "/etc/nv_tegra_release") or ""),
                      module=module.group(1) if module else None)
    csv = smi()
    if csv and csv.strip():
        name, capability, memory = ([field.strip() for field in csv.strip().splitlines()[0].split(",")] + ["", ""])[:3]
        # A field a GPU does not give reads "[N/A]" (a virtual GPU's memory): not a reason to stop
        # the load of a bundle, which asks what the device is (backends.gpu_left_idle)
        memory_gb = float(memory) / 1024 if memory.replace(".", "", 1).isdigit() else None
        return Device("x86-gpu", name, memory_gb=memory_gb, gpu=name, compute_capability=capability or None)
    return Device("cpu", memory_gb=_memory_gb(root))


def load_config(path: Path, schema_path: Path = CONFIGS / "schema.json") -> dict:
    """One target YAML, checked against the schema; errors name the file and the field."""
    import jsonschema

    try:
        schema = json.loads(schema_path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgeAdError(f"{schema_path}: cannot read the target schema ({exc})") from exc
    config = read_yaml(path)
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "top level"
        raise EdgeAdError(f"{path}: field '{where}': {exc.message}") from exc
    return config


def target_config(target: str) -> dict:
    """`--target`: a target YAML, or the name of one of firmware_configs/ (`orin-nano-8gb`)."""
    path = Path(target)
    if not path.exists() and (CONFIGS / f"{target}.yaml").is_file():
        path = CONFIGS / f"{target}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise EdgeAdError(f"--target {target}: no such target YAML file, nor a target of {CONFIGS} ({names})")
    return load_config(path)


def load_configs(folder: Path = CONFIGS) -> dict[str, dict]:
    """Every target YAML in `folder`, checked against its schema.json."""
    configs = {}
    for path in sorted(folder.glob("*.yaml")):
        config = load_config(path, folder / "schema.json")
        if config["name"] != path.stem:
            raise EdgeAdError(f"{path}: field 'name' is {config['name']!r}, the file name says {path.stem!r}")
        configs[config["name"]] = config
    if not configs:
        raise EdgeAdError(f"{folder}: no target YAML files")
    return configs


def pick_config(device: Device, configs: dict[str, dict]) -> dict:
    """The target for `device`: by module part number, else by model string and the nearest
    memory size; x86 GPUs and everything else get their generic targets."""
    if device.kind != "jetson":
        return configs["x86-nvidia-gpu" if device.kind == "x86-gpu" else "cpu"]
    jetsons = [c for c in configs.values() if c["kind"] == "jetson"]
    for config in jetsons:
        if set(device.part_numbers) & set(config["module"]["part_numbers"]):
            return config
    named = [c for c in jetsons if any(m.lower() in device.model.lower() for m in c["module"]["model_contains"])]
    if named and device.memory_gb is not None:
        # MemTotal is a little below the module's memory (carve-outs): the smallest module that holds it.
        fitting = [c for c in named if c["module"]["memory_gb"] >= device.memory_gb] or named
        return min(fitting, key=lambda c: c["module"]["memory_gb"])
    raise EdgeAdError(f"unknown Jetson module '{device.model}' (parts {device.part_numbers or 'none'}): add a "
                      f"target YAML to {CONFIGS} or pass --target")


def own_target(device: Device) -> dict | None:
    """The target in firmware_configs/ that edge-ad takes `device` for, or None for a Jetson module
    none describes (where the callers fall back to what serves most modules)."""
    try:
        return pick_config(device, load_configs())
    except EdgeAdError:
        return None


def describes(config: dict, device: Device) -> bool:
    """Whether the target `config` is one for `device`: on a Jetson, a Jetson target of its module (by
    part number where both list them, else by model string); elsewhere, any target but a Jetson's."""
    if (device.kind == "jetson") != (config["kind"] == "jetson"):
        return False
    if device.kind != "jetson":
        return True
    module = config["module"]
    if device.part_numbers and module["part_numbers"]:
        return bool(set(device.part_numbers) & set(module["part_numbers"]))
    return any(m.lower() in device.model.lower() for m in module["model_contains"])


def jetpack(device: Device, config: dict) -> dict | None:
    """The JetPack release of the target whose L4T version this device runs (longest match)."""
    if device.l4t is None:
        return None
    matches = [r for r in config["software"]["releases"] if r["l4t"] and (device.l4t + ".").startswith(r["l4t"] + ".")]
    return max(matches, key=lambda r: len(r["l4t"]), default=None)
