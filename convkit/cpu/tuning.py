"""Every threshold and tuning constant of the cpu conv plan (convkit/cpu/conv_plan.py), in one
place.  Each has a one-line reason and a pointer to where its measurement is recorded: a section
of bench/RESULTS.md, or "not measured in RESULTS.md" where the numbers were only ever kept in the
code (they are in bench/RESULTS.md's section "Conv plan tuning: measurements behind
convkit/cpu/tuning.py", moved there from the comments).  All were tuned on the 2-core AVX-512
Xeon of the 2026-11-28 sessions.

Several constants fix how work is cut into tasks *independently of the thread count* and, on
BLAS, *of the batch size*: BLAS picks its kernels by matrix size (and an output's bits follow
its place in the GEMM), so a split that followed the team or the batch would change the bits of
the result; changing one of those changes results (not just speed) and needs the bit-identity
tests (tests/test_cpu_many_threads.py, tests/test_cpu_batch_invariance.py).
"""

# ----------------------------------------------------------------------------- threads
# Below this many multiply-adds a call runs on one thread: the team costs more than it saves.
# RESULTS.md "Conv plan tuning" / serial threshold (9.2k MACs even, 74k MACs 1.1x on 2).
SERIAL_MACS = 1 << 15

# ----------------------------------------------------------------------------- AVX-512 rate
# The half-rate rule.  Where the CPU has AVX-512F the float32 GEMMs run on the own AVX-512 kernel
# (csrc/sgemm.h) and the plans built on it (phases, weight_dot, F(2x2) Winograd, im2col);
# the AVX2 + FMA algorithms (csrc/rowgemm.h, stem.h, stem_wino.h, wino4.h's packed F(4x4),
# wdirect.h) were tuned on an AVX2-only machine and stay off there -- right where a 512-bit
# FMA runs at twice the 256-bit rate (Intel Skylake-SP and later, AMD Zen 5 = family 0x1A:
# their plans do not change).  AMD family 0x19 (Zen 4) runs a 512-bit FMA as two 256-bit
# halves, so the own GEMM has no more FMA throughput than AVX2 there: on such a CPU
# (ConvCaps.avx512_full_rate False: csrc/isa.h's CPUID test, read once;
# CONVKIT_AVX512_FULL_RATE=0/1 in the environment overrides it, e.g. for tests) the plan takes
# the AVX2 algorithms named here where their rules apply, beside the AVX-512 GEMM for the rest.
# Each was measured per pass against the AVX-512 plan on the 2-core Zen 4 of the ninth session
# (one-thread CPU time; RESULTS.md "ninth session (helper zen4 ...)").
# weight_direct (tenth session, helper lenet10): LeNet5's first layer's backward without grad_x
# (64 / 128, 1, 8, 8) * (6, 1, 5, 5), one thread, 72 / 130 us on the AVX-512 batch path against
# 46 / 79 on csrc/wdirect.h (bench/lenet_c1_wdirect_ab.py).
# direct (twelfth session, helper lenet12): lenet_c1's forward (64, 1, 28, 28) * (6, 1, 5, 5), one
# thread, ~290 us on the AVX-512 wide plan against ~200 on csrc/wdirect.h's ck_direct_forward
# at level 3 (bench/lenet_c1_fwd.py; RESULTS.md "twelfth session (helper lenet12 ...)").
HALF_RATE_AVX2 = frozenset({"stem", "weight_stem", "rowphases", "subpixel", "weight_rowgemm",
                            "winograd4", "weight_winograd", "weight_direct", "polywino",
                            "weight_polywino", "direct"})
# direct on full-rate AVX-512 CPUs as well (level 3, 512-bit vectors, beside the own GEMM; an
# exception to "full-rate CPUs keep their plans"): its level-3 kernel and the wide plan it
# replaces both run 512-bit FMAs, so their ratio on the half-rate Zen 4 stands for the FMA and
# instruction efficiency a full-rate CPU sees too -- lenet_c1's forward (64, 1, 28, 28) *
# (6, 1, 5, 5) with the full-rate plans forced, one thread, CPU time: direct 0.85x wide (wide's
# GEMM of 6 filters fills 6 of the own GEMM's 8-row tiles, 4 of each row's 32 columns are
# padding), the same bits (the bias added after the chain on both).  Not timed on a full-rate
# CPU.  RESULTS.md twelfth session (helper batch16), bench/direct_fullrate_cpu.py.
DIRECT_FULL_RATE = True

# ----------------------------------------------------------------------------- workspaces
# im2col piece per thread: twice the weight's bytes, clamped to [CHUNK_MIN, CHUNK_MAX]; small
# pieces stay in cache, but each piece repacks the weight.
# RESULTS.md "Conv plan tuning" / im2col piece.
CHUNK_MIN = 512 * 2**10
CHUNK_MAX = 8 * 2**20
# Workspaces up to this size are kept per Python thread between calls (no page faults per call).
# Not measured in RESULTS.md.
KEEP_BYTES = 64 * 2**20

