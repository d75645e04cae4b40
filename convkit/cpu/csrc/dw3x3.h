#ifndef CONVKIT_DW3X3_H
#define CONVKIT_DW3X3_H

/* Depthwise 3x3, stride 1, dilation 1, one filter per channel: the kernels of
   conv2d_forward_depthwise3x3 / conv2d_backward_depthwise3x3, one plane per call.
   ck_dw3_fwd / ck_dw3_wgrad read the input from a zero-padded copy xp ((Ho + 2) rows of
   Wp >= Wo + 2; any padding); ck_dw3_fwd1 / ck_dw3_wgrad1 (padding 1 all round, the common
   case) read the planes as they are.
   A row of outputs is cut into blocks of L lanes; when L does not divide it the last block is
   moved left to end with the row (it overlaps the one before: the forward rewrites the same
   values, the weight gradient drops the lanes already counted).  So every load stays inside
   the row, and a level needs rows of at least L outputs (W - 2 >= L for the unpadded kernels,
   which sum columns 0 and W-1 one by one).
   Levels: 1 = 16-byte vectors (the x86-64 baseline, SSE2; NEON elsewhere), 2 = AVX2 + FMA,
   3 = AVX-512F, the widest the CPU has, picked once by CPUID.  A level fixes the order of every
   sum (lanes, then blocks, then rows), so results do not depend on the thread count; levels
   differ from one another in the last bits (FMA, lane count). */
#include <stdlib.h>
#include <string.h>
#if defined(__GNUC__) || defined(__clang__)
#define CK_DW3 1
#define CK_DW3_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof(V)); v_; })
#define CK_DW3_ST(p, v) do { __typeof__(v) t_ = (v); memcpy((p), &t_, sizeof(t_)); } while (0)

/* Both kernels walk down the rows of a group of NB blocks of a row (NB = 4, 2 or 1, unrolled
   by the compiler), loading each padded input row once: its three shifted vectors serve the
   three output rows (forward) or three grad_y rows (weight gradient) that it touches. */
#define CK_DW3_DEFINE(T, IT, SUF, VB, ATTR)                                              \
typedef T ck_dw3v_##SUF##VB __attribute__((vector_size(VB)));                           \
typedef IT ck_dw3m_##SUF##VB __attribute__((vector_size(VB)));                          \
/* rows h of y, blocks s[0..NB): y[h, s + j] = bias + sum_{a,b} k[3a + b] * xp[h + a, s + j + b]: \
   input row r finishes output row r - 2, continues r - 1 and starts r (the sums run in the    \
   order bias, tap 0, 1, ..., 8) */                                                      \
ATTR static inline __attribute__((always_inline)) void                                  \
ck_dw3_fwd_group_##SUF##VB(const T* xp, Py_ssize_t Wp, const ck_dw3v_##SUF##VB* k,       \
                           ck_dw3v_##SUF##VB b0, T* y, Py_ssize_t Ho, Py_ssize_t Wo,     \
                           const Py_ssize_t* s, const int NB) {                          \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    V p0[4], p1[4];                                                                      \
    Py_ssize_t r;                                                                        \
    int b;                                                                               \
    for (b = 0; b < NB; b++) { p0[b] = b0; p1[b] = b0; }                                 \
    for (r = 0; r < Ho + 2; r++) {                                                       \
        const T* xr = xp + r * Wp;                                                       \
        for (b = 0; b < NB; b++) {                                                       \
            V v0 = CK_DW3_LD(V, xr + s[b]);                                              \
            V v1 = CK_DW3_LD(V, xr + s[b] + 1);                                          \
            V v2 = CK_DW3_LD(V, xr + s[b] + 2);                                          \
            V o = p0[b] + k[6] * v0 + k[7] * v1 + k[8] * v2;                             \
            p0[b] = p1[b] + k[3] * v0 + k[4] * v1 + k[5] * v2;                           \
            p1[b] = b0 + k[0] * v0 + k[1] * v1 + k[2] * v2;                              \
            if (r >= 2) CK_DW3_ST(y + (r - 2) * Wo + s[b], o);                           \
        }                                                                                \
    }                                                                                    \
}                                                                                        \
/* y[h, j] = bias + sum_{a,b} w'[a, b] * xp[h + a, j + b]; w' = w, or w flipped in both   \
   axes (grad_x as the correlation of the padded grad_y) */                              \
