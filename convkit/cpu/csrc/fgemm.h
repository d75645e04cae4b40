/* A fixed-order float32 GEMM for x86-64 CPUs with AVX2 + FMA (and no AVX-512: there sgemm.h's
 * kernel, also fixed-order, runs first).
 *
 * Row-major C (m x n, row stride ldc) = op(A) @ op(B) (+ C when beta == 1), op(A) m x k (A
 * stored k x m when ta), op(B) k x n (B stored n x k when tb).
 *
 * Why: batch invariance (DESIGN.md "Scale-out": convkit.dask's batch chunks equal the in-memory
 * call bitwise).  OpenBLAS rounds an output differently for another GEMM shape and for another
 * place in the GEMM, so with BLAS an image's conv outputs follow the other images of its GEMM.
 * Here every output is ONE chain of fused multiply-adds over k in ascending order, started
 * from 0 (beta 0) or from C (beta 1):  c = fma(a[i,k-1], b[k-1,j], ... fma(a[i,0], b[0,j], c0))
 * -- the same bits wherever the output sits and whatever m, n, k blocking or thread computes it.
 * A k block after the first starts from the partial sums it stored (the chain goes on); edge
 * tiles compute the same chain on zero-padded panels and store only their rows and columns
 * (masked loads and stores: nothing outside the operands is read or written).
 *
 * Scheme (measured against OpenBLAS on the conv shapes, one thread, bench/bench_gemm.py): the
 * tile is 6 rows x 16 columns -- twelve ymm accumulators, two B loads and six broadcasts per k
 * step; 16 columns waste less of a conv's odd column counts (tiles, positions) than 24.  A is
 * read in place (row r of a tile at a + r * lda, or a + r when ta): a packed copy of A cost
 * 256 x 64 x 256 (a Winograd F(4x4) task of res_14) a fifth of its time.  B is packed into
 * 16-column panels of KC rows, each just before its first use (in L1 for the pass of the A
 * block over it), except for C of at most CK_FG_DIRECT_M rows, where B is read in place.
 * A last panel of at most CK_FG_EDGE_N columns (a conv's odd column count: 65 tiles, 98
 * positions) runs with the vectors along m instead (ck_fg_edge): the 6 x 16 tile spent half a
 * full panel's time on it.
 *
 * Single-threaded (convkit calls it inside its own OpenMP teams); each thread keeps its packing
 * buffer for B (allocated on first use, freed at thread exit).  ck_fgemm returns 0 when it did
 * nothing (no AVX2/FMA, CONVKIT_DISABLE_FGEMM=1, alpha != 1, beta not 0 or 1, no memory): the
 * caller then uses BLAS. */
#ifndef CK_FGEMM_H
#define CK_FGEMM_H

#include <stddef.h>
#include <stdlib.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CK_FG_BUILT 1
#include <immintrin.h>
#include <pthread.h>
#include "tr8.h"
#include "cpufeat.h"
#else
#define CK_FG_BUILT 0
#endif

#if CK_FG_BUILT

#define CK_FG_TARGET __attribute__((target("avx2,fma")))
#ifndef CK_FG_MR
#define CK_FG_MR 6
#endif
#ifndef CK_FG_NV
#define CK_FG_NV 2     /* 8-float vectors per tile row */
#endif
#define CK_FG_NR (8 * CK_FG_NV)
#ifndef CK_FG_KC
#define CK_FG_KC 256   /* the most k one block takes: a B panel of 16 x 256 floats, 16 KiB (L1) */
#endif
/* rows of A per block (its KC columns, 126 KiB, stay in L2 while the B panels pass) */
#define CK_FG_MC (CK_FG_MR * (128 / CK_FG_MR))
/* columns of packed B per block: 2048 x 256 floats, 2 MiB, whole panels */
#define CK_FG_NC (CK_FG_NR * (2048 / CK_FG_NR))
/* up to this many rows of C, B (not transposed) is read in place, not packed: a packed panel
 * would serve few tiles.  Above it a strip read in place (KC rows a row stride apart) thrashes
 * L1 where the stride is a power of two (256 x 64 x 256: 66 GFLOP/s in place against 76
 * packed and 87 for OpenBLAS, before A was read in place) */
