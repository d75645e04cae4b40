/* Deformable convolution's per-image kernels (torchvision's deform_conv2d rule, restated in
   convkit/reference/deform_conv.py), float and double from one macro body; driven by
   _deform_conv.pyx, which runs them in OpenMP tasks and does the GEMMs.

   Channels innermost: the kernels read x through a channels-last copy of each image with a
   one-pixel zero border (xn[(hp*Wp + wp)*C + c], Hp = H + 2, Wp = W + 2): every corner of a
   sample point inside the sampled range (-1 < y < H, -1 < x < W) lies in it, and a corner
   outside the image reads an exact 0 -- torchvision's "a corner outside the image is 0",
   with no branch per corner.  A sample's four corners and weights are found once and serve
   every channel of its offset group as contiguous (vectorisable) runs.
   The columns are transposed, one row per output position: cols[p*C*KK + col(c, k)] with
   col(c, k) = (c / Cg)*K + k*Cg + c % Cg (weight group c / Cg, tap k, channel in the group;
   K = Cg*KK), so each weight group's columns are a contiguous (P x K) block and the GEMMs
   take the weights permuted to (F, KK, Cg).
   A sample table holds, for each sample of one image (offset group g, tap k = i*KW + j,
   r = g*KK + k, output position p = ho*Wo + wo) at t = r*ldt + p - p0, six weights
   tw[6t..6t+5] =
   (hh*hw, hh*lw, lh*hw, lh*lw, lh, lw) and tb[t] = (hl + 1)*Wp + (wl + 1), the top-left
   corner (a pixel of the bordered plane).  A point outside the sampled range has zero
   weights and corner W + 1, whose four corners are all border zeros: it samples 0; a NaN
   point has NaN weights there: it samples NaN (and its gradient lands on the border only).
   tc[t] is the corner the offset gradient reads: tb[t], except on the edges y = -1 and
   x = -1, which sample 0 (tb: the border) but have torchvision's offset gradient from inside
   (tc: their real corner; lh, lw kept).  Every index a kernel forms comes from the table,
   made from one read of each offset: an offset changed by another thread meanwhile cannot
   move a read out of the plane.

   The table and sampling kernels are built twice on x86, plain and for AVX2+FMA (chosen at
   run time, ck_deform_isa; the builds may round differently); within a build every sum runs
   in an order fixed by the shapes. */
#ifndef CK_DEFORM_CONV_H
#define CK_DEFORM_CONV_H
#include <math.h>
#include <stddef.h>
#include <string.h>

#if defined(_MSC_VER)
#define CK_DEFORM_R __restrict
#else
#define CK_DEFORM_R restrict
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define CK_DEFORM_X86 1
#include <immintrin.h>
#include "rowgemm.h"
#include "cpufeat.h"
#endif

