"""The GigE Vision and USB3 Vision cameras this device sees, as Aravis's `arv-tool-0.8` lists them,
for `edge-ad cameras`: each as `genicam://ID`, the id aravissrc's camera-name takes."""

from __future__ import annotations

import re
import shutil
import subprocess

ARV_TOOL = "arv-tool-0.8"  # apt-get install aravis-tools-cli
LISTED = re.compile(r"(\S+) \((.*)\)")  # "Basler-acA1920-40gc-23456789 (192.168.10.20)"


def genicam_cameras(timeout_s: float) -> list[tuple[str, str]] | None:
    """(id, address) of each camera Aravis finds, or None when arv-tool-0.8 is not installed."""
    tool = shutil.which(ARV_TOOL)
    if tool is None:
        return None
    try:
        listed = subprocess.run([tool], capture_output=True, text=True, timeout=timeout_s + 10).stdout
    except subprocess.TimeoutExpired:
        return []
    return [(match[1], match[2]) for match in map(LISTED.fullmatch, listed.splitlines()) if match]
