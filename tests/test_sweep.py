"""Sweeps on generated data with tiny runs: grids, resuming, sharding, locks, summaries."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from convattn._version import __version__, source_commit
from convattn.cli import main
from convattn.engine import StopRequested, fit, load_config
from convattn.engine.lock import RunLocked
from convattn.engine.run import read_metrics
from convattn.engine.setup import build_model
from convattn.models import read_state_dict
from convattn.sweep import expand, list_grids, load_grid, run_key
from convattn.sweep.runner import pending_commands, run_sweep, shard

#: One epoch of two steps of 16 images; evaluation on 32.
RECIPE = {
    "data.path": "synthetic:train=64,val=32",
    "data.batch_size": 16,
    "data.workers": 0,
    "optim.lr": 0.05,
    "schedule.epochs": 1,
    "schedule.kind": "cosine",
    "run.max_steps": 2,
    "run.progress": False,
    "run.deterministic": True,
}
TWO = {"plain": {"model": "cifar_resnet20"}, "se": {"model": "cifar_resnet20_se"}}
LOCK_HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def _grid(folder: Path, name: str = "tiny", **fields) -> Path:
    """A grid file in ``folder`` (fields replace the defaults: TWO x seeds 0, 1)."""
    data = {
        "description": "tiny grid",
        "overrides": {**RECIPE, **fields.pop("overrides", {})},
        "seeds": [0, 1],
        "variants": TWO,
        "presets": {"quick": {}},
        **fields,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _sweep(*args: object) -> int:
    return main(["sweep", *map(str, args)])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2-variant x 2-seed grid swept once: (grid file, sweep folder, its runs)."""
    root = tmp_path_factory.mktemp("swept")
    grid = _grid(root)
    assert _sweep(grid, "--dir", root / "sweep") == 0
    return grid, root / "sweep", expand(load_grid(grid, "quick"), root / "sweep" / "runs")


def test_a_grid_runs_every_variant_and_seed_and_a_rerun_skips_them(swept, capsys):
    grid, sweep, runs = swept
    assert [(r.variant, r.seed) for r in runs] == [("plain", 0), ("se", 0), ("plain", 1), ("se", 1)]
    assert len({r.name for r in runs}) == 4
    for r in runs:
        folder = sweep / "runs" / r.name
        assert json.loads((folder / "summary.json").read_text())[0]["model"] == r.config.model
        assert load_config(folder / "config.yaml").run.seed == r.seed
    stamps = {r.name: (sweep / "runs" / r.name / "checkpoint.pt").stat().st_mtime_ns for r in runs}
    capsys.readouterr()
    assert _sweep(grid, "--dir", sweep) == 0
    assert "0 trained, 0 resumed, 4 skipped" in capsys.readouterr().out
    after = {r.name: (sweep / "runs" / r.name / "checkpoint.pt").stat().st_mtime_ns for r in runs}
    assert after == stamps
    assert pending_commands(runs, sweep / "runs") == []


