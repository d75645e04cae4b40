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


def _bn_args(C=3, seed=0):
    return (rnd(4, C, 5, 5, seed=seed), rnd(C, seed=seed + 1), rnd(C, seed=seed + 2),
            rnd(C, seed=seed + 3), np.abs(rnd(C, seed=seed + 4)) + 0.5)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_repeat_equals_full_path(be, training):
    x, w, b, rm, rv = _bn_args()
    gy = rnd(*x.shape, seed=9)
    with convkit.use_backend(be):
        F._MEMO.clear()
        rm0, rv0 = rm.copy(), rv.copy()
        full = F.batch_norm_forward(x, w, b, rm0, rv0, training, 0.1, 1e-5)
        gfull = F.batch_norm_backward(gy, x, w, full[1], full[2], training)
        assert len(F._MEMO) == 2
        for _ in range(2):      # remembered: the same results and running statistics
            rm1, rv1 = rm.copy(), rv.copy()
            again = F.batch_norm_forward(x, w, b, rm1, rv1, training, 0.1, 1e-5)
            gagain = F.batch_norm_backward(gy, x, w, again[1], again[2], training)
            assert all(same_bits(a, c) for a, c in zip(full, again))
            assert all(same_bits(a, c) for a, c in zip(gfull, gagain))
            assert same_bits(rm1, rm0) and same_bits(rv1, rv0)
        # a non-contiguous x is copied on the remembered path too
        xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        assert same_bits(F.batch_norm_forward(xt, w, b, rm.copy(), rv.copy(), training)[0],
                         full[0])
        assert same_bits(F.batch_norm_backward(gy, xt, w, full[1], full[2], training)[0],
                         gfull[0])
        assert len(F._MEMO) == 2
        # one affine half: completed on every call (not remembered), as torch does
        F._MEMO.clear()
        y1 = F.batch_norm_forward(x, w, None, rm.copy(), rv.copy(), training)[0]
        y2 = F.batch_norm_forward(x, w, None, rm.copy(), rv.copy(), training)[0]
        assert same_bits(y1, y2) and len(F._MEMO) == 0


@pytest.mark.parametrize("be", BACKENDS)
def test_batch_norm_running_stats_state_checked_after_a_remembered_call(be):
    """Contiguity, writeability and overlap depend on the arrays, not their metadata: each
    remembered call checks them again."""
    x, w, b, rm, rv = _bn_args()
    with convkit.use_backend(be):
        F.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
        ro = rm.copy()
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="running_mean must be writeable"):
            F.batch_norm_forward(x, w, b, ro, rv, True, 0.1, 1e-5)
        strided = np.zeros(6, f32)[::2]
        with pytest.raises(ValueError, match="running_var must be C-contiguous"):
            F.batch_norm_forward(x, w, b, rm, strided, True, 0.1, 1e-5)
        for alias, other in ((w, "weight"), (b, "bias"), (rv, "running_var")):
            with pytest.raises(ValueError, match=f"running_mean must not share memory with "
                                                 f"{other}"):
                F.batch_norm_forward(x, w, b, alias, rv, True, 0.1, 1e-5)
        xv = x.copy()
        with pytest.raises(ValueError, match="running_var must not share memory with x"):
            F.batch_norm_forward(xv, w, b, rm, xv.reshape(-1)[:3], True, 0.1, 1e-5)
        with pytest.raises(ValueError, match="running_var must not share memory with bias"):
            F.batch_norm_forward(x, w, b, rm, b, True, 0.1, 1e-5)
        # eval reads the running statistics only: a read-only one is fine there
        F.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5)
        F.batch_norm_forward(x, w, b, ro, rv, False, 0.1, 1e-5)
        # parameters of other types or values take the full checks
        with pytest.raises(ValueError, match="momentum must be finite"):
            F.batch_norm_forward(x, w, b, rm, rv, True, float("nan"), 1e-5)
        with pytest.raises(ValueError, match="eps must be > 0"):
            F.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 0.0)
        with pytest.raises(TypeError, match="momentum must be a real number"):
            F.batch_norm_forward(x, w, b, rm, rv, True, True, 1e-5)
        with pytest.raises(TypeError, match="share one dtype"):
            F.batch_norm_forward(x, w, b, rm.astype(f64), rv, True, 0.1, 1e-5)
        with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
            F.batch_norm_forward(x, rnd(4), b, rm, rv, True, 0.1, 1e-5)


