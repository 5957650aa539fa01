"""smp's `Linknet` decoder (Chaurasia & Culurciello 2017): from the deepest feature map up, each
block narrows to a quarter of its channels (1x1), doubles the resolution with a 4x4 transposed
convolution, widens to the next skip's channels (1x1) and adds the skip."""

from __future__ import annotations

import warnings
from typing import Sequence

from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Parts, SegmentationHead
from jaxseg.models.layers import ConvNormReLU, ConvTranspose2d, Sequential, batch_norm, call, use_batchnorm

PREFINAL_CHANNELS = 32  # smp's fixed width of the last block (and the head's input)


class TransposeX2(nnx.List):
    """smp's `TransposeX2`: `[ConvTranspose2d(k 4, stride 2, padding 1), norm, ReLU]` (the
    transposed convolution keeps its bias with a norm, as in smp)."""

    def __init__(self, in_channels, out_channels, *, use_norm: bool, dtype=None, rngs, **conv):
        layer = ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, dtype=dtype, rngs=rngs, **conv)
        super().__init__([layer, batch_norm(out_channels, dtype=dtype, rngs=rngs) if use_norm else None, None])

    def __call__(self, x, *, train: bool):
        return nnx.relu(call(self[1], self[0](x), train))


class DecoderBlock(nnx.Module):
    """smp's Linknet `DecoderBlock`: `block = [Conv2dReLU 1x1 to in/4, TransposeX2, Conv2dReLU
    1x1 to out]`, plus the skip when there is one."""

    def __init__(self, in_channels, out_channels, *, use_norm: bool, **conv):
        narrow = in_channels // 4
        norm_conv = dict(conv, use_norm=use_norm, kernel_init=KAIMING_FAN_IN)
        self.block = Sequential(
            [
                ConvNormReLU(in_channels, narrow, 1, **norm_conv),
                TransposeX2(narrow, narrow, use_norm=use_norm, **conv),
                ConvNormReLU(narrow, out_channels, 1, **norm_conv),
            ]
        )

    def __call__(self, x, skip=None, *, train: bool):
        x = self.block(x, train=train)
        return x if skip is None or skip.shape[-1] == 0 else x + skip


class LinknetDecoder(nnx.Module):
    """smp 0.6 `LinknetDecoder`: `n_blocks` blocks (the encoder depth), the last one without a skip
    bringing the stride-2 map to the input size with `prefinal_channels`."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        prefinal_channels: int = PREFINAL_CHANNELS,
        n_blocks: int = 5,
        use_norm: bool = True,
        **conv,
    ):
        channels = [*list(encoder_channels[1:])[::-1], prefinal_channels]
        for i in range(1, len(channels) - 1):
            # An encoder starting at stride 4 has a 0-channel stride-2 placeholder: as smp, the
            # stream keeps its width there and that block adds no skip.
            if channels[i] == 0:
                channels[i] = channels[i - 1]
        self.blocks = nnx.List(
            [DecoderBlock(channels[i], channels[i + 1], use_norm=use_norm, **conv) for i in range(n_blocks)]
        )

    def __call__(self, features: list, *, train: bool = False, key=None):
        x, *skips = features[1:][::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None, train=train)
        return x


def linknet(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str = "batchnorm",
    decoder_use_batchnorm: bool | str | None = None,
) -> Parts:
    """smp's `Linknet` (its options and defaults; `decoder_use_batchnorm` is smp's deprecated
    name of `decoder_use_norm`, which it overrides, with smp's DeprecationWarning)."""
    if encoder_name.startswith("mit_b"):
        raise ValueError(f"Encoder `{encoder_name}` is not supported for Linknet")
    if decoder_use_batchnorm is not None:
        warnings.warn(
            "The usage of decoder_use_batchnorm is deprecated. Please modify your code for decoder_use_norm",
            DeprecationWarning,
            stacklevel=2,
        )
        decoder_use_norm = decoder_use_batchnorm
    use_norm = use_batchnorm(decoder_use_norm)
    encoder = make_encoder(depth=encoder_depth)
    decoder = LinknetDecoder(encoder.out_channels, n_blocks=encoder_depth, use_norm=use_norm, **conv)
    head = SegmentationHead(PREFINAL_CHANNELS, classes, kernel_size=1, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
