"""Depthwise convolutions as `k * k` shifted multiply-adds, for XLA's CPU backend.

XLA's CPU convolution handles `feature_group_count == channels` as a generic grouped
convolution: a 3x3 depthwise convolution of `[8, 16, 16, 2048]` (dilation 12) takes 220-280 ms forward and 5 s
forward and backward on 2 cores, far beyond its memory traffic (benchmarks/depthwise.py). The
same function as a sum of `k * k` strided slices of the padded input, each scaled per channel, is
one fused elementwise loop forward and backward. Used for the models' depthwise layers (MobileNet-
style blocks, ConvNeXt's 7x7, MiT's Mix-FFN, DeepLab's separable ASPP) when `config.kernels`
routes the CPU's convolutions (`jaxseg.kernels.convolution`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


def is_nhwc(dimension_numbers) -> bool:
    """Whether `dimension_numbers` (strings, or `nnx.Conv`'s `ConvDimensionNumbers`) are NHWC/HWIO."""
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return dimension_numbers is not None and tuple(dimension_numbers) == NHWC


def _pairs(padding, kernel_shape, strides, dilation, spatial) -> tuple | None:
    if isinstance(padding, str):
        dilated = [d * (k - 1) + 1 for k, d in zip(kernel_shape, dilation)]
        return tuple(lax.padtype_to_pads(spatial, dilated, strides, padding))
    return tuple(tuple(p) for p in padding)


def covers(lhs, rhs, dimension_numbers, feature_group_count, batch_group_count, lhs_dilation) -> bool:
    """Whether `conv_general_dilated` with these arguments is a 2-D NHWC/HWIO depthwise
    convolution (every input channel its own group) that `depthwise_conv` computes."""
    return (
        lhs.ndim == 4
        and rhs.ndim == 4
        and is_nhwc(dimension_numbers)
        and feature_group_count > 1
        and feature_group_count == lhs.shape[-1]
        and rhs.shape[2] == 1
        and batch_group_count == 1
        and (lhs_dilation is None or all(d == 1 for d in lhs_dilation))
    )


def depthwise_conv(lhs, rhs, window_strides, padding, rhs_dilation=None, preferred_element_type=None):
    """`lax.conv_general_dilated(lhs [B, H, W, C], rhs [kh, kw, 1, C * m], ...,
    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C)` as shifted
    multiply-adds, accumulated in at least float32 (output channel `o` reads input channel
    `o // m`, as XLA's grouped convolution)."""
    kernel_h, kernel_w, _, out_channels = rhs.shape
    strides = tuple(window_strides)
    dilation = (1, 1) if rhs_dilation is None else tuple(rhs_dilation)
    pads = _pairs(padding, (kernel_h, kernel_w), strides, dilation, lhs.shape[1:3])
    out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    accumulate = jnp.promote_types(out_dtype, jnp.float32)
    multiplier = out_channels // lhs.shape[-1]
    x = jnp.repeat(lhs, multiplier, axis=-1) if multiplier > 1 else lhs
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    batch, height, width, channels = x.shape
    out_h = (height - dilation[0] * (kernel_h - 1) - 1) // strides[0] + 1
    out_w = (width - dilation[1] * (kernel_w - 1) - 1) // strides[1] + 1
    kernel = rhs[:, :, 0, :].astype(accumulate)
    total = jnp.zeros((batch, out_h, out_w, channels), accumulate)
    for i in range(kernel_h):
        for j in range(kernel_w):
            top, left = i * dilation[0], j * dilation[1]
            window = lax.slice(
                x,
                (0, top, left, 0),
                (batch, top + strides[0] * (out_h - 1) + 1, left + strides[1] * (out_w - 1) + 1, channels),
                (1, strides[0], strides[1], 1),
            )
            total = total + window.astype(accumulate) * kernel[i, j]
    return total.astype(out_dtype)


def routed(convolve):
    """`convolve` (a `conv_general_dilated`) with its depthwise convolutions computed by
    `depthwise_conv`; everything else passes through unchanged."""

    def conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
        **options,
    ):
        unsharded = all(v is None for v in options.values())  # e.g. nnx.Conv's out_sharding=None
        if unsharded and covers(lhs, rhs, dimension_numbers, feature_group_count, batch_group_count, lhs_dilation):
            return depthwise_conv(lhs, rhs, window_strides, padding, rhs_dilation, preferred_element_type)
        return convolve(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
            **options,
        )

    return conv_general_dilated
