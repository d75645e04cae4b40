"""ReLU's forward runs np.maximum against a cached zero array (faster than the scalar 0): the
same bits as np.maximum(x, 0) for every value class, layout and size; its backward is torch's
select (0 where the output is 0, whatever the incoming gradient); and the residual block's
in-place sums give the same bits as the out-of-place ones."""
import numpy as np
import pytest

import convkit
import convkit.nn as nn
from convkit.nn import layers


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 16, 8, 8), (3, 5), (1,), (0, 4), (700, 400)])
def test_relu_forward_bits(dtype, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    if x.size >= 6:
        x.flat[:6] = [-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf]
    for arr in (x, x.T, x[..., ::2]):
        r = nn.ReLU()
        y = r.forward(arr)
        ref = np.maximum(arr, 0)
        assert y.dtype == ref.dtype and y.shape == ref.shape
        assert y.tobytes() == ref.tobytes()
        g = rng.standard_normal(arr.shape).astype(dtype)
        gx = r.backward(g)
        assert gx.dtype == g.dtype and gx.tobytes() == np.where(ref != 0, g, 0).tobytes()
    assert (x.size > layers._ZEROS_MAX) == (shape == (700, 400))


def test_relu_zero_buffer_untouched():
    x = -np.ones((4, 4), np.float32)
    y = nn.ReLU().forward(x)
    y += 5      # the caller owns y: the shared zero buffer must not change
    assert all((z == 0).all() for z in layers._zero_buffers.values())


def test_residual_block_bits_match_out_of_place():
    """The block's forward / backward against the same children composed by hand with
    out-of-place adds."""
    with convkit.use_backend("cpu"):
        rng = np.random.default_rng(1)
        for cin, cout, stride in ((8, 8, 1), (8, 16, 2)):
            blk = nn.ResidualBlock(cin, cout, stride, seed=3)
            x = rng.standard_normal((4, cin, 8, 8)).astype(np.float32)
            y = blk.forward(x)
            gy = rng.standard_normal(y.shape).astype(np.float32)
            gx = blk.backward(gy)
            h = blk.relu1.forward(blk.bn1.forward(blk.conv1.forward(x)))
            h = blk.bn2.forward(blk.conv2.forward(h))
            y2 = np.maximum(h + blk.shortcut.forward(x), 0)
            g = gy * (y2 != 0)
            gs = blk.shortcut.backward(g)
            gm = blk.conv1.backward(blk.bn1.backward(blk.relu1.backward(
                blk.conv2.backward(blk.bn2.backward(g)))))
            assert y.tobytes() == y2.tobytes()
            assert gx.tobytes() == (gm + gs).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_matches_torch_on_nonfinite(torch, dtype):
    """torch's ReLU gradient is 0 wherever the output is 0 -- also for a NaN or inf incoming
    gradient, and +0 for a negative one -- and passes the gradient where the input is NaN."""
    x = np.array([-1.0, 0.0, -0.0, 2.0, np.nan, -3.0, 4.0, -5.0, 0.5], dtype)
    g = np.array([np.nan, np.inf, -np.inf, 1.0, 5.0, -2.0, np.nan, -7.0, np.inf], dtype)
    r = nn.ReLU()
    r.forward(x)
    got = r.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(g))
    want = xt.grad.numpy()
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_relu_grad_bits_rule(dtype):
    """_relu_grad against the select it implements, for every value class of y (+-0, NaN of
    either sign, tiny and huge values) and of the gradient, float16 taking the select itself."""
    vals = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, 1e-40, 1e-7, 3.0, 6e4], np.float64)
    y = np.abs(vals).astype(dtype)
    y[1] = -0.0
    y[3] = -np.nan
    for g in (np.array([np.nan, np.inf, -np.inf, -1.0, -0.0, 2.0, np.nan, -np.inf, 5.0]),
              -np.arange(9.0)):
        g = g.astype(dtype)
        got = layers._relu_grad(np, y, g)
        want = np.where(y != 0, g, np.zeros((), dtype))
        assert got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()
