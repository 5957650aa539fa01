"""Lovász losses against Berman et al.'s algorithm with boolean-indexed ignore."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg.losses.lovasz import lovasz_grad
from tests.losses import numpy_reference as ref
from tests.losses.test_classification import check_grad, random_case


@pytest.fixture
def rng():
    return np.random.default_rng(3)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_lovasz_softmax(rng, per_image, ignore):
    logits, labels = random_case(rng, shape=(2, 3, 4), ignore=ignore)
    labels[0][labels[0] == 1] = 2  # class 1 absent from image 0
    ours = lambda x: losses.lovasz_loss(x, labels, per_image=per_image, ignore_index=ignore)
    expected = lambda x: np.mean(ref.lovasz_softmax(x, labels, per_image, ignore))
    np.testing.assert_allclose(ours(logits), expected(logits.astype(np.float64)), rtol=1e-5, atol=1e-6)
    check_grad(ours, expected, logits)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_lovasz_hinge(rng, mode, per_image, ignore):
    channels = 1 if mode == "binary" else 3
    logits = (2 * rng.standard_normal((2, 3, 4, channels))).astype(np.float32)
    labels = rng.integers(0, 2, logits.shape).astype(np.float32)
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.3] = ignore
    ours = lambda x: losses.lovasz_loss(x, labels, mode=mode, per_image=per_image, ignore_index=ignore)
    expected = lambda x: np.mean(ref.lovasz_hinge(x, labels, per_image, ignore))
    np.testing.assert_allclose(ours(logits), expected(logits.astype(np.float64)), rtol=1e-5, atol=1e-6)
    check_grad(ours, expected, logits)


def test_ignored_pixels_change_nothing_whatever_their_logits(rng):
    logits, labels = random_case(rng, ignore=255)
    ignored = labels == 255
    noisy = np.where(ignored[..., None], 100 * rng.standard_normal(logits.shape), logits).astype(np.float32)
    loss = lambda x: losses.lovasz_loss(x, labels, ignore_index=255)
    np.testing.assert_allclose(loss(noisy), loss(logits), rtol=1e-6)
    grad = jax.grad(loss)(jnp.asarray(noisy))
    assert np.all(np.asarray(grad)[ignored] == 0.0)


def test_mask_equals_ignore_index(rng):
    logits, labels = random_case(rng)
    keep = rng.random(labels.shape) > 0.3
    np.testing.assert_allclose(
        losses.lovasz_loss(logits, labels, mask=keep, per_image=True),
        losses.lovasz_loss(logits, np.where(keep, labels, 255), ignore_index=255, per_image=True),
        rtol=1e-6,
    )


def test_lovasz_grad_single_pixel_and_all_background():
    np.testing.assert_allclose(lovasz_grad(jnp.array([1.0])), [1.0])
    np.testing.assert_allclose(lovasz_grad(jnp.array([0.0, 0.0])), [1.0, 0.0])


def test_no_class_present_gives_zero(rng):
    logits, labels = random_case(rng)
    labels[:] = 255
    value, grad = jax.value_and_grad(lambda x: losses.lovasz_loss(x, labels, ignore_index=255))(jnp.asarray(logits))
    assert value == 0.0 and np.all(np.asarray(grad) == 0.0)
