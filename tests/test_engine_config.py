"""Recipes, overrides and strict keys; the optimiser and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from convattn.engine.config import RECIPES, Config
from convattn.engine.optim import build_optimizer, build_scheduler, lr_factor
from convattn.engine.recipes import load_config


def test_every_packaged_recipe_loads():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"imagenet", "cifar10", "demo", "resnest", "imagenette"} <= set(names)
    for name in names:
        assert isinstance(load_config(name), Config)


def test_a_missing_recipe_or_grid_names_itself_and_lists_the_packaged_ones(tmp_path):
    from convattn.sweep import grid_path

    with pytest.raises(FileNotFoundError) as e:
        load_config(tmp_path / "cifar11.yaml")
    assert str(e.value).startswith(f"recipe file not found: {tmp_path / 'cifar11.yaml'} (")
    assert "(packaged recipes, named without a folder: cifar10, cifar10_quick," in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"grid file not found: tabel4 \(.*table4_cifar"):
        grid_path("tabel4")
    assert load_config("cifar10.yaml").schedule.epochs == load_config("cifar10").schedule.epochs


def test_paper_recipe_values():
    cfg = load_config("imagenet")
    assert (cfg.data.batch_size, cfg.lr, cfg.optim.momentum) == (256, 0.1, 0.9)
    assert cfg.optim.weight_decay == 1e-4
    assert (cfg.schedule.kind, cfg.schedule.step_epochs, cfg.schedule.epochs) == ("step", 30, 90)


def test_misspelled_key_names_key_and_suggests(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  weight_decy: 0.1\n")
    with pytest.raises(
        ValueError, match=r"unknown config key optim\.'weight_decy'.*'weight_decay'"
    ):
        load_config(f)
    with pytest.raises(ValueError, match="unknown config key 'modle'"):
        load_config(None, {"modle": "resnet18"})
    with pytest.raises(ValueError, match=r"data\.batch_size must be int"):
        load_config(None, {"data.batch_size": "many"})


def test_values_are_converted_to_field_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "optim:\n  weight_decay: 1e-4\nrun:\n  channels_last: 'yes'\nschedule:\n  milestones: 3,6\n"
    )
    cfg = load_config(f, {"data.batch_size": "64", "optim.lr": "none"})
    assert cfg.optim.weight_decay == 1e-4 and isinstance(cfg.optim.weight_decay, float)
    assert cfg.run.channels_last is True and cfg.data.batch_size == 64 and cfg.optim.lr is None
    assert cfg.schedule.milestones == [3, 6]


def test_lr_scales_with_batch_size():
    assert load_config(None, {"data.batch_size": 512}).lr == pytest.approx(0.2)
    assert load_config(None, {"data.batch_size": 64}).lr == pytest.approx(0.025)
    assert load_config(None, {"data.batch_size": 64, "optim.lr": 0.3}).lr == 0.3


def test_step_schedule_decays_tenfold_every_30_epochs():
    cfg = load_config("imagenet")
    spe = 100  # steps per epoch
    for epoch, factor in [(0, 1.0), (29.99, 1.0), (30, 0.1), (59, 0.1), (60, 0.01), (89, 0.01)]:
        assert lr_factor(round(epoch * spe), spe, cfg) == pytest.approx(factor)


def test_milestones_and_cosine_with_warmup():
    cfg = load_config("cifar10")
    assert lr_factor(81 * 10, 10, cfg) == 1.0 and lr_factor(82 * 10, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(123 * 10, 10, cfg) == pytest.approx(0.01)
    cos = load_config(
        None, {"schedule.kind": "cosine", "schedule.epochs": 10, "schedule.warmup_epochs": 2}
    )
    assert lr_factor(0, 10, cos) == pytest.approx(0.1 / 2)  # (0 + 1/10) / 2 epochs
    assert lr_factor(20, 10, cos) == pytest.approx(1.0)  # end of warm-up
    assert lr_factor(60, 10, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 10, cos) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_drives_the_optimizer_and_no_decay_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    cfg = load_config(
        None, {"optim.lr": 0.4, "optim.no_decay_bn_bias": True, "schedule.step_epochs": 1}
    )
    opt = build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert len(opt.param_groups[1]["params"]) == 3  # conv bias, BN weight, BN bias
    sched = build_scheduler(opt, steps_per_epoch=2, cfg=cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.4, 0.4, 0.04, 0.04])
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(opt, 2, load_config(None, {"schedule.kind": "linear"}))
