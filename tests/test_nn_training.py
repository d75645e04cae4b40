"""Training-loop pieces: parameter groups and schedules against torch, optimiser state dicts
(interrupt and resume gives the same bits), the batch iterator."""
import numpy as np
import pytest

import convkit
import convkit.nn as nn


# ------------------------------------------------------------------------------ param groups
def _two_part_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 5, dtype=np.float64, seed=0)
            self.head = nn.Linear(5, 3, dtype=np.float64, seed=1)

    return Net()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_param_groups_match_torch(torch, kind):
    with convkit.use_backend("numpy"):
        m = _two_part_model()
    params = {n: p for n, p, _ in m.parameters()}
    grads = {n: g for n, _, g in m.parameters()}
    tp = {n: torch.tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    if kind == "sgd":
        ours = nn.SGD([{"params": m.body, "lr": 0.01, "weight_decay": 0.1},
                       {"params": m.head, "momentum": 0.5, "nesterov": True}],
                      lr=0.1, momentum=0.9)
        theirs = torch.optim.SGD(
            [{"params": [tp["body.weight"], tp["body.bias"]], "lr": 0.01, "weight_decay": 0.1},
             {"params": [tp["head.weight"], tp["head.bias"]], "momentum": 0.5, "nesterov": True}],
            lr=0.1, momentum=0.9)
    else:
        ours = nn.Adam([{"params": m.body, "betas": (0.8, 0.9)},
                        {"params": m.head, "lr": 0.05, "weight_decay": 0.01}], lr=0.01)
        theirs = torch.optim.Adam(
            [{"params": [tp["body.weight"], tp["body.bias"]], "betas": (0.8, 0.9)},
             {"params": [tp["head.weight"], tp["head.bias"]], "lr": 0.05, "weight_decay": 0.01}],
            lr=0.01)
    rng = np.random.default_rng(0)
    for step in range(5):
        for n, g in grads.items():
            g[...] = rng.standard_normal(g.shape)
            tp[n].grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    for n, p in params.items():
        np.testing.assert_allclose(p, tp[n].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=n)
    ours.lr = 0.3
    assert [g["lr"] for g in ours.param_groups] == [0.3, 0.3]


def test_param_group_errors():
    with convkit.use_backend("numpy"):
        m = _two_part_model()
    with pytest.raises(ValueError, match="more than one"):
        nn.SGD([{"params": m}, {"params": m.head}], lr=0.1)
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        nn.SGD([{"params": m, "betas": (0.9, 0.9)}], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        nn.SGD([{"params": m.head, "lr": -1}], lr=0.1)


# ------------------------------------------------------------------------------ schedules
def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return np.array(out)


def _opts(torch, lr=0.1):
    p = [("w", np.zeros(2), np.zeros(2))]
    return nn.SGD(p, lr=lr), torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr)


@pytest.mark.parametrize("name", ["step", "cosine", "warmup", "warmup_cosine"])
def test_schedules_match_torch(torch, name):
    S = torch.optim.lr_scheduler
    ours_opt, t_opt = _opts(torch)
    if name == "step":
        ours, theirs = nn.StepLR(ours_opt, 3, gamma=0.5), S.StepLR(t_opt, 3, gamma=0.5)
    elif name == "cosine":
        ours = nn.CosineAnnealingLR(ours_opt, T_max=10, eta_min=0.001)
        theirs = S.CosineAnnealingLR(t_opt, T_max=10, eta_min=0.001)
    elif name == "warmup":
        ours = nn.LinearWarmup(ours_opt, 4, start_factor=0.25)
        theirs = S.LinearLR(t_opt, start_factor=0.25, end_factor=1.0, total_iters=4)
    else:
        ours = nn.LinearWarmup(ours_opt, 3, start_factor=0.1,
                               after=nn.CosineAnnealingLR(ours_opt, T_max=8))
        theirs = S.SequentialLR(t_opt, [S.LinearLR(t_opt, start_factor=0.1, total_iters=3),
                                        S.CosineAnnealingLR(t_opt, T_max=8)], milestones=[3])
    got = _lrs(ours, ours_opt, 12)
    want = []
    for _ in range(12):
        want.append([g["lr"] for g in t_opt.param_groups])
        t_opt.step()
        theirs.step()
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12, atol=1e-15)


def test_schedule_uses_each_groups_base_lr():
    p = [("a", np.zeros(1), np.zeros(1))]
    q = [("b", np.zeros(1), np.zeros(1))]
    opt = nn.SGD([{"params": p, "lr": 1.0}, {"params": q}], lr=0.1)
    sched = nn.StepLR(opt, 1, gamma=0.5)
    sched.step()
    assert sched.get_last_lr() == [0.5, 0.05]


