"""What every convattn backbone shares: stages, feature extraction, a replaceable head.

A backbone is a stem followed by named stages (``stage_names``); the head is global
average pooling (a plain ``mean`` over H, W, so any input size works and ONNX export
stays simple), optional dropout and a linear classifier ``fc``. With
``features_only=True`` the head is not built and ``forward`` returns the outputs of the
stages in ``out_indices``, described by ``feature_info`` (channels and stride of each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._validate import check_choice
from ..layers import ATTENTIONS, SpatialAttention, init_gates

__all__ = ["ATTN_INITS", "Backbone", "FeatureInfo", "init_weights"]

#: How :func:`init_weights` treats attention modules: the CBAM authors' way or PyTorch's.
ATTN_INITS = ("authors", "pytorch", "authors-bn1")


@dataclass(frozen=True)
class FeatureInfo:
    """One stage output: its module name, channels and stride (reduction) w.r.t. the input."""

    module: str
    num_chs: int
    reduction: int


class Backbone(nn.Module):
    """Base class: subclasses build ``self.<stage>`` modules and call :meth:`_finish`."""

    stage_names: list[str]
    feature_info: list[FeatureInfo]
    num_features: int
    features_only: bool
    out_indices: tuple[int, ...]

    def _finish(
        self,
        feature_info: list[FeatureInfo],
        *,
        num_classes: int,
        drop_rate: float,
        features_only: bool,
        out_indices: Sequence[int] | None,
    ) -> None:
        self.feature_info = feature_info
        self.stage_names = [f.module for f in feature_info]
        self.num_features = feature_info[-1].num_chs
        self.features_only = features_only
        n = len(feature_info)
        idx = tuple(range(n)) if out_indices is None else tuple(out_indices)
        if not idx or any(not -n <= i < n for i in idx):
            raise ValueError(f"out_indices must pick stages in range({n}), got {out_indices}")
        self.out_indices = tuple(i % n for i in idx)
        self.drop_rate = float(drop_rate)
        self.fc: nn.Linear | None = None
        if not features_only:
            self.reset_classifier(num_classes)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output, (N, 3, H, W) -> [(N, C_i, H / s_i, W / s_i)]."""
        if x.dim() != 4:
            raise ValueError(f"expected an image batch (N, C, H, W), got shape {tuple(x.shape)}")
        x = self.forward_stem(x)
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, (N, 3, H, W) -> (N, num_features, h, w)."""
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify, (N, C, h, w) -> (N, num_classes), or (N, C) if pre_logits."""
        x = x.mean(dim=(2, 3))  # (N, C, h, w) -> (N, C)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        if pre_logits or self.fc is None:
            return x
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            outs = self.forward_stages(x)
            return [outs[i] for i in self.out_indices]
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module | None:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else None
        if self.fc is not None:
            nn.init.kaiming_normal_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)


def _attention_parts(model: nn.Module) -> set[int]:
    """Ids of the attention gates in ``model`` and of every module inside them."""
    gates = tuple(ATTENTIONS.values())
    return {id(sub) for m in model.modules() if isinstance(m, gates) for sub in m.modules()}


def init_weights(
    model: nn.Module, *, zero_init_last: bool = False, attn_init: str = "authors"
) -> None:
    """Initialise as the CBAM authors' code: Kaiming-normal (fan-out) convolutions, BN
    weight 1 and bias 0, every bias 0, and the spatial-attention BN weight 0 (gates start
    at 0.5). Projection shortcuts (a block's ``downsample``) keep PyTorch's default
    initialisation, as there: the authors select convolutions by the word "conv" in the
    parameter's name, which ``downsample.0.weight`` lacks. ``zero_init_last`` also zeroes
    the last BN of every residual block (blocks expose it as ``last_bn``), so each block
    starts as the identity.

    ``attn_init="pytorch"`` leaves the attention gates (SE, CBAM, BAM and their branches)
    as PyTorch constructed them and sets the spatial-attention BN weight to PyTorch's
    default 1 instead of the authors' 0 (gates then start at sigmoid of the conv's output).
    ``attn_init="authors-bn1"`` is the authors' initialisation with that one change (the
    spatial BatchNorm weight 1), which separates its effect from the convolutions' scale.
    """
    check_choice("attn_init", attn_init, ATTN_INITS)
    skip = _attention_parts(model) if attn_init == "pytorch" else set()
    shortcut = {
        id(m)
        for block in model.modules()
        if isinstance(getattr(block, "downsample", None), nn.Module)
        for m in block.downsample.modules()
        if isinstance(m, nn.Conv2d)
    }
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            if id(m) not in shortcut:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if attn_init == "authors":
        init_gates(model)
    else:  # "pytorch", "authors-bn1"
        _pytorch_gates(model)
    if zero_init_last:
        for m in model.modules():
            last_bn = getattr(m, "last_bn", None)
            if isinstance(last_bn, nn.BatchNorm2d):
                nn.init.zeros_(last_bn.weight)


def _pytorch_gates(model: nn.Module) -> None:
    """PyTorch's BatchNorm default (weight 1) in every spatial gate, which its
    constructor started at the authors' 0."""
    for m in model.modules():
        if isinstance(m, SpatialAttention) and m.bn is not None:
            nn.init.ones_(m.bn.weight)
