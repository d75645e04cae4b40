"""convkit.dask on the real engines: a dask.distributed LocalCluster of 2 worker processes started
here (spawned, not forked: a fork after parallel convkit work may hang), and dask's synchronous
scheduler for the geometry grid.  Oracles: the in-memory convkit call on the same data.

Bitwise claims: a batch-chunked result equals the in-memory call on the whole batch exactly
(DESIGN.md "Scale-out"), convolutions and predict included: the cpu conv plans issue the same
GEMMs per image whatever the batch, and Linear multiplies row by row (OpenBLAS rounds a GEMM
with another row count, or a row in another place, differently; tests/test_cpu_batch_invariance.py
checks the cpu ops one by one).
"""
import itertools
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import convkit

dask = pytest.importorskip("dask", reason="convkit.dask needs the dask extra: "
                                          "pip install 'convkit[dask]'")
da = pytest.importorskip("dask.array", reason="dask[array] is not installed")
distributed = pytest.importorskip("distributed", reason="convkit.dask's cluster tests need the "
                                                        "dask extra (distributed)")
import convkit.dask as ckd  # noqa: E402
from convkit.models import LeNet5, SmallResNet  # noqa: E402
from convkit.nn import (AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, ReLU,  # noqa: E402
                        Sequential)

TIMEOUT = 120   # seconds for any one cluster computation


def _worker_state():
    import convkit as ck

    return ck.get_backend().name, ck.get_num_threads()


@pytest.fixture(scope="module")
def client():
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, memory_limit="2GiB",
                                           silence_logs=logging.ERROR)
    try:
        c = distributed.Client(cluster, timeout="60s")
        try:
            c.wait_for_workers(2, timeout=TIMEOUT)
            c.register_plugin(ckd.WorkerSetup("cpu", threads=1))
            yield c
        finally:
            c.close()
    finally:
        cluster.close()


def _run(client, *collections):
    futures = client.compute(list(collections))
    distributed.wait(futures, timeout=TIMEOUT)
    return client.gather(futures)


@pytest.fixture
def serial():
    """The in-memory oracle on one thread, as the workers run (WorkerSetup threads=1)."""
    convkit.set_num_threads(1)


RNG = np.random.default_rng(0)


def _data(shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------ worker setup
def test_worker_setup_sets_backend_and_threads_on_every_worker(client):
    assert set(client.run(_worker_state).values()) == {("cpu", 1)}
    client.register_plugin(ckd.WorkerSetup("numpy", threads=2))
    try:
        state = client.run(_worker_state)
        assert len(state) == 2 and set(state.values()) == {("numpy", 2)}
        # a task (in a worker's thread pool, not its event loop) sees the same
        assert client.submit(_worker_state, pure=False).result(timeout=TIMEOUT) == ("numpy", 2)
        x = _data((3, 2, 6, 5), np.float64)
        w = _data((4, 2, 3, 3), np.float64)
        got = _run(client, ckd.conv2d_forward(da.from_array(x, chunks=(2, 2, 3, 5)), w,
                                              padding=1))[0]
        np.testing.assert_allclose(got, convkit.conv2d_forward(x, w, padding=1), rtol=1e-12,
                                   atol=1e-12)
    finally:
        client.register_plugin(ckd.WorkerSetup("cpu", threads=1))   # replaces it (same name)
    assert set(client.run(_worker_state).values()) == {("cpu", 1)}


def test_worker_setup_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        ckd.WorkerSetup("nope")
    for bad in (0, -1, 2.0, True, 5000):
        with pytest.raises(ValueError, match="threads must be"):
            ckd.WorkerSetup("cpu", threads=bad)
    for bad in (-1, 2.0, True, (32 << 20) + 1, "32MiB"):
        with pytest.raises(ValueError, match="mmap_threshold must be"):
            ckd.WorkerSetup("cpu", mmap_threshold=bad)


def _block_faults():
    """Minor page faults of this thread for writing a fresh 8 MiB array (a conv output block),
    after a few such arrays were allocated and freed: 0 when malloc reuses freed pages."""
    import resource

    def once():
        f = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        a = np.ones(2 << 20, np.float32)
        del a
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f

    return min(once() for _ in range(4))


_LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"),
                            reason="glibc's mallopt and per-thread page-fault counts are Linux's")


