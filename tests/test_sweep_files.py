"""The sweep's files under damage and misuse: cut-off records, unreadable grid files,
paths that do not exist, results an attempt leaves without a checkpoint, and the run
folder names of the committed results (which a change of config defaults would orphan)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from convattn.cli import main
from convattn.engine import load_config
from convattn.engine.recipes import save_config
from convattn.engine.run import Run, read_metrics
from convattn.sweep import expand, load_grid
from convattn.sweep.runner import run_sweep
from convattn.sweep.summary import summarize

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "sweeps"
RECIPE = {
    "data.path": "synthetic:train=32,val=16",
    "data.batch_size": 16,
    "schedule.epochs": 1,
    "run.max_steps": 2,
    "run.progress": False,
}


def _grid(folder: Path, text: str | None = None) -> Path:
    """A one-variant, one-seed grid file of tiny runs (or a file holding ``text``)."""
    data = {"overrides": RECIPE, "seeds": [0], "variants": {"plain": {"model": "cifar_resnet20"}},
            "presets": {"quick": {}}}  # fmt: skip
    path = folder / "g.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return path


def test_a_cut_off_last_record_is_left_out_and_cut_before_a_resume_appends(tmp_path, caplog):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "lo')
    with caplog.at_level(logging.WARNING, "convattn"):
        assert read_metrics(tmp_path) == [{"epoch": 1, "loss": 2.0}]
    assert "metrics.jsonl:2: a cut-off last record" in caplog.text
    run = Run(
        load_config(None, {**RECIPE, "model": "cifar_resnet20"}), folder=tmp_path, resume=True
    )
    try:
        run.log_metrics({"epoch": 2, "loss": 1.5})
    finally:
        run.close()
    assert metrics.read_text() == '{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.5}\n'


def test_a_bad_record_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_metrics(tmp_path)


def test_a_grid_that_is_not_yaml_is_one_line_naming_the_file(tmp_path, capsys):
    path = _grid(tmp_path, "variants: {a: [1, 2}\n")
    assert main(["sweep", str(path), "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convattn sweep: error: g.yaml: not valid YAML") and "\n" not in err


def test_a_grid_path_that_does_not_exist_never_falls_back_to_the_packaged_grid(tmp_path, capsys):
    missing = tmp_path / "mine" / "table4_cifar.yaml"
    assert main(["sweep", str(missing), "--print-commands", "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert f"grid file not found: {missing}" in err and not (tmp_path / "s").exists()


def _train_line(tmp_path: Path, capsys) -> tuple[Path, list[str]]:
    """The run folder of the one-run grid and its printed command's arguments."""
    grid = _grid(tmp_path)
    (spec,) = expand(load_grid(grid, "quick"), tmp_path / "s" / "runs")
    assert main(["sweep", str(grid), "--dir", str(tmp_path / "s"), "--print-commands"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    words = shlex.split(line)
    assert words[:2] == ["convattn", "train"] and words[-1] == "--resume-existing"
    return (tmp_path / "s" / "runs" / spec.name).resolve(), words[1:]


def test_a_restart_without_a_checkpoint_says_it_removes_the_results_it_finds(
    tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.delenv("CONVATTN_DATA", raising=False)
    folder, args = _train_line(tmp_path, capsys)
    started = load_config(folder / "sweep-config.yaml", {"run.output": "elsewhere/runs"})
    save_config(started, folder / "config.yaml")  # the same recipe, written from elsewhere
    (folder / "summary.json").write_text("[]\n")
    (folder / "metrics.jsonl").write_text('{"epoch": 7}\n')  # left by an attempt
    with caplog.at_level(logging.WARNING, "convattn"):
        assert main(args) == 0
    assert "no checkpoint.pt, so the run starts over; removing its summary.json and " \
        "metrics.jsonl" in caplog.text  # fmt: skip
    assert [r["epoch"] for r in read_metrics(folder)] == [1]


def test_the_printed_command_runs_again_after_a_stop_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CONVATTN_DATA", raising=False)
    folder, args = _train_line(tmp_path, capsys)
    stop = torch.nn.modules.module.register_module_forward_pre_hook(_sigint_on_first_step())
    try:
        assert main(args) == 130  # stopped with its checkpoint saved
    finally:
        stop.remove()
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 1
    assert not (folder / "summary.json").exists()
    assert main(args) == 0  # the same line again: resumed to the end
    assert [r["epoch"] for r in read_metrics(folder)] == [1]
    assert (folder / "summary.json").is_file()
    assert main(args) == 0  # and once more, finished: nothing is trained or appended
    assert [r["epoch"] for r in read_metrics(folder)] == [1]


def test_the_printed_command_refuses_a_folder_holding_another_recipe(tmp_path, capsys):
    folder, args = _train_line(tmp_path, capsys)
    other = load_config(folder / "sweep-config.yaml", {"optim.lr": 0.5})
    save_config(other, folder / "config.yaml")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "optim.lr" in err
    assert load_config(folder / "config.yaml").optim.lr == 0.5  # left as it was


def test_the_printed_command_leaves_a_run_in_use_elsewhere_untouched(tmp_path, capsys):
    folder, args = _train_line(tmp_path, capsys)
    save_config(load_config(folder / "sweep-config.yaml"), folder / "config.yaml")
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')  # the other process's, before
    hold = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); " \
        "print('locked', flush=True); time.sleep(60)"  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder / "run.lock")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(args) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "in use" in capsys.readouterr().err
    assert (folder / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def _sigint_on_first_step():
    def interrupt(module, args):  # SIGINT in the first training forward of the network
        if type(module).__name__ == "ResNet" and module.training:
            os.kill(os.getpid(), signal.SIGINT)

    return interrupt


def test_a_summary_that_fails_after_a_run_does_not_end_the_sweep(tmp_path, caplog):
    specs = expand(load_grid(_grid(tmp_path), "quick"), tmp_path / "runs")

    def broken(_):
        raise OSError("disk full")

    with caplog.at_level(logging.WARNING, "convattn"):
        outcomes = run_sweep(specs, tmp_path / "runs", after_run=broken, echo=lambda _: None)
    assert [o.status for o in outcomes] == ["trained"]
    assert "OSError: disk full" in caplog.text


def test_the_committed_results_keep_their_run_folders(tmp_path):
    """Every run a committed grid index names is the folder the grid expands to today: a
    change to the recipe's defaults or to the run key would start all of them again."""
    indexes = sorted((RESULTS / "grids").glob("*.json"))
    assert indexes, "no committed grid index"
    for index in indexes:
        data = json.loads(index.read_text())
        grid = load_grid(data["grid"], data["preset"])
        names = {(r.variant, r.seed): f"runs/{r.name}" for r in expand(grid, tmp_path)}
        committed = {(v, e["seed"]): e["run"] for v, es in data["variants"].items() for e in es}
        assert committed == names, index.name


def _run_files(folder: Path, top1: float, train_errs: list[float | None], **extra) -> None:
    """A finished run's summary.json and metrics.jsonl, written by hand."""
    folder.mkdir(parents=True)
    row = {"model": "m", "top1_err": top1, "top5_err": 1.0, **extra}
    (folder / "summary.json").write_text(json.dumps([row]))
    lines = [{"epoch": e, "val_top1_err": top1 + 2 - e, "train_top1_err": t}
             for e, t in enumerate(train_errs, 1)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_damaged_run_is_left_out_of_the_summary_and_a_missing_value_is_skipped(tmp_path):
    runs = {"a": [(0, "runs/a0"), (1, "runs/a1"), (2, "runs/a2")], "b": [(0, "runs/b0")]}
    variants = {v: [{"seed": s, "run": r} for s, r in es] for v, es in runs.items()}
    index = {"grid": "g", "preset": "quick", "baseline": "a", "epochs": 2, "variants": variants}
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "g-quick.json").write_text(json.dumps(index))
    _run_files(tmp_path / "runs" / "a0", 10.0, [30.0, 20.0], code="convattn 9.9 at abc")
    _run_files(tmp_path / "runs" / "a1", 12.0, [None, 24.0])  # a non-finite loss logged as null
    _run_files(tmp_path / "runs" / "b0", 11.0, [31.0, 21.0])
    (tmp_path / "runs" / "a2").mkdir()
    (tmp_path / "runs" / "a2" / "summary.json").write_text('[{"model": "m", "top1')  # torn
    summarize(tmp_path)
    data = json.loads((tmp_path / "summary-g-quick.json").read_text())
    a = next(r for r in data["rows"] if r["variant"] == "a")
    assert (a["n"], a["pending"], a["top1_err_mean"]) == (2, 1, 11.0)
    assert a["top1_err_std"] == pytest.approx(2**0.5)  # sd of 10 and 12, ddof 1
    curves = data["curves"]["a"]
    assert curves["val_top1_err"] == [12.0, 11.0]
    assert curves["train_top1_err"] == [30.0, 22.0]  # epoch 1: only a0's value
    assert a["code"] == ["convattn 9.9 at abc", "not recorded"]
    md = (tmp_path / "summary-g-quick.md").read_text()
    assert "Code of the finished runs: convattn 9.9 at abc; not recorded.\n" in md


KILL_AT_STEP = """
import os, signal, sys, torch
from convattn.cli import main
seen = {"steps": 0}
def kill(module, args):  # SIGKILL in the first step of epoch 2 (after its checkpoint)
    if type(module).__name__ == "ResNet" and module.training:
        seen["steps"] += 1
        if seen["steps"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
torch.nn.modules.module.register_module_forward_pre_hook(kill)
main(["sweep", sys.argv[1], "--dir", sys.argv[2]])
"""


def test_a_sweep_killed_by_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    over = {**RECIPE, "schedule.epochs": 2, "run.max_steps": None, "run.threads": 1,
            "run.deterministic": True, "data.workers": 0}  # fmt: skip
    data = {"overrides": over, "seeds": [0], "variants": {"p": {"model": "cifar_resnet20"}},
            "presets": {"quick": {}}}  # fmt: skip
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(data))
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(grid), str(tmp_path / "k")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    (spec,) = expand(load_grid(grid, "quick"), tmp_path / "k" / "runs")
    folder = tmp_path / "k" / "runs" / spec.name
    assert [r["epoch"] for r in read_metrics(folder)] == [1]
    assert not (folder / "summary.json").exists()
    assert [o.status for o in run_sweep([spec], tmp_path / "k" / "runs")] == ["resumed"]
    (whole,) = expand(load_grid(grid, "quick"), tmp_path / "w" / "runs")
    assert [o.status for o in run_sweep([whole], tmp_path / "w" / "runs")] == ["trained"]

    def errors(f: Path) -> list[tuple[int, float, float]]:
        return [(r["epoch"], r["val_top1_err"], r["train_loss"]) for r in read_metrics(f)]

    assert errors(folder) == errors(tmp_path / "w" / "runs" / whole.name)
