"""A drop-in `conv_general_dilated` for `nnx.Conv` with a faster kernel gradient on CPU.

XLA's CPU backend computes the kernel gradient of a convolution as another convolution
whose "kernel" is the whole output map, which ran at 12-31 GFLOP/s on the benchmark U-Net's
layers here, up to 4x slower than the forward pass (16x128x128, 32 -> 32 channels,
4.8 GFLOP: forward 50 ms, kernel gradient 186 ms). For stride-1 "SAME" 2-D convolutions
this module computes it as one GEMM instead:

    dk[i, j] = sum over (n, y, x) of  x_pad[n, y + i, x + j] (x) dy[n, y, x]

Shifting the input by each kernel column j and the gradient by each kernel row i (both
zero-padded to the same `[N, H + kh - 1, W]` grid) turns every (i, j) pair into one block of
`shifted_x^T @ shifted_dy`, a `[kw * C_in, kh * C_out]` product over all pixels. The shifted
copies cost `kw` times the input and `kh` times the gradient in memory traffic (an im2col
costs `kh * kw` times the input), and are built by `lax.pad` + add, which XLA fuses into one
loop (a `concatenate` along channels ran 4-7x slower). The pixel axis is split into one GEMM
per CPU thread, because XLA's CPU dot parallelises a long contraction with small outputs
poorly. Measured: 3.4x faster than XLA's own on that layer, and faster or equal on every layer
of the U-Net of `benchmarks/train_step.py`, down to its 1x1 head (README, Train step).

The forward pass and the input gradient stay XLA's own. Anything else falls back to
`jax.lax.conv_general_dilated` unchanged, and so does every backend but the CPU (GPU and TPU
convolution libraries have their own kernel-gradient algorithms).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
MIN_ROWS_PER_OUTPUT = 8  # split the pixel axis only if every part stays this many times longer than the GEMM's larger side


def is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, tuple) and all(isinstance(d, str) for d in dimension_numbers):
        return tuple(dimension_numbers) == NHWC
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def all_ones(values) -> bool:
    return values is None or all(v == 1 for v in values)


def _same_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)


def _cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gemm_splits(rows: int, widest: int, threads: int) -> int:
    """How many independent GEMMs to cut a `rows`-long contraction into (a divisor of `rows`)."""
    if rows < MIN_ROWS_PER_OUTPUT * threads * widest:
        return 1
    return next(s for s in range(threads, 0, -1) if rows % s == 0)


def _shifted(a, padding, axis: int, offsets):
    """`a` zero-padded by `padding` (a (low, high) pair per axis), once per offset, side by side
    along channels; along `axis`, block `t` at position p holds `a[p - low + offsets[t]]`.

    Each block is one `lax.pad` (negative padding crops) and the blocks are summed, not
    concatenated: XLA fuses the pads and the sum into one loop.
    """
    channels, count = a.shape[-1], len(offsets)
    zero = jnp.zeros((), a.dtype)
    total = None
    for t, offset in enumerate(offsets):
        config = [(low, high, 0) for low, high in padding]
        low, high, _ = config[axis]
        config[axis] = (low - offset, high + offset, 0)
        config[-1] = (t * channels, (count - 1 - t) * channels, 0)
        block = lax.pad(a, zero, config)
        total = block if total is None else total + block
    return total


def kernel_gradient(x, dy, kernel_shape):
    """`d(sum(conv(x, k) * dy)) / dk` for a stride-1 SAME NHWC convolution, as one GEMM (see module doc)."""
    kh, kw, cin, cout = kernel_shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    # Block j: x_pad[:, :, j : j + W], on x_pad's H + kh - 1 rows.
    x_cols = _shifted(x, [(0, 0), (top, kh - 1 - top), (0, 0), (0, 0)], 2, [j - left for j in range(kw)])
    # Block i: dy moved down by i rows, so that row y + i of x_pad meets row y of dy.
    dy_rows = _shifted(dy, [(0, 0), (0, kh - 1), (0, 0), (0, 0)], 1, [-i for i in range(kh)])
    rows = x_cols.size // (kw * cin)
    splits = _gemm_splits(rows, max(kw * cin, kh * cout), _cpu_threads())
    lhs = x_cols.reshape(splits, rows // splits, kw * cin)
    rhs = dy_rows.reshape(splits, rows // splits, kh * cout)
    blocks = lax.dot_general(lhs, rhs, (((1,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32).sum(0)
    # blocks[(j, c), (i, d)] = dk[i, j, c, d]
    return blocks.reshape(kw, cin, kh, cout).transpose(2, 0, 1, 3).astype(x.dtype)


@jax.custom_vjp
def same_conv2d(x, kernel):
    """Stride-1, "SAME", ungrouped NHWC/HWIO 2-D convolution with the GEMM kernel gradient."""
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
        jax.default_backend() == "cpu" and lhs.ndim == 4 and is_nhwc(dimension_numbers) and padding == "SAME" and all_ones(window_strides)
        and all_ones(lhs_dilation) and all_ones(rhs_dilation) and feature_group_count == 1 and precision is None
        and kwargs.get("preferred_element_type") is None and kwargs.get("out_sharding") is None
        and lhs.dtype == rhs.dtype
    )
    if fast:
        return same_conv2d(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision, **kwargs)