@_LINUX
@pytest.mark.parametrize("threshold", [None, 32 << 20])
def test_mmap_threshold_lets_blocks_reuse_freed_pages(threshold):
    # a fresh process with the environment dask's nanny gives workers: every 8 MiB block is a
    # new mapping that faults in (2048 pages) unless WorkerSetup's threshold serves it from the
    # heap.  numpy's hugepage advice off: with it, the new mapping's faults depend on how many
    # huge pages the kernel has free at the moment (5 to 516 seen here: the None case failed
    # a full run in the thirteenth session)
    code = (f"import convkit.dask as ckd, tests.test_dask as t\n"
            f"{threshold} is None or ckd._set_mmap_threshold({threshold})\n"
            f"print(t._block_faults())")
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536", NUMPY_MADVISE_HUGEPAGE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    faults = int(out.stdout.split()[-1])
    if threshold is None:
        assert faults >= 256
    else:
        assert faults < 32


@_LINUX
def test_worker_setup_lets_blocks_reuse_freed_pages_on_workers(client):
    env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(env.values()) == {"65536"}       # the nanny's setting, which the plugin answers
    assert client.submit(_block_faults, pure=False).result(timeout=TIMEOUT) < 32


# ------------------------------------------------------------------------------ batch chunks
CONV_CASES = [   # (C, F, k, stride, padding, dilation, groups, H, W)
    (3, 8, 3, 1, 1, 1, 1, 12, 10),
    (4, 6, 3, 2, "valid", 2, 2, 13, 11),
    (6, 6, 2, 1, "same", 1, 3, 9, 9),
    (8, 16, 1, 1, 0, 1, 1, 7, 7),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_chunks_equal_in_memory(client, serial, dtype):
    n_chunks = (5, 1, 7, 3)
    x = _data((16, 8, 13, 11), dtype)
    xd = client.persist(da.from_array(x, chunks=(n_chunks, 8, 13, 11)))   # data on the workers
    slices = np.cumsum((0,) + n_chunks)
    cases, lazy = [], []
    for C, F, k, s, p, d, g, H, W in CONV_CASES:
        w, b = _data((F, C // g, k, k), dtype), _data((F,), dtype)
        xs = xd[:, :C, :H, :W]
        cases.append(("conv", lambda a, w=w, b=b, s=s, p=p, d=d, g=g:
                      convkit.conv2d_forward(a, w, b, s, p, d, g), (C, H, W)))
        lazy.append(ckd.conv2d_forward(xs, w, b, s, p, d, g))
    cases.append(("max", lambda a: convkit.max_pool2d_forward(a, 3, 2, 1, 1, True)[0],
                  (8, 13, 11)))
    lazy.append(ckd.max_pool2d_forward(xd, 3, 2, 1, 1, True))
    cases.append(("avg", lambda a: convkit.avg_pool2d_forward(a, 3, 2, 1, True, False),
                  (8, 13, 11)))
    lazy.append(ckd.avg_pool2d_forward(xd, 3, 2, 1, True, False))
    results = _run(client, *lazy)
    for (kind, fn, (C, H, W)), y, got in zip(cases, lazy, results):
        a = x[:, :C, :H, :W]
        assert y.chunks[0] == n_chunks
        np.testing.assert_array_equal(got, fn(a), err_msg=kind)      # the whole batch, bitwise
        per_slice = np.concatenate([fn(a[i:j]) for i, j in zip(slices[:-1], slices[1:])])
        np.testing.assert_array_equal(got, per_slice, err_msg=kind)


def test_predict_batch_chunks_on_the_cluster(client, serial):
    """Bitwise equal to the whole batch's in-memory predict, on one thread (as the workers) and
    on two (the cpu ops give the same bits for any thread count)."""
    model = SmallResNet(seed=3)
    for _, m in model.named_modules():     # non-trivial running statistics
        if isinstance(m, BatchNorm2d):
            m.buffers["running_mean"][...] = _data(m.num_features) * 0.1
            m.buffers["running_var"][...] = 1 + RNG.random(m.num_features).astype(np.float32)
    model.eval()
    lenet = LeNet5(seed=4, input_size=28).eval()
    x = _data((40, 1, 8, 8))
    x28 = _data((37, 1, 28, 28))
    n_chunks, n28 = (16, 3, 21), (1, 4, 13, 19)
    y = ckd.predict(model, client.persist(da.from_array(x, chunks=(n_chunks, 1, 8, 8))))
    y28 = ckd.predict(lenet, client.persist(da.from_array(x28, chunks=(n28, 1, 28, 28))))
    assert y.chunks == (n_chunks, (10,)) and y28.chunks == (n28, (10,))
    got, got28 = _run(client, y, y28)
    for threads in (1, 2):
        convkit.set_num_threads(threads)
        try:                                # the whole batch, bitwise
            np.testing.assert_array_equal(got, model.forward(x), err_msg=f"{threads} threads")
            np.testing.assert_array_equal(got28, lenet.forward(x28),
                                          err_msg=f"{threads} threads")
        finally:
            convkit.set_num_threads(1)


# ---------------------------------------------------------------------------- spatial chunks
H, W = 13, 11
CHUNKINGS = [(1,), (2, 3), (4,), (5, 1), (3,), (6,), (7, 2), (13,)]   # repeated to cover H / W


def _chunks(size, pattern):
    out = []
    for c in itertools.cycle(pattern):
        if sum(out) >= size:
            return tuple(out)
        out.append(min(c, size - sum(out)))


def _grid():
    cases = []
    i = 0
    for k, s, d, p in itertools.product((1, 2, 3, 5), (1, 2, 3), (1, 2), (0, 1, 2, "same")):
        if p == "same" and s != 1:
            continue
        cases.append(("conv", dict(k=k, stride=s, dilation=d, padding=p), CHUNKINGS[i % 8],
                      CHUNKINGS[(i + 3) % 8]))
        i += 1
    for k, s, d, p, ceil in itertools.product((1, 2, 3), (1, 2, 3), (1, 2), (0, 1),
                                              (False, True)):
        cases.append(("max", dict(kernel_size=k, stride=s, padding=p, dilation=d,
                                  ceil_mode=ceil), CHUNKINGS[i % 8], CHUNKINGS[(i + 5) % 8]))
        i += 1
    for k, s, p, ceil, cip in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2),
                                                (False, True), (True, False)):
        if p > k // 2:   # refused (the conv and max cases check that errors match)
            continue
        cases.append(("avg", dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil,
                                  count_include_pad=cip), CHUNKINGS[i % 8], CHUNKINGS[(i + 2) % 8]))
        i += 1
    return cases


