"""The cpu backend's paths for tiny maps (the small ResNet on 8x8 digits): the dense-map conv
(planes no bigger than the kernel, e.g. 2x2 under 3x3: one GEMM with the conv's dense matrix),
against torch and a float64 adjoint check, thread-count independence, and the workspace cap.
"""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cpu_conv

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

# (id, x shape, w shape, stride, padding, dilation)
DENSE = [
    ("2x2_3x3_pad1", (5, 7, 2, 2), (6, 7, 3, 3), (1, 1), (1, 1), (1, 1)),
    ("1x1_3x3_pad1", (4, 3, 1, 1), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1)),
    ("3x3_valid", (3, 4, 3, 3), (2, 4, 3, 3), (1, 1), (0, 0), (1, 1)),
    ("2x3_s2_asym", (3, 5, 2, 3), (4, 5, 3, 3), (2, 1), (1, 2), (1, 1)),
    ("2x2_dil2", (2, 3, 2, 2), (4, 3, 3, 3), (1, 1), (2, 2), (2, 2)),
    ("2x2_5x5_s2", (3, 2, 2, 2), (3, 2, 5, 5), (2, 2), (2, 2), (1, 1)),
    ("2x2_same_even", (3, 4, 2, 2), (5, 4, 2, 2), (1, 1), "same", (1, 1)),    # pad 0 / 1
    ("taps_only_padding", (2, 3, 2, 2), (2, 3, 3, 3), (1, 1), (3, 3), (1, 1)),
]


def _case_args(case):
    _, xs, ws, stride, pad, dil = case
    return xs, ws, dict(stride=stride, padding=pad, dilation=dil)


def _run(x, w, b, gy, kw, needs_input_grad=True):
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, b, **kw)
        if gy is None:
            return y
        g = convkit.conv2d_backward(gy, x, w, **kw, needs_input_grad=needs_input_grad,
                                    has_bias=b is not None)
    return (y,) + tuple(g)


def test_cases_take_the_dense_path():
    for case in DENSE:
        (N, C, H, W), (F, _, KH, KW), _ = _case_args(case)
        assert cpu_conv._dense_ok(C, H, W, F, KH, KW, 1, 1, 1), case[0]
    # a 4x4 plane under a 3x3 kernel stays on the batch im2col path
    assert not cpu_conv._dense_ok(32, 4, 4, 32, 3, 3, 4, 4, 1)
    assert not cpu_conv._dense_ok(8, 2, 2, 8, 3, 3, 2, 2, 2)      # grouped


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DENSE, ids=lambda c: c[0])
def test_dense_matches_torch(case, dtype, torch):
    xs, ws, kw = _case_args(case)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kw)
    gy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(gy))
    y, gx, gw, gb = _run(x, w, b, gy, kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, got, want in [("y", y, ty), ("gx", gx, tx.grad), ("gw", gw, tw.grad),
                            ("gb", gb, tb.grad)]:
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want.detach().numpy(), **tol, err_msg=name)
    _, gx2, gw2, _ = _run(x, w, b, gy, kw, needs_input_grad=False)
    assert gx2 is None
    np.testing.assert_array_equal(gw2, gw)


@pytest.mark.parametrize("case", DENSE, ids=lambda c: c[0])
def test_dense_adjoint_identities(case):
    xs, ws, kw = _case_args(case)
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    y = _run(x, w, None, None, kw)
    gy = rng.standard_normal(y.shape)
    _, gx, gw, _ = _run(x, w, None, gy, kw)
    lhs = np.vdot(y, gy)
    np.testing.assert_allclose(np.vdot(x, gx), lhs, rtol=1e-10)
    np.testing.assert_allclose(np.vdot(w, gw), lhs, rtol=1e-10)


def test_dense_thread_count_independent_and_deterministic():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 64, 2, 2)).astype(np.float32)    # 37: a ragged row split
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((37, 64, 2, 2)).astype(np.float32)
    kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    before = convkit.get_num_threads()
    try:
        convkit.set_num_threads(2)
        a = _run(x, w, None, gy, kw)
        b = _run(x, w, None, gy, kw)
        convkit.set_num_threads(1)
        c = _run(x, w, None, gy, kw)
    finally:
        convkit.set_num_threads(before)
    for u, v, s in zip(a, b, c):
        if u is None:
            continue
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, s)