/* a last panel of at most this many columns runs ck_fg_edge (vectors along m) instead of
 * the 6 x 16 tile.  Measured with bench/fgemm_edge_ab.sh (one thread, the loaded 2-core EPYC,
 * no AVX-512): rpn_3x3's F(4x4) task 512 x 512 x 65 79 -> 81-83 GFLOP/s, pw_14's task
 * 1024 x 256 x 98 83-85 -> 87-91 (a 16-column panel: ~92); 1 to 6 columns within the noise
 * of each other, 4 kept (12 accumulators at most stay in registers up to 6) */
#ifndef CK_FG_EDGE_N
#define CK_FG_EDGE_N 4
#endif
#ifndef CK_FG_DIRECT_M
#define CK_FG_DIRECT_M 16
#endif

static int ck_fgemm_available(void)
{
    static int known = -1;  /* benign race: every thread computes the same value */
    if (known < 0) {
        /* CONVKIT_DISABLE_FGEMM=1 (read once; an environment variable because every extension
         * module has its own copy of this header's statics): BLAS, as on a CPU without AVX2,
         * for tests of that path */
        const char *off = getenv("CONVKIT_DISABLE_FGEMM");
        known = (off != NULL && off[0] != '\0' && off[0] != '0') ? 0 : ck_cpu_has_avx2_fma();
    }
    return known;
}

static __thread float *ck_fg_pb = NULL;
static pthread_key_t ck_fg_key;
static pthread_once_t ck_fg_once = PTHREAD_ONCE_INIT;
static int ck_fg_key_ok = 0;

static void ck_fg_free(void *unused)
{
    (void)unused;
    free(ck_fg_pb);
    ck_fg_pb = NULL;
}

static void ck_fg_key_init(void)
{
    ck_fg_key_ok = pthread_key_create(&ck_fg_key, ck_fg_free) == 0;
}

/* the thread's buffer for packed B */
static int ck_fg_buffers(void)
{
    if (ck_fg_pb != NULL)
        return 1;
    pthread_once(&ck_fg_once, ck_fg_key_init);
    ck_fg_pb = (float *)aligned_alloc(64, sizeof(float) * CK_FG_NC * CK_FG_KC);
    if (ck_fg_key_ok)  /* any non-NULL value makes the destructor run at thread exit */
        pthread_setspecific(ck_fg_key, (void *)1);
    return ck_fg_pb != NULL;
}

/* op(B) rows [0, kc) x cols [0, nc) of B (not transposed; row p at b + p * ldb, already
 * offset) into 24-column panels (row p of a panel at out + 24p), columns past nc zero */
CK_FG_TARGET static void ck_fg_pack_b(const float *b, ptrdiff_t ldb, ptrdiff_t kc, ptrdiff_t nc,
                                      float *out)
{
    for (ptrdiff_t j0 = 0; j0 < nc; j0 += CK_FG_NR) {
        ptrdiff_t nr = nc - j0 < CK_FG_NR ? nc - j0 : CK_FG_NR;
        if (nr == CK_FG_NR) {
            for (ptrdiff_t p = 0; p < kc; ++p) {
                const float *src = b + p * ldb + j0;
                for (int v = 0; v < CK_FG_NV; ++v)
                    _mm256_store_ps(out + CK_FG_NR * p + 8 * v, _mm256_loadu_ps(src + 8 * v));
            }
        } else {
            for (ptrdiff_t p = 0; p < kc; ++p) {
                const float *src = b + p * ldb + j0;
                for (ptrdiff_t jj = 0; jj < CK_FG_NR; ++jj)
                    out[CK_FG_NR * p + jj] = jj < nr ? src[jj] : 0.0f;
            }
        }
        out += CK_FG_NR * kc;
    }
}