@pytest.mark.parametrize("be", BACKENDS)
def test_batch_norm_backward_after_a_remembered_call(be):
    x, w, b, rm, rv = _bn_args()
    gy = rnd(*x.shape, seed=9)
    with convkit.use_backend(be):
        _, m, inv = F.batch_norm_forward(x, w, b, rm, rv, True)
        F.batch_norm_backward(gy, x, w, m, inv, True)
        with pytest.raises(ValueError, match="grad_y must have shape"):
            F.batch_norm_backward(gy[:3], x, w, m, inv, True)
        with pytest.raises(TypeError, match="share one dtype"):
            F.batch_norm_backward(gy.astype(f64), x, w, m, inv, True)
        with pytest.raises(ValueError, match="save_mean and save_invstd are required"):
            F.batch_norm_backward(gy, x, w, None, inv, True)
        with pytest.raises(TypeError, match="ndarray"):
            F.batch_norm_backward(gy, x, w.tolist(), m, inv, True)
        m.shape = (3, 1)        # the remembered array object, another shape
        with pytest.raises(ValueError, match="save_mean must be 1-D"):
            F.batch_norm_backward(gy, x, w, m, inv, True)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("args", [(2, None, 0, False, True), (3, 2, 1, True, False),
                                  (8, None, 0, False, True)])
def test_avg_pool_repeat_equals_full_path(be, args):
    x = rnd(2, 3, 8, 8)
    with convkit.use_backend(be):
        F._MEMO.clear()
        y = F.avg_pool2d_forward(x, *args)
        g = F.avg_pool2d_backward(rnd(*y.shape, seed=5), x.shape, *args)
        assert len(F._MEMO) == 2
        for _ in range(2):
            assert same_bits(F.avg_pool2d_forward(x, *args), y)
            assert same_bits(F.avg_pool2d_backward(rnd(*y.shape, seed=5), x.shape, *args), g)
        assert len(F._MEMO) == 2
        # equal arguments of other types: the full checks, the same results
        k, s, p, cm, cip = args
        assert same_bits(F.avg_pool2d_forward(x, k, s, p, cm, int(cip)), y)
        assert same_bits(F.avg_pool2d_backward(rnd(*y.shape, seed=5), list(x.shape), k, s, p,
                                               np.bool_(cm), cip), g)


