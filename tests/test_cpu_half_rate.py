"""The half-rate rule (ConvCaps.avx512_full_rate, tuning.HALF_RATE_AVX2): on a CPU whose 512-bit
FMA runs at the 256-bit rate (AMD family 0x19, Zen 4; csrc/isa.h's CPUID test,
CONVKIT_AVX512_FULL_RATE=0/1 overriding it) the plan takes the AVX2 algorithms named in
tuning.HALF_RATE_AVX2 beside the own AVX-512 GEMM; full-rate AVX-512 CPUs and the AVX2-only
ones keep their plans.

The capability and its override (in a fresh process: they are read once); the planner's choice
under both values (pure: any machine); and, where both the own GEMM and AVX2 + FMA run (this
session's Zen 4), every half-rate algorithm actually run beside the own GEMM: against torch
float64, the same bits on 1, 2 and 3 threads, NaN / inf element for element.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import convkit
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

OWN = dict(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True)
FULL = P.ConvCaps(**OWN)                                 # a Xeon / Zen 5 with AVX2 too
HALF = P.ConvCaps(**OWN, avx512_full_rate=False)         # a Zen 4
XEON = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)  # the plans' AVX-512 reference caps


def _probe(env_value):
    """(the C test's answer, the conv caps' flag) in a fresh process with
    CONVKIT_AVX512_FULL_RATE set to env_value (None: unset)."""
    env = dict(os.environ)
    env.pop("CONVKIT_AVX512_FULL_RATE", None)
    if env_value is not None:
        env["CONVKIT_AVX512_FULL_RATE"] = env_value
    code = ("from convkit.cpu import _gemm, conv as cc; "
            "print(_gemm.avx512_full_rate(), cc._caps().avx512_full_rate)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", out[1] == "True"


def _packed_ok():
    from convkit.cpu import _conv_winograd
    return _conv_winograd.winograd4_packed_ok()


@pytest.mark.parametrize("value, want", [("0", False), ("1", True)])
def test_the_override_sets_the_capability(value, want):
    rate, caps = _probe(value)
    assert rate is want
    # (CONVKIT_DISABLE_FGEMM=1 or a CPU without AVX2 + FMA keeps the AVX-512 plans)
    assert caps is (want or not _packed_ok())


def test_the_cpuid_rule():
    """Without the override: half rate on AMD family 0x19 alone (/proc/cpuinfo says which)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "vendor_id" not in fields or "cpu family" not in fields:
        pytest.skip("not an x86 /proc/cpuinfo")
    zen4 = fields["vendor_id"] == "AuthenticAMD" and int(fields["cpu family"]) == 0x19
    from convkit.cpu import _gemm
    if _gemm.avx512_emulated():     # the emulated build tests the full-rate plans (csrc/isa.h)
        zen4 = False
    assert _probe(None)[0] is (not zen4)


