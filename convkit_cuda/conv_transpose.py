"""Transposed convolution (conv_transpose2d), built on the conv family -- cuda backend.

The adjoint of conv2d (convkit/reference/conv_transpose.py explains the reading and the hook
arguments), run by convkit_cuda/conv.py: the forward is conv2d's grad_x alone
(``conv2d_grad_input``: cuBLAS GEMM + the col2im gather kernel, or the direct grouped kernel),
grad_x is conv2d_forward(grad_y, weight), grad_weight is conv2d_backward with x and grad_y
swapped and no grad_x.  Deterministic, as conv2d's backward is; the workspace limit applies
per image chunk as there.
"""
from __future__ import annotations

import functools

from convkit.reference.conv_transpose import adjoint_backward, adjoint_forward

from . import conv as _conv

conv_transpose2d_forward = functools.partial(adjoint_forward, _conv)
conv_transpose2d_backward = functools.partial(adjoint_backward, _conv)
