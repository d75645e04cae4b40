"""The direct forward (conv_plan "direct", csrc/wdirect.h ck_direct_forward: float32 on BLAS
machines with AVX2 + FMA and on half-rate AVX-512 CPUs, groups 1, stride 1, dilation 1, one
input channel, maps above the batch paths' -- lenet_c1) against torch float64: batch 1, odd and
asymmetric sizes, padding 0 to 3, 1 to 16 filters (whole tiles of 6 and the short last one),
position counts that end in a partial vector and in a partial tile, bias or none; the same bits
as the exact im2col plan (each output the GEMM's chain over the taps, then the bias) at both
vector levels and on 1, 2, 3, 8 and 16 threads; NaN / inf element for element (no operand check:
every kept output reads its own window only); the other chain (the bias first / last) as
accurate; the rule, the workspace limit and the kernel's checks.  The kernel is called at each level the CPU runs, whatever the plan picks.
"""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])
if ok:
    from convkit.cpu import _conv_wdirect as wd
    LEVELS = [lv for lv in (2, 3) if lv <= wd.direct_level()]
else:
    LEVELS = []
DIRECT = ok and P.direct_allowed(cc._caps())

# (x shape, filters, kernel (KH, KW), padding (top, bottom, left, right))
CASES = {
    "lenet_c1": ((4, 1, 28, 28), 6, (5, 5), (2, 2, 2, 2)),
    "batch_1": ((1, 1, 28, 28), 6, (5, 5), (2, 2, 2, 2)),
    "odd_13x9_k5x3": ((3, 1, 13, 9), 7, (5, 3), (0, 0, 1, 1)),     # 9 x 9: 81 positions
    "pad_3_one_filter": ((2, 1, 11, 17), 1, (3, 5), (3, 3, 3, 3)),
    "asym_pad_13_filters": ((2, 1, 15, 10), 13, (5, 5), (1, 3, 0, 2)),
    "no_pad_16_filters": ((2, 1, 30, 30), 16, (5, 5), (0, 0, 0, 0)),
    "k7x2_5_filters": ((3, 1, 12, 20), 5, (7, 2), (2, 1, 3, 0)),
}


def _inputs(name, seed=71):
    xs, F_, ks, pad = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal((F_, 1) + ks) / np.sqrt(ks[0] * ks[1])).astype(np.float32)
    b = rng.standard_normal(F_).astype(np.float32)
    return x, w, b, pad


def _torch64(torch, x, w, b, pad):
    pt, pb, pl, pr = pad
    tx = torch.nn.functional.pad(torch.tensor(x, dtype=torch.float64), (pl, pr, pt, pb))
    return torch.nn.functional.conv2d(tx, torch.tensor(w, dtype=torch.float64),
                                      None if b is None else torch.tensor(b, dtype=torch.float64)
                                      ).numpy()


