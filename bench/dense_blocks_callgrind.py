"""Instructions of the dense conv path with the two GEMM row splits (bench/dense_blocks_ab.py
times them): LeNet5's conv2 and the small ResNet's 2x2 layer at batch 64 and 128, forward and
backward, ``reps`` times each.  The per-call difference is the difference of two runs' totals
(1 and 11 reps) divided by 10, so imports and warm-up cancel:

    for v in blocks4 perthread; do for r in 1 11; do CONVKIT_NUM_THREADS=2 valgrind \\
      --tool=callgrind --callgrind-out-file=cg_$v_$r.out python bench/dense_blocks_callgrind.py \\
      $v 2 $r; done; done      # then callgrind_annotate cg_*.out | grep "PROGRAM TOTALS"
"""
import sys

import numpy as np

import convkit
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning as T

convkit.set_num_threads(int(sys.argv[2]))
orig = P.dense_params
if sys.argv[1] == "blocks4":        # the split before: BLAS's tuning.BATCH_BLOCKS blocks
    P.dense_params = lambda own, fixed=False: {**orig(own, fixed), "row_blocks": T.BATCH_BLOCKS}
rng = np.random.default_rng(0)
for C, H, F, K, pad in ((6, 4, 16, 5, 2), (64, 2, 64, 3, 1)):
    for N in (64, 128):
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((F, C, K, K)) * 0.1).astype(np.float32)
        g = rng.standard_normal((N, F, H, H)).astype(np.float32)
        for _ in range(int(sys.argv[3])):
            w[0, 0, 0, 0] += np.float32(1e-3)      # a training step's new weight
            convkit.conv2d_forward(x, w, None, 1, pad)
            convkit.conv2d_backward(g, x, w, 1, pad)