/* c (mc x 8*nv, rows r < mrows <= mc, the last vector's lanes in `last`) = the chains of A's
 * rows (row r, step p at a + r * ars + p * aks) over kc steps of B (row p at b + p * bs),
 * started from c (load_c) or from 0.  mc (<= MR), nv and full are constants in each instance
 * below: the loops unroll and the accumulators stay in registers.  A short last row block
 * (m = 16: 6 + 6 + 4, m = 32: ... + 2) runs an instance of 4 or 2 rows, not 6 with rows of
 * discarded sums: each output's chain is the same, so are its bits. */
CK_FG_TARGET static inline __attribute__((always_inline)) void
ck_fg_body(int mc, int nv, int full, ptrdiff_t kc, const float *a, ptrdiff_t ars,
           ptrdiff_t aks, const float *b, ptrdiff_t bs, float *c, ptrdiff_t ldc, int load_c,
           int mrows, __m256i last)
{
    __m256 acc[CK_FG_MR][CK_FG_NV];
    const float *ar[CK_FG_MR];  /* row r of the tile's A at ar[r] + p * aks; rows past mrows
                                 * read row 0 (their sums are not stored) */
#pragma GCC unroll 8
    for (int r = 0; r < mc; ++r)
        ar[r] = a + (r < mrows ? r : 0) * ars;
#pragma GCC unroll 8
    for (int r = 0; r < mc; ++r)
#pragma GCC unroll 3
        for (int v = 0; v < nv; ++v) {
            const float *cp = c + r * ldc + 8 * v;
            if (!load_c || r >= mrows)
                acc[r][v] = _mm256_setzero_ps();
            else if (full || v < nv - 1)
                acc[r][v] = _mm256_loadu_ps(cp);
            else
                acc[r][v] = _mm256_maskload_ps(cp, last);
        }
    for (ptrdiff_t p = 0; p < kc; ++p) {
        __m256 bv[CK_FG_NV];
#pragma GCC unroll 3
        for (int v = 0; v < nv; ++v)
            bv[v] = (full || v < nv - 1) ? _mm256_loadu_ps(b + 8 * v)
                                         : _mm256_maskload_ps(b + 8 * v, last);
        if (bs != CK_FG_NR)  /* B's own rows, a row apart: fetch the row 8 ahead */
            _mm_prefetch((const char *)(b + 8 * bs), _MM_HINT_T0);
#pragma GCC unroll 8
        for (int r = 0; r < mc; ++r) {
            const __m256 av = _mm256_broadcast_ss(ar[r] + p * aks);
#pragma GCC unroll 3
            for (int v = 0; v < nv; ++v)
                acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
        }
        b += bs;
    }
#pragma GCC unroll 8
    for (int r = 0; r < mc; ++r) {
        if (r >= mrows)
            break;
#pragma GCC unroll 3
        for (int v = 0; v < nv; ++v) {
            float *cp = c + r * ldc + 8 * v;
            if (full || v < nv - 1)
                _mm256_storeu_ps(cp, acc[r][v]);
            else
                _mm256_maskstore_ps(cp, last, acc[r][v]);
        }
    }
}

/* op(B) rows [0, kc) x cols [0, nc) of a transposed B (stored n x k, already offset) into
 * 16-column panels (row p of a panel at out + 16p), columns past nc zero.  A whole panel goes
 * in 8 x 8 blocks transposed in registers (8 columns' runs of 8 k steps); the k steps past
 * the last 8 and a partial panel element by element (a copy: no bits change) */
