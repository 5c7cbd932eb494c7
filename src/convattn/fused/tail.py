"""The tail of a residual block, ``relu(attn(norm(z)) + shortcut)``, fused where it can be.

Residual blocks end with the block's last BatchNorm, the attention, the addition of the
shortcut and the ReLU. :func:`residual_tail` computes exactly that; where ``attn`` is a
CBAM or channel attention (SE) the fused kernels can run, it folds the BatchNorm, the
addition and the ReLU into the attention's passes: the output is written once, the
BatchNorm's output and the sum are never materialised, and backward reads the ReLU's mask
from the saved output (plain ``relu(bn(z) + shortcut)`` writes two tensors forward and two
backward). The BatchNorm's running statistics and ``num_batches_tracked`` are updated as
``nn.BatchNorm2d`` does. The modules are read at every call, so a BatchNorm converted to
a synchronised one, or an attention swapped out, is honoured at once; modules with hooks
of their own run as the eager composition, which calls the hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import CBAM, ChannelAttention
from .dispatch import has_hooks, run_fused

__all__ = ["residual_tail"]


def residual_tail(
    z: torch.Tensor,
    shortcut: torch.Tensor,
    *,
    norm: nn.Module,
    attn: nn.Module,
    relu: nn.Module,
) -> torch.Tensor:
    """``relu(attn(norm(z)) + shortcut)``, with the fused kernels where they apply."""
    fusable = isinstance(attn, CBAM | ChannelAttention) and attn.impl != "eager"
    if fusable and isinstance(relu, nn.ReLU) and not has_hooks(norm, attn, relu):
        y = run_fused(attn, z, shortcut=shortcut, relu=True, norm=norm)
        if y is not None:
            return y
    return relu(attn(norm(z)) + shortcut)
