"""Every registered model: shapes, finiteness, gradients, features, tracing, interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import cached_model
from convattn.layers import BAM, ChannelAttention, SpatialAttention
from convattn.models import create_model, get_model_spec, list_models

ALL = list_models()


def _input(name: str, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 32, 32, generator=g)  # 32 px: the smallest size supported


def test_registry_has_every_architecture_and_attention():
    for arch in (
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "wide_resnet18_1p5",
        "wide_resnet18_2",
        "resnext50_32x4d",
        "resnext101_32x4d",
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet56",
        "cifar_resnet110",
        "cifar_resnet18",
    ):
        for suffix in ("", "_se", "_cbam", "_bam"):
            assert arch + suffix in ALL
    for name in ("mobilenet_v1", "mobilenet_v1_se", "mobilenet_v1_cbam", "mobilenet_v1_0p7_cbam"):
        assert name in ALL
    assert {"skresnet50", "resnest50"} <= set(ALL)
    assert list_models("*_cbam") == [n for n in ALL if n.endswith("_cbam")]


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_finite_in_train_and_eval(name):
    model = cached_model(name)
    x = _input(name)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, get_model_spec(name).num_classes)
        assert torch.isfinite(out).all()


def _all_hidden_units_off(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Names of the channel MLPs (SE, CBAM's channel attention, BAM) whose every hidden ReLU
    unit is off (pre-activation <= 0) for every pooled vector of the batch ``x``, read from
    ``fc1``'s output in an eager forward pass (the fused kernels do not call ``fc1``)."""
    pre: dict[str, torch.Tensor] = {}
    hooks = [
        m.fc1.register_forward_hook(lambda _, __, out, n=name: pre.__setitem__(n, out))
        for name, m in model.named_modules()
        if isinstance(m, ChannelAttention | BAM)
    ]
    impls = {m: m.impl for m in model.modules() if hasattr(m, "impl")}
    try:
        for m in impls:
            m.impl = "eager"
        with torch.no_grad():
            model(x)
    finally:
        for m, impl in impls.items():
            m.impl = impl
        for h in hooks:
            h.remove()
    return {name for name, out in pre.items() if (out <= 0).all()}


def _zero_at_init(model: nn.Module, x: torch.Tensor) -> tuple[set[str], set[str]]:
    """(exactly zero, zero up to rounding): the parameters whose gradient provably vanishes
    at initialisation for the batch ``x``.

    Exactly zero:
    - the spatial convolution of CBAM: the BatchNorm after it starts with weight 0 (the
      authors' initialisation, every spatial gate at sigmoid(bias)), and the gradient into
      the convolution is scaled by that weight;
    - ``fc1`` and ``fc2.weight`` of a channel MLP whose hidden ReLU units are all off for
      the whole batch (and BAM's channel BatchNorm weight, whose input is then constantly
      0). ``b0`` starts at 0 and the pooled vectors of a post-ReLU map (BAM after a
      stage, MobileNet's ``attn_in``) are positive and alike for every sample, so a unit
      is on or off for nearly the whole batch; with C // 16 = 1 or 2 hidden units (16 to
      47 channels) all are off in a fair share of initialisations, e.g. BAM after the
      first stage of the CIFAR ResNets.
    Zero up to rounding: ResNeSt's ``fc1.bias`` (kept for weight compatibility), which
    feeds a training-mode BatchNorm: the batch mean it subtracts removes any bias."""
    exact, rounding = set(), set()
    dead = _all_hidden_units_off(model, x)
    for name, m in model.named_modules():
        if isinstance(m, SpatialAttention) and m.bn is not None and not m.bn.weight.any():
            exact |= {f"{name}.{p}" for p, _ in m.named_parameters() if not p.startswith("bn.")}
        if name in dead:
            exact |= {f"{name}.fc1.weight", f"{name}.fc1.bias", f"{name}.fc2.weight"}
            if isinstance(m, BAM):
                exact.add(f"{name}.channel_bn.weight")
        if name.endswith("splat"):
            rounding.add(f"{name}.fc1.bias")
    return exact, rounding


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_nonzero_gradient_unless_provably_zero(name):
    model = cached_model(name).train()
    x = _input(name)
    model.zero_grad(set_to_none=True)
    model(x).logsumexp(dim=1).sum().backward()
    exact, rounding = _zero_at_init(model, x)
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if pname in exact:
            assert not p.grad.any(), pname
        elif pname not in rounding:
            assert p.grad.any(), pname
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ALL)
def test_stage_outputs_match_feature_info(name):
    model = cached_model(name).eval()
    x = _input(name)
    with torch.no_grad():
        outs = model.forward_stages(x)
    assert len(outs) == len(model.feature_info)
    for out, info in zip(outs, model.feature_info, strict=True):
        assert out.shape[1] == info.num_chs
        assert x.shape[-1] // out.shape[-1] == info.reduction
    assert model.num_features == model.feature_info[-1].num_chs


