"""The stem forward by a 1-D Winograd F(4, 4) / F(4, 3) along the rows (conv_plan "stem_wino",
csrc/stem_wino.h: float32 on BLAS machines with AVX2 + FMA, the stem rule's layers with a 7-wide
kernel at column stride 2 and at least tuning.STEM_WINO_MIN_FILTERS filters) against torch
float64: the ResNet stem, odd maps that end in every partial tile (1-3 outputs of 4) and every
8-tile vector tail, a row width of whole vectors, padding beyond a phase, unequal strides and
padding, 1 and 4 channels, filter counts that are not a multiple of 8 or 16, batch 1, no bias;
the same bits on 1, 2, 3, 8 and 16 threads; batch invariance; NaN / inf element for element
(the direct stem takes a non-finite weight's batch and a non-finite image); the plan rule and
its fallbacks; the workspace limit.

On a CPU where the plan does not pick stem_wino (AVX-512, no AVX2) the value tests check the
path the plan gives.
"""
import numpy as np
import pytest

import convkit
from convkit import functional as F
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning

from helpers import run
from test_cpu_stem import _pad4, _same_nonfinite

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

# (x shape, filters, kernel, stride, padding (rows, columns))
CASES = {
    "stem_224_batch1": ((1, 3, 224, 224), 64, (7, 7), (2, 2), (3, 3)),
    # Wo = 27: 7 tiles, the last with 3 outputs; Ho = 19 (a partial row block); 20 filters
    "odd_27": ((2, 3, 37, 53), 20, (7, 7), (2, 2), (3, 3)),
    # Wo = 20 (5 tiles), 1 channel, 16 filters (the fewest the rule takes)
    "wo_20_c1": ((3, 1, 33, 40), 16, (7, 7), (2, 2), (3, 3)),
    # Wo = 25 (7 tiles, the last with one output), a 5-row kernel, 4 channels, 28 filters
    "wo_25_k5x7_c4": ((2, 4, 21, 49), 28, (5, 7), (2, 2), (2, 3)),
    # row stride 3 (three row phases), padding beyond a phase (4 rows, 5 columns): Wo = 28
    "s3x2_pad": ((2, 3, 45, 52), 20, (7, 7), (3, 2), (4, 5)),
    # no padding, Wo = 40 (10 tiles: one vector and a 2-tile tail)
    "wo_40_nopad": ((2, 3, 29, 85), 16, (7, 7), (2, 2), (0, 0)),
    # Wo = 64: 16 tiles, whole vectors and whole 32-output stores; Ho = 20
    "wo_64": ((1, 3, 40, 128), 36, (7, 7), (2, 2), (3, 3)),
    # Wo = 16: the narrowest rows the stem rule takes (tuning.STEM_MIN_WO); 9 rows of kernel
    "wo_16_k9x7": ((1, 3, 33, 31), 16, (9, 7), (2, 2), (4, 3)),
}


def _want_algo(cc):
    if cc._OWN_SGEMM and not P.avx2_algo(cc._caps(), "stem"):
        return None                 # the AVX-512 plan (phases)
    return "stem_wino" if cc._ROWGEMM else "im2col"


@pytest.fixture
def cpu_conv():
    from convkit.cpu import conv as cc

    cc._plans.clear()
    yield cc
    cc._plans.clear()


def _inputs(name, seed=31, bias=True):
    xs, F_, ks, st, pd = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((F_, xs[1]) + ks) / np.sqrt(xs[1] * ks[0] * ks[1])
    b = rng.standard_normal(F_) if bias else None
    return x, w, b, st, pd


def _torch_fwd(torch, x, w, b, st, pd):
    return torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w),
                                      None if b is None else torch.tensor(b), st, pd).numpy()


def _f32(*arrays):
    return [None if a is None else a.astype(np.float32) for a in arrays]


def _close(y, y64):
    """the suite's float32 tolerance against torch float64"""
    np.testing.assert_allclose(y, y64, rtol=2e-5, atol=2e-5 * np.abs(y64).max())


