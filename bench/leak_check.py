"""Leak check: resident memory stays flat over thousands of forward+backward calls of each op.

    python bench/leak_check.py --backend cpu --iters 3000

Each op family runs ``--iters`` forward+backward rounds on small inputs; RSS is read after a
warm-up (1/10 of the rounds: caches, workspaces and thread pools settle) and at the end.  A
growth above ``--tolerance-mib`` fails (exit 1).  Not part of the default test run (it takes
minutes); README, "Tests", names the command.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def _rounds():
    import convkit

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    wd = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    rois = np.array([[i % 4, 1, 2, 9 + i % 5, 12] for i in range(32)], np.float32)
    boxes = rng.uniform(0, 50, (200, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(1, 20, (200, 2))], 1).astype(np.float32)
    scores = rng.random(200).astype(np.float32)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)

    def conv():
        y = convkit.conv2d_forward(x, w, padding=1)
        convkit.conv2d_backward(y, x, w, padding=1)
        y = convkit.conv2d_forward(x, wd, padding=1, groups=8)
        convkit.conv2d_backward(y, x, wd, padding=1, groups=8)

    def pool():
        y, idx = convkit.max_pool2d_forward(x, 3, 2, 1)
        convkit.max_pool2d_backward(y, idx, x.shape)
        y = convkit.avg_pool2d_forward(x, 3, 2, 1)
        convkit.avg_pool2d_backward(y, x.shape, 3, 2, 1)

    def bn():
        y, m, s = convkit.batch_norm_forward(x, None, None, rm, rv, True)
        convkit.batch_norm_backward(y, x, None, m, s, True)

    def roi():
        y = convkit.roi_align_forward(x, rois, (7, 7), 0.5)
        convkit.roi_align_backward(y, rois, x.shape, (7, 7), 0.5)
        y, am = convkit.roi_pool_forward(x, rois, (7, 7), 0.5)
        convkit.roi_pool_backward(y, am, x.shape, rois)

    def boxes_():
        convkit.nms(boxes, scores, 0.5)
        convkit.box_iou(boxes, boxes)

    return {"conv": conv, "pool": pool, "batch_norm": bn, "roi": roi, "nms/iou": boxes_}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--tolerance-mib", type=float, default=4.0)
    args = ap.parse_args(argv)
    import convkit

    convkit.set_backend(args.backend)
    failed = False
    for name, fn in _rounds().items():
        warm = max(args.iters // 10, 1)
        for _ in range(warm):
            fn()
        before = _rss_mib()
        for _ in range(args.iters):
            fn()
        grown = _rss_mib() - before
        bad = grown > args.tolerance_mib
        failed |= bad
        print(f"{name:<11} {args.iters} rounds: RSS {before:.1f} -> {before + grown:.1f} MiB "
              f"({grown:+.2f}){'  LEAK?' if bad else ''}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
