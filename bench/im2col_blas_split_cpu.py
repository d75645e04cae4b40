"""One-core work of the BLAS im2col splits of the thirteenth session (issue 16, helper epyc13)
against the rules before them, per pass:

  forward      conv_plan.image_blocks (a power of two of even row blocks an image) against
               the old image_rows (ceil(Ho / BLAS_TASKS) rows, at least BLAS_MIN_POSITIONS / Wo)
  grad_x       conv_plan.grad_x_chans (a power of two of channel blocks) against the old rule
               (BLAS_GRAD_X_TASKS blocks over the groups, at least BLAS_GRAD_X_MIN_ROWS rows)
  grad_weight  conv_plan.blas_weight_split against the old split (tuning.BLAS_W_IDLE past any
               idle: the old blocks and parts kept); --try adds other units_w x nsplit splits

Each pass's runner (convkit.cpu.conv._fwd_im2col / _bwd_im2col, grad_x or grad_weight alone)
on ONE thread, old and new interleaved per round; median of the rounds' minimum-of-calls
process CPU ms.  These splits are set by the layer (the same at every thread count), so one
thread's CPU time is the whole team's work; the team's idle share is
bench/many_core_split.py's arithmetic.

    CONVKIT_DISABLE_AVX512=1 python bench/im2col_blas_split_cpu.py [--dtypes float32,float64]
        [--shapes strided_14,k4s2_56,convt28_adj,s2_20,pw_300] [--passes f,x,w]
        [--rounds 9] [--calls 3] [--try "strided_14:48x4;strided_14:64x2"]
        [--xchans "s2_20:24;s2_20:48"]    (other grad_x channel blocks too)
        [--error]     (each config's max error against torch's float64 too)

CONVKIT_DISABLE_AVX512=1 sends float32 to OpenBLAS (plain BLAS's plans; the script asserts
it); float64 is on OpenBLAS everywhere.
"""
import argparse
import dataclasses
import statistics
import time

import numpy as np

from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning as T

CAPS = P.ConvCaps(own_sgemm=False, depthwise3x3_level=2)       # plain BLAS
# (N, C, H, W), (F, C, K, K), stride, padding: many_core_split.py's EXTRA shapes and more whose
# plans the new rules change (a 10 x 10 strided output; a 300-channel pointwise grad_x; g_*)
SHAPES = {"strided_14": ((8, 64, 28, 28), (128, 64, 3, 3), 2, 1),
          "k4s2_56": ((8, 64, 56, 56), (64, 64, 4, 4), 2, 1),
          "convt28_adj": ((8, 32, 56, 56), (64, 32, 4, 4), 2, 1),
          "s2_20": ((3, 48, 20, 20), (32, 48, 3, 3), 2, 1),
          "pw_300": ((8, 300, 7, 7), (64, 300, 1, 1), 1, 0),
          # layers of a grid whose grad_weight the new split changes (wider blocks, fewer parts;
          # many parts of a long sum; more parts; wider blocks and more parts)
          "g_k5s2_56": ((8, 64, 56, 56), (64, 64, 5, 5), 2, 2),
          "g_16_112": ((3, 16, 112, 112), (16, 16, 3, 3), 1, 1),
          "g_16_112_b1": ((1, 16, 112, 112), (256, 16, 3, 3), 1, 1),
          "g_k5_14": ((8, 16, 14, 14), (256, 16, 5, 5), 1, 2)}


