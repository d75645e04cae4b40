/* Deformable convolution's per-image kernels (torchvision's deform_conv2d rule, restated in
   convkit/reference/deform_conv.py), float and double from one macro body; driven by
   _deform_conv.pyx, which runs them in OpenMP tasks and does the GEMMs.

   A sample table holds, for each sample t = (g*KK + k)*P + p of one image (offset group g,
   tap k = i*KW + j, output position p = ho*Wo + wo): six weights tw[6t..6t+5] =
   (hh*hw, hh*lw, lh*hw, lh*lw, lh, lw), the flat index tb[t] = hl*W + wl of its top-left
   corner, and tv[t]: bits 1, 2, 4, 8 set where corner (hl, wl), (hl, wl+1), (hl+1, wl),
   (hl+1, wl+1) lies in the image, bit 16 for a NaN point.  A point with y <= -1, y >= H,
   x <= -1 or x >= W has no corner bits and zero weights, so it samples 0.  Every pixel index a
   kernel forms comes from the table, made from one read of each offset: an offset changed by
   another thread meanwhile cannot move a read out of the image. */
#ifndef CK_DEFORM_CONV_H
#define CK_DEFORM_CONV_H
#include <math.h>
#include <stddef.h>
#include <string.h>

#define CK_DEFORM_FUNCS(T, SUF)                                                              \
/* Table entries of positions [p0, p1) for every offset group and tap of one image; off is  \
   the image's (2*OG*KK, P) offsets. */                                                      \
