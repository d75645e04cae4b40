"""Is roi_max_align's gap to roi_align its argmax's bytes?  On the suite's RoI case
(convkit/benchmark/cases.py: K=512, C=256, 7x7, sampling_ratio 2, float32), interleaved round by
round, medians, with convkit bench's allocator settings:

    [CONVKIT_NUM_THREADS=1] python bench/roi_max_align_bytes.py [rounds]

(one thread: each call's thread CPU time, which time spent waiting for a core on a loaded
machine does not inflate; else wall time)

- what the cpu forward returns (argmax dtype and bytes, y's bytes);
- the cpu forward and backward kernels (convkit.cpu.roi_variants, past the checked boundary,
  which would narrow an int32 argmax to the rule's int8 before the backward) with the
  argmax they use for this case (int8: sampling_ratio 2) against the same kernels on an
  int32 argmax (4x the bytes written by the forward and read by the backward; the kernels
  take either width, the wrapper's dtype rule is patched for that run only), roi_align's
  forward and backward (public API), and roi_max_align's backward through the public API;
- plain memory streams of the same sizes (numpy copies and fills, one thread), for GB/s.
The extra milliseconds per extra megabyte of argmax tell what an int64 argmax (8 bytes an
entry) would cost and what an int8 one costs over none.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import convkit as ck
import convkit.cpu.roi_variants as cpu_rv
from convkit.benchmark import set_mallopt
from convkit.benchmark.cases import CASES


def loadavg():
    with open("/proc/loadavg") as f:
        print("loadavg:", f.read().strip())


def case():
    """convkit bench's allocator settings, the load, and the suite's RoI case:
    x, rois, gy, output_size, spatial_scale, sampling_ratio."""
    print(set_mallopt())
    loadavg()
    c = next(c for c in CASES if c.name == "roi_align")
    d = c.inputs(np.random.default_rng(0))
    return d["x"], d["rois"], d["gy"], (c.out, c.out), c.scale, c.sampling_ratio


def main(argv):
    rounds = int(argv[0]) if argv else 9
    x, rois, gy, o, sc, sr = case()
    y, am8 = ck.roi_max_align_forward(x, rois, o, sc, sr, False, backend="cpu")
    print(f"case: x {x.shape}, K {rois.shape[0]}, out {o}, sampling_ratio {sr}; y {y.dtype} "
          f"{y.nbytes / 1e6:.1f} MB, argmax {am8.dtype} {am8.nbytes / 1e6:.1f} MB")
    am32 = am8.astype(np.int32)
    rule = cpu_rv.argmax_dtype

    def fwd(width):
        def f():
            cpu_rv.argmax_dtype = (lambda s: np.dtype(np.int32)) if width == 4 else rule
            try:
                return cpu_rv.roi_max_align_forward(x, rois, o, sc, sr, False)
            finally:
                cpu_rv.argmax_dtype = rule
        return f

    def bwd(am):
        return lambda: cpu_rv.roi_max_align_backward(gy, am, rois, x.shape, o, sc, sr, False)

    y32, a32 = fwd(4)()
    assert a32.dtype == np.int32 and np.array_equal(a32, am32), "int32 run: other argmax"
    assert y32.tobytes() == y.tobytes(), "int32 run: other y"
    g8, g32 = bwd(am8)(), bwd(am32)()
    assert g8.tobytes() == ck.roi_max_align_backward(gy, am8, rois, x.shape, o, sc, sr, False,
                                                     backend="cpu").tobytes()
    assert g8.tobytes() == g32.tobytes(), "int32 argmax: other grad_x"

    big = [np.ones(n, np.uint8) for n in (am8.nbytes, y.nbytes, 2 * y.nbytes)]
    dst = [np.empty_like(b) for b in big]
    ops = {
        "align fwd": lambda: ck.roi_align_forward(x, rois, o, sc, sr, False, backend="cpu"),
        "max_align fwd int8": fwd(1),
        "max_align fwd int32": fwd(4),
        "align bwd": lambda: ck.roi_align_backward(gy, rois, x.shape, o, sc, sr, False,
                                                   backend="cpu"),
        "max_align bwd int8": bwd(am8),
        "max_align bwd int32": bwd(am32),
        "max_align bwd public": lambda: ck.roi_max_align_backward(gy, am8, rois, x.shape, o,
                                                                  sc, sr, False, backend="cpu"),
    }
    for b, t in zip(big, dst):
        ops[f"copy {b.nbytes / 1e6:.1f} MB"] = lambda b=b, t=t: np.copyto(t, b)
        ops[f"fill {b.nbytes / 1e6:.1f} MB"] = lambda t=t: t.fill(1)
    clock = time.thread_time if ck.get_num_threads() == 1 else time.perf_counter
    times = {k: [] for k in ops}
    for f in ops.values():
        f()
    for _ in range(rounds):
        for k, f in ops.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    print(f"threads: {ck.get_num_threads()}, medians of {rounds} ({clock.__name__})")
    for k, v in med.items():
        print(f"{k:24s} {v:8.2f} ms   (min {min(times[k]) * 1e3:.2f})")
    extra = (am32.nbytes - am8.nbytes) / 1e6
    for p in ("fwd", "bwd"):
        dt = med[f"max_align {p} int32"] - med[f"max_align {p} int8"]
        print(f"{p}: int32 - int8 argmax {dt:+.2f} ms for {extra:.1f} MB more "
              f"({dt / extra:+.3f} ms/MB); max_align int8 - align {med[f'max_align {p} int8'] - med[f'align {p}']:+.2f} ms")
    for b in big:
        mb = b.nbytes / 1e6
        print(f"stream {mb:5.1f} MB: copy {2 * mb / med[f'copy {mb:.1f} MB']:.1f} GB/s (read+write), "
              f"fill {mb / med[f'fill {mb:.1f} MB']:.1f} GB/s")
    loadavg()


if __name__ == "__main__":
    main(sys.argv[1:])
