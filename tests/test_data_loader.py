"""Loaders: seeded epoch-dependent order (same with or without set_epoch, with or without
workers), distributed shares that cover the dataset, normalised float batches."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, Subset

from convattn.data import build_dataset, build_loader, build_mix, set_epoch


class Indices(Dataset):
    """Sample i is (i, i): the batches spell out the order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor(i), i


def _order(loader) -> list[int]:
    return [i for _, labels in loader for i in labels.tolist()]


def test_order_is_fixed_by_seed_and_epoch():
    a = build_loader(Indices(50), 8, train=True, seed=1)
    b = build_loader(Indices(50), 8, train=True, seed=1)
    first, second = _order(a), _order(a)  # the sampler advances its epoch by itself
    assert first != second and len(set(first)) == len(first) == 48  # last batch dropped
    set_epoch(b, 1)
    assert _order(b) == second
    set_epoch(b, 0)
    assert _order(b) == first
    assert _order(build_loader(Indices(50), 8, train=True, seed=2)) != first


def test_order_does_not_depend_on_the_number_of_workers():
    plain = build_loader(Indices(40), 8, train=True, seed=3)
    workers = build_loader(Indices(40), 8, train=True, seed=3, workers=1)
    assert _order(plain) == _order(workers)


def test_evaluation_keeps_the_order_and_every_sample():
    assert _order(build_loader(Indices(21), 8, train=False)) == list(range(21))


@pytest.mark.parametrize("train", [True, False])
def test_distributed_shares_cover_the_dataset(train):
    n, world = 23, 3
    shares = [
        _order(
            build_loader(
                Indices(n), 2, train=train, distributed=True, rank=r, world_size=world,
                drop_last=False, seed=5,
            )
        )
        for r in range(world)
    ]  # fmt: skip
    assert len({len(s) for s in shares}) == 1  # equal shares (padded by repetition)
    assert set().union(*shares) == set(range(n))
    assert sum(len(s) for s in shares) == n + (-n % world)


def test_distributed_without_a_process_group_asks_for_rank_and_world_size():
    with pytest.raises(ValueError, match="world_size"):
        build_loader(Indices(4), 2, train=True, distributed=True)
    with pytest.raises(ValueError, match="rank"):
        build_loader(Indices(4), 2, train=True, distributed=True, rank=2, world_size=2)


def test_batches_are_normalised_floats_unless_asked_otherwise():
    ds, _ = build_dataset("synthetic:train=64", "train")
    images, labels = next(iter(build_loader(ds, 32, train=True)))
    assert images.dtype == torch.float32 and images.shape == (32, 3, 32, 32)
    assert labels.dtype == torch.int64
    assert -0.5 < images.mean().item() < 0.5 and 0.7 < images.std().item() < 1.3
    raw, _ = next(iter(build_loader(Subset(ds, range(16)), 8, train=False, normalize=False)))
    assert raw.dtype == torch.uint8
    sub, _ = next(iter(build_loader(Subset(ds, range(16)), 8, train=False)))
    assert sub.dtype == torch.float32  # the batch transform is found through Subset


def test_mixing_belongs_to_training_loaders():
    ds, info = build_dataset("synthetic:train=32", "train")
    mix = build_mix(info.num_classes, cutmix_alpha=1.0)
    _, labels = next(iter(build_loader(ds, 16, train=True, mix=mix)))
    assert labels.shape == (16, 10)
    with pytest.raises(ValueError, match="training"):
        build_loader(ds, 16, train=False, mix=mix)
    with pytest.raises(ValueError, match="workers"):
        build_loader(ds, 16, train=True, workers=-1)
