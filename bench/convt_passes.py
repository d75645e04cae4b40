"""Per-pass times of conv_transpose2d (the suite's convt_28 unless told), convkit cpu against
torch, in one process, interleaved: the forward, grad_x alone, grad_weight alone, grad_bias
alone, and the whole forward+backward as `convkit bench` times it; each side's median of
``--calls`` calls after a warm-up, per round; prints the plan each conv pass takes and the
median over rounds of the times and of torch_ms / convkit_ms (> 1: convkit faster).
convkit.get_num_threads() threads, torch the same.

    python bench/convt_passes.py [--case convt_28] [--rounds 5] [--calls 5] [--threads N]
        [--passes fwd,gx,gw,gb,fb] [--clock wall|cpu]

--clock cpu (for decisions on a loaded machine, with --threads 1): each side's least process
CPU time of ``--calls`` calls after a warm-up, instead of the median wall time.
--sweep NAME=v1,v2,...: instead, convkit's times of the passes for each value of the constant
NAME of convkit/cpu/tuning.py (the plans made again for each), interleaved per round, with
torch's once per round.  --sweep ALGO.KEY=v1,v2,...: the same for a parameter of a plan
step (e.g. weight_rowgemm.khs), set in the cached plans of the three passes where their
step's algorithm is ALGO (the planner's own value otherwise).

conv_transpose2d's passes are conv2d's (convkit/cpu/conv_transpose.py): the forward is
conv2d's grad_x of a conv whose input is the transposed conv's output, grad_x is that conv's
forward on grad_y, grad_weight its grad_weight with x and grad_y swapped.  torch's pieces are
what its autograd runs: aten's convolution_backward with transposed=True and one output
asked at a time (grad_x / grad_weight / grad_bias), F.conv_transpose2d under no_grad for the
forward, and torch.autograd.grad over the three for "fb" (the bench adapter's fwd_bwd).
"""
import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

import convkit
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc
from convkit.cpu import conv_transpose as ct
from wino_ab import _med     # (bench/ is the script's folder: on sys.path)


def _cpu(f, n=5):
    f()
    best = float("inf")
    for _ in range(n):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best


