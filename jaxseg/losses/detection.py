"""The FCOS detection loss: focal classification, GIoU box regression, centerness BCE."""

from __future__ import annotations

import jax.numpy as jnp

from jaxseg.losses.box import giou_loss
from jaxseg.losses.classification import sigmoid_cross_entropy, sigmoid_focal_loss
from jaxseg.ops.fcos import Targets, distances_to_boxes


def fcos_loss(
    class_logits,
    distances,
    centerness_logits,
    targets: Targets,
    points,
    *,
    alpha=0.25,
    gamma=2.0,
    weights=(1.0, 1.0, 1.0),
    image_mask=None,
):
    """The FCOS objective (Tian et al. 2019) over a batch, as (total, terms).

    `total = weights[0] classes + weights[1] box + weights[2] centerness`, with

    - `classes`: `torchvision.ops.sigmoid_focal_loss` of every (location, class), summed and
      divided by the number of positive locations;
    - `box`: GIoU loss of the predicted against the assigned box at positive locations,
      weighted by the target centerness and divided by its sum;
    - `centerness`: sigmoid cross-entropy of the centerness logit against the target centerness
      at positive locations, divided by the number of positives.

    Normalisers are batch totals (the number of positives at least 1, the centerness sum at least
    1e-6), so the loss of a sharded batch is the loss of the whole batch. Padding images
    (`image_mask` 0) contribute nothing.

    Args:
      class_logits: `[B, N, C]` class logits at N locations.
      distances: `[B, N, 4]` predicted `(l, t, r, b)` from each location to its box's sides.
      centerness_logits: `[B, N]`.
      targets: `jaxseg.ops.fcos.Targets` with leading `[B]` (`assign_targets` per image, stacked).
      points: `[N, 2]` location coordinates `(x, y)` (`jaxseg.ops.fcos.locations`).
      alpha: focal alpha (torchvision's default 0.25).
      gamma: focal gamma (torchvision's default 2).
      weights: scales of the three terms (classes, box, centerness).
      image_mask: optional `[B]` weights (0 for padding images).

    Returns:
      `(total, terms)`: the float32 scalar total and a dict of the unweighted float32 terms
        `"classes"`, `"box"` and `"centerness"`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import fcos_loss
      >>> from jaxseg.ops.fcos import assign_targets, locations
      >>> points = locations(4, 4, stride=8)  # N = 16 locations of a 32 x 32 image
      >>> one = assign_targets(points, jnp.array([[0.0, 0.0, 24.0, 24.0]]), jnp.array([1]), jnp.array([True]),
      ...                      num_classes=2, stride=8)
      >>> targets = jax.tree.map(lambda a: a[None], one)  # a batch of one image
      >>> total, terms = fcos_loss(jnp.zeros((1, 16, 2)), targets.distances, jnp.zeros((1, 16)), targets, points)
      >>> print({name: round(float(value), 4) for name, value in terms.items()})  # exact boxes: box loss 0
      {'classes': 0.3755, 'box': 0.0, 'centerness': 0.6931}

    References:
      - Tian et al., 2019, [FCOS: Fully Convolutional One-Stage Object
        Detection](https://arxiv.org/abs/1904.01355).
      - `torchvision.ops.sigmoid_focal_loss` and `ops.generalized_box_iou_loss` for the terms. The
        centerness-weighted box term follows the FCOS reference implementation (tianzhi0549/FCOS);
        torchvision's `FCOSHead.compute_loss` divides an unweighted GIoU sum by the positives.
    """
    class_logits = jnp.asarray(class_logits, jnp.float32)
    image_mask = (
        jnp.ones(class_logits.shape[:1], jnp.float32) if image_mask is None else jnp.asarray(image_mask, jnp.float32)
    )
    positive = targets.positive.astype(jnp.float32) * image_mask[:, None]
    num_positive = jnp.maximum(jnp.sum(positive), 1.0)
    focal = sigmoid_focal_loss(class_logits, targets.classes, alpha=alpha, gamma=gamma, reduction="none")
    classes = jnp.sum(focal * image_mask[:, None, None]) / num_positive
    predicted = distances_to_boxes(points, jnp.asarray(distances, jnp.float32))
    # Negative locations get a valid dummy pair (identical boxes) so nothing divides by zero there.
    unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
    pair = targets.positive[..., None]
    box_terms = giou_loss(jnp.where(pair, predicted, unit), jnp.where(pair, targets.boxes, unit))
    box_weight = targets.centerness * positive
    box = jnp.sum(box_terms * box_weight) / jnp.maximum(jnp.sum(box_weight), 1e-6)
    bce = sigmoid_cross_entropy(jnp.asarray(centerness_logits, jnp.float32), targets.centerness)
    centre = jnp.sum(bce * positive) / num_positive
    terms = {"classes": classes, "box": box, "centerness": centre}
    total = weights[0] * classes + weights[1] * box + weights[2] * centre
    return total, terms
