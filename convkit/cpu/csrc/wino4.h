/* Winograd F(4x4, 3x3): the input and output row transforms of convkit/cpu/_conv_winograd.pyx
 * (conv_plan "winograd" with tile 4), float32 and float64, portable C.
 *
 * Transform points 0, 1, -1, 1/2, -2 and infinity (the matrices and the reason are in
 * _conv_winograd.pyx, above winograd4_filters).  Rows of B^T are scaled by 2 where that makes
 * their coefficients integers; scaling by a power of two is exact, so it changes no bits.
 *
 * Every loop is elementwise over tiles or columns (sums in a fixed order, no reductions across
 * lanes), so the compiler's vectors of any width give the same bits: the AVX2 build of the
 * same source (picked by CPUID; "avx2" without "fma", so nothing is contracted into an FMA)
 * and the baseline one agree bit for bit. */
#ifndef CONVKIT_WINO4_H
#define CONVKIT_WINO4_H

#include <stddef.h>
#include <string.h>

#include "fgemm.h"      /* ck_w4_gemm_pk's tiles */
#include "cpufeat.h"

/* B^T d for one column (rows scaled by 2, 2, 2, 1, 2, 2):
 *   2d0 - 3d1 - 4d2 + 3d3 + 2d4,   -2d1 + d2 + 5d3 + 2d4,   2d1 - 5d2 + d3 + 2d4,
 *   -2d1 - d2 + 2d3 + d4,   d1 - 2d2 - d3 + 2d4,   2d1 - 3d2 - 4d3 + 3d4 + 2d5 */
#define CK_W4_B(T, TT, d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5) do {              \
    const TT p_ = (d4) - (d2), q_ = (d1) - (d3), s_ = (d2) + (d3), t_ = (d3) - (d2);       \
    o0 = (T)2 * (((d0) + (d4)) - (T)2 * (d2)) - (T)3 * q_;                                 \
    o1 = (T)2 * (p_ - q_) + (T)3 * s_;                                                     \
    o2 = (T)2 * (p_ + q_) + (T)3 * t_;                                                     \
    o3 = p_ - (T)2 * q_;                                                                   \
    o4 = q_ + (T)2 * p_;                                                                   \
    o5 = (T)2 * (((d1) + (d5)) - (T)2 * (d3)) + (T)3 * p_;                                 \
} while (0)

/* A^T m for one column: m0 + m1 + m2 + m3 + m4,  m1 - m2 + m3/2 - 2m4,
 * m1 + m2 + m3/4 + 4m4,  m1 - m2 + m3/8 - 8m4 + m5 */
#define CK_W4_A(T, TT, m0, m1, m2, m3, m4, m5, y0, y1, y2, y3) do {                        \
    const TT a_ = (m1) + (m2), b_ = (m1) - (m2);                                           \
    y0 = ((m0) + a_) + ((m3) + (m4));                                                      \
    y1 = b_ + ((T)0.5 * (m3) - (T)2 * (m4));                                               \
    y2 = a_ + ((T)0.25 * (m3) + (T)4 * (m4));                                              \
    y3 = (b_ + ((T)0.125 * (m3) - (T)8 * (m4))) + (m5);                                    \
} while (0)

/* Edge tiles by F(2x2, 3x3) (conv2d_forward_winograd's mixed edges): F(2)'s points 0, 1, -1
 * and infinity are F(4)'s planes 0, 1, 2 and 5, and those rows of F(4)'s G are F(2)'s G rows
 * (_conv_winograd.pyx, above _wino_filter) times 1/2, 1/3, -1/3, 1/2.  So U's planes serve as
 * they are, F(2)'s B^T rows taken times 2, 3, -3, 2 instead (small integers: the product's
 * one extra rounding is a 3x, and F(2)'s outputs stay more accurate than F(4)'s):
 *   2(d0 - d2),  3(d1 + d2),  3(d1 - d2),  2(d1 - d3);   A^T: m0 + m1 + m2,  m1 - m2 - m3 */
#define CK_W2_B(T, d0, d1, d2, d3, o0, o1, o2, o3) do {                                   \
    o0 = (T)2 * ((d0) - (d2));                                                             \
    o1 = (T)3 * ((d1) + (d2));                                                             \
    o2 = (T)3 * ((d1) - (d2));                                                             \
    o3 = (T)2 * ((d1) - (d3));                                                             \
} while (0)
#define CK_W2_A(m0, m1, m2, m3, y0, y1) do {                                               \
    y0 = ((m0) + (m1)) + (m2);                                                             \
    y1 = ((m1) - (m2)) - (m3);                                                             \
} while (0)

/* Rows split into 4 phases and back (pure data movement: no bits change).  src: 4*n elements;
 * dst[p*n + j] = src[4j + p] (ck_w4_split) and the inverse (ck_w4_join).  SSE / SSE2 on x86
 * (the 64-bit baseline), plain loops elsewhere.  ck_w4_join reads phase p at src + p*ps. */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
static inline void ck_w4_split_f(const float* src, ptrdiff_t n, float* dst) {
    ptrdiff_t j = 0;
#if defined(__SSE2__)
    for (; j + 4 <= n; j += 4) {
        __m128 a = _mm_loadu_ps(src + 4 * j), b = _mm_loadu_ps(src + 4 * j + 4);
        __m128 c = _mm_loadu_ps(src + 4 * j + 8), d = _mm_loadu_ps(src + 4 * j + 12);
        _MM_TRANSPOSE4_PS(a, b, c, d);
        _mm_storeu_ps(dst + j, a); _mm_storeu_ps(dst + n + j, b);
        _mm_storeu_ps(dst + 2 * n + j, c); _mm_storeu_ps(dst + 3 * n + j, d);
    }
#endif
    for (; j < n; j++) {
        dst[j] = src[4 * j]; dst[n + j] = src[4 * j + 1];
        dst[2 * n + j] = src[4 * j + 2]; dst[3 * n + j] = src[4 * j + 3];
    }
}
static inline void ck_w4_join_f(const float* src, ptrdiff_t ps, ptrdiff_t n, float* dst) {
    ptrdiff_t j = 0;
#if defined(__SSE2__)
    for (; j + 4 <= n; j += 4) {
        __m128 a = _mm_loadu_ps(src + j), b = _mm_loadu_ps(src + ps + j);
        __m128 c = _mm_loadu_ps(src + 2 * ps + j), d = _mm_loadu_ps(src + 3 * ps + j);
        _MM_TRANSPOSE4_PS(a, b, c, d);
        _mm_storeu_ps(dst + 4 * j, a); _mm_storeu_ps(dst + 4 * j + 4, b);
        _mm_storeu_ps(dst + 4 * j + 8, c); _mm_storeu_ps(dst + 4 * j + 12, d);
    }
#endif
    for (; j < n; j++) {
        dst[4 * j] = src[j]; dst[4 * j + 1] = src[ps + j];
        dst[4 * j + 2] = src[2 * ps + j]; dst[4 * j + 3] = src[3 * ps + j];
    }
}
static inline void ck_w4_split_d(const double* src, ptrdiff_t n, double* dst) {
    ptrdiff_t j = 0;
#if defined(__SSE2__)
    for (; j + 2 <= n; j += 2) {
        __m128d a = _mm_loadu_pd(src + 4 * j), b = _mm_loadu_pd(src + 4 * j + 2);
        __m128d c = _mm_loadu_pd(src + 4 * j + 4), d = _mm_loadu_pd(src + 4 * j + 6);
        _mm_storeu_pd(dst + j, _mm_unpacklo_pd(a, c));
        _mm_storeu_pd(dst + n + j, _mm_unpackhi_pd(a, c));
        _mm_storeu_pd(dst + 2 * n + j, _mm_unpacklo_pd(b, d));
        _mm_storeu_pd(dst + 3 * n + j, _mm_unpackhi_pd(b, d));
    }
#endif
    for (; j < n; j++) {
        dst[j] = src[4 * j]; dst[n + j] = src[4 * j + 1];
        dst[2 * n + j] = src[4 * j + 2]; dst[3 * n + j] = src[4 * j + 3];
    }
}
static inline void ck_w4_join_d(const double* src, ptrdiff_t ps, ptrdiff_t n, double* dst) {
    ptrdiff_t j = 0;
#if defined(__SSE2__)
    for (; j + 2 <= n; j += 2) {
        __m128d a = _mm_loadu_pd(src + j), b = _mm_loadu_pd(src + ps + j);
        __m128d c = _mm_loadu_pd(src + 2 * ps + j), d = _mm_loadu_pd(src + 3 * ps + j);
        _mm_storeu_pd(dst + 4 * j, _mm_unpacklo_pd(a, b));
        _mm_storeu_pd(dst + 4 * j + 2, _mm_unpacklo_pd(c, d));
        _mm_storeu_pd(dst + 4 * j + 4, _mm_unpackhi_pd(a, b));
        _mm_storeu_pd(dst + 4 * j + 6, _mm_unpackhi_pd(c, d));
    }
#endif
    for (; j < n; j++) {
        dst[4 * j] = src[j]; dst[4 * j + 1] = src[ps + j];
        dst[4 * j + 2] = src[2 * ps + j]; dst[4 * j + 3] = src[3 * ps + j];
    }
}

