"""Axis-aligned box geometry: format conversion, areas, IoU and GIoU, and a static-shape NMS.

Boxes are `[..., 4]` arrays, any leading dims; the math runs in float32 whatever the input
dtype, and every function is safe under `jax.jit`, `jax.vmap` and `jax.grad`. Semantics are
those of `torchvision.ops`, with one deliberate difference: a ratio 0 / 0 (the IoU of two
zero-area boxes, the GIoU penalty of a zero-area enclosing box) is 0 with zero gradient,
where torchvision gives NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.ops.numeric import safe_divide

FORMATS = ("xyxy", "xywh", "cxcywh")


def as_boxes(boxes, name: str = "boxes"):
    """`[..., 4]` int or float coordinates -> float32; a clear error for anything else."""
    boxes = jnp.asarray(boxes)
    if not (jnp.issubdtype(boxes.dtype, jnp.floating) or jnp.issubdtype(boxes.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real array (float or int); got {boxes.dtype}")
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have a last axis of 4 coordinates; got shape {boxes.shape}")
    return boxes.astype(jnp.float32)


# ----------------------------------------------------------------------------- formats


def _check_format(name: str, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"{name} must be one of {FORMATS}; got {fmt!r}")


def _to_xyxy(boxes, fmt: str):
    a, b, c, d = jnp.unstack(boxes, axis=-1)
    if fmt == "xywh":
        return jnp.stack([a, b, a + c, b + d], axis=-1)
    if fmt == "cxcywh":
        return jnp.stack([a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d], axis=-1)
    return boxes


def _from_xyxy(boxes, fmt: str):
    x1, y1, x2, y2 = jnp.unstack(boxes, axis=-1)
    if fmt == "xywh":
        return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)
    if fmt == "cxcywh":
        return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)
    return boxes


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Convert `[..., 4]` boxes between "xyxy" (corners), "xywh" (top-left corner, width,
    height) and "cxcywh" (centre, width, height); `torchvision.ops.box_convert`, same
    arithmetic (so bit-identical in float32). Returns float32."""
    _check_format("in_fmt", in_fmt)
    _check_format("out_fmt", out_fmt)
    boxes = as_boxes(boxes)
    if in_fmt == out_fmt:
        return boxes
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def box_area(boxes):
    """`[..., 4]` xyxy boxes -> `[...]` float32 areas `(x2 - x1) * (y2 - y1)` (torchvision)."""
    boxes = as_boxes(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes, size):
    """Clip `[..., 4]` xyxy boxes to an image of `size = (height, width)`: x into
    `[0, width]`, y into `[0, height]` (`torchvision.ops.clip_boxes_to_image`). float32."""
    boxes = as_boxes(boxes)
    height, width = size
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


# ----------------------------------------------------------------------------- overlap


