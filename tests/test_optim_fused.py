"""The cpu backend's fused SGD update (csrc/sgd.h via Backend._sgd_update) against the Backend
default (numpy's operators, what nn.SGD ran before): the same bits for every option, both float
types, non-finite values and signed zeros; the cases it declines fall back to the default; and
nn.SGD on the cpu backend trains to the numpy backend's bits and follows torch.optim.SGD."""
import itertools

import numpy as np
import pytest

import convkit
import convkit.nn as nn
from convkit.backend import Backend

OPTIONS = [  # lr, momentum, dampening, weight_decay, nesterov
    (0.1, 0.0, 0.0, 0.0, False),
    (0.01, 0.9, 0.0, 0.0, False),
    (0.05, 0.9, 0.3, 1e-2, False),
    (0.05, 0.8, 0.0, 5e-3, True),
    (0.3, 0.0, 0.0, 1e-4, False),
    (0.01, 0.9, -0.5, 0.0, False),          # a negative dampening adds 1.5 d (torch checks none)
    (0.01, 0.9, 0.0, 1e-50, False),         # wd rounds to 0.0f: still adds 0 * p (NaN at inf)
    (1e-50, 1e-50, 0.0, 0.0, True),         # lr and momentum round to 0.0f
]


def _arrays(rng, dtype, special):
    shapes = [(6, 5, 3, 3), (6,), (7, 9), ()]
    ps = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    gs = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    if special:
        for a in ps + gs:
            f = a.reshape(-1)
            k = min(f.size, 6)
            f[:k] = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45], dtype)[:k]
            rng.shuffle(f)
    return ps, gs


def _run(update, ps, gs, steps, rng, opts):
    ps = [p.copy() for p in ps]
    bufs = [None] * len(ps)
    for _ in range(steps):
        update(ps, [np.asarray(g * rng.standard_normal()) for g in gs], bufs, *opts)
    return ps, bufs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=str)
@pytest.mark.parametrize("special", [False, True])
def test_fused_sgd_same_bits_as_default(dtype, opts, special):
    from convkit.cpu import _optim

    def fused(*a):
        assert _optim.sgd_step(*a) is True     # the kernel took them: no fallback

    ref = convkit.get_backend("numpy")
    ps, gs = _arrays(np.random.default_rng(1), dtype, special)
    with np.errstate(all="ignore"):
        got = _run(fused, ps, gs, 4, np.random.default_rng(2), opts)
        want = _run(lambda *a: Backend._sgd_update(ref, *a), ps, gs, 4,
                    np.random.default_rng(2), opts)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


def test_fused_sgd_declines_to_the_default():
    """Arrays the kernel does not take run the default's operators: the same results."""
    from convkit.cpu import _optim

    rng = np.random.default_rng(3)
    p = rng.standard_normal((4, 6)).astype(np.float32)
    g = rng.standard_normal((4, 6)).astype(np.float32)
    opts = (0.1, 0.9, 0.0, 1e-3, False)
    base = np.zeros((4, 12), np.float32)
    cases = {
        "non-contiguous param": ([base[:, ::2]], [g], [None]),
        "float16": ([p.astype(np.float16)], [g.astype(np.float16)], [None]),
        "mixed types": ([p.astype(np.float64)], [g], [None]),
        "shape mismatch": ([p], [g.reshape(6, 4)], [None]),
        "buffer is the grad": ([p.copy()], [g], [g]),
        "partial overlap": ([base.reshape(-1)[:24]], [base.reshape(-1)[4:28]], [None]),
        "lr overflows float32": ([p.copy()], [g], [None]),
        "list lengths": ([p.copy(), p.copy()], [g], [None]),
    }
    for name, (ps, gs, bufs) in cases.items():
        o = (1e300,) + opts[1:] if name == "lr overflows float32" else opts
        assert _optim.sgd_step(list(ps), list(gs), list(bufs), *o) is False, name
    # the backend method still updates (through the default) and matches numpy's operators
    for ps_gs in (([base[:, ::2]], [g]), ([p.astype(np.float16)], [g.astype(np.float16)])):
        a = [x.copy() for x in ps_gs[0]]
        b = [x.copy() for x in ps_gs[0]]
        ba, bb = [None], [None]
        convkit.get_backend("cpu")._sgd_update(a, ps_gs[1], ba, *opts)
        Backend._sgd_update(convkit.get_backend("numpy"), b, ps_gs[1], bb, *opts)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(ba[0], bb[0])
    # a read-only parameter is refused by the kernel and raises in numpy's in-place update
    ro = p.copy()
    ro.flags.writeable = False
    assert _optim.sgd_step([ro], [g], [None], *opts) is False
    with pytest.raises(ValueError):
        convkit.get_backend("cpu")._sgd_update([ro], [g], [None], *opts)


