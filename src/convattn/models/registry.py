"""The model registry: names -> builders with the arguments each name fixes.

``create_model("resnet50_cbam")`` is ``ResNet(Bottleneck, (3, 4, 6, 3), attn_layer="cbam")``
plus the metadata of its registry entry (default input size, normalisation, and the
paper's parameter count and GFLOPs where it gives them).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    _ensure_zoo()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; an unknown name raises with the closest names."""
    _ensure_zoo()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see convattn.list_models())")
    return _REGISTRY[name]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    checkpoint_path: str | Path | None = None,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs; default the entry's (1000 for ImageNet models,
            10 for CIFAR models).
        checkpoint_path: weights to load: a file (authors' CBAM checkpoint, torchvision
            state dict, convattn checkpoint or ``.safetensors``) or a URL (fetched once
            into the torch hub cache). See :func:`convattn.load_checkpoint`.
        strict: with a checkpoint, refuse missing/unexpected keys other than the
            attention layers a torchvision backbone lacks.
        **kwargs: builder arguments (e.g. ``attn_kwargs={"kernel_size": 3}``,
            ``features_only=True``, ``zero_init_last=True``). A keyword that the name
            already fixes (``resnet50_cbam`` with ``attn_layer="se"``) raises ``ValueError``.
    """
    spec = get_model_spec(name)
    for key, value in kwargs.items():
        if key in spec.fixed and spec.fixed[key] != value:
            raise ValueError(
                f"{name!r} fixes {key}={spec.fixed[key]!r}; got {key}={value!r}. "
                "Pick the registered name that has it, or build the class directly."
            )
    args = {**spec.fixed, **kwargs}
    model = spec.builder(
        num_classes=spec.num_classes if num_classes is None else num_classes, **args
    )
    model.pretrained_cfg = spec  # type: ignore[assignment]
    if checkpoint_path is not None:
        from .weights import load_checkpoint

        load_checkpoint(model, checkpoint_path, strict=strict)
    return model


def _ensure_zoo() -> None:
    from . import zoo  # noqa: F401  (importing registers the models)
