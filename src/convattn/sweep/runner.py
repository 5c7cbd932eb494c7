"""Running a sweep: one run at a time, each under its folder's lock.

For each run of the (sharded) list the runner takes the run folder's lock without
waiting (:class:`~convattn.engine.lock.FolderLock`; a run locked by another process or
machine is reported "busy" and left to it), then looks at the folder:

- finished (``summary.json`` written and ``metrics.jsonl`` at the recipe's last epoch):
  skipped;
- ``checkpoint.pt`` without a finished summary (interrupted, killed or failed after an
  epoch): resumed with its own recipe;
- otherwise (never started, or failed before its first checkpoint): the leftovers of a
  start are cleared and the run starts, with ``run.output``/``run.name`` pointing at the
  folder (both by :func:`~convattn.engine.resume.start_or_resume`, which
  ``convattn train --resume-existing`` uses too).

Runs train in this process, one after the other, each with the machine's threads (or
``run.threads``). An exception in one run is written to ``failed.txt`` in its folder,
reported, and the sweep goes on (the run is tried again by the next sweep); a signal
(SIGINT/SIGTERM) saves the run's checkpoint and stops the whole sweep
(:class:`~convattn.engine.fit.StopRequested` propagates). A crash of the interpreter
itself (out of memory, a segfault) ends the sweep; rerunning it resumes. For isolation
per run, hand the runs to a job queue as commands (:func:`pending_commands`).
"""

from __future__ import annotations

import logging
import os
import shlex
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data import DATA_ENV
from ..engine.fit import StopRequested, fit
from ..engine.lock import FolderLock
from ..engine.recipes import save_config
from ..engine.resume import start_or_resume
from ..engine.run import read_metrics
from .grid import RunSpec

__all__ = [
    "FAILED_FILE",
    "SWEEP_CONFIG",
    "Outcome",
    "is_finished",
    "parse_shard",
    "pending_commands",
    "report",
    "run_one",
    "run_sweep",
    "shard",
    "unique_runs",
]

#: The error of a run's last failed attempt, in its folder.
FAILED_FILE = "failed.txt"
#: The resolved config that a job-queue command trains, in the run folder.
SWEEP_CONFIG = "sweep-config.yaml"

log = logging.getLogger("convattn")


@dataclass(frozen=True)
class Outcome:
    """What happened to one run: "trained", "resumed", "skipped", "busy", "failed", or
    "stopped" (a Ray task cancelled or signalled; its checkpoint is kept)."""

    spec: RunSpec
    folder: Path
    status: str
    detail: str = ""


def unique_runs(runs: Sequence[RunSpec]) -> list[RunSpec]:
    """``runs`` without repeats of a run folder (the first occurrence kept, in order)."""
    first: dict[str, RunSpec] = {}
    for r in runs:
        first.setdefault(r.name, r)
    return list(first.values())


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) as ``(K, N)``."""
    k, sep, n = text.partition("/")
    try:
        if not sep:
            raise ValueError
        kk, nn = int(k), int(n)
    except ValueError:
        raise ValueError(f"--shard must be K/N, e.g. 1/4, got {text!r}") from None
    if not 1 <= kk <= nn:
        raise ValueError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return kk, nn


def shard(runs: Sequence[RunSpec], k: int, n: int) -> list[RunSpec]:
    """The ``k``-th of ``n`` shares (1-based): every ``n``-th run from the ``k``-th, so
    each share gets a mix of variants and the shares are disjoint and cover ``runs``."""
    return [r for i, r in enumerate(runs) if i % n == k - 1]


def is_finished(folder: Path, epochs: int) -> bool:
    """Whether ``folder`` holds a finished run of ``epochs`` epochs."""
    if not (folder / "summary.json").is_file():
        return False
    records = read_metrics(folder)
    return bool(records) and records[-1].get("epoch") == epochs


def _train(spec: RunSpec, folder: Path) -> Outcome:
    """Resume or start the run in ``folder`` (its lock held); failures are recorded."""
    resume = None
    try:
        (folder / FAILED_FILE).unlink(missing_ok=True)
        cfg, resume = start_or_resume(spec.config)
        fit(cfg, resume=resume)
    except StopRequested:
        raise
    except Exception as err:  # one run's failure must not end the sweep
        message = f"{type(err).__name__}: {err}"
        (folder / FAILED_FILE).write_text(message + "\n\n" + traceback.format_exc())
        return Outcome(spec, folder, "failed", message)
    return Outcome(spec, folder, "resumed" if resume is not None else "trained")


def run_one(spec: RunSpec, runs_dir: str | Path) -> Outcome:
    """Skip, resume or train one run under its folder's lock."""
    folder = Path(runs_dir) / spec.name
    lock = FolderLock(folder)
    if not lock.acquire():
        return Outcome(spec, folder, "busy", lock.holder())
    try:
        if is_finished(folder, spec.config.schedule.epochs):
            return Outcome(spec, folder, "skipped", "finished")
        return _train(spec, folder)
    finally:
        lock.release()


