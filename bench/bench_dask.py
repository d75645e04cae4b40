"""Overhead of convkit.dask over the in-memory call, on a dask.distributed LocalCluster started
here (worker processes, ``WorkerSetup("cpu", threads=1)`` each).

Rows (each measured with the result in two places, ``--output``):

* batch chunks: the input is persisted on the workers first; the row measures scheduling,
  per-block calls and the split of the batch;
* tiles with halos: one large image cut into tiles (data on the workers), each tile reading its
  halo; the table also gives the share of input rows read twice (the halo).

Where the result goes (the ``result`` column):

* ``workers``: ``persist`` + ``wait``; the result stays on the workers where it was computed,
  as the in-memory call's result stays where it was computed.  This is the scale-out use: a
  batch of millions of images or a whole slide is written out or reduced on the workers, never
  brought to one process.  The issue's bound ("batch-chunked overhead at most 1.5x the
  in-memory time with data on the workers") applies to this mode;
* ``client``: ``compute()``; the blocks travel to this process and are joined into one array,
  which is what a user who asks for the whole result pays.  The transfer and the join are
  dask's and the machine's (bytes through a socket, a concatenation), reported beside.

The ``dask floor`` column (batch rows): the same graph shape -- one task per input block, the
same output shapes and bytes -- with block functions that compute nothing (they return
uninitialised arrays).  It is what dask's scheduling, messages and (for ``client``) transfer
cost on this machine; the difference to the convkit.dask time is the blocks' own work.

In-memory runs use ``--workers`` convkit threads, so both sides use the same cores.  Rounds
rotate which side goes first; before each side every process collects its garbage (so that no
round pays another's) and the script pauses briefly (the in-memory call's OpenMP threads spin a
few ms after it returns, on the cores the workers need).  Between rounds the script waits until
the scheduler has forgotten the last dask round's keys (a graph with the same keys submitted
before that finds the old results still held and computes nothing).

Quiet gate: around each side the script reads every thread's CPU time on the machine
(/proc/*/task/*/schedstat) and the hypervisor's steal time (/proc/stat); CPU used by anything
but this process and its workers, divided by the side's wall time, is the foreign load in
cores.  A round whose sides saw more than ``--max-foreign`` cores of it does not count and
another is run (up to ``--max-tries`` rounds per row); a row that got fewer quiet rounds than
``--rounds`` reports its quietest ``--rounds`` rounds, says NOT QUIET in the table (the
quiet/tried column, with the most foreign load among the rounds it reports) and the script
exits with status 3.  The table gives medians, the ratio of the medians (1.0 = no overhead)
and the spread of the per-round ratios (min-max over the rounds it reports).

``--breakdown`` adds tables of where the time and the CPU go per round: the timeline (from
submitting the graph to the first task starting, the tasks' span, from the last task's end to
the result being there; the busiest worker's compute) and the CPU (Linux schedstat): the
in-memory call; on the workers, the block functions split into assembling windows (halo copies
and border padding) and the rest (the convkit ops), and everything else the worker processes
did (dask's task, transfer and bookkeeping work); this process's client and scheduler; the
time all processes spent in Python's garbage collector; the sum of the workers' idle gaps
between tasks in the round's span; the most tasks one worker ran (a worker holding copies of
other workers' blocks can be given all their tasks); and the block functions' wall time with
the part their threads waited for a CPU.  It instruments the workers, so time it separately from the
main table.

    python bench/bench_dask.py --workers 2 --rounds 7
    python bench/bench_dask.py --workers 2 --rounds 5 --breakdown --only batch
"""
from __future__ import annotations

import argparse
import collections
import gc
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


