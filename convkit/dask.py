"""convkit ops and model inference on dask arrays (extra ``convkit[dask]``; DESIGN.md, "Scale-out").

``conv2d_forward``, ``max_pool2d_forward`` (values only), ``avg_pool2d_forward`` and
``predict(model, x)`` take a 4-D dask array ``x`` (N, C, H, W) chunked in any way along N, H and W
(C is brought into one chunk) and return a lazy dask array equal to the in-memory call:

* only N chunked: every block is the in-memory call on that slice of the batch, with the same
  arguments, so the result has the in-memory call's bits wherever that call's result does not
  depend on the batch size (pooling, pointwise layers).  GEMM-based layers (convolutions, Linear)
  run on BLAS where convkit's own AVX-512 GEMM does not, and BLAS may round a GEMM with another
  row count differently (OpenBLAS on an AMD EPYC did, in float32 and float64): there the blocks
  agree with the whole-batch call within float tolerance;
* H or W chunked: each output tile is computed from its input window with the border padding
  added explicitly, within float tolerance of the in-memory call (a smaller tile can select
  another algorithm).

Building the graph reads no block; every block has exactly the shape its declared chunks say.
Tasks run on the backend active where they run (on a ``dask.distributed`` worker, the one
:class:`WorkerSetup` chose; a client's ``set_backend`` does not reach worker processes), or on
``backend=`` when it is given.

Halos and chunk alignment (one spatial axis; H and W are planned independently)
--------------------------------------------------------------------------------
A windowed op with kernel ``k``, stride ``s``, dilation ``d`` and padding ``p_b`` before /
``p_a`` after (``"same"`` pads ``d*(k-1)//2`` before and the rest after) computes output row
``o`` from the input rows::

    o*s - p_b,  o*s - p_b + d,  ...,  o*s - p_b + d*(k-1)

so output rows ``[a, b)`` read input rows ``[a*s - p_b, (b-1)*s - p_b + d*(k-1) + 1)``; rows
below 0 or at/after H are padding.  Pooling's ``ceil_mode`` changes only how many outputs there
are (the last window may hang past ``H + p_a``); its rows are read the same way.

1. *Choose the output chunks.*  An input chunk starting at row ``S`` starts the output chunk at
   ``ceil(S / s)``: output ``o`` belongs to the input chunk that holds row ``o*s``, where its
   window starts before the padding shift.  Input chunks that are multiples of the stride give
   the input chunks divided by the stride (a "same" convolution keeps the chunks: regular chunks
   stay regular, as ``to_zarr`` needs).  Boundaries are clipped to [0, Ho] and repeated ones
   merge, so a chunk smaller than the stride gives no output chunk of its own; an output chunk
   whose rows would all be padding is merged into its neighbour.
2. *Map each output chunk to its input window* with the formula above, clipped to [0, H).  For
   chunks aligned to the stride the window reaches ``p_b`` rows into the chunk before and
   ``d*(k-1) - p_b - s + 1`` rows into the chunk after (the halo, when positive).  A block's
   window is assembled in its task from the input blocks it meets; the parts it needs of its
   neighbours (halo strips) are cut by one task per input block, on that block's worker, so
   only strips travel and a tile costs one task.
3. *Pad at image borders only*: the clipped-away part of a window (rows < 0 or >= H) is padding,
   added explicitly to the block (zeros for conv and avg pooling, -inf for max pooling; for the
   first op it is written with the window, in the same one copy), and the op runs on the block
   with no padding of its own and stride/dilation unchanged.  It then
   yields exactly ``b - a`` rows: the block is ``(b-1-a)*s + d*(k-1) + 1`` rows long.  Average
   pooling's divisor is fixed up for windows that meet the image border (the op saw explicit
   zeros as data): each such output is multiplied by ``k / count``, with ``count`` the window's
   rows inside ``[-p, H + p)`` (``count_include_pad``) or inside ``[0, H)``.

An axis held in one chunk whose padding is symmetric is not cut: its blocks get the op's own
padding.  When no spatial axis is cut, the op runs on each batch block with the caller's
arguments unchanged.

``predict`` applies this to the longest run of spatially local layers at the front of a model
(Conv2d, MaxPool2d, AvgPool2d and pointwise layers: ReLU, BatchNorm2d in eval, Dropout in eval,
Identity, ToFloat, Normalize; nested Sequentials are flattened): the planning walks the chain
backwards from each output tile, so each layer's padding is applied at the image border of *its*
input, never at a tile border.  The rest of the model (Flatten, Linear, residual blocks, ...) runs
per batch block on the whole feature map.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import threading
from typing import NamedTuple

import numpy as np

try:
    import cloudpickle
    import dask
    import dask.array as da
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph
    from dask.sizeof import sizeof
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("convkit.dask needs dask: pip install 'convkit[dask]'") from e

from . import functional as F
from ._registry import get_backend, known_backends, set_backend, use_backend
from ._shapes import conv_out_size, pool_out_size
from .backend import Backend
from .nn import layers as L
from .nn.module import Module, Sequential

try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - the threaded scheduler needs no distributed
    _WorkerPluginBase = object

__all__ = ["conv2d_forward", "max_pool2d_forward", "avg_pool2d_forward", "predict",
           "WorkerSetup"]


# ------------------------------------------------------------------------------------ geometry
class _Window(NamedTuple):
    """One windowed op, normalised: pairs are (H, W); ``pad`` is ((before, after) along H,
    (before, after) along W)."""
    kind: str                     # "conv", "max" or "avg"
    k: tuple
    s: tuple
    d: tuple
    pad: tuple
    ceil_mode: bool = False
    count_include_pad: bool = True

    def out_len(self, ax: int, size: int) -> int:
        pb, pa = self.pad[ax]
        if self.kind == "conv":
            return conv_out_size(size, self.k[ax], self.s[ax], pb + pa, self.d[ax])
        return pool_out_size(size, self.k[ax], self.s[ax], pb, self.d[ax], self.ceil_mode)

    def reads(self, ax: int, a: int, b: int) -> tuple[int, int]:
        """Input rows [lo, hi) that output rows [a, b) read, padding included."""
        s, pb = self.s[ax], self.pad[ax][0]
        return a * s - pb, (b - 1) * s - pb + self.d[ax] * (self.k[ax] - 1) + 1


class _Axis(NamedTuple):
    """The cut of one spatial axis.  Per output block: ``windows[i]`` the input rows [lo, hi)
    it reads, ``steps[i][j]`` = (pad before, pad after, first output row, end output row) of
    windowed op j on that block.  ``sizes[j]`` is the length of op j's input."""
    native: bool                  # not cut: one block, the ops pad by themselves
    out_chunks: tuple
    windows: tuple
    steps: tuple
    sizes: tuple