/* ck_w4_input_row: one row of tiles, v[e*vs + j] = (B^T d_j B)[e/6, e%6] for the tiles
 *   d_j = x[r0 : r0+6, 4j-pl : 4j-pl+6] (0 outside the H x W plane x), j < tw.
 * ck_w4_input_rows: nt such rows, tile row i's at v + i*tw -- the last one's at vlast instead
 *   where vlast is not NULL (the forward keeps the images' last tile rows apart).
 *   scratch: ck_w4_input_scratch(tw) elements.
 * ck_w4_output_tiles / ck_w4_store_row (below): the output transform, all of a task's tiles
 *   at once (rows of few tiles make short loops), then stored row by row.
 * The input rows are split into 4 phases first (column 4j+p at p*n1 + j): B^T down the rows is
 * then one contiguous loop over all phases, and B across tile j reads phases 0-3 at j and
 * phases 0-1 at j+1, contiguous in j too. */
#define CK_W4_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof(V)); v_; })
#define CK_W4_ST(p, v) do { __typeof__(v) t_ = (v); memcpy((p), &t_, sizeof(t_)); } while (0)

/* B^T down the 6 phase rows Q (Wb apart) at columns c .. c + lanes of VT, into D */
#define CK_W4_BDOWN(T, VT) do {                                                            \
    VT o0, o1, o2, o3, o4, o5;                                                             \
    CK_W4_B(T, VT, CK_W4_LD(VT, Q + c), CK_W4_LD(VT, Q + Wb + c),                          \
            CK_W4_LD(VT, Q + 2 * Wb + c), CK_W4_LD(VT, Q + 3 * Wb + c),                    \
            CK_W4_LD(VT, Q + 4 * Wb + c), CK_W4_LD(VT, Q + 5 * Wb + c),                    \
            o0, o1, o2, o3, o4, o5);                                                       \
    CK_W4_ST(D + c, o0); CK_W4_ST(D + Wb + c, o1); CK_W4_ST(D + 2 * Wb + c, o2);           \
    CK_W4_ST(D + 3 * Wb + c, o3); CK_W4_ST(D + 4 * Wb + c, o4);                            \
    CK_W4_ST(D + 5 * Wb + c, o5);                                                          \
} while (0)

/* B^T across one row of D (phases p .. p + 3*n1), tiles j .. j + lanes - 1, into o's planes */
#define CK_W4_BACROSS(T, VT) do {                                                          \
    VT o0, o1, o2, o3, o4, o5;                                                             \
    CK_W4_B(T, VT, CK_W4_LD(VT, p + j), CK_W4_LD(VT, p + n1 + j),                          \
            CK_W4_LD(VT, p + 2 * n1 + j), CK_W4_LD(VT, p + 3 * n1 + j),                    \
            CK_W4_LD(VT, p + j + 1), CK_W4_LD(VT, p + n1 + j + 1),                         \
            o0, o1, o2, o3, o4, o5);                                                       \
    CK_W4_ST(o + j, o0); CK_W4_ST(o + vs + j, o1); CK_W4_ST(o + 2 * vs + j, o2);           \
    CK_W4_ST(o + 3 * vs + j, o3); CK_W4_ST(o + 4 * vs + j, o4);                            \
    CK_W4_ST(o + 5 * vs + j, o5);                                                          \
} while (0)

/* A^T down the 6 rows of M (a, ms apart) for columns j .. j + lanes - 1: 4 rows of s (n apart) */
#define CK_W4_ADOWN(T, VT) do {                                                            \
    VT s0, s1, s2, s3;                                                                     \
    CK_W4_A(T, VT, CK_W4_LD(VT, a + j), CK_W4_LD(VT, a + 6 * ms + j),                      \
            CK_W4_LD(VT, a + 12 * ms + j), CK_W4_LD(VT, a + 18 * ms + j),                  \
            CK_W4_LD(VT, a + 24 * ms + j), CK_W4_LD(VT, a + 30 * ms + j),                  \
            s0, s1, s2, s3);                                                               \
    CK_W4_ST(s + j, s0); CK_W4_ST(s + 6 * n + j, s1);                                      \
    CK_W4_ST(s + 12 * n + j, s2); CK_W4_ST(s + 18 * n + j, s3);                            \
} while (0)

/* Vector loops (GCC / clang vector extensions, VB bytes) with a scalar tail doing the same
 * operations: lane j of a vector and element j of the tail round alike. */
