"""max_pool2d / avg_pool2d forward and backward on every backend.

Oracles: torch.nn.functional.max_pool2d(return_indices=True) / avg_pool2d + autograd (when torch
is importable), the numpy reference backend (for every other backend), and numerical gradients
in float64 (max pool on distinct values, so no tie sits at a kink).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

import convkit
import convkit.functional as F
from conftest import BACKEND_PARAMS
from helpers import check_backward, numeric_grad, run, tol

OTHER_BACKENDS = [p for p in BACKEND_PARAMS if p.id != "numpy"]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


class Case(NamedTuple):
    id: str
    N: int
    C: int
    H: int
    W: int
    k: object
    s: object = None
    p: object = 0
    d: object = 1
    ceil: bool = False

    def x(self, dtype, seed=0):
        return np.random.default_rng(seed).standard_normal(
            (self.N, self.C, self.H, self.W)).astype(dtype)

    def distinct_x(self, seed=0):
        """A permutation of 0..n-1 (float64): no ties, and steps of 1 >> the check's eps."""
        n = self.N * self.C * self.H * self.W
        return np.random.default_rng(seed).permutation(n).astype(np.float64).reshape(
            self.N, self.C, self.H, self.W)


MAX_CASES = [
    Case("k2", 2, 3, 8, 6, 2),
    Case("k3_s2_p1_overlap", 2, 2, 7, 9, 3, 2, 1),
    Case("k3_s1_overlap", 1, 2, 5, 6, 3, 1, 1),
    Case("k32_s21_p10", 2, 2, 7, 6, (3, 2), (2, 1), (1, 0)),
    Case("k2_s3_gaps", 1, 3, 8, 9, 2, 3),
    Case("ceil", 2, 2, 8, 6, 3, 2, 0, ceil=True),
    # ceil_mode where the last window would start in the right/bottom padding: torch drops it
    Case("ceil_start_in_pad", 1, 2, 3, 5, 2, 2, 1, ceil=True),
    Case("dil2_p1", 2, 2, 9, 8, 3, 1, 1, d=2),
    Case("dil21_ceil", 1, 2, 8, 7, (2, 3), 2, 1, d=(2, 1), ceil=True),
    Case("kernel_eq_input", 2, 2, 5, 4, (5, 4)),
    Case("k1_s2", 1, 3, 5, 6, 1, 2),
]
# 2x2 stride 2, no padding: the cpu plane kernel (4 outputs a step; Wo = 2: two rows a step);
# values compared with the oracles (the backward is the same scatter as for any window)
PLANE_CASES = [
    Case("k2_8x8", 3, 4, 8, 8, 2),
    Case("k2_4x4", 3, 5, 4, 4, 2),
    Case("k2_odd_floor", 2, 3, 7, 11, 2),
    Case("k2_odd_ceil", 2, 3, 7, 11, 2, ceil=True),
]
AVG_CASES = [
    Case("k2", 2, 3, 8, 6, 2),
    Case("k3_s2_p1_overlap", 2, 2, 7, 9, 3, 2, 1),
    Case("k3_s1_p1", 1, 2, 5, 6, 3, 1, 1),
    Case("k32_s21_p10", 2, 2, 7, 6, (3, 2), (2, 1), (1, 0)),
    Case("k2_s3_gaps", 1, 3, 8, 9, 2, 3),
    # ceil_mode: the last window overhangs the padding, its divisor is clipped to H + p
    Case("ceil_overhang", 2, 2, 6, 6, 3, 2, 1, ceil=True),
    Case("ceil_start_in_pad", 1, 2, 3, 5, 2, 2, 1, ceil=True),
    Case("ceil_p0", 1, 2, 7, 5, 3, 2, 0, ceil=True),
    Case("kernel_eq_input", 2, 2, 5, 4, (5, 4)),
    Case("k1_s2", 1, 3, 5, 6, 1, 2),
]
# 2x2 stride 2, no padding: the cpu plane kernel (4 outputs a step; Wo = 2: two rows a step);
# values compared with the oracles (the backward is the same scatter as for any window)
PLANE_CASES = [
    Case("k2_8x8", 3, 4, 8, 8, 2),
    Case("k2_4x4", 3, 5, 4, 4, 2),
    Case("k2_odd_floor", 2, 3, 7, 11, 2),
    Case("k2_odd_ceil", 2, 3, 7, 11, 2, ceil=True),
]


