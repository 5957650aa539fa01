"""What every smp architecture shares: the segmentation head, the auxiliary classification head,
scSE attention, and the model that joins an encoder, a decoder and the heads (`smp.base`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.interpolation import interpolate
from jaxseg.models.layers import conv2d

KAIMING_FAN_IN = nnx.initializers.variance_scaling(2.0, "fan_in", "uniform")  # smp's decoder init
XAVIER = nnx.initializers.xavier_uniform()  # smp's head init
POOLINGS = ("avg", "max")


class SCSE(nnx.Module):
    """Concurrent spatial and channel squeeze & excitation (Roy et al. 2018), smp's
    `SCSEModule`: `x * cSE(x) + x * sSE(x)`."""

    def __init__(self, channels: int, *, reduction: int = 16, **conv):
        conv = dict(conv, kernel_init=KAIMING_FAN_IN)
        self.cSE: nnx.List[Any] = nnx.List(
            [
                None,
                conv2d(channels, channels // reduction, 1, **conv),
                None,
                conv2d(channels // reduction, channels, 1, **conv),
            ]
        )
        self.sSE = nnx.List([conv2d(channels, 1, 1, **conv)])

    def __call__(self, x, *, train: bool = False):
        squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
        reduce, expand = self.cSE[1], self.cSE[3]  # 0 and 2: torch's pooling and ReLU
        channel = nnx.sigmoid(expand(nnx.relu(reduce(squeezed))))
        return x * channel + x * nnx.sigmoid(self.sSE[0](x))


class Attention(nnx.Module):
    """smp's `Attention(name)`: None (identity) or "scse"."""

    def __init__(self, name: str | None, channels: int, **conv):
        if name not in (None, "scse"):
            raise ValueError(f"Attention {name} is not implemented")
        self.attention = SCSE(channels, **conv) if name == "scse" else None

    def __call__(self, x, *, train: bool = False):
        return x if self.attention is None else self.attention(x, train=train)


class SegmentationHead(nnx.List):
    """smp's `SegmentationHead`: a `k x k` convolution to the classes, then `upsampling`x
    bilinear upsampling with aligned corners (`nn.UpsamplingBilinear2d`; logits: smp's
    `activation` belongs to the loss here)."""

    def __init__(self, in_channels, classes, *, kernel_size: int = 3, upsampling: int = 1, **conv):
        super().__init__([conv2d(in_channels, classes, kernel_size, kernel_init=XAVIER, **conv)])
        self.upsampling = upsampling

    def __call__(self, x, *, train: bool = False, key=None):  # train, key: for heads with dropout (DPT's)
        x = self[0](x)
        if self.upsampling > 1:
            x = interpolate(
                x, (x.shape[1] * self.upsampling, x.shape[2] * self.upsampling), "bilinear", align_corners=True
            )
        return x


class ClassificationHead(nnx.List):
    """smp's auxiliary `ClassificationHead` on the deepest feature map: global average or max
    pooling, dropout, a linear layer (`aux_params`: classes, pooling, dropout)."""

    def __init__(self, in_channels, classes: int, *, pooling: str = "avg", dropout: float = 0.2, dtype=None, rngs):
        if pooling not in POOLINGS:
            raise ValueError(f"Pooling should be one of ('max', 'avg'), got {pooling}.")
        linear = nnx.Linear(in_channels, classes, kernel_init=XAVIER, dtype=dtype, rngs=rngs)
        super().__init__([None, None, nnx.Dropout(dropout) if dropout else None, linear])
        self.pooling = pooling

    def __call__(self, x, *, train: bool = False, key=None):
        pooled = jnp.mean(x, axis=(1, 2)) if self.pooling == "avg" else jnp.max(x, axis=(1, 2))
        if self[2] is not None:
            pooled = self[2](pooled, deterministic=not train, rngs=key)
        return self[3](pooled)


class Parts(NamedTuple):
    """What an architecture's `build` returns: the modules of `SegmentationModel` and the factor
    the input's height and width must divide by (smp's `requires_divisible_input_shape`: the
    encoder's output stride, or 1 for architectures that resize to their skips' sizes)."""

    encoder: Any
    decoder: Any
    segmentation_head: Any
    divisible_by: int


class SegmentationModel(nnx.Module):
    """An encoder, a decoder, the segmentation head and the optional classification head,
    called as smp's `SegmentationModel.forward`: logits `[B, H, W, classes]`, or
    `(logits, labels [B, aux classes])` with the auxiliary head."""

    def __init__(self, encoder, decoder, segmentation_head, classification_head=None, *, divisible_by: int = 1):
        self.encoder, self.decoder = encoder, decoder
        self.segmentation_head, self.classification_head = segmentation_head, classification_head
        self.divisible_by = divisible_by

    def __call__(self, x, *, train: bool = False, key=None):
        height, width = x.shape[1:3]
        if self.divisible_by > 1 and (height % self.divisible_by or width % self.divisible_by):
            stride = self.divisible_by
            raise ValueError(
                f"Wrong input shape height={height}, width={width}. Expected image height and width divisible by "
                f"{stride}. Consider pad your images to shape ({-(-height // stride) * stride}, {-(-width // stride) * stride})."
            )
        # Keys for the encoder's stochastic depth (MiT), the decoder's and the aux head's dropout.
        encoder_key, decoder_key, aux_key = (None, None, None) if key is None else jax.random.split(key, 3)
        features = self.encoder(x, train=train, key=encoder_key)
        head_key = None if decoder_key is None else jax.random.fold_in(decoder_key, 1)
        decoded = self.decoder(features, train=train, key=decoder_key)
        masks = self.segmentation_head(decoded, train=train, key=head_key)
        if self.classification_head is None:
            return masks
        return masks, self.classification_head(features[-1], train=train, key=aux_key)