def _in_memory(kind, x, kw, w=None):
    if kind == "conv":
        kw = dict(kw)
        kw.pop("k")
        return convkit.conv2d_forward(x, w, **kw)
    if kind == "max":
        return convkit.max_pool2d_forward(x, **kw)[0]
    return convkit.avg_pool2d_forward(x, **kw)


def _lazy(kind, xd, kw, w=None):
    if kind == "conv":
        kw = dict(kw)
        kw.pop("k")
        return ckd.conv2d_forward(xd, w, **kw)
    if kind == "max":
        return ckd.max_pool2d_forward(xd, **kw)
    return ckd.avg_pool2d_forward(xd, **kw)


def test_spatial_chunks_grid_equal_in_memory_with_exact_block_shapes(serial):
    """Every kernel/stride/dilation/padding of the grid, with odd, tiny and uneven chunks along
    H and W: each block has the shape its chunks declare, and together they are the in-memory
    result (float32, within tolerance; the tiles may select other algorithms)."""
    x = _data((1, 4, H, W))       # one image: batch chunks are tested above
    w = {k: _data((5, 4, k, k)) for k in (1, 2, 3, 5)}
    checked = 0
    for kind, kw, ch, cw in _grid():
        weight = w[kw["k"]] if kind == "conv" else None
        try:
            want = _in_memory(kind, x, kw, weight)
        except ValueError as e:   # the same arguments fail the same way, before any block runs
            with pytest.raises(ValueError, match=str(e).split(":")[0]):
                _lazy(kind, da.from_array(x, chunks=(1, 4, _chunks(H, ch), _chunks(W, cw))), kw,
                      weight)
            continue
        xd = da.from_array(x, chunks=(1, 4, _chunks(H, ch), _chunks(W, cw)))
        y = _lazy(kind, xd, kw, weight)
        assert y.shape == want.shape, (kind, kw)
        blocks = dask.compute(y.to_delayed(optimize_graph=False).tolist(), scheduler="sync")[0]
        for idx in itertools.product(*(range(len(c)) for c in y.chunks)):
            b = blocks[idx[0]][idx[1]][idx[2]][idx[3]]
            assert b.shape == tuple(c[i] for c, i in zip(y.chunks, idx)), (kind, kw, ch, cw, idx)
        got = np.block(blocks)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5,
                                   err_msg=f"{kind} {kw} chunks {ch} x {cw}")
        checked += 1
    assert checked > 150


