"""Float32 accuracy of the fused kernels at trained-like weights and activations: the relative
error against float64 of the output and of every gradient is at most about eager's own.

At initialisation every BatchNorm input has mean ~0 and every gate sits near 0.5, which hides
cancellation. Trained networks have maps with a large mean against their spread (the block's
last convolution: |mean| ~ 20 std here), a spatial BatchNorm with a non-zero weight, running
statistics that match the data, and sums over thousands of values. The cases below have all of
that, for the CBAM module and for the fused block tail ``relu(attn(bn(z)) + shortcut)``, in
training and evaluation mode.

Measured on a discontinuity (a ReLU mask or an argmax that flips between float32 and float64)
the relative error is that of a different function, not rounding; the shortcut is therefore
nudged away from the ReLU's kink, and the tests check that no mask flips.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convattn.fused import residual_tail
from convattn.layers import CBAM, get_attention
from convattn.models.blocks import BasicBlock, Bottleneck

CL = torch.channels_last
D64 = torch.float64
# Below this a relative error is rounding of a few float32 operations (eps = 6e-8), whichever
# order the sums run in; eager's own error can sit anywhere under it.
FLOOR = 4e-7
# A float32 result also carries the rounding of its inputs and parameters to float32, which no
# implementation avoids. Gradients that are heavily cancelled sums (a BatchNorm's weight: sum
# g x_hat, x_hat of mean 0) amplify it, and the arithmetic's own rounding, of the same size,
# lands around it: from one batch to the next eager's error there falls a few times below or
# above it, by luck. Within this factor of the inputs' rounding effect an error is rounding.
ROUNDING_FACTOR = 6
# The fused kernels sum in another order than eager, which differs with the CPU's vector
# width (the extension is built for the machine it runs on): within this factor of eager's
# error, the fused error is the same rounding.
EAGER_FACTOR = 3


@pytest.fixture(autouse=True)
def calls(fused_calls):
    """Every test counts the fused operator calls, so none can pass by running eager twice."""
    return fused_calls


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _set_impl(model: nn.Module, impl: str) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return model


def _trained_like_(attn: nn.Module, g: torch.Generator) -> None:
    """MLP weights of a trained gate and the spatial BatchNorm of a trained CBAM (weight
    -0.46, bias 1.18: layer3.0 of a CIFAR-10 ResNet-20 after 10 epochs)."""
    with torch.no_grad():
        for m in attn.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        spatial = getattr(attn, "spatial", None)
        if spatial is not None:
            w = spatial.conv.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.1)
            spatial.bn.weight.fill_(-0.46)
            spatial.bn.bias.fill_(1.18)


def _calibrate_(model: nn.Module, run) -> None:
    """Running statistics equal to this batch's (float64), as after training on such data."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        run(_set_impl(model, "eager").train())
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom


def _large_mean_maps(n, c, h, w, g, ratio=20.0):
    """(N, C, H, W) float64 maps with per-channel mean +-ratio * std, std in [0.5, 1.5]."""
    std = 0.5 + torch.rand(c, generator=g, dtype=D64)
    sign = torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0).to(D64)
    noise = torch.randn(n, c, h, w, generator=g, dtype=D64)
    return noise * std.view(1, -1, 1, 1) + (ratio * std * sign).view(1, -1, 1, 1)


def _rel(got: torch.Tensor, truth: torch.Tensor) -> float:
    return ((got.double() - truth).norm() / truth.norm().clamp_min(1e-300)).item()


