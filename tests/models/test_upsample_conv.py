"""Upsample-then-convolve in phase form equals 2x bilinear upsampling followed by the 3x3 convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import upsample_conv as module
from jaxseg.models.upsample_conv import upsample_conv, upsample_conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")


def reference(x, kernel):
    batch, height, width, channels = x.shape
    upsampled = jax.image.resize(x, (batch, 2 * height, 2 * width, channels), "bilinear")
    return jax.lax.conv_general_dilated(upsampled, kernel, (1, 1), "SAME", dimension_numbers=NHWC)


def inputs(shape, cout, dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], cout), dtype) / np.sqrt(9 * shape[-1])
    return x, kernel


@pytest.mark.parametrize("shape", [(2, 2, 2, 3), (2, 5, 3, 4), (1, 6, 9, 2), (1, 8, 8, 16)])
def test_phase_form_matches_upsample_then_conv_in_value_and_gradients(shape):
    x, kernel = inputs(shape, 5)
    np.testing.assert_allclose(jax.jit(upsample_conv)(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(2), (shape[0], 2 * shape[1], 2 * shape[2], 5))
    ours = jax.jit(jax.grad(lambda x, k: jnp.sum(upsample_conv(x, k) * weights), (0, 1)))(x, kernel)
    theirs = jax.jit(jax.grad(lambda x, k: jnp.sum(reference(x, k) * weights), (0, 1)))(x, kernel)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_phase_form_in_bfloat16_stays_close_to_float32():
    x, kernel = inputs((1, 8, 6, 8), 4)
    ours = jax.jit(upsample_conv)(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours.astype(jnp.float32), reference(x, kernel), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("min_side, phases", [(2, True), (9, False)])
def test_phase_form_is_used_from_min_side_up(monkeypatch, min_side, phases):
    x, kernel = inputs((1, 8, 8, 3), 4)
    calls = []
    monkeypatch.setattr(module, "MIN_SIDE", min_side)
    monkeypatch.setattr(module, "upsample_conv", lambda *args: calls.append(1) or upsample_conv(*args))
    out = upsample_conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)
    assert bool(calls) == (phases and jax.default_backend() == "cpu")
    np.testing.assert_allclose(out, reference(x, kernel), rtol=1e-5, atol=1e-5)


def test_as_an_nnx_conv_it_upsamples_first():
    rngs = nnx.Rngs(0)
    layer = nnx.Conv(4, 6, (3, 3), conv_general_dilated=upsample_conv_general_dilated, rngs=rngs)
    layer.bias[...] = jax.random.normal(jax.random.key(3), (6,))
    x = jax.random.normal(jax.random.key(4), (2, 5, 7, 4))
    expected = reference(x, layer.kernel[...]) + layer.bias[...]
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [dict(window_strides=(2, 2)), dict(padding="VALID"), dict(rhs_dilation=(2, 2))])
def test_other_convolutions_are_an_error(options):
    x, kernel = inputs((1, 4, 4, 2), 3)
    arguments = dict(window_strides=(1, 1), padding="SAME") | options
    with pytest.raises(ValueError, match="stride 1, 'SAME'"):
        upsample_conv_general_dilated(x, kernel, dimension_numbers=NHWC, **arguments)


def test_too_small_or_not_3x3_is_an_error():
    x, kernel = inputs((1, 1, 4, 2), 3)
    with pytest.raises(ValueError, match="H, W >= 2"):
        upsample_conv(x, kernel)
    with pytest.raises(ValueError, match="3x3"):
        upsample_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((5, 5, 2, 3)))


def test_matches_torch_interpolate_then_conv2d():
    torch = pytest.importorskip("torch")
    x, kernel = inputs((2, 6, 5, 3), 4)
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
    upsampled = torch.nn.functional.interpolate(tx, scale_factor=2, mode="bilinear", align_corners=False)
    expected = torch.nn.functional.conv2d(upsampled, torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1), padding=1)
    np.testing.assert_allclose(jax.jit(upsample_conv)(x, kernel), expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
