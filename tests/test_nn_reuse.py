"""convkit.nn model semantics: shared layers against torch autograd, caches (LIFO, no_grad,
RuntimeError), containers and registration, freezing, backends at call time, to/astype,
pickling."""
import pickle

import numpy as np
import pytest

import convkit
import convkit.nn as nn


# ------------------------------------------------------------------------------ shared layers
class SharedNet(nn.Module):
    """One Conv2d, one BatchNorm2d, one ReLU and one Linear, each called twice per step."""

    def __init__(self, dtype, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.conv = nn.Conv2d(3, 3, 3, padding=1, dtype=dtype, seed=rng)
        self.bn = nn.BatchNorm2d(3, dtype=dtype)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3 * 5 * 5, 3 * 5 * 5, dtype=dtype, seed=rng)
        self.head = nn.Linear(3 * 5 * 5, 4, dtype=dtype, seed=rng)

    def forward(self, x):
        h = self.relu(self.bn(self.conv(x)))
        h = self.relu(self.bn(self.conv(h)))
        f = self.relu(self.fc(self.flat(h)))
        return self.head(self.fc(f))

    def backward(self, g):
        g = self.fc.backward(self.head.backward(g))         # the second fc call first
        g = self.flat.backward(self.fc.backward(self.relu.backward(g)))
        g = self.conv.backward(self.bn.backward(self.relu.backward(g)))
        return self.conv.backward(self.bn.backward(self.relu.backward(g)))


def _torch_shared(torch):
    tnn = torch.nn

    class T(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(3, 3, 3, padding=1)
            self.bn = tnn.BatchNorm2d(3)
            self.fc = tnn.Linear(75, 75)
            self.head = tnn.Linear(75, 4)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            h = torch.relu(self.bn(self.conv(h)))
            f = torch.relu(self.fc(h.flatten(1)))
            return self.head(self.fc(f))

    return T()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_shared_layers_match_torch_autograd(torch, backend, dtype):
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    y = np.array([0, 3, 1, 2])
    with convkit.use_backend(backend) as be:
        model = SharedNet(dtype)
        for _, p, _ in model.parameters():          # non-default BN affine and biases
            p[...] = be.asarray(rng.standard_normal(p.shape).astype(dtype) * 0.5)
        tmodel = _torch_shared(torch).to(torch.float64 if dtype == np.float64 else torch.float32)
        tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()},
                               strict=True)
        model.zero_grad()
        for step in range(2):                      # gradients of two steps accumulate
            loss, g = nn.softmax_cross_entropy(model.forward(be.asarray(x)), be.asarray(y))
            gx = be.to_numpy(model.backward(g))
        tx = torch.tensor(x, requires_grad=True)
        for step in range(2):
            tx.grad = None
            tloss = torch.nn.functional.cross_entropy(tmodel(tx), torch.from_numpy(y))
            tloss.backward()
        np.testing.assert_allclose(float(loss), tloss.item(), **tol)
        np.testing.assert_allclose(gx, tx.grad.numpy(), **tol)
        tparams = dict(tmodel.named_parameters())
        for name, _, grad in model.parameters():
            np.testing.assert_allclose(be.to_numpy(grad), tparams[name].grad.numpy(), **tol,
                                       err_msg=name)
        tsd = tmodel.state_dict()
        for k, v in model.state_dict().items():     # running stats after 4 BN calls
            np.testing.assert_allclose(v, tsd[k].numpy(), **tol, err_msg=k)
        assert model.state_dict()["bn.num_batches_tracked"] == 4
        assert all(not m._caches for m in model.modules())    # every cache consumed


def test_backward_without_pending_forward_raises():
    with convkit.use_backend("numpy"):
        layers = [nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 1, 3), nn.BatchNorm2d(2), nn.ReLU(),
                  nn.LeakyReLU(), nn.Sigmoid(), nn.MaxPool2d(2), nn.AvgPool2d(2),
                  nn.AdaptiveAvgPool2d(1), nn.Linear(2, 2), nn.Flatten(), nn.Dropout(0.5)]
        for layer in layers:
            with pytest.raises(RuntimeError, match="no pending forward"):
                layer.backward(np.zeros((1, 2, 4, 4), np.float32))
        lin = nn.Linear(2, 2, dtype=np.float64)
        x = np.ones((1, 2))
        lin.forward(x)
        lin.backward(np.ones((1, 2)))
        with pytest.raises(RuntimeError, match="Linear.backward: no pending forward"):
            lin.backward(np.ones((1, 2)))


