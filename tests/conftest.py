"""Shared fixtures: every op test runs over every backend registered here, skipping (with the
reason) those that cannot load on this machine -- so on a GPU machine `cuda` runs the full suite.
"""
import numpy as np
import pytest

import convkit

ALL_BACKENDS = ("numpy", "cpu", "cuda")


def _params():
    out = []
    for name in ALL_BACKENDS:
        ok, why = convkit.backend_status(name) if name in convkit.known_backends() else (
            False, f"backend {name!r} is not registered")
        out.append(pytest.param(name, id=name,
                                marks=() if ok else pytest.mark.skip(reason=why[:300])))
    return out


BACKEND_PARAMS = _params()


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """Name of a usable backend; the test body runs once per backend."""
    return request.param


@pytest.fixture
def torch():
    t = pytest.importorskip("torch")
    t.set_num_threads(2)
    return t


@pytest.fixture(autouse=True)
def _no_backend_leak():
    yield
    convkit.set_backend(None)
    convkit.set_num_threads(None)
