"""adaptive_avg_pool2d / adaptive_max_pool2d forward and backward on every backend.

Oracles: torch.nn.functional.adaptive_avg_pool2d / adaptive_max_pool2d(return_indices=True) in
float64 with autograd for the backwards, the numpy reference (for the other backends), float64
numerical gradients and the adjoint identity.  The cuda backend runs on the GPU when one is
usable and on the host emulation of its kernels otherwise (tests/cuda_emulation.py).
"""
from __future__ import annotations

import shutil
from typing import NamedTuple

import numpy as np
import pytest

import convkit
import convkit.functional as F
from convkit import _registry
from conftest import BACKEND_PARAMS
from helpers import check_backward, numeric_grad, run, tol

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


@pytest.fixture(params=["numpy", "cpu", "cuda"])
def backend(request, monkeypatch):
    """numpy, cpu, and cuda -- the real one when it loads, else the host emulation."""
    name = request.param
    usable = {p.id for p in BACKEND_PARAMS if not p.marks}
    if name in usable:
        yield name
        return
    if name != "cuda":
        pytest.skip(f"backend {name!r} does not load here")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler for the host emulation of the CUDA kernels")
    import cuda_emulation as emu

    with emu.emulated_backend() as be:
        monkeypatch.delitem(_registry._failures, "cuda", raising=False)
        monkeypatch.setitem(_registry._instances, "cuda", be)
        yield "cuda"
        convkit.set_deterministic(False)


class Case(NamedTuple):
    id: str
    shape: tuple
    size: object     # output_size as the user passes it

    def x(self, dtype, seed=0):
        return np.random.default_rng(seed).standard_normal(self.shape).astype(dtype)

    def distinct_x(self, seed=0):
        """A permutation of 0..n-1 (float64): no ties, steps of 1 >> the check's eps."""
        n = int(np.prod(self.shape))
        return np.random.default_rng(seed).permutation(n).astype(np.float64).reshape(self.shape)


CASES = [
    Case("divisible", (2, 3, 8, 12), (4, 3)),              # bins tile the input
    Case("overlap", (2, 3, 7, 9), (3, 4)),                 # 7 % 3, 9 % 4: bins share a row/column
    Case("overlap_odd", (1, 2, 10, 11), (4, 7)),
    Case("oh_gt_H", (1, 2, 3, 5), (7, 6)),                 # more bins than rows: rows repeat
    Case("global", (2, 4, 7, 7), 1),                       # global average / max pooling
    Case("global_rect", (2, 3, 5, 9), (1, 1)),
    Case("global_big", (1, 3, 17, 19), 1),                 # cuda: a block sums each plane
    Case("row_1xN", (2, 2, 6, 10), (1, 4)),
    Case("identity", (1, 2, 4, 5), (4, 5)),
    Case("none_h", (2, 3, 5, 7), (None, 3)),               # None: that input size (torch)
    Case("none_w", (1, 2, 5, 3), (2, None)),
    Case("int_size", (2, 2, 9, 6), 4),
    Case("wide_plane", (1, 2, 19, 41), (5, 3)),            # runs longer than the 16-wide sums
]


def avg_fwd(backend, x, size):
    return run(backend, F.adaptive_avg_pool2d_forward, x, size)


def avg_bwd(backend, gy, shape):
    return run(backend, F.adaptive_avg_pool2d_backward, gy, shape)


def max_fwd(backend, x, size):
    return run(backend, F.adaptive_max_pool2d_forward, x, size)


def max_bwd(backend, gy, idx, shape):
    return run(backend, F.adaptive_max_pool2d_backward, gy, idx, shape)


def _torch_avg(torch, x, size, gy=None):
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y = torch.nn.functional.adaptive_avg_pool2d(xt, size)
    if gy is None:
        return y.detach().numpy(), None
    y.backward(torch.from_numpy(gy))
    return y.detach().numpy(), xt.grad.numpy()


def _torch_max(torch, x, size, gy=None):
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y, idx = torch.nn.functional.adaptive_max_pool2d(xt, size, return_indices=True)
    if gy is None:
        return y.detach().numpy(), idx.numpy(), None
    y.backward(torch.from_numpy(gy))
    return y.detach().numpy(), idx.numpy(), xt.grad.numpy()


