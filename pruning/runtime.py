"""Device choice, seeding and thread settings: one place so every entry point behaves alike."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from pruning.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when a GPU is present, else the CPU; an unavailable device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} was asked for but no CUDA GPU is available (use device=auto or cpu)")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int | None) -> int:
    """Apply the configured intra-op thread count (None keeps torch's choice); return the count in force."""
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return torch.get_num_threads()
