/* What the RoI kernels share (csrc/roi_align.h and csrc/roi_pool.h include it; declared in
   csrc/roi.pxd): which vector paths exist and which is in use, the per-ISA operations the
   kernel bodies are written in, transposes, finiteness tests, streaming copies and aligned
   scratch. */
#ifndef CK_ROI_SIMD_H
#define CK_ROI_SIMD_H
/* float32 kernels on the NHWC map, written once (the CK_*_BODY macros) and instantiated for
   SSE2 (4 lanes), AVX2 (8) and AVX-512 (16; both picked at run time by CPUID).  Every path
   does lane for lane the same multiplies and adds in the same order as the scalar tail
   (no FMA: contraction is switched off below), so the bits never depend on the path.
   Work per RoI is bin-major: for each bin, all channels (register blocks of 4 vectors) over
   the bin's taps, so each tapped pixel's channels are read as one contiguous run; results
   go to a bin-major scratch row and are transposed into the (C, bins) output once. */
#include <stddef.h>
#include <stdint.h>
#include <float.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define CK_ROI_SSE2 1
#endif
#if defined(CK_ROI_SSE2) && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#include "isa.h"
#define CK_ROI_WIDE 1
#endif
/* The kernels' arithmetic is exactly what the C says (no FMA contraction: every vector path
   and the scalar tails give the same bits): each header brackets its functions with these. */
#if defined(__clang__)
#define CK_ROI_STRICT_FP_BEGIN _Pragma("clang fp contract(off)")
#define CK_ROI_STRICT_FP_END
#elif defined(__GNUC__)
#define CK_ROI_STRICT_FP_BEGIN                                                              \
    _Pragma("GCC push_options") _Pragma("GCC optimize(\"fp-contract=off\")")
#define CK_ROI_STRICT_FP_END _Pragma("GCC pop_options")
#else
#define CK_ROI_STRICT_FP_BEGIN
#define CK_ROI_STRICT_FP_END
#endif
CK_ROI_STRICT_FP_BEGIN

static int ck_align_simd(void) {
#ifdef CK_ROI_SSE2
    return 1;
#else
    return 0;
#endif
}
/* widest vector path in use: 2 AVX-512, 1 AVX2, 0 SSE2 (or none); tests lower the cap */
static int ck_simd_cap = 2;
static int ck_simd_level(void) {
#ifdef CK_ROI_WIDE
    static int hw = -1;
    if (hw < 0) {
        __builtin_cpu_init();
        hw = CK_CPU_HAS_AVX512() ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return hw < ck_simd_cap ? hw : ck_simd_cap;
#else
    return 0;
#endif
}
static int ck_set_simd_cap(int cap) {
    ck_simd_cap = cap;
    return ck_simd_level();
}

/* ---- per-ISA operations used by the bodies ---- */
#define CK_X_L 4
#define CK_X_R 4         /* vectors of channels per register block */
#define CK_X_V __m128
#define CK_X_LD(p) _mm_loadu_ps(p)
#define CK_X_ST(p, v) _mm_storeu_ps(p, v)
#define CK_X_ADD(a, b) _mm_add_ps(a, b)
#define CK_X_MUL(a, b) _mm_mul_ps(a, b)
#define CK_X_DIV(a, b) _mm_div_ps(a, b)
#define CK_X_SET1(s) _mm_set1_ps(s)
#define CK_X_M __m128
#define CK_X_GT(a, b) _mm_cmpgt_ps(a, b)
#define CK_X_SEL(m, a, b) _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b))
#define CK_X_IV __m128i
#define CK_X_ISET1(s) _mm_set1_epi32(s)
#define CK_X_ISEL(m, a, b) _mm_or_si128(_mm_and_si128(_mm_castps_si128(m), a), \
                                        _mm_andnot_si128(_mm_castps_si128(m), b))
#define CK_X_IST(p, v) _mm_storeu_si128((__m128i*)(p), v)

#define CK_Y_L 8
#define CK_Y_R 4
#define CK_Y_V __m256
#define CK_Y_LD(p) _mm256_loadu_ps(p)
#define CK_Y_ST(p, v) _mm256_storeu_ps(p, v)
#define CK_Y_ADD(a, b) _mm256_add_ps(a, b)
#define CK_Y_MUL(a, b) _mm256_mul_ps(a, b)
#define CK_Y_DIV(a, b) _mm256_div_ps(a, b)
#define CK_Y_SET1(s) _mm256_set1_ps(s)
#define CK_Y_M __m256
#define CK_Y_GT(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
#define CK_Y_SEL(m, a, b) _mm256_blendv_ps(b, a, m)
#define CK_Y_IV __m256i
#define CK_Y_ISET1(s) _mm256_set1_epi32(s)
#define CK_Y_ISEL(m, a, b) _mm256_castps_si256(_mm256_blendv_ps( \
    _mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m))
#define CK_Y_IST(p, v) _mm256_storeu_si256((__m256i*)(p), v)

