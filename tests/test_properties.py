"""Property-based differential tests: hypothesis draws shapes, arguments and values (NaN and
+-inf among them, ties, degenerate and out-of-image RoIs) for every op family and checks each
backend against torch float64 (conv, pools, batch norm) and the scalar-loop oracles of
test_roi.py / test_boxes.py (RoI ops, NMS, IoU).

The example count is fixed and the seed derandomised so CI stays inside its budget and a failure
reproduces; ``CONVKIT_FUZZ_EXAMPLES=5000 python -m pytest tests/test_properties.py`` runs a long
local search (README, "Tests").
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convkit
from convkit import functional as F
from helpers import run
from test_boxes import iou_scalar, nms_oracle
from test_roi import roi_align_backward_oracle, roi_align_oracle, roi_pool_oracle

torch = pytest.importorskip("torch")

EXAMPLES = int(os.environ.get("CONVKIT_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BACKENDS = [b for b in ("numpy", "cpu", "cuda") if convkit.backend_status(b)[0]]
DTYPES = (np.float32, np.float64)
# |convkit - torch float64| <= REL * (the same sum over |terms|) + ABS: float32 rounds every
# partial sum, so the bound scales with the magnitudes summed, not with the result
REL = {np.float32: 2e-6, np.float64: 1e-14}


def _values(data, shape, dtype, nonfinite, lo=-3.0, hi=3.0):
    """A seeded array of `shape`, with up to 3 NaN / +inf / -inf placed by hypothesis."""
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    a = np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)
    if nonfinite and a.size:
        for _ in range(data.draw(st.integers(0, 3), label="n_special")):
            i = data.draw(st.integers(0, a.size - 1), label="where")
            a.flat[i] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="special")
    return a


def _close(got, want, scale, dtype, what):
    """Same NaN / +inf / -inf positions; finite values within the dtype's bound."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    for name, f in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        bad = f(got) != f(want)
        assert not bad.any(), f"{what}: {name} at other places, first {np.argwhere(bad)[:3]}"
    fin = np.isfinite(want)
    bound = REL[dtype] * np.nan_to_num(scale[fin], posinf=0.0) * 8 + REL[dtype]
    err = np.abs(got[fin] - want[fin])
    assert (err <= bound).all(), f"{what}: max error {err.max():.3g} over its bound"


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float64))


