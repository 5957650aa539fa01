"""The shared layers against independent NumPy computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models.layers import call, conv, make_norm, max_pool_2x2, resize_bilinear


def numpy_bilinear_axis(x, size: int, axis: int):
    """torch's `interpolate(mode="bilinear", align_corners=False)` along one axis: source
    coordinate (i + 0.5) * in / out - 0.5, clamped at 0, neighbours clamped at the border."""
    n = x.shape[axis]
    source = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = (source - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, low, axis) * (1 - weight) + np.take(x, high, axis) * weight


@pytest.mark.parametrize("size, out", [((4, 5), (8, 10)), ((3, 4), (7, 9)), ((2, 2), (2, 6))])
def test_resize_bilinear_upsamples_as_torch_does(size, out):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    expected = numpy_bilinear_axis(numpy_bilinear_axis(x, out[0], 1), out[1], 2)
    np.testing.assert_allclose(resize_bilinear(jnp.asarray(x), out), expected, rtol=1e-5, atol=1e-6)


def test_max_pool_2x2_takes_each_window_maximum():
    x = np.random.default_rng(1).normal(size=(2, 6, 8, 3)).astype(np.float32)
    expected = x.reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(max_pool_2x2(jnp.asarray(x)), expected)
    grad = jax.grad(lambda x: jnp.sum(max_pool_2x2(x)))(jnp.asarray(x))
    assert float(jnp.sum(grad)) == expected.size  # one unit of gradient per window, at its maximum
    np.testing.assert_array_equal(np.asarray(grad) * x, np.where(grad > 0, x, 0))


def test_conv_computes_with_the_function_it_is_given():
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["dimension_numbers"])
        return jax.lax.conv_general_dilated(*args, **kwargs)

    layer = conv(3, 4, (3, 3), conv_general_dilated=spy, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 5, 5, 3))
    y = layer(x)
    assert len(calls) == 1 and y.shape == (1, 5, 5, 4)
    reference = conv(3, 4, (3, 3), rngs=nnx.Rngs(0))(x)
    np.testing.assert_array_equal(y, reference)


def test_norms_normalise_with_batch_statistics_in_training_only():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2)) * 3.0 + 5.0
    batch = make_norm("batch", 2, groups=1, dtype=jnp.float32, rngs=nnx.Rngs(0))
    y = call(batch, x, train=True)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, rtol=1e-3)
    # momentum 0.9 as torch's 0.1: one update moves the running mean a tenth of the way.
    np.testing.assert_allclose(batch.mean[...], 0.1 * jnp.mean(x, axis=(0, 1, 2)), rtol=1e-5)
    assert call(None, x, train=True) is x
    with pytest.raises(ValueError, match="norm must be one of"):
        make_norm("layer", 2, groups=1, dtype=jnp.float32, rngs=nnx.Rngs(0))
