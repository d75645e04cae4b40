/* The weight gradient of a small-channel stride-1 conv (LeNet5's first layer: 1 -> 6, 5x5 on
 * 8x8 maps) as direct dot products on AVX2 + FMA (conv_plan "weight_direct").  With the input
 * zero-padded (xp: N x C x Hp x Wp, Hp = Ho + KH - 1, Wp = 8 * ceil(Wo / 8) + KW - 1),
 *     gw[f, c, kh, kw] = sum over (n, ho, wo) of gy[n, f, ho, wo] * xp[n, c, ho + kh, wo + kw]
 * is, per output row chunk of 8 columns, one vector of gy times KW shifted loads of one xp row:
 * a task (f, c, kh) keeps its KW sums in KW registers (KW <= 8; two kernel rows kh, kh + 1 for
 * KW <= 6, sharing each vector of gy), lane l adding the positions
 * wo = 8j + l in the order (n, ho, j), then sums each register's 8 lanes in a fixed tree.  The
 * batch path's GEMM (gy @ columns^T) spent more on transposing and packing the 25 x N*Ho*Wo
 * columns than on its multiplies.  A task's sums do not depend on the split: the bits do not
 * follow the thread count.  The lanes past Wo (last chunk) take gy = 0 times whatever xp holds
 * there, so operands must be finite (the caller checks, as for the batch path). */
#ifndef CK_WDIRECT_H
#define CK_WDIRECT_H

#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include "cpufeat.h"
#define CK_WDIRECT_BUILT 1

static int ck_wdirect_available(void)
{
    return ck_cpu_has_avx2_fma();
}

/* xp (C x Hp x Wp) of one image x (C x H x W): x[c, r - pt, q - pl], 0 outside */
static void ck_wdirect_pad(const float *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t pt,
                           ptrdiff_t pl, ptrdiff_t Hp, ptrdiff_t Wp, float *xp)
{
    memset(xp, 0, (size_t)(C * Hp * Wp) * sizeof(float));
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t h = 0; h < H; ++h) {
            const ptrdiff_t r = h + pt;
            if (r < 0 || r >= Hp)
                continue;
            ptrdiff_t w0 = pl < 0 ? -pl : 0, w1 = W;
            if (w1 + pl > Wp)
                w1 = Wp - pl;
            if (w1 > w0)
                memcpy(xp + (c * Hp + r) * Wp + w0 + pl, x + (c * H + h) * W + w0,
                       (size_t)(w1 - w0) * sizeof(float));
        }
}

__attribute__((target("avx2,fma"))) static inline float ck_wdirect_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

