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
(1.0 = no overhead; < 1 can happen when blocks fit caches better).

    python bench/bench_dask.py --workers 2 --rounds 7
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np


def _halo_share(plan, H, W):
    rows = sum(hi - lo for lo, hi in plan.h.windows)
    cols = sum(hi - lo for lo, hi in plan.w.windows)
    return rows * cols / (H * W) - 1.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
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
        print(f"| case | kind | in-memory ms | convkit.dask ms (graph ms) | ratio | halo |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, kind, mem, lazy, plan in rows:
            mem()
            distributed.wait(lazy().persist())           # warm-up: workers build and cache
            t_mem, t_dask, t_graph = [], [], []
            for r in range(args.rounds):
                for side in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if side == 0:
                        t = time.perf_counter()
                        mem()
                        t_mem.append(time.perf_counter() - t)
                    else:
                        t = time.perf_counter()
                        y = lazy()
                        t_graph.append(time.perf_counter() - t)
                        z = y.persist()
                        distributed.wait(z)
                        t_dask.append(time.perf_counter() - t)
                        del z
            m, d, g = (statistics.median(v) * 1e3 for v in (t_mem, t_dask, t_graph))
            halo = f"{_halo_share(plan, img, img):.1%}" if plan is not None else ""
            print(f"| {name} | {kind} | {m:.1f} | {d:.1f} ({g:.1f}) | {d / m:.2f} | {halo} |")
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
