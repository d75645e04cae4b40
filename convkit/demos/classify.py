"""``convkit demo classify``: train LeNet5 / a small VGG / a small ResNet on scikit-learn's digits
on the chosen backend, print the test accuracy and the time; optionally save the weights, the
per-step history and a loss/accuracy plot."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from .._registry import get_backend
from ._common import add_common_arguments, epoch_progress, on_backend

PROG = "convkit demo classify"

# Per model: SGD settings that reach >= 97% test accuracy on the digits.  LeNet5's were chosen by
# a 5-seed sweep on the numpy backend (seeds 0-4): 15 epochs with weight decay 5e-3 gave
# 97.3-98.9% (mean 98.1%); 12 epochs with 5e-4 gave 96.0-98.4%; lr 0.1 or 1-px random shifts
# were worse.
DEFAULTS = {
    "lenet5": dict(lr=0.05, epochs=15, weight_decay=5e-3),
    "vgg": dict(lr=0.05, epochs=6, weight_decay=5e-4),
    "resnet": dict(lr=0.05, epochs=6, weight_decay=5e-4),
}


def add_arguments(p):
    add_common_arguments(p, seed_help="seeds the split, the weights and the order",
                         out_help="directory for weights.npz, history.json and curves.png")
    p.add_argument("--model", default="lenet5", choices=sorted(DEFAULTS),
                   help="LeNet5, a small VGG or a small ResNet")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: 15 (lenet5), 6 (vgg, resnet)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch")
    p.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate, cosine decay over the run (default 0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: 5e-3 (lenet5), 5e-4 (vgg, resnet)")
    p.add_argument("--shift", type=int, default=0,
                   help="augmentation: random translation of each training image by up to this "
                        "many pixels (0: none)")
    p.add_argument("--test-fraction", type=float, default=0.25,
                   help="share of the digits held out for the test accuracy")
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on only the first N training images (quick runs)")


def random_shift(x, max_shift, rng):
    """Translate each image of x (N, C, H, W) by a random (dy, dx) in [-max_shift, max_shift],
    filling with zeros (the digits' background)."""
    if max_shift <= 0:
        return x
    N, C, H, W = x.shape
    s = max_shift
    padded = np.zeros((N, C, H + 2 * s, W + 2 * s), x.dtype)
    padded[:, :, s:s + H, s:s + W] = x
    dy = rng.integers(0, 2 * s + 1, N)
    dx = rng.integers(0, 2 * s + 1, N)
    rows = (dy[:, None] + np.arange(H))[:, None, :, None]      # (N, 1, H, 1)
    cols = (dx[:, None] + np.arange(W))[:, None, None, :]      # (N, 1, 1, W)
    return padded[np.arange(N)[:, None, None, None], np.arange(C)[None, :, None, None], rows, cols]


def evaluate(model, x, y, batch_size=256) -> float:
    """Test accuracy of ``model`` (eval mode) on NumPy arrays x, y."""
    from ..metrics import accuracy

    be = model.backend
    was = model.training
    model.eval()
    preds = []
    for i in range(0, len(y), batch_size):
        logits = model.forward(be.asarray(x[i:i + batch_size]))
        preds.append(be.to_numpy(logits).argmax(axis=1))
    model.train(was)
    return accuracy(np.concatenate(preds), y)


def train(args, log=print) -> dict:
    """Train per ``args`` (the parsed demo arguments) on the active backend; returns the history
    (per-step losses, per-epoch loss/accuracy/time) and the model."""
    from ..data import digits
    from ..models import build_classifier
    from ..nn import SGD, softmax_cross_entropy

    cfg = DEFAULTS[args.model]
    epochs = cfg["epochs"] if args.epochs is None else args.epochs
    lr = cfg["lr"] if args.lr is None else args.lr
    wd = cfg["weight_decay"] if args.weight_decay is None else args.weight_decay
    if epochs < 0 or args.batch_size < 1:
        raise ValueError("--epochs must be >= 0 and --batch-size >= 1")
    if args.train_subset is not None and args.train_subset < 1:
        raise ValueError("--train-subset must be >= 1")
    dtype = np.dtype(args.dtype)
    data = digits(seed=args.seed, test_fraction=args.test_fraction, dtype=dtype)
    xtr, ytr = data.x_train, data.y_train
    if args.train_subset is not None:
        xtr, ytr = xtr[:args.train_subset], ytr[:args.train_subset]
    be = get_backend()
    model = build_classifier(args.model, dtype=dtype, seed=args.seed)
    opt = SGD(model, lr=lr, momentum=args.momentum, weight_decay=wd)
    log(f"{PROG}: {args.model} ({model.num_parameters()} parameters, {dtype}) on "
        f"backend {be.name!r}; {len(ytr)} train / {len(data.y_test)} test digits; "
        f"{epochs} epochs, batch {args.batch_size}, SGD lr {lr} momentum {args.momentum} "
        f"weight decay {wd}, "
        f"random shifts up to {args.shift} px")
    rng = np.random.default_rng(args.seed)
    n = len(ytr)
    steps = (n + args.batch_size - 1) // args.batch_size
    hist = {"step_loss": [], "epoch_loss": [], "test_acc": [], "epoch_time": [],
            "model": args.model, "backend": be.name}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        te = time.perf_counter()
        order = rng.permutation(n)
        bar = epoch_progress(args, steps, epoch, epochs)
        total = 0.0
        for s in range(steps):
            # cosine decay of the learning rate over the whole run
            opt.lr = lr * 0.5 * (1 + np.cos(np.pi * (epoch * steps + s) / max(1, epochs * steps)))
            idx = order[s * args.batch_size:(s + 1) * args.batch_size]
            xb = random_shift(xtr[idx], args.shift, rng)
            logits = model.forward(be.asarray(xb))
            loss, g = softmax_cross_entropy(logits, be.asarray(ytr[idx]))
            model.zero_grad()
            model.backward(g)
            opt.step()
            v = float(loss)
            hist["step_loss"].append(v)
            total += v * len(idx)
            bar.update(loss=f"{v:.4f}")
        bar.close()
        acc = evaluate(model, data.x_test, data.y_test)
        hist["epoch_loss"].append(total / n)
        hist["test_acc"].append(acc)
        hist["epoch_time"].append(time.perf_counter() - te)
        log(f"epoch {epoch + 1:3d}  loss {total / n:.4f}  test accuracy {acc:.4f}  "
            f"({hist['epoch_time'][-1]:.2f} s)")
    hist["train_time"] = time.perf_counter() - t0
    hist["final_test_acc"] = evaluate(model, data.x_test, data.y_test)
    return {"history": hist, "model": model}


def _plot(hist, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(hist["step_loss"], lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    b.plot(range(1, len(hist["test_acc"]) + 1), hist["test_acc"], marker="o")
    b.set_xlabel("epoch")
    b.set_ylabel("test accuracy")
    fig.suptitle(f"{hist['model']} on digits ({hist['backend']} backend)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run(args) -> int:
    with on_backend(args, PROG) as be:
        if be is None:
            return 2
        res = train(args)
    hist, model = res["history"], res["model"]
    print(f"final test accuracy: {hist['final_test_acc']:.4f}  "
          f"training time: {hist['train_time']:.2f} s  (backend {hist['backend']})")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        model.save(os.path.join(args.out, "weights.npz"))
        with open(os.path.join(args.out, "history.json"), "w") as f:
            json.dump(hist, f, indent=1)
        plotted = _plot(hist, os.path.join(args.out, "curves.png"))
        print(f"wrote {args.out}/weights.npz, history.json"
              + (", curves.png" if plotted else " (no plot: matplotlib is not installed)"))
    return 0
