/* res_14's 36 packed F(4x4) GEMMs of one task (256 filters x 256 channels, 64 tiles) on
 * csrc/wino4.h's ck_w4_gemm_pk, three ways: every plane over all 64 columns; wino10's last
 * rows apart (planes 30-35 over 48); mixed edge tiles (16 planes x 64, 16 x 48, 4 x 36
 * columns, _conv_winograd's _w4_mix_range for 4 images' rows of 3 + 1 tiles).  One thread,
 * CPU time, best of 7 a round, GFLOP/s counted on the products each way does.  A (9.4 MB)
 * is streamed from L3 per task as in the kernel (B and C per plane, as the task's V and M).
 *
 *   gcc -O2 -o /tmp/wino_mix_gemm bench/wino_mix_gemm.c -lpthread && /tmp/wino_mix_gemm
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../convkit/cpu/csrc/wino4.h"

static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
    const long M = 256, K = 256, N = 64, E = 36, Mp = ck_w4_pk_rows(M);
    float* Apk = malloc(sizeof(float) * E * Mp * K);
    float* B = malloc(sizeof(float) * E * K * N);
    float* C = malloc(sizeof(float) * E * M * N);
    long lo[3][36], hi[3][36], cols[3] = {0, 0, 0};
    if (!ck_fgemm_available()) { printf("no AVX2 + FMA\n"); return 0; }
    srand(0);
    for (long i = 0; i < E * Mp * K; i++) Apk[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long i = 0; i < E * K * N; i++) B[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long e = 0; e < E; e++) {
        int ra = e / 6 < 3 || e / 6 == 5, cb = e % 6 < 3 || e % 6 == 5;
        lo[0][e] = 0; hi[0][e] = 64;
        lo[1][e] = 0; hi[1][e] = e >= 30 ? 48 : 64;
        lo[2][e] = ra ? 0 : 12; hi[2][e] = cb ? (ra ? 64 : 60) : 48;
        for (int w = 0; w < 3; w++) cols[w] += hi[w][e] - lo[w][e];
    }
    for (int round = 0; round < 5; round++) {
        double best[3] = {1e9, 1e9, 1e9};
        for (int it = 0; it < 7; it++)
            for (int w = 0; w < 3; w++) {
                double t = cpu_s();
                for (long e = 0; e < E; e++)
                    ck_w4_gemm_pk(M, hi[w][e] - lo[w][e], K, Apk + e * Mp * K,
                                  B + e * K * N + lo[w][e], N, C + e * M * N + lo[w][e], N);
                t = cpu_s() - t;
                best[w] = t < best[w] ? t : best[w];
            }
        printf("all 64: %.3f ms (%.1f GFLOP/s)  last rows apart: %.3f ms (%.1f)  mixed: %.3f ms "
               "(%.1f)  columns %ld / %ld / %ld\n",
               1e3 * best[0], 2.0 * M * K * cols[0] / best[0] / 1e9, 1e3 * best[1],
               2.0 * M * K * cols[1] / best[1] / 1e9, 1e3 * best[2],
               2.0 * M * K * cols[2] / best[2] / 1e9, cols[0], cols[1], cols[2]);
    }
    return 0;
}
