"""SSD's feature extractors: the six maps of SSD300's VGG-16, and a registry backbone's
last two stages with four extra pairs; attention on the predicted maps or VGG's stages
(see :mod:`convattn.detection.ssd` for the papers and the deviations)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice
from ..layers import AttnLayer, create_attention
from ..models import create_model, init_weights, load_checkpoint
from ..models.weights import read_state_dict

__all__ = ["PLACEMENTS", "L2Norm", "RegistrySSDFeatures", "VGG16SSDFeatures"]

PLACEMENTS = ("heads", "stages")
#: VGG-16's convolutional stages: output channels of each 3x3 conv ("M": 2x2 max-pool).
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels, times a learned per-channel scale
    (initialised to 20, SSD's conv4_3 rescaling), (N, C, H, W) -> same shape."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.view(1, -1, 1, 1) * F.normalize(x, dim=1)


def _vgg_layers(width: float) -> tuple[nn.Sequential, list[int], list[int]]:
    """VGG-16's ``features`` to conv5_3's ReLU (torchvision's indices, so its weights
    load), the index of each stage's last ReLU, and each stage's channels."""
    layers: list[nn.Module] = []
    ends, chans, cin = [], [], 3
    for v in _VGG16:
        if v == "M":
            ends.append(len(layers) - 1)
            chans.append(cin)
            # pool3 rounds up: 75 -> 38 at 300 px, as SSD300
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=len(ends) == 3))
            continue
        cout = max(1, round(int(v) * width))
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        cin = cout
    ends.append(len(layers) - 1)
    chans.append(cin)
    return nn.Sequential(*layers), ends, chans


def _extra(cin: int, mid: int, cout: int, *, stride: int, padding: int, bn: bool) -> nn.Sequential:
    """1x1 reduction then 3x3 (SSD's conv8..conv11 pairs), each followed by ReLU."""

    def norm(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c)] if bn else []

    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=not bn),
        *norm(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 3, stride=stride, padding=padding, bias=not bn),
        *norm(cout),
        nn.ReLU(inplace=True),
    )


def _attention_list(attn: AttnLayer, channels: list[int]) -> nn.ModuleList | None:
    if attn is None:
        return None
    return nn.ModuleList(create_attention(attn, c) or nn.Identity() for c in channels)


class VGG16SSDFeatures(nn.Module):
    """SSD300's six maps from VGG-16: conv4_3 (L2-normalised), fc7, conv8_2..conv11_2.

    Args:
        width: multiplies every channel count (1.0: VGG-16).
        attn_layer: attention (name or factory ``f(channels)``), or None.
        placement: "heads" (on each output map) or "stages" (after each VGG stage).
    """

    def __init__(
        self, *, width: float = 1.0, attn_layer: AttnLayer = None, placement: str = "heads"
    ):
        super().__init__()
        check_choice("attn_placement", placement, PLACEMENTS)
        self.features, self.stage_ends, stage_chans = _vgg_layers(width)
        c4, c7 = stage_chans[3], max(1, round(1024 * width))
        w = [max(1, round(c * width)) for c in (256, 512, 128, 256)]
        self.stage_attn = _attention_list(
            attn_layer if placement == "stages" else None, stage_chans
        )
        self.l2norm = L2Norm(c4)
        self.fc = nn.Sequential(
            nn.MaxPool2d(3, 1, padding=1),  # pool5 at stride 1
            nn.Conv2d(stage_chans[4], c7, 3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(c7, c7, 1),
            nn.ReLU(inplace=True),
        )
        self.extras = nn.ModuleList(
            [
                _extra(c7, w[0], w[1], stride=2, padding=1, bn=False),
                _extra(w[1], w[2], w[3], stride=2, padding=1, bn=False),
                _extra(w[3], w[2], w[3], stride=1, padding=0, bn=False),
                _extra(w[3], w[2], w[3], stride=1, padding=0, bn=False),
            ]
        )
        self.out_channels = [c4, c7, w[1], w[3], w[3], w[3]]
        self.head_attn = _attention_list(
            attn_layer if placement == "heads" else None, self.out_channels
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outs, stage = [], 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.stage_ends[stage]:
                if self.stage_attn is not None:
                    x = self.stage_attn[stage](x)
                if stage == 3:
                    outs.append(self.l2norm(x))  # conv4_3, stride 8
                stage += 1
        x = self.fc(x)
        outs.append(x)
        for extra in self.extras:
            x = extra(x)
            outs.append(x)
        if self.head_attn is not None:
            outs = [a(f) for a, f in zip(self.head_attn, outs, strict=True)]
        return OrderedDict((str(i), f) for i, f in enumerate(outs))

    def load_vgg_weights(self, path: str | Path) -> int:
        """Load torchvision's VGG-16 ``features.*`` tensors (other keys are ignored);
        returns how many were loaded."""
        state = read_state_dict(path)
        own = self.features.state_dict()
        fits = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        bad = [k for k in own if k not in fits or fits[k].shape != own[k].shape]
        if bad:
            raise ValueError(f"{path} holds no VGG-16 features of these shapes: {bad[:6]}")
        self.features.load_state_dict({k: fits[k] for k in own})
        return len(own)


class RegistrySSDFeatures(nn.Module):
    """A registry backbone's last two stages and four extra pairs with BatchNorm.

    Args:
        name: a registered model (``"mobilenet_v1"``, ``"mobilenet_v1_cbam"``, ...).
        attn_layer: attention on every output map ("heads"), or None.
        weights: classification weights for the backbone.
        model_kwargs: further :func:`convattn.create_model` arguments.
    """

    def __init__(
        self,
        name: str,
        *,
        attn_layer: AttnLayer = None,
        weights: str | Path | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.body = create_model(
            name, features_only=True, out_indices=(-2, -1), **(model_kwargs or {})
        )
        if weights is not None:
            load_checkpoint(self.body, weights)
        chans = [self.body.feature_info[i].num_chs for i in self.body.out_indices]
        sizes = [512, 256, 256, 128]
        cin, extras = chans[-1], []
        for cout in sizes:
            extras.append(_extra(cin, cout // 2, cout, stride=2, padding=1, bn=True))
            cin = cout
        self.extras = nn.ModuleList(extras)
        init_weights(self.extras)
        self.out_channels = [*chans, *sizes]
        self.head_attn = _attention_list(attn_layer, self.out_channels)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outs = list(self.body(x))
        x = outs[-1]
        for extra in self.extras:
            x = extra(x)
            outs.append(x)
        if self.head_attn is not None:
            outs = [a(f) for a, f in zip(self.head_attn, outs, strict=True)]
        return OrderedDict((str(i), f) for i, f in enumerate(outs))
