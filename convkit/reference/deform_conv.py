"""Reference (NumPy) deformable convolution, ``torchvision.ops.deform_conv2d`` semantics:
deformable im2col (bilinear samples at offset positions, times the modulation mask) + one
GEMM per weight group, and the exact adjoints.

The rule (DCN v1, and v2 with a mask; restated from torchvision's documentation and kernels)::

    y[n, f, ho, wo] = bias[f] + sum_{c in group(f), i, j} weight[f, c, i, j] * col[n, c, i, j, ho, wo]
    col[n, c, i, j, ho, wo] = m * sample(x[n, c], py, px)
    py = ho*sh - ph + i*dh + offset[n, 2*(g*KH*KW + i*KW + j),     ho, wo]
    px = wo*sw - pw + j*dw + offset[n, 2*(g*KH*KW + i*KW + j) + 1, ho, wo]
    m  = mask[n, g*KH*KW + i*KW + j, ho, wo]          (1 without a mask)

with ``g = c // (C / offset_groups)`` the offset group of input channel c: the offset channels
are ordered (offset group, kernel row i, kernel column j, (dy, dx)), the mask channels
(offset group, i, j).  ``offset_groups = offset.shape[1] // (2*KH*KW)``; weight groups are
``C // weight.shape[1]``.

``sample`` is torchvision's bilinear rule for deformable convolution: a point with
``py <= -1``, ``py >= H``, ``px <= -1`` or ``px >= W`` samples 0; otherwise, with
``hl = floor(py)``, ``wl = floor(px)``, ``lh = py - hl``, ``lw = px - wl``, ``hh = 1 - lh``,
``hw = 1 - lw``, it is ``hh*hw*v1 + hh*lw*v2 + lh*hw*v3 + lh*lw*v4`` (in that order), where
v1..v4 are x at (hl, wl), (hl, wl+1), (hl+1, wl), (hl+1, wl+1) and a corner outside the image
is 0 (not read: a NaN there does not leak in).  No clamping to the edge (unlike roi_align).
A NaN coordinate samples NaN (torchvision's weights are NaN there); in the backward it adds
nothing to grad_x and makes its grad_offset pair and grad_mask NaN.

Gradients: d col / d offset is the derivative of the bilinear sample inside its cell
(torchvision's coordinate weight: ``lw*(v4 - v2) + hw*(v3 - v1)`` along y,
``lh*(v4 - v3) + hh*(v2 - v1)`` along x), times m.  Like torchvision's it looks at the
corners only, not at the sampled range: a point on the edge y = -1 or x = -1 samples 0 but
gets the derivative from inside (so at integer positions -- zero-initialised offsets -- every
offset gradient is the derivative towards larger offsets); a point with y < -1, y >= H,
x < -1 or x >= W gets 0.  d col / d m is the sample; grad_x scatters each column gradient
times m back to the four corners of the points in the sampled range.

What the boundary (:mod:`convkit.functional`) hands the hooks: C-contiguous arrays of one
float dtype; stride, padding and dilation as pairs ``(h, w)`` of Python ints (padding is
symmetric, as torchvision's); offset of shape (N, 2*OG*KH*KW, Ho, Wo) with OG dividing C,
mask None or (N, OG*KH*KW, Ho, Wo); N, C, H, W, F all > 0; and one image's columns
(C*KH*KW*Ho*Wo values) fit the workspace limit.
"""
from __future__ import annotations

import numpy as np


def _out_hw(H, W, KH, KW, stride, padding, dilation):
    from .._shapes import conv_out_size

    return (conv_out_size(H, KH, stride[0], 2 * padding[0], dilation[0]),
            conv_out_size(W, KW, stride[1], 2 * padding[1], dilation[1]))


