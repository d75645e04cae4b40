/* ck_deform_table_f_avx2v (eight positions a vector) against the scalar AVX2 build of the
   table, bit for bit, on random shapes, strides, paddings, dilations and position ranges, with
   integer and half-integer offsets (points exactly on -1 and on the edges), NaN and +-inf:

     gcc -O3 -Iconvkit/cpu/csrc -o /tmp/tabcheck bench/deform_table_check.c -lm && /tmp/tabcheck
*/
#include "deform_conv.h"
#include <stdio.h>
#include <stdlib.h>

static ptrdiff_t pick(int n) { return rand() % n; }

int main(void)
{
    int bad = 0, trial, run = 0;
    for (trial = 0; trial < 1000; trial++) {
        const ptrdiff_t H = 1 + pick(9), W = 1 + pick(9), KH = 1 + pick(3), KW = 1 + pick(3);
        const ptrdiff_t OG = 1 + pick(2), sh = 1 + pick(2), sw = 1 + pick(2), ph = pick(3);
        const ptrdiff_t pw = pick(3), dh = 1 + pick(2), dw = 1 + pick(2);
        const ptrdiff_t Ho = (H + 2 * ph - dh * (KH - 1) - 1) / sh + 1;
        const ptrdiff_t Wo = (W + 2 * pw - dw * (KW - 1) - 1) / sw + 1;
        ptrdiff_t P, RK, q, p0, p1, ldt;
        float *off, *t1, *t2;
        ptrdiff_t *b1, *b2, *c1, *c2;
        if (Ho < 1 || Wo < 1) continue;
        P = Ho * Wo;
        RK = OG * KH * KW;
        off = malloc(sizeof(float) * 2 * RK * P);
        for (q = 0; q < 2 * RK * P; q++) {
            const int k = rand() % 10;
            off[q] = k == 0 ? (float)(pick(7) - 3) : k == 1 ? NAN : k == 2 ? -INFINITY
                   : k == 3 ? INFINITY : k == 4 ? (float)pick(5) - 0.5f
                   : (rand() / (float)RAND_MAX - 0.5f) * 8;
        }
        p0 = pick(P);
        p1 = p0 + 1 + pick(P - p0);
        ldt = p1 - p0 + 3;
        t1 = calloc(6 * RK * ldt, sizeof(float));
        t2 = calloc(6 * RK * ldt, sizeof(float));
        b1 = calloc(RK * ldt, sizeof(ptrdiff_t));
        b2 = calloc(RK * ldt, sizeof(ptrdiff_t));
        c1 = calloc(RK * ldt, sizeof(ptrdiff_t));
        c2 = calloc(RK * ldt, sizeof(ptrdiff_t));
        ck_deform_table_f_avx2(off, OG, KH, KW, Wo, P, H, W, sh, sw, ph, pw, dh, dw, p0, p1,
                               t1, b1, c1, ldt);
        ck_deform_table_f_avx2v(off, OG, KH, KW, Wo, P, H, W, sh, sw, ph, pw, dh, dw, p0, p1,
                                t2, b2, c2, ldt);
        run += p1 - p0 >= 8;
        if (memcmp(t1, t2, sizeof(float) * 6 * RK * ldt)
            || memcmp(b1, b2, sizeof(ptrdiff_t) * RK * ldt)
            || memcmp(c1, c2, sizeof(ptrdiff_t) * RK * ldt))
            bad++;
        free(off); free(t1); free(t2); free(b1); free(b2); free(c1); free(c2);
    }
    printf("%d cases with a vector of positions; mismatches %d\n", run, bad);
    return bad != 0;
}
