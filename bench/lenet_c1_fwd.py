"""lenet_c1's forward (64 x 1 x 28 x 28 * 6 x 1 x 5 x 5, padding 2, bias; convkit.benchmark.cases)
on the cpu backend against torch: least process CPU us per call (time.process_time over
--reps calls, best of --rounds) at --threads threads, torch on as many; with --callgrind the
convkit forward alone --reps times (for valgrind --tool=callgrind --toggle-collect=_run).

    python bench/lenet_c1_fwd.py [--threads 1] [--batch 64] [--reps 50] [--rounds 7]
    valgrind --tool=callgrind --toggle-collect=_run python bench/lenet_c1_fwd.py --callgrind
"""
import argparse
import time

import numpy as np

import convkit
import convkit.functional as Fn
from convkit.cpu import conv_plan  # noqa: F401  (the plan shown)

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--reps", type=int, default=50)
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--callgrind", action="store_true")
a = ap.parse_args()
convkit.set_num_threads(a.threads)
rng = np.random.default_rng(0)
x = rng.standard_normal((a.batch, 1, 28, 28)).astype(np.float32)
w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
b = rng.standard_normal(6).astype(np.float32)


def ck():
    return Fn.conv2d_forward(x, w, b, stride=1, padding=2, backend="cpu")


def _run(reps):
    for _ in range(reps):
        ck()


if a.callgrind:
    ck()
    _run(a.reps)
    raise SystemExit


def best(f):
    f()
    out = []
    for _ in range(a.rounds):
        t = time.process_time()
        for _ in range(a.reps):
            f()
        out.append((time.process_time() - t) / a.reps * 1e6)
    return min(out)


import torch  # noqa: E402

torch.set_num_threads(a.threads)
tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)


def th():
    with torch.no_grad():
        return torch.nn.functional.conv2d(tx, tw, tb, stride=1, padding=2)


c, t = best(ck), best(th)
print(f"threads {a.threads} batch {a.batch}: convkit {c:.1f} us  torch {t:.1f} us  "
      f"torch/convkit {t / c:.2f}")