# ------------------------------------------------------------------------------------ conv
@st.composite
def conv_cases(draw):
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "pointwise", "winograd",
                                 "small_map", "tiny_plane"]))
    N = draw(st.integers(1, 3))
    if kind == "winograd":         # cpu's F(2x2,3x3) path: 3x3, stride 1, >= 16 channels
        C, F_, k, s, d, g, H = 16, 16, (3, 3), (1, 1), (1, 1), 1, draw(st.integers(6, 12))
    elif kind == "depthwise":
        C = draw(st.integers(1, 6))
        F_, g = C * draw(st.integers(1, 2)), C
        k = (draw(st.integers(1, 5)),) * 2
        s, d, H = (draw(st.integers(1, 2)),) * 2, (1, 1), draw(st.integers(5, 14))
    elif kind == "pointwise":
        C, F_, k, s, d, g = draw(st.integers(1, 12)), draw(st.integers(1, 12)), (1, 1), (1, 1), \
            (1, 1), 1
        H = draw(st.integers(1, 12))
    elif kind in ("small_map", "tiny_plane"):
        C, F_, g = draw(st.integers(1, 12)), draw(st.integers(1, 12)), 1
        k, s, d = (3, 3), (1, 1), (1, 1)
        H = draw(st.integers(2, 3)) if kind == "tiny_plane" else draw(st.integers(4, 8))
    else:
        g = draw(st.sampled_from([1, 2, 3])) if kind == "grouped" else 1
        C, F_ = g * draw(st.integers(1, 4)), g * draw(st.integers(1, 4))
        k = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        H = draw(st.integers(1, 16))
    W = H + draw(st.integers(0, 3))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    # the output must have at least one position
    for i, n in enumerate((H, W)):
        if n + 2 * p[i] < d[i] * (k[i] - 1) + 1:
            p = tuple(max(p[j], (d[j] * (k[j] - 1) + 1 - (H, W)[j] + 1) // 2) if j == i else p[j]
                      for j in range(2))
    return dict(xs=(N, C, H, W), ws=(F_, C // g, *k), stride=s, padding=p, dilation=d, groups=g,
                bias=draw(st.booleans()))


def _conv_oracle(x, w, b, case, gy):
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              groups=case["groups"])
    tx, tw = _t(x).requires_grad_(), _t(w).requires_grad_()
    tb = _t(b).requires_grad_() if b is not None else None
    y = torch.nn.functional.conv2d(tx, tw, tb, **kw)
    y.backward(_t(gy))
    with torch.no_grad():
        ys = torch.nn.functional.conv2d(_t(x).abs(), _t(w).abs(), None, **kw)
        gxs = torch.nn.grad.conv2d_input(tx.shape, _t(w).abs(), _t(gy).abs(), **kw)
        gws = torch.nn.grad.conv2d_weight(_t(x).abs(), tw.shape, _t(gy).abs(), **kw)
    return ((y.detach(), ys), (tx.grad, gxs), (tw.grad, gws),
            (tb.grad if tb is not None else None, None))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@FUZZ
@given(data=st.data(), case=conv_cases())
def test_conv2d_forward_backward_against_torch(backend, dtype, data, case):
    nonfinite = data.draw(st.booleans(), label="nonfinite")
    x = _values(data, case["xs"], dtype, nonfinite)
    w = _values(data, case["ws"], dtype, nonfinite)
    b = _values(data, (case["ws"][0],), dtype, nonfinite) if case["bias"] else None
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              groups=case["groups"])
    y = run(backend, F.conv2d_forward, x, w, b, **kw)
    gy = _values(data, y.shape, dtype, nonfinite)
    got = (y, *run(backend, F.conv2d_backward, gy, x, w, has_bias=b is not None, **kw))
    want = _conv_oracle(x, w, b, case, gy)
    for name, g, (ref, scale) in zip(("y", "grad_x", "grad_weight", "grad_bias"), got, want):
        if ref is None:
            assert g is None, name
            continue
        scale = (np.abs(ref.numpy()) if scale is None else scale.numpy()) + 1.0
        _close(g, ref.numpy(), scale, dtype, f"{name} {case}")


# ----------------------------------------------------------------------------------- pools
@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    H = draw(st.integers(max(k[0] - 2 * p[0], 1), 12))
    W = draw(st.integers(max(k[1] - 2 * p[1], 1), 12))
    return dict(xs=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), k=k, s=s, p=p,
                ceil=draw(st.booleans()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@FUZZ
@given(data=st.data(), case=pool_cases())
def test_max_pool2d_against_torch(backend, dtype, data, case):
    # integer-valued data make ties common; the first maximum in window order must win
    x = np.round(_values(data, case["xs"], dtype, data.draw(st.booleans(), label="nonfinite")))
    kw = dict(kernel_size=case["k"], stride=case["s"], padding=case["p"], ceil_mode=case["ceil"])
    y, idx = run(backend, F.max_pool2d_forward, x, **kw)
    ty, tidx = torch.nn.functional.max_pool2d(_t(x), return_indices=True, **kw)
    _close(y, ty.numpy(), np.ones(y.shape), dtype, f"y {case}")
    fin = ~np.isnan(ty.numpy())     # which of several NaNs wins is not part of the contract
    np.testing.assert_array_equal(idx[fin], tidx.numpy()[fin], err_msg=str(case))
    gy = _values(data, y.shape, dtype, False)
    gx = run(backend, F.max_pool2d_backward, gy, idx, x.shape)
    want = np.zeros(x.size)
    np.add.at(want.reshape(-1), (np.arange(x.shape[0] * x.shape[1])[:, None] * x.shape[2] * x.shape[3]
                                 + idx.reshape(x.shape[0] * x.shape[1], -1)).reshape(-1),
              gy.reshape(-1).astype(np.float64))
    _close(gx, want.reshape(x.shape), np.abs(want.reshape(x.shape)) + 1, dtype, f"gx {case}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@FUZZ
@given(data=st.data(), case=pool_cases(), include_pad=st.booleans())
def test_avg_pool2d_against_torch(backend, dtype, data, case, include_pad):
    nonfinite = data.draw(st.booleans(), label="nonfinite")
    x = _values(data, case["xs"], dtype, nonfinite)
    kw = dict(kernel_size=case["k"], stride=case["s"], padding=case["p"], ceil_mode=case["ceil"],
              count_include_pad=include_pad)
    y = run(backend, F.avg_pool2d_forward, x, **kw)
    tx = _t(x).requires_grad_()
    ty = torch.nn.functional.avg_pool2d(tx, **kw)
    _close(y, ty.detach().numpy(), np.full(y.shape, 4.0), dtype, f"y {case}")
    gy = _values(data, y.shape, dtype, nonfinite)
    ty.backward(_t(gy))
    gx = run(backend, F.avg_pool2d_backward, gy, x.shape, **kw)
    _close(gx, tx.grad.numpy(), np.full(x.shape, 4.0 * case["k"][0] * case["k"][1]), dtype,
           f"gx {case}")


# ------------------------------------------------------------------------------ batch norm
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@FUZZ
@given(data=st.data(), shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5),
                                       st.integers(1, 5)),
       training=st.booleans(), affine=st.booleans())
