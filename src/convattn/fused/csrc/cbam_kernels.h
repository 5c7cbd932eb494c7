// Per-sample building blocks of the fused CBAM kernels (see fused_cbam.cpp).
//
// One sample of an (N, C, H, W) map is a dense R x K row-major matrix: for contiguous
// (NCHW) input the rows are channels (R = C, K = H*W); for channels_last (NHWC) input the
// rows are positions (R = H*W, K = C). Every primitive below works on that matrix, so one
// code path serves both memory formats; `Slab` maps "per channel" / "per position" onto
// rows and columns. Inner loops run along contiguous memory and are written for the
// compiler's vectoriser (`#pragma omp simd`, no OpenMP runtime needed).
//
// Max pooling keeps the FIRST index of the maximum (ties are measure-zero for real data);
// a NaN anywhere in a pooled set makes the max NaN, as torch.amax does. Index outputs may
// be nullptr where no gradient is wanted. For float on AVX-512 CPUs the hot primitives
// run the hand-vectorised versions of cbam_simd.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cbam_simd.h"

namespace convattn {

using idx_t = int64_t;

template <typename T>
inline T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

template <typename T>
constexpr bool kSimd = std::is_same_v<T, float> && simd::kFloat;

// Long float sums are blocked (see kBlock): along a row, a vectorised loop's float partial
// sum covers kChunk terms (kBlock per lane of 16); across rows, column partial sums are
// added into double every kBlock rows. Double sums need none of it.
template <typename T>
constexpr bool kBlocked = !std::is_same_v<T, double>;
constexpr idx_t kChunk = kBlock * 16;

// sum_{k < n} f(k): float partial sums of kChunk terms added in double.
template <typename T, class F>
double blocked_sum(idx_t n, F f) {
  double tot = 0;
  for (idx_t k0 = 0; k0 < n; k0 += kChunk) {
    const idx_t k1 = kBlocked<T> ? std::min(n, k0 + kChunk) : n;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (idx_t k = k0; k < k1; ++k) s += f(k);
    tot += double(s);
    if (!kBlocked<T>) break;
  }
  return tot;
}

// Column sums out[k] accumulated row by row in T, moved into double totals every kBlock
// rows (`row_done`) and written back by `finish`.
template <typename T>
class ColSums {
 public:
  ColSums(T* out, idx_t K, idx_t R, int slot) : out_(out), K_(K) {
    if (out_) std::fill(out_, out_ + K_, T(0));
    if (!out_ || !kBlocked<T> || R <= kBlock) return;
    thread_local std::vector<double> scratch[4];
    scratch[slot].assign(K_, 0.0);
    tot_ = scratch[slot].data();
  }
  T* data() const { return out_; }
  void row_done(idx_t r) {
    if (!tot_ || (r + 1) % kBlock != 0) return;
    for (idx_t k = 0; k < K_; ++k) tot_[k] += double(out_[k]), out_[k] = T(0);
  }
  void finish() {
    if (!tot_) return;
    for (idx_t k = 0; k < K_; ++k) out_[k] = T(tot_[k] + double(out_[k]));
  }

