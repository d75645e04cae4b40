"""The CUDA kernel sources, checked without a GPU and without CuPy.

* every ``convkit_cuda/kernels/*.cu`` compiles with ``nvcc -ptx`` for sm_80 and sm_90 in both
  dtypes, from exactly the text the loader hands to NVRTC (:func:`kernel_source`);
* the one parser of kernel signatures (``convkit_cuda._kernels.parse_params``, used by the
  launch check and the tests' host emulation) reads every ``.cu`` file and refuses parameter
  types a launcher could mis-pack;
* the PTX has the arithmetic the NVRTC options promise (no fused multiply-adds; float32
  flushes subnormals, float64 does not);
* the run-time argument check rejects what CuPy would silently mis-pack.

Only ``convkit_cuda._kernels`` is imported (it imports no CuPy).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from convkit_cuda._kernels import (DTYPES, OPTIONS, STEMS, check_args, kernel_names,
                                   kernel_source, parse_params, signatures)

ARCHS = ("sm_80", "sm_90")
CASES = [(stem, dt, arch) for stem in STEMS for dt in DTYPES for arch in ARCHS]


def _nvcc():
    return shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc") if os.path.exists(p)), None)


@pytest.fixture(scope="module")
def ptx_results(tmp_path_factory):
    """Compile every (file, dtype, arch) at once (in parallel); results keyed by the case."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install the CUDA toolkit to check the kernel sources)")
    d = tmp_path_factory.mktemp("ptx")

    def compile_one(case):
        stem, dt, arch = case
        src = d / f"{stem}_{dt}.cu"
        if not src.exists():
            src.write_text(kernel_source(stem, dt))
        out = d / f"{stem}_{dt}_{arch}.ptx"
        # the NVRTC options, plus the -ftz=true CuPy appends to every RawModule
        p = subprocess.run([nvcc, "-ptx", f"-arch={arch}", *OPTIONS, "-ftz=true", "-o",
                            str(out), str(src)], capture_output=True, text=True, timeout=300)
        ptx = out.read_text() if out.exists() else ""
        return p.returncode, p.stdout + p.stderr, ptx

    for stem in STEMS:          # write the sources first (threads then only read them)
        for dt in DTYPES:
            (d / f"{stem}_{dt}.cu").write_text(kernel_source(stem, dt))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        return dict(zip(CASES, ex.map(compile_one, CASES)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_kernels_compile_to_ptx(ptx_results, case):
    stem, dt, arch = case
    rc, log, ptx = ptx_results[case]
    assert rc == 0, f"nvcc failed for {stem}.cu ({dt}, {arch}):\n{log}"
    assert "warning" not in log.lower(), f"nvcc warnings for {stem}.cu ({dt}, {arch}):\n{log}"
    suffix = DTYPES[dt][1]
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx))
    assert entries == {f"{n}_{suffix}" for n in kernel_names(stem)}, entries


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_ptx_arithmetic_matches_the_documented_flags(ptx_results, case):
    """--fmad=false: no fma instruction the source did not ask for; float32 arithmetic
    flushes subnormals (.ftz), float64 never does -- what the host emulation models."""
    stem, dt, arch = case
    _, _, ptx = ptx_results[case]
    assert not re.search(r"\bfma\.rn\.(ftz\.)?f(32|64)\b", ptx), "contracted multiply-add"
    # every float32 add/sub/mul/div rounds explicitly (.rn: ptxas may not fuse it) and, in
    # the float32 kernels, flushes; float64 arithmetic has no flush mode
    assert not re.search(r"^\s*(add|sub|mul|div)(\.ftz)?\.f(32|64)\b", ptx, re.M)
    assert not re.search(r"\b(add|sub|mul|div)\.rn\.ftz\.f64\b", ptx)
    if dt == "float32":
        assert not re.search(r"\b(add|sub|mul|div)\.rn\.f32\b", ptx), "float32 without .ftz"
        if stem == "roi":     # (some files do their float32 arithmetic in double)
            assert re.search(r"\bmul\.rn\.ftz\.f32\b", ptx)


