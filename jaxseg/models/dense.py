"""Dense pieces the language models share: embeddings that double as output weights, and
matmuls shaped for XLA:CPU's fast weight gradients."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


def embedding_init(features: int):
    """Normal(0, 1/sqrt(features)): unit-scale logits when the embedding doubles as the output weight."""
    return nnx.initializers.normal(stddev=features**-0.5)


def matmul_f32(x, w, dtype):
    """`x [..., K] @ w [K, N]` -> `[..., N]`, both operands cast to `dtype`, float32 accumulation and result.

    The leading axes are flattened into one first: XLA:CPU turns the weight gradient of a 2-D
    matmul into one fast matmul, but for a 3-D `x` it transposes the cotangent into a slow
    generic dot (the backward of `[32, 64, 512] @ [512, 8192]` took 550 ms instead of 260 ms
    on two CPU cores).
    """
    y = jnp.matmul(x.reshape(-1, x.shape[-1]).astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    return y.reshape(*x.shape[:-1], w.shape[-1])


def output_logits(features, weight, bias):
    """`features [..., F] @ weight [F, V] + bias [V]` accumulated in float32 -> `[..., V]` float32."""
    logits = matmul_f32(features, weight, features.dtype)
    return logits if bias is None else logits + bias


def flat_apply(layer, x):
    """`layer` on `x [B, T, d]` seen as `[B * T, d]`: XLA:CPU computes the weight gradient of
    a 2-D matmul as one fast matmul, but transposes into a slow generic dot for 3-D inputs
    (see `matmul_f32`)."""
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


class OutputHead:
    """The output projection of a language model: the transposed input embedding when
    `tie_weights` (with its own `bias`), else the `output` linear layer. Mixed into the models
    that define `embedding`, `tie_weights` and `bias` or `output`."""

    def head(self):
        """Output projection as float32 arrays: `(weight [F, V], bias [V])`."""
        if self.tie_weights:
            return self.embedding.embedding[...].T, self.bias[...]
        return self.output.kernel[...], self.output.bias[...]

    def logits(self, features):
        """`features [..., F]` -> float32 logits `[..., V]`."""
        return output_logits(features, *self.head())