def _gy(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------ torch oracle
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_avg_matches_torch(backend, case, dtype, torch):
    x = case.x(dtype)
    y = avg_fwd(backend, x, case.size)
    gy = _gy(y.shape, dtype)
    ty, tgx = _torch_avg(torch, x.astype(np.float64), case.size, gy.astype(np.float64))
    assert y.shape == ty.shape and y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, ty, **tol(dtype))
    gx = avg_bwd(backend, gy, x.shape)
    assert gx.shape == x.shape and gx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gx, tgx, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_max_matches_torch(backend, case, dtype, torch):
    x = case.x(dtype)
    y, idx = max_fwd(backend, x, case.size)
    gy = _gy(y.shape, dtype)
    ty, tidx, tgx = _torch_max(torch, x, case.size, gy)
    assert y.shape == ty.shape and y.dtype == np.dtype(dtype) and idx.dtype == np.int64
    np.testing.assert_array_equal(y, ty)           # a maximum is one of the inputs: exact
    np.testing.assert_array_equal(idx, tidx)
    gx = max_bwd(backend, gy, idx, x.shape)
    assert gx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gx, tgx, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(backend, dtype):
    """Every case against the numpy reference (max: the same bits)."""
    for c in CASES:
        x = c.x(dtype, seed=2)
        np.testing.assert_allclose(avg_fwd(backend, x, c.size), avg_fwd("numpy", x, c.size),
                                   **tol(dtype), err_msg=c.id)
        y, idx = max_fwd(backend, x, c.size)
        ry, ridx = max_fwd("numpy", x, c.size)
        np.testing.assert_array_equal(y, ry, err_msg=c.id)
        np.testing.assert_array_equal(idx, ridx, err_msg=c.id)
        gy = _gy(y.shape, dtype, seed=3)
        np.testing.assert_allclose(avg_bwd(backend, gy, x.shape), avg_bwd("numpy", gy, x.shape),
                                   **tol(dtype), err_msg=c.id)
        np.testing.assert_allclose(max_bwd(backend, gy, idx, x.shape),
                                   max_bwd("numpy", gy, ridx, x.shape), **tol(dtype), err_msg=c.id)


# ----------------------------------------------------------------------- NaN, inf and ties
def _nonfinite_x(dtype):
    x = np.random.default_rng(4).standard_normal((2, 3, 9, 10)).astype(dtype)
    x[0, 0, 1, 1] = np.nan                         # one NaN, in overlapping bins
    x[0, 1, 2, 3] = x[0, 1, 3, 4] = np.nan         # two NaNs sharing bins: the last one wins
    x[0, 1, 2, 5] = np.nan
    x[0, 2, 4, 4] = np.inf                         # +inf alone, and +inf beside -inf (mean NaN)
    x[0, 2, 7, 8] = np.inf
    x[0, 2, 8, 9] = -np.inf
    x[1, 0] = -np.inf                              # nothing beats -inf: each bin's first element
    x[1, 0, 6, 2] = np.nan
    x[1, 1, 0, 0] = np.inf
    x[1, 1, 5, 5] = np.nan
    x[1, 1, 5, 6] = np.inf                         # a NaN before a larger value: the NaN stays
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("size", [(4, 3), (3, 4), 1, (5, 13), (9, 10)],
                         ids=["4x3", "3x4", "1", "5x13", "9x10"])