def test_batch_norm_against_torch(backend, dtype, data, shape, training, affine):
    if training and shape[0] * shape[2] * shape[3] < 2:
        shape = (2,) + shape[1:]          # an unbiased variance needs two values per channel
    nonfinite = data.draw(st.booleans(), label="nonfinite")
    C = shape[1]
    x = _values(data, shape, dtype, nonfinite, -50, 50)
    wb = [_values(data, (C,), dtype, False, 0.5, 2.0) for _ in range(2)] if affine else [None] * 2
    rm = _values(data, (C,), dtype, False)
    rv = _values(data, (C,), dtype, False, 0.5, 2.0)
    y, mean, invstd = run(backend, F.batch_norm_forward, x, wb[0], wb[1], rm, rv, training,
                          0.1, 1e-5)
    trm, trv = _t(rm), _t(rv)
    tx = _t(x).requires_grad_()
    tw = _t(wb[0]).requires_grad_() if affine else None
    tb = _t(wb[1]).requires_grad_() if affine else None
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training, 0.1, 1e-5)
    scale = np.abs(ty.detach().numpy()) * 50 + 50
    _close(y, ty.detach().numpy(), scale, dtype, f"y {shape}")
    gy = _values(data, shape, dtype, False)
    ty.backward(_t(gy))
    got = run(backend, F.batch_norm_backward, gy, x, wb[0], mean, invstd, training)
    gscale = np.abs(tx.grad.numpy()) * 1e3 + 1e3
    _close(got[0], tx.grad.numpy(), gscale, dtype, f"grad_x {shape}")
    if affine:
        _close(got[1], tw.grad.numpy(), np.abs(tw.grad.numpy()) * 1e3 + 1e3, dtype, "grad_w")
        _close(got[2], tb.grad.numpy(), np.abs(tb.grad.numpy()) + 1e2, dtype, "grad_b")
    else:
        assert got[1] is None and got[2] is None


