"""smp's `PSPNet` decoder (Zhao et al. 2017): the deepest feature map average-pooled to 1x1, 2x2,
3x3 and 6x6 grids, each projected by a 1x1 Conv-BN-ReLU and resized back, concatenated with the
map itself, fused by a 1x1 Conv-BN-ReLU and followed by channel dropout."""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Parts, SegmentationHead
from jaxseg.models.interpolation import adaptive_avg_pool, interpolate
from jaxseg.models.layers import ConvNormReLU, use_batchnorm

POOL_SIZES = (1, 2, 3, 6)


class PSPBlock(nnx.Module):
    """smp's `PSPBlock`: `pool` = `nn.Sequential(AdaptiveAvgPool2d(pool_size), Conv2dReLU 1x1)`,
    then bilinear resizing (aligned corners) back to the input's size. The 1x1 pool has no norm
    (torch's BatchNorm refuses a single value per channel), so its convolution has a bias."""

    def __init__(self, in_channels, out_channels, pool_size: int, *, use_norm: bool, **conv):
        self.pool_size = pool_size
        projection = ConvNormReLU(in_channels, out_channels, 1, use_norm=use_norm and pool_size != 1, **conv)
        self.pool: nnx.List[Any] = nnx.List([None, projection])

    def __call__(self, x, *, train: bool):
        pooled = adaptive_avg_pool(x, (self.pool_size, self.pool_size))
        return interpolate(self.pool[1](pooled, train=train), x.shape[1:3], "bilinear", align_corners=True)


class PSPModule(nnx.Module):
    """smp's `PSPModule`: the pyramid's blocks (each `in_channels // len(sizes)` wide), their
    outputs concatenated before the input."""

    def __init__(self, in_channels, *, sizes=POOL_SIZES, use_norm: bool, **conv):
        self.blocks = nnx.List(
            [PSPBlock(in_channels, in_channels // len(sizes), size, use_norm=use_norm, **conv) for size in sizes]
        )

    def __call__(self, x, *, train: bool):
        return jnp.concatenate([block(x, train=train) for block in self.blocks] + [x], axis=-1)


class PSPDecoder(nnx.Module):
    """smp's `PSPDecoder`: `psp` on the deepest feature map, `conv` (1x1 Conv-BN-ReLU to
    `out_channels`), `dropout` (torch's `Dropout2d`: whole channels, with the key it is given)."""

    def __init__(self, encoder_channels, *, use_norm: bool, out_channels: int, dropout: float, **conv):
        conv = dict(conv, kernel_init=KAIMING_FAN_IN)
        deepest = encoder_channels[-1]
        self.psp = PSPModule(deepest, use_norm=use_norm, **conv)
        self.conv = ConvNormReLU(deepest * 2, out_channels, 1, use_norm=use_norm, **conv)
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2))  # [B, H, W, C]: one draw per channel

    def __call__(self, features: list, *, train: bool = False, key=None):
        x = self.conv(self.psp(features[-1], train=train), train=train)
        return self.dropout(x, deterministic=not train, rngs=key)


def pspnet(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 3,
    psp_out_channels: int = 512,
    decoder_use_norm: bool | str | dict = "batchnorm",
    psp_dropout: float = 0.2,
    upsampling: int = 8,
    psp_use_batchnorm: bool | str | dict | None = None,
) -> Parts:
    """smp's `PSPNet` (its options and defaults; `psp_use_batchnorm` is smp's deprecated name of
    `decoder_use_norm` and, given, overrides it with a DeprecationWarning)."""
    if psp_use_batchnorm is not None:
        warnings.warn(
            "The usage of psp_use_batchnorm is deprecated. Please modify your code for decoder_use_norm",
            DeprecationWarning,
            stacklevel=2,
        )
        decoder_use_norm = psp_use_batchnorm
    use_norm = use_batchnorm(decoder_use_norm)
    encoder = make_encoder(depth=encoder_depth)
    decoder = PSPDecoder(
        encoder.out_channels, use_norm=use_norm, out_channels=psp_out_channels, dropout=psp_dropout, **conv
    )
    head = SegmentationHead(psp_out_channels, classes, kernel_size=3, upsampling=upsampling, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
