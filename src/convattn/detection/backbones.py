"""Registry backbones as the body of torchvision's detectors, with a feature pyramid.

Papers: Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017,
https://arxiv.org/abs/1612.03144 (top-down pathway with lateral 1x1 connections, one
extra level by max-pooling the coarsest); Woo et al., "CBAM", ECCV 2018,
https://arxiv.org/abs/1807.06521, Sec. 4.3 (CBAM ResNets as Faster R-CNN backbones).

Any model of the registry built with ``features_only=True`` becomes a body
(:class:`StageFeatures`: an ``OrderedDict`` of stage outputs named ``"0"``, ``"1"``, ...),
and :class:`BackboneFPN` puts torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork`
with :class:`~torchvision.ops.feature_pyramid_network.LastLevelMaxPool` on it: the same
semantics and output names as torchvision's ``BackboneWithFPN``, which cannot be used
directly because its ``IntermediateLayerGetter`` replays a model's children in
registration order instead of calling the model's own stages.

Freezing follows torchvision's detection backbones: ``trainable_layers`` counts the
stages from the last one backwards, the stem being the last unit counted (ResNet:
5 trains everything, 3 trains ``layer2..layer4``, 0 trains none), and ``frozen_bn``
replaces BatchNorm by :class:`~torchvision.ops.FrozenBatchNorm2d` (statistics and
affine parameters fixed). Deviation: in the trained units the BatchNorm of CBAM's
spatial gate stays an ordinary, trainable ``nn.BatchNorm2d``. Its one channel pools
N x H x W values, so its batch statistics are sound even in detection's small batches
(the noise frozen BatchNorm is for is that of per-channel statistics over a few images),
and its affine parameters are the gate's scale, which the authors start at 0: frozen,
a body trained without classification weights would hold every gate at 0.5 for good.
Every other BatchNorm is frozen, those of other attention modules included (BAM's
``BatchNorm1d`` sees only N values per channel), and in the units that are not trained
every BatchNorm is frozen, the spatial gates' too, so nothing there changes. The residual
blocks' fused tail folds ``nn.BatchNorm2d`` only; a frozen one runs eagerly and the
attention stays fused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..layers import SpatialAttention
from ..models import Backbone, FeatureInfo, create_model, load_checkpoint

__all__ = [
    "BackboneFPN",
    "StageFeatures",
    "build_fpn_backbone",
    "freeze_batchnorm",
    "freeze_stages",
    "trainable_units",
]


class StageFeatures(nn.Module):
    """A ``features_only`` backbone whose forward returns ``OrderedDict`` of stage maps.

    Args:
        model: a :class:`~convattn.models.Backbone` built with ``features_only=True``.

    Attributes:
        feature_info: the :class:`~convattn.models.FeatureInfo` of each returned stage.
        in_channels_list: their channels, in order.
    """

    def __init__(self, model: Backbone) -> None:
        super().__init__()
        if not getattr(model, "features_only", False):
            raise ValueError("the backbone must be built with features_only=True")
        self.model = model
        self.feature_info: list[FeatureInfo] = [model.feature_info[i] for i in model.out_indices]
        self.in_channels_list = [f.num_chs for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.model(x)  # [(N, C_i, H / s_i, W / s_i)] of the returned stages
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


class BackboneFPN(nn.Module):
    """``body`` (stage features) followed by a feature pyramid with ``out_channels`` maps.

    The output holds one map per returned stage (``"0"``, ``"1"``, ...) and ``"pool"``
    (the coarsest map max-pooled by 2), all with ``out_channels`` channels.
    """

    def __init__(self, body: StageFeatures, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.in_channels_list, out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    @property
    def strides(self) -> list[int]:
        """Stride of each output level, the ``"pool"`` level last."""
        strides = [f.reduction for f in self.body.feature_info]
        return [*strides, 2 * strides[-1]]

    @property
    def level_names(self) -> list[str]:
        """Names of the pyramid's levels without ``"pool"`` (the RoI pooler's maps)."""
        return [str(i) for i in range(len(self.body.feature_info))]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


class _FrozenBatchNorm1d(FrozenBatchNorm2d):
    """:class:`~torchvision.ops.FrozenBatchNorm2d` for (N, C) and (N, C, L) inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(shape) + shift.reshape(shape)