def test_kernel_source_substitution():
    for stem in STEMS:
        names = kernel_names(stem)
        assert names, f"{stem}.cu defines no extern \"C\" kernels"
        for dt, (ctype, suffix) in DTYPES.items():
            src = kernel_source(stem, dt)
            lines = src.splitlines()
            assert lines[0] == f"typedef {ctype} scalar_t;"
            assert lines[1] == f'#line 1 "{stem}.cu"'
            for n in names:
                assert re.search(rf'extern "C" __global__ void {n}_{suffix}\(', src), n
                assert not re.search(rf'__global__ void {n}\(', src), n
            assert "name_expressions" not in src and "template" not in src


# ------------------------------------------------------------------ the one signature parser
@pytest.mark.parametrize("stem", STEMS)
def test_signatures_parsed_from_every_cu(stem):
    from convkit_cuda._kernels import _text

    sigs = signatures(stem)
    assert set(sigs) == set(kernel_names(stem))
    params = parse_params(_text(stem))
    for name, codes in sigs.items():
        assert codes and codes == tuple(c for c, _ in params[name])
        # every parameter has a name the emulation's runner can pass on
        assert all(re.fullmatch(r"[A-Za-z_]\w*", n) for _, n in params[name])


def test_parser_refuses_types_a_launcher_would_mispack():
    # `int` is packed as 4 bytes but the launchers pass int64: refused, naming the kernel
    with pytest.raises(ValueError, match=r"k: parameter n has type 'int'"):
        parse_params('extern "C" __global__ void k(const scalar_t* x, int n) {}')
    assert parse_params('extern "C" __global__ void k(const scalar_t* __restrict__ x,\n'
                        ' long long n, unsigned long long* m, double d, int* a) {}') == \
        {"k": [("S*", "x"), ("I", "n"), ("U*", "m"), ("D", "d"), ("i*", "a")]}


# ------------------------------------------------------------------ run-time argument check
def test_check_args_rejects_what_cupy_would_mispack():
    x = np.zeros(4, np.float32)
    good = (x, np.float32(1), np.float32(2), np.int64(1), x)   # box_iou: b1, b2, N, M, out
    with pytest.raises(TypeError, match="takes 5 arguments"):
        check_args("boxes", "box_iou", np.float32, good[:4])
    # Python ints become int64 in CuPy but the table says what the kernel wants: cast first
    with pytest.raises(TypeError, match="argument 2 must be int64, got int"):
        check_args("boxes", "box_iou", np.float32, (x, x, 3, np.int64(1), x))
    with pytest.raises(TypeError, match="argument 2 must be int64, got int32"):
        check_args("boxes", "box_iou", np.float32, (x, x, np.int32(3), np.int64(1), x))
    with pytest.raises(TypeError, match="argument 4 must be a C-contiguous float32 array"):
        check_args("boxes", "box_iou", np.float32, (x, x, np.int64(1), np.int64(1),
                                                    np.zeros(4, np.float64)))
    with pytest.raises(TypeError, match="argument 0 must be a C-contiguous float32 array"):
        check_args("boxes", "box_iou", np.float32, (np.zeros((4, 4), np.float32)[:, ::2], x,
                                                    np.int64(1), np.int64(1), x))
    # scalar_t scalars must have the kernel's width: float64 into a float kernel is rejected
    roi = ("roi", "roi_align_fwd", np.float32)
    args = [x, x] + [np.int64(1)] * 7 + [np.float32(0.5), np.int64(0), np.int64(0), x,
                                         np.zeros(1, np.uint64)]
    check_args(*roi, tuple(args))
    args[9] = np.float64(0.5)
    with pytest.raises(TypeError, match="argument 9 must be float32, got float64"):
        check_args(*roi, tuple(args))
    # and a double parameter takes float64 whatever the kernel's dtype
    with pytest.raises(TypeError, match="argument 3 must be float64, got float32"):
        check_args("boxes", "nms_mask", np.float32,
                   (x, np.int64(1), np.int64(1), np.float32(0.5), np.zeros(1, np.uint64)))
    check_args("boxes", "nms_mask", np.float32,
               (x, np.int64(1), np.int64(1), np.float64(0.5), np.zeros(1, np.uint64)))
    check_args("boxes", "box_iou", np.float32, (x, x, np.int64(1), np.int64(1), x))


def test_loader_module_does_not_import_cupy():
    code = ("import sys; import convkit_cuda._kernels as k; k.kernel_source('conv', 'float32'); "
            "print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
