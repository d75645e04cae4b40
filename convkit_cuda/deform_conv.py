"""Deformable convolution (deform_conv2d, torchvision semantics) on the GPU: a deformable
im2col kernel + cuBLAS GEMMs (``cupy.matmul``), see ``kernels/deform_conv.cu``; the rule is
stated in convkit/reference/deform_conv.py.

The batch runs in chunks of whole images so that the columns (C*KH*KW*Ho*Wo values per
image; the backward also holds their gradient) stay under ``convkit.get_workspace_limit()``.
grad_x: by default an ``atomicAdd`` scatter (one thread per column entry adds its share to
the four corners it read, as torchvision's CUDA kernel does) -- fast, but where samples share
a pixel the order of the additions varies, so the result may differ in the last bits from run
to run.  Under ``convkit.set_deterministic(True)`` the shares are written out with their pixel
keys and added by the ordered gather of :func:`convkit_cuda.pool.gather_add` -- same bits every
run, four values and four keys more per column entry of workspace.  The offset, mask, weight
and bias gradients are deterministic on both paths.
"""
from __future__ import annotations

import cupy
import numpy as np

from convkit._config import get_deterministic, get_workspace_limit

from ._kernels import grid_for, launch, on_device
from .conv import _gemm_mode
from .pool import gather_add

STEM = "deform_conv"
_I = np.int64