def plans(x, w, s, p):
    """{pass: algorithm} of the three conv passes, from the conv plan (convkit/cpu/conv.py)."""
    N, C, H, W = x.shape
    Ho, Wo = (H - 1) * s - 2 * p + w.shape[2], (W - 1) * s - 2 * p + w.shape[3]
    big = np.empty((N, w.shape[1], Ho, Wo), np.float32)       # the adjoint conv's input
    pad = (p, p, p, p)
    plan = cc._plan(big, w, (s, s), pad, (1, 1), 1, True)[3]
    wplan = cc._plan(big, w, (s, s), pad, (1, 1), 1, False)[3]
    return {"fwd": plan.grad_x.algo + f" ({plan.grad_x.threads} threads)",
            "gx": plan.forward.algo + f" ({plan.forward.threads} threads)",
            "gw": wplan.grad_weight.algo + f" ({wplan.grad_weight.threads} threads)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="convt_28")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--passes", default="fwd,gx,gw,gb,fb")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--sweep", default=None, help="NAME=v1,v2,... (a tuning constant)")
    ap.add_argument("--json", default=None, help="with --sweep: every round's times (s) here")
    a = ap.parse_args()
    timer = _med if a.clock == "wall" else _cpu
    if a.threads:
        convkit.set_num_threads(a.threads)
    torch.set_num_threads(convkit.get_num_threads())
    c = {k.name: k for k in CASES}[a.case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = (rng.standard_normal((c.C, c.F, c.K, c.K)) * 0.05).astype(np.float32)
    b = rng.standard_normal(c.F).astype(np.float32)
    s, p, op = c.stride, c.pad, c.output_padding
    y = convkit.conv_transpose2d_forward(x, w, b, s, p, op)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    print(f"{a.case}: x {x.shape} w {w.shape} -> {y.shape}, threads {convkit.get_num_threads()}")
    for q, algo in plans(x, w, s, p).items():
        print(f"  plan {q}: {algo}")
    xt, wt, bt = (torch.from_numpy(v) for v in (x, w, b))
    gyt = torch.from_numpy(gy)
    xg, wg, bg = (v.clone().requires_grad_(True) for v in (xt, wt, bt))
    pad4 = (p, p, p, p)

    def t_bwd(mask):
        return lambda: torch.ops.aten.convolution_backward(
            gyt, xt, wt, [c.F], [s, s], [p, p], [1, 1], True, [op, op], 1, mask)

    def fb_ck():
        convkit.conv_transpose2d_forward(x, w, b, s, p, op)
        return convkit.conv_transpose2d_backward(gy, x, w, s, p, op)

    run = {
        "fwd": (lambda: convkit.conv_transpose2d_forward(x, w, b, s, p, op),
                lambda: torch.nn.functional.conv_transpose2d(xt, wt, bt, s, p, op)),
        "gx": (lambda: cc.conv2d_forward(gy, w, None, (s, s), pad4, (1, 1), 1),
               t_bwd([True, False, False])),
        "gw": (lambda: cc.conv2d_backward(x, gy, w, (s, s), pad4, (1, 1), 1, False, False),
               t_bwd([False, True, False])),
        "gb": (lambda: ct._bias_grad(gy), t_bwd([False, False, True])),
        "fb": (fb_ck, lambda: torch.autograd.grad(
            torch.nn.functional.conv_transpose2d(xg, wg, bg, s, p, op), [xg, wg, bg], gyt)),
    }
    passes = a.passes.split(",")
    if a.sweep:
        return sweep(a, passes, run, timer)
    res = {q: ([], []) for q in passes}
    for _ in range(a.rounds):
        for q in passes:
            if q == "fb":
                res[q][0].append(timer(run[q][0], a.calls))
                res[q][1].append(timer(run[q][1], a.calls))
                continue
            with torch.no_grad():
                res[q][0].append(timer(run[q][0], a.calls))
                res[q][1].append(timer(run[q][1], a.calls))
    for q in passes:
        ck, th = res[q]
        r = [t / k for k, t in zip(ck, th)]
        print(f"{a.case} {q:4s} convkit {statistics.median(ck) * 1e3:7.2f} ms  torch "
              f"{statistics.median(th) * 1e3:7.2f} ms  torch/convkit {statistics.median(r):.2f}"
              f" (spread {min(r):.2f}-{max(r):.2f})", flush=True)


def _set_param(algo, key, v):
    """Make the plans again, then set params[key] = v in their steps of algorithm algo."""
    cc._plans.clear()
    for run, _ in _RUN.values():
        run()                                   # (fills the plan cache)
    for hit in cc._plans.values():
        plan = hit[3]
        for step in (plan.forward, plan.grad_x, plan.grad_weight):
            if step is not None and step.algo == algo:
                step.params[key] = v


_RUN = {}


def _grad_mode(q):
    """torch's "fb" needs autograd; the single passes run without it."""
    return contextlib.nullcontext() if q == "fb" else torch.no_grad()


def sweep(a, passes, run, timer):
    from convkit.cpu import tuning
    name, vals = a.sweep.split("=")
    vals = [int(v) for v in vals.split(",")]
    _RUN.update({q: run[q] for q in ("fwd", "gx", "gw")})
    algo, _, key = name.rpartition(".")
    keep = None if algo else getattr(tuning, name)
    res = {(q, v): [] for q in passes for v in vals + ["torch"]}
    for _ in range(a.rounds):
        for q in passes:
            for v in vals:
                if algo:
                    _set_param(algo, key, v)
                else:
                    setattr(tuning, name, v)
                    cc._plans.clear()
                with _grad_mode(q):
                    res[q, v].append(timer(run[q][0], a.calls))
            with _grad_mode(q):
                res[q, "torch"].append(timer(run[q][1], a.calls))
    if a.json:
        import json
        with open(a.json, "w") as f:
            json.dump({f"{q} {v}": t for (q, v), t in res.items()}, f)
    if not algo:
        setattr(tuning, name, keep)
    cc._plans.clear()
    for q in passes:
        print(f"{a.case} {q:4s} " + "  ".join(
            f"{name}={v}: {statistics.median(res[q, v]) * 1e3:6.2f} ms"
            for v in vals) + f"  torch {statistics.median(res[q, 'torch']) * 1e3:6.2f} ms",
            flush=True)


if __name__ == "__main__":
    main()
