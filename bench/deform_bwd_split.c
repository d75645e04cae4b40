/* Where one thread's time goes in the cpu deform_conv2d float32 backward on the bench's
   deform_conv case (4x64x28x28, 64 filters, 3x3, one offset group, mask), the AVX2 kernels of
   csrc/deform_conv.h called in _deform_conv.pyx's fused order (_image_backward_f, blocks of
   48 positions): per image the bordered copy and grad_y's panels, per block table, columns
   and grad_weight; then per block grad_y transposed, dL/dcols, coord and the grad_x scatter;
   the crop.  Minimum over repeats of each phase's summed time, and of the whole:

     gcc -O3 -I<checkout>/convkit/cpu/csrc -o /tmp/bsplit bench/deform_bwd_split.c -lm
     /tmp/bsplit 50
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

enum { PAD, GPAN, TABLE, COLS, WGRAD, TRANS, DCOLS, COORD, SCATTER, CROP, NPH };
static const char* names[NPH] = {"copy", "gy panels", "table", "columns", "grad_w GEMM",
                                 "gy^T", "dcols GEMM", "coord", "scatter", "crop+zero"};

int main(int argc, char** argv)
{
    const ptrdiff_t N = 4, C = 64, H = 28, W = 28, F = 64, KH = 3, KW = 3, KK = 9, Wo = 28;
    const ptrdiff_t P = 784, K = C * KK, sb = 48, plane = (H + 2) * (W + 2);
    const int reps = argc > 1 ? atoi(argv[1]) : 50;
    float* x = malloc(4 * N * C * H * W);
    float* off = malloc(4 * N * 2 * KK * P);
    float* mask = malloc(4 * N * KK * P);
    float* gy = malloc(4 * N * F * P);
    float* wst = malloc(4 * F * K);
    float* xpad = malloc(4 * C * plane);
    float* gpad = malloc(4 * C * plane);
    float* cols = malloc(4 * K * sb);
    float* tw = malloc(4 * 6 * KK * P);
    ptrdiff_t* tb = malloc(8 * 2 * KK * P);
    float* pp = malloc(4 * F * P);
    float* pt = malloc(4 * F * sb);
    float* wpart = malloc(4 * F * K);
    float* goff = malloc(4 * 2 * KK * P);
    float* gm = malloc(4 * KK * P);
    float* gx = malloc(4 * C * H * W);
    double best[NPH], tall = 1e9;
    ptrdiff_t i, n, j, hp, q;
    int r, ph;
    for (i = 0; i < NPH; i++) best[i] = 1e9;
    for (i = 0; i < N * C * H * W; i++) x[i] = rn();
    for (i = 0; i < N * 2 * KK * P; i++) off[i] = rn();
    for (i = 0; i < N * KK * P; i++) mask[i] = rand() / (float)RAND_MAX;
    for (i = 0; i < N * F * P; i++) gy[i] = rn();
    for (i = 0; i < F * K; i++) wst[i] = rn() / 24;
    for (r = 0; r < reps; r++) {
        double acc[NPH] = {0}, t0 = now(), s, all;
#define PHASE(k, stmt) do { s = now(); stmt; acc[k] += now() - s; } while (0)
        for (n = 0; n < N; n++) {
            const float* gyn = gy + n * F * P;
            PHASE(PAD, for (hp = 0; hp < H + 2; hp++)
                           ck_deform_pad_f_avx2(x + n * C * H * W, C, H, W, hp, xpad));
            PHASE(GPAN, for (q = 0; q < 4; q++)
                            ck_deform_gpanel16_f(gyn, F, P, 0, q, pp + q * 16 * P));
            for (j = 0; j < P; j += sb) {
                const ptrdiff_t p1 = j + sb < P ? j + sb : P;
                PHASE(TABLE, ck_deform_table_f(off + n * 2 * KK * P, 1, KH, KW, Wo, P, H, W, 1,
                                               1, 1, 1, 1, 1, j, p1, tw + 6 * j, tb + j,
                                               tb + KK * P + j, P));
                PHASE(COLS, ck_deform_cols_f(xpad, mask + n * KK * P, C, W, 1, C, KK, P, j, p1,
                                             tw + 6 * j, tb + j, P, cols));
                PHASE(WGRAD, ck_deform_wgrad_f(4, K, p1 - j, pp + 16 * j, 16 * P, cols, K,
                                               j > 0, wpart));
            }
            PHASE(CROP, memset(gpad, 0, 4 * C * plane));
            for (j = 0; j < P; j += sb) {
                const ptrdiff_t p1 = j + sb < P ? j + sb : P;
                PHASE(TRANS, ck_deform_transpose_f(gyn + j, P, F, p1 - j, pt));
                PHASE(DCOLS, ck_deform_opgemm_t_f(K, p1 - j, F, wst, pt, F, cols, K));
                PHASE(COORD, ck_deform_coord_f(xpad, mask + n * KK * P, C, W, 1, C, KK, P, j,
                                               p1, tw + 6 * j, tb + KK * P + j, P, cols, goff,
                                               gm));
                PHASE(SCATTER, ck_deform_scatter_f(cols, C, W, 1, C, KK, P, 0, C, j, p1, tw, tb,
                                                   gpad));
            }
            PHASE(CROP, ck_deform_crop_f(gpad, C, H, W, 0, C, gx));
        }
        all = now() - t0;
        if (all < tall) tall = all;
        for (ph = 0; ph < NPH; ph++)
            if (acc[ph] < best[ph]) best[ph] = acc[ph];
    }
    printf("whole %.3f ms |", tall * 1e3);
    for (ph = 0; ph < NPH; ph++) printf(" %s %.3f", names[ph], best[ph] * 1e3);
    printf(" (ms, minimum over %d repeats)\n", reps);
    return (int)gx[7] + (int)wpart[3];
}