def old_image_rows(Ho, Wo):
    """The forward's rows per block before image_blocks."""
    return max(1, min(Ho, max(-(-Ho // T.BLAS_TASKS), -(-T.BLAS_MIN_POSITIONS // Wo))))


def old_grad_x_chans(Cg, G, KK):
    """grad_x's channels per block before (conv_plan.grad_x_chans, N = 0)."""
    return max(-(-Cg // -(-T.BLAS_GRAD_X_TASKS // G)),
               min(Cg, -(-T.BLAS_GRAD_X_MIN_ROWS // KK)))


def setup(name, dt, passes, tries=(), xchans=()):
    xs, wsh, st, pad = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dt)
    w = (rng.standard_normal(wsh) * 0.05).astype(dt)
    b = np.zeros(wsh[0], dt)
    s = P.ConvShape.of(xs, wsh, (st, st), (pad,) * 4, (1, 1), 1)
    Ho, Wo = s.out
    gy = rng.standard_normal((xs[0], wsh[0], Ho, Wo)).astype(dt)
    y = np.zeros_like(gy)
    gx = np.zeros_like(x)
    gw = np.zeros(wsh, dt)
    plan = P.plan_conv(s, dt, 16, CAPS, 256 * 2**20)
    calls = {}
    if "f" in passes and plan.forward.algo == "im2col":
        new = dataclasses.replace(plan.forward, threads=1)
        p = new.params
        old = dataclasses.replace(new, params=dict(p, rows=old_image_rows(Ho, Wo), blocks=0,
                                                   per_thread=p["per_thread"] * 2))
        for key, stp in (("f old", old), ("f new", new)):
            calls[key] = (lambda stp=stp: cc._fwd_im2col(x, w, b, False, y, s, stp),
                          "rows %d/%d" % (stp.params["rows"], stp.params.get("blocks", 0)), y)
    bw = dataclasses.replace(plan.grad_x, threads=1)
    if "x" in passes and bw.algo in ("im2col", "pointwise"):
        p = bw.params
        KK = wsh[2] * wsh[3]
        old = dataclasses.replace(bw, params=dict(p, chans_x=old_grad_x_chans(xs[1], 1, KK),
                                                  per_thread=p["per_thread"] * 2))
        others = [("x c%d" % c, dataclasses.replace(bw, params=dict(
            p, chans_x=c, per_thread=p["per_thread"] * 2))) for c in xchans]
        for key, stp in [("x old", old), ("x new", bw)] + others:
            calls[key] = (lambda stp=stp: cc._bwd_im2col(gy, x, w, gx, gw, None, s, stp,
                                                         True, False),
                          "chans %d" % stp.params["chans_x"], gx)
    bw = dataclasses.replace(plan.grad_weight, threads=1)
    if "w" in passes and bw.algo == "im2col":
        keep = T.BLAS_W_IDLE
        T.BLAS_W_IDLE = 2.0
        try:
            old = dataclasses.replace(P.plan_conv(s, dt, 16, CAPS, 256 * 2**20).grad_weight,
                                      threads=1)
        finally:
            T.BLAS_W_IDLE = keep
        steps = {"w old": old, "w new": bw}
        for t in tries:     # (other splits: UxP, units_w and nsplit, rows_w as the old's)
            u, n = (int(v) for v in t.split("x"))
            rows = max(1, min(old.params["rows_w"], -(-Ho // -(-n // xs[0]))))
            steps["w " + t] = dataclasses.replace(bw, params=dict(
                bw.params, units_w=u, nsplit=n, rows_w=rows,
                per_thread=max(bw.params["per_thread"], u * wsh[3] * rows * Wo + xs[3] + st)))
        for key, stp in steps.items():
            calls[key] = (lambda stp=stp: cc._bwd_im2col(gy, x, w, gx, gw, None, s, stp,
                                                         False, True),
                          "u%d x%d r%d" % (stp.params["units_w"], stp.params["nsplit"],
                                           stp.params["rows_w"]), gw)
    return calls, (x, w, gy, st, pad)


def torch_refs(x, w, gy, st, pad):
    """{"f": y, "x": grad_x, "w": grad_weight} of torch in float64 (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=st, padding=pad)
    yt.backward(torch.tensor(gy.astype(np.float64)))
    return {"f": yt.detach().numpy(), "x": xt.grad.numpy(), "w": wt.grad.numpy()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--passes", default="f,x,w")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--error", action="store_true",
                    help="also each config's max error against torch's float64 (relative to "
                         "the largest value)")
    ap.add_argument("--xchans", default="", help="other grad_x channel blocks, NAME:C;...")
    ap.add_argument("--try", dest="tries", default="",
                    help="other grad_weight splits, NAME:UxP;NAME:UxP (units_w x nsplit)")
    a = ap.parse_args()
    assert not cc._OWN_SGEMM, "run with CONVKIT_DISABLE_AVX512=1 (float32 on OpenBLAS)"
    for dtn in a.dtypes.split(","):
        for name in a.shapes.split(","):
            tries = [t.split(":")[1] for t in a.tries.split(";") if t.startswith(name + ":")]
            xchans = [int(t.split(":")[1]) for t in a.xchans.split(";")
                      if t.startswith(name + ":")]
            calls, args = setup(name, np.dtype(dtn), a.passes.split(","), tries, xchans)
            refs = torch_refs(*args) if a.error else None
            times = {k: [] for k in calls}
            for _ in range(a.rounds):
                for k, (call, _, _) in calls.items():
                    best = float("inf")
                    for _ in range(a.calls):
                        t0 = time.process_time()
                        call()
                        best = min(best, time.process_time() - t0)
                    times[k].append(best * 1e3)
            for k, (call, what, out) in calls.items():
                m = statistics.median(times[k])
                base = statistics.median(times[k[:2] + "old"])
                err = ""
                if refs is not None:    # (max |error| over max |torch float64|; bits as old's)
                    call()
                    ref = refs[k[0]]
                    err = f"  err {np.abs(out - ref).max() / np.abs(ref).max():.2e}"
                    if k.endswith("old"):
                        old_bits = out.tobytes()
                    else:
                        err += " bits %s old" % ("=" if out.tobytes() == old_bits else "!=")
                print(f"{dtn} {name:12s} {k:8s} {what:14s} {m:8.3f} ms  x{m / base:.3f}  "
                      f"(rounds {min(times[k]):.3f}..{max(times[k]):.3f}){err}", flush=True)


if __name__ == "__main__":
    main()
