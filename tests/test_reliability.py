"""Threads and processes: bounded thread counts, and children forked after parallel work."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import convkit
from helpers import run


@pytest.mark.parametrize("n", [0, -1, 4097, 2**40, 2.0, True, "2"])
def test_set_num_threads_out_of_range_is_a_value_error(n):
    before = convkit.get_num_threads()
    with pytest.raises(ValueError, match="set_num_threads: n must be an int in 1..4096"):
        convkit.set_num_threads(n)
    assert convkit.get_num_threads() == before


def test_set_num_threads_bounds_are_inclusive():
    try:
        convkit.set_num_threads(4096)
        assert convkit.get_num_threads() == 4096
        convkit.set_num_threads(1)
        assert convkit.get_num_threads() == 1
    finally:
        convkit.set_num_threads(None)


@pytest.mark.parametrize("value", ["5000", "0", "two"])
def test_thread_count_from_the_environment_is_bounded(monkeypatch, value):
    monkeypatch.setenv("CONVKIT_NUM_THREADS", value)
    convkit.set_num_threads(None)
    with pytest.raises(ValueError, match=r"CONVKIT_NUM_THREADS must be an integer in 1\.\.4096"):
        convkit.get_num_threads()


_FORK_SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, sys
    import numpy as np, convkit

    def work(_):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 16, 24, 24)).astype(np.float32)
        w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
        rois = np.array([[i % 8, 1, 2, 15 + i % 5, 20] for i in range(64)], np.float32)
        y = convkit.conv2d_forward(x, w, padding=1)
        g = convkit.conv2d_backward(np.ones_like(y), x, w, padding=1)
        p, idx = convkit.max_pool2d_forward(x, 2)
        b = convkit.batch_norm_forward(x, None, None, None, None, True)[0]
        r = convkit.roi_align_forward(x, rois, (7, 7), 0.5)
        q = convkit.roi_pool_forward(x, rois, (7, 7), 0.5)[0]
        return [y, *g[:2], p, b, r, q], convkit.get_num_threads()

    if __name__ == "__main__":
        convkit.set_num_threads(2)
        want, _ = work(0)                 # the parent runs its OpenMP teams first
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            for got, threads in pool.map(work, range(4)):
                assert threads == 1, threads
                for a, b in zip(got, want):
                    assert np.array_equal(a, b)
        # a bare os.fork child too, after the pool
        import os
        pid = os.fork()
        if pid == 0:
            got, _ = work(0)
            os._exit(0 if all(np.array_equal(a, b) for a, b in zip(got, want)) else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("ok")
""")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork on this platform")
def test_child_forked_after_parallel_work_neither_hangs_nor_differs(tmp_path):
    """libgomp cannot start a thread team in a child forked after the parent ran one (the
    child's first parallel region hung): convkit runs serially there, with the same bits."""
    if convkit.get_backend().name != "cpu":
        pytest.skip("the fork rule is about the cpu backend's OpenMP kernels")
    script = tmp_path / "fork_after_parallel.py"
    script.write_text(_FORK_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"



# ------------------------------------------------------------- non-finite values, batch norm
@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (1, 3, 16, 16)])   # channel blocks / per channel
def test_batch_norm_variance_overflow_gives_zeros_like_torch(backend, torch, shape):
    """Finite float64 data whose squares overflow: var = +inf, invstd = 0, y = 0 (torch), not
    NaN from inf - inf in the corrected two-pass formula."""
    x = np.tile(np.array([1e200, -1e200, 3e200, 0.0]).reshape(1, 1, 2, 2),
                (1, shape[1], shape[2] // 2, shape[3] // 2))
    with np.errstate(over="ignore", invalid="ignore"):
        y, _, invstd = run(backend, convkit.batch_norm_forward, x, None, None, None, None, True)
    want = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True)
    np.testing.assert_array_equal(y, want.numpy())
    np.testing.assert_array_equal(invstd, 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (2, 3, 16, 16)])
