"""DataLoaders with seeded, epoch-dependent shuffling, one code path with and without
distributed training.

The training order of epoch ``e`` is a permutation seeded by ``seed + e`` (the
``DistributedSampler`` rule; each rank takes every ``world_size``-th index of it), so it
is the same whatever the number of workers. The sampler advances its epoch after each
pass, so calling ``set_epoch(loader, e)`` before every epoch and never calling it give
the same orders. Random augmentation inside workers is seeded from ``seed`` and the
rank; with ``workers=0`` it draws from the global torch generator (seed it yourself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .._seed import mix_seed
from .._validate import check_positive
from .mix import BatchCollate, Mix

__all__ = ["EpochSampler", "build_loader", "set_epoch"]


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that moves to the next epoch after each pass."""

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        self.epoch += 1
        return iter(order)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the loader's next pass the ``epoch``-th (0-based) shuffle."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def _batch_transform_of(dataset: Dataset) -> Callable[[torch.Tensor], torch.Tensor] | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "batch_transform", None)


def _replicas(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    if rank is None or world_size is None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group "
                "or explicit rank= and world_size="
            )
        rank, world_size = dist.get_rank(), dist.get_world_size()
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def build_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool | None = None,
    normalize: bool = True,
    mix: Mix | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader yielding ``(images, labels)`` batches ready for the model.

    Args:
        dataset: a dataset of ``(image, label)`` (e.g. from :func:`build_dataset`).
        batch_size: images per batch (per process when distributed).
        train: shuffle (seeded by ``seed`` and the epoch) and, by default, drop the last
            incomplete batch; ``False`` keeps the order and every sample.
        workers: loader processes (0 loads in the calling process); they persist
            across epochs. In-memory datasets cost little per sample, so on a machine
            with few cores ``workers=0`` is usually fastest: worker processes would
            compete with the model's threads for the same cores (BENCHMARKS.md).
        seed: seed of the shuffling and of the workers' augmentation.
        distributed: give each rank its share (rank and world size from the process
            group unless given). Evaluation shares are padded to equal length by
            repeating samples, as ``DistributedSampler`` does.
        drop_last: default ``train``.
        normalize: apply the dataset's ``batch_transform`` (``uint8 -> float32``,
            mean/std) to each batch; ``False`` yields the ``uint8`` batches.
        mix: batch mixing from :func:`convattn.data.build_mix` (training only).
        pin_memory: default: when CUDA is available.
        prefetch_factor: batches each worker prepares ahead (torch default 2).
    """
    check_positive("batch_size", batch_size)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    if mix is not None and not train:
        raise ValueError("mix (mixup/cutmix) is for training loaders only; pass train=True")
    rank, world_size = _replicas(distributed, rank, world_size)
    drop_last = train if drop_last is None else drop_last
    sampler = None
    if train or distributed:
        sampler = EpochSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=train,
            seed=seed,
            drop_last=drop_last and distributed,
        )
    generator = torch.Generator().manual_seed(mix_seed(seed, 0, rank) % 2**63)
    collate = BatchCollate(_batch_transform_of(dataset) if normalize else None, mix)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        generator=generator,
    )
