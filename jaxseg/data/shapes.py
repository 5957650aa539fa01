"""Deterministic synthetic datasets of textured filled shapes: segmentation and detection.

Segmentation samples hold overlapping shapes and a label map; detection samples hold shapes
that do not touch, each with its box and class. Every sample is a pure function of (seed, split, index), generated on the fly, so nothing is
downloaded and any sample can be regenerated anywhere (grain random access, resumption).
Classes are shape kinds, not colours: colours and textures are random per shape, so a model
has to learn geometry (a ring differs from a disk only by its hole).
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

CLASSES = ("background", "disk", "rectangle", "triangle", "ring")
SPLITS = {"train": 0, "val": 1, "test": 2}


def _texture(rng, height, width, amplitude):
    """A random low-frequency stripe pattern in [-amplitude, amplitude]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    frequency = rng.uniform(0.05, 0.4)
    phase = rng.uniform(0, 2 * np.pi)
    return amplitude * np.sin(frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)


def _shape_mask(kind: str, rng, yy, xx, size, *, inside: bool = False):
    """Boolean mask of one shape centred uniformly in the image (`inside`: far enough from the
    border that the whole shape is visible; the draws from `rng` are the same either way)."""
    height, width = yy.shape
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    radius = rng.uniform(0.08, 0.25) * size
    if inside:
        cy = radius + cy / height * (height - 2 * radius)
        cx = radius + cx / width * (width - 2 * radius)
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    if kind == "disk":
        return dy**2 + dx**2 < radius**2
    if kind == "ring":
        distance = np.sqrt(dy**2 + dx**2)
        return (distance < radius) & (distance > rng.uniform(0.45, 0.65) * radius)
    if kind == "rectangle":
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        return (np.abs(u) < radius * rng.uniform(0.6, 1.0)) & (np.abs(v) < radius * rng.uniform(0.5, 1.0))
    corners = [
        (cx + radius * np.cos(angle + k * 2 * np.pi / 3), cy + radius * np.sin(angle + k * 2 * np.pi / 3))
        for k in range(3)
    ]
    triangle = np.ones_like(yy, dtype=bool)  # on the inner side of all three edges
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        triangle &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) > 0
    return triangle


def make_sample(seed: int, split: str, index: int, *, size: int = 64, max_shapes: int = 4, depth: bool = False):
    """One sample: `image` uint8 `[size, size, 3]` (or 4 with a depth channel), `label` uint8 ids.

    The optional depth channel encodes each pixel's layer (background far, later shapes
    nearer) plus noise: a second modality that makes occlusion boundaries easier.
    """
    rng = np.random.default_rng((seed, SPLITS[split], index))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.uniform(0.0, 1.0, 3).astype(np.float32)[None, None, :] + _texture(rng, size, size, 0.15)[..., None]
    label = np.zeros((size, size), np.uint8)
    layer = np.zeros((size, size), np.float32)
    for layer_index in range(1, rng.integers(1, max_shapes + 1) + 1):
        kind = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(CLASSES[kind], rng, yy, xx, size)
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        fill = colour[None, None, :] + _texture(rng, size, size, 0.1)[..., None]
        image = np.where(mask[..., None], fill, image)
        label[mask] = kind
        layer[mask] = layer_index / max_shapes
    image = image + rng.normal(0.0, 0.05, image.shape).astype(np.float32)
    channels = [image]
    if depth:
        channels.append((1.0 - 0.8 * layer + rng.normal(0.0, 0.03, layer.shape))[..., None])
    image = np.concatenate(channels, axis=-1)
    return {"image": (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8), "label": label}


class ShapesSource:
    """A grain random-access source of `num_samples` generated samples of one split; the
    keyword options are those of `make_sample`."""

    make: Callable[..., dict] = staticmethod(make_sample)
    class_names: tuple[str, ...] = CLASSES

    def __init__(self, num_samples: int, *, split: str = "train", seed: int = 0, **options):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}; got {split!r}")
        # The generator's own signature checks the options (a misspelt one fails here) and
        # fills in the defaults, so `options` says everything a sample depends on.
        bound = inspect.signature(self.make).bind(seed, split, 0, **options)
        bound.apply_defaults()
        self.options = {name: bound.arguments[name] for name in list(bound.arguments)[3:]}
        self.num_samples, self.split, self.seed = num_samples, split, seed
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range [0, {self.num_samples})")
        return self.make(self.seed, self.split, int(index), **self.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_samples}, split={self.split!r}, seed={self.seed}, {self.options})"


DETECTION_CLASSES = CLASSES[1:]  # detection has no background class: ids 0..3
DETECTION_STREAM = 7  # keeps the detection samples' random stream apart from segmentation's


def make_detection_sample(
    seed: int,
    split: str,
    index: int,
    *,
    size: int = 64,
    max_shapes: int = 4,
    max_boxes: int | None = None,
    attempts: int = 20,
):
    """One detection sample: `image` uint8 `[size, size, 3]`, `boxes` float32 `[max_boxes, 4]`
    (xyxy, the tight box of each shape's pixels), `classes` int32 (-1 for padding rows) and
    `box_mask`. Between 1 and `max_shapes` shapes lie wholly inside the image and do not touch
    one another (a placement that would overlap a previous shape, grown by one pixel, is
    redrawn, up to `attempts` times), so every visible shape has exactly one box."""
    max_boxes = max_shapes if max_boxes is None else max_boxes
    if max_boxes < max_shapes:
        raise ValueError(f"max_boxes={max_boxes} must be at least max_shapes={max_shapes}")
    rng = np.random.default_rng((seed, SPLITS[split], index, DETECTION_STREAM))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.uniform(0.0, 1.0, 3).astype(np.float32)[None, None, :] + _texture(rng, size, size, 0.15)[..., None]
    occupied = np.zeros((size, size), bool)
    boxes = np.zeros((max_boxes, 4), np.float32)
    classes = np.full((max_boxes,), -1, np.int32)
    count = 0
    for _ in range(rng.integers(1, max_shapes + 1)):
        kind = int(rng.integers(len(DETECTION_CLASSES)))
        for _ in range(attempts):
            mask = _shape_mask(DETECTION_CLASSES[kind], rng, yy, xx, size, inside=True)
            if mask.any() and not (_grow(mask) & occupied).any():
                break
        else:
            continue
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        fill = colour[None, None, :] + _texture(rng, size, size, 0.1)[..., None]
        image = np.where(mask[..., None], fill, image)
        occupied |= mask
        rows, cols = np.nonzero(mask)
        boxes[count] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        classes[count] = kind
        count += 1
    image = image + rng.normal(0.0, 0.05, image.shape).astype(np.float32)
    return {
        "image": (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8),
        "boxes": boxes,
        "classes": classes,
        "box_mask": classes >= 0,
    }


def _grow(mask):
    """`mask` dilated by one pixel (4-neighbourhood)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


class ShapeBoxesSource(ShapesSource):
    """A grain random-access source of `num_samples` generated detection samples of one split;
    the keyword options are those of `make_detection_sample`."""

    make = staticmethod(make_detection_sample)
    class_names = DETECTION_CLASSES
