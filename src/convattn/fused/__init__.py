"""Fused CPU kernels for CBAM and its channel gate (SE included), optionally with the
residual block around it: the last BatchNorm before it and the residual addition and ReLU
after it; on CUDA, Triton kernels for CBAM and SE (:mod:`.triton`, which says what they
cover).

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521. The math is that of :mod:`convattn.layers`; only the
schedule differs: the C++ kernels in ``csrc/`` (built on first use by :mod:`.build`) move
2 reads and 1 write of input-sized tensors forward and 3 reads and 1 write backward,
blocked per sample so that repeated reads of a sample come from cache (training mode; in
evaluation mode 1 + 1 and 2 + 1), and save for backward only ``x`` and tensors of size N*C
or N*H*W (gates, pooled vectors and maps, argmax indices, the spatial logits). Plan of
passes: ``csrc/fused_cbam.cpp``.

The wing's parts: :mod:`.build` (compile and load the extension), :mod:`.ops` (the
operators with named arguments, fake kernels and autograd), :mod:`.dispatch` (when the
kernels run, ``impl="auto"``, BatchNorm bookkeeping) and :mod:`.tail` (the residual block's
tail, :func:`residual_tail`). Importing this package registers :func:`run_fused` at the
layers' one hook point (:mod:`convattn.layers._accel`), so ``CBAM(impl="auto")`` and
``"fused"`` try the kernels first.

Covered (CPU; CUDA tensors go to :mod:`.triton` instead): float32/float64 input, contiguous
or channels_last (the output keeps the format), pools any non-empty subset of {avg, max},
"avgmax" spatial pooling with or without BatchNorm, any odd kernel size, every arrangement
and the channel gate alone, training and evaluation mode (BatchNorm running statistics and
``num_batches_tracked`` updated as ``nn.BatchNorm2d`` does), any N, H, W. The block's
BatchNorm is folded for the channel-spatial arrangement and the channel gate alone, for
``nn.BatchNorm2d`` itself (affine or not, with or without running statistics); other
normalisations (synchronised BatchNorm included) run eagerly before the fused attention and
tail. Modules with hooks run eagerly. Everything else runs the eager modules.

Deviations from the eager modules: none in the tie rule (max pooling sends its gradient
to the first maximal element, as eager's ``torch.max``); the gradient is not
differentiable again (no double backward); sums are accumulated in a
different order (float32 results differ from eager's at eager's own rounding level, also for
maps whose mean is many times their spread, as in trained networks: the folded BatchNorm's
input and the spatial logits are centred before they are scaled, and long sums are taken
as short float blocks added in double).

Tracing, scripting, export (ONNX included) and functorch transforms run the eager
operations. Under ``torch.compile`` the modules call the fused operator, which the
compiler keeps as one opaque node (:data:`COMPILE_FUSED`; BENCHMARKS.md compares it with
letting the compiler fuse the eager operations), as long as the extension was already
built or builds at trace time.
"""

from __future__ import annotations

from ..layers import register_accelerated
from .dispatch import fused_unsupported, prefer_fused, run_fused
from .ops import fused_ops
from .tail import residual_tail

__all__ = [
    "COMPILE_FUSED",
    "fused_ops",
    "fused_unsupported",
    "prefer_fused",
    "residual_tail",
    "run_fused",
]

#: Whether ``torch.compile`` graphs call the fused operators, C++ or Triton (else the eager
#: operations).
COMPILE_FUSED = True

register_accelerated(run_fused)