def _step(model, inputs, grad, dtype, impl, train, fmt, call):
    """Output, input gradients and parameter gradients of one forward and backward."""
    model = _set_impl(copy.deepcopy(model).to(dtype).train(train), impl)
    xs = [t.to(dtype).contiguous(memory_format=fmt).clone().requires_grad_() for t in inputs]
    y = call(model, *xs)
    y.backward(grad.to(dtype).contiguous(memory_format=fmt))
    out = {"output": y.detach()}
    out.update({f"input {i}": t.grad for i, t in enumerate(xs)})
    out.update({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    return out


def _assert_as_accurate(model, inputs, grad, train, fmt, call, calls):
    """Tensor by tensor, the float32 fused error is at most max(3 x the float32 eager error,
    ROUNDING_FACTOR x the error of float64 on float32-rounded inputs and parameters, FLOOR);
    float64 fused equals float64 eager."""
    truth = _step(model, inputs, grad, D64, "eager", train, fmt, call)
    eager = _step(model, inputs, grad, torch.float32, "eager", train, fmt, call)
    assert calls == {"forward": 0, "backward": 0}
    fused64 = _step(model, inputs, grad, D64, "fused", train, fmt, call)
    fused = _step(model, inputs, grad, torch.float32, "fused", train, fmt, call)
    assert calls == {"forward": 2, "backward": 2}
    rounded_inputs = [t.float().double() for t in inputs]
    rounded_model = copy.deepcopy(model).float().double()
    rounded_grad = grad.float().double()
    rounded = _step(rounded_model, rounded_inputs, rounded_grad, D64, "eager", train, fmt, call)
    assert truth.keys() == fused.keys() == eager.keys()
    for name, t in truth.items():
        torch.testing.assert_close(fused64[name], t, rtol=1e-9, atol=1e-12, msg=name)
    flips = (fused["output"] > 0) != (truth["output"] > 0)
    assert not flips.any(), "a ReLU mask flipped: the comparison would measure a discontinuity"
    worse = {}
    for name, t in truth.items():
        err, eager_err, rounding = (_rel(r[name], t) for r in (fused, eager, rounded))
        if err > max(EAGER_FACTOR * eager_err, ROUNDING_FACTOR * rounding, FLOOR):
            worse[name] = f"fused {err:.2e}, eager {eager_err:.2e}, input rounding {rounding:.2e}"
    assert not worse, f"float32 relative errors against float64: {worse}"


def _margin_shortcut(attn, norm, z, g):
    """A random shortcut, moved away where relu(attn(norm(z)) + shortcut) is near its kink."""
    sc = torch.randn(z.shape, generator=g, dtype=D64)
    with torch.no_grad():
        m = _set_impl(copy.deepcopy(attn), "eager").to(D64)
        pre = m(copy.deepcopy(norm).to(D64)(z)) + sc
    return sc + 0.05 * torch.sign(pre) * (pre.abs() < 0.05)


def _tail_case(block: nn.Module, n: int, h: int, w: int, seed: int):
    g = _gen(seed)
    c = block.last_bn.num_features
    _trained_like_(block.attn, g)
    with torch.no_grad():
        block.last_bn.weight.copy_(0.3 + 0.5 * torch.rand(c, generator=g))
        block.last_bn.bias.copy_(0.5 * torch.randn(c, generator=g))
    block = block.double()
    z = _large_mean_maps(n, c, h, w, g)
    sc = _margin_shortcut(block.attn, block.last_bn.train(), z, g)

    def call(b, z, sc):  # the block's tail, as the blocks call it
        return residual_tail(z, sc, norm=b.last_bn, attn=b.attn, relu=b.relu)

    _calibrate_(block, lambda b: call(b, z, sc))
    return block, (z, sc), torch.randn(z.shape, generator=g, dtype=D64), call


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    ("kind", "attn", "n", "c", "hw", "fmt"),
    [
        ("basic", "cbam", 32, 32, 8, torch.contiguous_format),
        ("basic", "se", 32, 32, 8, torch.contiguous_format),
        ("basic", "channel", 16, 32, 8, CL),
        ("bottleneck", "cbam", 8, 64, 16, CL),
        ("basic", "cbam", 8, 16, 32, torch.contiguous_format),
    ],
    ids=["basic-cbam", "basic-se", "basic-channel-nhwc", "bottleneck-cbam-nhwc", "cbam-32x32"],
)
def test_block_tail_float32_as_accurate_as_eager(kind, attn, n, c, hw, fmt, train, calls):
    if kind == "basic":
        block = BasicBlock(c, c, attn_layer=get_attention(attn, reduction=8))
    else:
        block = Bottleneck(c, c // 4, attn_layer=get_attention(attn, reduction=8))
    block, inputs, grad, call = _tail_case(block, n, hw, hw, seed=1)
    _assert_as_accurate(block, inputs, grad, train, fmt, call, calls)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
def test_cbam_module_float32_as_accurate_as_eager(fmt, train, calls):
    g = _gen(2)
    module = CBAM(32, reduction=8)
    _trained_like_(module, g)
    module = module.double()
    # Post-ReLU maps of mean ~3 and spread ~1: the channel-pooled maps, and so the spatial
    # logits, have a large mean against their spread.
    x = torch.relu(torch.randn(32, 32, 16, 16, generator=g, dtype=D64) + 3)
    _calibrate_(module, lambda m: m(x))
    grad = torch.randn(x.shape, generator=g, dtype=D64)
    _assert_as_accurate(module, (x,), grad, train, fmt, lambda m, x: m(x), calls)
