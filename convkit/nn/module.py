"""The layer base class: parameters, gradients, buffers, children, train/eval, state dicts.

A :class:`Module` pairs an explicit ``forward(x) -> y`` with ``backward(grad_y) -> grad_x`` (the
CS231n layer-with-cache style).  Every ``forward`` call keeps its own cache -- a small tuple of
exactly what ``backward`` needs -- on a per-layer stack; every ``backward`` call consumes the most
recent one (last in, first out) and *adds* the parameter gradients into ``self.grads`` (as torch
accumulates into ``.grad``; call :meth:`Module.zero_grad` before each step).  So one layer may be
called several times before its backward (shared weights, a Siamese pair, a recurrent unroll):
backward the calls in reverse order and the gradients of all calls add up.  A backward with no
pending forward raises ``RuntimeError``.  Under :func:`no_grad` forwards keep no cache, and
``train()`` / ``eval()`` drop pending caches (a mode switch ends a step).

Layers run on the backend active at *call* time; their parameters must be arrays of that backend
(numpy and cpu share host arrays).  :meth:`Module.to` / :meth:`Module.astype` convert a whole
model.  Arrays are otherwise never rebound: ``params``, ``grads`` and ``buffers`` entries are
updated in place (optimiser steps, ``zero_grad``, ``load_state_dict``), so an optimiser may hold
references to them -- build it after ``to()`` / ``astype()``.
"""
from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar

import numpy as np

from .._config import blas_single_thread
from .._registry import get_backend
from ..backend import Backend
from ..functional import to_numpy

__all__ = ["Module", "Sequential", "ModuleList", "ModuleDict", "no_grad", "check_float_input"]

_grad_enabled: ContextVar[bool] = ContextVar("convkit_nn_grad_enabled", default=True)

# attribute names that hold arrays, never children
_NOT_CONTAINERS = frozenset(("params", "grads", "buffers", "frozen"))
_CONTAINER = None   # marks a plain list/tuple/dict attribute in ``_modules`` (pickles as itself)


