"""Outputs of the adaptive pools and batch norm (forward and backward, float32 and float64,
NaN / inf / -0 planted) saved for one checkout, and two such snapshots compared bit for bit:
the check behind "the same bits as the last stop" in RESULTS.md (eighth session, suite7).

    PYTHONPATH=<checkout A> python bench/bits_snapshot.py a.npz
    PYTHONPATH=<checkout B> python bench/bits_snapshot.py b.npz
    python bench/bits_snapshot.py --compare a.npz b.npz
"""
import sys

import numpy as np


def snapshot(path):
    import convkit as ck
    ck.set_num_threads(2)
    rng = np.random.default_rng(2)
    out = {}
    for shape, o in [((8, 64, 56, 56), 7), ((2, 3, 13, 17), (5, 4)), ((2, 5, 7, 7), 1),
                     ((1, 3, 33, 40), (7, 9)), ((2, 2, 5, 70), (3, 6)), ((2, 3, 4, 4), (9, 11))]:
        for dt in (np.float32, np.float64):
            x = (rng.standard_normal(shape) * rng.choice([1e-3, 1, 1e30], shape)).astype(dt)
            x.flat[5], x.flat[-3], x.flat[x.size // 2] = np.nan, np.inf, -0.0
            gy = rng.standard_normal(shape[:2] + ((o, o) if isinstance(o, int) else o)).astype(dt)
            gy.flat[0] = -0.0
            k = f"adaptive{shape}{dt.__name__}"
            out[k + "avg"] = ck.adaptive_avg_pool2d_forward(x, o)
            out[k + "avg_gx"] = ck.adaptive_avg_pool2d_backward(gy, x.shape)
            out[k + "max"], out[k + "idx"] = ck.adaptive_max_pool2d_forward(x, o)
            out[k + "max_gx"] = ck.adaptive_max_pool2d_backward(gy, out[k + "idx"], x.shape)
    for shape in [(8, 64, 112, 112), (3, 5, 9, 11), (2, 3, 13, 17), (4, 6, 65, 1)]:
        for dt in (np.float32, np.float64):
            x = (rng.standard_normal(shape) * 3 + 1).astype(dt)
            if shape[0] == 2:
                x[0, 0, 3, 3], x[1, 2, 0, 0] = np.nan, np.inf
            C = shape[1]
            w, b = rng.standard_normal(C).astype(dt), rng.standard_normal(C).astype(dt)
            rm, rv = np.zeros(C, dt), np.ones(C, dt)
            gy = rng.standard_normal(shape).astype(dt)
            k = f"bn{shape}{dt.__name__}"
            y, m, i = ck.batch_norm_forward(x, w, b, rm, rv, True)
            out.update({k + "y": y, k + "mean": m, k + "invstd": i, k + "rm": rm, k + "rv": rv})
            for name, v in zip(("gx", "gw", "gb"), ck.batch_norm_backward(gy, x, w, m, i, True)):
                out[k + name] = v
            out[k + "gx_eval"] = ck.batch_norm_backward(gy, x, w, m, i, False)[0]
            out[k + "y_eval"] = ck.batch_norm_forward(x, w, b, rm, rv, False)[0]
    np.savez(path, **out)


def compare(pa, pb):
    a, b = np.load(pa), np.load(pb)
    bad = [k for k in a.files if a[k].tobytes() != b[k].tobytes()]
    nan_sign = [k for k in bad if np.array_equal(a[k], b[k], equal_nan=True)]
    print(f"{len(a.files)} arrays; differ in bits: {bad}; of those equal but for NaN bits: "
          f"{nan_sign}")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        snapshot(sys.argv[1])
