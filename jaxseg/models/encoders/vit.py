"""Vision Transformer encoders (Dosovitskiy et al. 2021) as smp 0.6 builds `tu-vit_*_patch16_*`
for DPT: timm's `VisionTransformer` inside smp's `TimmViTEncoder`, read through timm's
`forward_intermediates`.

16x16 patches embedded by a strided convolution, a class token, learned position embeddings
(fixed grid: timm's `strict_img_size`), then pre-norm transformer blocks (LayerNorm eps 1e-6,
multi-head attention with one `qkv` projection, an MLP with exact GELU). The encoder returns the
outputs of `depth` blocks (spread evenly over the blocks unless `output_indices` names them), each
as a `[B, H / 16, W / 16, D]` map, and their class tokens for DPT's readout.

Parameters are named as smp names them (`model.patch_embed.proj`, `model.cls_token`,
`model.pos_embed`, `model.blocks.N.attn.qkv`, ...), including timm's final `norm` and ImageNet
`head`, which smp's model holds and never uses, so smp's state dicts load strictly and export
back whole. A timm checkpoint (the same keys without `model.`) loads as encoder weights.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxseg.models.encoders.convnext import INIT, Mlp
from jaxseg.models.layers import ConvFunction, attention, check_drop_key, conv2d, drop_path, layer_norm, linear


class Spec(NamedTuple):
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int


SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
VITS = {f"tu-vit_{size}_patch16_{img}": Spec(*dims, img) for size, dims in SIZES.items() for img in (224, 384)}
PATCH = 16
EPS = 1e-6
IMAGENET_CLASSES = 1000  # timm's default head, which smp's DPT keeps


def base_name(name: str) -> str:
    """smp's encoder name without timm's pretrained tag (`tu-vit_base_patch16_224.augreg_in21k`)."""
    return name.split(".", 1)[0]


class Attention(nnx.Module):
    """timm's `Attention`: `qkv` (outputs `[q | k | v]`, each heads-major), softmax over keys in
    float32 at scale `head_dim ** -0.5`, `proj`."""

    def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = linear(dim, 3 * dim, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.proj = linear(dim, dim, kernel_init=INIT, dtype=dtype, rngs=rngs)

    def __call__(self, tokens):
        batch, n, dim = tokens.shape
        heads = self.num_heads
        qkv = self.qkv(tokens).reshape(batch, n, 3, heads, dim // heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        return self.proj(attention(q, k, v, (dim // heads) ** -0.5))


class Block(nnx.Module):
    """timm's ViT `Block`: `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`."""

    def __init__(self, dim: int, num_heads: int, *, drop_path: float, dtype, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(dim, 4 * dim, dtype=dtype, rngs=rngs)
        self.drop_path = drop_path

    def __call__(self, x, *, key=None):
        attention_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, attention_key)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, mlp_key)


class PatchEmbed(nnx.Module):
    def __init__(self, in_channels: int, dim: int, *, dtype, conv_general_dilated, rngs: nnx.Rngs):
        self.proj = conv2d(
            in_channels,
            dim,
            PATCH,
            stride=PATCH,
            padding=0,
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )

    def __call__(self, x):
        return self.proj(x)


class VisionTransformer(nnx.Module):
    """timm's `VisionTransformer` (class token, no register tokens, no pre-norm), with
    `forward_intermediates`; `norm` and `head` are held for the checkpoint only."""

    def __init__(
        self, spec: Spec, *, in_channels: int, img_size, drop_path_rate: float, dtype, conv_general_dilated, rngs
    ):
        dim = spec.embed_dim
        self.grid = (img_size[0] // PATCH, img_size[1] // PATCH)
        self.img_size = tuple(img_size)
        self.patch_embed = PatchEmbed(
            in_channels, dim, dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs
        )
        self.cls_token = nnx.Param(1e-6 * jax.random.normal(rngs.params(), (1, 1, dim)))
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1 + self.grid[0] * self.grid[1], dim)))
        rates = np.linspace(0.0, drop_path_rate, spec.depth).tolist()
        self.blocks = nnx.List([Block(dim, spec.num_heads, drop_path=rate, dtype=dtype, rngs=rngs) for rate in rates])
        self.norm = layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
        self.head = linear(dim, IMAGENET_CLASSES, kernel_init=INIT, dtype=dtype, rngs=rngs)

    def forward_intermediates(self, x, indices, *, key=None):
        """(maps `[B, H / 16, W / 16, D]`, class tokens `[B, 1, D]`) after the blocks `indices`
        (ascending); the blocks after the last are not run (their outputs feed nothing)."""
        batch, height, width, _ = x.shape
        for axis, (size, expected) in enumerate(zip((height, width), self.img_size)):
            if size != expected:
                raise ValueError(
                    f"Input {('height', 'width')[axis]} ({size}) doesn't match model ({expected}). "
                    "timm's ViT has a fixed position-embedding grid: build the model with img_size=..."
                )
        patches = self.patch_embed(x)
        dim = patches.shape[-1]
        tokens = patches.reshape(batch, -1, dim)
        cls = jnp.broadcast_to(self.cls_token[...].astype(tokens.dtype), (batch, 1, dim))
        tokens = jnp.concatenate([cls, tokens], axis=1) + self.pos_embed[...].astype(tokens.dtype)
        keys = [None] * len(self.blocks) if key is None else list(jax.random.split(key, len(self.blocks)))
        maps, prefix = [], []
        for index in range(indices[-1] + 1):
            tokens = self.blocks[index](tokens, key=keys[index])
            if index in indices:
                maps.append(tokens[:, 1:].reshape(batch, *patches.shape[1:3], dim))
                prefix.append(tokens[:, :1])
        return maps, prefix


