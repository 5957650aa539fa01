"""EfficientNet encoders (Tan & Le 2019) in the layout smp's `efficientnet-b0..b7` use (lukemelas'
EfficientNet-PyTorch: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, `_depthwise_conv`,
`_se_reduce`, `_se_expand`, `_project_conv`, `_conv_head`, `_bn1`), and EfficientNet-Lite0 in the
same layout.

Padding follows the weights' origin. smp's b0..b7 pad like TensorFlow's "SAME" for the variant's
nominal image size (224 for b0, 240 for b1, ...), computed once when the network is built and
applied whatever the input's size (lukemelas' `Conv2dStaticSamePadding`). Lite0, whose weights
were trained in TensorFlow, pads "SAME" for the input it gets (as timm's `tf_efficientnet_lite0`).
The two agree wherever the input's size at each stride-2 convolution has the nominal parity.

Lite0 (Liu et al. 2020, the mobile variant): no squeeze-and-excitation, ReLU6 instead of swish,
the same blocks and widths as b0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxseg.models.layers import ConvFunction, call, check_drop_key, check_encoder, drop_path


class Spec(NamedTuple):
    width: float
    depth: float
    image_size: int
    out_indexes: tuple[int, int, int, int]  # the blocks whose outputs are the stride 4, 8, 16, 32 features
    lite: bool = False


EFFICIENTNETS = {
    "efficientnet-b0": Spec(1.0, 1.0, 224, (2, 4, 8, 15)),
    "efficientnet-b1": Spec(1.0, 1.1, 240, (4, 7, 15, 22)),
    "efficientnet-b2": Spec(1.1, 1.2, 260, (4, 7, 15, 22)),
    "efficientnet-b3": Spec(1.2, 1.4, 300, (4, 7, 17, 25)),
    "efficientnet-b4": Spec(1.4, 1.8, 380, (5, 9, 21, 31)),
    "efficientnet-b5": Spec(1.6, 2.2, 456, (7, 12, 26, 38)),
    "efficientnet-b6": Spec(1.8, 2.6, 528, (8, 14, 30, 44)),
    "efficientnet-b7": Spec(2.0, 3.1, 600, (10, 17, 37, 54)),
    "efficientnet-lite0": Spec(1.0, 1.0, 224, (2, 4, 8, 15), lite=True),
}


class Stage(NamedTuple):  # lukemelas' block string "r{repeats}_k{kernel}_s{stride}_e{expand}_i{in}_o{out}_se0.25"
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_filters: int
    out_filters: int


STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
SE_RATIO = 0.25
BN_EPS = 1e-3  # TensorFlow's; momentum 0.01 in torch's convention (0.99 in Flax's)
DROP_CONNECT_RATE = 0.2  # lukemelas' default, which smp keeps
TORCH_CONV_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # nn.Conv2d's own


def round_filters(filters: int, width: float) -> int:
    """lukemelas' `round_filters`: `filters * width` to a multiple of 8, never 10% below."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one spatial axis of length `size` (the extra pixel after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_conv(
    in_channels,
    out_channels,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    size: int | None,
    dilation: int = 1,
    dtype,
    conv_general_dilated: ConvFunction,
    rngs,
) -> nnx.Conv:
    """`nn.Conv2d` (bias optional) with "SAME" padding: static for an input of `size` (lukemelas'
    `Conv2dStaticSamePadding`), or for the input's own size when `size` is None; a dilated
    convolution (smp's `make_dilated`) has stride 1 and pads `dilation * (k // 2)` on both sides."""
    padding: str | tuple
    if dilation > 1:
        stride, pad = 1, dilation * (kernel_size // 2)
        padding = ((pad, pad), (pad, pad))
    elif size is None:
        padding = "SAME"
    else:
        padding = (same_padding(size, kernel_size, stride),) * 2
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=padding,
        kernel_dilation=dilation,
        feature_group_count=groups,
        use_bias=bias,
        dtype=dtype,
        kernel_init=TORCH_CONV_INIT,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def activation(x, lite: bool):
    """Swish, or ReLU6 in Lite."""
    return jnp.clip(x, 0.0, 6.0) if lite else nnx.silu(x)


def batch_norm(features: int, *, dtype, rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=0.99, epsilon=BN_EPS, dtype=dtype, rngs=rngs)


def block_plan(spec: Spec) -> list[tuple[Stage, int | None]]:
    """Every block's arguments (`repeats` aside) after lukemelas' width and depth scaling, with the
    nominal input size its static padding is computed for (None in Lite: the input's own)."""
    size = None if spec.lite else math.ceil(spec.image_size / 2)  # after the stem
    plan = []
    for stage in STAGES:
        stage = stage._replace(
            repeats=round_repeats(stage.repeats, spec.depth),
            in_filters=round_filters(stage.in_filters, spec.width),
            out_filters=round_filters(stage.out_filters, spec.width),
        )
        for repeat in range(stage.repeats):
            plan.append((stage if repeat == 0 else stage._replace(in_filters=stage.out_filters, stride=1), size))
            if repeat == 0 and size is not None:
                size = math.ceil(size / stage.stride)
    return plan


def widths(spec: Spec) -> tuple[int, ...]:
    """The channels of the features at strides 1 (3: RGB), 2 (the stem), 4, 8, 16, 32."""
    plan = block_plan(spec)
    return (3, round_filters(32, spec.width), *(plan[i][0].out_filters for i in spec.out_indexes))


class MBConvBlock(nnx.Module):
    """lukemelas' `MBConvBlock`: a 1x1 expansion (when `expand > 1`), the `k x k` depthwise
    convolution with the stride, squeeze-and-excitation on the block's input width x 0.25 (not in
    Lite), the 1x1 projection, and the residual through drop connect where the shape is kept."""

    def __init__(self, stage: Stage, *, lite: bool, size, dilation: int, drop_connect: float, **conv):
        expanded = stage.in_filters * stage.expand
        self.lite = lite
        self.residual = stage.stride == 1 and stage.in_filters == stage.out_filters
        self.drop_connect = drop_connect
        norm = dict(dtype=conv["dtype"], rngs=conv["rngs"])
        padded = dict(conv, size=size, dilation=dilation)
        self._expand_conv = same_conv(stage.in_filters, expanded, 1, **padded) if stage.expand != 1 else None
        self._bn0 = batch_norm(expanded, **norm) if stage.expand != 1 else None
        self._depthwise_conv = same_conv(
            expanded, expanded, stage.kernel, stride=stage.stride, groups=expanded, **padded
        )
        self._bn1 = batch_norm(expanded, **norm)
        squeezed = max(1, int(stage.in_filters * SE_RATIO))
        self._se_reduce = None if lite else same_conv(expanded, squeezed, 1, bias=True, size=1, **conv)
        self._se_expand = None if lite else same_conv(squeezed, expanded, 1, bias=True, size=1, **conv)
        self._project_conv = same_conv(expanded, stage.out_filters, 1, **padded)
        self._bn2 = batch_norm(stage.out_filters, **norm)

    def __call__(self, inputs, *, train: bool, key=None):
        x = inputs
        if self._expand_conv is not None:
            x = activation(call(self._bn0, self._expand_conv(x), train), self.lite)
        x = activation(call(self._bn1, self._depthwise_conv(x), train), self.lite)
        if self._se_reduce is not None and self._se_expand is not None:
            squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
            x = nnx.sigmoid(self._se_expand(nnx.silu(self._se_reduce(squeezed)))) * x
        x = call(self._bn2, self._project_conv(x), train)
        if self.residual:
            x = drop_path(x, self.drop_connect, key if train else None) + inputs
        return x


class EfficientNetEncoder(nnx.Module):
    """smp's `EfficientNetEncoder`: `encoder(x [B, H, W, C])` -> `depth + 1` feature maps, the
    input, the stem's output (stride 2), then the outputs of the blocks `out_indexes` names
    (strides 4, 8, 16, 32).

    Args:
      name: a key of `EFFICIENTNETS` (`efficientnet-b0` ... `-b7`, `efficientnet-lite0`).
      in_channels: input channels (the stem's kernel is adapted when weights are loaded).
      depth: 2..5 (smp refuses 1); every block is built, so any state dict of the encoder loads.
      output_stride: 32, or 16 / 8 as smp's `make_dilated` (the blocks after `out_indexes[1]`, and
        after `out_indexes[2]`): their convolutions get stride 1 and dilation `stage stride /
        output_stride`.
      drop_connect_rate: the residual drop rate, `rate * i / blocks` at block `i` (smp: 0.2);
        training (`train=True`) then needs a `key`.

    The head convolution `_conv_head` / `_bn1` is built (smp keeps it in its state dict); only
    `image_features` uses it.
    """

    def __init__(
        self,
        name: str,
        *,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        drop_connect_rate: float = DROP_CONNECT_RATE,
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        check_encoder(
            "EfficientNet", name, EFFICIENTNETS, depth, output_stride, smp_class="EfficientNetEncoder", min_depth=2
        )
        spec = EFFICIENTNETS[name]
        self.name, self.depth, self.out_indexes, self.lite = name, depth, spec.out_indexes, spec.lite
        self.output_stride = min(output_stride, 2**depth)
        conv = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        norm = dict(dtype=dtype, rngs=rngs)
        stem = round_filters(32, spec.width)
        size = None if spec.lite else spec.image_size  # None: "SAME" for the input's own size
        self._conv_stem = same_conv(in_channels, stem, 3, stride=2, size=size, **conv)
        self._bn0 = batch_norm(stem, **norm)
        plan = block_plan(spec)
        self._blocks = nnx.List(
            [
                MBConvBlock(
                    args,
                    lite=spec.lite,
                    size=size,
                    dilation=self.block_dilation(index, output_stride),
                    drop_connect=drop_connect_rate * index / len(plan),
                    **conv,
                )
                for index, (args, size) in enumerate(plan)
            ]
        )
        head = 1280 if spec.lite else round_filters(1280, spec.width)
        self._conv_head = same_conv(plan[-1][0].out_filters, head, 1, size=1, **conv)  # 1x1: no padding
        self._bn1 = batch_norm(head, **norm)
        self.out_channels = (in_channels, *widths(spec)[1:])[: depth + 1]

    def block_dilation(self, index: int, output_stride: int) -> int:
        """smp's `get_stages`: the stride-16 stage is the blocks after `out_indexes[1]` up to
        `out_indexes[2]`, the stride-32 stage the blocks after that."""
        stage_stride = 16 if index <= self.out_indexes[2] else 32
        if index <= self.out_indexes[1] or stage_stride <= output_stride:
            return 1
        return stage_stride // output_stride

    def image_features(self, deepest, *, train: bool = False):
        """The ImageNet classifier's input `[B, 1280 * width]` from the deepest feature map (depth 5):
        the head convolution, its norm and activation, global average pooling (lukemelas'
        `extract_features` and `_avg_pooling`; a checkpoint's `_fc` maps it to the classes)."""
        return jnp.mean(activation(call(self._bn1, self._conv_head(deepest), train), self.lite), axis=(1, 2))

    def __call__(self, x, *, train: bool = False, key=None) -> list:
        last = self.out_indexes[self.depth - 2]  # the blocks past the deepest feature are skipped
        used = self._blocks[: last + 1]
        check_drop_key(train, key, [block.drop_connect for block in used if block.residual], self.name)
        keys = [None] * len(used) if key is None or not train else list(jax.random.split(key, len(used)))
        features = [x]
        x = activation(call(self._bn0, self._conv_stem(x), train), self.lite)
        features.append(x)
        for index, (block, block_key) in enumerate(zip(used, keys)):
            x = block(x, train=train, key=block_key)
            if index in self.out_indexes:
                features.append(x)
        return features[: self.depth + 1]
