"""conv_transpose2d (torch.nn.functional.conv_transpose2d semantics) on every backend.

Oracle: torch in float64 (forward, and autograd for the backward).  Also: the op is conv2d's
adjoint (forward = conv2d's grad_x, bit for bit on numpy and cpu; <T x, v> = <x, conv2d(v)>),
a float64 numerical gradient check, the error rules, empty inputs, NaN/inf element for element
as torch, cpu bits independent of the thread count, the workspace limit.  The cuda cases also
run on the host emulation of the kernels (tests/test_cuda_backend.py's generic suites).
"""
from __future__ import annotations

import numpy as np
import pytest

import convkit
from convkit import functional as F
from helpers import check_backward, run


def _avx2(cc, algo):
    """The AVX2 algorithm runs here: no own GEMM, or the half-rate rule names it
    (conv_plan.avx2_algo)."""
    from convkit.cpu import conv_plan as P
    return P.avx2_algo(cc._caps(), algo)


def _own_plan(cc, algo, dtype=np.float32):
    """float32 on the own AVX-512 GEMM's plans for this algorithm's place (not the AVX2 one)."""
    return cc._OWN_SGEMM and dtype == np.float32 and not _avx2(cc, algo)

OPS = (F.conv_transpose2d_forward, F.conv_transpose2d_backward)

# (N, C_in, H, W), C_out/groups, (KH, KW), kwargs
CASES = {
    "s1": ((2, 3, 5, 6), 4, (3, 3), dict()),
    "s2_p1_decoder": ((2, 6, 7, 7), 4, (4, 4), dict(stride=2, padding=1)),
    "s2_outpad": ((2, 4, 5, 4), 3, (3, 3), dict(stride=2, padding=1, output_padding=1)),
    "s3x2_pad_outpad": ((1, 3, 4, 5), 2, (3, 2), dict(stride=(3, 2), padding=(2, 0),
                                                       output_padding=(2, 1))),
    "groups2": ((2, 4, 5, 5), 3, (3, 2), dict(stride=(2, 1), padding=(1, 1), groups=2)),
    "groups3_dil": ((1, 6, 4, 6), 2, (3, 3), dict(stride=2, groups=3, dilation=(2, 1),
                                                   output_padding=(1, 0))),
    # output_padding >= stride, allowed below the dilation: conv2d's view has more rows
    "outpad_ge_stride": ((2, 3, 4, 5), 2, (3, 2), dict(stride=1, dilation=(3, 2),
                                                        output_padding=(2, 1), padding=1)),
    "depthwise": ((2, 4, 6, 6), 1, (3, 3), dict(padding=1, groups=4)),
    "depthwise_s2": ((2, 4, 5, 5), 1, (3, 3), dict(stride=2, padding=1, output_padding=1,
                                                   groups=4)),
    "1x1_to_4x4": ((3, 5, 1, 1), 4, (4, 4), dict()),      # DCGAN's first layer
    "pointwise": ((2, 5, 4, 3), 6, (1, 1), dict()),
    "big_pad": ((1, 2, 6, 6), 3, (5, 5), dict(stride=2, padding=4, output_padding=1)),
}


def _torch_case(torch, name, dtype, bias=True, seed=0):
    xs, cog, (kh, kw), kwargs = CASES[name]
    rng = np.random.default_rng(seed)
    g = kwargs.get("groups", 1)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((xs[1], cog, kh, kw))
    b = rng.standard_normal(cog * g) if bias else None
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if bias else None
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kwargs)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    want = dict(y=ty.detach().numpy(), gx=tx.grad.numpy(), gw=tw.grad.numpy(),
                gb=tb.grad.numpy() if bias else None)
    cast = [None if a is None else a.astype(dtype) for a in (x, w, b, gy)]
    return cast, kwargs, want


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(backend, torch, name, dtype, bias):
    (x, w, b, gy), kw, want = _torch_case(torch, name, dtype, bias)
    y = run(backend, F.conv_transpose2d_forward, x, w, b, **kw)
    assert y.dtype == dtype and y.shape == want["y"].shape
    np.testing.assert_allclose(y, want["y"], **_tol(dtype))
    gx, gw, gb = run(backend, F.conv_transpose2d_backward, gy, x, w, **kw, has_bias=bias)
    for got, ref in ((gx, want["gx"]), (gw, want["gw"])):
        assert got.dtype == dtype and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, **_tol(dtype))
    if bias:
        np.testing.assert_allclose(gb, want["gb"], **_tol(dtype))
    else:
        assert gb is None
    gx2, gw2, gb2 = run(backend, F.conv_transpose2d_backward, gy, x, w, **kw,
                        needs_input_grad=False, has_bias=bias)
    assert gx2 is None
    np.testing.assert_allclose(gw2, gw, **_tol(dtype))