def report(
    outcome: Outcome,
    where: str,
    after_run: Callable[[Outcome], None] | None,
    echo: Callable[[str], None],
) -> None:
    """Print ``outcome`` (prefixed ``where``, e.g. ``[3/8]``) and call ``after_run`` if
    the run trained or resumed; an error in ``after_run`` is logged, not raised."""
    echo(f"{where} {outcome.status}" + (f": {outcome.detail}" if outcome.detail else ""))
    if after_run is not None and outcome.status in ("trained", "resumed"):
        try:
            after_run(outcome)
        except Exception as err:  # e.g. a summary that cannot be written now
            log.warning("after run %s: %s: %s", outcome.folder, type(err).__name__, err)


def run_sweep(
    runs: Sequence[RunSpec],
    runs_dir: str | Path,
    *,
    after_run: Callable[[Outcome], None] | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run ``runs`` one after the other; ``after_run`` is called after each run that
    trained or resumed (e.g. to refresh the summaries). Returns every outcome."""
    outcomes = []
    for i, spec in enumerate(runs, 1):
        echo(f"[{i}/{len(runs)}] {spec.variant} seed {spec.seed}: {Path(runs_dir) / spec.name}")
        outcomes.append(run_one(spec, runs_dir))
        report(outcomes[-1], f"[{i}/{len(runs)}]", after_run, echo)
    return outcomes


def _command(folder: Path) -> str:
    """The ``convattn train`` line that starts, resumes or restarts ``folder``'s run."""
    env = os.environ.get(DATA_ENV)
    prefix = f"{DATA_ENV}={shlex.quote(env)} " if env else ""
    config, out = shlex.quote(str(folder / SWEEP_CONFIG)), shlex.quote(str(folder.parent))
    name = shlex.quote(folder.name)
    return (f"{prefix}convattn train --config {config} --output {out} --run-name {name} "
            "--resume-existing")  # fmt: skip


def pending_commands(runs: Sequence[RunSpec], runs_dir: str | Path) -> list[str]:
    """One self-contained shell command per run that is neither finished nor running.

    The run's resolved config is written into its folder (``sweep-config.yaml``) and
    the command (``convattn train ... --resume-existing``) trains it there: it starts
    the run, resumes it from its checkpoint, or starts it over if it stopped before its
    first one, so the same line may run again after a preemption. Paths are absolute;
    ``$CONVATTN_DATA``, when set, is passed on. Each command holds the run folder's lock
    while it trains, so a command run twice at once never trains a run twice.
    """
    lines = []
    for spec in runs:
        folder = Path(runs_dir).resolve() / spec.name
        lock = FolderLock(folder)
        if not lock.acquire():
            continue  # running elsewhere
        try:
            if is_finished(folder, spec.config.schedule.epochs):
                continue
            save_config(spec.config, folder / SWEEP_CONFIG)
            lines.append(_command(folder))
        finally:
            lock.release()
    return lines
