"""The ``cuda`` backend plugin (convkit_cuda).

Three layers, so that a machine without a GPU still checks most of it:

1. everywhere: importing the plugin does no GPU work; an unusable backend says exactly why
   and how to fix it (each cause exercised through a stand-in ``cupy``);
2. wherever a C++ compiler is found: the real launchers and the real ``.cu`` kernels run on
   the host through ``tests/cuda_emulation.py`` (same kernel source, every
   (block, thread) executed, the grid capped so grid-stride loops stride, every argument
   type-checked as the GPU would need it) -- the cuda-specific paths here, and the generic
   op suites (tests/test_conv.py, ...) on the emulated backend in a subprocess;
3. with CuPy and a GPU: DLPack / ``__cuda_array_interface__`` interop, the TypeError for host
   arrays, ``precompile`` and bit-reproducible deterministic backwards (the generic op suites
   also run on the real device through the ``backend`` fixture there).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import convkit
from convkit import _registry
from convkit import functional as F
from helpers import check_backward, run, tol

HAVE_CXX = bool(os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++"))
needs_cxx = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler (g++/c++) for the host "
                                                    "emulation of the CUDA kernels")
CUDA_OK, CUDA_WHY = convkit.backend_status("cuda")
needs_gpu = pytest.mark.skipif(not CUDA_OK, reason=f"needs CuPy and a CUDA GPU: {CUDA_WHY}")


# ========================================================================= 1. everywhere
def test_import_does_not_import_cupy():
    code = ("import sys, convkit, convkit_cuda, convkit_cuda.backend\n"
            "convkit.known_backends()\n"
            "assert 'cuda' in convkit.known_backends()\n"
            "print(sorted(m for m in sys.modules if m == 'cupy' or m.startswith('cupy.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.skipif(CUDA_OK, reason="the cuda backend is usable here (covered by the GPU tests)")
def test_unusable_cuda_says_why_and_never_falls_back():
    ok, why = convkit.backend_status("cuda")
    assert not ok
    assert why.startswith("backend 'cuda' cannot run here: ")
    # the cause (CuPy, driver or device) and the fix are both named
    assert any(w in why for w in ("CuPy is not installed", "failed to import", "NVIDIA driver",
                                  "no CUDA device"))
    assert any(w in why for w in ("pip install 'convkit[cuda12]'", "nvidia-smi"))
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        convkit.get_backend("cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        convkit.set_backend("cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        with convkit.use_backend("cuda"):
            pass   # pragma: no cover
    assert "cuda" not in convkit.available_backends()


def test_cupy_not_installed_message(monkeypatch):
    from convkit_cuda.backend import CudaBackend

    monkeypatch.setitem(sys.modules, "cupy", None)     # makes `import cupy` fail
    with pytest.raises(RuntimeError) as e:
        CudaBackend()
    msg = str(e.value)
    assert msg.startswith("CuPy is not installed")
    assert "pip install 'convkit[cuda12]'" in msg and "pip install 'convkit[cuda13]'" in msg


class FakeCUDARuntimeError(RuntimeError):
    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


@pytest.mark.parametrize("kw, expect", [
    (dict(device_count=0, driver=0, runtime=12040), "no NVIDIA driver was found"),
    (dict(driver=0, runtime=12040,
          device_error=FakeCUDARuntimeError(35, "cudaErrorInsufficientDriver")),
     "no NVIDIA driver was found"),
    (dict(driver=11080, runtime=12040,
          device_error=FakeCUDARuntimeError(35, "cudaErrorInsufficientDriver: CUDA driver "
                                                "version is insufficient for CUDA runtime")),
     r"driver is too old for CuPy's CUDA runtime: the driver supports CUDA 11\.8, "
     r"CuPy .* uses CUDA 12\.4"),
    (dict(device_count=0, driver=12080, runtime=12040), "no CUDA device is visible"),
    (dict(driver=12080, runtime=12040,
          device_error=FakeCUDARuntimeError(100, "cudaErrorNoDevice: no CUDA-capable device")),
     "no CUDA device is visible.*cudaErrorNoDevice"),
], ids=["no-driver", "no-driver-error", "driver-too-old", "no-device", "no-device-error"])
def test_device_problems_are_named(monkeypatch, kw, expect):
    from cuda_emulation import fake_cupy
    from convkit_cuda.backend import CudaBackend

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(**kw))
    with pytest.raises(RuntimeError, match=expect) as e:
        CudaBackend()
    msg = str(e.value)
    # ... and a fix
    assert any(w in msg for w in ("install the NVIDIA driver", "update the driver",
                                  "CUDA_VISIBLE_DEVICES"))


def test_device_problem_reaches_backend_status(monkeypatch):
    from cuda_emulation import fake_cupy

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(device_count=0, driver=12080, runtime=12040))
    monkeypatch.delitem(_registry._instances, "cuda", raising=False)
    monkeypatch.delitem(_registry._failures, "cuda", raising=False)
    try:
        ok, why = convkit.backend_status("cuda")
        assert not ok and "no CUDA device is visible" in why
        with pytest.raises(RuntimeError, match="no CUDA device is visible"):
            convkit.get_backend("cuda")
    finally:
        _registry._failures.pop("cuda", None)   # monkeypatch restores the original entry


def test_grid_and_no_empty_launch(monkeypatch):
    from convkit_cuda import _kernels
    from convkit_cuda._kernels import MAX_BLOCKS, grid_for

    assert grid_for(1) == ((1,), (256,))
    assert grid_for(257) == ((2,), (256,))
    assert grid_for(10**12)[0] == (MAX_BLOCKS,)
    assert grid_for(0) == ((0,), (256,))

    def no_kernel(*a):
        raise AssertionError("a grid of 0 blocks must not be launched")

    monkeypatch.setattr(_kernels, "get_kernel", no_kernel)
    _kernels.launch("boxes", "box_iou", np.float32, *grid_for(0), ())


@pytest.mark.parametrize("kw, expect", [
    (dict(nvrtc_error=OSError("libnvrtc.so.12: cannot open shared object file")),
     r"cannot load NVRTC.*libnvrtc\.so\.12"),
    (dict(cublas_error=OSError("libcublas.so.12: cannot open shared object file")),
     r"cannot load cuBLAS.*libcublas\.so\.12"),
], ids=["no-nvrtc", "no-cublas"])
def test_missing_toolkit_libraries_are_named(monkeypatch, kw, expect):
    """cupy-cuda12x without the toolkit sees the GPU; the backend must still say it is unusable
    (and how to fix it) instead of failing at the first op."""
    from cuda_emulation import fake_cupy
    from convkit_cuda.backend import CudaBackend

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(**kw))
    with pytest.raises(RuntimeError, match=expect) as e:
        CudaBackend()
    assert "pip install 'convkit[cuda12]'" in str(e.value) and "[ctk]" in str(e.value)


def test_pre_pascal_device_is_refused(monkeypatch):
    from cuda_emulation import fake_cupy
    from convkit_cuda import _kernels
    from convkit_cuda.backend import CudaBackend

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(capability="52"))
    with pytest.raises(RuntimeError, match=r"compute capability 5\.2; the cuda backend needs "
                                           r"6\.0 or newer \(.*float64 atomicAdd\)"):
        CudaBackend()
    _kernels.check_capability("60", 0)
    _kernels.check_capability("9.0", 0)


def test_extras_bring_the_toolkit():
    import tomllib

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert extras["cuda12"] == ["cupy-cuda12x[ctk]>=14"]
    assert extras["cuda13"] == ["cupy-cuda13x[ctk]>=14"]


def test_host_emulation_is_not_shipped():
    import convkit_cuda

    pkg = os.path.dirname(convkit_cuda.__file__)
    assert not any("emulation" in f for f in os.listdir(pkg))


# ============================================================ 2. host emulation of the kernels
@pytest.fixture
def emulated(monkeypatch):
    """The real CudaBackend over the stand-in cupy, registered as 'cuda' for this test."""
    if not HAVE_CXX:
        pytest.skip("no C++ compiler for the host emulation of the CUDA kernels")
    import cuda_emulation as emu
    from convkit_cuda import _kernels

    monkeypatch.setitem(sys.modules, "cupy", emu.fake_cupy(device_count=2))
    emu.drop_op_modules()                            # re-import the op modules over the stand-in
    monkeypatch.setattr(_kernels, "_modules", {})
    monkeypatch.setattr(_kernels, "_functions", {})
    monkeypatch.setattr(_kernels, "device_id", emu._device_id)
    monkeypatch.setattr(_kernels, "data_ptr", emu._data_ptr)
    from convkit_cuda.backend import CudaBackend

    be = CudaBackend()
    monkeypatch.delitem(_registry._failures, "cuda", raising=False)
    monkeypatch.setitem(_registry._instances, "cuda", be)
    yield be
    convkit.set_deterministic(False)
    convkit.set_allow_tf32(False)
    emu.drop_op_modules()                            # drop the stand-in-bound op modules


def _roi_case(dtype, K=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    xy = rng.uniform(-2, 9, (K, 2))
    wh = rng.uniform(0.5, 8, (K, 2))
    rois = np.concatenate([rng.integers(0, 2, (K, 1)), xy, xy + wh], axis=1).astype(dtype)
    return x, rois


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [-1, 2])
def test_emulated_roi_align_gather_backward_matches_atomic(emulated, aligned, sr):
    x, rois = _roi_case(np.float64)
    gy = np.random.default_rng(3).standard_normal((rois.shape[0], 3, 3, 2))
    args = (gy, rois, x.shape, (3, 2), 0.75, sr, aligned)
    atomic = run("cuda", F.roi_align_backward, *args)
    convkit.set_deterministic(True)
    gather = run("cuda", F.roi_align_backward, *args)
    np.testing.assert_allclose(gather, atomic, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(run("cuda", F.roi_align_backward, *args), gather)
    # and it is the gradient of the forward (directional numerical check, float64)
    check_backward(lambda x_: run("cuda", F.roi_align_forward, x_, rois, (3, 2), 0.75, sr,
                                  aligned),
                   lambda g, x_: (run("cuda", F.roi_align_backward, g, rois, x_.shape, (3, 2),
                                      0.75, sr, aligned),),
                   [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_roi_align_gather_buckets_give_the_unbucketed_bits(emulated, monkeypatch,
                                                                     dtype):
    """The deterministic gather visits only the RoIs indexed for its image and row tile: the
    same bits as one tile per image (every RoI of the image, in order -- the kernel before the
    index), on many RoIs of every shape (tiny, huge, inverted, off the map, non-finite), while
    the index really leaves most RoIs out of most tiles."""
    from convkit_cuda import roi

    rng = np.random.default_rng(7)
    K, N, H, W = 300, 3, 40, 13
    x = rng.standard_normal((N, 2, H, W)).astype(dtype)
    xy = rng.uniform(-4, 42, (K, 2))
    wh = rng.uniform(-1, 12, (K, 2)) * rng.choice([0.2, 1, 1, 6], (K, 1))
    rois = np.concatenate([rng.integers(0, N, (K, 1)), xy, xy + wh], axis=1).astype(dtype)
    rois[5, 2], rois[9] = np.nan, [1, -1e6, -1e6, 1e6, 1e6]
    gy = rng.standard_normal((K, 2, 3, 2)).astype(dtype)
    cp = sys.modules["cupy"]
    sizes = []

    def cumsum(a, *args, **kw):
        out = np.cumsum(a, *args, **kw)
        sizes.append(int(out[-1]))
        return out

    monkeypatch.setattr(cp, "cumsum", cumsum)
    convkit.set_deterministic(True)
    for sr, aligned in ((-1, False), (2, True)):
        args = (gy, rois, x.shape, (3, 2), 0.5, sr, aligned)
        assert H // roi.row_tile(H) >= 8
        sizes.clear()
        tiled = run("cuda", F.roi_align_backward, *args)
        assert sizes and sizes[-1] < K * (H // roi.row_tile(H)) // 2, sizes   # vs K * tiles
        with monkeypatch.context() as m:
            m.setattr(roi, "row_tile", lambda H: H)
            whole = run("cuda", F.roi_align_backward, *args)
        np.testing.assert_array_equal(tiled, whole)
        convkit.set_deterministic(False)
        atomic = run("cuda", F.roi_align_backward, *args)
        convkit.set_deterministic(True)
        np.testing.assert_allclose(tiled, atomic, **tol(dtype))


def test_emulated_max_pool_deterministic_backward_matches_atomic(emulated):
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * 3 * 9 * 9).reshape(2, 3, 9, 9).astype(np.float32)
    y, idx = run("cuda", F.max_pool2d_forward, x, 3, 1, 1)    # overlapping windows
    gy = rng.standard_normal(y.shape).astype(np.float32)
    atomic = run("cuda", F.max_pool2d_backward, gy, idx, x.shape)
    convkit.set_deterministic(True)
    det = run("cuda", F.max_pool2d_backward, gy, idx, x.shape)
    # the serial emulation adds in output order, as the deterministic gather does: same bits
    np.testing.assert_array_equal(det, atomic)
    want = np.zeros(x.size, np.float64)
    planes = (np.arange(6) * 81).reshape(2, 3, 1, 1)
    np.add.at(want, (planes + idx).ravel(), gy.astype(np.float64).ravel())
    np.testing.assert_allclose(det, want.reshape(x.shape).astype(np.float32), **tol(np.float32))


def test_emulated_gather_add_sorts_each_segment(emulated):
    """csr_gather adds each element's contributions in increasing j whatever order the atomic
    fill left them in (shuffled here by hand): the bits of a serial loop."""
    from convkit_cuda import _kernels

    rng = np.random.default_rng(0)
    L, size = 300, 17
    keys = rng.integers(-1, size, L).astype(np.int64)
    vals = rng.standard_normal(L).astype(np.float32) * np.float32(1e4) ** rng.integers(0, 3, L)
    vals = vals.astype(np.float32)
    got = emulated._pool.gather_add(vals, keys, size)
    want = np.zeros(size, np.float32)
    for j in range(L):                      # the serial loop, in float32
        if keys[j] >= 0:
            want[keys[j]] += vals[j]
    np.testing.assert_array_equal(got, want)
    # the gather alone, over segments in a scrambled order
    counts = np.bincount(keys[keys >= 0], minlength=size).astype(np.uint64)
    ends = np.cumsum(counts).astype(np.uint64)
    lst = np.concatenate([rng.permutation(np.flatnonzero(keys == e)) for e in range(size)])
    out = np.empty(size, np.float32)
    I = np.int64
    _kernels.launch("pool", "csr_gather", np.float32, (1,), (256,),
                    (vals, counts, ends, I(size), lst.astype(np.int64), out))
    np.testing.assert_array_equal(out, want)


def test_emulated_roi_pool_backward_sums_shared_argmax(emulated):
    # many RoIs over the same pixels: argmax entries coincide, the gather adds them
    x, rois = _roi_case(np.float64, K=40)
    y, am = run("cuda", F.roi_pool_forward, x, rois, (2, 3), 0.5)
    gy = np.random.default_rng(5).standard_normal(y.shape)
    gx = run("cuda", F.roi_pool_backward, gy, am, x.shape, rois=rois)
    want = np.zeros(x.shape)
    for k, c, i, j in np.ndindex(*am.shape):
        a = am[k, c, i, j]
        if a >= 0:
            want[int(rois[k, 0]), c, a // x.shape[3], a % x.shape[3]] += gy[k, c, i, j]
    np.testing.assert_allclose(gx, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 3])
def test_emulated_conv_workspace_chunks(emulated, torch, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 7, 8))
    w = rng.standard_normal((9, 6 // groups, 3, 2))
    gy = rng.standard_normal((5, 9, 4, 8))
    kw = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=groups)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, **kw)
    ty.backward(torch.tensor(gy))
    old = convkit.get_workspace_limit()
    try:
        # columns of one image: 6*3*2 rows x 4*8 positions, float64
        col = 36 * 32 * 8
        convkit.set_workspace_limit(2 * col)                    # forward: chunks of 2, 2, 1
        y = run("cuda", F.conv2d_forward, x, w, None, **kw)
        # backward per image: columns, their gradient and the (9, 36) product: chunks of 3, 2
        convkit.set_workspace_limit(3 * (2 * col + 9 * 36 * 8))
        gx, gw, _ = run("cuda", F.conv2d_backward, gy, x, w, **kw, has_bias=False)
        np.testing.assert_allclose(y, ty.detach().numpy(), **tol(np.float64))
        np.testing.assert_allclose(gx, tx.grad.numpy(), **tol(np.float64))
        np.testing.assert_allclose(gw, tw.grad.numpy(), **tol(np.float64))
        if groups == 1:
            convkit.set_workspace_limit(100)
            with pytest.raises(MemoryError, match="workspace limit of 100 bytes"):
                run("cuda", F.conv2d_forward, x, w, None, **kw)
    finally:
        convkit.set_workspace_limit(old)


# (x shape, weight shape, conv kwargs): groups, stride, dilation, asymmetric padding, 1x1
_GEMM_CASES = [
    ((3, 4, 7, 6), (6, 4, 3, 3), dict(padding=1)),
    ((2, 6, 9, 8), (4, 3, 3, 2), dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2),
                                      groups=2)),
    ((3, 6, 8, 7), (9, 2, 2, 3), dict(stride=(1, 2), padding=(1, 2), groups=3)),
    ((2, 6, 7, 8), (3, 2, 2, 3), dict(padding="same", dilation=(2, 1), groups=3)),  # uneven
    ((2, 4, 5, 6), (6, 2, 1, 1), dict(groups=2)),                     # pointwise: no columns
    ((2, 3, 7, 7), (5, 3, 1, 1), dict(stride=2)),                     # 1x1 strided: columns
    ((1, 2, 6, 5), (4, 2, 3, 3), dict(dilation=2, padding=(2, 1))),   # one image
]


def _conv_all(backend, x, w, kw, gy, dtype):
    """forward with bias, backward (grad_x, grad_w, grad_b), conv_transpose2d's forward
    (conv2d's grad_x alone) and backward (its grad_w is conv2d's with x and grad_y swapped)."""
    x, w, gy = x.astype(dtype), w.astype(dtype), gy.astype(dtype)
    b = np.linspace(-1, 1, w.shape[0]).astype(dtype)
    y = run(backend, F.conv2d_forward, x, w, b, **kw)
    grads = run(backend, F.conv2d_backward, gy, x, w, **kw)
    if isinstance(kw.get("padding"), str):      # conv_transpose2d takes numeric padding only
        return [y, *grads]
    t = run(backend, F.conv_transpose2d_forward, gy, w, None, **kw)
    tg = run(backend, F.conv_transpose2d_backward, x, gy, w, **kw, has_bias=False)
    return [y, *grads, t, *tg[:2]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(_GEMM_CASES)))
@pytest.mark.parametrize("group_gemm", [True, False])
def test_emulated_conv_batched_gemm_matches_reference(emulated, monkeypatch, dtype, case,
                                                      group_gemm):
    """The batched-GEMM path (grouped convs too, forced with GROUP_GEMM_MIN = 1) and the
    direct kernels (grouped convs with GROUP_GEMM_MIN past their sizes) give the numpy
    reference's conv2d / conv_transpose2d, forward and backward, within cuda's tolerance; one
    strided-batched GEMM per group per chunk, and none on the direct path."""
    import cuda_emulation as emu

    xs, ws, kw = _GEMM_CASES[case]
    groups = kw.get("groups", 1)
    monkeypatch.setattr(emulated._conv, "GROUP_GEMM_MIN", 1 if group_gemm else 10**9)
    rng = np.random.default_rng(case)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    gy = rng.standard_normal(run("numpy", F.conv2d_forward, x, w, None, **kw).shape)
    want = _conv_all("numpy", x, w, kw, gy, np.float64)
    emu.CUBLAS_LOG.clear()
    got = _conv_all("cuda", x, w, kw, gy, dtype)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, **tol(dtype))
        assert g.dtype == dtype
    # products: forward, backward (grad_w, grad_x), and unless padding="same" transpose
    # forward (grad_x), transpose backward (grad_x = conv2d forward, grad_w) -- one chunk
    # each, `groups` GEMMs per product
    products = 3 if len(got) == 4 else 6
    gemm = group_gemm or groups == 1
    assert len(emu.CUBLAS_LOG) == (products * groups if gemm else 0)
    assert {c["compute"] for c in emu.CUBLAS_LOG} <= {68 if dtype == np.float32 else 70}


def test_emulated_conv_group_gemm_rule(emulated):
    """GROUP_GEMM_MIN decides: groups = 1 always GEMMs; a grouped conv GEMMs when both its
    rows per group (F/groups) and its reduction (C/groups*KH*KW) reach it; depthwise never
    (at the default)."""
    uses = emulated._conv._uses_gemm
    m = emulated._conv.GROUP_GEMM_MIN
    assert uses((8, 1, 1, 1), 1)
    assert uses((2 * m, 4, 3, 3), 2) == (4 * 9 >= m)
    assert not uses((2 * m - 2, m, 1, 1), 2)                  # m - 1 rows per group
    assert not uses((64, 1, 3, 3), 64)                        # depthwise
    assert uses((2 * m, m, 1, 1), 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups", [1, 2])
def test_emulated_conv_chunks_count_launches_and_match_one_chunk(emulated, monkeypatch,
                                                                 dtype, groups):
    """A workspace limit that forces B < N images per chunk gives B = N's results; the call
    makes ceil(N/B) im2col (col2im) launches and ceil(N/B) GEMMs per group and product --
    O(N/B), not one per image; a limit below one image's workspace is a MemoryError naming
    the limit, in every entry point."""
    import cuda_emulation as emu

    monkeypatch.setattr(emulated._conv, "GROUP_GEMM_MIN", 1)
    rng = np.random.default_rng(1)
    N, C, H, W, F_ = 8, 4, 6, 5, 6
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F_, C // groups, 3, 3)).astype(dtype)
    kw = dict(stride=1, padding=1, groups=groups)
    gy = rng.standard_normal((N, F_, H, W)).astype(dtype)
    it = np.dtype(dtype).itemsize
    col = C * 9 * H * W * it                                  # one image's columns
    slot = F_ * (C // groups) * 9 * it                        # one image's grad_w slot

    def counted(fn, *args, **kwargs):
        emu.LAUNCHES.clear()
        emu.CUBLAS_LOG.clear()
        out = run("cuda", fn, *args, **kwargs)
        names = [n.rsplit("_", 1)[0] for n, _ in emu.LAUNCHES]
        return out, names.count("conv_im2col"), names.count("conv_col2im"), len(emu.CUBLAS_LOG)

    old = convkit.get_workspace_limit()
    try:
        results = {}
        for B in (N, 3, 1):
            convkit.set_workspace_limit(B * col)
            y, i2c, c2i, gemms = counted(F.conv2d_forward, x, w, None, **kw)
            chunks = -(-N // B)
            assert (i2c, c2i, gemms) == (chunks, 0, chunks * groups)
            convkit.set_workspace_limit(B * (2 * col + slot))
            (gx, gw, _), i2c, c2i, gemms = counted(F.conv2d_backward, gy, x, w, **kw)
            assert (i2c, c2i, gemms) == (chunks, chunks, 2 * chunks * groups)
            convkit.set_workspace_limit(B * col)
            t, i2c, c2i, gemms = counted(F.conv_transpose2d_forward, gy, w, None, **kw)
            assert (i2c, c2i, gemms) == (0, chunks, chunks * groups)
            results[B] = (y, gx, gw, t)
        for B in (3, 1):
            for a, r in zip(results[B], results[N]):
                np.testing.assert_allclose(a, r, **tol(dtype))
        want = _conv_all("numpy", x, w, kw, gy, np.float64)
        for a, r in zip(results[N], [want[0] - np.linspace(-1, 1, F_)[:, None, None],
                                     want[1], want[2], want[4]]):
            np.testing.assert_allclose(a, r, **tol(dtype))
        convkit.set_workspace_limit(col - 1)
        for fn, args in ((F.conv2d_forward, (x, w, None)), (F.conv2d_backward, (gy, x, w)),
                         (F.conv_transpose2d_forward, (gy, w, None))):
            with pytest.raises(MemoryError, match=f"workspace limit of {col - 1} bytes"):
                run("cuda", fn, *args, **kw)
    finally:
        convkit.set_workspace_limit(old)


def test_emulated_conv_pointwise_is_one_gemm_for_any_batch(emulated):
    """A 1x1 / stride 1 / unpadded conv needs no columns: x and grad_x are the column
    matrices, so one GEMM over all N images forward (whatever the workspace limit), one per
    product backward, and no im2col / col2im launch."""
    import cuda_emulation as emu

    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((7, 5, 4, 3)), rng.standard_normal((6, 5, 1, 1))
    gy = rng.standard_normal((7, 6, 4, 3))
    emu.LAUNCHES.clear()
    emu.CUBLAS_LOG.clear()
    y = run("cuda", F.conv2d_forward, x, w, None)
    gx, gw, _ = run("cuda", F.conv2d_backward, gy, x, w, has_bias=False)
    assert not emu.LAUNCHES
    # forward; backward's grad_w (gy @ x^T: x read transposed) and grad_x (W^T @ gy)
    assert [(c["batch"], c["transa"], c["transb"]) for c in emu.CUBLAS_LOG] == [
        (7, 0, 0), (7, 1, 0), (7, 0, 1)]
    np.testing.assert_allclose(y, run("numpy", F.conv2d_forward, x, w, None), **tol(np.float64))
    want = run("numpy", F.conv2d_backward, gy, x, w, has_bias=False)
    np.testing.assert_allclose(gx, want[0], **tol(np.float64))
    np.testing.assert_allclose(gw, want[1], **tol(np.float64))
    old = convkit.get_workspace_limit()
    try:
        convkit.set_workspace_limit(1)          # the forward needs no workspace at all
        np.testing.assert_array_equal(run("cuda", F.conv2d_forward, x, w, None), y)
        with pytest.raises(MemoryError, match="workspace limit of 1 bytes"):
            run("cuda", F.conv2d_backward, gy, x, w, has_bias=False)   # grad_w's slots
    finally:
        convkit.set_workspace_limit(old)


def test_emulated_conv_32_and_64_bit_index_paths_agree(emulated, monkeypatch, torch):
    """im2col / position-major im2col / col2im: the 32-bit index path (taken here) and the
    64-bit one (forced) give the same bits, and the gradients are torch's."""
    conv = emulated._conv
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 7))
    w = rng.standard_normal((4, 3, 3, 2))
    kw = dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2))
    gy = rng.standard_normal(run("cuda", F.conv2d_forward, x, w, None, **kw).shape)
    launched = []
    real = conv.launch
    monkeypatch.setattr(conv, "launch", lambda *a: launched.append((a[1], a[5][-2])) or real(*a))
    y32 = run("cuda", F.conv2d_forward, x, w, None, **kw)
    g32 = run("cuda", F.conv2d_backward, gy, x, w, **kw, has_bias=False)
    assert {n for n, _ in launched} == {"conv_im2col", "conv_col2im"}
    assert all(small == 1 for _, small in launched)
    launched.clear()
    monkeypatch.setattr(conv, "_SMALL", 0)
    y64 = run("cuda", F.conv2d_forward, x, w, None, **kw)
    g64 = run("cuda", F.conv2d_backward, gy, x, w, **kw, has_bias=False)
    assert launched and all(small == 0 for _, small in launched)
    np.testing.assert_array_equal(y32, y64)
    for a, b in zip(g32, g64):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    torch.nn.functional.conv2d(tx, tw, **kw).backward(torch.tensor(gy))
    np.testing.assert_allclose(g32[0], tx.grad.numpy(), **tol(np.float64))
    np.testing.assert_allclose(g32[1], tw.grad.numpy(), **tol(np.float64))
    # the predicate: big arrays or a window reach past 2**31 take the 64-bit path
    small = conv._small
    monkeypatch.setattr(conv, "_SMALL", 2**31 - 1)
    assert small((1, 1, 8, 8), 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 8, 8)
    assert not small((1, 1, 8, 8), 3, 3, (2**30, 1), (2**30, 2**30, 1, 1), (1, 1), 3, 8)
    assert not small((64, 512, 128, 128), 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 128, 128)


