"""A suite layer's packed F(4x4) forward for callgrind, with mixed edge tiles (MIX 1) or every
tile by F(4x4) (0), CALLS calls, one thread:

    CONVKIT_NUM_THREADS=1 valgrind --tool=callgrind --toggle-collect='*conv2d_forward_winograd*' \\
        python bench/wino_mix_instr.py res_14 MIX CALLS
"""
import sys, numpy as np, convkit
from convkit.cpu import _conv_winograd as wg
from convkit.benchmark.cases import CASES
convkit.set_num_threads(1)
c = {c.name: c for c in CASES}[sys.argv[1]]
if hasattr(wg, "winograd4_mix_edges"):    # (absent before: a checkout without it runs as MIX 0)
    wg.winograd4_mix_edges(sys.argv[2] == "1")
rng = np.random.default_rng(0)
x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
for _ in range(int(sys.argv[3])): convkit.conv2d_forward(x, w, None, stride=1, padding=1)
