"""Reference (NumPy) 2-D convolution: im2col + one GEMM per group, and the exact adjoints.

Semantics are ``torch.nn.functional.conv2d``: a cross-correlation (no kernel flip), as in the
lecture::

    y[n, f, oh, ow] = bias[f] + sum_{c in group(f), i, j}
                      weight[f, c, i, j] * xpad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]

where ``xpad`` is ``x`` zero-padded by (top, bottom, left, right) and ``g = f // (F/groups)``.

Layout of the column array (the "im2col" buffer) used by forward and backward::

    cols (array[G, Cg*KH*KW, N*Ho*Wo])     rows ordered (c, i, j) like weight[f].ravel()

so the forward is ``weight.reshape(G, Fg, Cg*KH*KW) @ cols`` -- one GEMM per group whose inner
dimension is the whole receptive field -- and the backward is the two transposed GEMMs plus a
"col2im" scatter-add.  Putting N inside the GEMM's column dimension (rather than looping over
images) makes grad_weight a single GEMM that contracts over every image and pixel at once.

Precision: the GEMMs run in the input dtype (float32 stays float32) through ``np.matmul``, i.e.
BLAS ``sgemm``/``dgemm`` with their blocked accumulation -- the same arithmetic torch's CPU
path performs, with error growing like K*eps for an inner dimension K = Cg*KH*KW (or N*Ho*Wo
for grad_weight).  Only the pixel-level copies are Python loops over the KH*KW kernel offsets;
nothing loops per pixel.
"""
from __future__ import annotations

import numpy as np


def _pad(x, padding):
    """Zero-pad the two spatial axes of x (N, C, H, W) by (top, bottom, left, right)."""
    top, bottom, left, right = padding
    if top == bottom == left == right == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def _window_slices(i, j, stride, dilation, out_hw):
    """The (rows, cols) slices of the padded plane that kernel offset (i, j) reads for every
    output pixel: row oh*sh + i*dh for oh in [0, Ho), and likewise for columns."""
    (sh, sw), (dh, dw), (Ho, Wo) = stride, dilation, out_hw
    return (slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw))


