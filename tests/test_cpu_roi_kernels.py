"""The cpu RoI kernels (convkit/cpu/_roi_align.pyx, _roi_pool.pyx): the float32 and float64
specializations of the fused-type code against the numpy reference, the same bits for any
thread count, and the kernels' own checks of the indices they read (a backend object's ops
are unchecked; another thread may change rois or argmax during a call)."""
import threading

import numpy as np
import pytest

import convkit
from convkit import functional as F
from helpers import run, tol

DTYPES = [np.float32, np.float64]


def _inputs(dtype, K=96, C=19, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, C, 20, 26)).astype(dtype)
    w = rng.uniform(4, 300, K)
    h = rng.uniform(4, 250, K)
    x1 = rng.uniform(-40, 420, K)
    y1 = rng.uniform(-40, 320, K)
    rois = np.stack([rng.integers(0, 2, K), x1, y1, x1 + w, y1 + h], 1).astype(dtype)
    rois[0, 1:] = [0, 0, 5000, 5000]       # a dense grid (the separable route), clipped
    rois[1, 1:] = [64, 64, 64, 64]         # an empty box
    return x, rois


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_dtypes_match_the_reference_with_the_same_bits_on_1_to_4_threads(dtype):
    x, rois = _inputs(dtype)
    K, C = rois.shape[0], x.shape[1]
    gy = np.random.default_rng(4).standard_normal((K, C, 7, 7)).astype(dtype)

    def calls():
        y, am = F.roi_pool_forward(x, rois, 7, 1 / 16)
        return (F.roi_align_forward(x, rois, 7, 1 / 16, 2, False),
                F.roi_align_forward(x, rois, 7, 1 / 16, -1, True),
                F.roi_align_backward(gy, rois, x.shape, 7, 1 / 16, 2, False),
                F.roi_align_backward(gy, rois, x.shape, 7, 1 / 16, -1, True),
                y, am, F.roi_pool_backward(gy, am, x.shape, rois=rois))

    want = run("numpy", calls)
    got = {}
    try:
        for nt in (1, 2, 3, 4):
            convkit.set_num_threads(nt)
            got[nt] = run("cpu", calls)
    finally:
        convkit.set_num_threads(None)
    for i, (g, w) in enumerate(zip(got[1], want)):
        assert g.dtype == w.dtype, i
        if i in (4, 5):      # roi_pool forward: a max and its index, exact
            np.testing.assert_array_equal(g, w, err_msg=str(i))
        else:
            np.testing.assert_allclose(g, w, **tol(dtype), err_msg=str(i))
    for nt in (2, 3, 4):
        for i, (a, b) in enumerate(zip(got[1], got[nt])):
            assert a.tobytes() == b.tobytes(), (nt, i)


@pytest.mark.parametrize("value", [5e6, -1.0, np.nan, 1e30])
def test_kernels_refuse_a_bad_batch_index_the_boundary_did_not_check(value):
    """The cpu Backend's hooks (what its public ops call after validating) take rois as
    they are; the kernels refuse a bad batch index themselves (this roi_align call used to
    read far outside x, the roi_pool backward to write there)."""
    be = convkit.get_backend("cpu")
    x = np.ones((1, 2, 4, 4), np.float32)
    rois = np.array([[value, 0, 0, 4, 4]], np.float32)
    gy = np.ones((1, 2, 2, 2), np.float32)
    argmax = np.zeros((1, 2, 2, 2), np.int64)
    calls = {
        "roi_align_forward": lambda: be._roi_align_forward(x, rois, (2, 2), 1.0, -1, False),
        "roi_pool_forward": lambda: be._roi_pool_forward(x, rois, (2, 2), 1.0),
        "roi_align_backward": lambda: be._roi_align_backward(gy, rois, x.shape, (2, 2), 1.0, -1,
                                                             False),
        "roi_pool_backward": lambda: be._roi_pool_backward(gy, rois, argmax, x.shape),
    }
    for op, fn in calls.items():
        with pytest.raises(ValueError, match=rf"{op}: rois\[:, 0\] must be batch indices"):
            fn()
    rois64 = rois.astype(np.float64)
    with pytest.raises(ValueError, match="roi_pool_forward"):   # the float64 NCHW kernel
        be._roi_pool_forward(x.astype(np.float64), rois64, (2, 2), 1.0)
    with pytest.raises(ValueError, match="roi_align_forward"):  # and the public op's check
        be.roi_align_forward(x, rois, (2, 2), 1.0, -1, False)


def test_a_thread_changing_rois_and_indices_mid_call_cannot_crash_the_process():
    """Another thread writes wild values (batch indices far out, NaN, 1e30 corners, argmax
    and max-pool indices out of range) into the arrays while the ops run: each call returns
    or raises ValueError, and nothing reads or writes outside its arrays."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 8, 24, 24)).astype(np.float32)
    good = np.array([[0, 8, 8, 200, 150], [1, 0, 0, 380, 380], [1, 40, 90, 120, 300]] * 8,
                    np.float32)
    rois = good.copy()
    gy = rng.standard_normal((rois.shape[0], 8, 7, 7)).astype(np.float32)
    _, am0 = F.roi_pool_forward(x, good, 7, 1 / 16)
    argmax = am0.copy()
    _, idx0 = F.max_pool2d_forward(x, 2, 2)
    idx = idx0.copy()
    gp = rng.standard_normal(idx.shape).astype(np.float32)
    stop = threading.Event()

    def vandal():
        # each wild value lives between two writes: the boundary's check (which holds the GIL)
        # mostly sees the good one, a kernel (which released it) may see either
        wild = [(0, 5e6), (0, -3.0), (0, np.nan), (1, np.nan), (3, 1e30), (2, -1e30)]
        while not stop.is_set():
            for col, v in wild:
                rois[:, col] = v
                rois[:, col] = good[:, col]
            for a, a0, v in ((argmax, am0, 10**12), (idx, idx0, 2**40), (idx, idx0, -7)):
                a[...] = v
                a[...] = a0

    calls = [lambda: F.roi_align_forward(x, rois, 7, 1 / 16, 2, False),
             lambda: F.roi_align_backward(gy, rois, x.shape, 7, 1 / 16, -1, True),
             lambda: F.roi_pool_forward(x, rois, 7, 1 / 16),
             lambda: F.roi_pool_backward(gy, argmax, x.shape, rois=rois),
             lambda: F.max_pool2d_backward(gp, idx, x.shape)]
    t = threading.Thread(target=vandal)
    convkit.set_num_threads(2)
    t.start()
    try:
        with convkit.use_backend("cpu"):
            for _ in range(40):
                for fn in calls:
                    try:
                        fn()
                    except ValueError:
                        pass
    finally:
        stop.set()
        t.join()
        convkit.set_num_threads(None)
