"""batch_norm forward/backward (training and eval) on every backend.

Oracles: torch.nn.functional.batch_norm + autograd and torch's native_batch_norm (save_mean /
save_invstd), including the in-place running-statistics update (when torch is importable); the
numpy reference backend (for every other backend); numerical gradients in float64.
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
    training: bool
    affine: bool = True
    running: bool = True          # pass running_mean / running_var
    momentum: float = 0.1
    eps: float = 1e-5

    def inputs(self, dtype, seed=0):
        """x with a per-channel offset and scale (so the statistics matter), weight, bias,
        running_mean, running_var (fresh copies each call: the forward updates them)."""
        rng = np.random.default_rng(seed)
        shift = rng.uniform(-3, 3, (1, self.C, 1, 1))
        spread = rng.uniform(0.5, 2, (1, self.C, 1, 1))
        x = (rng.standard_normal((self.N, self.C, self.H, self.W)) * spread + shift).astype(dtype)
        w = rng.uniform(0.5, 1.5, self.C).astype(dtype) if self.affine else None
        b = rng.standard_normal(self.C).astype(dtype) if self.affine else None
        rm = rng.standard_normal(self.C).astype(dtype) if self.running else None
        rv = rng.uniform(0.5, 2, self.C).astype(dtype) if self.running else None
        return x, w, b, rm, rv


CASES = [
    Case("train_affine", 4, 3, 5, 6, True),
    Case("train_no_affine", 3, 4, 4, 5, True, affine=False),
    Case("train_no_running", 2, 3, 4, 4, True, running=False),
    Case("train_batch1", 1, 3, 3, 4, True, momentum=0.3, eps=1e-3),
    Case("train_1x1_spatial", 6, 5, 1, 1, True),
    Case("eval_affine", 3, 3, 4, 5, False),
    Case("eval_no_affine", 2, 4, 3, 3, False, affine=False, eps=1e-3),
]


def bn_all(backend, case, x, w, b, rm, rv, gy):
    """Forward then backward on ``backend``; returns (y, save_mean, save_invstd, running_mean
    after, running_var after, grad_x, grad_w, grad_b).  The running stats are updated in place
    on the backend's own arrays and read back from them."""
    with convkit.use_backend(backend) as be:
        dev = [None if a is None else be.asarray(a.copy()) for a in (x, w, b, rm, rv)]
        xb, wb, bb, rmb, rvb = dev
        y, sm, si = F.batch_norm_forward(xb, wb, bb, rmb, rvb, case.training, case.momentum,
                                         case.eps)
        gx, gw, gb = F.batch_norm_backward(be.asarray(gy), xb, wb, sm, si, case.training)
        return tuple(None if a is None else be.to_numpy(a)
                     for a in (y, sm, si, rmb, rvb, gx, gw, gb))


def bn_torch(torch, case, x, w, b, rm, rv, gy):
    """The same eight quantities from torch (save stats from native_batch_norm in training,
    from the running statistics in eval, as convkit's contract defines them)."""
    t = lambda a, grad=False: None if a is None else torch.from_numpy(a.copy()).requires_grad_(grad)
    xt, wt, bt, rmt, rvt = t(x, True), t(w, True), t(b, True), t(rm), t(rv)
    y = torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, case.training, case.momentum,
                                       case.eps)
    y.backward(torch.from_numpy(gy))
    if case.training:
        _, sm, si = torch.ops.aten.native_batch_norm(t(x), t(w), t(b), None, None, True, 0.0,
                                                     case.eps)
        sm, si = sm.numpy(), si.numpy()
    else:
        sm, si = rm.copy(), (1 / torch.sqrt(t(rv) + case.eps)).numpy()
    g = lambda a: None if a is None else a.grad.numpy()
    return (y.detach().numpy(), sm, si, None if rmt is None else rmt.numpy(),
            None if rvt is None else rvt.numpy(), g(xt), g(wt), g(bt))


NAMES = ("y", "save_mean", "save_invstd", "running_mean", "running_var", "grad_x",
         "grad_weight", "grad_bias")


