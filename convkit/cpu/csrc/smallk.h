/* A fixed-order product with a short sum, for the grad_x of a pointwise conv with few filters
 * on the BLAS plans (float64 everywhere, float32 without csrc/fgemm.h):
 *
 *     C[c, p] = sum over f = 0 .. k-1 of A[f, c] * B[f, p]     (A k x m, B k x n, C m x n)
 *
 * (A = the group's weights, B = grad_y's positions of one image, C = grad_x's positions).
 *
 * Why: OpenBLAS rounds an output differently for another GEMM shape or place, so its tasks
 * had to be set by the image (rpn_cls1x1: 2 tasks, 88 % of 16 threads idle); and with k = 18
 * its per-call packing dominates.  Here each output is ONE chain in ascending f: a multiply
 * for f = 0, then c = fma(A[f, c], B[f, p], c) -- the same instruction sequence for every
 * output whatever block, tile, lane or thread computes it, so callers may cut m and n as the
 * team likes (no sum is cut; batch invariance holds).  Edge positions run the same vector
 * code on a zero-padded copy of B, their lanes stored through a stack tile (no scalar tail to
 * round differently); edge channels the same tile with fewer rows.
 *
 * The AVX2 + FMA body (picked by CPUID) is written with explicit multiply / fmadd intrinsics.
 * The portable body (other CPUs) writes fma() where the compiler has a hardware fma
 * (__FP_FAST_FMA; the chain then equals the AVX2 one), else a multiply then an add -- a target
 * without an fma instruction has nothing to contract them into, so its vector loop and scalar
 * tail round alike.  Single-threaded; about 61 KiB of stack (panels, tiles). */
#ifndef CK_SMALLK_H
#define CK_SMALLK_H

#include <stddef.h>
#include <math.h>
#include "cpufeat.h"

#if defined(__FP_FAST_FMA)
#define CK_SK_MADD_D(a, b, c) fma((a), (b), (c))
#else
#define CK_SK_MADD_D(a, b, c) ((a) * (b) + (c))
#endif
#if defined(__FP_FAST_FMAF)
#define CK_SK_MADD_F(a, b, c) fmaf((a), (b), (c))
#else
#define CK_SK_MADD_F(a, b, c) ((a) * (b) + (c))
#endif

/* bytes of B's packed panels per block of positions (on the stack, read again by every
 * channel tile: 24 KiB measured 1.07x the time of 48 on rpn_cls1x1's shape) */
#define CK_SK_PANEL 49152
/* the most filters ck_smallk_* takes (the stack tiles' size; 256 x 16 float32 / 8 float64
 * values fit CK_SK_PANEL): past it they return 0 and do nothing */
#define CK_SK_MAX_K 256

static void ck_smallk_port_double(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const double *a,
                             ptrdiff_t lda, const double *b, ptrdiff_t ldb, double *c,
                             ptrdiff_t ldc)
{
    for (ptrdiff_t i = 0; i < m; i++) {
        double *ci = c + i * ldc;
        for (ptrdiff_t j = 0; j < n; j++)
            ci[j] = a[i] * b[j];
        for (ptrdiff_t f = 1; f < k; f++) {
            const double w = a[f * lda + i];
            const double *bf = b + f * ldb;
            for (ptrdiff_t j = 0; j < n; j++)
                ci[j] = CK_SK_MADD_D(w, bf[j], ci[j]);
        }
    }
}

