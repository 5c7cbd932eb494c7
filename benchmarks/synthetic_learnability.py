"""Is the embedded synthetic dataset learnable, and not trivially? Train a small CNN.

Trains a 5-layer CNN (about 0.2M parameters; optionally with CBAM after every conv
block) on ``build_dataset("synthetic")`` through the real data pipeline (per-sample
crop + flip, batch normalisation) on the CPU, and prints validation accuracy per epoch.

    PYTHONPATH=src python benchmarks/synthetic_learnability.py --epochs 10
    PYTHONPATH=src python benchmarks/synthetic_learnability.py --attention cbam
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from convattn.data import build_dataset, build_loader, set_epoch
from convattn.layers import CBAM


def small_cnn(num_classes: int, attention: bool) -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
        if attention:
            layers.append(CBAM(cout, reduction=8))
        return [*layers, nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 32), *block(32, 32), nn.MaxPool2d(2),  # 32 -> 16 px
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),  # 16 -> 8 px
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )  # fmt: skip


@torch.no_grad()
def accuracy(net: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    net.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (net(images).argmax(1) == labels).sum().item()
        total += len(labels)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="dataset spec for build_dataset")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention", choices=["none", "cbam"], default="none")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    train_set, info = build_dataset(args.data, "train")
    val_set, _ = build_dataset(args.data, "val")
    train = build_loader(train_set, args.batch_size, train=True, seed=args.seed)
    val = build_loader(val_set, 500, train=False)
    net = small_cnn(info.num_classes, args.attention == "cbam")
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.epochs * len(train), pct_start=0.25
    )
    print(f"{info.name}: {len(train_set)} train / {len(val_set)} val, {info.img_size} px; "
          f"CNN ({args.attention}) {params / 1e6:.2f}M params, {args.threads} threads")  # fmt: skip
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        net.train()
        set_epoch(train, epoch)
        for images, labels in train:
            loss = nn.functional.cross_entropy(net(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.3f}  val acc {accuracy(net, val):.3f}  "
              f"{elapsed:6.1f} s wall, {cpu:6.1f} s CPU", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
