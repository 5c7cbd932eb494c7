"""``convattn train``: train a model with a YAML recipe and command-line overrides.

Every key of :class:`convattn.engine.config.Config` is an option, grouped by section;
an option given on the command line overrides the recipe, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from ..engine.config import Config

# Options whose flag is not simply the key with dashes.
_FLAGS = {"data.path": "--data", "schedule.kind": "--sched", "run.name": "--run-name"}
_HELP = {
    "model": "registered model name (see `convattn models`)",
    "model_kwargs": 'JSON of extra model arguments, e.g. \'{"attn_kwargs": {"kernel_size": 3}}\'',
    "data.path": "'synthetic[:train=N,val=N,...]', 'cifar10', 'cifar100', "
    "a class-folder tree or a .tar/.tar.gz",
    "data.img_size": "input side; train RandomResizedCrop(S), "
    "eval resize S*256/224 + centre crop S",
    "data.batch_size": "global batch size (split across processes)",
    "data.workers": "data-loading processes per training process",
    "data.augment": "'default' (by dataset), 'imagenet', 'cifar' or 'none'",
    "data.auto_augment": "AutoAugment policy: 'imagenet' or 'cifar'",
    "data.mixup": "mixup alpha (0 disables)",
    "data.cutmix": "cutmix alpha (0 disables)",
    "data.cache_dir": "where archives are extracted and small images decoded "
    "(default ~/.cache/convattn)",
    "data.limit_train": "use only the first N training images",
    "data.limit_val": "use only the first N validation images",
    "optim.lr": "learning rate (default base_lr * batch_size / 256)",
    "optim.base_lr": "learning rate per 256 images",
    "optim.no_decay_bn_bias": "no weight decay on BatchNorm weights and biases",
    "optim.clip_grad": "clip the gradient norm to this value",
    "schedule.kind": "'step' (x gamma every step_epochs) or 'cosine'",
    "schedule.warmup_epochs": "linear warm-up length (fractions allowed)",
    "run.output": "folder that receives the run folders",
    "run.name": "run folder name (default <model>-<timestamp>)",
    "run.deterministic": "deterministic algorithms (needed for exact resume)",
    "run.amp": "mixed precision: 'none', 'bf16' (CPU or CUDA) or 'fp16' (CUDA)",
    "run.ema_decay": "keep an exponential moving average of the weights (e.g. 0.9998)",
    "run.precise_bn_batches": "re-estimate BatchNorm statistics over N batches before evaluating",
    "run.sync_bn": "synchronise BatchNorm across processes (works on CPU too)",
    "run.max_steps": "at most this many steps per epoch (quick runs)",
    "run.threads": "torch intra-op threads",
}


def _fields(cls: type, prefix: str = "") -> list[tuple[str, typing.Any, typing.Any]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _fields(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((prefix + f.name, tp, default))
    return out


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
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, tp, default in _fields(Config):
        section = key.split(".")[0] if "." in key else "model"
        if section not in groups:
            groups[section] = p.add_argument_group(section)
        flag = _FLAGS.get(key, "--" + key.split(".")[-1].replace("_", "-"))
        kw: dict[str, typing.Any] = {"dest": key, "default": argparse.SUPPRESS}
        help_text = _HELP.get(key, "")
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif key == "model_kwargs":
            kw["type"] = json.loads
        shown = "" if default in (None, {}) else f" (default: {default})"
        kw["help"] = (help_text + shown).strip() or " "
        groups[section].add_argument(flag, **kw)
    p.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> dict[str, typing.Any]:
    skip = {"command", "func", "config", "resume"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def run(args: argparse.Namespace) -> int:
    from ..engine import StopRequested, fit, load_config, resume_config
    from ..engine.config import read_recipe
    from ..engine.run import format_table

    if args.resume is not None:
        recipe = read_recipe(args.config) if args.config else None
        cfg = resume_config(args.resume, overrides_from(args), recipe)
    else:
        cfg = load_config(args.config, overrides_from(args))
    try:
        row = fit(cfg, resume=args.resume)
    except StopRequested as stop:
        print(f"stopped; checkpoint saved: {stop}")
        return 130
    print(format_table([row]))
    print(f"run folder: {row['run_dir']}")
    return 0
