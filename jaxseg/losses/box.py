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
    """`1 - IoU` of elementwise pairs of xyxy boxes, with torchvision's box-loss IoU.

    `loss = 1 - inter / (union + eps)`, the IoU convention of torchvision's box losses. Identical
    boxes give ~0 (`eps / (area + eps)`), disjoint ones 1.

    Args:
      boxes1: `[..., 4]` xyxy boxes (int or float; computed in float32), e.g. the predictions.
      boxes2: `[..., 4]` xyxy boxes, e.g. the targets; leading dims broadcast against `boxes1`.
      eps: added to the denominators, as torchvision.
      reduction: "none" (the default, as torchvision), "mean" over all pairs (0 for an empty
        array, as torchvision) or "sum".

    Returns:
      float32 `[...]` (the broadcast leading shape) for "none", else a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import iou_loss
      >>> box = jnp.array([0.0, 0.0, 2.0, 2.0])
      >>> others = jnp.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 5.0, 2.0]])
      >>> print([round(float(v), 4) for v in iou_loss(box, others)])  # identical, overlapping, disjoint
      [0.0, 0.8571, 1.0]

    References:
      - The IoU of torchvision's `ops.generalized_box_iou_loss` and its siblings (torchvision has no
        plain IoU loss).
      - Yu et al., 2016, [UnitBox: An Advanced Object Detection Network](https://arxiv.org/abs/1608.01471)
        introduced the IoU loss as `-log(IoU)`; this is the `1 - IoU` form.
    """
    boxes1, boxes2 = _check_boxes(boxes1, boxes2, reduction)
    iou, _ = iou_terms(boxes1, boxes2, eps)
    return reduce_mean_sum(1.0 - iou, reduction)


def giou_loss(boxes1, boxes2, *, eps=1e-7, reduction: str = "none"):
    """Generalized IoU loss, `torchvision.ops.generalized_box_iou_loss`.

    `loss = 1 - IoU + (area(C) - union) / (area(C) + eps)` with C the smallest box enclosing both;
    in [0, 2). Unlike `1 - IoU` it keeps growing (and has a gradient) for disjoint boxes.

    Args:
      boxes1: `[..., 4]` xyxy boxes (int or float; computed in float32), e.g. the predictions.
      boxes2: `[..., 4]` xyxy boxes, e.g. the targets; leading dims broadcast against `boxes1`.
      eps: added to the denominators, as torchvision.
      reduction: "none" (the default, as torchvision), "mean" over all pairs (0 for an empty
        array, as torchvision) or "sum".

    Returns:
      float32 `[...]` (the broadcast leading shape) for "none", else a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import giou_loss
      >>> box = jnp.array([0.0, 0.0, 2.0, 2.0])
      >>> others = jnp.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 5.0, 2.0]])
      >>> print([round(float(v), 4) for v in giou_loss(box, others)])  # identical, overlapping, disjoint
      [0.0, 1.0794, 1.2]

    References:
      - `torchvision.ops.generalized_box_iou_loss`.
      - Rezatofighi et al., 2019, [Generalized Intersection over Union: A Metric and A Loss for
        Bounding Box Regression](https://arxiv.org/abs/1902.09630).
    """
    boxes1, boxes2 = _check_boxes(boxes1, boxes2, reduction)
    iou, union = iou_terms(boxes1, boxes2, eps)
    enclosing = box_area(enclosing_box(boxes1, boxes2))
    return reduce_mean_sum(1.0 - iou + safe_divide(enclosing - union, enclosing + eps), reduction)


def diou_loss(boxes1, boxes2, *, eps=1e-7, reduction: str = "none"):
    """Distance-IoU loss, `torchvision.ops.distance_box_iou_loss` (Zheng et al. 2020).

    `loss = 1 - IoU + d^2 / (c^2 + eps)`, with d the distance of the box centres and c the diagonal
    of the smallest enclosing box.

    Args:
      boxes1: `[..., 4]` xyxy boxes (int or float; computed in float32), e.g. the predictions.
      boxes2: `[..., 4]` xyxy boxes, e.g. the targets; leading dims broadcast against `boxes1`.
      eps: added to the denominators, as torchvision.
      reduction: "none" (the default, as torchvision), "mean" over all pairs (0 for an empty
        array, as torchvision) or "sum".

    Returns:
      float32 `[...]` (the broadcast leading shape) for "none", else a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import diou_loss
      >>> box = jnp.array([0.0, 0.0, 2.0, 2.0])
      >>> others = jnp.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 5.0, 2.0]])
      >>> print([round(float(v), 4) for v in diou_loss(box, others)])  # identical, overlapping, disjoint
      [0.0, 0.9683, 1.3103]

    References:
      - `torchvision.ops.distance_box_iou_loss`.
      - Zheng et al., 2020, [Distance-IoU Loss: Faster and Better Learning for Bounding Box
        Regression](https://arxiv.org/abs/1911.08287).
    """
    boxes1, boxes2 = _check_boxes(boxes1, boxes2, reduction)
    iou, _ = iou_terms(boxes1, boxes2, eps)
    return reduce_mean_sum(1.0 - iou + centre_distance_term(boxes1, boxes2, eps), reduction)


