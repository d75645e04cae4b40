"""Winograd F(4x4, 2x2) over the 4 input phase planes of a 4x4 stride-2 conv (csrc/polywino.h,
_conv_winograd.conv2d_forward_polywino; conv_plan.plan_polywino): conv2d's forward of such
convs, so conv_transpose2d k4 s2's grad_x, float32 on AVX2 + FMA.  Checked against torch in
float64 (convt_28-like shapes, ragged last tiles, several batches, channel and filter counts not
a multiple of 8, paddings), for the same bits on any task split, thread count and batch, for the
plan's rule, and for torch's NaN / inf element for element (the exact fallback)."""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import _conv_winograd as wg

torch = pytest.importorskip("torch")

ok, why = convkit.backend_status("cpu")
pytestmark = [pytest.mark.skipif(not ok, reason=why[:300]),
              pytest.mark.skipif(ok and not wg.polywino_available(),
                                 reason="csrc/polywino.h needs AVX2 + FMA")]

# F(4x4, 2x2)'s error here is 1-5e-6 of the largest output (points 0, +-1, 1/2: RESULTS.md,
# tenth session; a direct float32 sum ~3e-7); a wrong tap or phase gives errors near 1
REL = 2e-5


def _close(got, want, what):
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= REL, f"{what}: max error {err:.3g} of the largest value"


def _torch_conv(x, w, b, pad):
    return torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), torch.from_numpy(w).double(),
        None if b is None else torch.from_numpy(b).double(), stride=2, padding=pad).numpy()


