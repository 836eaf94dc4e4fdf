"""The backbone is the real ImageNet EfficientNet-Lite0: it recognises known photographs."""

import shutil

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from export.backbone import LITE_MEAN, LITE_STD, FeatureEncoder, lite0_weights_path, load_lite0, verify_weights


def _classify(model, image_rgb: np.ndarray) -> int:
    x = cv2.resize(image_rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (x - LITE_MEAN) / LITE_STD
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(2, 0, 1)[None])
    return int(logits.argmax())


def test_pretrained_weights_classify_known_images():
    model = load_lite0()
    assert 281 <= _classify(model, data.chelsea()) <= 285  # ImageNet cat classes
    assert _classify(model, data.coffee()) == 967  # espresso


def test_tampered_weight_file_is_refused(tmp_path):
    copy = tmp_path / "lite0.pth"
    shutil.copy(lite0_weights_path(), copy)
    with open(copy, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00" * 16)
    with pytest.raises(ValueError, match="not the EfficientNet-Lite0 checkpoint"):
        verify_weights(copy)


def test_feature_encoder_grid_and_standardisation():
    encoder = FeatureEncoder((128, 96))
    images = torch.randint(0, 256, (2, 128, 96, 3), dtype=torch.uint8)
    raw = encoder.raw_features(images)
    assert raw.shape == (2, 152, 16, 12)
    encoder.set_statistics(raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)))
    standardised = encoder(images)
    assert torch.allclose(standardised.mean(dim=(0, 2, 3)), torch.zeros(152), atol=1e-4)
    assert torch.allclose(standardised.std(dim=(0, 2, 3)), torch.ones(152), atol=1e-3)
