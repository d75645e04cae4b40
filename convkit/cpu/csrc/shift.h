#ifndef CONVKIT_SHIFT_H
#define CONVKIT_SHIFT_H

/* Masked shifted copies for the small-map im2col (AVX-512F, else AVX2, chosen at run time):
   lane i of vector v of an image's columns is x[16v + i + off] where its mask bit is set,
   else 0.  Masked-off lanes are never read (AVX-512 masked loads and AVX vmaskmov loads do not
   touch them), so shifts that point before or after a plane read nothing outside it.  The
   AVX2 copies take each 64-byte vector of the masks as two halves: the same columns, so the
   same bits as the AVX-512 copies and the padded-plane gather. */
#include <stddef.h>
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#include "isa.h"
#define CK_SHIFT_BUILT 1
/* the 8 (float) or 4 (double) lanes of a 256-bit vector whose bits are set in m, as a
   vmaskmov mask (all ones / zero per lane) */
__attribute__((target("avx2")))
static inline __m256i ck_shift_lanes32(unsigned m) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), bit), bit);
}
__attribute__((target("avx2")))
static inline __m256i ck_shift_lanes64(unsigned m) {
    const __m256i bit = _mm256_setr_epi64x(1, 2, 4, 8);
    return _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x((long long)m), bit), bit);
}
__attribute__((target("avx2")))
static void ck_shift_f_avx2(const float* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                            const unsigned short* masks, ptrdiff_t nv, float* dst) {
    for (ptrdiff_t v = 0; v < nv; v++) {   /* vector v of every image: its masks once */
        const __m256i lo = ck_shift_lanes32(masks[v] & 0xFFu);
        const __m256i hi = ck_shift_lanes32(masks[v] >> 8);
        const float* src = x + off + 16 * v;
        float* d = dst + 16 * v;
        for (ptrdiff_t j = 0; j < nb; j++) {
            _mm256_storeu_ps(d + j * nv * 16, _mm256_maskload_ps(src + j * img, lo));
            _mm256_storeu_ps(d + j * nv * 16 + 8, _mm256_maskload_ps(src + j * img + 8, hi));
        }
    }
}
__attribute__((target("avx2")))
static void ck_shift_d_avx2(const double* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                            const unsigned short* masks, ptrdiff_t nv, double* dst) {
    for (ptrdiff_t v = 0; v < nv; v++) {
        const __m256i lo = ck_shift_lanes64(masks[v] & 0xFu);
        const __m256i hi = ck_shift_lanes64((masks[v] >> 4) & 0xFu);
        const double* src = x + off + 8 * v;
        double* d = dst + 8 * v;
        for (ptrdiff_t j = 0; j < nb; j++) {
            _mm256_storeu_pd(d + j * nv * 8, _mm256_maskload_pd(src + j * img, lo));
            _mm256_storeu_pd(d + j * nv * 8 + 4, _mm256_maskload_pd(src + j * img + 4, hi));
        }
    }
}
/* 2: AVX-512F, 1: AVX2 (no AVX-512), 0: neither (the padded-plane gather) */
static int ck_shift_available(void) {
    static int state = -1;
    if (state < 0) {
        __builtin_cpu_init();
        state = CK_CPU_HAS_AVX512() ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return state;
}
CK_AVX512_TARGET
static void ck_shift_f512(const float* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
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
static void ck_shift_d512(const double* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                       const unsigned short* masks, ptrdiff_t nv, double* dst) {
    for (ptrdiff_t j = 0; j < nb; j++) {
        const double* src = x + j * img;
        double* d = dst + j * nv * 8;
        for (ptrdiff_t v = 0; v < nv; v++)
            _mm512_storeu_pd(d + 8 * v,
                             _mm512_maskz_loadu_pd((__mmask8)masks[v], src + off + 8 * v));
    }
}
static void ck_shift_f(const float* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                       const unsigned short* masks, ptrdiff_t nv, float* dst) {
    if (ck_shift_available() == 2)
        ck_shift_f512(x, img, nb, off, masks, nv, dst);
    else
        ck_shift_f_avx2(x, img, nb, off, masks, nv, dst);
}
static void ck_shift_d(const double* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                       const unsigned short* masks, ptrdiff_t nv, double* dst) {
    if (ck_shift_available() == 2)
        ck_shift_d512(x, img, nb, off, masks, nv, dst);
    else
        ck_shift_d_avx2(x, img, nb, off, masks, nv, dst);
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