#define CK_W4_DEFINE(T, SUF, VB, ATTR)                                                     \
typedef T ck_w4v_##SUF __attribute__((vector_size(VB)));                                  \
typedef T ck_w4h_##SUF __attribute__((vector_size(16)));                                  \
ATTR static void ck_w4_input_mix_##SUF(const T* x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0,  \
                                       ptrdiff_t nt, ptrdiff_t pl, ptrdiff_t tw, int c2,   \
                                       int l2, T* vm, T* ve, T* vml, T* vel, T* vend,      \
                                       T* vlend, ptrdiff_t vs, T* scratch) {               \
    typedef ck_w4v_##SUF V;                                                                \
    const ptrdiff_t L = VB / sizeof(T), n1 = tw + 1, Wb = 4 * n1, nr = 4 * nt + 2;         \
    const ptrdiff_t tm = tw - (c2 ? 1 : 0);                                                \
    T* R = scratch;                 /* one zero-padded input row, columns -pl .. Wb-1-pl */ \
    T* Qa = scratch + Wb;           /* the nr rows in phases (nr x Wb) */                 \
    T* D = Qa + nr * Wb;            /* B^T down a tile row's 6 rows, in phases (6 x Wb) */ \
    ptrdiff_t lo = pl > 0 ? pl : 0, up = pl + W < Wb ? pl + W : Wb, k, c, j, i;             \
    for (k = 0; k < nr; k++) {                                                             \
        if (r0 + k < 0 || r0 + k >= H || lo >= up) {                                       \
            memset(Qa + k * Wb, 0, Wb * sizeof(T));                                        \
            continue;                                                                      \
        }                                                                                  \
        if (lo > 0) memset(R, 0, lo * sizeof(T));                                          \
        memcpy(R + lo, x + (r0 + k) * W + lo - pl, (up - lo) * sizeof(T));                 \
        if (up < Wb) memset(R + up, 0, (Wb - up) * sizeof(T));                             \
        ck_w4_split_##SUF##_(R, n1, Qa + k * Wb);                                          \
    }                                                                                      \
    for (i = 0; i < nt; i++) {      /* tile row i: rows 4i .. 4i+5 */                      \
    const T* Q = Qa + 4 * i * Wb;                                                          \
    const int last = vml && i == nt - 1, two = last && l2;                                 \
    T* vr = last ? vml : vm + i * tm;                                                      \
    T* er = last ? vel : ve + i;                                                           \
    const T* end = last ? vlend : vend;   /* (plane 0's; the others' alike, vs apart) */   \
    if (two) {                      /* F(2)'s B^T down rows 4i .. 4i+3, into D's rows 0, 1, 2, 5 */ \
        for (c = 0; c + L <= Wb; c += L) {                                                 \
            V o0, o1, o2, o3;                                                              \
            CK_W2_B(T, CK_W4_LD(V, Q + c), CK_W4_LD(V, Q + Wb + c),                        \
                    CK_W4_LD(V, Q + 2 * Wb + c), CK_W4_LD(V, Q + 3 * Wb + c),              \
                    o0, o1, o2, o3);                                                       \
            CK_W4_ST(D + c, o0); CK_W4_ST(D + Wb + c, o1); CK_W4_ST(D + 2 * Wb + c, o2);   \
            CK_W4_ST(D + 5 * Wb + c, o3);                                                  \
        }                                                                                  \
        for (; c < Wb; c++)                                                                \
            CK_W2_B(T, Q[c], Q[Wb + c], Q[2 * Wb + c], Q[3 * Wb + c], D[c], D[Wb + c],      \
                    D[2 * Wb + c], D[5 * Wb + c]);                                         \
    } else {                                                                               \
    for (c = 0; c + L <= Wb; c += L)                                                       \
        CK_W4_BDOWN(T, V);                                                                 \
    for (; c + 16 / (ptrdiff_t)sizeof(T) <= Wb; c += 16 / (ptrdiff_t)sizeof(T))           \
        CK_W4_BDOWN(T, ck_w4h_##SUF);   /* (Wb is a multiple of 4: 14x14 maps' 20) */      \
    for (; c < Wb; c++)                                                                    \
        CK_W4_B(T, T, Q[c], Q[Wb + c], Q[2 * Wb + c], Q[3 * Wb + c], Q[4 * Wb + c],        \
                Q[5 * Wb + c], D[c], D[Wb + c], D[2 * Wb + c], D[3 * Wb + c],              \
                D[4 * Wb + c], D[5 * Wb + c]);                                             \
    }                                                                                      \
    for (k = 0; k < 6; k++) {                                                              \
        const T* p = D + k * Wb;    /* phases p .. p + 3*n1 */                             \
        T* o = vr + (6 * k) * vs;                                                          \
        if (two && (k == 3 || k == 4))                                                     \
            continue;                                                                      \
        for (j = 0; j + L <= tm; j += L) {                                                 \
            CK_W4_BACROSS(T, V);                                                           \
        }                                                                                  \
        for (; j + 16 / (ptrdiff_t)sizeof(T) <= tm; j += 16 / (ptrdiff_t)sizeof(T)) {      \
            typedef ck_w4h_##SUF U;                                                        \
            CK_W4_BACROSS(T, U);                                                           \
        }                                                                                  \
        if (j < tm && j + 16 / (ptrdiff_t)sizeof(T) <= tw && end                           \
                && vr + j + 16 / (ptrdiff_t)sizeof(T) <= end) {                            \
            /* (res_14's tm = 3 of 4: the row's own 4 tiles in the lanes, the 4th lane's     \
               values on the next row's first slot, which that row writes later) */        \
            typedef ck_w4h_##SUF U;                                                        \
            CK_W4_BACROSS(T, U);                                                           \
            j = tm;                                                                        \
        }                                                                                  \
        for (; j < tm; j++)                                                                \
            CK_W4_B(T, T, p[j], p[n1 + j], p[2 * n1 + j], p[3 * n1 + j], p[j + 1],         \
                    p[n1 + j + 1], o[j], o[vs + j], o[2 * vs + j], o[3 * vs + j],          \
                    o[4 * vs + j], o[5 * vs + j]);                                         \
        if (c2) {                   /* the last tile by F(2) across: columns 4tm .. 4tm+3 */ \
            T* q = er + (6 * k) * vs;                                                      \
            CK_W2_B(T, p[tm], p[n1 + tm], p[2 * n1 + tm], p[3 * n1 + tm], q[0], q[vs],     \
                    q[2 * vs], q[5 * vs]);                                                 \
        }                                                                                  \
    }                                                                                      \
    }                                                                                      \
}                                                                                          \
ATTR static void ck_w4_input_rows_##SUF(const T* x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0, \
                                        ptrdiff_t nt, ptrdiff_t pl, ptrdiff_t tw, T* v,    \
                                        T* vlast, ptrdiff_t vs, T* scratch) {              \
    ck_w4_input_mix_##SUF(x, H, W, r0, nt, pl, tw, 0, 0, v, NULL, vlast, NULL, NULL, NULL,  \
                          vs, scratch);                                                    \
}                                                                                          \
ATTR static void ck_w4_input_row_##SUF(const T* x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0, \
                                       ptrdiff_t pl, ptrdiff_t tw, T* v, ptrdiff_t vs,     \
                                       T* scratch) {                                       \
    ck_w4_input_rows_##SUF(x, H, W, r0, 1, pl, tw, v, NULL, vs, scratch);                  \
}                                                                                          \
/* ck_w4_output_tiles: n tiles at once, Yp[(4r + q)*n + j] = (A^T m_j A)[r, q] + bias, m_j  \
   element e at m[e*ms + j]; S: 24*n elements of scratch.                                  \
   ck_w4_output_block: the same for edge tiles by F(2) down (a2: rows r < 2 from planes 0, 1, \
   2, 5 of each column) and / or across (b2: columns q < 2 from columns 0, 1, 2, 5); only  \
   those rows and columns of Yp written, only those planes read */                        \
