"""Pure array operations shared by losses and metrics."""

from jaxseg.ops.boxes import (
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    nms,
    paired_giou,
    paired_iou,
)
from jaxseg.ops.labels import check_label_range, one_hot, valid_mask

__all__ = [
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "check_label_range",
    "clip_boxes",
    "generalized_box_iou",
    "nms",
    "one_hot",
    "paired_giou",
    "paired_iou",
    "valid_mask",
]
