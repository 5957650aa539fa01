"""Next-token losses: cross-entropy with z-loss, and a streaming linear + cross-entropy.

`token_cross_entropy` takes logits. `linear_cross_entropy` takes the hidden states and the
output projection and never builds the `[tokens, vocab]` logits: a custom VJP walks token and
vocabulary blocks with an online log-sum-exp, and its backward pass recomputes each block's
logits to form that block's share of the gradients. Both compute the same per-token
statistics (log-sum-exp, label logit, sum of logits) and apply one formula to them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseg.losses._common import REDUCTIONS, as_float32, check_choice, logsumexp


class TokenLoss(NamedTuple):
    """The loss and its parts: `nll` (mean negative log-likelihood of the targets, without
    smoothing), `z_loss` (the mean z-loss term, already times its coefficient), `tokens`
    (the number of tokens counted) and `correct` (how many of them have their target among
    the highest logits: top-1 accuracy is `correct / tokens`; a tie counts as correct). With
    `reduction="none"` every part is per token."""

    loss: jax.Array
    nll: jax.Array
    z_loss: jax.Array
    tokens: jax.Array
    correct: jax.Array


def _valid_tokens(targets, ignore_index, mask):
    valid = jnp.ones(targets.shape, jnp.float32)
    if ignore_index is not None:
        valid = valid * (targets != ignore_index)
    if mask is not None:
        valid = valid * jnp.asarray(mask, jnp.float32)
    return valid


def _from_stats(lse, label_logit, sum_logits, max_logit, valid, vocab: int, label_smoothing, z_loss, reduction: str):
    """torch's smoothed cross-entropy plus PaLM's z-loss from per-token statistics."""
    nll = lse - label_logit
    correct = jax.lax.stop_gradient((label_logit >= max_logit).astype(jnp.float32) * valid)
    loss = nll
    if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0):
        eps = jnp.asarray(label_smoothing, jnp.float32)
        loss = (1.0 - eps) * nll + eps * (lse - sum_logits / vocab)
    z_term = jnp.asarray(z_loss, jnp.float32) * jnp.square(lse)
    loss = (loss + z_term) * valid
    tokens = jnp.sum(valid)
    if reduction == "none":
        return TokenLoss(loss, nll * valid, z_term * valid, tokens, correct)
    denominator = jnp.maximum(tokens, 1.0) if reduction == "mean" else 1.0
    return TokenLoss(
        jnp.sum(loss) / denominator,
        jnp.sum(nll * valid) / denominator,
        jnp.sum(z_term * valid) / denominator,
        tokens,
        jnp.sum(correct),
    )


def _check_targets(targets, leading_shape, what: str):
    if not jnp.issubdtype(jnp.asarray(targets).dtype, jnp.integer):
        raise TypeError(f"targets must be integer token ids; got dtype {jnp.asarray(targets).dtype}")
    if tuple(targets.shape) != tuple(leading_shape):
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal the {what} shape {tuple(leading_shape)}")


def token_cross_entropy(
    logits, targets, *, ignore_index=None, mask=None, label_smoothing=0.0, z_loss=0.0, reduction: str = "mean"
) -> TokenLoss:
    """Cross-entropy of next-token logits `[..., V]` against integer `targets` `[...]`, with z-loss.

    `loss_t = (1 - eps) nll_t + eps mean_v(-log p_v) + z_loss lse_t^2`, with `nll_t = lse_t - x_{t,y_t}`
    and `lse_t = logsumexp_v x_{t,v}`: torch semantics for `ignore_index` and `label_smoothing`, plus the
    z-loss of PaLM / t5x, which keeps the normaliser `lse` near 0. "mean" divides by the number of
    counted tokens (0 when there are none, with a zero gradient). Computes in float32 for any input
    dtype.

    Args:
      logits: `[..., V]`, any float dtype.
      targets: int `[...]` token ids.
      ignore_index: target id that is not counted (torch's default -100 is not assumed: None counts
        every token).
      mask: optional `[...]` token weights, combined with `ignore_index`.
      label_smoothing: `eps` (float or traced scalar).
      z_loss: coefficient of `lse^2` (PaLM uses 1e-4; float or traced scalar).
      reduction: "mean" (over counted tokens, dividing by `max(tokens, 1)`), "sum" or "none".

    Returns:
      `TokenLoss(loss, nll, z_loss, tokens, correct)`, float32: `loss` as above; `nll` without
        smoothing and z-loss; `z_loss` the z-loss term; `tokens` the number of counted tokens;
        `correct` how many have their target among the highest logits (ties count). "mean" and "sum"
        reduce `loss`, `nll` and `z_loss` and sum `correct`; "none" keeps them per token (zero where
        not counted), with `tokens` the total.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import token_cross_entropy
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, -5.0, 0.0]])  # [T=3, V=3]
      >>> out = token_cross_entropy(logits, jnp.array([0, 2, -100]), ignore_index=-100, z_loss=1e-4)
      >>> print(f"{float(out.loss):.4f} {float(out.nll):.4f} {float(out.tokens):.0f} {float(out.correct):.0f}")
      0.8610 0.8606 2 1

    References:
      - `torch.nn.functional.cross_entropy` (`ignore_index`, `label_smoothing`); the z-loss of t5x
        `cross_entropy_with_logits`.
      - Chowdhery et al., 2022, [PaLM: Scaling Language Modeling with
        Pathways](https://arxiv.org/abs/2204.02311) (z-loss).
      - Szegedy et al., 2016, [Rethinking the Inception Architecture for Computer
        Vision](https://arxiv.org/abs/1512.00567) (label smoothing).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    _check_targets(targets, logits.shape[:-1], "logits' leading")
    x = as_float32(logits)
    lse = logsumexp(x)
    safe = jnp.clip(targets, 0, x.shape[-1] - 1)
    label_logit = jnp.take_along_axis(x, safe[..., None], axis=-1)[..., 0]
    sum_logits = (
        jnp.sum(x, axis=-1) if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0) else None
    )
    valid = _valid_tokens(targets, ignore_index, mask)
    max_logit = jnp.max(x, axis=-1)
    return _from_stats(lse, label_logit, sum_logits, max_logit, valid, x.shape[-1], label_smoothing, z_loss, reduction)


# ----------------------------------------------------------------------------- streaming


def _blocks(size: int, block: int) -> tuple[int, int]:
    block = max(1, min(block, size))
    return block, -(-size // block)


def _block_logits(h_block, w_block, b_block):
    logits = jnp.matmul(h_block, w_block, preferred_element_type=jnp.float32)
    return logits if b_block is None else logits + b_block.astype(jnp.float32)


def _pad(x, axis: int, size: int):
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def _vocab_block(w, b, v, vocab_block):
    w_block = jax.lax.dynamic_slice_in_dim(w, v * vocab_block, vocab_block, axis=1)
    b_block = None if b is None else jax.lax.dynamic_slice_in_dim(b, v * vocab_block, vocab_block, axis=0)
    return w_block, b_block


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _linear_stats(h, w, b, targets, vocab: int, token_block: int, vocab_block: int):
    """Per-token (lse, label logit, sum of logits, max logit) of `h @ w + b` without the full
    logits (the max logit, for accuracy, has no gradient).

    h `[Np, D]`, w `[D, Vp]`, b `[Vp]` or None, padded to whole blocks; columns >= `vocab`
    are padding."""
    return _linear_stats_forward(h, w, b, targets, vocab, token_block, vocab_block)[0]


def _linear_stats_forward(h, w, b, targets, vocab, token_block, vocab_block):
    tokens, vocab_blocks = h.shape[0] // token_block, w.shape[1] // vocab_block

    def token_chunk(args):
        h_block, t_block = args

        def vocab_step(carry, v):
            running_max, running_sum, label_logit, sum_logits = carry
            w_block, b_block = _vocab_block(w, b, v, vocab_block)
            logits = _block_logits(h_block, w_block, b_block)
            columns = v * vocab_block + jnp.arange(vocab_block)
            real = columns < vocab
            masked = jnp.where(real, logits, -jnp.inf)
            new_max = jnp.maximum(running_max, jnp.max(masked, axis=-1))
            running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(masked - new_max[:, None]), -1)
            hit = columns[None, :] == t_block[:, None]
            label_logit = label_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
            sum_logits = sum_logits + jnp.sum(jnp.where(real, logits, 0.0), axis=-1)
            return (new_max, running_sum, label_logit, sum_logits), None

        start = (jnp.full((token_block,), -jnp.inf, jnp.float32),) + (jnp.zeros((token_block,), jnp.float32),) * 3
        (running_max, running_sum, label_logit, sum_logits), _ = jax.lax.scan(
            vocab_step, start, jnp.arange(vocab_blocks)
        )
        return running_max + jnp.log(running_sum), label_logit, sum_logits, running_max

    stats = jax.lax.map(token_chunk, (h.reshape(tokens, token_block, -1), targets.reshape(tokens, token_block)))
    stats = tuple(s.reshape(-1) for s in stats)
    return stats, (h, w, b, targets, stats[0])


def _linear_stats_backward(vocab, token_block, vocab_block, residuals, cotangents):
    h, w, b, targets, lse = residuals
    g_lse, g_label, g_sum = (jnp.zeros_like(lse) if g is None else g.astype(jnp.float32) for g in cotangents[:3])
    tokens, vocab_blocks = h.shape[0] // token_block, w.shape[1] // vocab_block

    def vocab_step(carry, v):
        dh, dw, db = carry
        w_block, b_block = _vocab_block(w, b, v, vocab_block)
        columns = v * vocab_block + jnp.arange(vocab_block)
        real = columns < vocab

        def token_step(carry, t):
            dh, dw_block, db_block = carry
            h_block = jax.lax.dynamic_slice_in_dim(h, t * token_block, token_block)
            t_block = jax.lax.dynamic_slice_in_dim(targets, t * token_block, token_block)
            take = lambda x: jax.lax.dynamic_slice_in_dim(x, t * token_block, token_block)[:, None]  # noqa: E731
            logits = _block_logits(h_block, w_block, b_block)
            probabilities = jnp.where(real, jnp.exp(logits - take(lse)), 0.0)
            hit = columns[None, :] == t_block[:, None]
            d_logits = (
                take(g_lse) * probabilities + jnp.where(hit, take(g_label), 0.0) + jnp.where(real, take(g_sum), 0.0)
            )
            dh_block = jnp.matmul(d_logits.astype(w.dtype), w_block.T, preferred_element_type=jnp.float32)
            dh_rows = jax.lax.dynamic_slice_in_dim(dh, t * token_block, token_block) + dh_block
            dh = jax.lax.dynamic_update_slice_in_dim(dh, dh_rows, t * token_block, axis=0)
            dw_block = dw_block + jnp.matmul(h_block.T, d_logits.astype(h.dtype), preferred_element_type=jnp.float32)
            db_block = db_block + jnp.sum(d_logits, axis=0)
            return (dh, dw_block, db_block), None

        start = (dh, jnp.zeros((w.shape[0], vocab_block), jnp.float32), jnp.zeros((vocab_block,), jnp.float32))
        (dh, dw_block, db_block), _ = jax.lax.scan(token_step, start, jnp.arange(tokens))
        # Written in place into the carried gradients: no stacked copy of the weight's size.
        dw = jax.lax.dynamic_update_slice_in_dim(dw, dw_block, v * vocab_block, axis=1)
        db = jax.lax.dynamic_update_slice_in_dim(db, db_block, v * vocab_block, axis=0)
        return (dh, dw, db), None

    start = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, jnp.float32), jnp.zeros((w.shape[1],), jnp.float32))
    (dh, dw, db), _ = jax.lax.scan(vocab_step, start, jnp.arange(vocab_blocks))
    db = None if b is None else db.astype(b.dtype)
    return dh.astype(h.dtype), dw.astype(w.dtype), db, None