ATTR static void ck_w4_output_block_##SUF(const T* m, ptrdiff_t ms, ptrdiff_t n, int a2,    \
                                          int b2, T bias, T* S, T* Yp) {                   \
    typedef ck_w4v_##SUF V;                                                                \
    typedef ck_w4h_##SUF H;         /* (16-byte vectors for the blocks' tails) */          \
    const ptrdiff_t L = VB / sizeof(T), nr = a2 ? 2 : 4;                                   \
    ptrdiff_t l, j, r;                                                                     \
    for (l = 0; l < 6; l++) {       /* A^T down: S[(6r + l)*n + j] */                     \
        const T* a = m + l * ms;                                                           \
        T* s = S + l * n;                                                                  \
        if (b2 && (l == 3 || l == 4))                                                      \
            continue;                                                                      \
        if (a2) {                                                                          \
            for (j = 0; j + L <= n; j += L) {                                              \
                V s0, s1;                                                                  \
                CK_W2_A(CK_W4_LD(V, a + j), CK_W4_LD(V, a + 6 * ms + j),                   \
                        CK_W4_LD(V, a + 12 * ms + j), CK_W4_LD(V, a + 30 * ms + j), s0, s1); \
                CK_W4_ST(s + j, s0); CK_W4_ST(s + 6 * n + j, s1);                          \
            }                                                                              \
            for (; j + 16 / (ptrdiff_t)sizeof(T) <= n; j += 16 / (ptrdiff_t)sizeof(T)) {  \
                H s0, s1;                                                                  \
                CK_W2_A(CK_W4_LD(H, a + j), CK_W4_LD(H, a + 6 * ms + j),                   \
                        CK_W4_LD(H, a + 12 * ms + j), CK_W4_LD(H, a + 30 * ms + j), s0, s1); \
                CK_W4_ST(s + j, s0); CK_W4_ST(s + 6 * n + j, s1);                          \
            }                                                                              \
            for (; j < n; j++)                                                             \
                CK_W2_A(a[j], a[6 * ms + j], a[12 * ms + j], a[30 * ms + j], s[j],         \
                        s[6 * n + j]);                                                     \
            continue;                                                                      \
        }                                                                                  \
        for (j = 0; j + L <= n; j += L) {                                                  \
            CK_W4_ADOWN(T, V);                                                             \
        }                                                                                  \
        for (; j + 16 / (ptrdiff_t)sizeof(T) <= n; j += 16 / (ptrdiff_t)sizeof(T)) {      \
            CK_W4_ADOWN(T, H);                                                             \
        }                                                                                  \
        for (; j < n; j++)                                                                 \
            CK_W4_A(T, T, a[j], a[6 * ms + j], a[12 * ms + j], a[18 * ms + j],             \
                    a[24 * ms + j], a[30 * ms + j], s[j], s[6 * n + j], s[12 * n + j],     \
                    s[18 * n + j]);                                                        \
    }                                                                                      \
    for (r = 0; r < nr; r++) {      /* then A across */                                   \
        const T* s = S + 6 * r * n;                                                        \
        T* o = Yp + 4 * r * n;                                                             \
        if (b2) {                                                                          \
            for (j = 0; j + L <= n; j += L) {                                              \
                V e0, e1;                                                                  \
                CK_W2_A(CK_W4_LD(V, s + j), CK_W4_LD(V, s + n + j),                        \
                        CK_W4_LD(V, s + 2 * n + j), CK_W4_LD(V, s + 5 * n + j), e0, e1);   \
                CK_W4_ST(o + j, e0 + bias); CK_W4_ST(o + n + j, e1 + bias);                \
            }                                                                              \
            for (; j + 16 / (ptrdiff_t)sizeof(T) <= n; j += 16 / (ptrdiff_t)sizeof(T)) {  \
                H e0, e1;                                                                  \
                CK_W2_A(CK_W4_LD(H, s + j), CK_W4_LD(H, s + n + j),                        \
                        CK_W4_LD(H, s + 2 * n + j), CK_W4_LD(H, s + 5 * n + j), e0, e1);   \
                CK_W4_ST(o + j, e0 + bias); CK_W4_ST(o + n + j, e1 + bias);                \
            }                                                                              \
            for (; j < n; j++) {                                                           \
                T e0, e1;                                                                  \
                CK_W2_A(s[j], s[n + j], s[2 * n + j], s[5 * n + j], e0, e1);               \
                o[j] = e0 + bias; o[n + j] = e1 + bias;                                    \
            }                                                                              \
            continue;                                                                      \
        }                                                                                  \
        for (j = 0; j + L <= n; j += L) {                                                  \
            V e0, e1, e2, e3;                                                              \
            CK_W4_A(T, V, CK_W4_LD(V, s + j), CK_W4_LD(V, s + n + j),                      \
                    CK_W4_LD(V, s + 2 * n + j), CK_W4_LD(V, s + 3 * n + j),                \
                    CK_W4_LD(V, s + 4 * n + j), CK_W4_LD(V, s + 5 * n + j),                \
                    e0, e1, e2, e3);                                                       \
            CK_W4_ST(o + j, e0 + bias); CK_W4_ST(o + n + j, e1 + bias);                    \
            CK_W4_ST(o + 2 * n + j, e2 + bias); CK_W4_ST(o + 3 * n + j, e3 + bias);        \
        }                                                                                  \
        for (; j + 16 / (ptrdiff_t)sizeof(T) <= n; j += 16 / (ptrdiff_t)sizeof(T)) {      \
            H e0, e1, e2, e3;                                                              \
            CK_W4_A(T, H, CK_W4_LD(H, s + j), CK_W4_LD(H, s + n + j),                      \
                    CK_W4_LD(H, s + 2 * n + j), CK_W4_LD(H, s + 3 * n + j),                \
                    CK_W4_LD(H, s + 4 * n + j), CK_W4_LD(H, s + 5 * n + j),                \
                    e0, e1, e2, e3);                                                       \
            CK_W4_ST(o + j, e0 + bias); CK_W4_ST(o + n + j, e1 + bias);                    \
            CK_W4_ST(o + 2 * n + j, e2 + bias); CK_W4_ST(o + 3 * n + j, e3 + bias);        \
        }                                                                                  \
        for (; j < n; j++) {                                                               \
            T e0, e1, e2, e3;                                                              \
            CK_W4_A(T, T, s[j], s[n + j], s[2 * n + j], s[3 * n + j], s[4 * n + j],        \
                    s[5 * n + j], e0, e1, e2, e3);                                         \
            o[j] = e0 + bias; o[n + j] = e1 + bias;                                        \
            o[2 * n + j] = e2 + bias; o[3 * n + j] = e3 + bias;                            \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
ATTR static void ck_w4_output_tiles_##SUF(const T* m, ptrdiff_t ms, ptrdiff_t n, T bias,   \
                                          T* S, T* Yp) {                                   \
    ck_w4_output_block_##SUF(m, ms, n, 0, 0, bias, S, Yp);                                 \
}

/* ck_w4_store_row: rows r < rows of one row of tw tiles from ck_w4_output_tiles' Yp (tiles
 * at Yp[... + j], j < tw, rows of phases n apart) into y (rows Wo apart, Wo <= 4*tw);
 * buf: 4*tw elements.  ck_w4_store_mix: the row's first tm tiles from Yp, and where c2 its
 * last (an F(2) edge tile: columns 4tm, 4tm+1) from Ye, rows of phases ne apart */
#define CK_W4_STORE(T, SUF)                                                                \
static void ck_w4_store_mix_##SUF(const T* Yp, ptrdiff_t n, ptrdiff_t tm, const T* Ye,      \
                                  ptrdiff_t ne, int c2, T* y, ptrdiff_t Wo, ptrdiff_t rows, \
                                  T* buf) {                                                \
    ptrdiff_t r;                                                                           \
    for (r = 0; r < rows; r++) {                                                           \
        /* (with c2 one tile more: its SSE transpose, the extra tile's lanes overwritten; \
           it reads the next phase's or block's first tile, inside the output scratch) */ \
        ck_w4_join_##SUF(Yp + 4 * r * n, n, c2 ? tm + 1 : tm, buf);                        \
        if (c2) {                                                                          \
            buf[4 * tm] = Ye[4 * r * ne];                                                  \
            buf[4 * tm + 1] = Ye[(4 * r + 1) * ne];                                        \
        }                                                                                  \
        memcpy(y + r * Wo, buf, Wo * sizeof(T));                                           \
    }                                                                                      \
}                                                                                          \
static void ck_w4_store_row_##SUF(const T* Yp, ptrdiff_t n, ptrdiff_t tw, T* y,            \
                                  ptrdiff_t Wo, ptrdiff_t rows, T* buf) {                  \
    ck_w4_store_mix_##SUF(Yp, n, tw, NULL, 0, 0, y, Wo, rows, buf);                        \
}
CK_W4_STORE(float, f)
CK_W4_STORE(double, d)