def _kernel(x, w, b, pad, level, threads, bias_first=None):
    """The kernel's y; bias_first: as the plan (the chains of the GEMM it replaces)."""
    bias_first = not cc._OWN_SGEMM if bias_first is None else bias_first
    N, F_ = x.shape[0], w.shape[0]
    Ho = x.shape[2] + pad[0] + pad[1] - w.shape[2] + 1
    Wo = x.shape[3] + pad[2] + pad[3] - w.shape[3] + 1
    y = np.full((N, F_, Ho, Wo), np.nan, np.float32)
    ws = np.full(threads * wd.direct_floats(1, Ho, Wo, w.shape[2], w.shape[3]), np.nan,
                 np.float32)       # (NaN: the kernel must write whatever it reads)
    wd.conv2d_forward_flat(x, w, np.zeros(F_, np.float32) if b is None else b, b is not None,
                           y, ws, pad[0], pad[2], level, threads, bias_first)
    return y


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(CASES))
def test_direct_matches_torch_float64_and_the_exact_plans_bits(torch, name, bias):
    x, w, b, pad = _inputs(name)
    b = b if bias else None
    s, _, _, plan = cc._plan(x, w, (1, 1), pad, (1, 1), 1)
    if DIRECT:
        assert plan.forward.algo == "direct" and plan.forward.params["level"] == max(LEVELS)
    exact = cc.conv2d_forward(x, w, b, (1, 1), pad, (1, 1), 1, exact=True)
    ref = _torch64(torch, x, w, b, pad)
    assert ref.shape == exact.shape
    runs = {}
    try:
        for nt in (1, 2, 3, 8, 16):
            convkit.set_num_threads(nt)
            runs[nt] = cc.conv2d_forward(x, w, b, (1, 1), pad, (1, 1), 1)
    finally:
        convkit.set_num_threads(None)
    # (the exact plan's bits are direct's where its GEMM sums in one fixed FMA chain -- the own
    # GEMM, csrc/fgemm.h; under CONVKIT_DISABLE_FGEMM=1 it is OpenBLAS's order: then direct's
    # bits on one thread are the ones every run must give)
    same = exact if cc._FIXED_SGEMM else runs[1]
    for nt, y in runs.items():
        np.testing.assert_array_equal(y, same, err_msg=f"plan, {nt} threads")
    scale = np.abs(ref).max()
    for level in LEVELS:
        for nt in (1, 2, 3):
            np.testing.assert_array_equal(_kernel(x, w, b, pad, level, nt), same,
                                          err_msg=f"level {level}, {nt} threads")
        # (the other chain: the bias first on the own GEMM's machines, last elsewhere)
        other = _kernel(x, w, b, pad, level, 2, cc._OWN_SGEMM)
        assert np.abs(other - ref).max() / scale < 1e-6
        if b is None:
            np.testing.assert_array_equal(other, same)
    assert np.abs(exact - ref).max() / scale < 1e-6


def _same_nonfinite(got, want, what):
    for test in (np.isnan, np.isposinf, np.isneginf):
        bad = np.argwhere(test(got) != test(want))
        assert not len(bad), f"{what}: {test.__name__} differs from torch at {bad[:5].tolist()}"


@pytest.mark.parametrize("where", ["x_corner", "x_last_column", "x_inside", "weight"])
@pytest.mark.parametrize("name", ["lenet_c1", "odd_13x9_k5x3", "asym_pad_13_filters"])
def test_direct_nonfinite_element_for_element(torch, name, where):
    """No operand check: a NaN / inf in x reaches the outputs whose windows hold it (the lanes
    past the image and the planes' slack are dropped), one in the weight meets the padding's
    zeros as torch's sums do (0 * inf = NaN) -- torch's pattern element for element."""
    x, w, b, pad = _inputs(name, seed=72)
    if where == "x_corner":
        x[0, 0, 0, 0] = np.nan
        x[-1, 0, -1, -1] = np.inf
    elif where == "x_last_column":
        x[1, 0, 3, -1] = -np.inf
    elif where == "x_inside":
        x[0, 0, x.shape[2] // 2, x.shape[3] // 2] = np.inf
    else:
        w[-1, 0, 0, 1] = np.inf
    ref = _torch64(torch, x, w, b, pad)
    got = [cc.conv2d_forward(x, w, b, (1, 1), pad, (1, 1), 1)]
    got += [_kernel(x, w, b, pad, level, 2) for level in LEVELS]
    for y in got:
        _same_nonfinite(y, ref, where)
        fin = np.isfinite(ref)
        np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-5, atol=1e-5 * np.abs(ref[fin]).max())


def test_direct_float64_keeps_its_plan(torch):
    x, w, b, pad = _inputs("lenet_c1")
    x, w, b = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    assert cc._plan(x, w, (1, 1), pad, (1, 1), 1)[3].forward.algo != "direct"
    y = cc.conv2d_forward(x, w, b, (1, 1), pad, (1, 1), 1)
    np.testing.assert_allclose(y, _torch64(torch, x, w, b, pad), rtol=1e-12, atol=1e-12)


