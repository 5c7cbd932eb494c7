"""The residual tail ``relu(attn(bn(z)) + shortcut)`` folded into the Triton kernels,
against the float64 reference: the output, the gradients of z, of the shortcut and of
every parameter (by finite differences of ``reference.py``), the folded BatchNorm's
running statistics and ``num_batches_tracked``, low precision, residual blocks, the
cases that keep the BatchNorm or the whole tail eager, saved memory and the operator's
checks. Which parts were folded is read from the operator's arguments, so a test cannot
pass by running the eager modules.

Without CUDA the kernels run in Triton's interpreter, as in ``test_triton_cbam.py``.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

import fd_reference as fd
import reference as ref
from convattn.fused import residual_tail
from convattn.layers import CBAM, get_attention
from convattn.models.blocks import BasicBlock, Bottleneck, make_shortcut
from test_triton_cbam import CL, DEV, FMTS, LOW, _compile_recording, _distinct, _op_args, _x

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def calls(monkeypatch):
    """(head, has a shortcut, relu) of every Triton forward, and the backwards' count."""
    from convattn.fused.triton import FORCE_CPU_ENV, ops

    if DEV.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton's interpreter is off (TRITON_INTERPRET)")
        monkeypatch.setenv(FORCE_CPU_ENV, "1")
    seen: dict = {"forward": [], "backward": 0}
    real_forward, real_backward = ops.cbam_forward, ops.cbam_backward

    def forward(*args):
        seen["forward"].append((args[18], args[16] is not None, args[17]))
        return real_forward(*args)

    def backward(*args):
        seen["backward"] += 1
        return real_backward(*args)

    monkeypatch.setattr(ops, "cbam_forward", forward)
    monkeypatch.setattr(ops, "cbam_backward", backward)
    return seen