def test_spatial_chunks_on_the_cluster_with_halo(client, serial):
    """Tiles with halos on the worker processes: 3x3 stride 2 dilation 2 over 5x5 tiles, a
    'same' even kernel, and pooling, against the in-memory call."""
    x = _data((2, 6, 29, 23))
    xd = client.persist(da.from_array(x, chunks=(1, 6, 5, (7, 7, 9))))
    w3, w4 = _data((8, 6, 3, 3)), _data((4, 6, 4, 4))
    lazy = [ckd.conv2d_forward(xd, w3, None, 2, 1, 2),
            ckd.conv2d_forward(xd, w4, None, 1, "same"),
            ckd.max_pool2d_forward(xd, 3, 2, 1), ckd.avg_pool2d_forward(xd, 2, 2, 1, True, False)]
    want = [convkit.conv2d_forward(x, w3, None, 2, 1, 2),
            convkit.conv2d_forward(x, w4, None, 1, "same"),
            convkit.max_pool2d_forward(x, 3, 2, 1)[0],
            convkit.avg_pool2d_forward(x, 2, 2, 1, True, False)]
    for got, y, ref in zip(_run(client, *lazy), lazy, want):
        assert len(y.chunks[2]) > 1 and len(y.chunks[3]) > 1   # really tiled
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


def _fully_convolutional(dtype=np.float32):
    m = Sequential(Conv2d(3, 8, 3, padding=1, seed=0, dtype=dtype), BatchNorm2d(8, dtype=dtype),
                   ReLU(), MaxPool2d(2),
                   Conv2d(8, 8, 3, stride=2, dilation=2, seed=1, dtype=dtype), ReLU(),
                   AvgPool2d(3, 1, 1, count_include_pad=False),
                   Sequential(Conv2d(8, 2, 1, seed=2, dtype=dtype)))
    m[1].buffers["running_mean"][...] = _data(8, dtype)
    m[1].buffers["running_var"][...] = 0.5 + RNG.random(8)
    return m.eval()


def test_predict_tiles_a_fully_convolutional_model(client, serial):
    model = _fully_convolutional()
    x = _data((2, 3, 67, 53))
    want = model.forward(x)
    lazy = [ckd.predict(model, client.persist(da.from_array(x, chunks=ch)))
            for ch in ((1, 3, 16, 16), (2, 3, (7, 5, 30, 25), 9))]
    for y, got in zip(lazy, _run(client, *lazy)):
        assert len(y.chunks[2]) > 1 and y.chunks[2:] != ((want.shape[2],), (want.shape[3],))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_predict_classifier_with_spatial_chunks(client, serial):
    """LeNet5's conv/pool front runs on tiles, the fc head on the whole feature map."""
    model = LeNet5(seed=1).eval()
    x = _data((9, 1, 8, 8))
    y = ckd.predict(model, da.from_array(x, chunks=(4, 1, 3, 5)))
    assert y.chunks == ((4, 4, 1), (10,))
    np.testing.assert_allclose(_run(client, y)[0], model.forward(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- laziness and the model
def _unreadable(block):
    raise RuntimeError("a block was read")


def test_building_the_graph_reads_no_block():
    x = da.zeros((4, 3, 20, 20), chunks=(2, 3, 7, 5), dtype=np.float32)
    x = x.map_blocks(_unreadable, meta=np.empty((0, 0, 0, 0), np.float32))
    model = _fully_convolutional()
    lazy = [ckd.conv2d_forward(x, _data((4, 3, 3, 3)), None, 2, "valid", 2),
            ckd.conv2d_forward(x.rechunk((4, 3, 20, 20)), _data((4, 3, 3, 3))),
            ckd.max_pool2d_forward(x, 2), ckd.avg_pool2d_forward(x, 3, 1, 1),
            ckd.predict(model, x), ckd.predict(LeNet5(in_channels=3, input_size=20).eval(), x)]
    for y in lazy:       # built without error; computing reads the source
        with pytest.raises(RuntimeError, match="a block was read"):
            y.compute(scheduler="sync")


def test_model_is_shipped_once_as_state_without_caches():
    model = _fully_convolutional()
    model.forward(_data((64, 3, 64, 64)))      # fills every layer's cache (MiBs)
    y = ckd.predict(model, da.from_array(_data((4, 3, 20, 20)), chunks=(1, 3, 10, 10)))
    graph = dict(y.__dask_graph__())
    specs = [getattr(v, "value", None) for v in graph.values()]
    specs = [s for s in specs if isinstance(s, ckd._ModelSpec)]
    assert len(specs) == 1                     # one key; every tile task depends on it
    spec = specs[0]
    assert len(spec.skeleton) < 16384          # structure only: no caches, no weights
    assert spec.state.keys() == model.state_dict().keys()
    rebuilt = spec.build(convkit.get_backend("cpu"))
    assert not rebuilt.training
    for k, v in rebuilt.state_dict().items():
        np.testing.assert_array_equal(v, model.state_dict()[k])
    x = _data((2, 3, 12, 12))
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))


