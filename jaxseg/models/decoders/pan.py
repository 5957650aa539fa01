"""smp's `PAN` decoder (Li et al. 2018, Pyramid Attention Network): a Feature Pyramid Attention
block on the deepest map (a 7-5-3 pooled pyramid gating a 1x1 projection, plus a global-context
branch), then Global Attention Upsample blocks that weight each shallower skip by the channel
attention of the coarser decoder map and add its upsampled copy."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Parts, SegmentationHead
from jaxseg.models.interpolation import check_interpolation, interpolate
from jaxseg.models.layers import batch_norm, call, conv2d, max_pool_2x2

OUTPUT_STRIDES = (16, 32)


def global_average(x):
    """torch's `AdaptiveAvgPool2d(1)` of `[B, H, W, C]` -> `[B, 1, 1, C]`."""
    return x.mean(axis=(1, 2), keepdims=True)


class ConvBnRelu(nnx.Module):
    """smp's PAN `ConvBnRelu`: a `k x k` convolution with bias (padding `k // 2` at every call
    site), BatchNorm, and ReLU unless `add_relu` is False."""

    def __init__(self, in_channels, out_channels, kernel_size: int, *, add_relu: bool = True, dtype=None, rngs, **conv):
        self.conv = conv2d(
            in_channels, out_channels, kernel_size, kernel_init=KAIMING_FAN_IN, dtype=dtype, rngs=rngs, **conv
        )
        self.bn = batch_norm(out_channels, dtype=dtype, rngs=rngs)
        self.add_relu = add_relu

    def __call__(self, x, *, train: bool):
        x = call(self.bn, self.conv(x), train)
        return nnx.relu(x) if self.add_relu else x


class FPABlock(nnx.Module):
    """smp's `FPABlock`: `mid(x) * pyramid(x) + global branch`, the pyramid pooling three times
    (7x7, 5x5, 3x3 convolutions to one channel) and coming back by bilinear upsampling with
    aligned corners (smp builds it without the decoder's interpolation mode)."""

    def __init__(self, in_channels, out_channels, **conv):
        self.branch1 = nnx.List([None, ConvBnRelu(in_channels, out_channels, 1, **conv)])  # 0: global pooling
        self.mid = nnx.List([ConvBnRelu(in_channels, out_channels, 1, **conv)])
        self.down1 = nnx.List([None, ConvBnRelu(in_channels, 1, 7, **conv)])  # 0s: 2x2 max pooling
        self.down2 = nnx.List([None, ConvBnRelu(1, 1, 5, **conv)])
        self.down3 = nnx.List([None, ConvBnRelu(1, 1, 3, **conv), ConvBnRelu(1, 1, 3, **conv)])
        self.conv2 = ConvBnRelu(1, 1, 5, **conv)
        self.conv1 = ConvBnRelu(1, 1, 7, **conv)

    def __call__(self, x, *, train: bool):
        height, width = x.shape[1:3]
        context = interpolate(
            self.branch1[1](global_average(x), train=train), (height, width), "bilinear", align_corners=True
        )
        middle = self.mid[0](x, train=train)
        x1 = self.down1[1](max_pool_2x2(x), train=train)
        x2 = self.down2[1](max_pool_2x2(x1), train=train)
        x3 = self.down3[2](self.down3[1](max_pool_2x2(x2), train=train), train=train)
        x3 = interpolate(x3, (height // 4, width // 4), "bilinear", align_corners=True)
        pyramid = interpolate(
            self.conv2(x2, train=train) + x3, (height // 2, width // 2), "bilinear", align_corners=True
        )
        pyramid = interpolate(pyramid + self.conv1(x1, train=train), (height, width), "bilinear", align_corners=True)
        return pyramid * middle + context


class GAUBlock(nnx.Module):
    """smp's `GAUBlock(x low level, y high level)`: `upsample(y) + conv2(x) * sigmoid(conv1(pool(y)))`,
    upsampling with `interpolation` (aligned corners when it is bilinear, as smp sets)."""

    def __init__(self, in_channels, out_channels, *, interpolation: str, **conv):
        # conv1 is torch's [AdaptiveAvgPool2d(1), ConvBnRelu, Sigmoid]: None for the parameterless ends.
        self.conv1: nnx.List[Any] = nnx.List(
            [None, ConvBnRelu(out_channels, out_channels, 1, add_relu=False, **conv), None]
        )
        self.conv2 = ConvBnRelu(in_channels, out_channels, 3, **conv)
        self.interpolation = interpolation

    def __call__(self, x, y, *, train: bool):
        aligned = self.interpolation == "bilinear"
        y_up = interpolate(y, x.shape[1:3], self.interpolation, align_corners=aligned)
        attention = nnx.sigmoid(self.conv1[1](global_average(y), train=train))
        return y_up + self.conv2(x, train=train) * attention


class PANDecoder(nnx.Module):
    """smp 0.6 `PANDecoder`: FPA on the deepest map, then `gau3` (depth 5), `gau2` (depth >= 4)
    and `gau1` on the maps at strides 16, 8 and 4; the output is at stride 4."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        encoder_depth: int,
        decoder_channels: int,
        interpolation: str = "bilinear",
        **conv,
    ):
        if encoder_depth < 3:
            raise ValueError(f"Encoder depth for PAN decoder cannot be less than 3, got {encoder_depth}.")
        check_interpolation(interpolation)
        channels = list(encoder_channels)[2:]
        options = dict(interpolation=interpolation, **conv)
        self.fpa = FPABlock(channels[-1], decoder_channels, **conv)
        # gau<n> fuses the skip channels[n - 1]; smp builds only the ones the encoder's depth reaches.
        self.gau3 = GAUBlock(channels[2], decoder_channels, **options) if encoder_depth == 5 else None
        self.gau2 = GAUBlock(channels[1], decoder_channels, **options) if encoder_depth >= 4 else None
        self.gau1 = GAUBlock(channels[0], decoder_channels, **options)

    def __call__(self, features: list, *, train: bool = False, key=None):
        skips = features[2:]
        out = self.fpa(skips[-1], train=train)
        for index, gau in ((2, self.gau3), (1, self.gau2), (0, self.gau1)):
            if gau is not None:
                out = gau(skips[index], out, train=train)
        return out


def pan(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    encoder_output_stride: int = 16,
    decoder_channels: int = 32,
    decoder_interpolation: str = "bilinear",
    upsampling: int = 4,
    upscale_mode: str | None = None,
) -> Parts:
    """smp's `PAN` (its options and defaults; `upscale_mode` is smp's deprecated name of
    `decoder_interpolation`, which it overrides, with smp's DeprecationWarning)."""
    if encoder_output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"PAN support output stride 16 or 32, got {encoder_output_stride}")
    if upscale_mode is not None:
        warnings.warn(
            "The usage of upscale_mode is deprecated. Please modify your code for decoder_interpolation",
            DeprecationWarning,
            stacklevel=2,
        )
        decoder_interpolation = upscale_mode
    encoder = make_encoder(depth=encoder_depth, output_stride=encoder_output_stride)
    decoder = PANDecoder(
        encoder.out_channels,
        encoder_depth=encoder_depth,
        decoder_channels=decoder_channels,
        interpolation=decoder_interpolation,
        **conv,
    )
    head = SegmentationHead(decoder_channels, classes, kernel_size=3, upsampling=upsampling, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