CK_FG_TARGET static void ck_fg_pack_bt(const float *b, ptrdiff_t ldb, ptrdiff_t kc,
                                       ptrdiff_t nc, float *out)
{
    for (ptrdiff_t j0 = 0; j0 < nc; j0 += CK_FG_NR) {
        ptrdiff_t nr = nc - j0 < CK_FG_NR ? nc - j0 : CK_FG_NR;
        ptrdiff_t p0 = 0;
        if (nr == CK_FG_NR)
            for (; p0 + 8 <= kc; p0 += 8)
                for (int h = 0; h < CK_FG_NR; h += 8) {
                    __m256 r[8];
#pragma GCC unroll 8
                    for (int i = 0; i < 8; ++i)
                        r[i] = _mm256_loadu_ps(b + (j0 + h + i) * ldb + p0);
                    ck_fg_tr8(r);   /* r[q]: columns h..h+7 at k step p0 + q */
#pragma GCC unroll 8
                    for (int q = 0; q < 8; ++q)
                        _mm256_store_ps(out + CK_FG_NR * (p0 + q) + h, r[q]);
                }
        for (ptrdiff_t jj = 0; jj < CK_FG_NR; ++jj) {
            const float *src = b + (j0 + jj) * ldb;
            if (jj < nr)
                for (ptrdiff_t p = p0; p < kc; ++p)
                    out[CK_FG_NR * p + jj] = src[p];
            else
                for (ptrdiff_t p = p0; p < kc; ++p)
                    out[CK_FG_NR * p + jj] = 0.0f;
        }
        out += CK_FG_NR * kc;
    }
}

/* The narrow last panel (nr <= CK_FG_EDGE_N columns): the same chains with the vectors along
 * m, 8 rows a vector.  In the 6 x 16 tile such a panel costs six broadcasts of A and a B load
 * per 6 useful FMAs; here A's rows come 8 k steps at a time, transposed in registers (ta: A's
 * rows are already contiguous), and B is broadcast once per column and k step.  Each output is
 * still fma(a[i,p], b[p,j], c) over p ascending from 0 or C: the main tile's bits. */
CK_FG_TARGET static inline __attribute__((always_inline)) void
ck_fg_edge_body(int nr, int ta, ptrdiff_t mr, ptrdiff_t kc, const float *a, ptrdiff_t lda,
                const float *b, ptrdiff_t bs, float *c, ptrdiff_t ldc, int load_c)
{
    __m256 acc[CK_FG_EDGE_N];
    float tmp[8] __attribute__((aligned(32)));
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i rows = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)mr), lane);
#pragma GCC unroll 8
    for (int j = 0; j < nr; ++j) {
        for (int i = 0; i < 8; ++i)
            tmp[i] = load_c && i < mr ? c[i * ldc + j] : 0.0f;
        acc[j] = _mm256_load_ps(tmp);
    }
    if (ta) {   /* row p of A^T at a + p * lda: the tile's 8 rows side by side */
        for (ptrdiff_t p = 0; p < kc; ++p) {
            const __m256 av = mr == 8 ? _mm256_loadu_ps(a + p * lda)
                                      : _mm256_maskload_ps(a + p * lda, rows);
#pragma GCC unroll 8
            for (int j = 0; j < nr; ++j)
                acc[j] = _mm256_fmadd_ps(av, _mm256_broadcast_ss(b + p * bs + j), acc[j]);
        }
    } else {    /* row i of A at a + i * lda; rows past mr read row 0 (not stored) */
        const float *ar[8];
        for (int i = 0; i < 8; ++i)
            ar[i] = a + (i < mr ? i : 0) * lda;
        for (ptrdiff_t p0 = 0; p0 < kc; p0 += 8) {
            ptrdiff_t q8 = kc - p0 < 8 ? kc - p0 : 8;
            __m256 t[8];
            if (q8 == 8) {
#pragma GCC unroll 8
                for (int i = 0; i < 8; ++i)
                    t[i] = _mm256_loadu_ps(ar[i] + p0);
            } else {    /* the last k steps: lanes past them are not read */
                const __m256i ks = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)q8), lane);
                for (int i = 0; i < 8; ++i)
                    t[i] = _mm256_maskload_ps(ar[i] + p0, ks);
            }
            ck_fg_tr8(t);   /* t[q]: A[0..7, p0 + q] */
