"""FCOS box encoding (Tian et al. 2019): which locations predict which box, and decoding.

An anchor-free detector predicts, at every location of a feature map of stride `s`, class
scores, the distances `(l, t, r, b)` from the location to the four sides of its box and a
"centerness" that down-weights off-centre predictions. Here all of it is pure JAX with
static shapes: images carry a fixed number of box slots with a mask, targets come from a
`[locations, boxes]` matrix, and decoding keeps a fixed number of detections with a mask.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseg.ops.boxes import batched_nms, clip_boxes


class Targets(NamedTuple):
    """Per-location training targets of one image (or a batch, with leading axes).

    classes: float `[N, C]` one-hot of the assigned box's class (all 0 for background);
    distances: `[N, 4]` `(l, t, r, b)` from the location to the assigned box (0 where negative);
    boxes: `[N, 4]` the assigned box, xyxy (0 where negative);
    centerness: `[N]` `sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))` (0 where negative);
    positive: bool `[N]`.
    """

    classes: jax.Array
    distances: jax.Array
    boxes: jax.Array
    centerness: jax.Array
    positive: jax.Array


class Detections(NamedTuple):
    """`max_detections` detections per image, best first: xyxy `boxes`, `scores`, `classes`
    and `mask` (False for empty slots)."""

    boxes: jax.Array
    scores: jax.Array
    classes: jax.Array
    mask: jax.Array


def locations(height: int, width: int, stride: int) -> jax.Array:
    """Image coordinates `(x, y)` `[height * width, 2]` of the centres of a feature map's cells,
    row-major like a flattened `[height, width]` map."""
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    return (jnp.stack([xs.ravel(), ys.ravel()], axis=-1) + 0.5) * stride


def distances_to_boxes(points, distances):
    """xyxy boxes from locations `[..., 2]` and distances `(l, t, r, b)` `[..., 4]`."""
    x, y = points[..., 0], points[..., 1]
    l, t, r, b = jnp.moveaxis(distances, -1, 0)
    return jnp.stack([x - l, y - t, x + r, y + b], axis=-1)


def boxes_to_distances(points, boxes):
    """`(l, t, r, b)` from locations `[N, 2]` to boxes `[N, 4]` (xyxy); negative outside."""
    x, y = points[..., 0], points[..., 1]
    return jnp.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], axis=-1)


def centerness(distances):
    """FCOS centerness of distances `[..., 4]`: 1 at a box's centre, 0 at its border."""
    l, t, r, b = jnp.moveaxis(jnp.maximum(distances, 0.0), -1, 0)
    horizontal = jnp.minimum(l, r) / jnp.maximum(jnp.maximum(l, r), 1e-12)
    vertical = jnp.minimum(t, b) / jnp.maximum(jnp.maximum(t, b), 1e-12)
    return jnp.sqrt(horizontal * vertical)


def assign_targets(
    points, boxes, classes, box_mask, *, num_classes: int, stride: float, center_radius: float = 1.5
) -> Targets:
    """FCOS targets of one image: a location is positive for a box when it lies inside the box
    and within `center_radius * stride` of the box's centre ("center sampling"); a location
    positive for several boxes takes the smallest. Padding slots (`box_mask` False) match
    nothing.

    Args:
      points: `[N, 2]` location coordinates (`locations`).
      boxes: `[M, 4]` xyxy; classes: int `[M]`; box_mask: bool `[M]`.
    """
    points = jnp.asarray(points, jnp.float32)
    boxes = jnp.asarray(boxes, jnp.float32)
    x, y = points[:, 0:1], points[:, 1:2]  # [N, 1] against [M]
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
    radius = center_radius * stride
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    near_centre = (jnp.abs(x - centre_x) < radius) & (jnp.abs(y - centre_y) < radius)
    candidate = inside & near_centre & jnp.asarray(box_mask, bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    chosen = jnp.argmin(jnp.where(candidate, area, jnp.inf), axis=1)
    positive = jnp.any(candidate, axis=1)
    assigned = boxes[chosen]
    distances = jnp.where(positive[:, None], boxes_to_distances(points, assigned), 0.0)
    one_hot = jax.nn.one_hot(jnp.asarray(classes)[chosen], num_classes, dtype=jnp.float32)
    return Targets(
        classes=jnp.where(positive[:, None], one_hot, 0.0),
        distances=distances,
        boxes=jnp.where(positive[:, None], assigned, 0.0),
        centerness=jnp.where(positive, centerness(distances), 0.0),
        positive=positive,
    )


def detect(
    class_logits,
    distances,
    centerness_logits,
    points,
    *,
    image_size,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
    pre_nms_top_k: int = 200,
    max_detections: int = 50,
) -> Detections:
    """Detections of one image from the head's outputs: score `sqrt(sigmoid(class) *
    sigmoid(centerness))` for every (location, class), the `pre_nms_top_k` best, boxes clipped
    to `image_size` `(height, width)`, then per-class NMS at `iou_threshold` and
    `score_threshold`, keeping `max_detections`.

    Args:
      class_logits: `[N, C]`; distances: `[N, 4]` `(l, t, r, b)`; centerness_logits: `[N]`.
    """
    class_logits = jnp.asarray(class_logits, jnp.float32)
    num_classes = class_logits.shape[-1]
    scores = jnp.sqrt(
        jax.nn.sigmoid(class_logits) * jax.nn.sigmoid(jnp.asarray(centerness_logits, jnp.float32))[:, None]
    )
    top_k = min(pre_nms_top_k, scores.size)
    top_scores, flat = jax.lax.top_k(scores.ravel(), top_k)
    where, classes = flat // num_classes, flat % num_classes
    boxes = clip_boxes(distances_to_boxes(points[where], jnp.asarray(distances, jnp.float32)[where]), image_size)
    keep, valid = batched_nms(
        boxes,
        top_scores,
        classes,
        iou_threshold=iou_threshold,
        max_outputs=max_detections,
        score_threshold=score_threshold,
    )
    return Detections(
        boxes=jnp.where(valid[:, None], boxes[keep], 0.0),
        scores=jnp.where(valid, top_scores[keep], 0.0),
        classes=jnp.where(valid, classes[keep], -1).astype(jnp.int32),
        mask=valid,
    )
