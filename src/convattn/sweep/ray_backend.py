"""Dispatching a sweep's runs to Ray (``convattn sweep GRID --backend ray``).

Each pending run becomes one Ray task that calls :func:`~convattn.sweep.runner.run_one`
on a worker, under the same rules as the local runner: the run folder's lock, finished
runs skipped, interrupted ones resumed, a failure written to ``failed.txt``. So Ray
sweeps, local sweeps and job-queue commands may share one sweep folder. The tasks run
side by side as far as the cluster's resources allow (``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs each, at most one GPU: a run does not spread over GPUs here); the
summaries are refreshed on the driver as runs finish. A task whose worker dies (out of
memory, a segfault) is reported failed, with ``failed.txt`` written by the driver, and
the others go on; running the sweep again resumes it from its last checkpoint.

Ray is an extra (``pip install 'convattn[ray]'``), imported only here. A cluster's nodes
need convattn installed and must see the sweep folder and the datasets at the same
absolute paths (a shared file system): each task works in the driver's working directory
and gets its ``$CONVATTN_DATA``, so the run folders, their configs and the data paths are
those a local sweep would have. A task's torch threads are its ``cpus_per_run`` unless
the recipe sets ``run.threads``; with ``run.device`` "auto" a task given a GPU trains on
it and one given none on the CPU. Without ``address`` Ray joins the cluster
``$RAY_ADDRESS`` names, or else starts a local instance that ends with the sweep.

The driver must stay up while the tasks run. Ctrl-C or SIGTERM cancels the tasks: each
one in its training loop stops after its current step and saves its checkpoint, queued
ones never start, and the same command resumes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..data import DATA_ENV
from ..engine.job import StopRequested
from .grid import RunSpec
from .runner import FAILED_FILE, Outcome, is_finished, report, run_one

__all__ = ["check_resources", "require_ray", "run_sweep_ray"]

#: How long a cancelled sweep waits for its tasks to save their checkpoints (seconds).
CANCEL_WAIT_S = 120.0

log = logging.getLogger("convattn")


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install 'convattn[ray]'") from None
    return ray


def check_resources(cpus: float, gpus: float) -> None:
    """One-line error unless a run asks for more than 0 CPUs and 0 to 1 GPUs."""
    if not (cpus > 0 and 0 <= gpus <= 1):
        got = f"got {cpus:g} and {gpus:g}"
        raise ValueError("--cpus-per-run must be > 0 and --gpus-per-run from 0 to 1 (a run "
                         f"trains on one GPU at most under Ray); {got}")  # fmt: skip


def _task(spec: RunSpec, cwd: str, runs_dir: str, data: str | None, threads: int) -> Outcome:
    """One run on a Ray worker (a module-level function, so workers import it), in the
    driver's working directory, so relative paths mean what they mean there. Workers are
    reused, so everything a task sets is set by every task."""
    import torch

    os.chdir(cwd)
    if data:
        os.environ[DATA_ENV] = data
    else:
        os.environ.pop(DATA_ENV, None)
    if not spec.config.run.threads:
        torch.set_num_threads(threads)
    try:
        return run_one(spec, runs_dir)
    except StopRequested as stop:
        return Outcome(spec, Path(runs_dir) / spec.name, "stopped", f"checkpoint {stop}")


def _on_cpu(spec: RunSpec) -> RunSpec:
    """``spec`` with ``run.device`` "cpu" where it is "auto" (an execution option, so the
    run is the same): Ray hides no GPU from a task that asked for none."""
    if spec.config.run.device != "auto":
        return spec
    run = dataclasses.replace(spec.config.run, device="cpu")
    return dataclasses.replace(spec, config=dataclasses.replace(spec.config, run=run))


def _start(ray: Any, address: str | None) -> bool:
    """Connect to or start Ray unless connected; whether this call started it."""
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(address="local", include_dashboard=False)
    else:
        ray.init(address=address)
    return True


def _check_room(ray: Any, cpus: float, gpus: float, started: bool) -> None:
    """Fail (a local instance) or warn (a cluster, which may grow) when the whole of Ray
    has fewer CPUs or GPUs than one run asks for: its tasks would wait for ever. (A
    cluster with enough in all but no node big enough is not caught.)"""
    have = ray.cluster_resources()
    cpu_have, gpu_have = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if cpus <= cpu_have and gpus <= gpu_have:
        return
    text = f"a run asks for {cpus:g} CPUs and {gpus:g} GPUs; Ray has {cpu_have:g} and {gpu_have:g}"
    if started:
        raise ValueError(text)
    log.warning("%s: the runs wait until the cluster grows", text)


def _dead_worker(spec: RunSpec, folder: Path, err: Exception) -> Outcome:
    """The outcome of a task whose worker died or was lost, recorded in ``failed.txt``."""
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines()
    message = f"{type(cause).__name__}: {lines[0] if lines else ''}"
    run = folder / spec.name
    run.mkdir(parents=True, exist_ok=True)
    (run / FAILED_FILE).write_text(f"{message}\n\n{err}\n")
    return Outcome(spec, run, "failed", message)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so it cancels the tasks as Ctrl-C does (Ray's
    own handler would end the driver and let the tasks die without a checkpoint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _cancel(ray: Any, pending: dict[Any, RunSpec], folder: Path) -> NoReturn:
    """Cancel the tasks in ``pending``, wait for them to save, raise StopRequested."""
    for ref in pending:
        ray.cancel(ref)
    late: list[Any] = []
    if pending:
        _, late = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
    text = f"the checkpoints of the tasks that were training ({len(pending)} cancelled in {folder})"
    if late:
        text += f"; {len(late)} had not stopped after {CANCEL_WAIT_S:g} s"
    raise StopRequested(text)


def _dispatch(ray: Any, runs: Sequence[RunSpec], folder: Path, cpus: float, gpus: float,
              done: int, total: int, after_run: Callable[[Outcome], None] | None,
              echo: Callable[[str], None]) -> list[Outcome]:  # fmt: skip
    """Submit ``runs`` as tasks and report each as it ends (numbered after ``done``)."""
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_task)
    args = (os.getcwd(), str(folder), os.environ.get(DATA_ENV), max(1, int(cpus)))
    pending: dict[Any, RunSpec] = {}
    outcomes: list[Outcome] = []
    try:
        for spec in runs:
            pending[task.remote(spec if gpus else _on_cpu(spec), *args)] = spec
        echo(f"{len(runs)} runs handed to Ray ({cpus:g} CPUs, {gpus:g} GPUs each)")
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died, or the task was lost
                outcome = _dead_worker(spec, folder, err)
            outcomes.append(outcome)
            where = f"[{done + len(outcomes)}/{total}] {spec.variant} seed {spec.seed}:"
            report(outcome, where, after_run, echo)
    except KeyboardInterrupt:
        _cancel(ray, pending, folder)
    return outcomes


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
    """Run ``runs`` as Ray tasks; the finished ones first, then in the order runs end.

    Finished runs are skipped here without Ray, which starts only if a run is left.
    Raises :class:`~convattn.engine.job.StopRequested` after Ctrl-C or SIGTERM, once
    the cancelled tasks have saved their checkpoints (or :data:`CANCEL_WAIT_S` passed).
    """
    check_resources(cpus_per_run, gpus_per_run)
    folder = Path(runs_dir)
    finished = {s.name for s in runs if is_finished(folder / s.name, s.config.schedule.epochs)}
    left = [s for s in runs if s.name not in finished]
    skipped = [
        Outcome(s, folder / s.name, "skipped", "finished") for s in runs if s.name in finished
    ]
    for i, outcome in enumerate(skipped, 1):
        report(outcome, f"[{i}/{len(runs)}] {outcome.spec.variant} seed {outcome.spec.seed}:",
               None, echo)  # fmt: skip
    if not left:
        return skipped
    ray = require_ray()
    started = _start(ray, address)
    try:
        with _sigterm_as_interrupt():
            _check_room(ray, cpus_per_run, gpus_per_run, started)
            return skipped + _dispatch(ray, left, folder, cpus_per_run, gpus_per_run,
                                       len(skipped), len(runs), after_run, echo)  # fmt: skip
    finally:
        if started:
            ray.shutdown()
