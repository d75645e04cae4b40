"""Peak memory of one forward+backward, measured in a fresh interpreter (default allocator
settings) so that nothing a timing run allocated is counted: peak RSS growth against the bytes of
the op's own tensors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from .adapters import TORCH_NAMES, _torch, make_runner, to_host
from .cases import CASES, FB, QUICK_CASES


def _proc_status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _memory_child(op, backend, quick, threads):
    """Body of the fresh process: peak RSS growth of one forward+backward of ``op``."""
    import gc

    case = next(c for c in (QUICK_CASES if quick else CASES) if c.name == op)
    data = case.inputs(np.random.default_rng(0))
    import convkit

    convkit.set_num_threads(threads)
    if backend in TORCH_NAMES:
        _torch().set_num_threads(threads)
    # One call on the tiny twin first, so that one-time library set-up (thread pools, JIT
    # caches: tens of MiB for torch) is not charged to the op.
    twin = next(c for c in QUICK_CASES if c.name == op)
    warm = make_runner(twin, backend, twin.inputs(np.random.default_rng(0)))
    with warm.context():
        warm.fns[FB]()
    del warm
    runner = make_runner(case, backend, data)
    nbytes_in = sum(a.nbytes for k, a in data.items() if k != "gy")
    gc.collect()
    try:   # "5" resets the peak (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        how = "VmHWM after /proc/self/clear_refs reset"
    except OSError:
        how = "VmHWM (not reset: clear_refs not writable; an overestimate)"
    base = _proc_status_kb("VmRSS")
    with runner.context():
        out = runner.fns[FB]()
        runner.sync()
    peak = _proc_status_kb("VmHWM")
    outs = to_host(out)
    # + the forward's output y, which has gy's shape
    nbytes_out = data["gy"].nbytes + sum(a.nbytes for a in outs)
    growth = (peak - base) * 1024
    tensors = nbytes_in + nbytes_out
    print(json.dumps({"op": op, "backend": backend, "peak_rss_growth_bytes": growth,
                      "tensor_bytes": tensors, "ratio": growth / tensors, "method": how}))


def measure_memory(op, backend, quick, threads, timeout=600):
    """Run :func:`_memory_child` in a fresh interpreter (default allocator settings)."""
    code = ("from convkit.benchmark.memory import _memory_child; "
            f"_memory_child({op!r}, {backend!r}, {bool(quick)!r}, {int(threads)})")
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"op": op, "backend": backend, "error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"op": op, "backend": backend,
                "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])
