"""The convolution with the GEMM kernel gradient and the 2x2 max pool: same numbers as lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import conv as conv_module
from jaxseg.models.conv import conv_general_dilated, kernel_gradient, same_conv2d
from jaxseg.models.pooling import max_pool_2x2
from jaxseg.xla_cpu import EIGEN_CONVOLUTIONS

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def ynnpack_convolutions(monkeypatch):
    """The XLA routes under test are chosen from XLA_FLAGS at trace time: a developer's own flags
    must not change which one runs (a test that wants Eigen convolutions sets them itself), and
    oneDNN, which takes precedence where installed, is off (tests/models/test_onednn.py)."""
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAXSEG_ONEDNN", "0")


def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


@pytest.mark.parametrize("x_shape, k_shape", [
    ((2, 8, 12, 3), (3, 3, 3, 5)),
    ((3, 16, 16, 4), (1, 1, 4, 2)),
    ((1, 10, 6, 2), (5, 5, 2, 3)),
    ((2, 7, 9, 3), (3, 3, 3, 4)),  # odd sizes
    ((2, 6, 5, 3), (2, 2, 3, 4)),  # even kernel: SAME pads one more after than before
    ((1, 9, 6, 2), (3, 5, 2, 3)),  # rectangular kernel
])
def test_same_conv2d_matches_lax_in_value_and_gradients(x_shape, k_shape):
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), k_shape)
    np.testing.assert_allclose(same_conv2d(x, w), lax_conv(x, w), rtol=1e-6, atol=1e-6)
    ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(same_conv2d(x, w))), (0, 1))(x, w)
    theirs = jax.grad(lambda x, w: jnp.sum(jnp.sin(lax_conv(x, w))), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin, kernel", [(3, (3, 3)), (4, (3, 3)), (1, (5, 5)), (2, (2, 2))])
def test_narrow_inputs_run_on_patches_with_the_same_numbers(cin, kernel):
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, cin))
    w = jax.random.normal(jax.random.key(1), (*kernel, cin, 5))
    assert conv_module._narrow(w.shape)
    forward = str(jax.make_jaxpr(lambda x, w: same_conv2d(x, w))(x, w))
    assert "dot_general" in forward and "conv_general_dilated" not in forward
    np.testing.assert_allclose(same_conv2d(x, w), lax_conv(x, w), rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(same_conv2d(x, w))), (0, 1))(x, w)
    theirs = jax.grad(lambda x, w: jnp.sum(jnp.sin(lax_conv(x, w))), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_patches_are_the_kernel_windows_and_wide_inputs_keep_xla_convolutions():
    x = jnp.arange(2 * 4 * 5 * 3, dtype=jnp.float32).reshape(2, 4, 5, 3)
    p = conv_module.patches(x, 3, 3)
    x_pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(p[1, 2, 3], x_pad[1, 2:5, 3:6].reshape(-1))  # window rows, then columns, then channels
    assert not conv_module._narrow((3, 3, 5, 8)) and not conv_module._narrow((5, 5, 2, 8))
    wide = str(jax.make_jaxpr(same_conv2d)(jnp.ones((1, 8, 8, 8)), jnp.ones((3, 3, 8, 4))))
    assert "conv_general_dilated" in wide


def test_narrow_input_in_bfloat16_accumulates_in_float32():
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4)).astype(jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(2), (8, 16, 16, 4)).astype(jnp.bfloat16)
    y, vjp = jax.vjp(same_conv2d, x, w)
    assert y.dtype == jnp.bfloat16
    dk = vjp(dy)[1]
    assert dk.dtype == jnp.bfloat16
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    expected = jax.vjp(lambda w: lax_conv(f32(x), w), f32(w))[1](f32(dy))[0]
    # 2048 products per entry: only the final rounding to bfloat16 (relative 2^-8) remains
    np.testing.assert_allclose(f32(dk), expected, rtol=1e-2, atol=1e-2 * float(jnp.abs(expected).max()))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernel_gradient_split_into_several_gemms(monkeypatch, threads):
    monkeypatch.setattr(conv_module, "_cpu_threads", lambda: threads)
    monkeypatch.setattr(conv_module, "MIN_ROWS_PER_OUTPUT", 0)  # split even this small contraction
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    dy = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    rows = 3 * (8 + 2) * 8
    assert conv_module._gemm_splits(rows, 9, threads) == threads
    expected = jax.vjp(lambda w: lax_conv(x, w), jnp.zeros((3, 3, 2, 3)))[1](dy)[0]
    np.testing.assert_allclose(kernel_gradient(x, dy, (3, 3, 2, 3)), expected, rtol=1e-5, atol=1e-5)


def test_gemm_splits_divide_the_rows_and_skip_short_contractions():
    assert conv_module._gemm_splits(1_000, 96, 2) == 1  # shorter than 8 * 2 * 96
    assert conv_module._gemm_splits(266_240, 96, 2) == 2
    assert conv_module._gemm_splits(266_241, 96, 2) == 1  # odd: no even split
    assert conv_module._gemm_splits(266_240, 96, 16) == 16
    assert conv_module._gemm_splits(3 * 100_001, 96, 4) == 3  # largest divisor up to 4


def test_kernel_gradient_in_bfloat16_accumulates_in_float32():
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 8)).astype(jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(1), (4, 16, 16, 8)).astype(jnp.bfloat16)
    ours = kernel_gradient(x, dy, (3, 3, 8, 8))
    assert ours.dtype == jnp.bfloat16
    expected = jax.vjp(lambda w: lax_conv(x.astype(jnp.float32), w), jnp.zeros((3, 3, 8, 8)))[1](dy.astype(jnp.float32))[0]
    # 1024 products per entry: only the final rounding to bfloat16 (relative 2^-8) remains
    np.testing.assert_allclose(ours.astype(jnp.float32), expected, rtol=1e-2, atol=1e-2 * float(jnp.abs(expected).max()))


def test_dispatch_uses_the_gemm_gradient_for_stride_one_same_convolutions():
    x, w = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2))
    uses_custom = lambda fn: "custom_vjp" in str(jax.make_jaxpr(fn)())
    assert uses_custom(lambda: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC))
    strided = lambda: conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC)
    assert not uses_custom(strided)
    np.testing.assert_allclose(strided(), jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC))
    valid = lambda: conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)
    assert not uses_custom(valid)


@pytest.mark.parametrize("cin", [2, 8])
def test_dispatch_keeps_xla_convolutions_when_they_run_on_eigen(monkeypatch, cin):
    monkeypatch.setenv("XLA_FLAGS", EIGEN_CONVOLUTIONS)
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, 4))
    loss = lambda x, w: jnp.sum(jnp.sin(conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w))
    assert "custom_vjp" not in jaxpr and "dot_general" not in jaxpr
    ours = jax.grad(loss, (0, 1))(x, w)
    theirs = jax.grad(lambda x, w: jnp.sum(jnp.sin(lax_conv(x, w))), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


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