def test_fused_sgd_grad_is_param():
    """A gradient that is the parameter's own memory reads each element before writing it,
    as numpy's temporaries do."""
    rng = np.random.default_rng(4)
    for opts in itertools.product((0.1,), (0.0, 0.9), (0.0,), (0.0, 0.1), (False,)):
        p1 = rng.standard_normal(10).astype(np.float32)
        p2 = p1.copy()
        b1, b2 = [None], [None]
        for _ in range(3):
            convkit.get_backend("cpu")._sgd_update([p1], [p1], b1, *opts)
            Backend._sgd_update(convkit.get_backend("numpy"), [p2], [p2], b2, *opts)
        np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.9, weight_decay=5e-4,
                                                         nesterov=True), dict()], ids=str)
def test_sgd_training_cpu_equals_numpy_and_follows_torch(torch, kw):
    """LeNet5 trained on the cpu backend with the fused update: its parameters and momentum
    buffers after 5 steps have the bits of the same updates by numpy's operators (the model's
    gradients copied in), and they follow torch.optim.SGD fed the same gradients."""
    from convkit.models import build_classifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    with convkit.use_backend("cpu"):
        m = build_classifier("lenet5", dtype=np.float32, seed=0)
        opt = nn.SGD(m, lr=0.05, **kw)
        shadow = [(n, p.copy(), np.zeros_like(g)) for n, p, g in m.parameters()]
        ref = nn.SGD(shadow, lr=0.05, **kw)
        tps = [torch.tensor(p.copy(), requires_grad=True) for _, p, _ in shadow]
        topt = torch.optim.SGD(tps, lr=0.05, **kw)
        for _ in range(5):
            _, g = nn.softmax_cross_entropy(m.forward(x), y)
            m.zero_grad()
            m.backward(g)
            for (_, _, sg), (_, _, mg), tp in zip(shadow, m.parameters(), tps):
                sg[...] = mg
                tp.grad = torch.from_numpy(mg.copy())
            opt.step()
            with convkit.use_backend("numpy"):
                ref.step()
            topt.step()
    for (n, p, _), (_, sp, _), tp in zip(m.parameters(), shadow, tps):
        np.testing.assert_array_equal(p, sp, err_msg=n)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=n)
    for i, st in opt.state.items():
        if "momentum_buffer" in st:
            np.testing.assert_array_equal(st["momentum_buffer"],
                                          ref.state[i]["momentum_buffer"])


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_sgd_zero_dim_parameter_follows_torch(torch, backend):
    """A 0-d parameter with momentum and weight decay: its momentum buffer stays an array
    updated in place (the numpy path kept the first step's scalar before: g + wd * p of 0-d
    arrays is a scalar, and its copy was stored)."""
    p, g = np.array(1.5), np.array(0.0)
    tp = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=0.1)
    with convkit.use_backend(backend):
        opt = nn.SGD([("s", p, g)], **kw)
        topt = torch.optim.SGD([tp], **kw)
        for k in range(4):
            g[...] = 0.5 - k
            tp.grad = torch.tensor(0.5 - k, dtype=torch.float64)
            opt.step()
            topt.step()
            np.testing.assert_allclose(p, tp.item(), rtol=1e-14)
    assert isinstance(opt.state[0]["momentum_buffer"], np.ndarray)
