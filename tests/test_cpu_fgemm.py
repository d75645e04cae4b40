"""csrc/fgemm.h, the fixed-order AVX2 + FMA float32 GEMM under the cpu conv forwards and grad_x
(batch invariance: tests/test_cpu_batch_invariance.py).  Oracles: float64 numpy products (the
values), and the GEMM itself on sub-blocks and split k (the bits: every output is one FMA chain
over k in ascending order, whatever the GEMM's shape and the output's place in it)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from convkit.cpu import _gemm

RNG = np.random.default_rng(1515)


def _avx2():
    c = np.zeros((1, 1), np.float32)
    return _gemm.fgemm_into(False, False, np.ones((1, 1), np.float32),
                            np.ones((1, 1), np.float32), 0.0, c) and c[0, 0] == 1


pytestmark = pytest.mark.skipif(not _avx2(), reason="csrc/fgemm.h needs an x86-64 CPU with "
                                                    "AVX2 and FMA")


def _operands(m, n, k, ta, tb, rng=RNG):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def _op(x, t):
    return x.T if t else x


def _fgemm(a, b, ta, tb, m, n, c=None, beta=0.0):
    c = np.full((m, n), np.nan, np.float32) if c is None else c
    assert _gemm.fgemm_into(ta, tb, a, b, beta, c)
    return c


def _check_values(m, n, k, ta, tb):
    a, b = _operands(m, n, k, ta, tb)
    got = _fgemm(a, b, ta, tb, m, n)
    A, B = _op(a, ta).astype(np.float64), _op(b, tb).astype(np.float64)
    # one rounding per multiply-add: within k units of float32 rounding of |A| @ |B|
    bound = (k + 1) * np.finfo(np.float32).eps * (np.abs(A) @ np.abs(B))
    err = np.abs(got - A @ B)
    assert (err <= bound).all(), (m, n, k, ta, tb, float((err - bound).max()))


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_edge_rows_and_columns(ta, tb):
    """Every row count 1..25 against every column count 1..25 (partial 4-row panels, partial
    8-lane vectors, 1-3 vectors of a 24-column tile), short k."""
    for m in range(1, 26):
        for n in range(1, 26):
            _check_values(m, n, 1 + (m * n) % 7, ta, tb)


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("k", [1, 2, 3, 8, 31, 255, 256, 257, 300])
def test_k_lengths_and_blocks(k, ta, tb):
    """k from 1 to 300: one k block, exactly one (256), and a second block whose chains go on
    from the first block's stored sums."""
    for m, n in [(1, 1), (5, 23), (17, 49), (64, 100)]:
        _check_values(m, n, k, ta, tb)


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_larger_shapes(ta, tb):
    """Several A blocks (m > 128), packed B over several column blocks (n > 2048), conv
    shapes (16 x 150 x 100, 6 x 25 x 4096)."""
    for m, n, k in [(300, 50, 40), (6, 4096, 25), (16, 100, 150), (9, 2100, 13), (5, 4100, 300)]:
        _check_values(m, n, k, ta, tb)


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_bits_do_not_follow_the_shape_or_the_place(ta, tb):
    """A block of C computed as its own GEMM (other m, n, other place of each output in its
    tile and panel) has exactly the bits it has inside the whole GEMM."""
    m, n, k = 37, 61, 300
    a, b = _operands(m, n, k, ta, tb)
    whole = _fgemm(a, b, ta, tb, m, n)
    for i0, i1, j0, j1 in [(0, 1, 0, 1), (3, 4, 5, 60), (1, 37, 7, 8), (5, 22, 13, 61),
                           (36, 37, 0, 61), (2, 35, 1, 30), (0, 37, 24, 48)]:
        A = _op(a, ta)[i0:i1]
        B = _op(b, tb)[:, j0:j1]
        sub_a = np.ascontiguousarray(A.T if ta else A)
        sub_b = np.ascontiguousarray(B.T if tb else B)
        part = _fgemm(sub_a, sub_b, ta, tb, i1 - i0, j1 - j0)
        np.testing.assert_array_equal(part, whole[i0:i1, j0:j1], err_msg=str((i0, i1, j0, j1)))


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1)])
def test_short_row_blocks_keep_the_bits(ta, tb):
    """A last row block of 1-5 rows runs a 2- or 4-row instance of the tile, not the 6-row one:
    every row of every such GEMM (m = 1..17, each row at each place of its block) has the bits
    of the same row in a GEMM of full 6-row blocks."""
    n, k = 40, 300
    a, b = _operands(18, n, k, ta, tb)
    whole = _fgemm(a, b, ta, tb, 18, n)
    for i0 in range(0, 6):
        for m in range(1, 18 - i0):
            A = _op(a, ta)[i0:i0 + m]
            part = _fgemm(np.ascontiguousarray(A.T if ta else A), b, ta, tb, m, n)
            np.testing.assert_array_equal(part, whole[i0:i0 + m], err_msg=str((i0, m)))


