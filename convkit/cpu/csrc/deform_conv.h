/* Deformable convolution's per-image kernels (torchvision's deform_conv2d rule, restated in
   convkit/reference/deform_conv.py), float and double from one macro body; driven by
   _deform_conv.pyx, which runs them in OpenMP tasks and does the GEMMs.

   The kernels read x through a copy of each plane with a one-pixel zero border
   (Hp = H + 2, Wp = W + 2): every corner of a sample point inside the sampled range
   (-1 < y < H, -1 < x < W) lies in it, and a corner outside the image reads an exact 0 --
   torchvision's "a corner outside the image is 0", with no branch per corner.
   A sample table holds, for each sample of one image (offset group g, tap k = i*KW + j,
   r = g*KK + k, output position p = ho*Wo + wo) at t = r*ldt + p - p0, six weights
   tw[6t..6t+5] =
   (hh*hw, hh*lw, lh*hw, lh*lw, lh, lw) and tb[t] = (hl + 1)*Wp + (wl + 1), the top-left
   corner in the padded plane.  A point outside the sampled range has zero weights and
   corner W + 1, whose four corners are all border zeros: it samples 0; a NaN point has NaN
   weights there: it samples NaN (and its gradient lands on the border only).  tc[t] is the
   corner the offset gradient reads: tb[t], except on the edges y = -1 and x = -1, which
   sample 0 (tb: the border) but have torchvision's offset gradient from inside (tc: their
   real corner; lh, lw kept).  Every index
   a kernel forms comes from the table, made from one read of each
   offset: an offset changed by another thread meanwhile cannot move a read out of the plane. */
#ifndef CK_DEFORM_CONV_H
#define CK_DEFORM_CONV_H
#include <math.h>
#include <stddef.h>
#include <string.h>

#define CK_DEFORM_SPAN 64   /* positions per accumulator block of ck_deform_coord */

#define CK_DEFORM_FUNCS(T, SUF)                                                              \
/* xp (Hp x Wp) = x (H x W) with a zero border of one pixel. */                              \
static void ck_deform_pad_##SUF(const T* x, ptrdiff_t H, ptrdiff_t W, T* xp)                 \
{                                                                                            \
    const ptrdiff_t Wp = W + 2;                                                              \
    ptrdiff_t h;                                                                             \
    memset(xp, 0, (size_t)Wp * sizeof(T));                                                   \
    for (h = 0; h < H; h++) {                                                                \
        T* row = xp + (h + 1) * Wp;                                                          \
        row[0] = 0;                                                                          \
        memcpy(row + 1, x + h * W, (size_t)W * sizeof(T));                                   \
        row[W + 1] = 0;                                                                      \
    }                                                                                        \
    memset(xp + (H + 1) * Wp, 0, (size_t)Wp * sizeof(T));                                    \
}                                                                                            \
                                                                                             \
/* x (H x W) = the interior of the padded plane gp (Hp x Wp). */                             \
static void ck_deform_crop_##SUF(const T* gp, ptrdiff_t H, ptrdiff_t W, T* x)                \
{                                                                                            \
    ptrdiff_t h;                                                                             \
    for (h = 0; h < H; h++)                                                                  \
        memcpy(x + h * W, gp + (h + 1) * (W + 2) + 1, (size_t)W * sizeof(T));                \
}                                                                                            \
                                                                                             \
/* Table entries of positions [p0, p1) for every offset group and tap r of one image, at     \
   r*ldt + p - p0; off is the image's (2*OG*KK, P) offsets. */                               \
static void ck_deform_table_##SUF(const T* off, ptrdiff_t OG, ptrdiff_t KH, ptrdiff_t KW,    \
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
/* Columns [p0, p1) of one image: cols[(c*KK + k)*ldc + p - p0] = mask * sample; xp holds    \
   the image's C padded planes, mask is the image's (OG*KK, P) mask or NULL; the table       \
   entries of (r, p) at r*ldt + p - p0.  Four channels of                                    \
   an offset group at a time share each table entry's loads. */                              \
