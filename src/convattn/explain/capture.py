"""Reading out the attention maps of every CBAM and BAM module of a model for a batch.

A forward hook on each :class:`~convattn.layers.CBAM` and :class:`~convattn.layers.BAM`
receives the module's input and recomputes the maps from it (``CBAM.gates``,
``BAM.branches``, the eager operations, without gradients) while the forward runs. The
model's output is that of a forward without the hooks up to float rounding: in the model
zoo's residual blocks a module with hooks of its own runs as the eager composition of the
block's tail (BatchNorm, attention, addition, ReLU; see
:func:`convattn.fused.residual_tail`) instead of the fused kernels, which is the same
math in another order of operations.

The forward runs in evaluation mode by default (BatchNorm with running statistics, so
each image's maps are its own); every module's mode and, after a training-mode forward,
every buffer are restored (:func:`~convattn.explain._state.preserved_state`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import BAM, CBAM
from ._state import preserved_state
from .gradcam import check_images

__all__ = ["AttentionCapture", "AttentionMaps", "capture_attention"]


@dataclass(frozen=True)
class AttentionMaps:
    """The maps of one attention module for a batch.

    Attributes:
        kind: "cbam" or "bam".
        channel: (N, C). CBAM: the channel gate Mc after its sigmoid, in [0, 1]. BAM: the
            channel branch Mc(F) before the sum and the sigmoid (the paper's Eq. (2)).
        spatial: (N, 1, H, W). CBAM: the spatial gate Ms after its sigmoid, in [0, 1]
            (``None`` for channel-only CBAM). BAM: the spatial branch Ms(F) before the
            sum and the sigmoid (Eq. (3)).
        joint: BAM only, (N, 1, H, W): its gate ``sigmoid(Mc + Ms)`` (C x H x W) averaged
            over the channels, in [0, 1]. ``None`` for CBAM.
    """

    kind: str
    channel: torch.Tensor
    spatial: torch.Tensor | None
    joint: torch.Tensor | None = None


@dataclass(frozen=True)
class AttentionCapture:
    """The model's output for the batch and the maps of every module, by module name
    (``"layer1.0.attn"``; a dict in the order the modules ran)."""

    output: torch.Tensor
    maps: dict[str, AttentionMaps]


def _maps(module: nn.Module, x: torch.Tensor) -> AttentionMaps:
    """The maps of ``module`` (a CBAM or a BAM) on its input ``x`` (N, C, H, W)."""
    if isinstance(module, CBAM):
        mc, ms = module.gates(x)
        return AttentionMaps("cbam", mc[:, :, 0, 0], ms)  # (N, C, 1, 1) -> (N, C)
    mc, ms = module.branches(x)  # (N, C), (N, 1, H, W)
    joint = torch.sigmoid(mc[:, :, None, None] + ms).mean(dim=1, keepdim=True)
    return AttentionMaps("bam", mc, ms, joint)


def capture_attention(
    model: nn.Module, images: torch.Tensor, *, eval_mode: bool = True
) -> AttentionCapture:
    """Run ``model`` on ``images`` (N, C, H, W) once and return its output with the maps
    of every CBAM and BAM module in it (none found: an empty dict; a module called twice
    keeps the maps of its last call).

    ``eval_mode=False`` keeps the model's own modes (see :class:`GradCAM`)."""
    images = check_images(images)
    maps: dict[str, AttentionMaps] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            maps[name] = _maps(module, inputs[0])

        return hook

    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, CBAM | BAM)]
    handles = [m.register_forward_hook(record(n)) for n, m in modules]
    try:
        with preserved_state(model, eval_mode=eval_mode), torch.no_grad():
            output = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return AttentionCapture(output, maps)
