"""Step time and per-device memory of the train step on meshes of 1, 2, 4, 8 ... devices.

    python benchmarks/scaling.py [--devices 1 2 4 8] [--batch 16] [--size 64] [--steps 10]
                                 [--out benchmarks/results/scaling.json]

The step is the training loop's own (`jaxseg.train.program`): the default U-Net config,
CE + Dice, AdamW, state replicated, batch split over `data`. Two modes per device count:
"strong" (global batch `--batch` for every count) and "weak" (`--batch` images per device).
Memory per device is XLA's account of the compiled step (arguments + outputs - donated +
temporaries); on an accelerator the allocator's peak is reported too.

On a CPU-only machine the devices are `--cpu-devices` host-platform devices sharing the same
cores, so the table shows the overhead of partitioning, not a speed-up; on a multi-GPU or
TPU host the same script measures real scaling. Device counts above what the machine has are
skipped.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cpu-devices", type=int, default=8, help="host-platform devices when there is no accelerator")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "scaling.json"))
    return parser.parse_args(argv)


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:  # before JAX starts: the host platform's device count is fixed then
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.cpu_devices}"
    ).strip()

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, ROOT)
from configs import seg_shapes_unet  # noqa: E402
from jaxseg.tasks import segmentation  # noqa: E402
from jaxseg.train import parallel  # noqa: E402
from jaxseg.train.program import compile_program  # noqa: E402


def memory_per_device(compiled) -> dict:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )
    return {"program_mib": round(total / 2**20, 1), "temporaries_mib": round(analysis.temp_size_in_bytes / 2**20, 1)}


def measure(devices: int, global_batch: int, args) -> dict:
    config = seg_shapes_unet.get_config()
    config.data.image_size = (args.size, args.size)
    config.mesh.shape = (devices,)
    mesh = parallel.make_mesh(config.mesh)
    program = compile_program(config, mesh, segmentation.Task(config))
    rng = np.random.default_rng(0)
    host = {
        "image": rng.integers(0, 256, (global_batch, args.size, args.size, 3)).astype(np.uint8),
        "label": rng.integers(0, config.num_classes, (global_batch, args.size, args.size)).astype(np.int32),
    }
    batch = parallel.global_batch(host, mesh)
    hp = parallel.replicate(segmentation.loss_hyperparameters(config), mesh)
    state = program.init()

    start = time.perf_counter()
    compiled = program.train.lower(state, batch, hp).compile()
    compile_seconds = time.perf_counter() - start
    state, metrics = compiled(state, batch, hp)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):  # synced every step: CPU collectives stall when steps pile up
        start = time.perf_counter()
        state, metrics = compiled(state, batch, hp)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1e3
    row = {
        "devices": devices,
        "global_batch": global_batch,
        "ms_per_step": round(ms, 1),
        "images_per_second": round(global_batch / ms * 1e3, 1),
        "compile_seconds": round(compile_seconds, 1),
        **memory_per_device(compiled),
    }
    stats = mesh.devices.flat[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        row["allocator_peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return row


def main(args) -> None:
    available = jax.device_count()
    counts = [n for n in args.devices if n <= available]
    skipped = [n for n in args.devices if n > available]
    print(
        f"train step of the default U-Net, {args.size}x{args.size}, {jax.default_backend()} "
        f"({available} devices{'; skipped ' + str(skipped) if skipped else ''}), median of {args.steps} steps"
    )
    header = (
        f"{'mode':7s} {'devices':>7s} {'batch':>6s} {'ms/step':>9s} {'images/s':>9s} {'vs 1 device':>12s} "
        f"{'MiB/device':>11s} {'compile s':>10s}"
    )
    print(header)
    rows = []
    for mode in ("strong", "weak"):
        base = None
        for n in counts:
            row = dict(mode=mode, **measure(n, args.batch if mode == "strong" else args.batch * n, args))
            base = base or row["images_per_second"]
            row["throughput_vs_1"] = round(row["images_per_second"] / base, 2)
            rows.append(row)
            print(
                f"{mode:7s} {n:7d} {row['global_batch']:6d} {row['ms_per_step']:9.1f} {row['images_per_second']:9.1f} "
                f"{row['throughput_vs_1']:11.2f}x {row.get('program_mib', float('nan')):11.1f} {row['compile_seconds']:10.1f}"
            )
    result = {
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "jax": jax.__version__,
        },
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(ARGS)
