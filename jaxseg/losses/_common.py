"""What every loss shares: argument checks, fp32 promotion, target preparation and reductions.

The public losses differ in their formula only; how they read `labels`, `ignore_index`,
`mask` and `reduction` is defined once here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseg.ops.labels import check_label_range, one_hot, valid_mask
from jaxseg.ops.numeric import safe_divide  # noqa: F401  (re-exported to the losses)

REDUCTIONS = ("mean", "sum", "none")
MODES = ("multiclass", "binary", "multilabel")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def as_float32(x, name: str = "logits"):
    """Promote a floating array to float32 (the accumulation dtype); reject non-floats."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array (fp32, bf16 or fp16); got {x.dtype}")
    return x.astype(jnp.float32)


def optional_float32(x):
    return None if x is None else jnp.asarray(x, jnp.float32)


def reduce_weighted(values, weights, reduction: str):
    """Reduce per-element `values` (already multiplied by `weights`).

    "mean" divides by the sum of `weights` (torch's weighted mean; 0 if all weights are 0),
    "sum" sums, "none" returns `values` unchanged.
    """
    if reduction == "none":
        return values
    total = jnp.sum(values)
    if reduction == "sum":
        return total
    return safe_divide(total, jnp.sum(weights))


def reduce_per_image(values, reduction: str):
    """Reduce one value per image (`[B]`) or a single batch value (`[]`)."""
    if reduction == "none" or values.ndim == 0:
        return values
    return jnp.sum(values) if reduction == "sum" else jnp.mean(values)


def logsumexp(x, axis=-1, keepdims=False):
    """Stable log-sum-exp over `axis`; finite for any finite input, gradient = softmax."""
    peak = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    out = jnp.log(jnp.sum(jnp.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out if keepdims else jnp.squeeze(out, axis)


class ClassTargets(NamedTuple):
    """Multiclass targets in one form for every loss.

    targets: `[..., C]` float32, one-hot (integer labels) or soft; all-zero rows where ignored.
    valid:   `[...]` float32 element weights (0 for ignored, `mask` otherwise).
    labels:  `[...]` int32 ids when the labels were integers (ignored ones set to 0), else None.
    """

    targets: jax.Array
    valid: jax.Array
    labels: jax.Array | None


def class_targets(labels, num_classes: int, *, ignore_index=None, mask=None) -> ClassTargets:
    """Read `labels` as integer ids `[...]` or float targets `[..., C]` (one-hot or soft).

    Integer ids are range-checked when concrete (outside `jit`); float targets may not be
    combined with `ignore_index` (use `mask`), as in torch.
    """
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
        check_label_range(labels, num_classes, ignore_index=ignore_index)
        labels = labels.astype(jnp.int32)
        valid = valid_mask(labels, ignore_index=ignore_index, mask=mask)
        if ignore_index is None:
            return ClassTargets(one_hot(labels, num_classes), valid, labels)
        ignored = labels == ignore_index
        targets = one_hot(jnp.where(ignored, -1, labels), num_classes)
        return ClassTargets(targets, valid, jnp.where(ignored, 0, labels))
    if labels.shape[-1:] != (num_classes,):
        raise ValueError(f"float targets must have a last axis of {num_classes} classes; got shape {labels.shape}")
    if ignore_index is not None:
        raise ValueError("ignore_index applies to integer labels; pass `mask` with float targets")
    return ClassTargets(labels.astype(jnp.float32), valid_mask(labels[..., 0], mask=mask), None)


def check_class_labels(logits, labels) -> None:
    """Multiclass shapes: logits `[..., C]` with int labels `[...]` or float targets `[..., C]`."""
    logits_shape, labels_shape = jnp.shape(logits), jnp.shape(labels)
    if len(logits_shape) < 1:
        raise ValueError(f"logits must have a class axis last; got shape {logits_shape}")
    integer = jnp.issubdtype(jnp.result_type(labels), jnp.integer) or jnp.result_type(labels) == jnp.bool_
    expected = logits_shape[:-1] if integer else logits_shape
    if labels_shape != expected:
        kind = "integer labels" if integer else "float targets"
        raise ValueError(f"{kind} must have shape {expected} for logits {logits_shape}; got {labels_shape}")


def elementwise_targets(logits, labels, mode: str):
    """Binary and multilabel modes: logits and targets of one shape `[..., C]`.

    Binary mode also accepts logits `[..., 1]` with labels `[...]`.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if mode == "binary" and logits.shape[-1:] == (1,) and labels.shape == logits.shape[:-1]:
        labels = labels[..., None]
    if labels.shape != logits.shape:
        raise ValueError(f"{mode} mode needs labels of the logits' shape {logits.shape}; got {labels.shape}")
    if mode == "binary" and logits.shape[-1:] != (1,):
        raise ValueError(f"binary mode needs logits with one channel [..., 1]; got {logits.shape}")
    return labels


def sigmoid_targets(labels, *, ignore_index=None, mask=None):
    """Elementwise targets: float32 values and their weights (0 where `labels == ignore_index`).

    A `mask` of shape `[...]` applies to every channel of `[..., C]` labels.
    """
    if mask is not None and jnp.ndim(mask) == jnp.ndim(labels) - 1:
        mask = jnp.asarray(mask)[..., None]
    valid = valid_mask(labels, ignore_index=ignore_index, mask=mask)
    targets = jnp.where(valid > 0, labels, 0).astype(jnp.float32)
    return targets, valid
