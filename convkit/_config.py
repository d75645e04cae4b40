"""Process-wide knobs: threads, im2col workspace cap, determinism on the GPU."""
from __future__ import annotations

import contextlib
import functools
import os
import threading

_lock = threading.Lock()
_num_threads: int | None = None          # None: resolve from the environment
_workspace_limit: int = 256 * 2**20       # bytes
_deterministic: bool = False
_allow_tf32: bool = os.environ.get("CONVKIT_ALLOW_TF32", "") == "1"    # set_allow_tf32
_MAX_THREADS = 4096                       # DESIGN.md: set_num_threads takes 1..4096
# True in a process forked (os.fork, multiprocessing's fork start method) from one that had
# loaded convkit's OpenMP kernels: libgomp cannot start a thread team in such a child (its
# first parallel region hangs), so the child runs every CPU kernel on one thread.
_forked_child: bool = False


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
        raise ValueError(f"{name} must be an integer in 1..{_MAX_THREADS}, got {v!r}") from None
    if not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"{name} must be an integer in 1..{_MAX_THREADS}, got {v!r}")
    return n


def environ_key(name: str):
    """``name`` as os.environ's own dict holds it (CPython's os._Environ), or None."""
    try:
        return os.environ.encodekey(name)
    except AttributeError:  # pragma: no cover - another os.environ
        return None


def environ_raw(name: str, key):
    """Environment variable ``name`` (``key``: environ_key(name)) as os.environ holds it now,
    undecoded, or None.  os.environ.get encodes the name and raises and catches a KeyError for
    an unset variable (~0.7 us); os.environ updates its own dict on every change, so one probe
    of that dict is the same answer."""
    data = getattr(os.environ, "_data", None)
    if key is None or type(data) is not dict:   # pragma: no cover - another os.environ
        return os.environ.get(name)
    return data.get(key)


_THREAD_VARS = ("CONVKIT_NUM_THREADS", "OMP_NUM_THREADS")
_THREAD_KEYS = tuple(environ_key(n) for n in _THREAD_VARS)
# (raw values of _THREAD_VARS, the count they gave): every CPU op asks for the thread count,
# and parsing the two variables each time was ~1.8 us of a call; a changed value is parsed anew
_env_threads: tuple = (object(), 0)


def _threads_from_env() -> int:
    for name in _THREAD_VARS:
        n = _env_int(name)
        if n is not None:
            return n
    return _physical_cores()


def get_num_threads() -> int:
    """Threads the CPU kernels use: set_num_threads, else CONVKIT_NUM_THREADS, else
    OMP_NUM_THREADS, else the usable physical cores; 1 in a child forked after convkit's
    OpenMP kernels were loaded (see _forked_child)."""
    global _env_threads
    if _forked_child:
        return 1
    if _num_threads is not None:
        return _num_threads
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and _THREAD_KEYS[0] is not None:     # (environ_raw, inlined)
        raw = (data.get(_THREAD_KEYS[0]), data.get(_THREAD_KEYS[1]))
    else:   # pragma: no cover - another os.environ
        raw = tuple(environ_raw(n, k) for n, k in zip(_THREAD_VARS, _THREAD_KEYS))
    seen = _env_threads
    if seen[0] == raw:
        return seen[1]
    n = _threads_from_env()         # (a bad value raises here, every call: never remembered)
    _env_threads = (raw, n)
    return n


def set_num_threads(n: int | None) -> None:
    """Bound the CPU kernels' OpenMP team to ``n`` threads, 1..4096 (None: back to the
    default).  In a forked child convkit runs on one thread whatever ``n`` says."""
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_THREADS:
            raise ValueError(f"set_num_threads: n must be an int in 1..{_MAX_THREADS} or None, "
                             f"got {n!r}")
    with _lock:
        _num_threads = n


