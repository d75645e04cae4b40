"""A suite row's call (adaptive pooling, training batch norm, a pointwise conv, or a tiny
adaptive pool for the boundary's own cost) repeated on the cpu backend, for instruction counts
under callgrind that do not move with the host's load: instrumentation is switched on after
two warm-up calls and off before exit (callgrind_control), so PROGRAM TOTALS / calls is the
cost of one call.  Compare two checkouts by running it with each on PYTHONPATH:

    PYTHONPATH=<checkout> valgrind --tool=callgrind --instr-atstart=no \\
        --callgrind-out-file=cg.out python bench/suite_instr.py ROW [calls] [threads]
    PYTHONPATH=<checkout> python bench/suite_instr.py ROW [calls] [threads] cputime

ROW: adaptive_avg_head, adaptive_max_head, adaptive_avg_56to7, adaptive_max_56to7 (forward;
a suffix :fb runs forward + backward as the suite does), bn_train[:fb], rpn_cls1x1[:fb],
tiny_avg / tiny_max (a (1, 1, 1, 1) input: boundary and dispatch alone), tiny_avg_hook /
tiny_max_hook (the same through the backend hook, no boundary).  cputime: outside callgrind,
thread CPU time per call (lowest and median of ``calls``; one thread recommended).
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import convkit as ck

row = sys.argv[1] if len(sys.argv) > 1 else "adaptive_avg_head"
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 20
ck.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
name, _, passes = row.partition(":")
fb = passes == "fb"
rng = np.random.default_rng(0)


def _adaptive(kind, shape, o):
    x = rng.standard_normal(shape, dtype=np.float32)
    gy = rng.standard_normal(shape[:2] + (o, o), dtype=np.float32)
    if kind == "max":
        def f():
            _, idx = ck.adaptive_max_pool2d_forward(x, o)
            if fb:
                ck.adaptive_max_pool2d_backward(gy, idx, x.shape)
    else:
        def f():
            ck.adaptive_avg_pool2d_forward(x, o)
            if fb:
                ck.adaptive_avg_pool2d_backward(gy, x.shape)
    return f


def _hook(kind):
    from convkit.cpu import adaptive_pool as AP
    x = np.ones((1, 1, 1, 1), np.float32)
    if kind == "max":
        return lambda: AP.adaptive_max_pool2d_forward(x, (1, 1))
    return lambda: AP.adaptive_avg_pool2d_forward(x, (1, 1))


def _bn():
    x = rng.standard_normal((8, 64, 112, 112), dtype=np.float32)
    gy = rng.standard_normal(x.shape, dtype=np.float32)
    w, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    rm, rv, y = np.zeros(64, np.float32), np.ones(64, np.float32), np.empty_like(x)

    def f():
        _, m, i = ck.batch_norm_forward(x, w, b, rm, rv, True, out=y)
        if fb:
            ck.batch_norm_backward(gy, x, w, m, i, True)
    return f


def _pointwise():
    x = rng.standard_normal((1, 512, 38, 50), dtype=np.float32)
    w = rng.standard_normal((18, 512, 1, 1), dtype=np.float32) * np.float32(0.05)
    b = rng.standard_normal(18, dtype=np.float32)
    gy = rng.standard_normal((1, 18, 38, 50), dtype=np.float32)
    y = np.empty_like(gy)

    def f():
        ck.conv2d_forward(x, w, b, 1, 0, 1, 1, out=y)
        if fb:
            ck.conv2d_backward(gy, x, w, 1, 0, 1, 1, needs_input_grad=True, has_bias=True)
    return f


ROWS = {
    "adaptive_avg_head": lambda: _adaptive("avg", (8, 512, 7, 7), 1),
    "adaptive_max_head": lambda: _adaptive("max", (8, 512, 7, 7), 1),
    "adaptive_avg_56to7": lambda: _adaptive("avg", (8, 64, 56, 56), 7),
    "adaptive_max_56to7": lambda: _adaptive("max", (8, 64, 56, 56), 7),
    "tiny_avg": lambda: _adaptive("avg", (1, 1, 1, 1), 1),
    "tiny_max": lambda: _adaptive("max", (1, 1, 1, 1), 1),
    "tiny_avg_hook": lambda: _hook("avg"),
    "tiny_max_hook": lambda: _hook("max"),
    "bn_train": _bn,
    "rpn_cls1x1": _pointwise,
}
f = ROWS[name]()
f()
f()
if len(sys.argv) > 4 and sys.argv[4] == "cputime":
    t = []
    for _ in range(calls):
        t0 = time.thread_time()
        f()
        t.append((time.thread_time() - t0) * 1e6)
    print(f"{ck.__file__} {row}: lowest {min(t):.1f} median {statistics.median(t):.1f} us")
    sys.exit(0)
try:    # (outside callgrind this finds no process, or no callgrind_control, and does nothing)
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
except OSError:
    pass
for _ in range(calls):
    f()
try:    # (the interpreter's exit is not counted)
    subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True)
except OSError:
    pass
