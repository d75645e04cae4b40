"""Batch invariance of the cpu conv (DESIGN.md "Scale-out": convkit.dask's batch chunks equal the
in-memory call bitwise; issue 15): image i's forward output and its grad_x have the same bits
whatever other images share its batch -- conv2d on x equals, element for element, the
concatenation of conv2d on slices of x along N -- on 1 and 2 threads, float32 and float64, for
every conv algorithm the plan can take here, the layer suite's shapes and random small shapes.

OpenBLAS rounds an output differently for another GEMM shape and another place in it: float32
runs on a fixed-order GEMM where the CPU has AVX2 + FMA (csrc/fgemm.h) or AVX-512 (csrc/sgemm.h),
and on BLAS (float64; float32 elsewhere, test_float32_on_blas_is_batch_invariant) the plans issue
the same GEMMs per image whatever the batch (conv_plan's docstring, "Batch invariance").  Each
algorithm case asserts the algorithm the plan gives (so the test cannot silently run another).
The plan tests check the pure plan on the three machines' caps: no split that shapes an image's
BLAS GEMMs follows the batch size.
"""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

OWN = ok and cc._OWN_SGEMM
THREADS = (1, 2)
DTYPES = (np.float32, np.float64)


def _slices(N):
    """Cuts of range(N) with single images, odd offsets and a long tail."""
    cuts = sorted({0, 1, min(3, N), min(4, N), N})
    return list(zip(cuts[:-1], cuts[1:]))


