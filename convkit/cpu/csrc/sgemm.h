/* convkit's packed single-precision GEMM for x86-64 CPUs with AVX-512F.
 *
 * Row-major C (m x n, row stride ldc) = alpha * op(A) @ op(B) + beta * C, where op(A) is m x k
 * (A stored k x m when ta) and op(B) is k x n (B stored n x k when tb).  beta == 0 never reads C.
 *
 * Why our own: scipy's OpenBLAS re-packs both operands on every call and runs the conv shapes
 * (64 x 147 x 12544 for a 7x7 stem, 64 x 576 x 3136 for a 3x3 layer) at 70-110 GFLOP/s on one
 * core, where the core's AVX-512 peak is about 160 (bench/RESULTS.md, "own GEMM").
 *
 * Scheme (the classic blocked GEMM): B is packed per (KC x NC) block into NR-wide panels, A per
 * (MC x KC) block into MR-tall panels, and an 8 x 48 register tile (24 zmm accumulators; each k
 * step loads three vectors of B and broadcasts 8 scalars of A) runs over the packed panels.
 * MR = 8 divides every usual channel count (a 12-row tile wastes 11% of a 64-row GEMM); each
 * B panel is packed just before its first use, so it is in L1 for that pass.  KC = 192 keeps a
 * B panel (36 KiB) in L1 beside the streamed A panel; NC ~ 1000 keeps the B block in L2.
 * The shapes were picked by timing 8 conv GEMM shapes (bench/RESULTS.md, "own GEMM").
 * When all of C's rows fit one pass (m <= MC) and B is not transposed, B is not packed: the
 * kernel reads its rows in place (or at listed row offsets: an implicit im2col).  Edge tiles run
 * a narrower kernel (1-4 rows, 1-3 vectors per row) and store only their rows and columns
 * (masked stores).  The summation order over k is fixed (k ascending within a KC block, blocks
 * in order), so the result is the same on every run and for any thread count of the caller.
 *
 * Single-threaded: every caller in convkit runs it inside its own OpenMP team.  Each thread keeps
 * its packing buffers for reuse: (CK_MC + CK_NC) * CK_KC_MAX floats = 1.0 MiB per thread,
 * allocated on the thread's first call, freed when the thread exits (README, "Memory").
 *
 * ck_sgemm returns 0 when it did nothing (no AVX-512F on this CPU or OS, a non-GCC compiler,
 * CONVKIT_DISABLE_AVX512=1 in the environment, or the buffers could not be allocated); the
 * caller then uses BLAS.
 */
#ifndef CONVKIT_SGEMM_H
#define CONVKIT_SGEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(CONVKIT_NO_SGEMM)
#define CK_SGEMM_BUILT 1
#include <immintrin.h>
#include <pthread.h>
#else
#define CK_SGEMM_BUILT 0
#endif

#if CK_SGEMM_BUILT

#ifndef CK_MR
#define CK_MR 8
#endif
#ifndef CK_NV
#define CK_NV 3  /* zmm vectors per tile row */
#endif
#define CK_NR (16 * CK_NV)
#ifndef CK_KC
#define CK_KC 192
#endif
#ifndef CK_DIRECT_MAX_M
#define CK_DIRECT_MAX_M CK_MC  /* up to this many rows of C, B (not transposed) is not packed */
#endif
#define CK_KC_MAX (CK_KC + CK_KC / 4)  /* the most k one block takes (B panel 45 KiB at most) */
#ifndef CK_MC
#define CK_MC 96   /* a multiple of CK_MR */
#endif
#ifndef CK_NC
#define CK_NC (CK_NR * (1024 / CK_NR))  /* about 1024 columns, a multiple of CK_NR */
#endif

static __thread float *ck_pack_a = NULL;
static __thread float *ck_pack_b = NULL;

static int ck_sgemm_available(void)
{
    static int state = -1;  /* benign race: every thread computes the same value */
    if (state < 0) {
        /* (CONVKIT_DISABLE_AVX512=1, isa.h: BLAS and the portable loops everywhere, for
         * tests of those paths and for comparing against them) */
        __builtin_cpu_init();
        state = CK_CPU_HAS_AVX512() ? 1 : 0;
    }
    return state;
}

/* The buffers are freed when their thread exits (a thread-specific key's destructor), so a
 * program that calls convs from many short-lived threads does not keep 1 MiB per thread. */
static pthread_key_t ck_buffers_key;
static pthread_once_t ck_buffers_once = PTHREAD_ONCE_INIT;
static int ck_buffers_key_ok = 0;

static void ck_buffers_free(void *unused)
{
    (void)unused;
    free(ck_pack_a);
    free(ck_pack_b);
    ck_pack_a = ck_pack_b = NULL;
}

static void ck_buffers_key_init(void)
{
    ck_buffers_key_ok = pthread_key_create(&ck_buffers_key, ck_buffers_free) == 0;
}

