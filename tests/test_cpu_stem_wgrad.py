"""The stem's weight gradient by the transposed 1-D Winograd F(4, 4) / F(3, 4) along the rows
(conv_plan "weight_stem_wino", csrc/stem_wgrad.h: stem_wino's layers -- float32 on BLAS machines
with AVX2 + FMA, the stem rule with a 7-wide kernel at column stride 2 and at least
tuning.STEM_WINO_MIN_FILTERS filters) against torch float64: the ResNet stem, odd maps that end
in every partial tile (1-3 outputs of 4) and vector tail, partial row blocks, slab groups across
images, row stride 3, 1 and 4 channels, filter counts that are not a multiple of 8, no bias; the
same bits on 1, 2, 3, 8 and 16 threads; its error against the direct weight_stem's; NaN / inf
and overflowing transforms element for element (the direct weight_stem recomputes a result that
is not finite); the plan rule, its fallbacks and the workspace limit; the kernel's checks.

On a CPU where the plan does not pick weight_stem_wino (AVX-512, no AVX2) the value tests check
the path the plan gives.
"""
import numpy as np
import pytest

import convkit
from convkit import functional as F
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning

from helpers import run
from test_cpu_stem import _pad4, _same_nonfinite
from test_cpu_stem_wino import (BLAS, BLAS_RG, LIMIT, OWN, _close, _f32, _shape,  # noqa: F401
                                cpu_conv)

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

# (x shape, filters, kernel, stride, padding (rows, columns))
CASES = {
    "stem_224_batch1": ((1, 3, 224, 224), 64, (7, 7), (2, 2), (3, 3)),
    # Wo = 27: 7 tiles, the last with 3 outputs; Ho = 19 (a partial row block); 20 filters
    "odd_27": ((2, 3, 37, 53), 20, (7, 7), (2, 2), (3, 3)),
    # Wo = 20 (5 tiles), 1 channel, 16 filters (the fewest the rule takes), 3 images
    "wo_20_c1": ((3, 1, 33, 40), 16, (7, 7), (2, 2), (3, 3)),
    # Wo = 25 (7 tiles, the last with one output), a 5-row kernel, 4 channels, 28 filters
    "wo_25_k5x7_c4": ((2, 4, 21, 49), 28, (5, 7), (2, 2), (2, 3)),
    # row stride 3 (three row phases), padding beyond a phase (4 rows, 5 columns): Wo = 28
    "s3x2_pad": ((2, 3, 45, 52), 20, (7, 7), (3, 2), (4, 5)),
    # Wo = 26 (7 tiles, the last with 2 outputs), no padding
    "wo_26_nopad": ((2, 3, 29, 57), 16, (7, 7), (2, 2), (0, 0)),
    # Wo = 64: 16 tiles (whole vectors); Ho = 20
    "wo_64": ((1, 3, 40, 128), 36, (7, 7), (2, 2), (3, 3)),
    # 3 x 7 (image, row block) slabs (Ho = 50) in 16 groups of one or two, some across images
    "slab_groups": ((3, 3, 100, 100), 16, (7, 7), (2, 2), (3, 3)),
}


def _want_algo(cc):
    if cc._OWN_SGEMM and not P.avx2_algo(cc._caps(), "weight_stem"):
        return None                 # the AVX-512 plan (weight_dot)
    return "weight_stem_wino" if cc._ROWGEMM else "im2col"


def _inputs(name, seed=41):
    xs, F_, ks, st, pd = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((F_, xs[1]) + ks) / np.sqrt(xs[1] * ks[0] * ks[1])
    Ho = (xs[2] + 2 * pd[0] - ks[0]) // st[0] + 1
    Wo = (xs[3] + 2 * pd[1] - ks[1]) // st[1] + 1
    gy = rng.standard_normal((xs[0], F_, Ho, Wo))
    return x, w, gy, st, pd


def _torch_grads(torch, x, w, gy, st, pd):
    """torch float64 (grad_weight, grad_bias)."""
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(x), tw, tb, st, pd).backward(torch.tensor(gy))
    return tw.grad.numpy(), tb.grad.numpy()


def _grads(x32, w32, gy32, st, pd, has_bias=True):
    _, gw, gb = run("cpu", F.conv2d_backward, gy32, x32, w32, stride=st, padding=pd,
                    has_bias=has_bias, needs_input_grad=False)
    return gw, gb


