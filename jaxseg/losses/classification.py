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

    `loss_i = -w_{y_i} log softmax(x_i)_{y_i}`, and "mean" is `sum_i v_i loss_i / sum_i v_i w_{y_i}`
    (torch's weighted mean; `v_i` is 0 where ignored, else `mask` or 1). Label smoothing `eps` uses
    torch's formula `(1 - eps) w_y (-log p_y) + eps / C sum_c w_c (-log p_c)`, normalised the same way.
    With probability targets `y` (smoothed to `y (1 - eps) + eps / C`), `loss_i = -sum_c w_c y_c log p_c`
    and "mean" divides by the number of rows (`sum_i v_i`), as torch.

    Args:
      logits: `[..., C]` unnormalised scores, any float dtype (computed in float32).
      labels: int `[...]` class ids, or float `[..., C]` probability targets.
      class_weights: optional `[C]`; "mean" divides by `sum(w[y])` over valid elements
        (torch's weighted mean); with probability targets by the number of rows.
      ignore_index: label id that contributes nothing (integer labels only; pass `mask` with
        probability targets).
      label_smoothing: `eps`, torch's formula above (float or traced scalar).
      mask: optional `[...]` element weights, combined with `ignore_index`.
      reduction: "mean", "sum" or "none".

    Returns:
      float32 scalar, or `[...]` per-element losses for "none" (zero where ignored). Deliberate
        difference: if every element is ignored the mean is 0 with a zero gradient (torch returns NaN).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import cross_entropy
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, -5.0, 0.0]])
      >>> labels = jnp.array([0, 1, -100])  # the last element is ignored
      >>> print(f"{float(cross_entropy(logits, labels, ignore_index=-100)):.4f}")
      0.3606
      >>> print(f"{float(cross_entropy(logits[:2], labels[:2])):.4f}")  # the same without it
      0.3606

    References:
      - `torch.nn.functional.cross_entropy`: values, weighted mean, `ignore_index`, `label_smoothing`
        and probability targets.
      - Szegedy et al., 2016, [Rethinking the Inception Architecture for Computer
        Vision](https://arxiv.org/abs/1512.00567) (label smoothing).
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

    `loss = w ((1 - y) x + (1 + (pw - 1) y) softplus(-x))`, i.e.
    `-w (pw y log sigmoid(x) + (1 - y) log sigmoid(-x))`, with the targets first smoothed to
    `y (1 - s) + (1 - y) s`.

    Args:
      logits: `[...]` scores, any float dtype (computed in float32).
      targets: float `[...]` of the logits' shape, values in [0, 1] (or `ignore_index`).
      pos_weight: `pw`, weight of positives, broadcast along the last axis (torch `pos_weight`).
      weights: `w`, element weights broadcastable to `logits` (torch `weight`).
      ignore_index: target value that contributes nothing (smp `SoftBCEWithLogitsLoss`).
      label_smoothing: `s`, smp's `smooth_factor`.
      mask: optional element weights broadcastable to `logits`, combined with `ignore_index`.
      reduction: "mean" divides by the number of non-ignored elements (the sum of `mask` when given;
        torch divides by all elements, equal when nothing is ignored; smp divides by all elements
        even when some are ignored), "sum", or "none".

    Returns:
      float32 scalar, or `[...]` per-element losses for "none" (zero where ignored).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import binary_cross_entropy
      >>> logits = jnp.array([3.0, -1.0, 0.5])
      >>> targets = jnp.array([1.0, 0.0, -1.0])  # the last element is ignored
      >>> print(f"{float(binary_cross_entropy(logits, targets, ignore_index=-1)):.4f}")
      0.1809
      >>> print(f"{float(binary_cross_entropy(logits[:2], targets[:2])):.4f}")  # mean over the other two
      0.1809

    References:
      - `torch.nn.functional.binary_cross_entropy_with_logits`: values, `weight`, `pos_weight`.
      - smp 0.5 `SoftBCEWithLogitsLoss`: `ignore_index` and `smooth_factor` (its "mean" also counts
        the ignored elements).
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
    """`torchvision.ops.sigmoid_focal_loss`: sigmoid cross-entropy down-weighted on easy elements.

    `loss = alpha_t (1 - p_t)^gamma bce(x, y)` with `p = sigmoid(x)`, `p_t = p y + (1 - p)(1 - y)`
    and `alpha_t = alpha y + (1 - alpha)(1 - y)` if `alpha >= 0` (else 1).

    Computed in log space, so gamma in [0, 1) keeps finite gradients at saturated logits (the
    torchvision power form gives NaN there); values are the same, soft targets included.

    Args:
      logits: `[...]` scores, any float dtype (computed in float32).
      targets: float `[...]` of the logits' shape, values in [0, 1].
      alpha: weight of positives (`1 - alpha` for negatives); a negative value or None disables it.
      gamma: focusing exponent >= 0 (gamma = 0 with alpha disabled is the plain sigmoid cross-entropy).
      reduction: "none" (the default, as torchvision), "mean" over all elements, or "sum".

    Returns:
      float32 `[...]` for "none", else a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import binary_cross_entropy, sigmoid_focal_loss
      >>> logits = jnp.array([2.0, -2.0, 0.0])
      >>> targets = jnp.array([1.0, 0.0, 1.0])  # two easy elements, one hard
      >>> print([round(float(v), 4) for v in sigmoid_focal_loss(logits, targets)])
      [0.0005, 0.0014, 0.0433]
      >>> print([round(float(v), 4) for v in binary_cross_entropy(logits, targets, reduction="none")])
      [0.1269, 0.1269, 0.6931]

    References:
      - `torchvision.ops.sigmoid_focal_loss` (defaults `alpha=0.25`, `gamma=2`, `reduction="none"`).
      - Lin et al., 2017, [Focal Loss for Dense Object Detection](https://arxiv.org/abs/1708.02002).
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
    """Focal loss (Lin et al. 2017): cross-entropy down-weighted on well-classified elements.

    mode="multiclass" (softmax): `loss = -alpha_y w_y (1 - p_y)^gamma log p_y`, normalised as
    `cross_entropy` (so gamma = 0 without alpha equals it); soft targets sum the term over classes,
    weighted by the target. (smp's "multiclass" `FocalLoss` is one-vs-rest sigmoid; use
    mode="multilabel" on one-hot targets for that.)

    mode="binary" / "multilabel" (sigmoid), smp `FocalLoss`: `loss = alpha_t (1 - pt)^gamma bce` with
    `pt = exp(-bce)` and `alpha_t = alpha y + (1 - alpha)(1 - y)` if alpha is set; the mean runs over
    the non-ignored elements.

    The modulating factor is computed in log space: finite gradients for gamma in [0, 1) at
    saturated logits.

    Args:
      logits: multiclass and multilabel `[..., C]`; binary `[..., 1]`. Any float dtype.
      labels: multiclass: int `[...]` or float `[..., C]`; binary: `[...]` or `[..., 1]`;
        multilabel: `[..., C]` of the logits' shape.
      mode: "multiclass", "binary" or "multilabel".
      gamma: focusing exponent >= 0.
      alpha: multiclass: `[C]`, or a scalar read as MONAI's `[1 - alpha, alpha, ..., alpha]`;
        binary / multilabel: a scalar. None disables it.
      ignore_index: label value that contributes nothing.
      class_weights: optional `[C]`. Multiclass: as in `cross_entropy`; binary / multilabel: weight
        the channels (weighted mean).
      mask: optional element weights, combined with `ignore_index`.
      reduction: "mean", "sum" or "none".

    Returns:
      float32 scalar, or the per-element loss for "none" (`[...]` multiclass, the logits' shape
        otherwise; zero where ignored).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import cross_entropy, focal_loss
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
      >>> labels = jnp.array([0, 2])
      >>> print(f"{float(focal_loss(logits, labels)):.4f}")  # gamma = 2
      0.4838
      >>> print(f"{float(focal_loss(logits, labels, gamma=0.0)):.4f} {float(cross_entropy(logits, labels)):.4f}")
      0.8606 0.8606

    References:
      - Lin et al., 2017, [Focal Loss for Dense Object Detection](https://arxiv.org/abs/1708.02002).
      - smp 0.5 `FocalLoss` (binary / multilabel modes); MONAI `FocalLoss(use_softmax=True)` for the
        scalar-alpha convention of the softmax form.
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
