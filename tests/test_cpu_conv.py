"""The cpu backend's conv2d: its special paths (1x1 no-copy, depthwise direct, grouped, chunked
batch, row-chunked image), dtypes, read-only and non-contiguous inputs, out=, workspace cap,
threads and determinism.  Oracles: torch (when installed), a plain NumPy correlation written
here, adjoint identities in float64 and the lecture's hand-computed example.
"""
import threading
from dataclasses import dataclass

import numpy as np
import pytest

import convkit
from helpers import tol

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])


@dataclass(frozen=True)
class Case:
    id: str
    x: tuple                 # (N, C, H, W)
    w: tuple                 # (F, C/groups, KH, KW)
    stride: tuple = (1, 1)
    padding: object = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1


CASES = [
    Case("3x3_pad1", (2, 3, 9, 11), (4, 3, 3, 3), padding=(1, 1)),
    Case("pointwise", (2, 8, 7, 9), (5, 8, 1, 1)),                               # no-copy GEMM
    Case("pointwise_grouped", (3, 8, 5, 6), (6, 4, 1, 1), groups=2),
    Case("pointwise_stride2", (2, 4, 7, 7), (3, 4, 1, 1), stride=(2, 2)),        # im2col path
    Case("depthwise", (2, 6, 10, 7), (6, 1, 3, 3), padding=(1, 1), groups=6),    # direct kernel
    Case("depthwise_mult2", (2, 6, 10, 7), (12, 1, 3, 3), padding=(1, 1), groups=6),
    Case("depthwise_wide", (2, 4, 9, 29), (8, 1, 3, 3), padding=(1, 1), groups=4),  # 16+8+5
    Case("depthwise_s2_dil", (3, 4, 11, 9), (4, 1, 3, 2), stride=(2, 1), padding=(1, 2),
         dilation=(1, 2), groups=4),
    Case("grouped", (2, 6, 10, 7), (6, 2, 3, 3), stride=(2, 3), padding=(2, 0),
         dilation=(2, 1), groups=3),
    Case("same_even", (1, 5, 8, 8), (7, 5, 4, 4), padding="same"),              # asymmetric pad
    Case("stem_like", (2, 3, 15, 13), (5, 3, 7, 7), stride=(2, 2), padding=(3, 3)),
    Case("pad_bigger_than_input", (1, 2, 3, 3), (2, 2, 3, 3), padding=(4, 4)),
    Case("winograd", (2, 16, 9, 11), (20, 16, 3, 3), padding=(1, 1)),           # F(2x2, 3x3)
    Case("winograd_odd_pad0", (3, 17, 7, 10), (16, 17, 3, 3)),
    Case("winograd_pad2", (1, 16, 5, 6), (18, 16, 3, 3), padding=(2, 2)),
    Case("winograd_pad3", (2, 16, 5, 6), (16, 16, 3, 3), padding=(3, 1)),   # grad_x crops
    # small output maps (<= 64 positions): whole-batch im2col, one GEMM per block of images
    Case("batch_3x3_s2", (3, 5, 7, 6), (4, 5, 3, 3), stride=(2, 2), padding=(1, 1)),
    Case("batch_grouped_dil", (3, 6, 6, 5), (4, 3, 3, 2), stride=(1, 2), padding=(2, 1),
         dilation=(2, 1), groups=2),
    Case("batch_grouped_dil_s1", (2, 6, 5, 6), (4, 3, 3, 2), padding=(2, 1), dilation=(2, 1),
         groups=2),                        # stride 1: grad_x as a conv of grad_y, per group
    Case("batch_5x5_lenet", (2, 6, 4, 4), (16, 6, 5, 5), padding=(2, 2)),
    Case("batch_2x2_over_winograd", (3, 20, 2, 2), (24, 20, 3, 3), padding=(1, 1)),
    Case("batch_taps_in_padding", (2, 3, 3, 3), (2, 3, 3, 3), padding=(3, 3)),
    Case("winograd_gx_batch_gw", (2, 16, 8, 8), (16, 16, 3, 3), padding=(1, 1)),
    # stride 1, rows computed Wo + (KW-1)*dw wide (conv2d_forward_wide): lenet_c1's shape, a
    # dilated one, asymmetric "same" padding, none (the last taps read the slack past the plane)
    Case("wide_lenet_c1", (3, 1, 28, 28), (6, 1, 5, 5), padding=(2, 2)),
    Case("wide_dilated", (2, 3, 20, 21), (4, 3, 3, 3), padding=(2, 2), dilation=(2, 2)),
    Case("wide_same_asym", (1, 5, 16, 16), (7, 5, 4, 4), padding="same"),
    Case("wide_pad0", (2, 2, 12, 30), (3, 2, 3, 5)),
    # strided, output rows >= 32 wide, float32 on the own GEMM (conv2d_forward_phases):
    # polyphase planes, one GEMM per output row; several row blocks, a ragged last one
    Case("phases_stem", (2, 3, 70, 66), (5, 3, 7, 7), stride=(2, 2), padding=(3, 3)),
    Case("phases_s23_dil", (1, 2, 40, 110), (3, 2, 3, 4), stride=(2, 3), padding=(1, 2),
         dilation=(2, 1)),
    Case("phases_pad0_s3", (2, 4, 20, 100), (9, 4, 5, 3), stride=(3, 3)),
    # weight gradients as dot products along the output positions, taps read in the phase
    # planes (conv2d_backward_weight_dot; <= 320 taps, float32 on AVX-512F): filters not a
    # multiple of the 8-row tile, taps not a multiple of its 3 columns, rows that end in a
    # partial 16-lane vector, several phase blocks and tile passes with ragged last ones
    Case("dot_stem", (2, 3, 70, 66), (13, 3, 7, 7), stride=(2, 2), padding=(3, 3)),
    Case("dot_s1_ragged", (2, 2, 40, 37), (9, 2, 5, 2), padding=(2, 1)),
    Case("dot_s32_dil", (2, 3, 50, 61), (4, 3, 3, 4), stride=(3, 2), padding=(2, 1),
         dilation=(2, 3)),
    Case("dot_same_even", (1, 4, 30, 20), (3, 4, 4, 4), padding="same"),
    # grouped: each task builds its conv group's channels only; 4 and 12 filters per group
    # (a half-empty and a ragged 8-row tile), 3 groups of 3 channels with stride 2
    Case("dot_grouped_fg4", (2, 8, 20, 19), (8, 4, 3, 3), padding=(1, 1), groups=2),
    Case("dot_grouped_s2", (3, 9, 30, 40), (36, 3, 5, 3), stride=(2, 2), padding=(2, 1),
         groups=3),
]


