"""Process-wide knobs: threads, im2col workspace cap, determinism on the GPU."""
from __future__ import annotations

import functools
import os
import threading

_lock = threading.Lock()
_num_threads: int | None = None          # None: resolve from the environment
_workspace_limit: int = 256 * 2**20       # bytes
_deterministic: bool = False
_allow_tf32: bool = os.environ.get("CONVKIT_ALLOW_TF32", "") == "1"    # set_allow_tf32


@functools.cache
def _physical_cores() -> int:
    """Usable physical cores, as scikit-learn counts them: affinity set, SMT siblings merged.
    Read once per process: every CPU op asks, and reading /sys took ~21 us a call."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(os.cpu_count() or 1, 1)
    cores = set()
    for cpu in usable:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        try:
            with open(path) as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(len(cores), 1)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    if name == "OMP_NUM_THREADS":
        v = v.split(",")[0].strip()   # OpenMP allows a list for nested teams: the outer one is ours
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {v!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return n


def get_num_threads() -> int:
    """Threads the CPU kernels use: set_num_threads, else CONVKIT_NUM_THREADS, else
    OMP_NUM_THREADS, else the usable physical cores."""
    if _num_threads is not None:
        return _num_threads
    for name in ("CONVKIT_NUM_THREADS", "OMP_NUM_THREADS"):
        n = _env_int(name)
        if n is not None:
            return n
    return _physical_cores()


def set_num_threads(n: int | None) -> None:
    """Bound the CPU kernels' OpenMP team to ``n`` threads (None: back to the default)."""
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"set_num_threads: n must be a positive int or None, got {n!r}")
    with _lock:
        _num_threads = n


def get_workspace_limit() -> int:
    """Largest scratch buffer (bytes) one CPU conv call may allocate for im2col."""
    return _workspace_limit


def set_workspace_limit(nbytes: int) -> None:
    """Cap the im2col workspace (default 256 MiB).  Work is split into smaller pieces to
    fit; if even one piece does not fit the call raises MemoryError naming the limit."""
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"set_workspace_limit: nbytes must be a positive int, got {nbytes!r}")
    with _lock:
        _workspace_limit = nbytes


def get_deterministic() -> bool:
    return _deterministic


def set_deterministic(flag: bool) -> None:
    """Require deterministic kernels (GPU backwards without atomics); CPU ones always are."""
    global _deterministic
    _deterministic = bool(flag)


def get_allow_tf32() -> bool:
    return _allow_tf32


def set_allow_tf32(flag: bool) -> None:
    """Let float32 GEMMs on the GPU use TF32 tensor cores (10-bit mantissa inputs, as cuDNN's
    default for convolutions); off by default (full FP32) unless CONVKIT_ALLOW_TF32=1.  CPU
    backends ignore it."""
    global _allow_tf32
    _allow_tf32 = bool(flag)


@functools.cache
def blas_controllers() -> list:
    """threadpoolctl controllers of every BLAS loaded in this process (scipy's, which the cpu
    kernels call, loaded first), found once; [] without threadpoolctl or with an unknown BLAS.
    The cpu conv pin and convkit.nn's small host GEMMs set BLAS threads through these."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS scipy calls)
        from threadpoolctl import ThreadpoolController

        return list(ThreadpoolController().select(user_api="blas").lib_controllers)
    except Exception:  # no threadpoolctl or an unknown BLAS: leave BLAS as it is
        return []
