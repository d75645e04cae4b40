"""Accuracy of the cpu backend's Winograd F(2x2, 3x3) and F(4x4, 3x3) (and of im2col and torch's
own float32 conv, for scale) on the suite's 3x3 layers, forward, grad_x and grad_weight, float32
against torch float64 (grad_weight: with F(4x4) the plan's transposed F(4x4), "weight_winograd";
with F(2x2) and im2col, im2col): the largest error over the largest reference value, and the RMS error over the
RMS reference value.

    python bench/wino_accuracy.py [--layers vgg_56,res_28,res_14,rpn_3x3] [--seed 0] [--no-mix]

--no-mix: F(4x4)'s edge tiles by F(4x4) too (_conv_winograd.winograd4_mix_edges off; by default
the plan takes the last tile row / column by F(2x2) where Ho % 4 / Wo % 4 is 1 or 2).

Inputs are standard normal (x, w, grad_y).  The algorithm is forced through the plan
(convkit.cpu.conv_plan.winograd_tile, the rule's choice of tile, and convkit.cpu.conv's
_prefer_winograd for im2col), not picked by the rule.
"""
import argparse

import numpy as np
import torch

import convkit
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P


def _run(x, w, gy, pad, algo):
    tile_rule, prefer = P.winograd_tile, cc._prefer_winograd
    if algo == "im2col":
        cc._prefer_winograd = lambda *a: False
    else:
        tile = 4 if algo == "F(4x4)" else 2
        P.winograd_tile = lambda *a: tile
    cc._plans.clear()
    try:
        with convkit.use_backend("cpu"):
            s, Ho, Wo, plan = cc._plan(x, w, (1, 1), (pad,) * 4, (1, 1), 1)
            if algo != "im2col":
                assert plan.forward.params["tile"] == plan.grad_x.params["tile"] == tile
            y = convkit.conv2d_forward(x, w, None, padding=pad)
            gx, gw, _ = convkit.conv2d_backward(gy, x, w, padding=pad)
            if algo == "F(4x4)" and not cc._OWN_SGEMM:
                assert plan.grad_weight.algo == "weight_winograd"
    finally:
        P.winograd_tile, cc._prefer_winograd = tile_rule, prefer
        cc._plans.clear()
    return y, gx, gw


def _errors(got, want):
    e = got.astype(np.float64) - want
    return (np.abs(e).max() / np.abs(want).max(), np.sqrt((e ** 2).mean() / (want ** 2).mean()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="vgg_56,res_28,res_14,rpn_3x3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mix", action="store_true")
    a = ap.parse_args()
    if a.no_mix:
        from convkit.cpu import _conv_winograd
        _conv_winograd.winograd4_mix_edges(False)
    cases = {c.name: c for c in CASES}
    print("| layer | pass | F(2x2) max / rms | F(4x4) max / rms | im2col max / rms "
          "| torch f32 max / rms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in a.layers.split(","):
        c = cases[name]
        rng = np.random.default_rng(a.seed)
        x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
        w = rng.standard_normal((c.F, c.C, c.K, c.K)).astype(np.float32)
        pad = c.pad
        xt = torch.from_numpy(x).double().requires_grad_()
        wt = torch.from_numpy(w).double().requires_grad_()
        yt = torch.nn.functional.conv2d(xt, wt, padding=pad)
        gy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
        yt.backward(torch.from_numpy(gy).double())
        want = {"forward": yt.detach().numpy(), "grad_x": xt.grad.numpy(),
                "grad_weight": wt.grad.numpy()}
        x32 = torch.from_numpy(x).requires_grad_()
        w32 = torch.from_numpy(w).requires_grad_()
        y32 = torch.nn.functional.conv2d(x32, w32, padding=pad)
        y32.backward(torch.from_numpy(gy))
        got = {"torch f32": (y32.detach().numpy(), x32.grad.numpy(), w32.grad.numpy())}
        for algo in ("F(2x2)", "F(4x4)", "im2col"):
            got[algo] = _run(x, w, gy, pad, algo)
        for i, pas in enumerate(("forward", "grad_x", "grad_weight")):
            cells = ["%.2e / %.2e" % _errors(got[k][i], want[pas])
                     for k in ("F(2x2)", "F(4x4)", "im2col", "torch f32")]
            print(f"| {name} | {pas} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
