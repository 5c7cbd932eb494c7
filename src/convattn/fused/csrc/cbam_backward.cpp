// Fused CBAM backward: see fused_cbam.cpp for the plan of passes.
#include "cbam.h"

namespace convattn {
namespace {

// Per-worker scratch of the backward loops.
template <typename T>
struct BwdScratch {
  std::vector<T> buf;
  std::vector<double> wide;  // the gate sums' scattered max entries, in double
  T *ms, *t, *gsbn, *sc, *G, *gm, *dmc, *gva, *gvm, *tc, *chs, *chb, *zs, *os, *h, *gr, *ghs;
  T* cbuf;
  BwdScratch(idx_t C, idx_t HW, idx_t Hd, int P, idx_t conv_scratch)
      : buf(9 * HW + 9 * C + 2 * P * Hd + 2 * Hd + conv_scratch), wide(6 * C) {
    T* q = buf.data();
    auto take = [&q](idx_t n) {
      T* r = q;
      q += n;
      return r;
    };
    ms = take(HW), t = take(HW), gsbn = take(HW), sc = take(HW), G = take(2 * HW);
    gm = take(3 * HW);
    dmc = take(C), gva = take(C), gvm = take(C), tc = take(C), chs = take(C), chb = take(C);
    zs = take(C), os = take(C), h = take(P * Hd), gr = take(Hd + C), ghs = take(P * Hd + Hd);
    cbuf = take(conv_scratch);
  }
};

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& g, const at::Tensor& x,
                                      const Setup<T>& st, const BwdArgs& a) {
  const Slab& S = st.S;
  const idx_t N = st.N, C = S.C, HW = S.HW, Hd = st.Hd;
  const int P = st.P, k = st.k, arr = st.arr, head = a.head;
  const bool spatial = arr != kChannel;
  const bool sync = spatial && a.norm && a.batch_stats;  // batch-wide spatial BatchNorm
  const bool hsync = head == kHeadBatch;                  // batch-wide BatchNorm in front
  const bool cs_sync = sync && arr == kChannelSpatial;
  const bool need_gx = a.need_gx;
  auto opt = x.options();
  at::Tensor gx = need_gx ? empty_output_like(x) : at::empty({0}, opt);
  at::Tensor gsc = a.relu ? empty_output_like(x) : at::empty({0}, opt);
  at::Tensor glogit = at::empty({N, C}, opt);
  at::Tensor rsum = at::empty({N, Hd}, opt);
  at::Tensor gh = at::empty({P, N, Hd}, opt);
  const T* gp = g.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* outp = a.relu ? a.out->data_ptr<T>() : nullptr;
  T* gxp = need_gx ? gx.data_ptr<T>() : nullptr;
  T* gscp = a.relu ? gsc.data_ptr<T>() : nullptr;
  const T* mcp = a.mc.data_ptr<T>();
  const T* vp = a.v.data_ptr<T>();
  const int32_t* ihwp = a.ihw.data_ptr<int32_t>();
  const T* mapsp = a.maps.data_ptr<T>();
  const int32_t* icp = a.ic.data_ptr<int32_t>();
  const T* sp = a.s.data_ptr<T>();
  T* glp = glogit.data_ptr<T>();
  T* rsp = rsum.data_ptr<T>();
  T* ghp = gh.data_ptr<T>();
  const double* aff = a.stats.data_ptr<double>();
  const GateAffine<T> ga = gate_affine<T>(aff);  // the forward's logit a (s - c) + b
  const T A = ga.a;
  const T invC = T(1) / T(C), invHW = T(1) / T(HW);
  const T* one_c = st.ones_c.data();
  const T* one_p = st.ones_p.data();
  const T* zero_c = st.zeros_c.data();
  const T* zero_p = st.zeros_p.data();

  // The folded BatchNorm in front, centred as in the forward: x = ha (z - hm) + hb, and
  // gz = ha gx + k1 (z - hm) + k0.
  std::vector<T> ha(head ? C : 0), hb(head ? C : 0), hm(head ? C : 0);
  std::vector<T> k0(head ? C : 0), k1(head ? C : 0);
  std::vector<double> mu(head ? C : 0), invstd(head ? C : 0);
  if (head) {
    const double* hs = a.hstats->data_ptr<double>();
    const T* gam = ptr_or_null<T>(a.head_w);
    const T* bet = ptr_or_null<T>(a.head_b);
    for (idx_t c = 0; c < C; ++c) {
      mu[c] = hs[c];
      invstd[c] = hs[C + c];
      const double sc = (gam ? double(gam[c]) : 1.0) * invstd[c];
      hm[c] = T(mu[c]);
      ha[c] = T(sc);
      hb[c] = T((bet ? double(bet[c]) : 0.0) - (mu[c] - double(hm[c])) * sc);
    }
  }
  const T* hpiv = head ? hm.data() : nullptr;
  const T* zsump = head ? a.zsum->data_ptr<T>() : nullptr;

  // Buffers that cross from one per-sample loop to the next.
  std::vector<T> gs_all(spatial ? N * HW : 0);        // d loss / d (A s + B)
  std::vector<T> s2_all(N * C), s1_all(head ? N * C : 0);  // sum_p gy x ms, sum_p gy ms
  std::vector<T> gv_all(2 * N * C);                   // pooled-vector gradients (avg, max)
  std::vector<T> zs_all(cs_sync ? 3 * N * C : 0), os_all(cs_sync && head ? 3 * N * C : 0);
  std::vector<T> G_all(cs_sync ? 4 * N * HW : 0);     // conv_transpose of gs and of s
  std::vector<T> Gm_all(hsync && spatial ? 2 * N * HW : 0);  // the pooling maps' gradient
  std::vector<double> gs_sum(spatial ? 2 * N : 0);    // per sample: sum gs, sum gs s_hat
  std::vector<double> hsum(head ? 2 * N * C : 0);     // per sample: sum_p gx, sum_p gx z
  const idx_t nw = num_workers(N);
  std::vector<BwdScratch<T>> work;
  for (idx_t i = 0; i < nw; ++i) work.emplace_back(C, HW, Hd, P, st.conv.scratch());
  std::vector<double> gw_acc(spatial ? N * 2 * k * k : 0, 0.0);  // per sample: deterministic
  // conv_transpose of a map of ones: the BatchNorm mean term, the same for every sample.
  std::vector<T> g_ones(cs_sync ? 2 * HW : 0);
  if (cs_sync) st.conv.backward_input(one_p, st.cw, g_ones.data(), work[0].cbuf);
  double cb = 0, cs = 0;  // the normalised logit gradient is A gs + cb + cs (s - c)

  auto gy_of = [&](idx_t n) { return a.relu ? gscp + n * C * HW : gp + n * C * HW; };
  // MLP backward of sample n from d loss / d mc into w.gva, w.gvm (and gv_all); stores the
  // pieces of the MLP's parameter gradients (glogit, sum_p relu(h_p), gh).
  auto mlp_bwd = [&](idx_t n, const T* dmc, BwdScratch<T>& w) {
    const T* vs[2] = {vp + (st.avg_slot() * N + n) * C, vp + (st.max_slot() * N + n) * C};
    mlp_forward(st.mlp, vs, P, w.h, rsp + n * Hd, w.gr + Hd);  // recompute h
    T* gvs[2] = {st.avg ? w.gva : w.gvm, w.gvm};
    mlp_backward(st.mlp, P, w.h, mcp + n * C, dmc, glp + n * C, w.gr, w.ghs, gvs);
    for (int q = 0; q < P; ++q)
      std::copy(w.ghs + q * Hd, w.ghs + (q + 1) * Hd, ghp + (q * N + n) * Hd);
    if (!st.avg) std::fill(w.gva, w.gva + C, T(0));
    if (!st.mx) std::fill(w.gvm, w.gvm + C, T(0));
    std::copy(w.gva, w.gva + C, gv_all.data() + n * 2 * C);
    std::copy(w.gvm, w.gvm + C, gv_all.data() + n * 2 * C + C);
  };
  // x-weighted sums of the pooling maps' gradients G_j (max map, then mean map), which the
  // channel gate gets: zs[j][c] = sum_p x G_j[HW + p] / C + sum_{p: ic[p] = c} x G_j[p]
  // (x = z - hm with a folded BatchNorm) and, with one, the unweighted sums os[j][c]. One
  // channel may hold the max at most positions: its entries are summed in double.
  auto gate_sums = [&](idx_t n, int Jn, const T* const* Gs, T* const* zs, T* const* os,
                       BwdScratch<T>& w) {
    const T* xn = xp + n * C * HW;
    const T* wts[3];
    for (int j = 0; j < Jn; ++j) {
      T* gm = w.gm + j * HW;
      for (idx_t p = 0; p < HW; ++p) gm[p] = Gs[j][HW + p] * invC;
      wts[j] = gm;
    }
    wsum_over_pos(S, xn, Jn, wts, hpiv, zs);
    const int32_t* icn = icp + n * HW;
    double* zd = w.wide.data();
    double* od = zd + 3 * C;
    for (int j = 0; j < Jn; ++j) {
      double tot = 0;
      for (idx_t p = 0; os && p < HW; ++p) tot += double(wts[j][p]);
      for (idx_t c = 0; c < C; ++c) zd[j * C + c] = double(zs[j][c]), od[j * C + c] = tot;
    }
    for (idx_t p = 0; p < HW; ++p) {
      const idx_t c = icn[p];
      const double xv = double(xn[S.at(c, p)]) - (hpiv ? double(hpiv[c]) : 0.0);
      for (int j = 0; j < Jn; ++j) {
        zd[j * C + c] += xv * double(Gs[j][p]);
        od[j * C + c] += double(Gs[j][p]);
      }
    }
    for (int j = 0; j < Jn; ++j)
      for (idx_t c = 0; c < C; ++c) {
        zs[j][c] = T(zd[j * C + c]);
        if (os) os[j][c] = T(od[j * C + c]);
      }
  };
  // The per-channel factors of the gated map x mc = (z - hm) chs + chb (cs arrangement).
  auto gated = [&](idx_t n, BwdScratch<T>& w) -> const T* {
    return gated_factors(C, mcp + n * C, head ? ha.data() : nullptr, hb.data(), w.chs, w.chb);
  };

  // ---- stage A: the reductions over gy and x, and all that needs no batch sums ---------
  auto stage_a = [&](idx_t n, idx_t wk) {
    BwdScratch<T>& w = work[wk];
    const idx_t off = n * C * HW;
    if (a.relu) relu_mask(gp + off, outp + off, gscp + off, C * HW);
    const T* gy = gy_of(n);
    const T* xn = xp + off;
    T* s2 = s2_all.data() + n * C;
    T* s1 = head ? s1_all.data() + n * C : nullptr;
    if (!spatial) {
      reduce_sample<T>(S, gy, xn, one_c, one_p, nullptr, hpiv, s2, s1, nullptr);
      return;
    }
    sigmoid_map(sp + n * HW, HW, ga.a, ga.c, ga.b, w.ms);
    const T* chb = gated(n, w);
    reduce_sample<T>(S, gy, xn, w.chs, w.ms, chb, hpiv, s2, s1, w.t);
    if (arr != kChannelSpatial) mlp_bwd(n, s2, w);  // the channel gate's input is x1 or x
    if (arr == kSpatialChannel) {  // x1 = x ms: the channel gate adds to d loss / d ms
      for (idx_t c = 0; c < C; ++c) w.tc[c] = w.gva[c] * invHW;
      T* u = w.gsbn;  // sum_c x (d loss / d x1 without the gy mc term)
      wsum_over_ch(S, xn, w.tc, u);
      if (st.mx) {
        const int32_t* ih = ihwp + n * C;
        for (idx_t c = 0; c < C; ++c) u[ih[c]] += xn[S.at(c, ih[c])] * w.gvm[c];
      }
      for (idx_t p = 0; p < HW; ++p) w.t[p] += u[p];
    }
    T* gs = gs_all.data() + n * HW;
    const T* sn = sp + n * HW;
    double g1 = 0, g2 = 0;
    for (idx_t p = 0; p < HW; ++p) {
      gs[p] = w.t[p] * w.ms[p] * (T(1) - w.ms[p]);
      g1 += double(gs[p]);
      g2 += double(gs[p]) * (double(sn[p]) - aff[2]) * aff[3];
    }
    gs_sum[2 * n] = g1;
    gs_sum[2 * n + 1] = g2;
    if (cs_sync) {  // the x-weighted sums of the components gs, 1 and s - c
      T* G0 = G_all.data() + n * 4 * HW;
      T* G2 = G0 + 2 * HW;
      st.conv.backward_input(gs, st.cw, G0, w.cbuf);
      for (idx_t p = 0; p < HW; ++p) w.sc[p] = sn[p] - ga.c;
      st.conv.backward_input(w.sc, st.cw, G2, w.cbuf);
      const T* Gs[3] = {G0, g_ones.data(), G2};
      T* zs[3] = {zs_all.data() + n * C, zs_all.data() + (N + n) * C,
                  zs_all.data() + (2 * N + n) * C};
      T* os[3] = {nullptr, nullptr, nullptr};
      if (head)
        for (int j = 0; j < 3; ++j) os[j] = os_all.data() + (j * N + n) * C;
      gate_sums(n, 3, Gs, zs, head ? os : nullptr, w);
    }
  };

  // ---- stage F: what needs the spatial BatchNorm's batch sums (small tensors only) ------
  // Leaves the pooling maps' gradient in w.G (max map, then mean map / C).
  auto stage_f = [&](idx_t n, idx_t wk) {
    BwdScratch<T>& w = work[wk];
    const T* mcn = mcp + n * C;
    const T* s2 = s2_all.data() + n * C;
    const T* s1 = head ? s1_all.data() + n * C : nullptr;
    T* ZS = w.zs;  // sum_p z dL/dx1 (pooling part), and unweighted (OS)
    T* OS = w.os;
    std::fill(ZS, ZS + C, T(0));
    std::fill(OS, OS + C, T(0));
    if (spatial) {
      const T* sn = sp + n * HW;
      const T* gs = gs_all.data() + n * HW;
      for (idx_t p = 0; p < HW; ++p) w.gsbn[p] = A * gs[p] + T(cb) + T(cs) * (sn[p] - ga.c);
      st.conv.backward_weight(mapsp + n * 2 * HW, w.gsbn, gw_acc.data() + n * 2 * k * k, w.cbuf);
      if (cs_sync) {  // conv_transpose is linear: combine the stored components
        const T* G0 = G_all.data() + n * 4 * HW;
        const T* G2 = G0 + 2 * HW;
        const T* G1 = g_ones.data();
        for (idx_t p = 0; p < 2 * HW; ++p) w.G[p] = A * G0[p] + T(cb) * G1[p] + T(cs) * G2[p];
        const T coef[3] = {A, T(cb), T(cs)};
        for (int j = 0; j < 3; ++j) {
          const T* zj = zs_all.data() + (j * N + n) * C;
          const T* oj = head ? os_all.data() + (j * N + n) * C : nullptr;
          for (idx_t c = 0; c < C; ++c) {
            ZS[c] += coef[j] * zj[c];
            if (oj) OS[c] += coef[j] * oj[c];
          }
        }
      } else {
        st.conv.backward_input(w.gsbn, st.cw, w.G, w.cbuf);
        if (arr == kChannelSpatial) {
          const T* Gs[1] = {w.G};
          T* zs[1] = {ZS};
          T* os[1] = {OS};
          gate_sums(n, 1, Gs, zs, head ? os : nullptr, w);
        }
      }
      for (idx_t p = 0; p < HW; ++p) w.G[HW + p] *= invC;
    }
    if (arr == kChannel || arr == kChannelSpatial) {  // d loss / d mc, then the MLP
      for (idx_t c = 0; c < C; ++c)
        w.dmc[c] = head ? ha[c] * (s2[c] + ZS[c]) + hb[c] * (s1[c] + OS[c]) : s2[c] + ZS[c];
      mlp_bwd(n, w.dmc, w);
    }
    if (hsync && spatial) std::copy(w.G, w.G + 2 * HW, Gm_all.data() + n * 2 * HW);
    if (!head) return;
    // sum_p gx and sum_p gx z per channel (gx: the gradient at the BatchNorm's output).
    const T* gva = gv_all.data() + n * 2 * C;
    const T* gvm = gva + C;
    const T* zn = xp + n * C * HW;
    const T* zsn = zsump + n * C;
    const int32_t* ih = ihwp + n * C;
    double* h1 = hsum.data() + n * 2 * C;
    double* h2 = h1 + C;
    for (idx_t c = 0; c < C; ++c) {  // centred at hm, as zsum
      const double m = double(mcn[c]);
      const double zmax = st.mx ? double(zn[S.at(c, ih[c])]) - double(hm[c]) : 0.0;
      h1[c] = m * (double(s1[c]) + double(OS[c])) + double(gva[c]) + double(gvm[c]);
      h2[c] = m * (double(s2[c]) + double(ZS[c])) + double(gva[c]) * double(invHW) * zsn[c] +
              double(gvm[c]) * zmax;
    }
  };

  // ---- stage C: the input gradient -------------------------------------------------------
  auto stage_c = [&](idx_t n, idx_t wk) {
    if (!need_gx) return;
    BwdScratch<T>& w = work[wk];
    const idx_t off = n * C * HW;
    const T* gy = gy_of(n);
    T* out = gxp + off;
    const T* mcn = mcp + n * C;
    const T* gva = gv_all.data() + n * 2 * C;
    const T* gvm = gva + C;
    const T* G = hsync && spatial ? Gm_all.data() + n * 2 * HW : w.G;
    const T* gmax = G;
    const T* gmean = G + HW;  // already / C
    if (spatial) sigmoid_map(sp + n * HW, HW, ga.a, ga.c, ga.b, w.ms);
    const T* ms = spatial ? w.ms : one_p;
    const int32_t* ih = ihwp + n * C;
    const int32_t* icn = icp + n * HW;
    if (arr == kChannel || arr == kChannelSpatial) {
      // gx = gy mc ms + mc gmean + gva / HW (+ max entries); with the BatchNorm in front,
      // gz = ha gx + k1 z + k0.
      T* U = w.chs;
      T* D = w.tc;
      for (idx_t c = 0; c < C; ++c) {
        const T sc = head ? ha[c] : T(1);
        U[c] = sc * mcn[c];
        D[c] = sc * gva[c] * invHW + (head ? k0[c] : T(0));
      }
      const bool cs_arr = arr == kChannelSpatial;
      write_sample(S, gy, out, U, ms, cs_arr ? U : zero_c, cs_arr ? gmean : zero_p, D, zero_p,
                   hsync ? xp + off : nullptr, hsync ? k1.data() : nullptr, hpiv);
      if (st.mx)
        for (idx_t c = 0; c < C; ++c) out[S.at(c, ih[c])] += (head ? ha[c] : T(1)) * gvm[c];
      if (cs_arr)
        for (idx_t p = 0; p < HW; ++p) out[S.at(icn[p], p)] += gmax[p] * U[icn[p]];
      return;
    }
    for (idx_t c = 0; c < C; ++c) w.tc[c] = gva[c] * invHW;
    if (arr == kSpatialChannel) {
      write_sample(S, gy, out, mcn, ms, w.tc, ms, zero_c, gmean);
      if (st.mx)
        for (idx_t c = 0; c < C; ++c) out[S.at(c, ih[c])] += gvm[c] * ms[ih[c]];
    } else {  // parallel
      write_sample(S, gy, out, mcn, ms, zero_c, zero_p, w.tc, gmean);
      if (st.mx)
        for (idx_t c = 0; c < C; ++c) out[S.at(c, ih[c])] += gvm[c];
    }
    for (idx_t p = 0; p < HW; ++p) out[S.at(icn[p], p)] += gmax[p];
  };

  // ---- the loops and the batch-wide sums between them ------------------------------------
  int loops = 0;
  auto run = [&](auto&& body) { for_each_sample(N, body, loops++ % 2 == 1); };
  // A (gs - mean(gs) - s_hat mean(gs s_hat)), s_hat = (s - mean) invstd = (s - c + c - mean)
  // invstd: the logit gradient's affine part in s - c.
  auto spatial_sums = [&] {
    if (!sync) return;
    double s1 = 0, s2 = 0;
    for (idx_t n = 0; n < N; ++n) s1 += gs_sum[2 * n], s2 += gs_sum[2 * n + 1];
    const double M = double(N * HW), inv = aff[3];
    cs = -aff[0] * (s2 / M) * inv;
    cb = -aff[0] * s1 / M + cs * (double(ga.c) - aff[2]);
  };
  std::vector<double> hg(head ? 2 * C : 0);  // sum gx, sum gx z_hat over the batch
  auto head_sums = [&] {
    for (idx_t c = 0; c < C; ++c) {  // t2 = sum gx (z - hm)
      double t1 = 0, t2 = 0;
      for (idx_t n = 0; n < N; ++n) t1 += hsum[n * 2 * C + c], t2 += hsum[n * 2 * C + C + c];
      const double shift = mu[c] - double(hm[c]);
      hg[c] = t1;
      hg[C + c] = (t2 - shift * t1) * invstd[c];
      if (hsync) {  // gz = ha (gx - mean(gx) - z_hat mean(gx z_hat))
        const double M = double(N * HW), m1 = t1 / M, m2 = hg[C + c] / M;
        const double kz = -double(ha[c]) * invstd[c] * m2;
        k1[c] = T(kz);
        k0[c] = T(-double(ha[c]) * m1 - kz * shift);
      }
    }
  };
  if (!sync && !hsync) {
    run([&](idx_t n, idx_t wk) {
      stage_a(n, wk);
      stage_f(n, wk);
      stage_c(n, wk);
    });
  } else if (!hsync) {
    run(stage_a);
    spatial_sums();
    run([&](idx_t n, idx_t wk) {
      stage_f(n, wk);
      stage_c(n, wk);
    });
  } else {
    if (sync) {
      run(stage_a);
      spatial_sums();
      run(stage_f);
    } else {
      run([&](idx_t n, idx_t wk) {
        stage_a(n, wk);
        stage_f(n, wk);
      });
    }
    head_sums();
    if (need_gx) run(stage_c);
  }
  if (head && !hsync) head_sums();

  // BatchNorm (or conv bias) gradients of the spatial branch.
  auto none = [&opt] { return at::empty({0}, opt); };  // distinct: outputs never alias
  at::Tensor gconv_b = none(), gbn_w = none(), gbn_b = none(), gconv_w = none();
  at::Tensor ghead_w = none(), ghead_b = none();
  if (spatial) {
    double s1 = 0, s2 = 0;
    for (idx_t n = 0; n < N; ++n) s1 += gs_sum[2 * n], s2 += gs_sum[2 * n + 1];
    if (a.norm) {
      gbn_b = at::full({1}, s1, opt);
      gbn_w = at::full({1}, s2, opt);
    } else {
      gconv_b = at::full({1}, s1, opt);
    }
  }
  if (head) {
    ghead_b = at::tensor(std::vector<double>(hg.begin(), hg.begin() + C), opt.dtype(at::kDouble))
                  .to(x.scalar_type());
    ghead_w = at::tensor(std::vector<double>(hg.begin() + C, hg.end()), opt.dtype(at::kDouble))
                  .to(x.scalar_type());
  }
  // Parameter gradients of the MLP and the conv, from the per-sample pieces (plain loops:
  // these products are tiny, and a BLAS call right after the loops costs milliseconds; a
  // parallel region only pays off for large ones).
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
  auto batch_sum = [](const T* rows, idx_t Q, idx_t b, double scale, T* out) {  // in double
    std::vector<double> acc(b, 0.0);
    for (idx_t q = 0; q < Q; ++q)
      for (idx_t j = 0; j < b; ++j) acc[j] += double(rows[q * b + j]);
    for (idx_t j = 0; j < b; ++j) out[j] = T(scale * acc[j]);
  };
  batch_sum(ghp, P * N, Hd, 1.0, gb1.data_ptr<T>());
  batch_sum(glp, N, C, double(P), gb2.data_ptr<T>());
  if (spatial) {
    std::vector<double> acc(2 * k * k, 0.0);
    for (idx_t i = 0; i < N; ++i)
      for (int j = 0; j < 2 * k * k; ++j) acc[j] += gw_acc[i * 2 * k * k + j];
    gconv_w = at::tensor(acc, opt.dtype(at::kDouble)).to(x.scalar_type()).view({1, 2, k, k});
  }
  return {gx, gw1, gb1, gw2, gb2, gconv_w, gconv_b, gbn_w, gbn_b, gsc, ghead_w, ghead_b};
}

}  // namespace

