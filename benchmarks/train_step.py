"""Images/s of the U-Net train step: jaxseg (jit, donated state) vs the same U-Net in PyTorch.

    python benchmarks/train_step.py [--batch 16] [--size 128] [--base-width 32] [--depth 3]
                                    [--steps 10] [--no-compile] [--out benchmarks/results/train_step.json]

Both sides: the same architecture (3x3 conv + BatchNorm + ReLU blocks, max-pool down,
bilinear up + 3x3 conv, skip concatenation, 1x1 head), softmax cross-entropy, Adam, float32,
one full step (forward, backward, update) on a fixed batch, the same number of threads.
PyTorch runs eager (NCHW), eager channels_last and torch.compile when installed. Each
implementation runs its steps as one block (not interleaved: PyTorch's OpenMP threads keep
spinning after a step and would slow whatever runs next); the table reports the median step
time. Runs unchanged on a GPU host: when JAX runs on a GPU, PyTorch runs on CUDA too.
Both sides share the process, so they share its environment (`GLIBC_TUNABLES` and
`XLA_FLAGS` are recorded in the JSON). jaxseg's convolutions are those of `--kernels` (as
`config.kernels`, default "auto" like the default config: oneDNN where it can run,
`jaxseg.kernels`); the JSON records the route taken.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxseg import kernels  # noqa: E402


def jax_step(args, images, labels):
    from configs import seg_shapes_unet

    config = seg_shapes_unet.get_config()
    config.model.update(depth=args.depth, base_width=args.base_width)
    return jax_runner(config, args.kernels, args.classes, images, labels)


def jax_runner(config, kernel_route, classes, images, labels):
    """(run, first step seconds): `run()` times one jitted train step (donated state) of
    `config`'s model with cross-entropy and Adam on the fixed batch."""
    from jaxseg.tasks import segmentation
    from jaxseg.train.optim import make_optimizer
    from jaxseg.train.state import init_state, model_graphdef
    from jaxseg.train.step import train_step

    config.kernels = kernel_route
    config.loss.weights = dict(ce=1.0)
    config.optim.update(name="adam", schedule="constant", learning_rate=1e-3, clip_norm=0.0, weight_decay=0.0)
    make_model = segmentation.model_factory(config, classes)
    graphdef = model_graphdef(make_model)
    tx = make_optimizer(config.optim, 1000)
    state = init_state(make_model, tx, 0)
    hp = segmentation.loss_hyperparameters(config)
    task = segmentation.Task(config)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, task=task, seed=0), donate_argnums=0)
    batch = jax.device_put({"image": images, "label": labels})
    holder = {"state": state}

    def run():
        start = time.perf_counter()
        holder["state"], metrics = step(holder["state"], batch, hp)
        jax.block_until_ready(metrics["loss"])
        return time.perf_counter() - start

    start = time.perf_counter()
    run()
    return run, time.perf_counter() - start


def torch_steps(args, images, labels):
    """{name: (run, compile seconds)} for the PyTorch variants, or {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    from tests.conformance.torch_models import torch_unet  # the network the conformance test checks

    return torch_runners(
        lambda: torch_unet(torch, args.depth, args.base_width, args.classes, 3), images, labels, compile=args.compile
    )


def torch_runners(make_model, images, labels, *, compile: bool, autocast_dtype=None):
    """{name: (run, first step seconds)}: `run()` times one PyTorch train step (cross-entropy,
    Adam) of `make_model()` on the fixed batch: eager (NCHW), eager channels_last and, with
    `compile`, torch.compile; on CUDA when JAX runs on a GPU; under autocast to `autocast_dtype`
    (e.g. torch.bfloat16) when given."""
    import contextlib

    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"

    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 1))).float().to(device) / 255.0
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    variants = {"torch eager": (False, False), "torch eager channels_last": (True, False)}
    if compile:
        variants["torch.compile"] = (True, True)
    result = {}
    for name, (channels_last, compiled) in variants.items():
        torch.manual_seed(0)
        model = make_model().to(device).train()
        inputs = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train(model=model, optimizer=optimizer, inputs=inputs):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(model(inputs).float(), y)
            loss.backward()
            optimizer.step()
            return loss

        step = torch.compile(train) if compiled else train

        def run(step=step):
            start = time.perf_counter()
            step().item()
            return time.perf_counter() - start

        start = time.perf_counter()
        run()
        result[name] = (run, time.perf_counter() - start)
    return result


def machine_info(kernel_route: str) -> dict:
    """What the timings depend on, recorded beside them."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "kernels": kernels.resolve(kernel_route),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base-width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--kernels", choices=kernels.KERNELS, default="auto", help="config.kernels of jaxseg's side")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step.json"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3)).astype(np.uint8)
    labels = rng.integers(0, args.classes, (args.batch, args.size, args.size)).astype(np.int32)

    runners = {"jaxseg": jax_step(args, images, labels)}
    times = {"jaxseg": [runners["jaxseg"][0]() for _ in range(args.steps)]}
    for name, runner in torch_steps(args, images, labels).items():
        runners[name] = runner
        times[name] = [runner[0]() for _ in range(args.steps)]

    rows = []
    jax_ms = statistics.median(times["jaxseg"]) * 1e3
    machine = machine_info(args.kernels)
    print(
        f"U-Net train step, batch {args.batch} x {args.size}x{args.size}, widths {args.base_width}..."
        f"{args.base_width * 2**args.depth}, {jax.default_backend()}, median of {args.steps} steps, "
        f"GLIBC_TUNABLES={machine['glibc_tunables']!r}, XLA_FLAGS={machine['xla_flags']!r}, "
        f"kernels: {machine['kernels']}"
    )
    print(f"{'implementation':28s} {'ms/step':>9s} {'images/s':>9s} {'first step s':>13s} {'jaxseg speed-up':>16s}")
    for name, (_, first) in runners.items():
        ms = statistics.median(times[name]) * 1e3
        rows.append(
            {
                "implementation": name,
                "ms_per_step": round(ms, 1),
                "images_per_second": round(args.batch / ms * 1e3, 1),
                "first_step_seconds": round(first, 1),
                "jaxseg_speedup": round(ms / jax_ms, 2),
            }
        )
        r = rows[-1]
        print(
            f"{name:28s} {r['ms_per_step']:9.1f} {r['images_per_second']:9.1f} {r['first_step_seconds']:13.1f} "
            f"{r['jaxseg_speedup']:15.2f}x"
        )
    result = {"args": vars(args), "machine": machine, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
