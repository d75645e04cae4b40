"""The cpu backend's float32 adaptive max kernels against torch and against each other.

csrc/adaptive_pool.h takes a bin of <= 64 values -- a contiguous run (whole rows, the 1x1
head's plane) or <= 8 rows of <= 8 columns -- in one load of <= 8 chunks of 8 lanes
(ck_bin_max_chunks8_f), other bins in the two passes of ck_bin_max_f.  Both must pick the
element torch's rule picks (first maximum in row-major order; a NaN is the maximum and the
last NaN wins; a bin of -inf reports its first element), so the two paths give the same bits
on every chunk count, lane count and position; the thread count changes nothing.
"""
from __future__ import annotations

import numpy as np
import pytest

import convkit
from conftest import BACKEND_PARAMS

pytestmark = pytest.mark.skipif("cpu" not in {p.id for p in BACKEND_PARAMS if not p.marks},
                                reason="the cpu backend does not load here")

VALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0], np.float32)


def _modules():
    from convkit.cpu import _adaptive_pool, adaptive_pool
    return _adaptive_pool, adaptive_pool


def _fwd(x, size):
    with convkit.use_backend("cpu"):
        return convkit.adaptive_max_pool2d_forward(x, size)


def _bwd(gy, idx, shape):
    with convkit.use_backend("cpu"):
        return convkit.adaptive_max_pool2d_backward(gy, idx, shape)


def _torch_max(torch, x, size):
    y, idx = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x.copy()), size,
                                                     return_indices=True)
    return y.numpy(), idx.numpy()


def _same(a, b, msg):
    np.testing.assert_array_equal(np.asarray(a).view(np.int32), np.asarray(b).view(np.int32),
                                  err_msg=msg)


def _both_paths(x, size):
    """(y, idx) of the chunk path and of the ck_bin_max_f path on x (N, C, H, W) float32."""
    AP, ap = _modules()
    N, C, H, W = x.shape
    oh, ow = size
    hb, _, hl, wb, _, wl, _ = ap._cached_tables(H, W, oh, ow, np.dtype(np.float32))
    out = []
    for chunks in (True, False):
        y = np.empty((N * C, oh, ow), np.float32)
        idx = np.empty((N * C, oh, ow), np.int64)
        AP.adaptive_max_forward(x.reshape(N * C, H, W), hb, hl, wb, wl, y, idx, 1, chunks)
        out.append((y.reshape(N, C, oh, ow), idx.reshape(N, C, oh, ow)))
    return out


def _planted(rng, shape):
    """Planes of a few values (NaN, +-inf, +-0, ties) in several mixes, one all -inf plane and
    one all NaN plane."""
    x = np.empty(shape, np.float32)
    mixes = (np.ones(len(VALS)), np.array([0.02, 0, 0, 5, 5, 1, 1, 0.5]),
             np.array([0, 0.2, 3, 0, 0, 0, 0, 0]), np.array([0, 0, 1, 0, 0, 0, 0, 0.01]))
    for c in range(shape[1]):
        w = mixes[c % len(mixes)]
        x[:, c] = VALS[rng.choice(len(VALS), size=(shape[0],) + shape[2:], p=w / w.sum())]
    x[0, 0] = -np.inf
    if shape[0] > 1:
        x[1, 0] = np.nan
    return x