# ------------------------------------------------------------------------------ resume exactly
def _setup(kind):
    from convkit.models import SmallResNet

    model = SmallResNet(widths=(4, 8), seed=0)
    if kind == "sgd":
        rest = [t for t in model.parameters() if not t[0].startswith("0.")]
        opt = nn.SGD([{"params": model[0], "lr": 0.02}, {"params": rest}], lr=0.05,
                     momentum=0.9, weight_decay=1e-3, nesterov=True)
        sched = nn.StepLR(opt, 4, gamma=0.5)
    else:
        opt = nn.Adam(model, lr=3e-3, weight_decay=1e-4)
        sched = nn.LinearWarmup(opt, 3, after=nn.CosineAnnealingLR(opt, T_max=20))
    return model, opt, sched


def _run(model, opt, sched, loader, epochs, be):
    for _ in range(epochs):
        for xb, yb in loader:
            _, g = nn.softmax_cross_entropy(model.forward(be.asarray(xb)), be.asarray(yb))
            model.zero_grad()
            model.backward(g)
            opt.step()
            sched.step()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_interrupt_and_resume_gives_the_same_bits(tmp_path, kind):
    from convkit.data import digits

    d = digits(seed=0)
    x, y = d.x_train[:120], d.y_train[:120]
    with convkit.use_backend("cpu") as be:
        model, opt, sched = _setup(kind)
        loader = nn.BatchIterator(x, y, batch_size=32, seed=7)
        _run(model, opt, sched, loader, 3, be)
        want = model.state_dict()

        model, opt, sched = _setup(kind)
        loader = nn.BatchIterator(x, y, batch_size=32, seed=7)
        _run(model, opt, sched, loader, 2, be)
        model.save(tmp_path / "model.npz")
        opt.save(tmp_path / "opt.npz")
        saved = (sched.state_dict(), loader.state_dict())
        del model, opt, sched, loader

        model, opt, sched = _setup(kind)                   # a fresh process would do this
        loader = nn.BatchIterator(x, y, batch_size=32, seed=0)
        model.load(tmp_path / "model.npz")
        opt.load(tmp_path / "opt.npz")
        sched.load_state_dict(saved[0])
        loader.load_state_dict(saved[1])
        _run(model, opt, sched, loader, 1, be)
    got = model.state_dict()
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_optimizer_state_dict_contents_and_mismatch():
    with convkit.use_backend("numpy"):
        m = _two_part_model()
        opt = nn.Adam(m, lr=0.01)
        for _, _, g in m.parameters():
            g[...] = 1.0
        opt.step()
        sd = opt.state_dict()
        assert sd["state"][3]["step"] == 1
        np.testing.assert_allclose(sd["state"][3]["exp_avg"], 0.1)
        assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
        assert sd["param_groups"][0]["param_names"][3] == "head.bias"
        sd["state"][3]["exp_avg"][...] = 123          # a copy, not the live buffer
        assert not (opt.state[3]["exp_avg"] == 123).any()
        other = nn.Adam(m.head, lr=0.01)
        with pytest.raises(ValueError, match="groups do not match"):
            other.load_state_dict(sd)


# ------------------------------------------------------------------------------ batches
def test_batch_iterator_shuffle_seed_drop_last():
    x = np.arange(10) * 10
    y = np.arange(10)
    it = nn.BatchIterator(x, y, batch_size=4, seed=3)
    assert len(it) == 3
    e0 = list(it)
    assert [len(b[1]) for b in e0] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in e0])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for bx, by in e0:
        np.testing.assert_array_equal(bx, by * 10)                 # rows stay paired
    e1 = np.concatenate([b[1] for b in it])
    assert list(e1) != list(seen) and it.epoch == 2                 # a new order per epoch
    again = nn.BatchIterator(x, y, batch_size=4, seed=3)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in again]), seen)
    dl = nn.BatchIterator(x, batch_size=4, seed=3, drop_last=True)
    assert len(dl) == 2 and [len(b[0]) for b in dl] == [4, 4]
    plain = nn.BatchIterator(x, batch_size=3, shuffle=False)
    assert [b[0].tolist() for b in plain] == [[0, 10, 20], [30, 40, 50], [60, 70, 80], [90]]
    with pytest.raises(ValueError, match="rows"):
        nn.BatchIterator(x, y[:3], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        nn.BatchIterator(x, batch_size=0)
