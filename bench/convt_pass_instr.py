"""One pass of conv_transpose2d on the suite's convt_28 (cpu, float32), repeated, for callgrind
instruction counts per pass, or one-thread CPU time per pass:

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=cg.out \\
        python bench/convt_pass_instr.py fwd|gx|gw [calls]
    python bench/convt_pass_instr.py gx 20 cputime     (least and median thread CPU time)

The passes as bench/convt_passes.py runs them: fwd = conv_transpose2d_forward, gx = the
adjoint conv's forward on grad_y (conv2d_forward), gw = its grad_weight (conv2d_backward with
no grad_x / grad_bias).  One thread (PASS_THREADS=2 ... for a team: with callgrind's
--separate-threads=yes, each thread's instructions); instrumentation starts after 2 warm-up
calls.  CONVKIT_DISABLE_AVX512=1 picks the AVX2 stack.
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc

which = sys.argv[1]
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 3
convkit.set_num_threads(int(os.environ.get("PASS_THREADS", "1")))
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
w = (rng.standard_normal((64, 32, 4, 4)) * 0.05).astype(np.float32)
b = rng.standard_normal(32).astype(np.float32)
s, p = 2, 1
y = convkit.conv_transpose2d_forward(x, w, b, s, p, 0)
gy = rng.standard_normal(y.shape).astype(np.float32)
pad4 = (p, p, p, p)
run1 = {"fwd": lambda: convkit.conv_transpose2d_forward(x, w, b, s, p, 0),
        "gx": lambda: cc.conv2d_forward(gy, w, None, (s, s), pad4, (1, 1), 1),
        "gw": lambda: cc.conv2d_backward(x, gy, w, (s, s), pad4, (1, 1), 1, False, False)}[which]
run1()
run1()
if len(sys.argv) > 3 and sys.argv[3] == "cputime":
    t = []
    for _ in range(calls):
        t0 = time.thread_time()
        run1()
        t.append((time.thread_time() - t0) * 1e3)
    print(f"{which}: lowest {min(t):.3f} median {statistics.median(t):.3f} ms")
    sys.exit(0)
try:
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
except OSError:
    pass
for _ in range(calls):
    run1()
try:
    subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True)
except OSError:
    pass
