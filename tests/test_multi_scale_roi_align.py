"""multi_scale_roi_align / multi_scale_roi_align_backward (torchvision's MultiScaleRoIAlign)
against a float64 loop oracle built from the FPN level rule (level per RoI by a loop over the
formula, then the existing roi_align on that level), the level mapping's edge cases, empty
inputs, the error rules and the adjoint identity, on every backend."""
import math

import numpy as np
import pytest

import convkit
from convkit import functional as F
from helpers import run as _run

DTYPES = [np.float32, np.float64]
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]          # FPN P2..P5: k_min = 2, k_max = 5
IMG = 512


def pyramid(dtype, N=2, C=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((N, C, int(IMG * s), int(IMG * s))).astype(dtype)
            for s in SCALES]


def random_rois(K, N=2, seed=1):
    """RoIs whose sizes span all levels: sqrt(area) from ~2 to ~700 pixels."""
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(2), np.log(700), (K, 1)))
    wh = side * np.exp(rng.uniform(-0.7, 0.7, (K, 2)))
    xy = rng.uniform(-20, IMG - 20, (K, 2))
    bi = rng.integers(0, N, (K, 1))
    return np.concatenate([bi, xy, xy + wh], axis=1)


def oracle_level(box, scales=SCALES, canonical_scale=224, canonical_level=4):
    """The FPN paper's eqn. 1 as torchvision's LevelMapper applies it, one box at a time."""
    k_min = -round(math.log2(scales[0]))
    k_max = -round(math.log2(scales[-1]))
    x1, y1, x2, y2 = (float(v) for v in box)
    area = (x2 - x1) * (y2 - y1)
    if not area > 0:                      # zero, negative or NaN area: the finest level
        return 0
    t = canonical_level + math.log2(math.sqrt(area) / canonical_scale) + 1e-6
    k = k_max if t >= k_max + 1 else math.floor(t)         # (t = inf for an overflowing area)
    return min(max(k, k_min), k_max) - k_min


def oracle(feats, rois, output_size, scales=SCALES, sampling_ratio=-1, **kw):
    """Loop: each RoI's level from the rule, then the numpy reference roi_align there."""
    K, C = rois.shape[0], feats[0].shape[1]
    oh, ow = (output_size, output_size) if np.isscalar(output_size) else output_size
    y = np.zeros((K, C, oh, ow))
    levels = np.zeros(K, np.int64)
    for i in range(K):
        lv = oracle_level(rois[i, 1:], scales, **kw)
        levels[i] = lv
        y[i] = F.roi_align_forward(feats[lv].astype(np.float64), rois[i:i + 1].astype(np.float64),
                                   output_size, scales[lv], sampling_ratio, False,
                                   backend="numpy")[0]
    return y, levels


def run(backend, fn, *args, **kwargs):
    """helpers.run, with a list result (the backward's) as a tuple, which it converts."""
    def call(*a, **k):
        out = fn(*a, **k)
        return tuple(out) if isinstance(out, list) else out
    return _run(backend, call, *args, **kwargs)


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_matches_loop_oracle(backend, dtype, sampling_ratio):
    feats = pyramid(dtype)
    rois = random_rois(60).astype(dtype)
    y, levels = run(backend, F.multi_scale_roi_align, feats, rois, (3, 4), SCALES,
                    sampling_ratio)
    want_y, want_levels = oracle(feats, rois, (3, 4), sampling_ratio=sampling_ratio)
    assert levels.dtype == np.int64 and y.dtype == dtype and y.shape == (60, 3, 3, 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}           # every level used
    np.testing.assert_array_equal(levels, want_levels)
    np.testing.assert_allclose(y, want_y, **tol(dtype))


def test_dict_features_and_roi_formats(backend):
    """A dict (torchvision's featmap_names, in order) gives the list's result; a list of
    per-image (Ki, 4) boxes and, for N = 1, (K, 4) rois are accepted as by roi_align."""
    feats = pyramid(np.float64)
    rois = random_rois(20)
    want = run(backend, F.multi_scale_roi_align, feats, rois, 2, SCALES)
    with convkit.use_backend(backend) as be:
        d = {name: be.asarray(f) for name, f in zip(["p2", "p3", "p4", "p5"], feats)}
        y, levels = F.multi_scale_roi_align(d, be.asarray(rois), 2, SCALES)
        np.testing.assert_array_equal(be.to_numpy(y), want[0])
        np.testing.assert_array_equal(be.to_numpy(levels), want[1])
    order = np.argsort(rois[:, 0], kind="stable")
    per_image = [rois[rois[:, 0] == n, 1:] for n in range(2)]
    y, levels = run(backend, F.multi_scale_roi_align, feats, per_image, 2, SCALES)
    np.testing.assert_array_equal(y, want[0][order])
    np.testing.assert_array_equal(levels, want[1][order])
    one = [f[:1] for f in feats]
    y, levels = run(backend, F.multi_scale_roi_align, one, rois[:, 1:], 2, SCALES)
    want_y, want_levels = oracle(one, np.concatenate([np.zeros((20, 1)), rois[:, 1:]], 1), 2)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(levels, want_levels)