static void ck_deform_cols_##SUF(const T* xp, const T* mask, ptrdiff_t C, ptrdiff_t H,       \
        ptrdiff_t W, ptrdiff_t OG, ptrdiff_t KK, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1,    \
        const T* tw, const ptrdiff_t* tb, ptrdiff_t ldt, T* cols, ptrdiff_t ldc)             \
{                                                                                            \
    const ptrdiff_t Cog = C / OG, Wp = W + 2, plane = (H + 2) * (W + 2);                     \
    ptrdiff_t g, c, k, p, j, nc;                                                             \
    for (g = 0; g < OG; g++)                                                                 \
    for (k = 0; k < KK; k++) {                                                               \
        const ptrdiff_t r = g * KK + k;                                                      \
        const T* w = tw + 6 * r * ldt;       /* position p: w + 6(p - p0), b[p - p0] */      \
        const ptrdiff_t* b = tb + r * ldt;                                                   \
        const T* m = mask ? mask + r * P : NULL;                                             \
        for (c = g * Cog; c < (g + 1) * Cog; c += nc) {                                      \
            const T* xc = xp + c * plane;                                                    \
            T* row = cols + (c * KK + k) * ldc;         /* column p at row[p - p0] */        \
            const ptrdiff_t lr = KK * ldc;                                                   \
            nc = (g + 1) * Cog - c >= 4 ? 4 : 1;                                             \
            if (nc == 4) {                                                                   \
                for (p = p0; p < p1; p++) {                                                  \
                    const T* a = xc + b[p - p0];                                             \
                    const T* u = w + 6 * (p - p0);                                           \
                    const T w0 = u[0], w1 = u[1], w2 = u[2], w3 = u[3];                      \
                    const T mm = m ? m[p] : (T)1;                                            \
                    T s[4];                                                                  \
                    for (j = 0; j < 4; j++) {                                                \
                        const T* aj = a + j * plane;                                         \
                        s[j] = w0 * aj[0] + w1 * aj[1] + w2 * aj[Wp] + w3 * aj[Wp + 1];      \
                    }                                                                        \
                    for (j = 0; j < 4; j++) row[j * lr + p - p0] = m ? mm * s[j] : s[j];     \
                }                                                                            \
            } else {                                                                         \
                for (p = p0; p < p1; p++) {                                                  \
                    const T* a = xc + b[p - p0];                                             \
                    const T* u = w + 6 * (p - p0);                                           \
                    const T s = u[0] * a[0] + u[1] * a[1] + u[2] * a[Wp] + u[3] * a[Wp + 1]; \
                    row[p - p0] = m ? m[p] * s : s;                                          \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Offset and mask gradients of positions [p0, p1) of one image.  gc holds dL/dcols (rows    \
   (c*KK + k), stride ldc, from column p0; table as ck_deform_cols); each entry is          \
   replaced by dL/d(sample) = gc * mask (the input                                          \
   of ck_deform_col2im).  goff (2*OG*KK, P) and gmask (OG*KK, P, or NULL) are the image's;   \
   the channels of a group are summed in order, CK_DEFORM_SPAN positions at a time (rows     \
   streamed, not a column walked across channels). */                                        \
static void ck_deform_coord_##SUF(const T* xp, const T* mask, ptrdiff_t C, ptrdiff_t H,      \
        ptrdiff_t W, ptrdiff_t OG, ptrdiff_t KK, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1,    \
        const T* tw, const ptrdiff_t* tc, ptrdiff_t ldt, T* gc, ptrdiff_t ldc, T* goff,      \
        T* gmask)                                                                            \
{                                                                                            \
    const ptrdiff_t Cog = C / OG, Wp = W + 2, plane = (H + 2) * (W + 2);                     \
    ptrdiff_t r, q0, q1, p, c;                                                               \
    T ay[CK_DEFORM_SPAN], ax[CK_DEFORM_SPAN], am[CK_DEFORM_SPAN];                            \
    for (r = 0; r < OG * KK; r++) {      /* tap r = g*KK + k */                              \
        const ptrdiff_t g = r / KK, k = r - (r / KK) * KK, *b = tc + r * ldt;                \
        const T *w = tw + 6 * r * ldt, *m = mask ? mask + r * P : NULL;                      \
        for (q0 = p0; q0 < p1; q0 = q1) {                                                    \
            q1 = p1 - q0 > CK_DEFORM_SPAN ? q0 + CK_DEFORM_SPAN : p1;                        \
            for (p = q0; p < q1; p++) ay[p - q0] = ax[p - q0] = am[p - q0] = 0;              \
            for (c = g * Cog; c < (g + 1) * Cog; c++) {                                      \
                const T* xc = xp + c * plane;                                                \
                T* row = gc + (c * KK + k) * ldc;                                            \
                for (p = q0; p < q1; p++) {                                                  \
                    const T* a = xc + b[p - p0];                                             \
                    const T* u = w + 6 * (p - p0);                                           \
                    const T e = row[p - p0], gs = m ? e * m[p] : e;                          \
                    const T lh = u[4], lw = u[5], hh = 1 - lh, hw = 1 - lw;                  \
                    const T v1 = a[0], v2 = a[1], v3 = a[Wp], v4 = a[Wp + 1];                \
                    const T s = u[0] * v1 + u[1] * v2 + u[2] * v3 + u[3] * v4;               \
                    am[p - q0] += e * s;                                                     \
                    ay[p - q0] += gs * (lw * (v4 - v2) + hw * (v3 - v1));                    \
                    ax[p - q0] += gs * (lh * (v4 - v3) + hh * (v2 - v1));                    \
                    row[p - p0] = gs;                                                        \
                }                                                                            \
            }                                                                                \
            for (p = q0; p < q1; p++) {                                                      \
                goff[2 * r * P + p] = ay[p - q0];                                            \
                goff[(2 * r + 1) * P + p] = ax[p - q0];                                      \
                if (gmask) gmask[r * P + p] = am[p - q0];                                    \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* grad of one padded channel plane gp (zeroed by the caller): each tap row of gs (KK rows,  \
   stride ldc, offset group g) adds gs * weight at the four corners of its samples, taps     \
   and positions in order (the same bits for any thread count).  What lands on the border    \
   (corners outside the image, points outside the range or NaN) is cropped away. */          \
static void ck_deform_col2im_##SUF(const T* gs, ptrdiff_t ldc, ptrdiff_t g, ptrdiff_t KK,    \
        ptrdiff_t P, ptrdiff_t W, const T* tw, const ptrdiff_t* tb, T* gp)                   \
{                                                                                            \
    const ptrdiff_t Wp = W + 2;                                                              \
    ptrdiff_t k, p;                                                                          \
    for (k = 0; k < KK; k++) {                                                               \
        const T* row = gs + k * ldc;                                                         \
        const T* w = tw + 6 * (g * KK + k) * P;                                              \
        const ptrdiff_t* b = tb + (g * KK + k) * P;                                          \
        for (p = 0; p < P; p++) {                                                            \
            T* a = gp + b[p];                                                                \
            const T* u = w + 6 * p;                                                          \
            const T e = row[p];                                                              \
            a[0] += e * u[0];                                                                \
            a[1] += e * u[1];                                                                \
            a[Wp] += e * u[2];                                                               \
            a[Wp + 1] += e * u[3];                                                           \
        }                                                                                    \
    }                                                                                        \
}

CK_DEFORM_FUNCS(float, f)
CK_DEFORM_FUNCS(double, d)

#endif
