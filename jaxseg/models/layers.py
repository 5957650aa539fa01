"""Layers the model families share: convolution, linear layers, normalisation, pooling, resizing.

Plain Flax and JAX: `nnx.Conv`, `nnx.Linear`, `nnx.max_pool`, `jax.image.resize`. The one seam for backend
kernels is the `conv_general_dilated` a model is built with (default
`lax.conv_general_dilated`; `jaxseg.kernels.convolution` picks it from `config.kernels`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

NORMS = ("batch", "group", "none")
ConvFunction = Callable  # the signature of `lax.conv_general_dilated`


def conv(
    in_features, features, kernel_size, *, conv_general_dilated: ConvFunction = lax.conv_general_dilated, **options
) -> nnx.Conv:
    """`nnx.Conv` computing with `conv_general_dilated`."""
    return nnx.Conv(in_features, features, kernel_size, conv_general_dilated=conv_general_dilated, **options)


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **options):
    """`lax.dot_general` (the `dot_general` of `nnx.Linear`) with `x [..., K] @ w [K, N]` computed
    on `x` seen as `[-1, K]`: the same values, but XLA:CPU then computes the weight gradient as
    one matmul; for 3-D or 4-D `x` it first transposes the cotangent (a MiT Mix-FFN layer's
    forward and backward, `[8, 4096, 64] @ [64, 256]` on 2 cores: 169 ms as 3-D, 60 ms as 2-D).
    Other contractions, and calls with an output sharding, are `lax.dot_general`'s as given."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    flat = (
        lhs.ndim > 2
        and rhs.ndim == 2
        and tuple(lhs_contract) == (lhs.ndim - 1,)
        and tuple(rhs_contract) == (0,)
        and not lhs_batch
        and not rhs_batch
        and options.get("out_sharding") is None
    )
    if not flat:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **options)
    y = lax.dot_general(
        lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())), precision, preferred_element_type
    )
    return y.reshape(*lhs.shape[:-1], rhs.shape[1])


