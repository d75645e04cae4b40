"""The weight gradient by direct dot products (conv_plan "weight_direct", csrc/wdirect.h:
float32 on BLAS machines with AVX2 + FMA, groups 1, stride 1, one input channel, a kernel of at
least tuning.WDIRECT_MIN_TAPS taps at most 8 columns wide -- LeNet5's first layer) against torch
float64: whole 8-column chunks and a masked last chunk, asymmetric and no padding, maps above
the batch paths'; the same bits on 1, 2, 3, 8 and 16 threads; NaN / inf element for element
(the operands are checked first: the lanes past the output's width multiply zeros of grad_y by
x); the plan rule and the workspace limit; the kernel's checks.  The same layers' batch forward
on csrc/wdirect.h gives the batch GEMM's bits (csrc/fgemm.h), with and without bias, on any
team, per image whatever the batch.

On a CPU where the plan does not pick weight_direct (AVX-512, no AVX2) the value tests check the
path the plan gives.
"""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])
# the plan takes weight_direct (AVX2 machines without the own AVX-512 GEMM, and half-rate
# AVX-512 CPUs beside it: tuning.HALF_RATE_AVX2); its batch forward runs there only without the
# own GEMM (the forward it replaces is fgemm.h's)
DIRECT = ok and P.avx2_algo(cc._caps(), "weight_direct")
DIRECT_FWD = ok and cc._ROWGEMM and (not cc._OWN_SGEMM or DIRECT)

# (x shape, filters, kernel, padding (rows, columns), needs_input_grad)
CASES = {
    "lenet_c1_8x8": ((64, 1, 8, 8), 6, (5, 5), (2, 2), False),
    "lenet_c1_8x8_gx": ((9, 1, 8, 8), 6, (5, 5), (2, 2), True),
    "wo_7_tail": ((5, 1, 7, 7), 6, (5, 5), (2, 2), True),
    "lenet_c1_28": ((3, 1, 28, 28), 6, (5, 5), (2, 2), False),
    "wo_13_k5x7": ((4, 1, 11, 13), 5, (5, 7), (1, 3), False),
    "no_pad_k8": ((2, 1, 20, 29), 3, (4, 8), (0, 0), False),
}

# the maps above the batch paths': weight_dot's where the own AVX-512 GEMM runs
OWN_WEIGHT_DOT = {"lenet_c1_28", "wo_13_k5x7", "no_pad_k8"}


def _inputs(name, seed=61):
    xs, F_, ks, pd, gx = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((F_, 1) + ks) / np.sqrt(ks[0] * ks[1])
    Ho, Wo = xs[2] + 2 * pd[0] - ks[0] + 1, xs[3] + 2 * pd[1] - ks[1] + 1
    gy = rng.standard_normal((xs[0], F_, Ho, Wo))
    return x, w, gy, pd, gx


def _torch_grads(torch, x, w, gy, pd):
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(tx, tw, tb, 1, pd).backward(torch.tensor(gy))
    return tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def _grads(x, w, gy, pd, gx):
    with convkit.use_backend("cpu"):
        return convkit.conv2d_backward(gy, x, w, 1, pd, needs_input_grad=gx)


def _f32(*a):
    return tuple(np.ascontiguousarray(v, np.float32) for v in a)


def _algo(x, w, pd, gx):
    return cc._plan(x, w, (1, 1), (pd[0], pd[0], pd[1], pd[1]), (1, 1), 1, gx)[3].grad_weight.algo


@pytest.mark.parametrize("name", list(CASES))
def test_weight_direct_matches_torch_float64_on_any_team(torch, name):
    x, w, gy, pd, gx = _inputs(name)
    gx64, gw64, gb64 = _torch_grads(torch, x, w, gy, pd)
    x32, w32, gy32 = _f32(x, w, gy)
    if DIRECT:      # (beside the own GEMM, weight_dot goes first on the maps it takes)
        want = "weight_dot" if cc._OWN_SGEMM and name in OWN_WEIGHT_DOT else "weight_direct"
        assert _algo(x32, w32, pd, gx) == want
    runs = {}
    try:
        for nt in (1, 2, 3, 8, 16):
            convkit.set_num_threads(nt)
            runs[nt] = _grads(x32, w32, gy32, pd, gx)
    finally:
        convkit.set_num_threads(None)
    gxs, gw, gb = runs[1]
    for nt, (gx_n, gw_n, gb_n) in runs.items():
        np.testing.assert_array_equal(gw_n, gw, err_msg=f"{nt} threads")
        np.testing.assert_array_equal(gb_n, gb, err_msg=f"{nt} threads")
    scale = np.abs(gw64).max()
    np.testing.assert_allclose(gw, gw64, rtol=0, atol=2e-6 * scale * np.sqrt(gy[:, 0].size))
    assert np.abs(gw - gw64).max() / scale < 1e-5
    np.testing.assert_allclose(gb, gb64, rtol=1e-5, atol=1e-4)
    if gx:
        np.testing.assert_allclose(gxs, gx64, rtol=1e-4, atol=1e-4 * np.abs(gx64).max())
    else:
        assert gxs is None


