"""Region (overlap) losses: Dice, Jaccard, Tversky (smp 0.5) and generalized Dice (MONAI).

smp semantics by default: sums over batch and space together (one score per class), the
soft-label L1 form of the overlap, classes absent from the target masked to 0 but kept in the
class mean. `per_image=True` sums over space only and gives one loss per image.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

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
    reduce_per_image,
    sigmoid_targets,
)
from jaxseg.losses._softmax import SoftmaxStats
from jaxseg.losses.classification import check_class_weights, label_stats


class RegionInputs(NamedTuple):
    """Probabilities and targets `[B, ..., C]`, both zeroed where invalid; `hard` when the
    targets are known to be 0/1 (integer labels)."""

    probs: jax.Array
    targets: jax.Array
    hard: bool


class Overlap(NamedTuple):
    """Soft confusion sums per class (`[C]` or `[B, C]`)."""

    tp: jax.Array
    fp: jax.Array
    fn: jax.Array
    target_sum: jax.Array

    def select(self, index):
        return Overlap(*(field[..., index] for field in self))


def reduce_axes(ndim: int, per_image: bool) -> tuple[int, ...]:
    """Axes summed for one score: all but the class axis, or also keeping the batch axis."""
    if per_image and ndim < 3:
        raise ValueError(f"per_image needs inputs [B, ..., C] with a spatial axis; got rank {ndim}")
    return tuple(range(1 if per_image else 0, ndim - 1))


def overlap(inputs: RegionInputs, axes, *, squared: bool = False) -> Overlap:
    """Soft TP/FP/FN with the L1 (or, squared, L2) form of JDTLoss used by smp >= 0.4 and MONAI:
    `tp = (|x|_p^p + |y|_p^p - |x - y|_p^p) / 2`, `fp = |x|_p^p - tp`, `fn = |y|_p^p - tp`.

    For 0/1 targets and x in [0, 1] the L1 form equals `sum(x * y)`; that cheaper identity is
    used when the targets are integer labels.
    """
    x, y = inputs.probs, inputs.targets
    power = (lambda v: v * v) if squared else (lambda v: v)
    sum_x = jnp.sum(power(x), axis=axes)
    sum_y = jnp.sum(power(y), axis=axes)
    if inputs.hard:
        tp = jnp.sum(x * y, axis=axes)
    else:
        difference = jnp.sum(power(jnp.abs(x - y)), axis=axes)
        tp = (sum_x + sum_y - difference) / 2.0
    return Overlap(tp, sum_x - tp, sum_y - tp, jnp.sum(y, axis=axes))


def label_overlap(stats: SoftmaxStats, t: ClassTargets, per_image: bool) -> Overlap:
    """The same sums for integer labels from `softmax_stats(..., class_sums=True)`."""
    axes = reduce_axes(t.targets.ndim, per_image)
    counts = jnp.sum(t.targets * t.valid[..., None], axis=axes)
    tp, prob_sums = stats.label_prob_sums, stats.prob_sums
    assert tp is not None and prob_sums is not None, "softmax_stats(..., class_sums=True) gives the class sums"
    return Overlap(tp, prob_sums - tp, counts - tp, counts)


def region_overlap(logits, labels, *, mode, from_logits, ignore_index, mask, per_image, squared=False) -> Overlap:
    """Activation (softmax or sigmoid unless `from_logits=False`), masking and overlap sums."""
    check_choice("mode", mode, MODES)
    x = as_float32(logits)
    axes = reduce_axes(x.ndim, per_image)
    if mode == "multiclass":
        check_class_labels(logits, labels)
        t = class_targets(labels, x.shape[-1], ignore_index=ignore_index, mask=mask)
        if from_logits and t.labels is not None and not squared:
            return label_overlap(label_stats(x, t, class_sums=True, per_image=per_image), t, per_image)
        probs = jax.nn.softmax(x) if from_logits else x
        valid = t.valid[..., None]
        inputs = RegionInputs(probs * valid, t.targets * valid, t.labels is not None)
    else:
        labels = elementwise_targets(x, labels, mode)
        targets, valid = sigmoid_targets(labels, ignore_index=ignore_index, mask=mask)
        probs = jax.nn.sigmoid(x) if from_logits else x
        inputs = RegionInputs(probs * valid, targets * valid, not jnp.issubdtype(labels.dtype, jnp.floating))
    return overlap(inputs, axes, squared=squared)


def tversky_score(stats: Overlap, *, alpha, beta, smooth, eps):
    """smp's `soft_tversky_score`: `(tp + s) / max(tp + alpha fp + beta fn + s, eps)`."""
    denominator = stats.tp + alpha * stats.fp + beta * stats.fn + smooth
    return (stats.tp + smooth) / jnp.maximum(denominator, eps)


