"""smp's `DeepLabV3` (Chen et al. 2017) and `DeepLabV3Plus` (Chen et al. 2018) decoders: atrous
spatial pyramid pooling (ASPP) on a dilated encoder's deepest feature map; V3+ also upsamples it
to stride 4 and fuses a 48-channel projection of the stride-4 feature map.

smp builds these two models without its `initialize()`, so their decoder convolutions start
from torch's default initialisation (`TORCH_DEFAULT`), not smp's Kaiming fan-in.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.decoders.heads import Parts, SegmentationHead
from jaxseg.models.interpolation import interpolate
from jaxseg.models.layers import batch_norm, call, conv2d

OUTPUT_STRIDES = (8, 16)
HIGHRES_CHANNELS = 48  # V3+'s projection of the stride-4 features, as the paper proposes
# torch's nn.Conv2d default: kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)).
TORCH_DEFAULT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class SeparableConv2d(nnx.List):
    """smp's `SeparableConv2d`: `nn.Sequential(depthwise k x k, pointwise 1x1)`, the depthwise
    convolution without bias."""

    def __init__(self, in_channels, out_channels, kernel_size, *, padding=0, dilation=1, bias=True, **conv):
        depthwise = conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
            **conv,
        )
        super().__init__([depthwise, conv2d(in_channels, out_channels, 1, bias=bias, **conv)])

    def __call__(self, x, *, train: bool = False):
        return self[1](self[0](x))


class SequentialReLU(nnx.List):
    """torch's `nn.Sequential(*layers, nn.ReLU())`: the layers in order (convolutions, norms,
    modules taking `train`), then ReLU (the list's last entry, None, keeps torch's indices)."""

    def __init__(self, layers: Sequence):
        super().__init__([*layers, None])

    def __call__(self, x, *, train: bool):
        for layer in self[:-1]:
            x = call(layer, x, train)
        return nnx.relu(x)


def conv_bn_relu(conv_layer, channels: int, *, dtype=None, rngs: nnx.Rngs) -> SequentialReLU:
    """`nn.Sequential(conv_layer, BatchNorm2d(channels), ReLU())`."""
    return SequentialReLU([conv_layer, batch_norm(channels, dtype=dtype, rngs=rngs)])


class ASPPPooling(nnx.List):
    """smp's `ASPPPooling`: global average pooling, 1x1 Conv-BN-ReLU, and the 1x1 map resized
    back to the input's size (torch's bilinear resize of a single pixel is that pixel everywhere,
    so it is a broadcast here)."""

    def __init__(self, in_channels, out_channels, **conv):
        norm = batch_norm(out_channels, dtype=conv.get("dtype"), rngs=conv["rngs"])
        super().__init__([None, conv2d(in_channels, out_channels, 1, bias=False, **conv), norm, None])

    def __call__(self, x, *, train: bool):
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
        pooled = nnx.relu(call(self[2], self[1](pooled), train))
        return jnp.broadcast_to(pooled, (*x.shape[:3], pooled.shape[3]))


def atrous_rates_of(rates) -> tuple[int, int, int]:
    rates = tuple(rates)
    if len(rates) != 3:
        raise ValueError(f"decoder_atrous_rates should be 3 dilation rates, got {rates}")
    return rates


class ASPP(nnx.Module):
    """smp's `ASPP`: five parallel branches (1x1 conv, three 3x3 convs dilated by the atrous
    rates, optionally depthwise-separable, and image pooling), concatenated in that order, then
    a 1x1 Conv-BN-ReLU projection and (element-wise) dropout."""

    def __init__(self, in_channels, out_channels, atrous_rates, *, separable: bool, dropout: float, **conv):
        conv = dict(conv, kernel_init=TORCH_DEFAULT)
        norm = dict(dtype=conv.get("dtype"), rngs=conv["rngs"])

        def atrous(rate):
            layer = SeparableConv2d if separable else conv2d
            return layer(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False, **conv)

        self.convs = nnx.List(
            [
                conv_bn_relu(conv2d(in_channels, out_channels, 1, bias=False, **conv), out_channels, **norm),
                *[conv_bn_relu(atrous(rate), out_channels, **norm) for rate in atrous_rates_of(atrous_rates)],
                ASPPPooling(in_channels, out_channels, **conv),
            ]
        )
        project = conv2d(5 * out_channels, out_channels, 1, bias=False, **conv)
        self.project: nnx.List[Any] = nnx.List([project, batch_norm(out_channels, **norm), None, nnx.Dropout(dropout)])

    def __call__(self, x, *, train: bool, key=None):
        branches = jnp.concatenate([branch(x, train=train) for branch in self.convs], axis=-1)
        projected = nnx.relu(call(self.project[1], self.project[0](branches), train))
        return self.project[3](projected, deterministic=not train, rngs=key)


class DeepLabV3Decoder(nnx.Module):
    """smp's `DeepLabV3Decoder`: ASPP on the deepest feature map, then a 3x3 Conv-BN-ReLU."""

    def __init__(self, in_channels, out_channels, atrous_rates, *, aspp_separable: bool, aspp_dropout: float, **conv):
        self.aspp = ASPP(
            in_channels, out_channels, atrous_rates, separable=aspp_separable, dropout=aspp_dropout, **conv
        )
        self.conv = conv2d(out_channels, out_channels, 3, padding=1, bias=False, kernel_init=TORCH_DEFAULT, **conv)
        self.bn = batch_norm(out_channels, dtype=conv.get("dtype"), rngs=conv["rngs"])

    def __call__(self, features: list, *, train: bool = False, key=None):
        x = self.aspp(features[-1], train=train, key=key)
        return nnx.relu(call(self.bn, self.conv(x), train))