class _Tail(nn.Module):
    """The tail's modules as one holder, for the reference and the finite differences."""

    def __init__(self, attn: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.attn, self.norm = attn, norm


def _pair(c, *, train=True, dtype=torch.float32, **kw):
    attn = ref.randomize_(CBAM(c, reduction=2, impl="fused", **kw), 0)
    norm = ref.randomize_(nn.BatchNorm2d(c), 1)
    return _Tail(attn, norm).to(DEV, dtype).train(train)


def _reference(t64: _Tail, z, r, train: bool):
    xn = ref.batchnorm(z, t64.norm, training=train)
    return ref.relu(ref.cbam(xn, t64.attn, training=train) + r)


def _run(tail: _Tail, z, r, g):
    z, r = (t.detach().clone().requires_grad_() for t in (z, r))
    y = residual_tail(z, r, norm=tail.norm, attn=tail.attn, relu=nn.ReLU())
    y.backward(g)
    return y, {"z": z.grad, "r": r.grad, **{n: p.grad for n, p in tail.named_parameters()}}


def _check(tail: _Tail, z, calls, *, rtol=1e-4, out_tol=1e-5, r_fmt=None):
    """The tail on z (a shortcut in z's format, or ``r_fmt``) against the reference."""
    train, t64 = tail.training, copy.deepcopy(tail).cpu().double()
    fmt = torch.contiguous_format if z.is_contiguous() else CL
    r = _x(*z.shape, dtype=z.dtype, seed=3, fmt=r_fmt or fmt)
    g = _x(*z.shape, dtype=z.dtype, seed=7, fmt=fmt)
    y, grads = _run(tail, z, r, g)
    assert calls["forward"] == [(2 if train else 1, True, True)] and calls["backward"] == 1
    assert y.dtype == z.dtype and y.stride() == z.stride() and grads["z"].stride() == z.stride()
    zd, rd, gd = ref.arr(z), ref.arr(r), ref.arr(g)
    want = _reference(t64, zd, rd, train)
    assert abs(ref.arr(y) - want).max() <= out_tol * abs(want).max()
    holders = {"z": zd, "r": rd, **fd.holders_of(t64)}
    fd.along_directions(lambda: float((_reference(t64, zd, rd, train) * gd).sum()), holders,
                        grads, rtol=rtol)  # fmt: skip
    if train:  # the folded BatchNorm's running statistics, as nn.BatchNorm2d updates them
        bn, mom = t64.norm, t64.norm.momentum
        mean, var = zd.mean(axis=(0, 2, 3)), zd.var(axis=(0, 2, 3), ddof=1)
        for got, old, new in ((tail.norm.running_mean, bn.running_mean, mean),
                              (tail.norm.running_var, bn.running_var, var)):  # fmt: skip
            want = (1 - mom) * ref.arr(old) + mom * new
            np.testing.assert_allclose(ref.arr(got), want, rtol=LOW.get(z.dtype, 1e-5))
        assert tail.norm.num_batches_tracked.item() == 1
    else:  # evaluation: nothing updated
        for name, b in t64.norm.named_buffers():
            torch.testing.assert_close(dict(tail.norm.named_buffers())[name].cpu().to(b.dtype), b)


ARRANGED = [{}, {"arrangement": "spatial-channel"}, {"arrangement": "parallel"},
            {"spatial": False}]  # fmt: skip
ARR_IDS = ["channel-spatial", "spatial-channel", "parallel", "channel"]


@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kwargs", ARRANGED, ids=ARR_IDS)
def test_tail_matches_reference(kwargs, train, fmt, calls):
    _check(_pair(8, train=train, kernel_size=3, **kwargs), _x(2, 8, 5, 4, fmt=fmt), calls)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
def test_partial_channel_blocks_and_a_shortcut_in_the_other_format(fmt, train, calls):
    other = CL if fmt is torch.contiguous_format else torch.contiguous_format
    tail = _pair(12, train=train, kernel_size=3)  # 12 channels: a partial block of 8
    _check(tail, _x(2, 12, 5, 3, fmt=fmt), calls, r_fmt=other)


def test_tail_with_a_conv_bias_and_one_pool_matches_reference(calls):
    tail = _pair(8, spatial_norm=False, pool_types=("max",))
    _check(tail, _x(3, 8, 3, 5), calls)


def test_large_mean_against_spread_keeps_the_statistics(calls):
    """z = 1000 + N(0, 1): the variance of z survives (no sum of squares cancels)."""
    tail = _pair(8, kernel_size=3)
    _check(tail, _x(2, 8, 12, 12) + 1000.0, calls, rtol=1e-3, out_tol=1e-4)  # 2 tiles


@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", list(LOW), ids=["bf16", "fp16"])
def test_low_precision_within_documented_tolerance(dtype, fmt, calls):
    tail = _pair(8)
    _check(tail, _distinct(2, 8, 5, 5, dtype=dtype, fmt=fmt), calls, rtol=LOW[dtype],
           out_tol=LOW[dtype])  # fmt: skip


@pytest.mark.parametrize("variant", ["no-affine", "cumulative", "no-running-stats"])
def test_batchnorm_variants_match_eager_in_float64_terms(variant, calls):
    tail = _pair(8)
    kwargs = {"no-affine": {"affine": False}, "cumulative": {"momentum": None},
              "no-running-stats": {"track_running_stats": False}}[variant]  # fmt: skip
    tail.norm = nn.BatchNorm2d(8, **kwargs).to(DEV)
    eager = copy.deepcopy(tail).double()
    eager.attn.impl = "eager"
    z, r, g = _x(2, 8, 4, 4), _x(2, 8, 4, 4, seed=3), _x(2, 8, 4, 4, seed=7)
    y, grads = _run(tail, z, r, g)
    want, wgrads = _run(eager, z.double(), r.double(), g.double())
    assert calls["forward"] == [(2, True, True)]
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-6)
    for name, w in wgrads.items():
        torch.testing.assert_close(grads[name].double(), w, rtol=1e-4, atol=1e-6, msg=name)
    for name, b in eager.norm.named_buffers():
        torch.testing.assert_close(dict(tail.norm.named_buffers())[name].double(), b.double())


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_residual_blocks_fold_their_tail(kind, calls):
    cls = BasicBlock if kind == "basic" else Bottleneck
    down = make_shortcut("conv", 8, 8, 2)  # planes * expansion = 8 for both
    block = cls(8, 8 if kind == "basic" else 2, stride=2, downsample=down,
                attn_layer=get_attention("cbam", reduction=2, impl="fused"))  # fmt: skip
    block = ref.randomize_(block, 0).to(DEV)
    eager = copy.deepcopy(block).double()
    eager.attn.impl = "eager"
    x = _x(2, 8, 6, 6, fmt=CL)
    y = block(x)
    y.square().sum().backward()
    want = eager(x.double())
    want.square().sum().backward()
    assert calls["forward"] == [(2, True, True)] and calls["backward"] == 1
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    for (name, p), (_, w) in zip(block.named_parameters(), eager.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad.double(), w.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_synchronised_batchnorm_runs_eagerly_in_front_of_the_folded_tail(calls):
    tail = _pair(8, train=False)
    sync = nn.SyncBatchNorm(8).to(DEV).eval()
    sync.load_state_dict(tail.norm.state_dict())
    tail.norm = sync
    assert type(tail.norm) is not nn.BatchNorm2d
    z, r = _x(2, 8, 4, 4), _x(2, 8, 4, 4, seed=3)
    with torch.no_grad():
        y = residual_tail(z, r, norm=sync, attn=tail.attn, relu=nn.ReLU())
    want = _reference(copy.deepcopy(tail).cpu().double(), ref.arr(z), ref.arr(r), False)
    assert calls["forward"] == [(0, True, True)]  # the addition and the ReLU still folded
    assert abs(ref.arr(y) - want).max() <= 1e-5 * abs(want).max()


def test_shortcut_of_another_dtype_runs_the_whole_tail_eagerly(calls):
    tail = _pair(8)
    z, r = _x(2, 8, 4, 4), _x(2, 8, 4, 4, dtype=torch.float64, seed=3)
    y = residual_tail(z, r, norm=tail.norm, attn=tail.attn, relu=nn.ReLU())
    assert y.dtype == torch.float64 and calls["forward"] == [(0, False, False)]


def test_saves_z_and_the_output_and_small_tensors(calls):
    tail = _pair(64)
    z, r = _x(2, 64, 8, 8).requires_grad_(), _x(2, 64, 8, 8, seed=3).requires_grad_()
    keep = {z.data_ptr(), *(p.data_ptr() for p in tail.parameters())}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = residual_tail(z, r, norm=tail.norm, attn=tail.attn, relu=nn.ReLU())
    big = [t for t in saved if t.data_ptr() not in keep and t.numel() > 2 * 2 * 64]
    assert [t.data_ptr() for t in big] == [y.data_ptr()]  # the ReLU's mask: y itself
    assert any(t.data_ptr() == z.data_ptr() for t in saved)


def test_opcheck_passes_with_the_tail(calls):
    tail = _pair(8)
    z = _x(2, 8, 4, 4).requires_grad_()
    r = _x(2, 8, 4, 4, seed=3).requires_grad_()
    norm = tail.norm
    args = _op_args(tail.attn, z, (r, True, 2, norm.weight, norm.bias, None, None, norm.eps))
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.convattn.triton_cbam_forward, args, test_utils=tests)


