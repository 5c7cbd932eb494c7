"""Export paths: ONNX (run with onnxruntime), torch.jit.trace and torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference as ref
from test_layers_properties import MODULES


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "kwargs,dynamo",
    [({}, True), ({"pool_types": ("avg", "max", "lse"), "kernel_size": 3}, True), ({}, False)],
)
def test_cbam_exports_to_onnx_and_onnxruntime_matches_eager(tmp_path, kwargs, dynamo):
    ort = pytest.importorskip("onnxruntime")
    from convattn.layers import CBAM

    m = ref.randomize_(CBAM(32, **kwargs)).eval()
    path = tmp_path / "cbam.onnx"
    if dynamo:  # torch.export-based exporter, with dynamic batch and map size
        dims = {0: torch.export.Dim("n"), 2: torch.export.Dim("h"), 3: torch.export.Dim("w")}
        torch.onnx.export(m, (_x(2, 32, 9, 7),), str(path), dynamic_shapes=(dims,))
        x = _x(3, 32, 5, 11, seed=1)
    else:  # legacy TorchScript exporter, fixed shapes
        x = _x(2, 32, 9, 7)
        torch.onnx.export(m, (x,), str(path), dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODULES))
def test_trace_matches_eager(name):
    m = ref.randomize_(MODULES[name]()).eval()
    x = _x(2, 16, 6, 5)
    traced = torch.jit.trace(m, (x,), check_trace=False)
    x2 = _x(3, 16, 7, 4, seed=1)
    torch.testing.assert_close(traced(x2), m(x2))


@pytest.mark.parametrize("name", list(MODULES))
def test_compile_captures_full_graph_forward_and_backward(name):
    # aot_eager traces forward and backward through dynamo and AOTAutograd without a
    # C++ build, so every module is checked quickly; inductor is exercised on CBAM below.
    m = ref.randomize_(MODULES[name]()).train()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    x = _x(2, 16, 6, 5).requires_grad_()
    got = compiled(x)
    got.sum().backward()
    g_compiled = x.grad.clone()
    x.grad = None
    m(x).sum().backward()
    torch.testing.assert_close(got, m(x))
    torch.testing.assert_close(g_compiled, x.grad)


def test_cbam_inductor_compile_matches_eager():
    from convattn.layers import CBAM

    m = ref.randomize_(CBAM(32, reduction=4)).eval()
    compiled = torch.compile(m, fullgraph=True)
    x = _x(2, 32, 8, 8)
    torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arrangement", ["channel-spatial", "spatial-channel"])
def test_cbam_inductor_training_under_bf16_autocast_has_the_eager_gradients(arrangement):
    # Inductor computes x * Mc (or x * Ms) inside the next max pool without the bfloat16
    # rounding eager applies; a max whose backward compares its input with the result
    # (amax) then finds no maximum and divides 0 by 0.
    from convattn.layers import CBAM

    m = ref.randomize_(CBAM(16, reduction=4, impl="eager", arrangement=arrangement)).train()
    grads = []
    for run in (torch.compile(m), m):
        x = _x(8, 16, 8, 8).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            run(x.bfloat16()).float().square().sum().backward()
        grads.append([x.grad, *(p.grad.clone() for p in m.parameters())])
        m.zero_grad()
    for got, want in zip(*grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0.1, atol=0.1 * want.abs().max().item())