@pytest.mark.parametrize("name", ALL)
def test_trace_matches_eager(name):
    model = cached_model(name).eval()
    x = _input(name)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        x2 = _input(name) * 0.5
        torch.testing.assert_close(traced(x2), model(x2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet50_cbam", "cifar_resnet20_bam", "mobilenet_v1_se"])
def test_features_only_returns_selected_stages(name):
    model = create_model(name, features_only=True, out_indices=(-2, -1)).eval()
    assert model.fc is None
    outs = model(_input(name))
    assert isinstance(outs, list) and len(outs) == 2
    for out, info in zip(outs, model.feature_info[-2:], strict=True):
        assert out.shape[1] == info.num_chs
    with pytest.raises(ValueError, match="out_indices"):
        create_model(name, features_only=True, out_indices=(9,))


@pytest.mark.parametrize("size", [33, 48, 77])
def test_any_input_size_from_32_px(size):
    model = cached_model("resnet18_cbam").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size + 5)).shape == (1, 1000)


def test_channels_last_matches_contiguous():
    model = cached_model("resnet18_cbam").eval()
    x = _input("resnet18_cbam")
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_head_interface():
    model = create_model("cifar_resnet20_cbam")
    x = _input("cifar_resnet20_cbam")
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)


def test_attention_sits_after_last_bn_before_residual_add():
    # Replace the attention with a recorder; it must see bn3's output, and the block output
    # must be relu(attn(bn3) + shortcut).
    model = create_model("resnet50_cbam").eval()
    block = model.layer2[0]
    seen = {}

    class Probe(nn.Module):
        def forward(self, t):
            seen["in"] = t
            return 2 * t

    block.attn = Probe()
    x = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        y = block(x)
        mid = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
        out = block.bn3(block.conv3(mid))
        torch.testing.assert_close(seen["in"], out)
        torch.testing.assert_close(y, torch.relu(2 * out + block.downsample(x)))


def test_bam_sits_between_stages_only():
    model = create_model("resnet50_bam")
    assert [n for n, m in model.named_modules() if isinstance(m, BAM)] == [
        "layer1.attn",
        "layer2.attn",
        "layer3.attn",
    ]


def test_initialisation_follows_authors_code():
    model = create_model("resnet18_cbam", zero_init_last=True)
    blk = model.layer1[0]
    assert torch.all(blk.attn.spatial.bn.weight == 0)
    assert torch.all(blk.bn2.weight == 0) and torch.all(blk.bn1.weight == 1)
    w = model.layer3[0].conv1.weight  # Kaiming fan-out: std = sqrt(2 / (out * k * k))
    assert w.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert torch.all(blk.attn.channel.fc1.bias == 0)
    plain = create_model("resnet18_cbam")
    assert torch.all(plain.layer1[0].bn2.weight == 1)


def _attention_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".attn." in k}


@pytest.mark.parametrize("name", ["cifar_resnet20_cbam", "cifar_resnet20_bam"])
def test_attn_init_pytorch_keeps_the_attention_as_pytorch_constructed_it(name, monkeypatch):
    torch.manual_seed(0)
    model = create_model(name, attn_init="pytorch")
    from convattn.models import resnet

    monkeypatch.setattr(resnet, "init_weights", lambda *a, **k: None)
    torch.manual_seed(0)
    built = _attention_params(create_model(name))  # construction-time values, no init
    got = _attention_params(model)
    assert got and got.keys() == built.keys()
    for key, value in got.items():
        if key.endswith("spatial.bn.weight"):  # the constructor's zero is the authors'
            assert torch.all(built[key] == 0) and torch.all(value == 1), key
        else:
            torch.testing.assert_close(value, built[key], rtol=0, atol=0, msg=key)


