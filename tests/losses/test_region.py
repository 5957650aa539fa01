"""Dice, Jaccard, Tversky and generalized Dice against NumPy versions of smp and MONAI."""

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
    return np.random.default_rng(2)


def masked_inputs(logits, labels, ignore=None):
    """Probabilities and one-hot targets with ignored pixels zeroed (smp's masking)."""
    probs = ref.softmax(logits.astype(np.float64))
    keep = np.ones(labels.shape, bool) if ignore is None else labels != ignore
    onehot = np.eye(logits.shape[-1])[np.where(keep, labels, 0)] * keep[..., None]
    return probs * keep[..., None], onehot


OPTIONS = [
    dict(),
    dict(smooth=1.0, eps=1e-7),
    dict(log_loss=True),
    dict(classes=[0, 2]),
    dict(class_weights=[0.5, 1.0, 3.0, 1.0]),
    dict(per_image=True),
    dict(per_image=True, class_weights=[0.5, 1.0, 3.0, 1.0], smooth=0.5),
]
FAMILY = {"dice": (0.5, 0.5), "jaccard": (1.0, 1.0), "tversky": (0.7, 0.2)}


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("ignore", [None, 255])
def test_region_loss_value_and_gradient(rng, name, options, ignore):
    logits, labels = random_case(rng, shape=(2, 3, 3), ignore=ignore)
    labels[labels == 1] = 3  # class 1 absent: masked to 0, kept in the mean
    alpha, beta = FAMILY[name]
    extra = dict(alpha=alpha, beta=beta, gamma=0.8) if name == "tversky" else {}
    ours = lambda x: getattr(losses, f"{name}_loss")(x, labels, ignore_index=ignore, **options, **extra)

    def expected(x):
        probs, onehot = masked_inputs(x, labels, ignore)
        return ref.smp_tversky(probs, onehot, alpha, beta, gamma=extra.get("gamma", 1.0), **options)

    value = ours(logits)
    if options.get("per_image"):
        assert value.shape == ()
        np.testing.assert_allclose(
            getattr(losses, f"{name}_loss")(logits, labels, ignore_index=ignore, reduction="none", **options, **extra),
            expected(logits),
            rtol=1e-5,
            atol=1e-6,
        )
    np.testing.assert_allclose(value, np.mean(expected(logits)), rtol=1e-5, atol=1e-6)
    check_grad(ours, lambda x: np.mean(expected(x)), logits)


def test_soft_targets_use_the_l1_overlap(rng):
    logits, _ = random_case(rng)
    targets = rng.dirichlet(np.ones(4), logits.shape[:-1]).astype(np.float32)
    probs = ref.softmax(logits.astype(np.float64))
    np.testing.assert_allclose(losses.dice_loss(logits, targets), ref.smp_tversky(probs, targets, 0.5, 0.5), rtol=1e-5)
    # A soft target equal to the prediction scores a perfect Dice (the point of the L1 form).
    assert float(losses.dice_loss(logits, probs.astype(np.float32))) == pytest.approx(0.0, abs=1e-6)


def test_binary_and_multilabel_modes(rng):
    x = (3 * rng.standard_normal((2, 4, 5, 1))).astype(np.float32)
    y = rng.integers(0, 2, (2, 4, 5))
    expected = ref.smp_tversky(ref.sigmoid(x.astype(np.float64)), y[..., None].astype(np.float64), 0.5, 0.5)
    np.testing.assert_allclose(losses.dice_loss(x, y, mode="binary"), expected, rtol=1e-5)
    x3 = np.concatenate([x, -x, 2 * x], axis=-1)
    y3 = np.stack([y, 1 - y, y], axis=-1)
    expected3 = ref.smp_tversky(ref.sigmoid(x3.astype(np.float64)), y3.astype(np.float64), 1.0, 1.0)
    np.testing.assert_allclose(losses.jaccard_loss(x3, y3, mode="multilabel"), expected3, rtol=1e-5)


def test_from_logits_false_takes_probabilities(rng):
    logits, labels = random_case(rng)
    probs = jax.nn.softmax(jnp.asarray(logits))
    np.testing.assert_allclose(
        losses.dice_loss(probs, labels, from_logits=False), losses.dice_loss(logits, labels), rtol=1e-6
    )


def test_squared_dice_formula(rng):
    logits, labels = random_case(rng)
    probs, onehot = masked_inputs(logits, labels)
    axes = (0, 1, 2)
    per_class = 1 - 2 * (probs * onehot).sum(axes) / ((probs**2).sum(axes) + onehot.sum(axes))
    np.testing.assert_allclose(losses.dice_loss(logits, labels, squared=True), per_class.mean(), rtol=1e-5)


def test_tversky_equals_dice_and_jaccard_at_their_weights(rng):
    logits, labels = random_case(rng)
    np.testing.assert_allclose(losses.tversky_loss(logits, labels), losses.dice_loss(logits, labels), rtol=1e-6)
    np.testing.assert_allclose(
        losses.tversky_loss(logits, labels, alpha=1.0, beta=1.0), losses.jaccard_loss(logits, labels), rtol=1e-6
    )


def test_region_errors(rng):
    logits, labels = random_case(rng)
    with pytest.raises(ValueError, match="mode must be one of"):
        losses.dice_loss(logits, labels, mode="softmax")
    with pytest.raises(ValueError, match="class_weights must have shape"):
        losses.dice_loss(logits, labels, class_weights=[1.0])
    with pytest.raises(ValueError, match="per_image needs inputs"):
        losses.dice_loss(logits[0, 0], labels[0, 0], per_image=True)
    with pytest.raises(ValueError, match="binary mode has one channel"):
        losses.dice_loss(logits[..., :1], labels, mode="binary", classes=[0])


@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("include_background", [True, False])
def test_generalized_dice(rng, weight_type, per_image, include_background):
    logits, labels = random_case(rng, shape=(2, 3, 3))
    labels[0][labels[0] == 2] = 1  # class 2 absent from image 0
    ours = lambda x: losses.generalized_dice_loss(
        x, labels, weight_type=weight_type, per_image=per_image, include_background=include_background
    )

    def expected(x):
        probs, onehot = masked_inputs(x, labels)
        return np.mean(
            ref.monai_gdl(probs, onehot, weight_type, batch=not per_image, include_background=include_background)
        )

    np.testing.assert_allclose(ours(logits), expected(logits.astype(np.float64)), rtol=1e-5)
    check_grad(ours, expected, logits)


def test_generalized_dice_ignore_drops_pixels(rng):
    logits, labels = random_case(rng, ignore=255)
    probs, onehot = masked_inputs(logits, labels, 255)
    np.testing.assert_allclose(
        losses.generalized_dice_loss(logits, labels, ignore_index=255, reduction="none"),
        ref.monai_gdl(probs, onehot),
        rtol=1e-5,
    )