def _back(wins, sizes, ax, a, b):
    """Walk output rows [a, b) of the last op back through ``wins``: (input rows, steps), or
    None when some op's window would be all padding (nothing to compute it from)."""
    steps = []
    for j in range(len(wins) - 1, -1, -1):
        lo, hi = wins[j].reads(ax, a, b)
        clo, chi = max(lo, 0), min(hi, sizes[j])
        if chi <= clo:
            return None
        steps.append((clo - lo, hi - chi, a, b))
        a, b = clo, chi
    return (a, b), tuple(reversed(steps))


def _plan_axis(ax, chunks, wins, native) -> _Axis:
    sizes = [int(sum(chunks))]
    for w in wins:
        sizes.append(w.out_len(ax, sizes[-1]))
    if native:
        steps = tuple((0, 0, 0, n) for n in sizes[1:])
        return _Axis(True, (sizes[-1],), ((0, sizes[0]),), (steps,), tuple(sizes))
    edges = {0, sizes[-1]}
    start = 0
    for c in chunks[:-1]:
        start += c
        b = start
        for w, n in zip(wins, sizes[1:]):   # first output o with o*s >= b
            b = min(-(-b // w.s[ax]), n)
        edges.add(b)
    edges = sorted(edges)
    blocks = [[a, b] for a, b in zip(edges[:-1], edges[1:])]
    plans = []
    i = 0
    while i < len(blocks):
        r = _back(wins, sizes, ax, *blocks[i])
        if r is None:             # all padding: merge into a neighbour and look again
            if len(blocks) == 1:
                return None
            j = i - 1 if i else i + 1
            lo, hi = min(blocks[i][0], blocks[j][0]), max(blocks[i][1], blocks[j][1])
            blocks[min(i, j)] = [lo, hi]
            del blocks[max(i, j)]
            del plans[min(i, j):]
            i = min(i, j)
            continue
        plans.append(r)
        i += 1
    return _Axis(False, tuple(b - a for a, b in blocks), tuple(r[0] for r in plans),
                 tuple(r[1] for r in plans), tuple(sizes))


class _Plan(NamedTuple):
    wins: tuple
    h: _Axis
    w: _Axis
    padded: bool = False          # the first op's border padding is already in the window


def _plan(x, wins) -> _Plan:
    """Cut H and W of dask array ``x`` for the chain of windowed ops ``wins``."""
    axes = []
    for ax in (0, 1):
        chunks = x.chunks[2 + ax]
        symmetric = all(w.pad[ax][0] == w.pad[ax][1] for w in wins)
        native = len(chunks) == 1 and symmetric
        p = _plan_axis(ax, chunks, wins, native)
        if p is None:             # even the whole axis reads padding only: let the op pad it
            p = _plan_axis(ax, (sum(chunks),), wins, True)
        axes.append(p)
    return _Plan(tuple(wins), *axes)


def _overlapping(starts, lo, hi):
    """Indices of the chunks (starting at ``starts``, the last entry the total) that meet
    rows [lo, hi)."""
    first = int(np.searchsorted(starts, lo, side="right")) - 1
    last = int(np.searchsorted(starts, hi, side="left"))
    return range(first, last)


def _cut(block, parts):
    """The parts of one input block that neighbouring tiles need (their halos)."""
    return tuple(block[:, :, r0:r1, c0:c1] for r0, r1, c0, c1 in parts)


class _Literal:
    """An argument carried in a task as it is: dask does not look inside it for keys."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _window(pieces, picks, border):
    """A block's input window, copied once from its pieces (whole input blocks, or part ``k``
    of an input block's cuts) into an array that already has the border padding ``border`` =
    (rows before, after, columns before, after, fill) around them -- no second copy for the
    padding.  A window that is one whole input block and needs no padding is that block."""
    pieces = [[p if k is None else p[k] for p, k in zip(row, ks)]
              for row, ks in zip(pieces, picks)]
    hb, ha, wb, wa, fill = border
    if len(pieces) == 1 and len(pieces[0]) == 1 and not (hb or ha or wb or wa):
        return pieces[0][0]
    first = pieces[0][0]
    rows = sum(row[0].shape[2] for row in pieces)
    cols = sum(p.shape[3] for p in pieces[0])
    out = np.empty(first.shape[:2] + (hb + rows + ha, wb + cols + wa), first.dtype)
    for sl in (np.s_[:, :, :hb], np.s_[:, :, hb + rows:], np.s_[:, :, :, :wb],
               np.s_[:, :, :, wb + cols:]):
        out[sl] = fill
    r = hb
    for row in pieces:
        c = wb
        for p in row:
            out[:, :, r:r + p.shape[2], c:c + p.shape[3]] = p
            c += p.shape[3]
        r += row[0].shape[2]
    return out


def _tile(func, pieces, picks, border, plan, *args):
    """Assemble a block's input window, then run ``func(window, plan, *args)`` on it."""
    args = [a.value if isinstance(a, _Literal) else a for a in args]
    return func(_window(pieces, picks, border), plan.value, *args)


def _block_plan(plan: _Plan, i, j, padded) -> _Plan:
    """The part of ``plan`` that output block (i, j) needs, as block (0, 0): a task carries
    a few tuples, not the whole grid's plan."""
    h, w = plan.h, plan.w
    return _Plan(plan.wins,
                 h._replace(out_chunks=(h.out_chunks[i],), windows=(h.windows[i],),
                            steps=(h.steps[i],)),
                 w._replace(out_chunks=(w.out_chunks[j],), windows=(w.windows[j],),
                            steps=(w.steps[j],)), padded)


# A task's arguments travel in the task up to this size; larger ones (a big layer's weights, a
# model) go to the graph once as their own key, which each worker fetches once.
_INLINE_BYTES = 256 << 10


def _ship(obj, inline=True):
    """``obj`` for the graph: itself when it is small and ``inline`` (every task carries a
    copy; no extra key whose transfer a worker waits for before its first task), else one
    graph key holding it, so that a distributed worker receives it once, not once per task."""
    if inline and sizeof(obj) <= _INLINE_BYTES:
        return _Literal(obj)
    return dask.delayed(obj, pure=True, traverse=False)


def _tiled(name, x, plan: _Plan, func, args, out_channels, dtype, pad_first):
    """A dask array with one task per output block of ``plan``: ``func(window, plan, *args)``
    where window is the block's input window (array[n, C, rows, cols]), assembled from the
    input blocks it meets, and plan the block's part of ``plan`` (as its block (0, 0)).  With
    ``pad_first`` the window comes with the border padding of the first windowed op (which
    must be the first thing ``func`` applies).  Of a block that tiles need only in part, one
    task on that block's worker cuts all those parts (the halo strips), so only strips travel
    between workers and the graph has at most one extra task per input block.  Delayed
    objects in ``args`` become graph dependencies (one key each); the other arguments are
    carried in each task as they are."""
    deps = [x] + [a for a in args if isinstance(a, Delayed)]
    args = tuple(a.key if isinstance(a, Delayed) else
                 a if isinstance(a, _Literal) else _Literal(a) for a in args)
    cut = "cut-" + name
    sh = np.cumsum((0,) + x.chunks[2])
    sw = np.cumsum((0,) + x.chunks[3])
    fill = -np.inf if plan.wins[0].kind == "max" else 0
    cuts: dict = {}       # (n, a, b) -> [(r0, r1, c0, c1), ...] parts other tiles need
    layer = {}
    for i, (hlo, hhi) in enumerate(plan.h.windows):
        for j, (wlo, whi) in enumerate(plan.w.windows):
            bplan = _Literal(_block_plan(plan, i, j, pad_first))
            border = ((plan.h.steps[i][0][:2] + plan.w.steps[j][0][:2] + (fill,)) if pad_first
                      else (0, 0, 0, 0, fill))
            for n in range(len(x.chunks[0])):
                pieces, picks = [], []
                for a in _overlapping(sh, hlo, hhi):
                    r0, r1 = int(max(hlo, sh[a]) - sh[a]), int(min(hhi, sh[a + 1]) - sh[a])
                    row, ks = [], []
                    for b in _overlapping(sw, wlo, whi):
                        c0, c1 = int(max(wlo, sw[b]) - sw[b]), int(min(whi, sw[b + 1]) - sw[b])
                        if (r0, r1, c0, c1) == (0, sh[a + 1] - sh[a], 0, sw[b + 1] - sw[b]):
                            row.append((x.name, n, 0, a, b))
                            ks.append(None)
                        else:
                            parts = cuts.setdefault((n, a, b), [])
                            if (r0, r1, c0, c1) not in parts:
                                parts.append((r0, r1, c0, c1))
                            row.append((cut, n, a, b))
                            ks.append(parts.index((r0, r1, c0, c1)))
                    pieces.append(row)
                    picks.append(ks)
                layer[(name, n, 0, i, j)] = (_tile, func, pieces, picks, border, bplan) + args
    for (n, a, b), parts in cuts.items():
        layer[(cut, n, a, b)] = (_cut, (x.name, n, 0, a, b), parts)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    chunks = (x.chunks[0], (out_channels,), plan.h.out_chunks, plan.w.out_chunks)
    return da.Array(graph, name, chunks, meta=_out_meta(dtype))


def _avg_factor(w: _Window, ax, size, a, b, dtype):
    """Per output row in [a, b): k / (the divisor the in-memory call uses)."""
    k, s, p = w.k[ax], w.s[ax], w.pad[ax][0]
    start = np.arange(a, b) * s - p
    end = start + k
    if w.count_include_pad:
        count = np.minimum(end, size + p) - start
    else:
        count = np.minimum(end, size) - np.maximum(start, 0)
    return (k / count).astype(dtype)


def _run_window(be, w: _Window, x, plan: _Plan, j, ih, iw, weight=None, bias=None, groups=1):
    """Windowed op j of ``plan`` on the block (ih, iw): explicit border padding, then the op
    with no padding of its own along cut axes."""
    xp = be.xp
    (hb, ha, h0, h1), (wb, wa, w0, w1) = plan.h.steps[ih][j], plan.w.steps[iw][j]
    if (hb or ha or wb or wa) and not (j == 0 and plan.padded):
        fill = -np.inf if w.kind == "max" else 0
        x = xp.pad(x, ((0, 0), (0, 0), (hb, ha), (wb, wa)), constant_values=fill)
    pad = (w.pad[0][0] if plan.h.native else 0, w.pad[1][0] if plan.w.native else 0)
    if w.kind == "conv":
        return F.conv2d_forward(x, weight, bias, w.s, pad, w.d, groups)
    if w.kind == "max":
        return F.max_pool2d_forward(x, w.k, w.s, pad, w.d, w.ceil_mode)[0]
    y = F.avg_pool2d_forward(x, w.k, w.s, pad, w.ceil_mode, w.count_include_pad)
    for ax, axis, (a, b) in ((0, plan.h, (h0, h1)), (1, plan.w, (w0, w1))):
        if axis.native:
            continue
        f = _avg_factor(w, ax, axis.sizes[j], a, b, y.dtype)
        if (f != 1).any():
            shape = (1, 1, -1, 1) if ax == 0 else (1, 1, 1, -1)
            y *= xp.asarray(f).reshape(shape)
    return y


# ----------------------------------------------------------------------------- op validation
def _numpy_backend():
    return use_backend("numpy")   # the boundary's checks are the same on every backend


def _conv_window(meta, weight, bias, stride, padding, dilation, groups):
    op = "conv2d_forward"
    with _numpy_backend():
        y = F.conv2d_forward(meta, weight, bias, stride, padding, dilation, groups)
        s, pad4, d, _, _ = F._conv_args(op, get_backend(), meta, weight, stride, padding,
                                        dilation, groups)
    return _Window("conv", tuple(weight.shape[2:]), s, d, ((pad4[0], pad4[1]),
                                                           (pad4[2], pad4[3]))), y


def _pool_window(kind, meta, kernel_size, stride, padding, dilation, ceil_mode,
                 count_include_pad=True):
    with _numpy_backend():
        if kind == "max":
            op = "max_pool2d_forward"
            y = F.max_pool2d_forward(meta, kernel_size, stride, padding, dilation, ceil_mode)[0]
        else:
            op = "avg_pool2d_forward"
            y = F.avg_pool2d_forward(meta, kernel_size, stride, padding, ceil_mode,
                                     count_include_pad)
        k, s, p, d, _ = F._pool_args(op, get_backend(), meta, kernel_size, stride, padding,
                                     dilation, ceil_mode)
    return _Window(kind, k, s, d, ((p[0], p[0]), (p[1], p[1])), bool(ceil_mode),
                   bool(count_include_pad)), y


def _dask_input(op, x):
    if not isinstance(x, da.Array):
        raise TypeError(f"convkit.dask.{op}: x must be a dask array, got "
                        f"{type(x).__module__}.{type(x).__name__} (use convkit.{op} for arrays "
                        f"in memory, or dask.array.from_array(x, chunks=...))")
    if x.ndim != 4:
        raise ValueError(f"convkit.dask.{op}: x must be 4-D (N, C, H, W), got shape {x.shape}")
    if any(np.isnan(c) for cs in x.chunks for c in cs):
        raise ValueError(f"convkit.dask.{op}: x has unknown chunk sizes; call "
                         f"x.compute_chunk_sizes() first")
    if len(x.chunks[1]) > 1:     # every window needs all channels
        x = x.rechunk({1: -1})
    return x, np.empty((0,) + tuple(x.shape[1:]), x.dtype)


def _host(op, name, a):
    if a is None:
        return None
    if isinstance(a, da.Array):
        raise TypeError(f"convkit.dask.{op}: {name} must be an array in memory (it is sent to "
                        f"every task), got a dask array; call .compute() on it first")
    return get_backend("numpy").asarray(a)


def _backend_ctx(backend):
    be = get_backend(backend)
    return be, (use_backend(be.name) if backend is not None else contextlib.nullcontext())


def _out_meta(dtype):
    return np.empty((0, 0, 0, 0), dtype)


# ------------------------------------------------------------------------------ the three ops
def _op_block(block, plan, params, backend):
    be, ctx = _backend_ctx(backend)
    with ctx:
        w = plan.wins[0]
        weight, bias, groups = params
        if weight is not None:
            weight, bias = be.asarray(weight), (None if bias is None else be.asarray(bias))
        y = _run_window(be, w, be.asarray(block), plan, 0, 0, 0, weight, bias, groups)
        return be.to_numpy(y)


def _call_block(block, fn, args, backend):
    """Only the batch is chunked: the in-memory op with the caller's arguments."""
    if isinstance(args, _Literal):
        args = args.value
    be, ctx = _backend_ctx(backend)
    with ctx:
        args = [be.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        y = fn(be.asarray(block), *args)
        return be.to_numpy(y[0] if isinstance(y, tuple) else y)


def _windowed(op, x, win, ymeta, fn, call_args, params, backend):
    plan = _plan(x, (win,))
    chunks = (x.chunks[0], (ymeta.shape[1],), plan.h.out_chunks, plan.w.out_chunks)
    name = f"convkit-{op}"
    if plan.h.native and plan.w.native:
        return da.map_blocks(_call_block, x, fn, _ship(call_args), backend, chunks=chunks,
                             meta=_out_meta(ymeta.dtype),
                             name=f"{name}-{dask.base.tokenize(x, call_args, backend)}")
    return _tiled(f"{name}-{dask.base.tokenize(x, plan, params, backend)}", x, plan, _op_block,
                  (_ship(params), backend), ymeta.shape[1], ymeta.dtype, pad_first=True)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                   backend=None):
    """:func:`convkit.conv2d_forward` on a dask array x (array[N, C, H, W], any chunks along N,
    H, W); weight (array[F, C/groups, KH, KW]) and bias (array[F] or None) in memory.  Any
    stride, dilation and padding (int, pair, ``"same"``, ``"valid"``).  Returns a lazy dask
    array (array[N, F, Ho, Wo]); the halo and alignment rules are in the module docstring."""
    op = "conv2d_forward"
    x, meta = _dask_input(op, x)
    weight, bias = _host(op, "weight", weight), _host(op, "bias", bias)
    win, ymeta = _conv_window(meta, weight, bias, stride, padding, dilation, groups)
    return _windowed(op, x, win, ymeta, F.conv2d_forward,
                     (weight, bias, stride, padding, dilation, groups),
                     (weight, bias, groups), backend)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       backend=None):
    """:func:`convkit.max_pool2d_forward` on a dask array x (any chunks along N, H, W); returns
    the pooled values only (array[N, C, Ho, Wo], lazy): the indices of a tile would point into
    the tile, not the image."""
    op = "max_pool2d_forward"
    x, meta = _dask_input(op, x)
    win, ymeta = _pool_window("max", meta, kernel_size, stride, padding, dilation, ceil_mode)
    return _windowed(op, x, win, ymeta, F.max_pool2d_forward,
                     (kernel_size, stride, padding, dilation, ceil_mode), (None, None, 1),
                     backend)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, *, backend=None):
    """:func:`convkit.avg_pool2d_forward` on a dask array x (any chunks along N, H, W); returns
    a lazy dask array (array[N, C, Ho, Wo]) with the in-memory call's divisors."""
    op = "avg_pool2d_forward"
    x, meta = _dask_input(op, x)
    win, ymeta = _pool_window("avg", meta, kernel_size, stride, padding, 1, ceil_mode,
                              count_include_pad)
    return _windowed(op, x, win, ymeta, F.avg_pool2d_forward,
                     (kernel_size, stride, padding, ceil_mode, count_include_pad),
                     (None, None, 1), backend)


