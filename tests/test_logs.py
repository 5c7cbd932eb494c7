"""What a run prints when nobody watches a terminal: one line per epoch, no bar redraws,
no notices that are not the user's concern."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from convattn.engine import progress as progress_mod
from convattn.engine.progress import Progress


@pytest.mark.slow
def test_training_into_a_pipe_prints_one_line_per_epoch_and_no_redraws(tmp_path):
    args = ["train", "--model", "cifar_resnet20_cbam", "--data", "synthetic:train=64,val=32",
            "--batch-size", "16", "--workers", "0", "--epochs", "2", "--threads", "1",
            "--output", str(tmp_path), "--run-name", "r"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "convattn", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "\r" not in err  # no progress-bar redraws
    assert "No CUDA runtime" not in err  # the fused kernels' build needs no CUDA
    lines = err.splitlines()
    for epoch in (1, 2):
        assert sum(line.startswith(f"epoch {epoch}/2 ") for line in lines) == 1, err
    assert len(lines) <= 6, err  # the start line, two epoch lines, nothing per step


def test_progress_off_a_terminal_logs_at_most_one_line_per_interval(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="convattn")
    with Progress(100, "epoch 1/3", live=False, interval=30.0) as bar:
        for _ in range(100):
            now[0] += 1.0  # one step a second: a line at 30, 60 and 90 s
            bar.update(loss="1.000")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"epoch 1/3: step {s}/100  loss 1.000" for s in (30, 60, 90)]


def test_progress_disabled_prints_nothing(monkeypatch, caplog):
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: 1e9)
    caplog.set_level(logging.INFO, logger="convattn")
    with Progress(5, "eval", enabled=False, live=False, interval=0.0) as bar:
        for _ in range(5):
            bar.update()
    assert bar.bar is None and caplog.records == []
