"""ResNet and ResNeXt encoders (He et al. 2016, Xie et al. 2017) in torchvision's layout, as smp
uses them: the feature maps at strides 1, 2, 4, 8, 16, 32 and the dilated variants for DeepLab.

Parameters are named as torchvision names them (`conv1`, `bn1`, `layer1.0.conv1`, ...,
`layer4.2.downsample.0`), so a torchvision or smp state dict loads key for key
(`jaxseg.models.weights`). The classifier (`fc`) is not built, as in smp.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxseg.models.layers import ConvFunction, Sequential, batch_norm, call, check_encoder, conv2d


class Spec(NamedTuple):
    bottleneck: bool
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64


RESNETS = {
    "resnet18": Spec(False, (2, 2, 2, 2)),
    "resnet34": Spec(False, (3, 4, 6, 3)),
    "resnet50": Spec(True, (3, 4, 6, 3)),
    "resnet101": Spec(True, (3, 4, 23, 3)),
    "resnet152": Spec(True, (3, 8, 36, 3)),
    "resnext50_32x4d": Spec(True, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": Spec(True, (3, 4, 23, 3), 32, 8),
}


class Block(nnx.Module):
    """torchvision's `BasicBlock` (two 3x3) or `Bottleneck` (1x1, 3x3 with the stride and
    groups, 1x1 expanding 4x), with a projection shortcut `downsample` where the shape changes."""

    def __init__(self, in_channels, planes, *, spec: Spec, stride, dilation, project: bool, **conv):
        self.conv3: nnx.Conv | None
        widths: list[int]
        if spec.bottleneck:
            width = int(planes * (spec.width_per_group / 64.0)) * spec.groups
            out = planes * 4
            self.conv1 = conv2d(in_channels, width, 1, bias=False, **conv)
            self.conv2 = conv2d(
                width, width, 3, stride=stride, dilation=dilation, groups=spec.groups, bias=False, **conv
            )
            self.conv3 = conv2d(width, out, 1, bias=False, **conv)
            widths = [width, width, out]
        else:
            out = planes
            self.conv1 = conv2d(in_channels, planes, 3, stride=stride, dilation=dilation, bias=False, **conv)
            self.conv2 = conv2d(planes, planes, 3, dilation=dilation, bias=False, **conv)
            self.conv3 = None
            widths = [planes, planes]
        norm = dict(dtype=conv["dtype"], rngs=conv["rngs"])
        self.bn1 = batch_norm(widths[0], **norm)
        self.bn2 = batch_norm(widths[1], **norm)
        self.bn3 = batch_norm(widths[2], **norm) if spec.bottleneck else None
        self.downsample = (
            Sequential([conv2d(in_channels, out, 1, stride=stride, bias=False, **conv), batch_norm(out, **norm)])
            if project
            else None
        )

    def __call__(self, x, *, train: bool):
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        y = nnx.relu(call(self.bn1, self.conv1(x), train))
        y = call(self.bn2, self.conv2(y), train)
        if self.conv3 is not None:
            y = call(self.bn3, self.conv3(nnx.relu(y)), train)
        return nnx.relu(y + shortcut)


class ResNetEncoder(nnx.Module):
    """smp's `ResNetEncoder`: `encoder(x [B, H, W, C])` -> `depth + 1` feature maps, the input
    first, then strides 2 (after the stem), 4, 8, 16, 32 (`out_channels` lists their widths).

    Args:
      name: a key of `RESNETS` (smp's encoder names).
      in_channels: input channels (the stem's kernel is adapted when weights are loaded).
      depth: 1..5 stages used (all are built, so any smp state dict of this encoder loads).
      output_stride: 32, or 16 / 8 as smp's `make_dilated`: the stages past it keep stride 1
        and every 3x3 convolution in them is dilated by `stage stride / output_stride`.
    """

    def __init__(
        self,
        name: str,
        *,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        check_encoder("ResNet", name, RESNETS, depth, output_stride, smp_class="ResNetEncoder")
        spec = RESNETS[name]
        self.name = name
        expansion = 4 if spec.bottleneck else 1
        conv = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.depth, self.output_stride = depth, min(output_stride, 2**depth)
        self.out_channels = (in_channels, 64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)[
            : depth + 1
        ]
        self.conv1 = conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False, **conv)
        self.bn1 = batch_norm(64, dtype=dtype, rngs=rngs)
        channels = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), spec.layers)):
            stage_stride = 2 ** (index + 2)  # of the stage's output: 4, 8, 16, 32
            stride = 1 if index == 0 else 2
            project = stride != 1 or channels != planes * expansion
            dilation = 1
            if stage_stride > output_stride:  # smp's replace_strides_with_dilation
                stride, dilation = 1, stage_stride // output_stride
            stage = []
            for b in range(blocks):
                first = b == 0
                stage.append(
                    Block(
                        channels,
                        planes,
                        spec=spec,
                        stride=stride if first else 1,
                        dilation=dilation,
                        project=project and first,
                        **conv,
                    )
                )
                channels = planes * expansion
            setattr(self, f"layer{index + 1}", Sequential(stage))

    def __call__(self, x, *, train: bool = False, key=None) -> list:  # key: no randomness here
        features = [x]
        if self.depth >= 1:
            x = nnx.relu(call(self.bn1, self.conv1(x), train))
            features.append(x)
        for index in range(1, self.depth):
            if index == 1:
                x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            x = getattr(self, f"layer{index}")(x, train=train)
            features.append(x)
        return features