CASE = {c.id: c for c in CASES}


def _pads(case):
    if case.padding == "same":
        KH, KW = case.w[2:]
        d = case.dilation
        t, b = (d[0] * (KH - 1)) // 2, d[0] * (KH - 1) - (d[0] * (KH - 1)) // 2
        l, r = (d[1] * (KW - 1)) // 2, d[1] * (KW - 1) - (d[1] * (KW - 1)) // 2
        return t, b, l, r
    ph, pw = case.padding
    return ph, ph, pw, pw


def np_conv2d(x, w, b, stride, pads, dilation, groups):
    """Plain NumPy cross-correlation (the oracle): pad, gather every tap, one einsum per group."""
    N, C, H, W = x.shape
    F, Cg, KH, KW = w.shape
    t, bo, l, r = pads
    xp = np.zeros((N, C, H + t + bo, W + l + r), dtype=np.float64)
    xp[:, :, t:t + H, l:l + W] = x
    sh, sw = stride
    dh, dw = dilation
    Ho = (H + t + bo - dh * (KH - 1) - 1) // sh + 1
    Wo = (W + l + r - dw * (KW - 1) - 1) // sw + 1
    taps = np.empty((N, C, KH, KW, Ho, Wo))
    for kh in range(KH):
        for kw in range(KW):
            taps[:, :, kh, kw] = xp[:, :, kh * dh:kh * dh + sh * (Ho - 1) + 1:sh,
                                    kw * dw:kw * dw + sw * (Wo - 1) + 1:sw]
    Fg = F // groups
    y = np.empty((N, F, Ho, Wo))
    for g in range(groups):
        y[:, g * Fg:(g + 1) * Fg] = np.einsum("ncklij,fckl->nfij",
                                              taps[:, g * Cg:(g + 1) * Cg],
                                              w[g * Fg:(g + 1) * Fg].astype(np.float64))
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def _inputs(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x).astype(dtype)
    w = rng.standard_normal(case.w).astype(dtype)
    b = rng.standard_normal(case.w[0]).astype(dtype)
    return x, w, b


def _args(case):
    return dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                groups=case.groups)


def _cpu_forward(x, w, b, case, **kw):
    with convkit.use_backend("cpu"):
        return convkit.conv2d_forward(x, w, b, **_args(case), **kw)


def _cpu_backward(gy, x, w, case, **kw):
    with convkit.use_backend("cpu"):
        return convkit.conv2d_backward(gy, x, w, **_args(case), **kw)


