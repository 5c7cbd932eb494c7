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

// out[i] = sigmoid(a s[i] + b).
template <typename T>
void sigmoid_map(const T* s, idx_t n, T a, T b, T* out) {
  if constexpr (kSimd<T>) {
    simd::sigmoid_affine(s, a, b, out, n);
  } else {
    for (idx_t i = 0; i < n; ++i) out[i] = sigmoid(a * s[i] + b);
  }
}

// ---- pooling -------------------------------------------------------------------------

// Column pooling of columns [k0, k0 + kw), kw <= TW: sum, max and argmax over all rows,
// held in registers (TW values each) and stored once.
template <typename T, int TW>
void pool_cols_tile(const T* m, idx_t R, idx_t K, idx_t k0, int kw, const T* ru, const T* cv,
                    T* csum, T* cmax, int32_t* cidx) {
  T ls[TW], lm[TW];
  int32_t li[TW];
  for (int j = 0; j < TW; ++j) {
    ls[j] = 0;
    lm[j] = -std::numeric_limits<T>::infinity();
    li[j] = 0;
  }
  const T* cvk = cv + k0;
  for (idx_t r = 0; r < R; ++r) {
    const T* mr = m + r * K + k0;
    const T u = ru[r];
    const int32_t ri = static_cast<int32_t>(r);
    auto step = [&](int j) {
      const T e = mr[j] * u * cvk[j];
      ls[j] += e;
      const bool gt = e > lm[j];
      lm[j] = gt ? e : lm[j];
      li[j] = gt ? ri : li[j];
    };
    if (kw == TW) {
#pragma omp simd
      for (int j = 0; j < TW; ++j) step(j);
    } else {
      for (int j = 0; j < kw; ++j) step(j);
    }
  }
  for (int j = 0; j < kw; ++j) {
    csum[k0 + j] = ls[j];
    cmax[k0 + j] = lm[j];
    cidx[k0 + j] = li[j];
  }
}

// Column NaNs: a NaN in column k makes its sum NaN; then its max is NaN, at the first NaN.
template <typename T>
void pool_cols_nan(const T* m, idx_t R, idx_t K, const T* ru, const T* cv, const T* csum,
                   T* cmax, int32_t* cidx) {
  for (idx_t k = 0; k < K; ++k) {
    if (!std::isnan(csum[k])) continue;
    for (idx_t r = 0; r < R; ++r) {
      if (std::isnan(m[r * K + k] * ru[r] * cv[k])) {
        cmax[k] = std::numeric_limits<T>::quiet_NaN();
        if (cidx) cidx[k] = static_cast<int32_t>(r);
        break;
      }
    }
  }
}

// Row pooling (for each r over k) and/or column pooling (for each k over r) of
// e[r, k] = m[r, k] * ru[r] * cv[k]. Row outputs: rsum, rmax, ridx; column: csum, cmax, cidx.
// Column pooling alone runs in register tiles of 4 vectors (a running max/argmax/sum per
// column in memory costs three loads and stores per element, beyond L1 for long rows).
template <typename T, bool ROWS, bool COLS>
void pool(const T* m, idx_t R, idx_t K, const T* ru, const T* cv, T* rsum, T* rmax,
          int32_t* ridx, T* csum, T* cmax, int32_t* cidx) {
  if constexpr (kSimd<T>) {
    if (ROWS) {
      auto fix_nan = [&](idx_t r) {  // the first NaN of the row, if any, is its max
        const T* mr = m + r * K;
        for (idx_t k = 0; k < K; ++k) {
          if (std::isnan(mr[k] * ru[r] * cv[k])) {
            rmax[r] = std::numeric_limits<T>::quiet_NaN();
            if (ridx) ridx[r] = static_cast<int32_t>(k);
            return;
          }
        }
      };
      simd::pool_rows(m, R, K, ru, cv, rsum, rmax, ridx, fix_nan);
    }
    if (COLS) {
      simd::pool_cols(m, R, K, ru, cv, csum, cmax, cidx);
      pool_cols_nan(m, R, K, ru, cv, csum, cmax, cidx);
    }
    return;
  }
  std::vector<int32_t> no_ridx(ROWS && !ridx ? R : 0), no_cidx(COLS && !cidx ? K : 0);
  if (ROWS && !ridx) ridx = no_ridx.data();  // index outputs nobody asked for
  if (COLS && !cidx) cidx = no_cidx.data();
  const T ninf = -std::numeric_limits<T>::infinity();
  if (!ROWS) {
    constexpr int TW = 256 / sizeof(T);
    for (idx_t k0 = 0; k0 < K; k0 += TW) {
      const int kw = static_cast<int>(std::min<idx_t>(TW, K - k0));
      pool_cols_tile<T, TW>(m, R, K, k0, kw, ru, cv, csum, cmax, cidx);
    }
    pool_cols_nan(m, R, K, ru, cv, csum, cmax, cidx);
    return;
  }
  if (COLS) {
    std::fill(csum, csum + K, T(0));
    std::fill(cmax, cmax + K, ninf);
    std::fill(cidx, cidx + K, 0);
  }
  constexpr idx_t kBlock = 256;  // the row argmax is searched in the block of the max only
  for (idx_t r = 0; r < R; ++r) {
    const T* mr = m + r * K;
    const T u = ru[r];
    T s = 0, mx = ninf;
    idx_t mblock = 0;
    if (COLS) {
      const int32_t ri = static_cast<int32_t>(r);
#pragma omp simd reduction(+ : s) reduction(max : mx)
      for (idx_t k = 0; k < K; ++k) {
        const T e = mr[k] * u * cv[k];
        s += e;
        mx = std::max(mx, e);
        const T old = cmax[k];
        const bool gt = e > old;
        csum[k] += e;
        cmax[k] = gt ? e : old;
        cidx[k] = gt ? ri : cidx[k];
      }
    } else {
      for (idx_t k0 = 0; k0 < K; k0 += kBlock) {
        const idx_t k1 = std::min(K, k0 + kBlock);
        T bm = ninf;
#pragma omp simd reduction(+ : s) reduction(max : bm)
        for (idx_t k = k0; k < k1; ++k) {
          const T e = mr[k] * u * cv[k];
          s += e;
          bm = std::max(bm, e);
        }
        if (bm > mx) {
          mx = bm;
          mblock = k0;
        }
      }
    }
    idx_t at = 0;
    if (std::isnan(s)) {  // a NaN (or inf - inf): report the first NaN, if any
      while (at < K && !std::isnan(mr[at] * u * cv[at])) ++at;
      if (at < K) mx = std::numeric_limits<T>::quiet_NaN();
      at = at < K ? at : 0;
    } else {
      at = mblock;  // with COLS the block is unknown (0): the search covers the row
      while (at < K - 1 && !(mr[at] * u * cv[at] == mx)) ++at;
    }
    rsum[r] = s;
    rmax[r] = mx;
    ridx[r] = static_cast<int32_t>(at);
  }
  if (COLS) pool_cols_nan(m, R, K, ru, cv, csum, cmax, cidx);
}

