"""Per-call cost of each layer of an op's call path on the cpu backend (issue 16: the Python
overhead of small ops): the public op (convkit.functional, through its device wrapper), the
Backend object's public op, the cpu module's hook (convkit/cpu/<family>.py, normalised
arguments, no checks) and, where it is cheap to reach, the compiled kernel alone.  The layers
of one row are timed interleaved (each rep times every layer once), us per call.

    PYTHONPATH=<checkout> python bench/call_overhead.py [--rows tiny_avg,head_avg,...]
        [--calls 2000] [--reps 7] [--threads 1] [--clock process|wall]

Instruction counts of one layer (repeatable under load; callgrind is switched on after two
warm-up calls and off before exit, so PROGRAM TOTALS / calls is one call's count):

    PYTHONPATH=<checkout> valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file=cg.out python bench/call_overhead.py --instr ROW:LAYER --calls 200
    callgrind_annotate cg.out | grep "PROGRAM TOTALS"

--threads 0 leaves convkit's default thread count (the environment, as the suite runs).

--clock process (default): process CPU time (time.process_time); with --threads 1 it counts
no spinning OpenMP team and moves little with the host's load.  Prints per row and layer the
lowest and the median over reps; "python" = public op - kernel (or - hook where no kernel
layer), an indication of what the Python layers cost.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import convkit as ck
from convkit.cpu import (_adaptive_pool, _batchnorm, _pool, adaptive_pool as AP, batchnorm as BN,
                         conv as CV, pool as PL)

ap = argparse.ArgumentParser()
ap.add_argument("--rows", default="")
ap.add_argument("--calls", type=int, default=2000)
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--threads", type=int, default=1)   # 0: leave the default (environment)
ap.add_argument("--instr", default="", help="ROW:LAYER: run only it, for callgrind")
ap.add_argument("--clock", choices=("process", "wall"), default="process")
args = ap.parse_args()
if args.threads:
    ck.set_num_threads(args.threads)
clock = time.process_time if args.clock == "process" else time.perf_counter
be = ck.get_backend("cpu")
rng = np.random.default_rng(0)
f32 = np.float32


def rnd(*shape):
    return rng.standard_normal(shape, dtype=f32)


def conv_row(N, C, H, W, F, K, s, p):
    x, w, b = rnd(N, C, H, W), rnd(F, C, K, K), rnd(F)
    args5 = ((s, s), (p, p, p, p), (1, 1), 1)
    sh, Ho, Wo, plan = CV._plan(x, w, *args5)
    y = np.empty((N, F, Ho, Wo), f32)
    step = plan.forward
    run = CV._FORWARD[step.algo]
    return {
        "public": lambda: ck.conv2d_forward(x, w, b, s, p),
        "backend": lambda: be.conv2d_forward(x, w, b, s, p),
        "hook": lambda: CV.conv2d_forward(x, w, b, *args5),
        "runner": lambda: run(x, w, b, True, y, sh, step),
    }


def conv_bwd_row(N, C, H, W, F, K, s, p):
    x, w = rnd(N, C, H, W), rnd(F, C, K, K)
    args5 = ((s, s), (p, p, p, p), (1, 1), 1)
    _, Ho, Wo, _ = CV._plan(x, w, *args5)
    gy = rnd(N, F, Ho, Wo)
    return {
        "public": lambda: ck.conv2d_backward(gy, x, w, s, p),
        "backend": lambda: be.conv2d_backward(gy, x, w, s, p),
        "hook": lambda: CV.conv2d_backward(gy, x, w, *args5, True, True),
    }


def adaptive_avg_row(shape, o):
    x = rnd(*shape)
    P = shape[0] * shape[1]
    xr, y = x.reshape(P, -1), np.empty(P, f32)
    r = {
        "public": lambda: ck.adaptive_avg_pool2d_forward(x, o),
        "backend": lambda: be.adaptive_avg_pool2d_forward(x, o),
        "hook": lambda: AP.adaptive_avg_pool2d_forward(x, (o, o)),
    }
    if o == 1:
        nt = PL._threads(P, x.size)
        r["kernel"] = lambda: _adaptive_pool.global_avg_forward(xr, y, nt)
    return r


def adaptive_avg_bwd_row(shape, o):
    gy = rnd(shape[0], shape[1], o, o)
    return {
        "public": lambda: ck.adaptive_avg_pool2d_backward(gy, shape),
        "backend": lambda: be.adaptive_avg_pool2d_backward(gy, shape),
        "hook": lambda: AP.adaptive_avg_pool2d_backward(gy, shape),
    }


def adaptive_max_row(shape, o):
    x = rnd(*shape)
    return {
        "public": lambda: ck.adaptive_max_pool2d_forward(x, o),
        "backend": lambda: be.adaptive_max_pool2d_forward(x, o),
        "hook": lambda: AP.adaptive_max_pool2d_forward(x, (o, o)),
    }


def adaptive_max_bwd_row(shape, o):
    x = rnd(*shape)
    _, idx = ck.adaptive_max_pool2d_forward(x, o)
    gy = rnd(*idx.shape)
    return {
        "public": lambda: ck.adaptive_max_pool2d_backward(gy, idx, shape),
        "backend": lambda: be.adaptive_max_pool2d_backward(gy, idx, shape),
        "hook": lambda: AP.adaptive_max_pool2d_backward(gy, idx, shape),
    }


def max_pool_row(shape, k, s, p):
    x = rnd(*shape)
    N, C, H, W = shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return {
        "public": lambda: ck.max_pool2d_forward(x, k, s, p),
        "backend": lambda: be.max_pool2d_forward(x, k, s, p),
        "hook": lambda: PL.max_pool2d_forward(x, (k, k), (s, s), (p, p), (1, 1), (Ho, Wo)),
    }


def max_pool_bwd_row(shape, k, s, p):
    x = rnd(*shape)
    y, idx = ck.max_pool2d_forward(x, k, s, p)
    gy = rnd(*y.shape)
    return {
        "public": lambda: ck.max_pool2d_backward(gy, idx, shape),
        "backend": lambda: be.max_pool2d_backward(gy, idx, shape),
        "hook": lambda: PL.max_pool2d_backward(gy, idx, shape),
    }


def avg_pool_row(shape, k, s, p):
    x = rnd(*shape)
    N, C, H, W = shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return {
        "public": lambda: ck.avg_pool2d_forward(x, k, s, p),
        "backend": lambda: be.avg_pool2d_forward(x, k, s, p),
        "hook": lambda: PL.avg_pool2d_forward(x, (k, k), (s, s), (p, p), (Ho, Wo), True),
    }


def bn_row(shape):
    x = rnd(*shape)
    C = shape[1]
    w, b, rm, rv = rnd(C), rnd(C), np.zeros(C, f32), np.ones(C, f32)
    return {
        "public": lambda: ck.batch_norm_forward(x, w, b, rm, rv, True),
        "backend": lambda: be.batch_norm_forward(x, w, b, rm, rv, True),
        "hook": lambda: BN.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5),
    }


def bn_bwd_row(shape):
    x = rnd(*shape)
    C = shape[1]
    w, b, rm, rv = rnd(C), rnd(C), np.zeros(C, f32), np.ones(C, f32)
    _, sm, si = ck.batch_norm_forward(x, w, b, rm, rv, True)
    gy = rnd(*shape)
    return {
        "public": lambda: ck.batch_norm_backward(gy, x, w, sm, si, True),
        "backend": lambda: be.batch_norm_backward(gy, x, w, sm, si, True),
        "hook": lambda: BN.batch_norm_backward(gy, x, w, sm, si, True),
    }


ONE = (1, 1, 1, 1)
ROWS = {
    "tiny_avg": lambda: adaptive_avg_row(ONE, 1),
    "tiny_max": lambda: adaptive_max_row(ONE, 1),
    "tiny_maxpool": lambda: max_pool_row(ONE, 1, 1, 0),
    "tiny_conv": lambda: conv_row(1, 1, 1, 1, 1, 1, 1, 0),
    "tiny_conv_bwd": lambda: conv_bwd_row(1, 1, 1, 1, 1, 1, 1, 0),
    "head_avg": lambda: adaptive_avg_row((8, 512, 7, 7), 1),
    "head_avg_bwd": lambda: adaptive_avg_bwd_row((8, 512, 7, 7), 1),
    "head_max": lambda: adaptive_max_row((8, 512, 7, 7), 1),
    "head_max_bwd": lambda: adaptive_max_bwd_row((8, 512, 7, 7), 1),
    "maxpool_small": lambda: max_pool_row((1, 16, 8, 8), 3, 2, 1),
    "maxpool_small_bwd": lambda: max_pool_bwd_row((1, 16, 8, 8), 3, 2, 1),
    "avgpool_small": lambda: avg_pool_row((1, 16, 8, 8), 2, 2, 0),
    "bn_small": lambda: bn_row((1, 16, 8, 8)),
    "bn_small_bwd": lambda: bn_bwd_row((1, 16, 8, 8)),
    "conv_small": lambda: conv_row(1, 16, 8, 8, 16, 3, 1, 1),
    "conv_small_bwd": lambda: conv_bwd_row(1, 16, 8, 8, 16, 3, 1, 1),
}
names = args.rows.split(",") if args.rows else list(ROWS)

if args.instr:
    row, _, layer = args.instr.partition(":")
    f = ROWS[row]()[layer or "public"]
    f(), f()
    try:    # (outside callgrind: no such process, and nothing happens)
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
    except OSError:
        pass
    for _ in range(args.calls):
        f()
    try:
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True)
    except OSError:
        pass
    sys.exit(0)


def per_call(f, n):
    t = clock()
    for _ in range(n):
        f()
    return (clock() - t) / n * 1e6


print(f"# call_overhead: clock={args.clock} threads={args.threads} calls={args.calls} "
      f"reps={args.reps}; us per call, lowest / median over reps")
print(f"{'row':20s} " + " ".join(f"{k:>15s}" for k in ("public", "backend", "hook", "kernel"))
      + f" {'python':>8s}")
for name in names:
    layers = ROWS[name]()
    for f in layers.values():
        f(), f()
    times = {k: [] for k in layers}
    for _ in range(args.reps):
        for k, f in layers.items():
            times[k].append(per_call(f, args.calls))
    lo = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    cells = []
    for k in ("public", "backend", "hook", "kernel"):
        kk = "runner" if k == "kernel" and "runner" in lo else k
        cells.append(f"{lo[kk]:6.2f} / {med[kk]:6.2f}" if kk in lo else f"{'-':>15s}")
    base = lo.get("kernel", lo.get("runner", lo["hook"]))
    print(f"{name:20s} " + " ".join(cells) + f" {lo['public'] - base:8.2f}")
    sys.stdout.flush()