def test_dense_too_big_for_the_workspace_takes_another_path():
    """A dense matrix over the workspace limit is not built: the batch path runs instead,
    with the same values."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 16, 2, 2))
    w = rng.standard_normal((16, 16, 3, 3))
    kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    y0 = _run(x, w, None, None, kw)
    gy = rng.standard_normal(y0.shape)
    g0 = _run(x, w, None, gy, kw)
    before = convkit.get_workspace_limit()
    try:
        convkit.set_workspace_limit(40_000)    # the 64 x 64 matrix and its gradient need 64 KiB
        assert not cpu_conv._dense_ok(16, 2, 2, 16, 3, 3, 2, 2, 1)
        g1 = _run(x, w, None, gy, kw)
    finally:
        convkit.set_workspace_limit(before)
    assert g0[3] is None and g1[3] is None
    for u, v in zip(g0[:3], g1[:3]):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def test_dense_matrix_kept_for_the_backward_rebuilt_for_a_changed_weight(monkeypatch):
    """The cpu conv keeps a dense matrix with its weight's bits: the backward after a forward
    builds nothing; a weight changed in place (an optimiser step) or NaN-carrying gets a new
    build, and every result equals the numpy reference's."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 6, 4, 4)).astype(np.float32)       # LeNet5's c2
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    builds = []
    real = cpu_conv._dense.dense_weight
    monkeypatch.setattr(cpu_conv._dense, "dense_weight",
                        lambda *a: (builds.append(1), real(*a))[1])

    def both(w):
        with convkit.use_backend("cpu"):
            y = convkit.conv2d_forward(x, w, b, 1, 2)
            g = convkit.conv2d_backward(np.ones_like(y), x, w, 1, 2)
        with convkit.use_backend("numpy"):
            y0 = convkit.conv2d_forward(x, w, b, 1, 2)
            g0 = convkit.conv2d_backward(np.ones_like(y0), x, w, 1, 2)
        np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5)
        for u, v in zip(g, g0):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-4)

    both(w)
    assert len(builds) == 1
    w[3, 2, 1, 0] += 0.5                    # in place: same array, new bits
    both(w)
    assert len(builds) == 2
    w2 = w.copy()                           # another array, same bits: found
    both(w2)
    assert len(builds) == 2
    w[0, 0, 0, 0] = np.nan
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, b, 1, 2)
    with convkit.use_backend("numpy"):
        np.testing.assert_array_equal(np.isnan(y), np.isnan(convkit.conv2d_forward(x, w, b, 1, 2)))


# ------------------------------------------------------------------ whole-plane average pool
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(128, 64, 2, 2), (3, 5, 3, 4), (2, 3, 1, 1)])
def test_whole_plane_avg_pool_matches_torch_and_the_window_sum(shape, dtype, torch):
    N, C, H, W = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal((N, C, 1, 1)).astype(dtype)
    with convkit.use_backend("cpu"):
        y = convkit.avg_pool2d_forward(x, (H, W))
        gx = convkit.avg_pool2d_backward(gy, shape, (H, W))
    # the general kernel's arithmetic: taps summed in row-major order, then one division
    s = np.zeros((N, C), dtype)
    for i in range(H):
        for j in range(W):
            s = s + x[:, :, i, j]
    np.testing.assert_array_equal(y.reshape(N, C), s / dtype(H * W))
    np.testing.assert_array_equal(gx, np.broadcast_to(gy / dtype(H * W), shape))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, (H, W))
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ small-plane batch norm
def _np_bn_train(x, w, b, eps):
    x64 = x.astype(np.float64)
    m = x64.mean(axis=(0, 2, 3))
    v = x64.var(axis=(0, 2, 3))
    inv = 1.0 / np.sqrt(v + eps)
    y = (x64 - m[None, :, None, None]) * (inv * w)[None, :, None, None] + b[None, :, None, None]
    return y, m, v, inv