def test_emulated_ops_called_with_no_work(emulated):
    """Backend hooks reached with empty arrays (the boundary normally stops them first)
    return correctly shaped results and launch nothing invalid."""
    be = emulated
    x = np.zeros((0, 3, 5, 5), np.float32)
    y, idx = be._max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), (2, 2))
    assert y.shape == idx.shape == (0, 3, 2, 2)
    assert be._max_pool2d_backward(y, idx, x.shape).shape == x.shape
    assert be._avg_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (2, 2), True).shape == (0, 3, 2, 2)
    assert be._avg_pool2d_backward(y, x.shape, (2, 2), (2, 2), (0, 0), True).shape == x.shape
    w = np.zeros((4, 3, 3, 3), np.float32)
    assert be._conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1).shape == (0, 4, 5, 5)
    rois = np.zeros((0, 5), np.float32)
    xr = np.ones((1, 3, 5, 5), np.float32)
    assert be._roi_align_forward(xr, rois, (2, 2), 1.0, -1, False).shape == (0, 3, 2, 2)
    g = np.zeros((0, 3, 2, 2), np.float32)
    np.testing.assert_array_equal(
        be._roi_align_backward(g, rois, xr.shape, (2, 2), 1.0, -1, False), np.zeros_like(xr))
    np.testing.assert_array_equal(
        be._roi_pool_backward(g, rois, np.zeros(g.shape, np.int64), xr.shape), np.zeros_like(xr))
    assert be._box_iou(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32)).shape == (0, 3)