def test_direct_rule():
    """The layers it names, nothing else: several channels, strides, dilation, groups, 1x1,
    float64, more taps than the own GEMM's k block, maps of <= 64 positions (the batch path),
    CPUs without AVX2 + FMA, a limit below a team's planes; full-rate AVX-512 CPUs at level
    3 as the half-rate ones (tuning.DIRECT_FULL_RATE)."""
    half = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True,
                      avx512_full_rate=False)
    blas = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True, fixed_sgemm=True)

    def fwd(xs, ws, caps=half, stride=1, pad=2, dil=1, groups=1, dtype=np.float32,
            limit=256 << 20, threads=2):
        s = P.ConvShape.of(xs, ws, (stride,) * 2, (pad,) * 4, (dil,) * 2, groups)
        return P.plan_forward(s, dtype, threads, caps, limit)
    st = fwd((64, 1, 28, 28), (6, 1, 5, 5))
    per = wd.direct_floats(1, 28, 28, 5, 5) if ok else 0
    assert st.algo == "direct" and st.threads == 2 and st.params == {
        "level": 3, "per_thread": per, "bias_first": False}
    assert fwd((64, 1, 28, 28), (6, 1, 5, 5), caps=blas).params == {
        "level": 2, "per_thread": per, "bias_first": True}
    assert fwd((1, 1, 28, 28), (6, 1, 5, 5), threads=16).threads == 1
    assert tuning.DIRECT_MAX_CHANNELS == 1 and tuning.DIRECT_MAX_TAPS == 192
    assert fwd((2, 1, 40, 40), (4, 1, 12, 16), pad=0).algo == "direct"        # 192 taps
    # full-rate AVX-512 with AVX2 + FMA: level 3 too (tuning.DIRECT_FULL_RATE; off: not)
    full = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True,
                      avx512_full_rate=True)
    assert fwd((64, 1, 28, 28), (6, 1, 5, 5), caps=full) == st
    tuning.DIRECT_FULL_RATE = False
    try:
        assert fwd((64, 1, 28, 28), (6, 1, 5, 5), caps=full).algo == "wide"
    finally:
        tuning.DIRECT_FULL_RATE = True
    for kw in (dict(stride=2), dict(dil=2, pad=4), dict(dtype=np.float64),
               dict(caps=P.ConvCaps(own_sgemm=True, depthwise3x3_level=3,
                                    avx512_full_rate=True)),         # (no AVX2 + FMA)
               dict(caps=P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)),
               dict(limit=2 * per * 4 - 4)):
        assert fwd((64, 1, 28, 28), (6, 1, 5, 5), **kw).algo != "direct", kw
    assert fwd((64, 1, 28, 28), (6, 1, 5, 5), limit=per * 4 * 2).algo == "direct"
    assert fwd((64, 2, 28, 28), (6, 2, 5, 5)).algo != "direct"
    assert fwd((64, 2, 28, 28), (6, 1, 5, 5), groups=2).algo != "direct"
    assert fwd((64, 1, 28, 28), (6, 1, 1, 1), pad=0).algo != "direct"        # pointwise
    assert fwd((2, 1, 40, 40), (4, 1, 13, 15), pad=0).algo != "direct"       # 195 taps
    assert fwd((64, 1, 8, 8), (6, 1, 5, 5)).algo == "batch"                   # 64 positions


@pytest.mark.skipif(not LEVELS, reason="the direct kernel needs AVX2 and FMA")
def test_direct_kernel_checks_its_arguments():
    x = np.ones((2, 1, 8, 9), np.float32)
    w = np.ones((6, 1, 5, 5), np.float32)
    b = np.full(6, 0.5, np.float32)
    y = np.zeros((2, 6, 8, 9), np.float32)
    n = wd.direct_floats(1, 8, 9, 5, 5)
    with pytest.raises(ValueError, match="too small"):
        wd.conv2d_forward_flat(x, w, b, True, y, np.zeros(2 * n - 1, np.float32), 2, 2, 2, 2)
    with pytest.raises(ValueError, match="too short"):
        wd.conv2d_forward_flat(x, w, b[:5], True, y, np.zeros(n, np.float32), 2, 2, 2, 1)
    with pytest.raises(ValueError, match="do not match"):
        wd.conv2d_forward_flat(x, w, b, True, np.zeros((2, 5, 8, 9), np.float32),
                               np.zeros(n, np.float32), 2, 2, 2, 1)
    with pytest.raises(RuntimeError, match="level"):
        wd.conv2d_forward_flat(x, w, b, True, y, np.zeros(n, np.float32), 2, 2, 4, 1)
    for level in LEVELS:
        wd.conv2d_forward_flat(x, w, b, True, y, np.zeros(n, np.float32), 2, 2, level, 1)
        assert y[0, 0, 3, 3] == 25.5 and y[0, 0, 0, 0] == 9.5 and y[1, 5, 7, 8] == 9.5
