"""A bundle's check images, scored when it is loaded: graphs or engines that give wrong maps on
this device are refused before they judge a part.

The worst way an inspection can fail is silently: a TensorRT engine, a driver or a buffer copy
that hands back zeros, stale or scrambled maps scores every part as good. Export stores a few
validation images, each with a synthetic defect, and the maps its FP32 reference gives them
(`check.npz`); loading runs them through the graphs as they will run, on this device's backend,
and compares. The rule is loose on purpose: it tells broken from right, not FP32 from INT8 (INT8
on ONNX Runtime keeps a correlation of at least 0.82 with the FP32 maps of such images on ELPV;
`eval` measures what precision costs).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .errors import BundleError

CHECK_FILE = "check.npz"
MIN_CORRELATION = 0.5  # median over the check images, per branch: broken maps sit near 0
SCALE = (0.5, 2.0)  # mean of the maps against the reference's, per branch: a lost scale factor


class _Scores(Protocol):
    def grid_maps(self, inputs: np.ndarray) -> np.ndarray: ...


def maps_key(steps: int | None) -> str:
    """The reference maps' name in check.npz: per bridge K, as each K gives other maps."""
    return "grid_maps" if steps is None else f"grid_maps_k{steps}"


def check_maps(detector: _Scores, check: dict[str, np.ndarray], steps: int | None, where: str,
               remedy: str) -> None:
    """Refuse (BundleError) a detector whose maps of the check images are not the reference's,
    saying where (`where`) and what to do (`remedy`)."""
    if maps_key(steps) not in check:
        raise BundleError(f"{where}: the bundle's {CHECK_FILE} has no reference maps for {steps} bridge steps")
    expected = check[maps_key(steps)].astype(np.float64)
    # One image at a time: engines built with --max-batch 1 take no more.
    got = np.concatenate([detector.grid_maps(image[None]) for image in check["inputs"]]).astype(np.float64)
    problems = []
    for branch in range(expected.shape[1]):
        correlation = float(np.median([_correlation(e, g) for e, g in zip(expected[:, branch], got[:, branch])]))
        scale = float(got[:, branch].mean() / expected[:, branch].mean())
        if not correlation >= MIN_CORRELATION or not SCALE[0] <= scale <= SCALE[1]:  # NaN fails both
            problems.append(f"branch {branch}: correlation {correlation:.2f} (at least {MIN_CORRELATION}), "
                            f"scale {scale:.2f} ({SCALE[0]} to {SCALE[1]})")
    if problems:
        raise BundleError(f"{where}: the maps of the bundle's {len(expected)} check images are not those it was "
                          f"exported with ({'; '.join(problems)}): the graphs or engines give wrong results here; "
                          f"{remedy}")


def _correlation(expected: np.ndarray, got: np.ndarray) -> float:
    """Pearson correlation of two maps; 0 where either is constant (zeros from a broken engine)."""
    e, g = expected.ravel() - expected.mean(), got.ravel() - got.mean()
    denominator = np.sqrt((e * e).sum() * (g * g).sum())
    return float((e * g).sum() / denominator) if denominator > 0 else 0.0
