"""Real detection data in COCO format: an images folder and an instances JSON.

The layout of COCO itself (`train2017/` + `annotations/instances_train2017.json`) and of the
many datasets exported to it. Samples are the project's detection format: `image` uint8
`[H, W, 3]`, `boxes` float32 `[max_boxes, 4]` (`xyxy`, pixels), `classes` int32
`[max_boxes]` (padding -1) and `box_mask` bool `[max_boxes]`, real boxes first. Images keep
their own sizes; the augmentation (`jaxseg.data.box_augment`) brings them to one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseg.data.folder import _open

log = logging.getLogger("jaxseg")


class CocoSource:
    """A grain random-access source over a COCO-format detection dataset.

    Categories become contiguous class ids `0..C-1` in sorted category-id order (COCO's 80
    ids run 1..90 with gaps). Annotations with `iscrowd=1` and boxes of zero width or height
    are dropped; images without boxes stay (all padding). Samples come in the order of the
    JSON's `images` list.

    Args:
      images_dir: folder holding the images' `file_name`s.
      annotations_file: the instances JSON (`images`, `annotations`, `categories`).
      max_boxes: rows of `boxes`; an image with more boxes keeps its first `max_boxes` (in
        the JSON's order) and one warning names the first such image and how many there are.
      class_names: optional names replacing the categories' `name`s (one per category).

    Attributes: `num_classes`, `class_names`, `category_ids` (COCO id of each class id),
    `image_ids` (COCO id of each sample).
    """

    def __init__(self, images_dir, annotations_file, *, max_boxes: int = 100, class_names: Sequence[str] | None = None):
        self.images_dir, self.annotations_file = Path(images_dir), Path(annotations_file)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder {self.images_dir} does not exist")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1; got {max_boxes}")
        self.max_boxes = max_boxes
        dataset = self._load()
        where = self.annotations_file

        self.category_ids = sorted(category["id"] for category in dataset["categories"])
        class_of = {category_id: c for c, category_id in enumerate(self.category_ids)}
        if len(class_of) != len(self.category_ids):
            raise ValueError(f"{where}: category ids repeat: {self.category_ids}")
        names = {category["id"]: category.get("name", str(category["id"])) for category in dataset["categories"]}
        if class_names is not None and len(class_names) != len(self.category_ids):
            raise ValueError(f"{where}: {len(self.category_ids)} categories but {len(class_names)} class_names")
        self.class_names = tuple(class_names) if class_names is not None else tuple(names[i] for i in self.category_ids)
        self.num_classes = len(self.class_names)

        images = dataset["images"]
        self.image_ids = [image["id"] for image in images]
        row_of = {image_id: i for i, image_id in enumerate(self.image_ids)}
        if len(row_of) != len(images):
            raise ValueError(f"{where}: image ids repeat")
        self.items = [(self.images_dir / image["file_name"], image["id"]) for image in images]
        self._sizes = [(image.get("height"), image.get("width")) for image in images]

        boxes: list[list] = [[] for _ in images]
        classes: list[list] = [[] for _ in images]
        annotation_ids: list[list] = [[] for _ in images]
        for annotation in dataset.get("annotations", []):
            name = f"{where}: annotation {annotation.get('id')}"
            if annotation.get("image_id") not in row_of:
                raise ValueError(f"{name} refers to image id {annotation.get('image_id')}, which is not in 'images'")
            if annotation.get("category_id") not in class_of:
                raise ValueError(
                    f"{name} refers to category id {annotation.get('category_id')}, which is not in "
                    f"'categories' {self.category_ids}"
                )
            bbox = annotation.get("bbox")
            if bbox is None or len(bbox) != 4 or min(bbox[2:]) < 0:
                raise ValueError(f"{name}: bbox must be [x, y, width, height] with sizes >= 0; got {bbox}")
            if annotation.get("iscrowd", 0) or bbox[2] == 0 or bbox[3] == 0:
                continue
            row = row_of[annotation["image_id"]]
            x, y, width, height = bbox
            boxes[row].append([x, y, x + width, y + height])
            classes[row].append(class_of[annotation["category_id"]])
            annotation_ids[row].append(annotation.get("id"))

        overflowing = [i for i, b in enumerate(boxes) if len(b) > max_boxes]
        if overflowing:
            first = overflowing[0]
            log.warning(
                "%s: %d images have more than max_boxes=%d boxes (the first: %s with %d); each keeps its first %d",
                where,
                len(overflowing),
                max_boxes,
                self.items[first][0],
                len(boxes[first]),
                max_boxes,
            )
        self._boxes = [np.array(b[:max_boxes], np.float64).reshape(-1, 4) for b in boxes]
        self._classes = [np.array(c[:max_boxes], np.int32) for c in classes]
        self._annotation_ids = [a[:max_boxes] for a in annotation_ids]

    def _load(self) -> dict:
        """The JSON, or an error naming the file and what is wrong with it."""
        try:
            with open(self.annotations_file) as file:
                dataset = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.annotations_file}: not valid JSON ({error})") from error
        missing = [key for key in ("images", "categories") if not isinstance(dataset, dict) or key not in dataset]
        if missing:
            raise ValueError(
                f"{self.annotations_file}: a COCO instances file needs 'images' and 'categories'; missing {missing}"
            )
        for key, fields in (("images", ("id", "file_name")), ("categories", ("id",))):
            for i, record in enumerate(dataset[key]):
                if not isinstance(record, dict) or any(field not in record for field in fields):
                    raise ValueError(f"{self.annotations_file}: {key}[{i}] needs {list(fields)}; got {record}")
        return dataset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, image_id = self.items[index]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found (image id {image_id} in {self.annotations_file})")
        image = np.asarray(_open(path).convert("RGB"))
        height, width = image.shape[:2]
        if self._sizes[index] not in ((None, None), (height, width)):
            raise ValueError(
                f"{path}: image is {height}x{width} but {self.annotations_file} says "
                f"{self._sizes[index][0]}x{self._sizes[index][1]}"
            )
        boxes, classes = self._boxes[index], self._classes[index]
        limit = np.array([width, height, width, height])
        outside = ((boxes < -1) | (boxes > limit + 1)).any(axis=1)
        if outside.any():
            first = int(np.argmax(outside))
            raise ValueError(
                f"{path}: box {boxes[first].tolist()} (xyxy) of annotation "
                f"{self._annotation_ids[index][first]} in {self.annotations_file} lies more than a "
                f"pixel outside the {height}x{width} image"
            )
        boxes = np.clip(boxes, 0, limit)  # within a pixel: clipped to the image
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        count = int(keep.sum())
        padded_boxes = np.zeros((self.max_boxes, 4), np.float32)
        padded_boxes[:count] = boxes[keep]
        padded_classes = np.full(self.max_boxes, -1, np.int32)
        padded_classes[:count] = classes[keep]
        return {
            "image": image,
            "boxes": padded_boxes,
            "classes": padded_classes,
            "box_mask": np.arange(self.max_boxes) < count,
        }

    def __repr__(self) -> str:
        return f"CocoSource({self.annotations_file}, {len(self)} images, {self.num_classes} classes)"