def test_nonfinite_element_for_element(backend, dtype, size, torch):
    """An output is NaN / +inf / -inf exactly where torch's is, and max indices match."""
    x = _nonfinite_x(dtype)
    ty, _ = _torch_avg(torch, x, size)
    y = avg_fwd(backend, x, size)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ty))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ty))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ty))
    np.testing.assert_allclose(y, ty, **tol(dtype))
    y, idx = max_fwd(backend, x, size)
    ty, tidx, _ = _torch_max(torch, x, size)
    np.testing.assert_array_equal(y, ty)           # assert_array_equal: NaN == NaN
    np.testing.assert_array_equal(idx, tidx)
    assert np.isnan(y[0, 1]).any() and np.isnan(y[1, 1]).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nonfinite_global_average_of_large_planes(backend, dtype, torch):
    """The global average of planes big enough for the parallel sums (16-wide runs on cpu, a
    block per plane on cuda): NaN / inf exactly where torch's are."""
    x = np.random.default_rng(5).standard_normal((2, 4, 17, 19)).astype(dtype)
    x[0, 0, 3, 5] = np.nan
    x[0, 1, 16, 18] = np.inf
    x[0, 2, 0, 0] = -np.inf
    x[1, 0, 9, 9] = np.inf
    x[1, 0, 2, 17] = -np.inf
    ty, _ = _torch_avg(torch, x, 1)
    y = avg_fwd(backend, x, 1)
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(y), test(ty))
    np.testing.assert_allclose(y, ty, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_max_ties_first_in_row_major_order(backend, dtype, torch):
    x = np.ones((2, 2, 7, 8), dtype)               # plane 0: all ties
    x[0, 1, ::3, ::2] = 2.0                        # several equal maxima per bin
    x[1, 0] = -np.inf
    x[1, 1] = np.arange(56).reshape(7, 8) % 5      # repeated maxima in every bin
    for size in ((3, 3), (2, 5), 1, (7, 8), (10, 11)):
        y, idx = max_fwd(backend, x, size)
        ty, tidx, _ = _torch_max(torch, x, size)
        np.testing.assert_array_equal(y, ty, err_msg=str(size))
        np.testing.assert_array_equal(idx, tidx, err_msg=str(size))


def _max_as_torch(backend, torch, x, size, msg):
    """The max forward's values (sign of zero included) and indices equal torch's."""
    y, idx = max_fwd(backend, x, size)
    ty, tidx, _ = _torch_max(torch, x, size)
    np.testing.assert_array_equal(y, ty, err_msg=msg)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(ty), err_msg=msg)
    np.testing.assert_array_equal(idx, tidx, err_msg=msg)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_few_distinct_values_vs_torch(backend, dtype, torch):
    """Random planes of a few values (NaN, +-inf, +-0, ties) over many bin geometries: max
    values (sign of zero included), indices and the average's non-finite pattern match torch
    element for element."""
    rng = np.random.default_rng(15)
    vals = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0], dtype)
    for trial in range(12):
        H, W = rng.integers(1, 14, 2)
        size = tuple(int(v) for v in rng.integers(1, 16, 2))
        p = rng.dirichlet(np.ones(len(vals)))
        x = vals[rng.choice(len(vals), size=(2, 3, H, W), p=p)]
        msg = f"trial {trial}: {x.shape} -> {size}"
        _max_as_torch(backend, torch, x, size, msg)
        a = avg_fwd(backend, x, size)
        ta, _ = _torch_avg(torch, x, size)
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(a), test(ta), err_msg=msg)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_few_distinct_values_wide_bins_vs_torch(backend, dtype, torch):
    """As above on the suite's geometries and bins of 1 to 24 columns (the cpu float32 kernel
    takes bins of <= 8 columns a vector a row, wider ones in vectors and a masked tail, a
    whole-row bin as one run): values, signs of zero and indices as torch's."""
    rng = np.random.default_rng(16)
    vals = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0], dtype)
    for shape, size in (((2, 3, 56, 56), 7), ((2, 3, 7, 7), 1), ((2, 3, 40, 33), (5, 4)),
                        ((2, 3, 17, 64), (3, 2)), ((2, 3, 9, 24), (2, 1)), ((1, 2, 30, 30), 4)):
        for weights in (np.ones(len(vals)), np.array([0.2, 0, 0, 5, 5, 1, 1, 0.5]),
                        np.array([0, 0.2, 3, 0, 0, 0, 0, 0])):
            x = vals[rng.choice(len(vals), size=shape, p=weights / weights.sum())]
            _max_as_torch(backend, torch, x, size, f"{shape} -> {size}")


# ------------------------------------------------------------------------------ gradients
def test_avg_check_backward_and_adjoint(backend):
    """Directional numerical derivative, and (the mean being linear) the adjoint identity
    <pool(x), g> == <x, pool_backward(g)>, float64."""
    for c in CASES:
        x = c.x(np.float64, seed=6)
        check_backward(lambda x, c=c: avg_fwd(backend, x, c.size),
                       lambda gy, x: (avg_bwd(backend, gy, x.shape),), (x,))
        y = avg_fwd(backend, x, c.size)
        g = _gy(y.shape, np.float64, seed=7)
        np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, avg_bwd(backend, g, x.shape)),
                                   rtol=1e-12, atol=1e-12, err_msg=c.id)


def test_max_check_backward_and_adjoint(backend):
    """On distinct values the max is locally linear: a numerical derivative, and the adjoint
    identity <y, g> == <x, backward(g)> with the forward's indices."""
    for c in CASES:
        x = c.distinct_x(seed=8)

        def fwd(x, c=c):
            return max_fwd(backend, x, c.size)[0]

        def bwd(gy, x, c=c):
            return (max_bwd(backend, gy, max_fwd(backend, x, c.size)[1], x.shape),)

        check_backward(fwd, bwd, (x,), eps=1e-3)   # piecewise linear: exact while no tie
        y, idx = max_fwd(backend, x, c.size)
        g = _gy(y.shape, np.float64, seed=9)
        np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, max_bwd(backend, g, idx, x.shape)),
                                   rtol=1e-12, atol=1e-9, err_msg=c.id)


