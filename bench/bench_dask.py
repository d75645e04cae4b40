"""Overhead of convkit.dask over the in-memory call, on a dask.distributed LocalCluster started
here (worker processes, ``WorkerSetup("cpu", threads=1)`` each).

Rows:

* batch chunks, data on the workers: the input is persisted on the workers first, the result is
  persisted there too (no transfer back), so the row measures scheduling, per-block calls and the
  split of the batch -- what a user pays for running a batch through ``convkit.dask``;
* tiles with halos: one large image cut into tiles (data on the workers), each tile reading its
  halo; the table also gives the share of input rows read twice (the halo).

In-memory runs use ``--workers`` convkit threads, so both sides use the same cores.  Rounds
alternate which side goes first; the table reports medians and the ratio dask / in-memory
(1.0 = no overhead; < 1 can happen when blocks fit caches better).  Between sides the script
waits until the scheduler has forgotten the last dask round's keys (a graph with the same keys
submitted before that finds the old results still held and computes nothing) and pauses
briefly (the in-memory call's OpenMP threads spin a few ms after it returns, on the cores the
workers need).  The results stay on the workers: nothing is gathered to the client.

``--breakdown`` adds a table of where the CPU goes per round (Linux, from
/proc/PID/task/TID/schedstat): the in-memory call; on the workers, the block functions split
into assembling windows (halo copies and border padding) and the rest (the convkit ops), and
everything else the worker processes did (dask's task, transfer and bookkeeping work); this
process's client and scheduler; and the sum of the workers' idle gaps between tasks in the
round's span (from the task stream).  It instruments the workers, so time it separately from
the main table.

    python bench/bench_dask.py --workers 2 --rounds 7
    python bench/bench_dask.py --workers 2 --rounds 5 --breakdown
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time

import numpy as np


def _halo_share(plan, H, W):
    rows = sum(hi - lo for lo, hi in plan.h.windows)
    cols = sum(hi - lo for lo, hi in plan.w.windows)
    return rows * cols / (H * W) - 1.0


def _cpu_ms(pid):
    """CPU time (ms) of all live threads of process ``pid`` (Linux schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:            # a thread that ended meanwhile
            pass
    return total * 1e-6


def _instrument():
    """On a worker: accumulate thread CPU time in convkit.dask's block functions and in its
    window assembly (wrapping them in the module: tasks look them up by name)."""
    import functools

    import convkit.dask as m

    acc = m.__dict__.setdefault("_bench_acc", {"block": 0.0, "window": 0.0})
    for fname, label in (("_call_block", "block"), ("_tile", "block"),
                         ("_predict_rest", "block"), ("_window", "window")):
        orig = getattr(m, fname, None)
        if orig is None or getattr(orig, "_bench", False):     # (absent in older versions)
            continue

        def wrapped(*a, _orig=orig, _label=label, **k):
            t = time.thread_time()
            try:
                return _orig(*a, **k)
            finally:
                acc[_label] += (time.thread_time() - t) * 1e3

        functools.update_wrapper(wrapped, orig)
        wrapped._bench = True
        setattr(m, fname, wrapped)
    return os.getpid()


def _take():
    import convkit.dask as m

    acc = dict(m._bench_acc)
    m._bench_acc.update(block=0.0, window=0.0)
    return acc


def _forget(client, keys):
    """Wait until the scheduler holds none of ``keys`` any more (the caller has dropped their
    futures), so that the next round computes from scratch."""
    while client.run_on_scheduler(
            lambda dask_scheduler, keys=keys: any(k in dask_scheduler.tasks for k in keys)):
        time.sleep(0.01)


def _idle_ms(stream, t0):
    """Sum over workers of the gaps between their compute spans within the round's span."""
    spans = [(rec["worker"], s["start"], s["stop"]) for rec in stream
             for s in rec["startstops"] if s["action"] == "compute"]
    if not spans:
        return 0.0
    lo, hi = min(s[1] for s in spans), max(s[2] for s in spans)
    idle = 0.0
    for w in {s[0] for s in spans}:
        mine = sorted((a, b) for v, a, b in spans if v == w)
        busy, end = 0.0, lo
        for a, b in mine:
            busy += max(0.0, b - max(a, end))
            end = max(end, b)
        idle += (hi - lo) - busy
    return idle * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    p.add_argument("--breakdown", action="store_true",
                   help="also a table of where the CPU goes (instruments the workers)")
    args = p.parse_args(argv)

    import dask.array as da
    import distributed

    import convkit
    import convkit.dask as ckd
    from convkit.models import SmallResNet
    from convkit.nn import BatchNorm2d, Conv2d, MaxPool2d, ReLU, Sequential

    rng = np.random.default_rng(0)
    f32 = np.float32
    q = args.quick
    img = 512 if q else 2048
    batch = 64 if q else 256
    tile = img // 4

    conv_w = rng.standard_normal((32, 16, 3, 3)).astype(f32)
    resnet = SmallResNet(seed=0).eval()
    fcn = Sequential(Conv2d(3, 16, 3, padding=1, seed=0), BatchNorm2d(16), ReLU(), MaxPool2d(2),
                     Conv2d(16, 2, 3, padding=2, dilation=2, seed=1)).eval()
    wd = rng.standard_normal((16, 16, 3, 3)).astype(f32)

    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    try:
        client.register_plugin(ckd.WorkerSetup("cpu", threads=1))
        convkit.set_num_threads(args.workers)
        nchunk = batch // (2 * args.workers)
        gen = da.random.default_rng(0)     # data made on the workers; a copy for in-memory
        on = {k: client.persist(gen.standard_normal(shape, chunks=c, dtype=f32))
              for k, shape, c in (("xb", (batch, 16, 32, 32), (nchunk, 16, 32, 32)),
                                  ("xd", (batch * 32, 1, 8, 8),
                                   (batch * 16 // args.workers, 1, 8, 8)),
                                  ("xi", (1, 16, img, img), (1, 16, tile, tile)),
                                  ("xs", (1, 3, img, img), (1, 3, tile, tile)))}
        distributed.wait(list(on.values()))
        xb, xd, xi, xs = (on[k].compute() for k in ("xb", "xd", "xi", "xs"))
        rows = [
            (f"conv 16->32 3x3 p1, batch {batch} in chunks of {nchunk}", "batch",
             lambda: convkit.conv2d_forward(xb, conv_w, padding=1),
             lambda: ckd.conv2d_forward(on["xb"], conv_w, padding=1), None),
            (f"SmallResNet predict, {len(xd)} digits in {2 * args.workers} chunks", "batch",
             lambda: resnet.forward(xd), lambda: ckd.predict(resnet, on["xd"]), None),
            (f"conv 16->16 3x3 p1 on {img}x{img}, {tile}x{tile} tiles", "tiles",
             lambda: convkit.conv2d_forward(xi, wd, padding=1),
             lambda: ckd.conv2d_forward(on["xi"], wd, padding=1),
             ckd._plan(on["xi"], (ckd._conv_window(np.empty((0, 16, img, img), f32), wd, None,
                                                   1, 1, 1, 1)[0],))),
            (f"conv 16->16 3x3 s2 d2 p2 on {img}x{img}, {tile}x{tile} tiles", "tiles",
             lambda: convkit.conv2d_forward(xi, wd, None, 2, 2, 2),
             lambda: ckd.conv2d_forward(on["xi"], wd, None, 2, 2, 2),
             ckd._plan(on["xi"], (ckd._conv_window(np.empty((0, 16, img, img), f32), wd, None,
                                                   2, 2, 2, 1)[0],))),
            (f"conv-bn-relu-pool-conv(d2) predict on {img}x{img}, {tile}x{tile} tiles", "tiles",
             lambda: fcn.forward(xs), lambda: ckd.predict(fcn, on["xs"]), None),
        ]
        worker_pids = list(client.run(_instrument if args.breakdown else os.getpid).values())
        me = os.getpid()
        table, breakdown = [], []
        for name, kind, mem, lazy, plan in rows:
            mem()
            z = lazy().persist()                         # warm-up: workers build and cache
            keys = [f.key for f in distributed.futures_of(z)]
            distributed.wait(z)
            del z
            _forget(client, keys)
            t_mem, t_dask, t_graph, cpu, mem_cpu = [], [], [], [], []
            for r in range(args.rounds):
                for side in ((0, 1) if r % 2 == 0 else (1, 0)):
                    time.sleep(0.1)                      # let the other side's threads settle
                    if side == 0:
                        c = _cpu_ms(me)
                        t = time.perf_counter()
                        mem()
                        t_mem.append(time.perf_counter() - t)
                        mem_cpu.append(_cpu_ms(me) - c)
                        continue
                    if args.breakdown:
                        client.run(_take)
                        wc, c = [_cpu_ms(p) for p in worker_pids], _cpu_ms(me)
                    with (distributed.get_task_stream(client) if args.breakdown
                          else contextlib.nullcontext()) as stream:
                        t = time.perf_counter()
                        t0 = time.time()
                        y = lazy()
                        t_graph.append(time.perf_counter() - t)
                        z = y.persist()
                        distributed.wait(z)
                        t_dask.append(time.perf_counter() - t)
                    if args.breakdown:
                        own = _cpu_ms(me) - c
                        workers = sum(_cpu_ms(p) for p in worker_pids) - sum(wc)
                        acc = list(client.run(_take).values())
                        block = sum(a["block"] for a in acc)
                        window = sum(a["window"] for a in acc)
                        ntasks = sum(len([s for s in rec["startstops"] if s["action"] ==
                                          "compute"]) for rec in stream.data)
                        cpu.append((block - window, window, workers - block, own,
                                    _idle_ms(stream.data, t0), ntasks))
                    keys = [f.key for f in distributed.futures_of(z)]
                    del z
                    _forget(client, keys)
            m, d, g = (statistics.median(v) * 1e3 for v in (t_mem, t_dask, t_graph))
            halo = f"{_halo_share(plan, img, img):.1%}" if plan is not None else ""
            table.append(f"| {name} | {kind} | {m:.1f} | {d:.1f} ({g:.1f}) | {d / m:.2f} | "
                         f"{halo} |")
            if args.breakdown:
                ops, window, other, own, idle, ntasks = (statistics.median(v)
                                                          for v in zip(*cpu))
                mcpu = statistics.median(mem_cpu)
                breakdown.append(
                    f"| {name} | {mcpu:.0f} | {ops:.0f} ({ops / mcpu:.2f}) | "
                    f"{window:.0f} ({window / mcpu:.2f}) | {other:.0f} ({other / mcpu:.2f}) | "
                    f"{own:.0f} ({own / mcpu:.2f}) | {idle:.0f} | {ntasks:.0f} |")
            print(table[-1], file=sys.stderr, flush=True)      # progress
        print()
        print("| case | kind | in-memory ms | convkit.dask ms (graph ms) | ratio | halo |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("\n".join(table))
        if args.breakdown:
            print()
            print("CPU ms per round, medians (x in-memory CPU); idle: the workers' gaps in the "
                  "round's span, summed")
            print("| case | in-memory CPU | worker ops | window assembly | worker other | "
                  "client+scheduler | idle | tasks |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            print("\n".join(breakdown))
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
