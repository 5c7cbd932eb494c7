"""``convattn detect train`` over two gloo processes: each scores its share of the
evaluation images, and the gathered figures equal one process scoring them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# 5 evaluation images: the sampler pads the second share with a repeat of the first
# image, which the gathering must drop (pycocotools would count it twice).
DATA = "synthetic:train=8,val=5,img_size=64,classes=1,objects=1"
ARGS = ["detect", "train", "--config", "demo", "--model", "resnet18_cbam",
        "--min-size", "64", "--max-size", "64", "--fpn-channels", "16",
        "--representation-size", "32", "--data", DATA, "--batch-size", "2",
        "--lr", "0.05", "--epochs", "1", "--threads", "1", "--no-progress",
        "--run-name", "r"]  # fmt: skip


def _run(cmd: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVATTN_CACHE": str(cwd / "cache")}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_two_processes_gather_the_evaluation_of_every_image_once(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]  # fmt: skip
    _run([*torchrun, "-m", "convattn", *ARGS, "--output", str(tmp_path)], tmp_path)
    run = tmp_path / "r"
    record = [json.loads(line) for line in (run / "metrics.jsonl").open()][-1]
    cmd = [sys.executable, "-m", "convattn", "detect", "evaluate", str(run), "--last"]
    _run(cmd, tmp_path)
    alone = json.loads((run / "evaluation-val-last.json").read_text())
    assert alone["images"] == 5
    assert record["val_map"] > 0  # figures that a wrong gathering would change
    for key in ("map", "map_50", "voc07_map", "voc_map"):
        assert record[f"val_{key}"] == pytest.approx(alone[key], abs=1e-9), key