class TokenMaps(list):
    """The encoder's feature maps (a list, as every encoder returns), with `prefix_tokens`: each
    map's class token `[B, 1, D]` for DPT's readout. A pytree, so a jitted encoder returns it."""

    def __init__(self, maps, prefix_tokens):
        super().__init__(maps)
        self.prefix_tokens = list(prefix_tokens)


jax.tree_util.register_pytree_node(
    TokenMaps,
    lambda t: ((list(t), t.prefix_tokens), None),
    lambda _, children: TokenMaps(*children),
)


class ViTEncoder(nnx.Module):
    """smp's `TimmViTEncoder` on a timm ViT: `encoder(x [B, H, W, C])` -> `TokenMaps` of `depth`
    maps at stride 16 (`out_channels`: `(D,) * depth`), unlike the other encoders no input and
    no stride 2..8 maps (DPT reassembles its own scales).

    Args:
      name: a key of `VITS` (`tu-vit_base_patch16_224`), optionally with timm's pretrained tag.
      in_channels: input channels (the patch embedding's kernel is adapted when weights load).
      depth: how many block outputs, 1 .. the number of blocks (smp's `encoder_depth`, default 4).
      output_indices: the blocks whose outputs are returned (negative from the end; default
        `int(blocks / depth * i) - 1` for i = 1..depth, as smp samples them).
      img_size: the input size (default the variant's 224 or 384): timm's kwarg, which fixes the
        position-embedding grid.
      drop_path_rate: timm's stochastic depth (default 0), rising linearly over the blocks.
    """

    def __init__(
        self,
        name: str,
        *,
        in_channels: int = 3,
        depth: int = 4,
        output_stride: int | None = None,
        output_indices=None,
        img_size=None,
        drop_path_rate: float = 0.0,
        dtype=jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        if base_name(name) not in VITS:
            raise ValueError(f"unknown ViT encoder {name!r}; choose from {tuple(VITS)}")
        if depth < 1:
            raise ValueError(f"`encoder_depth` should be greater than 1, got {depth}.")
        if output_stride is not None:
            raise ValueError("Dilated mode not supported, set output stride to None")
        spec = VITS[base_name(name)]
        if depth > spec.depth:
            raise ValueError(
                f"Depth of the encoder cannot exceed the number of blocks in the model got {depth} depth, "
                f"model has {spec.depth} blocks"
            )
        self.output_indices = block_indices(output_indices, spec.depth, depth)
        size = spec.img_size if img_size is None else img_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.name, self.depth = name, depth
        self.out_channels = (spec.embed_dim,) * depth
        self.output_stride = PATCH
        self.has_prefix_tokens = True
        self.model = VisionTransformer(
            spec,
            in_channels=in_channels,
            img_size=size,
            drop_path_rate=drop_path_rate,
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )

    def __call__(self, x, *, train: bool = False, key=None) -> TokenMaps:
        used = self.model.blocks[: self.output_indices[-1] + 1]
        check_drop_key(train, key, [block.drop_path for block in used], self.name)
        maps, prefix = self.model.forward_intermediates(x, self.output_indices, key=key if train else None)
        return TokenMaps(maps, prefix)


def block_indices(output_indices, blocks: int, depth: int) -> tuple[int, ...]:
    """smp's `preprocess_output_indices` and timm's `feature_take_indices`: the blocks whose
    outputs are returned, ascending (timm collects them in block order)."""
    if output_indices is None:
        return tuple(int(blocks / depth * i) - 1 for i in range(1, depth + 1))
    if not isinstance(output_indices, (list, tuple)):
        raise ValueError(f"`output_indices` for encoder should be a list/tuple/None, got {type(output_indices)}")
    if len(output_indices) != depth:
        raise ValueError(
            "Length of output indices for feature extraction should be equal to the depth of the encoder "
            f"architecture, got output indices length - {len(output_indices)}, encoder depth - {depth}"
        )
    for index in output_indices:
        if not -blocks <= index < blocks:
            raise ValueError(
                f"Output indices for feature extraction should be in range [-{blocks}, {blocks}), because the "
                f"model has {blocks} blocks, got index = {index}."
            )
    taken = sorted(index % blocks for index in output_indices)
    if len(set(taken)) != len(taken):  # timm would return fewer maps than smp's decoder expects
        raise ValueError(f"output_indices {tuple(output_indices)} name a block twice")
    return tuple(taken)
