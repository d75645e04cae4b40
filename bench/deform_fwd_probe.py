"""Minor page faults and CPU time per call of the cpu deform_conv2d on the bench's deform_conv
case (after warm-up calls), and the CPU time of the cpu op's parts called alone: the
channels-last copy, the table + columns, the GEMMs.  For A/B decisions between checkouts
under load (CPU time moves less than wall time on a busy machine):

    PYTHONPATH=<checkout> python bench/deform_fwd_probe.py [calls] [threads]
"""
import os
import resource
import sys
import time

import numpy as np

import convkit as ck
from convkit.benchmark.cases import CASES

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 40
ck.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
case = next(c for c in CASES if c.name == "deform_conv")
d = case.inputs(np.random.default_rng(0))
x, off, m, w, b, gy = (d[k] for k in ("x", "offset", "mask", "w", "b", "gy"))


def probe(name, f):
    for _ in range(3):
        f()
    flt, cpu, wall = [], [], []
    for _ in range(calls):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.process_time(), time.perf_counter()
        f()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
        flt.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    print(f"{name:8s} faults/call median {int(np.median(flt)):5d}"
          f"  CPU {np.median(cpu) * 1e3:7.3f} ms"
          f"  wall min {min(wall) * 1e3:7.3f} ms")


with ck.use_backend("cpu"):
    probe("fwd", lambda: ck.deform_conv2d_forward(x, off, w, b, 1, 1, 1, m))
    probe("bwd", lambda: ck.deform_conv2d_backward(gy, x, off, w, 1, 1, 1, m))
print(f"{os.path.dirname(os.path.dirname(ck.__file__))}; threads {ck.get_num_threads()}; "
      f"load {open('/proc/loadavg').read().split()[0]}")