def test_single_level_is_roi_align(backend):
    feats = pyramid(np.float64)[1:2]
    rois = random_rois(15)
    y, levels = run(backend, F.multi_scale_roi_align, feats, rois, 3, [1 / 8], 2)
    np.testing.assert_array_equal(levels, np.zeros(15, np.int64))
    np.testing.assert_array_equal(y, run(backend, F.roi_align_forward, feats[0], rois, 3,
                                         1 / 8, 2))


def box_of_side(s, x=10.0, y=10.0):
    return [0, x, y, x + s, y + s]


@pytest.mark.parametrize("dtype", DTYPES)
def test_level_boundaries(backend, dtype):
    """sqrt(area) = 224 * 2**j lands on level 4 + j; just below a boundary it is the level
    under it, but within the 1e-6 of torchvision's eps (in log2 units) it goes up."""
    feats = pyramid(dtype)
    sides = [112.0, 224.0, 448.0, 223.0, 447.0, 111.5, 160.0]
    want = [1, 2, 3, 1, 2, 0, 1]                      # levels 3, 4, 5, 3, 4, 2, 3 minus k_min
    if dtype == np.float64:
        sides += [224.0 * 2 ** -1e-7, 224.0 * 2 ** -3e-6]   # inside / outside the eps
        want += [2, 1]
    rois = np.array([box_of_side(s) for s in sides], dtype)
    _, levels = run(backend, F.multi_scale_roi_align, feats, rois, 2, SCALES)
    np.testing.assert_array_equal(levels, want)
    np.testing.assert_array_equal(levels, [oracle_level(r[1:]) for r in rois])


def test_level_clamping_and_degenerate_boxes(backend):
    feats = pyramid(np.float64)
    rois = np.array([box_of_side(0.5),                 # tiny: level 0 of the rule -> k_min
                     box_of_side(1e4),                 # huge -> k_max
                     [0, 5, 5, 5, 40],                 # zero area -> finest
                     [1, 30, 30, 10, 50],              # negative area (inverted) -> finest
                     [1, 5, 5, 5, 5],                  # a point
                     [0, 0, 0, 1e200, 1e200]])         # area overflows to inf -> coarsest
    y, levels = run(backend, F.multi_scale_roi_align, feats, rois, 2, SCALES)
    np.testing.assert_array_equal(levels, [0, 3, 0, 0, 0, 3])
    want_y, want_levels = oracle(feats, rois, 2)
    np.testing.assert_array_equal(levels, want_levels)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)


def test_canonical_scale_and_level(backend):
    feats = pyramid(np.float64)
    rois = random_rois(40, seed=3)
    for cs, cl in ((224, 4), (112, 3), (56, 4), (300.0, 5)):
        y, levels = run(backend, F.multi_scale_roi_align, feats, rois, 2, SCALES,
                        canonical_scale=cs, canonical_level=cl)
        want_y, want_levels = oracle(feats, rois, 2, canonical_scale=cs, canonical_level=cl)
        np.testing.assert_array_equal(levels, want_levels)
        np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)


