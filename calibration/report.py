"""calibration_report.png: the normal-score histogram with the threshold (and the known defects
when given), overlays of the highest-scoring normal frames, and the calibration's warnings, for a
person to check: the picture is what is opened later, or sent to a colleague, without the
terminal that calibrate printed the warnings on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402

from edge_ad.files import histogram_range, save_figure  # noqa: E402
from edge_ad.render import lay_out_above_notes, notes_text, overlay, show, title_of  # noqa: E402

from .site import Calibration, overlay_result  # noqa: E402
from .statistics import rounded_up  # noqa: E402



def write_calibration_report(calibration: Calibration, path: Path, record: dict | None = None) -> Path:
    """The report of `calibration`, titled with the source and time of its calibration.yaml
    content `record` when given."""
    threshold = calibration.threshold.value
    columns = max(len(calibration.top), 1)
    width = 3.2 * max(columns, 3)
    warnings, warnings_inches = notes_text("warnings:", calibration.warnings, width)
    figure = plt.figure(figsize=(width, 7.5 + warnings_inches))
    grid = figure.add_gridspec(2, columns, height_ratios=[1.1, 1])
    hist = figure.add_subplot(grid[0, :])
    scores = calibration.scores
    # One set of bins for the normal frames and the defects, spanning the threshold too: bins
    # over each set alone differ in width, and scores close together came in bars too thin to see.
    shown = np.concatenate([scores, [threshold]] + ([] if calibration.defect_scores is None else
                                                    [calibration.defect_scores]))
    bins = np.histogram_bin_edges(shown, bins=60, range=histogram_range(shown.min(), shown.max()))
    hist.hist(scores, bins=bins, color="tab:blue", alpha=0.75, label=f"normal frames ({scores.size})")
    if calibration.defect_scores is not None:
        hist.hist(calibration.defect_scores, bins=bins, color="tab:red", alpha=0.6,
                  label=f"known defects ({calibration.defect_scores.size})")
        hist.axvline(calibration.defects.f1_threshold, color="tab:orange", linestyle=":",
                     label=f"F1-best {calibration.defects.f1_threshold:.3f} (F1 {calibration.defects.f1:.2f})")
    hist.axvline(threshold, color="black", linestyle="--",
                 label=f"threshold {threshold:.3f} (false alarms <= {rounded_up(calibration.threshold.far_bound):g} "
                       f"at {calibration.confidence:.0%})")
    hist.set_yscale("log")
    # Counts as plain numbers (1, 2, 10), not as 2x10^0: matplotlib's mathtext for those looks for
    # TeX fonts it does not ship, and printed findfont lines wherever counts spanned under a decade.
    hist.yaxis.set_major_formatter(ticker.LogFormatter())
    hist.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))
    hist.set_xlabel("image score")
    hist.set_ylabel("frames")
    per_draw = calibration.threshold.per_draw
    count = len(calibration.warnings)
    # In this machine's time, with its zone's name, as the other pictures and the overlays' times are
    made = dt.datetime.fromisoformat(record["created"]).astimezone().strftime("%Y-%m-%d %H:%M %Z") if record else ""
    title = ((f"{record['source']}, {made}\n" if record else "")
             + f"calibration on {calibration.frames} normal frames"
             + (f" (about {calibration.frames / per_draw:.0f} independent)" if per_draw > 1 else "")
             + (f"  -  {count} warning{'s' if count > 1 else ''}, below" if count else ""))
    title_of(hist, title)
    hist.legend(fontsize=8)
    for column, (score, index, frame, normalised, name) in enumerate(calibration.top):
        picture = overlay(frame, overlay_result(score, threshold, frame, normalised, calibration.mask))
        show(figure.add_subplot(grid[1, column]), picture, f"normal #{column + 1}, {name or f'frame {index}'}: "
             f"{score:.3f}", fontsize=9)
    lay_out_above_notes(figure, warnings, warnings_inches)
    save_figure(figure, path, dpi=90)
    plt.close(figure)
    return path
