# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""conv2d kernels for the ``cpu`` backend: im2col + BLAS GEMM, a no-copy 1x1 path, and a direct
kernel for depthwise convs (groups == C).

Every loop runs without the GIL.  Work is split so that each OpenMP thread owns a disjoint part of
what is written (whole channel planes for im2col/col2im, column blocks of GEMM outputs), and every
sum runs in an order that does not depend on the thread count or timing, so results -- backward
included -- are the same bits every run.  The GEMMs call BLAS from inside the OpenMP team; the
Python wrapper (convkit/cpu/conv.py) pins BLAS to one thread around the call so the two thread
pools do not oversubscribe the cores.

cdivision is on: every ``//`` and ``%`` below has non-negative operands (see _wo_range).
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from ._blas cimport gemm


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline void _wo_range(Py_ssize_t off, Py_ssize_t sw, Py_ssize_t W, Py_ssize_t Wo,
                           Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the output columns wo whose input column wo*sw + off lies in [0, W)."""
    cdef Py_ssize_t a = 0, b = 0
    if off < 0:
        a = (-off + sw - 1) // sw
    if W - 1 - off >= 0:
        b = (W - 1 - off) // sw + 1
    if b > Wo:
        b = Wo
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


# ---------------------------------------------------------------------------- plane kernels
cdef void im2col_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* cols, Py_ssize_t ldc) noexcept nogil:
    cdef Py_ssize_t kh, kw, r, wo, hi, lo, up, off
    cdef floating* dst
    cdef const floating* src
    for kh in range(KH):
        for kw in range(KW):
            off = kw * dw - pl
            _wo_range(off, sw, W, Wo, &lo, &up)
            for r in range(nrows):
                dst = cols + (kh * KW + kw) * ldc + r * Wo
                hi = (h0 + r) * sh - pt + kh * dh
                if hi < 0 or hi >= H or lo == up:
                    memset(dst, 0, Wo * sizeof(floating))
                    continue
                src = x + hi * W + off
                if lo > 0:
                    memset(dst, 0, lo * sizeof(floating))
                if sw == 1:
                    memcpy(dst + lo, src + lo, (up - lo) * sizeof(floating))
                else:
                    for wo in range(lo, up):
                        dst[wo] = src[wo * sw]
                if up < Wo:
                    memset(dst + up, 0, (Wo - up) * sizeof(floating))


cdef void col2im_plane(const floating* cols, Py_ssize_t ldc, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* gx) noexcept nogil:
    cdef Py_ssize_t kh, kw, r, wo, hi, lo, up, off
    cdef const floating* src
    cdef floating* dst
    for kh in range(KH):
        for kw in range(KW):
            off = kw * dw - pl
            _wo_range(off, sw, W, Wo, &lo, &up)
            if lo == up:
                continue
            for r in range(nrows):
                hi = (h0 + r) * sh - pt + kh * dh
                if hi < 0 or hi >= H:
                    continue
                src = cols + (kh * KW + kw) * ldc + r * Wo
                dst = gx + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        dst[wo] += src[wo]
                else:
                    for wo in range(lo, up):
                        dst[wo * sw] += src[wo]


cdef void depthwise_forward_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                                  const floating* w, Py_ssize_t KH, Py_ssize_t KW,
                                  Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                  Py_ssize_t dh, Py_ssize_t dw, floating bias,
                                  floating* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    cdef Py_ssize_t ho, wo, kh, kw, hi, lo, up, off
    cdef floating wv
    cdef floating* yrow
    cdef const floating* xrow
    for ho in range(Ho):
        yrow = y + ho * Wo
        for wo in range(Wo):
            yrow[wo] = bias
        for kh in range(KH):
            hi = ho * sh - pt + kh * dh
            if hi < 0 or hi >= H:
                continue
            for kw in range(KW):
                off = kw * dw - pl
                _wo_range(off, sw, W, Wo, &lo, &up)
                wv = w[kh * KW + kw]
                xrow = x + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        yrow[wo] += wv * xrow[wo]
                else:
                    for wo in range(lo, up):
                        yrow[wo] += wv * xrow[wo * sw]


cdef void depthwise_backward_input_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                                         const floating* w, Py_ssize_t KH, Py_ssize_t KW,
                                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                                         floating* gx, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t ho, wo, kh, kw, hi, lo, up, off
    cdef floating wv
    cdef floating* gxrow
    cdef const floating* gyrow
    for ho in range(Ho):
        gyrow = gy + ho * Wo
        for kh in range(KH):
            hi = ho * sh - pt + kh * dh
            if hi < 0 or hi >= H:
                continue
            for kw in range(KW):
                off = kw * dw - pl
                _wo_range(off, sw, W, Wo, &lo, &up)
                wv = w[kh * KW + kw]
                gxrow = gx + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        gxrow[wo] += wv * gyrow[wo]
                else:
                    for wo in range(lo, up):
                        gxrow[wo * sw] += wv * gyrow[wo]


cdef void depthwise_backward_weight_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                                          const floating* x, Py_ssize_t H, Py_ssize_t W,
                                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                                          Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                          Py_ssize_t dh, Py_ssize_t dw,
                                          floating* tmp, double* acc) noexcept nogil:
    # Products are summed per output column into tmp (a vectorisable elementwise loop; a plain
    # dot-product reduction would stay scalar without -ffast-math), then each tap's Wo partial
    # sums go into acc in double.
    cdef Py_ssize_t ho, wo, kh, kw, hi, lo, up, off, k
    cdef floating* t
    cdef const floating* gyrow
    cdef const floating* xrow
    memset(tmp, 0, KH * KW * Wo * sizeof(floating))
    for ho in range(Ho):
        gyrow = gy + ho * Wo
        for kh in range(KH):
            hi = ho * sh - pt + kh * dh
            if hi < 0 or hi >= H:
                continue
            for kw in range(KW):
                off = kw * dw - pl
                _wo_range(off, sw, W, Wo, &lo, &up)
                t = tmp + (kh * KW + kw) * Wo
                xrow = x + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        t[wo] += gyrow[wo] * xrow[wo]
                else:
                    for wo in range(lo, up):
                        t[wo] += gyrow[wo] * xrow[wo * sw]
    for k in range(KH * KW):
        acc[k] += plane_sum(tmp + k * Wo, Wo)


cdef double plane_sum(const floating* p, Py_ssize_t n) noexcept nogil:
    # eight independent accumulators: no loop-carried add latency, and a fixed order
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        s0 += p[i]
        s1 += p[i + 1]
        s2 += p[i + 2]
        s3 += p[i + 3]
        s4 += p[i + 4]
        s5 += p[i + 5]
        s6 += p[i + 6]
        s7 += p[i + 7]
        i += 8
    while i < n:
        s0 += p[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


# ---------------------------------------------------------------------------- drivers
cdef inline Py_ssize_t _gcd(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef inline Py_ssize_t _nblocks(Py_ssize_t items, Py_ssize_t n_threads) noexcept nogil:
    """Split each of ``items`` equal tasks into this many blocks so the team gets equal shares
    (items * blocks is a multiple of n_threads)."""
    if n_threads <= 1 or items <= 0:
        return 1
    return n_threads // _gcd(items, n_threads)


cdef inline Py_ssize_t _block_width(Py_ssize_t total, Py_ssize_t nblocks) noexcept nogil:
    """Width of each of nblocks column blocks of ``total`` columns, rounded up to 16."""
    cdef Py_ssize_t bw = (total + nblocks - 1) // nblocks
    return ((bw + 15) // 16) * 16


def conv2d_forward_gemm(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                        const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                        floating[::1] ws, Py_ssize_t nb, Py_ssize_t rows,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups, bint pointwise,
                        int n_threads):
    """y = conv(x, w) + bias by im2col + GEMM, nb images (or ``rows`` output rows of one
    image) at a time through the workspace ws (IN: x, w, bias; OUT: y; scratch: ws).

    pointwise (1x1 kernel, stride 1, no padding): the GEMMs read x in place; ws is unused.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t n0, h0, nbc, hr, L, ld, img_stride, ncb, bw, nitems
    cdef Py_ssize_t it, i, c, g, cb, j0, jw, f, jj
    cdef const floating* colbase
    cdef floating* yp
    cdef floating beta, bv
    with nogil:
        n0 = 0
        while n0 < N:
            nbc = _min(nb, N - n0)
            h0 = 0
            while h0 < Ho:
                hr = _min(rows, Ho - h0)
                L = hr * Wo
                if pointwise:
                    colbase = &x[n0, 0, 0, 0]
                    img_stride = C * H * W
                    ld = H * W
                else:
                    colbase = &ws[0]
                    img_stride = L
                    ld = nbc * L
                    for it in prange(nbc * C, schedule="static", num_threads=n_threads):
                        i = it // C
                        c = it - i * C
                        im2col_plane(&x[n0 + i, c, 0, 0], H, W, KH, KW, sh, sw, pt, pl, dh, dw,
                                     Wo, h0, hr, &ws[c * KK * ld + i * L], ld)
                ncb = _nblocks(nbc * G, n_threads)
                bw = _block_width(L, ncb)
                nitems = nbc * G * ncb
                for it in prange(nitems, schedule="static", num_threads=n_threads):
                    i = it // (G * ncb)
                    g = (it - i * G * ncb) // ncb
                    cb = it - i * G * ncb - g * ncb
                    j0 = cb * bw
                    jw = _min(L - j0, bw)
                    if jw > 0:
                        yp = &y[n0 + i, g * Fg, 0, 0] + h0 * Wo + j0
                        beta = 0
                        if has_bias:
                            beta = 1
                            for f in range(Fg):
                                bv = bias[g * Fg + f]
                                for jj in range(jw):
                                    yp[f * HoWo + jj] = bv
                        gemm(False, False, Fg, jw, CgKK, <floating>1, &w[g * Fg, 0, 0, 0], CgKK,
                             colbase + i * img_stride + g * CgKK * ld + j0, ld,
                             beta, yp, HoWo)
                h0 += hr
            n0 += nbc
    return y


def conv2d_backward_gemm(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                         const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                         floating[:, :, :, ::1] gw, floating[::1] ws, Py_ssize_t nb,
                         Py_ssize_t rows, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups,
                         bint pointwise, bint needs_input_grad, int n_threads):
    """grad_weight (gw, OUT, zero-filled by the caller) and, when needs_input_grad, grad_x
    (gx, OUT, any contents) of conv2d_forward_gemm.

    gw[g] += gy[n, g] @ cols[n, g]^T image after image (a fixed order: deterministic);
    cols_grad = w[g]^T @ gy[n, g], then col2im into gx (each thread owns whole planes).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t n0, h0, nbc, hr, L, ld, img_stride, ncb, bw, nitems
    cdef Py_ssize_t it, i, c, g, cb, j0, jw
    cdef const floating* colbase
    cdef floating* cgrad
    with nogil:
        n0 = 0
        while n0 < N:
            nbc = _min(nb, N - n0)
            h0 = 0
            while h0 < Ho:
                hr = _min(rows, Ho - h0)
                L = hr * Wo
                if pointwise:
                    colbase = &x[n0, 0, 0, 0]
                    img_stride = C * H * W
                    ld = H * W
                else:
                    colbase = &ws[0]
                    img_stride = L
                    ld = nbc * L
                    for it in prange(nbc * C, schedule="static", num_threads=n_threads):
                        i = it // C
                        c = it - i * C
                        im2col_plane(&x[n0 + i, c, 0, 0], H, W, KH, KW, sh, sw, pt, pl, dh, dw,
                                     Wo, h0, hr, &ws[c * KK * ld + i * L], ld)
                # grad_weight: each task owns a column block of gw[g]; images in order
                ncb = _nblocks(G, n_threads)
                bw = _block_width(CgKK, ncb)
                for it in prange(G * ncb, schedule="static", num_threads=n_threads):
                    g = it // ncb
                    cb = it - g * ncb
                    j0 = cb * bw
                    jw = _min(CgKK - j0, bw)
                    if jw > 0:
                        for i in range(nbc):
                            gemm(False, True, Fg, jw, L, <floating>1,
                                 &gy[n0 + i, g * Fg, 0, 0] + h0 * Wo, HoWo,
                                 colbase + i * img_stride + (g * CgKK + j0) * ld, ld,
                                 <floating>1, &gw[g * Fg, 0, 0, 0] + j0, CgKK)
                if needs_input_grad:
                    # columns' gradient (into gx directly when pointwise, else into ws)
                    ncb = _nblocks(nbc * G, n_threads)
                    bw = _block_width(L, ncb)
                    nitems = nbc * G * ncb
                    for it in prange(nitems, schedule="static", num_threads=n_threads):
                        i = it // (G * ncb)
                        g = (it - i * G * ncb) // ncb
                        cb = it - i * G * ncb - g * ncb
                        j0 = cb * bw
                        jw = _min(L - j0, bw)
                        if jw > 0:
                            if pointwise:
                                cgrad = &gx[n0 + i, g * Cg, 0, 0] + j0
                            else:
                                cgrad = &ws[0] + g * CgKK * ld + i * L + j0
                            gemm(True, False, CgKK, jw, Fg, <floating>1, &w[g * Fg, 0, 0, 0], CgKK,
                                 &gy[n0 + i, g * Fg, 0, 0] + h0 * Wo + j0, HoWo,
                                 <floating>0, cgrad, ld)
                    if not pointwise:
                        for it in prange(nbc * C, schedule="static", num_threads=n_threads):
                            i = it // C
                            c = it - i * C
                            if h0 == 0:
                                memset(&gx[n0 + i, c, 0, 0], 0, H * W * sizeof(floating))
                            col2im_plane(&ws[c * KK * ld + i * L], ld, H, W, KH, KW, sh, sw,
                                         pt, pl, dh, dw, Wo, h0, hr, &gx[n0 + i, c, 0, 0])
                h0 += hr
            n0 += nbc


def conv2d_forward_depthwise(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                             const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                             Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                             Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """groups == C: output channel f reads input channel f // (F // C) only (direct kernel)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], m = F // C
    cdef Py_ssize_t it, n, f
    with nogil:
        for it in prange(N * F, schedule="static", num_threads=n_threads):
            n = it // F
            f = it - n * F
            depthwise_forward_plane(&x[n, f // m, 0, 0], H, W, &w[f, 0, 0, 0], KH, KW,
                                    sh, sw, pt, pl, dh, dw,
                                    bias[f] if has_bias else <floating>0, &y[n, f, 0, 0], Ho, Wo)
    return y


def conv2d_backward_depthwise(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                              const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                              floating[:, :, :, ::1] gw, floating[::1] scratch, double[::1] accs,
                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                              Py_ssize_t dh, Py_ssize_t dw, bint needs_input_grad, int n_threads):
    """grad_weight into gw (OUT) and, when needs_input_grad, grad_x into gx (OUT).

    scratch: n_threads * KH*KW*Wo elements, accs: n_threads * KH*KW doubles (per-thread scratch).
    Gather by what is written: a thread owns whole gx planes (all m filters of that channel, in
    order) and whole filters of gw (images in order): deterministic.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3], KK = KH * KW
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], m = F // C
    cdef Py_ssize_t it, n, c, f, j, k, t
    cdef floating* tmp
    cdef double* acc
    with nogil:
        if needs_input_grad:
            for it in prange(N * C, schedule="static", num_threads=n_threads):
                n = it // C
                c = it - n * C
                memset(&gx[n, c, 0, 0], 0, H * W * sizeof(floating))
                for j in range(m):
                    f = c * m + j
                    depthwise_backward_input_plane(&gy[n, f, 0, 0], Ho, Wo, &w[f, 0, 0, 0],
                                                   KH, KW, sh, sw, pt, pl, dh, dw,
                                                   &gx[n, c, 0, 0], H, W)
        for f in prange(F, schedule="static", num_threads=n_threads):
            t = threadid()
            tmp = &scratch[t * KK * Wo]
            acc = &accs[t * KK]
            for k in range(KK):
                acc[k] = 0
            for n in range(N):
                depthwise_backward_weight_plane(&gy[n, f, 0, 0], Ho, Wo, &x[n, f // m, 0, 0],
                                                H, W, KH, KW, sh, sw, pt, pl, dh, dw, tmp, acc)
            for k in range(KK):
                gw[f, 0, k // KW, k - (k // KW) * KW] = <floating>acc[k]


def bias_grad(const floating[:, :, :, ::1] gy, floating[::1] gb, int n_threads):
    """gb[f] = sum over n, ho, wo of gy[n, f] (double accumulation, images in order)."""
    cdef Py_ssize_t N = gy.shape[0], F = gy.shape[1], HW = gy.shape[2] * gy.shape[3]
    cdef Py_ssize_t f, n
    cdef double s
    with nogil:
        for f in prange(F, schedule="static", num_threads=n_threads):
            s = 0
            for n in range(N):
                s = s + plane_sum(&gy[n, f, 0, 0], HW)
            gb[f] = <floating>s
