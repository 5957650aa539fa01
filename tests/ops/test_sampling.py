"""Next-token sampling: top-k and top-p filters, temperature."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.ops.sampling import filter_logits, sample_token

LOGITS = jnp.log(jnp.asarray([0.5, 0.25, 0.15, 0.1]))


def kept(logits):
    return np.isfinite(np.asarray(logits))


def test_top_k_keeps_the_k_largest():
    np.testing.assert_array_equal(kept(filter_logits(LOGITS, top_k=2)), [True, True, False, False])
    np.testing.assert_array_equal(kept(filter_logits(LOGITS, top_k=0)), [True] * 4)


def test_top_p_keeps_the_smallest_set_reaching_p():
    np.testing.assert_array_equal(kept(filter_logits(LOGITS, top_p=0.5)), [True, False, False, False])
    np.testing.assert_array_equal(kept(filter_logits(LOGITS, top_p=0.6)), [True, True, False, False])
    np.testing.assert_array_equal(kept(filter_logits(LOGITS, top_p=0.8)), [True, True, True, False])
    np.testing.assert_array_equal(kept(filter_logits(LOGITS, top_p=0.01)), [True, False, False, False])


def test_sampling_follows_the_filtered_distribution():
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: sample_token(k, LOGITS, top_k=3))(keys))
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(frequencies, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0], atol=0.03)
    assert int(sample_token(keys[0], LOGITS, temperature=0)) == 0
    cold = np.asarray(jax.vmap(lambda k: sample_token(k, LOGITS, temperature=0.1))(keys))
    assert np.mean(cold == 0) > 0.99
