"""The cameras this device itself sees, for `edge-ad cameras`, each with the --input that opens it:
USB and CSI cameras (V4L2: /sys/class/video4linux and udev's /dev/v4l/by-id), and the GigE Vision
and USB3 Vision cameras Aravis's `arv-tool-0.8` lists (the IP cameras are edge_ad.onvif's)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ARV_TOOL = "arv-tool-0.8"  # apt-get install aravis-tools-cli
LISTED = re.compile(r"(\S+) \((.*)\)")  # "Basler-acA1920-40gc-23456789 (192.168.10.20)"


def genicam_cameras(timeout_s: float) -> list[tuple[str, str]] | None:
    """(the --input that opens it, what it is) of each camera Aravis finds, or None when
    arv-tool-0.8 is not installed."""
    tool = shutil.which(ARV_TOOL)
    if tool is None:
        return None
    try:
        listed = subprocess.run([tool], capture_output=True, text=True, timeout=timeout_s + 10).stdout
    except subprocess.TimeoutExpired:
        return []
    return [(f"genicam://{match[1]}", f"GigE Vision or USB3 Vision camera at {match[2]}")
            for match in map(LISTED.fullmatch, listed.splitlines()) if match]


def v4l2_cameras(root: Path = Path("/")) -> list[tuple[str, str]]:
    """(the --input that opens it, what it is) of each V4L2 camera: a Jetson's CSI cameras
    (nodes named "vi-output, SENSOR") as csi://0, 1... in their order, and each USB camera by its
    udev name for good (/dev/v4l/by-id/...; /dev/videoN without one). A USB camera has a second
    node, for metadata, which captures nothing (index 1): left out."""
    stable = {}  # "video0" -> its /dev/v4l/by-id/ link
    for link in sorted((root / "dev/v4l/by-id").glob("*")):
        stable.setdefault(Path(os.path.realpath(link)).name, f"/{link.relative_to(root)}")
    nodes = sorted((root / "sys/class/video4linux").glob("video*"),
                   key=lambda node: int(node.name[5:]) if node.name[5:].isdigit() else 1 << 30)
    listed, csi = [], 0
    for node in nodes:
        name = _read(node / "name")
        if name.startswith("vi-output"):
            listed.append((f"csi://{csi}", f"CSI camera {name.partition(',')[2].strip() or name}"))
            csi += 1
        elif _read(node / "index") in ("", "0"):
            listed.append((stable.get(node.name, f"/dev/{node.name}"), f"USB camera {name or node.name}"))
    return listed


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
