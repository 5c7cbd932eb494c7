"""``convattn train``: train a model with a YAML recipe and command-line overrides.

Every key of :class:`convattn.engine.config.Config` is an option, grouped by section,
with the help its field carries; an option given on the command line overrides the
recipe, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import typing
from pathlib import Path

from ..engine.config import ConfigField, config_fields
from ..layers import IMPLS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (the paper's recipe by default)",
        description="Train an attention network. Options override the --config recipe, "
        "which overrides the defaults shown.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="YAML recipe, e.g. configs/cifar10.yaml")
    p.add_argument(
        "--resume",
        help="run folder (or checkpoint) to continue with its own recipe; options given "
        "with it may change only how it executes (threads, workers, progress, device) and, "
        "for a step schedule, the number of epochs",
    )
    p.add_argument(
        "--resume-existing",
        action="store_true",
        help="with --run-name: if the run folder already holds this recipe's run, resume it "
        "(or start it over if it stopped before its first checkpoint) instead of refusing; "
        "makes one command safe to run again, e.g. by a job queue after a preemption",
    )
    add_config_options(p, config_fields())
    p.set_defaults(func=run)


def add_config_options(p: argparse.ArgumentParser, fields: list[ConfigField]) -> None:
    """One option per config field (``config_fields(cls)``), grouped by section, each
    with its help and default; unset options stay out of the parsed namespace."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields:
        section = f.key.split(".")[0] if "." in f.key else "model"
        if section not in groups:
            groups[section] = p.add_argument_group(section)
        kw: dict[str, typing.Any] = {"dest": f.key, "default": argparse.SUPPRESS}
        if f.type is bool or f.type == (bool | None):
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(f.type) is dict or f.type is dict:
            kw["type"] = json.loads
        elif f.key == "attn_impl":
            kw["choices"] = IMPLS
        shown = "" if f.default in (None, {}) else f" (default: {f.default})"
        kw["help"] = (f.help + shown).strip() or " "
        groups[section].add_argument(f.flag, **kw)


def overrides_from(args: argparse.Namespace) -> dict[str, typing.Any]:
    skip = {"command", "func", "config", "resume", "resume_existing", "detect_command"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def _named_folder(cfg: typing.Any) -> Path:
    if not cfg.run.name:
        raise ValueError("--resume-existing needs --run-name: the run folder to start or resume")
    return Path(cfg.run.output) / cfg.run.name


def run(args: argparse.Namespace) -> int:
    from ..engine import Config, fit
    from ..engine.run import format_table

    return train_and_report(args, Config, fit, format_table)


def train_and_report(
    args: argparse.Namespace,
    cls: type,
    fit_fn: typing.Callable[..., dict[str, typing.Any]],
    table: typing.Callable[[list[dict[str, typing.Any]]], str],
) -> int:
    """The recipe of ``args`` (or of ``--resume``'s run) as a ``cls``, trained by
    ``fit_fn``; prints its summary row with ``table``. Returns 0, or 130 when stopped by a
    signal (checkpoint saved)."""
    from ..engine import StopRequested, load_config, resume_config
    from ..engine.lock import FolderLock
    from ..engine.recipes import read_recipe
    from ..engine.resume import start_or_resume

    resume = args.resume
    with contextlib.ExitStack() as held:
        if resume is not None:
            recipe = read_recipe(args.config) if args.config else None
            cfg = resume_config(resume, overrides_from(args), recipe, cls=cls)
        else:
            cfg = load_config(args.config, overrides_from(args), cls=cls)
            if getattr(args, "resume_existing", False):
                held.enter_context(FolderLock(_named_folder(cfg)))  # RunLocked if in use
                cfg, resume = start_or_resume(cfg, cls)
        try:
            row = fit_fn(cfg, resume=resume)
        except StopRequested as stop:
            print(f"stopped; checkpoint saved: {stop}")
            return 130
    print(table([row]))
    print(f"run folder: {row['run_dir']}")
    return 0
