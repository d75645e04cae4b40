"""The Cython CPU kernels for pooling, batch norm, RoI ops and boxes, beyond the generic op grids
(tests/test_pool.py, test_batchnorm.py, test_roi.py, test_boxes.py run those on every backend).

What is specific to ``cpu``: the SSE2 stride-2 pooling fast paths (checked bit for bit against
the general loop and against the NumPy reference on widths that exercise the vector body and
its tail, with NaN and ties), batch-norm statistics in double, the NHWC RoI-align path and the
blocked NMS on detector-sized inputs, thread safety (two Python threads at once), bit-identical
backwards for any thread count, read-only inputs, ``out=`` and in-kernel index checks.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import convkit
import convkit.functional as F
from convkit.benchmark import clustered_boxes, random_rois
from helpers import assert_same_bits_at_every_roi_simd_level, run, tol

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

DTYPES = [np.float32, np.float64]


def ref(fn, *args, **kw):
    return run("numpy", fn, *args, **kw)


def cpu(fn, *args, **kw):
    return run("cpu", fn, *args, **kw)


def _pool_x(dtype, shape, seed, nan=False, ties=False):
    rng = np.random.default_rng(seed)
    if ties:   # few distinct values: many equal maxima per window
        x = rng.integers(-2, 3, shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    if nan:
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, flat.size // 7)] = np.nan
    return x


# widths: vector body + tail for float32 (4 lanes) and float64 (2), odd/even, tiny
POOL_SHAPES = [(2, 3, 9, 37), (1, 2, 12, 38), (1, 1, 5, 5), (1, 2, 6, 3), (2, 2, 11, 70)]
FAST_MAX = [(3, 2, 1), (2, 2, 0), (3, 2, 0), (3, (1, 2), 1), (2, (3, 2), 1)]


# ----------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=str)
@pytest.mark.parametrize("k,s,p", FAST_MAX, ids=str)
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("data", ["normal", "nan", "ties"])
def test_max_pool_fast_path_equals_reference(dtype, shape, k, s, p, ceil, data):
    """Values and indices identical to the reference (first max on ties, NaN wins)."""
    x = _pool_x(dtype, shape, 1, nan=data == "nan", ties=data == "ties")
    try:
        want = ref(F.max_pool2d_forward, x, k, s, p, 1, ceil)
    except ValueError:      # output size < 1 for this tiny shape
        return
    got = cpu(F.max_pool2d_forward, x, k, s, p, 1, ceil)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])       # NaN == NaN here
    gy = _pool_x(dtype, got[0].shape, 2)
    np.testing.assert_allclose(cpu(F.max_pool2d_backward, gy, got[1], x.shape),
                               ref(F.max_pool2d_backward, gy, want[1], x.shape), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fast_k", [2, 3])
def test_max_pool_simd_rows_equal_the_general_loop(dtype, fast_k):
    """The kernel-level fast path against the general loop of the same extension, bit for bit,
    on NaN-laden data with ties (the only difference between them is the code path)."""
    from convkit.cpu import _pool, pool

    x = _pool_x(dtype, (3, 23, 41), 3, ties=True)
    x[0, 4, 7] = x[1, 10, 20] = x[2, 0, 1] = np.nan
    x[1, 3, 3] = -np.inf
    x[2] = -np.inf                                       # all -inf: index of the first tap
    P, H, W = x.shape
    outs = []
    for fk in (0, fast_k):
        hb, h0, h1 = pool._window_table(H, 12, fast_k, 2, fast_k // 2, 1)
        wb, w0, w1 = pool._window_table(W, 21 if fast_k == 3 else 20, fast_k, 2, fast_k // 2, 1)
        y = np.empty((P, hb.size, wb.size), dtype)
        idx = np.empty(y.shape, np.int64)
        _pool.max_pool2d_forward(x, W, hb, h0, h1, wb, w0, w1, 1, 1, fk, y, idx, 1)
        outs.append((y, idx))
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][0].tobytes() == outs[1][0].tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=str)
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 2, 0), (2, 2, 1), (3, 1, 1)],
                         ids=str)
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool_fast_path_equals_reference(dtype, shape, k, s, p, ceil, cip):
    x = _pool_x(dtype, shape, 4)
    try:
        want = ref(F.avg_pool2d_forward, x, k, s, p, ceil, cip)
    except ValueError:
        return
    got = cpu(F.avg_pool2d_forward, x, k, s, p, ceil, cip)
    np.testing.assert_allclose(got, want, **tol(dtype))
    gy = _pool_x(dtype, got.shape, 5)
    np.testing.assert_allclose(cpu(F.avg_pool2d_backward, gy, x.shape, k, s, p, ceil, cip),
                               ref(F.avg_pool2d_backward, gy, x.shape, k, s, p, ceil, cip),
                               **tol(dtype))


def test_avg_pool_fast_path_matches_torch_bit_for_bit(torch):
    """Same additions in the same order as torch's kernel: identical float32 results."""
    x = _pool_x(np.float32, (2, 3, 30, 46), 6)
    got = cpu(F.avg_pool2d_forward, x, 3, 2, 1)
    want = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_backward_of_planes_too_big_for_the_scratch(dtype):
    """Planes over 1 MB are written in place instead of through the cached scratch."""
    x = _pool_x(dtype, (1, 2, 520, 521), 23)
    y, idx = cpu(F.max_pool2d_forward, x, 3, 2, 1)
    gy = _pool_x(dtype, y.shape, 24)
    np.testing.assert_allclose(cpu(F.max_pool2d_backward, gy, idx, x.shape),
                               ref(F.max_pool2d_backward, gy, idx, x.shape), **tol(dtype))
    np.testing.assert_allclose(cpu(F.avg_pool2d_backward, gy, x.shape, 3, 2, 1),
                               ref(F.avg_pool2d_backward, gy, x.shape, 3, 2, 1), **tol(dtype))


