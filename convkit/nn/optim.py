"""Optimisers with torch's exact update rules (``torch.optim.SGD`` / ``torch.optim.Adam``),
parameter groups, state dicts, and learning-rate schedules.

An optimiser takes a Module, an iterable of ``(name, param, grad)`` triples
(``module.parameters()``), or a list of parameter groups -- dicts with ``"params"`` (a Module or
triples) and any hyper-parameter of that optimiser (``lr``, ``weight_decay``, ``momentum``,
...) overriding the defaults for that group, as torch's param groups do::

    opt = SGD([{"params": model.backbone, "lr": 1e-3},
               {"params": model.head, "weight_decay": 0}], lr=1e-2, momentum=0.9,
              weight_decay=5e-4)

Params are updated in place.  A parameter whose module froze it (:meth:`Module.freeze`, also
after the optimiser was built) is skipped, as torch skips a parameter without ``.grad``.
``opt.lr`` reads the first group's lr; assigning it sets every group's lr.  Schedules
(:class:`StepLR`, :class:`CosineAnnealingLR`, :class:`LinearWarmup`) set each group's lr from its
own base lr.  ``state_dict()`` / ``load_state_dict()`` (and ``save`` / ``load`` as ``.npz``)
restore an optimiser -- momentum buffers, Adam moments and step counts, hyper-parameters -- so a
resumed run gives the same bits as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from .._registry import get_backend
from ..functional import to_numpy

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "CosineAnnealingLR",
           "LinearWarmup"]


def _zeros_like(p):
    z = p.copy()
    z[...] = 0
    return z


def _entries(params, who):
    """[(name, param, grad, owning module or None, key)] from a Module or triples; the
    optimiser appends each entry's index."""
    if hasattr(params, "_param_slots"):
        return [(n, m.params[k], m.grads[k], m, k) for n, m, k in params._param_slots()]
    out = []
    for item in params:
        if isinstance(item, dict) or len(item) != 3:
            raise TypeError(f"{who}: expected (name, param, grad) triples as yielded by "
                            f"Module.parameters(), or a list of parameter-group dicts")
        n, p, g = item
        out.append((n, p, g, None, None))
    return out


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``lr``, state dicts.  Subclasses define
    ``defaults`` (their hyper-parameters), ``_check(group)`` and ``_update(group, entries)``."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        groups = list(params) if isinstance(params, (list, tuple)) else None
        if groups and all(isinstance(g, dict) for g in groups):
            for g in groups:
                self.add_param_group(g)
        else:
            self.add_param_group({"params": params})
        if not any(g["params"] for g in self.param_groups):
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")

    def add_param_group(self, group: dict) -> None:
        """Add a group: ``{"params": Module or triples, **hyper-parameters}``."""
        who = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{who}: a parameter group is a dict with a 'params' entry")
        unknown = sorted(set(group) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(f"{who}: unknown hyper-parameters {unknown} in a parameter group; "
                             f"known: {sorted(self.defaults)}")
        entries = _entries(group["params"], who)
        taken = {id(e[1]) for g in self.param_groups for e in g["params"]}
        ids = [id(e[1]) for e in entries]
        if len(set(ids)) != len(ids) or taken & set(ids):
            raise ValueError(f"{who}: a parameter appears in more than one place; each "
                             f"parameter belongs to one group, once")
        g = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._check(g)
        # state is keyed by the parameter's position over all groups (torch's rule): names
        # given by different sub-modules may repeat ("weight"), positions do not
        start = sum(len(x["params"]) for x in self.param_groups)
        g["params"] = [e + (start + i,) for i, e in enumerate(entries)]
        self.param_groups.append(g)
        for e in g["params"]:
            self.state[e[5]] = {}

    @property
    def params(self):
        """Every (name, param, grad) triple, over all groups."""
        return [e[:3] for g in self.param_groups for e in g["params"]]

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value) -> None:
        for g in self.param_groups:
            g["lr"] = float(value)

    def zero_grad(self):
        for g in self.param_groups:
            for e in g["params"]:
                e[2][...] = 0

    def _check(self, g: dict) -> None:
        if not g["lr"] >= 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {g['lr']!r}")
        g["lr"] = float(g["lr"])

    def step(self):
        for g in self.param_groups:
            live = [e for e in g["params"] if e[3] is None or e[4] not in e[3].frozen]
            self._update(g, live)

    def _update(self, group, entries):
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """torch's layout: ``{"state": {index: {key: numpy copy or number}}, "param_groups":
        [{hyper-parameters..., "params": [indices], "param_names": [names]}]}``; a parameter's
        index is its position over all groups."""
        state = {i: {k: (np.array(to_numpy(v), copy=True) if hasattr(v, "shape") else v)
                     for k, v in st.items()} for i, st in self.state.items() if st}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [e[5] for e in g["params"]],
                   "param_names": [e[0] for e in g["params"]]} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        """Restore hyper-parameters and per-parameter state from :meth:`state_dict` (the same
        groups of the same sizes, names and shapes; ValueError otherwise).  Arrays are copied."""
        who = type(self).__name__
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                list(s["params"]) != [e[5] for e in g["params"]]
                or list(s.get("param_names", [e[0] for e in g["params"]]))
                != [e[0] for e in g["params"]]
                for s, g in zip(groups, self.param_groups)):
            raise ValueError(f"{who}.load_state_dict: the saved parameter groups do not match "
                             f"this optimiser's (same model and groups needed)")
        owner = {e[5]: e for g in self.param_groups for e in g["params"]}
        state = {int(i): st for i, st in sd["state"].items()}
        unknown = sorted(set(state) - set(owner))
        if unknown:
            raise ValueError(f"{who}.load_state_dict: state for unknown parameters {unknown}")
        for s, g in zip(groups, self.param_groups):
            for k, v in s.items():
                if k not in ("params", "param_names"):
                    g[k] = tuple(v) if isinstance(v, (list, tuple)) else v
            self._check(g)
        self.state = {i: {} for i in owner}
        for i, st in state.items():
            name, p = owner[i][0], owner[i][1]
            for k, v in st.items():
                if hasattr(v, "shape") and np.ndim(v) > 0:
                    v = np.asarray(v)
                    if v.shape != tuple(p.shape):
                        raise ValueError(f"{who}.load_state_dict: {name}.{k} has shape "
                                         f"{v.shape}, the parameter {tuple(p.shape)}")
                    buf = _zeros_like(p)
                    buf[...] = v.astype(p.dtype) if isinstance(p, np.ndarray) \
                        else get_backend().asarray(v.astype(p.dtype))
                    v = buf
                elif hasattr(v, "shape"):
                    v = v.item()
                self.state[i][k] = v

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` to ``.npz`` (arrays as ``state/<param>/<key>``, the groups
        as JSON in ``param_groups``)."""
        sd = self.state_dict()
        flat = {f"state/{i}/{k}": np.asarray(v) for i, st in sd["state"].items()
                for k, v in st.items()}
        flat["param_groups"] = np.array(json.dumps(sd["param_groups"]))
        np.savez(path, **flat)

    def load(self, path: str | os.PathLike) -> None:
        with np.load(path, allow_pickle=False) as f:
            state: dict = {}
            for key in f.files:
                if key.startswith("state/"):
                    i, k = key[len("state/"):].split("/", 1)
                    state.setdefault(int(i), {})[k] = f[key]
            groups = json.loads(str(f["param_groups"]))
        self.load_state_dict({"state": state, "param_groups": groups})


class SGD(Optimizer):
    """torch.optim.SGD: g = grad + wd * p; with momentum, buf = g at the first step and
    ``momentum * buf + (1 - dampening) * g`` after; g = g + momentum * buf (Nesterov) or buf;
    p -= lr * g."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check(self, g):
        super()._check(g)
        if g["momentum"] < 0 or g["weight_decay"] < 0:
            raise ValueError("SGD: momentum and weight_decay must be >= 0")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        for k in ("momentum", "dampening", "weight_decay"):
            g[k] = float(g[k])
        g["nesterov"] = bool(g["nesterov"])

    def _update(self, group, entries):
        # the active backend's _sgd_update: a fused pass per parameter on the cpu backend, the
        # arrays' own operators elsewhere (Backend._sgd_update); the same bits either way
        mu = group["momentum"]
        states = [self.state[e[5]] for e in entries] if mu else None
        bufs = [st.get("momentum_buffer") for st in states] if mu else None
        try:
            get_backend()._sgd_update([e[1] for e in entries], [e[2] for e in entries], bufs,
                                     group["lr"], mu, group["dampening"],
                                     group["weight_decay"], group["nesterov"])
        finally:    # (buffers made before an error stay, as the parameters updated keep theirs)
            if mu:
                for st, buf in zip(states, bufs):
                    if buf is not None:
                        st["momentum_buffer"] = buf


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad=False): g = grad + wd * p; m = b1 m + (1-b1) g;
    v = b2 v + (1-b2) g^2; p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check(self, g):
        super()._check(g)
        b1, b2 = g["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {g['betas']!r}")
        if g["eps"] < 0 or g["weight_decay"] < 0:
            raise ValueError("Adam: eps and weight_decay must be >= 0")
        g["betas"] = (float(b1), float(b2))
        g["eps"], g["weight_decay"] = float(g["eps"]), float(g["weight_decay"])

    def _update(self, group, entries):
        b1, b2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for _, p, g, _, _, i in entries:
            st = self.state[i]
            if not st:
                st["step"] = 0
                st["exp_avg"] = _zeros_like(p)
                st["exp_avg_sq"] = _zeros_like(p)
            st["step"] += 1
            t = st["step"]
            d = g + wd * p if wd else g
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m *= b1
            m += (1.0 - b1) * d
            v *= b2
            v += (1.0 - b2) * d * d
            step_size = lr / (1.0 - b1 ** t)
            denom = (v ** 0.5) / math.sqrt(1.0 - b2 ** t) + eps
            p -= step_size * (m / denom)


# ---------------------------------------------------------------------------- lr schedules
class LRScheduler:
    """Sets each group's lr from its base lr (the lr when the schedule was made) as a closed
    form of the step count: ``sched.step()`` after each ``opt.step()`` (or each epoch -- the unit
    is yours).  ``last_epoch`` counts the steps taken; ``state_dict`` / ``load_state_dict``
    resume it."""

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def lr_at(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    def _apply(self):
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = float(self.lr_at(self.last_epoch, base))

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, sd: dict) -> None:
        self.last_epoch = int(sd["last_epoch"])
        self.base_lrs = [float(b) for b in sd["base_lrs"]]
        self._apply()


class StepLR(LRScheduler):
    """``base_lr * gamma ** (t // step_size)`` (torch's StepLR)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (torch's
    CosineAnnealingLR closed form: past T_max the cosine goes on, back up, as torch's does)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        cos = math.cos(math.pi * t / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + cos) / 2


class LinearWarmup(LRScheduler):
    """Linear warm-up from ``start_factor * base_lr`` to ``base_lr`` over ``warmup_steps`` steps
    (torch's LinearLR with end_factor 1), then ``after`` -- another schedule built on the same
    optimiser, run with its step count starting at 0 when the warm-up ends -- or the base lr::

        sched = LinearWarmup(opt, 100, after=CosineAnnealingLR(opt, T_max=900))
    """

    def __init__(self, optimizer, warmup_steps: int, start_factor: float = 0.1,
                 after: LRScheduler | None = None):
        if warmup_steps < 1 or not 0 < start_factor <= 1:
            raise ValueError(f"LinearWarmup: need warmup_steps >= 1 and 0 < start_factor <= 1, "
                             f"got {warmup_steps}, {start_factor}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("LinearWarmup: 'after' must schedule the same optimiser")
        self.warmup_steps, self.start_factor = int(warmup_steps), float(start_factor)
        self.after = after
        super().__init__(optimizer)
        if after is not None:
            self.base_lrs = list(after.base_lrs)
            self._apply()

    def lr_at(self, t, base_lr):
        if t < self.warmup_steps:
            return base_lr * (self.start_factor
                              + (1.0 - self.start_factor) * t / self.warmup_steps)
        if self.after is None:
            return base_lr
        return self.after.lr_at(t - self.warmup_steps, base_lr)
