"""The detector: Faster R-CNN (placeholder while being written; anchors are in anchors.py)."""
from .anchors import AnchorGenerator, assign_anchor_targets, sample_labels, host_box_iou

__all__ = ["AnchorGenerator", "assign_anchor_targets", "sample_labels", "host_box_iou"]