ATTR static void ck_dw3_fwd_##SUF##VB(const T* xp, Py_ssize_t Wp, const T* w, int flip,  \
                                      T bias, T* y, Py_ssize_t Ho, Py_ssize_t Wo) {      \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    enum { L = VB / sizeof(T) };                                                         \
    V k[9], b0, z = {0};                                                                 \
    Py_ssize_t j, i, nb = (Wo + L - 1) / L, s[4];                                        \
    for (i = 0; i < 9; i++) k[i] = z + w[flip ? 8 - i : i];                              \
    b0 = z + bias;                                                                       \
    for (j = 0; j < nb; ) {                                                              \
        int NB = nb - j >= 4 ? 4 : nb - j >= 2 ? 2 : 1;                                  \
        for (i = 0; i < NB; i++)    /* the last block ends at Wo */                      \
            s[i] = (j + i) * L < Wo - L ? (j + i) * L : Wo - L;                          \
        if (NB == 4) ck_dw3_fwd_group_##SUF##VB(xp, Wp, k, b0, y, Ho, Wo, s, 4);         \
        else if (NB == 2) ck_dw3_fwd_group_##SUF##VB(xp, Wp, k, b0, y, Ho, Wo, s, 2);    \
        else ck_dw3_fwd_group_##SUF##VB(xp, Wp, k, b0, y, Ho, Wo, s, 1);                 \
        j += NB;                                                                         \
    }                                                                                    \
}                                                                                        \
/* a[3a + b] += sum over rows h, lanes of the blocks s[0..NB) of gy[h, s + j] *             \
   xp[h + a, s + j + b], a[9] += the same sums of gy: input row r meets grad_y rows r, r-1, r-2 */ \
ATTR static inline __attribute__((always_inline)) void                                  \
ck_dw3_wgrad_group_##SUF##VB(const T* gy, Py_ssize_t Ho, Py_ssize_t Wo, const T* xp,    \
                             Py_ssize_t Wp, const Py_ssize_t* s, const int NB,           \
                             ck_dw3v_##SUF##VB* acc) {                                   \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    V a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], a4 = acc[4];                   \
    V a5 = acc[5], a6 = acc[6], a7 = acc[7], a8 = acc[8], a9 = acc[9];                   \
    Py_ssize_t r;                                                                        \
    int b;                                                                               \
    for (r = 0; r < Ho + 2; r++) {                                                       \
        const T* xr = xp + r * Wp;                                                       \
        const T* g0 = gy + r * Wo;                                                       \
        const T* g1 = g0 - Wo;                                                           \
        const T* g2 = g1 - Wo;                                                           \
        int u0 = r < Ho, u1 = r >= 1 && r <= Ho, u2 = r >= 2;                            \
        for (b = 0; b < NB; b++) {                                                       \
            V v0 = CK_DW3_LD(V, xr + s[b]);                                              \
            V v1 = CK_DW3_LD(V, xr + s[b] + 1);                                          \
            V v2 = CK_DW3_LD(V, xr + s[b] + 2);                                          \
            if (u0) {                                                                    \
                V g = CK_DW3_LD(V, g0 + s[b]);                                           \
                a9 += g; a0 += g * v0; a1 += g * v1; a2 += g * v2;                       \
            }                                                                            \
            if (u1) {                                                                    \
                V g = CK_DW3_LD(V, g1 + s[b]);                                           \
                a3 += g * v0; a4 += g * v1; a5 += g * v2;                                \
            }                                                                            \
            if (u2) {                                                                    \
                V g = CK_DW3_LD(V, g2 + s[b]);                                           \
                a6 += g * v0; a7 += g * v1; a8 += g * v2;                                \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4;                     \
    acc[5] = a5; acc[6] = a6; acc[7] = a7; acc[8] = a8; acc[9] = a9;                     \
}                                                                                        \
/* out[a*3 + b] = sum_{h,j} gy[h, j] * xp[h + a, j + b] (the weight gradient of the plane), \
   out[9] = sum_{h,j} gy[h, j] (the bias gradient): L float partial sums per tap, added in  \
   lane order in double at the end.  A last block that overlaps the one before sums into   \
   its own partial sums, whose lanes already counted are dropped (bitwise, so an inf or a   \
   NaN there drops too) */                                                               \
ATTR static void ck_dw3_wgrad_##SUF##VB(const T* gy, Py_ssize_t Ho, Py_ssize_t Wo,       \
                                        const T* xp, Py_ssize_t Wp, double* out) {       \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    typedef ck_dw3m_##SUF##VB M;                                                         \
    enum { L = VB / sizeof(T) };                                                         \
    V a[10], t[10], z = {0};                                                             \
    M keep;                                                                              \
    IT lanes[L];                                                                         \
    T part[L];                                                                           \
    Py_ssize_t j, i, nfull = Wo / L, s[4];                                               \
    for (i = 0; i < 10; i++) a[i] = z;                                                   \
    for (j = 0; j < nfull; ) {                                                           \
        int NB = nfull - j >= 4 ? 4 : nfull - j >= 2 ? 2 : 1;                            \
        for (i = 0; i < NB; i++) s[i] = (j + i) * L;                                     \
        if (NB == 4) ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 4, a);          \
        else if (NB == 2) ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 2, a);     \
        else ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 1, a);                  \
        j += NB;                                                                         \
    }                                                                                    \
    if (nfull * L < Wo) {                                                                \
        for (i = 0; i < 10; i++) t[i] = z;                                               \
        s[0] = Wo - L;                                                                   \
        ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 1, t);                       \
        for (i = 0; i < L; i++) lanes[i] = i < nfull * L - s[0] ? 0 : -1;                \
        memcpy(&keep, lanes, sizeof keep);                                               \
        for (i = 0; i < 10; i++) a[i] += (V)((M)t[i] & keep);                            \
    }                                                                                    \
    for (i = 0; i < 10; i++) {                                                           \
        double sum = 0;                                                                  \
        int l;                                                                           \
        memcpy(part, &a[i], sizeof part);                                                \
        for (l = 0; l < L; l++) sum += (double)part[l];                                  \
        out[i] = sum;                                                                    \
    }                                                                                    \
}