# -------------------------------------------------------------------------------- the model
class _SkeletonPickler(cloudpickle.Pickler):
    """Pickles a model's structure without its arrays: params, grads and buffers become
    (shape, dtype) stubs, forward caches become None, the backend and its array module become
    markers the worker fills with its own."""

    def __init__(self, file, model):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._arrays, self._drop, self._xp = {}, set(), set()
        for _, m in model.named_modules():
            for d in (m.params, m.grads, m.buffers):
                for a in d.values():
                    self._arrays[id(a)] = (tuple(a.shape), np.dtype(a.dtype).str)
            if m.__dict__.get("_cache") is not None:
                self._drop.add(id(m._cache))
            self._xp.add(id(m.xp))

    def persistent_id(self, obj):
        i = id(obj)
        if i in self._arrays:
            return ("zeros",) + self._arrays[i]
        if i in self._drop:
            return ("none",)
        if isinstance(obj, Backend):
            return ("backend",)
        if i in self._xp:
            return ("xp",)
        return None


class _SkeletonUnpickler(pickle.Unpickler):
    def __init__(self, file, be):
        super().__init__(file)
        self._be = be

    def persistent_load(self, pid):
        tag = pid[0]
        if tag == "zeros":
            return self._be.xp.zeros(pid[1], np.dtype(pid[2]))
        if tag == "none":
            return None
        if tag == "backend":
            return self._be
        if tag == "xp":
            return self._be.xp
        raise pickle.UnpicklingError(f"unknown convkit model stub {pid!r}")


