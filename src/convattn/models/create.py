"""``create_model``: a registered name to a model, with its attention options bound once.

``create_model("resnet50_cbam")`` is ``ResNet(Bottleneck, (3, 4, 6, 3), attn_layer="cbam")``
with the registry entry (:class:`~convattn.models.registry.ModelSpec`) kept as
``model.spec``. Options of the entry's attention (``attn={"kernel_size": 3}``) are bound
to its class here (``functools.partial``), so builders and blocks receive a factory
``f(channels) -> module`` and no dictionaries travel further.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..layers import IMPLS, get_attention, set_impl
from .registry import ModelSpec, get_model_spec
from .weights import load_checkpoint

__all__ = ["ATTN_ARGS", "create_model"]

#: Builder arguments that take an attention (in every block, or after stages).
ATTN_ARGS = ("attn_layer", "stage_attn_layer")


def _check_fixed(spec: ModelSpec, kwargs: Mapping[str, Any]) -> None:
    for key, value in kwargs.items():
        if key in spec.fixed and spec.fixed[key] != value:
            raise ValueError(
                f"{spec.name!r} fixes {key}={spec.fixed[key]!r}; got {key}={value!r}. "
                "Pick the registered name that has it, or build the class directly."
            )


def _bind_attention(spec: ModelSpec, args: dict[str, Any], options: Mapping[str, Any]) -> None:
    """Replace the entry's attention name in ``args`` by its class with ``options`` bound."""
    keys = [k for k in ATTN_ARGS if args.get(k) is not None]
    if not keys:
        raise ValueError(f"{spec.name!r} has no attention to pass options {dict(options)} to")
    for key in keys:
        args[key] = get_attention(args[key], **options)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    attn: Mapping[str, Any] | None = None,
    attn_impl: str | None = None,
    checkpoint_path: str | Path | None = None,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`~convattn.models.list_models`.
        num_classes: classifier outputs; default the entry's (1000 for ImageNet models,
            10 for CIFAR models).
        attn: options of the model's attention, e.g. ``{"kernel_size": 3}`` or
            ``{"pool_types": ["avg"], "spatial": False}`` (checked by its constructor).
        attn_impl: "auto", "eager" or "fused" for every attention module that has
            implementations (CBAM, channel attention, SE); default: as built ("auto").
        checkpoint_path: weights to load: a file (authors' CBAM checkpoint, torchvision
            state dict, convattn checkpoint or ``.safetensors``) or a URL (fetched once
            into the torch hub cache). See :func:`convattn.load_checkpoint`.
        strict: with a checkpoint, refuse missing/unexpected keys other than the
            attention layers a torchvision backbone lacks.
        **kwargs: builder arguments (e.g. ``features_only=True``, ``zero_init_last=True``).
            A keyword that the name already fixes (``resnet50_cbam`` with
            ``attn_layer="se"``) raises ``ValueError``. ``attn_kwargs`` is read as ``attn``
            (the name of earlier versions).
    """
    spec = get_model_spec(name)
    if "attn_kwargs" in kwargs:  # recipes written before ``attn`` existed
        if attn is not None:
            raise ValueError("give attn or attn_kwargs, not both")
        attn = kwargs.pop("attn_kwargs")
    _check_fixed(spec, kwargs)
    args = {**spec.fixed, **kwargs}
    if attn:
        _bind_attention(spec, args, attn)
    classes = spec.num_classes if num_classes is None else num_classes
    model = spec.builder(num_classes=classes, **args)
    if attn_impl is not None:
        if attn_impl not in IMPLS:
            raise ValueError(f"unknown attn_impl {attn_impl!r}; valid: {', '.join(IMPLS)}")
        set_impl(model, attn_impl)
    model.spec = spec  # type: ignore[assignment]
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, strict=strict)
    return model
