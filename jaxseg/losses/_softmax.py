"""Softmax statistics with one hand-written backward pass, shared by the multiclass losses.

Cross-entropy, focal, Dice/Jaccard/Tversky, generalized Dice and the boundary loss all read a
few reductions of `p = softmax(x)` with integer labels: the log-sum-exp and label logit per
element, the log-sum-exp of the other classes (focal's stable `log(1 - p_y)`), per-class sums
of `p` (and of `p` at the label), and `sum(p * W)` for a weight map.
Autodiff of those expressions makes XLA write several `[..., C]` temporaries per step (on CPU
each fresh 44 MB buffer costs more than the arithmetic) and, for the label gather, a
scatter-add. Here the forward pass writes no `[..., C]` array and the backward pass builds
the logits gradient in one elementwise expression:

    dx = p * (dp + r) + onehot * s + (1 - onehot) * q * g_o,
    dp = v * alpha + W * g_w,   r = g_lse - sum_c p dp - beta_y p_y,   q = softmax of the others

where `alpha` and `beta` are the cotangents of the class sums. The residuals pass an
optimization barrier so XLA does not keep the forward `exp` alive for the backward.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from jaxseg.losses._common import logsumexp


class SoftmaxStats(NamedTuple):
    """Reductions of `p = softmax(logits)`; fields not requested are None.

    lse:             `[...]` log-sum-exp of the logits.
    label_logit:     `[...]` logit of the label class.
    other_lse:       `[...]` log-sum-exp over the other classes (`log(1 - p_y) = other_lse - lse`).
    prob_sums:       `[C]` (or `[B, C]` per image) `sum v * p`.
    label_prob_sums: `[C]` (or `[B, C]`) `sum v^2 * p * onehot`, the soft true positives.
    weighted_sum:    `[]` `sum p * W`.
    """

    lse: jax.Array
    label_logit: jax.Array
    other_lse: jax.Array | None = None
    prob_sums: jax.Array | None = None
    label_prob_sums: jax.Array | None = None
    weighted_sum: jax.Array | None = None


def _label_segments(labels, num_classes: int, per_image: bool):
    """Flat segment ids for per-class (or per-image-and-class) sums of `[B, ...]` labels."""
    if not per_image:
        return labels.reshape(-1), num_classes
    batch = labels.shape[0]
    offsets = (jnp.arange(batch, dtype=jnp.int32) * num_classes).reshape((batch,) + (1,) * (labels.ndim - 1))
    return (labels + offsets).reshape(-1), batch * num_classes


def _class_axes(ndim: int, per_image: bool):
    return tuple(range(1 if per_image else 0, ndim - 1))


def _is_label(logits, labels):
    return jnp.arange(logits.shape[-1]) == labels[..., None]


def _forward(logits, labels, valid, weight_map, other_lse: bool, class_sums: bool, per_image: bool):
    num_classes = logits.shape[-1]
    lse = logsumexp(logits)
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    stats = SoftmaxStats(lse, label_logit)
    if other_lse:
        if num_classes < 2:
            raise ValueError("the log-sum-exp of the other classes needs at least 2 classes")
        stats = stats._replace(other_lse=logsumexp(jnp.where(_is_label(logits, labels), -jnp.inf, logits)))
    if class_sums:
        probs = jnp.exp(logits - lse[..., None])
        prob_sums = jnp.sum(probs * valid[..., None], axis=_class_axes(logits.ndim, per_image))
        label_probs = jnp.exp(label_logit - lse) * valid * valid
        segments, count = _label_segments(labels, num_classes, per_image)
        label_prob_sums = jax.ops.segment_sum(label_probs.reshape(-1), segments, num_segments=count)
        stats = stats._replace(prob_sums=prob_sums, label_prob_sums=label_prob_sums.reshape(prob_sums.shape))
    if weight_map is not None:
        stats = stats._replace(weighted_sum=jnp.sum(jnp.exp(logits - lse[..., None]) * weight_map))
    return stats


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _softmax_stats(logits, labels, valid, weight_map, other_lse, class_sums, per_image):
    return _forward(logits, labels, valid, weight_map, other_lse, class_sums, per_image)


def _softmax_stats_fwd(logits, labels, valid, weight_map, other_lse, class_sums, per_image):
    # symbolic_zeros=True wraps the array arguments as CustomVJPPrimal(value, perturbed).
    logits, labels, valid, weight_map = jax.tree.map(
        lambda a: a.value, (logits, labels, valid, weight_map), is_leaf=lambda a: isinstance(a, CustomVJPPrimal)
    )
    stats = _forward(logits, labels, valid, weight_map, other_lse, class_sums, per_image)
    return stats, (logits, labels, valid, weight_map, stats.lse, stats.label_logit, stats.other_lse)


def _nonzero(cotangent) -> bool:
    return cotangent is not None and not isinstance(cotangent, SymbolicZero)


def _softmax_stats_bwd(other_lse, class_sums, per_image, residuals, cotangents):
    # Cotangents of unused outputs arrive as SymbolicZero: their terms are left out entirely.
    logits, labels, valid, weight_map, lse, label_logit, others = residuals
    logits, lse, label_logit, others = jax.lax.optimization_barrier((logits, lse, label_logit, others))
    probs = jnp.exp(logits - lse[..., None])
    onehot = _is_label(logits, labels)
    zeros = jnp.zeros_like(lse)
    row = cotangents.lse if _nonzero(cotangents.lse) else zeros
    at_label = cotangents.label_logit if _nonzero(cotangents.label_logit) else None
    per_class = None  # dp, the cotangent of p from the class sums and the weighted sum
    alpha = cotangents.prob_sums if class_sums and _nonzero(cotangents.prob_sums) else None
    beta = cotangents.label_prob_sums if class_sums and _nonzero(cotangents.label_prob_sums) else None
    if alpha is not None:
        if per_image:
            alpha = alpha.reshape((alpha.shape[0],) + (1,) * (logits.ndim - 2) + (alpha.shape[-1],))
        per_class = valid[..., None] * alpha
    if beta is not None:
        segments, _ = _label_segments(labels, logits.shape[-1], per_image)
        beta = beta.reshape(-1)[segments].reshape(labels.shape) * valid * valid
        label_term = beta * jnp.exp(label_logit - lse)
        row = row - label_term
        at_label = label_term if at_label is None else at_label + label_term
    if weight_map is not None and _nonzero(cotangents.weighted_sum):
        weighted = weight_map * cotangents.weighted_sum
        per_class = weighted if per_class is None else per_class + weighted
    if per_class is not None:
        row = row - jnp.sum(probs * per_class, axis=-1)
        grad = probs * (per_class + row[..., None])
    else:
        grad = probs * row[..., None]
    if other_lse and _nonzero(cotangents.other_lse):
        grad = grad + jnp.where(onehot, 0.0, jnp.exp(logits - others[..., None]) * cotangents.other_lse[..., None])
    if at_label is not None:
        grad = grad + jnp.where(onehot, at_label[..., None], 0.0)
    return grad, None, None, None


_softmax_stats.defvjp(_softmax_stats_fwd, _softmax_stats_bwd, symbolic_zeros=True)


def softmax_stats(
    logits,
    labels,
    valid,
    *,
    other_lse: bool = False,
    class_sums: bool = False,
    per_image: bool = False,
    weight_map=None,
):
    """Softmax reductions of float32 `logits` `[B, ..., C]` with int `labels` `[B, ...]`.

    Args:
      logits: float32 `[..., C]`.
      labels: int32 `[...]`, every id in `[0, C)` (ignored elements carry any valid id and
        `valid == 0`).
      valid: float32 `[...]` element weights.
      other_lse: also return the log-sum-exp of the classes other than the label (C >= 2).
      class_sums: also return `prob_sums` and `label_prob_sums`.
      per_image: class sums per image `[B, C]` instead of over the whole batch `[C]`.
      weight_map: optional `[..., C]` weights for `weighted_sum` (no gradient flows to it).

    Returns:
      `SoftmaxStats`, differentiable w.r.t. `logits`.
    """
    return _softmax_stats(logits, labels, valid, weight_map, other_lse, class_sums, per_image)
