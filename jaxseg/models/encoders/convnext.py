"""ConvNeXt encoders (Liu et al. 2022) as smp 0.6 builds `tu-convnext_tiny/small/base`: timm's
`ConvNeXt` with `features_only=True` inside smp's `TimmUniversalEncoder`.

A stem (a 4x4 convolution with stride 4 and a LayerNorm), then four stages: each but the first
downsamples (a LayerNorm and a 2x2 convolution with stride 2), then its blocks: a depthwise 7x7
convolution, a LayerNorm, an MLP (4x, exact GELU) and a learned per-channel scale (`gamma`, layer
scale) on the residual branch. Every LayerNorm has eps 1e-6.

Parameters are named as smp names them (timm's feature extractor flattens its sequentials:
`model.stem_0`, `model.stem_1`, `model.stages_1.downsample.0`, `model.stages_1.blocks.0.conv_dw`,
`...mlp.fc1`, `...gamma`), so an smp state dict loads key for key; a timm checkpoint
(`stem.0.weight`, `stages.1...`, its classifier `head.*`) loads as encoder weights through
`timm_to_smp`. As timm's feature extractor, only the stages the depth uses are built.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxseg.models.layers import ConvFunction, check_drop_key, check_encoder, conv2d, drop_path, layer_norm, linear


class Spec(NamedTuple):
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]


CONVNEXTS = {
    "tu-convnext_tiny": Spec((3, 3, 9, 3), (96, 192, 384, 768)),
    "tu-convnext_small": Spec((3, 3, 27, 3), (96, 192, 384, 768)),
    "tu-convnext_base": Spec((3, 3, 27, 3), (128, 256, 512, 1024)),
}
EPS = 1e-6  # timm's LayerNorm and LayerNorm2d
INIT = nnx.initializers.normal(0.02)  # timm's trunc_normal_(std=0.02), cut at +-2: +-100 std
LAYER_SCALE_INIT = 1e-6


class Mlp(nnx.Module):
    """timm's `Mlp`: `fc2(GELU(fc1(x)))`, exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.fc2 = linear(hidden, dim, kernel_init=INIT, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """timm's `ConvNeXtBlock` (channels-last MLP): `x + drop_path(gamma * mlp(norm(conv_dw(x))))`."""

    def __init__(self, dim: int, *, dilation: int, drop_path: float, dtype, conv_general_dilated, rngs: nnx.Rngs):
        self.conv_dw = conv2d(
            dim,
            dim,
            7,
            dilation=dilation,  # padding 3 * dilation, timm's symmetric get_padding
            groups=dim,
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            kernel_init=INIT,
            rngs=rngs,
        )
        self.norm = layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(dim, 4 * dim, dtype=dtype, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), LAYER_SCALE_INIT, jnp.float32))
        self.drop_path = drop_path

    def __call__(self, x, *, key=None):
        branch = self.mlp(self.norm(self.conv_dw(x)))
        return x + drop_path(branch * self.gamma[...].astype(branch.dtype), self.drop_path, key)


def downsample_padding(dilation: int, stage_dilation: int):
    """The padding of a stage's 2x2 downsampling convolution, as timm pads it: none when it has
    stride 2; "same" once smp's `output_stride` has made it stride 1 (`dilation != stage_dilation`),
    which for a 2x2 kernel with dilation 1 is one row and column after the input (timm's dynamic
    `Conv2dSame`) and with dilation 2 one on each side (its static `get_padding`)."""
    if stage_dilation == 1:
        return 0
    return ((0, 1), (0, 1)) if dilation == 1 else dilation // 2


class Stage(nnx.Module):
    """timm's `ConvNeXtStage`: `downsample` (a LayerNorm and a 2x2 convolution; none in the first
    stage), then the blocks."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        blocks: int,
        *,
        stride: int,
        dilation: tuple[int, int],
        drop_path_rates,
        dtype,
        conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        conv = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        resamples = in_channels != dim or stride > 1 or dilation[0] != dilation[1]
        self.downsample = (
            nnx.List(
                [
                    layer_norm(in_channels, EPS, dtype=dtype, rngs=rngs),
                    conv2d(
                        in_channels,
                        dim,
                        2,
                        stride=stride,
                        dilation=dilation[0],
                        padding=downsample_padding(dilation[0], dilation[1]),
                        kernel_init=INIT,
                        **conv,
                    ),
                ]
            )
            if resamples
            else None
        )
        self.blocks = nnx.List(
            [Block(dim, dilation=dilation[1], drop_path=rate, **conv) for rate in drop_path_rates[:blocks]]
        )

    def __call__(self, x, *, key=None):
        if self.downsample is not None:
            norm, conv = self.downsample
            x = conv(norm(x))
        keys = [None] * len(self.blocks) if key is None else list(jax.random.split(key, len(self.blocks)))
        for block, block_key in zip(self.blocks, keys):
            x = block(x, key=block_key)
        return x


