/* The lecture's other RoI aggregators on the cpu (declared in csrc/roi_variants.pxd, used by
   _roi_variants.pyx): roi_avg_pool (roi_pool's bins, mean) and roi_max_align (roi_align's
   samples, max).  Forwards work on the NHWC map (a pixel's channels contiguous, so the channel
   loops below vectorise); backwards on one (H, W) plane of grad_x, or on a pixel-major block
   of channels (roi_avg_pool, float roi_max_align).  The bins and sample taps come from the
   roi_pool / roi_align helpers (_roi_pool.roi_pool_bins, _roi_align.roi_align_axis_taps).
   The generic functions exist for float (_f) and double (_d); float roi_max_align also has
   sample-table kernels in SSE2 and AVX2 (ck_ma_*, picked by CPUID, the same bits).
   roi_max_align's argmax numbers one bin's samples; it is int8 when sampling_ratio is 1..11
   (numbers up to 120) and int32 otherwise (reference.roi_variants.argmax_dtype).  The kernels
   take it as void* with its width aw (1 or 4 bytes) and go through ck_am_put / ck_am_get, so
   one body serves both; the sample-table paths work on int32 scratch and narrow or widen a
   block at once. */
#ifndef CK_ROI_VARIANTS_H
#define CK_ROI_VARIANTS_H
#include "roi_simd.h"
CK_ROI_STRICT_FP_BEGIN

/* argmax entry i of an int8 (aw 1) or int32 (aw 4) array; the caller's numbers fit it */
static inline void ck_am_put(void* am, int aw, ptrdiff_t i, int64_t v) {
    if (aw == 1) ((int8_t*)am)[i] = (int8_t)v;
    else ((int32_t*)am)[i] = (int32_t)v;
}
static inline int64_t ck_am_get(const void* am, int aw, ptrdiff_t i) {
    return aw == 1 ? (int64_t)((const int8_t*)am)[i] : (int64_t)((const int32_t*)am)[i];
}

/* n argmax entries int8 -> int32, for the masked backward's blocks; AVX2 where the CPU has
   it (the compiler's SSE2 loop took about 1.7 instructions an entry). */
#ifdef CK_ROI_WIDE
__attribute__((target("avx2")))
static ptrdiff_t ck_am_widen_y(const int8_t* s, int32_t* d, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_si256((__m256i*)(d + i),
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(s + i))));
    return i;
}
#endif
static void ck_am_widen(const int8_t* s, int32_t* d, ptrdiff_t n) {
    ptrdiff_t i = 0;
#ifdef CK_ROI_WIDE
    if (ck_simd_level() >= 1) i = ck_am_widen_y(s, d, n);
#endif
    for (; i < n; i++) d[i] = s[i];
}

/* roi_avg_pool forward, one RoI: bin (p, q) = pixels [hs[p], he[p]) x [ws[q], we[q]) of the
   NHWC image, summed row-major per channel, divided by their number; an empty bin gives 0.
   y: the RoI's (C, ph*pw) output; acc: C scratch.  Its loops start on 64-byte lines: the
   channel loop is ~26 bytes, and where the module's layout put it across a line the forward
   ran ~35 % slower on Zen 4 (bench/RESULTS.md, ninth session). */
#define CK_AVG_ROI(T, S)                                                                  \
    __attribute__((optimize("align-loops=64")))                                           \
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
        ck_am_put(am, aw, (c0 + c) * nb, (int64_t)yidx[a0 + s / nx] * gw              \
                                         + (int64_t)xidx[b0 + s % nx]);               \
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
        int64_t gw, T* best, IT* bi, ptrdiff_t nb, T* y, void* am, int aw, ptrdiff_t cb) {\
        ptrdiff_t nx = b1 - b0, a, b, c, c0;                                              \
        if (a1 <= a0 || nx <= 0) {                                                        \
            for (c = cb; c < C; c++) { y[c * nb] = 0; ck_am_put(am, aw, c * nb, -1); }    \
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
        int64_t gw, const T* g, const void* am, int aw) {                                 \
        ptrdiff_t p, q, bad = 0;                                                          \
        const double inv = gw >= 1 ? 1.0 / (double)gw : 0.0;                              \
        for (p = 0; p < ph; p++) {                                                        \
            for (q = 0; q < pw; q++) {                                                    \
                const int64_t v = ck_am_get(am, aw, p * pw + q);                          \
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
        const void* am, int aw) {                                                         \
        ptrdiff_t b, bad = 0;                                                             \
        const double inv = gw >= 1 ? 1.0 / (double)gw : 0.0;                              \
        for (b = 0; b < nb; b++) {                                                        \
            const int64_t v = ck_am_get(am, aw, b);                                       \
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
    int64_t gw, float* best, int32_t* bi, ptrdiff_t nb, float* y, void* am, int aw) {
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
                ck_am_put(am, aw, (c0 + j) * nb, (int64_t)yidx[a0 + oi[j] / nx] * gw
                                                 + (int64_t)xidx[b0 + oi[j] % nx]);
            }
        }
    }
#endif
    ck_max_align_bin_fg(img, W, C, a0, a1, ylo, yhi, ywl, ywh, yidx, b0, b1, xlo, xhi, xwl, xwh,
                        xidx, gw, best, bi, nb, y, am, aw, c0);
}
CK_MAX_ALIGN_BIN(double, int64_t, d)

/* float roi_max_align forward, one RoI at a time on a sample table built once per RoI
   (ck_max_align_table_f): bin b's valid samples are s in [sf[b], sf[b+1]), row-major, sample
   s reads pixels so[4s..4s+3] (offsets into the NHWC image, times C) with weights
   sw[4s..4s+3] (w1..w4 = hy*hx, hy*lx, ly*hx, ly*lx, as CK_MAX_ALIGN_SCAN forms them) and is
   numbered base[b] + rel[s] (rel an int32, so it rides in the lanes beside the value).  The
   scan is CK_MAX_ALIGN_SCAN's, lane for lane: value ((w1*v1 + w2*v2) + w3*v3) + w4*v4, taken
   when greater or NaN; registers hold 4 vectors of channels (16 on SSE2, 32 on AVX2). */
#define CK_MA_CK_X_TAKE(v, b) _mm_or_ps(_mm_cmpgt_ps(v, b), _mm_cmpunord_ps(v, v))
#define CK_MA_CK_Y_TAKE(v, b) _mm256_or_ps(_mm256_cmp_ps(v, b, _CMP_GT_OQ),                   \
                                        _mm256_cmp_ps(v, v, _CMP_UNORD_Q))
/* the new best of lanes m: a blend (the NaN-aware scan), or max(v, b) = v > b ? v : b (the
   finite scan, where m is exactly v > b) */
#define CK_MA_SEL_X(m, v, b) CK_X_SEL(m, v, b)
#define CK_MA_SEL_Y(m, v, b) CK_Y_SEL(m, v, b)
#define CK_MA_MAX_X(m, v, b) _mm_max_ps(v, b)
#define CK_MA_MAX_Y(m, v, b) _mm256_max_ps(v, b)
/* sample s's value for vector j of the block (pointers from im = img + c) */
#define CK_MA_FWD_VAL(X, j)                                                               \
    X##_ADD(X##_ADD(X##_ADD(X##_MUL(w1, X##_LD(p1 + (j) * X##_L)),                        \
                            X##_MUL(w2, X##_LD(p2 + (j) * X##_L))),                       \
                    X##_MUL(w3, X##_LD(p3 + (j) * X##_L))),                               \
            X##_MUL(w4, X##_LD(p4 + (j) * X##_L)))
#define CK_MA_FWD_TAPS(X)                                                                 \
    const float* p1 = im + so[4 * s];                                                     \
    const float* p2 = im + so[4 * s + 1];                                                 \
    const float* p3 = im + so[4 * s + 2];                                                 \
    const float* p4 = im + so[4 * s + 3];                                                 \
    const X##_V w1 = X##_SET1(sw[4 * s]), w2 = X##_SET1(sw[4 * s + 1]);                   \
    const X##_V w3 = X##_SET1(sw[4 * s + 2]), w4 = X##_SET1(sw[4 * s + 3]);
/* The running best starts at the bin's first sample (number 0 relative to the bin): the
   same as starting at -inf, which that sample replaces unless it is -inf itself (then the
   best stays -inf with winner 0 either way). */
#define CK_MA_FWD_STEP(X, R, TAKE, SEL)                                                   \
    {                                                                                     \
        X##_V bst[R];                                                                     \
        X##_IV bix[R];                                                                    \
        const float* im = img + c;                                                        \
        int j;                                                                            \
        s = s0;                                                                           \
        {                                                                                 \
            CK_MA_FWD_TAPS(X)                                                             \
            for (j = 0; j < R; j++) {                                                     \
                bst[j] = CK_MA_FWD_VAL(X, j);                                             \
                bix[j] = X##_ISET1(0);                                                    \
            }                                                                             \
        }                                                                                 \
        for (s = s0 + 1; s < s1; s++) {                                                   \
            CK_MA_FWD_TAPS(X)                                                             \
            const X##_IV sv = X##_ISET1(rel[s]);                                          \
            for (j = 0; j < R; j++) {                                                     \
                const X##_V v = CK_MA_FWD_VAL(X, j);                                      \
                const X##_M m = TAKE(v, bst[j]);                                          \
                bst[j] = SEL(m, v, bst[j]);                                               \
                bix[j] = X##_ISEL(m, sv, bix[j]);                                         \
            }                                                                             \
        }                                                                                 \
        for (j = 0; j < R; j++) {                                                         \
            X##_ST(tb + (c - c0) + j * X##_L, bst[j]);                                    \
            X##_IST(ti + (c - c0) + j * X##_L, bix[j]);                                   \
        }                                                                                 \
    }
/* one bin (samples [s0, s1), at least one), channels [c0, c1) -> tb, ti (bin-major rows,
   channel c at c - c0); returns the channels done (the rest: the scalar scan) */
