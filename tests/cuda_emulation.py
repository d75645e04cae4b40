"""Test support: run the ``cuda`` backend without a GPU, on a host (CPU) emulation of its kernels.

Not part of the shipped package.  It builds a stand-in ``cupy`` module whose arrays are NumPy
arrays and whose ``RawModule`` compiles the *same* kernel source the loader hands to NVRTC
(:func:`convkit_cuda._kernels.kernel_source`) with the host C++ compiler, after a small header
that defines ``__global__``, ``blockIdx``/``threadIdx``, ``atomicAdd``, ``__shared__``,
``__syncthreads`` and the few intrinsics the kernels use.  Kernel signatures come from
:func:`convkit_cuda._kernels.parse_params`, the parser the launch check uses.

A launch runs every (block, thread) of the grid on one host thread:

* kernel indexing, bounds and arithmetic are exercised exactly as written;
* the grid is capped at a couple of blocks, so every grid-stride loop really strides;
* a module that uses ``__syncthreads`` runs each block's threads as fibers: every thread runs
  up to its next barrier, then the next one, and a phase runs the threads in ascending order,
  the next in descending order -- so barrier-separated shared-memory code is exercised, and a
  thread reading in the same phase what another one writes there usually gets a wrong
  answer.  A barrier that some threads skip (divergent ``__syncthreads``) is an error;
* the arithmetic has the GPU's semantics as the loader compiles for it
  (``convkit_cuda._kernels.OPTIONS``): no multiply-add contraction (``-ffp-contract=off``),
  and float32 kernels flush subnormal inputs and results to zero (MXCSR FTZ|DAZ, as CuPy's
  ``-ftz=true``); float64 keeps subnormals, as on the GPU;
* arguments are checked the way a GPU would punish them: each must be a NumPy scalar of the
  exact C type the kernel declares, or a C-contiguous array of the declared element type;
* devices: arrays are on device 0 unless made with :func:`on_gpu`; ``cupy.cuda.Device`` is a
  real context manager for the current device, and every launch records the current device
  in :data:`LAUNCHES`, so tests can check an op runs on its inputs' device;
* ``cupy.cuda.cublas.gemmStridedBatchedEx`` reads and writes the memory its pointers name
  (``convkit_cuda._kernels.data_ptr``), column-major, with cuBLAS's argument checks, an error
  for batches of C that overlap, and TF32 rounding of the inputs under the FAST_TF32 compute
  type; every call is recorded in :data:`CUBLAS_LOG`;
* everything else CuPy would do (``matmul``, sorting, reductions) is NumPy's.

What it cannot show: races that barriers do not order (threads run one at a time, so atomics
are trivially exact), warp-level behaviour, NVRTC-only compile problems
(``tests/test_cuda_build.py`` compiles with nvcc for that), performance.  Use::

    PYTHONPATH=tests python -m pytest -p cuda_emulation tests/test_pool.py -k cuda

(as a pytest plugin it installs the stand-in before the test modules ask which backends
load), or :func:`install` / :func:`fake_cupy` from a test.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types

import numpy as np

from convkit_cuda import _kernels

HEADER = r"""
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <ucontext.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define EMU_HAVE_MXCSR 1
#endif
using std::floor; using std::ceil; using std::round; using std::sqrt;
struct ck_dim3 { unsigned int x, y, z; };
static ck_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
template <typename T> static inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> static inline T atomicOr(T* p, T v) { T old = *p; *p = old | v; return old; }
static inline double __longlong_as_double(long long v)
{ double d; std::memcpy(&d, &v, sizeof d); return d; }

// ---- one block's threads as fibers: __syncthreads() hands control back to the scheduler
static std::function<void()> emu_body;
static ucontext_t emu_sched, *emu_ctx;
static int *emu_state;     // per thread: 0 running, 1 at a barrier, 2 finished
static unsigned emu_cur;
static void __syncthreads()
{
    asm volatile("" ::: "memory");
    emu_state[emu_cur] = 1;
    swapcontext(&emu_ctx[emu_cur], &emu_sched);
    asm volatile("" ::: "memory");
}
static void emu_fiber_entry() { emu_body(); emu_state[emu_cur] = 2; }

