"""``convattn train --resume RUN_DIR`` continues the recipe the run was started with.

Each run is a real ``convattn train`` process. A small wrapper kills it with a real signal
during a chosen training step (a global forward pre-hook counts the network's training
forwards), so the interruption falls at the same step every time. SIGKILL leaves only the
checkpoint of the last finished epoch; SIGTERM saves one of the partial epoch. Resuming
with nothing but ``--resume DIR`` must end with exactly the uninterrupted run's weights
and metrics (on the CPU, same threads), and never rewrite the run's ``config.yaml``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

STEPS = 6  # per epoch: 192 images, batch 32
ARGS = ["train", "--config", "demo", "--model", "cifar_resnet20_cbam",
        "--data", "synthetic:train=192,val=64", "--batch-size", "32", "--epochs", "3",
        "--threads", "1"]  # fmt: skip
WRAPPER = """
import os, sys
import torch
from convattn.cli import main

sig, at = int(sys.argv[1]), int(sys.argv[2])
seen = [0]

def hook(module, args):
    if type(module).__name__ == "ResNet" and module.training:
        seen[0] += 1
        if seen[0] == at:
            os.kill(os.getpid(), sig)

torch.nn.modules.module.register_module_forward_pre_hook(hook)
sys.exit(main(sys.argv[3:]))
"""
TIMING = ("images_per_s",)  # wall-clock figures cannot repeat


def _run(
    args: list[str], *, kill: tuple[int, int] | None = None, cwd: Path
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kill is None:
        cmd = [sys.executable, "-m", "convattn", *args]
    else:
        cmd = [sys.executable, "-c", WRAPPER, str(kill[0]), str(kill[1]), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _train(out: Path, name: str, **kw) -> subprocess.CompletedProcess:
    return _run([*ARGS, "--output", str(out), "--run-name", name], cwd=out, **kw)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in rows]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = _train(out, "run")
    assert done.returncode == 0, done.stderr
    return out / "run"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumed_with_only_its_folder_equals_the_uninterrupted_run(
    uninterrupted, tmp_path, sig
):
    killed = _train(tmp_path, "run", kill=(int(sig), STEPS + 3))  # epoch 2, step 3
    run = tmp_path / "run"
    assert killed.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), killed.stderr
    config = (run / "config.yaml").read_bytes()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    # SIGKILL: the checkpoint of epoch 1; SIGTERM: the partial epoch 2 after 3 steps.
    assert (state["epoch"], state["step"]) == ((1, 0) if sig == signal.SIGKILL else (1, 3))
    assert len(_metrics(run)) == 1

    resumed = _run(["train", "--resume", str(run)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "config.yaml").read_bytes() == config
    assert _metrics(run) == _metrics(uninterrupted)
    want, got = _weights(uninterrupted), _weights(run)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_resume_refuses_options_that_change_the_recipe_and_allows_execution_options(tmp_path):
    first = _run([*ARGS[:-4], "--epochs", "1", "--threads", "1", "--output", str(tmp_path),
                  "--run-name", "run", "--max-steps", "2"], cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    config, metrics = (run / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()

    refused = _run(["train", "--resume", str(run), "--lr", "0.5", "--model", "cifar_resnet20"],
                   cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2
    err = refused.stderr
    assert "optim.lr" in err and "0.1" in err and "0.5" in err
    assert "model" in err and "cifar_resnet20_cbam" in err
    assert len(err.strip().splitlines()) == 1, err  # one line

    cosine = _run(["train", "--resume", str(run), "--epochs", "2"], cwd=tmp_path)
    assert cosine.returncode == 2 and "schedule.epochs" in cosine.stderr
    assert "cosine" in cosine.stderr  # the reason: the schedule depends on the run's length

    finished = _run(["train", "--resume", str(run), "--threads", "2", "--no-progress",
                     "--workers", "0"], cwd=tmp_path)  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert "already finished" in finished.stderr
    assert (run / "config.yaml").read_bytes() == config
    assert (run / "metrics.jsonl").read_bytes() == metrics


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    from convattn.engine import fit, load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: cifar_resnet20\n")
    cfg = load_config(None, {"run.output": str(tmp_path), "run.name": "run"})
    with pytest.raises(ValueError, match="already holds a run"):
        fit(cfg)
    assert (run / "config.yaml").read_text() == "model: cifar_resnet20\n"