static int ck_buffers(void)
{
    if (ck_pack_a != NULL && ck_pack_b != NULL)
        return 1;
    pthread_once(&ck_buffers_once, ck_buffers_key_init);
    if (ck_pack_a == NULL)
        ck_pack_a = (float *)aligned_alloc(64, sizeof(float) * CK_MC * CK_KC_MAX);
    if (ck_pack_b == NULL)
        ck_pack_b = (float *)aligned_alloc(64, sizeof(float) * CK_KC_MAX * CK_NC);
    if (ck_buffers_key_ok)  /* any non-NULL value makes the destructor run at thread exit */
        pthread_setspecific(ck_buffers_key, (void *)1);
    return ck_pack_a != NULL && ck_pack_b != NULL;
}

/* The packing routines move each element with vector loads, stores and in-register 16 x 16
 * transposes: for a 64-row GEMM every element of B feeds only 64 multiply-adds (two cycles of
 * the kernel), so a scalar element-by-element pack would cost as much as the arithmetic. */
#define CK_TARGET CK_AVX512_TARGET

static inline __mmask16 ck_mask(ptrdiff_t n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* r[i] (16 rows of 16) becomes its transpose in place. */
CK_TARGET static inline void ck_transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  /* u[i + q]: column 4L + q of rows i..i+3, lane L */
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int q = 0; q < 4; ++q) {
        __m512 x01 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x44);
        __m512 x23 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xEE);
        __m512 y01 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x44);
        __m512 y23 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xEE);
        r[q] = _mm512_shuffle_f32x4(x01, y01, 0x88);
        r[4 + q] = _mm512_shuffle_f32x4(x01, y01, 0xDD);
        r[8 + q] = _mm512_shuffle_f32x4(x23, y23, 0x88);
        r[12 + q] = _mm512_shuffle_f32x4(x23, y23, 0xDD);
    }
}

/* rows [0, rows) of a row-major block (row stride ld), columns [0, kc), go to
 * out[p * ostride + row] for p < kc; rows [rows, width) of out are zero.  width <= 16. */
CK_TARGET static void ck_pack_transposed(const float *src, ptrdiff_t ld, ptrdiff_t rows,
                                         ptrdiff_t width, ptrdiff_t kc, float *out,
                                         ptrdiff_t ostride)
{
    __m512 r[16];
    __mmask16 wmask = ck_mask(width);
    for (ptrdiff_t p0 = 0; p0 < kc; p0 += 16) {
        ptrdiff_t pw = kc - p0 < 16 ? kc - p0 : 16;
        __mmask16 pm = ck_mask(pw);
        for (int i = 0; i < 16; ++i)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(pm, src + i * ld + p0) : _mm512_setzero_ps();
        ck_transpose16(r);
        for (ptrdiff_t q = 0; q < pw; ++q)
            _mm512_mask_storeu_ps(out + (p0 + q) * ostride, wmask, r[q]);
    }
}

/* A rows [0, mc) x cols [0, kc) of op(A) (already offset) into MR-tall panels, zero-padded. */
CK_TARGET static void ck_pack_a_block(int ta, const float *a, ptrdiff_t lda, ptrdiff_t mc,
                                      ptrdiff_t kc, float *out)
{
    for (ptrdiff_t i0 = 0; i0 < mc; i0 += CK_MR) {
        ptrdiff_t mr = mc - i0 < CK_MR ? mc - i0 : CK_MR;
        if (!ta) {
            ck_pack_transposed(a + i0 * lda, lda, mr, CK_MR, kc, out, CK_MR);
        } else {
            __mmask16 m = ck_mask(mr);
            for (ptrdiff_t p = 0; p < kc; ++p)
                _mm512_mask_storeu_ps(out + p * CK_MR, ck_mask(CK_MR),
                                      _mm512_maskz_loadu_ps(m, a + p * lda + i0));
        }
        out += CK_MR * kc;
    }
}

/* op(B) rows [0, kc) x cols [0, nc) (already offset) into NR-wide panels, zero-padded.
 * prefetch_next: the NR columns after the block exist and are packed next.  boff (B not
 * transposed): row p at b + boff[p] instead of b + p * ldb. */
CK_TARGET static void ck_pack_b_block(int tb, const float *b, ptrdiff_t ldb, ptrdiff_t kc,
                                      ptrdiff_t nc, float *out, int prefetch_next,
                                      const ptrdiff_t *boff)
{
    for (ptrdiff_t j0 = 0; j0 < nc; j0 += CK_NR) {
        ptrdiff_t nr = nc - j0 < CK_NR ? nc - j0 : CK_NR;
        if (!tb) {
            for (ptrdiff_t p = 0; p < kc; ++p) {
                const float *src = (boff != NULL ? b + boff[p] : b + p * ldb) + j0;
                /* the rows are ldb apart, each in its own page: the hardware prefetchers miss
                 * them, so fetch the next panel's part of this row now (it is packed after
                 * this panel's kernels have run) */
                if (prefetch_next)
                    for (int v = 0; v < CK_NV; ++v)
                        _mm_prefetch((const char *)(src + CK_NR + 16 * v), _MM_HINT_T1);
                for (int v = 0; v < CK_NV; ++v)
                    _mm512_store_ps(out + p * CK_NR + 16 * v,
                                    _mm512_maskz_loadu_ps(ck_mask(nr - 16 * v), src + 16 * v));
            }
        } else {
            for (int v = 0; v < CK_NV; ++v) {
                ptrdiff_t rows = nr - 16 * v;
                ck_pack_transposed(b + (j0 + 16 * v) * ldb, ldb, rows < 0 ? 0 : rows, 16, kc,
                                   out + 16 * v, CK_NR);
            }
        }
        out += CK_NR * kc;
    }
}