// run one block of bx threads; returns 0, or 1 for a barrier not reached by every thread
static int emu_run_block_fibers(unsigned bx)
{
    const size_t stack = 64 * 1024;
    emu_ctx = (ucontext_t*)calloc(bx, sizeof(ucontext_t));
    emu_state = (int*)calloc(bx, sizeof(int));
    char* stacks = (char*)malloc(stack * bx);
    for (unsigned t = 0; t < bx; ++t) {
        getcontext(&emu_ctx[t]);
        emu_ctx[t].uc_stack.ss_sp = stacks + stack * t;
        emu_ctx[t].uc_stack.ss_size = stack;
        emu_ctx[t].uc_link = &emu_sched;
        makecontext(&emu_ctx[t], emu_fiber_entry, 0);
    }
    int status = 0;
    for (unsigned phase = 0;; ++phase) {
        for (unsigned k = 0; k < bx; ++k) {
            const unsigned t = (phase & 1) ? bx - 1 - k : k;   // alternate the order
            if (emu_state[t] == 2) continue;
            emu_state[t] = 0;
            emu_cur = t;
            threadIdx.x = t;
            swapcontext(&emu_sched, &emu_ctx[t]);
        }
        unsigned at_barrier = 0, finished = 0;
        for (unsigned t = 0; t < bx; ++t) {
            at_barrier += emu_state[t] == 1;
            finished += emu_state[t] == 2;
        }
        if (finished == bx) break;
        if (finished) { status = 1; break; }   // some threads left, others wait at a barrier
    }
    free(stacks); free(emu_state); free(emu_ctx);
    return status;
}

