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

// body(n, worker) for every sample, workers taking the next free sample. The calling
// thread is worker 0 and starts at once; helpers (tasks on ATen's inter-op pool, which sleep
// when idle) join when they get a core, and the caller never waits for one that has not
// started: on cores shared with other processes a descheduled helper costs at most the
// sample it holds, where an OpenMP team would wait at its barrier for every member. A loop
// that follows another one over the same samples runs `reverse`d: its first samples are
// the ones the previous loop left in the last-level cache.
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

// Pools x * cs[c] * ps[p] over positions (per-channel outputs ch_*) and/or over channels
// (per-position outputs pos_*); pass nullptr for the set that is not wanted.
template <typename T>
void pool_sample(const Slab& S, const T* x, const T* cs, const T* ps, T* ch_sum, T* ch_max,
                 int32_t* ch_idx, T* pos_sum, T* pos_max, int32_t* pos_idx) {
  const T* ru = S.cl ? ps : cs;
  const T* cv = S.cl ? cs : ps;
  T* rs = S.cl ? pos_sum : ch_sum;
  T* rm = S.cl ? pos_max : ch_max;
  int32_t* ri = S.cl ? pos_idx : ch_idx;
  T* cs_ = S.cl ? ch_sum : pos_sum;
  T* cm = S.cl ? ch_max : pos_max;
  int32_t* ci = S.cl ? ch_idx : pos_idx;
  if (rs && cs_)
    pool<T, true, true>(x, S.R(), S.K(), ru, cv, rs, rm, ri, cs_, cm, ci);
  else if (rs)
    pool<T, true, false>(x, S.R(), S.K(), ru, cv, rs, rm, ri, cs_, cm, ci);
  else
    pool<T, false, true>(x, S.R(), S.K(), ru, cv, rs, rm, ri, cs_, cm, ci);
}

// ch_out[c] = sum_p g x ps[p] and, when pos_out is given, pos_out[p] = sum_c g x cs[c].
template <typename T>
void reduce_sample(const Slab& S, const T* g, const T* x, const T* cs, const T* ps, T* ch_out,
                   T* pos_out) {
  const T* ru = S.cl ? ps : cs;
  const T* cv = S.cl ? cs : ps;
  T* rs = S.cl ? pos_out : ch_out;
  T* cs_ = S.cl ? ch_out : pos_out;
  if (rs && cs_)
    reduce_gx<T, true, true>(g, x, S.R(), S.K(), ru, cv, rs, cs_);
  else if (rs)
    reduce_gx<T, true, false>(g, x, S.R(), S.K(), ru, cv, rs, cs_);
  else
    reduce_gx<T, false, true>(g, x, S.R(), S.K(), ru, cv, rs, cs_);
}

// out[j][c] = sum_p x[c, p] w[j][p] (J position weights -> per-channel sums).
template <typename T>
void wsum_over_pos(const Slab& S, const T* x, int J, const T* const* w, T* const* out) {
  if (S.cl)
    wsum_cols(x, S.R(), S.K(), J, w, out);
  else
    wsum_rows(x, S.R(), S.K(), J, w, out);
}

// out[p] = sum_c x[c, p] w[c].
template <typename T>
void wsum_over_ch(const Slab& S, const T* x, const T* w, T* out) {
  if (S.cl)
    wsum_rows(x, S.R(), S.K(), 1, &w, &out);
  else
    wsum_cols(x, S.R(), S.K(), 1, &w, &out);
}

// y[c, p] = g[c, p] Uc[c] Vp[p] + Pc[c] Qp[p] + Dc[c] + Ep[p].
template <typename T>
void write_sample(const Slab& S, const T* g, T* y, const T* Uc, const T* Vp, const T* Pc,
                  const T* Qp, const T* Dc, const T* Ep) {
  if (S.cl)
    write_grad(g, y, S.R(), S.K(), Vp, Uc, Qp, Pc, Ep, Dc);
  else
    write_grad(g, y, S.R(), S.K(), Uc, Vp, Pc, Qp, Dc, Ep);
}

template <typename T>
void scale_sample(const Slab& S, const T* x, T* y, const T* cs, const T* ps) {
  if (S.cl)
    scale(x, y, S.R(), S.K(), ps, cs);
  else
    scale(x, y, S.R(), S.K(), cs, ps);
}

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
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
// (N * HW values) or the running statistics: returns {A, B, mean, invstd, unbiased var}.
// The caller updates the running statistics (so that these kernels mutate nothing).
template <typename T>
std::vector<double> spatial_affine(const T* s, idx_t M, bool norm, bool batch_stats,
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
  if (batch_stats) {
    double acc = 0;
    for (idx_t i = 0; i < M; ++i) acc += s[i];
    mean = acc / double(M);
    double sq = 0;
    for (idx_t i = 0; i < M; ++i) sq += (s[i] - mean) * (s[i] - mean);
    var = sq / double(M);
    unbiased = M > 1 ? sq / double(M - 1) : 0.0;
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

}  // namespace convattn
