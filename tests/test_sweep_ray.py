"""``convattn sweep --backend ray`` on a local Ray instance, with tiny runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from convattn.cli import main
from convattn.data import DATA_ENV
from convattn.engine.run import read_metrics
from convattn.sweep import RunSpec, expand, load_grid
from convattn.sweep.runner import run_sweep
from test_sweep import RECIPE as SWEEP_RECIPE

#: The tests of this module share one Ray instance, so they run in one test process.
pytestmark = pytest.mark.xdist_group("ray")

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
def _restore_process_state():
    """``--data-dir`` sets ``$CONVATTN_DATA`` and runs in this process set torch's threads;
    undo both after each test."""
    before, threads = os.environ.pop(DATA_ENV, None), torch.get_num_threads()
    yield
    os.environ.pop(DATA_ENV, None)
    if before is not None:
        os.environ[DATA_ENV] = before
    torch.set_num_threads(threads)


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


@dataclass(eq=False)
class Ref:
    """A fake task's result reference (hashable, as Ray's are)."""

    fn: Callable
    spec: RunSpec
    args: tuple


class FakeRay:
    """Enough of Ray's API to drive the backend in this process: tasks run when their
    result is asked for; a task of variant ``dies`` fails as a dead worker would."""

    class exceptions:  # ray.exceptions
        class RayError(Exception):
            pass

    def __init__(self, connected: bool = True, cpus: float = 2.0, interrupt: bool = False):
        self.connected, self.cpus, self.interrupt = connected, cpus, interrupt
        self.calls: list[str] = []
        self.devices: list[str] = []

    def is_initialized(self) -> bool:
        return self.connected

    def init(self, **kwargs: object) -> None:
        self.calls.append(f"init {kwargs}")
        self.connected = True

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus}

    def remote(self, **options: object):
        fake = self

        class Task:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, spec, *args):
                fake.devices.append(spec.config.run.device)
                return Ref(self.fn, spec, args)

        return Task

    def wait(self, refs: list, num_returns: int = 1, timeout: float | None = None):
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if ref.spec.variant == "dies":
            raise self.exceptions.RayError("worker crashed\nthe worker's log says more")
        return ref.fn(ref.spec, *ref.args)

    def cancel(self, ref) -> None:
        self.calls.append(f"cancel {ref.spec.variant}")


def _fake_sweep(tmp_path: Path, monkeypatch, ray: FakeRay, variants: dict, *extra: str) -> int:
    monkeypatch.setitem(sys.modules, "ray", ray)
    grid = _grid(tmp_path, variants)
    data = tmp_path if (tmp_path / "tiny").exists() else _tree(tmp_path)
    args = ["sweep", str(grid), "--data-dir", str(data), "--dir", str(tmp_path / "s")]
    return main([*args, "--backend", "ray", *extra])


def test_a_dead_worker_is_one_failed_run_with_its_failed_txt_and_the_others_go_on(
    tmp_path, monkeypatch, capsys
):
    ray = FakeRay()
    variants = {"ok": {"model": "cifar_resnet20"}, "dies": {"model": "cifar_resnet20_se"}}
    assert _fake_sweep(tmp_path, monkeypatch, ray, variants) == 1
    out = capsys.readouterr()
    assert "1 trained, 0 resumed, 0 skipped, 0 running elsewhere, 1 failed" in out.out
    assert "RayError: worker crashed" in out.err
    ok, dies = expand(load_grid(tmp_path / "tiny.yaml", "quick"), tmp_path / "s" / "runs")
    assert (tmp_path / "s" / "runs" / ok.name / "summary.json").is_file()
    failed = (tmp_path / "s" / "runs" / dies.name / "failed.txt").read_text()
    assert failed.startswith("RayError: worker crashed\n")
    assert ray.devices == ["cpu", "cpu"]  # a task given no GPU trains on the CPU
    assert ray.calls == []  # a Ray the caller connected is neither started nor shut down


def test_a_run_bigger_than_a_started_instance_is_refused_and_ray_shut_down(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = FakeRay(connected=False, cpus=2.0)
    assert _fake_sweep(tmp_path, monkeypatch, ray, TWO, "--cpus-per-run", "4") == 2
    assert "a run asks for 4 CPUs and 0 GPUs; Ray has 2 and 0" in capsys.readouterr().err
    assert ray.calls == ["init {'address': 'local', 'include_dashboard': False}", "shutdown"]


def test_ctrl_c_while_waiting_cancels_every_pending_task(tmp_path, monkeypatch, capsys):
    ray = FakeRay(interrupt=True)
    assert _fake_sweep(tmp_path, monkeypatch, ray, TWO) == 130
    assert ray.calls == ["cancel plain", "cancel se"]
    out = capsys.readouterr().out
    assert "the checkpoints of the tasks that were training (2 cancelled in " in out


def test_finished_runs_are_skipped_without_starting_ray(tmp_path, monkeypatch, capsys):
    ray = FakeRay(connected=False)
    assert _fake_sweep(tmp_path, monkeypatch, ray, TWO) == 0  # trains both in this process
    ray.calls.clear()
    capsys.readouterr()
    assert _fake_sweep(tmp_path, monkeypatch, ray, TWO) == 0
    assert "0 trained, 0 resumed, 2 skipped" in capsys.readouterr().out
    assert ray.calls == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "auto"], "--address: for --backend ray only"),
        (["--gpus-per-run", "1"], "--gpus-per-run: for --backend ray only"),
        (["--backend", "ray", "--print-commands"], "drop --backend ray"),
        (["--backend", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be > 0"),
        (["--backend", "ray", "--gpus-per-run", "2"], "one GPU at most under Ray"),
    ],
)
def test_backend_options_that_do_not_fit_are_one_line_errors(tmp_path, extra, message, capsys):
    monkey = {} if "--print-commands" in extra or "ray" not in extra else {"ray": FakeRay()}
    grid = _grid(tmp_path, {"plain": {"model": "cifar_resnet20"}})
    args = ["sweep", str(grid), "--data-dir", str(_tree(tmp_path)), "--dir", str(tmp_path / "s")]
    with pytest.MonkeyPatch.context() as mp:
        for name, module in monkey.items():
            mp.setitem(sys.modules, name, module)
        assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


def _wait_for(condition, process: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"sweep ended or timed out (rc {process.wait()}):\n{log.read_text()}")
        time.sleep(0.5)


@pytest.mark.slow
def test_sigterm_to_the_driver_cancels_the_ray_tasks_which_keep_their_checkpoints(
    ray_instance, tmp_path
):
    long = {"data.path": "synthetic:train=1024,val=32", "data.batch_size": 16,
            "run.max_steps": None, "schedule.epochs": 3}  # fmt: skip
    grid = _grid(tmp_path, TWO, **long)
    runs = expand(load_grid(grid, "quick"), tmp_path / "s" / "runs")
    folders = [tmp_path / "s" / "runs" / r.name for r in runs]
    address = ray_instance.get_runtime_context().gcs_address  # join the module's instance
    cmd = [sys.executable, "-m", "convattn", "sweep", str(grid), "--dir", str(tmp_path / "s"),
           "--backend", "ray", "--address", address]  # fmt: skip
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:  # both runs past their first epoch, so both are in their training loops
        _wait_for(lambda: all(read_metrics(f) for f in folders), sweep, log)
        sweep.send_signal(signal.SIGTERM)  # as Ctrl-C, not Ray's exit
        assert sweep.wait(timeout=180) == 130, log.read_text()
    finally:
        sweep.kill()
    assert "sweep stopped; saved: the checkpoints of the tasks that were training (2 cancelled" in (
        log.read_text()
    )
    for folder in folders:
        assert (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").exists()
        assert [r["epoch"] for r in read_metrics(folder)][-1] < 3
    outcomes = run_sweep(runs, tmp_path / "s" / "runs", echo=lambda _: None)
    assert [o.status for o in outcomes] == ["resumed", "resumed"]
    assert all([r["epoch"] for r in read_metrics(f)] == [1, 2, 3] for f in folders)
