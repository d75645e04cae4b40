# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Position-sensitive RoI align / RoI pool (torchvision's rules, restated in
convkit/reference/psroi.py).

Bin (p, q) of output channel c reads the single input plane c*oh*ow + p*ow + q, so both ops
work plane by plane on the NCHW map (csrc/psroi.h).  ps_roi_align's per-RoI bilinear taps
come from roi_align's ``roi_align_axis_taps`` with the aligned geometry (-0.5 offset, no
minimum size), tabulated once per call for all RoIs (a count pass, then a fill pass into
arrays the wrapper allocates); ps_roi_pool's bin edges likewise.

Every kernel has one task per (image n, input channel c_in) plane: that plane is read (or,
as grad_x, written) only by bin (p, q) = divmod(c_in % (oh*ow), ow) of output channel
c_in // (oh*ow) of the image's RoIs, so a task visits the image's RoIs in order with the plane
in cache.  The wrapper hands the RoIs grouped by image (stable, so in their order within an
image; batch indices checked there) with bin-major tables (bin p's entries of consecutive
RoIs adjacent), and outputs / grads transposed to (C, K), so a task reads and writes its
per-RoI data in sequence.  A forward task writes those RoIs' outputs of that bin and channel;
a backward task zeroes its grad_x plane and adds their bins in RoI order -- no two tasks
write the same element, so the sums are the same bits for any thread count, without
atomics.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport ceil, fmax
from libc.string cimport memset

from convkit.cpu._roi_align cimport roi_align_axis_taps
from convkit.cpu.csrc.roi cimport team