#define CK_MA_FWD_BODY(X, TAKE, SEL)                                                      \
    {                                                                                     \
        ptrdiff_t c, s;                                                                   \
        for (c = c0; c + 4 * X##_L <= c1; c += 4 * X##_L) CK_MA_FWD_STEP(X, 4, TAKE, SEL) \
        for (; c + X##_L <= c1; c += X##_L) CK_MA_FWD_STEP(X, 1, TAKE, SEL)               \
        return c;                                                                         \
    }
#define CK_MA_FWD_ARGS const float* img, ptrdiff_t s0, ptrdiff_t s1, const ptrdiff_t* so,  \
    const float* sw, const int32_t* rel, ptrdiff_t c0, ptrdiff_t c1, float* tb, int32_t* ti
/* a zero the compiler cannot see (it would turn the blends of the second sample into a
   compare and an and: two instructions for one) */
#if defined(__GNUC__) || defined(__clang__)
#define CK_MA_OPAQUE(v) __asm__("" : "+x"(v))
/* a pointer the compiler cannot follow across loop turns (else it keeps every sum of a row
   and a column term, times 4 vectors, as its own induction variable, spilled) */
#define CK_MA_OPAQUE_P(p) __asm__("" : "+r"(p))
#else
#define CK_MA_OPAQUE(v) (void)0
#define CK_MA_OPAQUE_P(p) (void)0
#endif
#define CK_X_OPAQUE CK_MA_OPAQUE
#define CK_Y_OPAQUE CK_MA_OPAQUE
#define CK_V_OPAQUE CK_MA_OPAQUE
#define CK_Z_OPAQUE CK_AVX512_PIN
/* a bin of exactly 4 samples (sampling_ratio 2), the samples unrolled: the same products,
   sums and tests as CK_MA_FWD_STEP(X, 4, ..), in the same order, without its per-sample
   loop and per-block setup (a 4-sample bin spent over a third of its scan there); returns
   the channels done in blocks of 4 vectors */
#define CK_MA_PT_TAB(k, i) (im + o[4 * (k) + (i)])
/* sample k's weight i and number as vectors (rv0: for the code of sample 0's unused branch): broadcast where used (a store into tb may alias
   w, so the compiler reloads them every block), or read from the variables CK_MA_WV_INIT
   broadcast once a bin (the AVX-512VL scan, which has the registers to keep them) */
#define CK_MA_W_TAB(X, k, i) X##_SET1(w[4 * (k) + (i)])
#define CK_MA_R_TAB(X, k) X##_ISET1(rel[s0 + (k)])
#define CK_MA_W_REG(X, k, i) wv##k##i
#define CK_MA_R_REG(X, k) rv##k
#define CK_MA_WV_INIT4(X, k)                                                              \
    const X##_V wv##k##0 = X##_SET1(w[4 * k]), wv##k##1 = X##_SET1(w[4 * k + 1]);         \
    const X##_V wv##k##2 = X##_SET1(w[4 * k + 2]), wv##k##3 = X##_SET1(w[4 * k + 3]);
#define CK_MA_WV_INIT(X)                                                                  \
    CK_MA_WV_INIT4(X, 0) CK_MA_WV_INIT4(X, 1) CK_MA_WV_INIT4(X, 2) CK_MA_WV_INIT4(X, 3)  \
    const X##_IV rv0 = X##_ISET1(rel[s0]), rv1 = X##_ISET1(rel[s0 + 1]);                  \
    const X##_IV rv2 = X##_ISET1(rel[s0 + 2]), rv3 = X##_ISET1(rel[s0 + 3]);
#define CK_MA_FWD4_SAMPLE_W(X, k, FIRST, TAKE, SEL, PT, WT, RT)                           \
    {                                                                                     \
        const float* p1 = PT(k, 0);                                                       \
        const float* p2 = PT(k, 1);                                                       \
        const float* p3 = PT(k, 2);                                                       \
        const float* p4 = PT(k, 3);                                                       \
        const X##_V w1 = WT(X, k, 0), w2 = WT(X, k, 1);                                   \
        const X##_V w3 = WT(X, k, 2), w4 = WT(X, k, 3);                                   \
        for (j = 0; j < 4; j++) {                                                         \
            const X##_V v = CK_MA_FWD_VAL(X, j);                                          \
            if (FIRST) {                                                                  \
                bst[j] = v;                                                               \
                bix[j] = z0;                                                              \
            } else {                                                                      \
                const X##_M m = TAKE(v, bst[j]);                                          \
                bst[j] = SEL(m, v, bst[j]);                                               \
                bix[j] = X##_ISEL(m, RT(X, k), bix[j]);                                   \
            }                                                                             \
        }                                                                                 \
    }
#define CK_MA_FWD4_BODY_P(X, TAKE, SEL, IST, PT, PTINIT, PTSET, PTSTEP)                  \
    CK_MA_FWD4_BODY_PW(X, TAKE, SEL, IST, PT, PTINIT, PTSET, PTSTEP, CK_MA_W_TAB, CK_MA_R_TAB)
#define CK_MA_FWD4_BODY_PW(X, TAKE, SEL, IST, PT, PTINIT, PTSET, PTSTEP, WT, RT)          \
    {                                                                                     \
        const ptrdiff_t* o = so + 4 * s0;                                                 \
        const float* w = sw + 4 * s0;                                                     \
        ptrdiff_t c;                                                                      \
        PTINIT                                                                            \
        (void)s1;                                                                         \
        (void)o;                                                                          \
        for (c = c0; c + 4 * X##_L <= c1; c += 4 * X##_L, PTSTEP) {                       \
            X##_V bst[4];                                                                 \
            X##_IV bix[4], z0 = X##_ISET1(0);                                             \
            const float* im = img + c;                                                    \
            int j;                                                                        \
            (void)im;                                                                     \
            PTSET                                                                         \
            X##_OPAQUE(z0);                                                               \
            CK_MA_FWD4_SAMPLE_W(X, 0, 1, TAKE, SEL, PT, WT, RT)                           \
            CK_MA_FWD4_SAMPLE_W(X, 1, 0, TAKE, SEL, PT, WT, RT)                           \
            CK_MA_FWD4_SAMPLE_W(X, 2, 0, TAKE, SEL, PT, WT, RT)                           \
            CK_MA_FWD4_SAMPLE_W(X, 3, 0, TAKE, SEL, PT, WT, RT)                           \
            for (j = 0; j < 4; j++) X##_ST(tb + (c - c0) + j * X##_L, bst[j]);            \
            IST;                                                                          \
        }                                                                                 \
        return c;                                                                         \
    }
#define CK_MA_FWD4_BODY(X, TAKE, SEL, IST)                                                \
    CK_MA_FWD4_BODY_P(X, TAKE, SEL, IST, CK_MA_PT_TAB, , , (void)0)
/* a 2 x 2 bin (the table's flag): sample k = 2a + b reads corner i = 2h + l at row term
   r[a][h] (so of sample 2a, corner 2h) plus column term d[b][l] (so[4b + l] - so[0]): the
   same offsets as the table's, from 7 numbers held in registers across the channel blocks
   instead of 16 loads a block */
#define CK_MA_PT_PROD(k, i)                                                               \
    (((k) >> 1 ? ((i) >> 1 ? q1h : q1l) : ((i) >> 1 ? q0h : q0l))                         \
     + ((k) & 1 ? ((i) & 1 ? d1h : d1l) : ((i) & 1 ? d0h : 0)))
/* the 4 row pointers step with the channel blocks */
#define CK_MA_PT_PROD_INIT                                                                \
    const float *q0l = img + c0 + r0l, *q0h = img + c0 + r0h;                             \
    const float *q1l = img + c0 + r1l, *q1h = img + c0 + r1h;
#define CK_MA_PT_PROD_SET                                                                 \
    CK_MA_OPAQUE_P(q0l); CK_MA_OPAQUE_P(q0h); CK_MA_OPAQUE_P(q1l); CK_MA_OPAQUE_P(q1h);  \
    CK_MA_OPAQUE_P(d0h); CK_MA_OPAQUE_P(d1l); CK_MA_OPAQUE_P(d1h);
#define CK_MA_PT_PROD_STEP(X)                                                             \
    q0l += 4 * X##_L, q0h += 4 * X##_L, q1l += 4 * X##_L, q1h += 4 * X##_L
#define CK_MA_PROD_TERMS                                                                  \
    const ptrdiff_t* so4 = so + 4 * s0;                                                   \
    const ptrdiff_t r0l = so4[0], r0h = so4[2], r1l = so4[8], r1h = so4[10];              \
    ptrdiff_t d0h = so4[1] - so4[0], d1l = so4[4] - so4[0], d1h = so4[5] - so4[0];
#define CK_MA_FWD4_IST32(X)                                                               \
    for (j = 0; j < 4; j++) X##_IST(ti + (c - c0) + j * X##_L, bix[j])
/* _f: for an image without NaN/inf, where no sample value is NaN (weights in [0, 1], so
   every product is finite, and a sum of finite terms that overflows stays one infinity):
   "greater" alone is the same test. */
#ifdef CK_ROI_SSE2
static ptrdiff_t ck_ma_fwd_x(CK_MA_FWD_ARGS) CK_MA_FWD_BODY(CK_X, CK_MA_CK_X_TAKE, CK_MA_SEL_X)
static ptrdiff_t ck_ma_fwd_xf(CK_MA_FWD_ARGS) CK_MA_FWD_BODY(CK_X, CK_X_GT, CK_MA_MAX_X)
#endif
#ifdef CK_ROI_WIDE
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_fwd_y(CK_MA_FWD_ARGS) CK_MA_FWD_BODY(CK_Y, CK_MA_CK_Y_TAKE, CK_MA_SEL_Y)
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_fwd_yf(CK_MA_FWD_ARGS) CK_MA_FWD_BODY(CK_Y, CK_Y_GT, CK_MA_MAX_Y)
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_fwd4_y(CK_MA_FWD_ARGS)
    CK_MA_FWD4_BODY(CK_Y, CK_MA_CK_Y_TAKE, CK_MA_SEL_Y, CK_MA_FWD4_IST32(CK_Y))
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_fwd4_yf(CK_MA_FWD_ARGS)
    CK_MA_FWD4_BODY(CK_Y, CK_Y_GT, CK_MA_MAX_Y, CK_MA_FWD4_IST32(CK_Y))
/* _b: an int8 argmax's numbers (bs + the winner's, which fit an int8: packing never
   saturates) straight into the bin's row of bytes t8 (channel c at c - c0) */
#define CK_MA_FWD4_IST8                                                                   \
    _mm256_storeu_si256(                                                                  \
        (__m256i*)(t8 + (c - c0)),                                                        \
        _mm256_permutevar8x32_epi32(                                                      \
            _mm256_packs_epi16(                                                           \
                _mm256_packs_epi32(_mm256_add_epi32(bv, bix[0]), _mm256_add_epi32(bv, bix[1])), \
                _mm256_packs_epi32(_mm256_add_epi32(bv, bix[2]), _mm256_add_epi32(bv, bix[3]))), \
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)))
#define CK_MA_FWD4B_ARGS const float* img, ptrdiff_t s0, ptrdiff_t s1, const ptrdiff_t* so, \
    const float* sw, const int32_t* rel, ptrdiff_t c0, ptrdiff_t c1, float* tb, int8_t* t8, \
    int32_t bs
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_fwd4b_y(CK_MA_FWD4B_ARGS) {
    const __m256i bv = _mm256_set1_epi32(bs);
    CK_MA_FWD4_BODY(CK_Y, CK_MA_CK_Y_TAKE, CK_MA_SEL_Y, CK_MA_FWD4_IST8)
}
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_fwd4b_yf(CK_MA_FWD4B_ARGS) {
    const __m256i bv = _mm256_set1_epi32(bs);
    CK_MA_FWD4_BODY(CK_Y, CK_Y_GT, CK_MA_MAX_Y, CK_MA_FWD4_IST8)
}
__attribute__((target("avx2"), always_inline))
static inline ptrdiff_t ck_ma_fwd4pb_y(CK_MA_FWD4B_ARGS) {
    const __m256i bv = _mm256_set1_epi32(bs);
    CK_MA_PROD_TERMS
    CK_MA_FWD4_BODY_PW(CK_Y, CK_MA_CK_Y_TAKE, CK_MA_SEL_Y, CK_MA_FWD4_IST8, CK_MA_PT_PROD,
                       CK_MA_PT_PROD_INIT, CK_MA_PT_PROD_SET, CK_MA_PT_PROD_STEP(CK_Y),
                       CK_MA_W_TAB, CK_MA_R_TAB)
}
__attribute__((target("avx2"), always_inline))
static inline ptrdiff_t ck_ma_fwd4pb_yf(CK_MA_FWD4B_ARGS) {
    const __m256i bv = _mm256_set1_epi32(bs);
    CK_MA_PROD_TERMS
    CK_MA_FWD4_BODY_PW(CK_Y, CK_Y_GT, CK_MA_MAX_Y, CK_MA_FWD4_IST8, CK_MA_PT_PROD,
                       CK_MA_PT_PROD_INIT, CK_MA_PT_PROD_SET, CK_MA_PT_PROD_STEP(CK_Y),
                       CK_MA_W_TAB, CK_MA_R_TAB)
}
/* the same scans built for AVX-512VL (ymm vectors, EVEX encodings: 32 registers at the 256-bit
   rate), the 16 weights and 3 numbers of a bin broadcast once into registers instead of once
   a 32-channel block: the same operations in the same order, so the same bits */
/* CK_V: the CK_Y operations, but the tests give a mask register (vcmpps k: no blendv, which
   only reaches ymm0-15); the emulated build (no AVX-512 instruction) keeps CK_Y's */
#define CK_V_L CK_Y_L
#define CK_V_V CK_Y_V
#define CK_V_IV CK_Y_IV
#define CK_V_LD CK_Y_LD
#define CK_V_ST CK_Y_ST
#define CK_V_ADD CK_Y_ADD
#define CK_V_MUL CK_Y_MUL
#define CK_V_SET1 CK_Y_SET1
#define CK_V_ISET1 CK_Y_ISET1
#if CK_AVX512_EMULATED
#define CK_V_M CK_Y_M
#define CK_V_ISEL CK_Y_ISEL
#define CK_MA_CK_V_TAKE CK_MA_CK_Y_TAKE
#define CK_MA_SEL_V CK_MA_SEL_Y
#define CK_V_GT CK_Y_GT
#else
#define CK_V_M __mmask8
#define CK_V_ISEL(m, a, b) _mm256_mask_mov_epi32(b, m, a)
#define CK_MA_CK_V_TAKE(v, b) ((__mmask8)(_mm256_cmp_ps_mask(v, b, _CMP_GT_OQ)               \
                                          | _mm256_cmp_ps_mask(v, v, _CMP_UNORD_Q)))
