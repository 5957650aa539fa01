"""Mix Transformer encoders `mit_b0` ... `mit_b5` (SegFormer's encoder, Xie et al. 2021) as smp 0.6
builds them (`smp.encoders.mix_transformer`, NVIDIA's SegFormer code): four stages, each an
overlapping patch embedding (a strided convolution and a LayerNorm), transformer blocks with
spatially reduced attention and a Mix-FFN (a depthwise 3x3 convolution between the two linear
layers), and a final LayerNorm.

Parameters are named as smp names them (`patch_embed1.proj`, `block1.0.attn.q`, `block1.0.mlp.dwconv.dwconv`,
`norm1`, ...), so an smp or smp-hub state dict loads key for key (`jaxseg.models.weights`). The
ImageNet classifier (`head`) is not built, as in smp.

Computation is channels-last: a stage's tokens are its `[B, H, W, C]` map flattened row-major,
the order of torch's `x.flatten(2).transpose(1, 2)` on NCHW, so no reshape reorders anything.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxseg.models.layers import ConvFunction, attention, check_drop_key, check_encoder, conv2d, drop_path, layer_norm
from jaxseg.models.layers import linear as flat_linear


class Spec(NamedTuple):
    """A variant's parameters in smp's `mix_transformer_encoders` (per stage: widths, blocks, heads,
    MLP expansion, attention reduction ratio)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    drop_path_rate: float = 0.1


