"""Finding the layer to explain: by dotted path, by module, or the model's last stage."""

from __future__ import annotations

import difflib
import re

from torch import nn

__all__ = ["default_target_layer", "resolve_layer"]

_STAGE = re.compile(r"layer(\d+)")


def default_target_layer(model: nn.Module) -> str:
    """The dotted path of ``model``'s last stage, whose output Grad-CAM explains by default.

    convattn backbones name their stages (``stage_names``, from ``feature_info``); timm
    models list them in ``feature_info`` (dictionaries with a ``"module"`` key); for other
    ResNets (torchvision) it is the top-level child ``layer<i>`` with the largest ``i``.
    """
    names = getattr(model, "stage_names", None)
    if isinstance(names, list | tuple) and names:
        return str(names[-1])
    info = getattr(model, "feature_info", None)
    if isinstance(info, list | tuple) and info:
        last = info[-1]
        module = last.get("module") if isinstance(last, dict) else getattr(last, "module", None)
        if isinstance(module, str) and module:
            return module
    stages = [(int(m[1]), n) for n, _ in model.named_children() if (m := _STAGE.fullmatch(n))]
    if stages:
        return max(stages)[1]
    raise ValueError(
        f"cannot find the last stage of {type(model).__name__}; pass target_layer "
        "(a dotted module path such as 'features.7')"
    )


def resolve_layer(model: nn.Module, target: str | nn.Module | None) -> tuple[str, nn.Module]:
    """``(dotted path, module)`` of ``target`` in ``model`` (``None``: the last stage)."""
    modules = dict(model.named_modules())
    if isinstance(target, nn.Module):
        for name, module in modules.items():
            if module is target:
                return name, module
        raise ValueError(f"target layer {type(target).__name__} is not a submodule of the model")
    path = default_target_layer(model) if target is None else target
    if not isinstance(path, str):
        raise TypeError(f"target_layer must be a str, a module or None, got {type(path).__name__}")
    if path not in modules:
        close = difflib.get_close_matches(path, [n for n in modules if n], n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"no layer {path!r} in {type(model).__name__}{hint}")
    return path, modules[path]
