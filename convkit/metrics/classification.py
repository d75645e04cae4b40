"""Classification metrics."""
from __future__ import annotations

import numpy as np

from ..functional import to_numpy

__all__ = ["accuracy"]


def accuracy(pred, labels) -> float:
    """Fraction of correct predictions.

    pred: class scores/logits (array[N, C], argmax taken) or predicted labels (array[N]);
    labels: array[N] of ints.  Arrays of any backend.  N = 0 gives nan.
    """
    p = to_numpy(pred)
    t = to_numpy(labels)
    if p.ndim == 2:
        p = p.argmax(axis=1)
    if p.ndim != 1 or t.ndim != 1 or p.shape[0] != t.shape[0]:
        raise ValueError(f"accuracy: pred must be (N, C) or (N,) and labels (N,), got "
                         f"{tuple(to_numpy(pred).shape)} and {tuple(t.shape)}")
    if p.shape[0] == 0:
        return float("nan")
    return float(np.mean(p == t))
