"""Every registered model, generated from a table rather than copied per variant.

Paper figures (parameters in millions, GFLOPs, ImageNet top-1/top-5 error in %) come from
the CBAM paper's Table 4 (Woo et al., ECCV 2018) unless ``source`` says otherwise; the
CBAM ResNet-18/34 counts are those of the authors' released code.
"""

from __future__ import annotations

from typing import Any

from .blocks import BasicBlock, Bottleneck, SKBottleneck, SplitBottleneck
from .mobilenet import MobileNetV1
from .registry import ModelSpec, register_model
from .resnet import ResNet

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TABLE4 = "CBAM paper, Table 4"
AUTHORS = "CBAM authors' code (parameter count)"

# name -> (fixed builder arguments, {attention suffix: paper figures})
_R = {"block": Bottleneck}
_ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"block": BasicBlock, "layers": (2, 2, 2, 2)},
    "resnet34": {"block": BasicBlock, "layers": (3, 4, 6, 3)},
    "resnet50": {**_R, "layers": (3, 4, 6, 3)},
    "resnet101": {**_R, "layers": (3, 4, 23, 3)},
    "resnet152": {**_R, "layers": (3, 8, 36, 3)},
    "wide_resnet18_1p5": {"block": BasicBlock, "layers": (2, 2, 2, 2), "widen": 1.5},
    "wide_resnet18_2": {"block": BasicBlock, "layers": (2, 2, 2, 2), "widen": 2.0},
    "resnext50_32x4d": {**_R, "layers": (3, 4, 6, 3), "groups": 32, "base_width": 4},
    "resnext101_32x4d": {**_R, "layers": (3, 4, 23, 3), "groups": 32, "base_width": 4},
}
_CIFAR: dict[str, dict[str, Any]] = {
    f"cifar_resnet{6 * n + 2}": {
        "block": BasicBlock,
        "layers": (n, n, n),
        "widths": (16, 32, 64),
        "stem": "cifar",
        "stem_width": 16,
        "shortcut": "pad",
    }
    for n in (3, 5, 9, 18)
}
_CIFAR["cifar_resnet18"] = {"block": BasicBlock, "layers": (2, 2, 2, 2), "stem": "cifar"}

_ATTN = {"": {}, "_se": {"attn_layer": "se"}, "_cbam": {"attn_layer": "cbam"}}
_BAM = {"_bam": {"stage_attn": "bam"}}

# (params M, GFLOPs, top-1 err, top-5 err, source)
_PAPER: dict[str, tuple[float, float | None, float | None, float | None, str]] = {
    "resnet18_cbam": (11.78, None, None, None, AUTHORS),
    "resnet34_cbam": (21.96, None, None, None, AUTHORS),
    "resnet50": (25.56, 3.858, 24.56, 7.50, TABLE4),
    "resnet50_se": (28.09, 3.860, 23.14, 6.70, TABLE4),
    "resnet50_cbam": (28.09, 3.864, 22.66, 6.31, TABLE4),
    "resnet101": (44.55, 7.570, 23.38, 6.88, TABLE4),
    "resnet101_cbam": (49.33, 7.581, 21.51, 5.69, TABLE4),
    "wide_resnet18_2": (45.62, 6.696, 25.63, 8.20, TABLE4),
    "wide_resnet18_2_cbam": (45.97, 6.697, 24.84, 7.63, TABLE4),
    "resnext50_32x4d": (25.03, 3.768, 22.85, 6.48, TABLE4),
    "resnext50_32x4d_cbam": (27.56, 3.774, 21.92, 5.91, TABLE4),
    "mobilenet_v1": (4.23, 0.569, 31.39, 11.51, TABLE4),
    "mobilenet_v1_cbam": (5.07, 0.576, 29.01, 9.99, TABLE4),
    "skresnet50": (27.5, 4.47, None, None, "SKNet paper, Table 2 (SKNet-50)"),
    "resnest50": (27.5, 5.39, None, None, "ResNeSt paper (ResNeSt-50)"),
}


def _register(name: str, builder: Any, fixed: dict[str, Any], **meta: Any) -> None:
    params, gflops, top1, top5, source = _PAPER.get(name, (None, None, None, None, ""))
    register_model(
        ModelSpec(
            name=name,
            builder=builder,
            fixed=fixed,
            paper_params_m=params,
            paper_gflops=gflops,
            paper_top1_err=top1,
            paper_top5_err=top5,
            source=source,
            **meta,
        )
    )


# The CBAM paper's GFLOPs for bottleneck ResNets and ResNeXts count the original layout.
_STRIDE_IN_1X1 = {"paper_layout": {"stride_in_1x1": True}}
for arch, fixed in _ARCHS.items():
    layout = _STRIDE_IN_1X1 if fixed["block"] is Bottleneck else {}
    for suffix, attn in {**_ATTN, **_BAM}.items():
        _register(arch + suffix, ResNet, {**fixed, **attn}, **layout)

cifar_meta = {"input_size": (3, 32, 32), "mean": CIFAR_MEAN, "std": CIFAR_STD, "num_classes": 10}
for arch, fixed in _CIFAR.items():
    for suffix, attn in {**_ATTN, **_BAM}.items():
        _register(arch + suffix, ResNet, {**fixed, **attn}, **cifar_meta)

for arch, width in {"mobilenet_v1": 1.0, "mobilenet_v1_0p7": 0.7}.items():
    for suffix, attn in _ATTN.items():
        _register(arch + suffix, MobileNetV1, {"width_mult": width, **attn})

_register(
    "skresnet50",
    ResNet,
    {"block": SKBottleneck, "layers": (3, 4, 6, 3), "groups": 32, "base_width": 4},
)
_register(
    "resnest50",
    ResNet,
    {
        "block": SplitBottleneck,
        "layers": (3, 4, 6, 3),
        "stem": "deep",
        "stem_width": 64,
        "shortcut": "avg",
    },
)
