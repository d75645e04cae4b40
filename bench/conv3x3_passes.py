"""Per-pass times of the suite's big 3x3 layers, convkit cpu against torch, in one process,
interleaved: forward, grad_x alone, grad_weight alone (+ grad_bias), each side's median of
``--calls`` calls after a warm-up, per round; prints the median over rounds of the times and
of torch_ms / convkit_ms (> 1: convkit faster).  convkit.get_num_threads() threads, torch the same.

    python bench/conv3x3_passes.py [--layers vgg_56,res_28,res_14,rpn_3x3] [--rounds 5]
        [--threads N] [--passes fwd,gx,gw]

torch: F.conv2d, torch.nn.grad.conv2d_input and conv2d_weight (aten's convolution_backward with
one output each); convkit: convkit.conv2d_forward and convkit.conv2d_backward (grad_x:
convkit.cpu.conv.conv2d_grad_input; grad_weight: needs_input_grad=False, has_bias=True).
"""
import argparse
import statistics

import numpy as np
import torch

import convkit
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc
from wino_ab import _med     # (bench/ is the script's folder: on sys.path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="vgg_56,res_28,res_14,rpn_3x3")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--passes", default="fwd,gx,gw")
    a = ap.parse_args()
    if a.threads:
        convkit.set_num_threads(a.threads)
    torch.set_num_threads(convkit.get_num_threads())
    passes = a.passes.split(",")
    cases = {c.name: c for c in CASES}
    for name in a.layers.split(","):
        c = cases[name]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
        w = (rng.standard_normal((c.F, c.C // c.groups, c.K, c.K)) * 0.05).astype(np.float32)
        b = np.zeros(c.F, np.float32)
        s, p = c.stride, c.pad
        y = convkit.conv2d_forward(x, w, b, stride=s, padding=p)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
        bt = torch.from_numpy(b)
        run = {
            "fwd": (lambda: convkit.conv2d_forward(x, w, b, stride=s, padding=p),
                    lambda: torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p)),
            "gx": (lambda: cc.conv2d_grad_input(gy, w, x.shape, (s, s), (p, p, p, p), (1, 1), 1),
                   lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gyt, stride=s, padding=p)),
            "gw": (lambda: convkit.conv2d_backward(gy, x, w, stride=s, padding=p,
                                                   needs_input_grad=False, has_bias=True),
                   lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, gyt, stride=s, padding=p)),
        }
        res = {q: ([], []) for q in passes}
        with torch.no_grad():
            for _ in range(a.rounds):
                for q in passes:
                    res[q][0].append(_med(run[q][0], a.calls))
                    res[q][1].append(_med(run[q][1], a.calls))
        for q in passes:
            ck, th = res[q]
            r = [t / k for k, t in zip(ck, th)]
            print(f"{name:8s} {q:4s} convkit {statistics.median(ck) * 1e3:7.2f} ms  torch "
                  f"{statistics.median(th) * 1e3:7.2f} ms  torch/convkit {statistics.median(r):.2f}"
                  f" (spread {min(r):.2f}-{max(r):.2f})", flush=True)


if __name__ == "__main__":
    main()
