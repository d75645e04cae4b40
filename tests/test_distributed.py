"""convkit.distributed: the sharding helpers here, and the MPI parts in a real ``mpiexec -n 2`` run
of this file (``python tests/test_distributed.py --mpi`` under mpiexec): allreduce_gradients against
hand-computed means, one Allreduce per step, broadcast_parameters, and sharded LeNet5 training
against one process trained in the same rank.  Skipped, with the reason, only without mpi4py
(the ``mpi`` extra; CI installs it)."""
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from convkit.distributed import shard_batches, shard_slice

TIMEOUT = 300


# ------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n,size", [(0, 1), (1, 2), (7, 2), (8, 2), (10, 3), (64, 4), (3, 5)])
def test_shard_slices_cover_the_batch_once_in_rank_order(n, size):
    slices = [shard_slice(n, r, size) for r in range(size)]
    got = np.concatenate([np.arange(n)[s] for s in slices])
    np.testing.assert_array_equal(got, np.arange(n))
    lengths = [s.stop - s.start for s in slices]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == [len(a) for a in np.array_split(np.arange(n), size)]


def test_shard_batches_slices_every_array_of_a_batch():
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    got = [list(shard_batches(batches, rank=r, size=2)) for r in range(2)]
    np.testing.assert_array_equal(got[0][0][0], x[:4])
    np.testing.assert_array_equal(got[1][0][1], y[4:7])
    np.testing.assert_array_equal(got[1][1][1], y[9:])
    # a single array in, a single array out
    assert [list(a) for a in shard_batches([np.arange(5)], rank=1, size=2)] == [[3, 4]]


def test_shard_helpers_refuse_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        shard_slice(10, 2, 2)
    with pytest.raises(TypeError, match="size must be an int"):
        shard_slice(10, 0, 2.0)
    with pytest.raises(ValueError, match="differ in length"):
        list(shard_batches([(np.zeros(3), np.zeros(4))], rank=0, size=1))
    with pytest.raises(ValueError, match="give comm"):
        list(shard_batches([np.zeros(3)]))


# ------------------------------------------------------------------------------------ MPI
def _mpiexec():
    """mpiexec of the MPICH wheel (beside this interpreter, or where the mpich distribution put
    it), else one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    try:
        dist = importlib.metadata.distribution("mpich")
        for f in dist.files or ():
            if f.name == "mpiexec" and os.access(dist.locate_file(f), os.X_OK):
                return str(dist.locate_file(f))
    except importlib.metadata.PackageNotFoundError:
        pass
    return shutil.which("mpiexec")


@pytest.fixture(scope="module")
def mpiexec():
    pytest.importorskip("mpi4py", reason="the MPI tests need the mpi extra: "
                                         "pip install 'convkit[mpi]'")
    exe = _mpiexec()
    if exe is None:
        pytest.fail("mpi4py is installed but no mpiexec was found (pip install mpich)")
    return exe


def _run(mpiexec, *args):
    env = dict(os.environ, CONVKIT_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([mpiexec, "-n", "2", sys.executable, *args], capture_output=True,
                       text=True, timeout=TIMEOUT, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_two_ranks_allreduce_and_train_as_one_process(mpiexec):
    out = _run(mpiexec, os.path.abspath(__file__), "--mpi")
    assert "rank 0 of 2: ok" in out and "rank 1 of 2: ok" in out, out


def test_ddp_demo_prints_the_one_process_accuracy(mpiexec):
    out = _run(mpiexec, "-m", "convkit.demos.ddp", "--epochs", "3", "--check")
    ranks = re.search(r"ranks 2, .*test accuracy ([0-9.]+)", out)
    one = re.search(r"one process: test accuracy ([0-9.]+); largest parameter difference (\S+)",
                    out)
    assert ranks and one, out
    assert ranks.group(1) == one.group(1), out
    assert float(one.group(2)) < 1e-10, out
    assert float(ranks.group(1)) > 0.3, out     # it learned something (chance: 0.1)


# ------------------------------------------------- what each rank runs (under mpiexec -n 2)
def _rank_checks(comm):
    import argparse

    from mpi4py import MPI

    import convkit
    from convkit.data import digits
    from convkit.demos.ddp import train
    from convkit.distributed import _buffers, allreduce_gradients, broadcast_parameters
    from convkit.models import LeNet5

    rank, size = comm.Get_rank(), comm.Get_size()
    assert size == 2

    class Counting(MPI.Intracomm):
        calls = 0

        def Allreduce(self, *args, **kw):
            type(self).calls += 1
            return super().Allreduce(*args, **kw)

    counted = Counting(comm)

    # allreduce: plain mean, then count-weighted mean, in one Allreduce each
    model = LeNet5(dtype=np.float64, seed=0)
    base = [np.random.default_rng(i).standard_normal(g.shape) for i, (_, _, g)
            in enumerate(model.parameters())]
    for (_, _, g), b in zip(model.parameters(), base):
        g[...] = (rank + 1) * b
    assert allreduce_gradients(model, counted) == 2
    for (_, _, g), b in zip(model.parameters(), base):
        np.testing.assert_allclose(g, 1.5 * b, rtol=1e-15, atol=1e-15)
    for (_, _, g), b in zip(model.parameters(), base):
        g[...] = (rank + 1) * b
    assert allreduce_gradients(model, counted, count=rank + 1) == 3   # counts 1 and 2
    for (_, _, g), b in zip(model.parameters(), base):
        np.testing.assert_allclose(g, (1 * 1 + 2 * 2) / 3 * b, rtol=1e-14, atol=1e-14)
    assert Counting.calls == 2
    n = sum(g.size for _, _, g in model.parameters())
    assert _buffers[model].size == n + 1     # the one flat buffer, with the count slot

    # broadcast: rank 1 built with another seed ends with rank 0's weights
    other = LeNet5(dtype=np.float64, seed=rank)
    broadcast_parameters(other, comm)
    for (_, p, _), (_, q, _) in zip(other.parameters(), LeNet5(dtype=np.float64,
                                                              seed=0).parameters()):
        np.testing.assert_array_equal(p, q)

    # sharded training == one process (computed here too), float64 and float32; batch 63 gives
    # shards of 32 and 31, batch 64's last batch (1347 % 64 = 3) shards of 2 and 1
    for dtype, batch, epochs, tol in (("float64", 64, 2, 1e-12), ("float64", 63, 1, 1e-12),
                                      ("float32", 64, 1, 1e-5)):
        args = argparse.Namespace(dtype=dtype, batch_size=batch, epochs=epochs, lr=0.05,
                                  momentum=0.9, weight_decay=5e-3, seed=0)
        data = digits(seed=0, dtype=np.dtype(dtype))
        ranks, _ = train(data, args, comm, rank, size)
        one, _ = train(data, args)
        for (name, p, _), (_, q, _) in zip(ranks.parameters(), one.parameters()):
            np.testing.assert_allclose(p, q, rtol=tol, atol=tol,
                                       err_msg=f"{name} {dtype} batch {batch}")
    convkit.set_num_threads(None)


if __name__ == "__main__" and "--mpi" in sys.argv:
    import traceback

    from mpi4py import MPI

    import convkit

    convkit.set_num_threads(1)
    world = MPI.COMM_WORLD
    try:
        _rank_checks(world)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        world.Abort(1)          # never leave the other rank waiting in a collective
    world.Barrier()
    print(f"rank {world.Get_rank()} of {world.Get_size()}: ok", flush=True)