@pytest.mark.parametrize("name", list(CASES))
def test_weight_stem_wino_matches_torch_float64_on_any_team(torch, cpu_conv, name):
    x, w, gy, st, pd = _inputs(name)
    gw64, gb64 = _torch_grads(torch, x, w, gy, st, pd)
    x32, w32, gy32 = _f32(x, w, gy)
    plan = cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1, False)[3]
    want = _want_algo(cpu_conv)
    if want is not None:
        assert plan.grad_weight.algo == want, plan
    results = []
    for n in (1, 2, 3, 8, 16):
        convkit.set_num_threads(n)
        try:
            gw, gb = _grads(x32, w32, gy32, st, pd)
        finally:
            convkit.set_num_threads(None)
        _close(gw, gw64)
        _close(gb, gb64)
        results.append((gw, gb))
    for gw, gb in results[1:]:
        np.testing.assert_array_equal(gw, results[0][0])     # the same bits on any team
        np.testing.assert_array_equal(gb, results[0][1])


def _direct(cpu_conv, monkeypatch):
    """Plan the direct weight_stem from here on (stem_wino's filter count out of reach)."""
    monkeypatch.setattr(tuning, "STEM_WINO_MIN_FILTERS", 10**9)
    cpu_conv._plans.clear()


def test_weight_stem_wino_differs_from_the_direct_one_and_is_as_accurate(torch, cpu_conv,
                                                                          monkeypatch):
    """The plan's gradient really is another computation than weight_stem (other bits), and
    its error against torch float64 stays within a few times weight_stem's (the sums over
    the batch's tiles run in the transform domain, transformed back once in double); no bias:
    grad_bias is None."""
    if _want_algo(cpu_conv) != "weight_stem_wino":
        pytest.skip("weight_stem_wino is not this machine's plan")
    x, w, gy, st, pd = _inputs("stem_224_batch1", seed=42)
    gw64, _ = _torch_grads(torch, x, w, gy, st, pd)
    x32, w32, gy32 = _f32(x, w, gy)
    gw_w, gb = _grads(x32, w32, gy32, st, pd, has_bias=False)
    assert gb is None
    _direct(cpu_conv, monkeypatch)
    assert cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1,
                          False)[3].grad_weight.algo == "weight_stem"
    gw_d, _ = _grads(x32, w32, gy32, st, pd, has_bias=False)
    assert not np.array_equal(gw_w, gw_d)
    scale = np.abs(gw64).max()
    ew, ed = np.abs(gw_w - gw64).max() / scale, np.abs(gw_d - gw64).max() / scale
    assert ew < 2e-5 and ew < 8 * ed, (ew, ed)


@pytest.mark.parametrize("where", ["x", "grad_y", "overflow"])
def test_weight_stem_wino_nonfinite_element_for_element(torch, cpu_conv, monkeypatch, where):
    """A NaN / inf would spread over a Winograd tile (inf * 0 = NaN) and a transform can
    overflow where the direct sums do not: the result is then not finite, and the direct
    weight_stem computes it again -- torch's NaN / inf pattern element for element (x, grad_y)
    and weight_stem's bits.  Values at a row's last columns sit in the tail tiles.  Overflow:
    grad_y's 1e20 against x's +-1e18 makes products of 1e38 (finite in float32, the direct
    sums and torch's), the transforms' 8e20 x 1e19 overflow: weight_stem's finite result."""
    name = "odd_27"
    x, w, gy, st, pd = _inputs(name, seed=43)
    if where == "x":
        W = x.shape[3]
        x[1].reshape(-1)[[5 * W - 1, 9 * W, x[1].size - 1, 77]] = [np.nan, np.inf, -np.inf,
                                                                   np.inf]
    elif where == "grad_y":
        Wo = gy.shape[3]
        gy[0, 3].reshape(-1)[[Wo - 1, 2 * Wo]] = [np.inf, np.nan]
        gy[1, 7, 4, 5] = -np.inf
    else:       # (a tile's last value: 8 times it at the point 2)
        gy[0, 2, 5, 7] = 1e20
        x[0, :, 8:14, 8:22] = np.where(np.arange(6 * 14).reshape(6, 14) % 3, 1e18, -1e18)
    x32, w32, gy32 = _f32(x, w, gy)
    gw, gb = _grads(x32, w32, gy32, st, pd)
    gw64, gb64 = _torch_grads(torch, x, w, gy, st, pd)
    _same_nonfinite(gw, gw64, f"weight_stem_wino grad_weight, {where}")
    _same_nonfinite(gb, gb64, f"weight_stem_wino grad_bias, {where}")
    fin = np.isfinite(gw64)
    np.testing.assert_allclose(gw[fin], gw64[fin], rtol=2e-5,
                               atol=2e-5 * np.abs(gw64[fin]).max())
    assert np.isfinite(gw).all() == (where == "overflow")
    _direct(cpu_conv, monkeypatch)
    gw_d, gb_d = _grads(x32, w32, gy32, st, pd)
    np.testing.assert_array_equal(gw, gw_d)             # weight_stem's bits
    np.testing.assert_array_equal(gb, gb_d)



