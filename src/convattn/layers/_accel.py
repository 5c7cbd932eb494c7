"""The one point where a faster implementation plugs into the attention layers.

The layers are plain PyTorch modules. CBAM, channel attention and SE carry an ``impl``
("auto", "eager" or "fused"); when it is not "eager", their ``forward`` first offers the
call to the implementation registered here, which returns the output or ``None`` (then
the module runs its own operations). :mod:`convattn.fused` registers its CPU kernels
when the package is imported; nothing else in the layers knows about them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["IMPLS", "Accelerated", "accelerated", "register_accelerated"]

IMPLS = ("auto", "eager", "fused")

#: ``f(module, x)`` -> ``module(x)`` computed another way, or ``None`` where it does not apply.
Accelerated = Callable[[nn.Module, torch.Tensor], "torch.Tensor | None"]
_registered: list[Accelerated] = []


def register_accelerated(fn: Accelerated) -> None:
    """Make ``fn`` the implementation that ``impl="auto"`` and ``"fused"`` try first."""
    _registered[:] = [fn]


def accelerated(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``module(x)`` by the registered implementation, or ``None`` (run eagerly)."""
    return _registered[0](module, x) if _registered else None