def _conv_kwargs(kw):
    return dict(stride=kw.get("stride", 1), padding=kw.get("padding", 0),
                dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", [n for n in CASES if n != "outpad_ge_stride"])
def test_forward_is_conv2d_grad_x(backend, torch, name, dtype):
    """The forward is conv2d's grad_x of grad_y = x (same bits on numpy and cpu: the same
    code), its grad_x is conv2d_forward(grad_y, weight), its grad_weight conv2d's with x and
    grad_y swapped."""
    (x, w, b, gy), kw, _ = _torch_case(torch, name, dtype, bias=False)
    ckw = _conv_kwargs(kw)
    y = run(backend, F.conv_transpose2d_forward, x, w, **kw)
    gx_conv = run(backend, F.conv2d_backward, x, y, w, **ckw, has_bias=False)[0]
    gx, gw, _ = run(backend, F.conv_transpose2d_backward, gy, x, w, **kw, has_bias=False)
    conv_y = run(backend, F.conv2d_forward, gy, w, **ckw)
    conv_gw = run(backend, F.conv2d_backward, x, gy, w, **ckw, needs_input_grad=False,
                  has_bias=False)[1]
    same = np.testing.assert_array_equal if backend in ("numpy", "cpu") else \
        (lambda a, e: np.testing.assert_allclose(a, e, **_tol(dtype)))
    same(y, gx_conv)
    same(gx, conv_y)
    same(gw, conv_gw)


@pytest.mark.parametrize("name", list(CASES))
def test_adjoint_identity_and_numerical_gradient(backend, name):
    """<T x, v> = <x, T* v> (T* = conv2d, the backward's grad_x) and a float64 central
    difference check of every gradient."""
    xs, cog, (kh, kw_), kw = CASES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((xs[1], cog, kh, kw_))
    b = rng.standard_normal(cog * kw.get("groups", 1))
    y = run(backend, F.conv_transpose2d_forward, x, w, **kw)
    v = rng.standard_normal(y.shape)
    gx = run(backend, F.conv_transpose2d_backward, v, x, w, **kw, has_bias=False)[0]
    np.testing.assert_allclose(np.vdot(y, v), np.vdot(x, gx), rtol=1e-11, atol=1e-11)

    def fwd(x_, w_, b_):
        return run(backend, F.conv_transpose2d_forward, x_, w_, b_, **kw)

    def bwd(gy, x_, w_, b_):
        return run(backend, F.conv_transpose2d_backward, gy, x_, w_, **kw)

    check_backward(fwd, bwd, [x, w, b])


# ------------------------------------------------------------------------------------ errors
def _err_inputs(dtype=np.float32):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2, 4, 5, 5)).astype(dtype),
            rng.standard_normal((4, 3, 3, 3)).astype(dtype))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(stride=2, output_padding=2), ValueError,
     r"output_padding must be smaller than either stride or dilation"),
    (dict(stride=1, output_padding=1), ValueError, r"output_padding must be smaller"),
    (dict(stride=(2, 1), dilation=(1, 1), output_padding=(1, 1)), ValueError,
     r"output_padding"),
    (dict(output_padding=-1), ValueError, r"output_padding must be non-negative"),
    (dict(stride=0), ValueError, r"stride must be positive"),
    (dict(dilation=0), ValueError, r"dilation must be positive"),
    (dict(padding=-1), ValueError, r"padding must be non-negative"),
    (dict(padding="same"), TypeError, r"padding must be an int or a pair"),
    (dict(padding=(1, 2, 3)), ValueError, r"padding must be an int or a pair"),
    (dict(groups=3), ValueError, r"groups=3 must divide the input channels C_in=4"),
    (dict(groups=0), ValueError, r"groups must be a positive int"),
    (dict(padding=4), ValueError, r"output size would be -1x-1 \(< 1\)"),
    (dict(stride=1.5), TypeError, r"stride must be an int"),
])
def test_bad_arguments(backend, kwargs, exc, match):
    x, w = _err_inputs()
    for call in (lambda: run(backend, F.conv_transpose2d_forward, x, w, **kwargs),
                 lambda: run(backend, F.conv_transpose2d_backward, np.zeros((2, 3, 7, 7),
                                                                           np.float32),
                             x, w, **kwargs)):
        with pytest.raises(exc, match=match) as e:
            call()
        assert "conv_transpose2d_" in str(e.value)


def test_bad_arrays(backend):
    x, w = _err_inputs()
    fwd, bwd = OPS
    with pytest.raises(ValueError, match=r"weight has 2 input channels \(weight.shape\[0\]\) "
                                         r"but x has C_in=4"):
        run(backend, fwd, x, w[:2])
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C_in, H, W\)"):
        run(backend, fwd, x[0], w)
    with pytest.raises(ValueError, match=r"weight must be 4-D"):
        run(backend, fwd, x, w[0])
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), got \(4,\)"):
        run(backend, fwd, x, w, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=r"conv_transpose2d_forward.*float"):
        run(backend, fwd, x.astype(np.int64), w)
    with pytest.raises(TypeError, match=r"conv_transpose2d_forward.*"):
        run(backend, fwd, x, w.astype(np.float64))
    with pytest.raises(ValueError, match=r"grad_y must have shape \(2, 3, 7, 7\), got "
                                         r"\(2, 3, 8, 7\)"):
        run(backend, bwd, np.zeros((2, 3, 8, 7), np.float32), x, w)
    with pytest.raises(TypeError, match=r"conv_transpose2d_backward"):
        run(backend, bwd, np.zeros((2, 3, 7, 7), np.float64), x, w)


def test_backend_object_runs_the_checks(backend):
    x, w = _err_inputs()
    be = convkit.get_backend(backend)
    with pytest.raises(ValueError, match="output_padding"):
        be.conv_transpose2d_forward(be.asarray(x), be.asarray(w), None, 1, 0, 1)


