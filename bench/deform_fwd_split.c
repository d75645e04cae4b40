/* Where one thread's time goes in the cpu deform_conv2d float32 forward on the bench's
   deform_conv case (4x64x28x28, 64 filters, 3x3, one offset group, mask; blocks of 112
   positions), the AVX2 kernels of csrc/deform_conv.h called in the op's order: the
   channels-last copy, then per block its table, columns and GEMM.  Minimum over repeats of
   each phase's summed time, and of the whole.  Built against a checkout's header (the GEMM is
   the one that header has: ck_op_avx2, or ck_nt_avx2 before it):

     gcc -O3 -I<checkout>/convkit/cpu/csrc -o /tmp/split bench/deform_fwd_split.c -lm
     /tmp/split 100
*/
#include "deform_conv.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static float rn(void)
{
    float s = 0;
    int i;
    for (i = 0; i < 12; i++) s += rand() / (float)RAND_MAX;
    return s - 6;
}

int main(int argc, char** argv)
{
    const ptrdiff_t N = 4, C = 64, H = 28, W = 28, F = 64, KH = 3, KW = 3, KK = 9, Wo = 28;
    const ptrdiff_t P = 784, K = C * KK, pb = 112, nb = 7, plane = (H + 2) * (W + 2);
    const int reps = argc > 1 ? atoi(argv[1]) : 100;
    float* x = malloc(4 * N * C * H * W);
    float* off = malloc(4 * N * 2 * KK * P);
    float* mask = malloc(4 * N * KK * P);
    float* w2 = malloc(4 * F * K);
    float* wp = malloc(4 * F * K);
    float* bias = malloc(4 * F);
    float* y = malloc(4 * N * F * P);
    float* xpad = malloc(4 * N * C * plane);
    float* cols = malloc(4 * K * pb);
    float* tw = malloc(4 * 6 * KK * pb);
    ptrdiff_t* tb = malloc(8 * 2 * KK * pb);
    double tp = 1e9, tt = 1e9, tc = 1e9, tg = 1e9, tall = 1e9;
    ptrdiff_t i, k, f, n, t, hp;
    int r;
    for (i = 0; i < N * C * H * W; i++) x[i] = rn();
    for (i = 0; i < N * 2 * KK * P; i++) off[i] = rn();
    for (i = 0; i < N * KK * P; i++) mask[i] = rand() / (float)RAND_MAX;
    for (i = 0; i < F * K; i++) w2[i] = rn() / 24;
    for (i = 0; i < F; i++) bias[i] = rn();
    for (i = 0; i < F; i += 16)
        for (k = 0; k < K; k++)
            for (f = 0; f < 16; f++) wp[i * K + 16 * k + f] = w2[(i + f) * K + k];
    for (r = 0; r < reps; r++) {
        double t0 = now(), a, b = 0, c = 0, d = 0, all;
        for (n = 0; n < N; n++)
            for (hp = 0; hp < H + 2; hp++)
                ck_deform_pad_f_avx2(x + n * C * H * W, C, H, W, hp, xpad + n * C * plane);
        a = now() - t0;
        for (t = 0; t < N * nb; t++) {
            const ptrdiff_t p0 = (t % nb) * pb, p1 = p0 + pb;
            double s0, s1, s2, s3;
            n = t / nb;
            s0 = now();
            ck_deform_table_f(off + n * 2 * KK * P, 1, KH, KW, Wo, P, H, W, 1, 1, 1, 1, 1, 1,
                              p0, p1, tw, tb, tb + KK * pb, pb);
            s1 = now();
            ck_deform_cols_f(xpad + n * C * plane, mask + n * KK * P, C, W, 1, C, KK, P, p0, p1,
                             tw, tb, pb, cols);
            s2 = now();
#ifdef CK_OP_TARGET
            ck_op_avx2(F, p1 - p0, K, wp, cols, K, bias, y + n * F * P + p0, P);
#else
            ck_nt_avx2(F, p1 - p0, K, w2, K, cols, K, bias, y + n * F * P + p0, P);
#endif
            s3 = now();
            b += s1 - s0;
            c += s2 - s1;
            d += s3 - s2;
        }
        all = now() - t0;
        if (all < tall) tall = all;
        if (a < tp) tp = a;
        if (b < tt) tt = b;
        if (c < tc) tc = c;
        if (d < tg) tg = d;
    }
#ifdef CK_OP_TARGET
    printf("GEMM ck_op_avx2: ");
#else
    printf("GEMM ck_nt_avx2: ");
#endif
    printf("whole %.3f ms | copy %.3f  table %.3f  columns %.3f  GEMM %.3f ms "
           "(minimum over %d repeats)\n", tall * 1e3, tp * 1e3, tt * 1e3, tc * 1e3, tg * 1e3,
           reps);
    return 0;
}
