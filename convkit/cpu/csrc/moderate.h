/* The raw-bit scans of all_moderate (_conv_im2col.pyx): does any value have an exponent field of
   `big` or more (NaN, inf, and the finite values from the fast algorithms' bound up).
   (v & field) + (sign bit - big) has its sign bit set exactly when v's field is >= big (the
   field sits below the sign bit and big is at most the sign bit: the sum never carries out),
   so a value costs an AND, an ADD and an OR that GCC vectorises -- in the baseline build and in
   an AVX2 clone with twice the lanes, picked at load time.  The compare it replaces had no
   unsigned vector form before AVX-512 (~2.6 instructions a value, ~4 % of a small ResNet
   training step's instructions). */
#ifndef CK_MODERATE_H
#define CK_MODERATE_H
#include <stddef.h>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CK_MOD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CK_MOD_CLONES
#endif

CK_MOD_CLONES static int ck_any_big32(const unsigned int* u, ptrdiff_t n, unsigned int big) {
    unsigned int acc = 0, add = 0x80000000u - big;
    for (ptrdiff_t i = 0; i < n; i++) acc |= (u[i] & 0x7f800000u) + add;
    return (acc >> 31) != 0;
}

CK_MOD_CLONES static int ck_any_big64(const unsigned long long* u, ptrdiff_t n,
                                      unsigned long long big) {
    unsigned long long acc = 0, add = 0x8000000000000000ull - big;
    for (ptrdiff_t i = 0; i < n; i++) acc |= (u[i] & 0x7ff0000000000000ull) + add;
    return (acc >> 63) != 0;
}
#endif
