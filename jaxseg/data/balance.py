"""Class imbalance on the data side: pixel statistics, loss class weights, resampling.

One pass over the training labels gives per-class pixel counts and which classes each image
holds; both feed (a) class weights for the losses and (b) repeat-factor resampling, where an
image holding rare classes appears more often per epoch (the LVIS scheme, on pixel
frequencies). The statistics are cached as JSON so they are computed once per dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

WEIGHTINGS = ("inverse", "median")


def label_statistics(source, num_classes: int, *, ignore_index=None) -> dict:
    """Scan every label once: `{"pixels": [C] counts, "present": [N][C] bools}`."""
    pixels = np.zeros(num_classes, np.int64)
    present = np.zeros((len(source), num_classes), bool)
    for i in range(len(source)):
        example = source[i]
        if example is None:  # a bad sample skipped by `pipeline.SkippingSource`
            continue
        label = np.asarray(example["label"]).reshape(-1)
        if ignore_index is not None:
            label = label[label != ignore_index]
        counts = np.bincount(label, minlength=num_classes)[:num_classes]
        pixels += counts
        present[i] = counts > 0
    return {"pixels": pixels.tolist(), "present": present.tolist()}


def cached_statistics(source, num_classes: int, *, ignore_index, cache_file) -> dict:
    """`label_statistics`, read from `cache_file` when it exists for the same source."""
    cache_file = Path(cache_file)
    key = f"{source!r}|{num_classes}|{ignore_index}"
    if cache_file.exists():
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return cached
    stats = dict(label_statistics(source, num_classes, ignore_index=ignore_index), key=key)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # Written to a private file and renamed: processes sharing a workdir never read half a file.
    partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(stats))
    partial.replace(cache_file)
    return stats


def class_weights(pixels, method: str = "median") -> np.ndarray:
    """Per-class loss weights from pixel counts.

    "inverse": `1 / f_c`; "median": median frequency balancing `median(f) / f_c` (Eigen &
    Fergus). Both are scaled to mean 1 over the classes that occur; absent classes get 0.
    """
    if method not in WEIGHTINGS:
        raise ValueError(f"class weighting must be one of {WEIGHTINGS}; got {method!r}")
    pixels = np.asarray(pixels, np.float64)
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no labelled pixels: cannot derive class weights")
    frequency = pixels / pixels.sum()
    weights = np.zeros_like(frequency)
    weights[seen] = (np.median(frequency[seen]) if method == "median" else 1.0) / frequency[seen]
    return (weights / weights[seen].mean()).astype(np.float32)


def repeat_factors(pixels, present, *, threshold: float = 0.01) -> np.ndarray:
    """Per-image repeat factor `max over its classes of max(1, sqrt(threshold / f_c))`."""
    pixels = np.asarray(pixels, np.float64)
    frequency = pixels / max(pixels.sum(), 1.0)
    with np.errstate(divide="ignore"):
        class_factor = np.where(frequency > 0, np.maximum(1.0, np.sqrt(threshold / frequency)), 1.0)
    present = np.asarray(present, bool)
    return np.where(present, class_factor[None, :], 1.0).max(axis=1)


def resampled_indices(factors, seed: int) -> np.ndarray:
    """Each image `floor(r)` times plus once more with probability `frac(r)` (fixed by `seed`)."""
    factors = np.asarray(factors, np.float64)
    rng = np.random.default_rng(seed)
    counts = np.floor(factors).astype(np.int64) + (rng.random(len(factors)) < factors - np.floor(factors))
    return np.repeat(np.arange(len(factors)), counts)
