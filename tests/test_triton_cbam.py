"""The Triton CBAM kernels against the float64 reference: outputs, every gradient (by
finite differences of ``reference.py``), BatchNorm running statistics, low precision,
channels_last, fallbacks, the fake kernels and ``torch.compile``.

Without CUDA the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``,
set by ``conftest.py`` before Triton is first imported, and ``CONVATTN_TRITON_ON_CPU=1``);
with CUDA the same tests run on the device, and the tests marked "needs CUDA" only there.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import fd_reference as fd
import reference as ref
from convattn.fused.triton import FORCE_CPU_ENV, triton_unsupported
from convattn.layers import CBAM, ChannelAttention, SqueezeExcite

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()

DEV = torch.device("cuda" if CUDA else "cpu")
CL = torch.channels_last
FMTS = [torch.contiguous_format, CL]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
# Low precision: the output and the input's gradient are stored in the input's dtype
# (within about one rounding of it, relative to the largest terms); everything else is
# computed in float32 from the exactly representable inputs.
LOW = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def calls(monkeypatch):
    """The Triton operators' call counts; on CPU the path is forced for these tests."""
    if not CUDA:
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton's interpreter is off (TRITON_INTERPRET)")
        monkeypatch.setenv(FORCE_CPU_ENV, "1")
    from convattn.fused.triton import ops

    seen = {"forward": 0, "backward": 0}
    for name, real in (("forward", ops.cbam_forward), ("backward", ops.cbam_backward)):

        def counted(*args, _real=real, _name=name):
            seen[_name] += 1
            return _real(*args)

        monkeypatch.setattr(ops, f"cbam_{name}", counted)
    return seen


def _x(*shape, dtype=torch.float32, seed=0, fmt=torch.contiguous_format):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.to(dtype).contiguous(memory_format=fmt).to(DEV)


