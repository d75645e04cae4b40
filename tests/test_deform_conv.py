"""deform_conv2d on every backend against a plain scalar-loop oracle written here from
torchvision's documented rules (torchvision has no CPU build here), plus the special cases
with exact answers (zero offsets = conv2d, integer offsets = a shifted conv2d: torch float64
oracles), hand-worked boundary samples, float64 numerical gradients, adjoint identities,
errors, empty inputs and the cpu backend's thread-count bit identity."""
import math

import numpy as np
import pytest

import convkit
from convkit import functional as F
from helpers import run

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


# --------------------------------------------------------------------------------- oracle
def bilinear(plane, y, x):
    """torchvision's deformable-conv sample: 0 for y <= -1, y >= H, x <= -1 or x >= W; else
    the bilinear mix of the four neighbours, a neighbour outside the image being 0."""
    H, W = plane.shape
    if math.isnan(y) or math.isnan(x):
        return math.nan
    if y <= -1 or y >= H or x <= -1 or x >= W:
        return 0.0
    hl, wl = math.floor(y), math.floor(x)
    lh, lw = y - hl, x - wl
    hh, hw = 1 - lh, 1 - lw

    def at(h, w):
        return float(plane[h, w]) if 0 <= h < H and 0 <= w < W else 0.0
    return (hh * hw * at(hl, wl) + hh * lw * at(hl, wl + 1) + lh * hw * at(hl + 1, wl)
            + lh * lw * at(hl + 1, wl + 1))


def deform_oracle(x, offset, weight, bias, stride, padding, dilation, mask):
    """One output at a time: y[n, f, ho, wo] = bias[f] + sum over the group's channels c and
    taps (i, j) of weight * mask * sample, with tap (i, j) of offset group g reading
    offset channels 2*(g*KH*KW + i*KW + j) (dy) and +1 (dx), mask channel g*KH*KW + i*KW + j."""
    N, C, H, W = x.shape
    Fo, Cg, KH, KW = weight.shape
    G = C // Cg
    OG = offset.shape[1] // (2 * KH * KW)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho, Wo = offset.shape[2:]
    y = np.zeros((N, Fo, Ho, Wo))
    for n in range(N):
        for f in range(Fo):
            g = f // (Fo // G)
            for ho in range(Ho):
                for wo in range(Wo):
                    acc = 0.0 if bias is None else float(bias[f])
                    for cc in range(Cg):
                        c = g * Cg + cc
                        og = c // (C // OG)
                        for i in range(KH):
                            for j in range(KW):
                                k = og * KH * KW + i * KW + j
                                py = ho * sh - ph + i * dh + float(offset[n, 2 * k, ho, wo])
                                px = wo * sw - pw + j * dw + float(offset[n, 2 * k + 1, ho, wo])
                                m = 1.0 if mask is None else float(mask[n, k, ho, wo])
                                acc += float(weight[f, cc, i, j]) * (m * bilinear(x[n, c], py, px))
                    y[n, f, ho, wo] = acc
    return y


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# (N, C, H, W, F, KH, KW, offset_groups, stride, padding, dilation, with mask, offset scale)
CASES = {
    "g2_og2_mask": (2, 4, 5, 6, 6, 3, 3, 2, 1, 1, 1, True, 1.0),
    "og4_strided_dilated": (1, 4, 6, 5, 4, 3, 2, 4, (2, 1), (0, 1), (1, 2), False, 1.0),
    "far_offsets": (2, 3, 5, 5, 2, 2, 2, 1, 2, 2, 2, True, 3.0),
    "g3_og3": (1, 6, 4, 5, 3, 3, 3, 3, 1, (1, 2), 1, True, 0.7),
}


def make_case(name, dtype=np.float64, seed=0, groups=None, avoid_kinks=False):
    N, C, H, W, Fo, KH, KW, OG, s, p, d, with_mask, scale = CASES[name]
    s, p, d = _pair(s), _pair(p), _pair(d)
    G = groups if groups is not None else {"g2_og2_mask": 2, "g3_og3": 3}.get(name, 1)
    rng = np.random.default_rng(seed)
    Ho = (H + 2 * p[0] - d[0] * (KH - 1) - 1) // s[0] + 1
    Wo = (W + 2 * p[1] - d[1] * (KW - 1) - 1) // s[1] + 1
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Fo, C // G, KH, KW))
    b = rng.standard_normal(Fo)
    off = rng.standard_normal((N, 2 * OG * KH * KW, Ho, Wo)) * scale
    if avoid_kinks:   # fractional parts in [0.2, 0.8]: no point near a pixel row/column
        off = np.floor(off) + rng.uniform(0.2, 0.8, off.shape)
    mask = rng.uniform(0.1, 1.0, (N, OG * KH * KW, Ho, Wo)) if with_mask else None
    cast = (lambda a: None if a is None else a.astype(dtype))
    return dict(x=cast(x), offset=cast(off), weight=cast(w), bias=cast(b), mask=cast(mask),
                stride=s, padding=p, dilation=d)


def _fwd(backend, c, **over):
    c = dict(c, **over)
    return run(backend, F.deform_conv2d_forward, c["x"], c["offset"], c["weight"], c["bias"],
               c["stride"], c["padding"], c["dilation"], mask=c["mask"])


