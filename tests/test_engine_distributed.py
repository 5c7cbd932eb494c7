"""Data-parallel training on the CPU (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from convattn.engine.sync_bn import GroupBatchNorm
from convattn.models import create_model, read_state_dict

ARGS = [
    "train",
    "--model", "cifar_resnet20_cbam",
    "--data", "synthetic:train=256,val=64",
    "--batch-size", "32",
    "--workers", "0",
    "--augment", "none",  # identical inputs whatever the rank
    "--epochs", "1",
    "--max-steps", "3",
    "--lr", "0.02",  # small steps: float noise is not amplified past the tolerance
    "--sync-bn",
    "--deterministic",
    "--no-progress",
    "--threads", "1",
    "--run-name", "run",
]  # fmt: skip


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVATTN_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # Measured after 3 steps: synchronised BN differs from one process by at most 1.4e-5
    # (float32 reduction order, amplified through the network; conv1.weight), while
    # unsynchronised BN differs by ~2e-2.
    _run([sys.executable, "-m", "convattn", *ARGS, "--output", str(tmp_path / "one")], tmp_path)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    _run([*torchrun, "-m", "convattn", *ARGS, "--output", str(tmp_path / "two")], tmp_path)
    one = read_state_dict(tmp_path / "one" / "run" / "checkpoint.pt")
    two = read_state_dict(tmp_path / "two" / "run" / "checkpoint.pt")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k].float(), one[k].float(), rtol=1e-4, atol=5e-5, msg=k)
    torch.manual_seed(0)  # fit's initial weights: the training really moved them
    start = create_model("cifar_resnet20_cbam").state_dict()
    assert not torch.allclose(start["layer2.0.conv1.weight"], one["layer2.0.conv1.weight"])


@pytest.mark.slow
def test_without_sync_bn_the_evaluation_scores_the_weights_rank_0_saves(tmp_path):
    # Each process updates its own BatchNorm statistics; before the fix the second one
    # evaluated its half of the images with them, not with the checkpoint's.
    args = [a for a in ARGS if a != "--sync-bn"] + ["--output", str(tmp_path)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]  # fmt: skip
    _run([*torchrun, "-m", "convattn", *args], tmp_path)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    cmd = [sys.executable, "-m", "convattn", "evaluate", str(tmp_path / "run"), "--last",
           "--json", "--workers", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVATTN_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    alone = json.loads(out.stdout)
    # The loss sees the statistics' differences that a few hundred predictions may not.
    assert record["val_loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert record["val_top1_err"] == pytest.approx(alone["top1_err"], abs=1e-9)


def test_group_batchnorm_synced_path_matches_batchnorm(tmp_path):
    # A one-process gloo group runs the synchronised code path; it must equal BatchNorm
    # in outputs, gradients and running statistics (unbiased variance, momentum).
    dist.init_process_group("gloo", init_method=(tmp_path / "pg").as_uri(), rank=0, world_size=1)
    try:
        ref, ours = nn.BatchNorm2d(3), GroupBatchNorm(3)
        with torch.no_grad():
            for m in (ref, ours):
                m.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
                m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        x = torch.randn(4, 3, 5, 6, dtype=torch.float32) * 3 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn_like(x)
        (ref(xa) * g).sum().backward()
        (ours(xb) * g).sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.running_mean, ref.running_mean)
        torch.testing.assert_close(ours.running_var, ref.running_var)
    finally:
        dist.destroy_process_group()
