"""Next-token losses: token_cross_entropy against a NumPy reference, and the streaming
linear_cross_entropy against the naive `hidden @ weight` + token_cross_entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.losses import linear_cross_entropy, token_cross_entropy

IGNORE = -100


def reference(logits, targets, *, ignore_index=None, label_smoothing=0.0, z_loss=0.0):
    """torch's smoothed cross-entropy mean over counted tokens plus z * lse^2 (float64)."""
    x = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    t = np.asarray(targets).reshape(-1)
    valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    logp = x - lse[:, None]
    nll = -logp[np.arange(len(t)), np.where(valid, t, 0)]
    loss = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1) + z_loss * lse**2
    count = max(valid.sum(), 1)
    return (loss * valid).sum() / count, (nll * valid).sum() / count


def problem(seed=0, shape=(3, 13), hidden=16, vocab=37, ignore_some=True):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(*shape, hidden)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(hidden, vocab)) * 0.4, jnp.float32)
    b = jnp.asarray(rng.normal(size=(vocab,)) * 0.5, jnp.float32)
    t = rng.integers(0, vocab, shape)
    if ignore_some:
        t[0, :4] = IGNORE
    return h, w, b, jnp.asarray(t)


OPTIONS = [dict(), dict(ignore_index=IGNORE), dict(ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-2)]


@pytest.mark.parametrize("options", OPTIONS)
def test_token_cross_entropy_matches_reference(options):
    h, w, b, t = problem(ignore_some="ignore_index" in options)
    logits = h @ w + b
    result = token_cross_entropy(logits, t, **options)
    loss, nll = reference(logits, t, **options)
    np.testing.assert_allclose(result.loss, loss, rtol=1e-5)
    np.testing.assert_allclose(result.nll, nll, rtol=1e-5)
    assert int(result.tokens) == int(np.sum(np.asarray(t) != IGNORE)) if "ignore_index" in options else t.size


def test_z_loss_part_is_reported_and_differentiable():
    h, w, b, t = problem(ignore_some=False)
    logits = h @ w + b
    result = token_cross_entropy(logits, t, z_loss=1e-3)
    lse = jax.nn.logsumexp(logits, -1)
    np.testing.assert_allclose(result.z_loss, 1e-3 * jnp.mean(lse**2), rtol=1e-5)
    grad = jax.grad(lambda x: token_cross_entropy(x, t, z_loss=1.0).z_loss)(logits)
    np.testing.assert_allclose(grad, 2 * lse[..., None] * jax.nn.softmax(logits) / t.size, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("chunk", [(8, 16), (64, 4096), 5])
def test_linear_cross_entropy_equals_naive_in_value_and_gradients(options, with_bias, chunk):
    h, w, b, t = problem(ignore_some="ignore_index" in options)
    b = b if with_bias else None

    def naive(h, w, b):
        logits = h @ w + (0.0 if b is None else b)
        return token_cross_entropy(logits, t, **options).loss

    def streaming(h, w, b):
        return linear_cross_entropy(h, w, t, bias=b, chunk_size=chunk, **options).loss

    expected, expected_grads = jax.value_and_grad(naive, argnums=(0, 1, 2))(h, w, b)
    got, got_grads = jax.jit(jax.value_and_grad(streaming, argnums=(0, 1, 2)))(h, w, b)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    for name, g, e in zip(("hidden", "weight", "bias"), got_grads, expected_grads):
        if e is not None:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7, err_msg=name)


def test_linear_cross_entropy_parts_and_sum_reduction():
    h, w, b, t = problem()
    options = dict(ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-3)
    naive = token_cross_entropy(h @ w + b, t, reduction="sum", **options)
    streaming = linear_cross_entropy(h, w, t, bias=b, chunk_size=(8, 8), reduction="sum", **options)
    for field in ("loss", "nll", "z_loss", "tokens", "correct"):
        np.testing.assert_allclose(getattr(streaming, field), getattr(naive, field), rtol=1e-5, err_msg=field)
    per_token = linear_cross_entropy(h, w, t, bias=b, reduction="none", **options).loss
    assert per_token.shape == t.shape and float(per_token[0, 0]) == 0.0  # ignored


@pytest.mark.parametrize("chunk_size", [(8, 8), (64, 5)])
def test_correct_counts_top1_hits_of_counted_tokens(chunk_size):
    h, w, b, t = problem(seed=3)
    logits = np.asarray(h @ w + b)
    valid = np.asarray(t) != IGNORE
    expected = int(np.sum((logits.argmax(-1) == np.asarray(t)) & valid))
    assert expected > 0
    naive = token_cross_entropy(logits, t, ignore_index=IGNORE)
    streaming = linear_cross_entropy(h, w, t, bias=b, ignore_index=IGNORE, chunk_size=chunk_size)
    assert int(naive.correct) == expected and int(streaming.correct) == expected
    per_token = linear_cross_entropy(h, w, t, bias=b, ignore_index=IGNORE, reduction="none").correct
    np.testing.assert_array_equal(per_token, (logits.argmax(-1) == np.asarray(t)) & valid)


def test_bf16_inputs_accumulate_in_float32():
    h, w, b, t = problem(ignore_some=False, hidden=64, vocab=300)
    hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    # The reference: the same bf16 values, everything after them in float64.
    expected, _ = reference(np.asarray(hb, np.float64) @ np.asarray(wb, np.float64) + np.asarray(b), t)
    loss, grads = jax.value_and_grad(
        lambda h, w: linear_cross_entropy(h, w, t, bias=b, chunk_size=(16, 64)).loss, argnums=(0, 1)
    )(hb, wb)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    naive_grads = jax.grad(lambda h, w: token_cross_entropy(h @ w + b, t).loss, argnums=(0, 1))(
        hb.astype(jnp.float32), wb.astype(jnp.float32)
    )
    for g, e in zip(grads, naive_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), e, rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(e))))


def test_vmap_over_sequences_and_all_ignored():
    h, w, b, t = problem(ignore_some=False)
    per_sequence = jax.vmap(lambda h, t: linear_cross_entropy(h, w, t, bias=b, chunk_size=(4, 8)).loss)(h, t)
    expected = jax.vmap(lambda h, t: token_cross_entropy(h @ w + b, t).loss)(h, t)
    np.testing.assert_allclose(per_sequence, expected, rtol=1e-6)
    ignored = jnp.full_like(t, IGNORE)
    loss, grads = jax.value_and_grad(
        lambda h, w: linear_cross_entropy(h, w, ignored, ignore_index=IGNORE).loss, argnums=(0, 1)
    )(h, w)
    assert float(loss) == 0.0 and all(float(jnp.abs(g).max()) == 0.0 for g in grads)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h, w, t: linear_cross_entropy(h, w.T, t), "weight must be"),
        (lambda h, w, t: linear_cross_entropy(h, w, t[:, :-1]), "targets shape"),
        (lambda h, w, t: linear_cross_entropy(h, w, t.astype(jnp.float32)), "integer token ids"),
        (lambda h, w, t: linear_cross_entropy(h, w, t, bias=jnp.zeros(3)), "bias shape"),
        (lambda h, w, t: token_cross_entropy(h @ w, t, reduction="avg"), "reduction"),
    ],
)
def test_bad_input_is_named(call, message):
    h, w, _, t = problem()
    with pytest.raises((ValueError, TypeError), match=message):
        call(h, w, t)
