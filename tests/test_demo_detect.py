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


# ------------------------------------------------------------------------- what the picture draws
def _iou(a, b):
    """IoU of two xyxy boxes (plain-Python oracle)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _max_cross_class_iou(d):
    """The largest IoU between two detections of different classes (0 with fewer than two)."""
    n = len(d["labels"])
    return max([_iou(d["boxes"][i], d["boxes"][j]) for i in range(n) for j in range(i + 1, n)
                if d["labels"][i] != d["labels"][j]], default=0.0)


def _det(rows):
    boxes, scores, labels = zip(*rows)
    return {"boxes": np.array(boxes, np.float32), "scores": np.array(scores, np.float32),
            "labels": np.array(labels, np.int64)}


# one object seen as class 0 (0.9) and as class 1 (0.8); a second object, class 2; a duplicate of
# the first box in class 0; a far box under the score cut
OVERLAPPING = _det([([10, 10, 30, 30], 0.9, 0), ([11, 11, 31, 31], 0.8, 1),
                    ([40, 40, 60, 60], 0.7, 2), ([10, 10, 30, 30.5], 0.6, 0),
                    ([0, 40, 8, 48], 0.3, 1)])


def test_class_agnostic_nms_leaves_one_label_per_object():
    from convkit.demos.detect import drawn_detections

    plain = drawn_detections(OVERLAPPING, score_min=0.5, agnostic_iou=None)
    assert plain["labels"].tolist() == [0, 1, 2, 0]                 # score cut only
    assert _max_cross_class_iou(plain) > 0.8                        # two labels on one object
    d = drawn_detections(OVERLAPPING, score_min=0.5, agnostic_iou=0.5)
    assert d["labels"].tolist() == [0, 2] and d["scores"].tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_array_equal(d["boxes"], OVERLAPPING["boxes"][[0, 2]])
    assert _max_cross_class_iou(d) <= 0.5
    # a looser threshold keeps what overlaps less than it: IoU(A, B) = 0.82
    loose = drawn_detections(OVERLAPPING, score_min=0.5, agnostic_iou=0.9)
    assert loose["labels"].tolist() == [0, 1, 2]


def test_no_two_drawn_detections_of_different_classes_overlap_on_model_output():
    import convkit
    from convkit.data import shapes
    from convkit.demos.detect import build_model, drawn_detections, evaluate

    data = shapes(6, size=32, max_objects=3, seed=3)
    with convkit.use_backend("numpy"):
        model = build_model(len(data.class_names), 32, width=4, seed=0)
        dets = evaluate(model, data)[3]
    n_boxes = 0
    for det in dets:                  # an untrained model: many low-scored boxes of every class
        d = drawn_detections(det, score_min=0.0, agnostic_iou=0.5)
        n_boxes += len(d["labels"])
        assert _max_cross_class_iou(d) <= 0.5
        assert np.all(np.diff(d["scores"]) <= 0)
    assert n_boxes > 0


def test_detections_figure_draws_ground_truth_beside_predictions():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from convkit.data import shapes
    from convkit.demos.detect import detections_figure

    data = shapes(3, size=64, max_objects=3, seed=1)
    dets = [OVERLAPPING, _det([([5, 5, 20, 20], 0.95, 1)]), _det([([5, 5, 20, 20], 0.2, 1)])]
    fig, drawn = detections_figure(data, dets, n=3, score_min=0.5, agnostic_iou=0.5)
    try:
        assert [d["labels"].tolist() for d in drawn] == [[0, 2], [1], []]
        for ax, gt, d in zip(fig.axes, data.boxes, drawn):
            rects = [p for p in ax.patches if isinstance(p, plt.Rectangle)]
            dashed = [p for p in rects if p.get_linestyle() == "--"]
            solid = [p for p in rects if p.get_linestyle() in ("-", "solid")]
            assert len(dashed) == len(gt) and len(solid) == len(d["labels"])
            for p, b in zip(dashed, gt):      # the ground truth boxes, at their pixel edges
                assert p.get_xy() == pytest.approx((b[0] - 0.5, b[1] - 0.5))
                assert (p.get_width(), p.get_height()) == pytest.approx((b[2] - b[0], b[3] - b[1]))
            labels = [t.get_text() for t in ax.texts]
            assert labels == [f"{data.class_names[int(k)]} {s:.2f}"
                              for k, s in zip(d["labels"], d["scores"])]
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend == ["ground truth", "prediction (class, score)", *data.class_names]
    finally:
        plt.close(fig)


def test_class_agnostic_nms_option_and_its_check(tmp_path, capsys):
    args = ["demo", "detect", "--backend", "numpy", "--epochs", "0", "--images", "2",
            "--test-images", "2", "--size", "32", "--width", "4", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "mAP@0.5 after class-agnostic NMS at IoU 0.3 (as drawn): " in text
    s = json.loads((tmp_path / "a" / "history.json").read_text())["summary"]
    assert 0 <= s["mAP@0.5_class_agnostic_nms"] <= 1
    assert main(args + ["--no-class-agnostic-nms", "--out", str(tmp_path / "b")]) == 0
    assert "class-agnostic" not in capsys.readouterr().out
    s = json.loads((tmp_path / "b" / "history.json").read_text())["summary"]
    assert s["mAP@0.5_class_agnostic_nms"] is None
    with pytest.raises(ValueError, match="--agnostic-iou"):
        main(args + ["--agnostic-iou", "1.5"])