# ------------------------------------------------------------------------------ empty inputs
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, groups", [((0, 4, 5, 5), (4, 3, 3, 3), 1),     # N = 0
                                            ((2, 0, 5, 5), (0, 3, 3, 3), 1),     # C_in = 0
                                            ((2, 4, 5, 5), (4, 0, 3, 3), 2)])    # C_out = 0
def test_empty(backend, torch, dtype, xs, ws, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[1] * groups).astype(dtype)
    kw = dict(stride=2, padding=1, output_padding=1, groups=groups)
    yshape = (xs[0], ws[1] * groups, 10, 10)
    if xs[1] and ws[1]:
        want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w),
                                                    torch.tensor(b), **kw).numpy()
    else:   # (torch refuses C_in = 0, oneDNN C_out = 0; conv2d's rule: nothing to spread)
        want = np.broadcast_to(b.reshape(1, -1, 1, 1), yshape)
    y = run(backend, F.conv_transpose2d_forward, x, w, b, **kw)
    assert y.shape == want.shape == yshape and y.dtype == dtype
    np.testing.assert_allclose(y, want, **_tol(dtype))
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = run(backend, F.conv_transpose2d_backward, gy, x, w, **kw)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    assert not gx.any() and not gw.any()
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)), **_tol(dtype))


# ------------------------------------------------------------------------------ NaN and inf
# shapes that reach each cpu grad_x algorithm of conv2d's plan (conv_transpose2d's forward):
# dense (1x1 -> 4x4), batch (small maps, fused / flipped), winograd, depthwise3x3, depthwise,
# subpixel (kernel a multiple of the stride; BLAS machines), im2col; and each of conv2d's
# forward algorithms for the backward's grad_x
NONFINITE = {
    "dense": ((2, 8, 1, 1), 5, 4, dict()),
    "batch_s2": ((3, 6, 4, 4), 5, 3, dict(stride=2, padding=1, output_padding=1)),
    "batch_s1": ((3, 6, 5, 5), 5, 3, dict(padding=1)),
    "winograd": ((2, 16, 12, 12), 16, 3, dict(padding=1)),
    "depthwise3x3": ((2, 8, 12, 12), 1, 3, dict(padding=1, groups=8)),
    "depthwise": ((2, 8, 12, 12), 1, 3, dict(stride=2, padding=1, output_padding=1,
                                             groups=8)),
    "subpixel": ((2, 16, 14, 14), 8, 4, dict(stride=2, padding=1)),
    # the backward's grad_x (a stride-2 conv2d forward of grad_y, 16 wide) on rowphases
    "rowphases": ((2, 8, 16, 16), 4, 4, dict(stride=2, padding=1)),
    "im2col": ((2, 16, 14, 14), 8, 3, dict(stride=2, padding=1, output_padding=1)),
}


def _same_nonfinite(got, want, what):
    for test in (np.isnan, np.isposinf, np.isneginf):
        bad = np.argwhere(test(got) != test(want))
        assert not len(bad), f"{what}: {test.__name__} differs from torch at {bad[:5].tolist()}"


@pytest.mark.parametrize("where", ["x", "weight", "grad_y"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(NONFINITE))
def test_nonfinite_element_for_element(backend, torch, name, dtype, where):
    xs, cog, k, kw = NONFINITE[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((xs[1], cog, k, k))
    y_shape = tuple(torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w),
                                                         **kw).shape)
    gy = rng.standard_normal(y_shape)
    a = dict(x=x, weight=w, grad_y=gy)[where]
    flat = a.reshape(-1)
    idx = rng.choice(flat.size, 3, replace=False)
    flat[idx] = [np.nan, np.inf, -np.inf]
    if where == "weight":          # also zeros beside the infinity: 0 * inf in some sums
        flat[(idx[1] + 1) % flat.size] = 0.0
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv_transpose2d(tx, tw, **kw)
    ty.backward(torch.tensor(gy))
    xd, wd, gyd = (v.astype(dtype) for v in (x, w, gy))
    y = run(backend, F.conv_transpose2d_forward, xd, wd, **kw)
    gx, gw, _ = run(backend, F.conv_transpose2d_backward, gyd, xd, wd, **kw, has_bias=False)
    _same_nonfinite(y, ty.detach().numpy(), f"{name} y")
    _same_nonfinite(gx, tx.grad.numpy(), f"{name} grad_x")
    _same_nonfinite(gw, tw.grad.numpy(), f"{name} grad_weight")


# ------------------------------------------------------------------------- cpu: threads, memory
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(NONFINITE) + ["s2_p1_decoder", "groups3_dil",
                                                    "outpad_ge_stride"])
def test_cpu_bits_do_not_depend_on_thread_count(name, dtype):
    if name in NONFINITE:
        xs, cog, k, kw = NONFINITE[name]
        ks = (k, k)
    else:
        xs, cog, ks, kw = CASES[name]
        xs = (4,) + xs[1:]                        # a batch big enough for several tasks
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((xs[1], cog) + tuple(ks)).astype(dtype)
    b = rng.standard_normal(cog * kw.get("groups", 1)).astype(dtype)
    results = []
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        y = run("cpu", F.conv_transpose2d_forward, x, w, b, **kw)
        gy = np.cos(np.arange(y.size)).reshape(y.shape).astype(dtype)
        results.append((y,) + run("cpu", F.conv_transpose2d_backward, gy, x, w, **kw))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(NONFINITE))