def test_batch_norm_eval_grad_x_does_not_read_x(backend, torch, bad, shape):
    """In eval mode grad_x = grad_y * weight * invstd: a NaN or inf in x reaches grad_weight
    (as in torch) but not grad_x (it did on cpu, through 0 * (x - mean))."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    x[0, 1, 0, 0] = bad
    w, rm, rv = rng.uniform(0.5, 2, 3), rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    gy = rng.standard_normal(shape)
    _, mean, invstd = run(backend, convkit.batch_norm_forward, x, w, None, rm, rv, False)
    gx, gw, _ = run(backend, convkit.batch_norm_backward, gy, x, w, mean, invstd, False)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    torch.nn.functional.batch_norm(tx, torch.from_numpy(rm), torch.from_numpy(rv), tw, None,
                                   False).backward(torch.from_numpy(gy))
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(tw.grad.numpy()))


# ------------------------------------------------------------------- non-finite values, conv
def _conv_nonfinite_case(torch, backend, x, w, padding, **kw):
    y = run(backend, convkit.conv2d_forward, x, w, padding=padding, **kw)
    gy = np.ones_like(y)
    gx, gw, _ = run(backend, convkit.conv2d_backward, gy, x, w, padding=padding, **kw)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    tw = torch.from_numpy(w.astype(np.float64)).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, tw, padding=padding, **kw)
    ty.backward(torch.ones_like(ty))
    for got, want in ((y, ty), (gx, tx.grad), (gw, tw.grad)):
        want = want.detach().numpy()
        for f in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(f(got), f(want))
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_nan_reaches_only_the_windows_that_hold_it(backend, torch, dtype):
    """The issue's dense-path case: one NaN pixel under a 3x3 all-ones filter with padding 1
    makes 4 outputs NaN in torch; the cpu dense path made all 9 NaN."""
    x = np.ones((1, 1, 3, 3), dtype)
    x[0, 0, 2, 2] = np.nan
    y = _conv_nonfinite_case(torch, backend, x, np.ones((1, 1, 3, 3), dtype), 1)
    assert np.isnan(y).sum() == 4


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["x", "w"])
@pytest.mark.parametrize("shape", [
    dict(xs=(1, 16, 9, 9), ws=(16, 16, 3, 3), padding=1),            # Winograd on cpu
    dict(xs=(2, 8, 4, 4), ws=(12, 8, 3, 3), padding=1),              # batch-wide small maps
    dict(xs=(2, 6, 10, 10), ws=(6, 1, 3, 3), padding=1, groups=6),   # depthwise 3x3
    dict(xs=(2, 4, 2, 2), ws=(5, 4, 3, 3), padding=1),               # dense tiny planes
    dict(xs=(1, 3, 12, 12), ws=(8, 3, 5, 5), padding=2, stride=2)])  # im2col
def test_conv_nonfinite_values_land_where_torchs_do(backend, torch, bad, where, shape):
    """The issue's Winograd case (one +inf pixel in (1,16,9,9): 128 NaN and 16 inf on cpu, 144
    inf in torch) and the other value-mixing paths: every output and gradient is NaN / +inf /
    -inf exactly where torch's is."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 1.5, shape["xs"]).astype(np.float32)
    w = rng.uniform(0.5, 1.5, shape["ws"]).astype(np.float32)
    (x if where == "x" else w)[(0,) * 4] = bad
    kw = {k: v for k, v in shape.items() if k in ("stride", "groups")}
    _conv_nonfinite_case(torch, backend, x, w, shape["padding"], **kw)


