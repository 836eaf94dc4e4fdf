"""Running a torch module over many images or feature maps, a batch at a time."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

CPU = torch.device("cpu")


@torch.no_grad()
def in_batches(
    module: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor | np.ndarray,
    batch_size: int,
    desc: str | None = None,
    device: torch.device = CPU,
) -> torch.Tensor:
    """`module` applied to `inputs` batch_size at a time along the first axis, the outputs
    concatenated in the computer's memory; each batch runs on `device`, where `module` is; with
    `desc`, under a progress bar of that name."""
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    starts = range(0, len(inputs), batch_size)
    if desc is not None:
        starts = tqdm(starts, desc=desc, unit="batch")
    return torch.cat([module(inputs[i : i + batch_size].to(device)).cpu() for i in starts])
