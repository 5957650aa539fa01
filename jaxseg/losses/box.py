"""Box regression losses: IoU, GIoU, DIoU and CIoU on xyxy boxes, and smooth L1 / L1.

The IoU family follows `torchvision.ops` (`generalized_box_iou_loss`,
`distance_box_iou_loss`, `complete_box_iou_loss`): `eps` is added to the denominators as
there, and every other division by zero gives 0 with zero gradient, so degenerate boxes
(zero area, identical, disjoint) keep finite values and gradients. Boxes of any float dtype
are computed in float32; leading dims broadcast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.losses._common import REDUCTIONS, as_float32, check_choice, reduce_weighted, safe_divide
from jaxseg.ops.boxes import as_boxes, box_area, enclosing_box, intersection_union


def reduce_mean_sum(loss, reduction: str):
    """ "none" as is, "sum", or "mean" over all elements (0 for an empty array, as torchvision)."""
    return reduce_weighted(loss, jnp.ones_like(loss), reduction)


def iou_terms(boxes1, boxes2, eps):
    """`(iou, union)` with torchvision's loss convention `iou = inter / (union + eps)`."""
    inter, union = intersection_union(boxes1, boxes2)
    return safe_divide(inter, union + eps), union


def centre_distance_term(boxes1, boxes2, eps):
    """DIoU penalty: squared centre distance over the squared enclosing diagonal (+ eps)."""
    enclosing = enclosing_box(boxes1, boxes2)
    diagonal_squared = jnp.sum(jnp.square(enclosing[..., 2:] - enclosing[..., :2]), axis=-1)
    centres1 = (boxes1[..., :2] + boxes1[..., 2:]) / 2
    centres2 = (boxes2[..., :2] + boxes2[..., 2:]) / 2
    return safe_divide(jnp.sum(jnp.square(centres1 - centres2), axis=-1), diagonal_squared + eps)


def aspect_angle(boxes):
    """`atan(w / h)`, with `h = 0` read as `atan(+-inf) = +-pi/2` and `w = h = 0` as 0.

    Computed as `atan2(w * s, h * s)` with `s = sign(h)` (1 at 0): equal to `atan(w / h)`
    for any h != 0, and with finite gradients at h = 0 (where torch's `atan(w / h)` has a
    NaN gradient). A zero-size box has angle 0 and zero gradient.
    """
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    s = jnp.where(h < 0, -1.0, 1.0)
    point = (w == 0) & (h == 0)
    return jnp.arctan2(jnp.where(point, 0.0, w * s), jnp.where(point, 1.0, h * s))


def _check_boxes(boxes1, boxes2, reduction):
    check_choice("reduction", reduction, REDUCTIONS)
    return as_boxes(boxes1, "boxes1"), as_boxes(boxes2, "boxes2")


def iou_loss(boxes1, boxes2, *, eps=1e-7, reduction: str = "none"):
    """`1 - IoU` of xyxy boxes `[..., 4]` (elementwise pairs), with IoU `inter / (union + eps)`
    as in torchvision's box losses. Identical boxes give ~0 (`eps / (area + eps)`), disjoint
    ones 1. Returns float32 `[...]` for reduction="none", else a scalar."""
    boxes1, boxes2 = _check_boxes(boxes1, boxes2, reduction)
    iou, _ = iou_terms(boxes1, boxes2, eps)
    return reduce_mean_sum(1.0 - iou, reduction)


def giou_loss(boxes1, boxes2, *, eps=1e-7, reduction: str = "none"):
    """`torchvision.ops.generalized_box_iou_loss`: `1 - IoU + (area(C) - union) / (area(C) + eps)`
    with C the smallest enclosing box; in [0, 2). xyxy boxes `[..., 4]`, float32 result."""
    boxes1, boxes2 = _check_boxes(boxes1, boxes2, reduction)
    iou, union = iou_terms(boxes1, boxes2, eps)
    enclosing = box_area(enclosing_box(boxes1, boxes2))
    return reduce_mean_sum(1.0 - iou + safe_divide(enclosing - union, enclosing + eps), reduction)


def diou_loss(boxes1, boxes2, *, eps=1e-7, reduction: str = "none"):
    """`torchvision.ops.distance_box_iou_loss` (Zheng et al. 2020): `1 - IoU + d^2 / (c^2 + eps)`,
    d the distance of the box centres, c the diagonal of the enclosing box. xyxy `[..., 4]`."""
    boxes1, boxes2 = _check_boxes(boxes1, boxes2, reduction)
    iou, _ = iou_terms(boxes1, boxes2, eps)
    return reduce_mean_sum(1.0 - iou + centre_distance_term(boxes1, boxes2, eps), reduction)


def ciou_loss(boxes1, boxes2, *, eps=1e-7, reduction: str = "none"):
    """`torchvision.ops.complete_box_iou_loss` (Zheng et al. 2020): the DIoU loss plus
    `alpha * v`, `v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2` the aspect-ratio mismatch
    and `alpha = v / (1 - IoU + v + eps)` held constant (`stop_gradient`, torch's no_grad).

    Deliberate differences: `eps` applies to the DIoU part too (torchvision always uses 1e-7
    there; the same for the default eps); a zero height reads `atan(w / 0)` as `+-pi/2` with a
    finite gradient (torch: NaN gradient), and a zero-size box has angle 0 (torch: NaN).
    """
    boxes1, boxes2 = _check_boxes(boxes1, boxes2, reduction)
    iou, _ = iou_terms(boxes1, boxes2, eps)
    diou = 1.0 - iou + centre_distance_term(boxes1, boxes2, eps)
    v = (4 / jnp.pi**2) * jnp.square(aspect_angle(boxes2) - aspect_angle(boxes1))
    alpha = jax.lax.stop_gradient(safe_divide(v, 1.0 - iou + v + eps))
    return reduce_mean_sum(diou + alpha * v, reduction)


# ----------------------------------------------------------------------------- L1


def abs_sign_grad(d):
    """`|d|` with torch's gradient `sign(d)`: 0 at d = 0 (the gradient of `jnp.abs` is 1 there)."""
    return d * jnp.sign(d)


def _check_pair(input, target, reduction):
    check_choice("reduction", reduction, REDUCTIONS)
    x, y = as_float32(input, "input"), as_float32(target, "target")
    if x.shape != y.shape:
        raise ValueError(f"target must have the input's shape {x.shape}; got {y.shape}")
    return x, y


def l1_loss(input, target, *, reduction: str = "mean"):
    """`torch.nn.functional.l1_loss`: `|input - target|`, float32. Shapes must match (torch
    broadcasts with a warning); an empty "mean" is 0 (torch: NaN)."""
    x, y = _check_pair(input, target, reduction)
    return reduce_mean_sum(abs_sign_grad(x - y), reduction)


def smooth_l1_loss(input, target, *, beta=1.0, reduction: str = "mean"):
    """`torch.nn.functional.smooth_l1_loss`: `0.5 d^2 / beta` where `|d| < beta`, else
    `|d| - 0.5 beta`, with `d = input - target`; `beta = 0` is the L1 loss. float32.
    Shapes must match (torch broadcasts with a warning); an empty "mean" is 0 (torch: NaN)."""
    if isinstance(beta, (int, float)) and beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    x, y = _check_pair(input, target, reduction)
    d = abs_sign_grad(x - y)
    beta = jnp.asarray(beta, jnp.float32)
    quadratic = 0.5 * jnp.square(d) / jnp.where(beta > 0, beta, 1.0)
    return reduce_mean_sum(jnp.where(d < beta, quadratic, d - 0.5 * beta), reduction)
