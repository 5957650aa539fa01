"""Semantic segmentation: binds the model, the composed loss, metrics and data from a config."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg import losses
from jaxseg.data import FolderSource, ShapesSource, balance, eval_batches, train_dataset
from jaxseg.data.pipeline import process_share
from jaxseg.metrics import confusion_matrix, scores
from jaxseg.models import FCN, UNet
from jaxseg.tasks import base, checked_sources, model_options

MODELS = {"unet": UNet, "fcn": FCN}
DATASETS = ("shapes", "folder")


def make_sources(config) -> tuple[Any, Any]:
    """(train source, validation source) from `config.data`."""
    data = config.data
    if data.name == "shapes":
        options = dict(seed=data.seed, size=data.source_size, max_shapes=data.max_shapes, depth=data.depth)
        return (
            ShapesSource(data.train_samples, split="train", **options),
            ShapesSource(data.val_samples, split="val", **options),
        )
    if data.name == "folder":
        options = dict(
            num_classes=config.num_classes,
            images_dir=data.images_dir,
            masks_dir=data.masks_dir,
            extra_dirs=tuple(data.extra_dirs),
            ignore_index=data.ignore_index,
            class_names=tuple(data.class_names) or None,
        )
        return (
            FolderSource(data.root, split_file=data.train_split or None, **options),
            FolderSource(data.root, split_file=data.val_split or None, **options),
        )
    raise ValueError(f"config.data.name must be one of {DATASETS}; got {data.name!r}")


class Data(NamedTuple):
    """The training iterator (checkpointable), the padded validation batches, the loss class
    weights derived from the data (or None), the class names and, with
    `config.data.skip_bad_samples`, a function counting the bad samples skipped so far."""

    train: Any
    val: Any
    class_weights: Any
    class_names: tuple
    skipped_samples: Any = None


def make_data(config, workdir) -> Data:
    """Sources, statistics (cached in `workdir`) and grain pipelines for this process."""
    ignore = config.data.ignore_index
    if ignore is not None and 0 <= ignore < config.num_classes:
        raise ValueError(
            f"config.data.ignore_index={ignore} is a class id (config.num_classes={config.num_classes}); "
            f"the ignore value must lie outside [0, {config.num_classes}), e.g. 255"
        )
    train_source, val_source, skipped_samples = checked_sources(config, make_sources(config))
    stats_file = Path(workdir) / "label_statistics.json"
    class_weights = data_class_weights(config, train_source, stats_file)
    sample_indices = None
    if config.data.balance:
        stats = balance.cached_statistics(
            train_source, config.num_classes, ignore_index=config.data.ignore_index, cache_file=stats_file
        )
        factors = balance.repeat_factors(stats["pixels"], stats["present"], threshold=config.data.balance_threshold)
        sample_indices = balance.resampled_indices(factors, config.seed)
    shared = dict(
        image_size=config.data.image_size,
        ignore_index=config.data.ignore_index,
        distance_maps_for=config.num_classes if config.loss.weights.get("boundary", 0) else None,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    train = iter(
        train_dataset(
            train_source,
            batch_size=process_share(config.train, "batch_size"),
            seed=config.seed,
            scale_range=config.data.scale_range,
            flip=config.data.flip,
            jitter=config.data.jitter,
            sample_indices=sample_indices,
            num_threads=config.data.num_threads,
            **shared,
        )
    )
    val = eval_batches(val_source, batch_size=process_share(config.train, "eval_batch_size"), **shared)
    return Data(train, val, class_weights, tuple(train_source.class_names), skipped_samples)


def in_channels(data) -> int:
    return len(data.mean)


PRETRAINED_KEYS = ("weights", "encoder_weights")
AUX_WEIGHT = 0.4  # config.loss.aux_weight when a config has none: mmseg's auxiliary-head weight


def model_factory(config, num_classes: int | None = None):
    """`make_model(rngs=...)` for `config.model`: jaxseg's own models by `name` (UNet, FCN), or
    an smp architecture on an encoder by `arch` and `encoder` (`jaxseg.models.create`'s options;
    `weights` / `encoder_weights` are loaded by `pretrained` after initialisation)."""
    num_classes = config.num_classes if num_classes is None else num_classes
    if "arch" in config.model:
        return zoo_model_factory(config, num_classes)
    model, options = model_options(config, MODELS)
    return functools.partial(model, num_classes, in_channels=in_channels(config.data), **options)


def zoo_model_factory(config, num_classes: int):
    from jaxseg import kernels
    from jaxseg.models import zoo

    # "" is a config's None (a string key stays overridable from the command line).
    options: dict[str, Any] = {
        k: None if v == "" else v for k, v in dict(config.model).items() if k not in PRETRAINED_KEYS
    }
    if "name" in options:
        raise ValueError("config.model has both `name` (jaxseg's models) and `arch` (smp's); keep one")
    aux_params = aux_head_params(options.pop("aux_params", None), num_classes)
    return functools.partial(
        zoo.build_model,
        options.pop("arch").lower(),
        encoder=options.pop("encoder"),
        num_classes=num_classes,
        in_channels=in_channels(config.data),
        aux_params=aux_params,
        dtype=jnp.dtype(options.pop("dtype", "float32")),
        conv_general_dilated=kernels.convolution(config.get("kernels", "xla")),
        **options,
    )


def aux_head_params(aux_params, num_classes: int) -> dict | None:
    """`config.model.aux_params` for smp's auxiliary classification head, which the trainer
    trains to predict which classes are present in each image: its `classes` must be
    `num_classes` (the default here; smp's is 1)."""
    if not aux_params:
        return None
    aux_params = dict(aux_params)
    classes = aux_params.setdefault("classes", num_classes)
    if classes != num_classes:
        raise ValueError(
            f"config.model.aux_params.classes={classes}: the auxiliary head predicts which of the "
            f"{num_classes} classes each image shows; set it to config.num_classes or leave it out"
        )
    return aux_params


def class_presence(labels, num_classes: int, *, ignore_index: int, mask=None):
    """float32 `[B, num_classes]`: 1 where the class labels a pixel of the image that is neither
    ignored nor masked out (the auxiliary head's multi-label targets)."""
    counted = labels != ignore_index
    if mask is not None:
        counted = counted & (mask > 0)
    hits = (labels[..., None] == jnp.arange(num_classes)) & counted[..., None]
    return jnp.any(hits.reshape(labels.shape[0], -1, num_classes), axis=1).astype(jnp.float32)


def segmentation_logits(outputs):
    """The logits of a model's outputs (`(logits, aux labels)` with an auxiliary head)."""
    return outputs[0] if isinstance(outputs, tuple) else outputs


def pretrained(config, params, model_state, *, members: bool = False):
    """`config.model.encoder_weights` and `weights` (paths or hub ids) written into a fresh state."""
    model = config.model
    chosen = {key: model.get(key) or None for key in PRETRAINED_KEYS}
    if "arch" not in model or not any(chosen.values()):
        return params, model_state
    from jaxseg.models import zoo

    return zoo.pretrained_state(
        params,
        model_state,
        encoder=model.encoder,
        in_channels=in_channels(config.data),
        depth=model.get("encoder_depth", 5),
        members=members,
        **chosen,
    )


def loss_hyperparameters(config, class_weights=None) -> dict:
    """The array pytree the train step reads its loss options from (vmappable for ablations)."""
    loss = config.loss
    unknown = set(loss.weights) - set(losses.TERMS)
    if unknown:
        raise ValueError(f"config.loss.weights: unknown terms {sorted(unknown)}; known terms are {losses.TERMS}")
    weights = {name: jnp.float32(w) for name, w in loss.weights.items() if w}
    if not weights:
        raise ValueError("config.loss.weights: every term weight is 0; set at least one (e.g. ce=1.0)")
    if class_weights is None and len(loss.class_weights):
        if len(loss.class_weights) != config.num_classes:
            raise ValueError(
                f"config.loss.class_weights has {len(loss.class_weights)} values; "
                f"config.num_classes is {config.num_classes}"
            )
        class_weights = np.asarray(loss.class_weights, np.float32)
    segmentation = losses.SegmentationLoss(
        weights=weights,
        class_weights=None if class_weights is None else jnp.asarray(class_weights, jnp.float32),
        label_smoothing=jnp.float32(loss.label_smoothing),
        focal_gamma=jnp.float32(loss.focal_gamma),
        tversky_alpha=jnp.float32(loss.tversky_alpha),
        tversky_beta=jnp.float32(loss.tversky_beta),
        dice_smooth=jnp.float32(loss.dice_smooth),
        ignore_index=config.data.ignore_index,
        per_image=loss.per_image,
        gradient_operator=loss.gradient_operator,
    )
    hp = {"loss": segmentation, "l1": jnp.float32(config.optim.l1)}
    if config.model.get("aux_params"):
        hp["aux_weight"] = jnp.float32(loss.get("aux_weight", AUX_WEIGHT))
    return hp


def hyperparameters(config, data: Data | None = None) -> dict:
    """The train step's `hp` for `config` and its data (class weights derived from it)."""
    return loss_hyperparameters(config, None if data is None else data.class_weights)


def data_class_weights(config, train_source, cache_file):
    """Loss class weights from the training pixel frequencies when `config.loss.class_weighting` is set."""
    method = config.loss.class_weighting
    if not method:
        return None
    stats = balance.cached_statistics(
        train_source, config.num_classes, ignore_index=config.data.ignore_index, cache_file=cache_file
    )
    return balance.class_weights(stats["pixels"], method)


def normalize(images, mean, std):
    """uint8 `[B, H, W, C_in]` -> float32, `(x / 255 - mean) / std` per channel (on device)."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class Task(base.Task):
    """Semantic segmentation for the generic train and eval steps and the loop."""

    key_metric = "miou"  # validation metric that picks the best checkpoint and member
    higher_is_better = True
    throughput_unit = "images"
    statistics = ("confusion",)  # summed per-batch statistics that `scores` turns into metrics
    draws_predictions = True  # the loop saves a figure of `figure(...)` at each evaluation

    def __init__(self, config):
        self.config = config
        self.num_classes = config.num_classes
        self.ignore_index = config.data.ignore_index
        self.mean, self.std = tuple(config.data.mean), tuple(config.data.std)

    # Setup: the data, model and hyperparameters of `self.config` (`jaxseg.tasks.base.Task`).
    def make_data(self, workdir) -> Data:
        return make_data(self.config, workdir)

    def model_factory(self):
        return model_factory(self.config)

    def pretrained(self, params, model_state, *, members: bool = False):
        return pretrained(self.config, params, model_state, members=members)

    def hyperparameters(self, data: Data | None = None) -> dict:
        return hyperparameters(self.config, data)

    def member_hyperparameters(self, configs: list, workdir) -> list[dict]:
        """One `hp` per member config, of one structure: the union of the members' loss terms
        (weight 0 for a term a member does not use: it adds exactly 0 to its loss and
        gradient) and, when any member weights classes, weights of 1 for the others (the same
        as no weights). Data-derived class weights come from the training labels' statistics,
        cached in `workdir`."""
        train_source = make_sources(self.config)[0]
        stats_file = Path(workdir) / "label_statistics.json"
        hps = [loss_hyperparameters(c, data_class_weights(c, train_source, stats_file)) for c in configs]
        terms = sorted({term for hp in hps for term in hp["loss"].weights})
        weighted = any(hp["loss"].class_weights is not None for hp in hps)
        for hp in hps:
            loss = hp["loss"]
            class_weights = loss.class_weights
            if weighted and class_weights is None:
                class_weights = jnp.ones(self.num_classes, jnp.float32)
            hp["loss"] = dataclasses.replace(
                loss, weights={t: loss.weights.get(t, jnp.float32(0.0)) for t in terms}, class_weights=class_weights
            )
        return hps

    def active_terms(self, hp: dict) -> tuple[str, ...]:
        """The terms with a non-zero weight in a member's host `hp` (before stacking)."""
        return tuple(sorted(t for t, w in hp["loss"].weights.items() if float(w) != 0.0))

    def only_terms(self, hp: dict, terms: tuple[str, ...]) -> dict:
        loss = hp["loss"]
        return dict(hp, loss=dataclasses.replace(loss, weights={t: loss.weights[t] for t in terms}))

    def units_per_batch(self, batch_size: int) -> int:
        return batch_size

    def apply(self, model: nnx.Module, batch, *, train: bool, key=None):
        """Logits `[B, H, W, C]` for the batch's uint8 images (and the auxiliary head's
        `[B, C]` class logits with `config.model.aux_params`)."""
        return model(normalize(batch["image"], self.mean, self.std), train=train, key=key)

    def loss(self, outputs, batch, hp, *, mask=None):
        """(total, terms) of the composed segmentation loss with options from `hp["loss"]`;
        with an auxiliary head, plus `hp["aux_weight"]` times its binary cross-entropy against
        the classes each image shows (term "aux")."""
        total, terms = hp["loss"](
            segmentation_logits(outputs), batch["label"], mask=mask, distance_maps=batch.get("distance")
        )
        if not isinstance(outputs, tuple):
            return total, terms
        aux_logits = outputs[1]
        targets = class_presence(batch["label"], self.num_classes, ignore_index=self.ignore_index, mask=mask)
        aux_mask = None  # evaluation's padding images count for nothing
        if mask is not None:
            valid = jnp.max(mask.reshape(mask.shape[0], -1).astype(jnp.float32), axis=1)
            aux_mask = jnp.broadcast_to(valid[:, None], aux_logits.shape)
        aux = losses.binary_cross_entropy(aux_logits, targets, mask=aux_mask)
        return total + hp["aux_weight"] * aux, dict(terms, aux=aux)

    def metrics(self, outputs, batch, *, mask=None):
        """Per-batch statistics: the confusion matrix of the argmax predictions."""
        predictions = jnp.argmax(segmentation_logits(outputs), axis=-1)
        return {
            "confusion": confusion_matrix(
                predictions, batch["label"], self.num_classes, ignore_index=self.ignore_index, mask=mask
            )
        }

    def predict(self, outputs):
        """Class ids `[B, H, W]`."""
        return jnp.argmax(segmentation_logits(outputs), axis=-1)

    def check_batch(self, batch, step) -> None:
        """`checkify` checks of the batch inside the compiled step (`config.train.checkify`)."""
        from jax.experimental import checkify

        label = batch["label"]
        ok = (label >= 0) & (label < self.num_classes)
        if self.ignore_index is not None:
            ok = ok | (label == self.ignore_index)
        checkify.check(
            jnp.all(ok),
            f"step {{step}}: label values outside [0, {self.num_classes}) that are not the "
            f"ignore value {self.ignore_index}: min {{low}}, max {{high}}",
            step=step,
            low=jnp.min(label),
            high=jnp.max(label),
        )

    def eval_weights(self, batch):
        """(mask over the labels, number of valid images): padding rows count for nothing."""
        mask = jnp.broadcast_to(batch["valid"].reshape((-1,) + (1,) * (batch["label"].ndim - 1)), batch["label"].shape)
        return mask, jnp.sum(batch["valid"].astype(jnp.float32))

    def scores(self, summary: dict, statistics: dict) -> dict:
        """Host side: mIoU, per-class IoU and Dice, pixel accuracy of the summed confusion."""
        return scores(statistics["confusion"])

    def describe(self, metrics: dict) -> str:
        return f"mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}"

    def save_figure(self, path, host_batch, predictions, data: Data) -> None:
        """The loop's prediction figure: images, ground truth and predicted masks."""
        from jaxseg.figures import save_prediction_figure

        save_prediction_figure(
            path,
            host_batch["image"],
            host_batch["label"],
            predictions,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_names=list(data.class_names),
        )

    def progress(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.3f}", "miou": f"{metrics['miou']:.3f}"}
