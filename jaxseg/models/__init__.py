"""Flax NNX models, one family per file."""

from jaxseg.models.fcn import FCN
from jaxseg.models.unet import UNet

__all__ = ["FCN", "UNet"]