def max_fwd(backend, c, x):
    return run(backend, F.max_pool2d_forward, x, c.k, c.s, c.p, c.d, c.ceil)


def max_bwd(backend, gy, idx, shape):
    return run(backend, F.max_pool2d_backward, gy, idx, shape)


def avg_fwd(backend, c, x, cip):
    return run(backend, F.avg_pool2d_forward, x, c.k, c.s, c.p, c.ceil, cip)


def avg_bwd(backend, c, gy, shape, cip):
    return run(backend, F.avg_pool2d_backward, gy, shape, c.k, c.s, c.p, c.ceil, cip)


def _torch_max(torch, c, x, gy=None):
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y, idx = torch.nn.functional.max_pool2d(xt, c.k, c.s, c.p, c.d, c.ceil, return_indices=True)
    if gy is None:
        return y.detach().numpy(), idx.numpy(), None
    y.backward(torch.from_numpy(gy))
    return y.detach().numpy(), idx.numpy(), xt.grad.numpy()


def _torch_avg(torch, c, x, cip, gy):
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y = torch.nn.functional.avg_pool2d(xt, c.k, c.s, c.p, c.ceil, cip)
    y.backward(torch.from_numpy(gy))
    return y.detach().numpy(), xt.grad.numpy()


def _gy(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------- max pool
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", MAX_CASES + PLANE_CASES, ids=lambda c: c.id)
def test_max_pool_matches_torch(backend, case, dtype, torch):
    x = case.x(dtype)
    y, idx = max_fwd(backend, case, x)
    gy = _gy(y.shape, dtype)
    ty, tidx, tgx = _torch_max(torch, case, x, gy)
    assert y.shape == ty.shape and y.dtype == np.dtype(dtype) and idx.dtype == np.int64
    np.testing.assert_array_equal(y, ty)          # a max is one of the inputs: exact
    np.testing.assert_array_equal(idx, tidx)
    gx = max_bwd(backend, gy, idx, x.shape)
    assert gx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gx, tgx, **tol(dtype))


