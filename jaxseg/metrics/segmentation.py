"""Segmentation metrics: a confusion matrix per batch on device, scores on the host.

The confusion matrix is a sum, so batches, devices and hosts combine by addition and a
streamed evaluation equals one over the whole split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.ops.labels import valid_mask


def confusion_matrix(predictions, labels, num_classes: int, *, ignore_index=None, mask=None):
    """`[C, C]` int32 counts, rows = true class, columns = predicted class.

    Args:
      predictions: int `[...]` predicted ids (e.g. `argmax(logits, -1)`).
      labels: int `[...]` true ids; `ignore_index` and `mask == 0` elements are not counted,
        nor are labels outside `[0, C)`.
    """
    labels = labels.astype(jnp.int32)
    keep = valid_mask(labels, ignore_index=ignore_index, mask=mask) > 0
    keep &= (labels >= 0) & (labels < num_classes)
    index = jnp.where(keep, labels * num_classes + predictions.astype(jnp.int32), 0)
    counts = jnp.bincount(index.reshape(-1), weights=keep.reshape(-1).astype(jnp.int32), length=num_classes**2)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def scores(confusion) -> dict:
    """Host-side scores from a `[C, C]` confusion matrix.

    Returns a dict with `miou` (mean IoU over classes present in labels or predictions),
    `iou` and `dice` per class (NaN for classes never seen), `mean_dice`, `pixel_accuracy`
    and `mean_accuracy` (per-class recall averaged over classes present in the labels).
    """
    confusion = np.asarray(jax.device_get(confusion), np.float64)
    true_positive = np.diag(confusion)
    actual = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = actual + predicted - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        dice = np.where(actual + predicted > 0, 2 * true_positive / (actual + predicted), np.nan)
        recall = np.where(actual > 0, true_positive / actual, np.nan)
    total = confusion.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "mean_dice": float(np.nanmean(dice)) if np.any(union > 0) else 0.0,
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else 0.0,
        "mean_accuracy": float(np.nanmean(recall)) if np.any(actual > 0) else 0.0,
    }