# --------------------------------------------------------------- scratch under the workspace cap
@pytest.mark.parametrize("dilation", [4096, 2**20])
def test_depthwise_padded_planes_respect_the_workspace_limit(dilation):
    """The depthwise kernels' padded plane ignored the limit: padding = dilation = 4096 on a
    4x4 image grew RSS by 276 MiB under a 16 MiB limit, and 2**30 failed in numpy.  Over the
    limit the conv runs in im2col's pieces instead, with the reference's values."""
    import resource

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    kw = dict(padding=dilation, dilation=dilation, groups=2)
    before = convkit.get_workspace_limit()
    convkit.set_workspace_limit(16 << 20)
    try:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        y = run("cpu", convkit.conv2d_forward, x, w, **kw)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        g = run("cpu", convkit.conv2d_backward, gy, x, w, **kw)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    finally:
        convkit.set_workspace_limit(before)
    assert grown_mib < 32, grown_mib
    # each output reads only the centre tap (the others fall in the padding): y = w[1,1] * x
    centre = w[:, 0, 1, 1].reshape(1, 2, 1, 1)
    np.testing.assert_allclose(y, x * centre, rtol=1e-6)
    np.testing.assert_allclose(g[0], gy * centre, rtol=1e-6)
    np.testing.assert_allclose(g[1][:, 0, 1, 1], (gy * x).sum(axis=(0, 2, 3)), rtol=1e-5)