def _distinct(*shape, dtype, fmt=torch.contiguous_format):
    """Distinct values exact in bfloat16 and float16 (k / 64, |k| < 256): no tied maxima."""
    n = torch.Size(shape).numel()
    assert n < 512
    g = torch.Generator().manual_seed(1)
    x = ((torch.randperm(n, generator=g) - n // 2) / 64.0).reshape(shape)
    return x.to(dtype).contiguous(memory_format=fmt).to(DEV)


def _module(c, *, train=True, dtype=torch.float32, seed=0, **kw):
    return ref.randomize_(CBAM(c, impl="fused", **kw), seed).to(DEV, dtype).train(train)


def _step(m, x, g):  # output, gradients by name ("x" and the parameters')
    x = x.detach().clone().requires_grad_()
    y = m(x)
    y.backward(g)
    return y, {"x": x.grad, **{n: p.grad for n, p in m.named_parameters()}}


def _check(m, x, calls, *, rtol=1e-4, out_tol=1e-5):
    """m(x) and its gradients against the reference, and the running statistics."""
    train = m.training
    m64 = copy.deepcopy(m).cpu().double()  # before the step updates the statistics
    fmt = CL if not x.is_contiguous() else torch.contiguous_format
    g = _x(*x.shape, dtype=x.dtype, seed=7, fmt=fmt)
    y, grads = _step(m, x, g)
    assert calls == {"forward": 1, "backward": 1}
    assert y.dtype == x.dtype and y.stride() == x.stride()
    xd, gd = ref.arr(x), ref.arr(g)
    want = ref.cbam(xd, m64, training=train)
    err = abs(ref.arr(y) - want).max()
    assert err <= out_tol * abs(want).max(), err
    fd.directional(m64, xd, gd, train, grads, rtol=rtol)
    bn = None if m.spatial is None else m.spatial.bn
    if train and bn is not None:
        rm, rv = fd.running_stats(m64, xd)
        tol = LOW.get(bn.running_mean.dtype, 1e-4)  # the buffers' own rounding
        for got, want in ((bn.running_mean, rm), (bn.running_var, rv)):
            torch.testing.assert_close(got.double().cpu().item(), want, rtol=tol, atol=1e-6)
        assert bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm", [True, False], ids=["bn", "bias"])
def test_float32_matches_reference(fmt, train, norm, calls):
    m = _module(16, train=train, reduction=4, spatial_norm=norm)
    _check(m, _x(2, 16, 5, 6, fmt=fmt), calls)


def test_every_gradient_element_matches_reference(calls):
    m = _module(8, reduction=2, kernel_size=3)
    x, g = _x(2, 8, 4, 5), _x(2, 8, 4, 5, seed=7)
    m64 = copy.deepcopy(m).cpu().double()
    _, grads = _step(m, x, g)
    for name in ("x", "channel.fc1.weight", "spatial.conv.weight", "spatial.bn.weight"):
        want = fd.elementwise(m64, ref.arr(x), ref.arr(g), True, name)
        got = ref.arr(grads[name])
        assert abs(got - want).max() <= 1e-5 * abs(want).max() + 1e-9, name


@pytest.mark.parametrize(
    "shape,k",
    [((2, 12, 12, 13), 7), ((1, 72, 3, 3), 3), ((3, 8, 1, 9), 5), ((2, 16, 7, 1), 7)],
    ids=["long-rows", "many-channels", "one-row", "one-column"],
)
@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
def test_shapes_and_kernel_sizes_match_reference(shape, k, fmt, calls):
    m = _module(shape[1], reduction=4, kernel_size=k)
    _check(m, _x(*shape, fmt=fmt), calls)


@pytest.mark.parametrize("pools", [("avg",), ("max",), ("max", "avg")])
def test_pool_subsets_match_reference(pools, calls):
    _check(_module(8, reduction=2, pool_types=pools), _x(2, 8, 4, 4), calls)


ARRANGED = [{"arrangement": "spatial-channel"}, {"arrangement": "parallel"}, {"spatial": False}]


@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kwargs", ARRANGED, ids=["spatial-channel", "parallel", "channel"])
def test_other_arrangements_and_the_channel_gate_alone_match_reference(kwargs, train, fmt, calls):
    m = _module(16, train=train, reduction=4, kernel_size=3, **kwargs)
    _check(m, _x(2, 16, 5, 6, fmt=fmt), calls)


@pytest.mark.parametrize("pools", [("avg",), ("max",)])
@pytest.mark.parametrize("arrangement", ["spatial-channel", "parallel"])
def test_other_arrangements_with_one_pool_and_a_conv_bias(arrangement, pools, calls):
    m = _module(8, reduction=2, arrangement=arrangement, pool_types=pools, spatial_norm=False)
    _check(m, _x(2, 8, 4, 3), calls)


class _Holder(torch.nn.Module):
    """A channel gate as the reference reads it: ``channel`` and no spatial gate."""

    def __init__(self, channel):
        super().__init__()
        self.channel, self.spatial, self.arrangement = channel, None, "channel-spatial"


@pytest.mark.parametrize("cls", [ChannelAttention, SqueezeExcite])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_channel_attention_and_se_match_reference(cls, dtype, calls):
    m = ref.randomize_(cls(8, reduction=2, impl="fused")).to(DEV)
    x = _x(2, 8, 4, 5) if dtype == torch.float32 else _distinct(2, 8, 4, 5, dtype=dtype)
    tol = LOW.get(dtype, 1e-5)
    held = _Holder(copy.deepcopy(m).cpu().double())
    g = _x(*x.shape, dtype=dtype, seed=7)
    y, grads = _step(m, x, g)
    assert calls == {"forward": 1, "backward": 1} and y.dtype == dtype
    want = ref.cbam(ref.arr(x), held)
    assert abs(ref.arr(y) - want).max() <= tol * abs(want).max()
    grads = {k if k == "x" else f"channel.{k}": v for k, v in grads.items()}
    fd.directional(held, ref.arr(x), ref.arr(g), True, grads, rtol=max(tol, 1e-4))


@pytest.mark.parametrize("params", ["float32", "same"], ids=["f32-params", "low-params"])
@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", list(LOW), ids=["bf16", "fp16"])
def test_low_precision_within_documented_tolerance(dtype, fmt, params, calls):
    m = _module(8, reduction=2, dtype=torch.float32 if params == "float32" else dtype)
    x = _distinct(2, 8, 5, 5, dtype=dtype, fmt=fmt)
    _check(m, x, calls, rtol=LOW[dtype], out_tol=LOW[dtype])
    assert all(p.grad.dtype == p.dtype for p in m.parameters())


def test_running_statistics_follow_batchnorm_over_steps(calls):
    m, want = _module(8, reduction=2), _module(8, reduction=2)
    for mod in (m, want):
        mod.spatial.bn.momentum = None  # cumulative average: uses num_batches_tracked
    want.impl = "eager"
    for step in range(3):
        x = _x(2, 8, 4, 4, seed=step)
        with torch.no_grad():
            m(x)
            want(x)
    assert calls["forward"] == 3 and m.spatial.bn.num_batches_tracked.item() == 3
    for name, b in want.named_buffers():
        torch.testing.assert_close(dict(m.named_buffers())[name], b, msg=name)


def test_auto_and_inference_run_the_kernels_forward_only(calls):
    m = _module(8, train=False, reduction=2)
    m.impl = "auto"
    with torch.no_grad():
        y = m(_x(2, 8, 4, 4))
    want = ref.cbam(ref.arr(_x(2, 8, 4, 4)), copy.deepcopy(m).cpu().double())
    assert abs(ref.arr(y) - want).max() <= 1e-5 * abs(want).max()
    assert calls == {"forward": 1, "backward": 0}


UNCOVERED = [({"pool_types": ("avg", "lp")}, None), ({"pool_types": ("lse",)}, None),
             ({"spatial_pooling": "conv1x1"}, None), ({"spatial": False, "pool_types": ("lp",)},
             None), ({}, torch.float64), ({}, "strided")]  # fmt: skip
NAMES = ["lp", "lse", "conv1x1", "channel-lp", "f64", "strided"]


@pytest.mark.parametrize("kwargs,x", UNCOVERED, ids=NAMES)
def test_uncovered_cases_fall_back_to_eager(kwargs, x, calls):
    dtype = x if isinstance(x, torch.dtype) else torch.float32
    x = _x(2, 8, 4, 8, dtype=dtype)[..., ::2] if x == "strided" else _x(2, 8, 4, 4, dtype=dtype)
    m = _module(8, reduction=2, dtype=dtype, **kwargs)
    assert triton_unsupported(m, x) is not None
    want = copy.deepcopy(m)
    want.impl = "eager"
    torch.testing.assert_close(m(x), want(x))
    assert calls["forward"] == 0


def test_saves_only_small_tensors_besides_the_input(calls):
    m = _module(64)
    x = _x(2, 64, 8, 8).requires_grad_()
    keep = {x.data_ptr(), *(p.data_ptr() for p in m.parameters())}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        m(x)
    assert any(t.data_ptr() == x.data_ptr() for t in saved)
    small = 2 * 2 * max(64, 8 * 8)  # (2, N, C) pooled vectors, (N, 2, H*W) maps
    assert all(t.numel() <= small for t in saved if t.data_ptr() not in keep)


CODES = {"channel-spatial": 1, "spatial-channel": 2, "parallel": 3}


NO_TAIL = (None, False, 0, None, None, None, None, 0.0)  # shortcut, relu, folded BatchNorm


def _op_args(m, x, tail=NO_TAIL):
    fc1, fc2, sp = m.channel.fc1, m.channel.fc2, m.spatial
    if sp is None:
        return (x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, None, None, None, None, None,
                None, True, True, 0, 0, 0.0, *tail)  # fmt: skip
    bn = sp.bn
    return (x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, sp.conv.weight, None, bn.weight,
            bn.bias, None, None, True, True, CODES[m.arrangement], 2, bn.eps, *tail)  # fmt: skip


@pytest.mark.parametrize("kwargs", [{}, {"spatial": False}], ids=["cbam", "channel"])
def test_fake_kernel_gives_shapes_without_running_the_kernels(kwargs, calls):
    from torch._subclasses.fake_tensor import FakeTensorMode

    m = _module(16, reduction=4, **kwargs)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(_x(2, 16, 5, 6, fmt=CL))
        out = torch.ops.convattn.triton_cbam_forward(*_op_args(m, x))
    assert out[0].shape == x.shape and out[0].stride() == x.stride()
    maps = [(2, 2, 30), (2, 30), (2, 30)] if not kwargs else [(1,), (1,), (1,)]
    assert [tuple(t.shape) for t in out[1:7]] == [(2, 16), (2, 2, 16), (2, 16), *maps]
    assert out[3].dtype == torch.int32 and out[5].dtype == torch.int32


@pytest.mark.parametrize("kwargs", [{}, {"arrangement": "spatial-channel"}, {"spatial": False}],
                         ids=["cbam", "spatial-channel", "channel"])  # fmt: skip
def test_opcheck_passes(kwargs, calls):
    m = _module(8, reduction=2, **kwargs)
    x = _x(2, 8, 4, 4).requires_grad_()
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")  # aot: below
    torch.library.opcheck(torch.ops.convattn.triton_cbam_forward, _op_args(m, x), test_utils=tests)


def _compile_recording(m):
    targets: list[str] = []

    def record(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    return torch.compile(m, backend=record, fullgraph=True), targets


def test_compiled_fullgraph_calls_the_operator_and_matches_reference():
    m = _module(8, reduction=2)
    m.impl = "auto"
    m64 = copy.deepcopy(m).cpu().double()
    compiled, targets = _compile_recording(m)
    x, g = _x(2, 8, 4, 5, fmt=CL), _x(2, 8, 4, 5, seed=7)
    y, grads = _step(compiled, x, g)
    assert "convattn.triton_cbam_forward.default" in targets
    want = ref.cbam(ref.arr(x), m64, training=True)
    assert abs(ref.arr(y) - want).max() <= 1e-5 * abs(want).max()
    grads = {k.removeprefix("_orig_mod."): v for k, v in grads.items()}
    fd.directional(m64, ref.arr(x), ref.arr(g), True, grads, rtol=1e-4, dirs=1)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_inductor_compiled_matches_reference_on_cuda(dtype):
    m = _module(8, reduction=2)
    m64 = copy.deepcopy(m).cpu().double()
    x = _distinct(2, 8, 5, 5, dtype=dtype, fmt=CL)
    y = torch.compile(m, fullgraph=True)(x)
    want = ref.cbam(ref.arr(x), m64, training=True)
    tol = LOW.get(dtype, 1e-5)
    assert abs(ref.arr(y) - want).max() <= tol * abs(want).max()


@needs_cuda
def test_resnet_stage_shape_under_autocast_matches_float32_reference(calls):
    m = _module(256).to(memory_format=CL)
    x = _x(8, 256, 28, 28, fmt=CL)
    m64 = copy.deepcopy(m).cpu().double()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(x.bfloat16())
    want = ref.cbam(ref.arr(x.bfloat16()), m64, training=True)
    assert abs(ref.arr(y) - want).max() <= 1e-2 * abs(want).max()
    assert calls["forward"] == 1
