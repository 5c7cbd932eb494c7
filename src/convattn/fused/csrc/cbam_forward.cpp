// Fused CBAM forward: see fused_cbam.cpp for the plan of passes.
#include "cbam.h"

namespace convattn {
namespace {

// Per-worker scratch of the forward loops.
template <typename T>
struct FwdScratch {
  std::vector<T> buf;
  std::vector<int32_t> ibuf;
  T *csum, *cmax, *h, *ms, *chs, *chb, *mean, *res, *m2, *cbuf;
  int32_t* cidx;
  FwdScratch(idx_t C, idx_t HW, idx_t Hd, int P, idx_t conv_scratch)
      : buf(7 * C + (P + 1) * Hd + HW + conv_scratch), ibuf(C) {
    T* q = buf.data();
    auto take = [&q](idx_t n) {
      T* r = q;
      q += n;
      return r;
    };
    csum = take(C), cmax = take(C), chs = take(C), chb = take(C), mean = take(C);
    res = take(C), m2 = take(C);
    h = take((P + 1) * Hd), ms = take(HW), cbuf = take(conv_scratch);
    cidx = ibuf.data();
  }
};

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const Setup<T>& st, const FwdArgs& a) {
  const Slab& S = st.S;
  const idx_t N = st.N, C = S.C, HW = S.HW, Hd = st.Hd;
  const bool spatial = st.arr != kChannel;
  const int head = a.head;
  const bool idx = a.need_idx;
  auto opt = x.options();
  auto iopt = opt.dtype(at::kInt);
  at::Tensor y = empty_output_like(x);
  at::Tensor mc = at::empty({N, C}, opt);
  at::Tensor v = at::empty({st.P, N, C}, opt);               // pooled vectors, avg then max
  at::Tensor ihw = at::zeros({idx ? N : 0, C}, iopt);        // argmax over positions
  at::Tensor maps = at::empty({N, spatial ? 2 : 0, HW}, opt);  // [max_c; mean_c] per sample
  at::Tensor ic = at::empty({idx ? N : 0, spatial ? HW : 0}, iopt);  // argmax over channels
  at::Tensor s = at::empty({N, spatial ? HW : 0}, opt);        // conv output, pre-norm
  at::Tensor zsum = at::empty({head ? N : 0, C}, opt);         // per sample: sum z - hm
  at::Tensor hstats = at::empty({head ? 2 : 0, C}, opt.dtype(at::kDouble));
  at::Tensor hbatch = at::empty({head == kHeadBatch ? 2 : 0, C}, opt);
  const T* xp = x.data_ptr<T>();
  const T* scp = a.shortcut ? a.shortcut->data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  T* mcp = mc.data_ptr<T>();
  T* vp = v.data_ptr<T>();
  int32_t* ihwp = idx ? ihw.data_ptr<int32_t>() : nullptr;
  T* mapsp = maps.data_ptr<T>();
  int32_t* icp = idx && spatial ? ic.data_ptr<int32_t>() : nullptr;
  T* sp = s.data_ptr<T>();
  T* zsp = head ? zsum.data_ptr<T>() : nullptr;
  const idx_t nw = num_workers(N);
  std::vector<FwdScratch<T>> work;
  for (idx_t i = 0; i < nw; ++i) work.emplace_back(C, HW, Hd, st.P, st.conv.scratch());
  std::vector<double> s_mean(spatial ? N : 0), s_m2(spatial ? N : 0);  // per-sample moments

  // ---- the folded BatchNorm in front, x = ha (z - hm) + hb per channel -------------------
  // hm is the BatchNorm's mean rounded to T and hb absorbs that rounding, so every product
  // with z is of a centred value: where z's mean is large against its spread, the plain
  // ha z + hb would round to ulps of ha z, far above those of x.
  std::vector<T> ha(head ? C : 0), hb(head ? C : 0), hm(head ? C : 0);
  const T* gam = ptr_or_null<T>(a.head_w);
  bool need_min = false;  // a channel with a negative scale pools its max from z's min
  for (idx_t c = 0; gam && c < C; ++c) need_min = need_min || gam[c] < T(0);
  // Per sample and channel: max and min of z - hm (zsum: sum of z - hm), and for batch
  // statistics the mean and the squared deviations, corrected two-pass.
  std::vector<T> zmax(head ? N * C : 0), zmin(need_min ? N * C : 0);
  std::vector<double> zmean(head == kHeadBatch ? N * C : 0), zm2(zmean.size());
  std::vector<int32_t> imax(head && idx ? N * C : 0), imin(need_min && idx ? N * C : 0);
  std::vector<T> minus_c(need_min ? C : 0, T(-1));
  // One read of z: per-channel sum, max and min (with their first positions) and, for
  // batch statistics, the squared deviations from the sample's own channel means. With
  // running statistics hm is known and z - hm is pooled; batch statistics pool z itself and
  // centre the results once the batch mean is known (head_affine).
  auto head_pass = [&](idx_t n, idx_t wk) {
    FwdScratch<T>& w = work[wk];
    const T* zn = xp + n * C * HW;
    T* zs = zsp + n * C;
    const T* one_c = st.ones_c.data();
    const T* one_p = st.ones_p.data();
    const T* piv = head == kHeadRunning ? hm.data() : nullptr;
    pool_sample<T>(S, zn, one_c, one_p, nullptr, piv, zs, zmax.data() + n * C,
                   idx ? imax.data() + n * C : nullptr, nullptr, nullptr, nullptr);
    if (need_min) {  // min z = -max(-z)
      T* zn_min = zmin.data() + n * C;
      pool_sample<T>(S, zn, minus_c.data(), one_p, nullptr, piv, w.csum, zn_min,
                     idx ? imin.data() + n * C : nullptr, nullptr, nullptr, nullptr);
      for (idx_t c = 0; c < C; ++c) zn_min[c] = -zn_min[c];
    }
    if (head == kHeadBatch) {
      for (idx_t c = 0; c < C; ++c) w.mean[c] = zs[c] / T(HW);
      sq_dev_sample(S, zn, w.mean, w.m2, w.res);
      for (idx_t c = 0; c < C; ++c) {  // the float mean is off by res / HW
        const double r = double(w.res[c]);
        zmean[n * C + c] = double(w.mean[c]) + r / double(HW);
        zm2[n * C + c] = std::max(0.0, double(w.m2[c]) - r * r / double(HW));
      }
    }
  };
  auto head_affine = [&] {
    const T* bet = ptr_or_null<T>(a.head_b);
    double* hs = hstats.data_ptr<double>();
    T* hbp = head == kHeadBatch ? hbatch.data_ptr<T>() : nullptr;
    const T* rmp = ptr_or_null<T>(a.head_rm);
    const T* rvp = ptr_or_null<T>(a.head_rv);
    std::vector<double> means(N), m2s(N);
    for (idx_t c = 0; c < C; ++c) {
      double mean, var;
      if (head == kHeadBatch) {  // Chan's combination of the per-sample moments
        for (idx_t n = 0; n < N; ++n) {
          means[n] = zmean[n * C + c];
          m2s[n] = zm2[n * C + c];
        }
        const Moments mo = combine_moments(means.data(), m2s.data(), N, HW);
        mean = mo.mean;
        var = mo.var;
        hbp[c] = T(mean);
        hbp[C + c] = T(mo.unbiased);
      } else {
        mean = double(rmp[c]);
        var = double(rvp[c]);
      }
      const double invstd = 1.0 / std::sqrt(var + a.head_eps);
      const double scale = (gam ? double(gam[c]) : 1.0) * invstd;
      hm[c] = T(mean);
      ha[c] = T(scale);
      hb[c] = T((bet ? double(bet[c]) : 0.0) - (mean - double(hm[c])) * scale);
      hs[c] = mean;
      hs[C + c] = invstd;
      if (head != kHeadBatch) continue;
      const double piv = double(hm[c]);
      for (idx_t n = 0; n < N; ++n) {  // centre what the head pass pooled
        const idx_t i = n * C + c;
        zsp[i] = T(double(HW) * (zmean[i] - piv));
        zmax[i] = T(double(zmax[i]) - piv);
        if (need_min) zmin[i] = T(double(zmin[i]) - piv);
      }
    }
  };
  // Pooled sums and maxima of x over positions from those of z - hm.
  auto head_pools = [&](idx_t n, T* csum, T* cmax, int32_t* cidx) {
    const T* zs = zsp + n * C;
    for (idx_t c = 0; c < C; ++c) {
      const T sc = ha[c], sh = hb[c];
      csum[c] = sc * zs[c] + T(HW) * sh;
      const bool neg = sc < T(0);
      cmax[c] = sc * (neg ? zmin[n * C + c] : zmax[n * C + c]) + sh;
      if (idx) cidx[c] = sc > T(0) ? imax[n * C + c] : neg ? imin[n * C + c] : 0;
    }
  };

  // ---- the attention ---------------------------------------------------------------------
  // Channel gate from the pooled sums / maxima.
  auto channel_gate = [&](idx_t n, const T* csum, const T* cmax, const int32_t* cidx, T* h) {
    T* vavg = vp + (st.avg_slot() * N + n) * C;
    T* vmax = vp + (st.max_slot() * N + n) * C;
    const T inv = T(1) / T(HW);
    if (st.avg)
      for (idx_t c = 0; c < C; ++c) vavg[c] = csum[c] * inv;
    if (st.mx) {
      std::copy(cmax, cmax + C, vmax);
      if (idx) std::copy(cidx, cidx + C, ihwp + n * C);
    }
    const T* vs[2] = {st.avg ? vavg : vmax, vmax};
    mlp_forward(st.mlp, vs, st.P, h, h + st.P * Hd, mcp + n * C);
  };
  // Per-channel factors of the gated map: x cs[c] = (z - hm[c]) chs[c] + chb[c].
  auto gated = [&](FwdScratch<T>& w, const T* cs) -> const T* {
    return gated_factors(C, cs, head ? ha.data() : nullptr, hb.data(), w.chs, w.chb);
  };
  const T* hpiv = head ? hm.data() : nullptr;
  // Spatial pooling maps of x cs, the conv output s and its moments.
  auto spatial_logits = [&](idx_t n, FwdScratch<T>& w, const T* xn, const T* cs, const T* chb) {
    T* mp = mapsp + n * 2 * HW;
    pool_sample<T>(S, xn, cs, st.ones_p.data(), chb, hpiv, nullptr, nullptr, nullptr, mp + HW,
                   mp, idx ? icp + n * HW : nullptr);
    const T inv = T(1) / T(C);
    for (idx_t p = 0; p < HW; ++p) mp[HW + p] *= inv;
    st.conv.forward(mp, st.cw, sp + n * HW, w.cbuf);
    sample_moments(sp + n * HW, HW, &s_mean[n], &s_m2[n]);
  };

  auto phase1 = [&](idx_t n, idx_t wk) {
    FwdScratch<T>& w = work[wk];
    const T* xn = xp + n * C * HW;
    if (head == kHeadRunning) head_pass(n, wk);
    const int32_t* cidx = idx ? w.cidx : nullptr;
    if (st.arr == kChannel || st.arr == kChannelSpatial) {
      if (head)
        head_pools(n, w.csum, w.cmax, w.cidx);
      else
        pool_sample<T>(S, xn, st.ones_c.data(), st.ones_p.data(), nullptr, nullptr, w.csum,
                       w.cmax, idx ? w.cidx : nullptr, nullptr, nullptr, nullptr);
      channel_gate(n, w.csum, w.cmax, cidx, w.h);
      if (st.arr == kChannelSpatial) {
        const T* chb = gated(w, mcp + n * C);
        spatial_logits(n, w, xn, w.chs, chb);
      }
    } else if (st.arr == kParallel) {
      T* mp = mapsp + n * 2 * HW;
      pool_sample<T>(S, xn, st.ones_c.data(), st.ones_p.data(), nullptr, nullptr, w.csum,
                     w.cmax, idx ? w.cidx : nullptr, mp + HW, mp, idx ? icp + n * HW : nullptr);
      channel_gate(n, w.csum, w.cmax, cidx, w.h);
      const T inv = T(1) / T(C);
      for (idx_t p = 0; p < HW; ++p) mp[HW + p] *= inv;
      st.conv.forward(mp, st.cw, sp + n * HW, w.cbuf);
      sample_moments(sp + n * HW, HW, &s_mean[n], &s_m2[n]);
    } else {  // spatial-channel: the spatial map comes first
      spatial_logits(n, w, xn, st.ones_c.data(), nullptr);
    }
  };
  std::vector<double> aff;  // the spatial gate's {A, B, mean, invstd, unbiased var}
  auto phase2 = [&](idx_t n, idx_t wk) {
    FwdScratch<T>& w = work[wk];
    const T* xn = xp + n * C * HW;
    const T* ps = st.ones_p.data();
    if (spatial) {
      const GateAffine<T> ga = gate_affine<T>(aff.data());
      sigmoid_map(sp + n * HW, HW, ga.a, ga.c, ga.b, w.ms);
      ps = w.ms;
    }
    if (st.arr == kSpatialChannel) {
      pool_sample<T>(S, xn, st.ones_c.data(), w.ms, nullptr, nullptr, w.csum, w.cmax,
                     idx ? w.cidx : nullptr, nullptr, nullptr, nullptr);
      channel_gate(n, w.csum, w.cmax, idx ? w.cidx : nullptr, w.h);
    }
    const T* chb = gated(w, mcp + n * C);
    const idx_t off = n * C * HW;
    scale_sample(S, xn, yp + off, w.chs, ps, chb, hpiv, scp ? scp + off : nullptr, a.relu);
  };

  // Loops in alternating directions: each starts on the samples the last one left in cache.
  int loops = 0;
  auto run = [&](auto&& body) { for_each_sample(N, body, loops++ % 2 == 1); };
  if (head == kHeadBatch) run(head_pass);
  if (head) head_affine();
  const bool sync = spatial && a.norm && a.batch_stats;
  if (!sync) {
    if (spatial)
      aff = spatial_affine<T>(a.norm, nullptr, a.conv_b, a.bn_w, a.bn_b, a.rm, a.rv, a.eps);
    run([&](idx_t n, idx_t wk) {
      phase1(n, wk);
      phase2(n, wk);
    });
  } else {
    run(phase1);
    const Moments mo = combine_moments(s_mean.data(), s_m2.data(), N, HW);
    aff = spatial_affine<T>(a.norm, &mo, a.conv_b, a.bn_w, a.bn_b, a.rm, a.rv, a.eps);
    run(phase2);
  }
  if (aff.empty()) aff = {1.0, 0.0, 0.0, 1.0, 0.0};
  // stats {A, B, mean, invstd} for backward; batch {mean, unbiased var} for running stats.
  at::Tensor batch = at::tensor(std::vector<double>{aff[2], aff[4]}, opt.dtype(at::kDouble));
  aff.pop_back();
  at::Tensor stats = at::tensor(aff, opt.dtype(at::kDouble));
  return {y, mc, v, ihw, maps, ic, s, stats, batch.to(x.scalar_type()), hstats, hbatch, zsum};
}

}  // namespace