/* c (MR x 16*nv, row stride ldc) = alpha * (packed a panel @ the first 16*nv columns of the
 * b panel: packed (bs = NR), or rows of B itself (bs = ldb)) + beta * c (+ rb[r] on row r
 * when rb is not NULL), written for rows
 * r < mrows and, in the last vector of each row, the lanes in `last` only: the edges of C
 * need no scratch tile and no scalar copy.  Only the first mrc rows are computed (mrows <=
 * mrc <= MR: a last panel of 1-4 rows costs half a full one or less).  l0: the lane of the
 * tile's first row in its A panel (0 but for the 6-row tiles, ck_m6_strip); rows past lane
 * MR - 1 are read from the next panel, MR * kc further.  mrc, nv and l0 are constants in each
 * instance below, so the loops over the tile unroll fully and the accumulators live in
 * registers (no spills: mrc*nv + nv + 1 <= 32). */
#define CK_NV_MAX 4  /* vectors a tile row at most (the 6-row tiles: 6 x 64) */
CK_TARGET static inline __attribute__((always_inline)) void
ck_kernel_body(int mrc, int nv, int l0, ptrdiff_t kc, const float *a, const float *b,
               ptrdiff_t bs, float *c, ptrdiff_t ldc, float alpha, float beta, const float *rb,
               int mrows, __mmask16 last, const ptrdiff_t *boff)
{
    __m512 acc[CK_MR][CK_NV_MAX];
    const float *a2 = a + CK_MR * kc;  /* (the next panel: rows l0 + r >= MR) */
#pragma GCC unroll 16
    for (int r = 0; r < mrc; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v)
            acc[r][v] = _mm512_setzero_ps();
    for (ptrdiff_t p = 0; p < kc; ++p) {
        __m512 bv[CK_NV_MAX];
        const float *bp = boff != NULL ? b + boff[p] : b;
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v)  /* (masked: a partial panel read in place ends there) */
            bv[v] = v == nv - 1 ? _mm512_maskz_loadu_ps(last, bp + 16 * v)
                                : _mm512_loadu_ps(bp + 16 * v);
        if (boff != NULL) {  /* rows at listed offsets: the row 8 ahead, every line of it */
            const float *ahead = p + 8 < kc ? b + boff[p + 8] : bp;
            for (int v = 0; v < nv; ++v)
                _mm_prefetch((const char *)(ahead + 16 * v), _MM_HINT_T0);
        } else {
            _mm_prefetch((const char *)(b + 8 * bs), _MM_HINT_T0);
            if (bs != CK_NR)  /* B's own rows: every line of the row 8 ahead (a page apart) */
                for (int v = 1; v < nv; ++v)
                    _mm_prefetch((const char *)(b + 8 * bs + 16 * v), _MM_HINT_T0);
        }
#pragma GCC unroll 16
        for (int r = 0; r < mrc; ++r) {
            __m512 av = _mm512_set1_ps(l0 + r < CK_MR ? a[l0 + r] : a2[l0 + r - CK_MR]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v)
                acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
        a += CK_MR;
        a2 += CK_MR;
        if (boff == NULL)
            b += bs;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int r = 0; r < mrc; ++r) {
        if (r >= mrows)
            break;
        float *cr = c + r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) {
            __mmask16 mk = v == nv - 1 ? last : (__mmask16)0xFFFF;
            __m512 y = _mm512_mul_ps(acc[r][v], va);
            if (beta != 0.0f)
                y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, cr + 16 * v), vb, y);
            if (rb != NULL)
                y = _mm512_add_ps(y, _mm512_set1_ps(rb[r]));
            _mm512_mask_storeu_ps(cr + 16 * v, mk, y);
        }
    }
}

/* The full tile, and the narrower ones for a last panel of at most 16 or 32 columns (a GEMM of
 * 56 columns computes 48 + 16, not 48 + 48). */
CK_TARGET static void ck_kernel(ptrdiff_t kc, const float *a, const float *b, float *c,
                                ptrdiff_t ldc, float alpha, float beta, const float *rb)
{
    if (rb == NULL)
        ck_kernel_body(CK_MR, CK_NV, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, NULL, CK_MR, 0xFFFF,
                       NULL);
    else
        ck_kernel_body(CK_MR, CK_NV, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, rb, CK_MR, 0xFFFF,
                       NULL);
}

