// Fused CPU forward and backward of CBAM (Woo et al., ECCV 2018, arxiv.org/abs/1807.06521)
// and of its channel gate alone (squeeze-and-excitation when the pooling is average only).
//
// Plan of passes over the (N, C, H, W) input, channel-spatial arrangement, training mode:
//   forward  1. per sample: pool x over positions (avg, max) -> MLP -> channel gate mc;
//               pool x * mc over channels ([max; mean], x from cache) -> k x k conv -> s.
//            2. batch statistics of s (the caller updates BatchNorm's running statistics).
//            3. per sample: y = x * mc * sigmoid(BN(s)).
//   backward 1. per sample: one read of g and x gives sum_p g x ms (per channel) and
//               sum_c g x mc (per position). The spatial branch's gradient of s is
//               A gs + cb + cs s with two batch-wide scalars cb, cs, so the x-weighted sums
//               that the channel gate needs are taken per component (x again, from cache).
//            2. BatchNorm batch sums -> cb, cs.
//            3. per sample: MLP backward, conv backward, and one read of g and write of
//               gx = mc (g ms + dmean / C) + davg / HW, plus one sparse entry per max.
// Every big pass is over one sample at a time (the calling thread and helpers take the next
// free sample, see for_each_sample), so a second read of a sample comes from cache: the
// tensor-sized memory traffic is 2 reads + 1 write forward and 3 reads + 1 write backward.
// Without a batch-wide BatchNorm (evaluation, spatial_norm=False, channel gate only) each direction
// is one per-sample loop (forward 1 read + 1 write, backward 2 reads + 1 write). The other
// arrangements reuse the same per-sample pieces in another order.
// Saved for backward: mc, the pooled vectors, the two argmax index sets, the pooled maps
// and s (all of size N*C or N*H*W), besides x itself.
//
// Float accuracy: the folded BatchNorm and the spatial gate's are applied to centred values,
// x = ha (z - hm) + hb and A (s - c) + b, with hm and c the means rounded to the input's
// dtype (trained networks have maps whose mean is many times their spread); the folded
// BatchNorm's batch statistics are corrected two-pass per sample, combined in double; and
// long sums are float partial sums of kBlock terms added in double (cbam_simd.h).
//
// Registered as torch.ops.convattn.cbam_forward / cbam_backward (CPU kernels, pure
// functions); convattn/layers/_fused_ops.py adds fake kernels and the autograd formula.
#include <torch/library.h>

#include "cbam.h"

TORCH_LIBRARY(convattn, m) {
  m.def(
      "cbam_forward(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor? conv_w, "
      "Tensor? conv_b, Tensor? bn_w, Tensor? bn_b, Tensor? running_mean, "
      "Tensor? running_var, int arrangement, bool use_avg, bool use_max, bool norm, "
      "bool batch_stats, float eps, Tensor? shortcut, bool relu, int head, Tensor? head_w, "
      "Tensor? head_b, Tensor? head_rm, Tensor? head_rv, float head_eps, bool need_idx) "
      "-> Tensor[]");
  m.def(
      "cbam_backward(Tensor g, Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
      "Tensor? conv_w, Tensor mc, Tensor v, Tensor idx_hw, Tensor maps, Tensor idx_c, "
      "Tensor s, Tensor stats, int arrangement, bool use_avg, bool use_max, bool norm, "
      "bool batch_stats, bool need_gx, Tensor? out, bool relu, int head, Tensor? head_w, "
      "Tensor? head_b, Tensor? hstats, Tensor? zsum) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(convattn, CPU, m) {
  m.impl("cbam_forward", &convattn::cbam_forward);
  m.impl("cbam_backward", &convattn::cbam_backward);
}