class ConvNeXtFeatures(nnx.Module):
    """timm's ConvNeXt feature extractor (`features_only`, flattened): `stem_0`, `stem_1` and the
    first `stages` stages `stages_0`, ...; returns each stage's output."""

    def __init__(
        self,
        spec: Spec,
        *,
        in_channels: int,
        stages: int,
        output_stride: int,
        drop_path_rate: float,
        dtype,
        conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        conv = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.stem_0 = conv2d(in_channels, spec.dims[0], 4, stride=4, padding=0, kernel_init=INIT, **conv)
        # At depth 1 timm's extractor keeps the stem's convolution alone (no feature uses it).
        self.stem_1 = layer_norm(spec.dims[0], EPS, dtype=dtype, rngs=rngs) if stages else None
        self.stages = stages
        rates = stage_drop_rates(spec, drop_path_rate)
        channels = spec.dims[0]
        for index, plan in enumerate(stage_plan(output_stride)[:stages]):
            stride, stage_dilation = plan
            stage = Stage(
                channels,
                spec.dims[index],
                spec.depths[index],
                stride=stride,
                dilation=stage_dilation,
                drop_path_rates=rates[index],
                **conv,
            )
            setattr(self, f"stages_{index}", stage)
            channels = spec.dims[index]

    def __call__(self, x, *, key=None) -> list:
        if self.stem_1 is None:
            return []
        x = self.stem_1(self.stem_0(x))
        keys = [None] * self.stages if key is None else list(jax.random.split(key, self.stages))
        features = []
        for index in range(self.stages):
            x = getattr(self, f"stages_{index}")(x, key=keys[index])
            features.append(x)
        return features


class ConvNeXtEncoder(nnx.Module):
    """smp's `TimmUniversalEncoder` on a timm ConvNeXt: `encoder(x [B, H, W, C])` -> `depth + 1`
    feature maps: the input, a zero-channel `[B, H // 2, W // 2, 0]` placeholder at stride 2 (as
    smp does for encoders that start at stride 4), then the stages at strides 4, 8, 16, 32
    (`out_channels`: `(in_channels, 0, *dims)[: depth + 1]`).

    Args:
      name: a key of `CONVNEXTS` (`tu-convnext_tiny`, `tu-convnext_small`, `tu-convnext_base`).
      in_channels: input channels (the stem's kernel is adapted when weights load).
      depth: 1..5; the stages past it are not built (timm's feature extractor prunes them, so
        smp's state dicts of shallower encoders lack them).
      output_stride: 32, or 16 / 8 as timm builds them: the stages past it keep stride 1, their
        depthwise convolutions dilated by `stage stride / output_stride`.
      drop_path_rate: timm's stochastic depth (default 0), rising over the stages; training with
        it then needs a `key`.
    """

    def __init__(
        self,
        name: str,
        *,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        drop_path_rate: float = 0.0,
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        check_encoder("ConvNeXt", name, CONVNEXTS, depth, output_stride, smp_class="TimmUniversalEncoder")
        spec = CONVNEXTS[name]
        self.name, self.depth = name, depth
        self.output_stride = min(output_stride, 2**depth)
        self.out_channels = (in_channels, 0, *spec.dims)[: depth + 1]
        self.model = ConvNeXtFeatures(
            spec,
            in_channels=in_channels,
            stages=max(depth - 1, 0),
            output_stride=output_stride,
            drop_path_rate=drop_path_rate,
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )

    def __call__(self, x, *, train: bool = False, key=None) -> list:
        stages = [getattr(self.model, f"stages_{i}") for i in range(self.model.stages)]
        check_drop_key(train, key, [block.drop_path for stage in stages for block in stage.blocks], self.name)
        batch, height, width, _ = x.shape
        placeholder = jnp.zeros((batch, height // 2, width // 2, 0), x.dtype)
        return [x, placeholder, *self.model(x, key=key if train else None)]


def stage_plan(output_stride: int) -> list[tuple[int, tuple[int, int]]]:
    """Each stage's (stride, (first dilation, dilation)) as timm's `ConvNeXt.__init__` computes
    them for `output_stride`."""
    plan, current_stride, dilation = [], 4, 1
    for index in range(4):
        stride = 2 if index > 0 else 1
        if current_stride >= output_stride and stride > 1:
            dilation *= stride
            stride = 1
        current_stride *= stride
        plan.append((stride, (1 if dilation in (1, 2) else 2, dilation)))
    return plan


def stage_drop_rates(spec: Spec, rate: float) -> list[list[float]]:
    """timm's `calculate_drop_path_rates(rate, depths, stagewise=True)`: linear from 0 to `rate`
    over all blocks, split by stage."""
    rates = np.linspace(0.0, rate, sum(spec.depths)).tolist()
    bounds = np.cumsum((0, *spec.depths))
    return [rates[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


TIMM_KEY = re.compile(r"^(stem|stages)\.(\d+)\.")


def timm_to_smp(state: dict, depth: int = 5) -> tuple[dict, tuple[str, ...]]:
    """A timm ConvNeXt checkpoint (`stem.0.weight`, `stages.2.blocks.0.gamma`, `head.fc.weight`)
    in smp's encoder keys (`model.stem_0.weight`, ...), and the key prefixes to ignore: the
    classifier and the stages past `depth`. smp's keys pass unchanged."""
    renamed = {TIMM_KEY.sub(r"model.\1_\2.", key): value for key, value in state.items()}
    unused = tuple(f"model.stages_{i}." for i in range(max(depth - 1, 0), 4))
    return renamed, ("head.", "norm_pre.", *unused)
