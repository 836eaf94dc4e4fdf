"""`make wheelhouse` then `make runtime` on a device without internet: the wheels the device needs,
all of them, and an install that reads nothing else. Both need PyPI to make the wheelhouse."""

import email.parser
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]

# JetPack 6: Ubuntu 22.04's Python 3.10 and glibc 2.35 on aarch64, the Makefile's default device.
JETPACK_6 = {
    "python_version": "3.10", "python_full_version": "3.10.12", "implementation_version": "3.10.12",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
    "platform_release": "5.15.148-tegra", "platform_version": "", "extra": "",
}
JETPACK_6_PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(35, 16, -1)] + ["manylinux2014_aarch64",
                                                                                        "linux_aarch64"]
JETPACK_6_TAGS = {*cpython_tags((3, 10), platforms=JETPACK_6_PLATFORMS),
                  *compatible_tags((3, 10), platforms=JETPACK_6_PLATFORMS)}


def _reach_pypi() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make here")
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"PyPI cannot be reached from here ({exc}): the wheelhouse is made from it")


def _make(target: str, *settings: str, network: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """`make TARGET SETTINGS` in the clone; without `network`, in a network namespace of its own,
    as on a device on a plant network. This machine's pip settings (its own wheel folders) are
    left out, so that pip finds only what the wheelhouse holds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    command = ["make", "--no-print-directory", target, *settings]
    if not network:
        command = ["unshare", "--net", *command]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _wheelhouse(tmp_path: Path, *device: str) -> Path:
    wheels = tmp_path / "wheels"
    made = _make("wheelhouse", f"WHEELS={wheels}", f"WHEELHOUSE_TOOLS={tmp_path / 'tools'}", *device)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return wheels


def _wheels(folder: Path) -> dict[str, tuple[Path, object, frozenset]]:
    found = {}
    for path in folder.glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(path.name)
        assert name not in found, f"two wheels of {name} in the wheelhouse: {found[name][0].name}, {path.name}"
        found[name] = (path, version, tags)
    return found


def _requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        # the wheel's own, at its top (setuptools carries the ones of what it vendors, deeper)
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        text = archive.read(metadata).decode()
    return [Requirement(r) for r in email.parser.Parser().parsestr(text).get_all("Requires-Dist") or []]


def _device_requires() -> list[tuple[Requirement, str]]:
    """(requirement, extra it is read under): the runtime's with its mqtt and opcua extras (this
    project's installed metadata), the build system's (pyproject.toml), pip, and cuda-python."""
    runtime = [(Requirement(r), extra) for r in importlib.metadata.requires("edge-ad") for extra in ("", "mqtt", "opcua")]
    build = re.search(r"^\[build-system\]\nrequires = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    return runtime + [(Requirement(r.strip(' "')), "") for r in [*build.group(1).split(","), "pip", "cuda-python"]]


def test_the_wheelhouse_for_jetpack_6_holds_every_wheel_the_jetson_needs(tmp_path):
    """Resolved for Python 3.10 on aarch64 whatever Python makes it: a wheel needed only below
    3.11 (anyio's exceptiongroup) is left out by a plain `pip download` run on a newer Python, and
    the Jetson's offline install then fails. Checked here by following every wheel's own
    requirements under JetPack 6's markers, independently of how the Makefile resolved them."""
    _reach_pypi()
    wheels = _wheels(_wheelhouse(tmp_path))
    for name, (path, _, tags) in wheels.items():
        assert tags & JETPACK_6_TAGS, f"{path.name} cannot be installed on JetPack 6"
    needed, seen = _device_requires(), set()
    while needed:
        requirement, extra = needed.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(JETPACK_6 | {"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in wheels, f"{requirement} is needed on JetPack 6 and has no wheel in the wheelhouse"
        path, version, _ = wheels[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{path.name} does not satisfy {requirement}"
        for asked in [""] + sorted(requirement.extras):
            if (name, asked) not in seen:
                seen.add((name, asked))
                needed += [(r, asked) for r in _requires(path)]
    assert "exceptiongroup" in wheels and "cuda-python" in wheels  # what the test is about, and the Jetson's CUDA buffers
    pinned = (tmp_path / "wheels" / "requirements.txt").read_text()
    assert all(f"{name}==" in pinned for name in ("pip", "setuptools", "numpy", "onnxruntime"))


def test_runtime_installs_from_the_wheelhouse_with_no_network(tmp_path):
    """`make runtime` on a machine that reaches nothing: pip and this clone's build take every
    package from the wheelhouse. The wheelhouse is made for this machine's Python and processor."""
    _reach_pypi()
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare --net needs root)")
    python = sys.executable  # a Python with a venv module; the device's would be /usr/bin/python3
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[1]
    platform = f"{os.uname().machine}-manylinux_2_{glibc}"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = _wheelhouse(tmp_path, f"DEVICE_PYTHON={version}", f"DEVICE_PLATFORM={platform}")
    venv = tmp_path / "venv"
    ran = _make("runtime", f"WHEELS={wheels}", f"VENV={venv}", f"RUNTIME_PYTHON={python}", "RUNTIME_PACKAGES=",
                network=False)
    # make stops at the first command that fails, so the doctor's report means both installs went
    # through; the doctor itself may find problems on a test machine (no time server, no GStreamer).
    assert "--no-index" in ran.stdout, ran.stdout
    assert "ONNXRuntime" in ran.stdout, ran.stdout[-3000:] + ran.stderr[-3000:]
    imported = subprocess.run([venv / "bin" / "python", "-c", "import edge_ad.cli, asyncua, paho.mqtt, scipy, cv2"],
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr


def test_runtime_refuses_a_wheelhouse_made_for_another_device(tmp_path):
    """Wheels of another Python or processor would fail in pip with "no matching distribution"
    for the first pinned version: said before anything is installed, with what to do."""
    if shutil.which("make") is None:
        pytest.skip("no make here")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("numpy==2.2.6\n")
    (wheels / "device").write_text("3.9 riscv64\n")
    venv = tmp_path / "venv"
    ran = _make("runtime", f"WHEELS={wheels}", f"VENV={venv}", f"RUNTIME_PYTHON={sys.executable}", "RUNTIME_PACKAGES=")
    here = f"{sys.version_info.major}.{sys.version_info.minor} {os.uname().machine}"
    assert ran.returncode != 0
    assert f"{wheels}/ holds wheels for Python 3.9 riscv64, and this device runs Python {here}" in ran.stderr, ran.stderr
    assert "make wheelhouse DEVICE_PYTHON=" in ran.stderr and not venv.exists()


def test_runtime_says_which_system_packages_it_could_not_install_and_how(tmp_path):
    """At a line without internet apt-get fails with its own words (a fetch that failed); make
    then names the packages it was to install and the way to bring them, and installs nothing."""
    if shutil.which("make") is None or shutil.which("dpkg") is None:
        pytest.skip("no make or dpkg here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'E: Failed to fetch http://ports.ubuntu.com (no network)' >&2\n"
                                     "exit 100\n")
    (bin_dir / "apt-get").chmod(0o755)
    venv = tmp_path / "venv"
    ran = subprocess.run(["make", "--no-print-directory", "runtime", "RUNTIME_PACKAGES=edge-ad-no-such-package",
                          f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert ran.returncode != 0 and not venv.exists()
    assert ("could not install the system packages edge-ad-no-such-package (apt-get failed, above)" in ran.stderr
            and "bring them as .deb files (README 'On the device')" in ran.stderr), ran.stderr
