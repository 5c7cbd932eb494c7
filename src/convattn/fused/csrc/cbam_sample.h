// Sample-level helpers shared by the fused CBAM forward and backward: the sample-as-matrix
// view (`Slab`), the per-sample worker loop, the channel/position wrappers of the
// primitives in cbam_kernels.h, the parameter set-up and the spatial gate's affine map.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cbam_kernels.h"

namespace convattn {

enum Arrangement : int64_t {
  kChannel = 0,
  kChannelSpatial = 1,
  kSpatialChannel = 2,
  kParallel = 3,
};

// The BatchNorm folded in front of the attention (the block's last BatchNorm): none, in
// evaluation form (running statistics) or with batch statistics.
enum HeadMode : int {
  kHeadNone = 0,
  kHeadRunning = 1,
  kHeadBatch = 2,
};

// One sample as a matrix: rows are channels (NCHW) or positions (NHWC, `cl`).
struct Slab {
  idx_t C, HW;
  bool cl;
  idx_t R() const { return cl ? HW : C; }
  idx_t K() const { return cl ? C : HW; }
  idx_t at(idx_t c, idx_t p) const { return cl ? p * C + c : c * HW + p; }
};

inline idx_t num_workers(idx_t n) {
  return std::max<idx_t>(1, std::min<idx_t>(at::get_num_threads(), n));
}

// A new tensor-sized output is written exactly once, and most of that write's cost is
// page faults on 4 KiB pages; where transparent huge pages are available on request
// (Linux "madvise" mode), ask for them on the output's untouched pages. Advice only:
// nothing changes where it is refused.
inline at::Tensor empty_output_like(const at::Tensor& x) {
  at::Tensor y = at::empty_like(x);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t(1) << 21;
  if (y.nbytes() >= 4 * huge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(y.data_ptr());
    const uintptr_t lo = (p + huge - 1) & ~(huge - 1);
    const uintptr_t hi = (p + y.nbytes()) & ~(huge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  return y;
}

// Whether the sample loops run on ATen's inter-op pool instead of the intra-op (OpenMP)
// team: CONVATTN_INTEROP_POOL=1, read once.
inline bool use_interop_pool() {
  static const bool on = [] {
    const char* v = std::getenv("CONVATTN_INTEROP_POOL");
    return v != nullptr && v[0] == '1';
  }();
  return on;
}

// body(n, worker) for every sample, workers taking the next free sample (an atomic counter,
// so uneven samples balance). A loop that follows another one over the same samples runs
// `reverse`d: its first samples are the ones the previous loop left in the last-level cache.
//
// By default the workers are ATen's intra-op team (at::parallel_for, one worker per
// thread): inside a network these are the threads the convolutions and BatchNorms just
// used, still spinning and ready, so the loop starts on every core at once. (With tasks on
// the inter-op pool, the other choice, a CIFAR ResNet-20 + CBAM training step measured 1.33x
// the plain network's instead of 1.10x: they wait for the intra-op team's spinning threads
// to give up the cores; see BENCHMARKS.md.) With
// CONVATTN_INTEROP_POOL=1 the calling thread is worker 0 and starts at once, and helpers on
// the inter-op pool join when they get a core; the caller never waits for one that has not
// started, so on cores shared with other processes a descheduled helper costs at most the
// sample it holds, where the intra-op team waits at its barrier for every member.
template <typename F>
void for_each_sample(idx_t N, F&& body, bool reverse = false) {
  const idx_t nw = num_workers(N);
  struct Shared {
    std::atomic<idx_t> next{0};
    std::mutex m;
    std::condition_variable done;
    int active = 0;  // helpers inside the loop (guarded by m)
    bool closed = false;  // no helper may join any more (guarded by m)
    std::exception_ptr error;
  };
  auto sh = std::make_shared<Shared>();
  auto loop = [&](idx_t wk) {
    for (idx_t i = sh->next++; i < N; i = sh->next++) body(reverse ? N - 1 - i : i, wk);
  };
  if (nw > 1 && !at::in_parallel_region() && !use_interop_pool()) {
    at::parallel_for(0, nw, 1, [&](idx_t b, idx_t e) {
      for (idx_t wk = b; wk < e; ++wk) loop(wk);
    });
    return;
  }
  std::function<void(idx_t)> run = loop;  // helpers touch it only while the caller waits
  const std::function<void(idx_t)>* runp = &run;
  if (nw > 1 && !at::in_parallel_region()) {
    for (idx_t wk = 1; wk < nw; ++wk) {
      at::launch([sh, runp, wk] {
        {
          std::lock_guard<std::mutex> lock(sh->m);
          if (sh->closed) return;
          ++sh->active;
        }
        try {
          (*runp)(wk);
        } catch (...) {
          std::lock_guard<std::mutex> lock(sh->m);
          sh->error = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(sh->m);
        if (--sh->active == 0) sh->done.notify_all();
      });
    }
  }
  loop(0);
  std::unique_lock<std::mutex> lock(sh->m);
  sh->closed = true;
  sh->done.wait(lock, [&] { return sh->active == 0; });
  if (sh->error) std::rethrow_exception(sh->error);
}

// Per-channel factors of a channel-gated map behind a folded BatchNorm x = ha (z - hm) + hb:
// x cs[c] = (z - hm[c]) chs[c] + chb[c]. Without the BatchNorm (ha == nullptr) chs = cs and
// there is no shift: returns chb, or nullptr when there is none.
template <typename T>
const T* gated_factors(idx_t C, const T* cs, const T* ha, const T* hb, T* chs, T* chb) {
  if (ha == nullptr) {
    std::copy(cs, cs + C, chs);
    return nullptr;
  }
  for (idx_t c = 0; c < C; ++c) {
    chs[c] = ha[c] * cs[c];
    chb[c] = hb[c] * cs[c];
  }
  return chb;
}

// Pools e = (x - pc[c]) cs[c] ps[p] + chb[c] (pc, chb: optional per-channel pivot and
// shift) over positions (per-channel outputs ch_*) and/or over channels (per-position
// outputs pos_*); pass nullptr for the set that is not wanted, and for index outputs nobody
// needs.
template <typename T>
void pool_sample(const Slab& S, const T* x, const T* cs, const T* ps, const T* chb, const T* pc,
                 T* ch_sum, T* ch_max, int32_t* ch_idx, T* pos_sum, T* pos_max, int32_t* pos_idx) {
  const T* ru = S.cl ? ps : cs;
  const T* cv = S.cl ? cs : ps;
  const T* rb = S.cl ? nullptr : chb;
  const T* cb = S.cl ? chb : nullptr;
  const T* rp = S.cl ? nullptr : pc;
  const T* cp = S.cl ? pc : nullptr;
  T* rs = S.cl ? pos_sum : ch_sum;
  T* rm = S.cl ? pos_max : ch_max;
  int32_t* ri = S.cl ? pos_idx : ch_idx;
  T* cs_ = S.cl ? ch_sum : pos_sum;
  T* cm = S.cl ? ch_max : pos_max;
  int32_t* ci = S.cl ? ch_idx : pos_idx;
  if (rs && cs_)
    pool<T, true, true>(x, S.R(), S.K(), ru, cv, rb, cb, rp, cp, rs, rm, ri, cs_, cm, ci);
  else if (rs)
    pool<T, true, false>(x, S.R(), S.K(), ru, cv, rb, cb, rp, cp, rs, rm, ri, cs_, cm, ci);
  else
    pool<T, false, true>(x, S.R(), S.K(), ru, cv, rb, cb, rp, cp, rs, rm, ri, cs_, cm, ci);
}

// With q = g and p = g (x - pc[c]): ch_out[c] = sum_p p ps[p], ch_out1[c] = sum_p q ps[p]
// and pos_out[p] = sum_c (p cs[c] + q chb[c]); every output, chb and pc optional.
template <typename T>
void reduce_sample(const Slab& S, const T* g, const T* x, const T* cs, const T* ps,
                   const T* chb, const T* pc, T* ch_out, T* ch_out1, T* pos_out) {
  const T* none = nullptr;
  if (S.cl)  // rows are positions
    reduce_gx(g, x, S.R(), S.K(), ps, cs, none, chb, none, pc, pos_out,
              static_cast<T*>(nullptr), ch_out, ch_out1);
  else
    reduce_gx(g, x, S.R(), S.K(), cs, ps, chb, none, pc, none, ch_out, ch_out1, pos_out,
              static_cast<T*>(nullptr));
}

// out[j][c] = sum_p (x[c, p] - pc[c]) w[j][p] (J position weights -> per-channel sums; pc
// optional).
template <typename T>
void wsum_over_pos(const Slab& S, const T* x, int J, const T* const* w, const T* pc,
                   T* const* out) {
  if (S.cl)
    wsum_cols(x, S.R(), S.K(), J, w, pc, out);
  else
    wsum_rows(x, S.R(), S.K(), J, w, pc, out);
}

// out[p] = sum_c x[c, p] w[c].
template <typename T>
void wsum_over_ch(const Slab& S, const T* x, const T* w, T* out) {
  if (S.cl)
    wsum_rows(x, S.R(), S.K(), 1, &w, static_cast<const T*>(nullptr), &out);
  else
    wsum_cols(x, S.R(), S.K(), 1, &w, static_cast<const T*>(nullptr), &out);
}

// Squared deviations from per-channel means, summed over positions, and (res_c, if not
// nullptr) the deviations' sums.
template <typename T>
void sq_dev_sample(const Slab& S, const T* x, const T* mean_c, T* out_c, T* res_c) {
  sq_dev(x, S.R(), S.K(), mean_c, !S.cl, out_c, res_c);
}

// y[c, p] = g[c, p] Uc[c] Vp[p] + Pc[c] Qp[p] + Dc[c] + Ep[p] (+ (z[c, p] - zp[c]) Zc[c] if
// z).
template <typename T>
void write_sample(const Slab& S, const T* g, T* y, const T* Uc, const T* Vp, const T* Pc,
                  const T* Qp, const T* Dc, const T* Ep, const T* z = nullptr,
                  const T* Zc = nullptr, const T* zp = nullptr) {
  const T* none = nullptr;
  if (S.cl)
    write_grad(g, y, S.R(), S.K(), Vp, Uc, Qp, Pc, Ep, Dc, z, none, none, Zc, zp);
  else
    write_grad(g, y, S.R(), S.K(), Uc, Vp, Pc, Qp, Dc, Ep, z, Zc, zp, none, none);
}

// y[c, p] = ((x - pc[c]) cs[c] + chb[c]) ps[p] (+ sc[c, p]), then ReLU if asked (pc, chb
// optional).
template <typename T>
void scale_sample(const Slab& S, const T* x, T* y, const T* cs, const T* ps, const T* chb,
                  const T* pc, const T* sc, bool relu) {
  const T* none = nullptr;
  if (S.cl)
    scale(x, y, S.R(), S.K(), ps, cs, none, chb, none, pc, sc, relu);
  else
    scale(x, y, S.R(), S.K(), cs, ps, chb, none, pc, none, sc, relu);
}

inline bool defined(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline const at::Tensor* opt_or_null(const c10::optional<at::Tensor>& t) {
  return defined(t) ? &*t : nullptr;
}

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return defined(t) ? t->data_ptr<T>() : nullptr;
}

// gy[i] = g[i] where the (post-ReLU) output o[i] > 0, else 0: ReLU's backward.
template <typename T>
void relu_mask(const T* g, const T* o, T* gy, idx_t n) {
#pragma omp simd
  for (idx_t i = 0; i < n; ++i) gy[i] = o[i] > T(0) ? g[i] : T(0);
}

// Mean and variance (biased and unbiased) of G groups of n values each, from each
// group's mean and sum of squared deviations (Chan, Golub, LeVeque), in a fixed order.
struct Moments {
  double mean, var, unbiased;
};
inline Moments combine_moments(const double* mean, const double* m2, idx_t G, idx_t n) {
  double mu = 0;
  for (idx_t g = 0; g < G; ++g) mu += mean[g];
  mu /= double(G);
  double acc = 0;
  for (idx_t g = 0; g < G; ++g) acc += m2[g] + double(n) * (mean[g] - mu) * (mean[g] - mu);
  const double cnt = double(G) * double(n);
  return {mu, acc / cnt, cnt > 1 ? acc / (cnt - 1) : 0.0};
}

// One group's mean and sum of squared deviations.
template <typename T>
void sample_moments(const T* s, idx_t n, double* mean, double* m2) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (idx_t i = 0; i < n; ++i) acc += double(s[i]);
  const double mu = acc / double(n);
  double sq = 0;
#pragma omp simd reduction(+ : sq)
  for (idx_t i = 0; i < n; ++i) sq += (double(s[i]) - mu) * (double(s[i]) - mu);
  *mean = mu;
  *m2 = sq;
}

// Argument checks shared by forward and backward (Python only calls with valid ones).
inline void check_args(const at::Tensor& x, std::initializer_list<at::Tensor> mlp,
                       const c10::optional<at::Tensor>& conv_w, int64_t arrangement,
                       bool use_avg, bool use_max) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.numel() > 0, "fused CBAM: bad input");
  TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fused CBAM: input must be contiguous or channels_last");
  TORCH_CHECK(arrangement >= 0 && arrangement <= 3 && (use_avg || use_max),
              "fused CBAM: bad configuration");
  TORCH_CHECK((arrangement == 0) == !(conv_w.has_value() && conv_w->defined()),
              "fused CBAM: a conv weight is needed exactly when there is a spatial branch");
  for (const auto& t : mlp)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == x.scalar_type(),
                "fused CBAM: parameters must be contiguous and of the input's dtype");
  if (conv_w.has_value() && conv_w->defined())
    TORCH_CHECK(conv_w->is_contiguous() && conv_w->scalar_type() == x.scalar_type() &&
                    conv_w->dim() == 4 && conv_w->size(1) == 2 && conv_w->size(-1) % 2 == 1,
                "fused CBAM: the conv weight must be a contiguous (1, 2, k, k), k odd");
}

