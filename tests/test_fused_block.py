"""Residual blocks with the fused block tail (the last BatchNorm, the attention, the residual
addition and the ReLU in the fused kernels) against the same blocks run eagerly: outputs,
the gradients of the input (and through it the shortcut) and of every parameter, BatchNorm
running statistics and ``num_batches_tracked``, and their gradients against finite
differences (gradcheck); which parts were folded is checked on the operator's arguments, so
a test cannot pass by running eager twice."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import reference as ref
from convattn.layers import get_attention
from convattn.models.blocks import BasicBlock, Bottleneck, make_shortcut
from fused_spy import spy_fused
from test_fused_cbam import _close, _run, _x, compile_recording, gradcheck_module

CL = torch.channels_last


_TESTS = Path(__file__).resolve().parent
_PYTHONPATH = os.pathsep.join([str(_TESTS), os.environ.get("PYTHONPATH", "")])
# The same comparison in a fresh interpreter (CONVATTN_INTEROP_POOL is read once).
_SUBPROCESS = """
import torch, test_fused_block as t
torch.set_num_threads({threads})
for train in (True, False):
    eager, fused = t._pair(t._block("basic", 16, 16, 1, "cbam"), torch.float64, train)
    t._compare(eager, fused, t._x(7, 16, 5, 6, fmt=t.CL))
