"""Two one-core micro timings behind the eighth session's (helper resnet7) small-ResNet changes,
least thread CPU time per call over 9 blocks (time.thread_time: waiting for a core under load
is not counted):

- ``moderate``: convkit.cpu._conv_im2col.all_moderate on a (64, 16, 8, 8) float32 array (the
  non-finite / large-value check before every batch-path conv; csrc/moderate.h);
- ``relu``: NumPy's maximum against the scalar 0 and against a zero array of the same shape
  (what convkit.nn.ReLU's forward now does; the same bits), (64, 16, 8, 8) and (64, 32, 4, 4).

    python bench/resnet7_micro.py                          # this checkout
    PYTHONPATH=<other checkout> python bench/resnet7_micro.py moderate
"""
import sys
import time

import numpy as np


def least(fn, reps):
    best = float("inf")
    for _ in range(9):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.thread_time() - t0) / reps)
    return best * 1e6


def main():
    what = sys.argv[1:] or ["moderate", "relu"]
    rng = np.random.default_rng(0)
    if "moderate" in what:
        import convkit
        from convkit.cpu import _conv_im2col

        x = rng.standard_normal((64, 16, 8, 8)).astype(np.float32)
        print(f"{convkit.__file__}: all_moderate (64, 16, 8, 8) float32 "
              f"{least(lambda: _conv_im2col.all_moderate(x), 2000):.2f} us")
    if "relu" in what:
        for shape in ((64, 16, 8, 8), (64, 32, 4, 4)):
            x = rng.standard_normal(shape).astype(np.float32)
            z = np.zeros(shape, np.float32)
            assert np.maximum(x, 0).tobytes() == np.maximum(x, z).tobytes()
            print(f"maximum {shape}: scalar 0 {least(lambda: np.maximum(x, 0), 200):.1f} us, "
                  f"zero array {least(lambda: np.maximum(x, z), 200):.1f} us")


if __name__ == "__main__":
    main()
