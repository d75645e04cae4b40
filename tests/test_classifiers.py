"""Classifiers against the same models in torch (same weights, same batches, 5 SGD-momentum
steps), whole-model gradient checks, backend switching, the digits data and accuracy."""
import numpy as np
import pytest

import convkit
import convkit.nn as nn
from convkit.data import digits
from convkit.metrics import accuracy
from convkit.models import LeNet5, SmallResNet, SmallVGG, build_classifier
from helpers import check_backward


# ------------------------------------------------------------------------ torch mirrors
def _torch_lenet5(tnn, num_classes=10, padding=2, fc_in=64):
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=padding), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5, padding=padding), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(fc_in, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
        tnn.Linear(84, num_classes))


def _torch_resnet(torch, widths=(16, 32, 64), num_classes=10):
    tnn = torch.nn

    class Block(tnn.Module):   # attribute names as convkit.nn.ResidualBlock's children
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu1 = tnn.ReLU()
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.shortcut = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                            tnn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else tnn.Sequential())
            self.relu2 = tnn.ReLU()

        def forward(self, x):
            h = self.relu1(self.bn1(self.conv1(x)))
            return self.relu2(self.bn2(self.conv2(h)) + self.shortcut(x))

    layers = [tnn.Conv2d(1, widths[0], 3, padding=1, bias=False), tnn.BatchNorm2d(widths[0]),
              tnn.ReLU()]
    cin = widths[0]
    for i, w in enumerate(widths):
        layers.append(Block(cin, w, 1 if i == 0 else 2))
        cin = w
    layers += [tnn.AvgPool2d(2), tnn.Flatten(), tnn.Linear(cin, num_classes)]
    return tnn.Sequential(*layers)


def _copy_to_torch(torch, model, tmodel, dtype):
    tmodel.to(torch.float64 if dtype == np.float64 else torch.float32)
    sd = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    missing, unexpected = tmodel.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


def _batches(dtype, n_steps, batch=16, seed=0):
    d = digits(seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        idx = rng.choice(len(d.y_train), batch, replace=False)
        yield d.x_train[idx], d.y_train[idx]


TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=2e-5)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("arch", ["lenet5", "resnet"])
def test_training_matches_torch(torch, backend, arch, dtype):
    """Same weights, same batches, 5 SGD steps (momentum, weight decay): same losses, params and
    BN running statistics as torch."""
    with convkit.use_backend(backend) as be:
        if arch == "lenet5":
            model, tmodel = LeNet5(dtype=dtype, seed=0), _torch_lenet5(torch.nn)
        else:
            model, tmodel = SmallResNet(dtype=dtype, seed=0), _torch_resnet(torch)
        _copy_to_torch(torch, model, tmodel, dtype)
        opt = nn.SGD(model, lr=0.05, momentum=0.9, weight_decay=1e-4)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        model.train(), tmodel.train()
        for step, (x, y) in enumerate(_batches(dtype, 5, batch=12)):
            loss, g = nn.softmax_cross_entropy(model.forward(be.asarray(x)), be.asarray(y))
            model.zero_grad()
            model.backward(g)
            opt.step()
            tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)),
                                                      torch.from_numpy(y))
            topt.zero_grad()
            tloss.backward()
            topt.step()
            np.testing.assert_allclose(float(loss), tloss.item(), **TOL[dtype],
                                       err_msg=f"loss at step {step}")
        tsd = tmodel.state_dict()
        for k, v in model.state_dict().items():
            np.testing.assert_allclose(v, tsd[k].numpy(), **TOL[dtype], err_msg=k)
        model.eval(), tmodel.eval()
        x, _ = next(_batches(dtype, 1, seed=1))
        np.testing.assert_allclose(be.to_numpy(model.forward(be.asarray(x))),
                                   tmodel(torch.from_numpy(x)).detach().numpy(), **TOL[dtype])


@pytest.mark.parametrize("name", ["lenet5", "vgg", "resnet"])
def test_whole_model_gradient_float64(name):
    """Directional check through every layer (input gradient via a model whose first conv
    keeps it)."""
    with convkit.use_backend("numpy"):
        model = build_classifier(name, dtype=np.float64, seed=0)
        model[0].needs_input_grad = True
        x = np.random.default_rng(0).random((3, 1, 8, 8))
        y = np.array([1, 5, 7])

        def fwd(x):
            return np.asarray(nn.softmax_cross_entropy(model.forward(x), y, reduction="none")[0])

        def bwd(gy, x):
            model.forward(x)
            _, g = nn.softmax_cross_entropy(model.forward(x), y, reduction="none")
            return (model.backward(g * gy[:, None]),)

        check_backward(fwd, bwd, [x], seed=1, rtol=1e-6)


def test_model_shapes_and_names():
    with convkit.use_backend("numpy"):
        x = np.zeros((2, 1, 8, 8), np.float32)
        for name in ("lenet5", "vgg", "resnet"):
            m = build_classifier(name, num_classes=7)
            assert m.forward(x).shape == (2, 7)
        big = LeNet5(input_size=32, padding=0)
        assert big[7].in_features == 400   # the 1998 layout: 16 * 5 * 5
        assert big.forward(np.zeros((1, 1, 32, 32), np.float32)).shape == (1, 10)
        assert SmallVGG(in_channels=3, input_size=16)[-1].in_features == 64 * 4 * 4
        with pytest.raises(ValueError, match="unknown classifier"):
            build_classifier("alexnet")
        with pytest.raises(ValueError, match="too small"):
            LeNet5(input_size=8, padding=0)


def test_backend_switch_same_trained_weights():
    """numpy vs cpu: same seed, same batches, same trained weights (float64)."""
    results = {}
    for name in ("numpy", "cpu"):
        with convkit.use_backend(name):
            model = SmallResNet(dtype=np.float64, seed=3)
            opt = nn.SGD(model, lr=0.05, momentum=0.9)
            for x, y in _batches(np.float64, 3, seed=2):
                be = model.backend
                _, g = nn.softmax_cross_entropy(model.forward(be.asarray(x)), be.asarray(y))
                model.zero_grad()
                model.backward(g)
                opt.step()
            results[name] = model.state_dict()
    for k, v in results["numpy"].items():
        np.testing.assert_allclose(results["cpu"][k], v, rtol=1e-9, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------------ data and metrics
def test_digits_split():
    d = digits(seed=0, test_fraction=0.25)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == np.float32
    assert len(d.y_train) + len(d.y_test) == 1797
    assert len(d.y_test) == 450    # ceil(0.25 * 1797)
    assert d.y_train.dtype == np.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.x_train.max() == 1.0
    # stratified: every class in the test set in proportion
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47
    again = digits(seed=0, test_fraction=0.25)
    np.testing.assert_array_equal(again.x_test, d.x_test)
    other = digits(seed=1, test_fraction=0.25)
    assert not np.array_equal(other.y_test, d.y_test)
    u = digits(seed=0, as_uint8=True)
    assert u.x_train.dtype == np.uint8 and u.x_train.max() == 255
    np.testing.assert_allclose(u.x_train / 255.0, d.x_train, atol=0.5 / 255 + 1e-7)
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=1.5)


def test_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(logits, np.array([1, 0, 0, 0])) == 0.75
    assert accuracy(np.array([2, 2, 1]), np.array([2, 1, 1])) == pytest.approx(2 / 3)
    assert np.isnan(accuracy(np.zeros((0, 3)), np.zeros(0, np.int64)))
    with pytest.raises(ValueError):
        accuracy(np.zeros((3, 2)), np.zeros(4, np.int64))
