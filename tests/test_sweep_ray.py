"""``convattn sweep --backend ray`` on a local Ray instance, with tiny runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from convattn.cli import main
from convattn.data import DATA_ENV
from convattn.engine.run import read_metrics
from convattn.sweep import expand, load_grid
from convattn.sweep.runner import run_sweep
from test_sweep import RECIPE as SWEEP_RECIPE

#: test_sweep's two-step runs on the image folder, 8 images a step; one thread each, so
#: a Ray task and this process compute the same numbers.
RECIPE = {**SWEEP_RECIPE, "data.path": "tiny", "data.batch_size": 8, "data.augment": "none",
          "run.threads": 1}  # fmt: skip


def _tree(root: Path) -> Path:
    """A 2-class image folder ``root/tiny`` (16 training, 8 validation images of 16 px)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls in ("a", "b"):
            (root / "tiny" / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "tiny" / split / cls / f"{i}.png")
    return root


#: Two variants of different models.
TWO = {"plain": {"model": "cifar_resnet20"}, "se": {"model": "cifar_resnet20_se"}}


def _grid(folder: Path, variants: dict, **overrides: object) -> Path:
    data = {"description": "tiny", "overrides": {**RECIPE, **overrides}, "seeds": [0],
            "variants": variants, "presets": {"quick": {}}}  # fmt: skip
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _restore_data_env():
    """``--data-dir`` sets ``$CONVATTN_DATA`` in this process; undo it after each test."""
    before = os.environ.pop(DATA_ENV, None)
    yield
    os.environ.pop(DATA_ENV, None)
    if before is not None:
        os.environ[DATA_ENV] = before


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs, started once for the module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20)
    yield ray
    ray.shutdown()


def test_ray_tasks_train_each_run_once_with_the_local_runners_numbers(
    ray_instance, tmp_path, monkeypatch, capsys
):
    data = _tree(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the dataset is found through --data-dir only
    grid = _grid(tmp_path, TWO)
    common = ["sweep", str(grid), "--data-dir", str(data)]
    assert main([*common, "--dir", "ray", "--backend", "ray"]) == 0
    assert (
        "2 trained, 0 resumed, 0 skipped, 0 running elsewhere, 0 failed" in capsys.readouterr().out
    )
    assert main([*common, "--dir", "local"]) == 0
    for run in expand(load_grid(grid, "quick"), tmp_path / "ray" / "runs"):
        remote, local = (read_metrics(tmp_path / d / "runs" / run.name) for d in ("ray", "local"))
        assert len(remote) == 1
        for key in ("train_loss", "val_loss", "val_top1_err"):
            assert remote[0][key] == local[0][key], (run.variant, key)
    rows = json.loads((tmp_path / "ray" / "summary-tiny-quick.json").read_text())["rows"]
    assert [(r["variant"], r["n"]) for r in rows] == [("plain", 1), ("se", 1)]
    capsys.readouterr()
    assert main([*common, "--dir", "ray", "--backend", "ray"]) == 0
    assert "0 trained, 0 resumed, 2 skipped" in capsys.readouterr().out
    assert ray_instance.is_initialized()  # a Ray the caller started is left running


def test_a_failing_ray_task_is_reported_and_the_other_still_runs(ray_instance, tmp_path, capsys):
    bad = {"model": "cifar_resnet20_cbam", "attn": {"kernel_size": 4}}  # fails when built
    grid = _grid(tmp_path, {"ok": {"model": "cifar_resnet20"}, "bad": bad})
    args = ["sweep", str(grid), "--data-dir", str(_tree(tmp_path)), "--dir", str(tmp_path / "s")]
    assert main([*args, "--backend", "ray", "--cpus-per-run", "2"]) == 1
    out = capsys.readouterr()
    assert "1 trained, 0 resumed, 0 skipped, 0 running elsewhere, 1 failed" in out.out
    assert "2 CPUs, 0 GPUs each" in out.out
    assert "kernel_size must be odd" in out.err
    ok, failed = expand(load_grid(grid, "quick"), tmp_path / "s" / "runs")
    assert (tmp_path / "s" / "runs" / ok.name / "summary.json").is_file()
    assert (
        (tmp_path / "s" / "runs" / failed.name / "failed.txt")
        .read_text()
        .startswith("ValueError: kernel_size must be odd")
    )


def test_without_ray_installed_the_backend_is_one_line_naming_the_extra(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    grid = _grid(tmp_path, {"plain": {"model": "cifar_resnet20"}})
    args = ["sweep", str(grid), "--data-dir", str(_tree(tmp_path)), "--dir", str(tmp_path / "s")]
    assert main([*args, "--backend", "ray"]) == 2
    assert "--backend ray needs Ray: pip install 'convattn[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "auto"], "--address only go with --backend ray"),
        (["--gpus-per-run", "1"], "--gpus-per-run only go with --backend ray"),
        (["--backend", "ray", "--print-commands"], "drop --backend ray"),
        (["--backend", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be > 0"),
    ],
)
def test_backend_options_that_do_not_fit_are_one_line_errors(tmp_path, extra, message, capsys):
    if "ray" in extra and "--print-commands" not in extra:
        pytest.importorskip("ray")
    grid = _grid(tmp_path, {"plain": {"model": "cifar_resnet20"}})
    args = ["sweep", str(grid), "--data-dir", str(_tree(tmp_path)), "--dir", str(tmp_path / "s")]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_cancels_the_ray_tasks_which_keep_their_checkpoints_and_resume(tmp_path):
    pytest.importorskip("ray")
    long = {
        "data.path": "synthetic:train=4096,val=32",
        "data.batch_size": 16,
        "run.max_steps": None,
    }
    grid = _grid(tmp_path, TWO, **long)
    runs = expand(load_grid(grid, "quick"), tmp_path / "s" / "runs")
    cmd = [sys.executable, "-m", "convattn", "sweep", str(grid), "--dir", str(tmp_path / "s"),
           "--backend", "ray", "--cpus-per-run", "1"]  # fmt: skip
    sweep = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not all((tmp_path / "s" / "runs" / r.name / "config.yaml").exists() for r in runs):
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()[0]
        time.sleep(0.5)
    time.sleep(2)  # a few steps into the epoch
    sweep.send_signal(signal.SIGINT)
    out = sweep.communicate(timeout=180)[0]
    assert sweep.returncode == 130, out
    assert "sweep stopped; saved: the checkpoints of the 2 cancelled runs" in out
    for r in runs:
        folder = tmp_path / "s" / "runs" / r.name
        assert (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").exists()
    outcomes = run_sweep(runs, tmp_path / "s" / "runs", echo=lambda _: None)
    assert [o.status for o in outcomes] == ["resumed", "resumed"]
    assert all(read_metrics(tmp_path / "s" / "runs" / r.name)[-1]["epoch"] == 1 for r in runs)
