"""``data.limit_train`` / ``limit_val``: seeded subsets that keep every class in its share."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from convattn.data.subset import stratified_indices
from convattn.engine.distributed import DistInfo
from convattn.engine.recipes import load_config
from convattn.engine.setup import build_data


def test_shares_are_rounded_by_largest_remainder():
    # 10 samples: 6 of class 0, 3 of class 1, 1 of class 2. Five of them: exact shares
    # 3, 1.5 and 0.5; the floors 3, 1, 0 leave one sample for the largest remainder,
    # a tie of 0.5 that goes to the smaller class index, class 1.
    targets = [0] * 6 + [1] * 3 + [2]
    picked = stratified_indices(targets, 5, seed=0)
    assert Counter(targets[i] for i in picked) == {0: 3, 1: 2}
    assert picked == sorted(set(picked)) and len(picked) == 5


def test_the_same_seed_picks_the_same_samples_and_another_seed_others():
    targets = [i % 4 for i in range(400)]
    a, b = stratified_indices(targets, 40, seed=3), stratified_indices(targets, 40, seed=3)
    assert a == b and a != stratified_indices(targets, 40, seed=4)
    assert Counter(targets[i] for i in a) == {0: 10, 1: 10, 2: 10, 3: 10}


def test_asking_for_as_many_as_there_are_keeps_everything():
    assert stratified_indices([1, 0, 1], 5, seed=0) == [0, 1, 2]
    with pytest.raises(ValueError, match="n must be >= 1"):
        stratified_indices([0, 1], 0, seed=0)


def _tree(root, classes=4, per_class=8):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_limits_on_a_class_folder_tree_take_every_class_and_say_so(tmp_path, caplog):
    # The first 8 files in sorted order would be class c0 alone.
    _tree(tmp_path / "data")
    over = {
        "data.path": str(tmp_path / "data"),
        "data.limit_train": 8,
        "data.limit_val": 4,
        "data.batch_size": 4,
        "data.workers": 0,
        "data.cache_dir": str(tmp_path / "cache"),
    }
    caplog.set_level(logging.INFO, logger="convattn")
    data = build_data(load_config(None, over), DistInfo(), progress=False)
    assert Counter(data.train.dataset.targets) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert Counter(data.val.dataset.targets) == {0: 1, 1: 1, 2: 1, 3: 1}
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "training: a subset of 8 of 32 images, 4 of 4 classes (seed 0)" in messages
    assert "validation: a subset of 4 of 32 images, 4 of 4 classes (seed 0)" in messages