def test_emulated_asarray_routes(emulated, monkeypatch):
    """DLPack producers on a CUDA device go through from_dlpack, __cuda_array_interface__
    producers through asarray, host data is copied; dtype= converts."""
    be = emulated
    calls = []
    host = np.arange(6, dtype=np.float64).reshape(2, 3)

    class GpuDLPack:
        def __dlpack__(self, stream=None):
            raise AssertionError("from_dlpack is stubbed")

        def __dlpack_device__(self):
            return (2, 0)                        # kDLCUDA

    class CudaIface:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("refuses: needs grad")

    monkeypatch.setattr(be.xp, "from_dlpack", lambda a: calls.append("dlpack") or host)
    real_asarray = np.asarray
    monkeypatch.setattr(be.xp, "asarray",
                        lambda a, *k, **kw: calls.append("asarray") or real_asarray(a, *k, **kw),
                        raising=False)
    assert be.asarray(GpuDLPack(), dtype=np.float32).dtype == np.float32
    assert calls == ["dlpack"]
    be.asarray(CudaIface())      # handed to cupy.asarray, which would raise the refusal
    assert calls == ["dlpack", "asarray"]
    np.testing.assert_array_equal(be.asarray([[1, 2], [3, 4]]), [[1, 2], [3, 4]])
    assert be.is_native(be.asarray(host)) and be.to_numpy(host) is not None


