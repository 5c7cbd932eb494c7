"""Attention added to models built elsewhere."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convattn import add_attention
from convattn.layers import CBAM, SqueezeExcite


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _cbam_params(c):
    return 2 * c * (c // 16) + c // 16 + c + 98 + 2


def test_cbam_into_every_torchvision_basic_block():
    model = torchvision.models.resnet18()
    before = _params(model)
    add_attention(model, "cbam")
    widths = [64, 64, 128, 128, 256, 256, 512, 512]
    assert _params(model) == before + sum(_cbam_params(c) for c in widths)
    assert sum(isinstance(m, CBAM) for m in model.modules()) == 8
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_inserted_module_runs_between_last_bn_and_residual_add():
    model = torchvision.models.resnet50()
    add_attention(model, "se", reduction=8)
    block = model.layer1[0]
    assert isinstance(block.bn3, nn.Sequential) and isinstance(block.bn3[1], SqueezeExcite)
    assert block.bn3[1].fc1.out_features == 256 // 8
    calls = []
    block.bn3[1].register_forward_hook(lambda m, i, o: calls.append(o.shape))
    model.eval()(torch.randn(1, 3, 64, 64))
    assert calls == [(1, 256, 16, 16)]


def test_pretrained_weights_survive_insertion():
    model = torchvision.models.resnet18().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_attention(model, "cbam")
    after = model.state_dict()
    for key, value in before.items():  # layer2.1.bn2.weight -> layer2.1.bn2.0.weight
        moved = key.replace("bn2.", "bn2.0.") if ".bn2." in key and "layer" in key else key
        torch.testing.assert_close(after[moved], value)


def test_wrap_places_attention_around_each_stage():
    model = torchvision.models.resnet18()
    before = _params(model)
    add_attention(model, "cbam", placement="wrap")
    ins_outs = [(64, 64), (64, 128), (128, 256), (256, 512)]
    assert _params(model) == before + sum(_cbam_params(a) + _cbam_params(b) for a, b in ins_outs)
    assert isinstance(model.layer3[0], CBAM) and isinstance(model.layer3[2], CBAM)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_errors():
    with pytest.raises(ValueError, match="no residual blocks"):
        add_attention(nn.Sequential(nn.Conv2d(3, 8, 3)), "cbam")
    with pytest.raises(ValueError, match="unknown placement"):
        add_attention(torchvision.models.resnet18(), "cbam", placement="everywhere")
    with pytest.raises(ValueError, match="unknown attention"):
        add_attention(torchvision.models.resnet18(), "cbma")