# ------------------------------------------------------------------------------ the plan rule
def test_weight_stem_wino_rule():
    stem = _shape(8, 3, 224, 224, 64, 7)
    gw = P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT, needs_input_grad=False).grad_weight
    assert gw.algo == "weight_stem_wino" and gw.threads == 2
    rows = tuning.STEM_WINO_W_ROWS
    assert gw.params["rows"] == rows
    # the forward's scratch for those rows and 7 x 8 floats of slack
    assert gw.params["per_thread"] == P.stem_wino_floats(stem, rows, 112) + 56
    # 8 x 14 slabs in tuning.STEM_W_TASKS groups; per group and filter the 13 * 21 transformed
    # taps (each point's a multiple of 3 already) and the bias sum
    assert gw.params["groups_n"] == min(8 * -(-112 // rows), tuning.STEM_W_TASKS)
    assert gw.params["part"] == gw.params["groups_n"] * 64 * (13 * 21 + 1)
    # padded taps: 1 channel x 7 rows = 7 per point (8 per phase pair... 14 -> 15, 7 -> 9)
    assert P.stem_wgrad_part(_shape(8, 1, 64, 64, 16, 7)) == 16 * (6 * 15 + 9 + 1)
    # weight_stem rides along: the non-finite fallback
    direct = gw.params["direct"]
    assert direct.algo == "weight_stem" and direct.params["rows"] == tuning.STEM_W_ROWS
    # outside the rule: weight_stem (fewer filters, another kernel width or column stride),
    # im2col (float64, no rowgemm), weight_dot (AVX-512), im2col for a non-finite operand
    for other in (_shape(8, 3, 64, 64, 12, 7),
                  _shape(8, 3, 64, 64, 64, 5, pad=2),
                  _shape(8, 3, 64, 64, 64, (7, 7), stride=(2, 3)),
                  _shape(8, 3, 64, 64, 64, (7, 9), pad=3)):
        assert P.plan_conv(other, np.float32, 2, BLAS_RG,
                           LIMIT).grad_weight.algo == "weight_stem", other
    assert P.plan_conv(_shape(8, 3, 64, 64, 64, (5, 7)), np.float32, 2, BLAS_RG,
                       LIMIT).grad_weight.algo == "weight_stem_wino"      # kernel rows: any
    for caps, dt, want in ((BLAS, np.float32, "im2col"), (BLAS_RG, np.float64, "im2col"),
                           (OWN, np.float32, "weight_dot")):
        assert P.plan_conv(stem, dt, 2, caps, LIMIT).grad_weight.algo == want, (caps, dt)
    assert P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT,
                       exact=True).grad_weight.algo == "im2col"
    # grad_x asked for: im2col computes it beside weight_stem_wino, grad_bias fused
    both = P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT, needs_input_grad=True)
    assert (both.grad_x.algo, both.grad_weight.algo, both.grad_bias) == (
        "im2col", "weight_stem_wino", "fused")
    # the groups are the layer's and the batch's, never the team's
    for nt in (1, 3, 16, 64):
        p = P.plan_conv(stem, np.float32, nt, BLAS_RG, LIMIT).grad_weight
        assert p.algo == "weight_stem_wino" and p.threads == nt
        assert (p.params["rows"], p.params["groups_n"]) == (rows, gw.params["groups_n"])


