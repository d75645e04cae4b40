"""Winograd F(4x4, 3x3) in the cpu backend (convkit/cpu/_conv_winograd.pyx, csrc/wino4.h, the
plan's tile 4): the kernel against torch float64 on odd / even maps, maps not a multiple of 4,
channel counts not a multiple of the 16-filter transform block, N = 1 and N > 1, float32 and
float64; grad_x through the flipped, transposed filters; the AVX2 and baseline builds of the
transforms give the same bits; and, through the public API with the plan's F(4x4) step: the
same bits for 1, 2, 3, 8 and 16 threads, the workspace limit, and NaN / inf element for element
(the non-finite fallback).  grad_weight by the transposed F(4x4) (conv_plan "weight_winograd"):
the kernel against torch float64 over its parts, channel blocks, transform splits and thread
counts (same bits), on both GEMMs; AVX2 and baseline transforms; the plan's rule and limit; and
through the public API on this machine's caps: 1 / 2 / 3 / 8 threads, the limit, non-finite
input.  float32 on csrc/fgemm.h: the filters packed in strips of 6 (ck_w4_gemm_pk) give the
plain layout's bits and torch's values, forward and grad_x; the packed transform is the plain
one rearranged; the plan packs only there.

Tolerances: float64 1e-12 of the largest reference value; float32 2e-5 of it (the suite's float32
rtol, taken relative to the output's scale: F(4x4)'s error is about 1e-6 of it, ~5x F(2x2)'s,
and on outputs near zero it exceeds the suite's elementwise atol -- see tuning.py,
WINOGRAD4_MIN_CHANNELS)."""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import _conv_winograd as wg

torch = pytest.importorskip("torch")

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

REL = {np.float32: 2e-5, np.float64: 1e-12}
_NO_PACK = np.zeros((0, 1), np.float32)


def _torch_conv(x, w, pads):
    """float64 oracle; pads (top, bottom, left, right), any of them may be 0."""
    t, b, l, r = pads
    xt = torch.nn.functional.pad(torch.from_numpy(x).double(), (l, r, t, b))
    return torch.nn.functional.conv2d(xt, torch.from_numpy(w).double()).numpy()


def _close(got, want, dtype, what):
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(got.astype(np.float64) - want).max() / scale
    assert err <= REL[dtype], f"{what}: max error {err:.3g} of the largest value"


