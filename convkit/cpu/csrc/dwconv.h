#ifndef CONVKIT_DWCONV_H
#define CONVKIT_DWCONV_H

/* Depthwise stride-1 inner blocks with GCC/clang vector extensions (SSE2 at the x86-64
   baseline; the loop vectorizer left these register blocks scalar).  Other compilers get
   plain loops.  ck_block<WD> keeps WD outputs in registers across all taps; ck_dot<WD>
   keeps WD partial sums (lane j takes elements j, j + WD, ...). */
#include <string.h>
#if defined(__GNUC__) || defined(__clang__)
typedef float ck_vf __attribute__((vector_size(16)));
typedef double ck_vd __attribute__((vector_size(16)));
#define CK_HELPERS(T, V, SUF)                                                             \
static inline V ck_ld_##SUF(const T* p) { V v; memcpy(&v, p, sizeof(V)); return v; }      \
static inline void ck_st_##SUF(T* p, V v) { memcpy(p, &v, sizeof(V)); }
#define CK_DEFINE(T, V, SUF, WD)                                                          \
static void ck_block##WD##_##SUF(const T* xp, Py_ssize_t Wp, const T* w, Py_ssize_t KH,   \
                                 Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, T* y,       \
                                 T init, int accumulate) {                                \
    enum { L = sizeof(V) / sizeof(T), NV = WD / (sizeof(V) / sizeof(T)) };               \
    V acc[NV]; Py_ssize_t kh, kw; int v;                                                  \
    for (v = 0; v < NV; v++) {                                                            \
        if (accumulate) acc[v] = ck_ld_##SUF(y + v * L);                                  \
        else { V b = {0}; acc[v] = b + init; }                                            \
    }                                                                                     \
    for (kh = 0; kh < KH; kh++)                                                           \
        for (kw = 0; kw < KW; kw++) {                                                     \
            const T* xk = xp + kh * dh * Wp + kw * dw;                                    \
            V wv = {0}; wv = wv + w[kh * KW + kw];                                        \
            for (v = 0; v < NV; v++) acc[v] += wv * ck_ld_##SUF(xk + v * L);              \
        }                                                                                 \
    for (v = 0; v < NV; v++) ck_st_##SUF(y + v * L, acc[v]);                              \
}                                                                                         \
static void ck_dot##WD##_##SUF(const T* a, const T* b, Py_ssize_t n, T* out) {           \
    enum { L = sizeof(V) / sizeof(T), NV = WD / (sizeof(V) / sizeof(T)) };               \
    V acc[NV]; Py_ssize_t i; int v;                                                       \
    for (v = 0; v < NV; v++) acc[v] = ck_ld_##SUF(out + v * L);                           \
    for (i = 0; i < n; i += WD)                                                         \
        for (v = 0; v < NV; v++)                                                          \
            acc[v] += ck_ld_##SUF(a + i + v * L) * ck_ld_##SUF(b + i + v * L);            \
    for (v = 0; v < NV; v++) ck_st_##SUF(out + v * L, acc[v]);                            \
}
#else
#define CK_HELPERS(T, V, SUF)
#define CK_DEFINE(T, V, SUF, WD)                                                          \
static void ck_block##WD##_##SUF(const T* xp, Py_ssize_t Wp, const T* w, Py_ssize_t KH,   \
                                 Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, T* y,       \
                                 T init, int accumulate) {                                \
    T acc[WD]; Py_ssize_t kh, kw; int j;                                                  \
    for (j = 0; j < WD; j++) acc[j] = accumulate ? y[j] : init;                           \
    for (kh = 0; kh < KH; kh++)                                                           \
        for (kw = 0; kw < KW; kw++) {                                                     \
            const T* xk = xp + kh * dh * Wp + kw * dw; T wv = w[kh * KW + kw];            \
            for (j = 0; j < WD; j++) acc[j] += wv * xk[j];                                \
        }                                                                                 \
    for (j = 0; j < WD; j++) y[j] = acc[j];                                               \
}                                                                                         \
static void ck_dot##WD##_##SUF(const T* a, const T* b, Py_ssize_t n, T* out) {           \
    Py_ssize_t i; int j;                                                                  \
    for (i = 0; i < n; i += WD)                                                           \
        for (j = 0; j < WD; j++) out[j] += a[i + j] * b[i + j];                           \
}
#endif
CK_HELPERS(float, ck_vf, f)
CK_HELPERS(double, ck_vd, d)
CK_DEFINE(float, ck_vf, f, 16)
CK_DEFINE(double, ck_vd, d, 16)
CK_DEFINE(float, ck_vf, f, 8)
CK_DEFINE(double, ck_vd, d, 8)

#endif  /* CONVKIT_DWCONV_H */
