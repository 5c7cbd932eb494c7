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
// Long sums are blocked as the templates' are (see kBlock), in another order (float rounding
// differs); maxima, argmax indices (the first maximum) and NaN handling are the same.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace convattn {

using idx_t = int64_t;

// Sums over the positions or the channels of a sample (thousands of terms on large maps)
// are float partial sums of at most kBlock terms per vector lane, added up in double: a
// plain float sum of n terms drifts by up to n ulps, a blocked one by about kBlock
// whatever n, for one conversion per kBlock vectors.
constexpr idx_t kBlock = 16;

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

// tot[0, 16) += v, in double.
inline void add_wide(double* tot, V v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  _mm512_storeu_pd(tot, _mm512_add_pd(_mm512_loadu_pd(tot), _mm512_cvtps_pd(lo)));
  _mm512_storeu_pd(tot + 8, _mm512_add_pd(_mm512_loadu_pd(tot + 8), _mm512_cvtps_pd(hi)));
}
// The 16 lanes of tot rounded to float.
inline V narrow(const double* tot) {
  const __m256 lo = _mm512_cvtpd_ps(_mm512_loadu_pd(tot));
  const __m256 hi = _mm512_cvtpd_ps(_mm512_loadu_pd(tot + 8));
  const __m512d w = _mm512_castps_pd(_mm512_castps256_ps512(lo));
  return _mm512_castpd_ps(_mm512_insertf64x4(w, _mm256_castps_pd(hi), 1));
}
// The sum of the 16 lanes of tot.
inline double hsum_wide(const double* tot) {
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_loadu_pd(tot), _mm512_loadu_pd(tot + 8)));
}
// x - pivot in the lanes of mk, 0 elsewhere (pivot: a row's broadcast or a column vector).
inline V centred(V x, V piv, __mmask16 mk) { return _mm512_maskz_sub_ps(mk, x, piv); }

// Per row r of e[r, k] = (m[r, k] - rp[r] - cp[k]) ru[r] cv[k] + rb[r] + cb[k] (pivots and
// biases may be nullptr): rsum, rmax and (if ridx) the first k of the max. Rows with a NaN
// sum are left to `fix_nan(r)` (the caller's scalar rule). ONE: the row fits in one vector
// (then the argmax is the first lane equal to the max).
template <bool ONE, bool IDX, class FixNan>
void pool_rows_impl(const float* m, idx_t R, idx_t K, const float* ru, const float* cv,
                    const float* rb, const float* cb, const float* rp, const float* cp,
                    float* rsum, float* rmax, int32_t* ridx, FixNan fix_nan) {
  const idx_t nv = ONE ? 1 : (K + L - 1) / L;
  const __mmask16 tail = lanes(K - L * (nv - 1));
  const bool bias = rb || cb, piv = rp || cp, lng = nv > kBlock;
  const V c0 = ld(cv, ONE ? tail : lanes(L));
  const V b0 = cb ? ld(cb, ONE ? tail : lanes(L)) : zero();
  const V p0 = cp ? ld(cp, ONE ? tail : lanes(L)) : zero();
  const VI iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  alignas(64) float tmax[L], tsum[L];
  alignas(64) double wide[L];
  double rt[L];
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
        const V rpv = _mm512_set1_ps(rp ? rp[r0 + i] : 0.0f);
        if (ONE) {
          V xv = ld(mr, tail);
          if (piv) xv = centred(xv, cp ? p0 : rpv, tail);
          s = _mm512_mul_ps(_mm512_mul_ps(xv, u), c0);
          if (bias) s = _mm512_maskz_add_ps(tail, s, add(b0, rbv));
          mx = _mm512_mask_mov_ps(mx, tail, s);
          ve[i] = mx;
        } else {
          if (lng) std::fill(wide, wide + L, 0.0);
          for (idx_t j0 = 0; j0 < nv; j0 += kBlock) {
            for (idx_t j = j0; j < std::min(nv, j0 + kBlock); ++j) {
              const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
              V xv = ld(mr + j * L, mk);
              if (piv) xv = centred(xv, cp ? ld(cp + j * L, mk) : rpv, mk);
              V e = _mm512_mul_ps(_mm512_mul_ps(xv, u), ld(cv + j * L, mk));
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
            if (lng) {
              add_wide(wide, s);
              s = zero();
            }
          }
          if (lng) rt[i] = hsum_wide(wide);
        }
      }
      vs[i] = s;
      vm[i] = mx;
      if (IDX && !ONE) vi[i] = ix;
    }
    if (lng) {
      for (int i = 0; i < nr; ++i) tsum[i] = static_cast<float>(rt[i]);
    } else {
      _mm512_store_ps(tsum, sum16(vs));
    }
    _mm512_store_ps(tmax, max16(vm));
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
    for (int i = 0; i < nr; ++i)
      if (std::isnan(tsum[i])) fix_nan(r0 + i);
  }
}

