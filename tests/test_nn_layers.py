"""The newer layers and losses against torch (ConvTranspose2d, AdaptiveAvgPool2d, LeakyReLU,
Sigmoid, mse_loss), torch state dicts both ways, and init callables."""
import numpy as np
import pytest

import convkit
import convkit.nn as nn

TOL64 = dict(rtol=1e-10, atol=1e-12)


def _fwd_bwd(be, layer, x, gy_seed=3):
    """(y, grad_x, {param: grad}) as NumPy for one forward + backward with a random grad_y."""
    y = layer.forward(be.asarray(x))
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape)
    layer.zero_grad()
    gx = layer.backward(be.asarray(gy))
    grads = {k: be.to_numpy(g).copy() for k, g in layer.grads.items()}
    return be.to_numpy(y), be.to_numpy(gx), grads, gy


def _torch_fwd_bwd(torch, fn, x, params, gy):
    tx = torch.tensor(x, requires_grad=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ty = fn(tx, **tp)
    ty.backward(torch.from_numpy(gy))
    return ty.detach().numpy(), tx.grad.numpy(), {k: t.grad.numpy() for k, t in tp.items()}


CT_CASES = [
    # (C_in, C_out, k, stride, padding, output_padding, groups, dilation, H, W)
    (3, 4, 3, 1, 0, 0, 1, 1, 5, 6),
    (4, 6, 3, 2, 1, 1, 2, 1, 5, 4),
    (2, 3, (3, 2), (2, 3), (1, 0), (1, 2), 1, 1, 4, 5),
    (4, 4, 3, 1, 1, 1, 4, 2, 5, 5),          # output_padding >= stride, < dilation
    (3, 2, 4, 2, 1, 0, 1, (2, 1), 3, 4),
    (2, 2, 1, 3, 0, 2, 1, 1, 3, 3),
]


@pytest.mark.parametrize("case", CT_CASES, ids=[str(i) for i in range(len(CT_CASES))])
def test_conv_transpose2d_matches_torch(torch, backend, case):
    cin, cout, k, s, p, op, g, d, H, W = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, cin, H, W))
    with convkit.use_backend(backend) as be:
        layer = nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op,
                                   groups=g, dilation=d, dtype=np.float64, seed=1)
        layer.params["bias"][...] = be.asarray(rng.standard_normal(cout))
        params = {k_: be.to_numpy(v).copy() for k_, v in layer.params.items()}
        y, gx, grads, gy = _fwd_bwd(be, layer, x)

    def fn(tx, weight, bias):
        return torch.nn.functional.conv_transpose2d(tx, weight, bias, stride=s, padding=p,
                                                    output_padding=op, groups=g, dilation=d)

    ty, tgx, tgrads = _torch_fwd_bwd(torch, fn, x, params, gy)
    assert y.shape == ty.shape == layer.output_shape(x.shape)
    np.testing.assert_allclose(y, ty, **TOL64)
    np.testing.assert_allclose(gx, tgx, **TOL64)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(grads[name], tgrads[name], **TOL64, err_msg=name)


def test_conv_transpose2d_module_layout_and_errors(torch):
    with convkit.use_backend("numpy"):
        ours = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, seed=0)
        assert ours.params["weight"].shape == (4, 3, 3, 3)            # torch's layout
        t = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
        t.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        x = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)
        np.testing.assert_allclose(ours.forward(x), t(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="output_padding"):
            nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
        with pytest.raises(ValueError, match="groups"):
            nn.ConvTranspose2d(3, 2, 3, groups=2)
        with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
            ours.forward(np.zeros((1, 3, 3, 3), np.float32))


@pytest.mark.parametrize("hw,osz", [((7, 5), (3, 2)), ((5, 5), 5), ((6, 9), (4, None)),
                                    ((4, 4), 1), ((3, 2), (5, 4)), ((10, 7), (3, 3))])
def test_adaptive_avg_pool2d_matches_torch(torch, backend, hw, osz):
    x = np.random.default_rng(0).standard_normal((2, 3) + hw)
    with convkit.use_backend(backend) as be:
        y, gx, _, gy = _fwd_bwd(be, nn.AdaptiveAvgPool2d(osz), x)

    def fn(tx):
        return torch.nn.functional.adaptive_avg_pool2d(tx, osz)

    ty, tgx, _ = _torch_fwd_bwd(torch, fn, x, {}, gy)
    assert y.shape == ty.shape
    np.testing.assert_allclose(y, ty, **TOL64)
    np.testing.assert_allclose(gx, tgx, **TOL64)


def test_adaptive_bins_are_torchs():
    from convkit.reference.adaptive_pool import adaptive_bins

    # 7 -> 3: [0, 3), [2, 5), [4, 7) (overlapping, as torch)
    assert [tuple(b) for b in zip(*adaptive_bins(7, 3))] == [(0, 3), (2, 5), (4, 7)]
    assert [tuple(b) for b in zip(*adaptive_bins(2, 4))] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    with pytest.raises(ValueError, match="output_size"):
        nn.AdaptiveAvgPool2d(0)


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5])
def test_leaky_relu_matches_torch(torch, slope):
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf]])
    with convkit.use_backend("numpy") as be:
        y, gx, _, gy = _fwd_bwd(be, nn.LeakyReLU(slope), x)
    ty, tgx, _ = _torch_fwd_bwd(torch, lambda t: torch.nn.functional.leaky_relu(t, slope), x,
                                {}, gy)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(gx, tgx)


