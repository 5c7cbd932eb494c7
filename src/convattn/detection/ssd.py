"""SSD with a VGG-16 or a registry backbone (MobileNet v1), with CBAM or SE.

Papers: Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016,
https://arxiv.org/abs/1512.02325 (SSD300: VGG-16 to conv5_3 with conv4_3 L2-normalised
and rescaled, pool5 as 3x3/1, fc6 as a 3x3 convolution dilated 6, fc7 as 1x1, four extra
1x1-3x3 pairs; six maps at strides 8 to 300); Simonyan and Zisserman, "Very Deep
Convolutional Networks", 2014, https://arxiv.org/abs/1409.1556 (VGG-16); Woo et al.,
"CBAM", ECCV 2018, https://arxiv.org/abs/1807.06521, Sec. 4.3 and Table 7 (VOC 2007:
VGG-16 StairNet 78.9 -> 79.3, MobileNet StairNet 70.1 -> 70.5 mAP with CBAM).

The detector is :class:`torchvision.models.detection.SSD` with a
:class:`~torchvision.models.detection.anchor_utils.DefaultBoxGenerator`; the feature
extractors (:mod:`convattn.detection.ssd_features`) are built from our modules.
Attention placement (``attn_placement``):

- ``"heads"``: one module on every map the box predictors read. The CBAM paper puts
  CBAM "right before every classifier" of StairNet, on the fused maps the predictors
  read; here the maps are SSD's own.
- ``"stages"``: VGG-16 only, one module after each of its five convolutional stages
  (after the last ReLU, before the pooling).

Registry backbones (``"mobilenet_v1"``, ``"mobilenet_v1_cbam"``, ...) bring their own
attention in every block; their last two stages (strides 16 and 32 for MobileNet) and
four extra 1x1-3x3/2 pairs with BatchNorm feed the predictors.

Deviations: StairNet's top-down fusion is not built (plain SSD; the issue asks for
torchvision's detectors). The inputs are normalised by ImageNet's mean and std as every
model here, not Caffe's BGR means. With VGG weights, fc6 and fc7 start from their
initialisation (SSD subsamples VGG's fully connected weights into them). ``width``
scales every VGG channel count (1.0 is VGG-16), for small experiments only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD

from .._validate import check_choice
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..layers import get_attention
from .ssd_features import PLACEMENTS, L2Norm, RegistrySSDFeatures, VGG16SSDFeatures

__all__ = [
    "PLACEMENTS",
    "L2Norm",
    "RegistrySSDFeatures",
    "VGG16SSDFeatures",
    "build_ssd",
    "check_ssd_arguments",
]

#: SSD300's default boxes on VOC (Liu et al., Sec. 2.2 and 3.1).
_SSD300_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
_SSD300_SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
_SSD300_STEPS = [8, 16, 32, 64, 100, 300]


def check_ssd_arguments(backbone: str, *, attn: str | None, attn_placement: str, size: int) -> None:
    """Refuse SSD arguments that do not go together (before anything is built)."""
    check_choice("attn_placement", attn_placement, PLACEMENTS)
    if backbone == "vgg16" and size < 268:
        raise ValueError(f"the SSD300 layout of VGG-16 needs size >= 268, got {size}")
    if backbone != "vgg16" and attn_placement == "stages" and attn is not None:
        raise ValueError(
            f"attention in {backbone!r}'s stages comes with its registry name (e.g. "
            f"'{backbone}_cbam'); attn_placement='heads' adds it on the predicted maps"
        )


def build_ssd(
    backbone: str,
    num_classes: int,
    *,
    attn: str | None = None,
    attn_options: dict | None = None,
    attn_placement: str = "heads",
    size: int = 300,
    width: float = 1.0,
    weights: str | Path | None = None,
    model_kwargs: dict | None = None,
    **detector_kwargs: Any,
) -> SSD:
    """torchvision's SSD on ``"vgg16"`` (SSD300) or a registered backbone.

    Args:
        backbone: ``"vgg16"`` or a registry name (e.g. ``"mobilenet_v1_cbam"``).
        num_classes: object classes plus one for the background (label 0).
        attn: ``"cbam"``, ``"se"`` (any attention name) or None; ``attn_options`` are
            its keyword arguments (``{"kernel_size": 3}``).
        attn_placement: "heads" or "stages" (VGG-16 only); see the module docstring.
        size: the square input side (VGG-16's SSD300 layout needs >= 268 px).
        width: VGG channel multiplier (1.0 is VGG-16).
        weights: torchvision VGG-16 weights (``features.*``) or the registry backbone's
            classification weights.
        model_kwargs: registry backbones' builder arguments.
        **detector_kwargs: further :class:`~torchvision.models.detection.SSD` arguments.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too: need >= 2, got {num_classes}")
    check_ssd_arguments(backbone, attn=attn, attn_placement=attn_placement, size=size)
    layer = None if attn is None else get_attention(attn, **(attn_options or {}))
    if backbone == "vgg16":
        body: nn.Module = VGG16SSDFeatures(width=width, attn_layer=layer, placement=attn_placement)
        if weights is not None:
            body.load_vgg_weights(weights)
        anchors = DefaultBoxGenerator(
            _SSD300_RATIOS,
            scales=_SSD300_SCALES,
            steps=[round(s * size / 300) for s in _SSD300_STEPS],
        )
    else:
        body = RegistrySSDFeatures(
            backbone, attn_layer=layer, weights=weights, model_kwargs=model_kwargs
        )
        anchors = DefaultBoxGenerator([[2, 3]] * len(body.out_channels))
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    return SSD(
        body, anchors, (size, size), num_classes, image_mean=mean, image_std=std, **detector_kwargs
    )
