"""SGD and learning-rate schedules of the paper's recipe (and the cosine alternative).

The schedule is evaluated per iteration (``LambdaLR`` stepped after every optimiser
step), so warm-up is smooth and "step" decays exactly at epoch boundaries:
``lr(t) = lr * gamma ** floor(epoch / step_epochs)`` (the paper: 0.1 every 30 epochs), or
one decay at each of ``milestones`` (He et al.'s CIFAR recipe: epochs 82 and 123).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import Config

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """One group with weight decay, and one without for BN weights and biases (1-D
    tensors) when ``no_decay_bn_bias``."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.SGD:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.no_decay_bn_bias)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )


def lr_factor(step: int, steps_per_epoch: int, cfg: Config) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""
    s = cfg.schedule
    epoch = step / steps_per_epoch
    if s.warmup_epochs > 0 and epoch < s.warmup_epochs:
        return (epoch + 1 / steps_per_epoch) / s.warmup_epochs
    floor = s.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    if s.kind == "step":
        if s.milestones is not None:
            decays = sum(epoch >= m for m in s.milestones)
        else:
            decays = math.floor(epoch / s.step_epochs)
        return max(s.gamma**decays, floor)
    if s.kind == "cosine":
        span = max(s.epochs - s.warmup_epochs, 1e-8)
        t = min(max(epoch - s.warmup_epochs, 0.0) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {s.kind!r}; valid: 'step', 'cosine'")


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, cfg: Config
) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.schedule.kind not in ("step", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule.kind!r}; valid: 'step', 'cosine'")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg)
    )