@pytest.mark.parametrize("name", list(CASES))
def test_stem_wino_matches_torch_float64_on_any_team(torch, cpu_conv, name):
    x, w, b, st, pd = _inputs(name, bias=name != "wo_20_c1")
    y64 = _torch_fwd(torch, x, w, b, st, pd)
    x32, w32, b32 = _f32(x, w, b)
    plan = cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1, False)[3]
    want = _want_algo(cpu_conv)
    if want is not None:
        assert plan.forward.algo == want, plan
    results = []
    for n in (1, 2, 3, 8, 16):
        convkit.set_num_threads(n)
        try:
            y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
        finally:
            convkit.set_num_threads(None)
        _close(y, y64)
        results.append(y)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])    # the same bits on any team


def test_stem_wino_differs_from_the_direct_stem_and_is_as_accurate(torch, cpu_conv,
                                                                   monkeypatch):
    """The plan's forward really is another computation than the direct stem (other bits),
    and its error against torch float64 stays within a few times the direct stem's."""
    if _want_algo(cpu_conv) != "stem_wino":
        pytest.skip("stem_wino is not this machine's plan")
    x, w, b, st, pd = _inputs("stem_224_batch1", seed=32)
    y64 = _torch_fwd(torch, x, w, b, st, pd)
    x32, w32, b32 = _f32(x, w, b)
    yw = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    monkeypatch.setattr(tuning, "STEM_WINO_MIN_FILTERS", 10**9)
    cpu_conv._plans.clear()
    assert cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1, False)[3].forward.algo == "stem"
    yd = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    assert not np.array_equal(yw, yd)
    scale = np.abs(y64).max()
    ew, ed = np.abs(yw - y64).max() / scale, np.abs(yd - y64).max() / scale
    assert ew < 2e-5 and ew < 8 * ed, (ew, ed)


def _at(shape, off):
    """a C-contiguous float32 array of ``shape`` starting ``off`` bytes past a 64-byte line"""
    n = int(np.prod(shape))
    raw = np.empty(n + 32, np.float32)
    k = ((off - raw.ctypes.data) % 64) // 4
    return raw[k:k + n].reshape(shape)


@pytest.mark.parametrize("name", list(CASES))
def test_stem_wino_streamed_stores_keep_the_bits(torch, cpu_conv, monkeypatch, name):
    """y by non-temporal stores (tuning.STEM_STREAM_BYTES: a y past the caches; here forced on
    these small maps) gives the plain stores' bits, into an ``out`` on a 32-byte boundary
    (256-bit stores), 16 bytes past one (numpy's large arrays: 128-bit stores) or 4 (plain
    stores), on 1 and 3 threads, and matches torch float64."""
    if _want_algo(cpu_conv) != "stem_wino":
        pytest.skip("stem_wino is not this machine's plan")
    x, w, b, st, pd = _inputs(name, seed=33)
    y64 = _torch_fwd(torch, x, w, b, st, pd)
    x32, w32, b32 = _f32(x, w, b)
    plain = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    monkeypatch.setattr(tuning, "STEM_STREAM_BYTES", 0)
    cpu_conv._plans.clear()
    assert cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1)[3].forward.params["stream"]
    for n in (1, 3):
        for off in (0, 16, 32, 48, 4):
            y = _at(plain.shape, off)
            y[...] = np.nan
            convkit.set_num_threads(n)
            try:
                with convkit.use_backend("cpu"):
                    F.conv2d_forward(x32, w32, b32, stride=st, padding=pd, out=y)
            finally:
                convkit.set_num_threads(None)
            np.testing.assert_array_equal(y, plain, err_msg=f"{n} threads, offset {off}")
    _close(y, y64)


def test_stem_wino_is_batch_invariant(cpu_conv):
    x, w, b, st, pd = _inputs("odd_27")
    x32, w32, b32 = _f32(x, w, b)
    y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    for n in range(x.shape[0]):
        one = run("cpu", F.conv2d_forward, x32[n:n + 1], w32, b32, stride=st, padding=pd)
        np.testing.assert_array_equal(one[0], y[n])