#define ck_w4_split_f_base_ ck_w4_split_f
#define ck_w4_split_d_base_ ck_w4_split_d
#define ck_w4_split_f_avx2_ ck_w4_split_f
#define ck_w4_split_d_avx2_ ck_w4_split_d
#define ck_w4_join_f_base_ ck_w4_join_f
#define ck_w4_join_d_base_ ck_w4_join_d
#define ck_w4_join_f_avx2_ ck_w4_join_f
#define ck_w4_join_d_avx2_ ck_w4_join_d
CK_W4_DEFINE(float, f_base, 16, )
CK_W4_DEFINE(double, d_base, 16, )
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define CK_W4_X86 1
CK_W4_DEFINE(float, f_avx2, 32, __attribute__((target("avx2"))))
CK_W4_DEFINE(double, d_avx2, 32, __attribute__((target("avx2"))))
#endif

/* G h for one column h of 3 (in double; G: the 6x3 matrix in _conv_winograd.pyx's comment),
 * its rows' common factors taken out:  h0/2,  (h0 + h1 + h2)/6,  (h1 - h0 - h2)/6,
 * -4/15 (4h0 + 2h1 + h2),  1/30 (h0 - 2h1 + 4h2),  h2/2.  For float32 filters the sums inside
 * are exact in double, each output rounded once, at its one multiplication: 12 operations, not
 * the full matrix's 30, and no less accurate. */
#define CK_W4_G(TT, h0, h1, h2, o0, o1, o2, o3, o4, o5) do {                               \
    const TT p_ = (h0) + (h2);                                                             \
    o0 = 0.5 * (h0);                                                                       \
    o1 = (1.0 / 6) * (p_ + (h1));                                                          \
    o2 = (1.0 / 6) * ((h1) - p_);                                                          \
    o3 = (-4.0 / 15) * ((4.0 * (h0) + 2.0 * (h1)) + (h2));                                 \
    o4 = (1.0 / 30) * (((h0) - 2.0 * (h1)) + 4.0 * (h2));                                  \
    o5 = 0.5 * (h2);                                                                       \
} while (0)

/* G g G^T for NL lanes (one filter each, in double, rounded once to T): lane l's 9 values at
 * SRC(l) (reversed when flip: grad_x's filters, turned by 180 degrees; a lane with SRC(l) NULL
 * is zero), its 36 outputs to u[e*us + l] for l < NOUT.  Every lane does the same operations
 * (vectors of any width give the same bits). */
#define CK_W4_FILTER_LANES(T, NL, SRC, NOUT) do {                                          \
    double v[9][NL], t[18][NL], o[6][NL];                                                  \
    ptrdiff_t k, l, a, b;                                                                  \
    for (l = 0; l < NL; l++) {                                                             \
        const T* src_ = SRC(l);                                                            \
        for (k = 0; k < 9; k++)                                                            \
            v[k][l] = src_ ? (double)src_[flip ? 8 - k : k] : 0.0;                         \
    }                                                                                      \
    for (k = 0; k < 3; k++)         /* t (6x3) = G g, column k */                          \
        for (l = 0; l < NL; l++)                                                           \
            CK_W4_G(double, v[k][l], v[3 + k][l], v[6 + k][l], t[k][l], t[3 + k][l],       \
                    t[6 + k][l], t[9 + k][l], t[12 + k][l], t[15 + k][l]);                 \
    for (a = 0; a < 6; a++) {       /* row a of t G^T */                                   \
        for (l = 0; l < NL; l++)                                                           \
            CK_W4_G(double, t[3 * a][l], t[3 * a + 1][l], t[3 * a + 2][l], o[0][l],        \
                    o[1][l], o[2][l], o[3][l], o[4][l], o[5][l]);                          \
        for (b = 0; b < 6; b++)                                                            \
            for (l = 0; l < (NOUT); l++)                                                   \
                u[(a * 6 + b) * us + l] = (T)o[b][l];                                      \
    }                                                                                      \
} while (0)

/* ck_w4_filters: up to 16 filters, lane l's at g + l*ls, l < nl (U's plain layout: a plane's
 *   row f holds its C channels).
 * ck_w4_filters_pk: a strip of up to 6 filters (rows of a plane's GEMM) times up to 8
 *   channels, lane 6c + r = filter r of the strip, channel c, at g + r*fs + c*cs (r < nf,
 *   c < nc; the strip's rows past nf are zeros): ck_w4_gemm_pk's packed layout, where a
 *   strip's channels follow each other, each with its 6 rows side by side. */
#define CK_W4_SRC16(l) ((l) < nl ? g + (l) * ls : 0)
#define CK_W4_SRC48(l) ((l) % 6 < nf && (l) / 6 < nc ? g + ((l) % 6) * fs + ((l) / 6) * cs    \
                                                      : 0)
#define CK_W4_FILTERS(T, SUF, ATTR)                                                        \
ATTR static void ck_w4_filters_##SUF(const T* g, ptrdiff_t ls, ptrdiff_t nl, int flip,     \
                                     T* u, ptrdiff_t us) {                                 \
    CK_W4_FILTER_LANES(T, 16, CK_W4_SRC16, nl);                                            \
}                                                                                          \
ATTR static void ck_w4_filters_pk_##SUF(const T* g, ptrdiff_t fs, ptrdiff_t cs,            \
                                        ptrdiff_t nf, ptrdiff_t nc, int flip, T* u,        \
                                        ptrdiff_t us) {                                    \
    ptrdiff_t e_, q_;               /* the next block's lines (a task's next run of 48): */ \
    for (e_ = 0; e_ < 36; e_++)     /* 36 write streams outrun the hardware's prefetch */   \
        for (q_ = 0; q_ < 48; q_ += 16)                                                    \
            __builtin_prefetch(u + e_ * us + 48 + q_, 1, 3);                               \
    CK_W4_FILTER_LANES(T, 48, CK_W4_SRC48, 6 * nc);                                        \
}
CK_W4_FILTERS(float, f_base, )
CK_W4_FILTERS(double, d_base, )
#if defined(CK_W4_X86)
CK_W4_FILTERS(float, f_avx2, __attribute__((target("avx2"))))
CK_W4_FILTERS(double, d_avx2, __attribute__((target("avx2"))))
#endif