#define CK_MA_SEL_V(m, v, b) _mm256_mask_mov_ps(b, m, v)
#define CK_V_GT(a, b) _mm256_cmp_ps_mask(a, b, _CMP_GT_OQ)
#endif
#define CK_MA_FWD4PV(NAME, TAKE, SEL)                                                     \
    CK_AVX512VL_TARGET __attribute__((always_inline))                                     \
    static inline ptrdiff_t NAME(CK_MA_FWD4B_ARGS) {                                      \
        const __m256i bv = _mm256_set1_epi32(bs);                                         \
        CK_MA_PROD_TERMS                                                                  \
        CK_MA_FWD4_BODY_PW(CK_V, TAKE, SEL, CK_MA_FWD4_IST8, CK_MA_PT_PROD,               \
                           CK_MA_PT_PROD_INIT CK_MA_WV_INIT(CK_V), CK_MA_PT_PROD_SET,     \
                           CK_MA_PT_PROD_STEP(CK_V), CK_MA_W_REG, CK_MA_R_REG)            \
    }
CK_MA_FWD4PV(ck_ma_fwd4pv_y, CK_MA_CK_V_TAKE, CK_MA_SEL_V)
CK_MA_FWD4PV(ck_ma_fwd4pv_yf, CK_V_GT, CK_MA_MAX_Y)
/* the same on zmm vectors (64-channel blocks: half the instructions of the ymm scan); the
   numbers narrowed with saturation as CK_MA_FWD4_IST8's packs do (SIMDe has vpmovsdb) */
#define CK_MA_CK_Z_TAKE(v, b) ((__mmask16)(_mm512_cmp_ps_mask(v, b, _CMP_GT_OQ)              \
                                           | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)))
#define CK_MA_SEL_Z(m, v, b) CK_Z_SEL(m, v, b)
#define CK_MA_MAX_Z(m, v, b) _mm512_max_ps(v, b)
#define CK_MA_FWD4_IST8Z                                                                  \
    for (j = 0; j < 4; j++)                                                               \
        _mm_storeu_si128((__m128i*)(t8 + (c - c0) + 16 * j),                             \
                         _mm512_cvtsepi32_epi8(_mm512_add_epi32(bv, bix[j])))
#define CK_MA_FWD4PZ(NAME, TAKE, SEL)                                                     \
    CK_AVX512_TARGET __attribute__((always_inline))                                       \
    static inline ptrdiff_t NAME(CK_MA_FWD4B_ARGS) {                                      \
        const __m512i bv = _mm512_set1_epi32(bs);                                         \
        CK_MA_PROD_TERMS                                                                  \
        CK_MA_FWD4_BODY_PW(CK_Z, TAKE, SEL, CK_MA_FWD4_IST8Z, CK_MA_PT_PROD,              \
                           CK_MA_PT_PROD_INIT CK_MA_WV_INIT(CK_Z), CK_MA_PT_PROD_SET,     \
                           CK_MA_PT_PROD_STEP(CK_Z), CK_MA_W_REG, CK_MA_R_REG)            \
    }
CK_MA_FWD4PZ(ck_ma_fwd4pz_y, CK_MA_CK_Z_TAKE, CK_MA_SEL_Z)
CK_MA_FWD4PZ(ck_ma_fwd4pz_yf, CK_Z_GT, CK_MA_MAX_Z)
/* a run of 2 x 2 bins from bin b on (the scan of a block of channels that is a multiple of
   32): the kernel inlined in the loop over bins, which saves a call and its ~40
   instructions of arguments, prologue and epilogue a bin; returns the first bin it did not
   scan */
#define CK_MA_FWD4PB_RUN(NAME, KERNEL, TARGET)                                            \
    TARGET                                                                                \
    static ptrdiff_t NAME(const float* img, ptrdiff_t b, ptrdiff_t nb, const ptrdiff_t* sf, \
                          const ptrdiff_t* so, const float* sw, const int32_t* rel,       \
                          const int32_t* base, const uint8_t* prod, ptrdiff_t c0,         \
                          ptrdiff_t c1, float* tb, int8_t* t8r) {                         \
        for (; b < nb && prod[b] && sf[b + 1] - sf[b] == 4; b++)                          \
            KERNEL(img, sf[b], sf[b + 1], so, sw, rel, c0, c1, tb + b * CK_LD,            \
                   t8r + b * CK_LD, base[b]);                                             \
        return b;                                                                         \
    }
CK_MA_FWD4PB_RUN(ck_ma_fwd4pb_run_y, ck_ma_fwd4pb_y, __attribute__((target("avx2"))))
CK_MA_FWD4PB_RUN(ck_ma_fwd4pb_run_yf, ck_ma_fwd4pb_yf, __attribute__((target("avx2"))))
CK_MA_FWD4PB_RUN(ck_ma_fwd4pv_run_y, ck_ma_fwd4pv_y, CK_AVX512VL_TARGET)
CK_MA_FWD4PB_RUN(ck_ma_fwd4pv_run_yf, ck_ma_fwd4pv_yf, CK_AVX512VL_TARGET)
CK_MA_FWD4PB_RUN(ck_ma_fwd4pz_run_y, ck_ma_fwd4pz_y, CK_AVX512_TARGET)
CK_MA_FWD4PB_RUN(ck_ma_fwd4pz_run_yf, ck_ma_fwd4pz_yf, CK_AVX512_TARGET)
/* 1 where the AVX-512VL scans may run: ck_simd_level 2 (AVX-512F, or the emulated build's
   AVX2 + FMA, which builds them as AVX2) and not CONVKIT_DISABLE_AVX512=1 (read once) */
static int ck_ma_vl(void) {
    static int known = -1;  /* benign race: every thread computes the same value */
    if (known < 0) {
        __builtin_cpu_init();
        known = (CK_AVX512_EMULATED || __builtin_cpu_supports("avx512vl"))
                && ck_avx512_env_allows();
    }
    return known && ck_simd_level() >= 2;
}
/* (C, nb) bytes from bin-major rows: dst[c*ldd + b] = src[b*lds + c], b < rows, c < cols;
   blocks of 8 bins x 16 channels in SSE2 registers (three rounds of byte unpacks: vector k
   ends as channels 2k, 2k+1, 8 bins each), the last block of bins overlapping the one
   before (it rewrites the same bytes); VEX encodings (non-destructive unpacks, no copies) */
__attribute__((target("avx2")))
static void ck_ma_tr_b(const int8_t* src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                       int8_t* dst, ptrdiff_t ldd) {
    ptrdiff_t c = 0, b, i;
    if (rows >= 8)
        for (; c + 16 <= cols; c += 16)
            for (b = 0; b < rows; b += 8) {
                const ptrdiff_t b8 = b + 8 <= rows ? b : rows - 8;
                __m128i x[8], t[8], u[8];
                for (i = 0; i < 8; i++)
                    x[i] = _mm_loadu_si128((const __m128i*)(src + (b8 + i) * lds + c));
                for (i = 0; i < 4; i++) {
                    t[2 * i] = _mm_unpacklo_epi8(x[i], x[i + 4]);
                    t[2 * i + 1] = _mm_unpackhi_epi8(x[i], x[i + 4]);
                }
                for (i = 0; i < 4; i++) {
                    u[2 * i] = _mm_unpacklo_epi8(t[i], t[i + 4]);
                    u[2 * i + 1] = _mm_unpackhi_epi8(t[i], t[i + 4]);
                }
                for (i = 0; i < 4; i++) {
                    x[2 * i] = _mm_unpacklo_epi8(u[i], u[i + 4]);
                    x[2 * i + 1] = _mm_unpackhi_epi8(u[i], u[i + 4]);
                }
                for (i = 0; i < 8; i++) {
                    _mm_storel_epi64((__m128i*)(dst + (c + 2 * i) * ldd + b8), x[i]);
                    _mm_storeh_pd((double*)(dst + (c + 2 * i + 1) * ldd + b8),
                                  _mm_castsi128_pd(x[i]));
                }
            }
    for (; c < cols; c++)
        for (b = 0; b < rows; b++) dst[c * ldd + b] = src[b * lds + c];
}
#endif

#if defined(CK_ROI_SSE2) && PTRDIFF_MAX == INT64_MAX
/* ck_max_align_table_f's fill (after its checks) in SSE2 registers, for a RoI of at most
   CK_MA_TAB_T taps on each axis: each tap's terms are formed once per RoI (x: the column
   offsets (xlo*C, xhi*C), the weights (hx, lx, hx, lx), idx; y: the row offsets (ylo*W*C
   twice, yhi*W*C twice), (hy, hy, ly, ly), idx*gw), so a sample is two 64-bit adds (the
   same integers as (rl + cl) * C), one product (the same float products) and an add for
   rel; a bin of 2 x 2 taps (sampling_ratio 2) is written unrolled.  The scalar fill spent
   ~54 instructions a sample and ~30 more a row of a bin.  full 0: sf, rel, base only. */
