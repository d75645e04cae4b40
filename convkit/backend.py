"""The Backend interface: public ops for users, protected hooks for implementers.

Users call a Backend object's **public ops** (``be.conv2d_forward(x, w, padding=1)``): they have
exactly the signatures of :mod:`convkit.functional` and run its validation, because each one is
the functional op called with ``backend=self``.  No public name of a Backend object skips the
checks; the ``_``-prefixed hooks are for the boundary alone.

Implementers override the **protected hooks** (``_conv2d_forward``, ``_roi_align_backward``, ...,
one per op; ``batched_nms`` runs ``_nms`` per class).  A subclass that overrides a public op is
refused at class creation, and one that lacks a hook cannot be instantiated (the ``TypeError``
names the hook).  The boundary validates and normalises once, so a hook receives:

* arrays of the backend's own kind (``numpy.ndarray`` for ``numpy``/``cpu``,
  ``cupy.ndarray`` for ``cuda``), C-contiguous, all of one dtype
  (float32 or float64) -- integer arrays (indices, argmax) are int64;
* every "int or pair" argument as a tuple of Python ints;
* conv padding as a 4-tuple ``(top, bottom, left, right)`` (``"same"`` can be
  asymmetric for even kernels, as in torch), pooling padding as ``(ph, pw)``;
* output sizes already computed by :mod:`convkit._shapes` (``out_hw``), so no
  kernel re-derives them (ceil_mode is folded into ``out_hw``);
* rois as a private ``(K, 5)`` array ``[batch_index, x1, y1, x2, y2]`` (copied from the
  caller's before it was checked, so no other thread can change it) with every coordinate
  finite and every batch index an integer in ``[0, N)`` (rows with non-finite coordinates are
  zeroed by the boundary, and the boundary zeroes their outputs/gradients afterwards) --
  unless the class declares ``validates_rois = True``: the hooks then get the private copy
  unchecked and check it themselves;
* max-pool ``indices`` and roi-pool ``argmax`` as a private copy checked to lie in range --
  unless the class declares ``validates_indices = True``: its kernels then get the caller's
  array and must read each index once and range-check it before use.

Zero-size inputs (N = 0, K = 0, no boxes) are handled by the boundary too:
hooks are only called with non-empty work.

Hooks must not keep references to their inputs and must not modify them,
except ``running_mean``/``running_var`` in ``_batch_norm_forward`` (updated in
place in training mode) and ``out=`` buffers.

Optional abilities are declared class attributes with defaults here (``validates_indices``,
``precompile``), never looked up with ``getattr``.
"""
from __future__ import annotations

import abc
import contextlib
import functools
from types import ModuleType
from typing import Any, ClassVar

# public op -> the hook a subclass overrides instead
PUBLIC_OPS = {
    "conv2d_forward": "_conv2d_forward", "conv2d_backward": "_conv2d_backward",
    "max_pool2d_forward": "_max_pool2d_forward", "max_pool2d_backward": "_max_pool2d_backward",
    "avg_pool2d_forward": "_avg_pool2d_forward", "avg_pool2d_backward": "_avg_pool2d_backward",
    "batch_norm_forward": "_batch_norm_forward", "batch_norm_backward": "_batch_norm_backward",
    "roi_pool_forward": "_roi_pool_forward", "roi_pool_backward": "_roi_pool_backward",
    "roi_align_forward": "_roi_align_forward", "roi_align_backward": "_roi_align_backward",
    "nms": "_nms", "batched_nms": "_nms", "box_iou": "_box_iou",
}

