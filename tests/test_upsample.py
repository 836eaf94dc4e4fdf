"""Upsampling and smoothing of grid maps as two matrix products: the values of OpenCV's calls."""

import cv2
import numpy as np
import pytest

from edge_ad.upsample import upsample_maps


@pytest.mark.parametrize(
    "grid, size, sigma",
    [((32, 32), (256, 256), 4.0), ((30, 40), (240, 320), 4.0), ((7, 9), (100, 61), 2.5), ((16, 16), (128, 128), 0.0)],
)
def test_upsample_maps_equals_opencv_resize_then_blur(grid, size, sigma):
    grids = np.random.default_rng(0).random((3, 2, *grid)).astype(np.float32) * 10
    grids[0, 1, 3, 4] = 50.0  # a peak near the border
    expected = np.empty((3, 2, *size), np.float32)
    for i in range(3):
        for b in range(2):
            up = cv2.resize(grids[i, b], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            expected[i, b] = cv2.GaussianBlur(up, (0, 0), sigma) if sigma > 0 else up
    out = upsample_maps(grids, size, sigma)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
