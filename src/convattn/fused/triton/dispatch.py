"""When the Triton kernels run a CBAM, and the BatchNorm bookkeeping around their pure
operator (see :mod:`convattn.fused.triton` for what is covered)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch
from torch import nn

from ...layers import CBAM, ChannelAttention
from ..common import (
    CODES,
    batchnorm_unsupported,
    bn_plan,
    eager_only,
    shortcut_fits,
    shortcut_like,
    update_running_stats,
)

__all__ = ["FORCE_CPU_ENV", "norm_unsupported", "run_triton", "triton_target", "triton_unsupported"]

#: With ``TRITON_INTERPRET=1`` also set, ``CONVATTN_TRITON_ON_CPU=1`` sends CPU tensors to
#: the Triton kernels (run by Triton's interpreter) as if they were CUDA tensors: cases
#: the kernels do not cover then run eagerly, not on the C++ kernels. For tests only.
FORCE_CPU_ENV = "CONVATTN_TRITON_ON_CPU"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_POOLS = {"avg", "max"}


@functools.cache
def _importable() -> bool:
    return importlib.util.find_spec("triton") is not None


@torch.compiler.assume_constant_result
def _triton_on_cpu() -> bool:
    forced = os.environ.get(FORCE_CPU_ENV) == "1"
    return forced and os.environ.get("TRITON_INTERPRET") == "1"


@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """Whether Triton can be imported (evaluated once per graph under ``torch.compile``)."""
    return _importable()


@torch.compiler.assume_constant_result
def _compile_kernels() -> bool:
    from .. import COMPILE_FUSED

    return COMPILE_FUSED


def triton_target(x: torch.Tensor) -> bool:
    """Whether ``x`` belongs to the Triton kernels rather than the C++ ones: CUDA tensors
    (and CPU tensors where :data:`FORCE_CPU_ENV` forces it)."""
    return x.device.type == "cuda" or (x.device.type == "cpu" and _triton_on_cpu())


def _parts(module: CBAM | ChannelAttention) -> tuple[ChannelAttention, nn.Module | None, int]:
    """The channel gate, the spatial gate (``None``: the channel gate alone, as SE) and
    the operators' arrangement code (0 for the channel gate alone)."""
    if isinstance(module, ChannelAttention):
        return module, None, 0
    if module.spatial is None:
        return module.channel, None, 0
    return module.channel, module.spatial, CODES[module.arrangement]


