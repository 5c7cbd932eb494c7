"""Seeded, class-stratified subsets, for quick runs on a part of a dataset.

Taking the first N files of a class-folder set would take one or two classes; a
stratified subset keeps every class in its proportion (largest remainders decide the
rounding), drawn at random by a seed of its own, so the same ``(N, seed)`` gives the same
images in every run whatever the training seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from .._validate import check_positive

__all__ = ["dataset_targets", "limit_dataset", "stratified_indices", "stratified_subset"]


def dataset_targets(dataset: Dataset[Any]) -> list[int]:
    """The class index of every sample, read from ``targets`` (no image is decoded)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no targets to stratify by")
    return [int(t) for t in targets]


def stratified_indices(targets: Sequence[int], n: int, *, seed: int) -> list[int]:
    """``n`` sample indices (sorted) holding every class in its share of ``targets``."""
    check_positive("n", n)
    total = len(targets)
    if n >= total:
        return list(range(total))
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    classes = sorted(by_class)
    exact = [n * len(by_class[c]) / total for c in classes]
    counts = [int(e) for e in exact]
    # Hand the remaining samples to the largest remainders (ties: the smaller class index).
    order = sorted(range(len(classes)), key=lambda k: (counts[k] - exact[k], k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    g = torch.Generator().manual_seed(seed)
    picked: list[int] = []
    for c, k in zip(classes, counts, strict=True):
        members = by_class[c]
        perm = torch.randperm(len(members), generator=g)[:k].tolist()
        picked += [members[j] for j in perm]
    return sorted(picked)


def stratified_subset(dataset: Dataset[Any], n: int, *, seed: int) -> Subset:
    """A :class:`~torch.utils.data.Subset` of ``n`` samples of ``dataset`` by
    :func:`stratified_indices`; ``targets`` of the subset are kept for later use."""
    targets = dataset_targets(dataset)
    idx = stratified_indices(targets, n, seed=seed)
    subset = Subset(dataset, idx)
    subset.targets = [targets[i] for i in idx]  # type: ignore[attr-defined]
    return subset


def limit_dataset(dataset: Dataset[Any], n: int | None, *, seed: int) -> Dataset[Any]:
    """``dataset`` itself when ``n`` is ``None`` or not smaller, else its stratified subset."""
    if not n or n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return stratified_subset(dataset, n, seed=seed)