# ----------------------------------------------------------------------- values
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_matches_numpy_oracle(case, dtype):
    x, w, b = _inputs(case, dtype)
    y = _cpu_forward(x, w, b, case)
    assert y.dtype == dtype
    want = np_conv2d(x, w, b, case.stride, _pads(case), case.dilation, case.groups)
    np.testing.assert_allclose(y, want, **tol(dtype), err_msg=case.id)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_backward_match_torch(case, dtype, torch):
    x, w, b = _inputs(case, dtype)
    y = _cpu_forward(x, w, b, case)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx, gw, gb = _cpu_backward(gy, x, w, case)
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **_args(case))
    ty.backward(torch.tensor(gy))
    t = tol(dtype)
    if dtype == np.float32:   # sums of up to a few hundred float32 products
        t = dict(rtol=1e-4, atol=1e-4)
    for name, got, want in [("y", y, ty), ("gx", gx, tx.grad), ("gw", gw, tw.grad),
                            ("gb", gb, tb.grad)]:
        np.testing.assert_allclose(got, want.detach().numpy(), **t, err_msg=f"{case.id} {name}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backward_adjoint_identities(case):
    """<conv(x, w), gy> = <x, gx> = <w, gw> (conv is linear in x and in w), float64."""
    x, w, _ = _inputs(case, np.float64)
    y = _cpu_forward(x, w, None, case)
    gy = np.random.default_rng(2).standard_normal(y.shape)
    gx, gw, gb = _cpu_backward(gy, x, w, case)
    lhs = np.vdot(y, gy)
    np.testing.assert_allclose(np.vdot(x, gx), lhs, rtol=1e-10)
    np.testing.assert_allclose(np.vdot(w, gw), lhs, rtol=1e-10)
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_lecture_worked_example():
    x = np.array([[1, 128, 100, 255], [4, 100, 80, 0], [20, 90, 70, 0], [40, 50, 60, 2]],
                 dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.array([[[[1, 2], [0, 0.5]]], [[[0, 0.1], [1, 2]]]])
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, np.zeros(2), padding=1)
    assert y.shape == (1, 2, 5, 5)
    np.testing.assert_allclose(y[0, 0, :2, :2], [[0.5, 64], [4, 307]], rtol=1e-12)
    np.testing.assert_allclose(y[0, 1, :2, :2], [[2, 257], [8.1, 216.8]], rtol=1e-12)


# ----------------------------------------------------------------------- inputs and outputs
def test_read_only_inputs():
    case = CASE["3x3_pad1"]
    x, w, b = _inputs(case, np.float32)
    want = _cpu_forward(x, w, b, case)
    gy = np.ones_like(want)
    want_b = _cpu_backward(gy, x, w, case)
    for a in (x, w, b, gy):
        a.setflags(write=False)
    np.testing.assert_array_equal(_cpu_forward(x, w, b, case), want)
    for got, exp in zip(_cpu_backward(gy, x, w, case), want_b):
        np.testing.assert_array_equal(got, exp)
    dw = CASE["depthwise"]
    x, w, b = _inputs(dw, np.float64)
    for a in (x, w, b):
        a.setflags(write=False)
    np.testing.assert_allclose(_cpu_forward(x, w, b, dw),
                               np_conv2d(x, w, b, dw.stride, _pads(dw), dw.dilation, dw.groups),
                               **tol(np.float64))


@pytest.mark.parametrize("case", [CASE["3x3_pad1"], CASE["pointwise"], CASE["depthwise"]],
                         ids=lambda c: c.id)
def test_non_contiguous_inputs(case):
    x, w, b = _inputs(case, np.float64)
    # the same values, laid out transposed / strided
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    wt = np.asfortranarray(w)
    b2 = np.repeat(b, 2)[::2]
    assert not (xt.flags.c_contiguous or wt.flags.c_contiguous or b2.flags.c_contiguous)
    np.testing.assert_array_equal(_cpu_forward(xt, wt, b2, case), _cpu_forward(x, w, b, case))
    gy = np.random.default_rng(3).standard_normal(_cpu_forward(x, w, b, case).shape)
    gyt = np.ascontiguousarray(gy[:, :, ::-1])[:, :, ::-1]
    for got, want in zip(_cpu_backward(gyt, xt, wt, case), _cpu_backward(gy, x, w, case)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", [CASE["3x3_pad1"], CASE["pointwise"], CASE["depthwise"]],
                         ids=lambda c: c.id)
def test_out_buffer(case):
    x, w, b = _inputs(case, np.float32)
    want = _cpu_forward(x, w, b, case)
    out = np.full(want.shape, np.nan, dtype=np.float32)
    got = _cpu_forward(x, w, b, case, out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)


def test_needs_input_grad_false_skips_grad_x():
    case = CASE["stem_like"]
    x, w, _ = _inputs(case, np.float64)
    gy = np.random.default_rng(4).standard_normal(_cpu_forward(x, w, None, case).shape)
    gx, gw, gb = _cpu_backward(gy, x, w, case, needs_input_grad=False, has_bias=False)
    assert gx is None and gb is None
    np.testing.assert_array_equal(gw, _cpu_backward(gy, x, w, case)[1])


def test_nan_propagates():
    case = CASE["3x3_pad1"]
    x, w, b = _inputs(case, np.float32)
    x[0, 1, 4, 5] = np.nan
    y = _cpu_forward(x, w, b, case)
    assert np.isnan(y[0, :, 3:6, 4:7]).all()
    assert not np.isnan(y[1]).any() and not np.isnan(y[0, :, :2]).any()


# ----------------------------------------------------------------------- depthwise 3x3 kernels
# 3x3 stride-1 depthwise convs with one filter per channel run their own vector kernels, at
# the widest level the CPU has (3 AVX-512, 2 AVX2, 1 16-byte vectors) whose vector fits in a
# row; a row not a multiple of the vector ends with a block moved left over the one before.
# Padding 1 all round reads the planes as they are (columns 0 and W-1 one by one, W - 2 >= one
# vector); other paddings and narrower rows read a zero-padded copy.
DW3 = [Case("dw3_w4", (2, 3, 5, 4), (3, 1, 3, 3), padding=(1, 1), groups=3),   # padded copy
       Case("dw3_w5", (2, 3, 6, 5), (3, 1, 3, 3), padding=(1, 1), groups=3),
       Case("dw3_w17", (1, 4, 3, 17), (4, 1, 3, 3), padding=(1, 1), groups=4),
       Case("dw3_pad0_wo16", (2, 2, 7, 18), (2, 1, 3, 3), groups=2),
       Case("dw3_pad2", (1, 3, 4, 37), (3, 1, 3, 3), padding=(2, 2), groups=3),
       Case("dw3_56", (2, 2, 9, 56), (2, 1, 3, 3), padding=(1, 1), groups=2),      # unpadded
       Case("dw3_w18", (2, 3, 4, 18), (3, 1, 3, 3), padding=(1, 1), groups=3),
       Case("dw3_w19", (1, 2, 2, 19), (2, 1, 3, 3), padding=(1, 1), groups=2),
       Case("dw3_w35_h1", (2, 2, 1, 35), (2, 1, 3, 3), padding=(1, 1), groups=2),
       Case("dw3_pad3_crops", (1, 2, 5, 33), (2, 1, 3, 3), padding=(3, 1), groups=2),
       Case("dw3_one_row", (1, 2, 1, 20), (2, 1, 3, 3), padding=(1, 1), groups=2),
       Case("dw3_pad_w_only", (1, 2, 6, 9), (2, 1, 3, 3), padding=(0, 2), groups=2)]


@pytest.fixture(params=[1, 2, 3], ids=["vec16", "avx2", "avx512"])
def dw3_cap(request):
    """Caps the 3x3 depthwise kernels at a level (a CPU without it runs its widest)."""
    from convkit.cpu import _conv
    old = _conv.depthwise3x3_cap(request.param)
    yield request.param
    _conv.depthwise3x3_cap(old)


def _dw3_plan(case, dtype):
    """(level, same) the cpu backend picks for a DW3 case (same: padding 1, unpadded planes)."""
    from convkit.cpu import conv as cpu_conv
    N, C, H, W = case.x
    t, b, l, r = _pads(case)
    return cpu_conv._depthwise3x3_plan(case.w[0], C, 3, 3, case.stride, (t, b, l, r),
                                       case.dilation, np.dtype(dtype).itemsize, W,
                                       W + l + r - 2)


def _dw3_level(case, dtype):
    return _dw3_plan(case, dtype)[0]


def test_depthwise3x3_plans_cover_both_kernels():
    """The DW3 cases run both forms of the kernels, at the widest level and below it."""
    from convkit.cpu import _conv
    top = _conv.depthwise3x3_level(4, 1 << 20)
    plans = {_dw3_plan(c, dt) for c in DW3 for dt in (np.float32, np.float64)}
    assert (top, True) in plans and (top, False) in plans
    assert (1, True) in plans and (1, False) in plans


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DW3, ids=lambda c: c.id)
def test_depthwise3x3_matches_oracles(case, dtype, dw3_cap):
    level = _dw3_level(case, dtype)
    assert 1 <= level <= dw3_cap          # the vector kernels run, not the general ones
    x, w, b = _inputs(case, dtype)
    y = _cpu_forward(x, w, b, case)
    np.testing.assert_allclose(y, np_conv2d(x, w, b, case.stride, _pads(case), case.dilation,
                                            case.groups), **tol(dtype), err_msg=case.id)
    gy = np.random.default_rng(11).standard_normal(y.shape).astype(dtype)
    gx, gw, gb = _cpu_backward(gy, x, w, case)
    x64, w64, gy64 = (a.astype(np.float64) for a in (x, w, gy))
    lhs = np.vdot(np_conv2d(x64, w64, None, case.stride, _pads(case), case.dilation,
                            case.groups), gy64)
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(np.vdot(x64, gx), lhs, rtol=rtol)
    np.testing.assert_allclose(np.vdot(w64, gw), lhs, rtol=rtol)
    # each tap alone: grad_w[c, 0, a, b] = <gy[:, c], x[:, c] shifted by (a, b)>
    t, _, l, _ = _pads(case)
    Ho, Wo = gy.shape[2:]
    xp = np.pad(x64, ((0, 0), (0, 0), (t, t + 2), (l, l + 2)))
    want = np.array([[[np.vdot(gy64[:, c], xp[:, c, a:a + Ho, e:e + Wo]) for e in range(3)]
                      for a in range(3)] for c in range(case.x[1])])[:, None]
    np.testing.assert_allclose(gw, want, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gb, gy64.sum(axis=(0, 2, 3)), rtol=rtol, atol=rtol)
    gx_only_w = _cpu_backward(gy, x, w, case, needs_input_grad=False, has_bias=False)
    assert gx_only_w[0] is None and gx_only_w[2] is None
    np.testing.assert_array_equal(gx_only_w[1], gw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DW3, ids=lambda c: c.id)