def _kernel(x, w, pad, trows, threads, bias=None, run=0):
    """conv2d_forward_polywino called directly, NaN in its workspace and output beforehand
    (no stale value may be read; every output must be written); run > 0: tasks of runs of
    that many tiles (trows ignored: the rows they span)."""
    N, C, H, W = x.shape
    F = w.shape[0]
    pt, pl = pad
    Ho, Wo = (H + 2 * pt - 4) // 2 + 1, (W + 2 * pl - 4) // 2 + 1
    if run:
        trows = wg.polywino_run_rows(-(-Ho // 4), -(-Wo // 4), run)
    U = cc.polywino_filters(w)
    per = wg.polywino_floats(C, F, trows, -(-Wo // 4))
    ws = np.full(threads * per, np.nan, np.float32)
    y = np.full((N, F, Ho, Wo), np.nan, np.float32)
    b = np.zeros(F, np.float32) if bias is None else bias
    wg.conv2d_forward_polywino(x, U, b, bias is not None, y, ws, per, trows, pt, pl, threads,
                               run)
    return y


# (N, C, F, H, W, (pt, pl)): convt_28's grad_x (56 -> 28: 7 tiles exactly), ragged last tile
# rows and columns (Ho, Wo not multiples of 4), C and F not multiples of 8, paddings 0 and 2,
# one image and odd batches
KERNEL_CASES = [(2, 32, 64, 56, 56, (1, 1)), (3, 20, 17, 30, 22, (1, 1)),
                (1, 16, 24, 13, 19, (2, 0)), (5, 19, 8, 10, 36, (0, 2)),
                (4, 9, 33, 8, 8, (1, 1)), (1, 40, 16, 64, 18, (1, 1))]


def _on_1_2_8_16(fn):
    """[fn() on 1, 2, 8, 16 threads] on the cpu backend, the thread count restored after."""
    old = convkit.get_num_threads()
    try:
        out = []
        for n in (1, 2, 8, 16):
            convkit.set_num_threads(n)
            with convkit.use_backend("cpu"):
                out.append(fn())
        return out
    finally:
        convkit.set_num_threads(old)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_kernel_matches_torch_float64(case):
    N, C, F, H, W, pad = case
    rng = np.random.default_rng(N * 100 + C + H)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((F, C, 4, 4)) / np.sqrt(16 * C)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    want = _torch_conv(x, w, b, pad)
    th = -(-want.shape[2] // 4)
    for trows in sorted({1, 2, th}):
        _close(_kernel(x, w, pad, trows, 2, bias=b), want, f"trows {trows}")
    tw = -(-want.shape[3] // 4)
    for run in sorted({1, 3, tw + 1, (th * tw + 1) // 2}):     # runs inside and across rows
        _close(_kernel(x, w, pad, 0, 3, bias=b, run=run), want, f"run {run}")


@pytest.mark.parametrize("case", KERNEL_CASES[:4], ids=lambda c: "x".join(map(str, c[:5])))
def test_kernel_bits_do_not_depend_on_the_split_threads_or_batch(case):
    N, C, F, H, W, pad = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 4, 4)).astype(np.float32)
    th = -(-((H + 2 * pad[0] - 4) // 2 + 1) // 4)
    ref = _kernel(x, w, pad, th, 1)
    for trows, threads in ((1, 1), (2, 2), (1, 8), (th, 16), (3, 3)):
        got = _kernel(x, w, pad, trows, threads)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (trows, threads)
    tw = -(-((W + 2 * pad[1] - 4) // 2 + 1) // 4)
    for run, threads in ((1, 2), (5, 16), (tw + 2, 8), (-(-th * tw // 2), 16)):
        got = _kernel(x, w, pad, 0, threads, run=run)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (run, threads)
    for i in (0, N - 1):        # an image alone has its bits in the batch
        alone = _kernel(x[i:i + 1], w, pad, th, 1)
        assert np.array_equal(alone.view(np.uint32), ref[i:i + 1].view(np.uint32)), i


def test_kernel_rejects_bad_arguments():
    x = np.zeros((2, 16, 16, 16), np.float32)
    w = np.zeros((16, 16, 4, 4), np.float32)
    U = cc.polywino_filters(w)
    y = np.zeros((2, 16, 8, 8), np.float32)
    b = np.zeros(16, np.float32)
    per = wg.polywino_floats(16, 16, 2, 2)
    ws = np.zeros(per, np.float32)
    with pytest.raises(ValueError, match="workspace"):
        wg.conv2d_forward_polywino(x, U, b, False, y, ws[:-1], per - 1, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="workspace"):
        wg.conv2d_forward_polywino(x, U, b, False, y, ws, per, 2, 1, 1, 2)
    with pytest.raises(ValueError, match="U must be"):
        wg.conv2d_forward_polywino(x, np.ascontiguousarray(U[:, :32]), b, False, y, ws,
                                   per, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="bias too short"):
        wg.conv2d_forward_polywino(x, U, b[:8], True, y, ws, per, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="bad shapes or padding"):
        wg.conv2d_forward_polywino(x, U, b, False, y[:1], ws, per, 2, 1, 1, 1)
    # runs of 3 tiles of 2-wide tile rows: one spans 2 rows (tiles 3, 4, 5), not 1
    assert wg.polywino_run_rows(4, 2, 3) == 2 and wg.polywino_run_rows(4, 2, 4) == 2
    with pytest.raises(ValueError, match="span more than trows"):
        wg.conv2d_forward_polywino(x, U, b, False, y, ws, per, 1, 1, 1, 1, 3)
    with pytest.raises(ValueError, match="span more than trows"):
        wg.conv2d_forward_polywino(x, U, b, False, y, ws, per, 2, 1, 1, 1, -1)
    # grad_x's kernel (y of the conv is its input): the same checks, its own name
    Ug = cc.polywino_grad_filters(w)
    pg = wg.polywino_gx_floats(16, 16, 2, 3)
    wsg = np.zeros(pg, np.float32)
    with pytest.raises(ValueError, match="conv2d_grad_input_polywino: workspace"):
        wg.conv2d_grad_input_polywino(y, Ug, b, False, x, wsg[:-1], pg - 1, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="U must be"):
        wg.conv2d_grad_input_polywino(y, U, b, False, x, wsg, pg, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="conv2d_grad_input_polywino: bias too short"):
        wg.conv2d_grad_input_polywino(y, Ug, b[:8], True, x, wsg, pg, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="conv2d_grad_input_polywino: bad shapes"):
        wg.conv2d_grad_input_polywino(y, Ug, b, False, x, wsg, pg, 0, 1, 1, 1)


def test_workspace_floats_agree_with_the_plan():
    for C, F, tr, tw in ((32, 64, 7, 7), (17, 20, 3, 5), (9, 8, 1, 1)):
        assert P.polywino_floats(C, F, tr, tw) == wg.polywino_floats(C, F, tr, tw)


def test_filters_are_the_phase_sub_kernels_transformed():
    """U[e, ph * C8 + c, f] = (G g G^T)[e // 5, e % 5] with g the 2x2 sub-kernel of phase ph."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((10, 11, 4, 4)).astype(np.float32)
    U = cc.polywino_filters(w)
    assert U.shape == (25, 4 * 16, 16)
    G = cc._PW_G
    for f, c, p, q in ((0, 0, 0, 0), (9, 10, 1, 1), (4, 7, 0, 1), (3, 2, 1, 0)):
        g = w[f, c, p::2, q::2].astype(np.float64)
        want = (G @ g @ G.T).ravel()      # (float64: U's rounding, not its bits)
        np.testing.assert_allclose(U[:, (2 * p + q) * 16 + c, f], want, rtol=1e-6, atol=1e-7)
    assert not U[:, :, 10:].any() and not U[:, 11:16].any()     # padded filters, channels


# (maps of <= 64 output positions keep the batch GEMM, which the rules try first)
def _plan(x, w, pad=1, stride=2, dilation=1, groups=1):
    return cc._plan(x, w, (stride, stride), (pad,) * 4, (dilation, dilation), groups)[3]


def test_the_plan_takes_it_where_the_rule_says():
    f32 = np.float32
    half_rate_ok = P.avx2_algo(cc._caps(), "polywino")
    for N, C, F, H in ((8, 32, 64, 56), (1, 16, 16, 20), (3, 64, 24, 30)):
        plan = _plan(np.zeros((N, C, H, H), f32), np.zeros((F, C, 4, 4), f32))
        assert (plan.forward.algo == "polywino") == half_rate_ok, (N, C, F, H)
    if not half_rate_ok:
        return
    th = 7
    plan = _plan(np.zeros((8, 32, 56, 56), f32), np.zeros((64, 32, 4, 4), f32))
    assert plan.forward.params["trows"] == th       # convt_28: an image per task
    not_it = [
        (np.zeros((8, 32, 56, 56), np.float64), np.zeros((64, 32, 4, 4)), {}),   # float64
        (np.zeros((8, 8, 56, 56), f32), np.zeros((64, 8, 4, 4), f32), {}),       # < 16 in
        (np.zeros((8, 32, 56, 56), f32), np.zeros((12, 32, 4, 4), f32), {}),     # < 16 out
        (np.zeros((8, 32, 56, 56), f32), np.zeros((64, 32, 3, 3), f32), {}),     # 3x3
        (np.zeros((8, 32, 56, 56), f32), np.zeros((64, 32, 4, 4), f32), {"stride": 1}),
        (np.zeros((8, 32, 56, 56), f32), np.zeros((64, 32, 4, 4), f32), {"dilation": 2}),
        (np.zeros((8, 32, 56, 56), f32), np.zeros((64, 16, 4, 4), f32), {"groups": 2}),
    ]
    for x, w, kw in not_it:
        assert _plan(x, w, **kw).forward.algo != "polywino", (x.shape, w.shape, kw)


def test_the_plan_cuts_tasks_for_the_team_and_the_limit():
    f32 = np.float32
    if not P.avx2_algo(cc._caps(), "polywino"):
        pytest.skip("the half-rate rule does not take polywino on this CPU")
    s = P.ConvShape.of((1, 32, 56, 56), (64, 32, 4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1)
    caps = cc._caps()
    n, rows, per, run = P.plan_polywino(s, 28, 28, True, caps, 4, 1 << 30)
    assert (n, rows, run) == (4, 2, 0) and per == P.polywino_floats(32, 64, 2, 7)  # 4 tasks
    assert P.plan_polywino(s, 28, 28, True, caps, 1, 4 * per - 4) is None
    big = s._replace(H=256, W=256)      # 8 tile rows of 32 tiles in POLYWINO_TASK_BYTES: 3
    n, rows, per, run = P.plan_polywino(big, 128, 128, True, caps, 2, 1 << 30)
    assert per * 4 <= P.T.POLYWINO_TASK_BYTES < P.polywino_floats(32, 64, rows + 1, 32) * 4
    wide = s._replace(H=512, W=512)     # one tile row is over it: tasks of one row
    assert P.plan_polywino(wide, 256, 256, True, caps, 2, 1 << 30)[1] == 1
    # convt_28's grad_x (8 images of 7 x 7 tiles) on 16 threads: whole tile rows leave 12 %
    # of the team idle (blocks of 2, 2, 2, 1), so runs of 25 tiles across row ends (25 + 24 an
    # image, spanning 4 tile rows: 2 %); on 1, 2 and 8 threads a whole image a task, as before
    convt = s._replace(N=8)
    assert P.plan_polywino(convt, 28, 28, True, caps, 16, 1 << 30) == (
        16, 4, P.polywino_floats(32, 64, 4, 7), 25)
    for nt in (1, 2, 8):
        assert P.plan_polywino(convt, 28, 28, True, caps, nt, 1 << 30) == (
            nt, 7, P.polywino_floats(32, 64, 7, 7), 0)
    assert P._static_idle([25, 24] * 8, 16) < 0.03 < 0.1 < P._static_idle([2, 2, 2, 1] * 8, 16)
    assert [P.polywino_run_rows(7, 7, r) for r in (25, 7, 14, 8, 1)] == [4, 1, 2, 2, 1]
    assert P.polywino_run_rows(5, 2, 3) == wg.polywino_run_rows(5, 2, 3) == 2


def test_conv_transpose_grad_x_matches_torch_and_keeps_its_bits_on_any_thread_count():
    """convt_28-like: conv_transpose2d k4 s2 p1, whose grad_x is this conv's forward."""
    rng = np.random.default_rng(28)
    x = rng.standard_normal((3, 24, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((24, 16, 4, 4)) / 8).astype(np.float32)
    gy = rng.standard_normal((3, 16, 28, 28)).astype(np.float32)
    xt = torch.from_numpy(x).double().requires_grad_()
    yt = torch.nn.functional.conv_transpose2d(xt, torch.from_numpy(w).double(), stride=2,
                                              padding=1)
    yt.backward(torch.from_numpy(gy).double())
    want = xt.grad.numpy()
    assert _plan(gy, w).forward.algo == ("polywino" if P.avx2_algo(cc._caps(), "polywino")
                                         else _plan(gy, w).forward.algo)
    runs = _on_1_2_8_16(lambda: convkit.conv_transpose2d_backward(
        gy, x, w, stride=2, padding=1, has_bias=False)[0])
    _close(runs[0], want, "conv_transpose2d grad_x")
    for got in runs[1:]:
        assert np.array_equal(got.view(np.uint32), runs[0].view(np.uint32))
    with convkit.use_backend("cpu"):     # batch invariance: the last image alone
        alone = convkit.conv_transpose2d_backward(gy[2:], x[2:], w, stride=2, padding=1,
                                                  has_bias=False)[0]
    assert np.array_equal(alone.view(np.uint32), runs[0][2:].view(np.uint32))


@pytest.mark.parametrize("where", ["x", "weight"])
def test_api_non_finite_element_for_element(where):
    """The transforms mix a 5x5 tile's phase inputs into all 16 of its outputs: a NaN or inf
    must reach exactly the outputs torch's does (the plan's exact fallback)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 16, 20, 20)).astype(np.float32)
    w = rng.standard_normal((16, 16, 4, 4)).astype(np.float32)
    {"x": x, "weight": w}[where][1, 3, 2, 1] = np.inf
    {"x": x, "weight": w}[where][0, 5, 1, 2] = np.nan
    want = _torch_conv(x, w, None, 1)
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, None, stride=2, padding=1)
    assert np.array_equal(np.isnan(y), np.isnan(want))
    assert np.array_equal(np.isposinf(y), np.isposinf(want))
    assert np.array_equal(np.isneginf(y), np.isneginf(want))
    fin = np.isfinite(want)
    _close(np.where(fin, y, 0), np.where(fin, want, 0), "finite outputs")


# ------------------------------------------------- grad_x (conv_transpose2d k4 s2's forward)
def _torch_convt(x, w, b, pad, out_hw):
    """conv_transpose2d of x (N, F, Ho, Wo) with w (F, C, 4, 4), output cropped / padded to
    out_hw by output_padding."""
    Ho, Wo = x.shape[2:]
    op = tuple(o - ((i - 1) * 2 - 2 * p + 4) for o, i, p in zip(out_hw, (Ho, Wo), pad))
    return torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x).double(), torch.from_numpy(w).double(),
        None if b is None else torch.from_numpy(b).double(), stride=2, padding=pad,
        output_padding=op).numpy()


def _gx_kernel(gy, w, hw, pad, trows, threads, bias=None):
    N, F, Ho, Wo = gy.shape
    C = w.shape[1]
    H, W = hw
    pt, pl = pad
    U = cc.polywino_grad_filters(w)
    tw = -(-((W - 1 + pl) // 2 + 1) // 4)
    per = wg.polywino_gx_floats(F, C, trows, tw)
    ws = np.full(threads * per, np.nan, np.float32)
    gx = np.full((N, C, H, W), np.nan, np.float32)
    b = np.zeros(C, np.float32) if bias is None else bias
    wg.conv2d_grad_input_polywino(gy, U, b, bias is not None, gx, ws, per, trows, pt, pl,
                                  threads)
    return gx


# (N, F, C, Ho, Wo, (H, W), (pt, pl)): convt_28's forward (28 -> 56), odd output sizes
# (output_padding 1), C and F not multiples of 8, paddings 0 and 2
GX_CASES = [(2, 64, 32, 28, 28, (56, 56), (1, 1)), (3, 20, 17, 15, 18, (31, 36), (1, 1)),
            (1, 16, 24, 12, 9, (23, 19), (2, 1)), (2, 19, 9, 6, 11, (14, 24), (0, 0)),
            (5, 33, 16, 7, 7, (14, 13), (1, 2))]


@pytest.mark.parametrize("case", GX_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_grad_x_kernel_matches_torch_float64(case):
    N, F, C, Ho, Wo, hw, pad = case
    rng = np.random.default_rng(N * 10 + F + C)
    gy = rng.standard_normal((N, F, Ho, Wo)).astype(np.float32)
    w = (rng.standard_normal((F, C, 4, 4)) / np.sqrt(4 * F)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    want = _torch_convt(gy, w, b, pad, hw)
    th = -(-((hw[0] - 1 + pad[0]) // 2 + 1) // 4)
    ref = None
    for trows, threads in sorted({(th, 1), (1, 2), (2, 3), (th, 16)}):
        got = _gx_kernel(gy, w, hw, pad, trows, threads, bias=b)
        _close(got, want, f"trows {trows}")
        if ref is None:
            ref = got
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (trows, threads)
    alone = _gx_kernel(gy[N - 1:], w, hw, pad, th, 1, bias=b)      # batch invariance
    assert np.array_equal(alone.view(np.uint32), ref[N - 1:].view(np.uint32))


def test_grad_x_filters_are_the_flipped_phase_sub_kernels_transformed():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((10, 11, 4, 4)).astype(np.float32)
    U = cc.polywino_grad_filters(w)
    assert U.shape == (25, 16, 4 * 16)
    G = cc._PW_G
    for f, c, p, q in ((0, 0, 0, 0), (9, 10, 1, 1), (4, 7, 0, 1), (3, 2, 1, 0)):
        g = w[f, c, p::2, q::2][::-1, ::-1].astype(np.float64)
        want = (G @ g @ G.T).ravel()
        np.testing.assert_allclose(U[:, f, (2 * p + q) * 16 + c], want, rtol=1e-6, atol=1e-7)
    assert not U[:, 10:].any() and not U.reshape(25, 16, 4, 16)[:, :, :, 11:].any()


def test_grad_x_workspace_floats_agree_with_the_plan():
    for F, C, tr, tw in ((64, 32, 8, 8), (17, 20, 3, 5), (9, 8, 1, 1)):
        assert P.polywino_gx_floats(F, C, tr, tw) == wg.polywino_gx_floats(F, C, tr, tw)


def test_conv_transpose_forward_plan_api_threads_and_bits():
    """convt_28-like conv_transpose2d forward (= conv2d grad_x) on the plan, with bias, against
    torch; the same bits on 1, 2, 8 and 16 threads and for an image alone."""
    rng = np.random.default_rng(56)
    x = rng.standard_normal((3, 32, 14, 13)).astype(np.float32)
    w = (rng.standard_normal((32, 16, 4, 4)) / 8).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    want = _torch_convt(x, w, b, (1, 1), (28, 26))
    plan = _plan(np.zeros((3, 16, 28, 26), np.float32), w)
    if P.avx2_algo(cc._caps(), "polywino"):
        assert plan.grad_x.algo == "polywino"
    runs = _on_1_2_8_16(lambda: convkit.conv_transpose2d_forward(x, w, b, stride=2, padding=1))
    _close(runs[0], want, "conv_transpose2d forward")
    for got in runs[1:]:
        assert np.array_equal(got.view(np.uint32), runs[0].view(np.uint32))
    with convkit.use_backend("cpu"):
        alone = convkit.conv_transpose2d_forward(x[1:2], w, b, stride=2, padding=1)
    assert np.array_equal(alone.view(np.uint32), runs[0][1:2].view(np.uint32))


@pytest.mark.parametrize("where", ["x", "weight"])
def test_conv_transpose_forward_non_finite_element_for_element(where):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 16, 10, 10)).astype(np.float32)
    w = rng.standard_normal((16, 16, 4, 4)).astype(np.float32)
    {"x": x, "weight": w}[where][1, 3, 2, 1] = np.inf
    {"x": x, "weight": w}[where][0, 5, 1, 2] = np.nan
    want = _torch_convt(x, w, None, (1, 1), (20, 20))
    with convkit.use_backend("cpu"):
        y = convkit.conv_transpose2d_forward(x, w, None, stride=2, padding=1)
    assert np.array_equal(np.isnan(y), np.isnan(want))
    assert np.array_equal(np.isposinf(y), np.isposinf(want))
    assert np.array_equal(np.isneginf(y), np.isneginf(want))
    fin = np.isfinite(want)
    _close(np.where(fin, y, 0), np.where(fin, want, 0), "finite outputs")


# ------------------------------------- grad_weight (conv_transpose2d k4 s2's grad_weight)
def _torch_wgrad(x, gy, pad):
    """conv2d's grad_weight of a 4x4 stride-2 conv in float64 (x padded by pad = (pt, pl) on
    both sides; gy's size may leave x's last rows and columns unread)."""
    xt = torch.from_numpy(x).double()
    wt = torch.zeros((gy.shape[1], x.shape[1], 4, 4), dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=2, padding=pad)
    yt[:, :, :gy.shape[2], :gy.shape[3]].backward(torch.from_numpy(gy).double())
    return wt.grad.numpy()


def _wgrad_kernel(x, gy, pad, imgs, cols, threads):
    """conv2d_grad_weight_polywino called directly, NaN in its workspace and in gw beforehand
    (no stale value may be read; every weight must be written)."""
    C, F = x.shape[1], gy.shape[1]
    a, per = wg.polywino_wgrad_floats(C, F, gy.shape[2], gy.shape[3], imgs)
    ws = np.full(a + threads * per, np.nan, np.float32)
    gw = np.full((F, C, 4, 4), np.nan, np.float32)
    wg.conv2d_grad_weight_polywino(gy, x, gw, ws, pad[0], pad[1], imgs, cols, threads)
    return gw


# (N, C, F, H, W, (pt, pl)): convt_28's grad_weight (x 56 -> gy 28: 7 tiles exactly), ragged
# last tile rows and columns, C and F not multiples of 8, paddings 0 and 2, one image
WGRAD_CASES = [(3, 32, 64, 56, 56, (1, 1)), (3, 20, 17, 30, 22, (1, 1)),
               (1, 16, 24, 13, 19, (2, 0)), (5, 19, 8, 10, 36, (0, 2)),
               (4, 9, 33, 8, 8, (1, 1))]


@pytest.mark.parametrize("case", WGRAD_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_wgrad_kernel_matches_torch_float64_and_keeps_its_bits(case):
    """Against torch float64; the same bits for any image group, GEMM column block and thread
    count (each weight one FMA chain over the batch's tiles in order)."""
    N, C, F, H, W, pad = case
    rng = np.random.default_rng(N * 1000 + C * 10 + F)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    Ho, Wo = (H + 2 * pad[0] - 4) // 2 + 1, (W + 2 * pad[1] - 4) // 2 + 1
    gy = rng.standard_normal((N, F, Ho, Wo)).astype(np.float32)
    want = _torch_wgrad(x, gy, pad)
    ref = _wgrad_kernel(x, gy, pad, N, 64, 1)
    _close(ref, want, "grad_weight")
    K = 4 * (-(-C // 8) * 8)
    for imgs, cols, threads in ((1, 8, 2), (2, K, 3), (N + 3, 24, 16), (max(1, N - 1), 40, 8)):
        got = _wgrad_kernel(x, gy, pad, imgs, cols, threads)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (imgs, cols, threads)


def test_wgrad_kernel_reads_past_x_as_zeros():
    """A grad_y larger than x's padded reach (conv_transpose2d's output_padding): the phase
    planes' rows and columns past x are zeros, as torch's."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 16, 11, 13)).astype(np.float32)
    gy = rng.standard_normal((2, 16, 7, 8)).astype(np.float32)     # torch gives 5 x 6
    xp = np.zeros((2, 16, 16, 18), np.float32)
    xp[:, :, :11, :13] = x          # (the zeros made explicit: torch reads them)
    want = _torch_wgrad(xp, gy, (1, 1))
    _close(_wgrad_kernel(x, gy, (1, 1), 1, 64, 2), want, "grad_weight past x")


def test_wgrad_kernel_rejects_bad_arguments():
    x = np.zeros((2, 16, 16, 16), np.float32)
    gy = np.zeros((2, 24, 8, 8), np.float32)
    a, per = wg.polywino_wgrad_floats(16, 24, 8, 8, 2)
    ws = np.zeros(a + per, np.float32)
    gw = np.zeros((24, 16, 4, 4), np.float32)
    with pytest.raises(ValueError, match="ws too small"):
        wg.conv2d_grad_weight_polywino(gy, x, gw, ws[:-1], 1, 1, 2, 64, 1)
    with pytest.raises(ValueError, match="ws too small"):
        wg.conv2d_grad_weight_polywino(gy, x, gw, ws, 1, 1, 2, 64, 2)
    with pytest.raises(ValueError, match="gw must be"):
        wg.conv2d_grad_weight_polywino(gy, x, np.zeros((24, 8, 4, 4), np.float32), ws, 1, 1,
                                       2, 64, 1)
    with pytest.raises(ValueError, match="bad shapes"):
        wg.conv2d_grad_weight_polywino(gy[:1], x, gw, ws, 1, 1, 2, 64, 1)
    with pytest.raises(ValueError, match="bad shapes"):
        wg.conv2d_grad_weight_polywino(gy, x, gw, ws, 1, 1, 2, 0, 1)


def test_wgrad_workspace_floats_agree_with_the_plan():
    for C, F, Ho, Wo, imgs, nt in ((32, 64, 28, 28, 4, 2), (17, 20, 9, 13, 3, 5),
                                   (9, 8, 1, 1, 1, 1)):
        a, per = wg.polywino_wgrad_floats(C, F, Ho, Wo, imgs)
        assert P.polywino_wgrad_floats(C, F, Ho, Wo, imgs, nt) == a + nt * per


def test_wgrad_plan_takes_it_where_the_rule_says():
    f32 = np.float32
    caps = cc._caps()
    it = caps.winotiny and P.avx2_algo(caps, "weight_polywino")
    convt = P.ConvShape.of((8, 32, 56, 56), (64, 32, 4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1)
    for nt in (1, 2, 16):
        plan = P.plan_conv(convt, f32, nt, caps, 1 << 30, needs_input_grad=False)
        assert (plan.grad_weight.algo == "weight_polywino") == it, (nt, plan)
    if not it:
        return
    gw = P.plan_conv(convt, f32, 2, caps, 1 << 30, needs_input_grad=False).grad_weight
    # 941 KB of V and Z an image: groups of 2 images in WGRAD_PW_GROUP_BYTES (2 MiB)
    assert gw.params == {"imgs": 2, "cols": P.T.WGRAD_PW_COLS,
                         "floats": P.polywino_wgrad_floats(32, 64, 28, 28, 2, 2)}
    assert P.plan_conv(convt, f32, 2, caps, 4 * gw.params["floats"] - 4,
                       needs_input_grad=False).grad_weight.algo != "weight_polywino"
    # 16 threads: one group of the 8 images (WGRAD_PW_THREAD_BYTES a thread), 2 parallel
    # regions; GEMM tasks of 16 columns (50 of 64 would leave 22 % of the team idle, 200: 4 %)
    gw16 = P.plan_conv(convt, f32, 16, caps, 1 << 30, needs_input_grad=False).grad_weight
    assert gw16.params == {"imgs": 8, "cols": 16,
                           "floats": P.polywino_wgrad_floats(32, 64, 28, 28, 8, 16)}
    # ... back to groups of 2 where the whole batch's V and Z pass the limit
    small = P.polywino_wgrad_floats(32, 64, 28, 28, 2, 16) * 4
    assert P.plan_conv(convt, f32, 16, caps, small, needs_input_grad=False).grad_weight.params[
        "imgs"] == 2
    assert [P.wgrad_pw_cols(128, n) for n in (1, 2, 8, 16)] == [64, 64, 32, 16]
    for other in (convt._replace(C=8), convt._replace(F=12),
                  P.ConvShape.of((8, 32, 56, 56), (64, 32, 3, 3), (2, 2), (1, 1, 1, 1),
                                 (1, 1), 1),
                  P.ConvShape.of((8, 32, 56, 56), (64, 32, 4, 4), (2, 2), (1, 1, 1, 1),
                                 (2, 2), 1),
                  P.ConvShape.of((8, 32, 16, 16), (64, 32, 4, 4), (2, 2), (1, 1, 1, 1),
                                 (1, 1), 1)):     # 8x8 maps: the batch path
        assert P.plan_conv(other, f32, 2, caps, 1 << 30).grad_weight.algo != \
            "weight_polywino", other
    assert P.plan_conv(convt, np.float64, 2, caps, 1 << 30).grad_weight.algo != \
        "weight_polywino"


def test_conv_transpose_grad_weight_plan_api_threads_and_bits():
    """convt_28-like conv_transpose2d's grad_weight (conv2d's with x and grad_y swapped) on the
    plan against torch; the same bits on 1, 2, 8 and 16 threads."""
    rng = np.random.default_rng(57)
    x = rng.standard_normal((3, 32, 14, 13)).astype(np.float32)
    w = (rng.standard_normal((32, 16, 4, 4)) / 8).astype(np.float32)
    gy = rng.standard_normal((3, 16, 28, 26)).astype(np.float32)
    xt = torch.from_numpy(x).double()
    wt = torch.from_numpy(w).double().requires_grad_()
    torch.nn.functional.conv_transpose2d(xt, wt, stride=2, padding=1).backward(
        torch.from_numpy(gy).double())
    want = wt.grad.numpy()
    plan = cc._plan(gy, w, (2, 2), (1,) * 4, (1, 1), 1, False)[3]
    if cc._caps().winotiny and P.avx2_algo(cc._caps(), "weight_polywino"):
        assert plan.grad_weight.algo == "weight_polywino"
    runs = _on_1_2_8_16(lambda: convkit.conv_transpose2d_backward(
        gy, x, w, stride=2, padding=1, has_bias=True)[1])
    _close(runs[0], want, "conv_transpose2d grad_weight")
    for got in runs[1:]:
        assert np.array_equal(got.view(np.uint32), runs[0].view(np.uint32))


@pytest.mark.parametrize("where", ["x", "grad_y"])
def test_conv_transpose_grad_weight_non_finite_element_for_element(where):
    """The transforms mix a tile's values into all 16 weights of its (filter, channel): a NaN
    or inf must reach exactly the weights torch's does (the plan's exact fallback)."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 16, 10, 10)).astype(np.float32)
    w = rng.standard_normal((16, 24, 4, 4)).astype(np.float32)
    gy = rng.standard_normal((3, 24, 20, 20)).astype(np.float32)
    a = {"x": x, "grad_y": gy}[where]
    a[1, 3, 2, 1] = np.inf
    a[0, 5, 1, 2] = np.nan
    xt = torch.from_numpy(x).double()
    wt = torch.from_numpy(w).double().requires_grad_()
    torch.nn.functional.conv_transpose2d(xt, wt, stride=2, padding=1).backward(
        torch.from_numpy(gy).double())
    want = wt.grad.numpy()
    with convkit.use_backend("cpu"):
        gw = convkit.conv_transpose2d_backward(gy, x, w, stride=2, padding=1,
                                               has_bias=False)[1]
    assert np.array_equal(np.isnan(gw), np.isnan(want))
    assert np.array_equal(np.isposinf(gw), np.isposinf(want))
    assert np.array_equal(np.isneginf(gw), np.isneginf(want))
    fin = np.isfinite(want)
    _close(np.where(fin, gw, 0), np.where(fin, want, 0), "finite weights")
