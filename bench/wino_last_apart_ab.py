"""F(4x4)'s packed forward with the images' last tile rows apart, skipped by the GEMMs of the
six planes whose outputs those rows do not store (where Ho % 4; _conv_winograd.winograd4_last_apart)
against all 36 GEMMs over every tile: interleaved in one process, one thread, CPU time (time.process_time), best of 3 calls a
round, medians over rounds; forward and grad_x (conv2d_grad_input) through the API.
Checks the two give the same bits.

    [CONVKIT_DISABLE_AVX512=1] python bench/wino_last_apart_ab.py [res_14,vgg_56,res_28,rpn_3x3] [rounds]
"""
import sys, time, statistics, ctypes, numpy as np, convkit
m = ctypes.CDLL(None).mallopt; m.argtypes = (ctypes.c_int, ctypes.c_int); m(-3, 32 << 20); m(-1, 64 << 20)
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc, _conv_winograd as wg
layers = (sys.argv[1] if len(sys.argv) > 1 else "res_14,vgg_56,res_28,rpn_3x3").split(",")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
convkit.set_num_threads(1)
cases = {c.name: c for c in CASES}


def cpu(f, calls=3):
    best = 1e9
    for _ in range(calls):
        t = time.process_time(); f(); best = min(best, time.process_time() - t)
    return best


for name in layers:
    c = cases[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(c.F, np.float32)
    y = convkit.conv2d_forward(x, w, b, stride=1, padding=1)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    run = {"fwd": lambda: convkit.conv2d_forward(x, w, b, stride=1, padding=1),
           "gx": lambda: cc.conv2d_grad_input(gy, w, x.shape, (1, 1), (1, 1, 1, 1), (1, 1), 1)}
    for q, f in run.items():
        outs, ts = {}, {True: [], False: []}
        for on in (True, False):
            wg.winograd4_last_apart(on); outs[on] = f().copy()
        same = np.array_equal(outs[True].view(np.uint32), outs[False].view(np.uint32))
        for _ in range(rounds):
            for on in (False, True):
                wg.winograd4_last_apart(on); f(); ts[on].append(cpu(f))
        wg.winograd4_last_apart(True)
        a, bb = statistics.median(ts[False]), statistics.median(ts[True])
        print(f"{name:8s} {q:4s} all      {a*1e3:7.2f} ms  apart {bb*1e3:7.2f} ms  "
              f"ratio {a/bb:.3f}  same bits {same}", flush=True)
