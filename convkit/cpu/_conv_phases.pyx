# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Strided convs by stride phases.  The forward (float32 on the own GEMM): a task splits its input
rows into sh*sw phase planes (csrc/vsum.h ck_phases_f), then one GEMM per output row reads every
tap in place at a fixed offset (conv_plan "phases").  grad_x (conv_transpose2d's forward): its
sh*sw output phases as one stride-1 conv of grad_y, then interleaved (conv_plan "subpixel").

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
cimport openmp
from libc.string cimport memcpy, memset

from ._blas cimport ck_sgemm_apacked_rows, gemm_fixed
from ._conv_csrc cimport (ck_phases_f, ck_rg_interleave2, ck_rg_pad_rows, ck_rg_panel4,
                          ck_rg_to_cl, ck_rowgemm_available,
                          ck_rowgemm_f, ck_rowgemm_kc_f, ck_rowgemm_pass_acc_f,
                          ck_rowgemm_shift_f,
                          ck_stem_forward_f, ck_stem_wdot_f, ck_stem_wino_filters,
                          ck_stem_wino_offsets, ck_stem_wino_floats,
                          ck_stem_wino_forward_f, ck_stem_wgrad_taps,
                          ck_stem_wgrad_part_floats, ck_stem_wgrad_floats,
                          ck_stem_wgrad_offsets,
                          ck_stem_wgrad_slab_f, ck_stem_wgrad_fold)
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
        for t in prange(N * nrb, schedule="static", num_threads=n_threads):
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


cdef void _padded_rows(const floating* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                       Py_ssize_t nr, Py_ssize_t c0, Py_ssize_t Wp, floating* dst) noexcept nogil:
    """dst (nr x Wp) = rows [r0, r0 + nr), columns [c0, c0 + Wp) of the plane x (H x W), 0
    outside it."""
    cdef Py_ssize_t r, lo = -c0 if c0 < 0 else 0, up = _min(Wp, W - c0)
    for r in range(nr):
        if r0 + r < 0 or r0 + r >= H or lo >= up:
            memset(dst + r * Wp, 0, Wp * sizeof(floating))
            continue
        if lo > 0:
            memset(dst + r * Wp, 0, lo * sizeof(floating))
        memcpy(dst + r * Wp + lo, x + (r0 + r) * W + c0 + lo, (up - lo) * sizeof(floating))
        if up < Wp:
            memset(dst + r * Wp + up, 0, (Wp - up) * sizeof(floating))


cdef inline bint _rowgemm(Py_ssize_t P, Py_ssize_t L, Py_ssize_t K, const float* wt,
                          const floating* b, const Py_ssize_t* boff,
                          floating* out) noexcept nogil:
    """out (P x L) by csrc/rowgemm.h where it runs (float32, AVX2); False: not done."""
    if floating is float:
        return ck_rowgemm_f(P, L, K, wt, b, boff, out, L) != 0
    else:
        return False


cdef inline void _phase_copy(floating* dst, const floating* src, Py_ssize_t sw, Py_ssize_t j0,
                             Py_ssize_t j1) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(j0, j1):
        dst[sw * j] = src[j]


cdef void _interleave_row(floating* dst, const floating* out, Py_ssize_t ldp, Py_ssize_t sw,
                          Py_ssize_t W, Py_ssize_t Wu, Py_ssize_t vlo,
                          const Py_ssize_t* emin_w) noexcept nogil:
    """A row of gx (dst, W long) from its sw column phases: dst[qw + sw*j] = row qw of out
    (out + qw*ldp, Wu window columns from vlo) at column j + emin_w[qw] - vlo.  Stride 2 (the
    common case) interleaves the two phases in one vectorisable loop."""
    cdef Py_ssize_t qw, o0, o1, b0, b1, m1, j
    cdef const floating* s0
    cdef const floating* s1
    if sw != 2:
        for qw in range(_min(sw, W)):
            o0 = emin_w[qw] - vlo                   # >= 0: vlo is the least of them
            _phase_copy(dst + qw, out + qw * ldp + o0, sw, 0,
                        _min((W - 1 - qw) // sw + 1, Wu - o0))
        return
    o0 = emin_w[0] - vlo
    o1 = emin_w[1] - vlo
    s0 = out + o0
    s1 = out + ldp + o1
    b0 = _min((W + 1) // 2, Wu - o0)                # phase 0's columns j in [0, b0)
    b1 = _min(W // 2, Wu - o1)                      # phase 1's in [0, b1)
    m1 = _min(b0, b1)
    for j in range(m1):
        dst[2 * j] = s0[j]
        dst[2 * j + 1] = s1[j]
    _phase_copy(dst, s0, 2, m1, b0)
    _phase_copy(dst + 1, s1, 2, m1, b1)


cdef inline bint _interleave2_f(float* dst, const float* out, Py_ssize_t ldp, Py_ssize_t W,
                               Py_ssize_t Wu, Py_ssize_t vlo, const Py_ssize_t* emin_w,
                               bint has_bias, float bv) noexcept nogil:
    """_interleave_row at stride 2, then + bv where has_bias, by csrc/rowgemm.h's AVX2
    interleave (the same values: copies and one float32 add each), where the two phases cover
    the row; False: not done."""
    cdef Py_ssize_t o0 = emin_w[0] - vlo, o1 = emin_w[1] - vlo
    if _min((W + 1) // 2, Wu - o0) != (W + 1) // 2 or _min(W // 2, Wu - o1) != W // 2:
        return False
    ck_rg_interleave2(dst, out + o0, out + ldp + o1, (W + 1) // 2, W // 2, has_bias, bv)
    return True


def rowgemm_available():
    """True where conv2d_grad_x_subpixel's float32 GEMM reads the slab in place (AVX2 + FMA,
    csrc/rowgemm.h); else its columns are copied and the GEMM goes to BLAS."""
    return bool(ck_rowgemm_available())


def conv2d_grad_x_subpixel(const floating[:, :, :, ::1] gy, Py_ssize_t G, Py_ssize_t P,
                           Py_ssize_t K, const floating[:, :, ::1] wsub,
                           const float[:, ::1] wpan, floating[:, :, :, ::1] gx, floating[::1] ws,
                           Py_ssize_t ws_per_thread, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Th,
                           Py_ssize_t Tw, Py_ssize_t ulo, Py_ssize_t uhi, Py_ssize_t vlo,
                           Py_ssize_t vhi, const Py_ssize_t[::1] emin_h,
                           const Py_ssize_t[::1] emin_w, const Py_ssize_t[::1] boff,
                           Py_ssize_t rows, int n_threads, const floating[::1] bias,
                           bint has_bias, const Py_ssize_t[::1] pbase, Py_ssize_t Wd,
                           Py_ssize_t srow0, Py_ssize_t scol0, Py_ssize_t sdeep,
                           Py_ssize_t sslack, Py_ssize_t stile, Py_ssize_t skc):
    """grad_x (OUT: gx, every value written) of a strided conv from grad_y, by output phases.

    Phase (qh, qw) of gx -- gx[:, :, qh::sh, qw::sw] -- is a stride-1 correlation of grad_y:
    its row i, column j sums, over its taps, w * gy[f, i + eh, j + ew] (conv_plan
    subpixel_axis).  With window starts u = i + emin_h[qh], v = j + emin_w[qw] every phase
    reads the same Th x Tw windows of grad_y, so the sh*sw phases are ONE stride-1 conv: one
    GEMM with wsub[g] ((qh, qw, c) x (f, dr, dc): the phase's tap of w, or 0 where the phase
    has none) over the windows' taps gy[f, u + dr, v + dc] (0 outside), then each result row
    goes to its phase's positions of gx -- no col2im, no zero-fill.  G groups, P = sh*sw*Cg
    result rows, K = Fg*Th*Tw taps; wsub (G, P, K) is read on the BLAS path only (it may be
    empty on the other).
    Tasks: (image, block of ``rows`` window rows u from ulo), writing the gx rows those u give
    (disjoint); all groups per task.  A task copies the grad_y rows its windows read, padded,
    into a slab: Fg planes of rows + Th - 1 rows, Wp = vhi - vlo + Tw - 1 wide, so that tap
    (f, dr, dc) of every window is one run of it from boff[(f*Th + dr)*Tw + dc] (the windows
    are computed Wp wide; the extra Tw - 1 are dropped).  float32 with AVX2 (wpan: wsub[g] in
    4-row panels, csrc/rowgemm.h) reads the runs in place; else they are copied into columns
    for BLAS.  ws_per_thread >= Fg*(rows + Th - 1)*Wp + Tw - 1 + (Fg*Th*Tw + sh*sw*Cg)*rows*Wp
    (conv_plan.plan_subpixel).  has_bias: bias[channel] is added to each gx row as it is
    written (conv_transpose2d's bias; the same bits as adding it after).

    Shifted (pbase not empty: float32 on rowgemm, Cg a multiple of 4; conv_plan
    subpixel_shifted): the windows are not common.  The GEMM's columns are the phase
    positions (i, j) themselves -- ulo = vlo = 0, emin_* zeros, [0, uhi) the phase rows,
    [0, vhi) the phase columns -- computed Wd wide, panel p/4 reading the slab from its
    phase's shift pbase[p/4]; the slab (rows + Th - 1 + sdeep rows of each of the Fg planes,
    then sslack zeros) holds grad_y from row srow0 + i0, column scol0 (one row more where the
    task is short: a row's reads past its end find the next row's first columns, zeros).  A
    task's columns are rounded up to a multiple of stile (rowgemm's full tiles; the extra ones
    dropped), its result rows that far apart.  Each value is the same chain of the same
    products as in the common windows: the same bits, on fewer columns.
    """
    cdef Py_ssize_t N = gx.shape[0], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t Fg = gy.shape[1] // G, Cg = gx.shape[1] // G
    cdef bint shifted = pbase.shape[0] > 0
    cdef Py_ssize_t Hu = uhi - ulo, Wu = vhi - vlo
    cdef Py_ssize_t Wp = Wd if shifted else Wu + Tw - 1
    cdef Py_ssize_t deep = Th - 1 + (sdeep if shifted else 0)      # slab rows past a task's
    cdef Py_ssize_t slack = sslack if shifted else Tw - 1          # zeros past the slab
    cdef Py_ssize_t SP = (rows + deep) * Wp         # a slab plane
    cdef Py_ssize_t nrb = (Hu + rows - 1) // rows
    cdef bint direct = floating is float and wpan.shape[0] > 0
    cdef Py_ssize_t t, n, g, h0, hr, L, ldo, nr, f, k, p, qh, c, r, i, ih, j
    cdef floating bv
    cdef floating* grow
    cdef floating* slab
    cdef floating* cols
    cdef floating* out
    cdef Py_ssize_t need = Fg * SP + slack + (
        P * ((rows * Wp + stile - 1) // stile * stile) if shifted else (K + P) * rows * Wp)
    if ws_per_thread < need or ws.shape[0] < n_threads * ws_per_thread:
        raise ValueError(f"conv2d_grad_x_subpixel: ws holds {ws.shape[0]} values, "
                         f"{n_threads} threads need {need} each")
    with nogil:
        for t in prange(N * nrb, schedule="static", num_threads=n_threads):
            n = t // nrb
            h0 = (t - n * nrb) * rows               # window rows u = ulo + h0 + r
            hr = _min(rows, Hu - h0)
            L = hr * Wp
            ldo = L
            nr = hr + deep
            if shifted:
                ldo = (L + stile - 1) // stile * stile
                nr = _min(nr + 1, rows + deep)
            slab = &ws[0] + threadid() * ws_per_thread
            cols = slab + Fg * SP + slack
            out = cols + (0 if shifted else K * L)
            memset(cols - slack, 0, slack * sizeof(floating))
            for g in range(G):
                for f in range(Fg):
                    if shifted:
                        ck_rg_pad_rows(<const float*>&gy[n, g * Fg + f, 0, 0], Ho, Wo,
                                       srow0 + h0, nr, scol0, Wp, <float*>slab + f * SP)
                    elif direct:            # (float32 where csrc/rowgemm.h runs)
                        ck_rg_pad_rows(<const float*>&gy[n, g * Fg + f, 0, 0], Ho, Wo, ulo + h0,
                                       hr + Th - 1, vlo, Wp, <float*>slab + f * SP)
                    else:
                        _padded_rows(&gy[n, g * Fg + f, 0, 0], Ho, Wo, ulo + h0, hr + Th - 1,
                                     vlo, Wp, slab + f * SP)
                if shifted:
                    if floating is float:
                        ck_rowgemm_shift_f(P, ldo, K, &wpan[g, 0], slab, &boff[0], &pbase[0],
                                           out, ldo, skc)
                elif not (direct and _rowgemm(P, L, K, &wpan[g, 0], slab, &boff[0], out)):
                    for k in range(K):
                        memcpy(cols + k * L, slab + boff[k], L * sizeof(floating))
                    gemm_fixed(False, False, P, L, K, <floating>1, &wsub[g, 0, 0], K, cols, L,
                               <floating>0, out, L)
                for p in range(sh * Cg):            # (qh, c): result rows qh*sw*Cg + c +
                    qh = p // Cg                    # qw*Cg, its sw column phases
                    c = p - qh * Cg
                    for r in range(hr):
                        i = ulo + h0 + r - emin_h[qh]
                        ih = qh + sh * i
                        if i < 0 or ih >= H:
                            continue
                        grow = &gx[n, g * Cg + c, ih, 0]
                        if direct and sw == 2 and _interleave2_f(
                                <float*>grow,
                                <const float*>out + (qh * sw * Cg + c) * ldo + r * Wp,
                                Cg * ldo, W, Wu, vlo, &emin_w[0], has_bias,
                                <float>bias[g * Cg + c] if has_bias else 0):
                            continue                # (bias added on the way)
                        _interleave_row(grow, out + (qh * sw * Cg + c) * ldo + r * Wp, Cg * ldo,
                                        sw, W, Wu, vlo, &emin_w[0])
                        if has_bias:                # (the row is still in L1)
                            bv = bias[g * Cg + c]
                            for j in range(W):
                                grow[j] = grow[j] + bv
    return gx


def conv2d_forward_rowphases(const float[:, :, :, ::1] x, const float[::1] wpan,
                             const float[::1] bias, bint has_bias, float[:, :, :, ::1] y,
                             float[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t KH,
                             Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                             Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t rows,
                             int n_threads, const Py_ssize_t[::1] boff, Py_ssize_t kc):
    """groups 1, float32 where csrc/rowgemm.h runs (conv_plan "rowphases", BLAS machines): the
    polyphase forward of conv2d_forward_phases (same phase planes, same tap offsets boff), but
    a task's ``rows`` output rows are ONE rowgemm: the rows are computed Wq wide (output row r
    of the task is columns [r*Wq, r*Wq + Wo) of the result, the other Wq - Wo dropped), so the
    GEMM is F x rows*Wq with K = C*KH*KW taps read in place from the planes -- no im2col, no
    packing, in passes of kc taps (kc >= 1).  wpan: the weights (F, C*KH*KW) in rowgemm's
    4-row panels (F a multiple of 4).
    Each output is one chain of multiply-adds over the taps in order, then + bias: the same
    bits whatever the task split or thread count.  ws_per_thread >= C*sh*sw*Rq*Wq +
    (KW-1)*dw//sw + F*rows*Wq (conv_plan.plan_rowphases).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t CKK = C * KH * KW, slack = ((KW - 1) * dw) // sw
    cdef Py_ssize_t Wq = Wo + slack, Rq = rows + ((KH - 1) * dh) // sh
    cdef Py_ssize_t plane = Rq * Wq, nrb = (Ho + rows - 1) // rows
    cdef Py_ssize_t t, n, h0, hr, L, f, r, j
    cdef Py_ssize_t failed = 0
    cdef float bv
    cdef float* Q
    cdef float* out
    cdef float* src
    cdef float* dst
    with nogil:
        for t in prange(N * nrb, schedule="static", num_threads=n_threads):
            n = t // nrb
            h0 = (t - n * nrb) * rows
            hr = _min(rows, Ho - h0)
            L = hr * Wq
            Q = &ws[0] + threadid() * ws_per_thread
            out = Q + C * sh * sw * plane + slack
            ck_phases_f(&x[n, 0, 0, 0], C, H, W, sh, sw, pt, pl, h0, Rq, Wq, plane, Q)
            memset(Q + C * sh * sw * plane, 0, slack * sizeof(float))
            if not ck_rowgemm_kc_f(F, L, CKK, &wpan[0], Q, &boff[0], out, L, kc):
                failed += 1             # (the plan picks this only where rowgemm runs)
                continue
            for f in range(F):
                bv = bias[f] if has_bias else 0
                for r in range(hr):
                    src = out + f * L + r * Wq
                    dst = &y[n, f, h0 + r, 0]
                    if has_bias:
                        for j in range(Wo):
                            dst[j] = src[j] + bv
                    else:
                        memcpy(dst, src, Wo * sizeof(float))
    if failed:
        raise RuntimeError("conv2d_forward_rowphases: csrc/rowgemm.h does not run on this CPU")
    return y


cdef void _wgrad_rg_thread(const float* gy, const float* x, float* gw, float* xcl, float* gyp,
                           float* out, const Py_ssize_t* boff, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t F, Py_ssize_t KH,
                           Py_ssize_t KW, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t sh,
                           Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t prows,
                           Py_ssize_t khs, Py_ssize_t kc, Py_ssize_t t0, Py_ssize_t t1,
                           Py_ssize_t* failed) noexcept nogil:
    """conv2d_grad_weight_rowgemm's tasks [t0, t1), all images, on this thread's own xcl and gyp:
    per image, the xcl rows and grad_y panels these tasks read, then their passes."""
    cdef Py_ssize_t HoWo = Ho * Wo, Hp = (Ho - 1) * sh + KH, Wp = (Wo - 1) * sw + KW
    cdef Py_ssize_t L = KW * C, ldo = KH * KW * C, per = KH // sh
    cdef Py_ssize_t nmc = (per + khs - 1) // khs, tpb = sh * nmc    # tasks per filter block
    cdef Py_ssize_t f0 = (t0 // tpb) * prows, f1 = _min(F, ((t1 - 1) // tpb + 1) * prows)
    cdef Py_ssize_t n, rr, hi, q, wi, p, t, p0, pr, r, m, m0, m1, i, k0, kn, kh, kw, f, c
    cdef bint need
    cdef float* dst
    cdef const float* xn
    for n in range(N):
        xn = x + n * C * H * W
        for rr in range(Hp):        # the xcl rows a task reads: kh + i*sh, its kernel rows kh
            need = False
            for t in range(t0, t1):
                r = (t // nmc) % sh
                m0 = (t % nmc) * khs
                m1 = _min(per, m0 + khs)
                if rr % sh == r and m0 <= rr // sh < m1 + Ho - 1:
                    need = True
                    break
            if not need:
                continue
            hi = rr - pt
            dst = xcl + rr * Wp * C
            if hi < 0 or hi >= H:
                memset(dst, 0, Wp * C * sizeof(float))
                continue
            # columns q = wi + pl: zeros where wi is outside [0, W), x's row transposed
            q = _min(pl, Wp)
            memset(dst, 0, q * C * sizeof(float))
            wi = _min(W, Wp - pl)
            if wi > 0:
                ck_rg_to_cl(xn + hi * W, H * W, C, wi, dst + pl * C)
                q = pl + wi
            memset(dst + q * C, 0, (Wp - q) * C * sizeof(float))
        for p in range(f0 // 4, f1 // 4):                       # its filters' grad_y panels
            ck_rg_panel4(gy + (n * F + 4 * p) * HoWo, HoWo, HoWo, gyp + p * 4 * HoWo)
        for t in range(t0, t1):
            p0 = (t // tpb) * prows
            pr = _min(prows, F - p0)
            r = (t // nmc) % sh
            m0 = (t % nmc) * khs
            m1 = _min(per, m0 + khs)
            for i in range((HoWo + kc - 1) // kc):
                k0 = i * kc
                kn = _min(kc, HoWo - k0)
                for m in range(m0, m1):
                    kh = r + m * sh
                    if not ck_rowgemm_pass_acc_f(pr, L, HoWo, k0, kn, n > 0 or k0 > 0,
                                                 gyp + p0 * HoWo, xcl + kh * Wp * C, boff,
                                                 out + p0 * ldo + kh * L, ldo):
                        failed[0] = 1   # (the plan picks this only where rowgemm runs)
    for t in range(t0, t1):         # its sums into gw (no other task writes them)
        p0 = (t // tpb) * prows
        r = (t // nmc) % sh
        m0 = (t % nmc) * khs
        m1 = _min(per, m0 + khs)
        for f in range(p0, _min(F, p0 + prows)):
            for c in range(C):
                for m in range(m0, m1):
                    kh = r + m * sh
                    for kw in range(KW):
                        gw[((f * C + c) * KH + kh) * KW + kw] = \
                            out[f * ldo + (kh * KW + kw) * C + c]


def weight_rowgemm_team(Py_ssize_t F, Py_ssize_t KH, Py_ssize_t sh, Py_ssize_t prows,
                        Py_ssize_t khs, int n_threads):
    """The threads conv2d_grad_weight_rowgemm runs: at most one a task (each thread takes a
    fixed run of tasks), so the workspace holds that many threads' xcl and panels."""
    cdef Py_ssize_t T = (F + prows - 1) // prows * sh * ((KH // sh + khs - 1) // khs)
    return int(max(1, min(n_threads, T)))


def conv2d_grad_weight_rowgemm(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                               float[:, :, :, ::1] gw, float[::1] xcl, float[::1] gyp,
                               float[::1] out, const Py_ssize_t[::1] boff, Py_ssize_t sh,
                               Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t prows,
                               Py_ssize_t khs, Py_ssize_t kc, int n_threads):
    """grad_weight (OUT: gw, every value written) of a groups-1, dilation-1 conv, float32 on
    csrc/rowgemm.h (conv_plan "weight_rowgemm", BLAS machines with AVX2).

    With an image's x channels-last and zero-padded (xcl: Hp x Wp x C, Hp = (Ho-1)*sh + KH,
    Wp = (Wo-1)*sw + KW), the KW*C values x[n, :, r, q + kw] for kw < KW of a tap row kh are
    ONE run of xcl, so per kernel row kh
        out[f, kh, kw, c] = sum over positions t = (n, i, j) of gy[n, f, i, j] *
                            xcl_n[boff[t'] + kh*Wp*C + kw*C + c],   t' = (i, j),
                            boff[t'] = (i*sh*Wp + j*sw)*C
    is a rowgemm: F rows (the image's gy in 4-row panels, gyp), KW*C columns, the Ho*Wo taps of
    image n read in place, in passes of kc taps (the B rows of a column block stay in L1), the
    images in order, each going on from the sums of the ones before.  Tasks: (block of prows
    filters, up to khs kernel rows kh = r, r + sh, ... of one residue r mod sh: those read the
    xcl rows = r mod sh alone, KH a multiple of sh), each running its kernel rows pass by pass
    (a pass's xcl rows serve the next kernel row from cache).  ONE parallel region: thread tid
    of the team (weight_rowgemm_team) takes a fixed run of consecutive tasks and, image by
    image, builds in its own xcl and gyp (so they stay in its L2) the xcl rows and panels its
    tasks read -- at 2 threads on a stride-2 kernel one residue's rows each, no row twice --
    then runs their passes: no barrier per image (three regions per image before).  Each output
    is one chain of multiply-adds over the positions in order, so the bits do not depend on the
    split or the thread count.  Then each thread writes its tasks' gw[f, c, kh, kw] = out.
    xcl: team*Hp*Wp*C floats, gyp: team*F*Ho*Wo, out: F*KH*KW*C, boff: Ho*Wo
    (conv_plan.plan_weight_rowgemm).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gw.shape[0], KH = gw.shape[2], KW = gw.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t Hp = (Ho - 1) * sh + KH, Wp = (Wo - 1) * sw + KW
    cdef Py_ssize_t per = KH // sh, nmc = (per + khs - 1) // khs
    cdef Py_ssize_t T = (F + prows - 1) // prows * sh * nmc
    cdef int team = weight_rowgemm_team(F, KH, sh, prows, khs, n_threads)
    cdef Py_ssize_t tid, nt
    cdef Py_ssize_t failed = 0
    if KH % sh or prows % 4 or F % 4 or khs < 1 or kc < 1:
        raise ValueError("conv2d_grad_weight_rowgemm: KH a multiple of sh, F and prows of 4 "
                         "and khs, kc >= 1 needed")
    if (xcl.shape[0] < team * Hp * Wp * C or gyp.shape[0] < team * F * HoWo
            or out.shape[0] < F * KH * KW * C or boff.shape[0] < HoWo):
        raise ValueError(f"conv2d_grad_weight_rowgemm: xcl, gyp must hold {team} threads' "
                         f"({Hp * Wp * C}, {F * HoWo} floats), out {F * KH * KW * C}, "
                         f"boff {HoWo}")
    with nogil, parallel(num_threads=team):
        tid = threadid()
        nt = openmp.omp_get_num_threads()
        _wgrad_rg_thread(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &gw[0, 0, 0, 0],
                         &xcl[0] + tid * Hp * Wp * C, &gyp[0] + tid * F * HoWo, &out[0],
                         &boff[0], N, C, H, W, F, KH, KW, Ho, Wo, sh, sw, pt, pl, prows, khs,
                         kc, tid * T // nt, (tid + 1) * T // nt, &failed)
    if failed:
        raise RuntimeError("conv2d_grad_weight_rowgemm: csrc/rowgemm.h does not run on this CPU")
    return gw


def conv2d_forward_stem(const float[:, :, :, ::1] x, const float[::1] wpan,
                        const float[::1] bias, bint has_bias, float[:, :, :, ::1] y,
                        float[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t KH, Py_ssize_t KW,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t rows, int n_threads, const Py_ssize_t[::1] boff):
    """groups 1, dilation 1, float32 where csrc/stem.h runs (conv_plan "stem", BLAS machines
    with AVX2): the phase planes of conv2d_forward_phases (offsets boff), each output row's
    Wo columns computed from them in place by ck_stem_forward_f straight into y (no column
    matrix, no packing, no copy of a result).  wpan: the weights (F, C*KH*KW) in
    csrc/rowgemm.h's 4-row panels (F a multiple of 4).  Each output is one chain of
    multiply-adds over the taps in order, then + bias: the same bits for any task split or
    thread count, and for the image alone or in any batch.  Tasks: (image, ``rows`` output
    rows); ws_per_thread >= C*sh*sw*Rq*Wq (conv_plan.plan_stem).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t CKK = C * KH * KW
    cdef Py_ssize_t Wq = Wo + (KW - 1) // sw, Rq = rows + (KH - 1) // sh
    cdef Py_ssize_t plane = Rq * Wq, nrb = (Ho + rows - 1) // rows
    cdef Py_ssize_t t, n, h0
    cdef Py_ssize_t failed = 0
    cdef float* Q
    with nogil:
        for t in prange(N * nrb, schedule="static", num_threads=n_threads):
            n = t // nrb
            h0 = (t - n * nrb) * rows
            Q = &ws[0] + threadid() * ws_per_thread
            ck_phases_f(&x[n, 0, 0, 0], C, H, W, sh, sw, pt, pl, h0, Rq, Wq, plane, Q)
            if not ck_stem_forward_f(F, CKK, &wpan[0], Q, &boff[0], Wq, _min(rows, Ho - h0), Wo,
                                     &y[n, 0, h0, 0], Ho * Wo,
                                     &bias[0] if has_bias else <const float*>NULL):
                failed += 1             # (the plan picks this only where csrc/stem.h runs)
    if failed:
        raise RuntimeError("conv2d_forward_stem: csrc/stem.h does not run on this CPU")
    return y


def stem_wino_filters(const float[:, :, :, ::1] w, float[::1] U):
    """w (F, C, KH, 7), F a multiple of 4 -> U (OUT, F*13*C*KH floats): the filters of
    conv2d_forward_stem_wino, transformed in double (csrc/stem_wino.h ck_stem_wino_filters)."""
    cdef Py_ssize_t F = w.shape[0], C = w.shape[1], KH = w.shape[2]
    if w.shape[3] != 7 or F % 4 or U.shape[0] < F * 13 * C * KH:
        raise ValueError("stem_wino_filters: w must be (F, C, KH, 7), F a multiple of 4, "
                         "and U hold F*13*C*KH floats")
    with nogil:
        ck_stem_wino_filters(F, C, KH, &w[0, 0, 0, 0], &U[0])
    return U


def stem_wino_offsets(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh, Py_ssize_t Ra, Py_ssize_t nt,
                      Py_ssize_t[::1] boff):
    """boff (OUT, 13*C*KH): each transformed tap's row offset (csrc/stem_wino.h)."""
    if boff.shape[0] < 13 * C * KH:
        raise ValueError("stem_wino_offsets: boff must hold 13*C*KH offsets")
    ck_stem_wino_offsets(C, KH, sh, Ra, nt, &boff[0])
    return boff


def conv2d_forward_stem_wino(const float[:, :, :, ::1] x, const float[::1] U,
                             const float[::1] bias, bint has_bias, float[:, :, :, ::1] y,
                             float[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t KH,
                             Py_ssize_t sh, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t rows,
                             int n_threads, const Py_ssize_t[::1] boff, bint stream=False):
    """groups 1, dilation 1, kernel width 7 at column stride 2, float32 where csrc/stem.h runs
    (conv_plan "stem_wino"): the stem forward by a 1-D Winograd F(4, 4) / F(4, 3) along the
    rows (csrc/stem_wino.h).  U: stem_wino_filters of the weights; boff: stem_wino_offsets for
    Ra = rows + (KH-1)//sh phase rows of nt = ceil(Wo/4) tiles.  Tasks: (image, ``rows`` output
    rows), each from the stride-8 column phases of its input rows; every output is computed
    the same way in any task, so the bits follow neither the thread count nor the batch.
    Operands must be finite (the caller's rule).
    stream: y's whole runs of 32 outputs by non-temporal stores (the same values; for a y past
    the caches: conv_plan.plan_stem_wino).
    ws_per_thread >= conv_plan.stem_wino_floats (csrc/stem_wino.h ck_stem_wino_floats)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t Ra = rows + (KH - 1) // sh
    cdef Py_ssize_t nrb = (Ho + rows - 1) // rows
    cdef Py_ssize_t t, n, h0
    cdef Py_ssize_t failed = 0
    if ck_stem_wino_floats(C, KH, sh, rows, Wo) > ws_per_thread:
        raise ValueError("conv2d_forward_stem_wino: ws_per_thread is below the task's scratch")
    if ws.shape[0] < n_threads * ws_per_thread or U.shape[0] < F * 13 * C * KH \
            or boff.shape[0] < 13 * C * KH or F % 4:
        raise ValueError("conv2d_forward_stem_wino: ws, U or boff too short, or F not a "
                         "multiple of 4")
    with nogil:
        for t in prange(N * nrb, schedule="static", num_threads=n_threads):
            n = t // nrb
            h0 = (t - n * nrb) * rows
            if not ck_stem_wino_forward_f(F, C, KH, sh, &U[0], &boff[0], &x[n, 0, 0, 0], H, W,
                                          pt, pl, h0, Ra, _min(rows, Ho - h0), Wo,
                                          &ws[0] + threadid() * ws_per_thread,
                                          &y[n, 0, h0, 0], Ho * Wo,
                                          &bias[0] if has_bias else <const float*>NULL,
                                          stream):
                failed += 1             # (the plan picks this only where csrc/stem.h runs)
    if failed:
        raise RuntimeError("conv2d_forward_stem_wino: csrc/stem.h does not run on this CPU")
    return y


def conv2d_grad_weight_stem(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                            float[:, :, :, ::1] gw, float[::1] gb, bint has_bias,
                            float[::1] ws, Py_ssize_t ws_per_thread,
                            float[::1] part, const Py_ssize_t[::1] boff, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t rows,
                            Py_ssize_t fchunk, Py_ssize_t groups_n, int n_threads):
    """grad_weight (OUT: gw, every value written) of conv2d_forward_stem's convs, as dot
    products on csrc/stem.h (conv_plan "weight_stem").

    gw[f, k] = sum over the batch's positions of gy[n, f, i, j] * (tap k of position (i, j)),
    the taps read in place from the phase planes of blocks of ``rows`` output rows (boff: the
    offsets for planes of that many rows, padded with zeros to a multiple of 3 taps; the padded
    taps' sums are dropped).  Tasks: (block of ``fchunk`` filters, group of slabs) -- the
    batch's N * ceil(Ho / rows) (image, row block) slabs, image after image, cut into groups_n
    (1 .. the slab count) fixed near-equal runs of consecutive slabs, set by the caller's plan
    and never by the team -- each summing into its own 8-lane partial sums (part: groups_n * F
    * (K3 + 1) * 8 floats, the last 8 of a filter's row its bias lanes) in a fixed order; then
    each weight is its lanes' sums added in a fixed tree, group by group in order.  So the bits
    do not depend on the thread count.  has_bias: gb (OUT) is summed the same way on the way (grad_bias
    "fused").
    ws_per_thread >= C*sh*sw*Rq*Wq (conv_plan.plan_weight_stem).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gw.shape[0], KH = gw.shape[2], KW = gw.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t K = C * KH * KW, K3 = boff.shape[0], ldp = 8 * (K3 + 1)
    cdef Py_ssize_t Wq = Wo + (KW - 1) // sw, Rq = rows + (KH - 1) // sh
    cdef Py_ssize_t plane = Rq * Wq
    cdef Py_ssize_t nfc = (F + fchunk - 1) // fchunk
    cdef Py_ssize_t nrb = (Ho + rows - 1) // rows, S = N * nrb
    cdef Py_ssize_t t, fi, g, f0, fc, n, sl, h0, f, k
    cdef Py_ssize_t failed = 0
    cdef float s, lane
    cdef float* Q
    cdef float* P
    cdef const float* q
    if groups_n < 1 or groups_n > S or part.shape[0] < groups_n * F * ldp:
        raise ValueError(f"conv2d_grad_weight_stem: groups_n must be in 1 .. {S} (slabs) and "
                         f"part hold groups_n * {F * ldp} floats, got {groups_n}, "
                         f"{part.shape[0]}")
    with nogil:
        for t in prange(nfc * groups_n, schedule="static", num_threads=n_threads):
            fi = t // groups_n
            g = t - fi * groups_n
            f0 = fi * fchunk
            fc = _min(fchunk, F - f0)
            P = &part[0] + (g * F + f0) * ldp
            memset(P, 0, fc * ldp * sizeof(float))
            Q = &ws[0] + threadid() * ws_per_thread
            for sl in range(g * S // groups_n, (g + 1) * S // groups_n):
                n = sl // nrb
                h0 = (sl - n * nrb) * rows
                ck_phases_f(&x[n, 0, 0, 0], C, H, W, sh, sw, pt, pl, h0, Rq, Wq, plane, Q)
                if not ck_stem_wdot_f(fc, K3, _min(rows, Ho - h0), Wo, &gy[n, f0, h0, 0],
                                      HoWo, Q, Wq, &boff[0], P, ldp, has_bias):
                    failed += 1     # (the plan picks this only where csrc/stem.h runs)
        for f in prange(F, schedule="static", num_threads=n_threads):
            for k in range(K + 1):
                if k == K and not has_bias:
                    break
                s = 0
                for g in range(groups_n):
                    q = &part[0] + (g * F + f) * ldp + 8 * (K3 if k == K else k)
                    lane = ((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]))
                    s = s + lane
                if k == K:
                    gb[f] = s
                else:
                    gw[f, k // (KH * KW), (k // KW) % KH, k % KW] = s
    if failed:
        raise RuntimeError("conv2d_grad_weight_stem: csrc/stem.h does not run on this CPU")
    return gw


def stem_wgrad_offsets(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh, Py_ssize_t Ra, Py_ssize_t nt,
                       Py_ssize_t[::1] boff):
    """boff (OUT, stem_wgrad_sizes(1, C, KH)[0]): each transformed tap's row offset, per point
    padded to a multiple of 3 (csrc/stem_wgrad.h ck_stem_wgrad_offsets)."""
    if boff.shape[0] != ck_stem_wgrad_taps(C, KH):
        raise ValueError(f"stem_wgrad_offsets: boff must hold {ck_stem_wgrad_taps(C, KH)} "
                         f"offsets, got {boff.shape[0]}")
    ck_stem_wgrad_offsets(C, KH, sh, Ra, nt, &boff[0])
    return boff


def stem_wgrad_sizes(Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH):
    """(padded taps per filter, one slab group's partial-sum floats) of csrc/stem_wgrad.h."""
    return ck_stem_wgrad_taps(C, KH), ck_stem_wgrad_part_floats(F, C, KH)


def conv2d_grad_weight_stem_wino(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                                 float[:, :, :, ::1] gw, float[::1] gb, bint has_bias,
                                 float[::1] ws, Py_ssize_t ws_per_thread, float[::1] part,
                                 const Py_ssize_t[::1] boff, Py_ssize_t sh, Py_ssize_t pt,
                                 Py_ssize_t pl, Py_ssize_t rows, Py_ssize_t groups_n,
                                 int n_threads):
    """grad_weight (OUT: gw, every value written; grad_bias gb too when has_bias) of
    conv2d_forward_stem_wino's convs (kernel width 7, column stride 2) by the transposed 1-D
    Winograd F(4, 4) / F(3, 4) along the rows (csrc/stem_wgrad.h, conv_plan
    "weight_stem_wino").  Tasks: the batch's N * ceil(Ho / rows) (image, row block) slabs,
    image after image, cut into groups_n (1 .. the slab count) fixed near-equal runs, set by the
    caller's plan and never by the team, each summing into its own partial sums (part:
    groups_n * stem_wgrad_sizes(F, C, KH)[1] floats) in slab order; then each weight is its
    groups' sums added in order and transformed back in double.  So the bits do not depend on
    the thread count.  boff: stem_wgrad_offsets for Ra = rows + (KH-1)//sh phase rows of
    ceil(Wo/4) tiles.  Finite operands give finite results (Winograd mixes a tile's values: the
    caller runs the direct weight_stem where the result is not finite).
    ws_per_thread >= csrc/stem_wgrad.h's ck_stem_wgrad_floats (the forward's scratch + 56).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gw.shape[0], KH = gw.shape[2]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t Ra = rows + (KH - 1) // sh
    cdef Py_ssize_t nrb = (Ho + rows - 1) // rows, S = N * nrb
    cdef Py_ssize_t ldgrp = ck_stem_wgrad_part_floats(F, C, KH)
    cdef Py_ssize_t g, sl, n, h0, f
    cdef Py_ssize_t failed = 0
    cdef float* Q
    cdef float* P
    if gw.shape[3] != 7 or gw.shape[1] != C or F % 4 or gy.shape[1] != F or gy.shape[0] != N:
        raise ValueError("conv2d_grad_weight_stem_wino: gw must be (F, C, KH, 7), F a multiple "
                         "of 4, and gy (N, F, Ho, Wo)")
    if ck_stem_wgrad_floats(C, KH, sh, rows, Wo) > ws_per_thread \
            or ws.shape[0] < n_threads * ws_per_thread:
        raise ValueError("conv2d_grad_weight_stem_wino: ws_per_thread is below a slab's scratch "
                         "or ws below n_threads of them")
    if groups_n < 1 or groups_n > S or part.shape[0] < groups_n * ldgrp:
        raise ValueError(f"conv2d_grad_weight_stem_wino: groups_n must be in 1 .. {S} (slabs) "
                         f"and part hold groups_n * {ldgrp} floats, got {groups_n}, "
                         f"{part.shape[0]}")
    if boff.shape[0] != ck_stem_wgrad_taps(C, KH) or (has_bias and gb.shape[0] < F):
        raise ValueError("conv2d_grad_weight_stem_wino: boff must be stem_wgrad_offsets' and "
                         "gb hold F values")
    with nogil:
        for g in prange(groups_n, schedule="static", num_threads=n_threads):
            P = &part[0] + g * ldgrp
            memset(P, 0, ldgrp * sizeof(float))
            Q = &ws[0] + threadid() * ws_per_thread
            for sl in range(g * S // groups_n, (g + 1) * S // groups_n):
                n = sl // nrb
                h0 = (sl - n * nrb) * rows
                if not ck_stem_wgrad_slab_f(F, C, KH, sh, &boff[0], &x[n, 0, 0, 0], H, W, pt,
                                            pl, h0, Ra, _min(rows, Ho - h0), Wo,
                                            &gy[n, 0, h0, 0], HoWo, Q, P, has_bias):
                    failed += 1     # (the plan picks this only where csrc/stem.h runs)
        for f in prange(0, F, 4, schedule="static", num_threads=n_threads):
            ck_stem_wgrad_fold(f, F, C, KH, groups_n, &part[0], ldgrp, &gw[0, 0, 0, 0],
                               &gb[f] if has_bias else <float*>NULL)
    if failed:
        raise RuntimeError("conv2d_grad_weight_stem_wino: csrc/stem.h does not run on this CPU")
    return gw
