"""The CUDA kernel sources, checked without a GPU and without CuPy.

* every ``convkit_cuda/kernels/*.cu`` compiles with ``nvcc -ptx`` for sm_80 and sm_90 in both
  dtypes, from exactly the text the loader hands to NVRTC (:func:`kernel_source`);
* the launch-signature table the launchers are checked against at run time
  (``convkit_cuda._kernels.SIGNATURES``) matches every ``extern "C" __global__`` signature in
  the ``.cu`` files, parameter by parameter;
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

from convkit_cuda._kernels import (DTYPES, SIGNATURES, STEMS, check_args, kernel_names,
                                   kernel_source)

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
        p = subprocess.run([nvcc, "-ptx", f"-arch={arch}", "--std=c++14", "-o", str(out),
                            str(src)], capture_output=True, text=True, timeout=300)
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


# ------------------------------------------------------------------ signature table vs .cu
_CTYPES = {"scalar_t*": "S*", "longlong*": "I*", "double*": "D*", "unsignedlonglong*": "U*",
           "scalar_t": "S", "longlong": "I", "double": "D"}
_SIG_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)


def parse_signatures(text):
    """{kernel name: (type code, ...)} from the extern "C" kernels of a .cu source."""
    out = {}
    for name, params in _SIG_RE.findall(text):
        codes = []
        for p in params.split(","):
            p = re.sub(r"\b(const|__restrict__)\b", " ", p).strip()
            m = re.fullmatch(r"(.*?[\s*])(\w+)", p)
            assert m, f"cannot parse parameter {p!r} of {name}"
            ctype = re.sub(r"\s+", "", m.group(1))
            assert ctype in _CTYPES, f"{name}: parameter type {ctype!r} is not one of {_CTYPES}"
            codes.append(_CTYPES[ctype])
        out[name] = tuple(codes)
    return out


@pytest.mark.parametrize("stem", STEMS)
def test_signature_table_matches_cu(stem):
    from convkit_cuda._kernels import _text

    parsed = parse_signatures(_text(stem))
    assert set(parsed) == set(SIGNATURES[stem]), (sorted(parsed), sorted(SIGNATURES[stem]))
    for name, codes in parsed.items():
        assert SIGNATURES[stem][name] == codes, \
            f"{stem}.cu {name}: .cu declares {codes}, the table says {SIGNATURES[stem][name]}"


def test_parse_signatures_sees_a_mismatch():
    # the checker itself must notice a wrong width (int instead of long long)
    with pytest.raises(AssertionError, match="parameter type 'int'"):
        parse_signatures('extern "C" __global__ void k(const scalar_t* x, int n) {}')
    assert parse_signatures('extern "C" __global__ void k(const scalar_t* __restrict__ x,\n'
                            ' long long n, unsigned long long* m, double d) {}') == \
        {"k": ("S*", "I", "U*", "D")}


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
    args = [x, x] + [np.int64(1)] * 6 + [np.float32(0.5), np.int64(0), np.int64(0), x]
    check_args(*roi, tuple(args))
    args[8] = np.float64(0.5)
    with pytest.raises(TypeError, match="argument 8 must be float32, got float64"):
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