/* ---------------------------------------------------------------- the weight gradient
 * grad_weight of the 3x3 stride-1 conv by the transposed F(4x4, 3x3) (Winograd's F(3x3, 4x4)
 * form): the forward's y = A^T [(G g) . (B^T d)] is a trilinear form sum_e (A gy)_e (G g)_e
 * (B^T d)_e, so its derivative in the filter g is g' = G^T [(A gy) . (B^T d)] -- with the same
 * 6x6 input tiles d and matrices as the forward (B^T of ck_w4_input_row, G of
 * _conv_winograd.pyx's _G4) and each 4x4 tile of grad_y transformed by A (6x4).  Summed over
 * the batch's tiles: grad_weight[f, c] = G^T M[f, c] G, M_e = sum_t (A gy_t A^T)_e (B^T d_t B)_e,
 * 36 GEMMs (F x tiles) @ (tiles x C): 4x fewer products than im2col's.
 *
 * A g for one column (4 -> 6): g0,  g0 + g1 + g2 + g3,  g0 - g1 + g2 - g3,
 *   g0 + g1/2 + g2/4 + g3/8,  g0 - 2g1 + 4g2 - 8g3,  g3 (every coefficient a power of two) */
#define CK_W4_AG(T, TT, g0, g1, g2, g3, o0, o1, o2, o3, o4, o5) do {                      \
    const TT p_ = (g0) + (g2), q_ = (g1) + (g3);                                           \
    o0 = (g0);                                                                             \
    o1 = p_ + q_;                                                                          \
    o2 = p_ - q_;                                                                          \
    o3 = ((g0) + (T)0.25 * (g2)) + ((T)0.5 * (g1) + (T)0.125 * (g3));                      \
    o4 = ((g0) + (T)4 * (g2)) - ((T)2 * (g1) + (T)8 * (g3));                               \
    o5 = (g3);                                                                             \
} while (0)

/* ck_w4_grad_row: one row of grad_y tiles, z[e*zs + j] = (A g_j A^T)[e/6, e%6] for the tiles
 * g_j = gy[r0 : r0+4, 4j : 4j+4] (0 outside the Ho x Wo plane gy), j < tw.  As
 * ck_w4_input_row: the rows split into 4 phases (tiles do not overlap: tile j's column p is
 * phase p at j), A down the rows in one loop over all phases, then A across.
 * scratch: ck_w4_grad_scratch(tw) elements. */
#define CK_W4_GRAD_DEFINE(T, SUF, VB, ATTR)                                                \
ATTR static void ck_w4_grad_row_##SUF(const T* gy, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t r0, \
                                      ptrdiff_t tw, T* z, ptrdiff_t zs, T* scratch) {       \
    typedef ck_w4v_##SUF V;                                                                \
    const ptrdiff_t L = VB / sizeof(T), Wb = 4 * tw;                                       \
    T* R = scratch;                 /* one zero-padded row of grad_y, Wb columns */        \
    T* Q = scratch + Wb;            /* the 4 rows in phases (4 x Wb) */                   \
    T* D = scratch + 5 * Wb;        /* A down the rows, in phases (6 x Wb) */             \
    ptrdiff_t k, c, j;                                                                     \
    for (k = 0; k < 4; k++) {                                                              \
        if (r0 + k >= Ho) {                                                                \
            memset(Q + k * Wb, 0, Wb * sizeof(T));                                         \
            continue;                                                                      \
        }                                                                                  \
        memcpy(R, gy + (r0 + k) * Wo, Wo * sizeof(T));                                     \
        if (Wo < Wb) memset(R + Wo, 0, (Wb - Wo) * sizeof(T));                             \
        ck_w4_split_##SUF##_(R, tw, Q + k * Wb);                                           \
    }                                                                                      \
    for (c = 0; c + L <= Wb; c += L) {                                                     \
        V o0, o1, o2, o3, o4, o5;                                                          \
        CK_W4_AG(T, V, CK_W4_LD(V, Q + c), CK_W4_LD(V, Q + Wb + c),                        \
                 CK_W4_LD(V, Q + 2 * Wb + c), CK_W4_LD(V, Q + 3 * Wb + c),                 \
                 o0, o1, o2, o3, o4, o5);                                                  \
        CK_W4_ST(D + c, o0); CK_W4_ST(D + Wb + c, o1); CK_W4_ST(D + 2 * Wb + c, o2);       \
        CK_W4_ST(D + 3 * Wb + c, o3); CK_W4_ST(D + 4 * Wb + c, o4);                        \
        CK_W4_ST(D + 5 * Wb + c, o5);                                                      \
    }                                                                                      \
    for (; c < Wb; c++)                                                                    \
        CK_W4_AG(T, T, Q[c], Q[Wb + c], Q[2 * Wb + c], Q[3 * Wb + c], D[c], D[Wb + c],     \
                 D[2 * Wb + c], D[3 * Wb + c], D[4 * Wb + c], D[5 * Wb + c]);              \
    for (k = 0; k < 6; k++) {                                                              \
        const T* p = D + k * Wb;    /* phase q of tile j at p[q*tw + j] */                 \
        T* o = z + (6 * k) * zs;                                                           \
        for (j = 0; j + L <= tw; j += L) {                                                 \
            V o0, o1, o2, o3, o4, o5;                                                      \
            CK_W4_AG(T, V, CK_W4_LD(V, p + j), CK_W4_LD(V, p + tw + j),                    \
                     CK_W4_LD(V, p + 2 * tw + j), CK_W4_LD(V, p + 3 * tw + j),             \
                     o0, o1, o2, o3, o4, o5);                                              \
            CK_W4_ST(o + j, o0); CK_W4_ST(o + zs + j, o1); CK_W4_ST(o + 2 * zs + j, o2);   \
            CK_W4_ST(o + 3 * zs + j, o3); CK_W4_ST(o + 4 * zs + j, o4);                    \
            CK_W4_ST(o + 5 * zs + j, o5);                                                  \
        }                                                                                  \
        for (; j < tw; j++)                                                                \
            CK_W4_AG(T, T, p[j], p[tw + j], p[2 * tw + j], p[3 * tw + j], o[j], o[zs + j], \
                     o[2 * zs + j], o[3 * zs + j], o[4 * zs + j], o[5 * zs + j]);          \
    }                                                                                      \
}
CK_W4_GRAD_DEFINE(float, f_base, 16, )
CK_W4_GRAD_DEFINE(double, d_base, 16, )
#if defined(CK_W4_X86)
CK_W4_GRAD_DEFINE(float, f_avx2, 32, __attribute__((target("avx2"))))
CK_W4_GRAD_DEFINE(double, d_avx2, 32, __attribute__((target("avx2"))))
#endif