#define CK_WDIRECT_BODY(KR, KW)                                                             \
    {                                                                                       \
        __m256 acc[KR][KW];                                                                 \
        for (int i = 0; i < KR; ++i)                                                        \
            for (int k = 0; k < KW; ++k)                                                    \
                acc[i][k] = _mm256_setzero_ps();                                            \
        for (ptrdiff_t n = 0; n < N; ++n) {                                                 \
            const float *g = gy + (n * F + f) * Ho * Wo;                                    \
            const float *b = xp + ((n * C + c) * Hp + kh) * Wp;                             \
            for (ptrdiff_t ho = 0; ho < Ho; ++ho, g += Wo, b += Wp) {                       \
                for (ptrdiff_t j = 0; j < Wo; j += 8) {                                     \
                    const __m256 v = j + 8 <= Wo ? _mm256_loadu_ps(g + j)                   \
                                                 : _mm256_maskload_ps(g + j, tail);         \
                    for (int i = 0; i < KR; ++i)                                            \
                        for (int k = 0; k < KW; ++k)                                        \
                            acc[i][k] = _mm256_fmadd_ps(                                    \
                                v, _mm256_loadu_ps(b + i * Wp + j + k), acc[i][k]);         \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int i = 0; i < KR; ++i)                                                        \
            for (int k = 0; k < KW; ++k)                                                    \
                out[i * KW + k] = ck_wdirect_hsum(acc[i][k]);                               \
    }

/* The kernel rows a task takes: two where their sums fit the registers (KW <= 6), else one */
static inline ptrdiff_t ck_wdirect_rows(ptrdiff_t KW)
{
    return KW <= 6 ? 2 : 1;
}

/* out[i * KW + kw] = gw[f, c, kh + i, kw] for i < min(ck_wdirect_rows(KW), KH - kh) and
 * kw < KW (1 <= KW <= 8): the kernel rows share each vector of gy */
__attribute__((target("avx2,fma"))) static void ck_wdirect_task(
    const float *xp, const float *gy, ptrdiff_t N, ptrdiff_t C, ptrdiff_t F, ptrdiff_t Hp,
    ptrdiff_t Wp, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t f,
    ptrdiff_t c, ptrdiff_t kh, float *out)
{
    const int r = (int)(Wo % 8);
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(r),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const int two = ck_wdirect_rows(KW) == 2 && kh + 1 < KH;
    switch (two ? KW : KW + 8) {   /* constant KR and KW each: the sums stay in registers */
    case 1: CK_WDIRECT_BODY(2, 1) break;
    case 2: CK_WDIRECT_BODY(2, 2) break;
    case 3: CK_WDIRECT_BODY(2, 3) break;
    case 4: CK_WDIRECT_BODY(2, 4) break;
    case 5: CK_WDIRECT_BODY(2, 5) break;
    case 6: CK_WDIRECT_BODY(2, 6) break;
    case 9: CK_WDIRECT_BODY(1, 1) break;
    case 10: CK_WDIRECT_BODY(1, 2) break;
    case 11: CK_WDIRECT_BODY(1, 3) break;
    case 12: CK_WDIRECT_BODY(1, 4) break;
    case 13: CK_WDIRECT_BODY(1, 5) break;
    case 14: CK_WDIRECT_BODY(1, 6) break;
    case 15: CK_WDIRECT_BODY(1, 7) break;
    default: CK_WDIRECT_BODY(1, 8) break;
    }
}

/* The forward of a stride-1 conv with few input channels at any map size (conv_plan "direct":
 * lenet_c1, 1 -> 6, 5x5, padding 2 on 28x28 maps), one image per call, with the vectors laid
 * along the image's output positions taken flat (p = ho * Wo + wo), so that no lane is spent on
 * padded columns (the "wide" GEMM computed 32 columns per 28-wide row, 14 % of its work;
 * the 8 x 8 blocks of the kernel it replaced 32 x 32 per 28 x 28).  The batch path runs it
 * for the same layers' small maps (LeNet5's 8 x 8: conv.py _fwd_batch).  With xp the image
 * zero-padded (C x Hp x Wx, Hp = Ho + KH - 1, ck_wdirect_pad), the plane S[c, kw] holds xp's
 * rows shifted left by kw and cut to Wo columns, flat: S[c, kw][r * Wo + wo] =
 * xp[c, r, wo + kw].  Tap
 * (c, kh, kw) of output p then reads S[c, kw][p + kh * Wo] -- one contiguous vector load for
 * L outputs whatever rows they span.  A tile of FB <= 6 filters x Q vectors keeps its FB * Q
 * sums in registers, each loaded vector serving the FB filters (weights broadcast).
 * Each output is one FMA chain over the taps (c, kh, kw) in order, from 0 and then + bias (the
 * own GEMM's chain within its CK_KC taps; the batch path's on csrc/fgemm.h), or from the bias
 * (bias_first: csrc/fgemm.h's im2col / wide GEMMs, whose chains go on from C = bias), so the
 * bits of the plan it replaces, at either vector width and any thread count.  Every
 * output reads its own window only (padding zeros included, as torch): no operand check.
 * The sums are written acc += w * x on gcc's generic vectors, contracted to one FMA as isa.h
 * and dw3x3.h rely on (tests/test_cpu_gemm.py checks the contraction; the direct tests check
 * the bits against the exact im2col plan).  Level 2: 32-byte vectors (AVX2 + FMA), tiles of 6
 * x 2; level 3: 64-byte (AVX-512F, 32 registers), tiles of 6 x 4. */
#include "isa.h"
#define CK_DIRECT_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof(V)); v_; })
#define CK_DIRECT_ST(p, v) do { __typeof__(v) t_ = (v); memcpy((p), &t_, sizeof(t_)); } while (0)

/* floats of one plane S[c, kw]: Hp * Wo, then slack for the last tile's lanes past the image
 * (they read up to L - 1 floats past Hp * Wo; their sums are dropped) and for the row copies'
 * last vector, rounded to 64 bytes */
static inline ptrdiff_t ck_direct_plane(ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t KH)
{
    return ((Ho + KH - 1) * Wo + 16 + 15) / 16 * 16;
}

/* the padded image's row length: every vector of a shifted row copy stays inside it */
static inline ptrdiff_t ck_direct_wx(ptrdiff_t Wo, ptrdiff_t KW)
{
    return (Wo + 15) / 16 * 16 + KW - 1;
}

/* floats of one image's workspace: xp (C x Hp x Wx) and the C * KW planes */
static inline ptrdiff_t ck_direct_floats(ptrdiff_t C, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t KH,
                                         ptrdiff_t KW)
{
    return C * (Ho + KH - 1) * ck_direct_wx(Wo, KW) + C * KW * ck_direct_plane(Ho, Wo, KH);
}

#define CK_DIRECT_DEFINE(VB, QMAX, ATTR)                                                     \
typedef float ck_dirv##VB __attribute__((vector_size(VB)));                                  \
typedef int ck_diri##VB __attribute__((vector_size(VB)));                                    \
/* y[f0 + f, p0 + q*L + l] for f < FB, q < Q (the lanes past P dropped) */                   \
ATTR static inline __attribute__((always_inline)) void ck_direct_tile##VB(                   \
    const float *S, ptrdiff_t plane, const float *w, const float *bias, float *y,            \
    ptrdiff_t P, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t Wo, ptrdiff_t p0,        \
    int bias_first, const int FB, const int Q)                                               \
{                                                                                            \
    typedef ck_dirv##VB V;                                                                   \
    typedef ck_diri##VB I;                                                                   \
    enum { L = VB / 4 };                                                                     \
    const ptrdiff_t KK = KH * KW, CKK = C * KK;                                              \
    const V z = {0};                                                                         \
    V acc[6][4];                                                                             \
    for (int f = 0; f < FB; ++f) {                                                           \
        const V a0 = bias_first ? __builtin_shuffle((V){bias[f]}, (I){0}) : z;               \
        for (int q = 0; q < Q; ++q)                                                          \
            acc[f][q] = a0;                                                                  \
    }                                                                                        \
    for (ptrdiff_t c = 0; c < C; ++c)                                                        \
        for (ptrdiff_t kh = 0; kh < KH; ++kh) {                                              \
            const float *s = S + c * KW * plane + kh * Wo + p0;                              \
            const float *wt = w + c * KK + kh * KW;                                          \
            for (ptrdiff_t kw = 0; kw < KW; ++kw, s += plane, ++wt) {                        \
                V xv[4];                                                                     \
                for (int q = 0; q < Q; ++q)                                                  \
                    xv[q] = CK_DIRECT_LD(V, s + q * L);                                      \
                for (int f = 0; f < FB; ++f) {                                               \
                    /* (a broadcast: lane 0 to all; z + w adds 0 to w first, a lane loop     \
                       becomes L masked broadcasts) */                                       \
                    const V wv = __builtin_shuffle((V){wt[f * CKK]}, (I){0});                \
                    for (int q = 0; q < Q; ++q)                                              \
                        acc[f][q] += wv * xv[q];                                             \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    for (int f = 0; f < FB; ++f) {                                                           \
        float *yf = y + f * P;                                                               \
        for (int q = 0; q < Q; ++q) {                                                        \
            const ptrdiff_t p = p0 + q * L;                                                  \
            const V v = bias != NULL && !bias_first ? acc[f][q] + bias[f] : acc[f][q];       \
            if (p + L <= P) {                                                                \
                CK_DIRECT_ST(yf + p, v);                                                     \
            } else if (p < P) {                                                              \
                float t[L];                                                                  \
                CK_DIRECT_ST(t, v);                                                          \
                memcpy(yf + p, t, (size_t)(P - p) * sizeof(float));                          \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
/* one image: x (C x H x W) -> y (F x Ho x Wo); ws: ck_direct_floats floats */               \
ATTR static void ck_direct_image##VB(                                                        \
    const float *x, const float *w, const float *bias, float *y, ptrdiff_t C, ptrdiff_t H,   \
    ptrdiff_t W, ptrdiff_t F, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t Ho, ptrdiff_t Wo,        \
    ptrdiff_t pt, ptrdiff_t pl, int bias_first, float *ws)                                   \
{                                                                                            \
    typedef ck_dirv##VB V;                                                                   \
    enum { L = VB / 4 };                                                                     \
    const ptrdiff_t Hp = Ho + KH - 1, Wx = ck_direct_wx(Wo, KW), P = Ho * Wo;                \
    const ptrdiff_t plane = ck_direct_plane(Ho, Wo, KH), nv = (Wo + L - 1) / L;              \
    float *xp = ws, *S = ws + C * Hp * Wx;                                                   \
    ck_wdirect_pad(x, C, H, W, pt, pl, Hp, Wx, xp);                                          \
    for (ptrdiff_t c = 0; c < C; ++c)                                                        \
        for (ptrdiff_t kw = 0; kw < KW; ++kw) {                                              \
            float *d = S + (c * KW + kw) * plane;                                            \
            const float *r = xp + c * Hp * Wx + kw;                                          \
            /* (rows in order: a row's last vector spills into the next, rewritten after) */ \
            for (ptrdiff_t h = 0; h < Hp; ++h, d += Wo, r += Wx)                             \
                for (ptrdiff_t v = 0; v < nv; ++v)                                           \
                    CK_DIRECT_ST(d + v * L, CK_DIRECT_LD(V, r + v * L));                     \
            memset(S + (c * KW + kw) * plane + Hp * Wo, 0,                                   \
                   (size_t)(plane - Hp * Wo) * sizeof(float));                               \
        }                                                                                    \
    for (ptrdiff_t f0 = 0; f0 < F; f0 += 6) {                                                \
        const int FB = F - f0 < 6 ? (int)(F - f0) : 6;                                       \
        const float *wf = w + f0 * C * KH * KW;                                              \
        const float *bf = bias != NULL ? bias + f0 : NULL;                                   \
        float *yf = y + f0 * P;                                                              \
        for (ptrdiff_t p0 = 0; p0 < P; p0 += QMAX * L) {                                     \
            const ptrdiff_t left = (P - p0 + L - 1) / L;                                     \
            const int Q = left < QMAX ? (int)left : QMAX;                                    \
            /* (constant FB and Q each: the sums stay in registers) */                       \
            switch (FB * 4 + Q - 1) {                                                        \
            CK_DIRECT_CASES(VB, QMAX, 6, 24) CK_DIRECT_CASES(VB, QMAX, 5, 20)                \
            CK_DIRECT_CASES(VB, QMAX, 4, 16) CK_DIRECT_CASES(VB, QMAX, 3, 12)                \
            CK_DIRECT_CASES(VB, QMAX, 2, 8) default: CK_DIRECT_CASES(VB, QMAX, 1, 4)         \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}

#define CK_DIRECT_CALL(VB, FB, Q)                                                            \
    ck_direct_tile##VB(S, plane, wf, bf, yf, P, C, KH, KW, Wo, p0, bias_first, FB, Q); break;
#define CK_DIRECT_CASES(VB, QMAX, FB, K)                                                     \
    case K + 3: CK_DIRECT_CALL(VB, FB, (QMAX >= 4 ? 4 : QMAX))                               \
    case K + 2: CK_DIRECT_CALL(VB, FB, (QMAX >= 3 ? 3 : QMAX))                               \
    case K + 1: CK_DIRECT_CALL(VB, FB, 2)                                                    \
    case K: CK_DIRECT_CALL(VB, FB, 1)

CK_DIRECT_DEFINE(32, 2, __attribute__((target("avx2,fma"))))
CK_DIRECT_DEFINE(64, 4, CK_AVX512_VEC_TARGET)

/* may level 3 (64-byte vectors on AVX-512F) run: the CPU has it and CONVKIT_DISABLE_AVX512 is
 * not set (the emulated build: AVX2 + FMA) */
static int ck_direct_level3(void)
{
    __builtin_cpu_init();
    return CK_CPU_HAS_AVX512();
}

static void ck_direct_forward(const float *x, const float *w, const float *bias, float *y,
                              ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t F, ptrdiff_t KH,
                              ptrdiff_t KW, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t pt,
                              ptrdiff_t pl, float *ws, int level, int bias_first)
{
    bias_first = bias_first && bias != NULL;
    if (level >= 3)
        ck_direct_image64(x, w, bias, y, C, H, W, F, KH, KW, Ho, Wo, pt, pl, bias_first, ws);
    else
        ck_direct_image32(x, w, bias, y, C, H, W, F, KH, KW, Ho, Wo, pt, pl, bias_first, ws);
}

#else
#define CK_WDIRECT_BUILT 0

static int ck_wdirect_available(void)
{
    return 0;
}

static void ck_wdirect_pad(const float *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t pt,
                           ptrdiff_t pl, ptrdiff_t Hp, ptrdiff_t Wp, float *xp)
{
    (void)x; (void)C; (void)H; (void)W; (void)pt; (void)pl; (void)Hp; (void)Wp; (void)xp;
}

static inline ptrdiff_t ck_wdirect_rows(ptrdiff_t KW)
{
    (void)KW;
    return 1;
}

static void ck_wdirect_task(const float *xp, const float *gy, ptrdiff_t N, ptrdiff_t C,
                            ptrdiff_t F, ptrdiff_t Hp, ptrdiff_t Wp, ptrdiff_t Ho, ptrdiff_t Wo,
                            ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t f, ptrdiff_t c, ptrdiff_t kh,
                            float *out)
{
    (void)xp; (void)gy; (void)N; (void)C; (void)F; (void)Hp; (void)Wp; (void)Ho; (void)Wo;
    (void)KH; (void)KW; (void)f; (void)c; (void)kh; (void)out;
}

static int ck_direct_level3(void)
{
    return 0;
}

static inline ptrdiff_t ck_direct_floats(ptrdiff_t C, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t KH,
                                         ptrdiff_t KW)
{
    (void)C; (void)Ho; (void)Wo; (void)KH; (void)KW;
    return 0;
}

static void ck_direct_forward(const float *x, const float *w, const float *bias, float *y,
                              ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t F, ptrdiff_t KH,
                              ptrdiff_t KW, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t pt,
                              ptrdiff_t pl, float *ws, int level, int bias_first)
{
    (void)bias_first;
    (void)x; (void)w; (void)bias; (void)y; (void)C; (void)H; (void)W; (void)F; (void)KH;
    (void)KW; (void)Ho; (void)Wo; (void)pt; (void)pl; (void)ws; (void)level;
}

#endif
#endif
