"""Build the Cython CPU backend: one extension per op family in convkit/cpu/.

OpenMP is probed (``-fopenmp``; ``/openmp`` on MSVC); set CONVKIT_NO_OPENMP=1 to build without
it (Apple clang has no OpenMP by default: the build then goes serial and ``convkit info`` says
so).  CONVKIT_EXTENSIONS=_conv,_pool builds only those (a developer aid).

CONVKIT_EMULATE_AVX512=1 builds a test build (x86-64 gcc/clang) whose AVX-512 code runs on
SIMDe's portable emulation of the intrinsics, so that the AVX-512 paths can be tested on a CPU
without AVX-512 (csrc/isa.h; ``convkit info`` says "emulated").  It needs SIMDe's headers:
CONVKIT_SIMDE_INCLUDE=<dir holding simde/>, else the system's (Debian: libsimde-dev), else the
``simde-py`` package's.  Slow: never for use.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _openmp_flags():
    if os.environ.get("CONVKIT_NO_OPENMP", "") not in ("", "0"):
        return None
    if sys.platform == "win32":
        return ["/openmp"], []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        r = subprocess.run(cc + ["-fopenmp", src, "-o", os.path.join(tmp, "t")],
                           capture_output=True)
        return (["-fopenmp"], ["-fopenmp"]) if r.returncode == 0 else None
    except OSError:
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _simde_include():
    """The directory holding simde/x86/avx512.h, for CONVKIT_EMULATE_AVX512=1."""
    dirs = [os.environ.get("CONVKIT_SIMDE_INCLUDE", ""), "/usr/include", "/usr/local/include"]
    try:
        import simde_py
        dirs.append(simde_py.get_include())
    except ImportError:
        pass
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, "simde", "x86", "avx512.h")):
            return d
    raise SystemExit("CONVKIT_EMULATE_AVX512=1 needs SIMDe's headers: install libsimde-dev or "
                     "`pip install simde-py`, or set CONVKIT_SIMDE_INCLUDE")


def _extensions():
    omp = _openmp_flags()
    emulate = os.environ.get("CONVKIT_EMULATE_AVX512", "") not in ("", "0")
    cflags = ["-O3"] if sys.platform != "win32" else ["/O2"]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    include = [np.get_include(), os.path.join("convkit", "cpu", "csrc")]
    if emulate:     # a test build: the AVX-512 paths on SIMDe (csrc/isa.h)
        macros.append(("CONVKIT_EMULATE_AVX512", "1"))
        # SIMDe's inlined emulation at -O3 with debug info took 6x as long to build; what the
        # emulation must keep: gcc contracting a*b+c into one FMA (-fexpensive-optimizations)
        cflags = ["-O1", "-fexpensive-optimizations", "-g0"]
        simde = _simde_include()
        if simde not in ("/usr/include", "/usr/local/include"):   # (the compiler's own dirs)
            include.append(simde)
    only = {s.strip() for s in os.environ.get("CONVKIT_EXTENSIONS", "").split(",") if s.strip()}
    exts = []
    for pyx in sorted(glob(os.path.join("convkit", "cpu", "_*.pyx"))):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        if only and stem not in only:
            continue
        exts.append(Extension(
            f"convkit.cpu.{stem}", [pyx],
            # the C the kernels include lives in convkit/cpu/csrc/*.h
            include_dirs=include,
            define_macros=macros,
            extra_compile_args=cflags + (omp[0] if omp else []),
            extra_link_args=omp[1] if omp else [],
        ))
    return cythonize(
        exts,
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                             "initializedcheck": False, "cdivision": False},
        compile_time_env={"CONVKIT_OPENMP": bool(omp)},
        quiet=True,
    )


setup(ext_modules=_extensions())