def test_cpu_forward_is_the_grad_x_step_of_every_conv_algorithm(name, dtype):
    """conv2d_grad_input runs conv2d_backward's grad_x step alone (the runners that make
    grad_weight anyway on a zero stand-in for x): the same bits, whatever algorithm the plan
    picks for grad_x (the NONFINITE shapes reach each of them)."""
    xs, cog, k, kw = NONFINITE[name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((xs[1], cog, k, k)).astype(dtype)
    y = run("cpu", F.conv_transpose2d_forward, x, w, **kw)
    ckw = _conv_kwargs(kw)
    want = run("cpu", F.conv2d_backward, x, y, w, **ckw, has_bias=False)[0]
    np.testing.assert_array_equal(y, want)


def test_cpu_nonfinite_shapes_reach_every_grad_x_algorithm():
    from convkit.cpu import conv as cpu_conv

    algos = set()
    for xs, cog, k, kw in NONFINITE.values():
        ckw = _conv_kwargs(kw)
        s, p = ckw["stride"], ckw["padding"]
        H = (xs[2] - 1) * s - 2 * p + k + kw.get("output_padding", 0)
        y = np.empty((xs[0], cog * ckw["groups"], H, H))
        w = np.empty((xs[1], cog, k, k))
        algos.add(cpu_conv._plan(y, w, (s, s), (p,) * 4, (1, 1), ckw["groups"])[3].grad_x.algo)
    # (these plans are float64's, whose GEMMs go to BLAS on every machine, so subpixel is among
    # them also where the own AVX-512 GEMM keeps float32's strided grad_x on im2col)
    assert algos == {"dense", "batch", "winograd", "depthwise3x3", "depthwise", "im2col",
                     "subpixel"}


@pytest.fixture
def workspace_limit():
    old = convkit.get_workspace_limit()
    yield convkit.set_workspace_limit
    convkit.set_workspace_limit(old)


def test_workspace_limit_is_a_memory_error(backend, workspace_limit):
    if backend == "numpy":
        pytest.skip("the numpy reference has no workspace (plain numpy temporaries)")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 14, 14))
    w = rng.standard_normal((16, 8, 4, 4))
    workspace_limit(64)
    with pytest.raises(MemoryError, match=r"conv_transpose2d_forward .*workspace limit of 64"):
        run(backend, F.conv_transpose2d_forward, x, w, stride=2, padding=1)
    with pytest.raises(MemoryError, match=r"conv_transpose2d_backward .*workspace limit of 64"):
        run(backend, F.conv_transpose2d_backward, np.ones((2, 8, 28, 28)), x, w, stride=2,
            padding=1)


def test_noncontiguous_inputs(backend, torch):
    (x, w, b, gy), kw, want = _torch_case(torch, "s2_outpad", np.float64)
    xt = np.asfortranarray(x)
    wt = w[:, ::-1][:, ::-1]
    y = run(backend, F.conv_transpose2d_forward, xt, wt, b, **kw)
    np.testing.assert_allclose(y, want["y"], **_tol(np.float64))


# ------------------------------------------------------------------ cpu: the sub-pixel grad_x
# conv_plan "subpixel" (strided grad_x as one stride-1 conv of grad_y over the output phases):
# the rule takes kernels that are a multiple of the stride; with the waste bound raised every
# strided geometry takes it -- phases with no taps (kernel 1, stride 2), dilation, unequal
# strides, padding beyond the kernel, maps smaller than the stride, groups.  Maps above the
# batch paths' 64 positions.  float32 runs csrc/rowgemm.h where the CPU has AVX2 (its 24- and
# 8-column tiles and masked tails: the window widths vary), float64 BLAS.
SUBPIXEL = {
    "k4_s2_p1": ((2, 6, 9, 10), 4, (4, 4), dict(stride=2, padding=1)),
    "k2_s2": ((2, 5, 9, 11), 3, (2, 2), dict(stride=2)),
    "k6x3_s2x3": ((2, 4, 11, 9), 4, (6, 3), dict(stride=(2, 3), padding=(2, 1),
                                                 output_padding=(1, 2))),
    "groups2": ((2, 6, 9, 9), 3, (4, 4), dict(stride=2, padding=1, groups=2)),
    "k1_s2": ((2, 4, 9, 10), 3, (1, 1), dict(stride=2, output_padding=1)),
    "k3_s2_dil2": ((2, 4, 9, 10), 3, (3, 3), dict(stride=2, padding=1, dilation=2,
                                                  output_padding=1)),
    "k5x4_s3x2_pad": ((1, 4, 10, 12), 3, (5, 4), dict(stride=(3, 2), padding=(4, 3),
                                                     output_padding=(2, 1))),
    "tall_thin": ((2, 3, 70, 1), 4, (4, 4), dict(stride=2, padding=1)),
}


@pytest.fixture
def any_waste(monkeypatch):
    """Every strided geometry on the sub-pixel grad_x (on BLAS machines)."""
    from convkit.cpu import conv as cpu_conv, tuning

    monkeypatch.setattr(tuning, "SUBPIXEL_MAX_WASTE", (1000, 1))
    cpu_conv._plans.clear()
    yield cpu_conv
    cpu_conv._plans.clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SUBPIXEL))
