"""The cpu conv plan (convkit/cpu/conv_plan.py): which algorithm each pass of a shape takes, on a
machine with convkit's own AVX-512 float32 GEMM and on one without (the plan is pure, so both
are asserted on any machine), the thread-count independence of the BLAS task splits, and the
plan's agreement with the kernels it describes."""
import numpy as np
import pytest

import convkit
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

OWN = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)       # an AVX-512 Xeon
BLAS = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)     # AVX2 only, no csrc/rowgemm.h
BLAS_RG = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True)   # this CI's EPYC
LIMIT = 256 * 2**20                                           # the default workspace limit


def _shape(N, C, H, W, F, K, stride=1, pad=0, groups=1, dilation=1):
    return P.ConvShape.of((N, C, H, W), (F, C // groups, K, K), (stride, stride), (pad,) * 4,
                          (dilation, dilation), groups)


def _algos(plan):
    return (plan.forward.algo, plan.grad_x.algo if plan.grad_x else None, plan.grad_weight.algo)


# The suite's conv layers (convkit/benchmark.py CASES, full size) and the small-map, grouped and
# depthwise shapes the model layer uses: (forward, grad_x, grad_weight) with the own GEMM and
# on BLAS, float32, 2 threads.  On BLAS the layers whose forward takes F(4x4, 3x3) take its
# transposed form for grad_weight too (weight_winograd); res_16x16's 16 channels keep F(2x2)
# and im2col.
SUITE = [
    ("stem_224", _shape(8, 3, 224, 224, 64, 7, 2, 3),
     ("phases", "im2col", "weight_dot"), ("im2col", "im2col", "im2col")),
    ("lenet_c1", _shape(64, 1, 28, 28, 6, 5, 1, 2),
     ("wide", "im2col", "weight_dot"), ("wide", "im2col", "im2col")),
    ("vgg_56", _shape(8, 64, 56, 56, 64, 3, 1, 1),
     ("winograd", "winograd", "im2col"), ("winograd", "winograd", "weight_winograd")),
    ("res_28", _shape(8, 128, 28, 28, 128, 3, 1, 1),
     ("winograd", "winograd", "im2col"), ("winograd", "winograd", "weight_winograd")),
    ("res_14", _shape(8, 256, 14, 14, 256, 3, 1, 1),
     ("winograd", "winograd", "im2col"), ("winograd", "winograd", "weight_winograd")),
    ("pw_14", _shape(8, 256, 14, 14, 1024, 1),
     ("pointwise", "pointwise", "pointwise"), ("pointwise", "pointwise", "pointwise")),
    ("rpn_3x3", _shape(1, 512, 38, 50, 512, 3, 1, 1),
     ("winograd", "winograd", "im2col"), ("winograd", "winograd", "weight_winograd")),
    ("rpn_cls1x1", _shape(1, 512, 38, 50, 18, 1),
     ("pointwise", "pointwise", "pointwise"), ("pointwise", "pointwise", "pointwise")),
    ("dw_56", _shape(8, 128, 56, 56, 128, 3, 1, 1, groups=128),
     ("depthwise3x3",) * 3, ("depthwise3x3",) * 3),
    ("depthwise_mult2", _shape(8, 32, 28, 28, 64, 3, 1, 1, groups=32),
     ("depthwise",) * 3, ("depthwise",) * 3),
    ("depthwise_5x5_s2", _shape(8, 32, 28, 28, 32, 5, 2, 2, groups=32),
     ("depthwise",) * 3, ("depthwise",) * 3),
    # small maps: <= 64 output positions per image
    ("small_16_8x8", _shape(128, 16, 8, 8, 16, 3, 1, 1),
     ("batch",) * 3, ("batch",) * 3),
    ("small_s2_8x8", _shape(64, 16, 8, 8, 32, 3, 2, 1),
     ("batch",) * 3, ("batch",) * 3),
    ("dense_2x2", _shape(128, 64, 2, 2, 64, 3, 1, 1),
     ("dense",) * 3, ("dense",) * 3),
    ("res_16x16", _shape(128, 16, 16, 16, 16, 3, 1, 1),
     ("winograd", "winograd", "weight_dot"), ("winograd", "winograd", "im2col")),
    # grouped (not depthwise): 36 taps per filter take the dot weight gradient, 288 do not
    ("grouped_32", _shape(8, 128, 28, 28, 128, 3, 1, 1, groups=32),
     ("im2col", "im2col", "weight_dot"), ("im2col", "im2col", "im2col")),
    ("grouped_288", _shape(2, 128, 20, 20, 128, 3, 1, 1, groups=4),
     ("im2col", "im2col", "im2col"), ("im2col", "im2col", "im2col")),
    ("strided_14", _shape(8, 64, 28, 28, 128, 3, 2, 1),
     ("im2col", "im2col", "im2col"), ("im2col", "im2col", "im2col")),
    # conv_transpose2d's convt_28 as conv2d (its forward is this grad_x): kernel 4 = 2 x stride,
    # so on BLAS grad_x takes the output phases as one stride-1 conv (3x3 stride 2 above: not)
    ("convt_28", _shape(8, 32, 56, 56, 64, 4, 2, 1),
     ("im2col", "im2col", "im2col"), ("im2col", "subpixel", "im2col")),
]


@pytest.mark.parametrize("name,shape,own,blas", SUITE, ids=[c[0] for c in SUITE])
def test_suite_layers_take_their_plans(name, shape, own, blas):
    assert _algos(P.plan_conv(shape, np.float32, 2, OWN, LIMIT)) == own
    assert _algos(P.plan_conv(shape, np.float32, 2, BLAS, LIMIT)) == blas
    # float64 GEMMs always go to BLAS: the own-GEMM-only paths never appear
    f64 = _algos(P.plan_conv(shape, np.float64, 2, OWN, LIMIT))
    assert not {"phases", "weight_dot"} & set(f64)
    # with csrc/rowgemm.h (AVX2 + FMA): only convt_28's forward (conv_transpose2d's grad_x) and
    # grad_weight change, to rowphases and weight_rowgemm, the stem's, to stem_wino and
    # weight_stem_wino, and lenet_c1's forward, to direct; float64 never takes them
    rg = _algos(P.plan_conv(shape, np.float32, 2, BLAS_RG, LIMIT))
    rg_want = {"convt_28": ("rowphases", blas[1], "weight_rowgemm"),
               "stem_224": ("stem_wino", blas[1], "weight_stem_wino"),
               "lenet_c1": ("direct", blas[1], blas[2])}
    assert rg == rg_want.get(name, blas)
    assert not {"rowphases", "weight_rowgemm", "stem", "stem_wino", "weight_stem",
                "weight_stem_wino", "direct"} & set(
        _algos(P.plan_conv(shape, np.float64, 2, BLAS_RG, LIMIT)))


@pytest.mark.parametrize("name,shape,own,blas", SUITE, ids=[c[0] for c in SUITE])
def test_a_nonfinite_operand_takes_im2col_everywhere(name, shape, own, blas):
    """exact=True (a NaN or inf among the operands): every pass on the im2col (or pointwise)
    GEMMs, whose outputs read only their own windows, on any machine."""
    for caps in (OWN, BLAS, BLAS_RG):
        algos = set(_algos(P.plan_conv(shape, np.float32, 2, caps, LIMIT, exact=True)))
        assert algos <= {"im2col", "pointwise"}, (name, algos)


def test_first_layer_and_bias():
    stem = _shape(8, 3, 224, 224, 64, 7, 2, 3)
    plan = P.plan_conv(stem, np.float32, 2, OWN, LIMIT, needs_input_grad=False)
    assert plan.grad_x is None and plan.grad_weight.algo == "weight_dot"
    assert plan.grad_bias == "fused"            # the dot kernel sums grad_bias on the way
    plan = P.plan_conv(stem, np.float32, 2, BLAS, LIMIT, needs_input_grad=False)
    assert plan.grad_x is None and plan.grad_bias == "sum"
    # depthwise 3x3: grad_x, grad_weight and grad_bias in one pass, the same step
    dw = P.plan_conv(_shape(8, 128, 56, 56, 128, 3, 1, 1, groups=128), np.float32, 2, OWN, LIMIT)
    assert dw.grad_x is dw.grad_weight and dw.grad_bias == "fused"
    assert dw.forward.params == {"level": 3, "same": True}


def test_depthwise3x3_follows_the_cpus_level():
    dw = _shape(8, 128, 56, 56, 128, 3, 1, 1, groups=128)
    for level in (1, 2, 3):
        caps = P.ConvCaps(own_sgemm=False, depthwise3x3_level=level)
        assert P.plan_conv(dw, np.float32, 2, caps, LIMIT).forward.params["level"] == level
    none = P.ConvCaps(own_sgemm=False, depthwise3x3_level=0)
    assert _algos(P.plan_conv(dw, np.float32, 2, none, LIMIT)) == ("depthwise",) * 3
    # rows shorter than a vector take the narrower level, then the general kernel
    narrow = _shape(2, 8, 6, 6, 8, 3, 1, 1, groups=8)        # W - 2 = 4 floats per row
    assert P.plan_conv(narrow, np.float32, 1, OWN, LIMIT).forward.params["level"] == 1
    assert P.plan_conv(narrow, np.float64, 1, OWN, LIMIT).forward.algo == "depthwise3x3"
    assert P.plan_conv(_shape(2, 8, 3, 3, 8, 3, 1, 1, groups=8), np.float32, 1, OWN,
                       LIMIT).forward.algo == "depthwise"


def test_dw3_level_mirrors_the_kernels_choice():
    from convkit.cpu import _conv
    old = _conv.depthwise3x3_cap(3)
    try:
        for cap in (0, 1, 2, 3):
            _conv.depthwise3x3_cap(cap)
            top = _conv.depthwise3x3_level(1, 1 << 30)
            assert top <= cap
            for itemsize in (4, 8):
                for n in range(0, 40):
                    assert P.dw3_level(top, itemsize, n) == _conv.depthwise3x3_level(itemsize, n)
    finally:
        _conv.depthwise3x3_cap(old)


def test_winograd_override_and_channel_threshold():
    vgg = _shape(8, 64, 56, 56, 64, 3, 1, 1)
    # (its wide-row workspace, 9 MB, is over tuning.WIDE_MAX_BYTES)
    assert _algos(P.plan_conv(vgg, np.float32, 2, OWN, LIMIT, winograd=False)) == (
        "im2col", "im2col", "im2col")
    few = _shape(8, tuning.WINOGRAD_MIN_CHANNELS - 1, 56, 56, 64, 3, 1, 1)
    assert P.plan_conv(few, np.float32, 2, OWN, LIMIT).forward.algo != "winograd"


@pytest.mark.parametrize("shape", [_shape(8, 3, 224, 224, 64, 7, 2, 3),
                                   _shape(8, 256, 14, 14, 256, 3, 1, 1),
                                   _shape(4, 32, 20, 20, 48, 3, 2, 1),
                                   _shape(8, 256, 14, 14, 1024, 1),
                                   _shape(64, 16, 8, 8, 32, 3, 2, 1),
                                   _shape(8, 32, 56, 56, 64, 4, 2, 1)],
                         ids=["stem", "res_14", "strided", "pointwise", "small", "subpixel"])
def test_blas_task_splits_do_not_follow_the_thread_count(shape):
    """On BLAS the bits of a GEMM follow its block sizes: every split that shapes a sum must be
    the same for 1, 2 and 3 threads (the bit-identity tests' precondition)."""
    def splits(threads):
        plan = P.plan_conv(shape, np.float32, threads, BLAS, LIMIT)
        keep = ("rows", "trows", "imgs", "units_w", "rows_w", "chans_x", "rows_x", "chans_w",
                "kimgs", "nsplit", "row_blocks")
        return [(s.algo, {k: v for k, v in s.params.items() if k in keep})
                for s in (plan.forward, plan.grad_x, plan.grad_weight)]
    assert splits(1) == splits(2) == splits(3)


def test_small_calls_run_on_one_thread():
    tiny = _shape(1, 4, 6, 6, 4, 3, 1, 1)            # 4*4*9*36 MACs < tuning.SERIAL_MACS
    plan = P.plan_conv(tiny, np.float32, 8, OWN, LIMIT)
    assert plan.forward.threads == plan.grad_weight.threads == 1
    big = P.plan_conv(_shape(8, 64, 56, 56, 64, 3, 1, 1), np.float32, 8, OWN, LIMIT)
    assert big.forward.threads == 8


def test_a_limit_below_one_row_is_carried_to_the_runner():
    shape = _shape(1, 16, 8, 40, 4, 3, 1, 1)
    plan = P.plan_conv(shape, np.float32, 2, BLAS, 1000)
    assert plan.forward.algo == "im2col" and "limit of 1000 bytes" in plan.forward.error
    assert plan.grad_weight.error is not None
    ok = P.plan_conv(shape, np.float32, 2, BLAS, LIMIT)
    assert ok.forward.error is None and ok.grad_weight.error is None


def test_the_backend_runs_the_plan_it_reports():
    """conv.py asks the plan with this machine's caps: the step it runs is the one plan_conv
    gives for the same arguments."""
    from convkit.cpu import conv as cc
    x = np.zeros((2, 16, 12, 12), np.float32)
    w = np.zeros((16, 16, 3, 3), np.float32)
    s, Ho, Wo, plan = cc._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert (Ho, Wo) == (12, 12)
    want = P.plan_conv(s, np.float32, convkit.get_num_threads(), cc._caps(),
                       convkit.get_workspace_limit())
    assert plan == want and plan.forward.algo == "winograd"


def test_rowphases_rule():
    """rowphases: strided, groups 1, filters in whole 4-row panels, kernel a multiple of the
    stride, dilation 1, rows >= tuning.ROWPHASES_MIN_WO, float32, BLAS with rowgemm; its
    workspace counts against the limit."""
    def fwd(shape, caps=BLAS_RG, dtype=np.float32, limit=LIMIT):
        return P.plan_conv(shape, dtype, 2, caps, limit).forward
    step = fwd(_shape(8, 32, 56, 56, 64, 4, 2, 1))
    assert step.algo == "rowphases"
    rows, per = step.params["rows"], step.params["per_thread"]
    # the whole image per task: its 32 x 4 phase planes of 29 x 29 fit ROWPHASES_PLANE_BYTES
    assert 32 * 4 * 29 * 29 * 4 <= tuning.ROWPHASES_PLANE_BYTES
    assert rows == 28
    assert per == 32 * 4 * (rows + 1) * 29 + 1 + 64 * rows * 29
    # planes that do not fit: as many rows as fit, never fewer than ROWPHASES_POSITIONS // Wq
    wide = fwd(_shape(8, 256, 56, 56, 64, 4, 2, 1)).params["rows"]
    assert wide == max(tuning.ROWPHASES_POSITIONS // 29,
                       tuning.ROWPHASES_PLANE_BYTES // (4 * 256 * 4 * 29) - 1)
    assert wide < 28
    assert fwd(_shape(8, 32, 56, 56, 64, 4, 2, 1), BLAS).algo == "im2col"
    assert fwd(_shape(8, 32, 56, 56, 64, 4, 2, 1), OWN).algo == "im2col"     # (Wo < 32)
    assert fwd(_shape(8, 32, 56, 56, 64, 4, 2, 1), dtype=np.float64).algo == "im2col"
    for other in (_shape(8, 32, 56, 56, 62, 4, 2, 1),              # 62 filters
                  _shape(8, 32, 56, 56, 64, 3, 2, 1),              # 3 not a multiple of 2
                  _shape(8, 32, 56, 56, 64, 4, 2, 1, groups=2),
                  _shape(8, 32, 56, 56, 64, 4, 2, 1, dilation=2),
                  _shape(8, 32, 56, 2 * tuning.ROWPHASES_MIN_WO - 2, 64, 2, 2, 0)):
        assert fwd(other).algo != "rowphases", other
    assert fwd(_shape(8, 32, 56, 56, 64, 4, 2, 1), limit=4 * per).algo != "rowphases"
    # one image: rows lowered until each of the 2 threads has tuning.PHASES_TASKS_PER_THREAD
    # (4 rows: 7 tasks, the last round half idle), then evened: 4 tasks of 7 rows
    assert -(-28 // (2 * tuning.PHASES_TASKS_PER_THREAD)) == 4
    one = fwd(_shape(1, 32, 56, 56, 64, 4, 2, 1))
    assert one.params["rows"] == 7
    # many threads: 16 threads' 56 tasks of 4 rows left the last round half idle; 7 rows make
    # 32 equal tasks (two a thread); 64 threads' 224 one-row tasks have no better split
    rows_at = [P.plan_conv(_shape(8, 32, 56, 56, 64, 4, 2, 1), np.float32, nt, BLAS_RG,
                           LIMIT).forward.params["rows"] for nt in (1, 2, 8, 16, 64)]
    assert rows_at == [28, 28, 7, 7, 1]
    assert P.even_rows(8, 28, 4, 28, 16) == 7 and P.even_rows(8, 28, 28, 28, 2) == 28


def test_polywino_tile_rows_even_out_the_team():
    """polywino's tasks (whole tile rows of one image): on 16 threads convt_28's adjoint conv
    (7 tile rows forward, 8 on grad_x's grid, 6 of them fit POLYWINO_TASK_BYTES) went in
    blocks of 6 + 1 and 6 + 2 tile rows (42 / 33 % of the team idle: bench/many_core_split.py);
    evened (even_rows, two tasks a thread): 2 + 2 + 2 + 1 (the 12.5 % that 56 tile rows on 16
    threads cannot avoid) and 4 x 2.  k4s2_56's grad_x (64 channels: 3 + 3 + 2) takes 2 (32
    equal tasks), never 1 (POLYWINO_SPLIT_MIN_TROWS).  1 and 2 threads keep their blocks.
    Since the twelfth session the forward, whose 2 + 2 + 2 + 1 left 12 % idle, goes in runs of
    25 tiles across row ends (conv_plan.polywino_run; 25 + 24 an image, spanning 4 tile rows),
    the "trows" its workspace's rows; grad_x's 4 x 2 stay."""
    zen4 = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True, fixed_sgemm=True,
                      avx512_full_rate=False, winotiny=True)
    epyc = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True, fixed_sgemm=True,
                      winotiny=True)

    def trows(shape, caps, nt):
        plan = P.plan_conv(shape, np.float32, nt, caps, LIMIT, needs_input_grad=True)
        assert plan.forward.algo == plan.grad_x.algo == "polywino"
        return (plan.forward.params["trows"], plan.forward.params["run"],
                plan.grad_x.params["trows"])
    adj, k4 = _shape(8, 32, 56, 56, 64, 4, 2, 1), _shape(8, 64, 56, 56, 64, 4, 2, 1)
    for caps in (zen4, epyc):
        assert [trows(adj, caps, nt) for nt in (1, 2, 8, 16)] == [
            (7, 0, 6), (7, 0, 6), (7, 0, 4), (4, 25, 2)]
        assert trows(k4, caps, 16)[1:] == (25, 2) and trows(k4, caps, 2) == (4, 0, 3)
        assert min(trows(k4, caps, nt)[0] for nt in (8, 16, 32)) >= 2
    assert P.even_rows(8, 7, 6, 6, 16, 2) == 2 and P.even_rows(8, 8, 3, 3, 16, 2) == 2
    assert P.even_rows(8, 8, 3, 3, 64, 2) == 3       # (no 2-row split gives 128 tasks)


def test_weight_rowgemm_rule():
    """weight_rowgemm: the rowphases rule, maps above the batch paths', KW*C >= 24; grad_bias
    is its own sum; with grad_x left to im2col, im2col makes grad_x only."""
    convt = _shape(8, 32, 56, 56, 64, 4, 2, 1)
    plan = P.plan_conv(convt, np.float32, 2, BLAS_RG, LIMIT, needs_input_grad=False)
    gw = plan.grad_weight
    assert gw.algo == "weight_rowgemm" and plan.grad_bias == "sum"
    assert gw.params == {"filters": 64, "khs": 2, "kc": tuning.WGRAD_RG_PASS, "team": 2,
                         "floats": 2 * (58 * 58 * 32 + 64 * 28 * 28) + 64 * 16 * 32}
    # (each of the 2 threads one image's xcl and panels, then the shared sums)
    assert P.plan_conv(convt, np.float32, 2, BLAS_RG, 4 * gw.params["floats"] - 4,
                       needs_input_grad=False).grad_weight.algo != "weight_rowgemm"
    for other in (_shape(8, 5, 56, 56, 64, 4, 2, 1),        # KW*C = 20
                  _shape(8, 32, 56, 56, 62, 4, 2, 1),       # 62 filters
                  _shape(8, 32, 56, 56, 64, 3, 2, 1),       # 3 not a multiple of 2
                  _shape(8, 32, 16, 16, 64, 4, 2, 1),       # 8x8 maps: batch
                  _shape(8, 32, 56, 56, 64, 4, 2, 1, dilation=2)):
        assert P.plan_conv(other, np.float32, 2, BLAS_RG, LIMIT).grad_weight.algo != \
            "weight_rowgemm", other
    # many threads: smaller filter blocks (no bits follow them), down to 16, then fewer kernel
    # rows per task (tasks: filter blocks x 2 row residues x kernel-row chunks)
    assert [(lambda p: (p["filters"], p["khs"]))(
        P.plan_conv(convt, np.float32, nt, BLAS_RG, LIMIT).grad_weight.params)
        for nt in (1, 2, 4, 8, 16, 64)] == [(64, 2), (64, 2), (32, 2), (16, 2), (16, 1), (16, 1)]
    # a thread per task at most: the workspace holds the team's xcl and panels, not 64 threads'
    assert [P.plan_conv(convt, np.float32, nt, BLAS_RG, LIMIT).grad_weight.params["team"]
            for nt in (1, 2, 4, 8, 16, 64)] == [1, 2, 4, 8, 16, 16]
    # unequal strides (a 4x6 kernel, stride 2 x 3): grad_x by subpixel beside it
    odd = P.ConvShape.of((8, 32, 56, 57), (64, 32, 4, 6), (2, 3), (1, 1, 1, 1), (1, 1), 1)
    plan = P.plan_conv(odd, np.float32, 2, BLAS_RG, LIMIT)
    assert (plan.grad_x.algo, plan.grad_weight.algo, plan.grad_bias) == (
        "subpixel", "weight_rowgemm", "sum")