# ---------------------------------------------------------------- the plan (pure)
def _suite_shapes():
    from convkit.benchmark.cases import CASES, ConvCase
    out = {}
    for c in CASES:
        if type(c) is ConvCase:
            out[c.name] = (P.ConvShape.of((c.N, c.C, c.H, c.W), (c.F, c.C // c.groups, c.K, c.K),
                                          (c.stride,) * 2, (c.pad,) * 4, (1, 1), c.groups),
                           not c.first_layer)
    # the conv2d under the suite's conv_transpose2d (convt_28): its grad_x is convt's forward
    out["convt_28"] = (P.ConvShape.of((8, 32, 56, 56), (64, 32, 4, 4), (2, 2), (1,) * 4, (1, 1),
                                      1), True)
    return out


def _algos(plan):
    return tuple(None if st is None else (st.algo, st.params.get("tile"), st.params.get("packed"))
                 for st in (plan.forward, plan.grad_x, plan.grad_weight))


@pytest.mark.parametrize("threads", [1, 2, 16])
def test_full_rate_keeps_the_avx512_plans(monkeypatch, threads):
    """A full-rate AVX-512 CPU plans as the AVX-512 caps without AVX2 algorithms do, whatever
    tuning.HALF_RATE_AVX2 names -- but lenet_c1's forward, direct at level 3 where AVX2 + FMA
    run too (tuning.DIRECT_FULL_RATE; off: wide); a half-rate one with an empty set plans as
    the AVX-512 caps (direct is a full-rate exception, not a half-rate algorithm there)."""
    for name, (s, gx) in _suite_shapes().items():
        want = P.plan_conv(s, np.float32, threads, XEON, 256 * 2**20, gx)
        full = P.plan_conv(s, np.float32, threads, FULL, 256 * 2**20, gx)
        monkeypatch.setattr(tuning, "HALF_RATE_AVX2", frozenset())
        half = P.plan_conv(s, np.float32, threads, HALF, 256 * 2**20, gx)
        monkeypatch.setattr(tuning, "DIRECT_FULL_RATE", False)
        assert P.plan_conv(s, np.float32, threads, FULL, 256 * 2**20, gx) == want, name
        monkeypatch.undo()
        assert half == want, name
        if name == "lenet_c1":
            assert (want.forward.algo, full.forward.algo, full.forward.params["level"]) == \
                ("wide", "direct", 3), full
            assert (full.grad_x, full.grad_weight) == (want.grad_x, want.grad_weight)
        else:
            assert full == want, name


# (forward, grad_x, grad_weight) on a half-rate CPU; None: the full-rate plan's
HALF_PLANS = {
    "stem_224": (("stem_wino", None, None), None, ("weight_stem_wino", None, None)),
    "vgg_56": (("winograd", 4, True), ("winograd", 4, True), ("weight_winograd", None, None)),
    "res_28": (("winograd", 4, True), ("winograd", 4, True), ("weight_winograd", None, None)),
    "res_14": (("winograd", 4, True), ("winograd", 4, True), ("weight_winograd", None, None)),
    "rpn_3x3": (("winograd", 4, True), ("winograd", 4, True), ("weight_winograd", None, None)),
    "convt_28": (("rowphases", None, None), ("subpixel", None, None),
                 ("weight_rowgemm", None, None)),
    "lenet_c1": (("direct", None, None), ("im2col", None, None), ("weight_dot", None, None)),
    "pw_14": None, "rpn_cls1x1": None, "dw_56": None,
}


@pytest.mark.parametrize("threads", [1, 2, 16])
def test_half_rate_plans(threads):
    """The suite's layers on a half-rate CPU: the AVX2 algorithms where they measured faster
    (bench/half_rate_ab.py), the AVX-512 plans on the others; float64 keeps the full-rate
    plans everywhere."""
    shapes = _suite_shapes()
    for name, want in HALF_PLANS.items():
        s, gx = shapes[name]
        full = P.plan_conv(s, np.float32, threads, FULL, 256 * 2**20, gx)
        half = P.plan_conv(s, np.float32, threads, HALF, 256 * 2**20, gx)
        if want is None or name == "lenet_c1":      # (direct on both: DIRECT_FULL_RATE)
            assert half == full, name
        if want is not None:
            assert _algos(half) == want, (name, half)
            assert _algos(full) != want or name == "lenet_c1", name
        assert (P.plan_conv(s, np.float64, threads, HALF, 256 * 2**20, gx)
                == P.plan_conv(s, np.float64, threads, FULL, 256 * 2**20, gx)), name
    wino = P.plan_conv(shapes["vgg_56"][0], np.float32, threads, HALF, 256 * 2**20)
    assert not wino.forward.params["per_image"] and wino.grad_weight.params["fixed"]


def test_half_rate_f4_falls_back_to_the_own_f2_under_the_limit():
    """F(4x4)'s transformed filters over the workspace limit: F(2x2) on the own GEMM, as on a
    full-rate CPU (rpn_3x3's 37.7 MB)."""
    s = _suite_shapes()["rpn_3x3"][0]
    half = P.plan_conv(s, np.float32, 2, HALF, 36 * 2**20).forward
    full = P.plan_conv(s, np.float32, 2, FULL, 36 * 2**20).forward
    assert half == full and half.params["tile"] == 2


# ---------------------------------------------------------------- run here
def _runs_here():
    from convkit.cpu import conv as cc
    return cc._OWN_SGEMM and cc._ROWGEMM and _packed_ok()


here = pytest.mark.skipif(not ok or not _runs_here(),
                          reason="needs the own AVX-512 GEMM and AVX2 + FMA (both plans run)")


@pytest.fixture(params=[False, True], ids=["half", "full"])
def rate(request, monkeypatch):
    """This machine's caps with the half-rate rule on (False) or off (True)."""
    from convkit.cpu import conv as cc
    monkeypatch.setattr(cc, "_FULL_RATE", request.param)
    cc._caps_by_level.clear()
    cc._plans.clear()
    yield request.param
    cc._caps_by_level.clear()
    cc._plans.clear()


# (x shape, filters, kernel, stride, padding, the half-rate plan's (fwd, grad_x, grad_weight))
LAYERS = {
    "stem": ((2, 3, 37, 53), 20, 7, 2, 3, ("stem_wino", "im2col", "weight_stem_wino")),
    "wino4": ((2, 64, 14, 13), 68, 3, 1, 1, ("winograd", "winograd", "weight_winograd")),
    "convt": ((2, 8, 40, 38), 16, 4, 2, 1, ("rowphases", "subpixel", "weight_rowgemm")),
    "direct": ((3, 1, 28, 28), 6, 5, 1, 2, ("direct", "im2col", "weight_dot")),
}


def _layer(name, seed=5):
    xs, F_, k, st, pd, _ = LAYERS[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((F_, xs[1], k, k)) / np.sqrt(xs[1] * k * k)
    b = rng.standard_normal(F_)
    Ho = (xs[2] + 2 * pd - k) // st + 1
    Wo = (xs[3] + 2 * pd - k) // st + 1
    gy = rng.standard_normal((xs[0], F_, Ho, Wo))
    return x, w, b, gy, st, pd


def _torch_all(torch, x, w, b, gy, st, pd):
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, bt, st, pd)
    y.backward(torch.tensor(gy))
    return [v.detach().numpy() for v in (y, xt.grad, wt.grad, bt.grad)]


def _convkit_all(x, w, b, gy, st, pd):
    with convkit.use_backend("cpu"):
        y = np.asarray(convkit.conv2d_forward(x, w, b, stride=st, padding=pd))
        gx, gw, gb = convkit.conv2d_backward(gy, x, w, stride=st, padding=pd, has_bias=True)
    return [y, np.asarray(gx), np.asarray(gw), np.asarray(gb)]


@here
@pytest.mark.parametrize("name", list(LAYERS))
def test_the_half_rate_algorithms_run_beside_the_own_gemm(torch, rate, name):
    """Each layer's plan under both values of the rule (the AVX2 algorithms under half rate,
    none of them under full rate), the results against torch float64 and the same bits on 1,
    2 and 3 threads."""
    from convkit.cpu import conv as cc
    x, w, b, gy, st, pd = _layer(name)
    want = _torch_all(torch, x, w, b, gy, st, pd)
    x32, w32, b32, gy32 = (a.astype(np.float32) for a in (x, w, b, gy))
    runs = []
    old = convkit.get_num_threads()
    try:
        for n in (1, 2, 3):
            convkit.set_num_threads(n)
            plan = cc._plan(x32, w32, (st, st), (pd,) * 4, (1, 1), 1)[3]
            algos = (plan.forward.algo, plan.grad_x.algo, plan.grad_weight.algo)
            if rate and name == "direct":       # (tuning.DIRECT_FULL_RATE)
                assert algos == LAYERS[name][5] and plan.forward.params["level"] == 3, algos
            elif rate:
                assert not set(algos) & {"stem_wino", "weight_stem_wino", "rowphases",
                                         "subpixel", "weight_rowgemm", "weight_winograd",
                                         "direct"}, algos
                assert plan.forward.params.get("tile", 2) == 2
            else:
                assert algos == LAYERS[name][5], algos
                if name == "wino4":
                    assert plan.forward.params["tile"] == plan.grad_x.params["tile"] == 4
            runs.append(_convkit_all(x32, w32, b32, gy32, st, pd))
    finally:
        convkit.set_num_threads(old)
    for r in runs[1:]:
        for a, c in zip(r, runs[0]):
            assert np.array_equal(a.view(np.uint32), c.view(np.uint32))
    for got, ref, what in zip(runs[0], want, ("y", "grad_x", "grad_weight", "grad_bias")):
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5 * scale, err_msg=what)


