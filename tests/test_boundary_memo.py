"""The boundary's memo of checked arguments (convkit.functional._MEMO): conv2d and max_pool2d
remember an argument combination that passed their checks, keyed on the arrays' types, shapes
and dtypes and the plain parameters.  A repeat must give the full path's results bit for bit,
and every error must still come on every call -- for a parameter equal to a remembered one
but of another type (True == 1, 2.0 == 2, np.int64), another dtype or shape, an array whose
shape was changed in place, and index values (checked on each call)."""
import numpy as np
import pytest

import convkit
from convkit import functional as F

f32, f64 = np.float32, np.float64
BACKENDS = ["numpy", "cpu"]


def rnd(*shape, dtype=f32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("be", BACKENDS)
def test_repeat_equals_full_path(be):
    x, w, b = rnd(4, 3, 8, 8), rnd(5, 3, 3, 3, seed=1), rnd(5, seed=2)
    gy = rnd(4, 5, 8, 8, seed=3)
    with convkit.use_backend(be):
        F._MEMO.clear()
        full = [F.conv2d_forward(x, w, b, 1, 1), *F.conv2d_backward(gy, x, w, 1, 1),
                *F.max_pool2d_forward(x, 2)]
        full.append(F.max_pool2d_backward(rnd(4, 3, 4, 4, seed=4), full[-1], x.shape))
        assert len(F._MEMO) == 4
        for _ in range(2):     # remembered: the same results
            again = [F.conv2d_forward(x, w, b, 1, 1), *F.conv2d_backward(gy, x, w, 1, 1),
                     *F.max_pool2d_forward(x, 2)]
            again.append(F.max_pool2d_backward(rnd(4, 3, 4, 4, seed=4), again[-1], x.shape))
            assert all(same_bits(a, c) for a, c in zip(full, again))
        # a non-contiguous x is copied on the remembered path too
        xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        assert same_bits(F.conv2d_forward(xt, w, b, 1, 1), full[0])
        assert len(F._MEMO) == 4


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name, value, exc", [
    ("stride", True, TypeError), ("stride", 1.0, TypeError), ("groups", True, TypeError),
    ("padding", (True, 1), TypeError), ("dilation", np.int64(0), ValueError),
])
def test_conv_equal_parameter_of_another_type(be, name, value, exc):
    x, w = rnd(2, 3, 8, 8), rnd(4, 3, 3, 3)
    kw = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
    with convkit.use_backend(be):
        F.conv2d_forward(x, w, None, **kw)
        F.conv2d_backward(rnd(2, 4, 8, 8), x, w, **kw)
        kw[name] = value
        with pytest.raises(exc, match=name):
            F.conv2d_forward(x, w, None, **kw)
        with pytest.raises(exc, match=name):
            F.conv2d_backward(rnd(2, 4, 8, 8), x, w, **kw)


@pytest.mark.parametrize("be", BACKENDS)
def test_conv_other_arrays_after_a_remembered_call(be):
    x, w, b = rnd(2, 3, 8, 8), rnd(4, 3, 3, 3), rnd(4)
    with convkit.use_backend(be):
        F.conv2d_forward(x, w, b, 1, 1)
        F.conv2d_backward(rnd(2, 4, 8, 8), x, w, 1, 1)
        with pytest.raises(TypeError, match="share one dtype"):
            F.conv2d_forward(x.astype(f64), w, b, 1, 1)
        with pytest.raises(TypeError, match="must be float32 or float64"):
            F.conv2d_forward(x, w, b.astype(np.int32), 1, 1)
        with pytest.raises(ValueError, match="bias must have shape"):
            F.conv2d_forward(x, w, rnd(3), 1, 1)
        with pytest.raises(TypeError, match="ndarray"):
            F.conv2d_forward(x.tolist(), w, b, 1, 1)
        with pytest.raises(ValueError, match="grad_y must have shape"):
            F.conv2d_backward(rnd(2, 4, 7, 8), x, w, 1, 1)
        with pytest.raises(TypeError, match="share one dtype"):
            F.conv2d_backward(rnd(2, 4, 8, 8, dtype=f64), x, w, 1, 1)
        w.shape = (4, 9, 1, 3)              # the remembered array object, another shape
        with pytest.raises(ValueError, match="weight has 9 input channels per group"):
            F.conv2d_forward(x, w, b, 1, 1)
        with pytest.raises(ValueError, match="weight has 9 input channels per group"):
            F.conv2d_backward(rnd(2, 4, 8, 8), x, w, 1, 1)


@pytest.mark.parametrize("be", BACKENDS)
def test_pool_after_a_remembered_call(be):
    x = rnd(2, 3, 8, 8)
    with convkit.use_backend(be):
        y, idx = F.max_pool2d_forward(x, 2)
        F.max_pool2d_backward(y, idx, x.shape)
        with pytest.raises(TypeError, match="kernel_size"):
            F.max_pool2d_forward(x, True)
        with pytest.raises(TypeError, match="kernel_size"):
            F.max_pool2d_forward(x, 2.0)
        with pytest.raises(TypeError, match="x must be float32 or float64"):
            F.max_pool2d_forward(x.astype(np.int32), 2)
        # ceil_mode of another type takes the full checks (the same result here)
        assert same_bits(F.max_pool2d_forward(x, 2, ceil_mode=np.bool_(False))[0], y)
        # index values are checked on every call
        bad = idx.copy()
        bad[0, 0, 0, 0] = 64
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
            F.max_pool2d_backward(y, bad, x.shape)
        bad[0, 0, 0, 0] = -1
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
            F.max_pool2d_backward(y, bad, x.shape)
        with pytest.raises(TypeError, match="indices must be an integer"):
            F.max_pool2d_backward(y, idx.astype(f32), x.shape)
        with pytest.raises(TypeError, match="input_shape"):
            F.max_pool2d_backward(y, idx, (2, 3, 8.0, 8))
        with pytest.raises(TypeError, match="input_shape"):
            F.max_pool2d_backward(y, idx, (2, 3, True, 8))
        with pytest.raises(ValueError, match=r"\(N, C\)"):
            F.max_pool2d_backward(y, idx, (2, 4, 8, 8))
        g = F.max_pool2d_backward(y, idx, (2, 3, np.int64(8), 8))   # full checks, same result
        assert same_bits(g, F.max_pool2d_backward(y, idx, x.shape))


def test_memo_is_bounded():
    F._MEMO.clear()
    with convkit.use_backend("cpu"):
        for n in range(1, F._MEMO_MAX + 20):
            F.max_pool2d_forward(rnd(n, 1, 2, 2), 2)
            assert len(F._MEMO) <= F._MEMO_MAX
