"""Synthetic defects: deterministic, confined to their mask, grey stays grey, colour works."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from export.defects import KINDS, perlin_noise, synthesize


@pytest.fixture(scope="module")
def cells(elpv_samples):
    return [cv2.resize(s.image(), (128, 128)) for s in elpv_samples[0][:4]]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_pixels_near_its_mask_only(cells, kind):
    for seed in range(5):
        out, mask, name = synthesize(cells[0], cells[1], np.random.default_rng(seed), kind)
        assert name == kind and out.shape == cells[0].shape and out.dtype == np.uint8
        assert mask.dtype == bool and 0 < mask.sum() < mask.size
        changed = np.abs(out.astype(int) - cells[0].astype(int)).max(axis=2) > 0
        near_mask = cv2.dilate(mask.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0  # soft edge: 4 px
        assert changed.any()
        assert not (changed & ~near_mask).any()
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # still grey


def test_deterministic_under_a_seed(cells):
    a = synthesize(cells[0], cells[1], np.random.default_rng(7))
    b = synthesize(cells[0], cells[1], np.random.default_rng(7))
    assert a[2] == b[2] and (a[0] == b[0]).all() and (a[1] == b[1]).all()


def test_only_the_kinds_asked_for_are_drawn(cells):
    drawn = {synthesize(cells[0], cells[1], np.random.default_rng(seed), kinds=("spot", "cutpaste"))[2]
             for seed in range(20)}
    assert drawn == {"spot", "cutpaste"}


def test_colour_images_get_colour_defects(cells):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    out, mask, _ = synthesize(colour, colour[::-1].copy(), rng, "perlin_texture")
    assert out.shape == colour.shape and mask.shape == (96, 128)
    assert not (out[..., 0] == out[..., 1]).all()


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise(64, 64, 4, np.random.default_rng(0))
    assert np.abs(noise).max() <= 1.01
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2  # no jumps between neighbouring pixels


def test_gallery_command(normal_folder, tmp_path):
    out = tmp_path / "gallery.png"
    result = subprocess.run([sys.executable, "-m", "edge_ad", "defects", "--data", str(normal_folder),
                             "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    picture = cv2.imread(str(out))
    assert picture.shape[0] == 5 * 192 and picture.shape[1] > 4 * 192  # one row per kind