def _bwd(backend, gy, c, has_bias=True):
    return run(backend, F.deform_conv2d_backward, gy, c["x"], c["offset"], c["weight"],
               c["stride"], c["padding"], c["dilation"], mask=c["mask"], has_bias=has_bias)


# ------------------------------------------------------------------------- forward oracles
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_loop_oracle(backend, name, dtype):
    c = make_case(name, dtype)
    want = deform_oracle(*(c[k].astype(np.float64) if c[k] is not None else None
                           for k in ("x", "offset", "weight", "bias")),
                         c["stride"], c["padding"], c["dilation"],
                         None if c["mask"] is None else c["mask"].astype(np.float64))
    got = _fwd(backend, c)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=f"{backend} {name}")


def test_boundary_samples_by_hand(backend):
    """A 1x1 kernel, one sample per output: each position worked out by hand from the rule
    (0 at y <= -1, y >= H, x <= -1, x >= W; out-of-image corners are 0; a NaN point is NaN)."""
    x = np.arange(1.0, 13.0).reshape(1, 1, 3, 4) * np.array([1, 10, 100])[None, None, :, None]
    dy = np.array([[-1, -0.5, 0, 0], [1.5, 1.75, 0.5, -2.5], [0, 0, np.nan, 0.5]])
    dx = np.array([[0, 0, 2, -0.25], [0, 0, 1.5, 0], [-0.5, -2, 0, 0.5]])
    off = np.stack([dy, dx])[None]
    X = x[0, 0]
    want = np.array([[0, 0.5 * X[0, 1], 0, 0.25 * X[0, 2] + 0.75 * X[0, 3]],
                     [0.5 * X[2, 0], 0.25 * X[2, 1], 0.25 * (X[1, 3] + X[2, 3]), 0],
                     [0.5 * X[2, 0], 0, np.nan, 0.25 * X[2, 3]]])
    for dtype in DTYPES:
        got = run(backend, F.deform_conv2d_forward, x.astype(dtype), off.astype(dtype),
                  np.ones((1, 1, 1, 1), dtype))
        np.testing.assert_allclose(got[0, 0], want, rtol=1e-6, err_msg=f"{backend} {dtype}")
    # the same samples through the oracle: it states the rule the table was worked from
    o = deform_oracle(x, off, np.ones((1, 1, 1, 1)), None, (1, 1), (0, 0), (1, 1), None)
    np.testing.assert_allclose(o[0, 0], want, rtol=1e-15)


def test_nan_in_x_reaches_the_outputs_that_read_it(backend):
    """A corner read with weight 0 still multiplies (0 * NaN = NaN, as torchvision); a corner
    outside the image is never read."""
    c = make_case("g2_og2_mask")
    c["x"] = c["x"].copy()
    c["x"][1, 2, 3, 4] = np.nan
    c["x"][0, 0, 0, 0] = np.inf
    want = deform_oracle(c["x"], c["offset"], c["weight"], c["bias"], c["stride"], c["padding"],
                         c["dilation"], c["mask"])
    got = _fwd(backend, c)
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, **TOL[np.float64])


@pytest.mark.parametrize("cfg", [dict(G=1, s=1, p=1, d=1), dict(G=2, s=(2, 1), p=(1, 0), d=1),
                                 dict(G=4, s=1, p=2, d=(2, 1)), dict(G=2, s=3, p=0, d=2)])
def test_zero_offsets_without_mask_are_conv2d(backend, torch, cfg):
    rng = np.random.default_rng(1)
    N, C, H, W, Fo, K = 2, 4, 9, 8, 8, 3
    G = cfg["G"]
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Fo, C // G, K, K))
    b = rng.standard_normal(Fo)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, cfg["s"], cfg["p"], cfg["d"], G)
    gy = rng.standard_normal(ty.shape)
    ty.backward(torch.tensor(gy))
    off = np.zeros((N, 2 * 2 * K * K) + tuple(ty.shape[2:]))     # two offset groups
    y = run(backend, F.deform_conv2d_forward, x, off, w, b, cfg["s"], cfg["p"], cfg["d"])
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    gx, _, gw, gb, gm = run(backend, F.deform_conv2d_backward, gy, x, off, w, cfg["s"],
                            cfg["p"], cfg["d"])
    assert gm is None
    for got, t in ((gx, tx), (gw, tw), (gb, tb)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_integer_offsets_are_a_shifted_conv(backend, torch):
    """Offset group g shifted by the integers (a_g, b_g) everywhere: the conv2d of x moved by
    (a_g, b_g) with zeros coming in (torch float64)."""
    rng = np.random.default_rng(2)
    N, C, H, W, Fo, K, OG = 2, 6, 7, 8, 4, 3, 3
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Fo, C, K, K))
    shifts = [(1, -2), (0, 3), (-1, 0)]
    M = 4
    xpad = np.pad(x, ((0, 0), (0, 0), (M, M), (M, M)))
    # x moved by (a, b) on a canvas one pixel wider than x on each side (the padding the
    # deformable conv reads through its offsets); unpadded conv2d on it
    xs = np.concatenate([xpad[:, g * 2:(g + 1) * 2, M + a - 1:M + a + H + 1,
                              M + b - 1:M + b + W + 1] for g, (a, b) in enumerate(shifts)], axis=1)
    want = torch.nn.functional.conv2d(torch.tensor(xs), torch.tensor(w)).numpy()
    off = np.zeros((N, OG, K * K, 2, H, W))
    for g, (a, b) in enumerate(shifts):
        off[:, g, :, 0], off[:, g, :, 1] = a, b
    for dtype in DTYPES:
        y = run(backend, F.deform_conv2d_forward, x.astype(dtype),
                off.reshape(N, -1, H, W).astype(dtype), w.astype(dtype), None, 1, 1)
        np.testing.assert_allclose(y, want, **TOL[dtype])