/* any tile rows and columns (mr <= MR, nr <= NR), read straight from B's rows (bs = ldb, or
 * the offsets boff[p] from b when boff is not NULL), not packed */
#define CK_DIRECT_CASE(MRC, NVC)                                                             \
    do {                                                                                     \
        if (boff != NULL)                                                                    \
            ck_kernel_body(MRC, NVC, 0, kc, a, b, 0, c, ldc, alpha, beta, rb, (int)mr, last,    \
                           boff);                                                            \
        else                                                                                 \
            ck_kernel_body(MRC, NVC, 0, kc, a, b, bs, c, ldc, alpha, beta, rb, (int)mr, last,   \
                           NULL);                                                            \
    } while (0)

CK_TARGET static void ck_kernel_direct(ptrdiff_t mr, ptrdiff_t nr, ptrdiff_t kc, const float *a,
                                       const float *b, ptrdiff_t bs, float *c, ptrdiff_t ldc,
                                       float alpha, float beta, const float *rb,
                                       const ptrdiff_t *boff)
{
    int nv = (int)((nr + 15) / 16);
    __mmask16 last = ck_mask(nr - 16 * (nv - 1));
    if (mr <= 4) {
        if (nv == 1)
            CK_DIRECT_CASE(4, 1);
        else if (nv == 2)
            CK_DIRECT_CASE(4, 2);
        else
            CK_DIRECT_CASE(4, CK_NV);
    } else {
        if (nv == 1)
            CK_DIRECT_CASE(CK_MR, 1);
        else if (nv == 2)
            CK_DIRECT_CASE(CK_MR, 2);
        else
            CK_DIRECT_CASE(CK_MR, CK_NV);
    }
}

#undef CK_DIRECT_CASE

/* A GEMM of m = 6q rows that is not a multiple of MR, all rows in one pass (rpn_cls1x1's 18
 * filters: 8 + 8 + 2, the 2-row panel in the 4-row tile, 60 FMAs a k step for 54 products at a
 * low FMA share) runs in 6-row tiles: 6 x 64 read from B in place (the direct path: 24
 * accumulators as the 8 x 48 tile), 6 x 48 on a packed B panel (its grad_weight, B
 * transposed).  Every FMA is a product.  The tiles read A's MR-tall panels at lanes 0, 6, 4, 2
 * (ck_kernel_body's l0); each output's chain is the 8 x 48 tile's: the same bits.  1 thread,
 * CPU time: 18 x 1900 x 512 in place 92 -> 108 GFLOP/s, 18 x 256 x 1900 (tb) 75 -> 80
 * (bench/RESULTS.md, twelfth session, pw12). */
#define CK_M6_NR 64
#define CK_M6_NC 1024  /* the direct path's column block here: whole 64-column strips */

static inline int ck_m6_rows(ptrdiff_t m)
{
    return m % CK_MR != 0 && m % 6 == 0;
}

/* rows [0, m) (m a multiple of 6) x columns [0, nr) (CK_EDGE_N < nr <= 64; <= NR packed) of
 * C from the packed A panels a (kc x MR each) and B's rows: in place (row stride bs, or at
 * b + boff[p]) or a packed panel (bs = CK_NR) */
CK_TARGET static void ck_m6_strip(ptrdiff_t m, ptrdiff_t nr, ptrdiff_t kc, const float *a,
                                  const float *b, ptrdiff_t bs, const ptrdiff_t *boff, float *c,
                                  ptrdiff_t ldc, float alpha, float beta, const float *rb)
{
    int nv = (int)((nr + 15) / 16);
    __mmask16 last = ck_mask(nr - 16 * (nv - 1));
    for (ptrdiff_t r0 = 0; r0 < m; r0 += 6) {
        const float *ap = a + (r0 / CK_MR) * CK_MR * kc;
        float *cp = c + r0 * ldc;
        const float *rbp = rb != NULL ? rb + r0 : NULL;
        int l0 = (int)(r0 % CK_MR);
#define CK_M6_CASE(L0, NV)                                                                    \
        do {                                                                                  \
            if (boff != NULL)                                                                 \
                ck_kernel_body(6, NV, L0, kc, ap, b, 0, cp, ldc, alpha, beta, rbp, 6, last,   \
                               boff);                                                         \
            else                                                                              \
                ck_kernel_body(6, NV, L0, kc, ap, b, bs, cp, ldc, alpha, beta, rbp, 6, last,  \
                               NULL);                                                         \
        } while (0)
#define CK_M6_NV(L0)                                                                          \
        do {                                                                                  \
            if (nv == 4) CK_M6_CASE(L0, 4);                                                   \
            else if (nv == 3) CK_M6_CASE(L0, 3);                                              \
            else if (nv == 2) CK_M6_CASE(L0, 2);                                              \
            else CK_M6_CASE(L0, 1);                                                           \
        } while (0)
        if (l0 == 0)
            CK_M6_NV(0);
        else if (l0 == 6)
            CK_M6_NV(6);
        else if (l0 == 4)
            CK_M6_NV(4);
        else
            CK_M6_NV(2);
#undef CK_M6_NV
#undef CK_M6_CASE
    }
}