def test_weight_stem_wino_workspace_limit(torch, cpu_conv):
    """Its fallback must fit too: below one group of weight_stem's partial sums and one
    thread's planes, neither is planned; at that limit weight_stem_wino takes the groups whose
    partial sums fit beside its scratch (fewer than the default, each counted) and the team
    that fits -- through the API too, with values of the suite's tolerance."""
    stem = _shape(8, 3, 224, 224, 64, 7)
    p = P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT).grad_weight.params
    d = p["direct"].params
    one, one_d = p["part"] // p["groups_n"], d["part"] // d["groups_n"]
    low = 4 * (d["per_thread"] + one_d)
    got = P.plan_conv(stem, np.float32, 2, BLAS_RG, low).grad_weight
    want = (low // 4 - p["per_thread"]) // one
    assert 1 <= want < p["groups_n"]
    assert got.algo == "weight_stem_wino" and got.params["groups_n"] == want, got
    assert 4 * (got.params["per_thread"] * got.threads + got.params["part"]) <= low, got
    assert got.params["direct"].params["groups_n"] == 1
    assert "stem" not in P.plan_conv(stem, np.float32, 2, BLAS_RG, low - 4).grad_weight.algo
    if _want_algo(cpu_conv) != "weight_stem_wino":
        return
    x, w, gy, st, pd = _inputs("slab_groups")
    gw64, gb64 = _torch_grads(torch, x, w, gy, st, pd)
    x32, w32, gy32 = _f32(x, w, gy)
    s = P.ConvShape.of(x32.shape, w32.shape, st, _pad4(pd), (1, 1), 1)
    q = P.plan_conv(s, np.float32, 2, BLAS_RG, LIMIT).grad_weight.params
    dq, oq = q["direct"].params, q["part"] // q["groups_n"]
    low = 4 * max(q["per_thread"] + 3 * oq, dq["per_thread"] + dq["part"] // dq["groups_n"])
    old = convkit.get_workspace_limit()
    convkit.set_workspace_limit(low)
    try:
        cpu_conv._plans.clear()
        convkit.set_num_threads(2)
        plan = cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1, False)[3]
        assert plan.grad_weight.algo == "weight_stem_wino", plan
        groups = plan.grad_weight.params["groups_n"]
        assert 3 <= groups == (low // 4 - q["per_thread"]) // oq < q["groups_n"], plan
        gw, gb = _grads(x32, w32, gy32, st, pd)
    finally:
        convkit.set_num_threads(None)
        convkit.set_workspace_limit(old)
        cpu_conv._plans.clear()
    _close(gw, gw64)
    _close(gb, gb64)


def test_weight_stem_wino_kernel_checks_its_arguments(cpu_conv):
    """Scratch below a slab's, more groups than slabs or none, partial sums too short, offsets
    of another layout, a kernel not 7 wide: refused, naming what is wrong."""
    from convkit.cpu import _conv_phases as ph
    x = np.zeros((2, 3, 40, 40), np.float32)        # Ho = Wo = 20: 2 x 3 slabs of 8 rows
    gy = np.zeros((2, 16, 20, 20), np.float32)
    gw = np.empty((16, 3, 7, 7), np.float32)
    gb = np.empty(16, np.float32)
    s = _shape(2, 3, 40, 40, 16, 7)
    taps, one = ph.stem_wgrad_sizes(16, 3, 7)
    assert (taps, one) == (13 * 21, P.stem_wgrad_part(s))
    boff = cpu_conv._stem_wgrad_offsets(3, 7, 2, 11, 5)
    per = P.stem_wino_floats(s, 8, 20) + 56

    def call(ws_per=per, groups=2, part=2 * one, offs=boff, g=gw):
        ph.conv2d_grad_weight_stem_wino(gy, x, g, gb, True, np.empty(ws_per, np.float32),
                                        ws_per, np.empty(part, np.float32), offs, 2, 3, 3, 8,
                                        groups, 1)
    call()
    with pytest.raises(ValueError, match="ws_per_thread"):
        call(ws_per=per - 1)
    for groups, part in ((0, one), (7, 7 * one), (3, 3 * one - 1)):
        with pytest.raises(ValueError, match="groups_n"):
            call(groups=groups, part=part)
    with pytest.raises(ValueError, match="boff"):
        call(offs=boff[:-1])
    with pytest.raises(ValueError, match="gw must be"):
        call(g=np.empty((16, 3, 7, 5), np.float32))
    with pytest.raises(ValueError, match="boff must hold"):
        ph.stem_wgrad_offsets(3, 7, 2, 11, 5, np.empty(5, np.intp))
