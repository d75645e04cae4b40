/* Position-sensitive RoI kernels on one (H, W) channel plane, float (_f) and double (_d)
   from one body (declared in _psroi.pyx).  A ps bin reads a single channel plane, so these
   work plane by plane; the per-axis bilinear taps come from roi_align's
   roi_align_axis_taps (_roi_align.pxd), the bin edges below follow torchvision's
   ps_roi_pool.  No multiply-add contraction: every product and sum rounds as written, in
   torchvision's order. */
#ifndef CK_PSROI_H
#define CK_PSROI_H
#include <math.h>
#include <stddef.h>
#include "roi_simd.h"
CK_ROI_STRICT_FP_BEGIN

/* Samples per bin above which ps_roi_align goes row by row (ck_ps_align_sum). */
#define CK_PS_DENSE 64

/* [first, *last] of the rows the y taps [a0, a1) touch (a0 < a1; positions fall as i grows
   in an inverted RoI, so not simply the ends). */
static ptrdiff_t ck_ps_rows(const ptrdiff_t* yl, const ptrdiff_t* yh, ptrdiff_t a0,
                            ptrdiff_t a1, ptrdiff_t* last) {
    ptrdiff_t a, first = yl[a0];
    *last = yh[a0];
    for (a = a0; a < a1; a++) {
        if (yl[a] < first) first = yl[a];
        if (yh[a] > *last) *last = yh[a];
    }
    return first;
}

/* A bin edge clipped to [0, limit] in floating point, then cast (NaN -> 0). */
static ptrdiff_t ck_ps_edge(double e, ptrdiff_t limit) {
    if (!(e > 0)) return 0;
    return e > (double)limit ? limit : (ptrdiff_t)e;
}

#define CK_PS_DEFINE(T, S)                                                              \
/* ps_roi_pool's edges along one axis of one RoI: corners c1, c2 scaled in T and rounded  \
   half away from zero, the RoI max(round(c2*s) - round(c1*s), 1) cells (no +1), bin p   \
   [floor(p*bin), ceil((p+1)*bin)) from the start, clipped to [0, size - 1] (torchvision's \
   forward clips to size - 1).  A NaN size (inf - inf after an overflow) empties the bins. */ \
static void ck_ps_pool_edges_##S(T c1, T c2, T scale, ptrdiff_t pooled, ptrdiff_t size,  \
                                 ptrdiff_t* lo, ptrdiff_t* hi) {                        \
    double s = round((T)(c1 * scale)), e = round((T)(c2 * scale)), cells = e - s;        \
    T bin;                                                                              \
    ptrdiff_t p;                                                                        \
    if (cells < 1) cells = 1;                                                           \
    bin = (T)cells / (T)pooled;                                                         \
    for (p = 0; p < pooled; p++) {                                                      \
        lo[p] = ck_ps_edge((double)floor((T)p * bin) + s, size - 1);                    \
        hi[p] = ck_ps_edge((double)ceil((T)(p + 1) * bin) + s, size - 1);               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* Sum of a plane over rows [h0, h1) and columns [w0, w1), row-major (torchvision). */  \
static T ck_ps_box_sum_##S(const T* plane, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,     \
                           ptrdiff_t w0, ptrdiff_t w1) {                                \
    T acc = 0;                                                                          \
    ptrdiff_t h, w;                                                                     \
    for (h = h0; h < h1; h++)                                                           \
        for (w = w0; w < w1; w++) acc += plane[h * W + w];                              \
    return acc;                                                                         \
}                                                                                       \
                                                                                        \
static void ck_ps_box_add_##S(T* plane, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,        \
                              ptrdiff_t w0, ptrdiff_t w1, T v) {                        \
    ptrdiff_t h, w;                                                                     \
    for (h = h0; h < h1; h++)                                                           \
        for (w = w0; w < w1; w++) plane[h * W + w] += v;                                \
}                                                                                       \
                                                                                        \
/* The weight of row r in a bin: the sum of the y taps' weights on it; *hit: whether any   \
   tap touches it (a zero weight still reads the row, as torchvision's corners do). */    \
static T ck_ps_row_weight_##S(ptrdiff_t r, const ptrdiff_t* yl, const ptrdiff_t* yh,    \
                              const T* wyl, const T* wyh, ptrdiff_t a0, ptrdiff_t a1,   \
                              int* hit) {                                               \
    T w = 0;                                                                            \
    ptrdiff_t a;                                                                        \
    *hit = 0;                                                                           \
    for (a = a0; a < a1; a++) {                                                         \
        if (yl[a] == r) { w += wyl[a]; *hit = 1; }                                      \
        if (yh[a] == r) { w += wyh[a]; *hit = 1; }                                      \
    }                                                                                   \
    return w;                                                                           \
}                                                                                       \
                                                                                        \
