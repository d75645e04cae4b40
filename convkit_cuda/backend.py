"""CudaBackend -- placeholder while being written."""
from convkit.backend import Backend


def _require_cupy():
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"CuPy is not installed ({e}); install it with "
                           "`pip install 'convkit[cuda12]'` or `'convkit[cuda13]'`") from None


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self):
        _require_cupy()
        raise RuntimeError("the cuda backend's ops are not written yet")