/* G^T m for one column of 6 (in double; G: _conv_winograd.pyx's _G4, whose columns are
 *   k=0: 1/2 m0 + (m1 - m2)/6 - 16/15 m3 + 1/30 m4,   k=1: (m1 + m2)/6 - 8/15 m3 - 1/15 m4,
 *   k=2: (m1 - m2)/6 - 4/15 m3 + 2/15 m4 + 1/2 m5; each product of m3 and m4 rounded once, the
 *   other coefficients powers of two times those) */
#define CK_W4_GT(TT, m0, m1, m2, m3, m4, m5, t0, t1, t2) do {                              \
    const TT s_ = (m1) + (m2), d_ = (m1) - (m2);                                           \
    const TT a_ = (1.0 / 15) * (m4), b_ = (4.0 / 15) * (m3), d6_ = (1.0 / 6) * d_;          \
    t0 = ((0.5 * (m0) + d6_) - 4.0 * b_) + 0.5 * a_;                                       \
    t1 = ((1.0 / 6) * s_ - 2.0 * b_) - a_;                                                 \
    t2 = ((d6_ - b_) + 2.0 * a_) + 0.5 * (m5);                                             \
} while (0)

/* ck_w4_wgrad_out: n entries of grad_weight (3x3 each, 9 apart from gw) from their M, given
 * in np parts ps apart (part p's element e of entry j at m[p*ps + e*ms + j]): the parts added
 * in double in order, then G^T M G in double, rounded once to T.  Vectors of double over the
 * entries (the same operations in every lane and in the scalar tail). */
#define CK_W4_WGRAD_DEFINE(T, SUF, VB, ATTR)                                               \
typedef double ck_w4dv_##SUF __attribute__((vector_size(VB)));                            \
typedef T ck_w4tv_##SUF __attribute__((vector_size(VB / (8 / sizeof(T)))));               \
ATTR static void ck_w4_wgrad_out_##SUF(const T* m, ptrdiff_t ms, ptrdiff_t np,            \
                                       ptrdiff_t ps, ptrdiff_t n, T* gw) {                 \
    typedef ck_w4dv_##SUF D;                                                               \
    typedef ck_w4tv_##SUF U;                                                               \
    enum { L = VB / 8 };                                                                   \
    ptrdiff_t j, b, k, l, p;                                                               \
    for (j = 0; j + L <= n; j += L) {                                                      \
        D t[3][6], o[3][3], v[6];                                                          \
        double out[9][L];                                                                  \
        for (b = 0; b < 6; b++) {                                                          \
            for (k = 0; k < 6; k++) {                                                      \
                const T* q = m + (k * 6 + b) * ms + j;                                     \
                v[k] = __builtin_convertvector(CK_W4_LD(U, q), D);                         \
                for (p = 1; p < np; p++)                                                   \
                    v[k] += __builtin_convertvector(CK_W4_LD(U, q + p * ps), D);           \
            }                                                                              \
            CK_W4_GT(D, v[0], v[1], v[2], v[3], v[4], v[5], t[0][b], t[1][b], t[2][b]);    \
        }                                                                                  \
        for (k = 0; k < 3; k++)                                                            \
            CK_W4_GT(D, t[k][0], t[k][1], t[k][2], t[k][3], t[k][4], t[k][5], o[k][0],     \
                     o[k][1], o[k][2]);                                                    \
        for (k = 0; k < 3; k++)                                                            \
            for (l = 0; l < 3; l++)                                                        \
                CK_W4_ST(out[3 * k + l], o[k][l]);                                         \
        for (l = 0; l < L; l++)                                                            \
            for (k = 0; k < 9; k++)                                                        \
                gw[9 * (j + l) + k] = (T)out[k][l];                                        \
    }                                                                                      \
    for (; j < n; j++) {                                                                   \
        double t[3][6], o[3][3], v[6];                                                     \
        for (b = 0; b < 6; b++) {                                                          \
            for (k = 0; k < 6; k++) {                                                      \
                const T* q = m + (k * 6 + b) * ms + j;                                     \
                v[k] = (double)q[0];                                                       \
                for (p = 1; p < np; p++)                                                   \
                    v[k] += (double)q[p * ps];                                             \
            }                                                                              \
            CK_W4_GT(double, v[0], v[1], v[2], v[3], v[4], v[5], t[0][b], t[1][b],         \
                     t[2][b]);                                                             \
        }                                                                                  \
        for (k = 0; k < 3; k++)                                                            \
            CK_W4_GT(double, t[k][0], t[k][1], t[k][2], t[k][3], t[k][4], t[k][5],         \
                     o[k][0], o[k][1], o[k][2]);                                           \
        for (k = 0; k < 3; k++)                                                            \
            for (l = 0; l < 3; l++)                                                        \
                gw[9 * j + 3 * k + l] = (T)o[k][l];                                        \
    }                                                                                      \
}
CK_W4_WGRAD_DEFINE(float, f_base, 16, )
CK_W4_WGRAD_DEFINE(double, d_base, 16, )
#if defined(CK_W4_X86)
CK_W4_WGRAD_DEFINE(float, f_avx2, 32, __attribute__((target("avx2"))))
CK_W4_WGRAD_DEFINE(double, d_avx2, 32, __attribute__((target("avx2"))))
#endif

static int ck_w4_allow_avx2 = 1;    /* tests clear it to run the baseline build */

static int ck_w4_avx2(void) {
    return ck_w4_allow_avx2 && ck_cpu_has_avx2();
}

static int ck_w4_set_avx2(int allow) { int old = ck_w4_allow_avx2; ck_w4_allow_avx2 = allow; return old; }

static ptrdiff_t ck_w4_input_scratch(ptrdiff_t tw) { return 13 * (4 * tw + 4); }
/* ck_w4_input_rows' for nt tile rows (13 * (4tw + 4) for one) */
static ptrdiff_t ck_w4_input_rows_scratch(ptrdiff_t nt, ptrdiff_t tw) { return (4 * nt + 9) * (4 * tw + 4); }
/* ck_w4_grad_row's rows of tw tiles */
static ptrdiff_t ck_w4_grad_scratch(ptrdiff_t tw) { return 44 * tw; }
/* ck_w4_output_tiles' S and Yp for n tiles, plus ck_w4_store_row's buf for rows of tw */
static ptrdiff_t ck_w4_output_scratch(ptrdiff_t n, ptrdiff_t tw) { return 40 * n + 4 * tw; }