def _by_hand(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


#: What a run records as its code: this package's version and its sources' commit.
_CODE = f"convattn {__version__}" + (f" at {source_commit()}" if source_commit() else "")


def test_summary_means_and_stds_equal_a_hand_computation_from_the_run_files(swept, capsys):
    _, sweep, runs = swept
    assert _sweep("--summarize", sweep) == 0
    assert "summary-tiny-quick.md" in capsys.readouterr().out
    summary = json.loads((sweep / "summary-tiny-quick.json").read_text())
    rows = {r["variant"]: r for r in summary["rows"]}
    errs = {}
    for variant in ("plain", "se"):
        files = [sweep / "runs" / r.name / "summary.json" for r in runs if r.variant == variant]
        per_run = [json.loads(f.read_text())[0] for f in files]
        row = rows[variant]
        assert (row["n"], row["pending"]) == (2, 0)
        for key in ("top1_err", "top5_err"):
            mean, std = _by_hand([p[key] for p in per_run])
            assert row[f"{key}_mean"] == pytest.approx(mean, abs=1e-12)
            assert row[f"{key}_std"] == pytest.approx(std, abs=1e-12)
            errs[variant, key] = (mean, std)
        losses = [read_metrics(f.parent)[-1]["train_loss"] for f in files]
        mean, std = _by_hand(losses)
        assert row["train_loss_mean"] == pytest.approx(mean, abs=1e-12)
        assert row["train_loss_std"] == pytest.approx(std, abs=1e-12)
        assert row["params_m"] == per_run[0]["params_m"]
        assert {p["code"] for p in per_run} == {_CODE} and row["code"] == [_CODE]
    for key in ("top1_err", "top5_err"):
        (m1, s1), (m0, s0) = errs["se", key], errs["plain", key]
        assert rows["se"][f"d_{key}"] == pytest.approx(m1 - m0, abs=1e-12)
        assert rows["se"][f"d_{key}_spread"] == pytest.approx(
            math.sqrt(s1**2 / 2 + s0**2 / 2), abs=1e-12
        )
        assert rows["plain"][f"d_{key}"] is None  # the baseline itself
    text = (sweep / "summary-tiny-quick.md").read_text()
    m, s = errs["se", "top1_err"]
    assert f"| se | cifar_resnet20_se | 2 | {m:.2f} ± {s:.2f} |" in text
    loss = rows["se"]
    assert f" | {loss['train_loss_mean']:.3f} ± {loss['train_loss_std']:.3f} | " in text
    assert (sweep / "summary-tiny-quick.png").stat().st_size > 10_000
    curve = summary["curves"]["se"]
    assert curve["epoch"] == [1.0] and curve["val_top1_err"] == [pytest.approx(m)]


def test_shards_are_disjoint_and_cover_the_grid(tmp_path, capsys):
    grid = load_grid(_grid(tmp_path, seeds=[0, 1, 2]), "quick")
    runs = expand(grid, tmp_path / "sweep" / "runs")
    for n in range(1, 8):
        shares = [{r.name for r in shard(runs, k, n)} for k in range(1, n + 1)]
        assert sum(len(s) for s in shares) == len(runs) == 6
        assert set().union(*shares) == {r.name for r in runs}
    grid_path = tmp_path / "tiny.yaml"
    assert _sweep(grid_path, "--dir", tmp_path / "s", "--shard", "2/2", "--print-commands") == 0
    lines = capsys.readouterr().out.splitlines()
    names = [(w := shlex.split(ln))[w.index("--run-name") + 1] for ln in lines]
    assert names == [r.name for r in shard(runs, 2, 2)]
    assert _sweep(grid_path, "--shard", "3/2") == 2
    assert "1 <= K <= N" in capsys.readouterr().err


def test_print_commands_train_each_pending_run_with_its_exact_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CONVATTN_DATA", raising=False)
    grid = _grid(tmp_path)
    runs = expand(load_grid(grid, "quick"), tmp_path / "sweep" / "runs")
    assert _sweep(grid, "--dir", tmp_path / "sweep", "--print-commands") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(ln.startswith("convattn train --config ") for ln in lines)
    assert main(shlex.split(lines[0])[1:]) == 0
    folder = (tmp_path / "sweep" / "runs" / runs[0].name).resolve()
    assert run_key(load_config(folder / "config.yaml")) == runs[0].key
    capsys.readouterr()
    assert _sweep(grid, "--dir", tmp_path / "sweep", "--print-commands") == 0
    assert capsys.readouterr().out.splitlines() == lines[1:]


def _stop_at_step(n: int):
    calls = {"n": 0}

    def interrupt(module, args):  # SIGINT during the n-th training forward of the network
        if type(module).__name__ == "ResNet" and module.training:
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGINT)

    return torch.nn.modules.module.register_module_forward_pre_hook(interrupt)


def _records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if "images_per_s" not in k} for ln in lines]