template <class FixNan>
void pool_rows(const float* m, idx_t R, idx_t K, const float* ru, const float* cv,
               const float* rb, const float* cb, const float* rp, const float* cp, float* rsum,
               float* rmax, int32_t* ridx, FixNan fix_nan) {
  if (K <= L) {
    if (ridx)
      pool_rows_impl<true, true>(m, R, K, ru, cv, rb, cb, rp, cp, rsum, rmax, ridx, fix_nan);
    else
      pool_rows_impl<true, false>(m, R, K, ru, cv, rb, cb, rp, cp, rsum, rmax, ridx, fix_nan);
  } else {
    if (ridx)
      pool_rows_impl<false, true>(m, R, K, ru, cv, rb, cb, rp, cp, rsum, rmax, ridx, fix_nan);
    else
      pool_rows_impl<false, false>(m, R, K, ru, cv, rb, cb, rp, cp, rsum, rmax, ridx, fix_nan);
  }
}

// Column tile [k0, k0 + 16 NV) of pool_cols, accumulators in registers.
template <int NV, bool IDX>
void pool_cols_tile(const float* m, idx_t R, idx_t K, idx_t k0, const float* ru, const float* cv,
                    const float* rb, const float* cb, const float* rp, const float* cp,
                    float* csum, float* cmax, int32_t* cidx) {
  __mmask16 mk[NV];
  V c[NV], b[NV], pc[NV], s[NV], mx[NV];
  VI ix[NV];
  alignas(64) double wide[NV][L];
  for (int j = 0; j < NV; ++j) {
    mk[j] = lanes(K - k0 - j * L);
    c[j] = ld(cv + k0 + j * L, mk[j]);
    b[j] = cb ? ld(cb + k0 + j * L, mk[j]) : zero();
    pc[j] = cp ? ld(cp + k0 + j * L, mk[j]) : zero();
    s[j] = zero();
    mx[j] = ninf();
    ix[j] = _mm512_setzero_si512();
    std::fill(wide[j], wide[j] + L, 0.0);
  }
  const bool bias = rb || cb, piv = rp || cp, lng = R > kBlock;
  for (idx_t r0 = 0; r0 < R; r0 += kBlock) {
    for (idx_t r = r0; r < std::min(R, r0 + kBlock); ++r) {
      const float* mr = m + r * K + k0;
      const V u = _mm512_set1_ps(ru[r]);
      const V rbv = _mm512_set1_ps(rb ? rb[r] : 0.0f);
      const V rpv = _mm512_set1_ps(rp ? rp[r] : 0.0f);
      const VI rv = _mm512_set1_epi32(int32_t(r));
      for (int j = 0; j < NV; ++j) {
        V xv = ld(mr + j * L, mk[j]);
        if (piv) xv = centred(xv, cp ? pc[j] : rpv, mk[j]);
        V e = _mm512_mul_ps(_mm512_mul_ps(xv, u), c[j]);
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
    if (lng)
      for (int j = 0; j < NV; ++j) {
        add_wide(wide[j], s[j]);
        s[j] = zero();
      }
  }
  for (int j = 0; j < NV; ++j) {
    _mm512_mask_storeu_ps(csum + k0 + j * L, mk[j], lng ? narrow(wide[j]) : s[j]);
    _mm512_mask_storeu_ps(cmax + k0 + j * L, mk[j], mx[j]);
    if (IDX) _mm512_mask_storeu_epi32(cidx + k0 + j * L, mk[j], ix[j]);
  }
}

// Per column k of e (as pool_rows): csum, cmax, cidx (first r of the max; if cidx). NaN
// columns are left to the caller.
inline void pool_cols(const float* m, idx_t R, idx_t K, const float* ru, const float* cv,
                      const float* rb, const float* cb, const float* rp, const float* cp,
                      float* csum, float* cmax, int32_t* cidx) {
  for (idx_t k0 = 0; k0 < K; k0 += 4 * L) {
    const idx_t nv = std::min<idx_t>(4, (K - k0 + L - 1) / L);
#define CONVATTN_TILE(NV)                                                                  \
  (cidx ? pool_cols_tile<NV, true>(m, R, K, k0, ru, cv, rb, cb, rp, cp, csum, cmax, cidx) \
        : pool_cols_tile<NV, false>(m, R, K, k0, ru, cv, rb, cb, rp, cp, csum, cmax, cidx))
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

// J column sums in registers (K <= 16 NV): `add(r, j, mask, acc)` adds row r's vector j of
// each of the J summands into acc[0, J); out[q] receives the sums of summand q.
template <int J, int NV, class Add>
void col_sums(idx_t R, idx_t K, Add add_row, float* const* out) {
  V s[NV][J];
  alignas(64) double wide[NV][J][L];
  const bool lng = R > kBlock;
  for (int j = 0; j < NV; ++j)
    for (int q = 0; q < J; ++q) {
      s[j][q] = zero();
      std::fill(wide[j][q], wide[j][q] + L, 0.0);
    }
  for (idx_t r0 = 0; r0 < R; r0 += kBlock) {
    for (idx_t r = r0; r < std::min(R, r0 + kBlock); ++r)
      for (int j = 0; j < NV; ++j) add_row(r, j, lanes(K - j * L), s[j]);
    if (lng)
      for (int j = 0; j < NV; ++j)
        for (int q = 0; q < J; ++q) {
          add_wide(wide[j][q], s[j][q]);
          s[j][q] = zero();
        }
  }
  for (int j = 0; j < NV; ++j)
    for (int q = 0; q < J; ++q)
      _mm512_mask_storeu_ps(out[q] + j * L, lanes(K - j * L), lng ? narrow(wide[j][q]) : s[j][q]);
}

// out[q][k] = sum_r of summand q at (r, k), for all K columns, in register tiles of 64
// columns; `add(r, k0, mask, acc)` adds the summands' vectors of columns [k0, k0 + 16).
template <int J, class Add>
void col_sums_all(idx_t R, idx_t K, Add add_row, float* const* out) {
  for (idx_t k0 = 0; k0 < K; k0 += 4 * L) {
    const idx_t kw = std::min<idx_t>(4 * L, K - k0);
    auto row = [&](idx_t r, int j, __mmask16 mk, V* acc) { add_row(r, k0 + j * L, mk, acc); };
    float* o[J];
    for (int q = 0; q < J; ++q) o[q] = out[q] + k0;
    if (kw > 3 * L)
      col_sums<J, 4>(R, kw, row, o);
    else if (kw > 2 * L)
      col_sums<J, 3>(R, kw, row, o);
    else if (kw > L)
      col_sums<J, 2>(R, kw, row, o);
    else
      col_sums<J, 1>(R, kw, row, o);
  }
}

// out[q][r] = sum_k of summand q at (r, k), for all R rows; `add(r, k0, mask, acc)` adds the
// summands' vectors of columns [k0, k0 + 16) of row r. Rows of up to kBlock vectors are
// reduced 16 at a time by the shuffle tree, longer ones in double per row.
template <int J, class Add>
void row_sums_all(idx_t R, idx_t K, Add add_row, float* const* out) {
  const idx_t nv = (K + L - 1) / L;
  const bool lng = nv > kBlock;
  alignas(64) float t[L];
  alignas(64) double wide[J][L];
  V vs[J][L];
  for (idx_t r0 = 0; r0 < R; r0 += L) {
    const int nr = static_cast<int>(std::min<idx_t>(L, R - r0));
    for (int i = 0; i < L; ++i) {
      V a[J];
      for (int q = 0; q < J; ++q) a[q] = zero();
      if (i < nr) {
        if (lng)
          for (int q = 0; q < J; ++q) std::fill(wide[q], wide[q] + L, 0.0);
        for (idx_t j0 = 0; j0 < nv; j0 += kBlock) {
          for (idx_t j = j0; j < std::min(nv, j0 + kBlock); ++j)
            add_row(r0 + i, j * L, lanes(K - j * L), a);
          if (lng)
            for (int q = 0; q < J; ++q) {
              add_wide(wide[q], a[q]);
              a[q] = zero();
            }
        }
        if (lng)
          for (int q = 0; q < J; ++q) out[q][r0 + i] = static_cast<float>(hsum_wide(wide[q]));
      }
      for (int q = 0; q < J; ++q) vs[q][i] = a[q];
    }
    if (lng) continue;
    for (int q = 0; q < J; ++q) {
      _mm512_store_ps(t, sum16(vs[q]));
      std::copy(t, t + nr, out[q] + r0);
    }
  }
}

// Squared deviations: out[r] = sum_k (m[r, k] - mu[r])^2 (ROWS) or out[k] = sum_r
// (m[r, k] - mu[k])^2, and the plain deviations' sums into res (if not nullptr).
inline void sq_dev(const float* m, idx_t R, idx_t K, const float* mu, bool rows, float* out,
                   float* res) {
  float* outs[2] = {out, res};
  auto dev = [&](idx_t r, idx_t k, __mmask16 mk) {
    return centred(ld(m + r * K + k, mk), rows ? _mm512_set1_ps(mu[r]) : ld(mu + k, mk), mk);
  };
  auto sq = [&](idx_t r, idx_t k, __mmask16 mk, V* a) {
    const V d = dev(r, k, mk);
    a[0] = _mm512_fmadd_ps(d, d, a[0]);
  };
  auto sq_res = [&](idx_t r, idx_t k, __mmask16 mk, V* a) {
    const V d = dev(r, k, mk);
    a[0] = _mm512_fmadd_ps(d, d, a[0]);
    a[1] = add(a[1], d);
  };
  if (rows && res)
    row_sums_all<2>(R, K, sq_res, outs);
  else if (rows)
    row_sums_all<1>(R, K, sq, outs);
  else if (res)
    col_sums_all<2>(R, K, sq_res, outs);
  else
    col_sums_all<1>(R, K, sq, outs);
}

// The backward's reductions over g and x, with p = g (x - rp[r] - cp[k]) and q = g (each
// output and pivot optional):
//   rsum[r] = sum_k (p cv[k] + q cb[k]),  rsum1[r] = sum_k q cv[k],
//   csum[k] = sum_r (p ru[r] + q rb[r]),  csum1[k] = sum_r q ru[r].
// Column accumulators live in registers when K <= 64, else in memory; either way they are
// added into double every kBlock rows (`wide`), as long rows are per row.
inline void reduce_gx(const float* g, const float* x, idx_t R, idx_t K, const float* ru,
                      const float* cv, const float* rb, const float* cb, const float* rp,
                      const float* cp, float* rsum, float* rsum1, float* csum, float* csum1) {
  const idx_t nv = (K + L - 1) / L;
  const __mmask16 tail = lanes(K - L * (nv - 1));
  const bool rows = rsum || rsum1, cols = csum || csum1, piv = rp || cp;
  const bool creg = nv <= 4, rlong = nv > kBlock, clong = R > kBlock;
  V ca[4], cq[4];
  for (int j = 0; j < 4; ++j) ca[j] = cq[j] = zero();
  thread_local std::vector<double> wa, wq;  // column totals, 16 per vector of columns
  if (cols && clong) {
    wa.assign(csum ? nv * L : 0, 0.0);
    wq.assign(csum1 ? nv * L : 0, 0.0);
  }
  if (cols && !creg) {
    if (csum) std::fill(csum, csum + K, 0.0f);
    if (csum1) std::fill(csum1, csum1 + K, 0.0f);
  }
  auto flush_cols = [&] {
    for (idx_t j = 0; j < nv; ++j) {
      const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
      for (int which = 0; which < 2; ++which) {
        float* out = which ? csum1 : csum;
        if (!out) continue;
        double* tot = (which ? wq : wa).data() + j * L;
        V& acc = which ? cq[j] : ca[j];
        if (creg) {
          add_wide(tot, acc);
          acc = zero();
        } else {
          add_wide(tot, ld(out + j * L, mk));
          _mm512_mask_storeu_ps(out + j * L, mk, zero());
        }
      }
    }
  };
  alignas(64) float t[L];
  alignas(64) double ra[L], rq[L];
  double rta[L], rtq[L];
  V vs[L], vq[L];
  for (idx_t r0 = 0; r0 < R; r0 += L) {
    const int nr = static_cast<int>(std::min<idx_t>(L, R - r0));
    for (int i = 0; i < L; ++i) {
      V a = zero(), a1 = zero();
      if (i < nr) {
        const idx_t r = r0 + i, o = r * K;
        const V u = _mm512_set1_ps(ru ? ru[r] : 0.0f);
        const V ub = _mm512_set1_ps(rb ? rb[r] : 0.0f);
        const V rpv = _mm512_set1_ps(rp ? rp[r] : 0.0f);
        if (rows && rlong) {
          std::fill(ra, ra + L, 0.0);
          std::fill(rq, rq + L, 0.0);
        }
        for (idx_t j0 = 0; j0 < nv; j0 += kBlock) {
          for (idx_t j = j0; j < std::min(nv, j0 + kBlock); ++j) {
            const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
            const V q = ld(g + o + j * L, mk);
            V xv = ld(x + o + j * L, mk);
            if (piv) xv = centred(xv, cp ? ld(cp + j * L, mk) : rpv, mk);
            const V p = _mm512_mul_ps(q, xv);
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
          if (rows && rlong) {
            add_wide(ra, a);
            add_wide(rq, a1);
            a = a1 = zero();
          }
        }
        if (rows && rlong) {
          rta[i] = hsum_wide(ra);
          rtq[i] = hsum_wide(rq);
        }
        if (cols && clong && (r + 1) % kBlock == 0) flush_cols();
      }
      vs[i] = a;
      vq[i] = a1;
    }
    for (int w = 0; w < 2; ++w) {
      float* out = w ? rsum1 : rsum;
      if (!out) continue;
      if (rlong) {
        for (int i = 0; i < nr; ++i) out[r0 + i] = static_cast<float>(w ? rtq[i] : rta[i]);
      } else {
        _mm512_store_ps(t, sum16(w ? vq : vs));
        std::copy(t, t + nr, out + r0);
      }
    }
  }
  if (!cols) return;
  if (clong) flush_cols();  // the rows since the last flush
  for (idx_t j = 0; j < nv; ++j) {
    const __mmask16 mk = j == nv - 1 ? tail : lanes(L);
    if (creg && !clong) {
      if (csum) _mm512_mask_storeu_ps(csum + j * L, mk, ca[j]);
      if (csum1) _mm512_mask_storeu_ps(csum1 + j * L, mk, cq[j]);
    } else if (clong) {
      if (csum) _mm512_mask_storeu_ps(csum + j * L, mk, narrow(wa.data() + j * L));
      if (csum1) _mm512_mask_storeu_ps(csum1 + j * L, mk, narrow(wq.data() + j * L));
    }
  }
}

// out[j][r] = sum_k (m[r, k] - rp[r]) w[j][k], J <= 3 (rp optional).
inline void wsum_rows(const float* m, idx_t R, idx_t K, int J, const float* const* w,
                      const float* rp, float* const* out) {
  auto sums = [&](auto nj) {
    constexpr int NJ = decltype(nj)::value;
    row_sums_all<NJ>(R, K, [&](idx_t r, idx_t k, __mmask16 mk, V* a) {
      V e = ld(m + r * K + k, mk);
      if (rp) e = centred(e, _mm512_set1_ps(rp[r]), mk);
      for (int q = 0; q < NJ; ++q) a[q] = _mm512_fmadd_ps(e, ld(w[q] + k, mk), a[q]);
    }, out);
  };
  if (J == 1)
    sums(std::integral_constant<int, 1>());
  else if (J == 2)
    sums(std::integral_constant<int, 2>());
  else
    sums(std::integral_constant<int, 3>());
}

// out[j][k] = sum_r (m[r, k] - cp[k]) w[j][r], J <= 3 (cp optional).
inline void wsum_cols(const float* m, idx_t R, idx_t K, int J, const float* const* w,
                      const float* cp, float* const* out) {
  auto sums = [&](auto nj) {
    constexpr int NJ = decltype(nj)::value;
    col_sums_all<NJ>(R, K, [&](idx_t r, idx_t k, __mmask16 mk, V* a) {
      V e = ld(m + r * K + k, mk);
      if (cp) e = centred(e, ld(cp + k, mk), mk);
      for (int q = 0; q < NJ; ++q) a[q] = _mm512_fmadd_ps(e, _mm512_set1_ps(w[q][r]), a[q]);
    }, out);
  };
  if (J == 1)
    sums(std::integral_constant<int, 1>());
  else if (J == 2)
    sums(std::integral_constant<int, 2>());
  else
    sums(std::integral_constant<int, 3>());
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

// out[i] = sigmoid(a (s[i] - c) + b).
inline void sigmoid_affine(const float* s, float a, float c, float b, float* out, idx_t n) {
  const V va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), vc = _mm512_set1_ps(c);
  const V one = _mm512_set1_ps(1.0f);
  for (idx_t i = 0; i < n; i += L) {
    const __mmask16 mk = lanes(n - i);
    const V z = _mm512_fmadd_ps(va, _mm512_sub_ps(ld(s + i, mk), vc), vb);
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