#define CK_DEFORM_BASE(T, SUF)                                                               \
/* Row hp of one image's channels-last bordered copy xn (Hp x Wp x C) of x (C x H x W). */   \
static void ck_deform_pad_##SUF(const T* x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,           \
        ptrdiff_t hp, T* xn)                                                                 \
{                                                                                            \
    const ptrdiff_t Wp = W + 2;                                                              \
    T* row = xn + hp * Wp * C;                                                               \
    ptrdiff_t c, w;                                                                          \
    if (hp == 0 || hp == H + 1) {                                                            \
        memset(row, 0, (size_t)(Wp * C) * sizeof(T));                                        \
        return;                                                                              \
    }                                                                                        \
    memset(row, 0, (size_t)C * sizeof(T));                                                   \
    memset(row + (W + 1) * C, 0, (size_t)C * sizeof(T));                                     \
    for (c = 0; c < C; c += 8) {     /* 8 channels at a time: runs of 8 written */           \
        const T* src = x + (c * H + hp - 1) * W;                                             \
        const ptrdiff_t n = C - c < 8 ? C - c : 8;                                           \
        ptrdiff_t j;                                                                         \
        for (w = 0; w < W; w++)                                                              \
            for (j = 0; j < n; j++) row[(w + 1) * C + c + j] = src[j * H * W + w];           \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Channels [c0, c1) of x (C x H x W) = the interior of the channels-last plane gn. */       \
static void ck_deform_crop_##SUF(const T* gn, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,         \
        ptrdiff_t c0, ptrdiff_t c1, T* x)                                                    \
{                                                                                            \
    ptrdiff_t c, h, w;                                                                       \
    for (c = c0; c < c1; c++)                                                                \
        for (h = 0; h < H; h++) {                                                            \
            const T* src = gn + ((h + 1) * (W + 2) + 1) * C + c;                             \
            T* dst = x + (c * H + h) * W;                                                    \
            for (w = 0; w < W; w++) dst[w] = src[w * C];                                     \
        }                                                                                    \
}

#define CK_DEFORM_KERNELS(T, SUF, ISA, ATTR)                                                 \
/* Table entries of positions [p0, p1) for every offset group and tap r of one image, at     \
   r*ldt + p - p0; off is the image's (2*OG*KK, P) offsets. */                               \
ATTR static void ck_deform_table_##SUF##_##ISA(const T* off, ptrdiff_t OG,                   \
        ptrdiff_t KH, ptrdiff_t KW,                                                          \
        ptrdiff_t Wo, ptrdiff_t P, ptrdiff_t H, ptrdiff_t W, ptrdiff_t sh, ptrdiff_t sw,     \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t p0, ptrdiff_t p1,  \
        T* tw, ptrdiff_t* tb, ptrdiff_t* tc, ptrdiff_t ldt)                                  \
{                                                                                            \
    ptrdiff_t g, i, j, p;                                                                    \
    for (g = 0; g < OG; g++)                                                                 \
    for (i = 0; i < KH; i++)                                                                 \
    for (j = 0; j < KW; j++) {                                                               \
        const ptrdiff_t r = (g * KH + i) * KW + j;                                           \
        const T* oy = off + 2 * r * P;                                                       \
        const T* ox = oy + P;                                                                \
        for (p = p0; p < p1; p++) {                                                          \
            const ptrdiff_t ho = p / Wo, wo = p - (p / Wo) * Wo, t = r * ldt + (p - p0);     \
            const T y = (T)(ho * sh - ph + i * dh) + oy[p];                                  \
            const T x = (T)(wo * sw - pw + j * dw) + ox[p];                                  \
            T* w = tw + 6 * t;                                                               \
            tb[t] = tc[t] = W + 1;  /* corners (0, W+1), (1, 0), (1, W+1), (2, 0): border */ \
            if (!(y >= -1 && y < (T)H && x >= -1 && x < (T)W)) {                             \
                const T z = (y != y || x != x) ? (T)NAN : (T)0;                              \
                w[0] = w[1] = w[2] = w[3] = w[4] = w[5] = z;                                 \
                continue;                                                                    \
            }                                                                                \
            {                                                                                \
                const T hf = (T)floor((double)y), wf = (T)floor((double)x);                  \
                const T lh = y - hf, lw = x - wf, hh = 1 - lh, hw = 1 - lw;                  \
                tc[t] = ((ptrdiff_t)hf + 1) * (W + 2) + ((ptrdiff_t)wf + 1);                 \
                w[4] = lh; w[5] = lw;                                                        \
                if (y == -1 || x == -1) {   /* the edge: samples 0, has an offset gradient */ \
                    w[0] = w[1] = w[2] = w[3] = 0;                                           \
                    continue;                                                                \
                }                                                                            \
                w[0] = hh * hw; w[1] = hh * lw; w[2] = lh * hw; w[3] = lh * lw;              \
                tb[t] = tc[t];                                                               \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Columns of positions [p0, p1) of one image, row p at cols + (p - p0)*C*KK (layout above): \
   mask * sample; mask is the image's (OG*KK, P) mask or NULL. */                            \
ATTR static void ck_deform_cols_##SUF##_##ISA(const T* xn, const T* mask, ptrdiff_t C,       \
        ptrdiff_t W, ptrdiff_t OG, ptrdiff_t Cg, ptrdiff_t KK, ptrdiff_t P, ptrdiff_t p0,    \
        ptrdiff_t p1, const T* tw, const ptrdiff_t* tb, ptrdiff_t ldt, T* cols)              \
{                                                                                            \
    const ptrdiff_t Cog = C / OG, K = Cg * KK, ldc = C * KK, Wp = W + 2;                     \
    ptrdiff_t r, p, c, c0, c1;                                                               \
    for (p = p0; p < p1; p++)                                                                \
        for (r = 0; r < OG * KK; r++) {                                                      \
            const ptrdiff_t g = r / KK, k = r - (r / KK) * KK, t = r * ldt + (p - p0);       \
            const T* u = tw + 6 * t;                                                         \
            const T w0 = u[0], w1 = u[1], w2 = u[2], w3 = u[3];                              \
            const T* a0 = xn + tb[t] * C;                                                    \
            const T* a1 = a0 + C;                                                            \
            const T* a2 = a0 + Wp * C;                                                       \
            const T* a3 = a2 + C;                                                            \
            for (c0 = g * Cog; c0 < (g + 1) * Cog; c0 = c1) {                                \
                const ptrdiff_t wg = c0 / Cg;                                                \
                T* CK_DEFORM_R d = cols + (p - p0) * ldc + wg * K + k * Cg - wg * Cg;        \
                c1 = (wg + 1) * Cg < (g + 1) * Cog ? (wg + 1) * Cg : (g + 1) * Cog;          \
                if (mask) {                                                                  \
                    const T m = mask[r * P + p];                                             \
                    for (c = c0; c < c1; c++)                                                \
                        d[c] = m * (w0 * a0[c] + w1 * a1[c] + w2 * a2[c] + w3 * a3[c]);      \
                } else {                                                                     \
                    for (c = c0; c < c1; c++)                                                \
                        d[c] = w0 * a0[c] + w1 * a1[c] + w2 * a2[c] + w3 * a3[c];            \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
}                                                                                            \
                                                                                             \
/* grad of channels [c0, c1) (within one offset group g and one weight group) of one image's \
   channels-last bordered plane gn (those channels zeroed by the caller): every sample of    \
   positions [p0, p1) of dL/d(sample) gs (the columns' layout, row p at gs + (p - p0)*C*KK)  \
   adds gs * weight at its four corners, positions and taps in order (calls over consecutive \
   position ranges in order give the bits of one call over them all, for any thread count).  \
   What lands on the border (corners outside the image, points outside the range or NaN) is  \
   cropped away. */                                                                          \
ATTR static void ck_deform_scatter_##SUF##_##ISA(const T* gs, ptrdiff_t C, ptrdiff_t W,      \
        ptrdiff_t OG, ptrdiff_t Cg, ptrdiff_t KK, ptrdiff_t P, ptrdiff_t c0, ptrdiff_t c1,   \
        ptrdiff_t p0, ptrdiff_t p1, const T* tw, const ptrdiff_t* tb, T* gn)                 \
{                                                                                            \
    const ptrdiff_t g = c0 / (C / OG), wg = c0 / Cg, K = Cg * KK, ldc = C * KK, Wp = W + 2;  \
    ptrdiff_t k, p, c;                                                                       \
    for (p = p0; p < p1; p++)                                                                \
        for (k = 0; k < KK; k++) {                                                           \
            const T* src = gs + wg * K + k * Cg - wg * Cg;                                   \
            const ptrdiff_t t = (g * KK + k) * P + p;                                        \
            const T* u = tw + 6 * t;                                                         \
            const T w0 = u[0], w1 = u[1], w2 = u[2], w3 = u[3];                              \
            const T* CK_DEFORM_R e = src + (p - p0) * ldc;                                   \
            T* CK_DEFORM_R a0 = gn + tb[t] * C;                                              \
            T* CK_DEFORM_R a1 = a0 + C;                                                      \
            T* CK_DEFORM_R a2 = a0 + Wp * C;                                                 \
            T* CK_DEFORM_R a3 = a2 + C;                                                      \
            for (c = c0; c < c1; c++) {                                                      \
                const T v = e[c];                                                            \
                a0[c] += v * w0;                                                             \
                a1[c] += v * w1;                                                             \
                a2[c] += v * w2;                                                             \
                a3[c] += v * w3;                                                             \
            }                                                                                \
        }                                                                                    \
}

#define CK_DEFORM_COORD(T, SUF, ISA, ATTR, V, VL, LD, ST, SET1, FMA, SUB, MUL)               \
/* Offset and mask gradients of positions [p0, p1) of one image.  gc holds dL/dcols in the   \
   columns' layout (row p at gc + (p - p0)*C*KK; table as ck_deform_cols); each entry is     \
   replaced by dL/d(sample) = gc * mask (the input of ck_deform_scatter).  goff (2*OG*KK, P) \
   and gmask (OG*KK, P, or NULL) are the image's.  With E_i = the sum over the group's       \
   channels of gc * v_i: grad_mask = w1*E1 + .. + w4*E4, and the offset gradients are mask   \
   times lw*(E4 - E2) + hw*(E3 - E1) and lh*(E4 - E3) + hh*(E2 - E1), from sums of the       \
   corners' differences (taken per channel, where they are exact).  The sums run in the VL   \
   lanes of V (the runs' tails in one more), then the lanes in order.  V, VL and the         \
   operations: one vector type of T (or T itself, VL 1). */                                  \
ATTR static void ck_deform_coord_##SUF##_##ISA(const T* xn, const T* mask, ptrdiff_t C,      \
        ptrdiff_t W, ptrdiff_t OG, ptrdiff_t Cg, ptrdiff_t KK, ptrdiff_t P, ptrdiff_t p0,    \
        ptrdiff_t p1, const T* tw, const ptrdiff_t* tc, ptrdiff_t ldt, T* gc, T* goff,       \
        T* gmask)                                                                            \
{                                                                                            \
    const ptrdiff_t Cog = C / OG, K = Cg * KK, ldc = C * KK, Wp = W + 2;                     \
    ptrdiff_t r, p, c0, c1, j, l;                                                            \
    for (p = p0; p < p1; p++)                                                                \
        for (r = 0; r < OG * KK; r++) {                                                      \
            const ptrdiff_t g = r / KK, k = r - (r / KK) * KK, t = r * ldt + (p - p0);       \
            const T* u = tw + 6 * t;                                                         \
            const T lh = u[4], lw = u[5], hh = 1 - lh, hw = 1 - lw;                          \
            const T m = mask ? mask[r * P + p] : (T)1;                                       \
            const V vm = SET1(m);                                                            \
            const T* a0 = xn + tc[t] * C;                                                    \
            V s1 = SET1((T)0), sa = s1, sb = s1, sc = s1;                                    \
            T t1 = 0, ta = 0, tb_ = 0, tc_ = 0, e1, e21, e31, e4, lane[4][VL];               \
            for (c0 = g * Cog; c0 < (g + 1) * Cog; c0 = c1) {                                \
                const ptrdiff_t wg = c0 / Cg;                                                \
                T* d = gc + (p - p0) * ldc + wg * K + k * Cg - wg * Cg + c0;                 \
                const T *b0 = a0 + c0, *b1 = b0 + C, *b2 = b0 + Wp * C, *b3 = b2 + C;        \
                ptrdiff_t n;                                                                 \
                c1 = (wg + 1) * Cg < (g + 1) * Cog ? (wg + 1) * Cg : (g + 1) * Cog;          \
                n = c1 - c0;                                                                 \
                for (j = 0; j + VL <= n; j += VL) {                                          \
                    const V e = LD(d + j), v1 = LD(b0 + j), v3 = LD(b2 + j);                 \
                    const V va = SUB(LD(b1 + j), v1);                                        \
                    s1 = FMA(e, v1, s1);                                                     \
                    sa = FMA(e, va, sa);                                                     \
                    sb = FMA(e, SUB(v3, v1), sb);                                            \
                    sc = FMA(e, SUB(SUB(LD(b3 + j), v3), va), sc);                           \
                    ST(d + j, MUL(e, vm));                                                   \
                }                                                                            \
                for (; j < n; j++) {                                                         \
                    const T e = d[j], v1 = b0[j], va = b1[j] - v1;                           \
                    t1 += e * v1;                                                            \
                    ta += e * va;                                                            \
                    tb_ += e * (b2[j] - v1);                                                 \
                    tc_ += e * ((b3[j] - b2[j]) - va);                                       \
                    d[j] = e * m;                                                            \
                }                                                                            \
            }                                                                                \
            ST(lane[0], s1); ST(lane[1], sa); ST(lane[2], sb); ST(lane[3], sc);              \
            e1 = e21 = e31 = e4 = 0;                                                         \
            for (l = 0; l < VL; l++) {                                                       \
                e1 += lane[0][l]; e21 += lane[1][l]; e31 += lane[2][l]; e4 += lane[3][l];    \
            }                                                                                \
            e1 += t1; e21 += ta; e31 += tb_; e4 += tc_;                                      \
            /* e21 = E2 - E1, e31 = E3 - E1, e4 = E4 - E3 - E2 + E1 */                       \
            goff[2 * r * P + p] = m * (lw * (e31 + e4) + hw * e31);                          \
            goff[(2 * r + 1) * P + p] = m * (lh * (e21 + e4) + hh * e21);                    \
            if (gmask)                                                                       \
                gmask[r * P + p] = u[0] * e1 + u[1] * (e1 + e21) + u[2] * (e1 + e31)         \
                                   + u[3] * (e1 + e21 + e31 + e4);                           \
        }                                                                                    \
}

CK_DEFORM_BASE(float, f)
CK_DEFORM_BASE(double, d)
CK_DEFORM_KERNELS(float, f, plain, )
CK_DEFORM_KERNELS(double, d, plain, )
/* the plain coord: one lane, V = T */
#define CK_DEFORM_LD(p) (*(p))
#define CK_DEFORM_ST(p, v) (*(p) = (v))
#define CK_DEFORM_SET1(v) (v)
#define CK_DEFORM_FMA(a, b, c) ((a) * (b) + (c))
#define CK_DEFORM_SUB(a, b) ((a) - (b))
#define CK_DEFORM_MUL(a, b) ((a) * (b))
CK_DEFORM_COORD(float, f, plain, , float, 1, CK_DEFORM_LD, CK_DEFORM_ST, CK_DEFORM_SET1,
                CK_DEFORM_FMA, CK_DEFORM_SUB, CK_DEFORM_MUL)
CK_DEFORM_COORD(double, d, plain, , double, 1, CK_DEFORM_LD, CK_DEFORM_ST, CK_DEFORM_SET1,
                CK_DEFORM_FMA, CK_DEFORM_SUB, CK_DEFORM_MUL)
#ifdef CK_DEFORM_X86
/* (its cols kernel gives way to ck_deform_cols_f_avx2v below) */
CK_DEFORM_KERNELS(float, f, avx2, __attribute__((target("avx2,fma"), unused)))
CK_DEFORM_KERNELS(double, d, avx2, __attribute__((target("avx2,fma"))))
/* (gives way to ck_deform_coord_f_avx2v below, which does the same float operations) */
CK_DEFORM_COORD(float, f, avx2, __attribute__((target("avx2,fma"), unused)), __m256, 8,
                _mm256_loadu_ps,
                _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_sub_ps, _mm256_mul_ps)
CK_DEFORM_COORD(double, d, avx2, __attribute__((target("avx2,fma"))), __m256d, 4,
                _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd, _mm256_fmadd_pd,
                _mm256_sub_pd, _mm256_mul_pd)

/* ck_deform_pad_f with 8x8 blocks (8 channels, 8 columns) transposed in registers
 * (csrc/rowgemm.h ck_rg_to_cl, which the rowgemm weight gradient's channels-last copy uses) */
__attribute__((target("avx2"))) static void ck_deform_pad_f_avx2(const float* x, ptrdiff_t C,
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t hp, float* xn)
{
    float* row = xn + hp * (W + 2) * C;
    if (hp == 0 || hp == H + 1 || C < 8 || W < 8) {
        ck_deform_pad_f(x, C, H, W, hp, xn);
        return;
    }
    memset(row, 0, (size_t)C * sizeof(float));
    memset(row + (W + 1) * C, 0, (size_t)C * sizeof(float));
    ck_rg_to_cl(x + (hp - 1) * W, H * W, C, W, row + C);
}
#endif

#ifdef CK_DEFORM_X86
/* ck_deform_cols_f for AVX2 + FMA written out: each sample (mask times
   fma(w3, v4, fma(w2, v3, fma(w1, v2, w0*v1))), eight channels a vector, the run's tail one at
   a time in the same order), offset groups outermost so that a run's weight group is stepped,
   not divided out, per sample. */
__attribute__((target("avx2,fma"))) static void ck_deform_cols_f_avx2v(const float* xn,
        const float* mask, ptrdiff_t C, ptrdiff_t W, ptrdiff_t OG, ptrdiff_t Cg, ptrdiff_t KK,
        ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1, const float* tw, const ptrdiff_t* tb,
        ptrdiff_t ldt, float* cols)
{
    const ptrdiff_t Cog = C / OG, K = Cg * KK, ldc = C * KK, Wp = W + 2;
    ptrdiff_t g, p, k, c, c0, c1, wg;
    for (g = 0; g < OG; g++) {
        const ptrdiff_t wg0 = (g * Cog) / Cg, ce = (g + 1) * Cog;
        for (p = p0; p < p1; p++) {
            float* row = cols + (p - p0) * ldc;
            for (k = 0; k < KK; k++) {
                const ptrdiff_t r = g * KK + k, t = r * ldt + (p - p0);
                const float* u = tw + 6 * t;
                const float m = mask ? mask[r * P + p] : 1.0f;
                const __m256 w0 = _mm256_set1_ps(u[0]), w1 = _mm256_set1_ps(u[1]);
                const __m256 w2 = _mm256_set1_ps(u[2]), w3 = _mm256_set1_ps(u[3]);
                const __m256 vm = _mm256_set1_ps(m);
                const float* a0 = xn + tb[t] * C;
                const float* a1 = a0 + C;
                const float* a2 = a0 + Wp * C;
                const float* a3 = a2 + C;
                for (c0 = g * Cog, wg = wg0; c0 < ce; c0 = c1, wg++) {
                    float* d = row + wg * K + k * Cg - wg * Cg;
                    c1 = (wg + 1) * Cg < ce ? (wg + 1) * Cg : ce;
                    for (c = c0; c + 8 <= c1; c += 8) {
                        __m256 v = _mm256_mul_ps(w0, _mm256_loadu_ps(a0 + c));
                        v = _mm256_fmadd_ps(w1, _mm256_loadu_ps(a1 + c), v);
                        v = _mm256_fmadd_ps(w2, _mm256_loadu_ps(a2 + c), v);
                        v = _mm256_fmadd_ps(w3, _mm256_loadu_ps(a3 + c), v);
                        _mm256_storeu_ps(d + c, _mm256_mul_ps(v, vm));
                    }
                    for (; c < c1; c++)
                        d[c] = m * fmaf(u[3], a3[c], fmaf(u[2], a2[c], fmaf(u[1], a1[c],
                                                                             u[0] * a0[c])));
                }
            }
        }
    }
}

/* ck_deform_coord_f_avx2 written out with the same float operations (so the same bits):
   the four sums' lanes are added in order by one 4-wide chain (the lanes transposed in
   registers; the generic build spills them and adds 32 scalars), and offset groups, taps and
   weight groups are stepped instead of divided out per sample. */
__attribute__((target("avx2,fma"))) static void ck_deform_coord_f_avx2v(const float* xn,
        const float* mask, ptrdiff_t C, ptrdiff_t W, ptrdiff_t OG, ptrdiff_t Cg, ptrdiff_t KK,
        ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1, const float* tw, const ptrdiff_t* tc,
        ptrdiff_t ldt, float* gc, float* goff, float* gmask)
{
    const ptrdiff_t Cog = C / OG, K = Cg * KK, ldc = C * KK, Wp = W + 2;
    ptrdiff_t g, k, p, c0, c1, wg, j;
    for (p = p0; p < p1; p++)
        for (g = 0; g < OG; g++) {
            const ptrdiff_t wg0 = (g * Cog) / Cg, ce = (g + 1) * Cog;
            for (k = 0; k < KK; k++) {
                const ptrdiff_t r = g * KK + k, t = r * ldt + (p - p0);
                const float* u = tw + 6 * t;
                const float lh = u[4], lw = u[5], hh = 1 - lh, hw = 1 - lw;
                const float m = mask ? mask[r * P + p] : 1.0f;
                const __m256 vm = _mm256_set1_ps(m);
                const float* a0 = xn + tc[t] * C;
                __m256 s1 = _mm256_setzero_ps(), sa = s1, sb = s1, sc = s1;
                __m256 q0, q1, q2, q3;
                __m128 e;
                float t1 = 0, ta = 0, tb_ = 0, tc_ = 0, e1, e21, e31, e4, ev[4];
                for (c0 = g * Cog, wg = wg0; c0 < ce; c0 = c1, wg++) {
                    float* d = gc + (p - p0) * ldc + wg * K + k * Cg - wg * Cg + c0;
                    const float *b0 = a0 + c0, *b1 = b0 + C, *b2 = b0 + Wp * C, *b3 = b2 + C;
                    ptrdiff_t n;
                    c1 = (wg + 1) * Cg < ce ? (wg + 1) * Cg : ce;
                    n = c1 - c0;
                    for (j = 0; j + 8 <= n; j += 8) {
                        const __m256 ej = _mm256_loadu_ps(d + j), v1 = _mm256_loadu_ps(b0 + j);
                        const __m256 v3 = _mm256_loadu_ps(b2 + j);
                        const __m256 va = _mm256_sub_ps(_mm256_loadu_ps(b1 + j), v1);
                        s1 = _mm256_fmadd_ps(ej, v1, s1);
                        sa = _mm256_fmadd_ps(ej, va, sa);
                        sb = _mm256_fmadd_ps(ej, _mm256_sub_ps(v3, v1), sb);
                        sc = _mm256_fmadd_ps(ej, _mm256_sub_ps(_mm256_sub_ps(
                                                     _mm256_loadu_ps(b3 + j), v3), va), sc);
                        _mm256_storeu_ps(d + j, _mm256_mul_ps(ej, vm));
                    }
                    for (; j < n; j++) {
                        const float ej = d[j], v1 = b0[j], va = b1[j] - v1;
                        t1 += ej * v1;
                        ta += ej * va;
                        tb_ += ej * (b2[j] - v1);
                        tc_ += ej * ((b3[j] - b2[j]) - va);
                        d[j] = ej * m;
                    }
                }
                /* lane l of (s1, sa, sb, sc) as one 4-vector: q_l's low half (l < 4), high
                   half (l >= 4) */
                q0 = _mm256_unpacklo_ps(s1, sa);
                q1 = _mm256_unpackhi_ps(s1, sa);
                q2 = _mm256_unpacklo_ps(sb, sc);
                q3 = _mm256_unpackhi_ps(sb, sc);
                s1 = _mm256_shuffle_ps(q0, q2, 0x44);
                sa = _mm256_shuffle_ps(q0, q2, 0xEE);
                sb = _mm256_shuffle_ps(q1, q3, 0x44);
                sc = _mm256_shuffle_ps(q1, q3, 0xEE);
                e = _mm_add_ps(_mm_setzero_ps(), _mm256_castps256_ps128(s1));
                e = _mm_add_ps(e, _mm256_castps256_ps128(sa));
                e = _mm_add_ps(e, _mm256_castps256_ps128(sb));
                e = _mm_add_ps(e, _mm256_castps256_ps128(sc));
                e = _mm_add_ps(e, _mm256_extractf128_ps(s1, 1));
                e = _mm_add_ps(e, _mm256_extractf128_ps(sa, 1));
                e = _mm_add_ps(e, _mm256_extractf128_ps(sb, 1));
                e = _mm_add_ps(e, _mm256_extractf128_ps(sc, 1));
                _mm_storeu_ps(ev, _mm_add_ps(e, _mm_setr_ps(t1, ta, tb_, tc_)));
                e1 = ev[0]; e21 = ev[1]; e31 = ev[2]; e4 = ev[3];
                /* e21 = E2 - E1, e31 = E3 - E1, e4 = E4 - E3 - E2 + E1 */
                goff[2 * r * P + p] = m * (lw * (e31 + e4) + hw * e31);
                goff[(2 * r + 1) * P + p] = m * (lh * (e21 + e4) + hh * e21);
                if (gmask)
                    gmask[r * P + p] = u[0] * e1 + u[1] * (e1 + e21) + u[2] * (e1 + e31)
                                       + u[3] * (e1 + e21 + e31 + e4);
            }
        }
}

/* ck_deform_scatter_f_avx2 written out (the same operations, so the same bits: each add
   fma(gs, weight, corner), the tails as the generic build): the generic build's vector loop
   reloaded its pointers and weights around each run; here a position's taps step through
   its row of gs.  bench/deform_bwd_split.c: scatter 0.69 -> 0.59 ms. */
__attribute__((target("avx2,fma"))) static void ck_deform_scatter_f_avx2v(const float* gs,
        ptrdiff_t C, ptrdiff_t W, ptrdiff_t OG, ptrdiff_t Cg, ptrdiff_t KK, ptrdiff_t P,
        ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t p0, ptrdiff_t p1, const float* tw,
        const ptrdiff_t* tb, float* gn)
{
    const ptrdiff_t g = c0 / (C / OG), wg = c0 / Cg, K = Cg * KK, ldc = C * KK, Wp = W + 2;
    ptrdiff_t k, p, c;
    for (p = p0; p < p1; p++) {
        const float* e = gs + wg * K - wg * Cg + (p - p0) * ldc;
        for (k = 0; k < KK; k++, e += Cg) {
            const ptrdiff_t t = (g * KK + k) * P + p;
            const float* u = tw + 6 * t;
            const __m256 w0 = _mm256_set1_ps(u[0]), w1 = _mm256_set1_ps(u[1]);
            const __m256 w2 = _mm256_set1_ps(u[2]), w3 = _mm256_set1_ps(u[3]);
            float* a0 = gn + tb[t] * C;
            float* a1 = a0 + C;
            float* a2 = a0 + Wp * C;
            float* a3 = a2 + C;
            for (c = c0; c + 8 <= c1; c += 8) {
                const __m256 v = _mm256_loadu_ps(e + c);
                _mm256_storeu_ps(a0 + c, _mm256_fmadd_ps(v, w0, _mm256_loadu_ps(a0 + c)));
                _mm256_storeu_ps(a1 + c, _mm256_fmadd_ps(v, w1, _mm256_loadu_ps(a1 + c)));
                _mm256_storeu_ps(a2 + c, _mm256_fmadd_ps(v, w2, _mm256_loadu_ps(a2 + c)));
                _mm256_storeu_ps(a3 + c, _mm256_fmadd_ps(v, w3, _mm256_loadu_ps(a3 + c)));
            }
            for (; c < c1; c++) {
                const float v = e[c];
                a0[c] += v * u[0];
                a1[c] += v * u[1];
                a2[c] += v * u[2];
                a3[c] += v * u[3];
            }
        }
    }
}

/* ck_deform_table_f for AVX2 written out: eight positions a vector (the same float
   operations per entry, so the same bits), the positions past the last eight on the scalar
   build; planes of 2^31 or more bordered pixels (int32 corners) on the scalar build. */
__attribute__((target("avx2,fma"))) static void ck_deform_table_f_avx2v(const float* off,
        ptrdiff_t OG, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t Wo, ptrdiff_t P, ptrdiff_t H,
        ptrdiff_t W, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh,
        ptrdiff_t dw, ptrdiff_t p0, ptrdiff_t p1, float* tw, ptrdiff_t* tb, ptrdiff_t* tc,
        ptrdiff_t ldt)
{
    const ptrdiff_t pv = (H + 2) * (W + 2) < ((ptrdiff_t)1 << 31) ? p0 + (p1 - p0) / 8 * 8 : p0;
    const __m256 m1 = _mm256_set1_ps(-1.0f), fh = _mm256_set1_ps((float)H);
    const __m256 fw = _mm256_set1_ps((float)W), one = _mm256_set1_ps(1.0f);
    const __m256 qnan = _mm256_set1_ps(NAN);
    const __m256i wp2 = _mm256_set1_epi32((int)(W + 2)), i1 = _mm256_set1_epi32(1);
    const __m256i out = _mm256_set1_epi32((int)(W + 1));
    ptrdiff_t g, i, j, p, l;
    for (g = 0; g < OG; g++)
    for (i = 0; i < KH; i++)
    for (j = 0; j < KW; j++) {
        const ptrdiff_t r = (g * KH + i) * KW + j;
        const float* oy = off + 2 * r * P;
        const float* ox = oy + P;
        ptrdiff_t ho = p0 / Wo, wo = p0 - (p0 / Wo) * Wo;
        for (p = p0; p < pv; p += 8) {
            const ptrdiff_t t = r * ldt + (p - p0);
            int hs[8], ws[8];
            float u[6][8];
            __m256 y, x, in, full, z, hf, wf, lh, lw, hh, hw;
            __m256i c, cb;
            for (l = 0; l < 8; l++) {
                hs[l] = (int)(ho * sh - ph + i * dh);
                ws[l] = (int)(wo * sw - pw + j * dw);
                if (++wo == Wo) {
                    wo = 0;
                    ho++;
                }
            }
            y = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)hs)),
                              _mm256_loadu_ps(oy + p));
            x = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)ws)),
                              _mm256_loadu_ps(ox + p));
            in = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(y, m1, _CMP_GE_OQ),
                                             _mm256_cmp_ps(y, fh, _CMP_LT_OQ)),
                               _mm256_and_ps(_mm256_cmp_ps(x, m1, _CMP_GE_OQ),
                                             _mm256_cmp_ps(x, fw, _CMP_LT_OQ)));
            full = _mm256_andnot_ps(_mm256_or_ps(_mm256_cmp_ps(y, m1, _CMP_EQ_OQ),
                                                 _mm256_cmp_ps(x, m1, _CMP_EQ_OQ)), in);
            z = _mm256_and_ps(_mm256_cmp_ps(y, x, _CMP_UNORD_Q), qnan);
            hf = _mm256_floor_ps(y);
            wf = _mm256_floor_ps(x);
            lh = _mm256_sub_ps(y, hf);
            lw = _mm256_sub_ps(x, wf);
            hh = _mm256_sub_ps(one, lh);
            hw = _mm256_sub_ps(one, lw);
            _mm256_storeu_ps(u[0], _mm256_blendv_ps(z, _mm256_mul_ps(hh, hw), full));
            _mm256_storeu_ps(u[1], _mm256_blendv_ps(z, _mm256_mul_ps(hh, lw), full));
            _mm256_storeu_ps(u[2], _mm256_blendv_ps(z, _mm256_mul_ps(lh, hw), full));
            _mm256_storeu_ps(u[3], _mm256_blendv_ps(z, _mm256_mul_ps(lh, lw), full));
            _mm256_storeu_ps(u[4], _mm256_blendv_ps(z, lh, in));
            _mm256_storeu_ps(u[5], _mm256_blendv_ps(z, lw, in));
            for (l = 0; l < 8; l++) {
                float* w = tw + 6 * (t + l);
                w[0] = u[0][l]; w[1] = u[1][l]; w[2] = u[2][l];
                w[3] = u[3][l]; w[4] = u[4][l]; w[5] = u[5][l];
            }
            /* corners of the points inside (others: garbage, replaced by W + 1) */
            c = _mm256_add_epi32(
                _mm256_mullo_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(hf), i1), wp2),
                _mm256_add_epi32(_mm256_cvttps_epi32(wf), i1));
            cb = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(out),
                                                      _mm256_castsi256_ps(c), full));
            c = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(out),
                                                     _mm256_castsi256_ps(c), in));
            _mm256_storeu_si256((__m256i*)(tb + t),
                                _mm256_cvtepi32_epi64(_mm256_castsi256_si128(cb)));
            _mm256_storeu_si256((__m256i*)(tb + t + 4),
                                _mm256_cvtepi32_epi64(_mm256_extracti128_si256(cb, 1)));
            _mm256_storeu_si256((__m256i*)(tc + t),
                                _mm256_cvtepi32_epi64(_mm256_castsi256_si128(c)));
            _mm256_storeu_si256((__m256i*)(tc + t + 4),
                                _mm256_cvtepi32_epi64(_mm256_extracti128_si256(c, 1)));
        }
    }
    if (pv < p1)
        ck_deform_table_f_avx2(off, OG, KH, KW, Wo, P, H, W, sh, sw, ph, pw, dh, dw, pv, p1,
                               tw + 6 * (pv - p0), tb + (pv - p0), tc + (pv - p0), ldt);
}