def intersection_union(boxes1, boxes2):
    """Intersection and union areas of xyxy boxes, elementwise with broadcasting.

    The intersection is 0, with zero gradient, unless the boxes overlap with a positive
    width and height (torchvision's `_loss_inter_union`; the same values as the clamp in
    `box_iou`). Returns two float32 arrays of the broadcast leading shape.
    """
    boxes1, boxes2 = as_boxes(boxes1, "boxes1"), as_boxes(boxes2, "boxes2")
    lt = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
    overlaps = jnp.all(rb > lt, axis=-1)
    wh = jnp.where(overlaps[..., None], rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(boxes1) + box_area(boxes2) - inter


def enclosing_box(boxes1, boxes2):
    """The smallest xyxy box holding both boxes, elementwise with broadcasting."""
    boxes1, boxes2 = as_boxes(boxes1, "boxes1"), as_boxes(boxes2, "boxes2")
    lt = jnp.minimum(boxes1[..., :2], boxes2[..., :2])
    rb = jnp.maximum(boxes1[..., 2:], boxes2[..., 2:])
    return jnp.concatenate([lt, rb], axis=-1)


def paired_iou(boxes1, boxes2):
    """IoU of xyxy boxes, elementwise with broadcasting: `[..., 4]`, `[..., 4]` -> `[...]`.

    Two zero-area boxes (union 0) give 0; torchvision's `box_iou` gives NaN there.
    """
    inter, union = intersection_union(boxes1, boxes2)
    return safe_divide(inter, union)


def paired_giou(boxes1, boxes2):
    """Generalized IoU (Rezatofighi et al. 2019) of xyxy boxes, elementwise with broadcasting:
    `iou - (area(C) - union) / area(C)` with C the enclosing box.

    Ratios 0 / 0 are 0: two identical zero-area boxes give 0 (torchvision: NaN).
    """
    inter, union = intersection_union(boxes1, boxes2)
    enclosing = box_area(enclosing_box(boxes1, boxes2))
    return safe_divide(inter, union) - safe_divide(enclosing - union, enclosing)


def _pairwise(boxes1, boxes2):
    """`[..., N, 4]`, `[..., M, 4]` -> views `[..., N, 1, 4]`, `[..., 1, M, 4]`."""
    boxes1, boxes2 = as_boxes(boxes1, "boxes1"), as_boxes(boxes2, "boxes2")
    if boxes1.ndim < 2 or boxes2.ndim < 2:
        raise ValueError(f"boxes must be [..., N, 4] and [..., M, 4]; got shapes {boxes1.shape} and {boxes2.shape}")
    return boxes1[..., :, None, :], boxes2[..., None, :, :]


def box_iou(boxes1, boxes2):
    """Pairwise IoU `[..., N, M]` of xyxy boxes `[..., N, 4]` and `[..., M, 4]` (leading dims
    broadcast); `torchvision.ops.box_iou`, except that two zero-area boxes give 0, not NaN."""
    return paired_iou(*_pairwise(boxes1, boxes2))


def generalized_box_iou(boxes1, boxes2):
    """Pairwise GIoU `[..., N, M]` of xyxy boxes `[..., N, 4]` and `[..., M, 4]` (leading dims
    broadcast); `torchvision.ops.generalized_box_iou`, except that ratios 0 / 0 are 0, not NaN."""
    return paired_giou(*_pairwise(boxes1, boxes2))


# ----------------------------------------------------------------------------- NMS


def _greedy_nms(boxes, scores, classes, iou_threshold, max_outputs: int, score_threshold):
    """Greedy NMS over candidates in descending score order; `classes` None or `[N]` ints.

    A `while_loop` walks the sorted candidates, and each one still kept suppresses the later
    ones (of its class) with IoU above the threshold. It stops once `max_outputs` are kept or
    the candidates above `score_threshold` are exhausted. IoU rows are computed on the fly:
    O(N) memory, O(N) work per step.
    """
    boxes = as_boxes(boxes)
    scores = jnp.asarray(scores, jnp.float32)
    if boxes.ndim != 2 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms needs boxes [N, 4] and scores [N]; got {boxes.shape} and {scores.shape}")
    if not isinstance(max_outputs, int) or max_outputs < 1:
        raise ValueError(f"max_outputs must be a positive Python int (a static shape); got {max_outputs!r}")
    n = boxes.shape[0]
    if n == 0:
        return jnp.zeros(max_outputs, jnp.int32), jnp.zeros(max_outputs, bool)
    eligible = scores >= score_threshold  # False for NaN scores
    # Eligible candidates first, by descending score, ties by index (a stable sort).
    order = jnp.lexsort((-jnp.where(eligible, scores, 0.0), ~eligible))
    boxes = boxes[order]
    same_class = None if classes is None else jnp.asarray(classes)[order]
    num_eligible = jnp.sum(eligible)
    later = jnp.arange(n)

    def not_done(state):
        i, kept, count = state
        return (i < num_eligible) & (count < max_outputs)

    def step(state):
        i, kept, count = state
        overlapping = (paired_iou(boxes[i], boxes) > iou_threshold) & (later > i)
        if same_class is not None:
            overlapping &= same_class == same_class[i]
        keep_i = kept[i]
        return i + 1, kept & ~(keep_i & overlapping), count + keep_i.astype(jnp.int32)

    _, kept, count = jax.lax.while_loop(not_done, step, (jnp.int32(0), eligible[order], jnp.int32(0)))
    # Past the stopping point `kept` may still hold unvisited candidates; only the first
    # `count` kept ones are read, and those are final.
    (positions,) = jnp.nonzero(kept, size=max_outputs, fill_value=0)
    valid = jnp.arange(max_outputs) < count
    return jnp.where(valid, order[positions], 0).astype(jnp.int32), valid


def nms(boxes, scores, *, iou_threshold, max_outputs: int, score_threshold=-jnp.inf):
    """Greedy non-maximum suppression with static output shapes.

    Keeps the same boxes as `torchvision.ops.nms`: in descending score order, a box is
    dropped if its IoU with an already kept box is `> iou_threshold`. Boxes with
    `score < score_threshold` (or a NaN score) are never kept.

    Args:
      boxes: `[N, 4]` xyxy boxes.  scores: `[N]`.
      iou_threshold: IoU above which a lower-scoring box is suppressed (may be traced).
      max_outputs: static number of output slots; the highest-scoring kept boxes fill them.
      score_threshold: minimum score of a kept box (may be traced).

    Returns:
      `(indices [max_outputs] int32, valid [max_outputs] bool)`: indices into `boxes` in
      descending score order, then padding slots with `valid=False` and index 0. Equal
      scores are ordered by index (torchvision leaves their order unspecified). Use
      `jax.vmap` for a batch of images.
    """
    return _greedy_nms(boxes, scores, None, iou_threshold, max_outputs, score_threshold)


def batched_nms(boxes, scores, classes, *, iou_threshold, max_outputs: int, score_threshold=-jnp.inf):
    """Per-class NMS: `nms` where a box only suppresses boxes of its own class.

    The kept set is `torchvision.ops.batched_nms`'s (NMS run independently per class,
    results merged in descending score order). torchvision offsets the coordinates per
    class so that classes cannot overlap; here the suppression test compares the classes
    instead, which gives the same result without the offset's float rounding on large
    coordinates and works for negative coordinates too.

    Args:
      boxes: `[N, 4]` xyxy.  scores: `[N]`.  classes: `[N]` int class ids.
      iou_threshold: as in `nms`.
      max_outputs: as in `nms`.
      score_threshold: as in `nms`.

    Returns:
      `(indices [max_outputs] int32, valid [max_outputs] bool)` as `nms`.
    """
    classes = jnp.asarray(classes)
    if classes.shape != jnp.shape(scores):
        raise ValueError(f"classes must have the scores' shape {jnp.shape(scores)}; got {classes.shape}")
    return _greedy_nms(boxes, scores, classes, iou_threshold, max_outputs, score_threshold)
