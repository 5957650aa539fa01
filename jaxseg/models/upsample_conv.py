"""Bilinear 2x upsampling followed by a 3x3 convolution, computed on the low-resolution grid.

A U-Net decoder upsamples a map 2x (half-pixel bilinear) and convolves the result. Both are
linear, so each of the four output phases (even/odd row, even/odd column) is a 3x3
convolution of the *low-resolution* map, with a kernel mixed from the original one:

    in 1-D, output 2m   = (.75 w0 + .25 w1) x[m-1] + (.25 w0 + .75 w1 + .75 w2) x[m] + .25 w2 x[m+1]
            output 2m+1 = .25 w0 x[m-1] + (.75 w0 + .75 w1 + .25 w2) x[m] + (.25 w1 + .75 w2) x[m+1]

(`PHASE_TAPS`; in 2-D the row and column mixes multiply). One convolution with `4 * C_out`
outputs on the `H x W` map replaces the upsampled `2H x 2W x C_in` map and the convolution
over it: the same FLOPs, a quarter of the input traffic, and a wider output, which XLA's CPU
convolutions run faster (64x64, 64 -> 128 channels at 200 GFLOP/s against 100 GFLOP/s for
128x128, 64 -> 32). The phase formulas hold where the upsampled map's zero padding is not
involved: they treat the low-resolution map as zero-padded, the upsampling clamps at the
border, and the convolution zero-pads the upsampled map. So the outer two rows and columns of
the output, which those differences touch, are computed directly from thin upsampled strips.

Measured on the 2-core CPU (16 images, forward + backward, output size given): 128x128,
64 -> 32 channels, 287 -> 207 ms; 64x64, 128 -> 64, 153 -> 123 ms; at 32x32 (256 -> 128) the
frame is a quarter of the output and the direct path is faster (127 vs 161 ms), hence
`MIN_SIDE`. Other backends, kernels and shapes upsample and convolve as written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg.models.conv import NHWC, all_ones, conv_general_dilated, is_nhwc
from jaxseg.models.resample import resize_bilinear

MIN_SIDE = 32  # smallest low-resolution height/width worth the phase form (see module doc)

# PHASE_TAPS[phase, tap, k]: weight of kernel row k on low-resolution tap m - 1 + tap for
# output 2m + phase (the 1-D formulas of the module doc).
PHASE_TAPS = np.array(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.75], [0.0, 0.0, 0.25]],
        [[0.25, 0.0, 0.0], [0.75, 0.75, 0.25], [0.0, 0.25, 0.75]],
    ],
    np.float32,
)
# The 2-D mix as one matrix: [(tap_h, tap_w, phase_h, phase_w), (k_h, k_w)].
_PHASE_MIX = np.einsum("ati,bsj->tsabij", PHASE_TAPS, PHASE_TAPS).reshape(36, 9)


def phase_kernel(kernel):
    """`[3, 3, C_in, C_out]` -> `[3, 3, C_in, 4 * C_out]`, outputs ordered (row phase, column phase, channel)."""
    _, _, cin, cout = kernel.shape
    mixed = jnp.dot(_PHASE_MIX, kernel.reshape(9, cin * cout), preferred_element_type=jnp.float32)
    mixed = mixed.reshape(3, 3, 2, 2, cin, cout).transpose(0, 1, 4, 2, 3, 5)
    return mixed.reshape(3, 3, cin, 4 * cout).astype(kernel.dtype)


def _depth_to_space(phases, channels: int):
    """`[B, H, W, (2, 2, C)]` -> `[B, 2H, 2W, C]`."""
    batch, height, width, _ = phases.shape
    blocks = phases.reshape(batch, height, width, 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(batch, 2 * height, 2 * width, channels)


def _strip_conv(strip, kernel, padding):
    return lax.conv_general_dilated(strip, kernel, (1, 1), padding, dimension_numbers=NHWC)


def _frame(x, kernel):
    """The outer two rows and columns of conv(upsample(x)): (top, bottom, left, right)."""
    height, width = x.shape[1:3]
    # Three upsampled rows (columns) next to each edge, from the two low-resolution ones that
    # determine them; the strip conv zero-pads on the image side only.
    top = resize_bilinear(x[:, :2], (4, 2 * width))[:, :3]
    bottom = resize_bilinear(x[:, -2:], (4, 2 * width))[:, 1:]
    left = resize_bilinear(x[:, :, :2], (2 * height, 4))[:, :, :3]
    right = resize_bilinear(x[:, :, -2:], (2 * height, 4))[:, :, 1:]
    return (
        _strip_conv(top, kernel, ((1, 0), (1, 1))),
        _strip_conv(bottom, kernel, ((0, 1), (1, 1))),
        _strip_conv(left, kernel, ((1, 1), (1, 0))),
        _strip_conv(right, kernel, ((1, 1), (0, 1))),
    )


def upsample_conv(x, kernel):
    """`conv(resize_bilinear(x, 2x), kernel)` (stride 1, "SAME", NHWC/HWIO, 3x3) in phase form."""
    if kernel.shape[:2] != (3, 3) or min(x.shape[1:3]) < 2:
        raise ValueError(f"upsample_conv needs a 3x3 kernel and H, W >= 2; got kernel {kernel.shape}, input {x.shape}")
    cout = kernel.shape[-1]
    y = _depth_to_space(conv_general_dilated(x, phase_kernel(kernel), (1, 1), "SAME", dimension_numbers=NHWC), cout)
    top, bottom, left, right = _frame(x, kernel)
    return y.at[:, :, :2].set(left).at[:, :, -2:].set(right).at[:, :2].set(top).at[:, -2:].set(bottom)


def _uses_phases(lhs, rhs) -> bool:
    return (
        jax.default_backend() == "cpu" and rhs.shape[:2] == (3, 3) and min(lhs.shape[1:3]) >= MIN_SIDE
        and lhs.dtype == rhs.dtype
    )


def upsample_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                  dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`conv_general_dilated` of the 2x bilinear upsampling of `lhs`: pass it as
    `nnx.Conv(conv_general_dilated=...)` to make a convolution that upsamples its input first.

    Only the stride-1, "SAME", ungrouped, undilated NHWC case exists (a decoder's); anything
    else is an error rather than a silently different layer.
    """
    if not (lhs.ndim == 4 and is_nhwc(dimension_numbers) and padding == "SAME" and all_ones(window_strides)
            and all_ones(lhs_dilation) and all_ones(rhs_dilation) and feature_group_count == 1):
        raise ValueError(
            "upsample_conv_general_dilated supports 2-D NHWC convolutions with stride 1, 'SAME' padding, "
            f"no dilation and no groups; got padding={padding!r}, strides={window_strides}, "
            f"lhs_dilation={lhs_dilation}, rhs_dilation={rhs_dilation}, groups={feature_group_count}, "
            f"dimension_numbers={dimension_numbers}"
        )
    plain = precision is None and kwargs.get("preferred_element_type") is None and kwargs.get("out_sharding") is None
    if plain and _uses_phases(lhs, rhs):
        return upsample_conv(lhs, rhs)
    upsampled = resize_bilinear(lhs, (2 * lhs.shape[1], 2 * lhs.shape[2]))
    return conv_general_dilated(upsampled, rhs, window_strides, padding, dimension_numbers=dimension_numbers,
                                precision=precision, **kwargs)