# ----------------------------------------------------------------------------- task splits
# im2col forward on the own GEMM on 2 threads: at least this many tasks per thread (balance;
# from IM2COL_SPLIT_MIN_THREADS conv_plan.im2col_rows instead).  Not measured in RESULTS.md.
# (The pointwise forward's runs: conv_plan.pointwise_positions.)
FORWARD_TASKS_PER_THREAD = 2
# from this many threads the im2col forward's rows per task minimise the busiest thread's
# work under the static schedule (conv_plan.im2col_rows) and grad_x on csrc/fgemm.h makes at
# least a task a thread (conv_plan.grad_x_chans); 1 and 2 threads keep the rules as before.
# RESULTS.md "helper im2col16"
IM2COL_SPLIT_MIN_THREADS = 3
# im2col forward and Winograd F(2x2) on BLAS: each image cut into at most this many tasks,
# whatever the thread count and the batch (BLAS bits follow the block size).  Kept for the
# im2col forward on many cores: each task repacks the weight, and 32 tasks (4-row blocks of 14)
# cost a strided 3x3 layer ~10% more on one core (RESULTS.md "Many cores ... (issue 16)").
BLAS_TASKS = 8
# ... but an im2col or pointwise forward task keeps at least this many output positions of its
# image, so a batch of small images does not become many narrow GEMMs (each repacks the
# weight); 32 keeps rpn_cls1x1's 60-position tasks (119 measured slower, loaded machine).
# Not measured in RESULTS.md.
BLAS_MIN_POSITIONS = 32
# pointwise forward and im2col grad_weight on BLAS (position blocks of each image; column
# blocks times parts of the batch): at most / about this many tasks, set by the image / the
# layer alone -- two per thread on 16 cores,
# where 8 left 16 threads half idle.  RESULTS.md "Many cores: how each ... splits (issue 16)".
BLAS_FORWARD_TASKS = 32
BLAS_W_TASKS = 32
# im2col grad_x on BLAS: channel blocks of each image, over its groups, set by the image's shape
# alone.  Not raised for many cores: each block repacks grad_y, and 32 tasks cost pw_14
# ~28% and rpn_cls1x1 ~60% more on one core (RESULTS.md "Many cores ... (issue 16)").
BLAS_GRAD_X_TASKS = 4
# ... per image (batch invariance), each block at least this many GEMM rows (channels x taps)
# where the group has them: a batch of images with few channels per block would repack grad_y
# once per narrow block (pw_14's 256 channels stay one block, as they were at batch 8).
# Not measured in RESULTS.md.
BLAS_GRAD_X_MIN_ROWS = 256
# ... but a pointwise grad_x left one block per group (256 channels: pw_14, 8 tasks on 8 images,
# half of 16 threads idle) is cut in two where each half keeps at least this many channels
# (conv_plan.pointwise_grad_x_chans).  One core, CPU time, 2 blocks against 1
# (bench/pw_gx_blocks_cpu.py, blas_split_cpu.py): 128 channels float64 x0.99-1.05, median
# x1.02 (pw_14 x1.03-1.05), float32 on BLAS x1.04-1.07 (pw_14 x1.06-1.07: taken all the same,
# late in the thirteenth session -- issue 16 asks for the 16-thread split, and float32 reaches
# BLAS only on a CPU without AVX2); 32 channels x1.12-1.23.  RESULTS.md thirteenth session
# (helper last13).
BLAS_PW_GX_HALF_MIN_C = 128
# ... grad_weight's task count rounded up to a multiple of this where the batch allows (equal
# tasks on 2, 4, 8 and 16 threads) ...
BLAS_W_ALIGN = 16
# ... one part more per this many products per weight (a part costs a pass over grad_weight,
# ~40 products per weight: pw_14 measured ~3% per part on one core, res_14's one extra part
# within the noise).  RESULTS.md "Many cores: how each conv algorithm splits (issue 16)".
BLAS_W_PART_MIN_K = 1024
# ... and where those column blocks and parts leave more than this share of BLAS_W_ALIGN
# threads idle, other blocks and parts that do not (conv_plan.blas_weight_split: issue 16's
# 10 %), at most one part per this many products per weight (half BLAS_W_PART_MIN_K:
# strided_14's 4 parts of 392 measured ~0.6-0.8 % of one core a part).
# RESULTS.md, thirteenth session (helper epyc13).
BLAS_W_IDLE = 0.10
BLAS_W_SPLIT_MIN_K = 512
# pointwise grad_weight on BLAS: column blocks of this many channels (96 left pw_14 three tasks;
# 64 measured the same on one core, 32 ~30% slower; 128-filter blocks cost ~20%, parts of the
# batch ~3% each, so pw_14 keeps four tasks).  RESULTS.md "Many cores ... (issue 16)".
BLAS_POINTWISE_COLS = 64
# pointwise grad_weight on BLAS: where its column blocks make fewer than this many tasks,
# blocks of filters (rows of gw) too, each at least BLAS_PW_MIN_FILTERS filters
# (conv_plan.pointwise_weight_filters: pw_14's 4 blocks of 256, one core's CPU time as before);
# where still fewer, parts of the batch as im2col's (weight_parts), one part more per
# BLAS_PW_PART_MIN_K products per weight (rpn_cls1x1's 18 filters: 2 parts; each part costs a
# pass over gw, pw_14 ~3 %).  0 tasks: one block, one part, as before.  RESULTS.md thirteenth
# session (helper blasmisc13).
BLAS_PW_W_TASKS = 16
# pointwise grad_x on BLAS with at most this many filters per group: csrc/smallk.h (each output
# one chain over the filters; tasks follow the team) instead of OpenBLAS.  One core, CPU time
# against OpenBLAS (512 channels, 38x50, whole image): float64 K=18 0.81, 32 0.89, 48 0.96,
# 64 1.02-1.24; float32 18 0.79, 32 0.87, 48 0.94 -- and from BLAS_PW_GX_SMALL_MIN_C channels
# (16 channels, 12x12: 1.16-1.39, a few microseconds; 64 channels 0.94-1.03).  RESULTS.md
# thirteenth session (helper pwx13).
BLAS_PW_GX_SMALL_K = 32
BLAS_PW_GX_SMALL_MIN_C = 64
BLAS_PW_MIN_FILTERS = 64
BLAS_PW_PART_MIN_K = 1024
# batch grad_weight on BLAS: parts of the batch for about this many tasks (2: as before), each
# part at least BLAS_BATCH_W_PART_MIN_K products per weight (its GEMMs' k): CPU time against
# the old parts on tiny_16_8x8 / small_16_8x8 (16 parts of 256 / 512 products) one thread
# x0.94-1.05, two x0.98-1.14 (RESULTS.md thirteenth session, helper blasmisc13).  128:
# tiny_32_4x4's 8 parts (16 tasks; 51 -> 5 % of 16 threads lost by the model) against 4 of 256,
# one thread float64 x0.91-0.92 (helper pwx13), float32 on BLAS x1.03 (helper last13: each
# part's fixed work -- im2col set-up, grad_weight zeroed, its adds -- is the same per part for
# both dtypes, float32's GEMMs half the time).  RESULTS.md thirteenth session (pwx13, last13).
BLAS_BATCH_W_TASKS = 16
BLAS_BATCH_W_PART_MIN_K = 128
# pointwise grad_weight, float32 on csrc/fgemm.h (conv_plan.pointwise_weight_blocks): about
# this many (filter, channel) block tasks (pw_14: 8 x 4 = 32, none idle on 2 to 32 threads; was
# 4 column blocks on BLAS, 16 threads 75 % idle) ...
PW_W_TASKS = 32
# ... the smaller side (filters or channels, packed per GEMM) in blocks of at most this many ...
PW_W_COLS = 64
# ... and the larger side's blocks at least this many rows: each packed value serves that many
# FMAs (rpn_cls1x1's 512 channels x 18 filters: 16 tasks of 32 channels).
PW_W_MIN_ROWS = 32
# ... each entry summed in chains of at most this many positions of one image (near-equal
# runs), each from 0, added in order: a chain over pw_14's whole batch (1568 products) had
# 4.5x the float64 error of BLAS's k blocks (bench/pointwise_check.py).  Cuts the sums: a
# constant, never the team's.
PW_W_CHAIN = 256
# pointwise forward on BLAS: each task's GEMM repacks the weight, so a task keeps at least one
# output position per this many bytes of weight (pw_14's 1 MiB weight: 49-position tasks cost
# 10-45% more on one core than 98 or 196).  RESULTS.md "Many cores ... (issue 16)".
BLAS_POSITION_BYTES = 16 * 2**10
# ... and where that leaves an image few runs (float64's pw_14: one), each run's filters in
# blocks of at least BLAS_PW_FWD_MIN_FILTERS for up to BLAS_PW_FWD_TASKS tasks an image (a
# block repacks x's run and its own weights only).  RESULTS.md thirteenth session, pwf13.
BLAS_PW_FWD_TASKS = 2
BLAS_PW_FWD_MIN_FILTERS = 256
# im2col grad_weight on the own GEMM: aim for this many tasks per thread (res_14's two tasks
# spent 15% of the backward in libgomp's barrier).  Not measured in RESULTS.md.
GRAD_WEIGHT_TASKS_PER_THREAD = 4
# ... rounded to whole GEMM panels only where that still leaves this many tasks per thread
# (else, e.g. a 3-channel stem, one task per thread).  Not measured in RESULTS.md.
GRAD_WEIGHT_MIN_TASKS_PER_THREAD = 2
# im2col grad_x on the own GEMM: channel blocks for at least this many tasks per thread.
# Not measured in RESULTS.md.
GRAD_X_TASKS_PER_THREAD = 2
# im2col grad_weight on BLAS: column blocks about this wide, set by the layer (OpenBLAS gave a
# 3-channel stem other bits on 1 and 2 threads).  RESULTS.md "Other changes measured this session".
BLAS_TASK_COLS = 96
# The own float32 GEMM computes C in panels of this many columns (a partial panel costs a whole
# one): task blocks are rounded to whole panels.  RESULTS.md "The GEMM under every float32 conv".
GEMM_PANEL = 48
# ... and a GEMM of 6q rows not a multiple of 8 (rpn_cls1x1's 18 filters) in 6 x 64 tiles
# (csrc/sgemm.h ck_m6_strip), its last panel of 1-4 columns as the others' (CK_EDGE_N, vectors
# along m).  RESULTS.md, twelfth session, pw12.
GEMM_PANEL_M6 = 64
GEMM_EDGE_N = 4

