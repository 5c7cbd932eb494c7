"""Engine parts checked by hand or against plain PyTorch: metrics, precise BN, atomic
checkpoints, synchronised BatchNorm over two processes, summary table."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from convattn.engine.checkpoint import (
    atomic_save,
    get_rng_state,
    load_training_state,
    set_rng_state,
)
from convattn.engine.evaluate import precise_bn
from convattn.engine.metrics import Meter, topk_correct
from convattn.engine.run import format_table
from convattn.engine.sync_bn import GroupBatchNorm, convert_sync_batchnorm


def test_topk_correct_by_hand():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # top-1 class 1
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # target 4: in top-5, not top-1
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # target 0: ranked last -> not in top-5
        ]
    )
    assert topk_correct(logits, torch.tensor([1, 4, 0])) == [1, 2]
    soft = torch.tensor([[0.1, 0.9, 0, 0, 0, 0], [0, 0, 0, 0, 1.0, 0], [0.8, 0.2, 0, 0, 0, 0]])
    assert topk_correct(logits, soft) == [1, 2]
    assert topk_correct(logits[:, :3], torch.tensor([1, 2, 0]), ks=(1, 5)) == [1, 3]


def test_meter_averages():
    m = Meter()
    m.update(2, loss=3.0, top1=1)
    m.update(3, loss=2.0, top1=3)
    assert m.mean("loss") == pytest.approx(1.0) and m.mean("top1") == pytest.approx(0.8)
    assert m.reduce().sums == m.sums  # single process: unchanged


def test_precise_bn_is_the_plain_mean_over_batches():
    bn = nn.BatchNorm2d(2)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 2, 3, 3, generator=g) * (i + 1) + i, torch.zeros(4)) for i in range(3)
    ]
    used = precise_bn(bn, batches, num_batches=3, device=torch.device("cpu"))
    assert used == 3
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b, _ in batches])
    vars_ = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1) for b, _ in batches])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, vars_.mean(0))
    assert bn.momentum == 0.1  # restored


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": Boom()}, path)
    assert torch.equal(load_training_state(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    atomic_save({"rng": get_rng_state()}, tmp_path / "r.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_training_state(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_convert_sync_batchnorm_keeps_parameters_statistics_and_mode():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, momentum=0.3), nn.BatchNorm1d(4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    model[2].eval()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    model = convert_sync_batchnorm(model, torch.device("cpu"))
    assert [type(m) for m in model] == [nn.Conv2d, GroupBatchNorm, GroupBatchNorm]
    assert (model[1].momentum, model[1].training, model[2].training) == (0.3, True, False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def _bn(cls: type[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    """A float64 BatchNorm of 3 channels with fixed, non-trivial affine parameters."""
    bn = cls(3, momentum=0.5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return bn


def _group_bn_step(x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training step of GroupBatchNorm on this process's part ``x`` of the batch, with
    output gradient ``g``: output, input gradient, parameter gradients, running stats."""
    bn = _bn(GroupBatchNorm)
    x = x.clone().requires_grad_()
    y = bn(x)
    y.backward(g)
    return {
        "y": y.detach(),
        "gx": x.grad,
        "gw": bn.weight.grad,
        "gb": bn.bias.grad,
        "running_mean": bn.running_mean,
        "running_var": bn.running_var,
    }


_RANK1 = """
import sys, datetime, torch, torch.distributed as dist
from test_engine_parts import _group_bn_step
init, inputs, out = sys.argv[1:]
dist.init_process_group("gloo", init_method=init, rank=1, world_size=2,
                        timeout=datetime.timedelta(seconds=120))
try:
    torch.save(_group_bn_step(*torch.load(inputs)), out)
finally:
    dist.destroy_process_group()
"""


def test_group_batchnorm_over_two_processes_equals_batchnorm_on_the_joined_batch(tmp_path):
    # Two gloo processes hold 3 and 2 samples of one batch: outputs and input gradients
    # must be those of BatchNorm on all 5 samples, the per-process parameter gradients
    # must sum to its gradients, and both running statistics (the unbiased variance of
    # all 5 samples) must be its own.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 2, generator=gen, dtype=torch.float64) * 3 + 1
    g = torch.randn(5, 3, 4, 2, generator=gen, dtype=torch.float64)
    torch.save((x[3:], g[3:]), tmp_path / "rank1_in.pt")
    init = (tmp_path / "store").as_uri()
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([tests, env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-c", _RANK1, init, str(tmp_path / "rank1_in.pt")]
    child = subprocess.Popen(
        [*argv, str(tmp_path / "rank1_out.pt")], env=env, stderr=subprocess.PIPE
    )
    try:
        timeout = datetime.timedelta(seconds=120)
        dist.init_process_group("gloo", init_method=init, rank=0, world_size=2, timeout=timeout)
        try:
            got = [_group_bn_step(x[:3], g[:3])]
        finally:
            dist.destroy_process_group()
    finally:
        _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    got.append(torch.load(tmp_path / "rank1_out.pt"))

    ref = _bn(nn.BatchNorm2d)
    xr = x.clone().requires_grad_()
    y = ref(xr)
    y.backward(g)
    close = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(torch.cat([r["y"] for r in got]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([r["gx"] for r in got]), xr.grad, **close)
    torch.testing.assert_close(got[0]["gw"] + got[1]["gw"], ref.weight.grad, **close)
    torch.testing.assert_close(got[0]["gb"] + got[1]["gb"], ref.bias.grad, **close)
    for r in got:
        torch.testing.assert_close(r["running_mean"], ref.running_mean, **close)
        torch.testing.assert_close(r["running_var"], ref.running_var, **close)


def test_summary_table_layout():
    row = {"model": "m", "params_m": 1.234, "gmacs": 0.5, "top1_err": 10.0, "top5_err": 1.0}
    lines = format_table([row]).splitlines()
    assert lines[0].startswith("| model | params (M) | GFLOPs | top-1 err (%) | top-5 err (%)")
    assert lines[2] == "| m | 1.23 | 0.500 | 10.00 | 1.00 | - | - |"
