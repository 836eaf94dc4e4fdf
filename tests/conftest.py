"""Shared fixtures: real ELPV images in small folders and one tiny trained bundle."""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pymodbus.client import ModbusTcpClient

from calibration.site import calibrate_into, collect
from edge_ad.datasets import elpv_split
from edge_ad.detector import Detector

TINY_INPUT = 128
TINY_PROTOTYPES = 64
MODULE_TYPES = ("mono", "poly")  # ELPV's two module types: two product variants
UNWRITABLE = Path("/sys/kernel")  # a folder that takes no new file, for root too (sysfs)


def edge_ad(*args, check: bool = False) -> subprocess.CompletedProcess:
    """`edge-ad ARGS` run as a user runs it (python -m edge_ad), its output captured; with `check`,
    it must succeed."""
    result = subprocess.run([sys.executable, "-m", "edge_ad", *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result


# doctor's problems that depend on the machine the tests run on, not on what a test gave it: the
# kernel's UDP buffer cap (for a user other than root) and a clock no time server keeps.
MACHINE_PROBLEMS = ("net.core.rmem_max", "clock is not kept by a time server")


def doctor_problems(stdout: str) -> list[str]:
    """The `problem:` lines `edge-ad doctor` printed, but MACHINE_PROBLEMS."""
    return [line for line in stdout.splitlines()
            if line.startswith("problem:") and not any(said in line for said in MACHINE_PROBLEMS)]


@pytest.fixture(scope="session", autouse=True)
def edge_ad_cache(tmp_path_factory) -> Path:
    """Bundle archives unpack into a cache of the test session's own, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("edge-ad-cache")
        patch.setenv("EDGE_AD_CACHE", str(folder))
        yield folder


@pytest.fixture
def no_home(monkeypatch) -> str:
    """This process as a container's uid: HOME not set, no entry in /etc/passwd, none of the
    folders' own variables set. What edge-ad says of it (files.home_folder), as a pattern."""
    for name in ("HOME", "EDGE_AD_CACHE", "XDG_CACHE_HOME", "XDG_STATE_HOME", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)

    def unknown(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr("pwd.getpwuid", unknown)
    with pytest.raises(RuntimeError):
        Path.home()  # as Python has it for such a user
    return rf"this user \(uid {os.geteuid()}\) has no home folder \(HOME is not set, nor is the user in /etc/passwd\)"


@pytest.fixture(scope="session")
def elpv_samples():
    return elpv_split()


def _bgr(sample) -> np.ndarray:
    return cv2.cvtColor(sample.image(), cv2.COLOR_RGB2BGR)


def add_spot(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark elliptical spot with its mask: a crude but real-looking cell defect."""
    out = image.copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    h, w = mask.shape
    centre = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)))
    axes = (int(rng.integers(w // 12, w // 6)), int(rng.integers(h // 12, h // 6)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    out[mask > 0] = (out[mask > 0] * 0.2).astype(np.uint8)
    return out, mask


@pytest.fixture(scope="session")
def normal_folder(tmp_path_factory, elpv_samples) -> Path:
    """Twelve real ELPV normal training images as PNG files."""
    folder = tmp_path_factory.mktemp("normal")
    for sample in elpv_samples[0][:12]:
        cv2.imwrite(str(folder / f"{sample.name.split(':')[1]}.png"), _bgr(sample))
    return folder


@pytest.fixture(scope="session")
def mvtec_category(tmp_path_factory, elpv_samples) -> Path:
    """An MVTec-layout category from real ELPV normal images, with synthetic spots as defects."""
    root = tmp_path_factory.mktemp("mvtec") / "cell"
    train, test = elpv_samples
    normals = [s for s in test if s.label == 0]
    rng = np.random.default_rng(0)
    (root / "train" / "good").mkdir(parents=True)
    for sample in train[:12]:
        cv2.imwrite(str(root / "train" / "good" / f"{sample.name[5:]}.png"), _bgr(sample))
    for folder in ("test/good", "test/spot", "ground_truth/spot"):
        (root / folder).mkdir(parents=True)
    for i, sample in enumerate(normals[:4]):
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), _bgr(sample))
    for i, sample in enumerate(normals[4:8]):
        image, mask = add_spot(_bgr(sample), rng)
        cv2.imwrite(str(root / "test" / "spot" / f"{i:03d}.png"), image)
        cv2.imwrite(str(root / "ground_truth" / "spot" / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, mvtec_category) -> Path:
    """A real bundle trained on the tiny category's twelve normal images (128 px, 64 prototypes)."""
    from export.onnx_export import export_bundle
    from export.train import TrainConfig, train

    work = tmp_path_factory.mktemp("tiny")
    config = TrainConfig(data=str(mvtec_category), input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES)
    run = train(config, work / "run")
    return export_bundle(run, work / "bundle")


@pytest.fixture(scope="session")
def tiny_bridge_bundle(tmp_path_factory, mvtec_category) -> Path:
    """A real bridge bundle from the tiny category: teacher and student trained for a few iterations."""
    from export.onnx_export import export_bundle
    from export.train import TrainConfig, train

    work = tmp_path_factory.mktemp("tiny-bridge")
    config = TrainConfig(
        data=str(mvtec_category), model="bridge", input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES,
        steps=40, distill_steps=20, variants=1, distill_targets=16,
    )
    run = train(config, work / "run")
    return export_bundle(run, work / "bundle")


@pytest.fixture(scope="session")
def variant_bundles(tmp_path_factory, elpv_samples) -> dict[str, str]:
    """A tiny bundle per module type, each trained on twelve normal cells of that type only (four of
    them validation images: the spread of normal scores that comparing variants needs)."""
    from export.onnx_export import export_bundle
    from export.train import TrainConfig, train

    bundles = {}
    for module_type in MODULE_TYPES:
        folder = tmp_path_factory.mktemp(f"good-{module_type}")
        for sample in [s for s in elpv_samples[0] if s.group == module_type][:12]:
            cv2.imwrite(str(folder / f"{sample.name[5:]}.png"), _bgr(sample))
        config = TrainConfig(data=str(folder), input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES, val_fraction=0.34)
        run_folder = train(config, folder.parent / f"run-{module_type}")
        bundles[module_type] = str(export_bundle(run_folder, folder.parent / f"bundle-{module_type}"))
    return bundles


@pytest.fixture(scope="session")
def test_cells(elpv_samples) -> dict[str, list[np.ndarray]]:
    """Six normal test cells of each module type (BGR), none seen in training."""
    normal = [s for s in elpv_samples[1] if s.label == 0]
    return {t: [_bgr(s) for s in normal if s.group == t][:6] for t in MODULE_TYPES}


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def check_with_systemd(unit: Path) -> None:
    """systemd's own reading of `unit` (`systemd-analyze verify`) finds nothing wrong with it;
    where systemd-analyze is not installed, nothing is checked."""
    if SYSTEMD_ANALYZE is None:
        return
    checked = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and unit.name not in checked.stderr, checked.stderr


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on now (TCP, or UDP with socket.SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certificate(folder: Path, name: str, address: str | None = None, authority: tuple | None = None) -> tuple:
    """A certificate for CN=`name` (with `address` as its IP subject name), self-signed (CA:TRUE, as
    `openssl req -x509` makes them) or issued by `authority` (its certificate and key), written as
    NAME.pem and NAME.key; (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer, signer = (authority[0].subject, authority[1]) if authority else (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=authority is None, path_length=None),
                              critical=True))
    if address:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                                        critical=False)
    made = builder.sign(signer, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(made.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return made, key


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    """Whether `condition()` holds within `timeout_s`: what a server or a thread does a moment later."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def frames_within(source, count: int, seconds: float) -> list:
    """Up to `count` frames of a live source that reconnects on failure, within `seconds`; the
    source closed."""
    stop, frames = threading.Event(), []
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    for frame in source.frames(stop):
        frames.append(frame)
        if len(frames) == count:
            break
    timer.cancel()
    source.close()
    return frames


def modbus_client(port: int, within_s: float = 60.0) -> ModbusTcpClient:
    """A client of the server on `port`, once it listens (a run starts it after loading its bundles)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        if client.connect():
            return client
        time.sleep(0.2)
    raise AssertionError(f"nothing served Modbus on port {port} within {within_s:.0f} s")


def input_registers(client: ModbusTcpClient, start: int, count: int, function: int = 4) -> list[int]:
    read = client.read_input_registers if function == 4 else client.read_holding_registers
    response = read(start, count=count)
    assert not response.isError(), response
    return response.registers


def calibrated_copy(tiny_bundle: Path, normal_folder: Path, folder: Path) -> Path:
    """The tiny bundle with a site calibration on the normal cells at a rate twelve frames can show."""
    shutil.copytree(tiny_bundle, folder)
    detector = Detector.load(folder)
    kept = collect(detector, (cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))), 12)
    calibrate_into(folder, detector, kept[None], 0.3, 0.9, "cells")
    return folder


def full_disk(*args, **kwargs):
    """In place of a function that writes: what it raises when the disk has no room left."""
    raise OSError(errno.ENOSPC, "No space left on device")


def failing_once(function, fault: BaseException):
    """`function`, but its first call raises `fault`: a fault of edge-ad's own (or memory run out)
    in a thread's work, which the thread must not die of unsaid."""
    faults = iter([fault])

    def call(*args):
        raised = next(faults, None)
        if raised is not None:
            raise raised
        return function(*args)

    return call


SPOT_PATTERN = (False, True, False, True, True, False, True, True, True)  # which frames of `spotted_frames` have the spot


@pytest.fixture
def spotted_frames(normal_folder, tmp_path) -> Path:
    """A folder of nine frames of one real cell, a dark spot in those SPOT_PATTERN marks: runs of
    one, two and three anomalous frames, for alarms that need several in a row."""
    cell = cv2.imread(str(sorted(normal_folder.glob("*.png"))[0]))
    spotted = cell.copy()
    cv2.ellipse(spotted, (150, 150), (30, 40), 0, 0, 360, (20, 20, 20), -1)
    folder = tmp_path / "spotted-frames"
    folder.mkdir()
    for i, spot in enumerate(SPOT_PATTERN):
        cv2.imwrite(str(folder / f"{i}.png"), spotted if spot else cell)
    return folder


@pytest.fixture
def cpu_tensorrt(monkeypatch):
    """TensorRT's API over ONNX Runtime, and cuda-python's runtime over host memory, under
    edge-ad's own CudaPythonMemory (tests/cpu_tensorrt.py): for the build and the backend's own
    work (cache, profiles, buffers, steps on the device)."""
    import types

    import cpu_tensorrt

    from edge_ad import engines, tensorrt_backend
    from edge_ad.cuda_memory import CudaPythonMemory

    monkeypatch.setitem(sys.modules, "tensorrt", cpu_tensorrt.module())
    runtime = cpu_tensorrt.cuda_runtime()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    for name, module in (("cuda", types.ModuleType("cuda")), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, module)
    for module in (engines, tensorrt_backend):  # not pycuda, where a GPU machine has it: its memory is the GPU's
        monkeypatch.setattr(module, "cuda_memory", CudaPythonMemory)
    return cpu_tensorrt