/* an edge tile: mr <= MR rows, nr <= NR columns, with as few vectors per row as cover nr */
CK_TARGET static void ck_kernel_edge(ptrdiff_t mr, ptrdiff_t nr, ptrdiff_t kc, const float *a,
                                     const float *b, float *c, ptrdiff_t ldc, float alpha,
                                     float beta, const float *rb)
{
    int nv = (int)((nr + 15) / 16), rows = (int)mr;
    __mmask16 last = ck_mask(nr - 16 * (nv - 1));
    if (rows <= 4) {  /* a last panel of few rows: half the products (most of them padding) */
        if (nv == 1)
            ck_kernel_body(4, 1, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, rb, rows, last, NULL);
#if CK_NV > 2
        else if (nv == 2)
            ck_kernel_body(4, 2, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, rb, rows, last, NULL);
#endif
        else
            ck_kernel_body(4, CK_NV, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, rb, rows, last, NULL);
    } else if (nv == 1)
        ck_kernel_body(CK_MR, 1, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, rb, rows, last, NULL);
#if CK_NV > 2
    else if (nv == 2)
        ck_kernel_body(CK_MR, 2, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, rb, rows, last, NULL);
#endif
    else
        ck_kernel_body(CK_MR, CK_NV, 0, kc, a, b, CK_NR, c, ldc, alpha, beta, rb, rows, last, NULL);
}

/* A last panel of at most CK_EDGE_N columns (pw_14's 196 positions = 4 x 48 + 4, a grad_x
 * task's 98 = 2 x 48 + 2) runs with the vectors along m: one 8-row A panel a ymm, up to
 * CK_EDGE_P panels at once, B broadcast once per column and k step.  The 8 x 16 edge tile spent
 * 8 FMAs a k step on such a panel (a third of a full one) for at most 32 useful products; here
 * they are 8-row ymm FMAs, every lane an output (Zen 4 runs two ymm FMAs a cycle).  Each output
 * is still fma(a[i,p], b[p,j], acc) over the block's p ascending from 0, then * alpha, + beta *
 * C, + rb[i]: the main tile's operations in its order, so its bits. */
#ifndef CK_EDGE_N
#define CK_EDGE_N 4
#endif
#define CK_EDGE_P 4  /* panels at once: 16 accumulators, 8 independent chains or more */
/* (ymm FMAs: avx512f alone does not enable FMA's 256-bit forms in gcc) */
#define CK_EDGE_TARGET CK_AVX512_VEC_TARGET

CK_EDGE_TARGET static inline __attribute__((always_inline)) void
ck_edge_m_body(int np, int nr, ptrdiff_t mrows, ptrdiff_t kc, const float *a, const float *b,
               ptrdiff_t bs, const ptrdiff_t *boff, float *c, ptrdiff_t ldc, float alpha,
               float beta, const float *rb)
{
    __m256 acc[CK_EDGE_P][CK_EDGE_N];
#pragma GCC unroll 4
    for (int q = 0; q < np; ++q)
#pragma GCC unroll 4
        for (int j = 0; j < CK_EDGE_N; ++j)
            acc[q][j] = _mm256_setzero_ps();
    for (ptrdiff_t p = 0; p < kc; ++p) {
        const float *bp = boff != NULL ? b + boff[p] : b + p * bs;
        if (bs != CK_NR)  /* B's own rows (a page apart): the row 8 ahead, as the tiles do */
            _mm_prefetch((const char *)(boff != NULL ? (p + 8 < kc ? b + boff[p + 8] : bp)
                                                     : bp + 8 * bs), _MM_HINT_T0);
        __m256 av[CK_EDGE_P];
#pragma GCC unroll 4
        for (int q = 0; q < np; ++q)
            av[q] = _mm256_loadu_ps(a + q * CK_MR * kc + p * CK_MR);
#pragma GCC unroll 4
        for (int j = 0; j < nr; ++j) {
            __m256 bv = _mm256_broadcast_ss(bp + j);
#pragma GCC unroll 4
            for (int q = 0; q < np; ++q)
                acc[q][j] = _mm256_fmadd_ps(av[q], bv, acc[q][j]);
        }
    }
    /* 8 rows x 4 columns to rows: t[i] holds row i in its low half and row i + 4 in its high */
    const __m128 va = _mm_set1_ps(alpha), vb = _mm_set1_ps(beta);
    const __m128i cols = _mm_cmpgt_epi32(_mm_set1_epi32(nr), _mm_setr_epi32(0, 1, 2, 3));
#pragma GCC unroll 4
    for (int q = 0; q < np; ++q) {
        __m256 u0 = _mm256_unpacklo_ps(acc[q][0], acc[q][1]);
        __m256 u1 = _mm256_unpackhi_ps(acc[q][0], acc[q][1]);
        __m256 u2 = _mm256_unpacklo_ps(acc[q][2], acc[q][3]);
        __m256 u3 = _mm256_unpackhi_ps(acc[q][2], acc[q][3]);
        __m256 t[4] = {_mm256_shuffle_ps(u0, u2, 0x44), _mm256_shuffle_ps(u0, u2, 0xEE),
                       _mm256_shuffle_ps(u1, u3, 0x44), _mm256_shuffle_ps(u1, u3, 0xEE)};
#pragma GCC unroll 8
        for (int i = 0; i < CK_MR; ++i) {
            ptrdiff_t r = (ptrdiff_t)q * CK_MR + i;
            if (r >= mrows)
                break;
            __m128 x = i < 4 ? _mm256_castps256_ps128(t[i]) : _mm256_extractf128_ps(t[i - 4], 1);
            float *cr = c + r * ldc;
            __m128 y = _mm_mul_ps(x, va);
            if (beta != 0.0f)
                y = _mm_fmadd_ps(_mm_maskload_ps(cr, cols), vb, y);
            if (rb != NULL)
                y = _mm_add_ps(y, _mm_set1_ps(rb[r]));
            _mm_maskstore_ps(cr, cols, y);
        }
    }
}

