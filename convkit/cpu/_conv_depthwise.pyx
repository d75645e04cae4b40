# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Depthwise conv kernels (groups == C): the plane kernels (declared in _conv_depthwise.pxd,
re-exported by _conv.pxd), stride-1 drivers on a zero-padded copy with register blocks
(csrc/dwconv.h), and the 3x3 stride-1 kernels with vector levels picked at run time
(csrc/dw3x3.h; depthwise3x3_level / depthwise3x3_cap read and lower the level).

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from ._conv_csrc cimport (
    ck_block16_f, ck_block16_d, ck_dot16_f, ck_dot16_d, ck_block8_f, ck_block8_d, ck_dot8_f,
    ck_dot8_d, ck_dw3_level, ck_dw3_set_cap, ck_dw3_fwd_f, ck_dw3_fwd_d, ck_dw3_wgrad_f,
    ck_dw3_wgrad_d, ck_dw3_fwd1_f, ck_dw3_fwd1_d, ck_dw3_wgrad1_f, ck_dw3_wgrad1_d)
from ._conv_common cimport _min, _wo_range
from ._conv_im2col cimport plane_sum


cdef void depthwise_forward_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                                  const floating* w, Py_ssize_t KH, Py_ssize_t KW,
                                  Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                  Py_ssize_t dh, Py_ssize_t dw, floating bias,
                                  floating* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    cdef Py_ssize_t ho, wo, kh, kw, hi, off, lo = 0, up = 0
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
    cdef Py_ssize_t ho, wo, kh, kw, hi, off, lo = 0, up = 0
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
    cdef Py_ssize_t ho, wo, kh, kw, hi, off, k, lo = 0, up = 0
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


# ---------------------------------------------------------------------------- depthwise, stride 1
# The plane kernels above update a whole output row once per tap (a load and a store of y per
# multiply-add).  For stride 1 the drivers below first copy the plane into a zero-padded scratch
# plane, then keep 16 outputs in registers across all taps (one store per 16 * KH * KW
# multiply-adds) -- the common depthwise case, measured 2-3x faster.


cdef void _pad_plane(const floating* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                     Py_ssize_t left, floating* xp, Py_ssize_t Hp, Py_ssize_t Wp) noexcept nogil:
    """xp (Hp, Wp)[r, s] = x[r - top, s - left], 0 outside x (top/left may be negative)."""
    cdef Py_ssize_t r, src, lo, up
    lo = left if left > 0 else 0
    up = _min(Wp, left + W)
    for r in range(Hp):
        src = r - top
        if src < 0 or src >= H or lo >= up:
            memset(xp + r * Wp, 0, Wp * sizeof(floating))
            continue
        if lo > 0:
            memset(xp + r * Wp, 0, lo * sizeof(floating))
        memcpy(xp + r * Wp + lo, x + src * W + lo - left, (up - lo) * sizeof(floating))
        if up < Wp:
            memset(xp + r * Wp + up, 0, (Wp - up) * sizeof(floating))


cdef void _correlate_padded(const floating* xp, Py_ssize_t Wp, const floating* w,
                            Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw,
                            floating* y, Py_ssize_t Ho, Py_ssize_t Wo, floating init,
                            bint accumulate) noexcept nogil:
    """y[ho, wo] = (y[ho, wo] if accumulate else init)
                   + sum_{kh,kw} w[kh, kw] * xp[ho + kh*dh, wo + kw*dw]   (stride 1)."""
    cdef floating acc[16]
    cdef Py_ssize_t ho, wo, kh, kw, j, nb
    cdef floating wv
    cdef floating* yrow
    cdef const floating* xk
    for ho in range(Ho):
        yrow = y + ho * Wo
        wo = 0
        while wo < Wo:
            nb = _min(16, Wo - wo)
            if nb == 16:
                if floating is float:
                    ck_block16_f(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                 accumulate)
                else:
                    ck_block16_d(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                 accumulate)
            elif nb >= 8:
                nb = 8
                if floating is float:
                    ck_block8_f(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                accumulate)
                else:
                    ck_block8_d(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                accumulate)
            else:
                for j in range(nb):
                    acc[j] = yrow[wo + j] if accumulate else init
                for kh in range(KH):
                    for kw in range(KW):
                        wv = w[kh * KW + kw]
                        xk = xp + (ho + kh * dh) * Wp + wo + kw * dw
                        for j in range(nb):
                            acc[j] += wv * xk[j]
                for j in range(nb):
                    yrow[wo + j] = acc[j]
            wo = wo + nb


