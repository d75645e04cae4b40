"""Detector pieces: anchors, anchor targets, metrics, the RPN and RoI heads (gradient checks),
and a tiny end-to-end Faster R-CNN training run."""
import numpy as np
import pytest

import convkit
from convkit.data import shapes
from convkit.nn import Adam
from convkit.nn import no_grad as nn_no_grad
from convkit.metrics import (average_precision_per_class, mean_average_precision,
                             mean_average_precision_coco,
                             proposal_recall, voc_ap)
from convkit.models import (AnchorGenerator, FasterRCNN, RegionProposalNetwork, RoIHeads,
                            assign_anchor_targets, fast_rcnn_loss, flatten_rpn_outputs,
                            rpn_loss, sample_labels, unflatten_rpn_grads)
from helpers import check_backward


# ------------------------------------------------------------------------------------ anchors
def test_anchor_generator_layout_by_hand():
    gen = AnchorGenerator(sizes=(8, 16), aspect_ratios=(0.5, 1.0), stride=8)
    assert gen.num_anchors == 4
    a = gen.grid_anchors((1, 2), dtype=np.float64)
    s = np.sqrt(2.0)
    # cell (0, 0) centred (4, 4); per cell: size 8 ratio 0.5, size 8 ratio 1, size 16 ...
    w, h = 8 * s, 8 / s                      # ratio = h / w = 0.5, area 64
    want0 = [[4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2], [0, 0, 8, 8],
             [4 - 2 * w / 2, 4 - 2 * h / 2, 4 + 2 * w / 2, 4 + 2 * h / 2], [-4, -4, 12, 12]]
    want = np.array(want0 + [[x1 + 8, y1, x2 + 8, y2] for x1, y1, x2, y2 in want0])
    np.testing.assert_allclose(a, want, rtol=0, atol=1e-12)
    assert gen.grid_anchors((3, 5)).shape == (3 * 5 * 4, 4)
    assert AnchorGenerator().num_anchors == 9


def test_anchor_targets_on_hand_built_image(backend):
    # a 16x16 image, stride 8 -> 2x2 cells, sizes 8 and 16, square anchors:
    #   a0 [0,0,8,8]  a1 [-4,-4,12,12]  a2 [8,0,16,8]  a3 [4,-4,20,12]
    #   a4 [0,8,8,16] a5 [-4,4,12,20]   a6 [8,8,16,16] a7 [4,4,20,20]
    gen = AnchorGenerator(sizes=(8, 16), aspect_ratios=(1.0,), stride=8)
    anchors = gen.grid_anchors((2, 2), dtype=np.float64)
    np.testing.assert_array_equal(anchors, [[0, 0, 8, 8], [-4, -4, 12, 12], [8, 0, 16, 8],
                                            [4, -4, 20, 12], [0, 8, 8, 16], [-4, 4, 12, 20],
                                            [8, 8, 16, 16], [4, 4, 20, 20]])
    gt = np.array([[0, 0, 8, 8], [7, 7, 16, 16], [0, 10, 11, 16]], np.float64)
    # IoU by hand (rows a0..a7, columns g0 g1 g2):
    #   a0 1      1/144   0        -> 1.0   >= 0.7         positive (g0)
    #   a1 64/256 25/312  22/300   -> 0.25  < 0.3          negative
    #   a2 0      8/137   0        -> 0.058                negative
    #   a3 32/288 45/292  14/308   -> 0.154                negative
    #   a4 0      8/137   48/82    -> 0.585 best for g2    positive (g2) by the best-anchor rule
    #   a5 32/288 45/292  66/256   -> 0.258                negative
    #   a6 0      64/81   18/112   -> 0.790 >= 0.7         positive (g1)
    #   a7 16/304 81/256  42/280   -> 0.316 in [0.3, 0.7)  ignored
    with convkit.use_backend(backend):
        labels, matched = assign_anchor_targets(anchors, gt)
    np.testing.assert_array_equal(labels, [1, 0, 0, 0, 1, 0, 1, -1])
    np.testing.assert_array_equal(matched, [0, 0, 1, 1, 2, 2, 1, 1])
    with convkit.use_backend(backend):
        labels0, matched0 = assign_anchor_targets(anchors, np.zeros((0, 4)))
    np.testing.assert_array_equal(labels0, np.zeros(8))
    np.testing.assert_array_equal(matched0, np.full(8, -1))