def test_cpu_subpixel_grad_x_matches_torch(torch, any_waste, name, dtype):
    xs, cog, (kh, kw_), kw = SUBPIXEL[name]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((xs[1], cog, kh, kw_))
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), **kw).numpy()
    results = []
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        y = run("cpu", F.conv_transpose2d_forward, x.astype(dtype), w.astype(dtype), **kw)
        np.testing.assert_allclose(y, want, **_tol(dtype))
        results.append(y)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])     # the same bits on any team
    ckw = _conv_kwargs(kw)
    gy = np.empty((xs[0], cog * ckw["groups"]) + want.shape[2:], dtype)
    step = any_waste._plan(gy, w.astype(dtype), _pair(ckw["stride"]), _pad4(ckw["padding"]),
                           _pair(ckw["dilation"]), ckw["groups"])[3].grad_x
    assert step.algo == ("im2col" if _own_plan(any_waste, "subpixel", dtype) else "subpixel")
    # conv2d_backward's grad_x runs the same step: the forward is it, bit for bit
    gx = run("cpu", F.conv2d_backward, x.astype(dtype), y, w.astype(dtype), **ckw,
             has_bias=False)[0]
    np.testing.assert_array_equal(y, gx)


def _pair(v):
    return tuple(v) if not np.isscalar(v) else (v, v)


def _pad4(p):
    ph, pw = _pair(p)
    return (ph, ph, pw, pw)


# float32 with Cg a multiple of 4 on rowgemm: each phase reads its windows at its own shift
# (conv_plan.subpixel_shifted) -- the same values as the common windows, bit for bit, on any
# team and rows per task (short last tasks: a row's reads past its end must find zeros).
SHIFTED = {
    "k4_s2_p1": ((3, 6, 21, 17), 8, (4, 4), dict(stride=2, padding=1, output_padding=1)),
    "k6x4_s3x2": ((2, 5, 9, 8), 4, (6, 4), dict(stride=(3, 2), padding=(4, 0))),
    "groups2_s2x3": ((2, 8, 12, 13), 8, (4, 6), dict(stride=(2, 3), padding=(1, 2),
                                                       output_padding=(1, 2), groups=2)),
    "k8_s4_p5": ((2, 8, 9, 9), 4, (8, 8), dict(stride=4, padding=5, output_padding=3)),
    "k1_s2": ((2, 4, 9, 10), 4, (1, 1), dict(stride=2, output_padding=1)),   # a phase no taps
    "k3_s2_dil2": ((2, 4, 9, 10), 4, (3, 3), dict(stride=2, padding=1, dilation=2)),
}


@pytest.mark.parametrize("name", list(SHIFTED))
def test_cpu_subpixel_shifted_layout_same_bits_as_common_windows(torch, any_waste, name):
    from convkit.cpu import _conv_phases

    if _own_plan(any_waste, "subpixel") or not _conv_phases.rowgemm_available():
        pytest.skip("the shifted layout runs on csrc/rowgemm.h (BLAS machines with AVX2, or "
                    "beside the own GEMM on a half-rate AVX-512 CPU)")
    xs, cog, (kh, kw_), kw = SHIFTED[name]
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((xs[1], cog, kh, kw_)).astype(np.float32)
    b = rng.standard_normal(cog * kw.get("groups", 1)).astype(np.float32)
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x, dtype=torch.float64),
                                                torch.tensor(w, dtype=torch.float64),
                                                torch.tensor(b, dtype=torch.float64),
                                                **kw).numpy()

    def steps():
        return [hit[3].grad_x for hit in any_waste._plans.values()
                if hit[3].grad_x is not None and hit[3].grad_x.algo == "subpixel"]

    ys = []
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        any_waste._plans.clear()
        y = run("cpu", F.conv_transpose2d_forward, x, w, b, **kw)
        (step,) = steps()
        srows = step.params["srows"]
        assert srows > 0
        np.testing.assert_allclose(y, want, **_tol(np.float32))
        ys.append(y)
        for r in range(1, srows + 1):                   # fewer rows per task: short tasks
            step.params["srows"] = r
            # (NaN in the scratch: a read the layout does not fill shows)
            any_waste._workspace(4 * step.params["per_thread"], np.float32).fill(np.nan)
            ys.append(run("cpu", F.conv_transpose2d_forward, x, w, b, **kw))
        step.params["srows"] = 0                        # the common windows
        ys.append(run("cpu", F.conv_transpose2d_forward, x, w, b, **kw))
        step.params["srows"] = srows
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])
    # more rows per task than the planned workspace holds: refused, not overrun
    step.params["srows"] = 10 ** 6
    with pytest.raises(ValueError, match="ws holds"):
        run("cpu", F.conv_transpose2d_forward, x, w, b, **kw)


@pytest.mark.parametrize("xs, k, kw", [
    ((2, 6, 9, 10), 4, dict(stride=2, padding=1)),
    ((2, 5, 9, 11), 2, dict(stride=2, output_padding=1)),      # odd rows: one phase longer
    ((2, 8, 7, 21), 4, dict(stride=2, padding=1, output_padding=1)),   # 16-value steps + tail
    ((1, 4, 30, 3), 4, dict(stride=2, padding=1)),             # rows under 8 wide
])
def test_cpu_subpixel_bias_is_added_once_per_value(torch, xs, k, kw):
    """The sub-pixel forward adds the bias as it writes each row (csrc/rowgemm.h's stride-2
    interleave where AVX2 runs): the float64 oracle's values, y with the bias equal bit for bit
    to y without it plus the bias (one float32 add per value), and the same bits on 1, 2, 8 and
    16 threads."""
    from convkit.cpu import conv as cc

    rng = np.random.default_rng(21)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((xs[1], 4, k, k))
    b = rng.standard_normal(4)
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w),
                                                torch.tensor(b), **kw).numpy()
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    if not _own_plan(cc, "subpixel"):
        gy = np.empty((xs[0], 4) + want.shape[2:], np.float32)
        step = cc._plan(gy, w32, (2, 2), _pad4(kw.get("padding", 0)), (1, 1), 1)[3].grad_x
        assert step.algo == "subpixel"
    results = []
    for n in (1, 2, 8, 16):
        convkit.set_num_threads(n)
        y = run("cpu", F.conv_transpose2d_forward, x32, w32, b32, **kw)
        y0 = run("cpu", F.conv_transpose2d_forward, x32, w32, **kw)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(y.view(np.uint32),
                                      (y0 + b32.reshape(1, -1, 1, 1)).view(np.uint32))
        results.append(y.view(np.uint32))
    convkit.set_num_threads(None)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])


