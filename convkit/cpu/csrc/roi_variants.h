/* The lecture's other RoI aggregators on the cpu (declared in csrc/roi_variants.pxd, used by
   _roi_variants.pyx): roi_avg_pool (roi_pool's bins, mean) and roi_max_align (roi_align's
   samples, max).  Forwards work on the NHWC map (a pixel's channels contiguous, so the channel
   loops below vectorise); backwards on one (H, W) plane of grad_x.  The bins and sample taps
   come from the roi_pool / roi_align helpers (_roi_pool.roi_pool_bins,
   _roi_align.roi_align_axis_taps).  Every function exists for float (_f) and double (_d). */
#ifndef CK_ROI_VARIANTS_H
#define CK_ROI_VARIANTS_H
#include "roi_simd.h"
CK_ROI_STRICT_FP_BEGIN

/* roi_avg_pool forward, one RoI: bin (p, q) = pixels [hs[p], he[p]) x [ws[q], we[q]) of the
   NHWC image, summed row-major per channel, divided by their number; an empty bin gives 0.
   y: the RoI's (C, ph*pw) output; acc: C scratch. */
#define CK_AVG_ROI(T, S)                                                                  \
    static void ck_avg_roi_##S(const T* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph,      \
                               ptrdiff_t pw, const ptrdiff_t* hs, const ptrdiff_t* he,    \
                               const ptrdiff_t* ws, const ptrdiff_t* we, T* acc, T* y) {   \
        ptrdiff_t nb = ph * pw, p, q, h, w, c;                                            \
        for (p = 0; p < ph; p++) {                                                        \
            for (q = 0; q < pw; q++) {                                                    \
                ptrdiff_t b = p * pw + q;                                                 \
                T cnt;                                                                    \
                if (he[p] <= hs[p] || we[q] <= ws[q]) {                                   \
                    for (c = 0; c < C; c++) y[c * nb + b] = 0;                            \
                    continue;                                                             \
                }                                                                         \
                for (c = 0; c < C; c++) acc[c] = 0;                                       \
                for (h = hs[p]; h < he[p]; h++)                                           \
                    for (w = ws[q]; w < we[q]; w++) {                                     \
                        const T* s = img + (h * W + w) * C;                               \
                        for (c = 0; c < C; c++) acc[c] = acc[c] + s[c];                   \
                    }                                                                     \
                cnt = (T)((he[p] - hs[p]) * (we[q] - ws[q]));                             \
                for (c = 0; c < C; c++) y[c * nb + b] = acc[c] / cnt;                     \
            }                                                                             \
        }                                                                                 \
    }

/* roi_avg_pool backward, one RoI on one channel plane: g[b] / count added to every pixel of
   bin b, bins in order. */
