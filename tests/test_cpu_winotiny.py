"""Winograd F(2x2, 3x3) on tiny maps with 8 images in the vector lanes (csrc/winotiny.h,
_conv_winograd.conv2d_forward_winotiny; conv_plan.plan_winotiny): the 3x3 stride-1 convs padded
by 1 whose maps (even sides, <= 64 positions) the batch GEMM took, float32 on AVX2 + FMA,
forward and grad_x; grad_weight by the transposed F(2x2) over the same tiles
(conv2d_grad_weight_winotiny, plan_weight_winotiny).  Checked against torch in float64, for the
same bits on any batch, block and thread count (grad_weight: any thread count), and for torch's
NaN / inf element for element."""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import _conv_winograd as wg

torch = pytest.importorskip("torch")

ok, why = convkit.backend_status("cpu")
pytestmark = [pytest.mark.skipif(not ok, reason=why[:300]),
              pytest.mark.skipif(ok and not wg.winotiny_available(),
                                 reason="csrc/winotiny.h needs AVX2 + FMA")]

# F(2x2)'s error at these sizes is ~2e-7 of the output's scale (torch's float32 conv: ~3e-7)
REL = 1e-6


def _torch_conv(x, w, b=None):
    return torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), torch.from_numpy(w).double(),
        None if b is None else torch.from_numpy(b).double(), padding=1).numpy()


def _close(got, want, what):
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= REL, f"{what}: max error {err:.3g} of the largest value"


def _kernel(x, w, groups, threads, bias=None, flip=False):
    """conv2d_forward_winotiny called directly, NaN in its workspace and output beforehand
    (no stale value may be read)."""
    N, C, H, W = x.shape
    F = w.shape[1] if flip else w.shape[0]
    U = np.full((16, F, C), np.nan, np.float32)
    wg.winograd_filters(w, U, threads, flip)
    per = wg.winotiny_floats(C, F, H, W, groups)
    ws = np.full(threads * per, np.nan, np.float32)
    y = np.full((N, F, H, W), np.nan, np.float32)
    b = np.zeros(F, np.float32) if bias is None else bias
    wg.conv2d_forward_winotiny(x, U, b, bias is not None, y, ws, per, groups, threads)
    return y


# (N, C, F, H, W): batches not a multiple of 8 (short last group), 8x8 (the transposed path),
# 4x4, 6x6 and non-square maps, channel counts not a multiple of 8
KERNEL_CASES = [(16, 16, 16, 8, 8), (13, 16, 16, 8, 8), (3, 24, 17, 8, 8), (9, 32, 32, 4, 4),
                (5, 17, 20, 6, 6), (11, 16, 16, 4, 8), (8, 16, 18, 8, 2), (1, 16, 16, 2, 2)]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_kernel_matches_torch_float64(case):
    N, C, F, H, W = case
    rng = np.random.default_rng(N * 100 + C + H)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((F, C, 3, 3)) / 3).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    _close(_kernel(x, w, 1, 2, bias=b), _torch_conv(x, w, b), "forward")
    # grad_x: the conv of grad_y with the filters flipped and transposed, padded by 1 too
    gy = rng.standard_normal((N, F, H, W)).astype(np.float32)
    want = torch.nn.grad.conv2d_input((N, C, H, W), torch.from_numpy(w).double(),
                                      torch.from_numpy(gy).double(), padding=1).numpy()
    _close(_kernel(gy, w, 1, 2, flip=True), want, "grad_x")


@pytest.mark.parametrize("case", KERNEL_CASES[:5], ids=lambda c: "x".join(map(str, c)))
def test_kernel_bits_do_not_depend_on_the_blocks_or_threads(case):
    N, C, F, H, W = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    ref = _kernel(x, w, 1, 1)
    for groups, threads in ((2, 1), (3, 2), (1, 3), (2, 4)):
        got = _kernel(x, w, groups, threads)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (groups, threads)
    # an image alone (lane 0 of a group of 1) has the bits it has in lane i of the batch
    for i in (0, N - 1):
        alone = _kernel(x[i:i + 1], w, 1, 1)
        assert np.array_equal(alone.view(np.uint32), ref[i:i + 1].view(np.uint32)), i


