"""ReLU's backward three ways on LeNet5 / SmallResNet activation shapes, one thread of numpy,
best of 5 x 200 calls: the product grad * (y != 0) (the old rule: NaN for a NaN or inf
gradient at a dead unit), np.where's select (torch's rule, slow on a random mask), and
convkit.nn.layers._relu_grad (torch's rule from the bits).

    python bench/relu_grad_ab.py
"""
import timeit

import numpy as np

from convkit.nn.layers import _relu_grad


def main():
    rng = np.random.default_rng(0)
    print("shape                 product    where    bits   (us a call)")
    for shape in [(64, 16, 8, 8), (128, 32, 4, 4), (64, 6, 8, 8), (64, 120)]:
        y = np.maximum(rng.standard_normal(shape).astype(np.float32), 0)
        g = rng.standard_normal(shape).astype(np.float32)
        fs = (lambda: g * (y != 0), lambda: np.where(y != 0, g, np.float32(0)),
              lambda: _relu_grad(np, y, g))
        t = [min(timeit.repeat(f, number=200, repeat=5)) / 200 * 1e6 for f in fs]
        print(f"{str(shape):20s} {t[0]:8.1f} {t[1]:8.1f} {t[2]:7.1f}")


if __name__ == "__main__":
    main()