def class_mean(per_class, class_weights, classes):
    """Mean over the class axis, or smp's weighted mean `sum(w L) / sum(w)`, after selecting
    `classes` (weights are given for all classes and selected with them)."""
    if classes is not None:
        index = jnp.asarray(classes, jnp.int32)
        per_class = per_class[..., index]
        class_weights = None if class_weights is None else class_weights[index]
    if class_weights is None:
        return jnp.mean(per_class, axis=-1)
    return jnp.sum(per_class * class_weights, axis=-1) / jnp.sum(class_weights)


def safe_power(value, exponent):
    """`value ** exponent` for value >= 0 with a finite gradient at value == 0."""
    positive = value > 0
    return jnp.where(positive, jnp.where(positive, value, 1.0) ** exponent, 0.0)


def tversky_family_loss(
    stats: Overlap,
    *,
    alpha,
    beta,
    gamma=1.0,
    classes: Sequence[int] | None = None,
    log_loss: bool = False,
    smooth=0.0,
    eps: float = 1e-7,
    class_weights=None,
):
    """Shared core of Dice (alpha=beta=0.5), Jaccard (1, 1) and Tversky: `[]` or `[B]` losses
    from the overlap sums (per class, or per image and class)."""
    score = tversky_score(stats, alpha=alpha, beta=beta, smooth=smooth, eps=eps)
    per_class = -jnp.log(jnp.maximum(score, eps)) if log_loss else 1.0 - score
    per_class = per_class * (stats.target_sum > 0)
    loss = class_mean(per_class, check_class_weights(class_weights, per_class.shape[-1]), classes)
    return loss if isinstance(gamma, (int, float)) and gamma == 1 else safe_power(loss, gamma)


def _region_loss(logits, labels, *, mode, from_logits, ignore_index, mask, reduction, per_image, squared, **options):
    check_choice("reduction", reduction, REDUCTIONS)
    if options["classes"] is not None and mode == "binary":
        raise ValueError("classes selects channels; binary mode has one channel")
    stats = region_overlap(
        logits,
        labels,
        mode=mode,
        from_logits=from_logits,
        ignore_index=ignore_index,
        mask=mask,
        per_image=per_image,
        squared=squared,
    )
    return reduce_per_image(tversky_family_loss(stats, **options), reduction)


