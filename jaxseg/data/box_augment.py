"""Host-side augmentation of one detection example with an explicit NumPy generator.

An example is `image` uint8 `[H, W, 3]`, `boxes` float32 `[max_boxes, 4]` (`xyxy`, pixels,
continuous coordinates: a box over columns 3..7 has x0=3, x1=8), `classes` int32
`[max_boxes]` and `box_mask` bool `[max_boxes]`. Every transform returns the same layout
with the same `max_boxes`: real boxes first, then padding (boxes 0, class -1, mask False).
Geometric transforms move the boxes with the pixels; the image is resized with
`jaxseg.data.augment.resize` and jittered with `jaxseg.data.augment.photometric_jitter`.
"""

from __future__ import annotations

import numpy as np

from jaxseg.data.augment import photometric_jitter, resize


def resize_example(example, size):
    """Resize the image to `size` = (height, width) (bilinear) and scale the boxes with it."""
    image = example["image"]
    boxes, classes = _real(example)
    scale = np.array([size[1] / image.shape[1], size[0] / image.shape[0]] * 2)
    resized, _ = resize(image, None, size)
    return _packed(resized, boxes * scale, classes, len(example["boxes"]))


def random_scale_crop(example, rng, *, size, scale_range=(0.75, 1.25), min_visible=0.5):
    """Rescale by a random factor, then take a random `size` crop (image 0 where the scaled
    image is smaller). Boxes are scaled, shifted and clipped to the crop; a box keeping less
    than `min_visible` of its scaled area, or no width or height, is dropped.

    Draws from `rng` in the order of `jaxseg.data.augment.random_scale_crop`, so one seed
    crops an image the same way in both.
    """
    height, width = size
    image = example["image"]
    scale = rng.uniform(*scale_range)
    scaled_size = (max(1, int(round(image.shape[0] * scale))), max(1, int(round(image.shape[1] * scale))))
    scaled = resize_example(example, scaled_size) if scaled_size != image.shape[:2] else example
    image = scaled["image"]
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
    top = int(rng.integers(0, image.shape[0] - height + 1))
    left = int(rng.integers(0, image.shape[1] - width + 1))
    boxes, classes = _real(scaled)
    shifted = boxes - np.array([left, top, left, top])
    clipped = np.clip(shifted, 0, np.array([width, height, width, height]))
    area, kept_area = _area(shifted), _area(clipped)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]) & (kept_area >= min_visible * area)
    crop = image[top : top + height, left : left + width]
    return _packed(crop, clipped[keep], classes[keep], len(example["boxes"]))


def horizontal_flip(example):
    """Mirror the image left-right; a box's x0, x1 become width - x1, width - x0."""
    image = example["image"]
    boxes, classes = _real(example)
    width = image.shape[1]
    flipped = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=-1)
    return _packed(image[:, ::-1], flipped, classes, len(example["boxes"]))


def augment_detection(example, rng, *, size, scale_range=(0.75, 1.25), flip=True, jitter=0.2, min_visible=0.5):
    """The training augmentation: random scale + crop to `size`, horizontal flip with p=0.5,
    colour jitter (`jitter` for brightness, contrast and saturation; 0 turns it off)."""
    example = random_scale_crop(example, rng, size=size, scale_range=scale_range, min_visible=min_visible)
    if flip and rng.random() < 0.5:
        example = horizontal_flip(example)
    if jitter > 0:
        image = photometric_jitter(example["image"], rng, brightness=jitter, contrast=jitter, saturation=jitter)
        example = dict(example, image=image)
    return example


def fit_detection(example, *, size):
    """Evaluation preprocessing: resize to `size` = (height, width) if needed (no randomness);
    boxes are scaled with the image."""
    if example["image"].shape[:2] != tuple(size):
        return resize_example(example, size)
    boxes, classes = _real(example)
    return _packed(example["image"], boxes, classes, len(example["boxes"]))


def _real(example):
    """The real rows: boxes `[n, 4]` (float64 until packed), classes int32 `[n]`."""
    mask = np.asarray(example["box_mask"], bool)
    return np.asarray(example["boxes"], np.float64)[mask], np.asarray(example["classes"], np.int32)[mask]


def _packed(image, boxes, classes, max_boxes: int):
    """An example with `boxes`/`classes` first and padding after, up to `max_boxes` rows."""
    count = len(boxes)
    padded_boxes = np.zeros((max_boxes, 4), np.float32)
    padded_boxes[:count] = boxes
    padded_classes = np.full(max_boxes, -1, np.int32)
    padded_classes[:count] = classes
    return {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "boxes": padded_boxes,
        "classes": padded_classes,
        "box_mask": np.arange(max_boxes) < count,
    }


def _area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
