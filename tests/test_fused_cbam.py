"""The fused CPU kernels against the eager modules: outputs, every gradient, BatchNorm
running statistics, gradcheck, fallbacks and export. The first test to run builds the C++
extension (tens of seconds, once per machine and source version)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import reference as ref
from convattn.fused import build, fused_unsupported, ops
from convattn.layers import CBAM, ChannelAttention, SqueezeExcite

ARRS = ["channel-spatial", "spatial-channel", "parallel", "channel-only"]
CL = torch.channels_last


@pytest.fixture(autouse=True)
def calls(fused_calls):
    """Every test counts the fused operator calls, so none can pass by running eager twice."""
    return fused_calls


def _x(*shape, dtype=torch.float64, seed=0, fmt=torch.contiguous_format):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(*shape, generator=g, dtype=torch.float64)
        .to(dtype)
        .contiguous(memory_format=fmt)
    )


def gradcheck_module(module, x):
    """float64 gradcheck of ``module(x)`` in ``x`` and in every parameter of ``module``."""
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    x = x.detach().clone().requires_grad_()
    return torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def _pair(c, arrangement="channel-spatial", dtype=torch.float64, train=True, **kw):
    """(eager, fused) modules with identical random weights and BatchNorm statistics."""
    if arrangement == "channel-only":
        kw["spatial"] = False
    else:
        kw["arrangement"] = arrangement
    eager = ref.randomize_(CBAM(c, impl="eager", **kw)).to(dtype).train(train)
    fused = copy.deepcopy(eager)
    fused.impl = "fused"
    return eager, fused


def _run(m, x, g):
    """Output, input gradient, parameter gradients and buffers after one step."""
    x = x.detach().clone().requires_grad_()
    y = m(x)
    y.backward(g)
    grads = {n: p.grad for n, p in m.named_parameters()}
    return y, x.grad, grads, {n: b.clone() for n, b in m.named_buffers()}


def _close(got, want, truth, name):
    """float64: fused == eager to rounding. float32: the fused error against the float64
    result is at most a few times eager's own (sums run in another order)."""
    if got.dtype == torch.float64 or not got.is_floating_point():
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")
        return
    scale = max(truth.abs().max().item(), 1e-3)
    err = (got.double() - truth).abs().max().item()
    err_eager = (want.double() - truth).abs().max().item()
    # The 1e-6 floor covers cancellation: a tiny gradient (training BatchNorm over a few
    # values subtracts nearly equal sums) carries float32 error from much larger terms.
    assert err <= max(4 * err_eager, 1e-5 * scale + 1e-6), (name, err, err_eager, scale)


