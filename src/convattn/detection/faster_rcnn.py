"""Faster R-CNN with an FPN on any registry backbone: torchvision's detector, our body.

Papers: Ren et al., "Faster R-CNN: Towards Real-Time Object Detection with Region
Proposal Networks", NeurIPS 2015, https://arxiv.org/abs/1506.01497; Lin et al., "Feature
Pyramid Networks for Object Detection", CVPR 2017, https://arxiv.org/abs/1612.03144;
Woo et al., "CBAM", ECCV 2018, https://arxiv.org/abs/1807.06521, Sec. 4.3 and Table 6
(COCO: ResNet-50 27.0 -> 28.1, ResNet-101 29.1 -> 30.8 mAP@[.5:.95] with CBAM).

The detector is :class:`torchvision.models.detection.FasterRCNN` unchanged; only the
backbone (:func:`~convattn.detection.backbones.build_fpn_backbone`), the anchor sizes
and the RoI pooler's level names are chosen here. Anchors follow torchvision's FPN
defaults, one size per level of ``8 x`` its stride (32, 64, 128, 256, 512 px at strides
4 to 64) and aspect ratios 0.5, 1, 2, so backbones with other strides (MobileNet, CIFAR
ResNets) get anchors that fit their maps. Deviation from the CBAM paper: it names no
feature pyramid, and its ResNet-50 baseline (27.0 mAP) is in the range of Ren et al.'s
single-level detector rather than of FPN ones, so absolute figures here are not
comparable with its table; the comparison that carries over is baseline vs CBAM under
one recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from .backbones import BackboneFPN, build_fpn_backbone

__all__ = ["build_faster_rcnn", "fpn_anchor_generator"]


def fpn_anchor_generator(backbone: BackboneFPN) -> AnchorGenerator:
    """One anchor size per pyramid level (8 x the level's stride), ratios 0.5, 1, 2."""
    sizes = tuple((8 * s,) for s in backbone.strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def build_faster_rcnn(
    backbone: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    returned_stages: Sequence[int] | None = None,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    min_size: int = 800,
    max_size: int = 1333,
    attn: dict | None = None,
    attn_impl: str | None = None,
    model_kwargs: dict | None = None,
    **detector_kwargs: object,
) -> FasterRCNN:
    """torchvision's Faster R-CNN with an FPN on the registry model ``backbone``.

    Args:
        backbone: a registered model name (``"resnet50_cbam"``, ``"resnet101"``, ...).
        num_classes: object classes plus one for the background (label 0).
        weights: classification weights for the backbone (see
            :func:`~convattn.detection.backbones.build_fpn_backbone`).
        trainable_layers, frozen_bn, returned_stages: as ``build_fpn_backbone``
            (torchvision's defaults: 3 trainable units and frozen BN with weights).
        fpn_channels: channels of the pyramid (256 as torchvision).
        representation_size: width of the two-layer box head (1024 as torchvision).
        min_size, max_size: torchvision's resizing of the input images.
        attn, attn_impl, model_kwargs: as :func:`convattn.create_model`.
        **detector_kwargs: further :class:`~torchvision.models.detection.FasterRCNN`
            arguments (``box_score_thresh``, ``rpn_batch_size_per_image``, ...).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too: need >= 2, got {num_classes}")
    body = build_fpn_backbone(
        backbone,
        weights=weights,
        trainable_layers=trainable_layers,
        frozen_bn=frozen_bn,
        returned_stages=returned_stages,
        out_channels=fpn_channels,
        attn=attn,
        attn_impl=attn_impl,
        model_kwargs=model_kwargs,
    )
    pool = MultiScaleRoIAlign(body.level_names, output_size=7, sampling_ratio=2)
    head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    return FasterRCNN(
        body,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=fpn_anchor_generator(body),
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        **detector_kwargs,
    )