cdef extern from "csrc/psroi.h":
    void ck_ps_pool_edges_f(float c1, float c2, float scale, Py_ssize_t pooled,
                            Py_ssize_t size, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil
    void ck_ps_pool_edges_d(double c1, double c2, double scale, Py_ssize_t pooled,
                            Py_ssize_t size, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil
    float ck_ps_box_sum_f(const float* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                          Py_ssize_t w0, Py_ssize_t w1) noexcept nogil
    double ck_ps_box_sum_d(const double* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                           Py_ssize_t w0, Py_ssize_t w1) noexcept nogil
    void ck_ps_box_add_f(float* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                         Py_ssize_t w0, Py_ssize_t w1, float v) noexcept nogil
    void ck_ps_box_add_d(double* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                         Py_ssize_t w0, Py_ssize_t w1, double v) noexcept nogil
    float ck_ps_align_sum_f(const float* plane, Py_ssize_t W, const Py_ssize_t* yl,
                            const Py_ssize_t* yh, const float* wyl, const float* wyh,
                            Py_ssize_t a0, Py_ssize_t a1, const Py_ssize_t* xl,
                            const Py_ssize_t* xh, const float* wxl, const float* wxh,
                            Py_ssize_t b0, Py_ssize_t b1) noexcept nogil
    double ck_ps_align_sum_d(const double* plane, Py_ssize_t W, const Py_ssize_t* yl,
                             const Py_ssize_t* yh, const double* wyl, const double* wyh,
                             Py_ssize_t a0, Py_ssize_t a1, const Py_ssize_t* xl,
                             const Py_ssize_t* xh, const double* wxl, const double* wxh,
                             Py_ssize_t b0, Py_ssize_t b1) noexcept nogil
    void ck_ps_align_add_f(float* plane, Py_ssize_t W, const Py_ssize_t* yl,
                           const Py_ssize_t* yh, const float* wyl, const float* wyh,
                           Py_ssize_t a0, Py_ssize_t a1, const Py_ssize_t* xl,
                           const Py_ssize_t* xh, const float* wxl, const float* wxh,
                           Py_ssize_t b0, Py_ssize_t b1, float g, float count) noexcept nogil
    void ck_ps_align_add_d(double* plane, Py_ssize_t W, const Py_ssize_t* yl,
                           const Py_ssize_t* yh, const double* wyl, const double* wyh,
                           Py_ssize_t a0, Py_ssize_t a1, const Py_ssize_t* xl,
                           const Py_ssize_t* xh, const double* wxl, const double* wxh,
                           Py_ssize_t b0, Py_ssize_t b1, double g, double count) noexcept nogil


cdef inline floating _align_sum(const floating* plane, Py_ssize_t W, const Py_ssize_t* yl,
                                const Py_ssize_t* yh, const floating* wyl, const floating* wyh,
                                Py_ssize_t a0, Py_ssize_t a1, const Py_ssize_t* xl,
                                const Py_ssize_t* xh, const floating* wxl, const floating* wxh,
                                Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    if floating is float:
        return ck_ps_align_sum_f(plane, W, yl, yh, wyl, wyh, a0, a1, xl, xh, wxl, wxh, b0, b1)
    else:
        return ck_ps_align_sum_d(plane, W, yl, yh, wyl, wyh, a0, a1, xl, xh, wxl, wxh, b0, b1)


cdef inline void _align_add(floating* plane, Py_ssize_t W, const Py_ssize_t* yl,
                            const Py_ssize_t* yh, const floating* wyl, const floating* wyh,
                            Py_ssize_t a0, Py_ssize_t a1, const Py_ssize_t* xl,
                            const Py_ssize_t* xh, const floating* wxl, const floating* wxh,
                            Py_ssize_t b0, Py_ssize_t b1, floating g,
                            floating count) noexcept nogil:
    if floating is float:
        ck_ps_align_add_f(plane, W, yl, yh, wyl, wyh, a0, a1, xl, xh, wxl, wxh, b0, b1, g, count)
    else:
        ck_ps_align_add_d(plane, W, yl, yh, wyl, wyh, a0, a1, xl, xh, wxl, wxh, b0, b1, g, count)


cdef inline floating _box_sum(const floating* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                              Py_ssize_t w0, Py_ssize_t w1) noexcept nogil:
    if floating is float:
        return ck_ps_box_sum_f(plane, W, h0, h1, w0, w1)
    else:
        return ck_ps_box_sum_d(plane, W, h0, h1, w0, w1)


cdef inline void _box_add(floating* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                          Py_ssize_t w0, Py_ssize_t w1, floating v) noexcept nogil:
    if floating is float:
        ck_ps_box_add_f(plane, W, h0, h1, w0, w1, v)
    else:
        ck_ps_box_add_d(plane, W, h0, h1, w0, w1, v)


cdef struct _Plane:
    # what task t of a plane-wise kernel works on: image n, input channel ci, which is bin
    # (p, q) of output channel ci // (ph*pw)
    Py_ssize_t n, ci, p, q


cdef inline _Plane _plane(Py_ssize_t t, Py_ssize_t C, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """Returned by value, so a prange body's copy is private to its thread."""
    cdef _Plane r
    r.n = t // C
    r.ci = t % C
    r.p = r.ci % (ph * pw) // pw
    r.q = r.ci % pw
    return r


# ------------------------------------------------------------------------------ align taps
cdef struct _Geom:
    # ps_roi_align's geometry of one RoI, computed in the data type (held exactly here)
    double sh, bh, gh, sw, bw, gw


cdef _Geom _axes(const floating* roi, floating scale, Py_ssize_t sr, Py_ssize_t ph,
                 Py_ssize_t pw) noexcept nogil:
    """Start, bin size and grid of both axes: corners scaled minus 0.5, size end - start
    with no minimum, grid sampling_ratio or ceil(bin size) (<= 0: no samples).  Returned by
    value, so a prange body's copy is private to its thread."""
    cdef _Geom g
    cdef floating half = 0.5, sw = roi[1] * scale - half, sh = roi[2] * scale - half
    cdef floating bw = ((roi[3] * scale - half) - sw) / <floating>pw
    cdef floating bh = ((roi[4] * scale - half) - sh) / <floating>ph
    g.sh, g.bh, g.sw, g.bw = sh, bh, sw, bw
    if sr > 0:
        g.gh = <floating>sr
        g.gw = <floating>sr
    else:
        g.gh = ceil(bh)
        g.gw = ceil(bw)
    return g


def align_tap_counts(const floating[:, ::1] rois, double spatial_scale, Py_ssize_t sr,
                     Py_ssize_t H, Py_ssize_t W, Py_ssize_t[:, ::1] fy, Py_ssize_t[:, ::1] fx,
                     Py_ssize_t[::1] ny, Py_ssize_t[::1] nx, double[::1] count, int n_threads):
    """Pass 1: how many y and x taps each RoI has (ny, nx), and its sample count
    max(grid_h * grid_w, 1) (fy, fx are scratch here: the fill pass rewrites them)."""
    cdef Py_ssize_t K = rois.shape[0], ph = fy.shape[1] - 1, pw = fx.shape[1] - 1, k
    cdef _Geom g
    cdef floating scale = <floating>spatial_scale
    with nogil:
        for k in prange(K, schedule="static", num_threads=team(n_threads, K)):
            g = _axes(&rois[k, 0], scale, sr, ph, pw)
            ny[k] = roi_align_axis_taps(<floating>g.sh, <floating>g.bh, <floating>g.gh, ph, H,
                                        0, &fy[k, 0], NULL, NULL, <floating*>NULL,
                                        <floating*>NULL, NULL)
            nx[k] = roi_align_axis_taps(<floating>g.sw, <floating>g.bw, <floating>g.gw, pw, W,
                                        0, &fx[k, 0], NULL, NULL, <floating*>NULL,
                                        <floating*>NULL, NULL)
            count[k] = fmax(g.gh * g.gw, 1.0)


def align_tap_fill(const floating[:, ::1] rois, double spatial_scale, Py_ssize_t sr,
                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t[:, ::1] fy, Py_ssize_t[:, ::1] fx,
                   const Py_ssize_t[::1] oy, const Py_ssize_t[::1] ox,
                   Py_ssize_t[::1] yl, Py_ssize_t[::1] yh, floating[::1] wyl,
                   floating[::1] wyh, Py_ssize_t[::1] xl, Py_ssize_t[::1] xh,
                   floating[::1] wxl, floating[::1] wxh, int n_threads):
    """Pass 2: RoI k's y taps at [oy[k], oy[k+1]) of yl/yh/wyl/wyh (bin p's at fy[k, p] ..
    fy[k, p+1] from there), x taps likewise.  Writes at most the room pass 1 counted;
    returns the number of RoIs whose taps no longer fit (rois changed between the passes)."""
    cdef Py_ssize_t K = rois.shape[0], ph = fy.shape[1] - 1, pw = fx.shape[1] - 1, k, n
    cdef Py_ssize_t changed = 0
    cdef _Geom g
    cdef floating scale = <floating>spatial_scale
    with nogil:
        for k in prange(K, schedule="static", num_threads=team(n_threads, K)):
            g = _axes(&rois[k, 0], scale, sr, ph, pw)
            n = roi_align_axis_taps(<floating>g.sh, <floating>g.bh, <floating>g.gh, ph, H,
                                    oy[k + 1] - oy[k], &fy[k, 0], &yl[oy[k]], &yh[oy[k]],
                                    &wyl[oy[k]], &wyh[oy[k]], NULL)
            if n != oy[k + 1] - oy[k]:
                changed += 1
            n = roi_align_axis_taps(<floating>g.sw, <floating>g.bw, <floating>g.gw, pw, W,
                                    ox[k + 1] - ox[k], &fx[k, 0], &xl[ox[k]], &xh[ox[k]],
                                    &wxl[ox[k]], &wxh[ox[k]], NULL)
            if n != ox[k + 1] - ox[k]:
                changed += 1
    return changed


# ---------------------------------------------------------------------------- ps_roi_align
def ps_roi_align_forward(const floating[:, :, :, ::1] x, const Py_ssize_t[::1] bstart,
                         const Py_ssize_t[::1] sy, const Py_ssize_t[::1] sx,
                         const Py_ssize_t[::1] yl, const Py_ssize_t[::1] yh,
                         const floating[::1] wyl, const floating[::1] wyh,
                         const Py_ssize_t[::1] xl, const Py_ssize_t[::1] xh,
                         const floating[::1] wxl, const floating[::1] wxh,
                         const double[::1] count, Py_ssize_t ph, Py_ssize_t pw,
                         floating[:, ::1] yt, int n_threads):
    """yt (C, K): y transposed, RoIs in image order (image n's are [bstart[n],
    bstart[n+1])).  One task per input plane (n, c_in), the bin (p, q) =
    divmod(c_in % (ph*pw), pw) of output channel c_in // (ph*pw) for each of the image's
    RoIs: its y taps are [sy[p*K + j], sy[p*K + j + 1]), its x taps likewise (bin-major
    tables, read in order), its value the samples' sum over count[j]."""
    cdef Py_ssize_t C = x.shape[1], W = x.shape[3], K = yt.shape[1], t, j
    cdef _Plane a
    for t in prange(x.shape[0] * C, schedule="dynamic", chunksize=2, nogil=True,
                    num_threads=team(n_threads, x.shape[0] * C)):
        a = _plane(t, C, ph, pw)
        for j in range(bstart[a.n], bstart[a.n + 1]):
            yt[a.ci, j] = _align_sum(&x[a.n, a.ci, 0, 0], W, &yl[0], &yh[0], &wyl[0], &wyh[0],
                                     sy[a.p * K + j], sy[a.p * K + j + 1], &xl[0], &xh[0],
                                     &wxl[0], &wxh[0], sx[a.q * K + j],
                                     sx[a.q * K + j + 1]) / <floating>count[j]


def ps_roi_align_backward(const floating[:, ::1] gyt, const Py_ssize_t[::1] bstart,
                          const Py_ssize_t[::1] sy, const Py_ssize_t[::1] sx,
                          const Py_ssize_t[::1] yl, const Py_ssize_t[::1] yh,
                          const floating[::1] wyl, const floating[::1] wyh,
                          const Py_ssize_t[::1] xl, const Py_ssize_t[::1] xh,
                          const floating[::1] wxl, const floating[::1] wxh,
                          const double[::1] count, Py_ssize_t ph, Py_ssize_t pw,
                          floating[:, :, :, ::1] gx, int n_threads):
    """gx (N, C, H, W), written whole, from gyt (C, K) (grad_y transposed, RoIs in image
    order as in the forward): one task per plane (n, c_in), zeroed, then the bin of each of
    the image's RoIs that reads plane c_in adds its samples' corner weights, RoI by RoI."""
    cdef Py_ssize_t C = gx.shape[1], H = gx.shape[2], W = gx.shape[3], K = gyt.shape[1], t, j
    cdef _Plane a
    for t in prange(gx.shape[0] * C, schedule="dynamic", chunksize=2, nogil=True,
                    num_threads=team(n_threads, gx.shape[0] * C)):
        a = _plane(t, C, ph, pw)
        memset(&gx[a.n, a.ci, 0, 0], 0, H * W * sizeof(floating))
        for j in range(bstart[a.n], bstart[a.n + 1]):
            _align_add(&gx[a.n, a.ci, 0, 0], W, &yl[0], &yh[0], &wyl[0], &wyh[0],
                       sy[a.p * K + j], sy[a.p * K + j + 1], &xl[0], &xh[0], &wxl[0],
                       &wxh[0], sx[a.q * K + j], sx[a.q * K + j + 1], gyt[a.ci, j],
                       <floating>count[j])


# ----------------------------------------------------------------------------- ps_roi_pool
def ps_pool_edges(const floating[:, ::1] rois, double spatial_scale, Py_ssize_t H,
                  Py_ssize_t W, Py_ssize_t[:, ::1] hs, Py_ssize_t[:, ::1] he,
                  Py_ssize_t[:, ::1] ws, Py_ssize_t[:, ::1] we, int n_threads):
    """Every RoI's bin edges (hs, he (K, ph); ws, we (K, pw)), torchvision's ps_roi_pool."""
    cdef Py_ssize_t K = rois.shape[0], ph = hs.shape[1], pw = ws.shape[1], k
    cdef floating scale = <floating>spatial_scale
    with nogil:
        for k in prange(K, schedule="static", num_threads=team(n_threads, K)):
            if floating is float:
                ck_ps_pool_edges_f(rois[k, 2], rois[k, 4], scale, ph, H, &hs[k, 0], &he[k, 0])
                ck_ps_pool_edges_f(rois[k, 1], rois[k, 3], scale, pw, W, &ws[k, 0], &we[k, 0])
            else:
                ck_ps_pool_edges_d(rois[k, 2], rois[k, 4], scale, ph, H, &hs[k, 0], &he[k, 0])
                ck_ps_pool_edges_d(rois[k, 1], rois[k, 3], scale, pw, W, &ws[k, 0], &we[k, 0])


def ps_roi_pool_forward(const floating[:, :, :, ::1] x, const Py_ssize_t[::1] bstart,
                        const Py_ssize_t[:, ::1] hs, const Py_ssize_t[:, ::1] he,
                        const Py_ssize_t[:, ::1] ws, const Py_ssize_t[:, ::1] we,
                        floating[:, ::1] yt, int n_threads):
    """yt (C, K), y transposed, RoIs in image order: one task per input plane (n, c_in), as
    ps_roi_align_forward; edges are bin-major (hs, he (ph, K); ws, we (pw, K)).  An empty bin
    is 0, any other the sum of its cells over their number."""
    cdef Py_ssize_t C = x.shape[1], W = x.shape[3], t, j
    cdef _Plane a
    for t in prange(x.shape[0] * C, schedule="dynamic", chunksize=2, nogil=True,
                    num_threads=team(n_threads, x.shape[0] * C)):
        a = _plane(t, C, hs.shape[0], ws.shape[0])
        for j in range(bstart[a.n], bstart[a.n + 1]):
            if he[a.p, j] <= hs[a.p, j] or we[a.q, j] <= ws[a.q, j]:
                yt[a.ci, j] = 0
            else:
                yt[a.ci, j] = _box_sum(&x[a.n, a.ci, 0, 0], W, hs[a.p, j], he[a.p, j],
                                       ws[a.q, j], we[a.q, j]) / <floating>(
                    (he[a.p, j] - hs[a.p, j]) * (we[a.q, j] - ws[a.q, j]))


def ps_roi_pool_backward(const floating[:, ::1] gyt, const Py_ssize_t[::1] bstart,
                         const Py_ssize_t[:, ::1] hs, const Py_ssize_t[:, ::1] he,
                         const Py_ssize_t[:, ::1] ws, const Py_ssize_t[:, ::1] we,
                         floating[:, :, :, ::1] gx, int n_threads):
    """gx (N, C, H, W), written whole, from gyt (C, K) (grad_y transposed, RoIs in image
    order): one task per plane (n, c_in), zeroed, then each of the image's RoIs adds
    grad / area over the cells of the bin that reads plane c_in, in RoI order."""
    cdef Py_ssize_t C = gx.shape[1], H = gx.shape[2], W = gx.shape[3], t, j
    cdef _Plane a
    for t in prange(gx.shape[0] * C, schedule="dynamic", chunksize=2, nogil=True,
                    num_threads=team(n_threads, gx.shape[0] * C)):
        a = _plane(t, C, hs.shape[0], ws.shape[0])
        memset(&gx[a.n, a.ci, 0, 0], 0, H * W * sizeof(floating))
        for j in range(bstart[a.n], bstart[a.n + 1]):
            if he[a.p, j] > hs[a.p, j] and we[a.q, j] > ws[a.q, j]:
                _box_add(&gx[a.n, a.ci, 0, 0], W, hs[a.p, j], he[a.p, j], ws[a.q, j],
                         we[a.q, j], gyt[a.ci, j] / <floating>(
                             (he[a.p, j] - hs[a.p, j]) * (we[a.q, j] - ws[a.q, j])))