# ----------------------------------------------------------------------------- Winograd
# Winograd F(2x2, 3x3) for 3x3 stride-1 convs with at least this many channels in and out
# (below, the transforms cost more than the multiplies saved).  Not measured in RESULTS.md.
WINOGRAD_MIN_CHANNELS = 16
# Own GEMM: at least this many tile-row tasks per thread, rounded to a multiple of the team
# below WINOGRAD_EVEN_TASKS per thread.  Not measured in RESULTS.md.
WINOGRAD_TASKS_PER_THREAD = 2
WINOGRAD_EVEN_TASKS = 8
# ... and where those tasks lose more than WINOGRAD_MAX_IDLE of the team (idle threads and
# partial GEMM panels: res_14's 28 tasks of 14 tiles on 16 threads, 23 %; rpn_3x3's 19 tile
# rows, 41 %), other tile rows or the two-region split (conv_plan.winograd2_split: a shared
# input transform, then tasks of tile rows x blocks of 8-filter strips), its tasks at least
# WINOGRAD_SPLIT_MIN_TILES tiles (one GEMM panel) where the batch has them and its blocks at
# least WINOGRAD_SPLIT_MIN_STRIPS strips (32 filters; each block reads the tiles' V again: as
# F(4x4)'s WINOGRAD4_SPLIT_MIN_STRIPS).  From bench/many_core_split.py's arithmetic; not timed
# on 16 cores (this host has 2).
WINOGRAD_MAX_IDLE = (1, 10)
WINOGRAD_SPLIT_MIN_TILES = 48
WINOGRAD_SPLIT_MIN_STRIPS = 4
# ... from this many threads: one and two keep their one-region plans exactly.  The split adds
# two parallel regions; one region more (the filters packed in a region of their own) cost
# res_14's 2-thread forward 1.37x CPU time, rpn_3x3's 1.12x (`CONVKIT_AVX512_FULL_RATE=1
# bench/ab_cpu_time.py --threads 2`, load ~10: threads spinning between regions).
WINOGRAD_SPLIT_MIN_THREADS = 3
# F(4x4, 3x3) instead of F(2x2) (GEMMs on BLAS) when its multiplications, padding tiles
# included, are at most this fraction of F(2x2)'s.  Measured on the 2-core AMD EPYC (no
# AVX-512, OpenBLAS), one thread, CPU time: F(4x4) faster at every suite layer, res_14 (ratio
# 0.73, 14x14 maps) 1.18x, vgg_56 / res_28 (0.5625) 1.5-1.6x, rpn_3x3 (0.62) 1.2x; ratios
# above 0.75 (maps of a few tiles) not measured.  RESULTS.md "Winograd F(4x4, 3x3)".
WINOGRAD4_MAX_MUL_RATIO = (3, 4)
# ... and at least this many channels in and out.  Not a speed threshold (F(4x4) measured
# faster down to 16 channels: 8x16x56x56 2.2 vs 3.4 ms, one thread): F(4x4)'s float32 error is
# ~5x F(2x2)'s, and on the 16-20-channel layers of tests/test_cpu_conv.py it exceeds the suite's
# elementwise float32 tolerance (rtol = atol = 2e-5; 4.6e-5 absolute on outputs of ~0.6).  64
# is the smallest suite layer (vgg_56).  RESULTS.md "Winograd F(4x4, 3x3)" has the errors.
WINOGRAD4_MIN_CHANNELS = 64
# F(4x4): about this many tiles (GEMM columns) per task; F(2x2) on BLAS: at least this many
# (where the image has them).  Same EPYC, one thread: res_14 15.7 ms
# at 64 tiles vs 19.6 at 32 and 18.8 at 128; vgg_56 flat from 56 to 196, rpn_3x3 54 ms at 130
# vs 58 at 65 and 72 at 26.  RESULTS.md "Winograd F(4x4, 3x3)".
WINOGRAD4_TASK_TILES = 64
# F(4x4) (packed, one region): where Ho % 4 (Wo % 4) is one of these, the last tile row (column)
# keeps 1 or 2 of its 4 outputs and goes by F(2x2) in that direction on U's planes 0, 1, 2, 5
# (conv_plan.winograd4_mix_edges; csrc/wino4.h CK_W2_B): res_14 484 GEMM products an image
# instead of 576 (552 with the last rows apart).  RESULTS.md "mixed edge tiles".
WINOGRAD4_EDGE_F2 = frozenset({1, 2})
# ... where the GEMMs sum each output in a fixed order (csrc/fgemm.h: the bits do not follow
# the tiles per task), another task size when that one leaves more than this share of the team
# idle in the last round (conv_plan.even_tile_rows), down to this many tiles per task (res_14
# above: 32 tiles cost 1.25x 64's CPU time) and up to this many bytes of a task's V and M
# (res_14's 64 tiles: 4.7 MB, its slower 128: 9.4 MB; vgg_56's flat 56-196: up to 3.6 MB).
# Idle shares from bench/many_core_split.py's arithmetic (bench/RESULTS.md "Many cores"): the
# rule leaves the suite's 2-thread plans as they were and takes vgg_56 on 16 threads from 23
# tasks of 70 tiles (30 % idle) to 16 of 98.  Not timed on 16 cores.
WINOGRAD4_MAX_IDLE = (1, 10)
WINOGRAD4_MIN_TASK_TILES = 32
WINOGRAD4_TASK_BYTES = 36 * 4 * 64 * 512
# ... and where no tile rows bring the idle share under WINOGRAD4_MAX_IDLE (few tiles: res_14's
# 128, rpn_3x3's 130, res_28's 392 on 16 threads), the two-region split
# (conv_plan.winograd4_split: a shared input transform, then tasks of tile rows x blocks of
# 6-filter strips), its blocks at least this many strips: each extra block reads the tiles' V
# again and its own slice of U, and one core's CPU time grew with them (res_14, tasks of 32
# tiles: one block +11 %, 4 blocks of 10-11 strips +20 %, 8 of 5-6 strips +30 %, load ~8:
# `python bench/wino4_split_ab.py --layers res_14,rpn_3x3 --rounds 15 --configs
# 8:0,8:1,8:4,8:8,16:4`).  Not timed on 16 cores.
WINOGRAD4_SPLIT_MIN_STRIPS = 4
# F(4x4) on BLAS (per image: float64, float32 without csrc/fgemm.h), where an image's tasks leave
# > WINOGRAD4_MAX_IDLE of 3+ threads idle: the blocks past the team's whole rounds go in three
# regions, the same GEMM calls (conv_plan.winograd4_staged), where those blocks times this cost
# fit one round of the team.  The cost: the staged blocks' one-core CPU time over their
# one-region time (V and M through memory), at most 1.63 on the suite's layers (two runs, load
# 2-3: vgg_56 1.51-1.63 float64 / 1.43-1.52 float32, res_28 1.21-1.23 / 1.04-1.09, res_14
# 0.66-0.70 / 0.64-0.65 -- U's planes read once for all blocks --, rpn_3x3 0.95 / 0.94:
# `bench/wino4_staged_ab.py`, RESULTS.md thirteenth session "staged F(4x4) on BLAS").  Not
# timed on 16 cores.
WINOGRAD4_STAGED_COST = (5, 3)

