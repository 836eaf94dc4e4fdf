"""Training on the workstation's GPU: the device choice, and on a GPU the same run as on the CPU."""

import numpy as np
import pytest
import torch
import yaml

import export.train
from edge_ad import cli
from edge_ad.errors import DataError
from export.ablate import Scorer
from export.bridge_train import STATE_FILE
from export.torch_device import training_device, unused_gpu_note
from export.train import TrainConfig, load_run, train

from conftest import edge_ad

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU for torch here")


def test_a_device_that_is_not_one_is_named():
    for name, why in (("mps", "runs on cpu or an NVIDIA GPU"), ("gpu0", "not a device"),
                      ("cuda:7", "this machine has" if GPU else "finds no GPU|built for the CPU only")):
        with pytest.raises(DataError, match=why):
            training_device(name)
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto") == (torch.device("cuda", 0) if GPU else torch.device("cpu"))


@pytest.mark.skipif(GPU, reason="a CUDA GPU is here")
def test_train_on_cuda_without_a_gpu_says_what_to_do(normal_folder, tmp_path):
    out = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "run", "--device", "cuda")
    assert out.returncode != 0 and not (tmp_path / "run").exists()
    assert "device 'cuda': this torch" in out.stderr and "or train with --device cpu" in out.stderr
    assert "Traceback" not in out.stderr


def _bridge(data, device: str, **changes) -> TrainConfig:
    settings = dict(model="bridge", input_size=64, prototypes=16, steps=30, distill_steps=10, variants=1,
                    distill_targets=8)
    return TrainConfig(data=str(data), device=device, **{**settings, **changes})


@needs_gpu
def test_a_run_trained_on_the_gpu_is_the_cpu_run_and_loads_without_one(mvtec_category, tmp_path):
    gpu_run = train(_bridge(mvtec_category, "cuda"), tmp_path / "gpu")
    cpu_run = train(_bridge(mvtec_category, "cpu"), tmp_path / "cpu")
    record = yaml.safe_load((gpu_run / "config.yaml").read_text())
    assert record["device"] == f"cuda:0 ({torch.cuda.get_device_name(0)})"
    # Saved in the computer's memory: torch.load without map_location gives CPU tensors.
    saved = torch.load(gpu_run / "model.pt", weights_only=True)
    tensors = [t for v in saved.values() for t in (v.values() if isinstance(v, dict) else [v])]
    assert {t.device.type for t in tensors if isinstance(t, torch.Tensor)} == {"cpu"}
    state = torch.load(gpu_run / STATE_FILE, weights_only=True)
    assert state["net"]["out.weight"].device.type == "cpu"
    assert state["optimiser"]["state"][0]["exp_avg"].device.type == "cpu"
    # The features are the CPU's (TF32 convolutions on the GPU: about 1e-3), so are the statistics.
    gpu_record, gpu, val = load_run(gpu_run)
    _, cpu, _ = load_run(cpu_run)
    for key in ("feature_mean", "feature_std", "position_mean"):
        assert torch.allclose(gpu[key], cpu[key], rtol=1e-2, atol=1e-2), key
    assert gpu["student"]["out.weight"].abs().sum() > 0  # trained: the output layer starts at zero
    # Maps scored on the GPU are the CPU's for the same run.
    scorer = Scorer(gpu_record, gpu, torch.device("cuda", 0))
    on_gpu = scorer.maps(scorer.features(val), "gpu", [("student", 2)])
    scorer.to(torch.device("cpu"))
    on_cpu = scorer.maps(scorer.features(val), "cpu", [("student", 2)])
    for key, value in on_cpu.items():
        assert np.abs(on_gpu[key] - value).max() <= 1e-2 * np.abs(value).max(), key


@needs_gpu
def test_a_run_started_on_the_cpu_goes_on_on_the_gpu(mvtec_category, tmp_path):
    config = _bridge(mvtec_category, "cpu", steps=6, distill_steps=4)
    run = train(config, tmp_path / "run")
    first = torch.load(run / STATE_FILE, weights_only=True)
    config.distill_steps, config.resume, config.device = 9, True, "cuda"
    train(config, run)
    resumed = torch.load(run / STATE_FILE, weights_only=True)
    assert resumed["iteration"] == 9 and resumed["losses"][:4] == first["losses"]
    assert yaml.safe_load((run / "config.yaml").read_text())["device"].startswith("cuda:0")


def test_a_training_error_is_said_with_a_torch_from_before_its_out_of_memory_name(tmp_path, monkeypatch, capsys):
    """torch before 2.5 (pyproject admits 2.2) has no torch.OutOfMemoryError: looking it up to
    catch it turned every error of train, a missing folder as much, into an AttributeError."""
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
    assert cli.main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    said = capsys.readouterr().err
    assert "nope" in said and "AttributeError" not in said and "Traceback" not in said


def test_a_gpu_out_of_memory_says_what_to_do(normal_folder, tmp_path, monkeypatch, capsys):
    """A workstation's small GPU and a large --input-size: torch's out-of-memory error, which
    names no option, is said with what to change."""
    def out_of_memory(config, out):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                          "of 3.81 GiB of which 1.20 GiB is free. Including non-PyTorch memory, this "
                                          "process has 2.60 GiB memory in use.")

    monkeypatch.setattr(export.train, "train", out_of_memory)
    assert cli.main(["train", "--data", str(normal_folder), "--out", str(tmp_path / "run"), "--device", "cuda",
                     "--input-size", "1024"]) == 2
    assert capsys.readouterr().err.strip() == (
        "edge-ad: error: --device cuda: the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU "
        "0 has a total capacity of 3.81 GiB of which 1.20 GiB is free); train with --device cpu, or a smaller "
        "--input-size")


def test_training_on_the_cpu_beside_a_gpu_it_cannot_use_says_so(tmp_path, monkeypatch):
    """`make venv` installs torch's CPU wheel: on a workstation with an NVIDIA card, training
    would take the CPU without a word."""
    (tmp_path / "proc/driver/nvidia/gpus/0000:01:00.0").mkdir(parents=True)  # what the NVIDIA driver shows
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "an NVIDIA GPU is here, but this torch is built for the CPU only" in \
        unused_gpu_note(torch.device("cpu"), tmp_path)
    assert unused_gpu_note(torch.device("cpu"), tmp_path / "no-driver") is None
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build: --device cpu was asked for, or auto found none
    assert unused_gpu_note(torch.device("cpu"), tmp_path) is None
