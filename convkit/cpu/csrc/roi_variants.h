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

/* roi_avg_pool backward, one RoI on a pixel-major block of nc channels: gb (H*W, nc) +=
   g[c][b] / count at every pixel of bin b, bins in order (the same additions into each element
   as CK_AVG_BWD, nc channels at a time); g: the RoI's grad at the block's first channel,
   rows of nb; v: nc scratch. */
#define CK_AVG_BWD_BLK(T, S)                                                              \
    static void ck_avg_bwd_blk_##S(T* gb, ptrdiff_t nc, ptrdiff_t W, ptrdiff_t ph,       \
                                   ptrdiff_t pw, const ptrdiff_t* hs, const ptrdiff_t* he, \
                                   const ptrdiff_t* ws, const ptrdiff_t* we, const T* g,  \
                                   ptrdiff_t nb, T* v) {                                  \
        ptrdiff_t p, q, h, w, c;                                                          \
        for (p = 0; p < ph; p++) {                                                        \
            for (q = 0; q < pw; q++) {                                                    \
                T cnt;                                                                    \
                if (he[p] <= hs[p] || we[q] <= ws[q]) continue;                           \
                cnt = (T)((he[p] - hs[p]) * (we[q] - ws[q]));                             \
                for (c = 0; c < nc; c++) v[c] = g[c * nb + p * pw + q] / cnt;            \
                for (h = hs[p]; h < he[p]; h++)                                           \
                    for (w = ws[q]; w < we[q]; w++) {                                     \
                        T* r = gb + (h * W + w) * nc;                                     \
                        for (c = 0; c < nc; c++) r[c] = r[c] + v[c];                      \
                    }                                                                     \
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
/* The scan of one block of channels [c0, c0 + CN): CN a constant (16) keeps the block's
   running max and winner in registers, or the tail's count with best/bi in memory. */
#define CK_MAX_ALIGN_SCAN(T, IT, CN, best, bi)                                            \
    for (c = 0; c < (CN); c++) { best[c] = -(T)INFINITY; bi[c] = 0; }                     \
    for (a = a0; a < a1; a++) {                                                           \
        for (b = b0; b < b1; b++) {                                                       \
            const T hy = ywl[a], ly = ywh[a], hx = xwl[b], lx = xwh[b];                   \
            const T w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;               \
            const T* p1 = img + (ylo[a] * W + xlo[b]) * C + c0;                           \
            const T* p2 = img + (ylo[a] * W + xhi[b]) * C + c0;                           \
            const T* p3 = img + (yhi[a] * W + xlo[b]) * C + c0;                           \
            const T* p4 = img + (yhi[a] * W + xhi[b]) * C + c0;                           \
            const IT s = (IT)((a - a0) * nx + (b - b0));                                  \
            for (c = 0; c < (CN); c++) {                                                  \
                const T v = ((w1 * p1[c] + w2 * p2[c]) + w3 * p3[c]) + w4 * p4[c];        \
                const int take = (v > best[c]) | (v != v);                                \
                best[c] = take ? v : best[c];                                             \
                bi[c] = take ? s : bi[c];                                                 \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    for (c = 0; c < (CN); c++) {                                                          \
        const ptrdiff_t s = (ptrdiff_t)bi[c];                                             \
        y[(c0 + c) * nb] = best[c];                                                       \
        am[(c0 + c) * nb] = (int64_t)yidx[a0 + s / nx] * gw + (int64_t)xidx[b0 + s % nx]; \
    }

/* roi_max_align forward, one bin, all channels, on the NHWC image: its valid samples are the
   y taps [a0, a1) x the x taps [b0, b1) (row-major); sample value roi_align's
   ((w1*v1 + w2*v2) + w3*v3) + w4*v4; max_pool2d's rule (greater or NaN replaces: ties keep the
   first, NaN wins).  The winner's sample number yidx*gw + xidx goes to am[c*nb], its value to
   y[c*nb]; no valid sample: 0 and -1; channels from cb on.  best/bi: C scratch for the last
   channels.  IT, the
   winner's ordinal among the bin's samples, is int32 for float when they number < 2**31
   (same-width lanes vectorise), else int64. */
#define CK_MAX_ALIGN_BIN(T, IT, S)                                                        \
    static void ck_max_align_bin_##S(                                                     \
        const T* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t a0, ptrdiff_t a1,               \
        const ptrdiff_t* ylo, const ptrdiff_t* yhi, const T* ywl, const T* ywh,          \
        const ptrdiff_t* yidx, ptrdiff_t b0, ptrdiff_t b1, const ptrdiff_t* xlo,          \
        const ptrdiff_t* xhi, const T* xwl, const T* xwh, const ptrdiff_t* xidx,          \
        int64_t gw, T* best, IT* bi, ptrdiff_t nb, T* y, int64_t* am, ptrdiff_t cb) {     \
        ptrdiff_t nx = b1 - b0, a, b, c, c0;                                              \
        if (a1 <= a0 || nx <= 0) {                                                        \
            for (c = cb; c < C; c++) { y[c * nb] = 0; am[c * nb] = -1; }                  \
            return;                                                                       \
        }                                                                                 \
        for (c0 = cb; c0 + 16 <= C; c0 += 16) {                                          \
            T rb[16];                                                                     \
            IT ri[16];                                                                    \
            CK_MAX_ALIGN_SCAN(T, IT, 16, rb, ri)                                          \
        }                                                                                 \
        if (c0 < C) {                                                                     \
            CK_MAX_ALIGN_SCAN(T, IT, C - c0, best, bi)                                    \
        }                                                                                 \
    }

/* v / d for 0 <= v, 1 <= d (inv = 1.0 / d): a double estimate corrected to the exact quotient
   (an int64 division per bin cost more than the rest of the backward); exact division where
   v is too large for the estimate to be off by at most one. */
static inline int64_t ck_div(int64_t v, int64_t d, double inv) {
    int64_t q;
    if (v >= ((int64_t)1 << 50)) return v / d;
    q = (int64_t)((double)v * inv);
    if (q * d > v) q--;
    else if ((q + 1) * d <= v) q++;
    return q;
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
        const double inv = gw >= 1 ? 1.0 / (double)gw : 0.0;                              \
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
                iy = ck_div(v, gw, inv);                                                  \
                ix = v - iy * gw;                                                         \
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

/* The same on a RoI's pair table (built once per RoI by ck_max_align_pairs): bin b's valid
   samples are entries [pf[b], pf[b+1]) in row-major order, nx[b] per row, the first numbered
   base[b]; entry e reads pixels off[4e..4e+3] with weights wt[4e..4e+3] (w1..w4).  The entry
   of sample a is a - base[b] when the bin's row holds the whole grid width (nx == gw), else
   found by one division. */
#define CK_MAX_ALIGN_BWD_TAB(T, S)                                                        \
    static ptrdiff_t ck_max_align_bwd_tab_##S(                                            \
        T* plane, ptrdiff_t nb, const int64_t* base, const ptrdiff_t* nx,                 \
        const ptrdiff_t* pf, const ptrdiff_t* off, const T* wt, int64_t gw, const T* g,   \
        const int64_t* am) {                                                              \
        ptrdiff_t b, bad = 0;                                                             \
        const double inv = gw >= 1 ? 1.0 / (double)gw : 0.0;                              \
        for (b = 0; b < nb; b++) {                                                        \
            const int64_t v = am[b];                                                      \
            const int64_t n = pf[b + 1] - pf[b], rel = v - base[b];                       \
            int64_t j;                                                                    \
            const ptrdiff_t* o;                                                           \
            const T* w;                                                                   \
            T gv;                                                                         \
            if (v == -1) continue;                                                        \
            if (v < 0 || rel < 0 || n == 0) { bad++; continue; }                          \
            if (nx[b] == gw) {                                                            \
                j = rel;                                                                  \
            } else {                                                                      \
                const int64_t ja = ck_div(rel, gw, inv), jb = rel - ja * gw;              \
                j = jb < nx[b] ? ja * nx[b] + jb : n;                                     \
            }                                                                             \
            if (j >= n) { bad++; continue; }                                              \
            o = off + 4 * (pf[b] + j);                                                    \
            w = wt + 4 * (pf[b] + j);                                                     \
            gv = g[b];                                                                    \
            plane[o[0]] += gv * w[0];                                                     \
            plane[o[1]] += gv * w[1];                                                     \
            plane[o[2]] += gv * w[2];                                                     \
            plane[o[3]] += gv * w[3];                                                     \
        }                                                                                 \
        return bad;                                                                       \
    }

/* A RoI's pair table from its axis taps (see CK_MAX_ALIGN_BWD_TAB); off/wt hold 4 entries per
   valid sample of every bin. */
#define CK_MAX_ALIGN_PAIRS(T, S)                                                          \
    static void ck_max_align_pairs_##S(                                                   \
        ptrdiff_t W, ptrdiff_t ph, ptrdiff_t pw, const ptrdiff_t* yf, const ptrdiff_t* ylo, \
        const ptrdiff_t* yhi, const T* ywl, const T* ywh, const ptrdiff_t* yidx,          \
        const ptrdiff_t* xf, const ptrdiff_t* xlo, const ptrdiff_t* xhi, const T* xwl,    \
        const T* xwh, const ptrdiff_t* xidx, int64_t gw, int64_t* base, ptrdiff_t* nx,    \
        ptrdiff_t* pf, ptrdiff_t* off, T* wt) {                                           \
        ptrdiff_t p, q, a, b, e = 0;                                                      \
        for (p = 0; p < ph; p++) {                                                        \
            for (q = 0; q < pw; q++) {                                                    \
                const ptrdiff_t k = p * pw + q;                                           \
                pf[k] = e;                                                                \
                nx[k] = xf[q + 1] - xf[q];                                                \
                base[k] = yf[p + 1] > yf[p] && nx[k] > 0                                  \
                    ? (int64_t)yidx[yf[p]] * gw + (int64_t)xidx[xf[q]] : 0;               \
                for (a = yf[p]; a < yf[p + 1]; a++) {                                     \
                    for (b = xf[q]; b < xf[q + 1]; b++, e++) {                            \
                        const T hy = ywl[a], ly = ywh[a], hx = xwl[b], lx = xwh[b];       \
                        off[4 * e] = ylo[a] * W + xlo[b];                                 \
                        off[4 * e + 1] = ylo[a] * W + xhi[b];                             \
                        off[4 * e + 2] = yhi[a] * W + xlo[b];                             \
                        off[4 * e + 3] = yhi[a] * W + xhi[b];                             \
                        wt[4 * e] = hy * hx;                                              \
                        wt[4 * e + 1] = hy * lx;                                          \
                        wt[4 * e + 2] = ly * hx;                                          \
                        wt[4 * e + 3] = ly * lx;                                          \
                    }                                                                     \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
        pf[ph * pw] = e;                                                                  \
    }

CK_AVG_ROI(float, f)
CK_AVG_ROI(double, d)
CK_AVG_BWD_BLK(float, f)
CK_AVG_BWD_BLK(double, d)
CK_MAX_ALIGN_BIN(float, int32_t, fg)
CK_MAX_ALIGN_BIN(float, int64_t, fl)

/* float, blocks of 16 channels in SSE2 lanes, each lane exactly the scalar arithmetic of
   CK_MAX_ALIGN_SCAN (same products and sums, v > best or v != v), so the same bits; the
   remaining channels by the generic scan. */
static void ck_max_align_bin_f(
    const float* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t a0, ptrdiff_t a1,
    const ptrdiff_t* ylo, const ptrdiff_t* yhi, const float* ywl, const float* ywh,
    const ptrdiff_t* yidx, ptrdiff_t b0, ptrdiff_t b1, const ptrdiff_t* xlo,
    const ptrdiff_t* xhi, const float* xwl, const float* xwh, const ptrdiff_t* xidx,
    int64_t gw, float* best, int32_t* bi, ptrdiff_t nb, float* y, int64_t* am) {
    ptrdiff_t c0 = 0;
#ifdef CK_ROI_SSE2
    const ptrdiff_t nx = b1 - b0;
    if (a1 > a0 && nx > 0) {
        for (; c0 + 16 <= C; c0 += 16) {
            __m128 bst[4];
            __m128i bix[4];
            float ob[16];
            int32_t oi[16];
            ptrdiff_t a, b, j;
            for (j = 0; j < 4; j++) {
                bst[j] = _mm_set1_ps(-INFINITY);
                bix[j] = _mm_setzero_si128();
            }
            for (a = a0; a < a1; a++) {
                for (b = b0; b < b1; b++) {
                    const float hy = ywl[a], ly = ywh[a], hx = xwl[b], lx = xwh[b];
                    const __m128 w1 = _mm_set1_ps(hy * hx), w2 = _mm_set1_ps(hy * lx);
                    const __m128 w3 = _mm_set1_ps(ly * hx), w4 = _mm_set1_ps(ly * lx);
                    const float* p1 = img + (ylo[a] * W + xlo[b]) * C + c0;
                    const float* p2 = img + (ylo[a] * W + xhi[b]) * C + c0;
                    const float* p3 = img + (yhi[a] * W + xlo[b]) * C + c0;
                    const float* p4 = img + (yhi[a] * W + xhi[b]) * C + c0;
                    const __m128i sv = _mm_set1_epi32((int32_t)((a - a0) * nx + (b - b0)));
                    for (j = 0; j < 4; j++) {
                        const __m128 v = _mm_add_ps(
                            _mm_add_ps(_mm_add_ps(_mm_mul_ps(w1, _mm_loadu_ps(p1 + 4 * j)),
                                                  _mm_mul_ps(w2, _mm_loadu_ps(p2 + 4 * j))),
                                       _mm_mul_ps(w3, _mm_loadu_ps(p3 + 4 * j))),
                            _mm_mul_ps(w4, _mm_loadu_ps(p4 + 4 * j)));
                        const __m128 m = _mm_or_ps(_mm_cmpgt_ps(v, bst[j]), _mm_cmpunord_ps(v, v));
                        const __m128i mi = _mm_castps_si128(m);
                        bst[j] = _mm_or_ps(_mm_and_ps(m, v), _mm_andnot_ps(m, bst[j]));
                        bix[j] = _mm_or_si128(_mm_and_si128(mi, sv), _mm_andnot_si128(mi, bix[j]));
                    }
                }
            }
            for (j = 0; j < 4; j++) {
                _mm_storeu_ps(ob + 4 * j, bst[j]);
                _mm_storeu_si128((__m128i*)(oi + 4 * j), bix[j]);
            }
            for (j = 0; j < 16; j++) {
                y[(c0 + j) * nb] = ob[j];
                am[(c0 + j) * nb] = (int64_t)yidx[a0 + oi[j] / nx] * gw
                                    + (int64_t)xidx[b0 + oi[j] % nx];
            }
        }
    }
#endif
    ck_max_align_bin_fg(img, W, C, a0, a1, ylo, yhi, ywl, ywh, yidx, b0, b1, xlo, xhi, xwl, xwh,
                        xidx, gw, best, bi, nb, y, am, c0);
}
CK_MAX_ALIGN_BIN(double, int64_t, d)
CK_MAX_ALIGN_BWD(float, f)
CK_MAX_ALIGN_BWD(double, d)
CK_MAX_ALIGN_BWD_TAB(float, f)
CK_MAX_ALIGN_BWD_TAB(double, d)
CK_MAX_ALIGN_PAIRS(float, f)
CK_MAX_ALIGN_PAIRS(double, d)

CK_ROI_STRICT_FP_END
#endif
