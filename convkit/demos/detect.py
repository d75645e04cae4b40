"""``convkit demo detect``: train a small Faster R-CNN on the synthetic shapes set on the chosen
backend, then report on held-out images: mAP@0.5 (VOC, all-point) and the RPN's recall at IoU
0.7 with its 300 best proposals.  With ``--out DIR`` it writes ``detections.png`` (test images
with the ground truth dashed and the predictions solid, with class names and scores),
``loss.png`` (the loss curves), ``history.json`` and ``weights.npz``.

The model's own output (per-class NMS, as torchvision's Faster R-CNN) is what the mAP measures.
Per-class NMS lets one object keep a box for each class it half-resembles; the picture therefore
applies a class-agnostic NMS on top (``--class-agnostic-nms``, on by default), and the demo
also reports the mAP of what it draws."""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from .. import functional as F
from .._registry import get_backend, use_backend
from ..models.roi_heads import ROI_OPS
from ._common import add_common_arguments, epoch_progress, on_backend

PROG = "convkit demo detect"
AGNOSTIC_IOU = 0.3


def add_arguments(p):
    add_common_arguments(p, seed_help="seeds the data (test set: seed + 10000), the weights and "
                                      "the order",
                         out_help="directory for the PNGs, history and weights")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training images")
    p.add_argument("--images", type=int, default=600, help="training images")
    p.add_argument("--test-images", type=int, default=200, help="held-out images; >= 200 for the "
                                                                 "reported figures")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--width", type=int, default=16, help="backbone width (channels of conv1)")
    p.add_argument("--roi-op", default="align", choices=list(ROI_OPS),
                   help="how proposals are cut out of the feature map")
    p.add_argument("--batch-size", type=int, default=8, help="training images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine decay)")
    p.add_argument("--show", type=int, default=12, help="test images drawn in detections.png")
    p.add_argument("--class-agnostic-nms", action=argparse.BooleanOptionalAction, default=True,
                   help="after the model's per-class NMS, drop every box that overlaps a "
                        "higher-scored box of any class by IoU > --agnostic-iou, so that one "
                        "object carries one label in detections.png (the first mAP figure is "
                        "measured without it)")
    # The shapes' objects overlap little (IoU <= 0.15 between ground-truth boxes of the default
    # test set), so 0.3 removes a second label on one object without touching a neighbour.
    p.add_argument("--agnostic-iou", type=float, default=AGNOSTIC_IOU,
                   help="IoU threshold of the class-agnostic NMS")


def build_model(num_classes, size, width=16, roi_op="align", dtype=np.float32, seed=0):
    """The demo's detector: stride-4 :func:`small_backbone`, 3 anchor sizes spanning the shapes'
    0.2-0.5 x ``size`` objects x 3 aspect ratios, ``roi_op`` (one of ROI_OPS) to 7x7."""
    from ..models import FasterRCNN

    sizes = tuple(round(f * size, 1) for f in (0.22, 0.31, 0.44))
    return FasterRCNN(num_classes, anchor_sizes=sizes, aspect_ratios=(0.5, 1.0, 2.0),
                      roi_op=roi_op, width=width, dtype=dtype, seed=seed,
                      rpn_kwargs=dict(pre_nms_top_n=(600, 1000), post_nms_top_n=(300, 300)),
                      roi_kwargs=dict(representation=128, batch_size_per_image=64))


def _flip(images, boxes, mask, size):
    """Mirror the images where ``mask`` is set (and their boxes)."""
    images = images.copy()
    images[mask] = images[mask][..., ::-1]
    out = []
    for b, m in zip(boxes, mask):
        if m:
            b = b.copy()
            b[:, [0, 2]] = size - b[:, [2, 0]]
        out.append(b)
    return images, out


def evaluate(model, data, batch_size=16, top_n=300):
    """(mAP@0.5, per-class AP, RPN recall {0.5, 0.7} at ``top_n``, detections as NumPy); the
    COCO-style mAP@[.5:.95] is :func:`mean_ap_coco` of the detections."""
    from ..metrics import proposal_recall

    be = model.backend
    was = model.training
    model.eval()
    dets, props = [], []
    for i in range(0, len(data.images), batch_size):
        out = model.forward(data.images[i:i + batch_size])
        dets += [{k: be.to_numpy(v) for k, v in d.items()} for d in out]
        props += [be.to_numpy(b) for b, _ in model.last_proposals]
    model.train(was)
    mAP, ap = mean_ap(dets, data)
    recall = proposal_recall(props, data.boxes, top_n=top_n, iou_thresholds=(0.5, 0.7))
    return mAP, ap, recall, dets


def mean_ap(dets, data, iou_threshold=0.5):
    """(mAP, per-class AP) of NumPy detections ``dets`` against ``data``'s ground truth."""
    from ..metrics import mean_average_precision

    return mean_average_precision([d["boxes"] for d in dets], [d["scores"] for d in dets],
                                  [d["labels"] for d in dets], data.boxes, data.labels,
                                  len(data.class_names), iou_threshold=iou_threshold)