def _kernel(x, w, pt, pl, Ho, Wo, trows, threads, flip=False, bias=None, packed=False,
            fparts=0, extra=0, mix=False):
    """conv2d_forward_winograd with tile 4 called directly (any channel count); packed: the
    filters in ck_w4_gemm_pk's strips (float32 on csrc/fgemm.h); fparts: the two-region split
    (a shared V, then tasks of trows tile rows x fparts blocks of 6-filter strips); extra:
    elements more per thread (the planes' padding where they hold it)."""
    N, C = x.shape[:2]
    F = w.shape[1] if flip else w.shape[0]
    U = np.full((36, wg.winograd4_packed_rows(F) if packed else F, C), np.nan, x.dtype)
    wg.winograd_filters(w, U, threads, flip, packed)
    tw = -(-Wo // 4)
    if fparts:
        rows = 6 * -(-(-(-F // 6)) // fparts)
        per = 36 * rows * trows * tw + wg.winograd4_scratch(trows, tw)
        shared = 36 * C * N * -(-Ho // 4) * tw
    else:
        per = 36 * (C + F) * trows * tw + wg.winograd4_scratch(trows, tw)
        shared = 0
    per += extra
    ws = np.full(shared + threads * per, np.nan, x.dtype)   # (no stale scratch may be read)
    y = np.full((N, F, Ho, Wo), np.nan, x.dtype)
    b = np.zeros(F, x.dtype) if bias is None else bias
    wg.conv2d_forward_winograd(x, U, b, bias is not None, y, ws, per, trows, pt, pl, threads,
                               _NO_PACK, 4, False, packed, fparts, mix)
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_planes_same_bits(dtype):
    """A slice with room for conv_plan.winograd_plane_pad's elements spaces V's and M's planes
    (WINO_PLANE_PAD, the plan's figure) -- the same bits as without, F(4x4) (plain and packed)
    and F(2x2), 1 and 3 threads; 256 channels x 64 tiles, res_14's task, among them."""
    assert wg.WINO_PLANE_PAD == P.WINOGRAD_PLANE_PAD
    rng = np.random.default_rng(11)
    packs = [False] + ([True] if dtype == np.float32 and wg.winograd4_packed_ok() else [])
    for N, C, H, F, trows in [(2, 17, 9, 20, 2), (4, 256, 14, 8, 16), (1, 9, 21, 5, 3)]:
        x = rng.standard_normal((N, C, H, H)).astype(dtype)
        w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
        want = _torch_conv(x, w, (1, 1, 1, 1))
        for packed in packs:
            for threads in (1, 3):
                ref = _kernel(x, w, 1, 1, H, H, trows, threads, packed=packed)
                _close(ref, want, dtype, f"F(4x4) {N}x{C}x{H}")
                for extra in (P.winograd_plane_pad(4) - 1, P.winograd_plane_pad(4), 5000):
                    y = _kernel(x, w, 1, 1, H, H, trows, threads, packed=packed, extra=extra)
                    assert np.array_equal(ref, y), (N, C, packed, threads, extra)
        # F(2x2): U (16, F, C), the slice V, M and 8 * (2tw + 2) of row scratch
        U = np.empty((16, F, C), dtype)
        wg.winograd_filters(w, U, 1)
        tw = -(-H // 2)
        ys = []
        for extra in (0, P.winograd_plane_pad(2)):
            per = 16 * (C + F) * trows * tw + 8 * (2 * tw + 2) + extra
            ws = np.full(3 * per, np.nan, dtype)
            y = np.full((N, F, H, H), np.nan, dtype)
            wg.conv2d_forward_winograd(x, U, np.zeros(F, dtype), False, y, ws, per, trows, 1, 1,
                                       3, _NO_PACK, 2, False, False, 0)
            ys.append(y)
        _close(ys[0], want, dtype, f"F(2x2) {N}x{C}x{H}")
        assert np.array_equal(ys[0], ys[1])


# (N, C, H, W, F, pt, pl, pb, pr): odd / even maps, maps not a multiple of 4, channels not a
# multiple of 16 (the filter transform's block), padding 0 / 1 / 2 and asymmetric
KERNEL_CASES = [
    (1, 5, 13, 6, 3, 1, 1, 1, 1),
    (2, 17, 9, 11, 20, 1, 1, 1, 1),
    (3, 16, 8, 8, 16, 1, 1, 1, 1),
    (2, 33, 7, 10, 18, 0, 0, 0, 0),
    (1, 20, 5, 6, 7, 2, 2, 2, 2),
    (2, 9, 12, 17, 31, 2, 0, 1, 2),
    (1, 3, 3, 3, 2, 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_kernel_matches_torch_float64(case, dtype):
    N, C, H, W, F, pt, pl, pb, pr = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
    bias = rng.standard_normal(F).astype(dtype)
    want = _torch_conv(x, w, (pt, pb, pl, pr)) + bias.reshape(1, F, 1, 1)
    Ho, Wo = want.shape[2:]
    th = -(-Ho // 4)
    for trows in sorted({1, 3, N * th}):        # one row of tiles, blocks across images, all
        for threads in (1, 2):
            y = _kernel(x, w, pt, pl, Ho, Wo, trows, threads, bias=bias)
            _close(y, want, dtype, f"trows {trows}, {threads} threads")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pad", [0, 1, 2, 3])  # 3: grad_x crops (padding -1)
def test_kernel_grad_x_by_flipped_transposed_filters(dtype, pad):
    """grad_x of a 3x3 stride-1 conv = the conv of grad_y with w[f, c] -> w[c, f] turned by 180
    degrees, padded by 2 - pad (winograd_filters' transpose_flip; negative: cropped)."""
    rng = np.random.default_rng(pad)
    N, C, H, W, F = 2, 19, 10, 7, 21
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
    Ho, Wo = H + 2 * pad - 2, W + 2 * pad - 2
    gy = rng.standard_normal((N, F, Ho, Wo)).astype(dtype)
    xt = torch.from_numpy(x).double().requires_grad_()
    y = torch.nn.functional.conv2d(xt, torch.from_numpy(w).double(), padding=pad)
    y.backward(torch.from_numpy(gy).double())
    gx = _kernel(gy, w, 2 - pad, 2 - pad, H, W, 2, 2, flip=True)
    _close(gx, xt.grad.numpy(), dtype, "grad_x")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avx2_and_baseline_transforms_give_the_same_bits(dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 24, 23, 37)).astype(dtype)     # rows of 10 tiles: both tails
    w = rng.standard_normal((40, 24, 3, 3)).astype(dtype)
    a = _kernel(x, w, 1, 1, 23, 37, 2, 2)
    old = wg.winograd4_avx2(False)
    try:
        b = _kernel(x, w, 1, 1, 23, 37, 2, 2)
    finally:
        wg.winograd4_avx2(old)
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


# ------------------------------------------------------------ packed filters (ck_w4_gemm_pk)
# (the plain layout's bits are fgemm.h's only where F(4x4)'s GEMMs run on it: with the own
# AVX-512 GEMM they take its k blocks, and the plan keeps that GEMM on F(2x2))
PACKED = pytest.mark.skipif(not wg.winograd4_packed_ok() or cc._OWN_SGEMM,
                            reason="the packed GEMMs are planned where F(4x4)'s GEMMs run on "
                                   "csrc/fgemm.h (AVX2 + FMA, no own AVX-512 GEMM) only")


def _float32_case(case, seed):
    """x, w, bias (float32) of a KERNEL_CASES case and torch float64's output."""
    N, C, H, W, F, pt, pl, pb, pr = case
    rng = np.random.default_rng(sum(case) + seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(F).astype(np.float32)
    return x, w, bias, _torch_conv(x, w, (pt, pb, pl, pr)) + bias.reshape(1, F, 1, 1)


@PACKED
@pytest.mark.parametrize("case", KERNEL_CASES + [(1, 300, 6, 9, 13, 1, 1, 1, 1)],
                         ids=lambda c: "x".join(map(str, c[:5])))
def test_packed_kernel_same_bits_as_plain_and_torch(case):
    """Filters not a whole strip of 6 (the last strip's rows past F), channels not a multiple of
    the 8-channel block, 300 channels (two k blocks of fgemm.h, the chain carried over), and
    tasks of 1 .. all tile rows: GEMM widths with a narrow last panel (1-4 columns: fgemm.h's
    ck_fg_edge on a strip) and a masked one -- the same bits as the plain layout on
    fgemm.h, for 1, 2 and 3 threads, and torch float64's values."""
    N, C, H, W, F, pt, pl, pb, pr = case
    x, w, bias, want = _float32_case(case, 1)
    Ho, Wo = want.shape[2:]
    th = -(-Ho // 4)
    for trows in sorted({1, 2, 3, N * th}):
        plain = _kernel(x, w, pt, pl, Ho, Wo, trows, 1, bias=bias)
        for threads in (1, 2, 3):
            y = _kernel(x, w, pt, pl, Ho, Wo, trows, threads, bias=bias, packed=True)
            assert np.array_equal(y.view(np.uint32), plain.view(np.uint32)), (trows, threads)
        _close(y, want, np.float32, f"packed, trows {trows}")


@PACKED
@pytest.mark.parametrize("pad", [0, 1, 3])
def test_packed_grad_x_same_bits_as_plain_and_torch(pad):
    rng = np.random.default_rng(pad + 40)
    N, C, H, W, F = 2, 23, 9, 14, 19
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    Ho, Wo = H + 2 * pad - 2, W + 2 * pad - 2
    gy = rng.standard_normal((N, F, Ho, Wo)).astype(np.float32)
    xt = torch.from_numpy(x).double().requires_grad_()
    y = torch.nn.functional.conv2d(xt, torch.from_numpy(w).double(), padding=pad)
    y.backward(torch.from_numpy(gy).double())
    plain = _kernel(gy, w, 2 - pad, 2 - pad, H, W, 2, 1, flip=True)
    for threads in (1, 2):
        gx = _kernel(gy, w, 2 - pad, 2 - pad, H, W, 2, threads, flip=True, packed=True)
        assert np.array_equal(gx.view(np.uint32), plain.view(np.uint32)), threads
    _close(gx, xt.grad.numpy(), np.float32, "grad_x")


@PACKED
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("shape", [(13, 21), (7, 141)], ids=lambda s: "x".join(map(str, s)))
def test_packed_filters_are_the_plain_ones_in_strips(flip, shape):
    """Plane e of the packed U: strip s (filters 6s .. 6s+5) at 6*s*C, channel c's 6 filters
    side by side at + 6c; rows past F zero -- the plain transform's values, same bits, both
    builds, written straight into U or through the task buffer (winograd4_stage_filters; 141
    channels: a buffer of 128 and one of 13, a last block of 5)."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal(shape + (3, 3)).astype(np.float32)
    F, C = shape[::-1] if flip else shape
    plain = np.empty((36, F, C), np.float32)
    wg.winograd_filters(w, plain, 1, flip)
    Fp = wg.winograd4_packed_rows(F)
    assert Fp == -(-F // 6) * 6
    want = np.zeros((36, Fp, C), np.float32)
    want[:, :F] = plain
    real = np.zeros((36, Fp, C), bool)
    real[:, :F] = True

    def strips(a):
        return a.reshape(36, Fp // 6, 6, C).transpose(0, 1, 3, 2).reshape(36, Fp, C)
    want, real = strips(want), strips(real)
    for avx2 in (True, False):
        for stage in (0, 1, -1):
            old, old_stage = wg.winograd4_avx2(avx2), wg.winograd4_stage_filters(stage)
            try:
                for threads in (1, 3):
                    U = np.full((36, Fp, C), np.nan, np.float32)
                    wg.winograd_filters(w, U, threads, flip, True)
                    assert np.array_equal(U.view(np.uint32)[real], want.view(np.uint32)[real])
                    assert (U[~real] == 0).all(), (avx2, stage, threads)   # (either sign)
            finally:
                wg.winograd4_avx2(old)
                wg.winograd4_stage_filters(old_stage)


@PACKED
@pytest.mark.parametrize("case", KERNEL_CASES + [(1, 300, 6, 9, 13, 1, 1, 1, 1),
                                                 (2, 64, 14, 14, 64, 1, 1, 1, 1)],
                         ids=lambda c: "x".join(map(str, c[:5])))
def test_two_region_split_same_bits_as_one_region(case):
    """The two-region split (fparts: a shared input transform, then tasks of tile rows x blocks
    of 6-filter strips) gives the one-region split's bits on csrc/fgemm.h -- each output one FMA
    chain over the channels wherever its GEMM sits: packed and plain filters, 1 block .. one
    strip per block (blocks of unequal strips, the last strip short where F is not a multiple
    of 6), tasks of 1 .. all tile rows, 300 channels (two k blocks), 1, 2 and 3 threads; and
    torch float64's values."""
    N, C, H, W, F, pt, pl, pb, pr = case
    x, w, bias, want = _float32_case(case, 2)
    Ho, Wo = want.shape[2:]
    th, nu = -(-Ho // 4), -(-F // 6)
    one = _kernel(x, w, pt, pl, Ho, Wo, th, 1, bias=bias, packed=True)
    for packed in (True, False):
        for trows in sorted({1, 2, N * th}):
            for fparts in sorted({1, min(2, nu), min(3, nu), nu}):
                for threads in (1, 2, 3):
                    y = _kernel(x, w, pt, pl, Ho, Wo, trows, threads, bias=bias, packed=packed,
                                fparts=fparts)
                    assert np.array_equal(y.view(np.uint32), one.view(np.uint32)), \
                        (packed, trows, fparts, threads)
    _close(one, want, np.float32, "one region")


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_two_region_split_float64_and_grad_x_match_torch(pad):
    """The split on float64 (BLAS: values, not bits) and on grad_x's flipped, transposed
    filters (float32, the one-region bits where fgemm.h runs)."""
    rng = np.random.default_rng(pad + 50)
    N, C, H, W, F = 2, 23, 9, 14, 19
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3))
    Ho, Wo = H + 2 * pad - 2, W + 2 * pad - 2
    y = _kernel(x, w, pad, pad, Ho, Wo, 2, 2, fparts=2)
    _close(y, _torch_conv(x, w, (pad,) * 4), np.float64, "float64 forward")
    gy = rng.standard_normal((N, F, Ho, Wo)).astype(np.float32)
    w32 = w.astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.conv2d(xt, torch.from_numpy(w32).double(), padding=pad).backward(
        torch.from_numpy(gy).double())
    packed = wg.winograd4_packed_ok() and not cc._OWN_SGEMM
    gx = _kernel(gy, w32, 2 - pad, 2 - pad, H, W, 1, 2, flip=True, packed=packed, fparts=3)
    _close(gx, xt.grad.numpy(), np.float32, "grad_x")
    if packed:
        one = _kernel(gy, w32, 2 - pad, 2 - pad, H, W, 3, 1, flip=True, packed=True)
        assert np.array_equal(gx.view(np.uint32), one.view(np.uint32))


def test_two_region_split_rejects_bad_arguments():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 8, 6, 6))
    U = np.zeros((36, 13, 8))
    y = np.empty((1, 13, 6, 6))
    b = np.zeros(13)
    per = 36 * 18 * 2 + wg.winograd4_scratch(1, 2)
    ws = np.zeros(36 * 8 * 4 + per)

    def call(fparts, ws=ws, tile=4, per_image=False, trows=1):
        wg.conv2d_forward_winograd(x, U if tile == 4 else U[:16], b, False, y, ws, per, trows,
                                   1, 1, 1, _NO_PACK, tile, per_image, False, fparts)
    call(1)                                 # (fits: one block of 3 strips, one row of 2 tiles)
    with pytest.raises(ValueError, match="fparts in 1 .. 3"):
        call(4)
    with pytest.raises(ValueError, match="fparts in 1 .. 3"):
        call(-1)
    with pytest.raises(ValueError, match="ws too small"):
        call(1, ws=ws[:-1])
    with pytest.raises(ValueError, match="ws too small"):
        call(1, trows=2)                    # (two rows need twice the slice)
    with pytest.raises(ValueError, match="tile 4 and per_image off"):
        call(1, per_image=True)
    # (F(2x2) has a split of its own since the twelfth session, tests/test_cpu_many_threads.py:
    # never per image either)
    with pytest.raises(ValueError, match="needs per_image off"):
        call(1, tile=2, per_image=True)


def test_packed_rejects_bad_arguments():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((7, 8, 3, 3))
    with pytest.raises(ValueError, match="float32"):
        wg.winograd_filters(w, np.empty((36, 12, 8)), 1, False, True)
    w32 = w.astype(np.float32)
    with pytest.raises(ValueError, match=r"\(36, 12, 8\)"):
        wg.winograd_filters(w32, np.empty((36, 7, 8), np.float32), 1, False, True)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    U = np.zeros((36, 12, 8), np.float32)
    y = np.empty((1, 7, 6, 6), np.float32)
    ws = np.zeros(1 << 16, np.float32)
    with pytest.raises(ValueError, match="tile 4"):
        wg.conv2d_forward_winograd(x, U[:16], np.zeros(7, np.float32), False, y, ws, 1 << 15, 1,
                                   1, 1, 1, _NO_PACK, 2, False, True)
    # the plain shape, called packed (without csrc/fgemm.h -- CONVKIT_DISABLE_FGEMM=1 -- the
    # packed call is refused before its shapes are read)
    with pytest.raises(ValueError, match="match" if wg.winograd4_packed_ok() else "fgemm"):
        wg.conv2d_forward_winograd(x, U[:, :7].copy(), np.zeros(7, np.float32), False, y, ws,
                                   1 << 15, 1, 1, 1, 1, _NO_PACK, 4, False, True)


def test_the_plan_packs_f4_float32_on_the_fixed_gemm_only():
    s = P.ConvShape(8, 256, 14, 14, 256, 256, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    fixed = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, fixed_sgemm=True)
    blas = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, fixed_sgemm=False)
    for caps, dtype, want in ((fixed, np.float32, True), (fixed, np.float64, False),
                              (blas, np.float32, False)):
        fwd = P.plan_forward(s, dtype, 2, caps, 256 << 20)
        gx = P.plan_backward(s, dtype, 2, caps, 256 << 20)[0]
        for step in (fwd, gx):
            assert step.algo == "winograd" and step.params["tile"] == 4
            assert step.params["packed"] is want, (caps, dtype, step)
    assert P.winograd_filter_rows(256, True) == 258 and P.winograd_filter_rows(256, False) == 256
    # the packed filters' padded rows count against the limit: the smallest limit that fits
    # one row of tiles with plain filters does not with packed ones
    F = C = 64
    one = (36 * (C + F) * 2 + P.winograd_scratch(4, 1, 2) + P.winograd_plane_pad(4)) * 4  # a row
    # of 2 tiles
    tight = 36 * C * F * 4 + one
    assert P._plan_winograd4(1, C, F, 8, 8, 4, 1, 0, tight, fixed=False) is not None
    assert P._plan_winograd4(1, C, F, 8, 8, 4, 1, 0, tight, fixed=True) is None


def test_scratch_sizes_agree_with_the_plan():
    for trows in (1, 2, 7):
        for tw in (1, 3, 4, 13, 16):
            assert P.winograd_scratch(4, trows, tw) == wg.winograd4_scratch(trows, tw)


def test_the_plan_picks_f4_where_the_rule_says():
    BLAS = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)
    OWN = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)
    HALF = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True,
                      avx512_full_rate=False)
    lim = 256 * 2**20

    def tiles(shape, caps=BLAS, limit=lim, dtype=np.float32):
        N, C, H, W, F = shape
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        plan = P.plan_conv(s, dtype, 2, caps, limit)
        return plan.forward.params.get("tile"), plan.grad_x.params.get("tile")

    for suite in [(8, 64, 56, 56, 64), (8, 128, 28, 28, 128), (8, 256, 14, 14, 256),
                  (1, 512, 38, 50, 512)]:
        assert tiles(suite) == (4, 4)
        assert tiles(suite, dtype=np.float64) == (4, 4)
        assert tiles(suite, OWN) == (2, 2)              # the own AVX-512 GEMM keeps F(2x2)
    assert tiles((8, 63, 28, 28, 128)) == (2, 2)        # below WINOGRAD4_MIN_CHANNELS
    assert tiles((8, 64, 9, 9, 64)) == (2, 2)           # 9x9: 36*9 / (16*25) = 0.81 > 3/4
    # F(4x4)'s transformed filters (36 * 512 * 512 floats, 37.7 MB) over the limit: F(2x2)
    assert tiles((1, 512, 38, 50, 512), limit=36 * 2**20) == (2, 2)


# ---------------------------------------------------------------- through the public API
@pytest.fixture
def f4_plan(monkeypatch):
    """This machine's caps without the own GEMM (a no-op on a CPU without AVX-512F), so the
    plan's F(4x4) step runs; plans cached under other caps are dropped."""
    caps = cc._caps()
    monkeypatch.setattr(cc, "_caps", lambda: P.ConvCaps(own_sgemm=False,
                                                        depthwise3x3_level=caps.depthwise3x3_level))
    cc._plans.clear()
    yield
    cc._plans.clear()


API_CASES = [(1, 64, 13, 12, 72, 1), (3, 70, 9, 16, 64, 1), (2, 64, 14, 14, 66, 0),
             (2, 64, 11, 14, 64, 2)]


def _api(x, w, b, pad, gy):
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, b, padding=pad)
        g = convkit.conv2d_backward(gy, x, w, padding=pad, has_bias=True)
    return y, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", API_CASES, ids=lambda c: "x".join(map(str, c)))
def test_api_forward_backward_match_torch(f4_plan, case, dtype):
    N, C, H, W, F, pad = case
    rng = np.random.default_rng(N + C + H)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    s, Ho, Wo, plan = cc._plan(x, w, (1, 1), (pad,) * 4, (1, 1), 1)
    assert plan.forward.algo == "winograd" and plan.forward.params["tile"] == 4
    assert plan.grad_x.algo == "winograd" and plan.grad_x.params["tile"] == 4
    gy = rng.standard_normal((N, F, Ho, Wo)).astype(dtype)
    xt = torch.from_numpy(x).double().requires_grad_()
    wt = torch.from_numpy(w).double().requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wt, torch.from_numpy(b).double(), padding=pad)
    yt.backward(torch.from_numpy(gy).double())
    y, (gx, gw, gb) = _api(x, w, b, pad, gy)
    _close(y, yt.detach().numpy(), dtype, "forward")
    _close(gx, xt.grad.numpy(), dtype, "grad_x")
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-4 if dtype == np.float32 else 1e-11,
                               atol=1e-3 if dtype == np.float32 else 1e-10)