cdef void _weight_grad_padded(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                              const floating* xp, Py_ssize_t Wp, Py_ssize_t KH, Py_ssize_t KW,
                              Py_ssize_t dh, Py_ssize_t dw, double* out) noexcept nogil:
    """out[kh*KW + kw] += sum_{ho,wo} gy[ho, wo] * xp[ho + kh*dh, wo + kw*dw]   (stride 1).

    16 partial sums per tap (lane j takes the columns wo = j mod 16), added in a fixed order."""
    cdef floating acc[16]
    cdef Py_ssize_t ho, wo, kh, kw, j
    cdef const floating* g
    cdef const floating* xk
    cdef double s
    for kh in range(KH):
        for kw in range(KW):
            for j in range(16):
                acc[j] = 0
            for ho in range(Ho):
                g = gy + ho * Wo
                xk = xp + (ho + kh * dh) * Wp + kw * dw
                wo = (Wo // 16) * 16
                if floating is float:
                    ck_dot16_f(g, xk, wo, acc)
                else:
                    ck_dot16_d(g, xk, wo, acc)
                if Wo - wo >= 8:
                    if floating is float:
                        ck_dot8_f(g + wo, xk + wo, 8, acc)
                    else:
                        ck_dot8_d(g + wo, xk + wo, 8, acc)
                    wo = wo + 8
                for j in range(Wo - wo):
                    acc[j] += g[wo + j] * xk[wo + j]
            s = 0
            for j in range(16):
                s += acc[j]
            out[kh * KW + kw] += s


# ---------------------------------------------------------------------------- depthwise 3x3, stride 1
# The shape of nearly every depthwise layer (MobileNet-style 3x3, stride 1, dilation 1, one filter
# per channel) gets its own kernels: nine weights held in vector registers, up to four blocks of
# a row in flight while walking down the rows (each input row loaded once for the three rows it
# meets), the widest vectors the CPU has (AVX2 / AVX-512 picked at run time; the build itself
# targets the x86-64 baseline), and no padded copy for padding 1.  The backward runs as one
# task per plane: grad_x, the nine weight-gradient sums and the bias-gradient sum from one read
# of grad_y and x.  The C is in csrc/dw3x3.h; measured in bench/RESULTS.md, "Conv plan tuning"
# (2-3x the general depthwise kernel below).


def depthwise3x3_level(Py_ssize_t itemsize, Py_ssize_t n):
    """The vector level of the 3x3 stride-1 depthwise kernels for rows of n elements of
    itemsize bytes: 3 AVX-512, 2 AVX2, 1 16-byte vectors, 0 none (the rows are too short, or
    the compiler has no vector extensions): the general depthwise kernels run."""
    return ck_dw3_level(<int>itemsize, n)


def depthwise3x3_cap(int cap):
    """Allow levels up to cap only (tests run the narrower paths with it); returns the old cap."""
    return ck_dw3_set_cap(cap)


cdef inline void _dw3_fwd(int lvl, const floating* xp, Py_ssize_t Wp, const floating* w,
                          int flip, floating bias, floating* y, Py_ssize_t Ho,
                          Py_ssize_t Wo) noexcept nogil:
    if floating is float:
        ck_dw3_fwd_f(lvl, xp, Wp, w, flip, bias, y, Ho, Wo)
    else:
        ck_dw3_fwd_d(lvl, xp, Wp, w, flip, bias, y, Ho, Wo)


cdef inline void _dw3_wgrad(int lvl, const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                            const floating* xp, Py_ssize_t Wp, double* out) noexcept nogil:
    if floating is float:
        ck_dw3_wgrad_f(lvl, gy, Ho, Wo, xp, Wp, out)
    else:
        ck_dw3_wgrad_d(lvl, gy, Ho, Wo, xp, Wp, out)


cdef inline void _dw3_fwd1(int lvl, const floating* x, const floating* w, int flip,
                           floating bias, floating* y, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    if floating is float:
        ck_dw3_fwd1_f(lvl, x, w, flip, bias, y, H, W)
    else:
        ck_dw3_fwd1_d(lvl, x, w, flip, bias, y, H, W)


cdef inline void _dw3_wgrad1(int lvl, const floating* gy, const floating* x, Py_ssize_t H,
                             Py_ssize_t W, double* out) noexcept nogil:
    if floating is float:
        ck_dw3_wgrad1_f(lvl, gy, x, H, W, out)
    else:
        ck_dw3_wgrad1_d(lvl, gy, x, H, W, out)


def conv2d_forward_depthwise(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                             const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                             floating[::1] scratch, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                             Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """groups == C: output channel f reads input channel c = f // m only (m = F // C); a direct
    kernel, one task per (image, input channel) writing its m output planes.

    scratch: n_threads * Hp*Wp elements (Hp = Ho + (KH-1)*dh, Wp = Wo + (KW-1)*dw) for the
    padded plane of the stride-1 kernel (unused at other strides).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], m = F // C
    cdef Py_ssize_t Hp = Ho + (KH - 1) * dh, Wp = Wo + (KW - 1) * dw
    cdef bint fast = sh == 1 and sw == 1
    cdef Py_ssize_t it, n, c, f, j
    cdef floating* xp
    with nogil:
        for it in prange(N * C, schedule="static", num_threads=n_threads):
            n = it // C
            c = it - n * C
            xp = &scratch[0] + threadid() * Hp * Wp
            if fast:
                _pad_plane(&x[n, c, 0, 0], H, W, pt, pl, xp, Hp, Wp)
            for j in range(m):
                f = c * m + j
                if fast:
                    _correlate_padded(xp, Wp, &w[f, 0, 0, 0], KH, KW, dh, dw, &y[n, f, 0, 0],
                                      Ho, Wo, bias[f] if has_bias else <floating>0, False)
                else:
                    depthwise_forward_plane(&x[n, c, 0, 0], H, W, &w[f, 0, 0, 0], KH, KW,
                                            sh, sw, pt, pl, dh, dw,
                                            bias[f] if has_bias else <floating>0,
                                            &y[n, f, 0, 0], Ho, Wo)
    return y


def conv2d_backward_depthwise(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                              const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                              floating[:, :, :, ::1] gw, floating[::1] scratch, double[::1] accs,
                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                              Py_ssize_t dh, Py_ssize_t dw, bint needs_input_grad, int n_threads):
    """grad_weight into gw (OUT) and, when needs_input_grad, grad_x into gx (OUT).

    scratch: n_threads * S elements with S >= max(KH*KW*Wo, Hp*Wp, (H + (KH-1)*dh) *
    (W + (KW-1)*dw) + KH*KW); accs: n_threads * KH*KW doubles.
    Gather by what is written: a thread owns whole gx planes (all m filters of that channel, in
    order) and whole filters of gw (images in order): deterministic.
    At stride 1, grad_x is the correlation of gy, padded by (KH-1)*dh - pt on top (and so on),
    with the flipped filter -- the forward's fast kernel.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3], KK = KH * KW
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], m = F // C
    cdef Py_ssize_t S = scratch.shape[0] // n_threads
    cdef Py_ssize_t Hp = Ho + (KH - 1) * dh, Wp = Wo + (KW - 1) * dw
    cdef Py_ssize_t Hq = H + (KH - 1) * dh, Wq = W + (KW - 1) * dw
    cdef bint fast = sh == 1 and sw == 1
    cdef Py_ssize_t it, n, c, f, j, k
    cdef floating* tmp
    cdef floating* wf
    cdef double* acc
    with nogil:
        if needs_input_grad:
            for it in prange(N * C, schedule="static", num_threads=n_threads):
                n = it // C
                c = it - n * C
                tmp = &scratch[0] + threadid() * S
                if not fast:
                    memset(&gx[n, c, 0, 0], 0, H * W * sizeof(floating))
                for j in range(m):
                    f = c * m + j
                    if fast:
                        wf = tmp + Hq * Wq
                        for k in range(KK):
                            wf[k] = w[f, 0, (KK - 1 - k) // KW, (KK - 1 - k) % KW]
                        _pad_plane(&gy[n, f, 0, 0], Ho, Wo, (KH - 1) * dh - pt,
                                   (KW - 1) * dw - pl, tmp, Hq, Wq)
                        _correlate_padded(tmp, Wq, wf, KH, KW, dh, dw, &gx[n, c, 0, 0], H, W,
                                          <floating>0, j > 0)
                    else:
                        depthwise_backward_input_plane(&gy[n, f, 0, 0], Ho, Wo, &w[f, 0, 0, 0],
                                                       KH, KW, sh, sw, pt, pl, dh, dw,
                                                       &gx[n, c, 0, 0], H, W)
        for f in prange(F, schedule="static", num_threads=n_threads):
            tmp = &scratch[0] + threadid() * S
            acc = &accs[0] + threadid() * KK
            for k in range(KK):
                acc[k] = 0
            for n in range(N):
                if fast:
                    _pad_plane(&x[n, f // m, 0, 0], H, W, pt, pl, tmp, Hp, Wp)
                    _weight_grad_padded(&gy[n, f, 0, 0], Ho, Wo, tmp, Wp, KH, KW, dh, dw, acc)
                else:
                    depthwise_backward_weight_plane(&gy[n, f, 0, 0], Ho, Wo, &x[n, f // m, 0, 0],
                                                    H, W, KH, KW, sh, sw, pt, pl, dh, dw,
                                                    tmp, acc)
            for k in range(KK):
                gw[f, 0, k // KW, k % KW] = <floating>acc[k]


def conv2d_forward_depthwise3x3(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                                const floating[::1] bias, bint has_bias,
                                floating[:, :, :, ::1] y, floating[::1] scratch, Py_ssize_t pt,
                                Py_ssize_t pl, int level, bint same, int n_threads):
    """groups == C == F, 3x3, stride 1, dilation 1; one task per (image, channel) plane.
    same (padding 1 all round): the kernel reads the plane as it is, level from
    depthwise3x3_level(itemsize, W - 2).  Otherwise (any padding) the plane is first copied
    into a zero-padded scratch plane, level from depthwise3x3_level(itemsize, min(W, Wo)).

    scratch: n_threads * (Ho + 2) * (Wo + 2) elements (unused when same).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], Wp = Wo + 2, P = (Ho + 2) * (Wo + 2)
    cdef Py_ssize_t it, n, c
    cdef floating* xp
    with nogil:
        for it in prange(N * C, schedule="static", num_threads=n_threads):
            n = it // C
            c = it - n * C
            if same:
                _dw3_fwd1(level, &x[n, c, 0, 0], &w[c, 0, 0, 0], 0,
                          bias[c] if has_bias else <floating>0, &y[n, c, 0, 0], H, W)
                continue
            xp = &scratch[0] + threadid() * P
            _pad_plane(&x[n, c, 0, 0], H, W, pt, pl, xp, Ho + 2, Wp)
            _dw3_fwd(level, xp, Wp, &w[c, 0, 0, 0], 0, bias[c] if has_bias else <floating>0,
                     &y[n, c, 0, 0], Ho, Wo)
    return y


def conv2d_backward_depthwise3x3(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                                 const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                                 floating[:, :, :, ::1] gw, floating[::1] gb, bint has_bias,
                                 bint needs_input_grad, floating[::1] scratch,
                                 double[::1] parts, Py_ssize_t pt, Py_ssize_t pl, int level,
                                 bint same, int n_threads):
    """The backward of conv2d_forward_depthwise3x3 (same, level: as there): grad_weight into
    gw, grad_bias into gb when has_bias, grad_x into gx when needs_input_grad (all OUT).

    One task per (image, channel) plane reads grad_y and x once: grad_x is the correlation of
    grad_y, zero-padded by 2 - pt on top and 2 - pl on the left (negative: cropped; 1 when
    same), with the flipped filter; the plane's nine weight-gradient sums and its grad_y sum
    go to parts[(n*C + c)*10 : +10] (double), which are then added over the images in image
    order -- the same bits for any thread count.

    scratch: n_threads * ((Ho + 2) * (Wo + 2) + (H + 2) * (W + 2)) elements (unused when
    same); parts: N*C*10.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t Px = (Ho + 2) * (Wo + 2), Pg = (H + 2) * (W + 2)
    cdef Py_ssize_t it, n, c, k
    cdef floating* buf
    cdef double s
    with nogil:
        for it in prange(N * C, schedule="static", num_threads=n_threads):
            n = it // C
            c = it - n * C
            if same:
                if needs_input_grad:
                    _dw3_fwd1(level, &gy[n, c, 0, 0], &w[c, 0, 0, 0], 1, <floating>0,
                              &gx[n, c, 0, 0], H, W)
                _dw3_wgrad1(level, &gy[n, c, 0, 0], &x[n, c, 0, 0], H, W, &parts[it * 10])
                continue
            buf = &scratch[0] + threadid() * (Px + Pg)
            if needs_input_grad:
                _pad_plane(&gy[n, c, 0, 0], Ho, Wo, 2 - pt, 2 - pl, buf + Px, H + 2, W + 2)
                _dw3_fwd(level, buf + Px, W + 2, &w[c, 0, 0, 0], 1, <floating>0,
                         &gx[n, c, 0, 0], H, W)
            _pad_plane(&x[n, c, 0, 0], H, W, pt, pl, buf, Ho + 2, Wo + 2)
            _dw3_wgrad(level, &gy[n, c, 0, 0], Ho, Wo, buf, Wo + 2, &parts[it * 10])
        for c in range(C):
            for k in range(10):
                s = 0
                for n in range(N):
                    s = s + parts[(n * C + c) * 10 + k]
                if k < 9:
                    gw[c, 0, k // 3, k % 3] = <floating>s
                elif has_bias:
                    gb[c] = <floating>s