class _Samples:
    """Every sample point of every (image, offset group, tap, output position), flattened to
    S = KH*KW*Ho*Wo points per (n, g): arrays of shape (N, OG, 1, S) that broadcast over the
    channels of a group."""

    def __init__(self, x, offset, KH, KW, stride, padding, dilation):
        N, C, H, W = x.shape
        Ho, Wo = offset.shape[2:]
        OG = offset.shape[1] // (2 * KH * KW)
        dt = x.dtype
        off = offset.reshape(N, OG, KH, KW, 2, Ho, Wo)
        # integer part of each position (exact in the dtype), then the offset is added
        base_h = (np.arange(Ho)[None, :] * stride[0] - padding[0]
                  + np.arange(KH)[:, None] * dilation[0]).astype(dt)       # (KH, Ho)
        base_w = (np.arange(Wo)[None, :] * stride[1] - padding[1]
                  + np.arange(KW)[:, None] * dilation[1]).astype(dt)       # (KW, Wo)
        py = base_h[:, None, :, None] + off[:, :, :, :, 0]                 # (N,OG,KH,KW,Ho,Wo)
        px = base_w[None, :, None, :] + off[:, :, :, :, 1]
        shape = (N, OG, 1, KH * KW * Ho * Wo)
        py, px = py.reshape(shape), px.reshape(shape)
        self.nan = np.isnan(py) | np.isnan(px)
        self.inside = (py > -1) & (py < H) & (px > -1) & (px < W)      # sampled range
        self.closed = (py >= -1) & (py < H) & (px >= -1) & (px < W)    # + the edges y, x = -1
        # points outside take the place of (0, 0): their results are replaced below, and no
        # inf or NaN reaches floor() or an index
        py = np.where(self.closed, py, dt.type(0))
        px = np.where(self.closed, px, dt.type(0))
        hl, wl = np.floor(py), np.floor(px)
        self.lh, self.lw = py - hl, px - wl
        self.hh, self.hw = dt.type(1) - self.lh, dt.type(1) - self.lw
        hl, wl = hl.astype(np.int64), wl.astype(np.int64)
        self.H, self.W = H, W
        # corners in the order v1 (hl, wl), v2 (hl, wl+1), v3 (hl+1, wl), v4 (hl+1, wl+1)
        self.corners = []
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            h, w = hl + dy, wl + dx
            ok = self.closed & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            self.corners.append((np.where(ok, h * W + w, 0), ok))

    def weights(self):
        return (self.hh * self.hw, self.hh * self.lw, self.lh * self.hw, self.lh * self.lw)

    def values(self, xg):
        """v1..v4 for every channel: xg (N, OG, Cog, H*W) -> four (N, OG, Cog, S) arrays,
        0 at corners outside the image."""
        zero = xg.dtype.type(0)
        return [np.where(ok, np.take_along_axis(xg, np.broadcast_to(
            idx, xg.shape[:3] + idx.shape[3:]), axis=3), zero) for idx, ok in self.corners]

    def finish(self, v, closed=False):
        """Apply the point rules to a per-sample result v: 0 outside the sampled range (outside
        the closed one for the coordinate weights), NaN at a NaN point."""
        v = np.where(self.closed if closed else self.inside, v, v.dtype.type(0))
        return np.where(self.nan, v.dtype.type(np.nan), v)


def _sample(s, vals):
    w1, w2, w3, w4 = s.weights()
    v1, v2, v3, v4 = vals
    return s.finish(w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4)


