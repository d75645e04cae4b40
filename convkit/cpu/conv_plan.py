"""The cpu conv plan: which algorithm computes the forward, grad_x and grad_weight of a conv, with
which task split and workspace -- a pure function of the shapes, the dtype, the thread count,
the workspace limit and the machine's abilities (``ConvCaps``).  convkit/cpu/conv.py runs the
plan (one runner per algorithm); the constants are in convkit/cpu/tuning.py.

Algorithms (the kernels are in convkit/cpu/_conv_<algorithm>.pyx, listed in _conv.pyx):

=============== ====================================================================== ========
name            what                                                                   passes
=============== ====================================================================== ========
depthwise3x3    3x3 stride-1 depthwise, one filter per channel: vector kernels          f, x, w
depthwise       any other depthwise conv (groups == C): a direct kernel per plane       f, x, w
dense           plane no bigger than the kernel: one GEMM with the conv's dense matrix  f, x, w
winograd        3x3 stride 1, >= 16 channels, maps > 64 positions: F(2x2) or F(4x4)     f, x
                ("tiny": padded by 1, even maps <= 64 positions, float32 on AVX2: F(2x2)
                with 8 images in a vector, csrc/winotiny.h; plan_winotiny)
batch           maps <= 64 positions: the batch's columns side by side in one GEMM      f, x, w
polywino        4x4 stride 2, >= 16 channels, float32 on AVX2 (fgemm.h): Winograd F(4x4,   f, x
                2x2) over the 4 input phase planes (a stride-1 2x2 conv of 4C channels);
                grad_x: its 4 output phases as 2x2 convs of grad_y on one grid (4C
                filters); 8 channels / filters a vector (csrc/polywino.h)
phases          strided, float32 on the own GEMM: polyphase planes, a GEMM per row      f
rowphases       strided, float32 on BLAS machines with AVX2: the same planes, one      f
                csrc/rowgemm.h GEMM per block of output rows (taps read in place)
stem            strided first layer (<= 4 channels, kernel not a multiple of the        f
                stride), float32 on BLAS machines with AVX2: the same planes, each
                output row straight into y by csrc/stem.h (taps read in place)
subpixel        strided, kernel a multiple of the stride, on BLAS: the sh*sw output     x
                phases of grad_x as one stride-1 conv of grad_y, then interleaved
direct          stride 1, one input channel, maps > 64 positions, float32 on BLAS         f
                machines with AVX2 and half-rate AVX-512 CPUs: vectors along the flat
                output positions over an image's kernel-column-shifted planes, 6 filters
                a tile (csrc/wdirect.h ck_direct_forward: no lane on padded columns)
wide            stride 1, padded rows <= 5/4 of the output's: taps read in place        f
weight_dot      <= 320 taps per filter, float32 on the own GEMM: dot products           w (+ b)
weight_polywino polywino's rule: the transposed F(4x4, 2x2) over the phase planes -- 25   w
                GEMMs of transformed grad_y and x tiles over the batch's tiles (groups
                of images), then the 2x2 sub-kernels' transform (csrc/polywino.h)
weight_rowgemm  strided, kernel a multiple of the stride, float32 on BLAS machines      w
                with AVX2: x channels-last, a csrc/rowgemm.h GEMM per kernel row (a
                task's rows of one residue mod the stride pass by pass)
stem_wino       the stem rule's 7-wide kernels at column stride 2 (>= 16 filters):       f
                1-D Winograd F(4, 4) / F(4, 3) along the rows on the column phases,
                the kernel rows direct (csrc/stem_wino.h); non-finite operands: stem
weight_stem     the stem rule: dot products over the phase planes (csrc/stem.h)         w
weight_stem_wino  stem_wino's layers: the transposed F(4, 4) / F(3, 4) along the rows,     w
                the transforms' dot products over the batch's tiles (csrc/stem_wgrad.h);
                a result that is not finite: weight_stem
weight_winograd where the forward takes F(4x4, 3x3): the transposed F(4x4) -- 36 GEMMs    w
                of transformed grad_y and x tiles, then the 3x3 filter transform
weight_winotiny the "tiny" winograd layers: the transposed F(2x2) over the same 8-image      w
                tiles, lane-wise dot products in fixed parts of the batch (csrc/winotiny.h)
weight_direct   stride 1, one input channel, >= 25 taps at most 8 wide, float32 on BLAS   w
                machines with AVX2 and half-rate AVX-512 CPUs: dot products of grad_y
                rows with shifted rows of the padded x, a task per (filter, channel,
                kernel row) (csrc/wdirect.h)
pointwise       1x1, stride 1, no padding: GEMMs straight on x                          f, x, w
im2col          everything else: im2col into a workspace, then GEMMs                    f, x, w
=============== ====================================================================== ========

"BLAS machines with AVX2" above: the float32 GEMMs off the own AVX-512 kernel -- and, beside it,
a CPU whose 512-bit FMA runs at the 256-bit rate (AMD Zen 4: ConvCaps.avx512_full_rate False),
for the algorithms tuning.HALF_RATE_AVX2 names (stem, stem_wino, weight_stem(_wino), rowphases,
subpixel, weight_rowgemm, F(4x4) with its packed GEMMs on csrc/fgemm.h, weight_winograd,
polywino, weight_polywino):
``avx2_algo``.  Full-rate AVX-512 CPUs keep the own GEMM's plans.

grad_x by ``winograd`` or ``batch`` is the forward algorithm run on grad_y with the filters
flipped and transposed (stride-1 convs only).  A step that cannot fit the workspace limit
carries the MemoryError message its runner raises (``Step.error``).

Batch invariance (DESIGN.md "Scale-out": convkit.dask's batch chunks equal the in-memory call
bitwise).  The invariant: image i's forward output and grad_x have the same bits whatever other
images share its batch, on any thread count (tests/test_cpu_batch_invariance.py).  The rule:

- a pass's algorithm (and Winograd's tile) follows the image's shape, never the batch size N;
- float32 on a CPU with AVX2 + FMA (ConvCaps.fixed_sgemm): the forwards' and grad_x's GEMMs
  run on csrc/fgemm.h (``_blas.gemm_fixed``), which sums each output as one FMA chain over k
  in ascending order whatever the GEMM's shape and the output's place, so these GEMMs may hold
  several images: the plans keep the BLAS splits that follow N (fewer, wider GEMMs; the
  one-image GEMMs below cost LeNet5's dense layer 6x, bench/RESULTS.md "Batch invariance");
  F(4x4)'s take the transformed filters packed (``winograd_packed``: csrc/wino4.h's
  ck_w4_gemm_pk, fgemm.h's tiles and chains on A in strips of 6 -- the same bits);
- on BLAS (float64, or float32 without AVX2 or CONVKIT_DISABLE_FGEMM=1) every GEMM of the forward and of
  grad_x reads one image, in a shape set by the image's shape alone.  OpenBLAS rounds an output
  differently for another GEMM shape and for another place in it (on this EPYC, rows 8-23 of a
  32-row sgemm differ from the same rows computed alone; float64 likewise in the other
  dimension), so no such GEMM holds two images and none is cut by N.  The cuts: im2col rows
  per GEMM ``image_blocks`` (a power of two blocks of an image, at most tuning.BLAS_TASKS, each
  at least tuning.BLAS_MIN_POSITIONS positions); pointwise positions (tuning.BLAS_FORWARD_TASKS,
  BLAS_MIN_POSITIONS, BLAS_POSITION_BYTES); Winograd tasks within one image (the kernel's
  per_image; F(2x2) at most tuning.BLAS_TASKS blocks of an image, each at least
  tuning.WINOGRAD4_TASK_TILES tiles; F(4x4) about that many tiles, its staged split on many
  threads the same GEMM calls, winograd4_staged); the batch
  paths one image per GEMM (``batch_images``); dense one image per GEMM (``dense_params``);
  grad_x's channel blocks ``grad_x_chans`` (tuning.BLAS_GRAD_X_TASKS, BLAS_GRAD_X_MIN_ROWS).
  The per-image cut is about the split a batch of one had before (with the least-work floors
  above), so one large image still makes several tasks;
- the own AVX-512 GEMM sums each output in a fixed k order whatever the GEMM's width and the
  output's place (csrc/sgemm.h): there blocks of images and rows may follow N and the team;
- wide, phases, rowphases, stem, polywino and the depthwise kernels work on one image (plane)
  per task; the non-finite fallback to im2col is taken per image (convkit/cpu/conv.py).
grad_weight sums over the batch and is not batch invariant.  Not covered: a workspace limit
below what a pass needs for the whole batch (the batch backward's grad_y side by side, the
depthwise grad_x's zero stand-in for x) sends that batch, not a smaller one, to im2col.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from .._shapes import conv_out_size
from . import tuning as T


class ConvShape(NamedTuple):
    """The shape facts a plan depends on (padding top, bottom, left, right)."""
    N: int
    C: int
    H: int
    W: int
    F: int
    Cg: int
    KH: int
    KW: int
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int

    @classmethod
    def of(cls, x_shape, w_shape, stride, padding, dilation, groups):
        N, C, H, W = (int(v) for v in x_shape)
        F, Cg, KH, KW = (int(v) for v in w_shape)
        return cls(N, C, H, W, F, Cg, KH, KW, tuple(stride), tuple(padding), tuple(dilation),
                   int(groups))

    @property
    def out(self):
        """(Ho, Wo)."""
        pt, pb, pl, pr = self.padding
        return (conv_out_size(self.H, self.KH, self.stride[0], pt + pb, self.dilation[0]),
                conv_out_size(self.W, self.KW, self.stride[1], pl + pr, self.dilation[1]))


@dataclass(frozen=True)
class ConvCaps:
    """What the machine and the build offer the plan.

    own_sgemm: float32 GEMMs run on convkit's AVX-512 kernel (csrc/sgemm.h), not BLAS.
    fixed_sgemm: the float32 GEMMs of forwards and grad_x sum each output in a fixed order
    whatever the GEMM's shape (own_sgemm, or csrc/fgemm.h on AVX2 + FMA): they may hold several
    images (batch invariance) and the BLAS plans' splits, which follow the batch, stay.
    depthwise3x3_level: the widest vector level of the 3x3 depthwise kernels (csrc/dw3x3.h):
    0 none, 1 16-byte vectors, 2 AVX2, 3 AVX-512.
    rowgemm: csrc/rowgemm.h's float32 GEMM (B rows read in place) runs: AVX2 and FMA.
    avx512_full_rate: the CPU's 512-bit FMA runs at the full rate (csrc/isa.h; False on AMD
    family 0x19, Zen 4, whose 512-bit FMA is two 256-bit halves; CONVKIT_AVX512_FULL_RATE
    overrides it).  Where it is False and own_sgemm, the AVX2 algorithms named in
    tuning.HALF_RATE_AVX2 are planned beside the own GEMM (avx2_algo).
    winotiny: csrc/winotiny.h's transforms run (AVX2 and FMA, csrc/fgemm.h not disabled)."""
    own_sgemm: bool
    depthwise3x3_level: int
    rowgemm: bool = False   # csrc/rowgemm.h runs (AVX2 + FMA)
    fixed_sgemm: bool = False
    avx512_full_rate: bool = True
    winotiny: bool = False


@dataclass(frozen=True)
class Step:
    """One pass of a conv: the algorithm, its thread count, its parameters (named per
    algorithm, see the planners below) and, when it cannot fit the workspace limit, the
    MemoryError message its runner raises instead."""
    algo: str
    threads: int
    params: dict = field(default_factory=dict)
    error: Optional[str] = None


@dataclass(frozen=True)
class ConvPlan:
    forward: Step
    grad_x: Optional[Step]          # None when grad_x is not asked for
    grad_weight: Step
    grad_bias: str                  # "fused" (by the grad_weight step) or "sum" (its own pass)
    grad_bias_threads: int


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def threads_for(macs: int, threads: int) -> int:
    """The team for a call of this many multiply-adds (one thread below tuning.SERIAL_MACS)."""
    return 1 if macs < T.SERIAL_MACS else threads


