"""Module-level timing of CBAM (or SE) implementations on the CPU or CUDA, with bandwidth
floors.

Candidates run in alternating rounds in one process and the median per candidate is
kept, so load from other processes hits all of them alike. On CUDA each step is timed
with CUDA events (the device's time, synchronised after each step); "fused" is then the
Triton CBAM, and ``precision="bf16-autocast"`` feeds a bfloat16 input under autocast, as
inside a network trained with AMP. Reference passes over the
input-sized tensor: ``pass`` is ``y = x * 2`` (one read and one write into a new tensor)
and ``read`` is ``x.sum()`` (one read).

Floor of a CBAM training step (forward + backward): it cannot move fewer than 5 reads and
2 writes of input-sized tensors. Forward: x is read once before the channel gate exists
and once more after the batch-wide BatchNorm statistics of the spatial map are known (the
output cannot be written before), and y is written. Backward: g and x are read for the
gate gradients, which the spatial BatchNorm's batch sums need before anything else, then g
once more for the input gradient, which is written. The floor is ``2 x pass + 3 x read``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers import CBAM, SqueezeExcite

__all__ = [
    "CANDIDATES",
    "PRECISIONS",
    "ModuleBench",
    "bench_module",
    "format_module_table",
    "saved_bytes",
    "time_step",
]

PRECISIONS = ("float32", "bf16-autocast")

#: Candidate names: reference passes, our implementations, timm's (needs ``timm``).
CANDIDATES = (
    "pass",
    "read",
    "fused",
    "fused-compiled",
    "eager",
    "eager-compiled",
    "eager-autotune",
    "timm-eager",
    "timm-compiled",
)


def _timm(module: str, c: int) -> nn.Module:
    if module == "se":
        from timm.layers.squeeze_excite import SEModule

        return SEModule(c)
    from timm.layers.cbam import CbamModule

    return CbamModule(c)


def build(name: str, module: str, c: int) -> nn.Module:
    """The module of candidate ``name`` (``<impl>[-compiled|-autotune]``) for ``c``
    channels; "autotune" compiles with ``mode="max-autotune"``."""
    impl, _, compiled = name.partition("-")
    if impl == "timm":
        m = _timm(module, c)
    elif module == "se":
        m = SqueezeExcite(c, impl=impl)
    else:
        m = CBAM(c, impl=impl)
    m.train()
    if compiled == "autotune":
        return torch.compile(m, mode="max-autotune")
    return torch.compile(m) if compiled == "compiled" else m


def saved_bytes(m: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every tensor autograd saves for backward in one forward (x included)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return sum(seen.values())


@dataclass
class ModuleBench:
    """Timings (median ms) and saved-for-backward memory (x the input) of one setting."""

    module: str
    shape: tuple[int, int, int, int]
    channels_last: bool
    train: bool
    threads: int
    device: str = "cpu"
    precision: str = "float32"
    median_ms: dict[str, float] = field(default_factory=dict)
    min_ms: dict[str, float] = field(default_factory=dict)
    saved_x_input: dict[str, float] = field(default_factory=dict)

    @property
    def floor_ms(self) -> float | None:
        """``2 x pass + 3 x read`` for a CBAM training step, else None."""
        m = self.median_ms
        if not self.train or self.module != "cbam" or "pass" not in m or "read" not in m:
            return None
        return 2 * m["pass"] + 3 * m["read"]


def bench_module(
    shape: tuple[int, int, int, int],
    *,
    module: str = "cbam",
    channels_last: bool = False,
    candidates: tuple[str, ...] = ("pass", "read", "fused", "eager"),
    rounds: int = 7,
    train: bool = True,
    device: str = "cpu",
    precision: str = "float32",
) -> ModuleBench:
    """Time ``candidates`` on a random (N, C, H, W) input of ``shape`` on ``device``:
    float32, or with ``precision="bf16-autocast"`` bfloat16 under autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    unknown = set(candidates) - set(CANDIDATES)
    if unknown:
        raise ValueError(f"unknown candidates {sorted(unknown)}; valid: {', '.join(CANDIDATES)}")
    torch.manual_seed(0)
    n, c, h, w = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dtype = torch.bfloat16 if precision == "bf16-autocast" else torch.float32
    x = torch.randn(n, c, h, w, device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
    threads = torch.get_num_threads()
    res = ModuleBench(module, tuple(shape), channels_last, train, threads, device, precision)
    amp = precision == "bf16-autocast"
    steps: dict[str, Callable[[], object]] = {}
    for name in candidates:
        if name == "pass":
            steps[name] = lambda: torch.mul(x.detach(), 2.0)
            continue
        if name == "read":
            steps[name] = lambda: x.detach().sum()
            continue
        m = build(name, module, c).to(device)
        if not train:
            m.eval()
            steps[name] = _autocast(_no_grad(m, x), device, amp)
            continue
        steps[name] = _autocast(_train_step(m, x, g), device, amp)
        if not name.endswith(("-compiled", "-autotune")):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                res.saved_x_input[name] = saved_bytes(m, x) / x.nbytes
    for step in steps.values():
        for _ in range(3):  # warm-up (and compilation, autotuning)
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_step(step, device))
    res.median_ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    res.min_ms = {k: 1e3 * min(v) for k, v in times.items()}
    return res


def time_step(step: Callable[[], object], device: str) -> float:
    """Seconds of one step: wall clock on the CPU, CUDA events on the device."""
    if device != "cuda":
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _autocast(step: Callable[[], None], device: str, amp: bool) -> Callable[[], None]:
    if not amp:
        return step

    def under_autocast() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            step()

    return under_autocast


def _train_step(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        m(x).backward(g)

    return step


def _no_grad(m: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            m(x)

    return step


def format_module_table(results: list[ModuleBench]) -> str:
    """Markdown: one row per setting, medians in ms, then ratios against ``fused``."""
    names = [n for n in CANDIDATES if any(n in r.median_ms for r in results)]
    head = ["shape", "format"] + [f"{n} (ms)" for n in names] + ["floor (ms)"]
    ratios = [n for n in ("timm-eager", "timm-compiled", "eager") if n in names]
    head += [f"{n} / fused" for n in ratios] + ["fused / floor", "saved x input (fused / timm)"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for r in results:
        m = r.median_ms
        fmt = "channels_last" if r.channels_last else "NCHW"
        cells = ["x".join(map(str, r.shape)), fmt if r.precision == "float32" else f"{fmt} bf16"]
        cells += [f"{m[n]:.1f}" if n in m else "-" for n in names]
        floor = r.floor_ms
        cells.append("-" if floor is None else f"{floor:.1f}")
        fused = m.get("fused")
        cells += [f"{m[n] / fused:.2f}x" if fused and n in m else "-" for n in ratios]
        cells.append(f"{fused / floor:.2f}x" if fused and floor else "-")
        s = r.saved_x_input
        cells.append(
            f"{s.get('fused', float('nan')):.2f} / {s.get('timm-eager', float('nan')):.2f}"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
