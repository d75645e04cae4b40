"""A minimal batch iterator: shuffled (seeded) mini-batches of host arrays, one epoch per loop."""
from __future__ import annotations

import numpy as np

__all__ = ["BatchIterator"]


class BatchIterator:
    """Mini-batches of one or more arrays that share their first dimension.

    ``for xb, yb in BatchIterator(x, y, batch_size=64, seed=0): ...`` walks one epoch; each
    ``for`` loop is the next epoch.  shuffle: epoch ``e`` visits the rows in the order
    ``np.random.default_rng([seed, e]).permutation(n)`` -- a function of (seed, epoch) only, so a
    run resumed at an epoch boundary (``state_dict`` / ``load_state_dict``, or ``epoch=``)
    sees the same batches as an uninterrupted one.  drop_last: leave out a final batch smaller
    than batch_size.  Batches are NumPy arrays (fancy-indexed copies when shuffled); move them
    to a device backend with ``convkit.asarray``.
    """

    def __init__(self, *arrays, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, epoch: int = 0):
        if not arrays:
            raise ValueError("BatchIterator: give at least one array")
        n = len(arrays[0])
        for i, a in enumerate(arrays):
            if len(a) != n:
                raise ValueError(f"BatchIterator: array {i} has {len(a)} rows, array 0 has {n}")
        if int(batch_size) < 1:
            raise ValueError(f"BatchIterator: batch_size must be >= 1, got {batch_size}")
        self.arrays, self.n = arrays, n
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.seed, self.drop_last, self.epoch = seed, bool(drop_last), int(epoch)

    def __len__(self):
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int):
        """Row order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([int(self.seed), int(epoch)]).permutation(self.n)

    def __iter__(self):
        order = self.order(self.epoch)
        self.epoch += 1
        bs = self.batch_size
        for b in range(len(self)):
            idx = order[b * bs:(b + 1) * bs]
            if self.shuffle:
                yield tuple(a[idx] for a in self.arrays)
            else:
                yield tuple(a[b * bs:(b + 1) * bs] for a in self.arrays)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.seed = int(sd["epoch"]), sd["seed"]