# grad_weight by the transposed F(4x4, 3x3) (conv_plan "weight_winograd": the layers whose
# forward takes F(4x4)): its 36 GEMMs per part sum over runs of at most this many of the
# batch's tiles, each run its own GEMM from zero, the runs added in double.  A chain of
# vgg_56's 1568 tiles on the fixed-order GEMM left 9.7e-6 of the largest weight gradient in
# float32 (torch's own float32: 4.9e-6); runs of 224 left 2.6e-6, of 64 1.2e-6, at the same
# speed within the noise (one thread, CPU time, the loaded 2-core AMD EPYC without AVX-512).
# The runs are set by the layer alone (bits independent of the thread count).
# Not measured in RESULTS.md.
WGRAD_WINO_PART_TILES = 256
# ... and each plane's GEMM cut into this many blocks of channels (whole 16-column panels of
# csrc/fgemm.h): 36 planes x 4 blocks = 144 tasks per part, nine per thread on 16 threads
# (36 alone would leave a quarter of 16 threads idle in the last round).  Not measured.
WGRAD_WINO_COL_BLOCKS = 4
# ... and on a half-rate AVX-512 CPU (Zen 4: HALF_RATE_AVX2 takes weight_winograd) its GEMMs on
# csrc/fgemm.h, not the own AVX-512 GEMM: the same bits where a part has at most 240 tiles (the
# own GEMM's one k block; the suite's parts: 128-224), fgemm.h's bits (the AVX2 stack's) above.
# One thread, CPU time, load ~8 (`python bench/wgrad_wino_ab.py --configs
# plan,planown,im2col,rowgemm`, ms fgemm / own / im2col / weight_rowgemm, torch 20.6 / 18.2 /
# 19.7 / 94.7): vgg_56 17.1 / 20.1 / 24.1 / 19.4, res_28 13.8 / 15.1 / 20.9 / 23.3, res_14
# 14.2 / 14.8 / 20.4 / 21.3, rpn_3x3 40.6 / 42.5 / 101.3 / 113.4.  RESULTS.md, tenth session.
WGRAD_WINO_FGEMM = True