def test_mask_of_ones_is_no_mask_and_mask_is_linear(backend):
    c = make_case("g2_og2_mask")
    c["bias"] = None
    ones = np.ones_like(c["mask"])
    np.testing.assert_allclose(_fwd(backend, c, mask=ones), _fwd(backend, c, mask=None),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_fwd(backend, c, mask=2.5 * c["mask"]),
                               2.5 * _fwd(backend, c), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ backward checks
def _directional(backend, c, which, seed=0, eps=1e-6):
    """<gy, d forward / d arg . v> by central differences vs <grad_arg, v> (float64)."""
    rng = np.random.default_rng(seed)
    names = ["x", "offset", "weight", "bias", "mask"]
    y = _fwd(backend, c)
    gy = rng.standard_normal(y.shape)
    grads = dict(zip(names, _bwd(backend, gy, c)))
    v = rng.standard_normal(c[which].shape)
    f = lambda t: np.vdot(gy, _fwd(backend, c, **{which: c[which] + t * v}))   # noqa: E731
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = np.vdot(grads[which], v)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7,
                               err_msg=f"{backend} grad_{which}")


@pytest.mark.parametrize("name, which", [
    (name, which) for name in ("g2_og2_mask", "og4_strided_dilated", "far_offsets")
    for which in ("x", "offset", "weight", "bias", "mask") if which != "mask" or CASES[name][11]])
def test_numerical_gradients(backend, name, which):
    _directional(backend, make_case(name, avoid_kinks=True, seed=3), which)


def test_elementwise_offset_and_mask_gradients(backend):
    """Centred differences entry by entry (a tiny case), to pin down a wrong entry."""
    c = make_case("g3_og3", avoid_kinks=True, seed=4)
    rng = np.random.default_rng(5)
    gy = rng.standard_normal(_fwd(backend, c).shape)
    gx, goff, gw, gb, gm = _bwd(backend, gy, c)
    for name, g in (("offset", goff), ("mask", gm)):
        num = np.zeros_like(g)
        for idx in np.ndindex(*g.shape):
            a = c[name].copy()
            a[idx] += 1e-6
            up = np.vdot(gy, _fwd(backend, c, **{name: a}))
            a[idx] -= 2e-6
            num[idx] = (up - np.vdot(gy, _fwd(backend, c, **{name: a}))) / 2e-6
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-6, err_msg=f"{backend} {name}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_adjoint_identities(backend, name):
    """y is linear in x, in weight and in mask: <gy, y(v)> = <grad(gy), v> exactly (float64),
    with offsets anywhere (kinks included: linearity does not care)."""
    c = make_case(name, seed=6)
    c["bias"] = None
    rng = np.random.default_rng(7)
    gy = rng.standard_normal(_fwd(backend, c).shape)
    gx, _, gw, gb, gm = _bwd(backend, gy, c, has_bias=False)
    assert gb is None
    pairs = [("x", gx), ("weight", gw)] + ([("mask", gm)] if c["mask"] is not None else [])
    for which, g in pairs:
        v = rng.standard_normal(c[which].shape)
        lhs = np.vdot(gy, _fwd(backend, c, **{which: v}))
        np.testing.assert_allclose(lhs, np.vdot(g, v), rtol=1e-10, atol=1e-10,
                                   err_msg=f"{backend} {name} {which}")


def test_backward_dtypes_and_bias_gradient(backend):
    for dtype in DTYPES:
        c = make_case("g2_og2_mask", dtype)
        gy = np.random.default_rng(8).standard_normal(_fwd(backend, c).shape).astype(dtype)
        out = _bwd(backend, gy, c)
        for g, k in zip(out, ("x", "offset", "weight", "bias", "mask")):
            assert g.dtype == dtype and g.shape == c[k].shape, k
        np.testing.assert_allclose(out[3], gy.astype(np.float64).sum(axis=(0, 2, 3)),
                                   **TOL[dtype])
        want = _bwd("numpy", gy.astype(np.float64), {k: (v.astype(np.float64)
                    if isinstance(v, np.ndarray) else v) for k, v in c.items()})
        for g, w in zip(out, want):
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(g, w, rtol=TOL[dtype]["rtol"],
                                       atol=TOL[dtype]["atol"] * scale)


