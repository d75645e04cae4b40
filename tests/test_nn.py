"""convkit.nn: per-layer gradient checks (float64), losses and optimisers against torch, state
dicts through .npz, uint8 input, and the rule that a layer runs on the backend active at call
time."""
import numpy as np
import pytest

import convkit
import convkit.nn as nn
from helpers import check_backward, numeric_grad


# ------------------------------------------------------------------------------ helpers
def _layer_fns(layer, be):
    """fwd(x, *params) / bwd(gy, x, *params) over NumPy arrays for check_backward."""
    names = list(layer.params)

    def fwd(x, *ps):
        for n, p in zip(names, ps):
            layer.params[n][...] = be.asarray(p)
        return np.asarray(be.to_numpy(layer.forward(be.asarray(x))))

    def bwd(gy, x, *ps):
        fwd(x, *ps)
        layer.zero_grad()
        gx = layer.backward(be.asarray(gy))
        gx = None if gx is None else np.asarray(be.to_numpy(gx))
        return (gx,) + tuple(np.asarray(be.to_numpy(layer.grads[n])).copy() for n in names)

    params = [np.asarray(be.to_numpy(layer.params[n])).copy() for n in names]
    return fwd, bwd, params


def _perturb_params(layer, be, seed):
    """Random (non-default) parameter values so BN affine and biases are exercised."""
    rng = np.random.default_rng(seed)
    for p in layer.params.values():
        p[...] = be.asarray(rng.standard_normal(p.shape).astype(p.dtype))