def test_api_bits_do_not_depend_on_the_thread_count(f4_plan):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 64, 21, 18)).astype(np.float32)
    w = rng.standard_normal((72, 64, 3, 3)).astype(np.float32)
    b = rng.standard_normal(72).astype(np.float32)
    gy = rng.standard_normal((3, 72, 21, 18)).astype(np.float32)
    old = convkit.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3, 8, 16):
            convkit.set_num_threads(n)
            plan = cc._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)[3]
            assert plan.forward.params["tile"] == 4 and plan.grad_x.params["tile"] == 4
            y, (gx, gw, gb) = _api(x, w, b, 1, gy)
            runs.append((n, y, gx, gw, gb))
    finally:
        convkit.set_num_threads(old)
    for n, *outs in runs[1:]:
        for a, c in zip(runs[0][1:], outs):
            assert np.array_equal(a.view(np.uint32), c.view(np.uint32)), f"{n} threads"


def test_api_workspace_limit(f4_plan):
    """A limit that leaves one row of tiles per task gives the same values (the task split
    changes the GEMMs' column counts, so not necessarily the same bits); one below F(4x4)'s
    transformed filters takes F(2x2); one below every path's smallest piece: MemoryError."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 64, 20, 20)).astype(np.float64)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float64)
    b = np.zeros(64)
    want = _torch_conv(x, w, (1, 1, 1, 1))
    old = convkit.get_workspace_limit()
    u_bytes = 36 * 64 * 64 * 8
    row = (36 * 128 * 5 + P.winograd_scratch(4, 1, 5) + P.winograd_plane_pad(4)) * 8  # one row
    # of 5 tiles
    try:
        convkit.set_workspace_limit(u_bytes + row)
        plan = cc._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)[3]
        assert plan.forward.params == {"trows": 1, "per_thread": row // 8, "tile": 4,
                                       "per_image": True, "packed": False, "mix_edges": False}
        assert plan.forward.threads == 1
        with convkit.use_backend("cpu"):
            _close(convkit.conv2d_forward(x, w, b, padding=1), want, np.float64, "one row")
        convkit.set_workspace_limit(u_bytes - 8)
        plan = cc._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)[3]
        assert plan.forward.algo != "winograd" or plan.forward.params["tile"] == 2
        with convkit.use_backend("cpu"):
            _close(convkit.conv2d_forward(x, w, b, padding=1), want, np.float64, "no F(4x4)")
        convkit.set_workspace_limit(4096)
        with convkit.use_backend("cpu"), pytest.raises(MemoryError, match="workspace limit"):
            convkit.conv2d_forward(x, w, b, padding=1)
    finally:
        convkit.set_workspace_limit(old)


@pytest.mark.parametrize("where", ["x", "weight", "grad_y"])
def test_api_non_finite_element_for_element(f4_plan, where):
    """Winograd mixes every input of a 6x6 tile into all 16 outputs: a NaN or inf must reach
    exactly the outputs torch's has it in (the plan falls back to the exact path)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 64, 12, 13)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 64, 12, 13)).astype(np.float32)
    {"x": x, "weight": w, "grad_y": gy}[where][1, 3, 2, 1] = np.inf
    {"x": x, "weight": w, "grad_y": gy}[where][0, 5, 1, 2] = np.nan
    xt = torch.from_numpy(x).double().requires_grad_()
    wt = torch.from_numpy(w).double().requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wt, padding=1)
    yt.backward(torch.from_numpy(gy).double())
    y, (gx, gw, gb) = _api(x, w, np.zeros(64, np.float32), 1, gy)
    for got, want in ((y, yt.detach().numpy()), (gx, xt.grad.numpy()), (gw, wt.grad.numpy())):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isposinf(got), np.isposinf(want))
        assert np.array_equal(np.isneginf(got), np.isneginf(want))


