"""Shape arithmetic, in one place: every backend and the boundary import it."""
from __future__ import annotations


def conv_out_size(size: int, k: int, s: int, pad_total: int, d: int) -> int:
    """Output length of a cross-correlation; ``pad_total`` = padding before + after."""
    return (size + pad_total - d * (k - 1) - 1) // s + 1


def same_padding(k: int, d: int) -> tuple[int, int]:
    """(before, after) padding that keeps the size at stride 1; the odd pixel goes after (torch)."""
    total = d * (k - 1)
    return total // 2, total - total // 2


def pool_out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Output length of a pooling window, torch's rule (``pooling_output_shape``).

    With ceil_mode the last window may start past the input, but never in the right padding:
    a window must start inside the input or the left padding.
    """
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out

