"""How each cpu conv algorithm's work splits across many threads (issue 16): pure arithmetic on
the plan, no timing.

    python bench/many_core_split.py [--threads 2,16,64] [--caps avx512,epyc,zen4] [--extra]
        [--markdown]

For every conv layer of the suite (convkit.benchmark.cases.CASES, family "conv", plain ConvCase:
transposed and deformable convs, subclasses added by other issues, run the conv kernels in
other roles and are left out; --extra adds
the shapes that take the algorithms the suite does not: batch, dense, general depthwise, a
strided im2col, a kernel-4 stride-2 conv, tiny 8x8 / 4x4 maps of batch 64) and each pass
(forward, grad_x, grad_weight),
``plan_conv`` gives the step at each thread count for the machines -- ``avx512``:
ConvCaps(own_sgemm=True, depthwise3x3_level=3), the Xeon the project was tuned on, as its
plans were before the AVX2 kernels ran beside the own GEMM (no CPU today: every AVX-512 CPU
has AVX2, so a full-rate one plans as ``avx512_avx2``; ``avx512`` is what the AVX2 kernels
switched off give); ``avx512_avx2``: that real full-rate class (the tiny-map Winograd, direct);
``epyc``:
ConvCaps(False, 2, rowgemm=True, fixed_sgemm=True), the AMD EPYC without AVX-512 (float32 GEMMs
on OpenBLAS, forwards' and grad_x's on csrc/fgemm.h, csrc/rowgemm.h and csrc/stem.h run);
``blas``: ConvCaps(False, 2), BLAS alone (a CPU without AVX2, and float64 on every machine); ``zen4``: the half-rate
AVX-512 CPU (Zen 4) the project runs on now, ConvCaps(own_sgemm=True, 3, rowgemm=True,
fixed_sgemm=True, avx512_full_rate=False, winotiny=True): the own GEMM beside the AVX2
algorithms of tuning.HALF_RATE_AVX2 (conv_plan.avx2_algo; the EPYC and it run csrc/winotiny.h
and csrc/polywino.h, caps.winotiny) -- with the default workspace
limit, and the step's parallel regions are derived from its params and the kernels' prange
loops as below.  The default --caps are the real classes (avx512_avx2, zen4, epyc, blas; the
thirteenth session: was avx512,epyc).  --markdown prints the table as RESULTS.md's rows.
--dtype float64 (since helper last13): the float64 plans and item size (BLAS on every caps:
no own GEMM, no fgemm); the default float32.

Columns: team (the threads the step runs on), regions (parallel regions = barriers per call,
the pass's own: an im2col backward makes grad_x and grad_weight in one call), tasks (per
region, main region first), idle (the main region's idle fraction), dup (work done beyond
the pass's own -- operands repacked per task, phase planes rebuilt, the own GEMM's partial
panels, wide rows' extra columns -- as a share of its own work), lost (the whole pass: the
share of team * (the regions' makespans + serial work) not spent on its own work -- idle
threads in every region, serial work, partial panels and extra columns; repacks and rebuilt
planes are in dup only), ws (workspace per thread, KiB).  Where the team is smaller than
the threads asked (the plan found fewer tasks), --markdown adds "(team k: x of t)": the lost
share of all t threads, the rest of them idle through the call.

Work is counted in multiply-adds for GEMMs and transforms and in elements for copies, zeroing
and reductions (one unit each).  A region's makespan is list scheduling of its tasks in order
(schedule="dynamic": each task goes to the first free thread) or OpenMP's static split
(contiguous chunks, sizes differing by at most one task); for equal tasks the idle fraction is
1 - tasks / (ceil(tasks / team) * team).  On the own GEMM a task of L columns costs whole
48-column panels (tuning.GEMM_PANEL; 64 for a GEMM of 6q rows not a multiple of 8 in its
6 x 64 tiles, tuning.GEMM_PANEL_M6) and a last partial panel as csrc/sgemm.h runs it: 1-4
columns as they are (ck_kernel_edge_m: vectors along m, every lane an output), more in
16-column vectors (the edge tile) -- conv_plan.gemm_columns.  (Before the eleventh session a
partial panel counted as a whole one: pw_14's 196 positions as 240, its 4-position tasks on 16
threads as 48.  Before the twelfth the im2col / pointwise forward's region was modelled as a
dynamic one; its loop has been static since the eleventh.)

Formulas (N images, C / F channels in / out, G groups, Cg = C/G, Fg = F/G, KK = KH*KW taps,
Ho x Wo outputs, HoWo = Ho*Wo; params from the step):

- im2col / pointwise forward (_conv_im2col.conv2d_forward_gemm): one region of
  N*ceil(Ho/rows) tasks (pointwise: N*ceil(HoWo/rows), runs of positions; with "blocks" k,
  N*k tasks, an image's k blocks of floor / ceil(Ho/k) rows), each
  F*Cg*KK*L MACs (L = its rows*Wo or positions).  From 3 threads
  (tuning.IM2COL_SPLIT_MIN_THREADS) the rows (or blocks) are the ones whose busiest thread
  ends first (conv_plan.im2col_rows); on plain BLAS (set by the image, the bits) a power of
  two of even blocks an image since the thirteenth session (conv_plan.image_blocks: 2^j
  threads even; ceil(Ho/8) rows before).  Dup: on BLAS every task's GEMM repacks the
  weight (F*Cg*KK values); on the own GEMM the weight is packed once, serially (_packed_a).
  Pointwise on BLAS with "fblocks" k (since the thirteenth session, helper pwf13;
  conv_plan.pointwise_filter_blocks): each run of positions in k tasks of near-equal blocks
  of each group's filters (whole multiples of 8, min(Fg, 8*floor(b*ceil(Fg/8)/k)) the b-th's
  start), nf*G*Cg*L MACs each; dup: each task repacks
  its block's weights (a run's blocks: the weight once) and the run of x (k*C*HoWo*N).
- im2col / pointwise backward (conv2d_backward_gemm): grad_weight a static region (the
  kernel's prange: contiguous chunks; modelled as dynamic before the thirteenth session) of
  G*ntw*nsplit tasks, a block's parts in a row (ntw = ceil(Cg*KH/units_w) column blocks;
  nsplit parts of the N*ceil(Ho/rows_w) slabs; on BLAS set by the layer,
  conv_plan.blas_weight_split: other blocks / parts where the old ones leave > 10 % of 16
  threads idle, conv_plan.blas_weight_costs the same formulas), each
  Fg*units_w*KW*(its slabs' outputs) MACs, plus its columns (im2col, units_w*KW per output);
  pointwise on BLAS times ceil(Fg/filters_w) filter blocks (since the thirteenth session,
  conv_plan.pointwise_weight_filters; dup: x's columns repacked per filter block);
  when nsplit > 1 the task finishing a column block's last part adds the block's other parts
  into gw (Fg*units_w*KW*(nsplit-1) adds, counted on the block's last part: no extra region);
  grad_x region of N*G*ceil(Cg/chans_x) tasks, each chans_x*KK*Fg*HoWo MACs + col2im (on
  plain BLAS chans_x a power of two of near-equal blocks, conv_plan.grad_x_chans; pointwise
  conv_plan.pointwise_grad_x_chans: one block of >= 256 channels cut in two, since helper
  last13 (float64) and the thirteenth session's end (float32) -- pw_14 16 tasks).  Dup:
  every grad_weight task repacks grad_y (Fg*L per slab), every grad_x task too (Fg*HoWo).
  Pointwise grad_x on BLAS with few filters (smallk_x, conv_plan.pointwise_smallk: <= 32
  filters, >= 64 channels; since the thirteenth session, helper pwx13): csrc/smallk.h, no
  sum cut, so the tasks follow the team
  as on fgemm -- N*G*ceil(HoWo/pos_x) runs of Cg*Fg*L MACs (pos_x: pointwise_positions with
  16-wide tiles; one run on 1 thread); dup grad_y's positions packed once (N*G*Fg*HoWo) and
  each task's weight tiles (Cg*Fg).
  Serial: gw and the parts zeroed (numpy).  grad_bias ("sum"): bias_grad's static region of F
  tasks (N*HoWo each), counted with grad_weight.
- winograd (_conv_winograd.conv2d_forward_winograd), tile t = 2 (F(2x2), E = 16 planes) or
  4 (F(4x4), E = 36): the filter transform, a static region of F*ceil(C/16) blocks; then the
  tile rows (th = ceil(Ho/t), tw = ceil(Wo/t)) in tasks of trows: ceil(N*th/trows) of them, or
  N*ceil(th/trows) when per_image (plain BLAS: a task never spans images), each E*F*C*P MACs
  (P = its tiles) + the input and output transforms (counted as 4*E per tile and channel in,
  and per tile and filter out).  Dup: on BLAS every task repacks the E transformed filters
  (E*F*C); on the own GEMM they are packed once, serially (F(2x2)'s split: in a static
  region of E*fparts block tasks, _conv_winograd.wino2_pack_filters); csrc/fgemm.h reads them
  in place
  (it packs only the task's own tiles).  grad_x is the same on grad_y (F in, C out, H x W).
  F(4x4) with fparts (conv_plan.winograd4_split, where the tile rows alone leave > 10 % of the
  team idle): the input transform in a region of C*ceil(N*th/trows) tasks (4*E per tile),
  then ceil(N*th/trows)*fparts tasks of (tile rows, a block of whole 6-filter strips), each
  E*f*C*P MACs + the output transform (4*E*f*P; f its filters); dup: each block after the
  first packs the tiles' V again (E*C*tiles); ws: the shared V over the team + the slice.
  F(4x4) staged (plain BLAS, per_image: conv_plan.winograd4_staged, where the image's tasks
  leave > 10 % of 3+ threads idle and the blocks past the team's whole rounds, at
  tuning.WINOGRAD4_STAGED_COST each, fit one round): the first ``lead`` blocks (whole rounds)
  as above in a static region, then the other blocks in three static regions -- the input
  transform, (block, channel) tasks of 4*E*P; the GEMMs, (point, block) tasks of F*C*P MACs
  (E per block, point-major); the output transform, (block, filter) tasks of 4*E*P.  Dup as
  the one-region tasks' (every GEMM repacks its plane of U); the staged blocks' V and M round
  trips through memory are not counted (one core: 0.64-1.52x their one-region time,
  bench/wino4_staged_ab.py).  ws: their V and M over the team + the slice.
  F(2x2) with fparts (on the own GEMM, conv_plan.winograd2_split, where the one-region tasks
  leave > 10 % of the team idle): the same two static regions, blocks of whole 8-filter strips,
  a task's GEMM its panels as the one-region tasks'; dup only where a block has more than 96
  filters (the own GEMM packs B past CK_MC rows: each block after the first packs V again).
- weight_winograd (conv2d_grad_weight_winograd, grad_weight of the F(4x4) layers): three
  regions -- the transforms, (C + F)*ceil(N*th/trows) tasks of trows tile rows of one channel
  of x or one filter of grad_y (4*36 per tile); the GEMMs, 36*parts*ceil(C/cols) tasks, each
  F*cols*(its part's tiles) MACs; the filter transform, a static region of F tasks (C*36*parts
  adds + 36*3*C).  Dup: on plain BLAS each column block repacks its part of Z (F*tiles per
  extra block); on fgemm none.  ws: V, Z and the parts' M (shared) + the row scratch, per thread.
- weight_polywino (conv2d_grad_weight_polywino, csrc/polywino.h): per group of imgs images
  two regions -- the transforms (static; an image and 8 channels of x: its staged phase planes
  and 4*25 per tile and channel of its 4 phases; or 8 filters of grad_y, the two kinds spread
  evenly over the tasks) and 25*ceil(4*C8/cols) GEMMs of F8 x cols
  x the group's tiles -- then a static region of F filters' G^T M G.  Dup: C, F rounded up to
  8 in the GEMMs.  ws: V, Z of a group and M (shared), + the staging per thread.
- winotiny (conv2d_forward_winotiny, Step "winograd" with params tiny; grad_x the same on
  grad_y): ceil(N/(8*groups)) tasks of whole groups of 8 images (the vector lanes), each
  column (a tile of one image) 16*F*C MACs + the transforms (4*16 per column and channel in,
  per column and filter out); dup: a short last group's empty lanes.  The team is at most the
  tasks: batch 64 gives 8 whatever the thread count -- unless the plan's two-region split
  (fparts, where the groups are fewer than 3+ threads): the input transform, G8*C (group,
  channel) tasks (64 per column + the zero-bordered block), then G8*fparts (group, filter
  block) tasks, each column 16*f*C MACs + 64*f (f its filters); ws: the shared V over the
  team + the slice.
- weight_winotiny (conv2d_grad_weight_winotiny): a region of ceil(ceil(N/8)/part_groups)
  parts (set by the layer: the bits), each column 64*(C + F) transforms + 16*F*C products;
  then a static region of F filters adding the parts' M (16*C a part) and G^T M G.  ws: the
  parts' sums over the team + the slice.  With the plan's split (where the parts are fewer
  than 3+ threads): the transforms, G8*(C + F) (group, channel / filter) tasks, then parts*16
  (part, point) tasks of 8*g*per*F*C products each (g its groups), then the fold; ws: the
  sums, V and Z over the team + the slice.
- polywino (conv2d_forward_polywino / conv2d_grad_input_polywino, csrc/polywino.h): N*ceil(th/
  trows) tasks of trows tile rows of one image (static; the forward, where those leave the
  team idle, N*ceil(th*tw/run) runs of ``run`` tiles, row-major across row ends: each stages
  and transforms its whole rows, multiplies and writes its own tiles), each the staged phase rows (4*trows + 1 per
  phase, K of them), the input transform (4*25 per tile and K channel), the 25 GEMMs (tiles x
  K x the filters rounded to 8) and the output transform (4*25 per tile and filter); forward K
  = 4*C8, grad_x K = F8 on the (H - 1 + pt)/2 + 1 grid with 4*C8 filters out.  Dup: the halo
  row per task, C and F rounded up to 8.
- weight_direct (_conv_wdirect.conv2d_grad_weight_direct): x padded in a static region of N
  images, then a static region of F*C*ceil(KH/kr) tasks (kr = 2 kernel rows up to 6 columns),
  each N*kr*KW*Ho*Wo8 MACs (Wo8: Wo in 8 lanes; the tail's lanes dup).
- stem (_conv_phases.conv2d_forward_stem, csrc/stem.h): N*ceil(Ho/rows) tasks, each
  rows*Wo*F*C*KK MACs + its phase planes (C*sh*sw*(rows + halo)*Wq); dup: the halo rows.
- stem_wino (_conv_phases, csrc/stem_wino.h): N*ceil(Ho/rows) tasks, each rows*ceil(Wo/4) tiles
  of F*C*KH*13 products (the 1-D F(4,4) / F(4,3) points) + the output transform (24 per tile
  and filter) + the input rows' transforms ((rows-1)*sh + KH rows per channel); dup: the halo
  rows' transforms.
- weight_stem (conv2d_grad_weight_stem): ceil(F/fchunk)*groups_n tasks, a group the run of the
  batch's (image, row block) slabs it sums (near-equal runs), each slab hr*Wo*fc*K3 MACs (K3:
  the taps padded to a multiple of 3) + its planes, + the task's partial sums zeroed (fc*ldp);
  then a static region of F filters adding groups_n*(K+1) 8-lane sums.  Dup: halo rows, the
  planes again per extra filter block, the padded taps.
- weight_stem_wino (conv2d_grad_weight_stem_wino, csrc/stem_wgrad.h): groups_n tasks, a group
  the run of the batch's (image, row block) slabs it sums, each slab hr*ceil(Wo/4) tiles of
  F*Kt products (Kt: the 13*C*KH transformed taps, each point's padded to a multiple of 3) + its
  grad_y rows' transforms (F*hr*Wo) + its input rows' (as stem_wino's), + the group's partial
  sums zeroed (F*(Kt+1)); then a static region of F filters adding groups_n*(Kt+1) sums and the
  output transform (C*KH*7*13).  Dup: halo rows' transforms, the padded taps.
- rowphases (forward, csrc/rowgemm.h): N*ceil(Ho/rows) tasks of rows*Wq*F*C*KK MACs (the rows
  computed Wq wide) + planes; dup: the Wq - Wo columns and the halo rows.
- subpixel (grad_x of a strided conv whose kernel is a multiple of the stride): a static
  region (the kernel's prange; dynamic before the thirteenth session) of
  N*ceil(Hu/rows) tasks of window rows, each rows*Wp*(sh*sw*Cg)*(Fg*Th*Tw) MACs over the groups
  + the grad_y slab (Fg*(rows + Th - 1)*Wp); dup: the Wp columns beyond the output's and the
  windows' zero taps (against the true C*KK*F*H*W/(sh*sw)... counted as the GEMM's own).
- weight_rowgemm (conv2d_grad_weight_rowgemm): ONE region, its T = ceil(F/filters) * sh *
  ceil(KH/sh/khs) tasks (a filter block's kernel rows of one residue mod sh, up to khs of them:
  filters*khs*KW*C*HoWo MACs an image) cut into fixed runs, one a thread (team min(threads,
  T)); a thread's cost: its tasks' MACs over the batch, the xcl rows (Wp*C each) and grad_y
  panels (HoWo a filter) they read, per image, built by itself (dup: rows or panels two
  threads both build), and its sums' copy into gw.
- batch forward (_conv_batch.conv2d_forward_batch): ceil(N/imgs) tasks of imgs*HoWo*F*Cg*KK;
  BLAS repacks the weight per task.  backward: grad_y copied serially, a grad_weight region of
  G*ceil(Cg/chans_w)*nsplit tasks, the parts added serially -- or, past 2 parts (BLAS's
  tuning.BLAS_BATCH_W_TASKS, since the thirteenth session; each part at least
  BLAS_BATCH_W_PART_MIN_K products a weight: tiny_32_4x4 8 parts, float64 since helper pwx13,
  float32 since last13), in a static region of F filters
  ((nsplit-1)*Cg*KK adds each) --, a grad_x region of ceil(N/imgs)*G tasks.  (float32 on the
  EPYC: grad_weight's GEMMs on csrc/fgemm.h, transposed where the block has more columns than filters (tuning.BATCH_W_FGEMM_RATIO): the same tasks.)
- pointwise backward on csrc/fgemm.h (fgemm_w; float32 on the EPYC's caps): grad_weight a
  region of G*ceil(Fg/filters_w)*ceil(Cg/units_w) tasks, each nf*nu*N*HoWo MACs + the runs'
  additions into gw (nf*nu per run of at most tuning.PW_W_CHAIN positions); dup: the smaller
  side packed (min(nf, nu)*N*HoWo); grad_x a region of N*G*ceil(HoWo/pos_x) tasks of
  Cg*Fg*L MACs (pos_x: the positions per task), grad_y's positions packed once in all.
- csrc/fgemm.h's narrow last panel (CK_FG_EDGE_N) changes how a GEMM runs inside one task,
  not the tasks: no row of its own.
- phases (_conv_phases, own GEMM only): N*ceil(Ho/rows) tasks, each rows*Wo*F*C*KK MACs (one GEMM
  per output row: Wo columns in whole panels) + its phase rows; dup: each task builds
  (KH-1)*dh//sh halo phase rows beyond its own (the share of the phase building).
- wide (_conv_batch.conv2d_forward_wide): N tasks (an image each), each F*C*KK*Ho*Wp MACs:
  dup: the Wp - Wo extra columns per row.
- direct (_conv_wdirect.conv2d_forward_flat, csrc/wdirect.h ck_direct_forward): a static
  region of N tasks (an image each), each F*C*KK*ceil(HoWo/L)*L MACs (L = 16 lanes at level 3,
  8 at level 2: the vectors run along the flat positions) + the padded image (C*Hp*Wx, Wx =
  Wo rounded up to 16 + KW - 1) and its C*KW shifted planes (C*KW*Hp*Wo); dup: the last
  vector's lanes past HoWo.
- weight_dot (_conv_dot, own GEMM only): G*ceil(Fg/fchunk)*groups_n tasks, each fchunk*Cg*KK
  MACs per output of its images; then a static region of F filters summing the groups' 16-lane
  partials.  Dup: the phase planes are built again for every filter chunk.
- dense (_conv_dense): dense_weight over C (static), gemm_rows over row blocks (grad_weight on
  BLAS: tuning.BLAS_DENSE_W_BLOCKS, 4 before the thirteenth session; own: the team; the
  forward and grad_x on BLAS one image a task, image_rows), dense_fold over C.  (Before the
  thirteenth session the model cut the BLAS forward and grad_x in grad_weight's row blocks
  too: dense_2x2's 128 one-image tasks showed as 4, 75 % of 16 threads idle.)
- depthwise3x3 / depthwise (_conv_depthwise): N*C plane tasks; the general backward adds a region
  of F filters (grad_weight over the batch); depthwise3x3's backward sums its per-plane parts
  serially (N*C*10).

Which splits may follow the team: on the own GEMM any (its sums run in a fixed order whatever the
block) except the ones that cut a sum -- im2col's rows_w and rows_x, weight_dot's groups_n,
batch's nsplit, the parts; on BLAS none (OpenBLAS picks its kernels by the block's shape).  The
"fixed" column says whether the step's sum-cutting params are the same at every thread count
listed (they must be: DESIGN.md "same bits for any thread count").
"""
from __future__ import annotations