@pytest.mark.parametrize("backend", OTHER_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", MAX_CASES + PLANE_CASES, ids=lambda c: c.id)
def test_max_pool_matches_reference(backend, case, dtype):
    x = case.x(dtype)
    y, idx = max_fwd(backend, case, x)
    ry, ridx = max_fwd("numpy", case, x)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    gy = _gy(y.shape, dtype)
    np.testing.assert_allclose(max_bwd(backend, gy, idx, x.shape),
                               max_bwd("numpy", gy, ridx, x.shape), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_max_pool_nan_inf_and_ties(backend, dtype, torch):
    """NaN wins its window (with several NaNs, torch reports the last one), ties keep the
    first maximum in row-major window order, an all -inf window reports its first in-image
    element, and padding is never chosen -- all exactly as torch."""
    x = np.zeros((2, 2, 6, 7), dtype)
    x[0, 0, 1, 1] = np.nan                         # a single NaN in several overlapping windows
    x[0, 1, 2, 3] = x[0, 1, 3, 4] = np.nan         # two NaNs sharing windows
    x[1, 0] = 1.0                                  # a plane of ties
    x[1, 0, 4, 5] = 2.0
    x[1, 1] = -np.inf                              # nothing beats -inf
    x[1, 1, 0, 0] = np.nan
    for c in (Case("nan3", 2, 2, 6, 7, 3, 2, 1), Case("nan2", 2, 2, 6, 7, 2, 1, 1, ceil=True),
              Case("nan_dil", 2, 2, 6, 7, 2, 2, 1, d=2, ceil=True)):
        y, idx = max_fwd(backend, c, x)
        ty, tidx, _ = _torch_max(torch, c, x)
        np.testing.assert_array_equal(y, ty, err_msg=c.id)    # assert_array_equal: NaN == NaN
        np.testing.assert_array_equal(idx, tidx, err_msg=c.id)
        if c.d == 1:   # (the dilated windows may step over the NaNs; torch agrees either way)
            assert np.isnan(y[0, 0]).any() and np.isnan(y[0, 1]).any()


@pytest.mark.parametrize("hw", [(8, 8), (4, 4), (6, 7), (9, 4)])
def test_max_pool_2x2_nan_inf_and_ties(backend, hw, torch):
    """The same rules on 2x2 stride-2 windows (the cpu backend's plane kernel, float32): NaN
    wins (the last of several), ties keep the first in row-major order, all -inf reports the
    first element -- in every lane position of the kernel's 4-output steps."""
    H, W = hw
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (2, 3, H, W)).astype(np.float32)    # many ties
    x.flat[rng.choice(x.size, x.size // 6, replace=False)] = np.nan
    x[1, 1] = -np.inf
    x[1, 2, ::2, 1::2] = np.nan
    c = Case("k2", 2, 3, H, W, 2)
    y, idx = max_fwd(backend, c, x)
    ty, tidx, _ = _torch_max(torch, c, x)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, tidx)


def test_max_pool_check_backward(backend):
    """Directional numerical derivative on distinct values, every max case, float64."""
    for c in MAX_CASES:
        x = c.distinct_x(seed=3)

        def fwd(x, c=c):
            return max_fwd(backend, c, x)[0]

        def bwd(gy, x, c=c):
            return (max_bwd(backend, gy, max_fwd(backend, c, x)[1], x.shape),)

        check_backward(fwd, bwd, (x,))


def test_max_pool_numeric_grad_per_element(backend):
    c = Case("tiny", 1, 2, 5, 4, 3, 2, 1, ceil=True)
    x = c.distinct_x(seed=4)
    y, idx = max_fwd(backend, c, x)
    gy = _gy(y.shape, np.float64, seed=5)
    gx = max_bwd(backend, gy, idx, x.shape)
    num = numeric_grad(lambda t: float(np.vdot(max_fwd(backend, c, t)[0], gy)), x.copy())
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------- avg pool
@pytest.mark.parametrize("cip", [True, False], ids=["incpad", "nopad"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.id)
def test_avg_pool_matches_torch(backend, case, dtype, cip, torch):
    x = case.x(dtype)
    y = avg_fwd(backend, case, x, cip)
    gy = _gy(y.shape, dtype)
    ty, tgx = _torch_avg(torch, case, x, cip, gy)
    assert y.shape == ty.shape and y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, ty, **tol(dtype))
    gx = avg_bwd(backend, case, gy, x.shape, cip)
    assert gx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gx, tgx, **tol(dtype))


@pytest.mark.parametrize("backend", OTHER_BACKENDS, indirect=True)
@pytest.mark.parametrize("cip", [True, False], ids=["incpad", "nopad"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.id)
def test_avg_pool_matches_reference(backend, case, dtype, cip):
    x = case.x(dtype)
    y = avg_fwd(backend, case, x, cip)
    np.testing.assert_allclose(y, avg_fwd("numpy", case, x, cip), **tol(dtype))
    gy = _gy(y.shape, dtype)
    np.testing.assert_allclose(avg_bwd(backend, case, gy, x.shape, cip),
                               avg_bwd("numpy", case, gy, x.shape, cip), **tol(dtype))


@pytest.mark.parametrize("cip", [True, False], ids=["incpad", "nopad"])
def test_avg_pool_check_backward_and_adjoint(backend, cip):
    """Directional numerical derivative, and (avg pool being linear) the adjoint identity
    <avg(x), g> == <x, avg_backward(g)>, float64, for every avg case."""
    for c in AVG_CASES:
        x = c.x(np.float64, seed=6)
        check_backward(lambda x, c=c: avg_fwd(backend, c, x, cip),
                       lambda gy, x, c=c: (avg_bwd(backend, c, gy, x.shape, cip),), (x,))
        y = avg_fwd(backend, c, x, cip)
        g = _gy(y.shape, np.float64, seed=7)
        np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, avg_bwd(backend, c, g, x.shape, cip)),
                                   rtol=1e-12, atol=1e-12, err_msg=c.id)


