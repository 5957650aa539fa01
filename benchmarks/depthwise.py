"""Depthwise convolutions on the CPU: XLA's grouped convolution, jaxseg's shifted multiply-adds, oneDNN.

    python benchmarks/depthwise.py [--repeats 3] [--out benchmarks/results/depthwise.json]

For the depthwise layers of the zoo's models at batch 8 of 256x256 images (DeepLabV3+'s
separable ASPP branch at stride 16, its decoder's separable convolution at stride 4, ConvNeXt's
first-stage 7x7), the forward pass and forward + backward (input and kernel gradients), each
jitted on its own, median of `--repeats` calls: "xla" is `lax.conv_general_dilated` with
`feature_group_count = channels`, "shifts" `jaxseg.kernels.depthwise` (what `config.kernels`
"auto" uses on the CPU for bfloat16, or without oneDNN), "onednn" `jaxseg.kernels.onednn` (float32
under "auto" / "onednn", when oneDNN is available), "torch" `conv2d(groups=channels)` when torch
is installed.
Values are checked against XLA's before timing. Prints a table (ms) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.conv_layers import median_ms  # noqa: E402
from benchmarks.train_step import machine_info  # noqa: E402
from jaxseg.kernels import depthwise, onednn  # noqa: E402

# (name, [B, H, W, C], kernel size, dilation)
LAYERS = [
    ("DeepLabV3+ ASPP, dilation 12", (8, 16, 16, 2048), 3, 12),
    ("DeepLabV3+ decoder 3x3", (8, 64, 64, 256), 3, 1),
    ("ConvNeXt-T stage 1, 7x7", (8, 64, 64, 96), 7, 1),
]


def jax_times(convolve, x, kernel, padding, dilation, repeats):
    def conv(x, k):
        return convolve(
            x,
            k,
            (1, 1),
            padding,
            rhs_dilation=dilation,
            dimension_numbers=depthwise.NHWC,
            feature_group_count=x.shape[-1],
        )

    forward = jax.jit(conv)
    both = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.square(conv(x, k))), argnums=(0, 1)))
    return (
        forward(x, kernel),
        median_ms(lambda: jax.block_until_ready(forward(x, kernel)), repeats),  # dispatch is asynchronous
        median_ms(lambda: jax.block_until_ready(both(x, kernel)), repeats),
    )


def torch_times(x, kernel, pad, dilation, repeats):
    try:
        import torch
    except ImportError:
        return None
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    kt = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())
    groups = xt.shape[1]

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, kt, padding=pad, dilation=dilation, groups=groups)

    def both():
        xg, kg = xt.clone().requires_grad_(True), kt.clone().requires_grad_(True)
        torch.nn.functional.conv2d(xg, kg, padding=pad, dilation=dilation, groups=groups).square().sum().backward()
        return kg.grad

    return median_ms(forward, repeats), median_ms(both, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "depthwise.json"))
    args = parser.parse_args(argv)
    print(f"depthwise convolutions, float32, {jax.default_backend()}, median of {args.repeats} calls (ms)")
    print(f"{'layer':32s} {'shape':18s} {'route':7s} {'forward':>9s} {'fwd+bwd':>9s} {'vs xla':>7s}")
    rows = []
    for name, shape, size, dilation in LAYERS:
        x = jax.random.normal(jax.random.key(0), shape)
        kernel = 0.1 * jax.random.normal(jax.random.key(1), (size, size, 1, shape[-1]))
        pad = dilation * (size // 2)
        padding = ((pad, pad), (pad, pad))
        reference, xla_forward, xla_both = jax_times(
            lax.conv_general_dilated, x, kernel, padding, (dilation, dilation), args.repeats
        )
        values, forward, both = jax_times(
            depthwise.routed(lax.conv_general_dilated), x, kernel, padding, (dilation, dilation), args.repeats
        )
        np.testing.assert_allclose(values, reference, rtol=1e-4, atol=1e-4 * float(jnp.abs(reference).max()))
        measured = {"xla": (xla_forward, xla_both), "shifts": (forward, both)}
        if onednn.available():
            values, *measured["onednn"] = jax_times(
                onednn.conv_general_dilated, x, kernel, padding, (dilation, dilation), args.repeats
            )
            np.testing.assert_allclose(values, reference, rtol=1e-4, atol=1e-4 * float(jnp.abs(reference).max()))
        torch_ms = torch_times(x, kernel, pad, dilation, args.repeats)
        if torch_ms is not None:
            measured["torch"] = torch_ms
        for route, (f, b) in measured.items():
            rows.append(
                {
                    "layer": name,
                    "shape": list(shape),
                    "kernel": size,
                    "dilation": dilation,
                    "route": route,
                    "forward_ms": round(f, 1),
                    "forward_backward_ms": round(b, 1),
                    "speedup_vs_xla": round(xla_both / b, 1),
                }
            )
            print(f"{name:32s} {str(shape[1:]):18s} {route:7s} {f:9.1f} {b:9.1f} {xla_both / b:6.1f}x", flush=True)
    result = {"args": vars(args), "machine": machine_info("xla"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
