"""What Grad-CAM costs: time per image of Grad-CAM and Grad-CAM++ at the last stage,
against a plain forward, for a model at its input size (batched: one forward and one
backward per batch).

    python benchmarks/bench_gradcam.py                          # resnet50_cbam, 224 px
    python benchmarks/bench_gradcam.py --model resnet50 --batch 1 8

Prints a Markdown table (median of repeats after a warm-up) and writes JSON (default
``benchmarks/results/bench_gradcam.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from convattn.explain import GradCAM, GradCAMPlusPlus
from convattn.models import create_model


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, the fused extension
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: torch.nn.Module, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Milliseconds per image of a forward, Grad-CAM and Grad-CAM++ on a batch."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    out = {"forward": _median_s(forward, repeats)}
    for name, cls in (("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)):
        with cls(model) as cam:
            out[name] = _median_s(lambda cam=cam: cam(x), repeats)
    return {k: 1000 * v / batch for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50_cbam")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="benchmarks/results/bench_gradcam.json")
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model).eval().to(memory_format=torch.channels_last)
    rows = [{"batch": b, **measure(model, b, args.size, args.repeats)} for b in args.batch]
    print(f"{args.model}, {args.size} px, {torch.get_num_threads()} threads, ms per image")
    print("| batch | forward | Grad-CAM | Grad-CAM++ | Grad-CAM / forward |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = r["gradcam"] / r["forward"]
        print(
            f"| {r['batch']} | {r['forward']:.1f} | {r['gradcam']:.1f} | "
            f"{r['gradcam++']:.1f} | {ratio:.2f}x |"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": args.model,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