@pytest.mark.parametrize("size", [(2, 3), (4, 6)], ids=["2x3", "4x6"])
def test_numeric_grad_per_element(backend, size):
    shape = (1, 2, 3, 5)
    x = Case("tiny", shape, size).distinct_x(seed=10)
    y, idx = max_fwd(backend, x, size)
    gy = _gy(y.shape, np.float64, seed=11)
    num = numeric_grad(lambda t: float(np.vdot(max_fwd(backend, t, size)[0], gy)), x.copy())
    np.testing.assert_allclose(max_bwd(backend, gy, idx, shape), num, rtol=1e-6, atol=1e-8)
    num = numeric_grad(lambda t: float(np.vdot(avg_fwd(backend, t, size), gy)), x.copy())
    np.testing.assert_allclose(avg_bwd(backend, gy, shape), num, rtol=1e-6, atol=1e-8)


def test_max_backward_adds_where_bins_share_the_maximum(backend, torch):
    """Overlapping bins that pick the same element add their gradients there (torch)."""
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 9.0                            # in all four bins of a 2x2 output
    y, idx = max_fwd(backend, x, 2)
    assert (idx == 12).all()
    gy = np.array([[[[1.0, 2.0], [4.0, 8.0]]]])
    gx = max_bwd(backend, gy, idx, x.shape)
    assert gx[0, 0, 2, 2] == 15.0 and np.count_nonzero(gx) == 1
    np.testing.assert_array_equal(gx, _torch_max(torch, x, 2, gy)[2])


# ---------------------------------------------------------------------------- layouts, empty
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_noncontiguous_inputs(backend, dtype):
    big = np.random.default_rng(12).standard_normal((2, 6, 9, 7)).astype(dtype)
    x_c = np.ascontiguousarray(big[:, ::2].transpose(0, 1, 3, 2))      # (2, 3, 7, 9)
    size = (3, 4)
    want_avg = avg_fwd("numpy", x_c, size)
    want_y, want_idx = max_fwd("numpy", x_c, size)
    gy = _gy(want_y.shape, dtype)
    gy_big = np.concatenate([gy, gy], axis=3)
    with convkit.use_backend(backend) as be:
        x = be.asarray(big)[:, ::2].transpose(0, 1, 3, 2)
        g = be.asarray(gy_big)[..., :gy.shape[3]]
        assert not x.flags.c_contiguous and not g.flags.c_contiguous
        np.testing.assert_allclose(be.to_numpy(F.adaptive_avg_pool2d_forward(x, size)),
                                   want_avg, **tol(dtype))
        y, idx = F.adaptive_max_pool2d_forward(x, size)
        np.testing.assert_array_equal(be.to_numpy(y), want_y)
        np.testing.assert_array_equal(be.to_numpy(idx), want_idx)
        np.testing.assert_allclose(be.to_numpy(F.adaptive_avg_pool2d_backward(g, x_c.shape)),
                                   avg_bwd("numpy", gy, x_c.shape), **tol(dtype))
        idx_nc = be.asarray(np.concatenate([want_idx, want_idx], axis=3))[..., :gy.shape[3]]
        np.testing.assert_allclose(
            be.to_numpy(F.adaptive_max_pool2d_backward(g, idx_nc, x_c.shape)),
            max_bwd("numpy", gy, want_idx, x_c.shape), **tol(dtype))
        # the Backend object's public ops: the functional signatures, the same results
        np.testing.assert_allclose(be.to_numpy(be.adaptive_avg_pool2d_forward(x, size)),
                                   want_avg, **tol(dtype))
        np.testing.assert_array_equal(be.to_numpy(be.adaptive_max_pool2d_forward(x, size)[1]),
                                      want_idx)


@pytest.mark.parametrize("shape", [(0, 3, 7, 6), (2, 0, 7, 6), (0, 2, 0, 5)],
                         ids=["N0", "C0", "N0_H0"])
def test_empty_inputs(backend, shape, torch):
    """N = 0 or C = 0: empty outputs of torch's shapes, zero gradients of the input's shape."""
    size = (3, None)
    x = np.zeros(shape)
    oh, ow = 3, shape[3]
    if shape[2]:
        assert tuple(torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), size).shape) \
            == (shape[0], shape[1], oh, ow)
    a = avg_fwd(backend, x, size)
    y, idx = max_fwd(backend, x, size)
    assert a.shape == y.shape == idx.shape == (shape[0], shape[1], oh, ow)
    assert a.dtype == y.dtype == np.float64 and idx.dtype == np.int64
    for gx in (avg_bwd(backend, np.zeros(a.shape), shape),
               max_bwd(backend, np.zeros(a.shape), idx, shape)):
        assert gx.shape == shape and gx.dtype == np.float64 and not gx.any()