def test_anchor_targets_tied_best_anchors_are_all_positive():
    anchors = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 30, 30]], np.float64)
    gt = np.array([[5, 0, 15, 10]], np.float64)   # IoU 1/3 with a0 and a1, 1/9 with a2
    iou = np.array([[1 / 3], [1 / 3], [1 / 9]])
    labels, _ = assign_anchor_targets(anchors, gt, iou=iou)
    np.testing.assert_array_equal(labels, [1, 1, 0])


def test_sampler_caps_positives_and_is_seeded():
    labels = np.array([1] * 10 + [0] * 20 + [-1] * 5)
    s1 = sample_labels(labels, batch_size=8, positive_fraction=0.5, rng=np.random.default_rng(3))
    s2 = sample_labels(labels, batch_size=8, positive_fraction=0.5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(s1, s2)
    assert (s1 == 1).sum() == 4 and (s1 == 0).sum() == 4 and (s1 == -1).sum() == 27
    assert set(np.nonzero(s1 == 1)[0]) <= set(range(10))
    assert set(np.nonzero(s1 == 0)[0]) <= set(range(10, 30))
    # few positives: negatives fill the batch
    few = np.array([1, 0, 0, 0, 0, 0, -1])
    s = sample_labels(few, batch_size=4, positive_fraction=0.5, rng=np.random.default_rng(0))
    assert (s == 1).sum() == 1 and (s == 0).sum() == 3


# ------------------------------------------------------------------------------------ metrics
def test_coco_map_hand_made():
    # one class, two gt boxes; detections: IoU 1.0 (score .9) and [20, 20, 30, 27.2] on
    # [20, 20, 30, 30] (score .8): IoU 72/100 = 0.72.  At thresholds .50-.70 both are
    # TP (AP 1); at .75-.95 the second is a FP: P/R 1/(1/2), 1/2(1/2) -> AP 1/2.
    # mAP@[.5:.95] = (5 * 1 + 5 * 0.5) / 10 = 0.75
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float64)]
    pred = [np.array([[0, 0, 10, 10], [20, 20, 30, 27.2]], np.float64)]
    m, per = mean_average_precision_coco(pred, [np.array([0.9, 0.8])], [np.array([0, 0])], gt,
                                         [np.array([0, 0])], 1)
    np.testing.assert_allclose(per, [1, 1, 1, 1, 1, .5, .5, .5, .5, .5], rtol=1e-12)
    assert m == pytest.approx(0.75, rel=1e-12)


def test_voc_ap_hand_made():
    # class 0: 3 gt boxes (2 in image 0, 1 in image 1); ranked detections:
    #   .9 TP, .8 FP (no overlap), .7 TP, .6 FP (duplicate of the .9 one's box), .5 TP
    #   P/R: 1/(1/3), 1/2(1/3), 2/3(2/3), 1/2(2/3), 3/5(1)
    #   envelope: 1 up to R=1/3, 2/3 up to 2/3, 3/5 up to 1 -> AP = (1 + 2/3 + 3/5) / 3
    # class 1: one gt, one detection at IoU 0.4 -> AP 0;  class 2: no gt -> NaN, not averaged
    gt_boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], np.float32),
                np.array([[5, 5, 15, 15]], np.float32)]
    gt_labels = [np.array([0, 0, 1]), np.array([0])]
    pred_boxes = [np.array([[0, 0, 10, 10], [60, 60, 70, 70], [21, 20, 31, 30], [1, 0, 10, 10],
                            [40, 0, 47, 7], [0, 0, 3, 3]], np.float32),
                  np.array([[5, 5, 15, 16]], np.float32)]
    pred_scores = [np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.3]), np.array([0.5])]
    pred_labels = [np.array([0, 0, 0, 0, 1, 2]), np.array([0])]
    mAP, ap = mean_average_precision(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels,
                                     num_classes=3)
    want0 = (1 + 2 / 3 + 3 / 5) / 3
    # [40,0,47,7] vs [40,0,50,10]: 49 / 100 -> below 0.5
    assert ap[0] == pytest.approx(want0, abs=1e-12)
    assert ap[1] == 0.0
    assert np.isnan(ap[2])
    assert mAP == pytest.approx(want0 / 2, abs=1e-12)
    # perfect detections -> 1; a list helper and per-class agree
    ap_perfect = average_precision_per_class(gt_boxes, [np.ones(3), np.ones(1)], gt_labels,
                                             gt_boxes, gt_labels, num_classes=2)
    np.testing.assert_array_equal(ap_perfect, [1.0, 1.0])
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)