def test_cpu_subpixel_a_nonfinite_weight_or_grad_y_takes_im2col(torch):
    """The sub-pixel GEMM multiplies the padding's zeros by every weight: an infinite weight
    would make NaNs torch does not have, so non-finite operands run on im2col."""
    xs, cog, k, kw = NONFINITE["subpixel"]
    rng = np.random.default_rng(4)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((xs[1], cog, k, k))
    w[0, 0, 0, 0] = np.inf                      # a corner tap: it meets the padding
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), **kw).numpy()
    y = run("cpu", F.conv_transpose2d_forward, x.astype(np.float32), w.astype(np.float32), **kw)
    _same_nonfinite(y, want, "subpixel y")


# ------------------------------------------------------------ cpu: the row-GEMM polyphase forward
# conv_plan "rowphases" (a strided conv2d forward -- conv_transpose2d's grad_x -- on csrc/rowgemm.h
# over polyphase planes, BLAS machines with AVX2): kernels a multiple of the stride, filter
# counts of one panel (4: the narrow 4-row tail) and several (12: 8 + 4 rows), row blocks whose
# width leaves every tail length (Wq*rows mod 24), unequal strides, padding beyond a phase,
# odd maps (a phase row shorter than the others), bias.
ROWPHASES = {
    "k4_s2_p1": ((2, 8, 40, 38), 12, (4, 4), (2, 2), (1, 1)),
    "k2_s2": ((3, 5, 34, 35), 4, (2, 2), (2, 2), (0, 0)),
    "k6x3_s2x3": ((2, 3, 41, 60), 8, (6, 3), (2, 3), (2, 1)),
    "k4_s2_p3": ((1, 4, 37, 45), 4, (4, 4), (2, 2), (3, 3)),
    "k4x6_s4x2": ((2, 2, 70, 33), 16, (4, 6), (4, 2), (1, 2)),
}


@pytest.fixture
def cpu_conv():
    from convkit.cpu import conv as cc

    cc._plans.clear()
    yield cc
    cc._plans.clear()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(ROWPHASES))
def test_cpu_rowphases_forward_matches_torch(torch, cpu_conv, name, bias):
    from convkit.cpu import tuning
    xs, F_, ks, st, pd = ROWPHASES[name]
    rng = np.random.default_rng(13)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((F_, xs[1]) + ks) / np.sqrt(xs[1] * ks[0] * ks[1])
    b = rng.standard_normal(F_) if bias else None
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w),
                                      None if b is None else torch.tensor(b), st, pd).numpy()
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    b32 = None if b is None else b.astype(np.float32)
    step = cpu_conv._plan(x32, w32, st, (pd[0], pd[0], pd[1], pd[1]), (1, 1), 1)[3].forward
    # (the own GEMM's phases from tuning.PHASES_MIN_WO output columns: these are narrower)
    want_algo = ("rowphases" if _avx2(cpu_conv, "rowphases") else
                 "phases" if cpu_conv._OWN_SGEMM and want.shape[3] >= tuning.PHASES_MIN_WO
                 else "im2col")
    assert step.algo == want_algo, step
    results = []
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        results.append(y)
    convkit.set_num_threads(None)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])     # the same bits on any team
    # conv_transpose2d's grad_x is this forward of grad_y
    xt = rng.standard_normal((xs[0], F_) + want.shape[2:])
    op = tuple(h - ((o - 1) * s - 2 * p + k)
               for h, o, s, p, k in zip(xs[2:], want.shape[2:], st, pd, ks))
    tx = torch.tensor(xt, requires_grad=True)
    ty = torch.nn.functional.conv_transpose2d(tx, torch.tensor(w), stride=st, padding=pd,
                                              output_padding=op)
    ty.backward(torch.tensor(x))
    gx = run("cpu", F.conv_transpose2d_backward, x32, xt.astype(np.float32), w32, stride=st,
             padding=pd, output_padding=op, has_bias=False)[0]
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kc", [7, 50, 128])
def test_cpu_rowphases_passes_keep_the_bits(torch, cpu_conv, monkeypatch, kc):
    """rowphases sums its taps in passes of tuning.ROWPHASES_KC (each going on from the stored
    sums): torch's float64 values, and the bits of one pass over all 320 taps, on 1, 2, 8 and
    16 threads -- for passes that divide the taps and passes that do not."""
    from convkit.cpu import tuning

    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 20, 36, 34))
    w = rng.standard_normal((8, 20, 4, 4)) / np.sqrt(320)
    b = rng.standard_normal(8)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), 2,
                                      1).numpy()
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    monkeypatch.setattr(tuning, "ROWPHASES_KC", 10 ** 6)
    one = run("cpu", F.conv2d_forward, x32, w32, b32, stride=2, padding=1)
    monkeypatch.setattr(tuning, "ROWPHASES_KC", kc)
    cpu_conv._plans.clear()
    step = cpu_conv._plan(x32, w32, (2, 2), (1, 1, 1, 1), (1, 1), 1)[3].forward
    if step.algo == "rowphases":
        assert step.params["kc"] == kc
    for n in (1, 2, 8, 16):
        convkit.set_num_threads(n)
        y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=2, padding=1)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(y.view(np.uint32), one.view(np.uint32))
    convkit.set_num_threads(None)