def test_emulated_precompile_and_info(emulated):
    from convkit_cuda._kernels import STEMS

    t = convkit.precompile("cuda")
    # every kernels/*.cu file (op families add theirs), the first release's among them
    assert {"conv", "pool", "batchnorm", "roi", "boxes"} <= set(STEMS)
    assert set(t) == {f"{s}:{d}" for s in STEMS for d in ("float32", "float64")}
    assert all(v >= 0 for v in t.values())
    info = emulated.info()
    assert "host emulation" in info["device"] and info["cupy"] == "0+host-emulation"
    assert info["driver"] == "CUDA 13.0"


@needs_cxx
@pytest.mark.slow
def test_generic_op_suites_on_emulated_cuda():
    """The generic op suites (tests/test_{conv,pool,batchnorm,roi,boxes}.py, the error and
    conformance tests, the model layers), cuda parametrisations only, on the host emulation of
    the kernels (a subprocess: the stand-in cupy must be in place before conftest asks which
    backends load)."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(here, f"test_{s}.py") for s in (
        "conv", "pool", "batchnorm", "roi", "roi_variants", "boxes", "errors", "conformance", "nn",
        "detection", "conv_transpose")]
    files = [f for f in files if os.path.exists(f)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-p", "cuda_emulation", "-k", "cuda", *files],
                       capture_output=True, text=True, cwd=os.path.dirname(here), timeout=900,
                       env=env)
    tail = p.stdout[-4000:] + p.stderr[-2000:]
    assert p.returncode == 0, tail
    summary = p.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, tail


def test_emulated_mixed_devices_are_a_type_error(emulated):
    from cuda_emulation import on_gpu

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = on_gpu(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), 1)
    with convkit.use_backend("cuda"):
        with pytest.raises(TypeError, match=r"conv2d_forward: weight is on GPU 1 but x is on "
                                            r"GPU 0; the arrays of one call must share"):
            convkit.conv2d_forward(x, w)
        y, idx = convkit.max_pool2d_forward(x, 2)
        with pytest.raises(TypeError, match=r"max_pool2d_backward: indices is on GPU 1"):
            convkit.max_pool2d_backward(y, on_gpu(idx, 1), x.shape)
        rois = on_gpu(np.array([[0, 0, 0, 3, 3]], np.float32), 1)
        with pytest.raises(TypeError, match=r"roi_align_forward: rois is on GPU 1 but x"):
            emulated._roi_align_forward(x, rois, (2, 2), 1.0, -1, False)


def test_emulated_op_runs_on_its_inputs_device(emulated):
    """Inputs on GPU 1 while GPU 0 is current: every launch of the op happens on GPU 1, and
    the caller's current device is untouched afterwards."""
    import cuda_emulation as emu

    rng = np.random.default_rng(0)
    x = emu.on_gpu(rng.standard_normal((2, 4, 6, 6)), 1)
    w = emu.on_gpu(rng.standard_normal((4, 2, 3, 3)), 1)
    gy = emu.on_gpu(rng.standard_normal((2, 4, 6, 6)), 1)
    emu.LAUNCHES.clear()
    with convkit.use_backend("cuda"):
        assert emulated.xp.cuda.runtime.getDevice() == 0
        y = convkit.conv2d_forward(x, w, padding=1, groups=2)
        convkit.conv2d_backward(gy, x, w, padding=1, groups=2)
        convkit.batch_norm_forward(x, None, None, None, None, training=True)
        p, idx = convkit.max_pool2d_forward(x, 2)
        convkit.max_pool2d_backward(emu.on_gpu(np.ones(p.shape), 1), emu.on_gpu(idx, 1),
                                    x.shape)
        assert emulated.xp.cuda.runtime.getDevice() == 0
    assert len(emu.LAUNCHES) >= 6
    assert {d for _, d in emu.LAUNCHES} == {1}, emu.LAUNCHES
    want = run("numpy", F.conv2d_forward, np.asarray(x), np.asarray(w), None, 1, 1, 1, 2)
    np.testing.assert_allclose(y, want, **tol(np.float64))