#define CK_MA_TAB_T 64
typedef struct { __m128i o; __m128 w; int64_t r; } ck_ma_xtap;
typedef struct { __m128i l, h; __m128 w; int64_t r; } ck_ma_ytap;
/* sample i of a bin: y tap Y, x tap X; rel ry + X->r */
#define CK_MA_TAB_SAMPLE(i, Y, X, ry)                                                     \
    {                                                                                     \
        if (full) {                                                                       \
            _mm_storeu_si128((__m128i*)(o + 4 * (i)), _mm_add_epi64((Y)->l, (X)->o));     \
            _mm_storeu_si128((__m128i*)(o + 4 * (i) + 2), _mm_add_epi64((Y)->h, (X)->o)); \
            _mm_storeu_ps(w + 4 * (i), _mm_mul_ps((Y)->w, (X)->w));                       \
        }                                                                                 \
        r[i] = (int32_t)((ry) + (X)->r);                                                  \
    }
/* the bins of other tap counts (kept out of the 2 x 2 path's registers) */
__attribute__((noinline))
static void ck_ma_tab_bin(const ck_ma_ytap* yt, ptrdiff_t ny, const ck_ma_xtap* xt,
                          ptrdiff_t nx, ptrdiff_t* o, float* w, int32_t* r, int full) {
    ptrdiff_t a, b;
    for (a = 0; a < ny; a++, o += 4 * nx, w += 4 * nx, r += nx) {
        const int64_t ry = yt[a].r - yt[0].r - xt[0].r;
        for (b = 0; b < nx; b++) CK_MA_TAB_SAMPLE(b, yt + a, xt + b, ry)
    }
}
__attribute__((always_inline))
static inline ptrdiff_t ck_max_align_table_sse_w(
    ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph, ptrdiff_t pw, const ptrdiff_t* yf,
    const ptrdiff_t* ylo, const ptrdiff_t* yhi, const float* ywl, const float* ywh,
    const ptrdiff_t* yidx, const ptrdiff_t* xf, const ptrdiff_t* xlo, const ptrdiff_t* xhi,
    const float* xwl, const float* xwh, const ptrdiff_t* xidx, int64_t gw,
    ptrdiff_t* sf, ptrdiff_t* so, float* sw, int32_t* rel, int32_t* base, int full) {
    ck_ma_xtap xt[CK_MA_TAB_T];
    ck_ma_ytap yt[CK_MA_TAB_T];
    uint8_t* prod = (uint8_t*)(base + ph * pw);
    const ptrdiff_t x0 = xf[0], y0 = yf[0];
    ptrdiff_t p, q, a, b, n = 0;
    for (b = 0; b < xf[pw] - x0; b++) {
        if (full) {
            xt[b].o = _mm_set_epi64x((long long)(xhi[x0 + b] * C), (long long)(xlo[x0 + b] * C));
            xt[b].w = _mm_setr_ps(xwl[x0 + b], xwh[x0 + b], xwl[x0 + b], xwh[x0 + b]);
        }
        xt[b].r = (int64_t)xidx[x0 + b];
    }
    for (a = 0; a < yf[ph] - y0; a++) {
        if (full) {
            yt[a].l = _mm_set1_epi64x((long long)(ylo[y0 + a] * W * C));
            yt[a].h = _mm_set1_epi64x((long long)(yhi[y0 + a] * W * C));
            yt[a].w = _mm_setr_ps(ywl[y0 + a], ywl[y0 + a], ywh[y0 + a], ywh[y0 + a]);
        }
        yt[a].r = (int64_t)yidx[y0 + a] * gw;
    }
    for (p = 0; p < ph; p++) {
        const ck_ma_ytap* ya = yt + (yf[p] - y0);
        const ptrdiff_t ny = yf[p + 1] - yf[p];
        for (q = 0; q < pw; q++) {
            const ck_ma_xtap* xb = xt + (xf[q] - x0);
            const ptrdiff_t k = p * pw + q, nx = xf[q + 1] - xf[q];
            sf[k] = n;
            base[k] = -1;
            if (full) prod[k] = (uint8_t)(ny == 2 && nx == 2);   /* (only the forward reads it) */
            if (ny <= 0 || nx <= 0) continue;
            base[k] = (int32_t)(ya->r + xb->r);
            if (ny == 2 && nx == 2) {
                ptrdiff_t* o = so + 4 * n;
                float* w = sw + 4 * n;
                int32_t* r = rel + n;
                const int64_t r1 = ya[1].r - ya[0].r;
                r[0] = 0;
                r[1] = (int32_t)(xb[1].r - xb[0].r);
                r[2] = (int32_t)r1;
                r[3] = (int32_t)(r1 + r[1]);
                if (full) {
                    _mm_storeu_si128((__m128i*)o, _mm_add_epi64(ya[0].l, xb[0].o));
                    _mm_storeu_si128((__m128i*)(o + 2), _mm_add_epi64(ya[0].h, xb[0].o));
                    _mm_storeu_si128((__m128i*)(o + 4), _mm_add_epi64(ya[0].l, xb[1].o));
                    _mm_storeu_si128((__m128i*)(o + 6), _mm_add_epi64(ya[0].h, xb[1].o));
                    _mm_storeu_si128((__m128i*)(o + 8), _mm_add_epi64(ya[1].l, xb[0].o));
                    _mm_storeu_si128((__m128i*)(o + 10), _mm_add_epi64(ya[1].h, xb[0].o));
                    _mm_storeu_si128((__m128i*)(o + 12), _mm_add_epi64(ya[1].l, xb[1].o));
                    _mm_storeu_si128((__m128i*)(o + 14), _mm_add_epi64(ya[1].h, xb[1].o));
                    _mm_storeu_ps(w, _mm_mul_ps(ya[0].w, xb[0].w));
                    _mm_storeu_ps(w + 4, _mm_mul_ps(ya[0].w, xb[1].w));
                    _mm_storeu_ps(w + 8, _mm_mul_ps(ya[1].w, xb[0].w));
                    _mm_storeu_ps(w + 12, _mm_mul_ps(ya[1].w, xb[1].w));
                }
            } else
                ck_ma_tab_bin(ya, ny, xb, nx, so + 4 * n, sw + 4 * n, rel + n, full);
            n += ny * nx;
        }
    }
    sf[ph * pw] = n;
    return n;
}
#undef CK_MA_TAB_SAMPLE
#endif

/* One RoI's sample table (see above) from its axis taps; sf: nb + 1 entries, so/sw: 4 per
   sample, rel: 1 per sample, base: nb (-1 for a bin without samples).  Returns the number of
   samples n (written only when n <= cap), or -1 when a sample's number relative to its bin's
   first does not fit an int32 (the caller takes the per-bin path).  so NULL: sf, rel and
   base only (so, sw are not written).  base is followed by nb bytes (the caller allocates
   them): 1 where bin b's 4 samples are 2 y taps x 2 x taps with so written (its offsets
   then are row + column terms: ck_ma_fwd4p_*), else 0. */
static ptrdiff_t ck_max_align_table_f(
    ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph, ptrdiff_t pw, const ptrdiff_t* yf,
    const ptrdiff_t* ylo, const ptrdiff_t* yhi, const float* ywl, const float* ywh,
    const ptrdiff_t* yidx, const ptrdiff_t* xf, const ptrdiff_t* xlo, const ptrdiff_t* xhi,
    const float* xwl, const float* xwh, const ptrdiff_t* xidx, int64_t gw, ptrdiff_t cap,
    ptrdiff_t* sf, ptrdiff_t* so, float* sw, int32_t* rel, int32_t* base) {
    ptrdiff_t p, q, a, b, n = 0;
    for (p = 0; p < ph; p++)
        for (q = 0; q < pw; q++) {
            const ptrdiff_t ny = yf[p + 1] - yf[p], nx = xf[q + 1] - xf[q];
            if (ny > 0 && nx > 0) {
                const int64_t last = (int64_t)(yidx[yf[p + 1] - 1] - yidx[yf[p]]) * gw
                                     + (int64_t)(xidx[xf[q + 1] - 1] - xidx[xf[q]]);
                /* (a division per bin only for counts that could overflow) */
                if (((ny | nx) >> 31 && ny > PTRDIFF_MAX / nx) || last < 0 || last > INT32_MAX)
                    return -1;
                n += ny * nx;
            }
        }
    if (n > cap) return n;
#if defined(CK_ROI_SSE2) && PTRDIFF_MAX == INT64_MAX
    if (xf[pw] - xf[0] <= CK_MA_TAB_T && yf[ph] - yf[0] <= CK_MA_TAB_T)
        return so != NULL
                   ? ck_max_align_table_sse_w(W, C, ph, pw, yf, ylo, yhi, ywl, ywh, yidx, xf, xlo,
                                              xhi, xwl, xwh, xidx, gw, sf, so, sw, rel, base, 1)
                   : ck_max_align_table_sse_w(W, C, ph, pw, yf, ylo, yhi, ywl, ywh, yidx, xf, xlo,
                                              xhi, xwl, xwh, xidx, gw, sf, so, sw, rel, base, 0);
#endif
    n = 0;
    for (p = 0; p < ph; p++)
        for (q = 0; q < pw; q++) {
            const ptrdiff_t k = p * pw + q;
            sf[k] = n;
            base[k] = -1;
            ((uint8_t*)(base + ph * pw))[k] = 0;
            if (yf[p + 1] <= yf[p] || xf[q + 1] <= xf[q]) continue;
            base[k] = (int32_t)((int64_t)yidx[yf[p]] * gw + (int64_t)xidx[xf[q]]);
            for (a = yf[p]; a < yf[p + 1]; a++) {
                /* the row's terms in locals: the stores below may alias the taps for all
                   the compiler knows, which would reload them per sample */
                const float hy = ywl[a], ly = ywh[a];
                const ptrdiff_t rl = ylo[a] * W, rh = yhi[a] * W, x0 = xidx[xf[q]];
                const int64_t ry = (int64_t)(yidx[a] - yidx[yf[p]]) * gw;
                if (so == NULL) {
                    for (b = xf[q]; b < xf[q + 1]; b++, n++)
                        rel[n] = (int32_t)(ry + (int64_t)(xidx[b] - x0));
                    continue;
                }
                for (b = xf[q]; b < xf[q + 1]; b++, n++) {
                    const float hx = xwl[b], lx = xwh[b];
                    const ptrdiff_t cl = xlo[b], ch = xhi[b];
                    so[4 * n] = (rl + cl) * C;
                    so[4 * n + 1] = (rl + ch) * C;
                    so[4 * n + 2] = (rh + cl) * C;
                    so[4 * n + 3] = (rh + ch) * C;
                    sw[4 * n] = hy * hx;
                    sw[4 * n + 1] = hy * lx;
                    sw[4 * n + 2] = ly * hx;
                    sw[4 * n + 3] = ly * lx;
                    rel[n] = (int32_t)(ry + (int64_t)(xidx[b] - x0));
                }
            }
        }
    sf[ph * pw] = n;
    return n;
}

