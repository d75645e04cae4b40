"""RoI ops on OpenMP regions vs on a per-call pthread task runner, quiet and under load.

    python bench/bench_threading.py [--rounds 15] [--threads 2]

The suite's RoI cases (``roi_align`` and ``roi_pool`` of convkit.benchmark.CASES: 512 boxes on a
(2, 256, 50, 68) map, forward+backward) timed with each runtime, rounds interleaved, medians in
ms; then again with a Python busy loop pinned to the last CPU (``taskset``), the situation of
bench/RESULTS.md's OMP_WAIT_POLICY note.  The runtime is switched with
``convkit.cpu.roi._use_openmp(on)``, which only commit b0d8b6b has (the RoI task runner beside
OpenMP; since then RoI runs on OpenMP alone, README "Threads" says why): build that commit to
rerun the comparison.  OMP_WAIT_POLICY is left as the caller set it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np


def _cases():
    from convkit.benchmark import CASES, FB

    be = SimpleNamespace(asarray=np.asarray, xp=np)
    out = {}
    for case in CASES:
        if case.name in ("roi_align", "roi_pool"):
            out[case.name] = case.convkit_fns(be, case.inputs(np.random.default_rng(0)))[FB]
    return out


def _measure(fns, runtimes, rounds):
    """{(case, runtime): median ms}: every round runs each case once with each runtime."""
    times = {(c, r): [] for c in fns for r in runtimes}
    for _ in range(rounds):
        for c, fn in fns.items():
            for r, switch in runtimes.items():
                switch()
                t = time.perf_counter()
                fn()
                times[c, r].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import convkit
    from convkit.cpu import roi

    if not hasattr(roi, "_use_openmp"):
        sys.exit("this build has one threading runtime (OpenMP): build commit b0d8b6b to compare")
    convkit.set_num_threads(args.threads)
    runtimes = {"tasks": lambda: roi._use_openmp(False), "openmp": lambda: roi._use_openmp(True)}
    fns = _cases()
    print(f"{args.threads} threads, {args.rounds} interleaved rounds, median ms; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print("| case | load | " + " | ".join(runtimes) + " |")
    print("| --- | --- |" + " --- |" * len(runtimes))
    with convkit.use_backend("cpu"):
        for fn in fns.values():      # warm up (first-touch of the scratch, the thread pool)
            fn()
        for load in ("quiet", "busy loop on 1 CPU"):
            hog = None
            if load != "quiet":
                cpu = str(max(os.sched_getaffinity(0)))
                hog = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-c",
                                        "while True: pass"])
                time.sleep(0.5)
            try:
                res = _measure(fns, runtimes, args.rounds)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            for c in fns:
                print(f"| {c} | {load} | " + " | ".join(f"{res[c, r]:.1f}" for r in runtimes)
                      + " |")


if __name__ == "__main__":
    main()
