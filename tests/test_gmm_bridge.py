"""The closed-form GMM bridge: limits, fixed points, and a real train -> export -> ONNX Runtime run."""

import numpy as np
import pytest
import torch

from edge_ad import Detector
from export.gmm_bridge import GmmBridgeHead, gate_temperature
from export.onnx_export import export_bundle
from export.prototype import PrototypeHead
from export.train import TrainConfig, train


def _grid(patches: torch.Tensor) -> torch.Tensor:
    """(N, C) patches -> (1, C, 1, N) feature grid."""
    return patches.T[None, :, None, :]


def test_sharp_gate_without_shrink_is_the_nearest_prototype_distance():
    rng = torch.Generator().manual_seed(0)
    prototypes = torch.randn(32, 8, generator=rng) * 3
    features = _grid(torch.randn(50, 8, generator=rng) * 3)
    gmm = GmmBridgeHead(prototypes, tau=1e-3, shrink=0.0)(features)
    nearest = PrototypeHead(prototypes)(features)
    assert torch.allclose(gmm, nearest, rtol=1e-4, atol=1e-4)


def test_prototypes_are_fixed_points_and_outliers_score_high():
    prototypes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    head = GmmBridgeHead(prototypes, tau=1.0, shrink=0.1)
    at_prototypes = head(_grid(prototypes))
    assert at_prototypes.abs().max() < 1e-4
    # (30, 0) is 20 from (10, 0) and 30 from (0, 0): the gate is hard at tau = 1, and the endpoint
    # moves 90 % of the way to (10, 0), so |x - y| = 0.9 * 20.
    outlier = head(_grid(torch.tensor([[30.0, 0.0]])))
    assert outlier.item() == pytest.approx(18.0, rel=1e-4)
    # Half-way between two prototypes the gate splits evenly: y = 0.9 * (5, 5) + 0.1 * x.
    between = head(_grid(torch.tensor([[10.0, 10.0]])))
    assert between.item() == pytest.approx(0.9 * np.hypot(5.0, 5.0), rel=1e-4)


def test_tau_is_the_median_gap_between_the_two_nearest_prototypes():
    prototypes = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    # Squared distances (nearest, second): x=1 -> (1, 9), x=0 -> (0, 16), x=1.5 -> (2.25, 6.25).
    patches = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.5, 0.0]])
    assert gate_temperature(patches, prototypes, seed=0) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        gate_temperature(patches, prototypes[:1], seed=0)
    with pytest.raises(ValueError):
        GmmBridgeHead(prototypes, tau=0.0)


def test_train_export_and_run_gmm_bridge(mvtec_category, tmp_path):
    config = TrainConfig(data=str(mvtec_category), model="gmm-bridge", input_size=64, prototypes=16)
    bundle = export_bundle(train(config, tmp_path / "run"), tmp_path / "bundle")
    detector = Detector.load(bundle)
    assert detector.bundle.spec["model"]["type"] == "gmm-bridge"
    assert detector.bundle.spec["model"]["tau"] > 0
    assert detector.bundle.spec["provenance"]["parity_onnxruntime_vs_torch"]["maps"]["max_abs_diff"] < 1e-3
    result = detector(np.full((80, 100, 3), 120, np.uint8))
    assert np.isfinite(result.score) and result.map.shape == (80, 100)