#define CK_Z_L 16
#define CK_Z_R 8         /* 32 registers: 8 x 2 partial sums fit */
#define CK_Z_V __m512
#define CK_Z_LD(p) _mm512_loadu_ps(p)
#define CK_Z_ST(p, v) _mm512_storeu_ps(p, v)
#define CK_Z_ADD(a, b) _mm512_add_ps(a, b)
#define CK_Z_MUL(a, b) _mm512_mul_ps(a, b)
#define CK_Z_DIV(a, b) _mm512_div_ps(a, b)
#define CK_Z_SET1(s) _mm512_set1_ps(s)
#define CK_Z_M __mmask16
#define CK_Z_GT(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)
#define CK_Z_SEL(m, a, b) _mm512_mask_blend_ps(m, b, a)
#define CK_Z_IV __m512i
#define CK_Z_ISET1(s) _mm512_set1_epi32(s)
#define CK_Z_ISEL(m, a, b) _mm512_mask_blend_epi32(m, b, a)
#define CK_Z_IST(p, v) _mm512_storeu_si512((void*)(p), v)

/* A kernel body (BODY(X), X one of CK_X / CK_Y / CK_Z) built for every vector path this
   compiler has: NAME_x (SSE2), NAME_y (AVX2), NAME_z (AVX-512F); CK_ROI_CALL(lv, NAME, ...)
   calls the one for level lv (as ck_simd_level gives it).  Only with CK_ROI_SSE2. */
#if defined(CK_ROI_WIDE)
#define CK_ROI_INSTANTIATE(NAME, ARGS, BODY)                                                \
    static ptrdiff_t NAME##_x(ARGS) BODY(CK_X)                                              \
    __attribute__((target("avx2")))                                                         \
    static ptrdiff_t NAME##_y(ARGS) BODY(CK_Y)                                              \
    CK_AVX512_TARGET                                                                        \
    static ptrdiff_t NAME##_z(ARGS) BODY(CK_Z)
