"""smp's `DPT` (Ranftl et al. 2021, dense prediction transformers) on a ViT encoder: each block
output is read out with its class token (`decoder_readout`: concatenated and projected, added,
or ignored), reassembled to strides 4, 8, 16, 32 (a 1x1 convolution, then a transposed
convolution, nothing, or a strided 3x3 convolution, then a 3x3 convolution to
`decoder_fusion_channels`), and fused deepest first by residual convolution units, each fusion
upsampling 2x; the head (3x3 Conv-BN-ReLU, dropout 0.1, 1x1) upsamples the stride-2 logits 2x."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import KAIMING_FAN_IN, XAVIER, Parts
from jaxseg.models.encoders.vit import VITS, base_name
from jaxseg.models.interpolation import interpolate
from jaxseg.models.layers import ConvTranspose2d, batch_norm, call, conv2d, linear

READOUTS = ("ignore", "add", "cat")
HEAD_DROPOUT = 0.1


def check_readout(readout: str) -> None:
    if readout not in READOUTS:
        raise ValueError(f"Invalid decoder readout mode. Must be one of: 'ignore', 'add', 'cat'. Got: {readout}")


def upsample_2x(x):
    """torch's `interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)`."""
    return interpolate(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)


class ReadoutConcat(nnx.Module):
    """smp's `ReadoutConcatBlock`: `GELU(Linear([map | class token]))` per pixel (without prefix
    tokens, `GELU(Linear(map))`)."""

    def __init__(self, dim: int, has_prefix_tokens: bool, *, dtype, rngs):
        in_features = 2 * dim if has_prefix_tokens else dim
        self.project = nnx.List([linear(in_features, dim, kernel_init=XAVIER, dtype=dtype, rngs=rngs), None])

    def __call__(self, x, prefix_tokens):
        if prefix_tokens is not None:
            cls = jnp.broadcast_to(prefix_tokens[:, :1, None, :], x.shape)
            x = jnp.concatenate([x, cls.astype(x.dtype)], axis=-1)
        return jax.nn.gelu(self.project[0](x), approximate=False)


def readout(mode: str, x, prefix_tokens, block):
    """smp's readout blocks: "cat" projects (`block`), "add" adds the mean prefix token, "ignore"
    passes the map."""
    if mode == "cat":
        return block(x, prefix_tokens)
    if mode == "add" and prefix_tokens is not None:
        return x + jnp.mean(prefix_tokens, axis=1)[:, None, None, :].astype(x.dtype)
    return x


class ReassembleBlock(nnx.Module):
    """smp's `ReassembleBlock`: 1x1 to `mid_channels`; resampled by `factor` (a transposed
    convolution with kernel = stride = factor above 1, a 3x3 convolution with stride 1 / factor
    below); 3x3 (no bias) to `out_channels`."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, factor: float, **conv):
        init = dict(conv, kernel_init=KAIMING_FAN_IN)
        self.project_to_out_channel = conv2d(in_channels, mid_channels, 1, **init)
        self.upsample: ConvTranspose2d | nnx.Conv | None
        if factor > 1:
            transpose = dict(dtype=conv["dtype"], conv_general_dilated=conv["conv_general_dilated"], rngs=conv["rngs"])
            self.upsample = ConvTranspose2d(mid_channels, mid_channels, int(factor), stride=int(factor), **transpose)
        elif factor == 1:
            self.upsample = None
        else:
            self.upsample = conv2d(mid_channels, mid_channels, 3, stride=int(1 / factor), padding=1, **init)
        self.project_to_feature_dim = conv2d(mid_channels, out_channels, 3, bias=False, **init)

    def __call__(self, x):
        x = self.project_to_out_channel(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return self.project_to_feature_dim(x)


class ResidualConvBlock(nnx.Module):
    """smp's `ResidualConvBlock`: `x + BN(conv(ReLU(BN(conv(ReLU(x))))))`, 3x3 convolutions without bias."""

    def __init__(self, dim: int, **conv):
        init = dict(conv, kernel_init=KAIMING_FAN_IN, bias=False)
        self.conv_1 = conv2d(dim, dim, 3, **init)
        self.batch_norm_1 = batch_norm(dim, dtype=conv["dtype"], rngs=conv["rngs"])
        self.conv_2 = conv2d(dim, dim, 3, **init)
        self.batch_norm_2 = batch_norm(dim, dtype=conv["dtype"], rngs=conv["rngs"])

    def __call__(self, x, *, train: bool):
        y = call(self.batch_norm_1, self.conv_1(nnx.relu(x)), train)
        return x + call(self.batch_norm_2, self.conv_2(nnx.relu(y)), train)


