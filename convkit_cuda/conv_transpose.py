"""Transposed convolution (conv_transpose2d), built on the conv family -- cuda backend.

The adjoint of conv2d (convkit/reference/conv_transpose.py explains the reading and the hook
arguments), run by convkit_cuda/conv.py: the forward is conv2d's grad_x alone
(``conv2d_grad_input``: cuBLAS GEMM + the col2im gather kernel, or the direct grouped kernel),
grad_x is conv2d_forward(grad_y, weight), grad_weight is conv2d_backward with x and grad_y
swapped and no grad_x.  Deterministic, as conv2d's backward is; the workspace limit applies
per image chunk as there.
"""
from __future__ import annotations

from . import conv as _conv


def conv_transpose2d_forward(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """-> y (array[N, C_out, Ho, Wo]) = conv2d's grad_x of grad_y = x, plus bias."""
    C_out = weight.shape[1] * groups
    y = _conv.conv2d_grad_input(x, weight, (x.shape[0], C_out) + tuple(out_hw), stride,
                                padding, dilation, groups)
    if bias is not None:
        y += bias.reshape(1, C_out, 1, 1)
    return y


def conv_transpose2d_backward(grad_y, x, weight, stride, padding, dilation, groups,
                              needs_input_grad, has_bias):
    """-> (grad_x (array[N, C_in, Hc, Wc]) or None, grad_weight, grad_bias or None)."""
    gx = _conv.conv2d_forward(grad_y, weight, None, stride, padding, dilation, groups) \
        if needs_input_grad else None
    gw = _conv.conv2d_backward(x, grad_y, weight, stride, padding, dilation, groups, False,
                               False)[1]
    gb = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
    return gx, gw, gb