def dice_loss(
    logits,
    labels,
    *,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    log_loss: bool = False,
    from_logits: bool = True,
    smooth=0.0,
    eps: float = 1e-7,
    ignore_index=None,
    class_weights=None,
    per_image: bool = False,
    squared: bool = False,
    mask=None,
    reduction: str = "mean",
):
    """Soft Dice loss, smp 0.5 `DiceLoss` semantics.

    `loss = mean_c [sum y_c > 0] (1 - score_c)`, `score = (I + s) / max(I + (FP + FN) / 2 + s, eps)`,
    with the soft counts `I = (sum x + sum y - sum |x - y|) / 2`, `FP = sum x - I`, `FN = sum y - I` of
    probabilities `x` and targets `y` (for 0/1 targets `I = sum x y`). The sums run over batch and space
    together (one score per class), or over space only with `per_image`. Classes absent from the
    target get loss 0 but stay in the class mean (smp).

    Args:
      logits: `[B, ..., C]` (binary mode: `[B, ..., 1]`); probabilities if `from_logits=False`.
      labels: multiclass: int `[B, ...]` or float `[B, ..., C]`; binary: `[B, ...]` or
        `[B, ..., 1]`; multilabel: `[B, ..., C]`.
      mode: "multiclass" (softmax), "binary" or "multilabel" (sigmoid).
      classes: channels kept in the class mean (selected after empty-class masking, as smp).
      log_loss: `-log(max(score, eps))` instead of `1 - score`.
      from_logits: apply the softmax / sigmoid; False when `logits` are already probabilities.
      smooth: `s`, added to numerator and denominator: `score = (I + s) / max(I + (FP + FN) / 2 + s, eps)`.
      eps: lower bound of that denominator.
      ignore_index: label whose pixels drop out of numerator and denominator.
      class_weights: `[C]`, weighted class mean `sum(w L) / sum(w)` (smp main).
      per_image: one score per image and class (sums over space only) instead of over the batch.
      squared: squared-norm form (MONAI `squared_pred`): `2 sum(xy) / (sum x^2 + sum y^2)`.
      mask: optional `[B, ...]` pixel weights applied to probabilities and targets.
      reduction: over images when `per_image` ("none" -> `[B]`); batch-global losses are scalars.

    Returns:
      float32 scalar, or `[B]` with `per_image` and reduction="none".

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import dice_loss
      >>> labels = jnp.array([[[0, 1], [1, 1]]])  # [B=1, H=2, W=2], two classes
      >>> perfect = jnp.eye(2)[labels]  # one-hot probabilities [B, H, W, C]
      >>> print(f"{float(dice_loss(perfect, labels, from_logits=False)):.4f}")
      0.0000
      >>> print(f"{float(dice_loss(jnp.zeros((1, 2, 2, 2)), labels)):.4f}")  # uniform softmax
      0.5333

    References:
      - smp 0.5 `DiceLoss` (`class_weights` and the weighted class mean as on smp main); MONAI
        `DiceLoss(squared_pred=True)` for `squared`.
      - Milletari et al., 2016, [V-Net: Fully Convolutional Neural Networks for Volumetric Medical
        Image Segmentation](https://arxiv.org/abs/1606.04797) (the Dice loss, in its squared form).
    """
    return _region_loss(
        logits,
        labels,
        mode=mode,
        from_logits=from_logits,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        alpha=0.5,
        beta=0.5,
        classes=classes,
        log_loss=log_loss,
        smooth=smooth,
        eps=eps,
        class_weights=class_weights,
        per_image=per_image,
        squared=squared,
    )


def jaccard_loss(
    logits,
    labels,
    *,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    log_loss: bool = False,
    from_logits: bool = True,
    smooth=0.0,
    eps: float = 1e-7,
    ignore_index=None,
    class_weights=None,
    per_image: bool = False,
    squared: bool = False,
    mask=None,
    reduction: str = "mean",
):
    """Soft Jaccard (IoU) loss, smp 0.5 `JaccardLoss`.

    `loss = mean_c [sum y_c > 0] (1 - score_c)`, `score = (I + s) / max(I + FP + FN + s, eps)`, with the
    soft counts of `dice_loss` (`I = sum x y` for 0/1 targets). Options as `dice_loss` (ignore_index
    as on smp main).

    Args:
      logits: `[B, ..., C]` (binary mode: `[B, ..., 1]`); probabilities if `from_logits=False`.
      labels: as in `dice_loss`.
      mode: "multiclass" (softmax), "binary" or "multilabel" (sigmoid).
      classes: channels kept in the class mean (selected after empty-class masking).
      log_loss: `-log(max(score, eps))` instead of `1 - score`.
      from_logits: apply the softmax / sigmoid; False when `logits` are already probabilities.
      smooth: `s`, added to numerator and denominator.
      eps: lower bound of the denominator.
      ignore_index: label whose pixels drop out of every sum.
      class_weights: `[C]`, weighted class mean `sum(w L) / sum(w)`.
      per_image: one score per image and class instead of over the batch.
      squared: squared-norm form (MONAI `squared_pred`): `sum(xy) / (sum x^2 + sum y^2 - sum(xy))`.
      mask: optional `[B, ...]` pixel weights.
      reduction: over images when `per_image` ("none" -> `[B]`); batch-global losses are scalars.

    Returns:
      float32 scalar, or `[B]` with `per_image` and reduction="none".

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import jaccard_loss
      >>> labels = jnp.array([[[0, 1], [1, 1]]])  # [B=1, H=2, W=2], two classes
      >>> print(f"{float(jaccard_loss(jnp.eye(2)[labels], labels, from_logits=False)):.4f}")  # perfect
      0.0000
      >>> print(f"{float(jaccard_loss(jnp.zeros((1, 2, 2, 2)), labels)):.4f}")  # uniform softmax
      0.6857

    References:
      - smp 0.5 `JaccardLoss` (`ignore_index` as on smp main).
      - Wang et al., 2023, [Jaccard Metric Losses: Optimizing the Jaccard Index with Soft
        Labels](https://arxiv.org/abs/2302.05666) (the soft-label L1 form of the counts).
    """
    return _region_loss(
        logits,
        labels,
        mode=mode,
        from_logits=from_logits,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        alpha=1.0,
        beta=1.0,
        classes=classes,
        log_loss=log_loss,
        smooth=smooth,
        eps=eps,
        class_weights=class_weights,
        per_image=per_image,
        squared=squared,
    )


