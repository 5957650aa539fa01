"""A drop-in `conv_general_dilated` for `nnx.Conv` with faster convolutions on CPU.

On a single-device CPU program, float32 stride-1 "SAME" 2-D convolutions run on oneDNN
through XLA's FFI when it is available (`jaxseg.models.onednn`: built on first use against
the system's oneDNN; per-layer figures in the README, Train step, from
`benchmarks/conv_layers.py`). The rest of this docstring is the route without it.

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

Inputs with few channels (`C_in <= MAX_PATCH_CHANNELS` and `kh * kw * C_in <= MAX_PATCH_DEPTH`,
e.g. an RGB image under a 3x3 kernel: 27) take another route: their patches
`[N, H, W, kh * kw * C_in]` cost little memory, so the forward pass is one GEMM of the patches
with the kernel, and the kernel gradient one GEMM of the patches with the output gradient
(16x128x128, 3 -> 32 channels: forward 25.6 -> 12.4 ms, kernel gradient 27.5 -> 11.1 ms; XLA's
convolution handles 3 input channels poorly, and from 8 input channels on the patches cost
more than they save).

The input gradient stays XLA's own, and so does the forward pass of wider inputs. Anything
else falls back to `jax.lax.conv_general_dilated` unchanged, and so does every backend but the
CPU (GPU and TPU convolution libraries have their own kernel-gradient algorithms).

All of the above is measured against YNNPACK, which runs this jaxlib's CPU convolutions by
default. When `XLA_FLAGS` sends them to XLA's Eigen convolutions instead (as jaxseg's entry
points do, `jaxseg.xla_cpu`), XLA's own kernel gradients were faster on the benchmark U-Net's
layers in total (10 layer shapes: 389 against 448 ms as one GEMM each) and on all but one
(128x128, 32 -> 32: 56.1 against 53.0 ms; 32x32, 128 -> 128: 23.4 against 34.0 ms; 3 -> 32 on
patches: 16.8 against 17.9 ms), so every convolution then stays `lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models import onednn
from jaxseg.xla_cpu import eigen_convolutions

NHWC = ("NHWC", "HWIO", "NHWC")
MIN_ROWS_PER_OUTPUT = 8  # split the pixel axis only if every part stays this many times longer than the GEMM's larger side
MAX_PATCH_CHANNELS = 4  # input channels up to which the convolution runs on explicit patches ...
MAX_PATCH_DEPTH = 36  # ... if also kh * kw * C_in stays this small (3x3 x 4 channels)


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


def _narrow(kernel_shape) -> bool:
    kh, kw, cin, _ = kernel_shape
    return cin <= MAX_PATCH_CHANNELS and kh * kw * cin <= MAX_PATCH_DEPTH


def patches(x, kh: int, kw: int):
    """`[N, H, W, kh * kw * C]`: at each pixel the "SAME"-padded `kh x kw` window of `x`, in the
    order of an HWIO kernel's leading axes (so `patches @ kernel.reshape(-1, C_out)` is the
    convolution). Built like `_shifted`: one zero-padding `lax.pad` per window position, summed."""
    channels, count = x.shape[-1], kh * kw
    top, left = (kh - 1) // 2, (kw - 1) // 2
    zero = jnp.zeros((), x.dtype)
    total = None
    for i in range(kh):
        for j in range(kw):
            t = i * kw + j
            block = lax.pad(x, zero, [(0, 0, 0), (top - i, i - top, 0), (left - j, j - left, 0),
                                      (t * channels, (count - 1 - t) * channels, 0)])
            total = block if total is None else total + block
    return total


@jax.jit  # one dispatch instead of kh * kw pads when called eagerly; inlined under an outer jit
def _patch_conv(x, kernel):
    kh, kw, _, cout = kernel.shape
    y = lax.dot_general(patches(x, kh, kw), kernel.reshape(-1, cout), (((3,), (0,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return y.astype(jnp.result_type(x, kernel))


@functools.partial(jax.jit, static_argnums=2)
def _patch_kernel_gradient(x, dy, kernel_shape):
    kh, kw, _, cout = kernel_shape
    p = patches(x, kh, kw)
    dk = lax.dot_general(p.reshape(-1, p.shape[-1]), dy.reshape(-1, cout), (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)
    return dk.reshape(kernel_shape).astype(x.dtype)


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
    """Stride-1, "SAME", ungrouped NHWC/HWIO 2-D convolution with the GEMM kernel gradient
    (on explicit patches for narrow inputs, see the module doc)."""
    return _forward(x, kernel)


def _forward(x, kernel):
    return _patch_conv(x, kernel) if _narrow(kernel.shape) else _same_conv(x, kernel)


def _same_conv2d_fwd(x, kernel):
    return _forward(x, kernel), (x, kernel)


def _same_conv2d_bwd(residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda inputs: _same_conv(inputs, kernel), x)
    (dx,) = input_vjp(dy)
    gradient = _patch_kernel_gradient if _narrow(kernel.shape) else kernel_gradient
    return dx, gradient(x, dy.astype(x.dtype), kernel.shape).astype(kernel.dtype)


same_conv2d.defvjp(_same_conv2d_fwd, _same_conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, routed to oneDNN (`jaxseg.models.onednn`) or else to
    `same_conv2d` where they apply (pass it to `nnx.Conv(conv_general_dilated=...)`)."""
    same = (
        jax.default_backend() == "cpu" and lhs.ndim == 4 and is_nhwc(dimension_numbers) and padding == "SAME" and all_ones(window_strides)
        and all_ones(lhs_dilation) and all_ones(rhs_dilation) and feature_group_count == 1 and precision is None
        and kwargs.get("preferred_element_type") is None and kwargs.get("out_sharding") is None
        and lhs.dtype == rhs.dtype
    )
    if same and lhs.dtype == jnp.float32 and lhs.size > 0 and onednn.routes_here():
        return onednn.conv2d(lhs, rhs)
    if same and not eigen_convolutions():
        return same_conv2d(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision, **kwargs)
