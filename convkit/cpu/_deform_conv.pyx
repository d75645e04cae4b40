# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Deformable convolution (torchvision's deform_conv2d rule, restated in
convkit/reference/deform_conv.py): deformable im2col in C (csrc/deform_conv.h) + the GEMMs of
the cpu conv (_blas.pxd), in OpenMP tasks.

The batch runs in chunks of ``chunk`` images whose zero-bordered planes, sample tables and
columns (C*KK rows of P = Ho*Wo) sit in the caller's buffers.  Every task writes a disjoint part of the outputs and
every sum runs in a fixed order, and the task sizes (``pb`` positions, ``ub`` weight-gradient
rows) depend on the shapes only: the same bits for any thread count.

forward, per chunk: tasks (image, channel) copy x's planes into zero-bordered ones; tasks
(image, block of pb positions) build their table entries and columns in their thread's
scratch, then one GEMM per weight group writes y's block (bias added as the products are
stored).
backward, per chunk: (1) the same tasks build tables and columns; (2) tasks (weight group,
block of ub rows of grad_weight) add gy[n] @ cols[n]^T for the chunk's images in order;
(3) tasks (image, block) overwrite their columns with W^T @ gy and turn them into the offset
and mask gradients and dL/d(sample); (4) tasks (image, channel) zero a bordered plane (the
bordered x is no longer needed), add every sample's share into it, taps and positions in order
(no atomics), and copy its interior to grad_x.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from ._blas cimport gemm, gemm_pk
from ._conv_common cimport _min


cdef extern from "csrc/deform_conv.h" nogil:
    void ck_deform_pad_f(const float* x, Py_ssize_t H, Py_ssize_t W, float* xp)
    void ck_deform_pad_d(const double* x, Py_ssize_t H, Py_ssize_t W, double* xp)
    void ck_deform_crop_f(const float* gp, Py_ssize_t H, Py_ssize_t W, float* x)
    void ck_deform_crop_d(const double* gp, Py_ssize_t H, Py_ssize_t W, double* x)
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
    void ck_deform_cols_f(const float* xp, const float* mask, Py_ssize_t C, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t OG, Py_ssize_t KK, Py_ssize_t P,
                          Py_ssize_t p0, Py_ssize_t p1, const float* tw, const Py_ssize_t* tb,
                          Py_ssize_t ldt, float* cols, Py_ssize_t ldc)
    void ck_deform_cols_d(const double* xp, const double* mask, Py_ssize_t C, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t OG, Py_ssize_t KK, Py_ssize_t P,
                          Py_ssize_t p0, Py_ssize_t p1, const double* tw, const Py_ssize_t* tb,
                          Py_ssize_t ldt, double* cols, Py_ssize_t ldc)
    void ck_deform_coord_f(const float* xp, const float* mask, Py_ssize_t C, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t OG, Py_ssize_t KK, Py_ssize_t P,
                           Py_ssize_t p0, Py_ssize_t p1, const float* tw, const Py_ssize_t* tc,
                           Py_ssize_t ldt, float* gc, Py_ssize_t ldc, float* goff, float* gmask)
    void ck_deform_coord_d(const double* xp, const double* mask, Py_ssize_t C, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t OG, Py_ssize_t KK, Py_ssize_t P,
                           Py_ssize_t p0, Py_ssize_t p1, const double* tw,
                           const Py_ssize_t* tc, Py_ssize_t ldt, double* gc, Py_ssize_t ldc,
                           double* goff, double* gmask)
    void ck_deform_col2im_f(const float* gs, Py_ssize_t ldc, Py_ssize_t g, Py_ssize_t KK,
                            Py_ssize_t P, Py_ssize_t W, const float* tw, const Py_ssize_t* tb,
                            float* gp)
    void ck_deform_col2im_d(const double* gs, Py_ssize_t ldc, Py_ssize_t g, Py_ssize_t KK,
                            Py_ssize_t P, Py_ssize_t W, const double* tw, const Py_ssize_t* tb,
                            double* gp)


