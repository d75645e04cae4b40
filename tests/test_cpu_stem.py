"""The strided first-layer conv on csrc/stem.h (conv_plan "stem" forward and "weight_stem"
weight gradient: float32 on BLAS machines with AVX2 + FMA, a few input channels, a kernel that is
not a multiple of the stride) against torch float64: the ResNet stem's geometry, odd maps that
leave every tail length of the kernel's 24 / 16 / 8-column tiles, padding beyond a phase,
unequal strides and padding, batch 1, no bias, filter counts of one panel; the same bits on 1, 2,
3 and 8 threads; the forward's batch invariance; NaN / inf element for element; grad_x when it
is asked for (im2col beside weight_stem); float64 (im2col); the workspace limit.

On a CPU where the plan does not pick these paths (AVX-512: phases / weight_dot; no AVX2: im2col)
each test asserts the plan it gets and checks the values on that path.
"""
import numpy as np
import pytest

import convkit
from convkit import functional as F
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning

from helpers import run

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

# (x shape, filters, kernel, stride, padding (rows, columns))
CASES = {
    "stem_224_batch1": ((1, 3, 224, 224), 64, (7, 7), (2, 2), (3, 3)),
    "stem_small": ((2, 3, 64, 64), 64, (7, 7), (2, 2), (3, 3)),
    # Wo = 27 (24 + a 3-column tail), Ho = 19, 8 filters (two panels)
    "odd_27": ((2, 3, 37, 53), 8, (7, 7), (2, 2), (3, 3)),
    # Wo = 20 (a masked 24-tile), 4 filters (one panel), 1 channel
    "wo_20_c1": ((3, 1, 33, 40), 4, (7, 7), (2, 2), (3, 3)),
    # Wo = 34 (24 + a masked 16-tile), 5x5 stride 2, 2 channels
    "wo_34_k5": ((1, 2, 30, 67), 12, (5, 5), (2, 2), (2, 2)),
    # Wo = 25 (24 + one column), 5x5 stride 2 (the fewest taps the rule takes), 4 channels (the
    # most it takes)
    "wo_25_k5_c4": ((2, 4, 21, 49), 16, (5, 5), (2, 2), (2, 2)),
    # Wo = 20 at stride 2 x 3, padding beyond a phase (4 rows, 5 columns); Wo = 40 (24 + 16)
    "s2x3_pad": ((2, 3, 45, 52), 8, (7, 7), (2, 3), (4, 5)),
    "wo_40_nopad": ((2, 3, 29, 85), 4, (7, 7), (2, 2), (0, 0)),
    # Wo = 16: the narrowest rows the rule takes (tuning.STEM_MIN_WO)
    "wo_16": ((1, 3, 31, 31), 4, (7, 7), (2, 2), (3, 3)),
    # weight_stem's 3 x 7 (image, row block) slabs (Ho = 50, the last block 2 rows) in 16
    # groups of one or two slabs, some across two images
    "slab_groups": ((3, 3, 100, 100), 8, (7, 7), (2, 2), (3, 3)),
}


def _want_algos(cc):
    """(forward, grad_weight) this machine's plan gives a stem-rule conv."""
    if cc._OWN_SGEMM and not P.avx2_algo(cc._caps(), "stem"):
        return None                 # the AVX-512 plan (phases / weight_dot where they fit)
    if cc._ROWGEMM:                 # (also beside the own GEMM on a half-rate AVX-512 CPU)
        return "stem", "weight_stem"
    return "im2col", "im2col"


@pytest.fixture
def cpu_conv(monkeypatch):
    """The direct stem's tests: its 1-D Winograd sibling (stem_wino, tests/test_cpu_stem_wino.py)
    would take the forwards of 16 filters and more here."""
    from convkit.cpu import conv as cc

    monkeypatch.setattr(tuning, "STEM_WINO_MIN_FILTERS", 10**9)
    cc._plans.clear()
    yield cc
    cc._plans.clear()


def _torch_ref(torch, x, w, b, gy, st, pd, needs_gx=False):
    """torch float64 (forward, grad_x, grad_weight, grad_bias)."""
    tx = torch.tensor(x, requires_grad=needs_gx)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, st, pd)
    ty.backward(torch.tensor(gy))
    gx = tx.grad.numpy() if needs_gx else None
    return ty.detach().numpy(), gx, tw.grad.numpy(), tb.grad.numpy()


def _pad4(pd):
    return (pd[0], pd[0], pd[1], pd[1])