def tversky_loss(
    logits,
    labels,
    *,
    mode: str = "multiclass",
    alpha=0.5,
    beta=0.5,
    gamma=1.0,
    classes: Sequence[int] | None = None,
    log_loss: bool = False,
    from_logits: bool = True,
    smooth=0.0,
    eps: float = 1e-7,
    ignore_index=None,
    class_weights=None,
    per_image: bool = False,
    squared: bool = False,
    mask=None,
    reduction: str = "mean",
):
    """Tversky loss, smp 0.5 `TverskyLoss`.

    `loss = (mean_c [sum y_c > 0] (1 - score_c)) ** gamma` with
    `score = (I + s) / max(I + alpha FP + beta FN + s, eps)` and the soft counts of `dice_loss`.
    alpha weighs false positives, beta false negatives; with gamma = 1, alpha = beta = 0.5 is
    `dice_loss` and alpha = beta = 1 `jaccard_loss`. smp applies gamma after the class mean; with
    `per_image` it is applied per image.

    Args:
      logits: `[B, ..., C]` (binary mode: `[B, ..., 1]`); probabilities if `from_logits=False`.
      labels: as in `dice_loss`.
      mode: "multiclass" (softmax), "binary" or "multilabel" (sigmoid).
      alpha: weight of false positives (float or traced array).
      beta: weight of false negatives (float or traced array).
      gamma: exponent of the class mean (float or traced array).
      classes: channels kept in the class mean (selected after empty-class masking).
      log_loss: `-log(max(score, eps))` instead of `1 - score`.
      from_logits: apply the softmax / sigmoid; False when `logits` are already probabilities.
      smooth: `s`, added to numerator and denominator.
      eps: lower bound of the denominator.
      ignore_index: label whose pixels drop out of every sum.
      class_weights: `[C]`, weighted class mean `sum(w L) / sum(w)`.
      per_image: one score per image and class instead of over the batch.
      squared: squared-norm form of the counts (MONAI `squared_pred`).
      mask: optional `[B, ...]` pixel weights.
      reduction: over images when `per_image` ("none" -> `[B]`); batch-global losses are scalars.

    Returns:
      float32 scalar, or `[B]` with `per_image` and reduction="none".

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import dice_loss, tversky_loss
      >>> logits = jnp.array([[[[2.0], [0.0]], [[0.0], [1.0]]]])  # binary, [B=1, H=2, W=2, 1]
      >>> labels = jnp.array([[[1, 0], [1, 1]]])
      >>> tversky = tversky_loss(logits, labels, mode="binary")  # alpha = beta = 0.5
      >>> print(f"{float(tversky):.4f} {float(dice_loss(logits, labels, mode='binary')):.4f}")
      0.2474 0.2474
      >>> print(f"{float(tversky_loss(logits, labels, mode='binary', alpha=0.3, beta=0.7)):.4f}")  # misses cost more
      0.2676

    References:
      - smp 0.5 `TverskyLoss` (gamma after the class mean).
      - Salehi et al., 2017, [Tversky loss function for image segmentation using 3D fully
        convolutional deep networks](https://arxiv.org/abs/1706.05721).
    """
    return _region_loss(
        logits,
        labels,
        mode=mode,
        from_logits=from_logits,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        classes=classes,
        log_loss=log_loss,
        smooth=smooth,
        eps=eps,
        class_weights=class_weights,
        per_image=per_image,
        squared=squared,
    )