#define CK_AVG_BWD(T, S)                                                                  \
    static void ck_avg_bwd_##S(T* plane, ptrdiff_t W, ptrdiff_t ph, ptrdiff_t pw,         \
                               const ptrdiff_t* hs, const ptrdiff_t* he, const ptrdiff_t* ws, \
                               const ptrdiff_t* we, const T* g) {                         \
        ptrdiff_t p, q, h, w;                                                             \
        for (p = 0; p < ph; p++) {                                                        \
            for (q = 0; q < pw; q++) {                                                    \
                T v;                                                                      \
                if (he[p] <= hs[p] || we[q] <= ws[q]) continue;                           \
                v = g[p * pw + q] / (T)((he[p] - hs[p]) * (we[q] - ws[q]));               \
                for (h = hs[p]; h < he[p]; h++) {                                         \
                    T* r = plane + h * W;                                                 \
                    for (w = ws[q]; w < we[q]; w++) r[w] = r[w] + v;                      \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }

/* roi_max_align forward, one bin, all channels, on the NHWC image: its valid samples are the
   y taps [a0, a1) x the x taps [b0, b1) (row-major); sample value roi_align's
   ((w1*v1 + w2*v2) + w3*v3) + w4*v4; max_pool2d's rule (greater or NaN replaces: ties keep the
   first, NaN wins).  best/bi: C scratch; the winner's sample number yidx*gw + xidx goes to
   am[c*nb], its value to y[c*nb]; no valid sample: 0 and -1.  IT, the winner's ordinal among
   the bin's samples, is int32 for float when they number < 2**31 (same-width lanes
   vectorise), else int64. */
#define CK_MAX_ALIGN_BIN(T, IT, S)                                                        \
    static void ck_max_align_bin_##S(                                                     \
        const T* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t a0, ptrdiff_t a1,               \
        const ptrdiff_t* ylo, const ptrdiff_t* yhi, const T* ywl, const T* ywh,          \
        const ptrdiff_t* yidx, ptrdiff_t b0, ptrdiff_t b1, const ptrdiff_t* xlo,          \
        const ptrdiff_t* xhi, const T* xwl, const T* xwh, const ptrdiff_t* xidx,          \
        int64_t gw, T* best, IT* bi, ptrdiff_t nb, T* y, int64_t* am) {                   \
        ptrdiff_t nx = b1 - b0, a, b, c;                                                  \
        if (a1 <= a0 || nx <= 0) {                                                        \
            for (c = 0; c < C; c++) { y[c * nb] = 0; am[c * nb] = -1; }                   \
            return;                                                                       \
        }                                                                                 \
        for (c = 0; c < C; c++) { best[c] = -(T)INFINITY; bi[c] = 0; }                    \
        for (a = a0; a < a1; a++) {                                                       \
            for (b = b0; b < b1; b++) {                                                   \
                const T hy = ywl[a], ly = ywh[a], hx = xwl[b], lx = xwh[b];               \
                const T w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;           \
                const T* p1 = img + (ylo[a] * W + xlo[b]) * C;                            \
                const T* p2 = img + (ylo[a] * W + xhi[b]) * C;                            \
                const T* p3 = img + (yhi[a] * W + xlo[b]) * C;                            \
                const T* p4 = img + (yhi[a] * W + xhi[b]) * C;                            \
                const IT s = (IT)((a - a0) * nx + (b - b0));                              \
                for (c = 0; c < C; c++) {                                                 \
                    const T v = ((w1 * p1[c] + w2 * p2[c]) + w3 * p3[c]) + w4 * p4[c];    \
                    const int take = (v > best[c]) | (v != v);                            \
                    best[c] = take ? v : best[c];                                         \
                    bi[c] = take ? s : bi[c];                                             \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
        for (c = 0; c < C; c++) {                                                         \
            const ptrdiff_t s = (ptrdiff_t)bi[c];                                         \
            y[c * nb] = best[c];                                                          \
            am[c * nb] = (int64_t)yidx[a0 + s / nx] * gw + (int64_t)xidx[b0 + s % nx];    \
        }                                                                                 \
    }

/* roi_max_align backward, one RoI on one channel plane: for each bin b with am[b] != -1, the
   winning sample (iy, ix) = (am / gw, am % gw) is looked up among the bin's taps (y taps
   [yf[p], yf[p+1]) hold consecutive sample numbers from yidx[yf[p]]) and g[b] times its four
   bilinear weights added to its four neighbours.  Returns the number of entries that are
   neither -1 nor a valid sample of their bin (skipped; the caller raises). */
#define CK_MAX_ALIGN_BWD(T, S)                                                            \
    static ptrdiff_t ck_max_align_bwd_##S(                                                \
        T* plane, ptrdiff_t W, ptrdiff_t ph, ptrdiff_t pw, const ptrdiff_t* yf,           \
        const ptrdiff_t* ylo, const ptrdiff_t* yhi, const T* ywl, const T* ywh,          \
        const ptrdiff_t* yidx, const ptrdiff_t* xf, const ptrdiff_t* xlo,                 \
        const ptrdiff_t* xhi, const T* xwl, const T* xwh, const ptrdiff_t* xidx,          \
        int64_t gw, const T* g, const int64_t* am) {                                      \
        ptrdiff_t p, q, bad = 0;                                                          \
        for (p = 0; p < ph; p++) {                                                        \
            for (q = 0; q < pw; q++) {                                                    \
                const int64_t v = am[p * pw + q];                                         \
                int64_t iy, ix, ja, jb;                                                   \
                ptrdiff_t a, b;                                                           \
                T gv, hy, ly, hx, lx;                                                     \
                if (v == -1) continue;                                                    \
                if (v < 0 || gw < 1 || yf[p + 1] <= yf[p] || xf[q + 1] <= xf[q]) {       \
                    bad++;                                                                \
                    continue;                                                             \
                }                                                                         \
                iy = v / gw;                                                              \
                ix = v % gw;                                                              \
                ja = iy - (int64_t)yidx[yf[p]];                                           \
                jb = ix - (int64_t)xidx[xf[q]];                                           \
                if (ja < 0 || ja >= yf[p + 1] - yf[p] || jb < 0 || jb >= xf[q + 1] - xf[q]) { \
                    bad++;                                                                \
                    continue;                                                             \
                }                                                                         \
                a = yf[p] + (ptrdiff_t)ja;                                                \
                b = xf[q] + (ptrdiff_t)jb;                                                \
                if (yidx[a] != iy || xidx[b] != ix) {                                     \
                    bad++;                                                                \
                    continue;                                                             \
                }                                                                         \
                gv = g[p * pw + q];                                                       \
                hy = ywl[a]; ly = ywh[a]; hx = xwl[b]; lx = xwh[b];                       \
                plane[ylo[a] * W + xlo[b]] += gv * (hy * hx);                             \
                plane[ylo[a] * W + xhi[b]] += gv * (hy * lx);                             \
                plane[yhi[a] * W + xlo[b]] += gv * (ly * hx);                             \
                plane[yhi[a] * W + xhi[b]] += gv * (ly * lx);                             \
            }                                                                             \
        }                                                                                 \
        return bad;                                                                       \
    }

CK_AVG_ROI(float, f)
CK_AVG_ROI(double, d)
CK_AVG_BWD(float, f)
CK_AVG_BWD(double, d)
CK_MAX_ALIGN_BIN(float, int32_t, f)
CK_MAX_ALIGN_BIN(float, int64_t, fl)
CK_MAX_ALIGN_BIN(double, int64_t, d)
CK_MAX_ALIGN_BWD(float, f)
CK_MAX_ALIGN_BWD(double, d)

CK_ROI_STRICT_FP_END
#endif