def test_proposal_recall_hand_made():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
          np.array([[0, 0, 8, 8]], np.float32), np.zeros((0, 4), np.float32)]
    props = [np.array([[0, 0, 10, 12],          # IoU 100/120 = 0.83 with gt0
                       [20, 20, 40, 30],        # IoU 0.5 with gt1
                       [20, 20, 40, 39]]),      # IoU 0.95 with gt1, but third in rank
             np.array([[0, 0, 8, 4]]),          # IoU 0.5
             np.array([[0, 0, 5, 5]])]
    r = proposal_recall(props, gt, top_n=2, iou_thresholds=(0.5, 0.7))
    assert r[0.5] == pytest.approx(1.0) and r[0.7] == pytest.approx(1 / 3)
    r = proposal_recall(props, gt, top_n=3, iou_thresholds=(0.7,))
    assert r[0.7] == pytest.approx(2 / 3)


# ------------------------------------------------------------------- gradient checks (float64)

def _set(arrays, values):
    for a, v in zip(arrays, values):
        a[...] = v


def test_rpn_head_and_loss_gradient(backend):
    rng = np.random.default_rng(0)
    with convkit.use_backend(backend) as be:
        rpn = RegionProposalNetwork(4, AnchorGenerator((8, 16), (0.5, 1.0, 2.0), stride=4),
                                    mid_channels=5, batch_size_per_image=32, dtype=np.float64,
                                    seed=0)
        gt = [np.array([[2, 3, 11, 13], [5, 1, 15, 9]], np.float64),
              np.array([[0, 6, 9, 16]], np.float64)]
        anchors = rpn.anchors((4, 4), np.float64)
        labels, targets = rpn.targets(anchors, [be.asarray(g) for g in gt])
        lab = be.to_numpy(labels)
        assert (lab == 1).sum() >= 3 and (lab == 0).sum() >= 20      # both terms are live
        head = rpn.head
        params = [head.conv.params["weight"], head.conv.params["bias"],
                  head.cls_logits.params["weight"], head.bbox_pred.params["weight"]]
        grads = [head.conv.grads["weight"], head.conv.grads["bias"],
                 head.cls_logits.grads["weight"], head.bbox_pred.grads["weight"]]
        x0 = rng.standard_normal((2, 4, 4, 4))
        p0 = [rng.standard_normal(p.shape) * 0.5 for p in params]

        def loss(x, *ps):
            _set(params, [be.asarray(p) for p in ps])
            cls, reg = head.forward(be.asarray(x))
            cf, rf = flatten_rpn_outputs(cls, reg)
            lc, lr, gc, gr = rpn_loss(cf, rf, labels, targets)
            return lc, lr, gc, gr

        def fwd(x, *ps):
            lc, lr, _, _ = loss(x, *ps)
            return np.asarray(float(lc) + float(lr))

        def bwd(gy, x, *ps):
            _, _, gc, gr = loss(x, *ps)
            head.zero_grad()
            gcc, grr = unflatten_rpn_grads(gc * float(gy), gr * float(gy), (4, 4))
            gx = head.backward(gcc, grr)
            return [be.to_numpy(gx)] + [be.to_numpy(g).copy() for g in grads]

        check_backward(fwd, bwd, [x0] + p0, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("roi_op", ["align", "pool", "avg_pool", "max_align"])
def test_roi_head_and_loss_gradient(backend, roi_op):
    rng = np.random.default_rng(1)
    with convkit.use_backend(backend) as be:
        heads = RoIHeads(3, num_classes=2, spatial_scale=0.5, roi_op=roi_op, output_size=3,
                         sampling_ratio=2, representation=6, dtype=np.float64, seed=0)
        # RoI corners chosen off the bin and pixel boundaries of the 8x8 map (scale 0.5)
        rois = be.asarray(np.array([[0, 1.3, 2.1, 9.7, 12.9], [1, 3.3, 0.7, 14.1, 8.3],
                                    [0, 6.1, 5.3, 15.3, 15.1], [1, 0.9, 4.1, 7.3, 13.7]]))
        labels = be.asarray(np.array([1, 0, 2, 2], np.int64))
        targets = be.asarray(rng.standard_normal((4, 4)))
        mods = [heads.box_head[1], heads.box_head[3], heads.cls_score, heads.bbox_pred]
        params = [m.params["weight"] for m in mods]
        grads = [m.grads["weight"] for m in mods]
        x0 = rng.permutation(2 * 3 * 8 * 8).reshape(2, 3, 8, 8) / 50.0   # distinct values
        p0 = [rng.standard_normal(p.shape) * 0.4 for p in params]

        def loss(x, *ps):
            _set(params, [be.asarray(p) for p in ps])
            logits, deltas = heads.head(heads.pool(be.asarray(x), rois))
            return fast_rcnn_loss(logits, deltas, labels, targets, beta=1.0)

        def fwd(x, *ps):
            lc, lb, _, _ = loss(x, *ps)
            return np.asarray(float(lc) + float(lb))

        def bwd(gy, x, *ps):
            _, _, gl, gd = loss(x, *ps)
            heads.zero_grad()
            gx = heads.pool_backward(heads.head_backward(gl * float(gy), gd * float(gy)))
            return [be.to_numpy(gx)] + [be.to_numpy(g).copy() for g in grads]

        check_backward(fwd, bwd, [x0] + p0, rtol=1e-6, atol=1e-9)


def test_faster_rcnn_end_to_end_gradient_reaches_first_conv(backend):
    # The summed four losses as a function of the first conv's weight.  Faster R-CNN's joint
    # training treats the proposals as constants (no gradient through their coordinates), so
    # they are frozen here; the samplers are re-seeded so every evaluation draws the same
    # anchors and RoIs.  The gradient then comes back from the RoI head through RoI align and
    # from the RPN head, into the backbone.
    d = shapes(2, size=32, max_objects=2, seed=4)
    with convkit.use_backend(backend) as be:
        m = FasterRCNN(3, anchor_sizes=(8, 12, 16), width=4, dtype=np.float64, seed=0,
                       rpn_kwargs=dict(batch_size_per_image=64),
                       roi_kwargs=dict(output_size=3, representation=8,
                                       batch_size_per_image=16))
        w = m.backbone[0].params["weight"]
        gw = m.backbone[0].grads["weight"]
        m.loss(d.images, d.boxes, d.labels)
        frozen = m.last_proposals
        m.rpn.proposals = lambda *args: frozen

        def losses(wv):
            w[...] = be.asarray(wv)
            m.rpn.sampler_rng = np.random.default_rng(1)
            m.roi_heads.sampler_rng = np.random.default_rng(2)
            return m.loss(d.images, d.boxes, d.labels)

        def fwd(wv):
            return np.asarray(sum(float(v) for v in losses(wv).values()))

        def bwd(gy, wv):
            losses(wv)
            m.zero_grad()
            m.backward()
            return [be.to_numpy(gw) * float(gy)]

        w0 = be.to_numpy(w).copy()
        check_backward(fwd, bwd, [w0], rtol=1e-6, atol=1e-10)
        losses(w0)
        m.zero_grad()
        assert m.backbone.backward(m.roi_heads.backward()) is None   # first conv: no dx
        assert float(np.abs(be.to_numpy(gw)).sum()) > 0   # the RoI head alone reaches it


# --------------------------------------------------------------------------- tiny training run
def test_tiny_detector_training_loss_falls(backend):
    d = shapes(4, size=32, max_objects=2, seed=5)
    with convkit.use_backend(backend):
        m = FasterRCNN(3, anchor_sizes=(8, 12, 16), width=6, seed=0,
                       rpn_kwargs=dict(pre_nms_top_n=(300, 300), post_nms_top_n=(60, 60)),
                       roi_kwargs=dict(representation=32, batch_size_per_image=32))
        opt = Adam(m, lr=3e-3)
        totals = []
        for _ in range(15):
            losses = m.loss(d.images, d.boxes, d.labels)
            totals.append(sum(float(v) for v in losses.values()))
            m.zero_grad()
            m.backward()
            opt.step()
    assert np.mean(totals[-5:]) < 0.5 * np.mean(totals[:3]), totals
    m.eval()
    dets = m.forward(d.images)
    assert len(dets) == 4 and all(x["boxes"].shape[1] == 4 for x in dets)


# ---------------------------------------------------------------- proposals and detections
def test_rpn_proposals_decode_clip_and_rank_by_hand(backend):
    # zero weights: every anchor gets the head's biases.  Anchors are 8x8 squares at stride 8
    # on a 2x2 map of a 16x16 image: [0,0,8,8] [8,0,16,8] [0,8,8,16] [8,8,16,16].
    with convkit.use_backend(backend) as be:
        rpn = RegionProposalNetwork(2, AnchorGenerator((8,), (1.0,), stride=8), mid_channels=2,
                                    min_size=1.0, dtype=np.float64, seed=0)
        for m in (rpn.head.conv, rpn.head.cls_logits, rpn.head.bbox_pred):
            m.params["weight"][...] = 0
        rpn.head.cls_logits.params["bias"][...] = be.asarray(np.array([1.0, 0.0]))
        # dx = 0.5 (half a width right), dy = 0, dw = log 2 (twice as wide), dh = 0
        rpn.head.bbox_pred.params["bias"][...] = be.asarray(np.array([0.5, 0, np.log(2), 0]))
        rpn.eval()
        props, losses = rpn.forward(be.asarray(np.zeros((1, 2, 2, 2))), (16, 16))
    assert losses == {}
    boxes, scores = (be.to_numpy(a) for a in props[0])
    # centres move 4 px right and widths double to 16, then boxes are clipped to [0, 16]:
    #   [0,0,8,8] -> [0,0,16,8];  [8,0,16,8] -> [8,0,24,8] -> [8,0,16,8];  rows 8..16 likewise.
    #   IoU([0,0,16,8], [8,0,16,8]) = 0.5 <= 0.7, so NMS keeps all four; equal scores keep the
    #   anchor order; score = softmax([1, 0])[0] = sigmoid(1).
    np.testing.assert_allclose(boxes, [[0, 0, 16, 8], [8, 0, 16, 8], [0, 8, 16, 16],
                                       [8, 8, 16, 16]], atol=1e-12)
    np.testing.assert_allclose(scores, np.full(4, 1 / (1 + np.exp(-1.0))), rtol=1e-12)


@pytest.mark.parametrize("roi_op", ["align", "pool", "avg_pool", "max_align"])
def test_detector_outputs_respect_their_contract(backend, roi_op):
    d = shapes(2, size=32, max_objects=3, seed=9)
    with convkit.use_backend(backend) as be:
        m = FasterRCNN(3, anchor_sizes=(8, 12, 16), width=4, roi_op=roi_op, seed=1,
                       rpn_kwargs=dict(post_nms_top_n=(40, 40)),
                       roi_kwargs=dict(representation=16, score_thresh=0.2,
                                       detections_per_img=30))
        m.eval()
        dets = m.forward(d.images)
        props = [(be.to_numpy(b), be.to_numpy(s)) for b, s in m.last_proposals]
        dets = [{k: be.to_numpy(v) for k, v in x.items()} for x in dets]
    from convkit.metrics import box_iou_np
    assert sum(len(x["boxes"]) for x in dets) > 0
    for b, s in props:
        assert 0 < len(b) <= 40 and (np.diff(s) <= 0).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 32).all()
        assert ((b[:, 2:] - b[:, :2]) >= 1.0).all()
        iou = box_iou_np(b, b)
        assert (iou[np.triu_indices(len(b), 1)] <= 0.7 + 1e-6).all()
    for x in dets:
        b, s, lab = x["boxes"], x["scores"], x["labels"]
        assert len(b) <= 30 and (s > 0.2).all() and (np.diff(s) <= 0).all()
        assert set(lab.tolist()) <= {0, 1, 2} and lab.dtype == np.int64
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 32).all()
        for c in range(3):
            bc = b[lab == c]
            iou = box_iou_np(bc, bc)
            assert (iou[np.triu_indices(len(bc), 1)] <= 0.5 + 1e-6).all()