@contextlib.contextmanager
def no_grad():
    """``with convkit.nn.no_grad():`` -- forwards keep no cache (inference: less memory, and no
    pending caches pile up); a backward inside raises RuntimeError."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


def check_float_input(layer: str, x) -> None:
    """Raise TypeError for non-float input (uint8 images, int labels); never convert silently."""
    kind = np.dtype(x.dtype).kind
    if kind != "f":
        raise TypeError(f"{layer}: input must be float32 or float64, got {x.dtype}; convert images "
                        f"explicitly with convkit.nn.ToFloat() (e.g. Sequential(ToFloat(), "
                        f"Normalize(mean, std), ...)) -- layers never convert silently")


def _as_backend(backend) -> Backend:
    return backend if isinstance(backend, Backend) else get_backend(backend)


class Module:
    """Base class of every layer and model.

    Attributes
    ----------
    params : dict[str, array]   this module's own trainable arrays (e.g. ``weight``, ``bias``)
    grads : dict[str, array]    gradients, same keys/shapes/dtypes as ``params``
    buffers : dict[str, array]  non-trainable state saved in ``state_dict`` (BN running stats)
    frozen : set[str]           names of own params that are not trained (:meth:`freeze`)
    training : bool             ``train()`` / ``eval()``
    backend, xp                 the Backend active now, and its array module

    Children are registered by attribute assignment (``self.conv1 = Conv2d(...)``), as in torch,
    and so are Modules inside plain lists, tuples and dicts kept in public attributes
    (``self.blocks = [Conv2d(...), ...]`` gives ``blocks.0.weight``; looked up at each use, so
    appending later counts).  Qualified names join attribute names with dots
    (``"layer1.conv1.weight"``).  A module reachable twice (shared weights) counts once.
    """

    _pending = ("_caches",)     # stacks of pending forward caches (emptied by train/eval/to)
    _transient = ()             # more per-call state left out of pickles (dicts: emptied)

    def __init__(self):
        object.__setattr__(self, "_modules", {})
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.frozen: set = set()
        self._host_buffers: set = set()      # buffers kept as host arrays (counters)
        self._volatile: set = set()          # buffers not in state_dict (torch: persistent=False)
        self.training = True
        self._caches: list = []

    # ------------------------------------------------------------------ structure
    def __setattr__(self, name, value):
        mods = self.__dict__.get("_modules")
        if isinstance(value, Module):
            if mods is None:
                raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                     f"assigning submodule {name!r}")
            mods.pop(name, None)
            mods[name] = value
        elif mods is not None:
            mods.pop(name, None)
            if (isinstance(value, (list, tuple, dict)) and not name.startswith("_")
                    and name not in _NOT_CONTAINERS):
                mods[name] = _CONTAINER
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self.__dict__["_modules"].pop(name, None)
        object.__delattr__(self, name)

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in self._pending:
            state[k] = []
        for k in self._transient:
            if k in state:
                state[k] = {} if isinstance(state[k], dict) else None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def backend(self) -> Backend:
        """The backend active now (layers run there)."""
        return get_backend()

    @property
    def xp(self):
        return get_backend().xp

    def add_param(self, name: str, value) -> None:
        """Register a trainable array (of the active backend) and a zero gradient."""
        self.params[name] = value
        self.grads[name] = get_backend().xp.zeros_like(value)

    def add_buffer(self, name: str, value, persistent: bool = True) -> None:
        """Register a non-trainable array; saved in the state dict unless ``persistent=False``
        (then it still moves with :meth:`to` / :meth:`astype`)."""
        self.buffers[name] = value
        if not persistent:
            self._volatile.add(name)

    def named_children(self):
        """(name, module) of the direct children, in assignment order; Modules kept in plain
        lists/tuples/dicts are named ``attr.index`` / ``attr.key``."""
        for name, m in self._modules.items():
            if m is not _CONTAINER:
                yield name, m
                continue
            c = self.__dict__.get(name)
            if not isinstance(c, (list, tuple, dict)):   # reset by unpickling
                continue
            for k, v in (c.items() if isinstance(c, dict) else enumerate(c)):
                if isinstance(v, Module):
                    yield f"{name}.{k}", v

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "", _seen=None):
        """(qualified name, module) for this module and all descendants, depth first; a module
        reachable by several paths is given once, under its first name."""
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, m in self.named_children():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self):
        """Every module once, this one first (no names built: zero_grad runs it each step)."""
        seen, out, stack = set(), [], [self]
        while stack:
            m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            out.append(m)
            for name, c in m._modules.items():
                if c is not _CONTAINER:
                    stack.append(c)
                    continue
                c = m.__dict__.get(name)
                if isinstance(c, dict):
                    c = c.values()
                elif not isinstance(c, (list, tuple)):
                    continue
                stack.extend(e for e in c if isinstance(e, Module))
        return out

    def _param_slots(self):
        """(qualified name, owning module, key) of every parameter, in a fixed order."""
        for prefix, m in self.named_modules():
            for k in m.params:
                yield (f"{prefix}.{k}" if prefix else k), m, k

    def parameters(self, trainable: bool | None = None):
        """(qualified name, param, grad) for every parameter, in a fixed order.

        trainable: None -- all; True -- only those not frozen; False -- only frozen ones."""
        for name, m, k in self._param_slots():
            if trainable is None or (k not in m.frozen) == trainable:
                yield name, m.params[k], m.grads[k]

    def freeze(self):
        """Stop training every parameter of this module and its children (a backbone):
        backward adds no gradient into them and optimisers skip them.  Returns self."""
        for m in self.modules():
            m.frozen.update(m.params)
        return self

    def unfreeze(self):
        """Undo :meth:`freeze` for this module and its children.  Returns self."""
        for m in self.modules():
            m.frozen.clear()
        return self

    def num_parameters(self, trainable: bool | None = None) -> int:
        return sum(int(p.size) for _, p, _ in self.parameters(trainable))

    def zero_grad(self) -> None:
        for m in self.modules():
            for g in m.grads.values():
                g.fill(0)

    def train(self, mode: bool = True):
        """Training mode on (or off); drops every pending forward cache."""
        for m in self.modules():
            m.training = bool(mode)
            m._clear_pending()
        return self

    def eval(self):
        return self.train(False)

    def clear_caches(self):
        """Drop the pending forward caches of this module and its children."""
        for m in self.modules():
            m._clear_pending()
        return self

    def _clear_pending(self) -> None:
        for k in self._pending:
            self.__dict__[k].clear()

    # ------------------------------------------------------------------ compute
    def _push(self, cache, stack=None) -> None:
        """Keep what one forward call's backward needs (not under :func:`no_grad`); ``stack``:
        another list than ``_caches`` (a layer with two kinds of pending work)."""
        if _grad_enabled.get():
            (self._caches if stack is None else stack).append(cache)

    def _pop(self, stack=None):
        """The cache of the most recent forward call not yet backpropagated."""
        try:
            return (self._caches if stack is None else stack).pop()
        except IndexError:
            raise RuntimeError(
                f"{type(self).__name__}.backward: no pending forward call (each forward keeps "
                f"one cache and each backward consumes the latest; call forward first -- "
                f"caches are not kept under convkit.nn.no_grad(), and train()/eval() drop "
                f"them)") from None

    def _active(self) -> Backend:
        """The backend active now, after checking that this module's arrays belong to it."""
        be = get_backend()
        for d in (self.params, self.buffers):
            for k, a in d.items():
                if not be.is_native(a) and k not in self._host_buffers:
                    kind = type(a).__module__.split(".")[0] + "." + type(a).__name__
                    raise TypeError(
                        f"{type(self).__name__}({self.extra_repr()}): {k!r} is a {kind} but the "
                        f"active backend {be.name!r} needs {be.xp.__name__}.ndarray; convert "
                        f"the model with model.to({be.name!r}) (or run it under the backend "
                        f"it was built on)")
        return be

    def _accumulate(self, name: str, g) -> None:
        if name not in self.frozen:
            self.grads[name] += g

    def forward(self, x):
        """Subclasses compute y from x and ``_push`` what backward needs."""
        raise TypeError(f"{type(self).__name__} must define forward(x) (subclass Module and "
                        f"override it)")

    def backward(self, grad_y):
        """Subclasses ``_pop`` their cache, return grad_x (or None) and add parameter gradients
        into ``self.grads``."""
        raise TypeError(f"{type(self).__name__} must define backward(grad_y) (subclass Module "
                        f"and override it)")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ conversion
    def _convert(self, fn) -> None:
        for m in self.modules():
            for d in (m.params, m.grads, m.buffers):
                for k, a in d.items():
                    if k not in m._host_buffers:
                        d[k] = fn(a)
            m._clear_pending()
            for k in m._transient:
                v = m.__dict__.get(k)
                if isinstance(v, dict):
                    v.clear()

    def to(self, backend):
        """Move every parameter, gradient and buffer to ``backend`` (a name or a Backend);
        pending caches are dropped.  numpy <-> cpu moves nothing (both use host arrays).
        Optimisers built before hold the old arrays: build them after.  Returns self."""
        be = _as_backend(backend)
        self._convert(lambda a: a if be.is_native(a) else be.asarray(to_numpy(a)))
        return self

    def astype(self, dtype):
        """Cast every float parameter, gradient and buffer to ``dtype`` (float32 or float64) on
        its backend; pending caches are dropped.  Returns self."""
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"astype: dtype must be float32 or float64, got {dt}")
        self._convert(lambda a: a.astype(dt) if np.dtype(a.dtype).kind == "f" else a)
        for m in self.modules():
            m._set_dtype(dt)
        return self

    def _set_dtype(self, dt) -> None:
        """Hook for layers that remember a dtype beyond their arrays (ToFloat)."""

    # ------------------------------------------------------------------ state
    def _state_items(self):
        for prefix, m in self.named_modules():
            for d in (m.params, m.buffers):
                for k, a in d.items():
                    if k not in m._volatile:
                        yield (f"{prefix}.{k}" if prefix else k), m, a

    def state_dict(self) -> dict:
        """{qualified name: numpy.ndarray copy} of every param and buffer (torch's key names,
        ``num_batches_tracked`` included), so ``torch_model.load_state_dict({k:
        torch.from_numpy(v) ...})`` works strictly for the same architecture."""
        return {k: np.array(to_numpy(a), copy=True) for k, _, a in self._state_items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays from ``state`` (NumPy arrays, or anything ``np.asarray`` takes: a torch
        CPU state dict works) into this module's params/buffers, in place.

        strict: every key must match (missing/unexpected keys raise KeyError), except that a
        missing ``num_batches_tracked`` is allowed (older checkpoints, as torch); shapes must
        match always (ValueError).  Values are cast to each array's dtype.
        """
        mine = {k: (m, a) for k, m, a in self._state_items()}
        if strict:
            missing = sorted(k for k in set(mine) - set(state)
                             if not k.endswith("num_batches_tracked"))
            extra = sorted(set(state) - set(mine))
            if missing or extra:
                raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {extra}")
        xp = None
        for k, v in state.items():
            if k not in mine:
                continue
            _, a = mine[k]
            v = np.asarray(v)
            if tuple(v.shape) != tuple(a.shape):
                raise ValueError(f"load_state_dict: {k} has shape {tuple(a.shape)} here but "
                                 f"{tuple(v.shape)} in the state dict")
            v = v.astype(a.dtype, copy=False)
            if isinstance(a, np.ndarray):
                a[...] = v
            else:
                xp = xp or get_backend().xp
                a[...] = xp.asarray(v)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    def load(self, path: str | os.PathLike, strict: bool = True) -> None:
        """Read an ``.npz`` written by :meth:`save` into this module."""
        with np.load(path, allow_pickle=False) as f:
            self.load_state_dict({k: f[k] for k in f.files}, strict=strict)

    def __repr__(self):
        extra = self.extra_repr()
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}({extra}"]
        for name, m in children:
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


def _check_module(owner, m):
    if not isinstance(m, Module):
        raise TypeError(f"{owner}: expected a convkit.nn.Module, got {type(m).__name__}")
    return m


class ModuleList(Module):
    """A list of Modules, registered as children ``"0"``, ``"1"``, ... (torch's
    ``nn.ModuleList``): indexing, ``len``, iteration, ``append`` / ``extend`` / ``insert``.
    It has no forward of its own."""

    def __init__(self, modules=()):
        super().__init__()
        self._layers: list[Module] = []
        self.extend(modules)

    def _renumber(self):
        for k in [k for k in self._modules if k.isdigit()]:
            del self._modules[k]
        for i, m in enumerate(self._layers):
            self._modules[str(i)] = m

    def append(self, module: Module):
        self._layers.append(_check_module(type(self).__name__, module))
        self._modules[str(len(self._layers) - 1)] = module
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module):
        self._layers.insert(index, _check_module(type(self).__name__, module))
        self._renumber()

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return type(self)(self._layers[i])
        return self._layers[i]

    def __setitem__(self, i, module):
        self._layers[i] = _check_module(type(self).__name__, module)
        self._renumber()

    def __iter__(self):
        return iter(self._layers)


class ModuleDict(Module):
    """An ordered mapping name -> Module, registered under those names (torch's
    ``nn.ModuleDict``).  It has no forward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        for k, m in (dict(modules or {})).items():
            self[k] = m

    def __setitem__(self, key: str, module: Module):
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"ModuleDict: keys must be non-empty strings without '.', got {key!r}")
        self._modules[key] = _check_module("ModuleDict", module)

    def __getitem__(self, key):
        return self._modules[key]

    def __delitem__(self, key):
        del self._modules[key]

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()


class Sequential(ModuleList):
    """Modules applied in order; ``backward`` runs them in reverse.  Children are named
    ``"0"``, ``"1"``, ... (torch's ``nn.Sequential`` names, so state dict keys match)."""

    def __init__(self, *layers: Module):
        super().__init__(layers)

    def __getitem__(self, i):
        return self._layers[i]

    # Each op that calls BLAS pins it to one thread; one pin around the chain makes theirs
    # nested counts (~13 us of C calls per outer pin, 13 per LeNet5 step before).
    def forward(self, x):
        with blas_single_thread:
            for layer in self._layers:
                x = layer.forward(x)
        return x

    def backward(self, grad_y):
        g = grad_y
        with blas_single_thread:
            for layer in reversed(self._layers):
                if g is None:   # a layer before needs no input gradient (ToFloat, first conv)
                    break
                g = layer.backward(g)
        return g
