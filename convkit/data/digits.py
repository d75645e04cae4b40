"""scikit-learn's handwritten digits (1797 images, 8x8, 10 classes; shipped inside
scikit-learn, no download), split into train and test with a seed."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["digits", "DigitsSplit"]


class DigitsSplit(NamedTuple):
    x_train: np.ndarray   # (N, 1, 8, 8)
    y_train: np.ndarray   # (N,) int64 in [0, 10)
    x_test: np.ndarray
    y_test: np.ndarray


def digits(seed=0, test_fraction=0.25, dtype=np.float32, as_uint8=False) -> DigitsSplit:
    """Stratified, seeded train/test split of ``sklearn.datasets.load_digits``.

    Images are NCHW (N, 1, 8, 8) NumPy arrays.  The raw pixels are integers 0..16; they are
    returned as ``dtype`` scaled to [0, 1] (x / 16), or with ``as_uint8=True`` as uint8 0..255
    (round(x * 255 / 16)) for a pipeline that starts with ``convkit.nn.ToFloat()``.
    Labels are int64.  Move arrays to a backend with ``convkit.asarray``.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"digits: test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError("convkit.data.digits needs scikit-learn (the digits ship with it): "
                          "pip install 'convkit[demo]' or pip install scikit-learn") from e
    d = load_digits()
    images = d.images.reshape(-1, 1, 8, 8)
    if as_uint8:
        x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    else:
        x = (images / 16.0).astype(dtype)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=float(test_fraction),
                                          random_state=seed, stratify=y)
    return DigitsSplit(np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte)
