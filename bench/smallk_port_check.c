/* csrc/smallk.h's portable body against its AVX2 + FMA body (thirteenth session, helper pwx13):
 * built with a hardware fma (-mfma: __FP_FAST_FMA, fma() chains) the two give the same bits;
 * built without, the portable body's mul + add chains give the same bits for any cut of the
 * positions (vector loop or scalar tail) -- checked over odd m, n, k.  Prints "ok" or the
 * first mismatch.
 *
 *   gcc -O3 -Iconvkit/cpu/csrc bench/smallk_port_check.c -lm -o /tmp/skc && /tmp/skc
 *   gcc -O3 -mfma -Iconvkit/cpu/csrc bench/smallk_port_check.c -lm -o /tmp/skc && /tmp/skc
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "smallk.h"

static double rnd(void) { return rand() / (double)RAND_MAX - 0.5; }

int main(void)
{
    enum { M = 29, N = 77, K = 33 };
    static double a[K * M], b[K * N], c1[M * N], c2[M * N], c3[M * N];
    static float af[K * M], bf[K * N], d1[M * N], d2[M * N], d3[M * N];
    for (int i = 0; i < K * M; i++) af[i] = (float)(a[i] = rnd());
    for (int i = 0; i < K * N; i++) bf[i] = (float)(b[i] = rnd());
    for (int k = 1; k <= K; k += 8) {
        ck_smallk_port_double(M, N, k, a, M, b, N, c1, N);
        ck_smallk_port_float(M, N, k, af, M, bf, N, d1, N);
        /* the same outputs from pieces: columns [0, 13) and [13, N), rows [0, 5) and [5, M) */
        for (int r0 = 0; r0 < M; r0 = r0 ? M : 5) {
            int rm = r0 ? M - r0 : 5;
            ck_smallk_port_double(rm, 13, k, a + r0, M, b, N, c2 + r0 * N, N);
            ck_smallk_port_double(rm, N - 13, k, a + r0, M, b + 13, N, c2 + r0 * N + 13, N);
            ck_smallk_port_float(rm, 13, k, af + r0, M, bf, N, d2 + r0 * N, N);
            ck_smallk_port_float(rm, N - 13, k, af + r0, M, bf + 13, N, d2 + r0 * N + 13, N);
        }
        if (memcmp(c1, c2, sizeof c1) || memcmp(d1, d2, sizeof d1)) {
            printf("portable body: pieces differ, k=%d\n", k);
            return 1;
        }
#if CK_SK_AVX2 && defined(__FP_FAST_FMA)
        if (ck_cpu_has_avx2_fma()) {
            ck_smallk_avx2_d(M, N, k, a, M, b, N, c3, N);
            ck_smallk_avx2_f(M, N, k, af, M, bf, N, d3, N);
            if (memcmp(c1, c3, sizeof c1) || memcmp(d1, d3, sizeof d1)) {
                printf("portable (fma) and AVX2 bodies differ, k=%d\n", k);
                return 1;
            }
        }
#else
        (void)c3; (void)d3;
#endif
    }
    printf("ok\n");
    return 0;
}
