"""build_dataset: names, options and paths to datasets with the right transforms and info."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from convattn.data import DatasetInfo, SyntheticShapes, build_dataset, find_data
from data_trees import make_tree


def test_synthetic_info_and_options():
    ds, info = build_dataset("synthetic:train=40,val=30,seed=4,clutter=2,noise=0.0", "val")
    assert isinstance(ds, SyntheticShapes) and len(ds) == 30 and ds.seed == 4
    assert info == DatasetInfo(
        name="synthetic",
        kind="synthetic",
        num_classes=10,
        classes=tuple(ds.classes),
        mean=info.mean,
        std=info.std,
        img_size=32,
        default_img_size=32,
        num_skipped=0,
        in_memory=True,
    )
    assert ds.boxes.shape == (30, 4)
    big, big_info = build_dataset("synthetic:train=20", "train", img_size=64)
    assert big.images.shape == (20, 3, 64, 64) and big_info.img_size == 64


def test_validation_images_are_not_augmented_and_training_images_are():
    val, _ = build_dataset("synthetic:val=10", "val")
    assert torch.equal(val[3][0], val.images[3])
    torch.manual_seed(0)
    train, _ = build_dataset("synthetic:train=10", "train")
    assert any(not torch.equal(train[i][0], train.images[i]) for i in range(10))
    fixed, _ = build_dataset("synthetic:train=10", "train", augment="none")
    assert all(torch.equal(fixed[i][0], fixed.images[i]) for i in range(10))


def test_an_archive_path_is_extracted_and_read_as_folders(tmp_path):
    make_tree(tmp_path / "src" / "pets")
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pets", arcname="pets")
    ds, info = build_dataset(archive, "train", cache_dir=tmp_path / "cache", progress=False)
    assert info.name == "pets" and info.classes == ("cat", "dog") and info.num_skipped == 2
    image, _ = ds[0]
    assert image.shape == (3, 12, 12) and image.dtype == torch.uint8


def test_a_relative_path_missing_here_is_looked_up_in_convattn_data(tmp_path, monkeypatch):
    make_tree(tmp_path / "store" / "pets")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVATTN_DATA", str(tmp_path / "store"))
    assert find_data("pets") == tmp_path / "store" / "pets"
    _, info = build_dataset("pets", "train", cache_dir=tmp_path / "cache", progress=False)
    assert info.classes == ("cat", "dog")
    (tmp_path / "pets").mkdir()  # a path that exists as given wins
    assert find_data("pets") == Path("pets")
    assert find_data(tmp_path / "nowhere") == tmp_path / "nowhere"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"data": "imagenet"}, "valid: 'synthetic"),
        ({"data": "synthetic:size=3"}, "valid: train, val, seed, clutter, noise"),
        ({"data": "synthetic:train=many"}, "not a number"),
        ({"data": "synthetic", "split": "dev"}, "'train', 'val', 'test'"),
        ({"data": "synthetic", "augment": "heavy"}, "'default', 'imagenet', 'cifar', 'none'"),
        ({"data": "synthetic", "auto_augment": "v2"}, "'imagenet', 'cifar10'"),
    ],
)
def test_bad_arguments_name_the_valid_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(**{"split": "train", **kwargs})
