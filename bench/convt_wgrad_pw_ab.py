"""convt_28's grad_weight: weight_polywino (the transposed F(4x4, 2x2), this branch) against
weight_rowgemm (the plan before it), interleaved in one process, and each one's max error
against torch float64.  The A/B switch: conv_plan.plan_weight_polywino answering None (the
planner then takes what it took before: weight_rowgemm on AVX2 and half-rate AVX-512 CPUs).

    python bench/convt_wgrad_pw_ab.py [--threads 1] [--clock cpu|wall] [--rounds 9]
        [--calls 7]

--clock cpu: each side's least process CPU time of --calls calls per round (use with
--threads 1 on a loaded machine); wall: the median wall time.  Prints the medians over rounds,
torch's (aten convolution_backward, transposed, grad_weight alone) beside them.
"""
import argparse
import statistics

import numpy as np
import torch

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convt_passes import _cpu
from wino_ab import _med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=7)
    a = ap.parse_args()
    timer = _med if a.clock == "wall" else _cpu
    convkit.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)          # convt_28: x 8x64x28x28, w 64x32x4x4, s 2, p 1
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 4, 4)) * 0.05).astype(np.float32)
    gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)
    pad4 = (1, 1, 1, 1)
    real = P.plan_weight_polywino
    with_pw, without = real, (lambda *args, **kw: None)

    def side(rule):
        def f():
            P.plan_weight_polywino = rule
            return cc.conv2d_backward(x, gy, w, (2, 2), pad4, (1, 1), 1, False, False)[1]
        return f

    def algo(rule):
        P.plan_weight_polywino = rule
        cc._plans.clear()
        return cc._plan(gy, w, (2, 2), pad4, (1, 1), 1, False)[3].grad_weight.algo

    names = {"new": algo(with_pw), "old": algo(without)}
    cc._plans.clear()
    xt = torch.from_numpy(x).double()
    wt = torch.from_numpy(w).double().requires_grad_()
    torch.nn.functional.conv_transpose2d(xt, wt, stride=2, padding=1).backward(
        torch.from_numpy(gy).double())
    want = wt.grad.numpy()
    for k, rule in (("new", with_pw), ("old", without)):
        cc._plans.clear()
        got = side(rule)()
        err = np.abs(got - want).max() / np.abs(want).max()
        print(f"{k} ({names[k]}): max |error| / max |grad_weight| vs torch float64 {err:.3g}")
    xt32, wt32, gyt = (torch.from_numpy(v) for v in (x, w, gy))
    t_gw = lambda: torch.ops.aten.convolution_backward(       # noqa: E731
        gyt, xt32, wt32, [32], [2, 2], [1, 1], [1, 1], True, [0, 0], 1, [False, True, False])
    res = {"new": [], "old": [], "torch": []}
    for _ in range(a.rounds):
        for k, rule in (("new", with_pw), ("old", without)):
            cc._plans.clear()       # (each side plans its own; the plan cache keeps one)
            side(rule)()
            res[k].append(timer(side(rule), a.calls))
        with torch.no_grad():
            res["torch"].append(timer(t_gw, a.calls))
    P.plan_weight_polywino = real
    cc._plans.clear()
    print(f"threads {a.threads}, clock {a.clock}: " + "  ".join(
        f"{k} {statistics.median(v) * 1e3:.2f} ms" for k, v in res.items())
        + f"  old/new {statistics.median(res['old']) / statistics.median(res['new']):.2f}")


if __name__ == "__main__":
    main()
