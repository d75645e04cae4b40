"""Transposed convolution (conv_transpose2d), built on the conv family -- numpy reference.

``conv_transpose2d`` is the adjoint of a conv2d: with the same weight (C_in, C_out/groups, KH,
KW) read as conv2d's (F = C_in, C/groups = C_out/groups), and conv2d's input the shape of y,

* the forward is conv2d's grad_x of ``x`` (conv2d's grad_y),
* grad_x is conv2d_forward(grad_y, weight),
* grad_weight is conv2d's weight gradient with the roles of x and grad_y swapped,

so every backend runs its own conv code (convkit/<backend>/conv.py) and no conv arithmetic is
written twice.

Normalised hook arguments (convkit/functional.py):

* x (array[N, C_in, Hc, Wc]), weight (array[C_in, C_out/groups, KH, KW]), grad_y
  (array[N, C_out, Ho, Wo]), bias (array[C_out] or None): C-contiguous, one float dtype,
  non-empty;
* stride, dilation: (sh, sw), (dh, dw); padding: conv2d's 4-tuple (ph, ph, pw, pw);
* ``out_hw`` (forward): (Ho, Wo), output_padding folded in;
* ``(Hc, Wc)`` is conv2d's output size over y, ``conv_out_size(Ho, KH, sh, 2*ph, dh)``: the
  user's (H, W), except when output_padding >= stride (torch allows that below the dilation):
  then the boundary hands x zero-extended at the bottom/right to (Hc, Wc), and crops the
  (N, C_in, Hc, Wc) grad_x the backward hook returns.
"""
from __future__ import annotations

from . import conv as _conv


# ---- the composition every backend runs with its own conv module ``conv``, which provides
# conv2d_grad_input (grad_x alone), conv2d_forward and conv2d_backward with the hook signatures
def adjoint_forward(conv, x, weight, bias, stride, padding, dilation, groups, out_hw):
    """-> y (array[N, C_out, Ho, Wo]) = conv2d's grad_x of grad_y = x, plus bias."""
    C_out = weight.shape[1] * groups
    y = conv.conv2d_grad_input(x, weight, (x.shape[0], C_out) + tuple(out_hw), stride, padding,
                               dilation, groups)
    if bias is not None:
        y += bias.reshape(1, C_out, 1, 1)
    return y


def _sum_nhw(grad_y):
    return grad_y.sum(axis=(0, 2, 3))


def adjoint_backward(conv, grad_y, x, weight, stride, padding, dilation, groups,
                     needs_input_grad, has_bias, bias_grad=_sum_nhw):
    """-> (grad_x (array[N, C_in, Hc, Wc]) or None, grad_weight, grad_bias or None): grad_x is
    conv2d_forward(grad_y, weight), grad_weight conv2d's with x and grad_y swapped (no grad_x
    asked), grad_bias ``bias_grad(grad_y)``, the sum over (N, Ho, Wo)."""
    gx = conv.conv2d_forward(grad_y, weight, None, stride, padding, dilation, groups) \
        if needs_input_grad else None
    gw = conv.conv2d_backward(x, grad_y, weight, stride, padding, dilation, groups, False,
                              False)[1]
    return gx, gw, (bias_grad(grad_y) if has_bias else None)


# ---- the numpy hooks
def conv_transpose2d_forward(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """-> y (array[N, C_out, Ho, Wo]); see :func:`adjoint_forward`."""
    return adjoint_forward(_conv, x, weight, bias, stride, padding, dilation, groups, out_hw)


def conv_transpose2d_backward(grad_y, x, weight, stride, padding, dilation, groups,
                              needs_input_grad, has_bias):
    """-> (grad_x or None, grad_weight, grad_bias or None); see :func:`adjoint_backward`."""
    return adjoint_backward(_conv, grad_y, x, weight, stride, padding, dilation, groups,
                            needs_input_grad, has_bias)
