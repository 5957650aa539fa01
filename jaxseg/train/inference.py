"""Load a trained model from a workdir: config, task and state of the best or latest checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
from flax import nnx

from jaxseg import tasks
from jaxseg.tasks.base import Task
from jaxseg.train.checkpoint import Checkpointer
from jaxseg.train.optim import make_optimizer
from jaxseg.train.state import TrainState, init_state, model_graphdef
from jaxseg.train.step import eval_outputs


class Restored(NamedTuple):
    config: ml_collections.ConfigDict
    task: Task
    graphdef: nnx.GraphDef
    state: TrainState
    step: int


def restore(workdir, step: str | int = "best") -> Restored:
    """The checkpoint `step` ("best" by the validation metric, falling back to "latest", or a number)."""
    checkpoints = Checkpointer(Path(workdir) / "checkpoints", asynchronous=False)
    try:
        if step == "best":
            chosen = checkpoints.best_step() or checkpoints.latest_step()
        elif step == "latest":
            chosen = checkpoints.latest_step()
        else:
            chosen = int(step)
        if chosen is None:
            raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}")
        config = ml_collections.ConfigDict(checkpoints.restore_config(chosen))
        if config.get("ablation", {}).get("variants") or config.get("ablation", {}).get("grid"):
            raise ValueError(
                f"{workdir} holds an ablation (several members in one checkpoint); evaluation and prediction "
                f"take a single model's workdir. Its results are in {Path(workdir) / 'ablation.md'}"
            )
        task = tasks.get(config)
        make_model = task.model_factory()
        tx = make_optimizer(config.optim, config.train.steps)
        # Onto this process's first device, whatever mesh the checkpoint was saved from.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
            jax.eval_shape(functools.partial(init_state, make_model, tx, config.seed)),
        )
        state = checkpoints.restore(chosen, abstract)
    finally:
        checkpoints.close()
    return Restored(config, task, model_graphdef(make_model), state, chosen)


def logits_fn(restored: Restored):
    """A jitted `batch -> logits` for uint8 images `[B, H, W, C_in]` (evaluation mode)."""
    outputs = jax.jit(functools.partial(eval_outputs, graphdef=restored.graphdef, task=restored.task))
    return lambda images: outputs(restored.state, {"image": images})


def predict_fn(restored: Restored):
    """A jitted `(state, batch) -> predictions` of the task (`task.predict` of the outputs in
    evaluation mode: class ids, or detections)."""
    task = restored.task
    return jax.jit(lambda state, batch: task.predict(eval_outputs(state, batch, graphdef=restored.graphdef, task=task)))