# ops added after the first release: their hooks have defaults that raise NotImplementedError
# naming the op and the backend, so a plugin written before them still loads, runs the ops it
# has, and is told which it lacks (convkit.testing.missing_hooks, check_backend)
EXTENSION_OPS = (
    "roi_avg_pool_forward", "roi_avg_pool_backward",
    "roi_max_align_forward", "roi_max_align_backward",
    "ps_roi_align_forward", "ps_roi_align_backward",
    "ps_roi_pool_forward", "ps_roi_pool_backward",
    "conv_transpose2d_forward", "conv_transpose2d_backward",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward",
    "deform_conv2d_forward", "deform_conv2d_backward",
)
PUBLIC_OPS.update({op: "_" + op for op in EXTENSION_OPS})


_NO_DEVICE = contextlib.nullcontext()    # reusable: it keeps no state


# ReLU's forward against a zero array, not the scalar 0: NumPy's maximum against a scalar runs a
# loop about 2-3x slower than against an array ((64, 16, 8, 8) float32: 34 vs 15 us of one core),
# and the values are the same bits (-0 gives +0, a NaN stays the same NaN).  One flat zero buffer
# per array module, dtype and device; arrays above _ZEROS_MAX elements keep the scalar (no large
# buffer is held).
_ZEROS_MAX = 1 << 18
_zero_buffers: dict = {}


def relu_max(xp, x):
    """max(x, 0) as np.maximum gives it (-0 -> +0, a NaN stays the same NaN), against a
    cached zero array."""
    n = x.size
    if n > _ZEROS_MAX:
        return xp.maximum(x, 0)
    key = (xp.__name__, x.dtype.str, str(getattr(x, "device", "")))
    z = _zero_buffers.get(key)
    if z is None:
        z = _zero_buffers[key] = xp.zeros(_ZEROS_MAX, x.dtype)
    return xp.maximum(x, z[:n].reshape(x.shape))


_GRAD_BITS = {4: ("i4", 0x7FFFFFFF, 31), 8: ("i8", 0x7FFFFFFFFFFFFFFF, 63)}


def relu_grad_bits(xp, y, g):
    """torch's ReLU gradient (threshold_backward): +0 where y <= 0, else g.  y is >= 0 or NaN,
    so that is where |y| is 0.  grad * (y != 0) gives NaN for a NaN or inf g at a dead unit, and
    np.where is ~10x slower than that product on a random mask, so the mask is built from y's
    bits: |y|'s bits are 0 only for +-0, and their negation shifted right is all ones for the
    rest; ANDed with g's bits it gives g or +0."""
    spec = _GRAD_BITS.get(y.dtype.itemsize)
    if spec is None or g.dtype != y.dtype or g.shape != y.shape or y.dtype.kind != "f":
        return xp.where(y != 0, g, xp.zeros((), g.dtype))
    it, absmask, shift = spec
    m = y.view(it) & absmask
    xp.negative(m, out=m)
    m >>= shift
    m &= g.view(it)
    return m.view(y.dtype)


@functools.cache
def _functional():
    # imported on first use: convkit.functional imports the registry, which imports this module
    from . import functional
    return functional


