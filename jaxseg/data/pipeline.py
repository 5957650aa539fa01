"""grain input pipelines: seeded shuffles, per-record augmentation, batching, process sharding.

Batches are host-local NumPy dicts: `image` uint8 `[b, H, W, C_in]` (normalised on device),
`label` int32 `[b, H, W]`, and for evaluation `valid` bool `[b]` (False marks the padding of
the last batch). The training stream is shuffled and augmented as one global stream; process
`p` of `P` takes its elements `p, p + P, ...`, so the global batch (all processes' rows) holds
the same examples, augmented the same way, whatever the number of processes. The training
iterator's state (`get_state`/`set_state`) is saved with the checkpoints.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Sequence

import grain
import numpy as np

from jaxseg.data.augment import augment, fit
from jaxseg.losses.distance_maps import signed_distance_maps

log = logging.getLogger("jaxseg")


def process_share(config_train, key: str) -> int:
    """This process's rows of the global `config.train.<key>` batch (an error naming the key
    when the processes cannot share it evenly)."""
    import jax

    size, processes = config_train[key], jax.process_count()
    if size % processes:
        raise ValueError(f"config.train.{key}={size} must divide by {processes} processes")
    return size // processes


def check_image(image, where: str, *, channels: int | None = None) -> np.ndarray:
    """`image` as uint8 `[H, W, C]` with `channels` channels, or an error naming `where`."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"{where}: image must be uint8 [H, W, C]; got {image.dtype} {list(image.shape)}")
    if channels is not None and image.shape[-1] != channels:
        raise ValueError(f"{where}: image has {image.shape[-1]} channels; config.data.mean/std name {channels}")
    return image


def check_example(example, where: str, *, channels: int | None = None) -> dict:
    """A segmentation sample as the pipelines expect it, or an error naming `where` and the
    problem: `image` uint8 `[H, W, C]`, `label` integer `[H, W]` of the same H and W."""
    image, label = example.get("image"), example.get("label")
    if image is None or label is None:
        raise ValueError(f"{where}: a sample needs 'image' and 'label'; got keys {sorted(example)}")
    image, label = check_image(image, where, channels=channels), np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer) or label.shape != image.shape[:2]:
        raise ValueError(
            f"{where}: label must be integer [H, W] = {list(image.shape[:2])}; got {label.dtype} {list(label.shape)}"
        )
    return example


class _SourceWrapper:
    """A source seen through another: same length, same `num_classes` and `class_names`."""

    def __init__(self, source):
        self.source = source
        for name in ("num_classes", "class_names"):
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))

    def __len__(self):
        return len(self.source)


class CheckedSource(_SourceWrapper):
    """`source` whose samples pass `check` (default `check_example`, for segmentation; errors
    name the sample and, for image folders, the file), before any augmentation sees them."""

    def __init__(self, source, *, channels: int | None = None, check=check_example):
        super().__init__(source)
        self.channels, self.check = channels, check

    def __getitem__(self, index):
        items = getattr(self.source, "items", None)
        where = f"sample {index} of {type(self.source).__name__}" + (f" ({items[index][0]})" if items else "")
        return self.check(self.source[index], where, channels=self.channels)


class SkippingSource(_SourceWrapper):
    """`source` whose unreadable or invalid samples (the `OSError`/`ValueError` a source
    raises, naming the file) become `None`: the pipelines drop them, a warning names each
    one once, and `skipped` counts them (`config.data.skip_bad_samples`)."""

    def __init__(self, source):
        super().__init__(source)
        self.bad: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def skipped(self) -> int:
        """Distinct bad samples met so far by this process."""
        return len(self.bad)

    def __getitem__(self, index):
        try:
            return self.source[index]
        except (OSError, ValueError) as error:
            with self._lock:
                first = index not in self.bad
                self.bad[index] = str(error)
            if first:
                log.warning("skipping bad sample %d: %s", index, error)
            return None