def mean_ap_coco(dets, data):
    """mAP@[.5:.95] (COCO's thresholds, VOC all-point AP at each) of NumPy detections."""
    from ..metrics import mean_average_precision_coco

    return mean_average_precision_coco([d["boxes"] for d in dets], [d["scores"] for d in dets],
                                       [d["labels"] for d in dets], data.boxes, data.labels,
                                       len(data.class_names))[0]


def class_agnostic_nms(det, iou_threshold):
    """One image's detections (NumPy dict of boxes, scores, labels) after an NMS that ignores
    the class: a box overlapping a higher-scored box of any class by IoU > ``iou_threshold`` is
    dropped.  Kept boxes stay in decreasing score order."""
    with use_backend("numpy"):    # a few boxes per image, already on the host
        keep = F.nms(det["boxes"], det["scores"], iou_threshold)
    return {k: v[keep] for k, v in det.items()}


def drawn_detections(det, score_min=0.5, agnostic_iou=AGNOSTIC_IOU):
    """What detections.png draws for one image: the boxes scoring >= ``score_min``, after the
    class-agnostic NMS at ``agnostic_iou`` (None: without it)."""
    keep = np.nonzero(det["scores"] >= score_min)[0]
    det = {k: v[keep] for k, v in det.items()}
    return det if agnostic_iou is None else class_agnostic_nms(det, agnostic_iou)


def train(args, log=print):
    """Train per ``args`` on the active backend; returns (model, history)."""
    from ..data import shapes
    from ..nn import Adam

    if args.epochs < 0 or args.batch_size < 1 or args.images < 1:
        raise ValueError("--epochs must be >= 0, --batch-size and --images >= 1")
    dtype = np.dtype(args.dtype)
    data = shapes(args.images, size=args.size, max_objects=3, seed=args.seed)
    be = get_backend()
    model = build_model(len(data.class_names), args.size, args.width, args.roi_op, dtype,
                        args.seed)
    opt = Adam(model, lr=args.lr)
    log(f"{PROG}: Faster R-CNN ({model.num_parameters()} parameters, {dtype}, "
        f"RoI {args.roi_op}) on backend {be.name!r}; {args.images} training images "
        f"{args.size}x{args.size}; {args.epochs} epochs, batch {args.batch_size}, Adam lr "
        f"{args.lr}")
    rng = np.random.default_rng(args.seed)
    n = args.images
    steps = (n + args.batch_size - 1) // args.batch_size
    hist = {"step_losses": [], "epoch_loss": [], "epoch_time": [], "backend": be.name}
    for epoch in range(args.epochs):
        te = time.perf_counter()
        order = rng.permutation(n)
        bar = epoch_progress(args, steps, epoch, args.epochs, log=log)
        total = 0.0
        for s in range(steps):
            t = (epoch * steps + s) / max(1, args.epochs * steps)
            warm = min(1.0, (epoch * steps + s + 1) / 50)         # short warm-up
            opt.lr = args.lr * warm * 0.5 * (1 + np.cos(np.pi * t))
            idx = order[s * args.batch_size:(s + 1) * args.batch_size]
            imgs, boxes = _flip(data.images[idx], [data.boxes[i] for i in idx],
                                rng.random(len(idx)) < 0.5, args.size)
            losses = model.loss(imgs, boxes, [data.labels[i] for i in idx])
            model.zero_grad()
            model.backward()
            opt.step()
            vals = {k: float(v) for k, v in losses.items()}
            loss = sum(vals.values())
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1} step {s}: "
                                         f"{vals}")
            hist["step_losses"].append(vals)
            total += loss
            bar.update(loss=f"{loss:.4f}")
        bar.close()
        hist["epoch_loss"].append(total / steps)
        hist["epoch_time"].append(time.perf_counter() - te)
        log(f"epoch {epoch + 1}/{args.epochs}: loss {total / steps:.4f} "
            f"({hist['epoch_time'][-1]:.1f} s)")
    return model, hist


_COLOURS = ["#ff3030", "#30ff30", "#30b0ff", "#ffff30", "#ff30ff"]