def _out_shape(xs, F_, ks, st, pd):
    return (xs[0], F_, (xs[2] + 2 * pd[0] - ks[0]) // st[0] + 1,
            (xs[3] + 2 * pd[1] - ks[1]) // st[1] + 1)


def _inputs(name, seed=21):
    xs, F_, ks, st, pd = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((F_, xs[1]) + ks) / np.sqrt(xs[1] * ks[0] * ks[1])
    b = rng.standard_normal(F_)
    gy = rng.standard_normal(_out_shape(xs, F_, ks, st, pd))
    return x, w, b, gy, st, pd


@pytest.mark.parametrize("name", list(CASES))
def test_stem_matches_torch_float64_on_any_team(torch, cpu_conv, name):
    x, w, b, gy, st, pd = _inputs(name)
    y64, _, gw64, gb64 = _torch_ref(torch, x, w, b, gy, st, pd)
    x32, w32, b32, gy32 = (a.astype(np.float32) for a in (x, w, b, gy))
    plan = cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1, False)[3]
    want = _want_algos(cpu_conv)
    if want is not None:
        assert (plan.forward.algo, plan.grad_weight.algo) == want, plan
    results = []
    for n in (1, 2, 3, 8):
        convkit.set_num_threads(n)
        try:
            y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
            _, gw, gb = run("cpu", F.conv2d_backward, gy32, x32, w32, stride=st, padding=pd,
                            has_bias=True, needs_input_grad=False)
        finally:
            convkit.set_num_threads(None)
        # the suite's float32 tolerance against torch float64
        np.testing.assert_allclose(y, y64, rtol=2e-5, atol=2e-5 * np.abs(y64).max())
        np.testing.assert_allclose(gw, gw64, rtol=2e-5, atol=2e-5 * np.abs(gw64).max())
        np.testing.assert_allclose(gb, gb64, rtol=2e-5, atol=2e-5 * np.abs(gb64).max())
        results.append((y, gw, gb))
    for got in results[1:]:
        for a, b_ in zip(got, results[0]):
            np.testing.assert_array_equal(a, b_)        # the same bits on 1, 2, 3, 8 threads


@pytest.mark.parametrize("name", ["stem_small", "s2x3_pad"])
def test_stem_without_bias_and_with_grad_x(torch, cpu_conv, name):
    """No bias: the forward is the chain alone.  grad_x asked for: im2col computes it beside
    weight_stem (the bench's first layer asks for none, a user's may)."""
    x, w, b, gy, st, pd = _inputs(name, seed=22)
    b = np.zeros_like(b)
    y64, gx64, gw64, _ = _torch_ref(torch, x, w, b, gy, st, pd, needs_gx=True)
    x32, w32, gy32 = (a.astype(np.float32) for a in (x, w, gy))
    plan = cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1, True)[3]
    if _want_algos(cpu_conv) == ("stem", "weight_stem"):
        assert (plan.forward.algo, plan.grad_x.algo, plan.grad_weight.algo) == (
            "stem", "im2col", "weight_stem"), plan
    y = run("cpu", F.conv2d_forward, x32, w32, None, stride=st, padding=pd)
    np.testing.assert_allclose(y, y64, rtol=2e-5, atol=2e-5 * np.abs(y64).max())
    gx, gw, gb = run("cpu", F.conv2d_backward, gy32, x32, w32, stride=st, padding=pd,
                     has_bias=False)
    assert gb is None
    np.testing.assert_allclose(gx, gx64, rtol=2e-5, atol=2e-5 * np.abs(gx64).max())
    np.testing.assert_allclose(gw, gw64, rtol=2e-5, atol=2e-5 * np.abs(gw64).max())


def test_stem_forward_is_batch_invariant(cpu_conv):
    """An image's forward has the same bits alone as in its batch (one chain per output)."""
    x, w, b, _, st, pd = _inputs("odd_27")
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    for n in range(x.shape[0]):
        one = run("cpu", F.conv2d_forward, x32[n:n + 1], w32, b32, stride=st, padding=pd)
        np.testing.assert_array_equal(one[0], y[n])


def _same_nonfinite(got, want, what):
    for test in (np.isnan, np.isposinf, np.isneginf):
        bad = np.argwhere(test(got) != test(want))
        assert not len(bad), f"{what}: {test.__name__} differs from torch at {bad[:5].tolist()}"