/* am[c*ldd + b] = base[b] + ti[b*lds + c] for b < nb, c < cols (the int32 numbers of a block,
   bin-major, to the (C, bins) argmax, aw bytes an entry); 8x8 blocks transposed in AVX2
   registers, an int8 argmax's rows narrowed there (numbers that fit: saturation never acts)
   and stored 8 bytes a row. */
#ifdef CK_ROI_WIDE
__attribute__((target("avx2")))
static void ck_ma_am8_st4(const __m256i* r, int8_t* am, ptrdiff_t ldd) {
    /* packs interleave the 128-bit lanes: dwords (r0 0-3, r1 0-3, r2 0-3, r3 0-3, r0 4-7 ..)
       put back in row order */
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i q = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3])), perm);
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm_storel_epi64((__m128i*)am, lo);
    _mm_storel_epi64((__m128i*)(am + ldd), _mm_unpackhi_epi64(lo, lo));
    _mm_storel_epi64((__m128i*)(am + 2 * ldd), hi);
    _mm_storel_epi64((__m128i*)(am + 3 * ldd), _mm_unpackhi_epi64(hi, hi));
}
__attribute__((target("avx2"), always_inline))
static inline ptrdiff_t ck_ma_am8_w(const int32_t* ti, ptrdiff_t lds, ptrdiff_t nb,
                                    ptrdiff_t cols, const int32_t* base, void* am, int aw,
                                    ptrdiff_t ldd) {
    ptrdiff_t c = 0, b, i;
    for (; c + 8 <= cols; c += 8) {
        for (b = 0; b + 8 <= nb; b += 8) {
            __m256 a[8];
            __m256i r[8];
            const __m256i bs = _mm256_loadu_si256((const __m256i*)(base + b));
            for (i = 0; i < 8; i++)
                a[i] = _mm256_castsi256_ps(
                    _mm256_loadu_si256((const __m256i*)(ti + (b + i) * lds + c)));
            ck_tr8x8(a);
            for (i = 0; i < 8; i++) r[i] = _mm256_add_epi32(bs, _mm256_castps_si256(a[i]));
            if (aw == 1) {
                ck_ma_am8_st4(r, (int8_t*)am + c * ldd + b, ldd);
                ck_ma_am8_st4(r + 4, (int8_t*)am + (c + 4) * ldd + b, ldd);
            } else {
                for (i = 0; i < 8; i++)
                    _mm256_storeu_si256((__m256i*)((int32_t*)am + (c + i) * ldd + b), r[i]);
            }
        }
        for (; b < nb; b++)
            for (i = 0; i < 8; i++)
                ck_am_put(am, aw, (c + i) * ldd + b, base[b] + ti[b * lds + c + i]);
    }
    return c;
}
/* one copy per argmax width, so the width test leaves the loops */
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_am8(const int32_t* ti, ptrdiff_t lds, ptrdiff_t nb, ptrdiff_t cols,
                           const int32_t* base, void* am, int aw, ptrdiff_t ldd) {
    return aw == 1 ? ck_ma_am8_w(ti, lds, nb, cols, base, am, 1, ldd)
                   : ck_ma_am8_w(ti, lds, nb, cols, base, am, 4, ldd);
}
#endif

/* One RoI's float forward on its table: channels in blocks of CK_CHUNK, each bin scanned into
   bin-major scratch (tb floats, ti int32s, nb rows of CK_LD) by the widest vector path, the
   last channels one at a time, then transposed to the RoI's (C, nb) layout and streamed into
   y and am (written once, not read back: no need to fetch them into cache); an int8 argmax
   (aw 1) is narrowed in the transpose (ck_ma_am8), or on AVX2 before it: rows of bytes
   (from the 4-sample scan itself) transposed by ck_ma_tr_b.  finite: the image holds no
   NaN/inf (the scan then skips its NaN test). */
static void ck_max_align_roi_f(const float* img, ptrdiff_t C, ptrdiff_t nb,
                               const ptrdiff_t* sf, const ptrdiff_t* so, const float* sw,
                               const int32_t* rel, const int32_t* base, int finite,
                               void* scratch, float* y, void* am, int aw) {
    /* scratch (ck_roi_scratch_bytes(nb)): tb, ti (nb rows of CK_LD), tri (CK_CHUNK*nb int32,
       then as many int8: t8), tr (CK_CHUNK*nb) */
    float* tb = (float*)scratch;
    int32_t* ti = (int32_t*)(tb + nb * CK_LD);
    int32_t* tri = (int32_t*)(ti + nb * CK_LD);
    int8_t* t8 = (int8_t*)(tri + nb * CK_CHUNK);
    float* tr = (float*)((int64_t*)(ti + nb * CK_LD) + nb * CK_CHUNK);
    /* an int8 argmax on AVX2 (narrow): the numbers go to rows of bytes (t8r, nb rows of
       CK_LD bytes over ti), the 4-sample bins' straight from the scan, the others' through
       one int32 row (tri's first CK_CHUNK), then ck_ma_tr_b */
    int8_t* t8r = (int8_t*)ti;
    const int lv = ck_simd_level(), narrow = lv >= 1 && aw == 1;
#ifdef CK_ROI_WIDE
    const int vl = narrow && ck_ma_vl();   /* the 2 x 2 runs' AVX-512VL scan */
#endif
    const uint8_t* prod = (const uint8_t*)(base + nb);   /* the table's 2 x 2 flags */
    ptrdiff_t c0, c1, c, b, s, k, cs;
    void* amb;
    (void)lv;
    (void)prod;
    for (c0 = 0; c0 < C; c0 = c1) {
        c1 = C - c0 > CK_CHUNK ? c0 + CK_CHUNK : C;
        for (b = 0; b < nb; b++) {
            float* tbb;
            int32_t* tib;
#ifdef CK_ROI_WIDE
            if (narrow && (c1 - c0) % 32 == 0 && prod[b]) {
                b = (vl && (c1 - c0) % 64 == 0 ? (finite ? ck_ma_fwd4pz_run_yf : ck_ma_fwd4pz_run_y)
                     : vl ? (finite ? ck_ma_fwd4pv_run_yf : ck_ma_fwd4pv_run_y)
                        : (finite ? ck_ma_fwd4pb_run_yf : ck_ma_fwd4pb_run_y))(
                    img, b, nb, sf, so, sw, rel, base, prod, c0, c1, tb, t8r);
                if (b == nb) break;
            }
#endif
            tbb = tb + b * CK_LD;
            tib = narrow ? tri : ti + b * CK_LD;
            if (sf[b + 1] <= sf[b]) {       /* no valid sample: 0 and base -1 + 0 */
                for (c = 0; c < c1 - c0; c++) { tbb[c] = 0; tib[c] = 0; }
                if (narrow) memset(t8r + b * CK_LD, -1, (size_t)(c1 - c0));
                continue;
            }
            c = cs = c0;
#ifdef CK_ROI_WIDE
            if (narrow && sf[b + 1] - sf[b] == 4)
                c = cs = (prod[b] ? (finite ? ck_ma_fwd4pb_yf : ck_ma_fwd4pb_y)
                                  : (finite ? ck_ma_fwd4b_yf : ck_ma_fwd4b_y))(
                    img, sf[b], sf[b + 1], so, sw, rel, c0, c1, tbb, t8r + b * CK_LD, base[b]);
            if (c < c1 && lv >= 1) {
                if (!narrow && sf[b + 1] - sf[b] == 4) {
                    c = (finite ? ck_ma_fwd4_yf : ck_ma_fwd4_y)(img, sf[b], sf[b + 1], so, sw,
                                                                rel, c0, c1, tbb, tib);
                    if (c < c1)
                        c = (finite ? ck_ma_fwd_yf : ck_ma_fwd_y)(img, sf[b], sf[b + 1], so, sw,
                                                                  rel, c, c1, tbb + (c - c0),
                                                                  tib + (c - c0));
                } else
                    c = (finite ? ck_ma_fwd_yf : ck_ma_fwd_y)(img, sf[b], sf[b + 1], so, sw, rel,
                                                              c, c1, tbb + (c - c0),
                                                              tib + (c - c0));
            } else if (lv < 1)
#endif
#ifdef CK_ROI_SSE2
            c = (finite ? ck_ma_fwd_xf : ck_ma_fwd_x)(img, sf[b], sf[b + 1], so, sw, rel, c0, c1,
                                                      tbb, tib);
#endif
            for (; c < c1; c++) {
                float bst = -INFINITY;
                int32_t bi = 0;
                for (s = sf[b]; s < sf[b + 1]; s++) {
                    const float* px = img + c;
                    const float v = ((sw[4 * s] * px[so[4 * s]] + sw[4 * s + 1] * px[so[4 * s + 1]])
                                     + sw[4 * s + 2] * px[so[4 * s + 2]])
                                    + sw[4 * s + 3] * px[so[4 * s + 3]];
                    if ((v > bst) | (v != v)) { bst = v; bi = rel[s]; }
                }
                tbb[c - c0] = bst;
                tib[c - c0] = bi;
            }
            if (narrow)
                for (c = cs; c < c1; c++) t8r[b * CK_LD + c - c0] = (int8_t)(base[b] + tib[c - c0]);
        }
        /* the block's rows of y and am are contiguous runs: built in scratch, streamed out */
        ck_transpose_f(tb, CK_LD, nb, c1 - c0, tr, nb);
        ck_stream_copy(y + c0 * nb, tr, (size_t)(nb * (c1 - c0)) * sizeof(float));
        amb = aw == 1 ? (void*)t8 : (void*)tri;
        c = 0;
#ifdef CK_ROI_WIDE
        if (narrow) {
            ck_ma_tr_b(t8r, CK_LD, nb, c1 - c0, t8, nb);
            c = c1 - c0;
        } else if (lv >= 1)
            c = ck_ma_am8(ti, CK_LD, nb, c1 - c0, base, amb, aw, nb);
#endif
        for (; c < c1 - c0; c++)
            for (k = 0; k < nb; k++) ck_am_put(amb, aw, c * nb + k, base[k] + ti[k * CK_LD + c]);
        ck_stream_copy((int8_t*)am + c0 * nb * aw, amb, (size_t)(nb * (c1 - c0) * aw));
    }
}
/* float roi_max_align backward on the sample tables (ck_max_align_table_f with C = 1, so so
   holds pixel numbers), one RoI on a pixel-major block of cb channels of one image:
   rt[b*cb + c] is channel c's argmax of bin b relative to the bin's first sample
   (ck_ma_bwd_rel: -1 for argmax -1, -2 for a number no sample of the bin has), gt[b*cb + c]
   its grad.  For every sample s of bin b, the lanes whose argmax is s add g * w (w1..w4 of s)
   to the block's rows of s's four pixels, in corner order; the other lanes add +0, which
   leaves every sum as it was (a sum that starts at +0 never becomes -0), so each element
   gets exactly the adds CK_MAX_ALIGN_BWD makes, in the same order.  Channel vectors in
   passes of CK_MA_BWD_NV (64 channels on AVX2), each pass all the bins of the RoI.
   Counts into *bad the entries that are neither -1 nor a sample of their bin; returns the
   channels done. */
