"""Every cpu conv algorithm (forward, grad_x, grad_weight), the pools, batch norm and the RoI ops
give the same bits on 1, 2, 8 and 16 threads (DESIGN.md "Threads and embedding"; issue 16's "many
cores"): the task splits that 8 and 16 threads take -- more tasks than this 2-core machine's,
oversubscribed here -- must not change any sum.  The shapes give each algorithm more than 8
tasks where it can make them (so 8 and 16 threads share them out differently) and reach the
paths of csrc/fgemm.h the plan can pick: a narrow last panel (1 to 4 columns), the batch
grad_weight's GEMM in both orientations, F(4x4)'s two-region split (tile rows x filter blocks
after a shared input transform) against its one-region split's bits.

Each conv case asserts the algorithm the plan gives its passes at every thread count (so the
test cannot silently run another one) for this machine's caps.  phases and weight_dot run on
convkit's own AVX-512 float32 GEMM only: on a CPU whose float32 GEMMs go to BLAS (this CI's AMD
EPYC, or CONVKIT_DISABLE_AVX512=1) their case is skipped with that reason, and the other cases
assert the BLAS plan (there grad_weight takes im2col where the Xeon takes weight_dot).  Shapes
are small but above the sizes below which a call runs on one thread.  The last tests check the
pure plan for three machines up to 64 threads (every split that orders a sum stays put) and
that the narrow-panel cases reach csrc/fgemm.h's narrow panel.
"""
import io

import numpy as np
import pytest

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

THREADS = (1, 2, 8, 16)
OWN = ok and cc._OWN_SGEMM          # float32 GEMMs on the own AVX-512 kernel
OWN_ONLY = ("phases and weight_dot run on the own AVX-512 float32 GEMM only; this CPU's float32 "
            "GEMMs run on BLAS")


def _gw(own_algo, blas_algo="im2col"):
    return own_algo if OWN else blas_algo


def _avx2(algo):
    """The AVX2 algorithm runs here: no own GEMM, or the half-rate rule names it."""
    return ok and P.avx2_algo(cc._caps(), algo)


def _w4(own_algo, avx2_algo, name):
    """F(4x4) and weight_winograd: on the own GEMM unless the half-rate rule takes them."""
    return avx2_algo if not OWN or _avx2(name) else own_algo


# (id, x shape, w shape, stride, padding, groups, {pass: algorithm on this machine}, own only)
CONV = [
    ("im2col_strided", (4, 48, 20, 20), (32, 48, 3, 3), 2, 1, 1,
     {"forward": "im2col", "grad_x": "im2col", "grad_weight": "im2col"}, False),
    # 5x5 stride 1: wide forward; on BLAS grad_weight in 5 fixed parts of 8 images
    ("wide_and_parts", (8, 4, 24, 24), (8, 4, 5, 5), 1, 2, 1,
     {"forward": "wide", "grad_x": "im2col", "grad_weight": _gw("weight_dot")}, False),
    ("pointwise", (4, 32, 10, 10), (48, 32, 1, 1), 1, 0, 1,
     {"forward": "pointwise", "grad_x": "pointwise", "grad_weight": "pointwise"}, False),
    ("pointwise_grouped", (2, 32, 9, 9), (32, 8, 1, 1), 1, 0, 4,
     {"forward": "pointwise", "grad_x": "pointwise", "grad_weight": "pointwise"}, False),
    # on BLAS machines 32 forward tasks of 49 positions: fgemm's narrow last panel (1 column)
    ("pointwise_narrow_panel", (8, 32, 14, 14), (48, 32, 1, 1), 1, 0, 1,
     {"forward": "pointwise", "grad_x": "pointwise", "grad_weight": "pointwise"}, False),
    # more channels than filters: on csrc/fgemm.h grad_weight's GEMMs transposed (x @ gy^T),
    # 3 channel blocks, each image's 400 positions in two chains of 200; grad_x in runs of
    # positions
    # rpn_cls1x1's geometry: 18 filters (the own GEMM's 6-row x 64-column tiles), 1900
    # positions in 2 runs on 2 threads, 15 of 128 on 16 (conv_plan.pointwise_positions)
    ("pointwise_six_rows", (1, 40, 38, 50), (18, 40, 1, 1), 1, 0, 1,
     {"forward": "pointwise", "grad_x": "pointwise", "grad_weight": "pointwise"}, False),
    ("pointwise_transposed_w", (3, 96, 20, 20), (8, 96, 1, 1), 1, 0, 1,
     {"forward": "pointwise", "grad_x": "pointwise", "grad_weight": "pointwise"}, False),
    # 16 channels: F(2x2) on every machine
    ("winograd", (2, 16, 12, 12), (16, 16, 3, 3), 1, 1, 1,
     {"forward": "winograd", "grad_x": "winograd", "grad_weight": _gw("weight_dot")}, False),
    # 64 channels: F(4x4) on BLAS machines, grad_weight by its transposed form in two parts
    # (300 tiles); on the own AVX-512 GEMM F(2x2) and im2col
    ("weight_winograd", (12, 64, 20, 19), (64, 64, 3, 3), 1, 1, 1,
     {"forward": _w4("winograd", "winograd4", "winograd4"),
      "grad_x": _w4("winograd", "winograd4", "winograd4"),
      "grad_weight": _w4("im2col", "weight_winograd", "weight_winograd")}, False),
    # F(4x4) tasks of 13 tile rows of 5 tiles on 2 threads (65 GEMM columns: fgemm's narrow
    # last panel), 10 of them; on 8 and 16 threads other tile rows (conv_plan.even_tile_rows);
    # grad_weight's 68 channels in blocks of 32, 32 and 4 (a narrow panel again), 3 parts: 324
    # tasks
    ("winograd4_narrow_panel", (10, 68, 52, 20), (64, 68, 3, 3), 1, 1, 1,
     {"forward": _w4("winograd", "winograd4", "winograd4"),
      "grad_x": _w4("winograd", "winograd4", "winograd4"),
      "grad_weight": _w4("im2col", "weight_winograd", "weight_winograd")}, False),
    # F(4x4) on 8 images of 14x14 (4 tile rows of 4 tiles each): one task of 32 tiles on one
    # thread; on fgemm.h the two-region split on 2, 8 and 16 (shared V, then tile rows x 2 to 5
    # blocks of 6-filter strips, conv_plan.winograd4_split): the one-region bits
    ("winograd4_split", (2, 128, 14, 14), (96, 128, 3, 3), 1, 1, 1,
     {"forward": _w4("winograd", "winograd4", "winograd4"),
      "grad_x": _w4("winograd", "winograd4", "winograd4"),
      "grad_weight": _w4("im2col", "weight_winograd", "weight_winograd")}, False),
    # (odd sides: not the tiny-map Winograd)
    ("batch", (16, 16, 7, 7), (16, 16, 3, 3), 1, 1, 1,
     {"forward": "batch", "grad_x": "batch", "grad_weight": "batch"}, False),
    # float32 on AVX2: Winograd F(2x2) with 8 images a vector (csrc/winotiny.h), 2 tasks of a
    # full and a short group; grad_weight by the transposed F(2x2) in one part of 2 groups
    ("winograd_tiny", (13, 16, 6, 6), (16, 16, 3, 3), 1, 1, 1,
     {"forward": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_x": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_weight": "weight_winotiny" if ok and cc._WINOTINY else "batch"}, False),
    # ... 5 parts of 4 groups (the last short) at 8x8
    ("weight_winotiny", (150, 16, 8, 8), (16, 16, 3, 3), 1, 1, 1,
     {"forward": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_x": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_weight": "weight_winotiny" if ok and cc._WINOTINY else "batch"}, False),
    # the SmallResNet's tiny maps (issue 16): batch 64's 8 groups / 2 parts are fewer tasks
    # than 16 threads (8 for batch 32 ...), so 8 / 16 threads take the kernels' two-region
    # splits (filter blocks after a shared input transform; grad_weight's (part, point) tasks
    # after the batch's transforms) against 1 and 2 threads' one-region plans
    ("tiny_16_8x8", (64, 16, 8, 8), (16, 16, 3, 3), 1, 1, 1,
     {"forward": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_x": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_weight": "weight_winotiny" if ok and cc._WINOTINY else "batch"}, False),
    ("tiny_32_4x4", (64, 32, 4, 4), (32, 32, 3, 3), 1, 1, 1,
     {"forward": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_x": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_weight": "weight_winotiny" if ok and cc._WINOTINY else "batch"}, False),
    ("small_16_8x8", (128, 16, 8, 8), (16, 16, 3, 3), 1, 1, 1,
     {"forward": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_x": "winograd" if ok and cc._WINOTINY else "batch",
      "grad_weight": "weight_winotiny" if ok and cc._WINOTINY else "batch"}, False),
    ("batch_strided", (16, 8, 8, 8), (16, 8, 3, 3), 2, 1, 1,
     {"forward": "batch", "grad_x": "batch", "grad_weight": "batch"}, False),
    # grad_weight's block of 36 columns (4 channels x 9 taps) for 64 filters: on fgemm (BLAS
    # machines with AVX2) not transposed (the cases above: transposed)
    ("batch_many_filters", (16, 4, 6, 6), (64, 4, 3, 3), 1, 1, 1,
     {"forward": "batch", "grad_x": "batch", "grad_weight": "batch"}, False),
    # LeNet5's first layer on 8x8 maps: grad_weight by direct dot products on BLAS machines
    # with AVX2 (30 tasks: filter x kernel row); 7x7 maps: a masked last chunk of 7 columns
    ("weight_direct", (16, 1, 8, 8), (6, 1, 5, 5), 1, 2, 1,
     {"forward": "batch", "grad_x": "batch",
      "grad_weight": "weight_direct" if _avx2("weight_direct") else "batch"}, False),
    ("weight_direct_tail", (8, 1, 7, 7), (6, 1, 5, 5), 1, 2, 1,
     {"grad_weight": "weight_direct" if _avx2("weight_direct") else "batch"}, False),
    # lenet_c1's layer on 28x28 maps: the direct forward, an image a task (20: 16 threads take
    # two on four of them), 7 filters (a tile of 6 and one of 1), 784 positions (a short tile)
    ("direct", (20, 1, 28, 28), (7, 1, 5, 5), 1, 2, 1,
     {"forward": "direct" if ok and P.direct_allowed(cc._caps()) else "wide",
      "grad_x": "im2col"}, False),
    ("dense", (16, 32, 2, 2), (32, 32, 3, 3), 1, 1, 1,
     {"forward": "dense", "grad_x": "dense", "grad_weight": "dense"}, False),
    ("depthwise3x3", (4, 16, 12, 12), (16, 1, 3, 3), 1, 1, 16,
     {"forward": "depthwise3x3", "grad_x": "depthwise3x3", "grad_weight": "depthwise3x3"},
     False),
    ("depthwise3x3_padded", (4, 16, 12, 12), (16, 1, 3, 3), 1, 0, 16,
     {"forward": "depthwise3x3", "grad_x": "depthwise3x3", "grad_weight": "depthwise3x3"},
     False),
    ("depthwise", (4, 8, 12, 12), (16, 1, 3, 3), 1, 1, 8,
     {"forward": "depthwise", "grad_x": "depthwise", "grad_weight": "depthwise"}, False),
    # kernel 4 stride 2 (conv_transpose2d's grad_x): rowphases on BLAS machines with AVX2,
    # grad_x by sub-pixel phases on BLAS
    ("rowphases", (4, 8, 40, 40), (12, 8, 4, 4), 2, 1, 1,
     {"forward": "rowphases" if _avx2("rowphases") else "im2col",
      "grad_x": "subpixel" if not OWN or _avx2("subpixel") else "im2col",
      "grad_weight": "weight_rowgemm" if _avx2("weight_rowgemm") else _gw("weight_dot")},
     False),
    # >= 16 channels and filters: Winograd F(4x4, 2x2) over the phase planes (csrc/polywino.h)
    # on AVX2 + FMA where the half-rate rule takes it (ragged last tile column: Wo = 18, 5 x 5
    # tiles): the forward in 4 tasks of 5 tile rows on 1 and 2 threads, runs of 13 tiles across
    # row ends on 8 (conv_plan.polywino_run), of 10 on 16
    # grad_weight by the transposed F(4x4, 2x2): one group of 4 images, 1 GEMM column block of
    # 64 on 1 and 2 threads, 4 of 16 on 8 and 16 (conv_plan.wgrad_pw_cols)
    ("polywino", (4, 16, 40, 36), (24, 16, 4, 4), 2, 1, 1,
     {"forward": "polywino" if _avx2("polywino") and cc._WINOTINY
      else ("rowphases" if _avx2("rowphases") else "im2col"),
      "grad_x": "polywino" if _avx2("polywino") and cc._WINOTINY
      else ("subpixel" if not OWN or _avx2("subpixel") else "im2col"),
      "grad_weight": "weight_polywino" if _avx2("weight_polywino") and cc._WINOTINY
      else ("weight_rowgemm" if _avx2("weight_rowgemm") else _gw("weight_dot"))}, False),
    # 7 tile rows forward, 8 on grad_x's grid: a whole image a task on 1 and 2 threads; the
    # forward in runs of 11 tiles (3 a row) on 8, blocks of 2 tile rows on 16 (conv_plan.
    # even_rows: 6 + 1 left the team idle)
    # (without polywino -- no csrc/fgemm.h -- the forward is im2col: 12 output columns are
    # under tuning.ROWPHASES_MIN_WO)
    ("polywino_evened", (4, 16, 56, 24), (16, 16, 4, 4), 2, 1, 1,
     {"forward": "polywino" if _avx2("polywino") and cc._WINOTINY else "im2col",
      "grad_x": "polywino" if _avx2("polywino") and cc._WINOTINY
      else ("subpixel" if not OWN or _avx2("subpixel") else "im2col")}, False),
    # 64 filters: weight_rowgemm's filter blocks shrink from 64 to 16 on 16 threads
    ("weight_rowgemm_blocks", (2, 8, 24, 24), (64, 8, 4, 4), 2, 1, 1,
     {"grad_weight": "weight_rowgemm" if _avx2("weight_rowgemm") else _gw("weight_dot")},
     False),
    # 7x7 stride 2, 3 channels (the ResNet stem's rule): stem and weight_stem on BLAS machines
    # with AVX2 (Wo = 36 >= 32: phases on the own GEMM); 20 forward tasks, weight_stem's 20
    # (image, row block) slabs in 16 groups, some across two images
    ("stem", (4, 3, 72, 72), (8, 3, 7, 7), 2, 3, 1,
     {"forward": "stem" if _avx2("stem") else _gw("phases"),
      "grad_weight": "weight_stem" if _avx2("weight_stem") else _gw("weight_dot")},
     False),
    # 16 filters: stem_wino and its weight gradient weight_stem_wino (20 slabs in 16 groups)
    ("stem_wino", (4, 3, 72, 72), (16, 3, 7, 7), 2, 3, 1,
     {"forward": "stem_wino" if _avx2("stem") else _gw("phases"),
      "grad_weight": "weight_stem_wino" if _avx2("weight_stem") else _gw("weight_dot")},
     False),
    ("phases_and_weight_dot", (2, 3, 64, 64), (8, 3, 7, 7), 2, 3, 1,
     {"forward": "phases", "grad_weight": "weight_dot"}, True),
]