 private:
  T* out_;
  idx_t K_;
  double* tot_ = nullptr;
};

// out[i] = sigmoid(a (s[i] - c) + b): c, the logits' mean, keeps the product small.
template <typename T>
void sigmoid_map(const T* s, idx_t n, T a, T c, T b, T* out) {
  if constexpr (kSimd<T>) {
    simd::sigmoid_affine(s, a, c, b, out, n);
  } else {
    for (idx_t i = 0; i < n; ++i) out[i] = sigmoid(a * (s[i] - c) + b);
  }
}

// ---- pooling -------------------------------------------------------------------------
//
// The pooled element is e[r, k] = (m[r, k] - rp[r] - cp[k]) ru[r] cv[k] + rb[r] + cb[k]
// (pivots and biases optional): per-channel and per-position scales, and the per-channel
// pivot and shift of a folded BatchNorm (m - pivot is small where m's mean is large).

template <typename T>
struct Elem {
  const T *m, *ru, *cv, *rb, *cb, *rp, *cp;
  idx_t K;
  T operator()(idx_t r, idx_t k) const {
    T v = m[r * K + k];
    if (rp) v -= rp[r];
    if (cp) v -= cp[k];
    T e = v * ru[r] * cv[k];
    if (rb || cb) e += (cb ? cb[k] : T(0)) + (rb ? rb[r] : T(0));
    return e;
  }
};

// Column pooling of columns [k0, k0 + kw), kw <= TW: sum, max and argmax over all rows.
template <typename T, int TW>
void pool_cols_tile(const Elem<T>& e, idx_t R, idx_t k0, int kw, T* csum, T* cmax,
                    int32_t* cidx) {
  T ls[TW], lm[TW];
  double lt[TW];
  int32_t li[TW];
  for (int j = 0; j < TW; ++j) {
    ls[j] = 0;
    lt[j] = 0;
    lm[j] = -std::numeric_limits<T>::infinity();
    li[j] = 0;
  }
  for (idx_t r = 0; r < R; ++r) {
    const int32_t ri = static_cast<int32_t>(r);
    for (int j = 0; j < kw; ++j) {
      const T v = e(r, k0 + j);
      ls[j] += v;
      const bool gt = v > lm[j];
      lm[j] = gt ? v : lm[j];
      li[j] = gt ? ri : li[j];
    }
    if (kBlocked<T> && (r + 1) % kBlock == 0)
      for (int j = 0; j < kw; ++j) lt[j] += double(ls[j]), ls[j] = 0;
  }
  for (int j = 0; j < kw; ++j) {
    csum[k0 + j] = T(lt[j] + double(ls[j]));
    cmax[k0 + j] = lm[j];
    if (cidx) cidx[k0 + j] = li[j];
  }
}

// Column NaNs: a NaN in column k makes its sum NaN; then its max is NaN, at the first NaN.
template <typename T>
void pool_cols_nan(const Elem<T>& e, idx_t R, idx_t K, const T* csum, T* cmax, int32_t* cidx) {
  for (idx_t k = 0; k < K; ++k) {
    if (!std::isnan(csum[k])) continue;
    for (idx_t r = 0; r < R; ++r) {
      if (std::isnan(e(r, k))) {
        cmax[k] = std::numeric_limits<T>::quiet_NaN();
        if (cidx) cidx[k] = static_cast<int32_t>(r);
        break;
      }
    }
  }
}

// Row NaNs likewise: the first NaN of row r, if any, is its max.
template <typename T>
void pool_row_nan(const Elem<T>& e, idx_t r, idx_t K, T* rmax, int32_t* ridx) {
  for (idx_t k = 0; k < K; ++k) {
    if (std::isnan(e(r, k))) {
      rmax[r] = std::numeric_limits<T>::quiet_NaN();
      if (ridx) ridx[r] = static_cast<int32_t>(k);
      return;
    }
  }
}

// Row pooling (for each r over k: rsum, rmax, ridx) and/or column pooling (for each k over
// r: csum, cmax, cidx) of e.
template <typename T, bool ROWS, bool COLS>
void pool(const T* m, idx_t R, idx_t K, const T* ru, const T* cv, const T* rb, const T* cb,
          const T* rp, const T* cp, T* rsum, T* rmax, int32_t* ridx, T* csum, T* cmax,
          int32_t* cidx) {
  const Elem<T> e{m, ru, cv, rb, cb, rp, cp, K};
  if constexpr (kSimd<T>) {
    if (ROWS)
      simd::pool_rows(m, R, K, ru, cv, rb, cb, rp, cp, rsum, rmax, ridx,
                      [&](idx_t r) { pool_row_nan(e, r, K, rmax, ridx); });
    if (COLS) {
      simd::pool_cols(m, R, K, ru, cv, rb, cb, rp, cp, csum, cmax, cidx);
      pool_cols_nan(e, R, K, csum, cmax, cidx);
    }
    return;
  }
  if (COLS) {
    constexpr int TW = 64;
    for (idx_t k0 = 0; k0 < K; k0 += TW)
      pool_cols_tile<T, TW>(e, R, k0, static_cast<int>(std::min<idx_t>(TW, K - k0)), csum,
                            cmax, cidx);
    pool_cols_nan(e, R, K, csum, cmax, cidx);
  }
  if (!ROWS) return;
  for (idx_t r = 0; r < R; ++r) {
    T s = 0, mx = -std::numeric_limits<T>::infinity();
    double tot = 0;
    int32_t at = 0;
    for (idx_t k = 0; k < K; ++k) {
      const T v = e(r, k);
      s += v;
      if (kBlocked<T> && (k + 1) % kBlock == 0) tot += double(s), s = 0;
      if (v > mx) {
        mx = v;
        at = static_cast<int32_t>(k);
      }
    }
    s = T(tot + double(s));
    rsum[r] = s;
    rmax[r] = mx;
    if (ridx) ridx[r] = at;
    if (std::isnan(s)) pool_row_nan(e, r, K, rmax, ridx);
  }
}

// Squared deviations: out[r] = sum_k (m[r, k] - mu[r])^2 (rows) or out[k] = sum_r
// (m[r, k] - mu[k])^2, for the BatchNorm variance from per-sample means; with res, also
// the deviations' sums (which correct a mean that float rounding has moved).
template <typename T>
void sq_dev(const T* m, idx_t R, idx_t K, const T* mu, bool rows, T* out, T* res) {
  if constexpr (kSimd<T>) return simd::sq_dev(m, R, K, mu, rows, out, res);
  ColSums<T> so(rows ? nullptr : out, K, R, 0), sr(rows ? nullptr : res, K, R, 1);
  for (idx_t r = 0; r < R; ++r) {
    const T* mr = m + r * K;
    if (rows) {
      const T u = mu[r];
      out[r] = T(blocked_sum<T>(K, [&](idx_t k) { return (mr[k] - u) * (mr[k] - u); }));
      if (res) res[r] = T(blocked_sum<T>(K, [&](idx_t k) { return mr[k] - u; }));
      continue;
    }
    T* o = so.data();
#pragma omp simd
    for (idx_t k = 0; k < K; ++k) o[k] += (mr[k] - mu[k]) * (mr[k] - mu[k]);
    so.row_done(r);
    if (!res) continue;
    T* q = sr.data();
#pragma omp simd
    for (idx_t k = 0; k < K; ++k) q[k] += mr[k] - mu[k];
    sr.row_done(r);
  }
  so.finish();
  sr.finish();
}

// The forward's output: y[r, k] = v ru[r] cv[k] + rb[r] cv[k] + cb[k] ru[r] (+ sc[r, k])
// with v = m - rp[r] - cp[k] (pivots optional), then ReLU if asked: the folded BatchNorm's
// shift (rb or cb, per channel) is gated like the rest of x.
template <typename T>
void scale(const T* m, T* y, idx_t R, idx_t K, const T* ru, const T* cv, const T* rb,
           const T* cb, const T* rp, const T* cp, const T* sc, bool relu) {
  for (idx_t r = 0; r < R; ++r) {
    const T u = ru[r], b = rb ? rb[r] : T(0), p = rp ? rp[r] : T(0);
    const T* mr = m + r * K;
    const T* sr = sc ? sc + r * K : nullptr;
    T* yr = y + r * K;
    if (!cb && !cp && !sr && !relu) {
#pragma omp simd
      for (idx_t k = 0; k < K; ++k) yr[k] = ((mr[k] - p) * u + b) * cv[k];
      continue;
    }
#pragma omp simd
    for (idx_t k = 0; k < K; ++k) {
      T v = ((mr[k] - p - (cp ? cp[k] : T(0))) * u + b) * cv[k];
      if (cb) v += cb[k] * u;
      if (sr) v += sr[k];
      yr[k] = relu ? std::max(v, T(0)) : v;
    }
  }
}

// ---- backward reductions and the gradient write --------------------------------------

// The backward's reductions over g and x, with p = g (x - rp[r] - cp[k]) and q = g (each
// output and pivot optional):
//   rsum[r] = sum_k (p cv[k] + q cb[k]),  rsum1[r] = sum_k q cv[k],
//   csum[k] = sum_r (p ru[r] + q rb[r]),  csum1[k] = sum_r q ru[r].
template <typename T>
void reduce_gx(const T* g, const T* x, idx_t R, idx_t K, const T* ru, const T* cv, const T* rb,
               const T* cb, const T* rp, const T* cp, T* rsum, T* rsum1, T* csum, T* csum1) {
  if constexpr (kSimd<T>)
    return simd::reduce_gx(g, x, R, K, ru, cv, rb, cb, rp, cp, rsum, rsum1, csum, csum1);
  ColSums<T> sc(csum, K, R, 0), sc1(csum1, K, R, 1);
  for (idx_t r = 0; r < R; ++r) {
    const T* gr = g + r * K;
    const T* xr = x + r * K;
    const T pr = rp ? rp[r] : T(0);
    auto xc = [&](idx_t k) { return xr[k] - pr - (cp ? cp[k] : T(0)); };
    if (rsum)
      rsum[r] = T(blocked_sum<T>(K, [&](idx_t k) {
        return gr[k] * xc(k) * cv[k] + (cb ? gr[k] * cb[k] : T(0));
      }));
    if (rsum1) rsum1[r] = T(blocked_sum<T>(K, [&](idx_t k) { return gr[k] * cv[k]; }));
    if (csum) {
      const T u = ru[r], ub = rb ? rb[r] : T(0);
      T* o = sc.data();
#pragma omp simd
      for (idx_t k = 0; k < K; ++k) o[k] += gr[k] * xc(k) * u + gr[k] * ub;
      sc.row_done(r);
    }
    if (csum1) {
      const T u = ru[r];
      T* o = sc1.data();
#pragma omp simd
      for (idx_t k = 0; k < K; ++k) o[k] += gr[k] * u;
      sc1.row_done(r);
    }
  }
  sc.finish();
  sc1.finish();
}

// Weighted sums of m - pivot with J <= 3 weight vectors: along rows, out[j][r] = sum_k
// (m[r,k] - rp[r]) w[j][k]; along columns, out[j][k] = sum_r (m[r,k] - cp[k]) w[j][r]
// (pivots optional).
template <typename T>
void wsum_rows(const T* m, idx_t R, idx_t K, int J, const T* const* w, const T* rp,
               T* const* out) {
  if constexpr (kSimd<T>) return simd::wsum_rows(m, R, K, J, w, rp, out);
  for (idx_t r = 0; r < R; ++r) {
    const T* mr = m + r * K;
    const T p = rp ? rp[r] : T(0);
    for (int j = 0; j < J; ++j) {
      const T* wj = w[j];
      out[j][r] = T(blocked_sum<T>(K, [&](idx_t k) { return (mr[k] - p) * wj[k]; }));
    }
  }
}

template <typename T>
void wsum_cols(const T* m, idx_t R, idx_t K, int J, const T* const* w, const T* cp,
               T* const* out) {
  if constexpr (kSimd<T>) return simd::wsum_cols(m, R, K, J, w, cp, out);
  for (int j = 0; j < J; ++j) {
    ColSums<T> sj(out[j], K, R, 0);
    for (idx_t r = 0; r < R; ++r) {
      const T* mr = m + r * K;
      const T wj = w[j][r];
      T* oj = sj.data();
#pragma omp simd
      for (idx_t k = 0; k < K; ++k) oj[k] += (mr[k] - (cp ? cp[k] : T(0))) * wj;
      sj.row_done(r);
    }
    sj.finish();
  }
}

// y[r, k] = g[r, k] U[r] V[k] + P[r] Q[k] + D[r] + E[k] + (z[r, k] - pivot) Z; the last
// term (a folded BatchNorm's backward) only where z is given, with Z and its pivot per row
// (Zr, Pr) or per column (Zk, Pk).
template <typename T>
void write_grad(const T* g, T* y, idx_t R, idx_t K, const T* U, const T* V, const T* P,
                const T* Q, const T* D, const T* E, const T* z, const T* Zr, const T* Pr,
                const T* Zk, const T* Pk) {
  for (idx_t r = 0; r < R; ++r) {
    const T u = U[r], p = P[r], d = D[r];
    const T* gr = g + r * K;
    T* yr = y + r * K;
    if (!z) {
#pragma omp simd
      for (idx_t k = 0; k < K; ++k) yr[k] = gr[k] * (u * V[k]) + (p * Q[k] + (d + E[k]));
    } else if (Zr) {
      const T* zr = z + r * K;
      const T zc = Zr[r], zp = Pr[r];
#pragma omp simd
      for (idx_t k = 0; k < K; ++k)
        yr[k] = gr[k] * (u * V[k]) + (p * Q[k] + (d + E[k])) + (zr[k] - zp) * zc;
    } else {
      const T* zr = z + r * K;
#pragma omp simd
      for (idx_t k = 0; k < K; ++k)
        yr[k] = gr[k] * (u * V[k]) + (p * Q[k] + (d + E[k])) + (zr[k] - Pk[k]) * Zk[k];
    }
  }
}

// ---- the k x k 'same' convolution of the spatial branch (2 maps in, 1 out) -----------
//
// Maps are copied into zero-padded buffers of row stride Wp = W + 2 pad; a tap (ki, kj) is
// then one flat loop over H * Wp "wide" outputs reading the buffer at offset ki Wp + kj, so
// every inner loop is long, unclipped and vectorisable whatever W is. The Wp - W columns
// past each row are junk and dropped (or zero, where a wide map is an input). The offsets
// of all taps are tabulated once per call (forward: both input maps; backward: the
// flipped kernel).
template <typename T>
struct MapConv {
  idx_t H, W, pad, Wp, n_pad, n_wide;
  int k;
  std::vector<idx_t> off_fwd, off_bwd;
  MapConv(idx_t H_, idx_t W_, int k_)
      : H(H_), W(W_), pad(k_ / 2), Wp(W_ + 2 * (k_ / 2)), k(k_) {
    n_pad = (H + 2 * pad) * Wp + 2 * pad;  // + slack read by the last row's junk columns
    n_wide = H * Wp;
    for (int ci = 0; ci < 2; ++ci)
      for (int ki = 0; ki < k; ++ki)
        for (int kj = 0; kj < k; ++kj) off_fwd.push_back(ci * n_pad + ki * Wp + kj);
    for (int ki = 0; ki < k; ++ki)
      for (int kj = 0; kj < k; ++kj) off_bwd.push_back((k - 1 - ki) * Wp + (k - 1 - kj));
  }
  idx_t scratch() const { return 2 * n_pad + n_wide; }

