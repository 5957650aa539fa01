"""Train-step time of smp's architectures on their standard encoders: jaxseg vs smp in PyTorch.

    python benchmarks/models.py [--batch 8] [--size 256] [--steps 5] [--models unet:resnet34 ...]
                                [--dtype float32] [--no-compile] [--out benchmarks/results/models.json]

Each row is one full train step (forward, backward, Adam update; softmax cross-entropy over 21
classes) on a fixed batch of random images: jaxseg's `create` model in the trainer's jitted step
(donated state, `--kernels` as `config.kernels`) against the same smp 0.6 model in torch eager
(NCHW), eager channels_last and torch.compile, on the same threads. Randomly initialised
(timing does not depend on the weights). The table reports median step times and jaxseg's
speed-up over each torch variant. On a GPU host it runs unchanged, on CUDA on the torch side;
`--dtype bfloat16` computes in bfloat16 on both sides (jaxseg: `config.model.dtype`, float32
parameters; torch: autocast).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_step import jax_runner, machine_info, torch_runners  # noqa: E402
from jaxseg import kernels  # noqa: E402

MODELS = ("unet:resnet34", "fpn:resnet50", "deeplabv3plus:resnet50", "segformer:mit_b2", "upernet:tu-convnext_tiny")
CLASSES = 21


def jax_model_step(arch, encoder, args, images, labels):
    from configs import seg_shapes_unet_resnet34

    config = seg_shapes_unet_resnet34.get_config()
    config.model = dict(arch=arch, encoder=encoder, dtype=args.dtype)
    return jax_runner(config, args.kernels, CLASSES, images, labels)


def torch_model_steps(arch, encoder, args, images, labels):
    """{name: (run, first step seconds)} of smp's model, or {} without torch and smp."""
    try:
        import pytest
        import torch

        from tests.conformance import references
    except ImportError as error:
        print(f"no smp reference: {error}")
        return {}
    try:
        smp = references.smp()
    except pytest.skip.Exception as error:  # a BaseException: what references says is missing
        print(f"no smp reference: {error}")
        return {}
    autocast = None if args.dtype == "float32" else getattr(torch, args.dtype)
    return torch_runners(
        lambda: smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=CLASSES),
        images,
        labels,
        compile=args.compile,
        autocast_dtype=autocast,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="arch:encoder pairs")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--kernels", choices=kernels.KERNELS, default="auto", help="config.kernels of jaxseg's side")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "models.json"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3)).astype(np.uint8)
    labels = rng.integers(0, CLASSES, (args.batch, args.size, args.size)).astype(np.int32)
    machine = machine_info(args.kernels)
    print(
        f"train step, batch {args.batch} x {args.size}x{args.size}, {args.dtype}, {CLASSES} classes, "
        f"{machine['backend']} ({machine['device']}), median of {args.steps} steps, kernels: {machine['kernels']}"
    )
    print(f"{'model':34s} {'implementation':26s} {'ms/step':>9s} {'first step s':>13s} {'jaxseg speed-up':>16s}")
    rows = []
    for pair in args.models:
        arch, encoder = pair.split(":")
        # Each implementation runs its steps as one block: torch's OpenMP threads keep spinning
        # after a step and would slow whatever ran next.
        runners = {"jaxseg": jax_model_step(arch, encoder, args, images, labels)}
        times = {"jaxseg": [runners["jaxseg"][0]() for _ in range(args.steps)]}
        for name, runner in torch_model_steps(arch, encoder, args, images, labels).items():
            runners[name] = runner
            times[name] = [runner[0]() for _ in range(args.steps)]
        jax_ms = statistics.median(times["jaxseg"]) * 1e3
        for name, (_, first) in runners.items():
            ms = statistics.median(times[name]) * 1e3
            row = {
                "model": pair,
                "implementation": name,
                "ms_per_step": round(ms, 1),
                "first_step_seconds": round(first, 1),
                "jaxseg_speedup": round(ms / jax_ms, 2),
            }
            rows.append(row)
            print(
                f"{pair:34s} {name:26s} {row['ms_per_step']:9.1f} {row['first_step_seconds']:13.1f} "
                f"{row['jaxseg_speedup']:15.2f}x",
                flush=True,
            )
        del runners  # free the models before the next pair
    result = {"args": vars(args), "machine": machine, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
