#!/bin/sh
# csrc/fgemm.h's narrow last panel (CK_FG_EDGE_N): the GEMM built with the edge path off (0: every
# panel on the 6 x 16 tile) and with 1, 2, 3, 4, 6, interleaved, one thread, best of ROUNDS x 5
# calls of thread CPU time; checks the bits are the same in every build.
#     sh bench/fgemm_edge_ab.sh [ROUNDS]      (shapes: the rpn_3x3 F(4x4) task, pw_14's task)
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for v in 0 1 2 3 4 6; do
    printf '#define CK_FG_EDGE_N %s\n#include "%s/convkit/cpu/csrc/fgemm.h"\nint g%s(int ta, long m, long n, long k, const float *a, long lda, const float *b, float *c) { return ck_fgemm(ta, 0, m, n, k, 1.0f, a, lda, b, n, 0.0f, c, n); }\n' \
        "$v" "$here" "$v" > "$tmp/v$v.c"
    gcc -O3 -c "$tmp/v$v.c" -o "$tmp/v$v.o"
done
cat > "$tmp/main.c" <<'EOC'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define DECL(v) int g##v(int, long, long, long, const float *, long, const float *, float *);
DECL(0) DECL(1) DECL(2) DECL(3) DECL(4) DECL(6)
typedef int (*G)(int, long, long, long, const float *, long, const float *, float *);
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
int main(int argc, char **argv)
{
    long m = atol(argv[1]), k = atol(argv[2]), n = atol(argv[3]);
    int ta = atoi(argv[4]), rounds = atoi(argv[5]);
    float *a = malloc(4 * m * k), *b = malloc(4 * k * n), *c = malloc(4 * m * n),
          *c0 = malloc(4 * m * n);
    for (long i = 0; i < m * k; i++) a[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long i = 0; i < k * n; i++) b[i] = (float)rand() / RAND_MAX - 0.5f;
    G gs[6] = {g0, g1, g2, g3, g4, g6};
    const char *nm[6] = {"off", "1", "2", "3", "4", "6"};
    double best[6];
    long lda = ta ? m : k;
    gs[0](ta, m, n, k, a, lda, b, c0);
    for (int v = 0; v < 6; v++) {
        best[v] = 1e9;
        gs[v](ta, m, n, k, a, lda, b, c);
        if (memcmp(c, c0, 4 * m * n)) printf("bits differ: CK_FG_EDGE_N %s\n", nm[v]);
    }
    for (int r = 0; r < rounds; r++)
        for (int v = 0; v < 6; v++) {
            double t0 = now();
            for (int z = 0; z < 5; z++) gs[v](ta, m, n, k, a, lda, b, c);
            double t = (now() - t0) / 5;
            if (t < best[v]) best[v] = t;
        }
    printf("| %ld x %ld x %ld%s |", m, k, n, ta ? " (ta)" : "");
    for (int v = 0; v < 6; v++) printf(" %.1f |", 2.0 * m * n * k / best[v] / 1e9);
    printf("\n");
    return 0;
}
EOC
gcc -O2 "$tmp/main.c" "$tmp"/v?.o -o "$tmp/ab" -lpthread
echo "| m x k x n | GFLOP/s, CK_FG_EDGE_N off | 1 | 2 | 3 | 4 | 6 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for s in "512 512 65 0" "1024 256 98 0" "512 512 68 0" "1024 256 100 0" "512 512 65 1" "1024 256 98 1"; do
    "$tmp/ab" $s "${1:-30}"
done