# ------------------------------------------------------- same bits for any thread count, every op
def _random_calls(seed):
    """One call of every cpu op with a parallel path, on shapes drawn from ``seed`` (sizes above
    the one-thread cut-offs, so the team really splits the work)."""
    rng = np.random.default_rng(seed)
    dt = rng.choice([np.float32, np.float64])
    N, C = int(rng.integers(1, 5)), int(rng.integers(1, 24))
    small = rng.random() < 0.4          # 2x2 / 3x3 maps: the dense and batch-wide conv paths
    if small:
        N, C, H = int(rng.integers(20, 40)), int(rng.integers(16, 65)), int(rng.integers(2, 4))
        W = H
    else:
        H, W = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    x = rng.standard_normal((N, C, H, W)).astype(dt)
    k = 3 if small else int(rng.choice([1, 3, 5, 7]))
    g = 1 if small else (int(rng.choice([1, C])) if rng.random() < 0.3 else 1)
    w = rng.standard_normal((int(rng.integers(16, 65)) if small else
                             int(rng.integers(1, 40)) * g, C // g, k, k)).astype(dt)
    conv = dict(stride=1 if small else int(rng.integers(1, 3)), padding=k // 2, groups=g)
    rois = np.concatenate([rng.integers(0, N, (64, 1)), rng.uniform(-4, W, (64, 2)),
                           rng.uniform(0, W + 4, (64, 2))], axis=1).astype(dt)
    rois[:, 3:] += rois[:, 1:3]
    boxes = rng.uniform(0, 50, (300, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(1, 20, (300, 2))], axis=1).astype(dt)
    scores = rng.random(300).astype(dt)

    def run_all():
        y = convkit.conv2d_forward(x, w, **conv)
        out = [y, *convkit.conv2d_backward(np.cos(y), x, w, **conv)]
        p, idx = convkit.max_pool2d_forward(x, 3, 2, 1)
        out += [p, convkit.max_pool2d_backward(np.sin(p), idx, x.shape)]
        a = convkit.avg_pool2d_forward(x, 3, 2, 1)
        out += [a, convkit.avg_pool2d_backward(np.sin(a), x.shape, 3, 2, 1)]
        b, m, s = convkit.batch_norm_forward(x, None, None, None, None, True)
        out += [b, *convkit.batch_norm_backward(np.cos(b), x, None, m, s, True)[:1]]
        r = convkit.roi_align_forward(x, rois, (5, 5), 0.5, -1, True)
        out += [r, convkit.roi_align_backward(np.cos(r), rois, x.shape, (5, 5), 0.5, -1, True)]
        q, am = convkit.roi_pool_forward(x, rois, (4, 4), 0.5)
        out += [q, convkit.roi_pool_backward(np.cos(q), am, x.shape, rois)]
        out += [convkit.nms(boxes, scores, 0.5)]
        return out
    return run_all


@pytest.mark.parametrize("seed", range(10))
def test_every_parallel_op_gives_the_same_bits_for_any_thread_count(seed):
    """DESIGN.md: CPU results are the same bits for any thread count.  Random shapes (both
    dtypes, grouped and depthwise convs, many RoIs) at 1, 2, 3, 4 and 8 threads."""
    if convkit.get_backend().name != "cpu":
        pytest.skip("about the cpu backend's parallel kernels")
    run_all = _random_calls(seed)
    try:
        convkit.set_num_threads(1)
        want = run_all()
        for n in (2, 3, 4, 8):
            convkit.set_num_threads(n)
            for i, (a, b) in enumerate(zip(run_all(), want)):
                np.testing.assert_array_equal(a, b, err_msg=f"output {i} at {n} threads")
    finally:
        convkit.set_num_threads(None)


# ------------------------------------------------------------------- the boundary's small rules
def test_batch_norm_eps_zero_is_refused_in_training_as_in_torch(backend):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    with pytest.raises(ValueError, match="eps must be > 0 in training"):
        run(backend, convkit.batch_norm_forward, x, None, None, None, None, True, 0.1, 0.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        run(backend, convkit.batch_norm_forward, x, None, None, None, None, True, 0.1, -1e-5)
    # eval uses the caller's running variance: eps = 0 stays allowed, as in torch
    y = run(backend, convkit.batch_norm_forward, x, None, None, np.zeros(3), np.ones(3), False,
            0.1, 0.0)[0]
    np.testing.assert_allclose(y, x)


@pytest.mark.parametrize("alias", ["weight", "bias", "running_var"])
def test_running_stats_that_alias_another_argument_are_refused(backend, alias):
    """The backends disagreed (each read a half-updated weight differently); now a ValueError
    names both arguments."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4))
    shared = rng.uniform(0.5, 2, 3)
    args = dict(weight=rng.uniform(0.5, 2, 3), bias=rng.standard_normal(3),
                running_var=rng.uniform(0.5, 2, 3))
    args[alias] = shared
    with convkit.use_backend(backend) as be:
        shared_b = be.asarray(shared)
        a = {k: (shared_b if k == alias else be.asarray(v)) for k, v in args.items()}
        with pytest.raises(ValueError, match=f"running_mean must not share memory with {alias}"):
            convkit.batch_norm_forward(be.asarray(x), a["weight"], a["bias"], shared_b,
                                       a["running_var"], True)


def test_huge_negative_sampling_ratio_means_adaptive(backend):
    """-2**70 gave a bare OverflowError on cpu; any value <= 0 is torchvision's adaptive grid."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 8, 8))
    rois = np.array([[0, 0.5, 1.0, 6.0, 7.5]])
    want = run(backend, convkit.roi_align_forward, x, rois, (2, 2), 1.0, -1)
    got = run(backend, convkit.roi_align_forward, x, rois, (2, 2), 1.0, -2**70)
    np.testing.assert_array_equal(got, want)
    g = run(backend, convkit.roi_align_backward, np.ones_like(want), rois, x.shape, (2, 2), 1.0,
            -2**70)
    np.testing.assert_array_equal(
        g, run(backend, convkit.roi_align_backward, np.ones_like(want), rois, x.shape, (2, 2)))


def test_uint64_index_past_int64_is_named_as_it_is(backend):
    """2**64-1 used to be reported as -1 (wrapped to int64 before the range check)."""
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8))
    y, idx = run(backend, convkit.max_pool2d_forward, x, 2)
    bad = idx.astype(np.uint64)
    bad[0, 0, 0, 0] = 2**64 - 1
    with pytest.raises(ValueError, match=f"values up to {2**64 - 1}"):
        run(backend, convkit.max_pool2d_backward, np.ones_like(y), bad, x.shape)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_numpy_pool_with_a_huge_kernel_names_the_limit(op):
    """kernel_size 2**31-1 (padding 2**30-1) on the numpy reference gave numpy's "array is too
    big"; its padded copy counts against the workspace limit like every scratch buffer."""
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    with convkit.use_backend("numpy"), pytest.raises(
            MemoryError, match=rf"{op}_pool2d_forward: kernel_size=\(2147483647, 2147483647\) "
                               r"with padding=\(1073741823, 1073741823\) needs a padded copy"):
        getattr(convkit, f"{op}_pool2d_forward")(x, 2**31 - 1, 1, 2**30 - 1)
    if op == "avg":
        with convkit.use_backend("numpy"), pytest.raises(MemoryError, match="workspace limit"):
            convkit.avg_pool2d_backward(np.ones((1, 1, 4, 4)), x.shape, 2**31 - 1, 1, 2**30 - 1)


@pytest.mark.parametrize("op", ["box_iou", "nms"])
def test_numpy_matrix_boxes_are_a_clear_type_error(backend, op):
    """np.matrix boxes failed inside the numpy backend (matrix indexing) and with Cython's
    "No matching signature" on cpu; now one TypeError names the argument and the fix."""
    m = np.matrix([[0, 0, 2, 2], [1, 1, 3, 3]], dtype=np.float64)
    args = (m, m) if op == "box_iou" else (m, np.array([0.5, 0.4]), 0.5)
    with convkit.use_backend(backend), pytest.raises(
            TypeError, match=r"boxes1? is a numpy.matrix.*pass np.asarray\(boxes1?\)"):
        getattr(convkit, op)(*args)
    fixed = (np.asarray(m), np.asarray(m)) if op == "box_iou" else (np.asarray(m),) + args[1:]
    run(backend, getattr(convkit, op), *fixed)


@pytest.mark.parametrize("op", ["max_pool2d_backward", "roi_align_backward", "roi_pool_backward"])
def test_an_input_shape_no_array_can_hold_is_named(backend, op):
    """input_shape (1, 1, 2**40, 2**40) gave a bare OverflowError (max pool) or numpy's "array
    is too big" (RoI) on the numpy backend."""
    gy = np.ones((1, 1, 2, 2))
    rois = np.array([[0, 0, 0, 4, 4.0]])
    shape = (1, 1, 2**40, 2**40)
    args = {"max_pool2d_backward": (gy, np.zeros((1, 1, 2, 2), np.int64), shape),
            "roi_align_backward": (gy, rois, shape, (2, 2)),
            "roi_pool_backward": (gy, np.zeros((1, 1, 2, 2), np.int64), shape, rois)}[op]
    with pytest.raises(ValueError, match=r"input_shape \(1, 1, 1099511627776, 1099511627776\) "
                                         r"has \d+ elements, more than an array can hold"):
        run(backend, getattr(convkit, op), *args)


def test_no_op_leaks_memory_over_thousands_of_calls():
    """bench/leak_check.py on the cpu backend (about 7 s): RSS flat, within 4 MiB, over 2000
    forward+backward rounds of every op family after a warm-up."""
    import os

    if convkit.get_backend().name != "cpu":
        pytest.skip("the leak check runs the cpu backend")
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "leak_check.py")
    r = subprocess.run([sys.executable, script, "--backend", "cpu", "--iters", "2000"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("rounds: RSS") == 5


@pytest.mark.parametrize("xs,ws,pad,dtype", [
    ((1, 21, 19, 19), (3, 21, 7, 7), 3, np.float32),     # grad_weight differed by 1.8e-5
    ((1, 13, 33, 33), (32, 13, 5, 5), 2, np.float64)])   # grad_x differed by 1.4e-14
def test_the_issues_thread_count_cases_give_the_same_bits(xs, ws, pad, dtype):
    """Issue 11's two shapes whose conv backward differed between 1 and 2 threads."""
    if convkit.get_backend().name != "cpu":
        pytest.skip("about the cpu backend's parallel kernels")
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    res = []
    try:
        for n in (1, 2, 3, 4, 8):
            convkit.set_num_threads(n)
            y = convkit.conv2d_forward(x, w, padding=pad)
            res.append((y, *convkit.conv2d_backward(np.cos(y), x, w, padding=pad)))
    finally:
        convkit.set_num_threads(None)
    for r in res[1:]:
        for a, b in zip(r, res[0]):
            np.testing.assert_array_equal(a, b)