@pytest.mark.parametrize("where", ["x", "weight"])
def test_stem_wino_nonfinite_element_for_element(torch, cpu_conv, monkeypatch, where):
    """A NaN / inf would spread over a Winograd tile (inf * 0 = NaN): a non-finite weight sends
    the batch, a non-finite image that image, to the direct stem -- torch's NaN / inf pattern
    element for element, the direct stem's bits for those images, and the other images keep
    the bits they have in a finite batch."""
    name = "odd_27"
    x, w, b, st, pd = _inputs(name, seed=33)
    x = np.concatenate([x, x[:1] * 0.5])            # three images; the second gets the values
    x32f, w32f, b32 = _f32(x, w, b)
    clean = run("cpu", F.conv2d_forward, x32f, w32f, b32, stride=st, padding=pd)
    if where == "x":
        img = x[1]          # a row's last column, a row's first, the image's last value
        W = x.shape[3]
        img.reshape(-1)[[5 * W - 1, 9 * W, img.size - 1, 77]] = [np.nan, np.inf, -np.inf, np.inf]
    else:
        w.reshape(-1)[[3, w.size // 2 + 7, w.size - 1]] = [np.nan, np.inf, -np.inf]
    y64 = _torch_fwd(torch, x, w, b, st, pd)
    x32, w32 = _f32(x, w)
    y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    _same_nonfinite(y, y64, f"stem_wino forward, {where}")
    fin = np.isfinite(y64)
    np.testing.assert_allclose(y[fin], y64[fin], rtol=2e-5, atol=2e-5 * np.abs(y64[fin]).max())
    monkeypatch.setattr(tuning, "STEM_WINO_MIN_FILTERS", 10**9)
    cpu_conv._plans.clear()
    direct = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    if where == "x":
        np.testing.assert_array_equal(y[1], direct[1])       # the direct stem's bits
        np.testing.assert_array_equal(y[[0, 2]], clean[[0, 2]])      # the batch's rule
    else:
        np.testing.assert_array_equal(y, direct)


# ------------------------------------------------------------------------------ the plan rule
BLAS_RG = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True)   # this CI's EPYC
BLAS = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)
OWN = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)
LIMIT = 256 * 2**20


def _shape(N, C, H, W, F_, K, stride=2, pad=3):
    KH, KW = (K, K) if np.isscalar(K) else K
    st = (stride, stride) if np.isscalar(stride) else stride
    return P.ConvShape.of((N, C, H, W), (F_, C, KH, KW), st, (pad,) * 4, (1, 1), 1)


def test_stem_wino_rule():
    stem = _shape(8, 3, 224, 224, 64, 7)
    plan = P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT, needs_input_grad=False)
    fw = plan.forward
    assert fw.algo == "stem_wino" and plan.grad_weight.algo == "weight_stem_wino"
    rows = tuning.STEM_WINO_ROWS
    Ra, nt = rows + 3, 28
    assert fw.params["rows"] == rows
    assert fw.params["per_thread"] == 3 * 2 * 8 * (Ra * (nt + 1) + 8) + 64 * 4 \
        + 7 * 3 * 2 * (2 * Ra * nt + 16) + 28 * rows * nt
    assert fw.params["ufloats"] == 64 * 13 * 3 * 7
    # y of 25.7 MB (past the caches) by non-temporal stores; one image's 3.2 MB by plain ones
    assert fw.params["stream"] is True and tuning.STEM_STREAM_BYTES > 64 * 112 * 112 * 4
    assert P.plan_conv(_shape(1, 3, 224, 224, 64, 7), np.float32, 2, BLAS_RG,
                       LIMIT).forward.params["stream"] is False
    # the direct stem rides along: the non-finite fallback
    direct = fw.params["direct"]
    assert direct.algo == "stem" and direct.params["rows"] == tuning.STEM_ROWS
    # each output is computed the same way in any task: large teams get shorter row blocks,
    # at least tuning.PHASES_TASKS_PER_THREAD tasks per thread (the value tests above run
    # 16 threads on such splits for equal bits)
    for nt_ in (1, 2, 3, 16, 64):
        p = P.plan_conv(stem, np.float32, nt_, BLAS_RG, LIMIT).forward
        assert p.algo == "stem_wino" and p.threads == nt_
        r = p.params["rows"]
        if nt_ <= 3:
            assert r == rows
        else:       # (blocks of whole rows: about, not exactly, that many tasks)
            assert r < rows and 8 * -(-112 // r) >= 0.8 * tuning.PHASES_TASKS_PER_THREAD * nt_
        assert p.params["per_thread"] == P.stem_wino_floats(stem, r, 112)
    # outside the rule: the direct stem (fewer filters, another kernel width or column
    # stride), im2col (float64, no rowgemm), phases (AVX-512); a non-finite operand: im2col
    for other in (_shape(8, 3, 64, 64, 12, 7),
                  _shape(8, 3, 64, 64, 64, 5, pad=2),
                  _shape(8, 3, 64, 64, 64, (7, 7), stride=(2, 3)),
                  _shape(8, 3, 64, 64, 64, (7, 9), pad=3)):
        assert P.plan_conv(other, np.float32, 2, BLAS_RG, LIMIT).forward.algo == "stem", other
    assert P.plan_conv(_shape(8, 3, 64, 64, 64, (5, 7)), np.float32, 2, BLAS_RG,
                       LIMIT).forward.algo == "stem_wino"          # kernel rows: any
    for caps, dt, want in ((BLAS, np.float32, "im2col"), (BLAS_RG, np.float64, "im2col"),
                           (OWN, np.float32, "phases")):
        assert P.plan_conv(stem, dt, 2, caps, LIMIT).forward.algo == want, (caps, dt)
    assert P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT, exact=True).forward.algo == "im2col"