  void pad_into(const T* src, T* dst) const {
    std::fill(dst, dst + n_pad, T(0));
    for (idx_t h = 0; h < H; ++h)
      std::copy(src + h * W, src + (h + 1) * W, dst + (h + pad) * Wp + pad);
  }
  void wide_to_map(const T* wide, T* dst) const {
    for (idx_t h = 0; h < H; ++h) std::copy(wide + h * Wp, wide + h * Wp + W, dst + h * W);
  }
  // wide[i] = sum_t w[t] src[off[t] + i] over the H * Wp wide outputs.
  void taps(const T* src, const idx_t* off, const T* w, int n, T* wide) const {
    if constexpr (kSimd<T>) {
      simd::conv_taps(src, off, w, n, wide, n_wide, false);
    } else {
      std::fill(wide, wide + n_wide, T(0));
      for (int t = 0; t < n; ++t) {
        const T* s = src + off[t];
        const T wt = w[t];
#pragma omp simd
        for (idx_t i = 0; i < n_wide; ++i) wide[i] += wt * s[i];
      }
    }
  }

  // out (H, W) = sum_ci corr(in[ci], w[ci]); in is (2, H, W), w is (2, k, k).
  void forward(const T* in, const T* w, T* out, T* buf) const {
    T* wide = buf + 2 * n_pad;
    for (int ci = 0; ci < 2; ++ci) pad_into(in + ci * H * W, buf + ci * n_pad);
    taps(buf, off_fwd.data(), w, 2 * k * k, wide);
    wide_to_map(wide, out);
  }
  // gin (2, H, W) = input gradient of forward for output gradient gout (H, W): the
  // correlation of the padded gout with the flipped kernel.
  void backward_input(const T* gout, const T* w, T* gin, T* buf) const {
    T* wide = buf + 2 * n_pad;
    pad_into(gout, buf);
    for (int ci = 0; ci < 2; ++ci) {
      taps(buf, off_bwd.data(), w + ci * k * k, k * k, wide);
      wide_to_map(wide, gin + ci * H * W);
    }
  }
  // gw (2, k, k) += weight gradient of forward for input in (2, H, W) and gradient gout.
  void backward_weight(const T* in, const T* gout, double* gw, T* buf) const {
    T* wide = buf + 2 * n_pad;
    std::fill(wide, wide + n_wide, T(0));
    for (idx_t h = 0; h < H; ++h) std::copy(gout + h * W, gout + (h + 1) * W, wide + h * Wp);
    for (int ci = 0; ci < 2; ++ci) {
      T* padded = buf + ci * n_pad;
      pad_into(in + ci * H * W, padded);
      for (int ki = 0; ki < k; ++ki) {
        double* gwr = gw + (ci * k + ki) * k;
        if constexpr (kSimd<T>) {
          simd::conv_weight_row(padded + ki * Wp, k, wide, n_wide, gwr);
          continue;
        }
        for (int kj = 0; kj < k; ++kj) {
          const T* src = padded + ki * Wp + kj;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (idx_t i = 0; i < n_wide; ++i) acc += src[i] * wide[i];
          gwr[kj] += acc;
        }
      }
    }
  }
};

// ---- the shared channel MLP: logits = sum_p fc2(relu(fc1(v_p))) ----------------------

template <typename T>
struct Mlp {
  const T* w1;  // (Hd, C)
  const T* b1;  // (Hd)
  const T* w2;  // (C, Hd)
  const T* b2;  // (C)
  idx_t C, Hd;
};

// h[p] = fc1(v[p]) (pre-ReLU, P x Hd); gate = sigmoid(fc2(sum_p relu(h[p])) + P * b2).
template <typename T>
void mlp_forward(const Mlp<T>& f, const T* const* v, int P, T* h, T* rsum, T* gate) {
  std::fill(rsum, rsum + f.Hd, T(0));
  for (int p = 0; p < P; ++p) {
    for (idx_t j = 0; j < f.Hd; ++j) {
      const T* wr = f.w1 + j * f.C;
      const T* vp = v[p];
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (idx_t c = 0; c < f.C; ++c) s += wr[c] * vp[c];
      h[p * f.Hd + j] = s + f.b1[j];
      rsum[j] += std::max(h[p * f.Hd + j], T(0));
    }
  }
  for (idx_t c = 0; c < f.C; ++c) {
    const T* wr = f.w2 + c * f.Hd;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (idx_t j = 0; j < f.Hd; ++j) s += wr[j] * rsum[j];
    gate[c] = sigmoid(s + T(P) * f.b2[c]);
  }
}

// From d loss / d gate: glogit (C), gh[p] = d loss / d h[p] (P x Hd), gv[p] (C each).
// `gr` is scratch of Hd.
template <typename T>
void mlp_backward(const Mlp<T>& f, int P, const T* h, const T* gate, const T* ggate,
                  T* glogit, T* gr, T* gh, T* const* gv) {
  for (idx_t c = 0; c < f.C; ++c) glogit[c] = ggate[c] * gate[c] * (T(1) - gate[c]);
  std::fill(gr, gr + f.Hd, T(0));
  for (idx_t c = 0; c < f.C; ++c) {
    const T* wr = f.w2 + c * f.Hd;
    const T gl = glogit[c];
#pragma omp simd
    for (idx_t j = 0; j < f.Hd; ++j) gr[j] += wr[j] * gl;
  }
  for (int p = 0; p < P; ++p) {
    T* ghp = gh + p * f.Hd;
    for (idx_t j = 0; j < f.Hd; ++j) ghp[j] = h[p * f.Hd + j] > T(0) ? gr[j] : T(0);
    T* gvp = gv[p];
    std::fill(gvp, gvp + f.C, T(0));
    for (idx_t j = 0; j < f.Hd; ++j) {
      const T* wr = f.w1 + j * f.C;
      const T gj = ghp[j];
#pragma omp simd
      for (idx_t c = 0; c < f.C; ++c) gvp[c] += wr[c] * gj;
    }
  }
}

// out (a x b) = A^T B for row-major A (Q x a) and B (Q x b); rows [i0, i1) of out only.
template <typename T>
void outer_sum(const T* A, const T* B, idx_t Q, idx_t a, idx_t b, T* out, idx_t i0, idx_t i1) {
  std::fill(out + i0 * b, out + i1 * b, T(0));
  for (idx_t q = 0; q < Q; ++q) {
    const T* bq = B + q * b;
    for (idx_t i = i0; i < i1; ++i) {
      const T ai = A[q * a + i];
      T* oi = out + i * b;
#pragma omp simd
      for (idx_t j = 0; j < b; ++j) oi[j] += ai * bq[j];
    }
  }
}

}  // namespace convattn
