"""convt_28's forward+backward on convkit's cpu backend right after torch's (as the interleaved
bench runs them), against convkit alone: how much another OpenMP runtime's spinning threads
cost a short op on 2 cores.

    python bench/convt_after_torch.py [--calls 16]
    OMP_WAIT_POLICY=passive python bench/convt_after_torch.py     # both runtimes sleep at once

torch's wheel brings its own libgomp; after each parallel region its workers spin-wait (the
default policy) for a while, on the same 2 cores convkit's team then needs.  Prints each call's
ms: convkit alone (after a warm-up), then convkit and torch alternating.
"""
import argparse
import time

import numpy as np
import torch

import convkit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=16)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    w = rng.standard_normal((64, 32, 4, 4)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)

    def ours():
        t0 = time.perf_counter()
        convkit.conv_transpose2d_forward(x, w, b, stride=2, padding=1)
        convkit.conv_transpose2d_backward(gy, x, w, stride=2, padding=1)
        return (time.perf_counter() - t0) * 1e3

    torch.set_num_threads(convkit.get_num_threads())
    tx, tw, tb = (torch.from_numpy(v).requires_grad_() for v in (x, w, b))
    tg = torch.from_numpy(gy)

    def theirs():
        t0 = time.perf_counter()
        torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=2, padding=1).backward(tg)
        return (time.perf_counter() - t0) * 1e3

    for _ in range(3):
        ours()
        theirs()
    alone = [ours() for _ in range(a.calls)]
    mixed = [(ours(), theirs()) for _ in range(a.calls)]
    med = lambda v: float(np.median(v))
    print(f"convkit alone       {med(alone):6.2f} ms  " + " ".join(f"{v:.1f}" for v in alone))
    print(f"convkit after torch {med([m[0] for m in mixed]):6.2f} ms  "
          + " ".join(f"{m[0]:.1f}" for m in mixed))
    print(f"torch after convkit {med([m[1] for m in mixed]):6.2f} ms  "
          + " ".join(f"{m[1]:.1f}" for m in mixed))


if __name__ == "__main__":
    main()
