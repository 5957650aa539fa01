"""Data sources (synthetic shapes, image folders) and grain pipelines."""

from jaxseg.data.folder import FolderSource
from jaxseg.data.pipeline import eval_batches, train_dataset
from jaxseg.data.shapes import ShapesSource

__all__ = ["FolderSource", "ShapesSource", "eval_batches", "train_dataset"]
