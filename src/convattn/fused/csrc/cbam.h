// Entry points of the fused CBAM extension (registered as operators in fused_cbam.cpp).
#pragma once

#include "cbam_sample.h"

namespace convattn {

using OptTensor = c10::optional<at::Tensor>;

// Forward options besides the module's parameters (see fused_cbam.cpp).
struct FwdArgs {
  bool norm, batch_stats;
  double eps;
  OptTensor conv_b, bn_w, bn_b, rm, rv;  // the spatial gate's conv bias or BatchNorm
  const at::Tensor* shortcut;            // tail: + shortcut (or nullptr), then ReLU
  bool relu;
  int head;  // HeadMode of the BatchNorm folded in front
  OptTensor head_w, head_b, head_rm, head_rv;
  double head_eps;
  bool need_idx;  // argmax indices (for a backward)
};

// Backward inputs besides the parameters: the forward's saved tensors and options.
struct BwdArgs {
  bool norm, batch_stats, need_gx, relu;
  int head;
  at::Tensor mc, v, ihw, maps, ic, s, stats;
  const at::Tensor* out;  // the forward's output (for the ReLU's mask)
  OptTensor head_w, head_b;
  const at::Tensor* hstats;  // the folded BatchNorm's [mean; invstd] (float64, 2 x C)
  const at::Tensor* zsum;    // per-sample channel sums of its input less hm (N x C)
};

// Returns {y, mc, v, idx_hw, maps, idx_c, s, stats, batch, hstats, hbatch, zsum}.
std::vector<at::Tensor> cbam_forward(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const OptTensor& conv_w, const OptTensor& conv_b, const OptTensor& bn_w,
    const OptTensor& bn_b, const OptTensor& running_mean, const OptTensor& running_var,
    int64_t arrangement, bool use_avg, bool use_max, bool norm, bool batch_stats, double eps,
    const OptTensor& shortcut, bool relu, int64_t head, const OptTensor& head_w,
    const OptTensor& head_b, const OptTensor& head_rm, const OptTensor& head_rv,
    double head_eps, bool need_idx);

// Returns {gx, gw1, gb1, gw2, gb2, gconv_w, gconv_b, gbn_w, gbn_b, gshortcut, ghead_w,
// ghead_b}; absent ones are empty.
std::vector<at::Tensor> cbam_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2, const OptTensor& conv_w, const at::Tensor& mc,
    const at::Tensor& v, const at::Tensor& idx_hw, const at::Tensor& maps,
    const at::Tensor& idx_c, const at::Tensor& s, const at::Tensor& stats, int64_t arrangement,
    bool use_avg, bool use_max, bool norm, bool batch_stats, bool need_gx, const OptTensor& out,
    bool relu, int64_t head, const OptTensor& head_w, const OptTensor& head_b,
    const OptTensor& hstats, const OptTensor& zsum);

}  // namespace convattn
