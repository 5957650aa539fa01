"""Lovász losses (Berman et al. 2018), smp 0.5 `LovaszLoss` semantics, with static shapes.

smp removes ignored pixels by boolean indexing. Here they stay in place but sort last (their
error key is below every real error) and contribute 0: the Lovász gradient of the pixels
before them depends only on cumulative sums up to their position, so the loss and its
gradient equal those computed on the valid pixels alone.

The sort dominates the cost. XLA's CPU sort is several times slower with a payload operand
(or on float keys) than on one integer operand, so each error is mapped to an order-preserving
int32 and packed with its index into one int64 key: one single-operand sort yields both the
sorted errors (exactly, decoded from the key) and the permutation. The backward pass scatters
the Lovász gradient back through that permutation instead of differentiating the sort.
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
    seen_fg = jnp.cumsum(gt_sorted, axis=-1)
    seen = jax.lax.broadcasted_iota(gt_sorted.dtype, gt_sorted.shape, gt_sorted.ndim - 1) + 1.0
    intersection = gts - seen_fg
    union = gts + seen - seen_fg  # >= 1 at every position
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[..., :1], jnp.diff(jaccard, axis=-1)], axis=-1)


def _sortable(bits):
    """Order-preserving map between float32 bit patterns (as int32) and int32; an involution."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _enable_x64():
    context = getattr(jax, "enable_x64", None)
    if context is None:  # older JAX
        from jax.experimental import enable_x64 as context
    return context(True)


MAX_UNROLLED_ROWS = 64


def _sort_rows(keys):
    """Sort along the last axis. A few rows are sorted one by one: XLA's CPU sort of a 1-D
    array ran 1.5x faster per element than the same rows sorted as one batched array."""
    rows = keys.reshape(-1, keys.shape[-1])
    if rows.shape[0] > MAX_UNROLLED_ROWS:
        return jax.lax.sort(keys, dimension=keys.ndim - 1)
    return jnp.stack([jax.lax.sort(row) for row in rows]).reshape(keys.shape)


def _sort_descending(errors, ground_truth, valid):
    """Errors sorted descending (invalid ones last, reported as 0), the 0/1 ground truth in that
    order, and the permutation. Key layout (int64): high word the inverted sortable error, low
    word the ground-truth bit above the 31-bit index."""
    keys = _sortable(jax.lax.bitcast_convert_type(errors, jnp.int32))
    keys = jnp.where(valid > 0, keys, jnp.iinfo(jnp.int32).min)
    if keys.shape[-1] >= 2**31:
        raise ValueError(f"Lovász sorts at most 2**31 - 1 elements per row; got {keys.shape[-1]}")
    with _enable_x64():
        index = jax.lax.broadcasted_iota(jnp.int64, keys.shape, keys.ndim - 1)
        low = index | (ground_truth > 0.5).astype(jnp.int64) << 31
        packed = _sort_rows((~keys).astype(jnp.int64) << 32 | low)
        permutation = (packed & 0x7FFFFFFF).astype(jnp.int32)
        gt_sorted = ((packed >> 31) & 1).astype(jnp.float32)
        sorted_keys = ~(packed >> 32).astype(jnp.int32)
    sorted_valid = sorted_keys != jnp.iinfo(jnp.int32).min
    sorted_errors = jax.lax.bitcast_convert_type(_sortable(sorted_keys), jnp.float32)
    return jnp.where(sorted_valid, sorted_errors, 0.0), gt_sorted, permutation


def _lovasz_forward(errors, ground_truth, valid):
    sorted_errors, gt_sorted, permutation = _sort_descending(errors, ground_truth, valid)
    slope = lovasz_grad(gt_sorted) * (sorted_errors > 0)  # d loss / d sorted error, relu included
    return jnp.sum(sorted_errors * slope, axis=-1), (slope, permutation)


@jax.custom_vjp
def sorted_lovasz(errors, ground_truth, valid):
    """`<relu(errors sorted descending), lovasz_grad(ground truth in that order)>` over the last
    axis, invalid entries sorted last with weight 0. All inputs `[..., N]`; returns `[...]`.
    Differentiable w.r.t. `errors` only."""
    return _lovasz_forward(errors, ground_truth, valid)[0]


def _sorted_lovasz_fwd(errors, ground_truth, valid):
    loss, residuals = _lovasz_forward(errors, ground_truth, valid)
    return loss, residuals


def _sorted_lovasz_bwd(residuals, cotangent):
    slope, permutation = residuals
    sorted_grad = (slope * cotangent[..., None]).reshape(-1, slope.shape[-1])
    rows = permutation.reshape(-1, slope.shape[-1])
    unsort = jax.vmap(lambda values, index: jnp.zeros_like(values).at[index].set(values, unique_indices=True))
    return unsort(sorted_grad, rows).reshape(slope.shape), None, None


sorted_lovasz.defvjp(_sorted_lovasz_fwd, _sorted_lovasz_bwd)


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
    """Lovász loss, smp 0.5 `LovaszLoss`: a tractable surrogate of the Jaccard (IoU) loss.

    `loss = sum_i relu(e_(i)) g_i` over the errors `e` sorted descending, with `g` the gradient of the
    Lovász extension of the Jaccard loss at the ground truth in that order.

    - mode="multiclass": Lovász-softmax on `softmax(logits)` `[B, ..., C]` with int labels `[B, ...]`
      (or one-hot float targets; targets are read as 0/1 by `> 0.5`): errors `|y_c - p_c|` per class,
      averaged over the classes present (0 when none is).
    - mode="binary" / "multilabel": Lovász hinge, errors `1 - x (2y - 1)`, on logits and 0/1 labels of
      one shape (binary also `[B, ..., 1]` logits with `[B, ...]` labels), all channels flattened
      together.

    Ignored pixels stay in place but sort last and contribute nothing: loss and gradient equal those
    computed on the valid pixels alone (smp removes them by boolean indexing).

    Args:
      logits: `[B, ..., C]` (binary mode: `[B, ..., 1]`), any float dtype.
      labels: multiclass: int `[B, ...]` or one-hot float `[B, ..., C]`; binary: `[B, ...]` or
        `[B, ..., 1]`; multilabel: `[B, ..., C]`.
      mode: "multiclass", "binary" or "multilabel".
      per_image: one loss per image (reduction="none" -> `[B]`), else one for the batch.
      ignore_index: label value of ignored pixels.
      mask: optional pixel weights; pixels with `mask == 0` are ignored (other values count as 1).
      reduction: "mean" or "sum" over images with `per_image`, or "none".

    Returns:
      float32 scalar, or `[B]` with `per_image` and reduction="none".

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import lovasz_loss
      >>> logits = jnp.array([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [3.0, -3.0]]])  # [B=1, W=4, C=2]
      >>> labels = jnp.array([[0, 1, 1, -1]])  # the last pixel is ignored
      >>> print(f"{float(lovasz_loss(logits, labels, ignore_index=-1)):.4f}")
      0.4207
      >>> print(f"{float(lovasz_loss(logits[:, :3], labels[:, :3])):.4f}")  # the same without it
      0.4207

    References:
      - smp 0.5 `LovaszLoss` (Lovász-softmax over the present classes; Lovász hinge).
      - Berman et al., 2018, [The Lovász-Softmax loss: A tractable surrogate for the optimization of
        the intersection-over-union measure in neural networks](https://arxiv.org/abs/1705.08790).
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