/* Sum of the bilinear samples of one bin on one plane: y taps [a0, a1) (rows yl/yh,      \
   weights wyl = 1 - ly and wyh = ly), x taps [b0, b1); sample (a, b) adds                \
   hy*hx*v1 + hy*lx*v2 + ly*hx*v3 + ly*lx*v4, y samples outer (torchvision's loops).     \
   A dense grid (more than CK_PS_DENSE samples) goes row by row instead -- each row the   \
   taps touch weighted once by its summed y weight -- O(rows * (y + x taps)), not          \
   O(y taps * x taps), so a huge sampling_ratio stays cheap; every row x column a sample  \
   corner touches is still read, so NaN/inf reach the same bins. */                      \
static T ck_ps_align_sum_##S(const T* plane, ptrdiff_t W,                               \
                             const ptrdiff_t* yl, const ptrdiff_t* yh, const T* wyl,    \
                             const T* wyh, ptrdiff_t a0, ptrdiff_t a1,                  \
                             const ptrdiff_t* xl, const ptrdiff_t* xh, const T* wxl,    \
                             const T* wxh, ptrdiff_t b0, ptrdiff_t b1) {                \
    T acc = 0;                                                                          \
    ptrdiff_t a, b, r, r1;                                                              \
    int hit;                                                                            \
    if ((a1 - a0) * (b1 - b0) > CK_PS_DENSE) {                                          \
        for (r = ck_ps_rows(yl, yh, a0, a1, &r1); r <= r1; r++) {                       \
            const T wr = ck_ps_row_weight_##S(r, yl, yh, wyl, wyh, a0, a1, &hit);       \
            const T* row = plane + r * W;                                               \
            T rs = 0;                                                                   \
            if (!hit) continue;                                                         \
            for (b = b0; b < b1; b++) rs += wxl[b] * row[xl[b]] + wxh[b] * row[xh[b]];  \
            acc += wr * rs;                                                             \
        }                                                                               \
        return acc;                                                                     \
    }                                                                                   \
    for (a = a0; a < a1; a++) {                                                         \
        const T* rl = plane + yl[a] * W;                                                \
        const T* rh = plane + yh[a] * W;                                                \
        const T hy = wyl[a], ly = wyh[a];                                               \
        for (b = b0; b < b1; b++) {                                                     \
            const T hx = wxl[b], lx = wxh[b];                                           \
            acc += hy * hx * rl[xl[b]] + hy * lx * rl[xh[b]]                            \
                 + ly * hx * rh[xl[b]] + ly * lx * rh[xh[b]];                           \
        }                                                                               \
    }                                                                                   \
    return acc;                                                                         \
}                                                                                       \
                                                                                        \
/* Adjoint of ck_ps_align_sum for a bin whose grad is g: each corner gets g*w/count,     \
   added one by one (a non-finite g times a zero weight is NaN, as in torchvision); a     \
   dense grid row by row, as the forward. */                                            \
static void ck_ps_align_add_##S(T* plane, ptrdiff_t W,                                  \
                                const ptrdiff_t* yl, const ptrdiff_t* yh, const T* wyl, \
                                const T* wyh, ptrdiff_t a0, ptrdiff_t a1,               \
                                const ptrdiff_t* xl, const ptrdiff_t* xh, const T* wxl, \
                                const T* wxh, ptrdiff_t b0, ptrdiff_t b1, T g, T count) { \
    ptrdiff_t a, b, r, r1;                                                              \
    int hit;                                                                            \
    if ((a1 - a0) * (b1 - b0) > CK_PS_DENSE) {                                          \
        for (r = ck_ps_rows(yl, yh, a0, a1, &r1); r <= r1; r++) {                       \
            const T gr = g * ck_ps_row_weight_##S(r, yl, yh, wyl, wyh, a0, a1, &hit) / count; \
            T* row = plane + r * W;                                                     \
            if (!hit) continue;                                                         \
            for (b = b0; b < b1; b++) {                                                 \
                row[xl[b]] += gr * wxl[b];                                              \
                row[xh[b]] += gr * wxh[b];                                              \
            }                                                                           \
        }                                                                               \
        return;                                                                         \
    }                                                                                   \
    for (a = a0; a < a1; a++) {                                                         \
        T* rl = plane + yl[a] * W;                                                      \
        T* rh = plane + yh[a] * W;                                                      \
        const T hy = wyl[a], ly = wyh[a];                                               \
        for (b = b0; b < b1; b++) {                                                     \
            const T hx = wxl[b], lx = wxh[b];                                           \
            rl[xl[b]] += g * (hy * hx) / count;                                         \
            rl[xh[b]] += g * (hy * lx) / count;                                         \
            rh[xl[b]] += g * (ly * hx) / count;                                         \
            rh[xh[b]] += g * (ly * lx) / count;                                         \
        }                                                                               \
    }                                                                                   \
}

CK_PS_DEFINE(float, f)
CK_PS_DEFINE(double, d)
#undef CK_PS_DEFINE

CK_ROI_STRICT_FP_END
#endif