def test_emulated_boundary_work_runs_on_the_inputs_device(emulated):
    """Every op with all its inputs on GPU 1 while GPU 0 is current: the boundary's own array
    work (contiguous copies, the rois copy, a completed affine half, zero-size results) is
    done on GPU 1 too (Backend.device_of), so no hook sees a mixed-device call, every result
    lives on GPU 1 and the caller's current device is untouched."""
    import cuda_emulation as emu

    rng = np.random.default_rng(0)

    def g1(a):
        return emu.on_gpu(a, 1)

    xh = rng.standard_normal((2, 4, 7, 6)).transpose(0, 1, 3, 2)      # not C-contiguous
    wh = rng.standard_normal((4, 4, 3, 3))
    roish = np.array([[0, 0, 0, 4, 4], [1, 1, 1, 5, 3.5]])
    boxes = np.array([[0, 0, 2, 2], [0.5, 0.5, 2, 2], [3, 3, 4, 5]])
    x, w, rois = g1(xh), g1(wh), g1(roish)
    emu.LAUNCHES.clear()
    with convkit.use_backend("cuda"):
        assert emulated.xp.cuda.runtime.getDevice() == 0
        y = convkit.conv2d_forward(x, w, padding=1)
        p, idx = convkit.max_pool2d_forward(x, 2)
        ra = convkit.roi_align_forward(x, rois, 2, 0.5)
        outs = [y, p, idx, ra,
                *convkit.conv2d_backward(g1(np.ones(y.shape)), x, w, padding=1),
                convkit.conv2d_forward(x[:0], w),                       # zero-size path
                convkit.max_pool2d_backward(g1(np.ones(p.shape)), idx, x.shape),
                convkit.avg_pool2d_forward(x, 2),
                *convkit.batch_norm_forward(x, g1(np.ones(4)), None, None, None, True),
                *convkit.roi_pool_forward(x, rois, 2, 0.5),
                convkit.roi_align_backward(g1(np.ones(ra.shape)), rois, x.shape, 2, 0.5),
                convkit.nms(g1(boxes), g1(np.array([0.9, 0.8, 0.7])), 0.5),
                convkit.box_iou(g1(boxes), g1(boxes))]
        assert emulated.xp.cuda.runtime.getDevice() == 0
    assert [emu._device_id(o) for o in outs] == [1] * len(outs)
    assert emu.LAUNCHES and {d for _, d in emu.LAUNCHES} == {1}, emu.LAUNCHES
    np.testing.assert_allclose(y, run("numpy", F.conv2d_forward, xh, wh, None, 1, 1),
                               **tol(np.float64))
    np.testing.assert_allclose(ra, run("numpy", F.roi_align_forward, xh, roish, 2, 0.5),
                               **tol(np.float64))