def _columns(x, offset, mask, KH, KW, stride, padding, dilation):
    """-> (cols (N, C*KH*KW, Ho*Wo) rows ordered (c, i, j) like weight[f].ravel(), the
    unmasked samples (N, OG, Cog, S), the _Samples, the group views)."""
    N, C, H, W = x.shape
    Ho, Wo = offset.shape[2:]
    OG = offset.shape[1] // (2 * KH * KW)
    s = _Samples(x, offset, KH, KW, stride, padding, dilation)
    xg = x.reshape(N, OG, C // OG, H * W)
    vals = s.values(xg)
    sampled = _sample(s, vals)                                   # (N, OG, Cog, S)
    cols = sampled if mask is None else mask.reshape(N, OG, 1, -1) * sampled
    return cols.reshape(N, C * KH * KW, Ho * Wo), sampled, s, vals


@np.errstate(invalid="ignore", over="ignore")     # NaN and inf propagate, as in torch
def deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask):
    """Deformable 2-D convolution.

    Args:
        x (array[N, C, H, W]), offset (array[N, 2*OG*KH*KW, Ho, Wo]), weight
        (array[F, C/groups, KH, KW]), bias (array[F] or None), mask (array[N, OG*KH*KW, Ho, Wo]
        or None); stride, padding, dilation: pairs.

    Returns:
        y (array[N, F, Ho, Wo]).
    """
    N, C = x.shape[:2]
    F, Cg, KH, KW = weight.shape
    G = C // Cg
    Ho, Wo = offset.shape[2:]
    cols, _, _, _ = _columns(x, offset, mask, KH, KW, stride, padding, dilation)
    # (1, G, Fg, K) @ (N, G, K, P) -> (N, G, Fg, P): one GEMM per image and group
    y = np.matmul(weight.reshape(1, G, F // G, Cg * KH * KW),
                  cols.reshape(N, G, Cg * KH * KW, Ho * Wo))
    y = y.reshape(N, F, Ho, Wo)
    if bias is not None:
        y += bias.reshape(1, F, 1, 1)
    return y


@np.errstate(invalid="ignore", over="ignore")
def deform_conv2d_backward(grad_y, x, offset, weight, stride, padding, dilation, mask, has_bias):
    """Gradients of :func:`deform_conv2d_forward`.

    Returns:
        (grad_x (array[N, C, H, W]), grad_offset (like offset), grad_weight (like weight),
        grad_bias (array[F]) or None when not has_bias, grad_mask (like mask) or None when
        mask is None), all in the input dtype.
    """
    N, C, H, W = x.shape
    F, Cg, KH, KW = weight.shape
    G = C // Cg
    Ho, Wo = offset.shape[2:]
    OG = offset.shape[1] // (2 * KH * KW)
    Cog, K, P = C // OG, Cg * KH * KW, Ho * Wo
    cols, sampled, s, vals = _columns(x, offset, mask, KH, KW, stride, padding, dilation)
    gy = grad_y.reshape(N, G, F // G, P)

    # dL/dW[g] = sum_n dY[n, g] @ cols[n, g]^T
    grad_w = np.matmul(gy, cols.reshape(N, G, K, P).transpose(0, 1, 3, 2)).sum(axis=0)
    grad_w = grad_w.reshape(weight.shape).astype(x.dtype, copy=False)
    grad_b = grad_y.sum(axis=(0, 2, 3)) if has_bias else None

    # dL/dcols = W^T @ dY, regrouped by offset group: (N, OG, Cog, S)
    gcols = np.matmul(weight.reshape(1, G, F // G, K).transpose(0, 1, 3, 2), gy)
    gcols = gcols.reshape(N, OG, Cog, KH * KW * P)
    m = None if mask is None else mask.reshape(N, OG, 1, -1)

    grad_mask = None
    if mask is not None:
        grad_mask = (gcols * sampled).sum(axis=2).reshape(mask.shape)
    gs = gcols if m is None else gcols * m          # dL/d(unmasked sample)

    # d sample / d py and / d px inside the cell
    v1, v2, v3, v4 = vals
    dpy = s.finish(s.lw * (v4 - v2) + s.hw * (v3 - v1), closed=True)
    dpx = s.finish(s.lh * (v4 - v3) + s.hh * (v2 - v1), closed=True)
    goff = np.stack([(gs * dpy).sum(axis=2), (gs * dpx).sum(axis=2)], axis=-1)  # (N,OG,S,2)
    goff = goff.reshape(N, OG, KH * KW, Ho, Wo, 2).transpose(0, 1, 2, 5, 3, 4)
    grad_offset = np.ascontiguousarray(goff).reshape(offset.shape)

    # grad_x: each corner that was read gets gs * its bilinear weight, summed per pixel
    # (np.bincount over a flat (n, c, pixel) key: one pass, no np.add.at)
    chan = (np.arange(N)[:, None, None, None] * C
            + np.arange(C).reshape(1, OG, Cog, 1)) * (H * W)          # (N, OG, Cog, 1)
    keys, wts = [], []
    for (idx, ok), w in zip(s.corners, s.weights()):
        sel = np.broadcast_to(ok & s.inside, gs.shape)     # (a NaN point reads no corner)
        keys.append((chan + idx)[sel])
        wts.append((gs * w)[sel])
    grad_x = np.bincount(np.concatenate(keys), weights=np.concatenate(wts),
                         minlength=N * C * H * W).astype(x.dtype).reshape(x.shape)
    return grad_x, grad_offset, grad_w, grad_b, grad_mask