"""


@pytest.fixture(autouse=True)
def calls(monkeypatch):
    """Records (head mode, has shortcut, relu) of every fused forward and counts backwards."""
    seen = spy_fused(monkeypatch, lambda a: (a.head, a.shortcut is not None, a.relu))
    if seen is None:
        pytest.skip("fused extension unavailable")
    return seen


def _block(kind, cin, planes, stride, attn, shortcut="conv", **attn_kwargs):
    cls = BasicBlock if kind == "basic" else Bottleneck
    cout = planes * cls.expansion
    down = make_shortcut(shortcut, cin, cout, stride)
    kw = {"reduction": 4, **attn_kwargs}
    return cls(cin, planes, stride=stride, downsample=down, attn_layer=get_attention(attn, **kw))


def _pair(block, dtype, train, seed=0):
    """(eager, fused) copies with identical random weights and statistics."""
    eager = _set_impl(ref.randomize_(block, seed).to(dtype).train(train), "eager")
    return eager, _set_impl(copy.deepcopy(eager), "fused")


def _set_impl(model: nn.Module, impl: str) -> nn.Module:
    """Sets ``impl`` on every attention module of ``model`` (returned)."""
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return model


def _compare(eager, fused, x):
    fmt = torch.contiguous_format if x.is_contiguous() else CL
    if fmt is CL:
        eager, fused = eager.to(memory_format=CL), fused.to(memory_format=CL)
    want = _run(copy.deepcopy(eager), x, g := _y_grad(eager, x, fmt))
    truth = want
    if x.dtype != torch.float64:
        truth = _run(copy.deepcopy(eager).double(), x.double(), g.double())
    got = _run(fused, x, g)
    assert got[0].stride() == want[0].stride()  # same memory format
    _close(got[0], want[0], truth[0], "output")
    _close(got[1], want[1], truth[1], "input gradient")
    for name, w in want[2].items():
        assert got[2][name] is not None, name
        _close(got[2][name], w, truth[2][name], f"{name} gradient")
    for name, w in want[3].items():
        _close(got[3][name], w, truth[3][name], name)


def _y_grad(block, x, fmt):
    with torch.no_grad():
        shape = copy.deepcopy(block).eval()(x).shape
    return _x(*shape, dtype=x.dtype, seed=7, fmt=fmt)


ATTNS = {
    "cbam": ("cbam", {}),
    "cbam-bias": ("cbam", {"spatial_norm": False}),
    "se": ("se", {}),
    "channel-max": ("channel", {"pool_types": ("max",)}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("attn", list(ATTNS))
def test_block_matches_eager(attn, kind, train, fmt, dtype, calls):
    name, kw = ATTNS[attn]
    block = _block(kind, 16, 8 if kind == "basic" else 4, 1, name, **kw)
    _compare(*_pair(block, dtype, train), _x(3, 16, 5, 4, dtype=dtype, fmt=fmt))
    assert (2 if train else 1, True, True) in calls["forward"]  # BatchNorm folded, tail fused
    assert calls["backward"] >= 1


@pytest.mark.parametrize("pool", ["intra-op", "inter-op"])
@pytest.mark.parametrize("threads", [2, 3])
def test_sample_loops_on_several_threads(threads, pool, monkeypatch, calls):
    """The suite runs one thread per process; here the per-sample loops are shared out (7
    samples over 2 or 3 workers, uneven) on either thread pool, and still match eager."""
    if pool == "inter-op":  # read once per process: only a fresh one sees it
        subprocess.run(
            [sys.executable, "-c", _SUBPROCESS.format(threads=threads)],
            check=True,
            env={**os.environ, "CONVATTN_INTEROP_POOL": "1", "PYTHONPATH": _PYTHONPATH},
        )
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for train in (True, False):
            eager, fused = _pair(_block("basic", 16, 16, 1, "cbam"), torch.float64, train)
            _compare(eager, fused, _x(7, 16, 5, 6, fmt=CL))
    finally:
        torch.set_num_threads(before)
    assert calls["backward"] == 2


@pytest.mark.parametrize("shortcut", ["conv", "pad"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_strided_block_with_projection_shortcut(kind, fmt, shortcut, calls):
    planes = 8 if kind == "basic" else 4
    block = _block(kind, 8, planes, 2, "cbam", shortcut=shortcut)
    _compare(*_pair(block, torch.float32, True), _x(3, 8, 7, 6, dtype=torch.float32, fmt=fmt))
    assert (2, True, True) in calls["forward"]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 16, 1, 1), (1, 16, 1, 3), (2, 16, 2, 2)])
@pytest.mark.parametrize("attn", ["cbam", "se"])
def test_small_maps(attn, shape, train, calls):
    name, kw = ATTNS[attn]
    block = _block("basic", 16, 16, 1, name, **kw)
    for fmt in (torch.contiguous_format, CL):
        _compare(*_pair(block, torch.float64, train), _x(*shape, fmt=fmt))


@pytest.mark.parametrize("arrangement", ["spatial-channel", "parallel"])
def test_other_arrangements_fuse_the_tail_after_an_eager_batchnorm(arrangement, calls):
    block = _block("basic", 16, 16, 1, "cbam", arrangement=arrangement)
    _compare(*_pair(block, torch.float64, True), _x(3, 16, 5, 5))
    assert calls["forward"] == [(0, True, True)]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", ["cumulative", "no-affine", "no-running-stats", "momentum-0.5"])
def test_batchnorm_variants(variant, train, calls):
    block = _block("basic", 16, 16, 1, "cbam")
    eager, fused = _pair(block, torch.float64, train)
    for b in (eager, fused):
        bn = nn.BatchNorm2d(16, momentum=0.5 if variant == "momentum-0.5" else 0.1)
        if variant == "cumulative":
            bn.momentum = None
        if variant == "no-affine":
            bn = nn.BatchNorm2d(16, affine=False)
        if variant == "no-running-stats":
            bn = nn.BatchNorm2d(16, track_running_stats=False)
        with torch.no_grad():
            if bn.running_mean is not None:
                bn.running_mean.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(1))
        b.bn2 = bn.double().train(train)
    _compare(eager, fused, _x(3, 16, 5, 4))
    batch_stats = train or variant == "no-running-stats"
    assert calls["forward"] == [(2 if batch_stats else 1, True, True)]


def test_running_statistics_over_steps(calls):
    eager, fused = _pair(_block("basic", 16, 16, 1, "cbam"), torch.float32, True)
    for step in range(3):
        x = _x(4, 16, 5, 5, dtype=torch.float32, seed=step)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), eager(x))
    for name, b in eager.named_buffers():
        torch.testing.assert_close(dict(fused.named_buffers())[name], b, msg=name)
    assert fused.bn2.num_batches_tracked.item() == 3
    assert [h for h, _, _ in calls["forward"]] == [2, 2, 2]


def test_hooks_keep_the_eager_modules(calls):
    block = _block("basic", 16, 16, 1, "cbam")
    eager, fused = _pair(block, torch.float64, False)
    seen = []
    fused.bn2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = _x(2, 16, 4, 4)
    torch.testing.assert_close(fused(x), eager(x))
    assert seen == [x.shape]  # the BatchNorm ran as a module
    assert all(head == 0 for head, _, _ in calls["forward"])


def test_synchronised_batchnorm_runs_eagerly_before_the_fused_tail(calls):
    from convattn.engine.sync_bn import convert_sync_batchnorm

    eager, fused = _pair(_block("basic", 16, 16, 1, "cbam"), torch.float64, True)
    for m in (eager, fused):  # the block's BatchNorm synchronised, the gate's left alone
        m.bn2 = convert_sync_batchnorm(m.bn2, torch.device("cpu")).double()
    _compare(eager, fused, _x(3, 16, 5, 4))
    assert calls["forward"] == [(0, True, True)]


def test_inference_without_grad_skips_the_indices(calls):
    eager, fused = _pair(_block("bottleneck", 16, 4, 1, "cbam"), torch.float32, False)
    x = _x(2, 16, 5, 5, dtype=torch.float32, fmt=CL)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x))
    assert calls["forward"] == [(1, True, True)] and calls["backward"] == 0


def test_compiled_block_calls_the_fused_operator_and_matches_eager():
    eager, fused = _pair(_block("basic", 16, 16, 1, "cbam"), torch.float32, True)
    _set_impl(fused, "auto")
    compiled, targets = compile_recording(fused)
    x = _x(2, 16, 6, 5, dtype=torch.float32, fmt=CL)
    g = _x(2, 16, 6, 5, dtype=torch.float32, seed=3)
    got, want = _run(compiled, x, g), _run(eager, x, g)
    assert "convattn.cbam_forward.default" in targets
    for a, b in zip(got[:2], want[:2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    got_state = {k.removeprefix("_orig_mod."): v for k, v in {**got[2], **got[3]}.items()}
    for name, w in {**want[2], **want[3]}.items():
        torch.testing.assert_close(got_state[name], w, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_inference_records_the_eager_operations():
    """Without gradients, "auto" leaves the attention to the compiler (it fuses the eager
    operations with the BatchNorm, addition and ReLU around them); an explicit "fused"
    still calls the operator."""
    eager, fused = _pair(_block("basic", 16, 16, 1, "cbam"), torch.float32, False)
    x = _x(2, 16, 6, 5, dtype=torch.float32, fmt=CL)
    for impl, expect_op in (("auto", False), ("fused", True)):
        _set_impl(fused, impl)
        torch._dynamo.reset()
        compiled, targets = compile_recording(fused)
        with torch.no_grad():
            got = compiled(x)
            want = eager(x)
        assert ("convattn.cbam_forward.default" in targets) == expect_op, impl
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_traced_block_records_eager_operations(calls):
    _, fused = _pair(_block("basic", 16, 16, 1, "cbam"), torch.float32, False)
    x = _x(2, 16, 5, 5, dtype=torch.float32)
    traced = torch.jit.trace(fused, (x,), check_trace=False)
    assert calls["forward"] == []
    torch.testing.assert_close(traced(x), fused(x))


def test_training_steps_of_a_network_match_eager_in_float64(calls):
    """Whole-network check: SGD steps of cifar_resnet20_cbam with the fused blocks follow
    the eager ones to float64 rounding (weights, and the BatchNorm running statistics)."""
    from convattn.models import create_model

    torch.manual_seed(0)
    eager = create_model("cifar_resnet20_cbam", num_classes=10).double()
    eager = eager.to(memory_format=CL)
    fused = copy.deepcopy(eager)
    _set_impl(eager, "eager")
    _set_impl(fused, "fused")
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, fused)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64).to(memory_format=CL)
        y = torch.randint(0, 10, (4,), generator=gen)
        for model, opt in zip((eager, fused), opts, strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert calls["backward"] == 3 * 9  # every block's tail ran fused
    want, got = eager.state_dict(), fused.state_dict()
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("attn", ["cbam", "se"])
def test_gradcheck_of_a_block_with_the_fused_tail(attn, train, calls):
    """float64 gradcheck of a block whose tail (the folded last BatchNorm, the attention,
    the addition and the ReLU) runs in the fused kernels: the gradients of the block input
    and of every parameter against finite differences, with the BatchNorm on batch
    statistics (training) and on running statistics (evaluation). In training mode the
    running statistics drift over gradcheck's many calls, but no output reads them."""
    name, kw = ATTNS[attn]
    kw = {**kw, "reduction": 2, **({"kernel_size": 3} if name == "cbam" else {})}
    _, block = _pair(_block("basic", 4, 4, 1, name, **kw), torch.float64, train)
    assert gradcheck_module(block, _x(2, 4, 4, 3))
    assert set(calls["forward"]) == {(2 if train else 1, True, True)}  # every call fused
    assert calls["backward"] > 0