def _split_kernel(x, w, fparts, threads, bias=None, flip=False):
    """conv2d_forward_winotiny's two-region split (fparts > 0), NaN in its workspace (not on a
    64-byte line) and output beforehand."""
    N, C, H, W = x.shape
    F = w.shape[1] if flip else w.shape[0]
    U = np.full((16, F, C), np.nan, np.float32)
    wg.winograd_filters(w, U, threads, flip)
    shared, per = wg.winotiny_split_floats(C, F, H, W, N, fparts)
    ws = np.full(shared + threads * per + 3, np.nan, np.float32)[3:]
    y = np.full((N, F, H, W), np.nan, np.float32)
    b = np.zeros(F, np.float32) if bias is None else bias
    wg.conv2d_forward_winotiny(x, U, b, bias is not None, y, ws, per, 1, threads, fparts)
    return y


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_split_kernel_gives_the_one_region_bits(case):
    """Issue 16's two-region split (filter blocks after the batch's input transform): each
    output the same chain, so the same bits for any filter blocks (uneven ones too) and
    threads, forward and grad_x, with a bias."""
    N, C, F, H, W = case
    rng = np.random.default_rng(N + C + F)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    gy = rng.standard_normal((N, F, H, W)).astype(np.float32)
    ref, refx = _kernel(x, w, 1, 1, bias=b), _kernel(gy, w, 1, 1, flip=True)
    for fparts, threads in ((1, 1), (2, 3), (3, 2), (F, 5), (5, 16)):
        got = _split_kernel(x, w, fparts, threads, bias=b)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (fparts, threads)
        got = _split_kernel(gy, w, min(fparts, C), threads, flip=True)
        assert np.array_equal(got.view(np.uint32), refx.view(np.uint32)), (fparts, threads)


def test_kernel_rejects_bad_arguments():
    x = np.zeros((2, 16, 8, 8), np.float32)
    U = np.zeros((16, 16, 16), np.float32)
    y = np.zeros((2, 16, 8, 8), np.float32)
    b = np.zeros(16, np.float32)
    per = wg.winotiny_floats(16, 16, 8, 8, 1)
    ws = np.zeros(per, np.float32)
    with pytest.raises(ValueError, match="workspace"):
        wg.conv2d_forward_winotiny(x, U, b, False, y, ws[:-1], per - 1, 1, 1)
    with pytest.raises(ValueError, match="workspace"):
        wg.conv2d_forward_winotiny(x, U, b, False, y, ws, per, 1, 2)
    with pytest.raises(ValueError, match="even"):
        wg.conv2d_forward_winotiny(np.zeros((2, 16, 7, 7), np.float32), U, b, False,
                                   np.zeros((2, 16, 7, 7), np.float32), ws, per, 1, 1)
    shared, sper = wg.winotiny_split_floats(16, 16, 8, 8, 2, 2)
    sws = np.zeros(shared + 2 * sper, np.float32)
    with pytest.raises(ValueError, match="too small for the split"):
        wg.conv2d_forward_winotiny(x, U, b, False, y, sws[:-1], sper, 1, 2, 2)
    with pytest.raises(ValueError, match="too small for the split"):
        wg.conv2d_forward_winotiny(x, U, b, False, y, sws, sper, 1, 2, 1)  # (a block of 16)
    with pytest.raises(ValueError, match="fparts must be"):
        wg.conv2d_forward_winotiny(x, U, b, False, y, sws, sper, 1, 2, 17)
    with pytest.raises(ValueError, match="U must be"):
        wg.conv2d_forward_winotiny(x, np.zeros((16, 8, 16), np.float32), b, False, y, ws,
                                   per, 1, 1)