def test_caches_are_last_in_first_out():
    with convkit.use_backend("numpy"):
        lin = nn.Linear(2, 1, bias=False, dtype=np.float64, seed=0)
        a, b = np.array([[1.0, 2.0]]), np.array([[10.0, 20.0]])
        lin.forward(a)
        lin.forward(b)
        lin.backward(np.ones((1, 1)))               # consumes b's cache
        np.testing.assert_array_equal(lin.grads["weight"], b)
        lin.backward(np.ones((1, 1)))               # then a's
        np.testing.assert_array_equal(lin.grads["weight"], a + b)


def test_no_grad_and_mode_switch_drop_caches():
    with convkit.use_backend("numpy"):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(2 * 4 * 4, 3))
        x = np.ones((2, 1, 4, 4), np.float32)
        with nn.no_grad():
            for _ in range(5):
                model.forward(x)
        assert all(not m._caches for m in model.modules())
        with pytest.raises(RuntimeError, match="no_grad"):
            model.backward(np.ones((2, 3), np.float32))
        model.forward(x)
        model.forward(x)
        assert len(model[0]._caches) == 2
        model.eval()                                  # a mode switch ends the pending step
        assert all(not m._caches for m in model.modules())
        model.forward(x)
        model.clear_caches()
        assert all(not m._caches for m in model.modules())


# ------------------------------------------------------------------------------ containers
class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1, seed=0)
        self.blocks = [nn.Conv2d(2, 2, 3, padding=1, seed=i) for i in range(2)]
        self.heads = {"a": nn.Linear(2, 3, seed=5), "b": nn.Linear(2, 1, seed=6)}
        self.mlist = nn.ModuleList([nn.BatchNorm2d(2)])
        self.mdict = nn.ModuleDict({"x": nn.Linear(3, 3, seed=7)})
        self._private = [nn.Linear(1, 1)]               # underscore names are not registered


def test_plain_lists_dicts_and_containers_are_registered(torch):
    with convkit.use_backend("numpy"):
        m = Plain()
        m.blocks.append(nn.Conv2d(2, 2, 1, bias=False, seed=9))   # appended later: counts
        names = [n for n, _, _ in m.parameters()]
        assert names == ["stem.weight", "stem.bias", "blocks.0.weight", "blocks.0.bias",
                         "blocks.1.weight", "blocks.1.bias", "blocks.2.weight", "heads.a.weight",
                         "heads.a.bias", "heads.b.weight", "heads.b.bias", "mlist.0.weight",
                         "mlist.0.bias", "mdict.x.weight", "mdict.x.bias"]
        opt = nn.SGD(m, lr=0.1)
        assert len(opt.params) == len(names)
        assert "blocks.2" in repr(m) and "_private" not in repr(m)
        sd = m.state_dict()
    tnn = torch.nn

    class T(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Conv2d(1, 2, 3, padding=1)
            self.blocks = tnn.ModuleList([tnn.Conv2d(2, 2, 3, padding=1) for _ in range(2)]
                                         + [tnn.Conv2d(2, 2, 1, bias=False)])
            self.heads = tnn.ModuleDict({"a": tnn.Linear(2, 3), "b": tnn.Linear(2, 1)})
            self.mlist = tnn.ModuleList([tnn.BatchNorm2d(2)])
            self.mdict = tnn.ModuleDict({"x": tnn.Linear(3, 3)})

    T().load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)