def test_stem_wino_workspace_limit(cpu_conv):
    """Below one task's scratch plus the transformed filters the plan takes the direct stem;
    the runner keeps the thread team within the limit."""
    stem = _shape(8, 3, 224, 224, 64, 7)
    p = P.plan_conv(stem, np.float32, 2, BLAS_RG, LIMIT).forward.params
    need = 4 * (p["per_thread"] + p["ufloats"])
    assert P.plan_conv(stem, np.float32, 2, BLAS_RG, need).forward.algo == "stem_wino"
    assert P.plan_conv(stem, np.float32, 2, BLAS_RG, need).forward.threads == 1
    assert P.plan_conv(stem, np.float32, 2, BLAS_RG, need - 4).forward.algo == "stem"
    two = P.plan_conv(stem, np.float32, 2, BLAS_RG, need + 4 * p["per_thread"]).forward
    assert two.algo == "stem_wino" and two.threads == 2
    # and through the API: a limit that leaves one thread's scratch gives the same values
    if _want_algo(cpu_conv) != "stem_wino":
        return
    x, w, b, st, pd = _inputs("odd_27")
    x32, w32, b32 = _f32(x, w, b)
    y = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    s = P.ConvShape.of(x32.shape, w32.shape, st, _pad4(pd), (1, 1), 1)
    q = P.plan_conv(s, np.float32, 2, BLAS_RG, LIMIT).forward.params
    old = convkit.get_workspace_limit()
    convkit.set_workspace_limit(4 * (q["per_thread"] + q["ufloats"]))
    try:
        cpu_conv._plans.clear()
        convkit.set_num_threads(2)
        plan = cpu_conv._plan(x32, w32, st, _pad4(pd), (1, 1), 1, False)[3]
        assert plan.forward.algo == "stem_wino" and plan.forward.threads == 1
        y1 = run("cpu", F.conv2d_forward, x32, w32, b32, stride=st, padding=pd)
    finally:
        convkit.set_num_threads(None)
        convkit.set_workspace_limit(old)
    np.testing.assert_array_equal(y1, y)


def test_stem_wino_kernel_checks_its_scratch(cpu_conv):
    from convkit.cpu import _conv_phases
    x = np.zeros((1, 3, 40, 40), np.float32)
    y = np.zeros((1, 16, 20, 20), np.float32)
    U = np.zeros(16 * 13 * 3 * 7, np.float32)
    boff = np.zeros(13 * 3 * 7, np.intp)
    with pytest.raises(ValueError, match="ws_per_thread"):
        _conv_phases.conv2d_forward_stem_wino(x, U, np.zeros(1, np.float32), False, y,
                                              np.zeros(100, np.float32), 100, 7, 2, 3, 3, 8,
                                              1, boff)
    with pytest.raises(ValueError, match="w must be"):
        _conv_phases.stem_wino_filters(np.zeros((6, 3, 7, 7), np.float32), U)
