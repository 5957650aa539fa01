"""A tiny segmentation config (a few seconds per run on a 2-core CPU) and readers of what a
run saved."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import seg_shapes_unet

TINY_FLAGS = [  # the same config as command-line overrides of configs/seg_shapes_unet.py
    "--config.tensorboard=False",
    "--config.data.train_samples=32",
    "--config.data.val_samples=6",
    "--config.data.source_size=32",
    "--config.data.image_size=(32,32)",
    "--config.data.num_threads=1",
    "--config.model.depth=2",
    "--config.model.base_width=4",
    "--config.optim.warmup_steps=2",
    "--config.train.batch_size=4",
    "--config.train.eval_batch_size=4",
    "--config.train.progress=False",
]


def tiny_config(compilation_cache: str = ""):
    config = seg_shapes_unet.get_config()
    config.compilation_cache = compilation_cache
    config.tensorboard = False
    config.data.train_samples = 32
    config.data.val_samples = 6
    config.data.source_size = 32
    config.data.image_size = (32, 32)
    config.data.num_threads = 1
    config.model.depth = 2
    config.model.base_width = 4
    config.optim.warmup_steps = 2
    config.train.update(
        steps=8, batch_size=4, eval_batch_size=4, log_every=2, eval_every=4, checkpoint_every=4, progress=False
    )
    return config


def saved_state(workdir: Path, step: int) -> dict:
    """The saved train state as nested dicts of NumPy arrays, whatever mesh saved it."""
    path = (workdir / "checkpoints" / str(step) / "state").absolute()
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def flat(tree) -> dict:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
