// Fused CBAM forward: see fused_cbam.cpp for the plan of passes.
#include "cbam.h"

namespace convattn {
namespace {

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const Setup<T>& st, bool norm,
                                     bool batch_stats, const c10::optional<at::Tensor>& conv_b,
                                     const c10::optional<at::Tensor>& bn_w,
                                     const c10::optional<at::Tensor>& bn_b,
                                     const c10::optional<at::Tensor>& rm,
                                     const c10::optional<at::Tensor>& rv, double eps) {
  const Slab& S = st.S;
  const idx_t N = st.N, C = S.C, HW = S.HW, Hd = st.Hd;
  const bool spatial = st.arr != kChannel;
  auto opt = x.options();
  auto iopt = opt.dtype(at::kInt);
  at::Tensor y = empty_output_like(x);
  at::Tensor mc = at::empty({N, C}, opt);
  at::Tensor v = at::empty({st.P, N, C}, opt);              // pooled vectors, avg then max
  at::Tensor ihw = at::zeros({N, C}, iopt);                 // argmax over positions
  at::Tensor maps = at::empty({N, spatial ? 2 : 0, HW}, opt);  // [max_c; mean_c] per sample
  at::Tensor ic = at::empty({N, spatial ? HW : 0}, iopt);      // argmax over channels
  at::Tensor s = at::empty({N, spatial ? HW : 0}, opt);        // conv output, pre-norm
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* mcp = mc.data_ptr<T>();
  T* vp = v.data_ptr<T>();
  int32_t* ihwp = ihw.data_ptr<int32_t>();
  T* mapsp = maps.data_ptr<T>();
  int32_t* icp = ic.data_ptr<int32_t>();
  T* sp = s.data_ptr<T>();
  const idx_t nw = num_workers(N);
  const idx_t scratch = 2 * C + (st.P + 1) * Hd + HW + st.conv.scratch();
  std::vector<T> work(nw * scratch);
  std::vector<int32_t> iwork(nw * C);

  // Channel gate from the pooled sums / maxima held in the worker's scratch.
  auto channel_gate = [&](idx_t n, T* csum, T* cmax, int32_t* cidx, T* h) {
    T* vavg = vp + (st.avg_slot() * N + n) * C;
    T* vmax = vp + (st.max_slot() * N + n) * C;
    const T inv = T(1) / T(HW);
    if (st.avg)
      for (idx_t c = 0; c < C; ++c) vavg[c] = csum[c] * inv;
    if (st.mx) {
      std::copy(cmax, cmax + C, vmax);
      std::copy(cidx, cidx + C, ihwp + n * C);
    }
    const T* vs[2] = {st.avg ? vavg : vmax, vmax};
    mlp_forward(st.mlp, vs, st.P, h, h + st.P * Hd, mcp + n * C);
  };
  // Spatial pooling maps of x * cs and the conv output s.
  auto conv_buf = [&](idx_t wk) {
    return work.data() + wk * scratch + 2 * C + (st.P + 1) * Hd + HW;
  };
  auto spatial_logits = [&](idx_t n, idx_t wk, const T* xn, const T* cs) {
    T* mp = mapsp + n * 2 * HW;
    pool_sample<T>(S, xn, cs, st.ones_p.data(), nullptr, nullptr, nullptr, mp + HW, mp,
                   icp + n * HW);
    const T inv = T(1) / T(C);
    for (idx_t p = 0; p < HW; ++p) mp[HW + p] *= inv;
    st.conv.forward(mp, st.cw, sp + n * HW, conv_buf(wk));
  };

  auto phase1 = [&](idx_t n, idx_t wk) {
    const T* xn = xp + n * C * HW;
    T* csum = work.data() + wk * scratch;
    T* cmax = csum + C;
    T* h = cmax + C;
    int32_t* cidx = iwork.data() + wk * C;
    if (st.arr == kChannel || st.arr == kChannelSpatial) {
      pool_sample<T>(S, xn, st.ones_c.data(), st.ones_p.data(), csum, cmax, cidx, nullptr,
                     nullptr, nullptr);
      channel_gate(n, csum, cmax, cidx, h);
      if (st.arr == kChannelSpatial) spatial_logits(n, wk, xn, mcp + n * C);
    } else if (st.arr == kParallel) {
      T* mp = mapsp + n * 2 * HW;
      pool_sample<T>(S, xn, st.ones_c.data(), st.ones_p.data(), csum, cmax, cidx, mp + HW, mp,
                     icp + n * HW);
      channel_gate(n, csum, cmax, cidx, h);
      const T inv = T(1) / T(C);
      for (idx_t p = 0; p < HW; ++p) mp[HW + p] *= inv;
      st.conv.forward(mp, st.cw, sp + n * HW, conv_buf(wk));
    } else {  // spatial-channel: the spatial map comes first
      spatial_logits(n, wk, xn, st.ones_c.data());
    }
  };
  std::vector<double> aff;
  auto phase2 = [&](idx_t n, idx_t wk) {
    const T* xn = xp + n * C * HW;
    T* csum = work.data() + wk * scratch;
    T* cmax = csum + C;
    T* h = cmax + C;
    T* ms = h + (st.P + 1) * Hd;
    int32_t* cidx = iwork.data() + wk * C;
    const T* ps = st.ones_p.data();
    if (spatial) {
      const T a = T(aff[0]), b = T(aff[1]);
      const T* sn = sp + n * HW;
      sigmoid_map(sn, HW, a, b, ms);
      ps = ms;
    }
    if (st.arr == kSpatialChannel) {
      pool_sample<T>(S, xn, st.ones_c.data(), ms, csum, cmax, cidx, nullptr, nullptr, nullptr);
      channel_gate(n, csum, cmax, cidx, h);
    }
    scale_sample(S, xn, yp + n * C * HW, mcp + n * C, ps);
  };

  const bool sync = spatial && norm && batch_stats;
  if (!spatial || !sync) {
    if (spatial)
      aff = spatial_affine<T>(sp, 0, norm, false, conv_b, bn_w, bn_b, rm, rv, eps);
    for_each_sample(N, [&](idx_t n, idx_t wk) {
      phase1(n, wk);
      phase2(n, wk);
    });
  } else {
    for_each_sample(N, phase1);
    aff = spatial_affine<T>(sp, N * HW, norm, true, conv_b, bn_w, bn_b, rm, rv, eps);
    for_each_sample(N, phase2, /*reverse=*/true);
  }
  if (aff.empty()) aff = {1.0, 0.0, 0.0, 1.0, 0.0};
  // stats {A, B, mean, invstd} for backward; batch {mean, unbiased var} for running stats.
  at::Tensor batch = at::tensor(std::vector<double>{aff[2], aff[4]}, opt.dtype(at::kDouble));
  aff.pop_back();
  at::Tensor stats = at::tensor(aff, opt.dtype(at::kDouble));
  return {y, mc, v, ihw, maps, ic, s, stats, batch.to(x.scalar_type())};
}

}  // namespace

std::vector<at::Tensor> cbam_forward(const at::Tensor& x, const at::Tensor& w1,
                                     const at::Tensor& b1, const at::Tensor& w2,
                                     const at::Tensor& b2, const OptTensor& conv_w,
                                     const OptTensor& conv_b, const OptTensor& bn_w,
                                     const OptTensor& bn_b, const OptTensor& running_mean,
                                     const OptTensor& running_var, int64_t arrangement,
                                     bool use_avg, bool use_max, bool norm, bool batch_stats,
                                     double eps) {
  check_args(x, {w1, b1, w2, b2}, conv_w, arrangement, use_avg, use_max);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_forward", [&] {
    Setup<scalar_t> st(x, w1, b1, w2, b2, conv_w, arrangement, use_avg, use_max);
    out = forward_impl<scalar_t>(x, st, norm, batch_stats, conv_b, bn_w, bn_b, running_mean,
                                 running_var, eps);
  });
  return out;
}

}  // namespace convattn
