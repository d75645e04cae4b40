# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Deformable convolution (torchvision's deform_conv2d rule, restated in
convkit/reference/deform_conv.py): deformable im2col in C (csrc/deform_conv.h, channels
innermost) + the GEMMs of the cpu conv (_blas.pxd), in OpenMP tasks.

The batch runs in chunks of ``chunk`` images whose channels-last bordered copies, sample
tables and columns (P = Ho*Wo rows of C*KK, the layout in csrc/deform_conv.h) sit in the
caller's buffers.  The weights come permuted to (F, KK*Cg) (``w2``, columns ordered (tap,
channel) like the columns') and grad_weight leaves in that order (``gw2``).  Every task
writes a disjoint part of the outputs and every sum runs in a fixed order, and the task sizes
(``pb`` positions, ``ub`` weight-gradient columns, ``cb`` channels) depend on the shapes only:
the same bits for any thread count.

forward, per chunk: tasks (image, row) build the bordered copies; tasks (image, block of pb
positions) build their table entries and columns in their thread's scratch, then one GEMM per
weight group writes y's block (bias added as the products are stored): float32 on AVX2 reads
the columns in place while they are in cache, with the weights in panels of 16 filters
(ck_deform_opgemm_f), else BLAS.
backward, per chunk: (1) the same tasks build tables and columns; (2) tasks (image, weight
group, block of ub columns of grad_weight) write gy[n] @ cols[n] into the image's slot, then
tasks (filter) add the slots to grad_weight, images in order;
(3) tasks (image, block) overwrite their columns with gy^T @ W and turn them into the offset
and mask gradients and dL/d(sample); (4) tasks (image, block of at most cb channels of one
offset group and one weight group) zero their channels of the (no longer needed) bordered
copy, add every sample's share into them, taps and positions in order (no atomics), and copy
them to grad_x.  float32 on AVX2: (2) runs on csrc/rowgemm.h over grad_y packed in 4-row
panels (the columns copied in strips of 24, summed in passes of _GW_KC rows), (3) on
ck_deform_opgemm_t_f (the forward's tiles, stored transposed; the weights in panels of 16
columns, grad_y transposed per block); and where the chunk's images share out evenly over
the threads, all of (1)-(4) but the grad_weight sum runs in one task per image
(_image_backward_f; its grad_weight on ck_deform_wgrad_f, the same tiles again, reading the
columns in place: the same FMA chains as rowgemm's), block by block of _SB positions, each block carried from its columns to
its samples' shares of grad_x (into a second plane per image, gpad) while it is in cache --
every sum in the order of the phases, so the same bits.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

import numpy as np

from ._blas cimport gemm, gemm_pk
from ._conv_common cimport _min
from ._conv_csrc cimport ck_rowgemm_available, ck_rowgemm_kc_f, ck_rowgemm_pass_f

cdef extern from "csrc/sgemm.h" nogil:
    int CK_SGEMM_BUILT
    int ck_sgemm_available()
    int ck_avx512_full_rate()

# The AVX2 kernels below stand in for BLAS, and also where the own AVX-512 GEMM runs (gemm /
# gemm_pk take it) at half rate (csrc/isa.h: AMD Zen 4 splits a 512-bit FMA in two): there
# they took 9% less one-thread CPU time in the forward and 18% in the backward (bench/RESULTS.md,
# ninth session, deform9).  Full-rate AVX-512 CPUs keep the own GEMM (not measured against it).
cdef bint _AVX2_GEMMS = not (CK_SGEMM_BUILT and ck_sgemm_available() and ck_avx512_full_rate())


cdef extern from "csrc/deform_conv.h" nogil:
    int ck_deform_cap
    int ck_deform_isa()
    int ck_deform_opgemm_f(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* ap,
                           const float* b, Py_ssize_t ldb, const float* bias, float* out,
                           Py_ssize_t ldo)
    int ck_deform_opgemm_t_f(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* ap,
                             const float* b, Py_ssize_t ldb, float* out, Py_ssize_t ldo)
    int ck_deform_wgrad_f(Py_ssize_t n16, Py_ssize_t K, Py_ssize_t npos, const float* gp,
                          Py_ssize_t ldp, const float* b, Py_ssize_t ldb, int acc, float* o)
    void ck_deform_transpose_f(const float* src, Py_ssize_t ld, Py_ssize_t R, Py_ssize_t L,
                               float* dst)
    void ck_deform_gpanel16_f(const float* gy, Py_ssize_t Fg, Py_ssize_t P, Py_ssize_t g,
                              Py_ssize_t q, float* gp)
    void ck_deform_panel16_f(const float* w, Py_ssize_t Fg, Py_ssize_t Cg, Py_ssize_t KK,
                             Py_ssize_t g, Py_ssize_t q, float* ap)
    void ck_deform_pad_f_pick(const float* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t hp, float* xn)
    void ck_deform_pad_d(const double* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t hp, double* xn)
    void ck_deform_crop_f(const float* gn, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t c0, Py_ssize_t c1, float* x)
    void ck_deform_crop_d(const double* gn, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t c0, Py_ssize_t c1, double* x)
    void ck_deform_table_f(const float* off, Py_ssize_t OG, Py_ssize_t KH, Py_ssize_t KW,
                           Py_ssize_t Wo, Py_ssize_t P, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                           Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t p0, Py_ssize_t p1,
                           float* tw, Py_ssize_t* tb, Py_ssize_t* tc, Py_ssize_t ldt)
    void ck_deform_table_d(const double* off, Py_ssize_t OG, Py_ssize_t KH, Py_ssize_t KW,
                           Py_ssize_t Wo, Py_ssize_t P, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                           Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t p0, Py_ssize_t p1,
                           double* tw, Py_ssize_t* tb, Py_ssize_t* tc, Py_ssize_t ldt)
    void ck_deform_cols_f(const float* xn, const float* mask, Py_ssize_t C, Py_ssize_t W,
                          Py_ssize_t OG, Py_ssize_t Cg, Py_ssize_t KK, Py_ssize_t P,
                          Py_ssize_t p0, Py_ssize_t p1, const float* tw, const Py_ssize_t* tb,
                          Py_ssize_t ldt, float* cols)
    void ck_deform_cols_d(const double* xn, const double* mask, Py_ssize_t C, Py_ssize_t W,
                          Py_ssize_t OG, Py_ssize_t Cg, Py_ssize_t KK, Py_ssize_t P,
                          Py_ssize_t p0, Py_ssize_t p1, const double* tw, const Py_ssize_t* tb,
                          Py_ssize_t ldt, double* cols)
    void ck_deform_coord_f(const float* xn, const float* mask, Py_ssize_t C, Py_ssize_t W,
                           Py_ssize_t OG, Py_ssize_t Cg, Py_ssize_t KK, Py_ssize_t P,
                           Py_ssize_t p0, Py_ssize_t p1, const float* tw, const Py_ssize_t* tc,
                           Py_ssize_t ldt, float* gc, float* goff, float* gmask)
    void ck_deform_coord_d(const double* xn, const double* mask, Py_ssize_t C, Py_ssize_t W,
                           Py_ssize_t OG, Py_ssize_t Cg, Py_ssize_t KK, Py_ssize_t P,
                           Py_ssize_t p0, Py_ssize_t p1, const double* tw, const Py_ssize_t* tc,
                           Py_ssize_t ldt, double* gc, double* goff, double* gmask)
    void ck_deform_scatter_f(const float* gs, Py_ssize_t C, Py_ssize_t W, Py_ssize_t OG,
                             Py_ssize_t Cg, Py_ssize_t KK, Py_ssize_t P, Py_ssize_t c0,
                             Py_ssize_t c1, Py_ssize_t p0, Py_ssize_t p1, const float* tw,
                             const Py_ssize_t* tb, float* gn)
    void ck_deform_scatter_d(const double* gs, Py_ssize_t C, Py_ssize_t W, Py_ssize_t OG,
                             Py_ssize_t Cg, Py_ssize_t KK, Py_ssize_t P, Py_ssize_t c0,
                             Py_ssize_t c1, Py_ssize_t p0, Py_ssize_t p1, const double* tw,
                             const Py_ssize_t* tb, double* gn)


# grad_weight's GEMM sums a strip's P rows in passes of this many (csrc/rowgemm.h's kc: the
# same bits as one pass), so that a pass's rows of the strip (kc*96 bytes) stay in L1 while
# every panel of grad_y reads them.
cdef Py_ssize_t _GW_KC = 128
# Positions per block of the fused dL/dcols -> coord -> grad_x pass (one image per task): a
# block's columns (48*C*KK values: 110 KiB for bench's deform_conv) stay in L2 from the GEMM
# that writes them to the scatter that reads them.
cdef Py_ssize_t _SB = 48


def set_simd(bint on):
    """Allow (True, the default) or forbid the AVX2+FMA kernels (tests run both); returns
    whether they run now."""
    global ck_deform_cap
    ck_deform_cap = 1 if on else 0
    return bool(ck_deform_isa())


def opgemm_available():
    """True where the forward's float32 GEMMs run on ck_deform_opgemm_f (AVX2 + FMA kernels
    allowed, and no full-rate own AVX-512 GEMM, which stays where it runs); else BLAS or the
    own AVX-512 GEMM (gemm_pk)."""
    return bool(_AVX2_GEMMS and ck_deform_isa())


cdef struct Geom:
    Py_ssize_t C, H, W, OG, Cg, KH, KW, KK, Wo, P, sh, sw, ph, pw, dh, dw
    Py_ssize_t Hp, plane, CKK, CKP, TP    # bordered rows and plane; columns and table per image


cdef Geom _geom(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OG, Py_ssize_t Cg,
                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t Wo, Py_ssize_t P, tuple params):
    cdef Geom s
    s.C, s.H, s.W, s.Cg = C, H, W, Cg
    s.OG, s.KH, s.KW, s.KK, s.Wo, s.P = OG, KH, KW, KH * KW, Wo, P
    s.sh, s.sw, s.ph, s.pw, s.dh, s.dw = params
    s.Hp = H + 2
    s.plane = (H + 2) * (W + 2)
    s.CKK = C * KH * KW
    s.CKP = s.CKK * P
    s.TP = OG * KH * KW * P
    return s


cdef void _table_cols(const floating* xn, const floating* off, const floating* mask, Geom* s,
                      Py_ssize_t p0, Py_ssize_t p1, floating* tw, Py_ssize_t* tb,
                      Py_ssize_t* tc, Py_ssize_t ldt, floating* cols) noexcept nogil:
    """Table entries (position p of tap r at r*ldt + p - p0) and columns (row p at
    cols + (p - p0)*C*KK) of positions [p0, p1) of one image (xn: its bordered copy)."""
    if floating is float:
        ck_deform_table_f(off, s.OG, s.KH, s.KW, s.Wo, s.P, s.H, s.W, s.sh, s.sw, s.ph, s.pw,
                          s.dh, s.dw, p0, p1, tw, tb, tc, ldt)
        ck_deform_cols_f(xn, mask, s.C, s.W, s.OG, s.Cg, s.KK, s.P, p0, p1, tw, tb, ldt, cols)
    else:
        ck_deform_table_d(off, s.OG, s.KH, s.KW, s.Wo, s.P, s.H, s.W, s.sh, s.sw, s.ph, s.pw,
                          s.dh, s.dw, p0, p1, tw, tb, tc, ldt)
        ck_deform_cols_d(xn, mask, s.C, s.W, s.OG, s.Cg, s.KK, s.P, p0, p1, tw, tb, ldt, cols)


cdef inline void _pad_row(const floating[:, :, :, ::1] x, Geom* s, Py_ssize_t n0,
                          Py_ssize_t t, floating* xpad) noexcept nogil:
    """Bordered row t % (H+2) of the channels-last copy of image n0 + t // (H+2)."""
    cdef Py_ssize_t slot = t // s.Hp
    if floating is float:
        ck_deform_pad_f_pick(&x[n0 + slot, 0, 0, 0], s.C, s.H, s.W, t - slot * s.Hp,
                             xpad + slot * s.C * s.plane)
    else:
        ck_deform_pad_d(&x[n0 + slot, 0, 0, 0], s.C, s.H, s.W, t - slot * s.Hp,
                        xpad + slot * s.C * s.plane)


cdef void _pad_chunk(const floating[:, :, :, ::1] x, Geom* s, Py_ssize_t n0, Py_ssize_t nc,
                     floating* xpad, int n_threads) noexcept nogil:
    """Channels-last bordered copies of images [n0, n0 + nc), one task per bordered row."""
    cdef Py_ssize_t t
    for t in prange(nc * s.Hp, schedule="static", num_threads=n_threads):
        _pad_row(x, s, n0, t, xpad)


cdef void _pack4(const floating* src, Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t R,
                 Py_ssize_t L, floating* dst) noexcept nogil:
    """dst = the R x L matrix src[r*rs + l*cs] in 4-row panels, k-major (csrc/rowgemm.h's
    weights: dst[(r/4)*4*L + 4*l + r%4]); R a multiple of 4."""
    cdef Py_ssize_t r, l
    cdef const floating* a
    cdef floating* d
    for r in range(0, R, 4):
        a = src + r * rs
        d = dst + r * L
        for l in range(L):
            d[4 * l] = a[l * cs]
            d[4 * l + 1] = a[rs + l * cs]
            d[4 * l + 2] = a[2 * rs + l * cs]
            d[4 * l + 3] = a[3 * rs + l * cs]


cdef void _strip(const float* src, Py_ssize_t ld, Py_ssize_t R, Py_ssize_t q,
                 float* dst) noexcept nogil:
    """dst[r*24 + j] = src[r*ld + j] for r < R, j < q <= 24."""
    cdef Py_ssize_t r
    for r in range(R):
        memcpy(dst + r * 24, src + r * ld, q * sizeof(float))


cdef void _dcols_coord_f(const float* gyn, Py_ssize_t G, Py_ssize_t Fg, const float* wst,
                         const float* xs, const float* mp, Geom* s, Py_ssize_t p0,
                         Py_ssize_t p1, const float* tw, const Py_ssize_t* tc, float* cols,
                         float* goff, float* gmask, float* pp) noexcept nogil:
    """Positions [p0, p1) of one image: its columns (cols, the image's) overwritten by
    dL/dcols = gy^T @ W on ck_deform_opgemm_t_f (wst: per weight group the weights' (Fg, 16)
    panels of 16 columns; pp: scratch for the block's grad_y transposed, (p1 - p0)*Fg values),
    then by dL/d(sample), with the offset and mask gradients (ck_deform_coord_f).  gyn, mp,
    goff, gmask: the image's; tw, tc: its table (position 0 of tap 0); cols: row p0."""
    cdef Py_ssize_t g, K = s.Cg * s.KK, ns16 = (K + 15) // 16
    for g in range(G):
        ck_deform_transpose_f(gyn + g * Fg * s.P + p0, s.P, Fg, p1 - p0, pp)
        ck_deform_opgemm_t_f(K, p1 - p0, Fg, wst + g * ns16 * 16 * Fg, pp, Fg, cols + g * K,
                             s.CKK)
    ck_deform_coord_f(xs, mp, s.C, s.W, s.OG, s.Cg, s.KK, s.P, p0, p1, tw + p0 * 6, tc + p0,
                      s.P, cols, goff, gmask)


cdef void _image_backward_f(const float* gyn, const float* offn, const float* mn, Geom* s,
                            Py_ssize_t G, Py_ssize_t Fg, const float* wst,
                            const Py_ssize_t* cblk, Py_ssize_t ncb,
                            Py_ssize_t sb, const float* xs, float* gs, float* cp, float* tw,
                            Py_ssize_t* tb, Py_ssize_t* tc, float* pp, float* wpart,
                            float* goffn, float* gmn, float* gxn) noexcept nogil:
    """The whole float32 backward of one image (AVX2), blocks of sb positions in order, each
    while it is in cache: (a) its table entries and columns (cp: sb rows), added to grad_weight
    (wpart: the image's share, panel-major: per weight group, per 16 filters, per column a run
    of 16; ck_deform_wgrad_f over the block's positions, reading the columns in place: the
    FMA chain of csrc/rowgemm.h's one pass over them all); then (b) its dL/dcols, offset / mask gradients and dL/d(sample)
    (again in cp) and its samples' shares of grad_x, added into gs (a zeroed bordered plane)
    in the order of the unfused scatter, and cropped to gxn.  The same bits as the unfused
    phases.  xs: the image's bordered copy; tw, tb, tc: its table; pp: G*ceil(Fg/16)*16*P
    scratch (grad_y in panels of 16 filters per group; later the block's grad_y transposed)."""
    cdef Py_ssize_t K = s.Cg * s.KK, P = s.P, CKK = s.CKK, n16 = (Fg + 15) // 16
    cdef Py_ssize_t nsb = (P + sb - 1) // sb, g, j, q, p0, p1, c
    for g in range(G):
        for q in range(n16):
            ck_deform_gpanel16_f(gyn, Fg, P, g, q, pp + (g * n16 + q) * 16 * P)
    for j in range(nsb):
        p0 = j * sb
        p1 = _min(P, p0 + sb)
        _table_cols(xs, offn, mn, s, p0, p1, tw + p0 * 6, tb + p0, tc + p0, P, cp)
        for g in range(G):
            ck_deform_wgrad_f(n16, K, p1 - p0, pp + g * n16 * 16 * P + 16 * p0, 16 * P,
                              cp + g * K, CKK, p0 > 0, wpart + g * n16 * 16 * K)
    memset(gs, 0, s.C * s.plane * sizeof(float))
    for j in range(nsb):
        p0 = j * sb
        p1 = _min(P, p0 + sb)
        _dcols_coord_f(gyn, G, Fg, wst, xs, mn, s, p0, p1, tw, tc, cp, goffn, gmn, pp)
        for c in range(ncb):
            ck_deform_scatter_f(cp, s.C, s.W, s.OG, s.Cg, s.KK, P, cblk[c], cblk[c + 1], p0, p1,
                                tw, tb, gs)
    ck_deform_crop_f(gs, s.C, s.H, s.W, 0, s.C, gxn)




def deform_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] off,
                   const floating[:, :, :, ::1] w, const floating[:, ::1] w2, floating[::1] wp,
                   const floating[::1] bias, bint has_bias,
                   const floating[:, :, :, ::1] mask, bint has_mask, floating[:, :, :, ::1] y,
                   floating[::1] xpad, floating[::1] cols, floating[::1] tw, Py_ssize_t[::1] tb,
                   tuple params, Py_ssize_t chunk, Py_ssize_t pb, Py_ssize_t KH, Py_ssize_t KW,
                   int n_threads):
    """y = deform_conv(x, off, w, mask) + bias (IN: x, off, w (F, Cg, KH, KW), bias, mask;
    OUT: y).  The GEMMs read either w in panels of 16 filters per weight group, packed into
    wp here (ck_deform_opgemm_f; float32 where it runs; wp then holds G*ceil(Fg/16)*16*K
    values), or, with a wp of any other size, w2 = w permuted to (F, KK*Cg) (BLAS).
    Scratch: xpad C*(H+2)*(W+2) per chunk image; per thread, one task's columns (pb*C*KK),
    table weights (6*OG*KK*pb) and corners (tb, 2*OG*KK*pb: sampled, then
    the offset gradient's) -- a task's columns are consumed by its GEMMs while they are still
    in cache.  params: (sh, sw, ph, pw, dh, dw)."""
    cdef Py_ssize_t N = x.shape[0], F = w.shape[0], K = w.shape[1] * KH * KW
    cdef Py_ssize_t Wo = y.shape[3], P = y.shape[2] * Wo
    cdef Geom s = _geom(x.shape[1], x.shape[2], x.shape[3], off.shape[1] // (2 * KH * KW),
                        w.shape[1], KH, KW, Wo, P, params)
    cdef Py_ssize_t G = s.C // s.Cg, Fg = F // G, nb = (P + pb - 1) // pb
    cdef Py_ssize_t RK = s.OG * s.KK, n0, nc, t, n, p0, p1, g, tid, npk
    cdef Py_ssize_t n16 = (Fg + 15) // 16, lwp = n16 * 16 * K     # a weight group's panels
    cdef bint panels = floating is float and wp.shape[0] == G * lwp
    cdef floating* cp
    if panels and not ck_deform_isa():
        raise ValueError("deform_forward: weight panels given where ck_deform_opgemm_f "
                         "does not run")
    if not panels and (w2.shape[0] != F or w2.shape[1] != K):
        raise ValueError(f"deform_forward: w2 must be ({F}, {K}) for the BLAS GEMMs")
    for n0 in range(0, N, chunk):
        nc = _min(chunk, N - n0)
        npk = G * n16 if panels and n0 == 0 else 0
        with nogil:
            # the weights' panels (with the first chunk), then the bordered rows, in one team
            for t in prange(npk + nc * s.Hp, schedule="dynamic", num_threads=n_threads):
                if t >= npk:
                    _pad_row(x, &s, n0, t - npk, &xpad[0])
                elif floating is float:
                    ck_deform_panel16_f(&w[0, 0, 0, 0], Fg, s.Cg, s.KK, t // n16, t % n16,
                                        &wp[0] + t * 16 * K)
            for t in prange(nc * nb, schedule="dynamic", num_threads=n_threads):
                n = n0 + t // nb
                p0 = (t % nb) * pb
                p1 = _min(P, p0 + pb)
                tid = threadid()
                cp = &cols[0] + tid * s.CKK * pb
                _table_cols(&xpad[0] + (t // nb) * s.C * s.plane, &off[n, 0, 0, 0],
                            &mask[n, 0, 0, 0] if has_mask else <const floating*>NULL, &s, p0,
                            p1, &tw[0] + tid * RK * pb * 6, &tb[0] + tid * RK * pb * 2,
                            &tb[0] + tid * RK * pb * 2 + RK * pb, pb, cp)
                for g in range(G):
                    if floating is float and panels:
                        if ck_deform_opgemm_f(Fg, p1 - p0, K, &wp[0] + g * lwp, cp + g * K,
                                              s.CKK, &bias[g * Fg] if has_bias else
                                              <const float*>NULL, &y[n, g * Fg, 0, 0] + p0, P):
                            continue
                    gemm_pk(False, True, Fg, p1 - p0, K, &w2[g * Fg, 0], K,
                            <const float*>NULL, cp + g * K, s.CKK, <floating>0,
                            &y[n, g * Fg, 0, 0] + p0, P,
                            &bias[g * Fg] if has_bias else <const floating*>NULL)
    return y


def _channel_blocks(Py_ssize_t C, Py_ssize_t Cog, Py_ssize_t Cg, Py_ssize_t cb):
    """Starts of the channel blocks of grad_x's tasks (then C): at most cb channels, none
    across an offset group's or a weight group's edge."""
    edges = sorted(set(range(0, C, Cog)) | set(range(0, C, Cg)) | {C})
    starts = []
    for a, b in zip(edges, edges[1:]):
        starts.extend(range(a, b, cb))
    return np.array(starts + [C], np.intp)


def deform_backward(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] off, const floating[:, ::1] w2,
                    const floating[:, :, :, ::1] mask, bint has_mask,
                    floating[:, :, :, ::1] gx, floating[:, :, :, ::1] goff,
                    floating[:, ::1] gw2, floating[:, :, :, ::1] gmask,
                    floating[::1] xpad, floating[::1] cols, floating[::1] tw, Py_ssize_t[::1] tb,
                    floating[::1] wpart, floating[::1] pan, Py_ssize_t[::1] boff,
                    floating[::1] gpad, const floating[::1] wst, tuple params,
                    Py_ssize_t chunk, Py_ssize_t pb, Py_ssize_t ub, Py_ssize_t cb,
                    Py_ssize_t KH, Py_ssize_t KW, int n_threads):
    """grad_x (gx), grad_offset (goff), grad_weight in w2's order (gw2, zero-filled by the
    caller) and, with has_mask, grad_mask (gmask); all OUT.  Scratch per chunk image: xpad
    C*(H+2)*(W+2), cols P*C*KK, tw 6*OG*KK*P, in tb OG*KK*P sampled corners per image, then
    as many offset gradient corners per image (at chunk*OG*KK*P), and wpart F*KK*Cg (the
    image's grad_weight).  float32 on AVX2: per thread, pan holds one task's gy in 4-row
    panels (Fg*P) and a strip of 24 columns (24*P) for grad_weight's GEMM, or a block's gy
    transposed (at most pb*Fg) for dL/dcols', max((Fg + 24)*P, pb*Fg) in all; boff the row
    offsets (2*P + Fg: p*C*KK, f*24, then p*24); wst the weights w2 in panels of 16 columns
    (per weight group, per panel: Fg rows of 16, the last panel zero-padded), which the
    dL/dcols GEMM reads; gpad C*(H+2)*(W+2) per chunk image (grad_x's planes of the fused
    (3)+(4); fewer: unfused).  The fused tasks need per thread G*ceil(Fg/16)*16*P of pan
    (grad_y in panels of 16 filters) and per chunk image as many of wpart times K (its
    grad_weight panel-major).  An empty pan: BLAS.  params as deform_forward's."""
    cdef Py_ssize_t N = x.shape[0], F = w2.shape[0], K = w2.shape[1]
    cdef Py_ssize_t Wo = gy.shape[3], P = gy.shape[2] * Wo
    cdef Geom s = _geom(x.shape[1], x.shape[2], x.shape[3], off.shape[1] // (2 * KH * KW),
                        K // (KH * KW), KH, KW, Wo, P, params)
    cdef Py_ssize_t G = s.C // s.Cg, Fg = F // G, nb = (P + pb - 1) // pb
    cdef Py_ssize_t nub = (K + ub - 1) // ub, C = s.C, KK = s.KK, OG = s.OG, Cg = s.Cg
    cdef Py_ssize_t CKK = s.CKK
    cdef Py_ssize_t[::1] cblk = _channel_blocks(C, C // OG, Cg, cb)
    cdef Py_ssize_t ncb = cblk.shape[0] - 1
    cdef Py_ssize_t n0, nc, t, n, slot, p0, p1, g, u0, u1, j, c0, c1
    cdef floating* cp
    cdef floating* xs
    cdef Py_ssize_t q
    cdef Py_ssize_t psz = pan.shape[0] // n_threads
    cdef Py_ssize_t sb = _SB
    cdef Py_ssize_t n16 = (Fg + 15) // 16, lwp = G * n16 * 16 * K    # fused: wpart per image
    cdef Py_ssize_t i, base
    cdef float* gs
    # dL/dcols on ck_opt (float32, AVX2 kernels allowed); (3) and (4) fused with an image per
    # thread (the sums' order does not change: the same bits either way)
    cdef bint rg = floating is float and _AVX2_GEMMS and ck_rowgemm_available() != 0 and psz > 0
    cdef bint ot = rg and ck_deform_isa()
    cdef bint fuse
    cdef floating* pp
    cdef const floating* mp
    for n0 in range(0, N, chunk):
        nc = _min(chunk, N - n0)
        # per-image tasks where they share out evenly over the threads (else the phases' finer
        # tasks; the same bits either way)
        fuse = (ot and nc >= n_threads and (nc % n_threads == 0 or nc >= 3 * n_threads)
                and Fg % 4 == 0 and psz >= G * n16 * 16 * P and wpart.shape[0] >= nc * lwp
                and gpad.shape[0] >= nc * C * s.plane)
        with nogil:
            _pad_chunk(x, &s, n0, nc, &xpad[0], n_threads)
            if floating is float:
                if fuse:
                    # one task per image: all of its backward but the grad_weight sum
                    # (_image_backward_f); the image's columns buffer holds one block's rows
                    for t in prange(nc, schedule="dynamic", num_threads=n_threads):
                        _image_backward_f(&gy[n0 + t, 0, 0, 0], &off[n0 + t, 0, 0, 0],
                                          &mask[n0 + t, 0, 0, 0] if has_mask else <float*>NULL,
                                          &s, G, Fg, &wst[0], &cblk[0], ncb, sb,
                                          &xpad[0] + t * C * s.plane,
                                          &gpad[0] + t * C * s.plane, &cols[0] + t * s.CKP,
                                          &tw[0] + t * s.TP * 6, &tb[0] + t * s.TP,
                                          &tb[0] + (chunk + t) * s.TP,
                                          &pan[0] + threadid() * psz, &wpart[0] + t * lwp,
                                          &goff[n0 + t, 0, 0, 0],
                                          &gmask[n0 + t, 0, 0, 0] if has_mask else <float*>NULL,
                                          &gx[n0 + t, 0, 0, 0])
            if not fuse:
                # (1) tables and columns
                for t in prange(nc * nb, schedule="dynamic", num_threads=n_threads):
                    slot = t // nb
                    p0 = (t - slot * nb) * pb
                    _table_cols(&xpad[0] + slot * C * s.plane, &off[n0 + slot, 0, 0, 0],
                                &mask[n0 + slot, 0, 0, 0] if has_mask else <const floating*>NULL,
                                &s, p0, _min(P, p0 + pb), &tw[0] + (slot * s.TP + p0) * 6,
                                &tb[0] + slot * s.TP + p0, &tb[0] + (chunk + slot) * s.TP + p0, P,
                                &cols[0] + slot * s.CKP + p0 * CKK)
                # (2) grad_weight: each image's share (columns [u0, u1) of group g) into its slot
                # of wpart, then added to gw2 images in order
                for t in prange(nc * G * nub, schedule="dynamic", num_threads=n_threads):
                    slot = t // (G * nub)
                    g = (t - slot * G * nub) // nub
                    u0 = (t - slot * G * nub - g * nub) * ub
                    u1 = _min(K, u0 + ub)
                    if floating is float:
                        if rg and Fg % 4 == 0:
                            # gy[n]'s group in panels, then the columns in strips of 24 (rows
                            # contiguous: in place, rows 2304 bytes apart share few cache sets)
                            pp = &pan[0] + threadid() * psz
                            _pack4(&gy[n0 + slot, g * Fg, 0, 0], P, 1, Fg, P, pp)
                            for j in range(u0, u1, 24):
                                q = _min(24, u1 - j)
                                _strip(&cols[0] + slot * s.CKP + g * K + j, CKK, P, q,
                                       pp + Fg * P)
                                ck_rowgemm_kc_f(Fg, q, P, pp, pp + Fg * P, &boff[P + Fg],
                                                &wpart[0] + (slot * F + g * Fg) * K + j, K,
                                                _GW_KC)
                            continue
                    gemm(False, False, Fg, u1 - u0, P, <floating>1, &gy[n0 + slot, g * Fg, 0, 0], P,
                         &cols[0] + slot * s.CKP + g * K + u0, CKK, <floating>0,
                         &wpart[0] + (slot * F + g * Fg) * K + u0, K)
            for t in prange(F, schedule="static", num_threads=n_threads):
                for j in range(nc):
                    if fuse:    # the fused tasks' panel-major shares
                        g = t // Fg
                        i = t - g * Fg
                        base = j * lwp + (g * n16 + i // 16) * 16 * K + i % 16
                        for u0 in range(K):
                            gw2[t, u0] += wpart[base + 16 * u0]
                    else:
                        for u0 in range(K):
                            gw2[t, u0] += wpart[(j * F + t) * K + u0]
            if not fuse:
                # (3) dL/dcols = gy^T @ W, then the offset / mask gradients and dL/d(sample)
                for t in prange(nc * nb, schedule="dynamic", num_threads=n_threads):
                    slot = t // nb
                    n = n0 + slot
                    p0 = (t - slot * nb) * pb
                    p1 = _min(P, p0 + pb)
                    cp = &cols[0] + slot * s.CKP + p0 * CKK
                    xs = &xpad[0] + slot * C * s.plane
                    mp = &mask[n, 0, 0, 0] if has_mask else <const floating*>NULL
                    if floating is float:
                        if ot:
                            _dcols_coord_f(&gy[n, 0, 0, 0], G, Fg, &wst[0], xs, mp, &s, p0, p1,
                                           &tw[0] + slot * s.TP * 6, &tb[0] + (chunk + slot) * s.TP,
                                           cp, &goff[n, 0, 0, 0],
                                           &gmask[n, 0, 0, 0] if has_mask else <float*>NULL,
                                           &pan[0] + threadid() * psz)
                            continue
                    for g in range(G):
                        gemm(True, False, p1 - p0, K, Fg, <floating>1, &gy[n, g * Fg, 0, 0] + p0, P,
                             &w2[g * Fg, 0], K, <floating>0, cp + g * K, CKK)
                    if floating is float:
                        ck_deform_coord_f(xs, mp, C, s.W, OG, Cg, KK, P, p0, p1,
                                          &tw[0] + (slot * s.TP + p0) * 6,
                                          &tb[0] + (chunk + slot) * s.TP + p0, P, cp,
                                          &goff[n, 0, 0, 0],
                                          &gmask[n, 0, 0, 0] if has_mask else <float*>NULL)
                    else:
                        ck_deform_coord_d(xs, mp, C, s.W, OG, Cg, KK, P, p0, p1,
                                          &tw[0] + (slot * s.TP + p0) * 6,
                                          &tb[0] + (chunk + slot) * s.TP + p0, P, cp,
                                          &goff[n, 0, 0, 0],
                                          &gmask[n, 0, 0, 0] if has_mask else <double*>NULL)
                # (4) grad_x, one block of channels per task, accumulated in the (now free)
                # bordered copy
                for t in prange(nc * ncb, schedule="dynamic", num_threads=n_threads):
                    slot = t // ncb
                    c0 = cblk[t - slot * ncb]
                    c1 = cblk[t - slot * ncb + 1]
                    xs = &xpad[0] + slot * C * s.plane
                    for q in range(s.plane):
                        for j in range(c0, c1):
                            xs[q * C + j] = 0
                    if floating is float:
                        ck_deform_scatter_f(&cols[0] + slot * s.CKP, C, s.W, OG, Cg, KK, P, c0, c1,
                                            0, P, &tw[0] + slot * s.TP * 6, &tb[0] + slot * s.TP,
                                            xs)
                        ck_deform_crop_f(xs, C, s.H, s.W, c0, c1, &gx[n0 + slot, 0, 0, 0])
                    else:
                        ck_deform_scatter_d(&cols[0] + slot * s.CKP, C, s.W, OG, Cg, KK, P, c0, c1,
                                            0, P, &tw[0] + slot * s.TP * 6, &tb[0] + slot * s.TP,
                                            xs)
                        ck_deform_crop_d(xs, C, s.H, s.W, c0, c1, &gx[n0 + slot, 0, 0, 0])
