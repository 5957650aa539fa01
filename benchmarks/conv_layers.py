"""Per-layer convolution times of the benchmark U-Net: XLA's CPU convolutions against oneDNN.

    python benchmarks/conv_layers.py [--batch 16] [--repeats 5] [--out benchmarks/results/conv_layers.json]

For every 3x3 layer shape of `benchmarks/train_step.py`'s U-Net (H=W, C_in -> C_out; the
upsampling convolutions in their phase form), the forward pass, the input gradient and the
kernel gradient, each jitted on its own, median of `--repeats` calls:
- "xla": `lax.conv_general_dilated` and its autodiff, on the library `XLA_FLAGS` selects (the
  script sets Eigen, as train.py does, unless `XLA_FLAGS` chooses);
- "onednn": `jaxseg.kernels.onednn.conv2d` and its gradients, when oneDNN is available;
- "torch": PyTorch's `conv2d` and `convolution_backward` (NCHW), when torch is installed.
Values are checked against XLA's before timing. Prints a table (ms) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (H=W, C_in, C_out) of the U-Net of train_step.py (batch 16, 128x128, widths 32-256).
LAYERS = [
    (128, 3, 32),
    (128, 32, 32),
    (128, 64, 32),
    (64, 32, 64),
    (64, 64, 64),
    (64, 128, 64),
    (64, 64, 128),
    (32, 64, 128),
    (32, 128, 128),
    (32, 256, 128),
    (32, 128, 256),
    (16, 128, 256),
    (16, 256, 256),
]
PASSES = ("forward", "input_gradient", "kernel_gradient")


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def jax_passes(conv, x, kernel, dy):
    import jax

    return {
        "forward": jax.jit(conv),
        "input_gradient": jax.jit(lambda x, k, dy: jax.vjp(lambda i: conv(i, k), x)[1](dy)[0]),
        "kernel_gradient": jax.jit(lambda x, k, dy: jax.vjp(lambda w: conv(x, w), k)[1](dy)[0]),
    }, {"forward": (x, kernel), "input_gradient": (x, kernel, dy), "kernel_gradient": (x, kernel, dy)}


def time_jax(conv, x, kernel, dy, repeats, reference=None):
    import jax
    import numpy as np

    fns, args = jax_passes(conv, x, kernel, dy)
    if reference is not None:
        for name in PASSES:
            ours, ref = fns[name](*args[name]), reference[name]
            np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * float(abs(ref).max()))
    values = {name: fns[name](*args[name]) for name in PASSES}
    times = {
        name: median_ms(lambda name=name: jax.block_until_ready(fns[name](*args[name])), repeats) for name in PASSES
    }
    return times, values


def time_torch(x, kernel, dy, repeats):
    import torch

    torch.set_num_threads(os.cpu_count())
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tk = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    tdy = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())
    pad = kernel.shape[0] // 2

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            tdy, tx, tk, None, (1, 1), (pad, pad), (1, 1), False, (0, 0), 1, mask
        )

    return {
        "forward": median_ms(lambda: torch.nn.functional.conv2d(tx, tk, padding=pad), repeats),
        "input_gradient": median_ms(lambda: backward([True, False, False]), repeats),
        "kernel_gradient": median_ms(lambda: backward([False, True, False]), repeats),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_layers.json"))
    args = parser.parse_args(argv)
    import jax
    import numpy as np
    from jax import lax

    from jaxseg.kernels import onednn

    def xla_conv(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    libraries = ["xla"] + (["onednn"] if onednn.available() else []) + (["torch"] if have_torch else [])
    rows = []
    for size, cin, cout in LAYERS:
        kx, kk, kd = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (args.batch, size, size, cin))
        kernel = jax.random.normal(kk, (3, 3, cin, cout)) * 0.1
        dy = jax.random.normal(kd, (args.batch, size, size, cout))
        row = {"size": size, "c_in": cin, "c_out": cout}
        row["xla"], reference = time_jax(xla_conv, x, kernel, dy, args.repeats)
        if "onednn" in libraries:
            row["onednn"], _ = time_jax(onednn.conv2d, x, kernel, dy, args.repeats, reference)
        if have_torch:
            row["torch"] = time_torch(*(np.asarray(a) for a in (x, kernel, dy)), args.repeats)
        rows.append(row)
        print(
            f"{size:4d} {cin:4d} -> {cout:4d}  "
            + "   ".join(f"{lib} " + " ".join(f"{row[lib][p]:6.1f}" for p in PASSES) for lib in libraries),
            flush=True,
        )
    totals = {lib: {p: round(sum(r[lib][p] for r in rows), 1) for p in PASSES} for lib in libraries}
    print(
        "total            "
        + "   ".join(f"{lib} " + " ".join(f"{totals[lib][p]:6.1f}" for p in PASSES) for lib in libraries)
    )
    print(f"(ms: {', '.join(PASSES)}; batch {args.batch}, median of {args.repeats})")
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    result = {"args": vars(args), "machine": machine, "rows": rows, "totals": totals}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