def detections_figure(data, dets, n, score_min=0.5, agnostic_iou=AGNOSTIC_IOU):
    """The first ``n`` test images with their ground truth (dashed outlines) and the drawn
    detections (:func:`drawn_detections`: solid boxes with class and score), a legend below.
    Returns (matplotlib figure, the drawn detections of each image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = min(n, len(data.images))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    drawn = []
    for ax, img, gt_boxes, gt_labels, d in zip(axes.flat, data.images[:n], data.boxes[:n],
                                               data.labels[:n], dets[:n]):
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        # pixel-edge box coordinates; imshow centres pixel j at j
        for b, lab in zip(gt_boxes, gt_labels):
            ax.add_patch(plt.Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1],
                                       fill=False, edgecolor=_COLOURS[int(lab) % len(_COLOURS)],
                                       linewidth=1.2, linestyle="--"))
        d = drawn_detections(d, score_min, agnostic_iou)
        drawn.append(d)
        for b, s, lab in zip(d["boxes"], d["scores"], d["labels"]):
            c = _COLOURS[int(lab) % len(_COLOURS)]
            ax.add_patch(plt.Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1],
                                       fill=False, edgecolor=c, linewidth=1.5))
            ax.text(b[0] - 0.5, b[1] - 1.5, f"{data.class_names[int(lab)]} {s:.2f}", color="k",
                    fontsize=7, bbox=dict(facecolor=c, alpha=0.8, pad=1, linewidth=0))
    handles = [Line2D([], [], color="k", linestyle="--", label="ground truth"),
               Line2D([], [], color="k", label="prediction (class, score)")]
    handles += [Patch(color=_COLOURS[i % len(_COLOURS)], label=name)
                for i, name in enumerate(data.class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    nms = ("after class-agnostic NMS at IoU " + f"{agnostic_iou:g}" if agnostic_iou is not None
           else "per-class NMS only")
    fig.suptitle(f"convkit Faster R-CNN on held-out shapes: predictions with score >= "
                 f"{score_min:g}, {nms}", fontsize=10)
    fig.tight_layout(rect=(0, 0.6 / (3 * rows + 0.6), 1, 1))
    return fig, drawn


def _plot_detections(path, data, dets, n, score_min=0.5, agnostic_iou=AGNOSTIC_IOU):
    import matplotlib.pyplot as plt

    fig, drawn = detections_figure(data, dets, n, score_min, agnostic_iou)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _plot_losses(path, hist):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = hist["step_losses"]
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    k = max(1, len(steps) // 100)
    kernel = np.ones(k) / k
    for name in steps[0]:
        v = np.array([s[name] for s in steps])
        ax.plot(np.convolve(v, kernel, mode="valid"), label=name, linewidth=1)
    total = np.array([sum(s.values()) for s in steps])
    ax.plot(np.convolve(total, kernel, mode="valid"), label="total", color="k", linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving mean of {k})")
    ax.legend()
    ax.set_title(f"Faster R-CNN training on shapes ({hist['backend']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    from ..data import shapes

    if not 0.0 <= args.agnostic_iou <= 1.0:
        raise ValueError(f"--agnostic-iou must be in [0, 1], got {args.agnostic_iou}")
    with on_backend(args, PROG) as be:
        if be is None:
            return 2
        t0 = time.perf_counter()
        model, hist = train(args)
        train_time = time.perf_counter() - t0
        test = shapes(args.test_images, size=args.size, max_objects=3, seed=args.seed + 10_000)
        t1 = time.perf_counter()
        mAP, ap, recall, dets = evaluate(model, test)
        eval_time = time.perf_counter() - t1
        per_class = ", ".join(f"{c} {a:.3f}" for c, a in zip(test.class_names, ap))
        print(f"test ({args.test_images} held-out images): mAP@0.5 = {mAP:.4f} ({per_class})")
        mAP_coco = mean_ap_coco(dets, test)
        print(f"mAP@[.5:.95] = {mAP_coco:.4f}")
        agnostic_iou = args.agnostic_iou if args.class_agnostic_nms else None
        if agnostic_iou is not None:
            mAP_agnostic = mean_ap([class_agnostic_nms(d, agnostic_iou) for d in dets], test)[0]
            print(f"mAP@0.5 after class-agnostic NMS at IoU {agnostic_iou:g} (as drawn): "
                  f"{mAP_agnostic:.4f}")
        print(f"RPN recall with 300 proposals: @0.5 = {recall[0.5]:.4f}, "
              f"@0.7 = {recall[0.7]:.4f}")
        print(f"backend {be.name!r}: training {train_time:.1f} s, evaluation {eval_time:.1f} s")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            model.save(os.path.join(args.out, "weights.npz"))
            summary = {"mAP@0.5": mAP, "mAP@[.5:.95]": mAP_coco,
                       "AP": dict(zip(test.class_names, ap.tolist())),
                       "mAP@0.5_class_agnostic_nms":
                           None if agnostic_iou is None else mAP_agnostic,
                       "rpn_recall@0.5": recall[0.5], "rpn_recall@0.7": recall[0.7],
                       "train_seconds": train_time, "eval_seconds": eval_time,
                       "args": vars(args)}
            with open(os.path.join(args.out, "history.json"), "w") as f:
                json.dump({"summary": summary, **hist}, f, indent=1, default=str)
            try:
                _plot_detections(os.path.join(args.out, "detections.png"), test, dets, args.show,
                                 agnostic_iou=agnostic_iou)
                _plot_losses(os.path.join(args.out, "loss.png"), hist)
                print(f"wrote {args.out}/detections.png, loss.png, history.json, weights.npz")
            except ImportError:
                print(f"matplotlib is not installed: wrote only {args.out}/history.json and "
                      f"weights.npz")
    return 0
