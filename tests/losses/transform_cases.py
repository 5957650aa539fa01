"""Every public loss under jit, without jit, on a device, under pmap, vmap and grad.

Collected in-process by test_transforms.py (one device: the pmap variants skip) and run again
there in a subprocess with four CPU devices, where the pmap variants execute.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from tests.losses.cases import IGNORE, LOSSES

NAMED = [(name, name) for name in sorted(LOSSES)]


def make_inputs(seed=0, shape=(2, 5, 6), num_classes=3):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(shape + (num_classes,))).astype(np.float32)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    labels[rng.random(shape) < 0.2] = IGNORE
    return jnp.asarray(logits), jnp.asarray(labels)


class LossTransformationsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True, with_device=True, with_pmap=True)
    @parameterized.named_parameters(*NAMED)
    def test_value_and_gradient(self, name):
        loss = LOSSES[name]
        logits, labels = make_inputs()
        expected_value = loss(logits, labels)
        expected_grad = jax.grad(loss)(logits, labels)
        value, grad = self.variant(jax.value_and_grad(loss))(logits, labels)
        np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
        self.assertTrue(np.all(np.isfinite(grad)))

    @parameterized.named_parameters(*NAMED)
    def test_vmap_equals_loop(self, name):
        loss = LOSSES[name]
        members = [make_inputs(seed) for seed in range(3)]
        logits = jnp.stack([m[0] for m in members])
        labels = jnp.stack([m[1] for m in members])
        values = jax.jit(jax.vmap(loss))(logits, labels)
        grads = jax.jit(jax.vmap(jax.grad(loss)))(logits, labels)
        for k, (x, y) in enumerate(members):
            np.testing.assert_allclose(values[k], loss(x, y), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(grads[k], jax.grad(loss)(x, y), rtol=1e-4, atol=1e-7)
