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

    - `classes`: `torchvision.ops.sigmoid_focal_loss` of every (location, class), summed and
      divided by the number of positive locations;
    - `box`: GIoU loss of the predicted against the assigned box at positive locations,
      weighted by the target centerness and divided by its sum;
    - `centerness`: sigmoid cross-entropy of the centerness logit at positive locations,
      divided by the number of positives.
    Normalisers are batch totals (at least 1), so the loss of a sharded batch is the loss of
    the whole batch. `weights` scale the three terms.

    Args:
      class_logits: `[B, N, C]`; distances: `[B, N, 4]` predicted `(l, t, r, b)`;
      centerness_logits: `[B, N]`; targets: `Targets` with leading `[B]`; points: `[N, 2]`.
      image_mask: optional `[B]` weights (0 for padding images).
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
