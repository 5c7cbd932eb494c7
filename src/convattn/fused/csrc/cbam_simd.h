// AVX-512 single-precision versions of the hot per-sample primitives of cbam_kernels.h.
//
// Same contracts as the portable templates there (which they replace for float when the
// compiler targets AVX-512F; double and other CPUs run the templates). Two things the
// compiler's vectoriser does not do on its own are done here by hand:
//   - reductions along short rows (a channels_last sample with C = 16..64 is a matrix of
//     short rows): the per-row partial vectors of 16 rows are reduced together by a
//     transposing shuffle tree (`reduce16`), 30 shuffles per 16 rows instead of 16
//     horizontal reductions;
//   - accumulators of column tiles (up to 64 columns) are kept in registers across rows
//     (as plain C++ arrays they live on the stack, one store-to-load chain per row).
// Sums are taken in another order than the templates' (float rounding differs); maxima,
// argmax indices (the first maximum) and NaN handling are the same.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace convattn {

using idx_t = int64_t;

namespace simd {

#if defined(__AVX512F__)

constexpr bool kFloat = true;
using V = __m512;
using VI = __m512i;
constexpr idx_t L = 16;  // lanes

inline __mmask16 lanes(idx_t n) {
  return n >= L ? __mmask16(0xFFFF) : __mmask16((1u << unsigned(n)) - 1u);
}
inline V zero() { return _mm512_setzero_ps(); }
inline V ninf() { return _mm512_set1_ps(-std::numeric_limits<float>::infinity()); }
inline V ld(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }

// Lane i of the result is op-reduced over the 16 lanes of v[i].
template <class Op>
inline V reduce16(const V* v, Op op) {
  V w[8], t[4], u[2];
  for (int i = 0; i < 8; ++i)  // 128-bit halves: rows 2i, 2i+1 -> 8 partials each
    w[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
              _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; ++i)  // -> one 128-bit lane (4 partials) per row
    t[i] = op(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
              _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i) {  // -> 2 partials per row
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = op(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
              _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const V r = op(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                 _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // Lane 4j + i now holds row j + 4i: transpose back.
  const VI perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(perm, r);
}
inline V sum16(const V* v) { return reduce16(v, [](V a, V b) { return add(a, b); }); }
inline V max16(const V* v) { return reduce16(v, [](V a, V b) { return vmax(a, b); }); }

// Per row r of e[r, k] = m[r, k] ru[r] cv[k] + rb[r] + cb[k] (biases may be nullptr):
// rsum, rmax and (if ridx) the first k of the max. Rows with a NaN sum are left to
// `fix_nan(r)` (the caller's scalar rule). ONE: the row fits in one vector (then the
// argmax is the first lane equal to the max).
template <bool ONE, bool IDX, class FixNan>
void pool_rows_impl(const float* m, idx_t R, idx_t K, const float* ru, const float* cv,
                    const float* rb, const float* cb, float* rsum, float* rmax, int32_t* ridx,
                    FixNan fix_nan) {
  const idx_t nv = ONE ? 1 : (K + L - 1) / L;
  const __mmask16 tail = lanes(K - L * (nv - 1));
  const bool bias = rb || cb;
  const V c0 = ld(cv, ONE ? tail : lanes(L));
  const V b0 = cb ? ld(cb, ONE ? tail : lanes(L)) : zero();
  const VI iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  alignas(64) float tmax[L], tsum[L];
  V vs[L], vm[L], ve[L];
  VI vi[L];
  for (idx_t r0 = 0; r0 < R; r0 += L) {
    const int nr = static_cast<int>(std::min<idx_t>(L, R - r0));
    for (int i = 0; i < L; ++i) {
      V s = zero(), mx = ninf();
      VI ix = _mm512_setzero_si512();
      if (i < nr) {
        const float* mr = m + (r0 + i) * K;
        const V u = _mm512_set1_ps(ru[r0 + i]);
        const V rbv = _mm512_set1_ps(rb ? rb[r0 + i] : 0.0f);
        if (ONE) {
          s = _mm512_mul_ps(_mm512_mul_ps(ld(mr, tail), u), c0);
          if (bias) s = _mm512_maskz_add_ps(tail, s, add(b0, rbv));
          mx = _mm512_mask_mov_ps(mx, tail, s);
          ve[i] = mx;
        } else {
          for (idx_t j = 0; j < nv; ++j) {
            const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
            V e = _mm512_mul_ps(_mm512_mul_ps(ld(mr + j * L, mk), u), ld(cv + j * L, mk));
            if (bias) e = _mm512_maskz_add_ps(mk, e, cb ? add(ld(cb + j * L, mk), rbv) : rbv);
            s = add(s, e);
            if (IDX) {
              const __mmask16 gt = _mm512_mask_cmp_ps_mask(mk, e, mx, _CMP_GT_OQ);
              mx = _mm512_mask_mov_ps(mx, gt, e);
              ix = _mm512_mask_mov_epi32(ix, gt, _mm512_set1_epi32(int(j)));
            } else {
              mx = _mm512_mask_max_ps(mx, mk, mx, e);
            }
          }
        }
      }
      vs[i] = s;
      vm[i] = mx;
      if (IDX && !ONE) vi[i] = ix;
    }
    const V S = sum16(vs), M = max16(vm);
    _mm512_store_ps(tsum, S);
    _mm512_store_ps(tmax, M);
    std::copy(tsum, tsum + nr, rsum + r0);
    std::copy(tmax, tmax + nr, rmax + r0);
    if (IDX) {  // the smallest k = 16 j + lane among lanes holding the row max
      for (int i = 0; i < nr; ++i) {
        const V bm = _mm512_set1_ps(tmax[i]);
        if (ONE) {
          const unsigned eq = _mm512_cmp_ps_mask(ve[i], bm, _CMP_EQ_OQ);
          ridx[r0 + i] = eq ? int32_t(__builtin_ctz(eq)) : 0;
        } else {
          const __mmask16 eq = _mm512_cmp_ps_mask(vm[i], bm, _CMP_EQ_OQ);
          const VI cand = _mm512_add_epi32(_mm512_slli_epi32(vi[i], 4), iota);
          ridx[r0 + i] = eq ? _mm512_mask_reduce_min_epi32(eq, cand) : 0;
        }
      }
    }
    if (_mm512_cmp_ps_mask(S, S, _CMP_UNORD_Q))
      for (int i = 0; i < nr; ++i)
        if (std::isnan(tsum[i])) fix_nan(r0 + i);
  }
}

template <class FixNan>
void pool_rows(const float* m, idx_t R, idx_t K, const float* ru, const float* cv,
               const float* rb, const float* cb, float* rsum, float* rmax, int32_t* ridx,
               FixNan fix_nan) {
  if (K <= L) {
    if (ridx)
      pool_rows_impl<true, true>(m, R, K, ru, cv, rb, cb, rsum, rmax, ridx, fix_nan);
    else
      pool_rows_impl<true, false>(m, R, K, ru, cv, rb, cb, rsum, rmax, ridx, fix_nan);
  } else {
    if (ridx)
      pool_rows_impl<false, true>(m, R, K, ru, cv, rb, cb, rsum, rmax, ridx, fix_nan);
    else
      pool_rows_impl<false, false>(m, R, K, ru, cv, rb, cb, rsum, rmax, ridx, fix_nan);
  }
}

// Column tile [k0, k0 + 16 NV) of pool_cols, accumulators in registers.
template <int NV, bool IDX>
void pool_cols_tile(const float* m, idx_t R, idx_t K, idx_t k0, const float* ru, const float* cv,
                    const float* rb, const float* cb, float* csum, float* cmax, int32_t* cidx) {
  __mmask16 mk[NV];
  V c[NV], b[NV], s[NV], mx[NV];
  VI ix[NV];
  for (int j = 0; j < NV; ++j) {
    mk[j] = lanes(K - k0 - j * L);
    c[j] = ld(cv + k0 + j * L, mk[j]);
    b[j] = cb ? ld(cb + k0 + j * L, mk[j]) : zero();
    s[j] = zero();
    mx[j] = ninf();
    ix[j] = _mm512_setzero_si512();
  }
  const bool bias = rb || cb;
  for (idx_t r = 0; r < R; ++r) {
    const float* mr = m + r * K + k0;
    const V u = _mm512_set1_ps(ru[r]);
    const V rbv = _mm512_set1_ps(rb ? rb[r] : 0.0f);
    const VI rv = _mm512_set1_epi32(int32_t(r));
    for (int j = 0; j < NV; ++j) {
      V e = _mm512_mul_ps(_mm512_mul_ps(ld(mr + j * L, mk[j]), u), c[j]);
      if (bias) e = add(e, add(b[j], rbv));
      s[j] = add(s[j], e);
      if (IDX) {
        const __mmask16 gt = _mm512_cmp_ps_mask(e, mx[j], _CMP_GT_OQ);
        mx[j] = _mm512_mask_mov_ps(mx[j], gt, e);
        ix[j] = _mm512_mask_mov_epi32(ix[j], gt, rv);
      } else {
        mx[j] = vmax(mx[j], e);
      }
    }
  }
  for (int j = 0; j < NV; ++j) {
    _mm512_mask_storeu_ps(csum + k0 + j * L, mk[j], s[j]);
    _mm512_mask_storeu_ps(cmax + k0 + j * L, mk[j], mx[j]);
    if (IDX) _mm512_mask_storeu_epi32(cidx + k0 + j * L, mk[j], ix[j]);
  }
}

// Per column k of e (as pool_rows): csum, cmax, cidx (first r of the max; if cidx). NaN
// columns are left to the caller.
inline void pool_cols(const float* m, idx_t R, idx_t K, const float* ru, const float* cv,
                      const float* rb, const float* cb, float* csum, float* cmax,
                      int32_t* cidx) {
  for (idx_t k0 = 0; k0 < K; k0 += 4 * L) {
    const idx_t nv = std::min<idx_t>(4, (K - k0 + L - 1) / L);
#define CONVATTN_TILE(NV)                                                            \
  (cidx ? pool_cols_tile<NV, true>(m, R, K, k0, ru, cv, rb, cb, csum, cmax, cidx)   \
        : pool_cols_tile<NV, false>(m, R, K, k0, ru, cv, rb, cb, csum, cmax, cidx))
    if (nv == 4)
      CONVATTN_TILE(4);
    else if (nv == 3)
      CONVATTN_TILE(3);
    else if (nv == 2)
      CONVATTN_TILE(2);
    else
      CONVATTN_TILE(1);
#undef CONVATTN_TILE
  }
}

// Column sums of p[r, k] w(r) in registers (K <= 16 NV); `row(r, j)` gives p's vector j of
// row r and `out` receives the sums. Used through the wrappers below.
template <int NV, class Row>
void col_sums(idx_t R, idx_t K, Row row, float* out) {
  V s[NV];
  for (int j = 0; j < NV; ++j) s[j] = zero();
  for (idx_t r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) s[j] = add(s[j], row(r, j, lanes(K - j * L)));
  for (int j = 0; j < NV; ++j) _mm512_mask_storeu_ps(out + j * L, lanes(K - j * L), s[j]);
}

// out[k] = sum_r f(r, k) for all K columns, in register tiles of 64 columns; `f(r, k0,
// mask)` gives the vector of columns [k0, k0 + 16).
template <class F>
void col_sums_all(idx_t R, idx_t K, F f, float* out) {
  for (idx_t k0 = 0; k0 < K; k0 += 4 * L) {
    const idx_t kw = std::min<idx_t>(4 * L, K - k0);
    auto row = [&](idx_t r, int j, __mmask16 mk) { return f(r, k0 + j * L, mk); };
    if (kw > 3 * L)
      col_sums<4>(R, kw, row, out + k0);
    else if (kw > 2 * L)
      col_sums<3>(R, kw, row, out + k0);
    else if (kw > L)
      col_sums<2>(R, kw, row, out + k0);
    else
      col_sums<1>(R, kw, row, out + k0);
  }
}

// out[r] = sum_k f(r, k) for all R rows; `f(r, k0, mask)` gives the vector of columns
// [k0, k0 + 16) of row r. Rows are reduced 16 at a time by the shuffle tree.
template <class F>
void row_sums_all(idx_t R, idx_t K, F f, float* out) {
  const idx_t nv = (K + L - 1) / L;
  alignas(64) float t[L];
  V vs[L];
  for (idx_t r0 = 0; r0 < R; r0 += L) {
    const int nr = static_cast<int>(std::min<idx_t>(L, R - r0));
    for (int i = 0; i < L; ++i) {
      V a = zero();
      if (i < nr)
        for (idx_t j = 0; j < nv; ++j) a = add(a, f(r0 + i, j * L, lanes(K - j * L)));
      vs[i] = a;
    }
    _mm512_store_ps(t, sum16(vs));
    std::copy(t, t + nr, out + r0);
  }
}

// Squared deviations: out[r] = sum_k (m[r, k] - mu[r])^2 (ROWS) or out[k] = sum_r
// (m[r, k] - mu[k])^2.
inline void sq_dev(const float* m, idx_t R, idx_t K, const float* mu, bool rows, float* out) {
  if (rows) {
    row_sums_all(R, K, [&](idx_t r, idx_t k, __mmask16 mk) {
      const V d = _mm512_maskz_sub_ps(mk, ld(m + r * K + k, mk), _mm512_set1_ps(mu[r]));
      return _mm512_mul_ps(d, d);
    }, out);
  } else {
    col_sums_all(R, K, [&](idx_t r, idx_t k, __mmask16 mk) {
      const V d = _mm512_sub_ps(ld(m + r * K + k, mk), ld(mu + k, mk));
      return _mm512_mul_ps(d, d);
    }, out);
  }
}

// The backward's reductions over g and x, with p = g x and q = g (each output optional):
//   rsum[r] = sum_k (p cv[k] + q cb[k]),  rsum1[r] = sum_k q cv[k],
//   csum[k] = sum_r (p ru[r] + q rb[r]),  csum1[k] = sum_r q ru[r].
// Column accumulators live in registers when K <= 64, else in memory.
inline void reduce_gx(const float* g, const float* x, idx_t R, idx_t K, const float* ru,
                      const float* cv, const float* rb, const float* cb, float* rsum,
                      float* rsum1, float* csum, float* csum1) {
  const idx_t nv = (K + L - 1) / L;
  const __mmask16 tail = lanes(K - L * (nv - 1));
  const bool rows = rsum || rsum1, cols = csum || csum1;
  const bool creg = nv <= 4;
  V ca[4], cq[4];
  for (int j = 0; j < 4; ++j) ca[j] = cq[j] = zero();
  if (cols && !creg) {
    if (csum) std::fill(csum, csum + K, 0.0f);
    if (csum1) std::fill(csum1, csum1 + K, 0.0f);
  }
  alignas(64) float t[L];
  V vs[L], vq[L];
  for (idx_t r0 = 0; r0 < R; r0 += L) {
    const int nr = static_cast<int>(std::min<idx_t>(L, R - r0));
    for (int i = 0; i < L; ++i) {
      V a = zero(), a1 = zero();
      if (i < nr) {
        const idx_t r = r0 + i, o = r * K;
        const V u = _mm512_set1_ps(ru ? ru[r] : 0.0f);
        const V ub = _mm512_set1_ps(rb ? rb[r] : 0.0f);
        for (idx_t j = 0; j < nv; ++j) {
          const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
          const V q = ld(g + o + j * L, mk);
          const V p = _mm512_mul_ps(q, ld(x + o + j * L, mk));
          if (rows) {
            const V c = ld(cv + j * L, mk);
            if (rsum) {
              a = _mm512_fmadd_ps(p, c, a);
              if (cb) a = _mm512_fmadd_ps(q, ld(cb + j * L, mk), a);
            }
            if (rsum1) a1 = _mm512_fmadd_ps(q, c, a1);
          }
          if (!cols) continue;
          V pc = _mm512_mul_ps(p, u);
          if (rb) pc = _mm512_fmadd_ps(q, ub, pc);
          const V qc = _mm512_mul_ps(q, u);
          if (creg) {
            if (csum) ca[j] = add(ca[j], pc);
            if (csum1) cq[j] = add(cq[j], qc);
          } else {
            if (csum) _mm512_mask_storeu_ps(csum + j * L, mk, add(ld(csum + j * L, mk), pc));
            if (csum1)
              _mm512_mask_storeu_ps(csum1 + j * L, mk, add(ld(csum1 + j * L, mk), qc));
          }
        }
      }
      vs[i] = a;
      vq[i] = a1;
    }
    if (rsum) {
      _mm512_store_ps(t, sum16(vs));
      std::copy(t, t + nr, rsum + r0);
    }
    if (rsum1) {
      _mm512_store_ps(t, sum16(vq));
      std::copy(t, t + nr, rsum1 + r0);
    }
  }
  if (cols && creg)
    for (idx_t j = 0; j < nv; ++j) {
      const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
      if (csum) _mm512_mask_storeu_ps(csum + j * L, mk, ca[j]);
      if (csum1) _mm512_mask_storeu_ps(csum1 + j * L, mk, cq[j]);
    }
}

// out[j][r] = sum_k m[r, k] w[j][k], J <= 3.
inline void wsum_rows(const float* m, idx_t R, idx_t K, int J, const float* const* w,
                      float* const* out) {
  const idx_t nv = (K + L - 1) / L;
  const __mmask16 tail = lanes(K - L * (nv - 1));
  alignas(64) float t[L];
  V vs[3][L];
  for (idx_t r0 = 0; r0 < R; r0 += L) {
    const int nr = static_cast<int>(std::min<idx_t>(L, R - r0));
    for (int i = 0; i < L; ++i) {
      for (int q = 0; q < J; ++q) vs[q][i] = zero();
      if (i >= nr) continue;
      const float* mr = m + (r0 + i) * K;
      for (idx_t j = 0; j < nv; ++j) {
        const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
        const V e = ld(mr + j * L, mk);
        for (int q = 0; q < J; ++q) vs[q][i] = _mm512_fmadd_ps(e, ld(w[q] + j * L, mk), vs[q][i]);
      }
    }
    for (int q = 0; q < J; ++q) {
      _mm512_store_ps(t, sum16(vs[q]));
      std::copy(t, t + nr, out[q] + r0);
    }
  }
}

// out[j][k] = sum_r m[r, k] w[j][r], J <= 3.
inline void wsum_cols(const float* m, idx_t R, idx_t K, int J, const float* const* w,
                      float* const* out) {
  for (int q = 0; q < J; ++q) {
    const float* wq = w[q];
    col_sums_all(R, K, [&](idx_t r, idx_t k, __mmask16 mk) {
      return _mm512_mul_ps(ld(m + r * K + k, mk), _mm512_set1_ps(wq[r]));
    }, out[q]);
  }
}

// exp(z): z = n ln2 + t, |t| <= ln2 / 2, exp(t) by its Taylor series to degree 7
// (truncation below 1e-8 relative), times 2^n by vscalefps, which also gives 0 and inf
// past float's range (z is clamped only to keep n finite).
inline V vexp(V z) {
  const V log2e = _mm512_set1_ps(1.44269504088896341f);
  const V ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
  z = _mm512_max_ps(_mm512_min_ps(z, _mm512_set1_ps(200.0f)), _mm512_set1_ps(-200.0f));
  const V n = _mm512_roundscale_ps(_mm512_mul_ps(z, log2e), _MM_FROUND_TO_NEAREST_INT);
  V t = _mm512_fnmadd_ps(n, ln2_hi, z);
  t = _mm512_fnmadd_ps(n, ln2_lo, t);
  V p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// out[i] = sigmoid(a s[i] + b).
inline void sigmoid_affine(const float* s, float a, float b, float* out, idx_t n) {
  const V va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), one = _mm512_set1_ps(1.0f);
  for (idx_t i = 0; i < n; i += L) {
    const __mmask16 mk = lanes(n - i);
    const V z = _mm512_fmadd_ps(va, ld(s + i, mk), vb);
    const V e = vexp(_mm512_sub_ps(_mm512_setzero_ps(), z));
    V y = _mm512_div_ps(one, _mm512_add_ps(one, e));
    // NaN in, NaN out (the clamp in vexp would hide it).
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q), z);
    _mm512_mask_storeu_ps(out + i, mk, y);
  }
}

// wide[i] = sum_t w[t] src[off[t] + i] for i < n: the taps of a 'same' convolution over a
// padded map, 64 outputs at a time in registers (src readable for off[t] + n).
inline void conv_taps(const float* src, const idx_t* off, const float* w, int T, float* wide,
                      idx_t n, bool accumulate) {
  for (idx_t i0 = 0; i0 < n; i0 += 4 * L) {
    __mmask16 mk[4];
    V acc[4];
    for (int j = 0; j < 4; ++j) {
      mk[j] = lanes(std::max<idx_t>(0, n - i0 - j * L));
      acc[j] = accumulate ? ld(wide + i0 + j * L, mk[j]) : zero();
    }
    for (int t = 0; t < T; ++t) {
      const V wt = _mm512_set1_ps(w[t]);
      const float* p = src + off[t] + i0;
      for (int j = 0; j < 4; ++j) acc[j] = _mm512_fmadd_ps(wt, ld(p + j * L, mk[j]), acc[j]);
    }
    for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(wide + i0 + j * L, mk[j], acc[j]);
  }
}

// gw[t] += sum_i src[off0 + t + i] gout[i] over i < n for the G taps t of one kernel row:
// one load of gout serves G products.
template <int G>
void conv_weight_taps(const float* src, const float* gout, idx_t n, double* gw) {
  V acc[G];
  for (int t = 0; t < G; ++t) acc[t] = zero();
  for (idx_t i = 0; i < n; i += L) {
    const __mmask16 mk = lanes(n - i);
    const V go = ld(gout + i, mk);
    for (int t = 0; t < G; ++t) acc[t] = _mm512_fmadd_ps(ld(src + t + i, mk), go, acc[t]);
  }
  for (int t = 0; t < G; ++t) gw[t] += double(_mm512_reduce_add_ps(acc[t]));
}

inline void conv_weight_row(const float* src, int k, const float* gout, idx_t n, double* gw) {
  int t = 0;
  for (; t + 7 <= k; t += 7) conv_weight_taps<7>(src + t, gout, n, gw + t);
  for (; t + 4 <= k; t += 4) conv_weight_taps<4>(src + t, gout, n, gw + t);
  for (; t + 2 <= k; t += 2) conv_weight_taps<2>(src + t, gout, n, gw + t);
  for (; t < k; ++t) conv_weight_taps<1>(src + t, gout, n, gw + t);
}

#else

constexpr bool kFloat = false;
// Declarations only, for the discarded `if constexpr` branches of cbam_kernels.h.
template <class... A>
void pool_rows(A...);
template <class... A>
void pool_cols(A...);
template <class... A>
void reduce_gx(A...);
template <class... A>
void sq_dev(A...);
template <class... A>
void wsum_rows(A...);
template <class... A>
void wsum_cols(A...);
template <class... A>
void sigmoid_affine(A...);
template <class... A>
void conv_taps(A...);
template <class... A>
void conv_weight_row(A...);

#endif

}  // namespace simd
}  // namespace convattn