@pytest.mark.parametrize("where", ["x", "weight", "grad_y"])
def test_stem_nonfinite_element_for_element(torch, cpu_conv, where):
    """Each output reads its own window and each weight its own products (padding zeros
    included, masked tails reading nothing else), so a NaN / inf reaches exactly torch's
    outputs and weights with no fallback.  Values at the image's last columns sit where the
    tail tiles end."""
    x, w, b, gy, st, pd = _inputs("odd_27", seed=23)
    a = {"x": x, "weight": w, "grad_y": gy}[where]
    flat = a.reshape(-1)
    idx = [3, flat.size // 2 + 7, flat.size - 1]
    if where == "x":        # the last column of a row, and a row's first
        idx += [x.shape[3] - 1 + 5 * x.shape[3], 9 * x.shape[3]]
    flat[idx] = [np.nan, np.inf, -np.inf, np.inf, np.nan][:len(idx)]
    y64, _, gw64, gb64 = _torch_ref(torch, x, w, b, gy, st, pd)
    x32, w32, b32, gy32 = (v.astype(np.float32) for v in (x, w, b, gy))
    y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    _, gw, gb = run("cpu", F.conv2d_backward, gy32, x32, w32, stride=st, padding=pd,
                    has_bias=True, needs_input_grad=False)
    _same_nonfinite(y, y64, f"stem forward, {where}")
    _same_nonfinite(gw, gw64, f"stem grad_weight, {where}")
    _same_nonfinite(gb, gb64, f"stem grad_bias, {where}")
    fin = np.isfinite(y64)
    np.testing.assert_allclose(y[fin], y64[fin], rtol=2e-5, atol=2e-5 * np.abs(y64[fin]).max())


def test_stem_float64_takes_im2col_and_matches(torch, cpu_conv):
    x, w, b, gy, st, pd = _inputs("odd_27", seed=24)
    plan = cpu_conv._plan(x, w, st, _pad4(pd), (1, 1), 1, False)[3]
    assert (plan.forward.algo, plan.grad_weight.algo) == ("im2col", "im2col"), plan
    y64, _, gw64, gb64 = _torch_ref(torch, x, w, b, gy, st, pd)
    y = run("cpu", F.conv2d_forward, x, w, b, stride=st, padding=pd)
    _, gw, gb = run("cpu", F.conv2d_backward, gy, x, w, stride=st, padding=pd, has_bias=True,
                    needs_input_grad=False)
    np.testing.assert_allclose(y, y64, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, gw64, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gb, gb64, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ the plan rule
BLAS_RG = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True)   # this CI's EPYC
BLAS = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)
OWN = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)
LIMIT = 256 * 2**20


