"""Numerics of every loss: low-precision inputs, extreme logits, empty and ignored classes, tiny shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from tests.losses.cases import IGNORE, LOSSES

NAMES = sorted(LOSSES)
NEEDS_TWO_PIXELS = {"gradient", "gradient_sobel_l1"}
IGNORE_AWARE_ZERO = [
    "cross_entropy",
    "cross_entropy_weighted",
    "binary_cross_entropy",
    "focal_multiclass",
    "focal_multiclass_gamma_half",
    "focal_binary",
    "dice",
    "dice_per_image_log",
    "dice_binary",
    "jaccard",
    "tversky",
    "generalized_dice",
    "lovasz",
    "lovasz_binary",
    "gradient",
    "gradient_sobel_l1",
]


def inputs(shape=(2, 5, 6), num_classes=3, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal(shape + (num_classes,))).astype(np.float32)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    labels[rng.random(shape) < 0.2] = IGNORE
    return logits, labels


def value_and_grad(name, logits, labels):
    fn = jax.jit(jax.value_and_grad(LOSSES[name]))
    value, grad = fn(jnp.asarray(logits), jnp.asarray(labels))
    return np.asarray(value), np.asarray(grad.astype(jnp.float32)), grad.dtype


def assert_finite(name, value, grad):
    assert np.all(np.isfinite(value)), f"{name}: value {value}"
    assert np.all(np.isfinite(grad)), f"{name}: non-finite gradient"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_inputs_accumulate_in_float32(name, dtype):
    logits, labels = inputs()
    low = jnp.asarray(logits).astype(dtype)
    value, grad, grad_dtype = value_and_grad(name, low, labels)
    exact, exact_grad, _ = value_and_grad(name, low.astype(jnp.float32), labels)
    assert value.dtype == np.float32
    assert grad_dtype == dtype
    # The loss upcasts before any arithmetic: the same as feeding the rounded values in fp32.
    np.testing.assert_allclose(value, exact, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, exact_grad.astype(dtype).astype(np.float32), rtol=1e-2, atol=1e-3)


def test_fp16_dice_over_a_large_image_does_not_overflow():
    # 512 x 512 = 262144 pixels: a float16 sum overflows (max 65504); float32 accumulation does not.
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 512, 512, 2)).astype(np.float16)
    labels = rng.integers(0, 2, (1, 512, 512))
    value = losses.dice_loss(logits, labels)
    np.testing.assert_allclose(value, losses.dice_loss(logits.astype(np.float32), labels), rtol=1e-6)
    assert 0.0 < float(value) < 1.0


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_give_finite_values_and_gradients(name):
    logits, labels = inputs(seed=1)
    extreme = np.where(logits > 0, 1e4, -1e4).astype(np.float32)
    assert_finite(name, *value_and_grad(name, extreme, labels)[:2])
    assert_finite(name, *value_and_grad(name, extreme.astype(jnp.bfloat16), labels)[:2])


@pytest.mark.parametrize("name", NAMES)
def test_empty_classes(name):
    logits, labels = inputs(num_classes=4, seed=2)
    labels = np.where(labels == IGNORE, IGNORE, labels % 2)  # classes 2 and 3 never appear
    assert_finite(name, *value_and_grad(name, logits, labels)[:2])


@pytest.mark.parametrize("name", NAMES)
def test_all_ignored(name):
    logits, labels = inputs(seed=3)
    labels = np.full_like(labels, IGNORE)
    value, grad, _ = value_and_grad(name, logits, labels)
    assert_finite(name, value, grad)
    if name in IGNORE_AWARE_ZERO:
        assert value == 0.0 and np.all(grad == 0.0), f"{name}: {value}"


@pytest.mark.parametrize("name", NAMES)
def test_single_pixel(name):
    logits, labels = inputs(shape=(1, 1, 1), seed=4)
    labels[:] = 1
    if name in NEEDS_TWO_PIXELS:
        with pytest.raises(ValueError, match="needs spatial sizes"):
            value_and_grad(name, logits, labels)
        return
    assert_finite(name, *value_and_grad(name, logits, labels)[:2])


@pytest.mark.parametrize("num_classes", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_one_and_two_classes(name, num_classes):
    logits, labels = inputs(num_classes=num_classes, seed=5)
    value, grad, _ = value_and_grad(name, logits, labels)
    assert_finite(name, value, grad)
    if num_classes == 1 and name in ("cross_entropy_weighted", "focal_multiclass", "dice", "lovasz"):
        assert abs(float(value)) < 1e-6  # one class: softmax is 1, the prediction is perfect


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.99])
def test_focal_gamma_below_one_at_saturation(gamma):
    logits = jnp.array([[1e4, -1e4, 0.0], [30.0, -30.0, -30.0], [-88.0, 88.0, 0.0]])
    labels = jnp.array([0, 0, 0])
    for fn in (
        lambda x: losses.focal_loss(x, labels, gamma=gamma),
        lambda x: losses.focal_loss(x[:, :1], (labels == 0)[:, None].astype(jnp.float32), mode="binary", gamma=gamma),
        lambda x: losses.sigmoid_focal_loss(x, jnp.eye(3)[labels], gamma=gamma, reduction="sum"),
    ):
        value, grad = jax.value_and_grad(fn)(logits)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
