"""Where the bench's deform_conv case spends its time: numpy reference (BLAS pinned to one
thread, as the bench runs it) and cpu forward / backward, min and median of interleaved calls.
python bench/deform_split.py [rounds] [threads] [--cpu] [--free] [--process-time]
--cpu: the cpu calls only; --free: the reference also with BLAS's threads free (as the bench
ran it before its numpy runner pinned BLAS); --process-time: the process's CPU time instead
of the wall clock (with one thread on a busy machine: the time the calls computed, not the
time they waited for a core; with more threads, or BLAS free, it counts spinning too)."""
import contextlib
import statistics
import sys
import time

import numpy as np

import convkit as ck
from convkit._config import blas_single_thread
from convkit.benchmark.cases import CASES

args = [a for a in sys.argv[1:] if not a.startswith("--")]
rounds = int(args[0]) if args else 9
if len(args) > 1:
    ck.set_num_threads(int(args[1]))
case = next(c for c in CASES if c.name == "deform_conv")
d = case.inputs(np.random.default_rng(0))
x, off, m, w, b, gy = (d[k] for k in ("x", "offset", "mask", "w", "b", "gy"))


def _call(backend, forward, backward, pin):
    def f():
        with ck.use_backend(backend), (blas_single_thread if pin else contextlib.nullcontext()):
            if forward:
                ck.deform_conv2d_forward(x, off, w, b, 1, 1, 1, m)
            if backward:
                ck.deform_conv2d_backward(gy, x, off, w, 1, 1, 1, m)
    return f


fns = {"ref fwd": _call("numpy", True, False, True),
       "ref fwd+bwd": _call("numpy", True, True, True),
       "cpu fwd": _call("cpu", True, False, False), "cpu bwd": _call("cpu", False, True, False)}
if "--free" in sys.argv:
    fns.update({"ref fwd free": _call("numpy", True, False, False),
                "ref f+b free": _call("numpy", True, True, False)})
if "--cpu" in sys.argv:
    fns = {k: v for k, v in fns.items() if k.startswith("cpu")}
clock = time.process_time if "--process-time" in sys.argv else time.perf_counter
times = {k: [] for k in fns}
for f in fns.values():
    f()
for _ in range(rounds):
    for k, f in fns.items():
        t = clock()
        f()
        times[k].append((clock() - t) * 1e3)
for k, v in times.items():
    print(f"{k:12s} min {min(v):8.2f} ms  median {statistics.median(v):8.2f} ms")
if "ref fwd" in times:
    rf, rfb = min(times["ref fwd"]), min(times["ref fwd+bwd"])
    cf, cb = min(times["cpu fwd"]), min(times["cpu bwd"])
    print(f"ratios of minima: fwd {rf / cf:.1f}  fwd+bwd {rfb / (cf + cb):.1f}")
if "ref fwd free" in times:
    for a, f in (("ref fwd", "ref fwd free"), ("ref fwd+bwd", "ref f+b free")):
        med = statistics.median(times[a]) / statistics.median(times[f])
        print(f"{a}: pinned / free, medians {med:.3f}, minima {min(times[a]) / min(times[f]):.3f}")
print("load", open("/proc/loadavg").read().split()[:3], "threads", ck.get_num_threads())