/* The same convolutions with padding 1 on every side ("same": Ho = H, Wo = W), straight from
   the unpadded planes: the blocks cover the output columns 1 .. W-2 (their loads, columns
   s-1 .. s+L, stay inside the row; W - 2 >= L), columns 0 and W-1 are summed one by one, and
   the rows above and below the plane are skipped.  The sums run in the order of the padded
   kernels (bias, tap 0, ..., tap 8, a tap on padding adding nothing), so both give the same
   bits. */
#define CK_DW3_DEFINE_SAME(T, IT, SUF, VB, ATTR)                                         \
/* input row r finishes output row r - 1, continues r and starts r + 1 */               \
ATTR static inline __attribute__((always_inline)) void                                  \
ck_dw3_fwd1_group_##SUF##VB(const T* x, Py_ssize_t H, Py_ssize_t W,                      \
                            const ck_dw3v_##SUF##VB* k, ck_dw3v_##SUF##VB b0, T* y,      \
                            const Py_ssize_t* s, const int NB) {                         \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    V p0[4], p1[4];                                                                      \
    Py_ssize_t r;                                                                        \
    int b;                                                                               \
    for (b = 0; b < NB; b++) { p0[b] = b0; p1[b] = b0; }                                 \
    for (r = 0; r < H; r++) {                                                            \
        const T* xr = x + r * W;                                                         \
        for (b = 0; b < NB; b++) {                                                       \
            V v0 = CK_DW3_LD(V, xr + s[b] - 1);                                          \
            V v1 = CK_DW3_LD(V, xr + s[b]);                                              \
            V v2 = CK_DW3_LD(V, xr + s[b] + 1);                                          \
            V o = p0[b] + k[6] * v0 + k[7] * v1 + k[8] * v2;                             \
            p0[b] = p1[b] + k[3] * v0 + k[4] * v1 + k[5] * v2;                           \
            p1[b] = b0 + k[0] * v0 + k[1] * v1 + k[2] * v2;                              \
            if (r >= 1) CK_DW3_ST(y + (r - 1) * W + s[b], o);                            \
        }                                                                                \
    }                                                                                    \
    for (b = 0; b < NB; b++) CK_DW3_ST(y + (H - 1) * W + s[b], p0[b]);                   \
}                                                                                        \
/* y[h, j] = bias + sum_{a,b} w'[a, b] * x[h + a - 1, j + b - 1] (0 outside x) */          \
ATTR static void ck_dw3_fwd1_##SUF##VB(const T* x, const T* w, int flip, T bias, T* y,   \
                                       Py_ssize_t H, Py_ssize_t W) {                     \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    enum { L = VB / sizeof(T) };                                                         \
    V k[9], b0, z = {0};                                                                 \
    T c[9], e0, e1, f0, f1, o;                                                           \
    Py_ssize_t j, i, r, nb = (W - 2 + L - 1) / L, s[4];                                  \
    for (i = 0; i < 9; i++) { c[i] = w[flip ? 8 - i : i]; k[i] = z + c[i]; }             \
    b0 = z + bias;                                                                       \
    for (j = 0; j < nb; ) {                                                              \
        int NB = nb - j >= 4 ? 4 : nb - j >= 2 ? 2 : 1;                                  \
        for (i = 0; i < NB; i++)    /* the last block ends at W - 1 */                   \
            s[i] = 1 + (j + i) * L < W - 1 - L ? 1 + (j + i) * L : W - 1 - L;            \
        if (NB == 4) ck_dw3_fwd1_group_##SUF##VB(x, H, W, k, b0, y, s, 4);               \
        else if (NB == 2) ck_dw3_fwd1_group_##SUF##VB(x, H, W, k, b0, y, s, 2);          \
        else ck_dw3_fwd1_group_##SUF##VB(x, H, W, k, b0, y, s, 1);                       \
        j += NB;                                                                         \
    }                                                                                    \
    /* columns 0 (taps b = 1, 2) and W-1 (taps b = 0, 1), rolling down the rows */        \
    e0 = f0 = e1 = f1 = bias;                                                            \
    for (r = 0; r < H; r++) {                                                            \
        const T* xr = x + r * W;                                                         \
        o = e0 + c[7] * xr[0] + c[8] * xr[1];                                            \
        e0 = f0 + c[4] * xr[0] + c[5] * xr[1];                                           \
        f0 = bias + c[1] * xr[0] + c[2] * xr[1];                                         \
        if (r >= 1) y[(r - 1) * W] = o;                                                  \
        o = e1 + c[6] * xr[W - 2] + c[7] * xr[W - 1];                                    \
        e1 = f1 + c[3] * xr[W - 2] + c[4] * xr[W - 1];                                   \
        f1 = bias + c[0] * xr[W - 2] + c[1] * xr[W - 1];                                 \
        if (r >= 1) y[(r - 1) * W + W - 1] = o;                                          \
    }                                                                                    \
    y[(H - 1) * W] = e0;                                                                 \
    y[(H - 1) * W + W - 1] = e1;                                                         \
}                                                                                        \
/* x row r meets grad_y rows r + 1 (taps 0-2), r (taps 3-5) and r - 1 (taps 6-8) */      \
ATTR static inline __attribute__((always_inline)) void                                  \
ck_dw3_wgrad1_group_##SUF##VB(const T* gy, const T* x, Py_ssize_t H, Py_ssize_t W,       \
                              const Py_ssize_t* s, const int NB, ck_dw3v_##SUF##VB* acc) { \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    V a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], a4 = acc[4];                   \
    V a5 = acc[5], a6 = acc[6], a7 = acc[7], a8 = acc[8], a9 = acc[9];                   \
    Py_ssize_t r;                                                                        \
    int b;                                                                               \
    for (r = 0; r < H; r++) {                                                            \
        const T* xr = x + r * W;                                                         \
        const T* g = gy + r * W;                                                         \
        int up = r + 1 < H, down = r >= 1;                                               \
        for (b = 0; b < NB; b++) {                                                       \
            V v0 = CK_DW3_LD(V, xr + s[b] - 1);                                          \
            V v1 = CK_DW3_LD(V, xr + s[b]);                                              \
            V v2 = CK_DW3_LD(V, xr + s[b] + 1);                                          \
            V gv;                                                                        \
            if (up) {                                                                    \
                gv = CK_DW3_LD(V, g + W + s[b]);                                         \
                a0 += gv * v0; a1 += gv * v1; a2 += gv * v2;                             \
            }                                                                            \
            gv = CK_DW3_LD(V, g + s[b]);                                                 \
            a9 += gv; a3 += gv * v0; a4 += gv * v1; a5 += gv * v2;                       \
            if (down) {                                                                  \
                gv = CK_DW3_LD(V, g - W + s[b]);                                         \
                a6 += gv * v0; a7 += gv * v1; a8 += gv * v2;                             \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4;                     \
    acc[5] = a5; acc[6] = a6; acc[7] = a7; acc[8] = a8; acc[9] = a9;                     \
}                                                                                        \
/* out as ck_dw3_wgrad for padding 1: out[3a + b] = sum_{h,j} gy[h, j] *                   \
   x[h + a - 1, j + b - 1] (0 outside x), out[9] = sum gy */                              \
ATTR static void ck_dw3_wgrad1_##SUF##VB(const T* gy, const T* x, Py_ssize_t H,          \
                                         Py_ssize_t W, double* out) {                    \
    typedef ck_dw3v_##SUF##VB V;                                                         \
    typedef ck_dw3m_##SUF##VB M;                                                         \
    enum { L = VB / sizeof(T) };                                                         \
    V a[10], t[10], z = {0};                                                             \
    M keep;                                                                              \
    IT lanes[L];                                                                         \
    T part[L];                                                                           \
    double e[10], e1 = 0, e4 = 0, e7 = 0, e9 = 0;                                        \
    Py_ssize_t j, i, r, nfull = (W - 2) / L, s[4];                                       \
    for (i = 0; i < 10; i++) { a[i] = z; e[i] = 0; }                                     \
    for (j = 0; j < nfull; ) {                                                           \
        int NB = nfull - j >= 4 ? 4 : nfull - j >= 2 ? 2 : 1;                            \
        for (i = 0; i < NB; i++) s[i] = 1 + (j + i) * L;                                 \
        if (NB == 4) ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 4, a);                \
        else if (NB == 2) ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 2, a);           \
        else ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 1, a);                        \
        j += NB;                                                                         \
    }                                                                                    \
    if (nfull * L < W - 2) {                                                             \
        for (i = 0; i < 10; i++) t[i] = z;                                               \
        s[0] = W - 1 - L;                                                                \
        ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 1, t);                             \
        for (i = 0; i < L; i++) lanes[i] = i < 1 + nfull * L - s[0] ? 0 : -1;            \
        memcpy(&keep, lanes, sizeof keep);                                               \
        for (i = 0; i < 10; i++) a[i] += (V)((M)t[i] & keep);                            \
    }                                                                                    \
    /* grad_y columns 0 (taps b = 1, 2) and W-1 (taps b = 0, 1), in double, one sum per  \
       (tap, column) so that no sum waits on another */                                  \
    for (r = 0; r < H; r++) {                                                            \
        const T* xr = x + r * W;                                                         \
        const T* g = gy + r * W;                                                         \
        double xa = xr[0], xb = xr[1], xc = xr[W - 2], xd = xr[W - 1], g0, g1;           \
        g0 = g[0]; g1 = g[W - 1];                                                        \
        e[9] += g0; e9 += g1;                                                            \
        e[3] += g1 * xc; e[4] += g0 * xa; e4 += g1 * xd; e[5] += g0 * xb;                \
        if (r + 1 < H) {                                                                 \
            g0 = g[W]; g1 = g[2 * W - 1];                                                \
            e[0] += g1 * xc; e[1] += g0 * xa; e1 += g1 * xd; e[2] += g0 * xb;            \
        }                                                                                \
        if (r >= 1) {                                                                    \
            g0 = g[-W]; g1 = g[-1];                                                      \
            e[6] += g1 * xc; e[7] += g0 * xa; e7 += g1 * xd; e[8] += g0 * xb;            \
        }                                                                                \
    }                                                                                    \
    e[1] += e1; e[4] += e4; e[7] += e7; e[9] += e9;                                      \
    for (i = 0; i < 10; i++) {                                                           \
        double sum = 0;                                                                  \
        int l;                                                                           \
        memcpy(part, &a[i], sizeof part);                                                \
        for (l = 0; l < L; l++) sum += (double)part[l];                                  \
        out[i] = sum + e[i];                                                             \
    }                                                                                    \
}