def test_beta_one_goes_on_with_the_chain():
    """beta 1 starts each chain from C: k split in two GEMMs (the second with beta 1) gives
    the one GEMM's bits, wherever the split."""
    m, n, k = 13, 50, 300
    a, b = _operands(m, n, k, False, False)
    whole = _fgemm(a, b, False, False, m, n)
    for k1 in (1, 7, 256, 299):
        c = _fgemm(np.ascontiguousarray(a[:, :k1]), np.ascontiguousarray(b[:k1]), False, False,
                   m, n)
        _fgemm(np.ascontiguousarray(a[:, k1:]), np.ascontiguousarray(b[k1:]), False, False, m, n,
               c=c, beta=1.0)
        np.testing.assert_array_equal(c, whole, err_msg=str(k1))


def test_writes_only_its_window_and_reads_no_padding():
    """C as a window of a larger array (row stride > n): the lanes around it keep their values;
    a NaN in row i of A or column j of B reaches only row i or column j."""
    m, n, k = 11, 29, 20
    a, b = _operands(m, n, k, False, False)
    big = np.full((m + 2, n + 9), 7.0, np.float32)
    c = big[1:m + 1, 3:n + 3]
    _fgemm(a, b, False, False, m, n, c=c)
    np.testing.assert_array_equal(c, _fgemm(a, b, False, False, m, n))
    outside = np.ones(big.shape, bool)
    outside[1:m + 1, 3:n + 3] = False
    assert (big[outside] == 7.0).all()
    a[4, 3] = np.nan
    b[5, 27] = np.inf
    got = _fgemm(a, b, False, False, m, n)
    assert np.isnan(got[4]).all()
    bad = np.zeros((m, n), bool)
    bad[4] = True
    bad[:, 27] = True
    assert np.isfinite(got[~bad]).all()
    assert not np.isfinite(got[:, 27]).any()


def test_empty_and_k_zero():
    c = np.full((3, 5), 2.0, np.float32)
    assert _gemm.fgemm_into(False, False, np.zeros((3, 0), np.float32),
                            np.zeros((0, 5), np.float32), 0.0, c)
    np.testing.assert_array_equal(c, 0)
    c[...] = 2
    assert _gemm.fgemm_into(False, False, np.zeros((3, 0), np.float32),
                            np.zeros((0, 5), np.float32), 1.0, c)
    np.testing.assert_array_equal(c, 2)


def test_the_conv_entry_point():
    """gemm_fixed_into, the entry the conv GEMMs use, gives fgemm's bits on float32 (where no
    AVX-512 GEMM comes first) and BLAS's value on float64."""
    a, b = _operands(9, 30, 40, False, False)
    want = _fgemm(a, b, False, False, 9, 30)
    got = np.empty_like(want)
    _gemm.gemm_fixed_into(False, False, a, b, 0.0, got)
    if not _gemm.own_sgemm_active():
        np.testing.assert_array_equal(got, want)
        assert _gemm.fixed_sgemm_active()
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    c64 = np.empty((9, 30))
    _gemm.gemm_fixed_into(False, False, a64, b64, 0.0, c64)
    np.testing.assert_allclose(c64, a64 @ b64, rtol=1e-12, atol=1e-12)