/* rows [0, mrows) of C (A's MR-tall panels from a, kc x MR each) x nr <= CK_EDGE_N columns:
 * B packed (bs = CK_NR), its rows in place (bs = ldb) or at offsets (boff) */
CK_EDGE_TARGET static void ck_kernel_edge_m(ptrdiff_t mrows, ptrdiff_t nr, ptrdiff_t kc,
                                       const float *a, const float *b, ptrdiff_t bs,
                                       const ptrdiff_t *boff, float *c, ptrdiff_t ldc,
                                       float alpha, float beta, const float *rb)
{
    for (ptrdiff_t r0 = 0; r0 < mrows; r0 += CK_EDGE_P * CK_MR) {
        ptrdiff_t rows = mrows - r0 < CK_EDGE_P * CK_MR ? mrows - r0 : CK_EDGE_P * CK_MR;
        int np = (int)((rows + CK_MR - 1) / CK_MR);
        const float *ap = a + r0 * kc;
        float *cp = c + r0 * ldc;
        const float *rbp = rb != NULL ? rb + r0 : NULL;
#define CK_EDGE_M_CASE(NP, NR) \
        ck_edge_m_body(NP, NR, rows, kc, ap, b, bs, boff, cp, ldc, alpha, beta, rbp)
#define CK_EDGE_M_NR(NP)                                                                      \
        do {                                                                                  \
            if (nr == 1) CK_EDGE_M_CASE(NP, 1);                                               \
            else if (nr == 2) CK_EDGE_M_CASE(NP, 2);                                          \
            else if (nr == 3) CK_EDGE_M_CASE(NP, 3);                                          \
            else CK_EDGE_M_CASE(NP, 4);                                                       \
        } while (0)
        if (np == 4)
            CK_EDGE_M_NR(4);
        else if (np == 3)
            CK_EDGE_M_NR(3);
        else if (np == 2)
            CK_EDGE_M_NR(2);
        else
            CK_EDGE_M_NR(1);
#undef CK_EDGE_M_NR
#undef CK_EDGE_M_CASE
    }
}

/* k in near-equal blocks of about CK_KC (at most CK_KC_MAX): k = 196 (a 14x14 map's
 * grad_weight) as one block of 196, not 192 + 4, whose second pass re-reads and re-writes C
 * for 4 products.  Returns the block length. */
static inline ptrdiff_t ck_kstep(ptrdiff_t k)
{
    ptrdiff_t kblocks = (k + CK_KC - 1) / CK_KC;
    if (kblocks > 1 && k <= (kblocks - 1) * CK_KC_MAX)
        --kblocks;
    return (k + kblocks - 1) / kblocks;
}

/* rows rounded up to whole MR panels: a prepacked A of m x k takes ck_mpad(m) * k floats */
static inline ptrdiff_t ck_mpad(ptrdiff_t m)
{
    return (m + CK_MR - 1) / CK_MR * CK_MR;
}

/* all of op(A) (m x k) packed as ck_sgemm_avx512 packs it block by block: k block [pc, pc+kc)
 * at out + pc * ck_mpad(m), MR-tall panels of kc x MR in it */
CK_TARGET static void ck_pack_a_all(int ta, ptrdiff_t m, ptrdiff_t k, const float *a,
                                    ptrdiff_t lda, float *out)
{
    ptrdiff_t kstep = ck_kstep(k), mp = ck_mpad(m);
    for (ptrdiff_t pc = 0; pc < k; pc += kstep) {
        ptrdiff_t kc = k - pc < kstep ? k - pc : kstep;
        ck_pack_a_block(ta, ta ? a + pc * lda : a + pc, lda, m, kc, out + pc * mp);
    }
}

