"""Instruction counts of the cpu deform_conv2d on the bench's deform_conv case, one thread;
instrumentation is switched on only around the counted calls (after one untimed call):

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=cg.out \\
        python bench/deform_callgrind.py fwd 3        # or bwd
    callgrind_annotate cg.out | head -30
"""
import os
import subprocess
import sys

import numpy as np

import convkit as ck
from convkit.benchmark.cases import CASES

which = sys.argv[1] if len(sys.argv) > 1 else "fwd"
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 3
ck.set_num_threads(1)
case = next(c for c in CASES if c.name == "deform_conv")
d = case.inputs(np.random.default_rng(0))
x, off, m, w, b, gy = (d[k] for k in ("x", "offset", "mask", "w", "b", "gy"))


def run():
    if which == "fwd":
        ck.deform_conv2d_forward(x, off, w, b, 1, 1, 1, m)
    else:
        ck.deform_conv2d_backward(gy, x, off, w, 1, 1, 1, m)


def instrument(on):
    try:    # (outside callgrind this finds no process and does nothing)
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                       capture_output=True)
    except OSError:
        pass


with ck.use_backend("cpu"):
    run()
    instrument(True)
    for _ in range(calls):
        run()
    instrument(False)
