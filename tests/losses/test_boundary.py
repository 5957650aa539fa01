"""gradient_loss, boundary_loss and signed_distance_maps against direct NumPy versions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from tests.losses import numpy_reference as ref
from tests.losses.test_classification import check_grad, random_case


@pytest.fixture
def rng():
    return np.random.default_rng(4)


@pytest.mark.parametrize("operator", ["forward", "central", "sobel"])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("ignore", [None, 255])
def test_gradient_loss(rng, operator, p, ignore):
    logits, labels = random_case(rng, shape=(2, 4, 5), num_classes=3, ignore=ignore)
    valid = np.ones(labels.shape) if ignore is None else (labels != ignore).astype(np.float64)
    onehot = np.eye(3)[np.where(labels == 255, 0, labels)] * valid[..., None]
    ours = lambda x: losses.gradient_loss(x, labels, operator=operator, p=p, ignore_index=ignore)
    expected = lambda x: ref.gradient_loss(ref.softmax(x), onehot, valid, operator, p)
    np.testing.assert_allclose(ours(logits), expected(logits.astype(np.float64)), rtol=1e-5, atol=1e-7)
    check_grad(ours, expected, logits)


def test_gradient_loss_per_image_and_sum(rng):
    logits, labels = random_case(rng, shape=(3, 4, 4))
    per_image = losses.gradient_loss(logits, labels, reduction="none")
    assert per_image.shape == (3,)
    for b in range(3):
        np.testing.assert_allclose(per_image[b], losses.gradient_loss(logits[b : b + 1], labels[b : b + 1]), rtol=1e-6)
    # Every image has the same number of entries, so the mean is the mean of per-image means.
    np.testing.assert_allclose(losses.gradient_loss(logits, labels), per_image.mean(), rtol=1e-6)


def test_gradient_operators_have_unit_slope_on_a_ramp():
    # A ramp in the target with a constant prediction: |D(p - y)| = slope of y = 1/4 per pixel.
    ramp = np.tile(np.arange(6) / 4.0, (6, 1))
    targets = np.stack([ramp, 1 - ramp], axis=-1)[None].astype(np.float32)
    logits = np.zeros_like(targets)
    for operator in ("forward", "central", "sobel"):
        value = losses.gradient_loss(logits, targets, operator=operator, p=1)
        # Along the ramp axis every entry is 1/4, across it 0: the mean is 1/8.
        np.testing.assert_allclose(value, 1 / 8, rtol=1e-6, err_msg=operator)


def test_gradient_loss_three_dimensional(rng):
    logits = rng.standard_normal((1, 3, 4, 5, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (1, 3, 4, 5))
    probs = np.asarray(jax.nn.softmax(logits))
    d = probs - np.eye(2)[labels]
    diffs = [np.diff(d, axis=a) for a in (1, 2, 3)]
    expected = sum((x**2).sum() for x in diffs) / sum(x.size for x in diffs)
    np.testing.assert_allclose(losses.gradient_loss(logits, labels), expected, rtol=1e-5)


def test_gradient_loss_errors(rng):
    logits, labels = random_case(rng, shape=(1, 2, 5))
    with pytest.raises(ValueError, match="operator 'sobel' needs spatial sizes >= 3"):
        losses.gradient_loss(logits, labels, operator="sobel")
    with pytest.raises(ValueError, match="p must be one of"):
        losses.gradient_loss(logits, labels, p=3)


@pytest.mark.parametrize("classes", [None, [1, 2]])
def test_boundary_loss(rng, classes):
    logits, _ = random_case(rng)
    distances = rng.standard_normal(logits.shape).astype(np.float32)
    ours = lambda x: losses.boundary_loss(x, distances, classes=classes)
    selected = slice(None) if classes is None else classes

    def expected(x):
        return np.mean(ref.softmax(x)[..., selected] * distances[..., selected])

    np.testing.assert_allclose(ours(logits), expected(logits.astype(np.float64)), rtol=1e-5)
    check_grad(ours, expected, logits)


def brute_force_distance(points_from, points_to):
    """For each point in points_from, the Euclidean distance to the nearest of points_to."""
    diff = points_from[:, None, :] - points_to[None, :, :]
    return np.sqrt((diff**2).sum(-1)).min(axis=1)


def test_signed_distance_maps_brute_force(rng):
    labels = np.zeros((7, 9), np.int64)
    labels[2:5, 3:8] = 1
    labels[6, 0] = 2
    labels[0, 0] = 255
    maps = losses.signed_distance_maps(labels, 4, ignore_index=255)
    assert maps.shape == (7, 9, 4) and maps.dtype == np.float32
    grid = np.stack(np.meshgrid(np.arange(7), np.arange(9), indexing="ij"), -1).reshape(-1, 2)
    flat = labels.reshape(-1)
    for k in (1, 2):
        inside, outside = grid[flat == k], grid[flat != k]
        expected = np.zeros(flat.shape)
        expected[flat != k] = brute_force_distance(outside, inside)
        expected[flat == k] = -(brute_force_distance(inside, outside) - 1)
        expected[flat == 255] = 0
        np.testing.assert_allclose(maps[..., k].reshape(-1), expected, rtol=1e-6, err_msg=f"class {k}")
    assert np.all(maps[..., 3] == 0)  # absent class
    assert maps[3, 5, 1] < 0 < maps[0, 5, 1]  # negative inside, positive outside


def test_signed_distance_maps_spacing_and_full_class():
    labels = np.zeros((4, 6), np.int64)
    labels[:, 3:] = 1
    maps = losses.signed_distance_maps(labels, 2, spacing=(1.0, 2.0))
    np.testing.assert_allclose(maps[0, :3, 1], [6.0, 4.0, 2.0])  # distance along axis 1, pixel width 2
    full = losses.signed_distance_maps(np.zeros((3, 3), np.int64), 2)
    assert np.all(full == 0)  # a class covering the image has no boundary
    with pytest.raises(TypeError, match="integer class ids"):
        losses.signed_distance_maps(labels.astype(np.float32), 2)


def test_boundary_loss_with_real_maps_rewards_the_right_class():
    labels = np.zeros((1, 8, 8), np.int64)
    labels[0, 2:6, 2:6] = 1
    maps = losses.signed_distance_maps(labels[0], 2)[None]
    right = 10.0 * (np.eye(2)[labels] * 2 - 1).astype(np.float32)
    wrong = -right
    assert losses.boundary_loss(right, maps, classes=[1]) < losses.boundary_loss(wrong, maps, classes=[1])
    assert losses.boundary_loss(jnp.asarray(right), maps) < 0