#define CK_MA_CK_X_ILD(p) _mm_loadu_si128((const __m128i*)(p))
#define CK_MA_CK_X_IEQ(a, b) _mm_castsi128_ps(_mm_cmpeq_epi32(a, b))
#define CK_MA_CK_X_AND(a, b) _mm_and_ps(a, b)
#define CK_MA_CK_X_OR(a, b) _mm_or_ps(a, b)
#define CK_MA_CK_X_NBAD(m) __builtin_popcount(~_mm_movemask_ps(m) & 0xF)
#define CK_MA_CK_Y_ILD(p) _mm256_loadu_si256((const __m256i*)(p))
#define CK_MA_CK_Y_IEQ(a, b) _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b))
#define CK_MA_CK_Y_AND(a, b) _mm256_and_ps(a, b)
#define CK_MA_CK_Y_OR(a, b) _mm256_or_ps(a, b)
#define CK_MA_CK_Y_NBAD(m) __builtin_popcount(~_mm256_movemask_ps(m) & 0xFF)
#define CK_MA_BWD_NV 8       /* vectors of channels a pass holds (64 on AVX2, 32 on SSE2) */
#define CK_MA_BWD_BODY(X)                                                                 \
    {                                                                                     \
        ptrdiff_t b, s, c0, v, nv, c = 0, nbad = 0;                                       \
        for (c0 = 0; c0 + X##_L <= cb; c0 += nv * X##_L) {                                \
            nv = (cb - c0) / X##_L < CK_MA_BWD_NV ? (cb - c0) / X##_L : CK_MA_BWD_NV;     \
            c = c0 + nv * X##_L;                                                          \
            for (b = b0; b < b1; b++) {                                                    \
                const int32_t* rb = rt + b * cb + c0;                                     \
                const float* g = gt + b * cb + c0;                                        \
                for (v = 0; v < nv; v++) {                                                \
                    const X##_IV rv = CK_MA_##X##_ILD(rb + v * X##_L);                    \
                    const X##_V g1 = X##_LD(g + v * X##_L);                               \
                    X##_V ok = CK_MA_##X##_IEQ(rv, X##_ISET1(-1));                        \
                    for (s = sf[b]; s < sf[b + 1]; s++) {                                 \
                        const X##_V m = CK_MA_##X##_IEQ(rv, X##_ISET1(rel[s]));           \
                        const X##_V gm = CK_MA_##X##_AND(m, g1);                          \
                        int j;                                                            \
                        ok = CK_MA_##X##_OR(ok, m);                                       \
                        for (j = 0; j < 4; j++) {                                         \
                            float* r = gb + so[4 * s + j] * cb + c0 + v * X##_L;          \
                            X##_ST(r, X##_ADD(X##_LD(r),                                  \
                                              X##_MUL(gm, X##_SET1(sw[4 * s + j]))));     \
                        }                                                                 \
                    }                                                                     \
                    nbad += CK_MA_##X##_NBAD(ok);                                         \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
        *bad += nbad;                                                                     \
        return c;                                                                         \
    }
#define CK_MA_BWD_ARGS float* gb, ptrdiff_t cb, ptrdiff_t b0, ptrdiff_t b1, const ptrdiff_t* sf, \
    const ptrdiff_t* so, const float* sw, const int32_t* rel, const float* gt,            \
    const int32_t* rt, ptrdiff_t* bad
/* GCC would turn the register-array loads and stores into memmove calls */
#if defined(__GNUC__) && !defined(__clang__)
#define CK_MA_NO_LIBCALL __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CK_MA_NO_LIBCALL
#endif
#ifdef CK_ROI_SSE2
CK_MA_NO_LIBCALL
static ptrdiff_t ck_ma_bwd_x(CK_MA_BWD_ARGS) CK_MA_BWD_BODY(CK_X)
#endif
#ifdef CK_ROI_WIDE
__attribute__((target("avx2"))) CK_MA_NO_LIBCALL
static ptrdiff_t ck_ma_bwd_y(CK_MA_BWD_ARGS) CK_MA_BWD_BODY(CK_Y)
#endif

/* An argmax entry relative to its bin's first sample number (base): -1 for -1, -2 for a
   number below base or too far above it to be one of the bin's samples. */
static inline int32_t ck_ma_rel1(int32_t v, int32_t base) {
    const int64_t r = (int64_t)v - base;
    return v == -1 ? -1 : r < 0 || r > INT32_MAX ? -2 : (int32_t)r;
}
#ifdef CK_ROI_WIDE
/* 8 argmax entries minus their bins' bases -> 8 int32 as ck_ma_bwd_rel gives them */
__attribute__((target("avx2")))
static inline __m256 ck_ma_rel8v(const int32_t* am, const int32_t* base) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)am);
    const __m256i bs = _mm256_loadu_si256((const __m256i*)base);
    const __m256i r = _mm256_sub_epi32(v, bs);
    const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(bs, v),
                                        _mm256_cmpgt_epi32(_mm256_setzero_si256(), r));
    __m256i x = _mm256_blendv_epi8(r, _mm256_set1_epi32(-2), out);
    x = _mm256_blendv_epi8(x, _mm256_set1_epi32(-1), _mm256_cmpeq_epi32(v, _mm256_set1_epi32(-1)));
    return _mm256_castsi256_ps(x);
}
/* ck_ma_bwd_rel for 8 x 8 blocks (8 channels' rows of 8 bins, transposed in registers);
   returns the channels done, all bins */
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_bwd_rel8(const int32_t* am, ptrdiff_t nb, ptrdiff_t cb,
                                const int32_t* base, int32_t* rt) {
    ptrdiff_t c = 0, b, i;
    for (; c + 8 <= cb; c += 8) {
        for (b = 0; b + 8 <= nb; b += 8) {
            __m256 a[8];
            for (i = 0; i < 8; i++) a[i] = ck_ma_rel8v(am + (c + i) * nb + b, base + b);
            ck_tr8x8(a);
            for (i = 0; i < 8; i++)
                _mm256_storeu_si256((__m256i*)(rt + (b + i) * cb + c), _mm256_castps_si256(a[i]));
        }
        for (; b < nb; b++)
            for (i = 0; i < 8; i++) rt[b * cb + c + i] = ck_ma_rel1(am[(c + i) * nb + b], base[b]);
    }
    return c;
}
#endif
static void ck_ma_bwd_rel(const int32_t* am, ptrdiff_t nb, ptrdiff_t cb, const int32_t* base,
                          int32_t* rt) {
    ptrdiff_t b, c = 0;
#ifdef CK_ROI_WIDE
    if (ck_simd_level() >= 1) c = ck_ma_bwd_rel8(am, nb, cb, base, rt);
#endif
    for (; c < cb; c++)
        for (b = 0; b < nb; b++) rt[b * cb + c] = ck_ma_rel1(am[c * nb + b], base[b]);
}

/* A RoI's pixel groups for the merged backward (ck_ma_bwd_grp_y), from its axis taps: bin
   b's groups are [gf[b], gf[b+1]), one per distinct pixel its samples' corners touch (the
   distinct rows of its y taps' corners times the distinct columns of its x taps': the bin's
   samples are every pair of them); goff[g] is the pixel, gwt[g*ws + d] the weight with which
   the bin's sample d (row-major, as the sample table numbers them from sf[b]) reaches it
   (the same product hy*hx ... as the table's; 0: it does not).  With a finite grad, the
   lanes whose winner is d then add g * gwt[g*ws + d] once per pixel, which is the one
   non-zero add CK_MAX_ALIGN_BWD makes there (a clamped corner that repeats a pixel carries
   weight 0, an add of +-0 that changes no sum); the other lanes add +-0.  ws: 4 when no bin
   has over 4 samples, else 8.  Per bin, for ck_ma_prep_y: sx[b] = its sample count with the
   sign bit flipped (an unsigned compare by a signed one), gdm[b] = -1 when its samples are
   numbered 0, 1, ... relative to its first (every sample of its grid rows valid), so an
   argmax minus the bin's base is the sample d itself, else 0.  Returns the number of groups
   (cap: 4 per sample suffices), or -1 where the RoI cannot be merged (a bin of over 8
   samples, or a sample with two non-zero weights on one pixel). */
/* One bin's taps along one axis (nt of them, low/high pixels and weights) -> its distinct
   pixels px[0..n) and each tap's weight on them (w[a][i]: the tap's weight whose pixel is
   px[i], 0 for none); 0 when over 8 taps or a tap puts two non-zero weights on one pixel. */
