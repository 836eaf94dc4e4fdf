"""The backbones are the real ImageNet EfficientNet-Lite0 and Lite1: they recognise known photographs."""

import shutil

import cv2
import numpy as np
import pytest
import torch
from skimage import data

import export.backbone
from edge_ad.bundle import BACKBONES
from edge_ad.errors import EdgeAdError
from export.backbone import (
    BACKBONE_SPECS,
    DEFAULT_BACKBONE,
    LITE_MEAN,
    LITE_STD,
    WHITENING_EPS,
    FeatureEncoder,
    load_backbone,
    position_whitening,
    verify_weights,
    weights_path,
)


def _classify(model, image_rgb: np.ndarray) -> int:
    x = cv2.resize(image_rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (x - LITE_MEAN) / LITE_STD
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(2, 0, 1)[None])
    return int(logits.argmax())


def test_the_command_line_offers_every_backbone_export_can_build():
    assert tuple(BACKBONE_SPECS) == BACKBONES and DEFAULT_BACKBONE == "efficientnet-lite0"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pretrained_weights_classify_known_images(backbone):
    model = load_backbone(backbone)
    assert 281 <= _classify(model, data.chelsea()) <= 285  # ImageNet cat classes
    assert _classify(model, data.coffee()) == 967  # espresso


def test_tampered_weight_file_is_refused(tmp_path):
    copy = tmp_path / "lite0.pth"
    shutil.copy(weights_path(), copy)
    with open(copy, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00" * 16)
    with pytest.raises(EdgeAdError, match="not the efficientnet-lite0 checkpoint"):
        verify_weights(copy)
    # Each backbone has its own checkpoint: Lite1's file is not taken for Lite0.
    with pytest.raises(EdgeAdError, match="not the efficientnet-lite0 checkpoint"):
        verify_weights(weights_path("efficientnet-lite1"), "efficientnet-lite0")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_feature_encoder_grid_and_standardisation(backbone):
    encoder = FeatureEncoder((128, 96), backbone)
    images = torch.randint(0, 256, (2, 128, 96, 3), dtype=torch.uint8)
    raw = encoder.raw_features(images)
    assert raw.shape == (2, 152, 16, 12)
    encoder.set_statistics(raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)))
    standardised = encoder(images)
    assert torch.allclose(standardised.mean(dim=(0, 2, 3)), torch.zeros(152), atol=1e-4)
    assert torch.allclose(standardised.std(dim=(0, 2, 3)), torch.ones(152), atol=1e-3)


@pytest.mark.parametrize("positions_at_once", [64, 3])  # all 4 positions at once, or 3 then 1
def test_position_whitening_gives_mahalanobis_distance_per_position(positions_at_once, monkeypatch):
    monkeypatch.setattr(export.backbone, "POSITIONS_AT_ONCE", positions_at_once)
    rng = np.random.default_rng(0)
    # 200 samples of 3 channels on a 2x2 grid, each position with its own mean and covariance.
    mixing = rng.normal(size=(4, 3, 3))
    offsets = rng.normal(size=(4, 3)) * 5
    samples = np.einsum("lcd,nld->nlc", mixing, rng.normal(size=(200, 4, 3))) + offsets
    features = torch.from_numpy(samples.transpose(0, 2, 1).reshape(200, 3, 2, 2)).float()
    mean, transform = position_whitening(features)
    query = rng.normal(size=3) * 3
    for position in range(4):
        covariance = np.cov(samples[:, position].T) + WHITENING_EPS * np.eye(3)
        delta = query - samples[:, position].mean(0)
        expected = np.sqrt(delta @ np.linalg.solve(covariance, delta))
        z = (torch.from_numpy(query).float() - mean[position]) @ transform[position]
        assert float(z.norm()) == pytest.approx(expected, rel=1e-4)


def test_whitened_encoder_output_has_unit_covariance_and_checks_the_grid():
    encoder = FeatureEncoder((64, 64))
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8))
    raw = encoder.raw_features(images)
    encoder.set_statistics(raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)))
    encoder.set_whitening(*position_whitening(encoder.standardise(raw)))
    whitened = encoder(images)
    assert whitened.shape == raw.shape
    assert torch.allclose(whitened.mean(0), torch.zeros_like(whitened[0]), atol=1e-3)
    # 40 images in 152 dimensions: the covariance is rank 39 plus the regulariser, so the
    # whitened variance sums to at most 39 per position, never more.
    total_variance = whitened.var(0).sum(0)
    assert float(total_variance.max()) <= 39.5
    with pytest.raises(ValueError, match=r"whitening fitted on 64 grid positions; these features have 8 \(2x4 cells\)"):
        encoder.standardise(raw[:, :, :4, :2])  # 4 high, 2 wide