# ---------------------------------------------------------------------------- input checks
def _tiny_detector():
    return FasterRCNN(3, anchor_sizes=(8, 12, 16), width=4, seed=0,
                      roi_kwargs=dict(representation=8, output_size=3))


def test_detector_rejects_badly_shaped_or_scaled_images():
    d = shapes(2, size=32, max_objects=2, seed=1)
    with convkit.use_backend("numpy"):
        m = _tiny_detector().eval()
        img = d.images[0]                                       # (3, 32, 32)
        with pytest.raises(ValueError, match=r"images\[None\]"):
            m.forward(img)                                      # missing batch dimension
        with pytest.raises(ValueError, match=r"HWC.*transpose\(2, 0, 1\)\[None\]"):
            m.forward(img.transpose(1, 2, 0))                   # one HWC image
        with pytest.raises(ValueError, match=r"NHWC.*transpose\(0, 3, 1, 2\)"):
            m.forward(d.images.transpose(0, 2, 3, 1))           # an NHWC batch
        with pytest.raises(ValueError, match="3 channels"):
            m.forward(d.images[:, :1])
        with pytest.raises(ValueError, match=r"0\.\.255 scale.*multiply by 255"):
            m.forward(d.images / 255.0)                          # floats in [0, 1]
        with pytest.raises(ValueError, match=r"0\.\.255 scale"):
            m.loss(d.images.astype(np.float32) / 255, d.boxes, d.labels)
        with pytest.raises(TypeError, match="uint8"):
            m.forward(d.images.astype(bool))
        # floats on the 0..255 scale are what uint8 would give
        a = m.forward(d.images)
        b = m.forward(d.images.astype(np.float32))
        for da, db in zip(a, b):
            np.testing.assert_array_equal(da["boxes"], db["boxes"])
        assert all(not x._caches for x in m.modules())           # inference keeps no caches
        m.train()
        m.forward(d.images)
        with nn_no_grad():
            feats = m.features(d.images)
        m.rpn.forward(feats, (32, 32))                            # proposals only
        assert all(not x._caches for x in m.modules()) and not m.roi_heads._pool_caches


