/* F(4x4)'s forward task by parts, one thread CPU time (res_14 by default: 8x256x14x14 -> 256,
 * tasks of 16 tile rows): the input transform (row by row, or with ROWS=1 an image's rows in one
 * ck_w4_input_rows call), the 36 packed GEMMs, the output transform; PAD=n puts V's and M's
 * planes n floats further apart.  Prints a hash of V (the same for any ROWS / PAD) and 5 rounds.
 *
 *   gcc -O3 -I convkit/cpu/csrc -o /tmp/wino4_parts bench/wino4_parts.c
 *   [ROWS=1] [PAD=16] /tmp/wino4_parts [N C H F trows] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wino4.h"
static double cpu_s(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    long N = 8, C = 256, H = 14, W = 14, F = 256, trows = 16;
    if (argc > 5) { N = atol(argv[1]); C = atol(argv[2]); H = atol(argv[3]); W = H; F = atol(argv[4]); trows = atol(argv[5]); }
    long th = (H + 3) / 4, tw = (W + 3) / 4, P = trows * tw, Fp = ck_w4_pk_rows(F);
    long ntask = N * th / trows, pad = getenv("PAD") ? atol(getenv("PAD")) : 0, VS = C * P + pad, MS = F * P + pad;
    float *x = malloc(sizeof(float) * N * C * H * W), *y = malloc(sizeof(float) * N * F * H * W);
    float *U = calloc(36 * Fp * C, 4), *V = malloc(4 * 36 * VS), *M = malloc(4 * 36 * MS);
    float *S = malloc(4 * (ck_w4_output_scratch(P, tw) + ck_w4_input_scratch(tw)));
    for (long i = 0; i < N * C * H * W; i++) x[i] = (float)rand() / RAND_MAX;
    for (long i = 0; i < 36 * Fp * C; i++) U[i] = (float)rand() / RAND_MAX;
    for (int round = 0; round < (argc > 6 ? 1 : 5); round++) {
        double ti = 0, tg = 0, to = 0; memset(V, 0, 4 * 36 * VS);
        for (long t = 0; t < ntask; t++) {
            long g0 = t * trows;
            double a = cpu_s();
            for (long c = 0; c < C; c++)
                if (getenv("ROWS"))
                for (long k = 0; k < trows; ) {
                    long n = (g0 + k) / th, i = (g0 + k) % th, m = th - i < trows - k ? th - i : trows - k;
                    ck_w4_input_rows_f(x + (n * C + c) * H * W, H, W, 4 * i - 1, m, 1, tw, V + c * P + k * tw, NULL, VS, S);
                    k += m;
                }
                else
                for (long k = 0; k < trows; k++) {
                    long n = (g0 + k) / th, i = (g0 + k) % th;
                    ck_w4_input_row_f(x + (n * C + c) * H * W, H, W, 4 * i - 1, 1, tw, V + c * P + k * tw, VS, S);
                }
            double b = cpu_s();
            for (long e = 0; e < 36; e++)
                ck_w4_gemm_pk(F, P, C, U + e * Fp * C, V + e * VS, P, M + e * MS, P);
            double c2 = cpu_s();
            for (long f = 0; f < F; f++) {
                float *Yp = S + 24 * P, *buf = Yp + 16 * P;
                ck_w4_output_tiles_f(M + f * P, MS, P, 0.f, S, Yp);
                for (long k = 0; k < trows; k++) {
                    long n = (g0 + k) / th, i = (g0 + k) % th;
                    long rows = H - 4 * i < 4 ? H - 4 * i : 4;
                    ck_w4_store_row_f(Yp + k * tw, P, tw, y + (n * F + f) * H * W + 4 * i * W, W, rows, buf);
                }
            }
            double d = cpu_s();
            ti += b - a; tg += c2 - b; to += d - c2;
        }
        if (round == 0) { double h = 0; for (long q = 0; q < 36 * VS; q++) h += V[q] * (q % 7); printf("hash %.9g\n", h); }
        printf("input %.2f ms  gemm %.2f ms (%.1f GFLOP/s)  output %.2f ms\n", 1e3 * ti, 1e3 * tg,
               2.0 * 36 * F * C * P * ntask / tg * 1e-9, 1e3 * to);
    }
    return 0;
}