def test_module_list_and_dict_api():
    with convkit.use_backend("numpy"):
        ml = nn.ModuleList([nn.ReLU(), nn.Flatten()])
        ml.append(nn.Linear(2, 2))
        ml.insert(0, nn.Identity())
        assert [type(m).__name__ for m in ml] == ["Identity", "ReLU", "Flatten", "Linear"]
        assert [n for n, _ in ml.named_children()] == ["0", "1", "2", "3"]
        assert len(ml[1:]) == 3 and isinstance(ml[1:], nn.ModuleList)
        with pytest.raises(TypeError, match="Module"):
            ml.append("relu")
        md = nn.ModuleDict()
        md["enc"] = nn.Linear(2, 2)
        assert "enc" in md and list(md.keys()) == ["enc"] and len(md) == 1
        with pytest.raises(KeyError, match="'.'"):
            md["a.b"] = nn.ReLU()
        with pytest.raises(TypeError, match="Module"):
            md["x"] = 3


def test_shared_module_counts_once():
    with convkit.use_backend("numpy"):
        lin = nn.Linear(3, 3, seed=0)
        model = nn.Sequential(lin, nn.ReLU(), lin)
        assert [n for n, _, _ in model.parameters()] == ["0.weight", "0.bias"]
        x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
        opt = nn.SGD(model, lr=0.1)
        w0 = lin.params["weight"].copy()
        model.zero_grad()
        model.backward(np.ones((2, 3), np.float32) * 0 + model.forward(x))
        opt.step()                                         # updated once, not twice
        np.testing.assert_allclose(lin.params["weight"], w0 - 0.1 * lin.grads["weight"],
                                   rtol=1e-6)


# ------------------------------------------------------------------------------ freezing
def test_freeze_backbone_then_unfreeze():
    with convkit.use_backend("numpy"):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, seed=0),
                                              nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten())
                self.head = nn.Linear(2 * 4 * 4, 3, seed=1)

            def forward(self, x):
                return self.head(self.backbone(x))

            def backward(self, g):
                return self.backbone.backward(self.head.backward(g))

        net = Net()
        opt = nn.SGD(net, lr=0.1, momentum=0.9, weight_decay=1e-2)
        net.backbone.freeze()
        assert [n for n, _, _ in net.parameters(trainable=True)] == ["head.weight", "head.bias"]
        assert len(list(net.parameters(trainable=False))) == 4
        assert net.num_parameters(trainable=True) == 2 * 16 * 3 + 3
        x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
        y = np.array([0, 1, 2])
        before = net.state_dict()

        def step():
            _, g = nn.softmax_cross_entropy(net.forward(x), y)
            net.zero_grad()
            net.backward(g)
            opt.step()

        step()
        after = net.state_dict()
        for k in ("backbone.0.weight", "backbone.0.bias", "backbone.1.weight"):
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)   # frozen: untouched
            assert not net.backbone[0].grads["weight"].any()                 # no gradient added
        assert not np.array_equal(after["head.weight"], before["head.weight"])
        net.backbone.unfreeze()
        step()
        w0 = before["backbone.0.weight"]
        assert not np.array_equal(net.state_dict()["backbone.0.weight"], w0)
        # an optimiser over the trainable parameters only
        net.backbone.freeze()
        assert len(nn.Adam(net.parameters(trainable=True)).params) == 2


