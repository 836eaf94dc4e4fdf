"""Reading the torch checkpoints a training run writes: a corrupt one (a copy cut short, a disk
error) is named in a DataError, not a torch traceback."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from edge_ad.errors import DataError


def load_checkpoint(path: Path, remedy: str) -> dict:
    """The tensors saved at `path` (weights only); `remedy` says what to do when it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PyTorch checkpoint (corrupt or cut short); {remedy}") from exc
