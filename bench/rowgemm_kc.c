/* csrc/rowgemm.h alone on conv_transpose2d convt_28's two rowgemm shapes, in cache, one thread:
 * GFLOP/s of ck_rowgemm_kc_f for a pass size kc (the best of 20 runs of 50 calls, process CPU
 * time, so a loaded machine's other processes count little).
 *   mode 0: the sub-pixel forward's task GEMM (P = 128 rows, K = 256 taps, L = 240 columns,
 *           taps at the slab offsets of 64 planes of 9 x 30);
 *   mode 1: the rowphases grad_x task GEMM (P = 64, K = 512, L = 232, taps at the phase-plane
 *           offsets of 32 channels x 4 phases of 9 x 29).
 *
 *   gcc -O3 -I convkit/cpu/csrc bench/rowgemm_kc.c -o /tmp/rowgemm_kc
 *   /tmp/rowgemm_kc MODE [KC] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "rowgemm.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv)
{
    const int mode = argc > 1 ? atoi(argv[1]) : 0;
    const ptrdiff_t kc = argc > 2 ? atoi(argv[2]) : 100000;
    ptrdiff_t P = 128, K = 256, L = 240, Wp = 30, SP = 270;
    if (mode == 1)
        P = 64, K = 512, L = 232;
    float *wt = aligned_alloc(64, P * K * 4), *b = aligned_alloc(64, (64 * SP + 4096) * 16);
    float *out = aligned_alloc(64, P * L * 4);
    ptrdiff_t *boff = malloc(K * sizeof(ptrdiff_t));
    for (ptrdiff_t i = 0; i < P * K; i++)
        wt[i] = (float)(i % 7) * 0.01f;
    for (ptrdiff_t i = 0; i < (64 * SP + 4096) * 4; i++)
        b[i] = (float)(i % 5) * 0.1f;
    if (mode == 0) {
        for (int f = 0; f < 64; f++)
            for (int dr = 0; dr < 2; dr++)
                for (int dc = 0; dc < 2; dc++)
                    boff[(f * 2 + dr) * 2 + dc] = f * SP + dr * Wp + dc;
    } else {
        const ptrdiff_t plane = 9 * 29;
        for (int c = 0; c < 32; c++)
            for (int kh = 0; kh < 4; kh++)
                for (int kw = 0; kw < 4; kw++)
                    boff[(c * 4 + kh) * 4 + kw] = ((c * 2 + kh % 2) * 2 + kw % 2) * plane
                                                  + (kh / 2) * 29 + kw / 2;
    }
    double best = 1e9;
    for (int r = 0; r < 20; r++) {
        double t = now();
        for (int i = 0; i < 50; i++)
            if (!ck_rowgemm_kc_f(P, L, K, wt, b, boff, out, L, kc < K ? kc : K))
                return 1;
        t = now() - t;
        if (t < best)
            best = t;
    }
    printf("mode %d kc %ld: %.1f GFLOP/s (%.3f ms per call)\n", mode, (long)(kc < K ? kc : K),
           2.0 * P * K * L * 50 / best / 1e9, best / 50 * 1e3);
    return 0;
}