def _same_nonfinite(got, want, what):
    for test in (np.isnan, np.isposinf, np.isneginf):
        bad = np.argwhere(test(got) != test(want))
        assert not len(bad), f"{what}: {test.__name__} differs from torch at {bad[:5].tolist()}"


@pytest.mark.parametrize("where", ["x", "grad_y", "weight"])
@pytest.mark.parametrize("name", ["wo_7_tail", "wo_13_k5x7"])
def test_weight_direct_nonfinite_element_for_element(torch, name, where):
    """A NaN / inf in x past a chunk's last output column would meet a zero of grad_y in the
    masked lanes (0 * inf = NaN) where torch's sums never read it: the operands are checked
    first and such calls take the exact path -- torch's pattern element for element."""
    x, w, gy, pd, gx = _inputs(name, seed=62)
    if where == "x":            # a row's last column (read by the masked lanes only), and more
        x[1, 0, 3, -1] = np.inf
        x[0, 0, 0, 0] = np.nan
    elif where == "grad_y":
        gy[2, 1, 1, -1] = -np.inf
    else:
        w[0, 0, 1, 1] = np.nan
    gx64, gw64, gb64 = _torch_grads(torch, x, w, gy, pd)
    gxs, gw, gb = _grads(*_f32(x, w, gy), pd, gx)
    _same_nonfinite(gw, gw64, f"grad_weight, {where}")
    _same_nonfinite(gb, gb64, f"grad_bias, {where}")
    fin = np.isfinite(gw64)
    np.testing.assert_allclose(gw[fin], gw64[fin], rtol=1e-4, atol=1e-4 * np.abs(gw64[fin]).max())


def test_weight_direct_rule():
    """The rule: the layers it names, nothing else (several channels, 3x3, strides, dilation,
    groups, 9 columns, float64, the AVX-512 GEMM, no AVX2, a limit below its padded input)."""
    blas = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True, fixed_sgemm=True)

    def gw(xs, ws, caps=blas, stride=1, pad=2, dil=1, groups=1, dtype=np.float32,
           limit=256 << 20, gx=False):
        s = P.ConvShape.of(xs, ws, (stride,) * 2, (pad,) * 4, (dil,) * 2, groups)
        return P.plan_conv(s, dtype, 2, caps, limit, gx).grad_weight
    st = gw((64, 1, 8, 8), (6, 1, 5, 5))
    assert st.algo == "weight_direct" and st.params["floats"] == 64 * 12 * 12, st
    assert gw((64, 1, 8, 8), (6, 1, 5, 5), gx=True).algo == "weight_direct"   # gx: batch
    assert gw((8, 1, 28, 28), (6, 1, 5, 5)).algo == "weight_direct"
    assert gw((8, 1, 28, 28), (6, 1, 5, 5), gx=True).algo != "weight_direct"  # im2col does both
    assert tuning.WDIRECT_MAX_CHANNELS == 1
    for kw in (dict(), dict(stride=2), dict(dil=2, pad=4), dict(dtype=np.float64),
               dict(caps=P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)),
               dict(caps=P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)),
               dict(limit=64 * 12 * 12 * 4 - 4)):
        shape = ((64, 2, 8, 8), (6, 2, 5, 5)) if not kw else ((64, 1, 8, 8), (6, 1, 5, 5))
        assert gw(*shape, **kw).algo != "weight_direct", kw
    assert gw((64, 1, 8, 8), (16, 1, 3, 3), pad=1).algo != "weight_direct"   # the ResNet stem
    assert gw((4, 1, 12, 12), (6, 1, 3, 9), pad=0).algo != "weight_direct"   # 9 columns
    assert gw((4, 2, 12, 12), (6, 1, 5, 5), groups=2).algo != "weight_direct"
    # beside the own AVX-512 GEMM: on a half-rate CPU (Zen 4: tuning.HALF_RATE_AVX2), not on a
    # full-rate one, and not without AVX2 + FMA
    half = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True,
                      avx512_full_rate=False)
    assert gw((64, 1, 8, 8), (6, 1, 5, 5), caps=half).algo == "weight_direct"
    assert gw((128, 1, 8, 8), (6, 1, 5, 5), caps=half, gx=True).algo == "weight_direct"
    for caps in (P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True,
                            fixed_sgemm=True, avx512_full_rate=True),
                 P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=False,
                            fixed_sgemm=True, avx512_full_rate=False)):
        assert gw((64, 1, 8, 8), (6, 1, 5, 5), caps=caps).algo != "weight_direct", caps


@pytest.mark.skipif(not DIRECT, reason="weight_direct runs on AVX2 machines without the own "
                                       "AVX-512 GEMM and on half-rate AVX-512 CPUs")