def test_a_run_stopped_midway_is_resumed_by_the_sweep_and_ends_as_an_uninterrupted_run(tmp_path):
    path = _grid(
        tmp_path,
        variants={"cbam": {"model": "cifar_resnet20_cbam"}},
        seeds=[0],
        overrides={"run.max_steps": 3},
    )
    grid = load_grid(path, "quick")
    (a,), (b,) = expand(grid, tmp_path / "a" / "runs"), expand(grid, tmp_path / "b" / "runs")
    assert a.name == b.name  # the key does not depend on where runs are written
    assert [o.status for o in run_sweep([a], tmp_path / "a" / "runs")] == ["trained"]
    handle = _stop_at_step(2)
    try:
        with pytest.raises(StopRequested):
            fit(b.config)
    finally:
        handle.remove()
    folder = tmp_path / "b" / "runs" / b.name
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)
    here = folder.resolve()
    assert pending_commands([b], tmp_path / "b" / "runs") == [
        f"convattn train --config {shlex.quote(str(here / 'sweep-config.yaml'))} --output "
        f"{shlex.quote(str(here.parent))} --run-name {b.name} --resume-existing"
    ]
    assert [o.status for o in run_sweep([b], tmp_path / "b" / "runs")] == ["resumed"]
    assert _records(folder) == _records(tmp_path / "a" / "runs" / a.name)
    wa, wb = (
        read_state_dict(f / "checkpoint.pt") for f in (tmp_path / "a" / "runs" / a.name, folder)
    )
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0, msg=k)


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path, capsys):
    bad = {"model": "cifar_resnet20_cbam", "attn": {"kernel_size": 4}}  # fails when built
    grid = _grid(tmp_path, variants={"ok": {"model": "cifar_resnet20"}, "bad": bad}, seeds=[0])
    assert _sweep(grid, "--dir", tmp_path / "sweep") == 1
    out = capsys.readouterr()
    assert "1 trained, 0 resumed, 0 skipped, 0 running elsewhere, 1 failed" in out.out
    assert "kernel_size must be odd" in out.err
    ok, failed = expand(load_grid(grid, "quick"), tmp_path / "sweep" / "runs")
    assert (tmp_path / "sweep" / "runs" / ok.name / "summary.json").is_file()
    text = (tmp_path / "sweep" / "runs" / failed.name / "failed.txt").read_text()
    assert text.startswith("ValueError: kernel_size must be odd")
    rows = json.loads((tmp_path / "sweep" / "summary-tiny-quick.json").read_text())["rows"]
    counts = [(r["variant"], r["n"], r["pending"], r["failed"]) for r in rows]
    assert counts == [("ok", 1, 0, 0), ("bad", 0, 0, 1)]
    md = (tmp_path / "sweep" / "summary-tiny-quick.md").read_text()
    assert "| bad | - | 0 (+1 failed) |" in md
    assert f"{rows[0]['top1_err_mean']:.2f} ± - |" in md  # one seed: no standard deviation
    assert _sweep(grid, "--dir", tmp_path / "sweep") == 1  # tried again, still failing
    assert (
        "0 trained, 0 resumed, 1 skipped, 0 running elsewhere, 1 failed" in capsys.readouterr().out
    )