#if defined(__x86_64__) || defined(__i386__)
#define CK_DW3_X86 1
#include "isa.h"
#endif

CK_DW3_DEFINE(float, int, f, 16, )
CK_DW3_DEFINE_SAME(float, int, f, 16, )
CK_DW3_DEFINE(double, long long, d, 16, )
CK_DW3_DEFINE_SAME(double, long long, d, 16, )
#ifdef CK_DW3_X86
CK_DW3_DEFINE(float, int, f, 32, __attribute__((target("avx2,fma"))))
CK_DW3_DEFINE_SAME(float, int, f, 32, __attribute__((target("avx2,fma"))))
CK_DW3_DEFINE(double, long long, d, 32, __attribute__((target("avx2,fma"))))
CK_DW3_DEFINE_SAME(double, long long, d, 32, __attribute__((target("avx2,fma"))))
CK_DW3_DEFINE(float, int, f, 64, CK_AVX512_VEC_TARGET)
CK_DW3_DEFINE_SAME(float, int, f, 64, CK_AVX512_VEC_TARGET)
CK_DW3_DEFINE(double, long long, d, 64, CK_AVX512_VEC_TARGET)
CK_DW3_DEFINE_SAME(double, long long, d, 64, CK_AVX512_VEC_TARGET)
#endif

