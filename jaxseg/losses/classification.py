"""Per-element classification losses: softmax and sigmoid cross-entropy, focal losses.

All take logits of any float dtype and compute in float32. The private `*_terms` functions
hold each formula once; the composite segmentation loss calls them on shared log-probabilities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.losses._common import (
    MODES,
    REDUCTIONS,
    ClassTargets,
    as_float32,
    check_choice,
    check_class_labels,
    class_targets,
    elementwise_targets,
    logsumexp,
    optional_float32,
    reduce_weighted,
    sigmoid_targets,
)
from jaxseg.losses._softmax import SoftmaxStats, softmax_stats


def check_class_weights(class_weights, num_classes: int):
    """`None` or a `[C]` float32 vector (a shape error names both sizes)."""
    if class_weights is None:
        return None
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
        raise ValueError(
            f"class_weights must have shape ({num_classes},) for {num_classes} classes; got {class_weights.shape}"
        )
    return class_weights


# ----------------------------------------------------------------------------- softmax


def is_zero(value) -> bool:
    """True for a Python number equal to 0 (a static zero: the term can be skipped)."""
    return isinstance(value, (int, float)) and value == 0


def cross_entropy_terms(logits, lse, label_logit, t: ClassTargets, class_weights, label_smoothing):
    """Per-element torch cross-entropy and its normaliser.

    Args:
      logits: `[..., C]` float32.  lse: `[...]` log-sum-exp of the logits.
      label_logit: `[...]` logit of the label (integer labels), else None.
      t: targets from `class_targets`.  class_weights: `[C]` or None.
      label_smoothing: scalar (may be traced; a Python 0 skips the smoothing term).

    Returns:
      (loss `[...]` already weighted by `t.valid`, normaliser `[...]`) so that the torch
      "mean" is `sum(loss) / sum(normaliser)`.
    """
    num_classes = logits.shape[-1]
    eps = jnp.asarray(label_smoothing, jnp.float32)
    if t.labels is not None:
        # Integer labels: torch's (1 - eps) * w_y * nll + eps / C * sum_c w_c * (-log p_c),
        # normalised by sum of w_y over valid elements.
        w_y = jnp.ones_like(lse) if class_weights is None else class_weights[t.labels]
        loss = w_y * (lse - label_logit)
        if not is_zero(label_smoothing):
            if class_weights is None:
                smooth = num_classes * lse - jnp.sum(logits, axis=-1)
            else:
                smooth = jnp.sum(class_weights) * lse - jnp.sum(class_weights * logits, axis=-1)
            loss = (1.0 - eps) * loss + (eps / num_classes) * smooth
        return loss * t.valid, w_y * t.valid
    # Probability targets: smoothed to y * (1 - eps) + eps / C; torch's mean divides by rows.
    targets = t.targets * (1.0 - eps) + eps / num_classes
    if class_weights is not None:
        targets = targets * class_weights
    loss = jnp.sum(targets, axis=-1) * lse - jnp.sum(targets * logits, axis=-1)
    return loss * t.valid, t.valid


def log1m_softmax(logits, lse):
    """`log(1 - softmax(logits))` for every class, accurate when a probability is close to 1.

    `1 - p_c` is the softmax mass of the other classes, `sum_{c' != c} exp(x_c')`: for every
    class but the arg-max it is taken relative to the maximum (the sum is then >= 1, no
    cancellation); for the arg-max class relative to the second largest logit. Gradients stay
    finite for saturated logits (+-1e4), which a `log1p(-p)` would not give.
    """
    num_classes = logits.shape[-1]
    if num_classes == 1:
        # One class: p = 1 always. A large negative finite value keeps exp(gamma * .) finite.
        return jnp.full_like(logits, -1e30)
    top = jnp.argmax(logits, axis=-1)[..., None]
    is_top = jnp.arange(num_classes) == top
    without_top = jnp.where(is_top, -jnp.inf, logits)  # masked before exp: no inf * 0 in the gradient
    max1 = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    max2 = jax.lax.stop_gradient(jnp.max(without_top, axis=-1, keepdims=True))
    rel1 = jnp.exp(logits - max1)
    others_of_top = jnp.sum(jnp.exp(without_top - max2), axis=-1, keepdims=True)
    others = jnp.where(is_top, 1.0, jnp.sum(rel1, axis=-1, keepdims=True) - rel1)
    log_mass = jnp.where(is_top, jnp.log(others_of_top) + max2, jnp.log(others) + max1)
    return log_mass - lse[..., None]


def softmax_focal_terms(logits, t: ClassTargets, class_weights, gamma, alpha, stats: SoftmaxStats | None):
    """Per-element softmax focal loss `-alpha_y * w_y * (1 - p_y)^gamma * log p_y` and normaliser.

    Integer labels read `log p_y` and `log(1 - p_y)` from `stats` (the log-sum-exp of the
    other classes keeps the latter finite at saturated logits). Soft targets sum the same term
    over classes weighted by the target. The normaliser is the cross-entropy one, so
    `gamma = 0` (and no alpha) gives exactly `cross_entropy`.
    """
    gamma = jnp.asarray(gamma, jnp.float32)
    if t.labels is not None:
        assert stats is not None, "integer labels need their softmax statistics"
        log_p = stats.label_logit - stats.lse
        # One class: p_y = 1; a large negative finite value keeps exp(gamma * .) finite.
        log_1mp = jnp.full_like(log_p, -1e30) if stats.other_lse is None else stats.other_lse - stats.lse
        w_y = jnp.ones_like(log_p) if class_weights is None else class_weights[t.labels]
        loss = -jnp.exp(gamma * log_1mp) * log_p * w_y
        if alpha is not None:
            loss = loss * alpha[t.labels]
        return loss * t.valid, w_y * t.valid
    lse = logsumexp(logits)
    modulator = jnp.exp(gamma * log1m_softmax(logits, lse))
    per_class = t.targets * modulator * (lse[..., None] - logits)
    if alpha is not None:
        per_class = per_class * alpha
    if class_weights is not None:
        per_class = per_class * class_weights
    return jnp.sum(per_class, axis=-1) * t.valid, t.valid


def label_stats(logits, t: ClassTargets, **options) -> SoftmaxStats:
    """`softmax_stats` for integer labels; the log-sum-exp of the other classes needs C >= 2."""
    if options.get("other_lse") and logits.shape[-1] < 2:
        options["other_lse"] = False
    return softmax_stats(logits, t.labels, t.valid, **options)


def multiclass_alpha(alpha, num_classes: int):
    """Focal alpha per class: a `[C]` vector as given, or a scalar as MONAI's softmax focal
    (`1 - alpha` for class 0, `alpha` for the others)."""
    if alpha is None:
        return None
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha.ndim == 0:
        return jnp.where(jnp.arange(num_classes) == 0, 1.0 - alpha, alpha)
    if alpha.shape != (num_classes,):
        raise ValueError(f"alpha must be a scalar or have shape ({num_classes},); got {alpha.shape}")
    return alpha


def cross_entropy(
    logits,
    labels,
    *,
    class_weights=None,
    ignore_index=None,
    label_smoothing=0.0,
    mask=None,
    reduction: str = "mean",
):
    """Softmax cross-entropy, the value of `torch.nn.functional.cross_entropy`.

    Args:
      logits: `[..., C]` unnormalised scores, any float dtype.
      labels: int `[...]` class ids, or float `[..., C]` probability targets.
      class_weights: optional `[C]`; "mean" divides by `sum(w[y])` over valid elements
        (torch's weighted mean); with probability targets by the number of rows.
      ignore_index: label id that contributes nothing (integer labels only).
      label_smoothing: torch's formula, `(1 - eps) * nll + eps / C * sum_c w_c * (-log p_c)`.
      mask: optional `[...]` element weights, combined with `ignore_index`.
      reduction: "mean", "sum" or "none" (`[...]`, zero where ignored).

    Returns:
      float32 loss. Deliberate difference: if every element is ignored the mean is 0 with a
      zero gradient (torch returns NaN).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_class_labels(logits, labels)
    x = as_float32(logits)
    t = class_targets(labels, x.shape[-1], ignore_index=ignore_index, mask=mask)
    weights = check_class_weights(class_weights, x.shape[-1])
    if t.labels is None:
        loss, norm = cross_entropy_terms(x, logsumexp(x), None, t, weights, label_smoothing)
    else:
        stats = label_stats(x, t)
        loss, norm = cross_entropy_terms(x, stats.lse, stats.label_logit, t, weights, label_smoothing)
    return reduce_weighted(loss, norm, reduction)


# ----------------------------------------------------------------------------- sigmoid


def sigmoid_cross_entropy(logits, targets, pos_weight=None):
    """Elementwise `binary_cross_entropy_with_logits`: `(1 - y) x + (1 + (pw - 1) y) softplus(-x)`."""
    if pos_weight is None:
        return (1.0 - targets) * logits + jax.nn.softplus(-logits)
    return (1.0 - targets) * logits + (1.0 + (pos_weight - 1.0) * targets) * jax.nn.softplus(-logits)


def log1m_sigmoid_pt(logits, targets):
    """`log(1 - p_t)` for torchvision's `p_t = p * y + (1 - p) * (1 - y)`, in log space.

    `1 - p_t = sigmoid(x) * (1 - y) + sigmoid(-x) * y`, so soft targets are exact too, and the
    gradient of `(1 - p_t)^gamma` stays finite for gamma < 1 at saturated logits.
    """
    return jnp.logaddexp(
        jax.nn.log_sigmoid(logits) + jnp.log1p(-targets), jax.nn.log_sigmoid(-logits) + jnp.log(targets)
    )


def log1m_exp_neg(bce, targets, logits):
    """`log(1 - exp(-bce))`: smp's focal term `1 - pt` with `pt = exp(-bce)`, in log space.

    For hard targets it equals `log sigmoid(-+x)`, used directly so saturated logits keep a
    finite gradient; for soft targets `bce >= entropy(y) > 0` and the log1mexp form is safe.
    """
    hard = (targets == 0.0) | (targets == 1.0)
    hard_value = jax.nn.log_sigmoid(jnp.where(targets > 0.5, -logits, logits))
    soft_bce = jnp.maximum(jnp.where(hard, 1.0, bce), 1e-30)
    soft_value = jnp.where(soft_bce < 0.6931472, jnp.log(-jnp.expm1(-soft_bce)), jnp.log1p(-jnp.exp(-soft_bce)))
    return jnp.where(hard, hard_value, soft_value)


def binary_alpha_weight(alpha, targets):
    """`alpha * y + (1 - alpha) * (1 - y)`."""
    return alpha * targets + (1.0 - alpha) * (1.0 - targets)


def binary_cross_entropy(
    logits,
    targets,
    *,
    pos_weight=None,
    weights=None,
    ignore_index=None,
    label_smoothing=0.0,
    mask=None,
    reduction: str = "mean",
):
    """Sigmoid cross-entropy, the value of `torch.nn.functional.binary_cross_entropy_with_logits`.

    Args:
      logits: `[...]` scores (any float dtype); targets: same shape, values in [0, 1].
      pos_weight: weight of positives, broadcast along the last axis (torch `pos_weight`).
      weights: element weights broadcastable to `logits` (torch `weight`).
      ignore_index: target value that contributes nothing (smp `SoftBCEWithLogitsLoss`).
      label_smoothing: smp's `smooth_factor`: targets become `y (1 - s) + (1 - y) s`.
      mask: optional element weights, combined with `ignore_index`.
      reduction: "mean" divides by the number of non-ignored elements (torch divides by all
        elements, equal when nothing is ignored; smp divides by all elements even when some
        are ignored), "sum", or "none".
    """
    check_choice("reduction", reduction, REDUCTIONS)
    x = as_float32(logits)
    if jnp.shape(targets) != x.shape:
        raise ValueError(f"targets must have the logits' shape {x.shape}; got {jnp.shape(targets)}")
    y, valid = sigmoid_targets(targets, ignore_index=ignore_index, mask=mask)
    s = jnp.asarray(label_smoothing, jnp.float32)
    y = y * (1.0 - s) + (1.0 - y) * s
    loss = sigmoid_cross_entropy(x, y, optional_float32(pos_weight))
    if weights is not None:
        loss = loss * jnp.asarray(weights, jnp.float32)
    return reduce_weighted(loss * valid, valid, reduction)


def sigmoid_focal_loss(logits, targets, *, alpha=0.25, gamma=2.0, reduction: str = "none"):
    """`torchvision.ops.sigmoid_focal_loss`: `bce * (1 - p_t)^gamma`, times `alpha_t` if alpha >= 0.

    Computed in log space, so gamma in [0, 1) keeps finite gradients at saturated logits (the
    torchvision power form gives NaN there); values are the same.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    x = as_float32(logits)
    if jnp.shape(targets) != x.shape:
        raise ValueError(f"targets must have the logits' shape {x.shape}; got {jnp.shape(targets)}")
    y = jnp.asarray(targets, jnp.float32)
    loss = sigmoid_cross_entropy(x, y) * jnp.exp(jnp.asarray(gamma, jnp.float32) * log1m_sigmoid_pt(x, y))
    if alpha is not None:
        alpha = jnp.asarray(alpha, jnp.float32)
        loss = loss * jnp.where(alpha >= 0, binary_alpha_weight(alpha, y), 1.0)
    if reduction == "none":
        return loss
    return jnp.sum(loss) if reduction == "sum" else jnp.mean(loss)


def focal_loss(
    logits,
    labels,
    *,
    mode: str = "multiclass",
    gamma=2.0,
    alpha=None,
    ignore_index=None,
    class_weights=None,
    mask=None,
    reduction: str = "mean",
):
    """Focal loss (Lin et al. 2017).

    mode="multiclass": softmax focal, `-alpha_y w_y (1 - p_y)^gamma log p_y`, normalised as
      `cross_entropy` (so gamma=0 equals it). labels: int `[...]` or float `[..., C]`.
      alpha: `[C]`, or a scalar read as MONAI's `[1 - alpha, alpha, ..., alpha]`.
      (smp's "multiclass" FocalLoss is one-vs-rest sigmoid; use mode="multilabel" on one-hot
      targets for that.)
    mode="binary"/"multilabel": smp `FocalLoss`: `bce * (1 - pt)^gamma` with `pt = exp(-bce)`,
      times `alpha y + (1 - alpha)(1 - y)` if alpha is set; the mean runs over non-ignored
      elements. Binary takes logits `[..., 1]` and labels `[...]` or `[..., 1]`; multilabel
      logits and targets `[..., C]`. class_weights `[C]` weight the channels (weighted mean).

    The modulating factor is computed in log space: finite gradients for gamma in [0, 1) at
    saturated logits. Returns float32; "none" gives the per-element loss.
    """
    check_choice("mode", mode, MODES)
    check_choice("reduction", reduction, REDUCTIONS)
    x = as_float32(logits)
    weights = check_class_weights(class_weights, x.shape[-1])
    if mode == "multiclass":
        check_class_labels(logits, labels)
        t = class_targets(labels, x.shape[-1], ignore_index=ignore_index, mask=mask)
        stats = None if t.labels is None else label_stats(x, t, other_lse=True)
        loss, norm = softmax_focal_terms(x, t, weights, gamma, multiclass_alpha(alpha, x.shape[-1]), stats)
        return reduce_weighted(loss, norm, reduction)
    labels = elementwise_targets(x, labels, mode)
    y, valid = sigmoid_targets(labels, ignore_index=ignore_index, mask=mask)
    bce = sigmoid_cross_entropy(x, y)
    loss = bce * jnp.exp(jnp.asarray(gamma, jnp.float32) * log1m_exp_neg(bce, y, x))
    if alpha is not None:
        loss = loss * binary_alpha_weight(jnp.asarray(alpha, jnp.float32), y)
    if weights is not None:
        loss, valid = loss * weights, valid * weights
    return reduce_weighted(loss * valid, valid, reduction)