def test_sigmoid_matches_torch(torch, backend):
    x = np.array([[-800.0, -30.0, -1.0, 0.0, 0.5, 30.0, 800.0]])
    with convkit.use_backend(backend) as be:
        y, gx, _, gy = _fwd_bwd(be, nn.Sigmoid(), x)
        y32 = be.to_numpy(nn.Sigmoid().forward(be.asarray(x.astype(np.float32))))
    ty, tgx, _ = _torch_fwd_bwd(torch, torch.sigmoid, x, {}, gy)
    np.testing.assert_allclose(y, ty, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(gx, tgx, rtol=1e-12, atol=1e-300)
    assert y32.dtype == np.float32 and np.isfinite(y32).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch(torch, reduction):
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    loss, g = nn.mse_loss(p, t, reduction=reduction)
    tp = torch.tensor(p, requires_grad=True)
    want = torch.nn.functional.mse_loss(tp, torch.from_numpy(t), reduction=reduction)
    want.sum().backward()
    np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-12)
    loss32, g32 = nn.mse_loss(p.astype(np.float32), t.astype(np.float32))
    assert loss32.dtype == np.float32 and g32.dtype == np.float32
    with pytest.raises(ValueError, match="target"):
        nn.mse_loss(p, t[:2])


# ------------------------------------------------------------------------------ torch state dicts
def _pair(torch):
    tnn = torch.nn
    ours = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=0), nn.BatchNorm2d(4),
                         nn.LeakyReLU(0.1), nn.ConvTranspose2d(4, 2, 2, stride=2, seed=1),
                         nn.Sigmoid(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(8, 3, seed=2))
    theirs = tnn.Sequential(tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4),
                            tnn.LeakyReLU(0.1), tnn.ConvTranspose2d(4, 2, 2, stride=2),
                            tnn.Sigmoid(), tnn.AdaptiveAvgPool2d(2), tnn.Flatten(),
                            tnn.Linear(8, 3))
    return ours, theirs


def test_torch_state_dict_loads_strictly_both_ways(torch):
    x = np.random.default_rng(0).standard_normal((3, 1, 5, 5)).astype(np.float32)
    with convkit.use_backend("numpy"):
        ours, theirs = _pair(torch)
        theirs.train()
        for _ in range(3):                       # moves running stats and num_batches_tracked
            theirs(torch.from_numpy(x))
        ours.load_state_dict(theirs.state_dict(), strict=True)       # torch -> convkit
        assert ours[1].buffers["num_batches_tracked"] == 3
        ours.eval(), theirs.eval()
        np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
        ours2, theirs2 = _pair(torch)
        ours2.forward(x)                                                # one training forward
        theirs2.load_state_dict({k: torch.from_numpy(v) for k, v in ours2.state_dict().items()},
                                strict=True)                            # convkit -> torch
        assert int(theirs2[1].num_batches_tracked) == 1
        ours2.eval(), theirs2.eval()
        np.testing.assert_allclose(ours2.forward(x),
                                   theirs2(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
        # an older convkit checkpoint without num_batches_tracked still loads strictly
        old = {k: v for k, v in ours2.state_dict().items() if "num_batches" not in k}
        ours.load_state_dict(old, strict=True)
        with pytest.raises(KeyError, match="1.running_mean"):
            ours.load_state_dict({k: v for k, v in old.items() if k != "1.running_mean"})


# ------------------------------------------------------------------------------ init callables
def test_init_accepts_a_callable():
    seen = []

    def half(shape, rng, dtype):
        seen.append((shape, dtype))
        return np.full(shape, 0.5)

    with convkit.use_backend("numpy"):
        c = nn.Conv2d(2, 3, 3, init=half)
        assert seen == [((3, 2, 3, 3), np.dtype(np.float32))]
        assert c.params["weight"].dtype == np.float32 and (c.params["weight"] == 0.5).all()
        lin = nn.Linear(4, 2, init=lambda s, rng, dt: rng.uniform(-1, 1, s), seed=3,
                        dtype=np.float64)
        np.testing.assert_array_equal(lin.params["weight"],
                                      np.random.default_rng(3).uniform(-1, 1, (2, 4)))
        t = nn.ConvTranspose2d(2, 4, 2, init=nn.init.xavier_uniform, seed=0)
        assert t.params["weight"].shape == (2, 4, 2, 2)
        with pytest.raises(ValueError, match="shape"):
            nn.Linear(4, 2, init=lambda s, rng, dt: np.zeros(3))
        with pytest.raises(ValueError, match="callable"):
            nn.Linear(4, 2, init=42)
