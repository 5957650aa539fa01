"""Data sources (synthetic shapes and shape boxes, image folders, COCO files, text) and grain pipelines."""

from jaxseg.data.coco import CocoSource
from jaxseg.data.folder import FolderSource
from jaxseg.data.pipeline import eval_batches, train_dataset
from jaxseg.data.shapes import ShapeBoxesSource, ShapesSource

__all__ = ["CocoSource", "FolderSource", "ShapeBoxesSource", "ShapesSource", "eval_batches", "train_dataset"]