def _distinct(shape, seed):
    """Distinct, well separated values (no ties in max pooling, no ReLU kinks near 0)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    v = (rng.permutation(n) - n / 2 + 0.5) * (4.0 / n)
    return v.reshape(shape)


LAYERS = {
    "conv": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=np.float64, seed=0),
    "conv_nobias_dil": lambda: nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False,
                                         dtype=np.float64, seed=1),
    "bn_train": lambda: nn.BatchNorm2d(3, dtype=np.float64),
    "bn_eval": lambda: nn.BatchNorm2d(3, dtype=np.float64).eval(),
    "relu": lambda: nn.ReLU(),
    "maxpool": lambda: nn.MaxPool2d(3, stride=2, padding=1),
    "avgpool": lambda: nn.AvgPool2d(2),
    "flatten": lambda: nn.Flatten(),
    "normalize": lambda: nn.Normalize([0.5, 0.2, -0.1], [2.0, 0.5, 1.5], dtype=np.float64),
    "resblock_id": lambda: nn.ResidualBlock(3, 3, dtype=np.float64, seed=0),
    "resblock_down": lambda: nn.ResidualBlock(3, 5, stride=2, dtype=np.float64, seed=0),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients_float64(backend, name):
    with convkit.use_backend(backend) as be:
        layer = LAYERS[name]()
        cin = 4 if name == "conv_nobias_dil" else 3
        _perturb_params(layer, be, seed=1)
        if name == "bn_eval":
            layer.buffers["running_mean"][...] = be.asarray(np.array([0.1, -0.2, 0.3]))
            layer.buffers["running_var"][...] = be.asarray(np.array([0.5, 2.0, 1.5]))
        x = _distinct((2, cin, 6, 6), seed=2)
        fwd, bwd, params = _layer_fns(layer, be)
        check_backward(fwd, bwd, [x] + params, seed=3, rtol=1e-6)


def test_linear_gradient_per_element():
    with convkit.use_backend("numpy"):
        layer = nn.Linear(5, 3, dtype=np.float64, seed=0)
        layer.params["bias"][...] = [0.1, -0.2, 0.3]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 5))
        gy = rng.standard_normal((4, 3))
        layer.forward(x)
        gx = layer.backward(gy)
        w = layer.params["weight"]
        np.testing.assert_allclose(gx, numeric_grad(lambda a: np.vdot(layer.forward(a), gy),
                                                    x.copy()), rtol=1e-7, atol=1e-9)
        gw = numeric_grad(lambda a: np.vdot(x @ a.T + layer.params["bias"], gy), w.copy())
        np.testing.assert_allclose(layer.grads["weight"], gw, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(layer.grads["bias"], gy.sum(0), rtol=1e-12)


def test_grads_accumulate_and_zero_grad():
    with convkit.use_backend("numpy"):
        layer = nn.Linear(3, 2, dtype=np.float64, seed=0)
        x = np.ones((2, 3))
        gy = np.ones((2, 2))
        layer.forward(x)
        layer.forward(x)                   # two pending calls: two backwards, gradients add
        layer.backward(gy)
        once = layer.grads["weight"].copy()
        layer.backward(gy)
        np.testing.assert_allclose(layer.grads["weight"], 2 * once)
        with pytest.raises(RuntimeError, match="no pending forward"):
            layer.backward(gy)
        layer.zero_grad()
        assert not layer.grads["weight"].any()


def test_first_conv_skips_input_grad():
    with convkit.use_backend("numpy"):
        c = nn.Conv2d(1, 2, 3, needs_input_grad=False, dtype=np.float64, seed=0)
        x = np.random.default_rng(0).standard_normal((2, 1, 5, 5))
        y = c.forward(x)
        assert c.backward(np.ones_like(y)) is None
        assert np.abs(c.grads["weight"]).sum() > 0
        # the weight gradient is the one a full backward gives
        c2 = nn.Conv2d(1, 2, 3, dtype=np.float64, seed=0)
        c2.forward(x)
        c2.backward(np.ones_like(y))
        np.testing.assert_allclose(c.grads["weight"], c2.grads["weight"], rtol=1e-12)


def test_layers_match_torch_modules(torch):
    """Forward values of the layers against torch.nn with the same weights (float64)."""
    tnn = torch.nn
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 7, 7))
    with convkit.use_backend("numpy"):
        pairs = [
            (nn.Conv2d(4, 6, 3, stride=2, padding=1, dtype=np.float64, seed=0),
             tnn.Conv2d(4, 6, 3, stride=2, padding=1).double()),
            (nn.BatchNorm2d(4, dtype=np.float64), tnn.BatchNorm2d(4).double()),
            (nn.MaxPool2d(3, 2, 1), tnn.MaxPool2d(3, 2, 1)),
            (nn.AvgPool2d(3, 2, 1, count_include_pad=False),
             tnn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        ]
        for ours, theirs in pairs:
            _perturb_params(ours, ours.backend, seed=5)
            sd = {k: torch.from_numpy(v) for k, v in ours.state_dict().items()}
            theirs.load_state_dict(sd, strict=False)
            y = ours.forward(x)
            ty = theirs(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12, err_msg=repr(ours))
        # BN running statistics after one training step (unbiased variance, momentum 0.1)
        bn, tbn = pairs[1]
        np.testing.assert_allclose(bn.buffers["running_var"], tbn.running_var.numpy(), rtol=1e-12)
        np.testing.assert_allclose(bn.buffers["running_mean"], tbn.running_mean.numpy(),
                                   rtol=1e-12, atol=1e-15)
        lin = nn.Linear(4 * 7 * 7, 5, dtype=np.float64, seed=0)
        tl = tnn.Linear(4 * 7 * 7, 5).double()
        tl.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
        xf = x.reshape(3, -1)
        np.testing.assert_allclose(lin.forward(xf), tl(torch.from_numpy(xf)).detach().numpy(),
                                   rtol=1e-12)


def test_dropout_seeded_and_inverted():
    with convkit.use_backend("numpy"):
        x = np.ones((1000, 10))
        a, b = nn.Dropout(0.3, seed=7), nn.Dropout(0.3, seed=7)
        ya, yb = a.forward(x), b.forward(x)
        np.testing.assert_array_equal(ya, yb)                # same seed, same mask
        kept = ya != 0
        assert abs(kept.mean() - 0.7) < 0.02
        np.testing.assert_allclose(ya[kept], 1 / 0.7)        # inverted scaling
        gx = a.backward(np.full_like(x, 2.0))
        np.testing.assert_allclose(gx, 2.0 * ya)             # same mask in backward
        a.eval()
        np.testing.assert_array_equal(a.forward(x), x)


def test_init_seeded_kaiming_and_xavier():
    rng = np.random.default_rng
    w1 = nn.Conv2d(16, 32, 3, seed=3).params["weight"]
    w2 = nn.Conv2d(16, 32, 3, seed=3).params["weight"]
    np.testing.assert_array_equal(w1, w2)
    assert w1.dtype == np.float32
    np.testing.assert_allclose(w1.std(), np.sqrt(2.0 / (16 * 9)), rtol=0.05)
    wx = nn.init.xavier_uniform((200, 300), rng(0), np.float64)
    b = np.sqrt(6.0 / 500)
    assert np.abs(wx).max() <= b and np.abs(wx).max() > 0.95 * b
    with pytest.raises(ValueError, match="unknown init"):
        nn.Linear(2, 2, init="bogus")


# ------------------------------------------------------------------------------ uint8 input
def test_uint8_input_raises_and_tofloat_converts():
    img = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    with convkit.use_backend("numpy"):
        for layer in (nn.Conv2d(3, 2, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                      nn.AvgPool2d(2), nn.Normalize([0, 0, 0], [1, 1, 1])):
            with pytest.raises(TypeError, match="ToFloat"):
                layer.forward(img)
        with pytest.raises(TypeError, match="ToFloat"):
            nn.Linear(3, 2).forward(img[:, :, 0, 0])
        model = nn.Sequential(nn.ToFloat(np.float64), nn.Normalize([0.5] * 3, [0.25] * 3,
                                                                   dtype=np.float64))
        y = model.forward(img)
        assert y.dtype == np.float64
        np.testing.assert_allclose(y, (img / 255.0 - 0.5) / 0.25, rtol=1e-12)
        assert model.backward(np.ones_like(y)) is None   # no gradient into integer images


# ------------------------------------------------------------------------- backend at call time
def test_layer_runs_on_backend_active_at_call_time(monkeypatch):
    from convkit.reference import NumpyBackend

    calls = []
    orig = NumpyBackend._conv2d_forward

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(NumpyBackend, "_conv2d_forward", staticmethod(spy))
    with convkit.use_backend("cpu"):
        conv = nn.Conv2d(1, 2, 3, seed=0)
    x = np.ones((1, 1, 5, 5), np.float32)
    with convkit.use_backend("numpy"):       # built under cpu, runs on numpy (host arrays)
        y = conv.forward(x)
    assert calls == [1]
    with convkit.use_backend("cpu"):
        np.testing.assert_allclose(conv.forward(x), y, rtol=1e-6)
    assert calls == [1]
    assert "_override" not in open(nn.module.__file__).read()


# ------------------------------------------------------------------------------ state dict
def test_state_dict_roundtrip_npz(tmp_path):
    with convkit.use_backend("numpy"):
        a = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, seed=0), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 2, seed=1))
        x = np.random.default_rng(0).standard_normal((4, 1, 4, 4)).astype(np.float32)
        a.forward(x)                       # moves the BN running stats off their defaults
        sd = a.state_dict()
        assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                            "1.running_var", "1.num_batches_tracked", "4.weight", "4.bias"]
        assert sd["1.num_batches_tracked"] == 1 and sd["1.num_batches_tracked"].dtype == np.int64
        a.save(tmp_path / "w.npz")
        b = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, seed=5), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 2, seed=6))
        refs = [p for _, p, _ in b.parameters()]
        b.load(tmp_path / "w.npz")
        for k, v in b.state_dict().items():
            np.testing.assert_array_equal(v, sd[k], err_msg=k)
        assert all(p is q for p, (_, q, _) in zip(refs, b.parameters()))   # loaded in place
        a.eval(), b.eval()
        np.testing.assert_array_equal(a.forward(x), b.forward(x))
        bad = dict(sd)
        del bad["4.bias"]
        with pytest.raises(KeyError, match="4.bias"):
            b.load_state_dict(bad)
        bad = dict(sd, **{"4.bias": np.zeros(3)})
        with pytest.raises(ValueError, match="4.bias"):
            b.load_state_dict(bad)


def test_parameters_names_and_train_eval():
    with convkit.use_backend("numpy"):
        blk = nn.ResidualBlock(2, 4, stride=2, seed=0)
        names = [n for n, _, _ in blk.parameters()]
        assert names == ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight",
                         "bn2.bias", "shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias"]
        blk.eval()
        assert not any(m.training for _, m in blk.named_modules())
        blk.train()
        assert all(m.training for _, m in blk.named_modules())


# ------------------------------------------------------------------------------ losses
def _t(torch, a, grad=True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_cross_entropy_vs_torch(torch, reduction):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)) * 3
    logits[0, 2] = 80.0   # stability: a huge logit
    labels = np.array([2, 0, 4, 1, -100, 3])
    loss, g = nn.softmax_cross_entropy(logits, labels, reduction=reduction)
    tl = _t(torch, logits)
    want = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels), reduction=reduction)
    want.sum().backward()
    np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g, tl.grad.numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="labels"):
        nn.softmax_cross_entropy(logits, np.array([0, 1, 2, 3, 4, 5]))
    with pytest.raises(TypeError, match="integer"):
        nn.softmax_cross_entropy(logits, labels.astype(np.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_vs_torch(torch, reduction):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 7)) * 5
    x[0, :3] = [-200.0, 200.0, 0.0]
    t = rng.random((4, 7))
    t[1] = (t[1] > 0.5)
    w = rng.random((4, 7))
    for weight in (None, w):
        loss, g = nn.binary_cross_entropy_with_logits(x, t, weight=weight, reduction=reduction)
        tx = _t(torch, x)
        want = torch.nn.functional.binary_cross_entropy_with_logits(
            tx, torch.from_numpy(t), weight=None if weight is None else torch.from_numpy(weight),
            reduction=reduction)
        want.sum().backward()
        assert np.all(np.isfinite(loss))
        np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta", [0.0, 1.0 / 9, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_l1_vs_torch(torch, beta, reduction):
    rng = np.random.default_rng(2)
    p = rng.standard_normal((5, 4))
    t = p + rng.standard_normal((5, 4)) * np.array([0.01, 0.1, 1.0, 3.0])
    loss, g = nn.smooth_l1_loss(p, t, beta=beta, reduction=reduction)
    tp = _t(torch, p)
    want = torch.nn.functional.smooth_l1_loss(tp, torch.from_numpy(t), beta=beta,
                                              reduction=reduction)
    want.sum().backward()
    np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
def test_focal_loss_vs_torch(torch, alpha, gamma):
    """Against torchvision.ops.sigmoid_focal_loss's formula written in torch + autograd."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5)) * 3
    t = (rng.random((6, 5)) > 0.7).astype(np.float64)
    loss, g = nn.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="sum")
    tx = _t(torch, x)
    tt = torch.from_numpy(t)
    p = torch.sigmoid(tx)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(tx, tt, reduction="none")
    p_t = p * tt + (1 - p) * (1 - tt)
    want = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        want = (alpha * tt + (1 - alpha) * (1 - tt)) * want
    want = want.sum()
    want.backward()
    np.testing.assert_allclose(loss, want.item(), rtol=1e-12)
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_losses_numeric_gradient_and_float32():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4))
    t = rng.random((3, 4))
    for fn in (lambda a: nn.sigmoid_focal_loss(a, t, reduction="mean"),
               lambda a: nn.smooth_l1_loss(a, t, beta=0.5),
               lambda a: nn.binary_cross_entropy_with_logits(a, t)):
        _, g = fn(x)
        np.testing.assert_allclose(g, numeric_grad(lambda a: float(fn(a)[0]), x.copy()),
                                   rtol=1e-6, atol=1e-9)
    loss, g = nn.softmax_cross_entropy(x.astype(np.float32), np.array([0, 3, 1]))
    assert g.dtype == np.float32 and loss.dtype == np.float32