typedef struct {
    int n;
    ptrdiff_t px[16];
    float w[8][16];
    float w2[16][4];    /* two taps (ck_ma_groups fills it for x): w[0][i], w[1][i] twice */
} ck_ma_px;
static int ck_ma_px_build(ck_ma_px* t, ptrdiff_t nt, const ptrdiff_t* lo, const ptrdiff_t* hi,
                          const float* wl, const float* wh) {
    ptrdiff_t a;
    int e, i;
    t->n = 0;
    if (nt > 8) return 0;
    for (a = 0; a < nt; a++)
        for (e = 0; e < 2; e++) {
            const ptrdiff_t r = e ? hi[a] : lo[a];
            for (i = 0; i < t->n && t->px[i] != r; i++) {}
            if (i == t->n) t->px[t->n++] = r;
        }
    for (a = 0; a < nt; a++) {
        for (i = 0; i < t->n; i++) t->w[a][i] = 0.0f;
        for (e = 0; e < 2; e++) {
            const ptrdiff_t r = e ? hi[a] : lo[a];
            const float wv = e ? wh[a] : wl[a];
            for (i = 0; t->px[i] != r; i++) {}
            if (t->w[a][i] != 0.0f && wv != 0.0f) return 0;
            t->w[a][i] = t->w[a][i] + wv;
        }
    }
    return 1;
}
static ptrdiff_t ck_ma_groups(ptrdiff_t W, ptrdiff_t ph, ptrdiff_t pw, const ptrdiff_t* yf,
                              const ptrdiff_t* ylo, const ptrdiff_t* yhi, const float* ywl,
                              const float* ywh, const ptrdiff_t* xf, const ptrdiff_t* xlo,
                              const ptrdiff_t* xhi, const float* xwl, const float* xwh,
                              const ptrdiff_t* sf, const int32_t* rel, ptrdiff_t* gf,
                              ptrdiff_t* goff, float* gwt, int32_t* gdm, int32_t* sx, int* ws) {
    ptrdiff_t nb = ph * pw, b, s, g, ng = 0, mx = 0, p, q, a, e, d;
    int w, i, j, yok;
    ck_ma_px ty;
    ck_ma_px* tx;
    ck_ma_px txs[8];    /* up to 8 bins a row on the stack, else malloc */
    for (b = 0; b < nb; b++)
        if (sf[b + 1] - sf[b] > mx) mx = sf[b + 1] - sf[b];
    if (mx > 8) return -1;
    w = mx <= 4 ? 4 : 8;
    *ws = w;
    tx = pw <= 8 ? txs : (ck_ma_px*)malloc((size_t)pw * sizeof(ck_ma_px));
    if (tx == NULL) return -1;      /* the masked path needs no groups */
    for (q = 0; q < pw; q++) {      /* -1: cannot merge (it matters only in a bin with samples) */
        if (!ck_ma_px_build(&tx[q], xf[q + 1] - xf[q], xlo + xf[q], xhi + xf[q], xwl + xf[q],
                            xwh + xf[q]))
            tx[q].n = -1;
        else if (xf[q + 1] - xf[q] == 2)
            for (j = 0; j < tx[q].n; j++) {
                tx[q].w2[j][0] = tx[q].w2[j][2] = tx[q].w[0][j];
                tx[q].w2[j][1] = tx[q].w2[j][3] = tx[q].w[1][j];
            }
    }
    for (p = 0; p < ph; p++) {
        const ptrdiff_t ny = yf[p + 1] - yf[p];
        yok = ck_ma_px_build(&ty, ny, ylo + yf[p], yhi + yf[p], ywl + yf[p], ywh + yf[p]);
        for (q = 0; q < pw; q++) {
            const ptrdiff_t nx = xf[q + 1] - xf[q], S = sf[p * pw + q + 1] - sf[p * pw + q];
            const ck_ma_px* t = &tx[q];
            b = p * pw + q;
            gf[b] = ng;
            sx[b] = (int32_t)((uint32_t)S ^ 0x80000000u);
            gdm[b] = -1;
            for (s = sf[b]; s < sf[b + 1]; s++)
                if (rel[s] != s - sf[b]) gdm[b] = 0;
            if (S == 0) continue;           /* else ny * nx = S <= 8 */
            if (!yok || t->n < 0) {
                if (tx != txs) free(tx);
                return -1;
            }
            if (S == 4 && nx == 2 && w == 4) {      /* sampling_ratio 2: a group's 4 weights
                                                       (y0*x0, y0*x1, y1*x0, y1*x1) in one
                                                       product of (y0, y0, y1, y1) and w2 */
                for (i = 0; i < ty.n; i++) {
                    const ptrdiff_t rb = ty.px[i] * W;
                    const float y0 = ty.w[0][i], y1 = ty.w[1][i];
                    g = ng + i * t->n;
#ifdef CK_ROI_SSE2
                    {
                        const __m128 yv = _mm_setr_ps(y0, y0, y1, y1);
                        for (j = 0; j < t->n; j++) {
                            goff[g + j] = rb + t->px[j];
                            _mm_storeu_ps(gwt + (g + j) * 4,
                                          _mm_mul_ps(yv, _mm_loadu_ps(t->w2[j])));
                        }
                    }
#else
                    for (j = 0; j < t->n; j++) {
                        float* gw = gwt + (g + j) * 4;
                        goff[g + j] = rb + t->px[j];
                        gw[0] = y0 * t->w2[j][0];
                        gw[1] = y0 * t->w2[j][1];
                        gw[2] = y1 * t->w2[j][2];
                        gw[3] = y1 * t->w2[j][3];
                    }
#endif
                }
                ng += ty.n * t->n;
                continue;
            }
            for (i = 0; i < ty.n; i++)
                for (j = 0; j < t->n; j++) {
                    float* gw;
                    g = ng + i * t->n + j;
                    goff[g] = ty.px[i] * W + t->px[j];
                    gw = gwt + g * w;
                    for (a = 0; a < ny; a++)
                        for (e = 0; e < nx; e++) gw[a * nx + e] = ty.w[a][i] * t->w[e][j];
                    for (d = S; d < w; d++) gw[d] = 0.0f;
                }
            ng += ty.n * t->n;
        }
    }
    if (tx != txs) free(tx);
    gf[nb] = ng;
    return ng;
}

/* One argmax entry v of bin b with grad g -> its sample d in the bin and the grad its lane
   adds (0, 0 for -1 or a bad entry, which counts into *bad); *fin collects the exponent test
   of ck_all_finite_f on the grads kept. */
static inline void ck_ma_prep1(int32_t v, float g, ptrdiff_t b, const ptrdiff_t* sf,
                               const int32_t* rel, const int32_t* base, int32_t* d, float* gg,
                               ptrdiff_t* bad, uint32_t* fin) {
    ptrdiff_t s;
    uint32_t u;
    *d = 0;
    *gg = 0.0f;
    if (v == -1) return;
    for (s = sf[b]; s < sf[b + 1]; s++)
        if ((int64_t)rel[s] == (int64_t)v - base[b]) {
            *d = (int32_t)(s - sf[b]);
            *gg = g;
            memcpy(&u, &g, sizeof(u));
            *fin |= (u & 0x7f800000u) + 0x00800000u;
            return;
        }
    (*bad)++;
}

#ifdef CK_ROI_WIDE
/* The merged backward's operands for one RoI and a block of cb channels: the RoI's argmax and
   grad blocks amv (entries of aw bytes: int8 read as it is), gyk ((cb, nb), rows of nb) -> dt,
   gt (nb*cb, bin-major): each lane's winner as its sample d in the bin and its grad, both 0
   for -1 and bad entries. 8 x 8 blocks in AVX2 registers on the bins whose samples are
   numbered by d (gdm): d = v - base when that is below the bin's count (int32 arithmetic
   modulo 2**32: a wrapped difference matches only the number itself); the same test entry
   by entry on the last nb % 8 such bins when there are 1 or 2 of them (fewer instructions
   than a block that overlaps the one before), the other bins and the last channels by
   ck_ma_prep1. Returns the bad entries; *finite: every grad kept is finite (else the caller
   takes the masked path). */
/* 8 argmax entries from o on (aw bytes each) as int32 */
__attribute__((target("avx2"), always_inline))
static inline __m256i ck_ma_ld8(const void* amv, int aw, ptrdiff_t o) {
    return aw == 1
        ? _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)((const int8_t*)amv + o)))
        : _mm256_loadu_si256((const __m256i*)((const int32_t*)amv + o));
}
__attribute__((target("avx2"), always_inline))
static inline ptrdiff_t ck_ma_prep_yb(const void* amv, int aw, const float* gyk, ptrdiff_t nb,
                                      ptrdiff_t cb, const ptrdiff_t* sf, const int32_t* rel,
                                      const int32_t* base, const int32_t* sx,
                                      const int32_t* gdm, int32_t* dt, float* gt, int* finite) {
    const __m256i m1 = _mm256_set1_epi32(-1), sgn = _mm256_set1_epi32(INT32_MIN);
    /* the vector blocks cover bins [0, nbe): every bin when the last block overlaps the one
       before (it ends at the last bin; its lanes already done count no bad entry) */
    const ptrdiff_t nbe = nb < 8 ? 0 : nb % 8 > 2 ? nb : nb - nb % 8, cb8 = cb - cb % 8;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    /* the kept grads times 0, or-ed: a lane turns NaN (exponent all ones, mantissa not 0)
       when a grad is inf or NaN, else stays +-0 */
    __m256 fz = _mm256_setzero_ps();
    ptrdiff_t c, b, i, bad = 0;
    uint32_t fin = 0;
    for (c = 0; c < cb8; c += 8) {
        for (b = 0; b < nbe; b += 8) {
            const ptrdiff_t b8 = b + 8 <= nb ? b : nb - 8;
            const __m256i bs = _mm256_loadu_si256((const __m256i*)(base + b8));
            const __m256i sv = _mm256_loadu_si256((const __m256i*)(sx + b8));
            __m256i acc = m1;   /* lanes where every row is a sample or -1 */
            __m256 dv[8], gv[8];
            for (i = 0; i < 8; i++) {
                const ptrdiff_t o = (c + i) * nb + b8;
                const __m256i v = ck_ma_ld8(amv, aw, o);
                const __m256i r = _mm256_sub_epi32(v, bs);
                const __m256i ok = _mm256_cmpgt_epi32(sv, _mm256_xor_si256(r, sgn));
                const __m256 gk = _mm256_and_ps(_mm256_castsi256_ps(ok),
                                                _mm256_loadu_ps(gyk + (c + i) * nb + b8));
                acc = _mm256_and_si256(acc, _mm256_or_si256(ok, _mm256_cmpeq_epi32(v, m1)));
                fz = _mm256_or_ps(fz, _mm256_mul_ps(gk, _mm256_setzero_ps()));
                dv[i] = _mm256_castsi256_ps(_mm256_and_si256(ok, r));
                gv[i] = gk;
            }
            {
                /* the block's new lanes (from b on) of d-numbered bins */
                const __m256i gm = _mm256_and_si256(
                    _mm256_loadu_si256((const __m256i*)(gdm + b8)),
                    _mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int32_t)(b - b8) - 1)));
                if (!_mm256_testc_si256(acc, gm))   /* some bad entry: count them */
                    for (i = 0; i < 8; i++) {
                        const ptrdiff_t o = (c + i) * nb + b8;
                        const __m256i v = ck_ma_ld8(amv, aw, o);
                        const __m256i ok = _mm256_cmpgt_epi32(
                            sv, _mm256_xor_si256(_mm256_sub_epi32(v, bs), sgn));
                        bad += __builtin_popcount((unsigned)_mm256_movemask_ps(
                            _mm256_castsi256_ps(_mm256_andnot_si256(
                                _mm256_or_si256(ok, _mm256_cmpeq_epi32(v, m1)), gm))));
                    }
            }
            ck_tr8x8(dv);
            ck_tr8x8(gv);
            for (i = 0; i < 8; i++) {
                _mm256_storeu_si256((__m256i*)(dt + (b8 + i) * cb + c),
                                    _mm256_castps_si256(dv[i]));
                _mm256_storeu_ps(gt + (b8 + i) * cb + c, gv[i]);
            }
        }
    }
    /* the bins past the blocks, the bins not numbered by d (all bins when fewer than 8), the
       last channels */
    for (b = 0; b < nb; b++) {
        if (gdm[b] && b < nbe) continue;
        if (gdm[b] && nbe) {
            const uint32_t S = (uint32_t)sx[b] ^ 0x80000000u, bs = (uint32_t)base[b];
            for (c = 0; c < cb8; c++) {
                const int32_t v = (int32_t)ck_am_get(amv, aw, c * nb + b);
                const float g = gyk[c * nb + b];
                const uint32_t r = (uint32_t)v - bs;
                if (r < S) {
                    uint32_t u;
                    memcpy(&u, &g, sizeof(u));
                    fin |= (u & 0x7f800000u) + 0x00800000u;
                    dt[b * cb + c] = (int32_t)r;
                    gt[b * cb + c] = g;
                } else {
                    dt[b * cb + c] = 0;
                    gt[b * cb + c] = 0.0f;
                    bad += v != -1;
                }
            }
            continue;
        }
        for (c = 0; c < cb8; c++)
            ck_ma_prep1((int32_t)ck_am_get(amv, aw, c * nb + b), gyk[c * nb + b], b, sf, rel,
                        base, dt + b * cb + c, gt + b * cb + c, &bad, &fin);
    }
    for (c = cb8; c < cb; c++)
        for (b = 0; b < nb; b++)
            ck_ma_prep1((int32_t)ck_am_get(amv, aw, c * nb + b), gyk[c * nb + b], b, sf, rel,
                        base, dt + b * cb + c, gt + b * cb + c, &bad, &fin);
    *finite = (fin & 0x80000000u) == 0
              && _mm256_movemask_ps(_mm256_cmp_ps(fz, fz, _CMP_UNORD_Q)) == 0;
    return bad;
}
/* one copy per argmax width, so the width test leaves the inner loop */
__attribute__((target("avx2")))
static ptrdiff_t ck_ma_prep_y(const void* amv, int aw, const float* gyk, ptrdiff_t nb,
                              ptrdiff_t cb, const ptrdiff_t* sf, const int32_t* rel,
                              const int32_t* base, const int32_t* sx, const int32_t* gdm,
                              int32_t* dt, float* gt, int* finite) {
    return aw == 1
        ? ck_ma_prep_yb(amv, 1, gyk, nb, cb, sf, rel, base, sx, gdm, dt, gt, finite)
        : ck_ma_prep_yb(amv, 4, gyk, nb, cb, sf, rel, base, sx, gdm, dt, gt, finite);
}