_linear_stats.defvjp(_linear_stats_forward, _linear_stats_backward)


def linear_cross_entropy(
    hidden,
    weight,
    targets,
    *,
    bias=None,
    ignore_index=None,
    mask=None,
    label_smoothing=0.0,
    z_loss=0.0,
    chunk_size=(1024, 4096),
    reduction: str = "mean",
) -> TokenLoss:
    """`token_cross_entropy(hidden @ weight + bias, targets, ...)` without the logits in memory.

    `loss_t` as in `token_cross_entropy` with logits `x_t = h_t W + b`. A custom VJP walks token and
    vocabulary blocks with an online log-sum-exp; its backward pass recomputes each block's logits
    to form that block's share of the gradients. The value and the gradients with respect to
    `hidden`, `weight` and `bias` equal the naive computation's; peak extra memory is a few blocks
    instead of the `[tokens, V]` logits and their gradient. Works under `jit`, `grad` and `vmap`.

    Args:
      hidden: `[..., D]` final hidden states, any float dtype (matmuls accumulate in float32).
      weight: `[D, V]` output projection (for tied embeddings pass `embedding.T`).
      targets: int `[...]` next-token ids.
      bias: optional `[V]`.
      ignore_index: as in `token_cross_entropy`.
      mask: optional `[...]` token weights, as in `token_cross_entropy`.
      label_smoothing: as in `token_cross_entropy`.
      z_loss: as in `token_cross_entropy`.
      chunk_size: (tokens, vocabulary) per block, or one int for both: the largest temporary is one
        `[tokens, vocabulary]` float32 block (16 MiB at the default).
      reduction: "mean", "sum" or "none", as in `token_cross_entropy`.

    Returns:
      `TokenLoss`, as `token_cross_entropy` returns it.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import linear_cross_entropy, token_cross_entropy
      >>> hidden = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)  # [T=3, D=4]
      >>> weight = jnp.linspace(-2.0, 2.0, 20).reshape(4, 5)  # [D, V=5]
      >>> targets = jnp.array([0, 4, 2])
      >>> chunked = linear_cross_entropy(hidden, weight, targets, chunk_size=(2, 2))  # padded 2 x 2 blocks
      >>> print(f"{float(chunked.loss):.4f} {float(token_cross_entropy(hidden @ weight, targets).loss):.4f}")
      1.4335 1.4335

    References:
      - Wijmans et al., 2024, [Cut Your Losses in Large-Vocabulary Language
        Models](https://arxiv.org/abs/2411.09009) (blockwise log-sum-exp, logits recomputed in the
        backward pass; its `linear_cross_entropy` takes the classifier as `[V, D]` and may skip blocks
        of negligible gradient, this one skips nothing).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} @ weight {tuple(weight.shape)}: weight must be [D, V] with "
            f"D = hidden.shape[-1]"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[1],):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be ({weight.shape[1]},)")
    _check_targets(targets, hidden.shape[:-1], "hidden states' leading")
    leading, vocab = hidden.shape[:-1], weight.shape[1]
    h = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = jnp.asarray(targets, jnp.int32).reshape(-1)
    token_chunk, vocab_chunk = (chunk_size, chunk_size) if isinstance(chunk_size, int) else chunk_size
    token_block, token_blocks = _blocks(h.shape[0], token_chunk)
    vocab_block, vocab_blocks = _blocks(vocab, vocab_chunk)
    padded_tokens = token_block * token_blocks
    lse, label_logit, sum_logits, max_logit = _linear_stats(
        _pad(h, 0, padded_tokens),
        _pad(weight, 1, vocab_block * vocab_blocks),
        None if bias is None else _pad(bias, 0, vocab_block * vocab_blocks),
        _pad(flat_targets, 0, padded_tokens),
        vocab,
        token_block,
        vocab_block,
    )
    n = h.shape[0]
    lse, label_logit, sum_logits, max_logit = (
        s[:n].reshape(leading) for s in (lse, label_logit, sum_logits, jax.lax.stop_gradient(max_logit))
    )
    valid = _valid_tokens(jnp.asarray(targets), ignore_index, mask)
    return _from_stats(lse, label_logit, sum_logits, max_logit, valid, vocab, label_smoothing, z_loss, reduction)