import argparse
import heapq
import math
import sys

import numpy as np

from convkit.benchmark.cases import CASES, ConvCase
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning as T

CAPS = {"avx512": P.ConvCaps(own_sgemm=True, depthwise3x3_level=3),
        "epyc": P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True,
                           fixed_sgemm=True, winotiny=True),
        "blas": P.ConvCaps(own_sgemm=False, depthwise3x3_level=2),
        "zen4": P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True,
                           fixed_sgemm=True, avx512_full_rate=False, winotiny=True),
        # a full-rate AVX-512 CPU with its AVX2 + FMA kernels too (what cc._caps() gives there:
        # the tiny-map Winograd, direct at level 3 -- tuning.DIRECT_FULL_RATE)
        "avx512_avx2": P.ConvCaps(own_sgemm=True, depthwise3x3_level=3, rowgemm=True,
                                  fixed_sgemm=True, winotiny=True)}
CAPS_LABEL = {"avx512": "Xeon (own GEMM)", "epyc": "EPYC (BLAS + fgemm)", "blas": "BLAS only",
              "zen4": "Zen 4 (own GEMM, half rate)",
              "avx512_avx2": "Xeon (own GEMM, AVX2 kernels too)"}
LIMIT = 256 * 2**20                     # convkit's default workspace limit