std::vector<at::Tensor> cbam_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2, const OptTensor& conv_w, const at::Tensor& mc,
    const at::Tensor& v, const at::Tensor& idx_hw, const at::Tensor& maps,
    const at::Tensor& idx_c, const at::Tensor& s, const at::Tensor& stats, int64_t arrangement,
    bool use_avg, bool use_max, bool norm, bool batch_stats, bool need_gx, const OptTensor& out,
    bool relu, int64_t head, const OptTensor& head_w, const OptTensor& head_b,
    const OptTensor& hstats, const OptTensor& zsum) {
  check_args(x, {w1, b1, w2, b2}, conv_w, arrangement, use_avg, use_max);
  TORCH_CHECK(g.sizes() == x.sizes() && g.strides() == x.strides() &&
                  g.scalar_type() == x.scalar_type(),
              "fused CBAM: the gradient must have the input's layout");
  check_tail_head(x, relu ? out : OptTensor(), arrangement, head, {head_w, head_b});
  TORCH_CHECK(!relu || defined(out), "fused CBAM: the ReLU's backward needs the output");
  TORCH_CHECK(!head || (defined(hstats) && defined(zsum)),
              "fused CBAM: the folded BatchNorm's backward needs its statistics");
  BwdArgs a{.norm = norm,
            .batch_stats = batch_stats,
            .need_gx = need_gx,
            .relu = relu,
            .head = static_cast<int>(head),
            .mc = mc,
            .v = v,
            .ihw = idx_hw,
            .maps = maps,
            .ic = idx_c,
            .s = s,
            .stats = stats,
            .out = opt_or_null(out),
            .head_w = head_w,
            .head_b = head_b,
            .hstats = opt_or_null(hstats),
            .zsum = opt_or_null(zsum)};
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_backward", [&] {
    Setup<scalar_t> st(x, w1, b1, w2, b2, conv_w, arrangement, use_avg, use_max);
    res = backward_impl<scalar_t>(g, x, st, a);
  });
  return res;
}

}  // namespace convattn
