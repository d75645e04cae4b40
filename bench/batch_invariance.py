"""Does a cpu conv give image i the same bits whatever batch it is in?  Runs conv2d_forward and
conv2d_backward (grad_x) on a batch of 8 and on slices of it, on one and two threads, and prints
per shape whether each slice's result equals the batch result's rows bit for bit (issue 15's
"bitwise when only N is chunked"), then how many shapes are equal on every slice.

    python bench/batch_invariance.py
"""
import numpy as np

import convkit

SLICES = ((0, 1), (1, 3), (3, 8), (0, 4))
# (N, C, H, W, F, K, stride, padding): suite-like shapes over the plan's algorithms
SHAPES = [(8, 3, 32, 32, 16, 3, 1, 1), (8, 16, 16, 16, 32, 3, 1, 1), (8, 64, 28, 28, 64, 3, 1, 1),
          (8, 6, 8, 8, 16, 5, 1, 2), (8, 1, 8, 8, 6, 5, 1, 2), (8, 32, 8, 8, 64, 3, 2, 1),
          (8, 64, 14, 14, 128, 1, 1, 0), (8, 16, 4, 4, 16, 3, 1, 1)]


def main():
    for threads in (1, 2):
        convkit.set_num_threads(threads)
        print(f"{threads} thread(s):")
        rng = np.random.default_rng(0)
        n_fwd = n_bwd = 0
        for N, C, H, W, F, K, s, p in SHAPES:
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            w = rng.standard_normal((F, C, K, K)).astype(np.float32)
            y = convkit.conv2d_forward(x, w, stride=s, padding=p)
            gy = rng.standard_normal(y.shape).astype(np.float32)
            gx = convkit.conv2d_backward(gy, x, w, stride=s, padding=p)[0]
            fwd = [bool(np.array_equal(convkit.conv2d_forward(x[a:b], w, stride=s, padding=p),
                                       y[a:b])) for a, b in SLICES]
            bwd = [bool(np.array_equal(convkit.conv2d_backward(gy[a:b], x[a:b], w, stride=s,
                                                               padding=p)[0], gx[a:b]))
                   for a, b in SLICES]
            n_fwd, n_bwd = n_fwd + all(fwd), n_bwd + all(bwd)
            print(f"  x{(N, C, H, W)} w{(F, C, K, K)} s{s} p{p}: forward equal {fwd}, "
                  f"grad_x equal {bwd}")
        print(f"  equal on every slice: forward {n_fwd}/{len(SHAPES)}, "
              f"grad_x {n_bwd}/{len(SHAPES)}")


if __name__ == "__main__":
    main()
