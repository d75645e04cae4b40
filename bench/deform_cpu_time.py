"""CPU time (not wall time) per call of the cpu deform_conv2d on the bench's deform_conv case,
one thread: a number that the other processes on a busy machine change little, for A/B
decisions between two checkouts.  Alternate checkouts, several rounds each:

    for r in 1 2 3; do for t in <a> <b>; do
        PYTHONPATH=$t python bench/deform_cpu_time.py 60; done; done
"""
import os
import sys
import time

import numpy as np

import convkit as ck
from convkit.benchmark.cases import CASES

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 60
ck.set_num_threads(1)
case = next(c for c in CASES if c.name == "deform_conv")
d = case.inputs(np.random.default_rng(0))
x, off, m, w, b, gy = (d[k] for k in ("x", "offset", "mask", "w", "b", "gy"))
out = {}
with ck.use_backend("cpu"):
    for name, f in (("fwd", lambda: ck.deform_conv2d_forward(x, off, w, b, 1, 1, 1, m)),
                    ("bwd", lambda: ck.deform_conv2d_backward(gy, x, off, w, 1, 1, 1, m))):
        f()
        t = time.process_time()
        for _ in range(calls):
            f()
        out[name] = (time.process_time() - t) / calls * 1e3
load = open("/proc/loadavg").read().split()[0]
print(f"{os.path.dirname(os.path.dirname(ck.__file__))}: fwd {out['fwd']:.3f} ms  "
      f"bwd {out['bwd']:.3f} ms  (CPU time per call, 1 thread; load {load})")