def test_other_level_ranges(backend):
    """k_min comes from the first scale: maps at 1/1, 1/2 (levels 0, 1) and at 1/8..1/64."""
    rng = np.random.default_rng(4)
    rois = random_rois(30, seed=5)
    for scales in ([1.0, 0.5], [1 / 8, 1 / 16, 1 / 32, 1 / 64], [2.0, 1.0, 0.5]):
        feats = [rng.standard_normal((2, 2, max(int(IMG * s) // 8, 1), max(int(IMG * s) // 8, 1)))
                 for s in scales]
        y, levels = run(backend, F.multi_scale_roi_align, feats, rois, 2, scales)
        want_y, want_levels = oracle(feats, rois, 2, scales)
        np.testing.assert_array_equal(levels, want_levels)
        np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)


def test_non_finite_roi_gives_zeros(backend):
    feats = pyramid(np.float64)
    rois = random_rois(6)
    rois[2, 3] = np.nan
    rois[4, 1] = np.inf
    y, levels = run(backend, F.multi_scale_roi_align, feats, rois, 2, SCALES)
    assert np.all(y[[2, 4]] == 0) and levels[2] == 0 and levels[4] == 0
    ok = [0, 1, 3, 5]
    want_y, want_levels = oracle(feats, rois[ok], 2)
    np.testing.assert_allclose(y[ok], want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(levels[ok], want_levels)
    g = run(backend, F.multi_scale_roi_align_backward, np.ones_like(y), rois, levels,
            [f.shape for f in feats], 2, SCALES)
    g_ok = run(backend, F.multi_scale_roi_align_backward, np.ones_like(y[ok]), rois[ok],
               levels[ok], [f.shape for f in feats], 2, SCALES)
    for a, b in zip(g, g_ok):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_rois(backend, dtype):
    feats = pyramid(dtype)
    y, levels = run(backend, F.multi_scale_roi_align, feats, np.zeros((0, 5), dtype), (2, 3),
                    SCALES)
    assert y.shape == (0, 3, 2, 3) and y.dtype == dtype
    assert levels.shape == (0,) and levels.dtype == np.int64
    grads = run(backend, F.multi_scale_roi_align_backward, np.zeros((0, 3, 2, 3), dtype),
                np.zeros((0, 5), dtype), np.zeros(0, np.int64), [f.shape for f in feats],
                (2, 3), SCALES)
    assert len(grads) == 4
    for g, f in zip(grads, feats):
        assert g.shape == f.shape and g.dtype == dtype and not g.any()


# ------------------------------------------------------------------------------ backward
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_per_roi_loop(backend, dtype):
    feats = pyramid(dtype)
    rois = random_rois(30, seed=6).astype(dtype)
    y, levels = run(backend, F.multi_scale_roi_align, feats, rois, 3, SCALES, 2)
    gy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    grads = run(backend, F.multi_scale_roi_align_backward, gy, rois, levels,
                [f.shape for f in feats], 3, SCALES, 2)
    want = [np.zeros(f.shape) for f in feats]
    for i in range(len(rois)):
        lv = oracle_level(rois[i, 1:])
        want[lv] += F.roi_align_backward(gy[i:i + 1].astype(np.float64),
                                         rois[i:i + 1].astype(np.float64), feats[lv].shape, 3,
                                         SCALES[lv], 2, False, backend="numpy")
    for g, w in zip(grads, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **tol(dtype))


def test_backward_adjoint(backend):
    """The op is linear in the features: <grad_y, y(x)> = sum over maps of <grad_x_l, x_l>."""
    feats = pyramid(np.float64, seed=8)
    rois = random_rois(40, seed=9)
    for sr in (-1, 3):
        y, levels = run(backend, F.multi_scale_roi_align, feats, rois, (2, 5), SCALES, sr)
        gy = np.random.default_rng(10).standard_normal(y.shape)
        grads = run(backend, F.multi_scale_roi_align_backward, gy, rois, levels,
                    {k: f.shape for k, f in zip("abcd", feats)}, (2, 5), SCALES, sr)
        lhs = np.vdot(gy, y)
        rhs = sum(np.vdot(g, f) for g, f in zip(grads, feats))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_cpu_thread_count_bit_identity():
    feats = pyramid(np.float32, N=2, C=16)
    rois = random_rois(80, seed=11).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        y, levels = run("cpu", F.multi_scale_roi_align, feats, rois, 4, SCALES)
        grads = run("cpu", F.multi_scale_roi_align_backward, y, rois, levels,
                    [f.shape for f in feats], 4, SCALES)
        outs.append((y, grads))
    for y, grads in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][0])
        for g, g0 in zip(grads, outs[0][1]):
            np.testing.assert_array_equal(g, g0)


# -------------------------------------------------------------------------------- errors
def test_forward_errors():
    op = "multi_scale_roi_align"
    feats = pyramid(np.float64)
    rois = random_rois(4)
    f = F.multi_scale_roi_align
    with pytest.raises(ValueError, match=rf"{op}: spatial_scales must have one scale per feature "
                                         r"map \(4\), got 3"):
        f(feats, rois, 2, SCALES[:3])
    with pytest.raises(ValueError, match=rf"{op}: spatial_scales must have one scale"):
        f(feats[:2], rois, 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: spatial_scales\[1\] = 0.1 is not a power of 2"):
        f(feats[:2], rois, 2, [0.25, 0.1])
    with pytest.raises(ValueError, match=rf"{op}: spatial_scales must halve"):
        f(feats[:2], rois, 2, [0.25, 0.0625])
    with pytest.raises(ValueError, match=rf"{op}: spatial_scales must halve"):
        f(feats[:2], rois, 2, [0.125, 0.25])           # coarsest first
    with pytest.raises(ValueError, match=rf"{op}: spatial_scales must be > 0"):
        f(feats[:1], rois, 2, [0.0])
    with pytest.raises(TypeError, match=rf"{op}: spatial_scales must be a sequence"):
        f(feats[:1], rois, 2, 0.25)
    with pytest.raises(TypeError, match=rf"{op}: features\[2\] must be float32 or float64"):
        f([feats[0], feats[1], feats[2].astype(np.int32)], rois, 2, SCALES[:3])
    with pytest.raises(TypeError, match=rf"{op}: all arrays must share one dtype; features\[0\] "
                                        r"is float64 but features\[1\] is float32"):
        f([feats[0], feats[1].astype(np.float32)], rois, 2, SCALES[:2])
    with pytest.raises(TypeError, match=rf"{op}: all arrays must share one dtype; features is "
                                        r"float64 but rois is float32"):
        f(feats, rois.astype(np.float32), 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: every feature map must have the same \(N, C\); "
                                         r"features\[0\] has \(2, 3\) but features\[1\] has "
                                         r"\(1, 3\)"):
        f([feats[0], feats[1][:1]], rois, 2, SCALES[:2])
    with pytest.raises(ValueError, match=r"features\['b'\] has \(2, 2\)"):
        f({"a": feats[0], "b": feats[1][:, :2]}, rois, 2, SCALES[:2])
    with pytest.raises(ValueError, match=rf"{op}: features\[1\] must be 4-D"):
        f([feats[0], feats[1][0]], rois, 2, SCALES[:2])
    with pytest.raises(ValueError, match=rf"{op}: features must hold at least one"):
        f([], rois, 2, [])
    with pytest.raises(TypeError, match=rf"{op}: features must be a list or a dict"):
        f(feats[0], rois, 2, SCALES[:1])
    with pytest.raises(ValueError, match=rf"{op}: output_size must be positive"):
        f(feats, rois, 0, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: canonical_scale must be > 0"):
        f(feats, rois, 2, SCALES, canonical_scale=0)
    with pytest.raises(TypeError, match=rf"{op}: canonical_level must be an int"):
        f(feats, rois, 2, SCALES, canonical_level=4.5)
    bad = rois.copy()
    bad[3, 0] = 2
    with pytest.raises(ValueError, match=rf"{op}: rois\[3, 0\] = 2.0 is not an integer batch "
                                         r"index in \[0, 2\)"):
        f(feats, bad, 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: rois must have shape \(K, 5\)"):
        f(feats, rois[:, :3], 2, SCALES)


def test_backward_errors():
    op = "multi_scale_roi_align_backward"
    feats = pyramid(np.float64)
    shapes = [x.shape for x in feats]
    rois = random_rois(5)
    y, levels = F.multi_scale_roi_align(feats, rois, 2, SCALES)
    b = F.multi_scale_roi_align_backward
    with pytest.raises(ValueError, match=rf"{op}: levels must lie in \[0, 4\)"):
        b(y, rois, levels + 4, shapes, 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: levels must lie in \[0, 4\)"):
        b(y, rois, levels - 1, shapes, 2, SCALES)
    with pytest.raises(TypeError, match=rf"{op}: levels must be an integer"):
        b(y, rois, levels.astype(np.float64), shapes, 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: levels must have shape \(5,\)"):
        b(y, rois, levels[:4], shapes, 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: grad_y must have shape \(5, 3, 2, 2\)"):
        b(y[:, :2], rois, levels, shapes, 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: grad_y must have shape \(5, 3, 3, 3\)"):
        b(y, rois, levels, shapes, 3, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: spatial_scales must have one scale"):
        b(y, rois, levels, shapes[:3], 2, SCALES)
    with pytest.raises(ValueError, match=rf"{op}: every feature map must have the same \(N, C\)"):
        b(y, rois, levels, [shapes[0], (2, 4, 8, 8)], 2, SCALES[:2])
    with pytest.raises(ValueError, match=rf"{op}: feature_shapes\[1\] must be 4 non-negative"):
        b(y, rois, levels, [shapes[0], (2, 3, 8)], 2, SCALES[:2])
    with pytest.raises(TypeError, match=rf"{op}: all arrays must share one dtype; grad_y is "
                                        r"float32 but rois is float64"):
        b(y.astype(np.float32), rois, levels, shapes, 2, SCALES)
    with pytest.raises(TypeError, match=rf"{op}: feature_shapes must be a list"):
        b(y, rois, levels, shapes[0], 2, SCALES)


def test_exported():
    for name in ("multi_scale_roi_align", "multi_scale_roi_align_backward"):
        assert name in F.__all__ and name in convkit.__all__
        assert getattr(convkit, name) is getattr(F, name)
