# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Batch-wide GEMMs for small output maps (conv_plan "batch"): several images' columns side by
side in one GEMM per block of images, forward and backward, gathered from padded planes or by
masked shifted loads (csrc/shift.h).  Also the stride-1 wide-row forward (conv_plan "wide"),
which shares the padded-image builder _batch_pad.

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from libc.stdlib cimport malloc, free

from ._blas cimport gemm, gemm_fixed, gemm_pk, ck_sgemm_apacked_rows, ck_fgemm, ck_sgemm_available
from ._conv_csrc cimport ck_shift_f, ck_shift_d, ck_shift_available
from ._conv_common cimport _row_copy, _min


cdef extern from "csrc/fgemm.h" nogil:
    int ck_fgemm_available()


# ---------------------------------------------------------------------------- batch-wide GEMMs
# For small output maps a per-image GEMM is (F x C*KK) @ (C*KK x Ho*Wo) with Ho*Wo = 4..64
# columns: BLAS spends more on packing the weight and on call overhead than on the multiplies.
# The drivers below put several images side by side in one column matrix (C*KK, nb*HoWo) and
# issue one GEMM per block of nb images (the whole batch on one thread).

cdef inline void _copy_short(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """memcpy of n values; the widths and planes of small maps (2, 4, 8, 16, 64) as fixed-size
    copies the compiler turns into a few vector moves instead of a library call."""
    if n == 4:
        memcpy(dst, src, 4 * sizeof(floating))
    elif n == 8:
        memcpy(dst, src, 8 * sizeof(floating))
    elif n == 16:
        memcpy(dst, src, 16 * sizeof(floating))
    elif n == 64:
        memcpy(dst, src, 64 * sizeof(floating))
    elif n == 2:
        memcpy(dst, src, 2 * sizeof(floating))
    else:
        memcpy(dst, src, n * sizeof(floating))


cdef inline void _add_short(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[:n] += src[:n], with the small-map widths as fixed trip counts (unrolled, vector)."""
    cdef Py_ssize_t i
    if n == 4:
        for i in range(4):
            dst[i] += src[i]
    elif n == 8:
        for i in range(8):
            dst[i] += src[i]
    elif n == 2:
        for i in range(2):
            dst[i] += src[i]
    else:
        for i in range(n):
            dst[i] += src[i]


cdef inline void _gather_row(floating* dst, const floating* src, Py_ssize_t n,
                             Py_ssize_t cs) noexcept nogil:
    """dst[i] = src[i * cs], i < n: one output row's columns at column stride cs; the
    stride-2 rows of small maps (2, 4, 8 wide) with fixed trip counts (unrolled)."""
    cdef Py_ssize_t i
    if cs == 2 and n == 4:
        for i in range(4):
            dst[i] = src[2 * i]
    elif cs == 2 and n == 2:
        for i in range(2):
            dst[i] = src[2 * i]
    elif cs == 2 and n == 8:
        for i in range(8):
            dst[i] = src[2 * i]
    else:
        for i in range(n):
            dst[i] = src[i * cs]


cdef inline void _scatter_add_row(floating* dst, const floating* src, Py_ssize_t n,
                                  Py_ssize_t cs) noexcept nogil:
    """dst[i * cs] += src[i], i < n (the adjoint of _gather_row)."""
    cdef Py_ssize_t i
    if cs == 2 and n == 4:
        for i in range(4):
            dst[2 * i] += src[i]
    elif cs == 2 and n == 2:
        for i in range(2):
            dst[2 * i] += src[i]
    elif cs == 2 and n == 8:
        for i in range(8):
            dst[2 * i] += src[i]
    else:
        for i in range(n):
            dst[i * cs] += src[i]


cdef inline void _gather_s2(floating* dst, const floating* src, Py_ssize_t nb, Py_ssize_t HpWp,
                            Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t rs) noexcept nogil:
    """dst[(j*Ho + h)*Wo + i] = src[j*HpWp + h*rs + 2*i]: one tap's columns of nb images at
    column stride 2 (what _gather_row does per output row through the index table), as loops
    with the small widths' trip counts fixed -- the table's loads and the per-row width tests
    took ~6-12 instructions a value on the small ResNet's stride-2 convs."""
    cdef Py_ssize_t j, h, i
    cdef const floating* r
    if Wo == 4:
        for j in range(nb):
            for h in range(Ho):
                r = src + j * HpWp + h * rs
                for i in range(4):
                    dst[i] = r[2 * i]
                dst += 4
    elif Wo == 2:
        for j in range(nb):
            for h in range(Ho):
                r = src + j * HpWp + h * rs
                dst[0] = r[0]
                dst[1] = r[2]
                dst += 2
    else:
        for j in range(nb):
            for h in range(Ho):
                r = src + j * HpWp + h * rs
                for i in range(Wo):
                    dst[i] = r[2 * i]
                dst += Wo


cdef inline void _scatter_add_s2(floating* dst, const floating* src, Py_ssize_t nb,
                                 Py_ssize_t HpWp, Py_ssize_t Ho, Py_ssize_t Wo,
                                 Py_ssize_t rs) noexcept nogil:
    """The adjoint of _gather_s2: dst[j*HpWp + h*rs + 2*i] += src[(j*Ho + h)*Wo + i].  Within
    one tap no two columns meet the same value, so each value's sum keeps the taps' order (the
    same bits as the table's loop)."""
    cdef Py_ssize_t j, h, i
    cdef floating* r
    if Wo == 4:
        for j in range(nb):
            for h in range(Ho):
                r = dst + j * HpWp + h * rs
                for i in range(4):
                    r[2 * i] += src[i]
                src += 4
    elif Wo == 2:
        for j in range(nb):
            for h in range(Ho):
                r = dst + j * HpWp + h * rs
                r[0] += src[0]
                r[2] += src[1]
                src += 2
    else:
        for j in range(nb):
            for h in range(Ho):
                r = dst + j * HpWp + h * rs
                for i in range(Wo):
                    r[2 * i] += src[i]
                src += Wo


cdef void _batch_pad(const floating* x, Py_ssize_t img, Py_ssize_t n0, Py_ssize_t nb,
                     Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pt,
                     Py_ssize_t pl, Py_ssize_t Hp, Py_ssize_t Wp, floating* xp) noexcept nogil:
    """xp ((c1-c0), nb*Hp*Wp): channels [c0, c1) of images n0..n0+nb-1, each plane zero-padded
    to Hp x Wp (padded row r, column s hold x[r - pt, s - pl]): one memset, then the rows."""
    cdef Py_ssize_t HpWp = Hp * Wp, lx = nb * HpWp, j, c, h, r0, r1, lo, up
    cdef floating* dst
    cdef const floating* src
    memset(xp, 0, (c1 - c0) * lx * sizeof(floating))
    r0 = pt if pt > 0 else 0                    # padded rows [r0, r1) come from x
    r1 = _min(Hp, pt + H)
    lo = pl if pl > 0 else 0                    # padded columns [lo, up) come from x
    up = _min(Wp, pl + W)
    if r0 >= r1 or lo >= up:
        return
    for c in range(c0, c1):
        for j in range(nb):
            src = x + (n0 + j) * img + c * H * W
            dst = xp + (c - c0) * lx + j * HpWp
            for h in range(r0, r1):
                _copy_short(dst + h * Wp + lo, src + (h - pt) * W + lo - pl, up - lo)




def shift_available():
    """True when the small-map im2col can use masked AVX2 / AVX-512 loads (_batch_im2col)."""
    return ck_shift_available() != 0


cdef void _batch_im2col(const floating* x, Py_ssize_t img, Py_ssize_t n0, Py_ssize_t nb,
                        Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,
                        Py_ssize_t KW, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh,
                        Py_ssize_t dw, Py_ssize_t Hp, Py_ssize_t Wp, const Py_ssize_t* idx,
                        Py_ssize_t L, Py_ssize_t Wo, bint unit_stride,
                        const unsigned short* masks, floating* cols, floating* xp,
                        Py_ssize_t ldcols) noexcept nogil:
    """cols ((c1-c0)*KH*KW, L; rows ldcols >= L apart): the columns of channels [c0, c1) of images n0..n0+nb-1 (x: image
    0, channel 0; img: elements per image), image j in columns [j*HoWo, (j+1)*HoWo).

    The planes are first copied into xp ((c1-c0), nb*Hp*Wp), each zero-padded to exactly the
    rows and columns the taps read; idx[q] (q < L = nb*HoWo) is the offset in xp's row of the
    top-left tap of column q.  Row (c, kh, kw) of cols is then one flat gather
    xp[c, kh*dh*Wp + kw*dw + idx[q]] -- with unit column stride, Wo contiguous values per
    output row: no bounds checks and no per-row library calls, which for rows of 2-8 outputs
    cost more than the copying itself.

    masks (not NULL: stride 1, Wo == W, HoWo a multiple of 64 bytes, an AVX2 or AVX-512 CPU):
    output position p of an image reads input p + a*W + b through tap (kh, kw)
    (a = kh*dh - pt, b = kw*dw - pl) or padding, so each tap's columns of an image are masked
    vector loads straight from x (masks[tap * nv + v]: which lanes of vector v read x) -- no
    padded planes, no index table."""
    cdef bint shifted = masks != NULL, s2
    cdef Py_ssize_t lx = nb * Hp * Wp, c, kh, kw, q, j, HoWo = L // nb, cs, rs
    cdef floating* dst
    cdef const floating* src
    cdef Py_ssize_t nv, t
    if shifted:
        nv = HoWo // (16 if floating is float else 8)
        for c in range(c0, c1):
            for t in range(KH * KW):
                kh = t // KW
                kw = t - kh * KW
                dst = cols + ((c - c0) * KH * KW + t) * ldcols
                if floating is float:
                    ck_shift_f(x + n0 * img + c * H * W, img, nb,
                               (kh * dh - pt) * W + kw * dw - pl, masks + t * nv, nv, dst)
                else:
                    ck_shift_d(x + n0 * img + c * H * W, img, nb,
                               (kh * dh - pt) * W + kw * dw - pl, masks + t * nv, nv, dst)
        return
    # column stride 2 (_batch_geometry: idx[q] = j*Hp*Wp + h*rs + 2*i): the loops of _gather_s2
    s2 = not unit_stride and Wo > 1 and idx[1] - idx[0] == 2
    rs = idx[Wo] - idx[0] if s2 and HoWo > Wo else 0
    if s2 and pt == 0 and pl == 0 and Hp <= H and Wp <= W:
        # no padding and every tap inside x (the 1x1 stride-2 shortcuts): the padded planes
        # would be x's top-left Hp x Wp corner, so gather from x itself (rows rs // Wp * W
        # apart, images img apart), without the planes' zero fill and copy
        for c in range(c0, c1):
            for kh in range(KH):
                for kw in range(KW):
                    _gather_s2(cols + ((c - c0) * KH * KW + kh * KW + kw) * ldcols,
                               x + n0 * img + c * H * W + kh * dh * W + kw * dw, nb, img,
                               HoWo // Wo, Wo, rs // Wp * W)
        return
    _batch_pad(x, img, n0, nb, c0, c1, H, W, pt, pl, Hp, Wp, xp)
    for c in range(c0, c1):
        for kh in range(KH):
            for kw in range(KW):
                dst = cols + ((c - c0) * KH * KW + kh * KW + kw) * ldcols
                src = xp + (c - c0) * lx + kh * dh * Wp + kw * dw
                if unit_stride:
                    q = 0
                    while q < L:
                        _copy_short(dst + q, src + idx[q], Wo)
                        q = q + Wo
                elif s2:
                    _gather_s2(dst, src, nb, Hp * Wp, HoWo // Wo, Wo, rs)
                else:       # output rows of Wo columns, cs apart in the padded plane
                    cs = idx[1] - idx[0] if Wo > 1 else 1
                    q = 0
                    while q < L:
                        _gather_row(dst + q, src + idx[q], Wo, cs)
                        q = q + Wo


cdef void _batch_col2im(const floating* cols, Py_ssize_t L, Py_ssize_t nb, Py_ssize_t C,
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t Hp, Py_ssize_t Wp, const Py_ssize_t* idx, Py_ssize_t Wo,
                        bint unit_stride, floating* xp, floating* gx, Py_ssize_t img,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    """The adjoint of _batch_im2col for C channels of nb images: every row (c, kh, kw) of cols
    is added into padded planes xp (C, nb*Hp*Wp) through the same index table, taps in order,
    then each image's planes are cropped into gx (image j at gx + j*img, channel c at c*H*W;
    input pixels no tap reads get 0).  Fixed order: the same bits every run."""
    cdef Py_ssize_t HpWp = Hp * Wp, lx = nb * HpWp, c, kh, kw, q, j, h, r, lo, up, cs, rs
    cdef Py_ssize_t HoWo = L // nb
    cdef bint s2 = not unit_stride and Wo > 1 and idx[1] - idx[0] == 2
    cdef floating* dst
    cdef const floating* src
    cdef floating* g
    rs = idx[Wo] - idx[0] if s2 and HoWo > Wo else 0
    memset(xp, 0, C * lx * sizeof(floating))
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                src = cols + (c * KH * KW + kh * KW + kw) * L
                dst = xp + c * lx + kh * dh * Wp + kw * dw
                if unit_stride:
                    q = 0
                    while q < L:
                        _add_short(dst + idx[q], src + q, Wo)
                        q = q + Wo
                elif s2:
                    _scatter_add_s2(dst, src, nb, HpWp, HoWo // Wo, Wo, rs)
                else:
                    cs = idx[1] - idx[0] if Wo > 1 else 1
                    q = 0
                    while q < L:
                        _scatter_add_row(dst + idx[q], src + q, Wo, cs)
                        q = q + Wo
    # input column w sits at padded column w + pl; only [lo, up) of them exist in xp
    lo = _min(W, -pl) if pl < 0 else 0
    up = _min(W, Wp - pl)
    if up < lo:
        up = lo
    for j in range(nb):
        for c in range(C):
            for h in range(H):
                g = gx + j * img + c * H * W + h * W
                r = h + pt
                if r < 0 or r >= Hp:
                    memset(g, 0, W * sizeof(floating))
                    continue
                if lo > 0:
                    memset(g, 0, lo * sizeof(floating))
                memcpy(g + lo, xp + c * lx + j * HpWp + r * Wp + lo + pl,
                       (up - lo) * sizeof(floating))
                if up < W:
                    memset(g + up, 0, (W - up) * sizeof(floating))


def conv2d_forward_batch(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                         const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                         floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t imgs,
                         const Py_ssize_t[::1] idx, Py_ssize_t Hp, Py_ssize_t Wp,
                         Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                         Py_ssize_t groups, const unsigned short[::1] masks, int n_threads):
    """y = conv(x, w) + bias, one GEMM per group for each block of ``imgs`` images.
    masks: empty, or the shifted gather's lane masks (see _batch_im2col).

    A task (block of images) writes cols (C*KK, L), L = nb*HoWo, and the GEMM result (F, L) into
    its thread's slice of ws (ws_per_thread >= ((C*KK + F)*HoWo + C*Hp*Wp)*imgs: columns, GEMM
    result, padded planes), then copies each
    image's (F, HoWo) into y.  Every output is one GEMM's dot product over C*KK; the own GEMM
    sums it in the same order whatever the block, BLAS may not (OpenBLAS rounds an output
    differently for another GEMM width and another place in it), so on BLAS the plan passes
    imgs = 1 (conv_plan.batch_images): an image's bits then do not depend on its batch.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t nblk = (N + imgs - 1) // imgs
    cdef Py_ssize_t t, n0, nb, L, g, f, j, p
    cdef bint unit_stride = Wo == 1 or idx[1] - idx[0] == 1     # column stride 1
    cdef const unsigned short* mp = &masks[0] if masks.shape[0] > 0 else NULL
    cdef Py_ssize_t ldcols
    cdef floating* cols
    cdef floating* ybuf
    cdef floating* src
    cdef floating* dst
    cdef floating bv
    with nogil:
        for t in prange(nblk, schedule="static", num_threads=n_threads):
            n0 = t * imgs
            nb = _min(imgs, N - n0)
            L = nb * HoWo
            # cols' rows a multiple of 1 KiB apart (16 images of 8x8): a GEMM of few rows
            # reads them in place (csrc/fgemm.h), and such a strip's rows share a few L1 sets
            # (16 x 144 x 1024: 40 GFLOP/s, 80 at 16 floats more, bench/fgemm_stride_ab.py).
            # The shifted gather leaves the padded planes' room unused: rows 16 floats longer.
            ldcols = L
            if mp != NULL and L % 256 == 0 and KK * 16 <= Hp * Wp * nb:
                ldcols = L + 16
            cols = &ws[0] + threadid() * ws_per_thread
            ybuf = cols + C * KK * ldcols
            _batch_im2col(&x[0, 0, 0, 0], C * H * W, n0, nb, 0, C, H, W, KH, KW, pt, pl, dh, dw,
                          Hp, Wp, &idx[0], L, Wo, unit_stride, mp, cols, ybuf + F * L, ldcols)
            for g in range(G):
                gemm_fixed(False, False, Fg, L, CgKK, <floating>1, &w[g * Fg, 0, 0, 0], CgKK,
                           cols + g * CgKK * ldcols, ldcols, <floating>0, ybuf + g * Fg * L, L)
            for j in range(nb):
                for f in range(F):
                    src = ybuf + f * L + j * HoWo
                    dst = &y[n0 + j, f, 0, 0]
                    if has_bias:
                        bv = bias[f]
                        for p in range(HoWo):
                            dst[p] = src[p] + bv
                    else:
                        _copy_short(dst, src, HoWo)
    return y


def conv2d_backward_batch(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                          const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                          floating[:, :, :, ::1] gw, floating[::1] gyt, floating[::1] ws,
                          Py_ssize_t ws_per_thread, Py_ssize_t chans_w, Py_ssize_t kimgs,
                          Py_ssize_t imgs, const Py_ssize_t[::1] idx, Py_ssize_t Hp, Py_ssize_t Wp,
                          Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                          Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups,
                          bint needs_input_grad, const unsigned short[::1] masks,
                          Py_ssize_t nsplit, floating[::1] gwp, int n_threads,
                          bint needs_weight_grad=True, Py_ssize_t wt_ratio=-1,
                          Py_ssize_t filters_w=-1):
    """grad_weight into gw (OUT, any contents; when needs_weight_grad, else x is not read) and,
    when needs_input_grad, grad_x into gx (OUT, any contents) with batch-wide GEMMs.

    nsplit: grad_weight tasks also split the batch into nsplit fixed parts (images
    [s*N/nsplit, (s+1)*N/nsplit)); part 0 sums into gw, part s > 0 into gwp[(s-1)*F*Cg*KK:]
    (laid out as gw), and the parts are added into gw in order after (past 2 parts in a
    region of F filters' rows): the same bits for any thread count.
    filters_w (-1: a group's Fg): grad_weight tasks own blocks of this many filters (rows of
    gw[g]) too -- an entry's sum is the same GEMM row's chain whatever the block (the many-thread
    plans, conv_plan.batch_weight_blocks).

    gyt (F, N*HoWo): gy with the images side by side (filled here).
    grad_weight: a task owns ``chans_w`` input channels of one group -- a column block of gw[g]
    -- as GEMMs gyt[g] @ cols^T over blocks of ``kimgs`` images (columns that stay in cache),
    added in image order: every entry is the same sum whatever the thread count.
    grad_x: a task owns a block of ``imgs`` images: cols_grad = w^T @ gyt[:, block], then
    col2im into their gx planes.
    ws_per_thread >= max(chans_w*(KK*HoWo + Hp*Wp)*kimgs, Cg*(KK*HoWo + Hp*Wp)*imgs).
    wt_ratio >= 0 (tuning.BATCH_W_FGEMM_RATIO): float32 grad_weight GEMMs on csrc/fgemm.h where
    no AVX-512 GEMM runs, blocks with more columns (channels x taps) than wt_ratio x their
    filters transposed (a small (nck x Fg) buffer per task, outside the workspace); -1: BLAS.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo, LN = N * HoWo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t ntw = (Cg + chans_w - 1) // chans_w, nblk = (N + imgs - 1) // imgs
    cdef Py_ssize_t nfw = Fg if filters_w <= 0 or filters_w > Fg else filters_w
    cdef Py_ssize_t nfb = (Fg + nfw - 1) // nfw, f0, nf
    cdef Py_ssize_t t, n, f, g, c0, c1, n0, nb, L, j, c, sp, tw, na, nz, i
    cdef Py_ssize_t gwn = F * CgKK
    cdef const unsigned short* mp = &masks[0] if masks.shape[0] > 0 else NULL
    cdef floating* buf
    cdef floating* dst
    cdef floating* gwt
    cdef Py_ssize_t nck
    cdef bint use_fg
    cdef int ok
    cdef floating* gwf = &gw[0, 0, 0, 0]
    with nogil:
        # (a plain copy, serial: one parallel region less, whose end barrier costs a time
        # slice whenever the other core is busy with another process)
        for n in range(N):
            for f in range(F):
                _copy_short(&gyt[0] + f * LN + n * HoWo, &gy[n, f, 0, 0], HoWo)
        for t in prange(G * ntw * nsplit * nfb if needs_weight_grad else 0, schedule="static",
                        num_threads=n_threads):
            f0 = (t % nfb) * nfw            # (filter block, part, channel block) within a group
            nf = _min(nfw, Fg - f0)
            sp = (t // nfb) % nsplit
            tw = t // (nfb * nsplit)
            g = tw // ntw
            c0 = (tw - g * ntw) * chans_w
            c1 = _min(Cg, c0 + chans_w)
            na = sp * N // nsplit
            nz = (sp + 1) * N // nsplit
            dst = ((gwf if sp == 0 else &gwp[0] + (sp - 1) * gwn) + (g * Fg + f0) * CgKK
                   + c0 * KK)
            buf = &ws[0] + threadid() * ws_per_thread
            nck = (c1 - c0) * KK
            # float32 on csrc/fgemm.h (no AVX-512 GEMM): BLAS spent most of these small-m
            # GEMMs packing.  Where the columns outnumber the filters, the block transposed,
            # cols @ gyt^T (nck x Fg: fgemm packs only gyt's few rows and reads the columns
            # in place), then written into dst transposed; else gyt @ cols^T straight into dst
            gwt = NULL
            use_fg = False
            if floating is float:
                use_fg = wt_ratio >= 0 and not ck_sgemm_available() and ck_fgemm_available()
                if use_fg and nck > wt_ratio * nf:
                    gwt = <floating*>malloc(nck * nf * sizeof(floating))
            n0 = na
            while n0 < nz:      # images in blocks of kimgs, summed in order
                nb = _min(kimgs, nz - n0)
                L = nb * HoWo
                _batch_im2col(&x[0, 0, 0, 0], C * H * W, n0, nb, g * Cg + c0, g * Cg + c1, H, W,
                              KH, KW, pt, pl, dh, dw, Hp, Wp, &idx[0], L, Wo, sw == 1, mp,
                              buf, buf + nck * L, L)
                ok = 0
                if gwt != NULL:
                    ok = ck_fgemm(False, True, nck, nf, L, 1, <float*>buf, L,
                                  <float*>&gyt[0] + (g * Fg + f0) * LN + n0 * HoWo, LN,
                                  1 if n0 > na else 0, <float*>gwt, nf)
                elif use_fg:
                    ok = ck_fgemm(False, True, nf, nck, L, 1,
                                  <float*>&gyt[0] + (g * Fg + f0) * LN + n0 * HoWo, LN,
                                  <float*>buf, L,
                                  1 if n0 > na else 0, <float*>dst, CgKK)
                if not ok:  # (fgemm declines at a thread's first call or never: no memory)
                    if gwt != NULL:
                        free(gwt)
                        gwt = NULL
                    use_fg = False
                    gemm(False, True, nf, nck, L, <floating>1,
                         &gyt[0] + (g * Fg + f0) * LN + n0 * HoWo, LN, buf, L,
                         <floating>(1 if n0 > na else 0), dst, CgKK)
                n0 = n0 + nb
            if gwt != NULL:
                for f in range(nf):
                    for j in range(nck):
                        dst[f * CgKK + j] = gwt[j * nf + f]
                free(gwt)
        if nsplit > 2 and needs_weight_grad:
            # (BLAS's many parts, conv_plan.plan_batch_backward: the parts' sums over the team,
            # a filter's row a task -- each entry still adds its parts in order: the same bits;
            # the task that finishes a block's last part adding them, as im2col's, left 13 % of
            # 16 threads idle by bench/many_core_split.py, 9 % this way)
            for f in prange(F, schedule="static", num_threads=n_threads):
                for sp in range(1, nsplit):
                    dst = &gwp[0] + (sp - 1) * gwn + f * CgKK
                    for j in range(CgKK):
                        gwf[f * CgKK + j] = gwf[f * CgKK + j] + dst[j]
        else:
            for sp in range(1, nsplit if needs_weight_grad else 1):     # the parts, in order
                for i in range(gwn):
                    gwf[i] = gwf[i] + gwp[(sp - 1) * gwn + i]
        if needs_input_grad:
            for t in prange(nblk * G, schedule="static", num_threads=n_threads):
                g = t // nblk
                n0 = (t - g * nblk) * imgs
                nb = _min(imgs, N - n0)
                L = nb * HoWo
                buf = &ws[0] + threadid() * ws_per_thread
                gemm_fixed(True, False, CgKK, L, Fg, <floating>1, &w[g * Fg, 0, 0, 0], CgKK,
                           &gyt[0] + g * Fg * LN + n0 * HoWo, LN, <floating>0, buf, L)
                _batch_col2im(buf, L, nb, Cg, KH, KW, dh, dw, Hp, Wp, &idx[0], Wo, sw == 1,
                              buf + CgKK * L,
                              &gx[n0, g * Cg, 0, 0], C * H * W, H, W, pt, pl)


# ---------------------------------------------------------------------------- stride 1, wide rows
def conv2d_forward_wide(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                        const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                        floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t dh, Py_ssize_t dw, int n_threads, const float[:, ::1] apk,
                        const Py_ssize_t[::1] boff):
    """Stride 1, groups 1: y = conv(x, w) + bias with output rows computed Wp = Wo + (KW-1)*dw
    wide, one image per task.

    An image is zero-padded once into xp (C, Hp, Wp); then the column of tap (c, kh, kw) for
    all output positions is ONE contiguous run of xp, Ho*Wp long, from c*Hp*Wp + kh*dh*Wp +
    kw*dw: a memcpy per tap instead of a copy per tap and output row (small maps, lenet_c1's
    28-wide rows: the per-row copies were half of the forward).  The GEMM computes the Wp - Wo
    extra columns of each row too (they read past the row's end into the next: discarded), then
    the Wo real ones are copied into y.  ws_per_thread >= C*Hp*Wp + (KW-1)*dw (xp and its
    slack) + C*KH*KW*Ho*Wp (columns) + F*Ho*Wp (the wide result).
    With the own float32 GEMM (apk given) the columns are not even copied: the GEMM reads row
    (c, kh, kw) of B at xp + boff[(c*KH + kh)*KW + kw] (boff: those CKK offsets).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], KK = KH * KW, CKK = C * KK
    cdef Py_ssize_t Hp = Ho + (KH - 1) * dh, Wp = Wo + (KW - 1) * dw, HpWp = Hp * Wp
    cdef Py_ssize_t Lw = Ho * Wp, slack = (KW - 1) * dw
    cdef Py_ssize_t n, c, kh, kw, f, h
    cdef floating* xp
    cdef floating* cols
    cdef floating* out
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            xp = &ws[0] + threadid() * ws_per_thread
            cols = xp + C * HpWp + slack
            out = cols + CKK * Lw
            _batch_pad(&x[0, 0, 0, 0], C * H * W, n, 1, 0, C, H, W, pt, pl, Hp, Wp, xp)
            memset(xp + C * HpWp, 0, slack * sizeof(floating))
            if floating is float:
                if apk.shape[0] > 0 and ck_sgemm_apacked_rows(
                        F, Lw, CKK, &apk[0, 0], xp, &boff[0], 0, out, Lw,
                        &bias[0] if has_bias else <const float*>NULL):
                    for f in range(F):
                        for h in range(Ho):
                            _row_copy(&y[n, f, h, 0], out + f * Lw + h * Wp, Wo)
                    continue
            for c in range(C):
                for kh in range(KH):
                    for kw in range(KW):
                        memcpy(cols + ((c * KH + kh) * KW + kw) * Lw,
                               xp + c * HpWp + kh * dh * Wp + kw * dw, Lw * sizeof(floating))
            gemm_pk(False, False, F, Lw, CKK, &w[0, 0, 0, 0], CKK,
                    &apk[0, 0] if apk.shape[0] > 0 else <const float*>NULL, cols, Lw,
                    <floating>0, out, Lw, &bias[0] if has_bias else <const floating*>NULL)
            for f in range(F):
                for h in range(Ho):
                    _row_copy(&y[n, f, h, 0], out + f * Lw + h * Wp, Wo)
    return y
