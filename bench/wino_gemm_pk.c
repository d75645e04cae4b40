/* F(4x4)'s GEMMs on csrc/fgemm.h: A (the transformed filters) read in place (ck_fgemm, the
 * plain layout) against packed in strips of 6 (csrc/wino4.h's ck_w4_gemm_pk), one thread, CPU
 * time, best of 5 calls per round; checks the two give the same bits.
 *
 *   gcc -O2 -o /tmp/wino_gemm_pk bench/wino_gemm_pk.c -lpthread && /tmp/wino_gemm_pk [M K N]
 *
 * Default 256 256 64: a res_14 task's 36 GEMMs (256 filters x 256 channels, 64 tiles). */
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

int main(int argc, char** argv) {
    const long M = argc > 1 ? atol(argv[1]) : 256, K = argc > 2 ? atol(argv[2]) : 256;
    const long N = argc > 3 ? atol(argv[3]) : 64, E = 36, Mp = ck_w4_pk_rows(M);
    float* A = malloc(sizeof(float) * E * M * K);
    float* Apk = calloc(E * Mp * K, sizeof(float));
    float* B = malloc(sizeof(float) * E * K * N);
    float* C1 = malloc(sizeof(float) * M * N);
    float* C2 = malloc(sizeof(float) * M * N);
    if (!ck_fgemm_available()) {
        printf("no AVX2 + FMA: nothing to compare\n");
        return 0;
    }
    srand(0);
    for (long i = 0; i < E * M * K; i++) A[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long i = 0; i < E * K * N; i++) B[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long e = 0; e < E; e++)     /* strip i/6, step p, row i%6 */
        for (long i = 0; i < M; i++)
            for (long p = 0; p < K; p++)
                Apk[e * Mp * K + (i / 6) * 6 * K + p * 6 + i % 6] = A[e * M * K + i * K + p];
    for (int round = 0; round < 5; round++) {
        double best1 = 1e9, best2 = 1e9;
        int same = 1;
        for (int it = 0; it < 5; it++) {
            double t = cpu_s();
            for (long e = 0; e < E; e++)
                ck_fgemm(0, 0, M, N, K, 1.f, A + e * M * K, K, B + e * K * N, N, 0.f, C1, N);
            t = cpu_s() - t;
            best1 = t < best1 ? t : best1;
            t = cpu_s();
            for (long e = 0; e < E; e++)
                ck_w4_gemm_pk(M, N, K, Apk + e * Mp * K, B + e * K * N, N, C2, N);
            t = cpu_s() - t;
            best2 = t < best2 ? t : best2;
            same &= memcmp(C1, C2, sizeof(float) * M * N) == 0;
        }
        printf("%ld x %ld x %ld, 36 GEMMs: in place %.1f GFLOP/s, packed %.1f GFLOP/s, same bits %s\n",
               M, K, N, 2.0 * E * M * N * K / best1 / 1e9, 2.0 * E * M * N * K / best2 / 1e9,
               same ? "yes" : "NO");
    }
    return 0;
}