#ifdef CK_W4_X86
#define CK_W4_PICK(name, SUF, args) \
    do { if (ck_w4_avx2()) name##_##SUF##_avx2 args; else name##_##SUF##_base args; } while (0)
#else
#define CK_W4_PICK(name, SUF, args) name##_##SUF##_base args
#endif

#define CK_W4_DISPATCH(T, SUF)                                                             \
static void ck_w4_input_row_##SUF(const T* x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0,      \
                                  ptrdiff_t pl, ptrdiff_t tw, T* v, ptrdiff_t vs,          \
                                  T* scratch) {                                            \
    CK_W4_PICK(ck_w4_input_row, SUF, (x, H, W, r0, pl, tw, v, vs, scratch));               \
}                                                                                          \
static void ck_w4_input_rows_##SUF(const T* x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0,     \
                                   ptrdiff_t nt, ptrdiff_t pl, ptrdiff_t tw, T* v,         \
                                   T* vlast, ptrdiff_t vs, T* scratch) {                   \
    CK_W4_PICK(ck_w4_input_rows, SUF, (x, H, W, r0, nt, pl, tw, v, vlast, vs, scratch));   \
}                                                                                          \
static void ck_w4_input_mix_##SUF(const T* x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0,      \
                                  ptrdiff_t nt, ptrdiff_t pl, ptrdiff_t tw, int c2, int l2, \
                                  T* vm, T* ve, T* vml, T* vel, T* vend, T* vlend,         \
                                  ptrdiff_t vs, T* scratch) {                              \
    CK_W4_PICK(ck_w4_input_mix, SUF, (x, H, W, r0, nt, pl, tw, c2, l2, vm, ve, vml, vel,    \
                                      vend, vlend, vs, scratch));                          \
}                                                                                          \
static void ck_w4_output_block_##SUF(const T* m, ptrdiff_t ms, ptrdiff_t n, int a2, int b2, \
                                     T bias, T* S, T* Yp) {                                \
    CK_W4_PICK(ck_w4_output_block, SUF, (m, ms, n, a2, b2, bias, S, Yp));                  \
}                                                                                          \
static void ck_w4_output_tiles_##SUF(const T* m, ptrdiff_t ms, ptrdiff_t n, T bias, T* S,  \
                                     T* Yp) {                                              \
    CK_W4_PICK(ck_w4_output_tiles, SUF, (m, ms, n, bias, S, Yp));                          \
}                                                                                          \
static void ck_w4_grad_row_##SUF(const T* gy, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t r0,     \
                                 ptrdiff_t tw, T* z, ptrdiff_t zs, T* scratch) {            \
    CK_W4_PICK(ck_w4_grad_row, SUF, (gy, Ho, Wo, r0, tw, z, zs, scratch));                 \
}                                                                                          \
static void ck_w4_wgrad_out_##SUF(const T* m, ptrdiff_t ms, ptrdiff_t np, ptrdiff_t ps,    \
                                  ptrdiff_t n, T* gw) {                                    \
    CK_W4_PICK(ck_w4_wgrad_out, SUF, (m, ms, np, ps, n, gw));                              \
}                                                                                          \
static void ck_w4_filters_##SUF(const T* g, ptrdiff_t ls, ptrdiff_t nl, int flip, T* u,    \
                                ptrdiff_t us) {                                            \
    CK_W4_PICK(ck_w4_filters, SUF, (g, ls, nl, flip, u, us));                              \
}                                                                                          \
static void ck_w4_filters_pk_##SUF(const T* g, ptrdiff_t fs, ptrdiff_t cs, ptrdiff_t nf,   \
                                   ptrdiff_t nc, int flip, T* u, ptrdiff_t us) {           \
    CK_W4_PICK(ck_w4_filters_pk, SUF, (g, fs, cs, nf, nc, flip, u, us));                   \
}
CK_W4_DISPATCH(float, f)
CK_W4_DISPATCH(double, d)

/* ---------------------------------------------------------------- F(4x4)'s GEMMs, float32
 * ck_w4_gemm_pk: c (m x n, rows ldc apart) = A @ b (k x n, rows ldb apart) on csrc/fgemm.h's
 * tiles, A (m x k) packed by ck_w4_filters_pk: strips of CK_FG_MR = 6 rows, strip s at
 * apk + 6*s*k, its step p's 6 values side by side at + 6p.  fgemm.h reads A in place, one row
 * a row stride apart per broadcast stream (six streams a tile); packed, a tile's A is one
 * contiguous stream (256 x 64 x 256: 82-85 GFLOP/s against 70-71 in place, one thread,
 * bench/wino_gemm_pk.c).  The same loops as ck_fgemm, so each output is the same FMA chain
 * over k ascending from 0: the same bits as gemm_fixed on the plain layout.  Returns 0 (did
 * nothing) without AVX2 + FMA: the plan packs only where fgemm.h runs. */
static ptrdiff_t ck_w4_pk_rows(ptrdiff_t m) { return (m + 5) / 6 * 6; }

#if CK_FG_BUILT
static int ck_w4_gemm_pk(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* apk,
                         const float* b, ptrdiff_t ldb, float* c, ptrdiff_t ldc) {
    ptrdiff_t kblocks, kstep, jc, pc, ic, jr, ir;
    int pack;
    if (CK_FG_MR != 6 || !ck_fgemm_available())
        return 0;
    if (m <= 0 || n <= 0)
        return 1;
    if (k <= 0) {
        for (ic = 0; ic < m; ic++)
            memset(c + ic * ldc, 0, n * sizeof(float));
        return 1;
    }
    pack = ck_fg_buffers();     /* (no memory: B read in place, the same chains) */
    kblocks = (k + CK_FG_KC - 1) / CK_FG_KC;
    kstep = (k + kblocks - 1) / kblocks;
    for (jc = 0; jc < n; jc += CK_FG_NC) {
        ptrdiff_t nc = n - jc < CK_FG_NC ? n - jc : CK_FG_NC;
        for (pc = 0; pc < k; pc += kstep) {
            ptrdiff_t kc = k - pc < kstep ? k - pc : kstep;
            int load_c = pc > 0;
            for (ic = 0; ic < m; ic += CK_FG_MC) {
                ptrdiff_t mc = m - ic < CK_FG_MC ? m - ic : CK_FG_MC;
                for (jr = 0; jr < nc; jr += CK_FG_NR) {
                    ptrdiff_t nr = nc - jr < CK_FG_NR ? nc - jr : CK_FG_NR;
                    float* panel = pack ? ck_fg_pb + (jr / CK_FG_NR) * CK_FG_NR * kc : NULL;
                    const float* bp;
                    ptrdiff_t bs;
                    if (pack && ic == 0)
                        ck_fg_pack_b(b + pc * ldb + jc + jr, ldb, kc, nr, panel);
                    bp = pack ? panel : b + pc * ldb + jc + jr;
                    bs = pack ? CK_FG_NR : ldb;
                    for (ir = 0; ir < mc; ir += 6) {
                        ptrdiff_t mr = mc - ir < 6 ? mc - ir : 6;
                        const float* a = apk + (ic + ir) * k + 6 * pc;
                        float* cp = c + (ic + ir) * ldc + jc + jr;
                        if (nr <= CK_FG_EDGE_N)     /* the narrow last panel */
                            ck_fg_edge(mr, nr, kc, 1, a, 6, bp, bs, cp, ldc, load_c);
                        else
                            ck_fg_tile(mr, nr, kc, a, 1, 6, bp, bs, cp, ldc, load_c);
                    }
                }
            }
        }
    }
    return 1;
}
#else
static int ck_w4_gemm_pk(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* apk,
                         const float* b, ptrdiff_t ldb, float* c, ptrdiff_t ldc) {
    (void)m; (void)n; (void)k; (void)apk; (void)b; (void)ldb; (void)c; (void)ldc;
    return 0;
}
#endif

#endif  /* CONVKIT_WINO4_H */