def test_max_pool_backward_bad_index_names_indices():
    x = _pool_x(np.float32, (1, 2, 6, 6), 7)
    y, idx = cpu(F.max_pool2d_forward, x, 2)
    for bad in (36, -1, 2**40):
        idx2 = idx.copy()
        idx2[0, 1, 2, 0] = bad
        with pytest.raises(ValueError, match=rf"indices.*{bad}"):
            cpu(F.max_pool2d_backward, np.ones_like(y), idx2, x.shape)


# -------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_float32_statistics_in_double(training):
    """A large offset (mean 1000, std 0.01) in float32: the statistics, accumulated in double,
    match a float64 computation of the same float32 data closely."""
    rng = np.random.default_rng(8)
    x = (1000 + 0.01 * rng.standard_normal((4, 3, 33, 35))).astype(np.float32)
    w, b = rng.uniform(0.5, 2, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    var = x64.var(axis=(0, 2, 3))
    rm, rv = mean.astype(np.float32), var.astype(np.float32)
    y, sm, si = cpu(F.batch_norm_forward, x, w, b, rm.copy(), rv.copy(), training)
    np.testing.assert_allclose(sm, mean, rtol=1e-7)
    if training:
        np.testing.assert_allclose(si, 1 / np.sqrt(var + 1e-5), rtol=1e-6)
    want = (x64 - sm.astype(np.float64)[None, :, None, None]) * (si * w)[None, :, None, None] \
        + b[None, :, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=2e-4)


def test_batch_norm_running_stats_updated_in_place():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    ids = (id(rm), id(rv))
    with convkit.use_backend("cpu"):
        F.batch_norm_forward(x, None, None, rm, rv, True, momentum=0.25)
    assert (id(rm), id(rv)) == ids
    M = 3 * 5 * 6
    np.testing.assert_allclose(rm, 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(axis=(0, 2, 3)) * M / (M - 1), rtol=1e-5)


def _bn_small_order(x, g, eps=1e-5):
    """float64 statistics of (N, C, HW) data with HW <= 64, added in the order the kernel
    documents for small planes: per slab position a chain from +0.0 over the images, then per
    channel a chain from +0.0 over its positions (NumPy float64 additions are the same IEEE
    operations, done for all positions at once)."""
    N, C, HW = x.shape
    M = float(N * HW)

    def sums(m, a, b=None):
        S, Q = np.zeros((C, HW)), np.zeros((C, HW))
        for n in range(N):
            if b is None:
                d = a[n] - m[:, None]
                S, Q = S + d, Q + d * d
            else:
                S, Q = S + a[n], Q + a[n] * (b[n] - m[:, None])
        s, q = np.zeros(C), np.zeros(C)
        for i in range(HW):
            s, q = s + S[:, i], q + Q[:, i]
        return s, q

    s, _ = sums(np.zeros(C), x)
    mean = s / M
    s, q = sums(mean, x)
    var = np.maximum((q - s * s / M) / M, 0)
    invstd = 1.0 / np.sqrt(var + eps)
    sg, sd = sums(mean, g, x)
    return mean, invstd, sg, sd * invstd


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (1, 3), (2, 2), (4, 4), (5, 7)])
def test_batch_norm_small_planes_follow_documented_order(hw):
    """The channel-block path for small planes adds exactly as documented: bit for bit equal to
    a NumPy replay of the order (float64, where no rounding to the storage type hides it)."""
    rng = np.random.default_rng(21)
    x = (5 + 3 * rng.standard_normal((37, 70) + hw))
    g = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(70), rng.standard_normal(70)
    mean, invstd, gb, gw = _bn_small_order(x.reshape(37, 70, -1), g.reshape(37, 70, -1))
    y, sm, si = cpu(F.batch_norm_forward, x, w, b, np.zeros(70), np.ones(70), True)
    assert np.array_equal(sm, mean) and np.array_equal(si, invstd)
    gx, gwc, gbc = cpu(F.batch_norm_backward, g, x, w, sm, si, True)
    assert np.array_equal(gbc, gb) and np.array_equal(gwc, gw)
    np.testing.assert_allclose(y, (x - mean[:, None, None]) * (invstd * w)[:, None, None]
                               + b[:, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 37, 2, 2), (5, 70, 1, 3), (6, 19, 4, 4), (4, 21, 8, 8),
                                   (3, 5, 9, 9)])