class _Indexed:
    """A source read through an index array (for resampling)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[int(self.indices[i])]


def train_dataset(
    source,
    *,
    batch_size: int,
    image_size: Sequence[int],
    seed: int,
    ignore_index: int = 255,
    scale_range=(0.75, 1.25),
    flip: bool = True,
    jitter: float = 0.2,
    sample_indices=None,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 8,
    distance_maps_for: int | None = None,
    transform=None,
):
    """An infinite, reshuffled-every-epoch, augmented and batched `grain.IterDataset`.

    Args:
      batch_size: per-process batch size.
      sample_indices: optional index array (e.g. `balance.resampled_indices`) that replaces
        `range(len(source))`, so some samples appear several times per epoch.
      distance_maps_for: number of classes; adds `distance` `[H, W, C]` signed distance maps
        (for the boundary loss) computed from the augmented labels.
      transform: `(example, rng) -> example`, the augmentation of other tasks' samples (e.g.
        boxes); default: the segmentation `augment` with the options above.
    """
    if sample_indices is not None:
        source = _Indexed(source, sample_indices)
    dataset = grain.MapDataset.source(source)
    if len(dataset) < batch_size * process_count:
        raise ValueError(
            f"{len(dataset)} training samples are fewer than the global batch size {batch_size * process_count}"
        )
    dataset = dataset.shuffle(seed=seed).repeat(None)
    if transform is None:
        transform = functools.partial(
            augment,
            size=tuple(image_size),
            scale_range=tuple(scale_range),
            flip=flip,
            jitter=jitter,
            ignore_index=ignore_index,
        )
    dataset = dataset.random_map(lambda example, rng: transform(example, rng), seed=seed)
    # Sliced after the random map: an element's augmentation depends on its global position.
    dataset = dataset[process_index::process_count]
    if distance_maps_for:
        dataset = dataset.map(
            functools.partial(_with_distance_maps, num_classes=distance_maps_for, ignore_index=ignore_index)
        )
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    if isinstance(source, SkippingSource) or isinstance(getattr(source, "source", None), SkippingSource):
        # Skipped samples are None: only an IterDataset can batch around the gaps.
        return dataset.to_iter_dataset(options).batch(batch_size, drop_remainder=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.to_iter_dataset(options)


def _with_distance_maps(example, *, num_classes: int, ignore_index):
    distances = signed_distance_maps(example["label"], num_classes, ignore_index=ignore_index)
    return dict(example, distance=distances)


def eval_batches(
    source,
    *,
    batch_size: int,
    image_size: Sequence[int],
    ignore_index: int = 255,
    process_index: int = 0,
    process_count: int = 1,
    distance_maps_for: int | None = None,
    transform=None,
    fill: dict | None = None,
):
    """A finite list-like sequence of batches covering this process's share once.

    `transform(example)` is the preprocessing (default: the segmentation `fit` to
    `image_size`). The last batch is padded to `batch_size` (padding: image 0, label
    `ignore_index` or `fill[key]` for each key `fill` names, `valid=False`) so every batch has one shape and the evaluation step compiles once. Every
    process gets the same number of batches (the global evaluation step needs all of them),
    so a process with one sample fewer ends with a batch of padding.
    """
    if len(source) < process_count:
        raise ValueError(f"{len(source)} evaluation samples cannot be shared by {process_count} processes")
    dataset = grain.MapDataset.source(source)[process_index::process_count]
    dataset = dataset.map(transform or functools.partial(fit, size=tuple(image_size)))
    if distance_maps_for:
        dataset = dataset.map(
            functools.partial(_with_distance_maps, num_classes=distance_maps_for, ignore_index=ignore_index)
        )
    fill = {"label": ignore_index if ignore_index is not None else 0} if fill is None else fill
    batches = dataset.batch(batch_size, batch_fn=functools.partial(pad_batch, batch_size=batch_size, fill=fill))
    per_process = -(-len(source) // process_count)
    return EqualCount(batches, -(-per_process // batch_size), fill=fill)


class EqualCount:
    """`batches` extended to `count` batches with all-padding ones (`fill`: key -> padding
    value, 0 for the keys it does not name)."""

    def __init__(self, batches, count: int, *, fill: dict):
        self.batches, self.count, self.fill = batches, count, fill

    def __len__(self):
        return self.count

    def __getitem__(self, index: int):
        if not 0 <= index < self.count:
            raise IndexError(index)
        if index < len(self.batches):
            return self.batches[index]
        template = self.batches[0]
        padding = {key: np.full_like(value, self.fill.get(key, 0)) for key, value in template.items()}
        padding["valid"] = np.zeros_like(template["valid"])
        return padding


def pad_batch(examples, *, batch_size: int, fill: dict):
    """Stack `examples` and pad to `batch_size` rows (`fill`: key -> padding value, default
    0); `valid` marks the real rows. Skipped samples (None) become padding."""
    examples = [e for e in examples if e is not None]
    if not examples:
        raise ValueError("every sample of an evaluation batch was skipped as bad")
    missing = batch_size - len(examples)
    batch = {}
    for key in examples[0]:
        stacked = np.stack([e[key] for e in examples])
        if missing:
            padding = np.full((missing,) + stacked.shape[1:], fill.get(key, 0), stacked.dtype)
            stacked = np.concatenate([stacked, padding])
        batch[key] = stacked
    batch["valid"] = np.arange(batch_size) < len(examples)
    return batch