/* The forward's GEMM on AVX2 + FMA, reading the columns in place (no packing of them):
     out[i*ldo + j] = bias[i] + (sum over k < K, in order, of a_ik * b[j*ldb + k])
   for i < M (filters), j < N (positions): b is the columns, one row per position (the layout
   above); the weights a come packed in panels of 16 filters, k-major
   (ap[(i/16)*16*K + 16*k + i%16], the last panel zero-padded; deform_conv.py's _panels16).
   Every output is one FMA chain over k from 0 in its own vector lane, then the bias: the same
   function of its two rows whatever tile computes it, so the bits follow neither the block
   sizes nor the thread count.  Tiles are 6 positions x 16 filters (twelve accumulators: a
   column value, broadcast, serves 16 filters and a weight vector 6 positions -- the columns
   are read from L2 once per panel, not once per 4 filters); a block's last tile repeats its
   last row, and the tile goes to out through a small transpose. */
#define CK_OP_TARGET __attribute__((target("avx2,fma")))
#define CK_OP_ROW(q, A, B)                                                                   \
    do {                                                                                     \
        const __m256 x_ = _mm256_broadcast_ss(b##q + k);                                     \
        A = _mm256_fmadd_ps(x_, w0, A);                                                      \
        B = _mm256_fmadd_ps(x_, w1, B);                                                      \
    } while (0)

/* The 6 x 16 tile both passes share: o[16*q + i] (+)= sum over p < np, in order, of
   ap[16*p + i] * b[q*rs + p*ps] for q < n <= 6 (rows n and past repeat row n - 1, not stored),
   i < 16.  acc: go on from the sums in o (else from 0).  Each sum is one FMA chain over p from
   0, as on csrc/rowgemm.h (the same bits).  Inlined into each caller, so rs / ps (1 for the
   forward's rows, ldb for grad_weight's columns) fold into its addressing. */
CK_OP_TARGET static inline __attribute__((always_inline)) void ck_tile_6x16(ptrdiff_t np,
        const float* ap, const float* b, ptrdiff_t rs, ptrdiff_t ps, ptrdiff_t n, int acc,
        float* o)
{
    const float* b0 = b;
    const float* b1 = b + (n > 1 ? 1 : n - 1) * rs;
    const float* b2 = b + (n > 2 ? 2 : n - 1) * rs;
    const float* b3 = b + (n > 3 ? 3 : n - 1) * rs;
    const float* b4 = b + (n > 4 ? 4 : n - 1) * rs;
    const float* b5 = b + (n > 5 ? 5 : n - 1) * rs;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    ptrdiff_t p, k;
    if (acc) {
        c00 = _mm256_loadu_ps(o);      c01 = _mm256_loadu_ps(o + 8);
        if (n > 1) { c10 = _mm256_loadu_ps(o + 16); c11 = _mm256_loadu_ps(o + 24); }
        if (n > 2) { c20 = _mm256_loadu_ps(o + 32); c21 = _mm256_loadu_ps(o + 40); }
        if (n > 3) { c30 = _mm256_loadu_ps(o + 48); c31 = _mm256_loadu_ps(o + 56); }
        if (n > 4) { c40 = _mm256_loadu_ps(o + 64); c41 = _mm256_loadu_ps(o + 72); }
        if (n > 5) { c50 = _mm256_loadu_ps(o + 80); c51 = _mm256_loadu_ps(o + 88); }
    }
    for (p = 0, k = 0; p < np; p++, k += ps) {    /* k: step p's offset; CK_OP_ROW reads b##q + k */
        const __m256 w0 = _mm256_loadu_ps(ap + 16 * p), w1 = _mm256_loadu_ps(ap + 16 * p + 8);
        CK_OP_ROW(0, c00, c01);
        CK_OP_ROW(1, c10, c11);
        CK_OP_ROW(2, c20, c21);
        CK_OP_ROW(3, c30, c31);
        CK_OP_ROW(4, c40, c41);
        CK_OP_ROW(5, c50, c51);
    }
    _mm256_storeu_ps(o, c00);      _mm256_storeu_ps(o + 8, c01);
    if (n > 1) { _mm256_storeu_ps(o + 16, c10); _mm256_storeu_ps(o + 24, c11); }
    if (n > 2) { _mm256_storeu_ps(o + 32, c20); _mm256_storeu_ps(o + 40, c21); }
    if (n > 3) { _mm256_storeu_ps(o + 48, c30); _mm256_storeu_ps(o + 56, c31); }
    if (n > 4) { _mm256_storeu_ps(o + 64, c40); _mm256_storeu_ps(o + 72, c41); }
    if (n > 5) { _mm256_storeu_ps(o + 80, c50); _mm256_storeu_ps(o + 88, c51); }
}

/* s[q*16 + i] = the sum of output (filter i of the panel ap, position row q of b), q < n */
CK_OP_TARGET static void ck_op_6x16(ptrdiff_t K, const float* ap, const float* b,
        ptrdiff_t ldb, ptrdiff_t n, float* s)
{
    ck_tile_6x16(K, ap, b, ldb, 1, n, 0, s);
}

CK_OP_TARGET static void ck_op_avx2(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* ap,
        const float* b, ptrdiff_t ldb, const float* bias, float* out, ptrdiff_t ldo)
{
    float s[96];
    ptrdiff_t i0, j0, i, q, m, n;
    for (j0 = 0; j0 < N; j0 += 6) {       /* 6 rows of b (in L1) meet every panel */
        n = N - j0 < 6 ? N - j0 : 6;
        for (i0 = 0; i0 < M; i0 += 16) {
            m = M - i0 < 16 ? M - i0 : 16;
            ck_op_6x16(K, ap + i0 * K, b + j0 * ldb, ldb, n, s);
            for (i = 0; i < m; i++) {
                const float bi = bias ? bias[i0 + i] : 0.0f;
                float* o = out + (i0 + i) * ldo + j0;
                for (q = 0; q < n; q++) o[q] = s[q * 16 + i] + bi;
            }
        }
    }
}

/* The backward's columns' gradient on the same tiles, stored transposed (ck_op_avx2's a and b
   swapped in meaning): out[j*ldo + i] = (sum over k < K, in order, of a_ik * b[j*ldb + k]) for
   i < M (columns of the weight group, a in panels of 16 of them), j < N (positions; b: grad_y
   transposed, one row of K filters per position) -- a tile's 16 sums of one position are one
   run of out's row.  Each sum is one FMA chain over k from 0, as on csrc/rowgemm.h (the same
   bits).  Panels outermost: a panel (16*K values) stays in L1 while every row of b meets it. */
CK_OP_TARGET static void ck_opt_avx2(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* ap,
        const float* b, ptrdiff_t ldb, float* out, ptrdiff_t ldo)
{
    float s[96];
    ptrdiff_t i0, j0, i, q, m, n;
    for (i0 = 0; i0 < M; i0 += 16) {
        m = M - i0 < 16 ? M - i0 : 16;
        for (j0 = 0; j0 < N; j0 += 6) {
            n = N - j0 < 6 ? N - j0 : 6;
            ck_op_6x16(K, ap + i0 * K, b + j0 * ldb, ldb, n, s);
            for (q = 0; q < n; q++) {
                float* o = out + (j0 + q) * ldo + i0;
                if (m == 16) {
                    _mm256_storeu_ps(o, _mm256_loadu_ps(s + 16 * q));
                    _mm256_storeu_ps(o + 8, _mm256_loadu_ps(s + 16 * q + 8));
                } else {
                    for (i = 0; i < m; i++) o[i] = s[16 * q + i];
                }
            }
        }
    }
}

/* grad_weight's share of np positions on the same tiles, the columns read in place:
     o[16*q + i] (+)= sum over p < np, in order, of gp[16*p + i] * b[p*ldb + q]
   for q < n <= 6 (six consecutive columns of the columns' rows, broadcast; columns n and past
   repeat column n - 1, not stored), i < 16 (gp: 16 filters of grad_y, a run of 16 per
   position).  acc: go on from the sums in o (else from 0).  Each sum is one FMA chain over
   the positions in order, as on csrc/rowgemm.h (the same bits); o holds a tile's sums as
   runs of 16 filters (the caller's panel-major grad_weight), so it loads and stores whole
   vectors, and no strip of the columns is copied. */
CK_OP_TARGET static void ck_wg_6x16(ptrdiff_t np, const float* gp, const float* b,
        ptrdiff_t ldb, ptrdiff_t n, int acc, float* o)
{
    ck_tile_6x16(np, gp, b, 1, ldb, n, acc, o);
}

CK_OP_TARGET static void ck_wg_avx2(ptrdiff_t n16, ptrdiff_t K, ptrdiff_t np, const float* gp,
        ptrdiff_t ldp, const float* b, ptrdiff_t ldb, int acc, float* o)
{
    ptrdiff_t k0, q;
    for (k0 = 0; k0 < K; k0 += 6)      /* six columns' rows (in L1) meet every panel */
        for (q = 0; q < n16; q++)
            ck_wg_6x16(np, gp + q * ldp, b + k0, ldb, K - k0 < 6 ? K - k0 : 6, acc,
                       o + (q * K + k0) * 16);
}
#endif

static int ck_deform_isa(void);

/* dst[l*R + r] = src[r*ld + l] for r < R, l < L: 8 x 8 blocks transposed in registers
   (csrc/rowgemm.h's ck_rg_to_cl) where the AVX2 kernels run, else one value at a time. */
static void ck_deform_transpose_f(const float* src, ptrdiff_t ld, ptrdiff_t R, ptrdiff_t L,
        float* dst)
{
    ptrdiff_t r, l;
#ifdef CK_DEFORM_X86
    if (ck_deform_isa()) {
        ck_rg_to_cl(src, ld, R, L, dst);
        return;
    }
#endif
    for (r = 0; r < R; r++)
        for (l = 0; l < L; l++) dst[l * R + r] = src[r * ld + l];
}

/* Panel q of grad_y's weight group g (gy: one image's F x P) for ck_deform_wgrad_f:
   gp[16*p + i] = gy[(g*Fg + 16*q + i)*P + p], 0 for filters past the group's last. */
static void ck_deform_gpanel16_f(const float* gy, ptrdiff_t Fg, ptrdiff_t P, ptrdiff_t g,
        ptrdiff_t q, float* gp)
{
    const ptrdiff_t m = Fg - 16 * q < 16 ? Fg - 16 * q : 16;
    const float* src = gy + (g * Fg + 16 * q) * P;
    ptrdiff_t i, p;
    if (m == 16) {
        ck_deform_transpose_f(src, P, 16, P, gp);
        return;
    }
    memset(gp, 0, (size_t)(16 * P) * sizeof(float));
    for (p = 0; p < P; p++)
        for (i = 0; i < m; i++) gp[16 * p + i] = src[i * P + p];
}

/* Panel q of weight group g of the weights w (F x Cg x KK, filters per group Fg) for
   ck_deform_opgemm_f: ap[16*(k*Cg + c) + i] = w[((g*Fg + 16*q + i)*Cg + c)*KK + k] (column
   order (tap, channel), like the columns'), 0 for filters past the group's last. */
static void ck_deform_panel16_f(const float* w, ptrdiff_t Fg, ptrdiff_t Cg, ptrdiff_t KK,
        ptrdiff_t g, ptrdiff_t q, float* ap)
{
    const ptrdiff_t m = Fg - 16 * q < 16 ? Fg - 16 * q : 16;
    const float* src = w + (g * Fg + 16 * q) * Cg * KK;
    ptrdiff_t i, c, c0, k;
    if (m < 16) memset(ap, 0, (size_t)(16 * Cg * KK) * sizeof(float));
    for (c0 = 0; c0 < Cg; c0 += 8)   /* 8 channels at a time: what they read and write in L1 */
        for (k = 0; k < KK; k++)
            for (c = c0; c < Cg && c < c0 + 8; c++)
                for (i = 0; i < m; i++) ap[16 * (k * Cg + c) + i] = src[(i * Cg + c) * KK + k];
}

static int ck_deform_cap = 1;   /* 0: the plain kernels even on AVX2 (tests run both) */

/* 1 where the AVX2+FMA kernels run */
static int ck_deform_isa(void)
{
#ifdef CK_DEFORM_X86
    return ck_cpu_has_avx2_fma() && ck_deform_cap;
#else
    return 0;
#endif
}

/* out (M x N, row stride ldo) = a @ b^T + bias by ck_op_avx2 (ap: a in panels of 16) where
   the AVX2+FMA kernels run; 0 (nothing done) elsewhere: the caller takes BLAS. */
static int ck_deform_opgemm_f(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* ap,
        const float* b, ptrdiff_t ldb, const float* bias, float* out, ptrdiff_t ldo)
{
#ifdef CK_DEFORM_X86
    if (ck_deform_isa()) {
        ck_op_avx2(M, N, K, ap, b, ldb, bias, out, ldo);
        return 1;
    }
#endif
    (void)M; (void)N; (void)K; (void)ap; (void)b; (void)ldb; (void)bias; (void)out;
    (void)ldo;
    return 0;
}

/* out (N x M, row stride ldo) = b @ a^T by ck_opt_avx2 (ap: a in panels of 16) where the
   AVX2+FMA kernels run; 0 (nothing done) elsewhere. */
static int ck_deform_opgemm_t_f(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* ap,
        const float* b, ptrdiff_t ldb, float* out, ptrdiff_t ldo)
{
#ifdef CK_DEFORM_X86
    if (ck_deform_isa()) {
        ck_opt_avx2(M, N, K, ap, b, ldb, out, ldo);
        return 1;
    }
#endif
    (void)M; (void)N; (void)K; (void)ap; (void)b; (void)ldb; (void)out; (void)ldo;
    return 0;
}

/* One weight group's grad_weight share of np positions by ck_wg_avx2 where the AVX2+FMA
   kernels run: for each panel q < n16 of 16 filters and column k < K,
     o[(q*K + k)*16 + i] (+)= sum over p < np, in order, of gp[q*ldp + 16*p + i] * b[p*ldb + k]
   (gp: grad_y's panels from ck_deform_gpanel16_f, at the first position; b: the columns in
   place; acc: go on from o's sums, else from 0); 0 (nothing done) elsewhere. */
static int ck_deform_wgrad_f(ptrdiff_t n16, ptrdiff_t K, ptrdiff_t np, const float* gp,
        ptrdiff_t ldp, const float* b, ptrdiff_t ldb, int acc, float* o)
{
#ifdef CK_DEFORM_X86
    if (ck_deform_isa()) {
        ck_wg_avx2(n16, K, np, gp, ldp, b, ldb, acc, o);
        return 1;
    }
#endif
    (void)n16; (void)K; (void)np; (void)gp; (void)ldp; (void)b; (void)ldb; (void)acc; (void)o;
    return 0;
}

#ifdef CK_DEFORM_X86
#define CK_DEFORM_PICK(NAME, SUF) (ck_deform_isa() ? NAME##_##SUF##_avx2 : NAME##_##SUF##_plain)
#else
#define CK_DEFORM_PICK(NAME, SUF) (NAME##_##SUF##_plain)
#endif
#ifdef CK_DEFORM_X86
#define ck_deform_pad_f_pick (ck_deform_isa() ? ck_deform_pad_f_avx2 : ck_deform_pad_f)
#else
#define ck_deform_pad_f_pick ck_deform_pad_f
#endif
#ifdef CK_DEFORM_X86
#define ck_deform_table_f (ck_deform_isa() ? ck_deform_table_f_avx2v : ck_deform_table_f_plain)
#else
#define ck_deform_table_f CK_DEFORM_PICK(ck_deform_table, f)
#endif
#define ck_deform_table_d CK_DEFORM_PICK(ck_deform_table, d)
#ifdef CK_DEFORM_X86
#define ck_deform_cols_f (ck_deform_isa() ? ck_deform_cols_f_avx2v : ck_deform_cols_f_plain)
#else
#define ck_deform_cols_f CK_DEFORM_PICK(ck_deform_cols, f)
#endif
#define ck_deform_cols_d CK_DEFORM_PICK(ck_deform_cols, d)
#ifdef CK_DEFORM_X86
#define ck_deform_coord_f (ck_deform_isa() ? ck_deform_coord_f_avx2v : ck_deform_coord_f_plain)
#else
#define ck_deform_coord_f CK_DEFORM_PICK(ck_deform_coord, f)
#endif
#define ck_deform_coord_d CK_DEFORM_PICK(ck_deform_coord, d)
#ifdef CK_DEFORM_X86
#define ck_deform_scatter_f (ck_deform_isa() ? ck_deform_scatter_f_avx2v \
                                             : ck_deform_scatter_f_plain)
#else
#define ck_deform_scatter_f CK_DEFORM_PICK(ck_deform_scatter, f)
#endif
#define ck_deform_scatter_d CK_DEFORM_PICK(ck_deform_scatter, d)

#endif
