"""Data-parallel training over MPI (extra ``convkit[mpi]``: mpi4py and the MPICH wheel; DESIGN.md,
"Scale-out").

Every rank holds the same model and sees every global batch; rank r of n takes its slice of each
global batch (:func:`shard_batches`), runs forward and backward on it, and
:func:`allreduce_gradients` replaces each rank's gradients by their mean over the global batch,
so every rank takes the same optimiser step.  n ranks on a global batch B give the parameters of
one process on B within float tolerance (the sums are grouped differently)::

    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    broadcast_parameters(model, comm)             # the same start everywhere
    for xb, yb in shard_batches(global_batches, comm):
        loss, g = softmax_cross_entropy(model.forward(xb), yb)
        model.zero_grad(); model.backward(g)
        allreduce_gradients(model, comm, count=len(xb))
        opt.step()

``mpiexec -n 2 python -m convkit.demos.ddp`` trains LeNet5 on the digits this way.  Nothing here
imports mpi4py: ``comm`` is any mpi4py communicator (``MPI.COMM_WORLD``, a split of it).
"""
from __future__ import annotations

import weakref

import numpy as np

__all__ = ["allreduce_gradients", "broadcast_parameters", "shard_slice", "shard_batches"]

_buffers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flat_buffer(model, arrays, extra):
    """One contiguous buffer for ``arrays`` (+ ``extra`` trailing slots), kept per model so a
    training loop allocates it once."""
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(f"{type(model).__name__}: parameters have several dtypes "
                        f"{sorted(map(str, dtypes))}; convert the model to one (model.astype)")
    dt = dtypes.pop()
    n = sum(int(a.size) for a in arrays) + extra
    buf = _buffers.get(model)
    if buf is None or buf.size != n or buf.dtype != dt or type(buf) is not type(arrays[0]):
        buf = model.xp.empty(n, dt)
        _buffers[model] = buf
    return buf


def _pack(arrays, buf):
    o = 0
    for a in arrays:
        buf[o:o + a.size] = a.reshape(-1)
        o += a.size
    return o


def _unpack(buf, arrays):
    o = 0
    for a in arrays:
        a[...] = buf[o:o + a.size].reshape(a.shape)
        o += a.size


def _mpi(comm):
    from mpi4py import MPI   # only when called: the module imports without the extra

    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got "
                        f"{type(comm).__module__}.{type(comm).__name__}")
    return MPI


def allreduce_gradients(model, comm, count=None):
    """Replace every gradient of ``model`` by its mean over all ranks of ``comm``, in place,
    with one ``Allreduce`` over one flat buffer.

    count: how many samples this rank's gradients average over (its shard of the global batch).
    Given, the result is the count-weighted mean ``sum_r count_r * g_r / sum_r count_r`` -- the
    gradient of the global batch's mean loss even when the shards differ in size (the counts
    travel in the same buffer).  None: the plain mean over ranks, right for equal shards.
    Returns the total count (or the number of ranks).  Frozen parameters (not yielded by
    ``model.parameters()``) are left alone; every rank must have the same parameter list.
    """
    MPI = _mpi(comm)
    grads = [g for _, _, g in model.parameters()]
    if not grads:
        raise ValueError(f"allreduce_gradients: {type(model).__name__} has no trainable "
                         f"parameters")
    weighted = count is not None
    if weighted and (isinstance(count, bool) or not isinstance(count, (int, np.integer))
                     or count < 0):
        raise ValueError(f"allreduce_gradients: count must be an int >= 0, got {count!r}")
    buf = _flat_buffer(model, grads, 1 if weighted else 0)
    o = _pack(grads, buf)
    if weighted:
        buf[:o] *= count
        buf[o] = count
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    total = float(buf[o]) if weighted else comm.Get_size()
    if total == 0:
        raise ValueError("allreduce_gradients: the counts of all ranks add up to 0")
    buf[:o] /= total
    _unpack(buf, grads)
    return int(total)


def broadcast_parameters(model, comm, root=0):
    """Copy rank ``root``'s parameters and buffers (BN running stats) to every rank, in place,
    in one ``Bcast``: all ranks then start from the same model."""
    _mpi(comm)
    arrays = [a for _, m in model.named_modules()
              for a in list(m.params.values()) + list(m.buffers.values())]
    buf = _flat_buffer(model, arrays, 0)
    _pack(arrays, buf)
    comm.Bcast(buf, root=root)
    _unpack(buf, arrays)


def shard_slice(n: int, rank: int, size: int) -> slice:
    """Rank ``rank`` of ``size``'s part of a global batch of ``n`` items: contiguous, in rank
    order, the first ``n % size`` ranks one item longer (``numpy.array_split``'s split), so the
    ranks together cover the batch exactly once."""
    for name, v in (("n", n), ("rank", rank), ("size", size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"shard_slice: {name} must be an int, got {v!r}")
    if size < 1 or not 0 <= rank < size or n < 0:
        raise ValueError(f"shard_slice: need n >= 0 and 0 <= rank < size, got n={n}, "
                         f"rank={rank}, size={size}")
    q, r = divmod(int(n), int(size))
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def shard_batches(batches, comm=None, *, rank=None, size=None):
    """Yield this rank's slice of each global batch from the iterable ``batches``.

    A batch is an array or a tuple/list of arrays of equal length (images and labels); the
    same structure comes out, each array sliced by :func:`shard_slice`.  Every rank must iterate
    the same global batches in the same order (same seed).  ``rank``/``size`` default to
    ``comm``'s.
    """
    if rank is None or size is None:
        if comm is None:
            raise ValueError("shard_batches: give comm, or rank and size")
        rank = comm.Get_rank() if rank is None else rank
        size = comm.Get_size() if size is None else size
    for batch in batches:
        arrays = batch if isinstance(batch, (tuple, list)) else (batch,)
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise ValueError(f"shard_batches: the arrays of a batch differ in length: "
                             f"{[len(a) for a in arrays]}")
        sl = shard_slice(n, rank, size)
        out = tuple(a[sl] for a in arrays)
        yield out if isinstance(batch, (tuple, list)) else out[0]
