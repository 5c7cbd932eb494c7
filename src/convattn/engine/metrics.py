"""Classification metrics: top-k error and running averages that reduce across processes."""

from __future__ import annotations

import torch

from .distributed import all_reduce_sum

__all__ = ["Meter", "topk_correct"]


def topk_correct(
    logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k.

    ``target`` may be class indices (N,) or soft labels (N, K) from mixup/cutmix, in which
    case the most probable class counts. k larger than the number of classes counts all.
    """
    if target.dim() == 2:
        target = target.argmax(dim=1)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top.eq(target[:, None])
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class Meter:
    """Sums of named quantities and a sample count, for averages over an epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, n: int, **values: float) -> None:
        """Add ``values`` that are totals over ``n`` samples."""
        self.count += n
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def mean(self, key: str) -> float:
        return self.sums.get(key, 0.0) / max(self.count, 1)

    def errors(self) -> dict[str, float]:
        """Mean ``loss`` and top-1/top-5 error (%) from the sums ``loss``, ``top1``, ``top5``."""
        n = max(self.count, 1)
        return {
            "loss": self.sums.get("loss", 0.0) / n,
            "top1_err": 100.0 * (1 - self.sums.get("top1", 0.0) / n),
            "top5_err": 100.0 * (1 - self.sums.get("top5", 0.0) / n),
        }

    def reduce(self) -> Meter:
        """Sum over processes (a copy; a no-op when not distributed)."""
        keys = sorted(self.sums)
        t = torch.tensor([self.count] + [self.sums[k] for k in keys], dtype=torch.float64)
        t = all_reduce_sum(t)
        out = Meter()
        out.count = int(t[0].item())
        out.sums = {k: float(v) for k, v in zip(keys, t[1:].tolist(), strict=True)}
        return out