# ----------------------------------------------------------------------------- small maps
# Up to this many output positions per image, the batch's columns go side by side into one GEMM
# per block of images, preferred to Winograd.  RESULTS.md "Conv plan tuning" / batch-wide GEMMs.
BATCH_MAX_HOWO = 64
# Winograd F(2x2, 3x3) with 8 images in a vector (csrc/winotiny.h) for those of these maps that
# are 3x3 stride-1 padded by 1 with even sides and >= WINOGRAD_MIN_CHANNELS channels, float32 on
# AVX2: groups of 8 images per task.  1, 2 and 4 within 10 % (1 best on AVX2 at 8x8); one
# thread, batch 64, 16->16 on 8x8: 155 / 136 us (AVX-512 / AVX2 stack) against the batch GEMM's
# 268 / 271.  RESULTS.md, ninth session (helper resnet9).
WINOTINY_GROUPS = 1
# grad_weight of those layers by the transposed F(2x2) over the same tiles (conv_plan
# "weight_winotiny"): the batch's groups of 8 images in parts of this many groups, a task and a
# sum each (the parts added in double after), each taken in chunks of about this many columns
# (tiles x 8 lanes: V and Z of a chunk stay in L2).  One thread, CPU time, median of 40 calls
# at load 8 (batch 64 / 128, us): 16->16 8x8 part 4 x chunk 1 159 / 326 against the batch
# path's 312 / 627; 32->32 4x4 part 4 x chunk 4 178 / 349 against 258 / 520; parts of 2 and 8
# groups and chunks of 1-4 within 10 %.  RESULTS.md, tenth session (helper resnet10).
WINOTINY_WGRAD_PART_GROUPS = 4
WINOTINY_WGRAD_CHUNK_COLS = 128
# Where those tasks (groups of 8 images; grad_weight's parts) would leave the threads idle, both
# kernels split the batch's transforms from the products (the same bits; issue 16: batch 64 on
# 16 threads left 50 % / 88 % of them idle): from WINOTINY_SPLIT_MIN_THREADS threads (the 1-
# and 2-thread plans stay the measured ones, SmallResNet's 2-thread step), where the tasks
# times WINOTINY_SPLIT_TEAM are at most the threads -- the split's work costs one core 7-45 %
# more (the batch's V / Z leave L2; one thread, CPU time, bench/winotiny_split_cpu.py), so a
# team of more than half the threads would not gain.  The forward's filter blocks have at
# least WINOTINY_SPLIT_MIN_FILTERS filters (rows of its GEMMs).  Not timed on many cores (this
# machine has 2): RESULTS.md eleventh session (helper winotiny16).
WINOTINY_SPLIT_MIN_THREADS = 3
WINOTINY_SPLIT_TEAM = 2
WINOTINY_SPLIT_MIN_FILTERS = 4
# Blocks of images of the batch paths (two tasks per thread on 2 cores), set by the batch alone.
# Not measured in RESULTS.md.
BATCH_BLOCKS = 4
# The dense grad_weight's GEMM on BLAS (float64 everywhere, float32 without AVX2): its rows
# (input pixels) in this many blocks, set by the layer (the bits follow a block's rows).  Was
# BATCH_BLOCKS' 4 (16 threads three quarters idle on dense_2x2).  CPU time against 4 blocks, one
# and two threads: dense_2x2 and a ResNet 2x2 layer x0.79-1.06, a LeNet 4x4 layer (~0.1 ms)
# x1.01-1.10.  RESULTS.md thirteenth session (helper blasmisc13).
BLAS_DENSE_W_BLOCKS = 16
# Column blocks of the batch grad_weight (the batch is split in fixed parts below this).
# Not measured in RESULTS.md.
BATCH_W_BLOCKS = 2
# Above 2 threads, where the batch paths' tasks would leave more than BATCH_MAX_IDLE of the
# threads idle (the model's share: idle threads and the own GEMM's partial panels), the plans
# split finer where no sum is cut: the forward / grad_x blocks of images (on a fixed-order GEMM
# a column's sum does not depend on its block), grad_weight's column blocks and blocks of
# BATCH_W_FILTER_ROWS filters (the own AVX-512 GEMM's 8-row tiles; each entry keeps its chain
# over the parts' image blocks).  The 1- and 2-thread plans are the old ones.  RESULTS.md
# twelfth session (helper batch16): the model at 16 threads and one-thread CPU time.
BATCH_MAX_IDLE = (1, 10)
BATCH_W_FILTER_ROWS = 8
# The grad_weight blocks' cost model (conv_plan.batch_weight_costs): a value copied (im2col,
# the GEMM's packing of the columns and of grad_y) costs this many MACs; and the finer blocks
# may cost at most BATCH_W_MAX_EXTRA more work than the old (one-thread CPU time).  Fitted on
# tiny_16_8x8 / tiny_32_4x4, one thread, CPU time (bench/batch_split_cpu.py): filter blocks of
# 8 +31 % / +73 % (the columns built and packed per block), channel blocks of 8 +11 % / +13 %,
# of 4 +26 % / +31 % (36-column partial panels).  RESULTS.md twelfth session (helper batch16).
BATCH_W_COPY_MACS = 3
BATCH_W_MAX_EXTRA = 0.25
# Batch grad_weight, float32 on csrc/fgemm.h (AVX2 machines; the AVX-512 GEMM keeps its
# place), not BLAS, which spent most of these small-m GEMMs packing; a block with more columns
# (channels x taps) than this many times its filters computed transposed, columns @ grad_y^T
# (fgemm packs only grad_y's rows); -1: BLAS.  SmallResNet's batch-64 blocks, filters x
# columns x positions, one thread, loaded 2-core EPYC (bench/batch_w_gemm.py), GFLOP/s BLAS /
# fgemm / fgemm transposed: 16 x 144 x 4096 37 / 43 / 87, 32 x 288 x 1024 50 / 52 / 84,
# 64 x 288 x 256 67 / 74 / 91; below the ratio 32 x 16 x 1024 42 / 56 / 42, 64 x 16 x 256
# 50 / 66 / 41, 16 x 9 x 4096 24 / 24 / 30.
BATCH_W_FGEMM_RATIO = 1
# A block of images' columns is capped to stay in L2.
# RESULTS.md "Conv plan tuning" / batch block cap.
BATCH_CACHE = 512 * 2**10
# Dense maps (H*W <= KH*KW, groups 1): one GEMM with the conv's dense matrix, of at most this
# many elements (and 1/16 of the workspace limit).  RESULTS.md "Conv plan tuning" / dense maps.
DENSE_MAX_ELEMS = 1 << 20
DENSE_LIMIT_SHARE = 16
# Dense matrices kept per Python thread for the backward of the same weight (a LIFO of layers:
# forward builds A, B; backward uses B, A).  LeNet5's c2 matrix is 96 KiB; rebuilding it cost
# 0.18 M instructions of a 11.6 M-instruction training step (bench/lenet_steps.py, callgrind).
DENSE_KEEP = 4
DENSE_KEEP_BYTES = 8 * 2**20