static int emu_run_grid(unsigned gx, unsigned bx, bool fibers, bool flush)
{
    gridDim.x = gx; gridDim.y = gridDim.z = 1;
    blockDim.x = bx; blockDim.y = blockDim.z = 1;
#ifdef EMU_HAVE_MXCSR
    const unsigned csr = _mm_getcsr();
    if (flush) _mm_setcsr(csr | 0x8040);     // FTZ | DAZ, as nvcc/NVRTC -ftz=true for float
#endif
    int status = 0;
    for (unsigned b = 0; b < gx && !status; ++b) {
        blockIdx.x = b;
        if (fibers) {
            status = emu_run_block_fibers(bx);
        } else {
            for (unsigned t = 0; t < bx; ++t) { threadIdx.x = t; emu_body(); }
        }
    }
#ifdef EMU_HAVE_MXCSR
    _mm_setcsr(csr);
#endif
    return status;
}
"""

MAX_BLOCKS = 2     # run at most this many blocks: grid-stride loops must cover the rest
LAUNCHES: list[tuple[str, int]] = []     # (kernel, current device) of every launch


def _runner(name: str, params_text: str, names: list[str], fibers: bool, flush: bool) -> str:
    args = ", ".join(names)
    return (f'extern "C" int emu_run_{name}(unsigned emu_gx_, unsigned emu_bx_, '
            f"{params_text}) {{\n"
            f"  emu_body = [=]() {{ {name}({args}); }};\n"
            f"  return emu_run_grid(emu_gx_, emu_bx_, {str(fibers).lower()}, "
            f"{str(flush).lower()});\n}}\n")


class EmuFunction:
    def __init__(self, lib, name, params, scalar):
        self.name = name
        self.params = params
        self.scalar = np.dtype(scalar)
        self._fn = getattr(lib, f"emu_run_{name}")
        ct = {"S": ctypes.c_float if self.scalar == np.float32 else ctypes.c_double,
              "I": ctypes.c_longlong, "D": ctypes.c_double}
        self._fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [
            ctypes.c_void_p if code.endswith("*") else ct[code] for code, _ in params]
        self._fn.restype = ctypes.c_int
        self._want = {"S": self.scalar.type, "I": np.int64, "D": np.float64}
        self._ptr = {"S*": self.scalar, "I*": np.dtype(np.int64), "D*": np.dtype(np.float64),
                     "U*": np.dtype(np.uint64), "i*": np.dtype(np.int32),
                     "b*": np.dtype(np.int8)}

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(self.params)} parameters, {len(args)} arguments")
        cargs = []
        for (code, pname), a in zip(self.params, args):
            if code.endswith("*"):
                want = self._ptr[code]
                if not isinstance(a, np.ndarray) or a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: {pname} must be a C-contiguous {want} array, "
                                    f"got {getattr(a, 'dtype', type(a).__name__)}")
                cargs.append(a.ctypes.data)
            else:
                want = self._want[code]
                if type(a) is not want:
                    raise TypeError(f"{self.name}: {pname} must be {want.__name__} (the C type "
                                    f"the kernel declares), got {type(a).__name__}")
                cargs.append(a.item())
        gx, bx = int(grid[0]), int(block[0])
        if gx < 1 or bx < 1 or bx > 1024:
            raise ValueError(f"{self.name}: invalid launch configuration grid={grid} "
                             f"block={block}")
        LAUNCHES.append((self.name, _current_device()))
        if self._fn(min(gx, MAX_BLOCKS), bx, *cargs):
            raise RuntimeError(f"{self.name}: __syncthreads() not reached by every thread of "
                               f"a block (undefined behaviour on a GPU)")


_build_lock = threading.Lock()


class EmuModule:
    """Stand-in for ``cupy.RawModule``: compiles ``code`` for the host on construction."""

    def __init__(self, code, options=(), cache_dir=None, **_):
        if tuple(options) != _kernels.OPTIONS:
            raise ValueError(f"the emulation models the options {_kernels.OPTIONS}, the loader "
                             f"passed {options}")
        m = re.search(r"typedef\s+(float|double)\s+scalar_t;", code)
        self.scalar = np.float32 if m.group(1) == "float" else np.float64
        flush = _kernels.FLUSH_SUBNORMALS[np.dtype(self.scalar).name]
        fibers = "__syncthreads" in code
        self.kernels = _kernels.parse_params(code)
        runners = []
        for name, params_text in _kernels._SIG_RE.findall(code):
            runners.append(_runner(name, params_text, [n for _, n in self.kernels[name]],
                                   fibers, flush))
        # the header goes first; the kernel file's own `#line 1` keeps error lines right
        src = HEADER + "\n" + code + '\n#line 1 "emulation-runners"\n' + "\n".join(runners)
        cache_dir = cache_dir or os.path.join(tempfile.gettempdir(),
                                              f"convkit-cuda-emu-{os.getuid()}")
        os.makedirs(cache_dir, exist_ok=True)
        h = hashlib.sha256(src.encode()).hexdigest()[:20]
        so = os.path.join(cache_dir, f"k{h}.so")
        with _build_lock:
            if not os.path.exists(so):
                cpp = os.path.join(cache_dir, f"k{h}.cpp")
                with open(cpp, "w") as f:
                    f.write(src)
                cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
                tmp = f"{so}.{os.getpid()}.tmp"
                # -ffp-contract=off: no fused multiply-adds, as NVRTC --fmad=false
                p = subprocess.run([cxx, "-O1", "-std=c++14", "-shared", "-fPIC",
                                    "-ffp-contract=off", "-fno-fast-math", "-Wall",
                                    "-Wno-unused-function", "-Wno-unused-variable",
                                    "-o", tmp, cpp], capture_output=True, text=True)
                if p.returncode:
                    raise RuntimeError(f"host compile of the kernels failed:\n{p.stderr}")
                os.replace(tmp, so)
        self._lib = ctypes.CDLL(so)
        self._functions = {}

    def get_function(self, name):
        fn = self._functions.get(name)
        if fn is None:
            if name not in self.kernels:
                raise AttributeError(f"no kernel {name!r} in module ({sorted(self.kernels)})")
            fn = self._functions[name] = EmuFunction(self._lib, name, self.kernels[name],
                                                     self.scalar)
        return fn


# ------------------------------------------------------------------------------ devices
_tls = threading.local()


def _current_device() -> int:
    return getattr(_tls, "device", 0)


class _Device:
    """``cupy.cuda.Device``: a context manager that makes its device current."""

    capabilities = {}     # device id -> compute capability string; "90" when absent

    def __init__(self, device=None):
        self.id = _current_device() if device is None else int(device)

    @property
    def compute_capability(self):
        return self.capabilities.get(self.id, "90")

    def __enter__(self):
        self._prev = _current_device()
        _tls.device = self.id
        return self

    def __exit__(self, *exc):
        _tls.device = self._prev
        return False

    def synchronize(self):
        pass


class OnDevice(np.ndarray):
    """A NumPy array that the emulation treats as living on GPU ``emu_device``.

    As in CuPy, a view stays on its base's device and a new buffer (a copy, a cast, a ufunc's
    result) is allocated on the current device -- so boundary work done on the wrong device
    shows up as a device mismatch."""

    emu_device = 0

    def __array_finalize__(self, obj):
        dev = getattr(obj, "emu_device", None) if self.base is not None else None
        self.emu_device = _current_device() if dev is None else dev


def _allocating_on_current_device(f):
    """numpy function ``f`` as the stand-in's: while a GPU other than 0 is current, a new
    plain-NumPy result is tagged as living there (plain arrays count as GPU 0)."""
    @functools.wraps(f)
    def g(*args, **kwargs):
        out = f(*args, **kwargs)
        dev = _current_device()
        if dev and type(out) is np.ndarray:
            out = out.view(OnDevice)
            out.emu_device = dev
        return out
    return g


def on_gpu(a, device: int):
    """``a`` as an array on emulated GPU ``device`` (a view)."""
    v = np.asarray(a).view(OnDevice)
    v.emu_device = int(device)
    return v


def _device_id(a) -> int:
    return getattr(a, "emu_device", 0)


def _data_ptr(a) -> int:
    """The address of ``a``'s first element: host memory stands in for the device's."""
    return a.ctypes.data


class _Linalg:
    """``cupy._core._routines_linalg``: the cuBLAS compute type per dtype."""

    COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC = 0, 1, 2
    COMPUTE_TYPE_FP16, COMPUTE_TYPE_FP32, COMPUTE_TYPE_FP64 = 3, 4, 5
    COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32 = 6, 7

    def __init__(self):
        self.types = {}

    def get_compute_type(self, dtype):
        return self.types.get(np.dtype(dtype).name, self.COMPUTE_TYPE_DEFAULT)

    def set_compute_type(self, dtype, compute_type):
        self.types[np.dtype(dtype).name] = compute_type


# ------------------------------------------------------------------------------- cuBLAS
_CUDA_R = {0: np.dtype(np.float32), 1: np.dtype(np.float64)}     # CUDA_R_32F, CUDA_R_64F
# cublasComputeType_t -> the scalar type it computes in (alpha and beta are of that type)
_COMPUTE = {68: np.dtype(np.float32), 69: np.dtype(np.float32), 77: np.dtype(np.float32),
            70: np.dtype(np.float64), 71: np.dtype(np.float64)}
COMPUTE_32F_FAST_TF32 = 77
CUBLAS_LOG: list[dict] = []    # one entry per emulated cuBLAS call, with the current device


class CUBLASError(RuntimeError):
    pass


def _host_scalar(ptr, dtype):
    return np.frombuffer((ctypes.c_char * dtype.itemsize).from_address(ptr), dtype)[0]


def _device_matrices(ptr, dtype, batch, rows, cols, ld, stride):
    """The ``batch`` column-major rows x cols matrices at ``ptr`` (element (i, j) of matrix b
    at b*stride + i + j*ld), as a writable (batch, rows, cols) view of that memory."""
    extent = (batch - 1) * stride + (cols - 1) * ld + rows
    base = np.frombuffer((ctypes.c_char * (extent * dtype.itemsize)).from_address(ptr), dtype)
    it = dtype.itemsize
    return np.lib.stride_tricks.as_strided(base, (batch, rows, cols),
                                           (stride * it, it, ld * it))


def _round_tf32(a):
    """float32 -> the nearest TF32 value (10 mantissa bits, ties to even), non-finite kept."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    r = ((u + np.uint32(0xFFF) + ((u >> np.uint32(13)) & np.uint32(1)))
         & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isfinite(a), r, a)


def gemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA,
                         B, Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount,
                         computeType, algo):
    """cublasGemmStridedBatchedEx with cuBLAS's semantics: column-major, C_i = alpha op(A_i)
    op(B_i) + beta C_i (C not read when beta == 0), alpha/beta read from host memory as the
    compute type's scalar; the argument checks cuBLAS makes (CUBLAS_STATUS_INVALID_VALUE /
    NOT_SUPPORTED) raise, and so do batches whose C overlap (undefined on a GPU).  Under
    CUBLAS_COMPUTE_32F_FAST_TF32 the inputs are rounded to TF32 (what the tensor cores
    multiply; cuBLAS may also keep FP32), accumulation is FP32 as there."""
    if Atype != Btype or Btype != Ctype or Ctype not in _CUDA_R:
        raise CUBLASError("CUBLAS_STATUS_NOT_SUPPORTED: data types")
    dt = _CUDA_R[Ctype]
    if computeType not in _COMPUTE or _COMPUTE[computeType] != dt:
        raise CUBLASError(f"CUBLAS_STATUS_NOT_SUPPORTED: compute type {computeType} for {dt}")
    ints = (m, n, k, lda, ldb, ldc, batchCount)
    ra, ca = (m, k) if transa == 0 else (k, m)
    rb, cb = (k, n) if transb == 0 else (n, k)
    if (any(not 0 <= v <= 2**31 - 1 for v in ints) or transa not in (0, 1)
            or transb not in (0, 1) or lda < max(1, ra) or ldb < max(1, rb)
            or ldc < max(1, m)):
        raise CUBLASError(f"CUBLAS_STATUS_INVALID_VALUE: transa={transa} transb={transb} "
                          f"m={m} n={n} k={k} lda={lda} ldb={ldb} ldc={ldc} "
                          f"batchCount={batchCount}")
    if batchCount > 1 and m and n and abs(strideC) < (n - 1) * ldc + m:
        raise CUBLASError(f"the batches of C overlap (strideC={strideC} for a {m} x {n} "
                          f"matrix with ldc={ldc}): undefined behaviour in cuBLAS")
    CUBLAS_LOG.append(dict(fn="gemmStridedBatchedEx", transa=transa, transb=transb, m=m, n=n,
                           k=k, batch=batchCount, compute=computeType,
                           device=_current_device()))
    if batchCount == 0 or m == 0 or n == 0:
        return
    st = _COMPUTE[computeType]
    al, be = _host_scalar(alpha, st), _host_scalar(beta, st)
    c = _device_matrices(C, dt, batchCount, m, n, ldc, strideC)
    if k == 0:
        prod = np.zeros(c.shape, dt)
    else:
        a = _device_matrices(A, dt, batchCount, ra, ca, lda, strideA)
        b = _device_matrices(B, dt, batchCount, rb, cb, ldb, strideB)
        a = a if transa == 0 else a.transpose(0, 2, 1)
        b = b if transb == 0 else b.transpose(0, 2, 1)
        if computeType == COMPUTE_32F_FAST_TF32:
            a, b = _round_tf32(a), _round_tf32(b)
        with np.errstate(all="ignore"):         # NaN / inf propagate, as on the GPU
            prod = np.matmul(a, b).astype(dt, copy=False)
    with np.errstate(all="ignore"):
        if al != 1:
            prod = prod * al
        c[...] = prod + be * c if be != 0 else prod


