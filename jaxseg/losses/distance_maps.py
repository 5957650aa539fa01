"""Signed distance maps for `boundary_loss`, computed on the host (NumPy/SciPy) per sample."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def signed_distance_maps(
    labels, num_classes: int, *, ignore_index=None, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Per-class signed Euclidean distance to the class boundary, Kervadec et al.'s `one_hot2dist`.

    `phi_k = EDT(outside_k) * outside_k - (EDT(inside_k) - 1) * inside_k` for each class k present in
    the sample: outside k, the distance to the nearest pixel of k; inside k, `1 - distance` to the
    nearest pixel of another class (0 on the inner boundary, negative deeper inside). Classes
    absent from the sample, and classes covering it entirely (no boundary), get 0. Ignored pixels
    count as outside every class and get 0. Computed on the host (NumPy/SciPy); needs SciPy.

    Args:
      labels: one sample's int class ids, `[*spatial]` (call it per sample in the pipeline).
      num_classes: C.
      ignore_index: label value to leave at 0.
      spacing: pixel size per spatial axis (scipy's `sampling`), default 1.

    Returns:
      float32 NumPy array `[*spatial, C]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.losses import signed_distance_maps
      >>> maps = signed_distance_maps(jnp.array([0, 0, 1, 1, 1, 1]), num_classes=2)  # [W=6] -> [W, C]
      >>> print(maps[:, 1].tolist())  # positive outside class 1, 0 on its inner boundary, negative inside
      [2.0, 1.0, 0.0, -1.0, -2.0, -3.0]

    References:
      - LIVIAETS/boundary-loss `one_hot2dist`; `scipy.ndimage.distance_transform_edt`.
      - Kervadec et al., 2019, [Boundary loss for highly unbalanced
        segmentation](https://arxiv.org/abs/1812.07032).
    """
    try:
        from scipy import ndimage  # imported here: `jaxseg.losses` stays light to import
    except ImportError as error:
        raise ImportError("signed_distance_maps needs SciPy: pip install scipy (or 'jaxseg[train]')") from error

    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids; got {labels.dtype}")
    out = np.zeros(labels.shape + (num_classes,), np.float32)
    for k in range(num_classes):
        inside = labels == k
        if not inside.any() or inside.all():
            continue
        outside = ~inside
        out[..., k] = (
            ndimage.distance_transform_edt(outside, sampling=spacing) * outside
            - (ndimage.distance_transform_edt(inside, sampling=spacing) - 1.0) * inside
        )
    if ignore_index is not None:
        out[labels == ignore_index] = 0.0
    return out
