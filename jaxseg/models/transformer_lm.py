"""Decoder-only pre-norm Transformer language model (GPT-2 layout) as a Flax NNX module."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.dense import OutputHead, embedding_init, flat_apply

POSITIONS = ("rope", "learned")


def rope(x, positions, base: float = 10000.0):
    """Rotary position embedding (Su et al. 2021), rotate-half layout of GPT-NeoX / LLaMA.

    Args:
      x: `[B, T, N, D]` queries or keys, D even.
      positions: `[T]` int positions of the T entries.
      base: wavelength base of the frequencies `base**(-2j / D)`.

    Returns:
      `x` rotated pairwise (channel j with j + D/2) by `positions * frequency_j`, computed in
      float32 and cast back to `x.dtype`.
    """
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * frequencies  # [T, D/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]  # [T, 1, D/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention, fused qkv projection, float32 logits and softmax.

    Call: `attention(x [B, T, d], positions [T], cache)` -> `(y [B, T, d], cache)`. With
    `cache=None` the T positions attend causally among themselves; with a cache `(k, v)`, each
    `[B, L, heads, head_dim]`, the new keys and values are written at `positions[0]` onwards and
    the queries attend to every cache slot up to their own position.
    """

    def __init__(self, d_model: int, num_heads: int, *, use_rope: bool, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.use_rope = use_rope
        self.qkv = nnx.Linear(d_model, 3 * d_model, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, cache=None):
        batch, length, d_model = x.shape
        qkv = flat_apply(self.qkv, x)
        q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.num_heads, -1), 3, axis=2)
        if self.use_rope:
            q, k = rope(q, positions), rope(k, positions)
        if cache is None:
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k, positions[0], axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v, positions[0], axis=1)
            cache = (k, v)
            mask = jnp.arange(k.shape[1])[None, :] <= positions[:, None]  # [T, L]
            y = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
        return flat_apply(self.out, y.reshape(batch, length, d_model)), cache


