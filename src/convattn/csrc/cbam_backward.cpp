// Fused CBAM backward: see fused_cbam.cpp for the plan of passes.
#include "cbam.h"

namespace convattn {
namespace {

// Per-worker scratch of the backward loops.
template <typename T>
struct Scratch {
  std::vector<T> buf;
  T *ms, *t, *gsbn, *G, *gm, *gmc, *gva, *gvm, *tc, *h, *gr, *ghs, *cbuf;
  Scratch(idx_t C, idx_t HW, idx_t Hd, int P, idx_t conv_scratch)
      : buf(8 * HW + 4 * C + 2 * P * Hd + 2 * Hd + C + conv_scratch) {
    T* q = buf.data();
    auto take = [&q](idx_t n) {
      T* r = q;
      q += n;
      return r;
    };
    ms = take(HW), t = take(HW), gsbn = take(HW), G = take(2 * HW), gm = take(3 * HW);
    gmc = take(C), gva = take(C), gvm = take(C), tc = take(C), h = take(P * Hd);
    gr = take(Hd + C), ghs = take(P * Hd + Hd), cbuf = take(conv_scratch);
  }
};

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& g, const at::Tensor& x,
                                      const Setup<T>& st, const at::Tensor& mc,
                                      const at::Tensor& v, const at::Tensor& ihw,
                                      const at::Tensor& maps, const at::Tensor& ic,
                                      const at::Tensor& s, const at::Tensor& stats, bool norm,
                                      bool batch_stats, bool need_gx) {
  const Slab& S = st.S;
  const idx_t N = st.N, C = S.C, HW = S.HW, Hd = st.Hd, M = N * HW;
  const int P = st.P, k = st.k, arr = st.arr;
  const bool spatial = arr != kChannel;
  const bool sync = spatial && norm && batch_stats;
  auto opt = x.options();
  at::Tensor gx = need_gx ? empty_output_like(x) : at::empty({0}, x.options());
  at::Tensor glogit = at::empty({N, C}, opt);
  at::Tensor rsum = at::empty({N, Hd}, opt);
  at::Tensor gh = at::empty({P, N, Hd}, opt);
  const T* gp = g.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* gxp = need_gx ? gx.data_ptr<T>() : nullptr;
  const T* mcp = mc.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int32_t* ihwp = ihw.data_ptr<int32_t>();
  const T* mapsp = maps.data_ptr<T>();
  const int32_t* icp = ic.data_ptr<int32_t>();
  const T* sp = s.data_ptr<T>();
  T* glp = glogit.data_ptr<T>();
  T* rsp = rsum.data_ptr<T>();
  T* ghp = gh.data_ptr<T>();
  const double* aff = stats.data_ptr<double>();
  const T A = T(aff[0]), B = T(aff[1]);
  const T invC = T(1) / T(C), invHW = T(1) / T(HW);
  const T* one_c = st.ones_c.data();
  const T* one_p = st.ones_p.data();
  const T* zero_c = st.zeros_c.data();
  const T* zero_p = st.zeros_p.data();

  // Buffers that cross from the first per-sample loop to the second.
  const bool cs_sync = sync && arr == kChannelSpatial;
  std::vector<T> gs_all(spatial ? M : 0);  // d loss / d (A s + B), the spatial sigmoid's input
  std::vector<T> gmc_all(N * C);           // sum_p g x ms, per channel
  std::vector<T> gv_all(spatial ? 2 * N * C : 0);  // pooled-vector gradients (avg, max)
  std::vector<T> sig_all(cs_sync ? 3 * N * C : 0);  // x-weighted sums of three components
  std::vector<T> G_all(cs_sync ? 4 * N * HW : 0);    // conv_transpose of gs and of s
  const idx_t nw = num_workers(N);
  std::vector<Scratch<T>> work;
  for (idx_t i = 0; i < nw; ++i) work.emplace_back(C, HW, Hd, P, st.conv.scratch());
  std::vector<double> gw_acc(spatial ? N * 2 * k * k : 0, 0.0);  // per sample: deterministic
  // conv_transpose of a map of ones: the BatchNorm mean term, the same for every sample.
  std::vector<T> g_ones(cs_sync ? 2 * HW : 0);
  if (cs_sync) st.conv.backward_input(one_p, st.cw, g_ones.data(), work[0].cbuf);
  double cb = 0, cs = 0;  // the normalised logit gradient is A gs + cb + cs s

  auto gate_map = [&](idx_t n, T* ms) {
    const T* sn = sp + n * HW;
    sigmoid_map(sn, HW, A, B, ms);
  };
  // MLP backward of sample n from d loss / d mc into w.gva, w.gvm; stores the pieces of
  // the MLP's parameter gradients (glogit, sum_p relu(h_p), gh).
  auto mlp_bwd = [&](idx_t n, const T* gmc, Scratch<T>& w) {
    const T* vs[2] = {vp + (st.avg_slot() * N + n) * C, vp + (st.max_slot() * N + n) * C};
    mlp_forward(st.mlp, vs, P, w.h, rsp + n * Hd, w.gr + Hd);  // recompute h
    T* gvs[2] = {st.avg ? w.gva : w.gvm, w.gvm};
    mlp_backward(st.mlp, P, w.h, mcp + n * C, gmc, glp + n * C, w.gr, w.ghs, gvs);
    for (int q = 0; q < P; ++q)
      std::copy(w.ghs + q * Hd, w.ghs + (q + 1) * Hd, ghp + (q * N + n) * Hd);
    if (!st.avg) std::fill(w.gva, w.gva + C, T(0));
    if (!st.mx) std::fill(w.gvm, w.gvm + C, T(0));
  };
  // gx = g Uc Vp + Pc Qp + Dc + Ep, then the max-pooling entries: at the position argmax of
  // each channel gvm[c] (times scale_p there) and at the channel argmax of each position
  // gmax[p] (times scale_c there).
  auto write_gx = [&](idx_t n, const T* Uc, const T* Vp, const T* Pc, const T* Qp, const T* Dc,
                      const T* Ep, const T* gvm, const T* scale_p, const T* gmax,
                      const T* scale_c) {
    if (!need_gx) return;
    T* out = gxp + n * C * HW;
    write_sample(S, gp + n * C * HW, out, Uc, Vp, Pc, Qp, Dc, Ep);
    if (st.mx) {
      const int32_t* ih = ihwp + n * C;
      for (idx_t c = 0; c < C; ++c) out[S.at(c, ih[c])] += gvm[c] * scale_p[ih[c]];
    }
    if (gmax) {
      const int32_t* icn = icp + n * HW;
      for (idx_t p = 0; p < HW; ++p) out[S.at(icn[p], p)] += gmax[p] * scale_c[icn[p]];
    }
  };
  // out[j][c] = sum_p x[c, p] G_j[HW + p] / C + sum_{p: ic[p] = c} x[c, p] G_j[p]: what the
  // spatial pooling's gradient maps G_j (max map, then mean map) give the channel gate.
  auto gate_sums = [&](idx_t n, int J, const T* const* Gs, T* const* out, Scratch<T>& w) {
    const T* xn = xp + n * C * HW;
    const T* wts[3];
    for (int j = 0; j < J; ++j) {
      T* gm = w.gm + j * HW;
      for (idx_t p = 0; p < HW; ++p) gm[p] = Gs[j][HW + p] * invC;
      wts[j] = gm;
    }
    wsum_over_pos(S, xn, J, wts, out);
    const int32_t* icn = icp + n * HW;
    for (idx_t p = 0; p < HW; ++p) {
      const T xv = xn[S.at(icn[p], p)];
      for (int j = 0; j < J; ++j) out[j][icn[p]] += xv * Gs[j][p];
    }
  };

  // Second half of sample n: everything that needs the BatchNorm coefficients.
  auto finish = [&](idx_t n, idx_t wk) {
    Scratch<T>& w = work[wk];
    const T* sn = sp + n * HW;
    const T* gs = gs_all.data() + n * HW;
    gate_map(n, w.ms);
    for (idx_t p = 0; p < HW; ++p) w.gsbn[p] = A * gs[p] + T(cb) + T(cs) * sn[p];
    st.conv.backward_weight(mapsp + n * 2 * HW, w.gsbn, gw_acc.data() + n * 2 * k * k, w.cbuf);
    if (cs_sync) {  // conv_transpose is linear: combine the stored components
      const T* G0 = G_all.data() + n * 4 * HW;
      const T* G2 = G0 + 2 * HW;
      const T* G1 = g_ones.data();
      for (idx_t p = 0; p < 2 * HW; ++p) w.G[p] = A * G0[p] + T(cb) * G1[p] + T(cs) * G2[p];
    } else {
      st.conv.backward_input(w.gsbn, st.cw, w.G, w.cbuf);
    }
    T* gmax = w.G;
    T* gmean = w.G + HW;
    const T* mcn = mcp + n * C;
    if (arr == kChannelSpatial) {
      const T* gmca = gmc_all.data() + n * C;
      if (cs_sync) {
        const T* sg[3] = {sig_all.data() + n * C, sig_all.data() + (N + n) * C,
                          sig_all.data() + (2 * N + n) * C};
        for (idx_t c = 0; c < C; ++c)
          w.gmc[c] = gmca[c] + A * sg[0][c] + T(cb) * sg[1][c] + T(cs) * sg[2][c];
      } else {
        const T* Gs[1] = {w.G};
        T* outs[1] = {w.tc};
        gate_sums(n, 1, Gs, outs, w);
        for (idx_t c = 0; c < C; ++c) w.gmc[c] = gmca[c] + w.tc[c];
      }
      mlp_bwd(n, w.gmc, w);
      for (idx_t c = 0; c < C; ++c) w.gva[c] *= invHW;
      for (idx_t p = 0; p < HW; ++p) gmean[p] *= invC;
      write_gx(n, mcn, w.ms, mcn, gmean, w.gva, zero_p, w.gvm, one_p, gmax, mcn);
      return;
    }
    for (idx_t p = 0; p < HW; ++p) gmean[p] *= invC;
    const T* gva = gv_all.data() + n * 2 * C;
    const T* gvm = gva + C;
    for (idx_t c = 0; c < C; ++c) w.tc[c] = gva[c] * invHW;
    if (arr == kSpatialChannel)
      write_gx(n, mcn, w.ms, w.tc, w.ms, zero_c, gmean, gvm, w.ms, gmax, one_c);
    else  // parallel
      write_gx(n, mcn, w.ms, zero_c, zero_p, w.tc, gmean, gvm, one_p, gmax, one_c);
  };

  // First half of sample n: the reductions over g and x, and all that needs no batch sums.
  auto start = [&](idx_t n, idx_t wk) {
    Scratch<T>& w = work[wk];
    const T* gn = gp + n * C * HW;
    const T* xn = xp + n * C * HW;
    const T* mcn = mcp + n * C;
    T* gmc = gmc_all.data() + n * C;
    if (!spatial) {
      reduce_sample<T>(S, gn, xn, one_c, one_p, gmc, nullptr);
      mlp_bwd(n, gmc, w);
      for (idx_t c = 0; c < C; ++c) w.gva[c] *= invHW;
      write_gx(n, mcn, one_p, zero_c, zero_p, w.gva, zero_p, w.gvm, one_p, nullptr, nullptr);
      return;
    }
    gate_map(n, w.ms);
    reduce_sample<T>(S, gn, xn, mcn, w.ms, gmc, w.t);
    T* gs = gs_all.data() + n * HW;
    if (arr != kChannelSpatial) mlp_bwd(n, gmc, w);  // the channel gate's input is x1 or x
    if (arr == kSpatialChannel) {  // x1 = x ms: the channel gate adds to d loss / d ms
      for (idx_t c = 0; c < C; ++c) w.tc[c] = w.gva[c] * invHW;
      T* u = w.gsbn;  // sum_c x (d loss / d x1 without the g mc term)
      wsum_over_ch(S, xn, w.tc, u);
      if (st.mx) {
        const int32_t* ih = ihwp + n * C;
        for (idx_t c = 0; c < C; ++c) u[ih[c]] += xn[S.at(c, ih[c])] * w.gvm[c];
      }
      for (idx_t p = 0; p < HW; ++p) w.t[p] += u[p];
    }
    if (arr != kChannelSpatial) {
      std::copy(w.gva, w.gva + C, gv_all.data() + n * 2 * C);
      std::copy(w.gvm, w.gvm + C, gv_all.data() + n * 2 * C + C);
    }
    for (idx_t p = 0; p < HW; ++p) gs[p] = w.t[p] * w.ms[p] * (T(1) - w.ms[p]);
    if (!sync) return finish(n, wk);
    if (arr == kChannelSpatial) {  // the x-weighted sums of the components gs, 1 and s
      T* G0 = G_all.data() + n * 4 * HW;
      T* G2 = G0 + 2 * HW;
      st.conv.backward_input(gs, st.cw, G0, w.cbuf);
      st.conv.backward_input(sp + n * HW, st.cw, G2, w.cbuf);
      const T* Gs[3] = {G0, g_ones.data(), G2};
      T* outs[3] = {sig_all.data() + n * C, sig_all.data() + (N + n) * C,
                    sig_all.data() + (2 * N + n) * C};
      gate_sums(n, 3, Gs, outs, w);
    }
  };

  for_each_sample(N, start);
  // BatchNorm (or conv bias) gradients from the per-sample logit gradients.
  auto none = [&opt] { return at::empty({0}, opt); };  // distinct: outputs never alias
  at::Tensor gconv_b = none(), gbn_w = none(), gbn_b = none(), gconv_w = none();
  if (spatial) {
    const double mean = aff[2], invstd = aff[3];
    double s1 = 0, s2 = 0;
    for (idx_t i = 0; i < M; ++i) {
      s1 += gs_all[i];
      s2 += double(gs_all[i]) * (double(sp[i]) - mean) * invstd;
    }
    if (norm) {
      gbn_b = at::full({1}, s1, opt);
      gbn_w = at::full({1}, s2, opt);
    } else {
      gconv_b = at::full({1}, s1, opt);
    }
    if (sync) {  // A (gs - mean(gs) - xhat mean(gs xhat)), xhat = (s - mean) invstd
      const double a = aff[0], mg = s1 / double(M), mgx = s2 / double(M);
      cb = -a * mg + a * mgx * invstd * mean;
      cs = -a * mgx * invstd;
      for_each_sample(N, finish, /*reverse=*/true);
    }
  }
  // Parameter gradients of the MLP and the conv, from the per-sample pieces (plain loops:
  // these products are tiny, and a BLAS call right after the loops costs milliseconds; a
  // parallel region only pays off for large ones, as idle workers spin on shared cores).
  at::Tensor gw1 = at::empty({Hd, C}, opt), gw2 = at::empty({C, Hd}, opt);
  at::Tensor gb1 = at::empty({Hd}, opt), gb2 = at::empty({C}, opt);
  T* gw1p = gw1.data_ptr<T>();
  T* gw2p = gw2.data_ptr<T>();
  auto products = [&](idx_t b, idx_t e) {
    const idx_t b1 = std::min(b, Hd), e1 = std::min(e, Hd);
    if (e1 > b1) outer_sum(ghp, vp, P * N, Hd, C, gw1p, b1, e1);  // sum_q gh_q^T v_q
    const idx_t b2 = std::max(b, Hd) - Hd, e2 = std::max(e, Hd) - Hd;
    if (e2 > b2) outer_sum(glp, rsp, N, C, Hd, gw2p, b2, e2);  // glogit^T sum_p relu(h_p)
  };
  if ((P + 1) * N * C * Hd < (idx_t(1) << 21))
    products(0, Hd + C);
  else
    at::parallel_for(0, Hd + C, 16, products);
  std::vector<T> ones(P * N, T(1));  // sums over samples as products with ones
  outer_sum(ones.data(), ghp, P * N, 1, Hd, gb1.data_ptr<T>(), 0, 1);
  outer_sum(ones.data(), glp, N, 1, C, gb2.data_ptr<T>(), 0, 1);
  gb2.mul_(double(P));
  if (spatial) {
    std::vector<double> acc(2 * k * k, 0.0);
    for (idx_t i = 0; i < N; ++i)
      for (int j = 0; j < 2 * k * k; ++j) acc[j] += gw_acc[i * 2 * k * k + j];
    gconv_w = at::tensor(acc, opt.dtype(at::kDouble)).to(x.scalar_type()).view({1, 2, k, k});
  }
  return {gx, gw1, gb1, gw2, gb2, gconv_w, gconv_b, gbn_w, gbn_b};
}

}  // namespace

std::vector<at::Tensor> cbam_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2, const OptTensor& conv_w, const at::Tensor& mc,
    const at::Tensor& v, const at::Tensor& idx_hw, const at::Tensor& maps,
    const at::Tensor& idx_c, const at::Tensor& s, const at::Tensor& stats, int64_t arrangement,
    bool use_avg, bool use_max, bool norm, bool batch_stats, bool need_gx) {
  check_args(x, {w1, b1, w2, b2}, conv_w, arrangement, use_avg, use_max);
  TORCH_CHECK(g.sizes() == x.sizes() && g.strides() == x.strides() &&
                  g.scalar_type() == x.scalar_type(),
              "fused CBAM: the gradient must have the input's layout");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_backward", [&] {
    Setup<scalar_t> st(x, w1, b1, w2, b2, conv_w, arrangement, use_avg, use_max);
    out = backward_impl<scalar_t>(g, x, st, mc, v, idx_hw, maps, idx_c, s, stats, norm,
                                  batch_stats, need_gx);
  });
  return out;
}

}  // namespace convattn