GDL_WEIGHTS = ("square", "simple", "uniform")


def generalized_dice_terms(stats: Overlap, *, weight_type, smooth_nr, smooth_dr, include_background):
    """MONAI `GeneralizedDiceLoss` core on overlap sums `[C]` or `[B, C]`: `[]` or `[B]`."""
    if not include_background and stats.tp.shape[-1] > 1:
        stats = stats.select(slice(1, None))
    ground = stats.target_sum
    absent = ground == 0
    safe_ground = jnp.where(absent, 1.0, ground)
    if weight_type == "square":
        weights = 1.0 / (safe_ground * safe_ground)
    elif weight_type == "simple":
        weights = 1.0 / safe_ground
    else:
        weights = jnp.ones_like(ground)
    # MONAI replaces the infinite weight of an absent class by the largest finite weight
    # (of the image, or of the batch when the sums include the batch).
    weights = jnp.where(absent, 0.0, weights)
    weights = jnp.where(absent, jnp.max(weights, axis=-1, keepdims=True), weights)
    numerator = 2.0 * jnp.sum(stats.tp * weights, axis=-1) + smooth_nr
    denominator = jnp.sum((2.0 * stats.tp + stats.fp + stats.fn) * weights, axis=-1) + smooth_dr
    return 1.0 - numerator / denominator


def generalized_dice_loss(
    logits,
    labels,
    *,
    weight_type: str = "square",
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    include_background: bool = True,
    per_image: bool = True,
    ignore_index=None,
    mask=None,
    reduction: str = "mean",
):
    """Generalized Dice loss (Sudre et al. 2017), MONAI `GeneralizedDiceLoss`.

    `loss = 1 - (2 sum_c w_c I_c + nr) / (sum_c w_c (|x_c| + |y_c|) + dr)` with `w_c = 1 / |y_c|^2`
    ("square"), `1 / |y_c|` ("simple") or 1 ("uniform"); an absent class takes the largest weight of
    the others (of the image, or of the batch without `per_image`), as MONAI. Matches
    `GeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type=weight_type, batch=not per_image)`.
    Soft targets use the L1 overlap (MONAI `soft_label=True`, equal for hard labels).

    Args:
      logits: `[B, ..., C]` (softmax applied), any float dtype.
      labels: int `[B, ...]` or float `[B, ..., C]`.
      weight_type: "square", "simple" or "uniform" (MONAI `w_type`).
      smooth_nr: `nr`, added to the numerator.
      smooth_dr: `dr`, added to the denominator.
      include_background: False drops class 0 from every sum (when C > 1).
      per_image: one loss per image (MONAI `batch=False`); False sums over the batch too.
      ignore_index: label whose pixels drop out of every sum (MONAI has none).
      mask: optional `[B, ...]` pixel weights (MONAI has none).
      reduction: "mean" or "sum" over images, or "none".

    Returns:
      float32 `[B]` with reduction="none" and `per_image`, else the reduced scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import generalized_dice_loss
      >>> labels = jnp.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])  # [B=2, H, W]; class 1 absent in image 2
      >>> loss = generalized_dice_loss(jnp.zeros((2, 2, 2, 2)), labels, reduction="none")  # uniform softmax
      >>> print([round(float(v), 4) for v in loss])
      [0.625, 0.5]

    References:
      - MONAI `GeneralizedDiceLoss` (weights, the absent-class rule, smoothing, `batch`).
      - Sudre et al., 2017, [Generalised Dice overlap as a deep learning loss function for highly
        unbalanced segmentations](https://arxiv.org/abs/1707.03237).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("weight_type", weight_type, GDL_WEIGHTS)
    stats = region_overlap(
        logits, labels, mode="multiclass", from_logits=True, ignore_index=ignore_index, mask=mask, per_image=per_image
    )
    loss = generalized_dice_terms(
        stats, weight_type=weight_type, smooth_nr=smooth_nr, smooth_dr=smooth_dr, include_background=include_background
    )
    return reduce_per_image(loss, reduction)