// Checks of the tail's tensor (shortcut or output: x's layout) and the folded BatchNorm's
// parameters and statistics (contiguous, x's dtype, one value per channel).
inline void check_tail_head(const at::Tensor& x, const c10::optional<at::Tensor>& tail,
                            int64_t arrangement, int64_t head,
                            std::initializer_list<c10::optional<at::Tensor>> head_tensors) {
  if (defined(tail))
    TORCH_CHECK(tail->sizes() == x.sizes() && tail->strides() == x.strides() &&
                    tail->scalar_type() == x.scalar_type(),
                "fused CBAM: the shortcut (and the output) must have the input's layout");
  TORCH_CHECK(head >= kHeadNone && head <= kHeadBatch, "fused CBAM: bad BatchNorm mode");
  TORCH_CHECK(head == kHeadNone || arrangement == kChannel || arrangement == kChannelSpatial,
              "fused CBAM: a folded BatchNorm needs the channel-spatial or channel arrangement");
  for (const auto& t : head_tensors)
    if (defined(t))
      TORCH_CHECK(t->is_contiguous() && t->scalar_type() == x.scalar_type() &&
                      t->numel() == x.size(1),
                  "fused CBAM: BatchNorm tensors must be contiguous, of the input's dtype and "
                  "hold one value per channel");
}

