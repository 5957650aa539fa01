"""The shared layers against independent NumPy computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models.layers import (
    attention,
    call,
    conv,
    flat_dot_general,
    linear,
    make_norm,
    max_pool_2x2,
    resize_bilinear,
)


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


@pytest.mark.parametrize("shape", [(5, 3), (2, 5, 3), (2, 4, 5, 3)])
def test_linear_layers_flatten_leading_axes_and_compute_what_nnx_linear_does(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    ours, plain = linear(3, 4, rngs=nnx.Rngs(1)), nnx.Linear(3, 4, rngs=nnx.Rngs(1))
    dots = [e for e in jax.make_jaxpr(lambda x: ours(x))(x).eqns if e.primitive.name == "dot_general"]
    assert [e.invars[0].aval.shape for e in dots] == [(int(np.prod(shape[:-1])), 3)]  # [..., K] seen as [-1, K]
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)
    x_numpy, kernel = np.asarray(x, np.float64), np.asarray(plain.kernel[...], np.float64)
    np.testing.assert_allclose(ours(x), x_numpy @ kernel + np.asarray(plain.bias[...]), rtol=1e-5, atol=1e-6)
    grads = [jax.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m) for m in (ours, plain)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_flat_dot_general_leaves_other_contractions_as_given():
    lhs, rhs = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
    batched = (((2,), (1,)), ((0,), (0,)))
    out = flat_dot_general(lhs, rhs, batched)
    assert out.shape == (2, 3, 5) and "reshape" not in str(
        jax.make_jaxpr(flat_dot_general, static_argnums=2)(lhs, rhs, batched)
    )
    first_axis = (((0,), (0,)), ((), ()))
    np.testing.assert_array_equal(flat_dot_general(lhs, jnp.ones((2, 6)), first_axis), jnp.full((3, 4, 6), 2.0))


def test_attention_is_softmax_over_the_keys_per_head():
    q, k, v = (
        jax.random.normal(jax.random.key(i), shape)
        for i, shape in enumerate([(2, 5, 3, 4), (2, 6, 3, 4), (2, 6, 3, 4)])
    )
    out = attention(q, k, v, 0.5)
    logits = np.einsum("bnhd,bmhd->bhnm", q, k) * 0.5
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhnm,bmhd->bnhd", weights, v).reshape(2, 5, 12)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
