"""When and how the fused kernels run a CBAM or channel attention module: eligibility,
the ``impl="auto"`` rule, and the BatchNorm bookkeeping around the pure operators. CUDA
tensors are handed to the Triton kernels' own dispatch (:mod:`convattn.fused.triton`).

:func:`run_fused` computes ``module(x)`` with the kernels, optionally with the residual
block around it (``relu(module(norm(x)) + shortcut)``), or returns ``None`` where the
eager operations must run. The math is that of :mod:`convattn.layers`; see
:mod:`convattn.fused` for what is covered and how the passes are planned.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import CBAM, ChannelAttention
from .common import (
    CODES,
    batchnorm_unsupported,
    bn_plan,
    eager_only,
    shortcut_fits,
    shortcut_like,
    update_running_stats,
)
from .ops import ForwardArgs, fused_forward, fused_ops
from .triton.dispatch import run_triton, triton_target

__all__ = [
    "fused_unsupported",
    "has_hooks",
    "norm_unsupported",
    "prefer_fused",
    "run_fused",
]

_DTYPES = (torch.float32, torch.float64)


@torch.compiler.assume_constant_result
def _num_threads() -> int:
    return torch.get_num_threads()


def fused_unsupported(module: nn.Module, x: torch.Tensor) -> str | None:
    """Why the fused kernels cannot run ``module`` (a ``CBAM`` or ``ChannelAttention``) on
    ``x``, or ``None`` when they can (the extension's build is not checked here)."""
    if not isinstance(module, CBAM | ChannelAttention):
        return f"{type(module).__name__} (fused: CBAM, channel attention, SE)"
    if eager_only():
        return "tracing, scripting, exporting or a functorch transform"
    if x.device.type != "cpu" or x.dtype not in _DTYPES:
        return f"{x.device.type} {x.dtype} input (fused: CPU float32/float64)"
    if x.numel() == 0:
        return "empty input"
    if torch.is_autocast_enabled(x.device.type):
        return "autocast (eager runs the linear layers and the conv in lower precision)"
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return "input neither contiguous nor channels_last"
    channel = module.channel if isinstance(module, CBAM) else module
    if not set(channel.pool_types) <= {"avg", "max"}:
        return f"pool types {channel.pool_types} (fused: avg, max)"
    spatial = module.spatial if isinstance(module, CBAM) else None
    if spatial is not None:
        if spatial.compress is not None:
            return "conv1x1 spatial pooling"
        bn = spatial.bn
        if bn is not None:
            if type(bn) is not nn.BatchNorm2d:  # e.g. synchronised across processes
                return f"{type(bn).__name__} in the spatial gate (fused: nn.BatchNorm2d)"
            return batchnorm_unsupported(bn, x)
    return None


def prefer_fused(x: torch.Tensor) -> bool:
    """For ``impl="auto"``: whether the fused kernels are expected to beat eager on ``x``.

    They parallelise over samples only, so with far fewer samples than threads eager's
    intra-operator parallelism may win: below a quarter of the threads per sample "auto"
    stays eager. Under ``torch.compile`` with gradients off (inference) "auto" records the
    eager operations, which the compiler fuses with their neighbours (the block's
    BatchNorm, the addition and the ReLU). BENCHMARKS.md has the measurements behind both.
    """
    if torch.compiler.is_compiling() and not torch.is_grad_enabled():
        return False
    return 4 * x.shape[0] >= _num_threads()


def _same_kind(x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """The kernels read parameters and buffers as contiguous arrays of x's dtype."""
    return all(
        t is None or (t.dtype == x.dtype and t.device == x.device and t.is_contiguous())
        for t in tensors
    )


def has_hooks(*modules: nn.Module | None) -> bool:
    """Whether these modules have hooks of their own, which a fused block tail would skip
    (it does not call them). Global hooks (``register_module_forward_hook`` and kin) are
    instrumentation and do not change the path: they see the block, not the modules
    folded into it."""
    return any(
        m is not None
        and bool(
            m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        )
        for m in modules
    )


def norm_unsupported(module: nn.Module, norm: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``norm`` (the BatchNorm whose output ``module`` gates) cannot be folded into the
    fused kernels for input ``x``, or ``None`` when it can."""
    if type(norm) is not nn.BatchNorm2d:  # e.g. synchronised across processes
        return f"{type(norm).__name__} (folded: nn.BatchNorm2d)"
    spatial = isinstance(module, CBAM) and module.spatial is not None
    if spatial and module.arrangement != "channel-spatial":
        return f"{module.arrangement} arrangement (folded: channel-spatial, channel gate)"
    if norm.num_features != x.shape[1]:
        return "BatchNorm channels differ from the input's"
    if not _same_kind(x, norm.weight, norm.bias, norm.running_mean, norm.running_var):
        return "BatchNorm parameters or statistics of another dtype or not contiguous"
    return batchnorm_unsupported(norm, x)


def _gate_args(module: nn.Module, x: torch.Tensor) -> dict | None:
    """The attention's parameters as operator arguments (``None``: not of x's kind)."""
    spatial = module.spatial if isinstance(module, CBAM) else None
    channel = module.channel if isinstance(module, CBAM) else module
    fc1, fc2 = channel.fc1, channel.fc2
    args = {
        "w1": fc1.weight, "b1": fc1.bias, "w2": fc2.weight, "b2": fc2.bias,
        "conv_w": None, "conv_b": None, "bn_w": None, "bn_b": None,
        "running_mean": None, "running_var": None, "arrangement": 0,
        "use_avg": "avg" in channel.pool_types, "use_max": "max" in channel.pool_types,
        "norm": False, "batch_stats": False, "eps": 0.0,
    }  # fmt: skip
    if spatial is not None:
        # model.to(memory_format=torch.channels_last) makes this (1, 2, k, k) weight
        # channels_last too; the kernels read it as a dense row-major array.
        args["conv_w"], args["conv_b"] = spatial.conv.weight.contiguous(), spatial.conv.bias
        args["arrangement"] = CODES[module.arrangement]
        if spatial.bn is not None:
            bn = spatial.bn
            args.update(norm=True, bn_w=bn.weight, bn_b=bn.bias, eps=bn.eps)
            args.update(running_mean=bn.running_mean, running_var=bn.running_var)
    tensors = [v for v in args.values() if isinstance(v, torch.Tensor)]
    return args if _same_kind(x, *tensors) else None


def run_fused(
    module: nn.Module,
    x: torch.Tensor,
    *,
    shortcut: torch.Tensor | None = None,
    relu: bool = False,
    norm: nn.Module | None = None,
) -> torch.Tensor | None:
    """``module(x)`` (a ``CBAM`` or ``ChannelAttention``, already shape-checked) with the
    fused kernels, or ``None`` where its ``impl`` and ``x`` call for the eager path.

    With ``norm``, ``x`` is that BatchNorm's input and the result is ``module(norm(x))``;
    with ``shortcut`` it is added to the attention's output, then ``relu`` applies the
    ReLU. CUDA tensors go to the Triton kernels (:mod:`convattn.fused.triton`)."""
    if module.impl == "eager":
        return None
    if triton_target(x):
        return run_triton(module, x, shortcut=shortcut, relu=relu, norm=norm)
    if fused_unsupported(module, x) is not None:
        return None
    if x.dim() != 4 or x.shape[1] != module.channels:  # the eager call raises the error
        return None
    if module.impl == "auto" and not prefer_fused(x):
        return None
    compiling = torch.compiler.is_compiling()
    ops = None if compiling else fused_ops()
    if ops is None and not compiling:
        return None
    if not shortcut_fits(x, shortcut):
        return None
    if norm is not None and norm_unsupported(module, norm, x) is not None:
        x, norm = norm(x), None  # the BatchNorm runs eagerly, the rest fused
    gate = _gate_args(module, x)
    if gate is None:
        return None
    return _call(ops, module, x, gate, shortcut_like(x, shortcut), relu, norm)


def _call(ops, module, x, gate: dict, shortcut, relu: bool, norm) -> torch.Tensor:
    """The operator call and the BatchNorm bookkeeping of nn.BatchNorm2d around it."""
    params = [x, *(v for v in gate.values() if isinstance(v, torch.Tensor)), shortcut]
    if norm is not None:
        params += [norm.weight, norm.bias]
    need_idx = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)
    bn = module.spatial.bn if isinstance(module, CBAM) and module.spatial is not None else None
    if bn is not None:
        batch_stats, factor, update = bn_plan(bn)
        gate["batch_stats"] = batch_stats
        if batch_stats:  # running statistics are read only when used
            gate["running_mean"] = gate["running_var"] = None
    head = {"head": 0, "head_w": None, "head_b": None, "head_rm": None, "head_rv": None}
    if norm is not None:
        h_batch, h_factor, h_update = bn_plan(norm)
        head.update(head=2 if h_batch else 1, head_w=norm.weight, head_b=norm.bias)
        if not h_batch:
            head.update(head_rm=norm.running_mean, head_rv=norm.running_var)
    eps = 0.0 if norm is None else norm.eps
    args = ForwardArgs(x=x, **gate, shortcut=shortcut, relu=relu, **head, head_eps=eps,
                       need_idx=need_idx)  # fmt: skip
    y, batch, hbatch = fused_forward(ops, args)
    if bn is not None and update:
        update_running_stats(bn, batch, factor)
    if norm is not None and h_update:
        update_running_stats(norm, hbatch, h_factor)
    return y
