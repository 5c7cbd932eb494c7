"""Per-channel normalisation statistics of the datasets the models are trained on, on the
[0, 1] scale (the one home of these numbers: data transforms and model metadata read them)."""

from __future__ import annotations

__all__ = ["CIFAR10_STATS", "CIFAR100_STATS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: (mean, std) of the training images.
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