def _chunk(op, x, weight, P, backward):
    """Images per chunk: per image its columns, in the backward also their gradient and, on
    the deterministic path, four (value, key) shares per column entry and the ordered
    gather's three counters and result per input element."""
    N, C, H, W = x.shape
    KK = weight.shape[2] * weight.shape[3]
    item = x.dtype.itemsize
    cols = C * KK * P
    per_image = cols * item
    if backward:
        per_image += cols * item
        if get_deterministic():
            per_image += 4 * cols * (item + 8) + C * H * W * (3 * 8 + item)
    limit = get_workspace_limit()
    if per_image > limit:
        raise MemoryError(f"{op}: one image's deformable columns need {per_image} bytes of "
                          f"workspace, over the workspace limit of {limit} bytes; raise it with "
                          f"convkit.set_workspace_limit()")
    return max(1, min(N, limit // per_image))


def _geometry(x, offset, weight, stride, padding, dilation):
    """The kernels' shape arguments after (x, offset, mask, has_mask, ...): B comes first,
    filled in per chunk."""
    C, H, W = x.shape[1:]
    KH, KW = weight.shape[2:]
    Ho, Wo = offset.shape[2:]
    OG = offset.shape[1] // (2 * KH * KW)
    return (_I(C), _I(H), _I(W), _I(OG), _I(KH), _I(KW), _I(Ho), _I(Wo), _I(stride[0]),
            _I(stride[1]), _I(padding[0]), _I(padding[1]), _I(dilation[0]), _I(dilation[1]))


def _mask_args(mask, x):
    return (mask, _I(1)) if mask is not None else (x, _I(0))   # (never read without a mask)


def _im2col(x, offset, mask, geom, cols):
    B = x.shape[0]
    grid, block = grid_for(cols.size)
    launch(STEM, "deform_im2col", x.dtype, grid, block,
           (x, offset, *_mask_args(mask, x), _I(B), *geom, cols))


def deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask):
    """-> y (N, F, Ho, Wo)."""
    op = "deform_conv2d_forward"
    with on_device(op, x=x, offset=offset, weight=weight, bias=bias, mask=mask), \
            _gemm_mode(x.dtype):
        N, C = x.shape[:2]
        F, Cg, KH, KW = weight.shape
        G, K = C // Cg, Cg * KH * KW
        Ho, Wo = offset.shape[2:]
        P = Ho * Wo
        nb = _chunk(op, x, weight, P, False)
        geom = _geometry(x, offset, weight, stride, padding, dilation)
        y = cupy.empty((N, F, Ho, Wo), dtype=x.dtype)
        cols = cupy.empty((nb, C * KH * KW, P), dtype=x.dtype)
        w3 = weight.reshape(G, F // G, K)
        for n0 in range(0, N, nb):
            n1 = min(N, n0 + nb)
            c = cols[: n1 - n0]
            _im2col(x[n0:n1], offset[n0:n1], None if mask is None else mask[n0:n1], geom, c)
            # (G, Fg, K) @ (b, G, K, P) -> (b, G, Fg, P)
            cupy.matmul(w3, c.reshape(n1 - n0, G, K, P),
                        out=y[n0:n1].reshape(n1 - n0, G, F // G, P))
        if bias is not None:
            y += bias.reshape(1, F, 1, 1)
        return y


def deform_conv2d_backward(grad_y, x, offset, weight, stride, padding, dilation, mask, has_bias):
    """-> (grad_x, grad_offset, grad_weight, grad_bias or None, grad_mask or None).  grad_x
    uses atomics unless ``convkit.set_deterministic(True)`` (see the module docstring)."""
    op = "deform_conv2d_backward"
    with on_device(op, grad_y=grad_y, x=x, offset=offset, weight=weight, mask=mask), \
            _gemm_mode(x.dtype):
        N, C, H, W = x.shape
        F, Cg, KH, KW = weight.shape
        G, K, Fg = C // Cg, Cg * KH * KW, F // (C // Cg)
        Ho, Wo = offset.shape[2:]
        P = Ho * Wo
        dt = x.dtype
        det = get_deterministic()
        nb = _chunk(op, x, weight, P, True)
        geom = _geometry(x, offset, weight, stride, padding, dilation)
        gb = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
        gx = cupy.zeros(x.shape, dtype=dt) if not det else cupy.empty(x.shape, dtype=dt)
        goff = cupy.empty(offset.shape, dtype=dt)
        gm = cupy.empty(mask.shape, dtype=dt) if mask is not None else None
        gw = cupy.zeros((G, Fg, K), dtype=dt)
        cols = cupy.empty((nb, C * KH * KW, P), dtype=dt)
        gcols = cupy.empty((nb, C * KH * KW, P), dtype=dt)
        wt = cupy.ascontiguousarray(weight.reshape(G, Fg, K).transpose(0, 2, 1))   # (G, K, Fg)
        for n0 in range(0, N, nb):
            n1 = min(N, n0 + nb)
            b = n1 - n0
            xs, offs = x[n0:n1], offset[n0:n1]
            ms = None if mask is None else mask[n0:n1]
            c, gc = cols[:b], gcols[:b]
            gy4 = grad_y[n0:n1].reshape(b, G, Fg, P)
            _im2col(xs, offs, ms, geom, c)
            # (b, G, Fg, P) @ (b, G, P, K) -> (b, G, Fg, K), summed over the images in order
            gw += cupy.matmul(gy4, c.reshape(b, G, K, P).transpose(0, 1, 3, 2)).sum(axis=0)
            cupy.matmul(wt, gy4, out=gc.reshape(b, G, K, P))
            grid, block = grid_for(b * offset.shape[1] // 2 * P)
            launch(STEM, "deform_coord_grad", dt, grid, block,
                   (xs, offs, *_mask_args(ms, xs), gc, _I(b), *geom, goff[n0:n1],
                    gm[n0:n1] if gm is not None else goff[n0:n1]))
            grid, block = grid_for(gc.size)
            if det:
                vals = cupy.empty(4 * gc.size, dtype=dt)
                keys = cupy.empty(4 * gc.size, dtype=np.int64)
                launch(STEM, "deform_col2im_keys", dt, grid, block,
                       (offs, *_mask_args(ms, xs), gc, _I(b), *geom, vals, keys))
                gx[n0:n1] = gather_add(vals, keys, b * C * H * W).reshape(b, C, H, W)
            else:
                launch(STEM, "deform_col2im_atomic", dt, grid, block,
                       (offs, *_mask_args(ms, xs), gc, _I(b), *geom, gx[n0:n1]))
        return gx, goff, gw.reshape(weight.shape), gb, gm
