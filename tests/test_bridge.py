"""The learned bridge: schedules, sampler, training with resume, export, and the runtime sampler."""

import cv2
import numpy as np
import pytest
import torch
import yaml

from edge_ad import Detector
from edge_ad.errors import BundleError, DataError, EdgeAdError
from edge_ad.metrics import auroc
from export.bridge import Denoiser, RestorationHead, sample, schedule
from export.bridge_train import STATE_FILE
from export.onnx_export import _Model, export_bundle
from export.train import TrainConfig, load_run, train


def test_schedule_runs_from_one_to_zero():
    for k in (1, 2, 4, 50):
        rows = schedule(k)
        assert rows.shape == (k, 2)
        assert rows[0, 0] == 1.0 and rows[:, 1].sum() == pytest.approx(1.0)
        assert np.allclose(rows[1:, 0], rows[:-1, 0] - rows[:-1, 1])  # each step starts where the last ended
    with pytest.raises(ValueError, match="at least 1"):
        schedule(0)


def test_untrained_bridge_is_identity_and_map_is_zero_on_identity():
    net = Denoiser(8, width=16)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(sample(net, x, torch.randn_like(x), 4), x)
    assert RestorationHead()(x, x).abs().max() < 1e-5
    far = RestorationHead(cosine_weight=1.0)(x, -x)  # opposite vectors: L2 = 2|x| and cosine distance 2
    assert torch.allclose(far, 2 * x.norm(dim=1, keepdim=True) + 2, atol=1e-4)


def test_runtime_sampler_matches_torch_for_every_k(tiny_bridge_bundle, mvtec_category):
    record, checkpoint, _ = load_run(tiny_bridge_bundle.parent / "run")
    model = _Model(record, checkpoint)
    frames = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(mvtec_category.rglob("test/*/*.png"))])
    for k in (1, 2, 4):
        detector = Detector.load(tiny_bridge_bundle, steps=k)
        inputs = np.stack([detector.preprocess(f, "RGB") for f in frames])
        reference = model.grid_maps(inputs, k)
        runtime = detector.grid_maps(inputs)
        assert runtime.shape == reference.shape == (len(frames), 2, 16, 16)
        assert np.abs(reference - runtime).max() <= 1e-4 * np.abs(reference).max()
    # the steps change the restoration, so K is a real choice
    assert not np.allclose(model.grid_maps(inputs, 1)[:, 1], model.grid_maps(inputs, 4)[:, 1])


def test_k_is_picked_at_load_time_with_its_own_calibration(tiny_bridge_bundle):
    spec = yaml.safe_load((tiny_bridge_bundle / "bundle.yaml").read_text())
    assert spec["bridge"]["default_steps"] == 2 and sorted(spec["bridge"]["schedules"]) == [1, 2, 4]
    assert Detector.load(tiny_bridge_bundle).steps == 2
    four = Detector.load(tiny_bridge_bundle, steps=4)
    assert four.bundle.coefficients.shape == (4, 2)
    assert four.threshold == spec["bridge"]["schedules"][4]["threshold"]
    assert four.bundle.branches == ("prior", "bridge")
    with pytest.raises(BundleError, match="no schedule for 3 bridge steps; this bundle supports K = 1, 2, 4"):
        Detector.load(tiny_bridge_bundle, steps=3)


