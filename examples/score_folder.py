"""Score every image of a folder: a CSV of scores and an overlay picture per anomalous image.

    python examples/score_folder.py BUNDLE FOLDER OUT
"""

import csv
import sys
from pathlib import Path

import cv2

from edge_ad import Detector
from edge_ad.render import overlay
from edge_ad.sources import open_source

if len(sys.argv) != 4:
    sys.exit(__doc__)
bundle, folder, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
detector = Detector.load(bundle)
with open(out / "scores.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["image", "score", "anomaly"])
    for frame in open_source(folder):
        result = detector(frame.image)
        writer.writerow([frame.name, f"{result.score:.6f}", int(result.is_anomaly)])
        if result.is_anomaly:
            cv2.imwrite(str(out / f"{Path(frame.name).stem}_overlay.jpg"), overlay(frame.image, result))
print(f"scores written to {out / 'scores.csv'}")