def test_nan_offset_gives_nan_outputs_and_gradients(backend):
    c = make_case("og4_strided_dilated", seed=9)
    c["offset"] = c["offset"].copy()
    c["offset"][0, 2 * (1 * 6 + 2), 1, 1] = np.nan      # offset group 1, tap (1, 0), dy
    y = _fwd(backend, c)
    # group 1 holds channel 1 only, read by every filter (groups = 1) at output (0, :, 1, 1)
    assert np.isnan(y[0, :, 1, 1]).all() and np.isnan(y).sum() == y.shape[1]
    gy = np.ones_like(y)
    gx, goff, gw, gb, _ = _bwd(backend, gy, c)
    assert np.isfinite(gx).all()
    assert np.isnan(goff[0, 2 * 8:2 * 8 + 2, 1, 1]).all() and np.isnan(goff).sum() == 2
    assert np.isnan(gw[:, 1, 1, 0]).all()


# ----------------------------------------------------------------------------- boundary
def _args(N=1, C=4, H=5, W=5, Fo=2, K=3, OG=1, dtype=np.float64):
    x = np.zeros((N, C, H, W), dtype)
    off = np.zeros((N, 2 * OG * K * K, H - K + 1, W - K + 1), dtype)
    w = np.zeros((Fo, C, K, K), dtype)
    return x, off, w


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda a: a.update(offset=a["offset"][:, :17]), ValueError,
     r"offset must have 2\*offset_groups\*KH\*KW channels.*2\*3\*3=18"),
    (lambda a: a.update(offset=np.zeros((1, 54, 3, 3))), ValueError,
     r"offset_groups=3 .* must divide the input channels C=4"),
    (lambda a: a.update(offset=a["offset"][:, :, :2]), ValueError,
     r"offset must have shape \(1, 18, 3, 3\)"),
    (lambda a: a.update(offset=np.zeros((2, 18, 3, 3))), ValueError, r"offset must have shape"),
    (lambda a: a.update(mask=np.zeros((1, 18, 3, 3))), ValueError,
     r"mask must have shape \(1, 9, 3, 3\)"),
    (lambda a: a.update(mask=np.zeros((9, 3, 3))), ValueError, r"mask must be 4-D"),
    (lambda a: a.update(offset=np.zeros((18, 3, 3))), ValueError, r"offset must be 4-D"),
    (lambda a: a.update(weight=np.zeros((2, 3, 3, 3))), ValueError,
     r"3 input channels per group.*C=4"),
    (lambda a: a.update(weight=np.zeros((3, 2, 3, 3))), ValueError,
     r"groups=2 .* must divide the output channels F=3"),
    (lambda a: a.update(stride=0), ValueError, r"stride must be positive"),
    (lambda a: a.update(padding=-1), ValueError, r"padding must be non-negative"),
    (lambda a: a.update(dilation=(1, 0)), ValueError, r"dilation must be positive"),
    (lambda a: a.update(x=np.zeros((1, 4, 2, 2))), ValueError, r"output size would be 0x0"),
    (lambda a: a.update(offset=a["offset"].astype(np.float32)), TypeError,
     r"one dtype.*offset is float32"),
    (lambda a: a.update(mask=np.zeros((1, 9, 3, 3), np.float32)), TypeError,
     r"mask is float32"),
    (lambda a: a.update(x=a["x"].astype(np.int64)), TypeError, r"x must be float32 or float64"),
    (lambda a: a.update(bias=np.zeros(3)), ValueError, r"bias must have shape \(2,\)"),
])
def test_bad_arguments_are_named(backend, mutate, exc, match):
    x, off, w = _args()
    a = dict(x=x, offset=off, weight=w, bias=None, stride=1, padding=0, dilation=1, mask=None)
    mutate(a)
    with pytest.raises(exc, match=match):
        run(backend, F.deform_conv2d_forward, a["x"], a["offset"], a["weight"], a["bias"],
            a["stride"], a["padding"], a["dilation"], mask=a["mask"])
    if a["bias"] is None:     # the backward checks the same arguments
        gy = np.zeros((1, 2, 3, 3))
        with pytest.raises(exc, match=match):
            run(backend, F.deform_conv2d_backward, gy, a["x"], a["offset"], a["weight"],
                a["stride"], a["padding"], a["dilation"], mask=a["mask"])


def test_backward_grad_y_shape_is_checked(backend):
    x, off, w = _args()
    with pytest.raises(ValueError, match=r"grad_y must have shape \(1, 2, 3, 3\)"):
        run(backend, F.deform_conv2d_backward, np.zeros((1, 2, 3, 4)), x, off, w)


def test_workspace_limit_is_a_memory_error(backend):
    x, off, w = _args()
    need = 4 * 9 * 3 * 3 * 8
    old = convkit.get_workspace_limit()
    try:
        convkit.set_workspace_limit(need - 1)
        with pytest.raises(MemoryError, match=f"need {need} bytes"):
            run(backend, F.deform_conv2d_forward, x, off, w)
        with pytest.raises(MemoryError, match="workspace limit"):
            run(backend, F.deform_conv2d_backward, np.zeros((1, 2, 3, 3)), x, off, w)
        # a backend may need more than the columns (cpu: its sample tables), never 8 times
        convkit.set_workspace_limit(8 * need)
        run(backend, F.deform_conv2d_forward, x, off, w)
    finally:
        convkit.set_workspace_limit(old)