# ---------------------------------------------------------------------------------- errors
ERRORS = [
    # (output_size, exception, message fragment)
    (0, ValueError, "output_size must be positive"),
    ((0, 2), ValueError, "output_size must be positive"),
    ((2, -1), ValueError, "output_size must be positive"),
    ((None, 0), ValueError, "output_size must be positive"),
    (None, TypeError, "output_size must be an int or a pair"),
    ((2,), ValueError, "output_size must be an int or a pair"),
    ((1, 2, 3), ValueError, "output_size must be an int or a pair"),
    (2.5, TypeError, "output_size"),
    ((2, 1.5), TypeError, "output_size"),
    (True, TypeError, "output_size must be an int, got bool"),
    ((2**31, 1), ValueError, "output_size must be at most"),
]


@pytest.mark.parametrize("size,exc,msg", ERRORS, ids=[repr(e[0]) for e in ERRORS])
def test_bad_output_size(backend, size, exc, msg):
    x = np.zeros((1, 2, 5, 5))
    for fn in (F.adaptive_avg_pool2d_forward, F.adaptive_max_pool2d_forward):
        with pytest.raises(exc, match=msg.replace("(", r"\(")):
            run(backend, fn, x, size)


def test_bad_output_size_refused_after_an_equal_good_one(backend):
    """The boundary keeps the checks' result of a passed (shape, dtype, output_size): a bool or
    a float equal to a passed int (True == 1, 7.0 == 7, equal hashes) is still refused."""
    x = np.zeros((1, 2, 7, 7))
    for fn in (F.adaptive_avg_pool2d_forward, F.adaptive_max_pool2d_forward):
        for good, bad in ((1, True), ((1, 1), (True, 1)), ((7, None), (7.0, None)), (7, 7.0)):
            run(backend, fn, x, good)
            run(backend, fn, x, good)
            with pytest.raises(TypeError, match="output_size"):
                run(backend, fn, x, bad)


def test_bad_inputs(backend):
    x = np.zeros((1, 2, 5, 5))
    for op in ("avg", "max"):
        fn = getattr(F, f"adaptive_{op}_pool2d_forward")
        with pytest.raises(ValueError, match=r"x must be 4-D"):
            run(backend, fn, np.zeros((2, 5, 5)), 2)
        with pytest.raises(TypeError, match="x must be float32 or float64, got int64"):
            run(backend, fn, np.zeros((1, 2, 5, 5), np.int64), 2)
        with pytest.raises(ValueError, match="x must have non-zero height and width"):
            run(backend, fn, np.zeros((1, 2, 0, 5)), 2)
        with pytest.raises(ValueError, match="x must have non-zero height and width"):
            run(backend, fn, np.zeros((1, 2, 4, 0)), (2, None))
        with pytest.raises(TypeError, match="x must be a"):
            convkit.functional.__dict__[f"adaptive_{op}_pool2d_forward"](x.tolist(), 2,
                                                                         backend=backend)
    gy = np.zeros((1, 2, 2, 2))
    idx = np.zeros((1, 2, 2, 2), np.int64)
    with pytest.raises(ValueError, match=r"grad_y has \(N, C\) = \(1, 2\) but input_shape has"):
        avg_bwd(backend, gy, (1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"grad_y has \(N, C\)"):
        max_bwd(backend, gy, idx, (2, 2, 5, 5))
    with pytest.raises(ValueError, match="input_shape must have non-zero height and width"):
        avg_bwd(backend, gy, (1, 2, 0, 5))
    with pytest.raises(ValueError, match="input_shape must have non-zero height and width"):
        max_bwd(backend, gy, idx, (1, 2, 5, 0))
    with pytest.raises(ValueError, match="input_shape must be 4 non-negative ints"):
        avg_bwd(backend, gy, (1, 2, 5))
    with pytest.raises(TypeError, match="grad_y must be float32 or float64"):
        avg_bwd(backend, gy.astype(np.int32), (1, 2, 5, 5))
    with pytest.raises(TypeError, match="indices must be an integer"):
        max_bwd(backend, gy, idx.astype(np.float64), (1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"indices must have shape \(1, 2, 2, 2\)"):
        max_bwd(backend, gy, np.zeros((1, 2, 2, 3), np.int64), (1, 2, 5, 5))


@pytest.mark.parametrize("bad", [-1, 25, 2**40, -(2**62)])
def test_max_backward_indices_out_of_range(backend, bad):
    """Every backend refuses an index outside [0, H*W) -- the cpu and cuda kernels check each
    index they read (validates_indices), the others get a checked private copy."""
    x = Case("r", (2, 3, 5, 5), (2, 2)).distinct_x()
    y, idx = max_fwd(backend, x, (2, 2))
    idx[1, 2, 1, 0] = bad
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 25\)"):
        max_bwd(backend, np.ones_like(y), idx, x.shape)


def test_unsigned_indices_beyond_int64_are_refused(backend):
    idx = np.zeros((1, 1, 2, 2), np.uint64)
    idx[0, 0, 0, 1] = 2**64 - 1
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
        max_bwd(backend, np.ones((1, 1, 2, 2)), idx, (1, 1, 4, 4))


def test_cpu_bin_tables_count_against_the_workspace_limit():
    """The cpu backend's per-call bin tables are scratch: over the limit, a MemoryError that
    names it (an output_size near 2**31 must not allocate gigabytes of tables or hang)."""
    ok, why = convkit.backend_status("cpu")
    if not ok:
        pytest.skip(why[:300])
    x = np.random.default_rng(17).standard_normal((1, 2, 5, 5))
    old = convkit.get_workspace_limit()
    convkit.set_workspace_limit(1024)
    try:
        for fn, args in ((F.adaptive_avg_pool2d_forward, (x, 40)),
                         (F.adaptive_max_pool2d_forward, (x, 40)),
                         (F.adaptive_avg_pool2d_backward, (np.ones((1, 2, 40, 40)), x.shape))):
            with pytest.raises(MemoryError, match=r"output_size \(40, 40\) needs bin tables of "
                                                  r"\d+ bytes, over the workspace limit of 1024"):
                run("cpu", fn, *args)
        assert avg_fwd("cpu", x, 3).shape == (1, 2, 3, 3)     # small tables still fit
    finally:
        convkit.set_workspace_limit(old)
    with pytest.raises(MemoryError, match="workspace limit"):
        run("cpu", F.adaptive_avg_pool2d_forward, x, (2**31 - 1, 2**20))


# ------------------------------------------------------------------ cpu: any thread count
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,size", [((4, 16, 37, 29), (5, 6)), ((3, 32, 13, 11), (17, 4)),
                                        ((8, 64, 7, 7), 1), ((2, 40, 56, 56), (7, 7))],
                         ids=["overlap", "oh_gt_H", "global", "divisible"])
