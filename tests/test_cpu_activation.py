"""The cpu backend's fused ReLU passes (csrc/relu.h via CpuBackend._relu_forward /
_relu_backward) against the Backend defaults they replace (np.maximum against zeros; the
backward's bit masks): the same bits for every value class (+-0, quiet and signalling NaN of
either sign with payloads, +-inf, subnormals), both dtypes, sizes across the tasks' chunks, any
thread count; arrays the kernels decline take the defaults."""
import numpy as np
import pytest

import convkit
from convkit.backend import Backend, relu_grad_bits
from convkit.cpu import _activation

SPECIALS = [-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-40, -1e-40, 1.5, -2.0]


def _operands(dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    k = min(n, len(SPECIALS))
    x[:k] = SPECIALS[:k]
    if n >= 2 * len(SPECIALS):      # every y class against every g class
        y_cls = np.repeat(SPECIALS, len(SPECIALS))
        g_cls = np.tile(SPECIALS, len(SPECIALS))
        m = min(n, y_cls.size)
        x[-m:], g[-m:] = y_cls[:m], g_cls[:m]
    y = np.maximum(x, 0)            # the forward's output: +-0, > 0 or NaN
    y[:k] = x[:k]                   # and -0 / negative values the kernel must treat as dead
    return y, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 100, (1 << 15) - 1, 1 << 15, 3 * (1 << 15) + 5,
                               128 * 16 * 64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_relu_backward_bits(dtype, n, threads):
    y, g = _operands(dtype, n, seed=n)
    want = relu_grad_bits(np, y, g)
    got = _activation.relu_backward(y, g, threads)
    assert got is not None and got.dtype == y.dtype and got.shape == y.shape
    assert got.tobytes() == want.tobytes()
    # the rule itself, element for element: +0 where y's bits are +-0, else g's bits
    it = np.uint32 if dtype == np.float32 else np.uint64
    dead = (np.abs(y).view(it) == 0)
    assert (got.view(it)[dead] == 0).all()
    assert (got.view(it)[~dead] == g.view(it)[~dead]).all()


def test_relu_backward_hook_4d_and_declines():
    be = convkit.get_backend("cpu")
    y, g = _operands(np.float32, 64 * 16 * 64, seed=3)
    y, g = y.reshape(64, 16, 8, 8), g.reshape(64, 16, 8, 8)
    old = convkit.get_num_threads()
    try:
        for threads in (1, 2):
            convkit.set_num_threads(threads)
            got = be._relu_backward(y, g)
            assert got.tobytes() == Backend._relu_backward(be, y, g).tobytes()
    finally:
        convkit.set_num_threads(old)
    # declined (the default runs): non-contiguous, mixed dtypes, other shapes
    assert _activation.relu_backward(y[:, :, :, ::2], g[:, :, :, ::2], 1) is None
    assert _activation.relu_backward(y, g.astype(np.float64), 1) is None
    assert _activation.relu_backward(y, g.reshape(64, 16, 64), 1) is None
    t = be._relu_backward(y.transpose(0, 1, 3, 2), g.transpose(0, 1, 3, 2))
    assert t.tobytes() == relu_grad_bits(np, y.transpose(0, 1, 3, 2),
                                         g.transpose(0, 1, 3, 2)).tobytes()



def _nans(dtype):
    """Quiet and signalling NaNs of both signs, with payloads, as dtype values."""
    if dtype == np.float32:
        return np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FC12345, 0xFFFFFFFF],
                        np.uint32).view(np.float32)
    return np.array([0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001,
                     0xFFF0000000000001, 0x7FF8000000012345, 0xFFFFFFFFFFFFFFFF],
                    np.uint64).view(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 100, (1 << 15) - 1, 3 * (1 << 15) + 5, 128 * 16 * 64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_relu_forward_bits(dtype, n, threads):
    x, _ = _operands(dtype, n, seed=n + 1)
    x = np.where(np.arange(n) % 3 == 0, x, -np.abs(x)).astype(dtype)    # (dead units too)
    k = min(n, 6)
    x[n - k:] = _nans(dtype)[:k]
    x[: min(n, len(SPECIALS))] = SPECIALS[: min(n, len(SPECIALS))]
    got = _activation.relu_forward(x, threads)
    assert got is not None and got.dtype == x.dtype and got.shape == x.shape
    assert got.tobytes() == np.maximum(x, np.zeros_like(x)).tobytes()
    assert got.tobytes() == np.maximum(x, 0).tobytes()


def test_relu_forward_hook_and_declines():
    be = convkit.get_backend("cpu")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 16, 8, 8)).astype(np.float32)
    x.flat[:6] = _nans(np.float32)
    want = Backend._relu_forward(be, x).tobytes()
    old = convkit.get_num_threads()
    try:
        for threads in (1, 2):
            convkit.set_num_threads(threads)
            assert be._relu_forward(x).tobytes() == want
    finally:
        convkit.set_num_threads(old)
    assert _activation.relu_forward(x[..., ::2], 1) is None
    assert _activation.relu_forward(x.astype(np.float16), 1) is None
    assert be._relu_forward(x[..., ::2]).tobytes() == np.maximum(x[..., ::2], 0).tobytes()
