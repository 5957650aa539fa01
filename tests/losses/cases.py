"""Every public loss as a scalar function of (logits `[B, H, W, C]`, int labels `[B, H, W]`).

Shared by the transformation, numerics and property tests so each covers all losses. Labels
may contain IGNORE; the sigmoid losses read class 1 as the positive class and use the
ignore value where their reference supports it.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxseg import losses

IGNORE = 255


def _binary(labels):
    return jnp.where(labels == IGNORE, IGNORE, (labels == 1).astype(jnp.int32))


def _one_hot_targets(logits, labels):
    return (labels[..., None] == jnp.arange(logits.shape[-1])).astype(jnp.float32)


def _distance_maps(logits, labels):
    # A smooth stand-in with both signs; real maps come from signed_distance_maps.
    return _one_hot_targets(logits, labels) * -2.0 + 1.0


LOSSES = {
    "cross_entropy": lambda x, y: losses.cross_entropy(x, y, ignore_index=IGNORE, label_smoothing=0.1),
    "cross_entropy_weighted": lambda x, y: losses.cross_entropy(
        x, y, ignore_index=IGNORE, class_weights=jnp.linspace(0.5, 2.0, x.shape[-1])
    ),
    "binary_cross_entropy": lambda x, y: losses.binary_cross_entropy(
        x[..., :1], _binary(y)[..., None].astype(jnp.float32), ignore_index=IGNORE, pos_weight=2.0
    ),
    "focal_multiclass": lambda x, y: losses.focal_loss(x, y, ignore_index=IGNORE, gamma=2.0),
    "focal_multiclass_gamma_half": lambda x, y: losses.focal_loss(x, y, ignore_index=IGNORE, gamma=0.5),
    "focal_binary": lambda x, y: losses.focal_loss(
        x[..., :1], _binary(y), mode="binary", ignore_index=IGNORE, gamma=0.5, alpha=0.25
    ),
    "sigmoid_focal": lambda x, y: losses.sigmoid_focal_loss(x, _one_hot_targets(x, y), gamma=0.5, reduction="mean"),
    "dice": lambda x, y: losses.dice_loss(x, y, ignore_index=IGNORE),
    "dice_per_image_log": lambda x, y: losses.dice_loss(x, y, ignore_index=IGNORE, per_image=True, log_loss=True),
    "dice_binary": lambda x, y: losses.dice_loss(x[..., :1], _binary(y), mode="binary", ignore_index=IGNORE),
    "jaccard": lambda x, y: losses.jaccard_loss(x, y, ignore_index=IGNORE, smooth=1.0),
    "tversky": lambda x, y: losses.tversky_loss(x, y, ignore_index=IGNORE, alpha=0.7, beta=0.3, gamma=0.75),
    "generalized_dice": lambda x, y: losses.generalized_dice_loss(x, y, ignore_index=IGNORE),
    "lovasz": lambda x, y: losses.lovasz_loss(x, y, ignore_index=IGNORE),
    "lovasz_binary": lambda x, y: losses.lovasz_loss(x[..., :1], _binary(y), mode="binary", ignore_index=IGNORE),
    "gradient": lambda x, y: losses.gradient_loss(x, y, ignore_index=IGNORE),
    "gradient_sobel_l1": lambda x, y: losses.gradient_loss(x, y, ignore_index=IGNORE, operator="sobel", p=1),
    "boundary": lambda x, y: losses.boundary_loss(x, _distance_maps(x, y)),
    "segmentation": lambda x, y: losses.segmentation_loss(
        x,
        y,
        {"ce": 1.0, "dice": 1.0, "focal": 0.5, "lovasz": 0.5, "gradient": 0.1, "boundary": 0.01},
        ignore_index=IGNORE,
        distance_maps=_distance_maps(x, y),
    )[0],
}

# Losses that are >= 0 for any input and exactly 0 at a perfect, confident prediction.
ZERO_AT_PERFECT = [
    "cross_entropy_weighted",
    "focal_multiclass",
    "focal_multiclass_gamma_half",
    "dice",
    "jaccard",
    "tversky",
    "generalized_dice",
    "lovasz",
    "gradient",
    "gradient_sobel_l1",
]
# The boundary loss is signed by design (distance maps are negative inside the objects), and
# so is the composed loss that includes it.
NONNEGATIVE = [name for name in LOSSES if name not in ("boundary", "segmentation")]
