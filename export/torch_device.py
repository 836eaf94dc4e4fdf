"""Where training runs: the workstation's NVIDIA GPU when this torch sees one, else the CPU.

The features of every training image and the bridge's training pairs stay in the computer's
memory; each batch goes to the GPU and its result comes back, so a run needs no more GPU memory
for a thousand pictures than for ten.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edge_ad.errors import DataError

DEVICES = ("auto", "cpu", "cuda")  # also "cuda:N"


def training_device(name: str = "auto") -> torch.device:
    """'auto': the first CUDA GPU when this torch sees one, else the CPU; 'cpu'; 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DataError(f"device {name!r}: not a device; give auto, cpu, cuda or cuda:N") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DataError(f"device {name!r}: training runs on cpu or an NVIDIA GPU (cuda, cuda:N)")
    if not torch.cuda.is_available():
        why = ("this torch is built for the CPU only (the Makefile installs the CPU wheel): install a CUDA build "
               "from pytorch.org" if torch.version.cuda is None else
               f"this torch (CUDA {torch.version.cuda}) finds no GPU: is the NVIDIA driver loaded (nvidia-smi)?")
        raise DataError(f"device {name!r}: {why}; or train with --device cpu")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise DataError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def unused_gpu_note(device: torch.device, root: Path = Path("/")) -> str | None:
    """What to do when training runs on the CPU beside an NVIDIA GPU that this torch cannot use (a
    CPU-only build, as the Makefile installs): the learned bridge trained in 98 s on an H200 and
    15.5 minutes on 2 CPU cores (README). None otherwise."""
    if device.type != "cpu" or torch.version.cuda is not None or not (root / "proc/driver/nvidia/gpus").is_dir():
        return None
    return ("an NVIDIA GPU is here, but this torch is built for the CPU only: install the CUDA build of the same "
            "torch version (pytorch.org) to train on the GPU, many times faster (README: --device)")


def device_text(device: torch.device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA RTX A4000)': what a run's config record says it was trained on."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