def fake_cupy(device_count=1, driver=13000, runtime=13000, device_error=None,
              nvrtc_error=None, cublas_error=None, capability="90"):
    """A stand-in ``cupy`` module: NumPy for arrays, the host emulation for ``RawModule``.

    ``device_count``/``driver``/``runtime``/``device_error`` set what its ``cuda.runtime``
    reports, ``nvrtc_error``/``cublas_error`` make loading NVRTC / creating a cuBLAS handle
    raise, ``capability`` is every device's compute capability (to exercise CudaBackend's
    error messages)."""
    m = types.ModuleType("cupy")
    m.__version__ = "0+host-emulation"
    m.ndarray = np.ndarray
    m.asnumpy = lambda a, *args, **kw: np.asarray(a)
    m.from_dlpack = np.from_dlpack
    m.RawModule = EmuModule
    # CuPy's sorts are stable (thrust); NumPy's default is not
    m.argsort = _allocating_on_current_device(
        lambda a, axis=-1, kind=None: np.argsort(a, axis=axis, kind="stable"))
    m.sort = _allocating_on_current_device(
        lambda a, axis=-1, kind=None: np.sort(a, axis=axis, kind="stable"))

    matmul_log = []

    def matmul(a, b, out=None):
        matmul_log.append((np.result_type(a, b).name,
                           m._core._routines_linalg.get_compute_type(np.result_type(a, b))))
        return np.matmul(a, b, out=out)

    m.matmul = matmul
    m.matmul_log = matmul_log

    def __getattr__(name):           # everything else: NumPy's function of the same name
        f = getattr(np, name)
        return (_allocating_on_current_device(f)
                if callable(f) and not isinstance(f, (type, np.ufunc)) else f)

    m.__getattr__ = __getattr__

    def get_device_count():
        if device_error is not None:
            raise device_error
        return device_count

    def raiser(err, value):
        def f(*a):
            if err is not None:
                raise err
            return value
        return f

    runtime_ns = types.SimpleNamespace(
        getDevice=_current_device, getDeviceCount=get_device_count,
        driverGetVersion=lambda: driver, runtimeGetVersion=lambda: runtime,
        getDeviceProperties=lambda i: {"name": b"host emulation"})
    device_cls = type("Device", (_Device,), {"capabilities": {
        i: capability for i in range(max(device_count, 1))}})
    m.cuda = types.SimpleNamespace(
        runtime=runtime_ns, Device=device_cls, get_device_id=_current_device,
        nvrtc=types.SimpleNamespace(getVersion=raiser(nvrtc_error, (12, 8))),
        device=types.SimpleNamespace(get_cublas_handle=raiser(cublas_error, 1)),
        cublas=types.SimpleNamespace(gemmStridedBatchedEx=gemmStridedBatchedEx,
                                     CUBLASError=CUBLASError),
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))
    m._core = types.SimpleNamespace(_routines_linalg=_Linalg())
    return m


