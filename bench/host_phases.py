"""Does the host's slow phase hit convkit and torch alike?  Samples, block after block: convt_28's
forward+backward on convkit's cpu backend (median of --calls calls, and the process's CPU time
over wall time), then torch's (same), then each CPU's GEMM rate pinned to it (the median of
core_probe's rounds, not its best: the best hides a vCPU taken away part of the time), then
bench/host_gaps.c's lost wall clock per CPU, and the GB/s of copying a 64 MB buffer (memory)
and a 4 MB one (L3) on the process's threads (numpy, one thread), and bench/host_pingpong.c's
round trip of a cache line between CPU 0 and CPU 1.  Prints one line a block, then the medians of the
blocks where convkit ran within 25 % of its fastest block ("fast") and the others ("slow").

    gcc -O2 -o /tmp/host_gaps bench/host_gaps.c -lpthread
    gcc -O2 -o /tmp/host_pingpong bench/host_pingpong.c -lpthread
    python bench/host_phases.py [--blocks 40] [--calls 5] [--gaps /tmp/host_gaps] [--no-torch]

Run it with nothing else on the machine: anything else running is a "phase" too.
"""
import argparse
import os
import re
import statistics
import subprocess
import time

import numpy as np

import convkit
from convkit.benchmark.timing import set_mallopt


def _gemm_rate(calls=20, rounds=5):
    """Median GFLOP/s of the one-core probe's GEMM on the calling thread's CPU."""
    from convkit.benchmark.probe import core_probe
    return core_probe(rounds=1, calls=calls) if rounds == 1 else statistics.median(
        core_probe(rounds=1, calls=calls) for _ in range(rounds))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--gaps", default="/tmp/host_gaps")
    ap.add_argument("--pingpong", default="/tmp/host_pingpong")
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    set_mallopt()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 4, 4)) / 16).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)

    def ours():
        convkit.conv_transpose2d_forward(x, w, b, stride=2, padding=1)
        convkit.conv_transpose2d_backward(gy, x, w, stride=2, padding=1)

    sides = [("convkit", ours)]
    if not a.no_torch:
        import torch
        torch.set_num_threads(convkit.get_num_threads())
        tx, tw, tb = (torch.from_numpy(v).requires_grad_() for v in (x, w, b))
        tg = torch.from_numpy(gy)
        sides.append(("torch", lambda: torch.autograd.grad(
            torch.nn.functional.conv_transpose2d(tx, tw, tb, 2, 1), [tx, tw, tb], tg)))

    def timed(f):
        f()
        v, c0 = [], time.process_time()
        for _ in range(a.calls):
            t = time.perf_counter()
            f()
            v.append(time.perf_counter() - t)
        return statistics.median(v) * 1e3, (time.process_time() - c0) / sum(v)

    big, small = np.ones(16 << 20, np.float32), np.ones(1 << 20, np.float32)
    big2, small2 = np.empty_like(big), np.empty_like(small)

    def copy_rate(src, dst, reps):
        np.copyto(dst, src)
        t = time.perf_counter()
        for _ in range(reps):
            np.copyto(dst, src)
        return 2 * src.nbytes * reps / (time.perf_counter() - t) / 1e9

    rows = []
    cpus = sorted(os.sched_getaffinity(0))
    for i in range(a.blocks):
        r = {"time": time.strftime("%H:%M:%S")}
        for name, f in sides:
            r[name], r[name + " cpu/wall"] = timed(f)
        for c in cpus:
            os.sched_setaffinity(0, {c})
            r[f"gemm{c}"] = _gemm_rate()
        os.sched_setaffinity(0, set(cpus))
        r["mem GB/s"] = copy_rate(big, big2, 3)
        r["L3 GB/s"] = copy_rate(small, small2, 40)
        if os.path.exists(a.gaps):
            out = subprocess.run([a.gaps, "0.3"], capture_output=True, text=True).stdout
            for m in re.finditer(r"cpu(\d+) lost ([\d.]+) %", out):
                r[f"lost{m.group(1)} %"] = float(m.group(2))
        if os.path.exists(a.pingpong):
            out = subprocess.run([a.pingpong, "3"], capture_output=True, text=True).stdout
            m = re.search(r"round trip ([\d.]+) ns", out)
            if m:
                r["pingpong ns"] = float(m.group(1))
        rows.append(r)
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in r.items()), flush=True)
    best = min(r["convkit"] for r in rows)
    keys = [k for k in rows[0] if k != "time"]
    for label, sel in (("fast", [r for r in rows if r["convkit"] < 1.25 * best]),
                       ("slow", [r for r in rows if r["convkit"] >= 1.25 * best])):
        if sel:
            print(f"{label} ({len(sel)} blocks): " + "  ".join(
                f"{k} {statistics.median(r[k] for r in sel if k in r):.2f}" for k in keys))


if __name__ == "__main__":
    main()
