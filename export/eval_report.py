"""eval_report.png: what `edge-ad eval` measured, for a person to look at. The score histograms
of the normal and anomalous test images with the thresholds, the ROC curve, and heat-map
overlays of the normal images that score highest (the false alarms, if any) and of the
anomalous images that score lowest (the misses). And the table of every test image's score and
verdict, for a spreadsheet."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edge_ad.files import histogram_range, save_figure, write_atomic  # noqa: E402
from edge_ad.metrics import roc_curve  # noqa: E402
from edge_ad.render import show  # noqa: E402

SHOWN = 4  # overlays per row
LEGEND_HEADROOM = 1.6  # the histogram's height over its tallest bar: room for a legend of four lines
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet cell starting so is read as a formula


def write_eval_scores(rows: list[dict], path: Path) -> Path:
    """A CSV file of one line per test image, its columns the keys of `rows` (image, group, truth,
    score, threshold, verdict, and variant with one bundle per variant): the parts missed and the
    good parts flagged, by name, beside their scores. A name a spreadsheet would take for a
    formula (a folder named `=HYPERLINK(...)` on a stick of pictures) is written after a `'`,
    which makes it text there (OWASP's CSV injection)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value
                      for key, value in row.items()} for row in rows)
    write_atomic(path, text.getvalue().encode())
    return path


def worst_cases(labels: np.ndarray, scores: np.ndarray, count: int = SHOWN) -> tuple[list[int], list[int]]:
    """Indices of the `count` highest-scoring normal and the `count` lowest-scoring anomalous
    samples, worst first."""
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    highest = normal[np.argsort(-scores[normal], kind="stable")][:count]
    lowest = anomalous[np.argsort(scores[anomalous], kind="stable")][:count]
    return highest.tolist(), lowest.tolist()


def write_eval_report(
    report: dict,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    overlays: tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]],
    path: Path,
) -> Path:
    """The picture of an evaluation: `report` is evaluate()'s, `scores` on the scale its AUROC
    was measured on, `threshold` the bundle's on that scale (None where there is none, as with
    one bundle per variant), `overlays` (title, BGR picture) of the worst normal and anomalous
    images."""
    figure = plt.figure(figsize=(13, 10.5))
    grid = figure.add_gridspec(3, 2 * SHOWN, height_ratios=[1.2, 1, 1])
    hist = figure.add_subplot(grid[0, :SHOWN])
    # Bins over the threshold too: one far from the scores (a bundle calibrated on other frames)
    # would leave them in bins too thin to see.
    shown = np.r_[scores, [] if threshold is None else [threshold]]
    bins = np.histogram_bin_edges(shown, bins=60, range=histogram_range(shown.min(), shown.max()))
    tallest = 0
    for label, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        counts, _, _ = hist.hist(scores[labels == label], bins=bins, color=colour, alpha=0.6,
                                 label=f"{name} ({int((labels == label).sum())})")
        tallest = max(tallest, counts.max(initial=0))
    if threshold is not None:
        flagged = report["normal_images_flagged_by_bundle_threshold"]
        missed = report["anomalous_images_missed_by_bundle_threshold"]
        hist.axvline(threshold, color="black", linestyle="--",
                     label=f"bundle threshold {threshold:.3f} ({flagged} normal flagged, {missed} anomalous missed)")
    if "image_f1_threshold" in report:  # a test split of both kinds
        hist.axvline(report["image_f1_threshold"], color="tab:orange", linestyle=":",
                     label=f"F1-best {report['image_f1_threshold']:.3f} (F1 {report['image_f1_max']:.3f})")
    hist.set_xlabel("image score" + (" (relative to the variant's normal images)" if threshold is None else ""))
    hist.set_ylabel("test images")
    hist.set_title(f"{report['data']}: {report['test_images']} test images")
    # Its legend, as wide as the panel, in a band left empty above the tallest bar: on the bars it
    # hid the peak of the normal scores and the first anomalous ones.
    hist.set_ylim(0, max(tallest, 1) * LEGEND_HEADROOM)
    hist.legend(fontsize=8, loc="upper left")
    roc = figure.add_subplot(grid[0, SHOWN:])
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set_xlabel("false-alarm rate (normal images flagged)")
    roc.set_ylabel("detection rate (anomalous images flagged)")
    roc.set_title("ROC")
    if "image_auroc" in report:
        fpr, tpr = roc_curve(labels, scores)
        groups = ", ".join(f"{g} {v:.4f}" for g, v in report["image_auroc_per_group"].items())
        label = f"AUROC {report['image_auroc']:.4f}" + (f"\n({groups})" if groups else "")
        roc.plot(fpr, tpr, color="tab:red", label=label)
        roc.legend(fontsize=8, loc="lower right")
    else:
        roc.text(0.5, 0.5, "no ROC: the test images are all of one kind", ha="center", va="center")
    for row, (kind, pictures) in enumerate(zip(("highest-scoring normal", "lowest-scoring anomalous"), overlays), 1):
        for column, (title, picture) in enumerate(pictures):
            show(figure.add_subplot(grid[row, 2 * column : 2 * column + 2]), picture, f"{kind} #{column + 1}\n{title}")
    figure.tight_layout()
    save_figure(figure, path, dpi=80)
    plt.close(figure)
    return path
