"""smp's `UnetPlusPlus` decoder (Zhou et al. 2018): a Unet whose skips are themselves decoded
through nested blocks `x_{depth}_{layer}`, each fed by every block before it at its resolution
(dense skip connections)."""

from __future__ import annotations

import warnings
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Attention, Parts, SegmentationHead
from jaxseg.models.interpolation import check_interpolation, interpolate
from jaxseg.models.layers import ConvNormReLU, Sequential, use_batchnorm


class DecoderBlock(nnx.Module):
    """smp's Unet++ (and MAnet) `DecoderBlock`: 2x upsampling (`interpolation`, any of
    `F.interpolate`'s modes), the skip concatenated after it, scSE attention around two 3x3
    Conv-BN-ReLU. A block of 0 output channels (smp's `is_empty`) has no layers and gives an
    empty map."""

    def __init__(self, in_channels, skip_channels, out_channels, *, use_norm, attention_type, interpolation, **conv):
        self.interpolation, self.is_empty = interpolation, out_channels == 0
        if self.is_empty:
            self.conv1 = self.attention1 = self.conv2 = self.attention2 = None
            return
        norm_conv = dict(conv, use_norm=use_norm, kernel_init=KAIMING_FAN_IN)
        self.conv1 = ConvNormReLU(in_channels + skip_channels, out_channels, 3, **norm_conv)
        self.attention1 = Attention(attention_type, in_channels + skip_channels, **conv)
        self.conv2 = ConvNormReLU(out_channels, out_channels, 3, **norm_conv)
        self.attention2 = Attention(attention_type, out_channels, **conv)

    def __call__(self, x, skip=None, *, train: bool):
        x = interpolate(x, (2 * x.shape[1], 2 * x.shape[2]), self.interpolation)  # scale_factor=2.0
        if self.is_empty:
            return x[..., :0]
        if skip is not None:
            x = self.attention1(jnp.concatenate([x, skip], axis=-1), train=train)
        x = self.conv2(self.conv1(x, train=train), train=train)
        return self.attention2(x, train=train)


class CenterBlock(Sequential):
    """smp's Unet++ `CenterBlock` (built for VGG encoders): two 3x3 Conv-BN-ReLU at the deepest level."""

    def __init__(self, channels: int, *, use_norm: bool, **conv):
        norm_conv = dict(conv, use_norm=use_norm, kernel_init=KAIMING_FAN_IN)
        super().__init__([ConvNormReLU(channels, channels, 3, **norm_conv) for _ in range(2)])


def block_channels(encoder_channels: Sequence[int], decoder_channels: Sequence[int]) -> dict[str, tuple]:
    """`{"x_{depth}_{layer}": (in, skip, out)}` of smp's `UnetPlusPlusDecoder` blocks: `layer` counts
    the upsampling steps from the deepest feature, `depth` the nesting (0: the Unet path)."""
    encoder_channels = list(encoder_channels[1:])[::-1]  # deepest first, without the input
    in_channels = [encoder_channels[0], *decoder_channels[:-1]]
    skip_channels = [*encoder_channels[1:], 0]
    blocks = {}
    for layer in range(len(in_channels) - 1):
        for depth in range(layer + 1):
            if depth == 0:
                channels = (in_channels[layer], skip_channels[layer] * (layer + 1), decoder_channels[layer])
            else:
                skip = skip_channels[layer] * (layer + 1 - depth)
                channels = (skip_channels[layer - 1], skip, skip_channels[layer])
            blocks[f"x_{depth}_{layer}"] = channels
    blocks[f"x_0_{len(in_channels) - 1}"] = (in_channels[-1], 0, decoder_channels[-1])
    return blocks


class UnetPlusPlusDecoder(nnx.Module):
    """smp 0.6 `UnetPlusPlusDecoder`: `blocks` keyed `x_{depth}_{layer}` as smp's `nn.ModuleDict`
    (so the state-dict keys are `blocks.x_0_0.conv1.0.weight`, ...); `center` only where smp
    builds it (VGG encoders), and, as in smp, never applied."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        *,
        n_blocks: int = 5,
        use_norm: bool = True,
        attention_type: str | None = None,
        interpolation: str = "nearest",
        center: bool = False,
        **conv,
    ):
        if n_blocks != len(decoder_channels):
            raise ValueError(
                f"Model depth is {n_blocks}, but you provide `decoder_channels` for {len(decoder_channels)} blocks."
            )
        check_interpolation(interpolation)
        self.center = CenterBlock(encoder_channels[-1], use_norm=use_norm, **conv) if center else None
        options = dict(use_norm=use_norm, attention_type=attention_type, interpolation=interpolation, **conv)
        self.blocks = nnx.Dict(
            {
                name: DecoderBlock(*channels, **options)
                for name, channels in block_channels(encoder_channels, decoder_channels).items()
            }
        )
        self.depth = len(decoder_channels) - 1

    def __call__(self, features: list, *, train: bool = False, key=None):
        # smp's forward never applies `center`: its parameters load and export, the output ignores them.
        features = features[1:][::-1]  # deepest first, without the input
        dense = {}
        for layer in range(self.depth):
            for depth in range(self.depth - layer):
                if layer == 0:
                    dense[f"x_{depth}_{depth}"] = self.blocks[f"x_{depth}_{depth}"](
                        features[depth], features[depth + 1], train=train
                    )
                    continue
                target = depth + layer  # the resolution of features[target + 1]
                skips = [dense[f"x_{d}_{target}"] for d in range(depth + 1, target + 1)] + [features[target + 1]]
                dense[f"x_{depth}_{target}"] = self.blocks[f"x_{depth}_{target}"](
                    dense[f"x_{depth}_{target - 1}"], jnp.concatenate(skips, axis=-1), train=train
                )
        return self.blocks[f"x_0_{self.depth}"](dense[f"x_0_{self.depth - 1}"], train=train)


def deprecated_use_batchnorm(use_norm, use_batchnorm):
    """smp's `decoder_use_batchnorm` (Unet++, MAnet): when given, it warns and replaces `decoder_use_norm`."""
    if use_batchnorm is None:
        return use_norm
    warnings.warn(
        "The usage of decoder_use_batchnorm is deprecated. Please modify your code for decoder_use_norm",
        DeprecationWarning,
        stacklevel=3,
    )
    return use_batchnorm


def unetplusplus(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str | dict = "batchnorm",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_attention_type: str | None = None,
    decoder_interpolation: str = "nearest",
    decoder_use_batchnorm: bool | str | dict | None = None,
) -> Parts:
    """smp's `UnetPlusPlus` (its options and defaults; `decoder_use_batchnorm` is smp's deprecated
    spelling of `decoder_use_norm`). Inputs must divide by the encoder's output stride."""
    if encoder_name.startswith("mit_b"):
        raise ValueError(f"UnetPlusPlus is not support encoder_name={encoder_name}")
    decoder_use_norm = deprecated_use_batchnorm(decoder_use_norm, decoder_use_batchnorm)
    encoder = make_encoder(depth=encoder_depth)
    decoder = UnetPlusPlusDecoder(
        encoder.out_channels,
        tuple(decoder_channels),
        n_blocks=encoder_depth,
        use_norm=use_batchnorm(decoder_use_norm),
        attention_type=decoder_attention_type,
        interpolation=decoder_interpolation,
        center=encoder_name.startswith("vgg"),
        **conv,
    )
    head = SegmentationHead(decoder_channels[-1], classes, kernel_size=3, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