def _compare(eager, fused, x, calls):
    fmt = torch.contiguous_format if x.is_contiguous() else CL
    g = _x(*x.shape, dtype=x.dtype, seed=7, fmt=fmt)
    want = _run(eager, x, g)
    truth = want
    if x.dtype != torch.float64:
        truth = _run(copy.deepcopy(eager).double(), x.double(), g.double())
    got = _run(fused, x, g)
    assert calls == {"forward": 1, "backward": 1}
    assert got[0].stride() == want[0].stride()  # same memory format
    _close(got[0], want[0], truth[0], "output")
    _close(got[1], want[1], truth[1], "input gradient")
    for name, w in want[2].items():
        _close(got[2][name], w, truth[2][name], f"{name} gradient")
    for name, w in want[3].items():
        _close(got[3][name], w, truth[3][name], name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm", [True, False], ids=["bn", "bias"])
@pytest.mark.parametrize("arrangement", ARRS)
def test_matches_eager(arrangement, norm, train, fmt, dtype, calls):
    eager, fused = _pair(24, arrangement, dtype, train, reduction=4, spatial_norm=norm)
    _compare(eager, fused, _x(3, 24, 7, 5, dtype=dtype, fmt=fmt), calls)


@pytest.mark.parametrize("pools", [("avg",), ("max",), ("max", "avg")])
@pytest.mark.parametrize("arrangement", ARRS)
def test_pool_subsets_match_eager(arrangement, pools, calls):
    eager, fused = _pair(16, arrangement, reduction=4, pool_types=pools)
    _compare(eager, fused, _x(2, 16, 6, 6), calls)


@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
def test_kernel_sizes_match_eager(k, fmt, calls):
    eager, fused = _pair(16, reduction=4, kernel_size=k)
    _compare(eager, fused, _x(2, 16, 4, 6, fmt=fmt), calls)


@pytest.mark.parametrize(
    "shape",
    [(1, 16, 1, 1), (4, 16, 1, 1), (1, 16, 5, 3), (3, 16, 1, 9), (2, 16, 11, 4), (2, 2048, 2, 3)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arrangement", ARRS)
def test_shapes_match_eager(shape, dtype, arrangement, calls):
    n, c, h, w = shape
    train = n * h * w > 1  # training-mode BatchNorm needs two values
    eager, fused = _pair(c, arrangement, dtype, train)
    _compare(eager, fused, _x(*shape, dtype=dtype), calls)
    calls.update(forward=0, backward=0)
    _compare(eager, fused, _x(*shape, dtype=dtype, fmt=CL), calls)


def test_running_statistics_follow_batchnorm_over_steps(calls):
    eager, fused = _pair(16, dtype=torch.float32)
    for m in (eager, fused):
        m.spatial.bn.momentum = None  # cumulative average: uses num_batches_tracked
    for step in range(3):
        x = _x(4, 16, 5, 5, dtype=torch.float32, seed=step)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), eager(x))
    for name, b in eager.named_buffers():
        torch.testing.assert_close(dict(fused.named_buffers())[name], b)
    assert fused.spatial.bn.num_batches_tracked.item() == 3
    assert calls["forward"] == 3


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine,track", [(False, True), (True, False), (False, False)])
def test_batchnorm_variants_match_eager(affine, track, train, calls):
    eager, fused = _pair(16, train=train)
    for m in (eager, fused):
        m.spatial.bn = torch.nn.BatchNorm2d(1, momentum=0.1, affine=affine).double()
        m.spatial.bn.track_running_stats = track
        if not track:
            m.spatial.bn.running_mean = m.spatial.bn.running_var = None
        m.train(train)
    _compare(eager, fused, _x(3, 16, 5, 4), calls)


def test_inference_without_grad_and_gradient_of_parameters_only(calls):
    eager, fused = _pair(16, train=False)
    x = _x(2, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x))
    fused(x).sum().backward()  # x needs no gradient; g is an expanded tensor
    eager(x).sum().backward()
    for (name, p), q in zip(eager.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert calls == {"forward": 2, "backward": 1}


@pytest.mark.parametrize("pools", [("avg",), ("avg", "max")])
def test_squeeze_excite_and_channel_attention_use_the_channel_kernel(pools, calls):
    for cls, kw in ((SqueezeExcite, {}), (ChannelAttention, {"pool_types": pools})):
        eager = ref.randomize_(cls(32, reduction=4, impl="eager", **kw).double())
        fused = copy.deepcopy(eager)
        fused.impl = "fused"
        calls.update(forward=0, backward=0)
        _compare(eager, fused, _x(3, 32, 4, 7, fmt=CL), calls)


@pytest.mark.parametrize("arrangement", ARRS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradcheck_fused_float64(arrangement, train, calls):
    _, m = _pair(8, arrangement, reduction=2, kernel_size=3, train=train)
    assert gradcheck_module(m, _x(2, 8, 4, 3))
    assert calls["forward"] > 0 and calls["backward"] > 0


@pytest.mark.parametrize(
    "kwargs,x",
    [
        ({"pool_types": ("avg", "lp")}, _x(2, 16, 4, 4)),
        ({"pool_types": ("lse",)}, _x(2, 16, 4, 4)),
        ({"spatial_pooling": "conv1x1"}, _x(2, 16, 4, 4)),
        ({}, _x(2, 16, 4, 4, dtype=torch.bfloat16)),
        ({}, _x(2, 16, 4, 8)[..., ::2]),  # neither contiguous nor channels_last
    ],
)
def test_uncovered_cases_fall_back_to_eager(kwargs, x, calls):
    m = ref.randomize_(CBAM(16, reduction=4, impl="fused", **kwargs)).to(x.dtype)
    assert fused_unsupported(m, x) is not None
    want = copy.deepcopy(m)
    want.impl = "eager"
    torch.testing.assert_close(m(x), want(x))
    assert calls["forward"] == 0


def test_autocast_falls_back_to_eager(calls):
    m = ref.randomize_(CBAM(16, reduction=4, impl="fused")).eval()
    x = _x(2, 16, 4, 4, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(x)
        m.impl = "eager"
        want = m(x)
    torch.testing.assert_close(got, want)
    assert calls["forward"] == 0


def test_conv_weight_gradient_is_deterministic(calls):
    _, m = _pair(16, dtype=torch.float32)
    x = _x(9, 16, 5, 5, dtype=torch.float32)
    grads = []
    for _ in range(3):
        m.zero_grad()
        m(x).square().sum().backward()
        grads.append(m.spatial.conv.weight.grad.clone())
    assert all(torch.equal(grads[0], gr) for gr in grads[1:])


def test_auto_stays_eager_with_far_fewer_samples_than_threads(monkeypatch, calls):
    m = CBAM(16, reduction=4).eval()  # impl="auto"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    m(_x(2, 16, 4, 4, dtype=torch.float32))
    assert calls["forward"] == 0
    m(_x(4, 16, 4, 4, dtype=torch.float32))
    assert calls["forward"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_input_does_not_run_the_cpu_kernels(calls):
    m = ref.randomize_(CBAM(16, reduction=4, impl="fused")).cuda()
    y = m(_x(2, 16, 4, 4, dtype=torch.float32).cuda())
    assert y.is_cuda and calls["forward"] == 0


def test_single_value_batchnorm_raises_like_eager(calls):
    m = CBAM(16, impl="fused").train()
    with pytest.raises(ValueError, match="Expected more than 1 value"):
        m(_x(1, 16, 1, 1, dtype=torch.float32))
    assert calls["forward"] == 0


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setattr(build, "_build", broken)
    monkeypatch.setattr(ops, "load_fused", build.load_fused)
    m = ref.randomize_(CBAM(16, reduction=4, impl="fused"))
    x = _x(2, 16, 4, 4, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="could not build"):
        y = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(m(x), y)
    m.impl = "eager"
    torch.testing.assert_close(m(x), y)


def test_saves_only_small_tensors_besides_the_input(calls):
    _, m = _pair(64, dtype=torch.float32)
    x = _x(4, 64, 16, 16, dtype=torch.float32).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        m(x)
    extra = sum(t.nbytes for t in saved if t.data_ptr() != x.data_ptr())
    assert any(t.data_ptr() == x.data_ptr() for t in saved)
    assert extra <= 0.1 * x.nbytes  # (N, C) and (N, H, W) tensors: 7 maps of 1/64 here


def test_auto_exports_to_onnx_and_traces(tmp_path, calls):
    pytest.importorskip("onnx")
    m = ref.randomize_(CBAM(16, reduction=4)).eval()  # impl="auto"
    x = _x(2, 16, 6, 5, dtype=torch.float32)
    torch.onnx.export(m, (x,), str(tmp_path / "cbam.onnx"), dynamo=False)
    traced = torch.jit.trace(m, (x,), check_trace=False)
    assert calls["forward"] == 0  # both recorded the eager operations
    torch.testing.assert_close(traced(x), m(x))
    assert calls["forward"] == 1  # and the module itself runs fused again


def compile_recording(module: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """``torch.compile(module)`` with a backend that records its graphs' call targets (in
    the returned list, filled when the compiled module first runs)."""
    targets: list[str] = []

    def record(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    return torch.compile(module, backend=record, fullgraph=True), targets


@pytest.mark.parametrize("arrangement", ["channel-spatial", "channel-only"])
def test_compiled_graph_calls_the_fused_operator_and_matches_eager(arrangement):
    eager, fused = _pair(16, arrangement, torch.float32, reduction=4)
    fused.impl = "auto"
    compiled, targets = compile_recording(fused)
    x = _x(2, 16, 6, 5, dtype=torch.float32, fmt=CL)
    g = _x(2, 16, 6, 5, dtype=torch.float32, seed=3)
    got, want = _run(compiled, x, g), _run(eager, x, g)
    assert "convattn.cbam_forward.default" in targets
    for a, b in zip(got[:2], want[:2], strict=True):
        torch.testing.assert_close(a, b)
    got_state = {k.removeprefix("_orig_mod."): v for k, v in {**got[2], **got[3]}.items()}
    for name, w in {**want[2], **want[3]}.items():
        torch.testing.assert_close(got_state[name], w, msg=lambda m, n=name: f"{n}: {m}")


def test_synchronised_batchnorm_in_the_spatial_gate_runs_eager():
    # With --sync-bn the gate's BatchNorm must see the whole distributed batch, which
    # the fused kernels (per-process statistics) cannot do.
    from convattn.engine.sync_bn import convert_sync_batchnorm

    m = convert_sync_batchnorm(CBAM(16), torch.device("cpu"))
    reason = fused_unsupported(m, torch.randn(2, 16, 4, 4))
    assert reason is not None and "GroupBatchNorm" in reason


def test_channels_last_model_weights_still_run_fused(calls):
    # model.to(memory_format=torch.channels_last) also converts the gate's 4-D conv weight.
    eager, fused = _pair(16)
    fused.to(memory_format=CL)
    assert not fused.spatial.conv.weight.is_contiguous()
    _compare(eager, fused, _x(2, 16, 6, 5, fmt=CL), calls)


@pytest.mark.parametrize("arrangement", ["channel-spatial", "spatial-channel", "channel-only"])
def test_tied_maxima_send_the_gradient_to_the_first_as_eager_does(arrangement, calls):
    # Values on a coarse grid tie in every pool; eager's torch.max and the kernels both
    # give the first maximal element the whole gradient, so they agree exactly.
    eager, fused = _pair(8, arrangement, reduction=2, pool_types=("max",))
    x = (_x(2, 8, 4, 4) * 2).round().clamp(-1, 1)
    g = _x(2, 8, 4, 4, seed=7)
    got, want = _run(fused, x, g), _run(eager, x, g)
    assert calls["forward"] == 1
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-10)
    for name, grad in want[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-9, atol=1e-10, msg=name)
