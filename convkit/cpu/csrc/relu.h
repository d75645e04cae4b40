/* ReLU's passes, each reading its operands once (numpy: one pass forward, four backward), on
   the bits; elementwise, so the vector width and the thread split change no bits.  GCC builds
   them for AVX2 and the baseline and picks one at load time.
   The backward (torch's threshold_backward at 0): out = +0 where y <= 0, else g, for y the
   forward's output (>= 0, -0 or NaN), as the Backend default (convkit/backend.py
   relu_grad_bits) does it: |y|'s bits are 0 only for +-0, so out takes g's bits where they are
   not and +0 elsewhere (NaN y passes g, a NaN or inf g at a dead unit gives +0). */
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
/* ReLU's forward as np.maximum(x, 0) gives it, bit for bit: x where x > 0 or x is a NaN (of
   either sign, payload kept), else +0 (-0, negatives, -inf).  On the bits: a positive int
   view is a value > +0 (or a +NaN); |x|'s bits above inf's are a NaN. */
CK_RELU_CLONES static void ck_relu32(const int32_t* __restrict x, int32_t* __restrict y,
                                     ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        y[i] = (x[i] > 0 || (x[i] & 0x7fffffff) > 0x7f800000) ? x[i] : 0;
}

CK_RELU_CLONES static void ck_relu64(const int64_t* __restrict x, int64_t* __restrict y,
                                     ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        y[i] = (x[i] > 0 || (x[i] & 0x7fffffffffffffffll) > 0x7ff0000000000000ll) ? x[i] : 0;
}
#endif
