/* How the AVX-512F code of the cpu backend is built and picked: every header with AVX-512 code
 * (sgemm.h and its users sdot.h, vsum.h, wino.h; shift.h, dw3x3.h, roi_simd.h, batchnorm.h)
 * takes its function attributes and its CPUID test from here.
 *
 * Normal build: the macros are exactly the attributes and the CPUID test the headers used to
 * spell out (target("avx512f"), __builtin_cpu_supports("avx512f"), ...).
 *
 * CONVKIT_EMULATE_AVX512 (setup.py adds it for CONVKIT_EMULATE_AVX512=1): a test build that
 * runs every AVX-512 path on a CPU without AVX-512, so that its results (NaN/inf propagation,
 * the same bits for any thread count) can be checked on machines such as CI's.  The _mm512_*
 * intrinsics come from SIMDe (portable C over SSE2), the AVX-512 functions are built for
 * AVX2 + FMA instead (so gcc emits no AVX-512 instruction; the AVX intrinsics some of them use
 * stay native, and gcc contracts SIMDe's a*b+c into one rounding as the real fmadd does --
 * setup.py keeps -fexpensive-optimizations for that, tests/test_cpu_gemm.py checks it), and
 * the CPUID test asks for AVX2 + FMA.  Slow, and not real hardware: `convkit info` says so.
 * Intrinsics SIMDe lacks or emulates by touching every lane (masked loads and stores must not
 * read or write masked-off lanes: the kernels point them outside their arrays) are below. */
#ifndef CONVKIT_ISA_H
#define CONVKIT_ISA_H

/* Whether this CPU's 512-bit FMA runs at the full rate (two 512-bit FMAs a cycle, or one at twice
 * the 256-bit rate) -- read once: 0 on AMD family 0x19 (Zen 4), which splits a 512-bit FMA into
 * two 256-bit halves, so the own AVX-512 GEMM has no more FMA throughput there than the AVX2
 * kernels, and the plan may take the AVX2 algorithms where they measured faster
 * (conv_plan.py ConvCaps.avx512_full_rate, tuning.py HALF_RATE_AVX2); 1 everywhere else (Intel
 * Skylake-SP and later, AMD Zen 5 = family 0x1A, and CPUs without AVX-512, where it is moot).
 * CONVKIT_AVX512_FULL_RATE=0/1 in the environment overrides it (tests, users).  The emulated
 * build (CONVKIT_EMULATE_AVX512, below) counts as full rate: it exists to test the AVX-512 plans,
 * and its host (an AVX2 CPU, maybe an AMD family 0x19 Zen 3) says nothing about a 512-bit FMA. */
#include <stdlib.h>

/* 0 where CONVKIT_DISABLE_AVX512 is set to anything but "" or "0" (read once): then no AVX-512
 * function of the cpu backend runs (BLAS, AVX2 and the portable loops instead: README), whichever
 * header asks -- CK_CPU_HAS_AVX512() below includes it.  (batchnorm.h's target_clones are picked
 * by the loader; they give the same bits at every level.) */
static inline int ck_avx512_env_allows(void)
{
    static int known = -1;  /* benign race: every thread computes the same value */
    if (known < 0) {
        const char *off = getenv("CONVKIT_DISABLE_AVX512");
        known = !(off != NULL && off[0] != '\0' && off[0] != '0');
    }
    return known;
}

#if defined(CONVKIT_EMULATE_AVX512)
#define CK_EMULATED_BUILD 1
#else
#define CK_EMULATED_BUILD 0
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
static inline int ck_avx512_full_rate(void)
{
    static int known = -1;  /* benign race: every thread computes the same value */
    if (known < 0) {
        const char *env = getenv("CONVKIT_AVX512_FULL_RATE");
        unsigned a = 0, b = 0, c = 0, d = 0;
        int rate = 1;
        if (env != NULL && env[0] != '\0') {
            rate = env[0] != '0';
        } else if (!CK_EMULATED_BUILD && __get_cpuid(0, &a, &b, &c, &d)
                   && b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u  /* AuthenticAMD */
                   && __get_cpuid(1, &a, &b, &c, &d)) {
            unsigned family = (a >> 8) & 0xf;
            if (family == 0xf)
                family += (a >> 20) & 0xff;
            rate = family != 0x19;
        }
        known = rate;
    }
    return known;
}
#else
static inline int ck_avx512_full_rate(void)
{
    const char *env = getenv("CONVKIT_AVX512_FULL_RATE");
    return !(env != NULL && env[0] == '0');
}
#endif

#if !defined(CONVKIT_EMULATE_AVX512)

#define CK_AVX512_EMULATED 0
/* a function written with AVX-512F intrinsics */
#define CK_AVX512_TARGET __attribute__((target("avx512f")))
/* a function of generic 64-byte vectors (dw3x3.h) */
#define CK_AVX512_VEC_TARGET __attribute__((target("avx512f,avx2,fma")))
/* plain C built twice, picked at load time (batchnorm.h) */
#define CK_AVX512_CLONES __attribute__((target_clones("avx512f", "default")))
/* after __builtin_cpu_init(): may the AVX-512 functions run on this CPU */
#define CK_CPU_HAS_AVX512() (ck_avx512_env_allows() && __builtin_cpu_supports("avx512f"))
/* keeps a vector in a register (one load, not one per use) */
#define CK_AVX512_PIN(v) __asm__("" : "+v"(v))
/* 256-bit code with AVX-512VL's 32 registers (roi_variants.h); CPUID "avx512vl" */
#define CK_AVX512VL_TARGET __attribute__((target("avx2,avx512f,avx512vl")))

