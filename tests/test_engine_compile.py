"""``run.compile`` and the Inductor CPU fault it warns about.

The fault (seen with torch 2.14 on one AVX-512 machine, not on another with the same CPU
flags, torch and gcc): a boolean mask applied to the sum of two half-precision tensors
that Inductor keeps channels-last, written out in the contiguous format, comes out as
garbage. A CBAM network compiled under bfloat16 autocast meets this pattern in its
backward (ReLU masks against the attention's gradients). AVX2 code (``cpp.simdlen =
256``) and -O0 builds computed it right there. ``compile_model`` probes for it.
"""

from __future__ import annotations

import logging

import pytest
import torch

from convattn.engine import setup
from convattn.engine.recipes import load_config
from convattn.engine.setup import compile_model, inductor_bf16_fault

CPU = torch.device("cpu")
AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


@pytest.mark.skipif(not AVX512, reason="the warning is for AVX-512 CPUs")
@pytest.mark.parametrize(
    ("amp", "fault", "warns"),
    [("bf16", True, True), ("bf16", False, False), ("none", True, False)],
)
def test_compile_warns_where_the_probe_finds_the_fault(caplog, monkeypatch, amp, fault, warns):
    monkeypatch.setattr(setup, "inductor_bf16_fault", lambda: fault)
    cfg = load_config(None, {"run.amp": amp})
    with caplog.at_level(logging.WARNING, logger="convattn"):
        compiled = compile_model(torch.nn.Linear(2, 2), cfg, CPU)
    assert callable(compiled) and compiled is not None
    assert ("cpp.simdlen = 256" in caplog.text) is warns


def _inputs() -> tuple[torch.Tensor, ...]:
    """A contiguous mask and two bfloat16 channels-last tensors (other values than the
    probe's, so that the probe is checked on data it has not seen)."""
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(4, 32, 8, 8, generator=g) < 0.5
    cl = torch.channels_last
    a, b = (torch.randn(4, 32, 8, 8, generator=g).bfloat16().to(memory_format=cl) for _ in "ab")
    return mask, a, b


def _wrong_fraction(**inductor: object) -> float:
    """The share of outputs Inductor's code gets wrong on this machine, from float64."""
    import torch._inductor.config as config

    mask, a, b = _inputs()
    want = torch.where(mask, 0.0, a.double() + b.double())

    def fn(m, x, y):
        return torch.where(m, 0.0, x.float() + y.float()).contiguous()

    torch._dynamo.reset()
    with config.patch(inductor):
        got = torch.compile(fn, dynamic=False)(mask, a, b)
    torch._dynamo.reset()
    wrong = (got.double() - want).abs() > 1e-6 * want.abs()  # float32 rounding: 6e-8
    return float(wrong.double().mean())


def test_the_probe_tells_the_fault_as_a_direct_check_finds_it():
    assert inductor_bf16_fault() is (_wrong_fraction() > 0)


@pytest.mark.skipif(not AVX512, reason="the workaround is for AVX-512 CPUs")
def test_the_workaround_the_warning_names_computes_the_kernel_right():
    assert _wrong_fraction(**{"cpp.simdlen": 256}) == 0
