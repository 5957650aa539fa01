"""smp's `Segformer` decoder (Xie et al. 2021, the all-MLP head): each encoder feature map is
projected by a linear layer to `segmentation_channels`, resized bilinearly to a quarter of the
input size, concatenated (deepest first) and fused by a 1x1 Conv-BN-ReLU; the segmentation head
(1x1) upsamples the quarter-size logits `upsampling` times."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, XAVIER, Parts, SegmentationHead
from jaxseg.models.interpolation import interpolate
from jaxseg.models.layers import ConvNormReLU, linear


class MLP(nnx.Module):
    """smp's Segformer `MLP`: one linear layer over the channels of every pixel."""

    def __init__(self, skip_channels: int, segmentation_channels: int, *, dtype, rngs):
        self.linear = linear(skip_channels, segmentation_channels, kernel_init=XAVIER, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


def without_placeholder(features: list) -> list:
    """The encoder's features from stride 2 on, skipping the zero-channel stride-2 placeholder of
    encoders without a stride-2 stage (Mix Transformer), as smp's decoder does."""
    return features[2:] if features[1].shape[-1] == 0 else features[1:]


class SegformerDecoder(nnx.Module):
    """smp 0.6 `SegformerDecoder`: one `MLP` per feature map below the input (4 for a Mix
    Transformer, 5 for a ResNet, whose stride-2 map is then downsampled), deepest first, each resized
    to `(H // 4, W // 4)` of the input, concatenated and fused by a 1x1 Conv-BN-ReLU."""

    def __init__(self, encoder_channels, *, encoder_depth: int = 5, segmentation_channels: int = 256, **conv):
        if encoder_depth < 3:
            raise ValueError(f"Encoder depth for Segformer decoder cannot be less than 3, got {encoder_depth}.")
        channels = list(encoder_channels)
        if channels[1] == 0:
            channels = [c for index, c in enumerate(channels) if index != 1]
        deepest_first = channels[::-1][:-1]  # the input is not projected
        linear = dict(dtype=conv["dtype"], rngs=conv["rngs"])
        self.mlp_stage = nnx.List([MLP(c, segmentation_channels, **linear) for c in deepest_first])
        self.fuse_stage = ConvNormReLU(
            len(deepest_first) * segmentation_channels,
            segmentation_channels,
            1,
            use_norm=True,
            kernel_init=KAIMING_FAN_IN,
            **conv,
        )

    def __call__(self, features: list, *, train: bool = False, key=None):
        height, width = features[0].shape[1:3]
        target = (height // 4, width // 4)
        deepest_first = without_placeholder(features)[::-1]
        resized = [interpolate(mlp(f), target, "bilinear") for mlp, f in zip(self.mlp_stage, deepest_first)]
        return self.fuse_stage(jnp.concatenate(resized, axis=-1), train=train)


def segformer(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    decoder_segmentation_channels: int = 256,
    upsampling: int = 4,
) -> Parts:
    """smp's `Segformer` (its options and defaults), on any jaxseg encoder (smp builds it on any
    encoder too). Inputs must divide by the encoder's output stride (smp's default
    `requires_divisible_input_shape`)."""
    encoder = make_encoder(depth=encoder_depth)
    decoder = SegformerDecoder(
        encoder.out_channels,
        encoder_depth=encoder_depth,
        segmentation_channels=decoder_segmentation_channels,
        **conv,
    )
    head = SegmentationHead(decoder_segmentation_channels, classes, kernel_size=1, upsampling=upsampling, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
