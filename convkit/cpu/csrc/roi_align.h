/* RoI align's float32 kernels on the NHWC map: one RoI's forward (bins summed over their
   taps for all channels) and one RoI's backward for a block of channels (declared in
   csrc/roi.pxd, used by _roi_align.pyx). */
#ifndef CK_ROI_ALIGN_H
#define CK_ROI_ALIGN_H
#include "roi_simd.h"
CK_ROI_STRICT_FP_BEGIN

/* How a bin's sum becomes the mean: 1 multiply by 1/count (count a power of two, so the
   product is the same correctly rounded quotient), 2 divide in float (count exact in
   float), 0 divide in double afterwards (the caller). */
static int ck_scale_kind(float fcount, double count) {
    int e;
    if ((double)fcount != count) return 0;
    return frexp(count, &e) == 0.5 ? 1 : 2;
}

/* RoI-align forward, one RoI: bin b's sum over its taps t in [first[b], first[b+1])
   (pixel off[t], weight w[t]) as two interleaved partial sums (even and odd taps), added,
   then scaled (kind, as ck_scale_kind); into tb[b*C + c].  Returns the channels done. */
#define CK_ALIGN_FWD_STEP(X, R)                                                         \
    {                                                                                   \
        X##_V a[R], e[R];                                                               \
        int j;                                                                          \
        for (j = 0; j < R; j++) { a[j] = X##_SET1(0.0f); e[j] = a[j]; }                 \
        for (t = first[b]; t + 2 <= first[b + 1]; t += 2) {                             \
            const float *p = img + off[t] * C + c, *q = img + off[t + 1] * C + c;       \
            X##_V wa = X##_SET1(w[t]), wb = X##_SET1(w[t + 1]);                         \
            for (j = 0; j < R; j++) {                                                   \
                a[j] = X##_ADD(a[j], X##_MUL(wa, X##_LD(p + j * X##_L)));               \
                e[j] = X##_ADD(e[j], X##_MUL(wb, X##_LD(q + j * X##_L)));               \
            }                                                                           \
        }                                                                               \
        if (t < first[b + 1]) {                                                         \
            const float* p = img + off[t] * C + c;                                      \
            X##_V wa = X##_SET1(w[t]);                                                  \
            for (j = 0; j < R; j++)                                                     \
                a[j] = X##_ADD(a[j], X##_MUL(wa, X##_LD(p + j * X##_L)));               \
        }                                                                               \
        for (j = 0; j < R; j++) {                                                       \
            a[j] = X##_ADD(a[j], e[j]);                                                 \
            if (kind == 1) a[j] = X##_MUL(a[j], X##_SET1(inv));                         \
            else if (kind == 2) a[j] = X##_DIV(a[j], X##_SET1(fcount));                 \
            X##_ST(tb + b * ld + (c - c0) + j * X##_L, a[j]);                            \
        }                                                                               \
    }
#define CK_ALIGN_FWD_BODY(X)                                                            \
    {                                                                                   \
        ptrdiff_t b, t, c;                                                              \
        for (b = 0; b < nbins; b++) {                                                   \
            for (c = c0; c + X##_R * X##_L <= c1; c += X##_R * X##_L)                  \
                CK_ALIGN_FWD_STEP(X, X##_R)                                             \
            for (; c + X##_L <= c1; c += X##_L) CK_ALIGN_FWD_STEP(X, 1)                 \
        }                                                                               \
        return c1 - (c1 - c0) % X##_L;                                                  \
    }
#define CK_ALIGN_FWD_ARGS const float* img, ptrdiff_t C, ptrdiff_t nbins,                \
    const ptrdiff_t* first, const ptrdiff_t* off, const float* w, int kind, float inv,  \
    float fcount, ptrdiff_t c0, ptrdiff_t c1, float* tb, ptrdiff_t ld

/* Adjoint, one RoI, cb channels: gb (the image's (H*W, cb) gradient block) +=
   w[t] * g[b] for every tap of every bin, in tap order; g = gt + b*cb (scaled grads). */
#define CK_ALIGN_BWD_STEP(X, R)                                                         \
    {                                                                                   \
        int j;                                                                          \
        for (j = 0; j < R; j++)                                                         \
            X##_ST(r + c + j * X##_L, X##_ADD(X##_LD(r + c + j * X##_L),                \
                                              X##_MUL(X##_LD(g + c + j * X##_L), wt))); \
    }
#define CK_ALIGN_BWD_BODY(X)                                                            \
    {                                                                                   \
        ptrdiff_t b, t, c;                                                              \
        for (b = 0; b < nbins; b++) {                                                   \
            const float* g = gt + b * cb;                                               \
            for (t = first[b]; t < first[b + 1]; t++) {                                 \
                float* r = gb + off[t] * cb;                                            \
                X##_V wt = X##_SET1(w[t]);                                              \
                for (c = 0; c + 4 * X##_L <= cb; c += 4 * X##_L) CK_ALIGN_BWD_STEP(X, 4) \
                for (; c + X##_L <= cb; c += X##_L) CK_ALIGN_BWD_STEP(X, 1)             \
            }                                                                           \
        }                                                                               \
        return cb - cb % X##_L;                                                         \
    }
#define CK_ALIGN_BWD_ARGS float* gb, ptrdiff_t cb, ptrdiff_t nbins,                      \
    const ptrdiff_t* first, const ptrdiff_t* off, const float* w, const float* gt

CK_ROI_INSTANTIATE(ck_align_fwd, CK_ALIGN_FWD_ARGS, CK_ALIGN_FWD_BODY)
CK_ROI_INSTANTIATE(ck_align_bwd, CK_ALIGN_BWD_ARGS, CK_ALIGN_BWD_BODY)

/* One RoI's align forward: taps as in CK_ALIGN_FWD_BODY, y the RoI's (C, nbins) output. */
static void ck_align_roi_f(const float* img, ptrdiff_t C, ptrdiff_t nbins,
                           const ptrdiff_t* first, const ptrdiff_t* off, const float* w,
                           float fcount, double count, void* scratch, float* y) {
    int kind = ck_scale_kind(fcount, count), lv = ck_simd_level();
    float inv = 1.0f / fcount;
    float* tb = (float*)scratch;
    float* tr = tb + nbins * CK_LD;
    ptrdiff_t c0, c1, c, b, t;
    (void)lv;
    for (c0 = 0; c0 < C; c0 = c1) {
        c1 = C - c0 > CK_CHUNK ? c0 + CK_CHUNK : C;
        c = c0;
#ifdef CK_ROI_SSE2
        c = CK_ROI_CALL(lv, ck_align_fwd, img, C, nbins, first, off, w, kind, inv, fcount, c0,
                        c1, tb, CK_LD);
#endif
        for (; c < c1; c++) {       /* the lanes' arithmetic, one channel at a time */
            for (b = 0; b < nbins; b++) {
                float a = 0, e = 0;
                for (t = first[b]; t + 2 <= first[b + 1]; t += 2) {
                    a = a + w[t] * img[off[t] * C + c];
                    e = e + w[t + 1] * img[off[t + 1] * C + c];
                }
                if (t < first[b + 1]) a = a + w[t] * img[off[t] * C + c];
                a = a + e;
                tb[b * CK_LD + c - c0] = kind == 1 ? a * inv : kind == 2 ? a / fcount : a;
            }
        }
        if (kind == 0)
            for (b = 0; b < nbins; b++)
                for (c = 0; c < c1 - c0; c++)
                    tb[b * CK_LD + c] = (float)((double)tb[b * CK_LD + c] / count);
        ck_transpose_f(tb, CK_LD, nbins, c1 - c0, tr, nbins);
        ck_stream_copy(y + c0 * nbins, tr, (size_t)(nbins * (c1 - c0)) * sizeof(float));
    }
}

/* One RoI's align backward for a block of cb channels: gyk is the RoI's grad at the
   block's first channel ((cb, nbins), rows of nbins), gt a (nbins, cb) scratch, gb the
   image's (H*W, cb) gradient block. */
static void ck_align_roi_bwd_f(float* gb, ptrdiff_t cb, ptrdiff_t nbins,
                               const ptrdiff_t* first, const ptrdiff_t* off, const float* w,
                               float fcount, double count, const float* gyk, float* gt,
                               const float* next) {
    int kind = ck_scale_kind(fcount, count), lv = ck_simd_level();
    float inv = 1.0f / fcount;
    ptrdiff_t c = 0, b, t, n = nbins * cb, b0, b1, pf = 0;
    (void)lv;
    ck_transpose_sf(gyk, nbins, cb, nbins, gt, cb, kind, inv, fcount);
    if (kind == 0)
        for (t = 0; t < n; t++) gt[t] = (float)((double)gt[t] / count);
    /* bins in 8 slices; between them an eighth of the next RoI's grad block is asked for,
       so its memory reads overlap this RoI's arithmetic */
    for (b0 = 0; b0 < nbins; b0 = b1) {
        b1 = b0 + (nbins + 7) / 8 < nbins ? b0 + (nbins + 7) / 8 : nbins;
#if defined(__GNUC__) || defined(__clang__)
        if (next != NULL)
            for (; pf < n * (ptrdiff_t)sizeof(float) * b1 / nbins; pf += 64)
                __builtin_prefetch((const char*)next + pf, 0, 3);
#endif
        c = 0;
#ifdef CK_ROI_SSE2
        c = CK_ROI_CALL(lv, ck_align_bwd, gb, cb, b1 - b0, first + b0, off, w, gt + b0 * cb);
#endif
    }
    for (; c < cb; c++)
        for (b = 0; b < nbins; b++)
            for (t = first[b]; t < first[b + 1]; t++)
                gb[off[t] * cb + c] += gt[b * cb + c] * w[t];
}

CK_ROI_STRICT_FP_END
#endif
