"""The GEMM under every cpu conv (convkit/cpu/_blas.pxd): float32 on convkit's own AVX-512 kernel
(convkit/cpu/csrc/sgemm.h) where the CPU has it, float64 on BLAS.  Checked against a float64 NumPy
product over shapes that hit every edge of the 8 x 48 register tile and of the 96 / 192 / ~1000
cache blocks, with each operand transposed or not."""
import platform

import numpy as np
import pytest

_gemm = pytest.importorskip("convkit.cpu._gemm", reason="the cpu extensions are not built")

# (m, n, k): single elements; under one tile; exact tiles; one past a tile (9 rows, 49 columns);
# several MC blocks (m > 96) with a ragged end; k over one KC block (192) with a remainder;
# n over one NC block (1008) with a remainder; the conv shapes of the benchmark suite.
SHAPES = [(1, 1, 1), (3, 5, 2), (8, 48, 192), (9, 49, 193), (17, 97, 7), (100, 50, 400),
          (200, 1100, 30), (64, 1009, 385), (6, 784, 25), (64, 300, 147), (130, 33, 1),
          # last panels of 1-4 rows with 1, 2 or 3 vectors of columns (the 4-row edge kernels)
          (4, 40, 10), (2, 20, 300), (18, 100, 512), (12, 32, 256), (99, 143, 20)]


