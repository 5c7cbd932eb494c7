"""Resuming a run: the recipe comes from the run itself, and only execution may change.

A checkpoint carries the resolved config of its run. Resuming continues that recipe; an
option given with ``--resume`` that would change what the run computes (model, data,
optimiser, schedule, seed, ...) is refused with an error naming each key and both
values. Options that only decide how the run executes (:data:`EXECUTION_KEYS`) may
change; bit-for-bit equality with an uninterrupted run needs the same ones (thread count
and worker processes can change float rounding and augmentation streams).

``schedule.epochs`` may grow (or shrink to no fewer epochs than are done) for the "step"
schedule, whose learning rate at each step does not depend on the run's length; the run
then ends where a run started with the new length would have been at that epoch. A
cosine schedule depends on the length, so its epochs cannot change. The run's
``config.yaml`` keeps the recipe it was started with; the checkpoint holds the current one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, overload

from .checkpoint import load_training_state
from .config import Config
from .recipes import (
    T,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
    merge_sections,
)
from .run import clear_start

__all__ = [
    "EXECUTION_KEYS",
    "check_resume",
    "checkpoint_file",
    "resume_config",
    "saved_config",
    "start_or_resume",
]

#: Config keys that may differ on resume: they decide how a run executes, not what it is.
EXECUTION_KEYS = frozenset(
    {
        "data.workers",
        "data.cache_dir",
        "run.threads",
        "run.progress",
        "run.device",
        "run.tensorboard",
    }
)


def checkpoint_file(resume: str | Path) -> Path:
    """The checkpoint to resume: ``resume`` itself or ``<run folder>/checkpoint.pt``."""
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    return path


@overload
def saved_config(ckpt: dict[str, Any]) -> Config: ...
@overload
def saved_config(ckpt: dict[str, Any], cls: type[T]) -> T: ...
def saved_config(ckpt: dict[str, Any], cls: type[Any] = Config) -> Any:
    """The config a training checkpoint was written with (a ``cls``, default
    :class:`Config`)."""
    if not isinstance(ckpt.get("config"), dict):
        raise ValueError("the checkpoint holds no run config (not a training checkpoint)")
    return config_from_dict(ckpt["config"], cls)


@overload
def resume_config(
    resume: str | Path,
    overrides: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
) -> Config: ...
@overload
def resume_config(
    resume: str | Path,
    overrides: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    *,
    cls: type[T],
) -> T: ...
def resume_config(
    resume: str | Path,
    overrides: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    cls: type[Any] = Config,
) -> Any:
    """The config to resume ``resume`` (a run folder or checkpoint) with: the run's own,
    with the keys of ``recipe`` (a nested mapping) and dotted ``overrides`` applied.
    ``cls`` is the recipe class (default :class:`Config`). Raises ``ValueError`` if they
    change the recipe (see :func:`check_resume`)."""
    ckpt = load_training_state(checkpoint_file(resume), mmap=True)  # tensors stay on disk
    saved = saved_config(ckpt, cls)
    data = merge_sections(config_to_dict(saved), recipe or {})
    cfg = apply_overrides(data, overrides, cls)
    check_resume(saved, cfg, done_epochs=int(ckpt["epoch"]), where=str(resume))
    return cfg


def start_or_resume(cfg: Any, cls: type[Any] = Config) -> tuple[Any, Path | None]:
    """``(config, resume)`` to train ``cfg``'s run folder (``run.output``/``run.name``,
    its lock held by the caller) with: the run's own config, ``cfg``'s execution options
    applied, and the folder to resume if it holds a checkpoint; else ``cfg`` and ``None``,
    having cleared what an attempt before its first checkpoint left. A folder holding
    another recipe's run raises ``ValueError``."""
    folder = Path(cfg.run.output) / cfg.run.name
    if (folder / "checkpoint.pt").is_file():
        execution = {k: v for k, v in flatten(config_to_dict(cfg)).items() if k in EXECUTION_KEYS}
        return resume_config(folder, execution, cls=cls), folder
    if (folder / "config.yaml").is_file():
        saved = load_config(folder / "config.yaml", cls=cls)
        saved.run.output, saved.run.name = cfg.run.output, cfg.run.name  # not the recipe
        check_resume(saved, cfg, done_epochs=0, where=str(folder))
        clear_start(folder)
    return cfg, None


def check_resume(saved: Any, cfg: Any, *, done_epochs: int, where: str = "") -> list[str]:
    """Check that ``cfg`` continues the run of ``saved`` with ``done_epochs`` finished.

    Returns the execution keys that differ (as ``"key: old -> new"``); raises
    ``ValueError`` naming every other difference and both values.
    """
    old, new = flatten(config_to_dict(saved)), flatten(config_to_dict(cfg))
    changed, refused = [], []
    for key in old:
        if old[key] == new[key]:
            continue
        what = f"{key} {old[key]!r} -> {new[key]!r}"
        if key in EXECUTION_KEYS:
            changed.append(what)
        elif key == "schedule.epochs":
            reason = _epochs_refused(saved, new[key], done_epochs)
            if reason:
                refused.append(f"{what} ({reason})")
            else:
                changed.append(what)
        else:
            refused.append(what)
    if refused:
        run = f" {where}" if where else ""
        raise ValueError(
            f"cannot resume{run} with another recipe: {'; '.join(refused)}. Only "
            f"{', '.join(sorted(EXECUTION_KEYS))} may change on resume; start a new run instead"
        )
    return changed


def _epochs_refused(saved: Any, epochs: int, done: int) -> str | None:
    if saved.schedule.kind != "step":
        return f"the {saved.schedule.kind} schedule depends on the run's length"
    if epochs < done:
        return f"the run has finished {done} epochs"
    return None