def _frozen(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """A frozen copy of ``bn`` (statistics, affine parameters, eps, device and dtype)."""
    kind = FrozenBatchNorm2d if isinstance(bn, nn.BatchNorm2d) else _FrozenBatchNorm1d
    frozen = kind(bn.num_features, eps=bn.eps)
    stats = bn.running_mean
    assert stats is not None and bn.running_var is not None  # callers pick tracked ones
    frozen = frozen.to(device=stats.device, dtype=stats.dtype)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
        frozen.running_mean.copy_(stats)
        frozen.running_var.copy_(bn.running_var)
    return frozen


def _replace_batchnorms(model: nn.Module, pick: Callable[[str, nn.Module], bool]) -> int:
    """Freeze every BatchNorm (1d, 2d) with running statistics for which
    ``pick(qualified name, module)``; returns how many were replaced."""
    targets = [
        (parent, name, child)
        for prefix, parent in model.named_modules()
        for name, child in parent.named_children()
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d)
        and child.running_mean is not None
        and pick(f"{prefix}.{name}" if prefix else name, child)
    ]
    for parent, name, bn in targets:
        setattr(parent, name, _frozen(bn))
    return len(targets)


def freeze_batchnorm(model: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` and ``nn.BatchNorm1d`` but the spatial gates'
    (:class:`~convattn.layers.SpatialAttention`'s ``bn``, see the module docstring) by a
    frozen one with its statistics, affine parameters and eps; returns how many."""
    gates = {id(m.bn) for m in model.modules() if isinstance(m, SpatialAttention)}
    return _replace_batchnorms(model, lambda _, bn: id(bn) not in gates)


def trainable_units(model: Backbone) -> list[str]:
    """The units ``trainable_layers`` counts, last stage first, ``"stem"`` last."""
    return [*reversed(model.stage_names), "stem"]


def freeze_stages(model: Backbone, trainable_layers: int) -> None:
    """Train only the last ``trainable_layers`` units of :func:`trainable_units` (the
    stem is everything outside the stages): the other parameters get no gradient and
    every BatchNorm of the other units, the attention's included, is frozen."""
    units = trainable_units(model)
    if not 0 <= trainable_layers <= len(units):
        raise ValueError(f"trainable_layers must be in [0, {len(units)}], got {trainable_layers}")
    train = set(units[:trainable_layers])

    def unit(name: str) -> str:
        top = name.split(".")[0]
        return top if top in model.stage_names else "stem"

    _replace_batchnorms(model, lambda name, _: unit(name) not in train)
    for name, p in model.named_parameters():
        p.requires_grad_(unit(name) in train)


def _returned_indices(model: Backbone, returned_stages: Sequence[int] | None) -> tuple[int, ...]:
    n = len(model.stage_names)
    if returned_stages is None:  # the last four stages, as torchvision's ResNet FPN
        return tuple(range(max(0, n - 4), n))
    idx = tuple(int(i) % n if -n <= int(i) < n else n for i in returned_stages)
    if not idx or any(i >= n for i in idx) or list(idx) != sorted(set(idx)):
        raise ValueError(
            f"returned_stages must be increasing stages in range({n}), got {list(returned_stages)}"
        )
    return idx


def build_fpn_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    returned_stages: Sequence[int] | None = None,
    out_channels: int = 256,
    attn: dict | None = None,
    attn_impl: str | None = None,
    model_kwargs: dict | None = None,
) -> BackboneFPN:
    """A registry model as an FPN backbone for torchvision's two-stage detectors.

    Args:
        name: a registered model (e.g. ``"resnet50_cbam"``, ``"mobilenet_v1_se"``).
        weights: classification weights for the body (ours, the CBAM authors',
            torchvision's; see :func:`convattn.load_checkpoint`); the classifier in the
            file is ignored.
        trainable_layers: units trained, counted from the last stage (the stem last);
            default 3 with ``weights`` and every unit without, as torchvision.
        frozen_bn: frozen BatchNorm outside the attention; default: with ``weights``.
        returned_stages: stage indices fed to the pyramid (default the last four).
        out_channels: channels of every pyramid level.
        attn, attn_impl, model_kwargs: as :func:`convattn.create_model`.
    """
    model = create_model(
        name, attn=attn, attn_impl=attn_impl, features_only=True, **(model_kwargs or {})
    )
    model.out_indices = _returned_indices(model, returned_stages)
    if weights is not None:
        load_checkpoint(model, weights)
    if frozen_bn if frozen_bn is not None else weights is not None:
        freeze_batchnorm(model)
    units = len(trainable_units(model))
    freeze_stages(
        model,
        trainable_layers if trainable_layers is not None else (3 if weights is not None else units),
    )
    return BackboneFPN(StageFeatures(model), out_channels)
