"""Position-sensitive RoI ops (R-FCN): ps_roi_align, ps_roi_pool -- numpy reference.

Semantics are torchvision's ``ps_roi_align`` / ``ps_roi_pool`` kernels
(``csrc/ops/{cpu,cuda}/ps_roi_{align,pool}_kernel``), restated from their rules.  x has
C = C_out * oh * ow channels; output channel c at bin (i, j) reads only input channel
``c*oh*ow + i*ow + j`` (torchvision's ``c_in = (c_out*oh + ph)*ow + pw``), so y is
(K, C_out, oh, ow).

* ps_roi_align: the geometry of roi_align with ``aligned=True`` -- corners scaled by
  spatial_scale minus 0.5, no minimum RoI size (torchvision's comment says "force too small
  RoIs to be 1x1" but its code does not), a grid of ``sampling_ratio`` (> 0) or
  ``ceil(roi_size / pooled)`` samples per axis, the same bilinear rule (samples outside
  [-1, size] add nothing).  Each bin is the sum of its samples over ``count = grid_h * grid_w``.
  One deliberate difference: torchvision divides by that count even when a grid is empty
  (an inverted or zero-size RoI with the adaptive grid), giving 0/0 = NaN or a signed zero; here
  a bin without samples is 0 (count taken as max(grid_h * grid_w, 1) like roi_align), which is
  also what torchvision's backward (no samples, no gradient) implies.
* ps_roi_pool: corners scaled and rounded half away from zero, the RoI
  ``max(round(x2*s) - round(x1*s), 1)`` cells wide (no +1, unlike roi_pool), bin p spans
  ``[floor(p*bin), ceil((p+1)*bin))`` from the start and is clipped to ``[0, H - 1]`` /
  ``[0, W - 1]`` -- torchvision's forward clips to size - 1 (its CPU and CUDA kernels both),
  so the last row and column of the map are never pooled; an empty bin is 0, any other the
  mean of its cells.  The backward here is the exact gradient of that forward (the same
  clip); torchvision's backward clips to [0, H], so on RoIs reaching the last row/column its
  gradient and ours differ there.

Hooks (what the boundary, :mod:`convkit.functional`, hands them -- see :mod:`convkit.backend`):

* ``ps_roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio)``
* ``ps_roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio)``
* ``ps_roi_pool_forward(x, rois, output_size, spatial_scale)``
* ``ps_roi_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale)``

x (N, C, H, W) / grad_y (K, C // (oh*ow), oh, ow) C-contiguous, one float dtype; rois a private
C-contiguous (K, 5) array of that dtype with finite coordinates and integer batch indices in
[0, N) (rows with non-finite coordinates arrive zeroed and their outputs are zeroed after);
output_size a pair of ints with oh*ow dividing C; spatial_scale a positive float;
sampling_ratio an int, -1 for the adaptive grid; input_shape a 4-tuple of ints.  K, N, C, H,
W are all > 0; the result is a new array.
"""
from __future__ import annotations

import numpy as np

from .roi import (_align_bins_exact, _align_bins_exact_backward, _align_rois, _per_sample,
                  _roi_pool_bins, _span, _weight_matrix)


def _own_bins(full, oh, ow):
    """(C, oh, ow) values of every channel at every bin -> (C_out, oh, ow): bin (i, j) of
    output channel c keeps input channel c*oh*ow + i*ow + j."""
    nb = oh * ow
    return np.diagonal(full.reshape(-1, nb, nb), axis1=1, axis2=2).reshape(-1, oh, ow)


# ------------------------------------------------------------------------------- ps_roi_align
def ps_roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio):
    """Position-sensitive RoI align: y (K, C_out, oh, ow), bin (i, j) of channel c the mean of
    the bilinear samples of input channel c*oh*ow + i*ow + j (see the module docstring).

    Finite data go by separability (``A_y[i] @ X @ A_x[j]`` per bin, X the bin's own channel
    plane); where the data under a RoI hold NaN/inf, the per-sample path of roi_align reads
    every corner as the kernel does (a NaN under a zero weight still propagates)."""
    op = "ps_roi_align_forward"
    N, C, H, W = x.shape
    oh, ow = output_size
    co = C // (oh * ow)
    y = np.empty((rois.shape[0], co, oh, ow), x.dtype)
    image_finite = [bool(np.isfinite(x[b]).all()) for b in range(N)]
    for k, b, ty, tx, count in _align_rois(op, rois, output_size, spatial_scale, sampling_ratio,
                                           True, H, W):
        rs, cs = _span(ty), _span(tx)
        if rs is None or cs is None:     # no sample on the map (or an empty grid)
            y[k] = 0
            continue
        planes = x[b].reshape(co, oh, ow, H, W)[..., rs[0]:rs[1], cs[0]:cs[1]]
        if image_finite[b] or np.isfinite(planes).all():
            Ay, Ax = _weight_matrix(ty, *rs), _weight_matrix(tx, *cs)
            sums = np.einsum("ih,cijhw,jw->cij", Ay, planes, Ax, optimize=True)
        else:
            sums = _own_bins(_align_bins_exact(op, x[b], ty, tx), oh, ow)
        y[k] = _per_sample(sums, count)
    return y


