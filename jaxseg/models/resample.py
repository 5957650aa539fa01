"""Bilinear resizing of NHWC feature maps, with a stencil for the exact 2x upsampling of decoders.

`jax.image.resize` computes a resize as one matrix product per spatial axis, which on XLA's
CPU backend costs transposes around each product: upsampling 16x64x64x64 by 2 took 71 ms
forward and 39 ms backward here. For an exact doubling, half-pixel bilinear interpolation
is a fixed stencil: output 2i is 0.75 x[i] + 0.25 x[i - 1] and output 2i + 1 is
0.75 x[i] + 0.25 x[i + 1], with the neighbour clamped at the borders (where
`jax.image.resize` renormalises its weights to the same values, and torch's
`interpolate(mode="bilinear", align_corners=False)` clamps). Elementwise, it fuses: 16 ms
forward and 3 ms backward on that map. Any other size goes to `jax.image.resize`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def interleave(even, odd, axis: int):
    """Two maps of the same shape -> one twice as long along `axis`: `even` at positions
    0, 2, 4, ..., `odd` at 1, 3, 5, ... (a stack and a reshape, which fuse)."""
    size = even.shape[axis]
    return jnp.stack([even, odd], axis=axis + 1).reshape(even.shape[:axis] + (2 * size,) + even.shape[axis + 1 :])


def _double(x, axis: int):
    """Half-pixel bilinear 2x upsampling along one axis."""
    size = x.shape[axis]
    before = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, size - 1, axis=axis)], axis)
    after = jnp.concatenate([lax.slice_in_dim(x, 1, size, axis=axis), lax.slice_in_dim(x, size - 1, size, axis=axis)], axis)
    return interleave(0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after, axis)


def resize_bilinear(x, size: tuple[int, int]):
    """`[B, H, W, C]` -> `[B, *size, C]`, the values of `jax.image.resize(..., "bilinear")`."""
    height, width = x.shape[1:3]
    if tuple(size) == (2 * height, 2 * width):
        return _double(_double(x, 1), 2)
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear")