@pytest.mark.parametrize("deterministic", [False, True])
def test_emulated_backwards_check_indices_on_the_device(emulated, deterministic):
    """The boundary leaves the range check to the kernels (validates_indices): bad indices
    reach the kernel, which skips them and raises the boundary's error through one flag --
    also when the backend method is called directly, past the boundary."""
    assert type(emulated).validates_indices is True
    convkit.set_deterministic(deterministic)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    y, idx = run("cuda", F.max_pool2d_forward, x, 2)
    gy = np.ones_like(y)
    for bad_value in (16, -1, 10**15):
        bad = idx.copy()
        bad[0, 1, 1, 0] = bad_value
        with pytest.raises(ValueError, match=r"max_pool2d_backward: indices must lie in "
                                             r"\[0, 16\) for this input_shape"):
            emulated._max_pool2d_backward(gy, bad, x.shape)
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
            run("cuda", F.max_pool2d_backward, gy, bad, x.shape)
    rois = np.array([[0, 0, 0, 3, 3], [0, 1, 1, 2, 3]], np.float32)
    yr, am = run("cuda", F.roi_pool_forward, x, rois, (2, 2))
    g = np.ones_like(yr)
    good = emulated._roi_pool_backward(g, rois, am, x.shape)
    np.testing.assert_allclose(good, run("numpy", F.roi_pool_backward, g, am, x.shape, rois))
    for bad_value in (16, -2):
        bad = am.copy()
        bad[1, 0, 0, 1] = bad_value
        with pytest.raises(ValueError, match=r"roi_pool_backward: argmax must lie in "
                                             r"\[-1, 16\)"):
            emulated._roi_pool_backward(g, rois, bad, x.shape)
    bad_rois = rois.copy()
    bad_rois[1, 0] = 7               # a batch index another thread changed after the check
    with pytest.raises(ValueError, match="roi_pool_backward"):
        emulated._roi_pool_backward(g, bad_rois, am, x.shape)


def _host_read_log(monkeypatch):
    """(events, Counting): every device -> host read of a ``Counting`` array (bool/int/float/
    item/tolist, as CuPy syncs for) and every ``cupy.asnumpy`` appends "read"; every kernel
    launch appends "launch"."""
    import cuda_emulation as emu

    events = []

    def reading(name):
        base = getattr(emu.OnDevice, name)

        def f(self, *a):
            events.append("read")
            return base(self, *a)
        return f

    Counting = type("Counting", (emu.OnDevice,), {n: reading(n) for n in (
        "__bool__", "__int__", "__float__", "__index__", "item", "tolist")})
    cp = sys.modules["cupy"]
    asnumpy, call = cp.asnumpy, emu.EmuFunction.__call__

    def logged_asnumpy(a, *args, **kw):
        events.append("read")
        return asnumpy(a, *args, **kw)

    def logged_call(self, *args, **kw):
        events.append("launch")
        return call(self, *args, **kw)

    monkeypatch.setattr(cp, "asnumpy", logged_asnumpy)
    monkeypatch.setattr(emu.EmuFunction, "__call__", logged_call)
    return events, Counting


@pytest.mark.parametrize("deterministic", [False, True])
def test_emulated_roi_calls_read_nothing_back_before_their_kernel(emulated, monkeypatch,
                                                                  deterministic):
    """validates_rois: the boundary neither checks batch indices nor looks for non-finite
    coordinates on the device (each a device -> host sync); the kernels do, and the one read
    of an RoI call is the kernel's error flag, after it ran.  Results still match numpy."""
    events, Counting = _host_read_log(monkeypatch)
    convkit.set_deterministic(deterministic)
    x, rois = _roi_case(np.float64, K=10)
    rois[4, 3] = np.nan                        # a non-finite RoI: zeros, no gradient
    rois[7, 1] = -np.inf
    xd, rd = x.view(Counting), rois.view(Counting)
    gy = np.random.default_rng(5).standard_normal((10, 3, 2, 3))
    gyd = gy.view(Counting)
    calls = [
        ("roi_align_forward", (xd, rd, (2, 3), 0.5, 2, True), (x, rois, (2, 3), 0.5, 2, True)),
        ("roi_align_backward", (gyd, rd, x.shape, (2, 3), 0.5, -1, False),
         (gy, rois, x.shape, (2, 3), 0.5, -1, False)),
        ("roi_pool_forward", (xd, rd, (2, 3), 0.5), (x, rois, (2, 3), 0.5)),
    ]
    with convkit.use_backend("cuda"):
        for op, dargs, hargs in calls:
            events.clear()
            got = getattr(convkit, op)(*dargs)
            assert events and events[0] == "launch", (op, events)
            assert events.count("read") == 1, (op, events)      # the error flag
            want = run("numpy", getattr(F, op), *hargs)
            for g, w in zip(got if isinstance(got, tuple) else (got,),
                            want if isinstance(want, tuple) else (want,)):
                np.testing.assert_allclose(np.asarray(g), w, rtol=1e-12, atol=1e-12)
        assert not np.asarray(got[0])[[4, 7]].any() and (np.asarray(got[1])[[4, 7]] == -1).all()
        events.clear()
        convkit.roi_pool_backward(gyd, got[1].view(Counting), x.shape, rd)
        assert events and events[0] == "launch", events
        bad = rois.copy()
        bad[6, 0] = 2                          # reported after the kernel, boundary's message
        with pytest.raises(ValueError, match=re.escape(
                "roi_align_forward: rois[6, 0] = 2.0 is not an integer batch index in [0, 2)")):
            convkit.roi_align_forward(x, bad, (2, 3), 0.5)


@pytest.mark.parametrize("allow", [False, True])
def test_emulated_tf32_mode_is_opt_in_and_restored(emulated, allow):
    """conv2d's cuBLAS calls carry the compute type themselves (FP32, or TF32 when allowed;
    float64 always FP64) and leave CuPy's process-wide setting alone; deform_conv's
    ``cupy.matmul`` GEMMs get it through _gemm_mode, which puts CuPy's setting back."""
    import cuda_emulation as emu

    cp = emulated.xp
    L = cp._core._routines_linalg
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w32 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    assert convkit.get_allow_tf32() is False
    convkit.set_allow_tf32(allow)
    emu.CUBLAS_LOG.clear()
    y = run("cuda", F.conv2d_forward, x32, w32, None, 1, 1)
    run("cuda", F.conv2d_backward, np.ones_like(y), x32, w32, 1, 1)
    n32 = len(emu.CUBLAS_LOG)
    run("cuda", F.conv2d_forward, x32.astype(np.float64), w32.astype(np.float64), None, 1, 1)
    f32 = {c["compute"] for c in emu.CUBLAS_LOG[:n32]}
    f64 = {c["compute"] for c in emu.CUBLAS_LOG[n32:]}
    assert n32 == 3 and f32 == {77 if allow else 68}     # CUBLAS_COMPUTE_32F(_FAST_TF32)
    assert f64 == {70}                                   # CUBLAS_COMPUTE_64F
    assert L.get_compute_type(np.float32) == L.COMPUTE_TYPE_DEFAULT   # CuPy's setting untouched
    # and TF32 changes the float32 result, within TF32's error (inputs to 10 mantissa bits)
    want = run("numpy", F.conv2d_forward, x32.astype(np.float64), w32.astype(np.float64),
               None, 1, 1)
    assert (np.abs(y - want).max() > 1e-4) == allow
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-2 if allow else 1e-4)
    # deform_conv2d's matmul GEMMs: the mode inside, CuPy's setting restored after
    cp.matmul_log.clear()
    off = np.zeros((2, 18, 6, 6), np.float32)
    run("cuda", F.deform_conv2d_forward, x32, off, w32, None, 1, 1)
    modes = {t for d, t in cp.matmul_log if d == "float32"}
    assert modes == {L.COMPUTE_TYPE_TF32 if allow else L.COMPUTE_TYPE_FP32}
    assert L.get_compute_type(np.float32) == L.COMPUTE_TYPE_DEFAULT
    assert ("TF32" in emulated.info()["numerics"]) and (
        ("may use TF32" in emulated.info()["numerics"]) == allow)