@pytest.mark.parametrize("be", BACKENDS)
def test_avg_pool_after_a_remembered_call(be):
    x = rnd(2, 3, 8, 8)
    with convkit.use_backend(be):
        y = F.avg_pool2d_forward(x, 2)
        F.avg_pool2d_backward(y, x.shape, 2)
        with pytest.raises(TypeError, match="kernel_size"):
            F.avg_pool2d_forward(x, True)
        with pytest.raises(TypeError, match="kernel_size"):
            F.avg_pool2d_backward(y, x.shape, 2.0)
        with pytest.raises(TypeError, match="x must be float32 or float64"):
            F.avg_pool2d_forward(x.astype(np.int32), 2)
        with pytest.raises(TypeError, match="grad_y must be float32 or float64"):
            F.avg_pool2d_backward(y.astype(np.int32), x.shape, 2)
        with pytest.raises(ValueError, match="grad_y must have shape"):
            F.avg_pool2d_backward(y[:, :, :3], x.shape, 2)
        with pytest.raises(TypeError, match="input_shape"):
            F.avg_pool2d_backward(y, (2, 3, 8.0, 8), 2)
        with pytest.raises(ValueError, match="padding"):
            F.avg_pool2d_forward(x, 2, None, 2)
        x.shape = (2, 3, 4, 16)     # the remembered array object, another shape
        assert F.avg_pool2d_forward(x, 2).shape == (2, 3, 2, 8)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_repeat_equals_full_path(be, kind):
    x = rnd(2, 3, 9, 7)
    fwd = getattr(F, f"adaptive_{kind}_pool2d_forward")
    with convkit.use_backend(be):
        F._MEMO.clear()
        full = fwd(x, (4, None))
        y = full[0] if kind == "max" else full
        gy = rnd(*y.shape, seed=5)
        if kind == "max":
            g = F.adaptive_max_pool2d_backward(gy, full[1], x.shape)
        else:
            g = F.adaptive_avg_pool2d_backward(gy, x.shape)
        assert len(F._MEMO) == 2
        for _ in range(2):     # remembered: the same results
            again = fwd(x, (4, None))
            if kind == "max":
                assert same_bits(again[0], full[0]) and same_bits(again[1], full[1])
                assert same_bits(F.adaptive_max_pool2d_backward(gy, full[1], x.shape), g)
            else:
                assert same_bits(again, full)
                assert same_bits(F.adaptive_avg_pool2d_backward(gy, x.shape), g)
        # a non-contiguous x / grad_y is copied on the remembered path too
        xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        gt = np.ascontiguousarray(gy.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        if kind == "max":
            assert same_bits(fwd(xt, (4, None))[0], full[0])
            assert same_bits(F.adaptive_max_pool2d_backward(gt, full[1], x.shape), g)
        else:
            assert same_bits(fwd(xt, (4, None)), full)
            assert same_bits(F.adaptive_avg_pool2d_backward(gt, x.shape), g)
        assert len(F._MEMO) == 2


@pytest.mark.parametrize("be", BACKENDS)
def test_adaptive_after_a_remembered_call(be):
    x = rnd(2, 3, 8, 8)
    with convkit.use_backend(be):
        y = F.adaptive_avg_pool2d_forward(x, 2)
        ym, idx = F.adaptive_max_pool2d_forward(x, 2)
        F.adaptive_avg_pool2d_backward(y, x.shape)
        F.adaptive_max_pool2d_backward(ym, idx, x.shape)
        for fwd in (F.adaptive_avg_pool2d_forward, F.adaptive_max_pool2d_forward):
            with pytest.raises(TypeError, match="output_size"):
                fwd(x, True)
            with pytest.raises(TypeError, match="output_size"):
                fwd(x, (2.0, 2))
            with pytest.raises(TypeError, match="x must be float32 or float64"):
                fwd(x.astype(np.int32), 2)
            with pytest.raises(ValueError, match="x must be 4-D"):
                fwd(x[0], 2)
            with pytest.raises(TypeError, match="ndarray"):
                fwd(x.tolist(), 2)
            with pytest.raises(TypeError, match="numpy.matrix"):
                fwd(np.asmatrix(x[0, 0]), 2)
        for bwd, extra in ((F.adaptive_avg_pool2d_backward, ()),
                           (F.adaptive_max_pool2d_backward, (idx,))):
            with pytest.raises(TypeError, match="grad_y must be float32 or float64"):
                bwd(y.astype(np.int32), *extra, x.shape)
            with pytest.raises(TypeError, match="share one dtype|grad_y must be float"):
                bwd(y.astype(f64).astype(np.float16), *extra, x.shape)
            with pytest.raises(TypeError, match="input_shape"):
                bwd(y, *extra, (2, 3, 8.0, 8))
            with pytest.raises(TypeError, match="input_shape"):
                bwd(y, *extra, (2, 3, True, 8))
            with pytest.raises(ValueError, match=r"\(N, C\)"):
                bwd(y, *extra, (2, 4, 8, 8))
            with pytest.raises(ValueError, match="grad_y must be 4-D"):
                bwd(y[0], *extra, x.shape)
        # the indices' values are checked on every call, their dtype and shape too
        bad = idx.copy()
        bad[0, 0, 0, 0] = 64
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
            F.adaptive_max_pool2d_backward(ym, bad, x.shape)
        bad[0, 0, 0, 0] = -1
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
            F.adaptive_max_pool2d_backward(ym, bad, x.shape)
        with pytest.raises(TypeError, match="indices must be an integer"):
            F.adaptive_max_pool2d_backward(ym, idx.astype(f32), x.shape)
        with pytest.raises(ValueError, match="indices must have shape"):
            F.adaptive_max_pool2d_backward(ym, idx[:, :, :1], x.shape)
        # another layout of the same shape: taken, the same results as the contiguous one
        assert same_bits(F.adaptive_max_pool2d_backward(ym, np.asfortranarray(idx), x.shape),
                         F.adaptive_max_pool2d_backward(ym, idx, x.shape))
        x.shape = (2, 3, 4, 16)     # the remembered array object, another shape
        assert F.adaptive_avg_pool2d_forward(x, 2).shape == (2, 3, 2, 2)
        assert same_bits(F.adaptive_avg_pool2d_forward(x, 2),
                         F.adaptive_avg_pool2d_forward(x.copy(), 2))


def test_thread_count_follows_the_environment_after_a_read(monkeypatch):
    """get_num_threads remembers the parsed environment: a change must still take effect,
    set_num_threads must win, and a bad value must raise on every call."""
    monkeypatch.delenv("CONVKIT_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert convkit.get_num_threads() == 3 and convkit.get_num_threads() == 3
    monkeypatch.setenv("CONVKIT_NUM_THREADS", "5")
    assert convkit.get_num_threads() == 5
    convkit.set_num_threads(2)
    try:
        assert convkit.get_num_threads() == 2
    finally:
        convkit.set_num_threads(None)
    assert convkit.get_num_threads() == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "7")      # CONVKIT_NUM_THREADS still wins
    assert convkit.get_num_threads() == 5
    monkeypatch.delenv("CONVKIT_NUM_THREADS")
    assert convkit.get_num_threads() == 7
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    for _ in range(2):
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            convkit.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    assert convkit.get_num_threads() == 4
    # a kernel's thread count follows: the same bits on the new count
    x = rnd(8, 64, 16, 16)
    y = F.adaptive_avg_pool2d_forward(x, 3, backend="cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert convkit.get_num_threads() == 1
    assert same_bits(F.adaptive_avg_pool2d_forward(x, 3, backend="cpu"), y)