@pytest.mark.parametrize("shape", [(128, 16, 8, 8), (37, 64, 2, 2), (5, 3, 3, 5), (64, 33, 1, 1)])
def test_small_plane_batch_norm_accurate_and_thread_count_independent(shape):
    """The slab path (H*W <= 64) against a float64 NumPy reference, with a large mean offset
    (the two-pass variance must not cancel), and the same bits on 1 and 2 threads."""
    rng = np.random.default_rng(8)
    C = shape[1]
    x = (rng.standard_normal(shape) * 0.5 + 100.0).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)

    def run():
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        with convkit.use_backend("cpu"):
            y, mean, invstd = convkit.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
            g = convkit.batch_norm_backward(gy, x, w, mean, invstd, True)
        return (y, mean, invstd, rm, rv) + tuple(g)

    before = convkit.get_num_threads()
    try:
        convkit.set_num_threads(2)
        two = run()
        convkit.set_num_threads(1)
        one = run()
    finally:
        convkit.set_num_threads(before)
    for u, v in zip(two, one):
        np.testing.assert_array_equal(u, v)
    y, mean, invstd = one[:3]
    y64, m64, v64, inv64 = _np_bn_train(x, w.astype(np.float64), b.astype(np.float64), 1e-5)
    np.testing.assert_allclose(mean, m64, rtol=1e-6)
    np.testing.assert_allclose(invstd, inv64, rtol=1e-5)
    np.testing.assert_allclose(y, y64, rtol=1e-3, atol=1e-3)
    # grad_x of y's sum weighted by gy, float64 closed form
    M = shape[0] * shape[2] * shape[3]
    xhat = (x.astype(np.float64) - m64[None, :, None, None]) * inv64[None, :, None, None]
    g64 = gy.astype(np.float64)
    gb = g64.sum(axis=(0, 2, 3))
    gw = (g64 * xhat).sum(axis=(0, 2, 3))
    gx = (w * inv64)[None, :, None, None] * (
        g64 - gb[None, :, None, None] / M - xhat * gw[None, :, None, None] / M)
    np.testing.assert_allclose(one[5], gx, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(one[6], gw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(one[7], gb, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ shifted im2col gather
SHIFTED = [
    ("8x8_3x3", (5, 3, 8, 8), (4, 3, 3, 3), 1, (1, 1)),
    ("4x4_3x3", (7, 6, 4, 4), (5, 6, 3, 3), 1, (1, 1)),
    ("4x4_dil2", (3, 2, 4, 4), (3, 2, 3, 3), 2, (2, 2)),
    ("8x2_5x5", (4, 3, 8, 2), (2, 3, 5, 5), 1, (2, 2)),     # taps shifted past whole rows
    ("4x4_even_same", (3, 4, 4, 4), (6, 4, 2, 2), 1, "same"),
    ("4x4_grouped", (3, 4, 4, 4), (6, 2, 3, 3), 1, (1, 1)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SHIFTED, ids=lambda c: c[0])
def test_shifted_gather_gives_the_general_gathers_bits(case, dtype, monkeypatch, torch):
    """Stride-1 convs with Wo == W gather columns by masked vector loads straight from x (on
    AVX2 and AVX-512 CPUs); the columns, and so every result, must equal the padded-plane gather's
    bit for bit, and torch's values."""
    name, xs, ws, dil, pad = case
    groups = xs[1] // ws[1]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    kw = dict(stride=1, padding=pad, dilation=dil, groups=groups)
    y = _run(x, w, None, None, kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    fast = _run(x, w, None, gy, kw)
    monkeypatch.setattr(cpu_conv, "_shift_masks", lambda *a: np.zeros(0, np.uint16))
    slow = _run(x, w, None, gy, kw)
    for u, v in zip(fast[:3], slow[:3]):
        np.testing.assert_array_equal(u, v)
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    ty = torch.nn.functional.conv2d(tx, tw, None, **kw)
    ty.backward(torch.tensor(gy))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, want in [(fast[0], ty), (fast[1], tx.grad), (fast[2], tw.grad)]:
        np.testing.assert_allclose(got, want.detach().numpy(), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SHIFTED[:2] + SHIFTED[3:4], ids=lambda c: c[0])
def test_shifted_gather_non_finite_element_for_element(case, dtype, monkeypatch):
    """NaN / inf on a plane's border rows and columns (next to the lanes a tap masks off, and
    just before / after another image's plane in memory): the shifted gather's forward and
    backward put NaN / inf exactly where the padded-plane gather does."""
    name, xs, ws, dil, pad = case
    groups = xs[1] // ws[1]
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    x[0, 0, 0, 0] = np.nan
    x[1, -1, -1, -1] = np.inf
    x[-1, 0, -1, 0] = -np.inf
    kw = dict(stride=1, padding=pad, dilation=dil, groups=groups)
    gy = rng.standard_normal(_run(x, w, None, None, kw).shape).astype(dtype)
    fast = _run(x, w, None, gy, kw)
    monkeypatch.setattr(cpu_conv, "_shift_masks", lambda *a: np.zeros(0, np.uint16))
    slow = _run(x, w, None, gy, kw)
    for u, v in zip(fast[:3], slow[:3]):
        np.testing.assert_array_equal(u, v)     # (NaN where NaN, the same inf, same bits)
    assert np.isnan(fast[0]).any() and np.isinf(fast[0]).any()


@pytest.mark.parametrize("xs,ws", [((9, 16, 8, 8), (16, 16, 3, 3)), ((13, 32, 4, 4),
                                                                     (32, 32, 3, 3))])
def test_shifted_gather_same_bits_on_1_2_8_16_threads(xs, ws):
    """The training step's batch-path 3x3 convs (8x8 and 4x4 maps): forward, grad_x and
    grad_weight the same bits on 1, 2, 8 and 16 threads."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    gy = rng.standard_normal(xs[:1] + ws[:1] + xs[2:]).astype(np.float32)
    kw = dict(stride=1, padding=1)
    before = convkit.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 8, 16):
            convkit.set_num_threads(n)
            runs.append(_run(x, w, None, gy, kw))
    finally:
        convkit.set_num_threads(before)
    for other in runs[1:]:
        for u, v in zip(runs[0][:3], other[:3]):
            np.testing.assert_array_equal(u, v)


def test_shift_masks_mark_the_taps_that_read_x():
    if not cpu_conv._conv.shift_available():
        pytest.skip("no AVX2 or AVX-512 on this CPU: the shifted gather is not used")
    m = cpu_conv._shift_masks(4, 4, 4, 4, 3, 3, (1, 1), 1, 1, (1, 1), 4)
    assert m.shape == (9,)
    # tap (0, 0) reads x for outputs with ho >= 1 and wo >= 1; the centre tap for all 16
    want00 = sum(1 << (ho * 4 + wo) for ho in range(1, 4) for wo in range(1, 4))
    assert m[0] == want00 and m[4] == 0xFFFF
    assert cpu_conv._shift_masks(4, 4, 2, 2, 3, 3, (2, 2), 1, 1, (1, 1), 4).size == 0


# ------------------------------------------------------------------ grad_weight batch parts
@pytest.mark.parametrize("xs,ws", [((3, 16, 8, 8), (16, 16, 3, 3)),     # 2 parts of 1 + 2 images
                                   ((5, 1, 8, 8), (16, 1, 3, 3)),       # the stem: 1 channel
                                   ((1, 16, 4, 4), (8, 16, 3, 3))])     # 1 image: 1 part
def test_grad_weight_in_batch_parts_matches_torch_on_any_thread_count(xs, ws, torch):
    """grad_weight of a small map with few channel blocks sums fixed parts of the batch
    separately (conv._plan_batch_backward's nsplit) and adds them in order."""
    plan = cpu_conv._plan_batch_backward(xs[0], ws[1], 1, ws[0], 9, 100, xs[2] * xs[3], 4, 2,
                                         True)
    assert plan[4] == min(xs[0], 2)
    rng = np.random.default_rng(12)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    gy = rng.standard_normal((xs[0], ws[0], xs[2], xs[3])).astype(np.float32)
    kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    before = convkit.get_num_threads()
    try:
        convkit.set_num_threads(2)
        two = _run(x, w, None, gy, kw)
        convkit.set_num_threads(1)
        one = _run(x, w, None, gy, kw)
    finally:
        convkit.set_num_threads(before)
    for u, v in zip(two[:3], one[:3]):
        np.testing.assert_array_equal(u, v)
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    torch.nn.functional.conv2d(tx, tw, None, **kw).backward(torch.tensor(gy))
    np.testing.assert_allclose(one[1], tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one[2], tw.grad.numpy(), rtol=1e-4, atol=1e-4)