def _plan_algos(x, w, stride, pad, groups):
    """{pass: algorithm}, Winograd F(4x4) named winograd4."""
    _, _, _, plan = cc._plan(x, w, (stride,) * 2, (pad,) * 4, (1, 1), groups)

    def name(st):
        return st.algo + ("4" if st.params.get("tile") == 4 else "")
    return {"forward": name(plan.forward), "grad_x": name(plan.grad_x),
            "grad_weight": name(plan.grad_weight)}


def _bits(arrays):
    return [np.ascontiguousarray(a).tobytes() for a in arrays]


def _on_threads(fn):
    """{threads: fn()} for each thread count."""
    out = {}
    try:
        for nt in THREADS:
            convkit.set_num_threads(nt)
            out[nt] = fn()
    finally:
        convkit.set_num_threads(None)
    return out


def _same_conv_passes(x, w, b, gy):
    """(y, grad_x, grad_weight, grad_bias) of a 3x3 stride-1 'same' conv on the cpu backend."""
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, b, stride=1, padding=1)
        return (y,) + tuple(convkit.conv2d_backward(gy, x, w, stride=1, padding=1, has_bias=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV, ids=[c[0] for c in CONV])
def test_each_conv_algorithm_gives_the_same_bits_on_1_2_8_16_threads(case, dtype):
    name, xs, ws, stride, pad, groups, algos, own_only = case
    if own_only and not OWN:
        pytest.skip(OWN_ONLY)
    if own_only and _avx2("stem"):
        pytest.skip("the half-rate rule takes stem and weight_stem for this layer (the stem case)")
    if dtype == np.float64 and own_only:
        pytest.skip("phases and weight_dot are float32 kernels")
    rng = np.random.default_rng(16)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    if dtype == np.float32:
        for nt in THREADS:
            convkit.set_num_threads(nt)
            got = _plan_algos(x, w, stride, pad, groups)
            assert {k: got[k] for k in algos} == algos, (nt, got)
        convkit.set_num_threads(None)

    def passes():
        with convkit.use_backend("cpu"):
            y = convkit.conv2d_forward(x, w, b, stride=stride, padding=pad, groups=groups)
            gy = np.random.default_rng(17).standard_normal(y.shape).astype(dtype)
            g = convkit.conv2d_backward(gy, x, w, stride=stride, padding=pad, groups=groups,
                                        has_bias=True)
            return _bits((y,) + tuple(g))

    runs = _on_threads(passes)
    for nt in THREADS[1:]:
        assert runs[nt] == runs[1], nt


def test_pools_batch_norm_and_roi_ops_give_the_same_bits_on_1_2_8_16_threads():
    rng = np.random.default_rng(18)
    x = rng.standard_normal((2, 16, 24, 24)).astype(np.float32)
    bn_x = (rng.standard_normal((4, 16, 12, 12)) * 2 + 0.5).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    beta = rng.standard_normal(16).astype(np.float32)
    fmap = rng.standard_normal((2, 32, 12, 17)).astype(np.float32)
    K = 24
    x1 = rng.uniform(0, 150, K)
    y1 = rng.uniform(0, 100, K)
    rois = np.stack([rng.integers(0, 2, K), x1, y1, x1 + rng.uniform(16, 120, K),
                     y1 + rng.uniform(16, 90, K)], axis=1).astype(np.float32)
    gy_roi = rng.standard_normal((K, 32, 7, 7)).astype(np.float32)

    def calls():
        with convkit.use_backend("cpu"):
            y, idx = convkit.max_pool2d_forward(x, 3, 2, 1)
            gy = np.random.default_rng(19).standard_normal(y.shape).astype(np.float32)
            gmax = convkit.max_pool2d_backward(gy, idx, x.shape)
            ya = convkit.avg_pool2d_forward(x, 3, 2, 1)
            gavg = convkit.avg_pool2d_backward(gy, x.shape, 3, 2, 1)
            rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
            yb, mean, invstd = convkit.batch_norm_forward(bn_x, gamma, beta, rm, rv, True)
            gb = convkit.batch_norm_backward(np.sin(yb), bn_x, gamma, mean, invstd, True)
            ra = convkit.roi_align_forward(fmap, rois, 7, 1 / 16, 2, False)
            gra = convkit.roi_align_backward(gy_roi, rois, fmap.shape, 7, 1 / 16, 2, False)
            rp, am = convkit.roi_pool_forward(fmap, rois, 7, 1 / 16)
            grp = convkit.roi_pool_backward(gy_roi, am, fmap.shape, rois=rois)
            return _bits((y, idx, gmax, ya, gavg, yb, mean, invstd, rm, rv) + tuple(gb)
                         + (ra, gra, rp, am, grp))

    runs = _on_threads(calls)
    for nt in THREADS[1:]:
        assert runs[nt] == runs[1], nt


# The params that cut a sum, per algorithm: on the own GEMM only these (its sums run in a fixed
# order whatever the block), on BLAS every block size too (OpenBLAS picks kernels by shape).
_SUMS_OWN = {"im2col": ("rows_w", "rows_x", "nsplit"), "pointwise": ("rows_w", "rows_x", "nsplit"),
             "batch": ("chans_w", "kimgs", "nsplit"), "weight_dot": ("groups_n", "rows", "kr"),
             "weight_winotiny": ("part_groups", "chunk")}
_SUMS_BLAS = {"im2col": ("rows", "units_w", "rows_w", "chans_x", "rows_x", "nsplit"),
              "pointwise": ("rows", "units_w", "rows_w", "chans_x", "rows_x", "nsplit"),
              "winograd": ("trows",), "batch": ("imgs", "chans_w", "kimgs", "nsplit"),
              "dense": ("row_blocks",), "weight_stem": ("rows", "fchunk", "groups_n"),
              "weight_stem_wino": ("rows", "groups_n"),
              "weight_winograd": ("trows", "cols", "parts"),
              "weight_winotiny": ("part_groups", "chunk")}
# the machines: the Xeon's own GEMM, BLAS alone, and this CI's EPYC (BLAS, csrc/rowgemm.h and
# csrc/fgemm.h: stem, weight_stem(_wino), F(4x4) and weight_winograd)
_CAPS = {"own_gemm": dict(own_sgemm=True, depthwise3x3_level=3),
         "blas": dict(own_sgemm=False, depthwise3x3_level=2),
         "blas_rowgemm_fgemm": dict(own_sgemm=False, depthwise3x3_level=2, rowgemm=True,
                                    fixed_sgemm=True),
         # a Zen 4 (half-rate AVX-512 FMA): the own GEMM beside the AVX2 algorithms
         "own_half_rate": dict(own_sgemm=True, depthwise3x3_level=3, rowgemm=True,
                               fixed_sgemm=True, avx512_full_rate=False)}


@pytest.mark.parametrize("machine", list(_CAPS))
def test_the_suite_plans_cut_their_sums_alike_on_1_to_64_threads(machine):
    """The plan is pure, so both machines' plans are checked here: every split that orders a
    sum is the same at 1, 2, 8, 16 and 64 threads for the suite's conv layers.  The Xeon's
    im2col grad_weight took its rows per GEMM from the team's column block (vgg_56: 24 rows at
    2 threads, 56 at 16) -- other bits on the own GEMM, whose k blocks follow k.  (Winograd
    F(2x2) on BLAS took its tile rows from the per-thread budget at 64 threads, rpn_3x3; the
    suite's 3x3 layers take F(4x4) there now, whose tile rows the limit alone sets: the team
    shrinks instead.)"""
    from convkit.benchmark.cases import CASES, ConvCase
    from convkit.cpu import conv_plan as P
    caps = P.ConvCaps(**_CAPS[machine])
    own = caps.own_sgemm
    keys = _SUMS_OWN if own else _SUMS_BLAS
    if own and not caps.avx512_full_rate:   # (the AVX2 algorithms' sums cut as on the EPYC)
        keys = {**keys, **{k: v for k, v in _SUMS_BLAS.items() if k.startswith("weight_")}}
    if caps.fixed_sgemm:        # (F(4x4)'s GEMMs on csrc/fgemm.h: its tile rows cut no sum)
        keys = {k: v for k, v in keys.items() if k != "winograd"}
    algos = set()
    for c in CASES:
        if type(c) is not ConvCase:     # (transposed / deformable convs: other plans)
            continue
        s = P.ConvShape.of((c.N, c.C, c.H, c.W), (c.F, c.C // c.groups, c.K, c.K),
                           (c.stride,) * 2, (c.pad,) * 4, (1, 1), c.groups)
        seen = {}
        for nt in (1, 2, 8, 16, 64):
            plan = P.plan_conv(s, np.float32, nt, caps, 256 * 2**20, not c.first_layer)
            for label, st in (("forward", plan.forward), ("grad_x", plan.grad_x),
                              ("grad_weight", plan.grad_weight)):
                if st is None:
                    continue
                cut = (st.algo, tuple(st.params.get(k) for k in keys.get(st.algo, ())))
                seen.setdefault(label, set()).add(cut)
                algos.add(st.algo)
        for label, cuts in seen.items():
            assert len(cuts) == 1, (c.name, label, cuts)
    if machine in ("blas_rowgemm_fgemm", "own_half_rate"):     # (the caps reach the algorithms
        assert {"stem_wino", "weight_stem_wino", "weight_winograd"} <= algos, algos  # they are for)


@pytest.mark.skipif(not ok or cc._OWN_SGEMM or not cc._FIXED_SGEMM,
                    reason="csrc/fgemm.h's float32 GEMMs run on AVX2 machines without the own "
                           "AVX-512 GEMM")
def test_the_narrow_panel_cases_reach_it():
    """The *_narrow_panel cases above give csrc/fgemm.h GEMMs whose last 16-column panel has
    1 to 4 columns (CK_FG_EDGE_N): checked on the plan, so a plan change cannot silently take
    them off that path."""
    def edge(n):
        return 1 <= n % 16 <= 4
    cases = {c[0]: c for c in CONV}

    def plan_of(name):          # (on 2 threads: F(4x4)'s tile rows follow the team)
        _, xs, ws, stride, pad, groups, _, _ = cases[name]
        convkit.set_num_threads(2)
        try:
            return xs, cc._plan(np.zeros(xs, np.float32), np.zeros(ws, np.float32),
                                (stride,) * 2, (pad,) * 4, (1, 1), groups)[3]
        finally:
            convkit.set_num_threads(None)
    _, plan = plan_of("pointwise_narrow_panel")
    assert edge(plan.forward.params["rows"]), plan.forward       # (positions per GEMM)
    xs, plan = plan_of("winograd4_narrow_panel")
    tw = -(-xs[3] // 4)
    for st in (plan.forward, plan.grad_x):      # (tiles per GEMM; N * th a multiple of trows)
        assert st.params["tile"] == 4 and not st.params["per_image"], st
        assert xs[0] * (-(-xs[2] // 4)) % st.params["trows"] == 0, st
        assert edge(st.params["trows"] * tw), st
    assert edge(xs[1] % plan.grad_weight.params["cols"]), plan.grad_weight    # (channels)


def test_f4_tile_rows_even_out_the_team_only_on_a_fixed_order_gemm():
    """F(4x4) on csrc/fgemm.h (each output one chain over the channels: the tile rows per task
    cut no sum) takes other tile rows where its preferred ones leave more than
    tuning.WINOGRAD4_MAX_IDLE of the team idle: vgg_56's 112 tile rows in 23 tasks of 5 on 2
    threads (as before), 16 tasks of 7 on 16; within tuning's tile and byte bounds.  On plain
    BLAS (whose bits follow the GEMM's shape) they stay put."""
    from convkit.cpu import conv_plan as P
    from convkit.cpu import tuning as T
    s = P.ConvShape.of((8, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
    fg = P.ConvCaps(**_CAPS["blas_rowgemm_fgemm"])

    def trows(caps, nt):
        st = P.plan_conv(s, np.float32, nt, caps, 256 * 2**20).forward
        assert (st.algo, st.params["tile"], st.threads) == ("winograd", 4, nt), st
        return st.params["trows"]
    assert trows(fg, 1) == trows(fg, 2) == 5
    tr = trows(fg, 16)
    assert tr == 7 and -(-112 // tr) == 16
    for nt in (3, 4, 8, 16, 32, 64):
        tr = trows(fg, nt)
        idle = 1 - 112 / (-(-(-(-112 // tr)) // nt) * nt * tr)
        assert tr == 5 or (tr * 14 >= T.WINOGRAD4_MIN_TASK_TILES
                           and 36 * 128 * 14 * 4 * tr <= T.WINOGRAD4_TASK_BYTES), (nt, tr)
        assert idle <= max(0.1, 1 - 112 / (-(-23 // nt) * nt * 5)), (nt, tr, idle)
    blas = P.ConvCaps(**_CAPS["blas"])
    assert len({trows(blas, nt) for nt in (1, 2, 8, 16)}) == 1


def test_f4_two_region_split_where_tile_rows_leave_the_team_idle():
    """Where no tile rows bring F(4x4)'s idle share under tuning.WINOGRAD4_MAX_IDLE (few tiles:
    res_14's 128, rpn_3x3's 130, res_28's 392 on 16 threads), the plan on csrc/fgemm.h splits in
    two regions (the kernel's fparts): >= 16 tasks of tile rows x blocks of whole 6-filter
    strips that leave at most that share idle, the shared V counted against the limit (below
    it: the one-region split).  The suite's 1- and 2-thread plans and plain BLAS keep the
    one-region split; the test above runs the split on 2, 8 and 16 threads for the one-region
    bits (and tests/test_cpu_winograd4.py the kernel's splits against each other)."""
    from convkit.cpu import conv_plan as P
    from convkit.cpu import tuning as T
    fg = P.ConvCaps(**_CAPS["blas_rowgemm_fgemm"])
    blas = P.ConvCaps(**_CAPS["blas"])
    layers = {"res_14": (8, 256, 14, 14, 256), "rpn_3x3": (1, 512, 38, 50, 512),
              "res_28": (8, 128, 28, 28, 128), "vgg_56": (8, 64, 56, 56, 64)}
    limit = 256 * 2**20
    for name, (N, C, H, W, F) in layers.items():
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
        rows, tw, nu = N * -(-H // 4), -(-W // 4), -(-F // 6)
        for nt in (1, 2, 16):
            plan = P.plan_conv(s, np.float32, nt, fg, limit)
            for st in (plan.forward, plan.grad_x):
                assert (st.algo, st.params["tile"], st.threads) == ("winograd", 4, nt), st
                fp = st.params.get("fparts")
                if nt <= 2 or name == "vgg_56":     # (vgg_56: 16 tasks of 7 tile rows)
                    assert fp is None, (name, nt, st)
                    continue
                tr = st.params["trows"]
                assert fp is not None and fp <= nu // T.WINOGRAD4_SPLIT_MIN_STRIPS, (name, st)
                assert min(tr * tw, rows * tw) >= min(rows * tw, T.WINOGRAD4_MIN_TASK_TILES)
                costs = [min(tr, rows - g) * tw * ((b + 1) * nu // fp - b * nu // fp)
                         for g in range(0, rows, tr) for b in range(fp)]
                assert len(costs) >= nt and P._list_idle(costs, nt) <= 0.1, (name, st)
                assert st.params["shared"] == 36 * C * rows * tw
                per = 36 * 6 * -(-nu // fp) * tr * tw + P.winograd_scratch(4, tr, tw)
                assert st.params["per_thread"] == per
        st = P.plan_conv(s, np.float32, 16, blas, limit).forward
        assert st.params["per_image"] and "fparts" not in st.params, (name, st)
    # res_14 on 16 threads under tighter limits: the split's U + V + 16 slices exactly: the
    # same split; below it the split on 8 threads (the one-region split would fit 2 only), then
    # the one-region split on one thread where V and two slices do not fit; always within it
    N, C, H, W, F = layers["res_14"]
    s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
    st = P.plan_conv(s, np.float32, 16, fg, limit).forward
    u = 36 * C * 258 * 4
    need = u + (st.params["shared"] + 16 * st.params["per_thread"]) * 4
    assert P.plan_conv(s, np.float32, 16, fg, need).forward == st
    for lim, team, split in ((need - 4, 8, True), (u + 36 * C * 128 * 4 + 600_000, 1, False)):
        tight = P.plan_conv(s, np.float32, 16, fg, lim).forward
        assert (tight.threads, "fparts" in tight.params) == (team, split), (lim, tight)
        p = tight.params
        assert u + (p.get("shared", 0) + team * p["per_thread"]) * 4 <= lim, (lim, tight)


@pytest.mark.skipif(not ok or not cc._FIXED_SGEMM or (cc._OWN_SGEMM and not _avx2("winograd4")),
                    reason="F(4x4)'s GEMMs run on csrc/fgemm.h on AVX2 machines without the own "
                           "AVX-512 GEMM, and beside it on a half-rate AVX-512 CPU")
def test_the_split_case_reaches_the_two_region_split():
    """The winograd4_split case above runs the one-region split on one thread and the
    two-region one on 2, 8 and 16 (forward and grad_x): checked on this machine's plan, so the
    bit test compares the two splits."""
    _, xs, ws, stride, pad, groups, _, _ = {c[0]: c for c in CONV}["winograd4_split"]
    got = {}
    try:
        for nt in THREADS:
            convkit.set_num_threads(nt)
            plan = cc._plan(np.zeros(xs, np.float32), np.zeros(ws, np.float32), (stride,) * 2,
                            (pad,) * 4, (1, 1), groups)[3]
            got[nt] = [(st.threads, st.params.get("fparts")) for st in (plan.forward,
                                                                        plan.grad_x)]
    finally:
        convkit.set_num_threads(None)
    assert got[1] == [(1, None)] * 2, got
    for nt in THREADS[1:]:
        assert all(t == nt and fp and fp > 1 for t, fp in got[nt]), got


@pytest.mark.skipif(not ok or cc._OWN_SGEMM or not cc._FIXED_SGEMM,
                    reason="csrc/fgemm.h's float32 GEMMs run on AVX2 machines without the own "
                           "AVX-512 GEMM")
@pytest.mark.parametrize("xs,ws,groups", [((3, 96, 20, 20), (8, 96, 1, 1), 1),
                                          ((2, 24, 9, 11), (60, 24, 1, 1), 1),
                                          ((2, 32, 7, 9), (40, 8, 1, 1), 4)])
def test_pointwise_blocks_on_fgemm_cut_no_sum(xs, ws, groups):
    """A pointwise backward on csrc/fgemm.h: grad_weight's (filter, channel) blocks -- either
    orientation of the GEMM -- and grad_x's runs of positions compute each entry as the same
    chains whatever the blocks (the plan's blocks only share the work out), so any blocks give
    the plan's bits; and those are within float32 rounding of float64."""
    from convkit.cpu import _conv_im2col as K
    from convkit.cpu import tuning as T
    rng = np.random.default_rng(29)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(ws[1])).astype(np.float32)
    N, C, H, W = xs
    F, Cg = ws[:2]
    gy = rng.standard_normal((N, F, H, W)).astype(np.float32)

    def run(filters_w, units_w, pos_x, chans_x):
        gx = np.full(xs, np.nan, np.float32)
        gw = np.zeros(ws, np.float32)
        K.conv2d_backward_gemm(gy, x, w, gx, gw, np.zeros(1, np.float32), 0, units_w, H,
                               chans_x, H, 1, 1, 0, 0, 1, 1, groups, True, True, True, 2, 1,
                               np.zeros(1, np.float32), filters_w, pos_x, True, T.PW_W_CHAIN)
        return gx, gw
    Fg = F // groups
    base_x, base_w = run(Fg, Cg, 0, Cg)
    for fw, uw, px, cx in ((1, 1, 1, 1), (7, 5, 13, Cg), (Fg, 3, 64, 2), (5, Cg, 7, 3)):
        gx, gw = run(fw, uw, px, cx)
        assert gw.tobytes() == base_w.tobytes(), (fw, uw)
        assert gx.tobytes() == base_x.tobytes(), (px, cx)
    with convkit.use_backend("cpu"):       # (the plan's own blocks, through the public op)
        gx, gw, _ = convkit.conv2d_backward(gy, x, w, groups=groups)
    assert gw.tobytes() == base_w.tobytes() and gx.tobytes() == base_x.tobytes()
    G, x64, gy64 = groups, x.astype(np.float64), gy.astype(np.float64)
    ref = np.concatenate([np.einsum("nfhw,nchw->fc", gy64[:, g * Fg:(g + 1) * Fg],
                                    x64[:, g * Cg:(g + 1) * Cg]) for g in range(G)])
    scale = np.einsum("nfhw,nchw->fc", np.abs(gy64[:, :Fg]), np.abs(x64[:, :Cg])).max()
    # (a rounding per FMA of a chain, one per run added: the standard bound)
    roundings = T.PW_W_CHAIN + N * -(-H * W // T.PW_W_CHAIN)
    assert np.abs(base_w[:, :, 0, 0] - ref).max() <= roundings * np.finfo(np.float32).eps * scale


@pytest.mark.skipif(not ok or not cc._OWN_SGEMM, reason="no own AVX-512 GEMM: nothing prepacked")
@pytest.mark.parametrize("xs,ws,groups", [((3, 96, 7, 7), (130, 96, 1, 1), 1),
                                          ((2, 24, 9, 11), (60, 24, 1, 1), 1),
                                          ((2, 32, 7, 9), (40, 8, 1, 1), 4)])
def test_pointwise_grad_x_on_prepacked_weights(xs, ws, groups):
    """A pointwise grad_x on the own GEMM reads w^T packed once per call (apk_x) where a task's
    GEMM takes its group's every channel: the bits of packing it in each task (apk_x None), for
    runs of positions that end in narrow panels (49, 99: 1 and 3 columns past whole 48-column
    panels), on 1 and 3 threads; within float32 rounding of float64."""
    from convkit.cpu import _conv_im2col as K
    from convkit.cpu import tuning as T
    rng = np.random.default_rng(31)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(ws[1])).astype(np.float32)
    N, C, H, W = xs
    F, Cg = ws[:2]
    Fg = F // groups
    gy = rng.standard_normal((N, F, H, W)).astype(np.float32)
    apk = cc._packed_a(w.reshape(groups, Fg, Cg), True).copy()
    assert apk.shape[0] == groups

    def run(pos_x, chans_x, threads, packed, pk=apk):
        gx = np.full(xs, np.nan, np.float32)
        K.conv2d_backward_gemm(gy, x, w, gx, np.zeros(ws, np.float32), np.zeros(1, np.float32), 0,
                               Cg, H, chans_x, H, 1, 1, 0, 0, 1, 1, groups, True, True, False,
                               threads, 1, np.zeros(1, np.float32), Fg, pos_x, True,
                               T.PW_W_CHAIN, pk if packed else None)
        return gx
    base = run(0, Cg, 1, False)
    # (the packed weights are what the tasks read: doubled, every whole-group task doubles)
    assert run(0, Cg, 2, True, apk * 2).tobytes() == (base * 2).tobytes()
    for px, cx, t in ((0, Cg, 1), (49, Cg, 3), (H * W // 2 + 1, Cg, 2), (7, 3, 3)):
        assert run(px, cx, t, True).tobytes() == base.tobytes(), (px, cx, t)
    with convkit.use_backend("cpu"):       # (the plan's own blocks, through the public op)
        gx, _, _ = convkit.conv2d_backward(gy, x, w, groups=groups)
    assert gx.tobytes() == base.tobytes()
    w64, gy64 = w[:, :, 0, 0].astype(np.float64), gy.astype(np.float64)
    ref = np.concatenate([np.einsum("fc,nfhw->nchw", w64[g * Fg:(g + 1) * Fg],
                                    gy64[:, g * Fg:(g + 1) * Fg]) for g in range(groups)], 1)
    scale = np.einsum("fc,nfhw->nchw", np.abs(w64[:Fg]), np.abs(gy64[:, :Fg])).max()
    assert np.abs(base - ref).max() <= Fg * np.finfo(np.float32).eps * scale


def test_pointwise_splits_leave_at_most_a_tenth_of_16_threads_idle():
    """issue 16's many cores: on the EPYC's caps (csrc/fgemm.h) the suite's pointwise layers'
    grad_x and grad_weight tasks -- equal sizes but for a last block -- fill 16 threads to within
    10 % (pw_14 grad_x was 8 tasks, grad_weight 4; rpn_cls1x1 grad_x 4, grad_weight 8); the
    blocks are the same on 2 and 16 threads."""
    from convkit.cpu import conv_plan as P
    caps = P.ConvCaps(**_CAPS["blas_rowgemm_fgemm"])
    for xs, ws in (((8, 256, 14, 14), (1024, 256, 1, 1)), ((1, 512, 38, 50), (18, 512, 1, 1))):
        s = P.ConvShape.of(xs, ws, (1, 1), (0,) * 4, (1, 1), 1)
        N, C, H, W = xs
        F = ws[0]
        seen = set()
        for nt in (2, 16):
            st = P.plan_conv(s, np.float32, nt, caps, 256 * 2**20).grad_weight
            p = st.params
            assert st.algo == "pointwise" and p["fgemm_w"] and st.threads == nt, st
            seen.add((p["filters_w"], p["units_w"], p["pos_x"]))
        fw, uw, px = seen.pop()
        assert not seen
        sizes_w = [min(fw, F - f) * min(uw, C - c) for f in range(0, F, fw)
                   for c in range(0, C, uw)]
        sizes_x = [min(px, H * W - q) for q in range(0, H * W, px)] * N
        for sizes in (sizes_w, sizes_x):
            rounds = -(-len(sizes) // 16)
            assert sum(sizes) / (16 * rounds * max(sizes)) >= 0.9, (xs, sizes)


@pytest.mark.parametrize("machine", ["own_gemm", "own_half_rate"])
def test_pointwise_forward_leaves_at_most_a_tenth_of_16_threads_idle(machine):
    """issue 16's many cores: on the own GEMM the suite's pointwise forwards (runs of an
    image's positions, a static schedule) fill 16 threads to within 10 % by the GEMM's cost
    (conv_plan.gemm_columns: whole panels, a partial one's vectors) -- rpn_cls1x1 lost 18 % in
    whole 48-column panels, pw_14 32 % -- and 2 threads to within 10 % too."""
    from convkit.cpu import conv_plan as P
    caps = P.ConvCaps(**_CAPS[machine])
    for xs, ws in (((8, 256, 14, 14), (1024, 256, 1, 1)), ((1, 512, 38, 50), (18, 512, 1, 1))):
        s = P.ConvShape.of(xs, ws, (1, 1), (0,) * 4, (1, 1), 1)
        N, HoWo, panel = xs[0], xs[2] * xs[3], P.gemm_panel(ws[0])
        for nt in (2, 16):
            st = P.plan_conv(s, np.float32, nt, caps, 256 * 2**20).forward
            assert st.algo == "pointwise" and st.threads == nt, st
            L = st.params["rows"]
            costs = [P.gemm_columns(min(L, HoWo - q), panel) for q in range(0, HoWo, L)] * N
            assert N * HoWo / (nt * P.static_span(costs, nt)) >= 0.9, (xs, nt, L)


def test_static_span_deals_contiguous_chunks():
    """OpenMP's static schedule without a chunk: the first len % team threads one task more,
    each a contiguous run."""
    from convkit.cpu import conv_plan as P
    assert P.static_span([1] * 5, 2) == 3
    assert P.static_span([5, 1, 1, 1, 1], 2) == 7
    assert P.static_span([1, 1, 1, 5], 2) == 6
    assert P.static_span([3, 3], 4) == 3


_ZEN4 = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True,
                   avx512_full_rate=False, winotiny=True)
_EPYC = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True, fixed_sgemm=True,
                   winotiny=True)


@pytest.mark.parametrize("caps", [_ZEN4, _EPYC], ids=["zen4", "epyc"])
def test_winotiny_splits_only_where_the_groups_are_fewer_than_the_threads(caps):
    """Issue 16: batch 64's tiny maps take the two-region splits on 16 threads (forward /
    grad_x: 8 groups x 2 filter blocks; grad_weight: 2 parts x 16 points), losing <= 10 % of
    them by the plan's arithmetic; 1 and 2 threads keep their one-region plans exactly (the
    SmallResNet's 2-thread step was measured on them), and so does any team of more than half
    the threads (the split costs one core more work)."""
    for N, C, H in ((64, 16, 8), (64, 32, 4), (128, 16, 8)):
        s = P.ConvShape.of((N, C, H, H), (C, C, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        G8, cols = N // 8, (H // 2) ** 2 * 8
        for nt in (1, 2, 3, 8, 16):
            plan = P.plan_conv(s, np.float32, nt, caps, 256 * 2**20, True)
            fw, gx, gw = plan.forward, plan.grad_x, plan.grad_weight
            assert fw.params == gx.params and fw.threads == gx.threads
            if nt < 3 or 2 * G8 > nt:      # the one-region plans, as before the split
                assert (fw.algo, fw.threads, fw.params) == (
                    "winograd", min(nt, G8), {"tile": 2, "tiny": True, "groups": 1,
                                              "per_thread": P.winotiny_floats(C, C, H, H, 1)})
            else:
                assert fw.threads == nt and fw.params["fparts"] == 2, (N, C, nt, fw)
                assert P._list_idle([C // 2] * 2 * G8, nt) <= 0.1
            parts = -(-G8 // 4)
            assert gw.algo == "weight_winotiny" and gw.params["part_groups"] == 4
            if nt < 3 or 2 * parts > nt:
                assert gw.threads == min(nt, parts) and "split" not in gw.params
                assert gw.params["per_thread"] == 16 * 2 * C * (max(1, 128 // cols) * cols + 16) \
                    + 8 * ((H + 2) ** 2 + H * H) + 16
            else:
                assert gw.params["split"] and gw.threads == nt, (N, C, nt, gw)
                if nt == 16:
                    assert P._list_idle([1] * 16 * parts, nt) <= 0.1


# ----------------------------------------------- F(2x2)'s two-region split (full-rate AVX-512)
# A Xeon-like CPU (512-bit FMAs at the full rate) runs 3x3 layers by F(2x2) on the own GEMM;
# where its tile-row tasks leave more than tuning.WINOGRAD_MAX_IDLE of the team idle the plan
# splits in two regions (conv_plan.winograd2_split: a shared input transform, then tile rows x
# blocks of 8-filter strips), each output the one-region chain.  The full-rate plans are forced
# here (cc._FULL_RATE, as CONVKIT_AVX512_FULL_RATE=1): this Zen 4 host and the emulated AVX-512
# CI (.ci/avx512_emulated runs this file whole) are half-rate or AVX2 CPUs otherwise.
_FULL = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)
_SUITE_F2 = {"res_28": (8, 128, 28, 28, 128), "res_14": (8, 256, 14, 14, 256),
             "rpn_3x3": (1, 512, 38, 50, 512), "vgg_56": (8, 64, 56, 56, 64)}


@pytest.fixture
def full_rate(monkeypatch):
    """This machine's caps with the half-rate rule off (the Xeon's plans)."""
    monkeypatch.setattr(cc, "_FULL_RATE", True)
    cc._caps_by_level.clear()
    cc._plans.clear()
    yield
    cc._caps_by_level.clear()
    cc._plans.clear()


def _f2_costs(rows, tw, F, tr, fp):
    nu = -(-F // 8)
    fb = [min(F, 8 * ((b + 1) * nu // fp)) - 8 * (b * nu // fp) for b in range(fp)]
    return [P.own_gemm_cols(min(tr, rows - g) * tw) * f for g in range(0, rows, tr) for f in fb]


def test_f2_two_region_split_where_tile_rows_leave_the_team_idle(monkeypatch):
    """The suite's F(2x2) layers on the full-rate caps: on 16 and 64 threads res_28 (28 tasks:
    12 % idle), res_14 (28: 12 %), rpn_3x3 (19: 41 %) and vgg_56 on 64 take the split, which
    loses <= 10 % of the team (idle threads and partial GEMM panels) with blocks of >= 4
    strips, its shared V and slices within the limit; 1 and 2 threads keep the one-region
    plans they had (the rule replaced by None gives the same steps)."""
    from convkit.cpu import tuning as T
    from convkit.cpu._conv_winograd import wino2_split_floats
    limit = 256 * 2**20
    plans = {}
    for name, (N, C, H, W, F) in _SUITE_F2.items():
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
        for nt in (1, 2, 16, 64):
            plans[name, nt] = P.plan_conv(s, np.float32, nt, _FULL, limit)
    monkeypatch.setattr(P, "winograd2_split", lambda *a: None)
    for name, (N, C, H, W, F) in _SUITE_F2.items():
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
        rows, tw = N * -(-H // 2), -(-W // 2)
        for nt in (1, 2, 16, 64):
            plan = plans[name, nt]
            old = P.plan_conv(s, np.float32, nt, _FULL, limit)
            for st, was in ((plan.forward, old.forward), (plan.grad_x, old.grad_x)):
                assert (st.algo, st.params["tile"], st.threads) == ("winograd", 2, nt), st
                if nt <= 2:
                    assert st == was, (name, nt, st, was)
                    continue
                tr = was.params["trows"]
                one = _f2_costs(rows, tw, F, tr, 1)
                idle = P._static_lost(one, sum(one), nt)
                if idle <= 0.1:
                    assert st == was, (name, nt, st)
                    continue
                assert name != "vgg_56" or nt == 64, (name, nt, idle)
                fp, tr = st.params.get("fparts", 1), st.params["trows"]
                assert fp <= max(1, -(-F // 8) // T.WINOGRAD_SPLIT_MIN_STRIPS)
                assert min(tr * tw, rows * tw) >= min(rows * tw, T.WINOGRAD_SPLIT_MIN_TILES)
                c = _f2_costs(rows, tw, F, tr, fp)
                assert len(c) >= nt and P._static_lost(c, rows * tw * F, nt) <= 0.1, (name, st)
                if fp > 1:
                    shared, per = wino2_split_floats(N, C, F, H, W, tr, fp)
                    assert (st.params["shared"], st.params["per_thread"]) == (shared, per)
                    assert (shared + nt * per) * 4 <= limit
        for nt in (16, 64):         # (the issue's three layers take the two regions)
            if name != "vgg_56" or nt == 64:
                assert plans[name, nt].forward.params.get("fparts", 1) > 1, (name, nt)
    # below the split's workspace the one-region split (rpn_3x3, 16 threads)
    monkeypatch.undo()
    N, C, H, W, F = _SUITE_F2["rpn_3x3"]
    s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
    st = plans["rpn_3x3", 16].forward
    need = (st.params["shared"] + 16 * st.params["per_thread"]) * 4
    assert P.plan_conv(s, np.float32, 16, _FULL, need).forward == st
    tight = P.plan_conv(s, np.float32, 16, _FULL, need - 4).forward
    assert "fparts" not in tight.params and tight.threads * tight.params["per_thread"] * 4 \
        <= need - 4, tight


# (id, x shape, w shape, {threads: forward's / grad_x's fparts})
F2_SPLIT = [
    # 14 tile rows of 8 tiles: one region on 1 and 2 threads (tuning.WINOGRAD_SPLIT_MIN_THREADS);
    # 2 filter blocks (72 filters: 4 + 5 strips; grad_x 64: 4 + 4) on 8 and 16
    ("f2_split", (2, 64, 13, 15), (72, 64, 3, 3), {1: (1, 1), 2: (1, 1), 8: (2, 2),
                                                   16: (2, 2)}),
    # forward: 3 blocks of 4 strips on 8 and 16 threads; grad_x (40 filters) one region
    ("f2_split_3", (1, 40, 18, 22), (96, 40, 3, 3), {1: (1, 1), 2: (1, 1), 8: (3, 1),
                                                     16: (3, 1)}),
]


@pytest.mark.skipif(not OWN, reason=OWN_ONLY.replace("phases and weight_dot", "F(2x2)'s split"))
@pytest.mark.parametrize("where", ["finite", "nan", "inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", F2_SPLIT, ids=[c[0] for c in F2_SPLIT])
def test_f2_split_gives_the_same_bits_on_1_2_8_16_threads(full_rate, torch, case, dtype, where):
    """The full-rate plans of F(2x2) (float32: the one-region split on 1 and 2 threads, the
    two-region split on 8 and 16 as F2_SPLIT says; float64: per image on BLAS) give the same
    bits for forward, grad_x, grad_weight and grad_bias; a NaN or inf in one image is NaN /
    inf exactly where torch's is (that image falls back, the other keeps the split)."""
    name, xs, ws, fps = case
    rng = np.random.default_rng(21)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    if where == "nan":
        x[0, 3, 5, 7] = np.nan
    elif where == "inf":
        x[0, 2, 4, 4], x[0, 5, 1, 2] = np.inf, -np.inf
    if dtype == np.float32 and where == "finite":
        for nt in THREADS:
            convkit.set_num_threads(nt)
            plan = cc._plan(x, w, (1, 1), (1,) * 4, (1, 1), 1)[3]
            got = tuple(st.params.get("fparts", 1) for st in (plan.forward, plan.grad_x))
            assert (plan.forward.algo, plan.grad_x.algo, got) == ("winograd", "winograd",
                                                                   fps[nt]), (nt, plan)
        convkit.set_num_threads(None)
    gy = np.random.default_rng(22).standard_normal(
        (xs[0], ws[0], xs[2], xs[3])).astype(dtype)

    runs = _on_threads(lambda: _same_conv_passes(x, w, b, gy))
    for nt in THREADS[1:]:
        assert _bits(runs[nt]) == _bits(runs[1]), nt
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    bt = torch.tensor(b.astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, padding=1)
    yt.backward(torch.tensor(gy.astype(np.float64)))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for got, ref in zip(runs[1], (yt, xt.grad, wt.grad, bt.grad)):
        ref = ref.detach().numpy()
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(got), test(ref))
        fin = np.isfinite(ref)
        scale = max(1.0, np.abs(ref[fin]).max())
        assert np.abs(got[fin] - ref[fin]).max() <= tol * scale


@pytest.mark.skipif(not ok or not (cc._OWN_SGEMM or cc._FIXED_SGEMM),
                    reason="the fixed-order float32 GEMMs (own AVX-512 or csrc/fgemm.h)")
@pytest.mark.parametrize("packed", [True, False], ids=["prepacked", "plain"])
def test_f2_split_kernel_gives_the_one_region_bits(packed):
    """conv2d_forward_winograd with tile 2 and fparts (the kernel itself, any tile rows,
    filter blocks and team, F not a multiple of 8, odd sides, padding 0 to 2) against the
    one-region split: the same bits (each output one chain over the channels on the own GEMM
    or csrc/fgemm.h), filters prepacked by block (wino2_pack_filters) or read in place."""
    from convkit.cpu import _conv_winograd as W
    rng = np.random.default_rng(23)
    for N, C, F, H, Wd, pad, trows, fparts, team in (
            (2, 32, 40, 9, 11, 1, 2, 3, 4), (1, 64, 128, 14, 14, 1, 3, 4, 8),
            (3, 16, 17, 7, 6, 0, 5, 2, 3), (1, 24, 200, 10, 10, 2, 1, 25, 16),
            (2, 20, 8, 5, 5, 1, 6, 1, 2)):
        x = rng.standard_normal((N, C, H, Wd)).astype(np.float32)
        w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(F).astype(np.float32)
        Ho, Wo = H + 2 * pad - 2, Wd + 2 * pad - 2
        U = np.zeros((16, F, C), np.float32)
        W.winograd_filters(w, U, 1, False)
        th, tw = (Ho + 1) // 2, (Wo + 1) // 2
        per = 16 * (C + F) * N * th * tw + 8 * (2 * tw + 2)
        one = np.zeros((N, F, Ho, Wo), np.float32)
        W.conv2d_forward_winograd(x, U, b, True, one, np.zeros(per, np.float32), per, N * th,
                                  pad, pad, 1, cc._packed_a(U) if packed else cc._NO_PACK)
        shared, per = W.wino2_split_floats(N, C, F, Ho, Wo, trows, fparts)
        ws = np.full(shared + team * per, np.nan, np.float32)       # (nothing read unwritten)
        apk = cc._packed_a_blocks(U, fparts, team) if packed else cc._NO_PACK
        two = np.full_like(one, np.nan)
        W.conv2d_forward_winograd(x, U, b, True, two, ws, per, trows, pad, pad, team, apk,
                                  fparts=fparts)
        assert one.tobytes() == two.tobytes(), (N, C, F, H, Wd, trows, fparts, team)
        with pytest.raises(ValueError, match="too small"):
            W.conv2d_forward_winograd(x, U, b, True, two, ws[:-1], per, trows, pad, pad, team,
                                      apk, fparts=fparts)


# ----------------------------------------------- the im2col forward's split (issue 16, im2col16)
# From tuning.IM2COL_SPLIT_MIN_THREADS threads the im2col forward takes the rows per task whose
# busiest thread ends first under the static schedule (conv_plan.im2col_rows) and grad_x on
# csrc/fgemm.h at least a task a thread (conv_plan.grad_x_chans); many_core_split.py's EXTRA
# shapes (a batch of 8): strided_14 and convt28_adj lost 24 % of 16 threads on the own GEMM,
# k4s2_56 13 % (now an even split in 8 blocks: the "blocks" param), strided_14 50 % (forward,
# grad_x) on the EPYC's caps.
_IM2COL16 = {"strided_14": ((8, 64, 28, 28), (128, 64, 3, 3), 2, 1),
             "convt28_adj": ((8, 32, 56, 56), (64, 32, 4, 4), 2, 1),
             # 4-row pieces of 28 rows: 7 blocks (56 tasks, 13 % lost); 8 even blocks of 3 / 4
             "k4s2_56": ((8, 64, 56, 56), (64, 64, 4, 4), 2, 1)}


def _many_core_split():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "many_core_split.py"
    spec = importlib.util.spec_from_file_location("many_core_split", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_im2col_split_leaves_at_most_a_tenth_of_16_threads_idle():
    """By the plan's arithmetic (the own GEMM's panels as gemm_columns costs them, OpenMP's
    static chunks; fgemm.h's columns as they are) the forwards of _IM2COL16 on the Xeon's and
    Zen 4's caps, and strided_14's forward and grad_x on the EPYC's, lose <= 10 % of 16
    threads -- here and in bench/many_core_split.py's model."""
    machines = {"own_gemm": tuple(_IM2COL16), "own_half_rate": ("strided_14",),
                "blas_rowgemm_fgemm": ("strided_14",)}
    for machine, names in machines.items():
        caps = P.ConvCaps(**_CAPS[machine])
        for name in names:
            xs, ws, st, pad = _IM2COL16[name]
            s = P.ConvShape.of(xs, ws, (st, st), (pad,) * 4, (1, 1), 1)
            N, (Ho, Wo) = xs[0], s.out
            plan = P.plan_conv(s, np.float32, 16, caps, 256 * 2**20)
            fw = plan.forward
            assert fw.algo == "im2col" and fw.threads == 16, (machine, name, fw)
            rows, k = fw.params["rows"], fw.params.get("blocks", 0)
            assert bool(k) == (name == "k4s2_56"), fw
            L = ([((b + 1) * Ho // k - b * Ho // k) * Wo for b in range(k)] if k else
                 [min(rows, Ho - h) * Wo for h in range(0, Ho, rows)]) * N
            costs = [P.gemm_columns(c, P.gemm_panel(ws[0])) for c in L] if caps.own_sgemm else L
            assert N * Ho * Wo / (16 * P.static_span(costs, 16)) >= 0.9, (machine, name, rows)
            if machine == "blas_rowgemm_fgemm":
                gx = plan.grad_x
                tasks = N * -(-xs[1] // gx.params["chans_x"])
                assert gx.algo == "im2col" and tasks / (16 * -(-tasks // 16)) >= 0.9, gx
    M = _many_core_split()
    for cname in ("avx512", "zen4", "epyc"):
        for _, name, label, algo, fixed, res in M.table([cname], [2, 16], True,
                                                         out=io.StringIO(), md=True):
            if name.rstrip("*") in _IM2COL16 and algo == "im2col" and (
                    label == "forward" or (cname == "epyc" and label == "grad_x")):
                assert fixed and res[16]["lost"] <= 0.10, (cname, name, label, res[16])


@pytest.mark.parametrize("machine", list(_CAPS))
def test_im2col_split_keeps_the_1_and_2_thread_plans(machine, monkeypatch):
    """1 and 2 threads plan as before the split (the rule off: IM2COL_SPLIT_MIN_THREADS past
    any team) for the suite's layers and _IM2COL16; 16 threads do not for _IM2COL16."""
    from convkit.benchmark.cases import CASES, ConvCase
    from convkit.cpu import tuning as T
    caps = P.ConvCaps(**_CAPS[machine])
    shapes = [(P.ConvShape.of((c.N, c.C, c.H, c.W), (c.F, c.C // c.groups, c.K, c.K),
                              (c.stride,) * 2, (c.pad,) * 4, (1, 1), c.groups), False)
              for c in CASES if type(c) is ConvCase]
    shapes += [(P.ConvShape.of(xs, ws, (st, st), (pad,) * 4, (1, 1), 1), True)
               for xs, ws, st, pad in _IM2COL16.values()]

    def plans(nts):
        return [P.plan_conv(s, dt, nt, caps, 256 * 2**20)
                for s, _ in shapes for nt in nts for dt in (np.float32, np.float64)]
    new = plans((1, 2))
    new16 = [P.plan_conv(s, np.float32, 16, caps, 256 * 2**20) for s, x in shapes if x]
    monkeypatch.setattr(T, "IM2COL_SPLIT_MIN_THREADS", 1 << 30)
    assert plans((1, 2)) == new
    old16 = [P.plan_conv(s, np.float32, 16, caps, 256 * 2**20) for s, x in shapes if x]
    if machine != "blas":           # (plain BLAS: blocks set by the image alone, unchanged)
        assert old16 != new16


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rate", ["this_cpu", "full_rate"])
@pytest.mark.parametrize("name", list(_IM2COL16))
def test_im2col_split_gives_the_same_bits_on_1_2_8_16_threads(monkeypatch, torch, name, rate,
                                                              dtype):
    """_IM2COL16's forward, grad_x, grad_weight and grad_bias give the same bits on 1, 2, 8 and
    16 threads (float32 on the own GEMM or csrc/fgemm.h: the new row blocks at 8 and 16; the
    full-rate plans forced as CONVKIT_AVX512_FULL_RATE=1 does), close to torch's float64."""
    if rate == "full_rate":
        monkeypatch.setattr(cc, "_FULL_RATE", True)
    cc._caps_by_level.clear()
    cc._plans.clear()
    xs, ws, st, pad = _IM2COL16[name]
    rng = np.random.default_rng(16)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    try:
        if dtype == np.float32 and (OWN or cc._FIXED_SGEMM):
            rows = set()
            for nt in THREADS:
                convkit.set_num_threads(nt)
                plan = cc._plan(x, w, (st, st), (pad,) * 4, (1, 1), 1)[3]
                if plan.forward.algo != "im2col":
                    pytest.skip(f"{name}'s forward takes {plan.forward.algo} here")
                rows.add((plan.forward.params["rows"], plan.forward.params.get("blocks")))
            convkit.set_num_threads(None)
            assert len(rows) > 1, rows          # (the split differs from 1 thread's)

        _same_bits_near_torch(x, w, b, st, pad, torch)
    finally:
        cc._caps_by_level.clear()
        cc._plans.clear()


def _same_bits_near_torch(x, w, b, st, pad, torch, groups=1):
    """The forward, grad_x, grad_weight and grad_bias of conv(x, w, b) on 1, 2, 8 and 16
    threads: the same bits, close to torch's float64."""
    dtype = x.dtype

    def passes():
        with convkit.use_backend("cpu"):
            y = convkit.conv2d_forward(x, w, b, stride=st, padding=pad, groups=groups)
            gy = np.random.default_rng(17).standard_normal(y.shape).astype(dtype)
            g = convkit.conv2d_backward(gy, x, w, stride=st, padding=pad, groups=groups,
                                        has_bias=True)
            return (y, gy) + tuple(g)

    runs = _on_threads(passes)
    for nt in THREADS[1:]:
        assert _bits(runs[nt]) == _bits(runs[1]), nt
    y, gy, gx, gw, gb = runs[1]
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    bt = torch.tensor(b.astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=st, padding=pad, groups=groups)
    yt.backward(torch.tensor(gy.astype(np.float64)))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for got, ref in zip((y, gx, gw, gb), (yt, xt.grad, wt.grad, bt.grad)):
        ref = ref.detach().numpy()
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max())


# ------------------------------------------ the BLAS im2col splits (issue 16, helper epyc13)
# On BLAS (float64 on every machine; float32 without AVX2 -- CONVKIT_DISABLE_AVX512=1 +
# CONVKIT_DISABLE_FGEMM=1 here -- and the EPYC's float32 grad_weight) every im2col split is set
# by the layer (OpenBLAS's bits follow a GEMM's shape).  _IM2COL16's splits left 12-28 % of 16
# threads idle: the forward in 5 / 7 row blocks an image (now a power of two of even ones,
# conv_plan.image_blocks), grad_x in 29 + 29 + 6 channels (now 2 x 32, grad_x_chans),
# grad_weight in 6 x 2, 11 x 7, 6 x 7 column blocks x parts (now 4 x 4, 8 x 2, 4 x 4:
# blas_weight_split).  Expected params on BLAS (float64; float32 where the pass takes im2col);
# g2_14: strided_14 in 2 groups (2 x 2 blocks of 48 x 4 parts in the kernel's group-major order).
_BLAS13 = {"strided_14": {"blocks": 4, "chans_x": 32, "units_w": 48, "nsplit": 4},
           "k4s2_56": {"blocks": 8, "units_w": 32, "nsplit": 2},
           "convt28_adj": {"blocks": 8, "units_w": 32, "nsplit": 4},
           "g2_14": {"blocks": 4, "chans_x": 16, "units_w": 48, "nsplit": 4}}
_BLAS13_SHAPES = dict({k: v + (1,) for k, v in _IM2COL16.items()},
                      g2_14=((8, 64, 28, 28), (128, 32, 3, 3), 2, 1, 2))


def _blas13_params(name, dtype):
    """Assert _BLAS13[name]'s params at every thread count for the passes that take im2col on
    BLAS in this process (float32's forward and grad_x on csrc/fgemm.h follow the team: not
    checked); returns (x, w, b, stride, padding, groups, the params seen)."""
    xs, ws, st, pad, groups = _BLAS13_SHAPES[name]
    rng = np.random.default_rng(13)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    want, seen = dict(_BLAS13[name]), set()
    if dtype == np.float32 and cc._FIXED_SGEMM:     # (forward, grad_x on csrc/fgemm.h)
        want.pop("blocks", None)
        want.pop("chans_x", None)
    for nt in THREADS:
        convkit.set_num_threads(nt)
        plan = cc._plan(x, w, (st, st), (pad,) * 4, (1, 1), groups)[3]
        for key, step in (("blocks", plan.forward), ("chans_x", plan.grad_x),
                          ("units_w", plan.grad_weight), ("nsplit", plan.grad_weight)):
            if key in want and step.algo == "im2col":
                assert step.params.get(key) == want[key], (name, nt, key, step)
                seen.add(key)
    convkit.set_num_threads(None)
    return x, w, b, st, pad, groups, seen


@pytest.mark.parametrize("name", list(_BLAS13))
def test_blas_im2col_splits_give_the_same_bits_on_1_2_8_16_threads(name, torch):
    """float64 (OpenBLAS on every machine): _BLAS13's forward row blocks, grad_x channel
    blocks and grad_weight blocks x parts at 1, 2, 8 and 16 threads, the same bits on each,
    close to torch's float64."""
    cc._plans.clear()
    try:
        x, w, b, st, pad, groups, seen = _blas13_params(name, np.float64)
        assert seen == set(_BLAS13[name]), seen
        _same_bits_near_torch(x, w, b, st, pad, torch, groups)
    finally:
        cc._plans.clear()


@pytest.mark.parametrize("env", ["CONVKIT_DISABLE_AVX512", "CONVKIT_DISABLE_AVX512,"
                                 "CONVKIT_DISABLE_FGEMM"])
def test_blas_im2col_splits_in_float32_on_blas(env):
    """float32 with the own GEMM off (the EPYC's plans: strided_14's grad_weight on OpenBLAS)
    and with csrc/fgemm.h off too (a CPU without AVX2: every pass of strided_14 on OpenBLAS),
    in a fresh process (the switches are read once): _BLAS13's splits where the pass takes
    im2col, the same bits on 1, 2, 8 and 16 threads, close to torch's float64."""
    import os
    import subprocess
    import sys
    pytest.importorskip("torch")
    code = f"""
import sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import numpy as np
import torch
import test_cpu_many_threads as t
assert not t.cc._OWN_SGEMM
for name in t._BLAS13:
    x, w, b, st, pad, groups, seen = t._blas13_params(name, np.float32)
    if name in ("strided_14", "g2_14"):
        want = {{"units_w", "nsplit"}} | (set() if t.cc._FIXED_SGEMM else
                                            {{"blocks", "chans_x"}})
        assert seen == want, seen
    t._same_bits_near_torch(x, w, b, st, pad, torch, groups)
    print(name, sorted(seen))
"""
    envs = dict(os.environ, **{k: "1" for k in env.split(",")})
    out = subprocess.run([sys.executable, "-c", code], env=envs, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("\n") == len(_BLAS13), out.stdout


def test_blas_im2col_splits_leave_at_most_a_tenth_of_16_threads_idle():
    """bench/many_core_split.py's model: _IM2COL16's im2col passes on the plain BLAS caps and
    strided_14's on the EPYC's lose <= 10 % of 16 threads, their sums cut alike at 2 and 16
    threads; blas_weight_split's new blocks x parts leave <= 10 % idle on 2, 4, 8, 16 threads
    by its own costs.  (subpixel grad_x, k4s2_56 / convt28_adj's on BLAS, stays at 18 %: its
    29 x 30 window positions per phase for a 28 x 28 output cost 10 % on one thread.)"""
    M = _many_core_split()
    rows = [r for r in M.table(["blas", "epyc"], [2, 16], True, out=io.StringIO(), md=True)
            if r[1].rstrip("*") in _IM2COL16 and r[3] == "im2col"]
    assert len(rows) == 3 + 2 + 2 + 3, [r[:4] for r in rows]     # (subpixel grad_x: not im2col)
    for cname, name, label, algo, fixed, res in rows:
        assert fixed and res[16]["lost"] <= 0.10, (cname, name, label, res[16])
    for name, want in _BLAS13.items():
        xs, ws, st, pad, g = _BLAS13_SHAPES[name]
        s = P.ConvShape.of(xs, ws, (st, st), (pad,) * 4, (1, 1), g)
        p = P.plan_conv(s, np.float64, 16, P.ConvCaps(False, 2), 256 * 2**20).grad_weight.params
        Ho, Wo = s.out
        costs = P.blas_weight_costs(xs[0], g, ws[0] // g, ws[1] * ws[2], ws[3], Ho, Wo,
                                    p["units_w"], p["nsplit"], p["rows_w"])
        for team in (2, 4, 8, 16):
            assert sum(costs) / (team * P.static_span(costs, team)) >= 0.9, (name, team)


@pytest.mark.parametrize("machine", list(_CAPS))
def test_blas_weight_split_keeps_the_splits_that_fill_16_threads(machine, monkeypatch):
    """The suite's layers keep their plans (1, 2, 16 threads, float32 and float64): the old
    blocks and parts (tuning.BLAS_W_IDLE past any idle) are what the rule gives them."""
    from convkit.benchmark.cases import CASES, ConvCase
    from convkit.cpu import tuning as T
    caps = P.ConvCaps(**_CAPS[machine])
    shapes = [P.ConvShape.of((c.N, c.C, c.H, c.W), (c.F, c.C // c.groups, c.K, c.K),
                             (c.stride,) * 2, (c.pad,) * 4, (1, 1), c.groups)
              for c in CASES if type(c) is ConvCase]

    def plans():
        return [P.plan_conv(s, dt, nt, caps, 256 * 2**20)
                for s in shapes for nt in (1, 2, 16) for dt in (np.float32, np.float64)]
    new = plans()
    monkeypatch.setattr(T, "BLAS_W_IDLE", 2.0)
    assert plans() == new
# ------------------------------------------------------------------ the batch path's many-thread
# blocks (issue 16): on the full-rate caps (no tiny-map Winograd: cc._WINOTINY off, as a CPU
# without it) the tiny maps take "batch"; its blocks of images (6 of 12 on 64 images: 67 % of 16
# threads idle) and grad_weight's 2 parts (88 %) left most of 16 threads idle.  Above 2 threads
# the plan splits finer where no sum is cut (conv_plan.batch_even_images, batch_weight_blocks).
BATCH16 = [("tiny_16_8x8", (64, 16, 8, 8), (16, 16, 3, 3)),
           ("tiny_32_4x4", (64, 32, 4, 4), (32, 32, 3, 3)),
           ("small_16_8x8", (128, 16, 8, 8), (16, 16, 3, 3)),
           ("odd_24_6x6", (37, 24, 6, 6), (24, 24, 3, 3))]     # ragged blocks, 3 filter tiles


@pytest.fixture
def full_rate_batch(monkeypatch, full_rate):
    monkeypatch.setattr(cc, "_WINOTINY", False)
    cc._caps_by_level.clear()
    cc._plans.clear()
    yield
    monkeypatch.undo()
    cc._caps_by_level.clear()
    cc._plans.clear()


@pytest.mark.skipif(not OWN, reason=OWN_ONLY.replace("phases and weight_dot", "the batch split"))
@pytest.mark.parametrize("where", ["finite", "nonfinite"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", BATCH16, ids=[c[0] for c in BATCH16])
def test_batch_many_thread_blocks_give_the_same_bits_on_1_2_8_16_threads(full_rate_batch, torch,
                                                                         case, dtype, where):
    """float32: 1 and 2 threads the old blocks, 8 and 16 finer image blocks and grad_weight
    (channel x filter) blocks -- the same bits for y, grad_x, grad_weight, grad_bias, and
    torch float64's values (a NaN and infs in x: NaN / inf exactly where torch's are);
    float64 (BLAS: an image a block) unchanged."""
    name, xs, ws = case
    rng = np.random.default_rng(31)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    if where == "nonfinite":
        x[1, 2, 3, 1], x[xs[0] - 2, 0, 0, 2], x[xs[0] // 2, 5, 2, 2] = np.nan, np.inf, -np.inf
    if dtype == np.float32 and where == "finite":
        blocks = {}
        for nt in THREADS:
            convkit.set_num_threads(nt)
            plan = cc._plan(x, w, (1, 1), (1,) * 4, (1, 1), 1)[3]
            assert (plan.forward.algo, plan.grad_x.algo, plan.grad_weight.algo) == \
                ("batch",) * 3, (nt, plan)
            p = plan.grad_weight.params
            blocks[nt] = (plan.forward.params["imgs"], p["chans_w"], p.get("filters_w"))
        convkit.set_num_threads(None)
        assert blocks[1] == blocks[2] and blocks[1][2] is None, blocks
        for nt in (8, 16):      # (finer image blocks; channel or filter blocks)
            assert blocks[nt][0] < blocks[1][0] and blocks[nt][1:] != blocks[1][1:], blocks
    gy = np.random.default_rng(32).standard_normal((xs[0], ws[0], xs[2], xs[3])).astype(dtype)

    runs = _on_threads(lambda: _same_conv_passes(x, w, b, gy))
    for nt in THREADS[1:]:
        assert _bits(runs[nt]) == _bits(runs[1]), nt
    xt, wt, gt = (torch.from_numpy(a.astype(np.float64)).requires_grad_(True) for a in (x, w, gy))
    bt = torch.from_numpy(b.astype(np.float64)).requires_grad_(True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, padding=1)
    yt.backward(gt)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for got, want in zip(runs[16], (yt, xt.grad, wt.grad, bt.grad)):
        want = want.detach().numpy()
        for test in (np.isnan, np.isposinf, np.isneginf):
            assert np.array_equal(test(got), test(want)), (name, test.__name__)
        fin = np.isfinite(want)
        assert np.abs(got[fin] - want[fin]).max(initial=0) <= \
            tol * max(1.0, np.abs(want[fin]).max(initial=0)), name


def test_batch_blocks_fill_16_threads_and_keep_the_1_2_thread_plans(monkeypatch):
    """The full-rate caps' batch plans: forward and grad_x lose <= 10 % of 8 / 16 / 64 threads
    (static schedule, own_gemm_cols); grad_weight's blocks lose less than the old (tiny_16_8x8:
    2 tasks, 88 % of 16 threads) within tuning.BATCH_W_MAX_EXTRA more work, the busiest
    thread's work on 16 threads at most 0.3 of the old -- not 10 %: the parts fix the sums (no
    finer cut of the batch), and finer channel / filter blocks cost partial panels and
    columns built again; kimgs and nsplit (the sums' chains) as on 1 thread; 1 and 2 threads
    the old plans (the rules replaced by identities give the same steps)."""
    from convkit.cpu import tuning as T
    caps = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, avx512_full_rate=True)
    limit = 256 * 2**20
    plans = {}
    for _, xs, ws in BATCH16:
        s = P.ConvShape.of(xs, ws, (1, 1), (1,) * 4, (1, 1), 1)
        for nt in (1, 2, 8, 16, 64):
            plans[xs, nt] = P.plan_conv(s, np.float32, nt, caps, limit)
    monkeypatch.setattr(P, "batch_even_images", lambda N, imgs, HoWo, nt: imgs)
    monkeypatch.setattr(P, "batch_weight_blocks", lambda *a: (a[7], a[3]))
    for _, xs, ws in BATCH16:
        s = P.ConvShape.of(xs, ws, (1, 1), (1,) * 4, (1, 1), 1)
        N, C, H, W = xs
        F, KK, HoWo, HpWp = ws[0], 9, H * W, (H + 2) * (W + 2)
        one = plans[xs, 1].grad_weight.params
        for nt in (1, 2, 8, 16, 64):
            plan, old = plans[xs, nt], P.plan_conv(s, np.float32, nt, caps, limit)
            assert plan.forward.algo == plan.grad_x.algo == plan.grad_weight.algo == "batch"
            if nt <= 2:
                assert plan == old, (xs, nt)
                continue
            def img_lost(i):
                costs = [P.own_gemm_cols(min(i, N - n0) * HoWo) for n0 in range(0, N, i)]
                return P._static_lost(costs, N * HoWo, nt)
            for st, was in ((plan.forward, old.forward), (plan.grad_x, old.grad_x)):
                i = st.params["imgs"]
                # (odd_24_6x6's 36-position images: any block has a partial panel)
                assert img_lost(i) <= (0.1 if N != 37 else img_lost(was.params["imgs"])), \
                    (xs, nt, i)
            p = plan.grad_weight.params
            assert (p["kimgs"], p["nsplit"]) == (one["kimgs"], one["nsplit"]), (xs, nt)
            fw = p.get("filters_w", F)
            assert fw == F or fw % 8 == 0
            args = (N, C, 1, F, KK, HpWp, HoWo)
            useful = P.batch_weight_useful(*args)
            new = P.batch_weight_costs(*args, p["chans_w"], p["nsplit"], fw)
            prev = P.batch_weight_costs(*args, one["chans_w"], one["nsplit"], F)
            assert P._static_lost(new, useful, nt) < P._static_lost(prev, useful, nt), (xs, nt)
            assert sum(new) <= (1 + T.BATCH_W_MAX_EXTRA) * sum(prev), (xs, nt)
            # (the busiest thread's work: at most 0.3 of the old on 16 threads)
            assert nt != 16 or P.static_span(new, nt) <= 0.3 * P.static_span(prev, nt), xs
            assert sum(new) <= (1 + T.BATCH_W_MAX_EXTRA) * sum(prev), (xs, nt)


# ------------------------------------------ F(4x4) on BLAS, staged (issue 16, helper wino4blas13)
# On BLAS (float64 everywhere; float32 without csrc/fgemm.h) F(4x4)'s tasks are tile rows of
# one image (per_image: the GEMMs' shapes set by the image: the bits); where they leave > 10 % of
# 3+ threads idle (rpn_3x3's 2 tasks, res_14's and res_28's 8, vgg_56's 24 on 16 threads) the
# blocks past the team's whole rounds go in three regions of the same GEMM calls
# (conv_plan.winograd4_staged, the kernel's staged and lead).
_W4_LAYERS = {"vgg_56": (8, 64, 56, 56, 64), "res_28": (8, 128, 28, 28, 128),
              "res_14": (8, 256, 14, 14, 256), "rpn_3x3": (1, 512, 38, 50, 512)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_f4_staged_kernel_gives_the_one_region_bits(dtype):
    """conv2d_forward_winograd per_image with staged (the kernel itself, any lead, team, tile
    rows, odd sides, padding 0 to 2, images of several blocks) against the one-region tasks:
    the same bits (every GEMM the same call); nothing read that it did not write (ws NaN); a
    workspace one element short raises."""
    from convkit.cpu import _conv_winograd as W
    rng = np.random.default_rng(31)
    for N, C, F, H, Wd, pad, trows, lead, team in (
            (2, 16, 24, 13, 11, 1, 2, 0, 4), (3, 20, 8, 10, 17, 0, 1, 4, 2),
            (1, 32, 40, 22, 9, 2, 3, 1, 8), (2, 8, 12, 7, 7, 1, 5, 2, 3),
            (2, 24, 16, 18, 18, 1, 2, 5, 16)):
        x = rng.standard_normal((N, C, H, Wd)).astype(dtype)
        w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
        b = rng.standard_normal(F).astype(dtype)
        Ho, Wo = H + 2 * pad - 2, Wd + 2 * pad - 2
        U = np.zeros((36, F, C), dtype)
        W.winograd_filters(w, U, 1, False)
        tw = (Wo + 3) // 4
        per = 36 * (C + F) * trows * tw + W.winograd4_scratch(trows, tw) + \
            P.winograd_plane_pad(4)
        one = np.zeros((N, F, Ho, Wo), dtype)
        W.conv2d_forward_winograd(x, U, b, True, one, np.zeros(per, dtype), per, trows, pad,
                                  pad, 1, cc._NO_PACK, 4, True)
        shared, scr = W.winograd4_staged_floats(N, C, F, Ho, Wo, trows, lead)
        per = per if lead else scr
        ws = np.full(shared + team * per, np.nan, dtype)
        got = np.full_like(one, np.nan)
        W.conv2d_forward_winograd(x, U, b, True, got, ws, per, trows, pad, pad, team,
                                  cc._NO_PACK, 4, True, staged=True, lead=lead)
        assert one.tobytes() == got.tobytes(), (N, C, F, H, Wd, trows, lead, team)
        with pytest.raises(ValueError, match="too small"):
            W.conv2d_forward_winograd(x, U, b, True, got, ws[:-1], per, trows, pad, pad, team,
                                      cc._NO_PACK, 4, True, staged=True, lead=lead)
        nrb = N * -(-((Ho + 3) // 4) // trows)
        with pytest.raises(ValueError, match="staged needs"):
            W.conv2d_forward_winograd(x, U, b, True, got, ws, per, trows, pad, pad, team,
                                      cc._NO_PACK, 4, True, staged=True, lead=nrb + 1)


def test_f4_staged_where_blas_tasks_leave_the_team_idle():
    """The suite's F(4x4) layers on BLAS (the "blas" caps' float32 plans and float64 on every
    machine): one and two threads keep the one-region tasks; on 16 the forward and grad_x stage
    the blocks past the team's whole rounds (vgg_56: 16 of 24 blocks one-region, 8 staged;
    the others all), the same tile rows (the bits), and bench/many_core_split.py's model loses
    at most a tenth of the 16 threads; under a limit that holds no staged V and M, the
    one-region plan.  The fixed-order plans (zen4's float32) never stage."""
    mcs = _many_core_split()
    blas = P.ConvCaps(**_CAPS["blas"])
    zen4 = P.ConvCaps(**_CAPS["own_half_rate"], winotiny=True)
    limit = 256 * 2**20
    leads = {"vgg_56": 16, "res_28": 0, "res_14": 0, "rpn_3x3": 0}
    for name, (N, C, H, W, F) in _W4_LAYERS.items():
        s = P.ConvShape.of((N, C, H, W), (F, C, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
        for caps, dtype in ((blas, np.float32), (blas, np.float64), (zen4, np.float64)):
            trows = None
            for nt in (1, 2, 16):
                plan = P.plan_conv(s, dtype, nt, caps, limit)
                for st in (plan.forward, plan.grad_x):
                    p = st.params
                    assert (st.algo, p["tile"], p["per_image"]) == ("winograd", 4, True), st
                    trows = trows or p["trows"]
                    assert p["trows"] == trows, (name, nt, st)
                    if nt <= 2:
                        assert "staged" not in p and st.threads == nt, (name, nt, st)
                        continue
                    assert st.threads == 16 and p["staged"] and p["lead"] == leads[name], st
            for st, which in ((plan.forward, "f"), (plan.grad_x, "x")):
                row = mcs.analyse(st, s, False, np.dtype(dtype).itemsize, which)
                assert row["lost"] <= 0.1 and row["lost_t"] <= 0.1, (name, which, row)
        st = P.plan_conv(s, np.float64, 16, blas, limit).forward
        u = 36 * C * F * 8
        tight = P.plan_conv(s, np.float64, 16, blas,
                            u + (st.params["shared"] + 16 * st.params["per_thread"]) * 8 - 8)
        assert "staged" not in tight.forward.params, (name, tight.forward)
    zs = P.ConvShape.of((8, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
    assert "staged" not in P.plan_conv(zs, np.float32, 16, zen4, limit).forward.params


def test_f4_staged_float32_on_blas_gives_the_same_bits_on_1_2_8_16_threads():
    """float32 with its GEMMs on OpenBLAS's sgemm (CONVKIT_DISABLE_AVX512=1
    CONVKIT_DISABLE_FGEMM=1, in a fresh process: the switches are read once): 3x3 convs whose
    forward and grad_x stage on 8 and / or 16 threads (lead 8 of 10 blocks; all of 2) give
    the one-region bits of 1 and 2 threads; close to torch float64."""
    import os
    import subprocess
    import sys
    code = """
import numpy as np, convkit
from convkit.cpu import conv as cc
assert not cc._OWN_SGEMM and not cc._FIXED_SGEMM
import torch
rng = np.random.default_rng(37)
# (10 images: lead 8 of 10 blocks on 8 threads, one-region on 16 -- 10 staged blocks would not
# fit a round at tuning.WINOGRAD4_STAGED_COST; 2 images: all staged on 8 and 16)
for N, want in ((10, {1: None, 2: None, 8: 8, 16: None}), (2, {1: None, 2: None, 8: 0, 16: 0})):
    x = rng.standard_normal((N, 68, 52, 20)).astype(np.float32)
    w = (rng.standard_normal((64, 68, 3, 3)) / np.sqrt(9 * 68)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    gy = rng.standard_normal((N, 64, 52, 20)).astype(np.float32)
    runs, leads = {}, {}
    for nt in (1, 2, 8, 16):
        convkit.set_num_threads(nt)
        plan = cc._plan(x, w, (1, 1), (1,) * 4, (1, 1), 1)[3]
        leads[nt] = [(st.algo, st.params.get("tile"), st.params.get("lead"))
                     for st in (plan.forward, plan.grad_x)]
        with convkit.use_backend("cpu"):
            y = convkit.conv2d_forward(x, w, b, stride=1, padding=1)
            g = convkit.conv2d_backward(gy, x, w, stride=1, padding=1, has_bias=True)
        runs[nt] = [np.ascontiguousarray(a).tobytes() for a in (y, g[0])]
    for nt in (1, 2, 8, 16):
        assert leads[nt] == [("winograd", 4, want[nt])] * 2, (N, leads)
        assert runs[nt] == runs[1], (N, nt)
    xt = torch.tensor(x.astype(np.float64))
    yt = torch.nn.functional.conv2d(xt, torch.tensor(w.astype(np.float64)),
                                    torch.tensor(b.astype(np.float64)), padding=1).numpy()
    np.testing.assert_allclose(y, yt, rtol=1e-4, atol=1e-4)
print("ok")
"""
    env = dict(os.environ, CONVKIT_DISABLE_AVX512="1", CONVKIT_DISABLE_FGEMM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok"], out.stdout
# ------------------------------------------------------------------ BLAS's many-core splits
# (thirteenth session) on BLAS -- float64 on every machine, float32 without AVX2 (or with
# CONVKIT_DISABLE_AVX512=1 CONVKIT_DISABLE_FGEMM=1): the dense grad_weight's row blocks
# (tuning.BLAS_DENSE_W_BLOCKS), the batch grad_weight's parts (tuning.BLAS_BATCH_W_TASKS; past
# 2 parts added over the team), the pointwise grad_weight's filter blocks (BLAS_PW_W_TASKS,
# BLAS_PW_MIN_FILTERS) and parts of the batch (BLAS_PW_PART_MIN_K) -- all set by the layer.
# (id, x shape, w shape, padding, grad_weight's algorithm, params it takes on BLAS)
BLAS16 = [("dense_rows", (32, 64, 2, 2), (64, 64, 3, 3), 1, "dense", {"row_blocks": 16}),
          ("batch_parts", (64, 16, 8, 8), (16, 16, 3, 3), 1, "batch", {"nsplit": 16}),
          # (tiny_32_4x4: 8 parts of 128 products -- tuning.BLAS_BATCH_W_PART_MIN_K; float32
          # took 4 until helper last13)
          ("batch_parts_columns", (64, 32, 4, 4), (32, 32, 3, 3), 1, "batch",
           {"nsplit": 8, "chans_w": 16}),
          ("pointwise_filter_blocks", (2, 256, 5, 5), (256, 256, 1, 1), 0, "pointwise",
           {"filters_w": 64, "units_w": 64, "nsplit": 1}),
          ("pointwise_parts", (1, 40, 38, 50), (18, 40, 1, 1), 0, "pointwise",
           {"filters_w": 18, "nsplit": 2, "rows_w": 19})]


def _blas_float32():
    """float32 runs on BLAS here (no own GEMM, no fixed-order GEMM: the switches above)."""
    return ok and not cc._OWN_SGEMM and not cc._FIXED_SGEMM


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", BLAS16, ids=[c[0] for c in BLAS16])
def test_blas_splits_give_the_same_bits_on_1_2_8_16_threads(monkeypatch, torch, case, dtype):
    """BLAS16's grad_weight takes its layer-set blocks / parts on 1, 2, 8 and 16 threads alike,
    and y, grad_x, grad_weight, grad_bias have the same bits on each, close to torch's float64
    (float32 only where its GEMMs run on BLAS)."""
    name, xs, ws, pad, algo, want = case
    want = {k: v[np.dtype(dtype).itemsize] if isinstance(v, dict) else v
            for k, v in want.items()}    # (a value per itemsize)
    if dtype == np.float32 and not _blas_float32():
        pytest.skip("float32 GEMMs here run on the own or fixed-order GEMM, not BLAS")
    monkeypatch.setattr(cc, "_WINOTINY", False)     # (the batch path on the tiny maps)
    cc._caps_by_level.clear()
    cc._plans.clear()
    rng = np.random.default_rng(13)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    try:
        for nt in THREADS:
            convkit.set_num_threads(nt)
            st = cc._plan(x, w, (1, 1), (pad,) * 4, (1, 1), 1)[3].grad_weight
            assert st.algo == algo and {k: st.params[k] for k in want} == want, (nt, st)
        convkit.set_num_threads(None)

        def passes():
            with convkit.use_backend("cpu"):
                y = convkit.conv2d_forward(x, w, b, padding=pad)
                gy = np.random.default_rng(14).standard_normal(y.shape).astype(dtype)
                return (y, gy) + tuple(convkit.conv2d_backward(gy, x, w, padding=pad,
                                                               has_bias=True))

        runs = _on_threads(passes)
    finally:
        monkeypatch.undo()
        cc._caps_by_level.clear()
        cc._plans.clear()
    for nt in THREADS[1:]:
        assert _bits(runs[nt]) == _bits(runs[1]), nt
    y, gy, gx, gw, gb = runs[16]
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    bt = torch.tensor(b.astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, padding=pad)
    yt.backward(torch.tensor(gy.astype(np.float64)))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for got, ref in zip((y, gx, gw, gb), (yt, xt.grad, wt.grad, bt.grad)):
        ref = ref.detach().numpy()
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max()), name


def test_blas_plans_leave_at_most_a_tenth_of_16_threads_idle():
    """By bench/many_core_split.py's model on the "blas" caps: the dense layer's passes, the
    tiny maps' batch grad_weight and the suite's pointwise grad_weights lose <= 10 % of 16
    threads (they lost 50-88 %), with the same sum-cutting params on 2 and 16 threads, and
    rpn_cls1x1's grad_x on csrc/smallk.h too (88 %), tiny_32_4x4's grad_weight in 8 parts
    (51 %; float32 since helper last13); pw_14's grad_x in 2 channel blocks (50 %; float64
    since helper last13, float32 on BLAS since the session's end: one core x1.06-1.07)."""
    M = _many_core_split()
    passes = [("dense_2x2", lb) for lb in ("forward", "grad_x", "grad_weight")]
    passes += [(n, "grad_weight") for n in ("small_16_8x8", "tiny_16_8x8", "tiny_32_4x4",
                                            "pw_14", "rpn_cls1x1")]
    passes += [("rpn_cls1x1", "grad_x"), ("pw_14", "grad_x")]
    for dtype in (np.float32, np.float64):
        rows = {(name.rstrip("*"), label): (algo, fixed, res)
                for _, name, label, algo, fixed, res in M.table(
                    ["blas"], [2, 16], True, out=io.StringIO(), md=True, dtype=dtype)}
        for key in passes:
            algo, fixed, res = rows[key]
            assert fixed and res[16]["team"] == 16 and res[16]["lost"] <= 0.10, \
                (np.dtype(dtype).name, key, res[16])


@pytest.mark.parametrize("machine", ["own_gemm", "blas_rowgemm_fgemm", "own_half_rate"])
def test_blas_splits_leave_the_float32_plans_of_the_other_gemms(machine, monkeypatch):
    """The thirteenth session's BLAS constants (their old values: 4 dense blocks, 2 batch
    tasks, no pointwise filter blocks or parts) change no float32 plan of the own or the
    fixed-order GEMM's caps -- the suite's layers and many_core_split's extra shapes, on 1, 2
    and 16 threads -- and do change the "blas" caps' plans."""
    from convkit.cpu import tuning as T
    M = _many_core_split()
    shapes = [s for _, s, _ in M.shapes(True)]

    def plans(caps):
        return [P.plan_conv(s, np.float32, nt, caps, 256 * 2**20) for s in shapes
                for nt in (1, 2, 16)]
    caps, blas = P.ConvCaps(**_CAPS[machine]), P.ConvCaps(**_CAPS["blas"])
    new, new_blas = plans(caps), plans(blas)
    for k, v in (("BLAS_DENSE_W_BLOCKS", 4), ("BLAS_BATCH_W_TASKS", 2), ("BLAS_PW_W_TASKS", 0),
                 ("BLAS_PW_FWD_TASKS", 1)):
        monkeypatch.setattr(T, k, v)
    assert plans(caps) == new
    assert plans(blas) != new_blas


# ------------------------------------------------- csrc/smallk.h: pointwise grad_x, few filters
def _smallk_gx(gy, w, chans, pos, smallk=True):
    """grad_x of a pointwise conv by conv2d_backward_gemm alone (one thread, grad_x only)."""
    from convkit.cpu import _conv_im2col as im
    N, C, H, W = gy.shape[0], w.shape[1], gy.shape[2], gy.shape[3]
    dt = gy.dtype
    gx = np.full((N, C, H, W), np.nan, dt)
    e1, eg = np.zeros(1, dt), np.zeros((1, 1, 1, 1), dt)
    im.conv2d_backward_gemm(gy, np.zeros((N, C, H, W), dt), w, gx, eg, e1, 0, 1, H, chans, H,
                            1, 1, 0, 0, 1, 1, 1, True, True, False, 1, 1, e1, 0, pos, False,
                            256, None, smallk)
    return gx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 40, 5, 7, 18), (2, 13, 3, 11, 1), (1, 7, 4, 9, 32),
                                   (2, 6, 1, 16, 5), (1, 512, 6, 5, 18)])
def test_smallk_grad_x_cuts_no_sum(shape, dtype):
    """csrc/smallk.h (pointwise grad_x with few filters on the BLAS plans): each output one chain
    over the filters, so any blocks of channels (edge tiles of 1-5 rows) and runs of positions
    (edge tiles of 1..15 lanes, via the stack) give the bits of the whole image; those bits
    are close to float64 (a chain of K products); nothing outside grad_x's planes written."""
    N, C, H, W, K = shape
    rng = np.random.default_rng(K)
    gy = rng.standard_normal((N, K, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    base = _smallk_gx(gy, w, C, 0)
    ref = np.einsum("fc,nfp->ncp", w[:, :, 0, 0].astype(np.float64),
                    gy.reshape(N, K, -1).astype(np.float64)).reshape(base.shape)
    scale = np.einsum("fc,nfp->ncp", np.abs(w[:, :, 0, 0].astype(np.float64)),
                      np.abs(gy.reshape(N, K, -1).astype(np.float64))).reshape(base.shape)
    assert np.all(np.abs(base - ref) <= K * np.finfo(dtype).eps * scale)
    for chans in (1, 5, 6, 7, C):
        for pos in (1, 3, 8, 13, 17, 0):
            got = _smallk_gx(gy, w, chans, pos)
            assert got.tobytes() == base.tobytes(), (chans, pos)


def test_smallk_grad_x_where_blas_left_the_team_idle():
    """rpn_cls1x1's grad_x on BLAS (float64 on every machine, float32 without csrc/fgemm.h or the
    own GEMM) runs on csrc/smallk.h up to tuning.BLAS_PW_GX_SMALL_K filters: one run on 1
    thread, runs of positions that fill 16 threads to within 10 % (OpenBLAS's 2 image-set
    channel blocks left 88 % idle); more filters, or fewer channels than
    tuning.BLAS_PW_GX_SMALL_MIN_C, stay on OpenBLAS; the own GEMM's and
    csrc/fgemm.h's float32 plans take no smallk."""
    from convkit.cpu import conv_plan as P
    from convkit.cpu import tuning as T
    blas = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)
    lim = 256 * 2**20
    for F in (18, T.BLAS_PW_GX_SMALL_K, T.BLAS_PW_GX_SMALL_K + 1):
        s = P.ConvShape.of((1, 512, 38, 50), (F, 512, 1, 1), (1, 1), (0,) * 4, (1, 1), 1)
        for caps, dt in ((blas, np.float32), (blas, np.float64),
                         (P.ConvCaps(**_CAPS["own_half_rate"]), np.float64),
                         (_EPYC, np.float64)):
            for nt in (1, 2, 16):
                st = P.plan_conv(s, dt, nt, caps, lim).grad_x
                assert st.algo == "pointwise" and st.threads == nt, st
                if F > T.BLAS_PW_GX_SMALL_K:
                    assert "smallk_x" not in st.params, st
                    continue
                assert st.params["smallk_x"] and st.params["chans_x"] == 512, st
                L = st.params["pos_x"]
                assert (L == 1900) if nt == 1 else (L % 16 == 0 or L == -(-1900 // nt)), st
                costs = [-(-min(L, 1900 - q) // 16) * 16 for q in range(0, 1900, L)]
                assert 1900 / (nt * P.static_span(costs, nt)) >= 0.9, (nt, L)
        for caps in (_EPYC, P.ConvCaps(**_CAPS["own_half_rate"])):
            for nt in (1, 2, 16):
                assert "smallk_x" not in P.plan_conv(s, np.float32, nt, caps, lim).grad_x.params
    s = P.ConvShape.of((1, T.BLAS_PW_GX_SMALL_MIN_C - 1, 38, 50),
                       (18, T.BLAS_PW_GX_SMALL_MIN_C - 1, 1, 1), (1, 1), (0,) * 4, (1, 1), 1)
    assert "smallk_x" not in P.plan_conv(s, np.float64, 16, blas, lim).grad_x.params


def test_smallk_on_blas_gives_the_same_bits_on_1_2_8_16_threads():
    """float32 on BLAS (CONVKIT_DISABLE_AVX512=1 CONVKIT_DISABLE_FGEMM=1, a fresh process) and
    float64: rpn_cls1x1-like pointwise grad_x on csrc/smallk.h has the same bits on 1, 2, 8,
    16 threads and per image of the batch, close to torch float64; and float32's pointwise
    grad_x in two 128-channel blocks (pointwise_grad_x_chans; float64's in the test above)."""
    import os
    import subprocess
    import sys
    code = """
import numpy as np, convkit, torch
from convkit.cpu import conv as cc
assert not cc._OWN_SGEMM and not cc._FIXED_SGEMM
rng = np.random.default_rng(5)

def check(shape, F, dt, tol, want):
    x = rng.standard_normal(shape).astype(dt)
    w = (rng.standard_normal((F, shape[1], 1, 1)) / np.sqrt(shape[1])).astype(dt)
    gy = rng.standard_normal((shape[0], F) + shape[2:]).astype(dt)
    runs = {}
    for nt in (1, 2, 8, 16):
        convkit.set_num_threads(nt)
        st = cc._plan(x, w, (1, 1), (0,) * 4, (1, 1), 1)[3].grad_x
        assert st.algo == "pointwise" and want(st.params), st
        with convkit.use_backend("cpu"):
            runs[nt] = convkit.conv2d_backward(gy, x, w)[0]
            one = convkit.conv2d_backward(gy[1:2], x[1:2], w)[0]
        assert one.tobytes() == runs[nt][1:2].tobytes(), nt
        assert runs[nt].tobytes() == runs[1].tobytes(), nt
    ref = torch.nn.grad.conv2d_input(x.shape, torch.tensor(w.astype(np.float64)),
                                     torch.tensor(gy.astype(np.float64))).numpy()
    np.testing.assert_allclose(runs[16], ref, rtol=tol, atol=tol)

for dt, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
    check((3, 64, 19, 25), 18, dt, tol, lambda p: p.get("smallk_x"))
check((2, 256, 14, 14), 48, np.float32, 1e-4, lambda p: p["chans_x"] == 128)
print("ok")
"""
    env = dict(os.environ, CONVKIT_DISABLE_AVX512="1", CONVKIT_DISABLE_FGEMM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok"], out.stdout


def test_float64_tiny_map_batch_parts_fill_16_threads():
    """float64 (BLAS on every machine): tiny_32_4x4's batch grad_weight takes 8 parts of 8
    images (tuning.BLAS_BATCH_W_PART_MIN_K; 16 tasks) on 1, 2 and 16 threads alike -- the
    model's 16-thread loss <= 10 % (51 % with 4) -- and float32 on BLAS too (since helper
    last13; it kept 4 before)."""
    from convkit.cpu import conv_plan as P
    M = _many_core_split()
    s = P.ConvShape.of((64, 32, 4, 4), (32, 32, 3, 3), (1, 1), (1,) * 4, (1, 1), 1)
    for caps in ("blas", "zen4", "epyc"):
        for nt in (1, 2, 16):
            st = P.plan_conv(s, np.float64, nt, M.CAPS[caps], M.LIMIT).grad_weight
            assert st.algo == "batch" and st.params["nsplit"] == 8, (caps, nt, st)
            if nt == 16:
                assert M.analyse(st, s, False, 8, "w")["lost"] <= 0.10, (caps, st)
    for nt in (1, 2, 16):
        st = P.plan_conv(s, np.float32, nt, M.CAPS["blas"], M.LIMIT).grad_weight
        assert st.algo == "batch" and st.params["nsplit"] == 8, (nt, st)
        if nt == 16:
            assert M.analyse(st, s, False, 4, "w")["lost"] <= 0.10, st


# ------------------------------------------ pointwise grad_x on BLAS in two channel blocks
def _pointwise_step(which, C, F, dtype, nt, caps="blas", N=8, H=14):
    """(shape, Step) of a 1x1 conv's pass (``which``: "forward" or "grad_x") as planned for the
    model's caps ``caps`` on nt threads."""
    M = _many_core_split()
    s = P.ConvShape.of((N, C, H, H), (F, C, 1, 1), (1, 1), (0,) * 4, (1, 1), 1)
    return s, getattr(P.plan_conv(s, dtype, nt, M.CAPS[caps], M.LIMIT), which)


def test_pointwise_grad_x_halves_where_blas_left_one_block():
    """float64 (BLAS on every machine) and float32 on BLAS: a pointwise grad_x whose group
    stayed one channel block (256 channels: pw_14, 8 tasks on 8 images) takes two of 128 on
    every thread count and caps (conv_plan.pointwise_grad_x_chans,
    tuning.BLAS_PW_GX_HALF_MIN_C) -- the model's 16-thread loss 50 % -> <= 10 % --; the
    fixed-order float32 plans keep theirs, 512 channels keep their two blocks, 128 channels
    (halves under the floor) one, and csrc/smallk.h's few filters take no blocks."""
    M = _many_core_split()

    def gx(*args, **kw):
        return _pointwise_step("grad_x", *args, **kw)
    for caps in ("blas", "zen4", "epyc", "avx512_avx2"):
        for nt in (1, 2, 8, 16):
            for N in (1, 8, 64):
                s, st = gx(256, 1024, np.float64, nt, caps, N)
                assert st.algo == "pointwise" and st.params["chans_x"] == 128, (caps, nt, N, st)
            if nt == 16:
                assert M.analyse(st, s, False, 8, "x")["lost"] <= 0.10, (caps, st)
    for nt in (1, 2, 8, 16):
        for N in (1, 8, 64):
            s, st = gx(256, 1024, np.float32, nt, "blas", N)
            assert st.algo == "pointwise" and st.params["chans_x"] == 128, (nt, N, st)
        if nt == 16:
            assert M.analyse(st, s, False, 4, "x")["lost"] <= 0.10, st
    for nt in (1, 16):
        assert gx(512, 2048, np.float64, nt, H=7)[1].params["chans_x"] == 256
        assert gx(128, 512, np.float64, nt)[1].params["chans_x"] == 128
        assert gx(384, 384, np.float64, nt)[1].params["chans_x"] == 192     # (as before)
        assert gx(256, 18, np.float64, nt)[1].params.get("smallk_x")


def test_pointwise_grad_x_halves_give_the_same_bits_on_1_2_8_16_threads(torch):
    """float64, 256 channels, 48 filters (OpenBLAS, not csrc/smallk.h): grad_x in two blocks
    of 128 channels per image has the same bits on 1, 2, 8, 16 threads and per image, close
    to torch float64; grad_weight and y too.  (14x14: here OpenBLAS's bits follow the GEMM's
    rows -- 128 against 256 channels differ --, at 7x6 or 14x13 they did not.)"""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 256, 14, 14))
    w = rng.standard_normal((48, 256, 1, 1)) / 16.0
    gy = rng.standard_normal((2, 48, 14, 14))
    cc._plans.clear()
    convkit.set_num_threads(16)
    try:
        st = cc._plan(x, w, (1, 1), (0,) * 4, (1, 1), 1)[3].grad_x
    finally:
        convkit.set_num_threads(None)
    assert st.algo == "pointwise" and st.params["chans_x"] == 128, st

    def passes():
        with convkit.use_backend("cpu"):
            return (convkit.conv2d_forward(x, w),) + tuple(convkit.conv2d_backward(gy, x, w))
    runs = _on_threads(passes)
    for nt in THREADS[1:]:
        assert _bits(runs[nt]) == _bits(runs[1]), nt
    with convkit.use_backend("cpu"):
        one = convkit.conv2d_backward(gy[1:2], x[1:2], w)[0]
    assert one.tobytes() == runs[16][1][1:2].tobytes()
    ref = torch.nn.grad.conv2d_input(x.shape, torch.tensor(w), torch.tensor(gy)).numpy()
    assert np.abs(runs[16][1] - ref).max() <= 1e-12 * np.abs(ref).max()


# ------------------------------------ pointwise forward on BLAS in filter blocks (helper pwf13)
def test_pointwise_forward_filter_blocks_where_an_image_keeps_one_run():
    """float64 (BLAS on every machine): pw_14's forward (one run of 196 positions an image by
    tuning.BLAS_POSITION_BYTES: 8 tasks on 8 images) takes 2 blocks of 512 filters on every
    caps, thread count and batch (conv_plan.pointwise_filter_blocks) -- the model's 16-thread
    loss 50 % -> <= 10 % --; 256 filters stay whole (under 2 x BLAS_PW_FWD_MIN_FILTERS),
    images of several runs take none, and no float32 plan of zen4 / epyc / avx512_avx2 does."""
    M = _many_core_split()

    def fwd(*args, **kw):
        return _pointwise_step("forward", *args, **kw)
    for caps in ("blas", "zen4", "epyc", "avx512_avx2"):
        for nt in (1, 2, 8, 16):
            for N in (1, 8, 64):
                s, st = fwd(256, 1024, np.float64, nt, caps, N)
                assert st.algo == "pointwise" and st.params["rows"] == 196, (caps, nt, N, st)
                assert st.params["fblocks"] == 2, (caps, nt, N, st)
                assert fwd(512, 2048, np.float64, nt, caps, N, 7)[1].params["fblocks"] == 2
                assert "fblocks" not in fwd(1024, 256, np.float64, nt, caps, N)[1].params
                assert "fblocks" not in fwd(256, 1024, np.float64, nt, caps, N, 28)[1].params
                if caps != "blas":
                    assert "fblocks" not in fwd(256, 1024, np.float32, nt, caps, N)[1].params
                    assert "fblocks" not in fwd(512, 2048, np.float32, nt, caps, N, 7)[1].params
            if nt == 16:
                s, st = fwd(256, 1024, np.float64, nt, caps)
                row = M.analyse(st, s, False, 8, "f")
                assert row["lost"] <= 0.10 and row["tasks"] == "16", (caps, row)


def test_pointwise_forward_filter_blocks_give_the_same_bits_on_1_2_8_16_threads(torch):
    """float64, pw_14's layer on 2 images: the forward in 2 filter blocks (with a bias) has the
    same bits on 1, 2, 8, 16 threads and per image, close to torch float64 (OpenBLAS gives
    these blocks other bits than one 1024-row GEMM: a split that followed the team would show)."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 256, 14, 14))
    w = rng.standard_normal((1024, 256, 1, 1)) / 16.0
    b = rng.standard_normal(1024)
    cc._plans.clear()
    try:
        for nt in THREADS:
            convkit.set_num_threads(nt)
            st = cc._plan(x, w, (1, 1), (0,) * 4, (1, 1), 1)[3].forward
            assert st.algo == "pointwise" and st.params.get("fblocks") == 2, (nt, st)
    finally:
        convkit.set_num_threads(None)

    def passes():
        with convkit.use_backend("cpu"):
            return (convkit.conv2d_forward(x, w, b),)
    runs = _on_threads(passes)
    for nt in THREADS[1:]:
        assert _bits(runs[nt]) == _bits(runs[1]), nt
    with convkit.use_backend("cpu"):
        one = convkit.conv2d_forward(x[1:2], w, b)
    assert one.tobytes() == runs[16][0][1:2].tobytes()
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b)).numpy()
    assert np.abs(runs[16][0] - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F,G,fblocks", [(520, 1, 2), (520, 1, 3), (1024, 1, 4), (13, 1, 2),
                                         (96, 2, 2), (48, 3, 4)])
def test_pointwise_forward_filter_blocks_cover_every_filter_once(F, G, fblocks, dtype):
    """conv2d_forward_gemm's filter blocks (whole multiples of 8 filters of each group, the
    last the rest; a block of none where 8-filter units run out): every output written once
    with its own filter's bias, on 1 and 3 threads, equal to one block per group."""
    from convkit.cpu import _conv_im2col as im
    rng = np.random.default_rng(F + G + fblocks)
    N, C, H, W = 2, 8 * G, 3, 5
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C // G, 1, 1)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    nopk = np.zeros((0, 0), np.float32)

    def run(k, nt):
        y = np.full((N, F, H, W), np.nan, dtype)
        im.conv2d_forward_gemm(x, w, b, True, y, np.zeros(1, dtype), 0, H * W, 1, 1, 0, 0, 1,
                               1, G, True, nt, nopk, 0, k)
        return y
    ref = run(0, 1)
    for nt in (1, 3):
        y = run(fblocks, nt)
        assert not np.isnan(y).any(), nt
        np.testing.assert_allclose(y, ref, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


def test_float32_blas_tiny_map_parts_give_the_same_bits_on_1_2_8_16_threads():
    """float32 on BLAS (CONVKIT_DISABLE_AVX512=1 CONVKIT_DISABLE_FGEMM=1, a fresh process):
    tiny_32_4x4's batch grad_weight in 8 parts (since helper last13) has the same bits on 1, 2,
    8, 16 threads, close to torch float64; pw_14-like grad_x takes two blocks of 128."""
    import os
    import subprocess
    import sys
    code = """
import numpy as np, convkit, torch
from convkit.cpu import conv as cc
assert not cc._OWN_SGEMM and not cc._FIXED_SGEMM
cc._WINOTINY = False                # (the batch path on the tiny maps, as the "blas" caps)
cc._caps_by_level.clear()
rng = np.random.default_rng(7)
x = rng.standard_normal((64, 32, 4, 4)).astype(np.float32)
w = (rng.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32)
gy = rng.standard_normal((64, 32, 4, 4)).astype(np.float32)
runs = {}
for nt in (1, 2, 8, 16):
    convkit.set_num_threads(nt)
    st = cc._plan(x, w, (1, 1), (1,) * 4, (1, 1), 1)[3].grad_weight
    assert st.algo == "batch" and st.params["nsplit"] == 8, st
    with convkit.use_backend("cpu"):
        runs[nt] = convkit.conv2d_backward(gy, x, w, padding=1)[1]
    assert runs[nt].tobytes() == runs[1].tobytes(), nt
ref = torch.nn.grad.conv2d_weight(torch.tensor(x.astype(np.float64)), w.shape,
                                  torch.tensor(gy.astype(np.float64)), padding=1).numpy()
assert np.abs(runs[16] - ref).max() <= 1e-5 * np.abs(ref).max(), np.abs(runs[16] - ref).max()
xp = np.zeros((2, 256, 7, 7), np.float32)
wp = np.zeros((1024, 256, 1, 1), np.float32)
convkit.set_num_threads(16)
st = cc._plan(xp, wp, (1, 1), (0,) * 4, (1, 1), 1)[3].grad_x
assert st.algo == "pointwise" and st.params["chans_x"] == 128, st   # (two blocks, as float64)
print("ok")
"""
    env = dict(os.environ, CONVKIT_DISABLE_AVX512="1", CONVKIT_DISABLE_FGEMM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok"], out.stdout
