"""A suite conv layer's forward (and backward) repeated on the cpu backend, for instruction
counts under callgrind: instrumentation starts after 2 warm-up calls.  Compare two checkouts
by Ir per call (PROGRAM TOTALS / calls):

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=cg.out \\
        python bench/conv_instr.py pw_14 [calls] [fwd|bwd] [threads]
        python bench/conv_instr.py 64,16,8,8,16,3,1,1 ...   (N,C,H,W,F,K,stride,pad)
        python bench/conv_instr.py 64,16,8,8,16,3,1,1 40 wgrad 1 cputime

(wgrad: the backward without grad_x; cputime: outside callgrind, thread CPU time per call,
lowest and median of ``calls`` calls.)
    PYTHONPATH=<other checkout> valgrind ... python bench/conv_instr.py pw_14

Instruction counts do not move with the host's load (wall-clock A/B: bench/ab_commits.py).
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import convkit
import convkit.functional as F
from convkit.benchmark.cases import CASES, ConvCase

if "," in sys.argv[1]:
    case = ConvCase("custom", *(int(v) for v in sys.argv[1].split(",")))
else:
    case = {c.name: c for c in CASES}[sys.argv[1]]
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 3
which = sys.argv[3] if len(sys.argv) > 3 else "fwd"
convkit.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
rng = np.random.default_rng(0)
x = rng.standard_normal((case.N, case.C, case.H, case.W)).astype(np.float32)
w = rng.standard_normal((case.F, case.C // case.groups, case.K, case.K)).astype(np.float32)
b = rng.standard_normal(case.F).astype(np.float32)
kw = dict(stride=case.stride, padding=case.pad, groups=case.groups)
with convkit.use_backend("cpu"):
    y = F.conv2d_forward(x, w, b, **kw)
    gy = rng.standard_normal(y.shape).astype(np.float32)

    def run(k):
        for _ in range(k):
            if which == "fwd":
                F.conv2d_forward(x, w, b, **kw)
            else:
                F.conv2d_backward(gy, x, w, needs_input_grad=which != "wgrad", **kw)

    run(2)
    if len(sys.argv) > 5 and sys.argv[5] == "cputime":
        t = []
        for _ in range(calls):
            t0 = time.thread_time()
            run(1)
            t.append((time.thread_time() - t0) * 1e3)
        print(f"{convkit.__file__} {sys.argv[1]} {which}: lowest {min(t):.3f} median "
              f"{statistics.median(t):.3f} ms")
        sys.exit(0)
    try:    # (outside callgrind this finds no process, or no callgrind_control, and does nothing)
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
    except OSError:
        pass
    run(calls)
    try:    # (the interpreter's exit is not counted)
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True)
    except OSError:
        pass
