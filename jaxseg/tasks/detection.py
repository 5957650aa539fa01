"""Object detection: binds the FCOS detector, its loss, COCO evaluation and box data.

Batches hold `image` uint8 `[B, H, W, 3]`, `boxes` float32 `[B, M, 4]` (xyxy pixels),
`classes` int32 `[B, M]` (-1 in padding slots) and `box_mask` bool `[B, M]`: a fixed number
`M = config.data.max_boxes` of box slots keeps every shape static. Targets are assigned
inside the compiled step (`jaxseg.ops.fcos`); evaluation decodes detections on the device
and scores them with pycocotools on the host (mAP@[.5:.95], mAP@.5, ...).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg.data.box_augment import augment_detection, fit_detection
from jaxseg.data.coco import CocoSource
from jaxseg.data.pipeline import check_image, eval_batches, process_share, train_dataset
from jaxseg.data.shapes import ShapeBoxesSource
from jaxseg.losses.detection import fcos_loss
from jaxseg.models.detector import FCOSDetector
from jaxseg.ops import fcos
from jaxseg.tasks import base, checked_sources, model_options
from jaxseg.tasks.segmentation import normalize

MODELS = {"fcos": FCOSDetector}
DATASETS = ("shapes", "coco")
PADDING = {"classes": -1}  # the padding value of each batch key that is not 0


def check_example(example, where: str, *, channels: int | None = None, max_boxes: int | None = None) -> dict:
    """A detection sample as the pipelines expect it, or an error naming `where` and the
    problem: `image` uint8 `[H, W, C]`, `boxes` float `[M, 4]` with x0 <= x1 and y0 <= y1,
    `classes` integer `[M]`, `box_mask` bool `[M]`."""
    missing = {"image", "boxes", "classes", "box_mask"} - set(example)
    if missing:
        raise ValueError(
            f"{where}: a detection sample needs image, boxes, classes and box_mask; missing {sorted(missing)}"
        )
    check_image(example["image"], where, channels=channels)
    boxes, classes, box_mask = (np.asarray(example[key]) for key in ("boxes", "classes", "box_mask"))
    slots = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.ndim != 2 or boxes.shape[1] != 4 or classes.shape != (slots,) or box_mask.shape != (slots,):
        raise ValueError(
            f"{where}: boxes must be [M, 4] with classes and box_mask [M]; got boxes "
            f"{list(boxes.shape)}, classes {list(classes.shape)}, box_mask {list(box_mask.shape)}"
        )
    if max_boxes is not None and slots != max_boxes:
        raise ValueError(f"{where}: {slots} box slots; config.data.max_boxes is {max_boxes}")
    real = boxes[box_mask.astype(bool)]
    if not np.all(np.isfinite(real)) or np.any(real[:, 2] < real[:, 0]) or np.any(real[:, 3] < real[:, 1]):
        raise ValueError(f"{where}: boxes must be finite xyxy with x0 <= x1 and y0 <= y1")
    return example


def make_sources(config) -> tuple[Any, Any]:
    """(train source, validation source) from `config.data`."""
    data = config.data
    if data.name == "shapes":
        options = dict(seed=data.seed, size=data.source_size, max_shapes=data.max_shapes, max_boxes=data.max_boxes)
        return (
            ShapeBoxesSource(data.train_samples, split="train", **options),
            ShapeBoxesSource(data.val_samples, split="val", **options),
        )
    if data.name == "coco":
        options = dict(max_boxes=data.max_boxes, class_names=tuple(data.class_names) or None)
        return (
            CocoSource(data.train_images, data.train_annotations, **options),
            CocoSource(data.val_images, data.val_annotations, **options),
        )
    raise ValueError(f"config.data.name must be one of {DATASETS}; got {data.name!r}")


class Data(NamedTuple):
    """The training iterator (checkpointable), the padded validation batches, the class names
    and, with `config.data.skip_bad_samples`, a function counting bad samples skipped."""

    train: Any
    val: Any
    class_names: tuple
    skipped_samples: Any = None


def make_data(config, workdir) -> Data:
    """Sources and grain pipelines (box-aware augmentation) for this process."""
    del workdir  # nothing cached
    check = functools.partial(check_example, max_boxes=config.data.max_boxes)
    train_source, val_source, skipped_samples = checked_sources(config, make_sources(config), check=check)
    if not config.data.class_names:
        # The data names the classes (COCO categories): the task's metrics and the config saved
        # with each checkpoint (evaluate, predict) take the names from here.
        config.data.class_names = tuple(train_source.class_names)
    size = tuple(config.data.image_size)
    augment = functools.partial(
        augment_detection,
        size=size,
        scale_range=tuple(config.data.scale_range),
        flip=config.data.flip,
        jitter=config.data.jitter,
        min_visible=config.data.min_visible,
    )
    shared = dict(image_size=size, process_index=jax.process_index(), process_count=jax.process_count())
    train = iter(
        train_dataset(
            train_source,
            batch_size=process_share(config.train, "batch_size"),
            seed=config.seed,
            num_threads=config.data.num_threads,
            transform=augment,
            **shared,
        )
    )
    val = eval_batches(
        val_source,
        batch_size=process_share(config.train, "eval_batch_size"),
        transform=functools.partial(fit_detection, size=size),
        fill=PADDING,
        **shared,
    )
    return Data(train, val, tuple(train_source.class_names), skipped_samples)


def model_factory(config):
    """`make_model(rngs=...)` for `config.model` (name and keyword options)."""
    model, options = model_options(config, MODELS)
    return functools.partial(model, config.num_classes, in_channels=len(config.data.mean), **options)


def hyperparameters(config, data: Data | None = None) -> dict:
    """The train step's `hp`: the loss term weights and the L1 penalty, as arrays."""
    del data
    weights = config.loss.weights
    return {
        "loss_weights": jnp.asarray([weights.classes, weights.box, weights.centerness], jnp.float32),
        "l1": jnp.float32(config.optim.l1),
    }