def test_a_locked_run_is_left_to_its_holder_and_a_killed_holders_lock_is_free(tmp_path):
    path = _grid(tmp_path, variants={"plain": {"model": "cifar_resnet20"}})
    runs = expand(load_grid(path, "quick"), tmp_path / "runs")
    folder = tmp_path / "runs" / runs[0].name
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(folder / "run.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert [o.status for o in run_sweep(runs, tmp_path / "runs")] == ["busy", "trained"]
        with pytest.raises(RunLocked, match="in use"):
            fit(runs[0].config)  # `convattn train` refuses it as well
        assert pending_commands(runs, tmp_path / "runs") == []  # one busy, one finished
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    assert [o.status for o in run_sweep(runs, tmp_path / "runs")] == ["trained", "skipped"]


@pytest.mark.slow
def test_two_sweep_processes_racing_on_one_folder_train_each_run_once(tmp_path):
    grid = _grid(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "convattn",
        "sweep",
        str(grid),
        "--dir",
        str(tmp_path / "sweep"),
        "--set",
        "run.threads=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(o.count("] trained") for o in outs) == 4, outs
    for r in expand(load_grid(grid, "quick"), tmp_path / "sweep" / "runs"):
        folder = tmp_path / "sweep" / "runs" / r.name
        assert len(_records(folder)) == 1
        starts = [
            ln for ln in (folder / "train.log").read_text().splitlines() if "steps/epoch" in ln
        ]
        assert len(starts) == 1, r.name


def test_identical_effective_configs_share_one_run_folder_across_grids(tmp_path, capsys):
    cbam = {"model": "cifar_resnet20_cbam"}
    first = _grid(tmp_path, "first", variants={"cbam": cbam}, seeds=[0])
    same = {**cbam, "attn": {"kernel_size": 7, "pool_types": ["avg", "max"]}, "attn_impl": "auto"}
    other = {**cbam, "attn": {"kernel_size": 3}}
    second = _grid(
        tmp_path,
        "second",
        variants={"k7": same, "k3": other},
        seeds=[0],
        overrides={"data.workers": 1, "run.progress": True},
    )
    (r1,) = expand(load_grid(first, "quick"), tmp_path / "sweep" / "runs")
    r7, r3 = expand(load_grid(second, "quick"), tmp_path / "sweep" / "runs")
    assert r7.name == r1.name and r3.name != r1.name
    assert _sweep(first, "--dir", tmp_path / "sweep") == 0
    capsys.readouterr()
    assert _sweep(second, "--dir", tmp_path / "sweep") == 0
    assert "1 trained, 0 resumed, 1 skipped" in capsys.readouterr().out
    for label, variant in (("first-quick", "cbam"), ("second-quick", "k7")):
        rows = json.loads((tmp_path / "sweep" / f"summary-{label}.json").read_text())["rows"]
        assert next(r for r in rows if r["variant"] == variant)["runs"] == [f"runs/{r1.name}"]


def test_run_key_ignores_location_execution_options_and_defaults(tmp_path):
    base = load_config(None, {**RECIPE, "model": "cifar_resnet20_cbam"})
    same = load_config(
        None,
        {
            **RECIPE,
            "model": "cifar_resnet20_cbam",
            "optim.lr": None,
            "optim.base_lr": 0.05 * 256 / 16,
            "run.output": "elsewhere",
            "run.name": "x",
            "run.threads": 3,
            "data.cache_dir": "c",
            "model_kwargs": {"attn_init": "authors"},
        },
    )
    assert run_key(same) == run_key(base)
    changes = [
        {"run.seed": 1},
        {"attn": {"kernel_size": 3}},
        {"attn_impl": "eager"},
        {"model_kwargs": {"attn_init": "pytorch"}},
        {"data.batch_size": 32},
    ]
    for change in changes:
        other = load_config(None, {**RECIPE, "model": "cifar_resnet20_cbam", **change})
        assert run_key(other) != run_key(base), change


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"variant": {}}, "unknown key 'variant' (valid: description, base, overrides"),
        ({"variants": {"a": {"optim.lr": 0.1}}}, "variant 'a' may not set 'optim.lr'"),
        ({"variants": {"a": {"model": "cifar_resnet21"}}}, "variant 'a': unknown model"),
        (
            {"variants": {"a": {"model": "cifar_resnet20_cbam", "attn": {"kernal_size": 3}}}},
            "variant 'a': CBAM has no option 'kernal_size'",
        ),
        ({"presets": {"full": {}}}, "no preset 'quick' (presets: full)"),
        ({"presets": {"quick": {"seed": [0]}}}, "preset 'quick': unknown key 'seed'"),
        ({"baseline": "cbam"}, "baseline 'cbam' is not a variant (plain, se)"),
        ({"seeds": [0, 0]}, "seeds must be a non-empty list of distinct ints"),
        ({"overrides": {"optim.lrr": 0.1}}, "unknown config key optim.'lrr'"),
        ({"overrides": {"run.seed": 3}}, "run.seed is set by the sweep"),
        ({"variants": [{"model": "cifar_resnet20"}]}, "tiny.yaml: variants must be a mapping"),
        (
            {"variants": {"a": {"model": "cifar_resnet20", "model_kwargs": {"attn_int": "x"}}}},
            "variant 'a': got an unexpected keyword argument 'attn_int'",
        ),
    ],
)
def test_grid_errors_name_the_key_and_the_valid_ones(tmp_path, fields, message, capsys):
    path = _grid(tmp_path, **fields)
    with pytest.raises(ValueError) as err:
        load_grid(path, "quick")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert _sweep(path, "--dir", tmp_path / "s") == 2
    assert message in capsys.readouterr().err


