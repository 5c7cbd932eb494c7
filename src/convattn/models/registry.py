"""The model registry: names -> builders with the arguments each name fixes.

An entry (:class:`ModelSpec`) holds the builder, the arguments its name fixes and the
metadata of the model (default input size, normalisation, and the paper's parameter
count and GFLOPs where it gives them). :mod:`convattn.models.zoo` fills the registry and
:func:`convattn.models.create_model` builds from it; this module depends on neither.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ModelSpec", "get_model_spec", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    Attributes:
        name: registered name.
        builder: class or function that builds the model.
        fixed: keyword arguments the name fixes (a conflicting keyword is an error).
        input_size: default (C, H, W).
        mean, std: input normalisation.
        num_classes: default number of classes.
        paper_params_m: parameters in millions as printed in the paper (1000 classes).
        paper_gflops: the paper's GFLOPs (multiply-accumulates; see ``convattn.profile``).
        paper_layout: builder arguments of the layout the paper's GFLOPs count (ResNet and
            ResNeXt bottlenecks: the stride in the first 1x1 convolution).
        paper_top1_err, paper_top5_err: the paper's ImageNet errors (%), where given.
        source: where the paper figures come from.
    """

    name: str
    builder: Callable[..., nn.Module]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    paper_layout: Mapping[str, Any] = field(default_factory=dict)
    paper_top1_err: float | None = None
    paper_top5_err: float | None = None
    source: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern`` (e.g. ``"*cbam"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; an unknown name raises with the closest names."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see convattn.list_models())")
    return _REGISTRY[name]
