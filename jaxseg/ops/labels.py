"""Label handling shared by losses and metrics: validity masks, one-hot targets, range checks.

Everything here keeps shapes static: ignored elements are zeroed or weighted out, never
removed, so the functions are safe under `jax.jit`, `jax.vmap` and sharding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values (NumPy or a committed jax.Array), not a tracer."""
    return not isinstance(x, jax.core.Tracer)


def valid_mask(labels, *, ignore_index=None, mask=None, dtype=jnp.float32):
    """Per-element weight: 0 where `labels == ignore_index`, `mask` elsewhere (1 if no mask).

    Args:
      labels: `[...]` label ids (or `[..., C]` targets in the elementwise modes).
      ignore_index: label value that contributes nothing; `None` disables it.
      mask: optional weights broadcastable to `labels.shape` (bool or float).

    Returns:
      `[...]` array of `dtype` (float32 by default) with the shape of `labels`.
    """
    weight = jnp.ones(jnp.shape(labels), dtype)
    if ignore_index is not None:
        weight = jnp.where(labels == ignore_index, jnp.zeros((), dtype), weight)
    if mask is not None:
        mask = jnp.asarray(mask)
        if not _broadcasts_to(mask.shape, weight.shape):
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to labels {weight.shape}")
        weight = weight * mask.astype(dtype)
    return weight


def _broadcasts_to(shape, target) -> bool:
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], target[::-1]))


def one_hot(labels, num_classes: int, *, dtype=jnp.float32):
    """`[...]` int ids -> `[..., num_classes]` one-hot; ids outside `[0, C)` give all-zero rows."""
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    return (labels.astype(jnp.int32)[..., None] == classes).astype(dtype)


def check_label_range(labels, num_classes: int, *, ignore_index=None, name: str = "labels") -> None:
    """Raise a ValueError naming the offending values when concrete labels fall outside `[0, C)`.

    Traced labels (inside `jax.jit`) cannot be inspected without a host round trip; they pass
    unchecked and out-of-range ids then act as "no class" (an all-zero one-hot row). Validate
    data on the host side of the input pipeline to catch them there.
    """
    if not is_concrete(labels):
        return
    values = np.asarray(labels)
    bad = (values < 0) | (values >= num_classes)
    if ignore_index is not None:
        bad &= values != ignore_index
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        allowed = f"int in [0, {num_classes})" + (
            f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        )
        raise ValueError(
            f"{name} must be {allowed}; got {values[first]} at index {first} "
            f"({int(bad.sum())} bad values, range [{values.min()}, {values.max()}])"
        )
