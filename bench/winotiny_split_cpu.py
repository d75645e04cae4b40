"""CPU time of winotiny's / weight_winotiny's two-region splits (issue 16, eleventh session).

    python bench/winotiny_split_cpu.py kernel [--rounds 15] [--calls 5]
    python bench/winotiny_split_cpu.py ab --a /path/A --b /path/B [--rounds 5] [--threads 2]

kernel: one process, one thread, the kernels called directly (_conv_winograd): the one-region
forward (groups of 8 images a task) against the split (fparts filter blocks after the shared
input transform), and grad_weight's parts against its split -- what the split costs one core
(its whole CPU work, which 16 threads share).  Interleaved: each round times A then B, the
least of --calls calls each by time.process_time; prints the median over rounds (us) and B/A.
Checks the two give the same bits.

ab: per layer (the SmallResNet's tiny maps: tiny_16_8x8, tiny_32_4x4 at batch 64,
small_16_8x8 at 128), convkit's forward and forward + backward through the API on --threads
threads, in a subprocess per checkout (cwd the checkout), A then B each round; process CPU
time (all threads), the least of 5 calls; the median over rounds (us) and B/A.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

LAYERS = {"tiny_16_8x8": (64, 16, 8), "tiny_32_4x4": (64, 32, 4), "small_16_8x8": (128, 16, 8)}


def _least(f, calls):
    f()
    best = float("inf")
    for _ in range(calls):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best * 1e6


def kernel(rounds, calls):
    from convkit.cpu import _conv_winograd as wg
    rng = np.random.default_rng(0)
    for name, (N, C, H) in LAYERS.items():
        F = C
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((F, C, 3, 3)) / 12).astype(np.float32)
        gy = rng.standard_normal((N, F, H, H)).astype(np.float32)
        b = rng.standard_normal(F).astype(np.float32)
        U = np.empty((16, F, C), np.float32)
        wg.winograd_filters(w, U, 1, False)
        ya, yb = np.empty_like(x), np.empty_like(x)
        per = wg.winotiny_floats(C, F, H, H, 1)
        wsa = np.zeros(per, np.float32)
        fp = 2 if N == 64 else 4        # (the plan's at 16 / 64 threads)
        sh, sper = wg.winotiny_split_floats(C, F, H, H, N, fp)
        wsb = np.zeros(sh + sper, np.float32)
        cols = (H // 2) ** 2 * 8
        chunk = max(1, 128 // cols)
        pg = max(4, chunk)
        sums = -(-(N // 8) // pg) * 16 * F * C
        wper = wg.winotiny_wgrad_floats(C, F, H, H, chunk)
        wwa = np.zeros(sums + wper, np.float32)
        sper2 = 8 * ((H + 2) ** 2 + H * H)
        wwb = np.zeros(sums + wg.winotiny_wgrad_split_floats(C, F, H, H, N) + sper2, np.float32)
        ga, gb = np.empty((F, C, 3, 3), np.float32), np.empty((F, C, 3, 3), np.float32)
        fa = lambda: wg.conv2d_forward_winotiny(x, U, b, True, ya, wsa, per, 1, 1)
        fb = lambda: wg.conv2d_forward_winotiny(x, U, b, True, yb, wsb, sper, 1, 1, fp)
        wa = lambda: wg.conv2d_grad_weight_winotiny(gy, x, ga, wwa, wper, pg, chunk, 1)
        wb = lambda: wg.conv2d_grad_weight_winotiny(gy, x, gb, wwb, sper2, pg, chunk, 1, True)
        res = {"forward": ([], []), "grad_weight": ([], [])}
        for _ in range(rounds):
            res["forward"][0].append(_least(fa, calls))
            res["forward"][1].append(_least(fb, calls))
            res["grad_weight"][0].append(_least(wa, calls))
            res["grad_weight"][1].append(_least(wb, calls))
        assert ya.tobytes() == yb.tobytes() and ga.tobytes() == gb.tobytes()
        for k, (a, bb) in res.items():
            ma, mb = statistics.median(a), statistics.median(bb)
            print(f"{name:13s} {k:11s} one-region {ma:8.1f} us  split {mb:8.1f} us  "
                  f"split/one {mb / ma:.3f}", flush=True)


_CHILD = r'''
import json, sys, time
import numpy as np, convkit
layers, threads = json.loads(sys.argv[1]), int(sys.argv[2])
convkit.set_num_threads(threads)
def least(f, calls=5):
    f()
    best = float("inf")
    for _ in range(calls):
        t = time.process_time(); f(); best = min(best, time.process_time() - t)
    return best * 1e6
out = {}
rng = np.random.default_rng(0)
for name, (N, C, H) in layers.items():
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((C, C, 3, 3)) / 12).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    gy = rng.standard_normal((N, C, H, H)).astype(np.float32)
    with convkit.use_backend("cpu"):
        fwd = lambda: convkit.conv2d_forward(x, w, b, padding=1)
        both = lambda: (fwd(), convkit.conv2d_backward(gy, x, w, padding=1, has_bias=True))
        out[name] = (least(fwd), least(both))
print(json.dumps(out))
'''


def ab(a, b, rounds, threads):
    runs = {"A": [], "B": []}
    env = dict(os.environ, CONVKIT_NUM_THREADS=str(threads))
    for _ in range(rounds):
        for key, path in (("A", a), ("B", b)):
            r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(LAYERS), str(threads)],
                               cwd=path, env=dict(env, PYTHONPATH=path), capture_output=True,
                               text=True, check=True)
            runs[key].append(json.loads(r.stdout))
    for name in LAYERS:
        for i, what in enumerate(("forward", "fwd+bwd")):
            ma = statistics.median(r[name][i] for r in runs["A"])
            mb = statistics.median(r[name][i] for r in runs["B"])
            print(f"{name:13s} {what:8s} A {ma:8.1f} us  B {mb:8.1f} us  B/A {mb / ma:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("kernel", "ab"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--a")
    ap.add_argument("--b")
    ap.add_argument("--threads", type=int, default=2)
    o = ap.parse_args()
    if o.mode == "kernel":
        kernel(o.rounds, o.calls)
    else:
        ab(o.a, o.b, o.rounds, o.threads)


if __name__ == "__main__":
    main()