class Backend(abc.ABC):
    """Abstract backend.  Subclasses override the ``_``-prefixed hooks, never the public ops."""

    name: ClassVar[str]
    xp: ModuleType

    #: True when ``_max_pool2d_backward`` and ``_roi_pool_backward`` range-check every index
    #: they read (read once, checked before use, ``ValueError`` naming the argument after the
    #: kernel); the boundary then neither scans nor copies ``indices``/``argmax``.  It is
    #: inherited: a subclass replacing those hooks with kernels that trust indices sets it False.
    validates_indices: ClassVar[bool] = False

    #: True when the RoI hooks' kernels check the rois themselves: each skips a row whose batch
    #: index is not an integer in ``[0, N)`` and then raises the boundary's ``ValueError``
    #: (``convkit.functional._check_batch_indices``), and gives a row with a non-finite
    #: coordinate zero outputs (argmax -1) and no gradient.  The boundary then hands the private
    #: rois copy over unchecked and unsanitised (no device -> host read before the kernel).
    validates_rois: ClassVar[bool] = False

    def __init_subclass__(cls, hook_modules=(), **kwargs):
        """``hook_modules``: the backend's op-family modules; each module function named like
        a public op (``conv2d_forward``, ``nms``) becomes that op's hook (``_conv2d_forward``,
        ``_nms``) unless the class body defines the hook itself.  Runs before ABCMeta counts
        the abstract hooks, so bound hooks count as implemented."""
        super().__init_subclass__(**kwargs)
        for module in hook_modules:
            for op, hook in PUBLIC_OPS.items():
                fn = getattr(module, op, None)
                if hook == "_" + op and callable(fn) and hook not in vars(cls):
                    setattr(cls, hook, staticmethod(fn))
        for op, hook in PUBLIC_OPS.items():
            owner = next(k for k in cls.__mro__ if op in vars(k))
            if owner is not Backend:
                raise TypeError(
                    f"{cls.__qualname__}: {owner.__qualname__} overrides the public op {op!r}, "
                    f"which validates its arguments before calling the backend; override the "
                    f"hook {hook!r} instead (it receives normalised arguments)")

    # ------------------------------------------------------------ arrays
    def asarray(self, a: Any, dtype=None):
        """Convert ``a`` (any array-like of this backend's device) to ``xp.ndarray``."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any):
        """Return ``a`` as a ``numpy.ndarray`` (a copy from device memory where needed)."""
        import numpy as np

        return np.asarray(a)

    def synchronize(self) -> None:
        """Wait until all queued work is finished (no-op on the CPU)."""

    def is_native(self, a: Any) -> bool:
        """True when ``a`` is an array this backend's ops accept without conversion."""
        return isinstance(a, self.xp.ndarray)

    def device_of(self, a: Any):
        """A context manager under which the boundary does its own array work (copies, casts,
        zero fills) for an op whose first array argument is ``a``: for a device backend, ``a``'s
        device made current, so inputs on a device other than the current one stay there.
        The default does nothing (host memory has one device)."""
        return _NO_DEVICE

    def info(self) -> dict:
        """Free-form facts for ``convkit info`` (threads, devices, versions)."""
        return {}

    def precompile(self) -> dict:
        """Compile lazily built kernels now (``convkit.precompile()``); returns what was done,
        e.g. seconds per kernel.  Backends with nothing to compile keep this default: ``{}``."""
        return {}

    def _sgd_update(self, params, grads, bufs, lr, momentum, dampening, weight_decay,
                    nesterov) -> None:
        """Protected hook (no checks: convkit.nn.SGD validates and is its only caller): one
        ``torch.optim.SGD`` step over lists of parameters and their gradients, in place:
        ``d = g + weight_decay * p`` (if weight_decay); with momentum, ``buf = d`` at the first
        step (``bufs[i]`` None: a new array is put in the list) and
        ``buf = momentum * buf + (1 - dampening) * d`` after; ``d = d + momentum * buf``
        (Nesterov) or ``buf``; ``p -= lr * d``.  Hyper-parameters are Python floats, checked
        by the optimiser.  This default runs the arrays' own operators, so any backend's arrays
        work; a backend may replace it with a fused kernel giving the same bits."""
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + weight_decay * p if weight_decay else g
            if momentum:
                buf = bufs[i]
                if buf is None:     # (g's copy, not d's: d of a 0-d g is a scalar, no array)
                    buf = bufs[i] = g.copy()
                    if d is not g:
                        buf[...] = d
                else:
                    buf *= momentum
                    if dampening:
                        buf += (1.0 - dampening) * d
                    else:       # (1 - 0) * d is d: the same bits, one temporary less
                        buf += d
                d = d + momentum * buf if nesterov else buf
            p -= lr * d

    def _relu_forward(self, x):
        """Protected hook (no checks: convkit.nn.ReLU is its only caller): max(x, 0) as the
        arrays' maximum gives it (relu_max: -0 gives +0, a NaN stays the same NaN); a backend
        may replace it with a kernel giving the same bits."""
        return relu_max(self.xp, x)

    def _relu_backward(self, y, grad_y):
        """Protected hook (no checks: convkit.nn.ReLU is its only caller): ReLU's gradient from
        its output y, torch's threshold_backward at 0 -- +0 where y <= 0 (y's bits +-0), else
        grad_y's bits, NaN and inf included.  This default runs the arrays' own operators
        (relu_grad_bits), so any backend's arrays work; a backend may replace it with a fused
        kernel giving the same bits."""
        return relu_grad_bits(self.xp, y, grad_y)

    # ------------------------------------------------------------ public ops
    # Each is the functional op of the same name run on this backend: same signature, same
    # checks, same results (see convkit.functional for the semantics).
    def conv2d_forward(self, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                       out=None):
        """:func:`convkit.conv2d_forward` on this backend."""
        return _functional().conv2d_forward(x, weight, bias, stride, padding, dilation, groups,
                                            out=out, backend=self)

    def conv2d_backward(self, grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                        needs_input_grad=True, has_bias=True):
        """:func:`convkit.conv2d_backward` on this backend."""
        return _functional().conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups,
                                             needs_input_grad, has_bias, backend=self)

    def max_pool2d_forward(self, x, kernel_size, stride=None, padding=0, dilation=1,
                           ceil_mode=False, *, out=None):
        """:func:`convkit.max_pool2d_forward` on this backend."""
        return _functional().max_pool2d_forward(x, kernel_size, stride, padding, dilation,
                                                ceil_mode, out=out, backend=self)

    def max_pool2d_backward(self, grad_y, indices, input_shape):
        """:func:`convkit.max_pool2d_backward` on this backend."""
        return _functional().max_pool2d_backward(grad_y, indices, input_shape, backend=self)

    def avg_pool2d_forward(self, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                           count_include_pad=True, *, out=None):
        """:func:`convkit.avg_pool2d_forward` on this backend."""
        return _functional().avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode,
                                                count_include_pad, out=out, backend=self)

    def avg_pool2d_backward(self, grad_y, input_shape, kernel_size, stride=None, padding=0,
                            ceil_mode=False, count_include_pad=True):
        """:func:`convkit.avg_pool2d_backward` on this backend."""
        return _functional().avg_pool2d_backward(grad_y, input_shape, kernel_size, stride,
                                                 padding, ceil_mode, count_include_pad,
                                                 backend=self)

    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, training,
                           momentum=0.1, eps=1e-5, *, out=None):
        """:func:`convkit.batch_norm_forward` on this backend."""
        return _functional().batch_norm_forward(x, weight, bias, running_mean, running_var,
                                                training, momentum, eps, out=out, backend=self)

    def batch_norm_backward(self, grad_y, x, weight, save_mean, save_invstd, training):
        """:func:`convkit.batch_norm_backward` on this backend."""
        return _functional().batch_norm_backward(grad_y, x, weight, save_mean, save_invstd,
                                                 training, backend=self)

    def roi_pool_forward(self, x, rois, output_size, spatial_scale=1.0, *, out=None):
        """:func:`convkit.roi_pool_forward` on this backend."""
        return _functional().roi_pool_forward(x, rois, output_size, spatial_scale, out=out,
                                              backend=self)

    def roi_pool_backward(self, grad_y, argmax, input_shape, rois=None):
        """:func:`convkit.roi_pool_backward` on this backend (rois required when N > 1)."""
        return _functional().roi_pool_backward(grad_y, argmax, input_shape, rois, backend=self)

    def roi_align_forward(self, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                          aligned=False, *, out=None):
        """:func:`convkit.roi_align_forward` on this backend."""
        return _functional().roi_align_forward(x, rois, output_size, spatial_scale,
                                               sampling_ratio, aligned, out=out, backend=self)

    def roi_align_backward(self, grad_y, rois, input_shape, output_size, spatial_scale=1.0,
                           sampling_ratio=-1, aligned=False):
        """:func:`convkit.roi_align_backward` on this backend."""
        return _functional().roi_align_backward(grad_y, rois, input_shape, output_size,
                                                spatial_scale, sampling_ratio, aligned,
                                                backend=self)

    def nms(self, boxes, scores, iou_threshold):
        """:func:`convkit.nms` on this backend."""
        return _functional().nms(boxes, scores, iou_threshold, backend=self)

    def batched_nms(self, boxes, scores, idxs, iou_threshold):
        """:func:`convkit.batched_nms` on this backend (``_nms`` once per class)."""
        return _functional().batched_nms(boxes, scores, idxs, iou_threshold, backend=self)

    def box_iou(self, boxes1, boxes2):
        """:func:`convkit.box_iou` on this backend."""
        return _functional().box_iou(boxes1, boxes2, backend=self)

    # -- ops beyond the first release (DESIGN.md "Functional API"): hooks default to
    # NotImplementedError, see EXTENSION_OPS
    def roi_avg_pool_forward(self, x, rois, output_size, spatial_scale=1.0):
        """:func:`convkit.roi_avg_pool_forward` on this backend."""
        return _functional().roi_avg_pool_forward(x, rois, output_size, spatial_scale,
                                                  backend=self)

    def roi_avg_pool_backward(self, grad_y, rois, input_shape, output_size, spatial_scale=1.0):
        """:func:`convkit.roi_avg_pool_backward` on this backend."""
        return _functional().roi_avg_pool_backward(grad_y, rois, input_shape, output_size,
                                                   spatial_scale, backend=self)

    def roi_max_align_forward(self, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                              aligned=False):
        """:func:`convkit.roi_max_align_forward` on this backend."""
        return _functional().roi_max_align_forward(x, rois, output_size, spatial_scale,
                                                   sampling_ratio, aligned, backend=self)

    def roi_max_align_backward(self, grad_y, argmax, rois, input_shape, output_size,
                               spatial_scale=1.0, sampling_ratio=-1, aligned=False):
        """:func:`convkit.roi_max_align_backward` on this backend."""
        return _functional().roi_max_align_backward(grad_y, argmax, rois, input_shape,
                                                    output_size, spatial_scale, sampling_ratio,
                                                    aligned, backend=self)

    def ps_roi_align_forward(self, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1):
        """:func:`convkit.ps_roi_align_forward` on this backend."""
        return _functional().ps_roi_align_forward(x, rois, output_size, spatial_scale,
                                                  sampling_ratio, backend=self)

    def ps_roi_align_backward(self, grad_y, rois, input_shape, output_size, spatial_scale=1.0,
                              sampling_ratio=-1):
        """:func:`convkit.ps_roi_align_backward` on this backend."""
        return _functional().ps_roi_align_backward(grad_y, rois, input_shape, output_size,
                                                   spatial_scale, sampling_ratio, backend=self)

    def ps_roi_pool_forward(self, x, rois, output_size, spatial_scale=1.0):
        """:func:`convkit.ps_roi_pool_forward` on this backend."""
        return _functional().ps_roi_pool_forward(x, rois, output_size, spatial_scale,
                                                 backend=self)

    def ps_roi_pool_backward(self, grad_y, rois, input_shape, output_size, spatial_scale=1.0):
        """:func:`convkit.ps_roi_pool_backward` on this backend."""
        return _functional().ps_roi_pool_backward(grad_y, rois, input_shape, output_size,
                                                  spatial_scale, backend=self)

    def conv_transpose2d_forward(self, x, weight, bias=None, stride=1, padding=0,
                                 output_padding=0, groups=1, dilation=1):
        """:func:`convkit.conv_transpose2d_forward` on this backend."""
        return _functional().conv_transpose2d_forward(x, weight, bias, stride, padding,
                                                      output_padding, groups, dilation,
                                                      backend=self)

    def conv_transpose2d_backward(self, grad_y, x, weight, stride=1, padding=0, output_padding=0,
                                  groups=1, dilation=1, needs_input_grad=True, has_bias=True):
        """:func:`convkit.conv_transpose2d_backward` on this backend."""
        return _functional().conv_transpose2d_backward(grad_y, x, weight, stride, padding,
                                                       output_padding, groups, dilation,
                                                       needs_input_grad, has_bias, backend=self)

    def adaptive_avg_pool2d_forward(self, x, output_size):
        """:func:`convkit.adaptive_avg_pool2d_forward` on this backend."""
        return _functional().adaptive_avg_pool2d_forward(x, output_size, backend=self)

    def adaptive_avg_pool2d_backward(self, grad_y, input_shape):
        """:func:`convkit.adaptive_avg_pool2d_backward` on this backend."""
        return _functional().adaptive_avg_pool2d_backward(grad_y, input_shape, backend=self)

    def adaptive_max_pool2d_forward(self, x, output_size):
        """:func:`convkit.adaptive_max_pool2d_forward` on this backend."""
        return _functional().adaptive_max_pool2d_forward(x, output_size, backend=self)

    def adaptive_max_pool2d_backward(self, grad_y, indices, input_shape):
        """:func:`convkit.adaptive_max_pool2d_backward` on this backend."""
        return _functional().adaptive_max_pool2d_backward(grad_y, indices, input_shape,
                                                          backend=self)

    def deform_conv2d_forward(self, x, offset, weight, bias=None, stride=1, padding=0,
                              dilation=1, mask=None):
        """:func:`convkit.deform_conv2d_forward` on this backend."""
        return _functional().deform_conv2d_forward(x, offset, weight, bias, stride, padding,
                                                   dilation, mask, backend=self)

    def deform_conv2d_backward(self, grad_y, x, offset, weight, stride=1, padding=0, dilation=1,
                               mask=None, has_bias=True):
        """:func:`convkit.deform_conv2d_backward` on this backend."""
        return _functional().deform_conv2d_backward(grad_y, x, offset, weight, stride, padding,
                                                    dilation, mask, has_bias, backend=self)

    # ------------------------------------------------------------ hooks: conv
    @abc.abstractmethod
    def _conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, out=None):
        """x (N,C,H,W), weight (F,C/groups,KH,KW), bias (F,) or None -> y (N,F,Ho,Wo).

        stride/dilation: (sh, sw)/(dh, dw); padding: (top, bottom, left, right).
        ``out``: optional preallocated C-contiguous y to write into (returned).
        """

    @abc.abstractmethod
    def _conv2d_backward(self, grad_y, x, weight, stride, padding, dilation, groups,
                         needs_input_grad, has_bias):
        """-> (grad_x or None, grad_weight, grad_bias or None)."""

    # ------------------------------------------------------------ hooks: pooling
    @abc.abstractmethod
    def _max_pool2d_forward(self, x, kernel_size, stride, padding, dilation, out_hw, out=None):
        """-> (y (N,C,Ho,Wo), indices int64 (N,C,Ho,Wo)): flat h*W+w into the unpadded plane.

        Padding counts as -inf (never selected unless the whole window is padding,
        which the boundary rules out).  NaN propagates: a NaN in the window wins
        (torch).  Ties: the first maximum in row-major window order wins.
        """

    @abc.abstractmethod
    def _max_pool2d_backward(self, grad_y, indices, input_shape):
        """-> grad_x of ``input_shape`` (scatter-add of grad_y at indices)."""

    @abc.abstractmethod
    def _avg_pool2d_forward(self, x, kernel_size, stride, padding, out_hw, count_include_pad,
                            out=None):
        """-> y (N,C,Ho,Wo).  Divisor as torch: with count_include_pad, the window clipped
        to the padded extent [-p, H+p); without, the number of in-image elements."""

    @abc.abstractmethod
    def _avg_pool2d_backward(self, grad_y, input_shape, kernel_size, stride, padding,
                             count_include_pad):
        """-> grad_x of ``input_shape``.  Output size is grad_y.shape[2:]."""

    # ------------------------------------------------------------ hooks: batch norm
    @abc.abstractmethod
    def _batch_norm_forward(self, x, weight, bias, running_mean, running_var, training,
                            momentum, eps, out=None):
        """-> (y, save_mean (C,), save_invstd (C,)).

        training: batch mean/biased var over (N,H,W); save_invstd = 1/sqrt(var+eps);
        running_mean/var (if not None) updated in place:
        r = (1-momentum)*r + momentum*stat, with the unbiased variance for running_var.
        eval: uses running_mean/var; save_mean = running_mean copy,
        save_invstd = 1/sqrt(running_var+eps).  weight/bias None = no affine.
        """

    @abc.abstractmethod
    def _batch_norm_backward(self, grad_y, x, weight, save_mean, save_invstd, training):
        """-> (grad_x, grad_weight or None, grad_bias or None).  weight None -> no affine:
        grad_weight and grad_bias are None."""

    # ------------------------------------------------------------ hooks: roi
    @abc.abstractmethod
    def _roi_pool_forward(self, x, rois, output_size, spatial_scale, out=None):
        """-> (y (K,C,oh,ow), argmax int64 (K,C,oh,ow): flat h*W+w, -1 for an empty bin)."""

    @abc.abstractmethod
    def _roi_pool_backward(self, grad_y, rois, argmax, input_shape):
        """-> grad_x of ``input_shape``; rois (K,5) give each RoI's batch index."""

    @abc.abstractmethod
    def _roi_align_forward(self, x, rois, output_size, spatial_scale, sampling_ratio, aligned,
                           out=None):
        """-> y (K,C,oh,ow), torchvision's roi_align semantics."""

    @abc.abstractmethod
    def _roi_align_backward(self, grad_y, rois, input_shape, output_size, spatial_scale,
                            sampling_ratio, aligned):
        """-> grad_x of ``input_shape``."""

    # ------------------------------------------------------------ hooks: boxes
    @abc.abstractmethod
    def _nms(self, boxes, scores, iou_threshold):
        """boxes (N,4) xyxy, scores (N,) -> keep int64 indices by decreasing score
        (stable: ties keep the lower index first).  IoU > thr suppresses; a union of 0 -> IoU 0."""

    @abc.abstractmethod
    def _box_iou(self, boxes1, boxes2):
        """(N,4), (M,4) xyxy -> (N,M) IoU; area = (x2-x1)*(y2-y1); union 0 -> 0."""

    # ------------------------------------------------------------ hooks: extension ops
    # Defaults for the ops in EXTENSION_OPS: a backend that lacks one says so.  Each family's
    # normalised arguments are documented in the numpy reference module that implements it
    # (convkit/reference/<family>.py).
    def _missing(self, op):
        raise NotImplementedError(
            f"backend {self.name!r} does not implement {op} (its class {type(self).__qualname__} "
            f"has no hook {'_' + op!r}); run it on another backend with backend='cpu' or "
            f"'numpy', or add the hook (convkit.testing.missing_hooks lists what is missing)")


def _extension_hook(op):
    def hook(self, *args, **kwargs):
        self._missing(op)
    hook.__name__ = hook.__qualname__ = "_" + op
    hook.__doc__ = f"Default: NotImplementedError naming {op!r} (see convkit.backend.EXTENSION_OPS)."
    hook._convkit_missing = True      # how convkit.testing.missing_hooks recognises a default
    return hook


for _op in EXTENSION_OPS:
    setattr(Backend, "_" + _op, _extension_hook(_op))
del _op
