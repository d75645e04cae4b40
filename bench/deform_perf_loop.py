"""A loop of cpu deform_conv2d forward + backward calls on bench's deform_conv case, one thread,
for a sampling profiler (the shares quoted in RESULTS.md's deform7 section):

    perf record -e cpu-clock --call-graph dwarf,8192 -F 1500 python bench/deform_perf_loop.py 60
    perf report --stdio --children -g none | grep -i deform
"""
import sys

import numpy as np

import convkit as ck
from convkit.benchmark.cases import CASES

ck.set_num_threads(1)
case = next(c for c in CASES if c.name == "deform_conv")
d = case.inputs(np.random.default_rng(0))
x, off, m, w, b, gy = (d[k] for k in ("x", "offset", "mask", "w", "b", "gy"))
with ck.use_backend("cpu"):
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 60):
        ck.deform_conv2d_forward(x, off, w, b, 1, 1, 1, m)
        ck.deform_conv2d_backward(gy, x, off, w, 1, 1, 1, m)
