"""The files a training run and an export write with torch and numpy: written whole or not at all,
a full disk named with the file (torch.save into a file then raises a RuntimeError that names
neither); read back, a corrupt one (a copy cut short, a disk error) is named in a DataError, not a
torch traceback."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from edge_ad.errors import DataError
from edge_ad.files import write_atomic


def save_checkpoint(path: Path, tensors: dict) -> None:
    """`tensors` (nested dicts and lists of them) saved with every tensor in the computer's memory,
    wherever it was trained: the file loads on a machine without a GPU."""
    buffer = io.BytesIO()
    torch.save(_on_cpu(tensors), buffer)
    write_atomic(path, buffer.getvalue())


def _on_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_on_cpu(item) for item in value)
    return value


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, through edge_ad.files."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, remedy: str) -> dict:
    """The tensors saved at `path` (weights only); `remedy` says what to do when it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PyTorch checkpoint (corrupt or cut short); {remedy}") from exc