/* apk: op(A) packed by ck_pack_a_all (then a, lda, ta and alpha are not used), or NULL.
 * rowbias: NULL, or m values: C = alpha * op(A) op(B) + rowbias[i] on row i (beta must be 0),
 * added as the first k block is stored -- a conv's bias without a pass that fills C first.
 * boff: NULL, or (tb 0) k offsets: row p of B is at b + boff[p] (ldb unused) -- the columns of
 * a stride-1 conv read straight from its zero-padded image, with no im2col copy. */
CK_TARGET static int ck_sgemm_avx512(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                     float alpha, const float *a, ptrdiff_t lda, const float *b,
                                     ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc,
                                     const float *apk, const float *rowbias,
                                     const ptrdiff_t *boff)
{
    if (m <= 0 || n <= 0)
        return 1;
    if (k <= 0) {  /* C = beta * C */
        for (ptrdiff_t i = 0; i < m; ++i)
            for (ptrdiff_t j = 0; j < n; ++j)
                c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
        return 1;
    }
    float *pa = ck_pack_a, *pb = ck_pack_b;
    ptrdiff_t kstep = ck_kstep(k), mp = ck_mpad(m);
    int direct = !tb && m <= CK_DIRECT_MAX_M;
    int m6 = ck_m6_rows(m) && m <= CK_MC;  /* 6-row tiles (ck_m6_strip), all rows a pass */
    ptrdiff_t ncb = m6 && direct ? CK_M6_NC : CK_NC;
    for (ptrdiff_t jc = 0; jc < n; jc += ncb) {
        ptrdiff_t nc = n - jc < ncb ? n - jc : ncb;
        for (ptrdiff_t pc = 0; pc < k; pc += kstep) {
            ptrdiff_t kc = k - pc < kstep ? k - pc : kstep;
            float bet = pc == 0 ? beta : 1.0f;
            const float *rbias = pc == 0 ? rowbias : NULL;
            const float *bsrc = tb ? b + jc * ldb + pc : boff != NULL ? b + jc : b + pc * ldb + jc;
            const ptrdiff_t *bo = boff != NULL ? boff + pc : NULL;
            for (ptrdiff_t ic = 0; ic < m; ic += CK_MC) {
                ptrdiff_t mc = m - ic < CK_MC ? m - ic : CK_MC;
                if (apk != NULL)
                    pa = (float *)apk + pc * mp + ic * kc;
                else
                    ck_pack_a_block(ta, ta ? a + pc * lda + ic : a + ic * lda + pc, lda, mc, kc,
                                    pa);
                ptrdiff_t nrb = m6 && direct ? CK_M6_NR : CK_NR;
                for (ptrdiff_t jr = 0; jr < nc; jr += nrb) {
                    ptrdiff_t nr = nc - jr < nrb ? nc - jr : nrb;
                    float *bp = pb + (jr / CK_NR) * CK_NR * kc;
                    if (nr <= CK_EDGE_N) {  /* a narrow last panel: vectors along m */
                        const float *rb = rbias != NULL ? rbias + ic : NULL;
                        float *cp = c + ic * ldc + jc + jr;
                        if (direct)
                            ck_kernel_edge_m(mc, nr, kc, pa, bsrc + jr, ldb, bo, cp, ldc, alpha,
                                             bet, rb);
                        else {
                            if (ic == 0)
                                ck_pack_b_block(tb, tb ? bsrc + jr * ldb : bsrc + jr, ldb, kc,
                                                nr, bp, 0, bo);
                            ck_kernel_edge_m(mc, nr, kc, pa, bp, CK_NR, NULL, cp, ldc, alpha,
                                             bet, rb);
                        }
                        continue;
                    }
                    if (m6 && direct) {  /* (m <= MC: one pass, ic == 0) */
                        ck_m6_strip(mc, nr, kc, pa, bsrc + jr, ldb, bo, c + jc + jr, ldc, alpha,
                                    bet, rbias);
                        continue;
                    }
                    if (direct) {
                        /* all rows of C in one pass (m <= MC): a packed B panel would serve
                         * this pass only, and the kernels read B's rows in place as fast as
                         * the packed copy (64 x 576 x 3136: 96-105 GFLOP/s packed, 142-147
                         * direct; 64 x 147 x 784: 120-147 vs 150-168; 1 thread).  With more
                         * passes (m > MC) the packed panel is reused and wins (128 x 128 x
                         * 1568: 148 vs 125; 512 x 4608 x 1900: 82 vs 63). */
                        for (ptrdiff_t ir = 0; ir < mc; ir += CK_MR) {
                            ptrdiff_t mr = mc - ir < CK_MR ? mc - ir : CK_MR;
                            const float *rb = rbias != NULL ? rbias + ic + ir : NULL;
                            ck_kernel_direct(mr, nr, kc, pa + (ir / CK_MR) * CK_MR * kc,
                                             bsrc + jr, ldb, c + (ic + ir) * ldc + jc + jr, ldc,
                                             alpha, bet, rb, bo);
                        }
                        continue;
                    }
                    if (ic == 0)  /* packed just before its first use: hot in L1 for this pass */
                        ck_pack_b_block(tb, tb ? bsrc + jr * ldb : bsrc + jr, ldb, kc, nr, bp,
                                        jr + CK_NR < nc, bo);
                    if (m6) {  /* 6 x 48 tiles on the packed panel (grad_weight's 18 rows) */
                        ck_m6_strip(mc, nr, kc, pa, bp, CK_NR, NULL, c + jc + jr, ldc, alpha,
                                    bet, rbias);
                        continue;
                    }
                    for (ptrdiff_t ir = 0; ir < mc; ir += CK_MR) {
                        ptrdiff_t mr = mc - ir < CK_MR ? mc - ir : CK_MR;
                        const float *ap = pa + (ir / CK_MR) * CK_MR * kc;
                        float *cp = c + (ic + ir) * ldc + jc + jr;
                        const float *rb = rbias != NULL ? rbias + ic + ir : NULL;
                        if (mr == CK_MR && nr == CK_NR)
                            ck_kernel(kc, ap, bp, cp, ldc, alpha, bet, rb);
                        else
                            ck_kernel_edge(mr, nr, kc, ap, bp, cp, ldc, alpha, bet, rb);
                    }
                }
            }
        }
    }
    return 1;
}

