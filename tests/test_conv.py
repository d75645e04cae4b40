"""conv2d forward/backward on every backend.

Oracles: torch.nn.functional.conv2d + autograd (when torch is importable), the numpy reference
backend (for every other backend), the lecture's worked examples (literal values), numerical
gradients in float64, and the adjoint identity <conv(x), g> = <x, conv_backward(g)>.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

import convkit
import convkit.functional as F
from conftest import BACKEND_PARAMS
from helpers import check_backward, numeric_grad, run, tol

# every backend but the reference itself, for the "matches the reference" tests
OTHER_BACKENDS = [p for p in BACKEND_PARAMS if p.id != "numpy"]
DTYPES = [np.float32, np.float64]


class Case(NamedTuple):
    id: str
    N: int
    C: int
    H: int
    W: int
    F: int
    KH: int
    KW: int
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = True

    def inputs(self, dtype, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.N, self.C, self.H, self.W)).astype(dtype)
        w = rng.standard_normal((self.F, self.C // self.groups, self.KH, self.KW)).astype(dtype)
        b = rng.standard_normal(self.F).astype(dtype) if self.bias else None
        return x, w, b

    @property
    def params(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)


CASES = [
    Case("basic3x3_p1", 2, 3, 7, 9, 4, 3, 3, padding=1),
    Case("k3x2_s21_p10", 2, 3, 8, 6, 5, 3, 2, stride=(2, 1), padding=(1, 0)),
    Case("s2_p2", 2, 2, 9, 10, 3, 3, 3, stride=2, padding=2),
    Case("k2x3_s3_p0", 1, 2, 11, 8, 3, 2, 3, stride=3),
    Case("same_odd_k3x5", 2, 3, 6, 7, 2, 3, 5, padding="same"),
    Case("same_even_k4x2", 2, 2, 7, 6, 3, 4, 2, padding="same"),   # asymmetric: extra pad after
    Case("same_even_dil2", 1, 2, 6, 6, 2, 2, 3, padding="same", dilation=2),
    Case("valid", 2, 2, 6, 5, 3, 3, 2, padding="valid"),
    Case("dil2_p2", 2, 2, 9, 8, 3, 3, 3, padding=2, dilation=2),
    Case("dil21_s12", 1, 2, 8, 9, 2, 2, 3, stride=(1, 2), padding=1, dilation=(2, 1)),
    Case("groups2", 2, 4, 6, 7, 6, 3, 3, padding=1, groups=2),
    Case("depthwise", 2, 4, 7, 6, 4, 3, 3, padding=1, groups=4),
    Case("depthwise_x2_s2", 1, 3, 8, 7, 6, 3, 3, stride=2, padding=1, groups=3),
    Case("no_bias", 2, 3, 5, 6, 4, 3, 3, padding=1, bias=False),
    Case("batch1", 1, 3, 6, 5, 2, 3, 3, stride=2, padding=1),
    Case("kernel_eq_input", 2, 3, 5, 4, 3, 5, 4),             # one output pixel
    Case("k1x1", 2, 5, 4, 6, 3, 1, 1),
    Case("k1x1_s2", 2, 3, 5, 6, 4, 1, 1, stride=2),
]
CASE_IDS = [c.id for c in CASES]


def conv_all(backend, case, x, w, b, gy, **flags):
    """Forward and backward of ``case`` on ``backend``: (y, grad_x, grad_w, grad_b)."""
    y = run(backend, F.conv2d_forward, x, w, b, **case.params)
    gx, gw, gb = run(backend, F.conv2d_backward, gy, x, w, has_bias=b is not None, **flags,
                     **case.params)
    return y, gx, gw, gb


def conv_torch(torch, case, x, w, b, gy):
    """Same quantities from torch.nn.functional.conv2d and autograd, in x's dtype."""
    xt = torch.from_numpy(x.copy()).requires_grad_()
    wt = torch.from_numpy(w.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_() if b is not None else None
    yt = torch.nn.functional.conv2d(xt, wt, bt, case.stride, case.padding, case.dilation,
                                    case.groups)
    yt.backward(torch.from_numpy(gy))
    return (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            bt.grad.numpy() if bt is not None else None)


def _grad_y(case, x, w, b, dtype, seed=1):
    shape = run("numpy", F.conv2d_forward, x, w, b, **case.params).shape
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _assert_all(got, want, dtype, what):
    for name, g, e in zip(("y", "grad_x", "grad_weight", "grad_bias"), got, want):
        if e is None:
            assert g is None, f"{what}: {name} should be None"
            continue
        assert g.dtype == np.dtype(dtype), f"{what}: {name} dtype {g.dtype}"
        assert g.shape == e.shape, f"{what}: {name} shape {g.shape} != {e.shape}"
        np.testing.assert_allclose(g, e, **tol(dtype), err_msg=f"{what}: {name}")


# ------------------------------------------------------------------------ against the oracles
# torch warns that 'same' with an even kernel copies the input; that is its business, not ours
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv_matches_torch(backend, case, dtype, torch):
    x, w, b = case.inputs(dtype)
    gy = _grad_y(case, x, w, b, dtype)
    got = conv_all(backend, case, x, w, b, gy)
    want = conv_torch(torch, case, x, w, b, gy)
    _assert_all(got, want, dtype, f"{backend} {case.id}")


@pytest.mark.parametrize("backend", OTHER_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv_matches_reference(backend, case, dtype):
    x, w, b = case.inputs(dtype)
    gy = _grad_y(case, x, w, b, dtype)
    _assert_all(conv_all(backend, case, x, w, b, gy), conv_all("numpy", case, x, w, b, gy),
                dtype, f"{backend} {case.id}")


def test_conv_backward_flags(backend, torch):
    """needs_input_grad=False gives no grad_x, has_bias=False no grad_bias; grad_weight is
    unchanged by either."""
    case = CASES[1]
    x, w, b = case.inputs(np.float64)
    gy = _grad_y(case, x, w, b, np.float64)
    _, _, want_gw, want_gb = conv_torch(torch, case, x, w, b, gy)
    gx, gw, gb = run(backend, F.conv2d_backward, gy, x, w, needs_input_grad=False, **case.params)
    assert gx is None
    np.testing.assert_allclose(gw, want_gw, **tol(np.float64))
    np.testing.assert_allclose(gb, want_gb, **tol(np.float64))
    gx, gw, gb = run(backend, F.conv2d_backward, gy, x, w, needs_input_grad=False,
                     has_bias=False, **case.params)
    assert gx is None and gb is None
    np.testing.assert_allclose(gw, want_gw, **tol(np.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv_noncontiguous_inputs(backend, dtype):
    """Strided / transposed views give the same results as their contiguous copies."""
    case = Case("nc", 2, 4, 6, 7, 6, 3, 2, stride=(1, 2), padding=(1, 0), groups=2)
    rng = np.random.default_rng(3)
    xbig = rng.standard_normal((2, 4, 12, 7)).astype(dtype)
    wT = rng.standard_normal((6, 2, 2, 3)).astype(dtype)       # (F, Cg, KW, KH)
    bbig = rng.standard_normal(12).astype(dtype)
    x_c = np.ascontiguousarray(xbig[:, :, ::2, :])
    w_c = np.ascontiguousarray(wT.transpose(0, 1, 3, 2))
    b_c = np.ascontiguousarray(bbig[::2])
    gybig = rng.standard_normal((2, 6, 6, 6)).astype(dtype)
    gy_c = np.ascontiguousarray(gybig[..., ::2])
    want = conv_all("numpy", case, x_c, w_c, b_c, gy_c)
    with convkit.use_backend(backend) as be:
        x = be.asarray(xbig)[:, :, ::2, :]
        w = be.asarray(wT).transpose(0, 1, 3, 2)
        b = be.asarray(bbig)[::2]
        gy = be.asarray(gybig)[..., ::2]
        assert not (x.flags.c_contiguous or w.flags.c_contiguous or gy.flags.c_contiguous)
        y = F.conv2d_forward(x, w, b, **case.params)
        grads = F.conv2d_backward(gy, x, w, **case.params)
        got = tuple(be.to_numpy(a) for a in (y,) + tuple(grads))
    _assert_all(got, want, dtype, f"{backend} non-contiguous")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv_out_buffer(backend, dtype):
    """out= is written in full and returned (a NaN-filled buffer shows any unwritten element)."""
    case = CASES[2]
    x, w, b = case.inputs(dtype)
    want = run("numpy", F.conv2d_forward, x, w, b, **case.params)
    with convkit.use_backend(backend) as be:
        out = be.xp.full(want.shape, np.nan, dtype=dtype)
        y = F.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), out=out, **case.params)
        assert y is out
        got = be.to_numpy(out)
    np.testing.assert_allclose(got, want, **tol(dtype))


def test_conv_empty_batch(backend, torch):
    """N = 0: correctly shaped empty y and grad_x; grad_weight and grad_bias are zeros."""
    case = Case("empty", 0, 4, 6, 5, 6, 3, 3, stride=2, padding=1, groups=2)
    x, w, b = case.inputs(np.float64)
    y = run(backend, F.conv2d_forward, x, w, b, **case.params)
    want_y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                        torch.from_numpy(b), 2, 1, 1, 2).numpy()
    assert y.shape == want_y.shape == (0, 6, 3, 3)
    gx, gw, gb = run(backend, F.conv2d_backward, np.zeros(y.shape), x, w, **case.params)
    assert gx.shape == x.shape and gx.dtype == np.float64
    np.testing.assert_array_equal(gw, np.zeros_like(w))
    np.testing.assert_array_equal(gb, np.zeros(6))


# ------------------------------------------------------------ the lecture's worked examples
LECTURE_X = np.array([[1, 128, 100, 255], [4, 100, 80, 0], [20, 90, 70, 0], [40, 50, 60, 2]],
                     dtype=np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv_lecture_single_channel(backend, dtype):
    x = LECTURE_X.reshape(1, 1, 4, 4).astype(dtype)
    w = np.array([[[[1, 2], [0, 0.5]]], [[[0, 0.1], [1, 2]]]], dtype=dtype)
    y = run(backend, F.conv2d_forward, x, w, np.zeros(2, dtype), padding=1)
    assert y.shape == (1, 2, 5, 5)
    got = [y[0, 0, 0, 0], y[0, 0, 0, 1], y[0, 0, 1, 0], y[0, 0, 1, 1],
           y[0, 1, 0, 0], y[0, 1, 0, 1], y[0, 1, 1, 0], y[0, 1, 1, 1]]
    # out[0,1,0,0] is 2 (the slide prints 1 but its own sum 0*0 + 0.1*0 + 1*0 + 2*1 is 2)
    np.testing.assert_allclose(got, [0.5, 64, 4, 307, 2, 257, 8.1, 216.8], **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv_lecture_two_channels(backend, dtype):
    rng = np.random.default_rng(7)
    x = np.empty((1, 2, 4, 4))
    x[0, 0] = LECTURE_X
    x[0, 1] = rng.integers(0, 256, (4, 4))       # only the top-left block touches the outputs
    x[0, 1, :2, :2] = [[0, 10], [10, 255]]
    w = rng.standard_normal((2, 2, 2, 2))         # filter 1 is unconstrained
    w[0, 0] = [[1, 2], [0, 0.5]]
    w[0, 1] = [[1, 1], [1, 1.5]]
    y = run(backend, F.conv2d_forward, x.astype(dtype), w.astype(dtype), None, padding=1)
    got = [y[0, 0, 0, 0], y[0, 0, 0, 1], y[0, 0, 1, 0], y[0, 0, 1, 1]]
    np.testing.assert_allclose(got, [0.5, 79, 19, 709.5], **tol(dtype))


# ------------------------------------------------------------------------ numerical gradients
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv_check_backward(backend, case):
    """Directional numerical derivative (float64) agrees with conv2d_backward."""
    x, w, b = case.inputs(np.float64, seed=5)
    inputs = (x, w) if b is None else (x, w, b)

    def fwd(x, w, b=None):
        return run(backend, F.conv2d_forward, x, w, b, **case.params)

    def bwd(gy, x, w, b=None):
        return run(backend, F.conv2d_backward, gy, x, w, has_bias=b is not None, **case.params)

    check_backward(fwd, bwd, inputs)


@pytest.mark.parametrize("case", [
    Case("tiny_s21", 2, 2, 4, 5, 2, 2, 3, stride=(2, 1), padding=(1, 0)),
    Case("tiny_g2_dil", 1, 4, 5, 4, 2, 2, 2, padding=1, dilation=2, groups=2),
    Case("tiny_same_even", 1, 1, 3, 4, 2, 2, 2, padding="same"),
], ids=lambda c: c.id)
def test_conv_numeric_grad_per_element(backend, case):
    """Every entry of grad_x, grad_weight, grad_bias against a centred difference."""
    x, w, b = case.inputs(np.float64, seed=11)
    gy = _grad_y(case, x, w, b, np.float64, seed=12)

    def loss(x, w, b):
        return float(np.vdot(run(backend, F.conv2d_forward, x, w, b, **case.params), gy))

    gx, gw, gb = run(backend, F.conv2d_backward, gy, x, w, **case.params)
    np.testing.assert_allclose(gx, numeric_grad(lambda t: loss(t, w, b), x.copy()),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gw, numeric_grad(lambda t: loss(x, t, b), w.copy()),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, numeric_grad(lambda t: loss(x, w, t), b.copy()),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in (
    "k3x2_s21_p10", "s2_p2", "same_even_k4x2", "dil21_s12", "groups2", "depthwise_x2_s2")],
    ids=lambda c: c.id)
def test_conv_adjoint_identity(backend, case):
    """grad_x is the exact adjoint of the (bias-free, linear in x) forward:
    <conv(x), g> == <x, conv_backward(g)>, in float64."""
    x, w, _ = case.inputs(np.float64, seed=21)
    y = run(backend, F.conv2d_forward, x, w, None, **case.params)
    g = np.random.default_rng(22).standard_normal(y.shape)
    gx, _, _ = run(backend, F.conv2d_backward, g, x, w, has_bias=False, **case.params)
    lhs, rhs = np.vdot(y, g), np.vdot(x, gx)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12 * np.abs(y).sum())
