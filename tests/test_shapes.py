"""The synthetic shapes detection set: determinism, box/label validity, what is drawn."""
import numpy as np
import pytest

from convkit.data import SHAPE_CLASSES, shapes


def test_same_seed_same_data_and_other_seed_differs():
    a = shapes(12, size=48, max_objects=4, seed=7)
    b = shapes(12, size=48, max_objects=4, seed=7)
    c = shapes(12, size=48, max_objects=4, seed=8)
    assert np.array_equal(a.images, b.images)
    assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels))
    assert not np.array_equal(a.images, c.images)


def test_layout_boxes_and_labels_are_valid():
    d = shapes(30, size=64, classes=SHAPE_CLASSES, max_objects=3, seed=0)
    assert d.images.shape == (30, 3, 64, 64) and d.images.dtype == np.uint8
    assert d.class_names == ("circle", "square", "triangle")
    assert len(d.boxes) == len(d.labels) == 30
    counts = [len(b) for b in d.boxes]
    assert min(counts) >= 1 and max(counts) <= 3
    seen = set()
    for b, lab in zip(d.boxes, d.labels):
        assert b.dtype == np.float32 and b.shape == (len(lab), 4) and lab.dtype == np.int64
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all()
        side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        assert (side >= 0.2 * 64 - 1).all() and (side <= 0.5 * 64 + 1).all()
        seen.update(lab.tolist())
    assert seen == {0, 1, 2}


def test_box_is_tight_around_the_drawn_object():
    # one object per image: pixels inside the box differ from the background outside it far
    # more than background pixels differ from each other
    d = shapes(10, size=64, max_objects=1, seed=3)
    for img, (b,) in zip(d.images.astype(float), d.boxes):
        x1, y1, x2, y2 = b.astype(int)
        inside = np.zeros((64, 64), bool)
        inside[y1:y2, x1:x2] = True
        # the box's edge rows/columns each contain object pixels (tightness): some pixel on
        # each edge is far from the median background colour
        bg = np.median(img[:, ~inside], axis=1)
        far = np.abs(img - bg[:, None, None]).sum(axis=0) > 60
        assert far[y1, x1:x2].any() and far[y2 - 1, x1:x2].any()
        assert far[y1:y2, x1].any() and far[y1:y2, x2 - 1].any()


def test_class_subset_and_bad_arguments():
    d = shapes(5, size=32, classes=2, seed=1)
    assert d.class_names == ("circle", "square")
    assert all(((lab >= 0) & (lab < 2)).all() for lab in d.labels)
    d = shapes(4, size=32, classes=("triangle",), seed=1)
    assert d.class_names == ("triangle",)
    assert shapes(0, size=32).images.shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="classes"):
        shapes(2, classes=("hexagon",))
    with pytest.raises(ValueError, match="size"):
        shapes(2, size=8)
    with pytest.raises(ValueError, match="max_objects"):
        shapes(2, max_objects=0)