class _ModelSpec:
    """What a worker needs to rebuild a model: its structure (a pickle of a few KiB without
    arrays) and its state dict.  Shipped once as one graph key; never the model object itself,
    which would carry its last forward's caches."""

    def __init__(self, model: Module):
        buf = io.BytesIO()
        try:
            _SkeletonPickler(buf, model).dump(model)
        except Exception as e:
            raise TypeError(f"convkit.dask.predict: cannot pickle the structure of "
                            f"{type(model).__name__} to rebuild it on workers: {e}") from e
        self.skeleton = buf.getvalue()
        self.state = model.state_dict()
        self.token = dask.base.tokenize(self.skeleton, sorted(self.state.items()))

    def build(self, be: Backend) -> Module:
        with use_backend(be.name):
            model = _SkeletonUnpickler(io.BytesIO(self.skeleton), be).load()
            model.load_state_dict(self.state)
        return model.eval()

    def __dask_tokenize__(self):
        return self.token


_worker_models = threading.local()


def _model_for(spec: _ModelSpec, backend):
    """The model rebuilt once per worker thread (its layers keep forward caches, so threads do
    not share one)."""
    be = get_backend(backend)
    cache = _worker_models.__dict__.setdefault("models", {})
    key = (spec.token, be.name)
    model = cache.get(key)
    if model is None:
        if len(cache) >= 2:
            cache.clear()
        model = cache[key] = spec.build(be)
    return be, model