class FusionBlock(nnx.Module):
    """smp's `FusionBlock`: `project(upsample_2x(rcu2(rcu1(x) + previous)))`."""

    def __init__(self, dim: int, **conv):
        self.residual_conv_block1 = ResidualConvBlock(dim, **conv)
        self.residual_conv_block2 = ResidualConvBlock(dim, **conv)
        self.project = conv2d(dim, dim, 1, **dict(conv, kernel_init=KAIMING_FAN_IN))

    def __call__(self, x, previous, *, train: bool):
        x = self.residual_conv_block1(x, train=train)
        if previous is not None:
            x = x + previous
        return self.project(upsample_2x(self.residual_conv_block2(x, train=train)))


class DPTDecoder(nnx.Module):
    """smp 0.6 `DPTDecoder` over the encoder's `TokenMaps`."""

    def __init__(
        self,
        encoder_channels,
        encoder_strides,
        *,
        has_prefix_tokens: bool,
        readout: str = "cat",
        intermediate_channels=(256, 512, 1024, 1024),
        fusion_channels: int = 256,
        **conv,
    ):
        if not len(encoder_channels) == len(encoder_strides) == len(intermediate_channels):
            raise ValueError(
                "encoder_out_channels, encoder_output_strides and intermediate_channels must have the same length"
            )
        check_readout(readout)
        self.readout = readout
        linear = dict(dtype=conv["dtype"], rngs=conv["rngs"])
        self.projection_blocks = nnx.List(
            [ReadoutConcat(c, has_prefix_tokens, **linear) if readout == "cat" else None for c in encoder_channels]
        )
        factors = [stride / 2 ** (i + 2) for i, stride in enumerate(encoder_strides)]
        self.reassemble_blocks = nnx.List(
            [
                ReassembleBlock(c, mid, fusion_channels, factor, **conv)
                for c, mid, factor in zip(encoder_channels, intermediate_channels, factors)
            ]
        )
        self.fusion_blocks = nnx.List([FusionBlock(fusion_channels, **conv) for _ in encoder_channels])

    def __call__(self, features, *, train: bool = False, key=None):
        prefix = getattr(features, "prefix_tokens", None) or [None] * len(features)
        levels = [
            reassemble(readout(self.readout, f, tokens, block))
            for f, tokens, block, reassemble in zip(features, prefix, self.projection_blocks, self.reassemble_blocks)
        ]
        fused = None
        for fusion, level in zip(self.fusion_blocks, levels[::-1]):
            fused = fusion(level, fused, train=train)
        return fused


class DPTSegmentationHead(nnx.Module):
    """smp's `DPTSegmentationHead`: `head` = [3x3 conv (no bias), BN, ReLU, Dropout(0.1), 1x1
    conv], then 2x bilinear upsampling with aligned corners."""

    def __init__(self, in_channels: int, classes: int, **conv):
        init = dict(conv, kernel_init=XAVIER)
        self.head: nnx.List[Any] = nnx.List(
            [
                conv2d(in_channels, in_channels, 3, bias=False, **init),
                batch_norm(in_channels, dtype=conv["dtype"], rngs=conv["rngs"]),
                None,
                nnx.Dropout(HEAD_DROPOUT),
                conv2d(in_channels, classes, 1, **init),
            ]
        )

    def __call__(self, x, *, train: bool = False, key=None):
        conv, norm, _, dropout, classify = self.head
        x = nnx.relu(call(norm, conv(x), train))
        if dropout.rate:
            x = dropout(x, deterministic=not train, rngs=key)
        return upsample_2x(classify(x))


def dpt(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 4,
    encoder_output_indices=None,
    decoder_readout: str = "cat",
    decoder_intermediate_channels=(256, 512, 1024, 1024),
    decoder_fusion_channels: int = 256,
    **encoder_options,
) -> Parts:
    """smp's `DPT` (its options and defaults; timm's `img_size` and `drop_path_rate` pass to the
    encoder). Inputs must divide by 16 and, as timm's ViT fixes its grid, equal `img_size`."""
    if not encoder_name.startswith("tu-"):
        raise ValueError(
            f"Only Timm encoders are supported for DPT. Encoder name must start with 'tu-', got {encoder_name}"
        )
    check_readout(decoder_readout)  # before the encoder, as smp
    if base_name(encoder_name) not in VITS:  # smp also takes timm's CNNs with forward_intermediates
        raise ValueError(f"jaxseg's DPT builds on the ViT encoders {tuple(VITS)}; got {encoder_name}")
    encoder = make_encoder(
        depth=encoder_depth, output_stride=None, output_indices=encoder_output_indices, **encoder_options
    )
    decoder = DPTDecoder(
        encoder.out_channels,
        (encoder.output_stride,) * len(encoder.out_channels),
        has_prefix_tokens=encoder.has_prefix_tokens,
        readout=decoder_readout,
        intermediate_channels=tuple(decoder_intermediate_channels),
        fusion_channels=decoder_fusion_channels,
        **conv,
    )
    head = DPTSegmentationHead(decoder_fusion_channels, classes, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
