"""`convkit demo detect` end to end at toy size: it trains, evaluates, prints the figures and
writes the PNGs, history and weights."""
import json
import os

import numpy as np
import pytest

from convkit.cli import main


def test_demo_detect_runs_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "det"
    rc = main(["demo", "detect", "--backend", "numpy", "--epochs", "1", "--images", "8",
               "--test-images", "4", "--size", "32", "--width", "4", "--batch-size", "4",
               "--show", "4", "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mAP@0.5 =" in text and "RPN recall with 300 proposals" in text
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["step_losses"]) == 2 and set(hist["step_losses"][0]) == {
        "rpn_objectness", "rpn_box", "roi_classifier", "roi_box"}
    s = hist["summary"]
    assert 0 <= s["mAP@0.5"] <= 1 and 0 <= s["rpn_recall@0.7"] <= s["rpn_recall@0.5"] <= 1
    with np.load(out / "weights.npz") as w:
        assert "backbone.0.weight" in w.files and "rpn.head.cls_logits.weight" in w.files
    pytest.importorskip("matplotlib")
    for name in ("detections.png", "loss.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(out / name) > 1000


def test_demo_detect_rejects_bad_arguments():
    with pytest.raises(ValueError, match="--epochs"):
        main(["demo", "detect", "--backend", "numpy", "--epochs", "-1", "--no-progress"])


def test_demo_detect_plain_progress_without_tqdm(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)          # `import tqdm` raises ImportError
    rc = main(["demo", "detect", "--backend", "numpy", "--epochs", "1", "--images", "4",
               "--test-images", "2", "--size", "32", "--width", "4", "--batch-size", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "epoch 1/1 step 1/2: loss" in text and "epoch 1/1 step 2/2: loss" in text
