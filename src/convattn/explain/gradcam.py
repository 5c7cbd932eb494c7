"""Grad-CAM and Grad-CAM++: class activation maps from a layer's activations and gradients.

Both methods weight the K channels of the target layer's activation A (N, K, h, w) by
weights w (N, K) computed from A and the gradient g = dS^c / dA of the target class's
score S^c (the logit, before the softmax), then take ``ReLU(sum_k w_k A_k)``; the two
classes differ only in :meth:`GradCAM.channel_weights`. The formulas and the conventions
(upsampling, normalisation, one forward and one backward per batch) are in the package
docstring, :mod:`convattn.explain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ._state import preserved_state
from ._target import resolve_layer

__all__ = ["CamResult", "GradCAM", "GradCAMPlusPlus", "check_images", "normalize_maps"]

Targets = torch.Tensor | Sequence[int] | int | None


@dataclass(frozen=True)
class CamResult:
    """The maps of one batch (every tensor detached).

    Attributes:
        cams: (N, H, W) at the input's size, each image's map scaled to [0, 1].
        raw: (N, h, w) ``ReLU(sum_k w_k A_k)`` at the target layer's size, not scaled.
        targets: (N,) the explained class of each image.
        probs: (N,) the softmax probability of each image's target class.
        logits: (N, num_classes) the model's output.
    """

    cams: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor


def check_images(images: torch.Tensor) -> torch.Tensor:
    """``images`` if it is a non-empty (N, C, H, W) tensor, else ``ValueError``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a batch (N, C, H, W), N >= 1, got {tuple(images.shape)}")
    return images


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of (N, ...) to [0, 1]: ``(m - min) / (max - min)``; a flat map
    (max == min, e.g. all zero) becomes all zeros, never NaN."""
    flat = maps.flatten(1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    low = flat.amin(dim=1).reshape(shape)
    span = flat.amax(dim=1).reshape(shape) - low
    scaled = (maps - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled))


def _as_targets(targets: Targets, n: int, device: torch.device) -> torch.Tensor | None:
    """``targets`` as an (N,) int64 tensor (``None`` stays ``None``: the predicted class)."""
    if targets is None:
        return None
    t = torch.as_tensor(targets, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.long()
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"targets must hold one class per image ({n}), got {tuple(t.shape)}")
    return t


class GradCAM:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of ``model`` at ``target_layer``.

    Use as a context manager: entering registers one forward hook on the target layer,
    leaving removes it (after an exception too). The hook acts only during this object's
    own calls; other forwards inside the block run untouched. Each call runs one forward
    and one backward for the whole batch and leaves the model as it found it: modes,
    buffers, parameters and their ``requires_grad`` flags and ``.grad`` (gradients are
    taken with respect to the activation only). A call outside a ``with`` block registers
    and removes the hook around itself.

    Args:
        model: a classifier returning logits (N, num_classes).
        target_layer: a dotted module path (``"layer4"``, ``"layer3.1"``), a submodule, or
            ``None`` for the last stage (see :func:`default_target_layer`). Its output
            must be an (N, K, h, w) tensor, produced once per forward.
        eval_mode: run the forward in evaluation mode (default). ``False`` keeps the
            model's own modes; in training mode BatchNorm then uses the batch's
            statistics, which couples the images of the batch (their running averages
            are restored afterwards).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module | None = None,
        *,
        eval_mode: bool = True,
    ) -> None:
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, target_layer)
        self.eval_mode = eval_mode
        self._handle: RemovableHandle | None = None
        self._recorded: list[torch.Tensor] | None = None

    def __enter__(self) -> GradCAM:
        if self._handle is not None:
            raise RuntimeError(f"{type(self).__name__} is already active (nested 'with')")
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, inputs: tuple, output: object) -> torch.Tensor | None:
        if self._recorded is None:  # someone else's forward
            return None
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            name = self.layer_name
            raise ValueError(f"target layer {name!r} must output (N, K, h, w), got {got}")
        # A leaf that requires grad: the gradient exists even for a frozen model, and the
        # backward stops here. The network goes on with an exact copy, so that in-place
        # operations after the layer (``out += shortcut``) cannot change the saved A.
        leaf = output.detach().requires_grad_(True)
        self._recorded.append(leaf)
        return leaf.clone()

    @staticmethod
    def channel_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Grad-CAM's weights: the gradient averaged over positions, (N, K, h, w) -> (N, K)."""
        return grads.mean(dim=(2, 3))

    def __call__(self, images: torch.Tensor, targets: Targets = None) -> CamResult:
        """The maps of ``images`` (N, C, H, W) for ``targets`` (N class indices, one index
        for all, or ``None`` for each image's predicted class)."""
        images = check_images(images)
        wanted = _as_targets(targets, images.shape[0], images.device)
        if self._handle is None:
            with self:
                return self(images, wanted)
        with preserved_state(self.model, eval_mode=self.eval_mode), torch.enable_grad():
            acts, logits = self._forward(images)
            chosen = self._check_range(wanted, logits)
            score = logits.gather(1, chosen[:, None]).sum()  # images are independent
            (grads,) = torch.autograd.grad(score, acts)
        return self._result(acts.detach(), grads, logits.detach(), chosen, images.shape[-2:])

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward with the hook recording: (A, logits)."""
        self._recorded = []
        try:
            logits = self.model(images)
        finally:
            recorded, self._recorded = self._recorded, None
        if len(recorded) != 1:
            raise ValueError(
                f"target layer {self.layer_name!r} ran {len(recorded)} times in one forward; "
                "Grad-CAM needs exactly one"
            )
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(f"the model must return logits (N, num_classes), got {got}")
        if not logits.requires_grad:
            raise ValueError(f"the logits do not depend on target layer {self.layer_name!r}")
        return recorded[0], logits

    @staticmethod
    def _check_range(targets: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        if targets is None:
            return logits.detach().argmax(dim=1)
        k = logits.shape[1]
        if bool(((targets < 0) | (targets >= k)).any()):
            raise ValueError(f"targets must be classes in [0, {k}), got {targets.tolist()}")
        return targets

    def _result(
        self,
        acts: torch.Tensor,
        grads: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        size: torch.Size,
    ) -> CamResult:
        weights = self.channel_weights(acts, grads)  # (N, K)
        raw = torch.relu(torch.einsum("nk,nkhw->nhw", weights, acts))  # (N, h, w)
        up = F.interpolate(raw[:, None], size=tuple(size), mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1).gather(1, targets[:, None])[:, 0]
        return CamResult(normalize_maps(up[:, 0]), raw, targets, probs, logits)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): :class:`GradCAM` with the paper's
    weights in their closed form for the exponential score (see :mod:`convattn.explain`)."""

    @staticmethod
    def channel_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``sum_ij alpha_kij relu(g_kij)`` with ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)``
        (0 where the denominator is 0), (N, K, h, w) -> (N, K)."""
        g2 = grads.square()
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads
        nonzero = denom != 0
        alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, 1.0), 0.0)
        return (alpha * grads.clamp_min(0)).sum(dim=(2, 3))
