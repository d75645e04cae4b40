"""Timing: the allocator settings the clocks depend on, one timed call, and the interleaved
measurement of one (case, pass) on every runner (shared/BENCHMARKING.md).

Each backend's first call is timed on its own (first-call latency: lazily compiled GPU kernels,
first-touch page faults) and its result checked against the oracle; then ``warmup`` untimed
rounds, then ``repeat`` timed rounds with the backends interleaved and their order rotated each
round.  A :class:`Row` keeps every time; medians and per-round ratios are computed from them.
"""
from __future__ import annotations

import ctypes
import os
import statistics
import time
from dataclasses import dataclass, field

from .adapters import TORCH_NAMES, Runner, compare_outputs, to_host, torch_ref

_MALLOPT_DONE = None
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOPT_BYTES = 1 << 30


def set_mallopt():
    """Raise glibc's mmap and trim thresholds to 1 GiB, once per process, so freed large buffers
    stay mapped and neither convkit nor torch pays first-touch page faults on every call
    (shared/BENCHMARKING.md).  Returns a sentence saying what was done."""
    global _MALLOPT_DONE
    if _MALLOPT_DONE is not None:
        return _MALLOPT_DONE
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, MALLOPT_BYTES) == 1,
              libc.mallopt(_M_TRIM_THRESHOLD, MALLOPT_BYTES) == 1)
    except (OSError, AttributeError) as e:
        _MALLOPT_DONE = f"allocator: mallopt not available ({e}); default allocator settings"
        return _MALLOPT_DONE
    if all(ok):
        _MALLOPT_DONE = ("allocator: glibc mallopt M_MMAP_THRESHOLD = M_TRIM_THRESHOLD = 1 GiB set "
                         "once for this process (convkit and torch both run under it; "
                         "--no-mallopt to skip)")
    else:
        _MALLOPT_DONE = f"allocator: mallopt refused (mmap ok={ok[0]}, trim ok={ok[1]})"
    return _MALLOPT_DONE


def time_call(runner: Runner, fn, device_sync: bool):
    """Run ``fn`` once; return (milliseconds, result).  With ``device_sync`` queued GPU work is
    waited for before starting and before reading the clock (CUDA events when available)."""
    with runner.context():
        if device_sync and runner.events is not None:
            runner.sync()
            start, stop, elapsed = runner.events()
            start.record()
            out = fn()
            stop.record()
            stop.synchronize()
            return float(elapsed(stop)), out
        if device_sync:
            runner.sync()
        t0 = time.perf_counter()
        out = fn()
        if device_sync:
            runner.sync()
        return (time.perf_counter() - t0) * 1e3, out


@dataclass
class Row:
    op: str
    family: str
    pas: str
    shape: str
    unit: str | None
    work: float | None
    medians_ms: dict = field(default_factory=dict)
    times_ms: dict = field(default_factory=dict)
    first_call_ms: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    load_avg: float | None = None       # 1-minute load average when the row started

    def throughput(self, b):
        if self.unit is None or b not in self.medians_ms:
            return None
        return self.work / 1e9 / (self.medians_ms[b] / 1e3)

    def ratio(self, ref, b):
        """ref's median / b's median (> 1: b is faster), None when either did not run."""
        m = self.medians_ms
        if ref not in m or b not in m or ref == b:
            return None
        return m[ref] / m[b]

    def ratio_spread(self, ref, b):
        """Quartiles (q1, q3) of the per-round ratios ref_i / b_i (the two calls of a round run
        back to back, so drift cancels); None with fewer than 2 rounds."""
        t = self.times_ms
        if ref == b or ref not in t or b not in t or min(len(t[ref]), len(t[b])) < 2:
            return None
        q = statistics.quantiles([x / y for x, y in zip(t[ref], t[b])], n=4)
        return q[0], q[2]

    def to_json(self, backends):
        conv = [b for b in backends if b not in TORCH_NAMES]
        ratios = {}
        for b in conv:
            r = {ref: self.ratio(ref, b) for ref in (torch_ref(b), "numpy")}
            r = {k: v for k, v in r.items() if v is not None}
            if r:
                ratios[b] = r
        return {
            "op": self.op, "family": self.family, "pass": self.pas, "shape": self.shape,
            "unit": self.unit, "work": self.work,
            "medians_ms": self.medians_ms, "times_ms": self.times_ms,
            "first_call_ms": self.first_call_ms,
            "throughput": {b: self.throughput(b) for b in self.medians_ms} if self.unit else {},
            "ratios": ratios,
            "ratio_quartiles": {b: {ref: self.ratio_spread(ref, b) for ref in refs}
                                for b, refs in ratios.items()},
            "gpu_cpu_speedup": self.ratio("cpu", "cuda"),
            "errors": self.errors, "check": self.check, "load_avg_1min": self.load_avg,
        }


def measure(case, pas, runners, repeat, warmup, device_sync, reference=None):
    """Time ``case``/``pas`` on every runner, interleaved; returns a :class:`Row`."""
    unit, work = case.work(pas)
    row = Row(case.name, case.family, pas, case.describe(), unit, work)
    try:
        row.load_avg = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    outs = {}
    active = []
    for r in runners:
        try:
            ms, out = time_call(r, r.fns[pas], device_sync)   # first call, on its own
            outs[r.backend] = to_host(out)
        except Exception as e:   # report and keep going: one missing kernel must not stop a run
            row.errors[r.backend] = f"{type(e).__name__}: {e}"[:300]
            continue
        row.first_call_ms[r.backend] = ms
        active.append(r)
    ref = reference if reference in outs else next(
        (n for n in ("torch", "torch-cuda", "numpy") if n in outs), None)
    if ref is not None:
        row.check["reference"] = ref
        for b, got in outs.items():
            if b != ref:
                row.check[b] = compare_outputs(got, outs[ref]) or "ok"
    del outs
    for _ in range(warmup):
        for r in active:
            time_call(r, r.fns[pas], device_sync)
    times = {r.backend: [] for r in active}
    for i in range(repeat):
        k = i % len(active) if active else 0
        for r in active[k:] + active[:k]:    # interleaved, order rotated each round
            times[r.backend].append(time_call(r, r.fns[pas], device_sync)[0])
    row.times_ms = times
    row.medians_ms = {b: statistics.median(t) for b, t in times.items() if t}
    return row
