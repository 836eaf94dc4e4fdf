"""Synthetic defects made from normal images only, for training the bridge.

Five kinds, each returning the corrupted image and its mask: Perlin-noise regions filled with a
foreign texture (another normal image, rotated and recoloured) or with shifted content of the
same image, cut-paste patches, scratches, and spots. Deterministic for a given generator; grey
images (three equal channels, as `edge_ad.images.is_grey` takes them) stay grey.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_ad.images import is_grey

KINDS = ("perlin_texture", "perlin_shift", "cutpaste", "scratch", "spot")


def perlin_noise(height: int, width: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1] with `cells` lattice cells across."""
    grid = rng.uniform(0, 2 * np.pi, (cells + 1, cells + 1))
    gradients = np.stack([np.cos(grid), np.sin(grid)], axis=-1)
    ys, xs = np.meshgrid(np.linspace(0, cells, height, endpoint=False),
                         np.linspace(0, cells, width, endpoint=False), indexing="ij")
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = ys - y0, xs - x0

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    fade_y, fade_x = (6 * fy**5 - 15 * fy**4 + 10 * fy**3), (6 * fx**5 - 15 * fx**4 + 10 * fx**3)
    top = corner(0, 0) + fade_x * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + fade_x * (corner(1, 1) - corner(1, 0))
    return (top + fade_y * (bottom - top)) * np.sqrt(2)


def perlin_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A blobby region covering roughly 1-25 % of the image (never empty)."""
    for _ in range(10):
        noise = perlin_noise(height, width, int(rng.choice([2, 4, 8])), rng)
        mask = noise > rng.uniform(0.35, 0.6)
        if 0.005 * mask.size < mask.sum() < 0.3 * mask.size:
            return mask
    return _ellipse_mask(height, width, rng)


def _ellipse_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    centre = (int(rng.integers(width // 8, 7 * width // 8)), int(rng.integers(height // 8, 7 * height // 8)))
    axes = (int(rng.integers(max(2, width // 40), width // 8)), int(rng.integers(max(2, height // 40), height // 8)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def _recolour(image: np.ndarray, rng: np.random.Generator, grey: bool) -> np.ndarray:
    gain = rng.uniform(0.5, 1.5, 1 if grey else 3)
    offset = rng.uniform(-60, 60, 1 if grey else 3)
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def _blend(image: np.ndarray, fill: np.ndarray, mask: np.ndarray, opacity: float) -> np.ndarray:
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)[..., None] * opacity
    return np.clip(image * (1 - soft) + fill * soft, 0, 255).astype(np.uint8)


def _perlin_texture(image, other, rng, grey):
    mask = perlin_mask(*image.shape[:2], rng)
    texture = np.ascontiguousarray(np.rot90(other, int(rng.integers(4))))
    texture = cv2.resize(texture, image.shape[1::-1])
    return _blend(image, _recolour(texture, rng, grey), mask, rng.uniform(0.5, 1.0)), mask


def _perlin_shift(image, other, rng, grey):
    mask = perlin_mask(*image.shape[:2], rng)
    h, w = image.shape[:2]
    shifted = np.roll(image, (int(rng.integers(h // 8, h // 2)), int(rng.integers(w // 8, w // 2))), axis=(0, 1))
    return _blend(image, shifted, mask, 1.0), mask


def _cutpaste(image, other, rng, grey):
    h, w = image.shape[:2]
    ph, pw = int(h * rng.uniform(0.05, 0.25)), int(w * rng.uniform(0.05, 0.25))
    sy, sx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    ty, tx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    patch = _recolour(image[sy : sy + ph, sx : sx + pw], rng, grey)
    out = image.copy()
    out[ty : ty + ph, tx : tx + pw] = patch
    mask = np.zeros((h, w), bool)
    mask[ty : ty + ph, tx : tx + pw] = True
    return out, mask


def _scratch(image, other, rng, grey):
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    thickness = max(1, int(round(min(h, w) * rng.uniform(0.004, 0.015))))
    for _ in range(int(rng.integers(1, 4))):
        points = [(int(rng.integers(w)), int(rng.integers(h)))]
        for _ in range(int(rng.integers(2, 5))):
            step = rng.normal(0, min(h, w) / 6, 2)
            points.append((int(np.clip(points[-1][0] + step[0], 0, w - 1)), int(np.clip(points[-1][1] + step[1], 0, h - 1))))
        cv2.polylines(mask, [np.array(points, np.int32)], False, 1, thickness)
    value = rng.uniform(0, 60) if rng.random() < 0.5 else rng.uniform(190, 255)
    fill = np.full_like(image, int(value))
    return _blend(image, fill, mask.astype(bool), rng.uniform(0.6, 1.0)), mask.astype(bool)


def _spot(image, other, rng, grey):
    mask = _ellipse_mask(*image.shape[:2], rng)
    factor = rng.uniform(0.1, 0.5) if rng.random() < 0.7 else rng.uniform(1.5, 2.5)
    fill = np.clip(image.astype(np.float32) * factor, 0, 255)
    return _blend(image, fill, mask, 1.0), mask


_MAKERS = {
    "perlin_texture": _perlin_texture,
    "perlin_shift": _perlin_shift,
    "cutpaste": _cutpaste,
    "scratch": _scratch,
    "spot": _spot,
}


def synthesize(
    image: np.ndarray,
    other: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(corrupted uint8 RGB image, bool mask, kind) for one normal RGB image.

    `other` is a second normal image, used as foreign texture. Without `kind`, one of `kinds`
    is drawn from `rng`.
    """
    kind = kind or str(rng.choice(kinds))
    grey = is_grey(image)
    corrupted, mask = _MAKERS[kind](image, other, rng, grey)
    if grey:
        corrupted = np.repeat(corrupted[..., :1], 3, axis=2)
    return corrupted, mask, kind


def gallery(images: list[np.ndarray], seed: int, size: int = 192) -> np.ndarray:
    """A picture with one row per defect kind: corrupted images with their mask outlined in red (BGR)."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind in KINDS:
        tiles = []
        for column in range(4):
            base = cv2.resize(images[int(rng.integers(len(images)))], (size, size))
            other = cv2.resize(images[int(rng.integers(len(images)))], (size, size))
            corrupted, mask, _ = synthesize(base, other, rng, kind)
            tile = cv2.cvtColor(corrupted, cv2.COLOR_RGB2BGR)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, (0, 0, 255), 1)
            tiles.append(tile)
        label = np.full((size, 120, 3), 255, np.uint8)
        cv2.putText(label, kind, (4, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        rows.append(np.hstack([label, *tiles]))
    return np.vstack(rows)