def linear(in_features: int, out_features: int, **options) -> nnx.Linear:
    """`nnx.Linear` (torch's `nn.Linear` over the last axis) computing with `flat_dot_general`."""
    return nnx.Linear(in_features, out_features, dot_general=flat_dot_general, **options)


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
    """`[B, H, W, C]` -> `[B, *size, C]`, half-pixel bilinear: torch's `interpolate(mode="bilinear",
    align_corners=False)`, which does not antialias when downsampling (`jax.image.resize` would)."""
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear", antialias=False)


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
    padding: int | tuple[tuple[int, int], tuple[int, int]] | None = None,
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
    convolutions asymmetrically, which would shift every feature of a torch checkpoint);
    `((top, bottom), (left, right))` pads as given (timm's static "same" for even kernels)."""
    pad = dilation * (kernel_size // 2) if padding is None else padding
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
        kernel_dilation=dilation,
        feature_group_count=groups,
        use_bias=bias,
        dtype=dtype,
        kernel_init=kernel_init,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def layer_norm(features: int, epsilon: float, *, dtype=None, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """`torch.nn.LayerNorm(features, eps)` over the channels of `[..., C]` (torch's two-pass
    variance; channels-last, also timm's and smp's `LayerNorm2d`)."""
    return nnx.LayerNorm(features, epsilon=epsilon, use_fast_variance=False, dtype=dtype, rngs=rngs)


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


def attention(q, k, v, scale: float):
    """Multi-head attention of `q [B, N, heads, d]` over `k`, `v` `[B, M, heads, d]` -> `[B, N,
    heads * d]`: softmax over the keys in float32 (for any compute dtype), at `scale`."""
    # Heads-major operands: XLA:CPU's batched matmuls then need no transposes inside (forward
    # and backward of a MiT stage-2 attention, N 1024, M 64, 2 heads: 21 ms as "bnhd", 16 ms).
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    logits = jnp.einsum("bhnd,bhmd->bhnm", q, k) * scale
    weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    out = jnp.einsum("bhnm,bhmd->bhnd", weights.astype(v.dtype), v)
    return jnp.swapaxes(out, 1, 2).reshape(q.shape[0], q.shape[2], -1)


def drop_path(x, rate: float, key):
    """timm's `drop_path` (stochastic depth; lukemelas' `drop_connect` for EfficientNet): each
    sample's `x` is zeroed with probability `rate` and the kept ones scaled by `1 / (1 - rate)`;
    the identity without a key or at rate 0 (the encoders refuse training without a key)."""
    if key is None or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    mask = mask.astype(x.dtype)
    return x * mask / keep if keep > 0.0 else x * mask


def check_drop_key(train: bool, key, rates, encoder: str) -> None:
    """Stochastic depth in training needs a key: without one it would silently be off."""
    if train and key is None and any(rate > 0.0 for rate in rates):
        raise ValueError(
            f"{encoder} drops residual branches in training (stochastic depth): call the model with "
            "train=True and key=..., or set the blocks' rates to 0"
        )


def check_encoder(
    family: str, name: str, known, depth: int, output_stride: int, *, smp_class: str, min_depth: int = 1
) -> None:
    """smp's refusals of an encoder's name, `depth` (its words name the encoder class; smp's
    EfficientNet refuses depth 1 with the same message) and `output_stride`."""
    if name not in known:
        raise ValueError(f"unknown {family} encoder {name!r}; choose from {tuple(known)}")
    if not min_depth <= depth <= 5:
        raise ValueError(f"{smp_class} depth should be in range [1, 5], got {depth}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"Output stride should be 16 or 8, got {output_stride}.")


SMP_NORMS = ("inplace", "batchnorm", "identity", "layernorm", "instancenorm")


def use_batchnorm(use_norm) -> bool:
    """smp's `use_norm` option (`get_norm_layer`): True / "batchnorm" / `{"type": "batchnorm"}`
    is BatchNorm, False / "identity" none; smp's other norms are refused by name."""
    kind = "batchnorm" if use_norm is True else "identity" if use_norm is False else use_norm
    if isinstance(kind, dict):
        if set(kind) != {"type"}:
            raise ValueError(f"use_norm {use_norm!r}: jaxseg takes no norm arguments besides 'type'")
        kind = kind["type"]
    if not isinstance(kind, str) or kind.lower() not in SMP_NORMS:
        raise ValueError(f"Unrecognized normalization type string provided: {use_norm}. Should be in {SMP_NORMS}")
    if kind.lower() not in ("batchnorm", "identity"):
        raise ValueError(f"use_norm={use_norm!r}: jaxseg builds 'batchnorm' and 'identity' (True / False)")
    return kind.lower() == "batchnorm"


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


class ConvTranspose2d(nnx.Module):
    """`torch.nn.ConvTranspose2d(in, out, k, stride, padding)`, its kernel kept in torch's
    `[in, out, kh, kw]` layout under torch's name `weight` (so the checkpoint map leaves it as is):
    the gradient of a strided convolution, i.e. a convolution of the input dilated by `stride`
    with the spatially flipped kernel, padded by `k - 1 - padding`."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        dtype=None,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        # torch's default init: kaiming_uniform(a=sqrt(5)) over fan_in = out * k * k (dim 1 of its weight).
        bound = 1.0 / np.sqrt(out_channels * kernel_size * kernel_size)
        shape = (in_channels, out_channels, kernel_size, kernel_size)
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))
        self.bias = (
            nnx.Param(jax.random.uniform(rngs.params(), (out_channels,), jnp.float32, -bound, bound)) if bias else None
        )
        self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
        self.dtype, self.conv_general_dilated = dtype, conv_general_dilated

    def __call__(self, x):
        dtype = self.dtype or x.dtype
        kernel = jnp.transpose(self.weight[...], (2, 3, 0, 1))[::-1, ::-1].astype(dtype)  # HWIO, flipped
        pad = self.kernel_size - 1 - self.padding
        y = self.conv_general_dilated(
            x.astype(dtype),
            kernel,
            window_strides=(1, 1),
            padding=((pad, pad), (pad, pad)),
            lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y if self.bias is None else y + self.bias[...].astype(dtype)