class Block(nnx.Module):
    """Pre-norm residual block: `x + attention(norm(x))`, then `x + mlp(norm(x))`, dropout on each branch."""

    def __init__(self, d_model, num_heads, mlp_ratio, *, use_rope, dropout, dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(d_model, dtype=dtype, rngs=rngs)
        self.attention = CausalSelfAttention(d_model, num_heads, use_rope=use_rope, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d_model, dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, mlp_ratio * d_model, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_ratio * d_model, d_model, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None

    def _drop(self, x, train: bool, key):
        if self.dropout is None:
            return x
        return self.dropout(x, deterministic=not train, rngs=key)

    def __call__(self, x, positions, cache=None, *, train: bool = False, key=None):
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        y, cache = self.attention(self.norm1(x), positions, cache)
        x = x + self._drop(y, train, keys[0])
        y = flat_apply(lambda h: self.mlp_out(nnx.gelu(self.mlp_in(h))), self.norm2(x))
        return x + self._drop(y, train, keys[1]), cache


class TransformerLanguageModel(OutputHead, nnx.Module):
    """Decoder-only Transformer: embedding (+ learned positions) -> dropout -> blocks -> LayerNorm.

    Pre-norm with LayerNorm (GPT-2; statistics in float32), GELU MLP, biases in every linear
    layer. Embeddings are Normal(0, 1/sqrt(d_model)) so that tied logits start at unit scale;
    linear layers use Flax's LeCun-normal default. The output projection is kept apart from
    `__call__` (see `head()` and `logits()`); with `tie_weights` its weight is the token
    embedding transposed and its bias a separate zero-initialised parameter.

    Args:
      vocab_size: number of tokens V.
      d_model: width of the residual stream and of the features.
      num_layers: number of blocks.
      num_heads: attention heads; must divide d_model (and leave an even head dim for rope).
      mlp_ratio: hidden width of the MLP in multiples of d_model.
      max_len: longest sequence accepted, by `__call__` and by `init_cache`.
      positions: "rope" (rotary, base 10000, on q and k) or "learned" (absolute embeddings).
      dropout: rate after the embedding and on each residual branch (0 disables).
      tie_weights: output weight = token embedding.T; otherwise a separate linear layer.
      dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.

    Call: `model(tokens [B, T] int, train=..., key=dropout_key)` -> features `[B, T, d_model]`.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        d_model: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        max_len: int = 256,
        positions: str = "rope",
        dropout: float = 0.0,
        tie_weights: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}")
        if d_model % num_heads:
            raise ValueError(f"num_heads must divide d_model; got d_model={d_model}, num_heads={num_heads}")
        if positions == "rope" and (d_model // num_heads) % 2:
            raise ValueError(
                f"positions='rope' needs an even head dim d_model // num_heads; got {d_model} // {num_heads}"
            )
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_len = max_len
        self.tie_weights = tie_weights
        self.dtype = dtype
        init = embedding_init(d_model)
        self.embedding = nnx.Embed(vocab_size, d_model, dtype=dtype, embedding_init=init, rngs=rngs)
        # Assigned once: Flax 0.12.12 keeps an attribute first set to None static, then refuses a module.
        position_embedding: nnx.Embed | None = None
        if positions == "learned":
            position_embedding = nnx.Embed(max_len, d_model, dtype=dtype, embedding_init=init, rngs=rngs)
        self.position_embedding = position_embedding
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        use_rope = positions == "rope"
        self.blocks = nnx.List(
            [
                Block(d_model, num_heads, mlp_ratio, use_rope=use_rope, dropout=dropout, dtype=dtype, rngs=rngs)
                for _ in range(num_layers)
            ]
        )
        self.final_norm = nnx.LayerNorm(d_model, dtype=dtype, rngs=rngs)
        if tie_weights:
            self.bias = nnx.Param(jnp.zeros(vocab_size))
        else:
            self.output = nnx.Linear(d_model, vocab_size, rngs=rngs)

    def _embed(self, tokens, positions):
        x = self.embedding(tokens)
        if self.position_embedding is not None:
            x = x + self.position_embedding(positions)
        return x

    def __call__(self, tokens, *, train: bool = False, key=None):
        """Features `[B, T, d_model]` in `dtype` of `tokens [B, T]`, T <= max_len; `key` drives dropout."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length must be <= max_len={self.max_len}; got {tokens.shape[1]}")
        keys = [None] * (self.num_layers + 1) if key is None else list(jax.random.split(key, self.num_layers + 1))
        positions = jnp.arange(tokens.shape[1])
        x = self._embed(tokens, positions)
        if self.dropout is not None:
            x = self.dropout(x, deterministic=not train, rngs=keys[0])
        for block, block_key in zip(self.blocks, keys[1:]):
            x, _ = block(x, positions, train=train, key=block_key)
        return self.final_norm(x)

    def init_cache(self, batch_size: int, max_len: int | None = None):
        """Empty KV cache for `decode_step`: a tuple of per-layer `(k, v)`, each `[B, max_len, heads, head_dim]`.

        Args:
          batch_size: B.
          max_len: cache length, at most (and by default) the model's `max_len`.
        """
        max_len = self.max_len if max_len is None else max_len
        if max_len > self.max_len:
            raise ValueError(f"cache max_len must be <= the model's max_len={self.max_len}; got {max_len}")
        d_model = self.embedding.features
        shape = (batch_size, max_len, self.num_heads, d_model // self.num_heads)
        return tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in range(self.num_layers))

    def decode_step(self, cache, tokens, position):
        """One step of evaluation-mode decoding with a KV cache.

        Args:
          cache: from `init_cache` or the previous `decode_step`, holding positions `< position`.
          tokens: `[B]` int, the tokens at `position`.
          position: int32 scalar (may be traced), `0 <= position < cache length` (not checked).

        Returns:
          `(cache, features [B, d_model])`; the features equal those of `__call__` (without
          dropout) on the prefix `[0, position]` at its last position.
        """
        positions = jnp.asarray(position, jnp.int32)[None]  # [1]
        x = self._embed(tokens[:, None], positions)  # [B, 1, d]
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, positions, layer_cache)
            new_cache.append(layer_cache)
        return tuple(new_cache), self.final_norm(x)[:, 0]
