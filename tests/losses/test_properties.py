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
shapes = st.tuples(st.sampled_from([1, 2]), st.sampled_from([3, 4]), st.sampled_from([3, 5]), st.sampled_from([1, 2, 4]))


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
