"""Pure per-batch statistics (on device) and host-side finalisers."""

from jaxseg.metrics.segmentation import confusion_matrix, scores

__all__ = ["confusion_matrix", "scores"]