def test_every_bin_shape_up_to_8x8_two_paths_and_torch(torch):
    """Bins of every rows x cols in 1..8 x 1..8 (tiled, so every bin has that shape) and odd,
    overlapping ones: the chunk path equals ck_bin_max_f bit for bit and torch's values and
    indices."""
    rng = np.random.default_rng(0)
    for rows in range(1, 9):
        for cols in range(1, 9):
            for ob, oc in ((3, 2), (2, 5)):
                x = _planted(rng, (2, 4, rows * ob, cols * oc))
                (y, idx), (y0, idx0) = _both_paths(x, (ob, oc))
                msg = f"bins {rows} x {cols}"
                _same(y, y0, msg)
                np.testing.assert_array_equal(idx, idx0, err_msg=msg)
                ty, tidx = _torch_max(torch, x, (ob, oc))
                _same(y, ty, msg)
                np.testing.assert_array_equal(idx, tidx, err_msg=msg)
    for shape, size in (((2, 4, 13, 11), (3, 4)), ((2, 4, 9, 20), (2, 3)), ((2, 4, 7, 7), 7),
                        ((2, 4, 56, 56), (7, 7)), ((2, 4, 30, 17), (4, 2))):
        size = size if isinstance(size, tuple) else (size, size)
        x = _planted(rng, shape)
        (y, idx), (y0, idx0) = _both_paths(x, size)
        _same(y, y0, str(shape))
        np.testing.assert_array_equal(idx, idx0, err_msg=str(shape))
        ty, tidx = _torch_max(torch, x, size)
        np.testing.assert_array_equal(idx, tidx, err_msg=str(shape))


def test_runs_of_every_length_two_paths_and_torch(torch):
    """Whole-row bins (contiguous runs) of 1..70 values -- 1..8 chunks, every last-chunk lane
    count, and past 64 the two-pass kernel -- by the plane path and by the 1x1 path (64
    planes a task; 130 planes leave a short last task), against each other and torch."""
    AP, _ = _modules()
    rng = np.random.default_rng(1)
    for n in range(1, 71):
        x = _planted(rng, (2, 65, 1, n))
        (y, idx), (y0, idx0) = _both_paths(x, (1, 1))
        for chunks in (True, False):
            g = np.empty(130, np.float32)
            gi = np.empty(130, np.int64)
            AP.global_max_forward(x.reshape(130, n), g, gi, 1, chunks)
            _same(g, y0.reshape(130), f"n={n} global chunks={chunks}")
            np.testing.assert_array_equal(gi, idx0.reshape(130), err_msg=f"n={n}")
        _same(y, y0, f"n={n}")
        np.testing.assert_array_equal(idx, idx0, err_msg=f"n={n}")
        ty, tidx = _torch_max(torch, x, 1)
        _same(y, ty, f"n={n}")
        np.testing.assert_array_equal(idx, tidx, err_msg=f"n={n}")


def test_one_special_value_at_every_position(torch):
    """A plane of 49 (the head) and an 8 x 8 bin with one maximum, one NaN, two NaNs, or a
    tie at each position: every chunk and lane of the packed compare bits is read."""
    for shape, size in (((1, 1, 7, 7), 1), ((1, 1, 8, 8), 1), ((1, 1, 16, 16), 2),
                        ((1, 1, 8, 64), (1, 1))):
        n = shape[2] * shape[3]
        base = np.random.default_rng(2).uniform(-1, 0, n).astype(np.float32)
        xs = []
        for i in range(n):
            for v, extra in ((5.0, None), (np.nan, None), (np.nan, (i * 7) % n),
                             (5.0, (i * 5) % n)):
                x = base.copy()
                x[i] = v
                if extra is not None:
                    x[extra] = v
                xs.append(x.reshape(shape[2:]))
        x = np.stack(xs)[:, None]
        y, idx = _fwd(x, size)
        ty, tidx = _torch_max(torch, x, size)
        _same(y, ty, str(shape))
        np.testing.assert_array_equal(idx, tidx, err_msg=str(shape))


def test_inf_mixtures_and_signed_zeros(torch):
    """+inf and -inf in one lane, -0 before +0: the NaN test must not fire on infinities alone
    (or, if a path did, still pick the rule's element) and the first zero keeps its sign."""
    x = np.full((3, 2, 8, 8), -np.inf, np.float32)
    x[0, 0, 3, 2] = np.inf
    x[0, 1, ::2] = np.inf
    x[1, 0] = 0.0
    x[1, 0, 2, 5] = -0.0
    x[1, 0, 0, 0] = -1.0
    x[1, 1] = -0.0
    x[1, 1, 7, 7] = 0.0
    x[2, 0, 1:, :] = np.finfo(np.float32).max
    for size in ((1, 1), (2, 2), (1, 8)):
        y, idx = _fwd(x, size)
        ty, tidx = _torch_max(torch, x, size)
        _same(y, ty, str(size))
        np.testing.assert_array_equal(idx, tidx, err_msg=str(size))


