"""A drop-in `conv_general_dilated` for `nnx.Conv` with a faster kernel gradient on CPU.

XLA's CPU backend computes the kernel gradient of a convolution as another convolution
whose "kernel" is the whole output map. Small ones are fast, but past about a GFLOP it fell
to 20-60 GFLOP/s here, 2-4x slower than the forward pass (16x128x128, 32 -> 32 channels:
forward 89 ms, kernel gradient 272 ms). For those large stride-1 "SAME" 2-D convolutions
this module computes the gradient as im2col GEMMs over row blocks instead (`patches^T @ dy`,
accumulated in a `lax.scan` so the patches of only one block exist at a time): 1.2-1.8x
faster on such layers, and slower on small ones (0.3-0.8x below 0.3 GFLOP), hence the
threshold `MIN_GRADIENT_FLOPS`. The forward pass and the input gradient stay XLA's own. Anything else falls back to
`jax.lax.conv_general_dilated` unchanged, and so does every backend but the CPU (GPU and TPU
convolution libraries have their own kernel-gradient algorithms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
BLOCK_PIXELS = 8192  # patches rows per GEMM block: large enough to be efficient, small to stay in cache
MIN_GRADIENT_FLOPS = 1e9  # below this XLA's own kernel gradient was faster (measured on a 2-core x86 CPU)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, tuple) and all(isinstance(d, str) for d in dimension_numbers):
        return tuple(dimension_numbers) == NHWC
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _plain(values) -> bool:
    return values is None or all(v == 1 for v in values)


def _same_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)


def _rows_per_block(batch: int, height: int, width: int) -> int:
    rows = max(1, BLOCK_PIXELS // max(1, batch * width))
    while height % rows:
        rows -= 1
    return rows


def kernel_gradient(x, dy, kernel_shape):
    """`d(sum(conv(x, k) * dy)) / dk` for a stride-1 SAME NHWC convolution, by row-block GEMMs."""
    kh, kw, cin, cout = kernel_shape
    batch, height, width, _ = x.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    rows = _rows_per_block(batch, height, width)

    def block(total, index):
        start = index * rows
        window = lax.dynamic_slice_in_dim(padded, start, rows + kh - 1, axis=1)
        grad = lax.dynamic_slice_in_dim(dy, start, rows, axis=1).reshape(-1, cout)
        patches = jnp.concatenate(
            [window[:, i : i + rows, j : j + width, :] for i in range(kh) for j in range(kw)], axis=-1
        ).reshape(-1, kh * kw * cin)
        return total + jnp.dot(patches.T, grad, preferred_element_type=jnp.float32), None

    total, _ = lax.scan(block, jnp.zeros((kh * kw * cin, cout), jnp.float32), jnp.arange(height // rows))
    return total.reshape(kernel_shape).astype(x.dtype)


def gradient_flops(x_shape, kernel_shape) -> float:
    batch, height, width, _ = x_shape
    kh, kw, cin, cout = kernel_shape
    return 2.0 * batch * height * width * kh * kw * cin * cout


@jax.custom_vjp
def same_conv2d(x, kernel):
    """Stride-1, "SAME", ungrouped NHWC/HWIO 2-D convolution with the row-block kernel gradient."""
    return _same_conv(x, kernel)


def _same_conv2d_fwd(x, kernel):
    return _same_conv(x, kernel), (x, kernel)


def _same_conv2d_bwd(residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda inputs: _same_conv(inputs, kernel), x)
    (dx,) = input_vjp(dy)
    return dx, kernel_gradient(x, dy.astype(x.dtype), kernel.shape).astype(kernel.dtype)


same_conv2d.defvjp(_same_conv2d_fwd, _same_conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, routed to `same_conv2d` where it applies (pass it to
    `nnx.Conv(conv_general_dilated=...)`)."""
    fast = (
        jax.default_backend() == "cpu" and lhs.ndim == 4 and _is_nhwc(dimension_numbers) and padding == "SAME" and _plain(window_strides)
        and _plain(lhs_dilation) and _plain(rhs_dilation) and feature_group_count == 1 and precision is None
        and kwargs.get("preferred_element_type") is None and kwargs.get("out_sharding") is None
        and lhs.dtype == rhs.dtype and gradient_flops(lhs.shape, rhs.shape) >= MIN_GRADIENT_FLOPS
    )
    if fast:
        return same_conv2d(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision, **kwargs)