def team(op, n_threads, min_bytes, what, weight_bytes, limit, extra=0):
    """(threads, per-thread budget in bytes for the pieces): each thread gets its own slice of
    the workspace -- a piece of at least min_bytes plus ``extra`` bytes of row scratch -- so
    fewer threads run when the limit cannot give each one its smallest slice."""
    if min_bytes + extra > limit:
        raise MemoryError(
            f"{op}: the im2col workspace needs {min_bytes + extra} bytes even for {what}, over "
            f"the workspace limit of {limit} bytes; raise it with convkit.set_workspace_limit()")
    n_threads = max(1, min(n_threads, limit // (min_bytes + extra)))
    chunk = min(max(2 * weight_bytes, T.CHUNK_MIN), T.CHUNK_MAX)
    return n_threads, max(min_bytes, min(chunk, limit // n_threads - extra))


# --------------------------------------------------------------------------- the rules
def avx2_algo(caps: ConvCaps, algo: str) -> bool:
    """Whether the AVX2 + FMA algorithm ``algo`` (on csrc/rowgemm.h, stem.h, wino4.h's packed
    F(4x4), ...) may be planned for float32: AVX2 + FMA run (caps.rowgemm) and either the
    float32 GEMMs go to BLAS / csrc/fgemm.h (no own GEMM: the machines they were tuned on), or
    the own AVX-512 GEMM runs on a CPU whose 512-bit FMA has the 256-bit rate and
    tuning.HALF_RATE_AVX2 names the algorithm (measured faster there).  Full-rate AVX-512 CPUs
    keep their plans."""
    return caps.rowgemm and (not caps.own_sgemm
                             or (not caps.avx512_full_rate and algo in T.HALF_RATE_AVX2))


def is_pointwise(KH, KW, stride, padding):
    return KH == 1 and KW == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0, 0, 0)


def is_depthwise(C, Cg, groups):
    return groups == C and Cg == 1 and groups > 1


def dw3_level(max_level, itemsize, n):
    """The widest level <= max_level whose vectors fit a row of n elements (csrc/dw3x3.h's
    ck_dw3_level; tests check the two agree)."""
    lvl = max_level
    while lvl > 0 and (8 << lvl) // itemsize > n:
        lvl -= 1
    return lvl


def depthwise3x3_plan(F, C, KH, KW, stride, padding, dilation, itemsize, W, Wo, max_level):
    """(level, same) of the 3x3 stride-1 depthwise kernels for this conv; level 0 when they
    do not apply (another shape, a channel multiplier, rows shorter than one vector): then the
    general depthwise kernels run.  same: padding 1 all round, read without a padded copy."""
    if F != C or (KH, KW) != (3, 3) or tuple(stride) != (1, 1) or tuple(dilation) != (1, 1):
        return 0, False
    if tuple(padding) == (1, 1, 1, 1):
        level = dw3_level(max_level, itemsize, W - 2)
        if level:
            return level, True
    return dw3_level(max_level, itemsize, min(W, Wo)), False


def scratch_threads(n: int, per_thread_bytes: int, limit: int) -> int:
    """Threads (<= n) whose per-thread scratch planes fit the workspace limit together; 0 when
    not even one does (the caller then takes a path that works in pieces)."""
    return min(n, limit // per_thread_bytes) if per_thread_bytes else n


def dense_ok(C, H, W, F, KH, KW, Ho, Wo, groups, limit):
    return (groups == 1 and H * W <= KH * KW
            and C * H * W * F * Ho * Wo <= min(T.DENSE_MAX_ELEMS, limit // T.DENSE_LIMIT_SHARE))


def batch_ok(Ho, Wo, pointwise):
    return Ho * Wo <= T.BATCH_MAX_HOWO and not pointwise


def winograd_ok(F, Cg, KH, KW, stride, dilation, groups):
    return (KH == 3 and KW == 3 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and min(F, Cg) >= T.WINOGRAD_MIN_CHANNELS)


def prefer_winograd(F, Cg, KH, KW, stride, dilation, groups, Ho, Wo):
    return (winograd_ok(F, Cg, KH, KW, stride, dilation, groups)
            and Ho * Wo > T.BATCH_MAX_HOWO)


def winotiny_floats(C, F, H, W, groups):
    """Workspace floats of one "tiny" Winograd task (_conv_winograd.winotiny_floats; a test
    checks the two agree): V and M with rows 16 floats longer than their columns, then the
    zero-bordered input block and the output block of 8 images."""
    T = groups * (H // 2) * (W // 2) * 8 + 16
    return 16 * (C + F) * T + 8 * ((H + 2) * (W + 2) + H * W)


def winotiny_fparts(G8, F, n_threads):
    """Filter blocks of winotiny's two-region split (the kernel's fparts) for G8 groups of 8
    images on n_threads: (group, block) tasks, a task's work its filters; the fewest blocks
    (of at least tuning.WINOTINY_SPLIT_MIN_FILTERS filters) whose tasks leave at most
    tuning.WINOGRAD4_MAX_IDLE of the threads idle, else the least idle."""
    num, den = T.WINOGRAD4_MAX_IDLE
    best = None
    for fp in range(1, max(1, F // T.WINOTINY_SPLIT_MIN_FILTERS) + 1):
        idle = _list_idle([(b + 1) * F // fp - b * F // fp for b in range(fp)] * G8, n_threads)
        key = (den * idle > num, idle if den * idle > num else 0, fp)
        if best is None or key < best[0]:
            best = (key, fp)
    return best[1]


def plan_winotiny(s: ConvShape, f32, caps: ConvCaps, n_threads, limit, grad_x=False):
    """(threads, groups of 8 images per task, workspace floats per thread, more params: the
    two-region split's "fparts" and "shared") of Winograd F(2x2, 3x3) on a tiny map with the
    images in the vector lanes (csrc/winotiny.h), or None.  For
    the 3x3 stride-1 convs padded by 1 on every side whose maps the batch path would take
    (<= tuning.BATCH_MAX_HOWO positions) with even sides and >= WINOGRAD_MIN_CHANNELS channels
    in and out, float32 on a fixed-order GEMM.  grad_x: the same conv of grad_y (F channels
    in, C out; the flipped filters are padded by 1 too).  Tasks are blocks of whole groups of
    8 images; every value of an image depends on that image alone (batch invariance).
    Where those leave at least half the threads idle (tuning.WINOTINY_SPLIT_TEAM; batch 64
    on 16 threads: 8 groups) and at least tuning.WINOTINY_SPLIT_MIN_THREADS are asked, the
    kernel's two-region split (winotiny_fparts; the same bits): the batch's input transform shared
    ahead of the threads' slices."""
    if not (f32 and caps.winotiny and caps.fixed_sgemm):
        return None
    if (s.KH, s.KW, s.stride, s.dilation, s.groups) != (3, 3, (1, 1), (1, 1), 1) or \
            tuple(s.padding) != (1, 1, 1, 1):
        return None
    if s.H % 2 or s.W % 2 or s.H * s.W > T.BATCH_MAX_HOWO or \
            min(s.C, s.F) < T.WINOGRAD_MIN_CHANNELS:
        return None
    cin, cout = (s.F, s.C) if grad_x else (s.C, s.F)
    groups = T.WINOTINY_GROUPS
    per = winotiny_floats(cin, cout, s.H, s.W, groups)
    if per * 4 > limit:
        return None
    ntask = ceil_div(s.N, 8 * groups)
    if T.WINOTINY_SPLIT_MIN_THREADS <= n_threads and T.WINOTINY_SPLIT_TEAM * ntask <= n_threads:
        G8 = ceil_div(s.N, 8)
        fp = winotiny_fparts(G8, cout, n_threads)
        if fp > 1:      # (_conv_winograd.winotiny_split_floats)
            cols = (s.H // 2) * (s.W // 2) * 8
            shared = 16 * cin * (G8 * cols + 16)
            wpt = 16 * ceil_div(cout, fp) * (cols + 16) + 8 * ((s.H + 2) * (s.W + 2) + s.H * s.W)
            n = min(n_threads, G8 * fp, (limit // 4 - shared) // wpt)
            if n > ntask:
                return n, groups, wpt, {"fparts": fp, "shared": shared}
    n = max(1, min(n_threads, ntask, limit // (per * 4)))
    return n, groups, per, {}


def plan_weight_winotiny(s: ConvShape, f32, caps: ConvCaps, n_threads, limit):
    """(threads, groups of 8 images per part, groups per chunk, workspace floats per thread,
    floats of the parts' sums) of grad_weight by the transposed F(2x2, 3x3) over
    plan_winotiny's 8-image tiles (_conv_winograd.conv2d_grad_weight_winotiny), or None: for
    the layers whose forward plan_winotiny takes.  The parts (tuning.WINOTINY_WGRAD_PART_GROUPS)
    are set by the layer alone: the bits do not depend on the thread count.  Where the parts
    leave at least half the threads idle (batch 64: 2 parts; tuning.WINOTINY_SPLIT_TEAM) and
    at least tuning.WINOTINY_SPLIT_MIN_THREADS are asked, the kernel's split (the same bits): the
    batch's transforms first (shared: V and Z), then 16 tasks a part, one per point; the
    last item then {"split": True, "shared": floats}, else {}."""
    if plan_winotiny(s, f32, caps, n_threads, limit) is None:
        return None
    per = (s.H // 2) * (s.W // 2) * 8            # columns of a group of 8 images
    chunk = max(1, T.WINOTINY_WGRAD_CHUNK_COLS // per)
    pg = max(T.WINOTINY_WGRAD_PART_GROUPS, chunk)
    parts = ceil_div(ceil_div(s.N, 8), pg)
    # (_conv_winograd.winotiny_wgrad_floats: V, Z, the scratch blocks, 16 to align them)
    wpt = 16 * (s.C + s.F) * (chunk * per + 16) + 8 * ((s.H + 2) * (s.W + 2) + s.H * s.W) + 16
    sums = parts * 16 * s.F * s.C
    if T.WINOTINY_SPLIT_MIN_THREADS <= n_threads and T.WINOTINY_SPLIT_TEAM * parts <= n_threads:
        # (_conv_winograd.winotiny_wgrad_split_floats; a thread's slice the scratch blocks)
        G8 = ceil_div(s.N, 8)
        shared = 16 * (s.C + s.F) * (G8 * per + 16) + 16
        spt = 8 * ((s.H + 2) * (s.W + 2) + s.H * s.W)
        n = min(n_threads, G8 * (s.C + s.F), (limit // 4 - sums - shared) // spt)
        if n > parts:
            return n, pg, chunk, spt, sums, {"split": True, "shared": shared}
    n = max(1, min(n_threads, parts, (limit // 4 - sums) // wpt))
    if (sums + n * wpt) * 4 > limit:
        return None
    return n, pg, chunk, wpt, sums, {}


def winotiny_step(p):
    """The "winograd" Step of plan_winotiny's answer p."""
    return Step("winograd", p[0], {"tile": 2, "tiny": True, "groups": p[1], "per_thread": p[2],
                                   **p[3]})


def row_blocks(own_gemm):
    """Row blocks for the dense grad_weight's gemm_rows: one per thread on the own GEMM (its
    bits do not depend on the split); tuning.BLAS_DENSE_W_BLOCKS on BLAS, whose kernels follow
    the row count (set by the layer alone)."""
    return 0 if own_gemm else T.BLAS_DENSE_W_BLOCKS


def dense_params(own_gemm, fixed=False):
    """The dense Step's parameters: ``row_blocks`` for grad_weight's GEMM (its rows are input
    pixels), ``image_rows`` for the forward's and grad_x's (their rows are images): one image
    per GEMM on BLAS (batch invariance), the row blocks on a fixed-order GEMM.  A fixed-order
    GEMM's bits do not follow the split either, so it takes one block per thread as the own
    GEMM does: BLAS's four blocks packed the dense matrix four times (LeNet5's conv2 and the
    small ResNet's 2x2 layer 1.0-1.3x slower, bench/dense_blocks_ab.py)."""
    return {"row_blocks": row_blocks(own_gemm or fixed),
            "image_rows": 0 if own_gemm or fixed else 1}


def image_blocks(Ho, Wo):
    """(rows, blocks) of a BLAS forward that cuts each image by rows (im2col): the image in k
    blocks of floor / ceil(Ho / k) rows (blocks k; 0 where k divides Ho: blocks of ``rows``),
    k the largest power of two at most tuning.BLAS_TASKS with at least
    tuning.BLAS_MIN_POSITIONS positions a block -- set by the image alone (batch invariance);
    a power of two makes even tasks on 2^j threads (strided_14's 14 rows: 4 blocks of 3 / 4,
    7 rows a pair, where 5 blocks of 3, 3, 3, 3, 2 left 22 % of 16 threads idle; the rows
    before were ceil(Ho / BLAS_TASKS), at least BLAS_MIN_POSITIONS / Wo)."""
    k = 1 << (max(1, min(T.BLAS_TASKS, Ho)).bit_length() - 1)
    while k > 1 and Ho // k * Wo < T.BLAS_MIN_POSITIONS:
        k //= 2
    return ceil_div(Ho, k), (k if Ho % k else 0)


def batch_padded(Ho, Wo, KH, KW, stride, dilation):
    """(Hp, Wp): the padded plane the batch im2col gathers from (the rows and columns the taps
    read)."""
    return ((Ho - 1) * stride[0] + (KH - 1) * dilation[0] + 1,
            (Wo - 1) * stride[1] + (KW - 1) * dilation[1] + 1)


def panel_images(imgs, HoWo):
    """imgs rounded down to whole GEMM panels of columns where that leaves at least one."""
    q = T.GEMM_PANEL // math.gcd(T.GEMM_PANEL, HoWo)       # images per whole panel
    return imgs // q * q if imgs >= q else imgs


def gemm_panel(m):
    """The columns a panel of the own float32 GEMM of m rows takes (csrc/sgemm.h: 6-row x
    64-column tiles where m is a multiple of 6 but not of 8 and C's rows fit one pass)."""
    return T.GEMM_PANEL_M6 if m % 8 and m % 6 == 0 and m <= 96 else T.GEMM_PANEL


def gemm_columns(L, panel):
    """The columns a GEMM of L columns costs on the own GEMM: whole panels, then the partial
    one -- 1-4 columns as they are (vectors along m), more in 16-column vectors."""
    full, tail = divmod(L, panel)
    return full * panel + (tail if tail <= T.GEMM_EDGE_N else ceil_div(tail, 16) * 16)


def static_span(costs, n_threads):
    """The busiest thread's cost when OpenMP's static schedule deals ``costs`` (the tasks in
    order) out in contiguous chunks, the first len % n_threads threads one task more."""
    q, r = divmod(len(costs), n_threads)
    span, i = 0, 0
    for t in range(min(n_threads, len(costs))):
        k = q + (t < r)
        span = max(span, sum(costs[i:i + k]))
        i += k
    return span


def pointwise_positions(N, HoWo, n_threads, panel):
    """Positions per task of a pointwise forward on the own GEMM (tasks: runs of an image's
    positions, image after image, a static schedule): of whole panels or an even split of the
    image (a partial panel as gemm_columns costs it), the run whose busiest thread ends first,
    the longer run on a tie.  The old rule (whole 48-column panels, about 2 tasks a thread)
    left 18 % of 16 threads idle on rpn_cls1x1 and 32 % on pw_14 by the static split."""
    panels = ceil_div(HoWo, panel)
    runs = {min(HoWo, per * panel) for per in range(1, panels + 1)}
    runs |= {ceil_div(HoWo, t) for t in range(1, 2 * ceil_div(n_threads, N) + 1)}
    best = None
    for L in sorted(runs, reverse=True):
        if best is not None and N * ceil_div(HoWo, L) > 8 * n_threads:
            break                                       # (finer runs only cost more)
        full, tail = divmod(HoWo, L)
        costs = ([gemm_columns(L, panel)] * full + ([gemm_columns(tail, panel)] if tail else []))
        span = static_span(costs * N, n_threads)
        if best is None or span < best[0]:
            best = (span, L)
    return best[1]


def im2col_rows(N, Ho, Wo, n_threads, most, panel):
    """(rows, blocks) of an im2col forward from tuning.IM2COL_SPLIT_MIN_THREADS threads (tasks:
    an image's blocks of rows, image after image, a static schedule): of blocks of 1..most rows
    (the workspace piece; blocks 0) and even splits of the image in k blocks of floor / ceil(Ho
    / k) rows (blocks k, rows the ceiling), the split whose busiest thread ends first -- the
    rows-row blocks before an even split, the longer on a tie.  A task costs its GEMM's
    columns (on the own GEMM, panel > 0, as gemm_columns costs them; the copies follow the
    columns).  The old rule (the piece's rows, cut to about 2 tasks a thread) left 12-22 % of
    16 threads idle on a batch of 8 (bench/many_core_split.py)."""
    def cost(r):
        return gemm_columns(r * Wo, panel) if panel else r * Wo
    most = max(1, min(Ho, most))
    best = None
    for rows in range(most, 0, -1):
        if best is not None and N * ceil_div(Ho, rows) > 8 * n_threads:
            break                                       # (finer blocks only cost more)
        full, tail = divmod(Ho, rows)
        span = static_span(([cost(rows)] * full + ([cost(tail)] if tail else [])) * N,
                           n_threads)
        if best is None or span < best[0]:
            best = (span, rows, 0)
    for k in range(ceil_div(Ho, most), min(Ho, ceil_div(8 * n_threads, N)) + 1):
        if Ho % k:          # (else the rows-row blocks above)
            span = static_span([cost((b + 1) * Ho // k - b * Ho // k) for b in range(k)] * N,
                               n_threads)
            if span < best[0]:
                best = (span, ceil_div(Ho, k), k)
    return best[1:]


# --------------------------------------------------------------------------- the planners
def piece_bytes(min_bytes, weight_bytes, limit, extra):
    """The workspace piece a task's sums are cut by, set by the layer and the limit alone:
    team()'s per-thread budget shrinks as the team grows under a tight limit, and a row block
    that followed it would change the order of the sums with the thread count."""
    chunk = min(max(2 * weight_bytes, T.CHUNK_MIN), T.CHUNK_MAX)
    return max(min_bytes, min(chunk, limit - extra))


def fit_team(n_threads, ws_bytes, extra, limit):
    """The team whose slices of ws_bytes (+ extra row scratch) fit the workspace limit."""
    return max(1, min(n_threads, limit // (ws_bytes + extra)))


def weight_parts(tasks, N, Ho, Wo, min_k=None):
    """(parts, rows per slab at most) of a BLAS grad_weight: its sum over the batch's (image,
    row block) slabs is cut into fixed parts, summed apart and added in order after, so that
    ``tasks`` column blocks make about tuning.BLAS_W_TASKS tasks (a multiple of
    tuning.BLAS_W_ALIGN where the batch allows), one part more per ``min_k``
    (tuning.BLAS_W_PART_MIN_K) products per weight.  Set by the layer alone."""
    q = T.BLAS_W_ALIGN // math.gcd(T.BLAS_W_ALIGN, tasks)
    want = ceil_div(ceil_div(T.BLAS_W_TASKS, tasks), q) * q
    min_k = T.BLAS_W_PART_MIN_K if min_k is None else min_k
    parts = max(1, min(want, 1 + N * Ho * Wo // min_k, N * Ho))
    if parts > q:
        parts = parts // q * q
    return parts, ceil_div(Ho, ceil_div(parts, N))


def blas_weight_costs(N, G, Fg, Ug, KW, Ho, Wo, units, nsplit, rows):
    """The tasks' costs of a BLAS im2col grad_weight in the kernel's order (column block after
    column block, its parts in order): a task's GEMM (Fg x units*KW x its slabs' outputs), its
    columns (units*KW per output), grad_y repacked (Fg per output) and, on a block's last
    part, the other parts added into gw -- bench/many_core_split.py's formulas."""
    slabs = [min(rows, Ho - h) * Wo for h in range(0, Ho, rows)] * N
    S = len(slabs)
    parts = [sum(slabs[sp * S // nsplit:(sp + 1) * S // nsplit]) for sp in range(nsplit)]
    costs = [(Fg + 1) * u * KW * L + Fg * L + (Fg * u * KW * (nsplit - 1) if sp == nsplit - 1
                                               else 0)
             for u0 in range(0, Ug, units) for u in (min(units, Ug - u0),)
             for sp, L in enumerate(parts)]
    return costs * G


def blas_weight_split(N, G, Fg, Ug, KW, Ho, Wo, units, cap):
    """(units_w, nsplit, rows_w) of a BLAS im2col grad_weight, set by the layer alone (the
    bits): column blocks of ``units`` (channel, kh) tap rows (about tuning.BLAS_TASK_COLS
    columns) and weight_parts' parts -- unless those tasks leave more than tuning.BLAS_W_IDLE
    of tuning.BLAS_W_ALIGN threads idle (OpenMP's static chunks, blas_weight_costs).  Then,
    of the blocks of ceil(Ug / k) rows (k from half the old count to it: never narrower --
    OpenBLAS ran strided_14's 72-column blocks 4-5 % slower than its 96, 144 and 192 1-3 %
    faster) and 1 to 1 + N*Ho*Wo // tuning.BLAS_W_SPLIT_MIN_K parts (a part ~0.6-0.8 % there,
    bench/im2col_blas_split_cpu.py) whose tasks leave at most that idle on 2, 4, ...
    BLAS_W_ALIGN threads (at most 4 * tuning.BLAS_W_TASKS tasks): the fewest tasks, then the
    widest blocks, then the fewest parts.  None: the old split.  cap: the workspace piece's
    tap rows of one output row."""
    def rows_for(u, parts):
        return max(1, min(Ho, cap // u, ceil_div(Ho, ceil_div(parts, N))))

    def idle(u, parts, rows, team):
        costs = blas_weight_costs(N, G, Fg, Ug, KW, Ho, Wo, u, parts, rows)
        return 1 - sum(costs) / (team * static_span(costs, team))

    nsplit, most = weight_parts(G * ceil_div(Ug, units), N, Ho, Wo)
    rows = min(rows_for(units, 1), most)
    if idle(units, nsplit, rows, T.BLAS_W_ALIGN) <= T.BLAS_W_IDLE:
        return units, nsplit, rows
    teams = [1 << i for i in range(1, T.BLAS_W_ALIGN.bit_length())]
    top = max(1, min(1 + N * Ho * Wo // T.BLAS_W_SPLIT_MIN_K, N * Ho))
    best = None
    k0 = ceil_div(Ug, units)
    for u in sorted({ceil_div(Ug, k) for k in range(ceil_div(k0, 2), k0 + 1)}):
        if u > cap:
            break
        k = ceil_div(Ug, u)
        for parts in range(1, top + 1):
            if G * k * parts > (best[0][0] if best else 4 * T.BLAS_W_TASKS):
                break           # (more tasks than the best, or than a search need try)
            r = rows_for(u, parts)
            if all(idle(u, parts, r, t) <= T.BLAS_W_IDLE for t in teams):
                key = (G * k * parts, k, parts)
                if best is None or key < best[0]:
                    best = (key, (u, parts, r))
                break           # (more parts: more tasks)
    return best[1] if best else (units, nsplit, rows)


def plan_im2col_forward(N, C, KK, Ho, Wo, W, sw, itemsize, n_threads, pointwise, weight_bytes,
                        own_gemm, limit, fixed=False, Fg=8):
    """(threads, output rows per task -- pointwise: output positions --, workspace elements per
    thread, blocks per image: 0, or the even split of im2col_rows, filter blocks: 1, or
    pointwise_filter_blocks on BLAS -- helper pwf13).  fixed (BLAS's splits on
    a fixed-order float32 GEMM): the splits may follow the
    batch, as BLAS's did before the batch-invariance rule (fewer, wider GEMMs).  Fg: the
    GEMM's rows (filters per group; the own GEMM's panel width, gemm_panel)."""
    if pointwise:
        # x is its own column matrix: a task is a run of an image's output positions, so one
        # image still makes even tasks; on the own GEMM whole panels (pointwise_positions),
        # on BLAS a split set by the image alone (batch invariance)
        HoWo = Ho * Wo
        if not own_gemm:    # (a power of two splits per image: even tasks on 2^k threads)
            most = min(ceil_div(T.BLAS_FORWARD_TASKS, N) if fixed else
                       min(T.BLAS_FORWARD_TASKS, HoWo // T.BLAS_MIN_POSITIONS),
                       HoWo * T.BLAS_POSITION_BYTES // max(1, weight_bytes))
            runs = 1 << (max(1, most).bit_length() - 1)
            fblocks = 1 if fixed else pointwise_filter_blocks(Fg, runs)
            return n_threads, ceil_div(HoWo, runs), 0, 0, fblocks
        if n_threads == 1:
            return 1, HoWo, 0, 0, 1
        return n_threads, pointwise_positions(N, HoWo, n_threads, gemm_panel(Fg)), 0, 0, 1
    per_row = C * KK * Wo * itemsize          # columns of one output row of one image
    extra = (W + sw) * itemsize
    blocks = 0
    n_threads, budget = team("conv2d_forward", n_threads, per_row,
                             "one output row of one image", weight_bytes, limit, extra)
    if not own_gemm:    # (BLAS: blocks set by the image, not the batch or the threads)
        most = piece_bytes(per_row, weight_bytes, limit, extra) // per_row
        if fixed and n_threads >= T.IM2COL_SPLIT_MIN_THREADS:
            # csrc/fgemm.h sums each output in one order whatever its block: the blocks may
            # follow the team (BLAS_TASKS' blocks left 8 of 16 threads idle on a batch of 8)
            rows, blocks = im2col_rows(N, Ho, Wo, n_threads, min(Ho, most), 0)
        elif fixed:
            rows = min(most, Ho, ceil_div(Ho, ceil_div(T.BLAS_TASKS, N)))
        else:
            rows, blocks = image_blocks(Ho, Wo)
            if rows > most:             # (the piece's rows instead)
                rows, blocks = most, 0
        n_threads = fit_team(n_threads, rows * per_row, extra, limit)
    else:
        rows = min(Ho, budget // per_row)
        if n_threads >= T.IM2COL_SPLIT_MIN_THREADS:
            rows, blocks = im2col_rows(N, Ho, Wo, n_threads, rows, gemm_panel(Fg))
        elif n_threads > 1 and N * ceil_div(Ho, rows) < T.FORWARD_TASKS_PER_THREAD * n_threads:
            rows = max(1, ceil_div(Ho, ceil_div(T.FORWARD_TASKS_PER_THREAD * n_threads, N)))
    return n_threads, rows, rows * per_row // itemsize + W + sw, blocks, 1


def pointwise_filter_blocks(Fg, runs):
    """Filter blocks of a pointwise forward on BLAS whose image makes ``runs`` runs of
    positions: up to tuning.BLAS_PW_FWD_TASKS tasks an image, each block at least
    tuning.BLAS_PW_FWD_MIN_FILTERS filters, a power of two of blocks (even tasks on 2^k
    threads) -- set by the layer alone (bits, batch invariance).  A block's GEMM repacks the
    run of x and its own filters' weights, where a run of positions repacks the whole weight
    (float64's pw_14: one run an image, 8 tasks on 16 threads; 2 blocks: 16)."""
    k = min(ceil_div(T.BLAS_PW_FWD_TASKS, runs), Fg // max(1, T.BLAS_PW_FWD_MIN_FILTERS))
    return 1 << (max(1, k).bit_length() - 1)


def grad_x_chans(Cg, G, KK, N=0, n_threads=1):
    """Channels per grad_x GEMM on BLAS (im2col, pointwise): the group's channels in
    tuning.BLAS_GRAD_X_TASKS blocks over the groups, each at least
    tuning.BLAS_GRAD_X_MIN_ROWS GEMM rows (channels x taps; each block repacks grad_y), that
    count of blocks down to a power of two, of near-equal channels -- set by the image's
    shape alone (batch invariance).  N > 0 (a fixed-order GEMM, where a block's bits
    do not follow its shape): that many tasks over the whole batch of N images -- from
    tuning.IM2COL_SPLIT_MIN_THREADS threads at least one a thread (4 left 8 of 16 idle)."""
    if N > 0:
        tasks = max(T.BLAS_GRAD_X_TASKS,
                    n_threads if n_threads >= T.IM2COL_SPLIT_MIN_THREADS else 0)
        return ceil_div(Cg, ceil_div(tasks, N * G))
    rule = max(ceil_div(Cg, ceil_div(T.BLAS_GRAD_X_TASKS, G)),
               min(Cg, ceil_div(T.BLAS_GRAD_X_MIN_ROWS, KK)))
    # (that rule's block count down to a power of two, the channels shared out evenly: even
    # tasks on 2^j threads -- strided_14's 64 channels of 9 taps made 29 + 29 + 6, 22 % of
    # 16 threads idle; now 2 x 32.  One block of 48 where 29 + 19 were cost float64 15 %)
    k = ceil_div(Cg, rule)
    return ceil_div(Cg, 1 << (k.bit_length() - 1))


def pointwise_grad_x_chans(Cg, G):
    """Channels per grad_x GEMM of a pointwise conv on BLAS: grad_x_chans, except that a group
    left whole is cut in two blocks where each keeps at least tuning.BLAS_PW_GX_HALF_MIN_C
    channels (pw_14: 16 tasks on 8 images, not 8 -- half of 16 threads idle; each block repacks
    grad_y: one core x0.99-1.05 at 128 channels in float64, x1.04-1.07 in float32).  Set by the
    image's shape alone."""
    chans = grad_x_chans(Cg, G, 1, 0)
    if chans == Cg and Cg >= 2 * T.BLAS_PW_GX_HALF_MIN_C:
        chans = ceil_div(Cg, 2)
    return chans


def pointwise_weight_parts(tasks, N, Ho, Wo):
    """(parts, rows per slab) of a pointwise grad_weight on BLAS whose ``tasks`` (column and
    filter blocks) are still fewer than tuning.BLAS_PW_W_TASKS: weight_parts with
    tuning.BLAS_PW_PART_MIN_K products per weight a part (each part costs a pass over its
    block of gw: pw_14 ~3 % on one core, where filter blocks cost nothing); else one part."""
    if tasks >= T.BLAS_PW_W_TASKS:
        return 1, Ho
    return weight_parts(tasks, N, Ho, Wo, T.BLAS_PW_PART_MIN_K)


def pointwise_weight_filters(Fg, tasks):
    """Filters per task of a pointwise grad_weight on BLAS whose ``tasks`` (column blocks over
    the groups) are fewer than tuning.BLAS_PW_W_TASKS: the group's filters in enough blocks to
    reach it, whole 8-row blocks of at least tuning.BLAS_PW_MIN_FILTERS (each block's GEMMs
    repack the columns of x: pw_14's 4 blocks of 256 cost one core nothing measurable); else
    all.  Set by the layer alone."""
    if tasks >= T.BLAS_PW_W_TASKS:
        return Fg
    nf = ceil_div(ceil_div(Fg, ceil_div(T.BLAS_PW_W_TASKS, tasks)), 8) * 8
    return Fg if nf < T.BLAS_PW_MIN_FILTERS or nf >= Fg else nf


def pointwise_smallk(Fg, Cg, own_gemm, fixed):
    """Whether a pointwise grad_x on BLAS (not the own GEMM, not csrc/fgemm.h) runs on
    csrc/smallk.h: each output one chain over the filters in order, so its blocks may follow
    the team (rpn_cls1x1's 18 filters made 2 BLAS tasks, 88 % of 16 threads idle).  Up to
    tuning.BLAS_PW_GX_SMALL_K filters and from tuning.BLAS_PW_GX_SMALL_MIN_C channels, where it
    measured no slower than OpenBLAS on one core."""
    return (not own_gemm and not fixed and Fg <= T.BLAS_PW_GX_SMALL_K
            and Cg >= T.BLAS_PW_GX_SMALL_MIN_C)


def pointwise_weight_blocks(Fg, Cg, G):
    """(filters, channels) per task of a pointwise grad_weight on csrc/fgemm.h.  The larger of
    the two sides is the GEMM's rows, read in place; the smaller its columns, packed per GEMM
    (fgemm packs a transposed operand), in blocks of at most tuning.PW_W_COLS; the rows in
    blocks for about tuning.PW_W_TASKS tasks over the groups, at least tuning.PW_W_MIN_ROWS
    (each packed value serves that many FMAs), whole 6-row tiles where that keeps the count.
    Set by the layer alone (and no sum follows it: one chain per entry)."""
    big, small = max(Fg, Cg), min(Fg, Cg)
    cols = min(small, T.PW_W_COLS)
    want = max(1, ceil_div(T.PW_W_TASKS, G * ceil_div(small, cols)))
    rows = min(big, max(T.PW_W_MIN_ROWS, ceil_div(big, want)))
    tiled = ceil_div(rows, 6) * 6
    if ceil_div(big, tiled) == ceil_div(big, rows):
        rows = min(big, tiled)
    return (rows, cols) if Fg >= Cg else (cols, rows)


def plan_im2col_backward(N, C, Cg, G, KH, KW, Ho, Wo, W, sw, itemsize, n_threads, pointwise,
                         needs_gx, weight_bytes, own_gemm, limit, fixed=False, F=None):
    """(threads, units_w, rows_w, chans_x, rows_x, nsplit, workspace elements per thread,
    filters_w, pos_x): filters per grad_weight task and output positions per grad_x task (a
    pointwise conv on csrc/fgemm.h; else all the group's filters and the whole image).

    Every split that orders a sum is set by the layer and the limit alone: grad_weight's rows
    per GEMM (rows_w) and grad_x's (rows_x) always; on BLAS also the column blocks (units_w),
    the parts of the batch (nsplit; both blas_weight_split) and grad_x's channel blocks
    (chans_x), whose widths pick OpenBLAS's kernels.  The own GEMM sums each output in a fixed order
    whatever the block, so there the blocks follow the team."""
    Ug = Cg * KH
    Fg = (weight_bytes // (Cg * KH * KW * itemsize) if F is None else F) // G
    if pointwise and fixed:
        # float32 on csrc/fgemm.h: each grad_weight entry is one FMA chain over the batch's
        # positions in order, each grad_x entry one over the filters, whatever block computes
        # it -- the blocks below cut no sum, they only share the work out (issue 16's many
        # cores): grad_weight in (filter, channel) blocks, grad_x in runs of positions (the
        # forward's), every channel of the group in one GEMM
        filters_w, units_w = pointwise_weight_blocks(Fg, Cg, G)
        pos_x = plan_im2col_forward(N, C, 1, Ho, Wo, W, sw, itemsize, n_threads, True,
                                    weight_bytes, False, limit, True)[1]
        return n_threads, units_w, Ho, Cg, Ho, 1, 0, filters_w, pos_x
    if pointwise:
        units_w = ceil_div(Ug, ceil_div(n_threads, G) if own_gemm else
                           ceil_div(Ug, T.BLAS_POINTWISE_COLS))     # (see below)
        if own_gemm:
            chans_x = ceil_div(Cg, ceil_div(T.GRAD_X_TASKS_PER_THREAD * n_threads, N * G))
            return n_threads, units_w, Ho, chans_x, Ho, 1, 0, Fg, Ho * Wo
        # BLAS: grad_x's channel blocks (see below); grad_weight's column blocks, filter blocks
        # and parts of the batch's (image, row block) slabs -- all set by the layer
        # (grad_x not cut finer: channel blocks or runs of positions for 16 tasks cost one
        # core 7-39 % on pw_14 / rpn_cls1x1, RESULTS.md thirteenth session, blasmisc13 --
        # but one block in two halves, pointwise_grad_x_chans: helper last13)
        chans_x, pos_x = pointwise_grad_x_chans(Cg, G), Ho * Wo
        if pointwise_smallk(Fg, Cg, own_gemm, fixed) and n_threads > 1:
            # csrc/smallk.h: no sum cut, runs of positions as the team likes (whole 16-wide
            # tiles, or an even split of the image)
            chans_x, pos_x = Cg, pointwise_positions(N, Ho * Wo, n_threads, 16)
        elif pointwise_smallk(Fg, Cg, own_gemm, fixed):
            chans_x = Cg
        filters_w = pointwise_weight_filters(Fg, G * ceil_div(Ug, units_w))
        nsplit, rows_w = pointwise_weight_parts(G * ceil_div(Ug, units_w)
                                                * ceil_div(Fg, filters_w), N, Ho, Wo)
        return n_threads, units_w, rows_w, chans_x, Ho, nsplit, 0, filters_w, pos_x
    unit_w = KW * Wo * itemsize                    # one (channel, kh) tap row, one output row
    unit_x = KH * KW * Wo * itemsize               # one channel's taps, one output row
    extra = (W + sw) * itemsize
    min_bytes = unit_x if needs_gx else unit_w
    n_threads, budget = team("conv2d_backward", n_threads, min_bytes,
                             "one output row of one channel", weight_bytes, limit, extra)
    piece = piece_bytes(min_bytes, weight_bytes, limit, extra)
    # BLAS (float64, or a CPU without AVX-512F) may sum a column's products in an order that
    # depends on the width of the block it is given: column blocks of a size set by the layer
    # alone keep grad_weight thread-count independent
    blas_units = max(1, min(ceil_div(Ug, ceil_div(Ug * KW, T.BLAS_TASK_COLS)), piece // unit_w))
    # rows per GEMM from the layer's BLAS-sized column block, whatever block the team takes:
    # the own GEMM sums k in blocks set by k, so rows that followed the team changed the bits
    rows_w = max(1, min(Ho, piece // (blas_units * unit_w)))
    nsplit = 1
    if not own_gemm:
        units_w, nsplit, rows_w = blas_weight_split(N, G, Fg, Ug, KW, Ho, Wo, blas_units,
                                                    piece // unit_w)
    else:
        units_w = ceil_div(Ug, ceil_div(n_threads, G))
        if n_threads > 1:
            # several tasks per thread (a thread held up by other load otherwise leaves the
            # other waiting), each a whole number of the own GEMM's panels where that still
            # leaves two tasks per thread; each task packs grad_y again (~5% of a GEMM here)
            step = T.GEMM_PANEL // math.gcd(T.GEMM_PANEL, KW)
            whole = ceil_div(ceil_div(Ug, ceil_div(T.GRAD_WEIGHT_TASKS_PER_THREAD * n_threads,
                                                   G)), step) * step
            if ceil_div(Ug, whole) >= T.GRAD_WEIGHT_MIN_TASKS_PER_THREAD * n_threads:
                units_w = whole  # (else, e.g. a 3-channel stem, one task per thread as before)
        units_w = max(1, min(units_w, budget // (rows_w * unit_w)))
    if needs_gx:
        # output rows per GEMM from the group's channel count, not from the channels per task
        # (which follow the thread count): the row blocks fix the order of grad_x's sums
        rows_x = max(1, min(Ho, piece // (Cg * unit_x)))
        # channels per task: on BLAS from the layer alone (OpenBLAS's kernels follow the GEMM's
        # row count, so a split that followed the thread count or the batch changed grad_x's
        # bits)
        chans_x = (ceil_div(Cg, ceil_div(T.GRAD_X_TASKS_PER_THREAD * n_threads, N * G))
                   if own_gemm else grad_x_chans(Cg, G, KH * KW, N if fixed else 0,
                                                  n_threads))
        chans_x = max(1, min(chans_x, piece // (rows_x * unit_x)))
        if own_gemm:
            chans_x = max(1, min(chans_x, budget // (rows_x * unit_x)))
    else:
        chans_x, rows_x = Cg, Ho        # unused: no grad_x pass
    ws = max(units_w * rows_w * unit_w, chans_x * rows_x * unit_x if needs_gx else 0)
    n_threads = fit_team(n_threads, ws, extra, limit)
    return (n_threads, units_w, rows_w, chans_x, rows_x, nsplit, ws // itemsize + W + sw, Fg,
            Ho * Wo)


def winograd_tile(C, F, Ho, Wo, own_gemm):
    """4 (F(4x4, 3x3)) or 2 (F(2x2, 3x3)): F(4x4) where its GEMMs go to BLAS, both channel
    counts are at least tuning.WINOGRAD4_MIN_CHANNELS and its multiplications, padding tiles
    included, are at most tuning.WINOGRAD4_MAX_MUL_RATIO of F(2x2)'s (36 per 4x4 tile against
    16 per 2x2 tile).  On the own AVX-512 GEMM F(2x2) stays (its transforms have AVX-512
    versions there) -- own_gemm False there too on a half-rate AVX-512 CPU (winograd_own),
    where F(4x4) measured 1.0-1.3x F(2x2)'s speed (bench/half_rate_ab.py)."""
    if own_gemm or min(C, F) < T.WINOGRAD4_MIN_CHANNELS:
        return 2
    f4 = 36 * ceil_div(Ho, 4) * ceil_div(Wo, 4)
    f2 = 16 * ceil_div(Ho, 2) * ceil_div(Wo, 2)
    num, den = T.WINOGRAD4_MAX_MUL_RATIO
    return 4 if den * f4 <= num * f2 else 2


def winograd_packed(tile, fixed):
    """Whether F(4x4)'s transformed filters are packed for csrc/wino4.h's ck_w4_gemm_pk (float32
    on csrc/fgemm.h's fixed-order kernel: ``fixed``): strips of 6 filters, each GEMM tile's
    filters one contiguous stream, the same bits as fgemm.h on the plain layout."""
    return tile == 4 and fixed


def winograd_filter_rows(F, packed):
    """Rows (filters) of each transformed plane: whole strips of 6 when packed."""
    return ceil_div(F, 6) * 6 if packed else F


def winograd_scratch(tile, trows, tw):
    """Row scratch (elements) of a Winograd task (csrc/wino4.h's ck_w4_input_scratch and
    ck_w4_output_scratch for tile 4; tests check the two agree)."""
    if tile == 2:
        return 8 * (2 * tw + 2)
    return max(13 * (4 * tw + 4), 40 * trows * tw + 4 * tw)


# conv2d_forward_winograd's extra distance between the planes of a task's V and of its M
# (elements, _conv_winograd.WINO_PLANE_PAD): C * tiles apart (res_14's 256 x 64 floats) all
# planes' runs share cache sets and the input transform's stores miss L1 and L2
WINOGRAD_PLANE_PAD = 16


def winograd_plane_pad(tile):
    """Elements a task's slice holds past V, M and the row scratch: the planes' padding."""
    return 2 * (tile + 2) ** 2 * WINOGRAD_PLANE_PAD


def plan_winograd(N, C, F, Ho, Wo, itemsize, n_threads, weight_bytes, own_gemm, limit,
                  tile=2, fixed=False):
    """(threads, tile rows per task, workspace elements per thread, more params: F(4x4)'s
    two-region split "fparts" and "shared", winograd4_split; on BLAS its staged split
    "staged", "lead" and "shared", winograd4_staged), or None when not even one tile
    row per thread fits the workspace limit.  tile: 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3))."""
    if tile == 4:
        return _plan_winograd4(N, C, F, Ho, Wo, itemsize, n_threads, weight_bytes, limit, fixed)
    tw = (Wo + 1) // 2
    th = (Ho + 1) // 2
    per_row = 16 * (C + F) * tw * itemsize      # V and M of one row of 2x2 tiles
    extra = 8 * (2 * tw + 2) + winograd_plane_pad(2)
    try:
        n_threads, budget = team("conv2d_forward", n_threads, per_row, "one row of tiles",
                                 weight_bytes, limit, extra * itemsize)
    except MemoryError:
        return None
    trows = min(N * th, budget // per_row)     # rows of tiles of the whole batch per task
    if not own_gemm and fixed:
        # a fixed-order GEMM: blocks may span images; tasks set by the batch alone
        trows = max(1, min(trows, ceil_div(N * th, T.BLAS_TASKS)))
    elif not own_gemm:
        # BLAS may sum differently for a different number of columns (tiles) and a tile's
        # place among them: tasks within one image (the kernel's per_image), their tile rows
        # set by the image alone, keep the bits the same for any thread count and batch
        trows = max(1, min(trows, th, max(ceil_div(th, T.BLAS_TASKS),
                                          ceil_div(T.WINOGRAD4_TASK_TILES, tw))))
    elif n_threads > 1:
        most = budget // itemsize      # (the elements of a task's V and M)
        tasks = max(ceil_div(N * th, trows), T.WINOGRAD_TASKS_PER_THREAD * n_threads)
        if tasks < T.WINOGRAD_EVEN_TASKS * n_threads:
            tasks = ceil_div(tasks, n_threads) * n_threads
        trows = max(1, ceil_div(N * th, tasks))
        # (the own GEMM sums each output in a fixed order: neither the tile rows per task nor
        # the filter blocks cut a sum)
        split = None if n_threads < T.WINOGRAD_SPLIT_MIN_THREADS else \
            winograd2_split(N * th, tw, C, F, trows, most, n_threads)
        if split is not None and split[1] == 1:
            trows = split[0]
        elif split is not None:
            from ._conv_winograd import wino2_split_floats     # (a pure size computation)
            shared, per = wino2_split_floats(N, C, F, Ho, Wo, *split)
            if (shared + n_threads * per) * itemsize <= limit:
                return n_threads, split[0], per, {"fparts": split[1], "shared": shared}
    return n_threads, trows, trows * per_row // itemsize + extra, {}


def own_gemm_cols(L):
    """The columns a GEMM of L columns costs on the own AVX-512 GEMM's tuning.GEMM_PANEL
    panels (gemm_columns)."""
    return gemm_columns(L, T.GEMM_PANEL)


def _static_lost(costs, useful, n_threads):
    """The share of n_threads x the makespan (static_span) not spent on ``useful`` work
    (sum(costs): the idle share alone)."""
    return 1 - useful / (n_threads * static_span(costs, n_threads))


def winograd2_split(rows, tw, C, F, trows, most, n_threads):
    """(tile rows, filter blocks) for F(2x2) on the own GEMM (the kernel's fparts; 1: the
    one-region split with these tile rows), or None to keep ``trows``: where the one-region
    tasks of trows tile rows (tw tiles each) leave more than tuning.WINOGRAD_MAX_IDLE of the
    team idle (res_14's 28 tasks on 16 threads, rpn_3x3's 19), equal blocks of tile rows (at
    least tuning.WINOGRAD_SPLIT_MIN_TILES tiles where the batch has them; a thread's slice, V
    and M or, V shared, one block's M, at most ``most`` elements as the one-region slice) x
    near-equal blocks of whole 8-filter strips (at least tuning.WINOGRAD_SPLIT_MIN_STRIPS;
    _conv_winograd.wino2_filter_block), at most tuning.WINOGRAD_EVEN_TASKS tasks a thread:
    the fewest that lose at most that share (idle threads and the own GEMM's partial panels,
    own_gemm_cols), then the least data read again (each filter block reads the tiles' V, each
    tile-row block the filters' U), then the least lost; else the least lost."""
    num, den = T.WINOGRAD_MAX_IDLE
    nu = ceil_div(F, 8)

    def costs(tr, fp):
        fb = [min(F, 8 * ((b + 1) * nu // fp)) - 8 * (b * nu // fp) for b in range(fp)]
        tiles = [min(tr, rows - g) * tw for g in range(0, rows, tr)]
        return [own_gemm_cols(P) * f for P in tiles for f in fb]
    one = costs(trows, 1)
    if den * _static_lost(one, sum(one), n_threads) <= num:
        return None
    best = None
    lo = min(rows, ceil_div(T.WINOGRAD_SPLIT_MIN_TILES, tw))
    for tr in sorted({ceil_div(rows, k) for k in range(1, rows + 1)}):     # (equal blocks)
        for fp in range(1, max(1, nu // T.WINOGRAD_SPLIT_MIN_STRIPS) + 1):
            # (a thread's slice: V and M where fp is 1, one block's M where V is shared)
            if tr < lo or ceil_div(rows, tr) * fp > T.WINOGRAD_EVEN_TASKS * n_threads or (
                    16 * ((C + F) if fp == 1 else 8 * ceil_div(nu, fp)) * tr * tw > most
                    and tr > 1):
                continue
            c = costs(tr, fp)
            ls = _static_lost(c, rows * tw * F, n_threads)
            over = den * ls > num
            key = (over, ls if over else 0, len(c), fp * rows * tw + ceil_div(rows, tr) * F,
                   ls, -tr)
            if best is None or key < best[0]:
                best = (key, tr, fp)
    return None if best is None or best[1:] == (trows, 1) else best[1:]


def winograd_gemm(tile, own, fixed):
    """(own, fixed) for plan_winograd at this tile: F(4x4) on a half-rate AVX-512 CPU runs as
    on the AVX2 machines (the packed GEMMs on csrc/fgemm.h, blocks spanning images), F(2x2)
    on the own GEMM."""
    if tile == 4 and own:
        return False, True
    return own, fixed


def winograd_own(own, caps: ConvCaps):
    """The own-GEMM flag winograd_tile reads: off where the half-rate rule takes F(4x4)
    (avx2_algo "winograd4")."""
    return own and not avx2_algo(caps, "winograd4")


def winograd4_mix_edges(tile, fixed, Ho, Wo):
    """Whether F(4x4)'s last tile row and / or column go by F(2x2) in that direction
    (conv2d_forward_winograd's mix_edges, one region or the split alike: the same bits on any
    team): packed, where Ho % 4 or Wo % 4 is in tuning.WINOGRAD4_EDGE_F2 (the edge tiles keep at
    most 2 of their 4 outputs there)."""
    return (winograd_packed(tile, fixed)
            and (Ho % 4 in T.WINOGRAD4_EDGE_F2 or Wo % 4 in T.WINOGRAD4_EDGE_F2))


def winograd_step(p, tile, own, fixed, Ho=0, Wo=0):
    """The "winograd" Step of plan_winograd's answer p (for an output of Ho x Wo)."""
    return Step("winograd", p[0], {"trows": p[1], "per_thread": p[2], "tile": tile,
                                   "per_image": not (own or fixed),
                                   "packed": winograd_packed(tile, fixed),
                                   "mix_edges": winograd4_mix_edges(tile, fixed, Ho, Wo),
                                   **p[3]})


def even_tile_rows(rows, want, tw, per_row, n_threads):
    """Tile rows per F(4x4) task on a fixed-order GEMM (its bits do not follow them): ``want``,
    unless its tasks leave more than tuning.WINOGRAD4_MAX_IDLE of the team idle (the last
    round's empty threads: vgg_56's 23 tasks on 16 threads, 30 %); then, from tasks of at least
    tuning.WINOGRAD4_MIN_TASK_TILES tiles (where the batch has them) up to ``want``'s or
    tuning.WINOGRAD4_TASK_BYTES of V and M (per_row bytes a tile row), the rows whose tasks
    leave the fewest idle, the most rows on a tie."""
    def idle(tr):
        return 1 - rows / (ceil_div(ceil_div(rows, tr), n_threads) * n_threads * tr)
    num, den = T.WINOGRAD4_MAX_IDLE
    if n_threads < 2 or den * idle(want) <= num:
        return want
    best = want
    hi = max(want, min(rows, T.WINOGRAD4_TASK_BYTES // per_row))
    for tr in range(min(want, ceil_div(T.WINOGRAD4_MIN_TASK_TILES, tw)), hi + 1):
        if idle(tr) < idle(best) or (idle(tr) == idle(best) and tr > best):
            best = tr
    return best


def _list_idle(costs, n_threads):
    """The idle share of n_threads running these task costs in order, each task to the first
    free thread (a list schedule: the kernels' loops are static since the eleventh session --
    each thread a contiguous run, the same every call -- which gives the same makespan for
    equal tasks; this stays the planners' estimate)."""
    free = [0] * min(n_threads, len(costs))
    for c in costs:
        heapq.heapreplace(free, free[0] + c)
    return 1 - sum(costs) / (n_threads * max(free))


def winograd4_split(rows, tw, F, want, n_threads):
    """(tile rows, filter blocks) of F(4x4)'s two-region split (the kernel's fparts), or None:
    tasks of tile rows (tuning.WINOGRAD4_MIN_TASK_TILES tiles, where the batch has them, up to
    ``want``) x near-equal blocks of whole 6-filter strips (at least
    tuning.WINOGRAD4_SPLIT_MIN_STRIPS), a task's work its tiles x its strips: the fewest tasks
    whose schedule leaves at most tuning.WINOGRAD4_MAX_IDLE of the team idle, else the least
    idle (then the fewest tasks).  None where one filter block is all it can take."""
    num, den = T.WINOGRAD4_MAX_IDLE
    nu = ceil_div(F, 6)
    best = None
    for tr in range(min(want, ceil_div(T.WINOGRAD4_MIN_TASK_TILES, tw)), want + 1):
        tiles = [min(tr, rows - g) * tw for g in range(0, rows, tr)]
        for fp in range(1, max(1, nu // T.WINOGRAD4_SPLIT_MIN_STRIPS) + 1):
            strips = [(b + 1) * nu // fp - b * nu // fp for b in range(fp)]
            idle = _list_idle([t * s for t in tiles for s in strips], n_threads)
            key = (den * idle > num, idle if den * idle > num else 0, len(tiles) * fp,
                   idle, -tr)
            if best is None or key < best[0]:
                best = (key, tr, fp)
    return None if best is None or best[2] == 1 else best[1:]


def winograd4_staged(N, C, F, Ho, Wo, one, itemsize, n_threads, limit):
    """F(4x4) on BLAS (per_image) with the kernel's staged split, or None: from
    tuning.WINOGRAD_SPLIT_MIN_THREADS threads, where ``one`` (the one-region plan: its team,
    tile rows, slice) leaves more than tuning.WINOGRAD4_MAX_IDLE of the n_threads idle
    (rpn_3x3's 2 tasks, res_14's 8, vgg_56's 24 on 16 threads) or the limit took threads from
    it.  The blocks that fill whole rounds of the team stay one-region tasks (``lead``); the
    others go in three regions: their input transforms in (block, channel) tasks, their GEMMs
    as they are in (point, block) tasks -- 36x the tasks, each GEMM's shape, operands and bits
    unchanged -- and their output transforms in (block, filter) tasks.  Staged blocks cost one
    core up to tuning.WINOGRAD4_STAGED_COST of their one-region time (V and M round trips
    through memory), so they are staged only where that many of them fit the team's round
    (k blocks of cost r on the team: k*r/n_threads of a round, against one round); and where
    their V and M fit the limit beside the threads' slices
    (_conv_winograd.winograd4_staged_floats)."""
    from ._conv_winograd import winograd4_staged_floats     # (a pure size computation)
    n_one, trows, per_one = one[:3]
    if n_threads < T.WINOGRAD_SPLIT_MIN_THREADS:
        return None
    th, tw = ceil_div(Ho, 4), ceil_div(Wo, 4)
    blocks = [min(trows, th - r) * tw for r in range(0, th, trows)] * N
    num, den = T.WINOGRAD4_MAX_IDLE
    if n_one == n_threads and den * _static_lost(blocks, sum(blocks), n_threads) <= num:
        return None
    lead = len(blocks) // n_threads * n_threads if n_one == n_threads else 0
    cn, cd = T.WINOGRAD4_STAGED_COST
    if (len(blocks) - lead) * cn > n_threads * cd:
        return None
    shared, per = winograd4_staged_floats(N, C, F, Ho, Wo, trows, lead)
    per = per_one if lead else per
    if (shared + n_threads * per) * itemsize > limit:
        return None
    return n_threads, trows, per, {"staged": True, "lead": lead, "shared": shared}


def _plan_winograd4(N, C, F, Ho, Wo, itemsize, n_threads, weight_bytes, limit, fixed=False):
    """plan_winograd for F(4x4) on BLAS: about tuning.WINOGRAD4_TASK_TILES tiles per task (the
    36 GEMMs' column count), each image's tile rows cut into equal tasks (the kernel's
    per_image) -- set by the image alone (BLAS may sum differently for another column count or
    a tile's other place among them), lowered only by the limit.  fixed (a fixed-order GEMM):
    the batch's tile rows cut into equal tasks, blocks spanning images (the kernel's per_image
    off); there each output is one chain over the channels whatever the task's tiles, so the
    tile rows per task may follow the team (even_tile_rows), and where those leave more than
    tuning.WINOGRAD4_MAX_IDLE of the team idle (or the limit took threads from it), the
    two-region split takes over where its shared V fits (winograd4_split; the params "fparts"
    and "shared", the V's elements ahead of the threads' slices).  Not fixed (BLAS), where the
    image's tasks leave the team idle: the three-region split of the same GEMMs
    (winograd4_staged; the params "staged" and "shared").
    The transformed filters U (36 * C * F elements, 4x the weight; F in whole strips of 6 when
    packed, winograd_packed) count against the limit."""
    limit -= 36 * C * winograd_filter_rows(F, winograd_packed(4, fixed)) * itemsize
    tw, th = ceil_div(Wo, 4), ceil_div(Ho, 4)
    per_row = 36 * (C + F) * tw * itemsize      # V and M of one row of 4x4 tiles
    rows = N * th if fixed else th
    want = min(rows, ceil_div(T.WINOGRAD4_TASK_TILES, tw))
    want = ceil_div(rows, ceil_div(rows, want))     # equal tasks
    pad = winograd_plane_pad(4)
    extra = (winograd_scratch(4, want, tw) + pad) * itemsize
    if per_row + (winograd_scratch(4, 1, tw) + pad) * itemsize > limit:
        return None
    team = n_threads
    n_threads = max(1, min(n_threads, limit // (per_row * want + extra)))
    budget = limit // n_threads
    trows = even_tile_rows(rows, want, tw, per_row, n_threads) if fixed else want
    while (trows > 1 and trows * per_row + (winograd_scratch(4, trows, tw) + pad) * itemsize
           > budget):
        trows -= 1
    one = n_threads, trows, trows * per_row // itemsize + winograd_scratch(4, trows, tw) + pad, {}
    num, den = T.WINOGRAD4_MAX_IDLE
    rounds = ceil_div(ceil_div(rows, trows), n_threads)
    idle = den * (1 - rows / (rounds * n_threads * trows)) > num
    if not fixed:
        return winograd4_staged(N, C, F, Ho, Wo, one, itemsize, team, limit) or one
    if n_threads == team and not idle:
        return one
    # (the split's smaller slices may fit more of the team the limit took from the one-region
    # split: the team, else halves of it down to the one-region's where that one idles)
    nt = team
    while nt > n_threads or (nt == n_threads and idle):
        split = winograd4_split(rows, tw, F, want, nt)
        if split is None:
            break
        # the shared V of the batch's tiles, and per thread a block's M and the row scratch
        tr, fp = split
        per = 36 * 6 * ceil_div(ceil_div(F, 6), fp) * tr * tw + winograd_scratch(4, tr, tw)
        if (36 * C * rows * tw + nt * per) * itemsize <= limit:
            return nt, tr, per, {"fparts": fp, "shared": 36 * C * rows * tw}
        if nt == n_threads:
            break
        nt = max(nt // 2, n_threads)
    return one


def plan_weight_winograd(s: ConvShape, Ho, Wo, itemsize, own_gemm, n_threads, limit):
    """(tile rows per transform task, channels per GEMM, parts, workspace elements) of
    grad_weight by the transposed F(4x4, 3x3) (_conv_winograd.conv2d_grad_weight_winograd), or
    None: where the forward takes F(4x4) (prefer_winograd and winograd_tile 4: GEMMs on BLAS or
    csrc/fgemm.h, >= 64 channels) and its transformed tiles fit the workspace limit.  The parts
    (tuning.WGRAD_WINO_PART_TILES) and channel blocks (tuning.WGRAD_WINO_COL_BLOCKS, whole
    16-column panels) order the sums and shape the GEMMs: set by the layer alone."""
    from ._conv_winograd import winograd4_wgrad_floats     # (a pure size computation)
    F, C = s.F, s.Cg
    if (not prefer_winograd(F, C, s.KH, s.KW, s.stride, s.dilation, s.groups, Ho, Wo)
            or winograd_tile(C, F, Ho, Wo, own_gemm) != 4):
        return None
    tw = ceil_div(Wo, 4)
    tiles = s.N * ceil_div(Ho, 4) * tw
    parts = ceil_div(tiles, T.WGRAD_WINO_PART_TILES)
    cols = min(C, ceil_div(ceil_div(C, T.WGRAD_WINO_COL_BLOCKS), 16) * 16)
    trows = max(1, ceil_div(T.WINOGRAD4_TASK_TILES, tw))
    big, per = winograd4_wgrad_floats(s.N, C, F, Ho, Wo, parts)
    floats = big + n_threads * per
    if floats * itemsize > limit:
        return None
    return trows, cols, parts, floats


def batch_images(N, own_gemm, fixed=False):
    """Images side by side in one GEMM of the batch paths (before the cache and workspace caps):
    a block of tuning.BATCH_BLOCKS per batch on the own GEMM (a column's sum does not depend on
    its GEMM's width there); one on BLAS, whose bits follow the GEMM's width and a column's
    place in it, so an image in a block of others would get other bits than alone."""
    return ceil_div(N, T.BATCH_BLOCKS) if own_gemm or fixed else 1


def batch_even_images(N, imgs, HoWo, n_threads):
    """Images per batch forward / grad_x task: ``imgs``, unless on more than 2 threads its
    blocks leave more than tuning.BATCH_MAX_IDLE of them idle (tiny_16_8x8's 64 images in 6
    blocks of 12: 67 % of 16 threads, own_gemm_cols counting a block's partial panel); then
    the most images a block that leave at most that share, else the fewest lost.  Only where
    the GEMM sums a column in the same order in any block (own or fixed-order GEMM)."""
    num, den = T.BATCH_MAX_IDLE

    def lost(i):
        return _static_lost([own_gemm_cols(min(i, N - n0) * HoWo) for n0 in range(0, N, i)],
                            N * HoWo, n_threads)
    if n_threads <= 2 or den * lost(imgs) <= num:
        return imgs
    best = imgs
    for i in range(imgs - 1, 0, -1):
        if lost(i) < lost(best):
            best = i
        if den * lost(best) <= num:
            break
    return best


def plan_batch_forward(N, C, F, KK, HpWp, HoWo, itemsize, n_threads, limit, own_gemm=False,
                       fixed=False):
    """(threads, images per task, workspace elements per thread), or None when one image does
    not fit the workspace limit."""
    per_img = ((C * KK + F) * HoWo + C * HpWp) * itemsize
    if per_img > limit:
        return None
    imgs = panel_images(min(batch_images(N, own_gemm, fixed), limit // per_img,
                            max(1, T.BATCH_CACHE // (C * KK * HoWo * itemsize))), HoWo)
    if own_gemm or fixed:
        imgs = batch_even_images(N, imgs, HoWo, n_threads)
    n_threads = max(1, min(n_threads, limit // (imgs * per_img), ceil_div(N, imgs)))
    return n_threads, imgs, imgs * per_img // itemsize


def plan_batch_backward(N, Cg, G, F, KK, HpWp, HoWo, itemsize, n_threads, needs_gx, limit,
                        own_gemm=False, fixed=False):
    """(threads, chans_w, kimgs, imgs, nsplit, workspace elements per thread, filters_w), or
    None when it does not fit (gy side by side, the partial grad_weights, plus one channel's columns and
    padded plane of one image).

    grad_weight's column blocks (chans_w channels * KK taps) are whole GEMM panels where the
    channels allow; when that leaves fewer than tuning.BATCH_W_BLOCKS blocks, the batch is split
    into nsplit fixed parts summed separately and added after; on BLAS (float64, float32
    without AVX2) into enough parts for about tuning.BLAS_BATCH_W_TASKS tasks.  Neither
    depends on the thread count.  grad_x's blocks of images: batch_images.  On more than 2
    threads, where those tasks leave too many idle, finer blocks that cut no sum:
    batch_even_images, batch_weight_blocks (filters_w: filters per grad_weight task; Fg: all)."""
    q = T.GEMM_PANEL // math.gcd(T.GEMM_PANEL, KK)      # channels per whole panel
    chans_w = min(Cg, ceil_div(ceil_div(Cg, T.BATCH_W_BLOCKS), q) * q)
    nsplit = max(1, min(N, T.BATCH_W_BLOCKS // (G * ceil_div(Cg, chans_w))))
    if not own_gemm and not fixed:
        # BLAS: the parts for about tuning.BLAS_BATCH_W_TASKS tasks, each at least
        # BLAS_BATCH_W_PART_MIN_K products per weight (set by the layer: the bits follow the
        # parts, not the team; tiny_16_8x8's 2 parts left 16 threads 88 % idle)
        nsplit = max(nsplit, min(N, ceil_div(T.BLAS_BATCH_W_TASKS, G * ceil_div(Cg, chans_w)),
                                 N * HoWo // T.BLAS_BATCH_W_PART_MIN_K))
    unit_w = (KK * HoWo + HpWp) * itemsize              # one channel of one image
    unit_x = Cg * (KK * HoWo + HpWp) * itemsize          # all channels of one image
    room = limit - (F * N * HoWo + (nsplit - 1) * F * Cg * KK) * itemsize
    if nsplit > 1 and room < max(unit_w, unit_x if needs_gx else 0):
        nsplit = 1                                      # no room for the partial sums
        room = limit - F * N * HoWo * itemsize
    if room < max(unit_w, unit_x if needs_gx else 0):
        return None
    chans_w = min(chans_w, room // unit_w)
    kimgs = min(N, room // (chans_w * unit_w), max(1, T.BATCH_CACHE // (chans_w * unit_w)))
    imgs = panel_images(max(1, min(batch_images(N, own_gemm, fixed), room // unit_x,  # (1 if unused)
                                   max(1, T.BATCH_CACHE // (Cg * KK * HoWo * itemsize)))), HoWo)
    filters_w = Fg = F // G
    if own_gemm or fixed:
        imgs = batch_even_images(N, imgs, HoWo, n_threads)
    if own_gemm:    # (kimgs and nsplit, which fix the sums, stay those of the old blocks)
        chans_w, filters_w = batch_weight_blocks(N, Cg, G, Fg, KK, HpWp, HoWo, chans_w, nsplit,
                                                 n_threads)
    ws = max(chans_w * kimgs * unit_w, imgs * unit_x if needs_gx else 0)
    n_threads = max(1, min(n_threads, room // ws))
    return n_threads, chans_w, kimgs, imgs, nsplit, ws // itemsize, filters_w


def batch_weight_costs(N, Cg, G, Fg, KK, HpWp, HoWo, chans_w, nsplit, filters_w):
    """The batch grad_weight's task costs in the kernel's order ((channel block, part, filter
    block) within a group), in MACs: a block's GEMM on the own GEMM's columns (own_gemm_cols of
    its channels x taps), and tuning.BATCH_W_COPY_MACS a value for what it copies -- its
    columns built (im2col) and packed, again for each filter block, and its grad_y rows
    packed, again for each channel block."""
    e = T.BATCH_W_COPY_MACS
    costs = []
    for c0 in range(0, Cg, chans_w):
        c = min(chans_w, Cg - c0)
        for sp in range(nsplit):
            imgs = (sp + 1) * N // nsplit - sp * N // nsplit
            for f0 in range(0, Fg, filters_w):
                nf = min(filters_w, Fg - f0)
                costs.append(nf * own_gemm_cols(c * KK) * imgs * HoWo
                             + e * (c * (2 * KK * HoWo + HpWp) + nf * HoWo) * imgs)
    return costs * G


def batch_weight_useful(N, Cg, G, Fg, KK, HpWp, HoWo):
    """batch_weight_costs' work without partial panels or anything built twice."""
    return G * N * (Fg * Cg * KK * HoWo
                    + T.BATCH_W_COPY_MACS * (Cg * (2 * KK * HoWo + HpWp) + Fg * HoWo))


def batch_weight_blocks(N, Cg, G, Fg, KK, HpWp, HoWo, chans_w, nsplit, n_threads):
    """(channels, filters) per batch grad_weight task on the own GEMM: (chans_w, Fg) unless
    on more than 2 threads its G * ceil(Cg/chans_w) * nsplit tasks leave more than
    tuning.BATCH_MAX_IDLE of them idle (tiny_16_8x8: 2 parts, 88 % of 16 threads); then the
    channel blocks (at most chans_w) and filter blocks (whole tuning.BATCH_W_FILTER_ROWS-row
    tiles, or all) that lose the least (batch_weight_costs: idle threads, partial panels,
    columns built again per filter block) among those whose work is at most
    tuning.BATCH_W_MAX_EXTRA above the old blocks', the fewest tasks on a tie.  No sum is
    cut: an entry of gw is one GEMM row and column, summed over its part's image blocks as
    before."""
    num, den = T.BATCH_MAX_IDLE
    useful = batch_weight_useful(N, Cg, G, Fg, KK, HpWp, HoWo)

    def costs(c, f):
        return batch_weight_costs(N, Cg, G, Fg, KK, HpWp, HoWo, c, nsplit, f)
    old = costs(chans_w, Fg)
    if n_threads <= 2 or den * _static_lost(old, useful, n_threads) <= num:
        return chans_w, Fg
    most = (1 + T.BATCH_W_MAX_EXTRA) * sum(old)
    rows = T.BATCH_W_FILTER_ROWS
    best = (_static_lost(old, useful, n_threads), len(old), chans_w, Fg)
    for f in sorted({Fg} | set(range(rows, Fg, rows))):
        for c in range(1, chans_w + 1):
            if G * ceil_div(Cg, c) * nsplit * ceil_div(Fg, f) > 4 * n_threads:
                continue
            cs = costs(c, f)
            if sum(cs) <= most:
                best = min(best, (_static_lost(cs, useful, n_threads), len(cs), c, f))
    return best[2], best[3]


def plan_phases(s: ConvShape, Ho, Wo, float32, own_sgemm, pointwise, n_threads, limit):
    """(output rows per task, workspace floats per thread) of the polyphase forward, or None."""
    sh, sw = s.stride
    if (not float32 or not own_sgemm or s.groups != 1 or pointwise
            or s.stride == (1, 1) or Wo < T.PHASES_MIN_WO):
        return None
    rows = min(Ho, T.PHASES_ROWS)
    if n_threads > 1 and s.N * ceil_div(Ho, rows) < T.PHASES_TASKS_PER_THREAD * n_threads:
        rows = max(1, ceil_div(Ho, ceil_div(T.PHASES_TASKS_PER_THREAD * n_threads, s.N)))
    Wq = Wo + (s.KW - 1) * s.dilation[1] // sw
    Rq = rows + (s.KH - 1) * s.dilation[0] // sh
    per = s.C * sh * sw * Rq * Wq + (s.KW - 1) * s.dilation[1] // sw
    if per * 4 * n_threads > limit:
        return None
    return rows, per


def even_rows(N, Ho, want, top, n_threads, bottom=1):
    """Output rows per (image, row block) task where each output is one fixed chain (no bits
    follow them): ``want``, unless its tasks leave more than tuning.WINOGRAD4_MAX_IDLE of the
    team idle (dynamic list schedule, a task's cost its rows: convt_28's grad_x on 16 threads,
    56 tasks of 4 rows, 12 %); then, of bottom .. top rows with at least two tasks per thread (some
    slack for the schedule), the fewest idle, the most rows on a tie (fewer halo rows
    rebuilt, fewer GEMM tails)."""
    def idle(r):
        return _list_idle([min(r, Ho - h) for h in range(0, Ho, r)] * N, n_threads)
    num, den = T.WINOGRAD4_MAX_IDLE
    if n_threads < 2 or den * idle(want) <= num:
        return want
    best = want
    for r in range(bottom, top + 1):
        if N * ceil_div(Ho, r) >= 2 * n_threads and (
                idle(r) < idle(best) or (idle(r) == idle(best) and r > best)):
            best = r
    return best


def plan_rowphases(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads, limit):
    """(output rows per task, workspace floats per thread) of the polyphase forward on
    csrc/rowgemm.h, or None.  Where the float32 GEMMs go to BLAS and rowgemm runs, for strided
    groups-1 convs whose filter count fills its 4-row panels and whose kernel is a multiple of
    the stride, dilation 1 (conv_transpose2d's grad_x, the case measured: tuning.ROWPHASES_*).
    A task computes as many whole rows (each Wq wide) as its phase planes fit in
    tuning.ROWPHASES_PLANE_BYTES, at least about tuning.ROWPHASES_POSITIONS positions; each
    output is one fixed chain of multiply-adds, so the rows per task may follow the team (no
    bits change): lowered until each thread has tuning.PHASES_TASKS_PER_THREAD, then evened
    (even_rows) where that leaves more than a tenth of the team idle."""
    sh, sw = s.stride
    if (not float32 or not avx2_algo(caps, "rowphases") or s.groups != 1 or pointwise
            or s.stride == (1, 1) or s.F % 4 or s.dilation != (1, 1)
            or s.KH % sh or s.KW % sw or Wo < T.ROWPHASES_MIN_WO):
        return None
    Wq = Wo + (s.KW - 1) // sw
    fit = T.ROWPHASES_PLANE_BYTES // (4 * s.C * sh * sw * Wq) - (s.KH - 1) // sh
    top = rows = max(1, min(Ho, max(T.ROWPHASES_POSITIONS // Wq, fit)))
    if n_threads > 1 and s.N * ceil_div(Ho, rows) < T.PHASES_TASKS_PER_THREAD * n_threads:
        rows = max(1, ceil_div(Ho, ceil_div(T.PHASES_TASKS_PER_THREAD * n_threads, s.N)))
        rows = even_rows(s.N, Ho, rows, top, n_threads)
    Rq = rows + (s.KH - 1) // sh
    per = s.C * sh * sw * Rq * Wq + (s.KW - 1) // sw + s.F * rows * Wq
    if per * 4 * n_threads > limit:
        return None
    return rows, per


def stem_ok(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, algo="stem"):
    """The stem rule (csrc/stem.h; tuning.STEM_*): float32 where the GEMMs go to BLAS and
    AVX2 + FMA run, a strided groups-1, dilation-1 conv of at most tuning.STEM_MAX_CHANNELS
    input channels whose kernel, of at least tuning.STEM_MIN_TAPS taps, is not a multiple of
    the stride (rowphases and weight_rowgemm take those), filters in whole 4-row panels,
    output rows of at least tuning.STEM_MIN_WO, maps above the batch paths'.  The full-rate
    AVX-512 machines keep their plan (phases, weight_dot); algo: "stem" (the forward) or
    "weight_stem" (avx2_algo, the half-rate rule)."""
    sh, sw = s.stride
    return (float32 and avx2_algo(caps, algo) and s.groups == 1 and not pointwise
            and s.stride != (1, 1) and s.dilation == (1, 1) and s.F % 4 == 0
            and s.C <= T.STEM_MAX_CHANNELS and s.KH * s.KW >= T.STEM_MIN_TAPS
            and (s.KH % sh != 0 or s.KW % sw != 0)
            and Wo >= T.STEM_MIN_WO and not batch_ok(Ho, Wo, pointwise))


def stem_planes(s: ConvShape, rows, Wo):
    """Floats of a task's phase planes for ``rows`` output rows (csrc/vsum.h ck_phases_f)."""
    sh, sw = s.stride
    return s.C * sh * sw * (rows + (s.KH - 1) // sh) * (Wo + (s.KW - 1) // sw)


def polywino_floats(C, F, trows, tw):
    """Workspace floats of one polywino task (_conv_winograd.polywino_floats; a test checks
    the two agree): V (25, tiles, 4 * C8), M (25, tiles, F8), the staged planes of 8 channels."""
    C8, F8 = ceil_div(C, 8) * 8, ceil_div(F, 8) * 8
    return 25 * trows * tw * (4 * C8 + F8) + 4 * (4 * trows + 1) * (4 * tw + 1) * 8


def polywino_gx_floats(F, C, trows, tw):
    """Workspace floats of one polywino grad_x task (_conv_winograd.polywino_gx_floats): V (25,
    tiles, F8), M (25, tiles, 4 * C8), the staged planes of 8 channels."""
    C8, F8 = ceil_div(C, 8) * 8, ceil_div(F, 8) * 8
    return 25 * trows * tw * (F8 + 4 * C8) + 4 * (4 * trows + 1) * (4 * tw + 1) * 8


def polywino_ok(s: ConvShape, f32, caps: ConvCaps):
    """The polywino rule: a 4x4 stride-2 conv, no dilation, groups 1, >= tuning.
    POLYWINO_MIN_CHANNELS channels in and filters out, float32 on csrc/fgemm.h (caps.winotiny:
    AVX2 + FMA, fgemm on) where avx2_algo allows it."""
    return (f32 and caps.winotiny and avx2_algo(caps, "polywino")
            and (s.KH, s.KW, s.stride, s.dilation, s.groups) == (4, 4, (2, 2), (1, 1), 1)
            and min(s.C, s.F) >= T.POLYWINO_MIN_CHANNELS)


def _polywino_tasks(N, th, floats, n_threads, limit):
    """(threads, tile rows per task, floats per thread): tasks of POLYWINO_TASK_BYTES-sized
    blocks of whole tile rows of one image, fewer rows where the batch gives fewer tasks than
    threads, then evened where they leave the team idle (even_rows, at least POLYWINO_SPLIT_
    MIN_TROWS: convt_28's 7 tile rows on 16 threads went in blocks of 6 and 1, 42 % of the team
    idle); None over the workspace limit.  Each output is its own tile's: the rows change no
    bits."""
    rows = th
    while rows > 1 and (floats(rows) * 4 > T.POLYWINO_TASK_BYTES
                        or N * ceil_div(th, rows) < n_threads):
        rows -= 1
    rows = even_rows(N, th, rows, rows, n_threads, min(rows, T.POLYWINO_SPLIT_MIN_TROWS))
    per = floats(rows)
    if per * 4 > limit:
        return None
    return max(1, min(n_threads, N * ceil_div(th, rows), limit // (per * 4))), rows, per


def plan_polywino(s: ConvShape, Ho, Wo, f32, caps: ConvCaps, n_threads, limit):
    """(threads, tile rows per task, workspace floats per thread, tiles per task) of the
    forward by Winograd F(4x4, 2x2) over the 4 input phase planes of a 4x4 stride-2 conv
    (csrc/polywino.h), or None (polywino_ok; tasks _polywino_tasks, or runs of tiles where
    those leave the team idle: polywino_run; tiles 0: whole tile rows).  Each output depends
    on its own tile alone (any split, the same bits)."""
    if not polywino_ok(s, f32, caps):
        return None
    th, tw = ceil_div(Ho, 4), ceil_div(Wo, 4)
    p = _polywino_tasks(s.N, th, lambda r: polywino_floats(s.C, s.F, r, tw), n_threads, limit)
    if p is None:
        return None
    top = th        # (runs no longer than the tile rows that fit POLYWINO_TASK_BYTES)
    while top > 1 and polywino_floats(s.C, s.F, top, tw) * 4 > T.POLYWINO_TASK_BYTES:
        top -= 1
    run = polywino_run(s.N, th, tw, p[1], n_threads, max(top, p[1]))
    if not run:
        return (*p, 0)
    per = polywino_floats(s.C, s.F, polywino_run_rows(th, tw, run), tw)
    if per * 4 > limit:
        return (*p, 0)
    tasks = s.N * ceil_div(th * tw, run)
    return max(1, min(n_threads, tasks, limit // (per * 4))), \
        polywino_run_rows(th, tw, run), per, run


def _static_idle(costs, n_threads):
    """The idle share of n_threads running these task costs under OpenMP's static schedule."""
    return _static_lost(costs, sum(costs), n_threads) if any(costs) else 0.0


def polywino_run(N, th, tw, rows, n_threads, top=None):
    """Tiles per polywino forward task: 0 (tasks of ``rows`` whole tile rows), unless those
    leave more than tuning.WINOGRAD4_MAX_IDLE of the team idle (convt_28's grad_x on 16
    threads: 7 tile rows an image, blocks of 2, 2, 2, 1, 12 %); then the run of R tiles
    (row-major, across row ends; at least tuning.POLYWINO_SPLIT_MIN_TROWS rows' worth, at most
    ``top`` rows' worth, the image by default) whose tasks leave the fewest idle under the
    static schedule, the most tiles on a tie (convt_28: runs of 25 and 24 tiles, 2 %).  Not
    where that is no better than rows."""
    num, den = T.WINOGRAD4_MAX_IDLE
    T_ = th * tw

    def idle(R):
        return _static_idle([min(R, T_ - t0) for t0 in range(0, T_, R)] * N, n_threads)
    if n_threads < 2 or den * idle(rows * tw) <= num:
        return 0
    best = rows * tw
    hi = T_ if top is None else min(T_, top * tw)
    for R in range(min(hi, T.POLYWINO_SPLIT_MIN_TROWS * tw), hi + 1):
        if idle(R) < idle(best) - 1e-12 or (abs(idle(R) - idle(best)) <= 1e-12 and R > best):
            best = R
    return 0 if best == rows * tw else best


def polywino_run_rows(th, tw, run):
    """The most tile rows a run of ``run`` tiles spans (_conv_winograd.polywino_run_rows)."""
    return max((min(t0 + run, th * tw) - 1) // tw - t0 // tw + 1
               for t0 in range(0, th * tw, run))


def plan_polywino_grad_x(s: ConvShape, f32, caps: ConvCaps, n_threads, limit):
    """plan_polywino's answer for grad_x (conv_transpose2d's forward): the 4 output phases
    of grad_x as 2x2 convs of grad_y on one grid of (H - 1 + pt) / 2 + 1 rows and
    (W - 1 + pl) / 2 + 1 columns, 4 * C filters (conv2d_grad_input_polywino)."""
    if not polywino_ok(s, f32, caps):
        return None
    th = ceil_div((s.H - 1 + s.padding[0]) // 2 + 1, 4)
    tw = ceil_div((s.W - 1 + s.padding[2]) // 2 + 1, 4)
    return _polywino_tasks(s.N, th, lambda r: polywino_gx_floats(s.F, s.C, r, tw), n_threads,
                           limit)


def plan_stem(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads, limit):
    """(threads, output rows per task, workspace floats per thread) of the stem forward, or
    None.  Each output is one chain over the taps: the split may follow nothing else."""
    if not stem_ok(s, Ho, Wo, float32, caps, pointwise):
        return None
    rows = min(Ho, T.STEM_ROWS)
    per = stem_planes(s, rows, Wo)
    if per * 4 > limit:
        return None
    return fit_team(n_threads, per * 4, 0, limit), rows, per


def stem_wino_floats(s: ConvShape, rows, Wo):
    """Floats of a stem_wino task's scratch for ``rows`` output rows (csrc/stem_wino.h
    ck_stem_wino_floats): the stride-8 column phases R, a padded input row, the transformed
    rows V (7 points) and one panel's products M; R's planes and V's blocks with 8 floats of
    slack each (their rows are stored as whole vectors)."""
    nt = ceil_div(Wo, 4)
    Ra = rows + (s.KH - 1) // s.stride[0]
    return (s.C * s.stride[0] * 8 * (Ra * (nt + 1) + 8) + 64 * ((nt + 8) // 8)
            + 7 * s.C * s.stride[0] * 2 * (Ra * nt + 8) + 28 * rows * nt)


def plan_stem_wino(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads, limit):
    """(threads, output rows per task, scratch floats per thread, transformed-filter floats) of
    the stem forward by a 1-D Winograd along the rows, or None.  The stem rule's layers
    (stem_ok) with a kernel 7 wide at column stride 2 and at least tuning.STEM_WINO_MIN_FILTERS
    filters.  Each output is computed the same way in any task, so the split may follow the
    team (no bits change): tasks of an image's tuning.STEM_WINO_ROWS output rows, fewer rows
    until each thread has tuning.PHASES_TASKS_PER_THREAD (stem_224's 56 tasks would leave 16
    threads an eighth idle)."""
    if not (stem_ok(s, Ho, Wo, float32, caps, pointwise) and s.KW == 7 and s.stride[1] == 2
            and s.F >= T.STEM_WINO_MIN_FILTERS):
        return None
    rows = min(Ho, T.STEM_WINO_ROWS)
    if n_threads > 1 and s.N * ceil_div(Ho, rows) < T.PHASES_TASKS_PER_THREAD * n_threads:
        rows = max(1, ceil_div(Ho, ceil_div(T.PHASES_TASKS_PER_THREAD * n_threads, s.N)))
    per = stem_wino_floats(s, rows, Wo)
    ufloats = s.F * 13 * s.C * s.KH
    if (per + ufloats) * 4 > limit:
        return None
    return fit_team(n_threads, per * 4, 0, limit - ufloats * 4), rows, per, ufloats


def plan_weight_stem(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads,
                     limit):
    """(threads, rows per block, filters per task, slab groups, plane floats per thread,
    partial-sum floats) of the stem weight gradient (grad_bias summed on the way), or None.
    Tasks: blocks of tuning.STEM_W_FILTERS filters times the batch's (image, row block) slabs
    in fixed groups of consecutive slabs, about tuning.STEM_W_TASKS of them (at most one group
    per slab, and no more than the workspace limit holds the groups' partial sums of) -- set by
    the layer, the batch and the limit alone, so no bits follow the team."""
    if not stem_ok(s, Ho, Wo, float32, caps, pointwise, "weight_stem"):
        return None
    rows = min(Ho, T.STEM_W_ROWS)
    fchunk = min(s.F, T.STEM_W_FILTERS)
    nfc = ceil_div(s.F, fchunk)
    per = stem_planes(s, rows, Wo)
    one = s.F * (3 * ceil_div(s.C * s.KH * s.KW, 3) + 1) * 8    # a group's partial sums
    groups_n = min(s.N * ceil_div(Ho, rows), ceil_div(T.STEM_W_TASKS, nfc),
                   (limit // 4 - per) // one)
    if groups_n < 1:
        return None
    part = groups_n * one
    return (fit_team(n_threads, per * 4, 0, limit - part * 4), rows, fchunk, groups_n, per,
            part)


def stem_wgrad_part(s: ConvShape):
    """Floats of one slab group's partial sums of weight_stem_wino (csrc/stem_wgrad.h
    ck_stem_wgrad_part_floats): per filter each point's transformed taps, padded to the
    kernel's 3-tap tiles, and a bias sum."""
    ck = s.C * s.KH
    return s.F * (6 * 3 * ceil_div(2 * ck, 3) + 3 * ceil_div(ck, 3) + 1)


def plan_weight_stem_wino(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads,
                          limit):
    """(threads, rows per slab, slab groups, scratch floats per thread, partial-sum floats) of
    the stem weight gradient by the transposed 1-D Winograd (grad_bias summed on the way), or
    None.  stem_wino's layers (the stem rule, a kernel 7 wide at column stride 2, at least
    tuning.STEM_WINO_MIN_FILTERS filters).  Tasks: the batch's (image, tuning.STEM_WINO_W_ROWS
    row block) slabs in fixed groups of consecutive slabs, about tuning.STEM_W_TASKS of them
    (at most one per slab, no more than the workspace limit holds the partial sums of) -- set
    by the layer, the batch and the limit alone, so no bits follow the team."""
    if not (stem_ok(s, Ho, Wo, float32, caps, pointwise, "weight_stem") and s.KW == 7
            and s.stride[1] == 2 and s.F >= T.STEM_WINO_MIN_FILTERS):
        return None
    rows = min(Ho, T.STEM_WINO_W_ROWS)
    per = stem_wino_floats(s, rows, Wo) + 7 * 8     # (csrc/stem_wgrad.h ck_stem_wgrad_floats)
    one = stem_wgrad_part(s)
    groups_n = min(s.N * ceil_div(Ho, rows), T.STEM_W_TASKS, (limit // 4 - per) // one)
    if groups_n < 1:
        return None
    part = groups_n * one
    return fit_team(n_threads, per * 4, 0, limit - part * 4), rows, groups_n, per, part


def polywino_wgrad_floats(C, F, Ho, Wo, imgs, n_threads):
    """Workspace floats of conv2d_grad_weight_polywino (_conv_winograd.polywino_wgrad_floats
    plus n_threads staging slices; a test checks the two agree): V (25, tiles, 4 * C8), Z (25,
    tiles, F8) of a group of imgs images, M (25, F8, 4 * C8), planes 16 floats apart."""
    C8, F8 = ceil_div(C, 8) * 8, ceil_div(F, 8) * 8
    th, tw = ceil_div(Ho, 4), ceil_div(Wo, 4)
    Tg = imgs * th * tw
    return (25 * (Tg * 4 * C8 + Tg * F8 + F8 * 4 * C8 + 48)
            + n_threads * 4 * (4 * th + 1) * (4 * tw + 1) * 8)


def plan_weight_polywino(s: ConvShape, Ho, Wo, f32, caps: ConvCaps, pointwise, n_threads,
                         limit):
    """(images per group, GEMM columns per task, workspace floats) of the weight gradient of a
    4x4 stride-2 conv by the transposed F(4x4, 2x2) over the phase planes (csrc/polywino.h,
    _conv_winograd.conv2d_grad_weight_polywino), or None: polywino's rule under the name
    "weight_polywino", maps above the batch paths'.  Groups of images whose transformed tiles
    fit tuning.WGRAD_PW_GROUP_BYTES, or tuning.WGRAD_PW_THREAD_BYTES per thread where the team
    has more (fewer groups, fewer regions: each region's tail idles the team; the smaller
    groups where the larger do not fit the limit); GEMM tasks of wgrad_pw_cols columns.  Each weight
    is one chain over the batch's tiles in order: neither changes the bits."""
    if (not (f32 and caps.winotiny and avx2_algo(caps, "weight_polywino"))
            or (s.KH, s.KW, s.stride, s.dilation, s.groups) != (4, 4, (2, 2), (1, 1), 1)
            or min(s.C, s.F) < T.POLYWINO_MIN_CHANNELS or batch_ok(Ho, Wo, pointwise)):
        return None
    C8, F8 = ceil_div(s.C, 8) * 8, ceil_div(s.F, 8) * 8
    per_img = 25 * ceil_div(Ho, 4) * ceil_div(Wo, 4) * (4 * C8 + F8) * 4
    group = max(T.WGRAD_PW_GROUP_BYTES, n_threads * T.WGRAD_PW_THREAD_BYTES)
    imgs = max(1, min(s.N, group // per_img))
    floats = polywino_wgrad_floats(s.C, s.F, Ho, Wo, imgs, n_threads)
    if floats * 4 > limit:
        imgs = max(1, min(s.N, T.WGRAD_PW_GROUP_BYTES // per_img))
        floats = polywino_wgrad_floats(s.C, s.F, Ho, Wo, imgs, n_threads)
        if floats * 4 > limit:
            return None
    return imgs, wgrad_pw_cols(4 * C8, n_threads), floats


def wgrad_pw_cols(K, n_threads):
    """GEMM columns per weight_polywino task: tuning.WGRAD_PW_COLS, halved (down to
    tuning.WGRAD_PW_MIN_COLS) while the 25 * ceil(K / cols) equal tasks leave more than
    tuning.WINOGRAD4_MAX_IDLE of the team idle (convt_28: 50 tasks of 64 on 16 threads, 22 %;
    200 of 16, 4 %).  No bits follow the columns."""
    num, den = T.WINOGRAD4_MAX_IDLE
    cols = T.WGRAD_PW_COLS
    while cols > T.WGRAD_PW_MIN_COLS:
        tasks = 25 * ceil_div(K, cols)
        if den * (ceil_div(tasks, n_threads) * n_threads - tasks) <= num * ceil_div(
                tasks, n_threads) * n_threads:
            break
        cols //= 2
    return cols


def plan_weight_rowgemm(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads,
                        limit):
    """(filters per task, kernel rows per task, taps per pass, workspace floats) of the
    rowgemm weight gradient, or None.  The rowphases rule (float32, BLAS with rowgemm, groups
    1, dilation 1, filters in whole 4-row panels, strided with the kernel a multiple of the
    stride: conv_transpose2d's grad_weight, the case measured), maps above the batch paths'
    and a kernel row of at least one 24-column tile (KW*C >= 24).  Tasks: (block of
    tuning.WGRAD_RG_FILTERS filters, the KH/sh kernel rows of one residue mod the row stride,
    which read the same rows of x); while there are fewer tasks than threads the filter blocks
    halve down to 16, then the kernel rows per task.  The tasks and the passes
    (tuning.WGRAD_RG_PASS taps) do not order any sum: no bits follow them."""
    sh, sw = s.stride
    if (not float32 or not avx2_algo(caps, "weight_rowgemm") or s.groups != 1 or pointwise
            or s.stride == (1, 1) or s.F % 4 or s.dilation != (1, 1)
            or s.KH % sh or s.KW % sw or s.KW * s.C < 24 or batch_ok(Ho, Wo, pointwise)):
        return None
    Hp, Wp = (Ho - 1) * sh + s.KH, (Wo - 1) * sw + s.KW
    filters, khs = min(s.F, T.WGRAD_RG_FILTERS), s.KH // sh

    def tasks():
        return ceil_div(s.F, filters) * sh * ceil_div(s.KH // sh, khs)
    while tasks() < n_threads and (filters > 16 or khs > 1):
        if filters > 16:
            filters = ceil_div(filters // 2, 4) * 4
        else:
            khs = ceil_div(khs, 2)
    # each thread of the team (one a task at most) its own image's xcl and panels; the sums
    team = max(1, min(n_threads, tasks()))
    floats = team * (Hp * Wp * s.C + s.F * Ho * Wo) + s.F * s.KH * s.KW * s.C
    if floats * 4 > limit:
        return None
    return filters, khs, T.WGRAD_RG_PASS, floats, team


def plan_weight_direct(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads,
                       limit):
    """(threads, padded-input floats) of the direct weight gradient (csrc/wdirect.h), or None:
    float32 on AVX2 + FMA where avx2_algo allows it (BLAS machines, and half-rate AVX-512
    CPUs beside the own GEMM; full-rate ones keep their plan), groups 1, stride 1, dilation
    1, at most tuning.WDIRECT_MAX_CHANNELS input channels, a kernel of at least tuning.WDIRECT_MIN_TAPS taps and at most 8 columns.  LeNet5's first
    layer (1 -> 6, 5x5): the batch path's GEMM spent more on its columns' transposes and
    packing than on the multiplies.  A task per (filter, channel, kernel row), each sum's
    order fixed by the shapes: no bits follow the team."""
    if (not float32 or not avx2_algo(caps, "weight_direct") or s.groups != 1 or pointwise
            or s.stride != (1, 1) or s.dilation != (1, 1) or s.C > T.WDIRECT_MAX_CHANNELS
            or s.KW > 8 or s.KH * s.KW < T.WDIRECT_MIN_TAPS):
        return None
    floats = s.N * s.C * (Ho + s.KH - 1) * (8 * ceil_div(Wo, 8) + s.KW - 1)
    if floats * 4 > limit:
        return None
    return n_threads, floats


def subpixel_axis(n, k, s, p, d):
    """One axis of grad_x by output phases (the sub-pixel form of a transposed conv): grad_x
    rows q, q + s, q + 2s, ... (phase q) take the taps k' with (q + p - k'*d) % s == 0, tap k'
    reading grad_y row i + (q + p - k'*d) // s for phase row i.  Returns (T, lo, hi, emin):
    emin[q] the least of phase q's shifts (0 for a phase with no taps: its rows are zero), T
    the widest window of shifts any phase spans, and [lo, hi) the window starts u = i + emin[q]
    the n rows of grad_x need (a start serves every phase at once)."""
    emin, span = [], 1
    for q in range(s):
        e = [(q + p - t * d) // s for t in range(k) if (q + p - t * d) % s == 0]
        emin.append(min(e) if e else 0)
        if e:
            span = max(span, max(e) - min(e) + 1)
    live = range(min(s, n))                         # the phases with at least one row
    lo = min(emin[q] for q in live)
    hi = max(ceil_div(n - q, s) - 1 + emin[q] for q in live) + 1
    return span, lo, hi, tuple(emin)


def subpixel_shifted(s: ConvShape):
    """The sub-pixel grad_x's layout where each phase reads its windows at its own shift
    (csrc/rowgemm.h's per-panel bases: float32, Cg a multiple of 4): (I, J, Wd, eh_lo, ew_lo,
    spread_h, spread_w).  The GEMM's columns are the I x J phase positions (i, j), rows
    computed Wd wide; phase (qh, qw) reads grad_y from row i + emin_h[qh], column
    j + emin_w[qw].  The slab starts at grad_y row i0 + eh_lo, column ew_lo (the least shifts;
    spread_*: the largest less the least), so it is spread_h rows deeper than the common
    windows.  Wd: J + spread_w + Tw - 1, less the z columns a row may read past its end into
    the next row's first z -- zeros (columns left of grad_y) where its own would be zeros too
    (right of grad_y): the common windows' edge rows and columns, which only some phases use
    (29 x 30 positions for 28 x 28 on convt_28), become 28 x 29."""
    out = []
    for n, k, st, p, d, m in ((s.H, s.KH, s.stride[0], s.padding[0], s.dilation[0], s.out[0]),
                              (s.W, s.KW, s.stride[1], s.padding[2], s.dilation[1], s.out[1])):
        T, _, _, emin = subpixel_axis(n, k, st, p, d)
        out.append((ceil_div(n, st), T, min(emin), max(emin) - min(emin), m))
    (I, _, eh_lo, spread_h, _), (J, Tw, ew_lo, spread_w, Wo) = out
    full = J + spread_w + Tw - 1
    z = max(0, min(-ew_lo, full - max(J, Wo - ew_lo)))
    return I, J, full - z, eh_lo, ew_lo, spread_h, spread_w


def subpixel_shifted_floats(s: ConvShape, rows):
    """Workspace floats per thread of the shifted sub-pixel grad_x at ``rows`` phase rows per
    task: the slab (Fg planes), its zeros after (past the windows and the columns rounded up
    to rowgemm's tile, tuning.SUBPIXEL_TILE), the GEMM's result (those columns)."""
    _, _, Wd, _, _, spread_h, spread_w = subpixel_shifted(s)
    Th, Tw = subpixel_axis(s.H, s.KH, s.stride[0], s.padding[0], s.dilation[0])[0], \
        subpixel_axis(s.W, s.KW, s.stride[1], s.padding[2], s.dilation[1])[0]
    return ((s.F // s.groups) * (rows + Th - 1 + spread_h) * Wd + spread_w + Tw - 1
            + T.SUBPIXEL_TILE - 1
            + s.stride[0] * s.stride[1] * s.Cg * ceil_div(rows * Wd, T.SUBPIXEL_TILE)
            * T.SUBPIXEL_TILE)


def subpixel_shifted_rows(s: ConvShape, n_threads):
    """(phase rows per task, workspace floats per thread) of the shifted sub-pixel grad_x:
    of the row counts whose task fits tuning.SUBPIXEL_SHIFT_BYTES and that leave
    tuning.PHASES_TASKS_PER_THREAD tasks per thread (where the batch has them), the one that
    computes the fewest columns, each task's rounded up to rowgemm's tile (the fewest rows
    on a tie).  The columns are rowgemm's alone (each value one chain whatever the task): the
    rows may follow the team."""
    I, _, Wd, *_ = subpixel_shifted(s)
    tile = T.SUBPIXEL_TILE
    want = min(T.PHASES_TASKS_PER_THREAD * n_threads, s.N * I)
    best = None
    for r in range(1, I + 1):
        nb = ceil_div(I, r)
        if r > 1 and (s.N * nb < want
                      or subpixel_shifted_floats(s, r) * 4 > T.SUBPIXEL_SHIFT_BYTES):
            continue
        cols = (I // r) * ceil_div(r * Wd, tile) + ceil_div((I % r) * Wd, tile)
        if best is None or cols < best[0]:
            best = (cols, r)
    return best[1], subpixel_shifted_floats(s, best[1])


def plan_subpixel(s: ConvShape, itemsize, own_gemm, pointwise, n_threads, limit):
    """(threads, window starts per task, workspace elements per thread) of the sub-pixel
    grad_x, or None where it does not apply or fit.  It runs the sh*sw phases of grad_x as one
    stride-1 conv of grad_y (Th x Tw windows, sh*sw*Cg output channels): its GEMM does the
    transposed conv's true multiplies when each phase has all of a window's taps (the kernel a
    multiple of the stride, dilation 1), and no col2im scatter; tuning.SUBPIXEL_MAX_WASTE
    bounds the window's zero taps.  On BLAS only (the own AVX-512 GEMM keeps im2col: not
    measured there).  The rows per task are set by the layer alone (BLAS bits).  Float32
    with Cg a multiple of 4 may take the shifted layout (subpixel_shifted; rowgemm only, its
    rows per task the 4th value): the workspace serves both."""
    sh, sw = s.stride
    if own_gemm or pointwise or s.stride == (1, 1) or s.H < 1 or s.W < 1:
        return None
    Ho, Wo = s.out
    Th, ulo, uhi, _ = subpixel_axis(s.H, s.KH, sh, s.padding[0], s.dilation[0])
    Tw, vlo, vhi, _ = subpixel_axis(s.W, s.KW, sw, s.padding[2], s.dilation[1])
    num, den = T.SUBPIXEL_MAX_WASTE
    if den * sh * sw * Th * Tw > num * s.KH * s.KW:
        return None
    Wp = vhi - vlo + Tw - 1                 # (the windows computed Tw - 1 wider)
    rows = max(1, min(uhi - ulo, T.SUBPIXEL_POSITIONS // Wp))
    Fg = s.F // s.groups
    # grad_y's rows padded, then the columns and the GEMM's result
    per = Fg * (rows + Th - 1) * Wp + Tw - 1 + (Fg * Th * Tw + sh * sw * s.Cg) * rows * Wp
    srows = 0
    if itemsize == 4 and s.Cg % 4 == 0:
        srows, sper = subpixel_shifted_rows(s, n_threads)
        per = max(per, sper)
    if per * itemsize > limit:
        return None
    return fit_team(n_threads, per * itemsize, 0, limit), rows, per, srows


def direct_allowed(caps: ConvCaps) -> bool:
    """Whether these caps may plan the direct forward: where avx2_algo allows it, and on a
    full-rate AVX-512 CPU with AVX2 + FMA at level 3 (tuning.DIRECT_FULL_RATE)."""
    return avx2_algo(caps, "direct") or (T.DIRECT_FULL_RATE and caps.rowgemm and caps.own_sgemm
                                         and caps.avx512_full_rate
                                         and caps.depthwise3x3_level >= 3)


def plan_direct(s: ConvShape, Ho, Wo, float32, caps: ConvCaps, pointwise, n_threads, limit):
    """(level, workspace floats per thread, bias first) of the direct forward (csrc/wdirect.h
    ck_direct_forward), or None: float32 on AVX2 + FMA where avx2_algo allows it, groups 1,
    stride 1, dilation 1, at most tuning.DIRECT_MAX_CHANNELS input channels and
    tuning.DIRECT_MAX_TAPS taps per filter (the plan puts maps of <= 64 positions on the batch
    path first).  lenet_c1 (1 -> 6, 5x5, 28x28): the wide plan's GEMM of 6 filters by 25 taps
    ran at a third of the FMA peak, 4 of its 32 columns a row padding.  An image per task, each
    output one chain over the taps in the GEMM's order: no bits follow the team or the level.
    level 3 (64-byte vectors) where the CPU runs AVX-512 (caps.depthwise3x3_level), else 2;
    the chains start from the bias where the GEMMs of the plan it replaces run on csrc/fgemm.h
    (no own GEMM), from 0 with the bias added after on the own GEMM: the same bits.  On a
    full-rate AVX-512 CPU too (tuning.DIRECT_FULL_RATE), at level 3."""
    from ._conv_wdirect import direct_floats  # (a pure size computation, shared with the kernel)
    if (not float32 or not direct_allowed(caps) or s.groups != 1 or pointwise
            or s.stride != (1, 1) or s.dilation != (1, 1) or s.C > T.DIRECT_MAX_CHANNELS
            or s.C * s.KH * s.KW > T.DIRECT_MAX_TAPS):
        return None
    per = direct_floats(s.C, Ho, Wo, s.KH, s.KW)
    if min(n_threads, s.N) * per * 4 > limit:
        return None
    return (3 if caps.depthwise3x3_level >= 3 else 2), per, not caps.own_sgemm


def plan_wide(s: ConvShape, Ho, Wo, itemsize, pointwise, limit):
    """Workspace elements per thread of the wide-row forward, or None when it does not apply."""
    if s.stride != (1, 1) or s.groups != 1 or pointwise:
        return None
    Hp, Wp = Ho + (s.KH - 1) * s.dilation[0], Wo + (s.KW - 1) * s.dilation[1]
    num, den = T.WIDE_MAX_WIDENING
    if den * Wp > num * Wo:
        return None
    per = s.C * Hp * Wp + (s.KW - 1) * s.dilation[1] + (s.C * s.KH * s.KW + s.F) * Ho * Wp
    if per * itemsize > min(T.WIDE_MAX_BYTES, limit):
        return None
    return per


def plan_weight_dot(s: ConvShape, Ho, Wo, float32, own_sgemm, pointwise, n_threads, limit):
    """(rows, pass rows, filters per task, image groups, workspace floats) of the dot-product
    weight gradient, or None where it does not apply or fit."""
    from ._conv_dot import weight_dot_floats  # (a pure size computation, shared with the kernel)
    N, F, Cg, KH, KW, groups = s.N, s.F, s.Cg, s.KH, s.KW, s.groups
    taps = Cg * KH * KW
    if (not float32 or not own_sgemm or (groups > 1 and Cg == 1) or pointwise
            or taps > (T.DOT_MAX_TAPS if groups == 1 else T.DOT_MAX_TAPS_GROUPED)
            or batch_ok(Ho, Wo, pointwise)):
        return None     # (depthwise convs have their own kernels)
    Fg = F // groups
    sh, sw = s.stride
    dh, dw = s.dilation
    kr = max(1, min(Ho, T.DOT_PASS // Wo))
    rows = min(Ho, max(kr, T.DOT_ROWS))
    # a filter chunk per thread (whole 8-filter tiles, its partial sums within L2), times a
    # fixed split of the batch: the split depends on the batch alone, so the sums do not
    # depend on the thread count
    fchunk = ceil_div(ceil_div(Fg, n_threads if groups == 1 else 1), 8) * 8
    fchunk = max(8, min(fchunk, T.DOT_PART_BYTES // (64 * taps) // 8 * 8))
    # image groups from the layer alone: enough for tuning.DOT_MIN_TASKS tasks at 8 filters
    # per chunk (a layer with few filters has few chunks)
    groups_n = max(1, min(N, max(T.DOT_IMAGE_GROUPS,
                                 ceil_div(T.DOT_MIN_TASKS, groups * ceil_div(Fg, 8)))))
    per_thread, per_task = weight_dot_floats(Cg, KH, KW, sh, sw, dh, dw, Wo, rows, kr, fchunk)
    floats = (n_threads * per_thread + groups * ceil_div(Fg, fchunk) * groups_n * per_task
              + 16)
    if floats * 4 > limit:
        return None
    return rows, kr, fchunk, groups_n, floats


# --------------------------------------------------------------------------- the plan
def _or_error(fn, *args):
    """(fn(*args), None), or (None, the message) when fn finds the workspace limit too low."""
    try:
        return fn(*args), None
    except MemoryError as e:
        return None, str(e)


def plan_forward(s: ConvShape, dtype, threads: int, caps: ConvCaps, limit: int,
                 winograd: Optional[bool] = None, exact: bool = False) -> Step:
    """The forward's Step (see plan_conv)."""
    dtype = np.dtype(dtype)
    itemsize, f32 = dtype.itemsize, dtype == np.float32
    own = f32 and caps.own_sgemm
    fixed = f32 and caps.fixed_sgemm and not own      # (BLAS's splits on fgemm.h)
    N, C, H, W, F, Cg, KH, KW = s[:8]
    Ho, Wo = s.out
    wbytes = F * Cg * KH * KW * itemsize
    n = threads_for(N * F * Cg * KH * KW * Ho * Wo, threads)
    pointwise = is_pointwise(KH, KW, s.stride, s.padding)
    if exact:
        return _plan_im2col_forward(s, N, C, KH, KW, Ho, Wo, W, itemsize, n, pointwise, wbytes,
                                    own, limit, fixed)
    if is_depthwise(C, Cg, s.groups):
        level, same = depthwise3x3_plan(F, C, KH, KW, s.stride, s.padding, s.dilation, itemsize,
                                        W, Wo, caps.depthwise3x3_level)
        dh, dw = s.dilation
        per = (0 if same else (Ho + 2) * (Wo + 2)) if level else \
            (Ho + (KH - 1) * dh) * (Wo + (KW - 1) * dw)
        m = scratch_threads(n, per * itemsize, limit)
        if m and level:
            return Step("depthwise3x3", m, {"level": level, "same": same})
        if m:
            return Step("depthwise", m)
        # (a padded plane over the limit, e.g. padding 4096: im2col's pieces fit it)
        return _plan_im2col_forward(s, N, C, KH, KW, Ho, Wo, W, itemsize, n, pointwise, wbytes,
                                    own, limit, fixed)
    if dense_ok(C, H, W, F, KH, KW, Ho, Wo, s.groups, limit):
        return Step("dense", n, dense_params(own, fixed))
    if winograd is None:
        p = plan_winotiny(s, f32, caps, n, limit)
        if p is not None:
            return winotiny_step(p)
        winograd = prefer_winograd(F, Cg, KH, KW, s.stride, s.dilation, s.groups, Ho, Wo)
    if winograd:
        tile = winograd_tile(C, F, Ho, Wo, winograd_own(own, caps))
        wo, wf = winograd_gemm(tile, own, fixed)
        p = plan_winograd(N, C, F, Ho, Wo, itemsize, n, wbytes, wo, limit, tile, wf)
        if p is None and tile == 4:     # (F(4x4)'s filters alone over the limit)
            tile, wo, wf = 2, own, fixed
            p = plan_winograd(N, C, F, Ho, Wo, itemsize, n, wbytes, own, limit, tile, fixed)
        if p is not None:
            return winograd_step(p, tile, wo, wf, Ho, Wo)
    if batch_ok(Ho, Wo, pointwise):
        Hp, Wp = batch_padded(Ho, Wo, KH, KW, s.stride, s.dilation)
        p = plan_batch_forward(N, C, F, KH * KW, Hp * Wp, Ho * Wo, itemsize, n, limit, own,
                                   fixed)
        if p is not None:
            return Step("batch", p[0], {"imgs": p[1], "per_thread": p[2]})
    # (rowphases and stem before phases: on a half-rate AVX-512 CPU both may apply, and the
    # AVX2 ones measured faster; elsewhere at most one of the three does)
    p = plan_polywino(s, Ho, Wo, f32, caps, n, limit)
    if p is not None:
        return Step("polywino", p[0], {"trows": p[1], "per_thread": p[2], "run": p[3]})
    p = plan_rowphases(s, Ho, Wo, f32, caps, pointwise, n, limit)
    if p is not None:
        return Step("rowphases", n, {"rows": p[0], "per_thread": p[1],
                                     "kc": min(s.C * s.KH * s.KW, T.ROWPHASES_KC)})
    p = plan_stem(s, Ho, Wo, f32, caps, pointwise, n, limit)
    if p is not None:
        stem = Step("stem", p[0], {"rows": p[1], "per_thread": p[2]})
        q = plan_stem_wino(s, Ho, Wo, f32, caps, pointwise, n, limit)
        if q is not None:       # (the direct stem runs it where an operand is not finite)
            # (y past the caches: its whole runs by non-temporal stores, csrc/stem_wino.h)
            stream = s.N * s.F * Ho * Wo * 4 >= T.STEM_STREAM_BYTES
            return Step("stem_wino", q[0], {"rows": q[1], "per_thread": q[2], "ufloats": q[3],
                                            "direct": stem, "stream": stream})
        return stem
    p = plan_phases(s, Ho, Wo, f32, caps.own_sgemm, pointwise, n, limit)
    if p is not None:
        return Step("phases", n, {"rows": p[0], "per_thread": p[1]})
    p = plan_direct(s, Ho, Wo, f32, caps, pointwise, n, limit)
    if p is not None:
        return Step("direct", min(n, N), {"level": p[0], "per_thread": p[1],
                                          "bias_first": p[2]})
    p = plan_wide(s, Ho, Wo, itemsize, pointwise, limit)
    if p is not None:
        return Step("wide", min(n, N), {"per_thread": p})
    return _plan_im2col_forward(s, N, C, KH, KW, Ho, Wo, W, itemsize, n, pointwise, wbytes, own,
                                limit, fixed)


def _plan_im2col_forward(s, N, C, KH, KW, Ho, Wo, W, itemsize, n, pointwise, wbytes, own, limit,
                         fixed):
    algo = "pointwise" if pointwise else "im2col"
    p, err = _or_error(plan_im2col_forward, N, C, KH * KW, Ho, Wo, W, s.stride[1],
                         itemsize, n, pointwise, wbytes, own, limit, fixed, s.F // s.groups)
    if p is None:
        return Step(algo, n, error=err)
    return Step(algo, p[0], {"rows": p[1], "per_thread": p[2],
                             **({"blocks": p[3]} if p[3] else {}),
                             **({"fblocks": p[4]} if p[4] > 1 else {})})


def plan_backward(s: ConvShape, dtype, threads: int, caps: ConvCaps, limit: int,
                  needs_input_grad: bool = True, winograd: Optional[bool] = None,
                  exact: bool = False):
    """(grad_x Step or None, grad_weight Step, grad_bias, grad_bias threads) (see plan_conv)."""
    dtype = np.dtype(dtype)
    itemsize, f32 = dtype.itemsize, dtype == np.float32
    own = f32 and caps.own_sgemm
    fixed = f32 and caps.fixed_sgemm and not own      # (BLAS's splits on fgemm.h)
    N, C, H, W, F, Cg, KH, KW = s[:8]
    G = s.groups
    Ho, Wo = s.out
    wbytes = F * Cg * KH * KW * itemsize
    n = threads_for(N * F * Cg * KH * KW * Ho * Wo, threads)
    rule = winograd is None     # (else a test forces winograd or im2col: no tiny paths)
    bias_n = threads_for(N * F * Ho * Wo, threads)
    pointwise = is_pointwise(KH, KW, s.stride, s.padding)
    if exact:
        return _plan_im2col_backward(s, N, C, Cg, G, KH, KW, Ho, Wo, W, itemsize, n, pointwise,
                                     needs_input_grad, wbytes, own, limit, None, None, bias_n,
                                     fixed)
    if is_depthwise(C, Cg, G):
        level, same = depthwise3x3_plan(F, C, KH, KW, s.stride, s.padding, s.dilation, itemsize,
                                        W, Wo, caps.depthwise3x3_level)
        dh, dw = s.dilation
        if level:
            per = 0 if same else (Ho + 2) * (Wo + 2) + (H + 2) * (W + 2)
        else:
            per = max(KH * KW * Wo, (Ho + (KH - 1) * dh) * (Wo + (KW - 1) * dw),
                      (H + (KH - 1) * dh) * (W + (KW - 1) * dw) + KH * KW)
        m = scratch_threads(n, per * itemsize, limit)
        if m and level:     # one pass per plane: grad_x, grad_weight and grad_bias together
            step = Step("depthwise3x3", m, {"level": level, "same": same})
            return (step if needs_input_grad else None), step, "fused", m
        if m:
            step = Step("depthwise", m)
            return (step if needs_input_grad else None), step, "sum", bias_n
        return _plan_im2col_backward(s, N, C, Cg, G, KH, KW, Ho, Wo, W, itemsize, n, pointwise,
                                     needs_input_grad, wbytes, own, limit, None, None, bias_n,
                                     fixed)
    if dense_ok(C, H, W, F, KH, KW, Ho, Wo, G, limit):
        step = Step("dense", n, dense_params(own, fixed))
        return (step if needs_input_grad else None), step, "sum", bias_n
    dot = plan_weight_dot(s, Ho, Wo, f32, caps.own_sgemm, pointwise, n, limit)
    if dot is not None and (plan_weight_polywino(s, Ho, Wo, f32, caps, pointwise, n, limit)
                            or plan_weight_rowgemm(s, Ho, Wo, f32, caps, pointwise, n, limit)
                            or plan_weight_stem(s, Ho, Wo, f32, caps, pointwise, n, limit)):
        dot = None      # (a half-rate AVX-512 CPU: the AVX2 weight gradient measured faster)
    gx = None
    if needs_input_grad:
        if winograd is None:
            p = plan_winotiny(s, f32, caps, n, limit, grad_x=True)
            if p is not None:
                gx = winotiny_step(p)
            winograd = prefer_winograd(F, Cg, KH, KW, s.stride, s.dilation, G, Ho, Wo)
        if winograd and gx is None:
            # the conv of grad_y (F channels) with the flipped, transposed filters (C out)
            tile = winograd_tile(F, Cg, H, W, winograd_own(own, caps))
            wo, wf = winograd_gemm(tile, own, fixed)
            p = plan_winograd(N, F, Cg, H, W, itemsize, n, wbytes, wo, limit, tile, wf)
            if p is None and tile == 4:
                tile, wo, wf = 2, own, fixed
                p = plan_winograd(N, F, Cg, H, W, itemsize, n, wbytes, own, limit, tile, fixed)
            if p is not None:
                gx = winograd_step(p, tile, wo, wf, H, W)
        if gx is None and s.stride == (1, 1) and batch_ok(H, W, pointwise):
            Hp, Wp = batch_padded(H, W, KH, KW, (1, 1), s.dilation)
            p = plan_batch_forward(N, F, C, KH * KW, Hp * Wp, H * W, itemsize, n, limit, own,
                                   fixed)
            if p is not None:
                gx = Step("batch", p[0], {"imgs": p[1], "per_thread": p[2], "flipped": True})
        if gx is None and not batch_ok(Ho, Wo, pointwise):
            p = plan_polywino_grad_x(s, f32, caps, n, limit)
            if p is not None:
                gx = Step("polywino", p[0], {"trows": p[1], "per_thread": p[2]})
        if gx is None and not batch_ok(Ho, Wo, pointwise):
            p = plan_subpixel(s, itemsize, own and not avx2_algo(caps, "subpixel"), pointwise,
                              n, limit)
            if p is not None:
                gx = Step("subpixel", p[0], {"rows": p[1], "per_thread": p[2], "srows": p[3],
                                               "skc": T.SUBPIXEL_SHIFT_KC})
    gx_left = needs_input_grad and gx is None       # still to do by a backward kernel below
    gw = None
    p = plan_weight_winotiny(s, f32, caps, n, limit) if rule and not gx_left else None
    if p is not None:
        return gx, Step("weight_winotiny", p[0], {"part_groups": p[1], "chunk": p[2],
                                                 "per_thread": p[3], "sums": p[4], **p[5]}), \
            "sum", bias_n
    if dot is not None:
        rows, kr, fchunk, groups_n, floats = dot
        gw = Step("weight_dot", n, {"rows": rows, "kr": kr, "fchunk": fchunk,
                                    "groups_n": groups_n, "floats": floats})
        if not gx_left:
            return gx, gw, "fused", n
    else:
        p = plan_weight_polywino(s, Ho, Wo, f32, caps, pointwise, n, limit)
        if p is not None:
            gw = Step("weight_polywino", n, {"imgs": p[0], "cols": p[1], "floats": p[2]})
            if not gx_left:
                return gx, gw, "sum", bias_n
        p = None if gw is not None else plan_weight_rowgemm(s, Ho, Wo, f32, caps, pointwise,
                                                            n, limit)
        if p is not None:
            gw = Step("weight_rowgemm", n, {"filters": p[0], "khs": p[1], "kc": p[2],
                                            "floats": p[3], "team": p[4]})
            if not gx_left:
                return gx, gw, "sum", bias_n
        elif gw is None and winograd is not False:  # (tests forcing im2col force it here too)
            wown = own and not avx2_algo(caps, "weight_winograd")
            p = plan_weight_winograd(s, Ho, Wo, itemsize, wown, n, limit)
            # (its GEMMs on the fixed-order kernel: fgemm.h, or the own; fgemm.h beside the own
            #  where the half-rate rule takes it: tuning.WGRAD_WINO_FGEMM)
            if p is not None:
                gw = Step("weight_winograd", n, {"trows": p[0], "cols": p[1], "parts": p[2],
                                                 "floats": p[3], "fixed": fixed or own,
                                                 "fgemm": (own and f32 and caps.fixed_sgemm
                                                           and T.WGRAD_WINO_FGEMM
                                                           and not wown)})
                if not gx_left:
                    return gx, gw, "sum", bias_n
        p = None if gw is not None else plan_weight_stem(s, Ho, Wo, f32, caps, pointwise, n,
                                                         limit)
        if p is not None:
            gw = Step("weight_stem", p[0], {"rows": p[1], "fchunk": p[2], "groups_n": p[3],
                                            "per_thread": p[4], "part": p[5]})
            q = plan_weight_stem_wino(s, Ho, Wo, f32, caps, pointwise, n, limit)
            if q is not None:   # (weight_stem runs it where the result is not finite)
                gw = Step("weight_stem_wino", q[0], {"rows": q[1], "groups_n": q[2],
                                                     "per_thread": q[3], "part": q[4],
                                                     "direct": gw})
            if not gx_left:
                return gx, gw, "fused", gw.threads
    if gw is None and not gx_left:
        p = plan_weight_direct(s, Ho, Wo, f32, caps, pointwise, n, limit)
        if p is not None:
            return gx, Step("weight_direct", p[0], {"floats": p[1]}), "sum", bias_n
    if batch_ok(Ho, Wo, pointwise):      # (never together with weight_dot)
        Hp, Wp = batch_padded(Ho, Wo, KH, KW, s.stride, s.dilation)
        p = plan_batch_backward(N, Cg, G, F, KH * KW, Hp * Wp, Ho * Wo, itemsize, n, gx_left,
                                limit, own, fixed)
        if p is not None:
            params = {"chans_w": p[1], "kimgs": p[2], "imgs": p[3], "nsplit": p[4],
                      "per_thread": p[5]}
            if p[6] != F // G:          # (filter blocks: only where the team would idle)
                params["filters_w"] = p[6]
            step = Step("batch", p[0], params)
            return (step if gx_left else gx), step, "sum", bias_n
    return _plan_im2col_backward(s, N, C, Cg, G, KH, KW, Ho, Wo, W, itemsize, n, pointwise,
                                 gx_left, wbytes, own, limit, gx, gw, bias_n, fixed)


def _plan_im2col_backward(s, N, C, Cg, G, KH, KW, Ho, Wo, W, itemsize, n, pointwise, gx_left,
                          wbytes, own, limit, gx, gw, bias_n, fixed):
    """The im2col backward Step for what is left: grad_x (when gx_left) and grad_weight
    (unless gw, a weight_dot or weight_rowgemm Step, makes it)."""
    algo = "pointwise" if pointwise else "im2col"
    p, err = _or_error(plan_im2col_backward, N, C, Cg, G, KH, KW, Ho, Wo, W,
                         s.stride[1], itemsize, n, pointwise, gx_left, wbytes, own, limit,
                         fixed, s.F)
    if p is None:
        step = Step(algo, n, error=err)
    else:
        step = Step(algo, p[0], {"units_w": p[1], "rows_w": p[2], "chans_x": p[3],
                                 "rows_x": p[4], "nsplit": p[5], "per_thread": p[6],
                                 "filters_w": p[7], "pos_x": p[8],
                                 "fgemm_w": pointwise and fixed})
        if pointwise and pointwise_smallk(s.F // G, Cg, own, fixed):
            step.params["smallk_x"] = True      # (grad_x on csrc/smallk.h)
    if gw is not None:       # grad_weight by another kernel: the im2col pass makes grad_x only
        if gw.algo == "weight_dot":
            return step, gw, "fused", n
        return (step, gw, "fused", gw.threads) if gw.algo.startswith("weight_stem") else \
            (step, gw, "sum", bias_n)
    return (step if gx_left else gx), step, "sum", bias_n


def plan_conv(shape: ConvShape, dtype, threads: int, caps: ConvCaps, workspace_limit: int,
              needs_input_grad: bool = True, winograd: Optional[bool] = None,
              exact: bool = False) -> ConvPlan:
    """The plan of a conv: forward, grad_x and grad_weight chosen independently.

    shape: ConvShape.of(x.shape, weight.shape, stride, padding, dilation, groups); threads:
    convkit.get_num_threads() (calls below tuning.SERIAL_MACS run on one); caps: the machine's
    abilities; workspace_limit: convkit.get_workspace_limit().  winograd: None applies the
    rule (prefer_winograd); True / False decide it (tests compare Winograd with im2col).
    exact: some operand holds a NaN or an infinity.  Every algorithm but im2col (pointwise) mixes
    values across outputs -- Winograd's tile transforms, the dense and batch-wide matrices'
    structural zeros, the depthwise kernels' skipped padding taps -- so a NaN or inf would
    reach other outputs than torch's (or miss a 0 * inf that torch's has); im2col computes each
    output from its own window, padding included, as torch and the numpy reference do.
    Pure: the same arguments give the same plan, on any machine."""
    gx, gw, gb, gb_threads = plan_backward(shape, dtype, threads, caps, workspace_limit,
                                           needs_input_grad, winograd, exact)
    return ConvPlan(plan_forward(shape, dtype, threads, caps, workspace_limit, winograd, exact),
                    gx, gw, gb, gb_threads)