_OP_MODULES = ("batchnorm", "boxes", "conv", "pool", "roi", "roi_variants", "psroi",
               "conv_transpose", "adaptive_pool", "deform_conv")


def drop_op_modules():
    """Forget the op modules (they bind ``cupy`` at import) and the compiled-kernel caches."""
    import convkit_cuda

    for name in _OP_MODULES:
        sys.modules.pop(f"convkit_cuda.{name}", None)
        if hasattr(convkit_cuda, name):
            delattr(convkit_cuda, name)
    _kernels._modules.clear()
    _kernels._functions.clear()


def install():
    """Put the stand-in ``cupy`` in ``sys.modules`` for the rest of the process and make
    ``convkit_cuda`` use it.  Returns it."""
    cp = fake_cupy()
    sys.modules["cupy"] = cp
    drop_op_modules()
    _kernels.device_id, _kernels.data_ptr = _device_id, _data_ptr
    return cp


@contextlib.contextmanager
def emulated_backend(**fake_kw):
    """A CudaBackend over the stand-in cupy for the block, beside whatever ``cupy`` and
    ``convkit_cuda`` op modules the process had (a real GPU backend keeps working after)."""
    import convkit_cuda

    names = ["cupy"] + [f"convkit_cuda.{n}" for n in _OP_MODULES]
    saved_mods = {k: sys.modules.get(k) for k in names}
    saved_attrs = {n: getattr(convkit_cuda, n) for n in _OP_MODULES if hasattr(convkit_cuda, n)}
    saved_k = (_kernels.device_id, _kernels.data_ptr, _kernels._modules, _kernels._functions)
    try:
        _kernels._modules, _kernels._functions = {}, {}
        sys.modules["cupy"] = fake_cupy(**fake_kw)
        drop_op_modules()
        _kernels.device_id, _kernels.data_ptr = _device_id, _data_ptr
        from convkit_cuda.backend import CudaBackend

        yield CudaBackend()
    finally:
        drop_op_modules()
        (_kernels.device_id, _kernels.data_ptr, _kernels._modules,
         _kernels._functions) = saved_k
        for k, v in saved_mods.items():
            if v is not None:
                sys.modules[k] = v
            else:
                sys.modules.pop(k, None)
        for n, v in saved_attrs.items():
            setattr(convkit_cuda, n, v)


# pytest plugin (-p cuda_emulation, with tests/ on PYTHONPATH): install before the conftest
# files are imported (tests/conftest.py asks at import which backends load)
def pytest_load_initial_conftests(early_config, parser, args):
    install()