def test_bridge_bundle_separates_spots_from_normal(tiny_bridge_bundle, mvtec_category):
    detector = Detector.load(tiny_bridge_bundle)
    paths = sorted(mvtec_category.rglob("test/*/*.png"))
    scores = [detector(cv2.imread(str(p))).score for p in paths]
    labels = [int(p.parent.name != "good") for p in paths]
    assert auroc(np.array(labels), np.array(scores)) >= 0.9
    frame = cv2.imread(str(paths[-1]))
    result = detector(cv2.resize(frame, (200, 150)))
    assert result.raw_map.shape == (2, 128, 128)
    assert {"prior_ms", "bridge_ms", "head_ms"} <= set(result.times_ms)
    # the branches are normalised and averaged on the grid, then upsampled: the same as the
    # raw maps upsampled, normalised and averaged (ULSAD 3.5 as written)
    full = detector.normalise(result.raw_map)
    assert result.score == pytest.approx(float(full.max()), rel=1e-5)
    display = np.clip(cv2.resize(full, (200, 150), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    assert np.abs(result.map - display).max() <= 1e-5


def test_a_rectangular_bridge_runs_as_its_torch_model(mvtec_category, tmp_path):
    config = TrainConfig(data=str(mvtec_category), model="bridge", input_size=[64, 96], prototypes=16,
                         steps=6, distill_steps=4, variants=1, distill_targets=8)
    run = export_bundle(train(config, tmp_path / "run"), tmp_path / "bundle").parent / "run"
    model = _Model(*load_run(run)[:2])
    detector = Detector.load(tmp_path / "bundle")
    frames = [cv2.imread(str(p)) for p in sorted(mvtec_category.rglob("test/*/*.png"))]
    inputs = np.stack([detector.preprocess(f) for f in frames])
    reference, runtime = model.grid_maps(inputs, 2), detector.grid_maps(inputs)
    assert runtime.shape == reference.shape == (len(frames), 2, 8, 12)
    assert np.abs(reference - runtime).max() <= 1e-4 * np.abs(reference).max()
    assert detector(cv2.resize(frames[0], (300, 200))).map.shape == (200, 300)


def test_training_resumes_from_its_checkpoint(mvtec_category, tmp_path):
    config = TrainConfig(data=str(mvtec_category), model="bridge", input_size=64, prototypes=16,
                         steps=6, distill_steps=4, variants=1, distill_targets=8)
    run = train(config, tmp_path / "run")
    first = torch.load(run / STATE_FILE, weights_only=True)
    assert (first["phase"], first["iteration"], len(first["losses"])) == ("student", 4, 4)
    config.distill_steps, config.resume = 7, True
    train(config, run)
    resumed = torch.load(run / STATE_FILE, weights_only=True)
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["teacher_final_loss"] is None  # the teacher came from the checkpoint, not retrained
    assert resumed["iteration"] == 7 and resumed["losses"][:4] == first["losses"]
    # A checkpoint of other features or pairs is refused before any work, and kept as it was.
    config.backbone = "efficientnet-lite1"
    with pytest.raises(DataError, match="trained with backbone='efficientnet-lite0'; this run asks for "
                                        "backbone='efficientnet-lite1'"):
        train(config, run)
    assert torch.load(run / STATE_FILE, weights_only=True)["losses"] == resumed["losses"]
    # A checkpoint cut short (a disk error, a copy interrupted) is named, not a torch traceback.
    (run / STATE_FILE).write_bytes((run / STATE_FILE).read_bytes()[:1000])
    config.backbone = "efficientnet-lite0"
    with pytest.raises(DataError, match=f"{STATE_FILE}: not a readable PyTorch checkpoint"):
        train(config, run)


def test_interrupted_training_says_what_resume_continues_from(mvtec_category, tmp_path, monkeypatch):
    """Ctrl-C on a long bridge run names the checkpoint it kept, and --resume goes on from it."""
    from export import bridge_train

    monkeypatch.setattr(bridge_train, "CHECKPOINT_EVERY", 3)
    calls, teacher_loss = [], bridge_train.BridgeTrainer._teacher_loss

    def interrupted_at(call: int):
        def loss(self, net, rng):
            calls.append(1)
            if len(calls) == call:
                raise KeyboardInterrupt
            return teacher_loss(self, net, rng)
        return loss

    config = TrainConfig(data=str(mvtec_category), model="bridge", input_size=64, prototypes=16,
                         steps=6, distill_steps=2, variants=1, distill_targets=8)
    run = tmp_path / "run"
    monkeypatch.setattr(bridge_train.BridgeTrainer, "_teacher_loss", interrupted_at(2))
    with pytest.raises(KeyboardInterrupt, match=r"^before the first checkpoint \(every 3 iterations\): none"):
        train(config, run)
    calls.clear()
    monkeypatch.setattr(bridge_train.BridgeTrainer, "_teacher_loss", interrupted_at(5))
    with pytest.raises(KeyboardInterrupt) as interrupted:
        train(config, run)
    assert str(interrupted.value) == (f"after the checkpoint of the teacher's iteration 3 ({run / STATE_FILE}): the "
                                      "same command with --resume continues from there")
    assert torch.load(run / STATE_FILE, weights_only=True)["iteration"] == 3
    calls.clear()
    config.resume = True
    train(config, run)
    assert len(calls) == 3  # the teacher's iterations 4 to 6, not all six again
    assert torch.load(run / STATE_FILE, weights_only=True)["phase"] == "student"


def test_fused_graph_runs_all_k_steps_in_one_call(tiny_bridge_bundle, tmp_path):
    from export.onnx_export import export_bundle

    bundle = tiny_bridge_bundle  # exported with the defaults: K=2, fused
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    assert spec["bridge"]["fused_steps"] == 2 and (bundle / spec["graphs"]["fused"]["file"]).is_file()
    detector = Detector.load(bundle, steps=2)
    assert detector.bundle.fused_steps == 2 and "fused" in detector._graphs
    features = detector._graphs["encoder"](np.random.default_rng(0).integers(0, 255, (2, 128, 128, 3), np.uint8))[0]
    _, condition = detector._graphs["prior"](features)
    x = features
    for coefficients in detector.bundle.coefficients:
        x = detector._graphs["step"](x, condition, coefficients)[0]
    np.testing.assert_allclose(detector.restore(features, condition), x, rtol=1e-4, atol=1e-5)
    assert Detector.load(bundle, steps=4).bundle.steps == 4  # other K: the step graph, as before
    unfused = export_bundle(tiny_bridge_bundle.parent / "run", tmp_path / "unfused", fuse_steps=0)
    spec = yaml.safe_load((unfused / "bundle.yaml").read_text())
    assert spec["bridge"]["fused_steps"] is None and "fused" not in spec["graphs"]
    with pytest.raises(EdgeAdError, match="--fuse-steps 3"):
        export_bundle(tiny_bridge_bundle.parent / "run", tmp_path / "bad", fuse_steps=3)