def test_cpu_rowphases_nonfinite_stays_in_its_window(torch, cpu_conv):
    """rowphases reads each output's own window (padding zeros included, as torch): a NaN /
    inf in x or the weight reaches exactly torch's outputs, with no fallback."""
    xs, F_, ks, st, pd = ROWPHASES["k4_s2_p1"]
    rng = np.random.default_rng(14)
    for where in ("x", "w"):
        x = rng.standard_normal(xs)
        w = rng.standard_normal((F_, xs[1]) + ks)
        a = x if where == "x" else w
        a.reshape(-1)[[5, 700, 1201]] = [np.nan, np.inf, -np.inf]
        want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), None, st,
                                          pd).numpy()
        y = run("cpu", F.conv2d_forward, x.astype(np.float32), w.astype(np.float32), stride=st,
                padding=pd)
        _same_nonfinite(y, want, f"rowphases {where}")


# ------------------------------------------------------- cpu: the row-GEMM weight gradient
# conv_plan "weight_rowgemm" (conv2d's grad_weight -- conv_transpose2d's, with x and grad_y
# swapped -- on csrc/rowgemm.h with x channels-last, BLAS machines with AVX2): kernel rows of
# KW*C = 24, 28 (a 4-column tail), 40 (16), 66 (18); filter counts of one panel, several, and
# over tuning.WGRAD_RG_FILTERS (two tasks per kernel row); unequal strides, padding beyond a
# phase; passes of the batch's positions that do not divide it.
WEIGHT_RG = {
    "k4_s2_c6": ((2, 6, 30, 32), 12, (4, 4), (2, 2), (1, 1)),
    "k2_s2_c14": ((3, 14, 18, 20), 4, (2, 2), (2, 2), (0, 0)),
    "k6x3_s2x3_c22": ((2, 22, 21, 27), 8, (6, 3), (2, 3), (2, 1)),
    "k4_s2_p3_f68": ((1, 10, 33, 35), 68, (4, 4), (2, 2), (3, 3)),
    "k4x4_s4x2_c6": ((2, 6, 44, 37), 4, (4, 4), (4, 2), (1, 2)),
}


@pytest.mark.parametrize("name", list(WEIGHT_RG))
def test_cpu_weight_rowgemm_matches_torch(torch, cpu_conv, monkeypatch, name):
    from convkit.cpu import tuning

    monkeypatch.setattr(tuning, "WGRAD_RG_PASS", 50)      # passes that do not divide K
    xs, F_, ks, st, pd = WEIGHT_RG[name]
    rng = np.random.default_rng(15)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((F_, xs[1]) + ks) / np.sqrt(xs[1] * ks[0] * ks[1])
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.zeros(F_, dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, st, pd)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    x32, w32, gy32 = (a.astype(np.float32) for a in (x, w, gy))
    plan = cpu_conv._plan(x32, w32, st, (pd[0], pd[0], pd[1], pd[1]), (1, 1), 1)[3]
    rg = _avx2(cpu_conv, "weight_rowgemm")
    assert (plan.grad_weight.algo == "weight_rowgemm") == rg, plan
    results = []
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        got = run("cpu", F.conv2d_backward, gy32, x32, w32, stride=st, padding=pd,
                  has_bias=True)
        for g, want in zip(got, (tx.grad, tw.grad, tb.grad)):
            np.testing.assert_allclose(g, want.numpy(), rtol=2e-4, atol=2e-4)
        results.append(got)
    convkit.set_num_threads(None)
    for got in results[1:]:
        for g, want in zip(got, results[0]):
            np.testing.assert_array_equal(g, want)       # the same bits on any team
    # conv_transpose2d's grad_weight is this one with x and grad_y swapped
    op = tuple(h - ((o - 1) * s - 2 * p + k)
               for h, o, s, p, k in zip(xs[2:], gy.shape[2:], st, pd, ks))
    gwt = run("cpu", F.conv_transpose2d_backward, x32, gy32, w32, stride=st, padding=pd,
              output_padding=op, has_bias=False)[1]
    np.testing.assert_array_equal(gwt, results[0][1])