def _assert_all(got, want, dtype, what):
    for name, g, e in zip(NAMES, got, want):
        if e is None:
            assert g is None, f"{what}: {name} should be None"
            continue
        assert g.dtype == np.dtype(dtype) and g.shape == e.shape, \
            f"{what}: {name} is {g.dtype}{g.shape}, want {np.dtype(dtype)}{e.shape}"
        np.testing.assert_allclose(g, e, **tol(dtype), err_msg=f"{what}: {name}")


def _gy(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------ against the oracles
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_batch_norm_matches_torch(backend, case, dtype, torch):
    x, w, b, rm, rv = case.inputs(dtype)
    gy = _gy(x.shape, dtype)
    got = bn_all(backend, case, x, w, b, rm, rv, gy)
    want = bn_torch(torch, case, x, w, b, rm, rv, gy)
    if case.running and case.training:   # the update really happened
        assert not np.allclose(got[3], rm) and not np.allclose(got[4], rv)
    _assert_all(got, want, dtype, f"{backend} {case.id}")


@pytest.mark.parametrize("backend", OTHER_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_batch_norm_matches_reference(backend, case, dtype):
    x, w, b, rm, rv = case.inputs(dtype)
    gy = _gy(x.shape, dtype)
    _assert_all(bn_all(backend, case, x, w, b, rm, rv, gy),
                bn_all("numpy", case, x, w, b, rm, rv, gy), dtype, f"{backend} {case.id}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_norm_running_stats_hand_computed(backend, dtype):
    """The in-place update r = (1 - m) r + m stat with the UNBIASED variance, by hand, over two
    successive training steps on the same running arrays."""
    rng = np.random.default_rng(2)
    rm0, rv0 = np.array([0.5, -1.0], dtype), np.array([2.0, 0.25], dtype)
    m = 0.25
    with convkit.use_backend(backend) as be:
        rmb, rvb = be.asarray(rm0.copy()), be.asarray(rv0.copy())
        want_m, want_v = rm0.astype(np.float64), rv0.astype(np.float64)
        for step in range(2):
            x = (rng.standard_normal((3, 2, 2, 3)) + step).astype(dtype)
            F.batch_norm_forward(be.asarray(x), None, None, rmb, rvb, True, m, 1e-5)
            x64 = x.astype(np.float64)
            want_m = (1 - m) * want_m + m * x64.mean(axis=(0, 2, 3))
            want_v = (1 - m) * want_v + m * x64.var(axis=(0, 2, 3), ddof=1)
            np.testing.assert_allclose(be.to_numpy(rmb), want_m, **tol(dtype))
            np.testing.assert_allclose(be.to_numpy(rvb), want_v, **tol(dtype))


# ------------------------------------------------------------------------ numerical gradients
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_batch_norm_check_backward(backend, case):
    """Directional numerical derivative of y (float64) w.r.t. x, weight and bias; in training
    the batch statistics move with x, in eval the running statistics are constants."""
    x, w, b, rm, rv = case.inputs(np.float64, seed=3)
    inputs = (x, w, b) if case.affine else (x,)

    def fwd(x, w=None, b=None):
        r = (None, None) if rm is None else (rm.copy(), rv.copy())
        return run(backend, F.batch_norm_forward, x, w, b, *r, case.training, case.momentum,
                   case.eps)[0]

    def bwd(gy, x, w=None, b=None):
        r = (None, None) if rm is None else (rm.copy(), rv.copy())
        _, sm, si = run(backend, F.batch_norm_forward, x, w, b, *r, case.training,
                        case.momentum, case.eps)
        gx, gw, gb = run(backend, F.batch_norm_backward, gy, x, w, sm, si, case.training)
        return (gx, gw, gb) if case.affine else (gx,)

    check_backward(fwd, bwd, inputs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_numeric_grad_per_element(backend, training):
    case = Case("tiny", 2, 2, 2, 3, training)
    x, w, b, rm, rv = case.inputs(np.float64, seed=4)
    gy = _gy(x.shape, np.float64, seed=5)

    def loss(x, w, b):
        y = run(backend, F.batch_norm_forward, x, w, b, rm.copy(), rv.copy(), training)[0]
        return float(np.vdot(y, gy))

    _, sm, si = run(backend, F.batch_norm_forward, x, w, b, rm.copy(), rv.copy(), training)
    gx, gw, gb = run(backend, F.batch_norm_backward, gy, x, w, sm, si, training)
    np.testing.assert_allclose(gx, numeric_grad(lambda t: loss(t, w, b), x.copy()),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gw, numeric_grad(lambda t: loss(x, t, b), w.copy()),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, numeric_grad(lambda t: loss(x, w, t), b.copy()),
                               rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------- layouts, buffers, empty
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_norm_noncontiguous_inputs(backend, dtype, training):
    case = Case("nc", 3, 4, 5, 6, training)
    x, w, b, rm, rv = case.inputs(dtype, seed=6)
    gy = _gy(x.shape, dtype)
    want = bn_all("numpy", case, x, w, b, rm, rv, gy)
    xT = np.ascontiguousarray(x.transpose(0, 1, 3, 2))          # (N, C, W, H) storage
    w2 = np.repeat(w, 2)                                       # w2[::2] == w
    with convkit.use_backend(backend) as be:
        xv = be.asarray(xT).transpose(0, 1, 3, 2)
        wv = be.asarray(w2)[::2]
        gyv = be.asarray(np.ascontiguousarray(gy[:, ::-1]))[:, ::-1]
        assert not (xv.flags.c_contiguous or wv.flags.c_contiguous or gyv.flags.c_contiguous)
        rmb, rvb = be.asarray(rm.copy()), be.asarray(rv.copy())
        y, sm, si = F.batch_norm_forward(xv, wv, be.asarray(b), rmb, rvb, training)
        gx, gw, gb = F.batch_norm_backward(gyv, xv, wv, sm, si, training)
        got = tuple(be.to_numpy(a) for a in (y, sm, si, rmb, rvb, gx, gw, gb))
    _assert_all(got, want, dtype, f"{backend} non-contiguous")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_out_buffer(backend, training):
    case = Case("out", 2, 3, 4, 5, training)
    x, w, b, rm, rv = case.inputs(np.float32, seed=7)
    want = run("numpy", F.batch_norm_forward, x, w, b, rm.copy(), rv.copy(), training)[0]
    with convkit.use_backend(backend) as be:
        out = be.xp.full(x.shape, np.nan, dtype=np.float32)
        y, _, _ = F.batch_norm_forward(be.asarray(x), be.asarray(w), be.asarray(b),
                                       be.asarray(rm.copy()), be.asarray(rv.copy()), training,
                                       out=out)
        assert y is out
        got = be.to_numpy(out)
    np.testing.assert_allclose(got, want, **tol(np.float32))


def test_batch_norm_empty_batch(backend, torch):
    """Eval with N = 0: empty y of x's shape, save stats from the running stats, empty grad_x
    and zero parameter gradients.  Training with N = 0 has no statistics: ValueError (torch
    raises too)."""
    case = Case("empty", 0, 3, 4, 4, False)
    x, w, b, rm, rv = case.inputs(np.float64)
    y, sm, si = run(backend, F.batch_norm_forward, x, w, b, rm, rv, False)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), torch.from_numpy(rm),
                                        torch.from_numpy(rv), torch.from_numpy(w),
                                        torch.from_numpy(b), False)
    assert y.shape == tuple(ty.shape) == x.shape and y.dtype == np.float64
    np.testing.assert_allclose(sm, rm, **tol(np.float64))
    np.testing.assert_allclose(si, 1 / np.sqrt(rv + 1e-5), **tol(np.float64))
    gx, gw, gb = run(backend, F.batch_norm_backward, np.zeros(x.shape), x, w, sm, si, False)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros(3))
    np.testing.assert_array_equal(gb, np.zeros(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        run(backend, F.batch_norm_forward, x, w, b, rm, rv, True)