def test_attn_init_pytorch_and_authors_give_their_documented_distributions():
    # PyTorch: Linear and Conv2d uniform within 1 / sqrt(fan_in) (biases too), BN weight 1.
    # Authors: spatial conv Kaiming normal with fan-out (1 * 7 * 7), biases 0, BN weight 0.
    torch.manual_seed(0)
    pt = create_model("cifar_resnet20_cbam", attn_init="pytorch")
    torch.manual_seed(0)
    au = create_model("cifar_resnet20_cbam", attn_init="authors")
    torch.manual_seed(0)
    default = create_model("cifar_resnet20_cbam")
    for k, v in default.state_dict().items():
        torch.testing.assert_close(au.state_dict()[k], v, rtol=0, atol=0, msg=k)
    blocks = [b for stage in (pt.layer1, pt.layer2, pt.layer3) for b in stage]
    spatial = torch.cat([b.attn.spatial.conv.weight.flatten() for b in blocks])
    assert spatial.abs().max().item() <= 1 / (2 * 49) ** 0.5
    fc1 = blocks[0].attn.channel.fc1  # 16 -> 1
    assert fc1.bias.abs().max().item() <= 1 / 16**0.5 and torch.any(fc1.bias != 0)
    assert all(torch.all(b.attn.spatial.bn.weight == 1) for b in blocks)
    ablocks = [b for stage in (au.layer1, au.layer2, au.layer3) for b in stage]
    aspatial = torch.cat([b.attn.spatial.conv.weight.flatten() for b in ablocks])
    assert aspatial.std().item() == pytest.approx((2 / 49) ** 0.5, rel=0.1)
    assert all(torch.all(b.attn.spatial.bn.weight == 0) for b in ablocks)
    assert all(torch.all(b.attn.channel.fc1.bias == 0) for b in ablocks)
    with pytest.raises(ValueError, match="attn_init"):
        create_model("cifar_resnet20_cbam", attn_init="xavier")


def test_attn_init_authors_bn1_changes_only_the_spatial_batchnorm_weight():
    torch.manual_seed(0)
    au = create_model("cifar_resnet20_cbam", attn_init="authors")
    torch.manual_seed(0)
    bn1 = create_model("cifar_resnet20_cbam", attn_init="authors-bn1")
    changed = [k for k, v in au.state_dict().items() if not torch.equal(v, bn1.state_dict()[k])]
    assert changed and all(k.endswith("attn.spatial.bn.weight") for k in changed)
    assert all(torch.all(bn1.state_dict()[k] == 1) for k in changed)


@pytest.mark.parametrize("attn_init,zero", [("authors", True), ("authors-bn1", False)])
def test_a_zero_spatial_batchnorm_weight_stops_the_spatial_conv_learning_at_first(attn_init, zero):
    # sigmoid(0 * bn_hat(conv(maps)) + 0): the gate is 0.5 whatever the conv, whose weight
    # therefore gets no gradient until the BatchNorm weight has moved from 0.
    torch.manual_seed(0)
    model = create_model("cifar_resnet20_cbam", attn_init=attn_init, attn_impl="eager")
    model(torch.randn(4, 3, 32, 32)).square().sum().backward()
    convs = [m.attn.spatial.conv.weight.grad for m in model.modules() if hasattr(m, "attn")]
    bns = [m.attn.spatial.bn.weight.grad for m in model.modules() if hasattr(m, "attn")]
    assert len(convs) == 9 and all(g.abs().max() > 0 for g in bns)
    assert all((g.abs().max() == 0) == zero for g in convs)


def test_create_model_errors():
    with pytest.raises(ValueError, match="closest: resnet50_cbam"):
        create_model("resnet50_cbma")
    with pytest.raises(ValueError, match="fixes attn_layer='cbam'"):
        create_model("resnet50_cbam", attn_layer="se")
    with pytest.raises(TypeError):
        create_model("resnet18", not_an_argument=1)
    # A keyword equal to the fixed value is fine, and attention options pass through.
    m = create_model("resnet18_cbam", attn_layer="cbam", attn={"kernel_size": 3})
    assert m.layer1[0].attn.spatial.conv.kernel_size == (3, 3)


# ImageNet top-1 / top-5 error (%) of the CBAM paper's Table 4, the only models with errors.
PAPER_ERRORS = {
    "resnet50": (24.56, 7.50),
    "resnet50_se": (23.14, 6.70),
    "resnet50_cbam": (22.66, 6.31),
    "resnet101": (23.38, 6.88),
    "resnet101_cbam": (21.51, 5.69),
    "wide_resnet18_2": (25.63, 8.20),
    "wide_resnet18_2_cbam": (24.84, 7.63),
    "resnext50_32x4d": (22.85, 6.48),
    "resnext50_32x4d_cbam": (21.92, 5.91),
    "mobilenet_v1": (31.39, 11.51),
    "mobilenet_v1_cbam": (29.01, 9.99),
}


def test_registry_carries_table_4_errors_and_no_others():
    for name in ALL:
        spec = get_model_spec(name)
        got = (spec.paper_top1_err, spec.paper_top5_err)
        assert got == PAPER_ERRORS.get(name, (None, None)), name


@pytest.mark.parametrize("name", ["cifar_resnet20_cbam", "mobilenet_v1_0p7_se"])
def test_model_carries_its_spec_and_maps_its_input_size_to_its_classes(name):
    model = cached_model(name).eval()
    spec = model.spec
    assert spec is get_model_spec(name)
    with torch.no_grad():
        out = model(torch.zeros(1, *spec.input_size))
    assert out.shape == (1, spec.num_classes)
    assert spec.num_classes == (10 if name.startswith("cifar") else 1000)