static void ck_smallk_port_float(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                             ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *c,
                             ptrdiff_t ldc)
{
    for (ptrdiff_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        for (ptrdiff_t j = 0; j < n; j++)
            ci[j] = a[i] * b[j];
        for (ptrdiff_t f = 1; f < k; f++) {
            const float w = a[f * lda + i];
            const float *bf = b + f * ldb;
            for (ptrdiff_t j = 0; j < n; j++)
                ci[j] = CK_SK_MADD_F(w, bf[j], ci[j]);
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CK_SK_TARGET __attribute__((target("avx2,fma")))
#define CK_SK_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

/* One tile: R (1..6) rows of C x 2 vectors of positions, B read from a packed panel (k rows
 * of 2V values, zero-padded past n) into c (row stride ldc).
 * Twelve accumulators at most, two B loads and R broadcasts a step of f. */
#define CK_SK_TILE(NAME, T, V, LOAD, STORE, MUL, FMA, BCAST)                                \
static CK_SK_INLINE void NAME(const int R, ptrdiff_t k, const T *a, ptrdiff_t lda,         \
                              const T *p, T *c, ptrdiff_t ldc)                              \
{                                                                                           \
    const int L = sizeof(V) / sizeof(T);                                                    \
    V acc[6][2];                                                                            \
    V b0 = LOAD(p), b1 = LOAD(p + L);                                                       \
    for (int r = 0; r < R; r++) {                                                           \
        V w = BCAST(a + r);                                                                 \
        acc[r][0] = MUL(w, b0);                                                             \
        acc[r][1] = MUL(w, b1);                                                             \
    }                                                                                       \
    for (ptrdiff_t f = 1; f < k; f++) {                                                     \
        b0 = LOAD(p + f * 2 * L);                                                           \
        b1 = LOAD(p + f * 2 * L + L);                                                       \
        for (int r = 0; r < R; r++) {                                                       \
            V w = BCAST(a + f * lda + r);                                                   \
            acc[r][0] = FMA(w, b0, acc[r][0]);                                              \
            acc[r][1] = FMA(w, b1, acc[r][1]);                                              \
        }                                                                                   \
    }                                                                                       \
    for (int r = 0; r < R; r++) {                                                           \
        STORE(c + r * ldc, acc[r][0]);                                                      \
        STORE(c + r * ldc + L, acc[r][1]);                                                  \
    }                                                                                       \
}

CK_SK_TILE(ck_sk_tile_d, double, __m256d, _mm256_load_pd, _mm256_storeu_pd, _mm256_mul_pd,
           _mm256_fmadd_pd, _mm256_broadcast_sd)
CK_SK_TILE(ck_sk_tile_f, float, __m256, _mm256_load_ps, _mm256_storeu_ps, _mm256_mul_ps,
           _mm256_fmadd_ps, _mm256_broadcast_ss)

/* Blocks of positions whose B rows, packed in 2V-wide panels (k x 2V each, contiguous: one
 * stream for the loads, where B's k rows were k streams -- 1.2-1.5x the time in place), fit
 * CK_SK_PANEL bytes on the stack; over each block every channel tile of 6 (edge: fewer rows;
 * A's k x R values copied together first), 2V positions a tile (edge: zero-padded panel, its
 * lanes stored). */
#define CK_SK_BODY(NAME, TILE, T, LANES)                                                    \
static CK_SK_TARGET void NAME(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *a,           \
                              ptrdiff_t lda, const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc) \
{                                                                                           \
    const ptrdiff_t step = 2 * LANES;                                                       \
    T pan[CK_SK_PANEL / sizeof(T)] __attribute__((aligned(64)));                            \
    T edge[6 * 2 * LANES] __attribute__((aligned(64)));                                     \
    T at[CK_SK_MAX_K * 6];                                                                  \
    ptrdiff_t nb = CK_SK_PANEL / (ptrdiff_t)(k * sizeof(T)) / step * step;                 \
    if (nb < step)                                                                          \
        nb = step;                                                                          \
    for (ptrdiff_t j0 = 0; j0 < n; j0 += nb) {                                              \
        const ptrdiff_t j1 = j0 + nb < n ? j0 + nb : n;                                     \
        for (ptrdiff_t j = j0; j < j1; j += step) {                                         \
            T *q = pan + (j - j0) * k;                                                      \
            for (ptrdiff_t f = 0; f < k; f++)                                               \
                for (ptrdiff_t l = 0; l < step; l++)                                        \
                    q[f * step + l] = j + l < j1 ? b[f * ldb + j + l] : (T)0;               \
        }                                                                                   \
        for (ptrdiff_t i = 0; i < m; i += 6) {                                              \
            const int R = m - i < 6 ? (int)(m - i) : 6;                                     \
            /* A's rows lie lda apart (4 KiB for 512 channels: one L1 set for all k): its   \
             * k x R tile copied together, 6 values a row */                               \
            for (ptrdiff_t f = 0; f < k; f++)                                               \
                for (int r = 0; r < R; r++)                                                 \
                    at[f * 6 + r] = a[f * lda + i + r];                                     \
            for (ptrdiff_t j = j0; j < j1; j += step) {                                     \
                const int full = j + step <= j1;                                            \
                const T *q = pan + (j - j0) * k;                                            \
                T *cij = full ? c + i * ldc + j : edge;  /* (edge: its lanes copied) */      \
                const ptrdiff_t ldt = full ? ldc : step;                                    \
                switch (R) {                                                                \
                case 6: TILE(6, k, at, 6, q, cij, ldt); break;                              \
                case 5: TILE(5, k, at, 6, q, cij, ldt); break;                              \
                case 4: TILE(4, k, at, 6, q, cij, ldt); break;                              \
                case 3: TILE(3, k, at, 6, q, cij, ldt); break;                              \
                case 2: TILE(2, k, at, 6, q, cij, ldt); break;                              \
                default: TILE(1, k, at, 6, q, cij, ldt); break;                             \
                }                                                                           \
                if (!full)  /* (a masked store is slow on AMD) */                           \
                    for (int r = 0; r < R; r++)                                             \
                        for (ptrdiff_t l = 0; l < j1 - j; l++)                              \
                            c[(i + r) * ldc + j + l] = edge[r * step + l];                  \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

CK_SK_BODY(ck_smallk_avx2_d, ck_sk_tile_d, double, 4)
CK_SK_BODY(ck_smallk_avx2_f, ck_sk_tile_f, float, 8)
#define CK_SK_AVX2 1
#else
#define CK_SK_AVX2 0
#endif

/* C (m x n, row stride ldc) = A^T B over 1 <= k <= CK_SK_MAX_K rows, each output one chain in
 * ascending f; 1, or 0 (nothing done) for another k. */
static inline int ck_smallk_d(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const double *a,
                               ptrdiff_t lda, const double *b, ptrdiff_t ldb, double *c,
                               ptrdiff_t ldc)
{
    if (k < 1 || k > CK_SK_MAX_K)
        return 0;
#if CK_SK_AVX2
    if (ck_cpu_has_avx2_fma()) {
        ck_smallk_avx2_d(m, n, k, a, lda, b, ldb, c, ldc);
        return 1;
    }
#endif
    ck_smallk_port_double(m, n, k, a, lda, b, ldb, c, ldc);
    return 1;
}

static inline int ck_smallk_f(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                               ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *c,
                               ptrdiff_t ldc)
{
    if (k < 1 || k > CK_SK_MAX_K)
        return 0;
#if CK_SK_AVX2
    if (ck_cpu_has_avx2_fma()) {
        ck_smallk_avx2_f(m, n, k, a, lda, b, ldb, c, ldc);
        return 1;
    }
#endif
    ck_smallk_port_float(m, n, k, a, lda, b, ldb, c, ldc);
    return 1;
}

#endif  /* CK_SMALLK_H */
