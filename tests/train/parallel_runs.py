"""Training runs for the device-mesh and multi-process tests, run in subprocesses.

    python -m tests.train.parallel_runs meshes WORKDIR        # in a process with 8 CPU devices
    python -m tests.train.parallel_runs zoo_meshes WORKDIR    # smp's Unet on ResNet-18, the same way
    python -m tests.train.parallel_runs process WORKDIR STOP  # each of several processes
    python -m tests.train.parallel_runs single WORKDIR        # the same run in one process
    python -m tests.train.parallel_runs members WORKDIR       # an ablation, member axis sharded or not
    python -m tests.train.parallel_runs detection WORKDIR     # a detector, as one of several processes
    python -m tests.train.parallel_runs detection_single WORKDIR

`meshes` trains the same config on meshes of 1 and 8 devices (and 8 with FSDP-style state
sharding) in `WORKDIR/{single,data8,fsdp8}`; `zoo_meshes` trains smp's Unet on a ResNet-18
(`jaxseg.models.create`'s model) on 1 and 8 devices in `WORKDIR/{single,data8}`. `process` trains in `WORKDIR/run` as one of the
processes named by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, stopping
after step STOP (0: the end), then restores the latest checkpoint on this process and writes
its parameters and the final metrics to `WORKDIR/process_{i}.npz` / `.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MESHES = {"single": ((1,), 0), "data8": ((8,), 0), "fsdp8": ((8,), 64)}


def config_for(mesh_shape=(-1,), fsdp_min_size=0, stop_after=0):
    from tests.train.tiny import tiny_config

    config = tiny_config()
    config.train.update(
        steps=6, batch_size=8, eval_batch_size=8, log_every=1, eval_every=3, checkpoint_every=3, stop_after=stop_after
    )
    config.mesh.shape = tuple(mesh_shape)
    config.mesh.fsdp_min_size = fsdp_min_size
    return config


MEMBER_MESHES = {"members_unsharded": ((1,), ("data",)), "members_4x2": ((4, 2), ("member", "data"))}
MEMBER_VARIANTS = {
    "ce": {"loss": {"weights": {"ce": 1.0}}},
    "ce+dice": {"loss": {"weights": {"ce": 1.0, "dice": 1.0}}},
    "dice-fast": {"loss": {"weights": {"dice": 1.0}}, "optim": {"learning_rate": 8e-3}},
    "focal": {"loss": {"weights": {"focal": 1.0}}},
}


ZOO_MESHES = {name: MESHES[name] for name in ("single", "data8")}


def zoo_config_for(mesh_shape=(-1,)):
    config = config_for(mesh_shape)
    config.model = dict(
        arch="unet", encoder="resnet18", decoder_channels=(32, 16, 8, 8, 4), encoder_weights="", weights=""
    )
    # SGD, not Adam: Adam divides by the gradient's own scale, so a parameter whose gradient is
    # ~0 (deep ResNet kernels on 32x32 images) takes a learning-rate-sized step whose sign is set by
    # the all-reduce's summation order (measured: 2.4e-3 apart after 6 steps, in layer4).
    config.optim.update(name="sgd", learning_rate=0.05)
    return config


def zoo_meshes(workdir: Path) -> None:
    from jaxseg.train.loop import train_and_evaluate

    for name, (shape, _) in ZOO_MESHES.items():
        metrics = train_and_evaluate(zoo_config_for(shape), workdir / name)
        (workdir / f"{name}.json").write_text(json.dumps(metrics))


def members(workdir: Path) -> None:
    """Four ablation members (unroll), on one device and with the member axis split over 4
    devices of a 4 x 2 (member, data) mesh."""
    from jaxseg.train.loop import train_and_evaluate

    for name, (shape, axes) in MEMBER_MESHES.items():
        config = config_for()
        config.ablation.variants = MEMBER_VARIANTS
        config.ablation.strategy = "unroll"
        config.mesh.update(shape=shape, axes=axes, axis_types=("auto",) * len(axes))
        metrics = train_and_evaluate(config, workdir / name)
        (workdir / f"{name}.json").write_text(json.dumps(metrics))


def flat_params(state) -> dict:
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def meshes(workdir: Path) -> None:
    from jaxseg.train.loop import train_and_evaluate

    for name, (shape, fsdp) in MESHES.items():
        metrics = train_and_evaluate(config_for(shape, fsdp), workdir / name)
        (workdir / f"{name}.json").write_text(json.dumps(metrics))


def process(workdir: Path, stop_after: int) -> None:
    import jax
    import numpy as np

    from jaxseg.train import parallel
    from jaxseg.train.inference import restore
    from jaxseg.train.loop import train_and_evaluate

    config = config_for(stop_after=stop_after)
    parallel.initialize_distributed(config)
    metrics = train_and_evaluate(config, workdir / "run")
    index = jax.process_index()
    restored = restore(workdir / "run", "latest")
    np.savez(workdir / f"process_{index}.npz", **flat_params(restored.state))
    (workdir / f"process_{index}.json").write_text(
        json.dumps(dict(metrics, devices=jax.device_count(), processes=jax.process_count(), step=restored.step))
    )


def detection_config():
    from tests.train.test_detection import tiny_detection_config

    config = tiny_detection_config()
    config.data.update(train_samples=64, val_samples=20)
    config.optim.warmup_steps = 1
    config.train.update(steps=4, batch_size=8, eval_batch_size=8, log_every=1, eval_every=4, checkpoint_every=4)
    return config


def detection(workdir: Path) -> None:
    """The detector trained and evaluated as one of several processes (or alone): the COCO
    evaluation sees every process's validation images."""
    import jax

    from jaxseg.train import parallel
    from jaxseg.train.loop import train_and_evaluate

    config = detection_config()
    parallel.initialize_distributed(config)
    metrics = train_and_evaluate(config, workdir / "run")
    (workdir / f"detection_{jax.process_index()}.json").write_text(
        json.dumps(dict(metrics, devices=jax.device_count(), processes=jax.process_count()))
    )


if __name__ == "__main__":
    command, workdir = sys.argv[1], Path(sys.argv[2])
    if command in ("detection", "detection_single"):
        detection(workdir)
    elif command == "meshes":
        meshes(workdir)
    elif command == "zoo_meshes":
        zoo_meshes(workdir)
    elif command == "members":
        members(workdir)
    elif command == "single":
        from jaxseg.train.loop import train_and_evaluate

        train_and_evaluate(config_for(), workdir)
    else:
        process(workdir, int(sys.argv[3]))
