"""smp's `MAnet` decoder (Fan et al. 2020, multi-scale attention net): position-wise attention
(PAB) on the deepest feature map, then Unet-like blocks whose upsampled input and skip are
reweighted by squeeze-and-excitation before they are concatenated (MFAB)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Parts, SegmentationHead
from jaxseg.models.decoders.unetplusplus import DecoderBlock, deprecated_use_batchnorm
from jaxseg.models.interpolation import check_interpolation, interpolate
from jaxseg.models.layers import ConvNormReLU, Sequential, conv2d, use_batchnorm


class PABBlock(nnx.Module):
    """smp's `PABBlock`: `x + attention`, then a 3x3 convolution. The attention map is
    `center^T top` over all `HW x HW` position pairs, softmax-normalised over the whole map of a
    batch item (smp's `Softmax(dim=1)` of the flattened map), applied to `bottom`."""

    def __init__(self, in_channels: int, pab_channels: int = 64, **conv):
        conv = dict(conv, kernel_init=KAIMING_FAN_IN)
        self.top_conv = conv2d(in_channels, pab_channels, 1, **conv)
        self.center_conv = conv2d(in_channels, pab_channels, 1, **conv)
        self.bottom_conv = conv2d(in_channels, in_channels, 3, **conv)
        self.out_conv = conv2d(in_channels, in_channels, 3, **conv)

    def __call__(self, x, *, train: bool = False):
        batch, height, width, channels = x.shape
        positions = height * width  # NHWC flattens positions row-major, as torch's flatten(2) of NCHW
        top = self.top_conv(x).reshape(batch, positions, -1)  # [B, HW, P]
        center = self.center_conv(x).reshape(batch, positions, -1)  # [B, HW, P]
        bottom = self.bottom_conv(x).reshape(batch, positions, channels)  # [B, HW, C]
        attention = jnp.einsum("bip,bjp->bij", center, top)
        attention = jax.nn.softmax(attention.reshape(batch, -1), axis=-1).reshape(batch, positions, positions)
        attended = jnp.einsum("bij,bjc->bic", attention, bottom)  # [B, HW, C]
        # smp reshapes this [B, HW, C] buffer straight to [B, C, H, W] (a reinterpretation, not a
        # transpose); its NHWC view is that array's channels moved last.
        attended = attended.reshape(batch, channels, height, width).transpose(0, 2, 3, 1)
        return self.out_conv(x + attended)


class SqueezeExcite(nnx.List):
    """smp's MFAB `SE_ll` / `SE_hl`: `[AdaptiveAvgPool2d(1), Conv2d, ReLU, Conv2d, Sigmoid]`,
    the channel weights `[B, 1, 1, C]` of `x` (not `x` reweighted)."""

    def __init__(self, channels: int, reduced: int, **conv):
        conv = dict(conv, kernel_init=KAIMING_FAN_IN)
        super().__init__([None, conv2d(channels, reduced, 1, **conv), None, conv2d(reduced, channels, 1, **conv), None])

    def __call__(self, x):
        squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
        return nnx.sigmoid(self[3](nnx.relu(self[1](squeezed))))


class MFABBlock(nnx.Module):
    """smp's `MFABBlock`: the input reduced to the skip's channels (3x3 then 1x1 Conv-BN-ReLU),
    upsampled 2x, scaled by the sum of its and the skip's SE weights, concatenated with the
    skip, then two 3x3 Conv-BN-ReLU."""

    def __init__(
        self, in_channels, skip_channels, out_channels, *, use_norm, interpolation, reduction: int = 16, **conv
    ):
        norm_conv = dict(conv, use_norm=use_norm, kernel_init=KAIMING_FAN_IN)
        self.interpolation = interpolation
        self.hl_conv = Sequential(
            [
                ConvNormReLU(in_channels, in_channels, 3, **norm_conv),
                ConvNormReLU(in_channels, skip_channels, 1, **norm_conv),
            ]
        )
        reduced = max(1, skip_channels // reduction)
        self.SE_ll = SqueezeExcite(skip_channels, reduced, **conv)
        self.SE_hl = SqueezeExcite(skip_channels, reduced, **conv)
        self.conv1 = ConvNormReLU(skip_channels + skip_channels, out_channels, 3, **norm_conv)
        self.conv2 = ConvNormReLU(out_channels, out_channels, 3, **norm_conv)

    def __call__(self, x, skip=None, *, train: bool):
        x = self.hl_conv(x, train=train)
        x = interpolate(x, (2 * x.shape[1], 2 * x.shape[2]), self.interpolation)  # scale_factor=2.0
        if skip is not None:
            x = jnp.concatenate([x * (self.SE_hl(x) + self.SE_ll(skip)), skip], axis=-1)
        return self.conv2(self.conv1(x, train=train), train=train)


class MAnetDecoder(nnx.Module):
    """smp 0.6 `MAnetDecoder`: `center` (PAB) on the deepest feature, then an MFAB block per skip
    and a plain `DecoderBlock` for the last upsampling (no skip)."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        *,
        n_blocks: int = 5,
        reduction: int = 16,
        use_norm: bool = True,
        pab_channels: int = 64,
        interpolation: str = "nearest",
        **conv,
    ):
        if n_blocks != len(decoder_channels):
            raise ValueError(
                f"Model depth is {n_blocks}, but you provide `decoder_channels` for {len(decoder_channels)} blocks."
            )
        check_interpolation(interpolation)
        encoder_channels = list(encoder_channels[1:])[::-1]  # deepest first, without the input
        in_channels = [encoder_channels[0], *decoder_channels[:-1]]
        skip_channels = [*encoder_channels[1:], 0]
        self.center = PABBlock(encoder_channels[0], pab_channels=pab_channels, **conv)
        options = dict(use_norm=use_norm, interpolation=interpolation, **conv)
        self.blocks = nnx.List(
            [
                MFABBlock(i, s, o, reduction=reduction, **options)
                if s > 0
                else DecoderBlock(i, s, o, attention_type=None, **options)
                for i, s, o in zip(in_channels, skip_channels, decoder_channels)
            ]
        )

    def __call__(self, features: list, *, train: bool = False, key=None):
        head, *skips = features[1:][::-1]
        x = self.center(head)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None, train=train)
        return x


def manet(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str | dict = "batchnorm",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_pab_channels: int = 64,
    decoder_interpolation: str = "nearest",
    decoder_use_batchnorm: bool | str | dict | None = None,
) -> Parts:
    """smp's `MAnet` (its options and defaults; `decoder_use_batchnorm` is smp's deprecated
    spelling of `decoder_use_norm`). Inputs must divide by the encoder's output stride."""
    decoder_use_norm = deprecated_use_batchnorm(decoder_use_norm, decoder_use_batchnorm)
    encoder = make_encoder(depth=encoder_depth)
    decoder = MAnetDecoder(
        encoder.out_channels,
        tuple(decoder_channels),
        n_blocks=encoder_depth,
        use_norm=use_batchnorm(decoder_use_norm),
        pab_channels=decoder_pab_channels,
        interpolation=decoder_interpolation,
        **conv,
    )
    head = SegmentationHead(decoder_channels[-1], classes, kernel_size=3, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
