/* The strided first-layer conv ("stem": a few input channels, a kernel that is not a multiple of
 * the stride, e.g. ResNet's 7x7 stride-2 3 -> 64) on AVX2 + FMA, float32, from the input's
 * stride-phase planes (csrc/vsum.h ck_phases_f; conv_plan "stem" / "weight_stem").
 *
 * Tap k (c, kh, kw) of output row r reads the run Q + boff[k] + r*Wq of the phase planes (the
 * offsets of convkit/cpu/conv.py _phase_offsets), so both passes read the image in place, with
 * no column matrix and no GEMM packing:
 *
 * ck_stem_forward_f:
 *   y[f, r, j] = (sum over k in order of w[f, k] * Q[boff[k] + r*Wq + j]) + bias[f]
 *   for the task's rows r < hr and j < Wo.  One chain of fused multiply-adds per output, so the
 *   bits do not depend on the task split or the thread count.  Tiles of 4 filters (one of
 *   csrc/rowgemm.h's weight panels: its 4 weights of tap k one 16-byte run) x 24 / 16 / 8
 *   columns of one output row; loops are panel-outer, so a panel's weights (4*K floats) and the
 *   task's planes stay in L1 while the panel sweeps the rows.  Columns past Wo are never read
 *   or written (masked tails), so each output sees exactly its own window, padding included.
 *
 * ck_stem_wdot_f: the weight gradient as dot products,
 *   part[f, k, lane] += sum over r < hr, j = lane (mod 8), of
 *                       gy[f, r*Wo + j] * Q[boff[k] + r*Wq + j]
 *   for a tile of 4 filters x 3 taps (twelve accumulators, seven loads per twelve multiply-adds),
 *   each 8-lane sum started from 0 per call and added into part after it -- a fixed order set by
 *   the caller's row blocks alone; the bias gradient's lanes likewise, from the same gy rows
 *   while they are in L1.  Masked tails read neither operand past Wo.
 *
 * Both return 0, doing nothing, where the CPU lacks AVX2 or FMA (or on another architecture);
 * the plan picks them only where ck_rowgemm_available() says they run. */
#ifndef CK_STEM_H
#define CK_STEM_H

#include <stddef.h>
#include "rowgemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define CK_ST_TARGET __attribute__((target("avx2,fma")))
#define CK_ST_INLINE __attribute__((always_inline)) static inline