def test_depthwise3x3_matches_torch(case, dtype, dw3_cap, torch):
    x, w, b = _inputs(case, dtype)
    y = _cpu_forward(x, w, b, case)
    gy = np.random.default_rng(12).standard_normal(y.shape).astype(dtype)
    gx, gw, gb = _cpu_backward(gy, x, w, case)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **_args(case))
    ty.backward(torch.tensor(gy))
    t = tol(dtype) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    for name, got, want in [("y", y, ty), ("gx", gx, tx.grad), ("gw", gw, tw.grad),
                            ("gb", gb, tb.grad)]:
        np.testing.assert_allclose(got, want.detach().numpy(), **t, err_msg=f"{case.id} {name}")


def test_depthwise3x3_levels_agree():
    """Every level computes the same conv: the results agree to rounding."""
    from convkit.cpu import _conv
    case = Case("dw3_levels", (2, 5, 11, 45), (5, 1, 3, 3), padding=(1, 1), groups=5)
    x, w, b = _inputs(case, np.float32)
    gy = np.random.default_rng(13).standard_normal((2, 5, 11, 45)).astype(np.float32)
    runs = []
    old = _conv.depthwise3x3_cap(3)
    try:
        for cap in (1, 2, 3):
            _conv.depthwise3x3_cap(cap)
            runs.append((_cpu_forward(x, w, b, case),) + tuple(_cpu_backward(gy, x, w, case)))
    finally:
        _conv.depthwise3x3_cap(old)
    for run in runs[1:]:
        for a, c in zip(run, runs[0]):
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