@pytest.mark.parametrize("case", [
    # x shape, F, (KH, KW), (sh, sw), (pt, pl), filters per task, kernel rows per task
    ((2, 6, 30, 32), 24, (4, 4), (2, 2), (1, 1), 8, 1),     # 12 tasks: 3 blocks x 2 x 2
    ((2, 5, 25, 23), 16, (6, 3), (3, 3), (2, 1), 4, 1),     # 24 tasks, residues mod 3
    ((1, 8, 20, 21), 12, (4, 4), (2, 2), (3, 0), 12, 2),    # 2 tasks, padding past a phase
])
def test_cpu_weight_rowgemm_kernel_runs_of_tasks(cpu_conv, case):
    """conv2d_grad_weight_rowgemm's one region: each thread a fixed run of consecutive tasks,
    on its own xcl rows and panels (the rows its tasks read, built by itself), its sums
    written by itself -- teams whose runs cross filter blocks, residues and kernel-row chunks,
    and more threads than tasks: float64 numpy's values, the same bits on every team."""
    from convkit.cpu import _conv_phases as ph
    from convkit.cpu import conv as cc

    if not ph.rowgemm_available():
        pytest.skip("csrc/rowgemm.h needs AVX2 + FMA")
    xs, F_, (KH, KW), (sh, sw), (pt, pl), prows, khs = case
    N, C, H, W = xs
    rng = np.random.default_rng(17)
    Ho, Wo = (H + 2 * pt - KH) // sh + 1, (W + 2 * pl - KW) // sw + 1
    x = rng.standard_normal(xs).astype(np.float32)
    gy = rng.standard_normal((N, F_, Ho, Wo)).astype(np.float32)
    Hp, Wp = (Ho - 1) * sh + KH, (Wo - 1) * sw + KW
    xp = np.zeros((N, C, Hp + H, Wp + W))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    want = np.zeros((F_, C, KH, KW))
    for kh in range(KH):
        for kw in range(KW):
            win = xp[:, :, kh:kh + (Ho - 1) * sh + 1:sh, kw:kw + (Wo - 1) * sw + 1:sw]
            want[:, :, kh, kw] = np.einsum("nfij,ncij->fc", gy.astype(np.float64), win)
    boff = cc._rowgemm_w_offsets(1, Ho, Wo, sh, sw, Hp, Wp, C)
    first = None
    for nt in (1, 2, 3, 5, 7, 16, 40):
        team = ph.weight_rowgemm_team(F_, KH, sh, prows, khs, nt)
        gw = np.full((F_, C, KH, KW), np.nan, np.float32)
        xcl = np.full(team * Hp * Wp * C, np.nan, np.float32)
        gyp = np.full(team * F_ * Ho * Wo, np.nan, np.float32)
        out = np.full(F_ * KH * KW * C, np.nan, np.float32)
        ph.conv2d_grad_weight_rowgemm(gy, x, gw, xcl, gyp, out, boff, sh, sw, pt, pl, prows,
                                      khs, 7, nt)
        np.testing.assert_allclose(gw, want, rtol=1e-4, atol=1e-4, err_msg=f"{nt} threads")
        if first is None:
            first = gw
        np.testing.assert_array_equal(gw, first, err_msg=f"{nt} threads")
    with pytest.raises(ValueError):         # one thread's xcl short of a team of two's
        ph.conv2d_grad_weight_rowgemm(gy, x, gw, xcl[:Hp * Wp * C], gyp, out, boff, sh, sw,
                                      pt, pl, prows, khs, 7, 2)


def test_cpu_weight_rowgemm_nonfinite_stays_in_its_sums(torch, cpu_conv):
    """weight_rowgemm sums each weight's own products (padding zeros included, as torch): a
    NaN / inf in x or grad_y reaches exactly torch's weights, with no fallback."""
    xs, F_, ks, st, pd = WEIGHT_RG["k4_s2_c6"]
    rng = np.random.default_rng(16)
    for where in ("x", "grad_y"):
        x = rng.standard_normal(xs)
        w = rng.standard_normal((F_, xs[1]) + ks)
        gy = rng.standard_normal((xs[0], F_, 15, 16))
        a = x if where == "x" else gy
        a.reshape(-1)[[3, 400, 901]] = [np.nan, np.inf, -np.inf]
        tw = torch.tensor(w, requires_grad=True)
        torch.nn.functional.conv2d(torch.tensor(x), tw, None, st, pd).backward(torch.tensor(gy))
        gw = run("cpu", F.conv2d_backward, gy.astype(np.float32), x.astype(np.float32),
                 w.astype(np.float32), stride=st, padding=pd, has_bias=False)[1]
        _same_nonfinite(gw, tw.grad.numpy(), f"weight_rowgemm {where}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["subpixel", "im2col", "winograd"])
def test_cpu_forward_adds_the_bias_as_after(name, dtype):
    """The sub-pixel kernel adds the bias to each row as it writes it (the other algorithms
    after): the bits of grad_x, then + bias."""
    from convkit.cpu import conv as cc

    xs, cog, k, kw = NONFINITE[name]
    rng = np.random.default_rng(8)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((xs[1], cog, k, k)).astype(dtype)
    b = rng.standard_normal(cog).astype(dtype)
    b[0] = 0.0                      # (+0.0 turns a -0.0 into +0.0, in both)
    y = run("cpu", F.conv_transpose2d_forward, x, w, b, **kw)
    want = run("cpu", F.conv_transpose2d_forward, x, w, **kw)
    want += b.reshape(1, -1, 1, 1)
    assert y.tobytes() == want.tobytes()
    ckw = _conv_kwargs(kw)
    s, p = ckw["stride"], ckw["padding"]
    step = cc._plan(np.empty(y.shape, dtype), w, (s, s), (p,) * 4, (1, 1), 1)[3].grad_x
    assert step.algo == ("im2col" if name == "subpixel" and _own_plan(cc, "subpixel", dtype)
                         else name)
