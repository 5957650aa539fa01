"""The composed segmentation loss: a weighted sum of terms sharing one softmax.

Term weights and continuous options are arrays, so a stacked pytree of K settings under
`jax.vmap` gives K loss variants in one program (the basis of loss ablations). Which terms
exist is static (the keys of `weights`); a term is never switched on or off by a traced value.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxseg.losses._common import as_float32, check_choice, check_class_labels, class_targets, logsumexp, safe_divide
from jaxseg.losses.boundary import OPERATORS, boundary_count, class_weight_map, gradient_terms
from jaxseg.losses.classification import check_class_weights, cross_entropy_terms, label_stats, softmax_focal_terms
from jaxseg.losses.lovasz import lovasz_softmax_terms
from jaxseg.losses.region import RegionInputs, label_overlap, overlap, reduce_axes, tversky_family_loss

TERMS = ("ce", "focal", "dice", "jaccard", "tversky", "lovasz", "gradient", "boundary")


def segmentation_loss(
    logits,
    labels,
    weights: Mapping[str, Any],
    *,
    class_weights=None,
    label_smoothing=0.0,
    focal_gamma=2.0,
    tversky_alpha=0.5,
    tversky_beta=0.5,
    dice_smooth=0.0,
    ignore_index=None,
    mask=None,
    per_image: bool = False,
    gradient_operator: str = "forward",
    gradient_p: int = 2,
    distance_maps=None,
    boundary_classes: Sequence[int] | None = None,
):
    """Weighted sum of segmentation loss terms on one softmax.

    `total = sum_k weights[k] * term_k`, each term the standalone loss with the same options and
    reduction="mean"; the terms share one softmax (and, for integer labels, one pass of fused
    statistics). Term weights and continuous options may be arrays, so `jax.vmap` over a stack of
    settings evaluates several loss variants in one program.

    Args:
      logits: `[B, ..., C]`, any float dtype.
      labels: int `[B, ...]` or float `[B, ..., C]`.
      weights: term name -> weight (float or array), names from `TERMS`:
        "ce" `cross_entropy` (class_weights, label_smoothing), "focal" multiclass
        `focal_loss` (focal_gamma, class_weights), "dice" / "jaccard" `dice_loss` /
        `jaccard_loss` (dice_smooth), "tversky" `tversky_loss` (tversky_alpha, tversky_beta),
        "lovasz" `lovasz_loss`, "gradient" `gradient_loss` (gradient_operator, gradient_p),
        "boundary" `boundary_loss` (distance_maps, boundary_classes). Which terms exist is static.
      class_weights: `[C]` class weights of the CE and focal terms (array; vmappable); the region
        terms do not use them.
      label_smoothing: CE label smoothing (array or float; vmappable).
      focal_gamma: focal exponent (array or float; vmappable).
      tversky_alpha: Tversky false-positive weight (array or float; vmappable).
      tversky_beta: Tversky false-negative weight (array or float; vmappable).
      dice_smooth: Dice / Jaccard / Tversky smoothing (array or float; vmappable).
      ignore_index: label value left out by every term that reads labels.
      mask: optional `[B, ...]` pixel weights (bool or float) shared by every term that reads labels.
      per_image: per-image region and Lovász terms (then averaged over the batch).
      gradient_operator: "forward", "central" or "sobel" (see `gradient_loss`).
      gradient_p: 2 or 1 (see `gradient_loss`).
      distance_maps: `[B, ..., C]` signed distance maps, required by "boundary"
        (`signed_distance_maps`). The boundary term reads no labels: give ignored pixels distance 0.
      boundary_classes: the classes of the boundary term; default all.

    Returns:
      (total, terms): the float32 weighted sum and a dict of each unweighted term (scalars).
        Each term equals the standalone loss with the same options and reduction="mean".

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import cross_entropy, segmentation_loss
      >>> logits = jnp.array([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [3.0, -3.0]]])  # [B=1, W=4, C=2]
      >>> labels = jnp.array([[0, 1, 1, 0]])
      >>> total, terms = segmentation_loss(logits, labels, {"ce": 1.0, "dice": 0.5})
      >>> print(f"{float(total):.4f}", {name: round(float(value), 4) for name, value in terms.items()})
      0.4857 {'ce': 0.3542, 'dice': 0.263}
      >>> print(f"{float(cross_entropy(logits, labels)):.4f}")  # the "ce" term
      0.3542

    References:
      - Each term matches its standalone function and that function's reference (`cross_entropy`,
        `focal_loss`, `dice_loss`, `jaccard_loss`, `tversky_loss`, `lovasz_loss`, `gradient_loss`,
        `boundary_loss`); the weighted sum itself follows no library.
    """
    unknown = set(weights) - set(TERMS)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; known terms are {TERMS}")
    if "boundary" in weights and distance_maps is None:
        raise ValueError("the 'boundary' term needs distance_maps (see signed_distance_maps)")
    check_choice("gradient_operator", gradient_operator, OPERATORS)
    check_class_labels(logits, labels)
    x = as_float32(logits)
    num_classes = x.shape[-1]
    class_weights = check_class_weights(class_weights, num_classes)
    t = class_targets(labels, num_classes, ignore_index=ignore_index, mask=mask)
    region_terms = {"dice", "jaccard", "tversky"} & set(weights)
    weight_map = None
    if "boundary" in weights:
        if jnp.shape(distance_maps) != x.shape:
            raise ValueError(f"distance_maps must have the logits' shape {x.shape}; got {jnp.shape(distance_maps)}")
        weight_map = class_weight_map(jnp.asarray(distance_maps, jnp.float32), boundary_classes)

    # One softmax for every term: integer labels go through the fused statistics.
    stats = None
    if t.labels is not None:
        stats = label_stats(
            x,
            t,
            other_lse="focal" in weights,
            class_sums=bool(region_terms),
            per_image=per_image,
            weight_map=weight_map,
        )
        lse = stats.lse
    else:
        lse = logsumexp(x)
    needs_probs = {"lovasz", "gradient"} & set(weights) or (stats is None and (region_terms or weight_map is not None))
    probs = jnp.exp(x - lse[..., None]) if needs_probs else None

    terms = {}
    if "ce" in weights:
        label_logit = None if stats is None else stats.label_logit
        loss, norm = cross_entropy_terms(x, lse, label_logit, t, class_weights, label_smoothing)
        terms["ce"] = safe_divide(jnp.sum(loss), jnp.sum(norm))
    if "focal" in weights:
        loss, norm = softmax_focal_terms(x, t, class_weights, focal_gamma, None, stats)
        terms["focal"] = safe_divide(jnp.sum(loss), jnp.sum(norm))
    if region_terms:
        if stats is not None:
            sums = label_overlap(stats, t, per_image)
        else:
            assert probs is not None  # needs_probs: no statistics to read the sums from
            valid = t.valid[..., None]
            sums = overlap(RegionInputs(probs * valid, t.targets * valid, False), reduce_axes(x.ndim, per_image))
        shapes = {"dice": (0.5, 0.5), "jaccard": (1.0, 1.0), "tversky": (tversky_alpha, tversky_beta)}
        for name in sorted(region_terms):
            alpha, beta = shapes[name]
            terms[name] = jnp.mean(tversky_family_loss(sums, alpha=alpha, beta=beta, smooth=dice_smooth))
    if "lovasz" in weights:
        fg = t.targets * (t.valid > 0)[..., None]
        terms["lovasz"] = jnp.mean(lovasz_softmax_terms(probs, fg, t.valid, per_image=per_image))
    if "gradient" in weights:
        total, count = gradient_terms(probs, t.targets, t.valid, operator=gradient_operator, p=gradient_p)
        terms["gradient"] = safe_divide(jnp.sum(total), jnp.sum(count))
    if weight_map is not None:
        weighted = stats.weighted_sum if stats is not None else jnp.sum(probs * weight_map)
        assert weighted is not None  # softmax_stats(..., weight_map=...) gives the weighted sum
        terms["boundary"] = weighted / boundary_count(x.shape, boundary_classes)

    total = sum(jnp.asarray(weights[name], jnp.float32) * value for name, value in terms.items())
    return total, terms


@dataclasses.dataclass(frozen=True)
class SegmentationLoss:
    """`segmentation_loss` with its options bound; a pytree whose array fields are leaves.

    Stack K instances (`jax.tree.map(lambda *v: jnp.stack(v), *losses)`) and `jax.vmap` over
    them to evaluate K loss variants at once; the static fields must agree.
    """

    weights: Mapping[str, Any]
    class_weights: Any = None
    label_smoothing: Any = 0.0
    focal_gamma: Any = 2.0
    tversky_alpha: Any = 0.5
    tversky_beta: Any = 0.5
    dice_smooth: Any = 0.0
    ignore_index: int | None = None
    per_image: bool = False
    gradient_operator: str = "forward"
    gradient_p: int = 2
    boundary_classes: tuple[int, ...] | None = None

    def __call__(self, logits, labels, *, mask=None, distance_maps=None):
        options = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        weights = options.pop("weights")
        return segmentation_loss(logits, labels, weights, mask=mask, distance_maps=distance_maps, **options)


jax.tree_util.register_dataclass(
    SegmentationLoss,
    data_fields=[
        "weights",
        "class_weights",
        "label_smoothing",
        "focal_gamma",
        "tversky_alpha",
        "tversky_beta",
        "dice_smooth",
    ],
    meta_fields=["ignore_index", "per_image", "gradient_operator", "gradient_p", "boundary_classes"],
)
