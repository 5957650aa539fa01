"""The 2x bilinear stencil gives the values and gradients of jax.image.resize (and torch's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import resample
from jaxseg.models.resample import resize_bilinear


def reference(x, size):
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear")


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 1, 5, 2), (3, 7, 1, 4)])
def test_doubling_matches_jax_image_resize_in_value_and_gradient(shape, monkeypatch):
    x = jax.random.normal(jax.random.key(0), shape)
    size = (2 * shape[1], 2 * shape[2])
    np.testing.assert_allclose(resize_bilinear(x, size), reference(x, size), rtol=1e-6, atol=1e-6)
    weights = jax.random.normal(jax.random.key(1), (shape[0], *size, shape[3]))
    ours = jax.grad(lambda x: jnp.sum(resize_bilinear(x, size) * weights))(x)
    theirs = jax.grad(lambda x: jnp.sum(reference(x, size) * weights))(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # the stencil path really ran: with jax.image.resize gone, doubling still works
    monkeypatch.setattr(resample.jax.image, "resize", None)
    resize_bilinear(x, size)


def test_other_sizes_fall_back_to_jax_image_resize():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    for size in [(8, 6), (16, 16), (3, 3), (4, 4)]:
        np.testing.assert_allclose(resize_bilinear(x, size), reference(x, size), rtol=1e-6)


def test_doubling_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 4)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=2, mode="bilinear",
                                               align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(resize_bilinear(jnp.asarray(x), (10, 6)), expected, rtol=1e-5, atol=1e-6)
