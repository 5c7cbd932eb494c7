"""Engine parts checked by hand: metrics, precise BN, atomic checkpoints, summary table."""

from __future__ import annotations

import pytest
import torch
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


def test_group_batchnorm_equals_batchnorm_without_a_process_group():
    bn = nn.BatchNorm2d(3)
    model = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(2, 3, 1), bn), torch.device("cpu"))
    assert isinstance(model[1], GroupBatchNorm)
    x = torch.randn(4, 2, 5, 5)
    ref = nn.BatchNorm2d(3)
    torch.testing.assert_close(model[1](model[0](x)), ref(model[0](x)))


def test_summary_table_layout():
    row = {"model": "m", "params_m": 1.234, "gmacs": 0.5, "top1_err": 10.0, "top5_err": 1.0}
    lines = format_table([row]).splitlines()
    assert lines[0].startswith("| model | params (M) | GFLOPs | top-1 err (%) | top-5 err (%)")
    assert lines[2] == "| m | 1.23 | 0.500 | 10.00 | 1.00 | - | - |"