# Shapes taking the algorithms the suite's layers do not (--extra): (name, N, C, H, W, F, K,
# stride, pad, groups).
EXTRA = [("small_16_8x8", 128, 16, 8, 8, 16, 3, 1, 1, 1),
         ("dense_2x2", 128, 64, 2, 2, 64, 3, 1, 1, 1),
         ("depthwise_mult2", 8, 32, 28, 28, 64, 3, 1, 1, 32),
         ("strided_14", 8, 64, 28, 28, 128, 3, 2, 1, 1),
         ("k4s2_56", 8, 64, 56, 56, 64, 4, 2, 1, 1),
         # convt_28's adjoint conv (its grad_x: this forward; its grad_weight: this one's)
         ("convt28_adj", 8, 32, 56, 56, 64, 4, 2, 1, 1),
         # SmallResNet-like tiny maps (winotiny / weight_winotiny where caps.winotiny)
         ("tiny_16_8x8", 64, 16, 8, 8, 16, 3, 1, 1, 1),
         ("tiny_32_4x4", 64, 32, 4, 4, 32, 3, 1, 1, 1)]

# Params that cut a sum (their change changes the bits): per algorithm, on the own GEMM / BLAS.
SUM_PARAMS = {
    "im2col": (("rows_w", "rows_x", "nsplit"),
               ("rows", "units_w", "rows_w", "chans_x", "rows_x", "nsplit")),
    "pointwise": (("rows_w", "rows_x", "nsplit"),
                  ("rows", "units_w", "rows_w", "chans_x", "rows_x", "nsplit", "filters_w")),
    # (BLAS: the staged split's lead follows the team -- its GEMMs are the one-region tasks')
    "winograd": ((), ("trows",)),
    # (own GEMM: an entry of gw is one row x column chain, k in blocks set by k alone, so the
    # channel / filter blocks that follow the team since helper batch16 cut none)
    "batch": (("kimgs", "nsplit"), ("imgs", "chans_w", "kimgs", "nsplit")),
    "weight_dot": (("groups_n", "rows", "kr"), ()),
    "dense": ((), ("row_blocks",)),
    "weight_stem": ((), ("rows", "fchunk", "groups_n")),
    "weight_stem_wino": ((), ("rows", "groups_n")),
    "weight_winograd": ((), ("trows", "cols", "parts")),
    # (on csrc/fgemm.h alone -- caps.winotiny -- each weight one chain over the batch's tiles
    # carried from group to group by beta 1: tests/test_cpu_polywino.py checks imgs and cols)
    "weight_polywino": ((), ()),
    "weight_winotiny": (("part_groups", "chunk"), ("part_groups", "chunk")),
}