static int ck_dw3_cap = 3;      /* the widest level allowed; tests lower it to run the others */

static int ck_dw3_isa(void) {
    static int known = 0;
    if (!known) {
#ifdef CK_DW3_X86
        __builtin_cpu_init();
        known = CK_CPU_HAS_AVX512() ? 3      /* (CONVKIT_DISABLE_AVX512: isa.h) */
                : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 2 : 1;
#else
        known = 1;
#endif
    }
    return known < ck_dw3_cap ? known : ck_dw3_cap;
}
#else
static int ck_dw3_cap = 0;
static int ck_dw3_isa(void) { return 0; }
#endif

/* the widest level (<= the CPU's, <= the cap) whose vectors of itemsize-byte elements fit in
   a row of n; 0: none (the general depthwise kernels run) */
static int ck_dw3_level(int itemsize, Py_ssize_t n) {
    int lvl = ck_dw3_isa();
    while (lvl > 0 && (Py_ssize_t)((8 << lvl) / itemsize) > n) lvl--;
    return lvl;
}
static int ck_dw3_set_cap(int cap) { int old = ck_dw3_cap; ck_dw3_cap = cap; return old; }

#define CK_DW3_DISPATCH(T, SUF)                                                          \
static void ck_dw3_fwd_##SUF(int lvl, const T* xp, Py_ssize_t Wp, const T* w, int flip,  \
                             T bias, T* y, Py_ssize_t Ho, Py_ssize_t Wo) {               \
    CK_DW3_SWITCH(lvl, ck_dw3_fwd_##SUF, (xp, Wp, w, flip, bias, y, Ho, Wo))             \
}                                                                                        \
static void ck_dw3_wgrad_##SUF(int lvl, const T* gy, Py_ssize_t Ho, Py_ssize_t Wo,       \
                               const T* xp, Py_ssize_t Wp, double* out) {                \
    CK_DW3_SWITCH(lvl, ck_dw3_wgrad_##SUF, (gy, Ho, Wo, xp, Wp, out))                    \
}                                                                                        \
static void ck_dw3_fwd1_##SUF(int lvl, const T* x, const T* w, int flip, T bias, T* y,   \
                              Py_ssize_t H, Py_ssize_t W) {                              \
    CK_DW3_SWITCH(lvl, ck_dw3_fwd1_##SUF, (x, w, flip, bias, y, H, W))                   \
}                                                                                        \
static void ck_dw3_wgrad1_##SUF(int lvl, const T* gy, const T* x, Py_ssize_t H,          \
                                Py_ssize_t W, double* out) {                             \
    CK_DW3_SWITCH(lvl, ck_dw3_wgrad1_##SUF, (gy, x, H, W, out))                          \
}
#if defined(CK_DW3_X86)
#define CK_DW3_SWITCH(lvl, f, args)                                                      \
    if (lvl >= 3) f##64 args; else if (lvl == 2) f##32 args; else f##16 args;
#elif defined(CK_DW3)
#define CK_DW3_SWITCH(lvl, f, args) f##16 args;
#else
#define CK_DW3_SWITCH(lvl, f, args)
#endif
CK_DW3_DISPATCH(float, f)
CK_DW3_DISPATCH(double, d)

#endif  /* CONVKIT_DW3X3_H */