_POINTWISE = (L.ReLU, L.BatchNorm2d, L.Identity, L.Dropout, L.ToFloat, L.Normalize)


def _overrides_forward(m, cls):
    return type(m).forward is not cls.forward


def _chain(model):
    """The model as a flat list of layers when it is a (nested) Sequential, else [model]."""
    if isinstance(model, Sequential) and not _overrides_forward(model, Sequential):
        return [leaf for layer in model for leaf in _chain(layer)]
    return [model]


def _layer_window(layer, meta):
    """(window or None, output meta) for a spatially local layer; None when it is not one."""
    if isinstance(layer, L.Conv2d) and not _overrides_forward(layer, L.Conv2d):
        L.check_float_input("Conv2d", meta)
        return _conv_window(meta, layer.params["weight"], layer.params.get("bias"),
                            layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, L.MaxPool2d) and not _overrides_forward(layer, L.MaxPool2d):
        L.check_float_input("MaxPool2d", meta)
        return _pool_window("max", meta, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.ceil_mode)
    if isinstance(layer, L.AvgPool2d) and not _overrides_forward(layer, L.AvgPool2d):
        L.check_float_input("AvgPool2d", meta)
        return _pool_window("avg", meta, layer.kernel_size, layer.stride, layer.padding, 1,
                            layer.ceil_mode, layer.count_include_pad)
    if any(isinstance(layer, c) and not _overrides_forward(layer, c) for c in _POINTWISE):
        return "pointwise", layer.forward(meta)
    return None


