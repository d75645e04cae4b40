"""grad_weight of the suite's F(4x4) 3x3 layers, formulations and weight_winograd's knobs side
by side: one thread, process CPU time per call (best of --calls after a warm-up), median over
--rounds interleaved rounds, torch's conv2d_weight (1 thread) in the same rounds.

    python bench/wgrad_wino_ab.py [--layers vgg_56,res_14,res_28] [--rounds 5] [--calls 3]
        [--configs plan,wino:TROWS:COLS:PARTS,rowgemm,im2col,...]

plan: convkit.conv2d_backward(needs_input_grad=False, has_bias=False) as planned;
wino:T:C:P[:fg]: _conv_winograd.conv2d_grad_weight_winograd with those trows / cols / parts
(cols and trows order no sum: same bits as the plan's; parts do), its GEMMs on gemm_fixed
(the own AVX-512 GEMM where it runs), with :fg on csrc/fgemm.h (same bits);
rowgemm: csrc/rowgemm.h's weight gradient (plan_weight_rowgemm's kernel, 64 filters a task);
im2col: the full-rate plan's im2col grad_weight (tuning.HALF_RATE_AVX2 emptied);
planown: the plan with tuning.WGRAD_WINO_FGEMM = False (its GEMMs on the own AVX-512 GEMM).
"""
import argparse, statistics, time
import numpy as np, torch
import convkit
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc, conv_plan as cp, tuning, _conv_winograd as W


def _with(cfg, f):
    """f() under cfg's tuning (the plan cache cleared before and after)."""
    name, val = (("HALF_RATE_AVX2", frozenset()) if cfg == "im2col"
                 else ("WGRAD_WINO_FGEMM", False))
    old = getattr(tuning, name)
    setattr(tuning, name, val); cc._plans.clear()
    try:
        f()
    finally:
        setattr(tuning, name, old); cc._plans.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="vgg_56,res_14,res_28")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--configs", default="plan,rowgemm,im2col")
    a = ap.parse_args()
    convkit.set_num_threads(1); torch.set_num_threads(1)
    cases = {c.name: c for c in CASES}
    for name in a.layers.split(","):
        c = cases[name]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
        w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
        gy = rng.standard_normal((c.N, c.F, c.H, c.W)).astype(np.float32)
        gw = np.empty_like(w)
        s = cp.ConvShape.of(x.shape, w.shape, (1, 1), (1, 1, 1, 1), (1, 1), 1)
        runs = {"torch": lambda: torch.nn.grad.conv2d_weight(
            torch.from_numpy(x), w.shape, torch.from_numpy(gy), padding=1)}
        for cfg in a.configs.split(","):
            if cfg == "plan":
                runs[cfg] = lambda: convkit.conv2d_backward(gy, x, w, stride=1, padding=1,
                                                            needs_input_grad=False)
            elif cfg.startswith("wino:"):
                tr, co, pa = map(int, cfg.split(":")[1:4])
                fg = cfg.endswith(":fg")
                big, per = W.winograd4_wgrad_floats(c.N, c.C, c.F, c.H, c.W, pa)
                ws = np.zeros(big + per, np.float32)
                runs[cfg] = (lambda tr=tr, co=co, pa=pa, ws=ws, fg=fg:
                             W.conv2d_grad_weight_winograd(gy, x, gw, ws, 1, 1, tr, co, pa, 1,
                                                           True, fg))
            elif cfg == "rowgemm":
                Hp, Wp = c.H + 2, c.W + 2
                floats = Hp * Wp * c.C + c.F * c.H * c.W + c.F * 9 * c.C
                st = cp.Step("weight_rowgemm", 1, {"filters": min(c.F, tuning.WGRAD_RG_FILTERS),
                                                   "khs": 3, "kc": tuning.WGRAD_RG_PASS,
                                                   "floats": floats})
                runs[cfg] = lambda st=st: cc._bwd_weight_rowgemm(gy, x, w, None, gw, None, s, st,
                                                                 False, True)
            elif cfg in ("im2col", "planown"):
                runs[cfg] = lambda cfg=cfg: _with(cfg, lambda: convkit.conv2d_backward(
                    gy, x, w, stride=1, padding=1, needs_input_grad=False))
        res = {k: [] for k in runs}
        with torch.no_grad():
            for _ in range(a.rounds):
                for k, f in runs.items():
                    f(); best = 1e9
                    for _ in range(a.calls):
                        t = time.process_time(); f(); best = min(best, time.process_time() - t)
                    res[k].append(best)
        tm = statistics.median(res["torch"])
        for k, v in res.items():
            m = statistics.median(v)
            print(f"{name:8s} {k:18s} {m * 1e3:7.2f} ms  torch/this {tm / m:.2f}", flush=True)


if __name__ == "__main__":
    main()
