"""Where and how a run executes: the device, threads, determinism and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .._seed import mix_seed
from .config import RunConfig

__all__ = ["configure", "resolve_device", "seed_epoch"]


def resolve_device(name: str) -> torch.device:
    """ "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but CUDA is not available")
    return torch.device(name)


def configure(run: RunConfig) -> torch.device:
    """Apply ``run.threads`` and ``run.deterministic``; return the run's device."""
    device = resolve_device(run.device)
    if run.threads:
        torch.set_num_threads(run.threads)
    if run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return device


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed Python's, NumPy's and torch's generators from ``(seed, epoch, rank)``."""
    s = mix_seed(seed, epoch, rank) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
