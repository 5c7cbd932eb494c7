"""Shared fixtures: models are built once per test session (per xdist worker)."""

from __future__ import annotations

import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Before anything imports Triton (torch._dynamo does): without a GPU its kernels,
    # convattn's Triton CBAM included, run on CPU tensors in Triton's interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from convattn.models import create_model

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per worker: with -n 2 on two cores, more threads oversubscribe
    # the machine and OpenMP's spin-waiting makes every test several times slower.
    torch.set_num_threads(1)


@functools.cache
def cached_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Datasets decoded or extracted by tests go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVATTN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Each test compiles from scratch: graphs compiled by earlier tests of the worker
    would count against dynamo's recompile limit for the same code (fullgraph=True then
    fails), and whether they do would depend on how tests are shared between workers."""
    yield
    import sys

    if "torch._dynamo" in sys.modules:  # only where something compiled
        torch._dynamo.reset()


@pytest.fixture
def fused_calls(monkeypatch):
    """The fused operators' call counts (``fused_spy.spy_fused``); skips when the extension
    is unavailable. Modules that check only the fused path make it autouse."""
    from fused_spy import spy_fused

    count = spy_fused(monkeypatch)
    if count is None:
        pytest.skip("fused extension unavailable")
    return count
