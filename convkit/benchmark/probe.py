"""What machine the numbers come from: the one-core probe (how much arithmetic a core gives right
now) and the facts recorded with every run (CPU, memory, load, library versions, thread pools)."""
from __future__ import annotations

import os
import platform
import subprocess
import time

import numpy as np


def probe_kernel() -> str | None:
    """Which GEMM core_probe times here: convkit's own AVX-512 kernel, else BLAS's sgemm pinned
    to one thread (convkit.cpu's BLAS path on CPUs without AVX-512F); None without the cpu
    extension."""
    try:
        from convkit.cpu import _gemm
    except ImportError:
        return None
    return "own float32 GEMM" if _gemm.own_sgemm_active() else "BLAS sgemm, one thread"


def core_probe(rounds=7, calls=40):
    """GFLOP/s of one core on a fixed float32 GEMM (64 x 147 x 784: the stem_224 forward's GEMM
    for 7 output rows), best of ``rounds``, on the kernel :func:`probe_kernel` names (BLAS with
    its threads pinned to one, or they would blur it); None without the cpu extension.

    Printed at the start and the end of a run: on shared machines the arithmetic a core gives
    changes from minute to minute (a busy SMT sibling took this one from ~150 to ~106 on
    2026-11-28), and FMA-bound kernels lose more of it than slower ones, so ratios to torch
    from such a spell read low (bench/RESULTS.md, "stem_224: met, and how")."""
    kernel = probe_kernel()
    if kernel is None:
        return None
    from convkit._config import blas_single_thread
    from convkit.cpu import _gemm

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 147)).astype(np.float32)
    b = rng.standard_normal((147, 784)).astype(np.float32)
    c = np.empty((64, 784), np.float32)
    if kernel == "own float32 GEMM":
        def gemm():
            _gemm.gemm_into(False, False, 1.0, a, b, 0.0, c)
    else:
        def gemm():
            np.matmul(a, b, out=c)
    with blas_single_thread:
        gemm()                                            # packing buffers / pages, warm
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(calls):
                gemm()
            best = min(best, time.perf_counter() - t)
    return round(2 * 64 * 147 * 784 * calls / best / 1e9, 1)


def pair_round_trip() -> float | None:
    """ns of a cache line's round trip between two threads (convkit.cpu._omp.pair_round_trip_ns):
    where a shared host has put the two CPUs on cores that do not share an L3 it reads 200-400
    instead of 50-100, and convkit's multi-threaded rows read lower than torch's
    (bench/RESULTS.md, eleventh session); None without the cpu extension or two CPUs."""
    try:
        from convkit.cpu._omp import pair_round_trip_ns
    except ImportError:
        return None
    return pair_round_trip_ns()


def machine_info():
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__, "cpu_model": None, "logical_cpus": os.cpu_count(),
            "load_avg": None}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                info["cpu_model"] = v.strip()
            elif k.strip() in ("Core(s) per socket", "Socket(s)", "Thread(s) per core"):
                info[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    import convkit

    info["convkit"] = convkit.__version__
    info["threads"] = convkit.get_num_threads()
    import importlib.metadata as md

    for dist in ("torch", "torchvision", "cupy"):   # versions without importing them
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [f"{p.get('internal_api')} {p.get('version')} "
                               f"({p.get('user_api')}, {p.get('num_threads')} threads)"
                               for p in threadpool_info()]
    except ImportError:
        pass
    return info