// Shapes and parameters shared by forward and backward.
template <typename T>
struct Setup {
  Slab S;
  idx_t N, H, W, Hd;
  int arr, P, k;
  bool avg, mx;
  Mlp<T> mlp;
  const T* cw;  // conv weight (2, k, k) or nullptr
  MapConv<T> conv;
  std::vector<T> ones_c, ones_p, zeros_c, zeros_p;

  Setup(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
        const at::Tensor& b2, const c10::optional<at::Tensor>& conv_w, int64_t arrangement,
        bool use_avg, bool use_max)
      : conv(x.size(2), x.size(3), conv_w.has_value() && conv_w->defined() ? conv_w->size(-1) : 1) {
    N = x.size(0);
    H = x.size(2);
    W = x.size(3);
    S = Slab{x.size(1), H * W, !x.is_contiguous()};
    Hd = w1.size(0);
    arr = static_cast<int>(arrangement);
    avg = use_avg;
    mx = use_max;
    P = int(avg) + int(mx);
    mlp = Mlp<T>{w1.data_ptr<T>(), b1.data_ptr<T>(), w2.data_ptr<T>(), b2.data_ptr<T>(), S.C, Hd};
    cw = ptr_or_null<T>(conv_w);
    k = cw ? static_cast<int>(conv_w->size(-1)) : 0;
    ones_c.assign(S.C, T(1));
    ones_p.assign(S.HW, T(1));
    zeros_c.assign(S.C, T(0));
    zeros_p.assign(S.HW, T(0));
  }
  int avg_slot() const { return 0; }
  int max_slot() const { return avg ? 1 : 0; }
};

