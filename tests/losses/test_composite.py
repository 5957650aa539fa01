"""segmentation_loss / SegmentationLoss: each term equals its standalone loss; K variants vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from tests.losses.test_classification import random_case


@pytest.fixture
def case():
    rng = np.random.default_rng(5)
    logits, labels = random_case(rng, shape=(2, 6, 7), ignore=255)
    distances = rng.standard_normal(logits.shape).astype(np.float32)
    return logits, labels, distances


def standalone_terms(logits, labels, distances, *, class_weights, smoothing, gamma, alpha, beta, per_image):
    common = dict(ignore_index=255)
    region = dict(common, per_image=per_image)
    return {
        "ce": losses.cross_entropy(logits, labels, class_weights=class_weights, label_smoothing=smoothing, **common),
        "focal": losses.focal_loss(logits, labels, gamma=gamma, class_weights=class_weights, **common),
        "dice": losses.dice_loss(logits, labels, **region),
        "jaccard": losses.jaccard_loss(logits, labels, **region),
        "tversky": losses.tversky_loss(logits, labels, alpha=alpha, beta=beta, **region),
        "lovasz": losses.lovasz_loss(logits, labels, **region),
        "gradient": losses.gradient_loss(logits, labels, operator="sobel", **common),
        "boundary": losses.boundary_loss(logits, distances, classes=(1, 2)),
    }


@pytest.mark.parametrize("per_image", [False, True])
def test_terms_equal_standalone_losses(case, per_image):
    logits, labels, distances = case
    options = dict(class_weights=np.array([0.5, 1, 2, 1], np.float32), smoothing=0.1, gamma=1.5, alpha=0.7, beta=0.3)
    weights = {name: float(i + 1) for i, name in enumerate(losses.TERMS)}
    total, terms = losses.segmentation_loss(
        logits,
        labels,
        weights,
        class_weights=options["class_weights"],
        label_smoothing=options["smoothing"],
        focal_gamma=options["gamma"],
        tversky_alpha=options["alpha"],
        tversky_beta=options["beta"],
        ignore_index=255,
        per_image=per_image,
        gradient_operator="sobel",
        distance_maps=distances,
        boundary_classes=(1, 2),
    )
    expected = standalone_terms(logits, labels, distances, per_image=per_image, **options)
    assert set(terms) == set(losses.TERMS)
    for name in losses.TERMS:
        np.testing.assert_allclose(terms[name], expected[name], rtol=2e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(total, sum(weights[n] * expected[n] for n in losses.TERMS), rtol=1e-6)


def test_only_requested_terms_are_computed(case):
    logits, labels, _ = case
    total, terms = losses.segmentation_loss(logits, labels, {"ce": 1.0, "dice": 0.5}, ignore_index=255)
    assert set(terms) == {"ce", "dice"}
    np.testing.assert_allclose(total, terms["ce"] + 0.5 * terms["dice"], rtol=1e-6)


def test_vmap_over_stacked_losses_equals_each_loss(case):
    logits, labels, _ = case

    def variant(weights, **options):
        # Stacked variants share one structure: every term present, class weights always set.
        options.setdefault("class_weights", jnp.ones(4))
        return losses.SegmentationLoss({"ce": 0.0, "dice": 0.0, "focal": 0.0, **weights}, ignore_index=255, **options)

    variants = [
        variant({"ce": 1.0}),
        variant({"ce": 1.0, "dice": 1.0}, label_smoothing=0.1),
        variant({"focal": 1.0}, focal_gamma=0.5),
        variant({"ce": 1.0}, class_weights=jnp.array([0.2, 1, 3, 1])),
    ]
    stacked = jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(l, jnp.float32) for l in leaves]), *variants)
    totals, terms = jax.jit(jax.vmap(lambda loss: loss(logits, labels)))(stacked)
    for k, variant in enumerate(variants):
        total, expected = variant(logits, labels)
        np.testing.assert_allclose(totals[k], total, rtol=1e-6)
        for name in expected:
            np.testing.assert_allclose(terms[name][k], expected[name], rtol=1e-6)


def test_gradient_through_vmapped_weights(case):
    logits, labels, _ = case
    weights = {"ce": jnp.array([1.0, 0.0]), "dice": jnp.array([0.0, 1.0])}
    grads = jax.vmap(lambda w: jax.grad(lambda x: losses.segmentation_loss(x, labels, w, ignore_index=255)[0])(logits))(
        weights
    )
    np.testing.assert_allclose(
        grads[0], jax.grad(lambda x: losses.cross_entropy(x, labels, ignore_index=255))(logits), rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(
        grads[1], jax.grad(lambda x: losses.dice_loss(x, labels, ignore_index=255))(logits), rtol=1e-5, atol=1e-8
    )


def test_errors_name_the_term(case):
    logits, labels, _ = case
    with pytest.raises(ValueError, match=r"unknown loss terms \['dcie'\]"):
        losses.segmentation_loss(logits, labels, {"dcie": 1.0})
    with pytest.raises(ValueError, match="needs distance_maps"):
        losses.segmentation_loss(logits, labels, {"boundary": 1.0})
