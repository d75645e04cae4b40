"""Build the Cython CPU backend: one extension per op family in convkit/cpu/.

OpenMP is probed (``-fopenmp``; ``/openmp`` on MSVC); set CONVKIT_NO_OPENMP=1 to build without
it (Apple clang has no OpenMP by default: the build then goes serial and ``convkit info`` says
so).  CONVKIT_EXTENSIONS=_conv,_pool builds only those (a developer aid).
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


def _extensions():
    omp = _openmp_flags()
    only = {s.strip() for s in os.environ.get("CONVKIT_EXTENSIONS", "").split(",") if s.strip()}
    cflags = ["-O3"] if sys.platform != "win32" else ["/O2"]
    exts = []
    for pyx in sorted(glob(os.path.join("convkit", "cpu", "_*.pyx"))):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        if only and stem not in only:
            continue
        exts.append(Extension(
            f"convkit.cpu.{stem}", [pyx],
            # the C the kernels include lives in convkit/cpu/csrc/*.h
            include_dirs=[np.get_include(), os.path.join("convkit", "cpu", "csrc")],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
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