def _im2col(xpad, KH, KW, stride, dilation, out_hw, groups):
    """xpad (N, C, Hp, Wp) -> cols (G, Cg*KH*KW, N*Ho*Wo), rows in weight order (c, i, j)."""
    N, C = xpad.shape[:2]
    Ho, Wo = out_hw
    cols = np.empty((C, KH, KW, N, Ho, Wo), dtype=xpad.dtype)
    for i in range(KH):
        for j in range(KW):
            rows, cs = _window_slices(i, j, stride, dilation, out_hw)
            # (N, C, Ho, Wo) -> (C, N, Ho, Wo): channel first so a group is a contiguous block
            cols[:, i, j] = xpad[:, :, rows, cs].transpose(1, 0, 2, 3)
    return cols.reshape(groups, (C // groups) * KH * KW, N * Ho * Wo)


def _col2im(dcols, xpad_shape, KH, KW, stride, dilation, out_hw):
    """Adjoint of :func:`_im2col`: dcols (G, Cg*KH*KW, N*Ho*Wo) -> gxpad (N, C, Hp, Wp).

    Every kernel offset adds into a strided slice; within one slice the positions are
    distinct, so a plain ``+=`` is a correct scatter-add (no ``np.add.at`` needed).  Offsets
    are visited in a fixed order, so the result is deterministic.
    """
    N, C, Hp, Wp = xpad_shape
    Ho, Wo = out_hw
    d = dcols.reshape(C, KH, KW, N, Ho, Wo)
    gxpad = np.zeros(xpad_shape, dtype=dcols.dtype)
    for i in range(KH):
        for j in range(KW):
            rows, cs = _window_slices(i, j, stride, dilation, out_hw)
            gxpad[:, :, rows, cs] += d[:, i, j].transpose(1, 0, 2, 3)
    return gxpad


def _out_hw(H, W, KH, KW, stride, padding, dilation):
    # same formula as convkit._shapes.conv_out_size, on the already split padding
    top, bottom, left, right = padding
    Ho = (H + top + bottom - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    Wo = (W + left + right - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    return Ho, Wo


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out=None):
    """2-D cross-correlation.

    Args:
        x (array[N, C, H, W]), weight (array[F, C/groups, KH, KW]), bias (array[F] or None),
        all one float dtype, C-contiguous.
        stride, dilation: (sh, sw), (dh, dw).  padding: (top, bottom, left, right).
        groups: input channel group g feeds output channels [g*F/G, (g+1)*F/G).
        out: optional C-contiguous array[N, F, Ho, Wo] of the dtype to write y into.

    Returns:
        y (array[N, F, Ho, Wo]) with ``Ho = (H + top + bottom - dh*(KH-1) - 1)//sh + 1``.
    """
    N, C, H, W = x.shape
    F, Cg, KH, KW = weight.shape
    G = groups
    Ho, Wo = _out_hw(H, W, KH, KW, stride, padding, dilation)
    cols = _im2col(_pad(x, padding), KH, KW, stride, dilation, (Ho, Wo), G)
    # (G, Fg, K) @ (G, K, N*P) -> (G, Fg, N*P)
    ycols = np.matmul(weight.reshape(G, F // G, Cg * KH * KW), cols)
    y = out if out is not None else np.empty((N, F, Ho, Wo), dtype=x.dtype)
    # (G*Fg = F, N, Ho, Wo) -> (N, F, Ho, Wo): the one copy into the caller-visible layout
    y[...] = ycols.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)
    if bias is not None:
        y += bias.reshape(1, F, 1, 1)
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, needs_input_grad,
                    has_bias):
    """Gradients of :func:`conv2d_forward` with respect to x, weight and bias.

    Args:
        grad_y (array[N, F, Ho, Wo]); x, weight, stride, padding, dilation, groups as in the
        forward.  needs_input_grad=False skips grad_x (and its col2im); has_bias=False skips
        grad_bias.

    Returns:
        (grad_x (array[N, C, H, W]) or None, grad_weight (array[F, C/groups, KH, KW]),
        grad_bias (array[F]) or None), all in the input dtype.
    """
    grad_w = conv2d_grad_weight(grad_y, x, weight.shape, stride, padding, dilation, groups)
    grad_b = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
    grad_x = None
    if needs_input_grad:
        grad_x = conv2d_grad_input(grad_y, weight, x.shape, stride, padding, dilation, groups)
    return grad_x, grad_w, grad_b


def _gy_gemm(grad_y, groups):
    """grad_y in the GEMM layout (G, Fg, N*P), matching ycols in the forward."""
    N, F, Ho, Wo = grad_y.shape
    return grad_y.transpose(1, 0, 2, 3).reshape(groups, F // groups, N * Ho * Wo)


def conv2d_grad_weight(grad_y, x, w_shape, stride, padding, dilation, groups):
    """grad_weight (array[w_shape]) of :func:`conv2d_forward` alone (conv_transpose2d's weight
    gradient is this with the roles of x and grad_y swapped)."""
    F, Cg, KH, KW = w_shape
    Ho, Wo = grad_y.shape[2:]
    cols = _im2col(_pad(x, padding), KH, KW, stride, dilation, (Ho, Wo), groups)
    # dL/dW[g] = dY[g] @ cols[g]^T: one GEMM contracting over every image and output pixel
    return np.matmul(_gy_gemm(grad_y, groups), cols.transpose(0, 2, 1)).reshape(F, Cg, KH, KW)


def conv2d_grad_input(grad_y, weight, x_shape, stride, padding, dilation, groups):
    """grad_x (array[x_shape]) of :func:`conv2d_forward` alone (conv_transpose2d's forward)."""
    N, C, H, W = x_shape
    F, Cg, KH, KW = weight.shape
    G = groups
    Ho, Wo = grad_y.shape[2:]
    top, bottom, left, right = padding
    # dL/dcols[g] = W[g]^T @ dY[g], then scatter each column back to the pixels it came from
    dcols = np.matmul(weight.reshape(G, F // G, Cg * KH * KW).transpose(0, 2, 1),
                      _gy_gemm(grad_y, G))
    gxpad = _col2im(dcols, (N, C, H + top + bottom, W + left + right), KH, KW, stride, dilation,
                    (Ho, Wo))
    # gradient that landed in the zero padding belongs to no input: crop it away
    return np.ascontiguousarray(gxpad[:, :, top:top + H, left:left + W])
