"""Seeded weight initialisation: drawn on the host with ``np.random.default_rng``, then moved to the
backend with ``asarray`` (so every backend starts from the same numbers for one seed)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["make_rng", "fans", "kaiming_normal", "kaiming_uniform", "xavier_uniform",
           "xavier_normal"]


def make_rng(seed) -> np.random.Generator:
    """An int/None seed -> a new Generator; a Generator is used as is (models pass one down so
    successive layers draw different numbers)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear (out, in) or conv (F, C/groups, KH, KW) weight, as torch."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def kaiming_normal(shape, rng, dtype=np.float32, gain=math.sqrt(2.0)):
    """He et al. 2015: N(0, gain^2 / fan_in); gain sqrt(2) for ReLU."""
    fan_in, _ = fans(shape)
    return (rng.standard_normal(shape) * (gain / math.sqrt(fan_in))).astype(dtype)


def kaiming_uniform(shape, rng, dtype=np.float32, gain=math.sqrt(2.0)):
    """U(-b, b) with b = gain * sqrt(3 / fan_in)."""
    fan_in, _ = fans(shape)
    b = gain * math.sqrt(3.0 / fan_in)
    return rng.uniform(-b, b, shape).astype(dtype)


def xavier_uniform(shape, rng, dtype=np.float32, gain=1.0):
    """Glorot & Bengio 2010: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    b = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-b, b, shape).astype(dtype)


def xavier_normal(shape, rng, dtype=np.float32, gain=1.0):
    fan_in, fan_out = fans(shape)
    return (rng.standard_normal(shape) * (gain * math.sqrt(2.0 / (fan_in + fan_out)))).astype(dtype)


INITS = {"kaiming": kaiming_normal, "kaiming_normal": kaiming_normal,
         "kaiming_uniform": kaiming_uniform, "xavier": xavier_uniform,
         "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal}
