"""Loss ablations: K members in one program vs K models stepped one after another.

    python benchmarks/ablation.py [--members 1 4 8] [--strategies vmap unroll] [--steps 10]
                                  [--end-to-end-steps 100] [--out benchmarks/results/ablation.json]

Part 1, step time: the default U-Net config (batch 8, 64x64) with the first K loss variants of
configs/ablation_seg_losses.py (plus CE with label smoothing 0.1 as an eighth), each strategy's
compiled member step against the K single-model steps run in sequence (each compiled on its
own), with compile times. Part 2, end to end (`--end-to-end-steps` > 0, K = the largest
`--members`): one `train.py` ablation run of N steps against K separate `train.py` runs of
the same members, each a fresh process with its own start-up and compilation (persistent
compilation cache off for all, so every run compiles). Runs unchanged on a GPU host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import ablation_seg_losses  # noqa: E402
from jaxseg.ablation import strategies, variants  # noqa: E402
from jaxseg.tasks import segmentation  # noqa: E402
from jaxseg.train import parallel  # noqa: E402
from jaxseg.train.program import compile_member_program, compile_program  # noqa: E402

STATS_DIR = Path(tempfile.gettempdir())  # the label statistics of class-weighted members, cached

EXTRA = {"ce,smoothed": {"loss": {"weights": {"ce": 1.0}, "label_smoothing": 0.1}}}


def ablation_config(count: int, strategy: str = "auto"):
    config = ablation_seg_losses.get_config()
    chosen = dict(list({**config.ablation.variants.to_dict(), **EXTRA}.items())[:count])
    config.ablation.variants = chosen
    config.ablation.strategy = strategy
    config.compilation_cache = ""
    return config


def fixed_batch(config, mesh):
    rng = np.random.default_rng(0)
    size, batch = tuple(config.data.image_size), config.train.batch_size
    host = {
        "image": rng.integers(0, 256, (batch, *size, 3)).astype(np.uint8),
        "label": rng.integers(0, config.num_classes, (batch, *size)).astype(np.int32),
    }
    return parallel.global_batch(host, mesh)


def timed(step, state, batch, hp, steps: int):
    start = time.perf_counter()
    compiled = step.lower(state, batch, hp).compile()
    compile_seconds = time.perf_counter() - start
    state, metrics = compiled(state, batch, hp)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, hp)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times), compile_seconds


def member_step_time(count: int, strategy: str, steps: int):
    config = ablation_config(count, strategy)
    mesh = parallel.make_mesh(dict(axes=("data",), shape=(1,), axis_types=("auto",)))
    members = variants.members(config)
    task = segmentation.Task(config)
    setup = variants.member_setup(config, members, task, STATS_DIR)
    program = compile_member_program(
        config, mesh, task, seeds=setup.seeds, weight_decays=setup.weight_decays, active_terms=setup.active_terms
    )
    return timed(program.train, program.init(), fixed_batch(config, mesh), program.place_hp(setup.hp), steps)


def sequential_step_time(count: int, steps: int):
    """K single-model programs (each member's own config), one step of each in turn."""
    config = ablation_config(count)
    mesh = parallel.make_mesh(dict(axes=("data",), shape=(1,), axis_types=("auto",)))
    members = variants.members(config)
    member_hps = segmentation.Task(config).member_hyperparameters(
        [variants.member_config(config, m) for m in members], STATS_DIR
    )
    total, compile_total = 0.0, 0.0
    for member, member_hp in zip(members, member_hps):
        member_cfg = variants.member_config(config, member)
        program = compile_program(member_cfg, mesh, segmentation.Task(member_cfg))
        hp = program.place_hp(member_hp)
        seconds, compile_seconds = timed(program.train, program.init(), fixed_batch(member_cfg, mesh), hp, steps)
        total += seconds
        compile_total += compile_seconds
    return total, compile_total


def overrides_flags(member_cfg) -> list[str]:
    loss = member_cfg.loss
    flags = [f"--config.loss.weights.{term}={weight}" for term, weight in loss.weights.items()]
    flags += [
        f"--config.loss.focal_gamma={loss.focal_gamma}",
        f"--config.loss.label_smoothing={loss.label_smoothing}",
        f"--config.loss.class_weighting={loss.class_weighting}",
    ]
    return flags


def run_train(config_file, flags: list[str], workdir: Path) -> float:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={config_file}",
        f"--workdir={workdir}",
        "--config.compilation_cache=",
        "--config.train.progress=False",
        "--config.tensorboard=False",
        *flags,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def end_to_end(count: int, steps: int) -> dict:
    """Wall time of one ablation run of `steps` steps vs `count` separate runs."""
    common = [
        f"--config.train.steps={steps}",
        f"--config.train.eval_every={steps}",
        f"--config.train.checkpoint_every={steps}",
        f"--config.train.log_every={min(50, steps)}",
        f"--config.optim.warmup_steps={min(10, steps - 1)}",
    ]
    config = ablation_config(count)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = ",".join(m.name for m in variants.members(config))
        script = tmp / "members.py"  # the benchmark's K members as a config file
        script.write_text(
            "import sys\nsys.path.insert(0, %r)\nfrom benchmarks.ablation import ablation_config\n"
            "def get_config():\n    return ablation_config(%d)\n" % (str(ROOT), count)
        )
        together = run_train(script, common, tmp / "ablation")
        separate = []
        for member in variants.members(config):
            member_cfg = variants.member_config(config, member)
            separate.append(
                run_train(
                    ROOT / "configs" / "seg_shapes_unet.py",
                    [*common, *overrides_flags(member_cfg)],
                    tmp / f"single_{len(separate)}",
                )
            )
    return {
        "members": count,
        "steps": steps,
        "member_names": names,
        "ablation_seconds": round(together, 1),
        "separate_seconds": round(sum(separate), 1),
        "separate_each": [round(s, 1) for s in separate],
        "speedup": round(sum(separate) / together, 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--strategies", nargs="+", default=["vmap", "unroll"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--end-to-end-steps", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablation.json"))
    args = parser.parse_args(argv)
    print(f"member step of the default U-Net (batch 8, 64x64), {jax.default_backend()}, median of {args.steps} steps")
    print(
        f"{'K':>3s} {'strategy':>10s} {'ms/step':>9s} {'K sequential ms':>16s} {'vs sequential':>14s} "
        f"{'compile s':>10s} {'sequential compile s':>21s}"
    )
    rows = []
    for count in args.members:
        sequential, sequential_compile = sequential_step_time(count, args.steps)
        for strategy in args.strategies:
            seconds, compile_seconds = member_step_time(count, strategy, args.steps)
            row = {
                "members": count,
                "strategy": strategy,
                "ms_per_step": round(seconds * 1e3, 1),
                "sequential_ms": round(sequential * 1e3, 1),
                "speedup_vs_sequential": round(sequential / seconds, 2),
                "compile_seconds": round(compile_seconds, 1),
                "sequential_compile_seconds": round(sequential_compile, 1),
            }
            rows.append(row)
            print(
                f"{count:3d} {strategy:>10s} {row['ms_per_step']:9.1f} {row['sequential_ms']:16.1f} "
                f"{row['speedup_vs_sequential']:13.2f}x {row['compile_seconds']:10.1f} {row['sequential_compile_seconds']:21.1f}"
            )
    result = {
        "args": vars(args),
        "auto": {backend: strategies.resolve("auto", backend) for backend in ("cpu", "gpu", "tpu")},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "jax": jax.__version__,
        },
        "step_rows": rows,
    }
    if args.end_to_end_steps:
        e2e = end_to_end(max(args.members), args.end_to_end_steps)
        result["end_to_end"] = e2e
        print(
            f"end to end, {e2e['members']} members x {e2e['steps']} steps: one ablation run {e2e['ablation_seconds']} s, "
            f"{e2e['members']} separate runs {e2e['separate_seconds']} s ({e2e['speedup']}x)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
