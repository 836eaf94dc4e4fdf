"""JSON reports (metrics, benchmarks) written where the user asked."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