// The spatial gate's affine map ms = sigmoid(A s + B) from the batch statistics of s
// (`batch`) or else the running statistics (or the conv bias, without BatchNorm): returns
// {A, B, mean, invstd, unbiased var}. The caller updates the running statistics (so that
// these kernels mutate nothing).
template <typename T>
std::vector<double> spatial_affine(bool norm, const Moments* batch,
                                   const c10::optional<at::Tensor>& conv_b,
                                   const c10::optional<at::Tensor>& bn_w,
                                   const c10::optional<at::Tensor>& bn_b,
                                   const c10::optional<at::Tensor>& rm,
                                   const c10::optional<at::Tensor>& rv, double eps) {
  if (!norm) {
    const T* b = ptr_or_null<T>(conv_b);
    return {1.0, b ? double(b[0]) : 0.0, 0.0, 1.0, 0.0};
  }
  double mean, var, unbiased = 0;
  if (batch) {
    mean = batch->mean;
    var = batch->var;
    unbiased = batch->unbiased;
  } else {
    mean = double(rm->data_ptr<T>()[0]);
    var = double(rv->data_ptr<T>()[0]);
  }
  const double invstd = 1.0 / std::sqrt(var + eps);
  const T* gw = ptr_or_null<T>(bn_w);
  const T* gb = ptr_or_null<T>(bn_b);
  const double a = (gw ? double(gw[0]) : 1.0) * invstd;
  const double b = (gb ? double(gb[0]) : 0.0) - mean * a;
  return {a, b, mean, invstd, unbiased};
}

// The spatial gate's logit a (s - c) + b in T, from spatial_affine's {A, B, mean, ...}: c
// is the logits' mean rounded to T and b absorbs that rounding, so that A s, far larger
// than the logit where s's mean is large against its spread, is never rounded. Forward and
// backward take the same values from the same statistics.
template <typename T>
struct GateAffine {
  T a, c, b;
};
template <typename T>
GateAffine<T> gate_affine(const double* aff) {
  const T c = T(aff[2]);
  return {T(aff[0]), c, T(aff[1] + aff[0] * double(c))};
}

}  // namespace convattn
