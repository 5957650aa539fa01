"""Sampling the next token from logits: temperature, top-k and top-p (nucleus) filtering."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits, *, top_k: int = 0, top_p: float = 1.0):
    """`logits` `[..., V]` with every token outside the top `top_k` (0: all) and outside the
    smallest set whose probability reaches `top_p` (Holtzman et al. 2020) set to -inf. The
    most likely token always survives."""
    logits = jnp.asarray(logits, jnp.float32)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probabilities = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probabilities, axis=-1) - probabilities  # mass of the more likely tokens
        kept = jnp.where(before < top_p, ordered, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_token(key, logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Token ids `[...]` drawn from `softmax(logits / temperature)` after filtering;
    `temperature=0` takes the argmax."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(jnp.asarray(logits, jnp.float32) / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