# ----------------------------------------------------------------------------- wide rows
# Stride-1 forward reading taps in place (an image per task) when its workspace stays in L2 ...
# RESULTS.md "Conv plan tuning" / wide rows (lenet_c1 2.4x faster than im2col).
WIDE_MAX_BYTES = 1 << 20
# ... and the padded rows widen the output by at most 5/4 (extra columns computed and dropped).
# Not measured in RESULTS.md.
WIDE_MAX_WIDENING = (5, 4)

# ----------------------------------------------------------------------------- phase planes
# Strided forward on the own GEMM by polyphase planes for output rows of at least this many
# values (a GEMM per shorter row costs more than it saves).
# RESULTS.md "stem_224: not met then, and why".
PHASES_MIN_WO = 32
# Output rows per task, lowered until there are PHASES_TASKS_PER_THREAD tasks per thread.
# Not measured in RESULTS.md.
PHASES_ROWS = 16
PHASES_TASKS_PER_THREAD = 4

# Strided forward on csrc/rowgemm.h (BLAS machines with AVX2; conv_plan "rowphases"): output
# positions per task (whole rows, a task's phase planes and result in L2) and the least output
# row width (a row block of shorter rows is mostly the GEMM's narrow tail).  Measured on
# conv_transpose2d's grad_x only (convt_28's 8x32x56x56 -> 8x64x28x28, k4 s2), one thread, CPU
# time on the loaded 2-core EPYC: 6.4 ms against 9.5 on im2col + OpenBLAS (torch 5.8); 116 to
# 812 positions per task within the noise.  Not measured in RESULTS.md.
ROWPHASES_POSITIONS = 240
ROWPHASES_MIN_WO = 16
# ... but more rows where a task's phase planes (C * sh * sw planes of rows + (KH-1)/sh rows of
# Wq) fit in this many bytes (half the 1 MB L2 of the Zen 4 measured): convt_28 then computes an
# image per task, 28 x 29 columns in one GEMM (planes 430 KB), where 8-row tasks ran 4 GEMMs of
# 232 columns, each with a 16-20 column narrow tail and a plane row of halo rebuilt.  Zen 4
# (AVX-512 machine, CONVKIT_DISABLE_AVX512=1), one thread, CPU time, load 16-18 (`python
# bench/convt_passes.py --threads 1 --clock cpu --passes gx --rounds 5 --calls 7 --sweep
# ROWPHASES_POSITIONS=240,812,240,812`): 5.06 / 4.66 / 5.06 / 4.66 ms, torch 4.51 (ninth
# session, helper convt9, RESULTS.md).
ROWPHASES_PLANE_BYTES = 512 * 1024
# ... taps per rowgemm pass (csrc/rowgemm.h's kc; the same bits for any kc): a 24-column
# block's kc rows of the planes stay in L1 while every filter panel reads them.  convt_28's
# task GEMM alone (64 x 232, K = 512), in cache, one thread, three runs each (`gcc -O3 -I
# convkit/cpu/csrc bench/rowgemm_kc.c`, then `rowgemm_kc 1 KC`, load ~7): kc 512 80.5-83.1
# GFLOP/s, 256 76.3-87.0, 128 84.9-87.0, 64 82.4-83.9.  The whole pass in place (`python
# bench/convt_passes.py --threads 1 --clock cpu --passes gx --sweep ROWPHASES_KC=512,256,128,64`,
# 7 rounds): 6.04 / 6.17 / 6.34 / 6.05 ms, within that run's noise.  Not in RESULTS.md.
ROWPHASES_KC = 128
# Winograd F(4x4, 2x2) over the phase planes of 4x4 stride-2 convs (conv_plan "polywino",
# csrc/polywino.h; conv_transpose2d k4 s2's grad_x): at least this many channels in and filters
# out (fewer: the transforms outweigh the GEMMs saved), and tasks of whole tile rows whose V, M
# and staged planes fit in POLYWINO_TASK_BYTES (convt_28: a whole image, 7 tile rows, 970 KB).
# RESULTS.md, tenth session (helper convtwino10).
POLYWINO_MIN_CHANNELS = 16
POLYWINO_TASK_BYTES = 1 << 20
# ... and where those tasks leave > WINOGRAD4_MAX_IDLE of the team idle, evened rows of at
# least this many tile rows (conv_plan.even_rows): one tile row a task cost one core 10-30 %
# more than 2 (`PYTHONPATH=. python bench/polywino_trows_cpu.py`, one thread, CPU time, load
# ~2: convt28_adj fwd 3.18 / 2.65 / 2.75 / 2.36 ms at 1 / 2 / 4 / 7 rows, grad_x 4.39 / 3.40 /
# 3.45 / 3.62 at 1 / 2 / 4 / 8).  RESULTS.md, tenth session (helper cores11).
POLYWINO_SPLIT_MIN_TROWS = 2

