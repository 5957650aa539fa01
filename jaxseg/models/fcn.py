"""FCN: the conv-pool encoder of a textbook CNN made fully convolutional (Long et al. 2015).

A classifier that flattens its last feature map cannot segment; here the classifier is a 1x1
convolution applied at every position, and score maps from the last two stages are fused
(FCN-16s style) and upsampled bilinearly to the input size, so the model predicts per pixel.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxseg.models.layers import ConvFunction, call, conv, make_norm, max_pool_2x2, resize_bilinear


class FCN(nnx.Module):
    """`stages` blocks of (3x3 conv, norm, ReLU, 2x2 max-pool), widths doubling from `base_width`,
    then 1x1 score heads on the last two stages, fused and upsampled to `[B, H, W, C]`."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        stages: int = 3,
        base_width: int = 32,
        norm: str = "batch",
        groups: int = 8,
        dropout: float = 0.0,
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        if stages < 2:
            raise ValueError(f"FCN needs at least 2 stages (it fuses the last two); got {stages}")
        widths = [base_width * 2**i for i in range(stages)]
        self.stages = stages
        convs = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.convs = nnx.List(
            [conv(in_channels if i == 0 else widths[i - 1], w, (3, 3), **convs) for i, w in enumerate(widths)]
        )
        self.norms = nnx.List([make_norm(norm, w, groups=groups, dtype=dtype, rngs=rngs) for w in widths])
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.score_last = conv(widths[-1], num_classes, (1, 1), **convs)
        self.score_previous = conv(widths[-2], num_classes, (1, 1), **convs)

    def __call__(self, x, *, train: bool = False, key=None):
        stride = 2**self.stages
        if x.shape[1] % stride or x.shape[2] % stride:
            raise ValueError(f"FCN with {self.stages} stages needs H and W divisible by {stride}; got {x.shape[1:3]}")
        size = x.shape[1:3]
        features = []
        for layer, norm in zip(self.convs, self.norms):
            x = nnx.relu(call(norm, layer(x), train))
            x = max_pool_2x2(x)
            features.append(x)
        last = features[-1]
        if self.dropout is not None:
            last = self.dropout(last, deterministic=not train, rngs=key)
        previous = self.score_previous(features[-2])
        score = self.score_last(last)
        score = resize_bilinear(score, previous.shape[1:3]) + previous
        return resize_bilinear(score, size)