def _thread_ns(pid):
    """{thread id: CPU ns} of the live threads of process ``pid`` (Linux schedstat); {} for a
    process that ended."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):      # a thread that ended meanwhile
            pass
    return out


def _cpu_ms(pid):
    """CPU time (ms) of all live threads of process ``pid``."""
    return sum(_thread_ns(pid).values()) * 1e-6


# ------------------------------------------------------------------------------- quiet gate
def _threads_ns():
    """{(pid, tid): CPU ns} of every thread on the machine."""
    return {(int(pid), tid): ns for pid in os.listdir("/proc") if pid.isdigit()
            for tid, ns in _thread_ns(pid).items()}


def _steal_ms():
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 1e3 / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


class _Foreign:
    """CPU used by other processes (and the hypervisor's steal) while the block runs, in cores
    (average over the block's wall time).  Threads that start and end inside the block count
    fully; threads that end inside it are missed (an underestimate)."""

    def __init__(self, ours):
        self.ours = ours
        self.cores = 0.0

    def __enter__(self):
        self._steal, self._ns = _steal_ms(), _threads_ns()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = (time.perf_counter() - self._t) * 1e3
        ns = _threads_ns()
        ms = sum(v - self._ns.get(k, 0) for k, v in ns.items() if k[0] not in self.ours) * 1e-6
        ms += _steal_ms() - self._steal
        self.cores = ms / max(wall, 1e-3)


def _our_pids():
    import psutil

    me = psutil.Process()
    return {me.pid} | {c.pid for c in me.children(recursive=True)}


# --------------------------------------------------------------------------- instrumentation
def _collect():
    gc.collect()
    return os.getpid()


def _gc_hook(acc):
    def hook(phase, info, _t=[0.0]):
        if phase == "start":
            _t[0] = time.perf_counter()
        else:
            acc["gc"] += (time.perf_counter() - _t[0]) * 1e3
    return hook


_ACC = ("block", "window", "gc", "block_wall", "block_wait")


def _run_delay_ms():
    """Time this thread has spent runnable but waiting for a CPU (Linux schedstat), in ms."""
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) * 1e-6


def _instrument():
    """On a worker: accumulate thread CPU time in convkit.dask's block functions and in its
    window assembly (wrapping them in the module: tasks look them up by name), and the wall
    time in the garbage collector."""
    import functools

    import convkit.dask as m

    acc = m.__dict__.setdefault("_bench_acc", dict.fromkeys(_ACC, 0.0))
    for fname, label in (("_call_block", "block"), ("_tile", "block"),
                         ("_predict_rest", "block"), ("_window", "window")):
        orig = getattr(m, fname, None)
        if orig is None or getattr(orig, "_bench", False):     # (absent in older versions)
            continue

        def wrapped(*a, _orig=orig, _label=label, **k):
            t, w, q = time.thread_time(), time.perf_counter(), _run_delay_ms()
            try:
                return _orig(*a, **k)
            finally:
                acc[_label] += (time.thread_time() - t) * 1e3
                if _label == "block":
                    acc["block_wall"] += (time.perf_counter() - w) * 1e3
                    acc["block_wait"] += _run_delay_ms() - q

        functools.update_wrapper(wrapped, orig)
        wrapped._bench = True
        setattr(m, fname, wrapped)
    if not any(getattr(cb, "_bench", False) for cb in gc.callbacks):
        hook = _gc_hook(acc)
        hook._bench = True
        gc.callbacks.append(hook)
    return os.getpid()


def _take():
    import convkit.dask as m

    acc = dict(m._bench_acc)
    m._bench_acc.update(dict.fromkeys(_ACC, 0.0))
    return acc


def _forget(client, keys):
    """Wait until the scheduler holds none of ``keys`` any more (the caller has dropped their
    futures), so that the next round computes from scratch."""
    while client.run_on_scheduler(
            lambda dask_scheduler, keys=keys: any(k in dask_scheduler.tasks for k in keys)):
        time.sleep(0.01)


def _keys(collection):
    import dask

    from dask.core import flatten

    return list(flatten(collection.__dask_keys__())) if dask.is_dask_collection(collection) \
        else []


def _scheduler_delay(dask_worker):
    return dask_worker.scheduler_delay


def _timeline(stream, t0, t_end, delays):
    """(dispatch, span, tail, busiest worker's compute, workers' idle gaps) in ms from the task
    stream of one round submitted at ``t0`` whose result was there at ``t_end``.  Workers
    shift their task times by their estimate of the clock offset to the scheduler
    (``delays``); here every process reads the same clock, so the shift is taken back (as read
    after the round: the estimate moves between heartbeats, by a few ms under load)."""
    spans = [(rec["worker"], s["start"] - delays.get(rec["worker"], 0.0),
              s["stop"] - delays.get(rec["worker"], 0.0)) for rec in stream
             for s in rec["startstops"] if s["action"] == "compute"]
    if not spans:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    lo, hi = min(s[1] for s in spans), max(s[2] for s in spans)
    idle, busiest = 0.0, 0.0
    for w in {s[0] for s in spans}:
        mine = sorted((a, b) for v, a, b in spans if v == w)
        busy, end = 0.0, lo
        for a, b in mine:
            busy += max(0.0, b - max(a, end))
            end = max(end, b)
        idle += (hi - lo) - busy
        busiest = max(busiest, busy)
    most = max(collections.Counter(s[0] for s in spans).values())
    return tuple(v * 1e3 for v in (lo - t0, hi - lo, t_end - hi, busiest, idle)) + (most,)


def _fetch(client, x):
    """Dask array x, persisted, as one numpy array in this process, each block gathered from
    a worker that holds it (no task on a worker, no copy left on another worker)."""
    import distributed
    from dask.array.core import concatenate3

    def futures(keys):
        return [futures(k) for k in keys] if isinstance(keys, list) else \
            distributed.Future(keys, client)

    return concatenate3(client.gather(futures(x.__dask_keys__())))


def _placement(client, x):
    """Sorted count of x's blocks per worker, a block held by several workers counted once
    per worker: a block with copies on two workers lets the scheduler run its task on
    either."""
    import dask

    who = client.who_has(x)
    keys = {str(k) for k in dask.core.flatten(x.__dask_keys__())}
    return sorted(collections.Counter(w for k, ws in who.items() if str(k) in keys
                                      for w in ws).values())


def _nothing(block, shape, dtype):
    """The floor's block function: an output block of the right shape, computing nothing."""
    return np.empty((block.shape[0],) + shape, dtype)


def _floor(y, x):
    """y's graph shape (one task per block of x, y's block shapes) with empty blocks."""
    import dask.array as da

    extra = {"drop_axis": list(range(y.ndim, x.ndim))} if y.ndim < x.ndim else {}
    return da.map_blocks(_nothing, x, tuple(y.shape[1:]), y.dtype, chunks=y.chunks,
                         dtype=y.dtype, name=f"floor-{y.name}", **extra)


def _med(v):
    return statistics.median(v) if v else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="quiet rounds wanted per row")
    p.add_argument("--max-tries", type=int, default=None,
                   help="rounds tried per row before giving up on quiet (default 4 x rounds)")
    p.add_argument("--max-foreign", type=float, default=0.1,
                   help="most foreign load (cores) a quiet round's sides may see; a negative "
                        "value takes every round as quiet (no gate)")
    p.add_argument("--output", choices=("both", "workers", "client"), default="both",
                   help="where the dask result goes (see the module docstring)")
    p.add_argument("--only", choices=("batch", "tiles"), default=None,
                   help="only the batch rows or only the tile rows")
    p.add_argument("--match", default=None, help="only the rows whose case contains this text")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    p.add_argument("--nanny-malloc", action="store_true",
                   help="WorkerSetup(mmap_threshold=None): leave the workers' malloc as dask's "
                        "nanny sets it (every block fresh memory), for an A/B of the default")
    p.add_argument("--breakdown", action="store_true",
                   help="also tables of where the time and the CPU go (instruments the workers)")
    args = p.parse_args(argv)
    max_tries = args.max_tries or 4 * args.rounds
    limit = float("inf") if args.max_foreign < 0 else args.max_foreign

    import dask.array as da
    import distributed

    import convkit
    import convkit.dask as ckd
    from convkit.benchmark.probe import core_probe
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

    print(f"load average {os.getloadavg()[0]:.2f}, one-core probe {core_probe()} GFLOP/s at the "
          f"start", file=sys.stderr, flush=True)
    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    quiet = True
    try:
        client.register_plugin(ckd.WorkerSetup("cpu", threads=1, **(
            {"mmap_threshold": None} if args.nanny_malloc else {})))
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
        # the in-memory copies come straight from the blocks' workers: x.compute() would gather
        # them on one worker first and leave copies there, after which dask's scheduler may run
        # every block on that worker (all 4 batch blocks did: twice the time, one core idle)
        xb, xd, xi, xs = (_fetch(client, on[k]) for k in ("xb", "xd", "xi", "xs"))
        placement = {k: _placement(client, v) for k, v in on.items()}
        print(f"input blocks per worker: {placement}", file=sys.stderr, flush=True)
        rows = [
            (f"conv 16->32 3x3 p1, batch {batch} in chunks of {nchunk}", "batch",
             lambda: convkit.conv2d_forward(xb, conv_w, padding=1),
             lambda: ckd.conv2d_forward(on["xb"], conv_w, padding=1), on["xb"], None),
            (f"SmallResNet predict, {len(xd)} digits in {2 * args.workers} chunks", "batch",
             lambda: resnet.forward(xd), lambda: ckd.predict(resnet, on["xd"]), on["xd"], None),
            (f"conv 16->16 3x3 p1 on {img}x{img}, {tile}x{tile} tiles", "tiles",
             lambda: convkit.conv2d_forward(xi, wd, padding=1),
             lambda: ckd.conv2d_forward(on["xi"], wd, padding=1), None,
             ckd._plan(on["xi"], (ckd._conv_window(np.empty((0, 16, img, img), f32), wd, None,
                                                   1, 1, 1, 1)[0],))),
            (f"conv 16->16 3x3 s2 d2 p2 on {img}x{img}, {tile}x{tile} tiles", "tiles",
             lambda: convkit.conv2d_forward(xi, wd, None, 2, 2, 2),
             lambda: ckd.conv2d_forward(on["xi"], wd, None, 2, 2, 2), None,
             ckd._plan(on["xi"], (ckd._conv_window(np.empty((0, 16, img, img), f32), wd, None,
                                                   2, 2, 2, 1)[0],))),
            (f"conv-bn-relu-pool-conv(d2) predict on {img}x{img}, {tile}x{tile} tiles", "tiles",
             lambda: fcn.forward(xs), lambda: ckd.predict(fcn, on["xs"]), None, None),
        ]
        rows = [r for r in rows if (args.only is None or r[1] == args.only) and
                (args.match is None or args.match in r[0])]
        modes = ("workers", "client") if args.output == "both" else (args.output,)
        worker_pids = list(client.run(_instrument if args.breakdown else os.getpid).values())
        if args.breakdown:
            own_acc = {"gc": 0.0}
            gc.callbacks.append(_gc_hook(own_acc))
        ours = _our_pids()
        me = os.getpid()
        table, timeline, breakdown = [], [], []

        def dask_side(lazy, mode, side_stats):
            """One timed dask round: (seconds, graph-building seconds)."""
            if args.breakdown:
                client.run(_take)
                wc, c = [_cpu_ms(p) for p in worker_pids], _cpu_ms(me)
                own_acc["gc"] = 0.0
                stream_ctx = distributed.get_task_stream(client)
                stream = stream_ctx.__enter__()
            t = time.perf_counter()
            t0 = time.time()
            y = lazy()
            t_graph = time.perf_counter() - t
            if mode == "workers":
                z = y.persist()
                distributed.wait(z)
            else:
                z = y.compute()
            t_dask = time.perf_counter() - t
            t_end = time.time()
            if args.breakdown:
                stream_ctx.__exit__(None, None, None)
                own = _cpu_ms(me) - c
                workers = sum(_cpu_ms(p) for p in worker_pids) - sum(wc)
                acc = list(client.run(_take).values())
                block = sum(a["block"] for a in acc)
                bwall = sum(a["block_wall"] for a in acc)
                bwait = sum(a["block_wait"] for a in acc)
                window = sum(a["window"] for a in acc)
                gcms = sum(a["gc"] for a in acc) + own_acc["gc"]
                ntasks = sum(len([s for s in rec["startstops"] if s["action"] == "compute"])
                             for rec in stream.data)
                delays = client.run(_scheduler_delay)
                side_stats.append((_timeline(stream.data, t0, t_end, delays),
                                   (block - window, window, workers - block, own, gcms, ntasks,
                                    bwall, bwait)))
            keys = _keys(y)
            del z, y
            _forget(client, keys)
            return t_dask, t_graph

        for name, kind, mem, lazy, x_on, plan in rows:
            for mode in modes:
                mem()
                y = lazy()
                sides = ["mem", "dask"] + (["floor"] if x_on is not None else [])
                lazies = {"dask": lazy, "floor": (lambda y=y, x=x_on: _floor(y, x))}
                for s in sides[1:]:                       # warm-up: workers build and cache
                    dask_side(lazies[s], mode, [])
                del y
                tried = []       # per round: (foreign cores, {side: (s, extra)}, stats, floor)
                while sum(f <= limit for f, *_ in tried) < args.rounds and \
                        len(tried) < max_tries:
                    i = len(tried)
                    order = sides[i % len(sides):] + sides[:i % len(sides)]
                    got, worst, round_stats, floor_stats = {}, 0.0, [], []
                    for side in order:
                        client.run(_collect)
                        gc.collect()
                        time.sleep(0.1)                   # let the other side's threads settle
                        with _Foreign(ours) as fg:
                            if side == "mem":
                                c = _cpu_ms(me)
                                t = time.perf_counter()
                                mem()
                                got[side] = (time.perf_counter() - t, _cpu_ms(me) - c)
                            else:
                                got[side] = dask_side(lazies[side], mode,
                                                      round_stats if side == "dask"
                                                      else floor_stats)
                        worst = max(worst, fg.cores)
                    tried.append((worst, got, round_stats, floor_stats))
                # the quiet rounds; short of them, the quietest rounds, flagged
                kept = [r for r in tried if r[0] <= limit][:args.rounds]
                n_quiet = len(kept)
                if n_quiet < args.rounds:
                    quiet = False
                    kept = sorted(tried, key=lambda r: r[0])[:args.rounds]
                times = {s: [r[1][s][0] for r in kept] for s in sides}
                t_graph = [r[1]["dask"][1] for r in kept]
                mem_cpu = [r[1]["mem"][1] for r in kept]
                stats = [x for r in kept for x in r[2]]
                fstats = [x for r in kept for x in r[3]]
                m, d, g = (_med(v) * 1e3 for v in (times["mem"], times["dask"], t_graph))
                fl = f"{_med(times['floor']) * 1e3:.1f}" if "floor" in times else ""
                per = [b / a for a, b in zip(times["mem"], times["dask"])]
                halo = f"{_halo_share(plan, img, img):.1%}" if plan is not None else ""
                gate = (f"{n_quiet}/{len(tried)} ({max(r[0] for r in kept):.2f})"
                        + ("" if n_quiet >= args.rounds else " NOT QUIET"))
                table.append(f"| {name} | {kind} | {mode} | {m:.1f} | {d:.1f} ({g:.1f}) | {fl} | "
                             f"**{d / m:.2f}** | {min(per):.2f}-{max(per):.2f} | {gate} | {halo} |")
                print(table[-1], file=sys.stderr, flush=True)      # progress
                if args.breakdown and stats:
                    tl = [s[0] for s in stats]
                    disp, span, tail, busiest, idle, most = (_med(v) for v in zip(*tl))
                    timeline.append(f"| {name} | {mode} | {m:.1f} | {d:.1f} | {g:.1f} | "
                                    f"{disp:.1f} | {span:.1f} | {busiest:.1f} | {idle:.1f} | "
                                    f"{tail:.1f} | {most:.0f} |")
                    if fstats:
                        f_disp, f_span, f_tail, f_busiest, f_idle, f_most = (
                            _med(v) for v in zip(*[s[0] for s in fstats]))
                        timeline.append(f"| (its dask floor) | {mode} | | {fl} | | "
                                        f"{f_disp:.1f} | {f_span:.1f} | {f_busiest:.1f} | "
                                        f"{f_idle:.1f} | {f_tail:.1f} | {f_most:.0f} |")
                    ops, window, other, own, gcms, ntasks, bwall, bwait = (
                        _med(v) for v in zip(*[s[1] for s in stats]))
                    mcpu = _med(mem_cpu) * 1.0
                    breakdown.append(
                        f"| {name} | {mode} | {mcpu:.0f} | {ops:.0f} ({ops / mcpu:.2f}) | "
                        f"{window:.0f} ({window / mcpu:.2f}) | {other:.0f} "
                        f"({other / mcpu:.2f}) | {own:.0f} ({own / mcpu:.2f}) | {gcms:.1f} | "
                        f"{ntasks:.0f} | {bwall:.0f} ({bwait:.0f}) |")
                    if fstats:       # the floor runs no convkit code: all its CPU is dask's
                        _, _, f_other, f_own, f_gc, f_n, _, _ = (
                            _med(v) for v in zip(*[s[1] for s in fstats]))
                        breakdown.append(f"| (its dask floor) | {mode} | | | | {f_other:.0f} | "
                                         f"{f_own:.0f} | {f_gc:.1f} | {f_n:.0f} | |")
        print(f"load average {os.getloadavg()[0]:.2f}, one-core probe {core_probe()} GFLOP/s at "
              f"the end", file=sys.stderr, flush=True)
        print()
        print("| case | kind | result | in-memory ms | convkit.dask ms (graph ms) | dask floor ms "
              "| ratio | per-round ratios | quiet/tried (most foreign cores kept) | halo |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(table))
        if args.breakdown:
            print()
            print("Timeline per round, medians (ms): submit to the first task's start, the tasks' "
                  "span, the busiest worker's compute in it, the workers' idle gaps in it "
                  "(summed), the last task's end to the result being there, the most tasks "
                  "one worker ran")
            print("| case | result | in-memory | convkit.dask | graph | to first task | span | "
                  "busiest worker | idle | tail | most tasks on a worker |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            print("\n".join(timeline))
            print()
            print("CPU ms per round, medians (x in-memory CPU); gc: wall ms in the garbage "
                  "collector, all processes; block wall: the block functions' wall time, summed "
                  "(in brackets the part their threads spent runnable, waiting for a CPU)")
            print("| case | result | in-memory CPU | worker ops | window assembly | worker other | "
                  "client+scheduler | gc | tasks | block wall (waiting for a CPU) |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            print("\n".join(breakdown))
        if not quiet:
            print(f"\nNOT QUIET: some rows got fewer than {args.rounds} rounds with at most "
                  f"{args.max_foreign} cores of foreign load; they report their quietest "
                  f"{args.rounds} (quiet/tried column)")
    finally:
        client.close()
        cluster.close()
    return 0 if quiet else 3


if __name__ == "__main__":
    sys.exit(main())