def test_weight_direct_kernel_checks_its_arguments():
    from convkit.cpu import _conv_wdirect as wd
    x = np.zeros((2, 1, 8, 8), np.float32)
    gy = np.zeros((2, 6, 8, 8), np.float32)
    gw = np.zeros((6, 1, 5, 5), np.float32)
    n = wd.padded_floats(2, 1, 8, 8, 5, 5)
    with pytest.raises(ValueError, match="too small"):
        wd.conv2d_grad_weight_direct(gy, x, gw, np.zeros(n - 1, np.float32), 2, 2, 1)
    with pytest.raises(ValueError, match="KW <= 8"):
        wd.conv2d_grad_weight_direct(gy, x, np.zeros((6, 1, 5, 9), np.float32),
                                     np.zeros(4 * n, np.float32), 2, 2, 1)
    with pytest.raises(ValueError, match="do not match"):
        wd.conv2d_grad_weight_direct(gy[:1], x, gw, np.zeros(n, np.float32), 2, 2, 1)
    gw[...] = np.nan
    wd.conv2d_grad_weight_direct(gy, x, gw, np.zeros(n, np.float32), 2, 2, 1)
    assert (gw == 0).all()


@pytest.mark.parametrize("shape", [((64, 1, 8, 8), (6, 1, 5, 5), 2), ((5, 1, 6, 7), (4, 1, 5, 5), 2),
                                   ((3, 1, 8, 8), (3, 1, 5, 7), (2, 3)),
                                   ((2, 1, 8, 8), (16, 1, 5, 5), 0)],
                         ids=["lenet_c1", "tail_6x7", "k5x7", "no_pad"])
def test_direct_forward_gives_the_batch_gemm_bits(monkeypatch, shape):
    """The batch forward of weight_direct's layers runs on csrc/wdirect.h where the batch GEMM
    is csrc/fgemm.h: each output the same FMA chain over the taps in order, then the bias --
    the GEMM's bits (bias or none, any team), and each image's bits whatever its batch."""
    xs, ws, pd = shape
    rng = np.random.default_rng(63)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    pad4 = (pd,) * 4 if np.isscalar(pd) else (pd[0], pd[0], pd[1], pd[1])
    s, _, _, plan = cc._plan(x, w, (1, 1), pad4, (1, 1), 1)
    assert plan.forward.algo == "batch"
    assert cc._direct_forward(x, w, (1, 1), s) == (DIRECT_FWD and cc._FIXED_SGEMM)

    def runs():
        out = []
        try:
            for nt in (1, 2, 3, 8):
                convkit.set_num_threads(nt)
                with convkit.use_backend("cpu"):
                    out += [convkit.conv2d_forward(x, w, bb, 1, pd) for bb in (b, None)]
                    out.append(convkit.conv2d_forward(x[1:2], w, b, 1, pd))
        finally:
            convkit.set_num_threads(None)
        return out
    direct = runs()
    monkeypatch.setattr(cc, "_DIRECT_FWD", False)
    assert not cc._direct_forward(x, w, (1, 1), s)
    gemm = runs()
    for a, g in zip(direct, gemm):
        np.testing.assert_array_equal(a, g)
    np.testing.assert_array_equal(direct[2], direct[0][1:2])
    with convkit.use_backend("numpy"):
        ref = convkit.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                     b.astype(np.float64), 1, pd)
    np.testing.assert_allclose(direct[0], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_direct_forward_beside_the_own_gemm_up_to_one_k_block():
    """Beside the own AVX-512 GEMM the direct forward gives its bits only while the taps fit
    one of its k blocks (csrc/sgemm.h CK_KC = 192): 25 x 8 = 200 taps stay on the GEMM."""
    for ws, want in (((3, 1, 24, 8), True), ((3, 1, 25, 8), False)):
        x = np.zeros((2, 1, 30, 30), np.float32)
        w = np.zeros(ws, np.float32)
        s = cc._plan(x, w, (1, 1), (0, 0, 0, 0), (1, 1), 1)[0]
        expect = DIRECT_FWD and cc._FIXED_SGEMM and (want or not cc._OWN_SGEMM)
        assert cc._direct_forward(x, w, (1, 1), s) == expect, ws


@pytest.mark.skipif(not DIRECT, reason="weight_direct runs on AVX2 machines without the own "
                                       "AVX-512 GEMM and on half-rate AVX-512 CPUs")
def test_direct_forward_kernel_on_small_maps():
    """The batch forward's kernel (the "direct" forward's, tests/test_cpu_direct_forward.py
    checks its arguments) at each level on an 8x8 map, padding 2: 25 taps inside, 9 in a
    corner."""
    from convkit.cpu import _conv_wdirect as wd
    x = np.ones((2, 1, 8, 8), np.float32)
    w = np.ones((6, 1, 5, 5), np.float32)
    b = np.full(6, 0.5, np.float32)
    n = wd.direct_floats(1, 8, 8, 5, 5)
    for level in range(2, wd.direct_level() + 1):
        y = np.zeros((2, 6, 8, 8), np.float32)
        wd.conv2d_forward_flat(x, w, b, True, y, np.zeros(n, np.float32), 2, 2, level, 1)
        assert y[0, 0, 3, 3] == 25.5 and y[0, 0, 0, 0] == 9.5 and y[1, 5, 7, 7] == 9.5