def ps_roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale,
                          sampling_ratio):
    """Gradient of :func:`ps_roi_align_forward`: each bin's grad / count goes to the four
    neighbours of every in-range sample, in the bin's own channel plane.  Deterministic."""
    op = "ps_roi_align_backward"
    N, C, H, W = input_shape
    oh, ow = output_size
    nb = oh * ow
    gx = np.zeros(input_shape, grad_y.dtype)
    for k, b, ty, tx, count in _align_rois(op, rois, output_size, spatial_scale, sampling_ratio,
                                           True, H, W):
        rs, cs = _span(ty), _span(tx)
        if rs is None or cs is None:
            continue
        g = _per_sample(grad_y[k], count)                         # (C_out, oh, ow)
        if np.isfinite(g).all():
            Ay, Ax = _weight_matrix(ty, *rs), _weight_matrix(tx, *cs)
            planes = gx[b].reshape(-1, oh, ow, H, W)[..., rs[0]:rs[1], cs[0]:cs[1]]
            planes += np.einsum("ih,cij,jw->cijhw", Ay, g, Ax, optimize=True)
        else:
            # the per-corner adjoint of roi_align, fed the grad of each bin in its own
            # channel and zeros elsewhere (0 * a finite weight adds nothing)
            full = np.zeros((C, oh, ow), g.dtype)
            np.einsum("cbb->cb", full.reshape(-1, nb, nb))[...] = g.reshape(-1, nb)
            _align_bins_exact_backward(op, gx[b], full, ty, tx)
    return gx


# -------------------------------------------------------------------------------- ps_roi_pool
def _ps_pool_bins(rois, output_size, spatial_scale, H, W):
    """roi_pool's bin rule with ps_roi_pool's two differences: the RoI spans
    ``max(round(x2*s) - round(x1*s), 1)`` cells (no +1) and edges clip to [0, H - 1] /
    [0, W - 1] (torchvision's forward)."""
    return _roi_pool_bins(rois, output_size, spatial_scale, H - 1, W - 1, extra_cell=0)


def ps_roi_pool_forward(x, rois, output_size, spatial_scale):
    """Position-sensitive RoI average pool: y (K, C_out, oh, ow), bin (i, j) of channel c the
    mean of input channel c*oh*ow + i*ow + j over the bin's cells, 0 for an empty bin."""
    N, C, H, W = x.shape
    oh, ow = output_size
    K = rois.shape[0]
    dt = x.dtype.type
    y = np.empty((K, C // (oh * ow), oh, ow), x.dtype)
    hs, he, ws, we = _ps_pool_bins(rois, output_size, spatial_scale, H, W)
    batch = rois[:, 0].astype(np.int64)
    for k in range(K):
        planes = x[batch[k]].reshape(-1, oh, ow, H, W)
        for i in range(oh):
            for j in range(ow):
                area = (he[k, i] - hs[k, i]) * (we[k, j] - ws[k, j])
                if he[k, i] <= hs[k, i] or we[k, j] <= ws[k, j]:
                    y[k, :, i, j] = 0
                else:
                    cells = planes[:, i, j, hs[k, i]:he[k, i], ws[k, j]:we[k, j]]
                    y[k, :, i, j] = cells.sum(axis=(1, 2)) / dt(area)
    return y


def ps_roi_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale):
    """Gradient of :func:`ps_roi_pool_forward`: each bin's grad / area added to every cell of
    the bin in its own channel plane, RoI after RoI (a fixed order: the same bits every run)."""
    N, C, H, W = input_shape
    oh, ow = output_size
    dt = grad_y.dtype.type
    gx = np.zeros(input_shape, grad_y.dtype)
    hs, he, ws, we = _ps_pool_bins(rois, output_size, spatial_scale, H, W)
    batch = rois[:, 0].astype(np.int64)
    for k in range(rois.shape[0]):
        planes = gx[batch[k]].reshape(-1, oh, ow, H, W)
        for i in range(oh):
            for j in range(ow):
                if he[k, i] <= hs[k, i] or we[k, j] <= ws[k, j]:
                    continue
                area = (he[k, i] - hs[k, i]) * (we[k, j] - ws[k, j])
                planes[:, i, j, hs[k, i]:he[k, i], ws[k, j]:we[k, j]] += \
                    (grad_y[k, :, i, j] / dt(area))[:, None, None]
    return gx