def test_empty_inputs(backend):
    x, off, w = _args(N=0)
    b = np.arange(2.0)
    y = run(backend, F.deform_conv2d_forward, x, off, w, b)
    assert y.shape == (0, 2, 3, 3)
    m = np.zeros((0, 9, 3, 3))
    gx, goff, gw, gb, gm = run(backend, F.deform_conv2d_backward, np.zeros((0, 2, 3, 3)), x, off,
                               w, mask=m)
    assert gx.shape == x.shape and goff.shape == off.shape and gm.shape == m.shape
    np.testing.assert_array_equal(gw, np.zeros(w.shape))
    np.testing.assert_array_equal(gb, np.zeros(2))
    # no filters: an empty output; gradients of the right shapes, all zero
    x, off, w = _args(Fo=0)
    y = run(backend, F.deform_conv2d_forward, x, off, w)
    assert y.shape == (1, 0, 3, 3)
    gx, goff, gw, gb, gm = run(backend, F.deform_conv2d_backward, np.zeros((1, 0, 3, 3)), x, off,
                               w, has_bias=False)
    assert gb is None and gm is None and not gx.any() and not goff.any()


def test_non_contiguous_inputs(backend):
    c = make_case("g2_og2_mask")
    want = _fwd("numpy", c)
    nc = {k: (np.asfortranarray(v) if isinstance(v, np.ndarray) else v) for k, v in c.items()}
    np.testing.assert_allclose(_fwd(backend, nc), want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------- cpu only
def _cpu_bits(c, gy):
    y = _fwd("cpu", c)
    return [y] + list(_bwd("cpu", gy, c))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_same_bits_for_any_thread_count(dtype):
    rng = np.random.default_rng(10)
    N, C, H, W, Fo, OG = 3, 8, 20, 17, 10, 2      # two position blocks per image
    c = dict(x=rng.standard_normal((N, C, H, W)).astype(dtype),
             offset=(rng.standard_normal((N, 2 * OG * 9, H, W)) * 2).astype(dtype),
             weight=rng.standard_normal((Fo, C // 2, 3, 3)).astype(dtype),
             bias=rng.standard_normal(Fo).astype(dtype),
             mask=rng.random((N, OG * 9, H, W)).astype(dtype),
             stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    gy = rng.standard_normal((N, Fo, H, W)).astype(dtype)
    outs = {}
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        outs[n] = _cpu_bits(c, gy)
    for n in (2, 3):
        for a, b in zip(outs[1], outs[n]):
            assert a.tobytes() == b.tobytes(), f"{n} threads differ from 1"


# (N, C, H, W, F, weight groups, offset groups, with mask): channel runs longer than a vector
# (several vectors and a tail), and offset groups that weight groups cut in two
WIDE = {"c40_og1": (2, 40, 9, 7, 6, 1, 1, False), "c24_g3_og2": (2, 24, 8, 9, 6, 3, 2, True)}


def _wide_case(name, dtype):
    N, C, H, W, Fo, G, OG, with_mask = WIDE[name]
    rng = np.random.default_rng(13)
    return dict(x=rng.standard_normal((N, C, H, W)).astype(dtype),
                offset=(rng.standard_normal((N, 2 * OG * 9, H, W)) * 2).astype(dtype),
                weight=rng.standard_normal((Fo, C // G, 3, 3)).astype(dtype),
                bias=rng.standard_normal(Fo).astype(dtype),
                mask=rng.random((N, OG * 9, H, W)).astype(dtype) if with_mask else None,
                stride=(1, 1), padding=(1, 1), dilation=(1, 1))


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(WIDE))
def test_cpu_wide_channels_match_the_reference_on_both_kernel_builds(name, dtype, simd):
    """The AVX2 and the plain sampling kernels (channels innermost, summed in vector lanes)
    against the float64 reference, forward and backward; each build gives the same bits for
    1, 2 and 3 threads."""
    c = _wide_case(name, dtype)
    gy = np.random.default_rng(14).standard_normal(
        (c["x"].shape[0], c["weight"].shape[0]) + c["x"].shape[2:]).astype(dtype)
    _cpu_matches_reference_on_1_2_3_threads(c, gy, dtype, simd)


def _cpu_matches_reference_on_1_2_3_threads(c, gy, dtype, simd, has_bias=True):
    """cpu forward and backward (AVX2 kernels on or off) against the float64 reference, and
    the same bits for 1, 2 and 3 threads."""
    from convkit.cpu import _deform_conv

    c64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in c.items()}
    want = [_fwd("numpy", c64)] + list(_bwd("numpy", gy.astype(np.float64), c64, has_bias))
    try:
        _deform_conv.set_simd(simd)
        outs = {}
        for n in (1, 2, 3):
            convkit.set_num_threads(n)
            outs[n] = [_fwd("cpu", c)] + list(_bwd("cpu", gy, c, has_bias))
    finally:
        _deform_conv.set_simd(True)
        convkit.set_num_threads(None)
    for g, w, k in zip(outs[1], want, ("y", "x", "offset", "weight", "bias", "mask")):
        if w is None:
            assert g is None
            continue
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["atol"] * scale, err_msg=k)
    for n in (2, 3):
        for a, b in zip(outs[1], outs[n]):
            assert (a is None and b is None) or a.tobytes() == b.tobytes(), n


# (N, C, H, W, F, weight groups, with bias, with mask): float32 GEMM edges -- tap counts
# Cg*KH*KW that are not a multiple of 8 (masked last step), filters per group 8 (whole
# quads), 6 (the last quad overlaps) and 3 (one output at a time), position counts that are
# not a multiple of 3 or 4 (the last triple overlaps; panel rows + a BLAS remainder), tap
# counts that leave a short last 24-column strip of the weights (dL/dcols), and positions
# fewer and more than grad_weight's pass of 128 (p273: passes of 128, 128 and 17)
GEMM_EDGES = {"c5_f8": (2, 5, 7, 8, 8, 1, False, False),
              "c12_g2_f12": (1, 12, 5, 5, 12, 2, True, True),
              "c6_g2_f6": (2, 6, 4, 7, 6, 2, True, False),
              "c8_g2_f8_p273": (1, 8, 13, 21, 8, 2, True, True)}


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("name", sorted(GEMM_EDGES))
def test_cpu_float32_gemm_edges_match_the_reference(name, simd):
    """float32 forward (the in-place AVX2 GEMM over the columns) and backward (csrc/rowgemm.h
    for grad_weight and the columns' gradient) against the float64 reference, on both kernel
    builds; the same bits for 1, 2 and 3 threads."""
    N, C, H, W, Fo, G, with_bias, with_mask = GEMM_EDGES[name]
    rng = np.random.default_rng(21)
    c = dict(x=rng.standard_normal((N, C, H, W)).astype(np.float32),
             offset=(rng.standard_normal((N, 18, H, W)) * 2).astype(np.float32),
             weight=rng.standard_normal((Fo, C // G, 3, 3)).astype(np.float32),
             bias=rng.standard_normal(Fo).astype(np.float32) if with_bias else None,
             mask=rng.random((N, 9, H, W)).astype(np.float32) if with_mask else None,
             stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    gy = rng.standard_normal((N, Fo, H, W)).astype(np.float32)
    _cpu_matches_reference_on_1_2_3_threads(c, gy, np.float32, simd, with_bias)


# (N, C, H, W, F, weight groups, offset groups, mask, stride, padding, dilation): the float32
# forward GEMM's weight panels of 16 filters -- filters per group 20 (a whole panel and a
# zero-padded one), 16 (whole), 17 and 12 (padded) -- and its tiles of 6 positions: blocks of
# 113 positions (the last tile 5 rows), 4 positions in all (one tile, its rows repeated);
# the first case is large enough to run on several threads
PANEL_EDGES = {"f20_og2_p225": (2, 16, 15, 15, 20, 1, 2, True, 1, 1, 1),
               "f32_g2": (1, 8, 5, 3, 32, 2, 1, False, 1, 1, 1),
               "f17_p4": (3, 3, 2, 2, 17, 1, 1, True, 1, 1, 1),
               "f48_g4_og4_s2_d2": (2, 16, 11, 10, 48, 4, 4, True, 2, 2, 2)}


@pytest.mark.parametrize("name", sorted(PANEL_EDGES))
def test_cpu_float32_forward_panels_match_the_reference(name):
    """The float32 forward on ck_deform_opgemm_f (weights packed in panels of 16 filters,
    tiles of 6 positions) against the float64 reference, with and without the AVX2 kernels
    (then BLAS), and the same bits for 1, 2, 3, 8 and 16 threads."""
    from convkit.cpu import _deform_conv

    N, C, H, W, Fo, G, OG, with_mask, s, p, d = PANEL_EDGES[name]
    Ho, Wo = (H + 2 * p - 2 * d - 1) // s + 1, (W + 2 * p - 2 * d - 1) // s + 1
    rng = np.random.default_rng(31)
    c = dict(x=rng.standard_normal((N, C, H, W)).astype(np.float32),
             offset=(rng.standard_normal((N, 18 * OG, Ho, Wo)) * 2).astype(np.float32),
             weight=rng.standard_normal((Fo, C // G, 3, 3)).astype(np.float32),
             bias=rng.standard_normal(Fo).astype(np.float32),
             mask=rng.random((N, 9 * OG, Ho, Wo)).astype(np.float32) if with_mask else None,
             stride=(s, s), padding=(p, p), dilation=(d, d))
    want = _fwd("numpy", {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
                          for k, v in c.items()})
    scale = max(1.0, float(np.abs(want).max()))
    try:
        for simd in (True, False):
            _deform_conv.set_simd(simd)
            outs = {}
            for n in (1, 2, 3, 8, 16):
                convkit.set_num_threads(n)
                outs[n] = _fwd("cpu", c)
            np.testing.assert_allclose(outs[1], want, rtol=TOL[np.float32]["rtol"],
                                       atol=TOL[np.float32]["atol"] * scale, err_msg=simd)
            for n in (2, 3, 8, 16):
                assert outs[n].tobytes() == outs[1].tobytes(), (simd, n)
    finally:
        _deform_conv.set_simd(True)
        convkit.set_num_threads(None)


@pytest.mark.parametrize("simd", [True, False])
def test_cpu_float32_table_on_the_edges_matches_the_oracle(simd):
    """float32 sample tables (eight positions a vector on AVX2, the tail scalar) where the
    points land exactly on -1, on the last row / column, past them, on NaN and +-inf: the
    forward against the float64 loop oracle (NaN where it is NaN) and the offset and mask
    gradients against the float64 reference."""
    from convkit.cpu import _deform_conv

    rng = np.random.default_rng(41)
    N, C, H, W, OG = 2, 4, 4, 5, 2
    off = rng.integers(-8, 9, (N, 18 * OG, H, W)) / 2.0       # integer and half-integer
    off[rng.random(off.shape) < 0.03] = np.nan
    off[rng.random(off.shape) < 0.02] = np.inf
    off[rng.random(off.shape) < 0.02] = -np.inf
    c = dict(x=rng.standard_normal((N, C, H, W)), offset=off,
             weight=rng.standard_normal((3, C, 3, 3)), bias=None,
             mask=rng.random((N, 9 * OG, H, W)), stride=(1, 1), padding=(1, 1),
             dilation=(1, 1))
    want = deform_oracle(c["x"], off, c["weight"], None, (1, 1), (1, 1), (1, 1), c["mask"])
    gy = rng.standard_normal(want.shape)
    wb = _bwd("numpy", gy, c, False)
    c32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in c.items()}
    try:
        _deform_conv.set_simd(simd)
        got = _fwd("cpu", c32)
        gb = _bwd("cpu", gy.astype(np.float32), c32, False)
    finally:
        _deform_conv.set_simd(True)
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.nanmax(np.abs(want)))
    for g, w, k in ((gb[1], wb[1], "offset"), (gb[4], wb[4], "mask")):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=k)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.nanmax(np.abs(w)),
                                   err_msg=k)


def test_cpu_batch_chunks_give_the_same_bits():
    """A workspace limit that fits one or two images at a time (the batch then runs in
    chunks) gives the bits of a single chunk."""
    rng = np.random.default_rng(11)
    c = make_case("g2_og2_mask", seed=12)
    c = dict(c, x=rng.standard_normal((5, 4, 5, 6)),
             offset=rng.standard_normal((5, 36, 5, 6)), mask=rng.random((5, 18, 5, 6)))
    gy = rng.standard_normal((5, 6, 5, 6))
    full = _cpu_bits(c, gy)
    old = convkit.get_workspace_limit()
    try:
        for images in (1, 2):
            # per image: 4 bordered 7x8 planes, 36 column rows of 30 and a 6x2x3x3
            # grad_weight of float64, 18*30 table entries of 64 bytes
            convkit.set_workspace_limit(images * ((4 * 56 + 36 * 30 + 108) * 8 + 18 * 30 * 64))
            for a, b in zip(full, _cpu_bits(c, gy)):
                assert a.tobytes() == b.tobytes()
    finally:
        convkit.set_workspace_limit(old)


@pytest.mark.parametrize("C,Fo", [(16, 16), (14, 40)])
def test_cpu_float32_backward_per_image_tasks_give_the_bits_of_the_phases(C, Fo):
    """float32 on AVX2 runs the backward in one task per image where a chunk's images share
    out evenly over the threads (blocks of positions, each carried from its columns to its
    grad_x share while in cache: here 1 thread, 3 images or chunks of one), else in phases
    over blocks of positions (2 and 4 threads): both give the same bits, and they match the
    float64 reference.  Filters per group 8 (rowgemm panels; one part-filled panel of 16 for
    ck_deform_wgrad_f) or 20 (a full and a part-filled panel; 63 columns per group: a tile of
    3 columns at the end), positions 130 (blocks of 48, 48 and 34), two offset groups."""
    import re

    rng = np.random.default_rng(17)
    N, H, W, G, OG = 3, 10, 13, 2, 2
    c = dict(x=rng.standard_normal((N, C, H, W)).astype(np.float32),
             offset=(rng.standard_normal((N, 18 * OG, H, W)) * 2).astype(np.float32),
             weight=rng.standard_normal((Fo, C // G, 3, 3)).astype(np.float32),
             bias=None, mask=rng.random((N, 9 * OG, H, W)).astype(np.float32),
             stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    gy = rng.standard_normal((N, Fo, H, W)).astype(np.float32)
    old = convkit.get_workspace_limit()
    outs = {}
    try:
        for threads in (1, 2, 4):     # 4 threads > 3 images: the phases
            convkit.set_num_threads(threads)
            convkit.set_workspace_limit(old)
            outs[threads, "all"] = _bwd("cpu", gy, c, False)
            limit = 1       # raised until it is what one image needs (the errors name it)
            while (threads, "one") not in outs:
                convkit.set_workspace_limit(limit)
                try:
                    outs[threads, "one"] = _bwd("cpu", gy, c, False)
                except MemoryError as e:
                    need = int(re.search(r"need (\d+) bytes", str(e))[1])
                    assert need > limit
                    limit = need
    finally:
        convkit.set_workspace_limit(old)
        convkit.set_num_threads(None)
    first = outs[1, "all"]
    for k, v in outs.items():
        for a, b in zip(first, v):
            assert (a is None and b is None) or a.tobytes() == b.tobytes(), k
    c64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in c.items()}
    want = _bwd("numpy", gy.astype(np.float64), c64, False)
    for g, w, k in zip(first, want, ("x", "offset", "weight", "bias", "mask")):
        if w is None:
            assert g is None
            continue
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=TOL[np.float32]["rtol"],
                                   atol=TOL[np.float32]["atol"] * scale, err_msg=k)


# ------------------------------------------------------------- cuda on the host emulation
from test_cuda_backend import emulated  # noqa: E402,F401  (the fixture: CudaBackend, no GPU)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_emulated_cuda_matches_the_reference(emulated, name, deterministic):
    """The cuda kernels (im2col, offset/mask gradient, atomic and ordered col2im) on the host
    emulation against the numpy reference, float64; the batch in chunks of one image."""
    c = make_case(name, seed=13)
    gy = np.random.default_rng(14).standard_normal(_fwd("numpy", c).shape)
    want = [_fwd("numpy", c)] + list(_bwd("numpy", gy, c))
    convkit.set_deterministic(deterministic)
    old = convkit.get_workspace_limit()
    try:
        for limit in (old, 1):      # 1: too small: the boundary says so
            convkit.set_workspace_limit(limit)
            if limit == 1:
                with pytest.raises(MemoryError, match="workspace limit"):
                    _fwd("cuda", c)
                continue
            got = [_fwd("cuda", c)] + list(_bwd("cuda", gy, c))
            for g, w, what in zip(got, want, ("y", "x", "offset", "weight", "bias", "mask")):
                if w is None:
                    assert g is None, what
                    continue
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10, err_msg=what)
        # a limit that fits one image's columns and their gradient: one image per chunk
        N, C = c["x"].shape[:2]
        P, KK = gy.shape[2] * gy.shape[3], c["weight"].shape[2] * c["weight"].shape[3]
        H, W = c["x"].shape[2:]
        convkit.set_workspace_limit(C * KK * P * 8 * (2 + (4 * 2 if deterministic else 0))
                                    + (C * H * W * 32 if deterministic else 0))
        got = [_fwd("cuda", c)] + list(_bwd("cuda", gy, c))
        for g, w in zip(got, want):
            if w is not None:
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
    finally:
        convkit.set_workspace_limit(old)


def test_emulated_cuda_deterministic_grad_x_sums_shared_pixels_in_order(emulated):
    """Every sample of every tap lands on the same pixel (offsets pull all taps to one
    point): the ordered gather adds them in column order, the same bits on every run, equal
    to the atomic path up to rounding."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    base = np.stack(np.meshgrid(np.arange(3), np.arange(3), indexing="ij")).reshape(2, 9)
    off = np.zeros((1, 9, 2, 2, 2))
    off[0, :, 0] = (1.25 - base[0])[:, None, None] - np.arange(2)[None, :, None]
    off[0, :, 1] = (2.5 - base[1])[:, None, None] - np.arange(2)[None, None, :]
    off = off.reshape(1, 18, 2, 2)
    gy = rng.standard_normal((1, 3, 2, 2))
    want = run("numpy", F.deform_conv2d_backward, gy, x, off, w)[0]
    convkit.set_deterministic(True)
    a = run("cuda", F.deform_conv2d_backward, gy, x, off, w)[0]
    b = run("cuda", F.deform_conv2d_backward, gy, x, off, w)[0]
    assert a.tobytes() == b.tobytes()
    np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(a) == 2 * 4      # the four corners of (1.25, 2.5) in each channel


def test_offset_gradient_at_integer_positions_is_the_derivative_towards_larger_offsets(backend):
    """torchvision's offset gradient looks at the cell to the lower right of a point: at integer
    positions (zero-initialised offsets, padding) it is the one-sided derivative for a growing
    offset -- also on the edge y = -1 / x = -1, which samples 0 but whose cell reaches into
    the image.  Checked with a non-negative direction and a forward difference."""
    rng = np.random.default_rng(16)
    c = make_case("g2_og2_mask", seed=17)
    for off in (np.zeros_like(c["offset"]), rng.integers(-2, 3, c["offset"].shape) * 1.0):
        c["offset"] = off
        gy = rng.standard_normal(_fwd(backend, c).shape)
        goff = _bwd(backend, gy, c)[1]
        v = rng.random(off.shape)
        t = 1e-7
        f = lambda o: np.vdot(gy, _fwd(backend, c, offset=o))       # noqa: E731
        np.testing.assert_allclose(np.vdot(goff, v), (f(off + t * v) - f(off)) / t, rtol=1e-5)
    # the top row of taps of the first output row sits on y = -1 (padding 1, zero offsets):
    # its samples are 0, its offset gradient is not
    c["offset"] = np.zeros_like(c["offset"])
    goff = _bwd(backend, np.ones_like(_fwd(backend, c)), c)[1]
    assert np.abs(goff[:, 0, 0, 1:-1]).min() > 0       # dy of tap (0, 0) at y = -1