def _after_fork_in_child() -> None:
    global _forked_child, _lock
    import sys

    _lock = threading.Lock()            # a lock some other thread held at the fork stays held
    blas_single_thread._reset()
    # only convkit's OpenMP extensions start libgomp teams; a parent that never loaded them
    # leaves the child free to run parallel
    if any(m.startswith("convkit.cpu._") for m in list(sys.modules)):
        _forked_child = True


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
    kernels call, loaded first), found once; [] without threadpoolctl or with an unknown BLAS."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS scipy calls)
        from threadpoolctl import ThreadpoolController

        return list(ThreadpoolController().select(user_api="blas").lib_controllers)
    except Exception:  # no threadpoolctl or an unknown BLAS: leave BLAS as it is
        return []


def _openblas_calls(ctrl):
    """(get, set) of a pthreads OpenBLAS's own thread-count functions, or None.

    threadpoolctl (>= 3.6) lets only the first Python thread that set a pthreads OpenBLAS's
    thread count change it later; a call from any other thread silently does nothing.  A conv
    in a worker thread then ran its GEMMs on OpenBLAS's two threads, whose partition changed
    the result's bits.  OpenBLAS's count is process-wide, so convkit calls it directly.
    """
    if getattr(ctrl, "internal_api", None) != "openblas" or \
            getattr(ctrl, "threading_layer", None) == "openmp":
        return None
    import ctypes

    try:
        lib = ctypes.CDLL(ctrl.filepath)
    except OSError:
        return None
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                return get, set_
    return None


@functools.cache
def _blas_thread_calls() -> list:
    calls = []
    for ctrl in blas_controllers():
        calls.append(_openblas_calls(ctrl) or (ctrl.get_num_threads, ctrl.set_num_threads))
    return calls


class BlasPin:
    """Process-wide, re-entrant pin of every loaded BLAS to one thread: the first caller in
    saves the thread counts, the last one out restores them.  The cpu conv's BLAS GEMMs run
    inside convkit's own OpenMP team under it (one pool of threads, never two competing for
    the cores), and convkit.nn's small host GEMMs under it (waking BLAS's threads costs more
    than a small GEMM computes).  Entering from outside costs a few C calls (~13 us for two
    OpenBLAS libraries here); a nested enter only counts, so ``Sequential`` pins once around
    its layers instead of once per op (bench/RESULTS.md, issue 13)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list = []
        self._mine = threading.local()      # this thread's share of _depth

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                calls = _blas_thread_calls()
                self._saved = [get() for get, _ in calls]
                for (_, set_), n in zip(calls, self._saved):
                    if n != 1:
                        set_(1)
            self._depth += 1
        self._mine.depth = getattr(self._mine, "depth", 0) + 1
        return self

    def held(self) -> bool:
        """True when this thread is inside the pin: entering again would only count (the nn
        layers' small GEMMs skip the enter then, ~1 us of Python each)."""
        return getattr(self._mine, "depth", 0) > 0

    def _reset(self):
        """In a forked child: no caller is inside (the parent's threads did not come along)."""
        self._lock = threading.Lock()
        self._depth = 0
        self._mine = threading.local()

    def __exit__(self, *exc):
        self._mine.depth -= 1
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for (_, set_), n in zip(_blas_thread_calls(), self._saved):
                    if n != 1:
                        set_(n)

    @contextlib.contextmanager
    def released(self):
        """BLAS's own thread counts back for one GEMM big enough to use them, inside a pin
        that only this thread holds.  Then the lock is held throughout, so no other thread
        enters the pin (and runs a conv's GEMMs on BLAS threads, changing its bits) meanwhile;
        the body must not enter the pin itself.  Otherwise nothing changes and nothing waits."""
        self._lock.acquire()
        own = self._depth > 0 and self._depth == getattr(self._mine, "depth", 0)
        if not own:
            self._lock.release()
            yield
            return
        try:
            calls = _blas_thread_calls()
            for (_, set_), n in zip(calls, self._saved):
                if n != 1:
                    set_(n)
            try:
                yield
            finally:
                for (_, set_), n in zip(calls, self._saved):
                    if n != 1:
                        set_(1)
        finally:
            self._lock.release()


blas_single_thread = BlasPin()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