def test_predict_refuses_a_model_in_training_mode():
    model = LeNet5()
    x = da.zeros((4, 1, 8, 8), chunks=2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"training mode .*model\.eval\(\)"):
        ckd.predict(model, x)
    model.eval()
    model[3].train()                           # one layer left in training is enough
    with pytest.raises(ValueError, match="training mode"):
        ckd.predict(model, x)


def test_bad_input_is_refused_with_the_in_memory_messages():
    x = da.zeros((2, 4, 9, 9), chunks=(1, 4, 4, 4), dtype=np.float32)
    w = np.zeros((3, 4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="x must be a dask array"):
        ckd.conv2d_forward(np.zeros((2, 4, 9, 9), np.float32), w)
    with pytest.raises(TypeError, match="weight must be an array in memory"):
        ckd.conv2d_forward(x, da.from_array(w))
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        ckd.conv2d_forward(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="channels"):
        ckd.conv2d_forward(x, np.zeros((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        ckd.max_pool2d_forward(x.astype(np.int32), 2)
    with pytest.raises(ValueError, match="4-D"):
        ckd.avg_pool2d_forward(x[0], 2)
    with pytest.raises(TypeError, match="convkit.nn.Module"):
        ckd.predict(lambda a: a, x)
    with pytest.raises(TypeError, match="float"):      # a float32 model on float64 data
        ckd.predict(LeNet5(in_channels=4, input_size=9).eval(), x.astype(np.float64))


def test_channel_chunks_are_merged():
    x = _data((2, 6, 10, 10))
    w = _data((4, 6, 3, 3))
    y = ckd.conv2d_forward(da.from_array(x, chunks=(1, 2, 5, 10)), w, padding=1)
    np.testing.assert_allclose(y.compute(scheduler="sync"), convkit.conv2d_forward(x, w, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_windows_of_padding_only():
    """A 1x1 conv with stride 3 and padding 1 on 2 rows split 1 + 1: every output row reads
    padding only (the bias), and tiles that would read nothing merge."""
    x = _data((1, 2, 2, 8))
    w, b = _data((3, 2, 1, 1)), _data((3,))
    want = convkit.conv2d_forward(x, w, b, stride=3, padding=1)
    y = ckd.conv2d_forward(da.from_array(x, chunks=(1, 2, 1, 3)), w, b, stride=3, padding=1)
    np.testing.assert_allclose(y.compute(scheduler="sync"), want, rtol=1e-6, atol=1e-6)
    x = _data((1, 2, 9, 9))
    want = convkit.conv2d_forward(x, w, b, stride=2, padding=3)
    y = ckd.conv2d_forward(da.from_array(x, chunks=(1, 2, (1, 1, 7), (8, 1))), w, b, stride=2,
                           padding=3)
    got = y.compute(scheduler="sync")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ graph shape (overhead, #15)
def _tasks(y):
    return dict(y.__dask_graph__())


def test_small_arguments_travel_in_the_tasks_large_weights_once():
    """A conv whose weights are small has one task per block and no key a worker must fetch
    first; weights over the inline limit are one key that every task depends on."""
    x = da.from_array(_data((8, 4, 6, 6)), chunks=(2, 4, 6, 6))
    y = ckd.conv2d_forward(x, _data((3, 4, 3, 3)), padding=1)
    own = [k for k in _tasks(y) if k[0] == y.name]
    assert len(own) == 4 and len(_tasks(y)) == 4 + 4          # its blocks and x's, nothing else
    big = _data((ckd._INLINE_BYTES // (4 * 9 * 4) + 8, 4, 3, 3))
    y = ckd.conv2d_forward(x, big, padding=1)
    extra = [k for k in _tasks(y) if not (isinstance(k, tuple) and k[0] in (y.name, x.name))]
    assert len(extra) == 1                                     # the weights, once
    got = y.compute(scheduler="sync")
    np.testing.assert_allclose(got, convkit.conv2d_forward(x.compute(), big, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_batch_tasks_carry_their_weights_once_and_nothing_else():
    """What a batch-chunked conv ships per task: the weights and bias (inline, once), the op by
    reference and the input block's key -- no closure, model, cache or copy of the plan -- so a
    task's size is the parameters' bytes plus a small constant, whatever the batch."""
    cloudpickle = pytest.importorskip("cloudpickle")
    w, b = _data((32, 16, 3, 3)), _data((32,))
    for n, chunk in ((8, 2), (64, 16)):
        x = da.from_array(_data((n, 16, 12, 12)), chunks=(chunk, 16, 12, 12))
        y = ckd.conv2d_forward(x, w, b, padding=1)
        own = {k: v for k, v in _tasks(y).items() if k[0] == y.name}
        assert len(own) == 4
        for task in own.values():
            size = len(cloudpickle.dumps(task))
            assert w.nbytes + b.nbytes <= size < w.nbytes + b.nbytes + 2048, size
        got = y.compute(scheduler="sync")
        xs = x.compute()
        for i in range(0, n, chunk):        # each block is the in-memory call on its slice
            np.testing.assert_array_equal(got[i:i + chunk], convkit.conv2d_forward(
                xs[i:i + chunk], w, b, padding=1))


def test_tiles_carry_their_own_plan():
    """Each tile task holds its block's plan only (a task's size does not grow with the grid),
    and the tiles need at most one task per input block besides their own (the halo cuts)."""
    x = da.from_array(_data((1, 3, 40, 40)), chunks=(1, 3, 5, 5))
    y = ckd.conv2d_forward(x, _data((2, 3, 3, 3)), None, 2, 1, 2)
    graph = y.__dask_graph__()
    tiles = {k: v for k, v in dict(graph).items() if k[0] == y.name}
    cuts = [k for k in dict(graph) if k[0].startswith("cut-")]
    assert len(tiles) == 64 and 0 < len(cuts) <= 64
    for task in tiles.values():
        plans = [a.value for a in getattr(task, "args", task) if isinstance(a, ckd._Literal)
                 and isinstance(a.value, ckd._Plan)]
        assert len(plans) == 1 and len(plans[0].h.steps) == len(plans[0].w.steps) == 1


@pytest.mark.parametrize("kind,fill", [("conv", 0.0), ("max", -np.inf)])
def test_window_is_assembled_with_its_border_padding_in_one_array(kind, fill):
    a, b, c, d = (_data((2, 3, r, s)) for r, s in ((4, 5), (4, 2), (1, 5), (1, 2)))
    got = ckd._window([[a, b], [c, d]], [[None, None], [None, None]], (2, 0, 1, 3, fill))
    want = np.pad(np.block([[a, b], [c, d]]), ((0, 0), (0, 0), (2, 0), (1, 3)),
                  constant_values=fill)
    np.testing.assert_array_equal(got, want)
    assert ckd._window([[a]], [[None]], (0, 0, 0, 0, fill)) is a     # one block: no copy


def test_predict_pads_after_a_leading_pointwise_layer():
    """A batch norm before the first conv: the tile border must be padded after the norm (with
    zeros), not before it (BN(0) != 0), as the in-memory model does."""
    bn = BatchNorm2d(3)
    bn.buffers["running_mean"][...] = np.array([1.0, -2.0, 0.5], np.float32)
    bn.buffers["running_var"][...] = np.array([0.5, 2.0, 1.5], np.float32)
    model = Sequential(bn, Conv2d(3, 4, 3, padding=1, seed=0), ReLU(), MaxPool2d(3, 2, 1),
                       Conv2d(4, 2, 3, padding=2, dilation=2, seed=1)).eval()
    x = _data((2, 3, 21, 17))
    want = model.forward(x)
    for ch in ((1, 3, 8, 6), (2, 3, (5, 16), (9, 8))):
        y = ckd.predict(model, da.from_array(x, chunks=ch))
        assert len(y.chunks[2]) > 1
        np.testing.assert_allclose(y.compute(scheduler="sync"), want, rtol=1e-5, atol=1e-5)