def ciou_loss(boxes1, boxes2, *, eps=1e-7, reduction: str = "none"):
    """Complete-IoU loss, `torchvision.ops.complete_box_iou_loss` (Zheng et al. 2020).

    `loss = 1 - IoU + d^2 / (c^2 + eps) + alpha v`: the DIoU loss plus the aspect-ratio mismatch
    `v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2`, weighted by `alpha = v / (1 - IoU + v + eps)`
    held constant (`stop_gradient`, torch's `no_grad`).

    Deliberate differences: `eps` applies to the DIoU part too (torchvision always uses 1e-7 there;
    the same for the default eps); a zero height reads `atan(w / 0)` as `+-pi/2` with a finite
    gradient (torch: NaN gradient), and a zero-size box has angle 0 (torch: NaN).

    Args:
      boxes1: `[..., 4]` xyxy boxes (int or float; computed in float32), e.g. the predictions.
      boxes2: `[..., 4]` xyxy boxes, e.g. the targets; leading dims broadcast against `boxes1`.
      eps: added to the denominators, as torchvision.
      reduction: "none" (the default, as torchvision), "mean" over all pairs (0 for an empty
        array, as torchvision) or "sum".

    Returns:
      float32 `[...]` (the broadcast leading shape) for "none", else a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import ciou_loss, diou_loss
      >>> box = jnp.array([0.0, 0.0, 2.0, 2.0])
      >>> taller = jnp.array([1.0, 1.0, 3.0, 4.0])  # shifted and of another aspect ratio
      >>> print(f"{float(diou_loss(box, taller)):.4f} {float(ciou_loss(box, taller)):.4f}")
      1.0189 1.0192

    References:
      - `torchvision.ops.complete_box_iou_loss`.
      - Zheng et al., 2020, [Distance-IoU Loss: Faster and Better Learning for Bounding Box
        Regression](https://arxiv.org/abs/1911.08287).
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
    """L1 loss, `torch.nn.functional.l1_loss`.

    `loss = |input - target|`, with torch's gradient `sign(input - target)` (0 where they are equal).
    Shapes must match (torch broadcasts with a warning); an empty "mean" is 0 (torch: NaN).

    Args:
      input: float array, any float dtype (computed in float32).
      target: float array of the same shape.
      reduction: "mean", "sum" or "none".

    Returns:
      float32 scalar, or the elementwise loss for "none".

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import l1_loss
      >>> x, y = jnp.array([0.5, 2.0, -1.0]), jnp.array([0.0, 0.0, -1.0])
      >>> print(f"{float(l1_loss(x, y)):.4f}")
      0.8333
      >>> print([round(float(g), 4) for g in jax.grad(l1_loss)(x, y)])  # torch's sign: 0 where x == y
      [0.3333, 0.3333, 0.0]

    References:
      - `torch.nn.functional.l1_loss`.
    """
    x, y = _check_pair(input, target, reduction)
    return reduce_mean_sum(abs_sign_grad(x - y), reduction)


def smooth_l1_loss(input, target, *, beta=1.0, reduction: str = "mean"):
    """Smooth L1 loss, `torch.nn.functional.smooth_l1_loss`.

    `loss = 0.5 d^2 / beta` where `|d| < beta`, else `|d| - 0.5 beta`, with `d = input - target`;
    `beta = 0` is the L1 loss. Shapes must match (torch broadcasts with a warning); an empty "mean"
    is 0 (torch: NaN).

    Args:
      input: float array, any float dtype (computed in float32).
      target: float array of the same shape.
      beta: threshold between the quadratic and the linear part, >= 0 (float or traced scalar).
      reduction: "mean", "sum" or "none".

    Returns:
      float32 scalar, or the elementwise loss for "none".

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import smooth_l1_loss
      >>> x, y = jnp.array([0.5, 2.0, -1.0]), jnp.array([0.0, 0.0, -1.0])
      >>> print([round(float(v), 4) for v in smooth_l1_loss(x, y, reduction="none")])  # quadratic, linear, 0
      [0.125, 1.5, 0.0]

    References:
      - `torch.nn.functional.smooth_l1_loss`.
      - Girshick, 2015, [Fast R-CNN](https://arxiv.org/abs/1504.08083) (the smooth L1 loss, beta = 1).
    """
    if isinstance(beta, (int, float)) and beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    x, y = _check_pair(input, target, reduction)
    d = abs_sign_grad(x - y)
    beta = jnp.asarray(beta, jnp.float32)
    quadratic = 0.5 * jnp.square(d) / jnp.where(beta > 0, beta, 1.0)
    return reduce_mean_sum(jnp.where(d < beta, quadratic, d - 0.5 * beta), reduction)
