"""What does the data pipeline cost a small CIFAR model on a few CPU cores?

Measures, for ``build_dataset(DATA, "train")`` (e.g. CIFAR-10 as JPEG folders, a folder
or an archive path):

1. the per-sample cost of ``dataset[i]`` (slice + v2 crop/flip on uint8) and the
   per-image cost of the batch normalisation, single-threaded;
2. the loader's images/s alone, with 0, 1 and 2 workers;
3. training steps of a CIFAR ResNet-20 (SGD, batch 128) on a fixed in-memory batch
   (model only) against the same steps fed by the loader with 0, 1 and 2 workers,
   interleaved over several rounds. Cores shared with other jobs slow some rounds, so
   the best round is reported (with the median), and the CPU time an image (this
   process plus the loader's workers, from /proc on Linux), which such load barely
   changes.

    PYTHONPATH=src python benchmarks/data_throughput.py PATH/TO/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import torch
from torch import nn

from convattn.data import build_dataset, build_loader


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def resnet20(num_classes: int = 10) -> nn.Sequential:
    """He et al. (2016) CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 wide."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU(inplace=True)]  # fmt: skip
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(3):
            layers.append(Block(cin, width, 2 if stage and i == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def per_item_us(fn, count: int, repeats: int = 5) -> float:
    """Best of ``repeats`` timings of ``count`` calls, in us a call (least disturbed by
    other processes on shared cores)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def worker_cpu_s(loader) -> float:
    """CPU seconds used so far by the loader's worker processes (Linux /proc)."""
    workers = getattr(getattr(loader, "_iterator", None), "_workers", [])
    total = 0.0
    for w in workers:
        with open(f"/proc/{w.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def loader_rate(loader, steps: int) -> float:
    it = iter(loader)
    next(it)  # workers started, first batch ready
    start, n = time.perf_counter(), 0
    for images, _ in itertools.islice(it, steps):
        n += len(images)
    return n / (time.perf_counter() - start)


def train_rate(net, opt, batches, steps: int) -> tuple[float, float]:
    """Images/s and CPU us an image (this process and loader workers) of ``steps``
    training steps after two warm-up steps."""
    it = iter(batches)
    start = cpu = 0.0
    n = 0
    for step, (images, labels) in enumerate(itertools.islice(it, steps + 2)):
        if step == 2:  # skip warm-up steps
            start, cpu, n = time.perf_counter(), time.process_time() + worker_cpu_s(batches), 0
        loss = nn.functional.cross_entropy(net(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(images)
    wall = time.perf_counter() - start
    cpu = time.process_time() + worker_cpu_s(batches) - cpu
    return n / wall, cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="dataset spec or path (folder or archive)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-training", action="store_true", help="skip part 3")
    args = parser.parse_args()
    torch.manual_seed(0)

    start = time.perf_counter()
    ds, info = build_dataset(args.data, "train", cache_dir=args.cache_dir)
    print(f"{info.name}: {len(ds)} images, kind {info.kind}, in memory {info.in_memory}, "
          f"built in {time.perf_counter() - start:.1f} s")  # fmt: skip

    torch.set_num_threads(1)
    idx = torch.randint(0, len(ds), (2000 if info.in_memory else 100,)).tolist()
    sample_us = per_item_us(lambda i: ds[idx[i]], len(idx))
    batch = torch.stack([ds[i][0] for i in idx[: args.batch_size]])
    norm_us = per_item_us(lambda _: ds.batch_transform(batch), 20) / args.batch_size
    print(f"per sample (1 thread, best of 5): dataset[i] {sample_us:.1f} us; batch "
          f"normalisation {norm_us:.2f} us an image")  # fmt: skip

    torch.set_num_threads(args.threads)
    loaders = {w: build_loader(ds, args.batch_size, train=True, workers=w) for w in (0, 1, 2)}
    for w, loader in loaders.items():
        rate = max(loader_rate(loader, args.steps) for _ in range(args.rounds))
        print(f"loader alone, {w} workers: {rate:8.0f} images/s (best of {args.rounds})")

    if args.no_training:
        return
    net = resnet20(info.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    fixed = next(iter(loaders[0]))
    fixed = [(fixed[0].clone(), fixed[1].clone())] * (args.steps + 2)
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):  # interleaved, so load from other processes hits all alike
        runs.setdefault("model only", []).append(train_rate(net, opt, fixed, args.steps))
        for w, loader in loaders.items():
            runs.setdefault(f"{w} workers", []).append(train_rate(net, opt, loader, args.steps))
    print(f"ResNet-20 training, batch {args.batch_size}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds of {args.steps} steps:")  # fmt: skip
    best_base = max(r for r, _ in runs["model only"])
    cpu_base = min(c for _, c in runs["model only"])
    for name, values in runs.items():
        best, cpu = max(r for r, _ in values), min(c for _, c in values)
        print(f"  {name:11s} best {best:6.0f} images/s ({best / best_base - 1:+6.1%}), "
              f"median {statistics.median(r for r, _ in values):6.0f}; CPU {cpu:5.0f} us an "
              f"image ({cpu - cpu_base:+5.0f} us)")  # fmt: skip


if __name__ == "__main__":
    main()
