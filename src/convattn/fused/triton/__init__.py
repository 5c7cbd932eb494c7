"""Triton kernels for CBAM and its channel gate (SE) on CUDA: forward and backward in a
few passes over the input.

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521, Eq. (1)-(3). The math is that of
:class:`convattn.layers.CBAM`; only the schedule differs. CUDA tensors offered to
:func:`convattn.fused.run_fused` (``impl="fused"`` or ``"auto"``) come here; CPU tensors
keep the C++ kernels. The parts: :mod:`.kernels` (the Triton kernels), :mod:`.ops` (the
``torch.library`` operators, their fake kernels and autograd), :mod:`.norm` (the folded
BatchNorm of a block's tail) and :mod:`.dispatch`
(eligibility and the BatchNorm bookkeeping). Triton is imported only when a CBAM first
runs here.

Plan of passes over the input-sized tensors (the rest touches N*C or N*H*W values), for
channel-spatial: forward reads x three times (avg/max over positions per (n, c); max/mean
over channels of x * Mc per position; the output y = x * Mc * Ms) and writes y once;
backward reads (g, x) twice (the spatial gate's gradient per position; the channel gate's
per channel) and g once more to write the input's gradient. The other arrangements make
the same passes in another order (spatial-channel pools x * Ms over positions after the
spatial gate); the channel gate alone makes two forward (pool, scale) and two backward
(the gate's gradient, the input's). Between them, torch operations on small tensors run
the channel MLP and the spatial BatchNorm's statistics, and two small kernels the k x k
convolution on the 2-channel map (forward and transposed) and its weight's gradient.
Saved for backward: x and tensors of N*C or N*H*W values only (as the C++ kernels).

Covered: CUDA float32, bfloat16 and float16 input (parameters of any floating dtype;
everything is accumulated in float32, the output and the input's gradient are stored in
the input's dtype), contiguous or channels_last, every arrangement (channel-spatial,
spatial-channel, parallel) and the channel gate alone (``CBAM(spatial=False)``,
``ChannelAttention``, ``SqueezeExcite``), channel pools any non-empty subset of {avg,
max}, "avgmax" spatial pooling with BatchNorm (``nn.BatchNorm2d``: training and
evaluation mode, running statistics and ``num_batches_tracked`` updated as it does) or
with a conv bias, any odd kernel size, autocast (the kernels then compute in float32,
where eager runs the MLP and the conv in lower precision). Everything else runs the eager
modules: lp/lse pools, conv1x1 pooling, float64, other devices, synchronised BatchNorm,
2**31 elements or more, tracing, scripting and export.

The residual tail (:func:`convattn.fused.residual_tail`, every arrangement): the kernels
read the block's last BatchNorm's input and apply it as a per-channel scale and shift
where they load it, and add the shortcut and apply the ReLU where they write the output
(:mod:`.norm` computes the BatchNorm's statistics forward, one more read, and its
gradients backward, two passes); saved for backward: the BatchNorm's input, the output
(the ReLU's mask) and small tensors. A BatchNorm other than ``nn.BatchNorm2d`` runs
eagerly in front of the folded rest.

Deviations from the eager modules: sums run in another order; no double backward (max
pooling sends its gradient to the first maximal element, as eager's ``torch.max``).
Under ``torch.compile`` the module calls the operator, which the compiler keeps as one
opaque node (see :mod:`.ops`); with gradients off ``impl="auto"`` records the eager
operations instead.

Testing without a GPU: with ``TRITON_INTERPRET=1`` and ``CONVATTN_TRITON_ON_CPU=1`` set
before the first CBAM runs, CPU tensors take this path exactly as CUDA tensors would,
run by Triton's interpreter (see :data:`.dispatch.FORCE_CPU_ENV`).
"""

from __future__ import annotations

from .dispatch import FORCE_CPU_ENV, run_triton, triton_target, triton_unsupported

__all__ = ["FORCE_CPU_ENV", "run_triton", "triton_target", "triton_unsupported"]