std::vector<at::Tensor> cbam_forward(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const OptTensor& conv_w, const OptTensor& conv_b, const OptTensor& bn_w,
    const OptTensor& bn_b, const OptTensor& running_mean, const OptTensor& running_var,
    int64_t arrangement, bool use_avg, bool use_max, bool norm, bool batch_stats, double eps,
    const OptTensor& shortcut, bool relu, int64_t head, const OptTensor& head_w,
    const OptTensor& head_b, const OptTensor& head_rm, const OptTensor& head_rv,
    double head_eps, bool need_idx) {
  check_args(x, {w1, b1, w2, b2}, conv_w, arrangement, use_avg, use_max);
  check_tail_head(x, shortcut, arrangement, head, {head_w, head_b, head_rm, head_rv});
  TORCH_CHECK(head != kHeadRunning || (defined(head_rm) && defined(head_rv)),
              "fused CBAM: a BatchNorm with running statistics needs them");
  FwdArgs a{.norm = norm,
            .batch_stats = batch_stats,
            .eps = eps,
            .conv_b = conv_b,
            .bn_w = bn_w,
            .bn_b = bn_b,
            .rm = running_mean,
            .rv = running_var,
            .shortcut = opt_or_null(shortcut),
            .relu = relu,
            .head = static_cast<int>(head),
            .head_w = head_w,
            .head_b = head_b,
            .head_rm = head_rm,
            .head_rv = head_rv,
            .head_eps = head_eps,
            .need_idx = need_idx};
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_forward", [&] {
    Setup<scalar_t> st(x, w1, b1, w2, b2, conv_w, arrangement, use_avg, use_max);
    out = forward_impl<scalar_t>(x, st, a);
  });
  return out;
}

}  // namespace convattn
