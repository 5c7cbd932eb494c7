"""Input checks and sizes shared by the attention modules.

Inputs of the wrong shape raise ``ValueError`` naming both the expected and the received
shape. Argument checks live in :mod:`convattn._validate`.
"""

from __future__ import annotations

import torch

from .._validate import check_positive

__all__ = ["check_feature_map", "hidden_channels"]


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