def test_depthwise3x3_short_rows_take_general_kernels():
    """Rows shorter than one vector (here 2 float64 outputs) and channel multipliers run the
    general depthwise kernels, with the same results as the oracle."""
    from convkit.cpu import _conv
    assert _conv.depthwise3x3_level(8, 1) == 0
    for case in (Case("dw3_w1", (2, 3, 4, 1), (3, 1, 3, 3), padding=(1, 1), groups=3),
                 Case("dw3_pad0_wo1", (2, 3, 4, 3), (3, 1, 3, 3), groups=3)):
        x, w, b = _inputs(case, np.float64)
        y = _cpu_forward(x, w, b, case)
        np.testing.assert_allclose(y, np_conv2d(x, w, b, case.stride, _pads(case),
                                                case.dilation, case.groups), **tol(np.float64))
        gy = np.random.default_rng(14).standard_normal(y.shape)
        gx, gw, gb = _cpu_backward(gy, x, w, case)
        lhs = np.vdot(y - b.reshape(1, -1, 1, 1), gy)
        np.testing.assert_allclose(np.vdot(x, gx), lhs, rtol=1e-10)
        np.testing.assert_allclose(np.vdot(w, gw), lhs, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise3x3_inf_in_overlapped_tail(dtype, dw3_cap):
    """The shifted last block of a row re-reads columns the block before already summed; those
    lanes must add exactly nothing -- also where x is inf (0 * inf would be NaN)."""
    case = Case("dw3_inf", (1, 1, 3, 17), (1, 1, 3, 3), padding=(1, 1), groups=1)
    x, w, b = _inputs(case, dtype)
    w = np.abs(w) + dtype(0.5)
    x[0, 0, 1, 15] = np.inf            # in every level's shifted tail block, for every tap
    gy = np.ones((1, 1, 3, 17), dtype)
    c = Case("dw3_inf_dw", (1, 2, 3, 17), (2, 1, 3, 3), padding=(1, 1), groups=2)
    x2 = np.concatenate([x, x], axis=1)          # groups = C = 2: the depthwise path
    w2 = np.concatenate([w, w], axis=0)
    gy2 = np.concatenate([gy, gy], axis=1)
    assert _dw3_level(c, dtype) >= 1
    y = _cpu_forward(x2, w2, None, c)
    assert np.isposinf(y[0, :, :, 14:]).all() and np.isfinite(y[0, :, :, :14]).all()
    gx, gw, gb = _cpu_backward(gy2, x2, w2, c)
    assert np.isposinf(gw).all()
    np.testing.assert_allclose(gb, [51, 51])
    assert np.isfinite(gx).all()


# ----------------------------------------------------------------------- workspace
@pytest.fixture
def workspace_limit():
    old = convkit.get_workspace_limit()
    yield convkit.set_workspace_limit
    convkit.set_workspace_limit(old)


@pytest.mark.parametrize("limit", [80_000, 12_000, 3_000],
                         ids=["images_per_chunk", "rows_per_chunk", "one_row_per_chunk"])
def test_workspace_cap_works_in_pieces(workspace_limit, limit):
    # 3x3, C=4, 12x10 output: one image's columns are 36*120*8 = 34560 bytes, one row 2880:
    # chunks of 2 images, of 4 output rows, of 1 output row
    case = Case("chunked", (5, 4, 12, 10), (6, 4, 3, 3), padding=(1, 1))
    _check_under_limit(case, workspace_limit, limit, seed=5)


def _check_under_limit(case, workspace_limit, limit, seed):
    """A float64 3x3/pad-1 conv under the workspace ``limit`` gives the unlimited run's values
    (and the reference forward); returns x, w, b, gy, y, grads for further checks."""
    x, w, b = _inputs(case, np.float64)
    y0 = _cpu_forward(x, w, b, case)
    gy = np.random.default_rng(seed).standard_normal(y0.shape)
    g0 = _cpu_backward(gy, x, w, case)
    workspace_limit(limit)
    y1 = _cpu_forward(x, w, b, case)
    g1 = _cpu_backward(gy, x, w, case)
    np.testing.assert_allclose(y1, y0, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(y1, np_conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1),
                               **tol(np.float64))
    for a, c in zip(g1, g0):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
    return x, w, b, gy, y1, g1


def test_workspace_cap_winograd_in_pieces(workspace_limit):
    """Winograd (3x3, >= 16 channels): one row of 2x2 tiles needs 16*(C+F)*tw*8 = 20480 bytes
    here, so a 50 kB cap runs one tile row per task; forward and grad_x still match."""
    case = Case("winograd_chunked", (3, 16, 12, 10), (16, 16, 3, 3), padding=(1, 1))
    x, w, b = _inputs(case, np.float64)
    y0 = _cpu_forward(x, w, b, case)
    gy = np.random.default_rng(7).standard_normal(y0.shape)
    g0 = _cpu_backward(gy, x, w, case)
    workspace_limit(50_000)
    np.testing.assert_allclose(_cpu_forward(x, w, b, case), y0, rtol=1e-13, atol=1e-13)
    for a, c in zip(_cpu_backward(gy, x, w, case), g0):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y0, np_conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1),
                               **tol(np.float64))


