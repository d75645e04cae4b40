# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Dense-map conv for planes no bigger than the kernel (conv_plan "dense"): the conv as one
(C*H*W, F*Ho*Wo) matrix (dense_weight), its gradient folded back onto the taps (dense_fold),
and gemm_rows, a row-blocked GEMM on the team.

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from ._blas cimport gemm_fixed
from ._conv_common cimport _min


# ---------------------------------------------------------------------------- dense maps
# For tiny planes (2x2 with a 3x3 kernel) the conv is a small dense linear map from an image's
# C*H*W inputs to its F*Ho*Wo outputs, Wd[(c, hi, wi), (f, ho, wo)] = w[f, c, kh, kw] (0 where no
# tap connects them).  With x as the (N, C*H*W) matrix it already is, y = x @ Wd is one GEMM
# straight into y's layout -- no im2col, no copies -- and grad_x = gy @ Wd^T,
# grad_Wd = x^T @ gy; grad_weight folds grad_Wd back onto the taps.  It does H*W / (KH*KW) times
# the multiplies of im2col (4/9 for 2x2 under a 3x3 kernel: the taps that read padding are
# skipped).

def dense_weight(const floating[:, :, :, ::1] w, floating[:, ::1] wd, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                 Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """wd (C*H*W, F*Ho*Wo) = the dense map of the (groups = 1) conv w: zeroed, then each tap's
    weights written at (c, hi, wi), (f, ho, wo); a task per input channel (its rows)."""
    cdef Py_ssize_t F = w.shape[0], C = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t HW = H * W, HoWo = Ho * Wo, c, f, kh, kw, ho, wo, hi, wi, o
    cdef floating* row
    with nogil:
        for c in prange(C, schedule="static", num_threads=n_threads):
            memset(&wd[c * HW, 0], 0, HW * wd.shape[1] * sizeof(floating))
            for kh in range(KH):
                for kw in range(KW):
                    for ho in range(Ho):
                        hi = ho * sh + kh * dh - pt
                        if hi < 0 or hi >= H:
                            continue
                        for wo in range(Wo):
                            wi = wo * sw + kw * dw - pl
                            if wi < 0 or wi >= W:
                                continue
                            row = &wd[c * HW + hi * W + wi, 0]
                            o = ho * Wo + wo
                            for f in range(F):
                                row[f * HoWo + o] = w[f, c, kh, kw]


def dense_fold(const floating[:, ::1] gwd, floating[:, :, :, ::1] gw, Py_ssize_t H,
               Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t sh, Py_ssize_t sw,
               Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """gw (OUT, any contents)[f, c, kh, kw] = the sum of gwd over the (input, output) pairs tap
    (kh, kw) connects, in (ho, wo) order: the adjoint of dense_weight (a task per channel)."""
    cdef Py_ssize_t F = gw.shape[0], C = gw.shape[1], KH = gw.shape[2], KW = gw.shape[3]
    cdef Py_ssize_t HW = H * W, HoWo = Ho * Wo, c, f, kh, kw, ho, wo, hi, wi, o
    cdef bint first
    cdef const floating* row
    with nogil:
        for c in prange(C, schedule="static", num_threads=n_threads):
            first = True        # (assigned in the loop body: thread-private)
            for kh in range(KH):
                for kw in range(KW):
                    first = True
                    for ho in range(Ho):
                        hi = ho * sh + kh * dh - pt
                        if hi < 0 or hi >= H:
                            continue
                        for wo in range(Wo):
                            wi = wo * sw + kw * dw - pl
                            if wi < 0 or wi >= W:
                                continue
                            row = &gwd[c * HW + hi * W + wi, 0]
                            o = ho * Wo + wo
                            if first:
                                for f in range(F):
                                    gw[f, c, kh, kw] = row[f * HoWo + o]
                                first = False
                            else:
                                for f in range(F):
                                    gw[f, c, kh, kw] += row[f * HoWo + o]
                    if first:           # a tap that only ever reads padding
                        for f in range(F):
                            gw[f, c, kh, kw] = 0


def gemm_rows(bint trans_a, bint trans_b, const floating[:, ::1] a, const floating[:, ::1] b,
              floating[:, ::1] c, Py_ssize_t k, int n_threads, int n_blocks=0,
              Py_ssize_t block_rows=0):
    """c (m x n) = op(a) @ op(b) (op(a) m x k), its rows split into ``n_blocks`` blocks (one per
    thread when 0), a multiple of 8 rows each, or (block_rows > 0) into blocks of exactly
    block_rows rows.  On gemm_fixed: a fixed-order float32 GEMM (csrc/sgemm.h, csrc/fgemm.h)
    sums each row in a fixed k order whatever the split; BLAS
    may not (OpenBLAS picks other kernels for other row counts, and a row's bits follow its
    place in the block), so BLAS callers pass a split set by the layer alone -- one row (one
    image) per GEMM where a row's bits must not depend on the other rows."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], lda = a.shape[1], ldb = b.shape[1]
    cdef Py_ssize_t split = n_blocks if n_blocks > 0 else n_threads
    cdef Py_ssize_t rows = (block_rows if block_rows > 0
                            else (((m + split - 1) // split) + 7) // 8 * 8)
    cdef Py_ssize_t nblk = (m + rows - 1) // rows, t, i0, mb
    with nogil:
        if nblk <= 1:
            gemm_fixed(trans_a, trans_b, m, n, k, <floating>1, &a[0, 0], lda, &b[0, 0], ldb,
                       <floating>0, &c[0, 0], n)
        else:
            for t in prange(nblk, schedule="static", num_threads=n_threads):
                i0 = t * rows
                mb = _min(rows, m - i0)
                gemm_fixed(trans_a, trans_b, mb, n, k, <floating>1,
                           (&a[0, 0] + i0) if trans_a else (&a[0, 0] + i0 * lda), lda,
                           &b[0, 0], ldb, <floating>0, &c[0, 0] + i0 * n, n)
