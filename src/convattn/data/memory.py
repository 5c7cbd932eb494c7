"""Decode a small-image class folder once into memory, cached on disk.

A 32 px JPEG can take longer to open and decode than a small network takes to train on
it, and the CPU cores are shared with the model; so images of at most
64 px are decoded once into a ``uint8`` tensor ``(N, 3, H, W)`` (CIFAR-10: 150 MB) and
saved in the cache, keyed by the folder's path and every file's name, size and
modification time: any change to the folder decodes it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .cache import atomic_write, file_lock, resolve_cache_dir
from .folders import DECODE_ERRORS, ImageFolderRGB, load_rgb
from .tensor import SkippedFile, TensorImageDataset, channel_stats

__all__ = ["decode_folder"]

log = logging.getLogger("convattn.data")
_FORMAT = 1  # bump when the cached layout changes


def _fingerprint(folder: ImageFolderRGB) -> str:
    digest = hashlib.sha256(f"{_FORMAT}\n{Path(folder.root).resolve()}\n".encode())
    digest.update("\n".join(folder.classes).encode())
    for path, target in folder.samples:
        stat = os.stat(path)
        digest.update(f"\n{path}\t{target}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _decode_one(path: str) -> np.ndarray | str:
    try:
        return np.asarray(load_rgb(path))  # (H, W, 3) uint8
    except DECODE_ERRORS as err:
        return f"failed to decode: {err}"


def _decode(folder: ImageFolderRGB, threads: int, progress: bool) -> dict[str, Any]:
    paths = [p for p, _ in folder.samples]
    images: np.ndarray | None = None
    keep = np.zeros(len(paths), dtype=bool)
    skipped = [list(s) for s in folder.skipped]
    resized = 0
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(_decode_one, paths, chunksize=256)
        desc = f"decoding {Path(folder.root).name} into memory"
        bar = tqdm(results, total=len(paths), desc=desc, disable=None if progress else True)
        for i, result in enumerate(bar):
            if isinstance(result, str):
                log.warning("skipping %s: %s", paths[i], result)
                skipped.append([paths[i], result])
                continue
            if images is None:  # the first readable image fixes the size
                images = np.empty((len(paths), *result.shape), dtype=np.uint8)
            if result.shape != images.shape[1:]:
                h, w = images.shape[1:3]
                result = np.asarray(Image.fromarray(result).resize((w, h), Image.BILINEAR))
                resized += 1
            images[i], keep[i] = result, True
    if images is None:
        raise ValueError(f"no image under {folder.root} could be decoded")
    if resized:
        log.warning("resized %d images of %s to %s", resized, folder.root, images.shape[1:3])
    pixels = torch.from_numpy(images[keep]).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    mean, std = channel_stats(pixels)
    targets = torch.as_tensor(folder.targets, dtype=torch.int64)[torch.from_numpy(keep)]
    return {"images": pixels, "targets": targets, "skipped": skipped, "mean": mean, "std": std}


def decode_folder(
    folder: ImageFolderRGB,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int = 2,
    progress: bool = True,
) -> TensorImageDataset:
    """Decode every image of ``folder`` into a :class:`TensorImageDataset` (no transform).

    Images whose size differs from the first one are resized to it (and counted in a
    log message); unreadable files are left out and listed in ``skipped``. The result is
    cached under ``<cache>/decoded/``; the channel statistics come with it.
    """
    root = Path(folder.root)
    entry = resolve_cache_dir(cache_dir) / "decoded"
    entry.mkdir(parents=True, exist_ok=True)
    entry = entry / f"{root.parent.name}-{root.name}-{_fingerprint(folder)}.pt"
    data = None
    with file_lock(entry.parent / f".{entry.stem}.lock"):
        if entry.is_file():
            try:
                data = torch.load(entry, weights_only=True)
            except (OSError, RuntimeError, EOFError) as err:  # damaged: decode again
                log.warning("ignoring damaged cache file %s (%s)", entry, err)
        if data is None:
            data = _decode(folder, threads, progress)
            atomic_write(entry, lambda p: torch.save(data, p))
    dataset = TensorImageDataset(
        data["images"],
        data["targets"],
        folder.classes,
        skipped=[SkippedFile(*s) for s in data["skipped"]],
        stats=(tuple(data["mean"]), tuple(data["std"])),
    )
    return dataset
