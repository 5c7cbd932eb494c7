"""Forward+backward timings of CBAM (or SE) implementations on CPU, and bandwidth floors.

Run: ``python benchmarks/bench_cbam.py [--shape N C H W] [--channels-last] [--module se]``.
Candidates are timed in alternating rounds in one process and the median per candidate is
printed, so that noise from other processes on the machine hits every candidate alike.

Reference passes over the input-sized tensor: ``pass`` is ``y = x * 2`` (one read and one
write of a freshly allocated tensor), ``read`` is ``x.sum()`` (one read). The fused CBAM
training step cannot move fewer than 5 reads and 2 writes of such tensors (forward: x twice,
the batch-wide BatchNorm of the spatial map sitting between the pooling and the output;
backward: g and x before the BatchNorm's batch sums, g again after them; one output each
way), printed as the floors ``3.5 x pass`` and ``2 x pass + 3 x read``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from convattn.layers import CBAM, SqueezeExcite


def _timm(module: str, c: int) -> torch.nn.Module:
    if module == "se":
        from timm.layers.squeeze_excite import SEModule

        return SEModule(c)
    from timm.layers.cbam import CbamModule

    return CbamModule(c)


def build(name: str, module: str, c: int) -> torch.nn.Module:
    """``timm-eager``, ``timm-compiled``, ``eager``, ``eager-compiled``, ``fused`` or
    ``fused-compiled`` (a compiled graph that calls the fused operator)."""
    impl, _, compiled = name.partition("-")
    if impl == "timm":
        m = _timm(module, c)
    elif module == "se":
        m = SqueezeExcite(c, impl=impl)
    else:
        m = CBAM(c, impl=impl)
    m.train()
    return torch.compile(m) if compiled == "compiled" else m


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", type=int, nargs=4, default=[32, 256, 56, 56])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--module", choices=["cbam", "se"], default="cbam")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--eval", action="store_true", help="time no-grad eval forward instead")
    p.add_argument(
        "--candidates",
        nargs="+",
        default=["pass", "read", "fused", "eager", "timm-eager", "timm-compiled"],
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
            steps[name] = lambda: torch.mul(x.detach(), 2.0)
            continue
        if name == "read":
            steps[name] = lambda: x.detach().sum()
            continue
        m = build(name, args.module, c)
        if args.eval:
            steps[name] = eval_step(m.eval(), x)
        else:
            steps[name] = train_step(m, x, g)
            if "compiled" not in name:
                ratio = saved_bytes(m, x) / x.nbytes
                print(f"{name}: saved for backward {ratio:.3f} x input (input included)")
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
    print(
        f"{args.module} {tuple(args.shape)} {fmt_name}, {mode}, {torch.get_num_threads()} threads"
    )
    med = {k: statistics.median(ts) * 1e3 for k, ts in times.items()}
    for name, ts in times.items():
        print(f"  {name:15s} median {med[name]:9.3f} ms   min {min(ts) * 1e3:9.3f} ms")
    if "pass" in med and "read" in med and not args.eval and args.module == "cbam":
        print(f"  floor 3.5 x pass      {3.5 * med['pass']:9.3f} ms")
        print(f"  floor 2 pass + 3 read {2 * med['pass'] + 3 * med['read']:9.3f} ms")


if __name__ == "__main__":
    main()
