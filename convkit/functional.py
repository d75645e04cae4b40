"""The public ops: validate once, normalise, dispatch to the active backend's hooks.

Every op takes ``backend=None``: a backend name or a :class:`~convkit.backend.Backend` object
runs that call there without changing the selected backend.  A Backend object's public ops
(``convkit.get_backend("cpu").conv2d_forward(...)``) are these functions with ``backend=self``.

Semantics are PyTorch's (``torch.nn.functional``) and torchvision's (``torchvision.ops``);
see shared/DESIGN.md.  All image tensors are NCHW, float32 or float64, one dtype per call.
Inputs need not be contiguous; the boundary makes one C-contiguous copy where needed.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from . import _validate as V
from ._config import get_workspace_limit
from ._registry import get_backend
from .backend import Backend
from ._shapes import conv_out_size, pool_out_size, same_padding
from .boxes import score_order
from .reference.roi_variants import argmax_dtype

__all__ = [
    "conv2d_forward", "conv2d_backward",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "batch_norm_forward", "batch_norm_backward",
    "roi_pool_forward", "roi_pool_backward", "roi_align_forward", "roi_align_backward",
    "nms", "batched_nms", "box_iou", "asarray", "to_numpy",
]


_BACKEND_TYPES: set = set()     # Backend subclasses seen: an exact type check, not ABCMeta's


def _backend(backend):
    """The Backend an op runs on: ``backend`` (a name or a Backend object), else the selected
    one.  Naming one runs that call there; it does not change the selection."""
    if type(backend) in _BACKEND_TYPES:     # every op passes through here twice (the wrapper)
        return backend
    if backend is None or isinstance(backend, str):
        return get_backend(backend)
    if isinstance(backend, Backend):
        _BACKEND_TYPES.add(type(backend))
        return backend
    raise TypeError(f"backend must be None, a backend name or a convkit.Backend, got "
                    f"{type(backend).__name__}")


def _on_inputs_device(fn):
    """Run op ``fn``'s boundary work on the device of its first array argument
    (:meth:`Backend.device_of`): copies, casts and zero fills made here then land beside the
    inputs whatever the current device is, and the hooks see arrays of one device.

    The wrapper is generated with ``fn``'s own parameters (its defaults shared), so a call on
    a host backend passes them straight on: a ``*args, **kwargs`` wrapper repacked them, ~0.3
    us of every op."""
    params = inspect.signature(fn).parameters.values()
    pos = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "backend"]
    if len(pos) + len(kw) + 1 != len(params):   # (every op: plain parameters, backend=None)
        raise TypeError(f"{fn.__name__}: an op takes named parameters and backend=None only")
    call = ", ".join(pos + [f"{n}={n}" for n in kw])
    src = (f"def {fn.__name__}({', '.join(pos)}, *, {''.join(n + ', ' for n in kw)}backend):\n"
           f"    be = _backend(backend)\n"
           f"    if type(be).device_of is _HOST:    # host backends: nothing to switch\n"
           f"        return fn({call}, backend=be)\n"
           f"    return _on_device(fn, be, ({''.join(n + ', ' for n in pos)}), "
           f"{{{', '.join(f'{n!r}: {n}' for n in kw)}}})\n")
    scope = {"fn": fn, "_backend": _backend, "_HOST": Backend.device_of,
             "_on_device": _on_device}
    exec(src, scope)
    op = functools.update_wrapper(scope[fn.__name__], fn)
    op.__defaults__, op.__kwdefaults__ = fn.__defaults__, fn.__kwdefaults__
    return op


def _on_device(fn, be, args, kwargs):
    """fn(*args, **kwargs) on backend ``be``, under ``be.device_of`` its first native array."""
    for a in (*args, *kwargs.values()):
        if be.is_native(a):
            with be.device_of(a):
                return fn(*args, backend=be, **kwargs)
    return fn(*args, backend=be, **kwargs)


def _c(be, a):
    return a if a is None or a.flags.c_contiguous else be.xp.ascontiguousarray(a)


# The argument checks of the conv and max-pool ops read only metadata: the arrays' types,
# shapes and dtypes and the plain parameters.  A training step repeats the same few
# combinations each step, so one that passed is remembered (per op, at most _MEMO_MAX) with
# what the checks derived, and a repeat skips re-deriving it: ~5-10 us a call at LeNet5's
# sizes.  Any other combination -- a parameter that is not a plain int, str, None or pair of
# ints (True == 1 and 2.0 == 2, but the checks refuse them), a backend whose is_native is not
# the type test -- takes the full checks, so the errors are those of the checks, in their
# order.  Average pooling likewise.  Batch norm remembers its metadata checks the same way
# (momentum and eps plain floats, training a bool); what depends on the arrays' memory -- the
# running statistics' contiguity, writeability and overlap with the other arguments -- is
# checked on every call.
_MEMO_MAX = 256
_MEMO: dict = {}
_TYPE_TEST = Backend.is_native


def _plain(*params):
    """Every parameter a plain int, str, None or pair of ints."""
    for v in params:
        t = type(v)
        if not (t is int or t is str or v is None or (t is tuple and len(v) == 2
                                                      and type(v[0]) is int
                                                      and type(v[1]) is int)):
            return False
    return True


def _memo_get(key):
    """The value remembered for ``key`` (None: none, or an unhashable shape)."""
    try:
        return _MEMO.get(key)
    except TypeError:
        return None


def _memo_put(key, value):
    if key is not None:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = value


# ---------------------------------------------------------------------------------------- conv
def _conv_args(op, be, x, weight, stride, padding, dilation, groups):
    V.array(op, "x", x, be, 4, "(N, C, H, W)")
    V.array(op, "weight", weight, be, 4, "(F, C/groups, KH, KW)")
    groups = V.positive_int(op, "groups", groups)
    N, C, H, W = x.shape
    F, Cg, KH, KW = weight.shape
    if C % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C={C}")
    if F % groups:
        raise ValueError(f"{op}: groups={groups} must divide the output channels F={F}")
    if Cg != C // groups:
        raise ValueError(f"{op}: weight has {Cg} input channels per group but x has C={C} "
                         f"channels and groups={groups} (expected weight.shape[1] = {C // groups})")
    if KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {tuple(weight.shape)}")
    stride = V.pair(op, "stride", stride, minimum=1)
    dilation = V.pair(op, "dilation", dilation, minimum=1)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            pad4 = (0, 0, 0, 0)
        elif mode == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride={stride}")
            pad4 = same_padding(KH, dilation[0]) + same_padding(KW, dilation[1])
        else:
            raise ValueError(f"{op}: padding must be an int, a pair, 'same' or 'valid', "
                             f"got {padding!r}")
    else:
        ph, pw = V.pair(op, "padding", padding, minimum=0)
        pad4 = (ph, ph, pw, pw)
    Ho = conv_out_size(H, KH, stride[0], pad4[0] + pad4[1], dilation[0])
    Wo = conv_out_size(W, KW, stride[1], pad4[2] + pad4[3], dilation[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: output size would be {Ho}x{Wo} (< 1) for input {H}x{W}, kernel "
                         f"{KH}x{KW}, stride {stride}, padding {pad4}, dilation {dilation}")
    return stride, pad4, dilation, groups, (N, F, Ho, Wo)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, out=None,
                   backend=None):
    """2-D cross-correlation, ``torch.nn.functional.conv2d`` semantics.

    x (array[N, C, H, W]), weight (array[F, C/groups, KH, KW]), bias (array[F] or None).
    padding: int, pair, ``"same"`` (stride 1; an odd total goes to the bottom/right, as torch)
    or ``"valid"``.  Returns y (array[N, F, Ho, Wo]) with
    ``Ho = (H + 2*ph - dh*(KH-1) - 1)//sh + 1``.  ``out``: optional C-contiguous buffer for y.
    """
    op = "conv2d_forward"
    be = _backend(backend)
    key = hit = None
    if out is None and type(be).is_native is _TYPE_TEST and _plain(stride, padding, dilation,
                                                                    groups):
        try:
            key = (op, be, type(x), x.shape, x.dtype, type(weight), weight.shape, weight.dtype,
                   None if bias is None else (type(bias), bias.shape, bias.dtype),
                   stride, padding, dilation, groups)
        except AttributeError:      # (not an array: the checks say so)
            key = None
        hit = _memo_get(key)
    if hit is not None:
        return be._conv2d_forward(_c(be, x), _c(be, weight), _c(be, bias), *hit, out=None)
    stride, pad4, dilation, groups, yshape = _conv_args(op, be, x, weight, stride, padding,
                                                        dilation, groups)
    if bias is not None:
        V.array(op, "bias", bias, be, 1, "(F,)")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    dt = V.float_dtype(op, x=x, weight=weight, bias=bias)
    out = V.out_buffer(op, out, be, yshape, dt)
    V.no_overlap(op, be, out, x=x, weight=weight, bias=bias)
    xp = be.xp
    if x.size == 0 or weight.size == 0:   # N = 0, F = 0 or C = 0: nothing to correlate
        y = out if out is not None else xp.empty(yshape, dtype=dt)
        y[...] = 0 if bias is None else bias.reshape(1, -1, 1, 1)
        return y
    _memo_put(key, (stride, pad4, dilation, groups))
    return be._conv2d_forward(_c(be, x), _c(be, weight), _c(be, bias), stride, pad4, dilation,
                             groups, out=out)


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    needs_input_grad=True, has_bias=True, *, backend=None):
    """Gradients of :func:`conv2d_forward`: returns (grad_x or None, grad_weight, grad_bias or None).

    ``needs_input_grad=False`` skips grad_x (a first layer needs none); ``has_bias=False``
    skips grad_bias.
    """
    op = "conv2d_backward"
    be = _backend(backend)
    key = hit = None
    if type(be).is_native is _TYPE_TEST and _plain(stride, padding, dilation, groups):
        try:
            key = (op, be, type(grad_y), grad_y.shape, grad_y.dtype, type(x), x.shape, x.dtype,
                   type(weight), weight.shape, weight.dtype, stride, padding, dilation, groups)
        except AttributeError:
            key = None
        hit = _memo_get(key)
    if hit is not None:
        return be._conv2d_backward(_c(be, grad_y), _c(be, x), _c(be, weight), *hit,
                                   bool(needs_input_grad), bool(has_bias))
    stride, pad4, dilation, groups, yshape = _conv_args(op, be, x, weight, stride, padding,
                                                        dilation, groups)
    V.array(op, "grad_y", grad_y, be, 4, "(N, F, Ho, Wo)")
    V.grad_shape(op, "grad_y", grad_y, yshape)
    dt = V.float_dtype(op, grad_y=grad_y, x=x, weight=weight)
    if x.size == 0 or weight.size == 0:
        return _empty_conv_grads(be.xp, grad_y, x, weight, dt, needs_input_grad, has_bias)
    _memo_put(key, (stride, pad4, dilation, groups))
    return be._conv2d_backward(_c(be, grad_y), _c(be, x), _c(be, weight), stride, pad4, dilation,
                              groups, bool(needs_input_grad), bool(has_bias))


def _empty_conv_grads(xp, grad_y, x, weight, dt, needs_input_grad, has_bias):
    """A conv's (or conv_transpose's) gradients when x or weight is empty: zeros, and
    grad_bias the sum of grad_y."""
    gx = xp.zeros(x.shape, dt) if needs_input_grad else None
    gb = grad_y.sum(axis=(0, 2, 3)).astype(dt) if has_bias else None
    return gx, xp.zeros(weight.shape, dt), gb


# ------------------------------------------------------------------------------------- pooling
def _pool_args(op, be, x, kernel_size, stride, padding, dilation, ceil_mode):
    V.array(op, "x", x, be, 4, "(N, C, H, W)")
    k = V.pair(op, "kernel_size", kernel_size, minimum=1)
    s = k if stride is None else V.pair(op, "stride", stride, minimum=1)
    p = V.pair(op, "padding", padding, minimum=0)
    d = V.pair(op, "dilation", dilation, minimum=1)
    for i in range(2):
        if p[i] > k[i] // 2:   # torch's rule, with or without dilation
            raise ValueError(f"{op}: padding {p} must be at most half the kernel size {k}")
    H, W = x.shape[2:]
    if H == 0 or W == 0:   # torch refuses too: every window would be padding only
        raise ValueError(f"{op}: x must have non-zero height and width, got shape {tuple(x.shape)}")
    Ho = pool_out_size(H, k[0], s[0], p[0], d[0], bool(ceil_mode))
    Wo = pool_out_size(W, k[1], s[1], p[1], d[1], bool(ceil_mode))
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: output size would be {Ho}x{Wo} (< 1) for input {H}x{W}, kernel "
                         f"{k}, stride {s}, padding {p}, dilation {d}")
    for size, n, ki, si, pi, di in ((H, Ho, k[0], s[0], p[0], d[0]), (W, Wo, k[1], s[1], p[1], d[1])):
        if di > 1:   # a dilated window can skip over the whole image: it would have no maximum
            for o in range(n):
                start = o * si - pi
                if not any(0 <= start + j * di < size for j in range(ki)):
                    raise ValueError(f"{op}: window {o} of kernel {k} with dilation {d}, stride {s}"
                                     f" and padding {p} covers only padding for input {H}x{W}")
    return k, s, p, d, (Ho, Wo)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       out=None, backend=None):
    """Max pooling, ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Returns (y (array[N, C, Ho, Wo]), indices (int64, same shape)): the flat ``h*W + w``
    position of each maximum in the unpadded input plane.  stride None = kernel_size.
    A NaN in a window is its maximum (torch).  ``out``: optional buffer for y.
    """
    op = "max_pool2d_forward"
    be = _backend(backend)
    key = hit = None
    if (out is None and type(ceil_mode) is bool and type(be).is_native is _TYPE_TEST
            and _plain(kernel_size, stride, padding, dilation)):
        try:
            key = (op, be, type(x), x.shape, x.dtype, kernel_size, stride, padding, dilation,
                   ceil_mode)
        except AttributeError:
            key = None
        hit = _memo_get(key)
    if hit is not None:
        return be._max_pool2d_forward(_c(be, x), *hit, out=None)
    k, s, p, d, ohw = _pool_args(op, be, x, kernel_size, stride, padding, dilation, ceil_mode)
    dt = V.float_dtype(op, x=x)
    N, C = x.shape[:2]
    out = V.out_buffer(op, out, be, (N, C) + ohw, dt)
    V.no_overlap(op, be, out, x=x)
    if x.size == 0:
        xp = be.xp
        return (out if out is not None else xp.empty((N, C) + ohw, dt),
                xp.empty((N, C) + ohw, xp.int64))
    _memo_put(key, (k, s, p, d, ohw))
    return be._max_pool2d_forward(_c(be, x), k, s, p, d, ohw, out=out)


def _snapshot(xp, a, dtype):
    """A private C-contiguous copy of ``a`` as ``dtype``.  Host arrays are copied while this
    thread holds the GIL (numpy's own copies release it above a few hundred elements, and a
    byte-wise memcpy then let a Python thread's write land half-way through an int64: a torn
    index 2**62 / 199 read as 0, a valid index with a wrong answer)."""
    if xp is np:
        a = np.ascontiguousarray(a, dtype)
        return np.frombuffer(bytearray(a), dtype).reshape(a.shape)
    return a.astype(dtype, order="C", copy=True)


def _indices(op, name, be, idx, lo, hi):
    """int64 C-contiguous indices a hook may index with.  A backend whose kernels range-check
    each index they read (``validates_indices``) gets the caller's array; any other gets a
    private copy, checked after it was made, so a thread changing ``idx`` meanwhile cannot slip
    an index past the check."""
    xp = be.xp
    if idx.dtype.kind == "u" and idx.size and int(idx.max()) > np.iinfo(np.int64).max:
        # (int64 would wrap 2**64-1 to -1, and the message would name -1)
        raise ValueError(f"{op}: {name} must lie in [{lo}, {hi}) for this input_shape, got "
                         f"values up to {int(idx.max())}")
    if be.validates_indices:
        return _c(be, idx.astype(xp.int64, copy=False))
    idx = _snapshot(xp, idx, xp.int64)
    mn, mx = int(idx.min()), int(idx.max())
    if mn < lo or mx >= hi:
        raise ValueError(f"{op}: {name} must lie in [{lo}, {hi}) for this input_shape, "
                         f"got values in [{mn}, {mx}]")
    return idx


def max_pool2d_backward(grad_y, indices, input_shape, *, backend=None):
    """Gradient of max pooling: grad_y scattered (added) at ``indices`` into an input-shaped zero
    array.  indices: from :func:`max_pool2d_forward`; input_shape: x.shape."""
    op = "max_pool2d_backward"
    be = _backend(backend)
    key = _max_backward_key(op, be, grad_y, indices, input_shape)
    hit = _memo_get(key)
    if hit is not None:     # (the indices' values: checked by _indices on every call)
        return be._max_pool2d_backward(
            _c(be, grad_y), _indices(op, "indices", be, indices, 0, hit), input_shape)
    V.array(op, "grad_y", grad_y, be, 4, "(N, C, Ho, Wo)")
    V.array(op, "indices", indices, be, 4, "(N, C, Ho, Wo)")
    V.int_array(op, "indices", indices)
    shape = V.shape_tuple(op, "input_shape", input_shape)
    V.grad_shape(op, "indices", indices, grad_y.shape)
    if tuple(grad_y.shape[:2]) != shape[:2]:
        raise ValueError(f"{op}: grad_y has (N, C) = {tuple(grad_y.shape[:2])} but input_shape "
                         f"has {shape[:2]}")
    dt = V.float_dtype(op, grad_y=grad_y)
    xp = be.xp
    if grad_y.size == 0 or shape[2] * shape[3] == 0:
        return xp.zeros(shape, dt)
    indices = _indices(op, "indices", be, indices, 0, shape[2] * shape[3])
    _memo_put(key, shape[2] * shape[3])
    return be._max_pool2d_backward(_c(be, grad_y), indices, shape)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, *, out=None, backend=None):
    """Average pooling, ``torch.nn.functional.avg_pool2d`` semantics (no divisor_override).

    With count_include_pad the divisor is the window clipped to the padded input; without, the
    number of in-image elements.  Returns y (array[N, C, Ho, Wo]).
    """
    op = "avg_pool2d_forward"
    be = _backend(backend)
    key = hit = None
    if (out is None and type(ceil_mode) is bool and type(count_include_pad) is bool
            and type(be).is_native is _TYPE_TEST and _plain(kernel_size, stride, padding)):
        try:
            key = (op, be, type(x), x.shape, x.dtype, kernel_size, stride, padding, ceil_mode,
                   count_include_pad)
        except AttributeError:
            key = None
        hit = _memo_get(key)
    if hit is not None:
        return be._avg_pool2d_forward(_c(be, x), *hit, count_include_pad, out=None)
    k, s, p, _, ohw = _pool_args(op, be, x, kernel_size, stride, padding, 1, ceil_mode)
    dt = V.float_dtype(op, x=x)
    N, C = x.shape[:2]
    out = V.out_buffer(op, out, be, (N, C) + ohw, dt)
    V.no_overlap(op, be, out, x=x)
    if x.size == 0:
        return out if out is not None else be.xp.empty((N, C) + ohw, dt)
    _memo_put(key, (k, s, p, ohw))
    return be._avg_pool2d_forward(_c(be, x), k, s, p, ohw, bool(count_include_pad), out=out)


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, *, backend=None):
    """Gradient of :func:`avg_pool2d_forward` with the same arguments; returns grad_x."""
    op = "avg_pool2d_backward"
    be = _backend(backend)
    key = hit = None
    if (type(input_shape) is tuple and len(input_shape) == 4 and type(ceil_mode) is bool
            and type(count_include_pad) is bool and type(be).is_native is _TYPE_TEST
            and _plain(kernel_size, stride, padding, *input_shape)):
        try:
            key = (op, be, type(grad_y), grad_y.shape, grad_y.dtype, input_shape, kernel_size,
                   stride, padding, ceil_mode, count_include_pad)
        except AttributeError:
            key = None
        hit = _memo_get(key)
    if hit is not None:
        return be._avg_pool2d_backward(_c(be, grad_y), *hit, count_include_pad)
    V.array(op, "grad_y", grad_y, be, 4, "(N, C, Ho, Wo)")
    shape = V.shape_tuple(op, "input_shape", input_shape)
    dt = V.float_dtype(op, grad_y=grad_y)

    k = V.pair(op, "kernel_size", kernel_size, minimum=1)
    s = k if stride is None else V.pair(op, "stride", stride, minimum=1)
    p = V.pair(op, "padding", padding, minimum=0)
    for i in range(2):
        if p[i] > k[i] // 2:
            raise ValueError(f"{op}: padding {p} must be at most half the kernel size {k}")
    ohw = tuple(pool_out_size(shape[2 + i], k[i], s[i], p[i], 1, bool(ceil_mode)) for i in range(2))
    if min(ohw) < 1:
        raise ValueError(f"{op}: output size would be {ohw[0]}x{ohw[1]} (< 1) for input_shape "
                         f"{shape}")
    V.grad_shape(op, "grad_y", grad_y, shape[:2] + ohw)
    if grad_y.size == 0 or shape[2] * shape[3] == 0:
        return be.xp.zeros(shape, dt)
    _memo_put(key, (shape, k, s, p))
    return be._avg_pool2d_backward(_c(be, grad_y), shape, k, s, p, bool(count_include_pad))


# ---------------------------------------------------------------------------------- batch norm
def _vec(op, be, name, a, C):
    if a is None:
        return None
    V.array(op, name, a, be, 1, f"(C,) with C={C}")
    if a.shape[0] != C:
        raise ValueError(f"{op}: {name} must have shape ({C},), got {tuple(a.shape)}")
    return a


def _meta(a):
    return None if a is None else (type(a), a.shape, a.dtype)


def _bn_running_writable(op, running_mean, running_var, training):
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if r is not None:
            flags = r.flags
            if not flags.c_contiguous:
                raise ValueError(f"{op}: {name} must be C-contiguous (it is updated in place)")
            if training and not getattr(flags, "writeable", True):
                V.writeable(op, name, r)    # (its error)


def _bn_running_no_alias(op, be, x, weight, bias, running_mean, running_var, training):
    # running stats are written in place while the kernels read the other arguments: a
    # running_mean that is also the weight (or x, or running_var) would be read half-updated.
    # (The pairs one by one, V.no_alias raising for the first that overlaps: it runs on every
    # call, and its dicts cost as much as the batch norm of a small layer.)
    if not training:
        return
    share = np.may_share_memory if be.xp is np else (
        getattr(be.xp, "may_share_memory", None) or np.may_share_memory)
    others = (("x", x), ("weight", weight), ("bias", bias), ("running_var", running_var))
    for name, r, pairs in (("running_mean", running_mean, others),
                           ("running_var", running_var, others[:3])):
        if r is None:
            continue
        for other, a in pairs:
            if a is not None and share(r, a):
                V.no_alias(op, be, name, r, **{other: a})


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1,
                       eps=1e-5, *, out=None, backend=None):
    """Spatial batch norm, ``torch.nn.functional.batch_norm`` semantics.

    x (array[N, C, H, W]); weight, bias (array[C] or None: no affine); running_mean,
    running_var (array[C] or None), updated in place when training
    (``r = (1 - momentum) * r + momentum * stat``, the variance unbiased as in torch).
    Returns (y, save_mean, save_invstd), what :func:`batch_norm_backward` needs.
    """
    op = "batch_norm_forward"
    be = _backend(backend)
    key = hit = None
    if (out is None and type(be).is_native is _TYPE_TEST and type(training) is bool
            and type(momentum) is float and type(eps) is float):
        try:
            key = (op, be, type(x), x.shape, x.dtype, _meta(weight), _meta(bias),
                   _meta(running_mean), _meta(running_var), training, momentum, eps)
        except AttributeError:      # (not an array: the checks say so)
            key = None
        hit = _memo_get(key)
    if hit is not None:     # metadata checked before; the running stats' state on every call
        _bn_running_writable(op, running_mean, running_var, training)
        _bn_running_no_alias(op, be, x, weight, bias, running_mean, running_var, training)
        return be._batch_norm_forward(_c(be, x), _c(be, weight), _c(be, bias), running_mean,
                                     running_var, training, momentum, eps, out=None)
    V.array(op, "x", x, be, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    weight, bias = _vec(op, be, "weight", weight, C), _vec(op, be, "bias", bias, C)
    running_mean = _vec(op, be, "running_mean", running_mean, C)
    running_var = _vec(op, be, "running_var", running_var, C)
    dt = V.float_dtype(op, x=x, weight=weight, bias=bias, running_mean=running_mean,
                       running_var=running_var)
    _bn_running_writable(op, running_mean, running_var, training)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be given or both be None")
    training = bool(training)
    if not training and running_mean is None:
        raise ValueError(f"{op}: training=False needs running_mean and running_var")
    if training and N * H * W <= 1:
        raise ValueError(f"{op}: training needs more than 1 value per channel, got x of shape "
                         f"{tuple(x.shape)}")
    momentum = V.real(op, "momentum", momentum)
    eps = V.real(op, "eps", eps)
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps!r}")
    if training and eps == 0:
        # torch refuses it too (a constant channel would divide by zero); in eval the running
        # variance is the caller's, as in torch
        raise ValueError(f"{op}: eps must be > 0 in training, got {eps!r}")
    _bn_running_no_alias(op, be, x, weight, bias, running_mean, running_var, training)
    xp = be.xp
    params = (weight, bias)
    if (weight is None) != (bias is None):   # one affine half given: complete it, as torch does
        weight = xp.ones(C, dt) if weight is None else weight
        bias = xp.zeros(C, dt) if bias is None else bias
    out = V.out_buffer(op, out, be, x.shape, dt)
    V.no_overlap(op, be, out, x=x, weight=weight, bias=bias, running_mean=running_mean,
                 running_var=running_var)
    if x.size == 0:   # eval with N = 0 (training with N*H*W <= 1 was rejected above)
        inv = 1.0 / xp.sqrt(running_var + eps) if running_var is not None else xp.zeros(C, dt)
        mean = running_mean.copy() if running_mean is not None else xp.zeros(C, dt)
        return (out if out is not None else xp.empty(x.shape, dt)), mean, inv.astype(dt)
    if weight is params[0] and bias is params[1]:   # (not an affine half completed above)
        _memo_put(key, True)
    return be._batch_norm_forward(_c(be, x), _c(be, weight), _c(be, bias), running_mean,
                                 running_var, training, momentum, eps, out=out)


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training, *, backend=None):
    """Gradients of :func:`batch_norm_forward`: (grad_x, grad_weight|None, grad_bias|None).

    save_mean / save_invstd are what the forward returned.  In eval mode the statistics are
    constants, so grad_x = grad_y * weight * invstd.
    """
    op = "batch_norm_backward"
    be = _backend(backend)
    key = hit = None
    if type(be).is_native is _TYPE_TEST and type(training) is bool:
        try:
            key = (op, be, type(grad_y), grad_y.shape, grad_y.dtype, type(x), x.shape, x.dtype,
                   _meta(weight), _meta(save_mean), _meta(save_invstd), training)
        except AttributeError:
            key = None
        hit = _memo_get(key)
    if hit is not None:
        return be._batch_norm_backward(_c(be, grad_y), _c(be, x), _c(be, weight),
                                      _c(be, save_mean), _c(be, save_invstd), training)
    V.array(op, "x", x, be, 4, "(N, C, H, W)")
    V.array(op, "grad_y", grad_y, be, 4, "(N, C, H, W)")
    V.grad_shape(op, "grad_y", grad_y, x.shape)
    C = x.shape[1]
    weight = _vec(op, be, "weight", weight, C)
    save_mean = _vec(op, be, "save_mean", save_mean, C)
    save_invstd = _vec(op, be, "save_invstd", save_invstd, C)
    if save_mean is None or save_invstd is None:
        raise ValueError(f"{op}: save_mean and save_invstd are required (from batch_norm_forward)")
    dt = V.float_dtype(op, grad_y=grad_y, x=x, weight=weight, save_mean=save_mean,
                       save_invstd=save_invstd)
    xp = be.xp
    if x.size == 0:
        z = xp.zeros(C, dt)
        return xp.zeros(x.shape, dt), (z if weight is not None else None), \
            (z.copy() if weight is not None else None)
    _memo_put(key, True)
    return be._batch_norm_backward(_c(be, grad_y), _c(be, x), _c(be, weight), _c(be, save_mean),
                                  _c(be, save_invstd), bool(training))


# ----------------------------------------------------------------------------------------- roi
def _rois(op, be, rois, N, dt):
    """(K,5) rois, a (K,4) array (N = 1 only) or a list of per-image (Ki,4) arrays -> a private
    (K,5) C-contiguous array of dtype dt, plus a boolean mask of rows with non-finite coordinates
    (None when all are finite); those rows are zeroed so kernels never see them.  Every check
    runs on the private copy: kernels index with its batch indices and coordinates, and a
    thread changing the caller's array meanwhile must not slip a value past the checks.
    A ``validates_rois`` backend gets the private copy unchecked (mask None): reading the
    checks back would cost it two device -> host syncs per call."""
    xp = be.xp
    if isinstance(rois, (list, tuple)):
        parts = []
        for i, b in enumerate(rois):
            V.array(op, f"rois[{i}]", b, be, 2, "(Ki, 4)")
            if b.shape[1] != 4:
                raise ValueError(f"{op}: rois[{i}] must have shape (Ki, 4), got {tuple(b.shape)}")
            V.float_dtype(op, **{"x": xp.empty(0, dt), f"rois[{i}]": b})
            idx = xp.full((b.shape[0], 1), i, dtype=dt)
            parts.append(xp.concatenate([idx, b.astype(dt, copy=False)], axis=1))
        if len(rois) > N:
            raise ValueError(f"{op}: rois is a list of {len(rois)} per-image box arrays but x "
                             f"has N={N} images")
        r = xp.concatenate(parts, axis=0) if parts else xp.zeros((0, 5), dt)
    else:
        V.array(op, "rois", rois, be, 2, "(K, 5)")
        V.float_dtype(op, x=xp.empty(0, dt), rois=rois)
        if rois.shape[1] == 4:
            if N != 1:
                raise ValueError(f"{op}: rois of shape (K, 4) are only accepted for N=1 (x has "
                                 f"N={N}); pass (K, 5) rows [batch_index, x1, y1, x2, y2] or a "
                                 f"list of per-image (Ki, 4) arrays")
            r = xp.concatenate([xp.zeros((rois.shape[0], 1), dt), rois], axis=1)
        elif rois.shape[1] == 5:
            r = _snapshot(xp, rois, rois.dtype)
        else:
            raise ValueError(f"{op}: rois must have shape (K, 5) or (K, 4), got {tuple(rois.shape)}")
        if not be.validates_rois:
            _check_batch_indices(op, xp, r, N)
    if be.validates_rois:   # the kernels check batch indices and skip non-finite rows
        return r, None
    finite = xp.isfinite(r[:, 1:]).all(axis=1)
    mask = None
    if not bool(finite.all()):
        mask = ~finite
        r[mask, 1:] = 0     # r is already private (copied or concatenated above)
    return r, mask


def _check_batch_indices(op, xp, r, N):
    """ValueError naming the first row of the (K, 5) rois ``r`` whose batch index is not an
    integer in [0, N).  Reads back to the host: a ``validates_rois`` backend calls it only
    after its kernel flagged a bad row, or where no kernel runs."""
    bi = r[:, 0]
    bad = ~((bi >= 0) & (bi < N) & (bi == xp.floor(bi)))
    if bool(bad.any()):
        row = int(xp.argmax(bad))
        raise ValueError(f"{op}: rois[{row}, 0] = {float(bi[row])!r} is not an integer batch "
                         f"index in [0, {N})")


def _roi_common(op, be, x, output_size, spatial_scale):
    V.array(op, "x", x, be, 4, "(N, C, H, W)")
    osz = V.pair(op, "output_size", output_size, minimum=1)
    scale = V.real(op, "spatial_scale", spatial_scale, positive=True)
    return osz, scale


def roi_pool_forward(x, rois, output_size, spatial_scale=1.0, *, out=None, backend=None):
    """RoI max pooling, ``torchvision.ops.roi_pool`` semantics.

    x (array[N, C, H, W]); rois (array[K, 5] rows [batch_index, x1, y1, x2, y2] in input-image
    pixels, or list of array[Ki, 4]).  Box corners are scaled by spatial_scale and rounded;
    bins are floor/ceil-split and clipped to the feature map.  Returns (y (array[K, C, oh, ow]),
    argmax (int64, flat h*W + w, -1 for an empty bin)).  A RoI with a non-finite coordinate gives
    zeros (argmax -1).
    """
    op = "roi_pool_forward"
    be = _backend(backend)
    osz, scale = _roi_common(op, be, x, output_size, spatial_scale)
    dt = V.float_dtype(op, x=x)
    r, mask = _rois(op, be, rois, x.shape[0], dt)
    K, C = r.shape[0], x.shape[1]
    shape = (K, C) + osz
    out = V.out_buffer(op, out, be, shape, dt)
    V.no_overlap(op, be, out, x=x, rois=r)
    xp = be.xp
    if K == 0 or x.size == 0:
        _check_batch_indices(op, xp, r, x.shape[0])   # no kernel runs to check them
        y = out if out is not None else xp.empty(shape, dt)
        y[...] = 0
        return y, xp.full(shape, -1, xp.int64)
    y, argmax = be._roi_pool_forward(_c(be, x), r, osz, scale, out=out)
    if mask is not None:
        y[mask] = 0
        argmax[mask] = -1
    return y, argmax


def roi_pool_backward(grad_y, argmax, input_shape, rois=None, *, backend=None):
    """Gradient of :func:`roi_pool_forward`: grad_y added at argmax into an input-shaped zero
    array.  ``rois`` (the forward's rois) give each RoI's image, since argmax indexes one H*W
    plane; they may be omitted only when N = 1."""
    op = "roi_pool_backward"
    be = _backend(backend)
    V.array(op, "grad_y", grad_y, be, 4, "(K, C, oh, ow)")
    V.array(op, "argmax", argmax, be, 4, "(K, C, oh, ow)")
    V.int_array(op, "argmax", argmax)
    V.grad_shape(op, "argmax", argmax, grad_y.shape)
    shape = V.shape_tuple(op, "input_shape", input_shape)
    N, C, H, W = shape
    if grad_y.shape[1] != C:
        raise ValueError(f"{op}: grad_y has C={grad_y.shape[1]} channels but input_shape has C={C}")
    dt = V.float_dtype(op, grad_y=grad_y)
    xp = be.xp
    K = grad_y.shape[0]
    if rois is None:
        if N != 1 and K > 0:
            raise ValueError(f"{op}: rois is required when input_shape has N={N} > 1 images")
        r = xp.zeros((K, 5), dt)
    else:
        r, _ = _rois(op, be, rois, N, dt)
        if r.shape[0] != K:
            raise ValueError(f"{op}: rois has {r.shape[0]} rows but grad_y has K={K}")
    if K == 0 or int(np.prod(shape)) == 0:
        _check_batch_indices(op, xp, r, N)
        return xp.zeros(shape, dt)
    argmax = _indices(op, "argmax", be, argmax, -1, H * W)
    return be._roi_pool_backward(_c(be, grad_y), r, argmax, shape)


def _sampling_ratio(op, sampling_ratio, K, osz):
    """sampling_ratio as an int; a fixed grid whose per-RoI sample tables (about 24 bytes per
    sample row/column of every bin) would exceed the workspace limit is a MemoryError, not an
    allocation of gigabytes or a loop of 2**40 samples."""
    sr = V._int(op, "sampling_ratio", sampling_ratio)
    if sr <= 0:
        return -1      # any value <= 0 means the adaptive grid (torchvision); -2**70 included
    if sr > 0:
        need = 24 * max(K, 1) * (osz[0] + osz[1]) * sr
        limit = get_workspace_limit()
        if need > limit:
            raise MemoryError(f"{op}: sampling_ratio={sr} needs about {need} bytes of sample "
                              f"tables for {K} RoIs, over the workspace limit of {limit} bytes "
                              f"(convkit.set_workspace_limit)")
    return sr


def roi_align_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                      *, out=None, backend=None):
    """RoI align, ``torchvision.ops.roi_align`` semantics.

    rois as in :func:`roi_pool_forward`.  Coordinates are scaled by spatial_scale (minus 0.5
    pixel when ``aligned``); without ``aligned`` a RoI is at least 1x1.  Each bin averages
    bilinear samples on a grid of ``sampling_ratio`` (> 0) or ceil(bin size) points per axis
    (<= 0, adaptive); samples beyond one pixel outside the map count as 0.
    Returns y (array[K, C, oh, ow]).
    """
    op = "roi_align_forward"
    be = _backend(backend)
    osz, scale = _roi_common(op, be, x, output_size, spatial_scale)
    dt = V.float_dtype(op, x=x)
    r, mask = _rois(op, be, rois, x.shape[0], dt)
    K, C = r.shape[0], x.shape[1]
    sr = _sampling_ratio(op, sampling_ratio, K, osz)
    shape = (K, C) + osz
    out = V.out_buffer(op, out, be, shape, dt)
    V.no_overlap(op, be, out, x=x, rois=r)
    xp = be.xp
    if K == 0 or x.size == 0:
        _check_batch_indices(op, xp, r, x.shape[0])
        y = out if out is not None else xp.empty(shape, dt)
        y[...] = 0
        return y
    y = be._roi_align_forward(_c(be, x), r, osz, scale, sr, bool(aligned), out=out)
    if mask is not None:
        y[mask] = 0
    return y


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False, *, backend=None):
    """Gradient of :func:`roi_align_forward` with the same arguments; returns grad_x."""
    op = "roi_align_backward"
    be = _backend(backend)
    V.array(op, "grad_y", grad_y, be, 4, "(K, C, oh, ow)")
    shape = V.shape_tuple(op, "input_shape", input_shape)
    osz = V.pair(op, "output_size", output_size, minimum=1)
    scale = V.real(op, "spatial_scale", spatial_scale, positive=True)
    dt = V.float_dtype(op, grad_y=grad_y)
    r, mask = _rois(op, be, rois, shape[0], dt)
    sr = _sampling_ratio(op, sampling_ratio, r.shape[0], osz)
    V.grad_shape(op, "grad_y", grad_y, (r.shape[0], shape[1]) + osz)
    xp = be.xp
    if r.shape[0] == 0 or int(np.prod(shape)) == 0:
        _check_batch_indices(op, xp, r, shape[0])
        return xp.zeros(shape, dt)
    g = grad_y
    if mask is not None:
        g = g.copy()
        g[mask] = 0
    return be._roi_align_backward(_c(be, g), r, shape, osz, scale, sr, bool(aligned))


# --------------------------------------------------------------------------------------- boxes
def _boxes(op, be, name, b):
    V.array(op, name, b, be, 2, "(N, 4)")
    if b.shape[1] != 4:
        raise ValueError(f"{op}: {name} must have shape (N, 4) xyxy, got {tuple(b.shape)}")
    return b


def nms(boxes, scores, iou_threshold, *, backend=None):
    """Non-maximum suppression, ``torchvision.ops.nms`` semantics.

    boxes (array[N, 4] xyxy), scores (array[N]).  Returns int64 indices of the kept boxes by
    decreasing score; ties keep the lower index first (on every backend).  A box is dropped
    when its IoU with a kept, higher-scored box is > iou_threshold; a union of 0 gives IoU 0.
    """
    op = "nms"
    be = _backend(backend)
    _boxes(op, be, "boxes", boxes)
    V.array(op, "scores", scores, be, 1, "(N,)")
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    V.float_dtype(op, boxes=boxes, scores=scores)
    thr = V.real(op, "iou_threshold", iou_threshold, finite=False)
    if boxes.shape[0] == 0:
        return be.xp.zeros(0, be.xp.int64)
    return be._nms(_c(be, boxes), _c(be, scores), thr)


def batched_nms(boxes, scores, idxs, iou_threshold, *, backend=None):
    """NMS within each class of ``idxs`` (array[N] int); boxes of different classes never
    suppress each other.  Returns kept indices by decreasing score (ties: lower index first)."""
    op = "batched_nms"
    be = _backend(backend)
    _boxes(op, be, "boxes", boxes)
    V.array(op, "scores", scores, be, 1, "(N,)")
    V.array(op, "idxs", idxs, be, 1, "(N,)")
    V.int_array(op, "idxs", idxs)
    n = boxes.shape[0]
    if scores.shape[0] != n or idxs.shape[0] != n:
        raise ValueError(f"{op}: boxes, scores and idxs must have the same length, got "
                         f"{n}, {scores.shape[0]}, {idxs.shape[0]}")
    V.float_dtype(op, boxes=boxes, scores=scores)
    thr = V.real(op, "iou_threshold", iou_threshold, finite=False)
    xp = be.xp
    if n == 0:
        return xp.zeros(0, xp.int64)
    boxes, scores = _c(be, boxes), _c(be, scores)
    keeps = []
    for c in be.to_numpy(xp.unique(idxs)).tolist():
        sel = xp.nonzero(idxs == c)[0]
        keeps.append(sel[be._nms(_c(be, boxes[sel]), _c(be, scores[sel]), thr)])
    keep = xp.sort(xp.concatenate(keeps))
    order = score_order(scores[keep])
    return keep[order].astype(xp.int64, copy=False)


def box_iou(boxes1, boxes2, *, backend=None):
    """Pairwise IoU, ``torchvision.ops.box_iou``: (array[N, 4], array[M, 4]) xyxy -> array[N, M].
    area = (x2 - x1) * (y2 - y1); a pair whose union is 0 has IoU 0."""
    op = "box_iou"
    be = _backend(backend)
    _boxes(op, be, "boxes1", boxes1)
    _boxes(op, be, "boxes2", boxes2)
    dt = V.float_dtype(op, boxes1=boxes1, boxes2=boxes2)
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return be.xp.zeros((boxes1.shape[0], boxes2.shape[0]), dt)
    return be._box_iou(_c(be, boxes1), _c(be, boxes2))


# ------------------------------------------------------------------- roi_avg_pool, roi_max_align
# (the lecture's other two aggregators; hooks in <backend>/roi_variants.py)
__all__ += ["roi_avg_pool_forward", "roi_avg_pool_backward",
            "roi_max_align_forward", "roi_max_align_backward"]


def roi_avg_pool_forward(x, rois, output_size, spatial_scale=1.0, *, backend=None):
    """RoI average pooling (Chainer's roi_average_pooling_2d): the bins of
    :func:`roi_pool_forward` (corners scaled and rounded, RoI at least 1x1 cell, floor/ceil
    split, clipped to the map), each the mean of its pixels; an empty bin gives 0.  rois as in
    :func:`roi_pool_forward`; a RoI with a non-finite coordinate gives zeros.
    Returns y (array[K, C, oh, ow])."""
    op = "roi_avg_pool_forward"
    be = _backend(backend)
    osz, scale = _roi_common(op, be, x, output_size, spatial_scale)
    dt = V.float_dtype(op, x=x)
    r, mask = _rois(op, be, rois, x.shape[0], dt)
    shape = (r.shape[0], x.shape[1]) + osz
    xp = be.xp
    if r.shape[0] == 0 or x.size == 0:
        _check_batch_indices(op, xp, r, x.shape[0])   # no kernel runs to check them
        return xp.zeros(shape, dt)
    y = be._roi_avg_pool_forward(_c(be, x), r, osz, scale)
    if mask is not None:
        y[mask] = 0
    return y


def roi_avg_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale=1.0, *,
                          backend=None):
    """Gradient of :func:`roi_avg_pool_forward` with the same arguments: each bin's grad
    divided by its pixel count, added to those pixels.  Returns grad_x (input_shape)."""
    op = "roi_avg_pool_backward"
    be = _backend(backend)
    g, r, shape, osz, scale, mask = _roi_grad_args(op, be, grad_y, rois, input_shape,
                                                   output_size, spatial_scale)
    if g is None:
        return be.xp.zeros(shape, grad_y.dtype)
    return be._roi_avg_pool_backward(g, r, shape, osz, scale)


def _roi_grad_args(op, be, grad_y, rois, input_shape, output_size, spatial_scale):
    """The checks every RoI backward shares: grad_y (K, C) + output_size, rois for input_shape's
    N.  Returns (grad_y (rows of non-finite RoIs zeroed, C-contiguous), rois, shape, output
    size, scale, mask); grad_y None when there is no work (the caller returns zeros)."""
    V.array(op, "grad_y", grad_y, be, 4, "(K, C, oh, ow)")
    shape = V.shape_tuple(op, "input_shape", input_shape)
    osz = V.pair(op, "output_size", output_size, minimum=1)
    scale = V.real(op, "spatial_scale", spatial_scale, positive=True)
    dt = V.float_dtype(op, grad_y=grad_y)
    r, mask = _rois(op, be, rois, shape[0], dt)
    V.grad_shape(op, "grad_y", grad_y, (r.shape[0], shape[1]) + osz)
    if r.shape[0] == 0 or int(np.prod(shape)) == 0:
        _check_batch_indices(op, be.xp, r, shape[0])
        return None, r, shape, osz, scale, mask
    g = grad_y
    if mask is not None:
        g = g.copy()
        g[mask] = 0
    return _c(be, g), r, shape, osz, scale, mask


def _max_align_ratio(op, sampling_ratio, K, osz):
    if V._int(op, "sampling_ratio", sampling_ratio) > 46340:   # argmax numbers sr*sr samples
        raise ValueError(f"{op}: sampling_ratio must be at most 46340 (argmax numbers the "
                         f"sr*sr samples of a bin in int32), got {sampling_ratio!r}")
    return _sampling_ratio(op, sampling_ratio, K, osz)


def roi_max_align_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                          aligned=False, *, backend=None):
    """RoI max align (Chainer's roi_max_align_2d): the bilinear sample grid of
    :func:`roi_align_forward` (same ``spatial_scale``, ``sampling_ratio``, ``aligned``), each
    bin the max over its samples instead of the mean.  A sample outside roi_align's range
    (y < -1 or y > H, x < -1 or x > W) is skipped, not counted as 0.  Max as max_pool2d: ties
    keep the first sample in row-major order, NaN wins (the last NaN).  Returns (y
    (array[K, C, oh, ow]), argmax (the winning sample iy*gw + ix within the bin's gh x gw grid;
    -1 and y = 0 for a bin without a valid sample)).  argmax's dtype follows from
    ``sampling_ratio`` alone: int8 for 1..11 (the numbers reach at most 11*11 - 1), int32
    otherwise (the adaptive grid, larger grids) -- a quarter of the bytes for the usual fixed
    grids (6.4 MB instead of 25.7 MB for 512 RoIs x 256 channels x 7x7).  A RoI with a
    non-finite coordinate gives zeros and -1; a finite RoI whose adaptive grid exceeds 2**30
    points per axis or 2**31 per bin (the numbers must fit int32) is a ValueError, and so is a
    sampling_ratio over 46340."""
    op = "roi_max_align_forward"
    be = _backend(backend)
    osz, scale = _roi_common(op, be, x, output_size, spatial_scale)
    dt = V.float_dtype(op, x=x)
    r, mask = _rois(op, be, rois, x.shape[0], dt)
    sr = _max_align_ratio(op, sampling_ratio, r.shape[0], osz)
    shape = (r.shape[0], x.shape[1]) + osz
    xp = be.xp
    if r.shape[0] == 0 or x.size == 0:
        _check_batch_indices(op, xp, r, x.shape[0])
        return xp.zeros(shape, dt), xp.full(shape, -1, argmax_dtype(sr))
    y, argmax = be._roi_max_align_forward(_c(be, x), r, osz, scale, sr, bool(aligned))
    if mask is not None:
        y[mask] = 0
        argmax[mask] = -1
    return y, argmax


def roi_max_align_backward(grad_y, argmax, rois, input_shape, output_size, spatial_scale=1.0,
                           sampling_ratio=-1, aligned=False, *, backend=None):
    """Gradient of :func:`roi_max_align_forward` with the same arguments: each bin's grad times
    the winning sample's four bilinear weights, added to its four neighbours; nothing for
    argmax -1.  argmax is the forward's array (int8 for sampling_ratio 1..11, else int32);
    another integer dtype is taken, cast once here, when its values lie in that dtype's range
    for these arguments ([-1, sampling_ratio**2 - 1] for a fixed grid), else it is a
    ValueError, and so is an argmax that names no valid sample of its bin; a float argmax is a
    TypeError."""
    op = "roi_max_align_backward"
    be = _backend(backend)
    g, r, shape, osz, scale, mask = _roi_grad_args(op, be, grad_y, rois, input_shape,
                                                   output_size, spatial_scale)
    V.array(op, "argmax", argmax, be, 4, "(K, C, oh, ow)")
    if not np.issubdtype(np.dtype(argmax.dtype), np.integer):
        raise TypeError(f"{op}: argmax must be an integer array (int8 or int32, as "
                        f"roi_max_align_forward returns), got {argmax.dtype}")
    V.grad_shape(op, "argmax", argmax, grad_y.shape)
    sr = _max_align_ratio(op, sampling_ratio, r.shape[0], osz)
    if g is None:
        return be.xp.zeros(shape, grad_y.dtype)
    xp = be.xp
    want = argmax_dtype(sr)
    if argmax.dtype != want and argmax.size:
        # a value outside the forward's range is bad, and must not wrap to a valid one when
        # narrowed; a fixed grid numbers its samples 0..sr*sr - 1
        top = sr * sr - 1 if sr > 0 else int(np.iinfo(np.int32).max)
        lo, hi = int(argmax.min()), int(argmax.max())
        if lo < -1 or hi > top:
            raise ValueError(f"{op}: argmax must be -1 or the number iy*gw + ix of an in-range "
                             f"sample of its bin ({want}, in [-1, {top}] for sampling_ratio="
                             f"{sampling_ratio}, as roi_max_align_forward returns); it holds "
                             f"values in [{lo}, {hi}]")
    # the hooks range-check every entry, per bin; a backend that does not read each index
    # once (validates_indices) gets a private copy, which it may read twice
    if be.validates_indices and mask is None:
        am = _c(be, argmax.astype(want, copy=False))
    else:
        am = _snapshot(xp, argmax, want)
        if mask is not None:
            am[mask] = -1
    return be._roi_max_align_backward(g, am, r, shape, osz, scale, sr, bool(aligned))


# ------------------------------------------------------------------ ps_roi_align, ps_roi_pool
# (position-sensitive RoI ops; hooks in <backend>/psroi.py)
__all__ += ["ps_roi_align_forward", "ps_roi_align_backward",
            "ps_roi_pool_forward", "ps_roi_pool_backward"]


def _ps_out_channels(op, name, C, osz):
    """C_out = C / (oh*ow): a position-sensitive op reads one channel group per bin."""
    nb = osz[0] * osz[1]
    if C % nb:
        raise ValueError(f"{op}: {name} has C={C} channels, which is not a multiple of "
                         f"output_size {osz[0]}x{osz[1]} = {nb} (position-sensitive pooling "
                         f"needs C = C_out * oh * ow input channels)")
    return C // nb


def _ps_forward(op, hook, x, rois, output_size, spatial_scale, sampling_ratio, backend):
    """The boundary of both ps forwards (sampling_ratio None: ps_roi_pool, which has none)."""
    be = _backend(backend)
    osz, scale = _roi_common(op, be, x, output_size, spatial_scale)
    co = _ps_out_channels(op, "x", x.shape[1], osz)
    dt = V.float_dtype(op, x=x)
    r, mask = _rois(op, be, rois, x.shape[0], dt)
    K = r.shape[0]
    extra = () if sampling_ratio is None else (_sampling_ratio(op, sampling_ratio, K, osz),)
    shape = (K, co) + osz
    xp = be.xp
    if K == 0 or x.size == 0:
        _check_batch_indices(op, xp, r, x.shape[0])
        return xp.zeros(shape, dt)
    y = getattr(be, hook)(_c(be, x), r, osz, scale, *extra)
    if mask is not None:
        y[mask] = 0
    return y


def _ps_backward(op, hook, grad_y, rois, input_shape, output_size, spatial_scale,
                 sampling_ratio, backend):
    """The boundary of both ps backwards (sampling_ratio None: ps_roi_pool)."""
    be = _backend(backend)
    V.array(op, "grad_y", grad_y, be, 4, "(K, C_out, oh, ow)")
    shape = V.shape_tuple(op, "input_shape", input_shape)
    osz = V.pair(op, "output_size", output_size, minimum=1)
    scale = V.real(op, "spatial_scale", spatial_scale, positive=True)
    co = _ps_out_channels(op, "input_shape", shape[1], osz)
    dt = V.float_dtype(op, grad_y=grad_y)
    r, mask = _rois(op, be, rois, shape[0], dt)
    K = r.shape[0]
    extra = () if sampling_ratio is None else (_sampling_ratio(op, sampling_ratio, K, osz),)
    V.grad_shape(op, "grad_y", grad_y, (K, co) + osz)
    xp = be.xp
    if K == 0 or int(np.prod(shape)) == 0:
        _check_batch_indices(op, xp, r, shape[0])
        return xp.zeros(shape, dt)
    g = grad_y
    if mask is not None:
        g = g.copy()
        g[mask] = 0
    return getattr(be, hook)(_c(be, g), r, shape, osz, scale, *extra)


def ps_roi_align_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, *,
                         backend=None):
    """Position-sensitive RoI align (R-FCN), ``torchvision.ops.ps_roi_align`` semantics.

    x (array[N, C, H, W]) with C = C_out * oh * ow; rois as in :func:`roi_pool_forward`.
    Returns y (array[K, C_out, oh, ow]): bin (i, j) of output channel c averages the bilinear
    samples of input channel ``c*oh*ow + i*ow + j``.  Geometry as roi_align with
    ``aligned=True`` (coordinates scaled, minus 0.5 pixel, no minimum size); a grid of
    ``sampling_ratio`` (> 0) or ceil(bin size) (<= 0) samples per axis; a bin without samples
    (an empty or inverted RoI) is 0, where torchvision gives 0/0.  A RoI with a non-finite
    coordinate gives zeros.
    """
    return _ps_forward("ps_roi_align_forward", "_ps_roi_align_forward", x, rois, output_size,
                       spatial_scale, sampling_ratio, backend)


def ps_roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale=1.0,
                          sampling_ratio=-1, *, backend=None):
    """Gradient of :func:`ps_roi_align_forward` with the same arguments; returns grad_x."""
    return _ps_backward("ps_roi_align_backward", "_ps_roi_align_backward", grad_y, rois,
                        input_shape, output_size, spatial_scale, sampling_ratio, backend)


def ps_roi_pool_forward(x, rois, output_size, spatial_scale=1.0, *, backend=None):
    """Position-sensitive RoI average pooling (R-FCN), ``torchvision.ops.ps_roi_pool``.

    x (array[N, C, H, W]) with C = C_out * oh * ow; rois as in :func:`roi_pool_forward`.
    Returns y (array[K, C_out, oh, ow]): bin (i, j) of output channel c is the mean of input
    channel ``c*oh*ow + i*ow + j`` over the bin.  Corners are scaled and rounded (half away
    from zero); the RoI is ``max(round(x2*s) - round(x1*s), 1)`` cells; bins are floor/ceil
    split and clipped to rows [0, H-1) and columns [0, W-1) -- torchvision's forward never
    pools the last row or column; an empty bin is 0.  A RoI with a non-finite coordinate gives
    zeros.
    """
    return _ps_forward("ps_roi_pool_forward", "_ps_roi_pool_forward", x, rois, output_size,
                       spatial_scale, None, backend)


def ps_roi_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale=1.0, *,
                         backend=None):
    """Gradient of :func:`ps_roi_pool_forward` (the same bins, so the last row and column get
    none; torchvision's backward clips to the full map there); returns grad_x."""
    return _ps_backward("ps_roi_pool_backward", "_ps_roi_pool_backward", grad_y, rois,
                        input_shape, output_size, spatial_scale, None, backend)


# ------------------------------------------------------------------------ multi_scale_roi_align
# (FPN level mapping over roi_align: no hook of its own)
_LEVEL_EPS = 1e-6        # torchvision's LevelMapper eps: a box on a level boundary goes up


def _per_level(op, name, value, is_entry, what):
    """``value``: a list/tuple or an ordered dict (torchvision's featmap_names) holding one
    entry per feature map, finest first -> [(label for messages, entry)]."""
    if isinstance(value, dict):
        items = [(f"{name}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)) and all(is_entry(v) for v in value):
        items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    else:
        raise TypeError(f"{op}: {name} must be a list or a dict of {what}, one per feature map "
                        f"(FPN level, finest first), got {type(value).__name__}")
    if not items:
        raise ValueError(f"{op}: {name} must hold at least one feature map, got none")
    return items


def _same_n_c(op, labels, shapes):
    for label, s in zip(labels[1:], shapes[1:]):
        if tuple(s[:2]) != tuple(shapes[0][:2]):
            raise ValueError(f"{op}: every feature map must have the same (N, C); {labels[0]} "
                             f"has {tuple(shapes[0][:2])} but {label} has {tuple(s[:2])}")


def _feature_maps(op, be, features):
    """features (list or dict of (N, C, Hl, Wl) arrays of one backend, float dtype, N and C)
    -> (list of arrays, dtype)."""
    items = _per_level(op, "features", features, lambda a: True, "(N, C, H, W) arrays")
    for label, a in items:
        V.array(op, label, a, be, 4, "(N, C, H, W)")
    dt = V.float_dtype(op, **dict(items))
    _same_n_c(op, [label for label, _ in items], [a.shape for _, a in items])
    return [a for _, a in items], dt


def _level_scales(op, spatial_scales, levels):
    """One spatial scale per feature map, each a power of 2 (torchvision infers them so) and
    each half the one before (consecutive FPN levels, finest first) -> (scales, k_min) with
    level k_min = -log2(scales[0])."""
    if isinstance(spatial_scales, (str, bytes)) or not hasattr(spatial_scales, "__len__"):
        raise TypeError(f"{op}: spatial_scales must be a sequence of {levels} numbers (one per "
                        f"feature map), got {spatial_scales!r}")
    if len(spatial_scales) != levels:
        raise ValueError(f"{op}: spatial_scales must have one scale per feature map ({levels}), "
                         f"got {len(spatial_scales)}: {list(spatial_scales)!r}")
    scales = [V.real(op, "spatial_scales", s, positive=True) for s in spatial_scales]
    for i, s in enumerate(scales):
        if np.frexp(s)[0] != 0.5:
            raise ValueError(f"{op}: spatial_scales[{i}] = {s!r} is not a power of 2 (FPN levels "
                             f"are 2**-k of the image, as torchvision infers them)")
        if i and s != scales[i - 1] / 2:
            raise ValueError(f"{op}: spatial_scales must halve from each feature map to the next "
                             f"(consecutive FPN levels, finest first), got {scales!r}")
    return scales, 1 - int(np.frexp(scales[0])[1])


def _fpn_levels(xp, r, k_min, num_levels, canonical_scale, canonical_level):
    """torchvision's LevelMapper (FPN paper, eqn. 1) on (K, 5) rois of the features' dtype:
    ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to
    [k_min, k_max], minus k_min.  A box of zero, negative or NaN area gets the finest level."""
    with np.errstate(over="ignore"):     # an area past the dtype's range is inf: coarsest
        area = (r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])
    ok = area > 0
    s = xp.sqrt(xp.where(ok, area, 1))
    k = xp.floor(canonical_level + xp.log2(s / canonical_scale) + _LEVEL_EPS)
    k = xp.clip(xp.where(ok, k, k_min), k_min, k_min + num_levels - 1)
    return (k - k_min).astype(xp.int64)


def multi_scale_roi_align(features, rois, output_size, spatial_scales, sampling_ratio=-1,
                          canonical_scale=224, canonical_level=4, *, backend=None):
    """RoI align over a feature pyramid, ``torchvision.ops.MultiScaleRoIAlign`` semantics.

    features: a list (or an ordered dict, torchvision's featmap_names) of (N, C, Hl, Wl) arrays,
    one per FPN level, finest first; spatial_scales: one per map, powers of 2 halving from each
    map to the next (e.g. ``[1/4, 1/8, 1/16, 1/32]``), so map l is level ``k_min + l`` with
    ``k_min = -log2(spatial_scales[0])``.  rois as in :func:`roi_align_forward`, in image pixels.
    Each RoI goes to the level of the FPN paper's rule (torchvision's LevelMapper)::

        k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)

    clamped to the levels there are (area = (x2 - x1) * (y2 - y1); zero, negative or non-finite
    areas go to the finest map), and is pooled from that map by :func:`roi_align_forward` with
    its scale, ``sampling_ratio`` and ``aligned=False``.  Returns (y (array[K, C, oh, ow], the
    RoIs' order), levels (int64 array[K], the index into ``features`` each RoI used)).
    Composed of roi_align, it runs on every backend; a non-finite RoI gives zeros.
    """
    op = "multi_scale_roi_align"
    be = _backend(backend)
    maps, dt = _feature_maps(op, be, features)
    osz = V.pair(op, "output_size", output_size, minimum=1)
    scales, k_min = _level_scales(op, spatial_scales, len(maps))
    cs = V.real(op, "canonical_scale", canonical_scale, positive=True)
    cl = V._int(op, "canonical_level", canonical_level)
    N, C = maps[0].shape[:2]
    if be.is_native(rois):      # (a list of per-image boxes is checked box by box in _rois)
        V.float_dtype(op, features=maps[0], rois=rois)
    r, mask = _rois(op, be, rois, N, dt)
    K = r.shape[0]
    sr = _sampling_ratio(op, sampling_ratio, K, osz)
    xp = be.xp
    levels = _fpn_levels(xp, r, k_min, len(maps), cs, cl)
    y = xp.zeros((K, C) + osz, dt)
    if K == 0:
        _check_batch_indices(op, xp, r, N)
        return y, levels
    for level, (x, scale) in enumerate(zip(maps, scales)):
        idx = xp.nonzero(levels == level)[0]
        if idx.size:
            y[idx] = roi_align_forward(x, r[idx], osz, scale, sr, False, backend=be)
    if mask is not None:
        y[mask] = 0
    return y, levels


def multi_scale_roi_align_backward(grad_y, rois, levels, feature_shapes, output_size,
                                   spatial_scales, sampling_ratio=-1, *, backend=None):
    """Gradient of :func:`multi_scale_roi_align`: returns a list with grad_x of each feature map.

    grad_y (array[K, C, oh, ow]); rois and levels (the forward's rois and returned levels);
    feature_shapes: the maps' (N, C, Hl, Wl) shapes in the forward's order (a list, or a dict
    whose values are taken in order); output_size, spatial_scales and sampling_ratio as in the
    forward.  Each map's gradient is :func:`roi_align_backward` over the RoIs of its level.
    """
    op = "multi_scale_roi_align_backward"
    be = _backend(backend)
    named = _per_level(op, "feature_shapes", feature_shapes,
                       lambda v: isinstance(v, (list, tuple)), "(N, C, H, W) shapes")
    shapes = [V.shape_tuple(op, label, v) for label, v in named]
    _same_n_c(op, [label for label, _ in named], shapes)
    V.array(op, "grad_y", grad_y, be, 4, "(K, C, oh, ow)")
    osz = V.pair(op, "output_size", output_size, minimum=1)
    scales, _ = _level_scales(op, spatial_scales, len(shapes))
    dt = V.float_dtype(op, grad_y=grad_y)
    N, C = shapes[0][:2]
    if be.is_native(rois):
        V.float_dtype(op, grad_y=grad_y, rois=rois)
    r, mask = _rois(op, be, rois, N, dt)
    K = r.shape[0]
    sr = _sampling_ratio(op, sampling_ratio, K, osz)
    V.grad_shape(op, "grad_y", grad_y, (K, C) + osz)
    V.array(op, "levels", levels, be, 1, "(K,)")
    V.int_array(op, "levels", levels)
    V.grad_shape(op, "levels", levels, (K,))
    xp = be.xp
    if K == 0:
        _check_batch_indices(op, xp, r, N)
        return [xp.zeros(s, dt) for s in shapes]
    lv = _snapshot(xp, levels, xp.int64)    # checked here: it only selects rows, no kernel reads it
    lo, hi = int(lv.min()), int(lv.max())
    if lo < 0 or hi >= len(shapes):
        raise ValueError(f"{op}: levels must lie in [0, {len(shapes)}) (one index per feature "
                         f"map), got values in [{lo}, {hi}]")
    g = grad_y
    if mask is not None:    # their rows of r were zeroed by _rois: keep them out of the sum
        g = g.copy()
        g[mask] = 0
    grads = []
    for level, (shape, scale) in enumerate(zip(shapes, scales)):
        idx = xp.nonzero(lv == level)[0]
        if idx.size:
            grads.append(roi_align_backward(_c(be, g[idx]), r[idx], shape, osz, scale, sr, False,
                                            backend=be))
        else:
            grads.append(xp.zeros(shape, dt))
    return grads


__all__ += ["multi_scale_roi_align", "multi_scale_roi_align_backward"]


# ----------------------------------------------------------------------------- conv_transpose2d
# (hooks in <backend>/conv_transpose.py)
__all__ += ["conv_transpose2d_forward", "conv_transpose2d_backward"]


def _conv_transpose_args(op, be, x, weight, stride, padding, output_padding, groups, dilation):
    """-> (stride, pad4, dilation, groups, yshape, conv_hw).  The op is the adjoint of the
    conv2d with weight ``weight`` (F = C_in) over an input of y's shape; conv_hw is that conv's
    output size: (H, W), or more rows/columns when output_padding >= stride (torch allows it
    below the dilation), which the boundary fills with zeros (see _conv_transpose_extend)."""
    V.array(op, "x", x, be, 4, "(N, C_in, H, W)")
    V.array(op, "weight", weight, be, 4, "(C_in, C_out/groups, KH, KW)")
    groups = V.positive_int(op, "groups", groups)
    N, C, H, W = x.shape
    Cw, Cog, KH, KW = weight.shape
    if C % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C_in={C}")
    if Cw != C:
        raise ValueError(f"{op}: weight has {Cw} input channels (weight.shape[0]) but x has "
                         f"C_in={C}")
    if KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {tuple(weight.shape)}")
    stride = V.pair(op, "stride", stride, minimum=1)
    ph, pw = V.pair(op, "padding", padding, minimum=0)
    out_pad = V.pair(op, "output_padding", output_padding, minimum=0)
    dilation = V.pair(op, "dilation", dilation, minimum=1)
    for a in (0, 1):
        if out_pad[a] >= stride[a] and out_pad[a] >= dilation[a]:
            raise ValueError(f"{op}: output_padding must be smaller than either stride or "
                             f"dilation, got output_padding={out_pad}, stride={stride}, "
                             f"dilation={dilation}")
    pad4 = (ph, ph, pw, pw)
    Ho = (H - 1) * stride[0] - 2 * ph + dilation[0] * (KH - 1) + out_pad[0] + 1
    Wo = (W - 1) * stride[1] - 2 * pw + dilation[1] * (KW - 1) + out_pad[1] + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: output size would be {Ho}x{Wo} (< 1) for input {H}x{W}, kernel "
                         f"{KH}x{KW}, stride {stride}, padding {(ph, pw)}, output_padding "
                         f"{out_pad}, dilation {dilation}")
    conv_hw = (conv_out_size(Ho, KH, stride[0], 2 * ph, dilation[0]),
               conv_out_size(Wo, KW, stride[1], 2 * pw, dilation[1]))
    return stride, pad4, dilation, groups, (N, Cog * groups, Ho, Wo), conv_hw


def _conv_transpose_extend(be, a, hw):
    """a (N, C, H, W) zero-extended at the bottom/right to hw (a itself when it has that size)."""
    if tuple(a.shape[2:]) == tuple(hw):
        return a
    e = be.xp.zeros(a.shape[:2] + tuple(hw), dtype=a.dtype)
    e[:, :, :a.shape[2], :a.shape[3]] = a
    return e


def _named_memory_error(op, fn, *args):
    # the conv machinery's workspace message names the conv2d pass it ran; say which op it was
    try:
        return fn(*args)
    except MemoryError as e:
        raise MemoryError(f"{op} (through conv2d's adjoint): {e}") from None


def conv_transpose2d_forward(x, weight, bias=None, stride=1, padding=0, output_padding=0,
                             groups=1, dilation=1, *, backend=None):
    """Transposed 2-D convolution, ``torch.nn.functional.conv_transpose2d`` semantics: the
    gradient of conv2d with respect to its input.

    x (array[N, C_in, H, W]), weight (array[C_in, C_out/groups, KH, KW]), bias (array[C_out]
    or None).  Returns y (array[N, C_out, Ho, Wo]) with
    ``Ho = (H-1)*sh - 2*ph + dh*(KH-1) + output_padding_h + 1``; output_padding (extra rows and
    columns at the bottom/right) must be smaller than the stride or the dilation.
    """
    op = "conv_transpose2d_forward"
    be = _backend(backend)
    stride, pad4, dilation, groups, yshape, conv_hw = _conv_transpose_args(
        op, be, x, weight, stride, padding, output_padding, groups, dilation)
    if bias is not None:
        V.array(op, "bias", bias, be, 1, "(C_out,)")
        if bias.shape[0] != yshape[1]:
            raise ValueError(f"{op}: bias must have shape ({yshape[1]},), got {tuple(bias.shape)}")
    dt = V.float_dtype(op, x=x, weight=weight, bias=bias)
    if x.size == 0 or weight.size == 0:    # N = 0, C_in = 0 or C_out = 0: nothing to spread
        y = be.xp.empty(yshape, dtype=dt)
        y[...] = 0 if bias is None else bias.reshape(1, -1, 1, 1)
        return y
    return _named_memory_error(op, be._conv_transpose2d_forward,
                               _conv_transpose_extend(be, _c(be, x), conv_hw), _c(be, weight),
                               _c(be, bias), stride, pad4, dilation, groups, yshape[2:])


def conv_transpose2d_backward(grad_y, x, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, needs_input_grad=True, has_bias=True, *, backend=None):
    """Gradients of :func:`conv_transpose2d_forward`: returns (grad_x or None, grad_weight,
    grad_bias or None).  grad_x is conv2d_forward(grad_y, weight); grad_weight is conv2d's
    weight gradient with the roles of x and grad_y swapped.  ``needs_input_grad=False`` skips
    grad_x; ``has_bias=False`` skips grad_bias.
    """
    op = "conv_transpose2d_backward"
    be = _backend(backend)
    stride, pad4, dilation, groups, yshape, conv_hw = _conv_transpose_args(
        op, be, x, weight, stride, padding, output_padding, groups, dilation)
    V.array(op, "grad_y", grad_y, be, 4, "(N, C_out, Ho, Wo)")
    V.grad_shape(op, "grad_y", grad_y, yshape)
    dt = V.float_dtype(op, grad_y=grad_y, x=x, weight=weight)
    if x.size == 0 or weight.size == 0:
        return _empty_conv_grads(be.xp, grad_y, x, weight, dt, needs_input_grad, has_bias)
    gx, gw, gb = _named_memory_error(
        op, be._conv_transpose2d_backward, _c(be, grad_y),
        _conv_transpose_extend(be, _c(be, x), conv_hw), _c(be, weight), stride, pad4, dilation,
        groups, bool(needs_input_grad), bool(has_bias))
    if gx is not None and tuple(gx.shape) != tuple(x.shape):    # (rows the boundary added)
        gx = be.xp.ascontiguousarray(gx[:, :, :x.shape[2], :x.shape[3]])
    return gx, gw, gb


# ------------------------------------------------------------------------------- adaptive pools
# (hooks in <backend>/adaptive_pool.py)
__all__ += ["adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
            "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward"]

_BIN_PRODUCT_LIMIT = 2**62    # the bin rule's i*H (i < oh) must fit a signed 64-bit integer
_INTP_MAX = int(np.iinfo(np.intp).max)


def _adaptive_size(op, output_size, H, W):
    """output_size (an int, or a pair of ints / None, None meaning that input size, as torch)
    -> (oh, ow), each >= 1 where given."""
    if output_size is None:
        raise TypeError(f"{op}: output_size must be an int or a pair (of ints or None), got None")
    pair = isinstance(output_size, (tuple, list)) or (
        isinstance(output_size, np.ndarray) and output_size.shape == (2,))
    if not pair:
        return V.pair(op, "output_size", output_size, minimum=1)
    if len(output_size) != 2:
        raise ValueError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
    given = V.pair(op, "output_size", [1 if v is None else v for v in output_size], minimum=1)
    return tuple(size if v is None else g for v, g, size in zip(output_size, given, (H, W)))


def _adaptive_plane(op, name, shape, ohw, itemsize):
    """Checks shared by the four ops once (N, C, H, W) and (oh, ow) are known."""
    N, C, H, W = shape
    if N * C and (H == 0 or W == 0):     # torch refuses too: a bin would have no element
        raise ValueError(f"{op}: {name} must have non-zero height and width, got "
                         f"{tuple(shape)}")
    if N * C and (ohw[0] < 1 or ohw[1] < 1):
        raise ValueError(f"{op}: output size must be at least 1x1, got {ohw[0]}x{ohw[1]}")
    if ohw[0] * H >= _BIN_PRODUCT_LIMIT or ohw[1] * W >= _BIN_PRODUCT_LIMIT:
        raise ValueError(f"{op}: output_size {tuple(ohw)} for input {H}x{W} is too large "
                         f"(output size times input size must stay below 2**62)")
    if N * C * ohw[0] * ohw[1] * itemsize > _INTP_MAX:
        raise ValueError(f"{op}: output_size {tuple(ohw)} gives an output of "
                         f"{N * C * ohw[0] * ohw[1]} elements, more than an array can hold")


_PLAIN_SIZE = (int, type(None))


def _adaptive_forward_args(op, be, x, output_size):
    # the checks depend on x's type, shape and dtype and on output_size alone: a call that
    # repeats a passed combination takes their result from the boundary memo (a classifier
    # head's pool is ~20 us of kernel; the checks were ~2 us).  Only plain ints (and None in a
    # pair) are keys: True == 1 and 7.0 == 7 hash alike but must still be refused.
    t = type(output_size)
    key = None
    if type(be).is_native is _TYPE_TEST and (
            t is int or (t is tuple and len(output_size) == 2
                         and type(output_size[0]) in _PLAIN_SIZE
                         and type(output_size[1]) in _PLAIN_SIZE)):
        try:
            key = (op, be, type(x), x.shape, x.dtype, output_size)
        except AttributeError:      # (not an array: the checks say so)
            key = None
        hit = _memo_get(key)
        if hit is not None:
            return hit
    V.array(op, "x", x, be, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    dt = V.float_dtype(op, x=x)
    ohw = _adaptive_size(op, output_size, H, W)
    _adaptive_plane(op, "x", x.shape, ohw, dt.itemsize)
    hit = ohw, (N, C) + tuple(ohw), dt
    _memo_put(key, hit)
    return hit


def _shape_key(input_shape):
    """input_shape as a memo key part: a tuple of four plain ints, else None (full checks)."""
    if type(input_shape) is tuple and len(input_shape) == 4 and _plain(*input_shape):
        return input_shape
    return None


def _max_backward_key(op, be, grad_y, indices, input_shape):
    """The boundary memo's key of a max-pool backward's metadata checks (the arrays' types,
    shapes and dtypes, input_shape of plain ints), or None (full checks)."""
    if type(be).is_native is not _TYPE_TEST or _shape_key(input_shape) is None:
        return None
    try:
        return (op, be, type(grad_y), grad_y.shape, grad_y.dtype, type(indices),
                indices.shape, indices.dtype, input_shape)
    except AttributeError:
        return None


def _adaptive_backward_args(op, grad_y, input_shape):
    """input_shape as a tuple and the dtype, once grad_y (N, C, oh, ow) is known to be 4-D."""
    shape = V.shape_tuple(op, "input_shape", input_shape)
    dt = V.float_dtype(op, grad_y=grad_y)
    if tuple(grad_y.shape[:2]) != shape[:2]:
        raise ValueError(f"{op}: grad_y has (N, C) = {tuple(grad_y.shape[:2])} but input_shape "
                         f"has {shape[:2]}")
    _adaptive_plane(op, "input_shape", shape, tuple(grad_y.shape[2:]), dt.itemsize)
    return shape, dt


def adaptive_avg_pool2d_forward(x, output_size, *, backend=None):
    """Adaptive average pooling, ``torch.nn.functional.adaptive_avg_pool2d`` semantics.

    x (array[N, C, H, W]); output_size: int or pair (oh, ow), an entry None meaning that input
    size.  Output row i averages input rows ``[floor(i*H/oh), ceil((i+1)*H/oh))`` (columns
    likewise), so bins overlap when oh does not divide H and repeat rows when oh > H.
    Returns y (array[N, C, oh, ow]).
    """
    op = "adaptive_avg_pool2d_forward"
    be = _backend(backend)
    ohw, yshape, dt = _adaptive_forward_args(op, be, x, output_size)
    if x.size == 0:    # N = 0 or C = 0
        return be.xp.empty(yshape, dt)
    return be._adaptive_avg_pool2d_forward(_c(be, x), ohw)


def adaptive_avg_pool2d_backward(grad_y, input_shape, *, backend=None):
    """Gradient of :func:`adaptive_avg_pool2d_forward`: each grad_y / (bin area) added to every
    element of its bin.  grad_y (array[N, C, oh, ow]); input_shape: x.shape.  Returns grad_x."""
    op = "adaptive_avg_pool2d_backward"
    be = _backend(backend)
    key = None
    if type(be).is_native is _TYPE_TEST and _shape_key(input_shape) is not None:
        try:
            key = (op, be, type(grad_y), grad_y.shape, grad_y.dtype, input_shape)
        except AttributeError:
            key = None
        if _memo_get(key) is not None:   # (only calls with work are remembered)
            return be._adaptive_avg_pool2d_backward(_c(be, grad_y), input_shape)
    V.array(op, "grad_y", grad_y, be, 4, "(N, C, oh, ow)")
    shape, dt = _adaptive_backward_args(op, grad_y, input_shape)
    if grad_y.size == 0:
        return be.xp.zeros(shape, dt)
    _memo_put(key, True)
    return be._adaptive_avg_pool2d_backward(_c(be, grad_y), shape)


def adaptive_max_pool2d_forward(x, output_size, *, backend=None):
    """Adaptive max pooling, ``torch.nn.functional.adaptive_max_pool2d(..., return_indices=True)``.

    Bins as :func:`adaptive_avg_pool2d_forward`.  Returns (y (array[N, C, oh, ow]), indices
    (int64, same shape)): the flat ``h*W + w`` of each maximum in the input plane.  As torch: a
    NaN in a bin is its maximum (the last NaN in row-major order when there are several), ties
    keep the first maximum in row-major order.
    """
    op = "adaptive_max_pool2d_forward"
    be = _backend(backend)
    ohw, yshape, dt = _adaptive_forward_args(op, be, x, output_size)
    if x.size == 0:
        xp = be.xp
        return xp.empty(yshape, dt), xp.empty(yshape, xp.int64)
    return be._adaptive_max_pool2d_forward(_c(be, x), ohw)


def adaptive_max_pool2d_backward(grad_y, indices, input_shape, *, backend=None):
    """Gradient of adaptive max pooling: grad_y added at ``indices`` (from
    :func:`adaptive_max_pool2d_forward`) into an input-shaped zero array."""
    op = "adaptive_max_pool2d_backward"
    be = _backend(backend)
    key = _max_backward_key(op, be, grad_y, indices, input_shape)
    hw = _memo_get(key)
    if hw is not None:  # (the indices' values: checked by _indices on every call)
        return be._adaptive_max_pool2d_backward(
            _c(be, grad_y), _indices(op, "indices", be, indices, 0, hw), input_shape)
    V.array(op, "grad_y", grad_y, be, 4, "(N, C, oh, ow)")
    V.array(op, "indices", indices, be, 4, "(N, C, oh, ow)")
    V.int_array(op, "indices", indices)
    V.grad_shape(op, "indices", indices, grad_y.shape)
    shape, dt = _adaptive_backward_args(op, grad_y, input_shape)
    if grad_y.size == 0:
        return be.xp.zeros(shape, dt)
    indices = _indices(op, "indices", be, indices, 0, shape[2] * shape[3])
    _memo_put(key, shape[2] * shape[3])
    return be._adaptive_max_pool2d_backward(_c(be, grad_y), indices, shape)


# ------------------------------------------------------------------------------- deform_conv2d
# (hooks in <backend>/deform_conv.py)
__all__ += ["deform_conv2d_forward", "deform_conv2d_backward"]


def _deform_args(op, be, x, offset, weight, mask, stride, padding, dilation):
    """Checks shared by the deformable conv forward and backward; returns (stride, padding,
    dilation) as pairs, (N, F, Ho, Wo) and the number of offset groups."""
    V.array(op, "x", x, be, 4, "(N, C, H, W)")
    V.array(op, "offset", offset, be, 4, "(N, 2*offset_groups*KH*KW, Ho, Wo)")
    V.array(op, "weight", weight, be, 4, "(F, C/groups, KH, KW)")
    N, C, H, W = x.shape
    F, Cg, KH, KW = weight.shape
    if KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {tuple(weight.shape)}")
    if Cg < 1 or C % Cg:
        raise ValueError(f"{op}: weight has {Cg} input channels per group, which must be "
                         f"positive and divide the input channels C={C} (groups = C // "
                         f"weight.shape[1])")
    groups = C // Cg
    if F % groups:
        raise ValueError(f"{op}: groups={groups} (C={C} // weight.shape[1]={Cg}) must divide the "
                         f"output channels F={F}")
    stride = V.pair(op, "stride", stride, minimum=1)
    padding = V.pair(op, "padding", padding, minimum=0)
    dilation = V.pair(op, "dilation", dilation, minimum=1)
    Ho = conv_out_size(H, KH, stride[0], 2 * padding[0], dilation[0])
    Wo = conv_out_size(W, KW, stride[1], 2 * padding[1], dilation[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: output size would be {Ho}x{Wo} (< 1) for input {H}x{W}, kernel "
                         f"{KH}x{KW}, stride {stride}, padding {padding}, dilation {dilation}")
    KK = KH * KW
    if offset.shape[1] < 2 * KK or offset.shape[1] % (2 * KK):
        raise ValueError(f"{op}: offset must have 2*offset_groups*KH*KW channels, a positive "
                         f"multiple of 2*{KH}*{KW}={2 * KK}, got offset shape "
                         f"{tuple(offset.shape)}")
    og = offset.shape[1] // (2 * KK)
    if C % og:
        raise ValueError(f"{op}: offset_groups={og} (offset.shape[1] // (2*KH*KW)) must divide "
                         f"the input channels C={C}")
    want = (N, 2 * og * KK, Ho, Wo)
    if tuple(offset.shape) != want:
        raise ValueError(f"{op}: offset must have shape {want} (N, 2*offset_groups*KH*KW, Ho, Wo),"
                         f" got {tuple(offset.shape)}")
    if mask is not None:
        V.array(op, "mask", mask, be, 4, "(N, offset_groups*KH*KW, Ho, Wo)")
        want = (N, og * KK, Ho, Wo)
        if tuple(mask.shape) != want:
            raise ValueError(f"{op}: mask must have shape {want} (N, offset_groups*KH*KW, Ho, "
                             f"Wo) for offset_groups={og}, got {tuple(mask.shape)}")
    return stride, padding, dilation, (N, F, Ho, Wo), og


def _deform_workspace(op, x, weight, Ho, Wo, dt):
    """One image's deformable columns (C*KH*KW*Ho*Wo values) must fit the workspace limit:
    every backend builds at least that much (the backends chunk the batch by it)."""
    need = x.shape[1] * weight.shape[2] * weight.shape[3] * Ho * Wo * np.dtype(dt).itemsize
    limit = get_workspace_limit()
    if need > limit:
        raise MemoryError(f"{op}: one image's deformable im2col columns need {need} bytes, over "
                          f"the workspace limit of {limit} bytes (convkit.set_workspace_limit)")


def deform_conv2d_forward(x, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                          mask=None, *, backend=None):
    """Deformable convolution, ``torchvision.ops.deform_conv2d`` semantics (DCN; DCNv2 with
    ``mask``).

    x (array[N, C, H, W]); offset (array[N, 2*offset_groups*KH*KW, Ho, Wo]): per offset group
    and kernel position (row-major i, j), the pair (dy, dx) added to that tap's sampling
    position; weight (array[F, C/groups, KH, KW]) with groups = C // weight.shape[1];
    bias (array[F] or None); mask (array[N, offset_groups*KH*KW, Ho, Wo] or None) multiplies
    each sample.  offset_groups = offset.shape[1] // (2*KH*KW) must divide C; channel c uses
    offset group c // (C / offset_groups).  Samples are bilinear; a point with y <= -1,
    y >= H, x <= -1 or x >= W samples 0, and corners outside the image count as 0.
    Returns y (array[N, F, Ho, Wo]), ``Ho = (H + 2*ph - dh*(KH-1) - 1)//sh + 1``.
    """
    op = "deform_conv2d_forward"
    be = _backend(backend)
    stride, padding, dilation, yshape, _ = _deform_args(op, be, x, offset, weight, mask,
                                                        stride, padding, dilation)
    if bias is not None:
        V.array(op, "bias", bias, be, 1, "(F,)")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got "
                             f"{tuple(bias.shape)}")
    dt = V.float_dtype(op, x=x, offset=offset, weight=weight, bias=bias, mask=mask)
    xp = be.xp
    if x.size == 0 or weight.size == 0:   # N, H, W or F = 0: every sample is 0
        y = xp.zeros(yshape, dt)
        if bias is not None:
            y[...] = bias.reshape(1, -1, 1, 1)
        return y
    _deform_workspace(op, x, weight, yshape[2], yshape[3], dt)
    return be._deform_conv2d_forward(_c(be, x), _c(be, offset), _c(be, weight), _c(be, bias),
                                     stride, padding, dilation, _c(be, mask))


def deform_conv2d_backward(grad_y, x, offset, weight, stride=1, padding=0, dilation=1,
                           mask=None, has_bias=True, *, backend=None):
    """Gradients of :func:`deform_conv2d_forward` with the same arguments: returns
    (grad_x, grad_offset, grad_weight, grad_bias or None, grad_mask or None).  grad_bias is
    None when ``has_bias`` is False, grad_mask when ``mask`` is None.  The offset gradient is
    the derivative of the bilinear sample inside its pixel cell (0 for a point outside the
    sampled range), as torchvision's."""
    op = "deform_conv2d_backward"
    be = _backend(backend)
    stride, padding, dilation, yshape, _ = _deform_args(op, be, x, offset, weight, mask,
                                                        stride, padding, dilation)
    V.array(op, "grad_y", grad_y, be, 4, "(N, F, Ho, Wo)")
    V.grad_shape(op, "grad_y", grad_y, yshape)
    dt = V.float_dtype(op, grad_y=grad_y, x=x, offset=offset, weight=weight, mask=mask)
    xp = be.xp
    if x.size == 0 or weight.size == 0:
        gb = grad_y.sum(axis=(0, 2, 3)).astype(dt) if has_bias else None
        return (xp.zeros(x.shape, dt), xp.zeros(offset.shape, dt), xp.zeros(weight.shape, dt),
                gb, None if mask is None else xp.zeros(mask.shape, dt))
    _deform_workspace(op, x, weight, yshape[2], yshape[3], dt)
    return be._deform_conv2d_backward(_c(be, grad_y), _c(be, x), _c(be, offset), _c(be, weight),
                                      stride, padding, dilation, _c(be, mask), bool(has_bias))


for _name in __all__:
    if _name not in ("asarray", "to_numpy"):     # these two pick their own device
        globals()[_name] = _on_inputs_device(globals()[_name])
del _name


# -------------------------------------------------------------------------------------- arrays
def asarray(a, dtype=None, backend=None):
    """``a`` as an array of the active backend (or ``backend``, a name or a Backend object): a
    NumPy array, a list, a CuPy array or any DLPack / ``__cuda_array_interface__`` producer the
    backend can take."""
    return _backend(backend).asarray(a, dtype=dtype)


def to_numpy(a):
    """Any convkit array (NumPy or device) as a ``numpy.ndarray``."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get") and hasattr(a, "__cuda_array_interface__"):
        return a.get()
    return np.asarray(a)