def test_workspace_floats_agree_with_the_plan():
    for C, F, H, W, g in ((16, 16, 8, 8, 1), (32, 24, 4, 4, 3), (17, 40, 6, 2, 2)):
        assert P.winotiny_floats(C, F, H, W, g) == wg.winotiny_floats(C, F, H, W, g)
    for N, C, F, H, W in ((64, 16, 16, 8, 8), (128, 32, 32, 4, 4), (13, 17, 40, 6, 2)):
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        caps = cc._caps()
        n, pg, chunk, per, sums, more = P.plan_weight_winotiny(s, True, caps, 2, 1 << 30)
        assert more == {}
        assert per == wg.winotiny_wgrad_floats(C, F, H, W, chunk)
        assert sums == -(-(-(-N // 8)) // pg) * 16 * F * C
    # the splits' (issue 16): 16 threads on fewer groups / parts
    caps = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, fixed_sgemm=True, winotiny=True)
    for N, C, F, H, W in ((64, 16, 16, 8, 8), (64, 32, 32, 4, 4), (13, 17, 40, 6, 2)):
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        for grad_x in (False, True):
            cin, cout = (F, C) if grad_x else (C, F)
            n, g, per, more = P.plan_winotiny(s, True, caps, 16, 1 << 30, grad_x)
            assert (more["shared"], per) == wg.winotiny_split_floats(cin, cout, H, W, N,
                                                                     more["fparts"])
        n, pg, chunk, per, sums, more = P.plan_weight_winotiny(s, True, caps, 16, 1 << 30)
        assert more["split"] and more["shared"] == wg.winotiny_wgrad_split_floats(C, F, H, W, N)
        assert per == 8 * ((H + 2) * (W + 2) + H * W)


def _wgrad_kernel(x, gy, part_groups, chunk, threads):
    """conv2d_grad_weight_winotiny called directly, NaN in its workspace and output beforehand."""
    N, C, H, W = x.shape
    F = gy.shape[1]
    per = wg.winotiny_wgrad_floats(C, F, H, W, chunk)
    sums = -(-(-(-N // 8)) // part_groups) * 16 * F * C
    ws = np.full(sums + threads * per + 3, np.nan, np.float32)[3:]     # (not 64-byte aligned)
    gw = np.full((F, C, 3, 3), np.nan, np.float32)
    wg.conv2d_grad_weight_winotiny(gy, x, gw, ws, per, part_groups, chunk, threads)
    return gw


# (N, C, F, H, W, part_groups, chunk): short last groups and parts, chunks that do not divide
# the parts, odd filter counts and channels not a multiple of 4 (the 2 x 4 blocks' edges), more
# than 64 channels (the final sum's channel blocks), non-square maps
WGRAD_CASES = [(64, 16, 16, 8, 8, 4, 1), (13, 16, 16, 8, 8, 1, 1), (29, 24, 17, 8, 8, 3, 2),
               (40, 32, 32, 4, 4, 4, 4), (33, 18, 21, 6, 6, 4, 2), (11, 80, 16, 4, 8, 1, 1),
               (17, 16, 70, 2, 2, 2, 1)]


@pytest.mark.parametrize("case", WGRAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_wgrad_kernel_matches_torch_float64_with_the_same_bits_on_any_thread_count(case):
    N, C, F, H, W, pg, chunk = case
    rng = np.random.default_rng(N * 100 + C + F)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    gy = rng.standard_normal((N, F, H, W)).astype(np.float32)
    want = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (F, C, 3, 3),
                                       torch.from_numpy(gy).double(), padding=1).numpy()
    got = [_wgrad_kernel(x, gy, pg, chunk, n) for n in (1, 2, 3, 5)]
    _close(got[0], want, "grad_weight")
    for g in got[1:]:
        assert np.array_equal(g.view(np.uint32), got[0].view(np.uint32))


def _wgrad_split_kernel(x, gy, part_groups, chunk, threads):
    """conv2d_grad_weight_winotiny's split: the batch's transforms first, then (part, point)
    tasks; NaN in its workspace (not 64-byte aligned) and output beforehand."""
    N, C, H, W = x.shape
    F = gy.shape[1]
    per = 8 * ((H + 2) * (W + 2) + H * W)       # (csrc/winotiny.h ck_wt_scratch)
    sums = -(-(-(-N // 8)) // part_groups) * 16 * F * C
    shared = wg.winotiny_wgrad_split_floats(C, F, H, W, N)
    ws = np.full(sums + shared + threads * per + 3, np.nan, np.float32)[3:]
    gw = np.full((F, C, 3, 3), np.nan, np.float32)
    wg.conv2d_grad_weight_winotiny(gy, x, gw, ws, per, part_groups, chunk, threads, True)
    return gw


@pytest.mark.parametrize("case", WGRAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_wgrad_split_gives_the_parts_bits(case):
    """Issue 16's split keeps every point's chain through its part's chunks: the one-region
    kernel's bits on any thread count."""
    N, C, F, H, W, pg, chunk = case
    rng = np.random.default_rng(N + C + F)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    gy = rng.standard_normal((N, F, H, W)).astype(np.float32)
    ref = _wgrad_kernel(x, gy, pg, chunk, 1)
    for threads in (1, 3, 16):
        got = _wgrad_split_kernel(x, gy, pg, chunk, threads)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), threads


def test_wgrad_kernel_rejects_bad_arguments():
    x = np.zeros((8, 16, 8, 8), np.float32)
    gy = np.zeros((8, 16, 8, 8), np.float32)
    gw = np.zeros((16, 16, 3, 3), np.float32)
    per = wg.winotiny_wgrad_floats(16, 16, 8, 8, 1)
    ws = np.zeros(16 * 16 * 16 + per, np.float32)
    with pytest.raises(ValueError, match="workspace too small"):
        wg.conv2d_grad_weight_winotiny(gy, x, gw, ws[:-1], per, 1, 1, 1)
    with pytest.raises(ValueError, match="workspace too small"):
        wg.conv2d_grad_weight_winotiny(gy, x, gw, ws, per - 1, 1, 1, 1)
    with pytest.raises(ValueError, match="gw must be"):
        wg.conv2d_grad_weight_winotiny(gy, x, np.zeros((16, 8, 3, 3), np.float32), ws, per, 1,
                                       1, 1)
    with pytest.raises(ValueError, match="H, W even"):
        wg.conv2d_grad_weight_winotiny(gy[:, :, :7, :7].copy(), x[:, :, :7, :7].copy(), gw, ws,
                                       per, 1, 1, 1)
    with pytest.raises(ValueError, match="must be >= 1"):
        wg.conv2d_grad_weight_winotiny(gy, x, gw, ws, per, 0, 1, 1)
    shared = wg.winotiny_wgrad_split_floats(16, 16, 8, 8, 8)
    sper = 8 * (10 * 10 + 64)
    sws = np.zeros(16 * 16 * 16 + shared + 2 * sper, np.float32)
    with pytest.raises(ValueError, match="too small for the split"):
        wg.conv2d_grad_weight_winotiny(gy, x, gw, sws[:-1], sper, 1, 1, 2, True)
    with pytest.raises(ValueError, match="too small for the split"):
        wg.conv2d_grad_weight_winotiny(gy, x, gw, sws, sper - 1, 1, 1, 2, True)


def _plan(x, w, padding=1, needs_input_grad=True):
    return cc._plan(x, w, (1, 1), (padding,) * 4, (1, 1), 1, needs_input_grad)[3]


def test_the_plan_takes_it_where_the_rule_says():
    def tiny(step):
        return step is not None and step.algo == "winograd" and step.params.get("tiny", False)
    f32 = np.float32
    for N, C, F, H in ((64, 16, 16, 8), (128, 32, 32, 4), (5, 16, 24, 6)):
        plan = _plan(np.zeros((N, C, H, H), f32), np.zeros((F, C, 3, 3), f32))
        assert tiny(plan.forward) and tiny(plan.grad_x), (N, C, F, H)
        assert plan.grad_weight.algo == "weight_winotiny"
        assert _plan(np.zeros((N, C, H, H), f32), np.zeros((F, C, 3, 3), f32),
                     needs_input_grad=False).grad_weight.algo == "weight_winotiny"
        if "fparts" not in plan.forward.params:     # (the split: more tasks than groups)
            assert plan.forward.threads <= -(-N // 8)
    not_tiny = [
        (np.zeros((8, 16, 8, 8), np.float64), np.zeros((16, 16, 3, 3)), 1),    # float64
        (np.zeros((8, 16, 7, 7), f32), np.zeros((16, 16, 3, 3), f32), 1),       # odd sides
        (np.zeros((8, 8, 8, 8), f32), np.zeros((16, 8, 3, 3), f32), 1),         # < 16 channels
        (np.zeros((8, 16, 8, 8), f32), np.zeros((16, 16, 3, 3), f32), 0),       # padding 0
        (np.zeros((8, 16, 10, 10), f32), np.zeros((16, 16, 3, 3), f32), 1),     # > 64 positions
        (np.zeros((8, 16, 8, 8), f32), np.zeros((16, 16, 5, 5), f32), 1),       # 5x5
    ]
    for x, w, pad in not_tiny:
        plan = _plan(x, w, pad)
        assert not tiny(plan.forward) and not tiny(plan.grad_x), (x.shape, w.shape, pad)
        assert plan.grad_weight.algo != "weight_winotiny", (x.shape, w.shape, pad)


def _api(x, w, b, gy):
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, b, padding=1)
        return y, convkit.conv2d_backward(gy, x, w, padding=1, has_bias=True)


@pytest.mark.parametrize("case", [(64, 16, 16, 8), (13, 32, 32, 4), (6, 16, 24, 6)],
                         ids=lambda c: "x".join(map(str, c)))
def test_api_matches_torch_and_keeps_its_bits_on_any_thread_count(case):
    N, C, F, H = case
    rng = np.random.default_rng(N + C)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((F, C, 3, 3)) / 3).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    gy = rng.standard_normal((N, F, H, H)).astype(np.float32)
    xt = torch.from_numpy(x).double().requires_grad_()
    wt = torch.from_numpy(w).double().requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wt, torch.from_numpy(b).double(), padding=1)
    yt.backward(torch.from_numpy(gy).double())
    old = convkit.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3, 8):
            convkit.set_num_threads(n)
            plan = _plan(x, w)
            assert plan.forward.params.get("tiny") and plan.grad_x.params.get("tiny")
            assert plan.grad_weight.algo == "weight_winotiny"
            y, (gx, gw, gb) = _api(x, w, b, gy)
            runs.append((y, gx, gw))
    finally:
        convkit.set_num_threads(old)
    _close(runs[0][0], yt.detach().numpy(), "forward")
    _close(runs[0][1], xt.grad.numpy(), "grad_x")
    _close(runs[0][2], wt.grad.numpy(), "grad_weight")
    for got in runs[1:]:
        for a, c in zip(runs[0], got):
            assert np.array_equal(a.view(np.uint32), c.view(np.uint32))
    # batch invariance: the first three images alone have the batch's bits
    y3, (gx3, _, _) = _api(x[:3], w, b, gy[:3])
    assert np.array_equal(y3.view(np.uint32), runs[0][0][:3].view(np.uint32))
    assert np.array_equal(gx3.view(np.uint32), runs[0][1][:3].view(np.uint32))


@pytest.mark.parametrize("where", ["x", "weight", "grad_y"])
def test_api_non_finite_element_for_element(where):
    """The transforms mix a 4x4 tile's inputs into all of its outputs: a NaN or inf must reach
    exactly the outputs torch's does (the plan falls back to the exact path)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((9, 16, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((9, 16, 8, 8)).astype(np.float32)
    assert _plan(x, w).forward.params.get("tiny")
    {"x": x, "weight": w, "grad_y": gy}[where][1, 3, 2, 1] = np.inf
    {"x": x, "weight": w, "grad_y": gy}[where][0, 5, 1, 2] = np.nan
    xt = torch.from_numpy(x).double().requires_grad_()
    wt = torch.from_numpy(w).double().requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wt, padding=1)
    yt.backward(torch.from_numpy(gy).double())
    y, (gx, gw, gb) = _api(x, w, np.zeros(16, np.float32), gy)
    for got, want in ((y, yt.detach().numpy()), (gx, xt.grad.numpy()), (gw, wt.grad.numpy())):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isposinf(got), np.isposinf(want))
        assert np.array_equal(np.isneginf(got), np.isneginf(want))
