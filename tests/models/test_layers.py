"""The convolution with the row-block kernel gradient and the 2x2 max pool: same numbers as lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import conv as conv_module
from jaxseg.models.conv import conv_general_dilated, kernel_gradient, same_conv2d
from jaxseg.models.pooling import max_pool_2x2

NHWC = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


@pytest.mark.parametrize("x_shape, k_shape", [
    ((2, 8, 12, 3), (3, 3, 3, 5)),
    ((3, 16, 16, 4), (1, 1, 4, 2)),
    ((1, 10, 6, 2), (5, 5, 2, 3)),
    ((2, 7, 9, 3), (3, 3, 3, 4)),  # odd sizes: row blocks must divide the height
])
def test_same_conv2d_matches_lax_in_value_and_gradients(x_shape, k_shape):
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), k_shape)
    np.testing.assert_allclose(same_conv2d(x, w), lax_conv(x, w), rtol=1e-6, atol=1e-6)
    ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(same_conv2d(x, w))), (0, 1))(x, w)
    theirs = jax.grad(lambda x, w: jnp.sum(jnp.sin(lax_conv(x, w))), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_kernel_gradient_with_several_row_blocks(monkeypatch):
    monkeypatch.setattr(conv_module, "BLOCK_PIXELS", 16)  # forces 4 blocks of 2 rows
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 2))
    dy = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
    expected = jax.vjp(lambda w: lax_conv(x, w), jnp.zeros((3, 3, 2, 3)))[1](dy)[0]
    np.testing.assert_allclose(kernel_gradient(x, dy, (3, 3, 2, 3)), expected, rtol=1e-5, atol=1e-5)


def test_dispatch_uses_the_row_block_gradient_only_where_it_pays(monkeypatch):
    x, w = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2))
    # A fresh function per trace: traces are cached per function object.
    call = lambda: lambda: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    uses_custom = lambda fn: "custom_vjp" in str(jax.make_jaxpr(fn)())
    assert not uses_custom(call())  # small: XLA's own gradient is faster
    monkeypatch.setattr(conv_module, "MIN_GRADIENT_FLOPS", 0)
    assert uses_custom(call())
    strided = lambda: conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC)
    assert not uses_custom(strided)
    np.testing.assert_allclose(strided(), jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC))


def test_max_pool_matches_reduce_window_and_splits_ties():
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    np.testing.assert_array_equal(max_pool_2x2(x), nnx.max_pool(x, (2, 2), strides=(2, 2)))
    ours = jax.grad(lambda x: jnp.sum(jnp.sin(max_pool_2x2(x))))(x)
    theirs = jax.grad(lambda x: jnp.sum(jnp.sin(nnx.max_pool(x, (2, 2), strides=(2, 2)))))(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    tied = jax.grad(lambda x: jnp.sum(max_pool_2x2(x)))(jnp.ones((1, 2, 2, 1)))
    np.testing.assert_allclose(tied, 0.25)
    with pytest.raises(ValueError, match="even H and W"):
        max_pool_2x2(jnp.ones((1, 3, 4, 1)))
