"""Forward+backward timings of CBAM implementations on CPU, and the bandwidth floor.

Run: ``python benchmarks/bench_cbam.py [--shape N C H W] [--rounds R] [--candidates ...]``.
Candidates are timed in alternating rounds in one process and the median per candidate is
printed, so that noise from other processes on the machine hits every candidate alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from convattn.layers import CBAM


def _timm_cbam(c: int) -> torch.nn.Module:
    from timm.layers.cbam import CbamModule

    return CbamModule(c)


def one_pass(x: torch.Tensor) -> Callable[[], None]:
    """``y = x * 2``: one tensor-sized read and one tensor-sized write."""
    return lambda: torch.mul(x, 2.0)


def train_step(m: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        m(x).backward(g)

    return step


def eval_step(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            m(x)

    return step


def saved_bytes(m: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of every tensor autograd saves for backward in one forward (x included)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return sum(seen.values())


def build(name: str, c: int, x: torch.Tensor) -> torch.nn.Module:
    if name == "timm-eager":
        return _timm_cbam(c).train()
    if name == "timm-compiled":
        return torch.compile(_timm_cbam(c).train())
    if name == "eager":
        return CBAM(c, impl="eager").train()
    if name == "eager-compiled":
        return torch.compile(CBAM(c, impl="eager").train())
    if name == "fused":
        return CBAM(c, impl="fused").train()
    if name == "fused-compiled":  # the compiled graph calls the fused operator
        return torch.compile(CBAM(c, impl="fused").train())
    raise ValueError(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", type=int, nargs=4, default=[32, 256, 56, 56])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--eval", action="store_true", help="time no-grad eval forward instead")
    p.add_argument(
        "--candidates", nargs="+", default=["pass", "eager", "timm-eager", "timm-compiled", "fused"]
    )
    args = p.parse_args()
    torch.manual_seed(0)
    n, c, h, w = args.shape
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    steps: dict[str, Callable[[], None]] = {}
    for name in args.candidates:
        if name == "pass":
            steps[name] = one_pass(x.detach())
            continue
        m = build(name, c, x)
        if args.eval:
            steps[name] = eval_step(m.eval(), x)
        else:
            steps[name] = train_step(m, x, g)
            if "compiled" not in name:
                print(f"{name}: saved for backward {saved_bytes(m, x) / x.nbytes:.3f} x input")
        for _ in range(2):  # warm-up (and compilation)
            steps[name]()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    fmt_name = "channels_last" if args.channels_last else "contiguous"
    mode = "eval forward" if args.eval else "train forward+backward"
    print(f"shape {tuple(args.shape)} {fmt_name}, {mode}, {torch.get_num_threads()} threads")
    for name, ts in times.items():
        med = statistics.median(ts) * 1e3
        print(f"  {name:15s} median {med:9.3f} ms   min {min(ts) * 1e3:9.3f} ms")


if __name__ == "__main__":
    main()
