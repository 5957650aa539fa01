"""smp's `UPerNet` decoder (Xiao et al. 2018, unified perceptual parsing): the encoder's stride-4
and deeper features layer-normalised, a pyramid pooling module on the deepest, an FPN top-down
path through the others, and all levels fused at stride 4."""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Parts, SegmentationHead
from jaxseg.models.interpolation import adaptive_avg_pool, interpolate
from jaxseg.models.layers import ConvNormReLU, layer_norm, use_batchnorm

PYRAMID_SIZES = (1, 2, 3, 6)


def layer_norm_2d(channels: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """smp's `LayerNorm2d(channels, eps=1e-6)`: torch's LayerNorm over the channels of each pixel,
    which channels-last is a plain LayerNorm."""
    return layer_norm(channels, 1e-6, dtype=dtype, rngs=rngs)


class PSPModule(nnx.Module):
    """smp's UPerNet `PSPModule`: the feature, and its adaptive average pools to `sizes` each
    through a 1x1 Conv-BN-ReLU and resized back bilinearly, concatenated and fused by a 3x3
    Conv-BN-ReLU (BatchNorm whatever `use_norm`, as smp)."""

    def __init__(self, in_channels, out_channels, *, sizes=PYRAMID_SIZES, use_norm: bool = True, **conv):
        conv = dict(conv, kernel_init=KAIMING_FAN_IN)
        self.sizes = tuple(sizes)
        self.blocks: nnx.List[Any] = nnx.List(
            [nnx.List([None, ConvNormReLU(in_channels, out_channels, 1, use_norm=use_norm, **conv)]) for _ in sizes]
        )
        fused = in_channels + len(sizes) * out_channels
        self.out_conv = ConvNormReLU(fused, out_channels, 3, use_norm=True, **conv)

    def __call__(self, feature, *, train: bool):
        size = feature.shape[1:3]
        pyramid = [feature]
        for pool_size, (_, conv) in zip(self.sizes, self.blocks):
            pooled = conv(adaptive_avg_pool(feature, (pool_size, pool_size)), train=train)
            pyramid.append(interpolate(pooled, size, "bilinear"))  # downsamples where pool_size > size
        return self.out_conv(jnp.concatenate(pyramid, axis=-1), train=train)


class FPNLateralBlock(nnx.Module):
    """smp's `FPNLateralBlock`: the encoder feature through a 1x1 Conv-BN-ReLU plus the coarser
    state resized bilinearly to it."""

    def __init__(self, lateral_channels, out_channels, *, use_norm: bool = True, **conv):
        conv = dict(conv, kernel_init=KAIMING_FAN_IN)
        self.conv_norm_relu = ConvNormReLU(lateral_channels, out_channels, 1, use_norm=use_norm, **conv)

    def __call__(self, state, lateral, *, train: bool):
        lateral = self.conv_norm_relu(lateral, train=train)
        return interpolate(state, lateral.shape[1:3], "bilinear") + lateral


class UPerNetDecoder(nnx.Module):
    """smp 0.6 `UPerNetDecoder` on the features of stride 4 and deeper; returns the fusion at
    the stride-4 resolution, `decoder_channels` wide."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        encoder_depth: int = 5,
        decoder_channels: int = 256,
        use_norm: bool = True,
        dtype=None,
        rngs: nnx.Rngs,
        **conv,
    ):
        if encoder_depth < 3:
            raise ValueError(f"Encoder depth for UPerNet decoder cannot be less than 3, got {encoder_depth}.")
        conv = dict(conv, dtype=dtype, rngs=rngs)
        encoder_channels = list(encoder_channels[2:])  # strides 4, 8, ...
        self.feature_norms = nnx.List([layer_norm_2d(c, dtype=dtype, rngs=rngs) for c in encoder_channels])
        self.psp = PSPModule(encoder_channels[-1], decoder_channels, use_norm=use_norm, **conv)
        lateral_channels = encoder_channels[:-1][::-1]  # coarse to fine, without the deepest
        norm_conv = dict(conv, use_norm=use_norm, kernel_init=KAIMING_FAN_IN)
        self.fpn_lateral_blocks = nnx.List(
            [FPNLateralBlock(c, decoder_channels, use_norm=use_norm, **conv) for c in lateral_channels]
        )
        self.fpn_conv_blocks = nnx.List(
            [ConvNormReLU(decoder_channels, decoder_channels, 3, **norm_conv) for _ in lateral_channels]
        )
        fused = (len(lateral_channels) + 1) * decoder_channels  # +1: the PSP output
        self.fusion_block = ConvNormReLU(fused, decoder_channels, 3, **norm_conv)

    def __call__(self, features: list, *, train: bool = False, key=None):
        features = [norm(f) for norm, f in zip(self.feature_norms, features[2:])]
        levels = [self.psp(features[-1], train=train)]  # coarse to fine
        for block, lateral in zip(self.fpn_lateral_blocks, features[:-1][::-1]):
            levels.append(block(levels[-1], lateral, train=train))
        # smp convolves the levels after the top-down path: each lateral sum adds the coarser level unconvolved.
        levels = [levels[0]] + [conv(level, train=train) for conv, level in zip(self.fpn_conv_blocks, levels[1:])]
        size = levels[-1].shape[1:3]  # stride 4
        resized = [interpolate(level, size, "bilinear") for level in levels]
        return self.fusion_block(jnp.concatenate(resized[::-1], axis=-1), train=train)


def upernet(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    decoder_channels: int = 256,
    decoder_use_norm: bool | str | dict = "batchnorm",
    upsampling: int = 4,
) -> Parts:
    """smp's `UPerNet` (its options and defaults): the head's 1x1 convolution runs at stride 4
    and `upsampling`x bilinear (aligned corners) brings it to the input size. Inputs must divide
    by the encoder's output stride."""
    encoder = make_encoder(depth=encoder_depth)
    decoder = UPerNetDecoder(
        encoder.out_channels,
        encoder_depth=encoder_depth,
        decoder_channels=decoder_channels,
        use_norm=use_batchnorm(decoder_use_norm),
        **conv,
    )
    head = SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=upsampling, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
