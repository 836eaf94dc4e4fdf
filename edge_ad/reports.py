"""JSON reports (metrics, benchmarks) written where the user asked."""

from __future__ import annotations

import json
from pathlib import Path

from .files import write_atomic


def write_report(report: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
