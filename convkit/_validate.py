"""Argument checks and normalisation for every op, used once at the Python boundary.

Every message names the op, the argument, what was expected and what came.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_MAX_PARAM = 2**31 - 1     # kernel sizes, strides, paddings, dilations: C ints downstream


def _int(op: str, name: str, v) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int, got bool {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None


def pair(op: str, name: str, v, *, minimum: int) -> tuple[int, int]:
    """int or pair of ints -> (a, b), each >= minimum."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
        a, b = _int(op, name, v[0]), _int(op, name, v[1])
    elif isinstance(v, np.ndarray) and v.shape == (2,):
        a, b = _int(op, name, v[0]), _int(op, name, v[1])
    else:
        a = b = _int(op, name, v)
    if a < minimum or b < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}: {name} must be {what}, got {v!r}")
    if a > _MAX_PARAM or b > _MAX_PARAM:
        raise ValueError(f"{op}: {name} must be at most {_MAX_PARAM}, got {v!r}")
    return a, b


def positive_int(op: str, name: str, v) -> int:
    n = _int(op, name, v)
    if n < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {v!r}")
    return n


def real(op: str, name: str, v, *, positive=False, finite=True) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {v!r}")
    f = float(v)
    if finite and not np.isfinite(f):
        raise ValueError(f"{op}: {name} must be finite, got {v!r}")
    if positive and not f > 0:
        raise ValueError(f"{op}: {name} must be > 0, got {v!r}")
    return f


def array(op: str, name: str, a, be, ndim: int | None = None, layout: str = ""):
    """Check that ``a`` is an array of backend ``be`` with ``ndim`` dims."""
    if not be.is_native(a):
        kind = type(a).__module__.split(".")[0] + "." + type(a).__name__
        raise TypeError(f"{op}: {name} must be a {be.xp.__name__}.ndarray for the {be.name!r} "
                        f"backend, got {kind}; convert it with convkit.asarray({name})")
    if isinstance(a, np.matrix):    # its indexing keeps 2-D rows: backends broke differently
        raise TypeError(f"{op}: {name} is a numpy.matrix, whose indexing and * follow matrix "
                        f"rules; pass np.asarray({name})")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}".rstrip()
                         + f", got shape {tuple(a.shape)}")
    return a


def float_dtype(op: str, **arrays):
    """All given arrays (None skipped) share one dtype, float32 or float64; returns it."""
    dt = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        d = np.dtype(a.dtype)
        if d not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {d}")
        if dt is None:
            dt, first = d, name
        elif d != dt:
            raise TypeError(f"{op}: all arrays must share one dtype; {first} is {dt} but "
                            f"{name} is {d}")
    return dt


def int_array(op: str, name: str, a):
    if not np.issubdtype(np.dtype(a.dtype), np.integer):
        raise TypeError(f"{op}: {name} must be an integer (int64) array, got {a.dtype}")


def shape_tuple(op: str, name: str, shape, ndim: int = 4) -> tuple[int, ...]:
    try:
        t = tuple(_int(op, name, s) for s in shape)
    except TypeError:
        raise TypeError(f"{op}: {name} must be a tuple of {ndim} ints, got {shape!r}") from None
    if len(t) != ndim or any(s < 0 for s in t):
        raise ValueError(f"{op}: {name} must be {ndim} non-negative ints, got {shape!r}")
    n = 1
    for s in t:
        n *= s
    if n * 8 > np.iinfo(np.intp).max:   # numpy said "array is too big" or a bare OverflowError
        raise ValueError(f"{op}: {name} {t} has {n} elements, more than an array can hold")
    return t


def grad_shape(op: str, name: str, g, want: tuple[int, ...]) -> None:
    if tuple(g.shape) != tuple(want):
        raise ValueError(f"{op}: {name} must have shape {tuple(want)}, got {tuple(g.shape)}")


def out_buffer(op: str, out, be, shape, dtype):
    """Check a user ``out=`` array: native, C-contiguous, right shape and dtype."""
    if out is None:
        return None
    array(op, "out", out, be)
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"{op}: out must have shape {tuple(shape)} and dtype {np.dtype(dtype)}, "
                         f"got shape {tuple(out.shape)} and dtype {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{op}: out must be C-contiguous")
    if not getattr(out.flags, "writeable", True):
        raise ValueError(f"{op}: out must be writeable")
    return out


def no_overlap(op: str, be, out, **inputs) -> None:
    """An ``out=`` buffer must not share memory with an input: kernels read inputs while they
    write the output, so an overlap would give a wrong answer with no error."""
    if out is None:
        return
    may_share = getattr(be.xp, "may_share_memory", None) or np.may_share_memory
    for name, a in inputs.items():
        if a is not None and may_share(out, a):
            raise ValueError(f"{op}: out must not share memory with {name}")


def no_alias(op: str, be, name: str, a, **inputs) -> None:
    """``a`` (an array written in place) must not share memory with the other arguments."""
    may_share = getattr(be.xp, "may_share_memory", None) or np.may_share_memory
    for other, b in inputs.items():
        if b is not None and may_share(a, b):
            raise ValueError(f"{op}: {name} must not share memory with {other} (it is updated "
                             f"in place while {other} is read)")


def writeable(op: str, name: str, a) -> None:
    if a is not None and not getattr(a.flags, "writeable", True):
        raise ValueError(f"{op}: {name} must be writeable (it is updated in place)")