def test_compiled_block_calls_the_operator_with_the_tail_folded(calls):
    block = BasicBlock(8, 8, attn_layer=get_attention("cbam", reduction=2, impl="fused"))
    block = ref.randomize_(block, 0).to(DEV)
    eager = copy.deepcopy(block)
    eager.attn.impl = "eager"
    compiled, targets = _compile_recording(block)
    x = _x(2, 8, 5, 5)
    y = compiled(x)
    y.sum().backward()
    want = eager(x)
    want.sum().backward()
    assert "convattn.triton_cbam_forward.default" in targets
    assert sum("batch_norm" in t for t in targets) == 1  # bn1 only: bn2 is folded
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    for (name, p), (_, w) in zip(block.named_parameters(), eager.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, w.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_gpu_runs_on_its_own_device_while_the_first_is_current(calls):
    tail = _pair(8).to("cuda:1")
    eager = copy.deepcopy(tail)
    eager.attn.impl = "eager"
    z, r, g = (_x(2, 8, 5, 4, seed=s).to("cuda:1") for s in (0, 3, 7))
    with torch.cuda.device(0):
        y, grads = _run(tail, z, r, g)
        want, wgrads = _run(eager, z, r, g)
    assert calls["forward"][0] == (2, True, True) and y.device == z.device
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    for name, w in wgrads.items():
        torch.testing.assert_close(grads[name], w, rtol=1e-4, atol=1e-5, msg=name)