class Region:
    def __init__(self, name, costs, schedule="dynamic", useful=None):
        self.name, self.costs, self.schedule = name, list(costs), schedule
        self.useful = float(sum(self.costs)) if useful is None else useful

    def makespan(self, team):
        costs = self.costs
        if not costs:
            return 0.0
        if self.schedule == "static" or len(set(costs)) == 1:
            q, r = divmod(len(costs), team)
            if len(set(costs)) == 1:
                return costs[0] * (q + (1 if r else 0))
            best, i = 0.0, 0
            for t in range(team):
                k = q + (1 if t < r else 0)
                best = max(best, sum(costs[i:i + k]))
                i += k
            return best
        free = [0.0] * min(team, len(costs))
        for c in costs:
            heapq.heapreplace(free, free[0] + c)
        return max(free)

    def idle(self, team):
        m = self.makespan(team)
        return 1 - sum(self.costs) / (team * m) if m else 0.0


def panels(L, own, m=8):
    """The columns a GEMM of L columns and m rows costs (own GEMM: whole panels of
    conv_plan.gemm_panel(m) columns, then the partial one's columns, rounded up to 16-column
    vectors past tuning.GEMM_EDGE_N -- conv_plan.gemm_columns)."""
    return P.gemm_columns(L, P.gemm_panel(m)) if own else L


