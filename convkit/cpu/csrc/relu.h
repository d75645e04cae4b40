/* ReLU's backward (torch's threshold_backward at 0): out = +0 where y <= 0, else g, for y the
   forward's output (>= 0, -0 or NaN).  On the bits, as the Backend default
   (convkit/backend.py relu_grad_bits) does it in four numpy passes: |y|'s bits are 0 only for
   +-0, so out takes g's bits where they are not and +0 elsewhere (NaN y passes g, a NaN or inf
   g at a dead unit gives +0).  One pass reading y and g once; elementwise, so the vector width
   and the thread split change no bits.  GCC builds it for AVX2 and the baseline and picks one
   at load time. */
#ifndef CK_RELU_H
#define CK_RELU_H
#include <stddef.h>
#include <stdint.h>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CK_RELU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CK_RELU_CLONES
#endif

CK_RELU_CLONES static void ck_relu_grad32(const uint32_t* __restrict y,
                                          const uint32_t* __restrict g,
                                          uint32_t* __restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (y[i] & 0x7fffffffu) ? g[i] : 0u;
}

CK_RELU_CLONES static void ck_relu_grad64(const uint64_t* __restrict y,
                                          const uint64_t* __restrict g,
                                          uint64_t* __restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = (y[i] & 0x7fffffffffffffffull) ? g[i] : 0u;
}
#endif
