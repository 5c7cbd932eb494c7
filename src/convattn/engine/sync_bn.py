"""Synchronised BatchNorm that also works on the CPU (gloo).

``torch.nn.SyncBatchNorm`` refuses CPU tensors. :class:`GroupBatchNorm` computes the
batch statistics over every process with two differentiable ``all_reduce`` calls (the
per-channel sums and counts, giving the global mean, then the sums of squared deviations
from it; the one-pass ``E[x^2] - mean^2`` loses most digits in float32 when a channel's
mean is large against its spread), so gradients flow across processes as in the CUDA
version. Running statistics use the unbiased variance of the global batch, as
``nn.BatchNorm``. On CUDA, :func:`convert_sync_batchnorm` uses PyTorch's own module.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["GroupBatchNorm", "convert_sync_batchnorm"]


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span all processes of the default group."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable

        dims = [d for d in range(x.dim()) if d != 1]
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        totals = all_reduce(torch.cat([x.sum(dims), count]))  # (C + 1,)
        n = totals[-1]
        mean = totals[:c] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n  # biased, as BatchNorm normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1 / self.num_batches_tracked.item()
                )
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm with a synchronised one (PyTorch's on CUDA, ours on CPU)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GroupBatchNorm
    ):
        new = GroupBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module
