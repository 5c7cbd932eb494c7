"""The sweep's files under damage and misuse: cut-off records, unreadable grid files,
paths that do not exist, results an attempt leaves without a checkpoint, and the run
folder names of the committed results (which a change of config defaults would orphan)."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import pytest
import yaml

from convattn.cli import main
from convattn.engine import load_config
from convattn.engine.recipes import save_config
from convattn.engine.run import Run, read_metrics
from convattn.sweep import expand, load_grid
from convattn.sweep.runner import pending_commands, run_sweep

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "sweeps"
RECIPE = {
    "data.path": "synthetic:train=32,val=16",
    "data.batch_size": 16,
    "schedule.epochs": 1,
    "run.max_steps": 1,
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


def test_a_start_without_a_checkpoint_says_it_removes_the_results_it_finds(tmp_path, caplog):
    (spec,) = expand(load_grid(_grid(tmp_path), "quick"), tmp_path / "runs")
    folder = tmp_path / "runs" / spec.name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("[]\n")
    (folder / "metrics.jsonl").write_text('{"epoch": 7}\n')  # not this recipe's last epoch
    with caplog.at_level(logging.WARNING, "convattn"):
        (line,) = pending_commands([spec], tmp_path / "runs")
    assert "no checkpoint.pt, so the run starts over; removing its summary.json and " \
        "metrics.jsonl" in caplog.text  # fmt: skip
    assert not (folder / "summary.json").exists() and "--config" in line


def test_the_command_that_resumes_a_run_passes_the_execution_options_that_changed(tmp_path):
    (started,) = expand(load_grid(_grid(tmp_path), "quick"), tmp_path / "runs")
    folder = tmp_path / "runs" / started.name
    folder.mkdir(parents=True)
    save_config(started.config, folder / "config.yaml")  # started with workers 2, progress off
    (folder / "checkpoint.pt").write_bytes(b"")  # only its presence is read here
    now = {"run.threads": 1, "data.workers": 0, "run.progress": False, "run.device": "cpu"}
    (spec,) = expand(load_grid(_grid(tmp_path), "quick"), tmp_path / "runs", now)
    (line,) = pending_commands([spec], tmp_path / "runs")
    words = shlex.split(line)
    assert words[:3] == ["convattn", "train", "--resume"]
    assert words[3] == str(folder.resolve())
    assert words[4:] == ["--workers", "0", "--device", "cpu", "--threads", "1"]


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