def test_cpu_bits_independent_of_thread_count(dtype, shape, size):
    """Overlapping bins share input elements: the backwards gather per plane in a fixed order,
    so 1, 2, 3, 8 and 16 threads give the same bits, forward and backward (the global and the
    divisible average: runs of 8-plane blocks, fills of whole planes)."""
    x = np.random.default_rng(13).standard_normal(shape).astype(dtype)
    results = []
    for n in (1, 2, 3, 8, 16):
        convkit.set_num_threads(n)
        a = avg_fwd("cpu", x, size)
        y, idx = max_fwd("cpu", x, size)
        gy = _gy(a.shape, dtype, seed=14)
        results.append((a, y, idx, avg_bwd("cpu", gy, shape), max_bwd("cpu", gy, idx, shape)))
    for other in results[1:]:
        for r0, r in zip(results[0], other):
            np.testing.assert_array_equal(r, r0)
    np.testing.assert_allclose(results[0][0], avg_fwd("numpy", x, size), **tol(dtype))


def _run_sum_order(p, d=None):
    """csrc/adaptive_pool.h's float32 run sum in NumPy float32 (each + rounds as C's): 16
    partial sums (m holds p[16j + m]), runs of 4 into the first four, the tree
    (a[m] + a[4+m]) + (a[8+m] + a[12+m]) then (t0 + t1) + (t2 + t3), the tail last in order;
    over d (default: the length)."""
    a, i, n = np.zeros(16, np.float32), 0, len(p)
    with np.errstate(all="ignore"):
        while i + 16 <= n:
            a = a + p[i:i + 16]
            i += 16
        while i + 4 <= n:
            a[:4] = a[:4] + p[i:i + 4]
            i += 4
        t = (a[0:4] + a[4:8]) + (a[8:12] + a[12:16])
        s = (t[0] + t[1]) + (t[2] + t[3])
        for v in p[i:]:
            s = s + v
        return s / np.float32(n if d is None else d)