def _predict_tile(block, plan, spec, stop, backend):
    if isinstance(spec, _Literal):
        spec = spec.value
    be, model = _model_for(spec, backend)
    with use_backend(be.name):
        x = be.asarray(block)
        j = 0
        for layer in _chain(model)[:stop]:
            if isinstance(layer, L.Conv2d):
                x = _run_window(be, plan.wins[j], x, plan, j, 0, 0, layer.params["weight"],
                                layer.params.get("bias"), layer.groups)
                j += 1
            elif isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
                x = _run_window(be, plan.wins[j], x, plan, j, 0, 0)
                j += 1
            else:
                x = layer.forward(x)
        return be.to_numpy(x)


def _predict_rest(block, spec, start, backend):
    if isinstance(spec, _Literal):
        spec = spec.value
    be, model = _model_for(spec, backend)
    with use_backend(be.name):
        x = be.asarray(block)
        layers = _chain(model)[start:] if start else [model]
        for layer in layers:
            x = layer.forward(x)
        return be.to_numpy(x)


def predict(model, x, *, backend=None):
    """``model.forward`` over a dask array x (array[N, C, H, W], any chunks along N, H, W),
    lazily.  The model must be in eval mode (``model.eval()``): in training, batch norm would
    normalise each block with its own statistics and dropout would draw per block.

    The model goes to the workers once, as its state dict plus its structure pickled without
    arrays, and is rebuilt there on the worker's backend (or ``backend``).  The spatially local
    front of the model runs tile by tile with the halos of the module docstring; the rest runs
    per batch block on whole feature maps.  A fully convolutional model therefore works on an
    image larger than memory (a whole slide); a classifier needs each image in memory at its
    first non-local layer.  Returns a dask array; its chunks along N are x's.
    """
    op = "predict"
    if not isinstance(model, Module):
        raise TypeError(f"convkit.dask.predict: model must be a convkit.nn.Module, got "
                        f"{type(model).__module__}.{type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"convkit.dask.predict: the model is in training mode ({len(training)} "
                         f"modules, e.g. {training[0]!r}); call model.eval() first -- in "
                         f"training, batch norm would use each block's own batch statistics "
                         f"and dropout would drop per block")
    x, meta = _dask_input(op, x)
    spec = _ModelSpec(model)
    local = spec.build(get_backend("numpy"))   # for shapes: the caller's model is never run
    layers = _chain(local)
    stop, wins = 0, []
    cut = any(len(c) > 1 for c in x.chunks[2:])
    if cut:
        with _numpy_backend():
            for layer in layers:
                r = _layer_window(layer, meta)
                if r is None:
                    break
                win, meta = r
                if win != "pointwise":
                    wins.append(win)
                stop += 1
    shipped = _ship(spec, inline=False)     # (its arrays are not sized by sizeof)
    token = dask.base.tokenize(spec.token, x, backend)
    if stop:
        plan = _plan(x, wins)
        # the window can carry the first op's border padding when no pointwise layer (a
        # Normalize, say) comes before it: padding is applied to that op's input
        pad_first = isinstance(layers[0], (L.Conv2d, L.MaxPool2d, L.AvgPool2d))
        x = _tiled(f"convkit-predict-tiles-{token}", x, plan, _predict_tile,
                   (shipped, stop, backend), meta.shape[1], meta.dtype, pad_first)
        if stop == len(layers):
            return x
    # the rest of the model on whole feature maps, per batch block
    x = x.rechunk({2: -1, 3: -1})
    with _numpy_backend():
        probe = np.zeros((1,) + tuple(x.shape[1:]), x.dtype)
        for layer in (layers[stop:] if stop else [local]):
            probe = layer.forward(probe)
    if probe.ndim < 1 or probe.shape[0] != 1:
        raise ValueError(f"convkit.dask.predict: the model must return an array with the batch "
                         f"first, got shape {probe.shape} for one image")
    chunks = (x.chunks[0],) + tuple((n,) for n in probe.shape[1:])
    extra = {}
    if probe.ndim < 4:
        extra["drop_axis"] = list(range(probe.ndim, 4))
    elif probe.ndim > 4:
        extra["new_axis"] = list(range(4, probe.ndim))
    return da.map_blocks(_predict_rest, x, shipped, stop, backend, chunks=chunks,
                         meta=np.empty((0,) * probe.ndim, probe.dtype),
                         name=f"convkit-predict-{token}", **extra)


# ----------------------------------------------------------------------------------- workers
# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it takes on 64-bit
# (larger values are refused); blocks above it are always mapped and unmapped per allocation.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20


def _set_mmap_threshold(nbytes: int) -> bool:
    """Serve allocations up to ``nbytes`` from malloc's heap in this process and keep up to
    twice that free at a heap's top (glibc's ``mallopt``: the pair glibc's own dynamic rule
    sets); False where the C library has no mallopt (musl, macOS)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                    2 * nbytes))


class WorkerSetup(_WorkerPluginBase):
    """A ``dask.distributed`` worker plugin: sets each worker's convkit backend and thread
    count, and how its C library allocates blocks, when it starts (and on workers that join
    later)::

        client.register_plugin(convkit.dask.WorkerSetup("cpu", threads=2))

    A client's ``convkit.set_backend`` does not reach worker processes, and distributed's
    nanny starts workers with ``OMP_NUM_THREADS=1``, so without this each worker runs the
    default backend on one thread.  ``backend=None`` / ``threads=None`` leave that setting as
    the worker has it.  A backend that cannot run on a worker fails the registration with the
    worker's RuntimeError.

    ``mmap_threshold`` (bytes, at most 32 MiB; glibc only, a no-op elsewhere): the nanny also
    starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which fixes glibc's threshold for
    giving an allocation its own mapping at 128 KiB and returns any free heap top above
    64 KiB, so every block array (a batch block's output, a tile's window) is fresh memory
    whose pages fault in, zero-filled, on first write and go back to the system when it is
    freed: 516 page faults per 8 MiB conv output, about a tenth of that block's CPU time
    (bench/dask_block_probe.py).  WorkerSetup sets what glibc's own rule would reach with
    blocks of that size: allocations up to ``mmap_threshold`` come from malloc's heap, and up
    to twice that may stay free at a heap's top, so the next block reuses the last one's
    pages.  Memory: per malloc arena (one per thread that allocates, at most), up to
    ``2 * mmap_threshold`` (64 MiB) of freed memory stays resident, plus free space between
    live blocks; dask counts it as unmanaged memory.  ``None`` leaves malloc as the worker
    has it.
    """

    name = "convkit-worker-setup"   # registering another one replaces it
    idempotent = False

    def __init__(self, backend: str | None = None, threads: int | None = None, *,
                 mmap_threshold: int | None = _MMAP_THRESHOLD_MAX):
        if _WorkerPluginBase is object:
            raise ImportError("convkit.dask.WorkerSetup needs distributed: "
                              "pip install 'convkit[dask]'")
        if backend is not None and backend not in known_backends():
            raise ValueError(f"WorkerSetup: unknown backend {backend!r}; known: "
                             f"{known_backends()}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= 4096):
            raise ValueError(f"WorkerSetup: threads must be an int in 1..4096 or None, got "
                             f"{threads!r}")
        if mmap_threshold is not None and (
                isinstance(mmap_threshold, bool) or not isinstance(mmap_threshold, int)
                or not 0 <= mmap_threshold <= _MMAP_THRESHOLD_MAX):
            raise ValueError(f"WorkerSetup: mmap_threshold must be an int in "
                             f"0..{_MMAP_THRESHOLD_MAX} (bytes) or None, got {mmap_threshold!r}")
        self.backend, self.threads, self.mmap_threshold = backend, threads, mmap_threshold

    def setup(self, worker=None):
        import convkit

        if self.backend is not None:
            set_backend(self.backend)
            get_backend()            # load it now: a backend that cannot run fails here
        if self.threads is not None:
            convkit.set_num_threads(self.threads)
        if self.mmap_threshold is not None:
            _set_mmap_threshold(self.mmap_threshold)

    def __repr__(self):
        return (f"WorkerSetup(backend={self.backend!r}, threads={self.threads!r}, "
                f"mmap_threshold={self.mmap_threshold!r})")
