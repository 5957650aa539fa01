"""U-Net (Ronneberger et al. 2015) as a Flax NNX module, channels-last."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxseg.models.layers import ConvFunction, call, check_norm, conv, make_norm, max_pool_2x2, resize_bilinear

UPSAMPLING = ("bilinear", "transpose")


class ConvBlock(nnx.Module):
    """Two 3x3 convolutions, each followed by a normalisation and ReLU; optional dropout."""

    def __init__(self, in_features, features, *, norm, groups, dropout, dtype, conv_general_dilated, rngs: nnx.Rngs):
        options = dict(use_bias=norm == "none", dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.conv1 = conv(in_features, features, (3, 3), **options)
        self.norm1 = make_norm(norm, features, groups=groups, dtype=dtype, rngs=rngs)
        self.conv2 = conv(features, features, (3, 3), **options)
        self.norm2 = make_norm(norm, features, groups=groups, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None

    def __call__(self, x, *, train: bool, key=None):
        x = nnx.relu(call(self.norm1, self.conv1(x), train))
        x = nnx.relu(call(self.norm2, self.conv2(x), train))
        if self.dropout is not None:
            x = self.dropout(x, deterministic=not train, rngs=key)
        return x


class UNet(nnx.Module):
    """U-Net: `depth` down-sampling stages, widths `base_width * 2**level`.

    Args:
      num_classes: output channels (logits).
      in_channels: input channels (3 for RGB; more for extra modalities such as depth).
      depth: number of 2x down-samplings; H and W must be divisible by `2**depth`.
      base_width: channels of the first stage.
      norm: "batch", "group" or "none".
      groups: GroupNorm groups.
      dropout: dropout rate after each block of the bottleneck and decoder (0 disables).
      upsampling: "bilinear" (2x bilinear resize, then a 3x3 convolution) or "transpose" (2x2
        transposed convolution, stride 2).
      dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
      conv_general_dilated: the convolution of every `nnx.Conv` (`jaxseg.kernels.convolution`).

    Call: `model(images [B, H, W, in_channels], train=..., key=dropout_key)` -> `[B, H, W, C]`.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        depth: int = 3,
        base_width: int = 32,
        norm: str = "batch",
        groups: int = 8,
        dropout: float = 0.0,
        upsampling: str = "bilinear",
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        check_norm(norm)
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}; got {upsampling!r}")
        self.depth = depth
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.upsampling = upsampling
        block = dict(norm=norm, groups=groups, dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        convs = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.encoder = nnx.List(
            [ConvBlock(in_channels if i == 0 else widths[i - 1], widths[i], dropout=0.0, **block) for i in range(depth)]
        )
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth], dropout=dropout, **block)
        self.up = nnx.List(
            [
                nnx.ConvTranspose(widths[i + 1], widths[i], (2, 2), strides=(2, 2), dtype=dtype, rngs=rngs)
                if upsampling == "transpose"
                else conv(widths[i + 1], widths[i], (3, 3), **convs)
                for i in reversed(range(depth))
            ]
        )
        self.decoder = nnx.List(
            [ConvBlock(2 * widths[i], widths[i], dropout=dropout, **block) for i in reversed(range(depth))]
        )
        self.head = conv(widths[0], num_classes, (1, 1), **convs)

    def _upsample(self, up, x):
        """Double H and W: a transposed convolution, or a bilinear resize and a 3x3 convolution."""
        if self.upsampling == "transpose":
            return up(x)
        return up(resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2])))

    def __call__(self, x, *, train: bool = False, key=None):
        stride = 2**self.depth
        if x.shape[1] % stride or x.shape[2] % stride:
            raise ValueError(f"UNet of depth {self.depth} needs H and W divisible by {stride}; got {x.shape[1:3]}")
        keys = [None] * (self.depth + 1) if key is None else list(jax.random.split(key, self.depth + 1))
        skips = []
        for block in self.encoder:
            x = block(x, train=train)
            skips.append(x)
            x = max_pool_2x2(x)
        x = self.bottleneck(x, train=train, key=keys[0])
        for i, (up, block) in enumerate(zip(self.up, self.decoder)):
            x = block(jnp.concatenate([self._upsample(up, x), skips[-1 - i]], axis=-1), train=train, key=keys[i + 1])
        return self.head(x)
