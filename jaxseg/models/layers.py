"""Layers the model families share: convolution, normalisation, pooling, resizing.

Plain Flax and JAX: `nnx.Conv`, `nnx.max_pool`, `jax.image.resize`. The one seam for backend
kernels is the `conv_general_dilated` a model is built with (default
`lax.conv_general_dilated`; `jaxseg.kernels.convolution` picks it from `config.kernels`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
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
        return batch_norm(features, dtype=dtype, rngs=rngs)
    if kind == "group":
        return nnx.GroupNorm(features, num_groups=min(groups, features), dtype=dtype, rngs=rngs)
    return None


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 of `[B, H, W, C]` (torch's `max_pool2d(x, 2)`)."""
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


def resize_bilinear(x, size):
    """`[B, H, W, C]` -> `[B, *size, C]`, half-pixel bilinear (torch's `interpolate(mode="bilinear",
    align_corners=False)` when upsampling)."""
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear")


# ----------------------------------------------------------------------------- torch-layout layers
# The models that load smp / torchvision / timm checkpoints name their submodules as torch does
# and hold torch's `nn.Sequential`s as `nnx.List`s (parameterless entries such as ReLU as None),
# so a parameter's path is its state-dict key (`jaxseg.models.weights`).

KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's conv init


def conv2d(
    in_channels,
    out_channels,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    dtype=None,
    conv_general_dilated: ConvFunction = lax.conv_general_dilated,
    kernel_init=KAIMING_FAN_OUT,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """`torch.nn.Conv2d(in, out, k, stride, padding, dilation, groups, bias)` as an `nnx.Conv`:
    symmetric explicit padding, `dilation * (k // 2)` unless given (XLA's "SAME" pads stride-2
    convolutions asymmetrically, which would shift every feature of a torch checkpoint)."""
    pad = dilation * (kernel_size // 2) if padding is None else padding
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation,
        feature_group_count=groups,
        use_bias=bias,
        dtype=dtype,
        kernel_init=kernel_init,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def batch_norm(features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """`torch.nn.BatchNorm2d(features)`: eps 1e-5, momentum 0.1 (Flax's 0.9)."""
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def call(layer, x, train: bool):
    """`layer(x)` for a layer or norm of any model (or an entry of a torch-layout `nnx.List`):
    None is the identity (no norm, or a parameterless layer the caller applies), BatchNorm uses
    batch statistics while training, modules of their own take `train`."""
    if layer is None:
        return x
    if isinstance(layer, nnx.BatchNorm):
        return layer(x, use_running_average=not train)
    if isinstance(layer, (nnx.Conv, nnx.Linear, nnx.LayerNorm, nnx.GroupNorm)):
        return layer(x)
    return layer(x, train=train)


class ConvNormReLU(nnx.List):
    """smp's `Conv2dReLU` (`[conv, norm, ReLU]`; conv bias only without a norm)."""

    def __init__(self, in_channels, out_channels, kernel_size, *, use_norm: bool = True, dtype=None, rngs, **conv):
        layer = conv2d(in_channels, out_channels, kernel_size, bias=not use_norm, dtype=dtype, rngs=rngs, **conv)
        super().__init__([layer, batch_norm(out_channels, dtype=dtype, rngs=rngs) if use_norm else None])

    def __call__(self, x, *, train: bool):
        return nnx.relu(call(self[1], self[0](x), train))


class Sequential(nnx.List):
    """torch's `nn.Sequential` of modules that take `(x, train=...)` (or layers `call` knows)."""

    def __call__(self, x, *, train: bool):
        for layer in self:
            x = call(layer, x, train)
        return x


def resize_nearest(x, size):
    """`[B, H, W, C]` -> `[B, *size, C]` as torch's `interpolate(mode="nearest")`: source index
    `floor(i * in / out)` (not the half-pixel rule of `jax.image.resize`)."""
    rows = (jnp.arange(size[0]) * (x.shape[1] / size[0])).astype(jnp.int32)
    cols = (jnp.arange(size[1]) * (x.shape[2] / size[1])).astype(jnp.int32)
    rows, cols = jnp.minimum(rows, x.shape[1] - 1), jnp.minimum(cols, x.shape[2] - 1)
    return x[:, rows][:, :, cols]