def cdiv(a, b):
    return -(-a // b)


def runs(total, block):
    """The sizes of total cut into blocks of ``block`` (the last one shorter)."""
    return [min(block, total - i) for i in range(0, total, block)]


# --------------------------------------------------------------------------- per algorithm
def flipped(s):
    """The stride-1 conv whose forward is grad_x of s: grad_y (F channels, Ho x Wo) with the
    flipped, transposed filters (C out), padded by (K-1)*d - p: the output is H x W."""
    Ho, Wo = s.out
    (dh, dw), (pt, pb, pl, pr) = s.dilation, s.padding
    a, b = (s.KH - 1) * dh, (s.KW - 1) * dw
    return P.ConvShape(s.N, s.F, Ho, Wo, s.C, s.F // s.groups, s.KH, s.KW, (1, 1),
                       (a - pt, a - pb, b - pl, b - pr), s.dilation, s.groups)


def forward_regions(algo, p, s, own, itemsize):
    """(regions, serial work, dup work, per-thread workspace bytes) of a forward step of conv s
    (a ConvShape: for grad_x by winograd / batch, the conv of grad_y with flipped filters)."""
    N, C, H, W, F, Cg, KH, KW = s[:8]
    G, KK = s.groups, s.KH * s.KW
    Ho, Wo = s.out
    HoWo = Ho * Wo
    wsz = F * Cg * KK
    if algo in ("im2col", "pointwise"):
        if algo == "pointwise" and hasattr(P, "weight_parts"):
            Ls = runs(HoWo, p["rows"])      # (runs of positions since issue 16; rows before)
        elif p.get("blocks"):       # (an even split in k blocks: conv_plan.im2col_rows)
            k = p["blocks"]
            Ls = [((b + 1) * Ho // k - b * Ho // k) * Wo for b in range(k)]
        else:
            Ls = [r * Wo for r in runs(Ho, p["rows"])]
        k = p.get("fblocks", 1)     # (pointwise on BLAS: filter blocks, since pwf13)
        u = cdiv(F // G, 8)         # (blocks of whole multiples of 8 filters, the rest last)
        nfs = [min(F // G, (b + 1) * u // k * 8) - min(F // G, b * u // k * 8)
               for b in range(k)]
        costs = [wsz * nf // (F // G) * panels(L, own, F // G) for L in Ls for nf in nfs] * N
        Ls = [L for L in Ls for _ in nfs]
        useful = float(wsz * HoWo * N)
        dup = 0 if own else wsz * N * len(Ls) // k
        if k > 1:
            dup += k * C * HoWo * N         # x's run repacked per filter block
        cols = 0 if algo == "pointwise" else C * KK * HoWo * N      # im2col's copies
        # (a static schedule since the eleventh session: contiguous chunks of tasks)
        return ([Region("gemm", [c + C * KK * L * (algo != "pointwise")
                                 for c, L in zip(costs, Ls * N)], "static",
                        useful=useful + cols)],
                wsz if own else 0, dup, p["per_thread"] * itemsize)
    if algo == "winograd" and p.get("tiny"):
        # winotiny (conv2d_forward_winotiny): ceil(N / (8 * groups)) tasks of whole groups of 8
        # images, each column (a tile of one image) 16*F*C MACs + the transforms (4*16 per
        # column and channel in, and per column and filter out) + the zero-bordered block
        per = (H // 2) * (W // 2)
        useful = float(N * per * (16 * F * C + 64 * (C + F)))  # (short groups' lanes: dup)
        if p.get("fparts"):
            # the two-region split (since the eleventh session): the batch's input transform,
            # G8*C (group, channel) tasks (+ the zero-bordered block each), then G8*fparts
            # (group, filter block) tasks: the 16 GEMMs of its f filters + their output
            # transform; ws: the shared V over the team + the slice
            G8, fp = cdiv(N, 8), p["fparts"]
            fin = Region("input transform", [8 * per * 64 + 8 * (H + 2) * (W + 2)] * (G8 * C),
                         useful=float(N * per * 64 * C))
            fs = [(b + 1) * F // fp - b * F // fp for b in range(fp)]
            gem = Region("groups x filter blocks",
                         [8 * per * f * (16 * C + 64) for f in fs] * G8,
                         useful=useful - N * per * 64 * C)
            return [gem, fin], 0, 0, (p["shared"] / p["_team"] + p["per_thread"]) * itemsize
        imgs = runs(N, 8 * p["groups"])
        costs = [8 * cdiv(ni, 8) * per * (16 * F * C + 64 * (C + F)) + 8 * (H + 2) * (W + 2)
                 for ni in imgs]
        return [Region("groups of 8 images", costs, useful=useful)], 0, 0, \
            p["per_thread"] * itemsize
    if algo == "polywino":
        return polywino_regions(s, p, itemsize, "f")
    if algo == "winograd":
        t = p.get("tile", 2)
        E = (t + 2) ** 2
        th, tw = cdiv(Ho, t), cdiv(Wo, t)
        filt = Region("filter transform", [16 * E * 2 * 9] * (F * cdiv(C, 16)), "static")
        if p.get("per_image"):
            tiles = [nt * tw for nt in runs(th, p["trows"])] * N
        else:
            tiles = [nt * tw for nt in runs(N * th, p["trows"])]
        if p.get("fparts") and t == 2:      # F(2x2)'s split (conv_plan.winograd2_split)
            nu, fp = cdiv(F, 8), p["fparts"]
            fb = [min(F, 8 * ((b + 1) * nu // fp)) - 8 * (b * nu // fp) for b in range(fp)]
            main = Region("tiles x filter blocks", [E * f * C * panels(P_, own) + E * 4 * f * P_
                                                    for P_ in tiles for f in fb], "static")
            trans = Region("input transform", [E * 4 * P_ for P_ in tiles] * C, "static")
            # above 96 filters a block (csrc/sgemm.h's CK_MC) the GEMM packs its B panels:
            # each filter block after the first packs the tiles' V again
            dup = (fp - 1) * E * C * N * th * tw if max(fb) > 96 else 0
            pack = Region("filter packing", [f * C for f in fb for _ in range(E)], "static")
            return ([main, trans, filt] + ([pack] if own else []), 0, dup,
                    (p["shared"] / p["team"] + p["per_thread"]) * itemsize)
        if p.get("fparts"):         # F(4x4)'s two-region split (conv_plan.winograd4_split)
            nu = cdiv(F, 6)
            fb = [min(F, 6 * ((b + 1) * nu // p["fparts"])) - 6 * (b * nu // p["fparts"])
                  for b in range(p["fparts"])]
            main = Region("tiles x filter blocks", [E * f * C * P_ + E * 4 * f * P_
                                                    for P_ in tiles for f in fb])
            trans = Region("input transform", [E * 4 * P_ for P_ in tiles] * C)
            # each filter block after the first packs the tiles' V again (fgemm.h's B panels)
            dup = (p["fparts"] - 1) * E * C * N * th * tw
            return ([main, trans, filt], 0, dup,
                    (p["shared"] / p["team"] + p["per_thread"]) * itemsize)
        if p.get("staged"):     # F(4x4) on BLAS past the team's rounds (winograd4_staged)
            lead, rest = tiles[:p["lead"]], tiles[p["lead"]:]
            main = Region("points x blocks", [F * C * P_ for P_ in rest] * E, "static")
            trans = Region("input transform", [4 * E * P_ for P_ in rest for _ in range(C)],
                           "static")
            out = Region("output transform", [4 * E * P_ for P_ in rest for _ in range(F)],
                         "static")
            one = [Region("tiles", [E * F * C * P_ + E * 4 * (C + F) * P_ for P_ in lead],
                          "static")] if lead else []
            # (each GEMM repacks its plane of U on BLAS, as the one-region tasks')
            return (one + [main, trans, out, filt], 0, E * F * C * len(tiles),
                    (p["shared"] / p["team"] + p["per_thread"]) * itemsize)
        main = Region("tiles", [E * F * C * panels(P_, own) + E * 4 * (C + F) * P_
                                for P_ in tiles])
        dup = 0 if own or p["_fg"] else E * F * C * len(tiles)
        return [main, filt], E * F * C if own else 0, dup, p["per_thread"] * itemsize
    if algo in ("stem", "rowphases"):
        sh, sw = s.stride
        halo = (KH - 1) // sh
        Wq = Wo + (KW - 1) // sw
        rows = runs(Ho, p["rows"])
        wide = Wq if algo == "rowphases" else Wo        # (rowphases computes rows Wq wide)
        costs = [r * wide * F * C * KK + C * sh * sw * (r + halo) * Wq for r in rows] * N
        useful = float(N * (HoWo * F * C * KK + C * sh * sw * Ho * Wq))
        return ([Region("rows", costs, useful=useful)], F * C * KK, 0,
                p["per_thread"] * itemsize)
    if algo == "stem_wino":
        # per 4-output tile: 13 transform points (F(4,4)'s 7 + F(4,3)'s 6) per channel and
        # kernel row for each filter; the input rows' transforms are redone for each task's halo
        sh = s.stride[0]
        tw = cdiv(Wo, 4)
        rows = runs(Ho, p["rows"])
        costs = [r * tw * (F * C * KH * 13 + F * 24) + C * ((r - 1) * sh + KH) * tw * 13 * 4
                 for r in rows] * N
        useful = float(N * (Ho * tw * (F * C * KH * 13 + F * 24)
                            + C * ((Ho - 1) * sh + KH) * tw * 13 * 4))
        return ([Region("rows", costs, useful=useful)], F * 13 * C * KH, 0,
                p["per_thread"] * itemsize)
    if algo == "batch":
        blocks = runs(N, p["imgs"])
        main = Region("gemm", [nb * HoWo * (wsz + C * KK) for nb in blocks], "static")
        return [main], 0, 0 if own else wsz * len(blocks), p["per_thread"] * itemsize
    if algo == "phases":
        sh, sw = s.stride
        dh = s.dilation[0]
        rows = runs(Ho, p["rows"])
        halo = (KH - 1) * dh // sh
        Wq = Wo + (KW - 1) * s.dilation[1] // sw
        build = [C * sh * sw * (r + halo) * Wq for r in rows]
        main = Region("rows", [r * F * C * KK * panels(Wo, own) + b for r, b in zip(rows, build)]
                      * N)
        dup = N * sum(C * sh * sw * halo * Wq for _ in rows)
        return [main], F * C * KK, dup, p["per_thread"] * itemsize
    if algo == "wide":
        Wp = Wo + (KW - 1) * s.dilation[1]
        main = Region("images", [F * C * KK * panels(Ho * Wp, own)] * N,
                      useful=float(F * C * KK * HoWo * N))     # (Wp - Wo columns per row extra)
        return [main], F * C * KK if own else 0, 0, p["per_thread"] * itemsize
    if algo == "direct":
        L = 16 if p["level"] >= 3 else 8
        Hp, Wx = Ho + KH - 1, cdiv(Wo, 16) * 16 + KW - 1
        planes = C * Hp * Wx + C * KW * Hp * Wo
        main = Region("images", [F * C * KK * cdiv(HoWo, L) * L + planes] * N, "static",
                      useful=float((F * C * KK * HoWo + planes) * N))
        return [main], 0, 0, p["per_thread"] * itemsize
    if algo == "dense":
        return dense_regions(s, p, own, "f"), 0, 0, 0
    if algo in ("depthwise3x3", "depthwise"):
        m = F // C
        main = Region("planes", [m * HoWo * KK] * (N * C))
        per = 0 if p.get("same") else ((Ho + 2) * (Wo + 2) if algo == "depthwise3x3" else
                                       (Ho + (KH - 1) * s.dilation[0])
                                       * (Wo + (KW - 1) * s.dilation[1]))
        return [main], 0, 0, per * itemsize
    raise ValueError(algo)


def polywino_regions(s, p, itemsize, which):
    """polywino (csrc/polywino.h): N*ceil(th/trows) tasks of trows tile rows (4 outputs
    each) of one image: the staged phase rows of every 8 channels (4*trows + 1 rows of
    4*tw + 1 per phase: the + 1 the halo), the input transform (4*25 per tile and channel),
    the 25 GEMMs (tiles x K x F8), the output transform (4*25 per tile and filter).  Forward: K
    = 4*C8 (4 phases), 4 staged phases; grad_x: K = F8, 1 staged plane of grad_y, 4*C8
    filters out (the 4 output phases).  Dup: the halo rows and C, F rounded up to 8 (the
    useful work: one task an image, C and F unpadded)."""
    N, C, H, W, F = s[:5]
    Ho, Wo = s.out
    if which == "f":
        th, tw = cdiv(Ho, 4), cdiv(Wo, 4)
    else:
        th = cdiv((H - 1 + s.padding[0]) // 2 + 1, 4)
        tw = cdiv((W - 1 + s.padding[2]) // 2 + 1, 4)

    def cost(ntr, pad, tiles=None):
        r8 = (lambda v: cdiv(v, 8) * 8) if pad else (lambda v: v)
        # K (the GEMMs' depth = the staged and transformed channels), the GEMMs' columns, and
        # the filters the output transform writes; a run of tiles (forward, "run") stages and
        # transforms its whole rows, multiplies and writes its own tiles
        kk, co, out = (4 * r8(C), r8(F), F) if which == "f" else (r8(F), 4 * r8(C), 4 * C)
        tiles = ntr * tw if tiles is None else tiles
        return (kk * (4 * ntr + 1) * (4 * tw + 1) + 4 * 25 * ntr * tw * kk
                + 25 * tiles * kk * co + 4 * 25 * tiles * out)
    if p.get("run"):
        R, T_ = p["run"], th * tw
        costs = [cost((min(t0 + R, T_) - 1) // tw - t0 // tw + 1, True, min(R, T_ - t0))
                 for t0 in range(0, T_, R)] * N
    else:
        costs = [cost(r, True) for r in runs(th, p["trows"])] * N
    useful = float(N * cost(th, False))
    return [Region("tile rows", costs, "static", useful=useful)], 0, 0, \
        p["per_thread"] * itemsize


def dense_regions(s, p, own, which):
    N, C, H, W, F = s[:5]
    Ho, Wo = s.out
    HW, FO = H * W, F * Ho * Wo
    split = p["row_blocks"] or p["team"]      # (own GEMM: one block per thread)

    def gemm_rows(m, n, k, rows=0):
        rows = rows or cdiv(cdiv(m, split), 8) * 8
        return Region("gemm_rows", [r * n * k for r in runs(m, rows)])
    build = Region("dense_weight", [HW * FO] * C, "static")
    one = p.get("image_rows", 0)    # (BLAS forward / grad_x: one image per GEMM)
    if which == "f":
        return [gemm_rows(N, FO, C * HW, one), build]
    if which == "x":
        return [gemm_rows(N, C * HW, FO, one)]
    return [gemm_rows(C * HW, FO, N), build, Region("dense_fold", [HW * FO] * C, "static")]


def backward_regions(algo, p, s, own, itemsize, which):
    """Like forward_regions for the grad_x ("x") or grad_weight ("w") part of a backward step."""
    N, C, H, W, F, Cg, KH, KW = s[:8]
    G, KK = s.groups, s.KH * s.KW
    Fg = F // G
    Ho, Wo = s.out
    HoWo = Ho * Wo
    gwn = F * Cg * KK
    if algo in ("im2col", "pointwise"):
        pw = algo == "pointwise"
        if which == "x":
            ntx = cdiv(Cg, p["chans_x"])
            Ls = runs(HoWo, p.get("pos_x") or HoWo) if pw else [HoWo]
            costs = [nc * KK * Fg * L + (0 if pw else nc * KK * L)
                     for nc in runs(Cg, p["chans_x"]) for L in Ls] * (N * G)
            if p.get("smallk_x"):     # (csrc/smallk.h: grad_y's runs packed once, A per task)
                return [Region("grad_x", costs)], 0, \
                    N * G * Fg * HoWo + len(costs) * Cg * Fg, 0
            return [Region("grad_x", costs)], 0, N * G * ntx * Fg * HoWo, \
                p["per_thread"] * itemsize
        if pw and p.get("fgemm_w"):
            # (filter, channel) blocks on csrc/fgemm.h, the images' positions in runs of
            # tuning.PW_W_CHAIN added into gw; the smaller side packed per run
            K = N * HoWo
            nrun = N * cdiv(HoWo, cdiv(HoWo, cdiv(HoWo, T.PW_W_CHAIN)))
            costs, dup = [], 0
            for nf in runs(Fg, p["filters_w"]):
                for nu in runs(Cg, p["units_w"]):
                    costs.append(nf * nu * K + nf * nu * nrun)
                    dup += min(nf, nu) * K
            regions = [Region("grad_weight", costs * G),
                       Region("grad_bias", [N * HoWo] * F, "static")]
            return regions, gwn, dup * G, 0
        Ug = Cg * KH
        nsplit = p.get("nsplit", 1)
        nrw = cdiv(Ho, p["rows_w"])
        slabs = [r * Wo for r in runs(Ho, p["rows_w"])] * N
        S = len(slabs)
        parts = [sum(slabs[sp * S // nsplit:(sp + 1) * S // nsplit]) for sp in range(nsplit)]
        costs = []
        fblocks = runs(Fg, p.get("filters_w") or Fg) if pw else [Fg]
        for nf in fblocks:      # (pointwise on BLAS: filter blocks too, since the thirteenth)
            for u in runs(Ug, p["units_w"]):
                for sp, L in enumerate(parts):
                    # (the block's last part to finish adds the others into gw: on the last)
                    costs.append(nf * u * KW * L + (0 if pw else u * KW * L)
                                 + (nf * u * KW * (nsplit - 1) if sp == nsplit - 1 else 0))
        costs *= G
        regions = [Region("grad_weight", costs, "static"),
                   Region("grad_bias", [N * HoWo] * F, "static")]
        ntw = cdiv(Ug, p["units_w"])
        dup = G * ntw * Fg * N * HoWo                   # grad_y repacked per column block
        if len(fblocks) > 1:
            dup += G * len(fblocks) * Ug * N * HoWo     # x's columns repacked per filter block
        return regions, gwn * nsplit, dup, p["per_thread"] * itemsize
    if algo == "polywino" and which == "x":
        return polywino_regions(s, p, itemsize, "x")
    if algo == "weight_winotiny":
        # parts of part_groups groups of 8 images, a task each, in chunks: each column (a tile
        # of one image) 64*C (x's transforms) + 64*F (grad_y's) + 16*F*C (the lane-wise dots)
        # + the zero-bordered blocks; then a static region of F filters adding the parts' M
        # (16*C each a part) and G^T M G (48*C); ws: the parts' sums (shared) + the slice
        per, G8 = (H // 2) * (W // 2), cdiv(N, 8)
        pg = p["part_groups"]
        useful = float(N * per * (64 * (C + F) + 16 * F * C))
        nparts = len(runs(G8, pg))
        fold = Region("filters", [C * (16 * nparts + 48)] * F, "static")
        if p.get("split"):
            # the split (since the eleventh session): the batch's transforms, G8*(C + F)
            # (group, channel / filter) tasks, then parts*16 (part, point) tasks of 8*g*per*F*C
            # products (g: the part's groups), then the fold; ws: V, Z and the sums shared
            tr = Region("transforms", [8 * per * 64 + 8 * (H + 2) * (W + 2)] * (G8 * C)
                        + [8 * per * 64] * (G8 * F), useful=float(N * per * 64 * (C + F)))
            dots = Region("parts x points", [8 * g * per * F * C for g in runs(G8, pg)
                                             for _ in range(16)],
                          useful=float(N * per * 16 * F * C))
            return ([dots, tr, fold], 0, 0,
                    ((p["sums"] + p["shared"]) / p["_team"] + p["per_thread"]) * itemsize)
        costs = [8 * g * per * (64 * (C + F) + 16 * F * C) + 16 * (H + 2) * (W + 2)
                 for g in runs(G8, pg)]
        return ([Region("parts", costs, useful=useful), fold], 0, 0,
                (p["sums"] / p["_team"] + p["per_thread"]) * itemsize)
    if algo == "weight_direct":
        # x padded in a static region of N images (C*Hp*Wp), then a static region of
        # F*C*ceil(KH/kr) (filter, channel, kr kernel rows) tasks (kr = 2 up to 6 columns:
        # csrc/wdirect.h ck_wdirect_rows), each N*rows*KW*Ho*Wo8 MACs (Wo8: Wo rounded up to
        # 8 lanes, the tail's lanes dup); ws: the padded x (shared)
        kr = 2 if KW <= 6 else 1
        Wo8 = 8 * cdiv(Wo, 8)
        Hp, Wp = Ho + KH - 1, Wo8 + KW - 1
        main = Region("(filter, channel, kernel rows)",
                      [N * r * KW * Ho * Wo8 for r in runs(KH, kr)] * (F * C), "static",
                      useful=float(N * F * C * KH * KW * HoWo))
        pad = Region("pad x", [C * Hp * Wp] * N, "static")
        return [main, pad], 0, 0, p["floats"] * itemsize
    if algo in ("winograd", "batch") and which == "x" and (algo == "winograd"
                                                           or p.get("flipped")):
        return forward_regions(algo, p, flipped(s), own, itemsize)
    if algo == "batch":
        Hp, Wp = P.batch_padded(Ho, Wo, KH, KW, s.stride, s.dilation)
        HpWp = Hp * Wp
        if which == "x":
            blocks = runs(N, p["imgs"])
            return [Region("grad_x", [nb * HoWo * Cg * KK * (Fg + 1) for nb in blocks] * G,
                           "static")], \
                0, 0, p["per_thread"] * itemsize
        nsplit = p["nsplit"]
        if own:     # (the own GEMM's panels; filter blocks on many threads: the kernel's order)
            costs = P.batch_weight_costs(N, Cg, G, Fg, KK, HpWp, HoWo, p["chans_w"], nsplit,
                                         p.get("filters_w", Fg))
            useful = float(P.batch_weight_useful(N, Cg, G, Fg, KK, HpWp, HoWo))
        else:
            costs, useful = [], None
            for c in runs(Cg, p["chans_w"]):
                for sp in range(nsplit):
                    imgs = (sp + 1) * N // nsplit - sp * N // nsplit
                    costs.append(Fg * c * KK * imgs * HoWo + c * (KK * HoWo + HpWp) * imgs)
            costs = costs * G
        regions = [Region("grad_weight", costs, "static", useful=useful),
                   Region("grad_bias", [N * HoWo] * F, "static")]
        if nsplit > 2:      # (BLAS's many parts: added in a static region of F filters)
            regions.insert(1, Region("parts", [(nsplit - 1) * Cg * KK] * F, "static"))
            return regions, F * N * HoWo, 0, p["per_thread"] * itemsize
        return regions, F * N * HoWo + (nsplit - 1) * gwn, 0, p["per_thread"] * itemsize
    if algo == "weight_winograd":
        th, tw = cdiv(Ho, 4), cdiv(Wo, 4)
        T_ = N * th * tw
        nrb = cdiv(N * th, p["trows"])
        trans = Region("transforms", [4 * 36 * nt * tw for nt in runs(N * th, p["trows"])]
                       * (C + F))
        parts = [(q + 1) * T_ // p["parts"] - q * T_ // p["parts"] for q in range(p["parts"])]
        cblocks = runs(C, p["cols"])
        gemms = Region("GEMMs", [F * nc * k for _ in range(36) for k in parts for nc in cblocks])
        out = Region("filter transform", [C * (36 * p["parts"] + 36 * 3)] * F, "static")
        dup = 0 if p["_fg"] else (len(cblocks) - 1) * 36 * F * T_
        return ([gemms, trans, out], 0, dup, p["floats"] * itemsize)   # (all: see analyse)
    if algo == "weight_polywino":
        # per group of imgs images: a region of transforms (an image and 8 channels of x: the
        # staged phase planes + 4*25 a tile and channel; or 8 filters of grad_y), a region of
        # 25*ceil(4*C8/cols) GEMMs (F8 x cols x the group's tiles); then a static region of F
        # filters' G^T M G (4*C outputs of 2*25 + 2*5 each)
        th, tw = cdiv(Ho, 4), cdiv(Wo, 4)
        C8, F8 = cdiv(C, 8) * 8, cdiv(F, 8) * 8
        stage = 4 * (4 * th + 1) * (4 * tw + 1) * 8
        regions = []
        cb, fb = C8 // 8, F8 // 8
        xc, gc = stage + 4 * 4 * 25 * th * tw * 8, 16 * th * tw * 8 + 4 * 25 * th * tw * 8
        # (static; since the twelfth session an image's cb tasks of x spread evenly among its
        # fb of grad_y: task u is of x where u*cb//nb steps up at u + 1)
        nb = cb + fb
        order = [xc if (u + 1) * cb // nb > u * cb // nb else gc for u in range(nb)]
        for g in runs(N, p["imgs"]):
            regions.append(Region("transforms", order * g, "static"))
            regions.append(Region("GEMMs", [F8 * nc * g * th * tw
                                            for _ in range(25) for nc in runs(4 * C8,
                                                                               p["cols"])]))
        regions.append(Region("filter transform", [4 * C * 60] * F, "static"))
        useful = float(25 * F * 4 * C * N * th * tw)
        cost = sum(sum(r.costs) for r in regions)
        return regions, 0, cost - useful - sum(sum(r.costs) for r in regions
                                               if r.name != "GEMMs"), p["floats"] * itemsize
    if algo == "weight_stem":
        sh, sw = s.stride
        rows = p["rows"]
        K = C * KK
        K3 = 3 * cdiv(K, 3)
        halo = (KH - 1) // sh
        Wq = Wo + (KW - 1) // sw
        slabs = [r for _ in range(N) for r in runs(Ho, rows)]
        S, G_ = len(slabs), p["groups_n"]
        plane = [C * sh * sw * (r + halo) * Wq for r in slabs]
        costs, useful = [], 0.0
        for fc in runs(F, p["fchunk"]):
            for g in range(G_):
                mine = range(g * S // G_, (g + 1) * S // G_)
                costs.append(sum(slabs[i] * Wo * fc * K3 + plane[i] for i in mine)
                             + fc * 8 * (K3 + 1))
                useful += sum(slabs[i] * Wo * fc * K for i in mine)
        useful += N * C * sh * sw * Ho * Wq         # (each plane row built once, no halo)
        main = Region("filter blocks x slab groups", costs, useful=useful)
        fold = Region("sum partials", [(K + 1) * G_ * 8] * F, "static")
        return [main, fold], 0, 0, (p["per_thread"] * p["_team"] + p["part"]) * itemsize
    if algo == "weight_stem_wino":
        sh = s.stride[0]
        rows, nt, CK = p["rows"], cdiv(Wo, 4), C * KH
        Kt = 6 * 3 * cdiv(2 * CK, 3) + 3 * cdiv(CK, 3)
        halo = (KH - 1) // sh
        slabs = [r for _ in range(N) for r in runs(Ho, rows)]
        S, G_ = len(slabs), p["groups_n"]
        vrow = 8 * nt * 13                  # one input phase row's transforms (8 tiles a step)
        costs, useful = [], 0.0
        for g in range(G_):
            mine = range(g * S // G_, (g + 1) * S // G_)
            costs.append(sum(slabs[i] * nt * F * Kt + F * slabs[i] * Wo
                             + C * sh * (slabs[i] + halo) * vrow for i in mine) + F * (Kt + 1))
            useful += sum(slabs[i] * nt * F * 13 * CK for i in mine)
        useful += N * C * sh * (Ho + halo) * vrow + F * N * Ho * Wo  # (each phase row once)
        main = Region("slab groups", costs, useful=useful)
        fold = Region("sum partials", [(Kt + 1) * G_ + CK * 7 * 13] * F, "static")
        return [main, fold], 0, 0, (p["per_thread"] * p["_team"] + p["part"]) * itemsize
    if algo == "subpixel" and which == "x":
        sh, sw = s.stride
        Th, ulo, uhi, _ = P.subpixel_axis(H, KH, sh, s.padding[0], s.dilation[0])
        Tw, vlo, vhi, _ = P.subpixel_axis(W, KW, sw, s.padding[2], s.dilation[1])
        Wp = vhi - vlo + Tw - 1
        rows = runs(uhi - ulo, p["rows"])
        costs = [r * Wp * sh * sw * Cg * Fg * Th * Tw * G + Fg * G * (r + Th - 1) * Wp
                 for r in rows] * N
        useful = float(N * C * KK * Fg * Ho * Wo + N * F * Ho * Wo)
        return ([Region("window rows", costs, "static", useful=useful)], 0, 0,
                p["per_thread"] * itemsize)
    if algo == "weight_rowgemm":
        sh, sw = s.stride
        Hp, Wp = (Ho - 1) * sh + KH, (Wo - 1) * sw + KW
        # one region: thread i of the team (a task each at most) a fixed run of the tasks
        # (filter block, kernel rows of one residue mod sh), every image: the xcl rows and
        # grad_y panels its tasks read (its own copies), their MACs, then their sums' copy out
        per, fl, khs = KH // sh, p["filters"], p["khs"]
        nmc = cdiv(per, khs)
        ntask = cdiv(F, fl) * sh * nmc
        team = max(1, min(p["_team"], ntask))
        costs = []
        for i in range(team):
            ts = range(i * ntask // team, (i + 1) * ntask // team)
            spans = [(t // (sh * nmc) * fl, (t // nmc) % sh, (t % nmc) * khs) for t in ts]
            spans = [(f0, min(F, f0 + fl) - f0, r, m0, min(per, m0 + khs) - m0)
                     for f0, r, m0 in spans]
            rows = sum(1 for rr in range(Hp) if any(
                rr % sh == r and m0 <= rr // sh < m0 + mk + Ho - 1
                for _, _, r, m0, mk in spans))
            f0, f1 = spans[0][0], spans[-1][0] + spans[-1][1]
            costs.append(sum(N * fb * mk * KW * C * HoWo + fb * mk * KW * C
                             for _, fb, _, _, mk in spans)
                         + N * (rows * Wp * C + (f1 - f0) * HoWo))
        useful = float(N * F * KH * KW * C * HoWo + F * KH * KW * C
                       + N * (Hp * Wp * C + F * HoWo))
        return ([Region("threads' runs of tasks", costs, "static", useful=useful)], 0, 0,
                p["floats"] * itemsize)
    if algo == "weight_dot":
        ntf = cdiv(Fg, p["fchunk"])
        gn = p["groups_n"]
        per_group = cdiv(N, gn)
        sizes = [max(0, min(N, (g + 1) * per_group) - g * per_group) for g in range(gn)]
        costs = [fc * Cg * KK * HoWo * n for fc in runs(Fg, p["fchunk"]) for n in sizes] * G
        sh, sw = s.stride
        Wq = Wo + (KW - 1) * s.dilation[1] // sw
        planes = Cg * sh * sw * (Ho + (KH - 1) * s.dilation[0] // sh) * Wq
        dup = (ntf - 1) * G * N * planes
        regions = [Region("filter chunks x image groups", costs),
                   Region("sum partials", [(Cg * KK + 1) * gn * 16] * F, "static")]
        return regions, 0, dup, p["floats"] * 4       # (all threads' and tasks': see analyse)
    if algo == "dense":
        return dense_regions(s, p, own, which), 0, 0, 0
    if algo in ("depthwise3x3", "depthwise"):
        m = F // C
        if algo == "depthwise3x3":
            if which == "x":
                return [Region("planes (grad_x, grad_weight, grad_bias)",
                               [2 * HoWo * KK + HoWo] * (N * C))], N * C * 10, 0, 0
            return [], 0, 0, 0              # (made by the grad_x pass's planes)
        if which == "x":
            return [Region("planes", [m * HoWo * KK] * (N * C))], 0, 0, 0
        return [Region("filters", [N * HoWo * KK] * F)], 0, 0, 0
    raise ValueError(algo)


# --------------------------------------------------------------------------- the table
def shapes(extra):
    out = [(c.name, P.ConvShape.of((c.N, c.C, c.H, c.W), (c.F, c.C // c.groups, c.K, c.K),
                                   (c.stride,) * 2, (c.pad,) * 4, (1, 1), c.groups),
            not c.first_layer)
           for c in CASES if type(c) is ConvCase and c.family == "conv"]
    if extra:
        for name, N, C, H, W, F, K, st, pad, g in EXTRA:
            out.append((name + "*", P.ConvShape.of((N, C, H, W), (F, C // g, K, K), (st, st),
                                                   (pad,) * 4, (1, 1), g), True))
    return out


def analyse(step, s, own, itemsize, which, fg=False, bias_sum=False, threads=None):
    """dict of the columns for one pass."""
    p = dict(step.params, team=step.threads, _team=step.threads, _fg=fg)
    if which == "f":
        regions, serial, dup, ws = forward_regions(step.algo, p, s, own, itemsize)
    else:
        regions, serial, dup, ws = backward_regions(step.algo, p, s, own, itemsize, which)
    if which == "w" and bias_sum and step.algo in ("weight_winograd", "weight_rowgemm",
                                                   "weight_polywino",
                                                   "weight_dot", "dense", "depthwise",
                                                   "weight_winotiny", "weight_direct"):
        Ho, Wo = s.out      # (grad_bias "sum": bias_grad's static region after the step)
        regions = regions + [Region("grad_bias", [s.N * Ho * Wo] * s.F, "static")]
    team = step.threads
    if step.algo in ("weight_dot", "weight_winograd", "weight_rowgemm", "weight_stem",
                     "weight_stem_wino", "weight_direct", "weight_polywino"):
        ws /= team          # (one buffer for the team: its share per thread)
    cost = sum(sum(r.costs) for r in regions) + serial
    span = sum(r.makespan(team) for r in regions) + serial
    work = sum(r.useful for r in regions) + serial
    lost = 1 - work / (team * span) if span else 0.0
    asked = step.threads if threads is None else threads
    # (against the threads asked: a team smaller than them leaves the rest idle)
    lost_t = 1 - work / (max(asked, team) * span) if span else 0.0
    dup += cost - work          # (own GEMM: the partial panels' columns; wide: its extra ones)
    return {"algo": step.algo, "team": team, "regions": len(regions),
            "tasks": "+".join(str(len(r.costs)) for r in regions) or "-",
            "idle": regions[0].idle(team) if regions else 0.0, "lost": lost,
            "lost_t": lost_t, "asked": asked,
            "dup": dup / work if work else 0.0, "ws": ws / 1024}


def fixed(steps, own, fg=False, half=False):
    """True when each step's sum-cutting params agree across the thread counts (fg: float32
    forwards and grad_x on csrc/fgemm.h, whose Winograd tile rows, im2col forward row blocks
    and grad_x channel blocks cut no sum)."""
    seen = {}
    for st in steps:
        # (half: a half-rate AVX-512 CPU, whose AVX2 weight gradients cut sums as on BLAS)
        keys = SUM_PARAMS.get(st.algo, ((), ()))[
            0 if own and not (half and st.algo.startswith("weight_")) else 1]
        if fg and st.algo == "winograd":
            keys = ()
        elif fg and st.algo == "im2col":    # (fgemm: forward row blocks, grad_x channels)
            keys = tuple(k for k in keys if k not in ("rows", "chans_x"))
        seen.setdefault(st.algo, set()).add(tuple(st.params.get(k) for k in keys))
    return all(len(v) == 1 for v in seen.values())


def algo_name(step):
    """The step's algorithm, Winograd F(4x4) as winograd4."""
    if step.params.get("tiny"):
        return "winotiny"
    return step.algo + ("4" if step.params.get("tile") == 4 else "")


def markdown(rows, caps_names, threads, out=sys.stdout):
    """RESULTS.md's table: a row per (layer, pass), per machine its algorithm and, at each
    thread count but the first, "tasks, lost"."""
    w = out.write
    by = {}
    for cname, name, label, algo, ok, res in rows:
        by.setdefault((name, label), {})[cname] = (algo, ok, res)
    head = "| layer | pass |"
    for c in caps_names:
        head += f" {CAPS_LABEL[c]} |" + "".join(f" t{t}: tasks, lost |" for t in threads[1:])
    w(head + "\n|" + "---|" * (2 + len(caps_names) * len(threads)) + "\n")
    for (name, label), cell in by.items():
        line = f"| {name} | {label} |"
        for c in caps_names:
            if c not in cell:
                line += " - |" + " - |" * (len(threads) - 1)
                continue
            algo, ok, res = cell[c]
            line += f" {algo}{'' if ok else ' (its sums follow the team!)'} |"
            for t in threads[1:]:
                r = res[t]
                line += f" {r['tasks']}, {r['lost']:.0%}"
                if r["team"] < t:       # (the rest of the threads idle: lost of all t)
                    line += f" (team {r['team']}: {r['lost_t']:.0%} of {t})"
                line += " |"
        w(line + "\n")


def table(caps_names, threads, extra, out=sys.stdout, md=False, dtype=np.float32):
    rows = []
    for cname in caps_names:
        caps = CAPS[cname]
        own = caps.own_sgemm and np.dtype(dtype) == np.float32   # (float64: BLAS)
        for name, s, gx in shapes(extra):
            plans = {t: P.plan_conv(s, dtype, t, caps, LIMIT, needs_input_grad=gx)
                     for t in threads}
            for which, label in (("f", "forward"), ("x", "grad_x"), ("w", "grad_weight")):
                steps = {t: (pl.forward if which == "f" else
                             pl.grad_x if which == "x" else pl.grad_weight)
                         for t, pl in plans.items()}
                if any(st is None for st in steps.values()):
                    continue
                if which == "w" and steps[threads[0]].algo == "depthwise3x3":
                    continue                     # (one pass with grad_x: see that row)
                fg = caps.fixed_sgemm and not own and np.dtype(dtype) == np.float32
                res = {t: analyse(st, s, own and st.algo != "depthwise3x3",
                                  np.dtype(dtype).itemsize, which, fg,
                                  plans[t].grad_bias == "sum", t)
                       for t, st in steps.items()}
                rows.append((cname, name, label, algo_name(steps[threads[0]]),
                             fixed(steps.values(), own, fg, not caps.avx512_full_rate),
                             res))
    if md:
        markdown(rows, caps_names, threads, out)
        return rows
    w = out.write
    head = f"{'caps':7s} {'layer':16s} {'pass':11s} {'algo':12s} {'fixed':5s}"
    for t in threads:
        head += f" | t{t:<3d}{'team':>5s} {'reg':>3s} {'tasks':>14s} {'idle':>5s} {'lost':>5s}"
    head += f" | {'dup':>5s} {'ws KiB':>7s}"
    w(head + "\n" + "-" * len(head) + "\n")
    for cname, name, label, algo, ok, res in rows:
        line = f"{cname:7s} {name:16s} {label:11s} {algo:12s} {'yes' if ok else 'NO':5s}"
        for t in threads:
            r = res[t]
            line += (f" | {'':4s}{r['team']:5d} {r['regions']:3d} {r['tasks']:>14s} "
                     f"{r['idle']:5.0%} {r['lost']:5.0%}")
        last = res[threads[-1]]
        line += f" | {res[threads[1] if len(threads) > 1 else threads[0]]['dup']:5.1%} " \
                f"{last['ws']:7.0f}"
        w(line + "\n")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="2,16,64")
    ap.add_argument("--caps", default="avx512_avx2,zen4,epyc,blas",
                    help=f"from {','.join(CAPS)} (avx512: no AVX2 kernels, not a real CPU)")
    ap.add_argument("--extra", action="store_true",
                    help="also the shapes of the algorithms the suite does not take (marked *)")
    ap.add_argument("--markdown", action="store_true", help="RESULTS.md's table")
    ap.add_argument("--dtype", default="float32", help="float64: the plans float64 gets on "
                    "every machine (BLAS; since helper last13)")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    table(args.caps.split(","), threads, args.extra, md=args.markdown,
          dtype=np.dtype(args.dtype).type)
    if args.markdown:
        return
    print("\nidle: the main region's idle fraction; lost: the whole pass's (all its regions' "
          "makespans and its serial work); dup at the second thread count; ws at the last.")


if __name__ == "__main__":
    main()