static int ck_sgemm(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                    const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                    float *c, ptrdiff_t ldc)
{
    if (!ck_sgemm_available() || !ck_buffers())
        return 0;
    return ck_sgemm_avx512(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL, NULL,
                           NULL);
}

/* Prepacked A, for an operand used by many GEMMs (a conv's weights across its tasks):
 * ck_sgemm_packed_a_floats(m, k) floats (0: no own kernel here), filled once by
 * ck_sgemm_pack_a, then passed to ck_sgemm_apacked (alpha 1) instead of A; rowbias as in
 * ck_sgemm_avx512. */
static ptrdiff_t ck_sgemm_packed_a_floats(ptrdiff_t m, ptrdiff_t k)
{
    return ck_sgemm_available() ? ck_mpad(m) * k : 0;
}

static int ck_sgemm_pack_a(int ta, ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda,
                           float *out)
{
    if (!ck_sgemm_available())
        return 0;
    ck_pack_a_all(ta, m, k, a, lda, out);
    return 1;
}

static int ck_sgemm_apacked(int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *apk,
                            const float *b, ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc,
                            const float *rowbias)
{
    if (!ck_sgemm_available() || !ck_buffers())
        return 0;
    return ck_sgemm_avx512(0, tb, m, n, k, 1.0f, NULL, 0, b, ldb, beta, c, ldc, apk, rowbias,
                           NULL);
}

/* ck_sgemm_apacked with B's row p at b + boff[p] (B not transposed) */
static int ck_sgemm_apacked_rows(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *apk,
                                 const float *b, const ptrdiff_t *boff, float beta, float *c,
                                 ptrdiff_t ldc, const float *rowbias)
{
    if (!ck_sgemm_available() || !ck_buffers())
        return 0;
    return ck_sgemm_avx512(0, 0, m, n, k, 1.0f, NULL, 0, b, 0, beta, c, ldc, apk, rowbias, boff);
}

#else  /* no AVX-512 build: BLAS does every GEMM */

static int ck_sgemm_available(void)
{
    return 0;
}

static ptrdiff_t ck_sgemm_packed_a_floats(ptrdiff_t m, ptrdiff_t k)
{
    (void)m; (void)k;
    return 0;
}

static int ck_sgemm_pack_a(int ta, ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda,
                           float *out)
{
    (void)ta; (void)m; (void)k; (void)a; (void)lda; (void)out;
    return 0;
}

static int ck_sgemm_apacked(int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *apk,
                            const float *b, ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc,
                            const float *rowbias)
{
    (void)tb; (void)m; (void)n; (void)k; (void)apk; (void)b; (void)ldb; (void)beta; (void)c;
    (void)ldc; (void)rowbias;
    return 0;
}

static int ck_sgemm_apacked_rows(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *apk,
                                 const float *b, const ptrdiff_t *boff, float beta, float *c,
                                 ptrdiff_t ldc, const float *rowbias)
{
    (void)m; (void)n; (void)k; (void)apk; (void)b; (void)boff; (void)beta; (void)c; (void)ldc;
    (void)rowbias;
    return 0;
}

static int ck_sgemm(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                    const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                    float *c, ptrdiff_t ldc)
{
    (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda;
    (void)b; (void)ldb; (void)beta; (void)c; (void)ldc;
    return 0;
}

#endif
#endif