@pytest.mark.parametrize("shape,size", [((8, 512, 7, 7), 1), ((8, 64, 56, 56), 7),
                                        ((3, 37, 13, 10), (4, 3))])
def test_thread_counts_same_bits(shape, size):
    x = _planted(np.random.default_rng(3), shape)
    gy = np.random.default_rng(4).standard_normal(
        shape[:2] + ((size, size) if isinstance(size, int) else size)).astype(np.float32)
    old = convkit.get_num_threads()
    out = []
    try:
        for t in (1, 2, 8, 16):
            convkit.set_num_threads(t)
            y, idx = _fwd(x, size)
            gx = _bwd(gy, idx, x.shape)
            out.append((y, idx, gx))
    finally:
        convkit.set_num_threads(old)
    for t, (y, idx, gx) in zip((2, 8, 16), out[1:]):
        _same(y, out[0][0], f"{t} threads")
        np.testing.assert_array_equal(idx, out[0][1])
        _same(gx, out[0][2], f"{t} threads")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,size", [((4, 64, 7, 7), 1), ((2, 8, 56, 56), 7),
                                        ((2, 5, 13, 10), (4, 3)), ((3, 4, 5, 9), (7, 11)),
                                        ((1, 3, 6, 6), (6, 6))],
                         ids=["head", "56to7", "overlap", "more_bins", "identity"])
def test_backward_vs_torch(shape, size, dtype, torch):
    """The plane-block backward against torch's autograd (float64 oracle), tiled and
    overlapping bins (two bins sharing a maximum add), signed-zero gradients as torch's
    0 + g."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0] = 1.0                                   # ties: bins that overlap share a maximum
    y, idx = _fwd(x, size)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gy[0, 1] = -0.0
    gx = _bwd(gy, idx, x.shape)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt, it = torch.nn.functional.adaptive_max_pool2d(xt, size, return_indices=True)
    np.testing.assert_array_equal(idx, it.numpy())
    yt.backward(torch.from_numpy(gy))
    np.testing.assert_array_equal(gx, xt.grad.numpy())
    np.testing.assert_array_equal(np.signbit(gx), np.signbit(xt.grad.numpy()))


def test_backward_blocks_equal_streamed_kernel():
    """adaptive_max_backward (plain stores, blocks of planes) and _pool's streamed kernel, used
    past adaptive_pool._STREAM_ABOVE, give the same bits on every block layout."""
    AP, _ = _modules()
    from convkit.cpu import _pool
    rng = np.random.default_rng(6)
    for P, HW, HoWo in ((4096, 49, 1), (512, 3136, 49), (37, 130, 12), (5, 4, 9)):
        gy = rng.standard_normal((P, HoWo)).astype(np.float32)
        idx = rng.integers(0, HW, (P, HoWo))
        for t in (1, 2, 3):
            a = np.full((P, HW), np.nan, np.float32)
            b = np.full((P, HW), np.nan, np.float32)
            assert AP.adaptive_max_backward(gy, idx, a, t) == 0
            assert _pool.max_pool2d_backward(gy, idx, b, t) == 0
            _same(a, b, f"P={P} HW={HW} threads={t}")


@pytest.mark.parametrize("shape,size", [((2, 70, 7, 7), 1), ((2, 3, 16, 16), 4)])
def test_backward_bad_indices_raise(shape, size):
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    y, idx = _fwd(x, size)
    gy = np.ones_like(y)
    HW = shape[2] * shape[3]
    for bad in (-1, HW, 2 ** 40):
        b = idx.copy()
        b[1, 2, 0, 0] = bad
        with pytest.raises(ValueError, match=rf"indices must lie in \[0, {HW}\)"):
            _bwd(gy, b, x.shape)
