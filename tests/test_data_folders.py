"""Class-folder datasets: RGB whatever the file's mode, broken files reported and skipped
(also from loader workers), one clear error for missing or empty folders, decoding into
memory once, and CIFAR in torchvision's format."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import cifar as tv_cifar

from convattn.data import (
    DatasetNotFoundError,
    ImageFolderRGB,
    build_dataset,
    decode_folder,
    find_dataset_root,
    load_cifar,
    load_rgb,
)
from convattn.data import memory as memory_mod
from data_trees import make_tree, noise


def test_every_image_is_rgb_and_broken_files_are_reported_with_their_path(tmp_path, caplog):
    files = make_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="convattn.data"):
        ds = ImageFolderRGB(tmp_path / "train")
    assert ds.classes == ["cat", "dog"]
    assert [s.path for s in ds.skipped] == [str(files["corrupt"])]
    assert str(files["corrupt"]) in caplog.text
    paths = [p for p, _ in ds.samples]
    for name in ("grey", "palette", "cmyk"):
        image, _ = ds[paths.index(str(files[name]))]
        assert image.mode == "RGB" and image.size == (12, 12)
    bad = paths.index(str(files["truncated"]))
    with caplog.at_level(logging.WARNING, logger="convattn.data"):
        image, label = ds[bad]  # the next readable sample stands in
    assert image.mode == "RGB" and label == ds.samples[(bad + 1) % len(ds)][1]
    assert str(files["truncated"]) in caplog.text
    assert ds.num_skipped == 2
    assert {s.path for s in ds.skipped} == {str(files["corrupt"]), str(files["truncated"])}


def _count(batch):
    return len(batch)


def test_files_failing_in_a_worker_process_are_counted_in_the_main_process(tmp_path):
    files = make_tree(tmp_path)
    ds = ImageFolderRGB(tmp_path / "train", check_files=False)
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=_count)
    assert sum(loader) == len(ds)  # every index still yields a sample
    assert {s.path for s in ds.skipped} == {str(files["corrupt"]), str(files["truncated"])}


def test_missing_or_empty_folders_raise_one_error_naming_path_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nowhere.*\{train,val\}/<class>"):
        build_dataset(str(tmp_path / "nowhere"), "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"no class folders in .*empty.*<class>"):
        build_dataset(str(tmp_path / "empty"), "train")
    (tmp_path / "empty" / "train" / "cat").mkdir()
    (tmp_path / "empty" / "train" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match=r"no images in .*empty.*<class>"):
        build_dataset(str(tmp_path / "empty"), "train")
    with pytest.raises(DatasetNotFoundError, match=r"no val or test folder"):
        build_dataset(str(tmp_path / "empty"), "val")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no train/val/test folder"):
        find_dataset_root(tmp_path / "flat")


def test_a_wrapping_folder_and_a_test_split_are_accepted_and_labels_follow_train(tmp_path):
    make_tree(tmp_path / "wrap" / "cifar")
    (tmp_path / "wrap" / "cifar" / "val").rename(tmp_path / "wrap" / "cifar" / "test")
    for f in (tmp_path / "wrap" / "cifar" / "test" / "cat").iterdir():
        f.unlink()
    (tmp_path / "wrap" / "cifar" / "test" / "cat").rmdir()  # val has dogs only
    ds, info = build_dataset(str(tmp_path / "wrap"), "val", in_memory=False)
    assert info.classes == ("cat", "dog") and set(ds.targets) == {1}


def test_small_images_are_decoded_once_into_memory_with_train_statistics(tmp_path):
    make_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    train, info = build_dataset(str(tmp_path / "data"), "train", cache_dir=cache)
    assert info.kind == "cifar" and info.in_memory and info.img_size == 12
    assert info.num_skipped == 2 and train.num_skipped == 2
    folder = ImageFolderRGB(tmp_path / "data" / "train")
    good = [(p, t) for p, t in folder.samples if "truncated" not in p]
    assert train.images.shape == (len(good), 3, 12, 12)
    for i in (0, len(good) - 1):  # PNGs are lossless: same pixels as a direct decode
        if good[i][0].endswith(".png"):
            direct = torch.from_numpy(np.array(load_rgb(good[i][0]))).permute(2, 0, 1)
            assert torch.equal(train.images[i], direct)
    assert train.targets.tolist() == [t for _, t in good]
    val, val_info = build_dataset(str(tmp_path / "data"), "val", cache_dir=cache)
    assert val_info.mean == info.mean and val_info.std == info.std
    assert len(val) == 4


def test_the_decoded_cache_is_reused_until_the_folder_changes(tmp_path, monkeypatch):
    make_tree(tmp_path / "data")
    folder = ImageFolderRGB(tmp_path / "data" / "val")
    first = decode_folder(folder, cache_dir=tmp_path / "cache", progress=False)
    real = memory_mod._decode
    monkeypatch.setattr(memory_mod, "_decode", lambda *a: pytest.fail("decoded again"))
    again = decode_folder(folder, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(first.images, again.images)
    Image.fromarray(noise(12, 1234)).save(tmp_path / "data" / "val" / "cat" / "0.png")
    calls = []
    monkeypatch.setattr(memory_mod, "_decode", lambda *a: calls.append(1) or real(*a))
    changed = decode_folder(folder, cache_dir=tmp_path / "cache", progress=False)
    assert calls and not torch.equal(first.images, changed.images)


def test_large_images_are_decoded_per_sample(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(noise(80, 3)).save(tmp_path / split / cls / "x.jpg")
    ds, info = build_dataset(str(tmp_path), "train", img_size=32)
    assert info.kind == "imagenet-like" and not info.in_memory and info.default_img_size == 224
    image, label = ds[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 1


def _fake_cifar10(root: Path) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    planar = rng.integers(0, 256, (6, 2, 3 * 32 * 32), dtype=np.uint8)  # R plane, G, B
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name, data in zip(names, planar, strict=True):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [3, 7]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return planar


def test_cifar_in_torchvision_format_keeps_channels_and_labels(tmp_path, monkeypatch):
    planar = _fake_cifar10(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a: True)  # fake files, no md5s
    ds = load_cifar("cifar10", "val", tmp_path)
    assert ds.images.shape == (2, 3, 32, 32) and ds.targets.tolist() == [3, 7]
    assert torch.equal(ds.images[1, 2].flatten(), torch.from_numpy(planar[5, 1, 2048:]))
    train, info = build_dataset("cifar10", "train", root=tmp_path)
    assert len(train) == 10 and info.kind == "cifar" and info.mean[0] == pytest.approx(0.4914)


def test_missing_cifar_names_the_expected_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-100-python.*download=True"):
        build_dataset("cifar100", "train", root=tmp_path)