def test_detector_checks_targets_and_clips_boxes_that_reach_outside():
    d = shapes(2, size=32, max_objects=2, seed=2)
    with convkit.use_backend("numpy"):
        m = _tiny_detector()
        boxes = [b.copy() for b in d.boxes]
        with pytest.raises(ValueError, match=r"gt_boxes\[1\]\[0\].*outside the 32x32 image"):
            m.loss(d.images, [boxes[0], np.array([[40, 2, 50, 9]], np.float32)], d.labels[:1]
                   + [np.array([0])])
        with pytest.raises(ValueError, match=r"gt_boxes\[0\]\[0\].*not a box"):
            m.loss(d.images, [np.array([[5, 5, 2, 9]], np.float32), boxes[1]],
                   [np.array([0]), d.labels[1]])
        with pytest.raises(ValueError, match=r"gt_boxes\[0\]\[0\].*not a box"):
            m.loss(d.images, [np.array([[5, np.nan, 8, 9]], np.float32), boxes[1]],
                   [np.array([0]), d.labels[1]])
        with pytest.raises(ValueError, match=r"gt_labels\[0\]\[0\] = 3 is not in \[0, 3\)"):
            m.loss(d.images, boxes, [np.full(len(boxes[0]), 3), d.labels[1]])
        with pytest.raises(ValueError, match=r"one gt_boxes and one gt_labels entry per image"):
            m.loss(d.images, boxes[:1], d.labels[:1])
        with pytest.raises(ValueError, match=r"gt_boxes\[0\] must be \(G, 4\)"):
            m.loss(d.images, [boxes[0][:, :3], boxes[1]], d.labels)
        # a box reaching outside is clipped to the image: the same losses as the clipped box
        wide = [b.copy() for b in boxes]
        wide[0][0] = [-6, -3, wide[0][0, 2], 40]
        clipped = [b.copy() for b in wide]
        clipped[0][0] = np.clip(clipped[0][0], 0, 32)
        got, want = [], []
        for bx, out in ((wide, got), (clipped, want)):
            m.rpn.sampler_rng = np.random.default_rng(1)
            m.roi_heads.sampler_rng = np.random.default_rng(2)
            out.append({k: float(v) for k, v in m.loss(d.images, bx, d.labels).items()})
            m.clear_caches()
        assert got == want