def _inputs(xs, ws, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return x, w, b


def _check(x, w, b, kw, what):
    """conv2d forward and grad_x of x equal those of its N-slices, on 1 and 2 threads."""
    try:
        for nt in THREADS:
            convkit.set_num_threads(nt)
            with convkit.use_backend("cpu"):
                y = convkit.conv2d_forward(x, w, b, **kw)
                gy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
                gx = convkit.conv2d_backward(gy, x, w, **kw)[0]
                for a, z in _slices(x.shape[0]):
                    np.testing.assert_array_equal(
                        convkit.conv2d_forward(x[a:z], w, b, **kw), y[a:z],
                        err_msg=f"{what}: forward of images {a}:{z}, {nt} threads")
                    np.testing.assert_array_equal(
                        convkit.conv2d_backward(gy[a:z], x[a:z], w, **kw)[0], gx[a:z],
                        err_msg=f"{what}: grad_x of images {a}:{z}, {nt} threads")
    finally:
        convkit.set_num_threads(None)


def _plan_of(x, w):
    return cc._plan(x, w, (1, 1), (0,) * 4, (1, 1), 1)[3]


def _algos(x, w, kw):
    st = kw.get("stride", 1)
    pad = kw.get("padding", 0)
    dil = kw.get("dilation", 1)
    _, _, _, plan = cc._plan(x, w, (st, st), (pad,) * 4, (dil, dil), kw.get("groups", 1))
    return plan.forward.algo, plan.grad_x.algo, plan.forward.params.get("tile")


# (id, x shape, w shape, conv kwargs, (forward algorithm, grad_x algorithm)) -- every algorithm
# the plan takes for a forward or a grad_x on a machine whose GEMMs run on BLAS
ALGOS = [
    ("im2col", (5, 6, 19, 17), (8, 6, 3, 3), dict(stride=2, padding=1), ("im2col", "im2col")),
    # 20 output rows: several row blocks per image
    ("im2col_rows", (3, 4, 40, 40), (8, 4, 3, 3), dict(stride=2, padding=1),
     ("im2col", "im2col")),
    ("im2col_dilated", (4, 5, 23, 21), (7, 5, 3, 3), dict(stride=2, padding=2, dilation=2),
     ("im2col", "im2col")),
    ("im2col_grouped", (4, 8, 22, 22), (12, 4, 3, 3), dict(stride=2, padding=1, groups=2),
     ("im2col", "im2col")),
    # 144 positions: several position blocks per image
    ("pointwise", (5, 16, 12, 12), (24, 16, 1, 1), {}, ("pointwise", "pointwise")),
    # 512 channels: two grad_x channel blocks per image (BLAS: 8 filters, csrc/smallk.h --
    # runs of positions that follow the batch and the team, no sum cut)
    ("pointwise_wide", (3, 512, 9, 9), (8, 512, 1, 1), {}, ("pointwise", "pointwise")),
    # 64 channels, 24 filters: csrc/smallk.h on BLAS too; 40 filters: OpenBLAS, per image
    ("pointwise_smallk", (5, 64, 12, 12), (24, 64, 1, 1), {}, ("pointwise", "pointwise")),
    ("pointwise_many_filters", (4, 64, 9, 9), (40, 64, 1, 1), {}, ("pointwise", "pointwise")),
    # 256 channels, 48 filters: BLAS cuts grad_x in two blocks of 128 (pointwise_grad_x_chans)
    ("pointwise_halves", (3, 256, 14, 14), (48, 256, 1, 1), {}, ("pointwise", "pointwise")),
    ("pointwise_grouped", (4, 32, 9, 9), (32, 8, 1, 1), dict(groups=4),
     ("pointwise", "pointwise")),
    # 512 filters, one 36-position run an image: float64 takes 2 filter blocks of 256
    # (conv_plan.pointwise_filter_blocks; OpenBLAS gives these blocks other bits than one GEMM)
    ("pointwise_fblocks", (5, 64, 6, 6), (512, 64, 1, 1), {}, ("pointwise", "pointwise")),
    # F(2x2): 10 tile rows of 9 tiles, two blocks per image
    ("winograd2", (5, 16, 20, 18), (16, 16, 3, 3), dict(padding=1), ("winograd", "winograd")),
    ("winograd4", (3, 64, 14, 14), (64, 64, 3, 3), dict(padding=1), ("winograd", "winograd")),
    ("batch", (7, 8, 6, 6), (12, 8, 3, 3), dict(padding=1), ("batch", "batch")),
    ("batch_strided", (7, 8, 8, 8), (16, 8, 3, 3), dict(stride=2, padding=1),
     ("batch", "batch")),
    ("dense", (9, 16, 2, 2), (16, 16, 3, 3), dict(padding=1), ("dense", "dense")),
    ("depthwise3x3", (5, 16, 12, 12), (16, 1, 3, 3), dict(padding=1, groups=16),
     ("depthwise3x3", "depthwise3x3")),
    ("depthwise", (5, 8, 12, 12), (16, 1, 3, 3), dict(padding=1, groups=8),
     ("depthwise", "depthwise")),
    ("wide", (5, 3, 24, 24), (8, 3, 5, 5), dict(padding=2), ("wide", "im2col")),
    # one input channel (lenet_c1): direct where conv_plan.direct_allowed (the half-rate rule,
    # AVX2 without the own GEMM, a full-rate AVX-512 CPU with AVX2) takes it (float32), else wide
    ("direct", (5, 1, 28, 28), (6, 1, 5, 5), dict(padding=2), ("direct", "im2col")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALGOS, ids=[c[0] for c in ALGOS])
def test_each_algorithm_is_batch_invariant(case, dtype):
    name, xs, ws, kw, want = case
    x, w, b = _inputs(xs, ws, dtype, len(name))
    fwd, gx, tile = _algos(x, w, kw)
    if name == "direct" and (dtype != np.float32 or not P.direct_allowed(cc._caps())):
        want = ("wide", "im2col")
    elif name == "direct":
        assert fwd == "direct"      # (beside the own GEMM too: the half-rate rule)
    if not OWN or dtype == np.float64:      # (the own GEMM's plans differ; see the plan tests)
        assert (fwd, gx) == want, (fwd, gx)
    if name == "pointwise_fblocks" and dtype == np.float64:     # (BLAS on every machine)
        assert _plan_of(x, w).forward.params.get("fblocks") == 2
        if name.startswith("winograd"):
            assert tile == int(name[-1]), tile
    _check(x, w, b, kw, name)


# the shapes of bench/batch_invariance.py (suite-like, one per algorithm of its finding):
# (N, C, H, W, F, K, stride, padding)
SUITE_LIKE = [(8, 3, 32, 32, 16, 3, 1, 1), (8, 16, 16, 16, 32, 3, 1, 1),
              (8, 64, 28, 28, 64, 3, 1, 1), (8, 6, 8, 8, 16, 5, 1, 2), (8, 1, 8, 8, 6, 5, 1, 2),
              (8, 32, 8, 8, 64, 3, 2, 1), (8, 64, 14, 14, 128, 1, 1, 0),
              (8, 16, 4, 4, 16, 3, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SUITE_LIKE, ids=lambda s: "x".join(map(str, s)))
def test_suite_like_shapes_are_batch_invariant(shape, dtype):
    N, C, H, W, F, K, s, p = shape
    x, w, b = _inputs((N, C, H, W), (F, C, K, K), dtype, sum(shape))
    _check(x, w, b, dict(stride=s, padding=p), str(shape))


def _random_cases(count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        k = int(rng.integers(1, 6))
        s, d = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        g = int(rng.choice([1, 1, 2, 3]))
        C, F = g * int(rng.integers(1, 9)), g * int(rng.integers(1, 7))
        H, W = int(rng.integers(1, 17)), int(rng.integers(1, 17))
        p = int(rng.integers(0, k))
        if (H + 2 * p - d * (k - 1) - 1) < 0 or (W + 2 * p - d * (k - 1) - 1) < 0:
            continue
        N = int(rng.integers(2, 9))
        cases.append(((N, C, H, W), (F, C // g, k, k), dict(stride=s, padding=p, dilation=d,
                                                              groups=g)))
    return cases


RANDOM = _random_cases(16, 15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", RANDOM, ids=[f"r{i}" for i in range(len(RANDOM))])
def test_random_small_shapes_are_batch_invariant(case, dtype):
    xs, ws, kw = case
    x, w, b = _inputs(xs, ws, dtype, sum(xs) + sum(ws))
    _check(x, w, b, kw, str(case))


def test_conv_transpose_forward_is_batch_invariant():
    """conv_transpose2d's forward is conv2d's grad_x step (the same plan)."""
    rng = np.random.default_rng(3)
    for dtype in DTYPES:
        x = rng.standard_normal((6, 64, 10, 10)).astype(dtype)
        w = (rng.standard_normal((64, 32, 4, 4)) / 32).astype(dtype)
        y = convkit.conv_transpose2d_forward(x, w, stride=2, padding=1)
        for a, z in _slices(6):
            np.testing.assert_array_equal(
                convkit.conv_transpose2d_forward(x[a:z], w, stride=2, padding=1), y[a:z])


def test_non_finite_image_leaves_the_others_bits():
    """An image with a NaN sends its own computation to im2col (the non-finite rule), not its
    batch's: the finite images keep the bits they get in a batch of finite images."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 16, 10, 10)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    assert _algos(x, w, dict(padding=1))[0] == "winograd"
    clean = convkit.conv2d_forward(x, w, padding=1)
    gy = rng.standard_normal(clean.shape).astype(np.float32)
    clean_gx = convkit.conv2d_backward(gy, x, w, padding=1)[0]
    x[2, 3, 4, 5] = np.nan
    gy_bad = gy.copy()
    gy_bad[2, 1, 2, 3] = np.inf
    y = convkit.conv2d_forward(x, w, padding=1)
    gx = convkit.conv2d_backward(gy_bad, x, w, padding=1)[0]
    keep = [0, 1, 3]
    np.testing.assert_array_equal(y[keep], clean[keep])
    np.testing.assert_array_equal(gx[keep], clean_gx[keep])
    # the bad image as torch would have it: NaN where its window reads the NaN, finite elsewhere
    assert np.isnan(y[2]).any() and np.isfinite(y[2]).any()
    np.testing.assert_array_equal(y[2:3], convkit.conv2d_forward(x[2:3], w, padding=1))


# ------------------------------------------------------------------------------ the pure plan
# the parameters of each pass that shape an image's GEMMs on BLAS (the batch grad_weight's
# chans_w / kimgs / nsplit sum over the batch and are no part of grad_x)
_KEYS = {"im2col": {"forward": ("rows",), "grad_x": ("chans_x", "rows_x")},
         "pointwise": {"forward": ("rows", "fblocks"), "grad_x": ("chans_x", "rows_x")},
         "winograd": {"forward": ("trows", "tile", "per_image"),
                      "grad_x": ("trows", "tile", "per_image")},
         "batch": {"forward": ("imgs",), "grad_x": ("imgs",)},
         "dense": {"forward": ("image_rows",), "grad_x": ("image_rows",)},
         "depthwise3x3": {"forward": ("level", "same"), "grad_x": ("level", "same")}}


def _plan_shapes():
    from convkit.benchmark.cases import CASES, ConvCase
    out = [((c.C, c.H, c.W), (c.F, c.C // c.groups, c.K, c.K), c.stride, c.pad, c.groups)
           for c in CASES if type(c) is ConvCase]
    out += [((C, H, W), (F, C, K, K), s, p, 1) for _, C, H, W, F, K, s, p in SUITE_LIKE]
    out += [(xs[1:], ws, st, p, g) for _, xs, ws, kw, _ in ALGOS
            for st, p, g in [(kw.get("stride", 1), kw.get("padding", 0), kw.get("groups", 1))]
            if "dilation" not in kw]
    return out


@pytest.mark.parametrize("own,fixed", [(True, True), (False, True), (False, False)],
                         ids=["own_gemm", "fgemm", "blas"])
def test_plan_does_not_follow_the_batch(own, fixed):
    """For the three machines: the algorithm of the forward and of grad_x (and Winograd's tile)
    is the same for a batch of 1 to 256 images, on 1, 2 and 16 threads; on BLAS (float64, and
    float32 without a fixed-order GEMM) so is every split that shapes an image's GEMMs.  (The
    own AVX-512 GEMM and csrc/fgemm.h sum each output in a fixed k order whatever the GEMM's
    shape: their blocks of images and rows may follow the batch.)"""
    caps = P.ConvCaps(own_sgemm=own, depthwise3x3_level=3 if own else 2, fixed_sgemm=fixed)
    for (C, H, W), ws, st, p, g in _plan_shapes():
        for dtype in DTYPES:
            for nt in (1, 2, 16):
                seen = set()
                for N in (1, 2, 3, 8, 64, 256):
                    s = P.ConvShape.of((N, C, H, W), ws, (st, st), (p,) * 4, (1, 1), g)
                    plan = P.plan_conv(s, dtype, nt, caps, 256 * 2**20)
                    cut = []
                    for label, step in (("forward", plan.forward), ("grad_x", plan.grad_x)):
                        keys = () if fixed and dtype == np.float32 else \
                            _KEYS.get(step.algo, {}).get(label, ())
                        keys += ("tile",) if step.algo == "winograd" else ()
                        cut.append((step.algo, tuple(step.params.get(k) for k in keys)))
                    seen.add(tuple(cut))
                assert len(seen) == 1, ((C, H, W), ws, st, p, g, np.dtype(dtype).name, nt,
                                        seen)


def test_blas_splits_keep_parallelism_for_one_large_image():
    """One big image still makes several tasks on BLAS (the per-image split is the N = 1 plan
    of before): im2col rows, pointwise positions, grad_x channel blocks, Winograd tile rows."""
    caps = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)

    def plan(xs, ws, st, p):
        s = P.ConvShape.of(xs, ws, (st, st), (p,) * 4, (1, 1), 1)
        return P.plan_conv(s, np.float32, 16, caps, 256 * 2**20)

    stem = plan((1, 3, 224, 224), (64, 3, 7, 7), 2, 3)
    assert stem.forward.algo == "im2col" and -(-112 // stem.forward.params["rows"]) >= 8
    rpn1 = plan((1, 512, 38, 50), (18, 512, 1, 1), 1, 0)
    assert rpn1.forward.algo == "pointwise" and -(-1900 // rpn1.forward.params["rows"]) >= 16
    # (grad_x with 18 filters: csrc/smallk.h, runs of positions -- no sum cut)
    gx = rpn1.grad_x.params
    assert gx["smallk_x"] and -(-512 // gx["chans_x"]) * -(-1900 // gx["pos_x"]) >= 8
    rpn3 = plan((1, 512, 38, 50), (512, 512, 3, 3), 1, 1)
    assert rpn3.forward.algo == "winograd"
    assert -(-10 // rpn3.forward.params["trows"]) >= 2      # 10 rows of 4x4 tiles


def test_the_other_predict_ops_are_batch_invariant():
    """predict's other cpu ops, image by image: batch norm in eval mode, the pools (values and
    grad_x), the adaptive pools, and Linear in eval mode (a GEMM over the batch gave other
    bits for a slice before it multiplied row by row; training keeps the GEMM, and the test
    checks that the eval forward is the GEMM's result within rounding)."""
    from convkit.nn import Linear
    rng = np.random.default_rng(5)
    cuts = _slices(9)

    def same(what, fn, *arrays):
        whole = fn(*arrays)
        parts = np.concatenate([fn(*(a[i:j] for a in arrays)) for i, j in cuts])
        np.testing.assert_array_equal(parts, whole, err_msg=what)

    try:
        for nt in THREADS:
            convkit.set_num_threads(nt)
            for dtype in DTYPES:
                x = rng.standard_normal((9, 32, 23, 19)).astype(dtype)
                gy = rng.standard_normal((9, 32, 12, 10)).astype(dtype)
                w, b = rng.standard_normal(32).astype(dtype), rng.standard_normal(32).astype(dtype)
                rm, rv = rng.standard_normal(32).astype(dtype), (1 + rng.random(32)).astype(dtype)
                with convkit.use_backend("cpu"):
                    same("bn eval", lambda a: convkit.batch_norm_forward(
                        a, w, b, rm.copy(), rv.copy(), False)[0], x)
                    same("max pool", lambda a: convkit.max_pool2d_forward(a, 3, 2, 1)[0], x)
                    same("avg pool", lambda a: convkit.avg_pool2d_forward(a, 3, 2, 1), x)
                    same("adaptive avg", lambda a: convkit.adaptive_avg_pool2d_forward(
                        a, (5, 3)), x)
                    same("adaptive max", lambda a: convkit.adaptive_max_pool2d_forward(
                        a, (5, 3))[0], x)
                    same("max pool grad_x", lambda g, a: convkit.max_pool2d_backward(
                        g, convkit.max_pool2d_forward(a, 3, 2, 1)[1], a.shape), gy, x)
                    same("avg pool grad_x", lambda g, a: convkit.avg_pool2d_backward(
                        g, a.shape, 3, 2, 1), gy, x)
                lin = Linear(120, 84, dtype=dtype, seed=6)
                xl = rng.standard_normal((9, 120)).astype(dtype)

                lin.eval()
                same("linear eval forward", lin.forward, xl)
                tol = 1e-5 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(lin.forward(xl), xl @ lin.params["weight"].T
                                           + lin.params["bias"], rtol=tol, atol=tol)
    finally:
        convkit.set_num_threads(None)



def test_float32_on_blas_is_batch_invariant():
    """float32 on BLAS as on a CPU without AVX2 (CONVKIT_DISABLE_FGEMM=1, in a fresh process: the
    switch is read once): the one-image-per-GEMM plans keep every algorithm batch invariant."""
    if OWN:
        pytest.skip("float32 runs on the own AVX-512 GEMM here")
    import os
    import subprocess
    import sys
    code = f"""
import sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import numpy as np
import test_cpu_batch_invariance as t
assert not t.cc._FIXED_SGEMM and not t.cc._caps().fixed_sgemm
for name, xs, ws, kw, want in t.ALGOS:
    x, w, b = t._inputs(xs, ws, np.float32, len(name))
    fwd, gx, tile = t._algos(x, w, kw)
    assert (fwd, gx) == want, (name, fwd, gx)
    step = t.cc._plan(x, w, (kw.get("stride", 1),) * 2, (kw.get("padding", 0),) * 4,
                      (kw.get("dilation", 1),) * 2, kw.get("groups", 1))[3].forward
    p = step.params
    assert p.get("per_image", True) and p.get("imgs", 1) == 1 and p.get("image_rows", 1) == 1, p
    t._check(x, w, b, kw, name)
print("ok", len(t.ALGOS))
"""
    env = dict(os.environ, CONVKIT_DISABLE_FGEMM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", str(len(ALGOS))], out.stdout
