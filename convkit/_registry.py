"""The one place that knows the backends: built-in table + ``convkit.backends`` entry points.

Resolution order for the active backend: ``use_backend`` context > ``set_backend`` >
``CONVKIT_BACKEND`` (read at each dispatch, so setting it after import works) > default ``cpu``
(falling back to ``numpy`` with a warning if the compiled extension is missing).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import threading
import warnings
from contextvars import ContextVar

from ._config import environ_key, environ_raw
from .backend import Backend

_BUILTIN = {
    "numpy": "convkit.reference:NumpyBackend",
    "cpu": "convkit.cpu:CpuBackend",
}
_ALIASES = ("auto",)

_override: ContextVar[str | None] = ContextVar("convkit_backend", default=None)
_global: str | None = None
_instances: dict[str, Backend] = {}
_failures: dict[str, str] = {}
_lock = threading.RLock()
_fallback_warned = False


@functools.cache
def _specs() -> dict[str, str]:
    specs = dict(_BUILTIN)
    try:
        eps = importlib.metadata.entry_points(group="convkit.backends")
    except Exception as e:  # pragma: no cover - broken metadata
        warnings.warn(f"convkit: could not read entry points 'convkit.backends': {e}", stacklevel=2)
        eps = ()
    for ep in eps:
        if ep.name in specs and specs[ep.name] != ep.value:
            warnings.warn(f"convkit: entry point backend {ep.name!r} = {ep.value!r} clashes with "
                          f"the built-in {specs[ep.name]!r}; the built-in wins", stacklevel=2)
            continue
        specs[ep.name] = ep.value
    return specs


def known_backends() -> list[str]:
    """Every registered backend name, usable here or not."""
    return sorted(_specs())


def _known_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    n = name.strip().lower()
    if n not in _specs() and n not in _ALIASES:
        raise ValueError(f"unknown convkit backend {name!r}; known backends: "
                         f"{', '.join(known_backends() + list(_ALIASES))}")
    return n


_FIX = {
    "cpu": "the compiled extension is missing; reinstall with `pip install .` (needs a C compiler) "
           "or build in place with `python setup.py build_ext --inplace`",
    "cuda": "install CuPy for your CUDA version (`pip install 'convkit[cuda12]'` or "
            "`'convkit[cuda13]'`) on a machine with an NVIDIA GPU and driver",
}


def _load(name: str) -> Backend:
    """Instantiate backend ``name`` (a known, non-alias name) or raise RuntimeError saying why."""
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _failures:
            raise RuntimeError(_failures[name])
        spec = _specs()[name]
        mod_name, _, cls_name = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
            inst = cls()
        except RuntimeError as e:
            msg = f"backend {name!r} cannot run here: {e}"
        except ImportError as e:
            fix = _FIX.get(name, f"check that the package providing {mod_name!r} is installed")
            msg = f"backend {name!r} cannot run here: import of {mod_name!r} failed ({e}); {fix}"
        except Exception as e:  # a broken plugin must not break convkit
            msg = f"backend {name!r} cannot run here: loading {spec!r} raised {type(e).__name__}: {e}"
        else:
            if not isinstance(inst, Backend):
                msg = f"backend {name!r} cannot run here: {spec!r} is not a convkit.backend.Backend"
            else:
                _instances[name] = inst
                return inst
        _failures[name] = msg
        raise RuntimeError(msg)


def backend_status(name: str) -> tuple[bool, str]:
    """(usable, reason) for a known backend name, without raising."""
    try:
        _load(_known_name(name))
        return True, "ok"
    except RuntimeError as e:
        return False, str(e)


def available_backends() -> list[str]:
    """Names of the backends that load on this machine."""
    return [n for n in known_backends() if backend_status(n)[0]]


_ENV_VAR = "CONVKIT_BACKEND"
_ENV_KEY = environ_key(_ENV_VAR)


def _env_backend() -> str:
    """CONVKIT_BACKEND as os.environ holds it now, or "".  Every op asks: os.environ.get of
    an unset variable raises and catches a KeyError inside the mapping (1-2 us a call, a tenth
    of a small op), where _config.environ_raw is one probe of os.environ's own dict -- the
    same answer, os.environ updates that dict on every change."""
    v = environ_raw(_ENV_VAR, _ENV_KEY)
    if v is None or type(v) is str:
        return v or ""
    return os.environ.decodevalue(v)


def _resolve() -> tuple[str, str]:
    """(name, why) of the backend requested now; name may be 'auto' or unknown (checked later)."""
    n = _override.get()
    if n is not None:
        return n, "use_backend context"
    if _global is not None:
        return _global, "set_backend"
    env = _env_backend().strip()
    if env:
        return env, "env CONVKIT_BACKEND"
    return "cpu", "default"


def _pick(name: str, why: str) -> tuple[Backend, str]:
    global _fallback_warned
    inst = _instances.get(name)     # every op asks: a loaded backend by its own name is the answer
    if inst is not None:
        return inst, why
    name = _known_name(name)
    if name == "auto":
        for cand in ("cuda", "cpu", "numpy"):
            if cand in _specs() and backend_status(cand)[0]:
                return _load(cand), f"{why} (auto -> {cand})"
        raise RuntimeError("backend 'auto': no backend can run here")  # pragma: no cover
    if why == "default" and name == "cpu":
        try:
            return _load("cpu"), why
        except RuntimeError as e:
            if not _fallback_warned:
                _fallback_warned = True
                warnings.warn(f"convkit: falling back to the 'numpy' backend: {e}", RuntimeWarning,
                              stacklevel=3)
            return _load("numpy"), "fallback (cpu extension missing)"
    return _load(name), why


def get_backend(name: str | None = None) -> Backend:
    """The Backend object named ``name``, or the active one when ``name`` is None."""
    if name is not None:
        return _pick(name, "explicit")[0]
    if _override.get() is None and _global is None and not _env_backend():
        inst = _instances.get("cpu")    # (every op asks: _resolve's default, once loaded)
        if inst is not None:
            return inst
    return _pick(*_resolve())[0]


def active_backend_reason() -> tuple[str, str]:
    """(backend name, why it is active) for show_config()."""
    be, why = _pick(*_resolve())
    return be.name, why


def set_backend(name: str | None) -> None:
    """Make ``name`` the process-wide backend (None: back to env var / default).

    The backend is loaded now, so an unusable one raises here, not at the first op."""
    global _global
    if name is None:
        _global = None
        return
    n = _known_name(name)
    _pick(n, "set_backend")
    _global = n


@contextlib.contextmanager
def use_backend(name: str):
    """``with convkit.use_backend("numpy") as be:`` -- a context-local backend (threads and
    async tasks each see their own; nesting restores the outer one)."""
    n = _known_name(name)
    be = _pick(n, "use_backend context")[0]
    token = _override.set(n)
    try:
        yield be
    finally:
        _override.reset(token)


def _reset_for_tests() -> None:
    global _global, _fallback_warned
    with _lock:
        _global = None
        _fallback_warned = False
        _instances.clear()
        _failures.clear()
        _specs.cache_clear()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()   # another thread may have held it (loading a backend) at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
