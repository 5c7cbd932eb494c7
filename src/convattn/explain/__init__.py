"""Where a network looks: Grad-CAM, Grad-CAM++, attention maps and localisation scores.

Papers: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, https://arxiv.org/abs/1610.02391; Chattopadhay
et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
Convolutional Networks", WACV 2018, https://arxiv.org/abs/1710.11063. The CBAM paper's
Figure 4 shows Grad-CAM at the last stage with the target's softmax probability, which
is what :class:`GradCAM` returns by default.

For an image, A (K, h, w) is the target layer's activation, S^c the logit of class c
(before the softmax) and g = dS^c/dA:

- Grad-CAM (Eq. (1)-(2)): ``w_k = mean_ij g_kij``, ``L = ReLU(sum_k w_k A_k)``.
- Grad-CAM++ (the paper's closed form for the exponential score ``Y^c = exp(S^c)``, whose higher
  derivatives are powers of g for a network piecewise linear in A):
  ``alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)`` (0 where the denominator
  is 0), ``w_k = sum_ij alpha_kij relu(g_kij)``, ``L = ReLU(sum_k w_k A_k)``. The paper
  writes ``relu(dY^c/dA) = exp(S^c) relu(g)``; the factor exp(S^c) is the same for the
  whole map and is left out (it cancels in the [0, 1] scaling; ``CamResult.raw`` is
  without it).

Conventions (the same for both):

- One forward and one backward per batch: the gradient of the sum of the N target
  logits, each image's own in evaluation mode (the default; BatchNorm in training mode
  couples the images). Targets default to each image's predicted class (the argmax).
- L is upsampled to the input's H x W bilinearly (``align_corners=False``), then scaled
  per image to [0, 1] by ``(L - min) / (max - min)``; a flat map becomes all zeros.
- The target layer defaults to the model's last stage (``stage_names``/``feature_info``
  of convattn and timm models, ``layer4`` of torchvision ResNets, with or without
  :func:`convattn.add_attention`); any module can be named by its dotted path.
- Nothing of the model changes: one forward hook while in the ``with`` block, every
  module's mode and buffers restored, gradients taken with respect to A only (no
  ``requires_grad`` flag or ``.grad`` is touched, and frozen models work). A hook on a
  stage or a block leaves the fused kernels' path as it was; a hook on a module inside a
  block's fused tail (its last BatchNorm, attention or ReLU) makes that block run the
  eager composition, the same math up to float rounding.

:func:`capture_attention` reads every CBAM's channel and spatial gates and every BAM's
branches (:class:`AttentionMaps`). :func:`pointing_game`, :func:`energy_in_box` and
:func:`localization_scores` score maps against object boxes, e.g.
:attr:`convattn.data.SyntheticShapes.boxes`.
"""

from ._target import default_target_layer
from .capture import AttentionCapture, AttentionMaps, capture_attention
from .gradcam import CamResult, GradCAM, GradCAMPlusPlus, normalize_maps
from .localization import (
    LocalizationScores,
    box_mask,
    energy_in_box,
    localization_scores,
    pointing_game,
)

__all__ = [
    "AttentionCapture",
    "AttentionMaps",
    "CamResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "LocalizationScores",
    "box_mask",
    "capture_attention",
    "default_target_layer",
    "energy_in_box",
    "localization_scores",
    "normalize_maps",
    "pointing_game",
]
