"""Lovász losses (Berman et al. 2018), smp 0.5 `LovaszLoss` semantics, with static shapes.

smp removes ignored pixels by boolean indexing. Here they stay in place but sort last (their
error key is below every real error) and contribute 0: the Lovász gradient of the pixels
before them depends only on cumulative sums up to their position, so the loss and its
gradient equal those computed on the valid pixels alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.losses._common import (
    MODES,
    REDUCTIONS,
    as_float32,
    check_choice,
    check_class_labels,
    class_targets,
    elementwise_targets,
    reduce_per_image,
    sigmoid_targets,
)


def lovasz_grad(gt_sorted):
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted descending.

    gt_sorted: `[..., N]` 0/1 ground truth in that order. Returns `[..., N]`.
    """
    gts = jnp.sum(gt_sorted, axis=-1, keepdims=True)
    intersection = gts - jnp.cumsum(gt_sorted, axis=-1)
    union = gts + jnp.cumsum(1.0 - gt_sorted, axis=-1)  # >= 1 at every position
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[..., :1], jnp.diff(jaccard, axis=-1)], axis=-1)


def sorted_lovasz(errors, ground_truth, valid):
    """`<relu(errors sorted descending), lovasz_grad(ground truth in that order)>` over the last
    axis, invalid entries sorted last with weight 0. All inputs `[..., N]`; returns `[...]`."""
    key = jnp.where(valid > 0, errors, -jnp.inf)
    neg_sorted, gt_sorted = jax.lax.sort((-key, ground_truth), dimension=-1, num_keys=1)
    return jnp.sum(jax.nn.relu(-neg_sorted) * lovasz_grad(gt_sorted), axis=-1)


def lovasz_hinge_terms(logits, targets, valid, *, per_image: bool):
    """Binary Lovász hinge on `[B, ...]` logits and 0/1 targets: `[B]` or `[]`."""
    flat = (lambda a: a.reshape(a.shape[0], -1)) if per_image else (lambda a: a.reshape(-1))
    errors = 1.0 - logits * (2.0 * targets - 1.0)
    return sorted_lovasz(flat(errors), flat(targets), flat(valid))


def lovasz_softmax_terms(probs, targets, valid, *, per_image: bool):
    """Multiclass Lovász-softmax over the classes present in the target (smp `classes="present"`).

    probs, targets: `[B, ..., C]` (targets one-hot, zero where invalid); valid: `[B, ...]`.
    Returns `[B]` (per image) or `[]`; 0 when no class is present.
    """
    groups = probs.shape[0] if per_image else 1
    num_classes = probs.shape[-1]
    to_rows = lambda a: jnp.swapaxes(a.reshape(groups, -1, num_classes), 1, 2)  # [G, C, N]
    fg = to_rows(targets)
    errors = jnp.abs(fg - to_rows(probs))
    valid_rows = jnp.broadcast_to(valid.reshape(groups, 1, -1), fg.shape)
    per_class = sorted_lovasz(errors, fg, valid_rows)  # [G, C]
    present = (jnp.sum(fg, axis=-1) > 0).astype(jnp.float32)
    loss = jnp.sum(per_class * present, axis=-1) / jnp.maximum(jnp.sum(present, axis=-1), 1.0)
    return loss if per_image else loss[0]


def lovasz_loss(
    logits,
    labels,
    *,
    mode: str = "multiclass",
    per_image: bool = False,
    ignore_index=None,
    mask=None,
    reduction: str = "mean",
):
    """Lovász loss, smp 0.5 `LovaszLoss`.

    mode="multiclass": Lovász-softmax on `softmax(logits)` `[B, ..., C]` with int labels
      `[B, ...]` (or one-hot float targets), averaged over the classes present.
    mode="binary"/"multilabel": Lovász hinge on logits and 0/1 labels of one shape (binary
      also `[B, ..., 1]` logits with `[B, ...]` labels), all channels flattened together.
    per_image: one loss per image (reduction="none" -> `[B]`), else one for the batch.
    ignore_index / mask: ignored pixels (mask == 0) contribute nothing (see module note).
    """
    check_choice("mode", mode, MODES)
    check_choice("reduction", reduction, REDUCTIONS)
    x = as_float32(logits)
    if mode == "multiclass":
        check_class_labels(logits, labels)
        t = class_targets(labels, x.shape[-1], ignore_index=ignore_index, mask=mask)
        targets = t.targets * (t.valid > 0)[..., None]
        loss = lovasz_softmax_terms(jax.nn.softmax(x), targets, t.valid, per_image=per_image)
    else:
        labels = elementwise_targets(x, labels, mode)
        targets, valid = sigmoid_targets(labels, ignore_index=ignore_index, mask=mask)
        loss = lovasz_hinge_terms(x, targets, valid, per_image=per_image)
    return reduce_per_image(loss, reduction)
