"""The engine on CUDA: mixed precision (bf16, and fp16 with the grad scaler),
channels_last, ``torch.compile``, DDP over NCCL in one process, and checkpoints written
on the GPU resumed on the CPU and back. Every test needs a CUDA device (skipped without).
"""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch

import reference as ref
from convattn.engine.fit import fit
from convattn.layers import CBAM
from convattn.models import read_state_dict
from test_engine_train import _cfg as train_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DATA = "synthetic:train=128,val=64"


def _cfg(tmp_path, **over):
    cuda = {
        "data.path": DATA,
        "schedule.epochs": 1,
        "schedule.kind": "step",
        "schedule.step_epochs": 1,
        "run.deterministic": False,
        "run.device": "cuda",
    }
    return train_cfg(tmp_path, **{**cuda, **over})


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_training_on_cuda_with_mixed_precision_and_channels_last(tmp_path, amp, channels_last):
    cfg = _cfg(tmp_path, **{"run.amp": amp, "run.channels_last": channels_last})
    fit(cfg)
    (row,) = _records(tmp_path / "run")
    assert math.isfinite(row["train_loss"]) and 0 <= row["val_top1_err"] <= 100
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    if amp == "fp16":  # the grad scaler's state is saved for resume
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None
    weights = read_state_dict(tmp_path / "run" / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_compiled_training_on_cuda_reduces_the_loss(tmp_path):
    fit(_cfg(tmp_path, **{"run.compile": True, "run.amp": "bf16", "schedule.epochs": 2}))
    rows = _records(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]


def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu_and_back(tmp_path):
    run = tmp_path / "run"
    fit(_cfg(tmp_path))
    for epochs, device in ((2, "cpu"), (3, "cuda")):  # epochs may grow on a step schedule
        fit(_cfg(tmp_path, **{"schedule.epochs": epochs, "run.device": device}), resume=run)
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3
    assert all(t.device.type == "cpu" for t in state["model"].values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_nccl_in_one_process_matches_the_plain_module(monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        m = ref.randomize_(CBAM(32, reduction=4, impl="fused")).cuda()
        plain = ref.randomize_(CBAM(32, reduction=4, impl="fused")).cuda()
        wrapped = DDP(m, device_ids=[torch.cuda.current_device()])
        x = torch.randn(4, 32, 8, 8, device="cuda")
        wrapped(x).square().sum().backward()
        plain(x).square().sum().backward()
        for (name, a), b in zip(m.named_parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, msg=name)
    finally:
        dist.destroy_process_group()
