"""``convattn sweep``: run grids of models x attention variants x seeds, or summarise them.

``convattn sweep GRID... [--preset quick] [--dir sweeps]`` runs every run of the grids
that is not finished, one at a time (see :mod:`convattn.sweep.runner`);
``--print-commands`` prints a ``convattn train`` command per pending run instead;
``--shard K/N`` takes the K-th of N shares; ``--backend ray [--address ...]`` hands the
runs to Ray as tasks (:mod:`convattn.sweep.ray_backend`); ``--summarize SWEEP_DIR``
writes the tables and plots (also written after every finished run).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

_BUILTIN_DATA = ("synthetic", "cifar10", "cifar100")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of models x attention variants x seeds (resumable, shardable)",
        description="Run the runs of grid files (packaged names or paths) that are not "
        "finished, each an ordinary training run under SWEEP_DIR/runs, or summarise a sweep.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("grids", nargs="*", metavar="GRID", help="grid files or packaged grid names")
    p.add_argument("--preset", default="quick", help="which preset of the grids")
    p.add_argument("--dir", default="sweeps", help="the sweep folder (runs are shared in it)")
    p.add_argument("--data", help="dataset for every run, replacing the grids' data.path")
    p.add_argument(
        "--data-dir",
        help="folder holding the grids' datasets (relative data.path); default $CONVATTN_DATA",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an execution option for every run (data.workers, run.threads, run.device, ...)",
    )
    p.add_argument("--shard", help="run only the K-th of N shares of the runs, e.g. 2/4")
    p.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `convattn train` command per pending run instead of running (the "
        "same line starts, resumes or restarts its run, so a queue may run it again)",
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: one run at a time in this process; ray: one Ray task per run, side by "
        "side (needs the 'ray' extra)",
    )
    p.add_argument(
        "--address",
        help="the Ray cluster to join; without it $RAY_ADDRESS's, else a local instance",
    )
    p.add_argument("--cpus-per-run", type=float, help="Ray: CPUs (threads) a run; default 1")
    p.add_argument("--gpus-per-run", type=float, help="Ray: GPUs a run, 0 to 1; default 0")
    p.add_argument("--summarize", metavar="SWEEP_DIR", help="write the summaries of a sweep")
    p.add_argument("--list", action="store_true", help="list the packaged grids")
    p.set_defaults(func=run)


def _execution_options(items: list[str]) -> dict[str, Any]:
    from ..engine.resume import EXECUTION_KEYS

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in EXECUTION_KEYS:
            valid = ", ".join(sorted(EXECUTION_KEYS))
            raise ValueError(f"--set takes KEY=VALUE with KEY one of {valid}; got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _check_data(runs: list[Any]) -> None:
    """Fail before training if a run's dataset cannot be found here."""
    from ..data import DATA_ENV, find_data

    for path in sorted({r.config.data.path for r in runs}):
        if path.split(":")[0].lower() in _BUILTIN_DATA or find_data(path).exists():
            continue
        raise FileNotFoundError(
            f"dataset {path!r} not found: pass --data PATH, or --data-dir DIR (or set "
            f"{DATA_ENV}=DIR) naming the folder that holds it"
        )


def _runs(args: argparse.Namespace) -> tuple[list[Any], list[Any], Path]:
    """The grids, their (deduplicated, sharded) runs and the runs folder."""
    from ..sweep import expand, load_grid
    from ..sweep.runner import parse_shard, shard, unique_runs
    from ..sweep.summary import write_index

    extra = _execution_options(args.set)
    if args.data is not None:
        extra["data.path"] = args.data
    sweep_dir, grids, runs = Path(args.dir), [], []
    for name in args.grids:
        grid = load_grid(name, args.preset)
        grid_runs = expand(grid, sweep_dir / "runs", extra)
        write_index(sweep_dir, grid, grid_runs)
        grids.append(grid)
        runs += grid_runs
    runs = unique_runs(runs)
    if args.shard:
        runs = shard(runs, *parse_shard(args.shard))
    return grids, runs, sweep_dir


def run(args: argparse.Namespace) -> int:
    from ..sweep import list_grids

    if args.list:
        print("\n".join(list_grids()))
        return 0
    if args.summarize:
        return _summarize(Path(args.summarize))
    if not args.grids:
        raise ValueError("give grid files or names (see --list), or --summarize SWEEP_DIR")
    if args.data_dir:
        from ..data import DATA_ENV

        os.environ[DATA_ENV] = str(Path(args.data_dir).expanduser().resolve())
    runner = _runner(args)
    grids, runs, sweep_dir = _runs(args)
    if args.print_commands:
        from ..sweep.runner import pending_commands

        print("\n".join(pending_commands(runs, sweep_dir / "runs")))
        return 0
    _check_data(runs)
    return _run(grids, runs, sweep_dir, runner)


def _check_backend(args: argparse.Namespace) -> None:
    given = {"--address": args.address, "--cpus-per-run": args.cpus_per_run,
             "--gpus-per-run": args.gpus_per_run}  # fmt: skip
    ray_only = [flag for flag, value in given.items() if value is not None]
    if args.backend != "ray" and ray_only:
        raise ValueError(f"{' and '.join(ray_only)}: for --backend ray only")
    if args.backend == "ray" and args.print_commands:
        raise ValueError("--print-commands prints commands for a queue; drop --backend ray")


def _runner(args: argparse.Namespace) -> Callable[..., list[Any]]:
    """``run_sweep`` or its Ray counterpart, with the backend's options bound; fails
    here, before any file is written, on options that do not fit or a missing Ray."""
    _check_backend(args)
    if args.backend == "local":
        from ..sweep.runner import run_sweep

        return run_sweep
    from functools import partial

    from ..sweep.ray_backend import check_resources, require_ray, run_sweep_ray

    require_ray()
    cpus = 1.0 if args.cpus_per_run is None else args.cpus_per_run
    gpus = 0.0 if args.gpus_per_run is None else args.gpus_per_run
    check_resources(cpus, gpus)  # before any file is written
    return partial(run_sweep_ray, address=args.address, cpus_per_run=cpus, gpus_per_run=gpus)


def _run(
    grids: list[Any], runs: list[Any], sweep_dir: Path, runner: Callable[..., list[Any]]
) -> int:
    from ..engine import StopRequested
    from ..sweep.summary import summarize

    labels = [g.label for g in grids]
    try:
        outcomes = runner(
            runs, sweep_dir / "runs", after_run=lambda _: summarize(sweep_dir, labels)
        )
    except StopRequested as stop:
        print(f"sweep stopped; saved: {stop}. Run the same command to go on.")
        return 130
    for md in summarize(sweep_dir, labels):
        print(f"summary: {md}")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("trained", "resumed", "skipped")}
    busy = [o for o in outcomes if o.status == "busy"]
    failed = [o for o in outcomes if o.status == "failed"]
    stopped = sum(o.status == "stopped" for o in outcomes)  # Ray tasks signalled on a worker
    line = ", ".join(f"{n} {s}" for s, n in counts.items())
    line += f", {len(busy)} running elsewhere, {len(failed)} failed"
    print(line + (f", {stopped} stopped (resumable)" if stopped else ""))
    for o in failed:
        print(f"failed: {o.folder}: {o.detail} (see {o.folder / 'failed.txt'})", file=sys.stderr)
    return 1 if failed else 130 if stopped else 0


def _summarize(sweep_dir: Path) -> int:
    from ..sweep.summary import summarize

    for md in summarize(sweep_dir):
        print(md.read_text())
        print(f"summary: {md}")
    return 0