@pytest.mark.parametrize("limit", [12_000, 9_000],
                         ids=["batch_in_blocks", "batch_too_big_falls_back"])
def test_workspace_cap_small_maps(workspace_limit, limit):
    """Small maps, float64: per image the forward needs ((C*9 + F)*16 + C*36)*8 = 6528 bytes,
    grad_x C*(9*16 + 36)*8 = 5760 and grad_weight 1440 per channel, after grad_y side by side
    (3840 bytes).  12 kB runs one image per forward / grad_x task and grad_weight over blocks
    of 2 images (summed in order); 9 kB leaves grad_x no room, so the backward takes the
    per-image path.  Same values either way."""
    case = Case("small_chunked", (5, 4, 4, 4), (6, 4, 3, 3), padding=(1, 1))
    x, w, b, gy, y1, g1 = _check_under_limit(case, workspace_limit, limit, seed=9)
    lhs = np.vdot(y1 - b.reshape(1, -1, 1, 1), gy)
    np.testing.assert_allclose(np.vdot(x, g1[0]), lhs, rtol=1e-10)
    np.testing.assert_allclose(np.vdot(w, g1[1]), lhs, rtol=1e-10)


def test_workspace_cap_small_maps_grad_weight_only(workspace_limit):
    """Small maps, needs_input_grad=False: 5400 bytes leave room for grad_y side by side (3840)
    and one channel of one image (1440) but not for grad_x's piece (5760): grad_weight alone
    still runs batch-wide, one channel and one image per block."""
    case = Case("small_gw_only", (5, 4, 4, 4), (6, 4, 3, 3), padding=(1, 1))
    x, w, _ = _inputs(case, np.float64)
    gy = np.random.default_rng(10).standard_normal((5, 6, 4, 4))
    want = _cpu_backward(gy, x, w, case)[1]
    workspace_limit(5400)
    gx, gw, _ = _cpu_backward(gy, x, w, case, needs_input_grad=False)
    assert gx is None
    np.testing.assert_allclose(gw, want, rtol=1e-12, atol=1e-12)
    y = np_conv2d(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    np.testing.assert_allclose(np.vdot(w, gw), np.vdot(y, gy), rtol=1e-10)


def test_workspace_cap_grad_weight_only(workspace_limit):
    """needs_input_grad=False needs only one tap row per output row (5*16*8 = 640 bytes here),
    less than grad_x's piece (25*16*8 = 3200): a 2000-byte cap still works."""
    case = Case("gw_only", (2, 8, 20, 20), (8, 8, 5, 5))
    x, w, _ = _inputs(case, np.float64)
    gy = np.random.default_rng(8).standard_normal((2, 8, 16, 16))
    want = _cpu_backward(gy, x, w, case)[1]
    workspace_limit(2000)
    gx, gw, _ = _cpu_backward(gy, x, w, case, needs_input_grad=False)
    assert gx is None
    np.testing.assert_allclose(gw, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(MemoryError, match="limit of 2000 bytes"):
        _cpu_backward(gy, x, w, case)


def test_workspace_cap_below_the_dot_gradient_falls_back(workspace_limit):
    """float32, 147 taps: the dot-product weight gradient needs its phase planes, partial sums
    and grad_y block per thread (about 160 kB here); under a 60 kB cap the im2col GEMM path
    (one tap row per output row) computes the same gradient."""
    from convkit.cpu import conv as cc
    case = CASE["dot_stem"]
    x, w, _ = _inputs(case, np.float32)
    gy = np.random.default_rng(11).standard_normal((2, 13, 35, 33)).astype(np.float32)
    want = _cpu_backward(gy, x, w, case, needs_input_grad=False)
    workspace_limit(60_000)
    assert _dot_plan(case) is None
    gx, gw, gb = _cpu_backward(gy, x, w, case, needs_input_grad=False)
    assert gx is None
    np.testing.assert_allclose(gw, want[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, want[2], rtol=1e-5, atol=1e-4)
    if cc._OWN_SGEMM:
        workspace_limit(1 << 28)
        assert _dot_plan(case) is not None


def test_workspace_stays_under_a_lowered_cap(workspace_limit):
    from convkit.cpu import conv as cpu_conv

    case = Case("cap", (4, 8, 16, 16), (8, 8, 3, 3), padding=(1, 1))
    x, w, b = _inputs(case, np.float64)
    y0 = _cpu_forward(x, w, b, case)           # caches a workspace of up to 512 KiB per thread
    workspace_limit(20_000)
    np.testing.assert_allclose(_cpu_forward(x, w, b, case), y0, rtol=1e-13, atol=1e-13)
    kept = cpu_conv._tls.ws[("cols", np.dtype(np.float64))]
    assert kept.nbytes <= 20_000


def test_workspace_cap_below_one_row_raises(workspace_limit):
    case = Case("big_row", (1, 16, 8, 40), (4, 16, 3, 3), padding=(1, 1))
    x, w, b = _inputs(case, np.float32)
    workspace_limit(1000)      # one output row: 16*9*40*4 = 23040 bytes + a (W+1)*4 row scratch
    with pytest.raises(MemoryError, match=r"23204 bytes.*limit of 1000 bytes"):
        _cpu_forward(x, w, b, case)
    gy = np.ones((1, 4, 8, 40), np.float32)
    with pytest.raises(MemoryError, match="1000 bytes"):
        _cpu_backward(gy, x, w, case)


def test_pointwise_needs_no_workspace_and_depthwise_planes_count(workspace_limit):
    """1x1 stride-1 convs and 3x3 depthwise convs with padding 1 read x in place: a 1-byte
    workspace cap does not stop them (it does stop the same 1x1 conv at stride 2, which needs
    im2col).  Other depthwise convs' padded planes
    count against the cap like every other scratch buffer (DESIGN.md, "Errors"): under it they
    run in im2col's pieces, and where not even those fit, a MemoryError names the limit."""
    workspace_limit(1)
    for case in (CASE["pointwise"], CASE["pointwise_grouped"], CASE["depthwise"]):
        x, w, b = _inputs(case, np.float64)
        np.testing.assert_allclose(
            _cpu_forward(x, w, b, case),
            np_conv2d(x, w, b, case.stride, _pads(case), case.dilation, case.groups),
            **tol(np.float64))
        gy = np.ones(_cpu_forward(x, w, b, case).shape)
        _cpu_backward(gy, x, w, case)
    for case in ("pointwise_stride2", "depthwise_mult2"):
        x, w, b = _inputs(CASE[case], np.float64)
        with pytest.raises(MemoryError, match="limit of 1 bytes"):
            _cpu_forward(x, w, b, CASE[case])


def _dot_plan(case):
    from convkit.cpu import conv as cc
    x = np.empty(case.x, np.float32)
    w = np.empty(case.w, np.float32)
    pads = _pads(case)
    *_, KH, KW, Ho, Wo = cc._geometry(x, w, case.stride, pads, case.dilation)
    return cc._plan_weight_dot(x, w, case.groups, cc._is_pointwise(KH, KW, case.stride, pads),
                               Ho, Wo, case.stride, case.dilation, 2)


@pytest.mark.parametrize("case", [c for c in CASES if c.id.startswith("dot_")] + [
    Case("stem_224", (8, 3, 224, 224), (64, 3, 7, 7), stride=(2, 2), padding=(3, 3)),
    Case("lenet_c1", (64, 1, 28, 28), (6, 1, 5, 5), padding=(2, 2))], ids=lambda c: c.id)
def test_dot_weight_gradient_is_planned(case):
    """The dot cases above (and the suite's stem and lenet layers) take that path wherever the
    own float32 GEMM runs, so the value tests check it rather than a fallback."""
    from convkit.cpu import conv as cc
    if not cc._OWN_SGEMM:
        assert _dot_plan(case) is None
        return
    rows, kr, fchunk, groups_n, floats = _dot_plan(case)
    assert 1 <= kr <= rows and fchunk % 8 == 0 and 1 <= groups_n <= case.x[0]


def test_dot_weight_gradient_skips_wide_tap_sets():
    """Above 320 taps per filter (64 -> 128 3x3: 576), above 160 in a grouped conv (4 groups of
    32 channels: 288) and for depthwise convs, the gradient stays on its other paths."""
    assert _dot_plan(Case("wide_taps", (2, 64, 30, 30), (128, 64, 3, 3), stride=(2, 2),
                          padding=(1, 1))) is None
    assert _dot_plan(Case("grouped_288", (2, 128, 20, 20), (128, 32, 3, 3), padding=(1, 1),
                          groups=4)) is None
    assert _dot_plan(Case("depthwise", (2, 16, 20, 20), (16, 1, 3, 3), padding=(1, 1),
                          groups=16)) is None


# ----------------------------------------------------------------------- threads, determinism
BIG = [Case("big_gemm", (4, 16, 20, 20), (24, 16, 3, 3), padding=(1, 1)),
       Case("big_pointwise", (4, 64, 16, 16), (40, 64, 1, 1)),
       Case("big_depthwise", (4, 64, 32, 32), (64, 1, 3, 3), padding=(1, 1), groups=64),
       Case("big_grouped", (3, 32, 16, 16), (32, 8, 3, 3), padding=(1, 1), groups=4),
       Case("big_small_maps", (8, 16, 4, 4), (24, 16, 3, 3), padding=(1, 1)),
       Case("big_small_maps_8x8", (16, 16, 8, 8), (16, 16, 3, 3), padding=(1, 1)),  # blocks
       Case("big_small_maps_s2", (6, 8, 8, 8), (16, 8, 3, 3), stride=(2, 2), padding=(1, 1)),
       Case("big_small_maps_grouped", (6, 8, 5, 5), (12, 4, 3, 3), padding=(1, 1), groups=2),
       Case("big_dot_stem", (4, 3, 64, 64), (24, 3, 7, 7), stride=(2, 2), padding=(3, 3)),
       Case("big_dot_grouped", (4, 32, 24, 24), (40, 4, 3, 3), padding=(1, 1), groups=8)]
# (each is above the size below which a call runs on one thread, so both thread counts run)


def _fwd_bwd(case, dtype=np.float32):
    x, w, b = _inputs(case, dtype)
    y = _cpu_forward(x, w, b, case)
    gy = np.random.default_rng(6).standard_normal(y.shape).astype(dtype)
    return (y,) + tuple(_cpu_backward(gy, x, w, case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", BIG, ids=lambda c: c.id)
def test_deterministic_and_thread_count_independent(case, dtype):
    """float64 runs its GEMMs on BLAS, float32 on the own kernel where the CPU has AVX-512F
    (with CONVKIT_DISABLE_AVX512=1, on BLAS too).  3 threads on a 2-core machine still take
    the 3-thread task splits (a grad_x row blocking and BLAS block widths that followed the
    thread count gave other bits there)."""
    convkit.set_num_threads(2)
    first = _fwd_bwd(case, dtype)
    again = _fwd_bwd(case, dtype)
    convkit.set_num_threads(1)
    serial = _fwd_bwd(case, dtype)
    convkit.set_num_threads(3)
    three = _fwd_bwd(case, dtype)
    for a, b_, c, d in zip(first, again, serial, three):
        np.testing.assert_array_equal(a, b_)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)


def test_two_python_threads_get_serial_results():
    want = {c.id: _fwd_bwd(c) for c in BIG}
    got, errors = {}, []

    def work(cases):
        try:
            for _ in range(3):
                for c in cases:
                    got.setdefault(c.id, []).append(_fwd_bwd(c))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(BIG,)),
               threading.Thread(target=work, args=(BIG[::-1],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for cid, runs in got.items():
        assert len(runs) == 6
        for run in runs:
            for a, b_ in zip(run, want[cid]):
                np.testing.assert_array_equal(a, b_, err_msg=cid)


def test_blas_pin_holds_in_any_python_thread():
    """threadpoolctl lets only the first Python thread that set a pthreads OpenBLAS's thread
    count change it again; convkit's pin must hold in every thread (a conv in a worker thread
    otherwise ran its GEMMs on OpenBLAS's whole pool, with other bits)."""
    from convkit._config import _blas_thread_calls, blas_single_thread

    calls = _blas_thread_calls()
    if not calls:
        pytest.skip("no BLAS whose thread count convkit can read")
    with blas_single_thread:                    # the main thread pins first
        pass
    seen = []

    def work():
        with blas_single_thread:
            seen.append([get() for get, _ in calls])

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [[1] * len(calls)]


def test_blas_pin_released_only_for_its_sole_holder():
    """A big GEMM inside a Sequential's pin gets BLAS's own thread counts back, and the pin
    again after; while another thread holds the pin (its conv GEMMs must stay on one BLAS
    thread for their bits), released() leaves the pin in place."""
    from convkit._config import _blas_thread_calls, blas_single_thread

    calls = _blas_thread_calls()
    if not calls:
        pytest.skip("no BLAS whose thread count convkit can read")
    free = [get() for get, _ in calls]
    with blas_single_thread:
        assert [get() for get, _ in calls] == [1] * len(calls)
        with blas_single_thread.released():
            assert [get() for get, _ in calls] == free
        assert [get() for get, _ in calls] == [1] * len(calls)
        inside, go = threading.Event(), threading.Event()

        def hold():
            with blas_single_thread:
                inside.set()
                go.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        assert inside.wait(10)
        with blas_single_thread.released():
            assert [get() for get, _ in calls] == [1] * len(calls)
        go.set()
        t.join()
    assert [get() for get, _ in calls] == free
    with blas_single_thread.released():         # no pin held: nothing to release
        assert [get() for get, _ in calls] == free


def test_sequential_pins_blas_once_per_pass(monkeypatch):
    """Sequential enters the BLAS pin once around its layers, so the ops' own pins are nested
    counts: 2 outer pins per LeNet5 training step (13 before), same results."""
    from convkit import _config
    from convkit.models import build_classifier

    if not _config._blas_thread_calls():
        pytest.skip("no BLAS whose thread count convkit can read")
    outer = [0]
    orig = _config._blas_thread_calls
    monkeypatch.setattr(_config, "_blas_thread_calls",
                        lambda: (outer.__setitem__(0, outer[0] + 1), orig())[1])
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 8, 8), dtype=np.float32)
    with convkit.use_backend("cpu"):
        model = build_classifier("lenet5", dtype=np.float32, seed=0)
        y = model.forward(x)
        model.backward(np.ones_like(y))
    assert outer[0] == 4        # enter + exit of the forward's pin and of the backward's
