"""eval_report.png: what `edge-ad eval` measured, for a person to look at. The score histograms
of the normal and anomalous test images with the thresholds, the ROC curve, and heat-map
overlays of the normal images that score highest (the false alarms, if any) and of the
anomalous images that score lowest (the misses), and under them the notes eval prints (test
images the model was trained on, and the like: what the picture's numbers say little of). And
the table of every test image's score and verdict, for a spreadsheet."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edge_ad.datasets import NOT_READ  # noqa: E402
from edge_ad.files import histogram_range, save_figure, write_atomic  # noqa: E402
from edge_ad.images import DARK_CAUSE, counts_text  # noqa: E402
from edge_ad.metrics import roc_curve  # noqa: E402
from edge_ad.render import lay_out_above_notes, notes_text, show, title_of  # noqa: E402

SHOWN = 4  # overlays per row
LEGEND_HEADROOM = 1.6  # the histogram's height over its tallest bar: room for a legend of four lines
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet cell starting so is read as a formula


def eval_notes(report: dict) -> list[str]:
    """What a person should know before taking `report`'s numbers (evaluate()'s) as those of new
    parts: `eval` prints each as a note, and its picture lists them under the overlays, as the
    picture is what is shown to others, without the terminal."""
    notes = []
    if "image_auroc" not in report:  # a test split of one kind
        normal = report["normal_images"] > 0
        kind, did, count = ("normal", "flags", report["normal_images_flagged_by_bundle_threshold"]) if normal else \
            ("anomalous", "passes", report["anomalous_images_missed_by_bundle_threshold"])
        judged = "the bundle's threshold" if "bundle_threshold" in report else "their variants' thresholds"
        notes.append(f"the {report['test_images']} test images are all {kind}: no AUROC or F1, which compare the "
                     f"scores of both kinds; {judged} {did} {count} of them")
    both = report.get("test_images_of_both_kinds", [])
    if both:
        pairs = ", ".join(f"{normal} = {anomalous}" for normal, anomalous in both[:3]) + ", ..." * (len(both) > 3)
        notes.append(f"{len(both)} picture(s) are both a normal and an anomalous test image ({pairs}): one of each "
                     "pair is sorted into the wrong folder, and counts against the AUROC whatever the model scores it")
    unlike = report.get("test_images_unlike_training")
    if unlike:
        images = unlike["images"]
        notes.append(f"{len(images)} test image(s) look unlike the training pictures, as {images[0]}, where run "
                     f"would say: {unlike['first']}")
    dark = report.get("test_images_dark")
    if dark:
        notes.append(f"the brightest pixel of all {dark['images']} test images is {dark['brightest']} of 255. "
                     f"{DARK_CAUSE}; the line camera's 8-bit frames are far brighter, and a model trained on them "
                     "finds such images anomalous: the AUROC and what the threshold flags say little of the line. "
                     "Evaluate on 8-bit pictures (edge-ad record saves them) or shift such files up to 16 bits first "
                     "(README: 16-bit pictures)")
    trained = report.get("test_images_the_model_was_trained_on")
    if trained:
        notes.append(f"{trained['normal']} normal and {trained['anomalous']} anomalous test image(s) are pictures "
                     "the model was trained on (train's --data, or its --defects): they score as no new part would, "
                     "so the AUROC and what the threshold flags and passes of them say little of new parts; evaluate "
                     "on pictures kept out of training")
    seen = report.get("test_images_the_calibration_was_made_on")
    if seen:
        notes.append(f"{seen['normal']} normal and {seen['anomalous']} anomalous test image(s) are pictures the "
                     "calibration in use was made on (its frames, or its --defects): the threshold was set on them, "
                     "so what it flags and passes of them says little of new parts; evaluate on pictures it has not "
                     "seen")
    left_out = report.get("unreadable_images_left_out", [])
    if left_out:
        notes.append(f"{len(left_out)} unreadable test image(s) left out (--skip-bad): {'; '.join(left_out[:3])}"
                     f"{'; ...' if len(left_out) > 3 else ''}")
    unread = report.get("pictures_not_read", {})
    if unread:
        notes.append(f"pictures not read, as they lie {NOT_READ}: {counts_text(unread)}")
    beside = report.get("masks_beside_their_images", [])
    if beside:
        notes.append(f"{len(beside)} picture(s) named as the mask of a test image beside them ({beside[0]}) are read "
                     "as its mask, not as test images")
    for folder, masks in report.get("masks_of_no_test_image", {}).items():
        notes.append(f"{folder}: {masks['masks']} mask(s) named as none of the test images of {masks['images']} (as "
                     f"{masks['first']}), so not read: a mask is named as its image (000.png), as it with _mask, _GT or "
                     "_label (000_mask.png), or is a folder of its name")
    labelled = report.get("test_images_labelled_by_their_masks")
    if labelled and "wildcard" in labelled:
        notes.append(f"the test images {labelled['wildcard']} matches are labelled by their masks (beside them, or "
                     f"in a label folder): {labelled['anomalous']} anomalous (a mask that marks a defect) and "
                     f"{labelled['normal']} normal")
    elif labelled:
        count = labelled["normal"] + labelled["anomalous"]
        where = f"the masks of its defective parts in {labels}" if (labels := labelled.get("label_folder")) else \
            "their masks beside them"
        notes.append(f"the {count} test images in {labelled['folder']} lie outside a class folder, with {where}: "
                     f"labelled by those masks, {labelled['anomalous']} anomalous (a mask that marks a defect) and "
                     f"{labelled['normal']} normal")
    if without := report.get("pictures_without_mask"):
        notes.append(f"{without['count']} picture(s) the wildcard matches ({without['first']}) have no mask, beside "
                     "them or in a label folder, to say which part they show: not read")
    formats = report.get("pictures_in_formats_not_read", {})
    if formats:
        notes.append(f"left out: {'; '.join(f'{folder}: {held}' for folder, held in formats.items())}; save such "
                     "pictures as PNG or JPEG to evaluate on them")
    for key, what in (
        ("anomalous_images_without_mask",
         "have no ground-truth mask (ground_truth/<defect>/<image>_mask.png or <image>.png)"),
        ("anomalous_images_with_empty_mask",
         "have a ground-truth mask that marks no pixel at the bundle's input size"),
    ):
        names = report.get(key, [])
        if names:
            notes.append(f"{len(names)} anomalous image(s) {what} and are left out of the pixel metrics: "
                         f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
    return notes


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
    images. Under them, eval_notes' notes."""
    said = eval_notes(report)
    notes, notes_inches = notes_text("notes:", said, 13)
    figure = plt.figure(figsize=(13, 10.5 + notes_inches))
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
    title = f"{report['data']}: {report['test_images']} test images" + \
        (f"  -  {len(said)} note{'s' if len(said) > 1 else ''}, below" if said else "")
    title_of(hist, title)
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
        for text in roc.legend(fontsize=8, loc="lower right").get_texts():
            text.set_parse_math(False)  # the defect folders' names, as typed (render.lay_out_above_notes)
    else:
        roc.text(0.5, 0.5, "no ROC: the test images are all of one kind", ha="center", va="center")
    for row, (kind, pictures) in enumerate(zip(("highest-scoring normal", "lowest-scoring anomalous"), overlays), 1):
        for column, (title, picture) in enumerate(pictures):
            show(figure.add_subplot(grid[row, 2 * column : 2 * column + 2]), picture, f"{kind} #{column + 1}\n{title}")
    lay_out_above_notes(figure, notes, notes_inches)
    save_figure(figure, path, dpi=80)
    plt.close(figure)
    return path
