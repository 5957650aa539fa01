"""A small single-stage anchor-free detector (FCOS-style) as a Flax NNX module.

Backbone: stages of (3x3 conv stride 2, 3x3 conv), widths doubling. Neck: an FPN top-down
path (1x1 laterals, nearest upsampling, a 3x3 smoothing conv) fuses every stage into one map
at the output stride, so small and large objects share one prediction level; on 64-pixel
images one level at stride 4 covers objects of 7 to 40 pixels. Head: FCOS towers, one for
classification and one for box regression with the centerness branch beside it.

Outputs per location (row-major over the output map): `classes` `[B, N, C]` logits,
`distances` `[B, N, 4]` the positive distances `(l, t, r, b)` in pixels, `centerness` `[B, N]`
logits. `jaxseg.ops.fcos` assigns targets to and decodes these.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxseg.models.layers import ConvFunction, call, conv, make_norm

MAX_LOG_DISTANCE = 10.0  # exp(10) * stride is far beyond any image: the clip only guards overflow


class ConvNormReLU(nnx.Module):
    def __init__(self, in_features, features, *, strides=1, norm, groups, dtype, conv_general_dilated, rngs: nnx.Rngs):
        self.conv = conv(
            in_features,
            features,
            (3, 3),
            strides=strides,
            use_bias=norm == "none",
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )
        self.norm = make_norm(norm, features, groups=groups, dtype=dtype, rngs=rngs)

    def __call__(self, x, *, train: bool):
        return nnx.relu(call(self.norm, self.conv(x), train))


class FCOSDetector(nnx.Module):
    """FCOS on a small CNN with an FPN merged into one level.

    Args:
      num_classes: object classes (no background class: scores are per-class sigmoids).
      widths: backbone stage widths; stage i has stride `2 ** (i + 1)`.
      output_stride: stride of the prediction map (a power of two reached by some stage).
      fpn: True: the FPN top-down path adds every stage from the output stride down; False:
        the last stage alone, upsampled to the output stride (the ablation of the FPN).
      fpn_width: channels of the FPN (neck).
      head_width: channels of the class and box towers.
      head_convs: 3x3 convolutions per tower.
      prior: initial foreground probability of the class logits (focal-loss initialisation).
      conv_general_dilated: the convolution of every `nnx.Conv` (`jaxseg.kernels.convolution`).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        widths=(16, 32, 64, 128),
        output_stride: int = 4,
        fpn: bool = True,
        fpn_width: int = 64,
        head_width: int = 64,
        head_convs: int = 2,
        norm: str = "batch",
        head_norm: str = "group",
        groups: int = 8,
        prior: float = 0.01,
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        strides = [2 ** (i + 1) for i in range(len(widths))]
        if output_stride not in strides:
            raise ValueError(f"output_stride={output_stride} must be a backbone stage stride {strides}")
        self.num_classes, self.output_stride = num_classes, output_stride
        self.first_level = strides.index(output_stride)
        convs = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        options = dict(groups=groups, **convs)
        self.stages = nnx.List(
            [
                nnx.List(
                    [
                        ConvNormReLU(in_channels if i == 0 else widths[i - 1], w, strides=2, norm=norm, **options),
                        ConvNormReLU(w, w, norm=norm, **options),
                    ]
                )
                for i, w in enumerate(widths)
            ]
        )
        used = widths[self.first_level :] if fpn else widths[-1:]
        self.laterals = nnx.List([conv(w, fpn_width, (1, 1), **convs) for w in used])
        self.smooth = ConvNormReLU(fpn_width, fpn_width, norm=norm, **options)
        tower = lambda: nnx.List(
            [
                ConvNormReLU(
                    fpn_width if i == 0 else head_width,
                    head_width,
                    norm=head_norm,  # noqa: E731
                    **options,
                )
                for i in range(head_convs)
            ]
        )
        self.class_tower, self.box_tower = tower(), tower()
        bias = -math.log((1 - prior) / prior)
        self.class_out = conv(head_width, num_classes, (3, 3), bias_init=nnx.initializers.constant(bias), **convs)
        self.box_out = conv(head_width, 4, (3, 3), **convs)
        self.centerness_out = conv(head_width, 1, (3, 3), **convs)

    def features(self, x, *, train: bool):
        """The fused FPN map `[B, H / s, W / s, fpn_width]` at the output stride `s`."""
        stride = 2 ** len(self.stages)
        if x.shape[1] % stride or x.shape[2] % stride:
            raise ValueError(
                f"FCOSDetector with {len(self.stages)} stages needs H and W divisible by {stride}; got {x.shape[1:3]}"
            )
        maps = []
        for first, second in self.stages:
            x = second(first(x, train=train), train=train)
            maps.append(x)
        maps = maps[self.first_level :]
        fused = self.laterals[-1](maps[-1])
        if len(self.laterals) == 1:  # no FPN: the last stage, upsampled
            factor = 2 ** (len(maps) - 1)
            fused = jnp.repeat(jnp.repeat(fused, factor, axis=1), factor, axis=2)
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(maps[:-1])):
            fused = lateral(feature) + jnp.repeat(jnp.repeat(fused, 2, axis=1), 2, axis=2)
        return self.smooth(fused, train=train)

    def __call__(self, x, *, train: bool = False, key=None):
        del key  # no dropout
        features = self.features(x, train=train)
        batch, height, width, _ = features.shape
        classes, boxes = features, features
        for layer in self.class_tower:
            classes = layer(classes, train=train)
        for layer in self.box_tower:
            boxes = layer(boxes, train=train)
        log_distances = jnp.clip(self.box_out(boxes).astype(jnp.float32), -MAX_LOG_DISTANCE, MAX_LOG_DISTANCE)
        flat = lambda a: a.reshape(batch, height * width, -1)  # noqa: E731
        return {
            "classes": flat(self.class_out(classes)),
            "distances": flat(jnp.exp(log_distances) * self.output_stride),
            "centerness": flat(self.centerness_out(boxes))[..., 0],
        }

    def output_size(self, image_size) -> tuple[int, int]:
        """(height, width) of the prediction map for images of `image_size`."""
        return image_size[0] // self.output_stride, image_size[1] // self.output_stride
