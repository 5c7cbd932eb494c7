"""Evaluation (top-1/top-5 error, loss, throughput) and precise BatchNorm.

Errors are in percent, as in the CBAM paper's tables. In distributed evaluation each
process scores its share and the counts are summed; ``DistributedSampler`` pads the last
shares by repeating up to ``world_size - 1`` samples, which are then counted twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum
from .metrics import Meter, topk_correct
from .progress import Progress

__all__ = ["autocast", "evaluate", "precise_bn"]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision context: "none", "bf16" or "fp16" (fp16 needs CUDA)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; use amp='bf16' on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def move_batch(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a batch to ``device``, channels_last for 4-D inputs when asked."""
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: str = "none",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1 and top-5 error (%), mean cross-entropy and images/s over ``loader``."""
    was_training = model.training
    model.eval()
    meter = Meter()
    start = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else 0
    with Progress(total, desc, enabled=progress) as bar:
        for images, labels in loader:
            images, labels = move_batch(images, device, channels_last), labels.to(device)
            with autocast(device, amp):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            top1, top5 = topk_correct(logits, labels)
            meter.update(len(labels), loss=loss.item(), top1=top1, top5=top5)
            bar.update()
    elapsed = time.perf_counter() - start
    model.train(was_training)
    total = meter.reduce()
    return {
        **total.errors(),
        "images_per_s": total.count / max(elapsed, 1e-9),
        "samples": total.count,
    }


@torch.no_grad()
def precise_bn(
    model: nn.Module,
    loader: Iterable,
    num_batches: int,
    device: torch.device,
    *,
    channels_last: bool = False,
) -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over
    ``num_batches`` training batches with frozen weights (removes the lag of the
    exponential running averages). Returns the number of batches used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_batches <= 0:
        return 0
    saved = [(bn.momentum, bn.training) for bn in bns]
    was_training = model.training
    model.train()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: the exact mean over batches
    used = 0
    for images, _ in loader:
        if used >= num_batches:
            break
        model(move_batch(images, device, channels_last))
        used += 1
    world = int(all_reduce_sum(torch.ones(1)).item())
    for bn, (momentum, training) in zip(bns, saved, strict=True):
        bn.momentum = momentum
        bn.train(training)
        if world > 1:  # average the estimates of all processes
            bn.running_mean.copy_(all_reduce_sum(bn.running_mean) / world)
            bn.running_var.copy_(all_reduce_sum(bn.running_var) / world)
    model.train(was_training)
    return used