def test_batch_norm_kernels_bit_identical_for_any_thread_count(dtype, shape):
    """Small planes go through channel blocks whose size follows the thread count; the bytes
    of every output must not (forward train/eval, backward train/eval)."""
    from convkit.cpu import _batchnorm as K
    rng = np.random.default_rng(22)
    N, C, H, W = shape
    x = (2 + rng.standard_normal((N, C, H * W))).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    outs = []
    for nt in (1, 2, 3, 1):
        y, ye, gx, gxe = (np.empty_like(x) for _ in range(4))
        mean, var = np.empty(C), np.empty(C)
        sm, si, gw, gb, gwe, gbe = (np.empty(C, dtype) for _ in range(6))
        K.batch_norm_train_forward(x, w, b, 1e-5, y, mean, var, sm, si, nt, w[:0], w[:0], 0.0, 1.0)
        K.batch_norm_eval_forward(x, sm, si, w, b, ye, nt)
        K.batch_norm_backward(g, x, w, sm, si, True, gx, gw, gb, nt)
        K.batch_norm_backward(g, x, w, sm, si, False, gxe, gwe, gbe, nt)
        outs.append([a.tobytes() for a in (y, ye, gx, gxe, mean, var, sm, si, gw, gb, gwe, gbe)])
    assert all(o == outs[0] for o in outs[1:])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2)), rtol=1e-10)


