"""COCO box detection metrics: pycocotools' `COCOeval` over ground truth and detections
gathered batch by batch on the host.

Batches are the project's padded NumPy arrays (boxes `xyxy` in pixels, a mask for the real
rows); they become in-memory COCO objects (boxes `xywh`, `area = w * h`, `iscrowd = 0`), so
the numbers are pycocotools' own for the same boxes. Deliberate differences from calling
`COCOeval.summarize()`:
- undefined values (no ground truth box of any class in an area range) are NaN, not -1;
- the numbers are read from `COCOeval.eval["precision"]` at `max_detections`, the average
  `summarize()` takes, because `summarize()` hard-codes 100 detections for its mAP line;
- an evaluation without a single detection gives mAP 0 (pycocotools' `loadRes` fails on an
  empty result list).
Areas (small < 32**2 <= medium < 96**2 <= large) are measured in the pixels the boxes are
given in, e.g. after `fit_detection` resized the image, not in the original image.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

_AREAS = {"": "all", "_small": "small", "_medium": "medium", "_large": "large"}


class CocoEvaluator:
    """COCO bbox mAP accumulated over batches.

    Args:
      class_names: names of the class ids `0..C-1`; per-class AP is reported as `ap/<name>`.
      max_detections: detections kept per image (the highest scores), COCO's 100; also
        pycocotools' per-image limit `maxDets`.

    Usage: `add(...)` once per batch, then `result()`. Class id `c` is COCO category `c + 1`
    and images without ids are numbered in the order they come, from 1.
    """

    def __init__(self, class_names: Sequence[str], *, max_detections: int = 100):
        self.class_names = tuple(class_names)
        if not self.class_names:
            raise ValueError("CocoEvaluator needs at least one class name")
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1; got {max_detections}")
        self.max_detections = max_detections
        self._images: list[dict] = []
        self._ground_truth: list[dict] = []
        self._detections: list[np.ndarray] = []  # rows [image_id, x, y, w, h, score, category_id]
        self._image_ids: set[int] = set()

    def add(
        self,
        gt_boxes,
        gt_classes,
        gt_mask,
        det_boxes,
        det_scores,
        det_classes,
        det_mask,
        *,
        image_valid=None,
        image_ids=None,
    ) -> None:
        """Add one batch of B images.

        Args:
          gt_boxes: `[B, M, 4]` ground truth `xyxy`; `gt_classes` `[B, M]` ids in `[0, C)`;
            `gt_mask` `[B, M]` bool, True for real boxes.
          det_boxes: `[B, K, 4]` detections `xyxy`; `det_scores` `[B, K]`; `det_classes`
            `[B, K]`; `det_mask` `[B, K]` bool, True for real detections.
          image_valid: optional `[B]` bool; False rows are padding images and are skipped.
          image_ids: optional `[B]` unique int ids (e.g. the dataset's COCO image ids).
        """
        gt_boxes, det_boxes = np.asarray(gt_boxes, np.float64), np.asarray(det_boxes, np.float64)
        gt_classes, det_classes = np.asarray(gt_classes), np.asarray(det_classes)
        gt_mask, det_mask = np.asarray(gt_mask, bool), np.asarray(det_mask, bool)
        det_scores = np.asarray(det_scores, np.float64)
        batch, m, k = gt_boxes.shape[0], gt_boxes.shape[1], det_boxes.shape[1]
        expected = {
            "gt_boxes": (gt_boxes, (batch, m, 4)),
            "gt_classes": (gt_classes, (batch, m)),
            "gt_mask": (gt_mask, (batch, m)),
            "det_boxes": (det_boxes, (batch, k, 4)),
            "det_scores": (det_scores, (batch, k)),
            "det_classes": (det_classes, (batch, k)),
            "det_mask": (det_mask, (batch, k)),
        }
        for name, (array, shape) in expected.items():
            if array.shape != shape:
                raise ValueError(
                    f"{name} must have shape {list(shape)} (B, M from gt_boxes, K from det_boxes); "
                    f"got {list(array.shape)}"
                )
        valid = np.ones(batch, bool) if image_valid is None else np.asarray(image_valid, bool).reshape(batch)
        if image_ids is None:
            ids = max(self._image_ids, default=0) + 1 + np.arange(batch)
        else:
            ids = np.asarray(image_ids).reshape(batch)
        for b in np.flatnonzero(valid):
            image_id = int(ids[b])
            if image_id in self._image_ids:
                raise ValueError(f"image id {image_id} (batch row {b}) was added before")
            self._image_ids.add(image_id)
            self._images.append({"id": image_id})
            classes = self._checked(gt_classes[b][gt_mask[b]], "gt_classes", int(b))
            for box, category in zip(_xywh(gt_boxes[b][gt_mask[b]]), classes):
                self._ground_truth.append(
                    {
                        "id": len(self._ground_truth) + 1,  # COCOeval takes id 0 for "unmatched"
                        "image_id": image_id,
                        "category_id": int(category) + 1,
                        "bbox": box.tolist(),
                        "area": float(box[2] * box[3]),
                        "iscrowd": 0,
                    }
                )
            scores = det_scores[b][det_mask[b]]
            top = np.argsort(-scores, kind="stable")[: self.max_detections]
            classes = self._checked(det_classes[b][det_mask[b]][top], "det_classes", int(b))
            boxes = _xywh(det_boxes[b][det_mask[b]][top])
            self._detections.append(np.column_stack([np.full(len(top), image_id), boxes, scores[top], classes + 1]))

    def _checked(self, classes, name: str, row: int):
        bad = (classes < 0) | (classes >= len(self.class_names))
        if bad.any():
            raise ValueError(
                f"{name} must be in [0, {len(self.class_names)}) where the mask is True; "
                f"got {classes[bad][:5].tolist()} in batch row {row}"
            )
        return classes.astype(np.int64)

    def coco_eval(self) -> COCOeval:
        """pycocotools' `COCOeval` over everything added, evaluated and accumulated (quietly)."""
        if not self._images:
            raise ValueError("CocoEvaluator: no images were added (every row was padding?)")
        categories = [{"id": c + 1, "name": name} for c, name in enumerate(self.class_names)]
        detections = np.concatenate(self._detections)
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = _coco(self._images, self._ground_truth, categories)
            if len(detections):
                results = ground_truth.loadRes(detections)
            else:
                results = _coco(self._images, [], categories)
            evaluation = COCOeval(ground_truth, results, "bbox")
            evaluation.params.maxDets = sorted({1, 10, self.max_detections})
            evaluation.evaluate()
            evaluation.accumulate()
        return evaluation

    def result(self) -> dict:
        """COCO bbox metrics as floats: `map` (AP averaged over IoU 0.5:0.05:0.95), `map50`,
        `map75`, `map_small`, `map_medium`, `map_large`, and `ap/<class name>` (AP over IoU
        0.5:0.95 of one class). A value is NaN where no ground truth defines it (pycocotools
        says -1): a class never in the ground truth, an empty area range. Classes without
        ground truth are left out of the means, as in pycocotools. Also the counts `images`
        and `gt_boxes` evaluated."""
        evaluation = self.coco_eval()
        params = evaluation.params
        # [T iou thresholds, R recall points, K classes, A areas, M detection limits]
        precision = evaluation.eval["precision"][..., params.maxDets.index(self.max_detections)]
        metrics = {}
        for suffix, area in _AREAS.items():
            metrics[f"map{suffix}"] = _mean_defined(precision[:, :, :, params.areaRngLbl.index(area)])
        everywhere = precision[..., params.areaRngLbl.index("all")]
        for name, iou in (("map50", 0.5), ("map75", 0.75)):
            metrics[name] = _mean_defined(everywhere[np.isclose(params.iouThrs, iou)])
        for c, name in enumerate(self.class_names):
            metrics[f"ap/{name}"] = _mean_defined(everywhere[:, :, c])
        metrics["images"], metrics["gt_boxes"] = len(self._images), len(self._ground_truth)
        return metrics


def coco_map(ground_truth: dict, detections: dict, class_names: Sequence[str], *, max_detections: int = 100) -> dict:
    """`CocoEvaluator.result()` of one batch of N images.

    Args:
      ground_truth: `boxes` `[N, M, 4]`, `classes` `[N, M]`, `box_mask` `[N, M]` (samples
        stacked), and optionally `valid` `[N]` (the padding flag of evaluation batches).
      detections: `boxes` `[N, K, 4]`, `scores` `[N, K]`, `classes` `[N, K]`, `box_mask` `[N, K]`.
    """
    evaluator = CocoEvaluator(class_names, max_detections=max_detections)
    evaluator.add(
        ground_truth["boxes"],
        ground_truth["classes"],
        ground_truth["box_mask"],
        detections["boxes"],
        detections["scores"],
        detections["classes"],
        detections["box_mask"],
        image_valid=ground_truth.get("valid"),
    )
    return evaluator.result()


def _xywh(boxes):
    """`[n, 4]` `xyxy` -> COCO `[n, 4]` `xywh`."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco(images, annotations, categories) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    coco.createIndex()
    return coco


def _mean_defined(precision) -> float:
    """The mean of the entries pycocotools defines (> -1), as `COCOeval.summarize` takes it; NaN if none."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else math.nan
