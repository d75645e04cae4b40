"""What roi_max_align costs against roi_align on the suite's RoI case (cpu, float32), measured
in ways a loaded machine distorts little:

    CONVKIT_NUM_THREADS=1 python bench/roi_max_align_cost.py cpu [rounds]
        each op's least thread CPU time over ``rounds`` interleaved calls (one thread: the
        work runs on the calling thread, so time spent waiting for a core is not counted),
        and the ratios roi_max_align / roi_align for forward, backward and both;
    CONVKIT_NUM_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \\
        --callgrind-out-file=cg.out python bench/roi_max_align_cost.py callgrind OP
        instructions of one call of OP (align_f, max_f, align_b, max_b, pool_f, avg_f,
        pool_b, avg_b, psa_f, psa_b, psp_f, psp_b) after an untimed one:
        ``callgrind_annotate cg.out | head``.
The ps ops run on the ps case (convkit/benchmark/cases.py, PsRoiCase), the rest on roi_align's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

import convkit.functional as ck
from convkit.benchmark import set_mallopt
from convkit.benchmark.cases import CASES


def _ops():
    cases = {c.name: c for c in CASES}
    c = cases["roi_align"]
    d = c.inputs(np.random.default_rng(0))
    x, rois, gy = d["x"], d["rois"], d["gy"]
    o, sc, sr = c.out, c.scale, c.sampling_ratio
    y = np.empty(c.out_shape, np.float32)
    _, am = ck.roi_max_align_forward(x, rois, o, sc, sr, False)
    _, pam = ck.roi_pool_forward(x, rois, o, sc)
    p = cases["ps_roi_align"]
    pd = p.inputs(np.random.default_rng(1))
    xp, rp, gp = pd["x"], pd["rois"], pd["gy"]
    return {
        "align_f": lambda: ck.roi_align_forward(x, rois, o, sc, sr, False, out=y),
        "max_f": lambda: ck.roi_max_align_forward(x, rois, o, sc, sr, False),
        "align_b": lambda: ck.roi_align_backward(gy, rois, x.shape, o, sc, sr, False),
        "max_b": lambda: ck.roi_max_align_backward(gy, am, rois, x.shape, o, sc, sr, False),
        "pool_f": lambda: ck.roi_pool_forward(x, rois, o, sc, out=y),
        "avg_f": lambda: ck.roi_avg_pool_forward(x, rois, o, sc),
        "pool_b": lambda: ck.roi_pool_backward(gy, pam, x.shape, rois=rois),
        "avg_b": lambda: ck.roi_avg_pool_backward(gy, rois, x.shape, o, sc),
        "psa_f": lambda: ck.ps_roi_align_forward(xp, rp, o, sc, sr),
        "psa_b": lambda: ck.ps_roi_align_backward(gp, rp, xp.shape, o, sc, sr),
        "psp_f": lambda: ck.ps_roi_pool_forward(xp, rp, o, sc),
        "psp_b": lambda: ck.ps_roi_pool_backward(gp, rp, xp.shape, o, sc),
    }


def _callgrind(op):
    f = _ops()[op]
    f()
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
    f()
    subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True)


def _cpu(rounds):
    print(set_mallopt())
    fns = {k: v for k, v in _ops().items() if k in ("align_f", "max_f", "align_b", "max_b")}
    ts = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.thread_time()
            f()
            ts[k].append(time.thread_time() - t)
    m = {k: min(v) for k, v in ts.items()}
    print(" ".join(f"{k} {1e3 * v:.2f} ms" for k, v in m.items()))
    print(f"max_align / align: fwd {m['max_f'] / m['align_f']:.2f}  "
          f"bwd {m['max_b'] / m['align_b']:.2f}  "
          f"fwd+bwd {(m['max_f'] + m['max_b']) / (m['align_f'] + m['align_b']):.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["callgrind"]:
        _callgrind(sys.argv[2])
    else:
        _cpu(int(sys.argv[2]) if len(sys.argv) > 2 else 15)