CK_ST_TARGET CK_ST_INLINE __m256i ck_st_mask(ptrdiff_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* row i of the panel: its weight of tap k times V column vectors */
#define CK_ST_FMA(i, a0, a1, a2)                                                                \
    do {                                                                                        \
        const __m256 wr = _mm256_broadcast_ss(wk + (i));                                        \
        a0 = _mm256_fmadd_ps(wr, x0, a0);                                                       \
        if (V > 1)                                                                              \
            a1 = _mm256_fmadd_ps(wr, x1, a1);                                                   \
        if (V > 2)                                                                              \
            a2 = _mm256_fmadd_ps(wr, x2, a2);                                                   \
    } while (0)
/* row i of the tile to o + i*ldo (+ its bias), the last of the V vectors masked when m */
#define CK_ST_OUT(i, a0, a1, a2)                                                                \
    do {                                                                                        \
        float *oi = o + (i) * ldo;                                                              \
        __m256 v0 = a0, v1 = a1, v2 = a2;                                                       \
        if (bias) {                                                                             \
            const __m256 bv = _mm256_broadcast_ss(bias + (i));                                  \
            v0 = _mm256_add_ps(v0, bv), v1 = _mm256_add_ps(v1, bv), v2 = _mm256_add_ps(v2, bv); \
        }                                                                                       \
        if (V == 1) {                                                                           \
            if (m) _mm256_maskstore_ps(oi, mask, v0); else _mm256_storeu_ps(oi, v0);            \
        } else if (V == 2) {                                                                    \
            _mm256_storeu_ps(oi, v0);                                                           \
            if (m) _mm256_maskstore_ps(oi + 8, mask, v1); else _mm256_storeu_ps(oi + 8, v1);    \
        } else {                                                                                \
            _mm256_storeu_ps(oi, v0), _mm256_storeu_ps(oi + 8, v1);                             \
            if (m) _mm256_maskstore_ps(oi + 16, mask, v2); else _mm256_storeu_ps(oi + 16, v2);  \
        }                                                                                       \
    } while (0)

/* 4 filters x V vectors of one output row (V = 1, 2, 3; constant after inlining), the last
 * vector masked to its first n lanes when m; named accumulators (an array of them stays in
 * memory under GCC) */
CK_ST_TARGET CK_ST_INLINE void ck_st_ftile(const int V, const int m, ptrdiff_t n, ptrdiff_t K,
                                           const float *w, const float *b,
                                           const ptrdiff_t *boff, float *o, ptrdiff_t ldo,
                                           const float *bias)
{
    const __m256i mask = ck_st_mask(n);
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    /* b in one register (else GCC re-adds the caller's column offset to each tap's offset)
     * and two taps per pass: 21 instructions per 12 multiply-adds instead of 26 */
    __asm__("" : "+r"(b));
    const float *wk = w;
#pragma GCC unroll 2
    for (const ptrdiff_t *bo = boff; bo < boff + K; ++bo, wk += 4) {
        const float *bk = b + *bo;
        __m256 x0, x1 = a00, x2 = a00;
        if (V == 1)
            x0 = m ? _mm256_maskload_ps(bk, mask) : _mm256_loadu_ps(bk);
        else
            x0 = _mm256_loadu_ps(bk);
        if (V == 2)
            x1 = m ? _mm256_maskload_ps(bk + 8, mask) : _mm256_loadu_ps(bk + 8);
        else if (V == 3)
            x1 = _mm256_loadu_ps(bk + 8);
        if (V == 3)
            x2 = m ? _mm256_maskload_ps(bk + 16, mask) : _mm256_loadu_ps(bk + 16);
        CK_ST_FMA(0, a00, a01, a02);
        CK_ST_FMA(1, a10, a11, a12);
        CK_ST_FMA(2, a20, a21, a22);
        CK_ST_FMA(3, a30, a31, a32);
    }
    CK_ST_OUT(0, a00, a01, a02);
    CK_ST_OUT(1, a10, a11, a12);
    CK_ST_OUT(2, a20, a21, a22);
    CK_ST_OUT(3, a30, a31, a32);
}

CK_ST_TARGET static void ck_stem_forward_avx2(ptrdiff_t F, ptrdiff_t K, const float *wt,
                                              const float *Q, const ptrdiff_t *boff,
                                              ptrdiff_t Wq, ptrdiff_t hr, ptrdiff_t Wo, float *y,
                                              ptrdiff_t ldy, const float *bias)
{
    for (ptrdiff_t p = 0; p < F; p += 4) {
        const float *w = wt + p * K;
        const float *bp = bias ? bias + p : NULL;
        for (ptrdiff_t r = 0; r < hr; ++r) {
            const float *b = Q + r * Wq;
            float *o = y + p * ldy + r * Wo;
            ptrdiff_t j = 0;
            for (; j + 24 <= Wo; j += 24)
                ck_st_ftile(3, 0, 8, K, w, b + j, boff, o + j, ldy, bp);
            const ptrdiff_t left = Wo - j;
            if (left > 16)
                ck_st_ftile(3, 1, left - 16, K, w, b + j, boff, o + j, ldy, bp);
            else if (left == 16)
                ck_st_ftile(2, 0, 8, K, w, b + j, boff, o + j, ldy, bp);
            else if (left > 8)
                ck_st_ftile(2, 1, left - 8, K, w, b + j, boff, o + j, ldy, bp);
            else if (left > 0)
                ck_st_ftile(1, left < 8, left, K, w, b + j, boff, o + j, ldy, bp);
        }
    }
}

/* one vector step of a 4-filter x 3-tap dot-product tile: filter rows gr + i*ldg, taps q0..q2,
 * accumulators a00..a32 (also csrc/stem_wgrad.h's tiles) */
#define CK_ST_WSTEP(LOAD, j)                                                                    \
        do {                                                                                    \
            const __m256 x0 = LOAD(q0 + (j)), x1 = LOAD(q1 + (j)), x2 = LOAD(q2 + (j));         \
            __m256 gv = LOAD(gr + (j));                                                         \
            a00 = _mm256_fmadd_ps(gv, x0, a00), a01 = _mm256_fmadd_ps(gv, x1, a01);             \
            a02 = _mm256_fmadd_ps(gv, x2, a02);                                                 \
            gv = LOAD(gr + ldg + (j));                                                          \
            a10 = _mm256_fmadd_ps(gv, x0, a10), a11 = _mm256_fmadd_ps(gv, x1, a11);             \
            a12 = _mm256_fmadd_ps(gv, x2, a12);                                                 \
            gv = LOAD(gr + 2 * ldg + (j));                                                      \
            a20 = _mm256_fmadd_ps(gv, x0, a20), a21 = _mm256_fmadd_ps(gv, x1, a21);             \
            a22 = _mm256_fmadd_ps(gv, x2, a22);                                                 \
            gv = LOAD(gr + 3 * ldg + (j));                                                      \
            a30 = _mm256_fmadd_ps(gv, x0, a30), a31 = _mm256_fmadd_ps(gv, x1, a31);             \
            a32 = _mm256_fmadd_ps(gv, x2, a32);                                                 \
        } while (0)
/* the step over n values: whole vectors, then the tail masked (mask: its lanes) */
#define CK_ST_WRUN(n)                                                                           \
        do {                                                                                    \
            const ptrdiff_t full_ = (n) & ~(ptrdiff_t)7;                                        \
            for (ptrdiff_t j = 0; j < full_; j += 8)                                            \
                CK_ST_WSTEP(_mm256_loadu_ps, j);                                                \
            if (full_ < (n))                                                                    \
                CK_ST_WSTEP(CK_ST_MLOAD, full_);                                                \
        } while (0)
#define CK_ST_MLOAD(p) _mm256_maskload_ps((p), mask)

/* the gradient's tile: filters g0..g3 (rows of gy, ldg apart) x taps boff[0..2], over hr rows
 * of Wo columns */
CK_ST_TARGET static void ck_st_wtile(ptrdiff_t hr, ptrdiff_t Wo, const float *g, ptrdiff_t ldg,
                                     const float *Q, ptrdiff_t Wq, const ptrdiff_t *boff,
                                     float *part, ptrdiff_t ldp)
{
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    const __m256i mask = ck_st_mask(Wo & 7);
    for (ptrdiff_t r = 0; r < hr; ++r) {
        const float *gr = g + r * Wo;
        const float *q0 = Q + boff[0] + r * Wq, *q1 = Q + boff[1] + r * Wq,
                    *q2 = Q + boff[2] + r * Wq;
        CK_ST_WRUN(Wo);
    }
#define CK_ST_ADD(i, t, a)                                                                      \
    _mm256_storeu_ps(part + (i) * ldp + 8 * (t),                                                \
                     _mm256_add_ps(_mm256_loadu_ps(part + (i) * ldp + 8 * (t)), a))
    CK_ST_ADD(0, 0, a00); CK_ST_ADD(0, 1, a01); CK_ST_ADD(0, 2, a02);
    CK_ST_ADD(1, 0, a10); CK_ST_ADD(1, 1, a11); CK_ST_ADD(1, 2, a12);
    CK_ST_ADD(2, 0, a20); CK_ST_ADD(2, 1, a21); CK_ST_ADD(2, 2, a22);
    CK_ST_ADD(3, 0, a30); CK_ST_ADD(3, 1, a31); CK_ST_ADD(3, 2, a32);
#undef CK_ST_ADD
}

static int ck_stem_forward_f(ptrdiff_t F, ptrdiff_t K, const float *wt, const float *Q,
                             const ptrdiff_t *boff, ptrdiff_t Wq, ptrdiff_t hr, ptrdiff_t Wo,
                             float *y, ptrdiff_t ldy, const float *bias)
{
    if (F % 4 != 0 || !ck_rowgemm_available())
        return 0;
    ck_stem_forward_avx2(F, K, wt, Q, boff, Wq, hr, Wo, y, ldy, bias);
    return 1;
}

/* the bias gradient's lanes of one filter: part[lane] += sum over its hr rows (still in L1
 * from the tiles) of gy[r*Wo + j], j = lane (mod 8) */
CK_ST_TARGET static void ck_st_bias_lanes(ptrdiff_t hr, ptrdiff_t Wo, const float *g,
                                          float *part)
{
    const ptrdiff_t full = Wo & ~(ptrdiff_t)7;
    const __m256i mask = ck_st_mask(Wo - full);
    __m256 a = _mm256_setzero_ps();
    for (ptrdiff_t r = 0; r < hr; ++r) {
        const float *gr = g + r * Wo;
        for (ptrdiff_t j = 0; j < full; j += 8)
            a = _mm256_add_ps(a, _mm256_loadu_ps(gr + j));
        if (full < Wo)
            a = _mm256_add_ps(a, _mm256_maskload_ps(gr + full, mask));
    }
    _mm256_storeu_ps(part, _mm256_add_ps(_mm256_loadu_ps(part), a));
}

/* filters [0, F) (F a multiple of 4; gy rows ldg apart), taps [0, K3) (K3 a multiple of 3:
 * the caller pads boff with offsets that read inside Q and drops their sums); part[f, k, 8]:
 * row f of part is ldp >= 8*K3 floats; with_bias: the bias gradient's 8 lanes of filter f at
 * part + f*ldp + 8*K3 too */
static int ck_stem_wdot_f(ptrdiff_t F, ptrdiff_t K3, ptrdiff_t hr, ptrdiff_t Wo,
                          const float *gy, ptrdiff_t ldg, const float *Q, ptrdiff_t Wq,
                          const ptrdiff_t *boff, float *part, ptrdiff_t ldp, int with_bias)
{
    if (F % 4 != 0 || K3 % 3 != 0 || ldp < 8 * K3 + (with_bias ? 8 : 0)
            || !ck_rowgemm_available())
        return 0;
    for (ptrdiff_t f = 0; f < F; f += 4) {
        for (ptrdiff_t k = 0; k < K3; k += 3)
            ck_st_wtile(hr, Wo, gy + f * ldg, ldg, Q, Wq, boff + k, part + f * ldp + 8 * k,
                        ldp);
        if (with_bias)
            for (ptrdiff_t i = 0; i < 4; ++i)
                ck_st_bias_lanes(hr, Wo, gy + (f + i) * ldg, part + (f + i) * ldp + 8 * K3);
    }
    return 1;
}

#else

static int ck_stem_forward_f(ptrdiff_t F, ptrdiff_t K, const float *wt, const float *Q,
                             const ptrdiff_t *boff, ptrdiff_t Wq, ptrdiff_t hr, ptrdiff_t Wo,
                             float *y, ptrdiff_t ldy, const float *bias)
{
    (void)F; (void)K; (void)wt; (void)Q; (void)boff; (void)Wq; (void)hr; (void)Wo; (void)y;
    (void)ldy; (void)bias;
    return 0;
}

static int ck_stem_wdot_f(ptrdiff_t F, ptrdiff_t K3, ptrdiff_t hr, ptrdiff_t Wo,
                          const float *gy, ptrdiff_t ldg, const float *Q, ptrdiff_t Wq,
                          const ptrdiff_t *boff, float *part, ptrdiff_t ldp, int with_bias)
{
    (void)F; (void)K3; (void)hr; (void)Wo; (void)gy; (void)ldg; (void)Q; (void)Wq; (void)boff;
    (void)part; (void)ldp; (void)with_bias;
    return 0;
}

#endif
#endif
