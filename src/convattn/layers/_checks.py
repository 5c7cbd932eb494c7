"""Argument and input checks shared by every attention module.

Errors are raised at construction for bad arguments (never with ``assert``, which
``python -O`` strips) and at forward for inputs of the wrong shape, naming both the
expected and the received shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_choice",
    "check_feature_map",
    "check_odd_kernel",
    "check_positive",
    "hidden_channels",
]


def check_positive(name: str, value: int) -> int:
    """Return ``value`` if it is an ``int`` >= 1, else raise ``ValueError``/``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_odd_kernel(kernel_size: int) -> int:
    """Kernel sizes must be odd and positive so that 'same' padding keeps H x W."""
    check_positive("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (same padding keeps H x W), got {kernel_size}")
    return kernel_size


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the valid ones."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, choices))}")
    return value


def hidden_channels(channels: int, reduction: int) -> int:
    """Width of the bottleneck MLP: ``max(1, channels // reduction)``.

    The paper's parameter counts use floor division (``C // r``); when that leaves no
    hidden unit (e.g. ``channels=8, reduction=16``) we round up to one unit rather than
    refuse, so the modules fit every width of a small network.
    """
    check_positive("channels", channels)
    check_positive("reduction", reduction)
    return max(1, channels // reduction)


def check_feature_map(x: torch.Tensor, channels: int | None, module: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, channels, H, W).

    Skipped while tracing: a trace records one fixed shape, already checked eagerly.
    """
    if torch.jit.is_tracing():
        return
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
        raise ValueError(f"{module} expects a 4-D input {want}, got shape {tuple(x.shape)}")
