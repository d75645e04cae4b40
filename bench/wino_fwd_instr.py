"""res_14-style forward calls for callgrind: the packed F(4x4) forward with the last tile rows
apart (APART 1) or not (0), CALLS calls, one thread.  The difference of two runs' totals (1 and
3 calls) is two calls' instructions:

    CONVKIT_DISABLE_AVX512=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/wino_fwd_instr.py res_14 APART CALLS
"""
import sys, numpy as np, convkit
from convkit.cpu import _conv_winograd as wg
from convkit.benchmark.cases import CASES
convkit.set_num_threads(1)
c = {c.name: c for c in CASES}[sys.argv[1]]; wg.winograd4_last_apart(sys.argv[2] == "1")
rng = np.random.default_rng(0)
x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
for _ in range(int(sys.argv[3])): convkit.conv2d_forward(x, w, None, stride=1, padding=1)