static void ck_deform_table_##SUF(const T* off, ptrdiff_t OG, ptrdiff_t KH, ptrdiff_t KW,    \
        ptrdiff_t Wo, ptrdiff_t P, ptrdiff_t H, ptrdiff_t W, ptrdiff_t sh, ptrdiff_t sw,     \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t p0, ptrdiff_t p1,  \
        T* tw, ptrdiff_t* tb, unsigned char* tv)                                             \
{                                                                                            \
    ptrdiff_t g, i, j, p;                                                                    \
    for (g = 0; g < OG; g++)                                                                 \
    for (i = 0; i < KH; i++)                                                                 \
    for (j = 0; j < KW; j++) {                                                               \
        const ptrdiff_t r = (g * KH + i) * KW + j;                                           \
        const T* oy = off + 2 * r * P;                                                       \
        const T* ox = oy + P;                                                                \
        for (p = p0; p < p1; p++) {                                                          \
            const ptrdiff_t ho = p / Wo, wo = p - (p / Wo) * Wo, t = r * P + p;              \
            const T y = (T)(ho * sh - ph + i * dh) + oy[p];                                  \
            const T x = (T)(wo * sw - pw + j * dw) + ox[p];                                  \
            T* w = tw + 6 * t;                                                               \
            tb[t] = 0;                                                                       \
            if (!(y > -1 && y < (T)H && x > -1 && x < (T)W)) {                               \
                w[0] = w[1] = w[2] = w[3] = w[4] = w[5] = 0;                                 \
                tv[t] = (y != y || x != x) ? 16 : 0;                                         \
                continue;                                                                    \
            }                                                                                \
            {                                                                                \
                const T hf = (T)floor((double)y), wf = (T)floor((double)x);                  \
                const ptrdiff_t hl = (ptrdiff_t)hf, wl = (ptrdiff_t)wf;                      \
                const T lh = y - hf, lw = x - wf, hh = 1 - lh, hw = 1 - lw;                  \
                w[0] = hh * hw; w[1] = hh * lw; w[2] = lh * hw; w[3] = lh * lw;              \
                w[4] = lh; w[5] = lw;                                                        \
                tb[t] = hl * W + wl;                                                         \
                tv[t] = (unsigned char)(((hl >= 0 && wl >= 0) ? 1 : 0)                       \
                        | ((hl >= 0 && wl + 1 < W) ? 2 : 0)                                  \
                        | ((hl + 1 < H && wl >= 0) ? 4 : 0)                                  \
                        | ((hl + 1 < H && wl + 1 < W) ? 8 : 0));                             \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Columns [p0, p1) of one image: cols[(c*KK + k)*ldc + p] = mask * sample; mask is the    \
   image's (OG*KK, P) mask or NULL. */                                                       \
static void ck_deform_cols_##SUF(const T* x, const T* mask, ptrdiff_t C, ptrdiff_t H,        \
        ptrdiff_t W, ptrdiff_t OG, ptrdiff_t KK, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1,    \
        const T* tw, const ptrdiff_t* tb, const unsigned char* tv, T* cols, ptrdiff_t ldc)   \
{                                                                                            \
    const ptrdiff_t Cog = C / OG;                                                            \
    ptrdiff_t c, k, p;                                                                       \
    for (c = 0; c < C; c++) {                                                                \
        const T* xp = x + c * H * W;                                                         \
        const ptrdiff_t g = c / Cog;                                                         \
        for (k = 0; k < KK; k++) {                                                           \
            const ptrdiff_t r = g * KK + k;                                                  \
            const T* m = mask ? mask + r * P : NULL;                                         \
            T* row = cols + (c * KK + k) * ldc;                                              \
            for (p = p0; p < p1; p++) {                                                      \
                const ptrdiff_t t = r * P + p, b = tb[t];                                    \
                const unsigned v = tv[t];                                                    \
                const T* w = tw + 6 * t;                                                     \
                T s;                                                                         \
                if (v & 16) s = (T)NAN;                                                      \
                else {                                                                       \
                    const T v1 = (v & 1) ? xp[b] : 0, v2 = (v & 2) ? xp[b + 1] : 0;          \
                    const T v3 = (v & 4) ? xp[b + W] : 0, v4 = (v & 8) ? xp[b + W + 1] : 0;  \
                    s = w[0] * v1 + w[1] * v2 + w[2] * v3 + w[3] * v4;                       \
                }                                                                            \
                row[p] = m ? m[p] * s : s;                                                   \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Offset and mask gradients of positions [p0, p1) of one image.  gc holds dL/dcols (rows   \
   (c*KK + k), stride ldc); each entry is replaced by dL/d(sample) = gc * mask (the input   \
   of ck_deform_col2im).  goff (2*OG*KK, P) and gmask (OG*KK, P, or NULL) are the image's;  \
   the channels of a group are summed in order. */                                           \
static void ck_deform_coord_##SUF(const T* x, const T* mask, ptrdiff_t C, ptrdiff_t H,       \
        ptrdiff_t W, ptrdiff_t OG, ptrdiff_t KK, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1,    \
        const T* tw, const ptrdiff_t* tb, const unsigned char* tv, T* gc, ptrdiff_t ldc,     \
        T* goff, T* gmask)                                                                   \
{                                                                                            \
    const ptrdiff_t Cog = C / OG;                                                            \
    ptrdiff_t g, k, p, c;                                                                    \
    for (g = 0; g < OG; g++)                                                                 \
    for (k = 0; k < KK; k++) {                                                               \
        const ptrdiff_t r = g * KK + k;                                                      \
        for (p = p0; p < p1; p++) {                                                          \
            const ptrdiff_t t = r * P + p, b = tb[t];                                        \
            const unsigned v = tv[t];                                                        \
            const T* w = tw + 6 * t;                                                         \
            const T m = mask ? mask[r * P + p] : (T)1;                                       \
            const T lh = w[4], lw = w[5], hh = 1 - lh, hw = 1 - lw;                          \
            T ay = 0, ax = 0, am = 0;                                                        \
            for (c = g * Cog; c < (g + 1) * Cog; c++) {                                      \
                const T* xp = x + c * H * W;                                                 \
                T* e = gc + (c * KK + k) * ldc + p;                                          \
                const T gs = mask ? *e * m : *e;                                             \
                T s, dy, dx;                                                                 \
                if (v & 16) s = dy = dx = (T)NAN;                                            \
                else {                                                                       \
                    const T v1 = (v & 1) ? xp[b] : 0, v2 = (v & 2) ? xp[b + 1] : 0;          \
                    const T v3 = (v & 4) ? xp[b + W] : 0, v4 = (v & 8) ? xp[b + W + 1] : 0;  \
                    s = w[0] * v1 + w[1] * v2 + w[2] * v3 + w[3] * v4;                       \
                    dy = lw * (v4 - v2) + hw * (v3 - v1);                                    \
                    dx = lh * (v4 - v3) + hh * (v2 - v1);                                    \
                }                                                                            \
                am += *e * s;                                                                \
                ay += gs * dy;                                                               \
                ax += gs * dx;                                                               \
                *e = gs;                                                                     \
            }                                                                                \
            goff[2 * r * P + p] = ay;                                                        \
            goff[(2 * r + 1) * P + p] = ax;                                                  \
            if (gmask) gmask[r * P + p] = am;                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* grad_x of one channel plane gx (zeroed by the caller): each tap row of gs (KK rows,      \
   stride ldc, offset group g) adds gs * weight at the corners its samples read, taps and    \
   positions in order (the same bits for any thread count). */                               \
static void ck_deform_col2im_##SUF(const T* gs, ptrdiff_t ldc, ptrdiff_t g, ptrdiff_t KK,    \
        ptrdiff_t P, ptrdiff_t W, const T* tw, const ptrdiff_t* tb, const unsigned char* tv,  \
        T* gx)                                                                               \
{                                                                                            \
    ptrdiff_t k, p;                                                                          \
    for (k = 0; k < KK; k++) {                                                               \
        const T* row = gs + k * ldc;                                                         \
        const ptrdiff_t r = g * KK + k;                                                      \
        for (p = 0; p < P; p++) {                                                            \
            const ptrdiff_t t = r * P + p, b = tb[t];                                        \
            const unsigned v = tv[t];                                                        \
            const T* w = tw + 6 * t;                                                         \
            const T e = row[p];                                                              \
            if (!(v & 15)) continue;                                                         \
            if (v & 1) gx[b] += e * w[0];                                                    \
            if (v & 2) gx[b + 1] += e * w[1];                                                \
            if (v & 4) gx[b + W] += e * w[2];                                                \
            if (v & 8) gx[b + W + 1] += e * w[3];                                            \
        }                                                                                    \
    }                                                                                        \
}

CK_DEFORM_FUNCS(float, f)
CK_DEFORM_FUNCS(double, d)

#endif
