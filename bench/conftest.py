"""pytest-benchmark suite over the shared layer table: ``pytest bench/``.

Not part of the default ``pytest`` run (pyproject's testpaths is ``tests/``).  Each test times one
(op, pass, backend) with ``benchmark.pedantic`` and checks the result against torch (or the numpy
backend where torch has no such op), so a fast wrong kernel fails here.  Results are grouped by
op and pass, so convkit backends and torch sit side by side in the report.

Options: ``--bench-quick`` (tiny shapes), ``--bench-backends numpy,cpu,torch``,
``--bench-ops conv,res_28,...``, ``--bench-rounds N`` (default 5).  Same allocator settings and
thread counts as ``convkit bench`` (glibc mallopt once per session; torch threads =
convkit.get_num_threads()).
"""
from __future__ import annotations

import pytest

import convkit
from convkit import benchmark as B


def pytest_addoption(parser):
    g = parser.getgroup("convkit bench")
    g.addoption("--bench-quick", action="store_true", help="tiny shapes (QUICK_CASES)")
    g.addoption("--bench-backends", default=None,
                help="comma list of numpy, cpu, cuda, torch, torch-cuda (default: usable convkit "
                     "backends + torch; numpy only for pool, bn, roi, nms at full size)")
    g.addoption("--bench-ops", default=None, help="op names and/or families (default all)")
    g.addoption("--bench-rounds", type=int, default=5, help="timed rounds per test (default 5)")


def pytest_configure(config):
    print(B.set_mallopt())
    torch = B._torch()
    if torch is not None:
        torch.set_num_threads(convkit.get_num_threads())


def _backends(config):
    spec = config.getoption("--bench-backends")
    if spec:
        return B.parse_backends(spec), True
    names = list(convkit.available_backends())
    torch = B._torch()
    if torch is not None:
        names.append("torch")
        if "cuda" in names and torch.cuda.is_available():
            names.append("torch-cuda")
    return names, False


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    quick = config.getoption("--bench-quick")
    cases = B.select_cases(config.getoption("--bench-ops"), quick)
    backends, explicit = _backends(config)
    tv = B._has_torchvision()
    params = []
    for case in cases:
        for pas in case.passes:
            for b in backends:
                if b in B.TORCH_NAMES and case.family in ("roi", "nms", "deform") and not tv:
                    continue   # torchvision absent: no torch op to time
                if b == "numpy" and case.family == "conv" and not (quick or explicit):
                    continue   # the reference is too slow for the big convs by default
                tag = "fwd" if pas == B.FWD else "fwdbwd"
                params.append(pytest.param(case, pas, b, id=f"{case.name}-{tag}-{b}"))
    metafunc.parametrize("bench_case,bench_pass,bench_backend", params)


@pytest.fixture
def bench_rounds(request):
    return request.config.getoption("--bench-rounds")