cdef struct Geom:
    Py_ssize_t C, H, W, OG, KH, KW, KK, Wo, P, sh, sw, ph, pw, dh, dw
    Py_ssize_t plane, CKP, TP      # bordered plane, columns and table entries per image


cdef Geom _geom(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OG, Py_ssize_t KH,
                Py_ssize_t KW, Py_ssize_t Wo, Py_ssize_t P, tuple params):
    cdef Geom s
    s.C, s.H, s.W = C, H, W
    s.OG, s.KH, s.KW, s.KK, s.Wo, s.P = OG, KH, KW, KH * KW, Wo, P
    s.sh, s.sw, s.ph, s.pw, s.dh, s.dw = params
    s.plane = (H + 2) * (W + 2)
    s.CKP = C * KH * KW * P
    s.TP = OG * KH * KW * P
    return s


cdef void _pad(const floating* x, Geom* s, floating* xp) noexcept nogil:
    if floating is float:
        ck_deform_pad_f(x, s.H, s.W, xp)
    else:
        ck_deform_pad_d(x, s.H, s.W, xp)


cdef void _table_cols(const floating* xp, const floating* off, const floating* mask, Geom* s,
                      Py_ssize_t p0, Py_ssize_t p1, floating* tw, Py_ssize_t* tb,
                      Py_ssize_t* tc, Py_ssize_t ldt, floating* cols,
                      Py_ssize_t ldc) noexcept nogil:
    """Table entries (position p of tap r at r*ldt + p - p0) and columns (column p at
    p - p0 of rows of stride ldc) of positions [p0, p1) of one image (xp: its bordered
    planes)."""
    if floating is float:
        ck_deform_table_f(off, s.OG, s.KH, s.KW, s.Wo, s.P, s.H, s.W, s.sh, s.sw, s.ph, s.pw,
                          s.dh, s.dw, p0, p1, tw, tb, tc, ldt)
        ck_deform_cols_f(xp, mask, s.C, s.H, s.W, s.OG, s.KK, s.P, p0, p1, tw, tb, ldt, cols,
                         ldc)
    else:
        ck_deform_table_d(off, s.OG, s.KH, s.KW, s.Wo, s.P, s.H, s.W, s.sh, s.sw, s.ph, s.pw,
                          s.dh, s.dw, p0, p1, tw, tb, tc, ldt)
        ck_deform_cols_d(xp, mask, s.C, s.H, s.W, s.OG, s.KK, s.P, p0, p1, tw, tb, ldt, cols,
                         ldc)


