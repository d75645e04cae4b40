/* The cached CPUID answers of the cpu backend's AVX2 paths: one place for the headers that pick
 * an AVX2 kernel at run time (each extension module still gets its own copy of the statics).
 * The AVX-512 test lives in isa.h (CK_CPU_HAS_AVX512), because the emulated build redefines it. */
#ifndef CONVKIT_CPUFEAT_H
#define CONVKIT_CPUFEAT_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* 1 where AVX2 code may run (benign race: every thread computes the same value) */
static inline int ck_cpu_has_avx2(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") != 0;
    }
    return known;
}

/* 1 where AVX2 + FMA code may run */
static inline int ck_cpu_has_avx2_fma(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}
#else
static inline int ck_cpu_has_avx2(void) { return 0; }
static inline int ck_cpu_has_avx2_fma(void) { return 0; }
#endif

#endif  /* CONVKIT_CPUFEAT_H */