# The strided first layer on csrc/stem.h (BLAS machines with AVX2; conv_plan "stem" and
# "weight_stem"): strided, groups 1, dilation 1, a kernel that is not a multiple of the stride
# (those go to rowphases / weight_rowgemm), filters in whole 4-row panels, at most this many
# input channels (an image's: the one case measured is stem_224, 8x3x224x224 -> 64, 7x7 s2 p3,
# on the 2-core AMD EPYC without AVX-512; on more channels a task's phase planes outgrow L1).
STEM_MAX_CHANNELS = 4
# ... and output rows at least this wide (a row's tail tiles are masked).  Not measured.
STEM_MIN_WO = 16
# ... and kernels of at least this many taps per channel (im2col copies each input value
# KH*KW/(sh*sw) times: 12 for 7x7 stride 2).  Measured on 7x7 only; strided 3x3 layers stay
# on im2col (not measured on the stem path).
STEM_MIN_TAPS = 25
# Forward: output rows per task (its phase planes: 3 channels x 4 phases x (rows + 3) rows of
# Wq = 115 floats for stem_224; a 4-filter weight panel stays in L1 while it sweeps them).
# stem_224, one thread, CPU time, best of 5 interleaved, load ~8 (`python bench/stem_ab.py
# --sweep STEM_ROWS=1,2,4,8,16,28`): 1-2 rows 22.2-22.7 ms, 4-16 rows 21.2-22.6 (within the
# noise), 28 rows 22.8.  Not in RESULTS.md.
STEM_ROWS = 8
# Weight gradient: output rows per block of phase planes (each block's 4x3 tiles add their
# sums into the 8-lane partial sums once: longer blocks, fewer passes over them); same method
# (`--sweep STEM_W_ROWS=...`): 1 row 33.3 ms, 2 28.4, 4 25.6, 8 23.2-23.8, 16-56 23.8-26.5.
STEM_W_ROWS = 8
# ... filters per task (one block for stem_224: the planes are built once per image and row
# block, not once per filter block) and about this many tasks, the batch's (image, row block)
# slabs cut into fixed groups of consecutive slabs to reach it (at most one group per slab;
# set by the layer, the batch and the limit alone, so the bits do not follow the thread count;
# each group adds a partial-sum array of F x (taps + 1) x 8 floats, 0.3 MB for stem_224, to the
# workspace and to the final sum).  stem_224's 112 slabs make 16 tasks of 7 (groups of whole
# images made 8: half of 16 threads idle).  One thread, CPU time, 9 interleaved rounds on the
# loaded 2-core EPYC (`python bench/stem_ab.py --sweep STEM_W_TASKS=8,16,32,64 --rounds 9`):
# 26.6 / 26.4 / 30.0 / 33.7 ms -- 32 or more groups' partial sums cost more than 16 threads'
# last round saves.  bench/RESULTS.md "Many cores".
STEM_W_FILTERS = 64
STEM_W_TASKS = 16

# The stem forward by a 1-D Winograd F(4, 4) / F(4, 3) along the rows (csrc/stem_wino.h; conv_plan
# "stem_wino"): the stem rule's layers with a 7-wide kernel at column stride 2 (2.15x fewer
# multiplies than the direct stem) and at least this many filters, which share each tile's
# input transform.  Not measured below 64 filters (stem_224).
STEM_WINO_MIN_FILTERS = 16
# Output rows per task (its stride-8 column phases, transformed rows and a 4-filter panel's
# products stay in L2; longer runs of tiles per product pass).  stem_224, one thread, CPU time,
# medians of 7 interleaved rounds, load ~6 (`python bench/stem_wino_ab.py --sweep
# STEM_WINO_ROWS=4,8,16,28`): 4 rows 23.4 ms, 8 21.7, 16 20.9, 28 20.6.  Not in RESULTS.md.
STEM_WINO_ROWS = 16
# Outputs of at least this many bytes are written by stem_wino with non-temporal stores (the
# same values): a plain store first reads each line of a y that the caches cannot hold from
# memory.  stem_224's forward, one thread, CPU time, the output transform alone (a C copy of
# the task with timers, bench/RESULTS.md tenth session, stem10): batch 8 (25.7 MB) 3.0 -> 1.5
# ms of ~14, batch 4 1.7 -> 1.0, batch 2 0.8 -> 0.45, batch 1 (3.2 MB) 0.2 -> 0.2.  Kept
# above a few MB so that a small y stays in the (32 MB here) L3 for the next layer to read.
STEM_STREAM_BYTES = 8 << 20
# Its weight gradient ("weight_stem_wino", csrc/stem_wgrad.h, same layers): output rows per slab
# (a slab's transformed rows, one point's of them with a 4-filter panel's transformed grad_y in
# L1 at 8 rows; each 4 x 3 tile's dot products run over rows * ceil(Wo/4) tiles).  The slab
# groups are weight_stem's (tuning.STEM_W_TASKS): stem_224's 112 slabs make 16 groups of 7.
# One thread, CPU time, 9 interleaved rounds, load ~8 (`python bench/stem_wgrad_ab.py --sweep
# STEM_WINO_W_ROWS=8,14,16 --rounds 9`): 16.6 / 16.4 / 15.7 ms median, within the noise; 8
# keeps 16 threads' groups equal (7 slabs; 16 rows: 56 slabs, groups of 3 and 4).
STEM_WINO_W_ROWS = 8