cdef void _pad_chunk(const floating[:, :, :, ::1] x, Geom* s, Py_ssize_t n0, Py_ssize_t nc,
                     floating* xpad, int n_threads) noexcept nogil:
    """Bordered planes of images [n0, n0 + nc), one task per plane."""
    cdef Py_ssize_t t
    for t in prange(nc * s.C, schedule="static", num_threads=n_threads):
        _pad(&x[n0 + t // s.C, t % s.C, 0, 0], s, xpad + t * s.plane)


def deform_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] off,
                   const floating[:, :, :, ::1] w, const floating[::1] bias, bint has_bias,
                   const floating[:, :, :, ::1] mask, bint has_mask, floating[:, :, :, ::1] y,
                   floating[::1] xpad, floating[::1] cols, floating[::1] tw, Py_ssize_t[::1] tb,
                   tuple params, Py_ssize_t chunk, Py_ssize_t pb, int n_threads):
    """y = deform_conv(x, off, w, mask) + bias (IN: x, off, w, bias, mask; OUT: y).  Scratch:
    xpad C*(H+2)*(W+2) per chunk image; per thread, one task's columns (C*KK*pb), table
    weights (6*OG*KK*pb) and corners (tb, 2*OG*KK*pb: sampled, then the offset gradient's)
    -- a task's columns are consumed by its GEMMs while they are still in cache.
    params: (sh, sw, ph, pw, dh, dw)."""
    cdef Py_ssize_t N = x.shape[0], F = w.shape[0], Cg = w.shape[1]
    cdef Py_ssize_t KH = w.shape[2], KW = w.shape[3], Wo = y.shape[3], P = y.shape[2] * Wo
    cdef Geom s = _geom(x.shape[1], x.shape[2], x.shape[3], off.shape[1] // (2 * KH * KW),
                        KH, KW, Wo, P, params)
    cdef Py_ssize_t G = s.C // Cg, Fg = F // G, K = Cg * s.KK, nb = (P + pb - 1) // pb
    cdef Py_ssize_t RK = s.OG * s.KK, n0, nc, t, n, p0, p1, g, tid
    cdef floating* cp
    for n0 in range(0, N, chunk):
        nc = _min(chunk, N - n0)
        with nogil:
            _pad_chunk(x, &s, n0, nc, &xpad[0], n_threads)
            for t in prange(nc * nb, schedule="dynamic", num_threads=n_threads):
                n = n0 + t // nb
                p0 = (t % nb) * pb
                p1 = _min(P, p0 + pb)
                tid = threadid()
                cp = &cols[0] + tid * s.C * s.KK * pb
                _table_cols(&xpad[0] + (t // nb) * s.C * s.plane, &off[n, 0, 0, 0],
                            &mask[n, 0, 0, 0] if has_mask else <const floating*>NULL, &s, p0,
                            p1, &tw[0] + tid * RK * pb * 6, &tb[0] + tid * RK * pb * 2,
                            &tb[0] + tid * RK * pb * 2 + RK * pb, pb, cp, pb)
                for g in range(G):
                    gemm_pk(False, False, Fg, p1 - p0, K, &w[g * Fg, 0, 0, 0], K,
                            <const float*>NULL, cp + g * K * pb, pb, <floating>0,
                            &y[n, g * Fg, 0, 0] + p0, P,
                            &bias[g * Fg] if has_bias else <const floating*>NULL)
    return y


def deform_backward(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] off, const floating[:, :, :, ::1] w,
                    const floating[:, :, :, ::1] mask, bint has_mask,
                    floating[:, :, :, ::1] gx, floating[:, :, :, ::1] goff,
                    floating[:, :, :, ::1] gw, floating[:, :, :, ::1] gmask,
                    floating[::1] xpad, floating[::1] cols, floating[::1] tw, Py_ssize_t[::1] tb,
                    tuple params, Py_ssize_t chunk, Py_ssize_t pb, Py_ssize_t ub,
                    int n_threads):
    """grad_x (gx), grad_offset (goff), grad_weight (gw, zero-filled by the caller) and, with
    has_mask, grad_mask (gmask); all OUT.  Scratch per chunk image: xpad C*(H+2)*(W+2), cols
    C*KK*P, tw 6*OG*KK*P, and in tb OG*KK*P sampled corners per image, then as many offset
    gradient corners per image (at chunk*OG*KK*P).  params as deform_forward's."""
    cdef Py_ssize_t N = x.shape[0], F = w.shape[0], Cg = w.shape[1]
    cdef Py_ssize_t KH = w.shape[2], KW = w.shape[3], Wo = gy.shape[3], P = gy.shape[2] * Wo
    cdef Geom s = _geom(x.shape[1], x.shape[2], x.shape[3], off.shape[1] // (2 * KH * KW),
                        KH, KW, Wo, P, params)
    cdef Py_ssize_t G = s.C // Cg, Fg = F // G, K = Cg * s.KK, nb = (P + pb - 1) // pb
    cdef Py_ssize_t nub = (K + ub - 1) // ub, C = s.C, KK = s.KK, OG = s.OG
    cdef Py_ssize_t n0, nc, t, n, slot, p0, p1, g, u0, u1, j, c
    cdef floating* cp
    cdef floating* xs
    cdef const floating* mp
    for n0 in range(0, N, chunk):
        nc = _min(chunk, N - n0)
        with nogil:
            # (1) bordered planes, tables and columns
            _pad_chunk(x, &s, n0, nc, &xpad[0], n_threads)
            for t in prange(nc * nb, schedule="dynamic", num_threads=n_threads):
                slot = t // nb
                p0 = (t - slot * nb) * pb
                _table_cols(&xpad[0] + slot * C * s.plane, &off[n0 + slot, 0, 0, 0],
                            &mask[n0 + slot, 0, 0, 0] if has_mask else <const floating*>NULL,
                            &s, p0, _min(P, p0 + pb), &tw[0] + (slot * s.TP + p0) * 6,
                            &tb[0] + slot * s.TP + p0, &tb[0] + (chunk + slot) * s.TP + p0, P,
                            &cols[0] + slot * s.CKP + p0, P)
            # (2) grad_weight: rows [u0, u1) of group g, images in order
            for t in prange(G * nub, schedule="dynamic", num_threads=n_threads):
                g = t // nub
                u0 = (t - g * nub) * ub
                u1 = _min(K, u0 + ub)
                for j in range(nc):
                    gemm(False, True, Fg, u1 - u0, P, <floating>1, &gy[n0 + j, g * Fg, 0, 0], P,
                         &cols[0] + j * s.CKP + (g * K + u0) * P, P, <floating>1,
                         &gw[g * Fg, 0, 0, 0] + u0, K)
            # (3) dL/dcols = W^T @ gy, then the offset / mask gradients and dL/d(sample)
            for t in prange(nc * nb, schedule="dynamic", num_threads=n_threads):
                slot = t // nb
                n = n0 + slot
                p0 = (t - slot * nb) * pb
                p1 = _min(P, p0 + pb)
                cp = &cols[0] + slot * s.CKP
                xs = &xpad[0] + slot * C * s.plane
                for g in range(G):
                    gemm(True, False, K, p1 - p0, Fg, <floating>1, &w[g * Fg, 0, 0, 0], K,
                         &gy[n, g * Fg, 0, 0] + p0, P, <floating>0, cp + g * K * P + p0, P)
                mp = &mask[n, 0, 0, 0] if has_mask else <const floating*>NULL
                if floating is float:
                    ck_deform_coord_f(xs, mp, C, s.H, s.W, OG, KK, P, p0, p1,
                                      &tw[0] + (slot * s.TP + p0) * 6,
                                      &tb[0] + (chunk + slot) * s.TP + p0, P, cp + p0, P,
                                      &goff[n, 0, 0, 0],
                                      &gmask[n, 0, 0, 0] if has_mask else <float*>NULL)
                else:
                    ck_deform_coord_d(xs, mp, C, s.H, s.W, OG, KK, P, p0, p1,
                                      &tw[0] + (slot * s.TP + p0) * 6,
                                      &tb[0] + (chunk + slot) * s.TP + p0, P, cp + p0, P,
                                      &goff[n, 0, 0, 0],
                                      &gmask[n, 0, 0, 0] if has_mask else <double*>NULL)
            # (4) grad_x, one plane per task, accumulated in the (now free) bordered plane
            for t in prange(nc * C, schedule="dynamic", num_threads=n_threads):
                slot = t // C
                c = t - slot * C
                xs = &xpad[0] + t * s.plane
                memset(xs, 0, s.plane * sizeof(floating))
                if floating is float:
                    ck_deform_col2im_f(&cols[0] + slot * s.CKP + c * KK * P, P, c // (C // OG),
                                       KK, P, s.W, &tw[0] + slot * s.TP * 6,
                                       &tb[0] + slot * s.TP, xs)
                    ck_deform_crop_f(xs, s.H, s.W, &gx[n0 + slot, c, 0, 0])
                else:
                    ck_deform_col2im_d(&cols[0] + slot * s.CKP + c * KK * P, P, c // (C // OG),
                                       KK, P, s.W, &tw[0] + slot * s.TP * 6,
                                       &tb[0] + slot * s.TP, xs)
                    ck_deform_crop_d(xs, s.H, s.W, &gx[n0 + slot, c, 0, 0])
