"""F(2x2) against F(4x4) on the Winograd kernel itself (convkit/cpu/_conv_winograd.pyx), per task
size, one thread, CPU time (time.process_time: a shared host's other processes do not count),
with torch's own conv (one thread) for scale.  The numbers behind tuning.py's WINOGRAD4_*.

    python bench/wino_tiles.py [--configs "(2,7),(4,4),(4,16)"] [--layers vgg_56,res_28]

A config is (tile, tile rows per task); each layer row prints the smallest of 5 calls, best of 3
rounds, in ms.  Includes the filter transform and the workspace fill of every call.
"""
import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from convkit.benchmark.cases import CASES
from convkit.cpu import _conv_winograd as wg


def run(x, w, pad, tile, trows):
    N, C, H, W = x.shape
    F = w.shape[0]
    Ho, Wo = H + 2 * pad - 2, W + 2 * pad - 2
    E = (tile + 2) ** 2
    U = np.empty((E, F, C), x.dtype)
    wg.winograd_filters(w, U, 1, False)
    tw = -(-Wo // tile)
    per = E * (C + F) * trows * tw + (wg.winograd4_scratch(trows, tw) if tile == 4
                                      else 8 * (2 * tw + 2))
    ws = np.zeros(per, x.dtype)
    y = np.empty((N, F, Ho, Wo), x.dtype)
    wg.conv2d_forward_winograd(x, U, np.zeros(F, x.dtype), False, y, ws, per, trows, pad, pad, 1,
                               np.zeros((0, 1), np.float32), tile)
    return y


def cpu_ms(f, n=5):
    f()
    ts = []
    for _ in range(n):
        t = time.process_time()
        f()
        ts.append(time.process_time() - t)
    return min(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="(2,7),(4,4),(4,8),(4,16)")
    ap.add_argument("--layers", default="vgg_56,res_28,res_14,rpn_3x3")
    a = ap.parse_args()
    configs = list(eval("[" + a.configs + "]"))
    cases = {c.name: c for c in CASES}
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    for name in a.layers.split(","):
        c = cases[name]
        x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
        w = rng.standard_normal((c.F, c.C, 3, 3)).astype(np.float32)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        res = {}
        with threadpool_limits(1, "blas"):
            for _ in range(3):
                res.setdefault("torch", []).append(
                    cpu_ms(lambda: torch.nn.functional.conv2d(xt, wt, padding=c.pad)))
                for tile, trows in configs:
                    res.setdefault(f"F{tile} trows {trows}", []).append(
                        cpu_ms(lambda: run(x, w, c.pad, tile, trows)))
        print(name, ", ".join(f"{k} {min(v):.1f}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