@pytest.mark.parametrize("cip", [True, False], ids=["incpad", "nopad"])
def test_avg_pool_numeric_grad_per_element(backend, cip):
    c = Case("tiny", 1, 2, 5, 4, 3, 2, 1, ceil=True)
    x = c.x(np.float64, seed=8)
    gy = _gy(avg_fwd(backend, c, x, cip).shape, np.float64, seed=9)
    gx = avg_bwd(backend, c, gy, x.shape, cip)
    num = numeric_grad(lambda t: float(np.vdot(avg_fwd(backend, c, t, cip), gy)), x.copy())
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------- layouts, buffers, empty
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pool_noncontiguous_inputs(backend, dtype):
    c = Case("nc", 2, 3, 7, 6, 3, 2, 1, ceil=True)
    big = np.random.default_rng(10).standard_normal((2, 6, 6, 7)).astype(dtype)
    x_c = np.ascontiguousarray(big[:, ::2].transpose(0, 1, 3, 2))      # (2, 3, 7, 6)
    want_y, want_idx = max_fwd("numpy", c, x_c)
    want_avg = avg_fwd("numpy", c, x_c, False)
    gy = _gy(want_y.shape, dtype)
    gy_big = np.concatenate([gy, gy], axis=3)
    want_gx_avg = avg_bwd("numpy", c, gy, x_c.shape, False)
    with convkit.use_backend(backend) as be:
        x = be.asarray(big)[:, ::2].transpose(0, 1, 3, 2)
        g = be.asarray(gy_big)[..., :gy.shape[3]]
        assert not x.flags.c_contiguous and not g.flags.c_contiguous
        y, idx = F.max_pool2d_forward(x, c.k, c.s, c.p, c.d, c.ceil)
        np.testing.assert_array_equal(be.to_numpy(y), want_y)
        np.testing.assert_array_equal(be.to_numpy(idx), want_idx)
        avg = F.avg_pool2d_forward(x, c.k, c.s, c.p, c.ceil, False)
        np.testing.assert_allclose(be.to_numpy(avg), want_avg, **tol(dtype))
        np.testing.assert_allclose(
            be.to_numpy(F.avg_pool2d_backward(g, x_c.shape, c.k, c.s, c.p, c.ceil, False)),
            want_gx_avg, **tol(dtype))
        idx_nc = be.asarray(np.concatenate([want_idx, want_idx], axis=3))[..., :gy.shape[3]]
        np.testing.assert_allclose(be.to_numpy(F.max_pool2d_backward(g, idx_nc, x_c.shape)),
                                   max_bwd("numpy", gy, want_idx, x_c.shape), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pool_out_buffers(backend, dtype):
    """out= is written in full (NaN-filled beforehand) and is the array returned."""
    c = Case("out", 2, 2, 7, 9, 3, 2, 1)
    x = c.x(dtype)
    want_y, want_idx = max_fwd("numpy", c, x)
    want_avg = avg_fwd("numpy", c, x, True)
    with convkit.use_backend(backend) as be:
        out = be.xp.full(want_y.shape, np.nan, dtype=dtype)
        y, idx = F.max_pool2d_forward(be.asarray(x), c.k, c.s, c.p, out=out)
        assert y is out
        np.testing.assert_array_equal(be.to_numpy(out), want_y)
        np.testing.assert_array_equal(be.to_numpy(idx), want_idx)
        out2 = be.xp.full(want_avg.shape, np.nan, dtype=dtype)
        assert F.avg_pool2d_forward(be.asarray(x), c.k, c.s, c.p, out=out2) is out2
        np.testing.assert_allclose(be.to_numpy(out2), want_avg, **tol(dtype))


def test_pool_empty_batch(backend, torch):
    """N = 0: empty outputs of torch's shapes, and empty gradients of the input's shape."""
    c = Case("empty", 0, 3, 7, 6, 3, 2, 1, ceil=True)
    x = c.x(np.float64)
    ty = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, 1, True)
    y, idx = max_fwd(backend, c, x)
    assert y.shape == idx.shape == tuple(ty.shape) == (0, 3, 4, 4) and idx.dtype == np.int64
    gx = max_bwd(backend, np.zeros(y.shape), idx, x.shape)
    assert gx.shape == x.shape and gx.dtype == np.float64
    for cip in (True, False):
        a = avg_fwd(backend, c, x, cip)
        assert a.shape == tuple(torch.nn.functional.avg_pool2d(torch.from_numpy(x), 3, 2, 1, True,
                                                                cip).shape)
        gx = avg_bwd(backend, c, np.zeros(a.shape), x.shape, cip)
        assert gx.shape == x.shape and gx.dtype == np.float64
