"""Hypothesis properties of every loss: non-negative, finite value and gradient, zero when perfect."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.losses.cases import IGNORE, LOSSES, NONNEGATIVE, ZERO_AT_PERFECT

# Few distinct shapes keep the number of compilations bounded.
shapes = st.tuples(
    st.sampled_from([1, 2]), st.sampled_from([3, 4]), st.sampled_from([3, 5]), st.sampled_from([1, 2, 4])
)


@functools.cache
def compiled(name):
    return jax.jit(jax.value_and_grad(LOSSES[name]))


@st.composite
def segmentation_batches(draw):
    batch, height, width, classes = draw(shapes)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.1, 3.0, 50.0, 1e4]))
    logits = (scale * rng.standard_normal((batch, height, width, classes))).astype(np.float32)
    distribution = draw(st.sampled_from(["uniform", "one_class", "mostly_ignored", "all_ignored"]))
    labels = rng.integers(0, classes, (batch, height, width)).astype(np.int32)
    if distribution == "one_class":
        labels[:] = draw(st.integers(0, classes - 1))
    elif distribution == "mostly_ignored":
        labels[rng.random(labels.shape) < 0.8] = IGNORE
    elif distribution == "all_ignored":
        labels[:] = IGNORE
    dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]))
    return jnp.asarray(logits).astype(dtype), jnp.asarray(labels)


@settings(max_examples=40, deadline=None)
@given(segmentation_batches(), st.sampled_from(sorted(LOSSES)))
def test_finite_value_and_gradient(batch, name):
    logits, labels = batch
    value, grad = compiled(name)(logits, labels)
    assert np.isfinite(float(value)), name
    assert np.all(np.isfinite(np.asarray(grad.astype(jnp.float32)))), name
    if name in NONNEGATIVE:
        assert float(value) >= -1e-6, (name, float(value))


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.sampled_from(ZERO_AT_PERFECT), st.booleans())
def test_zero_at_a_perfect_prediction(shape, seed, name, with_ignored):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
    logits = 40.0 * (2.0 * np.eye(shape[-1])[labels] - 1.0)
    if with_ignored:
        labels[rng.random(labels.shape) < 0.3] = IGNORE
    value, _ = compiled(name)(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    assert abs(float(value)) < 1e-5, (name, float(value))


# ----------------------------------------------------------------------------- token losses

TOKEN_IGNORE = -100
token_shapes = st.tuples(
    st.sampled_from([1, 3]), st.sampled_from([4, 7]), st.sampled_from([8, 16]), st.sampled_from([5, 33])
)


@functools.cache
def compiled_token_loss(streaming: bool, label_smoothing: float, z_loss: float):
    from jaxseg.losses import linear_cross_entropy, token_cross_entropy

    options = dict(ignore_index=TOKEN_IGNORE, label_smoothing=label_smoothing, z_loss=z_loss)
    if streaming:
        loss = lambda h, w, t: linear_cross_entropy(h, w, t, chunk_size=(8, 16), **options).loss  # noqa: E731
    else:
        loss = lambda h, w, t: token_cross_entropy(h @ w, t, **options).loss  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@st.composite
def token_batches(draw):
    batch, length, hidden, vocab = draw(token_shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.01, 1.0, 30.0, 300.0]))  # up to logits of ~1e5
    h = (scale * rng.standard_normal((batch, length, hidden))).astype(np.float32)
    w = (scale * rng.standard_normal((hidden, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    distribution = draw(st.sampled_from(["uniform", "one_token", "mostly_ignored", "all_ignored"]))
    if distribution == "one_token":
        targets[:] = draw(st.integers(0, vocab - 1))
    elif distribution == "mostly_ignored":
        targets[rng.random(targets.shape) < 0.8] = TOKEN_IGNORE
    elif distribution == "all_ignored":
        targets[:] = TOKEN_IGNORE
    dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
    return jnp.asarray(h, dtype), jnp.asarray(w, dtype), jnp.asarray(targets), distribution


@settings(max_examples=25, deadline=None)
@given(token_batches(), st.booleans(), st.sampled_from([0.0, 0.1]), st.sampled_from([0.0, 1e-4]))
def test_token_losses_finite_nonnegative_and_zero_when_all_ignored(batch, streaming, label_smoothing, z_loss):
    h, w, targets, distribution = batch
    value, grads = compiled_token_loss(streaming, label_smoothing, z_loss)(h, w, targets)
    assert np.isfinite(float(value)) and float(value) >= -1e-6
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g.astype(jnp.float32))))
    if distribution == "all_ignored":
        assert float(value) == 0.0 and all(not np.any(np.asarray(g.astype(jnp.float32))) for g in grads)