#define CK_ROI_CALL(lv, NAME, ...)                                                          \
    ((lv) == 2 ? NAME##_z(__VA_ARGS__) : (lv) == 1 ? NAME##_y(__VA_ARGS__) : NAME##_x(__VA_ARGS__))
#elif defined(CK_ROI_SSE2)
#define CK_ROI_INSTANTIATE(NAME, ARGS, BODY) static ptrdiff_t NAME##_x(ARGS) BODY(CK_X)
#define CK_ROI_CALL(lv, NAME, ...) NAME##_x(__VA_ARGS__)
#else
#define CK_ROI_INSTANTIATE(NAME, ARGS, BODY)
#endif

/* dst[c*ldd + r] = op(src[r*lds + c]) for r < rows, c < cols, op: x * inv (kind 1),
   x / fcount (kind 2), x (else) -- a RoI's grad block is transposed to bin-major and
   divided by the sample count in one pass.  8x8 register blocks (AVX2), then 4x4 (SSE2),
   then single values; columns outer (each block of dst rows is written as one run). */
#define CK_TR_OP(v) (kind == 1 ? (v) * inv : kind == 2 ? (v) / fcount : (v))
#ifdef CK_ROI_WIDE
/* a[0..7] (8 rows of 8 lanes) -> a[i] = lane i of every row: the 8x8 transpose in AVX2
   registers (bits moved, never changed: int32 rows go through it cast to float) */
__attribute__((target("avx2")))
static inline void ck_tr8x8(__m256* a) {
    __m256 t[8], u[8];
    int i;
    for (i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(a[i], a[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(a[i], a[i + 1]);
    }
    for (i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (i = 0; i < 4; i++) {
        a[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        a[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}
__attribute__((target("avx2")))
static ptrdiff_t ck_transpose8(const float* src, ptrdiff_t lds, ptrdiff_t rows,
                               ptrdiff_t cols, float* dst, ptrdiff_t ldd, int kind,
                               float inv, float fcount) {
    ptrdiff_t c = 0, r, i;
    __m256 m = _mm256_set1_ps(kind == 1 ? inv : fcount);
    for (; c + 8 <= cols; c += 8) {
        for (r = 0; r + 8 <= rows; r += 8) {
            __m256 a[8];
            for (i = 0; i < 8; i++) a[i] = _mm256_loadu_ps(src + (r + i) * lds + c);
            ck_tr8x8(a);
            for (i = 0; i < 8; i++) {
                if (kind == 1) a[i] = _mm256_mul_ps(a[i], m);
                else if (kind == 2) a[i] = _mm256_div_ps(a[i], m);
                _mm256_storeu_ps(dst + (c + i) * ldd + r, a[i]);
            }
        }
        for (; r < rows; r++)
            for (i = 0; i < 8; i++) dst[(c + i) * ldd + r] = CK_TR_OP(src[r * lds + c + i]);
    }
    return c;
}
#endif
static void ck_transpose_sf(const float* src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                            float* dst, ptrdiff_t ldd, int kind, float inv, float fcount) {
    ptrdiff_t r, c = 0, i;
#ifdef CK_ROI_WIDE
    if (ck_simd_level() >= 1) c = ck_transpose8(src, lds, rows, cols, dst, ldd, kind, inv, fcount);
#endif
#ifdef CK_ROI_SSE2
    {
        __m128 m = _mm_set1_ps(kind == 1 ? inv : fcount);
        for (; c + 4 <= cols; c += 4) {
            for (r = 0; r + 4 <= rows; r += 4) {
                __m128 v[4];
                for (i = 0; i < 4; i++) v[i] = _mm_loadu_ps(src + (r + i) * lds + c);
                _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
                for (i = 0; i < 4; i++) {
                    if (kind == 1) v[i] = _mm_mul_ps(v[i], m);
                    else if (kind == 2) v[i] = _mm_div_ps(v[i], m);
                    _mm_storeu_ps(dst + (c + i) * ldd + r, v[i]);
                }
            }
            for (; r < rows; r++)
                for (i = 0; i < 4; i++) dst[(c + i) * ldd + r] = CK_TR_OP(src[r * lds + c + i]);
        }
    }
#endif
    for (; c < cols; c++)
        for (r = 0; r < rows; r++)
            dst[c * ldd + r] = CK_TR_OP(src[r * lds + c]);
}
static void ck_transpose_f(const float* src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                           float* dst, ptrdiff_t ldd) {
    ck_transpose_sf(src, lds, rows, cols, dst, ldd, 0, 1.0f, 1.0f);
}
/* 1 when none of n floats is NaN/inf: an OR of (exponent bits + 1 ulp of exponent), whose
   top bit is set only by an all-ones exponent (integer ops, so it vectorises). */
static int ck_all_finite_f(const float* a, ptrdiff_t n) {
    const uint32_t* u = (const uint32_t*)a;
    uint32_t m = 0;
    ptrdiff_t i;
    for (i = 0; i < n; i++) m |= (u[i] & 0x7f800000u) + 0x00800000u;
    return (m & 0x80000000u) == 0;
}
static int ck_all_finite_d(const double* a, ptrdiff_t n) {
    const uint64_t* u = (const uint64_t*)a;
    uint64_t m = 0;
    ptrdiff_t i;
    for (i = 0; i < n; i++) m |= (u[i] & 0x7ff0000000000000ull) + 0x0010000000000000ull;
    return (m & 0x8000000000000000ull) == 0;
}
/* dst = src (bytes), with non-temporal stores where dst is 16-byte aligned: a RoI's output
   block is written once and not read back here, so it need not be fetched into cache first
   (halves the memory traffic of the output).  Ends with a store fence. */
#ifdef CK_ROI_WIDE
/* ck_stream_copy's AVX2 body: 32-byte non-temporal stores (half the instructions) */
__attribute__((target("avx2")))
static void ck_stream_copy32(char* d, const char* s, size_t bytes) {
    size_t head = (32 - ((uintptr_t)d & 31)) & 31, i;
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    d += head; s += head; bytes -= head;
    for (i = 0; i + 32 <= bytes; i += 32)
        _mm256_stream_si256((__m256i*)(d + i), _mm256_loadu_si256((const __m256i*)(s + i)));
    memcpy(d + i, s + i, bytes - i);
    _mm_sfence();
}
#endif
static void ck_stream_copy(void* dst, const void* src, size_t bytes) {
#ifdef CK_ROI_WIDE
    if (ck_simd_level() >= 1) {
        ck_stream_copy32((char*)dst, (const char*)src, bytes);
        return;
    }
#endif
#ifdef CK_ROI_SSE2
    char* d = (char*)dst;
    const char* s = (const char*)src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15, i;
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    d += head; s += head; bytes -= head;
    for (i = 0; i + 16 <= bytes; i += 16)
        _mm_stream_si128((__m128i*)(d + i), _mm_loadu_si128((const __m128i*)(s + i)));
    memcpy(d + i, s + i, bytes - i);
    _mm_sfence();
#else
    memcpy(dst, src, bytes);
#endif
}
/* 64-byte aligned scratch (whole vectors never straddle a cache line); free with
   ck_free64 */
static void* ck_malloc64(size_t n) {
    char* raw = (char*)malloc(n + 64 + sizeof(void*));
    char* p;
    if (raw == NULL) return NULL;
    p = (char*)(((uintptr_t)(raw + sizeof(void*)) + 63) & ~(uintptr_t)63);
    ((void**)p)[-1] = raw;
    return p;
}
static void ck_free64(void* p) {
    if (p != NULL) free(((void**)p)[-1]);
}
/* The forward kernels work on blocks of CK_CHUNK channels: a block's (bins, channels)
   results sit in an L1-sized scratch, are transposed into a second one and streamed out to
   the (C, bins) output, whose rows of that block are one contiguous run. */
#define CK_CHUNK 128
#define CK_LD 144       /* CK_CHUNK rounded up to an odd multiple of 16 floats (no L1 set
                           conflicts when read down a column) */
/* bytes of scratch a thread needs for ck_align_roi_f / ck_pool_roi_f */
static size_t ck_roi_scratch_bytes(ptrdiff_t nbins) {
    return (size_t)nbins * (CK_LD * (sizeof(float) + sizeof(int32_t))
                            + CK_CHUNK * (sizeof(float) + sizeof(int64_t))) + 64;
}

CK_ROI_STRICT_FP_END
#endif