# ---------------------------------------------------------------- grad_weight (weight_winograd)
def _wgrad_kernel(x, gy, pt, pl, trows, cols, parts, threads, fixed=True, fgemm=False):
    """conv2d_grad_weight_winograd called directly (stale NaN in its workspace and output)."""
    N, C, H, W = x.shape
    F, Ho, Wo = gy.shape[1:]
    big, per = wg.winograd4_wgrad_floats(N, C, F, Ho, Wo, parts)
    ws = np.full(big + threads * per, np.nan, x.dtype)
    gw = np.full((F, C, 3, 3), np.nan, x.dtype)
    wg.conv2d_grad_weight_winograd(gy, x, gw, ws, pt, pl, trows, cols, parts, threads, fixed,
                                   fgemm)
    return gw


def _torch_wgrad(x, gy, pads):
    t, b, l, r = pads
    xt = torch.nn.functional.pad(torch.from_numpy(x).double(), (l, r, t, b))
    return torch.nn.grad.conv2d_weight(xt, (gy.shape[1], x.shape[1], 3, 3),
                                       torch.from_numpy(gy).double()).numpy()


@pytest.mark.parametrize("fixed", [True, False], ids=["fgemm", "blas"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_wgrad_kernel_matches_torch_float64(case, dtype, fixed):
    """The transposed F(4x4): odd / even maps, maps not a multiple of 4 (grad_y's tiles
    zero-padded), padding 0 / 1 / 2 and asymmetric; one or several parts of the batch's tiles,
    channel blocks of 1 .. all, transform tasks of one tile row to all; the same bits for any
    thread count and transform split (they order no sum), on both GEMMs."""
    N, C, H, W, F, pt, pl, pb, pr = case
    rng = np.random.default_rng(sum(case) + 1)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    Ho, Wo = H + pt + pb - 2, W + pl + pr - 2
    gy = rng.standard_normal((N, F, Ho, Wo)).astype(dtype)
    want = _torch_wgrad(x, gy, (pt, pb, pl, pr))
    T = N * -(-Ho // 4) * -(-Wo // 4)
    for parts in sorted({1, min(3, T), T}):
        for cols in sorted({1, 16, C}):
            ref = _wgrad_kernel(x, gy, pt, pl, 1, cols, parts, 1, fixed)
            _close(ref, want, dtype, f"parts {parts}, cols {cols}")
            for trows, threads in ((2, 2), (N * -(-Ho // 4), 3), (3, 8)):
                got = _wgrad_kernel(x, gy, pt, pl, trows, cols, parts, threads, fixed)
                assert np.array_equal(got.view(np.uint8), ref.view(np.uint8)), \
                    (parts, cols, trows, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wgrad_avx2_and_baseline_transforms_give_the_same_bits(dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 24, 23, 37)).astype(dtype)     # rows of 10 tiles: both tails
    gy = rng.standard_normal((2, 21, 23, 37)).astype(dtype)    # 21 channels: the vector tail
    a = _wgrad_kernel(x, gy, 1, 1, 2, 16, 2, 2)
    old = wg.winograd4_avx2(False)
    try:
        b = _wgrad_kernel(x, gy, 1, 1, 2, 16, 2, 2)
    finally:
        wg.winograd4_avx2(old)
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("shape", [(3, 24, 40, 40, 21), (2, 64, 23, 37, 80), (1, 70, 9, 13, 8)],
                         ids=lambda c: "x".join(map(str, c)))
def test_wgrad_fgemm_gives_the_fixed_gemms_bits(shape):
    """fgemm=True (the half-rate rule's GEMMs on csrc/fgemm.h beside the own AVX-512 GEMM)
    matches torch, over channel blocks and their narrow tails, and gives gemm_fixed's bits (the
    own GEMM where it runs) where a part has at most 240 tiles: both sum each output in one FMA
    chain over k ascending within one k block (the own GEMM's blocks: up to 240, then other
    sums; fgemm.h's: 256 = tuning.WGRAD_WINO_PART_TILES).  float64 ignores it."""
    N, C, H, W, F = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    gy = rng.standard_normal((N, F, H, W)).astype(np.float32)
    want = _torch_wgrad(x, gy, (1, 1, 1, 1))
    T = N * -(-H // 4) * -(-W // 4)
    for parts in sorted({1, min(2, T), min(3, T)}):
        for cols in sorted({16, C}):
            a = _wgrad_kernel(x, gy, 1, 1, 2, cols, parts, 2)
            b = _wgrad_kernel(x, gy, 1, 1, 3, cols, parts, 3, fgemm=True)
            _close(b, want, np.float32, f"parts {parts}, cols {cols}")
            if -(-T // parts) <= 240:
                assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (parts, cols)
    xd, gyd = x.astype(np.float64), gy.astype(np.float64)
    assert np.array_equal(_wgrad_kernel(xd, gyd, 1, 1, 2, 16, 1, 2),
                          _wgrad_kernel(xd, gyd, 1, 1, 2, 16, 1, 2, fgemm=True))


def test_wgrad_kernel_rejects_bad_arguments():
    x = np.zeros((1, 4, 6, 6), np.float32)
    gy = np.zeros((1, 5, 6, 6), np.float32)
    big, per = wg.winograd4_wgrad_floats(1, 4, 5, 6, 6, 1)
    ws = np.zeros(big + per, np.float32)
    with pytest.raises(ValueError, match="gw must be"):
        wg.conv2d_grad_weight_winograd(gy, x, np.zeros((5, 3, 3, 3), np.float32), ws, 1, 1, 1,
                                       4, 1, 1)
    gw = np.zeros((5, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="parts in 1 .. 4"):
        wg.conv2d_grad_weight_winograd(gy, x, gw, ws, 1, 1, 1, 4, 5, 1)
    with pytest.raises(ValueError, match="ws too small"):
        wg.conv2d_grad_weight_winograd(gy, x, gw, ws[:-1], 1, 1, 1, 4, 1, 1)


def test_the_plan_takes_weight_winograd_where_the_forward_takes_f4():
    BLAS = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)
    FIXED = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, fixed_sgemm=True)
    OWN = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)
    HALF = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True,
                      avx512_full_rate=False)
    lim = 256 * 2**20

    def gw(shape, caps=FIXED, limit=lim, dtype=np.float32, needs_gx=True):
        N, C, H, W, F = shape
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        return P.plan_conv(s, dtype, 2, caps, limit, needs_gx).grad_weight

    vgg = gw((8, 64, 56, 56, 64))
    # 1568 tiles in 7 parts of <= 256; 64 channels in 4 blocks of 16; 16 tile rows per task
    assert vgg.algo == "weight_winograd" and vgg.params["fixed"]
    assert (vgg.params["parts"], vgg.params["cols"], vgg.params["trows"]) == (7, 16, 5)
    assert vgg.params["floats"] == (36 * (64 * 1568 * 2 + 7 * 64 * 64 + (2 + 7) * 16)
                                    + 2 * wg.winograd4_wgrad_floats(8, 64, 64, 56, 56, 7)[1])
    for suite in [(8, 128, 28, 28, 128), (8, 256, 14, 14, 256), (1, 512, 38, 50, 512)]:
        assert gw(suite).algo == "weight_winograd"
        assert gw(suite, needs_gx=False).algo == "weight_winograd"
        assert gw(suite, BLAS).params["fixed"] is False
        assert gw(suite, dtype=np.float64).params["fixed"] is False
        assert gw(suite, OWN).algo == "im2col"          # the own AVX-512 GEMM: not measured
        # a half-rate AVX-512 CPU: its GEMMs on fgemm.h (tuning.WGRAD_WINO_FGEMM), not the own
        assert gw(suite, HALF).params["fgemm"] and gw(suite, HALF).params["fixed"]
        assert not gw(suite).params["fgemm"]            # (no own GEMM: gemm_fixed is fgemm.h)
        assert not gw(suite, HALF, dtype=np.float64).params["fgemm"]
    assert gw((8, 63, 28, 28, 128)).algo == "im2col"    # F(2x2) forward: im2col as before
    assert gw((8, 64, 9, 9, 64)).algo == "im2col"
    # its tiles over the limit: im2col
    need = vgg.params["floats"] * 4
    assert gw((8, 64, 56, 56, 64), limit=need).algo == "weight_winograd"
    assert gw((8, 64, 56, 56, 64), limit=need - 4).algo == "im2col"


def test_api_wgrad_bits_on_1_2_3_8_threads_and_the_limit():
    """This machine's caps (the fixed-order GEMM where it runs): grad_weight of a layer with two
    parts has the same bits on 1, 2, 3 and 8 threads, with and without grad_x, and matches torch
    float64; a workspace limit below its tiles takes im2col (the same values)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((12, 64, 20, 19)).astype(np.float32)     # 300 tiles: 2 parts
    w = rng.standard_normal((80, 64, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((12, 80, 20, 19)).astype(np.float32)
    want = _torch_wgrad(x, gy, (1, 1, 1, 1))
    old = convkit.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3, 8):
            convkit.set_num_threads(n)
            plan = cc._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)[3]
            if cc._OWN_SGEMM and not P.avx2_algo(cc._caps(), "weight_winograd"):
                assert plan.grad_weight.algo == "im2col"
            else:
                assert plan.grad_weight.algo == "weight_winograd"
                assert plan.grad_weight.params["parts"] == 2
            with convkit.use_backend("cpu"):
                a = convkit.conv2d_backward(gy, x, w, padding=1, has_bias=False)[1]
                b = convkit.conv2d_backward(gy, x, w, padding=1, needs_input_grad=False,
                                            has_bias=False)[1]
            runs += [a, b]
    finally:
        convkit.set_num_threads(old)
    for r in runs[1:]:
        assert np.array_equal(r.view(np.uint32), runs[0].view(np.uint32))
    _close(runs[0], want, np.float32, "grad_weight")
    lim = convkit.get_workspace_limit()
    try:
        convkit.set_workspace_limit(36 * (64 + 80) * 300 * 4)
        assert cc._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)[3].grad_weight.algo == "im2col"
        with convkit.use_backend("cpu"):
            got = convkit.conv2d_backward(gy, x, w, padding=1, has_bias=False)[1]
    finally:
        convkit.set_workspace_limit(lim)
    _close(got, want, np.float32, "grad_weight on im2col")


@pytest.mark.parametrize("where", ["x", "grad_y"])
def test_api_wgrad_alone_non_finite_element_for_element(where):
    """grad_weight without grad_x (a first layer's backward) on this machine's plan: a NaN or
    inf in x or grad_y reaches exactly the weights torch's has it in."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 64, 12, 13)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 64, 12, 13)).astype(np.float32)
    {"x": x, "grad_y": gy}[where][1, 3, 2, 1] = np.inf
    {"x": x, "grad_y": gy}[where][0, 5, 1, 2] = np.nan
    want = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), w.shape,
                                       torch.from_numpy(gy).double(), padding=1).numpy()
    plan = cc._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1, needs_input_grad=False)[3]
    assert plan.grad_weight.algo == ("im2col" if cc._OWN_SGEMM and not
                                     P.avx2_algo(cc._caps(), "weight_winograd")
                                     else "weight_winograd")
    with convkit.use_backend("cpu"):
        gw = convkit.conv2d_backward(gy, x, w, padding=1, needs_input_grad=False,
                                     has_bias=False)[1]
    assert np.array_equal(np.isnan(gw), np.isnan(want))
    assert np.array_equal(np.isposinf(gw), np.isposinf(want))
    assert np.array_equal(np.isneginf(gw), np.isneginf(want))
    fin = np.isfinite(want)
    assert np.allclose(gw[fin], want[fin], rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not wg.winograd4_packed_ok(), reason="packed filters need csrc/fgemm.h")
@pytest.mark.parametrize("case", [(3, 19, 14, 14, 13, 1, 1, 1, 1), (2, 11, 9, 10, 8, 1, 1, 1, 1),
                                  (2, 7, 7, 6, 9, 1, 1, 1, 1), (1, 300, 6, 9, 13, 1, 1, 1, 1),
                                  (2, 5, 10, 7, 6, 1, 1, 1, 1)],
                         ids=lambda c: "x".join(map(str, c[:5])))
def test_last_tile_rows_apart_same_bits(case):
    """Where Ho % 4 (1, 2, 3; 0: nothing apart), the packed forward puts the images' last tile
    rows after a task's others and the GEMMs of planes 30 .. 35 skip them
    (winograd4_last_apart): the bits of all 36 GEMMs over every tile, for tasks of 1 .. all
    tile rows (a task of last rows only, tasks spanning images), 1 .. 3 threads, forward and
    grad_x (its output the image's size), and torch float64's values; the workspace starts as
    NaN, so a skipped column read into a stored output would show."""
    N, C, H, W, F, pt, pl, pb, pr = case
    x, w, bias, want = _float32_case(case, 3)
    Ho, Wo = want.shape[2:]
    th = -(-Ho // 4)
    old = wg.winograd4_last_apart(True)
    try:
        for trows in sorted({1, 2, 3, th + 1, N * th}):
            wg.winograd4_last_apart(False)
            ref = _kernel(x, w, pt, pl, Ho, Wo, trows, 1, bias=bias, packed=True)
            gref = _kernel(want.astype(np.float32), w, 2 - pt, 2 - pl, H, W, trows, 1, flip=True,
                           packed=True)
            wg.winograd4_last_apart(True)
            for threads in (1, 2, 3):
                y = _kernel(x, w, pt, pl, Ho, Wo, trows, threads, bias=bias, packed=True)
                assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)), (trows, threads)
                gx = _kernel(want.astype(np.float32), w, 2 - pt, 2 - pl, H, W, trows, threads,
                             flip=True, packed=True)
                assert np.array_equal(gx.view(np.uint32), gref.view(np.uint32)), (trows, threads)
            _close(y, want, np.float32, f"last rows apart, trows {trows}")
    finally:
        wg.winograd4_last_apart(old)


def _edge_free(a):
    """a's outputs off the tiles mix_edges takes by F(2x2) (the last tile row / column where
    Ho % 4 / Wo % 4 is 1 or 2)"""
    Ho, Wo = a.shape[2:]
    return a[:, :, :Ho - Ho % 4 if Ho % 4 in (1, 2) else Ho, :Wo - Wo % 4 if Wo % 4 in (1, 2) else Wo]


@pytest.mark.skipif(not wg.winograd4_packed_ok(), reason="packed filters need csrc/fgemm.h")
@pytest.mark.parametrize("case", [(3, 19, 14, 14, 13, 1, 1, 1, 1), (2, 11, 13, 10, 8, 1, 1, 1, 1),
                                  (2, 7, 7, 9, 9, 1, 1, 1, 1), (2, 20, 11, 15, 7, 1, 1, 1, 1),
                                  (1, 300, 10, 18, 13, 1, 1, 1, 1), (2, 5, 16, 14, 6, 1, 1, 1, 1),
                                  (2, 9, 14, 16, 12, 1, 1, 1, 1), (2, 8, 15, 15, 6, 1, 1, 1, 1),
                                  (2, 6, 13, 13, 7, 0, 2, 1, 0), (1, 9, 38, 50, 10, 1, 1, 1, 1)],
                         ids=lambda c: "x".join(map(str, c[:5])))
def test_mixed_edge_tiles(case):
    """mix_edges (the last tile row / column by F(2x2) where Ho % 4 / Wo % 4 is 1 or 2; 3 and 0:
    F(4x4) there): torch float64's values, forward and grad_x, for tasks of 1 .. all tile rows
    (a task of last rows only, tasks spanning images) on 1 .. 3 threads and in the two-region
    split (1 and all filter blocks) with the same bits; the
    outputs off those tiles keep the F(4x4) bits; the edge outputs no less accurate than F(4x4)'s
    (F(2)'s smaller coefficients); the workspace starts as NaN, so a column a plane's GEMM
    skipped, read into a stored output, would show."""
    N, C, H, W, F, pt, pl, pb, pr = case
    x, w, bias, want = _float32_case(case, 5)
    Ho, Wo = want.shape[2:]
    th = -(-Ho // 4)
    gy = want.astype(np.float32)
    gwant = _torch_conv(gy, np.ascontiguousarray(np.flip(w, (2, 3)).transpose(1, 0, 2, 3)),
                        (2 - pt, 2 - pb, 2 - pl, 2 - pr))
    for trows in sorted({1, 2, 3, th + 1, N * th}):
        for flip, xx, a, b, Hy, Wy, ref in ((False, x, pt, pl, Ho, Wo, want),
                                            (True, gy, 2 - pt, 2 - pl, H, W, gwant)):
            bb = None if flip else bias
            f4 = _kernel(xx, w, a, b, Hy, Wy, trows, 1, flip=flip, bias=bb, packed=True)
            one = _kernel(xx, w, a, b, Hy, Wy, trows, 1, flip=flip, bias=bb, packed=True,
                          mix=True)
            for threads in (2, 3):
                y = _kernel(xx, w, a, b, Hy, Wy, trows, threads, flip=flip, bias=bb,
                            packed=True, mix=True)
                assert np.array_equal(y.view(np.uint32), one.view(np.uint32)), (trows, threads)
            for fp in {1, -(-(C if flip else F) // 6)}:     # the two-region split: same bits
                y = _kernel(xx, w, a, b, Hy, Wy, trows, 2, flip=flip, bias=bb, packed=True,
                            fparts=fp, mix=True)
                assert np.array_equal(y.view(np.uint32), one.view(np.uint32)), (trows, fp)
            assert np.array_equal(_edge_free(one).view(np.uint32), _edge_free(f4).view(np.uint32))
            _close(one, ref, np.float32, f"mixed edges, trows {trows}, flip {flip}")
            scale = np.abs(ref).max()
            e4, e2 = (np.abs(v.astype(np.float64) - ref).max() / scale for v in (f4, one))
            assert e2 <= e4 * 1.5, (e2, e4)
            if Hy % 4 in (1, 2) or Wy % 4 in (1, 2):
                assert not np.array_equal(one.view(np.uint32), f4.view(np.uint32))


def test_mixed_edges_plan_rule():
    """conv_plan.winograd4_mix_edges: the packed one-region F(4x4) where Ho % 4 or Wo % 4 is in
    tuning.WINOGRAD4_EDGE_F2 -- res_14 (14 x 14) and rpn_3x3 (38 x 50) yes, res_28 / vgg_56
    (multiples of 4) and 15 x 15 no, nor the unpacked GEMMs."""
    assert P.winograd4_mix_edges(4, True, 14, 14)
    assert P.winograd4_mix_edges(4, True, 38, 50)
    assert P.winograd4_mix_edges(4, True, 16, 13)
    assert not P.winograd4_mix_edges(4, True, 28, 28)
    assert not P.winograd4_mix_edges(4, True, 15, 15)
    assert not P.winograd4_mix_edges(4, False, 14, 14)
    assert not P.winograd4_mix_edges(2, True, 14, 14)
