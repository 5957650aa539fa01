"""smp's `Unet` decoder (Ronneberger et al. 2015 on a pretrained encoder): from the deepest
feature map up, each block upsamples to the next skip's size, concatenates it, and applies two
3x3 Conv-BN-ReLU (optionally scSE attention around them)."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Attention, Parts, SegmentationHead
from jaxseg.models.interpolation import check_interpolation, interpolate
from jaxseg.models.layers import ConvNormReLU, Sequential, use_batchnorm


class DecoderBlock(nnx.Module):
    def __init__(self, in_channels, skip_channels, out_channels, *, use_norm, attention_type, interpolation, **conv):
        norm_conv = dict(conv, use_norm=use_norm, kernel_init=KAIMING_FAN_IN)
        self.interpolation = interpolation
        self.conv1 = ConvNormReLU(in_channels + skip_channels, out_channels, 3, **norm_conv)
        self.attention1 = Attention(attention_type, in_channels + skip_channels, **conv)
        self.conv2 = ConvNormReLU(out_channels, out_channels, 3, **norm_conv)
        self.attention2 = Attention(attention_type, out_channels, **conv)

    def __call__(self, x, size, skip, *, train: bool):
        x = interpolate(x, size, self.interpolation)
        if skip is not None:
            x = self.attention1(jnp.concatenate([x, skip], axis=-1), train=train)
        x = self.conv2(self.conv1(x, train=train), train=train)
        return self.attention2(x, train=train)


class UnetDecoder(nnx.Module):
    """smp 0.6 `UnetDecoder`: `n_blocks = len(decoder_channels)` blocks (the encoder depth),
    upsampling to each shallower feature's size (inputs need not divide by 32), the last block
    to the input size without a skip. `center` (VGG encoders) is not built."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        *,
        n_blocks: int,
        use_norm: bool = True,
        attention_type: str | None = None,
        interpolation: str = "nearest",
        **conv,
    ):
        if n_blocks != len(decoder_channels):
            raise ValueError(
                f"Model depth is {n_blocks}, but you provide `decoder_channels` for {len(decoder_channels)} blocks."
            )
        check_interpolation(interpolation)
        encoder_channels = list(encoder_channels[1:])[::-1]
        in_channels = [encoder_channels[0], *decoder_channels[:-1]]
        skip_channels = [*encoder_channels[1:], 0]
        options = dict(use_norm=use_norm, attention_type=attention_type, interpolation=interpolation, **conv)
        self.blocks = Sequential(
            [DecoderBlock(i, s, o, **options) for i, s, o in zip(in_channels, skip_channels, decoder_channels)]
        )

    def __call__(self, features: list, *, train: bool = False, key=None):
        sizes = [f.shape[1:3] for f in features][::-1]
        deepest, *skips = features[1:][::-1]
        x = deepest
        for i, block in enumerate(self.blocks):
            x = block(x, sizes[i + 1], skips[i] if i < len(skips) else None, train=train)
        return x


def unet(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_use_norm: bool | str = "batchnorm",
    decoder_attention_type: str | None = None,
    decoder_interpolation: str = "nearest",
) -> Parts:
    """smp's `Unet` (its options and defaults)."""
    encoder = make_encoder(depth=encoder_depth)
    decoder = UnetDecoder(
        encoder.out_channels,
        tuple(decoder_channels),
        n_blocks=encoder_depth,
        use_norm=use_batchnorm(decoder_use_norm),
        attention_type=decoder_attention_type,
        interpolation=decoder_interpolation,
        **conv,
    )
    return Parts(encoder, decoder, SegmentationHead(decoder_channels[-1], classes, kernel_size=3, **conv), 1)
