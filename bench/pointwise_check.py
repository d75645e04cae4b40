"""The pointwise layers' passes against float64 (issue 16, the grad_weight on csrc/fgemm.h), and
their bits saved for a comparison with another checkout.

    python bench/pointwise_check.py [--save FILE.npz] [--compare FILE.npz] [--threads N]

For pw_14 (x (8,256,14,14), w (1024,256,1,1)) and rpn_cls1x1 (x (1,512,38,50), w
(18,512,1,1)), seeded normal operands: forward y, grad_x and grad_weight from convkit's cpu
backend, each's largest error against the float64 numpy product over its largest value, and
(--compare) whether each pass has the same bits as the saved run of another checkout.
"""
import argparse

import numpy as np

import convkit

LAYERS = {"pw_14": ((8, 256, 14, 14), (1024, 256, 1, 1)),
          "rpn_cls1x1": ((1, 512, 38, 50), (18, 512, 1, 1))}


def passes(xs, ws, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(ws[1])).astype(np.float32)
    N, C, H, W = xs
    gy = rng.standard_normal((N, ws[0], H, W)).astype(np.float32)
    y = convkit.conv2d_forward(x, w, None, backend="cpu")
    gx, gw, _ = convkit.conv2d_backward(gy, x, w, needs_input_grad=(True, True, False),
                                        backend="cpu")
    x64, w64, gy64 = (a.astype(np.float64) for a in (x, w, gy))
    W2 = w64[:, :, 0, 0]
    ref = {"y": np.einsum("fc,nchw->nfhw", W2, x64),
           "grad_x": np.einsum("fc,nfhw->nchw", W2, gy64),
           "grad_weight": np.einsum("nfhw,nchw->fc", gy64, x64)[:, :, None, None]}
    return {"y": y, "grad_x": gx, "grad_weight": gw}, ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        convkit.set_num_threads(args.threads)
    other = dict(np.load(args.compare)) if args.compare else None
    saved = {}
    for name, (xs, ws) in LAYERS.items():
        got, ref = passes(xs, ws)
        for k, v in got.items():
            err = float(np.abs(v - ref[k]).max() / np.abs(ref[k]).max())
            same = ""
            if other is not None:
                same = "same bits" if np.array_equal(other[f"{name}/{k}"].view(np.uint32),
                                                     v.view(np.uint32)) else "other bits"
            print(f"{name:11s} {k:12s} max err / max |value| {err:.2e} {same}")
            saved[f"{name}/{k}"] = v
    if args.save:
        np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
