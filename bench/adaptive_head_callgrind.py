"""One adaptive_avg_head forward (8x512x7x7 -> 1x1, float32) repeated, for callgrind's
instruction counts of the whole call against its kernel (issue 16: the suite's row at ~1x).

    CONVKIT_NUM_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \\
        --toggle-collect='*adaptive_avg_pool2d_forward*' python bench/adaptive_head_callgrind.py
    callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep -E 'ck_run_sum|global_avg|TOTAL'

CALLS (environment, default 200) calls after one warm-up call.
"""
import os

import numpy as np

import convkit

x = np.random.default_rng(0).standard_normal((8, 512, 7, 7)).astype(np.float32)
convkit.adaptive_avg_pool2d_forward(x, 1)
for _ in range(int(os.environ.get("CALLS", "200"))):
    convkit.adaptive_avg_pool2d_forward(x, 1)
