# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Weight gradient as dot products along the output positions (float32 on the own GEMM, few
taps per filter; conv_plan "weight_dot"): grad_y rows against tap rows read in place in the
stride-phase planes, 16-lane partial sums (csrc/sdot.h), grad_bias on the way.

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from ._conv_csrc cimport ck_phases_f, ck_sdot_accum, ck_sdot_copy
from ._conv_common cimport _align64, _min


def conv2d_backward_weight_dot(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                               float[:, ::1] gw, float[::1] gb, bint has_bias, float[::1] ws,
                               Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                               Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                               Py_ssize_t rows, Py_ssize_t kr, Py_ssize_t fchunk,
                               Py_ssize_t groups_n, const Py_ssize_t[::1] boff, int n_threads,
                               Py_ssize_t groups=1):
    """float32 with AVX-512F: gw (F x C/groups*KH*KW, OUT) = grad_weight and, when has_bias,
    gb (OUT) = grad_bias, as dot products along the output positions (csrc/sdot.h): no im2col and
    no packing.  The taps are read in the phase planes of conv2d_forward_phases (built per
    image and block of ``rows`` output rows; boff: _phase_offsets(..., rows, Wo)); grad_y is
    copied ``kr`` output rows at a time into an aligned buffer (its bias sums taken on the way)
    and each such pass runs the 8 x 3 tiles over every tap.

    Tasks: (conv group) x (``fchunk`` of its filters, a multiple of 8) x (one of ``groups_n``
    groups of images), each summing its images in order into its own 16-lane partial sums (and
    building the phase planes of its conv group's channels only); then each value of gw is the
    sum over image groups in order, lanes in order.  The grouping of the images is set by the
    caller from the batch alone, so every value is summed in the same order whatever the
    thread count.  ws: weight_dot_floats(...) = (per thread, per task) floats, n_threads of
    the first then one of the second per task.
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gy.shape[1], Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t CG = groups, C = x.shape[1] // groups, Fg = F // groups
    cdef Py_ssize_t CKK = C * KH * KW, ntf = (Fg + fchunk - 1) // fchunk
    cdef Py_ssize_t G = groups_n, per_group = (N + G - 1) // G
    cdef Py_ssize_t Wq = Wo + ((KW - 1) * dw) // sw, Rx = ((KH - 1) * dh) // sh
    cdef Py_ssize_t plane = (rows + Rx) * Wq, planes = C * sh * sw * plane
    cdef Py_ssize_t ds = (Wo + 15) // 16 * 16, cols = CKK + (1 if has_bias else 0)
    cdef Py_ssize_t t, g, n, n1, f0, fc, h0, hr, r0, rr, i, j, l, e, pfr, cg, fi
    cdef Py_ssize_t per_thread, per_task
    cdef const float* pf
    cdef float* Q
    cdef float* part
    cdef float* parts
    cdef float* A
    cdef const float* p
    cdef double s
    per_thread, per_task = weight_dot_floats(C, KH, KW, sh, sw, dh, dw, Wo, rows, kr, fchunk)
    if ws.shape[0] < n_threads * per_thread + CG * ntf * G * per_task + 16:
        raise ValueError("conv2d_backward_weight_dot: workspace too small")
    parts = _align64(&ws[0] + n_threads * per_thread)
    with nogil:
        for t in prange(CG * ntf * G, schedule="static", num_threads=n_threads):
            cg = t // (ntf * G)                     # the conv group
            fi = (t // G) % ntf                     # its filter chunk
            f0 = cg * Fg + fi * fchunk
            fc = _min(fchunk, Fg - fi * fchunk)
            g = t % G
            Q = _align64(&ws[0] + threadid() * per_thread)
            A = _align64(Q + planes)
            part = parts + t * per_task         # (fc*CKK + fc) * 16 floats, aligned
            memset(part, 0, (fc * CKK + fc) * 16 * sizeof(float))
            n1 = _min(N, (g + 1) * per_group)
            for n in range(g * per_group, n1):
                h0 = 0
                while h0 < Ho:
                    hr = _min(rows, Ho - h0)
                    ck_phases_f(&x[n, cg * C, 0, 0], C, H, W, sh, sw, pt, pl, h0, hr + Rx, Wq,
                                plane, Q)
                    r0 = h0
                    while r0 < h0 + hr:
                        rr = _min(kr, h0 + hr - r0)
                        ck_sdot_copy(fc, rr, Wo, &gy[n, f0, r0, 0], HoWo, Wo, A, ds,
                                     part + fc * CKK * 16 if has_bias else <float*>NULL)
                        # the next pass's grad_y rows: this image's next ones, else the
                        # next image's first (prefetched while this pass computes)
                        if r0 + rr < Ho:
                            pf = &gy[n, f0, r0 + rr, 0]
                            pfr = _min(kr, Ho - r0 - rr)
                        elif n + 1 < n1:
                            pf = &gy[n + 1, f0, 0, 0]
                            pfr = _min(kr, Ho)
                        else:
                            pf = NULL
                            pfr = 0
                        ck_sdot_accum(fc, CKK, rr, Wo, A, rr * ds, ds, Q + (r0 - h0) * Wq,
                                      &boff[0], Wq, part, pf, fc, pfr * Wo, HoWo)
                        r0 = r0 + rr
                    h0 = h0 + hr
        # the sums over groups and lanes, one filter per task
        for i in prange(F, schedule="static", num_threads=n_threads):
            fi = (i % Fg) // fchunk                 # filter i: conv group i // Fg, this chunk
            t = ((i // Fg) * ntf + fi) * G
            fc = _min(fchunk, Fg - fi * fchunk)
            l = (i % Fg) % fchunk                   # its row in the chunk
            for j in range(cols):
                s = 0
                for g in range(G):
                    # filter i's row in its chunk's partials: taps first, then the biases
                    p = (parts + (t + g) * per_task
                         + (l * CKK + j if j < CKK else fc * CKK + l) * 16)
                    for e in range(16):
                        s = s + p[e]
                if j < CKK:
                    gw[i, j] = <float>s
                else:
                    gb[i] = <float>s
    return gw


def weight_dot_floats(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Wo, Py_ssize_t rows,
                      Py_ssize_t kr, Py_ssize_t fchunk):
    """Workspace floats of conv2d_backward_weight_dot: (per thread: the phase planes and the
    aligned grad_y block; per task: the 16-lane partial sums of fchunk filters' taps and
    biases), with room to align each to 64 bytes."""
    cdef Py_ssize_t Wq = Wo + ((KW - 1) * dw) // sw, Rx = ((KH - 1) * dh) // sh
    return (C * sh * sw * (rows + Rx) * Wq + fchunk * kr * ((Wo + 15) // 16 * 16) + 2 * 16,
            (fchunk * C * KH * KW + fchunk) * 16)