#else  /* CONVKIT_EMULATE_AVX512 */

#if !(defined(__GNUC__) && defined(__x86_64__))
#error "CONVKIT_EMULATE_AVX512 needs gcc or clang on x86-64"
#endif
#define CK_AVX512_EMULATED 1
#define CK_AVX512_TARGET __attribute__((target("avx2,fma")))
#define CK_AVX512_VEC_TARGET __attribute__((target("avx2,fma")))
#define CK_AVX512_CLONES
#define CK_CPU_HAS_AVX512() \
    (ck_avx512_env_allows() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
#define CK_AVX512_PIN(v) ((void)0)   /* no 64-byte register to pin it in */
#define CK_AVX512VL_TARGET __attribute__((target("avx2,fma")))

#include <immintrin.h>   /* the native headers first: SIMDe's aliases are macros */
#include <stdint.h>
#define SIMDE_X86_AVX512F_ENABLE_NATIVE_ALIASES   /* _mm512_* only; SSE/AVX stay native */
#include <simde/x86/avx512.h>
#define __m512 simde__m512
#define __m512i simde__m512i
#define __m512d simde__m512d

/* lane i is read only where bit i of k is set (AVX-512 suppresses the masked lanes' faults) */
static inline __attribute__((always_inline)) simde__m512
ck_emu_maskz_loadu_ps(uint16_t k, const void *p)
{
    simde__m512_private r;
    for (int i = 0; i < 16; ++i)
        r.f32[i] = (k >> i) & 1 ? ((const float *)p)[i] : 0.0f;
    return simde__m512_from_private(r);
}

static inline __attribute__((always_inline)) simde__m512d
ck_emu_maskz_loadu_pd(uint8_t k, const void *p)
{
    simde__m512d_private r;
    for (int i = 0; i < 8; ++i)
        r.f64[i] = (k >> i) & 1 ? ((const double *)p)[i] : 0.0;
    return simde__m512d_from_private(r);
}

/* lanes whose bit is clear are not written (another thread may own them) */
static inline __attribute__((always_inline)) void
ck_emu_mask_storeu_ps(void *p, uint16_t k, simde__m512 v)
{
    simde__m512_private a = simde__m512_to_private(v);
    for (int i = 0; i < 16; ++i)
        if ((k >> i) & 1)
            ((float *)p)[i] = a.f32[i];
}

static inline __attribute__((always_inline)) simde__m512d ck_emu_cvtps_pd(simde__m256 v)
{
    simde__m256_private a = simde__m256_to_private(v);
    simde__m512d_private r;
    for (int i = 0; i < 8; ++i)
        r.f64[i] = (double)a.f32[i];
    return simde__m512d_from_private(r);
}

/* gcc's _mm512_reduce_add_pd order: the upper 4 lanes onto the lower 4, then 2 onto 2, then 1 */
static inline __attribute__((always_inline)) double ck_emu_reduce_add_pd(simde__m512d v)
{
    simde__m512d_private a = simde__m512d_to_private(v);
    double t0 = a.f64[4] + a.f64[0], t1 = a.f64[5] + a.f64[1];
    double t2 = a.f64[6] + a.f64[2], t3 = a.f64[7] + a.f64[3];
    double u0 = t2 + t0, u1 = t3 + t1;
    return u0 + u1;
}

static inline __attribute__((always_inline)) simde__m512
ck_emu_mask_i32gather_ps(simde__m512 src, uint16_t k, simde__m512i idx, const void *base,
                         int scale)
{
    simde__m512_private r = simde__m512_to_private(src);
    simde__m512i_private ix = simde__m512i_to_private(idx);
    for (int i = 0; i < 16; ++i)
        if ((k >> i) & 1)
            r.f32[i] = *(const float *)((const char *)base + (ptrdiff_t)ix.i32[i] * scale);
    return simde__m512_from_private(r);
}

#undef _mm512_maskz_loadu_ps
#undef _mm512_maskz_loadu_pd
#undef _mm512_mask_storeu_ps
#undef _mm512_cvtps_pd
#undef _mm512_reduce_add_pd
#undef _mm512_mask_i32gather_ps
#undef _mm512_shuffle_f32x4
#define _mm512_maskz_loadu_ps(k, p) ck_emu_maskz_loadu_ps(k, p)
#define _mm512_maskz_loadu_pd(k, p) ck_emu_maskz_loadu_pd(k, p)
#define _mm512_mask_storeu_ps(p, k, v) ck_emu_mask_storeu_ps(p, k, v)
#define _mm512_cvtps_pd(v) ck_emu_cvtps_pd(v)
#define _mm512_reduce_add_pd(v) ck_emu_reduce_add_pd(v)
#define _mm512_mask_i32gather_ps(src, k, idx, base, scale)                                   \
    ck_emu_mask_i32gather_ps(src, k, idx, base, scale)
#define _mm512_shuffle_f32x4(a, b, imm) simde_mm512_shuffle_f32x4(a, b, imm)

#endif  /* CONVKIT_EMULATE_AVX512 */
#endif  /* CONVKIT_ISA_H */