def _shape(N, C, H, W, F_, K, stride=2, pad=3, groups=1, dilation=1):
    return P.ConvShape.of((N, C, H, W), (F_, C // groups, K, K), (stride, stride), (pad,) * 4,
                          (dilation, dilation), groups)


def test_stem_rule(monkeypatch):
    stem = _shape(8, 3, 224, 224, 64, 7)
    plan = P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT, needs_input_grad=False)
    assert (plan.forward.algo, plan.grad_weight.algo, plan.grad_bias) == (
        "stem_wino", "weight_stem_wino", "fused")    # (grad_bias summed by the weight gradient)
    # weight_stem: weight_stem_wino's fallback, and the gradient below stem_wino's filters
    # (checked below on the plan those filters give)
    monkeypatch.setattr(tuning, "STEM_WINO_MIN_FILTERS", 10**9)
    direct = P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT, needs_input_grad=False)
    assert direct.grad_weight == plan.grad_weight.params["direct"]
    plan = direct
    assert (plan.forward.algo, plan.grad_weight.algo, plan.grad_bias) == (
        "stem", "weight_stem", "fused")
    planes = 3 * 4 * (tuning.STEM_ROWS + 3) * 115
    # (the direct stem: stem_wino's fallback, and the forward below its filter count)
    for fw in (plan.forward,
               P.plan_conv(_shape(8, 3, 224, 224, 12, 7), np.float32, 2, BLAS_RG,
                           LIMIT).forward):
        assert fw.algo == "stem"
        assert fw.params == {"rows": tuning.STEM_ROWS, "per_thread": planes}
    gw = plan.grad_weight.params
    assert gw["rows"] == tuning.STEM_W_ROWS and gw["fchunk"] == 64
    # groups of the batch's 8 x 14 (image, row block) slabs, not of whole images
    assert gw["groups_n"] == min(8 * 14, tuning.STEM_W_TASKS)
    one = 64 * (147 + 1) * 8                    # a group's partial sums
    assert gw["part"] == gw["groups_n"] * one
    # the AVX-512 machines keep their plan; no rowgemm, float64: im2col
    own = P.plan_conv(stem, np.float32, 2, OWN, LIMIT, needs_input_grad=False)
    assert (own.forward.algo, own.grad_weight.algo) == ("phases", "weight_dot")
    for caps, dt in ((BLAS, np.float32), (BLAS_RG, np.float64)):
        p = P.plan_conv(stem, dt, 2, caps, LIMIT, needs_input_grad=False)
        assert (p.forward.algo, p.grad_weight.algo) == ("im2col", "im2col"), (caps, dt)
    for other in (_shape(8, 5, 64, 64, 64, 7),              # 5 channels
                  _shape(8, 3, 64, 64, 62, 7),              # 62 filters
                  _shape(8, 3, 64, 64, 64, 7, stride=1),
                  _shape(8, 3, 64, 64, 64, 3, pad=1),       # 3x3: 9 taps (im2col)
                  _shape(8, 3, 64, 64, 64, 7, dilation=2),
                  _shape(8, 4, 64, 64, 64, 7, groups=2),
                  _shape(8, 3, 26, 26, 64, 7),              # Wo = 13
                  _shape(8, 3, 12, 12, 64, 7)):             # 6x6 maps: batch
        p = P.plan_conv(other, np.float32, 2, BLAS_RG, LIMIT)
        assert "stem" not in p.forward.algo and "stem" not in p.grad_weight.algo, other
    # a kernel that is a multiple of the stride stays on rowphases / weight_rowgemm
    k4 = P.plan_conv(_shape(8, 3, 64, 64, 64, 4, pad=1), np.float32, 2, BLAS_RG, LIMIT)
    assert k4.forward.algo == "rowphases"
    # the workspace limit: below the planes (forward) or planes + partial sums (gradient)
    assert P.plan_conv(stem, np.float32, 2, BLAS_RG, 4 * planes - 4).forward.algo not in (
        "stem", "stem_wino")
    # (a limit below all groups' partial sums takes fewer groups, each counted; below one
    # group's, another algorithm)
    for groups in (gw["groups_n"] - 1, 1):
        low = 4 * (gw["per_thread"] + groups * one + one) - 4
        got = P.plan_conv(stem, np.float32, 2, BLAS_RG, low).grad_weight
        assert got.algo == "weight_stem" and got.params["groups_n"] == groups, got
        assert 4 * (got.params["per_thread"] * got.threads + got.params["part"]) <= low, got
    low = 4 * (gw["per_thread"] + one) - 4
    assert P.plan_conv(stem, np.float32, 2, BLAS_RG, low).grad_weight.algo != "weight_stem"


def test_stem_splits_do_not_follow_the_thread_count():
    """weight_stem's sums are cut by row blocks, filter blocks and slab groups set by the
    layer and the batch alone (weight_stem_wino's by row blocks and slab groups); the
    forward's outputs are one chain each."""
    stem = _shape(8, 3, 224, 224, 64, 7)

    def cut(nt):
        gw = P.plan_conv(stem, np.float32, nt, BLAS_RG, LIMIT).grad_weight
        d = gw.params["direct"]
        return ({k: gw.params[k] for k in ("rows", "groups_n")},
                {k: d.params[k] for k in ("rows", "fchunk", "groups_n")})
    assert cut(1) == cut(2) == cut(3) == cut(8) == cut(16) == cut(64)


def test_weight_stem_kernel_checks_its_slab_groups(cpu_conv):
    """The kernel's groups cut the batch's (image, row block) slabs: more groups than slabs,
    none, or a partial-sum array too small for them is refused, naming groups_n."""
    from convkit.cpu import _conv_phases as ph
    x = np.zeros((2, 3, 40, 40), np.float32)        # Ho = Wo = 20: 2 x 3 slabs of 8 rows
    gy = np.zeros((2, 8, 20, 20), np.float32)
    gw = np.empty((8, 3, 7, 7), np.float32)
    boff = cpu_conv._stem_w_offsets(3, 7, 7, 2, 2, 8, 20)
    per = P.stem_planes(_shape(2, 3, 40, 40, 8, 7), 8, 20)
    one = 8 * (len(boff) + 1) * 8
    for groups, part in ((0, one), (7, 7 * one), (3, 3 * one - 1)):
        with pytest.raises(ValueError, match="groups_n"):
            ph.conv2d_grad_weight_stem(gy, x, gw, np.empty(8, np.float32), True,
                                       np.empty(per, np.float32), per,
                                       np.empty(part, np.float32), boff, 2, 2, 3, 3, 8, 8,
                                       groups, 1)
