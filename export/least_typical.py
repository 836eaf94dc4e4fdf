"""The training pictures least like the others, for a person to look at before trusting the model.

A defective part among the good ones is learnt as a good one: the prototypes are a coreset of
every training patch, and the k-center greedy pass picks the most unusual patches first, a
defect's among them, and the per-position whitening is fitted to it too. So each picture is
scored here as a new part would be: by a model (statistics, whitening, prototypes) fitted on the
other half of the pictures, the halves drawn at random. On ELPV, 10 cracked cells hidden among
400 good ones put 3 and 5 of them (two draws of the cells) among the 8 listed; scored by the
model of all of them, leaving out only their own prototypes, 1 and 3.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from .backbone import FeatureEncoder, fit_encoder
from .batching import in_batches
from .prototype import PrototypeHead, greedy_coreset

MIN_PICTURES = 20  # each half fits a model of its own: fewer than 10 pictures are too few to fit one on
PER = 5  # one training picture in this many is listed, the least typical first (a look at a few is cheap)
SHOWN = 8  # at most, so that the picture shows each large enough to see its defect
PICTURE = "least_typical.png"


def other_half_maps(raw: torch.Tensor, new_encoder: Callable[[], FeatureEncoder], whitening_eps: float | None,
                    prototypes: int, seed: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Each picture's map (N, h, w) of its patches' distances to the nearest prototype of a model
    fitted, as training fits one, on the other half of the pictures: `raw` is their raw features
    (N, C, h, w), `new_encoder` makes an encoder to fit, `whitening_eps` that of train's position
    whitening (None: none), `prototypes` their count."""
    halves = [np.sort(half) for half in np.array_split(np.random.default_rng(seed).permutation(len(raw)), 2)]
    maps = np.empty((len(raw), *raw.shape[2:]), np.float32)
    for half, (fitted, scored) in enumerate((halves, halves[::-1]), 1):
        encoder = new_encoder()
        features = fit_encoder(encoder, raw[fitted], whitening_eps, batch_size, device)
        head = PrototypeHead(greedy_coreset(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), prototypes,
                                            seed, f"least typical: half {half} of 2")).to(device)
        del features
        maps[scored] = in_batches(lambda x: head(encoder.standardise(x)), raw[scored], batch_size,
                                  device=device)[:, 0].numpy()
    return maps


def least_typical(scores: np.ndarray) -> list[int]:
    """The indices of the least typical pictures by their scores: one in PER, at most SHOWN."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[: min(len(scores) // PER, SHOWN)]]


def shown_names(names: list[str]) -> list[str]:
    """The training pictures' names as the note and the picture give them: within the folder they
    all lie in, with at least the folder each is in (good/005.png), which tells apart the 005.png
    of two folders trained on together, also two named alike (line1/good/, line2/good/: before,
    both good/005.png); elpv:0409, in no folder, as it is."""
    folders = [os.path.dirname(os.path.abspath(name)) for name in names if Path(name).parent.name]
    common = os.path.commonpath(folders) if folders else ""

    def shown(name: str) -> str:
        path = Path(name)
        if not path.parent.name:
            return name
        within = os.path.relpath(os.path.abspath(name), common)
        return within if os.sep in within else f"{path.parent.name}/{path.name}"

    return [shown(name) for name in names]


def write_picture(path: Path, inputs: np.ndarray, maps: np.ndarray, picked: list[int], names: list[str]) -> Path:
    """The `picked` model inputs (RGB) with their distance maps blended in (inferno: from the
    median distance of all the pictures' patches, black, to the largest distance shown), each
    titled with its rank, score and name (`names`: shown_names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge_ad.files import save_figure
    from edge_ad.render import show

    floor = float(np.median(maps))
    top = max(float(maps[picked].max()) - floor, 1e-6)
    columns = min(len(picked), 4)
    rows = -(-len(picked) // columns)
    aspect = inputs.shape[1] / inputs.shape[2]  # each panel 3 inches wide, as high as the input is, and its title
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, (3 * aspect + 0.6) * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(picked) :]:
        ax.axis("off")
    for rank, (ax, index) in enumerate(zip(axes.flat, picked), 1):
        image = np.ascontiguousarray(inputs[index][..., ::-1])
        shown = cv2.resize(maps[index], (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap(np.clip((shown - floor) / top * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        show(ax, cv2.addWeighted(image, 0.55, heat, 0.45, 0.0),
             f"{rank}. {float(maps[index].max()):.2f}\n{names[index]}")
    figure.suptitle("the training pictures least like the others: is each a good part?", fontsize=11)
    for _ in range(2):  # one pass left a wrapped title over the pictures of the row above it
        figure.tight_layout()
    save_figure(figure, path, dpi=100)  # a full disk leaves no half picture
    plt.close(figure)
    return path