def test_emulated_float32_flushes_subnormals_float64_does_not(emulated):
    """The emulation has the GPU's -ftz=true for float32 (not for float64): a subnormal input
    to a float32 kernel reads as 0."""
    tiny32 = np.full((1, 1, 2, 2), 1e-39, np.float32)       # subnormal in float32
    assert run("cuda", F.avg_pool2d_forward, tiny32, 2).item() == 0.0
    assert run("numpy", F.avg_pool2d_forward, tiny32, 2).item() > 0.0
    tiny64 = np.full((1, 1, 2, 2), 1e-310, np.float64)      # subnormal in float64
    assert run("cuda", F.avg_pool2d_forward, tiny64, 2).item() == 1e-310
    normal = np.full((1, 1, 2, 2), 3e-38, np.float32)
    assert run("cuda", F.avg_pool2d_forward, normal, 2).item() == np.float32(3e-38)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("thr", [0.2, 0.6])
def test_emulated_nms_one_block_pass(emulated, monkeypatch, shared, thr):
    """The block-wide greedy pass (shared-memory `removed`, a barrier per 64 boxes), run by the
    emulation's fibers with alternating thread order, over 11 mask words, against the loop;
    also with `removed` in global memory (the path for more than 262144 boxes)."""
    from test_boxes import nms_oracle, random_boxes

    if not shared:
        monkeypatch.setattr(emulated._boxes, "_NMS_SHARED_WORDS", 0)
    boxes = random_boxes(700, np.float32, seed=3, size=300.0)
    scores = np.random.default_rng(4).integers(0, 50, 700).astype(np.float32) / 50
    keep = run("cuda", F.nms, boxes, scores, thr)
    want = nms_oracle(boxes, scores, thr)
    assert 20 < len(want) < 690            # suppressions within and across the 64-box words
    np.testing.assert_array_equal(keep, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_batch_norm_three_launches_and_accurate_statistics(emulated, dtype):
    """Fused batch norm: three kernel launches a direction, and statistics that stay accurate
    when |mean| >> std (shifted partial sums, merged in order) -- against the float64 two-pass
    NumPy reference; the running statistics are updated in place."""
    import cuda_emulation as emu

    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.standard_normal((3, 4, 7, 9))).astype(dtype)
    w, b = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    emu.LAUNCHES.clear()
    with convkit.use_backend("cuda"):
        y, sm, si = convkit.batch_norm_forward(x, w, b, rm, rv, training=True, momentum=0.3)
        n_fwd = len(emu.LAUNCHES)
        gy = rng.standard_normal(x.shape).astype(dtype)
        gx, gw, gb = convkit.batch_norm_backward(gy, x, w, sm, si, training=True)
    assert n_fwd == 3 and len(emu.LAUNCHES) == 6, emu.LAUNCHES
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    t = dict(rtol=1e-12, atol=0) if dtype == np.float64 else dict(rtol=1e-6, atol=0)
    np.testing.assert_allclose(sm, mean, **t)
    np.testing.assert_allclose(si, 1 / np.sqrt(var + 1e-5), **t)
    np.testing.assert_allclose(rm, 0.3 * mean, **t)
    np.testing.assert_allclose(rv, 0.7 + 0.3 * var * x[:, 0].size / (x[:, 0].size - 1), **t)
    # x - mean is ill-conditioned here (an ulp of 1e4 times invstd ~ 100): a float64 looser
    # bound than tol(); float32 rounding dominates that
    yt = dict(rtol=1e-8, atol=1e-8) if dtype == np.float64 else tol(dtype)
    ref = run("numpy", F.batch_norm_forward, x, w, b, None, None, True)
    np.testing.assert_allclose(y, ref[0], **yt)
    refb = run("numpy", F.batch_norm_backward, gy, x, w, ref[1], ref[2], True)
    for got, want in zip((gx, gw, gb), refb):
        np.testing.assert_allclose(got, want, **yt)


_BARRIER_SRC = """typedef float scalar_t;
extern "C" __global__ void reverse_block(const scalar_t* x, long long n, scalar_t* y)
{
    __shared__ scalar_t s[256];
    const long long t = threadIdx.x;
    s[t] = x[t];
    SYNC
    y[t] = s[n - 1 - t];
}
extern "C" __global__ void divergent(const scalar_t* x, long long n, scalar_t* y)
{
    if (threadIdx.x % 2) __syncthreads();
    y[threadIdx.x] = x[threadIdx.x];
}
"""


@needs_cxx
def test_emulation_runs_block_threads_to_each_barrier(tmp_path, monkeypatch):
    """Kernels with __syncthreads run as fibers: with the barrier a block-wide reversal through
    shared memory is right; without it the same code reads slots not yet written -- so the
    emulation checks barrier-separated shared-memory code; a barrier only some threads reach
    is an error."""
    import cuda_emulation as emu
    from convkit_cuda import _kernels

    x = np.arange(64, dtype=np.float32)
    n = np.int64(64)

    def run_src(sync):
        mod = emu.EmuModule(_BARRIER_SRC.replace("SYNC", sync), options=_kernels.OPTIONS,
                            cache_dir=str(tmp_path))
        y = np.zeros_like(x)
        mod.get_function("reverse_block")((1,), (64,), (x, n, y))
        return mod, y

    mod, y = run_src("__syncthreads();")
    np.testing.assert_array_equal(y, x[::-1])
    _, y = run_src("")
    assert not np.array_equal(y, x[::-1])
    with pytest.raises(RuntimeError, match=r"divergent: __syncthreads\(\) not reached"):
        mod.get_function("divergent")((1,), (64,), (x, n, np.zeros_like(x)))


# ================================================================== 3. on a real GPU
@needs_gpu
def test_torch_cuda_tensor_through_asarray(torch):
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    t = torch.arange(24, dtype=torch.float32, device="cuda").reshape(1, 2, 3, 4)
    with convkit.use_backend("cuda") as be:
        a = convkit.asarray(t)
        assert isinstance(a, be.xp.ndarray) and a.shape == (1, 2, 3, 4)
        a[0, 0, 0, 0] = 100.0          # zero-copy: the tensor sees the write
        be.synchronize()
        assert float(t[0, 0, 0, 0]) == 100.0
        y, _ = convkit.max_pool2d_forward(a, 2)
        want = torch.nn.functional.max_pool2d(t, 2).cpu().numpy()
        np.testing.assert_array_equal(be.to_numpy(y), want)


@needs_gpu
def test_numpy_array_to_cuda_op_is_a_type_error():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with convkit.use_backend("cuda"):
        with pytest.raises(TypeError, match=r"max_pool2d_forward: x must be a cupy.ndarray.*"
                                            r"convkit.asarray\(x\)"):
            convkit.max_pool2d_forward(x, 2)
        w = convkit.asarray(np.zeros((1, 1, 3, 3), np.float32))
        with pytest.raises(TypeError, match=r"conv2d_forward: x must be a cupy.ndarray"):
            convkit.conv2d_forward(x, w)


