/* csrc/sgemm.h on GEMMs of 6q rows (the 6-row tiles, twelfth session, helper pw12): bits and
 * one-thread CPU time, built against two checkouts' headers and compared.
 *
 *   gcc -O3 -I<checkout>/convkit/cpu/csrc bench/sgemm_six_rows.c -o /tmp/six -lpthread
 *   /tmp/six 0 > bits.txt        # hashes of C for m in {6..96}, n, k, 7 call forms; diff two
 *   /tmp/six 1 M K N n           # prepacked A, B in place (ldb N), N columns in calls of n
 *                                # (rpn_cls1x1's forward: 18 512 1900 960), best of 7, CPU time
 *   /tmp/six 2 M N K TB          # ck_sgemm(0, TB, M, N, K) (its grad_weight: 18 256 1900 1)
 */
#include <stdio.h>
#include <time.h>
#include "sgemm.h"
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static unsigned long long hsh(const float *c, size_t n) { unsigned long long h = 1469598103934665603ull; const unsigned char *p = (const void *)c; for (size_t i = 0; i < 4 * n; ++i) h = (h ^ p[i]) * 1099511628211ull; return h; }
int main(int argc, char **argv)
{
    int mode = atoi(argv[1]);
    ck_buffers();
    if (mode == 0) {  /* bits */
        int ms[] = {6, 12, 18, 30, 36, 42, 90, 96, 8, 16, 20};
        int ns[] = {1, 3, 4, 5, 17, 48, 63, 64, 65, 68, 100, 1023, 1024, 1029, 1900};
        int ks[] = {1, 7, 192, 512};
        for (int im = 0; im < 11; ++im) for (int in = 0; in < 15; ++in) for (int ik = 0; ik < 4; ++ik) {
            int m = ms[im], n = ns[in], k = ks[ik], ldb = n + 3, ldc = n + 5;
            float *a = malloc(4 * m * k), *b = malloc(4 * (size_t)k * ldb + 64), *c = malloc(4 * (size_t)m * ldc), *rb = malloc(4 * m);
            float *apk = aligned_alloc(64, 4 * ck_mpad(m) * k + 64);
            ptrdiff_t *off = malloc(sizeof(ptrdiff_t) * k);
            srand(m * 1000 + n * 10 + k);
            for (int i = 0; i < m * k; ++i) a[i] = rand() / (float)RAND_MAX - 0.5f;
            for (size_t i = 0; i < (size_t)k * ldb + 16; ++i) b[i] = rand() / (float)RAND_MAX - 0.5f;
            for (int i = 0; i < m; ++i) rb[i] = rand() / (float)RAND_MAX;
            for (int p = 0; p < k; ++p) off[p] = (ptrdiff_t)((p * 7) % k) * ldb;
            ck_sgemm_pack_a(0, m, k, a, k, apk);
            for (int v = 0; v < 7; ++v) {
                for (size_t i = 0; i < (size_t)m * ldc; ++i) c[i] = (float)(i % 13) - 6.0f;
                if (v == 0) ck_sgemm_apacked(0, m, n, k, apk, b, ldb, 0.0f, c, ldc, rb);
                if (v == 1) ck_sgemm_apacked(0, m, n, k, apk, b, ldb, 0.5f, c, ldc, NULL);
                if (v == 2) ck_sgemm_apacked_rows(m, n, k, apk, b, off, 0.0f, c, ldc, rb);
                if (v == 3) ck_sgemm(0, 0, m, n, k, 1.5f, a, k, b, ldb, 0.25f, c, ldc);
                if (v == 4) ck_sgemm(1, 0, m, n, k, 1.0f, a, m, b, ldb, 0.0f, c, ldc);  /* a read as k x m */
                if (v == 5 && (size_t)n * k <= (size_t)k * ldb) ck_sgemm(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, c, ldc);  /* b read as n x k */
                if (v == 6 && (size_t)n * k <= (size_t)k * ldb) ck_sgemm(1, 1, m, n, k, -0.5f, a, m, b, k, 0.25f, c, ldc);
                printf("m %d n %d k %d v %d %016llx\n", m, n, k, v, hsh(c, (size_t)m * ldc));
            }
            free(a); free(b); free(c); free(rb); free(apk); free(off);
        }
        return 0;
    }
    if (mode == 2) {
        ptrdiff_t m = atol(argv[2]), n = atol(argv[3]), k = atol(argv[4]);
        int tb = atoi(argv[5]);
        float *a = aligned_alloc(64, 4 * m * k), *b = aligned_alloc(64, 4 * k * n);
        float *c = aligned_alloc(64, 4 * m * n);
        for (ptrdiff_t i = 0; i < m * k; ++i) a[i] = rand() / (float)RAND_MAX - 0.5f;
        for (ptrdiff_t i = 0; i < k * n; ++i) b[i] = rand() / (float)RAND_MAX - 0.5f;
        int reps = (int)(1e9 / (2.0 * m * k * n)) + 1;
        double best = 1e9;
        for (int round = 0; round < 7; ++round) {
            double t = cpu();
            for (int r = 0; r < reps; ++r)
                ck_sgemm(0, tb, m, n, k, 1.0f, a, k, b, tb ? k : n, 0.0f, c, n);
            t = (cpu() - t) / reps;
            if (t < best) best = t;
        }
        printf("m %ld n %ld k %ld tb %d: %.1f us %.1f GF/s\n", (long)m, (long)n, (long)k, tb,
               best * 1e6, 2.0 * m * k * n / best / 1e9);
        return 0;
    }
    ptrdiff_t m = atol(argv[2]), k = atol(argv[3]), N = atol(argv[4]), n = atol(argv[5]);
    float *a = aligned_alloc(64, 4 * m * k), *b = aligned_alloc(64, 4 * k * N), *bias = malloc(4 * m);
    float *apk = aligned_alloc(64, 4 * ck_mpad(m) * k), *c = aligned_alloc(64, 4 * m * N);
    for (ptrdiff_t i = 0; i < m * k; ++i) a[i] = rand() / (float)RAND_MAX - 0.5f;
    for (ptrdiff_t i = 0; i < k * N; ++i) b[i] = rand() / (float)RAND_MAX - 0.5f;
    for (int i = 0; i < m; ++i) bias[i] = i * 0.1f;
    ck_sgemm_pack_a(0, m, k, a, k, apk);
    int reps = (int)(2e9 / (2.0 * m * k * N)) + 1;
    double best = 1e9;
    for (int round = 0; round < 7; ++round) {
        double t = cpu();
        for (int r = 0; r < reps; ++r)
            for (ptrdiff_t j0 = 0; j0 < N; j0 += n)
                ck_sgemm_apacked(0, m, N - j0 < n ? N - j0 : n, k, apk, b + j0, N, 0.0f, c + j0, N, bias);
        t = (cpu() - t) / reps;
        if (t < best) best = t;
    }
    printf("m %ld k %ld N %ld n %ld: %.1f us %.1f GF/s\n", (long)m, (long)k, (long)N, (long)n, best * 1e6, 2.0 * m * k * N / best / 1e9);
}