// y[r, k] = m[r, k] * ru[r] * cv[k].
template <typename T>
void scale(const T* m, T* y, idx_t R, idx_t K, const T* ru, const T* cv) {
  for (idx_t r = 0; r < R; ++r) {
    const T u = ru[r];
    const T* mr = m + r * K;
    T* yr = y + r * K;
#pragma omp simd
    for (idx_t k = 0; k < K; ++k) yr[k] = mr[k] * u * cv[k];
  }
}

// ---- backward reductions and the gradient write --------------------------------------

// With p = g * x: rsum[r] = sum_k p * cv[k] (if ROWS), csum[k] = sum_r p * ru[r] (if COLS).
template <typename T, bool ROWS, bool COLS>
void reduce_gx(const T* g, const T* x, idx_t R, idx_t K, const T* ru, const T* cv, T* rsum,
               T* csum) {
  if constexpr (kSimd<T>) {
    simd::reduce_gx(g, x, R, K, ru, cv, ROWS ? rsum : nullptr, COLS ? csum : nullptr);
    return;
  }
  if (COLS) std::fill(csum, csum + K, T(0));
  for (idx_t r = 0; r < R; ++r) {
    const T* gr = g + r * K;
    const T* xr = x + r * K;
    const T u = ru[r];
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (idx_t k = 0; k < K; ++k) {
      const T p = gr[k] * xr[k];
      if (ROWS) s += p * cv[k];
      if (COLS) csum[k] += p * u;
    }
    if (ROWS) rsum[r] = s;
  }
}

// Weighted sums of m with J <= 3 weight vectors: along rows, out[j][r] = sum_k m[r,k] w[j][k];
// along columns, out[j][k] = sum_r m[r,k] w[j][r].
template <typename T>
void wsum_rows(const T* m, idx_t R, idx_t K, int J, const T* const* w, T* const* out) {
  if constexpr (kSimd<T>) return simd::wsum_rows(m, R, K, J, w, out);
  for (idx_t r = 0; r < R; ++r) {
    const T* mr = m + r * K;
    T s0 = 0, s1 = 0, s2 = 0;
    const T* w0 = w[0];
    const T* w1 = J > 1 ? w[1] : w[0];
    const T* w2 = J > 2 ? w[2] : w[0];
    if (J == 1) {
#pragma omp simd reduction(+ : s0)
      for (idx_t k = 0; k < K; ++k) s0 += mr[k] * w0[k];
    } else {
#pragma omp simd reduction(+ : s0, s1, s2)
      for (idx_t k = 0; k < K; ++k) {
        s0 += mr[k] * w0[k];
        s1 += mr[k] * w1[k];
        s2 += mr[k] * w2[k];
      }
    }
    out[0][r] = s0;
    if (J > 1) out[1][r] = s1;
    if (J > 2) out[2][r] = s2;
  }
}

template <typename T>
void wsum_cols(const T* m, idx_t R, idx_t K, int J, const T* const* w, T* const* out) {
  if constexpr (kSimd<T>) return simd::wsum_cols(m, R, K, J, w, out);
  for (int j = 0; j < J; ++j) std::fill(out[j], out[j] + K, T(0));
  for (idx_t r = 0; r < R; ++r) {
    const T* mr = m + r * K;
    for (int j = 0; j < J; ++j) {
      const T wj = w[j][r];
      T* oj = out[j];
#pragma omp simd
      for (idx_t k = 0; k < K; ++k) oj[k] += mr[k] * wj;
    }
  }
}

// y[r, k] = g[r, k] * U[r] * V[k] + P[r] * Q[k] + D[r] + E[k].
template <typename T>
void write_grad(const T* g, T* y, idx_t R, idx_t K, const T* U, const T* V, const T* P,
                const T* Q, const T* D, const T* E) {
  for (idx_t r = 0; r < R; ++r) {
    const T u = U[r], p = P[r], d = D[r];
    const T* gr = g + r * K;
    T* yr = y + r * K;
#pragma omp simd
    for (idx_t k = 0; k < K; ++k) yr[k] = gr[k] * (u * V[k]) + (p * Q[k] + (d + E[k]));
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
