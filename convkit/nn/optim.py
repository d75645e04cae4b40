"""Optimisers with torch's exact update rules (``torch.optim.SGD`` / ``torch.optim.Adam``).

Both take a Module or an iterable of ``(name, param, grad)`` triples (``module.parameters()``)
and update the params in place.  ``lr`` may be changed between steps (``opt.lr = ...``).
"""
from __future__ import annotations

import math

__all__ = ["SGD", "Adam"]


def _zeros_like(p):
    z = p.copy()
    z[...] = 0
    return z


class Optimizer:
    def __init__(self, params, lr):
        if hasattr(params, "parameters"):
            params = params.parameters()
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for item in self.params:
            if len(item) != 3:
                raise TypeError(f"{type(self).__name__}: expected (name, param, grad) triples "
                                f"as yielded by Module.parameters()")
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr!r}")
        self.lr = float(lr)
        self.state: dict[str, dict] = {name: {} for name, _, _ in self.params}

    def zero_grad(self):
        for _, _, g in self.params:
            g[...] = 0


class SGD(Optimizer):
    """torch.optim.SGD: g = grad + wd * p; with momentum, buf = g at the first step and
    ``momentum * buf + (1 - dampening) * g`` after; g = g + momentum * buf (Nesterov) or buf;
    p -= lr * g."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError("SGD: momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def step(self):
        mu, wd = self.momentum, self.weight_decay
        for name, p, g in self.params:
            d = g + wd * p if wd else g
            if mu:
                st = self.state[name]
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = d.copy()
                else:
                    buf *= mu
                    if self.dampening:
                        buf += (1.0 - self.dampening) * d
                    else:       # (1 - 0) * d is d: the same bits, one temporary less
                        buf += d
                d = d + mu * buf if self.nesterov else buf
            p -= self.lr * d


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad=False): g = grad + wd * p; m = b1 m + (1-b1) g;
    v = b2 v + (1-b2) g^2; p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas!r}")
        if eps < 0 or weight_decay < 0:
            raise ValueError("Adam: eps and weight_decay must be >= 0")
        self.betas = (float(b1), float(b2))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def step(self):
        b1, b2 = self.betas
        for name, p, g in self.params:
            st = self.state[name]
            if not st:
                st["step"] = 0
                st["exp_avg"] = _zeros_like(p)
                st["exp_avg_sq"] = _zeros_like(p)
            st["step"] += 1
            t = st["step"]
            d = g + self.weight_decay * p if self.weight_decay else g
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m *= b1
            m += (1.0 - b1) * d
            v *= b2
            v += (1.0 - b2) * d * d
            step_size = self.lr / (1.0 - b1 ** t)
            denom = (v ** 0.5) / math.sqrt(1.0 - b2 ** t) + self.eps
            p -= step_size * (m / denom)