# ---------------------------------------------------------------------------------- roi ops
def _detector_inputs(dtype, K=64, C=16, seed=10):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, C, 25, 34)).astype(dtype)
    rois = random_rois(rng, K, 2, (400, 544)).astype(dtype)
    return x, rois


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sr,aligned", [(2, False), (-1, False), (-1, True), (3, True)])
def test_roi_align_detector_sized_matches_reference(dtype, sr, aligned):
    x, rois = _detector_inputs(dtype)
    want = ref(F.roi_align_forward, x, rois, 7, 1 / 16, sr, aligned)
    got = cpu(F.roi_align_forward, x, rois, 7, 1 / 16, sr, aligned)
    np.testing.assert_allclose(got, want, **tol(dtype))
    gy = np.random.default_rng(11).standard_normal(got.shape).astype(dtype)
    np.testing.assert_allclose(cpu(F.roi_align_backward, gy, rois, x.shape, 7, 1 / 16, sr,
                                   aligned),
                               ref(F.roi_align_backward, gy, rois, x.shape, 7, 1 / 16, sr,
                                   aligned), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_detector_sized_matches_reference(dtype):
    x, rois = _detector_inputs(dtype)
    y, am = cpu(F.roi_pool_forward, x, rois, 7, 1 / 16)
    y0, am0 = ref(F.roi_pool_forward, x, rois, 7, 1 / 16)
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_array_equal(y, y0)
    gy = np.random.default_rng(12).standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(cpu(F.roi_pool_backward, gy, am, x.shape, rois=rois),
                               ref(F.roi_pool_backward, gy, am0, x.shape, rois=rois), **tol(dtype))


def test_roi_avx2_and_sse2_paths_give_the_same_bits():
    """The AVX2 kernels (picked at run time) do lane for lane what the SSE2 ones do."""
    from convkit.cpu import roi as _roi

    x, rois = _detector_inputs(np.float32, K=40, C=37)        # 37: 16 + 16 + 5 tail lanes
    gy = np.random.default_rng(21).standard_normal((40, 37, 7, 7)).astype(np.float32)
    outs = []
    try:
        for on in (True, False):
            _roi.use_avx2(on)
            outs.append([cpu(F.roi_align_forward, x, rois, 7, 1 / 16, 2, False),
                         cpu(F.roi_align_backward, gy, rois, x.shape, 7, 1 / 16, -1, True),
                         *cpu(F.roi_pool_forward, x, rois, 7, 1 / 16)])
    finally:
        _roi.use_avx2(True)
    for a, b in zip(*outs):
        assert a.tobytes() == b.tobytes()


def test_roi_every_simd_level_gives_the_same_bits():
    """AVX-512, AVX2 and SSE2 kernels (whatever the CPU offers) do lane for lane the same
    multiplies and adds; channel counts below one vector, across the 128-channel blocks of
    the forward scratch and with scalar tails all agree bit for bit."""
    def outputs():
        res = []
        for C in (3, 37, 150):
            x, rois = _detector_inputs(np.float32, K=24, C=C, seed=C)
            gy = np.random.default_rng(C).standard_normal((24, C, 7, 7)).astype(np.float32)
            res += [cpu(F.roi_align_forward, x, rois, 7, 1 / 16, 2, False),
                    cpu(F.roi_align_forward, x, rois, 7, 1 / 16, -1, True),
                    cpu(F.roi_align_backward, gy, rois, x.shape, 7, 1 / 16, 2, False),
                    *cpu(F.roi_pool_forward, x, rois, 7, 1 / 16)]
        return res
    assert_same_bits_at_every_roi_simd_level(outputs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_wide_maps_match_reference(dtype):
    """More channels than one 128-channel forward block (and than one 64-channel backward
    block), not a multiple of the vector width: equal to the reference."""
    x, rois = _detector_inputs(dtype, K=20, C=150, seed=31)
    gy = np.random.default_rng(32).standard_normal((20, 150, 7, 7)).astype(dtype)
    np.testing.assert_allclose(cpu(F.roi_align_forward, x, rois, 7, 1 / 16, 2, False),
                               ref(F.roi_align_forward, x, rois, 7, 1 / 16, 2, False),
                               **tol(dtype))
    np.testing.assert_allclose(cpu(F.roi_align_backward, gy, rois, x.shape, 7, 1 / 16, 2, False),
                               ref(F.roi_align_backward, gy, rois, x.shape, 7, 1 / 16, 2, False),
                               **tol(dtype))
    y, am = cpu(F.roi_pool_forward, x, rois, 7, 1 / 16)
    y0, am0 = ref(F.roi_pool_forward, x, rois, 7, 1 / 16)
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_backward_inf_grad_in_one_channel_block(dtype):
    """A NaN/inf grad in one 64-channel block of one RoI: that block of that RoI gets
    torchvision's separate corners (inf * 0 = NaN where samples sit on whole pixels), the
    other blocks and RoIs stay finite and match the reference."""
    rng = np.random.default_rng(33)
    x = rng.standard_normal((1, 130, 9, 9)).astype(dtype)
    rois = np.array([[0, 0.5, 0.5, 6.5, 6.5], [0, 1.3, 2.1, 7.7, 8.2]], dtype)   # 0: whole pixels
    g = rng.standard_normal((2, 130, 3, 3)).astype(dtype)
    g[0, 70, 1, 1] = np.inf
    got = cpu(F.roi_align_backward, g, rois, x.shape, 3, 1.0, 2, False)
    want = ref(F.roi_align_backward, g, rois, x.shape, 3, 1.0, 2, False)
    np.testing.assert_allclose(got, want, **tol(dtype), equal_nan=True)
    assert np.isnan(got[0, 70]).any() and np.isinf(got[0, 70]).any()
    assert np.isfinite(np.delete(got, 70, axis=1)).all()


def test_roi_kernels_thread_counts_give_the_same_bits():
    """The task runner hands out RoIs / channel blocks to any number of threads (more than
    the tasks, too): every output is the same bytes."""
    x, rois = _detector_inputs(np.float32, K=40, C=150, seed=34)
    gy = np.random.default_rng(35).standard_normal((40, 150, 7, 7)).astype(np.float32)
    outs = []
    with convkit.use_backend("cpu"):
        try:
            for nt in (1, 2, 3, 7):
                convkit.set_num_threads(nt)
                y, am = F.roi_pool_forward(x, rois, 7, 1 / 16)
                outs.append(_bytes((F.roi_align_forward(x, rois, 7, 1 / 16, 2, False),
                                    F.roi_align_backward(gy, rois, x.shape, 7, 1 / 16, 2, False),
                                    y, am, F.roi_pool_backward(gy, am, x.shape, rois=rois))))
        finally:
            convkit.set_num_threads(None)
    assert all(o == outs[0] for o in outs[1:])


def test_roi_align_huge_sampling_grid_is_bounded():
    """A RoI ~1e6 px wide with the adaptive grid (~1e4 samples per bin per axis) visits only
    the samples that land on the map: fast, and equal to the reference."""
    x, _ = _detector_inputs(np.float64, C=3)
    rois = np.array([[0, -5e5, -3e5, 6e5, 4e5], [1, 10, 10, 1e6, 30]], np.float64)
    got = cpu(F.roi_align_forward, x, rois, 7, 1 / 16, -1, False)
    np.testing.assert_allclose(got, ref(F.roi_align_forward, x, rois, 7, 1 / 16, -1, False),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sr", [9, 40, 3000])
def test_roi_align_dense_grids_take_the_separable_route_and_match(sr):
    """More than 64 sample pairs per bin: interpolated along x then y (no pair table) --
    same values as the reference, NaN spreading only where sampled, forward and backward."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((2, 3, 9, 11))
    x[0, 1, 3, 4] = np.nan
    rois = np.array([[0, 0.5, 0.5, 8.0, 6.0], [1, -3, -2, 14, 12], [0, 2, 2, 2.5, 2.5],
                     [1, 1, 1, 5, 5]])
    g = rng.standard_normal((4, 3, 3, 2))
    for aligned in (False, True):
        want = ref(F.roi_align_forward, x[1:], rois[[1, 3]] - [1, 0, 0, 0, 0], (3, 2), 1.0,
                   sr, aligned)
        got = cpu(F.roi_align_forward, x[1:], rois[[1, 3]] - [1, 0, 0, 0, 0], (3, 2), 1.0,
                  sr, aligned)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        if sr <= 40:     # the reference's NaN path enumerates every pair (workspace-bound)
            np.testing.assert_allclose(cpu(F.roi_align_forward, x, rois, (3, 2), 1.0, sr,
                                           aligned),
                                       ref(F.roi_align_forward, x, rois, (3, 2), 1.0, sr,
                                           aligned), rtol=1e-9, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(cpu(F.roi_align_backward, g, rois, x.shape, (3, 2), 1.0, sr,
                                       aligned),
                                   ref(F.roi_align_backward, g, rois, x.shape, (3, 2), 1.0, sr,
                                       aligned), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_inf_in_data_or_grad_meets_every_corner_weight(dtype):
    """Taps on one pixel are merged only for finite data / grads: an inf under a zero corner
    weight must give NaN (inf * 0), as torchvision's separate corners do."""
    rng = np.random.default_rng(25)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    x[0, 1, 2, 3] = np.inf
    x[1, 2, 5, 5] = -np.inf
    rois = np.array([[0, 0.5, 0.5, 6.5, 6.5], [0, 1.0, 2.0, 4.0, 3.0], [1, 0.2, 0.2, 7.9, 7.9],
                     [1, 4.0, 4.0, 6.0, 6.0]], dtype)
    for sr, aligned in ((2, False), (-1, True)):
        np.testing.assert_allclose(cpu(F.roi_align_forward, x, rois, 3, 1.0, sr, aligned),
                                   ref(F.roi_align_forward, x, rois, 3, 1.0, sr, aligned),
                                   **tol(dtype), equal_nan=True)
        g = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
        g[0, 1, 1, 2] = np.inf
        g[2, 0, 0, 0] = -np.inf
        got = cpu(F.roi_align_backward, g, rois, x.shape, 3, 1.0, sr, aligned)
        want = ref(F.roi_align_backward, g, rois, x.shape, 3, 1.0, sr, aligned)
        np.testing.assert_allclose(got, want, **tol(dtype), equal_nan=True)
        if not aligned:     # RoI 0's samples sit on whole pixels: zero corner weights
            assert np.isnan(got[0, 1]).any() and np.isinf(got[0, 1]).any()


def test_roi_pool_backward_bad_argmax_names_argmax():
    x, rois = _detector_inputs(np.float32, K=4, C=2)
    y, am = cpu(F.roi_pool_forward, x, rois, 2, 1 / 16)
    am[1, 0, 0, 1] = x.shape[2] * x.shape[3]
    with pytest.raises(ValueError, match=r"argmax.*850"):
        cpu(F.roi_pool_backward, np.ones_like(y), am, x.shape, rois=rois)
    am[1, 0, 0, 1] = -2
    with pytest.raises(ValueError, match=r"argmax.*-2"):
        cpu(F.roi_pool_backward, np.ones_like(y), am, x.shape, rois=rois)


# ------------------------------------------------------------------------------------- boxes
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thr", [0.7, 0.5, 0.0, -0.1, 1.0])
def test_nms_detector_sized_matches_reference(dtype, thr):
    """Over the parallel/blocked size (3000 boxes, clustered, with score ties)."""
    rng = np.random.default_rng(13)
    boxes, scores = clustered_boxes(rng, 3000, (600, 800), 40)
    scores = np.round(scores * 50) / 50          # many ties
    b, s = boxes.astype(dtype), scores.astype(dtype)
    np.testing.assert_array_equal(cpu(F.nms, b, s, thr), ref(F.nms, b, s, thr))


def test_nms_parallel_blocks_equal_serial():
    """Above the threshold where NMS splits later boxes across threads: same keep list."""
    from convkit.cpu import boxes as cb

    rng = np.random.default_rng(14)
    boxes, scores = clustered_boxes(rng, 20000, (800, 1088), 400)
    with convkit.use_backend("cpu"):
        convkit.set_num_threads(2)
        par = cb.nms(boxes, scores, 0.6)
        convkit.set_num_threads(1)
        ser = cb.nms(boxes, scores, 0.6)
    assert cb._PARALLEL_MIN_BOXES <= 20000
    np.testing.assert_array_equal(par, ser)
    np.testing.assert_array_equal(par, ref(F.nms, boxes[:20000], scores, 0.6))


def test_nms_nonfinite_boxes_and_box_iou_match_reference():
    rng = np.random.default_rng(15)
    boxes, scores = clustered_boxes(rng, 300, (200, 200), 10)
    boxes[3, 2] = np.nan
    boxes[8, 0] = np.inf
    boxes[9] = 5.0                                # zero area
    np.testing.assert_array_equal(cpu(F.nms, boxes, scores, 0.3), ref(F.nms, boxes, scores, 0.3))
    np.testing.assert_array_equal(cpu(F.box_iou, boxes, boxes[:50]),
                                  ref(F.box_iou, boxes, boxes[:50]))


# ----------------------------------------------------------------- threads and determinism
def _backward_cases(dtype):
    rng = np.random.default_rng(16)
    x = rng.standard_normal((4, 8, 40, 44)).astype(dtype)
    y, idx = cpu(F.max_pool2d_forward, x, 3, 2, 1)
    gy = rng.standard_normal(y.shape).astype(dtype)
    xr, rois = _detector_inputs(dtype, K=48, C=12)
    ya, am = cpu(F.roi_pool_forward, xr, rois, 7, 1 / 16)
    gr = rng.standard_normal(ya.shape).astype(dtype)
    w = rng.uniform(0.5, 2, 8).astype(dtype)
    _, sm, si = cpu(F.batch_norm_forward, x, w, None, None, None, True)
    gb = rng.standard_normal(x.shape).astype(dtype)
    return {
        "max_pool": lambda: F.max_pool2d_backward(gy, idx, x.shape),
        "avg_pool": lambda: F.avg_pool2d_backward(gy, x.shape, 3, 2, 1),
        "batch_norm": lambda: F.batch_norm_backward(gb, x, w, sm, si, True),
        "roi_pool": lambda: F.roi_pool_backward(gr, am, xr.shape, rois=rois),
        "roi_align": lambda: F.roi_align_backward(gr, rois, xr.shape, 7, 1 / 16, 2, False),
        "roi_align_adaptive": lambda: F.roi_align_backward(gr, rois, xr.shape, 7, 1 / 16, -1,
                                                           True),
    }


def _bytes(out):
    if isinstance(out, tuple):
        return b"".join(o.tobytes() for o in out if o is not None)
    return out.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_backwards_are_bit_identical_for_any_thread_count(dtype):
    """Each thread owns whole planes / channels of the gradient and adds in a fixed order: two
    runs on 2 threads, and a run on 1 thread, give the same bytes."""
    cases = _backward_cases(dtype)
    with convkit.use_backend("cpu"):
        for name, fn in cases.items():
            convkit.set_num_threads(2)
            a, b = _bytes(fn()), _bytes(fn())
            convkit.set_num_threads(1)
            c = _bytes(fn())
            assert a == b, name
            assert a == c, name


def test_two_python_threads_get_the_serial_results():
    """The kernels release the GIL and keep no shared state: pool, roi and nms called from two
    Python threads at once (each with its own OpenMP team) give the serial answers."""
    x, rois = _detector_inputs(np.float32, K=96, C=24)
    xp = np.random.default_rng(17).standard_normal((4, 16, 56, 56)).astype(np.float32)
    boxes, scores = clustered_boxes(np.random.default_rng(18), 2000, (600, 800), 30)
    jobs = [
        lambda: F.max_pool2d_forward(xp, 3, 2, 1),
        lambda: F.avg_pool2d_forward(xp, 3, 2, 1),
        lambda: F.roi_align_forward(x, rois, 7, 1 / 16, 2, False),
        lambda: F.roi_pool_forward(x, rois, 7, 1 / 16),
        lambda: F.roi_align_backward(np.ones((96, 24, 7, 7), np.float32), rois, x.shape, 7,
                                     1 / 16, 2, False),
        lambda: F.nms(boxes, scores, 0.7),
    ]
    with convkit.use_backend("cpu"):
        serial = [_bytes(j()) for j in jobs]
    results = [[None] * len(jobs) for _ in range(2)]
    errors = []

    def worker(t):
        try:
            with convkit.use_backend("cpu"):
                for rep in range(3):
                    for i, j in enumerate(jobs if t == 0 else jobs[::-1]):
                        k = i if t == 0 else len(jobs) - 1 - i
                        out = _bytes(j())
                        if results[t][k] is not None and results[t][k] != out:
                            errors.append((t, k, "changed between repeats"))
                        results[t][k] = out
        except Exception as e:        # pragma: no cover - reported below
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for t in range(2):
        for k in range(len(jobs)):
            assert results[t][k] == serial[k], (t, k)


# ------------------------------------------------------------------------- read-only, out=
def _readonly(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


def test_read_only_inputs_work():
    rng = np.random.default_rng(19)
    x = rng.standard_normal((2, 4, 20, 22)).astype(np.float32)
    w, b = rng.uniform(0.5, 2, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    xr, rois = _detector_inputs(np.float32, K=8, C=4)
    boxes, scores = clustered_boxes(rng, 200, (300, 300), 8)
    y, idx = cpu(F.max_pool2d_forward, x, 3, 2, 1)
    ya, am = cpu(F.roi_pool_forward, xr, rois, 3, 1 / 16)
    _, sm, si = cpu(F.batch_norm_forward, x, w, b, None, None, True)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    ro = _readonly(x, w, b, y, idx, xr, rois, ya, am, sm, si, boxes, scores)
    assert not any(a.flags.writeable for a in ro)
    calls = {
        "max_fwd": lambda: F.max_pool2d_forward(x, 3, 2, 1),
        "max_bwd": lambda: F.max_pool2d_backward(y, idx, x.shape),
        "avg_fwd": lambda: F.avg_pool2d_forward(x, 3, 2, 1),
        "avg_bwd": lambda: F.avg_pool2d_backward(y, x.shape, 3, 2, 1),
        "bn_train": lambda: F.batch_norm_forward(x, w, b, rm, rv, True),
        "bn_eval": lambda: F.batch_norm_forward(x, w, b, sm, 1 / si ** 2, False, eps=0.0),
        "bn_bwd": lambda: F.batch_norm_backward(x, x, w, sm, si, True),
        "roi_pool": lambda: F.roi_pool_forward(xr, rois, 3, 1 / 16),
        "roi_pool_bwd": lambda: F.roi_pool_backward(ya, am, xr.shape, rois=rois),
        "roi_align": lambda: F.roi_align_forward(xr, rois, 3, 1 / 16, 2, False),
        "roi_align_bwd": lambda: F.roi_align_backward(ya, rois, xr.shape, 3, 1 / 16, 2, False),
        "nms": lambda: F.nms(boxes, scores, 0.5),
        "box_iou": lambda: F.box_iou(boxes, boxes),
    }
    for name, fn in calls.items():
        got = run("cpu", fn)
        want = run("numpy", fn)
        for g, wv in zip(got if isinstance(got, tuple) else (got,),
                         want if isinstance(want, tuple) else (want,)):
            np.testing.assert_allclose(g, wv, **tol(np.float32), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_buffers_are_filled_and_returned(dtype):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((2, 3, 15, 17)).astype(dtype)
    xr, rois = _detector_inputs(dtype, K=6, C=3)
    with convkit.use_backend("cpu"):
        cases = [
            (lambda o: F.max_pool2d_forward(x, 3, 2, 1, out=o)[0], (2, 3, 8, 9)),
            (lambda o: F.avg_pool2d_forward(x, 2, out=o), (2, 3, 7, 8)),
            (lambda o: F.batch_norm_forward(x, None, None, None, None, True, out=o)[0], x.shape),
            (lambda o: F.roi_pool_forward(xr, rois, 4, 1 / 16, out=o)[0], (6, 3, 4, 4)),
            (lambda o: F.roi_align_forward(xr, rois, 4, 1 / 16, 2, False, out=o), (6, 3, 4, 4)),
        ]
        for fn, shape in cases:
            out = np.full(shape, np.nan, dtype)
            got = fn(out)
            assert got is out
            want = fn(None)
            np.testing.assert_array_equal(out, want)


# ------------------------------------------------------------------------------- cimport
USER_PYX = """
# cython: language_level=3, boundscheck=False, wraparound=False
import numpy as np
from libc.stdint cimport int64_t
from convkit.cpu._pool cimport max_pool2d_plane_backward
from convkit.cpu._batchnorm cimport bn_channel_stats
from convkit.cpu._roi_pool cimport roi_pool_bins
from convkit.cpu._boxes cimport nms_sorted, box_iou_row

def run_all(const double[::1] x, const double[::1] gy, const int64_t[::1] idx,
            const double[::1] roi, const double[:, ::1] boxes):
    cdef double mean, var
    cdef double[::1] gx = np.empty(x.shape[0])
    cdef Py_ssize_t[::1] edges = np.empty(8, np.intp)
    cdef Py_ssize_t n = boxes.shape[0], nk
    cdef double[::1] x1 = np.ascontiguousarray(boxes[:, 0]), y1 = np.ascontiguousarray(boxes[:, 1])
    cdef double[::1] x2 = np.ascontiguousarray(boxes[:, 2]), y2 = np.ascontiguousarray(boxes[:, 3])
    cdef double[::1] area = (np.asarray(x2) - x1) * (np.asarray(y2) - y1)
    cdef unsigned char[::1] sup = np.zeros(n, np.uint8)
    cdef int64_t[::1] keep = np.empty(n, np.int64)
    cdef double[::1] iou = np.empty(n)
    cdef int bad
    with nogil:
        bn_channel_stats(&x[0], 1, x.shape[0], x.shape[0], &mean, &var)
        bad = max_pool2d_plane_backward(&gy[0], &idx[0], gy.shape[0], &gx[0], x.shape[0])
        roi_pool_bins(&roi[0], 1.0, 2, 2, 4, 4, &edges[0], &edges[2], &edges[4], &edges[6])
        nk = nms_sorted(&x1[0], &y1[0], &x2[0], &y2[0], &area[0], n, 0.5, &sup[0], &keep[0])
        box_iou_row(&boxes[0, 0], &boxes[0, 0], n, &iou[0])
    return mean, var, bad, np.asarray(gx), np.asarray(edges), np.asarray(keep)[:nk], np.asarray(iou)
"""


def test_pxd_kernels_can_be_cimported(tmp_path):
    """Other Cython code can cimport the pool / batch-norm / RoI / box kernels (the .pxd
    declarations, noexcept nogil) and gets the documented results."""
    from helpers import build_cimporting_extension

    user_kernels = build_cimporting_extension(tmp_path, "user_kernels", USER_PYX)

    x = np.array([1.0, 2.0, 4.0, 9.0])
    gy = np.array([1.0, 2.0, 3.0])
    idx = np.array([3, 0, 3], np.int64)
    roi = np.array([0, 0.4, 1.6, 2.5, 3.0])
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    mean, var, bad, gx, edges, keep, iou = user_kernels.run_all(x, gy, idx, roi, boxes)
    assert mean == pytest.approx(4.0) and var == pytest.approx(np.var(x))
    assert bad == 0
    np.testing.assert_array_equal(gx, [2.0, 0, 0, 4.0])
    # roi_pool_bins: x 0.4 -> 0, 2.5 -> 3 (half away from zero): 4 cells, bins [0,2),[2,4);
    # y 1.6 -> 2, 3.0 -> 3: 2 cells, bins [2,3),[3,4)
    np.testing.assert_array_equal(edges, [2, 3, 3, 4, 0, 2, 2, 4])
    np.testing.assert_array_equal(keep, [0, 2])          # box 1 (IoU .81) and 3 (.9) suppressed
    np.testing.assert_allclose(iou, [1.0, 0.81, 0.0, 0.9])