# ------------------------------------------------------------------------------------- roi
@st.composite
def roi_cases(draw):
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    K = draw(st.integers(0, 4))
    rows = []
    for _ in range(K):
        kind = draw(st.sampled_from(["inside", "outside", "degenerate", "nonfinite", "any"]))
        if kind == "nonfinite":
            c = [draw(st.sampled_from([np.nan, np.inf, -np.inf, 1.0])) for _ in range(4)]
        elif kind == "degenerate":
            x1, y1 = draw(st.floats(-2, W + 2)), draw(st.floats(-2, H + 2))
            c = [x1, y1, x1, y1]
        elif kind == "outside":
            x1 = draw(st.floats(W + 1, W + 20))
            c = [x1, draw(st.floats(-20, -2)), x1 + draw(st.floats(0, 5)), draw(st.floats(-2, 0))]
        else:
            lo = -3 if kind == "any" else 0
            x1, y1 = draw(st.floats(lo, W)), draw(st.floats(lo, H))
            c = [x1, y1, x1 + draw(st.floats(0, W + 3)), y1 + draw(st.floats(0, H + 3))]
        rows.append([draw(st.integers(0, N - 1))] + c)
    return dict(xs=(N, C, H, W), rois=np.array(rows, np.float64).reshape(K, 5),
                out=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                scale=draw(st.sampled_from([1.0, 0.5, 0.25])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@FUZZ
@given(data=st.data(), case=roi_cases(), sampling=st.integers(-1, 2), aligned=st.booleans())
def test_roi_align_against_loop_oracle(backend, dtype, data, case, sampling, aligned):
    sampling = sampling if sampling != 0 else -1
    x = _values(data, case["xs"], dtype, data.draw(st.booleans(), label="nonfinite"))
    rois = case["rois"].astype(dtype)
    args = (case["out"], case["scale"], sampling, aligned)
    y = run(backend, F.roi_align_forward, x, rois, *args)
    want = roi_align_oracle(x, rois, *args)
    _close(y, want, np.full(want.shape, 8.0), dtype, f"y {case}")
    gy = _values(data, y.shape, dtype, False)
    gx = run(backend, F.roi_align_backward, gy, rois, x.shape, *args)
    want = roi_align_backward_oracle(gy, rois, x.shape, *args)
    _close(gx, want, np.full(want.shape, 8.0 * max(len(rois), 1)), dtype, f"gx {case}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@FUZZ
@given(data=st.data(), case=roi_cases())
def test_roi_pool_against_loop_oracle(backend, dtype, data, case):
    x = np.round(_values(data, case["xs"], dtype, data.draw(st.booleans(), label="nonfinite")))
    rois = case["rois"].astype(dtype)
    y, am = run(backend, F.roi_pool_forward, x, rois, case["out"], case["scale"])
    want, want_am = roi_pool_oracle(x, rois, case["out"], case["scale"])
    _close(y, want, np.ones(want.shape), dtype, f"y {case}")
    np.testing.assert_array_equal(am, want_am, err_msg=str(case))
    gy = _values(data, y.shape, dtype, False)
    gx = run(backend, F.roi_pool_backward, gy, am, x.shape, rois)
    N, C, H, W = x.shape
    ref = np.zeros((N, C, H * W))
    for k, c, i, j in np.argwhere(am >= 0):
        ref[int(rois[k, 0]), c, am[k, c, i, j]] += gy[k, c, i, j]
    _close(gx, ref.reshape(x.shape), np.abs(ref.reshape(x.shape)) + 1, dtype, f"gx {case}")


# ------------------------------------------------------------------------------- nms / iou
@st.composite
def box_sets(draw, dtype):
    n = draw(st.integers(0, 12))
    coords = st.sampled_from([0.0, 1.0, 2.5, 4.0, 7.0, 10.0])     # a coarse grid: ties, touching
    boxes = []
    for _ in range(n):
        x1, y1 = draw(coords), draw(coords)
        boxes.append([x1, y1, x1 + draw(coords), y1 + draw(coords)])
    scores = [draw(st.sampled_from([0.1, 0.5, 0.5, 0.9, 1.0])) for _ in range(n)]
    return np.array(boxes, dtype).reshape(n, 4), np.array(scores, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@FUZZ
@given(data=st.data(), thr=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_and_box_iou_against_loops(backend, dtype, data, thr):
    boxes, scores = data.draw(box_sets(dtype))
    keep = run(backend, F.nms, boxes, scores, thr)
    np.testing.assert_array_equal(keep, nms_oracle(boxes, scores, thr))
    other, _ = data.draw(box_sets(dtype))
    iou = run(backend, F.box_iou, boxes, other)
    want = np.array([[float(iou_scalar(a, b)) for b in other] for a in boxes]).reshape(
        len(boxes), len(other))
    np.testing.assert_allclose(iou, want, rtol=1e-6, atol=1e-7)
