"""Where convkit.dask's batch-chunked time goes, block by block (issue 15's 1.5x bound).

Starts a LocalCluster like bench/bench_dask.py (``--workers`` processes x 1 thread,
``WorkerSetup("cpu", threads=1)``), deals the blocks of a batch to the workers round-robin and
runs
``convkit.dask.conv2d_forward`` over it ``--rounds`` times (persist + wait).  Inside the workers
it wraps the batch block function and records, per block: wall and thread CPU time, minor page
faults of the task's thread (getrusage RUSAGE_THREAD), the conv plan and the malloc settings the
worker runs with.  Per round it reads every thread's CPU time of every process of the cluster
(Linux schedstat), by thread name, so "worker other" and "client+scheduler" split into the
threads that spend them.  Then it times the same block in this process, 1 convkit thread, with
and without the worker's malloc setting, and the whole batch on ``--workers`` threads.

It also prints how many input blocks each worker holds (copies counted), how many blocks each
worker ran per round and how many ran away from their input.  ``--mem`` calls the in-memory
conv before each round (as bench_dask.py's rounds do); ``--ballast`` holds bench_dask.py's
256 MiB image on the workers meanwhile.  Thread CPU times and fault counts suffer less from
other load than wall times: read ``cat /proc/loadavg``.

    python bench/dask_block_probe.py --rounds 10 --mem
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from bench_dask import _placement, _thread_ns   # (run as a script: bench/ is on the path)

RUSAGE_THREAD = 1


def _thread_faults():
    return resource.getrusage(RUSAGE_THREAD).ru_minflt


def _thread_names():
    import threading

    return os.getpid(), {t.native_id: t.name for t in threading.enumerate()}


def _instrument():
    """In a worker: wrap convkit.dask._call_block to record per-block timings."""
    import convkit.dask as m

    if getattr(m._call_block, "_probe", False):
        return os.getpid()
    orig = m._call_block
    rec = m.__dict__.setdefault("_probe_rec", [])

    def wrapped(*a, **k):
        t, c, f = time.time(), time.thread_time(), _thread_faults()
        try:
            return orig(*a, **k)
        finally:
            rec.append(dict(start=t, wall=(time.time() - t) * 1e3,
                            cpu=(time.thread_time() - c) * 1e3,
                            faults=_thread_faults() - f, tid=__import__("threading").get_ident()))

    wrapped._probe = True
    m._call_block = wrapped
    return os.getpid()


def _take():
    import convkit.dask as m

    rec = list(m.__dict__.get("_probe_rec", []))
    m.__dict__.get("_probe_rec", []).clear()
    return rec


def _worker_facts():
    import convkit
    from convkit.cpu import conv as C

    x = np.zeros((64, 16, 32, 32), np.float32)
    w = np.zeros((32, 16, 3, 3), np.float32)
    plan = C._plan(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)[3].forward
    env = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC", "OMP", "OPENBLAS",
                                                                "MKL"))}
    return dict(pid=os.getpid(), threads=convkit.get_num_threads(),
                backend=convkit.get_backend().name, plan=str(plan), env=env)


def _in_process(n, threads, rounds, malloc_env, threshold=False):
    """Time conv2d_forward on n images in a fresh process: (wall ms, cpu ms, faults) medians;
    ``threshold``: with WorkerSetup's malloc setting."""
    code = f"""
import os, resource, time, numpy as np, convkit
if {threshold}:
    import convkit.dask as ckd
    ckd._set_mmap_threshold(ckd._MMAP_THRESHOLD_MAX)
convkit.set_backend("cpu"); convkit.set_num_threads({threads})
rng = np.random.default_rng(0)
x = rng.standard_normal(({n}, 16, 32, 32)).astype(np.float32)
w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
for _ in range(3):
    convkit.conv2d_forward(x, w, padding=1)
r = []
for _ in range({rounds}):
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t, c = time.perf_counter(), time.process_time()
    y = convkit.conv2d_forward(x, w, padding=1)
    r.append(((time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3,
              resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f))
    del y
print(repr(r))
"""
    env = dict(os.environ)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env.update(malloc_env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    r = eval(out.strip().splitlines()[-1])
    return tuple(statistics.median(v) for v in zip(*r))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--ballast", action="store_true",
                   help="hold a 256 MiB image on the workers meanwhile, as bench_dask.py does")
    p.add_argument("--mem", action="store_true",
                   help="call the in-memory conv (--workers threads) before each round, as "
                        "bench_dask.py's rounds do")
    args = p.parse_args(argv)

    import logging

    import dask
    import dask.array as da
    import distributed

    import convkit
    import convkit.dask as ckd

    print(f"load average {os.getloadavg()}", flush=True)
    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    try:
        client.register_plugin(ckd.WorkerSetup("cpu", threads=1))
        facts = client.run(_worker_facts)
        for addr, f in facts.items():
            print(f"worker {f['pid']}: backend {f['backend']}, {f['threads']} thread(s), "
                  f"plan {f['plan']}, env {f['env']}")
        wpids = list(client.run(_instrument).values())
        nanny = [p.pid for p in __import__("psutil").Process().children()]
        w = np.random.default_rng(0).standard_normal((32, 16, 3, 3)).astype(np.float32)
        rng = np.random.default_rng(0)
        addrs = sorted(client.scheduler_info()["workers"])
        # the blocks dealt round-robin to the workers (a random placement may put 3 of 4 on one)
        futs = [client.scatter(rng.standard_normal((args.chunk, 16, 32, 32)).astype(np.float32),
                               workers=[addrs[i % len(addrs)]])
                for i in range(args.batch // args.chunk)]
        x = client.persist(da.concatenate([da.from_delayed(f, (args.chunk, 16, 32, 32),
                                                           np.float32) for f in futs]))
        distributed.wait(x)
        xm = x.compute()
        if args.ballast:     # bench_dask.py's other inputs, held on the workers meanwhile
            ballast = client.persist(da.random.default_rng(1).standard_normal(
                (1, 16, 2048, 2048), chunks=(1, 16, 512, 512), dtype=np.float32))
            distributed.wait(ballast)
        convkit.set_num_threads(args.workers)
        procs = {"client+scheduler": [os.getpid()], "workers": wpids,
                 "nannies": [p for p in nanny if p not in wpids]}
        def placement():
            return _placement(client, x)

        print(f"input blocks per worker before the rounds: {placement()}")
        names = dict(client.run(_thread_names).values())
        names.update([_thread_names()])
        walls, per_thread, blocks, moved = [], collections.defaultdict(list), [], []
        for r in range(args.rounds + 2):
            if args.mem:
                convkit.conv2d_forward(xm, w, padding=1)
            client.run(gc.collect)
            gc.collect()
            time.sleep(0.1)
            client.run(_take)
            before = {k: {pid: _thread_ns(pid) for pid in v} for k, v in procs.items()}
            held = {k[1]: set(v) for k, v in client.who_has(x).items()
                    if isinstance(k, tuple)}
            with distributed.get_task_stream(client) as ts:
                t0 = time.time()
                y = ckd.conv2d_forward(x, w, padding=1).persist()
                distributed.wait(y)
                wall = (time.time() - t0) * 1e3
            away = sum(1 for rec in ts.data if isinstance(rec["key"], tuple)
                       and "convkit" in rec["key"][0]
                       and rec["worker"] not in held.get(rec["key"][1], ()))
            moved.append(away)
            after = {k: {pid: _thread_ns(pid) for pid in v} for k, v in procs.items()}
            recs = client.run(_take)
            keys = [k for k in y.__dask_keys__()]
            del y
            while client.run_on_scheduler(lambda dask_scheduler, ks=str(keys): any(
                    str(k) in ks for k in dask_scheduler.tasks if "convkit" in str(k))):
                time.sleep(0.01)
            if r < 2:            # warm-up
                continue
            walls.append(wall)
            for k in procs:
                for pid in procs[k]:
                    acc = collections.Counter()
                    for tid, ns in after[k][pid].items():
                        ms = (ns - before[k][pid].get(tid, 0)) * 1e-6
                        label = names.get(pid, {}).get(tid, "(unnamed)")
                        acc[label.rsplit("-", 1)[0] if label[-1:].isdigit() else label] += ms
                    for name, ms in acc.items():
                        per_thread[(k, name)].append(ms)
            for addr, rr in recs.items():
                for b in rr:
                    b["round"] = r
                    b["worker"] = addr
                    b["t0"] = t0
                    blocks.append(b)
        med = statistics.median
        print(f"input blocks per worker after the rounds: {placement()}")
        split = collections.Counter(
            tuple(sorted(collections.Counter(b["worker"] for b in blocks if b["round"] == r)
                         .values())) for r in {b["round"] for b in blocks})
        print(f"blocks per worker in a round (how many rounds): {dict(split)}; blocks run "
              f"away from their input, per round: {moved}")
        print(f"\nconvkit.dask round (persist + wait): median {med(walls):.1f} ms "
              f"(min {min(walls):.1f}) over {len(walls)} rounds")
        print(f"blocks: {len(blocks)}; per block medians: wall {med(b['wall'] for b in blocks):.1f}"
              f" ms, thread CPU {med(b['cpu'] for b in blocks):.1f} ms, minor faults "
              f"{med(b['faults'] for b in blocks):.0f}; distinct executor threads per worker: "
              f"{ {a: len({b['tid'] for b in blocks if b['worker'] == a}) for a in recs} }")
        # per round and worker: first block's start after submit, gap between its blocks
        firsts, gaps = [], []
        for r in {b["round"] for b in blocks}:
            for a in recs:
                mine = sorted((b for b in blocks if b["round"] == r and b["worker"] == a),
                              key=lambda b: b["start"])
                if not mine:
                    continue
                firsts.append((mine[0]["start"] - mine[0]["t0"]) * 1e3)
                for u, v in zip(mine, mine[1:]):
                    gaps.append((v["start"] - u["start"]) * 1e3 - u["wall"])
        print(f"submit -> a worker's first block: median {med(firsts):.1f} ms; gap between a "
              f"worker's blocks: median {med(gaps) if gaps else float('nan'):.1f} ms")
        print("\nCPU ms per round (median; per process for workers and nannies), by thread name:")
        for (k, name), v in sorted(per_thread.items(), key=lambda kv: -med(kv[1])):
            if med(v) >= 0.2:
                print(f"  {k:17s} {name:24s} {med(v):7.1f}")
    finally:
        client.close()
        cluster.close()
    print("\nin this process's kind of run (fresh process, wall / CPU ms / faults, medians):")
    trim = {"MALLOC_TRIM_THRESHOLD_": "65536"}        # the nanny's setting
    for label, n, th, env, mm in (
            (f"{args.chunk} images, 1 thread", args.chunk, 1, {}, False),
            (f"{args.chunk} images, 1 thread, MALLOC_TRIM_THRESHOLD_=65536", args.chunk, 1,
             trim, False),
            (f"{args.chunk} images, 1 thread, the same + WorkerSetup's mmap_threshold",
             args.chunk, 1, trim, True),
            (f"{args.batch} images, {args.workers} threads", args.batch, args.workers, {},
             False)):
        wall, cpu, faults = _in_process(n, th, args.rounds, env, mm)
        print(f"  {label:68s} {wall:7.1f} {cpu:7.1f} {faults:7.0f}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
