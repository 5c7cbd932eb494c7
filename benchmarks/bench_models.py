"""Model-level cost of CBAM: training step and inference of ResNet-50 with and without it.

Compares, in one process with the candidates alternating and the median of repeats:
our ``resnet50`` (no attention), ``resnet50_cbam`` (``impl="auto"``: the fused kernels
where they apply) and ``resnet50_cbam`` with ``impl="eager"``, and timm's ResNet-50 with its
``CbamModule`` in every block; eagerly and under ``torch.compile``. A training step is
forward, cross-entropy, backward and an SGD step; inference is a forward without gradients
in evaluation mode. Ratios are against the plain ResNet-50 in the same mode.

    python benchmarks/bench_models.py                       # ResNet-50, batch 16, 224 px
    python benchmarks/bench_models.py --arch cifar_resnet20 --batch 128 --size 32
    python benchmarks/bench_models.py --phases --memory     # bytes saved for backward only
    python benchmarks/bench_models.py --device cuda --batch 64 --amp  # bf16 autocast on CUDA

On CUDA (where "auto" runs the Triton CBAM) each step is timed with CUDA events, and
``--modes`` may add ``autotune`` (``torch.compile(mode="max-autotune")``).

Needs timm (``pip install -e .[bench]``) for the timm rows. Prints a Markdown table and
writes JSON (default ``benchmarks/results/bench_models.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from convattn.bench import saved_bytes, time_step
from convattn.models import create_model


def candidates(arch: str, timm_too: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    out = {
        arch: lambda: create_model(arch),
        f"{arch}_cbam (ours, auto)": lambda: create_model(f"{arch}_cbam"),
        f"{arch}_cbam (ours, eager)": lambda: create_model(f"{arch}_cbam", attn_impl="eager"),
    }
    if timm_too:
        import timm

        out["timm resnet50 + CbamModule"] = lambda: timm.create_model(
            "resnet50", block_args={"attn_layer": "cbam"}
        )
    return out


def make_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool, mode: str, amp: bool
):
    """One training step or inference call; ``mode`` "eager", "compiled" or "autotune"."""
    fn = model
    if mode != "eager":
        fn = torch.compile(model, mode="max-autotune" if mode == "autotune" else None)

    def autocast():
        if not amp:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=torch.bfloat16)

    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            with autocast():
                loss = F.cross_entropy(fn(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step
    model.eval()

    def infer() -> None:
        with torch.no_grad(), autocast():
            fn(x)

    return infer


def saved_memory(
    arch: str, timm_too: bool, x: torch.Tensor, skip: list[str], fmt: torch.memory_format
) -> dict[str, int]:
    """Bytes autograd keeps for backward in one training forward of each candidate (the
    parameters included, as autograd saves them for the weight gradients)."""
    out = {}
    for name, build in candidates(arch, timm_too).items():
        if name not in skip:
            torch.manual_seed(0)
            out[name] = saved_bytes(build().to(x.device, memory_format=fmt).train(), x)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["eager", "compiled"],
        choices=["eager", "compiled", "autotune"],
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast")  # fmt: skip
    ap.add_argument("--phases", nargs="*", default=["train", "infer"])
    ap.add_argument("--skip", nargs="*", default=[], help="candidate names to leave out")
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--memory", action="store_true", help="also: bytes saved for backward")
    ap.add_argument("--out", default="benchmarks/results/bench_models.json")
    args = ap.parse_args()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    timm_too = not args.no_timm and args.arch == "resnet50"
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    x = x.contiguous(memory_format=fmt)
    rows = []
    for mode in args.modes:
        for phase in args.phases:
            steps, times = {}, {}
            for name, build in candidates(args.arch, timm_too).items():
                if name in args.skip:
                    continue
                torch.manual_seed(0)
                model = build().to(args.device, memory_format=fmt)
                y = torch.randint(0, 1000, (args.batch,), device=args.device)
                y = y % model(x[:1]).shape[1]
                train = phase == "train"
                steps[name] = make_step(model, x, y, train, mode, args.amp)
                for _ in range(args.warmup):  # includes compilation
                    steps[name]()
                times[name] = []
            for _ in range(args.repeats):  # alternate candidates
                for name, step in steps.items():
                    times[name].append(time_step(step, args.device))
            base = statistics.median(times[args.arch])
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append({"mode": mode, "phase": phase, "model": name, "median_s": med,
                             "ratio": med / base, "times_s": ts})  # fmt: skip
    memory = saved_memory(args.arch, timm_too, x, args.skip, fmt) if args.memory else {}
    cpu = platform.processor() or platform.machine()
    if args.device == "cuda":
        cpu = torch.cuda.get_device_name()
    if args.amp:
        cpu += ", bfloat16 autocast"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}; batch "
          f"{args.batch}, {args.size} px, channels_last {args.channels_last}, "
          f"median of {args.repeats}\n")  # fmt: skip
    if rows:
        print("| mode | phase | model | median (ms) | vs plain |")
        print("| --- | --- | --- | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {r['phase']} | {r['model']} | {1e3 * r['median_s']:.0f} | "
              f"{r['ratio']:.2f}x |")  # fmt: skip
    if memory:
        print("\n| model | saved for backward (MiB) | vs plain |\n| --- | ---: | ---: |")
        for name, b in memory.items():
            print(f"| {name} | {b / 2**20:.0f} | {b / memory[args.arch]:.3f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "rows": rows, "saved_bytes": memory}
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
