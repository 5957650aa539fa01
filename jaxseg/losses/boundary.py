"""Boundary losses: the gradient (edge) loss and the boundary loss of Kervadec et al.

Both work on `[B, *spatial, C]` (any number of spatial axes).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxseg.losses._common import (
    REDUCTIONS,
    as_float32,
    check_choice,
    check_class_labels,
    class_targets,
    safe_divide,
)
from jaxseg.losses._softmax import softmax_stats

OPERATORS = ("forward", "central", "sobel")


def _window(x, axis: int, start: int, stop_from_end: int):
    return jax.lax.slice_in_dim(x, start, x.shape[axis] - stop_from_end, axis=axis)


def _footprint(valid, axis: int, width: int):
    """Product of `valid` over windows of `width` along `axis` (valid-mode, no padding)."""
    out = _window(valid, axis, 0, width - 1)
    for offset in range(1, width):
        out = out * _window(valid, axis, offset, width - 1 - offset)
    return out


def spatial_derivative(x, valid, axis: int, spatial_axes: Sequence[int], operator: str):
    """Derivative of `x` `[B, *S, C]` along `axis`, with the weight of each output position.

    Convention: no padding. Each output position exists only where the operator's whole
    footprint lies inside the image, and its weight is the product of the pixel weights
    (`valid` `[B, *S]`) over that footprint, so a difference touching an ignored pixel counts 0.
      forward: `x[i + 1] - x[i]`, size S - 1 along `axis`;
      central: `(x[i + 1] - x[i - 1]) / 2`, size S - 2 along `axis`;
      sobel:   central difference smoothed by `[1, 2, 1] / 4` along every other spatial axis,
               size S - 2 along every spatial axis (the normalised Sobel kernel).
    All three give slope 1 on a unit ramp.
    """
    if operator == "forward":
        return _window(x, axis, 1, 0) - _window(x, axis, 0, 1), _footprint(valid, axis, 2)
    derivative = (_window(x, axis, 2, 0) - _window(x, axis, 0, 2)) / 2.0
    weight = _footprint(valid, axis, 3)
    if operator == "sobel":
        for other in spatial_axes:
            if other != axis:
                derivative = (
                    _window(derivative, other, 0, 2)
                    + 2.0 * _window(derivative, other, 1, 1)
                    + _window(derivative, other, 2, 0)
                ) / 4.0
                weight = _footprint(weight, other, 3)
    return derivative, weight


def gradient_terms(probs, targets, valid, *, operator: str, p: int):
    """Per image: (sum of weighted `|grad(probs) - grad(targets)|^p`, number of weighted entries)."""
    difference = probs - targets  # derivatives are linear: grad(P) - grad(Y) = grad(P - Y)
    spatial_axes = tuple(range(1, probs.ndim - 1))
    num_classes = probs.shape[-1]
    total = jnp.zeros(probs.shape[0], jnp.float32)
    count = jnp.zeros(probs.shape[0], jnp.float32)
    for axis in spatial_axes:
        derivative, weight = spatial_derivative(difference, valid, axis, spatial_axes, operator)
        penalty = jnp.abs(derivative) if p == 1 else derivative * derivative
        image_axes = tuple(range(1, derivative.ndim))
        total = total + jnp.sum(penalty * weight[..., None], axis=image_axes)
        count = count + num_classes * jnp.sum(weight, axis=image_axes[:-1])
    return total, count


def gradient_loss(
    logits,
    labels,
    *,
    operator: str = "forward",
    p: int = 2,
    ignore_index=None,
    mask=None,
    reduction: str = "mean",
):
    """Gradient (edge) loss: the mismatch between the spatial gradients of prediction and target.

    `loss = mean over axes a, positions and classes of |D_a softmax(x) - D_a y|^p`, with `y` the
    one-hot (or soft) target and `D_a` the forward difference, central difference or normalised
    Sobel derivative along spatial axis `a`.
    No padding: a derivative exists only where the operator's whole footprint lies inside the image
    (forward: size S - 1 along `a`; central: S - 2; sobel: S - 2 along every spatial axis), and it
    counts 0 when the footprint touches an ignored (or masked-out) pixel. All three operators give
    slope 1 on a unit ramp.

    Args:
      logits: `[B, *spatial, C]`, any float dtype.
      labels: int `[B, *spatial]` or float `[B, *spatial, C]`.
      operator: "forward", "central" or "sobel" (spatial sizes >= 2, 3 and 3).
      p: 2 (squared, L2) or 1 (L1).
      ignore_index: label value of ignored pixels; a derivative whose footprint touches an
        ignored (or masked-out) pixel counts 0.
      mask: optional `[B, *spatial]` pixel weights (bool or float), combined with `ignore_index`.
      reduction: "mean" (over every counted entry of the batch), "sum", or "none" (`[B]`,
        the mean per image).

    Returns:
      float32 scalar, or `[B]` for "none".

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import gradient_loss
      >>> labels = jnp.array([[0, 0, 1, 1]])  # [B=1, W=4]: one edge
      >>> print(f"{float(gradient_loss(jnp.zeros((1, 4, 2)), labels)):.4f}")  # a flat prediction misses it
      0.3333
      >>> print(f"{float(gradient_loss(20.0 * jnp.eye(2)[labels], labels)):.4f}")  # a sharp one at the edge
      0.0000

    References:
      - No library function: this is the "difference of gradients" form `|D p - D y|^p`. The gradient
        difference loss of Mathieu et al., 2016, [Deep multi-scale video prediction beyond mean square
        error](https://arxiv.org/abs/1511.05440), compares absolute gradients `||D p| - |D y||^p` instead.
    """
    check_choice("operator", operator, OPERATORS)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("p", p, (1, 2))
    check_class_labels(logits, labels)
    x = as_float32(logits)
    if x.ndim < 3:
        raise ValueError(f"gradient_loss needs logits [B, *spatial, C]; got shape {x.shape}")
    minimum = 2 if operator == "forward" else 3
    if any(size < minimum for size in x.shape[1:-1]):
        raise ValueError(f"operator {operator!r} needs spatial sizes >= {minimum}; got {x.shape[1:-1]}")
    t = class_targets(labels, x.shape[-1], ignore_index=ignore_index, mask=mask)
    total, count = gradient_terms(jax.nn.softmax(x), t.targets, t.valid, operator=operator, p=p)
    if reduction == "none":
        return safe_divide(total, count)
    return jnp.sum(total) if reduction == "sum" else safe_divide(jnp.sum(total), jnp.sum(count))


def select_classes(x, classes):
    return x if classes is None else x[..., jnp.asarray(classes, jnp.int32)]


def boundary_loss(logits, distance_maps, *, classes: Sequence[int] | None = None, reduction: str = "mean"):
    """Boundary loss (Kervadec et al., MIDL 2019): `mean(softmax(logits) * distance_maps)`.

    `loss = mean over b, pixels and k in classes of softmax(x)_k phi_k`, with `phi_k` the signed
    distance to the boundary of class k: probability mass inside a class lowers the loss, mass outside
    it raises it in proportion to the distance.

    Args:
      logits: `[B, *spatial, C]`, any float dtype.
      distance_maps: `[B, *spatial, C]` signed distances to each class boundary (negative
        inside, positive outside, 0 for classes absent from the image), precomputed on the
        data side with `signed_distance_maps`.
      classes: the classes summed (the paper uses the foreground ones); default all.
      reduction: "mean" over batch, space and the selected classes, "sum", or "none"
        (elementwise `[B, *spatial, C']`).

    Returns:
      float32 scalar, or `[B, *spatial, C']` for "none" (`C'` the selected classes).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import boundary_loss, signed_distance_maps
      >>> labels = jnp.array([0, 0, 1, 1, 1, 1])  # one sample, [W=6]
      >>> distances = signed_distance_maps(labels, 2)[None]  # [B=1, W, C=2]
      >>> logits = 5.0 * jnp.eye(2)[labels][None]  # confident and right
      >>> print(f"{float(boundary_loss(logits, distances, classes=[1])):.4f}")
      -0.9900
      >>> print(f"{float(boundary_loss(-logits, distances, classes=[1])):.4f}")  # confident and wrong
      0.4900

    References:
      - LIVIAETS/boundary-loss `SurfaceLoss` (mean over batch, the classes `idc` and space).
      - Kervadec et al., 2019, [Boundary loss for highly unbalanced
        segmentation](https://arxiv.org/abs/1812.07032).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    x = as_float32(logits)
    if jnp.shape(distance_maps) != x.shape:
        raise ValueError(f"distance_maps must have the logits' shape {x.shape}; got {jnp.shape(distance_maps)}")
    distances = jnp.asarray(distance_maps, jnp.float32)
    if reduction == "none":
        return select_classes(jax.nn.softmax(x), classes) * select_classes(distances, classes)
    # No labels are involved: class 0 stands in for them; only `weighted_sum` is read.
    labels = jnp.zeros(x.shape[:-1], jnp.int32)
    valid = jnp.ones(x.shape[:-1], jnp.float32)
    total = softmax_stats(x, labels, valid, weight_map=class_weight_map(distances, classes)).weighted_sum
    return total if reduction == "sum" else total / boundary_count(x.shape, classes)


def class_weight_map(distances, classes):
    """The distance maps with the classes outside `classes` zeroed (all kept when None)."""
    if classes is None:
        return distances
    keep = jnp.zeros(distances.shape[-1], bool).at[jnp.asarray(classes, jnp.int32)].set(True)
    return jnp.where(keep, distances, 0.0)


def boundary_count(shape, classes) -> int:
    """Number of averaged entries: every element times the selected classes."""
    count = shape[-1] if classes is None else len(classes)
    for dim in shape[:-1]:
        count *= dim
    return count
