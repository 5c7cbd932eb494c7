"""``convattn demo``: the main job on the embedded default data."""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ..layers import CBAM


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default data")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        CBAM(32, reduction=4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    t0 = time.perf_counter()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    print(f"CBAM network: forward+backward on a batch of 8 (3x32x32), loss {loss.item():.4f}, ")
    print(f"{sum(p.numel() for p in net.parameters())} parameters, ")
    print(f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
    return 0
