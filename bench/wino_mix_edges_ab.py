"""F(4x4)'s packed forward with mixed edge tiles (the last tile row / column by F(2x2) where
Ho % 4 / Wo % 4 is 1 or 2; _conv_winograd.winograd4_mix_edges) against every tile by F(4x4)
(with wino10's last rows apart): interleaved in one process, one thread, CPU time
(time.process_time), best of 3 calls a round, medians over rounds; forward and grad_x
(conv2d_grad_input) through the API.  Checks that the outputs off the edge tiles keep their
bits, and prints both ways' max error against torch float64 (relative to the output's max).

    [CONVKIT_DISABLE_AVX512=1] python bench/wino_mix_edges_ab.py [res_14,rpn_3x3] [rounds]
"""
import sys, time, statistics, ctypes, numpy as np, torch, convkit
m = ctypes.CDLL(None).mallopt; m.argtypes = (ctypes.c_int, ctypes.c_int); m(-3, 32 << 20); m(-1, 64 << 20)
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc, _conv_winograd as wg
layers = (sys.argv[1] if len(sys.argv) > 1 else "res_14,rpn_3x3").split(",")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
convkit.set_num_threads(1)
torch.set_num_threads(1)
cases = {c.name: c for c in CASES}


def cpu(f, calls=3):
    best = 1e9
    for _ in range(calls):
        t = time.process_time(); f(); best = min(best, time.process_time() - t)
    return best


def interior(a, H, W):
    """the outputs off the last tile row / column where those go by F(2)"""
    h = H - H % 4 if H % 4 in (1, 2) else H
    w = W - W % 4 if W % 4 in (1, 2) else W
    return a[:, :, :h, :w]


for name in layers:
    c = cases[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(c.F, np.float32)
    y = convkit.conv2d_forward(x, w, b, stride=1, padding=1)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    tx, tw_, tg = (torch.from_numpy(a).double() for a in (x, w, gy))
    refs = {"fwd": torch.nn.functional.conv2d(tx, tw_, padding=1).numpy(),
            "gx": torch.nn.grad.conv2d_input(tx.shape, tw_, tg, padding=1).numpy()}
    run = {"fwd": lambda: convkit.conv2d_forward(x, w, b, stride=1, padding=1),
           "gx": lambda: cc.conv2d_grad_input(gy, w, x.shape, (1, 1), (1, 1, 1, 1), (1, 1), 1)}
    for q, f in run.items():
        outs, ts = {}, {True: [], False: []}
        for on in (True, False):
            wg.winograd4_mix_edges(on); outs[on] = f().copy()
        same = np.array_equal(interior(outs[True], c.H, c.W).view(np.uint32),
                              interior(outs[False], c.H, c.W).view(np.uint32))
        sc = np.abs(refs[q]).max()
        err = {on: np.abs(outs[on] - refs[q]).max() / sc for on in outs}
        edge = {on: np.abs(outs[on] - refs[q])[:, :, -2:, :].max() / sc for on in outs}
        for _ in range(rounds):
            for on in (False, True):
                wg.winograd4_mix_edges(on); f(); ts[on].append(cpu(f))
        wg.winograd4_mix_edges(True)
        a, bb = statistics.median(ts[False]), statistics.median(ts[True])
        print(f"{name:8s} {q:4s} F(4) edges {a*1e3:7.2f} ms  mixed {bb*1e3:7.2f} ms  "
              f"ratio {a/bb:.3f}  interior same bits {same}  max rel err {err[False]:.2e} -> "
              f"{err[True]:.2e} (last rows {edge[False]:.2e} -> {edge[True]:.2e})", flush=True)
