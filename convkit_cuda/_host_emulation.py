"""Run the ``cuda`` backend without a GPU: a host (CPU) emulation of its CUDA kernels.

For testing only -- never imported by convkit itself.  It builds a stand-in ``cupy`` module
whose arrays are NumPy arrays and whose ``RawModule`` compiles the *same* kernel source the
loader hands to NVRTC (:func:`convkit_cuda._kernels.kernel_source`) with the host C++
compiler, after a small header that defines ``__global__``, ``blockIdx``/``threadIdx``,
``atomicAdd`` and the few intrinsics the kernels use.  A launch runs every (block, thread)
of the grid one after another, so:

* kernel indexing, bounds and arithmetic are exercised exactly as written;
* the grid is capped at a couple of blocks, so every grid-stride loop really strides;
* arguments are checked the way a GPU would punish them: each must be a NumPy scalar of the
  exact C type the kernel declares, or a C-contiguous array of the declared element type;
* everything else CuPy would do (``matmul``, sorting, reductions) is NumPy's.

What it cannot show: races (threads run one at a time, so atomics are trivially exact),
NVRTC-only compile problems (``tests/test_cuda_build.py`` compiles with nvcc for that),
performance.  Use::

    python -m pytest -p convkit_cuda._host_emulation tests/test_pool.py -k cuda

(as a pytest plugin it installs the stand-in before the test modules ask which backends
load), or :func:`install` / :func:`fake_cupy` from a test.
"""
from __future__ import annotations

import contextlib
import ctypes
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

HEADER = r"""
#include <cmath>
#include <cstring>
using std::floor; using std::ceil; using std::round; using std::sqrt;
struct ck_dim3 { unsigned int x, y, z; };
static ck_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
template <typename T> static inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
static inline double __longlong_as_double(long long v)
{ double d; std::memcpy(&d, &v, sizeof d); return d; }
"""

_SIG_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_CTYPES = {"scalar_t*": "S*", "longlong*": "I*", "double*": "D*", "unsignedlonglong*": "U*",
           "scalar_t": "S", "longlong": "I", "double": "D"}
MAX_BLOCKS = 2     # run at most this many blocks: grid-stride loops must cover the rest


def _parse(code: str):
    """{kernel: [(type code, param name), ...]} of the extern "C" kernels in ``code``."""
    out = {}
    for name, params in _SIG_RE.findall(code):
        ps = []
        for p in params.split(","):
            p = re.sub(r"\b(const|__restrict__)\b", " ", p).strip()
            m = re.fullmatch(r"(.*?[\s*])(\w+)", p)
            ps.append((_CTYPES[re.sub(r"\s+", "", m.group(1))], m.group(2)))
        out[name] = ps
    return out


def _runner(name: str, params_text: str, names: list[str]) -> str:
    args = ", ".join(names)
    return (f'extern "C" void emu_run_{name}(unsigned emu_gx_, unsigned emu_bx_, '
            f"{params_text}) {{\n"
            f"  gridDim.x = emu_gx_; gridDim.y = gridDim.z = 1;\n"
            f"  blockDim.x = emu_bx_; blockDim.y = blockDim.z = 1;\n"
            f"  for (unsigned b_ = 0; b_ < emu_gx_; ++b_)\n"
            f"    for (unsigned t_ = 0; t_ < emu_bx_; ++t_) {{\n"
            f"      blockIdx.x = b_; threadIdx.x = t_; {name}({args});\n    }}\n}}\n")


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
        self._fn.restype = None
        self._want = {"S": self.scalar.type, "I": np.int64, "D": np.float64}
        self._ptr = {"S*": self.scalar, "I*": np.dtype(np.int64), "D*": np.dtype(np.float64),
                     "U*": np.dtype(np.uint64)}

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
        if gx < 1 or bx < 1:
            raise ValueError(f"{self.name}: empty launch configuration grid={grid} block={block}")
        self._fn(min(gx, MAX_BLOCKS), bx, *cargs)


_build_lock = threading.Lock()


class EmuModule:
    """Stand-in for ``cupy.RawModule``: compiles ``code`` for the host on construction."""

    def __init__(self, code, options=(), cache_dir=None, **_):
        m = re.search(r"typedef\s+(float|double)\s+scalar_t;", code)
        self.scalar = np.float32 if m.group(1) == "float" else np.float64
        self.kernels = _parse(code)
        runners = []
        for name, params_text in _SIG_RE.findall(code):
            runners.append(_runner(name, params_text, [n for _, n in self.kernels[name]]))
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
                p = subprocess.run([cxx, "-O1", "-std=c++14", "-shared", "-fPIC",
                                    "-ffp-contract=off", "-Wall", "-Wno-unused-function",
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


class _Device:
    compute_capability = "90"

    def __init__(self, device=0):
        self.id = int(device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


def fake_cupy(device_count=1, driver=13000, runtime=13000, device_error=None):
    """A stand-in ``cupy`` module: NumPy for arrays, the host emulation for ``RawModule``.

    ``device_count``/``driver``/``runtime``/``device_error`` set what its
    ``cuda.runtime`` reports (to exercise CudaBackend's error messages)."""
    m = types.ModuleType("cupy")
    m.__version__ = "0+host-emulation"
    m.ndarray = np.ndarray
    m.asnumpy = lambda a, *args, **kw: np.asarray(a)
    m.from_dlpack = np.from_dlpack
    m.RawModule = EmuModule
    # CuPy's sorts are stable (thrust); NumPy's default is not
    m.argsort = lambda a, axis=-1, kind=None: np.argsort(a, axis=axis, kind="stable")
    m.sort = lambda a, axis=-1, kind=None: np.sort(a, axis=axis, kind="stable")

    def __getattr__(name):           # everything else: NumPy's function of the same name
        return getattr(np, name)

    m.__getattr__ = __getattr__

    def get_device_count():
        if device_error is not None:
            raise device_error
        return device_count

    runtime_ns = types.SimpleNamespace(
        getDevice=lambda: 0, getDeviceCount=get_device_count,
        driverGetVersion=lambda: driver, runtimeGetVersion=lambda: runtime,
        getDeviceProperties=lambda i: {"name": b"host emulation"})
    m.cuda = types.SimpleNamespace(
        runtime=runtime_ns, Device=_Device, get_device_id=lambda: 0,
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))
    return m


_OP_MODULES = ("batchnorm", "boxes", "conv", "pool", "roi")


def _host_on_device(a):
    return contextlib.nullcontext()


def install():
    """Put the stand-in ``cupy`` in ``sys.modules`` for the rest of the process and make
    ``convkit_cuda`` use it (NumPy arrays have no CUDA device to enter).  Returns it."""
    import convkit_cuda
    from convkit_cuda import _kernels

    cp = fake_cupy()
    sys.modules["cupy"] = cp
    for name in _OP_MODULES:                 # op modules bound to another cupy: drop them
        sys.modules.pop(f"convkit_cuda.{name}", None)
        if hasattr(convkit_cuda, name):
            delattr(convkit_cuda, name)
    _kernels._modules.clear()
    _kernels._functions.clear()
    _kernels.on_device = _host_on_device
    return cp


# pytest plugin (-p convkit_cuda._host_emulation): install before the conftest files are
# imported (tests/conftest.py asks at import which backends load)
def pytest_load_initial_conftests(early_config, parser, args):
    install()
