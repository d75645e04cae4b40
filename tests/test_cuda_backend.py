"""The ``cuda`` backend plugin (convkit_cuda).

Three layers, so that a machine without a GPU still checks most of it:

1. everywhere: importing the plugin does no GPU work; an unusable backend says exactly why
   and how to fix it (each cause exercised through a stand-in ``cupy``);
2. wherever a C++ compiler is found: the real launchers and the real ``.cu`` kernels run on
   the host through ``convkit_cuda._host_emulation`` (same kernel source, every
   (block, thread) executed, the grid capped so grid-stride loops stride, every argument
   type-checked as the GPU would need it) -- the cuda-specific paths here, and the generic
   op suites (tests/test_conv.py, ...) on the emulated backend in a subprocess;
3. with CuPy and a GPU: DLPack / ``__cuda_array_interface__`` interop, the TypeError for host
   arrays, ``precompile`` and bit-reproducible deterministic backwards (the generic op suites
   also run on the real device through the ``backend`` fixture there).
"""
from __future__ import annotations

import os
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
    from convkit_cuda._host_emulation import fake_cupy
    from convkit_cuda.backend import CudaBackend

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(**kw))
    with pytest.raises(RuntimeError, match=expect) as e:
        CudaBackend()
    msg = str(e.value)
    # ... and a fix
    assert any(w in msg for w in ("install the NVIDIA driver", "update the driver",
                                  "CUDA_VISIBLE_DEVICES"))


def test_device_problem_reaches_backend_status(monkeypatch):
    from convkit_cuda._host_emulation import fake_cupy

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


# ============================================================ 2. host emulation of the kernels
@pytest.fixture
def emulated(monkeypatch):
    """The real CudaBackend over the stand-in cupy, registered as 'cuda' for this test."""
    if not HAVE_CXX:
        pytest.skip("no C++ compiler for the host emulation of the CUDA kernels")
    import convkit_cuda
    from convkit_cuda import _host_emulation as emu
    from convkit_cuda import _kernels

    monkeypatch.setitem(sys.modules, "cupy", emu.fake_cupy())
    for name in emu._OP_MODULES:                     # re-import the op modules over the stand-in
        monkeypatch.delitem(sys.modules, f"convkit_cuda.{name}", raising=False)
        monkeypatch.delattr(convkit_cuda, name, raising=False)
    monkeypatch.setattr(_kernels, "_modules", {})
    monkeypatch.setattr(_kernels, "_functions", {})
    monkeypatch.setattr(_kernels, "on_device", emu._host_on_device)
    from convkit_cuda.backend import CudaBackend

    be = CudaBackend()
    monkeypatch.delitem(_registry._failures, "cuda", raising=False)
    monkeypatch.setitem(_registry._instances, "cuda", be)
    yield be
    convkit.set_deterministic(False)
    for name in emu._OP_MODULES:                     # drop the stand-in-bound op modules
        sys.modules.pop(f"convkit_cuda.{name}", None)
        if hasattr(convkit_cuda, name):
            delattr(convkit_cuda, name)


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


def test_emulated_max_pool_deterministic_backward_matches_atomic(emulated):
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * 3 * 9 * 9).reshape(2, 3, 9, 9).astype(np.float32)
    y, idx = run("cuda", F.max_pool2d_forward, x, 3, 1, 1)    # overlapping windows
    gy = rng.standard_normal(y.shape).astype(np.float32)
    atomic = run("cuda", F.max_pool2d_backward, gy, idx, x.shape)
    convkit.set_deterministic(True)
    det = run("cuda", F.max_pool2d_backward, gy, idx, x.shape)
    # the serial emulation adds in output order, as the sorted scatter does: same bits
    np.testing.assert_array_equal(det, atomic)
    want = np.zeros(x.size, np.float64)
    planes = (np.arange(6) * 81).reshape(2, 3, 1, 1)
    np.add.at(want, (planes + idx).ravel(), gy.astype(np.float64).ravel())
    np.testing.assert_allclose(det, want.reshape(x.shape).astype(np.float32), **tol(np.float32))


def test_emulated_roi_pool_backward_sums_shared_argmax(emulated):
    # many RoIs over the same pixels: argmax entries coincide, the sorted scatter adds them
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
    t = convkit.precompile("cuda")
    assert set(t) == {f"{s}:{d}" for s in ("conv", "pool", "batchnorm", "roi", "boxes")
                      for d in ("float32", "float64")}
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
        "conv", "pool", "batchnorm", "roi", "boxes", "errors", "conformance", "nn", "detection")]
    files = [f for f in files if os.path.exists(f)]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-p", "convkit_cuda._host_emulation", "-k", "cuda", *files],
                       capture_output=True, text=True, cwd=os.path.dirname(here), timeout=900)
    tail = p.stdout[-4000:] + p.stderr[-2000:]
    assert p.returncode == 0, tail
    summary = p.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, tail


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


def test_emulated_check_backend_through_functional_and_backend_object(emulated):
    """convkit.testing.check_backend on the real CudaBackend (emulated kernels): every op through
    the functional API against numpy, and through the Backend object's public ops against the
    functional results."""
    from convkit.testing import check_backend

    assert check_backend("cuda") >= 60
