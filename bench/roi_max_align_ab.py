"""roi_max_align against roi_align (and roi_avg_pool against roi_pool) on the cpu, on the suite's
RoI case (convkit/benchmark/cases.py), forward and forward+backward, the ops interleaved round by
round so a loaded machine slows both alike, with convkit bench's allocator settings; prints each op's median and the ratios.

    CONVKIT_NUM_THREADS=1 python bench/roi_max_align_ab.py [rounds] [--save FILE]

``--save FILE`` also writes roi_max_align's outputs (y, argmax, grad_x) for the case and for
inputs with NaN/inf features and out-of-image boxes, so two builds' bits can be compared
(``--compare FILE``).
"""
from __future__ import annotations

import sys
import time

import numpy as np

import convkit as ck
from convkit.benchmark import set_mallopt
from convkit.benchmark.cases import CASES, random_rois


def _case(name):
    return next(c for c in CASES if c.name == name)


def _ops(rng):
    c = _case("roi_align")
    x = rng.standard_normal(c.shape, np.float32)
    rois = random_rois(rng, c.K, c.shape[0], c.image_hw)
    gy = rng.standard_normal(c.out_shape, np.float32)
    o, sc, sr = (c.out, c.out), c.scale, c.sampling_ratio
    _, am = ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")
    _, pam = ck.roi_pool_forward(x, rois, o, sc, backend="cpu")

    def max_fb():
        _, a = ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")
        return ck.roi_max_align_backward(gy, a, rois, x.shape, o, sc, sr, False, backend="cpu")

    def align_fb():
        ck.roi_align_forward(x, rois, o, sc, sr, False, backend="cpu")
        return ck.roi_align_backward(gy, rois, x.shape, o, sc, sr, False, backend="cpu")

    def pool_fb():
        _, a = ck.roi_pool_forward(x, rois, o, sc, backend="cpu")
        return ck.roi_pool_backward(gy, a, x.shape, rois=rois, backend="cpu")

    def avg_fb():
        ck.roi_avg_pool_forward(x, rois, o, sc, backend="cpu")
        return ck.roi_avg_pool_backward(gy, rois, x.shape, o, sc, backend="cpu")

    return {
        "align fwd": lambda: ck.roi_align_forward(x, rois, o, sc, sr, False, backend="cpu"),
        "max_align fwd": lambda: ck.roi_max_align_forward(x, rois, o, sc, sr, False,
                                                          backend="cpu"),
        "align fwd+bwd": align_fb,
        "max_align fwd+bwd": max_fb,
        "max_align bwd": lambda: ck.roi_max_align_backward(gy, am, rois, x.shape, o, sc, sr,
                                                           False, backend="cpu"),
        "pool fwd": lambda: ck.roi_pool_forward(x, rois, o, sc, backend="cpu"),
        "avg_pool fwd": lambda: ck.roi_avg_pool_forward(x, rois, o, sc, backend="cpu"),
        "pool fwd+bwd": pool_fb,
        "avg_pool fwd+bwd": avg_fb,
    }


def _outputs():
    """roi_max_align's outputs on the case's inputs and on awkward ones, float32 and float64."""
    rng = np.random.default_rng(7)
    out = {}
    c = _case("roi_align")
    for dt in (np.float32, np.float64):
        for tag in ("case", "odd"):
            N, C, H, W = (2, 37, 19, 23) if tag == "odd" else c.shape
            x = rng.standard_normal((N, C, H, W)).astype(dt)
            if tag == "odd":
                m = rng.random(x.shape)
                x[m < 0.02] = np.nan
                x[(m >= 0.02) & (m < 0.04)] = np.inf
                x[(m >= 0.04) & (m < 0.06)] = -np.inf
                x[:, :5] = np.round(x[:, :5])          # many ties
                rois = random_rois(rng, 64, N, (H * 16, W * 16), 4).astype(dt)
                rois[::3, 1:] *= 1.6                   # past the right/bottom edges
                rois[1::5, 1:] -= 100                  # past the left/top edges
            else:
                rois = random_rois(rng, 128, N, c.image_hw).astype(dt)
            gy = rng.standard_normal((rois.shape[0], C, 7, 7)).astype(dt)
            if tag == "odd":                           # a few RoIs' grads not finite
                gy[2, 3, 1, 1] = np.inf
                gy[7, 30, 4, 2] = np.nan
            for sr in (2, 0, 3):
                for al in (False, True):
                    if tag == "case" and (sr, al) != (2, False):
                        continue
                    y, am = ck.roi_max_align_forward(x, rois, (7, 7), 1 / 16, sr, al,
                                                     backend="cpu")
                    gx = ck.roi_max_align_backward(gy, am, rois, x.shape, (7, 7), 1 / 16, sr,
                                                   al, backend="cpu")
                    key = f"{np.dtype(dt).name}_{tag}_{sr}_{int(al)}"
                    out[key + "_y"] = y
                    out[key + "_am"] = am
                    out[key + "_gx"] = gx
    return out


def main(argv):
    if "--save" in argv:
        np.savez(argv[argv.index("--save") + 1], **_outputs())
        return
    if "--compare" in argv:
        ref = np.load(argv[argv.index("--compare") + 1])
        now = _outputs()
        bad = [k for k in ref.files
               if ref[k].tobytes() != np.ascontiguousarray(now[k]).tobytes()]
        print(f"{len(ref.files)} arrays compared, {len(bad)} differ: {bad}")
        return
    rounds = int(argv[0]) if argv else 7
    print(set_mallopt())     # as convkit bench: large buffers reused, not fresh pages
    ops = _ops(np.random.default_rng(0))
    # wall time, and (one thread) the thread's own CPU time, which a loaded machine inflates
    # less: time spent descheduled is not counted
    clock = time.thread_time if ck.get_num_threads() == 1 else time.perf_counter
    print(f"threads: {ck.get_num_threads()}, medians of {rounds} ({clock.__name__})")
    times = {k: [] for k in ops}
    for f in ops.values():
        f()
    for _ in range(rounds):
        for k, f in ops.items():
            t = clock()
            f()
            times[k].append(clock() - t)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:20s} {v:8.2f} ms   (min {min(times[k]) * 1e3:.2f})")
    print(f"max_align / align: fwd {med['max_align fwd'] / med['align fwd']:.2f}, "
          f"fwd+bwd {med['max_align fwd+bwd'] / med['align fwd+bwd']:.2f}")
    print(f"avg_pool / pool:   fwd {med['avg_pool fwd'] / med['pool fwd']:.2f}, "
          f"fwd+bwd {med['avg_pool fwd+bwd'] / med['pool fwd+bwd']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