# ------------------------------------------------------------------------------ optimisers
OPT_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-3)),
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
]


@pytest.mark.parametrize("kind,kw", OPT_CASES, ids=lambda v: str(v))
def test_optimiser_steps_vs_torch(torch, kind, kw):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,)]
    ps = [rng.standard_normal(s) for s in shapes]
    gs = [np.zeros(s) for s in shapes]
    triples = [(f"p{i}", p, g) for i, (p, g) in enumerate(zip(ps, gs))]
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    ours = (nn.SGD if kind == "sgd" else nn.Adam)(triples, **kw)
    theirs = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(tps, **kw)
    for step in range(6):
        for g, tp in zip(gs, tps):
            g[...] = rng.standard_normal(g.shape)
            tp.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        for p, tp in zip(ps, tps):
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=f"step {step}")


def test_optimiser_bad_arguments():
    p = [("w", np.zeros(2), np.zeros(2))]
    with pytest.raises(ValueError, match="Nesterov"):
        nn.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        nn.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        nn.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        nn.Adam([])


def test_module_base_class_errors():
    class NoForward(nn.Module):
        pass

    class NoInit(nn.Module):
        def __init__(self):
            self.conv = nn.Conv2d(1, 1, 1)

    with pytest.raises(TypeError, match="forward"):
        NoForward().forward(np.zeros(1))
    with pytest.raises(TypeError, match="backward"):
        NoForward().backward(np.zeros(1))
    with pytest.raises(AttributeError, match="super"):
        NoInit()
    with pytest.raises(TypeError, match="Module"):
        nn.Sequential(nn.ReLU(), "relu")


def test_relu_values_nan_and_kink(torch):
    x = np.array([[-1.5, 0.0, 2.0, np.nan, -0.0, 1e-30]])
    with convkit.use_backend("numpy"):
        r = nn.ReLU()
        y = r.forward(x)
        g = r.backward(np.full_like(x, 3.0))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.full_like(tx, 3.0))
    np.testing.assert_array_equal(y, ty.detach().numpy())      # NaN propagates, 0 at the kink
    np.testing.assert_array_equal(g, tx.grad.numpy())          # gradient 0 at x = 0