def test_cpu_global_average_by_eight_planes_has_the_plane_by_plane_bits():
    """The float32 global average sums plane by plane (8-lane vectors where the CPU has AVX2)
    or, asked, 8 planes at a time (lane i making plane i's additions of the one-plane sum: 16
    partial sums, their tree, the tail): both the bits of the documented order
    (_run_sum_order) for every plane length 1..70 and a few longer (the 16-column runs, the
    runs of 4, the tail), plane counts around multiples of 8, NaN / inf / huge values, on 1
    and 2 threads."""
    ok, why = convkit.backend_status("cpu")
    if not ok:
        pytest.skip(why[:300])
    from convkit.cpu import _adaptive_pool as K
    rng = np.random.default_rng(31)
    for n in list(range(1, 71)) + [196, 255, 256, 257, 1000]:
        for P in (1, 7, 8, 9, 16, 23):
            x = (rng.standard_normal((P, n)) * rng.choice([1e-3, 1.0, 1e30], (P, n)))
            x = x.astype(np.float32)
            if n > 3 and P > 2:
                x[1, n // 2], x[2, 0], x[2, -1] = np.nan, np.inf, -np.inf
            for nt in (1, 2):
                by8, plain = np.empty(P, np.float32), np.empty(P, np.float32)
                K.global_avg_forward(x, by8, nt, True)
                K.global_avg_forward(x, plain, nt, False)
                assert by8.tobytes() == plain.tobytes(), (n, P, nt)
            want = np.array([_run_sum_order(row) for row in x], np.float32)
            assert plain.tobytes() == want.tobytes(), (n, P)
    x = rng.standard_normal((3, 9, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(avg_fwd("cpu", x, 1), x.astype(np.float64).mean((2, 3),
                               keepdims=True), rtol=2e-6, atol=1e-7)


def test_cpu_average_bins_of_one_width_have_the_bin_by_bin_bits():
    """Where ow divides W (56 -> 7) the float32 forward sums all bins of a plane 8 at a time
    from consecutive rows of column sums (_avg_plane_runs_f): the bits of the bin-by-bin path
    (by_rows=False) and of the documented order (column sums in row order, then
    _run_sum_order), bin widths with and without 16-column runs, runs of 4 and a tail, rows
    that overlap (H not divisible), NaN / inf / -0, on 1, 2, 3, 8 and 16 threads."""
    ok, why = convkit.backend_status("cpu")
    if not ok:
        pytest.skip(why[:300])
    from convkit.cpu import _adaptive_pool as K, adaptive_pool as AP
    rng = np.random.default_rng(41)
    for (H, W, oh, ow) in ((56, 56, 7, 7), (9, 12, 4, 3), (5, 16, 5, 2), (7, 7, 3, 7),
                           (6, 40, 2, 5), (3, 48, 1, 3), (4, 52, 2, 4), (10, 66, 3, 2),
                           (13, 9, 13, 1)):
        assert W % ow == 0
        P = 11
        x = rng.standard_normal((P, H, W)) * rng.choice([1e-3, 1.0, 1e30], (P, H, W))
        x = x.astype(np.float32)
        x[1, H // 2, W // 3], x[2, 0, 0], x[3, -1, -1], x[4] = np.nan, np.inf, -np.inf, -0.0
        hb, _, hl, wb, _, wl, div = AP._tables("t", H, W, oh, ow, np.dtype(np.float32))
        ref = np.empty((P, oh, ow), np.float32)
        K.adaptive_avg_forward(x, hb, hl, wb, wl, div, ref, 1, False)
        for nt in (1, 2, 3, 8, 16):
            y = np.full((P, oh, ow), 7, np.float32)
            K.adaptive_avg_forward(x, hb, hl, wb, wl, div, y, nt)
            assert y.tobytes() == ref.tobytes(), (H, W, oh, ow, nt)
        want = np.empty_like(ref)
        with np.errstate(all="ignore"):
            for p in range(P):
                for o in range(oh):
                    cs = x[p, hb[o]].copy()
                    for r in range(hb[o] + 1, hb[o] + hl[o]):
                        cs = cs + x[p, r]
                    for q in range(ow):
                        want[p, o, q] = _run_sum_order(cs[wb[q]:wb[q] + wl[q]], div[o, q])
        np.testing.assert_array_equal(ref, want, err_msg=str((H, W, oh, ow)))


# ------------------------------------------------------------------- cimport (other Cython code)
USER_PYX = """
# cython: language_level=3, boundscheck=False, wraparound=False
import numpy as np
from libc.stdint cimport int64_t
from convkit.cpu._adaptive_pool cimport adaptive_avg_plane, adaptive_max_plane

def pool_plane(const double[:, ::1] x, Py_ssize_t oh, Py_ssize_t ow):
    cdef Py_ssize_t H = x.shape[0], W = x.shape[1]
    o, q = np.arange(oh), np.arange(ow)
    cdef Py_ssize_t[::1] hs = (o * H) // oh, hl = -((-(o + 1) * H) // oh) - (o * H) // oh
    cdef Py_ssize_t[::1] ws = (q * W) // ow, wl = -((-(q + 1) * W) // ow) - (q * W) // ow
    cdef double[::1] div = np.multiply.outer(np.asarray(hl), np.asarray(wl)).astype(float).ravel()
    cdef double[::1] avg = np.empty(oh * ow), mx = np.empty(oh * ow), colsum = np.empty(W)
    cdef int64_t[::1] idx = np.empty(oh * ow, np.int64)
    with nogil:
        adaptive_avg_plane(&x[0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0], &div[0], &avg[0], oh, ow,
                           &colsum[0])
        adaptive_max_plane(&x[0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0], &mx[0], &idx[0], oh, ow)
    return (np.asarray(avg).reshape(oh, ow), np.asarray(mx).reshape(oh, ow),
            np.asarray(idx).reshape(oh, ow))
"""


def test_cimport_plane_kernels(tmp_path):
    ok, why = convkit.backend_status("cpu")
    if not ok:
        pytest.skip(why[:300])
    from helpers import build_cimporting_extension

    user = build_cimporting_extension(tmp_path, "user_adaptive", USER_PYX)
    x = np.random.default_rng(16).standard_normal((1, 1, 9, 11))
    avg, mx, idx = user.pool_plane(x[0, 0], 4, 3)
    np.testing.assert_allclose(avg, avg_fwd("numpy", x, (4, 3))[0, 0], rtol=1e-12, atol=1e-12)
    y, ridx = max_fwd("numpy", x, (4, 3))
    np.testing.assert_array_equal(mx, y[0, 0])
    np.testing.assert_array_equal(idx, ridx[0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_tiled_average_backward_has_the_general_bits(dtype):
    """Where the bins tile the plane (out divides size: 56 -> 7, 8 -> 4, an axis of one bin) the
    average backward is a fill written once in place (_adaptive_pool.adaptive_avg_backward_tiled;
    float32 rows of 8..64 columns, a multiple of 8, from AVX2 registers);
    the same bits as the general kernel's zero fill and additions, a -0 gradient (which
    becomes +0) and NaN / inf included, on 1, 2, 3, 8 and 16 threads (plane counts that do not
    divide among them).  The 1x1 fill (global_avg_backward) against gy / HW, -0 kept."""
    ok, why = convkit.backend_status("cpu")
    if not ok:
        pytest.skip(why[:300])
    from convkit.cpu import _adaptive_pool as K, _pool, adaptive_pool as AP
    rng = np.random.default_rng(5)
    for (H, W, oh, ow) in ((56, 56, 7, 7), (8, 12, 4, 3), (5, 9, 1, 3), (6, 6, 6, 6), (7, 7, 1, 1),
                           (9, 13, 3, 13), (3, 5, 3, 1), (12, 3, 4, 3), (5, 24, 5, 2),
                           (4, 24, 2, 4), (16, 64, 2, 8), (3, 8, 3, 1), (2, 40, 1, 5),
                           (4, 72, 2, 9)):
        assert AP._tiles(H, W, oh, ow)
        P = 11
        gy = rng.standard_normal((P, oh, ow)).astype(dtype)
        gy.flat[0], gy.flat[-1] = -0.0, np.nan
        if gy.size > 2:
            gy.flat[1] = np.inf
        hb, h0, h1, wb, w0, w1, div = AP._tables("t", H, W, oh, ow, np.dtype(dtype))
        want = np.full((P, H * W), 7, dtype)
        _pool.avg_pool2d_backward(gy, W, hb, h0, h1, wb, w0, w1, div, 0, want, 2)
        for nt in (1, 2, 3, 8, 16):
            gx = np.full((P, H, W), 7, dtype)
            K.adaptive_avg_backward_tiled(gy, hb, h1, wb, w1, div, gx, nt)
            assert gx.tobytes() == want.tobytes(), (H, W, oh, ow, nt)
        got = AP.adaptive_avg_pool2d_backward(gy.reshape(1, P, oh, ow), (1, P, H, W))
        if (oh, ow) != (1, 1):
            assert got.tobytes() == want.tobytes(), (H, W, oh, ow)
        else:       # the 1x1 fill: gy / HW as it is (a -0 stays -0)
            g1 = gy.reshape(P) / dtype(H * W)
            assert got.tobytes() == np.repeat(g1[:, None], H * W, 1).tobytes()
            for nt in (1, 2, 3, 8, 16):
                gx = np.full((P, H * W), 7, dtype)
                K.global_avg_backward(gy.reshape(P), gx, nt)
                assert gx.tobytes() == np.repeat(g1[:, None], H * W, 1).tobytes(), nt
    assert not AP._tiles(56, 56, 5, 7) and not AP._tiles(5, 5, 7, 5) and not AP._tiles(7, 7, 3, 7)
