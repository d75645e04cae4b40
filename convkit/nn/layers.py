"""Layers: explicit forward/backward over the public ops of :mod:`convkit.functional`.

Each forward call pushes exactly what its backward needs (``self._push``); each backward pops the
latest (``self._pop``).  Layers call only ``convkit.functional`` ops and the active backend's
``xp`` -- never a backend-specific branch.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._config import blas_single_thread
from .._registry import get_backend
from ..backend import _ZEROS_MAX, _zero_buffers, relu_grad_bits, relu_max  # noqa: F401
from .init import INITS, make_rng
from .losses import sigmoid
from .module import Module, Sequential, check_float_input

__all__ = ["Conv2d", "ConvTranspose2d", "BatchNorm2d", "ReLU", "LeakyReLU", "Sigmoid",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "Flatten", "Dropout",
           "ToFloat", "Normalize", "Identity", "ResidualBlock"]


def _small_matmul(a, b):
    """a @ b, on one BLAS thread when small: waking BLAS's threads costs more than a small GEMM
    computes, and on a busy machine a lot more ((64, 120) @ (120, 84) float32 took 16 ms on
    OpenBLAS's 2 threads against 18 us on one, bench/RESULTS_classify.md).  Above _SMALL_MACS
    BLAS threads pay for themselves.  Device GEMMs (CuPy) are not affected by the pin."""
    if a.size * b.shape[-1] > _SMALL_MACS:
        with blas_single_thread.released():     # inside a Sequential's pin
            return a @ b
    if blas_single_thread.held():               # (a Sequential's pin: BLAS is on one thread)
        return a @ b
    with blas_single_thread:
        return a @ b


_SMALL_MACS = 1 << 22


def _rows_matmul(a, b):
    """a @ b (a 2-D) row by row, as a stack of one-row products: row i's bits do not depend on
    a's other rows.  BLAS rounds a GEMM's output differently for another row count and another
    place among the rows, so a Linear layer over a batch slice gave other bits than over the
    whole batch (convkit.dask's batch chunks must equal the in-memory call bitwise: DESIGN.md
    "Scale-out").  Inference only (eval mode, what ``predict`` runs): the stack of one-row
    products costs about 2.5x the GEMM, which training steps do not pay."""
    return _small_matmul(a[:, None, :], b)[:, 0, :]


def _init(init):
    """``init``: a name from :data:`convkit.nn.init.INITS`, or a callable
    ``fn(shape, rng, dtype) -> array`` (drawn on the host; checked for shape and dtype)."""
    if callable(init):
        def draw(shape, rng, dtype):
            w = np.asarray(init(shape, rng, dtype))
            if w.shape != tuple(shape):
                raise ValueError(f"init callable {init!r} returned shape {w.shape}, expected "
                                 f"{tuple(shape)}")
            if np.dtype(w.dtype).kind != "f":
                raise TypeError(f"init callable {init!r} returned {w.dtype}, expected floats")
            return w.astype(dtype, copy=False)
        return draw
    try:
        return INITS[init]
    except (KeyError, TypeError):
        raise ValueError(f"unknown init {init!r}; choose one of {sorted(INITS)} or pass a "
                         f"callable fn(shape, rng, dtype) -> array") from None


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"layer dtype must be float32 or float64, got {dt}")
    return dt


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else tuple(int(e) for e in v)


def _add_conv_params(layer, op, in_channels, out_channels, kernel_size, groups, bias, dtype,
                     seed, init, transposed):
    """Check groups, draw the weight ((F, C/groups) or, transposed, (C_in, C_out/groups), then
    the kernel) and register weight and a zero bias (array[out_channels]) on ``layer``."""
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{op}: groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")
    k = _pair(kernel_size)
    dt = _dtype(dtype)
    lead = (in_channels, out_channels // groups) if transposed else \
        (out_channels, in_channels // groups)
    be = get_backend()
    layer.add_param("weight", be.asarray(_init(init)(lead + k, make_rng(seed), dt)))
    if bias:
        layer.add_param("bias", be.xp.zeros(out_channels, dt))
    return k


class Conv2d(Module):
    """2-D convolution (cross-correlation), torch's ``nn.Conv2d`` layout.

    weight (array[F, C/groups, KH, KW]) initialised with ``init`` (Kaiming normal by default, a
    name or a callable ``fn(shape, rng, dtype)``) from ``np.random.default_rng(seed)``; bias
    (array[F]) zero.  ``needs_input_grad=False`` makes backward skip grad_x and return None (a
    first layer: the image needs no gradient).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, needs_input_grad=True, dtype=np.float32, seed=None,
                 init="kaiming"):
        super().__init__()
        k = _add_conv_params(self, "Conv2d", in_channels, out_channels, kernel_size, groups,
                             bias, dtype, seed, init, transposed=False)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.has_bias, self.needs_input_grad = bool(bias), bool(needs_input_grad)

    def forward(self, x):
        check_float_input("Conv2d", x)
        be = self._active()
        y = F.conv2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride,
                             self.padding, self.dilation, self.groups, backend=be)
        self._push(x)
        return y

    def backward(self, grad_y):
        x = self._pop()
        gx, gw, gb = F.conv2d_backward(grad_y, x, self.params["weight"], self.stride,
                                       self.padding, self.dilation, self.groups,
                                       needs_input_grad=self.needs_input_grad,
                                       has_bias=self.has_bias)
        self._accumulate("weight", gw)
        if self.has_bias:
            self._accumulate("bias", gb)
        return gx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class ConvTranspose2d(Module):
    """Transposed convolution, torch's ``nn.ConvTranspose2d`` (weight (array[C_in, C_out/groups,
    KH, KW]), bias (array[C_out])); output size
    ``Ho = (H - 1)*sh - 2*ph + dh*(KH - 1) + oph + 1``, ``output_padding < max(stride, dilation)``.

    It is the adjoint of :func:`convkit.conv2d_forward` with the same weight read as a conv
    weight (F = C_in, C = C_out): the forward is conv2d_backward's grad_x, the input gradient is a
    conv2d_forward of grad_y, and the weight gradient is conv2d_backward's grad_weight with the
    roles of input and output swapped (:func:`convkit.conv_transpose2d_forward`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32, seed=None,
                 init="kaiming"):
        super().__init__()
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.output_padding, self.dilation = _pair(output_padding), _pair(dilation)
        for name in ("stride", "dilation"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"ConvTranspose2d: {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if min(self.padding) < 0 or min(self.output_padding) < 0:
            raise ValueError("ConvTranspose2d: padding and output_padding must be >= 0")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"ConvTranspose2d: output_padding {self.output_padding} must be "
                                 f"smaller than stride {self.stride} or dilation {self.dilation}")
        k = _add_conv_params(self, "ConvTranspose2d", in_channels, out_channels, kernel_size,
                             groups, bias, dtype, seed, init, transposed=True)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.groups, self.has_bias = groups, bool(bias)

    def _conv(self):
        return self.stride, self.padding, self.dilation, self.groups

    def output_shape(self, shape):
        """(N, C_out, Ho, Wo) for an input of ``shape`` (N, C_in, H, W)."""
        out = []
        for n, s, p, d, k, op in zip(shape[2:], self.stride, self.padding, self.dilation,
                                     self.kernel_size, self.output_padding):
            out.append((n - 1) * s - 2 * p + d * (k - 1) + op + 1)
        if min(out) < 1:
            raise ValueError(f"ConvTranspose2d: input {tuple(shape)} gives an output size "
                             f"{tuple(out)} < 1")
        return (shape[0], self.out_channels, *out)

    def forward(self, x):
        check_float_input("ConvTranspose2d", x)
        self._active()
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvTranspose2d: x must be (N, {self.in_channels}, H, W), got "
                             f"shape {tuple(x.shape)}")
        y = F.conv_transpose2d_forward(x, self.params["weight"], self.params.get("bias"),
                                       self.stride, self.padding, self.output_padding,
                                       self.groups, self.dilation)
        self._push(x)
        return y

    def backward(self, grad_y):
        x = self._pop()
        gx, gw, gb = F.conv_transpose2d_backward(grad_y, x, self.params["weight"], self.stride,
                                                 self.padding, self.output_padding, self.groups,
                                                 self.dilation, has_bias=self.has_bias)
        self._accumulate("weight", gw)
        if self.has_bias:
            self._accumulate("bias", gb)
        return gx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, "
                f"output_padding={self.output_padding}")


class BatchNorm2d(Module):
    """Spatial batch norm (torch's ``nn.BatchNorm2d``): params weight (ones) and bias (zeros),
    buffers running_mean (zeros) and running_var (ones), updated in training with ``momentum``
    (running_var from the unbiased batch variance), and ``num_batches_tracked`` (an int64 host
    counter of training forwards, as torch keeps it).  eval() normalises with the running
    stats."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32):
        super().__init__()
        dt = _dtype(dtype)
        xp = get_backend().xp
        self.num_features, self.affine = num_features, affine
        self.eps, self.momentum = eps, momentum
        if affine:
            self.add_param("weight", xp.ones(num_features, dt))
            self.add_param("bias", xp.zeros(num_features, dt))
        self.add_buffer("running_mean", xp.zeros(num_features, dt))
        self.add_buffer("running_var", xp.ones(num_features, dt))
        self.add_buffer("num_batches_tracked", np.zeros((), np.int64))
        self._host_buffers.add("num_batches_tracked")

    def forward(self, x):
        check_float_input("BatchNorm2d", x)
        be = self._active()
        b = self.buffers
        y, mean, invstd = F.batch_norm_forward(
            x, self.params.get("weight"), self.params.get("bias"), b["running_mean"],
            b["running_var"], self.training, self.momentum, self.eps, backend=be)
        if self.training:
            b["num_batches_tracked"] += 1
        self._push((x, mean, invstd, self.training))
        return y

    def backward(self, grad_y):
        x, mean, invstd, training = self._pop()
        gx, gw, gb = F.batch_norm_backward(grad_y, x, self.params.get("weight"), mean, invstd,
                                           training)
        if self.affine:
            self._accumulate("weight", gw)
            self._accumulate("bias", gb)
        return gx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


# (the Backend defaults of ReLU's forward and backward; tests and bench/relu_grad_ab.py use them
# by these names)
_relu = relu_max
_relu_grad = relu_grad_bits


class ReLU(Module):
    """max(x, 0); the gradient at 0 is 0 (torch)."""

    def forward(self, x):
        check_float_input("ReLU", x)
        y = self.backend._relu_forward(x)    # NaN stays NaN, as in torch
        self._push(y)
        return y

    def backward(self, grad_y):
        y = self._pop()
        return self.backend._relu_backward(y, grad_y)


class LeakyReLU(Module):
    """x where x > 0, else ``negative_slope * x`` (torch's ``nn.LeakyReLU``; the gradient at 0
    is negative_slope, NaN propagates)."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        check_float_input("LeakyReLU", x)
        pos = x > 0
        self._push(pos)
        return self.xp.where(pos, x, x * self.negative_slope)

    def backward(self, grad_y):
        pos = self._pop()
        return self.xp.where(pos, grad_y, grad_y * self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope:g}"


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow; gradient y (1 - y)."""

    def forward(self, x):
        check_float_input("Sigmoid", x)
        y = sigmoid(x)
        self._push(y)
        return y

    def backward(self, grad_y):
        y = self._pop()
        return grad_y * y * (1 - y)


class MaxPool2d(Module):
    """Max pooling (torch's ``nn.MaxPool2d``); stride None = kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        check_float_input("MaxPool2d", x)
        y, idx = F.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                      self.dilation, self.ceil_mode)
        self._push((idx, x.shape))
        return y

    def backward(self, grad_y):
        idx, shape = self._pop()
        return F.max_pool2d_backward(grad_y, idx, shape)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Average pooling (torch's ``nn.AvgPool2d``, no divisor_override)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        check_float_input("AvgPool2d", x)
        y = F.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                 self.ceil_mode, self.count_include_pad)
        self._push(x.shape)
        return y

    def backward(self, grad_y):
        shape = self._pop()
        return F.avg_pool2d_backward(grad_y, shape, self.kernel_size, self.stride,
                                     self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average over torch's adaptive bins (``nn.AdaptiveAvgPool2d``,
    :func:`convkit.adaptive_avg_pool2d_forward`): output_size an int, a pair, or a pair with
    None (keep that input size), so any input size works."""

    def __init__(self, output_size):
        super().__init__()
        osz = (output_size, output_size) if output_size is None or np.isscalar(output_size) \
            else tuple(output_size)
        if len(osz) != 2 or any(o is not None and int(o) < 1 for o in osz):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be a positive int or pair "
                             f"(None keeps the input size), got {output_size!r}")
        self.output_size = tuple(None if o is None else int(o) for o in osz)

    def forward(self, x):
        check_float_input("AdaptiveAvgPool2d", x)
        self._active()
        y = F.adaptive_avg_pool2d_forward(x, self.output_size)
        self._push(tuple(x.shape))
        return y

    def backward(self, grad_y):
        return F.adaptive_avg_pool2d_backward(grad_y, self._pop())

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Linear(Module):
    """y = x @ weight.T + bias; weight (array[out, in]) as torch, x (array[N, in])."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None,
                 init="kaiming"):
        super().__init__()
        dt = _dtype(dtype)
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bool(bias)
        w = _init(init)((out_features, in_features), make_rng(seed), dt)
        be = get_backend()
        self.add_param("weight", be.asarray(w))
        if self.has_bias:
            self.add_param("bias", be.xp.zeros(out_features, dt))

    def forward(self, x):
        w = self.params["weight"]
        # (x of the layer's float dtype passes check_float_input: the checks in their order
        # only when something is off)
        if x.dtype != w.dtype or x.ndim != 2 or x.shape[1] != self.in_features:
            check_float_input("Linear", x)
            if x.ndim != 2 or x.shape[1] != self.in_features:
                raise ValueError(f"Linear: x must be 2-D (N, {self.in_features}), got shape "
                                 f"{tuple(x.shape)} (use Flatten() after a conv stack)")
            self._active()
            raise TypeError(f"Linear: x is {x.dtype} but the layer is {w.dtype}")
        self._active()
        y = _small_matmul(x, w.T) if self.training else _rows_matmul(x, w.T)
        if self.has_bias:
            y += self.params["bias"]
        self._push(x)
        return y

    def backward(self, grad_y):
        x = self._pop()
        frozen, grads = self.frozen, self.grads
        if "weight" not in frozen:
            grads["weight"] += _small_matmul(grad_y.T, x)
        if self.has_bias and "bias" not in frozen:
            grads["bias"] += grad_y.sum(axis=0)
        return _small_matmul(grad_y, self.params["weight"])

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        self._push(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_y):
        return grad_y.reshape(self._pop())


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, grad_y):
        return grad_y


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p); identity in eval.  Masks come from ``np.random.default_rng(seed)`` on the host (the
    same masks on every backend), moved to the backend with asarray."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = make_rng(seed)

    def forward(self, x):
        check_float_input("Dropout", x)
        if not self.training or self.p == 0.0:
            self._push(None)
            return x
        keep = self.rng.random(x.shape) >= self.p
        scale = get_backend().asarray((keep / (1.0 - self.p)).astype(x.dtype))
        self._push(scale)
        return x * scale

    def backward(self, grad_y):
        scale = self._pop()
        return grad_y if scale is None else grad_y * scale

    def extra_repr(self):
        return f"p={self.p}"


class ToFloat(Module):
    """The explicit integer -> float step: uint8 images (0..255) become ``dtype`` times ``scale``
    (default 1/255, as torchvision's ToTensor).  Float input is only cast and scaled too.  No
    gradient flows into integer images: backward returns None."""

    def __init__(self, dtype=np.float32, scale=1.0 / 255.0):
        super().__init__()
        self.dtype = _dtype(dtype)
        self.scale = float(scale)

    def _set_dtype(self, dt):
        self.dtype = dt

    def forward(self, x):
        x = self.xp.asarray(x)
        y = x.astype(self.dtype)
        if self.scale != 1.0:
            y *= self.dtype.type(self.scale)
        return y

    def backward(self, grad_y):
        return None

    def extra_repr(self):
        return f"dtype={self.dtype}, scale={self.scale:g}"


class Normalize(Module):
    """Per-channel (x - mean) / std on (N, C, H, W) float input (torchvision's Normalize).
    mean and 1/std are non-persistent buffers: they move with ``to`` / ``astype`` and stay out
    of the state dict."""

    def __init__(self, mean, std, dtype=np.float32):
        super().__init__()
        dt = _dtype(dtype)
        mean = np.asarray(mean, dt).reshape(1, -1, 1, 1)
        std = np.asarray(std, dt).reshape(1, -1, 1, 1)
        if np.any(std <= 0):
            raise ValueError("Normalize: std must be positive")
        be = get_backend()
        self.add_buffer("mean", be.asarray(mean), persistent=False)
        self.add_buffer("inv_std", be.asarray(1.0 / std), persistent=False)

    def forward(self, x):
        check_float_input("Normalize", x)
        self._active()
        return (x - self.buffers["mean"]) * self.buffers["inv_std"]

    def backward(self, grad_y):
        return grad_y * self.buffers["inv_std"]


class ResidualBlock(Module):
    """ResNet basic block (He et al. 2016): conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut
    (identity, or conv1x1(stride)-BN when the shape changes), then ReLU.

    Children: conv1, bn1, relu1, conv2, bn2, shortcut (Sequential; empty for identity), relu2.
    """

    def __init__(self, in_channels, out_channels, stride=1, dtype=np.float32, seed=None):
        super().__init__()
        rng = make_rng(seed)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, dtype=dtype,
                            seed=rng)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, dtype=dtype, seed=rng)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride, 0, bias=False,
                                              dtype=dtype, seed=rng),
                                       BatchNorm2d(out_channels, dtype=dtype))
        else:
            self.shortcut = Sequential()
        self.relu2 = ReLU()

    def forward(self, x):
        h = self.relu1.forward(self.bn1.forward(self.conv1.forward(x)))
        h = self.bn2.forward(self.conv2.forward(h))
        h += self.shortcut.forward(x)      # (h: batch norm's new output, no one else's array)
        return self.relu2.forward(h)

    def backward(self, grad_y):
        g = self.relu2.backward(grad_y)
        gs = self.shortcut.backward(g)
        gm = self.conv1.backward(self.bn1.backward(self.relu1.backward(
            self.conv2.backward(self.bn2.backward(g)))))
        gm += gs            # (gm: the conv's new grad_x)
        return gm