#pragma GCC unroll 8
            for (int q = 0; q < 8; ++q) {
                if (q >= q8)
                    break;
                const float *bq = b + (p0 + q) * bs;
#pragma GCC unroll 8
                for (int j = 0; j < nr; ++j)
                    acc[j] = _mm256_fmadd_ps(t[q], _mm256_broadcast_ss(bq + j), acc[j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < nr; ++j) {
        _mm256_store_ps(tmp, acc[j]);
        for (int i = 0; i < mr; ++i)
            c[i * ldc + j] = tmp[i];
    }
}

/* the narrow panel over mc rows of A, 8 a tile (nr a constant in each instance) */
CK_FG_TARGET static void ck_fg_edge(ptrdiff_t mc, ptrdiff_t nr, ptrdiff_t kc, int ta,
                                    const float *a, ptrdiff_t lda, const float *b, ptrdiff_t bs,
                                    float *c, ptrdiff_t ldc, int load_c)
{
    for (ptrdiff_t i = 0; i < mc; i += 8) {
        ptrdiff_t mr = mc - i < 8 ? mc - i : 8;
        const float *ai = ta ? a + i : a + i * lda;
        float *ci = c + i * ldc;
        switch ((int)nr * 2 + (ta != 0)) {
#define CK_FG_EDGE_CASE(NR)                                                                    \
        case 2 * NR:                                                                           \
            ck_fg_edge_body(NR, 0, mr, kc, ai, lda, b, bs, ci, ldc, load_c); break;            \
        case 2 * NR + 1:                                                                       \
            ck_fg_edge_body(NR, 1, mr, kc, ai, lda, b, bs, ci, ldc, load_c); break;
        CK_FG_EDGE_CASE(1)
#if CK_FG_EDGE_N >= 2
        CK_FG_EDGE_CASE(2)
#endif
#if CK_FG_EDGE_N >= 3
        CK_FG_EDGE_CASE(3)
#endif
#if CK_FG_EDGE_N >= 4
        CK_FG_EDGE_CASE(4)
#endif
#if CK_FG_EDGE_N >= 5
        CK_FG_EDGE_CASE(5)
#endif
#if CK_FG_EDGE_N >= 6
        CK_FG_EDGE_CASE(6)
#endif
#undef CK_FG_EDGE_CASE
        default: break;
        }
    }
}

/* one tile: mr <= MR rows, nr <= NR columns */
CK_FG_TARGET static void ck_fg_tile(ptrdiff_t mr, ptrdiff_t nr, ptrdiff_t kc, const float *a,
                                    ptrdiff_t ars, ptrdiff_t aks, const float *b, ptrdiff_t bs,
                                    float *c, ptrdiff_t ldc, int load_c)
{
    /* the instance's rows: MR, or 4 / 2 for a short last block */
#define CK_FG_ROWS(...)                                                                        \
    do {                                                                                       \
        if (mr > 4 || CK_FG_MR <= 4)                                                           \
            ck_fg_body(CK_FG_MR, __VA_ARGS__);                                                 \
        else if (mr > 2)                                                                       \
            ck_fg_body(4, __VA_ARGS__);                                                        \
        else                                                                                   \
            ck_fg_body(2, __VA_ARGS__);                                                        \
    } while (0)
    if (nr == CK_FG_NR) {
        const __m256i all = _mm256_set1_epi32(-1);
        CK_FG_ROWS(CK_FG_NV, 1, kc, a, ars, aks, b, bs, c, ldc, load_c, (int)mr, all);
        return;
    }
    int nv = (int)((nr + 7) / 8);
    const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(nr - 8 * (nv - 1))),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (nv == 1)
        CK_FG_ROWS(1, 0, kc, a, ars, aks, b, bs, c, ldc, load_c, (int)mr, last);
#if CK_FG_NV > 2
    else if (nv == 2)
        CK_FG_ROWS(2, 0, kc, a, ars, aks, b, bs, c, ldc, load_c, (int)mr, last);
#endif
    else
        CK_FG_ROWS(CK_FG_NV, 0, kc, a, ars, aks, b, bs, c, ldc, load_c, (int)mr, last);
#undef CK_FG_ROWS
}

