"""Every registered model, generated from tables rather than copied per variant.

Paper figures (parameters in millions, GFLOPs, ImageNet top-1/top-5 error in %) come from
the CBAM paper's Table 4 (Woo et al., ECCV 2018) unless ``source`` says otherwise; the
CBAM ResNet-18/34 counts are those of the authors' released code.
:func:`register_zoo` runs once, when :mod:`convattn.models` is imported.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..constants import CIFAR10_STATS
from .blocks import BasicBlock, Bottleneck
from .mobilenet import MobileNetV1
from .registry import ModelSpec, register_model
from .resnet import ResNet

__all__ = ["PAPER", "PaperFigures", "register_zoo"]

TABLE4 = "CBAM paper, Table 4"
AUTHORS = "CBAM authors' code (parameter count)"


class PaperFigures(NamedTuple):
    """A model's figures as a paper prints them (``None`` where it gives none)."""

    params_m: float
    gflops: float | None = None
    top1_err: float | None = None
    top5_err: float | None = None
    source: str = TABLE4


PAPER: dict[str, PaperFigures] = {
    "resnet18_cbam": PaperFigures(11.78, source=AUTHORS),
    "resnet34_cbam": PaperFigures(21.96, source=AUTHORS),
    "resnet50": PaperFigures(25.56, 3.858, 24.56, 7.50),
    "resnet50_se": PaperFigures(28.09, 3.860, 23.14, 6.70),
    "resnet50_cbam": PaperFigures(28.09, 3.864, 22.66, 6.31),
    "resnet101": PaperFigures(44.55, 7.570, 23.38, 6.88),
    "resnet101_cbam": PaperFigures(49.33, 7.581, 21.51, 5.69),
    "wide_resnet18_2": PaperFigures(45.62, 6.696, 25.63, 8.20),
    "wide_resnet18_2_cbam": PaperFigures(45.97, 6.697, 24.84, 7.63),
    "resnext50_32x4d": PaperFigures(25.03, 3.768, 22.85, 6.48),
    "resnext50_32x4d_cbam": PaperFigures(27.56, 3.774, 21.92, 5.91),
    "mobilenet_v1": PaperFigures(4.23, 0.569, 31.39, 11.51),
    "mobilenet_v1_cbam": PaperFigures(5.07, 0.576, 29.01, 9.99),
    "skresnet50": PaperFigures(27.5, 4.47, source="SKNet paper, Table 2 (SKNet-50)"),
    "resnest50": PaperFigures(27.5, 5.39, source="ResNeSt paper (ResNeSt-50)"),
}

_BOTTLENECK = {"block": Bottleneck}
_IMAGENET_RESNETS: dict[str, dict[str, Any]] = {
    "resnet18": {"block": BasicBlock, "layers": (2, 2, 2, 2)},
    "resnet34": {"block": BasicBlock, "layers": (3, 4, 6, 3)},
    "resnet50": {**_BOTTLENECK, "layers": (3, 4, 6, 3)},
    "resnet101": {**_BOTTLENECK, "layers": (3, 4, 23, 3)},
    "resnet152": {**_BOTTLENECK, "layers": (3, 8, 36, 3)},
    "wide_resnet18_1p5": {"block": BasicBlock, "layers": (2, 2, 2, 2), "widen": 1.5},
    "wide_resnet18_2": {"block": BasicBlock, "layers": (2, 2, 2, 2), "widen": 2.0},
    "resnext50_32x4d": {**_BOTTLENECK, "layers": (3, 4, 6, 3), "groups": 32, "base_width": 4},
    "resnext101_32x4d": {**_BOTTLENECK, "layers": (3, 4, 23, 3), "groups": 32, "base_width": 4},
}
_CIFAR_RESNETS: dict[str, dict[str, Any]] = {
    **{
        f"cifar_resnet{6 * n + 2}": {
            "block": BasicBlock,
            "layers": (n, n, n),
            "widths": (16, 32, 64),
            "stem": "cifar",
            "stem_width": 16,
            "shortcut": "pad",
        }
        for n in (3, 5, 9, 18)
    },
    "cifar_resnet18": {"block": BasicBlock, "layers": (2, 2, 2, 2), "stem": "cifar"},
}
_CIFAR_META = {
    "input_size": (3, 32, 32),
    "mean": CIFAR10_STATS[0],
    "std": CIFAR10_STATS[1],
    "num_classes": 10,
}
#: Name suffix -> the attention it adds: in every block, or after stages 1-3 (BAM).
_BLOCK_ATTN = {"": {}, "_se": {"attn_layer": "se"}, "_cbam": {"attn_layer": "cbam"}}
_STAGE_ATTN = {"_bam": {"stage_attn_layer": "bam"}}
# The CBAM paper's GFLOPs for bottleneck ResNets and ResNeXts count the original layout.
_STRIDE_IN_1X1 = {"stride_in_1x1": True}


def _register(name: str, builder: Any, fixed: dict[str, Any], **meta: Any) -> None:
    paper = PAPER.get(name)
    figures = {} if paper is None else {f"paper_{k}": v for k, v in paper._asdict().items()}
    figures["source"] = figures.pop("paper_source", "")
    register_model(ModelSpec(name=name, builder=builder, fixed=fixed, **figures, **meta))


def _register_resnets() -> None:
    for arch, fixed in _IMAGENET_RESNETS.items():
        layout = _STRIDE_IN_1X1 if fixed["block"] is Bottleneck else {}
        for suffix, attn in {**_BLOCK_ATTN, **_STAGE_ATTN}.items():
            _register(arch + suffix, ResNet, {**fixed, **attn}, paper_layout=layout)
    for arch, fixed in _CIFAR_RESNETS.items():
        for suffix, attn in {**_BLOCK_ATTN, **_STAGE_ATTN}.items():
            _register(arch + suffix, ResNet, {**fixed, **attn}, **_CIFAR_META)
    sk = {**_BOTTLENECK, "layers": (3, 4, 6, 3), "groups": 32, "base_width": 4, "middle": "sk"}
    _register("skresnet50", ResNet, sk)
    resnest = {**_BOTTLENECK, "layers": (3, 4, 6, 3), "middle": "splat", "stem": "deep"}
    resnest["shortcut"] = "avg"
    _register("resnest50", ResNet, resnest)


def register_zoo() -> None:
    """Register every model of the zoo (ResNets of every family, MobileNet v1)."""
    _register_resnets()
    for arch, width in {"mobilenet_v1": 1.0, "mobilenet_v1_0p7": 0.7}.items():
        for suffix, attn in _BLOCK_ATTN.items():
            _register(arch + suffix, MobileNetV1, {"width_mult": width, **attn})