def _assert_same_network(a, b) -> None:
    """The configs build the same network: the same parameters, equal at one seed."""
    nets = []
    for cfg in (a, b):
        torch.manual_seed(0)
        nets.append(build_model(cfg, num_classes=10).state_dict())
    assert list(nets[0]) == list(nets[1])
    for k in nets[0]:
        torch.testing.assert_close(nets[0][k], nets[1][k], rtol=0, atol=0, msg=k)


def test_packaged_grids_load_and_reuse_each_others_runs(tmp_path):
    assert set(list_grids()) >= {
        "table4_cifar",
        "table1_channel_pooling",
        "table2_spatial",
        "table3_arrangement",
        "imagenette",
        "controls",
    }
    runs = {}
    for preset in ("quick", "full"):
        for name in list_grids():
            grid = load_grid(name, preset)
            for r in expand(grid, tmp_path):
                runs[name, preset, r.variant, r.seed] = r
    assert {
        r.config.schedule.epochs
        for k, r in runs.items()
        if k[1] == "quick" and "cifar" in r.config.model
    } == {10}
    assert runs["table4_cifar", "full", "cbam", 0].config.schedule.milestones == [82, 123]
    for preset in ("quick", "full"):
        cbam = runs["table4_cifar", preset, "cbam", 0].name
        assert runs["table2_spatial", preset, "avgmax_k7", 0].name == cbam
        assert runs["table3_arrangement", preset, "channel_spatial", 0].name == cbam
        assert runs["controls", preset, "cbam", 0].name == cbam
        se = runs["table4_cifar", preset, "se", 0].name
        assert runs["table1_channel_pooling", preset, "avg", 0].name == se
        avg_max = runs["table1_channel_pooling", preset, "avg_max", 1].name
        assert runs["table2_spatial", preset, "channel", 1].name == avg_max
    for shared in [("table2_spatial", "avgmax_k7"), ("table3_arrangement", "channel_spatial")]:
        _assert_same_network(runs[(*shared[:1], "quick", shared[1], 0)].config,
                             runs["table4_cifar", "quick", "cbam", 0].config)  # fmt: skip
    assert ("table1_channel_pooling", "full", "lse", 0) in runs
    assert ("table1_channel_pooling", "quick", "lse", 0) not in runs
    assert {s for (g, p, _, s) in runs if g == "table4_cifar" and p == "quick"} == {0, 1, 2}
    assert runs["imagenette", "quick", "resnet18", 1].config.data.img_size == 128


def test_a_dataset_that_cannot_be_found_is_one_error_naming_the_ways_to_give_it(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("CONVATTN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _sweep("table4_cifar", "--dir", tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert "dataset 'cifar10-jpg.tar.gz' not found: pass --data PATH, or --data-dir DIR" in err
