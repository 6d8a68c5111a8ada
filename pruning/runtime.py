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
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # mps & co. passed, then failed in a traceback
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} was asked for but no CUDA GPU is available (use device=auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device: {name!r} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                        f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
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