def test_the_switch():
    """CONVKIT_DISABLE_FGEMM=1 (read once per process) makes ck_fgemm decline: the callers,
    and conv.py's plans, take BLAS as on a CPU without AVX2."""
    code = ("import numpy as np; from convkit.cpu import _gemm, conv; "
            "c = np.zeros((2, 2), np.float32); o = np.ones((2, 2), np.float32); "
            "print(_gemm.fgemm_into(False, False, o, o, 0.0, c), _gemm.fixed_sgemm_active(), "
            "conv._caps().fixed_sgemm)")
    env = dict(os.environ, CONVKIT_DISABLE_FGEMM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    own = _gemm.own_sgemm_active()
    assert out.stdout.split() == ["False", str(own), str(own)], out.stdout


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_narrow_last_panel_keeps_the_bits(ta, tb):
    """A last panel of 1-6 columns (up to csrc/fgemm.h's CK_FG_EDGE_N = 4 it runs with the
    vectors along m, above it the 6 x 16 tile): its columns have the bits they have inside a
    full panel, for row counts around the 8-row vector and A blocks (m > 126), k with a partial
    8-step tail and two k blocks, A and B read in place (m <= 16) or packed."""
    for m in (1, 7, 8, 9, 16, 17, 130):
        for k in (1, 5, 8, 13, 300):
            a, b = _operands(m, 32, k, ta, tb)
            whole = _fgemm(a, b, ta, tb, m, 32)     # columns 16..31: one full panel
            B = _op(b, tb)
            for nr in range(1, 7):
                for j0 in (0, 16):     # alone (n = nr) and after a full panel (n = 16 + nr)
                    sub = B[:, 16 - j0:16 + nr]
                    sub_b = np.ascontiguousarray(sub.T if tb else sub)
                    got = _fgemm(a, sub_b, ta, tb, m, j0 + nr)
                    np.testing.assert_array_equal(got[:, j0:], whole[:, 16:16 + nr],
                                                  err_msg=str((m, k, nr, j0)))


def test_narrow_last_panel_values_and_non_finite():
    """The narrow panel's values against float64, and a NaN / inf in A or B reaches only its
    row or column there, on both sides of the k tail (A in place and transposed)."""
    for ta in (0, 1):
        for m, n, k in [(40, 17, 37), (130, 3, 300), (9, 1, 7), (25, 20, 8)]:
            _check_values(m, n, k, ta, 0)
        m, n, k = 21, 18, 11
        a, b = _operands(m, n, k, ta, 0)
        A = a.T if ta else a
        A[9, 10] = np.nan       # in the k tail (8 + 2)
        A[3, 2] = np.inf
        b[4, 17] = np.nan       # the narrow panel's second column
        got = _fgemm(a, b, ta, 0, m, n)
        assert np.isnan(got[9]).all() and np.isnan(got[:, 17]).all()
        bad = np.zeros((m, n), bool)
        bad[[3, 9]] = True
        bad[:, 17] = True
        assert np.isfinite(got[~bad]).all()
        assert not np.isfinite(got[3]).any()


@pytest.mark.parametrize("ta", [0, 1])
def test_a_transposed_b_packs_to_the_same_bits(ta):
    """B stored n x k (tb) is packed by 8 x 8 register transposes where a 16-column panel is
    whole, element by element for the k steps past the last 8 and for a partial panel: the
    product has the bits of the same B stored k x n (a copy changes no value).  m above
    CK_FG_DIRECT_M (else B not transposed is read in place, not packed); k across the 8-step
    blocks, their tail and fgemm's k blocks; n with whole and partial panels and the narrow
    last one."""
    rng = np.random.default_rng(23)
    for m, n, k in ((17, 16, 8), (24, 33, 7), (30, 48, 9), (18, 20, 16), (40, 64, 300),
                    (23, 50, 517), (64, 18, 1900)):
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        bt = rng.standard_normal((n, k)).astype(np.float32)
        got = _fgemm(a, bt, ta, 1, m, n)
        want = _fgemm(a, np.ascontiguousarray(bt.T), ta, 0, m, n)
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), (m, n, k)