static int ck_fgemm(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                    const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                    float *c, ptrdiff_t ldc)
{
    if (alpha != 1.0f || (beta != 0.0f && beta != 1.0f) || !ck_fgemm_available())
        return 0;
    if (m <= 0 || n <= 0)
        return 1;
    if (k <= 0) {
        if (beta == 0.0f)
            for (ptrdiff_t i = 0; i < m; ++i)
                for (ptrdiff_t j = 0; j < n; ++j)
                    c[i * ldc + j] = 0.0f;
        return 1;
    }
    int pack_b = tb || m > CK_FG_DIRECT_M;
    if (pack_b && !ck_fg_buffers())
        return 0;
    /* k in near-equal blocks of at most KC (576 as 3 x 192, not 256 + 256 + 64) */
    ptrdiff_t kblocks = (k + CK_FG_KC - 1) / CK_FG_KC, kstep = (k + kblocks - 1) / kblocks;
    for (ptrdiff_t jc = 0; jc < n; jc += CK_FG_NC) {
        ptrdiff_t nc = n - jc < CK_FG_NC ? n - jc : CK_FG_NC;
        for (ptrdiff_t pc = 0; pc < k; pc += kstep) {
            ptrdiff_t kc = k - pc < kstep ? k - pc : kstep;
            int load_c = pc > 0 || beta == 1.0f;   /* the chain goes on from C */
            for (ptrdiff_t ic = 0; ic < m; ic += CK_FG_MC) {
                ptrdiff_t mc = m - ic < CK_FG_MC ? m - ic : CK_FG_MC;
                for (ptrdiff_t jr = 0; jr < nc; jr += CK_FG_NR) {
                    ptrdiff_t nr = nc - jr < CK_FG_NR ? nc - jr : CK_FG_NR;
                    float *panel = pack_b ? ck_fg_pb + (jr / CK_FG_NR) * CK_FG_NR * kc : NULL;
                    /* a B panel is packed just before its first use: in L1 for that pass */
                    if (ic == 0 && tb)
                        ck_fg_pack_bt(b + (jc + jr) * ldb + pc, ldb, kc, nr, panel);
                    else if (ic == 0 && pack_b)
                        ck_fg_pack_b(b + pc * ldb + jc + jr, ldb, kc, nr, panel);
                    const float *bp = pack_b ? panel : b + pc * ldb + jc + jr;
                    ptrdiff_t bs = pack_b ? CK_FG_NR : ldb;
                    if (nr <= CK_FG_EDGE_N) {   /* (only the last panel is narrow) */
                        ck_fg_edge(mc, nr, kc, ta,
                                   ta ? a + pc * lda + ic : a + ic * lda + pc, lda, bp, bs,
                                   c + ic * ldc + jc + jr, ldc, load_c);
                        continue;
                    }
                    for (ptrdiff_t ir = 0; ir < mc; ir += CK_FG_MR) {
                        ptrdiff_t mr = mc - ir < CK_FG_MR ? mc - ir : CK_FG_MR;
                        ck_fg_tile(mr, nr, kc,
                                   ta ? a + pc * lda + ic + ir : a + (ic + ir) * lda + pc,
                                   ta ? 1 : lda, ta ? lda : 1, bp, bs,
                                   c + (ic + ir) * ldc + jc + jr, ldc, load_c);
                    }
                }
            }
        }
    }
    return 1;
}

#else  /* not x86-64 with GCC or clang: BLAS does these GEMMs */

static int ck_fgemm_available(void) { return 0; }

static int ck_fgemm(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                    const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                    float *c, ptrdiff_t ldc)
{
    (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda; (void)b;
    (void)ldb; (void)beta; (void)c; (void)ldc;
    return 0;
}

#endif
#endif