@needs_gpu
def test_precompile_on_gpu():
    t = convkit.precompile("cuda")
    assert len(t) == 10 and all(v >= 0 for v in t.values())
    be = convkit.get_backend("cuda")
    info = be.info()
    assert "compute capability" in info["device"] and info["cupy"]


@needs_gpu
def test_deterministic_roi_align_backward_is_bitwise_reproducible():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
    K = 2000                       # heavily overlapping RoIs: the atomic path races
    xy = rng.uniform(0, 24, (K, 2))
    rois = np.concatenate([rng.integers(0, 2, (K, 1)), xy, xy + rng.uniform(2, 8, (K, 2))],
                          axis=1).astype(np.float32)
    gy = rng.standard_normal((K, 16, 7, 7)).astype(np.float32)
    args = (gy, rois, x.shape, 7, 0.5, 2, True)
    try:
        convkit.set_deterministic(True)
        a = run("cuda", F.roi_align_backward, *args)
        b = run("cuda", F.roi_align_backward, *args)
        np.testing.assert_array_equal(a, b)
        convkit.set_deterministic(False)
        atomic = run("cuda", F.roi_align_backward, *args)
        np.testing.assert_allclose(a, atomic, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a, run("numpy", F.roi_align_backward, *args),
                                   rtol=1e-4, atol=1e-4)
    finally:
        convkit.set_deterministic(False)


@needs_gpu
def test_deterministic_max_pool_backward_is_bitwise_reproducible():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)
    x[:, :, ::2, ::2] = 5.0           # plateaus: one input is the maximum of several windows
    y, idx = run("cuda", F.max_pool2d_forward, x, 3, 1, 1)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    try:
        convkit.set_deterministic(True)
        a = run("cuda", F.max_pool2d_backward, gy, idx, x.shape)
        np.testing.assert_array_equal(a, run("cuda", F.max_pool2d_backward, gy, idx, x.shape))
        convkit.set_deterministic(False)
        np.testing.assert_allclose(a, run("cuda", F.max_pool2d_backward, gy, idx, x.shape),
                                   rtol=1e-5, atol=1e-5)
    finally:
        convkit.set_deterministic(False)


needs_two_gpus = pytest.mark.skipif(
    not (CUDA_OK and convkit.get_backend("cuda").xp.cuda.runtime.getDeviceCount() >= 2),
    reason="needs CuPy and two CUDA GPUs")


@needs_two_gpus
def test_mixed_gpus_type_error_and_inputs_device_on_gpu():
    be = convkit.get_backend("cuda")
    cp = be.xp
    rng = np.random.default_rng(0)
    with cp.cuda.Device(1):
        x1 = cp.asarray(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
        w1 = cp.asarray(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    with cp.cuda.Device(0):
        w0 = cp.asarray(cp.asnumpy(w1))
        with convkit.use_backend("cuda"):
            with pytest.raises(TypeError, match="conv2d_forward: weight is on GPU 0 but x is on "
                                                "GPU 1"):
                convkit.conv2d_forward(x1, w0)
            y = convkit.conv2d_forward(x1, w1, padding=1)      # current device 0, inputs on 1
            assert y.device.id == 1 and cp.cuda.runtime.getDevice() == 0
            want = run("numpy", F.conv2d_forward, cp.asnumpy(x1), cp.asnumpy(w1), None, 1, 1)
            np.testing.assert_allclose(cp.asnumpy(y), want, **tol(np.float32))


def _bitwise_cases(be, dtype):
    """Kernels without atomics or GEMMs, through the backend's launchers (no boundary)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 13, 11)).astype(dtype)
    x[0, 0, 0, :3] = np.array([1e-39, -1e-39, 3e-39], dtype)      # subnormal in float32
    rois = np.array([[0, 0.3, 1.2, 9.7, 8.1], [1, -2, 3, 5.5, 12.25]], dtype)
    w = rng.standard_normal((6, 1, 3, 3)).astype(dtype)
    xa, ra, wa = be.asarray(x), be.asarray(rois), be.asarray(w)
    out = dict(
        pool=be._avg_pool2d_forward(xa, (3, 2), (2, 1), (1, 1), (7, 12), False),
        maxpool=be._max_pool2d_forward(xa, (3, 3), (2, 2), (1, 1), (1, 1), (7, 6))[0],
        align=be._roi_align_forward(xa, ra, (3, 4), 0.7, 2, True),
        align_grad=None,
        bn=be._batch_norm_forward(xa, None, None, None, None, True, 0.1, 1e-5)[0],
        dwconv=be._conv2d_forward(xa, wa, None, (1, 1), (1, 1, 1, 1), (1, 1), 3))
    convkit.set_deterministic(True)
    try:
        out["align_grad"] = be._roi_align_backward(be.asarray(np.ones((2, 3, 3, 4), dtype)),
                                                   ra, x.shape, (3, 4), 0.7, 2, True)
    finally:
        convkit.set_deterministic(False)
    return {k: be.to_numpy(v) for k, v in out.items()}


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_backend_context_gives_the_fixtures_bits(emulated, dtype):
    """The harness the GPU comparison below uses: a second emulated backend in a context
    gives the same bits as the registered one, and leaves it working."""
    import cuda_emulation as emu

    with emu.emulated_backend() as other:
        b = _bitwise_cases(other, dtype)
    a = _bitwise_cases(emulated, dtype)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@needs_gpu
@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_kernels_give_the_emulations_bits(dtype):
    """--fmad=false and IEEE division/sqrt on the GPU, no contraction and the same flush mode
    in the emulation: kernels without atomics or GEMMs give the same bits on both."""
    import cuda_emulation as emu

    got = _bitwise_cases(convkit.get_backend("cuda"), dtype)
    with emu.emulated_backend() as ebe:
        want = _bitwise_cases(ebe, dtype)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@needs_gpu
def test_gpu_bad_indices_caught_on_device():
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    y, idx = run("cuda", F.max_pool2d_forward, x, 2)
    idx[0, 1, 1, 0] = 99
    be = convkit.get_backend("cuda")
    for det in (False, True):
        convkit.set_deterministic(det)
        try:
            with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
                be._max_pool2d_backward(be.asarray(np.ones_like(y)), be.asarray(idx), x.shape)
        finally:
            convkit.set_deterministic(False)


@needs_gpu
def test_gpu_tf32_opt_in_changes_float32_conv_only_within_tf32_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 28, 28)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    want = run("numpy", F.conv2d_forward, x.astype(np.float64), w.astype(np.float64), None, 1, 1)
    fp32 = run("cuda", F.conv2d_forward, x, w, None, 1, 1)
    np.testing.assert_allclose(fp32, want, rtol=1e-4, atol=1e-4)
    try:
        convkit.set_allow_tf32(True)
        tf32 = run("cuda", F.conv2d_forward, x, w, None, 1, 1)
    finally:
        convkit.set_allow_tf32(False)
    # TF32 keeps 10 mantissa bits: ~1e-3 relative per product, ~sqrt(576) * that summed
    np.testing.assert_allclose(tf32, want, rtol=0, atol=0.1)


@needs_gpu
def test_gpu_nms_many_boxes_matches_cpu():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (6000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (6000, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 6000).astype(np.float32)
    np.testing.assert_array_equal(run("cuda", F.nms, boxes, scores, 0.5),
                                  run("cpu", F.nms, boxes, scores, 0.5))


def test_emulated_check_backend_through_functional_and_backend_object(emulated):
    """convkit.testing.check_backend on the real CudaBackend (emulated kernels): every op through
    the functional API against numpy, and through the Backend object's public ops against the
    functional results."""
    from convkit.testing import check_backend

    assert check_backend("cuda") >= 60
