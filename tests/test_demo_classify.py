"""A tiny in-process run of ``convkit demo classify``: the loss falls, the outputs are written and
the saved weights reproduce the reported accuracy."""
import json

import numpy as np
import pytest

from convkit.cli import main

pytest.importorskip("sklearn")


def test_demo_classify_tiny_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["demo", "classify", "--backend", "numpy", "--model", "lenet5", "--epochs", "1",
               "--train-subset", "960", "--batch-size", "16", "--seed", "0", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "final test accuracy:" in text and "training time:" in text
    hist = json.loads((out / "history.json").read_text())
    losses = np.array(hist["step_loss"])
    assert len(losses) == 60                                   # 960 / 16 steps
    assert losses[-5:].mean() < 0.5 * losses[:5].mean()       # the loss falls
    assert hist["final_test_acc"] > 0.6                        # far above chance (0.1)
    reported = float(text.split("final test accuracy:")[1].split()[0])
    assert reported == pytest.approx(hist["final_test_acc"], abs=1e-4)

    # the saved weights give the same accuracy in a fresh model
    import convkit
    from convkit.data import digits
    from convkit.demos.classify import evaluate
    from convkit.models import LeNet5

    with convkit.use_backend("numpy"):
        m = LeNet5(seed=123)
        m.load(out / "weights.npz")
        d = digits(seed=0)
        assert evaluate(m, d.x_test, d.y_test) == pytest.approx(hist["final_test_acc"])
    pytest.importorskip("matplotlib")
    assert (out / "curves.png").stat().st_size > 1000


def test_demo_classify_rejects_bad_args():
    with pytest.raises(SystemExit):
        main(["demo", "classify", "--model", "alexnet"])
    with pytest.raises(ValueError, match="batch-size"):
        main(["demo", "classify", "--backend", "numpy", "--batch-size", "0", "--no-progress"])
    with pytest.raises(ValueError, match="train-subset"):
        main(["demo", "classify", "--backend", "numpy", "--train-subset", "0", "--no-progress"])


def test_random_shift_translates_each_image():
    from convkit.demos.classify import random_shift

    x = np.zeros((200, 2, 5, 5), np.float32)
    x[:, 0, 2, 2] = 1.0
    x[:, 1, 0, 0] = 2.0            # a corner pixel falls off for some shifts
    y = random_shift(x, 1, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    seen = set()
    for img_in, img in zip(x, y):
        (r,), (c,) = np.nonzero(img[0])
        dy, dx = r - 2, c - 2
        assert abs(dy) <= 1 and abs(dx) <= 1
        seen.add((dy, dx))
        np.testing.assert_array_equal(img[0], np.roll(img_in[0], (dy, dx), axis=(0, 1)))
        # the other channel moves by the same shift; pixels moved outside are dropped
        want = np.zeros((5, 5), np.float32)
        if dy >= 0 and dx >= 0:
            want[dy, dx] = 2.0
        np.testing.assert_array_equal(img[1], want)
    assert len(seen) == 9
    assert random_shift(x, 0, np.random.default_rng(0)) is x