def triton_unsupported(module: nn.Module, x: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run ``module`` on ``x``, or ``None`` when they can."""
    if not isinstance(module, CBAM | ChannelAttention):
        return f"{type(module).__name__} (Triton: CBAM, channel attention, SE)"
    if eager_only():
        return "tracing, scripting, exporting or a functorch transform"
    if not triton_available():
        return "Triton is not installed"
    if not triton_target(x):
        return f"{x.device.type} input (Triton: CUDA)"
    if x.dtype not in _DTYPES or x.dim() != 4:
        return f"{x.dtype} {x.dim()}-d input (Triton: float32, bfloat16, float16, 4-d)"
    if not 0 < x.numel() < 2**31:
        return "empty input or 2**31 elements and more"
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return "input neither contiguous nor channels_last"
    channel, spatial, _ = _parts(module)
    if not set(channel.pool_types) <= _POOLS:
        return f"pool types {channel.pool_types} (Triton: avg, max)"
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.device != x.device or not t.is_floating_point() for t in tensors if t.dim()):
        return "parameters on another device or not floating point"
    if spatial is None:
        return None
    if spatial.compress is not None:
        return "conv1x1 spatial pooling"
    if spatial.bn is not None:
        if type(spatial.bn) is not nn.BatchNorm2d:
            return f"{type(spatial.bn).__name__} in the spatial gate (Triton: nn.BatchNorm2d)"
        return batchnorm_unsupported(spatial.bn, x)
    return None


def _canonical(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the strides its format implies (a copy where size-1 dimensions differ),
    as the kernels address it."""
    _, c, h, w = x.shape
    cl = not x.is_contiguous()
    strides = (h * w * c, 1, w * c, c) if cl else (c * h * w, h * w, w, 1)
    if x.stride() == strides:
        return x
    fmt = torch.channels_last if cl else torch.contiguous_format
    return torch.empty_like(x, memory_format=fmt).copy_(x)


def _prefer(x: torch.Tensor) -> bool:
    """For ``impl="auto"``: under ``torch.compile`` with gradients off (inference) the
    eager operations are recorded, which the compiler fuses with their neighbours."""
    return not torch.compiler.is_compiling() or torch.is_grad_enabled()


def norm_unsupported(norm: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``norm``, the BatchNorm in front of the attention, cannot be folded into the
    Triton kernels for its input ``x`` (``None`` when it can)."""
    if type(norm) is not nn.BatchNorm2d:  # e.g. synchronised across processes
        return f"{type(norm).__name__} (folded: nn.BatchNorm2d)"
    if norm.num_features != x.shape[1]:
        return "BatchNorm channels differ from the input's"
    tensors = [*norm.parameters(), *norm.buffers()]
    if any(t.device != x.device or not t.is_floating_point() for t in tensors if t.dim()):
        return "BatchNorm parameters on another device or not floating point"
    return batchnorm_unsupported(norm, x)


def _bn_args(bn: nn.BatchNorm2d | None) -> tuple[int, tuple, float, float, bool]:
    """A BatchNorm as the operator takes it: its mode (0 none, 1 running statistics, 2 the
    batch's), (weight, bias, running mean, running variance), eps, and the update factor
    and whether to update its running statistics (nn.BatchNorm2d's logic, counted)."""
    if bn is None:
        return 0, (None, None, None, None), 0.0, 0.0, False
    batch_stats, factor, update = bn_plan(bn)
    stats = (bn.weight, bn.bias, None, None)
    if not batch_stats:  # running statistics are read only when used
        stats = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return 2 if batch_stats else 1, stats, bn.eps, factor, update


def _device_guard(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """x's GPU made current: Triton launches its kernels on the current device. (A
    compiled graph sets its device itself; the autograd engine runs a backward with its
    tensors' device current.)"""
    if x.device.type != "cuda" or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.cuda.device(x.device)


def run_triton(
    module: nn.Module,
    x: torch.Tensor,
    *,
    shortcut: torch.Tensor | None = None,
    relu: bool = False,
    norm: nn.Module | None = None,
) -> torch.Tensor | None:
    """``[relu](module([norm](x)) [+ shortcut])`` by the Triton kernels, or ``None`` where
    the eager path must run (a ``norm`` that cannot be folded runs eagerly in front)."""
    if module.impl == "eager" or triton_unsupported(module, x) is not None:
        return None
    if x.shape[1] != module.channels or (module.impl == "auto" and not _prefer(x)):
        return None
    if torch.compiler.is_compiling() and not _compile_kernels():  # COMPILE_FUSED off
        return None
    if not shortcut_fits(x, shortcut):
        return None
    if norm is not None and norm_unsupported(norm, x) is not None:
        x, norm = norm(x), None
    from . import ops  # imports Triton: only once a CBAM runs here

    channel, spatial, arrangement = _parts(module)
    fc1, fc2 = channel.fc1, channel.fc2
    bn = None if spatial is None else spatial.bn
    conv = (None, None) if spatial is None else (spatial.conv.weight, spatial.conv.bias)
    mode, stats, eps, factor, update = _bn_args(bn)
    head, hstats, heps, hfactor, hupdate = _bn_args(norm)
    x = _canonical(x)
    pools = channel.pool_types
    off = torch.autocast(x.device.type, enabled=False)  # the op computes in float32
    with off, _device_guard(x):
        y, *_, batch, _, hbatch = ops.cbam_forward(
            x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, *conv, *stats,
            "avg" in pools, "max" in pools, arrangement, mode, eps,
            shortcut_like(x, shortcut), relu, head, *hstats, heps,
        )  # fmt: skip
    if update:
        update_running_stats(bn, batch, factor)
    if hupdate:
        update_running_stats(norm, hbatch, hfactor)
    return y