# ------------------------------------------------------------------------------ backends
class _Foreign:
    """Stands for an array of a device backend (a CuPy array on a machine without one)."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype, self.ndim, self.size = a.shape, a.dtype, a.ndim, a.size
        self.__cuda_array_interface__ = {}

    def get(self):
        return self._a.copy()


def test_foreign_parameters_raise_type_error_naming_layer_and_fix():
    with convkit.use_backend("numpy"):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, seed=0), nn.ReLU())
        x = np.ones((1, 1, 5, 5), np.float32)
        want = model.forward(x)
        w = model[0].params["weight"]
        model[0].params["weight"] = _Foreign(w)
        with pytest.raises(TypeError, match=r"Conv2d\(1, 2.*'weight'.*model\.to\('numpy'\)"):
            model.forward(x)
        model.to("numpy")                                    # brings it back to host memory
        assert isinstance(model[0].params["weight"], np.ndarray)
        np.testing.assert_array_equal(model.forward(x), want)


def test_to_another_backend_and_back(backend):
    """numpy <-> cpu share host arrays (nothing moves); a device backend needs to()."""
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with convkit.use_backend("numpy"):
        from convkit.models import SmallResNet
        model = SmallResNet(seed=0).eval()
        want = model.forward(x)
        w = model[0].params["weight"]
    with convkit.use_backend(backend) as be:
        if not be.is_native(w):
            with pytest.raises(TypeError, match=f"model.to\\('{backend}'\\)"):
                model.forward(be.asarray(x))
        assert model.to(backend) is model
        if be.is_native(w):
            assert model[0].params["weight"] is w             # no copy between host backends
        got = be.to_numpy(model.forward(be.asarray(x)))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    model.to("numpy")
    assert isinstance(model[0].params["weight"], np.ndarray)


def test_astype_converts_whole_model():
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    with convkit.use_backend("numpy"):
        from convkit.models import SmallVGG
        m32 = SmallVGG(seed=0).eval()
        m64 = SmallVGG(seed=1, dtype=np.float64).eval()
        m64.load_state_dict(m32.state_dict())               # the float32 weights, widened
        m32.astype(np.float64)
        assert all(p.dtype == np.float64 and g.dtype == np.float64
                   for _, p, g in m32.parameters())
        assert m32[1].buffers["num_batches_tracked"].dtype == np.int64
        np.testing.assert_array_equal(m32.forward(x), m64.forward(x))
        with pytest.raises(TypeError, match="float32 or float64"):
            m32.astype(np.int32)
        m = nn.Sequential(nn.ToFloat(), nn.Normalize([0.5], [0.25])).astype(np.float64)
        assert m.forward(np.full((1, 1, 2, 2), 255, np.uint8)).dtype == np.float64


# ------------------------------------------------------------------------------ pickling
def test_pickled_model_has_no_caches():
    from convkit.data import digits
    from convkit.models import LeNet5

    d = digits(seed=0)
    x = np.ascontiguousarray(np.resize(d.x_train, (8192, 1, 8, 8)))
    with convkit.use_backend("cpu"):
        model = LeNet5(seed=0)
        logits = model.forward(x)                            # training mode: caches kept
        model.forward(x[:100])
        sd_bytes = sum(v.nbytes for v in model.state_dict().values())
        blob = pickle.dumps(model)
        # params, their gradients and buffers: about twice the state dict, not the activations
        assert len(blob) < 2.5 * sd_bytes + 20_000, (len(blob), sd_bytes)
        assert b"Backend" not in blob and b"_registry" not in blob   # no backend objects
        assert len(model[0]._caches) == 2                    # the live model keeps them
        clone = pickle.loads(blob)
        assert not clone[0]._caches
        clone.eval(), model.eval()
        np.testing.assert_array_equal(clone.forward(x[:50]), model.forward(x[:50]))
        assert logits.shape == (8192, 10)


def test_pickled_detector_has_no_caches_or_proposals():
    from convkit.data import shapes
    from convkit.models import FasterRCNN

    d = shapes(16, size=32, max_objects=2, seed=0)
    with convkit.use_backend("numpy"):
        m = FasterRCNN(3, anchor_sizes=(8, 12, 16), width=4, seed=0,
                       roi_kwargs=dict(representation=16, output_size=3))
        m.loss(d.images, d.boxes, d.labels)                  # pending caches everywhere
        m.eval()
        m.forward(d.images)                                  # proposals kept for inspection
        assert m.last_proposals is not None
        m.train()
        m.loss(d.images, d.boxes, d.labels)
        sd_bytes = sum(v.nbytes for v in m.state_dict().values())
        blob = pickle.dumps(m)
        assert len(blob) < 2.5 * sd_bytes + 50_000, (len(blob), sd_bytes)
        clone = pickle.loads(blob)
        assert clone.last_proposals is None
        m.eval(), clone.eval()
        a, b = m.forward(d.images[:2]), clone.forward(d.images[:2])
        for da, db in zip(a, b):
            np.testing.assert_array_equal(da["boxes"], db["boxes"])
