"""Dispatching a sweep's runs to Ray (``convattn sweep GRID --backend ray``).

Each pending run becomes one Ray task that calls :func:`~convattn.sweep.runner.run_one`
on a worker, under the same rules as the local runner: the run folder's lock, finished
runs skipped, interrupted ones resumed, a failure written to ``failed.txt``. So Ray
sweeps, local sweeps and job-queue commands may share one sweep folder. The tasks run
side by side as far as the cluster's resources allow (``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs each); the summaries are refreshed on the driver as runs finish. A
task whose worker dies (out of memory, a segfault) is reported failed and the others go
on; running the sweep again resumes it from its last checkpoint.

Ray is an extra (``pip install 'convattn[ray]'``), imported only here. A cluster's nodes
need convattn installed and must see the sweep folder and the datasets at the same
absolute paths (a shared file system): each task works in the driver's working directory
and gets its ``$CONVATTN_DATA``, so the run folders, their configs and the data paths are
those a local sweep would have. A task's torch threads are its ``cpus_per_run`` unless the recipe
sets ``run.threads``; a task given a GPU trains on it (``run.device`` "auto" and Ray's
``CUDA_VISIBLE_DEVICES``). Without ``address`` Ray joins the cluster ``$RAY_ADDRESS``
names, or starts a local instance that ends with the sweep. Ctrl-C cancels the tasks;
each stops after its current step and saves its checkpoint, and the same command
resumes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data import DATA_ENV
from ..engine.job import StopRequested
from .grid import RunSpec
from .runner import Outcome, report, run_one

__all__ = ["require_ray", "run_sweep_ray"]

#: How long a cancelled sweep waits for its tasks to save their checkpoints (seconds).
CANCEL_WAIT_S = 120.0


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install 'convattn[ray]'") from None
    return ray


def _task(spec: RunSpec, cwd: str, runs_dir: str, data: str | None, threads: int) -> Outcome:
    """One run on a Ray worker (a module-level function, so workers import it), in the
    driver's working directory, so relative paths mean what they mean there."""
    import torch

    os.chdir(cwd)
    if data:
        os.environ[DATA_ENV] = data
    if not spec.config.run.threads:
        torch.set_num_threads(threads)
    try:
        return run_one(spec, runs_dir)
    except StopRequested as stop:
        return Outcome(spec, Path(runs_dir) / spec.name, "stopped", f"checkpoint {stop}")


def _start(ray: Any, address: str | None) -> bool:
    """Connect to or start Ray unless connected; whether this call started it."""
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    return True


def run_sweep_ray(
    runs: Sequence[RunSpec],
    runs_dir: str | Path,
    *,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    after_run: Callable[[Outcome], None] | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run ``runs`` as Ray tasks; outcomes in the order the runs end.

    Raises :class:`~convattn.engine.job.StopRequested` after Ctrl-C, once the cancelled
    tasks have saved their checkpoints (or :data:`CANCEL_WAIT_S` has passed).
    """
    if cpus_per_run <= 0 or gpus_per_run < 0:
        got = f"got {cpus_per_run} and {gpus_per_run}"
        raise ValueError(f"cpus_per_run must be > 0 and gpus_per_run >= 0; {got}")
    ray = require_ray()
    started = _start(ray, address)
    folder, cwd = Path(runs_dir), os.getcwd()
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_task)
    data, threads = os.environ.get(DATA_ENV), max(1, int(cpus_per_run))
    pending = {task.remote(s, cwd, str(folder), data, threads): s for s in runs}
    echo(f"{len(pending)} runs handed to Ray ({cpus_per_run:g} CPUs, {gpus_per_run:g} GPUs each)")
    outcomes: list[Outcome] = []
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died, or the task was lost
                outcome = Outcome(spec, folder / spec.name, "failed", _first_line(err))
            outcomes.append(outcome)
            where = f"[{len(outcomes)}/{len(runs)}] {spec.variant} seed {spec.seed}:"
            report(outcome, where, after_run, echo)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
        raise StopRequested(
            f"the checkpoints of the {len(pending)} cancelled runs under {folder}"
        ) from None
    finally:
        if started:
            ray.shutdown()
    return outcomes


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
