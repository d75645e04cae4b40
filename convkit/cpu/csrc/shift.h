#ifndef CONVKIT_SHIFT_H
#define CONVKIT_SHIFT_H

/* Masked shifted copies for the small-map im2col (AVX-512F, chosen at run time): lane i of
   vector v of an image's columns is x[16v + i + off] where its mask bit is set, else 0.
   Masked-off lanes are never read (AVX-512 masked loads do not touch them), so shifts that
   point before or after a plane read nothing outside it. */
#include <stddef.h>
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#include "isa.h"
#define CK_SHIFT_BUILT 1
CK_AVX512_TARGET
static void ck_shift_f(const float* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                       const unsigned short* masks, ptrdiff_t nv, float* dst) {
    for (ptrdiff_t j = 0; j < nb; j++) {
        const float* src = x + j * img;
        float* d = dst + j * nv * 16;
        for (ptrdiff_t v = 0; v < nv; v++)
            _mm512_storeu_ps(d + 16 * v,
                             _mm512_maskz_loadu_ps((__mmask16)masks[v], src + off + 16 * v));
    }
}
CK_AVX512_TARGET
static void ck_shift_d(const double* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                       const unsigned short* masks, ptrdiff_t nv, double* dst) {
    for (ptrdiff_t j = 0; j < nb; j++) {
        const double* src = x + j * img;
        double* d = dst + j * nv * 8;
        for (ptrdiff_t v = 0; v < nv; v++)
            _mm512_storeu_pd(d + 8 * v,
                             _mm512_maskz_loadu_pd((__mmask8)masks[v], src + off + 8 * v));
    }
}
static int ck_shift_available(void) {
    static int state = -1;
    if (state < 0) { __builtin_cpu_init(); state = CK_CPU_HAS_AVX512() ? 1 : 0; }
    return state;
}
#else
#define CK_SHIFT_BUILT 0
static void ck_shift_f(const float* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                       const unsigned short* masks, ptrdiff_t nv, float* dst) {}
static void ck_shift_d(const double* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                       const unsigned short* masks, ptrdiff_t nv, double* dst) {}
static int ck_shift_available(void) { return 0; }
#endif

#endif  /* CONVKIT_SHIFT_H */
