// Entry points of the fused CBAM extension (bound to Python in fused_cbam.cpp).
#pragma once

#include "cbam_sample.h"

namespace convattn {

using OptTensor = c10::optional<at::Tensor>;

// Returns {y, mc, v, idx_hw, maps, idx_c, s, stats, batch}; see fused_cbam.cpp.
std::vector<at::Tensor> cbam_forward(const at::Tensor& x, const at::Tensor& w1,
                                     const at::Tensor& b1, const at::Tensor& w2,
                                     const at::Tensor& b2, const OptTensor& conv_w,
                                     const OptTensor& conv_b, const OptTensor& bn_w,
                                     const OptTensor& bn_b, const OptTensor& running_mean,
                                     const OptTensor& running_var, int64_t arrangement,
                                     bool use_avg, bool use_max, bool norm, bool batch_stats,
                                     double eps);

// Returns {gx, gw1, gb1, gw2, gb2, gconv_w, gconv_b, gbn_w, gbn_b}; absent ones are empty.
std::vector<at::Tensor> cbam_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2, const OptTensor& conv_w, const at::Tensor& mc,
    const at::Tensor& v, const at::Tensor& idx_hw, const at::Tensor& maps,
    const at::Tensor& idx_c, const at::Tensor& s, const at::Tensor& stats, int64_t arrangement,
    bool use_avg, bool use_max, bool norm, bool batch_stats, bool need_gx);

}  // namespace convattn
