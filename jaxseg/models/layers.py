"""Layers the model families share: convolution, normalisation, pooling, resizing.

Plain Flax and JAX: `nnx.Conv`, `nnx.max_pool`, `jax.image.resize`. The one seam for backend
kernels is the `conv_general_dilated` a model is built with (default
`lax.conv_general_dilated`; `jaxseg.kernels.convolution` picks it from `config.kernels`).
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx
from jax import lax

NORMS = ("batch", "group", "none")
ConvFunction = Callable  # the signature of `lax.conv_general_dilated`


def conv(
    in_features, features, kernel_size, *, conv_general_dilated: ConvFunction = lax.conv_general_dilated, **options
) -> nnx.Conv:
    """`nnx.Conv` computing with `conv_general_dilated`."""
    return nnx.Conv(in_features, features, kernel_size, conv_general_dilated=conv_general_dilated, **options)


def check_norm(kind: str) -> None:
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {kind!r}")


def make_norm(kind: str, features: int, *, groups: int, dtype, rngs: nnx.Rngs):
    """BatchNorm (momentum 0.9, as torch's 0.1), GroupNorm (at most `features` groups) or None."""
    check_norm(kind)
    if kind == "batch":
        return nnx.BatchNorm(features, momentum=0.9, dtype=dtype, rngs=rngs)
    if kind == "group":
        return nnx.GroupNorm(features, num_groups=min(groups, features), dtype=dtype, rngs=rngs)
    return None


def apply_norm(norm, x, train: bool):
    """`norm(x)`, with batch statistics while training for BatchNorm; `x` without a norm."""
    if norm is None:
        return x
    if isinstance(norm, nnx.BatchNorm):
        return norm(x, use_running_average=not train)
    return norm(x)


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 of `[B, H, W, C]` (torch's `max_pool2d(x, 2)`)."""
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


def resize_bilinear(x, size):
    """`[B, H, W, C]` -> `[B, *size, C]`, half-pixel bilinear (torch's `interpolate(mode="bilinear",
    align_corners=False)` when upsampling)."""
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear")