def _operands(rng, m, n, k, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def _want(a, b, ta, tb, alpha, beta, c0):
    A = (a.T if ta else a).astype(np.float64)
    B = (b.T if tb else b).astype(np.float64)
    return alpha * (A @ B) + (beta * c0.astype(np.float64) if beta else 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_matches_float64_product(m, n, k, ta, tb, dtype):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    for alpha, beta in ((1.0, 0.0), (1.0, 1.0), (-0.5, 0.25)):
        c = c0.copy()
        _gemm.gemm_into(ta, tb, alpha, a, b, beta, c)
        want = _want(a, b, ta, tb, alpha, beta, c0)
        # each output is a k-term dot product: the error bound grows like sqrt(k) * eps * |terms|
        scale = np.sqrt(k) * (np.abs(a).max() * np.abs(b).max() + np.abs(c0).max())
        atol = (4e-7 if dtype == np.float32 else 1e-15) * scale * 4
        np.testing.assert_allclose(c, want, rtol=0, atol=atol)


def test_beta_zero_never_reads_c():
    """beta == 0 overwrites C: NaN and inf already there must not leak into the result."""
    rng = np.random.default_rng(1)
    for m, n, k in [(9, 49, 193), (64, 300, 147), (3, 5, 2)]:
        a, b = _operands(rng, m, n, k, False, False, np.float32)
        c = np.full((m, n), np.nan, dtype=np.float32)
        c[::2] = np.inf
        _gemm.gemm_into(False, False, 1.0, a, b, 0.0, c)
        assert np.isfinite(c).all()
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-4)


def test_gemm_writes_only_its_rows_and_columns():
    """C as rows of a bigger array: the rows around it keep their values (the edge tiles store
    with row counts and lane masks, never past the last row or column of C)."""
    rng = np.random.default_rng(2)
    for m, n, k in [(11, 53, 200), (4, 40, 10), (2, 20, 300), (18, 100, 512), (99, 143, 20)]:
        for tb in (False, True):
            a, b = _operands(rng, m, n, k, False, tb, np.float32)
            # (gemm_into takes C-contiguous views: the rows above and below C are the neighbours)
            big2 = rng.standard_normal((m + 4, n)).astype(np.float32)
            before2 = big2.copy()
            _gemm.gemm_into(False, tb, 1.0, a, b, 0.5, big2[2:2 + m])
            np.testing.assert_array_equal(big2[:2], before2[:2])
            np.testing.assert_array_equal(big2[2 + m:], before2[2 + m:])
            want = a.astype(np.float64) @ (b.T if tb else b) + 0.5 * before2[2:2 + m]
            np.testing.assert_allclose(big2[2:2 + m], want, rtol=1e-5, atol=1e-4)


def test_gemm_is_deterministic():
    rng = np.random.default_rng(3)
    a, b = _operands(rng, 70, 500, 700, False, True, np.float32)
    c1 = np.empty((70, 500), np.float32)
    c2 = np.empty((70, 500), np.float32)
    _gemm.gemm_into(False, True, 1.0, a, b, 0.0, c1)
    _gemm.gemm_into(False, True, 1.0, a, b, 0.0, c2)
    np.testing.assert_array_equal(c1, c2)


def _cpu_has_avx512f():
    """AVX-512F in the CPU, or a build that emulates it (setup.py CONVKIT_EMULATE_AVX512=1)."""
    if _gemm.avx512_emulated():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def test_own_sgemm_rounds_each_multiply_add_once():
    """The kernel's _mm512_fmadd_ps rounds a*b + c once (on AVX-512 hardware by the instruction;
    in the emulated build because gcc contracts SIMDe's a*b + c under the AVX2+FMA target,
    csrc/isa.h and setup.py): with a1*b1 = 1 + 2**-11 + 2**-24 (not a float) and a0*b0 = -(1 + 2**-11), the
    fused sum is 2**-24 and two roundings give 0.  So the emulated build's GEMM bits are the
    hardware's."""
    if not _gemm.own_sgemm_active():
        pytest.skip("float32 GEMMs run on BLAS here")
    a = np.array([[-1.0, 1 + 2.0**-12]], np.float32)
    b = np.array([[1 + 2.0**-11], [1 + 2.0**-12]], np.float32)
    c = np.full((1, 1), np.nan, np.float32)
    _gemm.gemm_into(False, False, 1.0, a, b, 0.0, c)
    assert c[0, 0] == np.float32(2.0**-24)


def test_info_says_when_avx512_is_emulated():
    """`convkit info` names an emulated build (no one may take its AVX-512 for hardware), and
    such a build runs every AVX-512 path: the own GEMM, the masked shifted gather, the AVX-512
    depthwise 3x3 level and the 16-lane RoI kernels."""
    import convkit
    from convkit.cpu import _conv_depthwise, _roi_align
    from convkit.cpu import conv as cc

    facts = convkit.get_backend("cpu").info()
    emulated = _gemm.avx512_emulated()
    assert ("EMULATED" in facts["float32 GEMM"]) == emulated
    assert ("EMULATED" in facts.get("AVX-512", "")) == emulated
    if not emulated:
        return
    assert _gemm.own_sgemm_active() and cc._conv.shift_available()
    assert _conv_depthwise.depthwise3x3_level(4, 64) == 3
    assert _roi_align.set_simd_level(2) == 2


@pytest.mark.skipif(platform.machine() != "x86_64" or not _cpu_has_avx512f(),
                    reason="the own float32 GEMM needs an x86-64 CPU with AVX-512F")
def test_own_sgemm_is_used_where_the_cpu_has_avx512():
    """On an AVX-512 machine (this project's CI) float32 convs must not silently fall back to
    BLAS: the kernel's speed is what the benchmarks measure -- unless CONVKIT_DISABLE_AVX512 asks
    for the portable paths."""
    import os

    off = os.environ.get("CONVKIT_DISABLE_AVX512", "")
    assert _gemm.own_sgemm_active() == (off in ("", "0"))


_PATHS_SCRIPT = r"""
import sys, numpy as np, convkit
from convkit.cpu import conv as C
rng = np.random.default_rng(5)
out = {}
# Winograd cases: odd and even widths, more than 16 tiles per row (two 16-tile steps),
# padding 0..3 (grad_x pads by 2 - p, so p = 3 crops), batches whose tile rows span images
for i, (x_shape, F, pad) in enumerate([((2, 16, 9, 11), 20, 1), ((1, 17, 7, 40), 16, 0),
                                       ((3, 16, 12, 35), 24, 2), ((2, 16, 6, 37), 16, 3),
                                       ((1, 32, 33, 33), 16, 1)]):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((F, x_shape[1], 3, 3)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, b, padding=pad)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = convkit.conv2d_backward(gy, x, w, padding=pad)
    out[f"y{i}"], out[f"gx{i}"], out[f"gw{i}"] = y, gx, gw
    # the same conv on the im2col path: Winograd must match it within float32 rounding
    prefer = C._prefer_winograd
    C._prefer_winograd = lambda *a: False
    try:
        with convkit.use_backend("cpu"):
            out[f"y_im2col{i}"] = convkit.conv2d_forward(x, w, b, padding=pad)
    finally:
        C._prefer_winograd = prefer
np.savez(sys.argv[1], **out)
"""


def _run_paths(tmp_path, disable, script=_PATHS_SCRIPT, name="paths"):
    """The arrays a script saves, run in a fresh process with or without
    CONVKIT_DISABLE_AVX512=1."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("CONVKIT_DISABLE_AVX512", None)
    if disable:
        env["CONVKIT_DISABLE_AVX512"] = "1"
    f = tmp_path / f"{name}_{int(disable)}.npz"
    subprocess.run([sys.executable, "-c", script, str(f)], check=True, env=env, timeout=300)
    return np.load(f)


@pytest.mark.skipif(platform.machine() != "x86_64" or not _cpu_has_avx512f(),
                    reason="compares the AVX-512 paths with the portable ones")
def test_avx512_paths_match_portable_paths(tmp_path):
    """CONVKIT_DISABLE_AVX512=1 runs BLAS and the portable Winograd transforms instead of the
    AVX-512 GEMM and transforms: forward, grad_x (Winograd) and grad_weight (GEMM) agree, and
    on each path the Winograd forward agrees with the im2col forward."""
    fast = _run_paths(tmp_path, False)
    slow = _run_paths(tmp_path, True)
    for k in fast.files:
        np.testing.assert_allclose(fast[k], slow[k], rtol=2e-5, atol=2e-5, err_msg=k)
    for i in range(5):
        for d in (fast, slow):
            np.testing.assert_allclose(d[f"y{i}"], d[f"y_im2col{i}"], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("m,n,k", [(9, 49, 193), (64, 300, 576), (17, 97, 7), (100, 1100, 500)])
def test_prepacked_a_matches_float64_product(m, n, k, tb):
    """The weights of a conv are packed once per call (pack_a) and every task's GEMM reads them
    prepacked: the same product as packing inside the GEMM."""
    if not _gemm.packed_a_floats(m, k):
        pytest.skip("no own float32 GEMM on this CPU: nothing is prepacked")
    rng = np.random.default_rng(m + n + k)
    a = rng.standard_normal((2, m, k)).astype(np.float32)
    out = np.full((2, _gemm.packed_a_floats(m, k)), np.nan, np.float32)
    assert _gemm.pack_a(a, out)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    for beta in (0.0, 0.5):
        c = c0.copy()
        _gemm.gemm_packed_into(out[1:], tb, b, beta, c, k)
        want = a[1].astype(np.float64) @ (b.T if tb else b) + beta * c0
        np.testing.assert_allclose(c, want, rtol=0, atol=1e-5 * np.sqrt(k) * 8)
        c_unpacked = c0.copy()
        _gemm.gemm_into(False, tb, 1.0, a[1], b, beta, c_unpacked)
        np.testing.assert_array_equal(c, c_unpacked)   # same kernel, same order: same bits


@pytest.mark.parametrize("m,n,k", [(6, 896, 25), (64, 500, 147), (100, 300, 40), (3, 60, 400)])
def test_rows_at_offsets_match_explicit_columns(m, n, k):
    """The implicit im2col of the wide stride-1 forward: row p of B read at b[boff[p]:] (rows
    overlapping each other, as a conv's taps do) -- the same product as B built row by row,
    in the one-pass (m <= 96) and the packed (m > 96) schemes, with a bias per row."""
    if not _gemm.packed_a_floats(m, k):
        pytest.skip("no own float32 GEMM on this CPU")
    rng = np.random.default_rng(m * k)
    flat = rng.standard_normal(n + 7 * k + 64).astype(np.float32)
    boff = (np.arange(k) * 7 + rng.integers(0, 3, k)).astype(np.intp)     # overlapping rows
    B = np.stack([flat[o:o + n] for o in boff])
    a = rng.standard_normal((1, m, k)).astype(np.float32)
    apk = np.zeros((1, _gemm.packed_a_floats(m, k)), np.float32)
    assert _gemm.pack_a(a, apk)
    bias = rng.standard_normal(m).astype(np.float32)
    c = np.full((m, n), np.nan, np.float32)
    assert _gemm.gemm_rows_into(apk, flat, boff, 0.0, c, bias)
    want = a[0].astype(np.float64) @ B + bias[:, None]
    np.testing.assert_allclose(c, want, rtol=0, atol=1e-5 * np.sqrt(k) * 8)
    c1 = np.empty((m, n), np.float32)
    assert _gemm.gemm_rows_into(apk, flat, boff, 0.0, c1)
    c2 = np.empty((m, n), np.float32)
    _gemm.gemm_packed_into(apk, False, B, 0.0, c2, k)
    np.testing.assert_array_equal(c1, c2)   # same kernel, same order: same bits


def _rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024


@pytest.mark.skipif(not platform.system() == "Linux", reason="reads /proc/self/status")
def test_packing_buffers_are_freed_when_their_thread_exits():
    """Each thread's 1 MiB of packing buffers goes when the thread ends: 64 short-lived threads,
    each filling its whole B buffer (m > 96 packs B; 240 x 1008 floats), must not leave 64 MiB."""
    import threading

    if not _gemm.own_sgemm_active():
        pytest.skip("no own float32 GEMM: BLAS keeps its own buffers")
    rng = np.random.default_rng(4)
    a = rng.standard_normal((128, 240)).astype(np.float32)
    b = rng.standard_normal((240, 1008)).astype(np.float32)

    def work():
        c = np.empty((128, 1008), np.float32)
        _gemm.gemm_into(False, False, 1.0, a, b, 0.0, c)

    work()
    before = _rss_mib()
    for _ in range(64):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert _rss_mib() - before < 24


_FILTERS_SCRIPT = r"""
import sys
import numpy as np
from convkit.cpu import _conv
rng = np.random.default_rng(1)
out = {}
for F, C in ((40, 33), (5, 3)):
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    for flip in (False, True):
        U = np.empty((16, C, F) if flip else (16, F, C), np.float32)
        _conv.winograd_filters(w, U, 2, flip)
        out[f"{F}_{C}_{int(flip)}"] = U
np.savez(sys.argv[1], **out)
"""


@pytest.mark.parametrize("flip", [False, True], ids=["forward", "grad_x"])
def test_winograd_filter_transform(flip):
    """U[a*4 + b, f, c] = (G w[f, c] G^T)[a, b] (grad_x: of w[c, f] turned by 180 degrees),
    against the matrix product in float64; 16 filters per AVX-512 step with a ragged last one
    (33 channels, 3 channels)."""
    from convkit.cpu import _conv
    G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    rng = np.random.default_rng(3)
    for F, C in ((40, 33), (5, 3)):
        w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
        wf = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1] if flip else w
        U = np.full((16,) + wf.shape[:2], np.nan, np.float32)
        _conv.winograd_filters(w, U, 2, flip)
        want = np.einsum("ai,fcij,bj->abfc", G, wf.astype(np.float64), G).reshape(U.shape)
        np.testing.assert_allclose(U, want, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(platform.machine() != "x86_64" or not _cpu_has_avx512f(),
                    reason="compares the AVX-512 transform with the portable one")
def test_winograd_filter_transform_same_bits_as_portable(tmp_path):
    """The AVX-512 filter transform does the portable loop's operations in the same order."""
    fast = _run_paths(tmp_path, False, _FILTERS_SCRIPT, "filters")
    slow = _run_paths(tmp_path, True, _FILTERS_SCRIPT, "filters")
    for k in fast.files:
        np.testing.assert_array_equal(fast[k], slow[k], err_msg=k)


_LEVELS_SCRIPT = """
import sys
from convkit.cpu import _roi_align, _roi_pool, _roi_variants
print(_roi_align.set_simd_level(2), _roi_pool.set_simd_level(2), _roi_variants.set_simd_level(2))
"""


@pytest.mark.skipif(platform.machine() != "x86_64" or not _cpu_has_avx512f(),
                    reason="needs a CPU (or an emulated build) that runs the AVX-512 paths")
@pytest.mark.parametrize("value, level", [("1", 1), ("yes", 1), ("0", 2), ("", 2)])
def test_disable_avx512_reaches_the_roi_modules(value, level):
    """CONVKIT_DISABLE_AVX512 is one switch for the whole cpu backend (csrc/isa.h's
    CK_CPU_HAS_AVX512): the RoI modules' vector level (roi_simd.h) follows it as the GEMM and
    the depthwise kernels do -- before, they ran their AVX-512 kernels with it set."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["CONVKIT_DISABLE_AVX512"] = value
    out = subprocess.run([sys.executable, "-c", _LEVELS_SCRIPT], check=True, env=env,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out == [str(level)] * 3, out


# (m, n, k): last panels of 1-4 columns (csrc/sgemm.h's ck_kernel_edge_m, vectors along m) and
# of 5-47 around them; m under and over the one-pass limit (96 rows: B read in place / packed),
# partial 8-row panels and partial groups of four panels; k over one block (C re-read, beta 1)
_NARROW = [(m, n, k) for m, n, k in [
    (1, 1, 3), (7, 2, 40), (8, 3, 193), (9, 4, 5), (31, 49, 300), (33, 50, 17), (96, 52, 410),
    (97, 98, 250), (130, 196, 256), (256, 98, 1024), (1024, 196, 40), (18, 1900, 70),
    (40, 5, 9), (64, 47, 64), (100, 147, 20)]]


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,n,k", _NARROW)
def test_narrow_last_panel_has_the_wide_panels_bits(m, n, k, ta, tb):
    """A column's bits do not depend on the columns after it: C (m x n) ends in a partial panel
    (n % 48 of 1-4 columns runs with the vectors along m) and must equal, bit for bit, the first
    n columns of the same product widened to whole 48-column panels (the full 8 x 48 tile) --
    beta 0, 1 and 0.25 with alpha -0.5 -- and the float64 product (on BLAS the latter only)."""
    rng = np.random.default_rng(m * 7 + n * 3 + k)
    wide = -(-n // 48) * 48 + 48
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    bw = rng.standard_normal((wide, k) if tb else (k, wide)).astype(np.float32)
    b = np.ascontiguousarray(bw[:n] if tb else bw[:, :n])
    cw0 = rng.standard_normal((m, wide)).astype(np.float32)
    for alpha, beta in ((1.0, 0.0), (1.0, 1.0), (-0.5, 0.25)):
        c = cw0[:, :n].copy()
        cw = cw0.copy()
        _gemm.gemm_into(ta, tb, alpha, a, b, beta, c)
        _gemm.gemm_into(ta, tb, alpha, a, bw, beta, cw)
        if _gemm.own_sgemm_active():     # (BLAS's bits follow the shape: no such promise)
            np.testing.assert_array_equal(c, cw[:, :n])
        want = _want(a, b, ta, tb, alpha, beta, cw0[:, :n])
        scale = np.sqrt(k) * (np.abs(a).max() * np.abs(b).max() + np.abs(cw0).max())
        np.testing.assert_allclose(c, want, rtol=0, atol=1.6e-6 * scale)


@pytest.mark.parametrize("m,n,k", [(18, 1900, 70), (96, 4, 33), (130, 196, 300), (9, 1, 250),
                                   (40, 98, 500)])
def test_narrow_last_panel_with_offsets_prepacked_and_row_bias(m, n, k):
    """The conv forward's calls (A prepacked, B's rows at offsets or in place, a bias per row
    added as C is stored) with a narrow last panel: the bits of the widened product's columns,
    and neighbouring columns of C untouched."""
    if not _gemm.packed_a_floats(m, k):
        pytest.skip("no own float32 GEMM on this CPU")
    rng = np.random.default_rng(m + 3 * n + k)
    wide = -(-n // 48) * 48 + 48
    flat = rng.standard_normal(wide + 5 * k + 64).astype(np.float32)
    boff = (np.arange(k) * 5 + rng.integers(0, 3, k)).astype(np.intp)
    a = rng.standard_normal((1, m, k)).astype(np.float32)
    apk = np.zeros((1, _gemm.packed_a_floats(m, k)), np.float32)
    assert _gemm.pack_a(a, apk)
    bias = rng.standard_normal(m).astype(np.float32)
    big = np.full((m, n + 3), 7.0, np.float32)
    cw = np.empty((m, wide), np.float32)
    assert _gemm.gemm_rows_into(apk, flat, boff, 0.0, cw, bias)
    c = np.empty((m, n), np.float32)
    assert _gemm.gemm_rows_into(apk, flat, boff, 0.0, c, bias)
    np.testing.assert_array_equal(c, cw[:, :n])
    B = np.stack([flat[o:o + wide] for o in boff])
    want = a[0].astype(np.float64) @ B[:, :n] + bias[:, None]
    np.testing.assert_allclose(c, want, rtol=0, atol=1e-5 * np.sqrt(k) * 8)
    for beta in (0.0, 1.0):     # B's rows in place (m <= 96) or packed; C just before other data
        buf = np.full(m * n + 16, 7.0, np.float32)
        c2 = buf[:m * n].reshape(m, n)
        cw2 = np.full((m, wide), 7.0, np.float32)
        _gemm.gemm_packed_into(apk, False, np.ascontiguousarray(B[:, :n]), beta, c2, k)
        _gemm.gemm_packed_into(apk, False, B, beta, cw2, k)
        np.testing.assert_array_equal(c2, cw2[:, :n])
        np.testing.assert_array_equal(buf[m * n:], 7.0)


# (m, n, k): GEMMs of 6q rows, not a multiple of 8, in one pass (csrc/sgemm.h's 6-row tiles,
# ck_m6_strip: tiles at lanes 0, 6, 4, 2 of A's 8-row panels; 6 x 64 on B in place, 6 x 48 on
# packed panels) -- whole and partial strips of 5-63 and 1-4 columns, past the 1024-column
# block, k over one block (C re-read, beta 1)
_SIX = [(6, 1900, 70), (18, 1900, 512), (18, 65, 193), (36, 130, 100), (90, 1029, 40),
        (12, 68, 250), (54, 3, 17), (42, 127, 1)]


@pytest.mark.parametrize("m,n,k", _SIX)
def test_six_row_tiles_have_the_eight_row_tiles_bits(m, n, k):
    """An output's bits do not depend on the tile that computes it: C of m = 6q rows (6-row
    tiles) equals, bit for bit, the first m rows of the product with A widened to whole 8-row
    panels (the 8 x 48 tiles) -- A and B plain and transposed, beta 0, 1 and 0.25 with alpha
    -0.5, A prepacked with a bias per row, B's rows at offsets -- and the float64 product; the
    floats after C are not written."""
    rng = np.random.default_rng(m * 11 + n + k)
    m8 = -(-m // 8) * 8
    aw = rng.standard_normal((m8, k)).astype(np.float32)
    bb = rng.standard_normal((k, n)).astype(np.float32)
    cw0 = rng.standard_normal((m8, n)).astype(np.float32)
    for ta, tb in ((False, False), (True, False), (False, True), (True, True)):
        a = np.ascontiguousarray(aw[:m].T if ta else aw[:m])
        a8 = np.ascontiguousarray(aw.T if ta else aw)
        bt = np.ascontiguousarray(bb.T) if tb else bb     # (tb: B packed, 6 x 48 tiles)
        for alpha, beta in ((1.0, 0.0), (1.0, 1.0), (-0.5, 0.25)):
            buf = np.full(m * n + 16, 7.0, np.float32)     # (C just before other data)
            c = buf[:m * n].reshape(m, n)
            c[:] = cw0[:m]
            cw = cw0.copy()
            _gemm.gemm_into(ta, tb, alpha, a, bt, beta, c)
            _gemm.gemm_into(ta, tb, alpha, a8, bt, beta, cw)
            if _gemm.own_sgemm_active():
                np.testing.assert_array_equal(c, cw[:m])
            np.testing.assert_array_equal(buf[m * n:], 7.0)
            want = _want(a, bt, ta, tb, alpha, beta, cw0[:m])
            scale = np.sqrt(k) * (np.abs(aw).max() * np.abs(bb).max() + np.abs(cw0).max())
            np.testing.assert_allclose(c, want, rtol=0, atol=1.6e-6 * scale)
    if not _gemm.packed_a_floats(m, k):
        return
    bias = rng.standard_normal(m8).astype(np.float32)
    apk = np.zeros((1, _gemm.packed_a_floats(m, k)), np.float32)
    apk8 = np.zeros((1, _gemm.packed_a_floats(m8, k)), np.float32)
    assert _gemm.pack_a(aw[None, :m], apk) and _gemm.pack_a(aw[None], apk8)
    c = np.empty((m, n), np.float32)
    cw = np.empty((m8, n), np.float32)
    _gemm.gemm_packed_into(apk, False, bb, 0.0, c, k)
    _gemm.gemm_packed_into(apk8, False, bb, 0.0, cw, k)
    np.testing.assert_array_equal(c, cw[:m])
    flat = rng.standard_normal(n + 3 * k + 64).astype(np.float32)
    boff = (np.arange(k) * 3 + rng.integers(0, 3, k)).astype(np.intp)
    assert _gemm.gemm_rows_into(apk, flat, boff, 0.0, c, bias[:m])
    assert _gemm.gemm_rows_into(apk8, flat, boff, 0.0, cw, bias)
    np.testing.assert_array_equal(c, cw[:m])
    B = np.stack([flat[o:o + n] for o in boff])
    want = aw[:m].astype(np.float64) @ B + bias[:m, None]
    np.testing.assert_allclose(c, want, rtol=0, atol=1e-5 * np.sqrt(k) * 8)
