/* RoI max pool's float32 kernel on the NHWC map: one RoI, all channels, values and argmax
   (declared in csrc/roi.pxd, used by _roi_pool.pyx). */
#ifndef CK_ROI_POOL_H
#define CK_ROI_POOL_H
#include "roi_simd.h"
CK_ROI_STRICT_FP_BEGIN

/* RoI max pool, one RoI: each non-empty bin scanned in row-major order with a strict '>'
   from -FLT_MAX / index -1 (first maximum wins, NaN never does), R vectors of channels at
   a time; pixel indices ride in int32 lanes (the caller checks H*W < 2**31). */
#define CK_POOL_STEP(X, R)                                                              \
    {                                                                                   \
        X##_V v[R];                                                                     \
        X##_IV ix[R];                                                                   \
        int j;                                                                          \
        for (j = 0; j < R; j++) { v[j] = X##_SET1(-FLT_MAX); ix[j] = X##_ISET1(-1); }   \
        for (h = hs[p]; h < he[p]; h++) {                                               \
            for (x = ws[q]; x < we[q]; x++) {                                           \
                const float* s = img + (h * W + x) * C + c;                             \
                X##_IV pix = X##_ISET1((int)(h * W + x));                               \
                for (j = 0; j < R; j++) {                                               \
                    X##_V u = X##_LD(s + j * X##_L);                                    \
                    X##_M m = X##_GT(u, v[j]);                                          \
                    v[j] = X##_SEL(m, u, v[j]);                                         \
                    ix[j] = X##_ISEL(m, pix, ix[j]);                                    \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        for (j = 0; j < R; j++) {                                                       \
            X##_ST(tb + b * ld + (c - c0) + j * X##_L, v[j]);                           \
            X##_IST(ti + b * ld + (c - c0) + j * X##_L, ix[j]);                         \
        }                                                                               \
    }
#define CK_POOL_BODY(X)                                                                 \
    {                                                                                   \
        ptrdiff_t p, q, h, x, c, b;                                                     \
        for (p = 0; p < ph; p++) {                                                      \
            for (q = 0; q < pw; q++) {                                                  \
                b = p * pw + q;                                                         \
                if (he[p] <= hs[p] || we[q] <= ws[q]) continue;                         \
                for (c = c0; c + X##_R * X##_L <= c1; c += X##_R * X##_L)              \
                    CK_POOL_STEP(X, X##_R)                                              \
                for (; c + X##_L <= c1; c += X##_L) CK_POOL_STEP(X, 1)                  \
            }                                                                           \
        }                                                                               \
        return c1 - (c1 - c0) % X##_L;                                                  \
    }
#define CK_POOL_ARGS const float* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph,           \
    ptrdiff_t pw, const ptrdiff_t* hs, const ptrdiff_t* he, const ptrdiff_t* ws,        \
    const ptrdiff_t* we, ptrdiff_t c0, ptrdiff_t c1, float* tb, int32_t* ti, ptrdiff_t ld

CK_ROI_INSTANTIATE(ck_pool, CK_POOL_ARGS, CK_POOL_BODY)

/* The same for int32 -> int64 (pool argmax). */
static void ck_transpose_i(const int32_t* src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                           int64_t* dst, ptrdiff_t ldd) {
    ptrdiff_t r, c = 0, i;
#ifdef CK_ROI_SSE2
    for (; c + 4 <= cols; c += 4) {
        for (r = 0; r + 4 <= rows; r += 4) {
            __m128 v[4];
            for (i = 0; i < 4; i++) v[i] = _mm_loadu_ps((const float*)(src + (r + i) * lds + c));
            _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
            for (i = 0; i < 4; i++) {   /* sign-extend four int32 lanes to int64 */
                __m128i x = _mm_castps_si128(v[i]), sgn = _mm_srai_epi32(x, 31);
                _mm_storeu_si128((__m128i*)(dst + (c + i) * ldd + r), _mm_unpacklo_epi32(x, sgn));
                _mm_storeu_si128((__m128i*)(dst + (c + i) * ldd + r + 2), _mm_unpackhi_epi32(x, sgn));
            }
        }
        for (; r < rows; r++)
            for (i = 0; i < 4; i++) dst[(c + i) * ldd + r] = src[r * lds + c + i];
    }
#endif
    for (; c < cols; c++)
        for (r = 0; r < rows; r++)
            dst[c * ldd + r] = src[r * lds + c];
}
/* One RoI's max pool on the NHWC map: y/am the RoI's (C, nbins) outputs (an empty bin
   gives 0 and -1); blocks of CK_CHUNK channels as in ck_align_roi_f. */
static void ck_pool_roi_f(const float* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph,
                          ptrdiff_t pw, const ptrdiff_t* hs, const ptrdiff_t* he,
                          const ptrdiff_t* ws, const ptrdiff_t* we, void* scratch,
                          float* y, int64_t* am) {
    ptrdiff_t nb = ph * pw, c0, c1, c, p, q, x, b;
    float* tb = (float*)scratch;
    int32_t* ti = (int32_t*)(tb + nb * CK_LD);
    float* tr = (float*)(ti + nb * CK_LD);
    int64_t* tri = (int64_t*)(((uintptr_t)(tr + nb * CK_CHUNK) + 15) & ~(uintptr_t)15);
    int lv = ck_simd_level();
    (void)lv;
    for (c0 = 0; c0 < C; c0 = c1) {
        c1 = C - c0 > CK_CHUNK ? c0 + CK_CHUNK : C;
        c = c0;
#ifdef CK_ROI_SSE2
        c = CK_ROI_CALL(lv, ck_pool, img, W, C, ph, pw, hs, he, ws, we, c0, c1, tb, ti, CK_LD);
#endif
        for (p = 0; p < ph; p++) {
            for (q = 0; q < pw; q++) {
                b = p * pw + q;
                if (he[p] <= hs[p] || we[q] <= ws[q]) {
                    for (x = 0; x < c1 - c0; x++) { tb[b * CK_LD + x] = 0; ti[b * CK_LD + x] = -1; }
                    continue;
                }
                for (x = c; x < c1; x++) {
                    float best = -FLT_MAX;
                    int32_t bi = -1;
                    ptrdiff_t hh, ww;
                    for (hh = hs[p]; hh < he[p]; hh++)
                        for (ww = ws[q]; ww < we[q]; ww++)
                            if (img[(hh * W + ww) * C + x] > best) {
                                best = img[(hh * W + ww) * C + x];
                                bi = (int32_t)(hh * W + ww);
                            }
                    tb[b * CK_LD + x - c0] = best;
                    ti[b * CK_LD + x - c0] = bi;
                }
            }
        }
        ck_transpose_f(tb, CK_LD, nb, c1 - c0, tr, nb);
        ck_stream_copy(y + c0 * nb, tr, (size_t)(nb * (c1 - c0)) * sizeof(float));
        ck_transpose_i(ti, CK_LD, nb, c1 - c0, tri, nb);
        ck_stream_copy(am + c0 * nb, tri, (size_t)(nb * (c1 - c0)) * sizeof(int64_t));
    }
}
CK_ROI_STRICT_FP_END
#endif