def _same_nonfinite(got, want, what):
    for test in (np.isnan, np.isposinf, np.isneginf):
        bad = np.argwhere(test(got) != test(want))
        assert not len(bad), f"{what}: {test.__name__} differs from torch at {bad[:5].tolist()}"


@here
@pytest.mark.parametrize("where", ["x", "weight", "grad_y"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_half_rate_nonfinite_element_for_element(torch, rate, name, where):
    """A NaN, +inf and -inf in one operand reach exactly torch's float64 outputs (the
    non-finite rules: the Winograd passes fall back per image, the others read their own
    windows / products)."""
    x, w, b, gy, st, pd = (a.astype(np.float32) if isinstance(a, np.ndarray) else a
                           for a in _layer(name, seed=9))
    a = {"x": x, "weight": w, "grad_y": gy}[where]
    flat = a.reshape(-1)
    n = flat.size
    flat[[n // 7, n // 2, n - 1]] = [np.nan, np.inf, -np.inf]
    want = _torch_all(torch, *(v.astype(np.float64) for v in (x, w, b, gy)), st, pd)
    got = _convkit_all(x, w, b, gy, st, pd)
    for g, r, what in zip(got, want, ("y", "grad_x", "grad_weight", "grad_bias")):
        _same_nonfinite(g, r, what)
        fin = np.isfinite(r)
        np.testing.assert_allclose(g[fin], r[fin], rtol=1e-4,
                                   atol=2e-5 * max(1, np.abs(r[fin]).max()), err_msg=what)