class Task(base.Task):
    """Object detection for the generic train and eval steps and the loop."""

    key_metric = "map"  # COCO mAP@[.5:.95] picks the best checkpoint
    higher_is_better = True
    throughput_unit = "images"
    statistics = ()
    draws_predictions = True
    collects_predictions = True  # the loop decodes detections and hands them to `evaluator()`

    def __init__(self, config):
        self.config = config
        self.num_classes = config.num_classes
        self.mean, self.std = tuple(config.data.mean), tuple(config.data.std)
        self.image_size = tuple(config.data.image_size)
        stride = config.model.output_stride
        if self.image_size[0] % stride or self.image_size[1] % stride:
            raise ValueError(
                f"config.data.image_size {self.image_size} must divide by config.model.output_stride={stride}"
            )
        self.stride = stride
        self.points = np.asarray(fcos.locations(self.image_size[0] // stride, self.image_size[1] // stride, stride))
        self.loss_options = dict(alpha=config.loss.focal_alpha, gamma=config.loss.focal_gamma)
        self.center_radius = config.loss.center_radius
        self.detection_options = dict(config.detection)

    @property
    def class_names(self) -> tuple:
        """The config's class names, read when asked: `make_data` fills them in from a COCO
        file's categories when the config names none."""
        return tuple(self.config.data.class_names) or tuple(f"class {c}" for c in range(self.num_classes))

    # Setup: the data, model and hyperparameters of `self.config` (`jaxseg.tasks.base.Task`).
    def make_data(self, workdir) -> Data:
        return make_data(self.config, workdir)

    def model_factory(self):
        return model_factory(self.config)

    def hyperparameters(self, data: Data | None = None) -> dict:
        return hyperparameters(self.config, data)

    def units_per_batch(self, batch_size: int) -> int:
        return batch_size

    def apply(self, model: nnx.Module, batch, *, train: bool, key=None):
        """The head's outputs (`classes`, `distances`, `centerness` per location)."""
        return model(normalize(batch["image"], self.mean, self.std), train=train, key=key)

    def targets(self, batch) -> fcos.Targets:
        assign = functools.partial(
            fcos.assign_targets,
            jnp.asarray(self.points),
            num_classes=self.num_classes,
            stride=self.stride,
            center_radius=self.center_radius,
        )
        return jax.vmap(assign)(batch["boxes"], batch["classes"], batch["box_mask"])

    def loss(self, outputs, batch, hp, *, mask=None):
        """(total, terms) of the FCOS loss; `mask` `[B]` excludes padding images."""
        weights = hp["loss_weights"]
        return fcos_loss(
            outputs["classes"],
            outputs["distances"],
            outputs["centerness"],
            self.targets(batch),
            jnp.asarray(self.points),
            weights=(weights[0], weights[1], weights[2]),
            image_mask=mask,
            **self.loss_options,
        )

    def metrics(self, outputs, batch, *, mask=None):
        return {}

    def predict(self, outputs) -> fcos.Detections:
        """Decoded detections per image (score threshold, per-class NMS, fixed count)."""
        detect = functools.partial(
            fcos.detect, points=jnp.asarray(self.points), image_size=self.image_size, **self.detection_options
        )
        return jax.vmap(detect)(outputs["classes"], outputs["distances"], outputs["centerness"])  # type: ignore[call-arg]

    def check_batch(self, batch, step) -> None:
        """`checkify` checks of the batch inside the compiled step (`config.train.checkify`)."""
        from jax.experimental import checkify

        classes, mask = batch["classes"], batch["box_mask"]
        ok = jnp.where(mask, (classes >= 0) & (classes < self.num_classes), True)
        checkify.check(
            jnp.all(ok),
            f"step {{step}}: box classes outside [0, {self.num_classes}): min {{low}}, max {{high}}",
            step=step,
            low=jnp.min(jnp.where(mask, classes, jnp.iinfo(classes.dtype).max)),
            high=jnp.max(jnp.where(mask, classes, jnp.iinfo(classes.dtype).min)),
        )  # real boxes only

    def eval_weights(self, batch):
        """(weights of the images, number of valid images): padding rows count for nothing."""
        valid = batch["valid"].astype(jnp.float32)
        return valid, jnp.sum(valid)

    def evaluator(self):
        from jaxseg.metrics.detection import CocoEvaluator

        return CocoEvaluator(self.class_names, max_detections=self.detection_options["max_detections"])

    @staticmethod
    def add_to(evaluator, batch, detections) -> None:
        """Feed one evaluation batch (host arrays) and its detections to `evaluator`."""
        evaluator.add(
            batch["boxes"],
            batch["classes"],
            batch["box_mask"],
            detections.boxes,
            detections.scores,
            detections.classes,
            detections.mask,
            image_valid=batch["valid"],
        )

    def scores(self, summary: dict, statistics: dict) -> dict:
        return {}

    def describe(self, metrics: dict) -> str:
        return f"mAP {metrics['map']:.4f}, mAP@.5 {metrics['map50']:.4f}, mAP@.75 {metrics['map75']:.4f}"

    def save_figure(self, path, host_batch, detections, data: Data) -> None:
        from jaxseg.figures import save_detection_figure

        save_detection_figure(path, host_batch["image"], host_batch, detections, class_names=list(data.class_names))

    def progress(self, metrics: dict) -> dict:
        shown = {"loss": f"{metrics['loss']:.3f}"}
        if "map" in metrics:
            shown["map"] = f"{metrics['map']:.3f}"
        return shown
