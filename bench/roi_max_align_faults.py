"""Minor page faults per call of roi_max_align and roi_align (cpu, float32) on the suite's RoI
case, forward, backward and forward + backward as ``convkit bench`` calls them -- a count a
loaded machine does not distort:

    [CALLS=9] python bench/roi_max_align_faults.py [threads] [--mallopt]

Each line: the op, then the faults of each of CALLS calls (the first ones warm the
allocator; the steady state is the last few).  Without ``--mallopt`` glibc's default, dynamic
thresholds apply (what a user's process gets); with it, convkit bench's 1 GiB thresholds.
"""
from __future__ import annotations

import os
import resource
import sys

import numpy as np

import convkit
import convkit.functional as ck
from convkit.benchmark import set_mallopt
from convkit.benchmark.cases import CASES


def _faults(fn, n=int(os.environ.get("CALLS", 9))):
    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        r = fn()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        del r
    return out


def main(argv):
    if "--mallopt" in argv:
        print(set_mallopt())
    args = [a for a in argv if not a.startswith("--")]
    if args:
        convkit.set_num_threads(int(args[0]))
    c = next(c for c in CASES if c.name == "roi_align")
    d = c.inputs(np.random.default_rng(0))
    x, rois, gy = d["x"], d["rois"], d["gy"]
    o, sc, sr = c.out, c.scale, c.sampling_ratio
    y = np.empty(c.out_shape, np.float32)
    _, am = ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")

    def max_fb():
        _, a = ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")
        return ck.roi_max_align_backward(gy, a, rois, x.shape, o, sc, sr, False, backend="cpu")

    def align_fb():
        ck.roi_align_forward(x, rois, o, sc, sr, False, out=y, backend="cpu")
        return ck.roi_align_backward(gy, rois, x.shape, o, sc, sr, False, backend="cpu")

    ops = {
        "max_align fwd": lambda: ck.roi_max_align_forward(x, rois, o, sc, sr, False,
                                                          backend="cpu"),
        "align fwd (out=y)": lambda: ck.roi_align_forward(x, rois, o, sc, sr, False, out=y,
                                                          backend="cpu"),
        "align fwd": lambda: ck.roi_align_forward(x, rois, o, sc, sr, False, backend="cpu"),
        "max_align bwd": lambda: ck.roi_max_align_backward(gy, am, rois, x.shape, o, sc, sr,
                                                           False, backend="cpu"),
        "align bwd": lambda: ck.roi_align_backward(gy, rois, x.shape, o, sc, sr, False,
                                                   backend="cpu"),
        "max_align fwd+bwd": max_fb,
        "align fwd+bwd": align_fb,
    }
    print(f"argmax {am.dtype} ({am.nbytes / 1e6:.1f} MB), y {y.nbytes / 1e6:.1f} MB, "
          f"grad_x {x.nbytes / 1e6:.1f} MB")
    for name, fn in ops.items():
        print(f"{name:20s} faults per call: {' '.join(str(f) for f in _faults(fn))}")


if __name__ == "__main__":
    main(sys.argv[1:])
