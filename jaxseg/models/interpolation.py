"""torch's `F.interpolate(x, size, mode, align_corners)` on `[B, H, W, C]` for the modes smp's
decoders offer (`decoder_interpolation`): "nearest", "nearest-exact", "bilinear", "bicubic",
"area". Each is separable, so a mode is the `[out, in]` matrix of weights it gives one axis
(nearest ones gather instead: the default mode of most decoders stays a cheap index)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
CUBIC_A = -0.75  # torch's bicubic coefficient (jax.image.resize's Keys cubic uses -0.5)


def check_interpolation(mode: str, option: str = "decoder_interpolation") -> None:
    """torch accepts these modes for 4-d inputs; smp passes the option through unchecked, so torch
    would refuse another only in the forward pass."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"{option} must be one of {INTERPOLATIONS}; got {mode!r}")


def interpolate(x, size, mode: str, *, align_corners: bool = False):
    """`[B, H, W, C]` -> `[B, *size, C]` as torch's `F.interpolate(x, size=size, mode=mode,
    align_corners=align_corners)` (`align_corners` matters for "bilinear" and "bicubic" only)."""
    size = tuple(size)
    if mode in ("nearest", "nearest-exact"):
        return _resize_nearest(x, size, exact=mode == "nearest-exact")
    if mode == "area":
        return adaptive_avg_pool(x, size)
    matrix = {"bilinear": _linear_matrix, "bicubic": _cubic_matrix}[mode]
    rows = matrix(x.shape[1], size[0], align_corners).astype(x.dtype)
    cols = matrix(x.shape[2], size[1], align_corners).astype(x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def _resize_nearest(x, size, *, exact: bool):
    """torch's "nearest": source index `floor(i * in / out)` (not the half-pixel rule of
    `jax.image.resize`); "nearest-exact": `floor((i + 0.5) * in / out)` (pixel centres)."""
    offset = 0.5 if exact else 0.0
    rows = np.minimum(((np.arange(size[0]) + offset) * (x.shape[1] / size[0])).astype(np.int64), x.shape[1] - 1)
    cols = np.minimum(((np.arange(size[1]) + offset) * (x.shape[2] / size[1])).astype(np.int64), x.shape[2] - 1)
    return x[:, rows][:, :, cols]


def adaptive_avg_pool(x, size):
    """torch's `adaptive_avg_pool2d(x, size)` for `[B, H, W, C]` (and `interpolate`'s "area"):
    output cell `i` averages input rows `floor(i * H / s)` to `ceil((i + 1) * H / s)` (cells
    overlap when `s` does not divide `H`)."""
    rows = _adaptive_pool_matrix(x.shape[1], size[0]).astype(x.dtype)
    cols = _adaptive_pool_matrix(x.shape[2], size[1]).astype(x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def _adaptive_pool_matrix(n_in: int, n_out: int):
    """`[n_out, n_in]` averaging weights of torch's adaptive pooling bins."""
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        weights[i, start:end] = 1.0 / (end - start)
    return jnp.asarray(weights)


def _source_positions(n_in: int, n_out: int, align_corners: bool):
    """torch's `area_pixel_compute_source_index` before clamping: the input coordinate each
    output pixel samples."""
    if align_corners:
        return np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    return (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5


def _linear_matrix(n_in: int, n_out: int, align_corners: bool):
    """`[n_out, n_in]` weights of torch's (bi)linear mode: negative half-pixel positions clamp to 0."""
    source = np.maximum(_source_positions(n_in, n_out, align_corners), 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = source - low
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), low), 1 - frac)
    np.add.at(weights, (np.arange(n_out), high), frac)
    return jnp.asarray(weights)


def _cubic_matrix(n_in: int, n_out: int, align_corners: bool):
    """`[n_out, n_in]` weights of torch's bicubic mode: the four taps `floor(s) - 1 .. floor(s) + 2`
    of the unclamped source `s`, Keys' kernel with a = -0.75, taps past the border repeating it."""
    source = _source_positions(n_in, n_out, align_corners)
    first = np.floor(source).astype(np.int64)
    t = source - first
    taps = [_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t)]
    weights = np.zeros((n_out, n_in))
    for offset, tap in enumerate(taps):
        np.add.at(weights, (np.arange(n_out), np.clip(first - 1 + offset, 0, n_in - 1)), tap)
    return jnp.asarray(weights)


def _cubic_near(x):
    """Keys' kernel for `|x| <= 1` (torch's `cubic_convolution1`)."""
    return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1


def _cubic_far(x):
    """Keys' kernel for `1 < |x| < 2` (torch's `cubic_convolution2`)."""
    return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A
