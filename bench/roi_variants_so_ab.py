"""Two builds of convkit/cpu/_roi_variants (two .so files) in one process, interleaved call by
call on the suite's RoI case: roi_max_align forward and backward (sampling_ratio 2, its int8
argmax) through the cpu wrappers with one build swapped in, then the other; medians, and
whether both builds give the same bits.

    CONVKIT_NUM_THREADS=1 python bench/roi_variants_so_ab.py A.so B.so [rounds]

(copy each build's convkit/cpu/_roi_variants*.so aside after building it; one thread: each
call's thread CPU time, which time spent waiting for a core on a loaded machine does not
inflate; else wall time)
"""
from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np

import convkit as ck
import convkit.cpu.roi_variants as cpu_rv
from roi_max_align_bytes import case, loadavg      # bench/ is the script's directory


def _load(path):
    spec = importlib.util.spec_from_file_location("convkit.cpu._roi_variants", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def main(argv):
    mods = {p: _load(p) for p in argv[:2]}
    rounds = int(argv[2]) if len(argv) > 2 else 9
    x, rois, gy, o, sc, sr = case()
    outs = {}

    def run(m, p):
        cpu_rv._roi_variants = m
        y, am = ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")
        if p == "fwd":
            return y, am
        return (ck.roi_max_align_backward(gy, am, rois, x.shape, o, sc, sr, False,
                                          backend="cpu"),)

    for name, m in mods.items():
        outs[name] = run(m, "fwd") + run(m, "bwd")
    a, b = outs.values()
    print("same bits:", all(u.tobytes() == v.tobytes() for u, v in zip(a, b)))
    clock = time.thread_time if ck.get_num_threads() == 1 else time.perf_counter
    _, am = ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")
    ts = {(n, p): [] for n in mods for p in ("fwd", "bwd")}
    for _ in range(rounds):
        for n, m in mods.items():
            cpu_rv._roi_variants = m
            t0 = clock()
            ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")
            t1 = clock()
            ck.roi_max_align_backward(gy, am, rois, x.shape, o, sc, sr, False, backend="cpu")
            t2 = clock()
            ts[(n, "fwd")].append(t1 - t0)
            ts[(n, "bwd")].append(t2 - t1)
    print(f"threads: {ck.get_num_threads()}, medians of {rounds} ({clock.__name__})")
    for (n, p), v in ts.items():
        print(f"{n:30s} {p}  {np.median(v) * 1e3:8.2f} ms  (min {min(v) * 1e3:.2f})")
    loadavg()


if __name__ == "__main__":
    main(sys.argv[1:])