# Weight gradient on csrc/rowgemm.h (conv_plan "weight_rowgemm"): filters per task (all of a
# layer's up to this many: every filter panel reuses a pass's x rows from L1, where 16 made
# each task stream x from L3 again, ~1.3x slower) and taps (batch positions) per pass.
# Measured on convt_28's grad_weight only (one thread, CPU time, loaded machine: 6.4-8.1 ms
# against 8.9-9.3 on im2col + OpenBLAS, torch 6.0-6.4; passes of 32-256 within the noise).
# A task runs the kernel rows of one residue mod the stride pass by pass (conv_plan
# plan_weight_rowgemm): 6.21 ms against 6.65 one kernel row per task (`python
# bench/convt_passes.py --threads 1 --clock cpu --passes gw --rounds 9 --sweep
# weight_rowgemm.khs=1,2`, load ~8, torch 6.38).  Not measured in RESULTS.md.
WGRAD_RG_FILTERS = 64
WGRAD_RG_PASS = 64
# weight_polywino (the transposed F(4x4, 2x2) grad_weight of 4x4 stride-2 convs): the images
# whose transformed tiles (V and Z) fit this many bytes go in one group (two parallel loops a
# group), and its GEMMs in tasks of this many columns of the 4 * C8 (no bits follow either).
# convt_28 (941 KB an image), one thread, CPU time, load 7-10 (`python bench/convt_passes.py
# --threads 1 --clock cpu --passes gw --rounds 11 --sweep WGRAD_PW_GROUP_BYTES=...`): groups
# of 1 / 2 / 4 / 8 images 2.79 / 2.76 / 2.99 / 3.43 ms (torch 4.58); columns 32 / 64 / 128
# within 4 %, 64: 50 tasks, even on 2 threads.  RESULTS.md, eleventh session (convtgw11).
WGRAD_PW_GROUP_BYTES = 2 << 20
WGRAD_PW_COLS = 64
# ... on larger teams the group is this many bytes a thread (a core's L2 on Zen 4: the team's
# caches hold the group): convt_28 on 16 threads goes in one group of 8 images, 2 parallel
# regions and the filter transform instead of 8 + 1 (bench/many_core_split.py: 21 % of the team
# lost -> see RESULTS.md twelfth session, helper poly12); and the GEMM columns are halved, down
# to WGRAD_PW_MIN_COLS, where 25 * ceil(4 * C8 / cols) tasks leave more than
# WINOGRAD4_MAX_IDLE of the team idle (conv_plan.wgrad_pw_cols).  Not timed on 16 cores.
WGRAD_PW_THREAD_BYTES = 1 << 20
WGRAD_PW_MIN_COLS = 16

# ----------------------------------------------------------------------------- sub-pixel grad_x
# Strided grad_x (conv_transpose2d's forward) by its output phases as one stride-1 conv, on
# BLAS, where the phases' windows hold at most this fraction more taps than the kernel: 1, the
# kernel a multiple of the stride (dilation 1), so the GEMM has no zero taps.  Zero taps
# (3x3 stride 2: 16 for 9) not measured.
SUBPIXEL_MAX_WASTE = (1, 1)
# GEMM columns (window positions, whole rows of them) per task: the task's slab of grad_y and
# its result stay in L2.  Not measured in RESULTS.md.
SUBPIXEL_POSITIONS = 240
# The shifted layout (float32 on csrc/rowgemm.h, conv_plan.subpixel_shifted): a task's slab and
# result within this many bytes (L2), its columns rounded up to rowgemm's 24-column tile
# (computing a few dropped columns at the tile's speed beats rowgemm's narrow tail).
SUBPIXEL_SHIFT_BYTES = 384 * 1024
SUBPIXEL_TILE = 24
# Taps per rowgemm pass of the shifted layout (its panels' shifted B rows take more of L1):
# 128 and one pass (256) not told apart under load (bench/convt_subpixel_ab.py).
SUBPIXEL_SHIFT_KC = 128

# ----------------------------------------------------------------------------- dot weight gradient
# Dot-product grad_weight (float32, own GEMM) up to this many taps per filter; above, the packed
# GEMM's tile reuses each load more.  RESULTS.md "stem_224: met, and how" (576 taps 6.9 vs 6.2 ms).
DOT_MAX_TAPS = 320
# The same for grouped convs (not depthwise).  RESULTS.md "Other changes measured this session"
# (288 taps: the GEMM stays).
DOT_MAX_TAPS_GROUPED = 160
# Output rows per phase block, and floats of a grad_y row block per tile pass (8 rows of it stay
# in L1 across the taps).  RESULTS.md "Conv plan tuning" / dot rows and passes.
DOT_ROWS = 28
DOT_PASS = 700
# A task's 16-lane partial sums (filters x taps x 16 floats) stay within this many bytes (L2).
# Not measured in RESULTS.md.
DOT_PART_BYTES = 1 << 19
# Tasks per filter chunk: the batch in this many fixed groups (sums added in order, so the
# result does not depend on the thread count).  RESULTS.md "stem_224: met, and how".
DOT_IMAGE_GROUPS = 4
# ... or more, up to the batch, until the layer's 8-filter chunks times the groups give this
# many tasks (lenet_c1's one chunk made 4 tasks: 16 threads three quarters idle).
# RESULTS.md "Many cores: how each conv algorithm splits (issue 16)".
DOT_MIN_TASKS = 32

# weight_direct (conv_plan.plan_weight_direct): the layers it takes.  Measured on LeNet5's
# first layer only (1 -> 6, 5x5, 8x8 maps, batch 64: the backward without grad_x 142 -> ~50 us
# one thread, bench/RESULTS.md "eighth session (helper lenet7)"); the ResNet stem (1 channel,
# 9 taps) stays on the batch path, not measured.
WDIRECT_MAX_CHANNELS = 1
WDIRECT_MIN_TAPS = 25

# direct (conv_plan.plan_direct): the stride-1 forwards it takes -- at most this many input
# channels (each adds KW shifted planes per image; measured on lenet_c1's one only) ...
DIRECT_MAX_CHANNELS = 1
# ... and at most this many taps per filter: the own GEMM's k block (csrc/sgemm.h CK_KC), within
# which its chain is the kernel's, so the plans it replaces keep their bits.
DIRECT_MAX_TAPS = 192