WIDE = (64, 128, 320, 512)
MIT_ENCODERS = {
    "mit_b0": Spec((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": Spec(WIDE, (2, 2, 2, 2)),
    "mit_b2": Spec(WIDE, (3, 4, 6, 3)),
    "mit_b3": Spec(WIDE, (3, 4, 18, 3)),
    "mit_b4": Spec(WIDE, (3, 8, 27, 3)),
    "mit_b5": Spec(WIDE, (3, 6, 40, 3)),
}
# smp's mit blocks and stage norms are `partial(LayerNorm, eps=1e-6)`; the patch embeddings' and
# the attention's reduction norms are built as plain `LayerNorm(dim)`, torch's default 1e-5.
BLOCK_EPS, EMBED_EPS = 1e-6, 1e-5
PATCHES = ((7, 4), (3, 2), (3, 2), (3, 2))  # (kernel, stride) of each stage's patch embedding
DILATED_STAGES = {16: 2, 32: 3}  # smp's get_stages: output stride -> stage index (0-based)

LINEAR_INIT = nnx.initializers.normal(0.02)  # timm's trunc_normal_(std=0.02): cut at +-2, i.e. +-100 std


def conv_init(kernel_size: int, out_channels: int, groups: int = 1):
    """SegFormer's conv init: normal with std `sqrt(2 / fan_out)`, fan_out = k * k * out / groups."""
    return nnx.initializers.normal(math.sqrt(2.0 / (kernel_size * kernel_size * out_channels // groups)))


def linear(in_features: int, out_features: int, *, dtype, rngs) -> nnx.Linear:
    """torch's `nn.Linear` with SegFormer's init (every mit linear layer has a bias: `qkv_bias=True`)."""
    return flat_linear(in_features, out_features, kernel_init=LINEAR_INIT, dtype=dtype, rngs=rngs)


class OverlapPatchEmbed(nnx.Module):
    """SegFormer's `OverlapPatchEmbed`: a `k x k` convolution with stride `s` and padding `k // 2`
    (overlapping patches), then a LayerNorm (eps 1e-5) over the channels."""

    def __init__(
        self, in_channels, embed_dim, kernel_size, stride, *, dilation: int = 1, dtype, conv_general_dilated, rngs
    ):
        self.proj = conv2d(
            in_channels,
            embed_dim,
            kernel_size,
            stride=stride,
            dilation=dilation,  # padding dilation * (k // 2), as smp's replace_strides_with_dilation sets it
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            kernel_init=conv_init(kernel_size, embed_dim),
            rngs=rngs,
        )
        self.norm = layer_norm(embed_dim, EMBED_EPS, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.proj(x))


def reduction(dim: int, sr_ratio: int, dilation: int, **conv) -> nnx.Conv | None:
    """The attention's spatial reduction `sr`: a `sr_ratio x sr_ratio` convolution with that stride
    (none at ratio 1). Dilated by smp's make_dilated, it keeps stride 1 and pads
    `dilation * (sr_ratio // 2)`, so the keys outnumber the tokens, as in smp."""
    if sr_ratio == 1:
        return None
    dilated = dilation > 1
    return conv2d(
        dim,
        dim,
        sr_ratio,
        stride=1 if dilated else sr_ratio,
        padding=dilation * (sr_ratio // 2) if dilated else 0,
        dilation=dilation,
        kernel_init=conv_init(sr_ratio, dim),
        **conv,
    )


class Attention(nnx.Module):
    """SegFormer's efficient self-attention: keys and values from the map reduced by a
    `sr_ratio x sr_ratio` convolution with that stride (`sr`) and a LayerNorm (eps 1e-5), so the
    cost is `N * N / sr_ratio**2`; scale `head_dim ** -0.5`. `kv` is one linear layer whose
    outputs are `[keys | values]`, each heads-major."""

    def __init__(self, dim, num_heads, sr_ratio, *, dilation: int = 1, dtype, conv_general_dilated, rngs):
        if dim % num_heads:
            raise ValueError(f"dim {dim} should be divided by num_heads {num_heads}.")
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.q = linear(dim, dim, dtype=dtype, rngs=rngs)
        self.kv = linear(dim, 2 * dim, dtype=dtype, rngs=rngs)
        self.proj = linear(dim, dim, dtype=dtype, rngs=rngs)
        self.sr = reduction(dim, sr_ratio, dilation, dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.norm = layer_norm(dim, EMBED_EPS, dtype=dtype, rngs=rngs) if sr_ratio > 1 else None

    def __call__(self, tokens, height: int, width: int):
        batch, n, dim = tokens.shape
        heads = self.num_heads
        q = self.q(tokens).reshape(batch, n, heads, dim // heads)
        source = tokens
        if self.sr is not None and self.norm is not None:
            reduced = self.sr(tokens.reshape(batch, height, width, dim))
            source = self.norm(reduced.reshape(batch, -1, dim))
        kv = self.kv(source).reshape(batch, -1, 2, heads, dim // heads)
        k, v = kv[:, :, 0], kv[:, :, 1]  # [B, M, heads, head_dim]
        return self.proj(attention(q, k, v, self.scale))


class DWConv(nnx.Module):
    """SegFormer's `DWConv`: a depthwise 3x3 convolution (with bias) of the tokens as a map."""

    def __init__(self, dim, *, dilation: int = 1, dtype, conv_general_dilated, rngs):
        self.dwconv = conv2d(
            dim,
            dim,
            3,
            dilation=dilation,
            groups=dim,
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            kernel_init=conv_init(3, dim, groups=dim),
            rngs=rngs,
        )

    def __call__(self, tokens, height: int, width: int):
        batch, _, dim = tokens.shape
        return self.dwconv(tokens.reshape(batch, height, width, dim)).reshape(batch, -1, dim)


class Mlp(nnx.Module):
    """SegFormer's Mix-FFN: `fc2(GELU(dwconv(fc1(x))))`, exact (erf) GELU as torch's `nn.GELU`."""

    def __init__(self, dim, hidden, *, dilation: int = 1, dtype, conv_general_dilated, rngs):
        self.fc1 = linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.dwconv = DWConv(
            hidden, dilation=dilation, dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs
        )
        self.fc2 = linear(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, tokens, height: int, width: int):
        hidden = self.dwconv(self.fc1(tokens), height, width)
        return self.fc2(jax.nn.gelu(hidden, approximate=False))


class Block(nnx.Module):
    """SegFormer's transformer `Block` on a `[B, H, W, C]` map: pre-norm (eps 1e-6) attention and
    Mix-FFN residuals, each through stochastic depth at rate `drop_path`."""

    def __init__(self, dim, num_heads, mlp_ratio, sr_ratio, *, drop_path: float, dilation: int = 1, **conv):
        norm = dict(dtype=conv["dtype"], rngs=conv["rngs"])
        self.norm1 = layer_norm(dim, BLOCK_EPS, **norm)
        self.attn = Attention(dim, num_heads, sr_ratio, dilation=dilation, **conv)
        self.norm2 = layer_norm(dim, BLOCK_EPS, **norm)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dilation=dilation, **conv)
        self.drop_path = drop_path

    def __call__(self, x, *, key=None):
        batch, height, width, dim = x.shape
        attention_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        tokens = x.reshape(batch, height * width, dim)
        tokens = tokens + drop_path(self.attn(self.norm1(tokens), height, width), self.drop_path, attention_key)
        tokens = tokens + drop_path(self.mlp(self.norm2(tokens), height, width), self.drop_path, mlp_key)
        return tokens.reshape(batch, height, width, dim)


class MixVisionTransformerEncoder(nnx.Module):
    """smp's `MixVisionTransformerEncoder`: `encoder(x [B, H, W, C])` -> `depth + 1` feature maps:
    the input, a zero-channel `[B, H // 2, W // 2, 0]` placeholder at stride 2 (as smp, so decoders
    index features by stride), then the stages at strides 4, 8, 16, 32 (`out_channels`:
    `(in_channels, 0, *embed_dims)[: depth + 1]`).

    Args:
      name: a key of `MIT_ENCODERS` (`mit_b0` ... `mit_b5`).
      in_channels: input channels (the first patch embedding's kernel is adapted when weights load).
      depth: 1..5 (all stages are built, so any smp state dict of the encoder loads).
      output_stride: 32, or 16 / 8 as smp's `make_dilated` (its `get_stages`: the stride-16 and
        stride-32 stages): every convolution of a dilated stage (patch embedding, reduction, depthwise)
        gets stride 1, dilation `stage stride / output_stride` and padding `dilation * (k // 2)`.
      drop_path_rate: stochastic depth, rising linearly over the blocks from 0 to this rate (default
        the variant's, 0.1 in smp); training (`train=True`) then needs a `key`.
    """

    def __init__(
        self,
        name: str,
        *,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        drop_path_rate: float | None = None,
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        check_encoder(
            "Mix Transformer", name, MIT_ENCODERS, depth, output_stride, smp_class="MixVisionTransformerEncoder"
        )
        spec = MIT_ENCODERS[name]
        self.name, self.depth = name, depth
        self.output_stride = min(output_stride, 2**depth)
        self.out_channels = (in_channels, 0, *spec.embed_dims)[: depth + 1]
        conv = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
        rates = iter(block_drop_rates(spec, drop_path_rate))
        dilations = stage_dilations(output_stride)
        channels = in_channels
        for stage, ((kernel, stride), dim) in enumerate(zip(PATCHES, spec.embed_dims)):
            dilation = dilations[stage]
            embed_stride = 1 if dilation > 1 else stride
            setattr(
                self,
                f"patch_embed{stage + 1}",
                OverlapPatchEmbed(channels, dim, kernel, embed_stride, dilation=dilation, **conv),
            )
            block = [
                Block(
                    dim,
                    spec.num_heads[stage],
                    spec.mlp_ratios[stage],
                    spec.sr_ratios[stage],
                    drop_path=next(rates),
                    dilation=dilation,
                    **conv,
                )
                for _ in range(spec.depths[stage])
            ]
            setattr(self, f"block{stage + 1}", nnx.List(block))
            setattr(self, f"norm{stage + 1}", layer_norm(dim, BLOCK_EPS, dtype=dtype, rngs=rngs))
            channels = dim

    def __call__(self, x, *, train: bool = False, key=None) -> list:
        batch, height, width, _ = x.shape
        features = [x, jnp.zeros((batch, height // 2, width // 2, 0), x.dtype)]
        blocks_used = [block for stage in range(self.depth - 1) for block in getattr(self, f"block{stage + 1}")]
        check_drop_key(train, key, [block.drop_path for block in blocks_used], self.name)
        keys = None if key is None or not train else jax.random.split(key, len(PATCHES))
        for stage in range(self.depth - 1):  # depth 1 is the input and the placeholder only
            x = getattr(self, f"patch_embed{stage + 1}")(x)
            blocks = getattr(self, f"block{stage + 1}")
            block_keys = [None] * len(blocks) if keys is None else jax.random.split(keys[stage], len(blocks))
            for block, block_key in zip(blocks, block_keys):
                x = block(x, key=block_key)
            x = getattr(self, f"norm{stage + 1}")(x)
            features.append(x)
        return features


def block_drop_rates(spec: Spec, rate: float | None = None) -> list[float]:
    """Every block's stochastic-depth rate, rising linearly from 0 over all the blocks to `rate`
    (default the variant's): smp's "stochastic depth decay rule"."""
    return np.linspace(0.0, spec.drop_path_rate if rate is None else rate, sum(spec.depths)).tolist()


def stage_dilations(output_stride: int) -> tuple[int, int, int, int]:
    """Each stage's dilation under smp's `make_dilated(output_stride)` (1: not dilated)."""
    dilations = [1, 1, 1, 1]
    for stage_stride, stage in DILATED_STAGES.items():
        if stage_stride > output_stride:
            dilations[stage] = stage_stride // output_stride
    return (dilations[0], dilations[1], dilations[2], dilations[3])
