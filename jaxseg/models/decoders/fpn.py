"""smp's `FPN` decoder (Lin et al. 2017, with the segmentation branch of Kirillov et al. 2019's
panoptic FPN): a top-down pyramid over the encoder's four deepest maps, each level brought to
stride 4 of the pyramid's base by 3x3 Conv-GroupNorm-ReLU blocks with 2x upsampling, merged by
sum or concatenation, and channel dropout."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, Parts, SegmentationHead
from jaxseg.models.interpolation import check_interpolation, interpolate
from jaxseg.models.layers import conv2d

MERGE_POLICIES = ("add", "cat")
GROUPS = 32  # smp's nn.GroupNorm(32, channels)


def doubled(x):
    """`(2H, 2W)` of `[B, H, W, C]`: the size torch's `interpolate(scale_factor=2.0)` gives."""
    return x.shape[1] * 2, x.shape[2] * 2


class Conv3x3GNReLU(nnx.Module):
    """smp's `Conv3x3GNReLU`: `block = [conv 3x3 (no bias), GroupNorm(32), ReLU]`, then, with
    `upsample`, 2x bilinear upsampling with aligned corners."""

    def __init__(self, in_channels, out_channels, *, upsample: bool, dtype=None, rngs, **conv):
        if out_channels % GROUPS:
            raise ValueError(f"num_channels ({out_channels}) must be divisible by num_groups ({GROUPS})")
        layer = conv2d(
            in_channels, out_channels, 3, bias=False, kernel_init=KAIMING_FAN_IN, dtype=dtype, rngs=rngs, **conv
        )
        # torch's eps (Flax's default is 1e-6) and the two-pass variance torch computes.
        norm = nnx.GroupNorm(
            out_channels, num_groups=GROUPS, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=rngs
        )
        self.block = nnx.List([layer, norm, None])
        self.upsample = upsample

    def __call__(self, x):
        x = nnx.relu(self.block[1](self.block[0](x)))
        return interpolate(x, doubled(x), "bilinear", align_corners=True) if self.upsample else x


class SegmentationBlock(nnx.Module):
    """smp's `SegmentationBlock`: `n_upsamples` upsampling Conv3x3GNReLU (one plain one for 0)."""

    def __init__(self, in_channels, out_channels, *, n_upsamples: int, **conv):
        first = Conv3x3GNReLU(in_channels, out_channels, upsample=n_upsamples > 0, **conv)
        rest = [Conv3x3GNReLU(out_channels, out_channels, upsample=True, **conv) for _ in range(1, n_upsamples)]
        self.block = nnx.List([first, *rest])

    def __call__(self, x):
        for layer in self.block:
            x = layer(x)
        return x


class FPNBlock(nnx.Module):
    """smp's `FPNBlock`: the coarser level upsampled 2x plus a 1x1 projection of the skip."""

    def __init__(self, pyramid_channels, skip_channels, *, interpolation: str, **conv):
        self.skip_conv = conv2d(skip_channels, pyramid_channels, 1, kernel_init=KAIMING_FAN_IN, **conv)
        self.interpolation = interpolation

    def __call__(self, x, skip):
        return interpolate(x, doubled(x), self.interpolation) + self.skip_conv(skip)


def merge(pyramid: list, policy: str):
    """smp's `MergeBlock`: the levels summed, or concatenated in order (deepest first)."""
    return sum(pyramid[1:], pyramid[0]) if policy == "add" else jnp.concatenate(pyramid, axis=-1)


class FPNDecoder(nnx.Module):
    """smp 0.6 `FPNDecoder`: levels p5..p2 on the encoder's four deepest maps (with depth 3 the
    shallowest is the input itself, as in smp), merged at p2's stride."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        encoder_depth: int = 5,
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        dropout: float = 0.2,
        merge_policy: str = "add",
        interpolation: str = "nearest",
        **conv,
    ):
        if merge_policy not in MERGE_POLICIES:
            raise ValueError(f"`merge_policy` must be one of: ['add', 'cat'], got {merge_policy}")
        if encoder_depth < 3:
            raise ValueError(f"Encoder depth for FPN decoder cannot be less than 3, got {encoder_depth}.")
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {dropout}")
        check_interpolation(interpolation)
        self.out_channels = segmentation_channels if merge_policy == "add" else segmentation_channels * 4
        channels = list(encoder_channels)[::-1][: encoder_depth + 1]
        self.p5 = conv2d(channels[0], pyramid_channels, 1, kernel_init=KAIMING_FAN_IN, **conv)
        self.p4 = FPNBlock(pyramid_channels, channels[1], interpolation=interpolation, **conv)
        self.p3 = FPNBlock(pyramid_channels, channels[2], interpolation=interpolation, **conv)
        self.p2 = FPNBlock(pyramid_channels, channels[3], interpolation=interpolation, **conv)
        self.seg_blocks = nnx.List(
            [SegmentationBlock(pyramid_channels, segmentation_channels, n_upsamples=n, **conv) for n in (3, 2, 1, 0)]
        )
        self.merge_policy = merge_policy
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2))  # torch's Dropout2d: whole channels

    def __call__(self, features: list, *, train: bool = False, key=None):
        c2, c3, c4, c5 = features[-4:]
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        pyramid = [block(p) for block, p in zip(self.seg_blocks, (p5, p4, p3, p2))]
        return self.dropout(merge(pyramid, self.merge_policy), deterministic=not train, rngs=key)


def fpn(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    decoder_pyramid_channels: int = 256,
    decoder_segmentation_channels: int = 128,
    decoder_merge_policy: str = "add",
    decoder_dropout: float = 0.2,
    decoder_interpolation: str = "nearest",
    upsampling: int = 4,
) -> Parts:
    """smp's `FPN` (its options and defaults; `upsampling` 4 restores the input size at depth 5)."""
    if encoder_name.startswith("mit_b") and encoder_depth != 5:
        raise ValueError(f"Encoder {encoder_name} support only encoder_depth=5")
    encoder = make_encoder(depth=encoder_depth)
    decoder = FPNDecoder(
        encoder.out_channels,
        encoder_depth=encoder_depth,
        pyramid_channels=decoder_pyramid_channels,
        segmentation_channels=decoder_segmentation_channels,
        dropout=decoder_dropout,
        merge_policy=decoder_merge_policy,
        interpolation=decoder_interpolation,
        **conv,
    )
    head = SegmentationHead(decoder.out_channels, classes, kernel_size=1, upsampling=upsampling, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
