"""The layer base class: parameters, gradients, buffers, children, train/eval, state dicts.

A :class:`Module` pairs an explicit ``forward(x) -> y`` with ``backward(grad_y) -> grad_x`` (the
CS231n layer-with-cache style): ``forward`` keeps in ``self._cache`` a small tuple of exactly what
``backward`` needs, and ``backward`` *adds* the parameter gradients into ``self.grads`` (as torch
accumulates into ``.grad``; call :meth:`Module.zero_grad` before each step).

Arrays are never rebound: ``params``, ``grads`` and ``buffers`` entries are updated in place
(optimiser steps, ``zero_grad``, ``load_state_dict``), so an optimiser may hold references to them.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from .._registry import _override, get_backend, use_backend

_ALREADY_PINNED = contextlib.nullcontext()

__all__ = ["Module", "Sequential", "check_float_input"]


def check_float_input(layer: str, x) -> None:
    """Raise TypeError for non-float input (uint8 images, int labels); never convert silently."""
    kind = np.dtype(x.dtype).kind
    if kind != "f":
        raise TypeError(f"{layer}: input must be float32 or float64, got {x.dtype}; convert images "
                        f"explicitly with convkit.nn.ToFloat() (e.g. Sequential(ToFloat(), "
                        f"Normalize(mean, std), ...)) -- layers never convert silently")


class Module:
    """Base class of every layer and model.

    Attributes
    ----------
    params : dict[str, array]   this module's own trainable arrays (e.g. ``weight``, ``bias``)
    grads : dict[str, array]    gradients, same keys/shapes/dtypes as ``params``
    buffers : dict[str, array]  non-trainable state saved in ``state_dict`` (BN running stats)
    training : bool             ``train()`` / ``eval()``
    backend, xp                 the Backend active when the module was built, and its array module

    Children are registered by attribute assignment (``self.conv1 = Conv2d(...)``), as in torch;
    qualified names join attribute names with dots (``"layer1.conv1.weight"``).
    """

    def __init__(self):
        object.__setattr__(self, "_modules", {})
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.training = True
        self.backend = get_backend()
        self.xp = self.backend.xp
        self._cache = None

    # ------------------------------------------------------------------ structure
    def __setattr__(self, name, value):
        mods = self.__dict__.get("_modules")
        if isinstance(value, Module):
            if mods is None:
                raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                     f"assigning submodule {name!r}")
            mods[name] = value
        elif mods is not None and name in mods:
            del mods[name]
        object.__setattr__(self, name, value)

    def add_param(self, name: str, value) -> None:
        """Register a trainable array (already on this module's backend) and a zero gradient."""
        self.params[name] = value
        self.grads[name] = self.xp.zeros_like(value)

    def add_buffer(self, name: str, value) -> None:
        """Register a non-trainable array saved in the state dict."""
        self.buffers[name] = value

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix: str = ""):
        """(qualified name, module) for this module and all descendants, depth first."""
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        """(qualified name, param, grad) for every trainable array, in a fixed order."""
        for prefix, m in self.named_modules():
            for k, p in m.params.items():
                yield (f"{prefix}.{k}" if prefix else k), p, m.grads[k]

    def num_parameters(self) -> int:
        return sum(int(p.size) for _, p, _ in self.parameters())

    def zero_grad(self) -> None:
        stack = [self]          # (every module once; no qualified names needed)
        while stack:
            m = stack.pop()
            for g in m.grads.values():
                g.fill(0)
            stack.extend(m._modules.values())

    def train(self, mode: bool = True):
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------------ compute
    def _pinned(self):
        """Run functional ops on the backend this module was built on.  When a use_backend
        context already names it (a training loop inside ``with use_backend(...)``), there is
        nothing to switch: no new context per layer call."""
        name = self.backend.name
        if _override.get() == name:
            return _ALREADY_PINNED
        return use_backend(name)

    def forward(self, x):
        """Subclasses compute y from x and keep in ``self._cache`` what backward needs."""
        raise TypeError(f"{type(self).__name__} must define forward(x) (subclass Module and "
                        f"override it)")

    def backward(self, grad_y):
        """Subclasses return grad_x (or None) and add parameter gradients into ``self.grads``."""
        raise TypeError(f"{type(self).__name__} must define backward(grad_y) (subclass Module "
                        f"and override it)")

    def __call__(self, x):
        return self.forward(x)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """{qualified name: numpy.ndarray copy} of every param and buffer (torch's key names)."""
        out = {}
        for prefix, m in self.named_modules():
            for k, a in list(m.params.items()) + list(m.buffers.items()):
                out[f"{prefix}.{k}" if prefix else k] = np.array(m.backend.to_numpy(a), copy=True)
        return out

    def _state_arrays(self) -> dict:
        out = {}
        for prefix, m in self.named_modules():
            for k, a in list(m.params.items()) + list(m.buffers.items()):
                out[f"{prefix}.{k}" if prefix else k] = (m, a)
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays from ``state`` into this module's params/buffers, in place.

        strict: every key must match (missing/unexpected keys raise KeyError); shapes must match
        always (ValueError).  Values are cast to each array's dtype.
        """
        mine = self._state_arrays()
        if strict:
            missing = sorted(set(mine) - set(state))
            extra = sorted(set(state) - set(mine))
            if missing or extra:
                raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {extra}")
        for k, v in state.items():
            if k not in mine:
                continue
            m, a = mine[k]
            v = np.asarray(v)
            if tuple(v.shape) != tuple(a.shape):
                raise ValueError(f"load_state_dict: {k} has shape {tuple(a.shape)} here but "
                                 f"{tuple(v.shape)} in the state dict")
            a[...] = m.backend.asarray(v.astype(a.dtype, copy=False))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    def load(self, path: str | os.PathLike, strict: bool = True) -> None:
        """Read an ``.npz`` written by :meth:`save` into this module."""
        with np.load(path, allow_pickle=False) as f:
            self.load_state_dict({k: f[k] for k in f.files}, strict=strict)

    def __repr__(self):
        extra = self.extra_repr()
        if not self._modules:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}({extra}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


class Sequential(Module):
    """Modules applied in order; ``backward`` runs them in reverse.  Children are named
    ``"0"``, ``"1"``, ... (torch's ``nn.Sequential`` names, so state dict keys match)."""

    def __init__(self, *layers: Module):
        super().__init__()
        self._layers: list[Module] = []
        for layer in layers:
            self.append(layer)

    def append(self, layer: Module):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential: expected a convkit.nn.Module, got {type(layer).__name__}")
        self._modules[str(len(self._layers))] = layer
        self._layers.append(layer)
        return self

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, i):
        return self._layers[i]

    def __iter__(self):
        return iter(self._layers)

    def forward(self, x):
        for layer in self._layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_y):
        g = grad_y
        for layer in reversed(self._layers):
            if g is None:   # a layer before needs no input gradient (ToFloat, first conv)
                break
            g = layer.backward(g)
        return g