/* The merged backward, AVX2, bins [b0, b1) of one RoI on a block of cb channels (dt, gt as
   ck_ma_prep_y gives them, every grad finite): per bin and vector of channels, per pixel
   group one add of grad * the group's weight for each lane's d (a lane permute of the
   group's table; within 128-bit halves when ws is 4).  The last cb % 8 channels one at a
   time, the same products and adds. */
/* (the group bounds and the block's base pointer in locals: the extension is built with
   -fno-strict-aliasing, so the stores below would make the compiler reload gf[b + 1] and
   recompute each row's address per group) */
/* the row pointer held in a register: GCC would rebuild it with an lea per vector */
#if defined(__GNUC__) || defined(__clang__)
#define CK_MA_IN_REG(p) __asm__("" : "+r"(p))
#else
#define CK_MA_IN_REG(p) (void)0
#endif
#define CK_MA_GRP_STEP(R)                                                                 \
    {                                                                                     \
        __m256 gz[R];                                                                     \
        __m256i dx[R];                                                                    \
        float* const gc = gb + c;                                                         \
        for (v = 0; v < R; v++) {                                                         \
            gz[v] = _mm256_loadu_ps(gr + c + 8 * v);                                      \
            dx[v] = _mm256_loadu_si256((const __m256i*)(db + c + 8 * v));                 \
        }                                                                                 \
        if (ws == 4)                                                                      \
            for (g = g0; g < g1; g++) {                                                   \
                const __m256 wt = _mm256_broadcast_ps((const __m128*)(gwt + 4 * g));      \
                float* r = gc + goff[g] * cb;                                             \
                CK_MA_IN_REG(r);                                                          \
                for (v = 0; v < R; v++)                                                   \
                    _mm256_storeu_ps(r + 8 * v, _mm256_add_ps(_mm256_loadu_ps(r + 8 * v), \
                        _mm256_mul_ps(gz[v], _mm256_permutevar_ps(wt, dx[v]))));          \
            }                                                                             \
        else                                                                              \
            for (g = g0; g < g1; g++) {                                                   \
                const __m256 wt = _mm256_loadu_ps(gwt + 8 * g);                           \
                float* r = gc + goff[g] * cb;                                             \
                CK_MA_IN_REG(r);                                                          \
                for (v = 0; v < R; v++)                                                   \
                    _mm256_storeu_ps(r + 8 * v, _mm256_add_ps(_mm256_loadu_ps(r + 8 * v), \
                        _mm256_mul_ps(gz[v], _mm256_permutevar8x32_ps(wt, dx[v]))));      \
            }                                                                             \
    }
/* ws 4, 8 vectors (64 channels) a group: the grads in 8 registers, each lane's d read with
   the permute (a memory operand; the pointer made opaque per group so the compiler does not
   hoist the 8 index vectors into registers it has not got) */
#define CK_MA_GRP_STEP8                                                                   \
    {                                                                                     \
        __m256 gz[8];                                                                     \
        float* const gc = gb + c;                                                         \
        for (v = 0; v < 8; v++) gz[v] = _mm256_loadu_ps(gr + c + 8 * v);                  \
        for (g = g0; g < g1; g++) {                                                       \
            const __m256 wt = _mm256_broadcast_ps((const __m128*)(gwt + 4 * g));          \
            float* r = gc + goff[g] * cb;                                                 \
            const int32_t* dc = db + c;                                                   \
            CK_MA_IN_REG(r);                                                              \
            CK_MA_IN_REG(dc);                                                             \
            for (v = 0; v < 8; v++)                                                       \
                _mm256_storeu_ps(r + 8 * v, _mm256_add_ps(_mm256_loadu_ps(r + 8 * v),     \
                    _mm256_mul_ps(gz[v], _mm256_permutevar_ps(                            \
                        wt, _mm256_loadu_si256((const __m256i*)(dc + 8 * v))))));         \
        }                                                                                 \
    }
__attribute__((target("avx2"))) CK_MA_NO_LIBCALL
static void ck_ma_bwd_grp_y(float* gb, ptrdiff_t cb, ptrdiff_t b0, ptrdiff_t b1,
                            const ptrdiff_t* gf, const ptrdiff_t* goff, const float* gwt,
                            int ws, const float* gt, const int32_t* dt) {
    ptrdiff_t b, g, c;
    int v;
    for (b = b0; b < b1; b++) {
        const int32_t* db = dt + b * cb;
        const float* gr = gt + b * cb;
        const ptrdiff_t g0 = gf[b], g1 = gf[b + 1];
        c = 0;
        if (ws == 4)
            for (; c + 64 <= cb; c += 64) CK_MA_GRP_STEP8
        for (; c + 32 <= cb; c += 32) CK_MA_GRP_STEP(4)
        for (; c + 8 <= cb; c += 8) CK_MA_GRP_STEP(1)
        for (; c < cb; c++)
            for (g = g0; g < g1; g++)
                gb[goff[g] * cb + c] += gr[c] * gwt[g * ws + db[c]];
    }
}
#endif

/* The backward for one RoI and a block of cb channels: gyk, amk the RoI's grad and argmax at
   the block's first channel ((cb, nb) rows of nb; aw its width: the masked path widens
   an int8 block into wide (nb*cb int32)); gt, rt (nb*cb) scratch; gnext, anext: the same
   blocks of the next RoI this task adds (NULL: none), to prefetch.  The merged path
   (AVX2, the RoI's groups gf.., a finite grad: inf * 0 must stay NaN where a lane adds its
   +0) on ck_ma_prep_y's operands, else the masked path (CK_MA_BWD_BODY) on the sample table.
   Returns the bad argmax entries, or -1 (nothing added) where the masked path is needed and
   the table has samples but no offsets and weights (so NULL). */
static ptrdiff_t ck_max_align_bwd_blk_f(float* gb, ptrdiff_t cb, ptrdiff_t nb,
                                        const ptrdiff_t* sf, const ptrdiff_t* so,
                                        const float* sw, const int32_t* rel,
                                        const int32_t* base, const float* gyk,
                                        const void* amv, int aw, int32_t* wide, float* gt,
                                        int32_t* rt, const float* gnext, const void* anext,
                                        const ptrdiff_t* gf, const ptrdiff_t* goff,
                                        const float* gwt, const int32_t* gdm, const int32_t* sx,
                                        int ws) {
    ptrdiff_t c = 0, b, s, j, bad = 0, b0, b1, pf = 0, pa = 0;
    int merged = 0;
    const ptrdiff_t ng = nb * cb * (ptrdiff_t)sizeof(float), na = nb * cb * aw;
    const int lv = ck_simd_level();
    const int32_t* amk = (const int32_t*)amv;
    (void)lv;
#ifdef CK_ROI_WIDE
    if (lv >= 1 && gf != NULL) {    /* reads an int8 block as it is (no widened copy) */
        bad = ck_ma_prep_y(amv, aw, gyk, nb, cb, sf, rel, base, sx, gdm, rt, gt, &merged);
        if (!merged) bad = 0;   /* the masked path counts them again */
    }
#endif
    /* gb untouched: the caller brings so, sw (a table of no samples never has them, and
       the masked path reads none) */
    if (!merged && so == NULL && sf[nb] > 0) return -1;
    if (!merged) {
        if (aw == 1) {
            ck_am_widen((const int8_t*)amv, wide, nb * cb);
            amk = wide;
        }
        ck_transpose_f(gyk, nb, cb, nb, gt, cb);
        ck_ma_bwd_rel(amk, nb, cb, base, rt);
    }
    /* bins in 8 slices; between them an eighth of the next RoI's grad and argmax blocks is
       asked for, so their memory reads overlap this RoI's arithmetic */
    for (b0 = 0; b0 < nb; b0 = b1) {
        b1 = b0 + (nb + 7) / 8 < nb ? b0 + (nb + 7) / 8 : nb;
#if defined(__GNUC__) || defined(__clang__)
        /* one prefetch a line of each (the argmax's lines counted on their own: an int8
           block has a quarter of the grad's), into L2 only (locality 1: prefetcht2): into
           L1 they evicted the grad_x block rows the adds work on (one-thread CPU time
           ~12 -> ~10.4 ms, bench/RESULTS.md) */
        if (gnext != NULL) {
            for (; pf < ng * b1 / nb; pf += 64) __builtin_prefetch((const char*)gnext + pf, 0, 1);
            for (; pa < na * b1 / nb; pa += 64) __builtin_prefetch((const char*)anext + pa, 0, 1);
        }
#endif
        c = 0;
#ifdef CK_ROI_WIDE
        if (merged) {
            ck_ma_bwd_grp_y(gb, cb, b0, b1, gf, goff, gwt, ws, gt, rt);
            c = cb;
        } else if (lv >= 1)
            c = ck_ma_bwd_y(gb, cb, b0, b1, sf, so, sw, rel, gt, rt,
                            &bad);
        else
#endif
#ifdef CK_ROI_SSE2
        c = ck_ma_bwd_x(gb, cb, b0, b1, sf, so, sw, rel, gt, rt,
                        &bad);
#endif
    }
    for (; c < cb; c++)         /* the lanes' adds, one channel at a time */
        for (b = 0; b < nb; b++) {
            const int32_t r = rt[b * cb + c];
            const float gv = gt[b * cb + c];
            if (r == -1) continue;
            for (s = sf[b]; s < sf[b + 1] && rel[s] != r; s++) {}
            if (s == sf[b + 1]) { bad++; continue; }
            for (j = 0; j < 4; j++) gb[so[4 * s + j] * cb + c] += gv * sw[4 * s + j];
        }
    return bad;
}

CK_MAX_ALIGN_BWD(float, f)
CK_MAX_ALIGN_BWD(double, d)
CK_MAX_ALIGN_BWD_TAB(float, f)
CK_MAX_ALIGN_BWD_TAB(double, d)
CK_MAX_ALIGN_PAIRS(float, f)
CK_MAX_ALIGN_PAIRS(double, d)

CK_ROI_STRICT_FP_END
#endif