def check_plus_depth(encoder_depth: int) -> None:
    if encoder_depth < 3:
        raise ValueError(f"Encoder depth for DeepLabV3Plus decoder cannot be less than 3, got {encoder_depth}.")


class DeepLabV3PlusDecoder(nnx.Module):
    """smp's `DeepLabV3PlusDecoder`: `aspp` (ASPP, separable 3x3 Conv-BN-ReLU) on the deepest
    feature map, `up` (bilinear, aligned corners) to stride 4, concatenated with `block1` (1x1
    Conv-BN-ReLU to 48 channels) of the stride-4 feature map, fused by `block2` (separable 3x3
    Conv-BN-ReLU)."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        out_channels: int,
        atrous_rates,
        *,
        encoder_depth: int,
        output_stride: int,
        aspp_separable: bool,
        aspp_dropout: float,
        **conv,
    ):
        check_plus_depth(encoder_depth)
        norm = dict(dtype=conv.get("dtype"), rngs=conv["rngs"])
        aspp = ASPP(
            encoder_channels[-1], out_channels, atrous_rates, separable=aspp_separable, dropout=aspp_dropout, **conv
        )
        conv = dict(conv, kernel_init=TORCH_DEFAULT)
        fuse_aspp = SeparableConv2d(out_channels, out_channels, 3, padding=1, bias=False, **conv)
        self.aspp: nnx.List[Any] = nnx.List([aspp, fuse_aspp, batch_norm(out_channels, **norm), None])  # None: ReLU
        # The deepest map is at stride 16 only with output stride 16 and depth > 3 (else at 8).
        self.scale_factor = 4 if output_stride == 16 and encoder_depth > 3 else 2
        highres = conv2d(encoder_channels[2], HIGHRES_CHANNELS, 1, bias=False, **conv)
        self.block1 = conv_bn_relu(highres, HIGHRES_CHANNELS, **norm)
        fuse = SeparableConv2d(HIGHRES_CHANNELS + out_channels, out_channels, 3, padding=1, bias=False, **conv)
        self.block2 = conv_bn_relu(fuse, out_channels, **norm)

    def __call__(self, features: list, *, train: bool = False, key=None):
        aspp, fuse_aspp, norm, _ = self.aspp
        x = nnx.relu(call(norm, fuse_aspp(aspp(features[-1], train=train, key=key)), train))
        x = interpolate(
            x, (x.shape[1] * self.scale_factor, x.shape[2] * self.scale_factor), "bilinear", align_corners=True
        )
        x = jnp.concatenate([x, self.block1(features[2], train=train)], axis=-1)
        return self.block2(x, train=train)


def check_output_stride(model: str, encoder_output_stride: int) -> None:
    if encoder_output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"{model} support output stride 8 or 16, got {encoder_output_stride}.")


def deeplabv3(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    encoder_output_stride: int = 8,
    decoder_channels: int = 256,
    decoder_atrous_rates: Sequence[int] = (12, 24, 36),
    decoder_aspp_separable: bool = False,
    decoder_aspp_dropout: float = 0.5,
    upsampling: int | None = None,
) -> Parts:
    """smp's `DeepLabV3` (its options and defaults): the head upsamples by `upsampling`, by
    default back to the input size (`2 ** encoder_depth` for depth <= 3, else the output stride)."""
    check_output_stride("DeeplabV3", encoder_output_stride)
    atrous_rates_of(decoder_atrous_rates)
    encoder = make_encoder(depth=encoder_depth, output_stride=encoder_output_stride)
    if upsampling is None:
        upsampling = 2**encoder_depth if encoder_depth <= 3 else encoder_output_stride
    decoder = DeepLabV3Decoder(
        encoder.out_channels[-1],
        decoder_channels,
        decoder_atrous_rates,
        aspp_separable=decoder_aspp_separable,
        aspp_dropout=decoder_aspp_dropout,
        **conv,
    )
    head = SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=upsampling, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)


def deeplabv3plus(
    make_encoder,
    classes: int,
    *,
    conv: dict,
    encoder_name: str,
    encoder_depth: int = 5,
    encoder_output_stride: int = 16,
    decoder_channels: int = 256,
    decoder_atrous_rates: Sequence[int] = (12, 24, 36),
    decoder_aspp_separable: bool = True,
    decoder_aspp_dropout: float = 0.5,
    upsampling: int = 4,
) -> Parts:
    """smp's `DeepLabV3Plus` (its options and defaults): the decoder's output is at stride 4."""
    check_output_stride("DeeplabV3Plus", encoder_output_stride)
    atrous_rates_of(decoder_atrous_rates)
    if encoder_depth >= 1:  # smp's encoder refuses depths < 1 first, with its own message
        check_plus_depth(encoder_depth)
    encoder = make_encoder(depth=encoder_depth, output_stride=encoder_output_stride)
    decoder = DeepLabV3PlusDecoder(
        encoder.out_channels,
        decoder_channels,
        decoder_atrous_rates,
        encoder_depth=encoder_depth,
        output_stride=encoder_output_stride,
        aspp_separable=decoder_aspp_separable,
        aspp_dropout=decoder_aspp_dropout,
        **conv,
    )
    head = SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=upsampling, **conv)
    return Parts(encoder, decoder, head, encoder.output_stride)
