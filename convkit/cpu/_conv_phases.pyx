# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Strided forward by stride-phase planes (float32 on the own GEMM): a task splits its input rows
into sh*sw phase planes (csrc/vsum.h ck_phases_f), then one GEMM per output row reads every tap
in place at a fixed offset (conv_plan "phases").

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from ._blas cimport ck_sgemm_apacked_rows
from ._conv_csrc cimport ck_phases_f
from ._conv_common cimport _min


def conv2d_forward_phases(const float[:, :, :, ::1] x, const float[::1] bias, bint has_bias,
                          float[:, :, :, ::1] y, float[::1] ws, Py_ssize_t ws_per_thread,
                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                          Py_ssize_t rows, int n_threads, const float[:, ::1] apk,
                          const Py_ssize_t[::1] boff):
    """groups 1, float32 on the own GEMM (apk: the weights prepacked): y = conv(x, w) + bias
    with no im2col.  The zero-padded image P (P[r, q] = x[r - pt, q - pl]) is split into its
    sh x sw phases Q[ph, pw][i, j] = P[i*sh + ph, j*sw + pw], each Wq = Wo + ((KW-1)*dw)//sw
    wide: tap (c, kh, kw) reads, for output row ho, the Wo contiguous values of phase
    (kh*dh % sh, kw*dw % sw) from row ho + kh*dh//sh, column kw*dw//sw -- so each output row is
    one GEMM (F x Wo) whose B rows sit at fixed offsets (boff, CKK of them) in the phase planes,
    written straight into y.  Each input value is copied once (into its phase), not KH*KW/(sh*sw)
    times as in im2col.  Tasks: (image, block of ``rows`` output rows), each building the phase
    rows it reads: Rq = rows + (KH-1)*dh//sh of them per phase, so ws_per_thread >=
    C*sh*sw*Rq*Wq + (KW-1)*dw//sw (slack read past the last row).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t CKK = C * KH * KW
    cdef Py_ssize_t Wq = Wo + ((KW - 1) * dw) // sw, Rq = rows + ((KH - 1) * dh) // sh
    cdef Py_ssize_t plane = Rq * Wq, nrb = (Ho + rows - 1) // rows
    cdef Py_ssize_t t, n, h0, hr, ho
    cdef Py_ssize_t failed = 0
    cdef float* Q
    with nogil:
        for t in prange(N * nrb, schedule="dynamic", num_threads=n_threads):
            n = t // nrb
            h0 = (t - n * nrb) * rows
            hr = _min(rows, Ho - h0)
            Q = &ws[0] + threadid() * ws_per_thread
            ck_phases_f(&x[n, 0, 0, 0], C, H, W, sh, sw, pt, pl, h0, Rq, Wq, plane, Q)
            memset(Q + C * sh * sw * plane, 0, (((KW - 1) * dw) // sw) * sizeof(float))
            for ho in range(h0, h0 + hr):
                if not ck_sgemm_apacked_rows(F, Wo, CKK, &apk[0, 0], Q + (ho - h0) * Wq,
                                             &boff[0], 0, &y[n, 0, ho, 0], HoWo,
                                             &bias[0] if has_bias else <const float*>NULL):
                    failed += 1     # its packing buffers could not be allocated
    if failed:
        raise MemoryError("conv2d_forward: out of memory for a thread's GEMM packing buffers")
    return y
