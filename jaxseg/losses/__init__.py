"""Pure loss functions for dense prediction, sequence and detection models.

Every loss is a pure function of arrays: safe under `jax.jit`, `jax.grad`, `jax.vmap` and
sharding; channels-last; any float input dtype with float32 accumulation. Importing this
package imports JAX only (no Flax, optax, orbax or grain).
"""

from jaxseg.losses.boundary import boundary_loss, gradient_loss
from jaxseg.losses.box import ciou_loss, diou_loss, giou_loss, iou_loss, l1_loss, smooth_l1_loss
from jaxseg.losses.classification import binary_cross_entropy, cross_entropy, focal_loss, sigmoid_focal_loss
from jaxseg.losses.composite import TERMS, SegmentationLoss, segmentation_loss
from jaxseg.losses.detection import fcos_loss
from jaxseg.losses.distance_maps import signed_distance_maps
from jaxseg.losses.lovasz import lovasz_loss
from jaxseg.losses.region import dice_loss, generalized_dice_loss, jaccard_loss, tversky_loss
from jaxseg.losses.token import TokenLoss, linear_cross_entropy, token_cross_entropy

__all__ = [
    "TERMS",
    "SegmentationLoss",
    "TokenLoss",
    "binary_cross_entropy",
    "boundary_loss",
    "ciou_loss",
    "cross_entropy",
    "dice_loss",
    "fcos_loss",
    "diou_loss",
    "focal_loss",
    "generalized_dice_loss",
    "giou_loss",
    "gradient_loss",
    "iou_loss",
    "jaccard_loss",
    "l1_loss",
    "linear_cross_entropy",
    "lovasz_loss",
    "segmentation_loss",
    "sigmoid_focal_loss",
    "signed_distance_maps",
    "smooth_l1_loss",
    "token_cross_entropy",
    "tversky_loss",
]
